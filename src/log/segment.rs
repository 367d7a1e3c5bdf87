//! Segment files: naming, creation (pre-sized and zero-filled), and the set of segments
//! that readers map.
//!
//! A segment is named `<id>.seg` with the id as 20 decimal digits, so names sort like ids.
//! A segment under construction is `<id>.seg.tmp`; recovery removes such files.
//!
//! Architecture Invariant: a file named `<id>.seg` always has a durable, valid header. The
//! header is written and synced while the file still has its temporary name, and the rename
//! is followed by a directory sync before anything in the segment is acknowledged.

use crate::error::{Error, Result};
use crate::format::{SegmentHeader, encode_header};
use crate::storage::{Mapped, Storage, StorageFile, read_exact_at};
use crate::sync::{OnceLock, RwLock};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The file name of segment `id`.
pub fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The temporary name of segment `id` while it is prepared.
pub fn temp_name(id: u64) -> String {
    format!("{id:020}.seg.tmp")
}

/// The segment id in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// True for leftovers of an interrupted segment creation or compaction.
pub fn is_temp_name(name: &str) -> bool {
    name.ends_with(".seg.tmp")
}

const ZERO_CHUNK: usize = 1 << 20;
/// Bytes of zeros written to a new segment between two syncs.
const ZERO_SYNC_STEP: u64 = 1 << 20;

/// Creates `<id>.seg.tmp` of `len` bytes, all written as zeros (so later overwrites need no
/// metadata update), and syncs it: every `ZERO_SYNC_STEP` bytes, and at the end. The
/// header is written later, when the first sequence number is known.
pub fn prepare_file(storage: &dyn Storage, id: u64, len: u64) -> Result<Arc<dyn StorageFile>> {
    let name = temp_name(id);
    let path = storage.path().join(&name);
    let file: Arc<dyn StorageFile> = match storage.create(&name) {
        Ok(f) => Arc::from(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Left by a writer that stopped before using it: start over.
            storage
                .remove(&name)
                .map_err(|e| Error::io("remove stale temporary segment", &path, e))?;
            Arc::from(
                storage
                    .create(&name)
                    .map_err(|e| Error::io("create segment", &path, e))?,
            )
        }
        Err(e) => return Err(Error::io("create segment", &path, e)),
    };
    match fill_and_sync(&*file, len) {
        Ok(()) => Ok(file),
        Err((op, e)) => {
            // A half-made file holds space a full disk needs back; recovery would remove it
            // too, but only at the next open.
            let _ = storage.remove(&name);
            Err(Error::io(op, &path, e))
        }
    }
}

/// Writes `len` bytes of zeros and syncs them. Zeros go out in pieces, each synced before
/// the next is written: left to accumulate, a whole segment of dirty zeros is written back
/// in one burst, and every sync of the active segment issued meanwhile waits behind it.
fn fill_and_sync(file: &dyn StorageFile, len: u64) -> Result<(), (&'static str, std::io::Error)> {
    let mut at = 0;
    while at < len {
        let end = (at + ZERO_SYNC_STEP).min(len);
        zero_fill(file, at, end).map_err(|e| ("zero-fill segment", e))?;
        if end < len {
            file.sync_data().map_err(|e| ("sync new segment", e))?;
        }
        at = end;
    }
    file.sync_data().map_err(|e| ("sync new segment", e))
}

/// Writes zeros over `start..end`.
pub fn zero_fill(file: &dyn StorageFile, start: u64, end: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK.min((end.saturating_sub(start)) as usize)];
    let mut at = start;
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Turns a prepared temporary file into segment `header.segment_id`: writes and syncs the
/// header, renames the file to its final name and syncs the directory. Only then may a
/// record in it be acknowledged.
pub fn install(
    storage: &dyn Storage,
    file: &dyn StorageFile,
    header: &SegmentHeader,
) -> Result<()> {
    let id = header.segment_id;
    let path = storage.path().join(temp_name(id));
    file.write_all_at(&encode_header(header), 0)
        .map_err(|e| Error::io("write segment header", &path, e))?;
    file.sync_data()
        .map_err(|e| Error::io("sync segment header", &path, e))?;
    storage
        .rename(&temp_name(id), &segment_name(id))
        .map_err(|e| Error::io("rename new segment", &path, e))?;
    storage
        .sync_dir()
        .map_err(|e| Error::io("sync directory", storage.path(), e))?;
    Ok(())
}

/// One segment as readers see it.
#[derive(Debug)]
pub struct SegmentSlot {
    /// The segment's id.
    pub id: u64,
    /// Its file.
    pub file: Arc<dyn StorageFile>,
    /// Set once the segment is sealed: the length of its valid data (header included).
    sealed_len: OnceLock<u64>,
    /// The map of `0..sealed_len`, made at first read.
    map: OnceLock<Mapped>,
}

