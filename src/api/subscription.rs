//! `Subscribe` streams and the memory their subscribers may hold.
//!
//! Each subscriber gets a forwarding task that takes its collections' changes
//! off the store's feed into the subscriber's backlog as they happen, whether
//! or not the client reads. A client that stops reading therefore never holds
//! the feed itself, and what it does hold is bounded: a backlog of more than
//! [`MAX_BACKLOG_CHANGES`] changes, or one beyond its share of
//! `subscribe_backlog_bytes` while all backlogs together exceed it, is dropped
//! at once and the stream ends with `resource_exhausted` after what its
//! connection already carries. The changes keep the store's shared JSON, so
//! the bytes counted are an upper bound of what the backlogs really add.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use connectrpc::ConnectError;
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, broadcast, oneshot, watch};

use crate::proto::peat::sidecar::v1::{ChangeType, DocumentChange};
use crate::store;

/// Changes one subscriber may have waiting; more, and it is cut off.
const MAX_BACKLOG_CHANGES: usize = 4096;
/// Counted per change besides its JSON and key: the entry and its heads.
const CHANGE_OVERHEAD_BYTES: usize = 128;

/// The backlogs of every `Subscribe` stream of the node.
pub struct Subscriptions {
    /// `subscribe_backlog_bytes`: what all backlogs together may hold.
    budget_bytes: usize,
    /// What they hold now.
    held_bytes: AtomicUsize,
    /// Subscribers still receiving (not cut off, not ended).
    receiving: AtomicUsize,
    /// Ends every stream when the node shuts down.
    shutdown: watch::Receiver<bool>,
}

impl Subscriptions {
    pub fn new(budget_bytes: usize, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Self { budget_bytes, held_bytes: AtomicUsize::new(0), receiving: AtomicUsize::new(0), shutdown })
    }

    /// A stream of the changes to `collections` (all when empty) from now on,
    /// until the client goes away, the node shuts down, or the subscriber is
    /// cut off (then a final `resource_exhausted`).
    pub fn subscribe(
        self: &Arc<Self>,
        feed: broadcast::Receiver<store::DocumentChange>,
        collections: Vec<String>,
    ) -> impl Stream<Item = Result<DocumentChange, ConnectError>> + Send + 'static {
        let backlog =
            Arc::new(Backlog { subscriptions: Arc::clone(self), queue: Mutex::default(), ready: Notify::new() });
        self.receiving.fetch_add(1, Ordering::Relaxed);
        let (alive, stream_gone) = oneshot::channel::<()>();
        tokio::spawn(forward(feed, collections, self.shutdown.clone(), Arc::clone(&backlog), stream_gone));
        futures::stream::unfold(Some((backlog, alive)), |state| async move {
            let (backlog, alive) = state?;
            match backlog.next().await {
                Some(Ok(change)) => Some((Ok(to_message(change)), Some((backlog, alive)))),
                Some(Err(err)) => Some((Err(err), None)),
                None => None,
            }
        })
        .boxed()
    }
}

