//! A library declaring an ABI version this host does not speak.

mod common;

use connector_plugin_sdk::abi::{DeclarationHeader, PluginDeclaration, ABI_VERSION, PANIC_UNWIND};

#[no_mangle]
pub static SEPL_PLUGIN_DECLARATION: PluginDeclaration = common::declaration(
    DeclarationHeader {
        abi_version: ABI_VERSION + 41,
        ..DeclarationHeader::current()
    },
    PANIC_UNWIND,
);
