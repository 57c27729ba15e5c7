//! A library that exports something, but no plugin declaration.

#[no_mangle]
pub static NOT_A_PLUGIN_DECLARATION: u32 = 7;
