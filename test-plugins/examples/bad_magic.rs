//! A library whose declaration has the wrong magic number.

mod common;

use connector_plugin_sdk::abi::{DeclarationHeader, PluginDeclaration, PANIC_UNWIND};

#[no_mangle]
pub static SEPL_PLUGIN_DECLARATION: PluginDeclaration = common::declaration(
    DeclarationHeader {
        magic: u64::from_le_bytes(*b"NOTAPLUG"),
        ..DeclarationHeader::current()
    },
    PANIC_UNWIND,
);
