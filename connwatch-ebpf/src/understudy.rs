//! Understudies: hits a raw tracepoint program would be skipped on.
//!
//! The kernel runs a raw tracepoint program at most once per CPU at a time. A softirq that
//! interrupts it in process context and hits the same tracepoint (a packet that changes another
//! socket's state while a close() is in the state-change program, say) finds it busy, and the
//! kernel skips that hit (counting it in the program's `recursion_misses`). So each of the
//! kernel's own events has a second program, its understudy, attached after the lead: it does
//! nothing unless the lead is busy on this CPU, and then handles the hit itself and counts it
//! in `COVERED`. Softirqs do not nest, so one understudy is enough. A hit that lands in the
//! kernel's few instructions before the lead marks itself busy, or after it clears the mark,
//! is still skipped: the loader reports the lead's skips less those covered.

use core::ptr::{read_volatile, write_volatile};

use crate::maps::{COVERED, LEAD_BUSY};

/// The lead: runs `handle`, marked busy on this CPU meanwhile.
#[inline(always)]
pub fn lead(slot: u32, handle: impl FnOnce()) {
    let busy = LEAD_BUSY.get_ptr_mut(slot);
    if let Some(busy) = busy {
        // SAFETY: this CPU's slot, written only by this lead (volatile: the understudy reads
        // it from an interrupt).
        unsafe { write_volatile(busy, 1) };
    }
    handle();
    if let Some(busy) = busy {
        // SAFETY: as above.
        unsafe { write_volatile(busy, 0) };
    }
}

/// The understudy: runs `handle` only for a hit that interrupted the lead on this CPU.
#[inline(always)]
pub fn stand_in(slot: u32, handle: impl FnOnce()) {
    let Some(busy) = LEAD_BUSY.get_ptr(slot) else { return };
    // SAFETY: this CPU's slot.
    if unsafe { read_volatile(busy) } == 0 {
        return;
    }
    handle();
    if let Some(covered) = COVERED.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; only this understudy writes it, and it cannot interrupt
        // itself (it runs only in the softirq that interrupted its lead).
        unsafe { *covered += 1 };
    }
}

/// A hook's lead raw tracepoint program and its understudy, both running `$handle`.
macro_rules! raw_with_understudy {
    ($tracepoint:literal, $slot:expr, $lead:ident, $understudy:ident, |$ctx:ident| $handle:expr) => {
        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $lead($ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            $crate::understudy::lead($slot, || $handle);
            0
        }

        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $understudy($ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            $crate::understudy::stand_in($slot, || $handle);
            0
        }
    };
}
pub(crate) use raw_with_understudy;
