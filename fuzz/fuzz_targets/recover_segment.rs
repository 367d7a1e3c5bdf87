//! Recovery over arbitrary segment contents (see `afterlog::testing::check_recover`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| afterlog::testing::check_recover(data));
