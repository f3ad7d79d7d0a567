//! What the watcher writes: the agent's state as documents with snake_case
//! fields, and the ids they are kept under.
//!
//! - `platforms/{agent_id}`: the agent itself (`platform_type` "uds-remote-agent").
//! - `deployments/{agent_id}:{name}`: one per deployed Zarf package.
//! - `packages/{agent_id}:{reference}-{arch}`: one per pulled package tag.
//!
//! Every document carries `agent_id`, so readers need not parse ids. Map
//! keys chosen by users (annotations) are kept verbatim.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};

use super::agent_types::{AgentStatus, DeployedPackage, Registry};

pub const PLATFORMS: &str = "platforms";
pub const DEPLOYMENTS: &str = "deployments";
pub const PACKAGES: &str = "packages";
pub const PLATFORM_TYPE: &str = "uds-remote-agent";

/// Platform fields that change on every poll; see [`crate::watcher::publish`].
pub const VOLATILE_PLATFORM_FIELDS: [&str; 2] = ["last_seen", "system_time"];

/// Documents of one collection, by document id.
pub type DocumentSet = BTreeMap<String, Map<String, Json>>;

/// The prefix of every document id this watcher owns in a collection.
pub fn owned_prefix(agent_id: &str) -> String {
    format!("{agent_id}:")
}

/// The platform document, without the volatile fields.
pub fn platform(agent_id: &str, status: &AgentStatus) -> Map<String, Json> {
    object(json!({
        "agent_id": agent_id,
        "platform_type": PLATFORM_TYPE,
        "version": status.version,
        "architecture": status.architecture,
        "classification": status.classification,
        "k8s_version": status.k8s_version,
        "k8s_node_status": status.k8s_node_status,
        "zarf_version": status.zarf_version,
        "run_mode": status.run_mode,
    }))
}

/// The volatile platform fields for a poll at `now` (unix seconds).
pub fn platform_volatile(status: &AgentStatus, now: u64) -> Map<String, Json> {
    object(json!({ "last_seen": now, "system_time": status.system_time }))
}

pub fn deployments(agent_id: &str, packages: &[DeployedPackage]) -> DocumentSet {
    packages
        .iter()
        .map(|p| {
            let doc = object(json!({
                "agent_id": agent_id,
                "name": p.name,
                "version": p.version,
                "status": p.status,
                "flavor": p.flavor,
                "namespace_override": p.namespace_override,
                "annotations": p.annotations,
            }));
            (format!("{}{}", owned_prefix(agent_id), p.name), doc)
        })
        .collect()
}

/// One document per pulled tag. Should two registries hold the same
/// reference and architecture, the first one listed wins.
pub fn packages(agent_id: &str, registries: &[Registry]) -> DocumentSet {
    let mut docs = DocumentSet::new();
    for registry in registries {
        for package in &registry.packages {
            for tag in &package.tags {
                let id = format!("{}{}-{}", owned_prefix(agent_id), tag.reference, tag.arch);
                docs.entry(id).or_insert_with(|| {
                    object(json!({
                        "agent_id": agent_id,
                        "registry": registry.name,
                        "registry_host": registry.host,
                        "repo_name": package.repo_name,
                        "package_name": package.package_name,
                        "reference": tag.reference,
                        "arch": tag.arch,
                        "version": tag.version,
                        "total_bytes": tag.total_bytes,
                        "pull_info": {
                            "downloaded_bytes": tag.pull_info.downloaded_bytes,
                            "status": tag.pull_info.status,
                        },
                    }))
                });
            }
        }
    }
    docs
}

fn object(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(map) => map,
        _ => unreachable!("built from an object literal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_fields() {
        let packages: Vec<DeployedPackage> = serde_json::from_str::<super::super::agent_types::ListPackagesResponse>(
            r#"{"packages":[{"name":"podinfo","version":"6.4.0","status":2,"namespaceOverride":"apps","annotations":{"team/owner":"x"}}]}"#,
        )
        .unwrap()
        .packages;
        let docs = deployments("node-a", &packages);
        let doc = &docs["node-a:podinfo"];
        assert_eq!(doc["namespace_override"], "apps");
        assert_eq!(doc["annotations"]["team/owner"], "x");
        assert_eq!(doc["status"], 2);
        assert_eq!(doc["flavor"], "");
    }
}
