//! The control API over HTTP (and the matching `SimHandle` calls):
//! commands with and without waiting, events, counters, reset, and clear
//! errors for bad requests.

mod util;

use std::time::Duration;

use platform_sim::{Command, EventFilter, SimError};
use serde_json::json;
use util::*;

#[actix_rt::test]
async fn command_reaches_the_connector_as_the_section_4_json_object() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    let (status, answer) = send_json(
        "POST",
        &format!("{}/command", sim.control_url()),
        &json!({"device_id": "lamp-1", "endpoint": "on", "endpoint_name": "Switch on",
                "header": "'Content-Type': 'application/json'", "body": "{'level': 3}"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let task_id = answer["task_id"].as_str().unwrap().to_owned();
    assert!(!task_id.is_empty());

    let frame = ws_next_json(&mut conn).await;
    assert_eq!(frame["device_url"], "lamp-1");
    assert_eq!(frame["service_url"], "on");
    assert_eq!(frame["service_name"], "Switch on");
    assert_eq!(frame["task_id"], task_id.as_str());
    let time = frame["time"].as_str().expect("time is a string");
    assert!(time.parse::<u64>().unwrap() > 1_500_000_000);
    for key in ["device_instance_id", "worker_id", "output_name"] {
        assert!(!frame[key].as_str().unwrap().is_empty(), "{key} set");
    }
    assert_eq!(
        frame["protocol_parts"],
        json!([{"name": "header", "value": "'Content-Type': 'application/json'"},
               {"name": "body", "value": "{'level': 3}"}])
    );
    assert_eq!(sim.counters().await.commands_sent, 1);
}

#[actix_rt::test]
async fn task_ids_are_unique() {
    let sim = start().await;
    let _conn = ws_login(&sim).await;
    let a = sim.send_command(&Command::new("d", "e")).await.unwrap();
    let b = sim.send_command(&Command::new("d", "e")).await.unwrap();
    assert_ne!(a, b);
}

#[actix_rt::test]
async fn command_with_wait_returns_the_connectors_response() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    let url = format!("{}/command", sim.control_url());
    let request = actix_rt::spawn(async move {
        send_json(
            "POST",
            &url,
            &json!({"device_id": "lamp-1", "endpoint": "on", "body": "go", "wait_ms": 5000}),
        )
        .await
    });
    // Play the connector: answer with the command, body replaced.
    let mut command = ws_next_json(&mut conn).await;
    command["protocol_parts"] = json!([{"name": "body", "value": "done"}]);
    ws_send(&mut conn, &format!("response:{command}")).await;

    let (status, answer) = request.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["task_id"], command["task_id"]);
    assert_eq!(answer["response"], command);
    assert_eq!(sim.counters().await.responses_matched, 1);
}

#[actix_rt::test]
async fn handle_command_and_wait_returns_the_parsed_response() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    let waiting = {
        let sim = sim.clone();
        actix_rt::spawn(async move {
            sim.command_and_wait(&Command::new("m", "read").body("?"), DEADLINE)
                .await
        })
    };
    let command = ws_next_json(&mut conn).await;
    ws_send(&mut conn, &format!("response:{command}")).await;
    let response = waiting.await.unwrap().expect("response arrives");
    assert_eq!(response.message.device_id, "m");
    assert_eq!(response.message.body, "?");
    assert_eq!(response.task_id, command["task_id"].as_str().unwrap());
}

#[actix_rt::test]
async fn command_wait_times_out_with_504_and_the_task_id() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    assert_eq!(register(&sim, json!([{"id": "d"}])).await.0, 200);
    let (status, answer) = send_json(
        "POST",
        &format!("{}/command", sim.control_url()),
        &json!({"device_id": "d", "endpoint": "e", "wait_ms": 50}),
    )
    .await;
    assert_eq!(status, 504, "{answer}");
    let frame = ws_next_json(&mut conn).await;
    assert_eq!(answer["task_id"], frame["task_id"]);

    let err = sim
        .command_and_wait(&Command::new("d", "e"), Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(matches!(err, SimError::Timeout { ref task_id } if !task_id.is_empty()));
    assert!(!err.to_string().contains("registered"), "{err}");
}

