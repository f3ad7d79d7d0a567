//! The write-ahead journal: where the store's writes become durable.
//!
//! Each group of writes is appended as one record and synced before it is
//! applied to sled; sled itself is flushed only at checkpoints (a full
//! journal, a direct sled write that must be durable, shutdown), after which
//! the journal starts over. At open, the records since the last checkpoint
//! are applied again in order: every key they touch ends with its last
//! journaled value, whatever part of them sled had persisted on its own.
//!
//! The file is zero-filled ahead of its records, so a sync writes data only:
//! no file size or block allocation, which would cost a file-system journal
//! commit per sync. Layout: a header (magic, sequence number of the first
//! record), then records of payload length (u32 LE), CRC-32 of sequence number
//! and payload (u32 LE), sequence number (u64 LE) and payload. Reading stops
//! at the first record that is cut short, fails its CRC or does not carry the
//! next sequence number: a torn tail, or the zeros and stale records of an
//! earlier generation behind the current one.
//!
//! Only the last record can be torn: a record is appended after the one
//! before it is synced. So a whole record of the current generation found
//! behind the place reading stopped means a synced record was damaged
//! later, and replaying only the records before it would silently drop
//! acknowledged writes: such a journal is refused instead.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"peatjnl1";
const HEADER_BYTES: u64 = 16;
const RECORD_HEADER_BYTES: usize = 16;
/// The file grows by this many zeroed bytes at a time...
const GROWTH_BYTES: u64 = 1 << 20;
/// ...up to this size; then the store checkpoints and the journal starts over.
pub(super) const CAPACITY_BYTES: u64 = 16 << 20;

pub struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes of the file: the header, records, then zeros or stale records.
    len: u64,
    /// Where the next record goes.
    end: u64,
    next_seq: u64,
    encoded: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    // The cause is part of the message, not a `source`: it would be printed twice.
    #[error("journal {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("journal {0}: not a peat-sidecar journal (unknown header)")]
    Foreign(PathBuf),
    #[error(
        "journal {path}: record {seq} at byte {offset} is damaged, but record {later_seq} at byte \
         {later_offset} was written after it; replaying would lose acknowledged writes, so the \
         store does not open (moved aside, the journal is not replayed: writes journaled since \
         the last checkpoint may then be lost)"
    )]
    Damaged { path: PathBuf, seq: u64, offset: u64, later_seq: u64, later_offset: u64 },
}

