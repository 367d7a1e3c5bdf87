//! Compaction of one sealed segment: rewrite it without the records the caller no longer
//! needs, and swap the result in atomically.
//!
//! The swap protocol (docs/FORMAT.md, "Compaction"):
//! 1. write the header (flag `FLAG_COMPACTED`, same id, first sequence number and id floors)
//!    and the kept frames, byte for byte (their checksums stay valid: same segment id, same
//!    sequence numbers), to `<id>.seg.tmp`, and sync it;
//! 2. rename it over `<id>.seg` and sync the directory.
//!
//! A crash before the rename leaves the old segment and a temporary file that recovery
//! removes; after it, the new segment. A segment with nothing to keep is removed instead
//! (remove, sync the directory). Records keep their sequence numbers, so the log's order
//! does not change, and readers holding the old segment keep reading the old file.
//!
//! Architecture Invariant: compaction never writes to, truncates or shrinks an existing
//! segment file; it replaces or removes whole files, so a map of the old file stays valid.

use super::recovery::header_error;
use super::segment::{SegmentSlot, segment_name, temp_name};
use super::{Log, Position};
use crate::error::{Error, Result};
use crate::format::{
    FLAG_COMPACTED, Record, RecordKind, Seal, decode_frame, decode_header, encode_header,
    encode_seal,
};
use std::sync::Arc;

/// A sealed segment, as compaction chooses among them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedSegment {
    /// Its id.
    pub id: u64,
    /// Bytes of valid data, header included.
    pub data_len: u64,
}

/// The result of rewriting one segment, not yet visible to readers of this log: hand it to
/// [`Log::install_compacted`] (together with the new positions of whatever points into the
/// segment).
#[derive(Debug)]
pub struct Compacted {
    /// The segment.
    pub id: u64,
    /// Records read.
    pub records_before: u64,
    /// Records kept.
    pub records_kept: u64,
    /// Data bytes before (header included).
    pub bytes_before: u64,
    /// Data bytes after (0 when the segment was removed).
    pub bytes_after: u64,
    /// For each kept record, its old and new frame offset.
    pub moved: Vec<(u64, u64)>,
    slot: Option<Arc<SegmentSlot>>,
}

impl Compacted {
    /// True when nothing was kept and the segment file was removed.
    pub fn removed(&self) -> bool {
        self.slot.is_none()
    }
}