/// The README's first command goes to `lamp-1`; with a connector that has no
/// such device the 504 says why instead of only that time ran out.
#[actix_rt::test]
async fn a_command_for_an_unregistered_device_times_out_saying_no_such_device_is_registered() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    assert_eq!(register(&sim, json!([{"id": "plug-2"}])).await.0, 200);
    let (status, answer) = send_json(
        "POST",
        &format!("{}/command", sim.control_url()),
        &json!({"device_id": "lamp-1", "endpoint": "on", "wait_ms": 50}),
    )
    .await;
    assert_eq!(status, 504, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains(r#"no device "lamp-1" is registered"#), "{answer}");
    // The command still went out: a connector may answer for a device it
    // failed to register.
    let frame = ws_next_json(&mut conn).await;
    assert_eq!(answer["task_id"], frame["task_id"]);
    assert_eq!(frame["device_url"], "lamp-1");

    let err = sim
        .command_and_wait(&Command::new("lamp-1", "on"), Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SimError::NotRegistered { ref device_id, ref task_id } if device_id == "lamp-1" && !task_id.is_empty()),
        "{err:?}"
    );
}

#[actix_rt::test]
async fn command_without_a_session_is_409() {
    let sim = start().await;
    let (status, answer) = send_json(
        "POST",
        &format!("{}/command", sim.control_url()),
        &json!({"device_id": "d", "endpoint": "e"}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(matches!(
        sim.send_command(&Command::new("d", "e")).await,
        Err(SimError::NoSession)
    ));
}

#[actix_rt::test]
async fn commands_skip_sessions_that_have_not_authenticated() {
    let sim = start().await;
    let _unauthenticated = ws_open(&sim).await;
    eventually("the session to open", || async {
        (sim.sessions().await.len() == 1).then_some(())
    })
    .await;
    assert!(matches!(
        sim.send_command(&Command::new("d", "e")).await,
        Err(SimError::NoSession)
    ));
}

#[actix_rt::test]
async fn events_can_be_filtered_by_device_kind_since_and_limit() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    for i in 0..6 {
        ws_send(
            &mut conn,
            &change_frame(if i % 2 == 0 { "a" } else { "b" }, &i.to_string()),
        )
        .await;
    }
    sim.wait_for(|c| c.changes == 6, DEADLINE).await.unwrap();

    let events_url = format!("{}/events", sim.control_url());
    let (status, all) = get_json(&events_url).await;
    assert_eq!(status, 200);
    assert_eq!(all["events"].as_array().unwrap().len(), 6);
    assert_eq!(all["events"][0]["device_id"], "a");
    assert_eq!(all["events"][0]["body"], "0");
    assert_eq!(all["events"][0]["kind"], "change");

    let (_, only_b) = get_json(&format!("{events_url}?device=b")).await;
    let bodies: Vec<&str> = only_b["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["1", "3", "5"]);

    let first_seq = all["events"][0]["seq"].as_u64().unwrap();
    let (_, after) = get_json(&format!("{events_url}?since={first_seq}&limit=2")).await;
    let bodies: Vec<&str> = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["1", "2"]);

    let (_, responses) = get_json(&format!("{events_url}?kind=response")).await;
    assert!(responses["events"].as_array().unwrap().is_empty());

    let via_handle = sim
        .events_matching(EventFilter {
            device: Some("a".into()),
            limit: Some(1),
            ..EventFilter::default()
        })
        .await;
    assert_eq!(via_handle.len(), 1);
    assert_eq!(via_handle[0].message.body, "4");
}

#[actix_rt::test]
async fn counters_route_lists_every_counter() {
    let sim = start().await;
    get(&sim.lookup_url()).await;
    let (status, counters) = get_json(&format!("{}/counters", sim.control_url())).await;
    assert_eq!(status, 200);
    assert_eq!(counters["lookups"], 1);
    for key in [
        "credentials",
        "responses",
        "changes",
        "updates",
        "pings",
        "pongs",
        "text",
        "binary",
        "bad_frames",
        "commands_sent",
        "sessions_opened",
        "sessions_refused",
        "sessions_closed",
        "registrations",
        "unregistrations",
        "lookups",
    ] {
        assert!(counters[key].is_u64(), "counter {key} missing");
    }
}

#[actix_rt::test]
async fn reset_clears_events_counters_and_faults() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    ws_send(&mut conn, &change_frame("d", "1")).await;
    sim.wait_for(|c| c.changes == 1, DEADLINE).await.unwrap();
    sim.fail_lookups(503, 5).await;

    let (status, _) = send_json("POST", &format!("{}/reset", sim.control_url()), &json!({})).await;
    assert_eq!(status, 200);
    assert!(sim.events().await.is_empty());
    assert_eq!(sim.counters().await.changes, 0);
    assert_eq!(get(&sim.lookup_url()).await.0, 200, "fault cleared");
    assert_eq!(sim.sessions().await.len(), 1, "sessions stay");
}

