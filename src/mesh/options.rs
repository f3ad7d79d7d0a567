//! Mesh options derived from the settings, with the security rules applied:
//! a mesh without a shared key only listens on loopback unless
//! `mesh_insecure` says otherwise (and then it warns loudly).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::peer::KnownPeer;
use crate::config::{DEFAULT_MESH_LISTEN, Secret, Settings};

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that peers' certificates must chain to; with a server identity it
    /// also makes the listener demand client certificates (mTLS).
    pub ca: PathBuf,
}

#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Where to accept peers; `None` = no listener (dialing out still works).
    pub listen: Option<SocketAddr>,
    pub app_id: String,
    /// Formation key bytes; empty only in loopback or explicitly insecure meshes.
    pub key: Secret,
    pub tls: Option<TlsFiles>,
    pub peers: Vec<KnownPeer>,
    pub auto_sync: bool,
    /// Sessions (inbound and outbound together) this node keeps at most;
    /// authenticated peers beyond it are refused with the reason.
    pub max_sessions: usize,
}

impl MeshOptions {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let key = settings.shared_key()?;
        let explicit = settings.mesh_listen.clone();
        let text = explicit.clone().unwrap_or_else(|| DEFAULT_MESH_LISTEN.to_owned());
        let mut listen = if text == "disabled" { None } else { Some(parse_listen(&text)?) };
        if key.is_none()
            && let Some(addr) = listen
            && !addr.ip().is_loopback()
        {
            if settings.mesh_insecure {
                tracing::warn!(
                    %addr,
                    "INSECURE MESH: listening on a non-loopback address without a shared key; \
                     anyone who can reach this port can read and write every document"
                );
            } else if explicit.is_some() {
                bail!(
                    "setting `mesh_listen`: refusing to listen on non-loopback {addr} without a shared key; \
                     set shared_key_file (or mesh_insecure: true to accept unauthenticated peers)"
                );
            } else {
                tracing::warn!(
                    "mesh listener disabled: no shared key is configured (set shared_key_file to join a formation)"
                );
                listen = None;
            }
        }
        let tls = match (&settings.mesh_tls_cert, &settings.mesh_tls_key, &settings.mesh_tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            _ => bail!("mesh TLS needs all of `mesh_tls_cert`, `mesh_tls_key` and `mesh_tls_ca`"),
        };
        let peers = settings
            .peers
            .iter()
            .map(|spec| KnownPeer::parse(spec).context("setting `peers`"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            listen,
            app_id: settings.app_id.clone(),
            key: key.unwrap_or_default(),
            tls,
            peers,
            auto_sync: settings.auto_sync,
            max_sessions: settings.mesh_max_sessions,
        })
    }
}

fn parse_listen(text: &str) -> anyhow::Result<SocketAddr> {
    let hostport = text.strip_prefix("tcp://").unwrap_or(text);
    let mut addrs = hostport
        .to_socket_addrs()
        .with_context(|| format!("setting `mesh_listen`: `{text}` is not tcp://HOST:PORT or `disabled`"))?;
    addrs.next().with_context(|| format!("setting `mesh_listen`: `{text}` resolves to no address"))
}
