//! Watcher settings: the `agent_*` settings checked and turned into what the
//! watcher runs with. Every problem is reported at startup, naming the setting.

use std::time::Duration;

use anyhow::{Context, bail};

use super::tls;
use crate::config::Settings;

/// Longest wait for one agent call (connect, request and response body).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// `last_seen` is refreshed at least this often even when nothing changed;
/// see [`crate::watcher::publish`].
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(300);
/// While the agent is down, polls back off up to this many poll intervals.
const BACKOFF_INTERVALS: u32 = 8;

/// How the watcher reaches the agent.
#[derive(Clone)]
pub enum Transport {
    /// `http://`: HTTP/2 with prior knowledge (h2c).
    H2c,
    /// `https://`: HTTP/2 over TLS; `mutual` when a client certificate is configured.
    Tls { config: std::sync::Arc<rustls::ClientConfig>, mutual: bool },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::H2c => f.write_str("h2c"),
            Transport::Tls { mutual: true, .. } => f.write_str("mTLS"),
            Transport::Tls { mutual: false, .. } => f.write_str("TLS"),
        }
    }
}

/// Where the agent is: the parsed `agent_addr`.
#[derive(Debug, Clone)]
pub struct AgentEndpoint {
    pub transport: Transport,
    /// Host to connect to (IPv6 without brackets) and the TLS server name.
    pub host: String,
    pub port: u16,
    /// `scheme://authority` plus any base path, without a trailing slash.
    pub base_url: String,
}

impl AgentEndpoint {
    /// The absolute URL of `path` (which starts with `/`) on the agent.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

/// Everything the watcher needs, validated.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    pub endpoint: AgentEndpoint,
    /// Prefix of every document id the watcher writes; defaults to the node id.
    pub agent_id: String,
    pub poll_interval: Duration,
    pub call_timeout: Duration,
    /// Longest pause between attempts while the agent is down.
    pub max_backoff: Duration,
    pub heartbeat: Duration,
}

impl WatcherConfig {
    /// The watcher's configuration, or `None` when `agent_addr` is unset.
    /// TLS files are read here, so a bad one stops startup with a clear error.
    pub fn from_settings(settings: &Settings, node_id: &str) -> anyhow::Result<Option<Self>> {
        let Some(addr) = settings.agent_addr.as_deref() else {
            let stray = tls_settings_set(settings);
            if !stray.is_empty() {
                bail!("setting {} is set but `agent_addr` is not; set `agent_addr` or remove it", stray.join(", "));
            }
            return Ok(None);
        };
        let agent_id = settings.agent_id.clone().unwrap_or_else(|| node_id.to_owned());
        crate::node::validate_node_id(&agent_id).context("setting `agent_id`")?;
        let poll_interval = settings.agent_poll_interval;
        let endpoint = parse_endpoint(addr, settings)?;
        Ok(Some(Self {
            endpoint,
            agent_id,
            poll_interval,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_backoff: poll_interval.saturating_mul(BACKOFF_INTERVALS),
            heartbeat: DEFAULT_HEARTBEAT.max(poll_interval),
        }))
    }
}

/// Checks the `agent_*` settings (reading the TLS files) without starting
/// anything; for `config check`, where the node id may not be known yet.
pub fn check(settings: &Settings) -> anyhow::Result<()> {
    WatcherConfig::from_settings(settings, settings.node_id.as_deref().unwrap_or("node-unset")).map(drop)
}

