//! connwatch's kernel programs: TCP events from the kernel's own paths, each stamped with the
//! socket's identity and owning process, streamed through one ring buffer.
//!
//! Every hook comes in the variants the loader may choose between (classic tracepoint, raw
//! tracepoint); each variant only finds its arguments and calls the one handler in `probes/`.
#![no_std]
#![no_main]
// The BPF target offers no atomic read-modify-write types (it claims no compare-and-swap), but
// the instructions exist (BPF_XCHG, BPF_ADD with BPF_FETCH: Linux 5.12): `policy` reaches them
// through the intrinsics.
#![feature(core_intrinsics)]
// Inline assembly on BPF: direct loads from a tracepoint record (`record`).
#![feature(asm_experimental_arch)]
#![expect(internal_features, reason = "core_intrinsics: atomic exchange and add on map values")]

mod closing;
mod config;
mod emit;
mod established;
mod maps;
mod owner;
mod policy;
mod probes;
mod record;
mod send_start;
mod sock;
mod syscall;
mod understudy;
mod zero;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction (no indexing, no unwrap); a reachable panic would be a
    // verifier rejection at load time rather than a silent failure.
    loop {}
}
