//! Acknowledged writes survive a power cut, not only a killed process: a
//! guest writes documents from five concurrent writers onto a raw data disk
//! and the host kills qemu mid-stream (the guest's page cache and every
//! unflushed write are lost; what the guest flushed is in the host's file),
//! once enough writes were acknowledged, at a chosen moment of one of the
//! store's checkpoints. A second boot on the same disk checks every document
//! whose write was acknowledged before the cut. Both halves are
//! tests/vm/power-cut.sh.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::guest::{self, Accel, BootOptions, DATA_DISK, Limits};
use super::image::Image;

/// Acknowledged writes to wait for before cutting the power.
const ACKED_BEFORE_CUT: usize = 100;
const DATA_DISK_BYTES: u64 = 512 << 20;

/// When, relative to a checkpoint of the store, the power goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Just after one: the journal has started over, so the writes before
    /// it are only in sled's files.
    AfterCheckpoint,
    /// As one starts: sled's flush is cut short, and the full journal must
    /// replay onto whatever sled kept.
    InCheckpoint,
}

impl Cut {
    /// The vm-test kind that cuts the power this way.
    pub fn kind(self) -> &'static str {
        match self {
            Cut::AfterCheckpoint => "power-cut",
            Cut::InCheckpoint => "power-cut-in-checkpoint",
        }
    }

    /// The guest's report of a checkpoint that the cut waits for.
    fn report(self) -> &'static str {
        match self {
            Cut::AfterCheckpoint => "checkpoint done",
            Cut::InCheckpoint => "checkpoint started",
        }
    }
}

/// Runs both boots; returns how long they took together.
pub fn run(root: &Path, image: &Image, accel: Accel, work: &Path, binary: &Path, cut: Cut) -> Result<f64> {
    let share = work.join("share");
    std::fs::create_dir_all(&share)?;
    std::fs::copy(binary, share.join("peat-sidecar")).context("copying the binary into the share")?;
    std::fs::copy(root.join("tests/vm/power-cut.sh"), share.join("power-cut.sh"))?;
    let disk = work.join("data.img");
    std::fs::File::create(&disk)?.set_len(DATA_DISK_BYTES)?;
    let limits = Limits { start: Duration::from_secs(300), total: Duration::from_secs(900), first_output: None };
    let job = |args: &str| format!("exec sh ./power-cut.sh {args}\n");

    guest::write_job(&share, &job(&format!("write {DATA_DISK} \"$PWD/peat-sidecar\"")))?;
    let enough =
        |log: &str| acknowledged(log).count() >= ACKED_BEFORE_CUT && last_checkpoint(log).starts_with(cut.report());
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
        println!("[{}] {checkpoint}", cut.kind());
    }
    // The last report, not the one awaited: a checkpoint may end before the cut.
    println!(
        "[{}] power cut at `{}`, after {} acknowledged writes ({:.1} s)",
        cut.kind(),
        last_checkpoint(&writing.log),
        acked.len(),
        writing.seconds
    );
    std::fs::write(share.join("acked"), acked.iter().map(|line| format!("{line}\n")).collect::<String>())?;

    guest::write_job(&share, &job(&format!("verify {DATA_DISK} \"$PWD/peat-sidecar\" \"$PWD/acked\"")))?;
    let prefix = format!("[{}] ", cut.kind());
    let options = BootOptions { quiet: true, prefix: Some(&prefix), data_disk: Some(&disk), cut_power_when: None };
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

/// The writing guest's `checkpoint started|done ...` lines.
fn checkpoints(log: &str) -> impl Iterator<Item = &str> {
    log.lines().filter(|line| line.starts_with("checkpoint "))
}

/// The writing guest's last checkpoint report, if any.
fn last_checkpoint(log: &str) -> &str {
    checkpoints(log).last().unwrap_or_default()
}
