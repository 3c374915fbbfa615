//! What a `no_std` plugin provides itself on wasm32 instead of Rust's standard library: a memory
//! allocator, the canonical ABI's `cabi_realloc` (through which the host writes the input into
//! the guest's memory) and a panic handler.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;

/// The size of a WebAssembly page.
const PAGE: usize = 64 * 1024;

/// A bump allocator: it hands out memory upwards from the end of the static data, and reuses it
/// only once every allocation has been freed (when the count of live allocations drops to zero,
/// the next allocation starts again from the bottom).
///
/// That suits a risk plugin: the host makes a fresh instance for every call and discards its
/// memory afterwards, so an allocation is a few additions and a free is one subtraction. (On an
/// instance kept across calls, everything a call allocated is freed by the time it returns, so
/// the heap starts over at each call.) The instance's memory limit still applies: when
/// `memory.grow` is refused, allocation fails and the call traps.
struct Bump {
    /// The next free address, or 0 before the first allocation.
    next: Cell<usize>,
    /// The end of the memory: where `memory.grow` is needed.
    end: Cell<usize>,
    /// Allocations not yet freed.
    live: Cell<usize>,
}

// SAFETY: a wasm32 plugin has one thread; nothing shares the allocator across threads.
unsafe impl Sync for Bump {}

#[global_allocator]
static ALLOCATOR: Bump = Bump {
    next: Cell::new(0),
    end: Cell::new(0),
    live: Cell::new(0),
};

unsafe extern "C" {
    /// Where the linker puts the heap: after the stack and the static data.
    static __heap_base: u8;
}

// SAFETY: `alloc` returns null or a fresh block of `layout.size()` bytes aligned to
// `layout.align()` inside the linear memory, not overlapping any live block: blocks are only
// handed out above `next`, and `next` goes back to the heap's base only when no block is live.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (mut next, mut end) = (self.next.get(), self.end.get());
        if next == 0 || self.live.get() == 0 {
            next = &raw const __heap_base as usize;
            end = wasm32::memory_size(0) * PAGE;
        }
        // `align` is a power of two.
        let start = (next + layout.align() - 1) & !(layout.align() - 1);
        let Some(new_next) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if new_next > end {
            let pages = (new_next - end).div_ceil(PAGE);
            let previous = wasm32::memory_grow(0, pages);
            if previous == usize::MAX {
                return core::ptr::null_mut();
            }
            end = (previous + pages) * PAGE;
        }
        self.next.set(new_next);
        self.end.set(end);
        self.live.set(self.live.get() + 1);
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {
        self.live.set(self.live.get() - 1);
    }
}

/// The allocation function of the component model's canonical ABI: the host calls it to place
/// the input's strings and lists in the guest's memory.
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the canonical ABI passes a power-of-two `align`, and the pointer, size and
    // alignment of an earlier allocation when `old_len` is not zero.
    let ptr = unsafe {
        if old_len == 0 {
            ALLOCATOR.alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            let old = Layout::from_size_align_unchecked(old_len, align);
            ALLOCATOR.realloc(old_ptr, old, new_len)
        }
    };
    if ptr.is_null() {
        wasm32::unreachable();
    }
    ptr
}

/// A panic stops the call with a trap, which the host reports as a plugin failure.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    wasm32::unreachable()
}
