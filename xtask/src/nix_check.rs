//! `cargo xtask nix-check`: everything about the Nix flake that can be
//! verified on a machine without a Nix store or binary cache.
//!
//! Stages: every `.nix` file parses (`nix-instantiate --parse`), `deadnix`
//! finds no dead code, `nixpkgs-fmt` finds nothing to reformat, `flake.lock`
//! agrees with `flake.nix`'s inputs, and the flake's builtins-only helpers
//! (systemd unit reader over the packaged unit, commit-time formatting)
//! evaluate to their expected results. With `--nixpkgs-lib DIR` (or
//! `NIXPKGS_LIB=DIR`) the NixOS module is also evaluated with
//! `lib.evalModules`, and flake.nix's outputs with stand-in packages. It
//! never builds anything: building needs nixpkgs.
//!
//! Missing tools are installed: Debian's `nix-bin` with apt, and pinned
//! `deadnix`/`nixpkgs-fmt` with `cargo install --locked` into ~/.cargo/bin,
//! where later runs find them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const DEADNIX_VERSION: &str = "1.3.1";
const NIXPKGS_FMT_VERSION: &str = "1.3.0";

const USAGE: &str = "usage: cargo xtask nix-check [--nixpkgs-lib DIR]";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let nixpkgs_lib = parse_args(args)?;
    let root = repo_root()?;
    let mut report = Report::default();

    report.stage("install tools", || {
        ensure_nix_bin()?;
        ensure_cargo_tool("deadnix", "deadnix", DEADNIX_VERSION)?;
        ensure_cargo_tool("nixpkgs-fmt", "nixpkgs-fmt", NIXPKGS_FMT_VERSION)?;
        Ok("nix-instantiate, deadnix, nixpkgs-fmt present".into())
    })?;

    let files = nix_files(&root)?;
    if files.is_empty() {
        bail!("no .nix files found under {}", root.display());
    }

    report.stage("nix-instantiate --parse", || {
        for file in &files {
            run_quiet(Command::new("nix-instantiate").arg("--parse").arg(file).current_dir(&root))
                .with_context(|| format!("{} does not parse", file.display()))?;
        }
        Ok(format!("{} files parse", files.len()))
    })?;

    report.stage("deadnix --fail", || {
        run_shown(Command::new(cargo_bin("deadnix")).arg("--fail").args(&files).current_dir(&root))
            .context("deadnix found unused bindings (fix them; `deadnix --edit` can)")?;
        Ok("no unused code".into())
    })?;

    report.stage("nixpkgs-fmt --check", || {
        run_shown(Command::new(cargo_bin("nixpkgs-fmt")).arg("--check").args(&files).current_dir(&root))
            .context("files are not formatted (run `nixpkgs-fmt .` or `nix fmt`)")?;
        Ok("formatted".into())
    })?;

    report.stage("flake.lock matches flake.nix", || {
        let checked = eval_list(&root, "nix/tests/lock-check.nix", &[])?;
        Ok(format!("{checked} lock assertions hold"))
    })?;

    report.stage("helpers (unit reader, dates)", || {
        let checked = eval_list(&root, "nix/tests/pure-eval.nix", &[])?;
        Ok(format!("{checked} evaluation checks hold"))
    })?;

    // These two need nixpkgs' lib (lib.evalModules, lib.genAttrs, ...), which
    // no registry ships; they run when one is given.
    let needs_lib = "needs a nixpkgs lib/ directory: --nixpkgs-lib DIR or NIXPKGS_LIB=DIR";
    match &nixpkgs_lib {
        Some(lib_dir) => {
            let lib_expr = format!("import {}", lib_dir.display());
            report.stage("NixOS module (lib.evalModules)", || {
                let args = ["-A", "expectations", "--arg", "lib", &lib_expr];
                let checked = eval_list(&root, "nix/tests/module-eval.nix", &args)?;
                Ok(format!("{checked} module expectations hold"))
            })?;
            report.stage("flake outputs wiring", || {
                let checked = eval_list(&root, "nix/tests/flake-wiring.nix", &["--arg", "lib", &lib_expr])?;
                Ok(format!("{checked} wiring checks hold"))
            })?;
        }
        None => {
            report.not_run("NixOS module (lib.evalModules)", needs_lib);
            report.not_run("flake outputs wiring", needs_lib);
        }
    }

    report.print();
    Ok(())
}

fn parse_args(args: &[String]) -> anyhow::Result<Option<PathBuf>> {
    let mut lib_dir = std::env::var_os("NIXPKGS_LIB").map(PathBuf::from);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--nixpkgs-lib" => {
                let dir = rest.next().with_context(|| format!("--nixpkgs-lib needs a directory\n{USAGE}"))?;
                lib_dir = Some(PathBuf::from(dir));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    if let Some(dir) = &lib_dir {
        let dir = std::fs::canonicalize(dir).with_context(|| format!("nixpkgs lib directory {}", dir.display()))?;
        if !dir.join("default.nix").is_file() {
            bail!("{} has no default.nix: point --nixpkgs-lib at nixpkgs' lib/ directory", dir.display());
        }
        return Ok(Some(dir));
    }
    Ok(None)
}

fn repo_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().context("xtask has no parent directory")?;
    if !root.join("flake.nix").is_file() {
        bail!("{} has no flake.nix", root.display());
    }
    Ok(root.to_path_buf())
}

