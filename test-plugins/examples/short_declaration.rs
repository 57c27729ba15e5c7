//! A library whose declaration is only a header: its size field says 16
//! bytes, far short of a whole declaration, and the static really is that
//! short, so reading past the header would read foreign memory.

use connector_plugin_sdk::abi::{DeclarationHeader, ABI_VERSION, MAGIC};

#[no_mangle]
pub static SEPL_PLUGIN_DECLARATION: DeclarationHeader = DeclarationHeader {
    magic: MAGIC,
    abi_version: ABI_VERSION,
    size: std::mem::size_of::<DeclarationHeader>() as u32,
};
