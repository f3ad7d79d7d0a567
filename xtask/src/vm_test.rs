//! `cargo xtask vm-test`: installs the built .deb, .rpm and install.sh
//! release inside throwaway Debian bookworm guests under qemu and runs
//! tests/vm/guest-check.sh there (install, serve, upgrade, remove, purge,
//! reinstall), one fresh copy-on-write guest per kind; a guest whose power
//! is cut while it writes, which must come back with every acknowledged
//! write; then, on the host, two packaged sidecars in two network namespaces
//! that must sync a document over the mesh. Prints per-stage times and a
//! result table.

mod artifacts;
mod guest;
mod host;
mod image;
mod mesh;
mod power_cut;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use guest::{Accel, BootOptions, Limits};
use power_cut::Cut;

fn usage() -> String {
    let kinds = Kind::ALL.map(Kind::name).join(",");
    format!(
        "\
usage: cargo xtask vm-test [options]

Runs tests/vm/guest-check.sh for each package kind inside a fresh qemu guest
(KVM when a probe guest boots under it, TCG otherwise), tests/vm/power-cut.sh
across a power cut, then the two-node mesh check in network namespaces.
Needs root and `cargo xtask dist` output.

options:
  --kinds LIST      comma-separated subset of (default: all)
                    {kinds}
  --dist DIR        where `cargo xtask dist` put the artifacts (default: dist)
  --cache-dir DIR   guest image cache (default: $PEAT_SIDECAR_VM_CACHE,
                    $XDG_CACHE_HOME/peat-sidecar-vm, or
                    /var/cache/peat-sidecar-vm)
  --accel auto|kvm|tcg
                    auto (default) boots a probe guest under KVM and falls
                    back to TCG when it does not come up
  --rebuild-image   build the guest image even when it is cached
  --image-only      only build (or find) the guest image and boot it once
  --jobs N          guests run at the same time (default: one per CPU core)
  --keep            keep the run directory (overlays, consoles, logs)

environment: PEAT_SIDECAR_VM_MIRROR (Debian mirror for the guest image)
"
    )
}

/// What one row of the result table checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deb,
    Rpm,
    InstallSh,
    PowerCut(Cut),
    /// The only kind that runs on the host, not in a guest.
    Mesh,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Deb,
        Kind::Rpm,
        Kind::InstallSh,
        Kind::PowerCut(Cut::AfterCheckpoint),
        Kind::PowerCut(Cut::InCheckpoint),
        Kind::Mesh,
    ];

    /// The name `--kinds` takes and the result table shows.
    fn name(self) -> &'static str {
        match self {
            Kind::Deb => "deb",
            Kind::Rpm => "rpm",
            Kind::InstallSh => "install.sh",
            Kind::PowerCut(cut) => cut.kind(),
            Kind::Mesh => "mesh",
        }
    }

    fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| anyhow!("unknown kind `{name}` (known: {})", Self::ALL.map(Kind::name).join(", ")))
    }
}

struct Options {
    kinds: Vec<Kind>,
    dist: PathBuf,
    cache: PathBuf,
    accel: Option<Accel>,
    rebuild: bool,
    image_only: bool,
    jobs: usize,
    keep: bool,
}

fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEAT_SIDECAR_VM_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("peat-sidecar-vm");
    }
    PathBuf::from("/var/cache/peat-sidecar-vm")
}

fn parse(args: &[String], root: &Path) -> Result<Option<Options>> {
    let mut o = Options {
        kinds: Kind::ALL.to_vec(),
        dist: root.join("dist"),
        cache: default_cache(),
        accel: None,
        rebuild: false,
        image_only: false,
        // One guest per core: TCG runs each guest's CPU on one host thread.
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        keep: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--kinds" => {
                o.kinds = value()?.split(',').filter(|k| !k.is_empty()).map(Kind::from_name).collect::<Result<_>>()?;
            }
            "--dist" => o.dist = PathBuf::from(value()?),
            "--cache-dir" => o.cache = PathBuf::from(value()?),
            "--accel" => {
                o.accel = match value()?.as_str() {
                    "auto" => None,
                    "kvm" => Some(Accel::Kvm),
                    "tcg" => Some(Accel::Tcg),
                    other => bail!("--accel must be auto, kvm or tcg, not `{other}`"),
                }
            }
            "--rebuild-image" => o.rebuild = true,
            "--image-only" => o.image_only = true,
            "--jobs" => o.jobs = value()?.parse().context("--jobs needs a number")?,
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(None);
            }
            other => bail!("unknown option `{other}`\n\n{}", usage()),
        }
    }
    if o.dist.is_relative() {
        o.dist = std::env::current_dir()?.join(&o.dist);
    }
    Ok(Some(o))
}

