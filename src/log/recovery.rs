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
use super::segment::{
    DATA_START, SegmentSlot, is_temp_name, parse_segment_name, segment_name, zero_fill,
};
use crate::error::{Error, Result};
use crate::format::{
    FRAME_HEADER_LEN, FrameError, MAX_PAYLOAD_LEN, Record, SegmentHeader, decode_frame,
    decode_header, get_u16, get_u32, get_u64,
};
use crate::storage::{Storage, StorageFile, read_exact_at};
use std::path::PathBuf;
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
    /// Leftover temporary files removed.
    pub removed_temp_files: Vec<String>,
    /// The largest sequence number found (0 for an empty log).
    pub last_seq: u64,
    /// The largest event id floor of any segment header: ids below it were allocated.
    pub event_id_floor: u64,
    /// The largest job id floor of any segment header.
    pub job_id_floor: u64,
}

/// The state recovery leaves for the writer.
pub(crate) struct Recovered {
    pub sealed: Vec<Arc<SegmentSlot>>,
    /// The last segment, its header and where appending continues.
    pub active: Option<(Arc<SegmentSlot>, SegmentHeader, u64)>,
    pub report: Recovery,
}

/// Scans the directory. With `read_only`, nothing is removed or written: a torn tail is
/// reported and skipped, and temporary files are left alone.
pub(crate) fn recover(
    storage: &dyn Storage,
    read_only: bool,
    visit: &mut dyn FnMut(Position, &Record<'_>) -> Result<()>,
) -> Result<Recovered> {
    let dir = storage.path().to_path_buf();
    let names = storage
        .list()
        .map_err(|e| Error::io("list directory", &dir, e))?;
    let mut report = Recovery::default();
    let mut ids: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    ids.sort_unstable();
    if !read_only {
        let mut temps: Vec<&String> = names.iter().filter(|n| is_temp_name(n)).collect();
        temps.sort();
        for name in temps {
            storage
                .remove(name)
                .map_err(|e| Error::io("remove temporary file", dir.join(name), e))?;
            report.removed_temp_files.push(name.clone());
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
    for (i, &id) in ids.iter().enumerate() {
        let is_last = i + 1 == ids.len();
        let path = dir.join(segment_name(id));
        let file: Arc<dyn StorageFile> = Arc::from(
            storage
                .open(&segment_name(id))
                .map_err(|e| Error::io("open segment", &path, e))?,
        );
        let file_len = file
            .len()
            .map_err(|e| Error::io("stat segment", &path, e))?;
        // Sealed segments are never written again, so they can be mapped whole. The last one
        // may be written (its tail cut, then appended), so it is read into memory instead.
        // The map is dropped once the segment is scanned, so a scan holds one segment in
        // memory at a time whatever the size of the log (readers map again on demand).
        let mut bytes = if is_last {
            let mut buf = vec![0u8; file_len as usize];
            read_exact_at(&*file, &mut buf, 0).map_err(|e| Error::io("read segment", &path, e))?;
            SegmentData::Owned(buf)
        } else {
            let map = file
                .map(file_len)
                .map_err(|e| Error::io("map segment", &path, e))?;
            SegmentData::Mapped(map)
        };
        let header = decode_header(&bytes).map_err(|e| Error::Corrupt {
            file: path.clone(),
            offset: 0,
            reason: e.to_string(),
        })?;
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
        let mut scan = scan_segment(&bytes, &header, &path, visit)?;
        if read_only && let SegmentData::Owned(buf) = &mut bytes {
            scan = reread_racing_tail(&*file, buf, scan, &header, &path, visit)?;
        }
        let bytes: &[u8] = &bytes;
        report.records += scan.records;
        report.record_bytes += scan.end - DATA_START;
        // A segment without records (the active one after a compaction removed everything
        // before it, say) still reserves the sequence numbers below its first: the next
        // record must not be numbered below its header's `first_seq`.
        last_seq = last_seq.max(header.first_seq - 1);
        if scan.last_seq != 0 {
            last_seq = scan.last_seq;
        }
        let end = scan.end as usize;
        if let Some(bad) = scan.stopped {
            // Everything from `end` on must be zeros, or (last segment only) a torn tail.
            let nonzero_end = last_nonzero(bytes, end).map(|i| i + 1);
            if let Some(nonzero_end) = nonzero_end {
                if !is_last {
                    return Err(bad.into_error(path, scan.end));
                }
                let expected = scan.last_seq.max(header.first_seq - 1).saturating_add(1);
                if let Some((offset, seq)) = later_sync_group(bytes, end, nonzero_end, id, expected)
                {
                    return Err(Error::Corrupt {
                        file: path,
                        offset: scan.end,
                        reason: format!(
                            "{}; a frame of a later sync group (seq {seq}) follows at offset {offset}, \
                             so this is damage to synced data, not a torn write",
                            bad.describe()
                        ),
                    });
                }
                report.torn_bytes = (nonzero_end - end) as u64;
                report.torn_at = Some((id, scan.end));
                if !read_only {
                    zero_fill(&*file, scan.end, nonzero_end as u64)
                        .map_err(|e| Error::io("cut torn tail", &path, e))?;
                    file.sync_data()
                        .map_err(|e| Error::io("sync segment", &path, e))?;
                }
            }
        }
        if is_last && !read_only && end > DATA_START as usize {
            // After a failed sync the page cache may still show records that never reached
            // the disk (Linux marks their pages clean, and a later sync does not write
            // them). Rewriting what recovery read and syncing it makes every record it hands
            // up durable before anything is appended after it.
            file.write_all_at(&bytes[DATA_START as usize..end], DATA_START)
                .map_err(|e| Error::io("rewrite segment", &path, e))?;
            file.sync_data()
                .map_err(|e| Error::io("sync segment", &path, e))?;
        }
        report.segments += 1;
        if is_last {
            let slot = Arc::new(SegmentSlot::active(id, file));
            active = Some((slot, header, scan.end));
        } else {
            sealed.push(Arc::new(SegmentSlot::sealed(id, file, scan.end, None)));
        }
    }
    report.last_seq = last_seq;
    Ok(Recovered {
        sealed,
        active,
        report,
    })
}

enum SegmentData {
    Owned(Vec<u8>),
    Mapped(crate::storage::Mapped),
}

impl std::ops::Deref for SegmentData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SegmentData::Owned(v) => v,
            SegmentData::Mapped(m) => m,
        }
    }
}

