//! The UDS Remote Agent watcher: polls the agent running next to this
//! sidecar and publishes its status, deployed packages and pulled packages
//! as documents, so every sidecar in the mesh sees every agent's state.
//!
//! Map of the module:
//! - [`settings`]: the `agent_*` settings, validated at startup
//! - [`tls`]: TLS/mTLS client configuration
//! - [`transport`]: the HTTP/2 connection (h2c or TLS), timeouts, size limits
//! - [`agent_api`] and [`agent_types`]: the agent's endpoints and JSON shapes
//! - [`documents`]: the documents written and their ids
//! - [`publish`]: writing without churn, tombstoning what disappeared
//! - [`health`]: state, state-change logging, backoff, the health-check status
//! - [`poller`]: the loop tying it together

pub mod agent_api;
pub mod agent_types;
pub mod documents;
pub mod health;
mod poller;
pub mod publish;
pub mod settings;
pub mod tls;
pub mod transport;

use std::sync::Arc;

use connectrpc_health::StaticChecker;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use health::{AgentState, HEALTH_SERVICE, WatcherHealth};
pub use settings::WatcherConfig;

use crate::store::DocumentStore;

/// A running watcher. Stop it with [`Watcher::stop`]; dropping it also stops it.
pub struct Watcher {
    stop: watch::Sender<bool>,
    health: watch::Receiver<WatcherHealth>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts polling in the background. Must be called within a Tokio runtime.
    pub fn start(config: WatcherConfig, store: DocumentStore) -> Self {
        tracing::info!(
            agent = %config.endpoint.base_url,
            transport = ?config.endpoint.transport,
            agent_id = %config.agent_id,
            poll_interval = ?config.poll_interval,
            "agent watcher starting"
        );
        let (stop, stop_rx) = watch::channel(false);
        let (health_tx, health) = watch::channel(WatcherHealth::default());
        let publisher = publish::Publisher::new(store, config.agent_id.clone(), config.heartbeat);
        let task = tokio::spawn(poller::run(config, publisher, health_tx, stop_rx));
        Self { stop, health, task }
    }

    /// The latest health; `changed()` on the receiver wakes after every poll.
    pub fn health(&self) -> watch::Receiver<WatcherHealth> {
        self.health.clone()
    }

    /// Reports the agent's state as the `grpc.health.v1` service
    /// [`HEALTH_SERVICE`] of `checker` until the returned task is aborted.
    pub fn report_health(&self, checker: Arc<StaticChecker>) -> JoinHandle<()> {
        let mut health = self.health();
        let _ = checker.register_with_status(HEALTH_SERVICE, health.borrow().state.check_status());
        tokio::spawn(async move {
            while health.changed().await.is_ok() {
                let status = health.borrow_and_update().state.check_status();
                checker.set_status(HEALTH_SERVICE, status).expect("registered above");
            }
        })
    }

    /// Stops polling (abandoning an in-flight call) and waits for the task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await
            && err.is_panic()
        {
            tracing::error!("the agent watcher panicked: {err}");
        }
    }
}
