//! The document cache's memory estimate against the heap the documents
//! really take, measured by counting every allocation of this test binary.
//! The cache bounds memory only as well as its estimate, so this keeps the
//! estimate's constants honest when Automerge changes, and checks that a
//! history received from a peer is estimated like one loaded from disk.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use automerge::sync;
use peat_sidecar::store::{DocKey, StoreOptions};
use serde_json::{Map, Value, json};

mod support;
use support::open_store;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(block, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How far the estimate may be from the heap: it may err low a little (the
/// cache then holds a little more than its budget) and high more (it then
/// holds less; small new documents are estimated high).
const RATIO: std::ops::RangeInclusive<f64> = 0.67..=2.5;
/// Long enough for sled's background threads of a closed store to finish.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes `writes` (document, content) in order, reopens the store, then
/// loads every written document into the cache and compares the cache's
/// estimate of them with the heap they took.
async fn estimate_against_heap(shape: &str, writes: Vec<(DocKey, Value)>) {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { document_cache_bytes: 1 << 30, ..StoreOptions::new(dir.path()) };
    let store = open_store(&options);
    let mut keys = Vec::new();
    for (key, content) in writes {
        store.put_json(&key.collection, &key.doc_id, &content.to_string()).await.unwrap();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    drop(store);
    // The closed store's background threads free their memory meanwhile.
    tokio::time::sleep(SETTLE).await;
    let store = open_store(&options);

    let estimated_before = store.cache_usage().bytes;
    let heap_before = LIVE_BYTES.load(Ordering::Relaxed);
    for key in &keys {
        // Loads the whole document, as a peer's first sync does.
        store.generate_sync_message(key, &mut sync::State::new()).unwrap();
    }
    let heap = (LIVE_BYTES.load(Ordering::Relaxed) - heap_before) as f64;
    let estimated = (store.cache_usage().bytes - estimated_before) as f64;
    let ratio = estimated / heap;
    println!(
        "{shape}: {} documents, heap {:.0} KiB, estimated {:.0} KiB, ratio {ratio:.2}",
        keys.len(),
        heap / 1024.0,
        estimated / 1024.0
    );
    assert!(RATIO.contains(&ratio), "{shape}: estimate/heap = {ratio:.2}");
}

/// New documents are cached as their first change until something needs
/// them loaded. Writing them costs the same with and without a cache
/// (sled, the journal), so the difference in heap between the two is what
/// the cache holds.
async fn created_against_heap(documents: usize) {
    let mut heap = Vec::new();
    let mut estimated = 0;
    for budget in [1 << 30, 0] {
        let dir = tempfile::tempdir().unwrap();
        let heap_before = LIVE_BYTES.load(Ordering::Relaxed);
        let store = open_store(&StoreOptions { document_cache_bytes: budget, ..StoreOptions::new(dir.path()) });
        for n in 0..documents {
            store.put_json("platforms", &format!("p{n}"), &platform(n, 0).to_string()).await.unwrap();
        }
        // Once its write is applied, a document is idle: this lookup evicts
        // every one of them from the cache without room.
        store.heads(&DocKey::new("platforms", "p0")).unwrap();
        store.put_json("platforms", "last", &platform(0, 0).to_string()).await.unwrap();
        // sled's periodic flush has run since.
        tokio::time::sleep(SETTLE).await;
        heap.push((LIVE_BYTES.load(Ordering::Relaxed) - heap_before) as f64);
        estimated = estimated.max(store.cache_usage().bytes);
    }
    let cached = heap[0] - heap[1];
    let ratio = estimated as f64 / cached;
    println!(
        "{documents} new documents: cache heap {:.0} KiB, estimated {:.0} KiB, ratio {ratio:.2}",
        cached / 1024.0,
        estimated as f64 / 1024.0
    );
    assert!(RATIO.contains(&ratio), "new documents: estimate/heap = {ratio:.2}");
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
    let (mut a_to_b, mut b_to_a) = (sync::State::new(), sync::State::new());
    let peer: std::sync::Arc<str> = "node-a".into();
    loop {
        let from_a = a.generate_sync_message(&key, &mut a_to_b).unwrap();
        let from_b = store_b.generate_sync_message(&key, &mut b_to_a).unwrap();
        if from_a.is_none() && from_b.is_none() {
            break;
        }
        if let Some(message) = from_a {
            store_b.receive_sync_message(&key, &mut b_to_a, message, &peer).unwrap();
        }
        if let Some(message) = from_b {
            a.receive_sync_message(&key, &mut a_to_b, message, &peer).unwrap();
        }
    }
    store_b.flush().await.unwrap();
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

fn platform(n: usize, revision: usize) -> Value {
    json!({
        "id": format!("platform-{n}"), "platform_type": "vehicle", "name": format!("Vehicle {n}"),
        "status": "PLATFORM_STATUS_READY", "latitude": 12.3456 + revision as f64 * 1e-4,
        "longitude": 45.6789, "altitude_m": 123.4, "readiness": 0.95,
        "capabilities": ["sensor", "relay"], "callsign": format!("ALPHA-{n}"),
    })
}

// One test: the allocation counter is global, so nothing may run beside it.
#[tokio::test(flavor = "current_thread")]
async fn the_cache_estimates_document_memory_within_its_tolerance() {
    let many_small = (0..300).map(|n| (DocKey::new("platforms", format!("p{n}")), platform(n, 0))).collect();
    estimate_against_heap("small documents", many_small).await;

    let long_history = (0..2000).map(|revision| (DocKey::new("platforms", "p0"), platform(0, revision))).collect();
    estimate_against_heap("one document, 2 000 updates", long_history).await;

    let fields: Map<String, Value> =
        (0..8000).map(|n| (format!("field-{n:05}"), json!(format!("{n:0>100}")))).collect();
    estimate_against_heap("one ~900 KiB document", vec![(DocKey::new("big", "b0"), Value::Object(fields))]).await;

    created_against_heap(2000).await;
    received_history_against_loaded(2000).await;
}
