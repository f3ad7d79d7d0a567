//! Large values in sled, stored as pieces.
//!
//! sled 0.34 writes a page whose serialized form is larger than a quarter of
//! a log segment (~128 KiB) to a blob file of its own, and its page cache
//! counts such a page at the size of its log entry, a pointer. Pages holding
//! large values were therefore never evicted: everything once written or read
//! stayed in memory, whatever `cache_capacity` said. And as a leaf splits by
//! its number of entries (17), not their size, a leaf of large values was
//! rewritten whole, megabytes at a time, each time it changed.
//!
//! So a value longer than [`PIECE_BYTES`] is written as pieces under keys of
//! their own, small enough that a full leaf of them stays an ordinary page,
//! and its own key holds a stub naming them. Each write of a split value uses
//! a fresh generation, so the pieces a reader follows are never overwritten:
//! a reader that finds them gone (the value was rewritten meanwhile) reads
//! the key again. The stub replaces the old value in one insert, after the
//! new pieces; the old pieces go after it. A crash in between leaves pieces
//! no stub names, which [`sweep`] removes when the journal is replayed.

use sled::IVec;

/// The largest value stored as it is; longer ones are split into pieces of
/// this size. 17 of them with their keys (`collection` and `doc_id` at their
/// longest) stay well under sled's blob threshold.
pub const PIECE_BYTES: usize = 6 * 1024;
/// First byte of a stub. A stub is never mistaken for a stored value:
/// sealed values are at least 28 bytes long, plaintext records begin with
/// their version (1) and Automerge chunks with its magic bytes (0x85).
const STUB_MARKER: u8 = 0xB5;
const STUB_LEN: usize = 13;
/// Pieces' keys: this byte, the value's key (length-prefixed, so that no key
/// is a prefix of another's pieces), generation and index.
const PIECE_PREFIX: u8 = b'p';

