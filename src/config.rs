//! Settings: the layered configuration of a sidecar.
//!
//! Layers, lowest first: built-in defaults < the YAML file (`--config`, or
//! `/etc/peat-sidecar/config.yaml` when it exists) < `PEAT_SIDECAR_*`
//! environment variables < command-line flags. Unknown keys in the file are
//! an error naming the key; secrets never appear in `Debug` or `config check`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::cli::{LogFormat, SettingsArgs};
use crate::store::{
    DEFAULT_DOCUMENT_CACHE_BYTES, DEFAULT_MAX_DOCUMENT_BYTES, DEFAULT_PAGE_CACHE_BYTES, MIN_PAGE_CACHE_BYTES,
};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/peat-sidecar/config.yaml";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/peat-sidecar";
pub const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:50051";
pub const DEFAULT_MESH_LISTEN: &str = "tcp://0.0.0.0:7420";
const ENV_PREFIX: &str = "PEAT_SIDECAR_";

/// A secret string that never prints.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Every setting, as read from the layers. Field names are the config-file
/// keys and, upper-cased behind `PEAT_SIDECAR_`, the environment names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// API address: `tcp://HOST:PORT` or `unix:///path/to.sock`.
    pub listen: String,
    /// Permission bits of the API Unix socket (octal string).
    pub listen_socket_mode: String,
    /// Document store directory; see [`Settings::resolve_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Stable node id; generated and persisted on first start when unset.
    pub node_id: Option<String>,
    /// Formation id.
    pub app_id: String,
    pub shared_key: Option<Secret>,
    pub shared_key_file: Option<PathBuf>,
    pub encryption_key: Option<Secret>,
    pub encryption_key_file: Option<PathBuf>,
    /// Mesh peers to dial: `host:port` or `node_id@host:port`.
    pub peers: Vec<String>,
    /// Mesh listen address (`tcp://HOST:PORT` or `disabled`); unset means
    /// `tcp://0.0.0.0:7420`, which stays closed while no shared key is set.
    pub mesh_listen: Option<String>,
    /// Allow a mesh without a shared key on a non-loopback address.
    pub mesh_insecure: bool,
    pub mesh_tls_cert: Option<PathBuf>,
    pub mesh_tls_key: Option<PathBuf>,
    pub mesh_tls_ca: Option<PathBuf>,
    /// Mesh sessions (inbound and outbound together) kept at most; further
    /// authenticated peers are refused until one ends.
    pub mesh_max_sessions: usize,
    pub auto_sync: bool,
    /// Largest accepted JSON document, in bytes.
    pub max_document_bytes: usize,
    /// Estimated memory, in bytes, of the documents kept loaded while unused.
    pub document_cache_bytes: usize,
    /// Memory, in bytes, of the storage engine's page cache (sled): stored
    /// records, chunks and index nodes.
    pub page_cache_bytes: usize,
    /// Changes waiting for `Subscribe` clients that read slower than
    /// documents change, in bytes, all subscribers together.
    pub subscribe_backlog_bytes: usize,
    /// Largest accepted request body, in bytes.
    pub max_request_bytes: usize,
    /// `tracing` filter, e.g. `info` or `peat_sidecar=debug,info`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// UDS Remote Agent base URL (`http://` = h2c, `https://` = TLS); unset disables the watcher.
    pub agent_addr: Option<String>,
    #[serde(with = "duration_text")]
    pub agent_poll_interval: Duration,
    /// Id used in the agent's documents; defaults to the node id.
    pub agent_id: Option<String>,
    pub agent_tls_cert: Option<PathBuf>,
    pub agent_tls_key: Option<PathBuf>,
    pub agent_tls_ca: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            listen_socket_mode: "0660".into(),
            data_dir: None,
            node_id: None,
            app_id: "peat-default".into(),
            shared_key: None,
            shared_key_file: None,
            encryption_key: None,
            encryption_key_file: None,
            peers: Vec::new(),
            mesh_listen: None,
            mesh_insecure: false,
            mesh_tls_cert: None,
            mesh_tls_key: None,
            mesh_tls_ca: None,
            mesh_max_sessions: 64,
            auto_sync: true,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            document_cache_bytes: DEFAULT_DOCUMENT_CACHE_BYTES,
            page_cache_bytes: DEFAULT_PAGE_CACHE_BYTES,
            subscribe_backlog_bytes: 64 * 1024 * 1024,
            max_request_bytes: 4 * 1024 * 1024,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            agent_addr: None,
            agent_poll_interval: Duration::from_secs(10),
            agent_id: None,
            agent_tls_cert: None,
            agent_tls_key: None,
            agent_tls_ca: None,
        }
    }
}

