//! Digest reconciliation: finds the documents two stores hold differently
//! when no change-log cursor says so (first contact, a wiped store), at a
//! cost that follows the number of differences rather than of documents.
//!
//! Each document maps to a 64-bit *key hash* and a 64-bit *leaf hash* of
//! (key, sorted heads). A bucket is the set of key hashes sharing a prefix of
//! `4 × depth` bits, summarised by its document count and the wrapping sum of
//! its leaf hashes (order-independent). Both sides send the same rounds:
//! round 0 summarises the 256 buckets of depth 2; a bucket that differs is
//! settled at once when one side has no document in it (the other side
//! offers all of its documents), is listed leaf by leaf when small, and is
//! otherwise split into its 16 children for the next round. Both sides see
//! both halves of every round, so they derive the same next round without
//! further coordination.

use std::collections::HashMap;

use automerge::ChangeHash;
use sha2::{Digest as _, Sha256};

use super::proto;
use crate::store::DocKey;

const BITS_PER_LEVEL: u32 = 4;
const TOP_DEPTH: u32 = 2;
const MAX_DEPTH: u32 = 64 / BITS_PER_LEVEL;
/// Buckets with at most this many documents on both sides are listed leaf by leaf.
const LEAF_MAX: u32 = 8;
/// Bucket summaries or leaves per `Digest` frame (≈ 80 kB at most).
pub const MAX_ENTRIES_PER_FRAME: usize = 8192;
/// Leaves a peer may announce in one round; far above any honest count.
const MAX_LEAVES_PER_ROUND: u64 = 1 << 24;

/// The key hash of a document.
pub fn key_hash(key: &DocKey) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"peat digest key\0");
    hasher.update(key.to_bytes());
    first_u64(&hasher.finalize())
}

/// The leaf hash of a document with these heads.
pub fn leaf_hash(key: &DocKey, heads: &[ChangeHash]) -> u64 {
    let mut sorted = heads.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha256::new();
    hasher.update(b"peat digest leaf\0");
    let key = key.to_bytes();
    hasher.update((key.len() as u64).to_be_bytes());
    hasher.update(&key);
    for head in &sorted {
        hasher.update(head.0);
    }
    first_u64(&hasher.finalize())
}

fn first_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().expect("a SHA-256 digest has 8 bytes"))
}

/// One local document as the digest sees it.
pub struct Entry {
    pub key_hash: u64,
    pub leaf: u64,
    pub key: DocKey,
    pub log_seq: u64,
}

impl Entry {
    pub fn new(key: DocKey, heads: &[ChangeHash], log_seq: u64) -> Self {
        Self { key_hash: key_hash(&key), leaf: leaf_hash(&key, heads), key, log_seq }
    }
}

/// Key hashes sharing the top `4 × depth` bits `prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    depth: u32,
    prefix: u64,
}

impl Bucket {
    fn first(self) -> u64 {
        match self.depth {
            0 => 0,
            d => self.prefix << (64 - d * BITS_PER_LEVEL),
        }
    }

    fn last(self) -> u64 {
        match self.depth {
            0 => u64::MAX,
            d if d == MAX_DEPTH => self.prefix,
            d => self.first() | (u64::MAX >> (d * BITS_PER_LEVEL)),
        }
    }

    fn children(self) -> impl Iterator<Item = Bucket> {
        (0..1u64 << BITS_PER_LEVEL)
            .map(move |child| Bucket { depth: self.depth + 1, prefix: (self.prefix << BITS_PER_LEVEL) | child })
    }
}

/// What the digest concluded about one of our documents that differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The peer does not hold the document at all.
    PeerLacks,
    /// The peer holds the document with this (different) leaf hash.
    PeerHolds(u64),
}

/// A document to offer after the digest, with its change-log position.
pub struct Differing {
    pub log_seq: u64,
    pub key: DocKey,
    pub verdict: Verdict,
}

