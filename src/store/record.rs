//! On-disk layout of the document tree.
//!
//! One sled tree holds everything about documents:
//! - `r` + doc key → [`DocRecord`] (tombstone flag, Automerge heads, current JSON,
//!   bookkeeping of the change log)
//! - `c` + doc key + 0xFF + seq (u64 BE) → an Automerge chunk: a saved snapshot or
//!   one incremental change. Loading a document concatenates its chunks in order.
//!
//! - `l` + seq (u64 BE) → doc key: the change log. Every persisted change
//!   moves its document to a new, higher sequence number, so the entries after
//!   a peer's cursor are exactly the documents that changed since.
//! - `p` + …: the pieces of values longer than 6 KiB, whose keys above hold a
//!   stub naming them (`pieces.rs`).
//!
//! A write's key updates reach sled through the journal, encoded by
//! [`encode_writes`], so they are applied whole even if a crash interrupts them.
//!
//! A doc key is `collection 0x00 doc_id`; 0xFF never occurs in UTF-8, so a
//! document's chunk prefix can never match another document's.

use automerge::ChangeHash;

const RECORD_PREFIX: u8 = b'r';
const CHUNK_PREFIX: u8 = b'c';
const CHUNK_SEPARATOR: u8 = 0xFF;
const LOG_PREFIX: u8 = b'l';
const RECORD_VERSION: u8 = 1;

/// One key update: the new value, or `None` to remove the key.
pub type KeyWrite = (Vec<u8>, Option<Vec<u8>>);

/// Identifies a document: its collection and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocKey {
    pub collection: String,
    pub doc_id: String,
}

impl DocKey {
    pub fn new(collection: impl Into<String>, doc_id: impl Into<String>) -> Self {
        Self { collection: collection.into(), doc_id: doc_id.into() }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.collection.as_bytes());
        out.push(0);
        out.extend_from_slice(self.doc_id.as_bytes());
    }

    /// The key as stored (collection, NUL, doc id); also the mesh's wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.collection.len() + self.doc_id.len() + 1);
        self.encode_into(&mut out);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let split = bytes.iter().position(|b| *b == 0)?;
        let collection = std::str::from_utf8(&bytes[..split]).ok()?;
        let doc_id = std::str::from_utf8(&bytes[split + 1..]).ok()?;
        Some(Self::new(collection, doc_id))
    }

    pub fn record_key(&self) -> Vec<u8> {
        let mut out = vec![RECORD_PREFIX];
        self.encode_into(&mut out);
        out
    }

    pub fn chunk_prefix(&self) -> Vec<u8> {
        let mut out = vec![CHUNK_PREFIX];
        self.encode_into(&mut out);
        out.push(CHUNK_SEPARATOR);
        out
    }

    pub fn chunk_key(&self, seq: u64) -> Vec<u8> {
        let mut out = self.chunk_prefix();
        out.extend_from_slice(&seq.to_be_bytes());
        out
    }

    pub fn from_record_key(key: &[u8]) -> Option<Self> {
        Self::from_bytes(key.strip_prefix(&[RECORD_PREFIX])?)
    }
}

impl std::fmt::Display for DocKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.collection, self.doc_id)
    }
}

pub fn record_prefix() -> [u8; 1] {
    [RECORD_PREFIX]
}

pub fn log_prefix() -> [u8; 1] {
    [LOG_PREFIX]
}

pub fn log_key(seq: u64) -> [u8; 9] {
    let mut out = [LOG_PREFIX; 9];
    out[1..].copy_from_slice(&seq.to_be_bytes());
    out
}

pub fn log_seq_from_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.strip_prefix(&[LOG_PREFIX])?.try_into().ok()?))
}

/// Per-document metadata, rewritten on every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocRecord {
    pub deleted: bool,
    pub heads: Vec<ChangeHash>,
    /// Sequence number the next chunk gets.
    pub next_seq: u64,
    /// Chunks currently stored (snapshot included).
    pub chunk_count: u32,
    /// Bytes of the last snapshot and of the incremental chunks after it;
    /// compaction runs when the increments outgrow the snapshot.
    pub snapshot_bytes: u64,
    pub incremental_bytes: u64,
    /// This document's entry in the change log (0: none yet).
    pub log_seq: u64,
    /// The document's JSON (empty when deleted).
    pub json: String,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed document record")]