impl Journal {
    /// Opens (or creates) the journal at `path`, with the payloads of the
    /// records written since its last [`Self::restart`], in order.
    pub fn open(path: &Path) -> Result<(Self, Vec<Vec<u8>>), JournalError> {
        let io_error = |error| JournalError::Io { path: path.to_owned(), error };
        // Owner-only, like the data directory: records hold document content.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        let mut journal =
            Self { file, path: path.to_owned(), len, end: HEADER_BYTES, next_seq: 1, encoded: Vec::new() };
        let mut header = [0u8; HEADER_BYTES as usize];
        if len >= HEADER_BYTES {
            journal.file.read_exact_at(&mut header, 0).map_err(io_error)?;
        }
        if header == [0u8; HEADER_BYTES as usize] {
            // New, or its creation was cut short before the header was
            // synced: nothing can have been journaled yet.
            journal.restart()?;
            if let Some(dir) = path.parent() {
                // The file's directory entry must be durable before any record is.
                File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_error)?;
            }
            return Ok((journal, Vec::new()));
        }
        if &header[..8] != MAGIC {
            return Err(JournalError::Foreign(path.to_owned()));
        }
        journal.next_seq = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
        let generation_start = journal.next_seq;
        // About the journal's capacity (more only after a record larger than
        // that), and searched byte by byte if damaged: read it at once.
        let mut contents = vec![0u8; len as usize];
        journal.file.read_exact_at(&mut contents, 0).map_err(io_error)?;
        let mut records = Vec::new();
        let stop = loop {
            match record_at(&contents, journal.end) {
                Some(record) if record.seq == journal.next_seq && record.is_whole() => {
                    journal.end += record.stored_len();
                    journal.next_seq += 1;
                    records.push(record.payload.to_vec());
                }
                stop => break stop,
            }
        };
        // After a checkpoint the records of the generation before follow;
        // anything else (zeros, a torn record) is searched behind.
        let ends_at_the_previous_generation = stop.is_some_and(|r| r.is_whole() && r.seq < generation_start);
        if !ends_at_the_previous_generation
            && let Some((later_offset, later_seq)) = journal.find_later_record(&contents)
        {
            return Err(JournalError::Damaged {
                path: path.to_owned(),
                seq: journal.next_seq,
                offset: journal.end,
                later_seq,
                later_offset,
            });
        }
        Ok((journal, records))
    }

    /// The offset and sequence number of the first whole record behind
    /// `self.end` in the file's `contents` that belongs after the records
    /// read, if any. Every byte offset is tried, since the damage may have
    /// hit a record's length.
    fn find_later_record(&self, contents: &[u8]) -> Option<(u64, u64)> {
        (self.end + 1..contents.len() as u64).find_map(|at| {
            let record = record_at(contents, at)?;
            // No more records than headers can follow; most offsets fail here.
            let most_records_left = (contents.len() as u64 - at) / RECORD_HEADER_BYTES as u64;
            let plausible = record.seq >= self.next_seq && record.seq - self.next_seq <= most_records_left;
            (plausible && record.is_whole()).then_some((at, record.seq))
        })
    }

    /// Whether a record of `payload_len` bytes fits before the journal must
    /// start over. An empty journal takes a record of any size.
    pub fn has_room(&self, payload_len: usize) -> bool {
        self.end == HEADER_BYTES || self.end + (RECORD_HEADER_BYTES + payload_len) as u64 <= CAPACITY_BYTES
    }

    /// Bytes of the records appended since the last [`Self::restart`].
    pub fn record_bytes(&self) -> u64 {
        self.end - HEADER_BYTES
    }

    /// Appends a record and syncs it to disk. On error nothing is appended
    /// and the call can be repeated.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), JournalError> {
        let io_error = |error| JournalError::Io { path: self.path.clone(), error };
        let record_end = self.end + (RECORD_HEADER_BYTES + payload.len()) as u64;
        if record_end > self.len {
            let grown = record_end.next_multiple_of(GROWTH_BYTES);
            let zeros = vec![0u8; (grown - self.len) as usize];
            self.file.write_all_at(&zeros, self.len).map_err(io_error)?;
            self.len = grown;
        }
        self.encoded.clear();
        self.encoded.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.encoded.extend_from_slice(&record_crc(self.next_seq, payload).to_le_bytes());
        self.encoded.extend_from_slice(&self.next_seq.to_le_bytes());
        self.encoded.extend_from_slice(payload);
        self.file.write_all_at(&self.encoded, self.end).map_err(io_error)?;
        self.file.sync_data().map_err(io_error)?;
        self.end = record_end;
        self.next_seq += 1;
        Ok(())
    }

    /// Starts over once everything journaled is durable elsewhere: the
    /// records before are no longer read at open.
    pub fn restart(&mut self) -> Result<(), JournalError> {
        let io_error = |error| JournalError::Io { path: self.path.clone(), error };
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&self.next_seq.to_le_bytes());
        self.file.write_all_at(&header, 0).map_err(io_error)?;
        self.file.sync_data().map_err(io_error)?;
        self.len = self.len.max(HEADER_BYTES);
        self.end = HEADER_BYTES;
        Ok(())
    }
}

/// A record as found in the file, whole or not.
struct StoredRecord<'a> {
    crc: u32,
    seq: u64,
    payload: &'a [u8],
}

impl StoredRecord<'_> {
    fn is_whole(&self) -> bool {
        record_crc(self.seq, self.payload) == self.crc
    }

    fn stored_len(&self) -> u64 {
        (RECORD_HEADER_BYTES + self.payload.len()) as u64
    }
}

/// The record at byte `at` of the file's `contents`, if one fits there.
fn record_at(contents: &[u8], at: u64) -> Option<StoredRecord<'_>> {
    let rest = contents.get(usize::try_from(at).ok()?..)?;
    let header = rest.get(..RECORD_HEADER_BYTES)?;
    let payload_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let payload = rest[RECORD_HEADER_BYTES..].get(..payload_len)?;
    Some(StoredRecord { crc, seq, payload })
}

fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(path: &Path) -> (Journal, Vec<Vec<u8>>) {
        Journal::open(path).expect("opening the journal")
    }

    #[test]
    fn records_are_read_back_in_order_until_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, records) = reopen(&path);
        assert!(records.is_empty());
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "owner-only");
        // The second record crosses a growth step.
        let large = vec![7u8; GROWTH_BYTES as usize + 10];
        for payload in [&b"one"[..], &large, b""] {
            journal.append(payload).unwrap();
        }
        drop(journal);
        let (mut journal, records) = reopen(&path);
        assert_eq!(records, vec![b"one".to_vec(), large, Vec::new()]);

        // After a restart the old records are stale, though still in the file.
        journal.restart().unwrap();
        journal.append(b"two").unwrap();
        drop(journal);
        let (mut journal, records) = reopen(&path);
        assert_eq!(records, vec![b"two".to_vec()]);
        journal.restart().unwrap();
        drop(journal);
        assert!(reopen(&path).1.is_empty());
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = reopen(&path);
        for payload in [b"first", b"secnd", b"third"] {
            journal.append(payload).unwrap();
        }
        let third_at = journal.end - (RECORD_HEADER_BYTES + 5) as u64;
        drop(journal);

        // A flipped payload byte of the third record.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", third_at + RECORD_HEADER_BYTES as u64).unwrap();
        let (mut journal, records) = reopen(&path);
        assert_eq!(records, vec![b"first".to_vec(), b"secnd".to_vec()]);
        // The next record replaces the corrupt one.
        journal.append(b"again").unwrap();
        drop(journal);
        assert_eq!(reopen(&path).1, vec![b"first".to_vec(), b"secnd".to_vec(), b"again".to_vec()]);

        // A file cut inside a record.
        file.set_len(third_at + 3).unwrap();
        assert_eq!(reopen(&path).1, vec![b"first".to_vec(), b"secnd".to_vec()]);
    }

    #[test]
    fn a_damaged_record_with_records_behind_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = reopen(&path);
        let mut offsets = Vec::new();
        for payload in [b"first", b"secnd", b"third"] {
            offsets.push(journal.end);
            journal.append(payload).unwrap();
        }
        drop(journal);
        let pristine = std::fs::read(&path).unwrap();

        // A flipped payload byte, a record length and a sequence number of
        // the second record: all found by the third record behind it.
        for damaged_at in [RECORD_HEADER_BYTES as u64 + 2, 0, 9] {
            let mut damaged = pristine.clone();
            damaged[(offsets[1] + damaged_at) as usize] ^= 0x5A;
            std::fs::write(&path, &damaged).unwrap();
            match Journal::open(&path) {
                Err(JournalError::Damaged { seq: 2, offset, later_seq: 3, later_offset, .. }) => {
                    assert_eq!((offset, later_offset), (offsets[1], offsets[2]));
                }
                Err(other) => panic!("damage at byte {damaged_at} of record 2: {other}"),
                Ok((_, records)) => panic!("damage at byte {damaged_at} of record 2 opened with {records:?}"),
            }
            assert_eq!(std::fs::read(&path).unwrap(), damaged, "a refused journal is left as it was");
        }
        let message = Journal::open(&path).err().unwrap().to_string();
        let expected = format!("record 2 at byte {} is damaged, but record 3 at byte {}", offsets[1], offsets[2]);
        assert!(message.contains(&expected), "{message}");

        // Zeroed, the second record looks like the end of the file's records.
        let mut zeroed = pristine.clone();
        zeroed[offsets[1] as usize..offsets[2] as usize].fill(0);
        std::fs::write(&path, &zeroed).unwrap();
        assert!(matches!(Journal::open(&path), Err(JournalError::Damaged { seq: 2, .. })));
    }

    #[test]
    fn a_torn_record_before_an_earlier_generation_is_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = reopen(&path);
        for payload in [b"old-1", b"old-2", b"old-3", b"old-4"] {
            journal.append(payload).unwrap();
        }
        journal.restart().unwrap();
        journal.append(b"new-five").unwrap();
        let torn_at = journal.end;
        journal.append(b"new-six").unwrap();
        drop(journal);
        // The last record torn: its header and a part of its payload written.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0u8; 4], torn_at + RECORD_HEADER_BYTES as u64 + 2).unwrap();
        assert_eq!(reopen(&path).1, vec![b"new-five".to_vec()]);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(Journal::open(&path), Err(JournalError::Foreign(_))));
    }

    #[test]
    fn a_journal_whose_creation_was_cut_short_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        for created in [&b""[..], &[0u8; 7], &[0u8; 4096]] {
            std::fs::write(&path, created).unwrap();
            let (mut journal, records) = reopen(&path);
            assert!(records.is_empty());
            journal.append(b"first").unwrap();
            drop(journal);
            assert_eq!(reopen(&path).1, vec![b"first".to_vec()]);
        }
    }
}