fn tls_settings_set(settings: &Settings) -> Vec<&'static str> {
    [
        ("`agent_tls_cert`", settings.agent_tls_cert.is_some()),
        ("`agent_tls_key`", settings.agent_tls_key.is_some()),
        ("`agent_tls_ca`", settings.agent_tls_ca.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

fn parse_endpoint(addr: &str, settings: &Settings) -> anyhow::Result<AgentEndpoint> {
    let uri: http::Uri = addr
        .parse()
        .with_context(|| format!("setting `agent_addr`: `{addr}` is not a URL such as http://127.0.0.1:8080"))?;
    let Some(authority) = uri.authority() else {
        bail!("setting `agent_addr`: `{addr}` has no host; expected e.g. http://127.0.0.1:8080");
    };
    if uri.query().is_some() || authority.as_str().contains('@') {
        bail!("setting `agent_addr`: `{addr}` must not contain credentials or a query");
    }
    let (transport, default_port) = match uri.scheme_str() {
        Some("http") => {
            let stray = tls_settings_set(settings);
            if !stray.is_empty() {
                bail!(
                    "setting {} applies only to an https:// `agent_addr`, but `agent_addr` is `{addr}`",
                    stray.join(", ")
                );
            }
            (Transport::H2c, 80)
        }
        Some("https") => {
            let (config, mutual) = tls::client_config(settings)?;
            (Transport::Tls { config, mutual }, 443)
        }
        _ => bail!("setting `agent_addr`: `{addr}` must start with http:// (h2c) or https:// (TLS)"),
    };
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(default_port);
    let scheme = uri.scheme_str().unwrap_or_default();
    let base_path = uri.path().trim_end_matches('/');
    Ok(AgentEndpoint { transport, host, port, base_url: format!("{scheme}://{authority}{base_path}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(addr: &str) -> Settings {
        Settings { agent_addr: Some(addr.into()), ..Settings::default() }
    }

    #[test]
    fn unset_addr_disables_the_watcher() {
        assert!(WatcherConfig::from_settings(&Settings::default(), "n1").unwrap().is_none());
    }

    #[test]
    fn h2c_endpoint() {
        let config = WatcherConfig::from_settings(&settings("http://127.0.0.1:8080/"), "n1").unwrap().unwrap();
        assert_eq!(config.agent_id, "n1");
        assert_eq!(config.endpoint.host, "127.0.0.1");
        assert_eq!(config.endpoint.port, 8080);
        assert_eq!(config.endpoint.url("/status"), "http://127.0.0.1:8080/status");
        assert!(matches!(config.endpoint.transport, Transport::H2c));
    }

    #[test]
    fn ipv6_and_default_port_and_base_path() {
        let config = WatcherConfig::from_settings(&settings("http://[::1]/agent/"), "n1").unwrap().unwrap();
        assert_eq!(config.endpoint.host, "::1");
        assert_eq!(config.endpoint.port, 80);
        assert_eq!(config.endpoint.url("/status"), "http://[::1]/agent/status");
    }

    #[test]
    fn bad_addresses_name_the_setting() {
        for bad in ["127.0.0.1:8080", "ftp://host", "http://", "not a url", "http://u:p@host:1"] {
            let err = format!("{:#}", WatcherConfig::from_settings(&settings(bad), "n1").unwrap_err());
            assert!(err.contains("agent_addr"), "{bad}: {err}");
        }
    }

    #[test]
    fn agent_id_is_validated() {
        let mut s = settings("http://127.0.0.1:1");
        s.agent_id = Some("has:colon".into());
        let err = format!("{:#}", WatcherConfig::from_settings(&s, "n1").unwrap_err());
        assert!(err.contains("agent_id"), "{err}");
    }

    #[test]
    fn tls_settings_need_an_https_addr() {
        let mut s = settings("http://127.0.0.1:1");
        s.agent_tls_ca = Some("/nonexistent".into());
        let err = format!("{:#}", WatcherConfig::from_settings(&s, "n1").unwrap_err());
        assert!(err.contains("`agent_tls_ca`") && err.contains("https://"), "{err}");
        s.agent_addr = None;
        let err = format!("{:#}", WatcherConfig::from_settings(&s, "n1").unwrap_err());
        assert!(err.contains("`agent_tls_ca`") && err.contains("`agent_addr`"), "{err}");
    }

    #[test]
    fn check_works_without_a_node_id() {
        assert!(check(&settings("http://127.0.0.1:8080")).is_ok());
        assert!(check(&settings("gopher://x")).is_err());
    }

    #[test]
    fn backoff_and_heartbeat_follow_the_interval() {
        let mut s = settings("http://127.0.0.1:1");
        s.agent_poll_interval = Duration::from_millis(200);
        let config = WatcherConfig::from_settings(&s, "n1").unwrap().unwrap();
        assert_eq!(config.max_backoff, Duration::from_millis(1600));
        assert_eq!(config.heartbeat, DEFAULT_HEARTBEAT);
    }
}
