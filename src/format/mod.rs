//! The on-disk format, byte for byte. `docs/FORMAT.md` is the specification; this module
//! mirrors it with named offset constants and compile-time size assertions.
//!
//! Everything is little-endian. Nothing here touches a file: encoders append to a `Vec<u8>`
//! and decoders read a byte slice (usually a memory map), so the codec can be fuzzed and
//! property-tested on its own.

mod frame;
mod header;
mod manifest;
mod record;
mod seal;

pub use frame::{
    FRAME_CRC_OFFSET, FRAME_HEADER_LEN, FRAME_KIND_OFFSET, FRAME_LEN_OFFSET, FRAME_SEQ_OFFSET,
    Frame, FrameError, MAX_FRAME_LEN, MAX_PAYLOAD_LEN, decode_frame, encode_frame, frame_crc,
};
pub use header::{
    FLAG_COMPACTED, FORMAT_VERSION, HEADER_CRC_OFFSET, HeaderError, MAGIC, MAX_SEGMENT_HEADER_LEN,
    SEGMENT_HEADER_LEN, SEGMENT_HEADER_LEN_V2, SegmentHeader, decode_header, encode_header,
    header_len,
};
pub use manifest::{
    MANIFEST_FILE, MANIFEST_SLOT_UNIT, MANIFEST_TEMP_FILE, MAX_MANIFEST_FILE_LEN, MAX_MANIFEST_LEN,
    MAX_MANIFEST_LIMITS, Manifest, ManifestFile, NameLimits, decode_manifest, decode_manifest_file, encode_manifest,
    encode_manifest_file, manifest_slot_len,
};
pub use record::{
    Ack, AckOutcome, Attempt, Cancel, CancelTarget, Drop, DropReason, EventEntry, EventIter,
    EventOptions, KEY_KEEP, KEY_NONE, KEY_REPLACE, KEY_REPLACE_BODY, MAX_KEY_LEN,
    MAX_MESSAGE_LEN, MAX_NAME_LEN, PUBLISH_ENTRY_FIXED_LEN, PUBLISH_FIXED_LEN,
    JobDone, PUBLISH_WITH_FIXED_LEN, Pause, Publish, PublishEntry, PurgeDead, Record, RecordError, RecordKind, Retry,
    CATCH_UP_ALL, CATCH_UP_LATEST, CATCH_UP_SKIP, MAX_SCHEDULE_ID_LEN, SCHEDULE_FIXED_LEN, ScheduleDef,
    clip_message, validate_key, validate_name,
};
pub use seal::{SEAL_FRAME_LEN, SEAL_PAYLOAD_LEN, Seal, decode_seal, encode_seal};

/// Reads a little-endian `u16` at `at`. Panics when out of bounds: callers check first.
#[inline]
pub fn get_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Reads a little-endian `u32` at `at`. The caller has checked the bounds.
#[inline]
pub fn get_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Reads a little-endian `u64` at `at`. The caller has checked the bounds.
#[inline]
pub fn get_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads a little-endian `i64` at `at`. The caller has checked the bounds.
#[inline]
pub fn get_i64(bytes: &[u8], at: usize) -> i64 {
    get_u64(bytes, at) as i64
}
