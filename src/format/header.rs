//! The segment header: the first 64 bytes of every segment file.
//!
//! ```text
//! offset  size  field
//!      0     8  magic          b"AFTERLOG"
//!      8     4  format_version u32 (1)
//!     12     4  header_len     u32 (64)
//!     16     8  segment_id     u64, equal to the number in the file name
//!     24     8  first_seq      u64, sequence number of the first record written here
//!     32     8  created_ms     i64, Unix epoch ms (informational)
//!     40     4  flags          u32, bit 0: written by compaction; other bits zero
//!     44     8  event_id_floor u64, every event id below it was allocated before this segment
//!     52     8  job_id_floor   u64, likewise for job ids
//!     60     4  header_crc     u32, CRC-32 of bytes 0..60
//! ```

use super::{get_i64, get_u32, get_u64};

/// The first eight bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"AFTERLOG";
/// The format version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header; records start right after it.
pub const SEGMENT_HEADER_LEN: usize = 64;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const HEADER_LEN_OFFSET: usize = VERSION_OFFSET + 4;
const SEGMENT_ID_OFFSET: usize = HEADER_LEN_OFFSET + 4;
const FIRST_SEQ_OFFSET: usize = SEGMENT_ID_OFFSET + 8;
const CREATED_OFFSET: usize = FIRST_SEQ_OFFSET + 8;
const FLAGS_OFFSET: usize = CREATED_OFFSET + 8;
const EVENT_FLOOR_OFFSET: usize = FLAGS_OFFSET + 4;
const JOB_FLOOR_OFFSET: usize = EVENT_FLOOR_OFFSET + 8;
/// Offset of the header checksum, which covers every byte before it.
pub const HEADER_CRC_OFFSET: usize = JOB_FLOOR_OFFSET + 8;

const _: () = assert!(HEADER_CRC_OFFSET == 60);
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SEGMENT_HEADER_LEN);

/// Flag bit: the segment was written by compaction (its records keep their original, possibly
/// non-contiguous, sequence numbers).
pub const FLAG_COMPACTED: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_COMPACTED;

/// The decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version the segment was written with.
    pub format_version: u32,
    /// The segment's number; equals the number in its file name.
    pub segment_id: u64,
    /// Sequence number of the first record in the segment.
    pub first_seq: u64,
    /// When the segment was created, Unix epoch ms.
    pub created_ms: i64,
    /// Flag bits (see `FLAG_COMPACTED`).
    pub flags: u32,
    /// Every event id below this was allocated before the segment was created, so ids
    /// continue above it after recovery even when compaction removed every record naming them.
    pub event_id_floor: u64,
    /// Likewise for job ids.
    pub job_id_floor: u64,
}

/// Why a header did not decode. The caller adds the file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than `SEGMENT_HEADER_LEN` bytes.
    Short {
        /// Bytes present.
        len: usize,
    },
    /// Every byte is zero: the file was created but its header never reached the disk.
    Zeroed,
    /// The magic bytes are wrong: not an afterlog segment.
    BadMagic,
    /// The checksum does not match.
    Checksum {
        /// Checksum stored in the header.
        expected: u32,
        /// Checksum computed over it.
        found: u32,
    },
    /// A version this build cannot read.
    Version {
        /// The version found.
        found: u32,
    },
    /// A field holds a value the format forbids.
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// Encodes `header` into its 64 bytes.
pub fn encode_header(header: &SegmentHeader) -> [u8; SEGMENT_HEADER_LEN] {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    b[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&MAGIC);
    b[VERSION_OFFSET..HEADER_LEN_OFFSET].copy_from_slice(&header.format_version.to_le_bytes());
    b[HEADER_LEN_OFFSET..SEGMENT_ID_OFFSET]
        .copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
    b[SEGMENT_ID_OFFSET..FIRST_SEQ_OFFSET].copy_from_slice(&header.segment_id.to_le_bytes());
    b[FIRST_SEQ_OFFSET..CREATED_OFFSET].copy_from_slice(&header.first_seq.to_le_bytes());
    b[CREATED_OFFSET..FLAGS_OFFSET].copy_from_slice(&header.created_ms.to_le_bytes());
    b[FLAGS_OFFSET..EVENT_FLOOR_OFFSET].copy_from_slice(&header.flags.to_le_bytes());
    b[EVENT_FLOOR_OFFSET..JOB_FLOOR_OFFSET].copy_from_slice(&header.event_id_floor.to_le_bytes());
    b[JOB_FLOOR_OFFSET..HEADER_CRC_OFFSET].copy_from_slice(&header.job_id_floor.to_le_bytes());
    let crc = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
    b[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and checks a segment header from the start of `bytes`.
pub fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Short { len: bytes.len() });
    }
    let b = &bytes[..SEGMENT_HEADER_LEN];
    if b.iter().all(|&x| x == 0) {
        return Err(HeaderError::Zeroed);
    }
    if b[MAGIC_OFFSET..VERSION_OFFSET] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let expected = get_u32(b, HEADER_CRC_OFFSET);
    let found = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
    if expected != found {
        return Err(HeaderError::Checksum { expected, found });
    }
    let format_version = get_u32(b, VERSION_OFFSET);
    if format_version == 0 || format_version > FORMAT_VERSION {
        return Err(HeaderError::Version {
            found: format_version,
        });
    }
    let header_len = get_u32(b, HEADER_LEN_OFFSET);
    if header_len as usize != SEGMENT_HEADER_LEN {
        return Err(HeaderError::Invalid {
            reason: format!("header_len is {header_len}, expected 64"),
        });
    }
    let flags = get_u32(b, FLAGS_OFFSET);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(HeaderError::Invalid {
            reason: format!("unknown flag bits {flags:#x}"),
        });
    }
    Ok(SegmentHeader {
        format_version,
        segment_id: get_u64(b, SEGMENT_ID_OFFSET),
        first_seq: get_u64(b, FIRST_SEQ_OFFSET),
        created_ms: get_i64(b, CREATED_OFFSET),
        flags,
        event_id_floor: get_u64(b, EVENT_FLOOR_OFFSET),
        job_id_floor: get_u64(b, JOB_FLOOR_OFFSET),
    })
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short { len } => write!(f, "segment header is {len} bytes, expected 64"),
            HeaderError::Zeroed => write!(f, "segment header is all zeros"),
            HeaderError::BadMagic => write!(f, "not an afterlog segment (bad magic)"),
            HeaderError::Checksum { expected, found } => write!(
                f,
                "segment header checksum mismatch: stored {expected:#010x}, computed {found:#010x}"
            ),
            HeaderError::Version { found } => write!(f, "unsupported format version {found}"),
            HeaderError::Invalid { reason } => write!(f, "invalid segment header: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentHeader {
        SegmentHeader {
            format_version: 1,
            segment_id: 7,
            first_seq: 1234,
            created_ms: 1_700_000_000_000,
            flags: 0,
            event_id_floor: 99,
            job_id_floor: 5,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(decode_header(&encode_header(&h)), Ok(h));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = encode_header(&sample());
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_header(&b).is_err(),
                "flip of bit {bit} was not detected"
            );
        }
    }

    #[test]
    fn zeroed_and_short() {
        assert_eq!(decode_header(&[0u8; 64]), Err(HeaderError::Zeroed));
        assert_eq!(
            decode_header(&[0u8; 10]),
            Err(HeaderError::Short { len: 10 })
        );
    }
}
