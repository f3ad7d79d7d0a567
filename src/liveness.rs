//! Liveness: what the running daemon tells its supervisors about its disk.
//!
//! A storage failure sled cannot recover from in place (its background log
//! write failed) is handed to the daemon, which shuts down to be restarted:
//! the restart recovers every acknowledged write from the journal.
//!
//! A disk that stops answering (a hung `fdatasync`, a frozen or lost file
//! system) shows as a commit that never returns. Once one has run for the
//! systemd watchdog interval (or [`HUNG_AFTER`] without a watchdog), the
//! whole process and the API report NOT_SERVING in the health service, and
//! the watchdog pings stop, so that systemd (or a container's liveness
//! probe) restarts the daemon rather than leave every write waiting. A disk
//! that fails (full) is not hung: its commits return errors at once and are
//! retried. Everything returns to SERVING when the commit returns.

use std::sync::Arc;
use std::time::Duration;

use connectrpc_health::{StaticChecker, Status};
use tokio::sync::oneshot;

use crate::node::{Node, Phase};
use crate::proto::peat::sidecar::v1::PEAT_SIDECAR_SERVICE_NAME;
use crate::store::DocumentStore;
use crate::systemd;

/// How long a commit may run before the disk counts as hung, when no
/// watchdog interval says otherwise.
pub const HUNG_AFTER: Duration = Duration::from_secs(30);
/// How often the store is looked at (more often for a shorter watchdog).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Reports the disk's liveness until aborted: a storage failure through
/// `failed`, the health status and, when `watchdog` (systemd's interval) is
/// set, the watchdog pings.
pub async fn report(
    store: DocumentStore,
    node: Arc<Node>,
    health: Arc<StaticChecker>,
    watchdog: Option<Duration>,
    failed: oneshot::Sender<String>,
) {
    let hung_after = watchdog.unwrap_or(HUNG_AFTER);
    let mut tick = tokio::time::interval(watchdog.map_or(CHECK_EVERY, |interval| CHECK_EVERY.min(interval / 2)));
    let mut failed = Some(failed);
    let mut hung = false;
    let mut pings_failing = false;
    loop {
        tick.tick().await;
        if failed.is_some()
            && let Some(error) = store.storage_failure()
        {
            let _ = failed.take().expect("checked above").send(error);
        }
        let running = store.commit_running_for().filter(|running| *running >= hung_after);
        if running.is_some() != hung {
            hung = running.is_some();
            if let Some(running) = running {
                tracing::error!(running_for = ?running, "a write to disk has not returned; reporting NOT_SERVING");
            } else {
                tracing::warn!("the disk answered again; serving");
            }
            // Shutting down, the health service stays NOT_SERVING.
            if node.phase() != Phase::ShuttingDown {
                let status = if hung { Status::NotServing } else { Status::Serving };
                for service in ["", PEAT_SIDECAR_SERVICE_NAME] {
                    health.set_status(service, status).expect("registered at startup");
                }
            }
        }
        if watchdog.is_some() && !hung {
            // Pinged every second: a failing ping is logged when it starts
            // failing and when it recovers, not each time.
            match (systemd::try_notify("WATCHDOG=1"), pings_failing) {
                (Err(err), false) => {
                    tracing::warn!(error = %err, "the systemd watchdog ping failed; logged again once it succeeds");
                    pings_failing = true;
                }
                (Ok(()), true) => {
                    tracing::info!("the systemd watchdog ping succeeds again");
                    pings_failing = false;
                }
                _ => {}
            }
        }
    }
}
