//! Writing the agent's state into the store without churn.
//!
//! Every write is a reconciliation: the store only records an Automerge
//! change for fields that differ, so an unchanged deployment or package
//! costs nothing — no change, no disk write, no mesh traffic.
//!
//! The platform document has two fields that differ on every poll:
//! `last_seen` (when the watcher last heard from the agent) and the agent's
//! `system_time`. Writing them each poll would add a change every poll
//! interval, forever. So they are written only together with a real change
//! of the platform document, or when the stored `last_seen` is older than
//! the heartbeat (5 minutes by default). Readers therefore get `last_seen`
//! accurate to the heartbeat: an agent whose `last_seen` is more than a
//! heartbeat plus a poll interval old is no longer being heard from.
//!
//! Documents of packages that disappeared from the agent are tombstoned, but
//! only documents under this watcher's `{agent_id}:` prefix: other agents'
//! documents in the same collections are never touched.

use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::documents::{self, DocumentSet, VOLATILE_PLATFORM_FIELDS};
use crate::store::{DocKey, DocumentStore, StoreError, validate};

/// What one publication did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub updated: usize,
    pub deleted: usize,
}

impl Written {
    pub fn is_empty(&self) -> bool {
        self.updated == 0 && self.deleted == 0
    }
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Self) {
        self.updated += other.updated;
        self.deleted += other.deleted;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("document id `{0}` derived from the agent's data is not a valid id: {1}")]
    InvalidId(String, validate::InvalidField),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes one agent's documents.
pub struct Publisher {
    store: DocumentStore,
    agent_id: String,
    heartbeat: Duration,
}

impl Publisher {
    pub fn new(store: DocumentStore, agent_id: String, heartbeat: Duration) -> Self {
        Self { store, agent_id, heartbeat }
    }

    /// Writes the platform document. `stable` is compared with what is
    /// stored; `volatile` is written only with a change or a due heartbeat.
    pub async fn platform(
        &self,
        mut stable: Map<String, Json>,
        volatile: Map<String, Json>,
        now: u64,
    ) -> Result<Written, PublishError> {
        let stored =
            self.store.get(documents::PLATFORMS, &self.agent_id)?.and_then(|json| {
                match serde_json::from_str::<Json>(&json) {
                    Ok(Json::Object(map)) => Some(map),
                    _ => None,
                }
            });
        if let Some(mut stored) = stored {
            let last_seen = stored.get("last_seen").and_then(Json::as_u64).unwrap_or(0);
            let fresh = now.saturating_sub(last_seen) < self.heartbeat.as_secs();
            for field in VOLATILE_PLATFORM_FIELDS {
                stored.remove(field);
            }
            if fresh && stored == stable {
                return Ok(Written::default());
            }
        }
        stable.extend(volatile);
        let changed = self.store.put_map(DocKey::new(documents::PLATFORMS, &self.agent_id), &stable).await?;
        Ok(Written { updated: usize::from(changed), deleted: 0 })
    }

    /// Makes this agent's documents in `collection` exactly `docs`: writes
    /// the ones that differ and tombstones the ones no longer listed.
    pub async fn collection(&self, collection: &str, docs: &DocumentSet) -> Result<Written, PublishError> {
        for id in docs.keys() {
            validate::doc_id(id).map_err(|e| PublishError::InvalidId(id.clone(), e))?;
        }
        let mut written = Written::default();
        for (id, content) in docs {
            if self.store.put_map(DocKey::new(collection, id), content).await? {
                written.updated += 1;
            }
        }
        let prefix = documents::owned_prefix(&self.agent_id);
        for id in self.store.list(collection)? {
            if id.starts_with(&prefix) && !docs.contains_key(&id) && self.store.delete(collection, &id).await? {
                written.deleted += 1;
            }
        }
        Ok(written)
    }
}
