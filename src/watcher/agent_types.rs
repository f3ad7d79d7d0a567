//! The agent's JSON shapes, as its API sends them.
//!
//! `/status` is plain JSON; the two RPCs use the Connect protocol's JSON
//! codec (protobuf JSON mapping). That mapping omits fields holding default
//! values, writes 64-bit integers as strings and enums as numbers or names,
//! so every field here has a default, integers accept both forms and enum
//! values are kept as sent. Unknown fields are ignored, so a newer agent
//! still works. Items without the field that identifies them make the whole
//! response malformed: without a complete list, deletions cannot be told apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value as Json;

/// `GET /status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentStatus {
    #[serde(deserialize_with = "null_default")]
    pub version: String,
    #[serde(deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(deserialize_with = "null_default")]
    pub classification: String,
    #[serde(deserialize_with = "null_default")]
    pub k8s_version: String,
    #[serde(deserialize_with = "null_default")]
    pub k8s_node_status: String,
    #[serde(deserialize_with = "null_default")]
    pub zarf_version: String,
    #[serde(deserialize_with = "null_default")]
    pub run_mode: String,
    /// The agent's clock, as sent (a timestamp string or a number).
    #[serde(deserialize_with = "scalar")]
    pub system_time: Json,
}

/// `zarfapi.v1.ZarfAPIService/ListPackages` response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ListPackagesResponse {
    #[serde(deserialize_with = "null_default")]
    pub packages: Vec<DeployedPackage>,
}

/// A Zarf package deployed in the agent's cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployedPackage {
    #[serde(deserialize_with = "identifier")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    /// The deployment status enum: a number, or its name.
    #[serde(default = "zero", deserialize_with = "enum_value")]
    pub status: Json,
    #[serde(default, deserialize_with = "null_default")]
    pub flavor: String,
    #[serde(default, deserialize_with = "null_default")]
    pub namespace_override: String,
    #[serde(default, deserialize_with = "null_default")]
    pub annotations: BTreeMap<String, String>,
}

/// `registryapi.v1.RegistryService/ListPulledPackages` response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ListPulledPackagesResponse {
    #[serde(deserialize_with = "null_default")]
    pub registries: Vec<Registry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Registry {
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(deserialize_with = "null_default")]
    pub host: String,
    #[serde(deserialize_with = "null_default")]
    pub packages: Vec<PulledPackage>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PulledPackage {
    #[serde(deserialize_with = "null_default")]
    pub repo_name: String,
    #[serde(deserialize_with = "null_default")]
    pub package_name: String,
    #[serde(deserialize_with = "null_default")]
    pub tags: Vec<PackageTag>,
}

/// One pulled tag of a package: the unit the `packages` collection holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageTag {
    #[serde(deserialize_with = "identifier")]
    pub reference: String,
    #[serde(default, deserialize_with = "null_default")]
    pub arch: String,
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    #[serde(default, deserialize_with = "int64")]
    pub total_bytes: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub pull_info: PullInfo,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PullInfo {
    #[serde(deserialize_with = "int64")]
    pub downloaded_bytes: i64,
    #[serde(deserialize_with = "enum_value")]
    pub status: Json,
}

impl Default for PullInfo {
    fn default() -> Self {
        Self { downloaded_bytes: 0, status: zero() }
    }
}

fn zero() -> Json {
    Json::from(0)
}

/// `null` reads as the default, like an omitted field.
fn null_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A required, non-empty string that names an item.
fn identifier<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Err(serde::de::Error::custom("an item has an empty identifier"));
    }
    Ok(text)
}

/// A 64-bit integer written as a number or, per the protobuf JSON mapping, a string.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Option::<Json>::deserialize(d)? {
        None => Ok(0),
        Some(Json::Number(n)) => n.as_i64().ok_or_else(|| serde::de::Error::custom(format!("{n} is not an int64"))),
        Some(Json::String(s)) => s.parse().map_err(|_| serde::de::Error::custom(format!("`{s}` is not an int64"))),
        Some(other) => Err(serde::de::Error::custom(format!("expected an int64, got {other}"))),
    }
}

/// An enum value: its number or its name, kept as sent.
fn enum_value<'de, D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
    match Option::<Json>::deserialize(d)? {
        None => Ok(zero()),
        Some(value @ (Json::Number(_) | Json::String(_))) => Ok(value),
        Some(other) => Err(serde::de::Error::custom(format!("expected an enum number or name, got {other}"))),
    }
}

/// Any scalar (string, number, boolean); `null` and absent stay `null`.
fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
    match Json::deserialize(d)? {
        value @ (Json::Array(_) | Json::Object(_)) => {
            Err(serde::de::Error::custom(format!("expected a scalar, got {value}")))
        }
        value => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_json_forms_are_accepted() {
        let parsed: ListPulledPackagesResponse = serde_json::from_str(
            r#"{"registries":[{"name":"local","host":"127.0.0.1:5000","packages":[{"repoName":"r","packageName":"p",
                "tags":[{"reference":"p:1.0","arch":"amd64","totalBytes":"123","pullInfo":{"downloadedBytes":45,"status":"PULL_STATUS_DONE"}},
                        {"reference":"p:2.0"}]}]}]}"#,
        )
        .unwrap();
        let tags = &parsed.registries[0].packages[0].tags;
        assert_eq!(tags[0].total_bytes, 123);
        assert_eq!(tags[0].pull_info.downloaded_bytes, 45);
        assert_eq!(tags[0].pull_info.status, Json::from("PULL_STATUS_DONE"));
        assert_eq!(tags[1].pull_info.status, Json::from(0));
        assert_eq!(tags[1].arch, "");
    }

    #[test]
    fn omitted_lists_are_empty() {
        let parsed: ListPackagesResponse = serde_json::from_str("{}").unwrap();
        assert!(parsed.packages.is_empty());
        let parsed: ListPackagesResponse = serde_json::from_str(r#"{"packages":null}"#).unwrap();
        assert!(parsed.packages.is_empty());
    }

    #[test]
    fn items_without_identity_are_malformed() {
        assert!(serde_json::from_str::<ListPackagesResponse>(r#"{"packages":[{"version":"1"}]}"#).is_err());
        assert!(serde_json::from_str::<ListPackagesResponse>(r#"{"packages":[{"name":""}]}"#).is_err());
        assert!(serde_json::from_str::<ListPackagesResponse>(r#"{"packages":[{"name":"a","status":[1]}]}"#).is_err());
        assert!(serde_json::from_str::<ListPackagesResponse>(r#"{"packages":{"name":"a"}}"#).is_err());
    }

    #[test]
    fn status_fields() {
        let status: AgentStatus = serde_json::from_str(
            r#"{"version":"1.2.3","k8sVersion":"v1.31","systemTime":"2026-01-01T00:00:00Z","extra":1}"#,
        )
        .unwrap();
        assert_eq!(status.version, "1.2.3");
        assert_eq!(status.k8s_version, "v1.31");
        assert_eq!(status.system_time, Json::from("2026-01-01T00:00:00Z"));
        assert!(serde_json::from_str::<AgentStatus>(r#"{"version":5}"#).is_err());
    }
}
