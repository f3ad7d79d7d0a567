//! Host-side plumbing for `cargo xtask vm-test`: running commands with
//! readable errors, timing stages, and installing the Debian tools the
//! harness needs on a fresh machine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub use crate::sh::{describe, output, run, which};

/// Runs `cmd` with stdout and stderr sent to `log`; on failure the error
/// carries the log's last lines, so long chatty tools stay readable.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let what = describe(cmd);
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status}); last lines of {}:\n{}", log.display(), tail(log, 40));
    }
    Ok(())
}

/// The last `lines` lines of a text file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs one named stage, printing its start and duration, and records the
/// duration for the closing summary.
pub fn stage<T>(timings: &mut Vec<(String, f64)>, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let start = Instant::now();
    let result = f();
    let secs = start.elapsed().as_secs_f64();
    timings.push((name.to_string(), secs));
    match &result {
        Ok(_) => println!("<== {name}: {secs:.1} s"),
        Err(_) => println!("<== {name}: FAILED after {secs:.1} s"),
    }
    result.with_context(|| format!("stage `{name}`"))
}

/// (program, Debian package providing it) for everything the harness runs.
const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("ip", "iproute2"),
    ("curl", "curl"),
];

/// Installs the Debian packages behind any missing tool (one `apt-get
/// update`, one install). Installing qemu-system-x86 may replace a newer
/// qemu-utils with Debian's; both come from the same release then.
pub fn ensure_tools() -> Result<()> {
    if !is_root() {
        bail!("vm-test must run as root (debootstrap, mounts, network namespaces)");
    }
    let missing =
        || -> Vec<&str> { TOOLS.iter().filter(|(prog, _)| which(prog).is_none()).map(|(_, pkg)| *pkg).collect() };
    if missing().is_empty() {
        println!("all tools present: {}", TOOLS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", "));
        return Ok(());
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        // Other jobs on the machine may hold the dpkg lock for a while.
        cmd.args(["-o", "DPkg::Lock::Timeout=900", "-q"]).args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    apt(&["update"]).context("apt-get update")?;
    // Two rounds: Debian's qemu-system-x86 may remove a newer qemu-utils
    // (from backports) that it cannot live with; the second round then
    // installs Debian's qemu-utils to match.
    for _ in 0..2 {
        let packages = missing();
        if packages.is_empty() {
            break;
        }
        println!("installing Debian packages: {}", packages.join(" "));
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(packages.iter().copied());
        apt(&args).context("apt-get install")?;
    }
    for (prog, pkg) in TOOLS {
        if which(prog).is_none() {
            bail!("`{prog}` is still missing after installing Debian package {pkg}");
        }
    }
    Ok(())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}
