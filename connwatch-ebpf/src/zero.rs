//! Zeroing without `memset`: the BPF target has none, so an array or struct assignment of zeroes
//! becomes a call to a byte loop that the verifier walks byte by byte on every path through
//! the program. Volatile byte stores stay plain stores (a handful of instructions, no loop).

/// Sets every byte of `bytes` to zero.
#[inline(always)]
pub fn zero<const N: usize>(bytes: &mut [u8; N]) {
    let start = bytes.as_mut_ptr();
    for i in 0..N {
        // SAFETY: `i < N`, inside the array.
        unsafe { core::ptr::write_volatile(start.add(i), 0) };
    }
}
