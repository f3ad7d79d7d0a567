//! Mesh behaviour between real `peat-sidecar` processes on loopback: sync,
//! chains, merges, deletes, the change feed, formation authentication, TLS,
//! restarts, pause/resume, peer management, sync statistics, hostile frames,
//! and first contact (or a wiped store) reconciled by digest.

#[path = "support/mesh_cluster.rs"]
mod mesh_cluster;

use std::time::{Duration, Instant};

use mesh_cluster::*;
use peat_sidecar::proto::peat::sidecar::v1::*;

const T: Duration = Duration::from_secs(15);

async fn pair() -> (Node, Node) {
    let b = Node::start(Spec::new("node-b")).await;
    let a = Node::start(Spec::new("node-a").peer(&b)).await;
    wait_until("a and b connected", T, || async { a.connected_to("node-b").await && b.connected_to("node-a").await })
        .await;
    (a, b)
}

#[tokio::test]
async fn put_on_one_node_is_visible_on_the_other_both_ways() {
    let (a, b) = pair().await;
    a.put("notes", "n1", r#"{"text":"from a","n":1}"#).await;
    b.wait_doc("notes", "n1", Some(r#"{"n":1,"text":"from a"}"#), T).await;
    b.put("notes", "n2", r#"{"text":"from b"}"#).await;
    a.wait_doc("notes", "n2", Some(r#"{"text":"from b"}"#), T).await;
    // An update of an existing document travels too.
    a.put("notes", "n2", r#"{"text":"edited on a"}"#).await;
    b.wait_doc("notes", "n2", Some(r#"{"text":"edited on a"}"#), T).await;
    wait_identical(&[&a, &b], "notes", T).await;
}

#[tokio::test]
async fn chain_a_b_c_relays_changes_between_unconnected_ends() {
    let b = Node::start(Spec::new("node-b")).await;
    let a = Node::start(Spec::new("node-a").peer(&b)).await;
    let c = Node::start(Spec::new("node-c").peer(&b)).await;
    wait_until("chain connected", T, || async { a.connected_to("node-b").await && c.connected_to("node-b").await })
        .await;

    a.put("chain", "from-a", r#"{"origin":"a"}"#).await;
    c.wait_doc("chain", "from-a", Some(r#"{"origin":"a"}"#), T).await;
    c.put("chain", "from-c", r#"{"origin":"c"}"#).await;
    a.wait_doc("chain", "from-c", Some(r#"{"origin":"c"}"#), T).await;
    // Concurrent edits at both ends of the chain still meet in the middle.
    // Both ends pause meanwhile, so neither put can see the other's first.
    a.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    c.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    a.put("chain", "shared", r#"{"a":1}"#).await;
    c.put("chain", "shared", r#"{"c":3}"#).await;
    a.api().start_sync(StartSyncRequest::default()).await.unwrap();
    c.api().start_sync(StartSyncRequest::default()).await.unwrap();
    let docs = wait_identical(&[&a, &b, &c], "chain", T).await;
    assert_eq!(docs["shared"], r#"{"a":1,"c":3}"#);

    // A and C never had a session with each other.
    assert!(a.peers().await.iter().all(|p| p.endpoint_id != "node-c"));
    assert!(c.peers().await.iter().all(|p| p.endpoint_id != "node-a"));
}

#[tokio::test]
async fn concurrent_edits_to_different_fields_converge_to_the_union() {
    let (a, b) = pair().await;
    a.put("docs", "d", r#"{"title":"t","count":0}"#).await;
    b.wait_doc("docs", "d", Some(r#"{"count":0,"title":"t"}"#), T).await;

    // Pause both so the edits are truly concurrent, then resume.
    a.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    b.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    a.put("docs", "d", r#"{"title":"t","count":0,"from_a":"x"}"#).await;
    b.put("docs", "d", r#"{"title":"t","count":0,"from_b":[1,2]}"#).await;
    // Different documents created independently on both sides also merge.
    a.put("docs", "born-twice", r#"{"a":true}"#).await;
    b.put("docs", "born-twice", r#"{"b":true}"#).await;
    a.api().start_sync(StartSyncRequest::default()).await.unwrap();
    b.api().start_sync(StartSyncRequest::default()).await.unwrap();

    let docs = wait_identical(&[&a, &b], "docs", T).await;
    assert_eq!(docs["d"], r#"{"count":0,"from_a":"x","from_b":[1,2],"title":"t"}"#);
    assert_eq!(docs["born-twice"], r#"{"a":true,"b":true}"#);
}

#[tokio::test]
async fn delete_propagates_and_subscribe_on_the_peer_sees_it() {
    let (a, b) = pair().await;
    let mut watch_b = Watcher::start(&b, &["items"]).await;
    a.put("items", "i1", r#"{"v":1}"#).await;
    let (_, change) = watch_b.next_matching(T, |c| c.doc_id == "i1").await;
    assert_eq!(change.change_type.as_known(), Some(ChangeType::CHANGE_TYPE_UPSERT));
    assert_eq!(change.json_data.as_deref(), Some(r#"{"v":1}"#));
    assert_eq!(change.collection, "items");

    a.delete("items", "i1").await;
    let (_, change) = watch_b.next_matching(T, |c| c.doc_id == "i1").await;
    assert_eq!(change.change_type.as_known(), Some(ChangeType::CHANGE_TYPE_DELETE));
    assert_eq!(change.json_data, None);
    assert_eq!(b.get("items", "i1").await, None);
    assert!(b.list("items").await.is_empty());

    // Re-creating after a delete is a fresh write that also propagates.
    a.put("items", "i1", r#"{"v":2}"#).await;
    b.wait_doc("items", "i1", Some(r#"{"v":2}"#), T).await;
}

#[tokio::test]
async fn delete_concurrent_with_an_update_wins_until_the_next_put() {
    let (a, b) = pair().await;
    a.put("race", "r", r#"{"x":1,"y":1}"#).await;
    b.wait_doc("race", "r", Some(r#"{"x":1,"y":1}"#), T).await;
    a.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    b.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    a.delete("race", "r").await;
    b.put("race", "r", r#"{"x":1,"y":2,"z":3}"#).await;
    a.api().start_sync(StartSyncRequest::default()).await.unwrap();
    b.api().start_sync(StartSyncRequest::default()).await.unwrap();
    // Both converge on "deleted": the update did not touch the tombstone.
    a.wait_doc("race", "r", None, T).await;
    b.wait_doc("race", "r", None, T).await;
    wait_identical(&[&a, &b], "race", T).await;
    // A later put revives it with exactly the new content on every node.
    b.put("race", "r", r#"{"fresh":true}"#).await;
    a.wait_doc("race", "r", Some(r#"{"fresh":true}"#), T).await;
    assert_eq!(b.get("race", "r").await.as_deref(), Some(r#"{"fresh":true}"#));
}

#[tokio::test]
async fn subscribe_on_b_sees_writes_made_on_a_in_order() {
    let (a, b) = pair().await;
    let mut watch_b = Watcher::start(&b, &[]).await;
    for i in 0..20 {
        a.put("feed", &format!("k{i:02}"), &format!(r#"{{"i":{i}}}"#)).await;
    }
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 20 {
        let (_, change) = watch_b.next_matching(T, |c| c.collection == "feed").await;
        assert_eq!(change.change_type.as_known(), Some(ChangeType::CHANGE_TYPE_UPSERT));
        seen.insert(change.doc_id.clone(), change.json_data.clone().unwrap());
    }
    assert_eq!(seen["k07"], r#"{"i":7}"#);
}

/// Starts a node that dials `b` with a different formation and checks nothing flows.
async fn assert_refused(a: Node, b: Node, needle: &str) {
    a.put("secret", "s", r#"{"x":1}"#).await;
    b.put("secret", "t", r#"{"y":2}"#).await;
    assert_log(&a, needle).await;
    assert_log(&b, needle).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.get("secret", "s").await, None, "document crossed a refused session");
    assert_eq!(a.get("secret", "t").await, None, "document crossed a refused session");
    for node in [&a, &b] {
        let stats = node.stats().await;
        assert_eq!((stats.connected_peers, stats.bytes_sent, stats.bytes_received), (0, 0, 0));
        assert!(node.peers().await.iter().all(|p| !p.connected));
    }
}

#[tokio::test]
async fn wrong_shared_key_is_refused_on_both_sides() {
    let b = Node::start(Spec::new("node-b")).await;
    let mut spec = Spec::new("node-a").peer(&b);
    spec.shared_key = Some("a-different-formation-key-0123456789".into());
    let a = Node::start(spec).await;
    assert_refused(a, b, "authentication failed").await;
}

#[tokio::test]
async fn wrong_app_id_is_refused_on_both_sides() {
    let b = Node::start(Spec::new("node-b")).await;
    let mut spec = Spec::new("node-a").peer(&b);
    spec.app_id = "another-formation".into();
    let a = Node::start(spec).await;
    assert_refused(a, b, "app id mismatch").await;
}

#[tokio::test]
async fn tls_mesh_syncs_and_refuses_plaintext_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::new(tmp.path(), "formation");
    let mut spec_b = Spec::new("node-b");
    spec_b.tls = Some(pki.issue("node-b", &[]));
    let b = Node::start(spec_b).await;
    let mut spec_a = Spec::new("node-a").peer(&b);
    spec_a.tls = Some(pki.issue("node-a", &[]));
    let a = Node::start(spec_a).await;
    a.put("tls", "t1", r#"{"over":"tls"}"#).await;
    b.wait_doc("tls", "t1", Some(r#"{"over":"tls"}"#), T).await;
    b.put("tls", "t2", r#"{"back":true}"#).await;
    a.wait_doc("tls", "t2", Some(r#"{"back":true}"#), T).await;
    assert_log(&b, "tls=true").await;

    // A plaintext node with the right key gets nowhere.
    let plain = Node::start(Spec::new("node-p").peer(&b)).await;
    plain.put("tls", "p1", r#"{"plain":true}"#).await;
    assert_log(&plain, "a peer whose mesh requires TLS closes such connections").await;
    assert_log(&b, "plaintext connection to a TLS mesh listener").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(b.get("tls", "p1").await, None);
    assert!(!b.connected_to("node-p").await);
    let stats = plain.stats().await;
    assert_eq!((stats.connected_peers, stats.bytes_sent, stats.bytes_received), (0, 0, 0));

    // A TLS client with a certificate from another CA is refused too.
    let rogue_pki = TestPki::new(&tmp.path().join("rogue"), "rogue");
    let mut spec_r = Spec::new("node-r").peer(&b);
    spec_r.tls = Some(rogue_pki.issue("node-r", &[]));
    let rogue = Node::start(spec_r).await;
    rogue.put("tls", "r1", r#"{"rogue":true}"#).await;
    assert_log(&rogue, "invalid peer certificate: UnknownIssuer").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(b.get("tls", "r1").await, None);
    assert_eq!(rogue.stats().await.bytes_received, 0);
}

#[tokio::test]
async fn restart_during_live_sync_loses_nothing_and_reconnects() {
    let (a, mut b) = pair().await;
    let writer = async {
        for i in 0..300 {
            a.put("live", &format!("d{i:03}"), &format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(64))).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let restarter = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        b.stop(false).await; // a crash, not a clean stop
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.relaunch().await;
        b.put("live", "from-b-after-restart", r#"{"b":1}"#).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.restart().await; // and a clean restart
    };
    tokio::join!(writer, restarter);
    let docs = wait_identical(&[&a, &b], "live", Duration::from_secs(30)).await;
    assert_eq!(docs.len(), 301);
    wait_until("reconnected", T, || async { a.connected_to("node-b").await && b.connected_to("node-a").await }).await;
    a.put("live", "after", r#"{"ok":true}"#).await;
    b.wait_doc("live", "after", Some(r#"{"ok":true}"#), T).await;
}

#[tokio::test]
async fn stop_sync_pauses_and_start_sync_resumes() {
    let (a, b) = pair().await;
    a.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    let stats = a.stats().await;
    assert!(!stats.sync_active);
    assert!(!a.status().await.sync_active);
    wait_until("sessions closed", T, || async { !a.connected_to("node-b").await && !b.connected_to("node-a").await })
        .await;
    let before = (a.stats().await, b.stats().await);

    // Writes are still accepted locally on both sides, and nothing moves.
    a.put("paused", "p1", r#"{"while":"paused"}"#).await;
    b.put("paused", "p2", r#"{"b":"too"}"#).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.get("paused", "p1").await, None);
    assert_eq!(a.get("paused", "p2").await, None);
    let after = (a.stats().await, b.stats().await);
    assert_eq!(before.0.bytes_sent, after.0.bytes_sent);
    assert_eq!(before.1.bytes_received, after.1.bytes_received);
    assert_eq!(after.0.connected_peers, 0);

    a.api().start_sync(StartSyncRequest::default()).await.unwrap();
    assert!(a.stats().await.sync_active);
    b.wait_doc("paused", "p1", Some(r#"{"while":"paused"}"#), T).await;
    a.wait_doc("paused", "p2", Some(r#"{"b":"too"}"#), T).await;
}

#[tokio::test]
async fn connect_and_disconnect_peer_persist_across_restarts() {
    let b = Node::start(Spec::new("node-b")).await;
    let mut a = Node::start(Spec::new("node-a")).await;
    assert!(a.peers().await.is_empty());

    let err = a
        .api()
        .connect_peer(ConnectPeerRequest {
            endpoint_id: "node-b".into(),
            addresses: vec![b.mesh_addr.clone()],
            relay_url: "https://relay.invalid".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, connectrpc::ErrorCode::InvalidArgument, "{err:?}");

    a.dial(&b).await;
    wait_until("connected", T, || async { a.connected_to("node-b").await }).await;
    let listed = a.peers().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].addresses, vec![b.mesh_addr.clone()]);
    a.put("peers", "x", r#"{"x":1}"#).await;
    b.wait_doc("peers", "x", Some(r#"{"x":1}"#), T).await;

    // The peer was persisted: after a restart it is known and dialed again.
    a.restart().await;
    assert!(a.peers().await.iter().any(|p| p.endpoint_id == "node-b"));
    wait_until("reconnected after restart", T, || async { a.connected_to("node-b").await }).await;
    a.put("peers", "y", r#"{"y":2}"#).await;
    b.wait_doc("peers", "y", Some(r#"{"y":2}"#), T).await;

    a.api()
        .disconnect_peer(DisconnectPeerRequest { endpoint_id: "node-b".into(), ..Default::default() })
        .await
        .unwrap();
    wait_until("disconnected", T, || async { !b.connected_to("node-a").await }).await;
    assert!(a.peers().await.is_empty());
    a.put("peers", "z", r#"{"z":3}"#).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.get("peers", "z").await, None);

    // Forgotten for good: a restart does not bring it back.
    a.restart().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(a.peers().await.is_empty());
    assert_eq!(b.get("peers", "z").await, None);
    let err = a
        .api()
        .disconnect_peer(DisconnectPeerRequest { endpoint_id: "node-b".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code, connectrpc::ErrorCode::NotFound, "{err:?}");
}

#[tokio::test]
async fn sync_stats_count_real_bytes() {
    let (a, b) = pair().await;
    let (a0, b0) = (a.stats().await, b.stats().await);
    assert!(a0.sync_active && a0.connected_peers == 1 && b0.connected_peers == 1);
    // Incompressible content, so the byte counts cannot undercut it.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..25 {
        let payload: String = (0..2000)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                format!("{:02x}", (seed >> 56) as u8)
            })
            .collect::<String>()
            .chars()
            .take(4000)
            .collect();
        a.put("bytes", &format!("b{i}"), &format!(r#"{{"payload":"{payload}"}}"#)).await;
    }
    b.wait_count("bytes", 25, T).await;
    // Counters settle once the final acknowledgements are through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a1, b1) = (a.stats().await, b.stats().await);
    let sent = a1.bytes_sent - a0.bytes_sent;
    let received = b1.bytes_received - b0.bytes_received;
    // 25 × 4000 hex digits carry 25 × 2000 bytes of information: no encoding
    // (Automerge compresses columns) can move less; plain JSON is the ceiling's base.
    let (information, json) = (25 * 2000, 25 * 4000);
    assert!(sent >= information, "A sent {sent} bytes for {information} bytes of information");
    assert!(sent < json * 2, "A sent {sent} bytes for {json} bytes of JSON");
    assert!(received >= information && received <= sent + 64, "B received {received}, A sent {sent}");
    assert!(b1.bytes_sent > b0.bytes_sent, "B's acknowledgements are counted");
}

/// Frames crafted with the generated client: a peer that authenticates but
/// then misbehaves, and one that sends garbage before authenticating.
mod hostile {
    use super::*;
    use peat_sidecar::mesh::auth::{Role, Transcript};
    use peat_sidecar::mesh::proto::{self, Frame, frame::Kind, mesh_client::MeshClient};
    use tokio_stream::StreamExt;

    struct Raw {
        tx: tokio::sync::mpsc::Sender<Frame>,
        rx: tonic::Streaming<Frame>,
    }

    async fn open(addr: &str) -> Raw {
        let mut client = MeshClient::connect(format!("http://{addr}")).await.expect("connect");
        let (tx, out) = tokio::sync::mpsc::channel(8);
        let rx = client.session(tokio_stream::wrappers::ReceiverStream::new(out)).await.expect("session").into_inner();
        Raw { tx, rx }
    }

    /// Handshakes as `node-x` with the right key; returns the open session.
    async fn authenticated(addr: &str) -> Raw {
        let mut raw = open(addr).await;
        let nonce = vec![7u8; 32];
        let hello = proto::Hello {
            protocol_version: peat_sidecar::mesh::session::PROTOCOL_VERSION,
            node_id: "node-x".into(),
            app_id: APP.into(),
            nonce: nonce.clone(),
            store_epoch: "x-epoch".into(),
        };
        raw.tx.send(Frame { kind: Some(Kind::Hello(hello)) }).await.unwrap();
        let Some(Ok(Frame { kind: Some(Kind::Hello(theirs)) })) = raw.rx.next().await else { panic!("no Hello") };
        let transcript = Transcript {
            app_id: APP,
            dialer_id: "node-x",
            dialer_nonce: &nonce,
            listener_id: &theirs.node_id,
            listener_nonce: &theirs.nonce,
        };
        let proof = transcript.prove(KEY.as_bytes(), Role::Dialer);
        raw.tx.send(Frame { kind: Some(Kind::Auth(proto::Auth { proof })) }).await.unwrap();
        let Some(Ok(Frame { kind: Some(Kind::Auth(_)) })) = raw.rx.next().await else { panic!("no Auth") };
        raw.tx
            .send(Frame { kind: Some(Kind::Resume(proto::Resume { cursor: 0, epoch: String::new() })) })
            .await
            .unwrap();
        raw
    }

    /// Reads until the session ends; returns the refusal reason, if any was sent.
    async fn drain(raw: &mut Raw) -> Option<String> {
        let mut reason = None;
        let ended = tokio::time::timeout(T, async {
            while let Some(frame) = raw.rx.next().await {
                match frame {
                    Ok(Frame { kind: Some(Kind::Refusal(r)) }) => reason = Some(r.reason),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the session was not closed");
        reason
    }

    async fn assert_unharmed(a: &Node, b: &Node, marker: &str) {
        assert_eq!(b.get("safe", "doc").await.as_deref(), Some(r#"{"keep":"me"}"#));
        assert!(b.list("safe").await.iter().all(|id| id == "doc" || id.starts_with("after-")));
        a.put("safe", marker, r#"{"still":"syncing"}"#).await;
        b.wait_doc("safe", marker, Some(r#"{"still":"syncing"}"#), T).await;
    }

    #[tokio::test]
    async fn malformed_and_oversize_frames_close_the_session_and_leave_data_alone() {
        let (a, b) = pair().await;
        a.put("safe", "doc", r#"{"keep":"me"}"#).await;
        b.wait_doc("safe", "doc", Some(r#"{"keep":"me"}"#), T).await;

        // Garbage instead of a Hello.
        let mut raw = open(&b.mesh_addr).await;
        raw.tx.send(Frame { kind: None }).await.unwrap();
        drain(&mut raw).await;
        assert_log(&b, "empty frame").await;

        // An undecodable Automerge sync message after authenticating.
        let mut raw = authenticated(&b.mesh_addr).await;
        let junk =
            proto::DocSync { collection: "safe".into(), doc_id: "doc".into(), message: vec![0x42, 0xff, 0x00, 9] };
        raw.tx.send(Frame { kind: Some(Kind::Sync(proto::SyncBatch { docs: vec![junk] })) }).await.unwrap();
        let reason = drain(&mut raw).await;
        assert!(reason.as_deref().is_some_and(|r| r.contains("undecodable")), "{reason:?}");
        assert_log(&b, "undecodable sync message").await;
        assert_unharmed(&a, &b, "after-junk").await;

        // A bad document key.
        let mut raw = authenticated(&b.mesh_addr).await;
        let bad = proto::DocSync { collection: "../etc".into(), doc_id: "".into(), message: vec![] };
        raw.tx.send(Frame { kind: Some(Kind::Sync(proto::SyncBatch { docs: vec![bad] })) }).await.unwrap();
        drain(&mut raw).await;
        assert_log(&b, "bad document key").await;

        // Too many documents in one batch.
        let mut raw = authenticated(&b.mesh_addr).await;
        let docs = (0..65)
            .map(|i| proto::DocSync { collection: "safe".into(), doc_id: format!("f{i}"), message: vec![] })
            .collect();
        raw.tx.send(Frame { kind: Some(Kind::Sync(proto::SyncBatch { docs })) }).await.unwrap();
        drain(&mut raw).await;
        assert_log(&b, "exceeds the limit").await;

        // A frame beyond the 16 MiB limit.
        let mut raw = authenticated(&b.mesh_addr).await;
        let huge = proto::DocSync { collection: "safe".into(), doc_id: "doc".into(), message: vec![0u8; 17 << 20] };
        let _ = raw.tx.send(Frame { kind: Some(Kind::Sync(proto::SyncBatch { docs: vec![huge] })) }).await;
        drain(&mut raw).await;
        assert_unharmed(&a, &b, "after-huge").await;
        assert_eq!(b.list("safe").await.len(), 3, "no document appeared from hostile frames");

        // The daemon logged why each session ended and kept running.
        assert!(b.log().matches("mesh session refused").count() >= 4, "{}", b.log());
        assert_eq!(b.status().await.node_id, "node-b");
    }

    #[tokio::test]
    async fn malformed_digest_frames_close_the_session() {
        let (a, b) = pair().await;
        a.put("safe", "doc", r#"{"keep":"me"}"#).await;
        b.wait_doc("safe", "doc", Some(r#"{"keep":"me"}"#), T).await;

        // Without a cursor the node expects digest round 0; any other round is refused.
        let mut raw = authenticated(&b.mesh_addr).await;
        let wrong_round = proto::Digest { round: 7, last: true, ..Default::default() };
        raw.tx.send(Frame { kind: Some(Kind::Digest(wrong_round)) }).await.unwrap();
        let reason = drain(&mut raw).await;
        assert!(reason.as_deref().is_some_and(|r| r.contains("digest round")), "{reason:?}");

        // Counts without their sums.
        let mut raw = authenticated(&b.mesh_addr).await;
        let unpaired = proto::Digest { round: 0, counts: vec![1, 2], sums: vec![3], last: true, ..Default::default() };
        raw.tx.send(Frame { kind: Some(Kind::Digest(unpaired)) }).await.unwrap();
        let reason = drain(&mut raw).await;
        assert!(reason.as_deref().is_some_and(|r| r.contains("unpaired")), "{reason:?}");

        // A round 0 that summarises fewer buckets than agreed.
        let mut raw = authenticated(&b.mesh_addr).await;
        let short = proto::Digest { round: 0, counts: vec![0; 3], sums: vec![0; 3], last: true, ..Default::default() };
        raw.tx.send(Frame { kind: Some(Kind::Digest(short)) }).await.unwrap();
        let reason = drain(&mut raw).await;
        assert!(reason.as_deref().is_some_and(|r| r.contains("shorter than agreed")), "{reason:?}");

        assert_log(&b, "digest round").await;
        assert_unharmed(&a, &b, "after-digest").await;
    }
}

#[tokio::test]
async fn status_reports_mesh_endpoint_and_ready_phase() {
    let (a, _b) = pair().await;
    let status = a.status().await;
    assert_eq!(status.endpoint_addr, a.mesh_addr);
    assert!(status.endpoint_addr.starts_with("127.0.0.1:"));
    assert_eq!(status.connected_peers, 1);
    let started = Instant::now();
    wait_until("phase READY", T, || async { a.status().await.phase.as_known() == Some(NodePhase::NODE_PHASE_READY) })
        .await;
    assert!(started.elapsed() < T);
}

#[tokio::test]
async fn nodes_dialing_each_other_keep_one_session() {
    let (a, b) = pair().await;
    b.dial(&a).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for node in [&a, &b] {
            assert!(node.stats().await.connected_peers <= 1, "{} holds two sessions", node.spec.node_id);
            assert_eq!(node.peers().await.len(), 1, "{} lists the pair once", node.spec.node_id);
        }
    }
    a.put("one", "x", r#"{"x":1}"#).await;
    b.wait_doc("one", "x", Some(r#"{"x":1}"#), T).await;
    b.put("one", "y", r#"{"y":1}"#).await;
    a.wait_doc("one", "y", Some(r#"{"y":1}"#), T).await;
    assert_eq!((a.stats().await.connected_peers, b.stats().await.connected_peers), (1, 1));
}

/// Waits until the byte counters of `nodes` stop moving; returns bytes sent
/// plus received by each.
async fn settled_bytes(nodes: &[&Node]) -> Vec<u64> {
    let read = || async {
        let mut out = Vec::new();
        for node in nodes {
            let stats = node.stats().await;
            out.push(stats.bytes_sent + stats.bytes_received);
        }
        out
    };
    let mut last = read().await;
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(800) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = read().await;
        if now != last {
            since = Instant::now();
            last = now;
        }
    }
    last
}

async fn connect(from: &Node, to: &Node) {
    from.dial(to).await;
    wait_until("connected", T, || async {
        from.connected_to(&to.spec.node_id).await && to.connected_to(&from.spec.node_id).await
    })
    .await;
}

fn base_json(i: usize) -> String {
    format!(r#"{{"n":{i},"text":"document number {i} of the shared base set","tags":["a","b","c"]}}"#)
}

/// A hub A with spokes B and C; `count` documents written on A and present everywhere.
async fn hub_with_two_spokes(count: usize) -> (Node, Node, Node) {
    let a = Node::start(Spec::new("node-a")).await;
    let b = Node::start(Spec::new("node-b").peer(&a)).await;
    let c = Node::start(Spec::new("node-c").peer(&a)).await;
    wait_until("spokes connected", T, || async { a.connected_to("node-b").await && a.connected_to("node-c").await })
        .await;
    for i in 0..count {
        a.put("base", &format!("d{i:03}"), &base_json(i)).await;
    }
    b.wait_count("base", count, T).await;
    c.wait_count("base", count, T).await;
    (a, b, c)
}

#[tokio::test]
async fn first_contact_between_identical_nodes_moves_only_the_digest() {
    let (a, b, c) = hub_with_two_spokes(400).await;
    // B has had exactly one session (with A): its counters are the cost of
    // syncing these documents in full.
    let full = settled_bytes(&[&b]).await[0];

    connect(&b, &c).await;
    // Give the new link time to finish whatever it would send.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = settled_bytes(&[&b]).await[0];
    let link = after - full;
    println!("full sync of 400 documents: {full} bytes; first contact of identical nodes: {link} bytes");
    assert!(link * 10 < full, "first contact moved {link} bytes, a full sync costs {full}");
    assert!(link < 8_000, "first contact moved {link} bytes");

    let docs = wait_identical(&[&a, &b, &c], "base", T).await;
    assert_eq!(docs.len(), 400);
    assert_eq!(
        docs["d007"],
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&base_json(7)).unwrap()).unwrap()
    );
}

#[tokio::test]
async fn first_contact_between_different_stores_converges_everywhere() {
    let (a, b, c) = hub_with_two_spokes(200).await;
    a.api().stop_sync(StopSyncRequest::default()).await.unwrap();
    wait_until("hub paused", T, || async { !b.connected_to("node-a").await && !c.connected_to("node-a").await }).await;

    // B and C diverge while apart: updates, deletes, new documents, and a
    // document edited on both sides.
    for i in 0..10 {
        b.put("base", &format!("d{i:03}"), &format!(r#"{{"n":{i},"edited":"on b"}}"#)).await;
        c.put("base", &format!("d{:03}", 100 + i), &format!(r#"{{"n":{},"edited":"on c"}}"#, 100 + i)).await;
        b.put("base", &format!("only-b-{i}"), r#"{"from":"b"}"#).await;
        c.put("base", &format!("only-c-{i}"), r#"{"from":"c"}"#).await;
    }
    b.delete("base", "d150").await;
    b.put("base", "d050", r#"{"n":50,"b":true}"#).await;
    c.put("base", "d050", r#"{"n":50,"c":true}"#).await;

    // First session between B and C: neither has a cursor for the other.
    connect(&b, &c).await;
    let docs = wait_identical(&[&b, &c], "base", T).await;
    assert_eq!(docs.len(), 200 - 1 + 20);
    assert_eq!(docs["d003"], r#"{"edited":"on b","n":3}"#);
    assert_eq!(docs["d103"], r#"{"edited":"on c","n":103}"#);
    assert_eq!(docs["only-b-9"], r#"{"from":"b"}"#);
    assert_eq!(docs["only-c-0"], r#"{"from":"c"}"#);
    assert_eq!(docs["d050"], r#"{"b":true,"c":true,"n":50}"#);
    assert!(!docs.contains_key("d150"));

    // The hub catches up on everything, and an empty newcomer gets it all.
    a.api().start_sync(StartSyncRequest::default()).await.unwrap();
    let d = Node::start(Spec::new("node-d").peer(&c)).await;
    let everywhere = wait_identical(&[&a, &b, &c, &d], "base", T).await;
    assert_eq!(everywhere, docs);
}

#[tokio::test]
async fn a_wiped_node_gets_everything_back_by_digest() {
    let (a, mut b) = pair().await;
    for i in 0..50 {
        a.put("wipe", &format!("w{i}"), &format!(r#"{{"i":{i}}}"#)).await;
    }
    b.wait_count("wipe", 50, T).await;

    // B loses its store: a new epoch voids A's cursor for it, and B has none for A.
    b.stop(true).await;
    std::fs::remove_dir_all(b.dir.join("data")).unwrap();
    b.relaunch().await;
    b.put("wipe", "after-wipe", r#"{"new":"on b"}"#).await;
    let docs = wait_identical(&[&a, &b], "wipe", T).await;
    assert_eq!(docs.len(), 51);
    assert_eq!(docs["w7"], r#"{"i":7}"#);
    assert_eq!(docs["after-wipe"], r#"{"new":"on b"}"#);
}
