//! The document store on disk, simulating two nodes: field-level merge of
//! concurrent edits exchanged with the Automerge sync protocol, the semantics
//! of a delete concurrent with an update, reopening, completing a write a
//! crash cut short, history growth, a cache smaller than the documents, and
//! large documents, which reach sled in pieces and their changes deflated.

use std::sync::Arc;

use automerge::sync;
use peat_sidecar::store::{DocKey, DocumentStore, Origin, StoreOptions};
use serde_json::{Value, json};

mod support;

fn open(dir: &std::path::Path) -> DocumentStore {
    support::open_store(&StoreOptions::new(dir))
}

fn get(store: &DocumentStore, key: &DocKey) -> Option<Value> {
    store.get(&key.collection, &key.doc_id).unwrap().map(|json| serde_json::from_str(&json).unwrap())
}

async fn put(store: &DocumentStore, key: &DocKey, value: Value) -> bool {
    store.put_json(&key.collection, &key.doc_id, &value.to_string()).await.unwrap()
}

/// Runs the Automerge sync protocol for one document between two stores
/// until neither has anything left to send; returns the messages exchanged.
async fn sync_pair(a: &DocumentStore, b: &DocumentStore, key: &DocKey) -> usize {
    let (peer_a, peer_b): (Arc<str>, Arc<str>) = (Arc::from("node-a"), Arc::from("node-b"));
    let (mut a_to_b, mut b_to_a) = (sync::State::new(), sync::State::new());
    let mut messages = 0;
    for _ in 0..32 {
        let from_a = a.generate_sync_message(key, &mut a_to_b).unwrap();
        let from_b = b.generate_sync_message(key, &mut b_to_a).unwrap();
        if from_a.is_none() && from_b.is_none() {
            // Received changes are durable only after a flush.
            a.flush().await.unwrap();
            b.flush().await.unwrap();
            return messages;
        }
        if let Some(message) = from_a {
            messages += 1;
            b.receive_sync_message(key, &mut b_to_a, message, &peer_a).unwrap();
        }
        if let Some(message) = from_b {
            messages += 1;
            a.receive_sync_message(key, &mut a_to_b, message, &peer_b).unwrap();
        }
    }
    panic!("sync did not converge in 32 rounds");
}

/// Both stores hold the same document (same heads, same JSON).
fn assert_converged(a: &DocumentStore, b: &DocumentStore, key: &DocKey) {
    assert_eq!(a.heads(key).unwrap(), b.heads(key).unwrap(), "heads differ");
    assert_eq!(get(a, key), get(b, key));
}

#[tokio::test]
async fn concurrent_edits_of_different_fields_of_a_new_document_merge_field_by_field() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let key = DocKey::new("platforms", "p1");
    // Neither node has seen the other's copy: both create the document.
    assert!(put(&a, &key, json!({"lat": 1.5, "status": "ready"})).await);
    assert!(put(&b, &key, json!({"battery": 80, "crew": ["x"]})).await);
    sync_pair(&a, &b, &key).await;
    let merged = json!({"lat": 1.5, "status": "ready", "battery": 80, "crew": ["x"]});
    assert_eq!(get(&a, &key), Some(merged.clone()));
    assert_converged(&a, &b, &key);

    // The merged state is on disk on both nodes.
    let heads = a.heads(&key).unwrap();
    drop((a, b));
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    assert_eq!(get(&a, &key), Some(merged.clone()));
    assert_eq!(get(&b, &key), Some(merged));
    assert_eq!(a.heads(&key).unwrap(), heads);
    assert_converged(&a, &b, &key);
}

