//! Recovery over arbitrary directory contents: one or two segment files of fuzzed bytes (with
//! a valid header, so the fuzzer reaches the frames) must open with an error or with records,
//! never a panic.
#![no_main]

use afterlog::format::{SegmentHeader, encode_header};
use afterlog::log::{Log, LogOptions, segment_name};
use afterlog::storage::{MemStorage, Storage};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let disk = MemStorage::new();
    let (first, second) = data.split_at(data.len() / 2);
    for (id, body) in [(1u64, first), (2u64, second)] {
        if body.is_empty() {
            continue;
        }
        let header = SegmentHeader { format_version: 1, segment_id: id, first_seq: id * 1000 - 999, created_ms: 0, flags: 0 };
        let mut bytes = encode_header(&header).to_vec();
        // A leading 0xFF byte keeps the fuzzer's own header instead.
        if body[0] == 0xFF {
            bytes.clear();
        }
        bytes.extend_from_slice(body);
        let file = disk.create(&segment_name(id)).expect("create");
        file.write_all_at(&bytes, 0).expect("write");
    }
    let storage: Arc<dyn Storage> = Arc::new(disk);
    let options = LogOptions { segment_bytes: 4096, prepare_in_background: false, ..LogOptions::default() };
    let _ = Log::scan(&*storage, |_, _| Ok(()));
    if let Ok((log, _)) = Log::open(storage, options, |_, _| Ok(())) {
        let _ = log.close();
    }
});