impl Log {
    /// The sealed segments (every segment but the one appended to), in id order.
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        self.shared
            .segments
            .all()
            .iter()
            .filter_map(|s| {
                s.sealed_len()
                    .map(|data_len| SealedSegment { id: s.id, data_len })
            })
            .collect()
    }

    /// Rewrites sealed segment `id` with only the records for which `keep` returns true, and
    /// swaps the new file in on disk (see the module doc). Readers of this `Log` keep seeing
    /// the old segment until [`install_compacted`](Log::install_compacted).
    pub fn compact_segment(
        &self,
        id: u64,
        keep: &mut dyn FnMut(Position, &Record<'_>) -> bool,
    ) -> Result<Compacted> {
        self.compact_segment_inner(id, keep, true)
    }

    fn compact_segment_inner(
        &self,
        id: u64,
        keep: &mut dyn FnMut(Position, &Record<'_>) -> bool,
        write: bool,
    ) -> Result<Compacted> {
        let storage = &*self.shared.storage;
        let path = storage.path().join(segment_name(id));
        let slot = self
            .shared
            .segments
            .get(id)
            .ok_or_else(|| Error::invalid(format!("no segment {id}")))?;
        let Some(data_len) = slot.sealed_len() else {
            return Err(Error::invalid(format!(
                "segment {id} is the active segment and cannot be compacted"
            )));
        };
        let bytes = slot.read(storage, 0, data_len as usize)?;
        let header = decode_header(&bytes).map_err(|e| header_error(path.clone(), e))?;
        let mut out = encode_header(&crate::format::SegmentHeader {
            flags: header.flags | FLAG_COMPACTED,
            ..header
        });
        let mut offset = header.len();
        let (mut records_before, mut moved) = (0u64, Vec::new());
        // The seal's sequence number: the compacted segment keeps it, so it still names the
        // number its successor starts at.
        let mut seal_seq = None;
        while offset < bytes.len() {
            let frame = match decode_frame(&bytes[offset..], id) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    return Err(Error::Corrupt {
                        file: path,
                        offset: offset as u64,
                        reason: e.to_string(),
                    });
                }
            };
            if frame.kind == RecordKind::Seal {
                seal_seq = Some(frame.seq);
                break;
            }
            let record = Record::decode_in(header.format_version, frame.kind, frame.payload)
                .map_err(|e| Error::Corrupt {
                file: path.clone(),
                offset: offset as u64,
                reason: e.to_string(),
            })?;
            records_before += 1;
            if keep(
                Position {
                    segment: id,
                    offset: offset as u64,
                    seq: frame.seq,
                },
                &record,
            ) {
                moved.push((offset as u64, out.len() as u64));
                out.extend_from_slice(&bytes[offset..offset + frame.len()]);
            }
            offset += frame.len();
        }
        let records_kept = moved.len() as u64;
        if header.has_seals() {
            let Some(seq) = seal_seq else {
                return Err(Error::Corrupt {
                    file: path,
                    offset: offset as u64,
                    reason: "the sealed segment has no seal".into(),
                });
            };
            let seal = Seal {
                records: records_kept,
                data_len: out.len() as u64,
            };
            encode_seal(&mut out, id, seq, seal);
        }
        if !write {
            return Ok(Compacted {
                id,
                records_before,
                records_kept,
                bytes_before: data_len,
                bytes_after: data_len,
                moved,
                slot: Some(slot),
            });
        }
        // Removing or renaming by name in a directory that is no longer ours would change
        // someone else's files: stop here, and poison the log, which has lost its lock.
        if let Err(e) = self.shared.check_lock() {
            self.shared.poison(e.to_string());
            return Err(e);
        }
        let io = |op, e| Error::io(op, &path, e);
        if records_kept == 0 {
            // Unlisted first: a crash before the file is gone leaves a leftover that recovery
            // removes, never a listed segment that is missing.
            self.shared.directory.remove_segment(storage, id)?;
            storage
                .remove(&segment_name(id))
                .map_err(|e| io("remove compacted segment", e))?;
            storage.sync_dir().map_err(|e| io("sync directory", e))?;
            return Ok(Compacted {
                id,
                records_before,
                records_kept,
                bytes_before: data_len,
                bytes_after: 0,
                moved,
                slot: None,
            });
        }
        let tmp = temp_name(id);
        if storage
            .list()
            .map_err(|e| io("list directory", e))?
            .contains(&tmp)
        {
            storage
                .remove(&tmp)
                .map_err(|e| io("remove stale temporary segment", e))?;
        }
        let file: Arc<dyn crate::storage::StorageFile> = Arc::from(
            storage
                .create(&tmp)
                .map_err(|e| io("create compacted segment", e))?,
        );
        file.write_all_at(&out, 0)
            .map_err(|e| io("write compacted segment", e))?;
        file.sync_data()
            .map_err(|e| io("sync compacted segment", e))?;
        storage
            .rename(&tmp, &segment_name(id))
            .map_err(|e| io("rename compacted segment", e))?;
        storage.sync_dir().map_err(|e| io("sync directory", e))?;
        let bytes_after = out.len() as u64;
        let new_slot = Arc::new(SegmentSlot::sealed(id, file, bytes_after, None));
        Ok(Compacted {
            id,
            records_before,
            records_kept,
            bytes_before: data_len,
            bytes_after,
            moved,
            slot: Some(new_slot),
        })
    }

    /// Visits every record of sealed segment `id` in order, without changing anything.
    pub fn visit_segment(
        &self,
        id: u64,
        visit: &mut dyn FnMut(Position, &Record<'_>),
    ) -> Result<()> {
        self.compact_segment_inner(
            id,
            &mut |pos, record| {
                visit(pos, record);
                false
            },
            false,
        )
        .map(|_| ())
    }

    /// Makes a compacted segment visible to readers of this log (the caller updates whatever
    /// positions point into it at the same moment, under its own lock).
    pub fn install_compacted(&self, compacted: &Compacted) {
        match &compacted.slot {
            Some(slot) => self.shared.segments.insert(slot.clone()),
            None => self.shared.segments.remove(compacted.id),
        }
    }

    /// A handle on segment `id` as it is now: reads through it keep seeing this version of
    /// the segment even if compaction replaces it meanwhile.
    pub fn segment_reader(&self, id: u64) -> Option<SegmentReader> {
        self.shared.segments.get(id).map(|slot| SegmentReader {
            slot,
            log: self.shared.clone(),
        })
    }
}

/// Reads records of one version of one segment (see [`Log::segment_reader`]).
pub struct SegmentReader {
    slot: Arc<SegmentSlot>,
    log: Arc<super::writer::Shared>,
}

impl SegmentReader {
    /// Reads the record whose frame starts at `offset`, verifying its checksum.
    pub fn read(&self, offset: u64) -> Result<super::RecordBytes> {
        super::read_frame(&*self.log.storage, &self.slot, offset)
    }
}