#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("piece {index} of {count} of a stored value is missing")]
    Missing { index: u32, count: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stub {
    generation: u64,
    count: u32,
}

impl Stub {
    fn parse(value: &[u8]) -> Option<Stub> {
        if value.len() != STUB_LEN || value[0] != STUB_MARKER {
            return None;
        }
        let generation = u64::from_be_bytes(value[1..9].try_into().expect("8 bytes"));
        let count = u32::from_be_bytes(value[9..13].try_into().expect("4 bytes"));
        Some(Stub { generation, count })
    }

    fn encode(self) -> [u8; STUB_LEN] {
        let mut out = [0u8; STUB_LEN];
        out[0] = STUB_MARKER;
        out[1..9].copy_from_slice(&self.generation.to_be_bytes());
        out[9..13].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    /// The key of every piece of this stub's value sorts after this prefix.
    fn pieces_prefix(self, key: &[u8]) -> Vec<u8> {
        let key_len = u16::try_from(key.len()).expect("sled keys of the store are shorter than 64 KiB");
        let mut prefix = Vec::with_capacity(key.len() + 15);
        prefix.push(PIECE_PREFIX);
        prefix.extend_from_slice(&key_len.to_be_bytes());
        prefix.extend_from_slice(key);
        prefix.extend_from_slice(&self.generation.to_be_bytes());
        prefix
    }

    fn piece_key(self, key: &[u8], index: u32) -> Vec<u8> {
        let mut piece_key = self.pieces_prefix(key);
        piece_key.extend_from_slice(&index.to_be_bytes());
        piece_key
    }
}

/// Sets `key` to `value` (`None` removes it), splitting a long value into
/// pieces and removing the pieces of the value it replaces.
pub fn write(tree: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> sled::Result<()> {
    let (replaced, written) = match value {
        Some(value) if value.len() > PIECE_BYTES => {
            let pieces = value.chunks(PIECE_BYTES);
            let count = u32::try_from(pieces.len()).expect("values are far shorter than 24 TiB");
            let stub = Stub { generation: rand::random(), count };
            let written = (0..count)
                .zip(pieces)
                .try_for_each(|(index, piece)| tree.insert(stub.piece_key(key, index), piece).map(drop))
                .and_then(|()| tree.insert(key, &stub.encode()[..]));
            match written {
                Ok(replaced) => (replaced, Some(stub)),
                Err(err) => {
                    // Best effort: a disk that refused the write may refuse
                    // this too, and then the sweep after a crash gets them.
                    let _ = remove_pieces(tree, key, stub);
                    return Err(err);
                }
            }
        }
        Some(value) => (tree.insert(key, value)?, None),
        None => (tree.remove(key)?, None),
    };
    match replaced.as_deref().and_then(Stub::parse) {
        Some(old) if Some(old) != written => remove_pieces(tree, key, old),
        _ => Ok(()),
    }
}

fn remove_pieces(tree: &sled::Tree, key: &[u8], stub: Stub) -> sled::Result<()> {
    (0..stub.count).try_for_each(|index| tree.remove(stub.piece_key(key, index)).map(drop))
}

/// The whole value `stored` under `key` stands for: itself, or the pieces
/// its stub names. `None` when the key was removed while its pieces were read.
pub fn resolve(tree: &sled::Tree, key: &[u8], stored: IVec) -> Result<Option<IVec>, PieceError> {
    let mut stored = stored;
    loop {
        let Some(stub) = Stub::parse(&stored) else { return Ok(Some(stored)) };
        let mut value = Vec::with_capacity(stub.count as usize * PIECE_BYTES);
        let mut found = 0;
        for piece in tree.scan_prefix(stub.pieces_prefix(key)).values().take(stub.count as usize) {
            value.extend_from_slice(&piece?);
            found += 1;
        }
        if found == stub.count {
            return Ok(Some(value.into()));
        }
        // Rewritten meanwhile (a new stub), or really missing (the same one).
        match tree.get(key)? {
            None => return Ok(None),
            Some(now) if now == stored => return Err(PieceError::Missing { index: found, count: stub.count }),
            Some(now) => stored = now,
        }
    }
}

/// Removes pieces that no stub names: those of a write a crash interrupted.
/// Returns how many it removed.
pub fn sweep(tree: &sled::Tree) -> sled::Result<usize> {
    let mut removed = 0;
    // The last (value key, generation) looked up, and whether it is live.
    let mut last: Option<(Vec<u8>, u64, bool)> = None;
    for piece_key in tree.scan_prefix([PIECE_PREFIX]).keys() {
        let piece_key = piece_key?;
        let live = match parse_piece_key(&piece_key) {
            None => false,
            Some((key, generation)) => match &last {
                Some((last_key, last_generation, live)) if last_key == key && *last_generation == generation => *live,
                _ => {
                    let current = tree.get(key)?;
                    let live = current.as_deref().and_then(Stub::parse).is_some_and(|s| s.generation == generation);
                    last = Some((key.to_vec(), generation, live));
                    live
                }
            },
        };
        if !live {
            tree.remove(&piece_key)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The value key and generation of a piece's key.
fn parse_piece_key(piece_key: &[u8]) -> Option<(&[u8], u64)> {
    let rest = piece_key.strip_prefix(&[PIECE_PREFIX])?;
    let key_len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let key = rest.get(2..2 + key_len)?;
    let generation = rest.get(2 + key_len..2 + key_len + 8)?;
    (rest.len() == 2 + key_len + 12).then(|| (key, u64::from_be_bytes(generation.try_into().expect("8 bytes"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_tree;

    fn value(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn read(tree: &sled::Tree, key: &[u8]) -> Option<Vec<u8>> {
        let stored = tree.get(key).unwrap()?;
        resolve(tree, key, stored).unwrap().map(|v| v.to_vec())
    }

    fn piece_count(tree: &sled::Tree) -> usize {
        tree.scan_prefix([PIECE_PREFIX]).count()
    }

    #[test]
    fn long_values_are_split_and_read_back_whole() {
        let (_dir, tree) = temp_tree();
        for len in [0, 1, PIECE_BYTES, PIECE_BYTES + 1, 3 * PIECE_BYTES, 1 << 20] {
            let v = value(len, 7);
            write(&tree, b"k", Some(&v)).unwrap();
            assert_eq!(read(&tree, b"k").as_deref(), Some(&v[..]), "{len} bytes");
            assert_eq!(piece_count(&tree), if len > PIECE_BYTES { len.div_ceil(PIECE_BYTES) } else { 0 });
        }
        // The largest stored entry is a piece.
        assert!(tree.iter().values().all(|v| v.unwrap().len() <= PIECE_BYTES));
    }

    #[test]
    fn replacing_or_removing_a_split_value_removes_its_pieces() {
        let (_dir, tree) = temp_tree();
        write(&tree, b"k", Some(&value(5 * PIECE_BYTES, 1))).unwrap();
        write(&tree, b"k", Some(&value(2 * PIECE_BYTES, 2))).unwrap();
        assert_eq!(piece_count(&tree), 2);
        write(&tree, b"k", Some(b"short")).unwrap();
        assert_eq!(piece_count(&tree), 0);
        write(&tree, b"k", Some(&value(2 * PIECE_BYTES, 3))).unwrap();
        write(&tree, b"k", None).unwrap();
        assert_eq!((piece_count(&tree), tree.len()), (0, 0));
    }

    #[test]
    fn keys_that_prefix_each_other_keep_their_own_pieces() {
        let (_dir, tree) = temp_tree();
        let (a, b) = (value(2 * PIECE_BYTES, 4), value(3 * PIECE_BYTES, 5));
        write(&tree, b"doc", Some(&a)).unwrap();
        write(&tree, b"doc2", Some(&b)).unwrap();
        assert_eq!(read(&tree, b"doc"), Some(a));
        assert_eq!(read(&tree, b"doc2"), Some(b));
    }

    #[test]
    fn a_missing_piece_is_an_error_not_a_short_value() {
        let (_dir, tree) = temp_tree();
        write(&tree, b"k", Some(&value(3 * PIECE_BYTES, 6))).unwrap();
        let last = tree.scan_prefix([PIECE_PREFIX]).keys().last().unwrap().unwrap();
        tree.remove(last).unwrap();
        let stored = tree.get(b"k").unwrap().unwrap();
        assert!(matches!(resolve(&tree, b"k", stored), Err(PieceError::Missing { index: 2, count: 3 })));
    }

    #[test]
    fn a_reader_of_a_replaced_value_reads_the_new_one() {
        let (_dir, tree) = temp_tree();
        write(&tree, b"k", Some(&value(3 * PIECE_BYTES, 8))).unwrap();
        let old_stub = tree.get(b"k").unwrap().unwrap();
        let new = value(4 * PIECE_BYTES, 9);
        write(&tree, b"k", Some(&new)).unwrap();
        // A reader that got the old stub before the rewrite.
        assert_eq!(resolve(&tree, b"k", old_stub.clone()).unwrap().as_deref(), Some(&new[..]));
        write(&tree, b"k", None).unwrap();
        assert_eq!(resolve(&tree, b"k", old_stub).unwrap(), None);
    }

    #[test]
    fn sweep_removes_only_pieces_no_stub_names() {
        let (_dir, tree) = temp_tree();
        let live = value(3 * PIECE_BYTES, 10);
        write(&tree, b"live", Some(&live)).unwrap();
        // An interrupted write: pieces, but the stub never replaced the value.
        let orphan = Stub { generation: 42, count: 2 };
        tree.insert(orphan.piece_key(b"live", 0), &b"stale"[..]).unwrap();
        tree.insert(orphan.piece_key(b"gone", 0), &b"stale"[..]).unwrap();
        tree.insert(orphan.piece_key(b"gone", 1), &b"stale"[..]).unwrap();
        assert_eq!(sweep(&tree).unwrap(), 3);
        assert_eq!(piece_count(&tree), 3);
        assert_eq!(read(&tree, b"live"), Some(live));
    }
}
