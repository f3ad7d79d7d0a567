//! Reproducibility: build the artifacts from clean checkouts of HEAD in two
//! different directories (with different umasks, at different times) and
//! compare their SHA256SUMS. The cargo registry is shared; target
//! directories are not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::sh;

pub fn run(root: &Path) -> Result<()> {
    let head = sh::output(Command::new("git").current_dir(root).args(["rev-parse", "HEAD"]))?.trim().to_owned();
    let status = sh::output(Command::new("git").current_dir(root).args(["status", "--porcelain"]))?;
    let dirty = !status.trim().is_empty();
    let base = std::env::temp_dir().join(format!("peat-sidecar-repro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;

    // The first build: this checkout when it is clean (its target dir is
    // warm), else a fresh clone. The second: always a fresh clone, at a
    // path of a different length, under another umask.
    let first = if dirty {
        eprintln!("working tree has changes, so the first copy is built from a clean clone of {head}:\n{status}");
        let dir = base.join("a");
        clone(root, &head, &dir)?;
        dir
    } else {
        root.to_path_buf()
    };
    let second = base.join("second-checkout-in-another-directory");
    clone(root, &head, &second)?;

    let sums_a = sh::stage("reproducibility: first build", || build_in(&first, "0022"))?;
    let sums_b = sh::stage("reproducibility: second build", || build_in(&second, "0002"))?;
    let result = compare(&sums_a, &sums_b, &first.join("dist"), &second.join("dist"));
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&base);
        eprintln!("reproducible: both builds produced identical SHA256SUMS");
    } else {
        eprintln!("builds kept for inspection in {}", base.display());
    }
    result
}

fn clone(root: &Path, head: &str, dir: &Path) -> Result<()> {
    sh::run(Command::new("git").args(["clone", "--quiet", "--no-hardlinks"]).arg(root).arg(dir))?;
    sh::run(Command::new("git").current_dir(dir).args(["checkout", "--quiet", "--detach", head]))
}

/// Runs `cargo xtask dist` in `dir` with its own target directory and the
/// given umask, and returns its SHA256SUMS as name → hash.
fn build_in(dir: &Path, umask: &str) -> Result<BTreeMap<String, String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new("sh");
    cmd.current_dir(dir)
        .args(["-c", &format!("umask {umask} && exec \"$0\" xtask dist")])
        .arg(cargo)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        // Each checkout takes its own time from its own last commit.
        .env_remove("SOURCE_DATE_EPOCH");
    sh::run(&mut cmd).with_context(|| format!("cargo xtask dist in {}", dir.display()))?;
    read_sums(&dir.join("dist/SHA256SUMS"))
}

fn read_sums(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.split_once("  ")).map(|(hash, name)| (name.to_owned(), hash.to_owned())).collect())
}

fn compare(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, dist_a: &Path, dist_b: &Path) -> Result<()> {
    let mut differing = Vec::new();
    for name in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) if x == y => eprintln!("identical  {name}"),
            (x, y) => {
                eprintln!(
                    "DIFFERENT  {name}: {} vs {}",
                    x.map_or("(missing)", String::as_str),
                    y.map_or("(missing)", String::as_str)
                );
                differing.push(name.clone());
            }
        }
    }
    if differing.is_empty() {
        return Ok(());
    }
    if sh::which("diffoscope").is_some() {
        for name in &differing {
            let (x, y): (PathBuf, PathBuf) = (dist_a.join(name), dist_b.join(name));
            if x.is_file() && y.is_file() {
                let _ = sh::run(Command::new("diffoscope").arg("--text").arg("-").arg(&x).arg(&y));
            }
        }
    } else {
        eprintln!("(install diffoscope to see how they differ)");
    }
    bail!("not reproducible: {} differ between {} and {}", differing.join(", "), dist_a.display(), dist_b.display())
}
