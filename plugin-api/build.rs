//! Records the compiler and target this build uses, for the plugin ABI's
//! declaration (`connector_plugin_api::abi::BUILD_RUSTC` / `BUILD_TARGET`).
//!
//! One cargo build uses one rustc for every crate in its graph, so the value
//! recorded here is also the compiler of any plugin library or host built
//! against this copy of connector-plugin-api.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(&rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown rustc".to_owned());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown target".to_owned());
    println!("cargo:rustc-env=CONNECTOR_BUILD_RUSTC={version}");
    println!("cargo:rustc-env=CONNECTOR_BUILD_TARGET={target}");
}
