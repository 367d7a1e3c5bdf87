//! Any text given to the cron parser (see `afterlog::testing::check_cron`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| afterlog::testing::check_cron(data));
