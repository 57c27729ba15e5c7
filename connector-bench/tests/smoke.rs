//! The benchmark harness in miniature (`all --smoke`: tiny counts, a few
//! seconds), so it cannot rot. Checks that every scenario ran and produced
//! positive figures; the timing targets are not checked here.

use std::process::Command;

use serde_json::Value;

fn positive(value: &Value, path: &str) {
    let v = value.pointer(path).and_then(Value::as_f64);
    assert!(
        v.is_some_and(|v| v > 0.0),
        "{path} should be a positive number, found {v:?}"
    );
}

#[test]
fn all_smoke_runs_every_scenario_and_writes_positive_figures() {
    let json = std::env::temp_dir().join(format!("connector-bench-smoke-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_connector-bench"))
        .args(["all", "--smoke", "--json"])
        .arg(&json)
        .output()
        .expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("| devices | runtime events/s |"), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);

    assert_eq!(report["smoke"], true);
    positive(&report, "/machine/cores");
    let events = report["events"].as_array().expect("events");
    assert!(!events.is_empty());
    for (i, _) in events.iter().enumerate() {
        for key in ["devices", "runtime_per_s", "raw_per_s", "ratio"] {
            positive(&report, &format!("/events/{i}/{key}"));
        }
        assert_eq!(
            report.pointer(&format!("/events/{i}/runtime_dropped")),
            Some(&Value::from(0))
        );
    }
    positive(&report, "/commands/pipelined/responses_per_s");
    for mode in ["pipelined_waited", "one_at_a_time"] {
        positive(&report, &format!("/commands/{mode}/responses_per_s"));
        positive(&report, &format!("/commands/{mode}/latency/p99_us"));
    }
    for key in [
        "alone/p99_us",
        "beside_slow/p99_us",
        "many_per_s",
        "ideal_per_s",
        "pool_threads",
    ] {
        positive(&report, &format!("/slow/{key}"));
    }
    let paced = report["commands"]["paced"].as_array().expect("paced runs");
    assert_eq!(paced.len(), 3);
    for i in 0..3 {
        positive(&report, &format!("/commands/paced/{i}/responses_per_s"));
        positive(&report, &format!("/commands/paced/{i}/latency/p50_us"));
    }
    assert_eq!(
        report["scale_failures"].as_array().map(Vec::len),
        Some(0),
        "{}",
        report["scale_failures"]
    );
    assert_eq!(
        report["config_failures"].as_array().map(Vec::len),
        Some(0),
        "{}",
        report["config_failures"]
    );
    let config = report["config"].as_array().expect("config");
    assert_eq!(config.len(), 2);
    for i in 0..config.len() {
        for key in [
            "devices",
            "file_bytes",
            "parse_ms",
            "peak_kib",
            "registered_ms",
            "reload_ms",
        ] {
            positive(&report, &format!("/config/{i}/{key}"));
        }
    }
    // 1 % changed, 1 % removed, 1 % added: the reload saw each kind.
    for kind in ["reload_added", "reload_removed", "reload_changed"] {
        assert_eq!(
            report.pointer(&format!("/config/1/{kind}")),
            Some(&Value::from(10)),
            "{kind}"
        );
    }
    if platform_sim::mosquitto::Mosquitto::binary().is_some() {
        for key in ["runtime_per_s", "raw_per_s", "broker_per_s", "ratio_to_raw"] {
            positive(&report, &format!("/mqtt/{key}"));
        }
    } else {
        eprintln!("mqtt scenario not checked: mosquitto is not installed");
    }
    let scale = report["scale"].as_array().expect("scale");
    assert!(!scale.is_empty());
    for i in 0..scale.len() {
        for key in ["devices", "ready_ms", "rss_ready_kib", "per_device_bytes"] {
            positive(&report, &format!("/scale/{i}/{key}"));
        }
    }
    // More devices than one registration request takes (10,000): all registered all the same.
    let largest = scale.last().expect("scale runs");
    assert!(largest["devices"].as_u64() > Some(10_000), "{largest}");
    assert!(largest["registration_requests"].as_u64() >= Some(2), "{largest}");
    for key in ["back_to_first_event_ms", "emitted", "received_distinct"] {
        positive(&report, &format!("/outage/{key}"));
    }
    assert_eq!(report["outage"]["lost_accepted_while_down"], 0, "{}", report["outage"]);
}
