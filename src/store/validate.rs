//! Input rules for collections, document ids and document bodies.
//!
//! Everything that reaches the store passes these checks first; each failure
//! names the offending field so clients can fix their request.

use serde_json::{Map, Value};

pub const MAX_COLLECTION_BYTES: usize = 128;
pub const MAX_DOC_ID_BYTES: usize = 512;

/// An invalid request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// Collection names: 1–128 bytes of `[A-Za-z0-9._-]`.
pub fn collection(name: &str) -> Result<(), InvalidField> {
    if name.is_empty() || name.len() > MAX_COLLECTION_BYTES {
        return Err(InvalidField::new(
            "collection",
            format!("must be 1 to {MAX_COLLECTION_BYTES} bytes, got {}", name.len()),
        ));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(InvalidField::new("collection", format!("may contain only A-Z a-z 0-9 . _ -, found {bad:?}")));
    }
    Ok(())
}

/// Document ids: 1–512 bytes of UTF-8 without control characters.
pub fn doc_id(id: &str) -> Result<(), InvalidField> {
    if id.is_empty() || id.len() > MAX_DOC_ID_BYTES {
        return Err(InvalidField::new("doc_id", format!("must be 1 to {MAX_DOC_ID_BYTES} bytes, got {}", id.len())));
    }
    if let Some(bad) = id.chars().find(|c| c.is_control()) {
        return Err(InvalidField::new("doc_id", format!("must not contain control characters, found {bad:?}")));
    }
    Ok(())
}

/// Parses a document body: a JSON object of at most `max_bytes` bytes.
pub fn document(json: &str, max_bytes: usize, field: &'static str) -> Result<Map<String, Value>, InvalidField> {
    if json.len() > max_bytes {
        return Err(InvalidField::new(field, format!("document is {} bytes, the limit is {max_bytes}", json.len())));
    }
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(InvalidField::new(field, format!("must be a JSON object, got {}", kind(&other)))),
        Err(err) => Err(InvalidField::new(field, format!("invalid JSON: {err}"))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names() {
        assert!(collection("platforms").is_ok());
        assert!(collection("a.b_c-9").is_ok());
        assert!(collection(&"x".repeat(128)).is_ok());
        for bad in ["", "has space", "slash/no", "colon:no", "ünicode", &"x".repeat(129)] {
            assert_eq!(collection(bad).unwrap_err().field, "collection", "{bad:?}");
        }
    }

    #[test]
    fn doc_ids() {
        for good in ["a", "agent:pkg/1.0", "ünïcödé", &"x".repeat(512)] {
            assert!(doc_id(good).is_ok(), "{good:?}");
        }
        for bad in ["", "tab\there", "nul\0", &"x".repeat(513)] {
            assert_eq!(doc_id(bad).unwrap_err().field, "doc_id", "{bad:?}");
        }
    }

    #[test]
    fn documents() {
        assert!(document(r#"{"a":1}"#, 100, "json_data").is_ok());
        assert!(document("[1]", 100, "json_data").unwrap_err().message.contains("an array"));
        assert!(document("{", 100, "json_data").unwrap_err().message.contains("invalid JSON"));
        assert!(document(r#"{"a":"long"}"#, 5, "json_data").unwrap_err().message.contains("limit"));
    }
}
