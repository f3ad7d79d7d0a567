//! The mesh's wire: a tonic gRPC service (`peat.mesh.v1.Mesh/Session`) on the
//! mesh listener, the dialing client, and their rustls configuration.
//!
//! With TLS configured, both ends present certificates signed by the
//! formation CA (mutual TLS); without it the mesh runs plaintext HTTP/2 and
//! relies on the shared-key handshake alone. The listener runs the TLS
//! handshake itself (rather than inside tonic) so that a refused peer is
//! logged here with its address and the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server};
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use super::auth::Role;
use super::options::TlsFiles;
use super::proto::Frame;
use super::proto::mesh_client::MeshClient;
use super::proto::mesh_server::{Mesh as MeshRpc, MeshServer};
use super::session::{self, SessionEnd};
use crate::pem;

/// Largest frame accepted; larger ones end the session.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(10);
const OUTBOUND_FRAMES: usize = 64;
/// How long a refused session stays open for the peer to read the reason.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// The listener's TLS side: its certificate, and the CA every dialer's
/// client certificate must chain to (client certificates are required).
pub struct ServerTls(TlsAcceptor);

impl ServerTls {
    pub fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem::certificates(&files.ca, "mesh_tls_ca")? {
            roots.add(cert).with_context(|| format!("setting `mesh_tls_ca`: {}", files.ca.display()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .with_context(|| format!("setting `mesh_tls_ca`: {} is not a usable CA", files.ca.display()))?;
        let chain = pem::certificates(&files.cert, "mesh_tls_cert")?;
        let key = pem::private_key(&files.key, "mesh_tls_key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("settings `mesh_tls_cert` and `mesh_tls_key` do not form a usable identity")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self(TlsAcceptor::from(Arc::new(config))))
    }
}

pub struct ClientTls {
    identity: Identity,
    ca: Certificate,
}

impl ClientTls {
    pub fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        Ok(Self {
            identity: Identity::from_pem(
                pem::read(&files.cert, "mesh_tls_cert")?,
                pem::read(&files.key, "mesh_tls_key")?,
            ),
            ca: Certificate::from_pem(pem::read(&files.ca, "mesh_tls_ca")?),
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
        // tonic rejects a frame over MAX_FRAME_BYTES before the session sees
        // it; note that, so the end is logged as the peer's fault.
        let oversize = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&oversize);
        let incoming: session::Incoming = Box::pin(request.into_inner().inspect(move |item| {
            if let Err(status) = item
                && status.code() == tonic::Code::OutOfRange
            {
                seen.store(true, Ordering::Relaxed);
            }
        }));
        let (out, outbound) = mpsc::channel(OUTBOUND_FRAMES);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let held = out.clone();
            let mut result = session::run(shared, Role::Listener, incoming, out, None, remote.clone(), |_| {}).await;
            if let Err(SessionEnd::Transport(reason)) = &result
                && oversize.load(Ordering::Relaxed)
            {
                result = Err(SessionEnd::Protocol(format!(
                    "oversize frame (the limit is {MAX_FRAME_BYTES} bytes): {reason}"
                )));
            }
            let refused =
                matches!(result, Err(SessionEnd::Refused(_) | SessionEnd::Duplicate | SessionEnd::Protocol(_)));
            log_end(&remote, result);
            if refused {
                // A refused dialer may be sending before it reads (it sends
                // Resume right after its side of the handshake); ending the
                // stream at once would reset it before it sees the reason.
                tokio::select! {
                    () = held.closed() => {}
                    () = tokio::time::sleep(REFUSAL_LINGER) => {}
                }
            }
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
    shutdown: watch::Receiver<bool>,
) {
    let service = MeshServer::new(MeshService { shared })
        .max_decoding_message_size(MAX_FRAME_BYTES)
        .max_encoding_message_size(MAX_FRAME_BYTES);
    // Accepted streams get TCP_NODELAY below: the builder's own setting
    // applies only to listeners tonic binds itself.
    let router = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .add_service(service);
    let stopped = {
        let mut shutdown = shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|s| *s).await;
        }
    };
    let result = match tls {
        Some(ServerTls(acceptor)) => {
            let incoming = tls_handshakes(listener, acceptor, shutdown.clone());
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
        None => {
            let incoming = TcpListenerStream::new(listener).inspect(|accepted| {
                if let Ok(stream) = accepted {
                    let _ = stream.set_nodelay(true);
                }
            });
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
    };
    if let Err(err) = result {
        tracing::error!(error = %err, "mesh listener failed");
    }
}

/// Accepts connections for a TLS listener and runs the TLS handshake on
/// each, yielding only the streams that completed it. Every refusal gets a
/// warn line naming the remote address and the reason: a connection that
/// does not open with a TLS record (a peer missing its TLS settings), a
/// client certificate from another CA, none at all, or a peer that rejected
/// this node's certificate. Without this the dialer alone would know why.
fn tls_handshakes(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
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
            let acceptor = acceptor.clone();
            // Handshakes wait on the client; run them off the accept loop.
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut first = [0u8; 1];
                match tokio::time::timeout(CONNECT_TIMEOUT, stream.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
                    Ok(Ok(1)) => {
                        tracing::warn!(
                            %remote,
                            "mesh session refused: plaintext connection to a TLS mesh listener \
                             (the peer needs mesh_tls_cert, mesh_tls_key and mesh_tls_ca)"
                        );
                        return;
                    }
                    _ => {
                        tracing::info!(%remote, "mesh connection closed before a TLS handshake");
                        return;
                    }
                }
                match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => {
                        let reason = handshake_failure(&err);
                        tracing::warn!("mesh TLS handshake from {remote} failed: {reason}");
                    }
                    Err(_) => tracing::warn!(
                        "mesh TLS handshake from {remote} failed: not completed within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Why a listener-side TLS handshake failed, in the operator's terms.
fn handshake_failure(err: &std::io::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error as TlsError};
    let Some(tls) = err.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>()) else {
        return format!("connection error: {err}");
    };
    match tls {
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "peer certificate not signed by the mesh CA (mesh_tls_ca)".into()
        }
        TlsError::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "peer certificate has expired".into()
        }
        TlsError::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
            "peer certificate is not valid yet".into()
        }
        TlsError::InvalidCertificate(other) => format!("peer certificate rejected: {other:?}"),
        TlsError::NoCertificatesPresented => {
            "peer presented no client certificate (the mesh requires mutual TLS)".into()
        }
        TlsError::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown),
        ) => format!(
            "peer rejected this node's certificate (alert {alert:?}): its mesh_tls_ca is another CA, \
             or this certificate does not name the address it dialed"
        ),
        TlsError::AlertReceived(alert) => format!("peer aborted the handshake (alert {alert:?})"),
        TlsError::NoApplicationProtocol => "peer does not offer HTTP/2 (ALPN h2)".into(),
        other => other.to_string(),
    }
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
        .map_err(|status| SessionEnd::Transport(format!("{}{}", status_error(&status), tls_hint(shared))))?;
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

/// A failed call's message with its causes (tonic keeps the transport error there).
fn status_error(status: &Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = inner.source();
    }
    message
}

/// What a call that fails right after connecting may mean.
fn tls_hint(shared: &Shared) -> &'static str {
    if shared.tls.is_some() {
        " (a TLS peer closes the connection when it refuses this node's certificate; its log names the reason)"
    } else {
        plaintext_hint(shared)
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
