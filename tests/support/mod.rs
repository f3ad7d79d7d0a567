//! Shared integration-test support: runs the real `peat-sidecar` binary on a
//! loopback port or a Unix socket in a temporary directory, waits until it
//! logs that it is ready, builds API clients for every protocol/transport
//! combination, and sends raw HTTP requests for malformed-input checks.
//!
//! Each test binary uses a different subset of this module.
#![allow(dead_code)]

pub mod agent_double;
pub mod noise;
pub mod notify;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use connectrpc::Protocol;
use connectrpc::client::SharedHttp2Connection;
use connectrpc::client::{BoxFuture, ClientBody, ClientConfig, ClientTransport, Http2Connection, HttpClient};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use peat_sidecar::proto::peat::sidecar::v1::{
    GetDocumentRequest, GetSyncStatsRequest, ListDocumentsRequest, PeatSidecarClient, PutDocumentRequest,
};
use peat_sidecar::store::{DocumentStore, StoreError, StoreOptions};

/// Path of the binary under test: `PEAT_SIDECAR_BIN` when set (to run the
/// suite or the benchmark against another build, e.g. the static musl
/// release binary), else the binary cargo built for this test.
pub fn binary() -> PathBuf {
    match std::env::var_os("PEAT_SIDECAR_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_peat-sidecar")),
    }
}

/// How long a sidecar gets to report readiness (debug builds on a busy machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// `tcp://127.0.0.1:0`; the real port is read from the ready log line.
    Tcp,
    /// `unix://<tempdir>/api.sock`.
    Unix,
}

/// How to start a sidecar. The data directory outlives the process so a
/// test can restart on the same state.
#[derive(Clone)]
pub struct SidecarOptions {
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The config file's content (default: `log_level: info`).
    pub config: Option<String>,
}

impl SidecarOptions {
    pub fn new(data_dir: &Path) -> Self {
        Self { data_dir: data_dir.to_owned(), listen: Listen::Tcp, args: Vec::new(), env: Vec::new(), config: None }
    }

    /// Starts with `yaml` as the config file (`--config`).
    pub fn config(mut self, yaml: impl Into<String>) -> Self {
        self.config = Some(yaml.into());
        self
    }

