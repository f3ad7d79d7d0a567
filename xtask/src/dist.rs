//! `cargo xtask dist`: builds every release artifact into `dist/` without
//! Nix, from the shared sources in `packaging/`, reproducibly; and the checks
//! that prove the artifacts right (linters, package contents, the OCI image
//! really running, bit-for-bit rebuilds).
//!
//! Entry points for other commands: [`build`], [`check`], [`check_reproducible`].

mod archive;
mod binary;
mod checks;
mod oci;
pub(crate) mod packages;
mod repro;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::sh;

const USAGE: &str = "\
usage: cargo xtask dist [--check | --check-only | --reproducible]

  (no flag)       build dist/: static binary, .deb, .rpm, OCI layout and
                  archive, release tarball, SHA256SUMS
  --check         build, then run every artifact check (see --check-only)
  --check-only    check an existing dist/: file, shellcheck, systemd-analyze
                  security, lintian, rpmlint, dpkg-deb/rpm contents, skopeo and
                  oci-image-tool, the image running under podman
  --reproducible  build twice from clean checkouts in two other directories
                  and compare SHA256SUMS, naming any differing artifact

environment: PEAT_PKG_RELEASE (package release, default 1),
             SOURCE_DATE_EPOCH (default: time of the last commit)
";

/// What every stage needs to know about the build.
pub struct Ctx {
    pub root: PathBuf,
    pub dist: PathBuf,
    pub target_dir: PathBuf,
    pub version: String,
    pub release: String,
    pub epoch: i64,
    pub revision: String,
    pub description: String,
    pub repository: String,
    pub license: String,
    /// Build with `--locked` (when Cargo.lock is committed).
    pub locked: bool,
}

impl Ctx {
    pub fn binary_name(&self) -> String {
        format!("peat-sidecar-{}-{}", self.version, sh::MUSL_TARGET)
    }
    pub fn deb_name(&self) -> String {
        format!("peat-sidecar_{}-{}_amd64.deb", self.version, self.release)
    }
    pub fn rpm_name(&self) -> String {
        format!("peat-sidecar-{}-{}.x86_64.rpm", self.version, self.release)
    }
    pub fn oci_archive_name(&self) -> String {
        format!("peat-sidecar-{}-oci.tar", self.version)
    }
    pub fn tarball_name(&self) -> String {
        format!("peat-sidecar-{}-{}.tar.gz", self.version, sh::MUSL_TARGET)
    }
    /// The artifacts listed in SHA256SUMS.
    pub fn artifact_names(&self) -> Vec<String> {
        let mut names =
            vec![self.binary_name(), self.deb_name(), self.rpm_name(), self.oci_archive_name(), self.tarball_name()];
        names.sort();
        names
    }
    pub fn tree(&self) -> PathBuf {
        self.dist.join("tree")
    }
    pub fn oci_layout(&self) -> PathBuf {
        self.dist.join("oci-layout")
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let root = repo_root()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => build(&root).map(|_| ()),
        ["--check"] => {
            let ctx = build(&root)?;
            check(&ctx.root)
        }
        ["--check-only"] => check(&root),
        ["--reproducible"] => check_reproducible(&root),
        ["-h" | "--help"] => {
            print!("{USAGE}");
            Ok(())
        }
        _ => bail!("unexpected arguments {args:?}\n\n{USAGE}"),
    }
}

/// The workspace root (the parent of `xtask/`).
pub fn repo_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest_dir.parent().context("xtask has a parent directory")?.to_path_buf())
}

