//! Checks shared by the fuzz targets (`fuzz/`) and the tests that replay their corpora, so
//! both exercise exactly the same properties. Not part of the stable API.

mod read_directory;

pub use read_directory::{
    FILE_SEPARATOR, FILES_MAX, INPUT_BYTES_MAX, check_read_directory, directory_files,
    directory_input,
};

use crate::format::{Record, RecordKind, SegmentHeader, decode_frame, encode_frame, encode_header};
use crate::log::{Log, LogOptions, segment_name};
use crate::storage::{MemStorage, Storage};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

thread_local! {
    static ALLOCATION_LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The largest single allocation this thread may make now: `usize::MAX` unless a check set a
/// limit. The global allocator of a fuzz target (and of the test replaying the corpora)
/// refuses anything larger, which aborts the process with the size it asked for: an input
/// whose bytes make a reader allocate more than the data holds is a finding.
pub fn allocation_limit_bytes() -> usize {
    // A panic's report (its backtrace above all) may allocate much: a refusal there would
    // hide the panic behind an allocation failure, or deadlock on the backtrace lock.
    if std::thread::panicking() {
        return usize::MAX;
    }
    // `try_with`: the allocator may ask while this thread's locals are being destroyed.
    ALLOCATION_LIMIT.try_with(Cell::get).unwrap_or(usize::MAX)
}

/// A global allocator that forwards to the system's, but refuses (a null pointer, as
/// `GlobalAlloc` allows) any allocation above this thread's [`allocation_limit_bytes`]: the
/// fuzz targets and the corpus replay install it with `#[global_allocator]`, so an input that
/// makes a reader allocate more than its data holds aborts with the size asked for.
pub struct BoundedAllocator;

// The crate's one other place of unsafe code besides the segment maps: an allocator cannot
// be written without it.
// SAFETY: every call is forwarded unchanged to the system allocator, except requests above
// the thread's limit, which fail with a null pointer as `GlobalAlloc` allows.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > allocation_limit_bytes() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > allocation_limit_bytes() {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > allocation_limit_bytes() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `realloc`'s contract, which `System` shares.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Limits this thread's allocations (see [`allocation_limit_bytes`]) until dropped.
#[derive(Debug)]
pub struct AllocationLimit {
    previous: usize,
}

impl AllocationLimit {
    /// No single allocation of this thread may exceed `bytes` while the guard lives.
    pub fn set(bytes: usize) -> AllocationLimit {
        AllocationLimit {
            previous: ALLOCATION_LIMIT.replace(bytes),
        }
    }
}

impl Drop for AllocationLimit {
    fn drop(&mut self) {
        ALLOCATION_LIMIT.set(self.previous);
    }
}

/// Any bytes given to the frame and record decoders: no panic, no read out of bounds, and
/// whatever decodes re-encodes to the same bytes.
pub fn check_decode(data: &[u8]) {
    let segment_id = 7;
    if let Ok(Some(frame)) = decode_frame(data, segment_id) {
        assert!(frame.len() <= data.len());
        if let Ok(record) = Record::decode(frame.kind, frame.payload) {
            let mut payload = Vec::new();
            record.encode(&mut payload);
            assert_eq!(
                payload, frame.payload,
                "a decoded record re-encodes differently"
            );
            let mut again = Vec::new();
            encode_frame(
                &mut again,
                segment_id,
                frame.seq,
                frame.kind,
                frame.sync_delta,
                &payload,
            );
            assert_eq!(
                &again[..],
                &data[..frame.len()],
                "a decoded frame re-encodes differently"
            );
        }
    }
    if let Some((&kind, payload)) = data.split_first()
        && let Some(kind) = RecordKind::from_u8(kind)
        && let Ok(record) = Record::decode(kind, payload)
    {
        let mut again = Vec::new();
        record.encode(&mut again);
        assert_eq!(again, payload, "a decoded payload re-encodes differently");
    }
}

/// Recovery over arbitrary directory contents: the bytes become one or two segment files
/// (behind a valid header unless the first byte is 0xFF, so the fuzzer reaches the frames);
/// scanning and opening must end in records or an error, never a panic or a hang.
pub fn check_recover(data: &[u8]) {
    let disk = MemStorage::new();
    let (first, second) = data.split_at(data.len() / 2);
    for (id, body) in [(1u64, first), (2u64, second)] {
        let Some(&lead) = body.first() else { continue };
        let header = SegmentHeader {
            format_version: 1,
            segment_id: id,
            first_seq: id * 1000 - 999,
            created_ms: 0,
            flags: 0,
            event_id_floor: 0,
            job_id_floor: 0,
            directory_id: 0,
        };
        let mut bytes = if lead == 0xFF {
            Vec::new()
        } else {
            encode_header(&header)
        };
        bytes.extend_from_slice(body);
        let file = disk.create(&segment_name(id)).expect("create in memory");
        file.write_all_at(&bytes, 0).expect("write in memory");
    }
    let storage: Arc<dyn Storage> = Arc::new(disk);
    let mut scanned = 0u64;
    let scan = Log::scan(&*storage, |_, _| {
        scanned += 1;
        Ok(())
    });
    let options = LogOptions {
        segment_bytes: 4096,
        prepare_in_background: false,
        ..LogOptions::default()
    };
    let mut opened = 0u64;
    let open = Log::open(storage, options, |_, _| {
        opened += 1;
        Ok(())
    });
    // The read-only scan and the open agree on whether the directory is sound and on what it holds.
    assert_eq!(
        scan.is_ok(),
        open.is_ok(),
        "scan {:?} vs open {:?}",
        scan.as_ref().err(),
        open.as_ref().err().map(|e| e.to_string())
    );
    if let (Ok(_), Ok((log, _))) = (&scan, open) {
        assert_eq!(scanned, opened);
        log.close().expect("close after recovery");
    }
}

/// Any text given to `After::parse`: no panic; whatever parses resolves without panicking,
/// and a resolved due time is never before now nor more than a year ahead.
pub fn check_after(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(after) = crate::After::parse(text) else {
        return;
    };
    for now_ms in [0, 1_700_000_000_000, i64::MAX / 2] {
        if let Ok(due_ms) = after.resolve(now_ms) {
            assert!(
                due_ms >= now_ms,
                "{text:?} resolved to {due_ms}, before now {now_ms}"
            );
            assert!(
                due_ms <= crate::latest_due_ms(now_ms),
                "{text:?} resolved beyond a year"
            );
        }
    }
    let shown = after.to_string();
    assert!(
        crate::After::parse(&shown).is_ok(),
        "{text:?} displays as {shown:?}, which does not parse"
    );
}

/// Any text given to the cron parser: no panic; for an expression that parses, the next
/// occurrence after a few instants is strictly after the instant, on a whole second, and is
/// itself an occurrence; and the one after it is later still.
pub fn check_cron(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cron) = crate::cron::Cron::parse(text) else {
        return;
    };
    assert!(
        crate::cron::Cron::parse(cron.text()).as_ref() == Ok(&cron),
        "{text:?} shows as {:?}, which parses otherwise",
        cron.text()
    );
    for after_ms in [-86_400_000, 0, 1_700_000_000_123, 253_402_300_000_000] {
        let Some(next) = cron.next_after(after_ms) else {
            continue;
        };
        assert!(next > after_ms, "{text:?}: {next} not after {after_ms}");
        assert_eq!(next % 1000, 0, "{text:?}: {next} is not a whole second");
        assert!(cron.matches(next), "{text:?}: {next} is no occurrence");
        if let Some(then) = cron.next_after(next) {
            assert!(then > next, "{text:?}: {then} not after {next}");
        }
    }
}
