//! One mesh session: handshake, authentication, then Automerge sync of every
//! document in both directions until either side goes away.
//!
//! Sending is driven by the local change log: the session walks the log from
//! the peer's resume cursor, offering each changed document through the
//! Automerge sync protocol (one `sync::State` per document), and tails the
//! log for live changes, so local writes and changes merged from other peers
//! flow on alike. When every document up to a log position is confirmed in
//! sync, the peer is told (`Cursor`) and persists that position, which makes
//! the next reconnect's catch-up cost only what changed since. Without a
//! valid cursor in either direction (first contact, a wiped store) both sides
//! first run a digest exchange ([`super::digest`]) and offer only the
//! documents it finds different.
//!
//! A fresh sync state is primed with what the peer most likely holds (the
//! document minus its newest changes, or nothing when the digest says the
//! peer lacks it), so the first message already carries the missing changes
//! and a typical document syncs in one message each way; a wrong guess only
//! costs the ordinary Automerge exchange that follows.
//!
//! The loop never blocks on sending: replies queue locally and go out as the
//! outbound channel has room, so two busy peers cannot deadlock each other.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use automerge::sync;
use futures::{Stream, StreamExt};
use rand::RngCore;
use tokio::sync::{broadcast, mpsc, watch};

use super::auth::{NONCE_LEN, Role, Transcript};
use super::digest::{self, Reconciler, Verdict};
use super::proto::{self, Frame, frame::Kind};
use super::{SessionGuard, Shared};
use crate::store::{DocKey, validate};

pub const PROTOCOL_VERSION: u32 = 2;
/// Refusal reason for the losing one of two sessions between the same nodes.
const DUPLICATE: &str = "duplicate session: the session dialed by the lower node id is kept";
/// Documents per `SyncBatch` frame; more is a protocol violation.
pub const MAX_DOCS_PER_BATCH: usize = 64;
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A peer silent for this long is considered gone (partition, crash).
const PEER_TIMEOUT: Duration = Duration::from_secs(20);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Log entries read per scan step.
const SCAN_STEP: usize = 256;
/// Sync states kept per session before idle ones are dropped.
const MAX_SYNC_STATES: usize = 20_000;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("peer closed the session")]
    Closed,
    #[error("refused: {0}")]
    Refused(String),
    #[error("a session with this peer already exists")]
    Duplicate,
    #[error("peer refused us: {0}")]
    RefusedByPeer(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("peer silent for {0:?}")]
    Timeout(Duration),
    #[error("local shutdown, pause or disconnect")]
    Stopped,
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

pub type Incoming = std::pin::Pin<Box<dyn Stream<Item = Result<Frame, tonic::Status>> + Send>>;

/// Who this session connects to, as learned during the handshake.
pub struct Peer {
    pub node_id: String,
    pub epoch: String,
}

/// Runs a session to completion. `expected` is the node id the dialer was
/// told to reach, if any.
pub(crate) async fn run(
    shared: Arc<Shared>,
    role: Role,
    mut incoming: Incoming,
    out: mpsc::Sender<Frame>,
    expected: Option<String>,
    remote: String,
    on_identified: impl FnOnce(&str),
) -> Result<(), SessionEnd> {
    let (peer, guard) = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&shared, role, &mut incoming, &out, expected, &remote, on_identified),
    )
    .await
    {
        Ok(Ok(established)) => established,
        Ok(Err(end)) => {
            match &end {
                SessionEnd::Refused(reason) => {
                    let _ = out.try_send(refusal(reason));
                }
                SessionEnd::Duplicate => {
                    let _ = out.try_send(refusal(DUPLICATE));
                }
                _ => {}
            }
            return Err(end);
        }
        Err(_) => return Err(SessionEnd::Timeout(HANDSHAKE_TIMEOUT)),
    };
    let mut sync = SyncLoop::new(&shared, &peer, guard.stop.clone());
    // Established once both Resumes crossed: a listener at its session
    // limit refuses only after the handshake.
    let result = match sync.resume(&mut incoming, &out).await {
        Ok(()) => {
            tracing::info!(peer = %peer.node_id, %remote, ?role, "mesh session established");
            sync.run(&mut incoming, &out).await
        }
        Err(end) => Err(end),
    };
    drop(guard);
    if let Err(SessionEnd::Protocol(reason)) = &result {
        let _ = out.try_send(refusal(reason));
    }
    result
}

