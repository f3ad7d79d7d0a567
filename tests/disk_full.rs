//! A full disk under the real binary: the data directory sits on a small
//! tmpfs that fills up. Writes that cannot be made durable fail promptly
//! with `unavailable` naming the cause. Once space is freed, writes work
//! again: in place, or, when sled's own log write failed (which sled never
//! recovers from), after the sidecar exits with an error and is restarted.
//! Either way every acknowledged document is present and intact after a
//! SIGKILL.
//!
//! Needs root (to mount the tmpfs); without it each test prints why it is
//! skipped and passes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connectrpc::{ErrorCode, Protocol};
use peat_sidecar::proto::peat::sidecar::v1::*;
use support::{Client, Sidecar, SidecarOptions, runtime};

const COLLECTION: &str = "fill";

/// A tmpfs mounted for the test's lifetime.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    /// Mounts one under `dir`, or says why the test is skipped.
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let path = dir.join("fs");
        std::fs::create_dir_all(&path).unwrap();
        let mounted =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&path).status();
        if !matches!(mounted, Ok(status) if status.success()) {
            eprintln!("skipped: could not mount a tmpfs");
            return None;
        }
        Some(Self { path })
    }

    fn resize(&self, size: &str) {
        let status =
            Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.path).status().unwrap();
        assert!(status.success(), "remounting the tmpfs");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn content(i: usize, bytes: usize) -> String {
    serde_json::json!({ "n": i, "blob": format!("{i:08}").repeat(bytes / 8) }).to_string()
}

fn put(i: usize, bytes: usize) -> PutDocumentRequest {
    PutDocumentRequest {
        collection: COLLECTION.into(),
        doc_id: format!("doc-{i}"),
        json_data: content(i, bytes),
        ..Default::default()
    }
}

/// Writes documents of `bytes` until one is refused, and asserts how.
/// Returns the acknowledged ones.
async fn fill(client: &Client, bytes: usize) -> Vec<usize> {
    let mut acknowledged = Vec::new();
    let (err, took) = loop {
        let i = acknowledged.len();
        assert!(i < 100_000, "the file system never filled up");
        let started = Instant::now();
        match client.put_document(put(i, bytes)).await {
            Ok(_) => acknowledged.push(i),
            Err(err) => break (err, started.elapsed()),
        }
    };
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
    let message = err.message.clone().unwrap_or_default();
    assert!(message.contains("No space left on device"), "the cause is named: {message}");
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    eprintln!("{} documents of {bytes} bytes acknowledged; refused after {took:?}", acknowledged.len());
    acknowledged
}

/// Every acknowledged document is stored and intact; refused ones may have
/// landed too (their retry succeeded), but only whole.
async fn assert_intact(sidecar: &Sidecar, acknowledged: &[usize], bytes: usize) {
    let client = sidecar.client_h1(Protocol::Connect, true);
    let list = ListDocumentsRequest { collection: COLLECTION.into(), ..Default::default() };
    let stored = client.list_documents(list).await.unwrap().into_owned().doc_ids;
    for i in acknowledged {
        assert!(stored.contains(&format!("doc-{i}")), "acknowledged doc-{i} lost");
    }
    for id in stored {
        let i: usize = id.strip_prefix("doc-").unwrap().parse().unwrap();
        let request = GetDocumentRequest { collection: COLLECTION.into(), doc_id: id.clone(), ..Default::default() };
        let got = client.get_document(request).await.unwrap().into_owned();
        assert_eq!(got.json_data.as_deref(), Some(content(i, bytes).as_str()), "{id} is intact");
    }
}

/// Fills a tmpfs of `size` with documents of `bytes`, grows it to `grown`,
/// and checks that writes work again and that nothing acknowledged is lost.
fn fill_then_free(size: &str, grown: &str, bytes: usize) {
    let work = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(work.path(), size) else { return };
    let mut sidecar = SidecarOptions::new(&fs.path.join("data")).arg("--mesh-listen").arg("disabled").start();
    let rt = runtime();
    let mut acknowledged = rt.block_on(fill(&sidecar.client_h1(Protocol::Connect, true), bytes));

    // sled may have kept going (its own log writes found room): then writes
    // work again in place. If its log write failed, sled failed for good and
    // the daemon exits within a second or so, to be restarted.
    fs.resize(grown);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut restarted = false;
    loop {
        if let Some(status) = sidecar.exited() {
            let output = sidecar.output();
            assert!(!status.success() && output.contains("must be reopened"), "exit status {status}:\n{output}");
            assert!(!restarted, "failed again after a restart:\n{output}");
            sidecar = sidecar.options.clone().start();
            restarted = true;
        }
        let i = acknowledged.len();
        match rt.block_on(sidecar.client_h1(Protocol::Connect, true).put_document(put(i, bytes))) {
            Ok(_) => {
                acknowledged.push(i);
                break;
            }
            Err(err) => {
                assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
                assert!(Instant::now() < deadline, "writes never worked again: {err:?}\n{}", sidecar.output());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    eprintln!(
        "documents of {bytes} bytes: writes work again {}",
        if restarted { "after a restart" } else { "in place" }
    );

    let sidecar = sidecar.kill().start();
    rt.block_on(assert_intact(&sidecar, &acknowledged, bytes));
}

/// Documents sled stores as files of their own: usually back in place.
#[test]
fn large_documents_on_a_full_disk() {
    fill_then_free("24m", "96m", 120_000);
}

/// Documents that go through sled's log: usually sled fails for good and
/// the daemon restarts.
#[test]
fn small_documents_on_a_full_disk() {
    fill_then_free("12m", "64m", 600);
}
