//! The HTTP/2 connection to the agent: h2c (prior knowledge) for `http://`,
//! TLS with ALPN `h2` for `https://`.
//!
//! One connection is kept open between polls and replaced after any failure.
//! Every exchange (connecting included) is bounded by the call timeout, and
//! response bodies by [`MAX_RESPONSE_BYTES`], so a stuck or hostile agent can
//! only delay the watcher, never hang it or exhaust memory.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::settings::{AgentEndpoint, Transport};

/// Largest agent response accepted.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Why an exchange with the agent failed before a complete response arrived.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr}: {source}")]
    Tls { addr: String, source: std::io::Error },
    #[error("HTTP/2: {}", with_causes(.0))]
    Http2(#[from] hyper::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("the response body exceeds {MAX_RESPONSE_BYTES} bytes or broke off: {0}")]
    Body(String),
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
}

/// A complete response.
#[derive(Debug)]
pub struct AgentResponse {
    pub status: http::StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// A reconnecting HTTP/2 client for one agent.
pub struct AgentConnection {
    endpoint: AgentEndpoint,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl AgentConnection {
    pub fn new(endpoint: AgentEndpoint, timeout: Duration) -> Self {
        Self { endpoint, timeout, sender: None }
    }

    pub fn endpoint(&self) -> &AgentEndpoint {
        &self.endpoint
    }

    /// Sends `request` and reads the whole response, within the call timeout.
    pub async fn send(&mut self, request: http::Request<Full<Bytes>>) -> Result<AgentResponse, TransportError> {
        let result = match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(self.timeout)),
        };
        if result.is_err() {
            // The connection may be broken or stuck: start afresh next time.
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, request: http::Request<Full<Bytes>>) -> Result<AgentResponse, TransportError> {
        if let Some(sender) = self.sender.as_mut()
            && sender.ready().await.is_err()
        {
            self.sender = None;
        }
        let sender = match self.sender.take() {
            Some(sender) => self.sender.insert(sender),
            None => {
                let sender = self.connect().await?;
                self.sender.insert(sender)
            }
        };
        let response = sender.send_request(request).await?;
        let status = response.status();
        let content_type =
            response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| TransportError::Body(e.to_string()))?
            .to_bytes();
        Ok(AgentResponse { status, content_type, body })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let addr = format!("{}:{}", self.endpoint.host, self.endpoint.port);
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|source| TransportError::Connect { addr: addr.clone(), source })?;
        let _ = tcp.set_nodelay(true);
        match &self.endpoint.transport {
            Transport::H2c => handshake(tcp).await,
            Transport::Tls { config, .. } => {
                let name = rustls_pki_types::ServerName::try_from(self.endpoint.host.clone()).map_err(|e| {
                    TransportError::Tls { addr: addr.clone(), source: std::io::Error::other(e.to_string()) }
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| TransportError::Tls { addr: addr.clone(), source })?;
                let alpn = tls.get_ref().1.alpn_protocol();
                if alpn.is_some_and(|p| p != b"h2") {
                    let source = std::io::Error::other("the agent did not agree to HTTP/2 (ALPN h2)");
                    return Err(TransportError::Tls { addr, source });
                }
                handshake(tls).await
            }
        }
    }
}

/// The error and its causes, e.g. "connection error: received fatal alert: CertificateRequired".
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "agent connection closed");
        }
    });
    Ok(sender)
}
