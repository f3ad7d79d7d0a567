//! `cargo xtask run` (the sidecar with its embedded defaults) and
//! `cargo xtask test` (every test tier, as CI runs it), each installing the
//! tools it needs first.

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::sh::{self, stage};
use crate::{dist, nix_check, vm_test};

/// Tools the daemon's build needs: protoc for the API and mesh schemas.
fn ensure_build_tools() -> Result<()> {
    sh::ensure_apt(&[("protoc", "protobuf-compiler")])
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds and runs the sidecar; extra arguments go to `peat-sidecar`.
pub fn run_sidecar(args: &[String]) -> Result<()> {
    ensure_build_tools()?;
    let root = dist::repo_root()?;
    sh::run(cargo().current_dir(root).args(["run", "--release", "--bin", "peat-sidecar", "--"]).args(args))
}

/// The tiers of `cargo xtask test`, in order; `--quick` stops after the Rust tests.
pub fn test_all(args: &[String]) -> Result<()> {
    let quick = match args {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => bail!("usage: cargo xtask test [--quick]"),
    };
    let root = dist::repo_root()?;
    let started = Instant::now();
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        let result = stage(name, f);
        timings.push((name, t.elapsed().as_secs_f64()));
        result
    };

    timed("tools", &mut || {
        ensure_build_tools()?;
        // The network tests build partitions and degraded links from these;
        // the stalled-disk test freezes an ext4 file system.
        sh::ensure_apt(&[("ip", "iproute2"), ("iptables", "iptables"), ("curl", "curl"), ("mkfs.ext4", "e2fsprogs")])?;
        sh::run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
    })?;
    timed("fmt", &mut || sh::run(cargo().current_dir(&root).args(["fmt", "--all", "--check"])))?;
    timed("clippy", &mut || {
        sh::run(cargo().current_dir(&root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
    })?;
    timed("cargo test", &mut || sh::run(cargo().current_dir(&root).args(["test", "--workspace"])))?;
    if !quick {
        timed("dist + artifact checks", &mut || dist::run(&["--check".into()]))?;
        timed("reproducible rebuild", &mut || dist::run(&["--reproducible".into()]))?;
        timed("vm-test", &mut || vm_test::run(&[]))?;
        timed("nix-check", &mut || nix_check::run(&[]))?;
    }

    eprintln!("\nstage timings:");
    for (name, secs) in &timings {
        eprintln!("  {name:<28} {secs:>7.1}s");
    }
    eprintln!("  {:<28} {:>7.1}s", "total", started.elapsed().as_secs_f64());
    Ok(())
}
