//! HTTP serving of the API: one accept loop for TCP and Unix listeners that
//! speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge) on the same port, so
//! Connect, gRPC and gRPC-Web clients all work, with graceful draining.

use std::time::Duration;

use connectrpc::ConnectRpcService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use crate::listen::Listener;

/// How long in-flight requests get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting and waits (bounded) for open connections to finish.
pub async fn serve(listener: Listener, service: ConnectRpcService, shutdown: impl Future<Output = ()>) {
    let builder = Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection = match io {
            Stream::Tcp(stream) => {
                let _ = stream.set_nodelay(true);
                graceful
                    .watch(
                        builder
                            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()))
                            .into_owned(),
                    )
                    .boxed_conn()
            }
            Stream::Unix(stream) => graceful
                .watch(
                    builder
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()))
                        .into_owned(),
                )
                .boxed_conn(),
        };
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not finish within {DRAIN_TIMEOUT:?}; closing them");
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Stream> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
    }
}

type BoxedConnection =
    std::pin::Pin<Box<dyn Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send>>;

trait BoxConn {
    fn boxed_conn(self) -> BoxedConnection;
}

impl<F> BoxConn for F
where
    F: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send + 'static,
{
    fn boxed_conn(self) -> BoxedConnection {
        Box::pin(self)
    }
}
