//! Recovery: scan every segment in order, verify every frame, hand each record to the layer
//! above, and cut a torn tail off the last segment.
//!
//! The rules (docs/FORMAT.md, "Recovery"):
//! - A zero length is the end of a segment's data. In a sealed segment (any but the last)
//!   every byte after it must be zero, and every frame before it must be valid: anything
//!   else is corruption, reported with the file and offset.
//! - In the last segment, the first frame that fails to decode starts the *torn tail* if no
//!   valid frame of a later sync group follows it. Records of a sync group are written
//!   together and synced together, and a group is written only after the previous one was
//!   synced; so bytes lost from the last group are a normal crash, while a bad frame followed
//!   by a later group's frame means synced data went bad: corruption.
//! - The torn tail is overwritten with zeros and synced before anything new is appended, so
//!   no stale frame can ever line up behind a new one.
//! - The last segment's valid frames are rewritten and synced before anything new is
//!   appended: after a failed sync they may exist only in the page cache.

use super::Position;
use super::directory::{read_manifest, read_manifest_file};
use super::segment::{SegmentSlot, is_temp_name, parse_segment_name, segment_name, zero_fill};
use crate::error::{Error, Result};
use crate::format::{
    FRAME_HEADER_LEN, FrameError, HeaderError, MANIFEST_FILE, MANIFEST_TEMP_FILE, MAX_FRAME_LEN,
    MAX_PAYLOAD_LEN, MAX_SEGMENT_HEADER_LEN, Manifest, ManifestFile, Record, RecordKind,
    SegmentHeader, decode_frame, decode_header, decode_seal, get_u16, get_u32, get_u64,
};
use crate::storage::{Storage, StorageFile, read_exact_at};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What recovery found and did. A torn tail is a normal outcome of a crash, not an error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments scanned.
    pub segments: usize,
    /// Records handed to the layer above.
    pub records: u64,
    /// Bytes of valid frames (headers excluded).
    pub record_bytes: u64,
    /// Bytes of the torn tail cut from the last segment (0 after a clean shutdown).
    pub torn_bytes: u64,
    /// Where the torn tail began: segment id and offset.
    pub torn_at: Option<(u64, u64)>,
    /// Leftover files removed: temporary files, and segments a compaction had unlisted but
    /// not yet removed when it stopped.
    pub removed_temp_files: Vec<String>,
    /// The largest sequence number found (0 for an empty log).
    pub last_seq: u64,
    /// The largest event id floor of any segment header: ids below it were allocated.
    pub event_id_floor: u64,
    /// The largest job id floor of any segment header.
    pub job_id_floor: u64,
    /// The directory's manifest (format 2), as read before the scan.
    pub manifest: Option<Manifest>,
}

/// The state recovery leaves for the writer.
pub(crate) struct Recovered {
    pub sealed: Vec<Arc<SegmentSlot>>,
    /// The last segment, its header, where appending continues and how many records it
    /// holds, unless it is sealed
    /// (then it is the last of `sealed`, and a new segment starts at `last_seq + 1`).
    pub active: Option<(Arc<SegmentSlot>, SegmentHeader, u64, u64)>,
    pub report: Recovery,
    /// The manifest file as read before the scan, and where its manifest is.
    pub manifest_file: Option<ManifestFile>,
}

/// How many times a reader re-reads a manifest that changed under it before giving up.
const MANIFEST_RETRIES: u32 = 100;

/// The error for a segment header that does not decode.
pub(crate) fn header_error(path: PathBuf, e: HeaderError) -> Error {
    match e {
        HeaderError::Version { found } => Error::UnsupportedVersion { file: path, found },
        e => Error::Corrupt {
            file: path,
            offset: 0,
            reason: e.to_string(),
        },
    }
}

