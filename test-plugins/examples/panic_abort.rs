//! A library declaring that it was built with `panic = "abort"`. (Building
//! one for real would rebuild every dependency with other flags; the loader
//! only reads the declaration, and the SDK fills it from `cfg!(panic)`.)

mod common;

use connector_plugin_sdk::abi::{DeclarationHeader, PluginDeclaration, PANIC_ABORT};

#[no_mangle]
pub static SEPL_PLUGIN_DECLARATION: PluginDeclaration = common::declaration(DeclarationHeader::current(), PANIC_ABORT);
