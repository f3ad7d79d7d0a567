//! The mesh: sidecars syncing documents with each other over tonic gRPC.
//!
//! Owns the peer listener, the dial loops (static `peers`, `ConnectPeer`,
//! known peers persisted in the store), the registry that keeps one session
//! per peer pair, pause/resume (`StopSync`/`StartSync`), and the counters
//! behind `GetSyncStats`. A session itself lives in [`session`].

pub mod auth;
mod digest;
pub mod options;
pub mod peer;
pub mod session;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::node::{Node, Phase};
use crate::store::DocumentStore;
pub use options::MeshOptions;
use peer::KnownPeer;
use session::Stats;

/// Generated types of `peat.mesh.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("peat.mesh.v1");
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// Peer state shown by `ListPeers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub endpoint_id: String,
    pub addresses: Vec<String>,
    pub connected: bool,
}

/// Numbers shown by `GetSyncStats`.
#[derive(Debug, Clone, Copy)]
pub struct SyncStats {
    pub active: bool,
    pub connected_peers: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{0}")]
    InvalidPeer(String),
    #[error("no known peer {0:?}")]
    UnknownPeer(String),
    #[error("persisting the peer list: {0}")]
    Persist(String),
}

/// Handle to the running mesh.
#[derive(Clone)]
pub struct Mesh {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    store: DocumentStore,
    node: Arc<Node>,
    options: MeshOptions,
    endpoint: String,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    dials: Mutex<BTreeMap<String, DialEntry>>,
    paused: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
    stats: Stats,
    catching_up: AtomicUsize,
    next_session: AtomicU64,
    tls: Option<transport::ClientTls>,
}

struct SessionEntry {
    id: u64,
    dialer_id: String,
    remote: String,
    stop: watch::Sender<bool>,
}

struct DialEntry {
    peer: KnownPeer,
    /// Persisted (from `ConnectPeer`) rather than from the settings.
    persisted: bool,
    /// The node id this dial reached last, for peers given by address only.
    reached: Arc<Mutex<Option<String>>>,
    stop: watch::Sender<bool>,
}

/// Unregisters a session when it ends.
pub(crate) struct SessionGuard {
    shared: Arc<Shared>,
    peer_id: String,
    id: u64,
    pub stop: watch::Receiver<bool>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = self.shared.sessions.lock().expect("sessions lock");
        if sessions.get(&self.peer_id).is_some_and(|s| s.id == self.id) {
            sessions.remove(&self.peer_id);
        }
    }
}