    pub fn listen(mut self, listen: Listen) -> Self {
        self.listen = listen;
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    fn socket_path(&self) -> PathBuf {
        self.data_dir.with_extension("sock")
    }

    /// The command line, with an isolated environment: no system config
    /// file, no inherited `PEAT_SIDECAR_*` or systemd variables.
    fn command(&self) -> Command {
        let listen = match self.listen {
            Listen::Tcp => "tcp://127.0.0.1:0".to_owned(),
            Listen::Unix => format!("unix://{}", self.socket_path().display()),
        };
        let config = self.data_dir.with_extension("yaml");
        if let Some(yaml) = &self.config {
            std::fs::write(&config, yaml).expect("writing the test config file");
        } else if !config.exists() {
            std::fs::write(&config, "log_level: info\n").expect("writing the test config file");
        }
        let mut cmd = Command::new(binary());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.data_dir.parent().expect("data dir has a parent"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--log-format")
            .arg("json")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the sidecar and waits until it is serving.
    pub fn start(self) -> Sidecar {
        match self.try_start() {
            Ok(sidecar) => sidecar,
            Err(output) => panic!("the sidecar did not become ready:\n{output}"),
        }
    }

    /// Starts the sidecar; on failure returns everything it printed.
    pub fn try_start(self) -> Result<Sidecar, String> {
        let started = Instant::now();
        let mut child = self.command().spawn().expect("spawning peat-sidecar");
        let output = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut readers = Vec::new();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr piped")),
        ] {
            let output = Arc::clone(&output);
            let ready_tx = ready_tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(api) = ready_api(&line) {
                        let _ = ready_tx.send(api);
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            }));
        }
        drop(ready_tx);
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(api) => Ok(Sidecar { child, addr: api, options: self, output, readers, ready_after: started.elapsed() }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(output.lock().unwrap().clone())
            }
        }
    }

    /// Runs the sidecar expecting it to fail at startup; returns its exit
    /// status and combined output.
    pub fn start_expecting_failure(self) -> (ExitStatus, String) {
        let mut child = self.command().spawn().expect("spawning peat-sidecar");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for peat-sidecar") {
                let output = child.wait_with_output().expect("collecting output");
                let text =
                    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
                return (status, text);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().expect("collecting output");
                panic!("the sidecar kept running:\n{}", String::from_utf8_lossy(&output.stderr));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The `api` field of the JSON "peat-sidecar ready" log line.
fn ready_api(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != "peat-sidecar ready" {
        return None;
    }
    Some(value.get("api")?.as_str()?.to_owned())
}

/// A running sidecar; killed when dropped.
pub struct Sidecar {
    child: Child,
    /// `tcp://127.0.0.1:PORT` or `unix:///path`.
    pub addr: String,
    pub options: SidecarOptions,
    output: Arc<Mutex<String>>,
    /// The threads collecting `output`; they end when the process has exited.
    readers: Vec<std::thread::JoinHandle<()>>,
    pub ready_after: Duration,
}

impl Sidecar {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the process logged so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:PORT` for TCP sidecars.
    pub fn http_base(&self) -> String {
        let hostport = self.addr.strip_prefix("tcp://").expect("a TCP sidecar");
        format!("http://{hostport}")
    }

    pub fn socket_path(&self) -> Option<PathBuf> {
        self.addr.strip_prefix("unix://").map(PathBuf::from)
    }

    /// A client for `protocol` over HTTP/2 (h2c or over the Unix socket).
    pub fn client_h2(&self, protocol: Protocol, json: bool) -> Client {
        let (connection, base) = match self.socket_path() {
            Some(path) => {
                let uri: http::Uri = "http://localhost".parse().unwrap();
                (Http2Connection::lazy_unix(path, uri.clone()), uri)
            }
            None => {
                let uri: http::Uri = self.http_base().parse().unwrap();
                (Http2Connection::lazy_plaintext(uri.clone()), uri)
            }
        };
        client(AnyTransport::H2(connection.shared(64)), base, protocol, json)
    }

    /// A client for `protocol` over pooled HTTP/1.1 connections (TCP only).
    pub fn client_h1(&self, protocol: Protocol, json: bool) -> Client {
        let base: http::Uri = self.http_base().parse().unwrap();
        client(AnyTransport::H1(Box::new(HttpClient::plaintext())), base, protocol, json)
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the status
    /// and how long it took. [`Self::output`] is then complete.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        signal(self.pid(), libc::SIGTERM);
        let deadline = started + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for peat-sidecar") {
                let took = started.elapsed();
                for reader in self.readers.drain(..) {
                    reader.join().expect("output reader");
                }
                return (status, took);
            }
            assert!(Instant::now() < deadline, "no exit within 15 s of SIGTERM:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status, if the process has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for peat-sidecar")
    }

    /// SIGKILLs the process and reaps it; returns the options to restart it.
    pub fn kill(mut self) -> SidecarOptions {
        signal(self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
        self.options.clone()
    }

    /// Stops with SIGTERM (asserting a clean exit) and starts again on the same data.
    pub fn restart(mut self) -> Sidecar {
        let (status, _) = self.terminate();
        assert!(status.success(), "exit status {status} after SIGTERM:\n{}", self.output());
        self.options.clone().start()
    }

    /// The document's JSON, or `None` when not found.
    pub async fn get(&self, collection: &str, doc_id: &str) -> Option<serde_json::Value> {
        let request = GetDocumentRequest { collection: collection.into(), doc_id: doc_id.into(), ..Default::default() };
        let response = self.client_h1(Protocol::Connect, true).get_document(request).await.ok()?.into_owned();
        response.json_data.map(|json| serde_json::from_str(&json).expect("stored documents are JSON"))
    }

    pub async fn list(&self, collection: &str) -> Vec<String> {
        let request = ListDocumentsRequest { collection: collection.into(), ..Default::default() };
        self.client_h1(Protocol::Connect, true).list_documents(request).await.unwrap().into_owned().doc_ids
    }

    /// Mesh bytes (sent, received) so far, from `GetSyncStats`.
    pub async fn sync_bytes(&self) -> (u64, u64) {
        let client = self.client_h1(Protocol::Connect, true);
        let stats = client.get_sync_stats(GetSyncStatsRequest::default()).await.unwrap().into_owned();
        (stats.bytes_sent, stats.bytes_received)
    }

    /// The `grpc.health.v1` status of `service` as Connect JSON names it
    /// (`SERVING`, `NOT_SERVING`), or the error code (`not_found`).
    pub async fn health(&self, service: &str) -> String {
        let body = serde_json::json!({ "service": service }).to_string().into_bytes();
        let headers = [("content-type", "application/json")];
        let response = raw_post(self, false, "/grpc.health.v1.Health/Check", &headers, body).await;
        let json: serde_json::Value = serde_json::from_slice(&response.body).expect("a JSON answer");
        let field = if response.status.is_success() { "status" } else { "code" };
        json[field].as_str().unwrap_or_else(|| panic!("no {field} in {json}")).to_owned()
    }
}

/// A loopback port that was free a moment ago.
/// Opens a store in this process, waiting while the background threads of
/// a previous open of the same directory still hold sled's lock on it.
pub fn open_store(options: &StoreOptions) -> DocumentStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match DocumentStore::open(options) {
            Err(StoreError::InUse(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            result => return result.expect("opening the store"),
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Either client transport, so one test body serves every combination.
#[derive(Clone)]
pub enum AnyTransport {
    H1(Box<HttpClient>),
    H2(SharedHttp2Connection),
}

impl ClientTransport for AnyTransport {
    type ResponseBody = hyper::body::Incoming;
    type Error = connectrpc::ConnectError;

    fn send(
        &self,
        request: http::Request<ClientBody>,
    ) -> BoxFuture<'static, Result<http::Response<Self::ResponseBody>, Self::Error>> {
        match self {
            Self::H1(client) => client.send(request),
            Self::H2(connection) => connection.send(request),
        }
    }
}

pub type Client = PeatSidecarClient<AnyTransport>;

fn client(transport: AnyTransport, base: http::Uri, protocol: Protocol, json: bool) -> Client {
    let mut config = ClientConfig::new(base).with_protocol(protocol).with_default_timeout(Duration::from_secs(30));
    if json {
        config = config.json();
    }
    PeatSidecarClient::new(transport, config)
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A gRPC status header, from the trailers or (trailers-only responses) the headers.
    pub fn grpc_header(&self, name: &str) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| self.headers.get(name))
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    }
}

/// POSTs `body` to `path` of a TCP sidecar, bypassing every client library:
/// what curl or a broken client would send.
pub async fn raw_post(
    sidecar: &Sidecar,
    http2: bool,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> RawResponse {
    let hostport = sidecar.addr.strip_prefix("tcp://").expect("a TCP sidecar");
    raw_post_to(hostport, http2, path, headers, body).await
}

/// [`raw_post`] to the API at `hostport`.
pub async fn raw_post_to(
    hostport: &str,
    http2: bool,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> RawResponse {
    let stream = tokio::net::TcpStream::connect(hostport).await.expect("connecting to the sidecar");
    let io = TokioIo::new(stream);
    let mut request = http::Request::post(format!("http://{hostport}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("sending the raw request")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("sending the raw request")
    };
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("reading the raw response");
    let trailers = collected.trailers().cloned();
    RawResponse { status: parts.status, headers: parts.headers, body: collected.to_bytes(), trailers }
}

/// A gRPC length-prefixed message frame.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// A multi-threaded runtime for tests that drive blocking process control too.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Polls `check` every 20 ms until it returns true; panics after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `PutDocument` request.
pub fn put(collection: &str, doc_id: &str, json: &str) -> PutDocumentRequest {
    PutDocumentRequest {
        collection: collection.into(),
        doc_id: doc_id.into(),
        json_data: json.into(),
        ..Default::default()
    }
}
