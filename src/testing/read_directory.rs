//! The `read_directory` check: arbitrary bytes become a small data directory, and every
//! read the `afterlog` command makes of it must end in a value or an error, never a panic,
//! with bounded allocations; a salvage of it must be a sound directory.
//!
//! # The input
//!
//! The input is cut at every [`FILE_SEPARATOR`] into at most [`FILES_MAX`] chunks, one file
//! each. A chunk's first byte (the *lead*) says what the file is; the rest are its bytes.
//!
//! ```text
//! lead bits  meaning
//!   0..=2    0..=2: a segment (format 1 in header mode); 3: a segment (format 2 in header
//!            mode, of directory `FUZZ_DIRECTORY_ID`); 4: `MANIFEST`; 5: `<next id>.seg.tmp`;
//!            6: `LOCK`; 7: `notes.txt`
//!   3        skip: a header-mode segment takes the id after next (a gap); a raw segment
//!            is named one above the id its header names (a mismatch)
//!   4        checksums: every frame the length fields lay out after the header gets its
//!            correct checksum, so changed records stay valid frames
//!   5        raw: the bytes are the whole file; otherwise a valid header comes first
//!   6        (header mode) the header says the segment was written by compaction
//!   7        (header mode) the header carries id floors of 1,000 × the segment id
//! ```
//!
//! A prepended header names the segment's own id and, as its first sequence number, the
//! sequence number of the first frame that follows (bytes 8..16 of the chunk's bytes; 1 when
//! there are fewer), so frames copied from a real segment stay valid. A raw segment is named
//! after the id its own header names (bytes 16..24), so a real segment copied whole keeps its
//! name. A later file with a name already used is left out.
//!
//! A `MANIFEST` chunk is the contents of its two slots without their zero padding (the first
//! slot's `length` field says where it ends: the rest is the second slot), laid out in two
//! slots of a multiple of 4,096 bytes; or with bit 4 a valid manifest file of
//! directory `FUZZ_DIRECTORY_ID` listing the segment ids the bytes hold (up to 16 u64s,
//! sorted, duplicates and 0 left out), generation 1 + the first byte.
//!
//! Checksums would stop a fuzzer at the frames it has seen: a changed byte fails the frame's
//! checksum, and a reader goes no further. Bit 4 lets it change what records say (ids,
//! sequence numbers, kinds, lengths, times) and still reach the code that reads them.

use super::AllocationLimit;
use crate::format::{
    FLAG_COMPACTED, FRAME_CRC_OFFSET, FRAME_HEADER_LEN, FRAME_LEN_OFFSET, FRAME_SEQ_OFFSET,
    MANIFEST_FILE, MAX_FRAME_LEN, MAX_PAYLOAD_LEN, Manifest, RecordKind, SEGMENT_HEADER_LEN,
    SegmentHeader, decode_frame, encode_header, encode_manifest_file, frame_crc, get_u32, get_u64,
    header_len,
};
use crate::log::segment_name;
use crate::storage::{LOCK_FILE, MemStorage, Storage};
use crate::{EventId, Reader, RecordFilter, record_time_ms};
use std::sync::Arc;

/// Separates the files of an input: `FF 2F FF 2F`, which a segment's frames almost never hold.
pub const FILE_SEPARATOR: [u8; 4] = *b"\xFF/\xFF/";
/// Most files of one input; further chunks are ignored.
pub const FILES_MAX: usize = 16;
/// Longest input the check reads (longer ones are skipped): a directory of at most this many
/// bytes keeps every legitimate allocation of a read below the largest frame.
pub const INPUT_BYTES_MAX: usize = 16 << 10;
/// Segment size of the salvaged copy: the smallest, so that it spans several segments (a
/// larger record gets a segment of its own size).
const SALVAGE_SEGMENT_BYTES: u64 = crate::log::MIN_SEGMENT_BYTES;