/// Every tracked or new (not ignored) `.nix` file, relative to the root.
fn nix_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard", "--", "*.nix"])
        .current_dir(root)
        .output()
        .context("listing .nix files with git")?;
    if !output.status.success() {
        bail!("git ls-files failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let mut files: Vec<PathBuf> = String::from_utf8(output.stdout)
        .context("git ls-files printed non-UTF-8 paths")?
        .lines()
        .map(PathBuf::from)
        .filter(|path| root.join(path).is_file())
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn ensure_nix_bin() -> anyhow::Result<()> {
    if works(Command::new("nix-instantiate").arg("--version")) {
        return Ok(());
    }
    println!("nix-instantiate not found: installing Debian's nix-bin");
    // Wait for a dpkg lock held by another apt run rather than failing.
    let lock_wait = ["-o", "DPkg::Lock::Timeout=600"];
    run_shown(Command::new("apt-get").args(lock_wait).args(["update", "-q"]))
        .context("apt-get update (installing nix-bin needs root and Debian's mirror)")?;
    run_shown(
        Command::new("apt-get")
            .args(lock_wait)
            .args(["install", "-y", "-q", "--no-install-recommends", "nix-bin"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install nix-bin")?;
    if !works(Command::new("nix-instantiate").arg("--version")) {
        bail!("nix-bin is installed but nix-instantiate does not run");
    }
    Ok(())
}

/// Installs `krate` at exactly `version` unless `bin --version` reports it.
fn ensure_cargo_tool(bin: &str, krate: &str, version: &str) -> anyhow::Result<()> {
    let path = cargo_bin(bin);
    if let Ok(output) = Command::new(&path).arg("--version").output() {
        // nixpkgs-fmt 1.3.0 prints its version but exits 1, so only the text counts.
        let printed = String::from_utf8_lossy(&output.stdout);
        let mut words = printed.split_whitespace();
        if words.next() == Some(bin) && words.any(|word| word == version) {
            return Ok(());
        }
    }
    println!("{bin} {version} not found: cargo install --locked {krate}@{version}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_shown(Command::new(cargo).args(["install", "--locked", &format!("{krate}@{version}")]))
        .with_context(|| format!("cargo install {krate}@{version} (needs crates.io)"))
}

/// A tool installed by `cargo install`: ~/.cargo/bin (or $CARGO_HOME/bin).
fn cargo_bin(name: &str) -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    match cargo_home {
        Some(home) if home.join("bin").join(name).is_file() => home.join("bin").join(name),
        _ => PathBuf::from(name),
    }
}

/// Evaluates a Nix file that yields a list of passed check names (or throws
/// naming the failed one) and returns how many passed.
fn eval_list(root: &Path, file: &str, extra: &[&str]) -> anyhow::Result<usize> {
    let output = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", file])
        .args(extra)
        .current_dir(root)
        .output()
        .with_context(|| format!("running nix-instantiate --eval {file}"))?;
    if !output.status.success() {
        bail!("{file}: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let text = text.trim();
    if !(text.starts_with('[') && text.ends_with(']')) {
        bail!("{file} did not evaluate to a list of checks: {text}");
    }
    // A JSON list of plain names: count the quoted strings.
    let count = text.matches('"').count() / 2;
    if count == 0 {
        bail!("{file} evaluated to no checks at all");
    }
    Ok(count)
}

fn works(command: &mut Command) -> bool {
    command.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run_quiet(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn run_shown(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} exited with {status}");
    }
    Ok(())
}

/// Stage results with their durations, printed as a table at the end.
#[derive(Default)]
struct Report {
    rows: Vec<(String, &'static str, Duration, String)>,
}

impl Report {
    fn stage(&mut self, name: &str, body: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
        println!("==> nix-check: {name}");
        let started = Instant::now();
        let result = body();
        let elapsed = started.elapsed();
        match result {
            Ok(detail) => {
                println!("    ok in {:.1}s: {detail}", elapsed.as_secs_f64());
                self.rows.push((name.to_owned(), "ok", elapsed, detail));
                Ok(())
            }
            Err(err) => {
                self.rows.push((name.to_owned(), "FAILED", elapsed, format!("{err:#}")));
                self.print();
                Err(err.context(format!("stage `{name}`")))
            }
        }
    }

    fn not_run(&mut self, name: &str, why: &str) {
        println!("==> nix-check: {name}: not run ({why})");
        self.rows.push((name.to_owned(), "not run", Duration::ZERO, why.to_owned()));
    }

    fn print(&self) {
        println!("\nnix-check summary");
        let width = self.rows.iter().map(|row| row.0.len()).max().unwrap_or(0);
        for (name, outcome, elapsed, detail) in &self.rows {
            let detail = detail.lines().next().unwrap_or_default();
            println!("  {name:<width$}  {outcome:<7}  {:>6.1}s  {detail}", elapsed.as_secs_f64());
        }
        let total: Duration = self.rows.iter().map(|row| row.2).sum();
        let passed = self.rows.iter().filter(|row| row.1 == "ok").count();
        let failed = self.rows.iter().filter(|row| row.1 == "FAILED").count();
        println!("  total {:.1}s", total.as_secs_f64());
        println!("nix-check: {passed} passed, {failed} failed");
    }
}
