//! The segment header: the first 64 (format 1) or 80 (format 2) bytes of every segment file.
//!
//! ```text
//! offset  size  field
//!      0     8  magic          b"AFTERLOG"
//!      8     4  format_version u32 (1 or 2)
//!     12     4  header_len     u32 (64 in format 1, 80 in format 2)
//!     16     8  segment_id     u64, equal to the number in the file name
//!     24     8  first_seq      u64, sequence number of the first record written here
//!     32     8  created_ms     i64, Unix epoch ms (informational)
//!     40     4  flags          u32, bit 0: written by compaction; other bits zero
//!     44     8  event_id_floor u64, every event id below it was allocated before this segment
//!     52     8  job_id_floor   u64, likewise for job ids
//! format 1:
//!     60     4  header_crc     u32, CRC-32 of bytes 0..60
//! format 2:
//!     60    16  directory_id   u128, the directory the segment belongs to (its MANIFEST's id)
//!     76     4  header_crc     u32, CRC-32 of bytes 0..76
//! ```

use super::{get_i64, get_u32, get_u64};

/// The first eight bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"AFTERLOG";
/// The format version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
/// Length of a format-1 segment header, the shortest there is: every header starts with
/// these bytes' fields, and `header_len` says how long it is.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Length of a format-2 segment header; records start right after it.
pub const SEGMENT_HEADER_LEN_V2: usize = 80;
/// The longest header any known version has.
pub const MAX_SEGMENT_HEADER_LEN: usize = SEGMENT_HEADER_LEN_V2;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const HEADER_LEN_OFFSET: usize = VERSION_OFFSET + 4;
const SEGMENT_ID_OFFSET: usize = HEADER_LEN_OFFSET + 4;
const FIRST_SEQ_OFFSET: usize = SEGMENT_ID_OFFSET + 8;
const CREATED_OFFSET: usize = FIRST_SEQ_OFFSET + 8;
const FLAGS_OFFSET: usize = CREATED_OFFSET + 8;
const EVENT_FLOOR_OFFSET: usize = FLAGS_OFFSET + 4;
const JOB_FLOOR_OFFSET: usize = EVENT_FLOOR_OFFSET + 8;
/// Offset of the format-1 header checksum, which covers every byte before it.
pub const HEADER_CRC_OFFSET: usize = JOB_FLOOR_OFFSET + 8;
const DIRECTORY_ID_OFFSET: usize = JOB_FLOOR_OFFSET + 8;
/// Offset of the format-2 header checksum.
pub const HEADER_CRC_OFFSET_V2: usize = DIRECTORY_ID_OFFSET + 16;

const _: () = assert!(HEADER_CRC_OFFSET == 60);
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SEGMENT_HEADER_LEN);
const _: () = assert!(HEADER_CRC_OFFSET_V2 + 4 == SEGMENT_HEADER_LEN_V2);

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
    /// The directory the segment belongs to (format 2); 0 in format 1, which has none.
    pub directory_id: u128,
}

impl SegmentHeader {
    /// Bytes the header occupies: records start here.
    pub fn len(&self) -> usize {
        header_len(self.format_version)
    }

    /// A header is never empty; present for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when the segment proves its own end with a seal frame once sealed (format 2).
    pub fn has_seals(&self) -> bool {
        self.format_version >= 2
    }
}

/// The header length of format `version` (a known one).
pub fn header_len(version: u32) -> usize {
    if version >= 2 {
        SEGMENT_HEADER_LEN_V2
    } else {
        SEGMENT_HEADER_LEN
    }
}

/// Why a header did not decode. The caller adds the file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than the header needs.
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