/// The directory id of format-2 segments and manifests the check makes.
pub const FUZZ_DIRECTORY_ID: u128 = 0xaf7e_5106_0000_0000_0000_0000_0000_0001;

const KIND_MASK: u8 = 0b0000_0111;
const KIND_V2: u8 = 3;
const KIND_MANIFEST: u8 = 4;
const KIND_TEMP: u8 = 5;
const KIND_LOCK: u8 = 6;
const KIND_JUNK: u8 = 7;
const LEAD_SKIP: u8 = 1 << 3;
const LEAD_CHECKSUMS: u8 = 1 << 4;
const LEAD_RAW: u8 = 1 << 5;
const LEAD_COMPACTED: u8 = 1 << 6;
const LEAD_FLOORS: u8 = 1 << 7;
/// Offset of the segment id in a segment header.
const HEADER_ID_OFFSET: usize = 16;

/// The files an input describes: names and contents, in input order.
pub fn directory_files(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut next_id = 1u64;
    for chunk in chunks(data).take(FILES_MAX) {
        let Some((&lead, bytes)) = chunk.split_first() else {
            continue;
        };
        let skip = u64::from(lead & LEAD_SKIP != 0);
        let (name, mut contents) = match lead & KIND_MASK {
            KIND_TEMP => (format!("{next_id:020}.seg.tmp"), bytes.to_vec()),
            KIND_LOCK => (LOCK_FILE.to_owned(), bytes.to_vec()),
            KIND_JUNK => ("notes.txt".to_owned(), bytes.to_vec()),
            KIND_MANIFEST if lead & LEAD_CHECKSUMS != 0 => {
                let mut segments: Vec<u64> = bytes
                    .chunks_exact(8)
                    .take(16)
                    .map(|c| get_u64(c, 0))
                    .filter(|&id| id != 0)
                    .collect();
                segments.sort_unstable();
                segments.dedup();
                let manifest = Manifest {
                    directory_id: FUZZ_DIRECTORY_ID,
                    generation: 1 + u64::from(bytes.first().copied().unwrap_or(0)),
                    retention_ms: None,
                    segment_bytes: None,
                    segments,
                    limits: None,
                };
                (MANIFEST_FILE.to_owned(), encode_manifest_file(&manifest))
            }
            KIND_MANIFEST => (MANIFEST_FILE.to_owned(), manifest_slots(bytes)),
            _ if lead & LEAD_RAW != 0 => {
                let id = match bytes.get(..HEADER_ID_OFFSET + 8) {
                    Some(head) => get_u64(head, HEADER_ID_OFFSET).wrapping_add(skip),
                    None => next_id,
                };
                next_id = next_id.max(id.saturating_add(1));
                (segment_name(id), bytes.to_vec())
            }
            _ => {
                let id = next_id.saturating_add(skip);
                next_id = id.saturating_add(1);
                let first_seq = match bytes.get(..FRAME_SEQ_OFFSET + 8) {
                    Some(head) if get_u64(head, FRAME_SEQ_OFFSET) != 0 => {
                        get_u64(head, FRAME_SEQ_OFFSET)
                    }
                    _ => 1,
                };
                let floor = if lead & LEAD_FLOORS != 0 {
                    id.wrapping_mul(1000)
                } else {
                    0
                };
                let v2 = lead & KIND_MASK == KIND_V2;
                let header = SegmentHeader {
                    format_version: if v2 { 2 } else { 1 },
                    segment_id: id,
                    first_seq,
                    created_ms: 0,
                    flags: if lead & LEAD_COMPACTED != 0 {
                        FLAG_COMPACTED
                    } else {
                        0
                    },
                    event_id_floor: floor,
                    job_id_floor: floor,
                    directory_id: if v2 { FUZZ_DIRECTORY_ID } else { 0 },
                };
                let mut contents = encode_header(&header);
                contents.extend_from_slice(bytes);
                (segment_name(id), contents)
            }
        };
        if lead & LEAD_CHECKSUMS != 0
            && lead & KIND_MASK != KIND_MANIFEST
            && let Some(id) = crate::log::parse_segment_name(&name)
        {
            fix_checksums(&mut contents, id);
        }
        if files.iter().all(|(n, _)| *n != name) {
            files.push((name, contents));
        }
    }
    files
}

