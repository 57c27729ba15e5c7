//! Broken `connector.yaml` files against the real binary's `--check`
//! (issue 7, point 5): each gives exit code 2 and one message naming the
//! file, the line and the key (or, for a plugin library, the library's path).

mod util;

use std::path::{Path, PathBuf};

/// A directory of its own per test process, with the files the rows refer to.
fn workspace() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("a-directory.so")).unwrap();
    std::fs::write(dir.join("not-a-library.so"), "just text, no ELF header").unwrap();
    std::fs::write(dir.join("not-pem.crt"), "garbage\n").unwrap();
    dir
}

fn check(dir: &Path, name: &str, yaml: &str) -> (Option<i32>, String) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    util::check_file(&path, &[])
}

/// (file name, its text, what stderr must hold). `{file}` stands for the
/// config's full path; every row names a line and a key too, except the
/// syntax errors (no key yet) and the libraries (named by their path).
const TABLE: &[(&str, &str, &[&str])] = &[
    (
        "syntax-tab.yaml",
        "platform:\n\tuser: a\n",
        &["{file}:2:2:", "not valid YAML: tabs disallowed"],
    ),
    (
        "syntax-quote.yaml",
        "platform:\n  user: \"alice\n",
        &[
            "{file}:2:9:",
            "not valid YAML: while scanning a quoted scalar, found unexpected end of stream",
        ],
    ),
    (
        "unknown-top.yaml",
        "platfrom:\n  user: a\n",
        &["{file}:1:1:", "unknown field `platfrom`"],
    ),
    (
        "unknown-platform.yaml",
        "platform:\n  lookup_ur: x\n",
        &["{file}:2:3: platform: unknown field `lookup_ur`"],
    ),
    (
        "unknown-buffer.yaml",
        "platform:\n  buffer:\n    max_frame: 5\n",
        &["{file}:3:5: platform.buffer: unknown field `max_frame`"],
    ),
    (
        "unknown-device.yaml",
        "devices:\n  - {id: a, plugin: echo, colour: red}\n",
        &["{file}:2:", "devices[0]: unknown field `colour`"],
    ),
    (
        "wrong-type.yaml",
        "platform:\n  ping_interval_ms: often\n",
        &["{file}:2:", "platform.ping_interval_ms: invalid type"],
    ),
    (
        "wrong-bool.yaml",
        "platform:\n  https: maybe\n",
        &["{file}:2:", "platform.https:"],
    ),
    (
        "devices-not-a-list.yaml",
        "devices: {a: 1}\n",
        &["{file}:1:", "devices: invalid type"],
    ),
    (
        "zero-ping.yaml",
        "platform:\n  ping_interval_ms: 0\n",
        &["{file}:2:", "platform.ping_interval_ms: must be greater than 0"],
    ),
    (
        "negative-backoff.yaml",
        "platform:\n  backoff:\n    initial_ms: -5\n",
        &["{file}:3:", "platform.backoff.initial_ms:"],
    ),
    (
        "max-below-initial.yaml",
        "platform:\n  backoff:\n    initial_ms: 5000\n    max_ms: 10\n",
        &["{file}:4:", "platform.backoff.max_ms: must be at least initial_ms"],
    ),
    (
        "duplicate-id.yaml",
        "devices:\n  - {id: a, plugin: echo}\n  - {id: a, plugin: echo}\n",
        &["{file}:3:", "devices[1].id: duplicate device id `a`"],
    ),
    (
        "empty-id.yaml",
        "devices:\n  - {id: \"\", plugin: echo}\n",
        &["{file}:2:", "devices[0].id: missing or empty"],
    ),
    (
        "no-plugin-key.yaml",
        "devices:\n  - {id: a}\n",
        &["{file}:2:", "devices[0].plugin: missing or empty"],
    ),
    (
        "unknown-plugin.yaml",
        "devices:\n  - {id: a, plugin: nope}\n",
        &["{file}:2:21: devices[0].plugin:", "no plugin named \"nope\""],
    ),
    (
        "library-missing.yaml",
        "plugins:\n  - ./missing.so\n",
        &["plugin library", "missing.so", "cannot be found"],
    ),
    (
        "library-not-a-library.yaml",
        "plugins:\n  - ./not-a-library.so\n",
        &["plugin library", "not-a-library.so"],
    ),
    (
        "library-unreadable.yaml",
        "plugins:\n  - ./a-directory.so\n",
        &["plugin library", "a-directory.so"],
    ),
    (
        "bad-url.yaml",
        "platform:\n  lookup_url: \"ftp://x y\"\n",
        &["{file}:2:", "platform.lookup_url:"],
    ),
    (
        "bad-log-level.yaml",
        "log_level: loud\n",
        &["{file}:1:", "log_level: unknown log level `loud`"],
    ),
    (
        "bad-overflow.yaml",
        "platform:\n  buffer:\n    overflow: drop_all\n",
        &["{file}:3:", "platform.buffer.overflow:"],
    ),
    (
        "ca-file-missing.yaml",
        "platform:\n  ca_file: ./missing.pem\n",
        &["{file}:2:12: platform.ca_file:", "missing.pem"],
    ),
    (
        "ca-file-not-pem.yaml",
        "platform:\n  ca_file: not-pem.crt\n",
        &["{file}:2:12: platform.ca_file:", "no PEM certificate"],
    ),
    (
        "generator-negative-interval.yaml",
        "devices:\n  - id: g\n    plugin: generator\n    settings:\n      interval_ms: -5\n",
        &[
            "{file}:5:20: devices[0].settings.interval_ms:",
            "`settings.interval_ms`",
        ],
    ),
    (
        "generator-unknown-setting.yaml",
        "devices:\n  - id: g\n    plugin: generator\n    settings:\n      intervall_ms: 5\n",
        &[
            "{file}:5:21: devices[0].settings.intervall_ms:",
            "unknown field `intervall_ms`",
        ],
    ),
    (
        "echo-unknown-setting.yaml",
        "devices:\n  - id: e\n    plugin: echo\n    settings: {volume: 3}\n",
        &["{file}:4:24: devices[0].settings.volume:", "unknown field `volume`"],
    ),
];

