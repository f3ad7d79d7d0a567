//! Acknowledged writes survive a power cut, not only a killed process: a
//! guest writes documents from five concurrent writers onto a raw data disk
//! and the host kills qemu mid-stream (the guest's page cache and every
//! unflushed write are lost; what the guest flushed is in the host's file),
//! once enough writes were acknowledged and the store has checkpointed at
//! least once. A second boot on the same disk checks every document whose
//! write was acknowledged before the cut. Both halves are
//! tests/vm/power-cut.sh.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::guest::{self, Accel, BootOptions, DATA_DISK, Limits};
use super::image::Image;

/// Acknowledged writes to wait for before cutting the power.
const ACKED_BEFORE_CUT: usize = 100;
const DATA_DISK_BYTES: u64 = 512 << 20;

/// Runs both boots; returns how long they took together.
pub fn run(root: &Path, image: &Image, accel: Accel, work: &Path, binary: &Path) -> Result<f64> {
    let share = work.join("share");
    std::fs::create_dir_all(&share)?;
    std::fs::copy(binary, share.join("peat-sidecar")).context("copying the binary into the share")?;
    std::fs::copy(root.join("tests/vm/power-cut.sh"), share.join("power-cut.sh"))?;
    let disk = work.join("data.img");
    std::fs::File::create(&disk)?.set_len(DATA_DISK_BYTES)?;
    let limits = Limits { start: Duration::from_secs(300), total: Duration::from_secs(900), first_output: None };
    let job = |args: &str| format!("exec sh ./power-cut.sh {args}\n");

    guest::write_job(&share, &job(&format!("write {DATA_DISK} \"$PWD/peat-sidecar\"")))?;
    let enough = |log: &str| acknowledged(log).count() >= ACKED_BEFORE_CUT && checkpoints(log).next().is_some();
    let options = BootOptions { quiet: true, prefix: None, data_disk: Some(&disk), cut_power_when: Some(&enough) };
    let writing = guest::boot(image, accel, work, &share, &limits, &options)?;
    if !writing.power_cut {
        bail!("the writing guest ended before the power cut: {}\n{}", guest::explain(&writing), writing.log);
    }
    if let Some(failed) = writing.log.lines().find(|line| line.ends_with(" failed")) {
        bail!("a write failed before the power cut: {failed}\n{}", writing.log);
    }
    // Read after qemu is gone: every line in it was acknowledged before the cut.
    let acked: Vec<&str> = acknowledged(&writing.log).collect();
    for checkpoint in checkpoints(&writing.log) {
        println!("[power-cut] {checkpoint}");
    }
    println!(
        "[power-cut] power cut after {} acknowledged writes and {} checkpoints ({:.1} s)",
        acked.len(),
        checkpoints(&writing.log).count(),
        writing.seconds
    );
    std::fs::write(share.join("acked"), acked.iter().map(|line| format!("{line}\n")).collect::<String>())?;

    guest::write_job(&share, &job(&format!("verify {DATA_DISK} \"$PWD/peat-sidecar\" \"$PWD/acked\"")))?;
    let options =
        BootOptions { quiet: true, prefix: Some("[power-cut] "), data_disk: Some(&disk), cut_power_when: None };
    let verifying = guest::boot(image, accel, work, &share, &limits, &options)?;
    if verifying.status != Some(0) || verifying.aborted.is_some() {
        bail!("after the power cut: {}\n{}", guest::explain(&verifying), verifying.log);
    }
    Ok(writing.seconds + verifying.seconds)
}

/// The writing guest's `acked <id>` lines.
fn acknowledged(log: &str) -> impl Iterator<Item = &str> {
    log.lines().filter(|line| line.starts_with("acked "))
}

/// The writing guest's `checkpoint: ...` lines.
fn checkpoints(log: &str) -> impl Iterator<Item = &str> {
    log.lines().filter(|line| line.starts_with("checkpoint: "))
}
