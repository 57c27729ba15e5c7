//! The files in `packaging/` against the binary they install: the systemd
//! unit's command line must be one the binary accepts, and the Containerfile
//! must build and start this package. Text checks only; no systemd or
//! container engine is needed.

use std::path::PathBuf;
use std::process::Command;

const PACKAGE: &str = env!("CARGO_PKG_NAME");

fn packaging_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of the first `key=value` line of a unit file.
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|line| line.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, value)| value.trim())
}

fn help_text() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_connector-runtime"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_systemd_unit_starts_this_binary_with_flags_it_knows() {
    let unit = packaging_file("connector-runtime.service");
    let exec_start = unit_value(&unit, "ExecStart").expect("an ExecStart line");
    let mut words = exec_start.split_whitespace();
    assert_eq!(words.next(), Some(format!("/usr/local/bin/{PACKAGE}").as_str()));
    let help = help_text();
    let flags: Vec<&str> = words.filter(|word| word.starts_with('-')).collect();
    assert!(flags.contains(&"--config"), "{exec_start}");
    for flag in flags {
        let name = flag.split('=').next().unwrap();
        assert!(help.contains(&format!("{name} ")), "{name} is not in --help:\n{help}");
    }
}

#[test]
fn the_systemd_unit_restarts_on_failure_stops_with_sigterm_and_is_confined() {
    let unit = packaging_file("connector-runtime.service");
    let expected = [
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "sepl-connector"),
    ];
    for (key, value) in expected {
        assert_eq!(unit_value(&unit, key), Some(value), "{key}");
    }
    assert!(unit_value(&unit, "RestartSec").is_some(), "RestartSec");
}

#[test]
fn the_containerfile_builds_and_starts_this_package_as_a_non_root_user() {
    let containerfile = packaging_file("Containerfile");
    let has = |text: &str| containerfile.lines().any(|line| line.contains(text));
    assert!(
        has(&format!("cargo build --release --locked -p {PACKAGE}")),
        "build line"
    );
    assert!(
        has(&format!("/target/release/{PACKAGE} /usr/local/bin/{PACKAGE}")),
        "binary copy"
    );
    assert!(has(&format!("ENTRYPOINT [\"/usr/local/bin/{PACKAGE}\"]")), "entrypoint");
    let user = containerfile
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER line");
    assert!(!matches!(user.trim(), "root" | "0"), "runs as {user}");
    // The image reads its config where the systemd unit does.
    let unit = packaging_file("connector-runtime.service");
    let config = unit_value(&unit, "ExecStart")
        .and_then(|line| line.split_once("--config "))
        .map(|(_, rest)| rest.split_whitespace().next().unwrap())
        .expect("--config in ExecStart");
    assert!(has(&format!("CMD [\"--config\", \"{config}\"]")), "CMD reads {config}");
}
