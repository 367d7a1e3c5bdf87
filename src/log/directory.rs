//! The directory's manifest (docs/FORMAT.md, "Manifest"): which segments the directory holds,
//! its id, and the settings that decide what is live.
//!
//! Protocol: a new segment is listed right after it is installed and before any record in it
//! is written; a segment compaction empties is unlisted before its file is removed. So every
//! segment holding records is listed, a listed segment that is missing is lost synced data,
//! an unlisted segment below the last listed one is a leftover of a removal, and an unlisted
//! one above it holds no records yet.

use crate::error::{Error, Result};
use crate::format::{
    MANIFEST_FILE, MANIFEST_TEMP_FILE, MAX_MANIFEST_LEN, Manifest, decode_manifest, encode_manifest,
};
use crate::storage::{Storage, read_exact_at};
use std::hash::{BuildHasher, Hasher};
use std::io;

/// Reads the manifest; `None` when the directory has none (format 1, or new).
pub(crate) fn read_manifest(storage: &dyn Storage) -> Result<Option<Manifest>> {
    let path = storage.path().join(MANIFEST_FILE);
    let file = match storage.open(MANIFEST_FILE) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open manifest", &path, e)),
    };
    let len = file
        .len()
        .map_err(|e| Error::io("stat manifest", &path, e))?;
    if len > MAX_MANIFEST_LEN as u64 {
        return Err(Error::Corrupt {
            file: path,
            offset: 0,
            reason: format!("manifest is {len} bytes, more than any manifest ({MAX_MANIFEST_LEN})"),
        });
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact_at(&*file, &mut bytes, 0).map_err(|e| Error::io("read manifest", &path, e))?;
    decode_manifest(&bytes)
        .map(Some)
        .map_err(|reason| Error::Corrupt {
            file: path,
            offset: 0,
            reason,
        })
}

/// Replaces the manifest with `manifest`: written under a temporary name, synced, renamed
/// over the old one, and the directory synced. A crash leaves the old manifest or this one.
pub(crate) fn write_manifest(storage: &dyn Storage, manifest: &Manifest) -> Result<()> {
    let path = storage.path().join(MANIFEST_TEMP_FILE);
    let io = |op, e| Error::io(op, &path, e);
    let bytes = encode_manifest(manifest);
    let file = match storage.create(MANIFEST_TEMP_FILE) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            storage
                .remove(MANIFEST_TEMP_FILE)
                .map_err(|e| io("remove stale manifest", e))?;
            storage
                .create(MANIFEST_TEMP_FILE)
                .map_err(|e| io("create manifest", e))?
        }
        Err(e) => return Err(io("create manifest", e)),
    };
    file.write_all_at(&bytes, 0)
        .map_err(|e| io("write manifest", e))?;
    file.sync_data().map_err(|e| io("sync manifest", e))?;
    drop(file);
    storage
        .rename(MANIFEST_TEMP_FILE, MANIFEST_FILE)
        .map_err(|e| io("rename manifest", e))?;
    storage
        .sync_dir()
        .map_err(|e| Error::io("sync directory", storage.path(), e))
}

/// A new directory id: 128 bits from the process's random hasher keys, the time and the
/// process id. Not a secret, only unique: two directories never share one in practice.
pub(crate) fn new_directory_id() -> u128 {
    let mut id = 0u128;
    for round in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(round);
        h.write_u32(std::process::id());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        id = id << 64 | u128::from(h.finish());
    }
    id.max(1)
}

/// The manifest as the writer keeps it, and the way every change to it is made durable.
#[derive(Debug)]
pub(crate) struct Directory {
    manifest: crate::sync::Mutex<Manifest>,
}

impl Directory {
    pub fn new(manifest: Manifest) -> Directory {
        Directory {
            manifest: crate::sync::Mutex::new(manifest),
        }
    }

    /// The directory's id.
    pub fn id(&self) -> u128 {
        self.manifest.lock().directory_id
    }

    /// Lists segment `id` (newly installed) and makes that durable.
    pub fn add_segment(&self, storage: &dyn Storage, id: u64) -> Result<()> {
        self.change(storage, |m| {
            if let Err(at) = m.segments.binary_search(&id) {
                m.segments.insert(at, id);
            }
        })
    }

    /// Unlists segment `id` (about to be removed) and makes that durable.
    pub fn remove_segment(&self, storage: &dyn Storage, id: u64) -> Result<()> {
        self.change(storage, |m| m.segments.retain(|&s| s != id))
    }

    /// Applies `edit` and writes the result. The lock is held through the write, so changes
    /// reach the disk in the order they were made; on failure the old manifest stays in force
    /// (on disk and here).
    pub fn change(&self, storage: &dyn Storage, edit: impl FnOnce(&mut Manifest)) -> Result<()> {
        let mut current = self.manifest.lock();
        let mut next = current.clone();
        edit(&mut next);
        if next == *current {
            return Ok(());
        }
        next.generation = current.generation + 1;
        write_manifest(storage, &next)?;
        *current = next;
        Ok(())
    }
}
