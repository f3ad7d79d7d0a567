//! The artifacts under test, found in `cargo xtask dist`'s output, and the
//! "newer build" the upgrade step installs: the same binary and files
//! packaged again by nFPM from the same packaging/nfpm.yaml with the package
//! release raised by one. That is a real upgrade for dpkg and rpm (higher
//! version, upgrade scriptlet paths) at the cost of two nFPM runs instead of
//! a second release build.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub struct Artifacts {
    pub deb: PathBuf,
    pub rpm: PathBuf,
    pub tarball: PathBuf,
    /// dist/tree: the installed layout (binary, man page, completions).
    pub tree: PathBuf,
    pub version: String,
    pub release: u32,
}

impl Artifacts {
    pub fn binary(&self) -> PathBuf {
        self.tree.join("usr/bin/peat-sidecar")
    }
}

fn one(dist: &Path, prefix: &str, suffix: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(dist)
        .with_context(|| format!("reading {} (run `cargo xtask dist` first)", dist.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(prefix) && n.ends_with(suffix)
                })
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no {prefix}*{suffix} in {} (run `cargo xtask dist` first)", dist.display()),
        many => bail!("more than one {prefix}*{suffix} in {}: {many:?}", dist.display()),
    }
}

/// Finds the .deb, .rpm, release tarball and install tree in `dist`.
pub fn find(dist: &Path) -> Result<Artifacts> {
    let deb = one(dist, "peat-sidecar_", "_amd64.deb")?;
    let rpm = one(dist, "peat-sidecar-", ".x86_64.rpm")?;
    let tarball = one(dist, "peat-sidecar-", "-x86_64-unknown-linux-musl.tar.gz")?;
    let tree = dist.join("tree");
    if !tree.join("usr/bin/peat-sidecar").is_file() {
        bail!("{} has no usr/bin/peat-sidecar (run `cargo xtask dist` first)", tree.display());
    }
    // peat-sidecar_<version>-<release>_amd64.deb
    let name = deb.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let vr = name.trim_start_matches("peat-sidecar_").trim_end_matches("_amd64.deb");
    let (version, release) = vr.rsplit_once('-').with_context(|| format!("cannot read version-release from {name}"))?;
    let release: u32 = release.parse().with_context(|| format!("package release in {name} is not a number"))?;
    Ok(Artifacts { deb, rpm, tarball, tree, version: version.to_string(), release })
}

/// Packages the dist tree's files again with release+1 into `out`; returns
/// (deb, rpm).
pub fn upgrade_packages(root: &Path, art: &Artifacts, out: &Path) -> Result<(PathBuf, PathBuf)> {
    // The same pinned nFPM that `cargo xtask dist` uses.
    let nfpm = crate::sh::ensure_nfpm()?;
    std::fs::create_dir_all(out)?;
    // nfpm.yaml's PEAT_PKG_GENERATED: the man page and completions, which
    // the tree holds at their installed paths.
    let generated = out.join("generated");
    std::fs::create_dir_all(&generated)?;
    for (from, name) in [
        ("usr/share/man/man1/peat-sidecar.1.gz", "peat-sidecar.1.gz"),
        ("usr/share/bash-completion/completions/peat-sidecar", "peat-sidecar.bash"),
        ("usr/share/zsh/vendor-completions/_peat-sidecar", "_peat-sidecar"),
        ("usr/share/fish/vendor_completions.d/peat-sidecar.fish", "peat-sidecar.fish"),
    ] {
        std::fs::copy(art.tree.join(from), generated.join(name))
            .with_context(|| format!("copying {from} from the dist tree"))?;
    }
    // The same nfpm.yaml wiring as `cargo xtask dist`, one release higher.
    let mut ctx = crate::dist::context(root)?;
    ctx.release = (art.release + 1).to_string();
    let deb = out.join(ctx.deb_name());
    let rpm = out.join(ctx.rpm_name());
    for (packager, target) in [("deb", &deb), ("rpm", &rpm)] {
        crate::dist::packages::nfpm(&ctx, &nfpm, packager, &art.binary(), &generated, target)
            .with_context(|| format!("nfpm {packager} (upgrade build)"))?;
    }
    Ok((deb, rpm))
}