#[test]
fn every_broken_config_fails_the_check_naming_file_line_and_key() {
    assert!(TABLE.len() >= 15);
    let dir = workspace();
    let mut failures = Vec::new();
    for (name, yaml, expected) in TABLE {
        let (code, stderr) = check(&dir, name, yaml);
        let file = dir.join(name).display().to_string();
        if code != Some(2) {
            failures.push(format!("{name}: exit {code:?}, not 2: {stderr}"));
        }
        for want in expected.iter().map(|w| w.replace("{file}", &file)) {
            if !stderr.contains(&want) {
                failures.push(format!("{name}: {stderr:?} lacks {want:?}"));
            }
        }
        // One clear message: the error line(s), no panic or backtrace.
        if stderr.contains("panicked") || !stderr.starts_with("error: ") {
            failures.push(format!("{name}: not one clear message: {stderr:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_problems_found_after_loading_are_reported_together() {
    let dir = workspace();
    let yaml = "platform:\n  ca_file: ./missing.pem\ndevices:\n  - {id: a, plugin: nope}\n  - id: g\n    plugin: generator\n    settings: {interval_ms: 0}\n";
    let (code, stderr) = check(&dir, "several.yaml", yaml);
    assert_eq!(code, Some(2), "{stderr}");
    let file = dir.join("several.yaml").display().to_string();
    for want in [
        format!("{file}:2:12: platform.ca_file:"),
        format!("{file}:4:21: devices[0].plugin:"),
        format!("{file}:7:29: devices[1].settings.interval_ms:"),
    ] {
        assert!(stderr.contains(&want), "{stderr:?} lacks {want:?}");
    }
}

/// Issue 19: every problem of a file in one run, from the reading of the
/// YAML to the plugins' settings, each with `file:line:col` and key path;
/// a bad flag is named as the flag, not blamed on the file.
#[test]
fn every_problem_of_a_file_and_the_flags_shows_in_one_run() {
    let dir = workspace();
    let path = dir.join("everything.yaml");
    let yaml = "\
log_level: loud
devices:
  - id: lamp-1
    plugin: echo
    colour: red
  - {id: plug-2, plugin: nope}
  - id: lamp-1
    plugin: echo
  - id: gen-3
    plugin: generator
    settings:
      interval_ms: 0
";
    std::fs::write(&path, yaml).unwrap();
    let (code, stderr) = util::check_file(&path, &["--lookup-url", "ftp://y"]);
    assert_eq!(code, Some(2), "{stderr}");
    let file = path.display().to_string();
    let want = [
        format!("{file}:1:12: log_level: unknown log level `loud`"),
        format!("{file}:5:5: devices[0]: unknown field `colour`"),
        format!("{file}:6:26: devices[1].plugin: device \"plug-2\": no plugin named \"nope\""),
        format!("{file}:7:9: devices[2].id: duplicate device id `lamp-1`, first used by devices[0] at line 3"),
        format!("{file}:12:20: devices[3].settings.interval_ms: device \"gen-3\""),
        "--lookup-url: `ftp://y` is not a usable URL: it must start with http:// or https://".to_owned(),
    ];
    for line in &want {
        assert!(stderr.contains(line.as_str()), "{stderr}\nlacks: {line}");
    }
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), want.len(), "one line per problem:\n{stderr}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.contains(want.as_str()), "in file order, then the flag:\n{stderr}");
    }
}
