//! Mesh behaviour over real network paths between network namespaces that
//! each test creates and deletes: partition and heal, and a degraded (DDIL)
//! link with packet loss, a bandwidth cap and added latency.
//!
//! Needs root (namespaces, veth, iptables, tc); without it each test prints
//! why it is skipped and passes. Addresses come from 198.18.0.0/15 and exist
//! only on veth pairs between the test's own namespaces.

#[path = "support/mesh_cluster.rs"]
mod mesh_cluster;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_cluster::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Unique per process and test, short enough for interface names (≤ 15 bytes).
fn tag(test: &str) -> String {
    format!("{}{}", std::process::id() % 1_000_000, test)
}

fn spec_in(ns: &Netns, node_id: &str, listen: &str) -> Spec {
    let mut spec = Spec::new(node_id);
    spec.netns = Some(ns.name.clone());
    spec.mesh_listen = format!("tcp://{listen}");
    spec
}

async fn write_docs(node: &Node, collection: &str, prefix: &str, count: usize) {
    for i in 0..count {
        node.put(collection, &format!("{prefix}{i:03}"), &format!(r#"{{"from":"{prefix}","i":{i}}}"#)).await;
    }
}

#[tokio::test]
async fn partition_then_heal_converges_byte_identical() {
    if !netns_available("partition_then_heal_converges_byte_identical") {
        return;
    }
    let t = tag("p");
    let (ns_a, ns_b) = (Netns::new(&format!("pm{t}a")), Netns::new(&format!("pm{t}b")));
    let (if_a, if_b) = (format!("v{t}a"), format!("v{t}b"));
    Netns::link(&ns_a, &if_a, "198.18.0.1/24", &ns_b, &if_b, "198.18.0.2/24");

    let a = Node::start(spec_in(&ns_a, "node-a", "198.18.0.1:7420")).await;
    let mut spec_b = spec_in(&ns_b, "node-b", "198.18.0.2:7420");
    spec_b.peers.push("node-a@198.18.0.1:7420".into());
    let b = Node::start(spec_b).await;
    write_docs(&a, "part", "base", 40).await;
    a.put("part", "shared", r#"{"v":0}"#).await;
    wait_identical(&[&a, &b], "part", Duration::from_secs(20)).await;

    // Short partition: packets vanish both ways, the sessions survive it.
    let drop_rule = |ns: &Netns, iface: &str, op: &str| ns.exec(&["iptables", op, "INPUT", "-i", iface, "-j", "DROP"]);
    drop_rule(&ns_a, &if_a, "-A");
    drop_rule(&ns_b, &if_b, "-A");
    write_docs(&a, "part", "pa", 20).await;
    write_docs(&b, "part", "pb", 20).await;
    a.put("part", "shared", r#"{"v":0,"a":"side a"}"#).await;
    b.put("part", "shared", r#"{"v":0,"b":"side b"}"#).await;
    b.delete("part", "base000").await;
    a.put("part", "base001", r#"{"edited":"during partition"}"#).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(b.get("part", "pa000").await, None, "a write crossed the partition");
    assert_eq!(a.get("part", "pb000").await, None, "a write crossed the partition");
    drop_rule(&ns_a, &if_a, "-D");
    drop_rule(&ns_b, &if_b, "-D");
    let healed = Instant::now();
    let docs = wait_identical(&[&a, &b], "part", Duration::from_secs(30)).await;
    println!("short partition (3 s, iptables DROP): converged {:?} after heal", healed.elapsed());
    assert_eq!(docs.len(), 41 + 40 - 1);
    assert_eq!(docs["shared"], r#"{"a":"side a","b":"side b","v":0}"#);
    assert!(!docs.contains_key("base000"));
    assert_eq!(docs["base001"], r#"{"edited":"during partition"}"#);

    // Long partition (link down beyond the peer timeout): sessions die,
    // both sides reconnect after the heal and catch up from their cursors.
    ns_a.exec(&["ip", "link", "set", &if_a, "down"]);
    write_docs(&a, "part", "la", 30).await;
    write_docs(&b, "part", "lb", 30).await;
    // A put replaces the whole document as its writer saw it; concurrent
    // puts touching different fields still merge field by field.
    a.put("part", "shared", r#"{"v":1,"a":"side a","b":"side b"}"#).await;
    b.put("part", "shared", r#"{"v":0,"a":"side a","b":"side b","c":"long"}"#).await;
    wait_until("sessions to time out", Duration::from_secs(45), || async {
        !a.connected_to("node-b").await && !b.connected_to("node-a").await
    })
    .await;
    ns_a.exec(&["ip", "link", "set", &if_a, "up"]);
    let healed = Instant::now();
    let docs = wait_identical(&[&a, &b], "part", Duration::from_secs(45)).await;
    println!("long partition (link down past the peer timeout): converged {:?} after heal", healed.elapsed());
    assert_eq!(docs.len(), 80 + 60);
    assert_eq!(docs["shared"], r#"{"a":"side a","b":"side b","c":"long","v":1}"#);
    assert!(a.connected_to("node-b").await || b.connected_to("node-a").await);
}

/// A TCP relay that delays every byte by `delay` in each direction; runs on
/// a thread inside `ns` until `stop` fires. Returns the bytes relayed.
fn delaying_relay(
    ns: &Netns,
    listen: &str,
    target: &str,
    delay: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>) {
    let relayed = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&relayed);
    let (listen, target) = (listen.to_owned(), target.to_owned());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = ns.spawn_thread(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(&listen).await.expect("relay bind");
            ready_tx.send(()).unwrap();
            let mut stop = stop;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { continue };
                        let target = target.clone();
                        let counter = Arc::clone(&counter);
                        tokio::spawn(async move {
                            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                            let _ = inbound.set_nodelay(true);
                            let _ = outbound.set_nodelay(true);
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::join!(
                                delay_pipe(ri, wo, delay, Arc::clone(&counter)),
                                delay_pipe(ro, wi, delay, counter)
                            );
                        });
                    }
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("relay did not start");
    (thread, relayed)
}

/// Copies `from` to `to`, each chunk leaving `delay` after it arrived.
async fn delay_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    counter: Arc<AtomicU64>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[tokio::test]
async fn ddil_500_documents_converge_over_a_lossy_slow_high_latency_link() {
    if !netns_available("ddil_500_documents_converge_over_a_lossy_slow_high_latency_link") {
        return;
    }
    let t = tag("d");
    let (ns_a, ns_b) = (Netns::new(&format!("pm{t}a")), Netns::new(&format!("pm{t}b")));
    let (if_a, if_b) = (format!("v{t}a"), format!("v{t}b"));
    Netns::link(&ns_a, &if_a, "198.18.1.1/24", &ns_b, &if_b, "198.18.1.2/24");
    // 256 kbit/s each way.
    for (ns, iface) in [(&ns_a, &if_a), (&ns_b, &if_b)] {
        ns.exec(&[
            "tc", "qdisc", "add", "dev", iface, "root", "tbf", "rate", "256kbit", "burst", "32kbit", "latency", "400ms",
        ]);
    }
    // 20% of the packets arriving at the receiving side are lost.
    ns_b.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-i",
        &if_b,
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.2",
        "-j",
        "DROP",
    ]);
    // 300 ms each way: A reaches B only through the delaying relay in B's namespace.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (relay, relayed) =
        delaying_relay(&ns_b, "198.18.1.2:7421", "198.18.1.2:7420", Duration::from_millis(300), stop_rx);

    let b = Node::start(spec_in(&ns_b, "node-b", "198.18.1.2:7420")).await;
    let mut spec_a = spec_in(&ns_a, "node-a", "198.18.1.1:7420");
    spec_a.peers.push("node-b@198.18.1.2:7421".into());
    let a = Node::start(spec_a).await;
    let connected = Instant::now();
    wait_until("session over the degraded link", Duration::from_secs(60), || async { b.connected_to("node-a").await })
        .await;
    println!("DDIL: session established in {:?}", connected.elapsed());

    let started = Instant::now();
    let payload = "p".repeat(100);
    for i in 0..500 {
        a.put("ddil", &format!("doc{i:03}"), &format!(r#"{{"i":{i},"payload":"{payload}"}}"#)).await;
    }
    let written = started.elapsed();
    let docs = wait_identical(&[&a, &b], "ddil", Duration::from_secs(150)).await;
    let took = started.elapsed();
    assert_eq!(docs.len(), 500);
    let stats = (a.stats().await, b.stats().await);
    println!(
        "DDIL (20% loss at the receiver, tbf 256 kbit/s, +300 ms each way): 500 documents converged in {took:?} \
         (writes took {written:?}); A sent {} bytes, B received {} bytes, relay carried {} bytes",
        stats.0.bytes_sent,
        stats.1.bytes_received,
        relayed.load(Ordering::Relaxed)
    );
    assert!(relayed.load(Ordering::Relaxed) >= stats.1.bytes_received, "traffic bypassed the relay");
    stop_tx.send(true).unwrap();
    drop((a, b));
    relay.join().unwrap();
}
