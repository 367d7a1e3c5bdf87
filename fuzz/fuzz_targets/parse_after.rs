//! Any text given to `After::parse` (see `afterlog::testing::check_after`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| afterlog::testing::check_after(data));