#[tokio::test]
async fn concurrent_edits_of_different_fields_of_a_shared_document_merge_field_by_field() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let key = DocKey::new("tracks", "t1");
    let base = json!({"pos": {"lat": 0.0, "lon": 0.0}, "speed": 1, "label": "unknown", "list": [1, 2]});
    put(&a, &key, base.clone()).await;
    sync_pair(&a, &b, &key).await;
    assert_eq!(get(&b, &key), Some(base));

    // Each node writes the whole document, changing different fields; the
    // store turns each write into operations on the changed fields only.
    let mut remote_changes = a.subscribe();
    put(&a, &key, json!({"pos": {"lat": 5.0, "lon": 0.0}, "speed": 1, "label": "unknown", "list": [1, 2]})).await;
    put(&b, &key, json!({"pos": {"lat": 0.0, "lon": 7.0}, "speed": 1, "label": "truck", "list": [1, 2, 3]})).await;
    sync_pair(&a, &b, &key).await;
    let merged = json!({"pos": {"lat": 5.0, "lon": 7.0}, "speed": 1, "label": "truck", "list": [1, 2, 3]});
    assert_eq!(get(&a, &key), Some(merged.clone()));
    assert_converged(&a, &b, &key);

    // The change feed reports the local write, then the merge from the peer.
    let local = remote_changes.recv().await.unwrap();
    assert_eq!(local.origin, Origin::Local);
    let remote = remote_changes.recv().await.unwrap();
    assert_eq!(remote.origin, Origin::Peer(Arc::from("node-b")));
    assert_eq!(remote.json.as_deref().map(|j| serde_json::from_str::<Value>(j).unwrap()), Some(merged));
}

#[tokio::test]
async fn a_put_of_unchanged_content_is_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let key = DocKey::new("c", "d");
    assert!(put(&store, &key, json!({"a": 1, "b": [1, {"c": "x"}]})).await);
    let heads = store.heads(&key).unwrap();
    assert!(!put(&store, &key, json!({"a": 1, "b": [1, {"c": "x"}]})).await);
    assert_eq!(store.heads(&key).unwrap(), heads);
    // An empty document is a document.
    let empty = DocKey::new("c", "empty");
    assert!(put(&store, &empty, json!({})).await);
    assert_eq!(get(&store, &empty), Some(json!({})));
    assert_eq!(store.list("c").unwrap(), ["d", "empty"]);
}

/// Documented semantics (docs/ARCHITECTURE.md, "Store invariants"): a delete concurrent
/// with an update wins; the document stays deleted on every node until a
/// later Put revives it, and the revived document holds exactly that Put's
/// content (nothing of the concurrent update leaks back).
#[tokio::test]
async fn a_delete_concurrent_with_an_update_wins_until_a_later_put_revives() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let key = DocKey::new("cells", "c1");
    put(&a, &key, json!({"name": "north", "count": 1})).await;
    sync_pair(&a, &b, &key).await;

    assert!(a.delete("cells", "c1").await.unwrap());
    put(&b, &key, json!({"name": "north", "count": 2, "extra": true})).await;
    sync_pair(&a, &b, &key).await;
    assert_eq!(get(&a, &key), None);
    assert_eq!(get(&b, &key), None);
    assert!(a.list("cells").unwrap().is_empty());
    assert!(b.list("cells").unwrap().is_empty());
    assert_converged(&a, &b, &key);

    // Deleting again is a no-op; a later Put on either node revives.
    assert!(!b.delete("cells", "c1").await.unwrap());
    put(&b, &key, json!({"name": "south"})).await;
    sync_pair(&a, &b, &key).await;
    assert_eq!(get(&a, &key), Some(json!({"name": "south"})));
    assert_converged(&a, &b, &key);

    // The tombstone survives a restart and syncs to a node that never saw the document.
    a.delete("cells", "c1").await.unwrap();
    drop(a);
    let a = open(dir_a.path());
    assert_eq!(get(&a, &key), None);
    let dir_c = tempfile::tempdir().unwrap();
    let c = open(dir_c.path());
    sync_pair(&a, &c, &key).await;
    assert_eq!(get(&c, &key), None);
    assert!(c.heads(&key).unwrap().is_some(), "the tombstone is stored");
    assert_eq!(c.all_heads().count(), 1);
}

