//! Secrets stay out of the log at every log level: real nodes at
//! `log_level: trace`, which lets through every crate's trace output (TLS,
//! HTTP/2, gRPC included), with a formation key, mesh TLS and encryption at
//! rest sync a document, restart and meet a peer holding the wrong formation
//! key. No log holds any form of any key.

#[path = "support/mesh_cluster.rs"]
mod mesh_cluster;

use std::time::Duration;

use base64::Engine;
use mesh_cluster::*;

const T: Duration = Duration::from_secs(20);
const WRONG_KEY: &str = "not-this-formation-key-fedcba9876543210";

/// Every form a 32-byte key could take in a log line.
fn key_forms(key: &[u8; 32]) -> Vec<String> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let debug = format!("{key:?}");
    vec![
        // Without padding, so that it also matches the padded form.
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(key),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
        hex.clone(),
        hex.to_uppercase(),
        // The start of a `[u8]` debug listing is unique enough.
        debug[..debug.len() / 2].to_owned(),
    ]
}

/// The base64 lines of a PEM private key (what a logged key would contain).
fn pem_body_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_owned)
        .collect()
}

fn assert_absent(node: &Node, secrets: &[String]) {
    let log = node.log();
    assert!(log.lines().count() > 100, "{}: a trace log this short logged nothing:\n{log}", node.spec.node_id);
    for secret in secrets {
        if let Some(line) = log.lines().find(|line| line.contains(secret.as_str())) {
            panic!("{}: a secret reached the log: {line}", node.spec.node_id);
        }
    }
    assert!(!log.contains("PRIVATE KEY"), "{}: PEM key material in the log", node.spec.node_id);
}

#[tokio::test]
async fn no_key_reaches_the_log_even_at_trace_level() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = TestPki::new(tmp.path(), "formation");
    // Distinct bytes, so that no form of the key is a run of repeated characters.
    let encryption_key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let encoded_key = base64::engine::general_purpose::STANDARD.encode(encryption_key);

    let node = |id: &str| {
        let mut spec = Spec::new(id).setting("encryption_key", encoded_key.as_str());
        spec.log_level = "trace".to_owned();
        spec.tls = Some(pki.issue(id, &[]));
        spec
    };
    let a = Node::start(node("node-a")).await;
    let mut b = Node::start(node("node-b").peer(&a)).await;
    a.put("orders", "o1", r#"{"qty":3}"#).await;
    b.wait_doc("orders", "o1", Some(r#"{"qty":3}"#), T).await;

    // Reopening the encrypted store checks the key against the stored marker.
    b.restart().await;
    b.put("orders", "o2", r#"{"qty":5}"#).await;
    a.wait_doc("orders", "o2", Some(r#"{"qty":5}"#), T).await;

    // A peer with the right certificate but the wrong formation key is refused.
    let mut stranger = node("node-c").peer(&a);
    stranger.shared_key = Some(WRONG_KEY.to_owned());
    let c = Node::start(stranger).await;
    assert_log(&a, "authentication failed").await;
    assert_log(&c, "authentication failed").await;
    assert!(!a.connected_to("node-c").await, "a peer with the wrong formation key was accepted");

    let mut secrets = vec![KEY.to_owned(), WRONG_KEY.to_owned()];
    secrets.extend(key_forms(&encryption_key));
    for id in ["node-a", "node-b", "node-c"] {
        secrets.extend(pem_body_lines(&tmp.path().join(format!("{id}.key"))));
    }
    for node in [&a, &b, &c] {
        assert_absent(node, &secrets);
    }
}
