//! A local double of the UDS Remote Agent's API, for tests: a real HTTP/2
//! server on loopback (h2c, TLS or mTLS) serving `GET /status` and the
//! Connect unary JSON endpoints `zarfapi.v1.ZarfAPIService/ListPackages` and
//! `registryapi.v1.RegistryService/ListPulledPackages`, in the agent's shapes
//! (camelCase fields, protobuf JSON mapping: int64 as strings, defaults
//! omitted). Tests change its data between polls, break endpoints, and stop
//! and restart it on the same port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub const STATUS: &str = "/status";
pub const LIST_PACKAGES: &str = "/zarfapi.v1.ZarfAPIService/ListPackages";
pub const LIST_PULLED_PACKAGES: &str = "/registryapi.v1.RegistryService/ListPulledPackages";

/// What the double serves; tests edit it through [`AgentDouble::update`].
#[derive(Debug, Clone)]
pub struct AgentData {
    pub status: Json,
    /// `ListPackages` items, as sent.
    pub packages: Vec<Json>,
    /// `ListPulledPackages` registries, as sent.
    pub registries: Vec<Json>,
    /// Endpoints answering 200 with a body that is not valid JSON.
    pub malformed: BTreeSet<&'static str>,
    /// Endpoints answering with a Connect `unavailable` error.
    pub failing: BTreeSet<&'static str>,
}

impl Default for AgentData {
    fn default() -> Self {
        Self {
            status: status("0.9.0"),
            packages: Vec::new(),
            registries: Vec::new(),
            malformed: BTreeSet::new(),
            failing: BTreeSet::new(),
        }
    }
}

#[derive(Default)]
struct Shared {
    data: AgentData,
    requests: BTreeMap<String, u64>,
    /// Requests that did not follow the agent's protocol (wrong method, HTTP version, content type).
    protocol_violations: Vec<String>,
}

pub struct AgentDouble {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Mutex<Shared>>,
    server: Option<JoinHandle<()>>,
}

impl AgentDouble {
    /// An h2c (HTTP/2 prior knowledge) agent.
    pub async fn start_h2c(data: AgentData) -> Self {
        Self::start(data, None).await
    }

    /// A TLS agent; `tls` decides whether client certificates are required.
    pub async fn start_tls(data: AgentData, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start(data, Some(tls)).await
    }

