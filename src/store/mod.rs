//! The document store: every document an Automerge CRDT persisted in sled.
//!
//! Owns the on-disk state (see [`record`] for the layout), the in-memory cache
//! of loaded Automerge documents, durability (group commit), encryption at
//! rest, and the change feed that subscribers and mesh sessions consume.
//! A write is acknowledged only after it is on disk.

mod cache;
pub mod crypto;
mod durability;
mod format;
mod journal;
pub mod json;
mod pieces;
pub mod record;
mod sled_flush;
pub mod validate;

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, Change, ChangeHash, ExpandedChange, ObjType, ROOT, ReadDoc, ScalarValue, Value, legacy,
};
use serde_json::{Map, Value as Json};
use tokio::sync::broadcast;

pub use cache::CacheUsage;
pub use record::DocKey;
use record::{DocRecord, KeyWrite};
pub use validate::InvalidField;

use cache::{Accounted, DocCache};
use crypto::Cipher;
use durability::GroupCommit;
use journal::Journal;
use sled_flush::SledFlush;

/// Root key of the document's JSON content.
const DATA_KEY: &str = "data";
/// Root key of the tombstone flag.
const DELETED_KEY: &str = "deleted";
/// Estimated heap bytes of a loaded Automerge document, apart from its
/// content and history (automerge 0.12: ~9 KiB for a document of ten short
/// fields; `tests/cache_estimate.rs` checks these constants).
const LOADED_DOC_BYTES: usize = 8 * 1024;
/// Estimated heap bytes one change adds to a loaded document's history.
/// A history built change by change takes 150–300 bytes per change of a
/// few fields; loaded from one compacted snapshot, it takes less, and the
/// estimate errs high.
const CHANGE_BYTES: usize = 300;
/// What a loaded document's first edit in memory adds, in multiples of its
/// JSON: Automerge expands the content it holds (by 1–5 times the JSON,
/// most for long strings), until the document is next loaded from disk.
const EDITED_CONTENT: usize = 5;
/// Estimated bytes of a cache entry besides its document: key, record, locks.
const ENTRY_BYTES: usize = 384;
/// Changes longer than this are stored deflated. Automerge leaves the changes
/// it makes uncompressed, and deflating costs more than a small document's
/// whole write; a large document's change shrinks severalfold, which its
/// journal write, its disk space and sled's page cache all feel.
const DEFLATE_CHANGES_OVER: usize = 4096;
/// Bytes of incremental chunks a document collects before they are compacted
/// into one snapshot (once the snapshot is larger: as many bytes as it has).
const COMPACT_AFTER_BYTES: u64 = 4096;
/// How often sled flushes on its own.
const SLED_FLUSH_EVERY_MS: u64 = 500;
/// The journal's file name in the data directory (next to sled's files).
pub const JOURNAL_FILE: &str = "journal";
/// Change feed capacity; a subscriber further behind than this is cut off.
const FEED_CAPACITY: usize = 4096;
/// Meta key recording how stored values are protected.
const ENCRYPTION_MARKER: &[u8] = b"encryption";
const PLAINTEXT_MARKER: &[u8] = b"none";
const KEY_CHECK: &[u8] = b"peat-sidecar encryption key check";
/// Meta key of the store's epoch: a random id minted with the store, so a
/// peer's cursor into this store's change log dies with the store.
const EPOCH_KEY: &[u8] = b"epoch";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    // The cause is part of the message, not a `source`: it would be printed twice.
    #[error("opening the data directory {path}: {error}")]
    Open { path: PathBuf, error: sled::Error },
    #[error("the data directory {0} is in use by another process (is another peat-sidecar running on it?)")]
    InUse(PathBuf),
    #[error("the data directory {0} is encrypted but no encryption key is configured (set encryption_key_file)")]
    KeyMissing(PathBuf),
    #[error(
        "the data directory {0} holds plaintext data but an encryption key is configured; refusing to mix plaintext and encrypted data"
    )]
    PlaintextWithKey(PathBuf),
    #[error("the encryption key does not match the one the data directory {0} was created with")]
    WrongKey(PathBuf),
    #[error(
        "the data directory {path} was written by a newer version of peat-sidecar (store format {found}; this version reads formats up to {supported})"
    )]
    NewerFormat { path: PathBuf, found: u32, supported: u32 },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("document {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error(transparent)]
    NotDurable(#[from] durability::NotDurable),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

/// Where a change came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Local,
    Peer(Arc<str>),
}

/// One entry of the change feed.
#[derive(Debug, Clone)]
pub struct DocumentChange {
    pub key: DocKey,
    /// The merged JSON after the change; `None` for a delete.
    pub json: Option<Arc<str>>,
    pub heads: Vec<ChangeHash>,
    /// The document's new position in the change log.
    pub log_seq: u64,
    pub origin: Origin,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub encryption_key: Option<[u8; 32]>,
    pub max_document_bytes: usize,
    /// Estimated memory of the documents kept loaded while unused.
    pub document_cache_bytes: usize,
    /// sled's page cache: what it keeps of the stored values and its index;
    /// at least [`MIN_PAGE_CACHE_BYTES`] is used.
    pub page_cache_bytes: usize,
}

/// The largest document, unless configured.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// The memory for documents kept loaded while unused, unless configured:
/// about 3 000 small documents with short histories.
pub const DEFAULT_DOCUMENT_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// sled's page cache, unless configured.
pub const DEFAULT_PAGE_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// The smallest page cache: a few leaves of pieces. (sled itself refuses
/// less than 256 bytes, by panicking.)
pub const MIN_PAGE_CACHE_BYTES: usize = 1024 * 1024;

impl StoreOptions {
    /// A plaintext store in `path` with the default limits.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            encryption_key: None,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            document_cache_bytes: DEFAULT_DOCUMENT_CACHE_BYTES,
            page_cache_bytes: DEFAULT_PAGE_CACHE_BYTES,
        }
    }
}

