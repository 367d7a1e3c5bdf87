//! The record frame: what every record looks like inside a segment.
//!
//! ```text
//! offset  size  field
//!      0     4  length      u32, payload length in bytes, 1..=MAX_PAYLOAD_LEN; 0 = end of data
//!      4     4  crc         u32, CRC-32 (IEEE) of: segment_id as u64 LE, bytes 0..4, bytes 8..20+length
//!      8     8  seq         u64, the record's sequence number, strictly increasing in a segment
//!     16     1  kind        u8, a `RecordKind`
//!     17     1  flags       u8, zero (reserved)
//!     18     2  sync_delta  u16, seq minus the seq of the first record of the same sync group
//!     20     …  payload     `length` bytes, laid out by kind (see record.rs)
//! ```
//!
//! The checksum covers the length (a flipped length bit cannot send a reader to a "valid"
//! record elsewhere), the sequence number and the segment id (a stale record from an earlier
//! use of a file, or a record copied into the wrong file, fails).

use super::get_u16;
use super::get_u32;
use super::get_u64;
use super::record::RecordKind;

/// Bytes before the payload.
pub const FRAME_HEADER_LEN: usize = 20;
/// The largest frame, header included (256 KiB): "body plus metadata under 256 KB".
pub const MAX_FRAME_LEN: usize = 256 * 1024;
/// The largest payload.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - FRAME_HEADER_LEN;

/// Offset of the payload length.
pub const FRAME_LEN_OFFSET: usize = 0;
/// Offset of the checksum.
pub const FRAME_CRC_OFFSET: usize = FRAME_LEN_OFFSET + 4;
/// Offset of the sequence number.
pub const FRAME_SEQ_OFFSET: usize = FRAME_CRC_OFFSET + 4;
/// Offset of the record kind.
pub const FRAME_KIND_OFFSET: usize = FRAME_SEQ_OFFSET + 8;
const FRAME_FLAGS_OFFSET: usize = FRAME_KIND_OFFSET + 1;
const FRAME_SYNC_DELTA_OFFSET: usize = FRAME_FLAGS_OFFSET + 1;

const _: () = assert!(FRAME_SYNC_DELTA_OFFSET + 2 == FRAME_HEADER_LEN);
const _: () = assert!(MAX_PAYLOAD_LEN == 262_124);

/// A decoded frame, borrowing its payload from the segment bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's kind.
    pub kind: RecordKind,
    /// `seq` minus the first seq of the sync group the record was written in.
    pub sync_delta: u16,
    /// The payload, laid out by `kind`.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Total bytes the frame occupies in the segment.
    pub fn len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload.len()
    }

    /// A frame is never empty; present for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why no frame could be decoded at an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The frame header or payload runs past the end of the bytes given.
    Truncated {
        /// Bytes the frame needs from its offset.
        needed: usize,
        /// Bytes available from its offset.
        available: usize,
    },
    /// The length field exceeds `MAX_PAYLOAD_LEN`.
    TooLong {
        /// The length found.
        length: u32,
    },
    /// The checksum does not match.
    Checksum {
        /// Checksum stored in the frame.
        expected: u32,
        /// Checksum computed over the frame.
        found: u32,
    },
    /// The checksum matches but the kind byte is not one this build knows.
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// The checksum matches but the reserved flags byte is not zero.
    BadFlags {
        /// The flags byte.
        flags: u8,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { needed, available } => {
                write!(f, "frame needs {needed} bytes, {available} remain")
            }
            FrameError::TooLong { length } => {
                write!(
                    f,
                    "frame length {length} exceeds the maximum {MAX_PAYLOAD_LEN}"
                )
            }
            FrameError::Checksum { expected, found } => {
                write!(
                    f,
                    "frame checksum mismatch: stored {expected:#010x}, computed {found:#010x}"
                )
            }
            FrameError::UnknownKind { kind } => write!(f, "unknown record kind {kind}"),
            FrameError::BadFlags { flags } => write!(f, "reserved frame flags are {flags:#04x}"),
        }
    }
}

