//! Mesh and API limits between real `peat-sidecar` processes on loopback:
//! the TLS listener's own account of refused handshakes, the
//! `mesh_max_sessions` limit, and a `Subscribe` client that stops reading.

#[path = "support/mesh_cluster.rs"]
mod mesh_cluster;
#[path = "support/noise.rs"]
mod noise;

use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_cluster::*;
use noise::noise;
use peat_sidecar::proto::peat::sidecar::v1::*;

const T: Duration = Duration::from_secs(15);

/// The log line of `node` containing `needle` (waiting briefly for it).
async fn log_line(node: &Node, needle: &str) -> String {
    assert_log(node, needle).await;
    let line = node.log().lines().find(|l| l.contains(needle)).expect("line just seen").to_owned();
    eprintln!("{}: {line}", node.spec.node_id);
    line
}

/// Nothing crossed between `listener` and the refused `dialer`.
async fn assert_nothing_synced(listener: &Node, dialer: &Node, marker: &str) {
    dialer.put("tls", marker, r#"{"refused":true}"#).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(listener.get("tls", marker).await, None, "a document crossed a refused handshake");
    assert!(!listener.connected_to(&dialer.spec.node_id).await);
    let stats = dialer.stats().await;
    assert_eq!((stats.connected_peers, stats.bytes_sent, stats.bytes_received), (0, 0, 0));
}

#[tokio::test]
async fn tls_listener_logs_the_remote_and_reason_of_each_refused_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::new(tmp.path(), "formation");
    let mut spec_b = Spec::new("node-b");
    spec_b.tls = Some(pki.issue("node-b", &[]));
    let b = Node::start(spec_b).await;
    b.put("tls", "listener-only", r#"{"b":1}"#).await;
    let rogue_pki = TestPki::new(&tmp.path().join("rogue"), "rogue");

    // A member of the formation gets in, and the listener knows its address.
    let mut spec_a = Spec::new("node-a").peer(&b);
    spec_a.tls = Some(pki.issue("node-a", &[]));
    let a = Node::start(spec_a).await;
    a.wait_doc("tls", "listener-only", Some(r#"{"b":1}"#), T).await;
    assert_log(&b, "mesh session established peer=node-a remote=127.0.0.1:").await;

    // A dialer that trusts the formation CA but holds a certificate from
    // another CA: the listener is the side that refuses it.
    let mut foreign = rogue_pki.issue("node-f", &[]);
    foreign.ca = pki.dir.join("ca.pem");
    let mut spec_f = Spec::new("node-f").peer(&b);
    spec_f.tls = Some(foreign);
    let f = Node::start(spec_f).await;
    let line = log_line(&b, "failed: peer certificate not signed by the mesh CA").await;
    assert!(line.contains("WARN"), "not a warning: {line}");
    assert!(line.contains("mesh TLS handshake from 127.0.0.1:"), "no remote address: {line}");
    log_line(&f, "a TLS peer closes the connection when it refuses this node's certificate").await;
    assert_nothing_synced(&b, &f, "f1").await;
    assert_eq!(f.get("tls", "listener-only").await, None);

    // A node of another formation altogether: it rejects the listener's
    // certificate first, and the listener says so.
    let mut spec_r = Spec::new("node-r").peer(&b);
    spec_r.tls = Some(rogue_pki.issue("node-r", &[]));
    let r = Node::start(spec_r).await;
    assert_log(&r, "invalid peer certificate: UnknownIssuer").await;
    let line = log_line(&b, "failed: peer rejected this node's certificate").await;
    assert!(line.contains("WARN") && line.contains("mesh TLS handshake from 127.0.0.1:"), "{line}");
    assert_nothing_synced(&b, &r, "r1").await;

    // A TLS client without a client certificate (mutual TLS is required).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(pki.dir.join("ca.pem")).unwrap());
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca).domain_name("127.0.0.1");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", b.mesh_addr)).unwrap();
    let channel = endpoint.tls_config(tls).unwrap().connect().await;
    if let Ok(channel) = channel {
        // TLS 1.3 clients finish their side before the server checks the certificate.
        let mut client = peat_sidecar::mesh::proto::mesh_client::MeshClient::new(channel);
        let (_tx, out) = tokio::sync::mpsc::channel(1);
        let session = client.session(tokio_stream::wrappers::ReceiverStream::new(out)).await;
        assert!(session.is_err(), "a session opened without a client certificate");
    }
    let line = log_line(&b, "failed: peer presented no client certificate").await;
    assert!(line.contains("WARN") && line.contains("mesh TLS handshake from 127.0.0.1:"), "{line}");

    // The plaintext check still answers first for dialers without TLS.
    let plain = Node::start(Spec::new("node-p").peer(&b)).await;
    assert_log(&b, "plaintext connection to a TLS mesh listener").await;
    assert_nothing_synced(&b, &plain, "p1").await;

    // No secret material reaches the log.
    let log = b.log();
    assert!(!log.contains("PRIVATE KEY") && !log.contains(KEY), "{log}");
    assert_eq!(b.stats().await.connected_peers, 1);
    assert!(b.connected_to("node-a").await);
    assert_eq!(b.status().await.node_id, "node-b");
}

#[tokio::test]
async fn session_limit_refuses_extra_peers_until_a_session_ends() {
    let a = Node::start(Spec::new("node-a").setting("mesh_max_sessions", 1)).await;
    let mut b = Node::start(Spec::new("node-b").peer(&a)).await;
    wait_until("b connected to a", T, || async { a.connected_to("node-b").await }).await;
    let c = Node::start(Spec::new("node-c").peer(&a)).await;

    // C authenticates, then A refuses it and both sides say why.
    let line = log_line(&a, "session limit of 1 reached").await;
    assert!(line.contains("WARN") && line.contains("mesh session refused"), "{line}");
    log_line(&c, "peer refused us: session limit of 1 reached").await;
    assert!(!c.log().contains("mesh session established"), "a refused dialer never reports a session");
    for _ in 0..10 {
        let stats = a.stats().await;
        assert_eq!(stats.connected_peers, 1, "A holds more sessions than its limit");
        assert!(a.connected_to("node-b").await && !a.connected_to("node-c").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The established session keeps syncing; C gets nothing meanwhile.
    b.put("limit", "from-b", r#"{"b":1}"#).await;
    a.wait_doc("limit", "from-b", Some(r#"{"b":1}"#), T).await;
    a.put("limit", "from-a", r#"{"a":1}"#).await;
    b.wait_doc("limit", "from-a", Some(r#"{"a":1}"#), T).await;
    assert_eq!(c.get("limit", "from-a").await, None);

    // Once B leaves, C's retries get in and it catches up.
    b.stop(true).await;
    let waited =
        wait_until("c connected to a", Duration::from_secs(60), || async { a.connected_to("node-c").await }).await;
    eprintln!("node-c got in {waited:?} after node-b stopped");
    c.wait_doc("limit", "from-b", Some(r#"{"b":1}"#), T).await;
    c.put("limit", "from-c", r#"{"c":1}"#).await;
    a.wait_doc("limit", "from-c", Some(r#"{"c":1}"#), T).await;
    assert_eq!(a.stats().await.connected_peers, 1);

    // And with B back, B is the one refused now.
    let refusals = a.log().matches("session limit of 1 reached").count();
    b.relaunch().await;
    wait_until("b refused", T, || async { a.log().matches("session limit of 1 reached").count() > refusals }).await;
    assert!(a.connected_to("node-c").await && !a.connected_to("node-b").await);
}

#[test]
fn mesh_max_sessions_must_be_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let check = |file: &str, env: &[(&str, &str)]| {
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, file).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_peat-sidecar"));
        command.arg("--config").arg(&config).args(["config", "check"]).env_clear();
        command.env("PATH", std::env::var_os("PATH").unwrap_or_default()).envs(env.iter().copied());
        let output = command.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    let (ok, text) = check("log_level: info\n", &[]);
    assert!(ok && text.contains("mesh_max_sessions: 64"), "{text}");
    let (ok, text) = check("mesh_max_sessions: 3\n", &[]);
    assert!(ok && text.contains("mesh_max_sessions: 3"), "{text}");
    let (ok, text) = check("log_level: info\n", &[("PEAT_SIDECAR_MESH_MAX_SESSIONS", "5")]);
    assert!(ok && text.contains("mesh_max_sessions: 5"), "{text}");
    for (file, env) in [("mesh_max_sessions: 0\n", None), ("log_level: info\n", Some("0"))] {
        let env: Vec<(&str, &str)> = env.map(|v| ("PEAT_SIDECAR_MESH_MAX_SESSIONS", v)).into_iter().collect();
        let (ok, text) = check(file, &env);
        assert!(!ok, "accepted a limit of 0: {text}");
        assert!(text.contains("setting `mesh_max_sessions` must be at least 1"), "{text}");
    }
}

/// Writes `count` documents of about `bytes` each into `collection`,
/// `parallel` at a time; returns the slowest write.
async fn write_many(node: &Node, collection: &str, count: usize, bytes: usize, parallel: usize) -> Duration {
    futures::stream::iter(0..count)
        .map(|i| {
            let json = format!(r#"{{"i":{i},"pad":"{}"}}"#, noise(i as u64, bytes));
            async move {
                let started = Instant::now();
                node.put(collection, &format!("d{i:05}"), &json).await;
                started.elapsed()
            }
        })
        .buffer_unordered(parallel)
        .fold(Duration::ZERO, |max, took| async move { max.max(took) })
        .await
}

/// Reads a stalled `Subscribe` stream until it ends; returns the
/// `collection/doc_id` of each change received and the error it ended with.
macro_rules! resume {
    ($stream:expr, $node:expr) => {{
        let mut received = Vec::new();
        let error = loop {
            let next = tokio::time::timeout(T, $stream.message()).await;
            let next = next.unwrap_or_else(|_| {
                let log = $node.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "after {} changes the stream neither continued nor ended; log:\n{}",
                    received.len(),
                    tail.join("\n")
                )
            });
            match next {
                Ok(Some(message)) => {
                    let change: DocumentChange = message.to_owned_message();
                    received.push(format!("{}/{}", change.collection, change.doc_id));
                }
                Ok(None) => panic!("the stream ended without an error after {} changes", received.len()),
                Err(err) => break err,
            }
        };
        // Nothing after the error.
        assert!(matches!(tokio::time::timeout(T, $stream.message()).await, Ok(Ok(None)) | Ok(Err(_))));
        (received, error)
    }};
}

/// The buffered changes came in write order, once each, and the stream
/// ended with `resource_exhausted` telling the client what to do.
fn check_cut_off(protocol: &str, received: &[String], error: &connectrpc::ConnectError) {
    eprintln!("{protocol}: the stalled subscriber received {} buffered changes, then {error:?}", received.len());
    assert_eq!(error.code, connectrpc::ErrorCode::ResourceExhausted, "{protocol}: {error:?}");
    let message = error.message.clone().unwrap_or_default();
    assert!(message.contains("fell behind") && message.contains("subscribe again"), "{protocol}: {message}");
    assert!(!received.is_empty(), "{protocol}: no buffered change was delivered before the error");
    assert!(received.len() < 4648, "{protocol}: every change arrived, so nothing was cut off");
    // Big documents (all written before the small ones) first, each change once.
    let first_small = received.iter().position(|k| k.starts_with("small/")).unwrap_or(received.len());
    assert!(received[first_small..].iter().all(|k| k.starts_with("small/")), "{protocol}: out of order: {received:?}");
    let unique: std::collections::BTreeSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "{protocol}: a change arrived twice");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_without_stalling_the_node() {
    let node = Node::start(Spec::new("node-s")).await;
    // Two slow subscribers, Connect and gRPC (the error travels differently),
    // each on a connection of its own, as separate clients would be.
    let socket = format!("unix://{}", node.dir.join("api.sock").display());
    let slow = peat_sidecar::ctl::connect(&socket).unwrap();
    let mut stream = slow.subscribe(SubscribeRequest::default()).await.expect("Subscribe");
    let grpc = {
        let uri: http::Uri = "http://localhost".parse().unwrap();
        let connection = connectrpc::client::Http2Connection::lazy_unix(node.dir.join("api.sock"), uri.clone());
        let config = connectrpc::client::ClientConfig::new(uri).with_protocol(connectrpc::Protocol::Grpc);
        PeatSidecarClient::new(connection.shared(4), config)
    };
    let mut grpc_stream = grpc.subscribe(SubscribeRequest::default()).await.expect("Subscribe over gRPC");
    // A healthy subscriber alongside, reading one collection.
    let mut healthy = Watcher::start(&node, &["marks"]).await;

    // Large documents first, to fill the HTTP/2 windows and socket buffers
    // towards the stalled reader; then many small ones, far more than the
    // change feed holds. Nothing reads `stream` meanwhile.
    let started = Instant::now();
    let slowest_big = write_many(&node, "big", 48, 256 * 1024, 4).await;
    // From here the stalled stream's windows are full. Reads run alongside
    // the small writes; neither may wait on the stalled subscriber.
    let done = std::sync::atomic::AtomicBool::new(false);
    let writes = async {
        let slowest = write_many(&node, "small", 4600, 16, 8).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        slowest
    };
    let reads = async {
        let (mut slowest, mut count) = (Duration::ZERO, 0);
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let read = Instant::now();
            assert!(node.get("big", "d00000").await.is_some());
            slowest = slowest.max(read.elapsed());
            count += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (slowest, count)
    };
    let (slowest_small, (slowest_read, reads)) = tokio::join!(writes, reads);
    let written = started.elapsed();
    eprintln!(
        "wrote 48 big and 4600 small documents in {written:?}; slowest write {slowest_big:?} / {slowest_small:?}; \
         {reads} reads meanwhile, slowest {slowest_read:?}"
    );
    assert!(slowest_big < Duration::from_secs(5), "a large write took {slowest_big:?}");
    assert!(slowest_small < Duration::from_secs(2), "a write stalled for {slowest_small:?}");
    assert!(slowest_read < Duration::from_secs(2), "a read stalled for {slowest_read:?}");

    // The node still answers promptly, and other subscribers still get changes.
    let probe = Instant::now();
    node.put("marks", "m", r#"{"after":"flood"}"#).await;
    assert_eq!(node.get("marks", "m").await.as_deref(), Some(r#"{"after":"flood"}"#));
    assert_eq!(node.list("small").await.len(), 4600);
    let probe = probe.elapsed();
    assert!(probe < Duration::from_secs(5), "reads and writes took {probe:?} during the stall");
    healthy.next_matching(T, |c| c.doc_id == "m").await;

    // Resuming: the changes already under way arrive in order, then the
    // stream ends with resource_exhausted saying the subscriber fell behind;
    // over the Connect protocol (end-of-stream message) and gRPC (trailers).
    let (received, error) = resume!(stream, node);
    check_cut_off("Connect", &received, &error);
    let (received, error) = resume!(grpc_stream, node);
    check_cut_off("gRPC", &received, &error);

    // The node is unaffected and a fresh subscription works.
    let mut again = Watcher::start(&node, &["marks"]).await;
    node.put("marks", "m2", r#"{"again":true}"#).await;
    again.next_matching(T, |c| c.doc_id == "m2").await;
    assert_log(&node, "Subscribe stream cut off: the subscriber fell behind").await;
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_by_the_bytes_it_holds() {
    // 160 changes of 256 KiB, far fewer than the 4096 a backlog may count,
    // but 40 MiB: more than the connection carries and the 16 MiB budget.
    let node = Node::start(Spec::new("node-s").setting("subscribe_backlog_bytes", 16 << 20)).await;
    let socket = format!("unix://{}", node.dir.join("api.sock").display());
    let slow = peat_sidecar::ctl::connect(&socket).unwrap();
    let mut stream = slow.subscribe(SubscribeRequest::default()).await.expect("Subscribe");
    // A subscriber of every collection that keeps reading is never cut off,
    // though it receives the same large changes.
    let mut healthy = Watcher::start(&node, &[]).await;

    // In batches the healthy subscriber reads completely before the next,
    // so it keeps up however slowly this machine serves the stream.
    let mut seen = std::collections::BTreeSet::new();
    for batch in 0..20 {
        let node = &node;
        let writes = (batch * 8..batch * 8 + 8).map(|i| async move {
            let json = format!(r#"{{"i":{i},"pad":"{}"}}"#, noise(i as u64, 256 * 1024));
            node.put("big", &format!("d{i:05}"), &json).await
        });
        futures::future::join_all(writes).await;
        while seen.len() < (batch + 1) * 8 {
            let (_, change) = healthy.next_matching(T, |c| c.collection == "big").await;
            seen.insert(change.doc_id);
        }
    }
    assert_log(&node, "Subscribe stream cut off: the subscriber fell behind").await;

    let (received, error) = resume!(stream, node);
    eprintln!("the stalled subscriber received {} changes, then {error:?}", received.len());
    assert_eq!(error.code, connectrpc::ErrorCode::ResourceExhausted, "{error:?}");
    let message = error.message.clone().unwrap_or_default();
    assert!(message.contains("bytes") && message.contains("subscribe again"), "{message}");
    assert!(received.len() < 160, "every change arrived, so nothing was cut off");
    let unique: std::collections::BTreeSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "a change arrived twice");

    // The healthy subscriber is still served.
    node.put("marks", "m", r#"{"after":"cut-off"}"#).await;
    healthy.next_matching(T, |c| c.doc_id == "m").await;
}

#[tokio::test]
async fn an_oversize_frame_is_logged_as_the_reason_the_session_closed() {
    use peat_sidecar::mesh::proto::{DocSync, Frame, SyncBatch, frame::Kind, mesh_client::MeshClient};
    let b = Node::start(Spec::new("node-b")).await;
    b.put("safe", "doc", r#"{"keep":"me"}"#).await;
    let mut client = MeshClient::connect(format!("http://{}", b.mesh_addr)).await.expect("connect");
    let (tx, out) = tokio::sync::mpsc::channel(1);
    let mut rx = client.session(tokio_stream::wrappers::ReceiverStream::new(out)).await.expect("session").into_inner();
    let huge = DocSync { collection: "safe".into(), doc_id: "doc".into(), message: vec![0u8; 17 << 20] };
    let _ = tx.send(Frame { kind: Some(Kind::Sync(SyncBatch { docs: vec![huge] })) }).await;
    let ended = tokio::time::timeout(T, async { while let Some(Ok(_)) = rx.next().await {} }).await;
    assert!(ended.is_ok(), "the session stayed open after an oversize frame");

    let line = log_line(&b, "oversize frame (the limit is 16777216 bytes)").await;
    assert!(line.contains("WARN") && line.contains("mesh session refused"), "{line}");
    assert_eq!(b.get("safe", "doc").await.as_deref(), Some(r#"{"keep":"me"}"#));
    assert_eq!(b.list("safe").await, vec!["doc".to_owned()]);
    b.put("safe", "after", r#"{"ok":true}"#).await;
    assert_eq!(b.get("safe", "after").await.as_deref(), Some(r#"{"ok":true}"#));
}