impl Mesh {
    /// Starts the listener (if any) and the dial loops.
    pub async fn start(
        options: MeshOptions,
        store: DocumentStore,
        node: Arc<Node>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let server_tls = options.tls.as_ref().map(transport::ServerTls::load).transpose()?;
        let tls = options.tls.as_ref().map(transport::ClientTls::load).transpose()?;
        let listener = match options.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("setting `mesh_listen`: binding {addr}: {e}"))?,
            ),
            None => None,
        };
        let endpoint = listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_default();
        let (paused, _) = watch::channel(!options.auto_sync);
        let mut peers = options.peers.clone();
        let persisted = peer::load(&store)?;
        let shared = Arc::new(Shared {
            store,
            node,
            options,
            endpoint,
            sessions: Mutex::default(),
            dials: Mutex::default(),
            paused,
            shutdown: shutdown.clone(),
            stats: Stats::default(),
            catching_up: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
            tls,
        });
        if let Some(listener) = listener {
            tracing::info!(addr = %shared.endpoint, tls = server_tls.is_some(), "mesh listening");
            tokio::spawn(transport::serve(Arc::clone(&shared), listener, server_tls, shutdown));
        }
        let static_count = peers.len();
        peers.extend(persisted);
        for (index, peer) in peers.into_iter().enumerate() {
            shared.add_dial(peer, index >= static_count);
        }
        Ok(Self { shared })
    }

    /// The mesh listen address, empty without a listener.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// Adds a peer to dial (and remembers it across restarts).
    pub async fn connect_peer(&self, endpoint_id: &str, addresses: &[String]) -> Result<(), MeshError> {
        if !endpoint_id.is_empty() {
            crate::node::validate_node_id(endpoint_id)
                .map_err(|e| MeshError::InvalidPeer(format!("endpoint_id: {e}")))?;
        }
        if addresses.is_empty() {
            return Err(MeshError::InvalidPeer("addresses: at least one host:port is required".into()));
        }
        let addresses = addresses
            .iter()
            .map(|a| peer::parse_address(a).map_err(|e| MeshError::InvalidPeer(format!("addresses: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let peer = KnownPeer { endpoint_id: endpoint_id.to_owned(), addresses };
        self.shared.add_dial(peer, true);
        self.shared.persist_peers().await
    }

    /// Forgets a peer and closes its session.
    pub async fn disconnect_peer(&self, endpoint_id: &str) -> Result<(), MeshError> {
        let removed = {
            let mut dials = self.shared.dials.lock().expect("dials lock");
            let key = dials
                .iter()
                .find(|(k, d)| {
                    *k == endpoint_id
                        || d.peer.endpoint_id == endpoint_id
                        || d.reached.lock().expect("reached lock").as_deref() == Some(endpoint_id)
                })
                .map(|(k, _)| k.clone());
            key.and_then(|k| dials.remove(&k))
        };
        let closed = self.shared.close_session(endpoint_id);
        match removed {
            Some(dial) => {
                let _ = dial.stop.send(true);
                if let Some(reached) = dial.reached.lock().expect("reached lock").as_deref() {
                    self.shared.close_session(reached);
                }
                self.shared.persist_peers().await
            }
            None if closed => Ok(()),
            None => Err(MeshError::UnknownPeer(endpoint_id.to_owned())),
        }
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let sessions = self.shared.sessions.lock().expect("sessions lock");
        let dials = self.shared.dials.lock().expect("dials lock");
        let mut out = Vec::new();
        let mut listed = Vec::new();
        for dial in dials.values() {
            let id = match dial.peer.endpoint_id.as_str() {
                "" => dial.reached.lock().expect("reached lock").clone().unwrap_or_default(),
                id => id.to_owned(),
            };
            let connected = !id.is_empty() && sessions.contains_key(&id);
            listed.push(id.clone());
            out.push(PeerStatus { endpoint_id: id, addresses: dial.peer.addresses.clone(), connected });
        }
        for (id, session) in sessions.iter() {
            if !listed.contains(id) {
                out.push(PeerStatus {
                    endpoint_id: id.clone(),
                    addresses: vec![session.remote.clone()],
                    connected: true,
                });
            }
        }
        out
    }

    pub fn stats(&self) -> SyncStats {
        SyncStats {
            active: !*self.shared.paused.borrow(),
            connected_peers: self.shared.sessions.lock().expect("sessions lock").len() as u32,
            bytes_sent: self.shared.stats.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.shared.stats.bytes_received.load(Ordering::Relaxed),
        }
    }

    /// Resumes exchange after [`Self::stop_sync`].
    pub fn start_sync(&self) {
        self.shared.paused.send_replace(false);
        tracing::info!("mesh sync started");
    }

    /// Pauses exchange: sessions close and no new ones start. Local writes
    /// keep landing in the change log and are delivered after resume.
    pub fn stop_sync(&self) {
        self.shared.paused.send_replace(true);
        for session in self.shared.sessions.lock().expect("sessions lock").values() {
            let _ = session.stop.send(true);
        }
        tracing::info!("mesh sync stopped");
    }
}

impl Shared {
    fn add_dial(self: &Arc<Self>, peer: KnownPeer, persisted: bool) {
        let identity = peer.identity();
        let (stop, stopped) = watch::channel(false);
        let reached = Arc::new(Mutex::new(None));
        let entry = DialEntry { peer: peer.clone(), persisted, reached: Arc::clone(&reached), stop };
        if let Some(old) = self.dials.lock().expect("dials lock").insert(identity, entry) {
            let _ = old.stop.send(true);
        }
        tokio::spawn(dial_loop(Arc::clone(self), peer, reached, stopped));
    }

    async fn persist_peers(&self) -> Result<(), MeshError> {
        let peers: Vec<KnownPeer> =
            self.dials.lock().expect("dials lock").values().filter(|d| d.persisted).map(|d| d.peer.clone()).collect();
        peer::save(&self.store, &peers).await.map_err(|e| MeshError::Persist(e.to_string()))
    }

    fn close_session(&self, peer_id: &str) -> bool {
        match self.sessions.lock().expect("sessions lock").get(peer_id) {
            Some(session) => {
                let _ = session.stop.send(true);
                true
            }
            None => false,
        }
    }

    /// Registers an authenticated session, keeping one per peer pair: of two
    /// sessions between the same nodes, the one dialed by the lower node id
    /// wins on both ends, so simultaneous dials settle on the same session.
    pub(crate) fn register(
        self: &Arc<Self>,
        peer_id: &str,
        dialer_id: &str,
        remote: &str,
    ) -> Result<SessionGuard, session::SessionEnd> {
        use session::SessionEnd;
        if *self.paused.borrow() {
            return Err(SessionEnd::Refused("sync is paused on this node".into()));
        }
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if let Some(existing) = sessions.get(peer_id) {
            if existing.dialer_id != dialer_id && existing.dialer_id.as_str() < dialer_id {
                return Err(SessionEnd::Duplicate);
            }
            let _ = existing.stop.send(true);
        } else if sessions.len() >= self.options.max_sessions {
            return Err(SessionEnd::Refused(format!("session limit of {} reached", self.options.max_sessions)));
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        sessions.insert(
            peer_id.to_owned(),
            SessionEntry { id, dialer_id: dialer_id.to_owned(), remote: remote.to_owned(), stop },
        );
        Ok(SessionGuard { shared: Arc::clone(self), peer_id: peer_id.to_owned(), id, stop: stopped })
    }

    fn set_catching_up(&self, catching_up: bool) {
        let now = if catching_up {
            self.catching_up.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.catching_up.fetch_sub(1, Ordering::SeqCst) - 1
        };
        self.node.set_phase(if now > 0 { Phase::Syncing } else { Phase::Ready });
    }

    /// Our position in `peer`'s change log, and the epoch it refers to.
    fn cursor_for(&self, peer: &str, epoch: &str) -> Result<(u64, String), crate::store::StoreError> {
        let Some(saved) = self.store.meta_get(&cursor_key(peer))? else {
            return Ok((0, String::new()));
        };
        let text = String::from_utf8_lossy(&saved);
        match text.split_once(':') {
            Some((saved_epoch, seq)) if saved_epoch == epoch => Ok((seq.parse().unwrap_or(0), epoch.to_owned())),
            _ => Ok((0, String::new())),
        }
    }

    /// Records how far into `peer`'s change log we hold everything. Not
    /// waited on: a cursor lost in a crash only makes the next catch-up longer.
    fn save_cursor(&self, peer: &str, epoch: &str, seq: u64) -> Result<(), crate::store::StoreError> {
        self.store.meta_set(&cursor_key(peer), format!("{epoch}:{seq}").as_bytes())
    }

    fn session_with(&self, peer_id: &str) -> bool {
        self.sessions.lock().expect("sessions lock").contains_key(peer_id)
    }
}

fn cursor_key(peer: &str) -> String {
    format!("mesh/cursor/{peer}")
}

/// Dials `peer` until stopped: exponential backoff with jitter between
/// attempts, waiting while sync is paused or a session with it already runs.
async fn dial_loop(
    shared: Arc<Shared>,
    peer: KnownPeer,
    reached: Arc<Mutex<Option<String>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut last_failure: Option<String> = None;
    let mut shutdown = shared.shutdown.clone();
    let mut paused = shared.paused.subscribe();
    loop {
        if *stopped.borrow() || *shutdown.borrow() {
            return;
        }
        if *paused.borrow() {
            tokio::select! {
                () = until(&mut paused, false) => {}
                () = until(&mut stopped, true) => return,
                () = until(&mut shutdown, true) => return,
            }
        }
        let known_id = match peer.endpoint_id.as_str() {
            "" => reached.lock().expect("reached lock").clone(),
            id => Some(id.to_owned()),
        };
        let busy = known_id.as_deref().is_some_and(|id| shared.session_with(id));
        if !busy {
            for address in &peer.addresses {
                let started = std::time::Instant::now();
                let result = transport::dial(&shared, address, &peer.endpoint_id, &reached).await;
                match result {
                    Ok(()) | Err(session::SessionEnd::Duplicate) => last_failure = None,
                    Err(end) => {
                        // Warn when the situation changes, not on every retry.
                        let reason = end.to_string();
                        if last_failure.as_ref() != Some(&reason) {
                            tracing::warn!(peer = %peer.identity(), %address, %reason, "mesh session to peer ended");
                        } else {
                            tracing::debug!(peer = %peer.identity(), %address, %reason, "mesh dial failed again");
                        }
                        last_failure = Some(reason);
                    }
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = MIN_BACKOFF;
                }
            }
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            () = until(&mut stopped, true) => return,
            () = until(&mut shutdown, true) => return,
        }
    }
}

/// Resolves once the watched flag equals `value` (or its sender is gone).
pub(crate) async fn until(flag: &mut watch::Receiver<bool>, value: bool) {
    let _ = flag.wait_for(|v| *v == value).await;
}
