//! The API end to end: the real binary, called with the generated client over
//! Connect (proto and JSON), gRPC and gRPC-Web, over HTTP/1.1 and HTTP/2 on
//! TCP and over a Unix socket; plus health, reflection, restarts, systemd
//! readiness, SIGTERM and encryption at rest.

mod support;

use std::time::Duration;

use connectrpc::{ErrorCode, Protocol};
use peat_sidecar::proto::peat::sidecar::v1::*;
use support::notify::NotifySocket;
use support::{Client, Listen, SidecarOptions, grpc_frame, put, raw_post, runtime};

/// Awaits the next message of a `Subscribe` stream as an owned `DocumentChange`.
macro_rules! next_change {
    ($stream:expr) => {{
        let message = tokio::time::timeout(Duration::from_secs(10), $stream.message())
            .await
            .expect("a change within 10 s")
            .expect("the change stream failed")
            .expect("the change stream ended");
        let change: DocumentChange = message.to_owned_message();
        change
    }};
}

fn get(collection: &str, doc_id: &str) -> GetDocumentRequest {
    GetDocumentRequest { collection: collection.into(), doc_id: doc_id.into(), ..Default::default() }
}

fn delete(collection: &str, doc_id: &str) -> DeleteDocumentRequest {
    DeleteDocumentRequest { collection: collection.into(), doc_id: doc_id.into(), ..Default::default() }
}

fn list(collection: &str) -> ListDocumentsRequest {
    ListDocumentsRequest { collection: collection.into(), ..Default::default() }
}

async fn get_json(client: &Client, collection: &str, doc_id: &str) -> Option<serde_json::Value> {
    let response = client.get_document(get(collection, doc_id)).await.expect("GetDocument").into_owned();
    response.json_data.map(|json| serde_json::from_str(&json).expect("GetDocument returns JSON"))
}

async fn list_ids(client: &Client, collection: &str) -> Vec<String> {
    client.list_documents(list(collection)).await.expect("ListDocuments").into_owned().doc_ids
}

