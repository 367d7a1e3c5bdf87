//! The manifest: the file `MANIFEST` that names a format-2 directory and lists its segments.
//!
//! The file holds two slots of `slot_len` bytes each (the file is `2 × slot_len` bytes,
//! `slot_len` a multiple of 4,096), and each slot holds one encoded manifest padded with
//! zeros. The valid slot with the larger generation is the manifest; a rewrite goes into the
//! other slot, in place, so it needs no new disk space (compaction rewrites the manifest to
//! free space on a full disk) and a torn write leaves the previous manifest in force.
//!
//! A slot:
//!
//! ```text
//! offset  size  field
//!      0     8  magic          b"AFTERMAN"
//!      8     4  format_version u32 (2)
//!     12     4  length         u32, bytes of the whole file
//!     16    16  directory_id   u128, non-zero, random, chosen when the directory was made
//!     32     8  generation     u64, 1 for the first manifest, one more at each rewrite
//!     40     8  retention_ms   u64, the engine's retention; 0 = not recorded
//!     48     8  segment_bytes  u64, the writer's segment size; 0 = not recorded
//!     56     4  segment_count  u32, at most MAX_MANIFEST_SEGMENTS
//!     60  8×n   segment ids    u64 each, strictly increasing
//!    …      4  limit_count    u32, at most MAX_MANIFEST_LIMITS (absent: not recorded)
//!    …      …  limits         limit_count of: name_len u8, concurrency u32 (0 = none),
//!                             rate u32 (0 = none), rate_per_ms u64, name
//!    …      4  crc            u32, CRC-32 of every byte before it
//! ```
//!
//! A manifest too long for a slot is written into a new file with larger slots (written as
//! `MANIFEST.tmp`, synced, renamed over `MANIFEST`, directory synced). A segment listed here
//! that is missing is lost synced data; a segment whose header names another directory is
//! foreign.

use super::{get_u32, get_u64};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// The name a new manifest is written under before it replaces the old one.
pub const MANIFEST_TEMP_FILE: &str = "MANIFEST.tmp";
const MAGIC: [u8; 8] = *b"AFTERMAN";
const VERSION: u32 = 2;
const FIXED_LEN: usize = 60;
/// The most segments a manifest lists (a terabyte of 1 MiB segments).
pub const MAX_MANIFEST_SEGMENTS: usize = 1 << 20;
/// The most flow limits a manifest records (and an engine accepts).
pub const MAX_MANIFEST_LIMITS: usize = 4096;
/// The fixed bytes of one recorded limit, before its name.
const LIMIT_FIXED_LEN: usize = 17;
/// The largest encoded manifest.
pub const MAX_MANIFEST_LEN: usize = FIXED_LEN
    + 8 * MAX_MANIFEST_SEGMENTS
    + 4
    + MAX_MANIFEST_LIMITS * (LIMIT_FIXED_LEN + super::MAX_NAME_LEN)
    + 4;
/// Slots are a multiple of this many bytes.
pub const MANIFEST_SLOT_UNIT: usize = 4096;
/// The largest manifest file: a reader refuses a longer one before reading it.
pub const MAX_MANIFEST_FILE_LEN: usize =
    2 * MAX_MANIFEST_LEN.div_ceil(MANIFEST_SLOT_UNIT) * MANIFEST_SLOT_UNIT;

/// The slot length for a manifest of `encoded_len` bytes: room for it and as many again, so
/// that the file is rarely replaced as the directory grows.
pub fn manifest_slot_len(encoded_len: usize) -> usize {
    (2 * encoded_len).div_ceil(MANIFEST_SLOT_UNIT).max(1) * MANIFEST_SLOT_UNIT
}

/// A manifest file's contents, decoded: the manifest in force, which slot holds it, and the
/// slot length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// The manifest of the valid slot with the larger generation.
    pub manifest: Manifest,
    /// 0 or 1.
    pub slot: usize,
    /// Bytes per slot.
    pub slot_len: usize,
}

/// A new manifest file of two slots: `manifest` in slot 0, slot 1 empty.
pub fn encode_manifest_file(manifest: &Manifest) -> Vec<u8> {
    let mut bytes = encode_manifest(manifest);
    let slot_len = manifest_slot_len(bytes.len());
    bytes.resize(2 * slot_len, 0);
    bytes
}

