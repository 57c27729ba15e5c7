//! Tests of the configuration model through its public API: reading YAML,
//! error messages, environment overrides, defaults and secrecy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use connector_core::config::{Config, ConfigError, ConfigFile, Overflow, DEFAULT_LOOKUP_URL};
use connector_core::logging::{LogFormat, LogLevel};
use connector_core::{Device, Secret};

const PASSWORD: &str = "Tr0ub4dor&3-horse";

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/connector.yaml")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str(text, "connector.yaml")
}

fn env(pairs: &[(&str, &str)]) -> impl FnMut(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}

#[test]
fn the_defaults_are_those_of_protocol_section_one() {
    let config = Config::default();
    let p = &config.platform;
    assert_eq!(
        p.lookup_url,
        "http://fgseitsrancher.wifa.intern.uni-leipzig.de:8093/lookup"
    );
    assert_eq!(p.registration_path, "discovery");
    assert!(!p.https);
    assert_eq!(p.user, "");
    assert!(p.password.is_empty());
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(p.ping_interval_ms, 30_000);
    assert_eq!(p.pong_timeout_ms, None);
    assert_eq!(p.pong_timeout(), std::time::Duration::from_secs(60), "two intervals");
    assert_eq!(p.max_frame_bytes, 1_048_576);
    assert_eq!((p.backoff.initial_ms, p.backoff.max_ms), (1_000, 60_000));
    assert_eq!(p.buffer.max_frames, 100_000);
    assert_eq!(p.buffer.max_bytes, 67_108_864);
    assert_eq!(p.buffer.overflow, Overflow::DropOldest);
    assert_eq!((&p.ca_file, &p.buffer.path), (&None, &None));
    assert!(config.plugins.is_empty() && config.devices.is_empty());
    assert_eq!(config.validate().ok(), Some(()));
}

