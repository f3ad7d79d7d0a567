//! A disk that stops answering under the real binary: the data directory
//! sits on an ext4 file system that is frozen (`fsfreeze`), so a write's
//! `fdatasync` hangs. Once the commit has run for a whole watchdog interval
//! the systemd watchdog pings stop and the health service says NOT_SERVING
//! (for the service manager to restart the daemon), while reads go on being
//! served; once the file system thaws the write is acknowledged, the pings
//! resume and the health service says SERVING again.
//!
//! Needs root (to loop-mount and freeze a file system); without it the test
//! prints why it is skipped and passes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connectrpc::Protocol;
use peat_sidecar::proto::peat::sidecar::v1::*;
use support::notify::NotifySocket;
use support::{Sidecar, SidecarOptions, put, runtime};

const WATCHDOG: Duration = Duration::from_secs(2);

/// An ext4 file system in an image file, loop-mounted for the test's lifetime.
struct FreezableFs {
    path: PathBuf,
}

impl FreezableFs {
    /// Mounts one under `dir`, or says why the test is skipped.
    fn mount(dir: &Path) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting and freezing a file system needs root");
            return None;
        }
        let image = dir.join("disk.img");
        std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
        let made = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status();
        assert!(matches!(made, Ok(status) if status.success()), "mkfs.ext4 (e2fsprogs) makes the file system");
        let path = dir.join("fs");
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&path).status();
        if !matches!(mounted, Ok(status) if status.success()) {
            eprintln!("skipped: could not loop-mount a file system (no loop devices?)");
            return None;
        }
        Some(Self { path })
    }

    /// Freezes the file system until the returned guard drops. (Declared
    /// after the sidecar, the guard thaws before the sidecar is killed: a
    /// process blocked on a frozen file system cannot exit.)
    fn freeze(&self) -> Frozen<'_> {
        assert!(fsfreeze(&self.path, "--freeze"), "freezing the file system");
        Frozen(self)
    }
}

impl Drop for FreezableFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

struct Frozen<'a>(&'a FreezableFs);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        assert!(fsfreeze(&self.0.path, "--unfreeze") || std::thread::panicking(), "thawing the file system");
    }
}

fn fsfreeze(path: &Path, flag: &str) -> bool {
    Command::new("fsfreeze").arg(flag).arg(path).status().is_ok_and(|status| status.success())
}

/// The health service's answer for the whole process and for the API.
async fn health(sidecar: &Sidecar) -> [String; 2] {
    [sidecar.health("").await, sidecar.health("peat.sidecar.v1.PeatSidecar").await]
}

#[test]
fn a_hung_disk_write_stops_the_watchdog_and_health_until_the_disk_answers() {
    let work = tempfile::tempdir().unwrap();
    let Some(fs) = FreezableFs::mount(work.path()) else { return };
    let notify = NotifySocket::bind(&work.path().join("notify.sock"));
    let mut sidecar = SidecarOptions::new(&fs.path.join("data"))
        .arg("--mesh-listen")
        .arg("disabled")
        .env("NOTIFY_SOCKET", notify.env_value())
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .start();
    let rt = runtime();
    let client = sidecar.client_h1(Protocol::Connect, true);
    rt.block_on(client.put_document(put("c", "before", r#"{"n":1}"#))).unwrap();
    assert!(notify.pings_within(WATCHDOG).len() >= 2, "pings every half interval");

    let frozen = fs.freeze();
    let frozen_at = Instant::now();
    let pending = rt.spawn(async move { client.put_document(put("c", "during", r#"{"n":2}"#)).await });
    // The commit is withheld from after one interval; the last ping comes
    // at most half an interval later.
    let pings = notify.pings_within(3 * WATCHDOG);
    let since_freeze: Vec<Duration> = pings.iter().map(|ping| ping.duration_since(frozen_at)).collect();
    assert!(
        since_freeze.iter().all(|at| *at < WATCHDOG + WATCHDOG / 2 + Duration::from_millis(300)),
        "pings after the write hung: {since_freeze:?}"
    );
    assert!(!pending.is_finished(), "the write waits for the disk");
    rt.block_on(async {
        assert_eq!(health(&sidecar).await, ["NOT_SERVING", "NOT_SERVING"]);
        let client = sidecar.client_h1(Protocol::Connect, true);
        client.get_status(GetStatusRequest::default()).await.expect("status is served while the disk hangs");
        let got = client
            .get_document(GetDocumentRequest { collection: "c".into(), doc_id: "before".into(), ..Default::default() })
            .await
            .expect("reads are served while the disk hangs")
            .into_owned();
        assert_eq!(got.json_data.as_deref(), Some(r#"{"n":1}"#));
    });

    drop(frozen);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), pending).await })
        .expect("the write completes once the disk answers")
        .unwrap()
        .expect("and is acknowledged");
    assert!(!notify.pings_within(WATCHDOG).is_empty(), "pings resume");
    assert_eq!(rt.block_on(health(&sidecar)), ["SERVING", "SERVING"]);
    let output = sidecar.output();
    assert!(output.contains("a write to disk has not returned; reporting NOT_SERVING"), "{output}");
    assert!(output.contains("the disk answered again; serving"), "{output}");
    let (status, _) = sidecar.terminate();
    assert!(status.success(), "clean exit after the disk recovered");
}