struct Scan {
    records: u64,
    last_seq: u64,
    /// The end of the valid frames.
    end: u64,
    /// Why the scan stopped before the end of the file: None at a zero length.
    stopped: Option<Stop>,
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

    fn into_error(self, file: PathBuf, offset: u64) -> Error {
        match self {
            Stop::Frame(FrameError::Checksum { expected, found }) => Error::ChecksumMismatch {
                file,
                offset,
                expected,
                found,
            },
            other => Error::Corrupt {
                file,
                offset,
                reason: other.describe(),
            },
        }
    }
}

/// Visits every valid frame from the header on. Errors only on frames whose checksum is
/// valid but whose content is not (bad sequence number, undecodable payload): those cannot
/// be torn writes.
fn scan_segment(
    bytes: &[u8],
    header: &SegmentHeader,
    path: &std::path::Path,
    visit: &mut dyn FnMut(Position, &Record<'_>) -> Result<()>,
) -> Result<Scan> {
    let contiguous = header.flags & crate::format::FLAG_COMPACTED == 0;
    let mut offset = DATA_START as usize;
    let mut prev_seq = header.first_seq - 1;
    let mut records = 0;
    let stopped = loop {
        if offset >= bytes.len() {
            break None;
        }
        let frame = match decode_frame(&bytes[offset..], header.segment_id) {
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
            return Err(Error::Corrupt {
                file: path.to_path_buf(),
                offset: offset as u64,
                reason: format!("sequence number {} follows {prev_seq}", frame.seq),
            });
        }
        let record = Record::decode(frame.kind, frame.payload).map_err(|e| Error::Corrupt {
            file: path.to_path_buf(),
            offset: offset as u64,
            reason: e.to_string(),
        })?;
        let position = Position {
            segment: header.segment_id,
            offset: offset as u64,
            seq: frame.seq,
        };
        visit(position, &record)?;
        prev_seq = frame.seq;
        records += 1;
        offset += frame.len();
    };
    let last_seq = if records > 0 { prev_seq } else { 0 };
    // A zero length at the very end of the file is a clean end too.
    let stopped = match stopped {
        Some(Stop::EndOfData) if last_nonzero(bytes, offset).is_none() => None,
        other => other,
    };
    Ok(Scan {
        records,
        last_seq,
        end: offset as u64,
        stopped,
    })
}

/// How many times a read-only scan reads the last segment's tail again before it calls a bad
/// frame followed by a later sync group damage.
const TAIL_REREADS: usize = 3;

/// A read-only scan of the last segment races its writer: the copy of the file can hold a
/// region read before the writer reached it (zeros, or part of a frame) followed by a later
/// group's frame read after, which looks like damage to synced data. The writer only moves
/// forward and writes a group only once the previous one is synced, so every byte before the
/// last non-zero byte seen was written by the time it was seen: reading that range again
/// shows what it holds. The scan goes on from where it stopped (records before are not
/// handed up twice) and still ends at the last non-zero byte of the first copy. Only after
/// `TAIL_REREADS` reads that show the same is it damage.
fn reread_racing_tail(
    file: &dyn StorageFile,
    buf: &mut [u8],
    mut scan: Scan,
    header: &SegmentHeader,
    path: &std::path::Path,
    visit: &mut dyn FnMut(Position, &Record<'_>) -> Result<()>,
) -> Result<Scan> {
    for _ in 0..TAIL_REREADS {
        if scan.stopped.is_none() {
            break;
        }
        let end = scan.end as usize;
        let Some(nonzero_end) = last_nonzero(buf, end).map(|i| i + 1) else {
            break;
        };
        let expected = scan.last_seq.max(header.first_seq - 1).saturating_add(1);
        if later_sync_group(buf, end, nonzero_end, header.segment_id, expected).is_none() {
            break;
        }
        read_exact_at(file, &mut buf[end..nonzero_end], scan.end)
            .map_err(|e| Error::io("read segment", path, e))?;
        let visited = scan.end;
        let (records, last_seq) = (scan.records, scan.last_seq);
        let mut rest = |pos: Position, record: &Record<'_>| {
            if pos.offset < visited {
                Ok(())
            } else {
                visit(pos, record)
            }
        };
        scan = scan_segment(buf, header, path, &mut rest)?;
        debug_assert!(
            scan.records >= records && scan.last_seq >= last_seq,
            "a second read lost records: {records} -> {}",
            scan.records
        );
    }
    Ok(scan)
}

/// The index of the last non-zero byte at or after `from`.
fn last_nonzero(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .rposition(|&b| b != 0)
        .map(|i| from + i)
}

/// Looks for a valid frame in `from+1..to` that belongs to a sync group starting after
/// `expected` (the sequence number the bad frame at `from` should have had).
fn later_sync_group(
    bytes: &[u8],
    from: usize,
    to: usize,
    segment_id: u64,
    expected: u64,
) -> Option<(u64, u64)> {
    let mut off = from + 1;
    while off + FRAME_HEADER_LEN <= to.min(bytes.len()) {
        let len = get_u32(bytes, off) as usize;
        let seq = get_u64(bytes, off + 8);
        let delta = u64::from(get_u16(bytes, off + 18));
        let plausible = len != 0
            && len <= MAX_PAYLOAD_LEN
            && seq > expected
            && seq - expected < (1 << 40)
            && seq
                .checked_sub(delta)
                .is_some_and(|group_first| group_first > expected);
        if plausible && matches!(decode_frame(&bytes[off..], segment_id), Ok(Some(_))) {
            return Some((off as u64, seq));
        }
        off += 1;
    }
    None
}
