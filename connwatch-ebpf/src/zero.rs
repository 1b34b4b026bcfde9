//! Zeroing without `memset`: the BPF target has none, and the compiler merges neighbouring zero
//! stores (an array or struct of zeroes, zero fields side by side) into a call to a byte loop
//! that the verifier walks byte by byte on every path through the program. Volatile stores
//! stay plain stores: a handful of instructions, no loop.

use core::{
    mem::{MaybeUninit, align_of, size_of},
    ptr::write_volatile,
};

/// Sets every byte of `bytes` to zero.
#[inline(always)]
pub fn zero<const N: usize>(bytes: &mut [u8; N]) {
    let start = bytes.as_mut_ptr();
    for i in 0..N {
        // SAFETY: `i < N`, inside the array.
        unsafe { write_volatile(start.add(i), 0) };
    }
}

/// A `T` of zero bytes (for the plain-data records and keys shared with userspace, for which
/// every field zero is a valid value), written a word at a time where its alignment allows.
#[inline(always)]
pub fn zeroed<T: Copy>() -> T {
    let mut value = MaybeUninit::<T>::uninit();
    let start = value.as_mut_ptr();
    // SAFETY: every store lies within `value`, at an offset aligned for its width; every byte
    // of `value` is written before it is read.
    unsafe {
        if align_of::<T>() >= 8 && size_of::<T>() % 8 == 0 {
            fill::<T, u64>(start, 0);
        } else {
            const { assert!(align_of::<T>() >= 4 && size_of::<T>() % 4 == 0) };
            fill::<T, u32>(start, 0);
        }
        value.assume_init()
    }
}

/// Fills the `T` at `start` with `word`.
///
/// # Safety
/// `start` is valid for writes of a `T` and aligned for `W`, and `W`'s size divides `T`'s.
#[inline(always)]
unsafe fn fill<T, W: Copy>(start: *mut T, word: W) {
    let start = start as *mut W;
    for i in 0..size_of::<T>() / size_of::<W>() {
        // SAFETY: as the caller promised.
        unsafe { write_volatile(start.add(i), word) };
    }
}
