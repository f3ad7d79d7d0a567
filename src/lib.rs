//! peat-sidecar: JSON documents as Automerge CRDTs in sled, served over a
//! local Connect RPC API and synchronised between sidecars over a mesh.
//!
//! Start with `docs/ARCHITECTURE.md` for the map of the code.

pub mod api;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod listen;
pub mod liveness;
pub mod logging;
pub mod mesh;
pub mod node;
pub mod pem;
pub mod server;
pub mod store;
pub mod systemd;
pub mod watcher;

/// Generated message types, service trait and client of `peat.sidecar.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    connectrpc::include_generated!();
}