/// Calls every method of the service through `client`; `tag` keeps the
/// documents of concurrent combinations apart.
async fn exercise_every_method(client: &Client, tag: &str) {
    let status = client.get_status(GetStatusRequest::default()).await.expect("GetStatus").into_owned();
    assert!(status.node_id.starts_with("node-"), "generated node id, got {:?}", status.node_id);
    assert_eq!(status.phase.as_known(), Some(NodePhase::NODE_PHASE_READY));
    exercise_peer_methods(client, tag).await;

    let coll = format!("docs.{tag}");
    let other = format!("other.{tag}");
    let mut changes =
        client.subscribe(SubscribeRequest { collections: vec![coll.clone()], ..Default::default() }).await.unwrap();

    // A document of another collection is filtered out of the stream.
    client.put_document(put(&other, "x", r#"{"skip":true}"#)).await.expect("PutDocument other");
    client
        .put_document(put(&coll, "d1", r#"{"name":"alpha","n":1,"tags":["a","b"],"nested":{"k":null}}"#))
        .await
        .unwrap();
    let change = next_change!(changes);
    assert_eq!((change.collection.as_str(), change.doc_id.as_str()), (coll.as_str(), "d1"));
    assert_eq!(change.change_type.as_known(), Some(ChangeType::CHANGE_TYPE_UPSERT));
    let data: serde_json::Value = serde_json::from_str(change.json_data.as_deref().unwrap()).unwrap();
    assert_eq!(data, serde_json::json!({"name":"alpha","n":1,"tags":["a","b"],"nested":{"k":null}}));

    assert_eq!(
        get_json(client, &coll, "d1").await,
        Some(serde_json::json!({"name":"alpha","n":1,"tags":["a","b"],"nested":{"k":null}}))
    );
    // Put replaces the content: dropped fields disappear.
    client.put_document(put(&coll, "d1", r#"{"name":"beta"}"#)).await.unwrap();
    assert_eq!(next_change!(changes).json_data.as_deref(), Some(r#"{"name":"beta"}"#));
    assert_eq!(get_json(client, &coll, "d1").await, Some(serde_json::json!({"name":"beta"})));

    client.put_document(put(&coll, "id:with/slash", r#"{}"#)).await.unwrap();
    assert_eq!(next_change!(changes).doc_id, "id:with/slash");
    assert_eq!(list_ids(client, &coll).await, ["d1", "id:with/slash"]);

    // A missing document is an absent json_data, not an error.
    assert_eq!(get_json(client, &coll, "missing").await, None);

    client.delete_document(delete(&coll, "d1")).await.expect("DeleteDocument");
    let change = next_change!(changes);
    assert_eq!((change.doc_id.as_str(), change.change_type.as_known()), ("d1", Some(ChangeType::CHANGE_TYPE_DELETE)));
    assert_eq!(change.json_data, None);
    assert_eq!(get_json(client, &coll, "d1").await, None);
    assert_eq!(list_ids(client, &coll).await, ["id:with/slash"]);
    // Deleting what does not exist is fine and publishes nothing.
    client.delete_document(delete(&coll, "d1")).await.unwrap();
    client.delete_document(delete(&coll, "never")).await.unwrap();

    // A later Put revives, with exactly the new content.
    client.put_document(put(&coll, "d1", r#"{"revived":1}"#)).await.unwrap();
    let change = next_change!(changes);
    assert_eq!((change.doc_id.as_str(), change.change_type.as_known()), ("d1", Some(ChangeType::CHANGE_TYPE_UPSERT)));
    assert_eq!(get_json(client, &coll, "d1").await, Some(serde_json::json!({"revived":1})));
    assert_eq!(list_ids(client, &coll).await, ["d1", "id:with/slash"]);
    assert_eq!(list_ids(client, &other).await, ["x"]);

    exercise_typed_collections(client, tag).await;
}

/// Peer methods of the local API (the mesh itself is tested elsewhere): a
/// peer added with ConnectPeer is listed, not connected (nothing listens on
/// its address), and DisconnectPeer forgets it. Each combination uses its
/// own peer id, so concurrent combinations do not interfere.
async fn exercise_peer_methods(client: &Client, tag: &str) {
    let peer_id = format!("peer-{tag}");
    let find = |peers: Vec<PeerInfo>| peers.into_iter().find(|p| p.endpoint_id == peer_id);
    client
        .connect_peer(ConnectPeerRequest {
            endpoint_id: peer_id.clone(),
            addresses: vec!["127.0.0.1:9".into()],
            ..Default::default()
        })
        .await
        .expect("ConnectPeer");
    let listed = find(client.list_peers(ListPeersRequest::default()).await.expect("ListPeers").into_owned().peers)
        .expect("the added peer is listed");
    assert_eq!(listed.addresses, ["127.0.0.1:9"]);
    assert!(!listed.connected);
    client
        .disconnect_peer(DisconnectPeerRequest { endpoint_id: peer_id.clone(), ..Default::default() })
        .await
        .expect("DisconnectPeer");
    assert!(find(client.list_peers(ListPeersRequest::default()).await.unwrap().into_owned().peers).is_none());
    let err = client
        .disconnect_peer(DisconnectPeerRequest { endpoint_id: peer_id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    let err = client
        .connect_peer(ConnectPeerRequest { endpoint_id: peer_id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
    assert!(err.message.as_deref().unwrap_or_default().contains("addresses"), "{err:?}");

    let stats = client.get_sync_stats(GetSyncStatsRequest::default()).await.expect("GetSyncStats").into_owned();
    assert_eq!((stats.connected_peers, stats.bytes_sent, stats.bytes_received), (0, 0, 0));
}

async fn exercise_typed_collections(client: &Client, tag: &str) {
    let platform = Platform {
        id: format!("p-{tag}"),
        platform_type: "uav".into(),
        name: "Hawk".into(),
        status: PlatformStatus::PLATFORM_STATUS_DEGRADED.into(),
        latitude: 52.5,
        longitude: -13.25,
        altitude_m: 120.0,
        readiness: 0.75,
        capabilities: vec!["eo".into(), "ir".into()],
        unit_id: Some("u1".into()),
        callsign: None,
        ..Default::default()
    };
    client.put_platform(PutPlatformRequest { platform: platform.clone().into(), ..Default::default() }).await.unwrap();
    let platforms = client.get_platforms(GetPlatformsRequest::default()).await.unwrap().into_owned().platforms;
    assert!(platforms.contains(&platform), "{platform:?} not in {platforms:?}");

    let cell = Cell {
        id: format!("c-{tag}"),
        name: "north".into(),
        status: CellStatus::CELL_STATUS_ACTIVE.into(),
        platform_count: 3,
        center_latitude: 1.5,
        center_longitude: 2.5,
        capabilities: vec!["relay".into()],
        formation_id: None,
        leader_id: Some(platform.id.clone()),
        ..Default::default()
    };
    client.put_cell(PutCellRequest { cell: cell.clone().into(), ..Default::default() }).await.unwrap();
    let cells = client.get_cells(GetCellsRequest::default()).await.unwrap().into_owned().cells;
    assert!(cells.contains(&cell), "{cell:?} not in {cells:?}");

    let track = Track {
        id: format!("t-{tag}"),
        source_platform: platform.id.clone(),
        cell_id: Some(cell.id.clone()),
        formation_id: None,
        latitude: -33.9,
        longitude: 151.2,
        altitude_m: Some(0.0),
        cep_m: None,
        heading_deg: Some(270.5),
        speed_mps: Some(3.0),
        classification: "truck".into(),
        confidence: 0.9,
        category: TrackCategory::TRACK_CATEGORY_VEHICLE.into(),
        ..Default::default()
    };
    client.put_track(PutTrackRequest { track: track.clone().into(), ..Default::default() }).await.unwrap();
    let tracks = client.get_tracks(GetTracksRequest::default()).await.unwrap().into_owned().tracks;
    assert!(tracks.contains(&track), "{track:?} not in {tracks:?}");

    let command = Command {
        id: format!("cmd-{tag}"),
        target_id: platform.id.clone(),
        command_type: "goto".into(),
        status: CommandStatus::COMMAND_STATUS_PENDING.into(),
        created_at: 1_700_000_000_123,
        expires_at: i64::MAX,
        payload_json: r#"{"lat":1}"#.into(),
        ..Default::default()
    };
    client.put_command(PutCommandRequest { command: command.clone().into(), ..Default::default() }).await.unwrap();
    let commands = client.get_commands(GetCommandsRequest::default()).await.unwrap().into_owned().commands;
    assert!(commands.contains(&command), "{command:?} not in {commands:?}");

    // Typed documents are ordinary JSON documents of their collection.
    let doc = get_json(client, "platforms", &platform.id).await.expect("the platform document");
    assert_eq!(doc["platform_type"], "uav");
    assert_eq!(doc["status"], "PLATFORM_STATUS_DEGRADED");

    // A typed put with no message names the missing field.
    let err = client.put_track(PutTrackRequest::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.as_deref().unwrap_or_default().contains("track"), "{err:?}");
}

#[test]
fn every_method_over_every_protocol_on_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = SidecarOptions::new(&dir.path().join("data")).start();
    runtime().block_on(async {
        let combos = [
            ("h1-connect-proto", sidecar.client_h1(Protocol::Connect, false)),
            ("h1-connect-json", sidecar.client_h1(Protocol::Connect, true)),
            ("h1-grpcweb", sidecar.client_h1(Protocol::GrpcWeb, false)),
            ("h2-grpc", sidecar.client_h2(Protocol::Grpc, false)),
            ("h2-grpc-json", sidecar.client_h2(Protocol::Grpc, true)),
            ("h2-connect-json", sidecar.client_h2(Protocol::Connect, true)),
            ("h2-grpcweb", sidecar.client_h2(Protocol::GrpcWeb, false)),
        ];
        futures::future::join_all(combos.iter().map(|(tag, client)| exercise_every_method(client, tag))).await;
    });
}

#[test]
fn every_method_over_every_protocol_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = SidecarOptions::new(&dir.path().join("data")).listen(Listen::Unix).start();
    let socket = sidecar.socket_path().unwrap();
    let mode = std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap();
    assert_eq!(mode & 0o777, 0o660, "default listen_socket_mode");
    runtime().block_on(async {
        let combos = [
            ("unix-grpc", sidecar.client_h2(Protocol::Grpc, false)),
            ("unix-connect-json", sidecar.client_h2(Protocol::Connect, true)),
            ("unix-connect-proto", sidecar.client_h2(Protocol::Connect, false)),
            ("unix-grpcweb", sidecar.client_h2(Protocol::GrpcWeb, false)),
        ];
        futures::future::join_all(combos.iter().map(|(tag, client)| exercise_every_method(client, tag))).await;
    });
    let (status, _) = sidecar.terminate();
    assert!(status.success());
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[test]
fn health_and_reflection_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = SidecarOptions::new(&dir.path().join("data")).start();
    runtime().block_on(async {
        // Connect JSON, as curl sends it.
        for service in ["", "peat.sidecar.v1.PeatSidecar"] {
            let body = serde_json::json!({ "service": service }).to_string().into_bytes();
            let response = raw_post(
                &sidecar,
                false,
                "/grpc.health.v1.Health/Check",
                &[("content-type", "application/json")],
                body,
            )
            .await;
            assert_eq!(response.status, 200, "{}", response.body_text());
            let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(json, serde_json::json!({"status":"SERVING"}), "service {service:?}");
        }
        // The watcher's health service exists only when the watcher runs.
        let body = serde_json::json!({ "service": "agent-watcher" }).to_string().into_bytes();
        let headers = [("content-type", "application/json")];
        let response = raw_post(&sidecar, false, "/grpc.health.v1.Health/Check", &headers, body).await;
        assert_eq!(response.status, 404, "{}", response.body_text());
        assert!(response.body_text().contains("not_found"), "{}", response.body_text());
        // gRPC over h2c, as grpc_health_probe sends it: empty HealthCheckRequest,
        // answer `status: SERVING` (field 1 = 1).
        let response = raw_post(
            &sidecar,
            true,
            "/grpc.health.v1.Health/Check",
            &[("content-type", "application/grpc"), ("te", "trailers")],
            grpc_frame(&[]),
        )
        .await;
        assert_eq!(response.grpc_header("grpc-status").as_deref(), Some("0"));
        assert_eq!(&response.body[..], &grpc_frame(&[0x08, 0x01])[..]);

        // Server reflection (v1), as grpcurl uses it.
        use connectrpc_reflection::wire::v1::ServerReflectionRequest;
        use connectrpc_reflection::wire::v1::server_reflection_request::MessageRequest;
        use connectrpc_reflection::wire::v1::server_reflection_response::MessageResponse;
        let base: http::Uri = sidecar.http_base().parse().unwrap();
        let connection = connectrpc::client::Http2Connection::lazy_plaintext(base.clone()).shared(4);
        let client = connectrpc_reflection::ServerReflectionClient::new(
            connection,
            connectrpc::client::ClientConfig::new(base).with_protocol(Protocol::Grpc),
        );
        let mut stream = client.server_reflection_info().await.unwrap();
        for request in [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("peat.sidecar.v1.PeatSidecar".into()),
        ] {
            let request = ServerReflectionRequest { message_request: Some(request), ..Default::default() };
            stream.send(request).await.unwrap();
        }
        stream.close_send();
        let listed = stream.message().await.unwrap().unwrap().to_owned_message();
        match listed.message_response.unwrap() {
            MessageResponse::ListServicesResponse(list) => {
                let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
                for expected in ["peat.sidecar.v1.PeatSidecar", "grpc.reflection.v1.ServerReflection"] {
                    assert!(names.contains(&expected), "{expected} not in {names:?}");
                }
            }
            other => panic!("expected a service list, got {other:?}"),
        }
        let file = stream.message().await.unwrap().unwrap().to_owned_message();
        match file.message_response.unwrap() {
            MessageResponse::FileDescriptorResponse(files) => {
                assert!(!files.file_descriptor_proto.is_empty());
                let bytes = &files.file_descriptor_proto[0];
                assert!(bytes.windows(b"PutDocument".len()).any(|w| w == b"PutDocument"));
            }
            other => panic!("expected a file descriptor, got {other:?}"),
        }
    });
}

#[test]
fn start_and_stop_sync_toggle_sync_active_and_a_disabled_mesh_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = SidecarOptions::new(&dir.path().join("data")).start();
    let rt = runtime();
    rt.block_on(async {
        let client = sidecar.client_h2(Protocol::Grpc, false);
        let active = || async { client.get_sync_stats(GetSyncStatsRequest::default()).await.unwrap().into_owned() };
        client.stop_sync(StopSyncRequest::default()).await.expect("StopSync");
        assert!(!active().await.sync_active);
        let status = client.get_status(GetStatusRequest::default()).await.unwrap().into_owned();
        assert!(!status.sync_active);
        client.start_sync(StartSyncRequest::default()).await.expect("StartSync");
        assert!(active().await.sync_active);
    });
    drop(sidecar);

    let sidecar = SidecarOptions::new(&dir.path().join("data")).arg("--mesh-listen").arg("disabled").start();
    rt.block_on(async {
        let client = sidecar.client_h1(Protocol::Connect, true);
        assert!(client.list_peers(ListPeersRequest::default()).await.unwrap().into_owned().peers.is_empty());
        let stats = client.get_sync_stats(GetSyncStatsRequest::default()).await.unwrap().into_owned();
        assert_eq!((stats.sync_active, stats.connected_peers, stats.bytes_sent), (false, 0, 0));
        let err = client.start_sync(StartSyncRequest::default()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedPrecondition, "{err:?}");
        assert_eq!(client.stop_sync(StopSyncRequest::default()).await.unwrap_err().code, ErrorCode::FailedPrecondition);
        let request = ConnectPeerRequest { addresses: vec!["127.0.0.1:9".into()], ..Default::default() };
        assert_eq!(client.connect_peer(request).await.unwrap_err().code, ErrorCode::FailedPrecondition);
        let request = DisconnectPeerRequest { endpoint_id: "x".into(), ..Default::default() };
        assert_eq!(client.disconnect_peer(request).await.unwrap_err().code, ErrorCode::FailedPrecondition);
    });
}

/// `grpcurl ADDR grpc.health.v1.Health/Check` resolves the method through
/// reflection, so the health service must be in the reflected descriptors.
#[test]
fn reflection_lists_the_health_service() {
    use connectrpc_reflection::wire::v1::ServerReflectionRequest;
    use connectrpc_reflection::wire::v1::server_reflection_request::MessageRequest;
    use connectrpc_reflection::wire::v1::server_reflection_response::MessageResponse;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = SidecarOptions::new(&dir.path().join("data")).start();
    runtime().block_on(async {
        let base: http::Uri = sidecar.http_base().parse().unwrap();
        let connection = connectrpc::client::Http2Connection::lazy_plaintext(base.clone()).shared(4);
        let client = connectrpc_reflection::ServerReflectionClient::new(
            connection,
            connectrpc::client::ClientConfig::new(base).with_protocol(Protocol::Grpc),
        );
        let mut stream = client.server_reflection_info().await.unwrap();
        let request = ServerReflectionRequest {
            message_request: Some(MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into())),
            ..Default::default()
        };
        stream.send(request).await.unwrap();
        stream.close_send();
        let response = stream.message().await.unwrap().unwrap().to_owned_message();
        assert!(matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(_))), "{response:?}");
    });
}

#[test]
fn restart_shows_exactly_the_acknowledged_state_and_keeps_the_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = SidecarOptions::new(&dir.path().join("data")).start();
    let rt = runtime();
    let mut expected = std::collections::BTreeMap::new();
    let node_id = rt.block_on(async {
        let client = sidecar.client_h2(Protocol::Grpc, false);
        for i in 0..50 {
            let json = serde_json::json!({ "i": i, "text": format!("doc {i}") });
            client.put_document(put("restart", &format!("d{i:02}"), &json.to_string())).await.unwrap();
            expected.insert(format!("d{i:02}"), json);
        }
        for i in (0..50).step_by(5) {
            client.delete_document(delete("restart", &format!("d{i:02}"))).await.unwrap();
            expected.remove(&format!("d{i:02}"));
        }
        for i in (1..50).step_by(7) {
            let json = serde_json::json!({ "i": i, "updated": true });
            client.put_document(put("restart", &format!("d{i:02}"), &json.to_string())).await.unwrap();
            expected.insert(format!("d{i:02}"), json);
        }
        // d00 was deleted; revive it.
        client.put_document(put("restart", "d00", r#"{"back":true}"#)).await.unwrap();
        expected.insert("d00".into(), serde_json::json!({"back":true}));
        client.get_status(GetStatusRequest::default()).await.unwrap().into_owned().node_id
    });

    let sidecar = sidecar.restart();
    rt.block_on(async {
        let client = sidecar.client_h1(Protocol::Connect, true);
        assert_eq!(list_ids(&client, "restart").await, expected.keys().cloned().collect::<Vec<_>>());
        for (id, json) in &expected {
            assert_eq!(get_json(&client, "restart", id).await.as_ref(), Some(json), "{id}");
        }
        for i in (5..50).step_by(5).filter(|i| !expected.contains_key(&format!("d{i:02}"))) {
            assert_eq!(get_json(&client, "restart", &format!("d{i:02}")).await, None);
        }
        let status = client.get_status(GetStatusRequest::default()).await.unwrap().into_owned();
        assert_eq!(status.node_id, node_id, "node id is stable across restarts");
    });
    // And once more, after a restart that wrote nothing.
    let sidecar = sidecar.restart();
    rt.block_on(async {
        let client = sidecar.client_h2(Protocol::Connect, false);
        assert_eq!(list_ids(&client, "restart").await.len(), expected.len());
        assert_eq!(client.get_status(GetStatusRequest::default()).await.unwrap().into_owned().node_id, node_id);
    });
}

#[test]
fn configured_node_id_wins() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = SidecarOptions::new(&dir.path().join("data")).arg("--node-id").arg("edge-7").start();
    runtime().block_on(async {
        let client = sidecar.client_h2(Protocol::Grpc, false);
        assert_eq!(client.get_status(GetStatusRequest::default()).await.unwrap().into_owned().node_id, "edge-7");
    });
}

#[test]
fn sigterm_with_an_open_subscription_exits_zero_promptly_and_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(&dir.path().join("notify.sock"));
    let mut sidecar = SidecarOptions::new(&dir.path().join("data")).env("NOTIFY_SOCKET", notify.env_value()).start();
    assert_eq!(notify.next("a notification"), "READY=1");

    let rt = runtime();
    let client = rt.block_on(async { sidecar.client_h2(Protocol::Connect, false) });
    let mut stream = rt.block_on(client.subscribe(SubscribeRequest::default())).unwrap();
    let (status, took) = sidecar.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    assert_eq!(notify.next("a stopping notification"), "STOPPING=1");
    // The open stream ended cleanly instead of holding up the shutdown.
    let end = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), stream.message()).await });
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "the stream ended");
}

#[test]
fn a_failing_watchdog_ping_is_logged_when_it_starts_and_when_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = NotifySocket::bind(&notify_path);
    // Pings every 200 ms.
    let mut sidecar = SidecarOptions::new(&dir.path().join("data"))
        .env("NOTIFY_SOCKET", notify.env_value())
        .env("WATCHDOG_USEC", "400000")
        .start();
    assert_eq!(notify.next("a notification"), "READY=1");
    assert_eq!(notify.next("a watchdog ping"), "WATCHDOG=1");

    // The service manager's socket goes away for about eight pings.
    notify.close();
    std::thread::sleep(Duration::from_millis(1700));
    let notify = NotifySocket::bind(&notify_path);
    assert_eq!(notify.next("a watchdog ping once the socket is back"), "WATCHDOG=1");

    let (status, _) = sidecar.terminate();
    assert!(status.success(), "exit status {status}");
    let log = sidecar.output();
    let count = |needle: &str| log.matches(needle).count();
    assert_eq!(count("the systemd watchdog ping failed"), 1, "{log}");
    assert_eq!(count("the systemd watchdog ping succeeds again"), 1, "{log}");
}

fn write_key(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let output = std::process::Command::new(support::binary()).arg("keygen").output().unwrap();
    assert!(output.status.success());
    let key = String::from_utf8(output.stdout).unwrap();
    use base64::Engine as _;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(key.trim()).unwrap().len(), 32);
    let path = dir.join(name);
    std::fs::write(&path, key).unwrap();
    path
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn encrypted_data_dir_round_trips_and_refuses_the_wrong_or_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = write_key(dir.path(), "key");
    let marker = "plaintext-marker-4f1d";
    let sidecar = SidecarOptions::new(&data).arg("--encryption-key-file").arg(key.to_str().unwrap()).start();
    let rt = runtime();
    rt.block_on(async {
        let client = sidecar.client_h2(Protocol::Grpc, false);
        client.put_document(put("secret", "s1", &format!(r#"{{"v":"{marker}"}}"#))).await.unwrap();
    });
    let mut sidecar = sidecar.restart();
    rt.block_on(async {
        let client = sidecar.client_h2(Protocol::Grpc, false);
        assert_eq!(get_json(&client, "secret", "s1").await, Some(serde_json::json!({ "v": marker })));
    });
    let (status, _) = sidecar.terminate();
    assert!(status.success());
    let stored = all_bytes(&data);
    assert!(!stored.windows(marker.len()).any(|w| w == marker.as_bytes()), "document content is stored in the clear");

    // Wrong key, missing key: clear startup errors, data untouched.
    let wrong = write_key(dir.path(), "wrong");
    let (status, output) =
        SidecarOptions::new(&data).arg("--encryption-key-file").arg(wrong.to_str().unwrap()).start_expecting_failure();
    assert!(!status.success());
    assert!(output.contains("the encryption key does not match the one the data directory"), "{output}");
    let (status, output) = SidecarOptions::new(&data).start_expecting_failure();
    assert!(!status.success());
    assert!(output.contains("is encrypted but no encryption key is configured"), "{output}");
    let sidecar = SidecarOptions::new(&data).arg("--encryption-key-file").arg(key.to_str().unwrap()).start();
    rt.block_on(async {
        let client = sidecar.client_h2(Protocol::Grpc, false);
        assert_eq!(get_json(&client, "secret", "s1").await, Some(serde_json::json!({ "v": marker })));
    });
}

/// A sidecar started on the plaintext `data` serves the document with `expected` content.
fn assert_serves_document(data: &std::path::Path, collection: &str, doc_id: &str, expected: serde_json::Value) {
    let sidecar = SidecarOptions::new(data).start();
    runtime().block_on(async {
        let client = sidecar.client_h2(Protocol::Grpc, false);
        assert_eq!(get_json(&client, collection, doc_id).await, Some(expected));
    });
}

/// A plaintext data directory (`data` in the returned directory) that a
/// sidecar, stopped since, wrote one document to.
fn plaintext_data_dir_with(collection: &str, doc_id: &str, json: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sidecar = SidecarOptions::new(&data).start();
    runtime().block_on(async {
        sidecar.client_h2(Protocol::Grpc, false).put_document(put(collection, doc_id, json)).await.unwrap();
    });
    let (status, _) = sidecar.terminate();
    assert!(status.success());
    (dir, data)
}

#[test]
fn a_data_dir_of_a_newer_store_format_fails_startup_by_name() {
    let (_dir, data) = plaintext_data_dir_with("kept", "k", r#"{"a":1}"#);
    let set_format = |format: u32| {
        let db = sled::open(&data).unwrap();
        let meta = db.open_tree("meta").unwrap();
        let previous = meta.insert("format", &format.to_be_bytes()).unwrap();
        db.flush().unwrap();
        previous.map(|bytes| u32::from_be_bytes(bytes.as_ref().try_into().unwrap()))
    };
    assert_eq!(set_format(99), Some(2), "the data directory is marked with the format it was written in");

    let (status, output) = SidecarOptions::new(&data).start_expecting_failure();
    assert!(!status.success());
    assert!(
        output.contains(
            "was written by a newer version of peat-sidecar (store format 99; this version reads formats up to 2)"
        ),
        "{output}"
    );
    assert_eq!(set_format(2), Some(99), "the refused data directory was left as it was");
    assert_serves_document(&data, "kept", "k", serde_json::json!({"a":1}));
}

#[test]
fn a_key_on_a_plaintext_data_dir_fails_startup() {
    let (dir, data) = plaintext_data_dir_with("plain", "p", r#"{"a":1}"#);
    let key = write_key(dir.path(), "key");
    let (status, output) =
        SidecarOptions::new(&data).arg("--encryption-key-file").arg(key.to_str().unwrap()).start_expecting_failure();
    assert!(!status.success());
    assert!(output.contains("holds plaintext data but an encryption key is configured"), "{output}");
    assert_serves_document(&data, "plain", "p", serde_json::json!({"a":1}));
}

#[test]
fn a_data_dir_in_use_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let running = SidecarOptions::new(&data).start();
    runtime().block_on(async {
        running.client_h1(Protocol::Connect, true).put_document(put("c", "d", r#"{"a":1}"#)).await.unwrap();
    });
    let (status, output) = SidecarOptions::new(&data).start_expecting_failure();
    assert!(!status.success());
    assert_eq!(output.matches("is in use by another process").count(), 1, "{output}");
    runtime().block_on(async {
        let client = running.client_h1(Protocol::Connect, true);
        assert_eq!(
            get_json(&client, "c", "d").await,
            Some(serde_json::json!({"a":1})),
            "the running sidecar is unaffected"
        );
    });
}

#[test]
fn ctl_writes_reads_lists_and_deletes_documents_including_one_read_from_stdin() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let sidecar = SidecarOptions::new(&dir.path().join("data")).listen(Listen::Unix).start();
    let addr = format!("unix://{}", sidecar.socket_path().unwrap().display());
    let ctl = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(support::binary())
            .args(["ctl", "--addr", &addr])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Dropping stdin closes it: `put ... -` reads to its end.
        child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        (output.status.code(), text(output.stdout), text(output.stderr))
    };

    assert_eq!(ctl(&["put", "c", "inline", r#"{"n":1}"#], None).0, Some(0));
    // Larger than one command-line argument may be (128 KiB).
    let large = format!(r#"{{"blob":"{}"}}"#, "x".repeat(200 * 1024));
    assert_eq!(ctl(&["put", "c", "from-stdin", "-"], Some(&large)).0, Some(0));
    assert_eq!(ctl(&["get", "c", "inline"], None), (Some(0), "{\"n\":1}\n".into(), String::new()));
    assert_eq!(ctl(&["get", "c", "from-stdin"], None).1, format!("{large}\n"));
    assert_eq!(ctl(&["list", "c"], None).1, "from-stdin\ninline\n");

    assert_eq!(ctl(&["delete", "c", "inline"], None).0, Some(0));
    let (code, stdout, stderr) = ctl(&["get", "c", "inline"], None);
    assert_eq!((code, stdout.as_str(), stderr.trim()), (Some(1), "", "not found"));
    let (code, _, stderr) = ctl(&["put", "c", "bad", "[1]"], None);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("json_data"), "{stderr}");
    assert_eq!(ctl(&["list", "c"], None).1, "from-stdin\n");
}
