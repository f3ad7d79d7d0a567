//! The data directory's store format: which on-disk layout its values use.
//!
//! The number is kept in the meta tree in the clear (it describes the layout,
//! not content, and must be readable before any key is checked). A version of
//! peat-sidecar opens data directories of its own format and older ones, marks
//! them with its own before writing, and refuses a newer format by name instead
//! of misreading values it does not know as corrupt documents.

use std::path::Path;

use super::StoreError;

/// The format this version writes:
/// 1. every value whole in sled (written without a marker);
/// 2. values longer than 6 KiB in pieces (`pieces.rs`).
pub const CURRENT: u32 = 2;
/// The format of a data directory that holds data but no marker.
const UNMARKED: u32 = 1;
const KEY: &[u8] = b"format";

/// The stored format, if the marker is there.
fn stored(meta: &sled::Tree) -> Result<Option<u32>, StoreError> {
    let Some(value) = meta.get(KEY)? else { return Ok(None) };
    let bytes = <[u8; 4]>::try_from(value.as_ref()).map_err(|_| StoreError::Corrupt {
        key: "meta/format".into(),
        reason: format!("a format marker of {} bytes, not 4", value.len()),
    })?;
    Ok(Some(u32::from_be_bytes(bytes)))
}

/// The data directory's stored format, for [`mark`]; fails if it is newer
/// than [`CURRENT`]. Reads only: call it before anything is written.
pub fn check(path: &Path, meta: &sled::Tree) -> Result<Option<u32>, StoreError> {
    match stored(meta)? {
        Some(found) if found > CURRENT => {
            Err(StoreError::NewerFormat { path: path.to_owned(), found, supported: CURRENT })
        }
        stored => Ok(stored),
    }
}

/// Marks the data directory, whose format [`check`] returned as `stored`,
/// with [`CURRENT`] (durable with sled's next flush). `had_data` says whether
/// the store existed before this open: an unmarked one is then of format 1,
/// and its upgrade is logged.
pub fn mark(meta: &sled::Tree, stored: Option<u32>, had_data: bool) -> Result<(), StoreError> {
    if stored == Some(CURRENT) {
        return Ok(());
    }
    let found = stored.unwrap_or(if had_data { UNMARKED } else { CURRENT });
    if found < CURRENT {
        tracing::info!(
            from = found,
            to = CURRENT,
            "the data directory's store format is upgraded: versions of peat-sidecar that read only format \
             {found} cannot use it any more"
        );
    }
    meta.insert(KEY, &CURRENT.to_be_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_tree;

    #[test]
    fn a_new_or_unmarked_store_is_marked_with_the_current_format() {
        for had_data in [false, true] {
            let (dir, meta) = temp_tree();
            let found = check(dir.path(), &meta).unwrap();
            mark(&meta, found, had_data).unwrap();
            assert_eq!(stored(&meta).unwrap(), Some(CURRENT));
        }
    }

    #[test]
    fn a_newer_format_is_refused_by_number_and_left_alone() {
        let (dir, meta) = temp_tree();
        meta.insert(KEY, &(CURRENT + 1).to_be_bytes()).unwrap();
        let error = check(dir.path(), &meta).unwrap_err().to_string();
        assert!(error.contains(&format!("store format {}", CURRENT + 1)), "{error}");
        assert!(error.contains(&format!("reads formats up to {CURRENT}")), "{error}");
        assert_eq!(stored(&meta).unwrap(), Some(CURRENT + 1));
    }

    #[test]
    fn a_malformed_marker_is_corrupt() {
        let (dir, meta) = temp_tree();
        meta.insert(KEY, b"2").unwrap();
        assert!(matches!(check(dir.path(), &meta), Err(StoreError::Corrupt { .. })));
    }
}
