//! What a crash leaves of a file's unsynced writes.

use super::{Pending, apply_pending, apply_write, splitmix64};
use std::sync::Arc;

/// The sector size a torn write is aligned to in [`CrashMode::TornSectorZeros`].
pub const SECTOR_BYTES: u64 = 512;

/// What happens to unsynced file data in a simulated crash. Synced data always survives.
///
/// "The last unsynced write" is the one with the highest operation number on the whole disk
/// (including a write interrupted by `crash_at`); only its file is torn, and only if that
/// file survives. Unsynced `set_len` calls survive in the tearing modes (in order with the
/// writes) and are lost in the others. A write of exactly the bytes already durable where it
/// lands (recovery rewriting what it read, say) changes nothing in any mode: every mix of its
/// old and new sectors holds the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// Every unsynced write and `set_len` is lost: files hold their durable bytes.
    DropUnsynced,
    /// Unsynced writes before the last one survive whole; the last one survives only for its
    /// first `keep` bytes (clamped to its length; `usize::MAX` keeps everything).
    TearLastWrite {
        /// Bytes of the last write that reach the disk.
        keep: usize,
    },
    /// Like `TearLastWrite`, but after the `keep` bytes the rest of the 512-byte sector
    /// holding the tear (as far as the write reached) is zeros, and the write's bytes past
    /// that sector are absent.
    TornSectorZeros {
        /// Bytes of the last write that reach the disk.
        keep: usize,
    },
    /// Unsynced writes are lost, and the byte ranges they covered (inside the durable bytes
    /// or past their end) hold pseudo-random garbage derived from `seed` instead.
    GarbageAfterSynced {
        /// Seeds the garbage.
        seed: u64,
    },
}

impl CrashMode {
    /// A handful of representative modes: nothing unsynced survives, everything survives,
    /// a tear, a torn sector and garbage, with the tear positions derived from `seed`.
    pub fn all_for(seed: u64) -> Vec<CrashMode> {
        let mut rng = seed;
        let tear = (splitmix64(&mut rng) % 1024) as usize;
        let sector_tear = (splitmix64(&mut rng) % 1024) as usize;
        vec![
            CrashMode::DropUnsynced,
            CrashMode::TearLastWrite { keep: usize::MAX },
            CrashMode::TearLastWrite { keep: 0 },
            CrashMode::TearLastWrite { keep: tear },
            CrashMode::TornSectorZeros { keep: sector_tear },
            CrashMode::GarbageAfterSynced { seed },
        ]
    }
}

/// The bytes of one file after a crash, from its durable bytes and pending operations.
/// `torn_op` is the disk's last unsynced write.
pub(super) fn surviving_bytes(
    durable: &Arc<Vec<u8>>,
    pending: &[Pending],
    mode: CrashMode,
    torn_op: Option<u64>,
) -> Arc<Vec<u8>> {
    // A write that repeats the bytes already durable where it lands changes nothing
    // however it tears: every mix of its old and new sectors holds the same bytes.
    let repeats = |p: &Pending| match p {
        Pending::Write { offset, data, .. } => {
            let start = *offset as usize;
            durable.get(start..start + data.len()) == Some(&data[..])
        }
        Pending::SetLen { .. } => false,
    };
    let kept: Vec<&Pending> = pending.iter().filter(|p| !repeats(p)).collect();
    if kept.is_empty() && pending.iter().all(|p| matches!(p, Pending::Write { .. })) {
        return Arc::clone(durable);
    }
    let pending = kept;
    let (keep, sector_zeros) = match mode {
        CrashMode::DropUnsynced => return Arc::clone(durable),
        CrashMode::GarbageAfterSynced { seed } => {
            return Arc::new(garbage(durable, &pending, seed));
        }
        CrashMode::TearLastWrite { keep } => (keep, false),
        CrashMode::TornSectorZeros { keep } => (keep, true),
    };
    let mut bytes = durable.to_vec();
    for p in pending {
        match p {
            Pending::Write { op, offset, data } if Some(*op) == torn_op => {
                let kept = keep.min(data.len());
                apply_write(&mut bytes, *offset, &data[..kept]);
                if sector_zeros && kept < data.len() {
                    let tear = offset + kept as u64;
                    let sector_end = (tear / SECTOR_BYTES + 1) * SECTOR_BYTES;
                    let end = sector_end.min(offset + data.len() as u64);
                    apply_write(&mut bytes, tear, &vec![0; (end - tear) as usize]);
                }
            }
            p => apply_pending(&mut bytes, p),
        }
    }
    Arc::new(bytes)
}

/// Durable bytes with every unsynced write's range filled with garbage. The garbage of a
/// write depends only on `seed` and the write's operation number.
fn garbage(durable: &[u8], pending: &[&Pending], seed: u64) -> Vec<u8> {
    let mut bytes = durable.to_vec();
    for &p in pending {
        if let Pending::Write { op, offset, data } = p {
            let mut rng = seed ^ op.wrapping_mul(0xA076_1D64_78BD_642F);
            let mut noise = Vec::with_capacity(data.len() + 8);
            while noise.len() < data.len() {
                noise.extend_from_slice(&splitmix64(&mut rng).to_le_bytes());
            }
            noise.truncate(data.len());
            apply_write(&mut bytes, *offset, &noise);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(op: u64, offset: u64, data: &[u8]) -> Pending {
        Pending::Write {
            op,
            offset,
            data: data.to_vec(),
        }
    }

    #[test]
    fn operations_after_the_torn_write_still_apply_in_order() {
        let durable = Arc::new(b"0123456789".to_vec());
        let pending = [
            write(1, 10, b"abcdef"),
            Pending::SetLen { len: 12 },
            write(3, 0, b"XY"),
        ];
        let torn = |keep| {
            let mode = CrashMode::TearLastWrite { keep };
            surviving_bytes(&durable, &pending, mode, Some(1)).to_vec()
        };
        assert_eq!(torn(0), b"XY23456789\0\0".to_vec());
        assert_eq!(torn(1), b"XY23456789a\0".to_vec());
        assert_eq!(torn(6), b"XY23456789ab".to_vec());
    }

    #[test]
    fn a_write_repeating_durable_bytes_survives_every_mode() {
        let durable = Arc::new(b"0123456789".to_vec());
        let pending = [write(4, 2, b"2345")];
        for mode in CrashMode::all_for(5) {
            let bytes = surviving_bytes(&durable, &pending, mode, Some(4));
            assert_eq!(bytes.as_slice(), b"0123456789", "{mode:?}");
        }
    }

    #[test]
    fn a_file_without_pending_operations_shares_its_bytes() {
        let durable = Arc::new(vec![1; 10]);
        for mode in CrashMode::all_for(3) {
            let bytes = surviving_bytes(&durable, &[], mode, None);
            assert!(Arc::ptr_eq(&bytes, &durable), "{mode:?}");
        }
    }

    #[test]
    fn all_for_covers_every_kind_of_mode() {
        let modes = CrashMode::all_for(7);
        assert!(modes.contains(&CrashMode::DropUnsynced));
        assert!(
            modes
                .iter()
                .any(|m| matches!(m, CrashMode::TornSectorZeros { .. }))
        );
        assert!(
            modes
                .iter()
                .any(|m| matches!(m, CrashMode::GarbageAfterSynced { .. }))
        );
        assert_eq!(modes, CrashMode::all_for(7), "deterministic");
    }
}