/// One session's side of a digest exchange.
pub struct Reconciler {
    /// Sorted by key hash.
    entries: Vec<Entry>,
    round: u32,
    /// This round's buckets to summarise and buckets to list, both sorted.
    summarise: Vec<Bucket>,
    list: Vec<Bucket>,
    expected_leaves: u64,
    their_counts: Vec<u32>,
    their_sums: Vec<u64>,
    their_leaves: Vec<(u64, u64)>,
    /// Documents found to differ so far.
    pub differing: Vec<Differing>,
    pub finished: bool,
}

impl Reconciler {
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_unstable_by_key(|e| e.key_hash);
        let top = Bucket { depth: 0, prefix: 0 };
        let summarise =
            (0..TOP_DEPTH).fold(vec![top], |level, _| level.into_iter().flat_map(Bucket::children).collect());
        Self {
            entries,
            round: 0,
            summarise,
            list: Vec::new(),
            expected_leaves: 0,
            their_counts: Vec::new(),
            their_sums: Vec::new(),
            their_leaves: Vec::new(),
            differing: Vec::new(),
            finished: false,
        }
    }

    fn slice(&self, bucket: Bucket) -> &[Entry] {
        let start = self.entries.partition_point(|e| e.key_hash < bucket.first());
        let end = self.entries.partition_point(|e| e.key_hash <= bucket.last());
        &self.entries[start..end]
    }

    fn summary(&self, bucket: Bucket) -> (u32, u64) {
        let slice = self.slice(bucket);
        (slice.len() as u32, slice.iter().fold(0u64, |sum, e| sum.wrapping_add(e.leaf)))
    }

    /// This side's frames for the current round.
    pub fn frames(&self) -> Vec<proto::Digest> {
        let mut frames = Vec::new();
        let mut frame = proto::Digest { round: self.round, ..Default::default() };
        let full = |f: &proto::Digest| f.counts.len() + f.leaf_keys.len() >= MAX_ENTRIES_PER_FRAME;
        for bucket in &self.summarise {
            let (count, sum) = self.summary(*bucket);
            frame.counts.push(count);
            frame.sums.push(sum);
            if full(&frame) {
                frames.push(std::mem::replace(&mut frame, proto::Digest { round: self.round, ..Default::default() }));
            }
        }
        for bucket in &self.list {
            for entry in self.slice(*bucket) {
                frame.leaf_keys.push(entry.key_hash);
                frame.leaf_hashes.push(entry.leaf);
                if full(&frame) {
                    frames
                        .push(std::mem::replace(&mut frame, proto::Digest { round: self.round, ..Default::default() }));
                }
            }
        }
        frame.last = true;
        frames.push(frame);
        frames
    }

    /// Takes one of the peer's frames. At the end of the peer's part of the
    /// round it settles the round and returns the next round's frames, or
    /// sets `finished` when there is none.
    pub fn receive(&mut self, frame: proto::Digest) -> Result<Option<Vec<proto::Digest>>, String> {
        if self.finished {
            return Err("digest frame after the digest finished".into());
        }
        if frame.round != self.round {
            return Err(format!("digest round {} while in round {}", frame.round, self.round));
        }
        if frame.counts.len() != frame.sums.len() || frame.leaf_keys.len() != frame.leaf_hashes.len() {
            return Err("digest frame with unpaired entries".into());
        }
        if frame.counts.len() + frame.leaf_keys.len() > MAX_ENTRIES_PER_FRAME {
            return Err("digest frame with too many entries".into());
        }
        self.their_counts.extend(frame.counts);
        self.their_sums.extend(frame.sums);
        self.their_leaves.extend(frame.leaf_keys.into_iter().zip(frame.leaf_hashes));
        if self.their_counts.len() > self.summarise.len() || self.their_leaves.len() as u64 > self.expected_leaves {
            return Err("digest round longer than agreed".into());
        }
        if !frame.last {
            return Ok(None);
        }
        if self.their_counts.len() != self.summarise.len() || self.their_leaves.len() as u64 != self.expected_leaves {
            return Err("digest round shorter than agreed".into());
        }
        self.settle()?;
        if self.finished { Ok(None) } else { Ok(Some(self.frames())) }
    }

    fn settle(&mut self) -> Result<(), String> {
        let counts = std::mem::take(&mut self.their_counts);
        let sums = std::mem::take(&mut self.their_sums);
        // Leaves of the listed buckets: ours against theirs.
        let theirs: HashMap<u64, u64> = std::mem::take(&mut self.their_leaves).into_iter().collect();
        for &key_hash in theirs.keys() {
            let bucket = self.list.partition_point(|b| b.last() < key_hash);
            if self.list.get(bucket).is_none_or(|b| key_hash < b.first()) {
                return Err("digest leaf outside the listed buckets".into());
            }
        }
        let mut differing = Vec::new();
        for bucket in &self.list {
            for entry in self.slice(*bucket) {
                let verdict = match theirs.get(&entry.key_hash) {
                    None => Verdict::PeerLacks,
                    Some(&leaf) if leaf == entry.leaf => continue,
                    Some(&leaf) => Verdict::PeerHolds(leaf),
                };
                differing.push((entry, verdict));
            }
        }

        // Summaries: settle, list or split each bucket that differs.
        let mut summarise = Vec::new();
        let mut list = Vec::new();
        let mut expected_leaves = 0u64;
        for (i, bucket) in self.summarise.iter().enumerate() {
            let (count, sum) = self.summary(*bucket);
            let (their_count, their_sum) = (counts[i], sums[i]);
            if (count, sum) == (their_count, their_sum) || count == 0 {
                continue;
            }
            if bucket.depth == MAX_DEPTH && their_count > LEAF_MAX {
                return Err(format!("digest claims {their_count} documents with one key hash"));
            }
            if their_count == 0 {
                differing.extend(self.slice(*bucket).iter().map(|e| (e, Verdict::PeerLacks)));
            } else if count.max(their_count) <= LEAF_MAX || bucket.depth == MAX_DEPTH {
                list.push(*bucket);
                expected_leaves += u64::from(their_count);
            } else {
                summarise.extend(bucket.children());
            }
        }
        if expected_leaves > MAX_LEAVES_PER_ROUND {
            return Err(format!("digest announces {expected_leaves} leaves in one round"));
        }
        let differing: Vec<Differing> = differing
            .into_iter()
            .map(|(e, verdict)| Differing { log_seq: e.log_seq, key: e.key.clone(), verdict })
            .collect();
        self.differing.extend(differing);
        // Buckets a side has no documents in are skipped by both, so the
        // lists stay in the same (sorted) order on both sides.
        self.summarise = summarise;
        self.list = list;
        self.expected_leaves = expected_leaves;
        self.round += 1;
        self.finished = self.summarise.is_empty() && self.list.is_empty();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> ChangeHash {
        ChangeHash([n; 32])
    }

    fn store(docs: &[(&str, u8)]) -> Vec<Entry> {
        docs.iter()
            .enumerate()
            .map(|(i, (id, h))| Entry::new(DocKey::new("c", *id), &[hash(*h)], i as u64 + 1))
            .collect()
    }

    /// Doc ids a side must offer, with what it learned about the peer's copy.
    type Offers = Vec<(String, Verdict)>;

    /// Runs both sides to completion, returning what each must offer and the bytes exchanged.
    fn reconcile(a: Vec<Entry>, b: Vec<Entry>) -> (Offers, Offers, usize) {
        use prost::Message;
        let (mut a, mut b) = (Reconciler::new(a), Reconciler::new(b));
        let (mut from_a, mut from_b) = (a.frames(), b.frames());
        let mut bytes = 0;
        while !a.finished || !b.finished {
            let (mut next_a, mut next_b) = (None, None);
            for frame in from_b.drain(..) {
                bytes += frame.encoded_len();
                next_a = a.receive(frame).unwrap().or(next_a);
            }
            for frame in from_a.drain(..) {
                bytes += frame.encoded_len();
                next_b = b.receive(frame).unwrap().or(next_b);
            }
            assert_eq!(a.finished, b.finished, "both sides finish in the same round");
            from_a = next_a.unwrap_or_default();
            from_b = next_b.unwrap_or_default();
        }
        let names = |r: Reconciler| {
            let mut v: Vec<_> = r.differing.into_iter().map(|d| (d.key.doc_id, d.verdict)).collect();
            v.sort_by(|x, y| x.0.cmp(&y.0));
            v
        };
        (names(a), names(b), bytes)
    }

    #[test]
    fn identical_stores_finish_after_one_round() {
        let docs: Vec<(String, u8)> = (0..5000).map(|i| (format!("d{i}"), (i % 7) as u8)).collect();
        let docs: Vec<(&str, u8)> = docs.iter().map(|(s, h)| (s.as_str(), *h)).collect();
        let (a, b, bytes) = reconcile(store(&docs), store(&docs));
        assert!(a.is_empty() && b.is_empty());
        assert!(bytes < 6000, "{bytes} bytes");
    }

    #[test]
    fn differences_are_found_on_the_right_side() {
        let mut docs_a: Vec<(String, u8)> = (0..3000).map(|i| (format!("d{i}"), 1)).collect();
        let mut docs_b = docs_a.clone();
        docs_a[10].1 = 2; // changed on A
        docs_b[2000].1 = 3; // changed on B
        docs_a.push(("only-a".into(), 1));
        docs_b.push(("only-b".into(), 1));
        let a: Vec<(&str, u8)> = docs_a.iter().map(|(s, h)| (s.as_str(), *h)).collect();
        let b: Vec<(&str, u8)> = docs_b.iter().map(|(s, h)| (s.as_str(), *h)).collect();
        let (a, b, _) = reconcile(store(&a), store(&b));
        let leaf = |id: &str, h: u8| leaf_hash(&DocKey::new("c", id), &[hash(h)]);
        assert_eq!(
            a,
            vec![
                ("d10".into(), Verdict::PeerHolds(leaf("d10", 1))),
                ("d2000".into(), Verdict::PeerHolds(leaf("d2000", 3))),
                ("only-a".into(), Verdict::PeerLacks)
            ]
        );
        assert_eq!(
            b,
            vec![
                ("d10".into(), Verdict::PeerHolds(leaf("d10", 2))),
                ("d2000".into(), Verdict::PeerHolds(leaf("d2000", 1))),
                ("only-b".into(), Verdict::PeerLacks)
            ]
        );
    }

    #[test]
    fn an_empty_peer_gets_everything_after_one_small_round() {
        let docs: Vec<(String, u8)> = (0..2000).map(|i| (format!("d{i}"), 1)).collect();
        let docs: Vec<(&str, u8)> = docs.iter().map(|(s, h)| (s.as_str(), *h)).collect();
        let (a, b, bytes) = reconcile(store(&docs), Vec::new());
        assert_eq!(a.len(), 2000);
        assert!(a.iter().all(|(_, v)| *v == Verdict::PeerLacks));
        assert!(b.is_empty());
        assert!(bytes < 6000, "{bytes} bytes");
    }

    #[test]
    fn malformed_rounds_are_rejected() {
        let mut r = Reconciler::new(store(&[("x", 1)]));
        assert!(r.receive(proto::Digest { round: 1, last: true, ..Default::default() }).is_err());
        let mut r = Reconciler::new(store(&[("x", 1)]));
        assert!(
            r.receive(proto::Digest { round: 0, last: true, counts: vec![1], sums: vec![], ..Default::default() })
                .is_err()
        );
        let mut r = Reconciler::new(store(&[("x", 1)]));
        assert!(
            r.receive(proto::Digest {
                round: 0,
                last: true,
                counts: vec![0; 3],
                sums: vec![0; 3],
                ..Default::default()
            })
            .is_err()
        );
        let mut r = Reconciler::new(store(&[("x", 1)]));
        let leaves =
            proto::Digest { round: 0, last: true, leaf_keys: vec![1], leaf_hashes: vec![2], ..Default::default() };
        assert!(r.receive(leaves).is_err());
    }
}