impl SegmentSlot {
    /// A segment that is still being appended.
    pub fn active(id: u64, file: Arc<dyn StorageFile>) -> SegmentSlot {
        SegmentSlot {
            id,
            file,
            sealed_len: OnceLock::new(),
            map: OnceLock::new(),
        }
    }

    /// A sealed segment with `len` bytes of valid data.
    pub fn sealed(
        id: u64,
        file: Arc<dyn StorageFile>,
        len: u64,
        map: Option<Mapped>,
    ) -> SegmentSlot {
        let slot = SegmentSlot::active(id, file);
        let _ = slot.sealed_len.set(len);
        if let Some(map) = map {
            let _ = slot.map.set(map);
        }
        slot
    }

    /// Marks the segment sealed with `len` bytes of valid data; it is never written again.
    pub fn seal(&self, len: u64) {
        let _ = self.sealed_len.set(len);
    }

    /// The valid length, if sealed.
    pub fn sealed_len(&self) -> Option<u64> {
        self.sealed_len.get().copied()
    }

    /// Reads `len` bytes at `offset`: from the map when sealed, with `pread` otherwise.
    pub fn read(&self, storage: &dyn Storage, offset: u64, len: usize) -> Result<SegmentBytes> {
        let path = || storage.path().join(segment_name(self.id));
        if let Some(sealed_len) = self.sealed_len() {
            if offset + len as u64 > sealed_len {
                return Err(Error::Corrupt {
                    file: path(),
                    offset,
                    reason: format!("read of {len} bytes past the segment's data end {sealed_len}"),
                });
            }
            let map = match self.map.get() {
                Some(m) => m.clone(),
                None => {
                    // SAFETY: the segment is sealed (`sealed_len` is set only by `seal` and
                    // `sealed`): its bytes `0..sealed_len` are never written, truncated or
                    // shrunk again; compaction removes the file whole, which leaves the map
                    // readable.
                    #[allow(unsafe_code, reason = "maps a sealed segment, which never changes")]
                    let mapped = unsafe { self.file.map(sealed_len) };
                    let m = mapped.map_err(|e| Error::io("map segment", path(), e))?;
                    self.map.get_or_init(|| m).clone()
                }
            };
            return Ok(SegmentBytes::Mapped {
                map,
                start: offset as usize,
                len,
            });
        }
        let mut buf = vec![0u8; len];
        read_exact_at(&*self.file, &mut buf, offset)
            .map_err(|e| Error::io("read segment", path(), e))?;
        Ok(SegmentBytes::Owned(buf))
    }
}

/// Bytes read from a segment: a slice of a map, or a copy.
#[derive(Debug)]
pub enum SegmentBytes {
    /// Part of a sealed segment's map.
    Mapped {
        /// The map.
        map: Mapped,
        /// First byte.
        start: usize,
        /// Length.
        len: usize,
    },
    /// Read with `pread` from the active segment.
    Owned(Vec<u8>),
}

impl std::ops::Deref for SegmentBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SegmentBytes::Mapped { map, start, len } => &map[*start..*start + *len],
            SegmentBytes::Owned(v) => v,
        }
    }
}

/// Every segment of the log, by id, shared by the writer and readers.
#[derive(Debug, Default)]
pub struct SegmentSet {
    slots: RwLock<BTreeMap<u64, Arc<SegmentSlot>>>,
}

impl SegmentSet {
    /// Adds a segment.
    pub fn insert(&self, slot: Arc<SegmentSlot>) {
        self.slots.write().insert(slot.id, slot);
    }

    /// Forgets a segment (its file was removed).
    pub fn remove(&self, id: u64) {
        self.slots.write().remove(&id);
    }

    /// The segment with `id`.
    pub fn get(&self, id: u64) -> Option<Arc<SegmentSlot>> {
        self.slots.read().get(&id).cloned()
    }

    /// Every segment, in id order.
    pub fn all(&self) -> Vec<Arc<SegmentSlot>> {
        self.slots.read().values().cloned().collect()
    }
}

/// The header of a segment of directory `directory_id` created now; `floors` are the event
/// and job id floors.
pub fn new_header(
    id: u64,
    first_seq: u64,
    created_ms: i64,
    floors: (u64, u64),
    directory_id: u128,
) -> SegmentHeader {
    SegmentHeader {
        format_version: crate::format::FORMAT_VERSION,
        segment_id: id,
        first_seq,
        created_ms,
        flags: 0,
        event_id_floor: floors.0,
        job_id_floor: floors.1,
        directory_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name(&temp_name(42)), None);
        assert!(is_temp_name(&temp_name(42)));
    }
}
