//! Node identity: the id a sidecar is known by in the mesh and in `GetStatus`.

use rand::RngCore;

/// Node ids: 1–64 bytes of `[A-Za-z0-9._-]`, so they are safe in logs, peer
/// specs (`node_id@host:port`) and document ids.
pub fn validate_node_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > 64 {
        anyhow::bail!("node id must be 1 to 64 bytes, got {}", id.len());
    }
    if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        anyhow::bail!("node id may contain only A-Z a-z 0-9 . _ -, found {bad:?}");
    }
    Ok(())
}

/// A fresh random node id such as `node-3f9a0c1b7d2e4f60`.
pub fn generate_node_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("node-{hex}")
}

/// Lifecycle phase reported by `GetStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Initializing,
    Ready,
    Syncing,
    ShuttingDown,
}

/// The node's identity and lifecycle, shared by the API, the mesh and main.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    phase: std::sync::Mutex<Phase>,
}

impl Node {
    pub fn new(id: String) -> Self {
        Self { id, phase: std::sync::Mutex::new(Phase::Initializing) }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.lock().expect("phase lock")
    }

    /// Moves to `phase`, except that shutting down is final.
    pub fn set_phase(&self, phase: Phase) {
        let mut current = self.phase.lock().expect("phase lock");
        if *current != Phase::ShuttingDown {
            *current = phase;
        }
    }
}
