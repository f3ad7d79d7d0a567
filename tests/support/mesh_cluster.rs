//! Test harness for mesh tests and benchmarks: real `peat-sidecar` processes,
//! each with its own data directory, config file, log file and API socket,
//! optionally inside a network namespace (see [`Netns`]), plus helpers to
//! wait for convergence and to compare documents across nodes.
//!
//! Included with `#[path]` by tests/mesh.rs, tests/mesh_netns.rs and
//! benches/mesh.rs, so each user compiles only what it calls.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use peat_sidecar::ctl::Client;
use peat_sidecar::proto::peat::sidecar::v1::*;

/// The formation key most tests share.
pub const KEY: &str = "mesh-test-formation-key-0123456789abcdef";
pub const APP: &str = "mesh-test";

/// TLS files of one node (PEM paths).
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// How to start one node.
#[derive(Debug, Clone)]
pub struct Spec {
    pub node_id: String,
    pub app_id: String,
    pub shared_key: Option<String>,
    pub peers: Vec<String>,
    /// `tcp://HOST:PORT`; port 0 picks a free one, which is then kept across restarts.
    pub mesh_listen: String,
    pub tls: Option<TlsPaths>,
    pub auto_sync: bool,
    /// Runs the node inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    pub log_level: String,
    /// Further config-file settings, written as given.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Spec {
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            app_id: APP.to_owned(),
            shared_key: Some(KEY.to_owned()),
            peers: Vec::new(),
            mesh_listen: "tcp://127.0.0.1:0".to_owned(),
            tls: None,
            auto_sync: true,
            netns: None,
            log_level: "info".to_owned(),
            extra: BTreeMap::new(),
        }
    }

    /// Sets any other config-file key.
    pub fn setting(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn peer(mut self, node: &Node) -> Self {
        self.peers.push(node.peer_spec());
        self
    }
}

/// A running (or stopped) sidecar process.
pub struct Node {
    pub spec: Spec,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<tokio::process::Child>,
    client: Option<Client>,
    /// The mesh address the node listens on (`host:port`).
    pub mesh_addr: String,
}

impl Node {
    /// Starts a node in a fresh temporary directory and waits until its API answers.
    pub async fn start(spec: Spec) -> Node {
        let tmp = tempfile::Builder::new().prefix("peat-mesh-").tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut node = Node { spec, dir, _tmp: Some(tmp), child: None, client: None, mesh_addr: String::new() };
        node.launch().await;
        node
    }

    fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// `node_id@host:port`, for other nodes' `peers`.
    pub fn peer_spec(&self) -> String {
        format!("{}@{}", self.spec.node_id, self.mesh_addr)
    }

    fn write_config(&self) -> PathBuf {
        let mut config = serde_json::json!({
            "listen": format!("unix://{}", self.api_socket().display()),
            "data_dir": self.dir.join("data"),
            "node_id": self.spec.node_id,
            "app_id": self.spec.app_id,
            "peers": self.spec.peers,
            "mesh_listen": self.spec.mesh_listen,
            "auto_sync": self.spec.auto_sync,
            "log_level": self.spec.log_level,
        });
        if let Some(key) = &self.spec.shared_key {
            config["shared_key"] = key.clone().into();
        }
        if let Some(tls) = &self.spec.tls {
            config["mesh_tls_cert"] = tls.cert.display().to_string().into();
            config["mesh_tls_key"] = tls.key.display().to_string().into();
            config["mesh_tls_ca"] = tls.ca.display().to_string().into();
        }
        for (key, value) in &self.spec.extra {
            config[key] = value.clone();
        }
        // YAML is a superset of JSON.
        let path = self.dir.join("config.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).expect("writing config");
        path
    }

    async fn launch(&mut self) {
        let config = self.write_config();
        let _ = std::fs::remove_file(self.api_socket());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let bin = env!("CARGO_BIN_EXE_peat-sidecar");
        let mut command = match &self.spec.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => tokio::process::Command::new(bin),
        };
        command.arg("--config").arg(&config).arg("serve");
        for (name, _) in std::env::vars() {
            if name.starts_with("PEAT_SIDECAR_")
                || ["NOTIFY_SOCKET", "WATCHDOG_USEC", "RUST_LOG"].contains(&name.as_str())
            {
                command.env_remove(name);
            }
        }
        // Plain text logs, so tests can search them.
        command.env("NO_COLOR", "1");
        command.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).kill_on_drop(true);
        let child = command.spawn().expect("starting peat-sidecar");
        self.child = Some(child);
        let client = peat_sidecar::ctl::connect(&format!("unix://{}", self.api_socket().display())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if self.api_socket().exists()
                && let Ok(status) = client.get_status(GetStatusRequest::default()).await
            {
                break status.into_owned();
            }
            if let Some(Ok(Some(exit))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited during startup ({exit}); log:\n{}", self.spec.node_id, self.log());
            }
            assert!(Instant::now() < deadline, "{} did not start; log:\n{}", self.spec.node_id, self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !status.endpoint_addr.is_empty() {
            self.mesh_addr = status.endpoint_addr.clone();
            // Keep the address across restarts so peers find the node again.
            self.spec.mesh_listen = format!("tcp://{}", status.endpoint_addr);
        }
        self.client = Some(client);
    }

    /// The API client; panics while the node is stopped.
    pub fn api(&self) -> &Client {
        self.client.as_ref().unwrap_or_else(|| panic!("{} is not running", self.spec.node_id))
    }

    /// Stops the process: SIGTERM (graceful) or SIGKILL (crash).
    pub async fn stop(&mut self, graceful: bool) {
        self.client = None;
        let Some(mut child) = self.child.take() else { return };
        if graceful {
            let pid = child.id().expect("running child") as libc::pid_t;
            // SAFETY: signalling a child process we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
                Ok(status) => assert!(status.unwrap().success(), "{} exited non-zero on SIGTERM", self.spec.node_id),
                Err(_) => panic!("{} did not stop within 15 s of SIGTERM", self.spec.node_id),
            }
        } else {
            child.kill().await.expect("killing node");
        }
    }

