//! The UDS Remote Agent watcher against a real HTTP/2 agent double and a
//! real document store on disk, and inside the real `peat-sidecar` binary.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use peat_sidecar::config::Settings;
use peat_sidecar::store::{DocKey, DocumentStore, StoreOptions};
use peat_sidecar::watcher::{AgentState, Watcher, WatcherConfig, WatcherHealth};
use serde_json::{Value as Json, json};
use support::agent_double::{
    AgentData, AgentDouble, LIST_PACKAGES, LIST_PULLED_PACKAGES, STATUS, deployed, registry, status, tag,
};
use support::pki::Pki;
use support::wait_until;
use support::{Sidecar, SidecarOptions, free_port};

const AGENT: &str = "node-a";
const POLL: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(15);

fn open_store(dir: &std::path::Path) -> DocumentStore {
    DocumentStore::open(&StoreOptions::new(dir.join("store"))).unwrap()
}

fn settings(addr: &str) -> Settings {
    Settings { agent_addr: Some(addr.into()), agent_poll_interval: POLL, ..Settings::default() }
}

fn config(settings: &Settings) -> WatcherConfig {
    WatcherConfig::from_settings(settings, AGENT).unwrap().expect("agent_addr is set")
}

fn doc(store: &DocumentStore, collection: &str, id: &str) -> Option<Json> {
    store.get(collection, id).unwrap().map(|json| serde_json::from_str(&json).unwrap())
}