    async fn start(data: AgentData, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let shared = Arc::new(Mutex::new(Shared { data, ..Shared::default() }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the agent double");
        let addr = listener.local_addr().unwrap();
        let mut double = Self { addr, tls, shared, server: None };
        double.serve(listener);
        double
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The same agent under the name `localhost` (for TLS name checks).
    pub fn localhost_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn update(&self, edit: impl FnOnce(&mut AgentData)) {
        edit(&mut self.shared.lock().unwrap().data);
    }

    /// Requests served on `path` so far.
    pub fn requests(&self, path: &str) -> u64 {
        self.shared.lock().unwrap().requests.get(path).copied().unwrap_or(0)
    }

    pub fn protocol_violations(&self) -> Vec<String> {
        self.shared.lock().unwrap().protocol_violations.clone()
    }

    /// Closes the listener and every open connection, like a crashed agent.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind the agent double");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        self.server = Some(tokio::spawn(async move {
            // Dropping the set when this task is aborted closes every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let shared = Arc::clone(&shared);
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = http2.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(acceptor) => {
                            // A client without an acceptable certificate fails here.
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http2.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }
}

impl Drop for AgentDouble {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn handle(shared: Arc<Mutex<Shared>>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let version = request.version();
    let content_type =
        request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = request.into_body().collect().await?.to_bytes();

    let mut shared = shared.lock().unwrap();
    *shared.requests.entry(path.clone()).or_default() += 1;
    if version != http::Version::HTTP_2 {
        shared.protocol_violations.push(format!("{path}: {version:?}"));
    }
    let data = shared.data.clone();
    let rpc = matches!(path.as_str(), LIST_PACKAGES | LIST_PULLED_PACKAGES);
    let endpoint: &'static str = match path.as_str() {
        STATUS => STATUS,
        LIST_PACKAGES => LIST_PACKAGES,
        LIST_PULLED_PACKAGES => LIST_PULLED_PACKAGES,
        _ => return Ok(connect_error(StatusCode::NOT_FOUND, "unimplemented", &format!("no route {path}"))),
    };
    if rpc {
        // Connect unary: POST, a JSON content type, a JSON message body.
        if method != Method::POST {
            shared.protocol_violations.push(format!("{path}: method {method}"));
            return Ok(connect_error(StatusCode::METHOD_NOT_ALLOWED, "unimplemented", "use POST"));
        }
        if content_type.as_deref() != Some("application/json") {
            shared.protocol_violations.push(format!("{path}: content type {content_type:?}"));
            return Ok(connect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unknown", "unsupported content type"));
        }
        if !matches!(serde_json::from_slice::<Json>(&body), Ok(Json::Object(_))) {
            shared.protocol_violations.push(format!("{path}: body {:?}", String::from_utf8_lossy(&body)));
            return Ok(connect_error(StatusCode::BAD_REQUEST, "invalid_argument", "the request is not a JSON message"));
        }
    } else if method != Method::GET {
        shared.protocol_violations.push(format!("{path}: method {method}"));
        return Ok(Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).body(Full::default()).unwrap());
    }
    drop(shared);

    if data.failing.contains(endpoint) {
        return Ok(connect_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the cluster is not reachable"));
    }
    if data.malformed.contains(endpoint) {
        return Ok(json_response(Bytes::from_static(b"{\"packages\": [{\"name\": \"trunc")));
    }
    let message = match endpoint {
        STATUS => {
            let mut status = data.status;
            // The agent reports its clock, so the body differs on every call.
            if let Some(fields) = status.as_object_mut().filter(|f| f.contains_key("systemTime")) {
                fields.insert("systemTime".into(), json!(clock()));
            }
            status
        }
        LIST_PACKAGES if data.packages.is_empty() => json!({}),
        LIST_PACKAGES => json!({ "packages": data.packages }),
        _ if data.registries.is_empty() => json!({}),
        _ => json!({ "registries": data.registries }),
    };
    Ok(json_response(Bytes::from(message.to_string())))
}

fn json_response(body: Bytes) -> Response<Full<Bytes>> {
    Response::builder().header(http::header::CONTENT_TYPE, "application/json").body(Full::new(body)).unwrap()
}

/// A Connect protocol error: its JSON body and the matching HTTP status.
fn connect_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json!({ "code": code, "message": message }).to_string())))
        .unwrap()
}

/// A `/status` body.
pub fn status(version: &str) -> Json {
    json!({
        "version": version,
        "architecture": "amd64",
        "classification": "UNCLASSIFIED",
        "k8sVersion": "v1.31.4+k3s1",
        "k8sNodeStatus": "Ready",
        "zarfVersion": "v0.60.0",
        "runMode": "cluster",
        "systemTime": clock(),
    })
}

/// The agent's clock (unix milliseconds): different on every poll, as the real one is.
pub fn clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A `ListPackages` item; defaults are omitted as protobuf JSON does.
pub fn deployed(name: &str, version: &str, status: i32) -> Json {
    let mut item = json!({ "name": name, "version": version, "annotations": { "deployed-by": "tests" } });
    if status != 0 {
        item["status"] = json!(status);
    }
    item
}

/// A `ListPulledPackages` registry holding one package with `tags`.
pub fn registry(name: &str, package: &str, tags: Vec<Json>) -> Json {
    json!({
        "name": name,
        "host": format!("{name}.example:5000"),
        "packages": [{ "repoName": format!("library/{package}"), "packageName": package, "tags": tags }],
    })
}

/// A pulled tag; int64 fields as strings, per the protobuf JSON mapping.
pub fn tag(reference: &str, arch: &str, version: &str, total_bytes: i64) -> Json {
    json!({
        "reference": reference,
        "arch": arch,
        "version": version,
        "totalBytes": total_bytes.to_string(),
        "pullInfo": { "downloadedBytes": total_bytes.to_string(), "status": 2 },
    })
}