/// Names of every setting, derived from the defaults so the list cannot drift.
fn known_keys() -> Vec<String> {
    match serde_json::to_value(Settings::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => unreachable!("Settings serialises to a map"),
    }
}

/// Where the data directory came from, so startup can log the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirSource {
    Configured,
    SystemdStateDirectory,
    UserState,
    SystemDefault,
}

impl Settings {
    /// Reads every layer for `args` from the real environment.
    pub fn load(args: &SettingsArgs) -> anyhow::Result<Self> {
        Self::load_from(args, std::env::vars())
    }

    /// Reads every layer, taking environment variables from `env`.
    pub fn load_from(args: &SettingsArgs, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let known = known_keys();
        let mut builder = config::Config::builder();

        let (file, required) = match &args.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        if required || file.exists() {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading config file {}", file.display()))?;
            check_file_keys(&text, &file, &known)?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Yaml));
        }

        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else { continue };
            let key = key.to_ascii_lowercase();
            if !known.contains(&key) {
                // The env file may carry variables for other tools; a typo
                // in ours should still be visible.
                eprintln!("warning: ignoring unknown environment variable {name}");
                continue;
            }
            builder = if key == "peers" {
                let list: Vec<String> = value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                builder.set_override(key, list)
            } else {
                builder.set_override(key, value)
            }
            .with_context(|| format!("environment variable {name}"))?;
        }

        let overrides: [(&str, Option<config::Value>); 10] = [
            ("listen", args.listen.clone().map(Into::into)),
            ("data_dir", args.data_dir.as_ref().map(|p| p.display().to_string().into())),
            ("node_id", args.node_id.clone().map(Into::into)),
            ("app_id", args.app_id.clone().map(Into::into)),
            ("shared_key", args.shared_key.clone().map(Into::into)),
            ("shared_key_file", args.shared_key_file.as_ref().map(|p| p.display().to_string().into())),
            ("encryption_key_file", args.encryption_key_file.as_ref().map(|p| p.display().to_string().into())),
            ("mesh_listen", args.mesh_listen.clone().map(Into::into)),
            ("auto_sync", args.auto_sync.map(Into::into)),
            (
                "log_format",
                args.log_format.map(|f| {
                    match f {
                        LogFormat::Text => "text",
                        LogFormat::Json => "json",
                    }
                    .into()
                }),
            ),
        ];
        for (key, value) in overrides {
            if let Some(value) = value {
                builder = builder.set_override(key, value)?;
            }
        }
        if !args.peers.is_empty() {
            builder = builder.set_override("peers", args.peers.clone())?;
        }

        let settings: Settings =
            builder.build().context("assembling configuration")?.try_deserialize().context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        crate::listen::ListenAddr::parse(&self.listen).context("setting `listen`")?;
        self.socket_mode().context("setting `listen_socket_mode`")?;
        if self.app_id.is_empty() {
            bail!("setting `app_id` must not be empty");
        }
        if let Some(id) = &self.node_id {
            crate::node::validate_node_id(id).context("setting `node_id`")?;
        }
        if self.shared_key.is_some() && self.shared_key_file.is_some() {
            bail!("set only one of `shared_key` and `shared_key_file`");
        }
        if self.encryption_key.is_some() && self.encryption_key_file.is_some() {
            bail!("set only one of `encryption_key` and `encryption_key_file`");
        }
        if self.mesh_max_sessions == 0 {
            bail!("setting `mesh_max_sessions` must be at least 1");
        }
        if self.page_cache_bytes < MIN_PAGE_CACHE_BYTES {
            bail!("setting `page_cache_bytes` must be at least {MIN_PAGE_CACHE_BYTES} (1 MiB)");
        }
        if self.max_document_bytes == 0 {
            bail!("setting `max_document_bytes` must be positive");
        }
        if self.max_request_bytes < self.max_document_bytes {
            bail!("setting `max_request_bytes` must be at least `max_document_bytes`");
        }
        if self.agent_poll_interval.is_zero() {
            bail!("setting `agent_poll_interval` must be positive");
        }
        Ok(())
    }

    /// The Unix socket permission bits.
    pub fn socket_mode(&self) -> anyhow::Result<u32> {
        u32::from_str_radix(self.listen_socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("`{}` is not an octal mode such as 0660", self.listen_socket_mode))
    }

    /// Picks the data directory: the configured one; else systemd's
    /// `STATE_DIRECTORY`; else, when unprivileged, `$XDG_STATE_HOME/peat-sidecar`
    /// (`~/.local/state/peat-sidecar`); else `/var/lib/peat-sidecar`.
    pub fn resolve_data_dir(&self) -> (PathBuf, DataDirSource) {
        if let Some(dir) = &self.data_dir {
            return (dir.clone(), DataDirSource::Configured);
        }
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
            // systemd passes a colon-separated list when several are set.
            let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
            if !first.is_empty() {
                return (PathBuf::from(first), DataDirSource::SystemdStateDirectory);
            }
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let unprivileged = unsafe { libc::geteuid() } != 0;
        if unprivileged {
            let base = std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")));
            if let Some(base) = base {
                return (base.join("peat-sidecar"), DataDirSource::UserState);
            }
        }
        (PathBuf::from(DEFAULT_DATA_DIR), DataDirSource::SystemDefault)
    }

    /// The formation key: inline or read from `shared_key_file`.
    pub fn shared_key(&self) -> anyhow::Result<Option<Secret>> {
        read_secret(&self.shared_key, &self.shared_key_file, "shared_key_file")
    }

    /// The at-rest encryption key, decoded: inline or from `encryption_key_file`.
    pub fn encryption_key(&self) -> anyhow::Result<Option<[u8; 32]>> {
        let Some(secret) = read_secret(&self.encryption_key, &self.encryption_key_file, "encryption_key_file")? else {
            return Ok(None);
        };
        crate::store::crypto::decode_key(secret.expose()).map(Some).context("setting `encryption_key`")
    }

    /// The effective settings as YAML, secrets redacted.
    pub fn to_redacted_yaml(&self) -> String {
        let value = serde_json::to_value(self).expect("settings serialise");
        let sorted: BTreeMap<String, serde_json::Value> = serde_json::from_value(value).expect("settings are a map");
        let mut out = String::new();
        for (key, value) in sorted {
            let rendered = match value {
                serde_json::Value::Null => "null".to_owned(),
                serde_json::Value::String(s) => serde_json::to_string(&s).expect("string"),
                other => other.to_string(),
            };
            out.push_str(&format!("{key}: {rendered}\n"));
        }
        out
    }
}