/// A cheap-to-clone handle to the store.
#[derive(Clone)]
pub struct DocumentStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The configuration `docs` and `meta` were opened with: where sled
    /// keeps the error it failed with for good.
    sled_config: sled::Config,
    docs: sled::Tree,
    meta: sled::Tree,
    cipher: Option<Cipher>,
    actor: ActorId,
    max_document_bytes: usize,
    // std Mutexes: no `.await` happens while the cache's lock or a
    // document's lock is held.
    cache: DocCache<CachedDoc>,
    /// Last change-log sequence number handed out; advanced only inside
    /// [`GroupCommit::submit`], so the log is numbered in write order.
    log_assigned: AtomicU64,
    /// Last change-log sequence number applied to sled. Groups are applied
    /// in order, so a reader that saw entry N never misses a lower one later.
    log_head: Arc<AtomicU64>,
    epoch: String,
    feed: broadcast::Sender<DocumentChange>,
    commit: GroupCommit<PendingWrite>,
}

/// A cached document and its record. The record here is authoritative: it
/// includes writes still queued for the group commit.
struct CachedDoc {
    doc: Doc,
    record: DocRecord,
    /// Estimated bytes of the loaded document's change history.
    history_bytes: usize,
    /// Edited since it was loaded: Automerge then holds its content
    /// expanded, until the document is next loaded from disk.
    edited: bool,
    /// What the cache counts for this document, until [`DocumentStore::reaccount`].
    accounted_bytes: usize,
}

/// A cached document's Automerge state.
enum Doc {
    /// The genesis document, not copied until something needs it: a new
    /// document is usually created by a change built directly.
    Genesis,
    Loaded(Box<Automerge>),
    /// Created here by this one change on top of the genesis, and not needed
    /// as an Automerge document since: applying the change costs more than
    /// the rest of the write, and write-once documents never need it.
    Created(Box<Change>),
}

impl Doc {
    fn loaded(&mut self) -> Result<&mut Automerge, StoreError> {
        match self {
            Doc::Genesis => *self = Doc::Loaded(Box::new(Genesis::get().doc.clone())),
            Doc::Created(change) => {
                let mut doc = Genesis::get().doc.clone();
                doc.apply_changes([Change::clone(change)])?;
                *self = Doc::Loaded(Box::new(doc));
            }
            Doc::Loaded(_) => {}
        }
        let Doc::Loaded(doc) = self else { unreachable!("loaded above") };
        Ok(doc)
    }
}

impl CachedDoc {
    fn new(doc: Doc, record: DocRecord, history_bytes: usize) -> Self {
        let mut cached = Self { doc, record, history_bytes, edited: false, accounted_bytes: 0 };
        cached.accounted_bytes = cached.estimated_bytes();
        cached
    }

    fn loaded(&mut self) -> Result<&mut Automerge, StoreError> {
        match &self.doc {
            Doc::Genesis => self.history_bytes = CHANGE_BYTES,
            Doc::Created(_) => self.history_bytes = 2 * CHANGE_BYTES,
            Doc::Loaded(_) => {}
        }
        self.doc.loaded()
    }

    /// The document's memory, estimated from what is known without walking it.
    fn estimated_bytes(&self) -> usize {
        let json = self.record.json.len();
        ENTRY_BYTES
            + json
            + match &self.doc {
                Doc::Genesis => 0,
                // The encoded change, and what Automerge parsed from it.
                Doc::Created(change) => 3 * change.raw_bytes().len(),
                Doc::Loaded(_) => {
                    // The operations hold about the content's bytes again.
                    let expanded = if self.edited { EDITED_CONTENT * json } else { 0 };
                    LOADED_DOC_BYTES + json + expanded + self.history_bytes
                }
            }
    }

    fn heads(&self) -> Vec<ChangeHash> {
        match &self.doc {
            Doc::Genesis => Genesis::get().heads.clone(),
            Doc::Loaded(doc) => doc.get_heads(),
            Doc::Created(change) => vec![change.hash()],
        }
    }

    fn is_deleted(&self) -> bool {
        match &self.doc {
            Doc::Loaded(doc) => is_deleted(doc.as_ref()),
            Doc::Genesis | Doc::Created(_) => false,
        }
    }
}

impl Accounted for CachedDoc {
    fn accounted_bytes(&self) -> usize {
        self.accounted_bytes
    }
}

/// The estimated history a new chunk of changes adds: two and a half times
/// the chunk (~125 bytes per change of a few fields), and at least one change.
fn history_of_chunk(chunk_bytes: usize) -> usize {
    (chunk_bytes * 5 / 2).max(CHANGE_BYTES)
}

/// The changes after `before`, as stored in a chunk, and the history they add
/// (estimated from their size before deflating).
fn changes_since(doc: &Automerge, before: &[ChangeHash]) -> (Vec<u8>, usize) {
    let mut changes = doc.get_changes(before);
    let history = history_of_chunk(changes.iter().map(|change| change.raw_bytes().len()).sum());
    (changes.iter_mut().flat_map(stored_change).collect(), history)
}

/// A change as stored in a chunk: deflated if it is long.
fn stored_change(change: &mut Change) -> Vec<u8> {
    if change.raw_bytes().len() > DEFLATE_CHANGES_OVER {
        change.bytes().into_owned()
    } else {
        change.raw_bytes().to_vec()
    }
}

/// The estimated history of a document loaded from disk, whose content is
/// `json`: its changes, counted one by one, and the values its operations
/// still hold besides the content (what was overwritten or deleted), each as
/// large as the content's average value. Counting parses the JSON once,
/// about a twentieth of loading (8 000 fields: 0.6 ms against 12 ms).
fn history_of(doc: &Automerge, json: &str) -> usize {
    let stats = doc.stats();
    let live_values = json::count_values(json).max(1);
    let past_values = (stats.num_ops as usize).saturating_sub(live_values);
    CHANGE_BYTES * stats.num_changes as usize + past_values.saturating_mul(json.len()) / live_values
}

type SharedDoc = Arc<Mutex<CachedDoc>>;

/// A document write, prepared under its document lock, before it gets its
/// change-log position.
struct Prepared {
    ops: Vec<KeyWrite>,
    record: DocRecord,
    json: Option<Arc<str>>,
}