/// Scans the directory. With `read_only`, nothing is removed or written: a torn tail is
/// reported and skipped, and leftover files are left alone. Segments above the last one the
/// manifest lists must hold no record (a reader's snapshot shows them empty: they were
/// installed after the manifest it read).
pub(crate) fn recover(
    storage: &dyn Storage,
    read_only: bool,
    visit: &mut dyn FnMut(Position, &Record<'_>) -> Result<()>,
) -> Result<Recovered> {
    let dir = storage.path().to_path_buf();
    if !read_only {
        // After a failed directory sync, the directory may show creates, renames and
        // removals that are not durable (a manifest renamed into place, say). Syncing it
        // first makes what recovery sees the state a crash can no longer undo.
        storage
            .sync_dir()
            .map_err(|e| Error::io("sync directory", &dir, e))?;
    }
    let manifest_file = read_manifest_file(storage)?;
    let manifest = manifest_file.as_ref().map(|f| f.manifest.clone());
    let names = storage
        .list()
        .map_err(|e| Error::io("list directory", &dir, e))?;
    let mut report = Recovery {
        manifest: manifest.clone(),
        ..Recovery::default()
    };
    let mut present: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    present.sort_unstable();
    let mut leftovers: Vec<String> = names
        .iter()
        .filter(|n| is_temp_name(n) || *n == MANIFEST_TEMP_FILE)
        .cloned()
        .collect();
    // The segments to scan, in order; `listed` is how many of them the manifest lists (the
    // rest were installed after it was written, and may hold no record).
    let (ids, listed) = match &manifest {
        None => (present.clone(), present.len()),
        Some(m) => {
            let last_listed = m.segments.last().copied().unwrap_or(0);
            if !read_only
                && let Some(&missing) = m
                    .segments
                    .iter()
                    .find(|id| present.binary_search(id).is_err())
            {
                return Err(missing_segment(&dir, missing));
            }
            for &id in &present {
                if id < last_listed && m.segments.binary_search(&id).is_err() {
                    // A leftover of a removal, unless it is another directory's segment.
                    check_not_foreign(storage, id, m)?;
                    leftovers.push(segment_name(id));
                }
            }
            let mut ids = m.segments.clone();
            ids.extend(present.iter().filter(|&&id| id > last_listed));
            (ids, m.segments.len())
        }
    };
    if !read_only {
        leftovers.sort();
        for name in leftovers {
            storage
                .remove(&name)
                .map_err(|e| Error::io("remove leftover file", dir.join(&name), e))?;
            report.removed_temp_files.push(name);
        }
        if !report.removed_temp_files.is_empty() {
            storage
                .sync_dir()
                .map_err(|e| Error::io("sync directory", &dir, e))?;
        }
    }

    let mut sealed = Vec::new();
    let mut active = None;
    let mut last_seq = 0u64;
    let mut seen_v2 = None;
    let mut manifest_now = manifest.clone();
    // Segments installed after the manifest was written are opened first, so that a file
    // that cannot be one (a FIFO, a dangling link) is named before anything else is said.
    for &id in &ids[listed..] {
        if let Err(e) = storage.open(&segment_name(id))
            && !(read_only && e.kind() == io::ErrorKind::NotFound)
        {
            return Err(Error::io("open segment", dir.join(segment_name(id)), e));
        }
    }
    for (i, &id) in ids.iter().enumerate() {
        let is_last = i + 1 == ids.len();
        let path = dir.join(segment_name(id));
        let Some(file) = open_listed(storage, &mut manifest_now, id, read_only)? else {
            continue;
        };
        let file_len = file
            .len()
            .map_err(|e| Error::io("stat segment", &path, e))?;
        // Sealed segments are never written again, so they can be mapped whole. The last one
        // may be written (its tail cut, then appended), so it is read in chunks instead: the
        // memory a scan needs is bounded whatever the file holds. The map is dropped once the
        // segment is scanned, so a scan maps one segment at a time.
        let map;
        let mut chunked;
        let mut whole;
        let bytes: &mut dyn Bytes = if is_last {
            chunked = Chunked::new(&*file, file_len);
            &mut chunked
        } else {
            // SAFETY: a sealed segment is never written, truncated or shrunk again, by the
            // engine or anyone else who follows afterlog's rules; compaction replaces it with
            // a new file and removes it whole, which leaves the map readable.
            #[allow(unsafe_code, reason = "maps a sealed segment, which never changes")]
            let mapped = unsafe { file.map(file_len) };
            map = mapped.map_err(|e| Error::io("map segment", &path, e))?;
            whole = Whole(&map);
            &mut whole
        };
        let head = bytes
            .at(0, MAX_SEGMENT_HEADER_LEN)
            .map_err(|e| Error::io("read segment", &path, e))?;
        let header = decode_header(head).map_err(|e| header_error(path.clone(), e))?;
        if header.segment_id != id {
            return Err(Error::Corrupt {
                file: path,
                offset: 0,
                reason: format!(
                    "header names segment {}, the file name {id}",
                    header.segment_id
                ),
            });
        }
        if header.has_seals() {
            seen_v2.get_or_insert(id);
            match &manifest {
                Some(m) if header.directory_id != m.directory_id => {
                    return Err(foreign_segment(path, header.directory_id, m.directory_id));
                }
                _ => {}
            }
        }
        if header.first_seq <= last_seq {
            return Err(Error::Corrupt {
                file: path,
                offset: 0,
                reason: format!(
                    "first sequence number {} is not after the previous segment's last, {last_seq}",
                    header.first_seq
                ),
            });
        }
        report.event_id_floor = report.event_id_floor.max(header.event_id_floor);
        report.job_id_floor = report.job_id_floor.max(header.job_id_floor);
        let data_start = header.len() as u64;
        let mut scan = scan_segment(bytes, &header, &path, visit)?;
        if read_only && is_last {
            scan = reread_racing_tail(bytes, scan, &header, &path, visit)?;
        }
        report.records += scan.records;
        report.record_bytes += scan.end - data_start;
        if i >= listed && scan.records > 0 {
            return Err(Error::Corrupt {
                file: path,
                offset: data_start,
                reason: format!(
                    "the segment holds {} records but the MANIFEST does not list it",
                    scan.records
                ),
            });
        }
        // A segment without records (the active one after a compaction removed everything
        // before it, say) still reserves the sequence numbers below its first: the next
        // record must not be numbered below its header's `first_seq`.
        last_seq = last_seq.max(header.first_seq - 1);
        if scan.last_seq != 0 {
            last_seq = scan.last_seq;
        }
        if let Some(seal_seq) = scan.sealed {
            // The seal names the number the next segment's first record takes.
            last_seq = last_seq.max(seal_seq - 1);
        }
        let end = scan.end;
        if let Some(torn_end) = torn_tail(bytes, &scan, &header, &path, !is_last)? {
            report.torn_bytes = torn_end - end;
            report.torn_at = Some((id, end));
            if !read_only {
                zero_fill(&*file, end, torn_end)
                    .map_err(|e| Error::io("cut torn tail", &path, e))?;
                file.sync_data()
                    .map_err(|e| Error::io("sync segment", &path, e))?;
            }
        }
        if !is_last && i + 1 == listed && header.has_seals() && scan.sealed.is_none() {
            // A roll seals the segment before it installs the next: an unlisted segment after
            // an unsealed last one was not installed by this log.
            return Err(Error::Corrupt {
                file: dir.join(segment_name(ids[listed])),
                offset: 0,
                reason: format!(
                    "the segment is not listed in the MANIFEST, and {} before it is not sealed: \
                     it is not a segment of this log",
                    segment_name(id)
                ),
            });
        }
        if !is_last && header.has_seals() && scan.sealed.is_none() {
            return Err(no_seal(path, scan.end, scan.records));
        }
        // The seal, if any, is data too.
        let data_end = end
            + scan
                .sealed
                .map_or(0, |_| crate::format::SEAL_FRAME_LEN as u64);
        if is_last && !read_only && data_end > data_start {
            // After a failed sync the page cache may still show records that never reached
            // the disk (Linux marks their pages clean, and a later sync does not write
            // them). Rewriting what recovery read and syncing it makes every record it hands
            // up durable before anything is appended after it — or, when the segment is
            // sealed, before the next segment is installed behind its seal.
            rewrite(bytes, &*file, data_start, data_end)
                .map_err(|e| Error::io("rewrite segment", &path, e))?;
            file.sync_data()
                .map_err(|e| Error::io("sync segment", &path, e))?;
        }
        report.segments += 1;
        if is_last && scan.sealed.is_none() {
            let slot = Arc::new(SegmentSlot::active(id, file));
            active = Some((slot, header, scan.end, scan.records));
        } else {
            sealed.push(Arc::new(SegmentSlot::sealed(id, file, data_end, None)));
        }
    }
    if manifest.is_none()
        && let Some(id) = seen_v2
    {
        return Err(Error::Corrupt {
            file: dir.join(MANIFEST_FILE),
            offset: 0,
            reason: format!(
                "the MANIFEST is missing, but the directory holds format-2 segments ({} and \
                 on): it was deleted, so segments may be missing too (salvage copies what is left)",
                segment_name(id)
            ),
        });
    }
    report.last_seq = last_seq;
    Ok(Recovered {
        sealed,
        active,
        report,
        manifest_file,
    })
}

/// Scans one segment as if it were the whole log (`afterlog verify` checks each segment on its
/// own): read only; `sealed` says whether it must prove its end with a seal.
pub(crate) fn scan_alone(
    storage: &dyn Storage,
    id: u64,
    sealed: bool,
    visit: &mut dyn FnMut(Position, &Record<'_>) -> Result<()>,
) -> Result<Recovery> {
    let path = storage.path().join(segment_name(id));
    let file = storage
        .open(&segment_name(id))
        .map_err(|e| Error::io("open segment", &path, e))?;
    let file_len = file
        .len()
        .map_err(|e| Error::io("stat segment", &path, e))?;
    let mut bytes = Chunked::new(&*file, file_len);
    let head = bytes
        .at(0, MAX_SEGMENT_HEADER_LEN)
        .map_err(|e| Error::io("read segment", &path, e))?;
    let header = decode_header(head).map_err(|e| header_error(path.clone(), e))?;
    let mut scan = scan_segment(&mut bytes, &header, &path, visit)?;
    if !sealed {
        scan = reread_racing_tail(&mut bytes, scan, &header, &path, visit)?;
    }
    let mut report = Recovery {
        segments: 1,
        records: scan.records,
        record_bytes: scan.end - header.len() as u64,
        last_seq: scan.last_seq,
        event_id_floor: header.event_id_floor,
        job_id_floor: header.job_id_floor,
        ..Recovery::default()
    };
    if let Some(torn_end) = torn_tail(&mut bytes, &scan, &header, &path, sealed)? {
        report.torn_bytes = torn_end - scan.end;
        report.torn_at = Some((id, scan.end));
    }
    if sealed && header.has_seals() && scan.sealed.is_none() {
        return Err(no_seal(path, scan.end, scan.records));
    }
    Ok(report)
}

/// Fails when unlisted segment `id` is a format-2 segment of another directory than the one
/// `manifest` names (a header that does not decode is left for the caller: the file is a
/// leftover of a removal at worst).
fn check_not_foreign(storage: &dyn Storage, id: u64, manifest: &Manifest) -> Result<()> {
    let path = storage.path().join(segment_name(id));
    let Ok(file) = storage.open(&segment_name(id)) else {
        return Ok(());
    };
    match read_header(&*file, &path) {
        Ok(header) if header.has_seals() && header.directory_id != manifest.directory_id => Err(
            foreign_segment(path, header.directory_id, manifest.directory_id),
        ),
        _ => Ok(()),
    }
}

/// Reads and decodes the header of the segment file `file` (at `path`, for errors).
pub(crate) fn read_header(file: &dyn StorageFile, path: &Path) -> Result<SegmentHeader> {
    let len = file.len().map_err(|e| Error::io("stat segment", path, e))?;
    let mut head = vec![0u8; (len as usize).min(MAX_SEGMENT_HEADER_LEN)];
    read_exact_at(file, &mut head, 0).map_err(|e| Error::io("read segment", path, e))?;
    decode_header(&head).map_err(|e| header_error(path.to_path_buf(), e))
}

fn foreign_segment(file: PathBuf, found: u128, expected: u128) -> Error {
    Error::Corrupt {
        file,
        offset: 0,
        reason: format!(
            "the segment belongs to another directory (id {found:032x}; this directory's \
             MANIFEST says {expected:032x})"
        ),
    }
}

/// A sealed format-2 segment whose frames do not end with a seal: it lost bytes at its end.
fn no_seal(path: PathBuf, end: u64, records: u64) -> Error {
    Error::Corrupt {
        file: path,
        offset: end,
        reason: format!(
            "the sealed segment has no seal where its {records} records end: it was cut short \
             (synced records are missing)"
        ),
    }
}

/// Where a torn tail after the scan's valid frames ends: `None` when only zeros follow them.
/// Everything after them must be zeros in a segment that is `sealed` (or ends with a seal); in
/// the last segment the bytes are a torn tail, unless a valid frame of a later sync group lies
/// among them, which proves they had been synced: then it is damage to synced data.
fn torn_tail(
    bytes: &mut dyn Bytes,
    scan: &Scan,
    header: &SegmentHeader,
    path: &Path,
    sealed: bool,
) -> Result<Option<u64>> {
    let Some(bad) = &scan.stopped else {
        return Ok(None);
    };
    let read_error = |e| Error::io("read segment", path, e);
    let Some(nonzero_end) = last_nonzero(bytes, scan.end)
        .map_err(read_error)?
        .map(|i| i + 1)
    else {
        return Ok(None);
    };
    if sealed || scan.sealed.is_some() {
        return Err(bad.to_error(path.to_path_buf(), scan.end));
    }
    let expected = scan.last_seq.max(header.first_seq - 1).saturating_add(1);
    if let Some((offset, seq)) =
        later_sync_group(bytes, scan.end, nonzero_end, header.segment_id, expected)
            .map_err(read_error)?
    {
        return Err(Error::Corrupt {
            file: path.to_path_buf(),
            offset: scan.end,
            reason: format!(
                "{}; a frame of a later sync group (seq {seq}) follows at offset {offset}, so \
                 this is damage to synced data, not a torn write",
                bad.describe()
            ),
        });
    }
    Ok(Some(nonzero_end))
}

fn missing_segment(dir: &Path, id: u64) -> Error {
    Error::Corrupt {
        file: dir.join(segment_name(id)),
        offset: 0,
        reason: "the segment is missing: the MANIFEST lists it, so synced records are gone".into(),
    }
}

/// Opens listed segment `id`. Beside a running engine (`read_only`), compaction may have
/// removed it since the manifest was read, which it does only after unlisting it: then the
/// manifest is read again (into `current`), and `None` says the segment is legitimately gone.
/// A segment the manifest still lists, unchanged, is missing.
fn open_listed(
    storage: &dyn Storage,
    current: &mut Option<Manifest>,
    id: u64,
    read_only: bool,
) -> Result<Option<Arc<dyn StorageFile>>> {
    let path = storage.path().join(segment_name(id));
    for _ in 0..MANIFEST_RETRIES {
        match storage.open(&segment_name(id)) {
            Ok(file) => return Ok(Some(Arc::from(file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && read_only && current.is_some() => {
                let now = read_manifest(storage)?;
                if now
                    .as_ref()
                    .is_none_or(|m| m.segments.binary_search(&id).is_err())
                {
                    return Ok(None);
                }
                if now == *current {
                    return Err(missing_segment(storage.path(), id));
                }
                *current = now;
            }
            Err(e) => return Err(Error::io("open segment", &path, e)),
        }
    }
    Err(missing_segment(storage.path(), id))
}

/// The bytes of one segment file, handed out from an offset on.
trait Bytes {
    /// The bytes from `offset` on: at least `want` of them, or every byte up to the end of the
    /// file if fewer remain.
    fn at(&mut self, offset: u64, want: usize) -> io::Result<&[u8]>;
    /// The file's length.
    fn len(&self) -> u64;
    /// Forgets what was read, so the next reads see the file as it is now.
    fn forget(&mut self) {}
}

/// A mapped (or copied) whole file.
struct Whole<'a>(&'a [u8]);

impl Bytes for Whole<'_> {
    fn at(&mut self, offset: u64, _want: usize) -> io::Result<&[u8]> {
        Ok(self.0.get(offset as usize..).unwrap_or(&[]))
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Bytes read in chunks of `CHUNK_BYTES` (plus one frame): memory stays bounded whatever
/// the length of the file.
struct Chunked<'a> {
    file: &'a dyn StorageFile,
    len: u64,
    /// The buffer; its first `filled` bytes are the file's from `start` on.
    capacity: Vec<u8>,
    filled: usize,
    start: u64,
}

/// Bytes a chunked read holds at a time, beyond one frame.
const CHUNK_BYTES: usize = 4 << 20;

impl<'a> Chunked<'a> {
    fn new(file: &'a dyn StorageFile, len: u64) -> Chunked<'a> {
        Chunked {
            file,
            len,
            capacity: Vec::new(),
            filled: 0,
            start: 0,
        }
    }
}

impl Bytes for Chunked<'_> {
    fn forget(&mut self) {
        self.filled = 0;
    }

    fn at(&mut self, offset: u64, want: usize) -> io::Result<&[u8]> {
        let available = self.len.saturating_sub(offset);
        let need = (want as u64).min(available);
        let buf_end = self.start + self.filled as u64;
        if offset < self.start || offset + need > buf_end {
            let n = ((want.max(CHUNK_BYTES)) as u64).min(available) as usize;
            if self.capacity.len() < n {
                // Allocated zeroed (no per-byte fill), once per size.
                self.capacity = vec![0u8; n];
            }
            read_exact_at(self.file, &mut self.capacity[..n], offset)?;
            self.start = offset;
            self.filled = n;
        }
        Ok(&self.capacity[(offset - self.start) as usize..self.filled])
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Writes `start..end` of `bytes` back to `file`, a chunk at a time.
fn rewrite(bytes: &mut dyn Bytes, file: &dyn StorageFile, start: u64, end: u64) -> io::Result<()> {
    let mut at = start;
    while at < end {
        let n = ((end - at) as usize).min(CHUNK_BYTES);
        let chunk = bytes.at(at, n)?;
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

struct Scan {
    records: u64,
    last_seq: u64,
    /// The end of the valid frames (the seal's offset, in a sealed segment).
    end: u64,
    /// Why the scan stopped before the end of the file: None at a zero length.
    stopped: Option<Stop>,
    /// The seal's sequence number, when the segment ends with a seal.
    sealed: Option<u64>,
}

enum Stop {
    EndOfData,
    Frame(FrameError),
}

impl Stop {
    fn describe(&self) -> String {
        match self {
            Stop::EndOfData => "a zero length ends the data but non-zero bytes follow".into(),
            Stop::Frame(e) => e.to_string(),
        }
    }

    fn to_error(&self, file: PathBuf, offset: u64) -> Error {
        match *self {
            Stop::Frame(FrameError::Checksum { expected, found }) => Error::ChecksumMismatch {
                file,
                offset,
                expected,
                found,
            },
            _ => Error::Corrupt {
                file,
                offset,
                reason: self.describe(),
            },
        }
    }
}

/// Visits every valid frame from the header on. Errors only on frames whose checksum is
/// valid but whose content is not (bad sequence number, undecodable payload, a seal that does
/// not match what precedes it, bytes after a seal): those cannot be torn writes.
fn scan_segment(
    bytes: &mut dyn Bytes,
    header: &SegmentHeader,
    path: &Path,
    visit: &mut dyn FnMut(Position, &Record<'_>) -> Result<()>,
) -> Result<Scan> {
    let contiguous = header.flags & crate::format::FLAG_COMPACTED == 0;
    let corrupt = |offset: u64, reason: String| Error::Corrupt {
        file: path.to_path_buf(),
        offset,
        reason,
    };
    let read_error = |e| Error::io("read segment", path, e);
    let len = bytes.len();
    let mut offset = header.len() as u64;
    let mut prev_seq = header.first_seq - 1;
    let mut records = 0;
    let mut sealed = None;
    let stopped = loop {
        if offset >= len {
            break None;
        }
        let window = bytes.at(offset, MAX_FRAME_LEN).map_err(read_error)?;
        let frame = match decode_frame(window, header.segment_id) {
            Ok(Some(f)) => f,
            Ok(None) => break Some(Stop::EndOfData),
            Err(e) => break Some(Stop::Frame(e)),
        };
        let bad_seq = if contiguous {
            // Nothing follows u64::MAX.
            prev_seq.checked_add(1) != Some(frame.seq)
        } else {
            frame.seq <= prev_seq
        };
        if bad_seq {
            return Err(corrupt(
                offset,
                format!("sequence number {} follows {prev_seq}", frame.seq),
            ));
        }
        if frame.kind == RecordKind::Seal {
            if !header.has_seals() {
                return Err(corrupt(offset, "a seal frame in a format-1 segment".into()));
            }
            let seal = decode_seal(frame.payload).map_err(|reason| corrupt(offset, reason))?;
            let (seal_seq, after) = (frame.seq, offset + frame.len() as u64);
            if seal.records != records || seal.data_len != offset {
                return Err(corrupt(
                    offset,
                    format!(
                        "the seal says {} records ending at offset {}, the segment holds {records} \
                         ending at {offset}",
                        seal.records, seal.data_len
                    ),
                ));
            }
            if let Some(at) = last_nonzero(bytes, after).map_err(read_error)? {
                return Err(corrupt(
                    after,
                    format!("non-zero bytes follow the seal (up to offset {at})"),
                ));
            }
            sealed = Some(seal_seq);
            break None;
        }
        let record = Record::decode_in(header.format_version, frame.kind, frame.payload)
            .map_err(|e| corrupt(offset, e.to_string()))?;
        let position = Position {
            segment: header.segment_id,
            offset,
            seq: frame.seq,
        };
        let frame_len = frame.len() as u64;
        prev_seq = frame.seq;
        visit(position, &record)?;
        records += 1;
        offset += frame_len;
    };
    let last_seq = if records > 0 { prev_seq } else { 0 };
    // A zero length at the very end of the file is a clean end too.
    let stopped = match stopped {
        Some(Stop::EndOfData) if last_nonzero(bytes, offset).map_err(read_error)?.is_none() => None,
        other => other,
    };
    Ok(Scan {
        records,
        last_seq,
        end: offset,
        stopped,
        sealed,
    })
}

/// How many times a read-only scan reads the last segment's tail again before it calls a bad
/// frame followed by a later sync group damage.
const TAIL_REREADS: usize = 3;

/// A read-only scan of the last segment races its writer: what it read can hold a region
/// read before the writer reached it (zeros, or part of a frame) followed by a later group's
/// frame read after, which looks like damage to synced data. The writer only moves forward
/// and writes a group only once the previous one is synced, so every byte before the last
/// non-zero byte seen was written by the time it was seen: reading that range again shows
/// what it holds. The scan goes on from where it stopped (records before are not handed up
/// twice). Only after `TAIL_REREADS` reads that show the same is it damage.
fn reread_racing_tail(
    bytes: &mut dyn Bytes,
    mut scan: Scan,
    header: &SegmentHeader,
    path: &Path,
    visit: &mut dyn FnMut(Position, &Record<'_>) -> Result<()>,
) -> Result<Scan> {
    let read_error = |e| Error::io("read segment", path, e);
    for _ in 0..TAIL_REREADS {
        if scan.stopped.is_none() {
            break;
        }
        let Some(nonzero_end) = last_nonzero(bytes, scan.end)
            .map_err(read_error)?
            .map(|i| i + 1)
        else {
            break;
        };
        let expected = scan.last_seq.max(header.first_seq - 1).saturating_add(1);
        if later_sync_group(bytes, scan.end, nonzero_end, header.segment_id, expected)
            .map_err(read_error)?
            .is_none()
        {
            break;
        }
        bytes.forget();
        let visited = scan.end;
        let (records, last_seq) = (scan.records, scan.last_seq);
        let mut rest = |pos: Position, record: &Record<'_>| {
            if pos.offset < visited {
                Ok(())
            } else {
                visit(pos, record)
            }
        };
        scan = scan_segment(bytes, header, path, &mut rest)?;
        debug_assert!(
            scan.records >= records && scan.last_seq >= last_seq,
            "a second read lost records: {records} -> {}",
            scan.records
        );
    }
    Ok(scan)
}

/// Zeros to compare a segment's bytes with.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The offset of the last non-zero byte at or after `from`.
fn last_nonzero(bytes: &mut dyn Bytes, from: u64) -> io::Result<Option<u64>> {
    let mut last = None;
    let mut at = from;
    while at < bytes.len() {
        let chunk = bytes.at(at, CHUNK_BYTES)?;
        let n = chunk.len().min(CHUNK_BYTES);
        for (k, piece) in chunk[..n].chunks(ZEROS.len()).enumerate() {
            // Slice equality is a `memcmp`: fast on the long runs of zeros a segment ends with.
            if piece != &ZEROS[..piece.len()]
                && let Some(i) = piece.iter().rposition(|&b| b != 0)
            {
                last = Some(at + (k * ZEROS.len() + i) as u64);
            }
        }
        at += n as u64;
    }
    Ok(last)
}

/// Looks for a valid frame in `from+1..to` that belongs to a sync group starting after
/// `expected` (the sequence number the bad frame at `from` should have had).
fn later_sync_group(
    bytes: &mut dyn Bytes,
    from: u64,
    to: u64,
    segment_id: u64,
    expected: u64,
) -> io::Result<Option<(u64, u64)>> {
    let mut off = from + 1;
    let to = to.min(bytes.len());
    while off + FRAME_HEADER_LEN as u64 <= to {
        let window = bytes.at(off, MAX_FRAME_LEN)?;
        let len = get_u32(window, 0) as usize;
        let seq = get_u64(window, 8);
        let delta = u64::from(get_u16(window, 18));
        let plausible = len != 0
            && len <= MAX_PAYLOAD_LEN
            && seq > expected
            && seq - expected < (1 << 40)
            && seq
                .checked_sub(delta)
                .is_some_and(|group_first| group_first > expected);
        if plausible && matches!(decode_frame(window, segment_id), Ok(Some(_))) {
            return Ok(Some((off, seq)));
        }
        off += 1;
    }
    Ok(None)
}
