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
//! it), but a softirq may take many hits between a lead and its understudy, so a note must not
//! be overwritten by theirs (see [`lead`]).

use core::ptr::{read_volatile, write_volatile};

use crate::maps::{COVERED, LEAD_NOTES};

/// Notes kept per CPU and hook: more than the hits that can be open on a CPU at once, with
/// room for a few stale ones.
pub const NOTES: usize = 8;

/// What identifies a hit: the tracepoint's arguments (socket, and the skb or the states where
/// the tracepoint has them). Two hits open on one CPU at once never share them: the kernel
/// holds the socket's lock through each.
pub type HitKey = [u64; 2];

const FREE: HitKey = [0; 2];

/// The hits a lead took on one CPU whose understudy has not run yet, each with the time its
/// lead began.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LeadNotes {
    keys: [HitKey; NOTES],
    noted_ns: [u64; NOTES],
}

/// Note `i` of `notes` (this CPU's): where its key lies, and when it was noted. `get`, not
/// indexing, for the verifier.
#[inline(always)]
fn note(notes: *mut LeadNotes, i: usize) -> Option<(*mut HitKey, u64)> {
    // SAFETY: a valid map value pointer, this CPU's.
    let (keys, noted_ns) = unsafe { (&mut (*notes).keys, &(*notes).noted_ns) };
    Some((keys.get_mut(i)?, *noted_ns.get(i)?))
}

/// The lead: notes the hit on this CPU, then runs `handle` with the hit's time (the note's).
///
/// A note goes in a free place, so the notes of hits that interrupt this one (a softirq may
/// change many sockets' states before this hit's understudy runs) never overwrite it: each
/// takes a free place and gives it back with its understudy. Only when none is free does the
/// oldest note go, which is a stale one: at most two are open.
#[inline(always)]
pub fn lead(slot: u32, key: HitKey, handle: impl FnOnce(u64)) {
    let now = crate::owner::now();
    if let Some(notes) = LEAD_NOTES.get_ptr_mut(slot) {
        let (mut place, mut oldest) = (0, u64::MAX);
        for i in 0..NOTES {
            let Some((key_at, noted)) = note(notes, i) else { break };
            // SAFETY: within this CPU's slot.
            if unsafe { read_volatile(key_at) } == FREE {
                place = i;
                break;
            }
            if noted < oldest {
                (place, oldest) = (i, noted);
            }
        }
        // SAFETY: this CPU's slot. Before Linux 6.2 a hit may interrupt the lead itself, even
        // here; it runs to its end (its understudy included, which frees its place) before the
        // lead resumes. Volatile: the understudy of an interrupting hit reads the note.
        unsafe {
            if let (Some(note), Some(noted)) =
                ((*notes).keys.get_mut(place), (*notes).noted_ns.get_mut(place))
            {
                write_volatile(noted, now);
                write_volatile(note, key);
            }
        }
    }
    handle(now);
}

/// The understudy: runs `handle` (with the time) for a hit the lead did not note (it was skipped). Finding its
/// note, it frees it, and any newer one: those are of hits that interrupted this one and are
/// over, their understudy skipped (it interrupted this one).
#[inline(always)]
pub fn stand_in(slot: u32, key: HitKey, handle: impl FnOnce(u64)) {
    let Some(notes) = LEAD_NOTES.get_ptr_mut(slot) else { return };
    let mut mine = None;
    for i in 0..NOTES {
        let Some((key_at, noted)) = note(notes, i) else { break };
        // SAFETY: within this CPU's slot.
        if unsafe { read_volatile(key_at) } == key {
            mine = Some(noted);
            break;
        }
    }
    let Some(mine) = mine else {
        handle(crate::owner::now());
        if let Some(covered) = COVERED.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot. An understudy handles a hit only where it interrupted
            // its lead, in a softirq, which nothing here can interrupt in turn.
            unsafe { *covered += 1 };
        }
        return;
    };
    for i in 0..NOTES {
        let Some((key_at, noted)) = note(notes, i) else { break };
        // SAFETY: within this CPU's slot.
        if noted >= mine && unsafe { read_volatile(key_at) } != FREE {
            // SAFETY: as above.
            unsafe { write_volatile(key_at, FREE) };
        }
    }
}

/// A hook's lead raw tracepoint program and its understudy, both running `$handle` on the hit
/// identified by `$key`, with `$now` the hit's time.
macro_rules! raw_with_understudy {
    (
        $tracepoint:literal, $slot:expr, $lead:ident, $understudy:ident,
        key: |$kctx:ident| $key:expr, |$ctx:ident, $now:ident| $handle:expr
    ) => {
        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $lead($ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            let $kctx = &$ctx;
            $crate::understudy::lead($slot, $key, |$now| $handle);
            0
        }

        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $understudy($ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            let $kctx = &$ctx;
            $crate::understudy::stand_in($slot, $key, |$now| $handle);
            0
        }
    };
}
pub(crate) use raw_with_understudy;
