//! Understudies: hits a raw tracepoint program would be skipped on.
//!
//! The kernel runs a raw tracepoint program at most once per CPU at a time. A softirq that
//! interrupts it in process context and hits the same tracepoint (a packet that changes another
//! socket's state while a close() is in the state-change program, say) finds it busy, and the
//! kernel skips that hit (counting it in the program's `recursion_misses`). So each of the
//! kernel's own events has a second program, its understudy, attached after the lead, so the
//! kernel runs it after the lead on every hit.
//!
//! The lead notes each hit it takes, by the tracepoint's arguments, on its CPU before handling
//! it. The understudy looks for its hit among those notes: found, the lead took it, and the
//! note goes; not found, the lead was skipped, and the understudy handles the hit and counts it
//! in `COVERED`. Arguments, not a busy mark, because the kernel marks the lead running a few
//! instructions before it starts and after it ends: a hit there found no mark and was lost.
//! At most two hits are open on a CPU at once (process context, and the softirq that interrupts
//! it), so a few notes are enough; a note whose understudy was itself skipped (a hit that
//! interrupted it) is overwritten in turn.

use core::ptr::{read_volatile, write_volatile};

use crate::maps::{COVERED, LEAD_NOTES};

/// Notes kept per CPU and hook: more than the hits that can be open on a CPU at once.
pub const NOTES: usize = 4;

/// What identifies a hit: the tracepoint's arguments (socket, and the skb or the states where
/// the tracepoint has them). Two hits open on one CPU at once never share them: the kernel
/// holds the socket's lock through each.
pub type HitKey = [u64; 2];

/// The hits a lead took on one CPU whose understudy has not run yet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LeadNotes {
    keys: [HitKey; NOTES],
    next: u64,
}

/// The lead: notes the hit on this CPU, then runs `handle`.
#[inline(always)]
pub fn lead(slot: u32, key: HitKey, handle: impl FnOnce()) {
    if let Some(notes) = LEAD_NOTES.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot. Before Linux 6.2 a hit may interrupt the lead itself, even
        // between these lines; it runs to its end (its understudy included, which takes its
        // note back) before the lead resumes, so taking the same index does no harm.
        unsafe {
            let at = read_volatile(&raw const (*notes).next);
            write_volatile(&raw mut (*notes).next, at.wrapping_add(1));
            if let Some(note) = (*notes).keys.get_mut(at as usize % NOTES) {
                // Volatile: the understudy of an interrupting hit reads it.
                write_volatile(note, key);
            }
        }
    }
    handle();
}

/// The understudy: runs `handle` for a hit the lead did not note (it was skipped).
#[inline(always)]
pub fn stand_in(slot: u32, key: HitKey, handle: impl FnOnce()) {
    let Some(notes) = LEAD_NOTES.get_ptr_mut(slot) else { return };
    for i in 0..NOTES {
        // SAFETY: this CPU's slot; `get_mut`, not indexing, for the verifier.
        let Some(note) = (unsafe { (*notes).keys.get_mut(i) }) else { return };
        // SAFETY: as above.
        if unsafe { read_volatile(note) } == key {
            // SAFETY: as above.
            unsafe { write_volatile(note, [0; 2]) };
            return;
        }
    }
    handle();
    if let Some(covered) = COVERED.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot. An understudy handles a hit only where it interrupted its
        // lead, in a softirq, which nothing here can interrupt in turn.
        unsafe { *covered += 1 };
    }
}

/// A hook's lead raw tracepoint program and its understudy, both running `$handle` on the hit
/// identified by `$key`.
macro_rules! raw_with_understudy {
    (
        $tracepoint:literal, $slot:expr, $lead:ident, $understudy:ident,
        key: |$kctx:ident| $key:expr, |$ctx:ident| $handle:expr
    ) => {
        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $lead($ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            let $kctx = &$ctx;
            $crate::understudy::lead($slot, $key, || $handle);
            0
        }

        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $understudy($ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            let $kctx = &$ctx;
            $crate::understudy::stand_in($slot, $key, || $handle);
            0
        }
    };
}
pub(crate) use raw_with_understudy;
