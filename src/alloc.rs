//! The binary's global allocator: mimalloc for everything but large blocks,
//! which go to the C library's `malloc`.
//!
//! mimalloc keeps the static musl binary as fast as a glibc build (musl's own
//! allocator serialises multithreaded allocation). Large blocks are rare and
//! the C library serves them from fresh mappings; routing them there also
//! lets the compiler turn "allocate, then fill with zeros" into `calloc`,
//! which skips the fill on fresh mappings. sled zero-fills ~20 MiB of metrics
//! histograms at startup that it never writes: with mimalloc alone that
//! memory is all resident. Blocks are routed by their layout, so `dealloc`
//! and `realloc` always reach the allocator that owns a block.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

use mimalloc::MiMalloc;

/// Blocks at least this large (with at most `malloc`'s alignment) go to the C library.
const LARGE: usize = 256 * 1024;
/// Alignment every `malloc` result has on 64-bit Linux.
const MALLOC_ALIGN: usize = 16;

pub struct Allocator;

fn large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= MALLOC_ALIGN
}

// SAFETY: every block is served and released by the same allocator, chosen
// by `large(layout)`; both allocators uphold the `GlobalAlloc` contract.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if large(&layout) { unsafe { System.alloc(layout) } } else { unsafe { MiMalloc.alloc(layout) } }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if large(&layout) { unsafe { System.alloc_zeroed(layout) } } else { unsafe { MiMalloc.alloc_zeroed(layout) } }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if large(&layout) {
            unsafe { System.dealloc(block, layout) }
        } else {
            unsafe { MiMalloc.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the
        // alignment, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (large(&layout), large(&new_layout)) {
            (false, false) => unsafe { MiMalloc.realloc(block, layout, new_size) },
            (true, true) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and distinct.
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_contents_across_the_size_threshold() {
        let mut data: Vec<u8> = Vec::new();
        // Grows from mimalloc blocks into C library blocks and back.
        for size in [1024, LARGE - 1, LARGE, 4 * LARGE, 64] {
            let filled = data.len();
            data.resize(size, 0);
            for (i, byte) in data.iter_mut().enumerate().skip(filled) {
                *byte = i as u8;
            }
            data.shrink_to_fit();
            assert!(data.iter().enumerate().all(|(i, b)| *b == i as u8), "size {size}");
        }
        let zeroed = vec![0u64; LARGE];
        assert!(zeroed.iter().all(|v| *v == 0));
    }
}