pub struct MalformedRecord;

impl DocRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + 32 * self.heads.len() + self.json.len());
        out.push(RECORD_VERSION);
        out.push(u8::from(self.deleted));
        out.extend_from_slice(&self.next_seq.to_be_bytes());
        out.extend_from_slice(&self.chunk_count.to_be_bytes());
        out.extend_from_slice(&self.snapshot_bytes.to_be_bytes());
        out.extend_from_slice(&self.incremental_bytes.to_be_bytes());
        out.extend_from_slice(&self.log_seq.to_be_bytes());
        out.extend_from_slice(&(self.heads.len() as u16).to_be_bytes());
        for head in &self.heads {
            out.extend_from_slice(&head.0);
        }
        out.extend_from_slice(self.json.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MalformedRecord> {
        let mut r = Reader(bytes);
        if r.take(1)?[0] != RECORD_VERSION {
            return Err(MalformedRecord);
        }
        let deleted = r.take(1)?[0] != 0;
        let next_seq = u64::from_be_bytes(r.array()?);
        let chunk_count = u32::from_be_bytes(r.array()?);
        let snapshot_bytes = u64::from_be_bytes(r.array()?);
        let incremental_bytes = u64::from_be_bytes(r.array()?);
        let log_seq = u64::from_be_bytes(r.array()?);
        let head_count = u16::from_be_bytes(r.array()?);
        let mut heads = Vec::with_capacity(head_count as usize);
        for _ in 0..head_count {
            heads.push(ChangeHash(r.array()?));
        }
        let json = String::from_utf8(r.0.to_vec()).map_err(|_| MalformedRecord)?;
        Ok(Self { deleted, heads, next_seq, chunk_count, snapshot_bytes, incremental_bytes, log_seq, json })
    }
}

/// Encodes key updates as one journal record: per update the key length (u32 BE),
/// the key, then 0 for a removal or 1, the value length (u32 BE) and the value.
pub fn encode_writes<'a>(writes: impl IntoIterator<Item = &'a KeyWrite>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    out
}

pub fn decode_writes(bytes: &[u8]) -> Result<Vec<KeyWrite>, MalformedRecord> {
    let mut r = Reader(bytes);
    let mut writes = Vec::new();
    while !r.0.is_empty() {
        let key_len = u32::from_be_bytes(r.array()?) as usize;
        let key = r.take(key_len)?.to_vec();
        let value = match r.take(1)?[0] {
            0 => None,
            1 => {
                let len = u32::from_be_bytes(r.array()?) as usize;
                Some(r.take(len)?.to_vec())
            }
            _ => return Err(MalformedRecord),
        };
        writes.push((key, value));
    }
    Ok(writes)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MalformedRecord> {
        if self.0.len() < n {
            return Err(MalformedRecord);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MalformedRecord> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = DocRecord {
            deleted: true,
            heads: vec![ChangeHash([7; 32]), ChangeHash([9; 32])],
            next_seq: 42,
            chunk_count: 3,
            snapshot_bytes: 1000,
            incremental_bytes: 17,
            log_seq: 5,
            json: r#"{"a":1}"#.into(),
        };
        assert_eq!(DocRecord::decode(&record.encode()).unwrap(), record);
        assert!(DocRecord::decode(&record.encode()[..10]).is_err());
    }

    #[test]
    fn writes_round_trip() {
        let writes = vec![(b"r\0a".to_vec(), Some(b"value".to_vec())), (b"l1".to_vec(), None), (vec![], Some(vec![]))];
        let encoded = encode_writes(&writes);
        assert_eq!(decode_writes(&encoded).unwrap(), writes);
        assert!(decode_writes(&encoded[..encoded.len() - 1]).is_err());
    }

    #[test]
    fn chunk_prefixes_never_overlap_between_documents() {
        let a = DocKey::new("c", "doc");
        let b = DocKey::new("c", "doc2");
        assert!(!b.chunk_key(0).starts_with(&a.chunk_prefix()));
        assert_eq!(DocKey::from_record_key(&a.record_key()), Some(a));
    }
}