struct Row {
    kind: Kind,
    passed: bool,
    seconds: f64,
    note: String,
}

pub fn run(args: &[String]) -> Result<()> {
    let root = crate::dist::repo_root()?;
    let Some(opts) = parse(args, &root)? else { return Ok(()) };
    let started = Instant::now();
    let mut timings = Vec::new();
    let guest_kinds: Vec<Kind> = opts.kinds.iter().copied().filter(|kind| *kind != Kind::Mesh).collect();

    host::stage(&mut timings, "tools", host::ensure_tools)?;
    if opts.image_only {
        return image_only(&root, &opts, &mut timings);
    }
    let art = host::stage(&mut timings, "artifacts", || {
        let art = artifacts::find(&opts.dist)?;
        println!("testing {} (release {}) from {}", art.version, art.release, opts.dist.display());
        Ok(art)
    })?;

    // Per process: a developer's run and a test-suite run may overlap.
    let run_dir = std::env::temp_dir().join(format!("peat-sidecar-vm-test-{}", std::process::id()));
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("clearing {}", run_dir.display()))?;
    }
    std::fs::create_dir_all(&run_dir)?;

    let mut rows = Vec::new();
    if !guest_kinds.is_empty() {
        std::fs::create_dir_all(&opts.cache).with_context(|| format!("creating {}", opts.cache.display()))?;
        let image = host::stage(&mut timings, "guest image", || image::ensure(&root, &opts.cache, opts.rebuild))?;
        let upgrade = host::stage(&mut timings, "upgrade build (release+1)", || {
            let (deb, rpm) = artifacts::upgrade_packages(&root, &art, &run_dir.join("upgrade"))?;
            println!("{}\n{}", deb.display(), rpm.display());
            Ok((deb, rpm))
        })?;
        let accel = host::stage(&mut timings, "accelerator", || {
            guest::choose_accel(&image, &run_dir.join("probe"), opts.accel)
        })?;
        let jobs = opts.jobs.clamp(1, guest_kinds.len());
        let names: Vec<&str> = guest_kinds.iter().map(|kind| kind.name()).collect();
        let name = format!("guests ({}; {jobs} at a time)", names.join(", "));
        let mut guest_rows = host::stage(&mut timings, &name, || {
            let queue = std::sync::Mutex::new(guest_kinds.iter().rev().copied().collect::<Vec<_>>());
            let done = std::sync::Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..jobs {
                    scope.spawn(|| {
                        loop {
                            // Its own statement: the lock must not be held
                            // while the guest runs.
                            let next = queue.lock().expect("queue").pop();
                            let Some(kind) = next else { break };
                            let name = kind.name();
                            println!("--> guest {name}: booting");
                            let work = run_dir.join(name);
                            let began = Instant::now();
                            let in_guest =
                                |artifact, newer| guest_kind(&root, &image, accel, &work, kind, artifact, newer);
                            let row = match kind {
                                Kind::Deb => in_guest(&art.deb, &upgrade.0),
                                Kind::Rpm => in_guest(&art.rpm, &upgrade.1),
                                // The release tarball installs itself; its upgrade
                                // is the same release installed over a running one.
                                Kind::InstallSh => in_guest(&art.tarball, &art.tarball),
                                Kind::PowerCut(cut) => power_cut_row(&root, &image, accel, &work, &art.binary(), cut),
                                Kind::Mesh => unreachable!("the mesh check runs on the host"),
                            }
                            .unwrap_or_else(|err| Row {
                                kind,
                                passed: false,
                                seconds: began.elapsed().as_secs_f64(),
                                note: format!("{err:#}"),
                            });
                            let verdict = if row.passed { "pass" } else { "FAIL" };
                            println!("<-- guest {name}: {verdict} in {:.1} s", row.seconds);
                            done.lock().expect("results").push(row);
                        }
                    });
                }
            });
            Ok(done.into_inner().expect("results"))
        })?;
        guest_rows.sort_by_key(|r| guest_kinds.iter().position(|k| *k == r.kind));
        rows.extend(guest_rows);
    }
    if opts.kinds.contains(&Kind::Mesh) {
        let row = host::stage(&mut timings, "mesh (two network namespaces)", || {
            let t = Instant::now();
            let result = mesh::run(&art.binary(), &run_dir.join("mesh"));
            Ok(Row {
                kind: Kind::Mesh,
                passed: result.is_ok(),
                seconds: t.elapsed().as_secs_f64(),
                note: result.err().map(|e| format!("{e:#}")).unwrap_or_default(),
            })
        })?;
        rows.push(row);
    }

    println!("\nstage timings:");
    for (name, secs) in &timings {
        println!("  {name:<32} {secs:>7.1} s");
    }
    println!("  {:<32} {:>7.1} s", "total", started.elapsed().as_secs_f64());
    println!("\n{:<24} {:<6} {:>8}", "kind", "result", "seconds");
    for r in &rows {
        println!("{:<24} {:<6} {:>8.1}", r.kind.name(), if r.passed { "pass" } else { "FAIL" }, r.seconds);
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.passed).collect();
    let passed = rows.len() - failed.len();
    println!("vm-test: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        for r in &failed {
            println!("\n{} failed: {}", r.kind.name(), r.note);
        }
        println!("run directory kept: {}", run_dir.display());
        bail!("{} of {} vm-test kinds failed", failed.len(), rows.len());
    }
    if !opts.keep {
        std::fs::remove_dir_all(&run_dir).ok();
    }
    Ok(())
}

