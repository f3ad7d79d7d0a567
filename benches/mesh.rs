//! Mesh benchmark between two real `peat-sidecar` processes on loopback.
//! Prints put→visible-on-peer latency (p50/p99), sustained replication
//! throughput for a bulk load, and catch-up after a partition: wall time and
//! bytes moved relative to the bytes of the changed documents, and first
//! contact by digest: an empty node meeting a full one, then two nodes that
//! differ in a few documents meeting for the first time.
//!
//! Run: `cargo bench --bench mesh` (release build). Sizes can be scaled with
//! MESH_BENCH_PUTS, MESH_BENCH_BULK, MESH_BENCH_STORED and MESH_BENCH_CHANGED.

#[path = "../tests/support/mesh_cluster.rs"]
mod mesh_cluster;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_cluster::*;
use peat_sidecar::proto::peat::sidecar::v1::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let puts = env_usize("MESH_BENCH_PUTS", 1000);
    let bulk = env_usize("MESH_BENCH_BULK", 10_000);
    let stored = env_usize("MESH_BENCH_STORED", 100_000);
    let changed = env_usize("MESH_BENCH_CHANGED", 100);

    let b = Node::start(Spec::new("bench-b")).await;
    let a = Node::start(Spec::new("bench-a").peer(&b)).await;
    // B dials A as well, so it reconnects at once when its sync resumes.
    b.dial(&a).await;
    wait_until("connected", Duration::from_secs(15), || async { a.connected_to("bench-b").await }).await;

    latency(&a, &b, puts).await;
    throughput(&a, &b, "bulk", bulk, 64).await;
    catch_up(&a, &b, stored, changed).await;
    first_contact(&a, &b, stored, changed).await;
}

