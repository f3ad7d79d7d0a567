//! Typed collections: `Platform`, `Cell`, `Track` and `Command` messages stored
//! as JSON documents in `platforms`, `cells`, `tracks` and `commands`.
//!
//! Documents use the messages' proto field names (snake_case) and proto3 JSON
//! values (enum names, int64 as strings), so they read naturally next to
//! documents written with `PutDocument` and parse back with any proto3 JSON
//! parser.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::proto::peat::sidecar::v1::{Cell, Command, Platform, Track};

/// A message kept as JSON documents of one collection, keyed by its `id`.
pub trait TypedDocument: Serialize + DeserializeOwned + Default {
    const COLLECTION: &'static str;
    /// Request field that carries the message, for error messages.
    const FIELD: &'static str;
    fn id(&self) -> &str;
    fn set_id(&mut self, id: String);
}

macro_rules! typed_document {
    ($ty:ty, $collection:literal, $field:literal) => {
        impl TypedDocument for $ty {
            const COLLECTION: &'static str = $collection;
            const FIELD: &'static str = $field;
            fn id(&self) -> &str {
                &self.id
            }
            fn set_id(&mut self, id: String) {
                self.id = id;
            }
        }
    };
}

typed_document!(Platform, "platforms", "platform");
typed_document!(Cell, "cells", "cell");
typed_document!(Track, "tracks", "track");
typed_document!(Command, "commands", "command");

/// The message as a JSON object with snake_case keys.
pub fn to_document<T: TypedDocument>(message: &T) -> Map<String, Value> {
    let Ok(Value::Object(camel)) = serde_json::to_value(message) else {
        unreachable!("protobuf messages serialise to JSON objects")
    };
    camel.into_iter().map(|(key, value)| (snake_case(&key), value)).collect()
}

/// Parses a stored document; the generated deserialisers accept both the
/// proto field names and their camelCase JSON names and ignore unknown keys.
pub fn from_document<T: TypedDocument>(doc_id: &str, json: &str) -> Result<T, serde_json::Error> {
    let mut message: T = serde_json::from_str(json)?;
    if message.id().is_empty() {
        message.set_id(doc_id.to_owned());
    }
    Ok(message)
}

fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::peat::sidecar::v1::PlatformStatus;

    #[test]
    fn platforms_round_trip_through_snake_case_documents() {
        let platform = Platform {
            id: "p1".into(),
            platform_type: "uav".into(),
            status: PlatformStatus::PLATFORM_STATUS_READY.into(),
            altitude_m: 12.5,
            capabilities: vec!["eo".into()],
            callsign: Some("HAWK".into()),
            ..Default::default()
        };
        let doc = to_document(&platform);
        assert_eq!(doc["platform_type"], "uav");
        assert_eq!(doc["altitude_m"], 12.5);
        assert_eq!(doc["status"], "PLATFORM_STATUS_READY");
        let json = serde_json::to_string(&doc).unwrap();
        assert!(from_document::<Platform>("p1", &json).unwrap() == platform);
    }

    #[test]
    fn int64_fields_survive_as_proto3_json() {
        let command = Command { id: "c".into(), created_at: 1_700_000_000_123, ..Default::default() };
        let json = serde_json::to_string(&to_document(&command)).unwrap();
        assert_eq!(from_document::<Command>("c", &json).unwrap().created_at, 1_700_000_000_123);
    }
}