/// Encodes `header` in the layout of its `format_version`: `header.len()` bytes.
pub fn encode_header(header: &SegmentHeader) -> Vec<u8> {
    let mut b = vec![0u8; header.len()];
    b[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&MAGIC);
    b[VERSION_OFFSET..HEADER_LEN_OFFSET].copy_from_slice(&header.format_version.to_le_bytes());
    b[HEADER_LEN_OFFSET..SEGMENT_ID_OFFSET].copy_from_slice(&(header.len() as u32).to_le_bytes());
    b[SEGMENT_ID_OFFSET..FIRST_SEQ_OFFSET].copy_from_slice(&header.segment_id.to_le_bytes());
    b[FIRST_SEQ_OFFSET..CREATED_OFFSET].copy_from_slice(&header.first_seq.to_le_bytes());
    b[CREATED_OFFSET..FLAGS_OFFSET].copy_from_slice(&header.created_ms.to_le_bytes());
    b[FLAGS_OFFSET..EVENT_FLOOR_OFFSET].copy_from_slice(&header.flags.to_le_bytes());
    b[EVENT_FLOOR_OFFSET..JOB_FLOOR_OFFSET].copy_from_slice(&header.event_id_floor.to_le_bytes());
    b[JOB_FLOOR_OFFSET..HEADER_CRC_OFFSET].copy_from_slice(&header.job_id_floor.to_le_bytes());
    let crc_at = if header.has_seals() {
        b[DIRECTORY_ID_OFFSET..HEADER_CRC_OFFSET_V2]
            .copy_from_slice(&header.directory_id.to_le_bytes());
        HEADER_CRC_OFFSET_V2
    } else {
        HEADER_CRC_OFFSET
    };
    let crc = crc32fast::hash(&b[..crc_at]);
    b[crc_at..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and checks a segment header from the start of `bytes` (which may hold more).
pub fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Short { len: bytes.len() });
    }
    let head = &bytes[..SEGMENT_HEADER_LEN];
    if head.iter().all(|&x| x == 0) {
        return Err(HeaderError::Zeroed);
    }
    if head[MAGIC_OFFSET..VERSION_OFFSET] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    // The version decides the length, and so where the checksum is: a version this build
    // does not know is refused before anything else is trusted.
    let format_version = get_u32(head, VERSION_OFFSET);
    if format_version == 0 || format_version > FORMAT_VERSION {
        return Err(HeaderError::Version {
            found: format_version,
        });
    }
    let len = header_len(format_version);
    let Some(b) = bytes.get(..len) else {
        return Err(HeaderError::Short { len: bytes.len() });
    };
    let crc_at = len - 4;
    let expected = get_u32(b, crc_at);
    let found = crc32fast::hash(&b[..crc_at]);
    if expected != found {
        return Err(HeaderError::Checksum { expected, found });
    }
    let header_len_field = get_u32(b, HEADER_LEN_OFFSET);
    if header_len_field as usize != len {
        return Err(HeaderError::Invalid {
            reason: format!(
                "header_len is {header_len_field}, expected {len} for format {format_version}"
            ),
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
        directory_id: if format_version >= 2 {
            u128::from_le_bytes(
                b[DIRECTORY_ID_OFFSET..HEADER_CRC_OFFSET_V2]
                    .try_into()
                    .expect("16 bytes"),
            )
        } else {
            0
        },
    })
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short { len } => {
                write!(f, "segment header is cut short: {len} bytes")
            }
            HeaderError::Zeroed => write!(f, "segment header is all zeros"),
            HeaderError::BadMagic => write!(f, "not an afterlog segment (bad magic)"),
            HeaderError::Checksum { expected, found } => write!(
                f,
                "segment header checksum mismatch: stored {expected:#010x}, computed {found:#010x}"
            ),
            HeaderError::Version { found } => write!(
                f,
                "unsupported format version {found} (this build reads 1 to {FORMAT_VERSION})"
            ),
            HeaderError::Invalid { reason } => write!(f, "invalid segment header: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentHeader {
        SegmentHeader {
            format_version: 2,
            segment_id: 7,
            first_seq: 1234,
            created_ms: 1_700_000_000_000,
            flags: 0,
            event_id_floor: 99,
            job_id_floor: 5,
            directory_id: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        }
    }

    fn sample_v1() -> SegmentHeader {
        SegmentHeader {
            format_version: 1,
            directory_id: 0,
            ..sample()
        }
    }

    #[test]
    fn round_trip() {
        for h in [sample(), sample_v1()] {
            let bytes = encode_header(&h);
            assert_eq!(bytes.len(), h.len());
            assert_eq!(decode_header(&bytes), Ok(h));
        }
        assert_eq!(sample().len(), 80);
        assert_eq!(sample_v1().len(), 64);
    }

    #[test]
    fn every_bit_flip_is_detected() {
        for h in [sample(), sample_v1()] {
            let bytes = encode_header(&h);
            for bit in 0..h.len() * 8 {
                let mut b = bytes.clone();
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    decode_header(&b).is_err(),
                    "flip of bit {bit} was not detected (format {})",
                    h.format_version
                );
            }
        }
    }

    #[test]
    fn a_cut_v2_header_and_a_newer_version_are_refused() {
        let bytes = encode_header(&sample());
        for len in 0..80 {
            assert!(decode_header(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut newer = bytes.clone();
        newer[8] = 3;
        assert_eq!(
            decode_header(&newer),
            Err(HeaderError::Version { found: 3 })
        );
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
