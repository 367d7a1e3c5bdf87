//! Every read of the `afterlog` command over a small directory made of arbitrary files (see
//! `afterlog::testing::check_read_directory`). The global allocator refuses any allocation
//! above the limit the check sets for its thread, so an input that makes a reader allocate
//! more than its data holds aborts with the size asked for.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};

struct Bounded;

// SAFETY: every call is forwarded unchanged to the system allocator, except requests above
// the thread's limit, which fail with a null pointer as `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > afterlog::testing::allocation_limit_bytes() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > afterlog::testing::allocation_limit_bytes() {
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
        if new_size > afterlog::testing::allocation_limit_bytes() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `realloc`'s contract, which `System` shares.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| afterlog::testing::check_read_directory(data));
