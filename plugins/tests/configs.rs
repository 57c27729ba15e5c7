//! The example configs in `config/` are documentation a user copies, so they
//! are checked like code: each loads, each device names a built-in plugin
//! (or one from a library the config loads) and its settings fit, and each
//! built-in plugin has an example of its own.

use std::fs;
use std::path::{Path, PathBuf};

use connector_core::config::Config;
use connector_core::plugin::DeviceSpec;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Every `config/*.yaml`, sorted so failures read the same each run.
fn example_configs() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(config_dir())
        .expect("config/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_example_config_loads_and_each_device_fits_its_plugin() {
    let plugins = connector_plugins::builtin();
    let paths = example_configs();
    for expected in [
        "connector.yaml",
        "demo.yaml",
        "echo.yaml",
        "generator.yaml",
        "sysmetrics.yaml",
    ] {
        assert!(
            paths.iter().any(|p| p.ends_with(expected)),
            "config/{expected} is missing: {paths:?}"
        );
    }
    let async_plugins = connector_plugins::builtin_async();
    for path in &paths {
        let config = Config::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for device in &config.devices {
            if let Some((_, create)) = async_plugins.iter().find(|(name, _)| *name == device.plugin) {
                // An async plugin's factory reads the settings as the sync ones do.
                if let Err(e) = create(&DeviceSpec::from(device)) {
                    panic!("{}: {e}", path.display());
                }
                continue;
            }
            if !plugins.contains(&device.plugin) {
                // A config may load plugin libraries (`plugins:`); their
                // devices are checked by the runtime's tests, which load them.
                assert!(
                    !config.plugins.is_empty(),
                    "{}: device {:?} names {:?}, which is no built-in plugin, and no library is loaded",
                    path.display(),
                    device.id,
                    device.plugin
                );
                continue;
            }
            let spec = DeviceSpec::from(device);
            // Creating is where the settings are read; nothing starts yet.
            if let Err(e) = plugins.create(&spec) {
                panic!("{}: {e}", path.display());
            }
        }
    }
}

#[test]
fn every_builtin_plugin_has_an_example_config_that_runs_against_the_simulator() {
    let async_names = connector_plugins::builtin_async().into_iter().map(|(name, _)| name);
    for name in connector_plugins::builtin().names().chain(async_names) {
        let path = config_dir().join(format!("{name}.yaml"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let config = Config::from_yaml_str(&text, &path.display().to_string()).unwrap();
        assert!(
            config.devices.iter().any(|d| d.plugin == name),
            "{} has no device using `{name}`",
            path.display()
        );
        assert_eq!(
            config.platform.lookup_url,
            "http://127.0.0.1:8093/lookup",
            "{}",
            path.display()
        );
        let command = format!("connector-runtime --config config/{name}.yaml --embedded-platform");
        assert!(
            text.contains(&command),
            "{} does not say how to run it: {command}",
            path.display()
        );
    }
}

#[test]
fn a_setting_that_does_not_fit_names_the_device_its_line_and_the_key() {
    let text = "\
devices:
  - id: lamp-1
    plugin: echo
  - id: counter-1
    plugin: generator
    settings:
      interval_ms: 0
";
    let config = Config::from_yaml_str(text, "test.yaml").unwrap();
    let spec = DeviceSpec::from(&config.devices[1]);
    let err = connector_plugins::builtin().create(&spec).err().unwrap().to_string();
    assert_eq!(
        err,
        "device \"counter-1\" (declared at line 4): `settings.interval_ms`: must be above 0"
    );
}
