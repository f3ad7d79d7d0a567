//! The install tree (what install.sh installs), the release tarball and the
//! .deb/.rpm made by nFPM from packaging/nfpm.yaml.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::binary::set_mode;
use super::{Ctx, archive};
use crate::sh;

/// Lays out `tree` with the files at their installed paths (relative to /)
/// plus install.sh at its top: the content of the release tarball.
pub fn make_tree(ctx: &Ctx, bin: &Path, generated: &Path, tree: &Path) -> Result<()> {
    let p = |rel: &str| ctx.root.join("packaging").join(rel);
    let g = |name: &str| generated.join(name);
    let files: [(PathBuf, &str, u32); 12] = [
        (bin.to_path_buf(), "usr/bin/peat-sidecar", 0o755),
        (p("peat-sidecar.service"), "usr/lib/systemd/system/peat-sidecar.service", 0o644),
        (p("sysusers.conf"), "usr/lib/sysusers.d/peat-sidecar.conf", 0o644),
        (p("tmpfiles.conf"), "usr/lib/tmpfiles.d/peat-sidecar.conf", 0o644),
        (g("peat-sidecar.1.gz"), "usr/share/man/man1/peat-sidecar.1.gz", 0o644),
        (g("peat-sidecar.bash"), "usr/share/bash-completion/completions/peat-sidecar", 0o644),
        (g("_peat-sidecar"), "usr/share/zsh/vendor-completions/_peat-sidecar", 0o644),
        (g("peat-sidecar.fish"), "usr/share/fish/vendor_completions.d/peat-sidecar.fish", 0o644),
        (p("copyright"), "usr/share/doc/peat-sidecar/copyright", 0o644),
        (p("peat-sidecar.default"), "etc/default/peat-sidecar", 0o644),
        // install.sh sets the group when it installs it.
        (p("config.yaml"), "etc/peat-sidecar/config.yaml", 0o640),
        (p("install.sh"), "install.sh", 0o755),
    ];
    for (src, rel, mode) in files {
        let dst = tree.join(rel);
        let parent = dst.parent().expect("has a parent");
        std::fs::create_dir_all(parent)?;
        std::fs::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        set_mode(&dst, mode)?;
    }
    set_dir_modes(tree)
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        if path.is_dir() {
            set_dir_modes(&path)?;
        }
    }
    Ok(())
}

/// The release tarball: the tree under `peat-sidecar-<version>/`, gzipped
/// without name or timestamp.
pub fn tarball(ctx: &Ctx, tree: &Path, out: &Path) -> Result<()> {
    let entries = archive::tree_entries(tree, &format!("peat-sidecar-{}", ctx.version))?;
    let tar = archive::write_tar(&entries, ctx.epoch, Vec::new())?;
    std::fs::write(out, super::binary::gzip_best(&tar)?).with_context(|| format!("writing {}", out.display()))
}

/// Runs nFPM for `packager` (deb or rpm) and writes the package to `out`.
pub fn nfpm(ctx: &Ctx, nfpm: &Path, packager: &str, bin: &Path, generated: &Path, out: &Path) -> Result<()> {
    sh::run(
        Command::new(nfpm)
            .current_dir(&ctx.root)
            .args(["package", "--config", "packaging/nfpm.yaml", "--packager", packager, "--target"])
            .arg(out)
            .env("PEAT_PKG_VERSION", &ctx.version)
            .env("PEAT_PKG_RELEASE", &ctx.release)
            // The static binary is built for x86_64 only.
            .env("PEAT_PKG_ARCH", "amd64")
            .env("PEAT_PKG_BIN", bin)
            .env("PEAT_PKG_GENERATED", generated)
            .env("SOURCE_DATE_EPOCH", ctx.epoch.to_string()),
    )
    .with_context(|| format!("nfpm {packager}"))
}