fn refusal(reason: &str) -> Frame {
    Frame { kind: Some(Kind::Refusal(proto::Refusal { reason: reason.to_owned() })) }
}

async fn next_frame(incoming: &mut Incoming) -> Result<Kind, SessionEnd> {
    match incoming.next().await {
        Some(Ok(Frame { kind: Some(Kind::Refusal(r)) })) if r.reason == DUPLICATE => Err(SessionEnd::Duplicate),
        Some(Ok(Frame { kind: Some(Kind::Refusal(r)) })) => Err(SessionEnd::RefusedByPeer(r.reason)),
        Some(Ok(Frame { kind: Some(kind) })) => Ok(kind),
        Some(Ok(Frame { kind: None })) => Err(SessionEnd::Protocol("empty frame".into())),
        Some(Err(status)) => Err(SessionEnd::Transport(status.message().to_owned())),
        None => Err(SessionEnd::Closed),
    }
}

async fn send(out: &mpsc::Sender<Frame>, kind: Kind) -> Result<(), SessionEnd> {
    out.send(Frame { kind: Some(kind) }).await.map_err(|_| SessionEnd::Closed)
}

async fn handshake(
    shared: &Arc<Shared>,
    role: Role,
    incoming: &mut Incoming,
    out: &mpsc::Sender<Frame>,
    expected: Option<String>,
    remote: &str,
    on_identified: impl FnOnce(&str),
) -> Result<(Peer, SessionGuard), SessionEnd> {
    let mut nonce = vec![0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let hello = proto::Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: shared.node.id.clone(),
        app_id: shared.options.app_id.clone(),
        nonce: nonce.clone(),
        store_epoch: shared.store.epoch().to_owned(),
    };
    // The dialer speaks first; the listener answers a Hello with its own.
    if role == Role::Dialer {
        send(out, Kind::Hello(hello.clone())).await?;
    }
    let Kind::Hello(theirs) = next_frame(incoming).await? else {
        return Err(SessionEnd::Protocol("expected Hello".into()));
    };
    if theirs.protocol_version != PROTOCOL_VERSION {
        return Err(SessionEnd::Refused(format!(
            "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
            theirs.protocol_version
        )));
    }
    if theirs.app_id != shared.options.app_id {
        return Err(SessionEnd::Refused(format!(
            "app id mismatch: peer is in formation {:?}, this node in {:?}",
            theirs.app_id, shared.options.app_id
        )));
    }
    if theirs.node_id == shared.node.id {
        return Err(SessionEnd::Refused("connected to itself".into()));
    }
    crate::node::validate_node_id(&theirs.node_id).map_err(|e| SessionEnd::Protocol(e.to_string()))?;
    if theirs.nonce.len() != NONCE_LEN {
        return Err(SessionEnd::Protocol("bad nonce".into()));
    }
    if let Some(expected) = expected.filter(|e| !e.is_empty())
        && expected != theirs.node_id
    {
        return Err(SessionEnd::Refused(format!("expected node {expected:?}, reached {:?}", theirs.node_id)));
    }
    if role == Role::Listener {
        send(out, Kind::Hello(hello)).await?;
    }

    let (dialer_id, dialer_nonce, listener_id, listener_nonce) = match role {
        Role::Dialer => (&shared.node.id, &nonce, &theirs.node_id, &theirs.nonce),
        Role::Listener => (&theirs.node_id, &theirs.nonce, &shared.node.id, &nonce),
    };
    let transcript =
        Transcript { app_id: &shared.options.app_id, dialer_id, dialer_nonce, listener_id, listener_nonce };
    let key = shared.options.key.expose().as_bytes();
    let auth_failed = || {
        SessionEnd::Refused(format!(
            "authentication failed: node {:?} at {remote} does not hold this formation's shared key",
            theirs.node_id
        ))
    };
    match role {
        Role::Dialer => {
            send(out, Kind::Auth(proto::Auth { proof: transcript.prove(key, Role::Dialer) })).await?;
            let Kind::Auth(auth) = next_frame(incoming).await? else {
                return Err(SessionEnd::Protocol("expected Auth".into()));
            };
            if !transcript.verify(key, Role::Listener, &auth.proof) {
                return Err(auth_failed());
            }
        }
        Role::Listener => {
            let Kind::Auth(auth) = next_frame(incoming).await? else {
                return Err(SessionEnd::Protocol("expected Auth".into()));
            };
            if !transcript.verify(key, Role::Dialer, &auth.proof) {
                return Err(auth_failed());
            }
            send(out, Kind::Auth(proto::Auth { proof: transcript.prove(key, Role::Listener) })).await?;
        }
    }

    // The peer's identity is proven from here on; the dialer uses it to
    // avoid redialing a peer it already has a session with.
    on_identified(&theirs.node_id);
    let guard = shared.register(&theirs.node_id, dialer_id, remote)?;
    Ok((Peer { node_id: theirs.node_id, epoch: theirs.store_epoch }, guard))
}

