//! Fields of a classic tracepoint's record, at the offsets the loader read from tracefs.
//!
//! aya's `TracePointContext::read_at` copies a field through `bpf_probe_read_kernel`: a helper
//! call per field, on every hit. The verifier lets a tracepoint program load its record
//! directly, but only at an offset fixed in the instruction. The offsets live in `CONFIG`,
//! which the loader freezes read-only, so the verifier knows each one as a constant: it follows
//! only the branch below that names it, where the load is direct. An offset outside the common
//! ones keeps the helper.
//!
//! The direct loads are inline assembly: plain loads at different offsets could be merged by
//! the compiler into one load at a computed offset, which the verifier refuses.

use aya_ebpf::{EbpfContext, programs::TracePointContext};

/// One load of `size` ("u64", "u32") from the record at a constant, aligned `offset`.
macro_rules! load {
    ($ctx:expr, $size:literal, $offset:literal) => {{
        let value: u64;
        // SAFETY: a read-only load from the program's own record, inside it (the verifier checks
        // offset and alignment against the tracepoint's record size).
        unsafe {
            core::arch::asm!(
                concat!("{value} = *(", $size, " *)({record} + ", $offset, ")"),
                value = out(reg) value,
                record = in(reg) $ctx.as_ptr(),
                options(nostack, readonly, preserves_flags),
            )
        };
        value
    }};
}

/// The field of `size` at `offset`: a direct load where `offset` is one of `direct`, the
/// helper otherwise.
macro_rules! field_at {
    ($ctx:expr, $offset:expr, $ty:ty, $size:literal, [$($direct:literal)+]) => {{
        match $offset {
            $($direct => Some(load!($ctx, $size, $direct) as $ty),)+
            // SAFETY: the helper checks the address and fails instead of faulting.
            other => unsafe { $ctx.read_at::<$ty>(other as usize) }.ok(),
        }
    }};
}

/// The 8-byte field at `offset`.
#[inline(always)]
pub fn u64_at(ctx: &TracePointContext, offset: u32) -> Option<u64> {
    field_at!(ctx, offset, u64, "u64", [8 16 24 32 40 48 56 64])
}

/// The 4-byte field at `offset`.
#[inline(always)]
pub fn u32_at(ctx: &TracePointContext, offset: u32) -> Option<u32> {
    field_at!(ctx, offset, u32, "u32", [8 12 16 20 24 28 32 36 40 44 48 52 56 60 64])
}