/// One document write waiting for the group commit.
struct PendingWrite {
    /// sled key → new value (`None` removes the key), applied in order.
    ops: Vec<KeyWrite>,
    /// Published on the change feed once applied.
    change: DocumentChange,
    /// Keeps the document cached until the write is in sled: a reload from
    /// disk before that would miss it.
    _pin: SharedDoc,
}

impl DocumentStore {
    /// Opens (or creates) the store in `options.path`.
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let path = options.path.clone();
        let sled_config = sled::Config::new()
            .path(&path)
            .cache_capacity(options.page_cache_bytes.max(MIN_PAGE_CACHE_BYTES) as u64)
            .mode(sled::Mode::HighThroughput)
            // Writes are durable in the journal; sled's own periodic flush
            // bounds what [`Self::meta_set`] may lose.
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS));
        let db = sled_config.open().map_err(|error| match &error {
            // sled holds an exclusive lock on its file while open, and says
            // so only in the message of an `Other` error.
            sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                StoreError::InUse(path.clone())
            }
            _ => StoreError::Open { path: path.clone(), error },
        })?;
        let docs = db.open_tree("documents")?;
        let meta = db.open_tree("meta")?;
        let stored_format = format::check(&path, &meta)?;
        let had_data = !docs.is_empty() || !meta.is_empty();
        let cipher = options.encryption_key.as_ref().map(Cipher::new);
        check_encryption(&path, &meta, had_data, cipher.as_ref())?;
        format::mark(&meta, stored_format, had_data)?;
        let (mut journal, unapplied) = Journal::open(&path.join(JOURNAL_FILE))?;
        for record in &unapplied {
            let writes = record::decode_writes(record)
                .map_err(|e| StoreError::Corrupt { key: "journal".into(), reason: e.to_string() })?;
            writes.iter().try_for_each(|write| write_key(&docs, write))?;
        }
        if !unapplied.is_empty() {
            let removed = pieces::sweep(&docs)?;
            if removed > 0 {
                tracing::info!(removed, "removed pieces of large values left by writes a crash interrupted");
            }
        }
        let log_head = match docs.scan_prefix(record::log_prefix()).keys().next_back() {
            Some(key) => record::log_seq_from_key(&key?).ok_or_else(|| corrupt_key(b"log"))?,
            None => 0,
        };
        let epoch = match meta.get(EPOCH_KEY)? {
            Some(epoch) => String::from_utf8_lossy(&epoch).into_owned(),
            None => {
                let epoch = crate::node::generate_node_id().replace("node-", "");
                meta.insert(EPOCH_KEY, epoch.as_bytes())?;
                epoch
            }
        };
        // What opening wrote (the replayed journal, a new store's markers)
        // is durable before the journal starts over.
        let mut sled_flush = SledFlush::new(db.clone(), &path);
        sled_flush.flush()?;
        if !unapplied.is_empty() {
            journal.restart()?;
        }
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let applied_head = Arc::new(AtomicU64::new(log_head));
        let commit = GroupCommit::start(
            sled_flush,
            journal,
            |writes: &[PendingWrite]| record::encode_writes(writes.iter().flat_map(|write| &write.ops)),
            {
                let (docs, feed, applied_head) = (docs.clone(), feed.clone(), Arc::clone(&applied_head));
                move |writes| apply_group(&docs, &feed, &applied_head, writes)
            },
        );
        Ok(Self {
            inner: Arc::new(Inner {
                commit,
                sled_config,
                path,
                docs,
                meta,
                cipher,
                actor: ActorId::random(),
                max_document_bytes: options.max_document_bytes,
                cache: DocCache::new(options.document_cache_bytes),
                log_assigned: AtomicU64::new(log_head),
                log_head: applied_head,
                epoch,
                feed,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn max_document_bytes(&self) -> usize {
        self.inner.max_document_bytes
    }

    /// Subscribes to every change applied from now on, local or from peers.
    pub fn subscribe(&self) -> broadcast::Receiver<DocumentChange> {
        self.inner.feed.subscribe()
    }

    /// Validates and writes `json_text` as the new content of the document.
    /// Returns whether anything changed.
    pub async fn put_json(&self, collection: &str, doc_id: &str, json_text: &str) -> Result<bool, StoreError> {
        validate::collection(collection)?;
        validate::doc_id(doc_id)?;
        let content = validate::document(json_text, self.inner.max_document_bytes, "json_data")?;
        self.put_map(DocKey::new(collection, doc_id), &content).await
    }

    /// Writes an already-parsed JSON object as the new content of the document.
    pub async fn put_map(&self, key: DocKey, content: &Map<String, Json>) -> Result<bool, StoreError> {
        validate::collection(&key.collection)?;
        validate::doc_id(&key.doc_id)?;
        // Reconciling makes the content exactly `content`: no need to read it back.
        let json = serde_json::to_string(content).expect("JSON maps serialise");
        self.change(&key, Some(json), Some(content), |doc, record| {
            let mut tx = doc.transaction();
            let data = data_object(&mut tx)?;
            // The record holds the current content of a live document: only
            // fields that differ from it need reading from the document.
            let current = (record.chunk_count > 0 && !record.deleted)
                .then(|| serde_json::from_str::<Map<String, Json>>(&record.json).ok())
                .flatten();
            match current {
                Some(current) => json::reconcile_map_from(&mut tx, &data, &current, content)?,
                None => json::reconcile_map(&mut tx, &data, content)?,
            }
            // Reviving a deleted document, or creating one: the explicit flag
            // also makes creating an empty document `{}` a real change that
            // is persisted and synced (reconciling `{}` into the genesis
            // document produces no other operation).
            if !matches!(tx.get(ROOT, DELETED_KEY)?, Some((Value::Scalar(flag), _)) if *flag == ScalarValue::Boolean(false)) {
                tx.put(ROOT, DELETED_KEY, false)?;
            }
            Ok(tx.commit().0.is_some())
        })
        .await
    }

    /// Tombstones a document (a no-op when it does not exist). Returns whether it existed.
    pub async fn delete(&self, collection: &str, doc_id: &str) -> Result<bool, StoreError> {
        validate::collection(collection)?;
        validate::doc_id(doc_id)?;
        let key = DocKey::new(collection, doc_id);
        match self.record(&key)? {
            Some(record) if !record.deleted => {}
            _ => return Ok(false),
        }
        self.change(&key, None, None, |doc, _| {
            let mut tx = doc.transaction();
            if is_deleted(&tx) {
                return Ok(false);
            }
            // Clearing the content keeps deleted data from lingering in the
            // current state; the tombstone makes the delete sync and stick.
            let data = data_object(&mut tx)?;
            json::reconcile_map(&mut tx, &data, &Map::new())?;
            tx.put(ROOT, DELETED_KEY, true)?;
            Ok(tx.commit().0.is_some())
        })
        .await
    }

    /// The document's current JSON, or `None` if it does not exist or is deleted.
    pub fn get(&self, collection: &str, doc_id: &str) -> Result<Option<String>, StoreError> {
        validate::collection(collection)?;
        validate::doc_id(doc_id)?;
        Ok(self.record(&DocKey::new(collection, doc_id))?.filter(|r| !r.deleted).map(|r| r.json))
    }

    /// Ids of the live documents of a collection, in byte order.
    pub fn list(&self, collection: &str) -> Result<Vec<String>, StoreError> {
        // Records carry the JSON either way, so this costs what list_json costs.
        Ok(self.list_json(collection)?.into_iter().map(|(id, _)| id).collect())
    }

    /// Live documents of a collection with their JSON.
    pub fn list_json(&self, collection: &str) -> Result<Vec<(String, String)>, StoreError> {
        validate::collection(collection)?;
        let mut prefix = record::record_prefix().to_vec();
        prefix.extend_from_slice(collection.as_bytes());
        prefix.push(0);
        let mut docs = Vec::new();
        for entry in self.inner.docs.scan_prefix(&prefix) {
            let Some((key, record)) = self.scanned_record(entry)? else { continue };
            if !record.deleted {
                docs.push((key.doc_id, record.json));
            }
        }
        Ok(docs)
    }

    /// Every document (tombstones included) with its heads, in key order;
    /// cheap: reads records only, never loads Automerge documents.
    pub fn all_heads(&self) -> impl Iterator<Item = Result<(DocKey, Vec<ChangeHash>), StoreError>> + '_ {
        self.all_heads_with_log_seq().map(|entry| entry.map(|(key, heads, _)| (key, heads)))
    }

    /// Every document (tombstones included) with its heads and change-log
    /// position, in key order; reads records only. The mesh builds its
    /// catch-up digest from this.
    pub fn all_heads_with_log_seq(
        &self,
    ) -> impl Iterator<Item = Result<(DocKey, Vec<ChangeHash>, u64), StoreError>> + '_ {
        self.inner.docs.scan_prefix(record::record_prefix()).filter_map(move |entry| {
            let scanned = self.scanned_record(entry).transpose()?;
            Some(scanned.map(|(key, record)| (key, record.heads, record.log_seq)))
        })
    }

    /// The random id of this store instance (see [`EPOCH_KEY`]).
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// The highest change-log sequence number written so far.
    pub fn log_head(&self) -> u64 {
        self.inner.log_head.load(Ordering::Acquire)
    }

    /// Up to `limit` change-log entries after `after`, in sequence order.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, DocKey)>, StoreError> {
        let start = record::log_key(after.saturating_add(1));
        let end = record::log_key(u64::MAX);
        let mut entries = Vec::new();
        for entry in self.inner.docs.range(start..=end).take(limit) {
            let (key, value) = entry?;
            let seq = record::log_seq_from_key(&key).ok_or_else(|| corrupt_key(&key))?;
            let doc = DocKey::from_bytes(&value).ok_or_else(|| corrupt_key(&value))?;
            entries.push((seq, doc));
        }
        Ok(entries)
    }

    /// The document's heads, if it exists (tombstoned or not), including
    /// changes still queued for the group commit.
    pub fn heads(&self, key: &DocKey) -> Result<Option<Vec<ChangeHash>>, StoreError> {
        if let Some(cached) = self.inner.cache.get(key) {
            let cached = cached.lock().expect("document lock");
            // A cached document without a record is a genesis no write has touched.
            if cached.record.chunk_count > 0 {
                return Ok(Some(cached.record.heads.clone()));
            }
        }
        Ok(self.record(key)?.map(|r| r.heads))
    }

    /// The next Automerge sync message for a peer, if any is due.
    pub fn generate_sync_message(
        &self,
        key: &DocKey,
        state: &mut sync::State,
    ) -> Result<Option<sync::Message>, StoreError> {
        self.generate_sync_message_primed(key, state, |_, _| {})
    }

    /// Like [`Self::generate_sync_message`], but first lets `prime` adjust
    /// `state` with what the peer is believed to hold, given the document.
    pub fn generate_sync_message_primed(
        &self,
        key: &DocKey,
        state: &mut sync::State,
        prime: impl FnOnce(&Automerge, &mut sync::State),
    ) -> Result<Option<sync::Message>, StoreError> {
        // A document we never had is its genesis, like everywhere else.
        let shared = self.load_or_create(key)?;
        let mut cached = shared.lock().expect("document lock");
        let message = cached.loaded().map(|doc| {
            prime(doc, state);
            doc.generate_sync_message(state)
        });
        self.reaccount(&mut cached);
        message
    }

    /// Applies a peer's sync message, queueing any new changes to be
    /// persisted and published by the next [`Self::flush`], which callers
    /// must await (before acknowledging).
    pub fn receive_sync_message(
        &self,
        key: &DocKey,
        state: &mut sync::State,
        message: sync::Message,
        peer: &Arc<str>,
    ) -> Result<bool, StoreError> {
        validate::collection(&key.collection)?;
        validate::doc_id(&key.doc_id)?;
        self.apply(key, Origin::Peer(Arc::clone(peer)), None, None, |doc, _| {
            let before = doc.get_heads();
            doc.receive_sync_message(state, message)?;
            Ok(doc.get_heads() != before)
        })
    }

    /// Reads a node-level value (node id, known peers, ...).
    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.inner.meta.get(name.as_bytes())? {
            Some(sealed) => Ok(Some(self.open_value(name, &sealed)?)),
            None => Ok(None),
        }
    }

    /// Durably writes a node-level value.
    pub async fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta_set(name, value)?;
        self.inner.commit.checkpoint().await?;
        Ok(())
    }

    /// Writes a node-level value that becomes durable with sled's next flush
    /// (its own, every [`SLED_FLUSH_EVERY_MS`], or a checkpoint): for values whose
    /// loss in a crash costs only time, like sync cursors. Documents written
    /// before it are never less durable than it is: they are journaled, and
    /// sled persists its log in order.
    pub fn meta_set(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.meta.insert(name.as_bytes(), self.seal_value(value))?;
        Ok(())
    }

    /// The node id: `configured` if given, else the persisted one, else a new
    /// random id that is persisted for the next start.
    pub async fn node_id(&self, configured: Option<&str>) -> Result<String, StoreError> {
        if let Some(id) = configured {
            return Ok(id.to_owned());
        }
        if let Some(id) = self.meta_get("node_id")? {
            return String::from_utf8(id)
                .map_err(|_| StoreError::Corrupt { key: "meta/node_id".into(), reason: "not UTF-8".into() });
        }
        let id = crate::node::generate_node_id();
        self.meta_put("node_id", id.as_bytes()).await?;
        Ok(id)
    }

    /// The error sled failed with for good, if it did. An I/O error of its
    /// background log writer (a full disk) is kept and returned by every
    /// later write, whatever the disk does next, until sled is reopened: the
    /// store is then only good for a restart, which recovers every
    /// acknowledged write from the journal. (`global_error` is sled's only
    /// view of that state.)
    pub fn storage_failure(&self) -> Option<String> {
        self.inner.sled_config.global_error().err().map(|e| e.to_string())
    }

    /// How long the disk has been taking to make the writes in progress
    /// durable, if any are being committed: a disk that stopped answering
    /// (a hung `fdatasync`) shows as a time that only grows.
    pub fn commit_running_for(&self) -> Option<Duration> {
        self.inner.commit.attempt_running_for()
    }

    /// How many documents are loaded in memory, and their estimated bytes.
    pub fn cache_usage(&self) -> CacheUsage {
        self.inner.cache.usage()
    }

    /// Waits until every write queued so far is committed: on disk, in
    /// sled and published.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.commit.durable().await?;
        Ok(())
    }

    /// Runs a local edit on the document (creating it if needed) and waits
    /// until it is durable. Returns whether anything changed.
    /// `json` is the content the edit leaves, when the caller knows it.
    async fn change(
        &self,
        key: &DocKey,
        json: Option<String>,
        create: Option<&Map<String, Json>>,
        edit: impl FnOnce(&mut Automerge, &DocRecord) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        // In progress from before the edit, so that a concurrent write's
        // ticket knows it is not alone.
        let _writing = self.inner.commit.begin();
        let changed = self.apply(key, Origin::Local, json, create, |doc, record| {
            doc.set_actor(self.inner.actor.clone());
            edit(doc, record)
        })?;
        // Also when nothing changed: the document may already hold this
        // content through a write that is queued, or being retried, and not
        // yet durable; acknowledging must wait for it.
        self.inner.commit.durable().await?;
        Ok(changed)
    }

    /// Loads or creates the document, runs `edit` under its lock, and when the
    /// heads moved, queues the new changes for the group commit, which
    /// persists them atomically and then publishes them. Not yet durable:
    /// callers wait for [`GroupCommit::durable`] before acknowledging.
    /// `json` is the content after the edit if known; otherwise it is read
    /// back from the document. A document nothing was ever written to is
    /// instead created with `create`, if given, by building the change that
    /// `edit` would make directly (a transaction costs ~5 µs per operation).
    fn apply(
        &self,
        key: &DocKey,
        origin: Origin,
        json: Option<String>,
        create: Option<&Map<String, Json>>,
        edit: impl FnOnce(&mut Automerge, &DocRecord) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let shared = self.load_or_create(key)?;
        let mut cached = shared.lock().expect("document lock");
        let applied = self.apply_locked(key, &shared, &mut cached, origin, json, create, edit);
        self.reaccount(&mut cached);
        applied
    }

    /// [`Self::apply`] on the locked document.
    #[allow(clippy::too_many_arguments)]
    fn apply_locked(
        &self,
        key: &DocKey,
        shared: &SharedDoc,
        cached: &mut CachedDoc,
        origin: Origin,
        json: Option<String>,
        create: Option<&Map<String, Json>>,
        edit: impl FnOnce(&mut Automerge, &DocRecord) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let before = cached.heads();
        let chunk = match create {
            // Nothing was ever written to the document, here or by a peer.
            Some(content) if before == Genesis::get().heads => {
                let mut change = Genesis::get().creation_change(&self.inner.actor, content);
                let chunk = stored_change(&mut change);
                cached.doc = Doc::Created(Box::new(change));
                Some(chunk)
            }
            _ => {
                // Through the cached document, which counts a new history.
                cached.loaded()?;
                let CachedDoc { doc, record, .. } = &mut *cached;
                if !edit(doc.loaded()?, record)? {
                    return Ok(false);
                }
                cached.edited = true;
                None
            }
        };
        let received = matches!(origin, Origin::Peer(_));
        let prepared = match self.prepare(key, cached, &before, chunk, json, received) {
            Ok(prepared) => prepared,
            Err(err) => {
                // Undo the edit in memory rather than reloading from disk:
                // queued writes of this document may not be in sled yet.
                let undone = cached.loaded()?.fork_at(&before)?;
                cached.doc = Doc::Loaded(Box::new(undone));
                return Err(err);
            }
        };
        self.inner.commit.submit(|| {
            let log_seq = self.inner.log_assigned.fetch_add(1, Ordering::Relaxed) + 1;
            let (write, record) = self.finish(key, prepared, log_seq, origin, Arc::clone(shared));
            cached.record = record;
            write
        });
        Ok(true)
    }

    /// The chunk and record changes that persist `cached.doc`'s changes since
    /// `before` (encoded in `chunk` if the caller has them, `received` from a
    /// peer if not made here), with the updated record and the JSON to publish.
    fn prepare(
        &self,
        key: &DocKey,
        cached: &mut CachedDoc,
        before: &[ChangeHash],
        chunk: Option<Vec<u8>>,
        json: Option<String>,
        received: bool,
    ) -> Result<Prepared, StoreError> {
        let mut record = cached.record.clone();
        let mut ops = Vec::with_capacity(4);
        // Chunks load on top of the genesis, so a young document is just its
        // changes; it is compacted into one snapshot once they outgrow it.
        let limit = record.snapshot_bytes.max(COMPACT_AFTER_BYTES);
        let created = chunk.is_some();
        let mut reload = None;
        let increment = match chunk {
            _ if record.incremental_bytes > limit => None,
            Some(chunk) => {
                let history = history_of_chunk(chunk.len());
                Some((chunk, history))
            }
            None => Some(changes_since(cached.loaded()?, before)),
        };
        match increment {
            // A change that outgrows the snapshot by itself is compacted at
            // once: loading it would cost Automerge 0.12 memory quadratic in
            // the fields it overwrites (`json.rs`). A new document's first
            // change overwrites nothing.
            Some((increment, history)) if created || increment.len() as u64 <= limit => {
                cached.history_bytes += history;
                record.incremental_bytes += increment.len() as u64;
                record.chunk_count += 1;
                ops.push((key.chunk_key(record.next_seq), Some(self.seal_value(&increment))));
            }
            increment => {
                // Chunks are numbered contiguously up to `next_seq`.
                for seq in record.next_seq - u64::from(record.chunk_count)..record.next_seq {
                    ops.push((key.chunk_key(seq), None));
                }
                let snapshot = cached.loaded()?.save();
                record.snapshot_bytes = snapshot.len() as u64;
                record.incremental_bytes = 0;
                record.chunk_count = 1;
                ops.push((key.chunk_key(record.next_seq), Some(self.seal_value(&snapshot))));
                if received && increment.is_some() {
                    // Applying the peer's change cost that quadratic memory
                    // (Automerge applies a change's operations in key order,
                    // whatever order they were made in) and keeps it until
                    // the document's next edit; the snapshot loads without it.
                    reload = Some(snapshot);
                } else {
                    // This write's own changes, as far as known without encoding them.
                    cached.history_bytes += increment.map_or(CHANGE_BYTES, |(_, history)| history);
                }
            }
        }
        record.next_seq += 1;
        record.heads = cached.heads();
        record.deleted = cached.is_deleted();
        record.json = if record.deleted {
            String::new()
        } else if let Some(json) = json {
            json
        } else {
            let doc = cached.loaded()?;
            let content = match doc.get(ROOT, DATA_KEY)? {
                Some((Value::Object(ObjType::Map), data)) => json::materialize_map(doc, &data)?,
                _ => Map::new(),
            };
            serde_json::to_string(&content).expect("JSON maps serialise")
        };
        if let Some(snapshot) = reload {
            let reloaded = Automerge::load(&snapshot)?;
            cached.history_bytes = history_of(&reloaded, &record.json);
            cached.doc = Doc::Loaded(Box::new(reloaded));
            cached.edited = false;
        }
        let json = (!record.deleted).then(|| Arc::from(record.json.as_str()));
        Ok(Prepared { ops, record, json })
    }

    /// Completes a prepared write with its change-log position: moves the
    /// document's log entry to `log_seq` and stores the record.
    fn finish(
        &self,
        key: &DocKey,
        prepared: Prepared,
        log_seq: u64,
        origin: Origin,
        pin: SharedDoc,
    ) -> (PendingWrite, DocRecord) {
        let Prepared { mut ops, mut record, json } = prepared;
        if record.log_seq != 0 {
            ops.push((record::log_key(record.log_seq).to_vec(), None));
        }
        ops.push((record::log_key(log_seq).to_vec(), Some(key.to_bytes())));
        record.log_seq = log_seq;
        ops.push((key.record_key(), Some(self.seal_value(&record.encode()))));
        let change = DocumentChange { key: key.clone(), json, heads: record.heads.clone(), log_seq, origin };
        (PendingWrite { ops, change, _pin: pin }, record)
    }

    fn record(&self, key: &DocKey) -> Result<Option<DocRecord>, StoreError> {
        let sled_key = key.record_key();
        let Some(stored) = self.inner.docs.get(&sled_key)? else { return Ok(None) };
        match self.resolve(key, &sled_key, stored)? {
            Some(value) => Ok(Some(self.decode_record(key, &value)?)),
            None => Ok(None),
        }
    }

    /// A record met in a scan of record keys; `None` when its document was
    /// removed while its pieces were read.
    fn scanned_record(
        &self,
        entry: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<Option<(DocKey, DocRecord)>, StoreError> {
        let (sled_key, stored) = entry?;
        let key = DocKey::from_record_key(&sled_key).ok_or_else(|| corrupt_key(&sled_key))?;
        let Some(value) = self.resolve(&key, &sled_key, stored)? else { return Ok(None) };
        let record = self.decode_record(&key, &value)?;
        Ok(Some((key, record)))
    }

    /// The whole stored value of `sled_key`, a key of `key`'s (see [`pieces`]).
    fn resolve(&self, key: &DocKey, sled_key: &[u8], stored: sled::IVec) -> Result<Option<sled::IVec>, StoreError> {
        pieces::resolve(&self.inner.docs, sled_key, stored).map_err(|e| match e {
            pieces::PieceError::Sled(e) => StoreError::Sled(e),
            missing => StoreError::Corrupt { key: key.to_string(), reason: missing.to_string() },
        })
    }

    fn decode_record(&self, key: &DocKey, value: &[u8]) -> Result<DocRecord, StoreError> {
        let plain = self.open_value(&key.to_string(), value)?;
        DocRecord::decode(&plain).map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })
    }

    /// The cached document, else the stored one, else a new genesis document.
    fn load_or_create(&self, key: &DocKey) -> Result<SharedDoc, StoreError> {
        // Loading under the cache lock: a document with queued writes is
        // always cached (they pin it), so a miss here means sled is current.
        self.inner.cache.get_or_load(key, || match self.record(key)? {
            Some(record) => {
                let doc = self.read_chunks(key)?;
                let history = history_of(&doc, &record.json);
                Ok(CachedDoc::new(Doc::Loaded(Box::new(doc)), record, history))
            }
            None => Ok(CachedDoc::new(Doc::Genesis, DocRecord::default(), 0)),
        })
    }

    /// Tells the cache what the document costs now; called with its lock held.
    fn reaccount(&self, cached: &mut CachedDoc) {
        let now = cached.estimated_bytes();
        self.inner.cache.reaccount(cached.accounted_bytes, now);
        cached.accounted_bytes = now;
    }

    fn read_chunks(&self, key: &DocKey) -> Result<Automerge, StoreError> {
        let mut doc = Genesis::get().doc.clone();
        for entry in self.inner.docs.scan_prefix(key.chunk_prefix()) {
            let (sled_key, stored) = entry?;
            // A document is read from disk only while no write of it is
            // pending (pending writes keep it cached), so its chunks stay put.
            let stored = self.resolve(key, &sled_key, stored)?.ok_or_else(|| corrupt_key(&sled_key))?;
            let chunk = self.open_value(&key.to_string(), &stored)?;
            doc.load_incremental(&chunk).map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                reason: format!("unreadable change log: {e}"),
            })?;
        }
        Ok(doc)
    }

    fn seal_value(&self, plain: &[u8]) -> Vec<u8> {
        match &self.inner.cipher {
            Some(cipher) => cipher.seal(plain),
            None => plain.to_vec(),
        }
    }

    fn open_value(&self, what: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.inner.cipher {
            Some(cipher) => {
                cipher.open(stored).map_err(|e| StoreError::Corrupt { key: what.to_owned(), reason: e.to_string() })
            }
            None => Ok(stored.to_vec()),
        }
    }
}

