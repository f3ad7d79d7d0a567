//! Peer specifications (`host:port` or `node_id@host:port`) and the list of
//! known peers, persisted in the store so `ConnectPeer` survives restarts.

use serde::{Deserialize, Serialize};

use crate::store::DocumentStore;

const KNOWN_PEERS_KEY: &str = "mesh/known_peers";

/// A peer this node dials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// Expected node id; empty accepts whoever answers (and authenticates).
    pub endpoint_id: String,
    /// `host:port` addresses, tried in order.
    pub addresses: Vec<String>,
}

impl KnownPeer {
    /// Parses a `peers` entry.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let (endpoint_id, address) = match spec.split_once('@') {
            Some((id, addr)) => {
                crate::node::validate_node_id(id).map_err(|e| anyhow::anyhow!("peer `{spec}`: {e}"))?;
                (id.to_owned(), addr)
            }
            None => (String::new(), spec),
        };
        Ok(Self { endpoint_id, addresses: vec![parse_address(address)?] })
    }

    /// The key a dial task is known by.
    pub fn identity(&self) -> String {
        if self.endpoint_id.is_empty() { self.addresses.join(",") } else { self.endpoint_id.clone() }
    }
}

/// Validates a `host:port` peer address (an optional `tcp://`/`http(s)://` prefix is dropped).
pub fn parse_address(text: &str) -> anyhow::Result<String> {
    let bare = ["tcp://", "http://", "https://"].iter().fold(text, |t, p| t.strip_prefix(p).unwrap_or(t));
    let Some((host, port)) = bare.rsplit_once(':') else {
        anyhow::bail!("peer address `{text}` is not host:port");
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        anyhow::bail!("peer address `{text}` is not host:port");
    }
    Ok(bare.to_owned())
}

pub fn load(store: &DocumentStore) -> anyhow::Result<Vec<KnownPeer>> {
    match store.meta_get(KNOWN_PEERS_KEY)? {
        Some(bytes) => Ok(serde_json::from_slice(&bytes)?),
        None => Ok(Vec::new()),
    }
}

pub async fn save(store: &DocumentStore, peers: &[KnownPeer]) -> anyhow::Result<()> {
    store.meta_put(KNOWN_PEERS_KEY, &serde_json::to_vec(peers)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peer_specs() {
        let p = KnownPeer::parse("node-a@10.0.0.1:7420").unwrap();
        assert_eq!(p.endpoint_id, "node-a");
        assert_eq!(p.addresses, vec!["10.0.0.1:7420"]);
        assert_eq!(KnownPeer::parse("tcp://[::1]:7420").unwrap().addresses, vec!["[::1]:7420"]);
        assert!(KnownPeer::parse("nohost").is_err());
        assert!(KnownPeer::parse("bad id@h:1").is_err());
        assert!(KnownPeer::parse("h:0").is_err());
    }
}
