//! Types that cross the kernel/userspace boundary.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool`, enums and `Option`, and padded
//! explicitly: the eBPF programs write these bytes and userspace reads them back, and map keys
//! with implicit padding make lookups miss silently.
#![no_std]

pub mod config;
pub mod event;
pub mod names;
pub mod socket;
pub mod tcp;

/// Fails the build when a shared record changes size without the other side noticing.
#[macro_export]
macro_rules! assert_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
    };
}