/// Something waiting to be sent.
enum Outgoing {
    Sync(proto::DocSync),
    Cursor(u64),
    Digest(proto::Digest),
}

struct SyncLoop<'a> {
    shared: &'a Arc<Shared>,
    peer: &'a Peer,
    peer_id: Arc<str>,
    stop: watch::Receiver<bool>,
    states: HashMap<DocKey, sync::State>,
    /// Size of `states` at which idle ones are dropped.
    trim_at: usize,
    queue: VecDeque<Outgoing>,
    /// Highest log position already offered to the peer.
    scanned: u64,
    /// Log positions offered but not yet confirmed in sync.
    pending: BTreeMap<u64, DocKey>,
    pending_seq: HashMap<DocKey, u64>,
    cursor_sent: u64,
    catching_up: bool,
    /// The digest exchange, while it runs.
    digest: Option<Reconciler>,
    /// Log head when the digest was computed: the scan continues from there.
    digest_base: u64,
    /// Documents the digest found different, still to be offered.
    to_offer: VecDeque<(u64, DocKey)>,
    /// What the digest learned about the peer's copy of those documents.
    verdicts: HashMap<DocKey, Verdict>,
}

impl<'a> SyncLoop<'a> {
    fn new(shared: &'a Arc<Shared>, peer: &'a Peer, stop: watch::Receiver<bool>) -> Self {
        Self {
            shared,
            peer,
            peer_id: Arc::from(peer.node_id.as_str()),
            stop,
            states: HashMap::new(),
            trim_at: MAX_SYNC_STATES,
            queue: VecDeque::new(),
            scanned: 0,
            pending: BTreeMap::new(),
            pending_seq: HashMap::new(),
            cursor_sent: 0,
            catching_up: false,
            digest: None,
            digest_base: 0,
            to_offer: VecDeque::new(),
            verdicts: HashMap::new(),
        }
    }

    /// Exchanges Resumes and, unless both cursors are valid, starts the digest.
    async fn resume(&mut self, incoming: &mut Incoming, out: &mpsc::Sender<Frame>) -> Result<(), SessionEnd> {
        let (cursor, epoch) = self.shared.cursor_for(&self.peer.node_id, &self.peer.epoch)?;
        let ours_valid = !epoch.is_empty() && epoch == self.peer.epoch;
        send(out, Kind::Resume(proto::Resume { cursor, epoch })).await?;
        let Kind::Resume(resume) = next_frame(incoming).await? else {
            return Err(SessionEnd::Protocol("expected Resume".into()));
        };
        let theirs_valid = resume.epoch == self.shared.store.epoch();
        if theirs_valid {
            self.scanned = resume.cursor.min(self.shared.store.log_head());
            self.cursor_sent = self.scanned;
        }
        // Both sides know both Resumes, so they agree on whether to digest.
        if !(ours_valid && theirs_valid) {
            self.start_digest().await?;
        }
        Ok(())
    }

