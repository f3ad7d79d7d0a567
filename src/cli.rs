//! Command-line interface: the flags, subcommands and help text users see.
//!
//! Flags only *override* settings; layering (defaults < file < env < flags)
//! happens in [`crate::config`]. Flag names are a public contract: packaging,
//! docs and tests use them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "peat-sidecar",
    version,
    about = "CRDT mesh-sync sidecar: JSON documents as Automerge CRDTs over Connect RPC",
    long_about = "peat-sidecar runs next to an application and serves a local Connect RPC \
                  API (Connect, gRPC and gRPC-Web on one port) for reading and writing JSON \
                  documents. Every document is an Automerge CRDT persisted in sled; sidecars \
                  on other hosts form a mesh and converge through partitions and poor links.\n\n\
                  Settings are layered: built-in defaults < /etc/peat-sidecar/config.yaml (or \
                  --config) < PEAT_SIDECAR_* environment variables < flags."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: SettingsArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar daemon (the default when no subcommand is given).
    Serve,
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a fresh random 32-byte key, base64-encoded (for shared_key or encryption_key).
    Keygen,
    /// Talk to a running sidecar at its configured `listen` address.
    Ctl(CtlArgs),
    /// Write the man page or shell completions (used by packaging).
    #[command(hide = true, subcommand)]
    Generate(GenerateCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the layered configuration and print the effective settings (secrets redacted).
    Check,
}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write `peat-sidecar.1` into DIR.
    Man { dir: PathBuf },
    /// Write bash, zsh and fish completions into DIR.
    Completions { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Address of the sidecar API; defaults to the effective `listen` setting.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Print node id, mesh address, phase and peer count.
    Status,
    /// Write a JSON object document (JSON given inline, or `-` for stdin).
    Put { collection: String, doc_id: String, json: String },
    /// Print a document's JSON; exits 1 when it does not exist.
    Get { collection: String, doc_id: String },
    /// Delete a document (a tombstone that syncs to peers).
    Delete { collection: String, doc_id: String },
    /// List the document ids of a collection.
    List { collection: String },
    /// Stream changes as JSON lines (all collections when none are named).
    Watch { collections: Vec<String> },
    /// List mesh peers.
    Peers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags that override individual settings. Every one is optional so that an
/// unset flag never shadows the file or the environment.
#[derive(Debug, Default, Args)]
pub struct SettingsArgs {
    /// Configuration file [default: /etc/peat-sidecar/config.yaml, if present].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// API address: tcp://HOST:PORT or unix:///path/to.sock.
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the document store.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Stable node id (default: generated once and persisted in the data dir).
    #[arg(long, global = true, value_name = "ID")]
    pub node_id: Option<String>,
    /// Formation (application) id; only peers with the same id sync.
    #[arg(long, global = true, value_name = "ID")]
    pub app_id: Option<String>,
    /// Formation shared key (prefer --shared-key-file or the env file: flags show in `ps`).
    #[arg(long, global = true, value_name = "KEY")]
    pub shared_key: Option<String>,
    /// File holding the formation shared key.
    #[arg(long, global = true, value_name = "FILE")]
    pub shared_key_file: Option<PathBuf>,
    /// File holding the base64 32-byte key that encrypts stored data (AES-256-GCM).
    #[arg(long, global = true, value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Mesh peer to dial, host:port or node_id@host:port (repeatable).
    #[arg(long = "peer", global = true, value_name = "PEER")]
    pub peers: Vec<String>,
    /// Mesh listen address: tcp://HOST:PORT, or `disabled`.
    #[arg(long, global = true, value_name = "ADDR")]
    pub mesh_listen: Option<String>,
    /// Start mesh synchronisation at startup.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub auto_sync: Option<bool>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}