/// The checksum of a frame whose header (with any value in the crc field) and payload are
/// `frame`, written in segment `segment_id`.
pub fn frame_crc(segment_id: u64, frame: &[u8]) -> u32 {
    debug_assert!(
        frame.len() >= FRAME_HEADER_LEN,
        "frame of {} bytes",
        frame.len()
    );
    let mut h = crc32fast::Hasher::new();
    h.update(&segment_id.to_le_bytes());
    h.update(&frame[FRAME_LEN_OFFSET..FRAME_CRC_OFFSET]);
    h.update(&frame[FRAME_SEQ_OFFSET..]);
    h.finalize()
}

/// Appends one frame holding `payload` to `out`. The payload must be 1..=MAX_PAYLOAD_LEN
/// bytes; callers validate sizes before anything reaches the writer.
pub fn encode_frame(
    out: &mut Vec<u8>,
    segment_id: u64,
    seq: u64,
    kind: RecordKind,
    sync_delta: u16,
    payload: &[u8],
) {
    assert!(
        !payload.is_empty() && payload.len() <= MAX_PAYLOAD_LEN,
        "payload of {} bytes outside 1..={MAX_PAYLOAD_LEN}",
        payload.len()
    );
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&sync_delta.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = frame_crc(segment_id, &out[start..]);
    out[start + FRAME_CRC_OFFSET..start + FRAME_SEQ_OFFSET].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frame at the start of `bytes`.
///
/// `Ok(None)` means a zero length: the end of data. Nothing is allocated: the payload is a
/// slice of `bytes`, and the length is checked against both `MAX_PAYLOAD_LEN` and the bytes
/// available before it is used.
pub fn decode_frame(bytes: &[u8], segment_id: u64) -> Result<Option<Frame<'_>>, FrameError> {
    if bytes.len() < 4 {
        // Fewer than four bytes cannot hold a length; all zeros is the end of data.
        return if bytes.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Err(FrameError::Truncated {
                needed: FRAME_HEADER_LEN,
                available: bytes.len(),
            })
        };
    }
    let length = get_u32(bytes, FRAME_LEN_OFFSET);
    if length == 0 {
        return Ok(None);
    }
    if length as usize > MAX_PAYLOAD_LEN {
        return Err(FrameError::TooLong { length });
    }
    let needed = FRAME_HEADER_LEN + length as usize;
    if bytes.len() < needed {
        return Err(FrameError::Truncated {
            needed,
            available: bytes.len(),
        });
    }
    let frame = &bytes[..needed];
    let expected = get_u32(frame, FRAME_CRC_OFFSET);
    let found = frame_crc(segment_id, frame);
    if expected != found {
        return Err(FrameError::Checksum { expected, found });
    }
    let kind_byte = frame[FRAME_KIND_OFFSET];
    let kind = RecordKind::from_u8(kind_byte).ok_or(FrameError::UnknownKind { kind: kind_byte })?;
    let flags = frame[FRAME_FLAGS_OFFSET];
    if flags != 0 {
        return Err(FrameError::BadFlags { flags });
    }
    Ok(Some(Frame {
        seq: get_u64(frame, FRAME_SEQ_OFFSET),
        kind,
        sync_delta: get_u16(frame, FRAME_SYNC_DELTA_OFFSET),
        payload: &frame[FRAME_HEADER_LEN..],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_end_of_data() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 3, 42, RecordKind::Ack, 5, b"hello world");
        buf.extend_from_slice(&[0; 32]);
        let f = decode_frame(&buf, 3).unwrap().unwrap();
        assert_eq!(
            (f.seq, f.kind, f.sync_delta, f.payload),
            (42, RecordKind::Ack, 5, &b"hello world"[..])
        );
        assert_eq!(decode_frame(&buf[f.len()..], 3), Ok(None));
    }

    #[test]
    fn wrong_segment_fails_checksum() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 3, 42, RecordKind::Ack, 0, b"x");
        assert!(matches!(
            decode_frame(&buf, 4),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 9, 1, RecordKind::Cancel, 0, b"0123456789abcdefg");
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            match decode_frame(&b, 9) {
                Ok(Some(f)) => panic!("flip of bit {bit} decoded as {f:?}"),
                // A flip that zeroes the length reads as end of data; recovery then finds
                // the non-zero bytes after it.
                Ok(None) => assert!(bit < 32, "flip of bit {bit} read as end of data"),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn huge_length_is_rejected_before_use() {
        let mut b = vec![0xff; 64];
        b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_frame(&b, 0),
            Err(FrameError::TooLong { length: u32::MAX })
        );
    }
}