    async fn run(mut self, incoming: &mut Incoming, out: &mpsc::Sender<Frame>) -> Result<(), SessionEnd> {
        let mut feed = self.shared.store.subscribe();
        self.set_catching_up(true);
        let mut stop = self.stop.clone();
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        let mut last_heard = Instant::now();
        let result = loop {
            if let Err(end) = self.scan() {
                break Err(end);
            }
            self.update_cursor();
            let idle = self.digest.is_none()
                && self.to_offer.is_empty()
                && self.pending.is_empty()
                && self.scanned >= self.shared.store.log_head();
            self.set_catching_up(!idle);
            tokio::select! {
                frame = incoming.next() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(Frame { kind: Some(kind) })) => {
                            if let Err(end) = self.handle(kind).await {
                                break Err(end);
                            }
                        }
                        Some(Ok(Frame { kind: None })) => break Err(SessionEnd::Protocol("empty frame".into())),
                        Some(Err(status)) => break Err(SessionEnd::Transport(status.message().to_owned())),
                        None => break Err(SessionEnd::Closed),
                    }
                }
                permit = out.reserve(), if !self.queue.is_empty() => {
                    let Ok(permit) = permit else { break Err(SessionEnd::Closed) };
                    let frame = self.next_frame_to_send();
                    self.shared.stats.sent(&frame);
                    permit.send(frame);
                }
                changed = feed.recv() => {
                    // Only a wake-up: the log is the source of truth, so a
                    // lagged feed loses nothing.
                    if let Err(broadcast::error::RecvError::Closed) = changed {
                        break Err(SessionEnd::Stopped);
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > PEER_TIMEOUT {
                        break Err(SessionEnd::Timeout(PEER_TIMEOUT));
                    }
                    let frame = Frame { kind: Some(Kind::Heartbeat(proto::Heartbeat {})) };
                    if out.try_send(frame.clone()).is_ok() {
                        self.shared.stats.sent(&frame);
                    }
                }
                () = super::until(&mut stop, true) => break Err(SessionEnd::Stopped),
            }
        };
        self.set_catching_up(false);
        result
    }

    fn set_catching_up(&mut self, value: bool) {
        if value != self.catching_up {
            self.catching_up = value;
            self.shared.set_catching_up(value);
        }
    }

    /// Computes this side's digest and queues its first round. The log
    /// position is taken first: a write racing the digest is then offered
    /// by the scan as well, which is harmless.
    async fn start_digest(&mut self) -> Result<(), SessionEnd> {
        let started = Instant::now();
        self.digest_base = self.shared.store.log_head();
        // Reading every document's heads takes a while in a large store
        // (a fraction of a second for 100 000 documents): off the runtime workers.
        let store = self.shared.store.clone();
        let (documents, reconciler) = tokio::task::spawn_blocking(move || {
            let entries = store
                .all_heads_with_log_seq()
                .map(|entry| entry.map(|(key, heads, seq)| digest::Entry::new(key, &heads, seq)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, SessionEnd>((entries.len(), Reconciler::new(entries)))
        })
        .await
        .map_err(|err| {
            if err.is_panic() { std::panic::resume_unwind(err.into_panic()) } else { SessionEnd::Stopped }
        })??;
        self.queue.extend(reconciler.frames().into_iter().map(Outgoing::Digest));
        self.digest = Some(reconciler);
        tracing::debug!(peer = %self.peer.node_id, documents, elapsed = ?started.elapsed(), "digest computed");
        Ok(())
    }

    fn receive_digest(&mut self, frame: proto::Digest) -> Result<(), SessionEnd> {
        let Some(reconciler) = self.digest.as_mut() else {
            return Err(SessionEnd::Protocol("digest frame outside a digest exchange".into()));
        };
        if let Some(frames) = reconciler.receive(frame).map_err(SessionEnd::Protocol)? {
            self.queue.extend(frames.into_iter().map(Outgoing::Digest));
        }
        if reconciler.finished {
            let Some(reconciler) = self.digest.take() else { unreachable!() };
            let mut differing = reconciler.differing;
            differing.sort_unstable_by_key(|d| d.log_seq);
            tracing::debug!(peer = %self.peer.node_id, differing = differing.len(), "digest finished");
            for d in differing {
                self.verdicts.insert(d.key.clone(), d.verdict);
                self.to_offer.push_back((d.log_seq, d.key));
            }
            // Everything up to the base not listed above is identical on both sides.
            self.scanned = self.scanned.max(self.digest_base);
        }
        Ok(())
    }

    /// Offers the documents the digest found different, then those of the
    /// next log entries, while the queue is short.
    fn scan(&mut self) -> Result<(), SessionEnd> {
        if self.digest.is_some() {
            return Ok(());
        }
        while self.queue.len() < MAX_DOCS_PER_BATCH
            && let Some((seq, key)) = self.to_offer.pop_front()
        {
            if self.pending_seq.contains_key(&key) {
                continue;
            }
            if self.offer(&key)? || !self.in_sync(&key)? {
                self.pending.insert(seq, key.clone());
                self.pending_seq.insert(key, seq);
            }
        }
        while self.queue.len() < MAX_DOCS_PER_BATCH && self.scanned < self.shared.store.log_head() {
            let entries = self.shared.store.log_after(self.scanned, SCAN_STEP)?;
            let Some(&(last, _)) = entries.last() else {
                // Entries between scanned and head were superseded by later ones.
                self.scanned = self.shared.store.log_head();
                break;
            };
            for (seq, key) in entries {
                if let Some(old) = self.pending_seq.remove(&key) {
                    self.pending.remove(&old);
                }
                if self.offer(&key)? || !self.in_sync(&key)? {
                    self.pending.insert(seq, key.clone());
                    self.pending_seq.insert(key, seq);
                }
            }
            self.scanned = last;
        }
        Ok(())
    }

    /// Queues the next sync message for `key`, if one is due; returns whether one was.
    fn offer(&mut self, key: &DocKey) -> Result<bool, SessionEnd> {
        self.trim_states();
        let verdict = self.verdicts.remove(key);
        let message = match self.states.entry(key.clone()) {
            Entry::Occupied(mut state) => self.shared.store.generate_sync_message(key, state.get_mut())?,
            Entry::Vacant(vacant) => {
                let state = vacant.insert(sync::State::new());
                self.shared
                    .store
                    .generate_sync_message_primed(key, state, |doc, state| prime(key, doc, state, verdict))?
            }
        };
        match message {
            Some(message) => {
                self.queue.push_back(Outgoing::Sync(proto::DocSync {
                    collection: key.collection.clone(),
                    doc_id: key.doc_id.clone(),
                    message: message.encode(),
                }));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn trim_states(&mut self) {
        if self.states.len() >= self.trim_at {
            // Forgetting a state costs one extra round trip for that document later.
            let pending = &self.pending_seq;
            self.states.retain(|key, _| pending.contains_key(key));
            // With many documents pending, trimming again on the next call
            // would rescan them all for nothing.
            self.trim_at = MAX_SYNC_STATES.max(self.states.len() * 2);
        }
    }

    async fn handle(&mut self, kind: Kind) -> Result<(), SessionEnd> {
        self.shared.stats.received(&kind);
        match kind {
            Kind::Sync(batch) => self.receive_batch(batch).await,
            Kind::Digest(frame) => self.receive_digest(frame),
            Kind::Cursor(cursor) => {
                self.shared.save_cursor(&self.peer.node_id, &self.peer.epoch, cursor.seq)?;
                Ok(())
            }
            Kind::Heartbeat(_) => Ok(()),
            Kind::Refusal(r) => Err(SessionEnd::RefusedByPeer(r.reason)),
            Kind::Hello(_) | Kind::Auth(_) | Kind::Resume(_) => {
                Err(SessionEnd::Protocol("handshake frame after the handshake".into()))
            }
        }
    }

    async fn receive_batch(&mut self, batch: proto::SyncBatch) -> Result<(), SessionEnd> {
        if batch.docs.len() > MAX_DOCS_PER_BATCH {
            return Err(SessionEnd::Protocol(format!(
                "batch of {} documents exceeds the limit of {MAX_DOCS_PER_BATCH}",
                batch.docs.len()
            )));
        }
        // Validate the whole batch before touching the store.
        let mut decoded = Vec::with_capacity(batch.docs.len());
        for doc in batch.docs {
            validate::collection(&doc.collection)
                .and_then(|()| validate::doc_id(&doc.doc_id))
                .map_err(|e| SessionEnd::Protocol(format!("bad document key: {e}")))?;
            let message = sync::Message::decode(&doc.message).map_err(|e| {
                SessionEnd::Protocol(format!("undecodable sync message for {}/{}: {e}", doc.collection, doc.doc_id))
            })?;
            decoded.push((DocKey::new(doc.collection, doc.doc_id), message));
        }
        let mut touched = Vec::with_capacity(decoded.len());
        let mut refused = None;
        for (key, message) in decoded {
            // The peer may not know our heads: it (re)starts this document's
            // exchange from scratch (e.g. after dropping its sync state in
            // `trim_states`), or it pushed changes on a guess of what we hold.
            let peer_starts_over =
                message.have.first().is_some_and(|have| have.last_sync.is_empty()) || !message.changes.is_empty();
            self.trim_states();
            let state = self.states.entry(key.clone()).or_default();
            if let Err(e) = self.shared.store.receive_sync_message(&key, state, message, &self.peer_id) {
                refused = Some(match e {
                    crate::store::StoreError::Automerge(e) => {
                        SessionEnd::Protocol(format!("invalid changes for {key}: {e}"))
                    }
                    other => SessionEnd::Store(other),
                });
                break;
            }
            touched.push((key, peer_starts_over));
        }
        // Replies acknowledge what we hold, so they wait until it is on disk.
        // The documents applied before a refused one are committed too.
        self.shared.store.flush().await?;
        if let Some(end) = refused {
            return Err(end);
        }
        for (key, peer_starts_over) in touched {
            if !self.offer(&key)?
                && peer_starts_over
                && let Some(state) = self.states.get_mut(&key)
            {
                // Our state says both sides are in sync, so Automerge stays
                // silent; but a peer that started over does not know our
                // heads and would wait for them forever (never confirming the
                // document, so its change-log cursor would stop advancing).
                // Forgetting what we last sent makes us state our heads.
                state.last_sent_heads.clear();
                self.offer(&key)?;
            }
            if self.in_sync(&key)?
                && let Some(seq) = self.pending_seq.remove(&key)
            {
                self.pending.remove(&seq);
            }
        }
        Ok(())
    }

    /// Whether the peer is known to hold every change of the document.
    fn in_sync(&self, key: &DocKey) -> Result<bool, SessionEnd> {
        let Some(state) = self.states.get(key) else { return Ok(false) };
        let Some(theirs) = &state.their_heads else { return Ok(false) };
        let ours = self.shared.store.heads(key)?.unwrap_or_default();
        Ok(ours.iter().all(|head| theirs.contains(head)))
    }

    /// Tells the peer how far it is confirmed to be, when that advanced.
    fn update_cursor(&mut self) {
        let delivered = match self.pending.keys().next() {
            Some(first) => first - 1,
            None => self.scanned,
        };
        let delivered = match self.to_offer.front() {
            Some(&(first, _)) => delivered.min(first.saturating_sub(1)),
            None => delivered,
        };
        if self.digest.is_none() && delivered > self.cursor_sent && self.queue.is_empty() {
            self.cursor_sent = delivered;
            self.queue.push_back(Outgoing::Cursor(delivered));
        }
    }

    fn next_frame_to_send(&mut self) -> Frame {
        match self.queue.pop_front() {
            Some(Outgoing::Cursor(seq)) => Frame { kind: Some(Kind::Cursor(proto::Cursor { seq })) },
            Some(Outgoing::Digest(digest)) => Frame { kind: Some(Kind::Digest(digest)) },
            Some(Outgoing::Sync(first)) => {
                let mut docs = vec![first];
                while docs.len() < MAX_DOCS_PER_BATCH {
                    match self.queue.front() {
                        Some(Outgoing::Sync(_)) => {
                            let Some(Outgoing::Sync(doc)) = self.queue.pop_front() else { unreachable!() };
                            docs.push(doc);
                        }
                        _ => break,
                    }
                }
                Frame { kind: Some(Kind::Sync(proto::SyncBatch { docs })) }
            }
            None => unreachable!("only called with a non-empty queue"),
        }
    }
}

/// Primes a fresh sync state with the heads the peer most likely holds, so
/// that the first message already carries the changes it misses:
/// - the digest says the peer lacks the document: nothing (send everything);
/// - the digest says the peer holds it with other heads: the document minus
///   its newest changes, if that is exactly what the peer's leaf hash says,
///   else no guess (the plain protocol finds out);
/// - otherwise (the document changed after the peer's cursor, or live): the
///   document minus its newest changes, the usual case of a peer that was in
///   sync before the latest write.
///
/// A wrong guess is safe: the peer queues changes whose dependencies it
/// lacks, and its reply (its heads and needs, or a reset) puts the ordinary
/// Automerge exchange back on track.
fn prime(key: &DocKey, doc: &automerge::Automerge, state: &mut sync::State, verdict: Option<Verdict>) {
    let believed = match verdict {
        Some(Verdict::PeerLacks) => Vec::new(),
        Some(Verdict::PeerHolds(leaf)) => {
            let parents = parents_of_heads(doc);
            if digest::leaf_hash(key, &parents) != leaf {
                return;
            }
            parents
        }
        None => parents_of_heads(doc),
    };
    state.shared_heads = believed.clone();
    state.their_heads = Some(believed.clone());
    state.their_need = Some(Vec::new());
    state.their_have = Some(vec![sync::Have { last_sync: believed, bloom: Default::default() }]);
}

/// The dependencies of the document's heads: the document minus its newest changes.
fn parents_of_heads(doc: &automerge::Automerge) -> Vec<automerge::ChangeHash> {
    let mut parents: Vec<_> = doc
        .get_heads()
        .iter()
        .filter_map(|head| doc.get_change_meta_by_hash(head))
        .flat_map(|change| change.deps)
        .collect();
    parents.sort_unstable();
    parents.dedup();
    parents
}

/// Byte counters for `GetSyncStats`.
#[derive(Default)]
pub struct Stats {
    pub bytes_sent: std::sync::atomic::AtomicU64,
    pub bytes_received: std::sync::atomic::AtomicU64,
}

impl Stats {
    fn sent(&self, frame: &Frame) {
        use prost::Message;
        self.bytes_sent.fetch_add(frame.encoded_len() as u64, Ordering::Relaxed);
    }

    fn received(&self, kind: &Kind) {
        self.bytes_received.fetch_add(kind.encoded_len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DocumentStore, StoreOptions};

    fn open(dir: &std::path::Path) -> DocumentStore {
        DocumentStore::open(&StoreOptions::new(dir)).unwrap()
    }

    /// Plays a session's exchange for one document, starting with A's
    /// `first` message, until neither side has more to say; returns the
    /// encoded size of every message.
    fn exchange(
        a: &DocumentStore,
        b: &DocumentStore,
        key: &DocKey,
        first: Option<sync::Message>,
        mut sa: sync::State,
    ) -> Vec<usize> {
        let peer: Arc<str> = Arc::from("peer");
        let mut sb = sync::State::new();
        let mut sizes = Vec::new();
        let mut from_a = first;
        for _ in 0..10 {
            let Some(message) = from_a.take() else { break };
            let bytes = message.encode();
            sizes.push(bytes.len());
            b.receive_sync_message(key, &mut sb, sync::Message::decode(&bytes).unwrap(), &peer).unwrap();
            let Some(reply) = b.generate_sync_message(key, &mut sb).unwrap() else { break };
            let bytes = reply.encode();
            sizes.push(bytes.len());
            a.receive_sync_message(key, &mut sa, sync::Message::decode(&bytes).unwrap(), &peer).unwrap();
            from_a = a.generate_sync_message(key, &mut sa).unwrap();
        }
        assert_eq!(a.heads(key).unwrap(), b.heads(key).unwrap(), "converged");
        sizes
    }

    #[tokio::test]
    async fn a_primed_state_syncs_a_changed_document_in_one_message_each_way() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(dir_a.path()), open(dir_b.path()));
        let key = DocKey::new("stored", "d004200");
        let json =
            r#"{"n":4200,"kind":"bulk","payload":"0000000000000000000000000000000000000000000000000000000000004200"}"#;
        a.put_json("stored", "d004200", json).await.unwrap();
        let mut sa = sync::State::new();
        let first = a.generate_sync_message(&key, &mut sa).unwrap();
        exchange(&a, &b, &key, first, sa);

        // A changes the document while apart; a new session starts with fresh states.
        let changed = json.replace('}', r#","changed":true}"#);
        a.put_json("stored", "d004200", &changed).await.unwrap();
        let plain = {
            let mut sa = sync::State::new();
            let first = a.generate_sync_message(&key, &mut sa).unwrap();
            // B already has everything after this, so measure on a copy of its state.
            let dir_c = tempfile::tempdir().unwrap();
            let c = open(dir_c.path());
            let mut sc = sync::State::new();
            exchange(&b, &c, &key, b.generate_sync_message(&key, &mut sc).unwrap(), sc);
            exchange(&a, &c, &key, first, sa)
        };
        let mut sa = sync::State::new();
        let first = a.generate_sync_message_primed(&key, &mut sa, |doc, state| prime(&key, doc, state, None)).unwrap();
        let primed = exchange(&a, &b, &key, first, sa);
        println!("changed JSON {} bytes; plain exchange {plain:?}; primed exchange {primed:?}", changed.len());
        assert_eq!(primed.len(), 2, "one message each way");
        assert!(primed.iter().sum::<usize>() < plain.iter().sum::<usize>());
    }
}
