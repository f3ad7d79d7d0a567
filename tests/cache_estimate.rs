//! The document cache's memory estimate against the heap the documents
//! really take, measured by counting the test thread's allocations (sled's
//! background threads allocate and free at their own pace).
//! The cache bounds memory only as well as its estimate, so this keeps the
//! estimate's constants honest when Automerge changes, checks that a
//! history received from a peer is estimated like one loaded from disk, and
//! that replacing a large document whole, then loading it again, or
//! receiving such a replacement from a peer, takes memory in proportion to it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use automerge::sync;
use peat_sidecar::store::{DocKey, DocumentStore, StoreOptions};
use serde_json::{Value, json};

mod support;
use support::open_store;

struct Counting;

thread_local! {
    /// Bytes this thread allocated minus the bytes it freed.
    static THREAD_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize) {
    // Not available while the thread is being torn down; nothing to measure then.
    let _ = THREAD_BYTES.try_with(|counted| counted.set(counted.get() + bytes));
}

fn thread_bytes() -> isize {
    THREAD_BYTES.with(Cell::get)
}

// SAFETY: forwards to the system allocator, only counting the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(block, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How far the estimate may be from the heap: it may err low a little (the
/// cache then holds a little more than its budget) and high more (it then
/// holds less than it could).
const RATIO: std::ops::RangeInclusive<f64> = 0.67..=2.5;

/// Options of a store in `dir` whose cache never evicts while measured.
fn unbounded(dir: &tempfile::TempDir) -> StoreOptions {
    StoreOptions { document_cache_bytes: 1 << 30, ..StoreOptions::new(dir.path()) }
}

/// Writes `writes` (document, content) in order, then measures loading them.
async fn estimate_against_heap(shape: &str, writes: Vec<(DocKey, Value)>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&unbounded(&dir));
    let mut keys = Vec::new();
    for (key, content) in writes {
        store.put_json(&key.collection, &key.doc_id, &content.to_string()).await.unwrap();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    drop(store);
    let (heap, estimated) = loading_heap(shape, &dir, &keys);
    let ratio = estimated / heap;
    assert!(RATIO.contains(&ratio), "{shape}: estimate/heap = {ratio:.2}");
}

/// Opens the store in `dir` and loads the documents `keys` into the cache:
/// the heap they took, and the cache's estimate of them.
fn loading_heap(shape: &str, dir: &tempfile::TempDir, keys: &[DocKey]) -> (f64, f64) {
    let store = open_store(&unbounded(dir));
    settle(&store);
    // Read every record once, so that the pages sled keeps of them are in
    // its own page cache, bounded apart from the document cache.
    for key in keys {
        store.get(&key.collection, &key.doc_id).unwrap();
    }
    let estimated_before = store.cache_usage().bytes;
    let heap_before = thread_bytes();
    for key in keys {
        // Loads the whole document, as a peer's first sync does.
        store.generate_sync_message(key, &mut sync::State::new()).unwrap();
    }
    let heap = (thread_bytes() - heap_before) as f64;
    let estimated = (store.cache_usage().bytes - estimated_before) as f64;
    println!(
        "{shape}: {} documents, heap {:.0} KiB, estimated {:.0} KiB, ratio {:.2}",
        keys.len(),
        heap / 1024.0,
        estimated / 1024.0,
        estimated / heap
    );
    (heap, estimated)
}

/// Before measuring a reopened store: lets sled free on this thread what
/// reopening left behind (its memory is reclaimed by whichever thread uses
/// it next).
fn settle(store: &DocumentStore) {
    for _ in 0..4096 {
        store.get("warm-up", "absent").unwrap();
    }
}

/// Syncs `key` from store `a` to store `b` until neither has more to send,
/// then waits until `b` has stored what it received: the heap that `b`'s
/// side of the exchange kept.
async fn sync_into(a: &DocumentStore, b: &DocumentStore, key: &DocKey) -> isize {
    let (mut a_to_b, mut b_to_a) = (sync::State::new(), sync::State::new());
    let peer: std::sync::Arc<str> = "node-a".into();
    let mut b_heap = 0;
    loop {
        let from_a = a.generate_sync_message(key, &mut a_to_b).unwrap();
        let b_before = thread_bytes();
        let from_b = b.generate_sync_message(key, &mut b_to_a).unwrap();
        b_heap += thread_bytes() - b_before;
        if from_a.is_none() && from_b.is_none() {
            break;
        }
        if let Some(message) = from_a {
            let b_before = thread_bytes();
            b.receive_sync_message(key, &mut b_to_a, message, &peer).unwrap();
            b_heap += thread_bytes() - b_before;
        }
        if let Some(message) = from_b {
            a.receive_sync_message(key, &mut a_to_b, message, &peer).unwrap();
        }
    }
    b.flush().await.unwrap();
    b_heap
}

/// A document with a long history that arrives from a peer is estimated
/// from the changes as they arrive; that must agree with the estimate from
/// counting them when the document is loaded later.
async fn received_history_against_loaded(updates: usize) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open_store(&StoreOptions::new(dir_a.path())), StoreOptions::new(dir_b.path()));
    let store_b = open_store(&b);
    let key = DocKey::new("platforms", "p0");
    for revision in 0..updates {
        a.put_json(&key.collection, &key.doc_id, &platform(0, revision).to_string()).await.unwrap();
    }
    sync_into(&a, &store_b, &key).await;
    let received = store_b.cache_usage().bytes as f64;
    drop(store_b);
    let store_b = open_store(&b);
    store_b.generate_sync_message(&key, &mut sync::State::new()).unwrap();
    let loaded = store_b.cache_usage().bytes as f64;
    let ratio = received / loaded;
    println!(
        "one document, {updates} updates from a peer: estimated {:.0} KiB as received, {:.0} KiB as loaded",
        received / 1024.0,
        loaded / 1024.0
    );
    assert!(RATIO.contains(&ratio), "received/loaded = {ratio:.2}");
}