fn read_secret(inline: &Option<Secret>, file: &Option<PathBuf>, file_key: &str) -> anyhow::Result<Option<Secret>> {
    if let Some(secret) = inline {
        return Ok(Some(secret.clone()));
    }
    let Some(path) = file else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("setting `{file_key}`: reading {}", path.display()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        bail!("setting `{file_key}`: {} is empty", path.display());
    }
    Ok(Some(Secret::new(trimmed)))
}

fn check_file_keys(text: &str, path: &Path, known: &[String]) -> anyhow::Result<()> {
    let value: serde_json::Value = match serde_yaml_ng_compat(text) {
        Ok(v) => v,
        Err(e) => bail!("config file {}: {e}", path.display()),
    };
    match value {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Object(map) => {
            for key in map.keys() {
                if !known.iter().any(|k| k == key) {
                    bail!("config file {}: unknown key `{key}` (known keys: {})", path.display(), known.join(", "));
                }
            }
            Ok(())
        }
        _ => bail!("config file {}: expected a mapping of settings", path.display()),
    }
}

/// Parses YAML through the `config` crate so the file is read by exactly the
/// parser that later supplies its values.
fn serde_yaml_ng_compat(text: &str) -> Result<serde_json::Value, config::ConfigError> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml))
        .build()?
        .try_deserialize::<serde_json::Value>()
}

/// Durations as text: `250ms`, `10s`, `5m`, `1h`, or bare seconds.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_millis() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| D::Error::custom(format!("`{text}` is not a duration such as 500ms, 10s, 5m or 1h")))
    }

    pub fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let millis = match unit.trim() {
            "ms" => n,
            "" | "s" => n.checked_mul(1000)?,
            "m" => n.checked_mul(60_000)?,
            "h" => n.checked_mul(3_600_000)?,
            _ => return None,
        };
        Some(Duration::from_millis(millis))
    }
}