fn ids(store: &DocumentStore, collection: &str) -> BTreeSet<String> {
    store.list(collection).unwrap().into_iter().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every document's heads, tombstones included: any new Automerge change shows here.
fn all_heads(store: &DocumentStore) -> Vec<(DocKey, Vec<String>)> {
    store.all_heads().map(|r| r.unwrap()).map(|(k, h)| (k, h.iter().map(|h| h.to_string()).collect())).collect()
}

/// Waits until the watcher has finished `polls` more polls; returns the latest health.
async fn more_polls(health: &mut tokio::sync::watch::Receiver<WatcherHealth>, polls: u64) -> WatcherHealth {
    let target = health.borrow().polls + polls;
    tokio::time::timeout(WAIT, health.wait_for(|h| h.polls >= target)).await.expect("polls").unwrap().clone()
}

async fn wait_state(health: &mut tokio::sync::watch::Receiver<WatcherHealth>, want: &AgentState) -> WatcherHealth {
    let reached = tokio::time::timeout(WAIT, health.wait_for(|h| h.state == *want)).await.map(|h| h.unwrap().clone());
    reached.unwrap_or_else(|_| panic!("state never became {want:?}; last health: {:?}", *health.borrow()))
}

/// Starts a watcher on `store` and waits until it reports the agent up.
async fn watch_until_up(
    config: WatcherConfig,
    store: &DocumentStore,
) -> (Watcher, tokio::sync::watch::Receiver<WatcherHealth>) {
    let watcher = Watcher::start(config, store.clone());
    let mut health = watcher.health();
    wait_state(&mut health, &AgentState::Up).await;
    (watcher, health)
}

fn sample_agent() -> AgentData {
    AgentData {
        status: status("0.9.0"),
        packages: vec![deployed("podinfo", "6.4.0", 2), deployed("uds-core", "0.30.0", 2)],
        registries: vec![registry(
            "local",
            "podinfo",
            vec![tag("podinfo:6.4.0", "amd64", "6.4.0", 1000), tag("podinfo:6.4.0", "arm64", "6.4.0", 990)],
        )],
        ..AgentData::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_follow_the_agent_over_h2c() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    // A document of another agent in the same collection must survive.
    store.put_json("deployments", "node-b:podinfo", r#"{"agent_id":"node-b"}"#).await.unwrap();
    let agent = AgentDouble::start_h2c(sample_agent()).await;
    let watcher = Watcher::start(config(&settings(&agent.url())), store.clone());
    let mut health = watcher.health();

    let took = wait_state(&mut health, &AgentState::Up).await;
    assert_eq!(took.consecutive_failures, 0);
    let platform = doc(&store, "platforms", AGENT).expect("platform document");
    assert_eq!(platform["platform_type"], "uds-remote-agent");
    assert_eq!(platform["agent_id"], AGENT);
    assert_eq!(platform["version"], "0.9.0");
    assert_eq!(platform["k8s_version"], "v1.31.4+k3s1");
    assert_eq!(platform["k8s_node_status"], "Ready");
    assert_eq!(platform["zarf_version"], "v0.60.0");
    assert_eq!(platform["run_mode"], "cluster");
    assert_eq!(platform["classification"], "UNCLASSIFIED");
    assert!(platform["system_time"].is_u64());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now - platform["last_seen"].as_u64().unwrap() < 5);

    assert_eq!(ids(&store, "deployments"), set(&["node-a:podinfo", "node-a:uds-core", "node-b:podinfo"]));
    let podinfo = doc(&store, "deployments", "node-a:podinfo").unwrap();
    assert_eq!(
        podinfo,
        json!({"agent_id": AGENT, "name": "podinfo", "version": "6.4.0", "status": 2, "flavor": "",
               "namespace_override": "", "annotations": {"deployed-by": "tests"}})
    );
    assert_eq!(ids(&store, "packages"), set(&["node-a:podinfo:6.4.0-amd64", "node-a:podinfo:6.4.0-arm64"]));
    let arm = doc(&store, "packages", "node-a:podinfo:6.4.0-arm64").unwrap();
    assert_eq!(arm["total_bytes"], 990);
    assert_eq!(arm["pull_info"], json!({"downloaded_bytes": 990, "status": 2}));
    assert_eq!(arm["registry_host"], "local.example:5000");
    assert_eq!(arm["repo_name"], "library/podinfo");

    // The agent changes: an upgrade, a removal, a new package and tag, a removed tag.
    agent.update(|a| {
        a.status = status("0.10.0");
        a.packages = vec![deployed("podinfo", "6.5.0", 1), deployed("gitea", "1.22.0", 2)];
        a.registries = vec![
            registry("local", "podinfo", vec![tag("podinfo:6.5.0", "amd64", "6.5.0", 1100)]),
            registry("mirror", "gitea", vec![tag("gitea:1.22.0", "amd64", "1.22.0", 5000)]),
        ];
    });
    let started = Instant::now();
    wait_until(WAIT, "the new state", || {
        ids(&store, "packages") == set(&["node-a:podinfo:6.5.0-amd64", "node-a:gitea:1.22.0-amd64"])
            && ids(&store, "deployments") == set(&["node-a:podinfo", "node-a:gitea", "node-b:podinfo"])
            && doc(&store, "platforms", AGENT).unwrap()["version"] == "0.10.0"
    })
    .await;
    eprintln!("agent change visible in the store after {:?}", started.elapsed());
    let podinfo = doc(&store, "deployments", "node-a:podinfo").unwrap();
    assert_eq!((podinfo["version"].as_str(), podinfo["status"].as_i64()), (Some("6.5.0"), Some(1)));
    // Disappeared packages are tombstoned (kept as deleted), not merely absent.
    assert_eq!(doc(&store, "deployments", "node-a:uds-core"), None);
    assert!(store.heads(&DocKey::new("deployments", "node-a:uds-core")).unwrap().is_some());
    assert!(store.heads(&DocKey::new("packages", "node-a:podinfo:6.4.0-arm64")).unwrap().is_some());
    assert_eq!(doc(&store, "deployments", "node-b:podinfo").unwrap()["agent_id"], "node-b");

    // A package that comes back is revived.
    agent.update(|a| a.packages.push(deployed("uds-core", "0.31.0", 2)));
    wait_until(WAIT, "uds-core back", || doc(&store, "deployments", "node-a:uds-core").is_some()).await;
    assert_eq!(doc(&store, "deployments", "node-a:uds-core").unwrap()["version"], "0.31.0");

    assert_eq!(agent.protocol_violations(), Vec::<String>::new());
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_agent_data_makes_no_new_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let agent = AgentDouble::start_h2c(sample_agent()).await;
    let (watcher, mut health) = watch_until_up(config(&settings(&agent.url())), &store).await;
    more_polls(&mut health, 1).await;

    let before = all_heads(&store);
    let platform_before = doc(&store, "platforms", AGENT).unwrap();
    let mut feed = store.subscribe();
    let requests_before = agent.requests(STATUS);
    let started = Instant::now();
    let after_polls = more_polls(&mut health, 10).await;
    assert_eq!(after_polls.state, AgentState::Up);
    assert!(agent.requests(STATUS) >= requests_before + 10, "the agent was polled");
    assert_eq!(all_heads(&store), before, "no document got a new Automerge change");
    assert!(feed.try_recv().is_err(), "nothing was published to the change feed (and so to the mesh)");
    // The agent's clock moved on every poll, yet the platform document stayed as it was.
    assert_eq!(doc(&store, "platforms", AGENT).unwrap(), platform_before);
    eprintln!("10 unchanged polls in {:?} made no changes", started.elapsed());
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_is_refreshed_at_the_heartbeat_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let agent = AgentDouble::start_h2c(sample_agent()).await;
    let mut config = config(&settings(&agent.url()));
    config.heartbeat = Duration::from_secs(1);
    let (watcher, health) = watch_until_up(config, &store).await;
    let key = DocKey::new("platforms", AGENT);
    let first = doc(&store, "platforms", AGENT).unwrap()["last_seen"].as_u64().unwrap();
    let mut feed = store.subscribe();
    let polls_before = health.borrow().polls;
    let window = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let polls = health.borrow().polls - polls_before;
    let seconds = window.elapsed().as_secs_f64();
    let mut platform_changes = 0;
    while let Ok(change) = feed.try_recv() {
        assert_eq!(change.key, key, "only the platform document changes");
        platform_changes += 1;
    }
    // A 1 s heartbeat (whole seconds) refreshes once per second of the
    // window, give or take one at each end (a loaded machine stretches the
    // window), and never on the polls in between.
    assert!(polls >= 10, "{polls} polls");
    let expected = (seconds - 1.0).floor().max(1.0) as usize..=seconds.ceil() as usize + 1;
    assert!(
        expected.contains(&platform_changes) && (platform_changes as u64) * 3 < polls,
        "{platform_changes} heartbeat writes across {polls} polls in {seconds:.2} s"
    );
    assert!(doc(&store, "platforms", AGENT).unwrap()["last_seen"].as_u64().unwrap() >= first + 2);
    assert!(store.heads(&key).unwrap().is_some());
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_down_then_up_recovers_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut agent = AgentDouble::start_h2c(sample_agent()).await;
    let (watcher, mut health) = watch_until_up(config(&settings(&agent.url())), &store).await;
    more_polls(&mut health, 1).await;
    let before = all_heads(&store);

    agent.stop().await;
    let down = wait_state(&mut health, &AgentState::Down).await;
    assert!(down.last_error.as_deref().unwrap_or("").contains("connect"), "{down:?}");
    // While down: documents stay, and attempts back off (100 ms doubling up to 800 ms).
    let polls_at_down = health.borrow().polls;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = health.borrow().polls - polls_at_down;
    assert!((2..=8).contains(&attempts), "{attempts} attempts in 3 s; without backoff there would be ~30");
    assert_eq!(all_heads(&store), before, "an unreachable agent changes no documents");
    assert!(doc(&store, "deployments", "node-a:podinfo").is_some());

    agent.update(|a| a.packages = vec![deployed("podinfo", "7.0.0", 2)]);
    agent.restart().await;
    let restarted = Instant::now();
    wait_state(&mut health, &AgentState::Up).await;
    wait_until(WAIT, "the recovered state", || {
        ids(&store, "deployments") == set(&["node-a:podinfo"])
            && doc(&store, "deployments", "node-a:podinfo").unwrap()["version"] == "7.0.0"
    })
    .await;
    eprintln!("recovered {:?} after the agent came back", restarted.elapsed());
    assert_eq!(health.borrow().consecutive_failures, 0);
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_failing_endpoints_leave_their_documents_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let agent = AgentDouble::start_h2c(sample_agent()).await;
    let (watcher, mut health) = watch_until_up(config(&settings(&agent.url())), &store).await;
    let deployments = |store: &DocumentStore| {
        ["node-a:podinfo", "node-a:uds-core"].map(|id| {
            store
                .heads(&DocKey::new("deployments", id))
                .unwrap()
                .unwrap()
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
        })
    };
    let deployments_before = deployments(&store);

    // ListPackages sends broken JSON while the agent also drops a package and
    // pulls a new tag: deployments must stay as they were, packages must follow.
    agent.update(|a| {
        a.malformed.insert(LIST_PACKAGES);
        a.packages.pop();
        a.registries.push(registry("mirror", "gitea", vec![tag("gitea:1.22.0", "amd64", "1.22.0", 5000)]));
    });
    let degraded = wait_state(&mut health, &AgentState::Degraded { failing: vec!["ListPackages"] }).await;
    assert!(degraded.last_error.as_deref().unwrap().contains("malformed response"), "{degraded:?}");
    let requests = agent.requests(LIST_PACKAGES);
    more_polls(&mut health, 3).await;
    assert!(agent.requests(LIST_PACKAGES) >= requests + 3);
    assert_eq!(deployments(&store), deployments_before, "no change to deployments");
    assert_eq!(ids(&store, "deployments"), set(&["node-a:podinfo", "node-a:uds-core"]));
    assert!(doc(&store, "packages", "node-a:gitea:1.22.0-amd64").is_some(), "the healthy endpoint still syncs");

    // A Connect error from the status endpoint leaves the platform document alone.
    let platform_heads = store.heads(&DocKey::new("platforms", AGENT)).unwrap();
    agent.update(|a| {
        a.failing.insert(STATUS);
        a.status = status("9.9.9");
    });
    let degraded = wait_state(&mut health, &AgentState::Degraded { failing: vec!["status", "ListPackages"] }).await;
    assert!(degraded.last_error.as_deref().unwrap().contains("unavailable"), "{degraded:?}");
    more_polls(&mut health, 2).await;
    assert_eq!(store.heads(&DocKey::new("platforms", AGENT)).unwrap(), platform_heads);
    assert_eq!(doc(&store, "platforms", AGENT).unwrap()["version"], "0.9.0");

    // Both fixed: everything catches up.
    agent.update(|a| {
        a.malformed.clear();
        a.failing.clear();
    });
    wait_state(&mut health, &AgentState::Up).await;
    wait_until(WAIT, "catch-up", || {
        ids(&store, "deployments") == set(&["node-a:podinfo"])
            && doc(&store, "platforms", AGENT).unwrap()["version"] == "9.9.9"
    })
    .await;
    assert!(agent.requests(LIST_PULLED_PACKAGES) > 0);
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let store = open_store(dir.path());

    // Server-authenticated TLS, the agent's certificate checked against agent_tls_ca.
    let agent = AgentDouble::start_tls(sample_agent(), pki.server_config(false)).await;
    let mut s = settings(&agent.localhost_url());
    s.agent_tls_ca = Some(pki.ca.clone());
    let (watcher, _) = watch_until_up(config(&s), &store).await;
    assert_eq!(doc(&store, "platforms", AGENT).unwrap()["version"], "0.9.0");
    watcher.stop().await;
    assert_eq!(agent.protocol_violations(), Vec::<String>::new());

    // mTLS: the agent requires a client certificate from its CA.
    let agent = AgentDouble::start_tls(sample_agent(), pki.server_config(true)).await;
    agent.update(|a| a.status = status("mtls"));
    let mut s = settings(&agent.url()); // by IP address: the certificate names 127.0.0.1 too
    s.agent_tls_ca = Some(pki.ca.clone());
    let without_cert = Watcher::start(config(&s), store.clone());
    let mut h = without_cert.health();
    let down = wait_state(&mut h, &AgentState::Down).await;
    eprintln!("without a client certificate: {:?}", down.last_error);
    without_cert.stop().await;

    let mut rogue = s.clone();
    rogue.agent_tls_cert = Some(pki.rogue_cert.clone());
    rogue.agent_tls_key = Some(pki.rogue_key.clone());
    let untrusted = Watcher::start(config(&rogue), store.clone());
    let mut h = untrusted.health();
    wait_state(&mut h, &AgentState::Down).await;
    untrusted.stop().await;
    assert_eq!(doc(&store, "platforms", AGENT).unwrap()["version"], "0.9.0", "rejected clients read nothing");

    s.agent_tls_cert = Some(pki.client_cert.clone());
    s.agent_tls_key = Some(pki.client_key.clone());
    let (watcher, _) = watch_until_up(config(&s), &store).await;
    assert_eq!(doc(&store, "platforms", AGENT).unwrap()["version"], "mtls");
    watcher.stop().await;

    // A server certificate from another CA is refused.
    let mut wrong_ca = settings(&agent.url());
    wrong_ca.agent_tls_ca = Some(pki.rogue_cert.clone());
    wrong_ca.agent_tls_cert = Some(pki.client_cert.clone());
    wrong_ca.agent_tls_key = Some(pki.client_key.clone());
    let watcher = Watcher::start(config(&wrong_ca), store.clone());
    let mut health = watcher.health();
    let down = wait_state(&mut health, &AgentState::Down).await;
    assert!(down.last_error.as_deref().unwrap().contains("TLS"), "{down:?}");
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_agent_times_out_without_blocking_shutdown() {
    // A listener that accepts but never speaks HTTP/2.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut config = config(&settings(&format!("http://{addr}")));
    config.call_timeout = Duration::from_millis(300);
    let watcher = Watcher::start(config, store.clone());
    let mut health = watcher.health();
    let down = wait_state(&mut health, &AgentState::Down).await;
    assert!(down.last_error.as_deref().unwrap().contains("no response within"), "{down:?}");
    let stopping = Instant::now();
    watcher.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(1), "stop took {:?}", stopping.elapsed());
    hold.abort();
}

/// Waits until the health check of `service` answers `want`.
async fn wait_health(sidecar: &Sidecar, service: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    while sidecar.health(service).await != want {
        assert!(Instant::now() < deadline, "{service:?} never {want}; log:\n{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real binary, configured through a config file, serving what it read
/// from the agent over its API and the agent's state as a health check; one
/// log line per state change; clean SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_agent_state_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentDouble::start_h2c(sample_agent()).await;
    let config = format!("agent_addr: \"{}\"\nagent_poll_interval: \"200ms\"\n", agent.url());
    let started = Instant::now();
    let options = SidecarOptions::new(&dir.path().join("data")).config(config).args(["--node-id", "edge-1"]);
    let mut sidecar = tokio::task::block_in_place(|| options.start());

    let deadline = Instant::now() + WAIT;
    while sidecar.get("platforms", "edge-1").await.is_none() || sidecar.list("packages").await.len() != 2 {
        assert!(Instant::now() < deadline, "no platform document; log:\n{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("agent state served {:?} after start", started.elapsed());
    let platform = sidecar.get("platforms", "edge-1").await.unwrap();
    assert_eq!(platform["platform_type"], "uds-remote-agent");
    assert_eq!(platform["agent_id"], "edge-1");
    assert_eq!(sidecar.health("agent-watcher").await, "SERVING");

    // The agent goes away: health checks of the watcher say so, the sidecar's own do not.
    agent.stop().await;
    wait_health(&sidecar, "agent-watcher", "NOT_SERVING").await;
    assert_eq!(sidecar.health("").await, "SERVING");
    agent.restart().await;
    wait_health(&sidecar, "agent-watcher", "SERVING").await;

    let mut deployments = sidecar.list("deployments").await;
    deployments.sort();
    assert_eq!(deployments, ["edge-1:podinfo", "edge-1:uds-core"]);

    agent.update(|a| {
        a.packages.retain(|p| p["name"] != "uds-core");
        a.malformed.insert(LIST_PULLED_PACKAGES);
    });
    let deadline = Instant::now() + WAIT;
    while sidecar.list("deployments").await.len() != 1 {
        assert!(Instant::now() < deadline, "uds-core not removed; log:\n{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sidecar.get("deployments", "edge-1:uds-core").await, None);
    let malformed_since = agent.requests(LIST_PULLED_PACKAGES);
    let deadline = Instant::now() + WAIT;
    while agent.requests(LIST_PULLED_PACKAGES) < malformed_since + 5 {
        assert!(Instant::now() < deadline, "polling stopped; log:\n{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sidecar.list("packages").await.len(), 2, "packages kept while their endpoint is malformed");
    assert_eq!(sidecar.health("agent-watcher").await, "SERVING", "degraded: the agent still answers");

    let (status, took) = sidecar.terminate();
    let log = sidecar.output();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    for once in ["agent watcher: agent is up", "agent unreachable", "agent watcher: agent recovered"] {
        assert_eq!(log.matches(once).count(), 1, "{once:?}; log:\n{log}");
    }
    assert_eq!(
        log.matches("part of its state could not be read or stored").count(),
        1,
        "one warning per state change; log:\n{log}"
    );
    assert!(log.contains("malformed response"), "log:\n{log}");
    eprintln!("SIGTERM to exit: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_refuses_bad_agent_tls_settings_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let addr = ("PEAT_SIDECAR_AGENT_ADDR", "https://127.0.0.1:8443");
    let cert = pki.client_cert.to_str().unwrap();
    let missing = dir.path().join("missing-ca.pem");

    // (environment, words the error must contain)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (vec![addr, ("PEAT_SIDECAR_AGENT_TLS_CERT", cert)], &["agent_tls_key"]),
        (vec![addr, ("PEAT_SIDECAR_AGENT_TLS_KEY", pki.client_key.to_str().unwrap())], &["agent_tls_cert"]),
        (vec![addr, ("PEAT_SIDECAR_AGENT_TLS_CA", missing.to_str().unwrap())], &["agent_tls_ca", "missing-ca.pem"]),
        (
            vec![("PEAT_SIDECAR_AGENT_ADDR", "http://127.0.0.1:8080"), ("PEAT_SIDECAR_AGENT_TLS_CA", cert)],
            &["agent_tls_ca", "https://"],
        ),
        (vec![("PEAT_SIDECAR_AGENT_ADDR", "tcp://127.0.0.1:8080")], &["agent_addr"]),
    ];
    for (env, expected) in cases {
        let options = env.iter().fold(
            SidecarOptions::new(&dir.path().join("data")).args(["--node-id", "edge-1"]),
            |options, (name, value)| options.env(*name, *value),
        );
        let (status, stderr) = options.start_expecting_failure();
        assert!(!status.success(), "{env:?} started");
        for word in expected {
            assert!(stderr.contains(word), "{env:?}: stderr lacks {word:?}:\n{stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Node B sees node A's agent state through the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_b_sees_node_a_agent_state() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let agent = AgentDouble::start_h2c(sample_agent()).await;
    let keygen = std::process::Command::new(env!("CARGO_BIN_EXE_peat-sidecar")).arg("keygen").output().unwrap();
    let key = String::from_utf8(keygen.stdout).unwrap();
    let key = key.trim();
    let mesh_a = format!("127.0.0.1:{}", free_port());
    let a = SidecarOptions::new(&dir_a.path().join("data"))
        .args(["--node-id", "node-a", "--shared-key", key, "--mesh-listen", &format!("tcp://{mesh_a}")])
        .env("PEAT_SIDECAR_AGENT_ADDR", agent.url())
        .env("PEAT_SIDECAR_AGENT_POLL_INTERVAL", "200ms");
    let a = tokio::task::block_in_place(|| a.start());
    let mesh_b = format!("tcp://127.0.0.1:{}", free_port());
    let b = SidecarOptions::new(&dir_b.path().join("data")).args([
        "--node-id",
        "node-b",
        "--shared-key",
        key,
        "--mesh-listen",
        &mesh_b,
        "--peer",
        &mesh_a,
    ]);
    let b = tokio::task::block_in_place(|| b.start());

    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    while b.get("platforms", "node-a").await.is_none() || b.list("deployments").await.len() != 2 {
        assert!(Instant::now() < deadline, "B never saw A's agent; A:\n{}\nB:\n{}", a.output(), b.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("node B saw node A's agent after {:?}", started.elapsed());

    agent.update(|x| x.packages.retain(|p| p["name"] != "uds-core"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.get("deployments", "node-a:uds-core").await.is_some() {
        assert!(Instant::now() < deadline, "B never saw the removal; B:\n{}", b.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.get("platforms", "node-a").await.unwrap()["platform_type"], "uds-remote-agent");

    // An unchanged agent costs no mesh traffic: over ten more polls B receives
    // at most the mesh's own heartbeats (a few bytes), no document sync.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let polls_before = agent.requests(STATUS);
    let (_, received_before) = b.sync_bytes().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, received_after) = b.sync_bytes().await;
    assert!(agent.requests(STATUS) >= polls_before + 5, "A kept polling its agent");
    let received = received_after - received_before;
    assert!(received < 32, "B received {received} mesh bytes while A's agent was unchanged");
    eprintln!("B received {received} mesh bytes over {} unchanged polls", agent.requests(STATUS) - polls_before);
}
