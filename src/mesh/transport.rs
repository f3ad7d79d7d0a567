//! The mesh's wire: a tonic gRPC service (`peat.mesh.v1.Mesh/Session`) on the
//! mesh listener, the dialing client, and their rustls configuration.
//!
//! With TLS configured, both ends present certificates signed by the
//! formation CA (mutual TLS); without it the mesh runs plaintext HTTP/2 and
//! relies on the shared-key handshake alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use super::auth::Role;
use super::options::TlsFiles;
use super::proto::Frame;
use super::proto::mesh_client::MeshClient;
use super::proto::mesh_server::{Mesh as MeshRpc, MeshServer};
use super::session::{self, SessionEnd};

/// Largest frame accepted; larger ones end the session.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(10);
const OUTBOUND_FRAMES: usize = 64;

fn read(path: &std::path::Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("setting `{setting}`: reading {}", path.display()))
}

pub struct ServerTls(ServerTlsConfig);

impl ServerTls {
    pub fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        let identity = Identity::from_pem(read(&files.cert, "mesh_tls_cert")?, read(&files.key, "mesh_tls_key")?);
        let ca = Certificate::from_pem(read(&files.ca, "mesh_tls_ca")?);
        Ok(Self(ServerTlsConfig::new().identity(identity).client_ca_root(ca)))
    }
}

pub struct ClientTls {
    identity: Identity,
    ca: Certificate,
}

impl ClientTls {
    pub fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        Ok(Self {
            identity: Identity::from_pem(read(&files.cert, "mesh_tls_cert")?, read(&files.key, "mesh_tls_key")?),
            ca: Certificate::from_pem(read(&files.ca, "mesh_tls_ca")?),
        })
    }

    fn config_for(&self, host: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'))
    }
}

struct MeshService {
    shared: Arc<Shared>,
}

type FrameStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Frame, Status>> + Send>>;

#[tonic::async_trait]
impl MeshRpc for MeshService {
    type SessionStream = FrameStream;

    async fn session(&self, request: Request<Streaming<Frame>>) -> Result<Response<FrameStream>, Status> {
        let remote = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        let incoming: session::Incoming = Box::pin(request.into_inner());
        let (out, outbound) = mpsc::channel(OUTBOUND_FRAMES);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let result = session::run(shared, Role::Listener, incoming, out, None, remote.clone(), |_| {}).await;
            log_end(&remote, result);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound).map(Ok))))
    }
}

fn log_end(remote: &str, result: Result<(), SessionEnd>) {
    match result {
        Ok(()) | Err(SessionEnd::Stopped | SessionEnd::Closed | SessionEnd::Duplicate) => {
            tracing::info!(%remote, "mesh session closed")
        }
        Err(end @ (SessionEnd::Refused(_) | SessionEnd::RefusedByPeer(_) | SessionEnd::Protocol(_))) => {
            tracing::warn!(%remote, reason = %end, "mesh session refused")
        }
        Err(end) => tracing::info!(%remote, reason = %end, "mesh session ended"),
    }
}

/// Accepts peers on `listener` until shutdown.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = MeshServer::new(MeshService { shared })
        .max_decoding_message_size(MAX_FRAME_BYTES)
        .max_encoding_message_size(MAX_FRAME_BYTES);
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE));
    let builder_has_tls = tls.is_some();
    if let Some(ServerTls(config)) = tls {
        builder = match builder.tls_config(config) {
            Ok(builder) => builder,
            Err(err) => {
                tracing::error!(error = %err, "mesh TLS configuration rejected; mesh listener not started");
                return;
            }
        };
    }
    let incoming: Incoming = if builder_has_tls {
        Box::pin(tls_only(listener, shutdown.clone()))
    } else {
        Box::pin(TcpListenerStream::new(listener))
    };
    let result = builder
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "mesh listener failed");
    }
}

type Incoming = std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<TcpStream>> + Send>>;

/// Accepts connections for a TLS listener, turning away (with a log line)
/// those that do not open with a TLS handshake record: otherwise a peer
/// missing its TLS settings would fail silently on this side.
fn tls_only(
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> impl futures::Stream<Item = std::io::Result<TcpStream>> {
    let (accepted, incoming) = mpsc::channel(OUTBOUND_FRAMES);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                result = listener.accept() => match result {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "mesh listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = super::until(&mut shutdown, true) => return,
            };
            let accepted = accepted.clone();
            // Peeking waits for the client's first bytes; do it off the accept loop.
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                match tokio::time::timeout(CONNECT_TIMEOUT, stream.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                    Ok(Ok(1)) => tracing::warn!(
                        %remote,
                        "mesh session refused: plaintext connection to a TLS mesh listener \
                         (the peer needs mesh_tls_cert, mesh_tls_key and mesh_tls_ca)"
                    ),
                    _ => tracing::info!(%remote, "mesh connection closed before a TLS handshake"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// First byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Connects to `address` and runs one session there.
pub async fn dial(
    shared: &Arc<Shared>,
    address: &str,
    expected: &str,
    reached: &Arc<Mutex<Option<String>>>,
) -> Result<(), SessionEnd> {
    let scheme = if shared.tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| SessionEnd::Transport(format!("bad address {address}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE);
    if let Some(tls) = &shared.tls {
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        endpoint = endpoint
            .tls_config(tls.config_for(host))
            .map_err(|e| SessionEnd::Transport(format!("TLS configuration: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| SessionEnd::Transport(format!("{}{}", transport_error(&e), plaintext_hint(shared))))?;
    let mut client =
        MeshClient::new(channel).max_decoding_message_size(MAX_FRAME_BYTES).max_encoding_message_size(MAX_FRAME_BYTES);
    let (out, outbound) = mpsc::channel(OUTBOUND_FRAMES);
    let response = client
        .session(ReceiverStream::new(outbound))
        .await
        .map_err(|status| SessionEnd::Transport(format!("{}{}", status.message(), plaintext_hint(shared))))?;
    let incoming: session::Incoming = Box::pin(response.into_inner());
    let expected = (!expected.is_empty()).then(|| expected.to_owned());
    let result = session::run(Arc::clone(shared), Role::Dialer, incoming, out, expected, address.to_owned(), |id| {
        *reached.lock().expect("reached lock") = Some(id.to_owned());
    })
    .await;
    match result {
        Err(SessionEnd::Stopped) => Ok(()),
        other => other,
    }
}

/// A TLS listener drops a plaintext dialer without a word; say what may be wrong.
fn plaintext_hint(shared: &Shared) -> &'static str {
    if shared.tls.is_none() {
        " (this node dials without TLS; a peer whose mesh requires TLS closes such connections)"
    } else {
        ""
    }
}

/// The innermost cause of a connection failure: tonic wraps the useful part.
fn transport_error(err: &tonic::transport::Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        message = format!("{message}: {inner}");
        source = inner.source();
    }
    message
}
