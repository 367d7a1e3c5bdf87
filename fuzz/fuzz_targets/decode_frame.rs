//! Any bytes given to the frame and record decoders (see `afterlog::testing::check_decode`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| afterlog::testing::check_decode(data));