/// Builds or finds the guest image and proves it boots and runs a job.
fn image_only(root: &Path, opts: &Options, timings: &mut Vec<(String, f64)>) -> Result<()> {
    std::fs::create_dir_all(&opts.cache).with_context(|| format!("creating {}", opts.cache.display()))?;
    let image = host::stage(timings, "guest image", || image::ensure(root, &opts.cache, opts.rebuild))?;
    let work = std::env::temp_dir().join("peat-sidecar-vm-smoke");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let accel = host::stage(timings, "accelerator", || guest::choose_accel(&image, &work.join("probe"), opts.accel))?;
    host::stage(timings, "smoke boot", || {
        let share = work.join("share");
        std::fs::create_dir_all(&share)?;
        guest::write_job(&share, "uname -r\nsystemctl is-system-running || true\nsystemctl --failed --no-legend\n")?;
        let limits = Limits { start: Duration::from_secs(300), total: Duration::from_secs(400), first_output: None };
        let outcome = guest::boot(
            &image,
            accel,
            &work,
            &share,
            &limits,
            &BootOptions { quiet: true, prefix: Some("[smoke] "), ..Default::default() },
        )?;
        if outcome.status != Some(0) {
            bail!("smoke boot failed: {}", guest::explain(&outcome));
        }
        println!("guest booted, ran its job and powered off in {:.1} s", outcome.seconds);
        Ok(())
    })?;
    for (name, secs) in timings.iter() {
        println!("  {name:<32} {secs:>7.1} s");
    }
    if !opts.keep {
        std::fs::remove_dir_all(&work).ok();
    }
    Ok(())
}

/// A power-cut check (two boots on one data disk) as a row.
fn power_cut_row(root: &Path, image: &image::Image, accel: Accel, work: &Path, binary: &Path, cut: Cut) -> Result<Row> {
    let seconds = power_cut::run(root, image, accel, work, binary, cut)?;
    Ok(Row { kind: Kind::PowerCut(cut), passed: true, seconds, note: String::new() })
}

/// One kind in one fresh guest: share the script and artifacts, boot, and
/// turn the guest's log and exit status into a row.
fn guest_kind(
    root: &Path,
    image: &image::Image,
    accel: Accel,
    work: &Path,
    kind: Kind,
    artifact: &Path,
    newer: &Path,
) -> Result<Row> {
    let share = work.join("share");
    let dir = share.join("artifacts");
    std::fs::create_dir_all(&dir)?;
    let copy_in = |p: &Path| -> Result<String> {
        let name = p.file_name().context("artifact without a name")?.to_string_lossy().into_owned();
        let dst = dir.join(&name);
        if !dst.exists() {
            std::fs::copy(p, &dst).with_context(|| format!("copying {} into the share", p.display()))?;
        }
        Ok(format!("artifacts/{name}"))
    };
    let (first, second) = (copy_in(artifact)?, copy_in(newer)?);
    std::fs::copy(root.join("tests/vm/guest-check.sh"), share.join("guest-check.sh"))?;
    guest::write_job(
        &share,
        &format!("exec sh ./guest-check.sh '{}' \"$PWD/{first}\" \"$PWD/{second}\"\n", kind.name()),
    )?;
    let limits = Limits { start: Duration::from_secs(300), total: Duration::from_secs(1200), first_output: None };
    let prefix = format!("[{}] ", kind.name());
    let options = BootOptions { quiet: true, prefix: Some(&prefix), ..Default::default() };
    let outcome = guest::boot(image, accel, work, &share, &limits, &options)?;
    let passed = outcome.status == Some(0) && outcome.aborted.is_none();
    let note = if passed {
        String::new()
    } else if outcome.started {
        format!("guest-check.sh exited with {:?}; {}", outcome.status, guest::explain(&outcome))
    } else {
        guest::explain(&outcome)
    };
    if !passed {
        println!("{}: {note}", kind.name());
    }
    Ok(Row { kind, passed, seconds: outcome.seconds, note })
}
