//! Deterministic tar archives: sorted entries, fixed owners and mtime, modes
//! taken from the entry (never from the builder's umask or clock).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub enum Content {
    Dir,
    File(PathBuf),
}

pub struct Entry {
    /// Path inside the archive, without a leading `/` or `./`.
    pub path: String,
    pub content: Content,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// Every directory and regular file under `dir`, sorted by path, as root-owned
/// entries under `prefix` (which may be empty) keeping their permission bits.
pub fn tree_entries(dir: &Path, prefix: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    if !prefix.is_empty() {
        entries.push(Entry { path: prefix.to_owned(), content: Content::Dir, mode: 0o755, uid: 0, gid: 0 });
    }
    walk(dir, dir, prefix, &mut entries)?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn walk(base: &Path, dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<()> {
    for item in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let item = item?;
        let path = item.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path.strip_prefix(base)?.to_string_lossy().into_owned();
        let name = if prefix.is_empty() { rel } else { format!("{prefix}/{rel}") };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            out.push(Entry { path: name, content: Content::Dir, mode, uid: 0, gid: 0 });
            walk(base, &path, prefix, out)?;
        } else if meta.is_file() {
            out.push(Entry { path: name, content: Content::File(path), mode, uid: 0, gid: 0 });
        } else {
            anyhow::bail!("{} is neither a file nor a directory", path.display());
        }
    }
    Ok(())
}

/// Writes `entries` in the given order as a POSIX (ustar) tar with mtime
/// `epoch`, and returns the writer.
pub fn write_tar<W: Write>(entries: &[Entry], epoch: i64, out: W) -> Result<W> {
    let mut tar = tar::Builder::new(out);
    for e in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(e.mode);
        header.set_uid(e.uid);
        header.set_gid(e.gid);
        header.set_username(if e.uid == 0 { "root" } else { "" })?;
        header.set_groupname(if e.gid == 0 { "root" } else { "" })?;
        header.set_mtime(epoch.max(0) as u64);
        match &e.content {
            Content::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, format!("{}/", e.path), std::io::empty())?;
            }
            Content::File(src) => {
                let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                tar.append_data(&mut header, &e.path, data.as_slice())?;
            }
        }
    }
    Ok(tar.into_inner()?)
}