#[actix_rt::test]
async fn bad_control_requests_get_400_with_a_message() {
    let sim = start().await;
    let control = sim.control_url();
    let cases = [
        ("command", json!({"device_id": "d"})),
        ("command", json!({"device_id": "", "endpoint": "e"})),
        ("command", json!({"device_id": "d", "endpoint": "e", "wait_ms": "soon"})),
        ("fault/drop", json!({"mode": "explode"})),
        ("fault/lookup", json!({"status": 42, "times": 1})),
        ("fault/raw", json!({"hex": "zz"})),
        ("fault/pause", json!({})),
    ];
    for (route, body) in cases {
        let (status, answer) = send_json("POST", &format!("{control}/{route}"), &body).await;
        assert_eq!(status, 400, "{route} {body} -> {answer}");
        assert!(answer["error"].is_string(), "{route}: {answer}");
    }
    let (status, answer) = get_json(&format!("{control}/events?since=abc")).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = get_json(&format!("{control}/nothing-here")).await;
    assert_eq!(status, 404);
    assert!(answer["error"].is_string());
}

#[actix_rt::test]
async fn round_trips_are_timed_from_the_command_frame_to_its_response_only_while_switched_on() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    // Off (the default): nothing is timed.
    sim.send_command(&Command::new("d", "e")).await.unwrap();
    let untimed = ws_next_json(&mut conn).await;
    ws_send(&mut conn, &format!("response:{untimed}")).await;
    eventually("the untimed response counted", || async {
        (sim.counters().await.responses == 1).then_some(())
    })
    .await;
    assert!(sim.take_round_trips().await.is_empty());

    sim.time_round_trips(true).await;
    let started = std::time::Instant::now();
    sim.send_command(&Command::new("d", "e")).await.unwrap();
    sim.send_command(&Command::new("d", "e")).await.unwrap();
    let first = ws_next_json(&mut conn).await;
    let second = ws_next_json(&mut conn).await;
    actix_rt::time::sleep(Duration::from_millis(30)).await;
    ws_send(&mut conn, &format!("response:{second}")).await;
    // A response nobody timed (an unknown task id) adds no sample.
    let mut stranger = first.clone();
    stranger["task_id"] = json!("not-a-task");
    ws_send(&mut conn, &format!("response:{stranger}")).await;
    eventually("the responses counted", || async {
        (sim.counters().await.responses == 3).then_some(())
    })
    .await;
    let timed = sim.take_round_trips().await;
    assert_eq!(timed.len(), 1, "{timed:?}");
    assert!(timed[0] >= Duration::from_millis(30), "{timed:?}");
    assert!(timed[0] <= started.elapsed(), "{timed:?}");
    assert!(sim.take_round_trips().await.is_empty(), "samples are handed out once");

    sim.time_round_trips(false).await;
    ws_send(&mut conn, &format!("response:{first}")).await;
    eventually("the late response counted", || async {
        (sim.counters().await.responses == 4).then_some(())
    })
    .await;
    assert!(sim.take_round_trips().await.is_empty(), "switched off");
}
