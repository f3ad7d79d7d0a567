//! Listen addresses (`tcp://HOST:PORT`, `unix:///path`) and the listeners
//! behind them, including safe handling of stale Unix sockets.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                bail!("`{text}`: a unix socket path must be absolute, e.g. unix:///run/peat-sidecar/peat-sidecar.sock");
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let hostport = text.strip_prefix("tcp://").unwrap_or(text);
        if hostport.is_empty() || !hostport.contains(':') {
            bail!("`{text}` is not tcp://HOST:PORT or unix:///path");
        }
        let (_, port) = hostport.rsplit_once(':').expect("checked above");
        port.parse::<u16>().with_context(|| format!("`{text}`: bad port `{port}`"))?;
        Ok(Self::Tcp(hostport.to_owned()))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(hostport) => write!(f, "tcp://{hostport}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// A bound API listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr, socket_mode: u32) -> anyhow::Result<Self> {
        match addr {
            ListenAddr::Tcp(hostport) => {
                let listener = tokio::net::TcpListener::bind(hostport.as_str())
                    .await
                    .with_context(|| format!("binding tcp://{hostport}"))?;
                Ok(Self::Tcp(listener))
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                let listener = tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("binding unix://{}", path.display()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
                    .with_context(|| format!("setting mode {socket_mode:o} on {}", path.display()))?;
                Ok(Self::Unix(listener, path.clone()))
            }
        }
    }

    /// The bound address, with the real port when port 0 was requested.
    pub fn local_addr(&self) -> ListenAddr {
        match self {
            Self::Tcp(l) => {
                ListenAddr::Tcp(l.local_addr().map(|a: SocketAddr| a.to_string()).unwrap_or_else(|_| "?".into()))
            }
            Self::Unix(_, path) => ListenAddr::Unix(path.clone()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a socket file left behind by a previous run, but only when it is a
/// socket nobody answers on: never a regular file, never a live server's socket.
async fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket; refusing to replace it", path.display());
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        bail!("{} is in use by a running server", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    tracing::info!(path = %path.display(), "removed stale socket");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        assert_eq!(ListenAddr::parse("tcp://127.0.0.1:50051").unwrap(), ListenAddr::Tcp("127.0.0.1:50051".into()));
        assert_eq!(ListenAddr::parse("[::1]:9").unwrap(), ListenAddr::Tcp("[::1]:9".into()));
        assert_eq!(ListenAddr::parse("unix:///run/x.sock").unwrap(), ListenAddr::Unix("/run/x.sock".into()));
        assert!(ListenAddr::parse("unix://relative.sock").is_err());
        assert!(ListenAddr::parse("tcp://host").is_err());
        assert!(ListenAddr::parse("tcp://host:99999").is_err());
    }
}
