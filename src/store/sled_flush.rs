//! Flushing sled so that what it holds survives a power cut.
//!
//! sled 0.34 writes its log with `sync_file_range` on Linux. That call
//! persists neither the file's size and block allocation nor the contents
//! of the device's write cache, and sled never syncs the files under
//! `blobs/`, where it keeps values and nodes too large for its log. After a
//! power cut sled recovers its log only up to the first blob or segment
//! that did not reach the disk, and drops everything logged after it. Its
//! own `flush` is therefore not enough for a checkpoint, after which the
//! journal no longer holds the writes: [`SledFlush::flush`] also syncs the
//! log file, the blob files written since the last flush and the
//! directories that name them.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// sled's names for its log file and its blob directory.
const LOG_FILE: &str = "db";
const BLOB_DIR: &str = "blobs";

pub struct SledFlush {
    db: sled::Db,
    dir: PathBuf,
    /// Blob files synced by an earlier flush (sled never rewrites one).
    synced_blobs: HashSet<OsString>,
}

impl SledFlush {
    /// For the sled database `db` opened in `dir`.
    pub fn new(db: sled::Db, dir: &Path) -> Self {
        Self { db, dir: dir.to_owned(), synced_blobs: HashSet::new() }
    }

    /// Flushes sled and makes everything it has written durable.
    pub fn flush(&mut self) -> sled::Result<()> {
        self.db.flush()?;
        let blob_dir = self.dir.join(BLOB_DIR);
        let mut blobs = HashSet::new();
        for entry in std::fs::read_dir(&blob_dir).map_err(|e| context(e, "listing", &blob_dir))? {
            let name = entry.map_err(|e| context(e, "listing", &blob_dir))?.file_name();
            if !self.synced_blobs.contains(&name) {
                let path = blob_dir.join(&name);
                match File::open(&path).and_then(|blob| blob.sync_all()) {
                    // sled deleted it meanwhile: nothing refers to it any more.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    result => result.map_err(|e| context(e, "syncing", &path))?,
                }
            }
            blobs.insert(name);
        }
        self.synced_blobs = blobs;
        for path in [blob_dir, self.dir.join(LOG_FILE), self.dir.clone()] {
            File::open(&path).and_then(|file| file.sync_all()).map_err(|e| context(e, "syncing", &path))?;
        }
        Ok(())
    }
}

fn context(error: io::Error, doing: &str, path: &Path) -> sled::Error {
    sled::Error::Io(io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_a_database_with_blobs_and_remembers_the_blobs_it_synced() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut flush = SledFlush::new(db.clone(), dir.path());
        flush.flush().unwrap();
        assert!(flush.synced_blobs.is_empty());

        // Larger than a quarter of sled's 512 KiB segments: stored as a blob.
        db.insert(b"large", vec![7u8; 256 * 1024]).unwrap();
        flush.flush().unwrap();
        assert!(!flush.synced_blobs.is_empty(), "the value went to a blob file");
        let blob_names: HashSet<OsString> =
            std::fs::read_dir(dir.path().join(BLOB_DIR)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(flush.synced_blobs, blob_names);

        db.remove(b"large").unwrap();
        flush.flush().unwrap();
        drop((flush, db));
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        assert_eq!(db.get(b"large").unwrap(), None);
    }
}