/// Applies a group of journaled writes to sled, advances the applied log
/// head and publishes the changes in log order, taking them out of `writes`.
/// On failure `writes` is left whole for the group commit to retry: the
/// writes are already visible in memory and cannot be taken back.
fn apply_group(
    docs: &sled::Tree,
    feed: &broadcast::Sender<DocumentChange>,
    log_head: &AtomicU64,
    writes: &mut Vec<PendingWrite>,
) -> Result<(), String> {
    for write in writes.iter().flat_map(|write| &write.ops) {
        write_key(docs, write).map_err(|e| format!("writing to the document store: {e}"))?;
    }
    if let Some(last) = writes.last() {
        log_head.store(last.change.log_seq, Ordering::Release);
    }
    for write in writes.drain(..) {
        let _ = feed.send(write.change);
    }
    Ok(())
}

fn write_key(docs: &sled::Tree, (key, value): &KeyWrite) -> sled::Result<()> {
    pieces::write(docs, key, value.as_deref())
}

/// Every document starts from the same genesis change, so the content map
/// has the same identity on every node and independently created copies of
/// a document merge field by field instead of one replacing the other.
struct Genesis {
    doc: Automerge,
    heads: Vec<ChangeHash>,
    /// The content map, as the genesis change's first operation.
    data: legacy::ObjectId,
}