#[tokio::test]
async fn a_long_history_reloads_intact() {
    let dir = tempfile::tempdir().unwrap();
    let key = DocKey::new("c", "busy");
    let store = open(dir.path());
    for i in 0..500 {
        put(&store, &key, json!({"i": i, "text": format!("value {i}"), "fixed": "same"})).await;
    }
    let heads = store.heads(&key).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(get(&store, &key), Some(json!({"i": 499, "text": "value 499", "fixed": "same"})));
    assert_eq!(store.heads(&key).unwrap(), heads);
    // The reloaded change log is a working document: it accepts new edits and syncs them.
    put(&store, &key, json!({"i": 500})).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(other_dir.path());
    sync_pair(&store, &other, &key).await;
    assert_eq!(get(&other, &key), Some(json!({"i": 500})));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A crash after a write was journaled (and acknowledged) but before sled
/// persisted it: the next open applies it from the journal.
#[tokio::test]
async fn a_journaled_write_that_sled_lost_is_applied_at_open() {
    let (dir, before_dir, control_dir) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (key, other) = (DocKey::new("c", "cut"), DocKey::new("c", "other"));
    let store = open(dir.path());
    put(&store, &key, json!({"v": 1, "same": true})).await;
    put(&store, &other, json!({"keep": "me"})).await;
    drop(store);
    copy_dir(dir.path(), before_dir.path());
    copy_dir(dir.path(), control_dir.path());

    // A crash right after the write was acknowledged: sled as it was
    // before the write, and the journal holding the write.
    let store = open(dir.path());
    put(&store, &key, json!({"v": 2, "same": true})).await;
    let heads = store.heads(&key).unwrap();
    let journal = dir.path().join(peat_sidecar::store::JOURNAL_FILE);
    std::fs::copy(&journal, before_dir.path().join(peat_sidecar::store::JOURNAL_FILE)).unwrap();
    drop(store);

    let control = open(control_dir.path());
    assert_eq!(get(&control, &key), Some(json!({"v": 1, "same": true})), "sled alone lacks the write");
    drop(control);

    let store = open(before_dir.path());
    assert_eq!(get(&store, &key), Some(json!({"v": 2, "same": true})));
    assert_eq!(store.heads(&key).unwrap(), heads);
    assert_eq!(get(&store, &other), Some(json!({"keep": "me"})));
    // The replayed document is whole: it loads, takes the next write and reopens.
    put(&store, &key, json!({"v": 3, "same": true})).await;
    drop(store);
    let store = open(before_dir.path());
    assert_eq!(get(&store, &key), Some(json!({"v": 3, "same": true})));
    assert_eq!(store.log_after(0, 10).unwrap().len(), 2, "one change-log entry per document");
}

#[tokio::test]
async fn invalid_input_never_reaches_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for (collection, doc_id, json, field) in [
        ("bad name", "d", "{}", "collection"),
        ("", "d", "{}", "collection"),
        ("c", "", "{}", "doc_id"),
        ("c", "tab\t", "{}", "doc_id"),
        ("c", "d", "[1]", "json_data"),
        ("c", "d", "{", "json_data"),
    ] {
        let err = store.put_json(collection, doc_id, json).await.unwrap_err();
        assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
    }
    assert_eq!(store.all_heads().count(), 0);
}

#[tokio::test]
async fn a_cache_smaller_than_the_documents_evicts_idle_ones_and_loses_nothing() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Room for a few loaded documents (~16 KiB each), not for a hundred.
    let budget = 64 * 1024;
    let small_cache = |dir: &std::path::Path| {
        support::open_store(&StoreOptions { document_cache_bytes: budget, ..StoreOptions::new(dir) })
    };
    let (a, b) = (small_cache(dir_a.path()), small_cache(dir_b.path()));
    let keys: Vec<DocKey> = (0..100).map(|n| DocKey::new("platforms", format!("p{n}"))).collect();
    for (n, key) in keys.iter().enumerate() {
        assert!(put(&a, key, json!({"n": n, "status": "ready"})).await);
    }
    // Updates load each document again, after it was evicted.
    for (n, key) in keys.iter().enumerate() {
        assert!(put(&a, key, json!({"n": n, "status": "busy"})).await);
    }
    // The peer edits another field of some documents meanwhile: the edits merge.
    for key in &keys[..10] {
        sync_pair(&a, &b, key).await;
        put(&b, key, json!({"n": get(&b, key).unwrap()["n"], "status": "busy", "crew": 2})).await;
    }
    for key in &keys {
        sync_pair(&a, &b, key).await;
        assert_converged(&a, &b, key);
    }
    for store in [&a, &b] {
        let usage = store.cache_usage();
        assert!(usage.bytes <= budget, "{usage:?}");
        assert!(usage.documents < keys.len(), "{usage:?}");
    }
    drop(a);
    let a = open(dir_a.path());
    for (n, key) in keys.iter().enumerate() {
        let expected = match n {
            0..10 => json!({"n": n, "status": "busy", "crew": 2}),
            _ => json!({"n": n, "status": "busy"}),
        };
        assert_eq!(get(&a, key), Some(expected), "{key:?}");
    }
}

