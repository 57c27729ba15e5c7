//! `connector.yaml` text as the user may write it: loading must give a
//! config or problems naming where they are, never panic.
#![no_main]

use connector_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_yaml_str(text, "fuzz.yaml") {
        Ok(config) => {
            // A config that loads passes its own validation too.
            let _ = config.validate();
        }
        Err(error) => {
            // Every message is printable; none is empty.
            assert!(!error.to_string().is_empty());
        }
    }
});