impl Genesis {
    /// Built once: new documents are created under the cache lock.
    fn get() -> &'static Self {
        static GENESIS: LazyLock<Genesis> = LazyLock::new(|| {
            let actor = ActorId::from(&[0u8; 16]);
            let mut doc = Automerge::new().with_actor(actor.clone());
            let mut tx = doc.transaction();
            tx.put_object(ROOT, DATA_KEY, ObjType::Map).expect("fresh document accepts the genesis map");
            tx.commit_with(CommitOptions::default().with_time(0));
            let heads = doc.get_heads();
            Genesis { doc, heads, data: legacy::ObjectId::Id(legacy::OpId(1, actor)) }
        });
        &GENESIS
    }

    /// The change `put_map` makes to the genesis document when `actor`
    /// writes `content`, built directly: the same operations, ids and hash
    /// as the transaction (tested), at a fraction of its cost.
    fn creation_change(&self, actor: &ActorId, content: &Map<String, Json>) -> Change {
        let start_op = 2; // after the genesis change's one operation
        let mut operations = json::fill_empty_map_ops(self.data.clone(), content, actor, start_op);
        operations.push(legacy::Op {
            action: legacy::OpType::Put(ScalarValue::Boolean(false)),
            obj: legacy::ObjectId::Root,
            key: legacy::Key::Map(DELETED_KEY.into()),
            pred: legacy::SortedVec::new(),
            insert: false,
        });
        Change::from(ExpandedChange {
            operations,
            actor_id: actor.clone(),
            hash: None,
            seq: 1,
            start_op: NonZeroU64::new(start_op).expect("non-zero"),
            time: 0,
            message: None,
            deps: self.heads.clone(),
            extra_bytes: Vec::new(),
            author: None,
        })
    }
}

