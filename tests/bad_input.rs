//! Bad input, table-driven: every invalid request gets `invalid_argument`
//! (or the documented code) with a message naming the field, over Connect
//! JSON and gRPC; malformed protobuf bodies are refused; and afterwards the
//! store holds exactly what it held before.

mod support;

use connectrpc::{ErrorCode, Protocol};
use peat_sidecar::proto::peat::sidecar::v1::*;
use peat_sidecar::store::{DocumentStore, StoreOptions};
use support::{Client, SidecarOptions, grpc_frame, put, raw_post, runtime};

const ONE_MIB: usize = 1024 * 1024;

/// (what, collection, doc_id, json_data, field the message must name, words it must contain)
fn bad_puts() -> Vec<(&'static str, String, String, String, &'static str, &'static str)> {
    let ok = r#"{"a":1}"#.to_owned();
    let c = || "c".to_owned();
    let d = || "d".to_owned();
    vec![
        ("invalid JSON", c(), d(), "{\"a\":".into(), "json_data", "invalid JSON"),
        ("trailing garbage", c(), d(), "{} x".into(), "json_data", "invalid JSON"),
        ("empty body", c(), d(), String::new(), "json_data", "invalid JSON"),
        ("array", c(), d(), "[1,2]".into(), "json_data", "must be a JSON object, got an array"),
        ("string", c(), d(), "\"s\"".into(), "json_data", "must be a JSON object, got a string"),
        ("number", c(), d(), "42".into(), "json_data", "must be a JSON object, got a number"),
        ("null", c(), d(), "null".into(), "json_data", "must be a JSON object, got null"),
        ("oversize", c(), d(), format!(r#"{{"a":"{}"}}"#, "x".repeat(ONE_MIB)), "json_data", "limit is 1048576"),
        ("empty collection", String::new(), d(), ok.clone(), "collection", "1 to 128 bytes"),
        ("long collection", "c".repeat(129), d(), ok.clone(), "collection", "1 to 128 bytes"),
        ("space in collection", "a b".into(), d(), ok.clone(), "collection", "may contain only"),
        ("slash in collection", "a/b".into(), d(), ok.clone(), "collection", "may contain only"),
        ("colon in collection", "a:b".into(), d(), ok.clone(), "collection", "may contain only"),
        ("non-ASCII collection", "plätze".into(), d(), ok.clone(), "collection", "may contain only"),
        ("empty id", c(), String::new(), ok.clone(), "doc_id", "1 to 512 bytes"),
        ("long id", c(), "i".repeat(513), ok.clone(), "doc_id", "1 to 512 bytes"),
        ("tab in id", c(), "a\tb".into(), ok.clone(), "doc_id", "control characters"),
        ("newline in id", c(), "a\nb".into(), ok.clone(), "doc_id", "control characters"),
        ("NUL in id", c(), "a\0b".into(), ok.clone(), "doc_id", "control characters"),
        ("DEL in id", c(), "a\u{7f}".into(), ok.clone(), "doc_id", "control characters"),
    ]
}

async fn expect_invalid<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, connectrpc::ConnectError>,
    field: &str,
    words: &str,
) {
    let err = result.expect_err(what);
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{what}: {err:?}");
    let message = err.message.unwrap_or_default();
    assert!(message.starts_with(&format!("{field}: ")), "{what}: message {message:?} does not name {field}");
    assert!(message.contains(words), "{what}: message {message:?} lacks {words:?}");
}

async fn every_bad_request(client: &Client) {
    for (what, collection, doc_id, json, field, words) in bad_puts() {
        expect_invalid(what, client.put_document(put(&collection, &doc_id, &json)).await, field, words).await;
        if field != "json_data" {
            let get =
                GetDocumentRequest { collection: collection.clone(), doc_id: doc_id.clone(), ..Default::default() };
            expect_invalid(&format!("GetDocument {what}"), client.get_document(get).await, field, words).await;
            let delete =
                DeleteDocumentRequest { collection: collection.clone(), doc_id: doc_id.clone(), ..Default::default() };
            expect_invalid(&format!("DeleteDocument {what}"), client.delete_document(delete).await, field, words).await;
        }
        if field == "collection" {
            let list = ListDocumentsRequest { collection: collection.clone(), ..Default::default() };
            expect_invalid(&format!("ListDocuments {what}"), client.list_documents(list).await, field, words).await;
            let subscribe =
                SubscribeRequest { collections: vec!["ok".into(), collection.clone()], ..Default::default() };
            // A stream reports the error when it is read (gRPC sends it in the trailers).
            let result = match client.subscribe(subscribe).await {
                Ok(mut stream) => tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
                    .await
                    .expect("the stream answers")
                    .map(|_| ()),
                Err(err) => Err(err),
            };
            expect_invalid(&format!("Subscribe {what}"), result, "collections", words).await;
        }
    }
    // Typed collections: the id is checked, and the message names the typed field.
    let platform = Platform { id: "a\tb".into(), ..Default::default() };
    let result = client.put_platform(PutPlatformRequest { platform: platform.into(), ..Default::default() }).await;
    expect_invalid("platform id", result, "platform.id", "control characters").await;
    let command = Command { id: String::new(), ..Default::default() };
    let result = client.put_command(PutCommandRequest { command: command.into(), ..Default::default() }).await;
    expect_invalid("command id", result, "command.id", "1 to 512 bytes").await;
    let result = client.put_cell(PutCellRequest::default()).await;
    expect_invalid("missing cell", result, "cell", "required").await;
}

#[test]
fn bad_requests_are_refused_naming_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sidecar = SidecarOptions::new(&data).start();
    let rt = runtime();
    rt.block_on(async {
        let client = sidecar.client_h2(Protocol::Grpc, false);
        client.put_document(put("keep", "k1", r#"{"v":1}"#)).await.unwrap();

        every_bad_request(&client).await;
        every_bad_request(&sidecar.client_h1(Protocol::Connect, true)).await;
        every_bad_request(&sidecar.client_h2(Protocol::GrpcWeb, false)).await;

        // A body over max_request_bytes (4 MiB) is refused before it is parsed.
        let huge = format!(r#"{{"a":"{}"}}"#, "x".repeat(5 * ONE_MIB));
        let err = client.put_document(put("c", "huge", &huge)).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ResourceExhausted, "{err:?}");

        malformed_bodies(&sidecar).await;

        assert_eq!(
            client
                .list_documents(ListDocumentsRequest { collection: "c".into(), ..Default::default() })
                .await
                .unwrap()
                .into_owned()
                .doc_ids,
            Vec::<String>::new()
        );
    });
    let (status, _) = sidecar.terminate();
    assert!(status.success());

    // The store on disk holds the one valid document and nothing else.
    let store = DocumentStore::open(&StoreOptions::new(data)).unwrap();
    let keys: Vec<String> = store.all_heads().map(|entry| entry.unwrap().0.to_string()).collect();
    assert_eq!(keys, ["keep/k1"]);
    assert_eq!(store.get("keep", "k1").unwrap().as_deref(), Some(r#"{"v":1}"#));
}

/// Bodies no client library would send, as raw HTTP.
async fn malformed_bodies(sidecar: &support::Sidecar) {
    const PUT: &str = "/peat.sidecar.v1.PeatSidecar/PutDocument";
    // Field 1 (collection) claims 100 bytes but the body ends: truncated protobuf.
    let truncated = vec![0x0a, 100, b'c'];
    // Field 1 holds invalid UTF-8: proto3 strings must be UTF-8.
    let bad_utf8 = vec![0x0a, 2, 0xff, 0xfe, 0x12, 1, b'd', 0x1a, 2, b'{', b'}'];
    // A varint that never ends.
    let endless_varint = vec![0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    for (what, body) in [("truncated", truncated), ("bad UTF-8", bad_utf8), ("endless varint", endless_varint)] {
        // Connect unary, binary protobuf: HTTP 400 with a JSON error body.
        let response = raw_post(sidecar, false, PUT, &[("content-type", "application/proto")], body.clone()).await;
        let error: serde_json::Value = serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {}", response.body_text()));
        assert_eq!(error["code"], "invalid_argument", "{what}: {error}");
        assert_eq!(response.status, 400, "{what}");

        // gRPC over h2c: HTTP 200 with grpc-status 3 (INVALID_ARGUMENT).
        let response = raw_post(
            sidecar,
            true,
            PUT,
            &[("content-type", "application/grpc"), ("te", "trailers")],
            grpc_frame(&body),
        )
        .await;
        assert_eq!(response.grpc_header("grpc-status").as_deref(), Some("3"), "{what}: {response:?}");
    }

    // Connect JSON: not JSON at all, and a field of the wrong type. (Unknown
    // fields are ignored, as proto3 JSON clients of newer schemas expect.)
    for (what, body) in [
        ("not JSON", "{".to_owned()),
        ("wrong field type", r#"{"collection":5,"docId":"d","jsonData":"{}"}"#.to_owned()),
    ] {
        let response = raw_post(sidecar, false, PUT, &[("content-type", "application/json")], body.into_bytes()).await;
        let error: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(error["code"], "invalid_argument", "{what}: {error}");
    }

    // A gRPC frame whose length prefix promises more than is sent.
    let mut short = grpc_frame(b"\x0a\x01c");
    short.truncate(short.len() - 1);
    let response =
        raw_post(sidecar, true, PUT, &[("content-type", "application/grpc"), ("te", "trailers")], short).await;
    let code = response.grpc_header("grpc-status");
    assert_eq!(code.as_deref(), Some("3"), "truncated frame: {response:?}");
}