/// The sizes of the values in the document tree of the closed store in `dir`.
fn stored_value_sizes(dir: &std::path::Path) -> Vec<usize> {
    let db = sled::open(dir).unwrap();
    let docs = db.open_tree("documents").unwrap();
    docs.iter().values().map(|value| value.unwrap().len()).collect()
}

/// Large documents reach sled as pieces of at most 6 KiB: sled counts a page
/// holding larger values in its cache as a mere pointer and never evicts it.
/// Every path reads them back whole: updates that grow, shrink and compact
/// them, a delete, sync to a peer, and reopening.
#[tokio::test]
async fn large_documents_are_stored_in_small_pieces_and_read_back_whole() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let keys: Vec<DocKey> = (0..8).map(|n| DocKey::new("big", format!("d{n}"))).collect();
    let content = |n: usize, version: usize| {
        let len = match (n + version) % 4 {
            0 => 50,
            1 => 20_000,
            2 => 150_000,
            _ => 300_000,
        };
        json!({"n": n, "version": version, "pad": support::noise::noise((n * 10 + version) as u64, len)})
    };
    let mut expected: Vec<Option<Value>> = vec![None; keys.len()];
    for version in 0..4 {
        for (n, key) in keys.iter().enumerate() {
            put(&a, key, content(n, version)).await;
            expected[n] = Some(content(n, version));
        }
    }
    assert!(a.delete(&keys[0].collection, &keys[0].doc_id).await.unwrap());
    expected[0] = None;
    for key in &keys[1..4] {
        sync_pair(&a, &b, key).await;
        assert_converged(&a, &b, key);
    }
    drop((a, b));

    let a = open(dir_a.path());
    for (key, expected) in keys.iter().zip(&expected) {
        assert_eq!(&get(&a, key), expected, "{key:?}");
    }
    assert_eq!(a.list_json("big").unwrap().len(), keys.len() - 1);
    // A reloaded document takes the next write.
    put(&a, &keys[5], json!({"small": true})).await;
    assert_eq!(get(&a, &keys[5]), Some(json!({"small": true})));
    drop(a);

    let sizes = stored_value_sizes(dir_a.path());
    let longest = *sizes.iter().max().unwrap();
    assert!(longest <= 6 * 1024, "a value of {longest} bytes reached sled");
    let stored: usize = sizes.iter().sum();
    assert!(stored > 8 * 150_000, "the documents are not all there: {stored} bytes");
}

/// A large document's changes are stored deflated: its chunks take a
/// fraction of its JSON, written here, edited whole, or received from a
/// peer (whose store is encrypted: values are deflated, then sealed), and
/// every copy reads back whole after reopening.
#[tokio::test]
async fn a_large_documents_changes_are_stored_deflated() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let encrypted = StoreOptions { encryption_key: Some([7; 32]), ..StoreOptions::new(dir_b.path()) };
    let (a, b) = (open(dir_a.path()), support::open_store(&encrypted));
    let key = DocKey::new("big", "report");
    let content = |version: usize| -> Value {
        let fields = (0..8000).map(|n| (format!("field-{n:05}"), json!(format!("{version}: {n:0>100}"))));
        Value::Object(fields.collect())
    };
    put(&a, &key, content(0)).await;
    put(&a, &key, content(1)).await;
    sync_pair(&a, &b, &key).await;
    drop((a, b));

    let json_bytes = content(1).to_string().len();
    for options in [StoreOptions::new(dir_a.path()), encrypted] {
        let store = support::open_store(&options);
        assert_eq!(get(&store, &key), Some(content(1)));
        drop(store);
        let stored: usize = stored_value_sizes(&options.path).iter().sum();
        // The record keeps the JSON whole; the rest is the change log.
        let changes = stored - json_bytes;
        assert!(changes < json_bytes / 4, "{changes} bytes of changes for {json_bytes} bytes of JSON");
    }
}
