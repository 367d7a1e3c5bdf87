//! The seal: the last frame of a sealed format-2 segment, which proves where the segment ends.
//!
//! ```text
//! frame header (20 bytes), kind 16, sync_delta 0, seq = the sequence number the next
//! segment's first record takes (the seal takes no number of its own)
//! payload (16 bytes):
//!      0     8  records   u64, frames before the seal in this segment
//!      8     8  data_len  u64, offset of the seal frame: header and frames before it
//! ```
//!
//! A sealed segment that lost bytes at its end, at a frame boundary or anywhere else, has no
//! valid seal at the offset its frames end: recovery reports it instead of reading a shorter
//! log. Compaction writes a new seal with the same sequence number after the frames it keeps.

use super::frame::{FRAME_HEADER_LEN, encode_frame};
use super::get_u64;
use super::record::RecordKind;

/// Payload bytes of a seal.
pub const SEAL_PAYLOAD_LEN: usize = 16;
/// Bytes a seal frame takes; every format-2 segment keeps room for one at its end.
pub const SEAL_FRAME_LEN: usize = FRAME_HEADER_LEN + SEAL_PAYLOAD_LEN;

/// A decoded seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    /// Frames before the seal.
    pub records: u64,
    /// Offset of the seal frame.
    pub data_len: u64,
}

/// Appends the seal frame of segment `segment_id` to `out`.
pub fn encode_seal(out: &mut Vec<u8>, segment_id: u64, seq: u64, seal: Seal) {
    let mut payload = [0u8; SEAL_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&seal.records.to_le_bytes());
    payload[8..].copy_from_slice(&seal.data_len.to_le_bytes());
    encode_frame(out, segment_id, seq, RecordKind::Seal, 0, &payload);
}

/// Decodes a seal's payload.
pub fn decode_seal(payload: &[u8]) -> Result<Seal, String> {
    if payload.len() != SEAL_PAYLOAD_LEN {
        return Err(format!(
            "seal payload is {} bytes, expected {SEAL_PAYLOAD_LEN}",
            payload.len()
        ));
    }
    Ok(Seal {
        records: get_u64(payload, 0),
        data_len: get_u64(payload, 8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::decode_frame;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        let seal = Seal {
            records: 7,
            data_len: 4000,
        };
        encode_seal(&mut out, 3, 99, seal);
        assert_eq!(out.len(), SEAL_FRAME_LEN);
        let frame = decode_frame(&out, 3).unwrap().unwrap();
        assert_eq!((frame.kind, frame.seq), (RecordKind::Seal, 99));
        assert_eq!(decode_seal(frame.payload), Ok(seal));
        assert!(decode_frame(&out, 4).is_err(), "another segment's seal");
    }
}