/// The input that describes a real directory's files, each copied whole (raw), for seeds and
/// tests. Trailing zeros of a segment (its unused, pre-allocated space) are left out.
pub fn directory_input(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, contents)) in files.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(&FILE_SEPARATOR);
        }
        let kind = if name == LOCK_FILE {
            KIND_LOCK
        } else if name == MANIFEST_FILE {
            KIND_MANIFEST
        } else if crate::log::is_temp_name(name) {
            KIND_TEMP
        } else if crate::log::parse_segment_name(name).is_some() {
            0
        } else {
            KIND_JUNK
        };
        out.push(kind | LEAD_RAW);
        if kind == KIND_MANIFEST {
            out.extend_from_slice(&manifest_pieces(contents));
            continue;
        }
        let used = if kind == 0 {
            segment_used_bytes(contents)
        } else {
            contents.len()
        };
        out.extend_from_slice(&contents[..used]);
    }
    out
}

/// Writes the correct checksum into every frame of segment `id` that the length fields lay
/// out after the header, up to a zero length or a frame that does not fit.
fn fix_checksums(contents: &mut [u8], id: u64) {
    let mut at = data_start(contents);
    while let Some(head) = contents.get(at..at + FRAME_HEADER_LEN) {
        let len = get_u32(head, FRAME_LEN_OFFSET) as usize;
        let end = at + FRAME_HEADER_LEN + len;
        if len == 0 || len > MAX_PAYLOAD_LEN || end > contents.len() {
            return;
        }
        let crc = frame_crc(id, &contents[at..end]);
        contents[at + FRAME_CRC_OFFSET..at + FRAME_CRC_OFFSET + 4]
            .copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// The bytes of a segment up to the end of its valid frames, or of its last non-zero byte if
/// that is later: what is left out is only zeros that no reader tells from a shorter file.
fn segment_used_bytes(contents: &[u8]) -> usize {
    let nonzero_end = contents.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let Some(head) = contents.get(..SEGMENT_HEADER_LEN) else {
        return contents.len();
    };
    let id = get_u64(head, HEADER_ID_OFFSET);
    let mut end = data_start(contents).min(contents.len());
    while let Ok(Some(frame)) = decode_frame(&contents[end..], id) {
        end += frame.len();
    }
    end.max(nonzero_end)
}

/// The length a manifest slot's `length` field gives, within `slot`.
fn slot_used(slot: &[u8]) -> usize {
    slot.get(12..16)
        .map_or(slot.len(), |b| get_u32(b, 0) as usize)
        .min(slot.len())
}

/// A manifest file laid out from the two pieces `bytes` holds (see the module's docs).
fn manifest_slots(bytes: &[u8]) -> Vec<u8> {
    let (a, b) = bytes.split_at(slot_used(bytes));
    let unit = crate::format::MANIFEST_SLOT_UNIT;
    let slot_len = a.len().max(b.len()).max(1).div_ceil(unit) * unit;
    let mut file = vec![0u8; 2 * slot_len];
    file[..a.len()].copy_from_slice(a);
    file[slot_len..slot_len + b.len()].copy_from_slice(b);
    file
}

/// The two slots of a manifest file without their padding: the inverse of `manifest_slots`
/// for a file whose slots say their lengths.
fn manifest_pieces(file: &[u8]) -> Vec<u8> {
    let slot_len = file.len() / 2;
    let (first, second) = file.split_at(slot_len);
    let mut out = first[..slot_used(first)].to_vec();
    if second.iter().any(|&b| b != 0) {
        out.extend_from_slice(&second[..slot_used(second)]);
    }
    out
}

/// Where a segment's frames start: after a format-2 header when the version field says 2.
fn data_start(contents: &[u8]) -> usize {
    match contents.get(8..12).map(|v| get_u32(v, 0)) {
        Some(2) => header_len(2),
        _ => SEGMENT_HEADER_LEN,
    }
}

fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r
            .windows(FILE_SEPARATOR.len())
            .position(|w| w == FILE_SEPARATOR)
        {
            Some(at) => {
                rest = Some(&r[at + FILE_SEPARATOR.len()..]);
                Some(&r[..at])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Every read the `afterlog` command makes of the directory `data` describes (see the
/// module's documentation): open, summary and overview, events and their histories, records
/// through filters, verify, and a salvage followed by an open and a verify of the copy.
///
/// Checks: no panic; no single allocation on this thread beyond the largest frame (or the
/// largest file, which a scan holds whole); the reads agree with each other (the directory
/// is sound for `verify` exactly when the scans succeed, and they count the same records);
/// every record a filter passes meets it; a salvage succeeds, copies every valid record, and
/// its copy opens and verifies sound, without a torn tail.
pub fn check_read_directory(data: &[u8]) {
    if data.len() > INPUT_BYTES_MAX {
        return;
    }
    let files = directory_files(data);
    let disk = MemStorage::new();
    for (name, contents) in &files {
        let file = disk.create(name).expect("create in memory");
        if !contents.is_empty() {
            file.write_all_at(contents, 0).expect("write in memory");
        }
    }
    let largest = files.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    let _limit = AllocationLimit::set(MAX_FRAME_LEN.max(largest));

    let Ok(reader) = Reader::open_storage(Arc::new(disk)) else {
        return;
    };
    let verification = reader
        .verify(&mut |_| {})
        .expect("verify reports damage as problems, not as an error");
    let sound = verification.problems.is_empty();
    let summary = reader.summary();
    let overview = reader.overview(5);
    assert_eq!(
        summary.is_ok(),
        sound,
        "summary {:?} vs verify {:?}",
        summary.as_ref().err().map(ToString::to_string),
        verification.problems
    );
    assert_eq!(overview.is_ok(), sound, "overview vs verify");

    let mut events = Vec::new();
    if let (Ok(summary), Ok(overview)) = (&summary, &overview) {
        let recovery = &summary.recovery;
        assert_eq!(*recovery, overview.recovery);
        assert_eq!(summary.records_by_kind, overview.records_by_kind);
        assert_eq!(summary.events_by_state, overview.events_by_state);
        let by_kind: u64 = summary.records_by_kind.iter().map(|(_, n)| n).sum();
        assert_eq!(by_kind, recovery.records);
        assert_eq!(verification.records, recovery.records);
        assert_eq!(verification.torn_bytes, recovery.torn_bytes);
        assert!(overview.events.len() <= 5);
        events = summary.events.clone();
        // What `afterlog events` lists: the same rows, selected on the index first.
        let listed = reader
            .events()
            .expect("the log scanned for the summary scans again");
        assert_eq!(listed, events, "events vs the summary's");
        if let Some(row) = events.first() {
            let filter = crate::reader::EventFilter {
                name: Some(row.name.clone()),
                limit: Some(3),
                ..Default::default()
            };
            let some = reader.events_where(&filter).expect("scans again");
            let expected = events.iter().filter(|e| e.name == row.name).take(3);
            assert!(
                some.iter().eq(expected),
                "a filtered listing vs the summary's rows"
            );
        }
    }

    // Histories of a few events the summary lists, and of ids it does not.
    for row in events.iter().take(4) {
        let history = reader
            .event_history(row.id)
            .expect("the log scanned for the summary scans again")
            .unwrap_or_else(|| panic!("event {} is listed but has no history", row.id));
        assert_eq!(
            history.row, *row,
            "event {} in its history vs the summary",
            row.id
        );
        assert_eq!(history.body.len() as u64, row.body_bytes);
    }
    for id in [1, 2, u64::MAX] {
        let _ = reader.event_history(EventId(id));
    }

    // Records through the command's filters: everything passed meets the filter.
    let first = events.first();
    let mut filters = vec![
        RecordFilter::default(),
        RecordFilter {
            kinds: vec![RecordKind::Publish, RecordKind::Retry, RecordKind::Drop],
            seq_from: Some(2),
            seq_until: Some(40),
            ..RecordFilter::default()
        },
        RecordFilter {
            time_from_ms: Some(1),
            time_until_ms: Some(i64::MAX / 2),
            ..RecordFilter::default()
        },
        RecordFilter {
            name: Some(first.map_or_else(|| "ev".to_owned(), |e| e.name.clone())),
            ..RecordFilter::default()
        },
        RecordFilter {
            event: Some(first.map_or(EventId(1), |e| e.id)),
            ..RecordFilter::default()
        },
    ];
    if let Some(job) = events.iter().find_map(|e| e.job) {
        filters.push(RecordFilter {
            job: Some(job),
            kinds: vec![RecordKind::Publish, RecordKind::Cancel],
            ..RecordFilter::default()
        });
    }
    let total = reader.segment_file_bytes();
    for (i, filter) in filters.iter().enumerate() {
        let mut passed = 0u64;
        let scanned = reader.records(filter, |pos, record| {
            passed += 1;
            assert!(reader.progress_bytes(pos) <= total, "progress past the end");
            assert!(filter.kinds.is_empty() || filter.kinds.contains(&record.kind()));
            assert!(filter.seq_from.is_none_or(|s| pos.seq >= s));
            assert!(filter.seq_until.is_none_or(|s| pos.seq <= s));
            let time = record_time_ms(record);
            assert!(filter.time_from_ms.is_none_or(|t| time >= t));
            assert!(filter.time_until_ms.is_none_or(|t| time <= t));
            Ok(())
        });
        assert_eq!(scanned.is_ok(), sound, "records vs verify");
        if i == 0
            && let Ok(recovery) = scanned
        {
            assert_eq!(
                passed, recovery.records,
                "the empty filter passes everything"
            );
        }
    }

    // A salvage copies every valid record into a directory that is sound.
    let out = MemStorage::new();
    let salvage = reader
        .salvage_into(Arc::new(out.clone()), SALVAGE_SEGMENT_BYTES, &mut |_| {})
        .unwrap_or_else(|e| panic!("salvage failed: {e}"));
    assert_eq!(
        salvage.records, verification.records,
        "salvage copies every valid record"
    );
    let copy = Reader::open_storage(Arc::new(out)).expect("the salvaged copy opens");
    let copied = copy.verify(&mut |_| {}).expect("verify the salvaged copy");
    assert!(
        copied.problems.is_empty() && copied.torn_at.is_none(),
        "the salvaged copy is not sound: {copied:?}"
    );
    assert_eq!(copied.records, salvage.records);
    let replayed = copy.summary().expect("the salvaged copy replays");
    // Ids continue above every id the original's segments say was allocated, damaged
    // segments included.
    let floors = files
        .iter()
        .filter(|(name, _)| crate::log::parse_segment_name(name).is_some())
        .filter_map(|(_, contents)| crate::format::decode_header(contents).ok())
        .fold((0, 0), |(e, j), h| {
            (e.max(h.event_id_floor), j.max(h.job_id_floor))
        });
    let recovery = &replayed.recovery;
    assert!(
        recovery.event_id_floor >= floors.0 && recovery.job_id_floor >= floors.1,
        "the salvaged copy's id floors {:?} are below the original's {floors:?}",
        (recovery.event_id_floor, recovery.job_id_floor)
    );
}
