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
    if let Some(ServerTls(config)) = tls {
        builder = match builder.tls_config(config) {
            Ok(builder) => builder,
            Err(err) => {
                tracing::error!(error = %err, "mesh TLS configuration rejected; mesh listener not started");
                return;
            }
        };
    }
    let incoming = TcpListenerStream::new(listener);
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
    let channel = endpoint.connect().await.map_err(|e| SessionEnd::Transport(transport_error(&e)))?;
    let mut client =
        MeshClient::new(channel).max_decoding_message_size(MAX_FRAME_BYTES).max_encoding_message_size(MAX_FRAME_BYTES);
    let (out, outbound) = mpsc::channel(OUTBOUND_FRAMES);
    let response = client
        .session(ReceiverStream::new(outbound))
        .await
        .map_err(|status| SessionEnd::Transport(status.message().to_owned()))?;
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