/// Decodes a manifest file: the valid slot with the larger generation wins (a torn or failed
/// rewrite of one slot leaves the other). Errors when neither slot is valid.
pub fn decode_manifest_file(b: &[u8]) -> Result<ManifestFile, String> {
    if b.is_empty()
        || !b.len().is_multiple_of(2 * MANIFEST_SLOT_UNIT)
        || b.len() > MAX_MANIFEST_FILE_LEN
    {
        return Err(format!(
            "manifest file is {} bytes, not two slots of a multiple of {MANIFEST_SLOT_UNIT}",
            b.len()
        ));
    }
    let slot_len = b.len() / 2;
    let decode_slot = |slot: usize| {
        let bytes = &b[slot * slot_len..(slot + 1) * slot_len];
        if bytes.len() < FIXED_LEN {
            return Err("slot too short".to_string());
        }
        let len = get_u32(bytes, 12) as usize;
        match bytes.get(..len) {
            Some(encoded) => decode_manifest(encoded),
            None => Err(format!("slot says {len} bytes, the slot holds {slot_len}")),
        }
    };
    match (decode_slot(0), decode_slot(1)) {
        (Ok(a), Ok(b)) if b.generation > a.generation => Ok(ManifestFile {
            manifest: b,
            slot: 1,
            slot_len,
        }),
        (Ok(a), _) => Ok(ManifestFile {
            manifest: a,
            slot: 0,
            slot_len,
        }),
        (Err(_), Ok(b)) => Ok(ManifestFile {
            manifest: b,
            slot: 1,
            slot_len,
        }),
        (Err(e), Err(_)) => Err(format!("no valid manifest in either slot: {e}")),
    }
}

/// The decoded manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The directory's id, carried by every format-2 segment header.
    pub directory_id: u128,
    /// How many manifests were written before this one, plus one.
    pub generation: u64,
    /// The retention the engine last opened the directory with, in ms.
    pub retention_ms: Option<u64>,
    /// The segment size the writer last used.
    pub segment_bytes: Option<u64>,
    /// Every segment of the directory, in id order.
    pub segments: Vec<u64>,
    /// The concurrency and rate limits the engine last opened with, by name; `None` when
    /// not recorded (a manifest written by a tool, or before limits were recorded).
    pub limits: Option<Vec<NameLimits>>,
}

/// The flow limits of one event name, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NameLimits {
    /// The event name (1 to 255 bytes).
    pub name: String,
    /// Most attempts of the name at once.
    pub concurrency: Option<u32>,
    /// Most attempts started per period: (`n`, period in ms).
    pub rate: Option<(u32, u64)>,
}

/// Encodes `manifest`.
pub fn encode_manifest(manifest: &Manifest) -> Vec<u8> {
    assert!(manifest.segments.len() <= MAX_MANIFEST_SEGMENTS);
    let limits_len = manifest.limits.as_ref().map_or(0, |limits| {
        assert!(limits.len() <= MAX_MANIFEST_LIMITS);
        4 + limits
            .iter()
            .map(|l| LIMIT_FIXED_LEN + l.name.len())
            .sum::<usize>()
    });
    let len = FIXED_LEN + 8 * manifest.segments.len() + limits_len + 4;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(len as u32).to_le_bytes());
    b.extend_from_slice(&manifest.directory_id.to_le_bytes());
    b.extend_from_slice(&manifest.generation.to_le_bytes());
    b.extend_from_slice(&manifest.retention_ms.unwrap_or(0).to_le_bytes());
    b.extend_from_slice(&manifest.segment_bytes.unwrap_or(0).to_le_bytes());
    b.extend_from_slice(&(manifest.segments.len() as u32).to_le_bytes());
    for id in &manifest.segments {
        b.extend_from_slice(&id.to_le_bytes());
    }
    if let Some(limits) = &manifest.limits {
        b.extend_from_slice(&(limits.len() as u32).to_le_bytes());
        for l in limits {
            let name_len = u8::try_from(l.name.len()).expect("a name is at most 255 bytes");
            assert!(name_len > 0, "a name is at least one byte");
            b.push(name_len);
            b.extend_from_slice(&l.concurrency.unwrap_or(0).to_le_bytes());
            let (n, per_ms) = l.rate.unwrap_or((0, 0));
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&per_ms.to_le_bytes());
            b.extend_from_slice(l.name.as_bytes());
        }
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(b.len(), len);
    b
}

/// Decodes and checks a manifest.
pub fn decode_manifest(b: &[u8]) -> Result<Manifest, String> {
    if b.len() < FIXED_LEN + 4 {
        return Err(format!("manifest is {} bytes, too short", b.len()));
    }
    if b[..8] != MAGIC {
        return Err("not an afterlog manifest (bad magic)".into());
    }
    let version = get_u32(b, 8);
    if version != VERSION {
        return Err(format!("unsupported manifest version {version}"));
    }
    let len = get_u32(b, 12) as usize;
    if len != b.len() {
        return Err(format!(
            "manifest says it is {len} bytes, the file holds {}",
            b.len()
        ));
    }
    let expected = get_u32(b, len - 4);
    let found = crc32fast::hash(&b[..len - 4]);
    if expected != found {
        return Err(format!(
            "manifest checksum mismatch: stored {expected:#010x}, computed {found:#010x}"
        ));
    }
    let directory_id = u128::from_le_bytes(b[16..32].try_into().expect("16 bytes"));
    if directory_id == 0 {
        return Err("manifest directory id is 0".into());
    }
    let count = get_u32(b, 56) as usize;
    let limits_at = FIXED_LEN + 8 * count;
    if count > MAX_MANIFEST_SEGMENTS || limits_at + 4 > len {
        return Err(format!("manifest lists {count} segments in {len} bytes"));
    }
    let segments: Vec<u64> = (0..count).map(|i| get_u64(b, FIXED_LEN + 8 * i)).collect();
    if segments.windows(2).any(|w| w[0] >= w[1]) || segments.first() == Some(&0) {
        return Err("manifest segment ids are not increasing".into());
    }
    let limits = if limits_at + 4 == len {
        None
    } else {
        Some(decode_limits(&b[limits_at..len - 4])?)
    };
    let known = |v: u64| (v != 0).then_some(v);
    Ok(Manifest {
        directory_id,
        generation: get_u64(b, 32),
        retention_ms: known(get_u64(b, 40)),
        segment_bytes: known(get_u64(b, 48)),
        segments,
        limits,
    })
}

