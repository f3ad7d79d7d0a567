//! A full disk under the real binary: the data directory sits on a small
//! tmpfs that fills up. Writes that cannot be made durable fail promptly
//! with `unavailable` naming the cause while reads keep being served; once
//! space is freed, writes succeed again without a restart; after SIGKILL
//! every acknowledged document is present and intact.
//!
//! Needs root (to mount the tmpfs); without it the test prints why it is
//! skipped and passes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connectrpc::{ErrorCode, Protocol};
use peat_sidecar::proto::peat::sidecar::v1::*;
use support::{SidecarOptions, runtime};

const COLLECTION: &str = "fill";
/// Large enough that a few hundred documents fill the file system.
const DOC_BYTES: usize = 120_000;

/// A tmpfs mounted for the test's lifetime.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status();
        matches!(mounted, Ok(status) if status.success()).then(|| Self { path: path.to_owned() })
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

fn content(i: usize) -> String {
    serde_json::json!({ "n": i, "blob": format!("{i:08}").repeat(DOC_BYTES / 8) }).to_string()
}

fn put(i: usize) -> PutDocumentRequest {
    PutDocumentRequest {
        collection: COLLECTION.into(),
        doc_id: format!("doc-{i}"),
        json_data: content(i),
        ..Default::default()
    }
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_recovers() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(&work.path().join("fs"), "24m") else {
        eprintln!("skipped: could not mount a tmpfs");
        return;
    };
    let options = SidecarOptions::new(&fs.path.join("data")).arg("--mesh-listen").arg("disabled");
    let sidecar = options.start();
    let acknowledged = runtime().block_on(async {
        let client = sidecar.client_h1(Protocol::Connect, true);
        let mut acknowledged = Vec::new();
        let refused = loop {
            let i = acknowledged.len();
            assert!(i < 1_000, "24 MiB never filled up");
            let started = Instant::now();
            match client.put_document(put(i)).await {
                Ok(_) => acknowledged.push(i),
                Err(err) => break (err, started.elapsed()),
            }
        };
        let (err, took) = refused;
        assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
        let message = err.message.clone().unwrap_or_default();
        assert!(message.contains("No space left on device"), "the cause is named: {message}");
        assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
        eprintln!("{} documents acknowledged before the disk filled; refused after {took:?}", acknowledged.len());

        // Reads are still served, and tell the truth.
        let status = client
            .get_status(GetStatusRequest::default())
            .await
            .expect("GetStatus while the disk is full")
            .into_owned();
        assert_eq!(status.phase.as_known(), Some(NodePhase::NODE_PHASE_READY));
        let first = GetDocumentRequest { collection: COLLECTION.into(), doc_id: "doc-0".into(), ..Default::default() };
        let got = client.get_document(first).await.expect("GetDocument while the disk is full").into_owned();
        assert_eq!(got.json_data.as_deref(), Some(content(0).as_str()));

        // Space comes back: writes succeed again, no restart needed.
        fs.resize("96m");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let i = acknowledged.len();
            match client.put_document(put(i)).await {
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

    // Every acknowledged document survives a crash, intact; refused ones
    // may have landed too (their retry succeeded), but only whole.
    let sidecar = sidecar.kill().start();
    runtime().block_on(async {
        let client = sidecar.client_h1(Protocol::Connect, true);
        let list = ListDocumentsRequest { collection: COLLECTION.into(), ..Default::default() };
        let stored = client.list_documents(list).await.unwrap().into_owned().doc_ids;
        for i in &acknowledged {
            assert!(stored.contains(&format!("doc-{i}")), "acknowledged doc-{i} lost");
        }
        for id in stored {
            let i: usize = id.strip_prefix("doc-").unwrap().parse().unwrap();
            let request =
                GetDocumentRequest { collection: COLLECTION.into(), doc_id: id.clone(), ..Default::default() };
            let got = client.get_document(request).await.unwrap().into_owned();
            assert_eq!(got.json_data.as_deref(), Some(content(i).as_str()), "{id} is intact");
        }
    });
}