/// Moves `feed` into `backlog` until the subscriber is cut off, the stream
/// is dropped (`stream_gone`), the node shuts down or the feed closes.
async fn forward(
    mut feed: broadcast::Receiver<store::DocumentChange>,
    collections: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
    backlog: Arc<Backlog>,
    mut stream_gone: oneshot::Receiver<()>,
) {
    loop {
        let received = tokio::select! {
            received = feed.recv() => received,
            () = crate::mesh::until(&mut shutdown, true) => break backlog.end(None),
            _ = &mut stream_gone => break backlog.end(None),
        };
        match received {
            Ok(change) if collections.is_empty() || collections.contains(&change.key.collection) => {
                if let Err(cut_off) = backlog.push(change) {
                    break backlog.end(Some(cut_off));
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                break backlog.end(Some(CutOff { changes: missed, bytes: None }));
            }
            Err(broadcast::error::RecvError::Closed) => break backlog.end(None),
        }
    }
}

/// Why a subscriber was cut off: what it was about to miss.
struct CutOff {
    changes: u64,
    /// The bytes its backlog held, when that was the reason.
    bytes: Option<usize>,
}

impl CutOff {
    fn error(&self) -> ConnectError {
        let held = self.bytes.map(|bytes| format!(" ({bytes} bytes)")).unwrap_or_default();
        ConnectError::resource_exhausted(format!(
            "subscriber fell behind and {} changes{held} were dropped; subscribe again and re-read the documents",
            self.changes
        ))
    }
}

struct Backlog {
    subscriptions: Arc<Subscriptions>,
    queue: Mutex<Queue>,
    /// Woken when a change is queued or the stream ends.
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    changes: VecDeque<(store::DocumentChange, usize)>,
    bytes: usize,
    /// Set once nothing more will be queued: `Some(error)` when cut off.
    ended: Option<Option<ConnectError>>,
}

impl Backlog {
    /// Queues `change`, or cuts the subscriber off when it holds too much.
    fn push(&self, change: store::DocumentChange) -> Result<(), CutOff> {
        let bytes = change_bytes(&change);
        let subscriptions = &self.subscriptions;
        let mut queue = self.queue.lock().expect("backlog lock");
        queue.changes.push_back((change, bytes));
        queue.bytes += bytes;
        let held = subscriptions.held_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let share = subscriptions.budget_bytes / subscriptions.receiving.load(Ordering::Relaxed).max(1);
        // A subscriber that took everything but the newest change is keeping up.
        let over_budget = held > subscriptions.budget_bytes && queue.changes.len() > 1 && queue.bytes > share;
        if over_budget || queue.changes.len() > MAX_BACKLOG_CHANGES {
            let cut_off = CutOff { changes: queue.changes.len() as u64, bytes: over_budget.then_some(queue.bytes) };
            self.release(&mut queue);
            return Err(cut_off);
        }
        drop(queue);
        self.ready.notify_one();
        Ok(())
    }

    /// Nothing more will be queued. A cut-off subscriber's backlog is dropped
    /// at once; so is everything waiting when the node shuts down, so that
    /// draining connections does not wait for slow readers.
    fn end(&self, cut_off: Option<CutOff>) {
        let error = cut_off.map(|cut_off| {
            tracing::warn!(
                missed = cut_off.changes,
                bytes = cut_off.bytes,
                "Subscribe stream cut off: the subscriber fell behind the change feed and stopped reading"
            );
            cut_off.error()
        });
        let mut queue = self.queue.lock().expect("backlog lock");
        self.release(&mut queue);
        queue.ended = Some(error);
        drop(queue);
        self.subscriptions.receiving.fetch_sub(1, Ordering::Relaxed);
        self.ready.notify_one();
    }

    fn release(&self, queue: &mut Queue) {
        queue.changes.clear();
        self.subscriptions.held_bytes.fetch_sub(std::mem::take(&mut queue.bytes), Ordering::Relaxed);
    }

    /// The next change; `Some(Err)` once when cut off, then `None`.
    async fn next(&self) -> Option<Result<store::DocumentChange, ConnectError>> {
        loop {
            // Registered before looking, so a change queued in between still wakes it.
            let ready = self.ready.notified();
            {
                let mut queue = self.queue.lock().expect("backlog lock");
                if let Some((change, bytes)) = queue.changes.pop_front() {
                    queue.bytes -= bytes;
                    self.subscriptions.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    return Some(Ok(change));
                }
                if let Some(ended) = &mut queue.ended {
                    return ended.take().map(Err);
                }
            }
            ready.await;
        }
    }
}

fn change_bytes(change: &store::DocumentChange) -> usize {
    let json = change.json.as_ref().map_or(0, |json| json.len());
    json + change.key.collection.len() + change.key.doc_id.len() + CHANGE_OVERHEAD_BYTES
}

fn to_message(change: store::DocumentChange) -> DocumentChange {
    let (change_type, json_data) = match change.json {
        Some(json) => (ChangeType::CHANGE_TYPE_UPSERT, Some(json.to_string())),
        None => (ChangeType::CHANGE_TYPE_DELETE, None),
    };
    DocumentChange {
        collection: change.key.collection,
        doc_id: change.key.doc_id,
        change_type: change_type.into(),
        json_data,
        ..Default::default()
    }
}