/// Waits until `node` has published a change for every id in `ids`; returns when.
async fn await_ids(watch: &mut Watcher, ids: impl IntoIterator<Item = String>) -> Instant {
    let mut pending: HashSet<String> = ids.into_iter().collect();
    let mut last = Instant::now();
    while !pending.is_empty() {
        let (at, change) = watch.next_matching(Duration::from_secs(120), |_| true).await;
        pending.remove(&change.doc_id);
        last = at;
    }
    last
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn latency(a: &Node, b: &Node, puts: usize) {
    let mut watch = Watcher::start(b, &["latency"]).await;
    for i in 0..50 {
        a.put("latency", &format!("warm{i}"), r#"{"warm":true}"#).await;
    }
    watch.next_matching(Duration::from_secs(15), |c| c.doc_id == "warm49").await;
    let mut visible = Vec::with_capacity(puts);
    let mut acked = Vec::with_capacity(puts);
    for i in 0..puts {
        let id = format!("l{i}");
        let json = format!(r#"{{"seq":{i},"lat":52.52,"lon":13.40,"status":"ok"}}"#);
        let started = Instant::now();
        a.put("latency", &id, &json).await;
        acked.push(started.elapsed());
        let (at, _) = watch.next_matching(Duration::from_secs(15), |c| c.doc_id == id).await;
        visible.push(at - started);
    }
    visible.sort();
    acked.sort();
    println!(
        "latency: put→visible-on-peer over {puts} puts: p50 {} p99 {} max {} (local put ack p50 {} p99 {})",
        ms(percentile(&visible, 0.5)),
        ms(percentile(&visible, 0.99)),
        ms(*visible.last().unwrap()),
        ms(percentile(&acked, 0.5)),
        ms(percentile(&acked, 0.99)),
    );
}

/// Writes `count` documents on `a` with `concurrency` requests in flight and
/// waits until `b` has published every one of them.
async fn throughput(a: &Node, b: &Node, collection: &str, count: usize, concurrency: usize) -> Duration {
    let mut watch = Watcher::start(b, &[collection]).await;
    let started = Instant::now();
    let client = a.api();
    let writes = futures::stream::iter(0..count)
        .map(|i| async move {
            let json = format!(r#"{{"n":{i},"kind":"bulk","payload":"{:0>64}"}}"#, i);
            client
                .put_document(PutDocumentRequest {
                    collection: collection.into(),
                    doc_id: format!("d{i:06}"),
                    json_data: json,
                    ..Default::default()
                })
                .await
                .expect("bulk put");
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>();
    let arrivals = async {
        let mut seen = HashSet::with_capacity(count);
        while seen.len() < count {
            let (_, change) = watch.next_matching(Duration::from_secs(120), |_| true).await;
            seen.insert(change.doc_id);
        }
        started.elapsed()
    };
    let ((_, written), replicated) = tokio::join!(async { (writes.await, started.elapsed()) }, arrivals);
    println!(
        "throughput: {count} documents written on A ({concurrency} in flight) in {:.2} s ({:.0} docs/s); \
         all visible on B after {:.2} s: {:.0} docs/s replicated",
        written.as_secs_f64(),
        count as f64 / written.as_secs_f64(),
        replicated.as_secs_f64(),
        count as f64 / replicated.as_secs_f64()
    );
    replicated
}

/// Waits until neither node's byte counters move for `quiet`.
async fn settle(a: &Node, b: &Node, quiet: Duration) -> (GetSyncStatsResponse, GetSyncStatsResponse) {
    let mut last = (a.stats().await, b.stats().await);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (a.stats().await, b.stats().await);
        let moved = (now.0.bytes_sent, now.0.bytes_received, now.1.bytes_sent, now.1.bytes_received)
            != (last.0.bytes_sent, last.0.bytes_received, last.1.bytes_sent, last.1.bytes_received);
        if moved {
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
        last = now;
    }
}

async fn catch_up(a: &Node, b: &Node, stored: usize, changed: usize) {
    let load = throughput(a, b, "stored", stored, 64).await;
    println!(
        "catch-up: {stored} documents stored on both nodes (loaded and replicated in {:.1} s)",
        load.as_secs_f64()
    );
    settle(a, b, Duration::from_secs(2)).await;

    // Partition: B stops syncing; A keeps taking writes.
    b.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    wait_until("sessions closed", Duration::from_secs(15), || async { !a.connected_to("bench-b").await }).await;
    let step = (stored / changed).max(1);
    let mut changed_bytes = 0usize;
    let mut expected = Vec::new();
    for k in 0..changed {
        let i = k * step;
        let json = format!(r#"{{"n":{i},"kind":"bulk","payload":"{:0>64}","changed":true}}"#, i);
        changed_bytes += json.len();
        let id = format!("d{i:06}");
        a.put("stored", &id, &json).await;
        expected.push(id);
    }
    let before = settle(a, b, Duration::from_millis(500)).await;

    let mut watch = Watcher::start(b, &["stored"]).await;
    let started = Instant::now();
    b.api().start_sync(StartSyncRequest::default()).await.unwrap();
    let mut pending: HashSet<String> = expected.into_iter().collect();
    while !pending.is_empty() {
        let (_, change) = watch.next_matching(Duration::from_secs(60), |_| true).await;
        pending.remove(&change.doc_id);
    }
    let wall = started.elapsed();
    let after = settle(a, b, Duration::from_secs(1)).await;
    let a_sent = after.0.bytes_sent - before.0.bytes_sent;
    let b_sent = after.1.bytes_sent - before.1.bytes_sent;
    let moved = a_sent + b_sent;
    println!(
        "catch-up: {changed} of {stored} documents changed during the partition; all on B {} after resume; \
         bytes moved {moved} (A→B {a_sent}, B→A {b_sent}) for {changed_bytes} bytes of changed documents: ratio {:.2}",
        ms(wall),
        moved as f64 / changed_bytes as f64
    );
}

async fn first_contact(a: &Node, b: &Node, stored: usize, changed: usize) {
    // An empty node meets A: the digest finds it holds nothing, and every
    // document streams to it.
    let c = Node::start(Spec::new("bench-c")).await;
    let mut watch = Watcher::start(&c, &["stored"]).await;
    let started = Instant::now();
    c.dial(a).await;
    let done = await_ids(&mut watch, (0..stored).map(|i| format!("d{i:06}"))).await;
    let elapsed = done - started;
    println!(
        "first contact, empty node: all {stored} documents on C {:.2} s after connecting: {:.0} docs/s",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64()
    );
    drop(watch);
    settle(a, &c, Duration::from_secs(2)).await;

    // C leaves; A changes documents, which reach B; then C meets B for the
    // first time: neither has a cursor for the other.
    c.api()
        .disconnect_peer(DisconnectPeerRequest { endpoint_id: "bench-a".into(), ..Default::default() })
        .await
        .unwrap();
    wait_until("C left A", Duration::from_secs(15), || async { !a.connected_to("bench-c").await }).await;
    let mut on_b = Watcher::start(b, &["stored"]).await;
    let step = (stored / changed).max(1);
    let mut changed_bytes = 0usize;
    let mut ids = Vec::new();
    for k in 0..changed {
        let i = k * step + step / 2;
        let json = format!(r#"{{"n":{i},"kind":"bulk","payload":"{:0>64}","again":true}}"#, i);
        changed_bytes += json.len();
        let id = format!("d{i:06}");
        a.put("stored", &id, &json).await;
        ids.push(id);
    }
    await_ids(&mut on_b, ids.clone()).await;
    drop(on_b);
    let before = settle(b, &c, Duration::from_millis(500)).await;

    let mut watch = Watcher::start(&c, &["stored"]).await;
    let started = Instant::now();
    c.dial(b).await;
    let wall = await_ids(&mut watch, ids).await - started;
    let after = settle(b, &c, Duration::from_secs(1)).await;
    // C's only session is the new one with B.
    let c_sent = after.1.bytes_sent - before.1.bytes_sent;
    let c_received = after.1.bytes_received - before.1.bytes_received;
    let moved = c_sent + c_received;
    println!(
        "first contact by digest: {changed} of {stored} documents differ; all on C {} after connecting; \
         bytes moved {moved} (B→C {c_received}, C→B {c_sent}) for {changed_bytes} bytes of changed documents: ratio {:.2}",
        ms(wall),
        moved as f64 / changed_bytes as f64
    );
}
