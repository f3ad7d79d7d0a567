//! A full disk under the real binary: the data directory sits on a small
//! tmpfs that fills up. Writes that cannot be made durable fail promptly
//! with `unavailable` naming the cause while reads keep being served. With
//! large documents (stored by sled as separate files) writes succeed again
//! once space is freed, without a restart; with small ones sled's own log
//! write fails, which sled never recovers from, so the sidecar exits with an
//! error to be restarted. Either way, after the process ends every
//! acknowledged document is present and intact.
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

#[test]
fn writes_recover_without_a_restart_once_space_is_freed() {
    const BYTES: usize = 120_000;
    let work = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(work.path(), "24m") else { return };
    let sidecar = SidecarOptions::new(&fs.path.join("data")).arg("--mesh-listen").arg("disabled").start();
    let acknowledged = runtime().block_on(async {
        let client = sidecar.client_h1(Protocol::Connect, true);
        let mut acknowledged = fill(&client, BYTES).await;
        // Reads are still served.
        let status = client.get_status(GetStatusRequest::default()).await.expect("GetStatus").into_owned();
        assert_eq!(status.phase.as_known(), Some(NodePhase::NODE_PHASE_READY));
        let first = GetDocumentRequest { collection: COLLECTION.into(), doc_id: "doc-0".into(), ..Default::default() };
        let got = client.get_document(first).await.expect("GetDocument").into_owned();
        assert_eq!(got.json_data.as_deref(), Some(content(0, BYTES).as_str()));

        fs.resize("96m");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let i = acknowledged.len();
            match client.put_document(put(i, BYTES)).await {
                Ok(_) => {
                    acknowledged.push(i);
                    break;
                }
                Err(err) => {
                    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
                    assert!(Instant::now() < deadline, "writes never recovered: {err:?}\n{}", sidecar.output());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        acknowledged
    });
    let output = sidecar.output();
    assert!(output.contains("committing writes failed; retrying"), "the failure is logged:\n{output}");

    let sidecar = sidecar.kill().start();
    runtime().block_on(assert_intact(&sidecar, &acknowledged, BYTES));
}

#[test]
fn a_store_that_cannot_write_any_more_exits_and_recovers_at_restart() {
    const BYTES: usize = 600;
    let work = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(work.path(), "12m") else { return };
    let mut sidecar = SidecarOptions::new(&fs.path.join("data")).arg("--mesh-listen").arg("disabled").start();
    let acknowledged = runtime().block_on(async {
        let client = sidecar.client_h1(Protocol::Connect, true);
        fill(&client, BYTES).await
    });
    let status = sidecar.exit_within(Duration::from_secs(20));
    let output = sidecar.output();
    assert!(!status.success(), "exit status {status}:\n{output}");
    assert!(output.contains("must be reopened"), "the reason is logged:\n{output}");

    // Restarted with space again: every acknowledged write is back, and new ones work.
    fs.resize("64m");
    let sidecar = sidecar.options.clone().start();
    runtime().block_on(async {
        assert_intact(&sidecar, &acknowledged, BYTES).await;
        let client = sidecar.client_h1(Protocol::Connect, true);
        client.put_document(put(acknowledged.len(), BYTES)).await.expect("a write after the restart");
    });
}