#[test]
fn the_example_config_parses_and_shows_exactly_the_defaults() {
    let config = Config::load(example_path()).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn metrics_are_off_by_default_and_listen_where_the_file_says() {
    assert_eq!(Config::default().metrics.listen, None);
    let config = parse("metrics:\n  listen: 127.0.0.1:9184\n").unwrap();
    assert_eq!(config.metrics.listen, Some("127.0.0.1:9184".parse().unwrap()));
    let err = parse("metrics:\n  listen: localhost\n").unwrap_err().to_string();
    assert!(
        err.contains("connector.yaml:2:") && err.contains("metrics.listen"),
        "{err}"
    );
}

#[test]
fn log_format_json_reads_from_the_file() {
    assert_eq!(parse("log_format: JSON\n").unwrap().log_format, LogFormat::Json);
}

#[test]
fn an_empty_file_or_empty_sections_mean_the_defaults() {
    for text in [
        "",
        "# nothing\n",
        "platform: {}\n",
        "platform:\n  backoff: {}\n  buffer: {}\n",
    ] {
        assert_eq!(parse(text).unwrap(), Config::default(), "{text:?}");
    }
}

#[test]
fn a_full_file_sets_every_key() {
    let text = r#"
platform:
  lookup_url: https://platform.example:8093/lookup
  registration_path: /api/discovery/
  https: yes
  user: alice
  password: "s3cret"
  ca_file: certs/ca.pem
  ping_interval_ms: 1000
  pong_timeout_ms: 2500
  max_frame_bytes: 4096
  backoff: { initial_ms: 10, max_ms: 10 }
  buffer: { max_frames: 5, max_bytes: 500, overflow: drop_newest, path: outbox.db }
log_level: CRITICAL
plugins: [libecho.so, /opt/plugins/libzway.so]
devices:
  - id: lamp-1
    type: lamp
    name: Living room lamp
    plugin: echo
    settings:
      level: 3
      tags: [a, b]
      nested: { on: true, ratio: 0.5, none: null }
      7: seven
  - id: sensor
    plugin: echo
"#;
    let config = parse(text).unwrap();
    let p = &config.platform;
    assert_eq!(p.lookup_url, "https://platform.example:8093/lookup");
    assert_eq!(config.registration_path(), "api/discovery");
    assert!(p.https);
    assert_eq!(config.credentials().user, "alice");
    assert_eq!(config.credentials().password.expose(), "s3cret");
    assert_eq!(p.ca_file.as_deref(), Some(Path::new("certs/ca.pem")));
    assert_eq!(p.ping_interval().as_millis(), 1000);
    assert_eq!(p.pong_timeout().as_millis(), 2500);
    assert_eq!(p.max_frame_bytes, 4096);
    assert_eq!((p.backoff.initial().as_millis(), p.backoff.max().as_millis()), (10, 10));
    assert_eq!((p.buffer.max_frames, p.buffer.max_bytes), (5, 500));
    assert_eq!(p.buffer.overflow, Overflow::DropNewest);
    assert_eq!(p.buffer.path.as_deref(), Some(Path::new("outbox.db")));
    assert_eq!(config.log_level, LogLevel::Error);
    assert_eq!(config.plugins.len(), 2);

    let lamp = &config.devices[0];
    assert_eq!(lamp.line, Some(17));
    assert_eq!(lamp.device(), Device::new("lamp-1", "lamp", "Living room lamp"));
    assert_eq!(
        lamp.settings,
        serde_json::json!({
            "level": 3,
            "tags": ["a", "b"],
            "nested": {"on": true, "ratio": 0.5, "none": null},
            "7": "seven"
        })
    );
    let sensor = &config.devices[1];
    assert_eq!(sensor.line, Some(26));
    assert_eq!(sensor.name, "sensor", "the name defaults to the id");
    assert_eq!(sensor.device_type, "");
    assert_eq!(sensor.settings, serde_json::json!({}));
}

#[test]
fn a_device_with_empty_settings_gets_an_empty_object() {
    let config = parse("devices:\n  - id: a\n    plugin: p\n    settings:\n").unwrap();
    assert_eq!(config.devices[0].settings, serde_json::json!({}));
}

/// Each bad input and the fragments its one-line error must contain.
#[test]
fn bad_files_are_reported_with_file_line_column_and_key() {
    let table: &[(&str, &[&str])] = &[
        (
            "platform:\n  lookup_ur: http://x/\n",
            &["connector.yaml:2:3: platform: unknown field `lookup_ur`, expected one of"],
        ),
        (
            "platform:\n  user: a\n  backoff:\n    initial_ms: 5\n    maximum: 9\n",
            &["connector.yaml:5:5: platform.backoff: unknown field `maximum`"],
        ),
        (
            "devices:\n  - id: a\n    plugin: p\n    colour: red\n",
            &["connector.yaml:4:5: devices[0]: unknown field `colour`"],
        ),
        (
            "loglevel: debug\n",
            &["connector.yaml:1:1: unknown field `loglevel`"],
        ),
        (
            "platform:\n  ping_interval_ms: -5\n",
            &["connector.yaml:2:21: platform.ping_interval_ms: invalid value: integer `-5`, expected u64"],
        ),
        (
            "platform:\n  ping_interval_ms: soon\n",
            &["connector.yaml:2:21: platform.ping_interval_ms: invalid type: string \"soon\""],
        ),
        (
            "platform:\n  backoff: 5\n",
            &["connector.yaml:2:12: platform.backoff: invalid type: integer `5`"],
        ),
        (
            "platform:\n  buffer:\n    overflow: drop_all\n",
            &["connector.yaml:3:15: platform.buffer.overflow: unknown variant `drop_all`, expected `drop_oldest` or `drop_newest`"],
        ),
        (
            "log_level: loud\n",
            &["connector.yaml:1:12: log_level: unknown log level `loud`, expected one of trace, debug, info, warning, warn, error, critical"],
        ),
        (
            "log_format: xml\n",
            &["connector.yaml:1:13: log_format: unknown log format `xml`, expected one of text, json"],
        ),
        (
            "platform:\n  https: maybe\n",
            &["connector.yaml:2:10: platform.https: `maybe` is not a yes/no value"],
        ),
        (
            "devices:\n  - id: a\n    plugin: p\n    settings: [1, 2]\n",
            &["connector.yaml:4:15: devices[0].settings: invalid type: sequence, expected a mapping of plugin settings"],
        ),
        (
            "devices: {id: a}\n",
            &["connector.yaml:1:10: devices: invalid type: map, expected a sequence"],
        ),
        (
            "platform:\n  user: a\n  user: b\n",
            &["connector.yaml:3:3: platform: duplicate field `user`"],
        ),
        (
            "platform:\n  user: a\n bad: [\n",
            &["connector.yaml:3:", "did not find expected key"],
        ),
        ("- 1\n", &["connector.yaml:1:1: invalid type: sequence, expected struct Config"]),
    ];
    for (text, fragments) in table {
        let err = parse(text).expect_err(text);
        assert!(!matches!(err, ConfigError::Read { .. }), "{text:?}: {err:?}");
        let message = err.to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
        for fragment in *fragments {
            assert!(
                message.contains(fragment),
                "{text:?}\n got: {message}\nwant: {fragment}"
            );
        }
    }
}

#[test]
fn bad_values_are_all_reported_together_one_per_line() {
    let text = "\
platform:
  lookup_url: fgseitsrancher:8093/lookup
  registration_path: /
  ping_interval_ms: 0
  backoff:
    initial_ms: 500
    max_ms: 100
  buffer:
    max_bytes: 0
plugins: [\"\"]
devices:
  - type: lamp
    plugin: echo
  - id: b
    plugin: \"\"
";
    let err = parse(text).unwrap_err();
    let message = err.to_string();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(
        lines,
        [
            "connector.yaml:2:15: platform.lookup_url: `fgseitsrancher:8093/lookup` is not a usable URL: it must start with http:// or https://",
            "connector.yaml:3:22: platform.registration_path: must not be empty",
            "connector.yaml:4:21: platform.ping_interval_ms: must be greater than 0",
            "connector.yaml:7:13: platform.backoff.max_ms: must be at least initial_ms (500)",
            "connector.yaml:9:16: platform.buffer.max_bytes: must be greater than 0",
            "connector.yaml:10:11: plugins[0]: must not be empty",
            "connector.yaml:12:5: devices[0].id: missing or empty; every device needs an id",
            "connector.yaml:15:13: devices[1].plugin: missing or empty; name the plugin that drives this device",
        ],
        "{message}"
    );
    assert_eq!(err.problems().len(), 8);
    assert_eq!(err.problems()[6].line, Some(12));
    assert_eq!(err.problems()[6].key, "devices[0].id");
}

#[test]
fn duplicate_device_ids_name_both_lines() {
    let text = "\
devices:
  - id: lamp-1
    plugin: echo
  - id: lamp-2
    plugin: echo
  - plugin: echo
    id: lamp-1
";
    let err = parse(text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "connector.yaml:7:9: devices[2].id: duplicate device id `lamp-1`, first used by devices[0] at line 2"
    );
}

#[test]
fn a_missing_file_names_the_path_and_the_os_error() {
    let path = std::env::temp_dir().join("connector-config-test-no-such-dir/connector.yaml");
    let err = Config::load(&path).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(message.contains(&path.display().to_string()), "{message}");
    let os_error = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
    assert!(message.contains("os error") || message.contains(&os_error), "{message}");
}

#[test]
fn load_names_the_file_and_resolves_relative_paths_against_its_directory() {
    let dir = std::env::temp_dir().join(format!("connector-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("connector.yaml");
    std::fs::write(
        &path,
        "platform:\n  ca_file: ca.pem\n  buffer: { path: out/box }\nplugins: [libecho.so, /abs/libzway.so]\n",
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.plugins,
        [dir.join("libecho.so"), PathBuf::from("/abs/libzway.so")]
    );
    assert_eq!(config.platform.ca_file, Some(dir.join("ca.pem")));
    assert_eq!(config.platform.buffer.path, Some(dir.join("out/box")));

    std::fs::write(&path, "platform:\n  https: 2\n").unwrap();
    let message = Config::load(&path).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}:2:10: platform.https:", path.display())),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_environment_overrides_the_file_which_overrides_the_defaults() {
    let text = "platform:\n  user: file-user\n  registration_path: from-file\nlog_level: debug\n";
    let mut config = parse(text).unwrap();
    config
        .apply_env_from(env(&[
            ("CONNECTOR_USER", "env-user"),
            ("CONNECTOR_PASSWORD", "env-password"),
            ("CONNECTOR_LOOKUP_URL", "http://sim.local:8093/lookup"),
            ("LOGLEVEL", "warning"),
        ]))
        .unwrap();
    assert_eq!(config.platform.user, "env-user");
    assert_eq!(config.platform.password, Secret::new("env-password"));
    assert_eq!(config.platform.lookup_url, "http://sim.local:8093/lookup");
    assert_eq!(config.log_level, LogLevel::Warning);
    assert_eq!(
        config.platform.registration_path, "from-file",
        "not in env: the file wins"
    );
    assert_eq!(config.platform.ping_interval_ms, 30_000, "in neither: the default");

    // What a command-line flag does afterwards, and the check that follows.
    config.log_level = LogLevel::Trace;
    config.validate().unwrap();
    assert_eq!(config.log_level, LogLevel::Trace);
}

#[test]
fn unset_or_empty_variables_leave_the_file_alone() {
    let mut config = parse("platform:\n  user: u\n  password: p\n  https: true\n").unwrap();
    let before = config.clone();
    config.apply_env_from(env(&[])).unwrap();
    config
        .apply_env_from(env(&[
            ("CONNECTOR_USER", ""),
            ("CONNECTOR_PASSWORD", ""),
            ("CONNECTOR_HTTPS", ""),
        ]))
        .unwrap();
    assert_eq!(config, before);
}

#[test]
fn connector_https_reads_truthy_and_falsy_words_in_any_case() {
    for word in ["1", "true", "TRUE", "yes", "Yes", "on", "ON"] {
        let mut config = Config::default();
        config.apply_env_from(env(&[("CONNECTOR_HTTPS", word)])).unwrap();
        assert!(config.platform.https, "{word}");
    }
    for word in ["0", "false", "False", "no", "NO", "off", "oFF"] {
        let mut config = parse("platform:\n  https: true\n").unwrap();
        config.apply_env_from(env(&[("CONNECTOR_HTTPS", word)])).unwrap();
        assert!(!config.platform.https, "{word}");
    }
}

#[test]
fn bad_environment_values_are_all_reported_naming_their_variables() {
    let mut config = Config::default();
    let err = config
        .apply_env_from(env(&[
            ("CONNECTOR_HTTPS", "maybe"),
            ("LOGLEVEL", "loud"),
            ("CONNECTOR_LOOKUP_URL", "sim.local/lookup"),
            ("CONNECTOR_DEVICE_REGISTRATION_PATH", "a b"),
            ("CONNECTOR_USER", "changed"),
        ]))
        .unwrap_err();
    let message = err.to_string();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 4, "{message}");
    assert!(lines[0].starts_with("environment: CONNECTOR_LOOKUP_URL: `sim.local/lookup` is not a usable URL"));
    assert!(lines[1].starts_with("environment: CONNECTOR_DEVICE_REGISTRATION_PATH: `a b`"));
    assert!(lines[2].starts_with("environment: CONNECTOR_HTTPS: `maybe` is not a yes/no value"));
    assert!(lines[3].starts_with("environment: LOGLEVEL: unknown log level `loud`"));
    assert_eq!(config, Config::default(), "nothing is applied when something is wrong");
}

#[test]
fn https_switches_an_http_lookup_url_to_https() {
    let mut config = Config::default();
    assert_eq!(config.lookup_url(), DEFAULT_LOOKUP_URL);
    config.platform.https = true;
    assert_eq!(
        config.lookup_url(),
        "https://fgseitsrancher.wifa.intern.uni-leipzig.de:8093/lookup"
    );
    config.platform.lookup_url = "HTTPS://already.example/lookup".into();
    assert_eq!(config.lookup_url(), "HTTPS://already.example/lookup");
}

#[test]
fn validate_after_an_override_reports_without_a_file_but_with_the_device_line() {
    let mut config = parse("devices:\n  - id: a\n    plugin: p\n").unwrap();
    config.platform.pong_timeout_ms = Some(0);
    config.devices[0].plugin.clear();
    let message = config.validate().unwrap_err().to_string();
    assert_eq!(
        message,
        "platform.pong_timeout_ms: must be longer than ping_interval_ms (30000): a pong can only come after a ping; \
         leave it out for two intervals\n\
         line 2: devices[0].plugin: missing or empty; name the plugin that drives this device"
    );
}

#[test]
fn the_password_never_shows_in_debug_output() {
    let config = parse(&format!("platform:\n  user: alice\n  password: \"{PASSWORD}\"\n")).unwrap();
    assert_eq!(config.credentials().password.expose(), PASSWORD);
    assert!(!format!("{config:?}").contains(PASSWORD));
    assert!(!format!("{:?}", config.credentials()).contains(PASSWORD));
}

#[test]
fn the_password_never_shows_in_errors_even_where_it_does_not_belong() {
    let broken = [
        format!("platform:\n  password: [{PASSWORD}]\n"),
        format!("platform:\n  password: {{{PASSWORD}: 1}}\n"),
        format!("platform:\n  password: &pw \"{PASSWORD}\"\n  ping_interval_ms: *pw\n"),
        format!("platform:\n  password: &pw \"{PASSWORD}\"\n  https: *pw\n"),
        format!("platform:\n  password: &pw \"{PASSWORD}\"\nlog_level: *pw\n"),
        format!("platform:\n  password: &pw \"{PASSWORD}\"\n  buffer: {{overflow: *pw}}\n"),
        format!("platform:\n  password: \"{PASSWORD}\"\n  lookup_url: \"http://{PASSWORD}/\"\n"),
        format!("platform:\n  password: \"{PASSWORD}\"\ndevices:\n  - id: \"{PASSWORD}\"\n  - id: \"{PASSWORD}\"\n"),
        format!("platform:\n  password: {PASSWORD}\n   x: [\n"),
    ];
    for text in &broken {
        let err = parse(text).expect_err(text);
        let shown = format!("{err}\n{err:?}");
        assert!(!shown.contains(PASSWORD), "{text}\nleaked in:\n{shown}");
    }

    let mut config = Config::default();
    let err = config
        .apply_env_from(env(&[("CONNECTOR_PASSWORD", PASSWORD), ("CONNECTOR_HTTPS", PASSWORD)]))
        .unwrap_err();
    let shown = format!("{err}\n{err:?}");
    assert!(shown.contains("CONNECTOR_HTTPS"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

/// Issue 19: a file with many kinds of mistakes reports every one of them
/// in one run, in file order, each with line, column and key, and what
/// could be read is there for the checks that come later.
#[test]
fn every_problem_of_a_file_is_reported_at_once_and_the_rest_is_read() {
    let text = "\
log_level: loud
platform:
  user: alice
  ping_interval_ms: soon
  backoff: {initial_ms: 0, maximum: 5}
devices:
  - id: lamp-1
    plugin: echo
    colour: red
  - 5
  - id: lamp-1
    plugin: echo
  - id: plug-2
    plugin: echo
    command_timeout_ms: -1
    settings: {port: 1, port: 2}
";
    let file = ConfigFile::parse(text, "c.yaml");
    let shown: Vec<String> = file.problems().iter().map(ToString::to_string).collect();
    let want = [
        "c.yaml:1:12: log_level: unknown log level `loud`",
        "c.yaml:4:21: platform.ping_interval_ms: invalid type: string \"soon\"",
        "c.yaml:5:28: platform.backoff: unknown field `maximum`",
        "c.yaml:5:25: platform.backoff.initial_ms: must be greater than 0",
        "c.yaml:9:5: devices[0]: unknown field `colour`",
        "c.yaml:10:5: devices[1]: invalid type: integer `5`, expected struct DeviceConfig",
        "c.yaml:11:9: devices[2].id: duplicate device id `lamp-1`, first used by devices[0] at line 7",
        "c.yaml:15:25: devices[3].command_timeout_ms: invalid value: integer `-1`",
        "c.yaml:16:25: devices[3].settings: duplicate field `port` (first at line 16)",
    ];
    assert_eq!(shown.len(), want.len(), "{shown:#?}");
    for fragment in want {
        assert!(
            shown.iter().any(|line| line.starts_with(fragment)),
            "{fragment}\nnot in {shown:#?}"
        );
    }
    let lines: Vec<_> = file.problems().iter().map(|p| p.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "in file order: {lines:?}");

    let config = file.config();
    assert_eq!(config.platform.user, "alice", "good values are kept");
    let ids: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["lamp-1", "lamp-1", "plug-2"], "the refused entry is left out");
    assert_eq!(config.devices[2].settings, serde_json::json!({"port": 1}));
    assert_eq!(
        file.device_problem(2, "settings.port", "refused").to_string(),
        "c.yaml:16:22: devices[3].settings.port: refused",
        "later checks are placed by the device's entry in the file"
    );
    assert_eq!(
        file.problem("platform.ca_file", "missing").to_string(),
        "c.yaml:3:3: platform.ca_file: missing",
        "a key that is not there is placed at what holds it"
    );
    assert!(matches!(file.into_result(), Err(ConfigError::Invalid(p)) if p.0.len() == want.len()));
}

#[test]
fn a_device_id_with_a_control_character_is_refused_with_its_line() {
    for id in ["\"lamp\\n1\"", "\"lamp\\t1\"", "\"\\u0007\""] {
        let text = format!("devices:\n  - plugin: echo\n    id: {id}\n");
        let message = parse(&text).unwrap_err().to_string();
        assert!(
            message.starts_with("connector.yaml:3:9: devices[0].id: must not hold a control character (found U+00"),
            "{message}"
        );
    }
}

#[test]
fn the_pong_timeout_follows_the_ping_interval_and_must_be_longer() {
    let config = parse("platform:\n  ping_interval_ms: 120000\n").unwrap();
    assert_eq!(config.platform.pong_timeout(), std::time::Duration::from_secs(240));
    let message = parse("platform:\n  ping_interval_ms: 4000\n  pong_timeout_ms: 2000\n")
        .unwrap_err()
        .to_string();
    assert!(
        message
            .starts_with("connector.yaml:3:20: platform.pong_timeout_ms: must be longer than ping_interval_ms (4000)"),
        "{message}"
    );
    let config = parse("platform:\n  ping_interval_ms: 4000\n  pong_timeout_ms: 9000\n").unwrap();
    assert_eq!(config.platform.pong_timeout(), std::time::Duration::from_secs(9));
}

/// The file of a big gateway reads in one pass: every device with its line.
/// (How quickly is the `config` benchmark's business, not a test's.)
#[test]
fn a_long_device_list_is_read_whole_with_every_line() {
    let mut text = String::from("devices:\n");
    for n in 0..20_000 {
        text.push_str(&format!(
            "  - id: dev-{n}\n    plugin: echo\n    settings: {{n: {n}}}\n"
        ));
    }
    text.push_str("  - id: dev-7\n    plugin: echo\n");
    let file = ConfigFile::parse(&text, "big.yaml");
    assert_eq!(file.config().devices.len(), 20_001);
    assert_eq!(file.config().devices[19_999].line, Some(2 + 3 * 19_999));
    assert_eq!(file.config().devices[19_999].settings, serde_json::json!({"n": 19_999}));
    let shown: Vec<String> = file.problems().iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["big.yaml:60002:9: devices[20000].id: duplicate device id `dev-7`, first used by devices[7] at line 23"]
    );
}

#[test]
fn numbers_and_booleans_written_bare_are_text_where_the_config_wants_text() {
    let config = parse(
        "platform:\n  user: 42\n  password: 123456\ndevices:\n  - {id: 1001, type: true, name: 2024, plugin: echo}\n",
    )
    .unwrap();
    assert_eq!(config.platform.user, "42");
    assert_eq!(config.platform.password.expose(), "123456");
    let device = &config.devices[0];
    assert_eq!(
        (device.id.as_str(), device.device_type.as_str(), device.name.as_str()),
        ("1001", "true", "2024")
    );
    // And where a number is wanted, text is still refused.
    let message = parse("platform:\n  ping_interval_ms: '5'\n").unwrap_err().to_string();
    assert!(
        message.contains("invalid type: string \"5\", expected u64"),
        "{message}"
    );
}