    /// Starts the process again on the same data directory and mesh address.
    pub async fn restart(&mut self) {
        self.stop(true).await;
        self.launch().await;
    }

    pub async fn relaunch(&mut self) {
        assert!(self.child.is_none(), "relaunch needs a stopped node");
        self.launch().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub async fn put(&self, collection: &str, doc_id: &str, json: &str) {
        self.api()
            .put_document(PutDocumentRequest {
                collection: collection.into(),
                doc_id: doc_id.into(),
                json_data: json.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("put {collection}/{doc_id} on {}: {e}", self.spec.node_id));
    }

    pub async fn delete(&self, collection: &str, doc_id: &str) {
        self.api()
            .delete_document(DeleteDocumentRequest {
                collection: collection.into(),
                doc_id: doc_id.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("delete {collection}/{doc_id} on {}: {e}", self.spec.node_id));
    }

    pub async fn get(&self, collection: &str, doc_id: &str) -> Option<String> {
        self.api()
            .get_document(GetDocumentRequest {
                collection: collection.into(),
                doc_id: doc_id.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("get {collection}/{doc_id} on {}: {e}", self.spec.node_id))
            .into_owned()
            .json_data
    }

    pub async fn list(&self, collection: &str) -> Vec<String> {
        self.api()
            .list_documents(ListDocumentsRequest { collection: collection.into(), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("list {collection} on {}: {e}", self.spec.node_id))
            .into_owned()
            .doc_ids
    }

    /// Every live document of `collection` with its JSON text, byte for byte.
    pub async fn dump(&self, collection: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for id in self.list(collection).await {
            if let Some(json) = self.get(collection, &id).await {
                out.insert(id, json);
            }
        }
        out
    }

    pub async fn stats(&self) -> GetSyncStatsResponse {
        self.api().get_sync_stats(GetSyncStatsRequest::default()).await.expect("GetSyncStats").into_owned()
    }

    pub async fn status(&self) -> GetStatusResponse {
        self.api().get_status(GetStatusRequest::default()).await.expect("GetStatus").into_owned()
    }

    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.api().list_peers(ListPeersRequest::default()).await.expect("ListPeers").into_owned().peers
    }

    /// Whether this node has a live session with `node_id`.
    /// Asks this node to dial `to` (ConnectPeer with its node id and mesh address).
    pub async fn dial(&self, to: &Node) {
        self.api()
            .connect_peer(ConnectPeerRequest {
                endpoint_id: to.spec.node_id.clone(),
                addresses: vec![to.mesh_addr.clone()],
                ..Default::default()
            })
            .await
            .expect("ConnectPeer");
    }

    pub async fn connected_to(&self, node_id: &str) -> bool {
        self.peers().await.iter().any(|p| p.endpoint_id == node_id && p.connected)
    }

    /// Waits until the document on this node equals `expected` (`None` = absent).
    pub async fn wait_doc(&self, collection: &str, doc_id: &str, expected: Option<&str>, timeout: Duration) {
        let what = format!("{collection}/{doc_id} = {expected:?} on {}", self.spec.node_id);
        wait_until(&what, timeout, || async { self.get(collection, doc_id).await.as_deref() == expected }).await;
    }

    /// Waits until this node lists `count` live documents in `collection`.
    pub async fn wait_count(&self, collection: &str, count: usize, timeout: Duration) {
        let what = format!("{count} documents in {collection} on {}", self.spec.node_id);
        wait_until(&what, timeout, || async { self.list(collection).await.len() == count }).await;
    }
}

/// Polls `check` every 25 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every node holds byte-identical documents in `collection`; returns the common set.
pub async fn wait_identical(nodes: &[&Node], collection: &str, timeout: Duration) -> BTreeMap<String, String> {
    let started = Instant::now();
    loop {
        let first = nodes[0].dump(collection).await;
        let mut same = true;
        for node in &nodes[1..] {
            if node.dump(collection).await != first {
                same = false;
                break;
            }
        }
        if same {
            return first;
        }
        if started.elapsed() > timeout {
            let mut report = String::new();
            for node in nodes {
                report.push_str(&format!("\n{}: {:?}", node.spec.node_id, node.dump(collection).await));
            }
            panic!("documents in {collection} did not converge within {timeout:?}:{report}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that a node's log contains `needle`, waiting briefly for it to be written.
pub async fn assert_log(node: &Node, needle: &str) {
    let found = async {
        for _ in 0..200 {
            if node.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    };
    assert!(found.await, "log of {} lacks {needle:?}:\n{}", node.spec.node_id, node.log());
}

/// A CA and node certificates (IP SAN 127.0.0.1 and `extra_ips`), all from rcgen.
pub struct TestPki {
    pub dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir: dir.to_owned(), ca }
    }

    /// Issues a certificate for `node` valid for 127.0.0.1 (plus `extra_ips`) as server and client.
    pub fn issue(&self, node: &str, extra_ips: &[&str]) -> TlsPaths {
        let mut sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        sans.extend(extra_ips.iter().map(|ip| ip.to_string()));
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, node);
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let paths = TlsPaths {
            cert: self.dir.join(format!("{node}.crt")),
            key: self.dir.join(format!("{node}.key")),
            ca: self.dir.join("ca.pem"),
        };
        std::fs::write(&paths.cert, cert.pem()).unwrap();
        std::fs::write(&paths.key, key.serialize_pem()).unwrap();
        paths
    }
}

/// Collects `Subscribe` events of a node in the background.
pub struct Watcher {
    pub events: tokio::sync::mpsc::UnboundedReceiver<(Instant, DocumentChange)>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    pub async fn start(node: &Node, collections: &[&str]) -> Watcher {
        let mut stream = node
            .api()
            .subscribe(SubscribeRequest {
                collections: collections.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("Subscribe");
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                let change: DocumentChange = message.to_owned_message();
                if tx.send((Instant::now(), change)).is_err() {
                    break;
                }
            }
        });
        Watcher { events, task }
    }

    /// The next event matching `pred`, within `timeout`.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&DocumentChange) -> bool,
    ) -> (Instant, DocumentChange) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((at, change))) if pred(&change) => return (at, change),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the Subscribe stream ended"),
                Err(_) => panic!("no matching Subscribe event within {timeout:?}"),
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace created for a test and deleted (with its veths) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = std::process::Command::new("ip").args(["netns", "del", name]).output();
        sh("ip", &["netns", "add", name]);
        let ns = Netns { name: name.to_owned() };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, command: &[&str]) -> String {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        sh("ip", &args)
    }

    /// Connects two namespaces with a veth pair `<a_if>`/`<b_if>` and addresses them (CIDR).
    pub fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
        sh("ip", &["link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name]);
        a.exec(&["ip", "addr", "add", a_addr, "dev", a_if]);
        b.exec(&["ip", "addr", "add", b_addr, "dev", b_if]);
        a.exec(&["ip", "link", "set", a_if, "up"]);
        b.exec(&["ip", "link", "set", b_if, "up"]);
    }

    /// Runs `f` on a thread whose network namespace is this one (sockets it creates live here).
    pub fn spawn_thread<F>(&self, f: F) -> std::thread::JoinHandle<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f();
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Whether this process may create network namespaces; prints why not otherwise.
pub fn netns_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: network namespaces need root (run the tests as root)");
        return false;
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables"), ("tc", "iproute2")] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("{tool} is missing; installing {package} with apt-get");
            let _ = std::process::Command::new("apt-get").arg("update").status();
            sh("apt-get", &["install", "-y", "--no-install-recommends", package]);
        }
    }
    true
}
