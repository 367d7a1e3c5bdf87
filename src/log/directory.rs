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
    MANIFEST_FILE, MANIFEST_TEMP_FILE, MAX_MANIFEST_FILE_LEN, Manifest, ManifestFile,
    decode_manifest_file, encode_manifest, encode_manifest_file,
};
use crate::storage::{Storage, StorageFile, read_exact_at};
use std::hash::{BuildHasher, Hasher};
use std::io;

/// Reads the manifest; `None` when the directory has none (format 1, or new).
pub(crate) fn read_manifest(storage: &dyn Storage) -> Result<Option<Manifest>> {
    Ok(read_manifest_file(storage)?.map(|f| f.manifest))
}

/// Reads the manifest file: the manifest in force and where it is.
pub(crate) fn read_manifest_file(storage: &dyn Storage) -> Result<Option<ManifestFile>> {
    Ok(read_manifest_bytes(storage)?.map(|(_, file)| file))
}

/// Reads the manifest file: its bytes, and the manifest in force and where it is.
pub(crate) fn read_manifest_bytes(
    storage: &dyn Storage,
) -> Result<Option<(Vec<u8>, ManifestFile)>> {
    let path = storage.path().join(MANIFEST_FILE);
    let file = match storage.open(MANIFEST_FILE) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open manifest", &path, e)),
    };
    let len = file
        .len()
        .map_err(|e| Error::io("stat manifest", &path, e))?;
    if len > MAX_MANIFEST_FILE_LEN as u64 {
        return Err(Error::Corrupt {
            file: path,
            offset: 0,
            reason: format!(
                "manifest is {len} bytes, more than any manifest ({MAX_MANIFEST_FILE_LEN})"
            ),
        });
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact_at(&*file, &mut bytes, 0).map_err(|e| Error::io("read manifest", &path, e))?;
    match decode_manifest_file(&bytes) {
        Ok(file) => Ok(Some((bytes, file))),
        Err(reason) => Err(Error::Corrupt {
            file: path,
            offset: 0,
            reason,
        }),
    }
}

/// Writes a new manifest file holding `manifest`: under a temporary name, synced, renamed over
/// the old one, and the directory synced. A crash leaves the old file or this one.
fn write_manifest_file(storage: &dyn Storage, manifest: &Manifest) -> Result<()> {
    let path = storage.path().join(MANIFEST_TEMP_FILE);
    let io = |op, e| Error::io(op, &path, e);
    let bytes = encode_manifest_file(manifest);
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
    state: crate::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    manifest: Manifest,
    /// The open manifest file, the slot holding `manifest`, and the slot length.
    file: Box<dyn StorageFile>,
    slot: usize,
    slot_len: usize,
}

impl Directory {
    /// Makes `manifest` (its generation aside) the directory's manifest, durably: written
    /// into the free slot of the manifest file, or into a new file when there is none (or it
    /// is too small). Called at every open, so that what recovery read is durable before
    /// anything relies on it (after a failed sync the page cache may show a rewrite that
    /// never reached the disk).
    /// `current` is the manifest file as recovery read it (`None` when there is none).
    pub fn open(
        storage: &dyn Storage,
        current: Option<ManifestFile>,
        mut manifest: Manifest,
    ) -> Result<Directory> {
        let path = storage.path().join(MANIFEST_FILE);
        manifest.generation = current.as_ref().map_or(0, |c| c.manifest.generation) + 1;
        let state = match current {
            Some(c) => {
                let file = storage
                    .open(MANIFEST_FILE)
                    .map_err(|e| Error::io("open manifest", &path, e))?;
                let mut state = State {
                    manifest: c.manifest,
                    file,
                    slot: c.slot,
                    slot_len: c.slot_len,
                };
                state.write(storage, manifest)?;
                state
            }
            None => {
                write_manifest_file(storage, &manifest)?;
                let file = storage
                    .open(MANIFEST_FILE)
                    .map_err(|e| Error::io("open manifest", &path, e))?;
                let slot_len = file
                    .len()
                    .map_err(|e| Error::io("stat manifest", &path, e))?
                    as usize
                    / 2;
                State {
                    manifest,
                    file,
                    slot: 0,
                    slot_len,
                }
            }
        };
        Ok(Directory {
            state: crate::sync::Mutex::new(state),
        })
    }

    /// The directory's id.
    pub fn id(&self) -> u128 {
        self.state.lock().manifest.directory_id
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
    /// here (and on disk, unless the page cache says otherwise: see `open`).
    pub fn change(&self, storage: &dyn Storage, edit: impl FnOnce(&mut Manifest)) -> Result<()> {
        let mut state = self.state.lock();
        let mut next = state.manifest.clone();
        edit(&mut next);
        if next == state.manifest {
            return Ok(());
        }
        next.generation = state.manifest.generation + 1;
        state.write(storage, next)
    }
}

impl State {
    /// Writes `next` into the free slot, in place (no new disk space), and syncs it; or, when
    /// it does not fit, into a new file with larger slots.
    fn write(&mut self, storage: &dyn Storage, next: Manifest) -> Result<()> {
        let path = storage.path().join(MANIFEST_FILE);
        let mut bytes = encode_manifest(&next);
        if bytes.len() <= self.slot_len {
            let free = 1 - self.slot;
            bytes.resize(self.slot_len, 0);
            self.file
                .write_all_at(&bytes, (free * self.slot_len) as u64)
                .map_err(|e| Error::io("write manifest", &path, e))?;
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync manifest", &path, e))?;
            self.slot = free;
        } else {
            write_manifest_file(storage, &next)?;
            self.file = storage
                .open(MANIFEST_FILE)
                .map_err(|e| Error::io("open manifest", &path, e))?;
            self.slot_len =
                self.file
                    .len()
                    .map_err(|e| Error::io("stat manifest", &path, e))? as usize
                    / 2;
            self.slot = 0;
        }
        self.manifest = next;
        Ok(())
    }
}