fn data_object<T: Transactable>(tx: &mut T) -> Result<automerge::ObjId, StoreError> {
    match tx.get(ROOT, DATA_KEY)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => Ok(tx.put_object(ROOT, DATA_KEY, ObjType::Map)?),
    }
}

fn is_deleted<R: ReadDoc>(doc: &R) -> bool {
    matches!(doc.get(ROOT, DELETED_KEY), Ok(Some((Value::Scalar(s), _))) if *s == ScalarValue::Boolean(true))
}

fn corrupt_key(key: &[u8]) -> StoreError {
    StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: "malformed key".into() }
}

/// `had_data`: the store existed before this open (a new one gets its marker).
fn check_encryption(path: &Path, meta: &sled::Tree, had_data: bool, cipher: Option<&Cipher>) -> Result<(), StoreError> {
    match (meta.get(ENCRYPTION_MARKER)?, cipher) {
        (None, _) if had_data => {
            Err(StoreError::Corrupt { key: "meta/encryption".into(), reason: "marker missing".into() })
        }
        (None, Some(cipher)) => {
            meta.insert(ENCRYPTION_MARKER, cipher.seal(KEY_CHECK))?;
            Ok(())
        }
        (None, None) => {
            meta.insert(ENCRYPTION_MARKER, PLAINTEXT_MARKER)?;
            Ok(())
        }
        (Some(marker), None) if marker.as_ref() == PLAINTEXT_MARKER => Ok(()),
        (Some(_), None) => Err(StoreError::KeyMissing(path.to_owned())),
        (Some(marker), Some(_)) if marker.as_ref() == PLAINTEXT_MARKER => {
            Err(StoreError::PlaintextWithKey(path.to_owned()))
        }
        (Some(marker), Some(cipher)) => match cipher.open(&marker) {
            Ok(check) if check == KEY_CHECK => Ok(()),
            _ => Err(StoreError::WrongKey(path.to_owned())),
        },
    }
}