/// Reads version, metadata, commit and time for a build of `root`.
pub fn context(root: &Path) -> Result<Ctx> {
    let meta = sh::output(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).current_dir(root).args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
        ]),
    )?;
    let meta: serde_json::Value = serde_json::from_str(&meta).context("parsing cargo metadata")?;
    let package = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "peat-sidecar"))
        .context("no peat-sidecar package in the workspace")?;
    let field = |name: &str| package[name].as_str().unwrap_or_default().to_owned();
    let target_dir = PathBuf::from(meta["target_directory"].as_str().context("cargo metadata: target_directory")?);

    let git = |args: &[&str]| sh::output(Command::new("git").current_dir(root).args(args));
    let revision = git(&["rev-parse", "HEAD"]).context("the build needs a git checkout")?.trim().to_owned();
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse().context("SOURCE_DATE_EPOCH is not an integer")?,
        _ => git(&["log", "-1", "--format=%ct"])?.trim().parse().context("git log: commit time")?,
    };
    let locked = git(&["ls-files", "--error-unmatch", "Cargo.lock"]).is_ok();
    Ok(Ctx {
        dist: root.join("dist"),
        root: root.to_path_buf(),
        target_dir,
        version: field("version"),
        release: std::env::var("PEAT_PKG_RELEASE").unwrap_or_else(|_| "1".into()),
        epoch,
        revision,
        description: field("description"),
        repository: field("repository"),
        license: field("license"),
        locked,
    })
}

/// Builds every artifact into `<root>/dist` and returns the build context.
pub fn build(root: &Path) -> Result<Ctx> {
    let ctx = context(root)?;
    eprintln!("peat-sidecar {}-{} at {} (SOURCE_DATE_EPOCH={})", ctx.version, ctx.release, ctx.revision, ctx.epoch);
    let nfpm = sh::stage("tools", || {
        sh::ensure_apt(&[
            ("musl-gcc", "musl-tools"),
            ("protoc", "protobuf-compiler"),
            ("file", "file"),
            ("strip", "binutils"),
            ("gzip", "gzip"),
            ("git", "git"),
        ])?;
        sh::ensure_musl_target()?;
        sh::ensure_nfpm()
    })?;
    let built = sh::stage("static musl binary", || binary::build(&ctx))?;

    if ctx.dist.exists() {
        std::fs::remove_dir_all(&ctx.dist).with_context(|| format!("removing {}", ctx.dist.display()))?;
    }
    let work = ctx.dist.join(".work");
    let generated = work.join("generated");
    std::fs::create_dir_all(&generated)?;
    let bin = ctx.dist.join(ctx.binary_name());
    sh::stage("strip, check, man page and completions", || {
        binary::install_stripped(&built, &bin)?;
        binary::generate(&bin, &generated, ctx.epoch)
    })?;
    sh::stage("install tree and release tarball", || {
        packages::make_tree(&ctx, &bin, &generated, &ctx.tree())?;
        packages::tarball(&ctx, &ctx.tree(), &ctx.dist.join(ctx.tarball_name()))
    })?;
    sh::stage("deb (nfpm)", || packages::nfpm(&ctx, &nfpm, "deb", &bin, &generated, &ctx.dist.join(ctx.deb_name())))?;
    sh::stage("rpm (nfpm)", || packages::nfpm(&ctx, &nfpm, "rpm", &bin, &generated, &ctx.dist.join(ctx.rpm_name())))?;
    sh::stage("OCI image", || oci::build(&ctx, &bin, &ctx.oci_layout(), &ctx.dist.join(ctx.oci_archive_name())))?;
    sh::stage("SHA256SUMS", || {
        let mut sums = String::new();
        for name in ctx.artifact_names() {
            sums.push_str(&format!("{}  {name}\n", sh::sha256_file(&ctx.dist.join(&name))?));
        }
        std::fs::write(ctx.dist.join("SHA256SUMS"), &sums)?;
        eprint!("{sums}");
        Ok(())
    })?;
    std::fs::remove_dir_all(&work)?;
    eprintln!("artifacts in {}", ctx.dist.display());
    Ok(ctx)
}

/// Checks the artifacts in `<root>/dist` with the real tools (installing
/// them when missing). See [`checks`].
pub fn check(root: &Path) -> Result<()> {
    let ctx = context(root)?;
    checks::all(&ctx)
}

/// Builds twice from clean checkouts of HEAD in two different directories
/// and fails, naming the artifact, unless both SHA256SUMS are identical.
pub fn check_reproducible(root: &Path) -> Result<()> {
    repro::run(root)
}