/// A document loaded from disk and then replaced whole in one write: the
/// estimate must follow what the edit adds to the heap, and loading the
/// edited document must take memory in proportion to it. (Automerge 0.12
/// spends memory quadratic in the fields one change overwrites when they are
/// overwritten from the first to the last, or when it loads such a change:
/// 170 MB for this document.)
async fn whole_edit_against_heap(shape: &str, before: Value, after: Value) {
    let dir = tempfile::tempdir().unwrap();
    let key = DocKey::new("big", "b0");
    let store = open_store(&unbounded(&dir));
    // Written, then touched: the second write compacts the first into a
    // snapshot, the form a document takes once it has been edited.
    let mut touched = before.clone();
    touched["touched"] = json!(true);
    for version in [before, touched] {
        store.put_json(&key.collection, &key.doc_id, &version.to_string()).await.unwrap();
    }
    drop(store);
    let store = open_store(&unbounded(&dir));
    settle(&store);
    store.generate_sync_message(&key, &mut sync::State::new()).unwrap();
    let after = after.to_string();

    let estimated_before = store.cache_usage().bytes;
    let heap_before = thread_bytes();
    store.put_json(&key.collection, &key.doc_id, &after).await.unwrap();
    let heap = (thread_bytes() - heap_before) as f64;
    let estimated = (store.cache_usage().bytes - estimated_before) as f64;
    let ratio = estimated / heap;
    println!("{shape}: heap {:.0} KiB, estimated {:.0} KiB, ratio {ratio:.2}", heap / 1024.0, estimated / 1024.0);
    assert!(RATIO.contains(&ratio), "{shape}: estimate/heap = {ratio:.2}");
    drop(store);

    // Loaded again, it holds both versions of every field, and loading
    // takes memory linear in them.
    let (heap, estimated) = loading_heap(&format!("{shape}, loaded again"), &dir, &[key]);
    let ratio = estimated / heap;
    assert!(RATIO.contains(&ratio), "{shape}, loaded again: estimate/heap = {ratio:.2}");
    let json_bytes = after.len() as f64;
    assert!(heap < 8.0 * json_bytes, "{shape}: loading took {:.0} KiB", heap / 1024.0);
}

/// A large document replaced whole by a peer: applying the peer's change
/// costs Automerge 0.12 memory quadratic in the fields it overwrites
/// (it applies them in key order, whatever order they were made in), and it
/// keeps that memory until the document's next edit. The receiver must
/// hold it in proportion to the document once the change is stored.
async fn received_whole_edit_against_heap(shape: &str, before: Value, after: Value) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open_store(&unbounded(&dir_a)), open_store(&unbounded(&dir_b)));
    let key = DocKey::new("big", "b0");
    a.put_json(&key.collection, &key.doc_id, &before.to_string()).await.unwrap();
    sync_into(&a, &b, &key).await;
    let after = after.to_string();
    a.put_json(&key.collection, &key.doc_id, &after).await.unwrap();

    let started = std::time::Instant::now();
    let heap = sync_into(&a, &b, &key).await as f64;
    println!(
        "{shape}: synced in {:.0} ms, the receiver kept {:.0} KiB more; the cache estimates the document at {:.0} KiB",
        started.elapsed().as_secs_f64() * 1e3,
        heap / 1024.0,
        b.cache_usage().bytes as f64 / 1024.0
    );
    assert_eq!(b.get(&key.collection, &key.doc_id).unwrap().as_deref(), Some(after.as_str()));
    let json_bytes = after.len() as f64;
    assert!(heap < 8.0 * json_bytes, "{shape}: the receiver kept {:.0} KiB", heap / 1024.0);
}

fn platform(n: usize, revision: usize) -> Value {
    json!({
        "id": format!("platform-{n}"), "platform_type": "vehicle", "name": format!("Vehicle {n}"),
        "status": "PLATFORM_STATUS_READY", "latitude": 12.3456 + revision as f64 * 1e-4,
        "longitude": 45.6789, "altitude_m": 123.4, "readiness": 0.95,
        "capabilities": ["sensor", "relay"], "callsign": format!("ALPHA-{n}"),
    })
}

// On one thread, which runs every load and every document edit.
#[tokio::test(flavor = "current_thread")]
async fn the_cache_estimates_document_memory_within_its_tolerance() {
    let many_small = (0..300).map(|n| (DocKey::new("platforms", format!("p{n}")), platform(n, 0))).collect();
    estimate_against_heap("small documents", many_small).await;

    let long_history = (0..2000).map(|revision| (DocKey::new("platforms", "p0"), platform(0, revision))).collect();
    estimate_against_heap("one document, 2 000 updates", long_history).await;

    let fields = |version: usize| -> Value {
        Value::Object((0..8000).map(|n| (format!("field-{n:05}"), json!(format!("{version}: {n:0>100}")))).collect())
    };
    estimate_against_heap("one ~900 KiB document", vec![(DocKey::new("big", "b0"), fields(0))]).await;
    whole_edit_against_heap("one ~900 KiB document, every field changed", fields(0), fields(1)).await;
    received_whole_edit_against_heap("one ~900 KiB document, every field changed by a peer", fields(0), fields(1))
        .await;

    received_history_against_loaded(2000).await;
}