/// A sled tree in a new temporary directory, which lasts as long as the
/// returned guard: for the unit tests of the store's parts.
#[cfg(test)]
fn temp_tree() -> (tempfile::TempDir, sled::Tree) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let tree = db.open_tree("tree").unwrap();
    (dir, tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `put_map` did before the direct path: a transaction that
    /// reconciles `content` into the genesis document.
    fn transaction_change(actor: &ActorId, content: &Map<String, Json>) -> (Automerge, Change) {
        let mut doc = Genesis::get().doc.clone().with_actor(actor.clone());
        let mut tx = doc.transaction();
        let data = data_object(&mut tx).expect("genesis has a content map");
        json::reconcile_map(&mut tx, &data, content).expect("reconcile");
        tx.put(ROOT, DELETED_KEY, false).expect("tombstone flag");
        tx.commit();
        let change = doc.get_last_local_change().expect("a change").clone();
        (doc, change)
    }

    #[test]
    fn reconciling_from_the_known_content_makes_the_same_operations() {
        let cases = [
            (r#"{"a":1,"b":"x","c":[1,2],"d":{"e":1}}"#, r#"{"a":2,"b":"x","c":[1,3],"d":{"e":1,"f":2}}"#),
            (r#"{"a":1,"b":"x","c":[1,2],"d":{"e":1}}"#, r#"{"a":1}"#),
            (r#"{"a":{"x":1},"b":5,"c":"s"}"#, r#"{"a":5,"b":[1],"c":{"x":null}}"#),
            (
                r#"{"z":0.0,"n":5,"f":1.5,"big":18446744073709551615}"#,
                r#"{"z":-0.0,"n":5.0,"f":1.5,"big":18446744073709551615}"#,
            ),
            (
                r#"{"same":{"deep":[{"x":[1,2.5,"s",null,true]}]}}"#,
                r#"{"same":{"deep":[{"x":[1,2.5,"s",null,true]}]}}"#,
            ),
            (r#"{}"#, r#"{"new":{"list":[]}}"#),
        ];
        for (current, target) in cases {
            let current: Map<String, Json> = serde_json::from_str(current).unwrap();
            let target: Map<String, Json> = serde_json::from_str(target).unwrap();
            let (base, _) = transaction_change(&ActorId::random(), &current);
            // What the record holds: the content as written.
            let recorded: Map<String, Json> = serde_json::from_str(&serde_json::to_string(&current).unwrap()).unwrap();
            let edit = |known: bool| {
                let mut doc = base.clone();
                let mut tx = doc.transaction();
                let data = data_object(&mut tx).unwrap();
                if known {
                    json::reconcile_map_from(&mut tx, &data, &recorded, &target).unwrap();
                } else {
                    json::reconcile_map(&mut tx, &data, &target).unwrap();
                }
                let ops = tx.commit().0.map_or(0, |hash| doc.get_change_by_hash(&hash).unwrap().len());
                (ops, json::materialize_map(&doc, &data).unwrap())
            };
            let (ops, content) = edit(true);
            assert_eq!((ops, &content), (edit(false).0, &target), "{current:?} -> {target:?}");
        }
    }

    #[test]
    fn the_direct_creation_change_is_the_transactions_change() {
        let documents = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"type":"platform","name":"unit-1","lat":52.1,"alt":30.0,"caps":["eo","ir","relay"],"n":null,"ok":true}"#,
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"zero":-0.0,"f":1e300,"s":"ünï \u0000 code"}"#,
            r#"{"nested":{"deeper":{"list":[[1,2],[],[{"x":[{}]}]]},"empty":{}},"":"empty key","z":[null,false]}"#,
            r#"{"list":[{"a":1,"b":[1,{"c":2}]},[3,[4,[5]]],"tail"]}"#,
        ];
        let actor = ActorId::random();
        for text in documents {
            let content: Map<String, Json> = serde_json::from_str(text).expect("test JSON");
            let (via_transaction, expected) = transaction_change(&actor, &content);
            let direct = Genesis::get().creation_change(&actor, &content);
            assert_eq!(direct.hash(), expected.hash(), "{text}");
            assert_eq!(direct.raw_bytes(), expected.raw_bytes(), "{text}");

            let mut doc = Genesis::get().doc.clone();
            doc.apply_changes([direct]).expect("the direct change applies");
            assert_eq!(doc.get_heads(), via_transaction.get_heads(), "{text}");
            let (_, data) = doc.get(ROOT, DATA_KEY).expect("read").expect("content map");
            let read_back = json::materialize_map(&doc, &data).expect("materialize");
            assert_eq!(
                serde_json::to_string(&read_back).unwrap(),
                serde_json::to_string(&content).unwrap(),
                "{text}: the content read back is the content written"
            );
        }
    }
}