/// Decodes the limits section (count and entries), which must fill `b` exactly.
fn decode_limits(b: &[u8]) -> Result<Vec<NameLimits>, String> {
    let bad = |why: &str| Err(format!("manifest limits: {why}"));
    if b.len() < 4 {
        return bad("section too short");
    }
    let count = get_u32(b, 0) as usize;
    if count > MAX_MANIFEST_LIMITS {
        return bad(&format!("{count} names, more than {MAX_MANIFEST_LIMITS}"));
    }
    let mut limits: Vec<NameLimits> = Vec::with_capacity(count);
    let mut at = 4;
    for _ in 0..count {
        let Some(&name_len) = b.get(at) else {
            return bad("entry past the end");
        };
        let name_at = at + LIMIT_FIXED_LEN;
        let Some(name) = b.get(name_at..name_at + usize::from(name_len)) else {
            return bad("entry past the end");
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return bad("name is not UTF-8");
        };
        if name.is_empty() || limits.last().is_some_and(|l| l.name.as_str() >= name) {
            return bad("names are not increasing");
        }
        let known = |v: u32| (v != 0).then_some(v);
        let (n, per_ms) = (get_u32(b, at + 5), get_u64(b, at + 9));
        if (n == 0) != (per_ms == 0) {
            return bad("a rate with a zero count or period");
        }
        limits.push(NameLimits {
            name: name.to_owned(),
            concurrency: known(get_u32(b, at + 1)),
            rate: known(n).map(|n| (n, per_ms)),
        });
        at = name_at + usize::from(name_len);
    }
    if at != b.len() {
        return bad("bytes after the last entry");
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            directory_id: 0xfeed_beef << 64 | 42,
            generation: 3,
            retention_ms: Some(30 * 86_400_000),
            segment_bytes: Some(1 << 20),
            segments: vec![2, 3, 7],
            limits: Some(vec![
                NameLimits {
                    name: "a".into(),
                    concurrency: Some(1),
                    rate: None,
                },
                NameLimits {
                    name: "mail.send".into(),
                    concurrency: None,
                    rate: Some((10, 1000)),
                },
            ]),
        }
    }

    #[test]
    fn limits_are_optional_and_may_be_empty() {
        for limits in [None, Some(Vec::new())] {
            let m = Manifest {
                limits,
                ..sample()
            };
            assert_eq!(decode_manifest(&encode_manifest(&m)), Ok(m));
        }
        // A manifest without the section is the one written before limits were recorded.
        let without = Manifest {
            limits: None,
            ..sample()
        };
        assert_eq!(
            encode_manifest(&without).len(),
            FIXED_LEN + 8 * without.segments.len() + 4
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000)) {
            let _ = decode_manifest(&bytes);
            let _ = decode_manifest_file(&bytes);
        }
    }

    #[test]
    fn the_newer_valid_slot_wins() {
        let old = sample();
        let new = Manifest {
            generation: 4,
            segments: vec![2, 3, 7, 8],
            ..sample()
        };
        let mut file = encode_manifest_file(&old);
        let slot_len = file.len() / 2;
        let encoded = encode_manifest(&new);
        file[slot_len..slot_len + encoded.len()].copy_from_slice(&encoded);
        let decoded = decode_manifest_file(&file).unwrap();
        assert_eq!((decoded.manifest, decoded.slot), (new, 1));
        // A torn rewrite of slot 1: slot 0 is in force again.
        for cut in [1, 20, encoded.len() - 1] {
            let mut torn = file.clone();
            torn[slot_len + cut..slot_len + encoded.len()].fill(0);
            let decoded = decode_manifest_file(&torn).unwrap();
            assert_eq!((decoded.manifest, decoded.slot), (old.clone(), 0));
        }
        assert!(decode_manifest_file(&file[..slot_len]).is_err());
        assert!(decode_manifest_file(&vec![0; 2 * slot_len]).is_err());
    }

    #[test]
    fn round_trip_and_every_bit_flip_is_detected() {
        let bytes = encode_manifest(&sample());
        assert_eq!(decode_manifest(&bytes), Ok(sample()));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_manifest(&b).is_err(), "flip of bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(decode_manifest(&bytes[..len]).is_err(), "cut at {len}");
        }
    }
}
