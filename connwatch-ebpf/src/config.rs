//! The `CONFIG` global: offsets and filters the loader fills in before the programs load.

use connwatch_common::config::Config;

/// Overridden by the loader (`EbpfLoader::override_global`). Read only through [`conf!`]: a plain
/// read would let the compiler fold in these zeroes.
#[unsafe(no_mangle)]
pub static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Reads one field of [`CONFIG`] as the loader set it.
macro_rules! conf {
    ($($field:ident).+) => {
        // SAFETY: CONFIG is a plain static; the volatile read stops constant folding.
        unsafe { core::ptr::read_volatile(&raw const $crate::config::CONFIG.$($field).+) }
    };
}
pub(crate) use conf;
