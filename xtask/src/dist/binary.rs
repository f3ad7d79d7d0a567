//! The static musl binary and what is generated from it (man page, shell
//! completions), built so that the output does not depend on the checkout
//! path, the user or the time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::Ctx;
use crate::sh::{self, MUSL_TARGET};

/// Builds the release binary for the musl target and returns its path
/// inside the target directory (stripped, static).
pub fn build(ctx: &Ctx) -> Result<PathBuf> {
    let cargo_home = cargo_home()?;
    let root = ctx.root.display();
    let home = cargo_home.display();
    // Paths that would otherwise end up in panic messages and debug data.
    let mut rustflags = format!(
        "-C target-feature=+crt-static --remap-path-prefix={root}=/build/peat-sidecar \
         --remap-path-prefix={home}=/cargo"
    );
    // Generated code (build script output) lives in the target directory.
    if !ctx.target_dir.starts_with(&ctx.root) {
        rustflags.push_str(&format!(" --remap-path-prefix={}=/build/target", ctx.target_dir.display()));
    }
    let cflags = format!("-ffile-prefix-map={root}=/build/peat-sidecar -ffile-prefix-map={home}=/cargo");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&ctx.root)
        .args(["build", "--release", "--package", "peat-sidecar", "--bin", "peat-sidecar"])
        .args(["--target", MUSL_TARGET])
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS", rustflags)
        .env("CFLAGS_x86_64_unknown_linux_musl", cflags)
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .env("SOURCE_DATE_EPOCH", ctx.epoch.to_string())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if ctx.locked {
        cmd.arg("--locked");
    }
    sh::run(&mut cmd).context("building the static binary (is protoc installed?)")?;
    let bin = ctx.target_dir.join(MUSL_TARGET).join("release/peat-sidecar");
    if !bin.is_file() {
        bail!("cargo reported success but {} is missing", bin.display());
    }
    Ok(bin)
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// Copies the binary to `dst`, strips it and checks with `file` that it is
/// a static executable without an ELF interpreter.
pub fn install_stripped(built: &Path, dst: &Path) -> Result<()> {
    std::fs::copy(built, dst).with_context(|| format!("copying {} to {}", built.display(), dst.display()))?;
    sh::run(Command::new("strip").args(["--strip-all", "--remove-section=.comment"]).arg(dst))
        .context("stripping the binary")?;
    set_mode(dst, 0o755)?;
    check_static(dst)
}

/// Fails unless `file` says the binary is static, stripped and has no
/// interpreter.
pub fn check_static(bin: &Path) -> Result<()> {
    let desc = sh::output(Command::new("file").arg("-b").arg(bin))?;
    let desc = desc.trim();
    let is_static = desc.contains("statically linked") || desc.contains("static-pie linked");
    if !is_static || desc.contains("interpreter") || desc.contains("not stripped") || !desc.contains("stripped") {
        bail!("{} is not a stripped static executable: file says `{desc}`", bin.display());
    }
    eprintln!("file: {desc}");
    Ok(())
}

/// Runs the binary's hidden `generate` command into `dir` and gzips the man
/// page like `gzip -9n` (no name, zero mtime): peat-sidecar.1.gz,
/// peat-sidecar.bash, _peat-sidecar, peat-sidecar.fish.
pub fn generate(bin: &Path, dir: &Path, epoch: i64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for what in ["man", "completions"] {
        let mut cmd = Command::new(bin);
        cmd.args(["generate", what]).arg(dir).env("SOURCE_DATE_EPOCH", epoch.to_string());
        // Nothing from the build host's configuration may leak in.
        cmd.env_remove("PEAT_SIDECAR_CONFIG").env("HOME", dir);
        sh::run(&mut cmd).with_context(|| format!("`peat-sidecar generate {what}`"))?;
    }
    let man = dir.join("peat-sidecar.1");
    let page = std::fs::read(&man).with_context(|| format!("reading {}", man.display()))?;
    std::fs::write(dir.join("peat-sidecar.1.gz"), gzip_best(&page)?)?;
    std::fs::remove_file(&man)?;
    for name in ["peat-sidecar.1.gz", "peat-sidecar.bash", "_peat-sidecar", "peat-sidecar.fish"] {
        let path = dir.join(name);
        if !path.is_file() {
            bail!("`peat-sidecar generate` did not write {}", path.display());
        }
        set_mode(&path, 0o644)?;
    }
    Ok(())
}

/// `gzip -9n`: maximum compression, no file name, zero mtime, so the bytes
/// depend on the input only. gzip(1) rather than an in-process deflate: the
/// xtask is an unoptimised build, and deflating the binary in it takes
/// minutes on a busy machine.
pub fn gzip_best(data: &[u8]) -> Result<Vec<u8>> {
    use std::process::Stdio;
    let mut child = Command::new("gzip")
        .args(["-9", "--no-name", "--stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("running gzip")?;
    feeder.join().map_err(|_| anyhow::anyhow!("gzip input thread panicked"))?.context("writing to gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
