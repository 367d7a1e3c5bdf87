//! Every read of the `afterlog` command over a small directory made of arbitrary files (see
//! `afterlog::testing::check_read_directory`). The global allocator refuses any allocation
//! above the limit the check sets for its thread, so an input that makes a reader allocate
//! more than its data holds aborts with the size asked for.
#![no_main]


#[global_allocator]
static ALLOCATOR: afterlog::testing::BoundedAllocator = afterlog::testing::BoundedAllocator;

libfuzzer_sys::fuzz_target!(|data: &[u8]| afterlog::testing::check_read_directory(data));
