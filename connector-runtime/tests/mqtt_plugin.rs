//! The built-in `mqtt` plugin through the real runtime and simulator against
//! a real broker: mosquitto, started, killed and started again by the tests
//! on loopback (`.ci/run` installs it; elsewhere these tests say they were
//! skipped when it is missing). The test's side of the broker (the device,
//! zigbee2mqtt, a responder) is a rumqttc client.

mod util;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use platform_sim::mosquitto::Mosquitto;
use platform_sim::{Command, EventKind, SimHandle};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use util::*;

/// A client of the test's own on `broker`, its incoming messages on a channel.
fn client(broker: &Mosquitto, id: &str, subscribe: &[&str]) -> (Client, mpsc::Receiver<(String, String, QoS)>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = Client::new(options, 64);
    for filter in subscribe {
        client.subscribe(*filter, QoS::AtLeastOnce).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let payload = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((p.topic.clone(), payload, p.qos)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    for _ in subscribe {
        ready.recv_timeout(DEADLINE).expect("the test client is subscribed");
    }
    (client, rx)
}

macro_rules! broker_or_skip {
    ($name:expr) => {
        match Mosquitto::start($name) {
            Some(broker) => broker.expect("mosquitto starts"),
            None if std::env::var_os("CI").is_some() => {
                panic!("the MQTT tests need mosquitto (apt-get install mosquitto); .ci/run installs it")
            }
            None => {
                eprintln!("SKIPPED: mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)");
                return;
            }
        }
    };
}

async fn answer(sim: &SimHandle, device: &str, endpoint: &str, body: &str) -> String {
    sim.command_and_wait(&Command::new(device, endpoint).body(body), DEADLINE)
        .await
        .expect("the platform gets an answer")
        .message
        .body
}

/// (endpoint, body) of every event `device` sent.
async fn events(sim: &SimHandle, device: &str) -> Vec<(String, String)> {
    frames(sim, device, EventKind::Change)
        .await
        .into_iter()
        .map(|e| (e.message.endpoint, e.message.body))
        .collect()
}

/// Waits for the next message on the test client's channel, off the actix thread.
async fn next(rx: &mpsc::Receiver<(String, String, QoS)>) -> (String, String, QoS) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(message) = rx.try_recv() {
            return message;
        }
        assert!(Instant::now() < deadline, "no message came");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

fn broker_yaml(broker: &Mosquitto) -> String {
    format!("{{host: 127.0.0.1, port: {}, keep_alive_s: 5}}", broker.port())
}

#[actix_rt::test]
async fn subscriptions_become_events_and_commands_are_published() {
    let broker = broker_or_skip!("events");
    let sim = simulator().await;
    let devices = format!(
        "{ECHO_DEVICES}  - id: bridge
    plugin: mqtt
    settings:
      broker: {}
      subscribe:
        - {{topic: 'zigbee2mqtt/+', endpoint: '{{wildcard}}'}}
        - {{topic: 'tele/+/SENSOR', pointer: /ENERGY/Power, endpoint: 'power'}}
      commands:
        set: {{topic: 'zigbee2mqtt/{{body}}/set', payload: '{{\"state\": \"{{header}}\", \"by\": \"{{device}}\"}}', qos: 1}}
        retained: {{topic: 'config/{{device}}', retain: true, qos: 0}}
",
        broker_yaml(&broker)
    );
    let connector = connected(&sim, config_for(&sim, &devices)).await;
    let (device, published) = client(&broker, "the-devices", &["zigbee2mqtt/+/set", "config/#"]);

    // The device side publishes until the connector's subscriptions are in.
    eventually("a zigbee2mqtt message as an event", || async {
        device
            .publish("zigbee2mqtt/lamp", QoS::AtLeastOnce, false, r#"{"state":"ON"}"#)
            .unwrap();
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        events(&sim, "bridge").await.first().cloned()
    })
    .await;
    assert_eq!(
        events(&sim, "bridge").await[0],
        ("lamp".into(), r#"{"state":"ON"}"#.into())
    );
    device
        .publish(
            "tele/plug-7/SENSOR",
            QoS::AtLeastOnce,
            false,
            r#"{"ENERGY":{"Power":42.5}}"#,
        )
        .unwrap();
    device
        .publish("tele/plug-7/SENSOR", QoS::AtLeastOnce, false, "not json")
        .unwrap();
    eventually("the pointed power reading", || async {
        events(&sim, "bridge")
            .await
            .contains(&("power".into(), "42.5".into()))
            .then_some(())
    })
    .await;

    let command = Command::new("bridge", "set").body("lamp").header("OFF");
    let reply = sim.command_and_wait(&command, DEADLINE).await.expect("an answer");
    assert_eq!(reply.message.body, "");
    let (topic, payload, qos) = next(&published).await;
    assert_eq!(topic, "zigbee2mqtt/lamp/set");
    assert_eq!(payload, r#"{"state": "OFF", "by": "bridge"}"#);
    assert_eq!(qos, QoS::AtLeastOnce);
    assert_eq!(answer(&sim, "bridge", "retained", "v1").await, "");
    let (topic, payload, _) = next(&published).await;
    assert_eq!((topic.as_str(), payload.as_str()), ("config/bridge", "v1"));
    // Retained: a client that subscribes later still gets it.
    let (_late, late) = client(&broker, "late-reader", &["config/#"]);
    assert_eq!(next(&late).await.1, "v1");

    let unknown = answer(&sim, "bridge", "dance", "").await;
    assert!(unknown.contains("this device knows: retained, set"), "{unknown}");
    let wildcard = answer(&sim, "bridge", "set", "all/#").await;
    assert!(
        wildcard.contains("cannot publish to `zigbee2mqtt/all/#/set`"),
        "{wildcard}"
    );
    assert!(events(&sim, "bridge").await.iter().all(|(_, body)| body != "not json"));
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_command_waits_for_its_correlated_response() {
    let broker = broker_or_skip!("response");
    let sim = simulator().await;
    let devices = format!(
        "{ECHO_DEVICES}  - id: thermostat
    plugin: mqtt
    command_timeout_ms: 5000
    settings:
      broker: {}
      commands:
        get: {{topic: dev/req, payload: '{{\"id\": \"{{task}}\"}}', response: {{topic: dev/res, correlation: /id, pointer: /value}}}}
        silent: {{topic: dev/void, response: {{topic: dev/never}}}}
",
        broker_yaml(&broker)
    );
    let connector = connected(&sim, config_for(&sim, &devices)).await;
    // The device: answers each request, after a reply to somebody else.
    let (responder, requests) = client(&broker, "the-thermostat", &["dev/req"]);
    std::thread::spawn(move || {
        while let Ok((_, payload, _)) = requests.recv() {
            let request: serde_json::Value = serde_json::from_str(&payload).unwrap();
            let id = request["id"].as_str().unwrap().to_owned();
            responder
                .publish(
                    "dev/res",
                    QoS::AtLeastOnce,
                    false,
                    r#"{"id": "somebody-else", "value": 0}"#,
                )
                .unwrap();
            let answer = format!(r#"{{"id": "{id}", "value": 21.5}}"#);
            responder.publish("dev/res", QoS::AtLeastOnce, false, answer).unwrap();
        }
    });
    let first = eventually("the connector subscribed to the responses", || async {
        let reply = answer(&sim, "thermostat", "get", "").await;
        (reply == "21.5").then_some(reply)
    })
    .await;
    assert_eq!(first, "21.5");
    assert_eq!(answer(&sim, "thermostat", "get", "").await, "21.5");
    let silent = answer(&sim, "thermostat", "silent", "").await;
    assert!(
        silent.contains("no response on dev/never within 5000 ms") || silent.contains("did not answer within 5 s"),
        "{silent}"
    );
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_broker_restart_restores_the_subscriptions_and_publishes_nothing_twice() {
    let mut broker = broker_or_skip!("restart");
    let sim = simulator().await;
    let devices = format!(
        "{ECHO_DEVICES}  - id: sensor
    plugin: mqtt
    settings:
      broker: {}
      subscribe: [{{topic: 'sensors/#', endpoint: '{{wildcard}}'}}]
      commands:
        set: {{topic: act/set}}
",
        broker_yaml(&broker)
    );
    let connector = connected(&sim, config_for(&sim, &devices)).await;
    let (device, _) = client(&broker, "sensor-device-1", &[]);
    eventually("a reading before the restart", || async {
        device.publish("sensors/t", QoS::AtLeastOnce, false, "1").unwrap();
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        (!events(&sim, "sensor").await.is_empty()).then_some(())
    })
    .await;
    let (_watcher, published) = client(&broker, "watcher-1", &["act/set"]);
    assert_eq!(answer(&sim, "sensor", "set", "before").await, "");
    assert_eq!(next(&published).await.1, "before");

    broker.down();
    let refused = eventually("a command refused while the broker is down", || async {
        let reply = answer(&sim, "sensor", "set", "during").await;
        reply.contains("is not connected").then_some(reply)
    })
    .await;
    assert!(refused.contains("nothing was published"), "{refused}");
    broker.up().expect("mosquitto starts again");

    // Subscribed again on its own: a reading after the restart arrives.
    let (_watcher, published) = client(&broker, "watcher-2", &["act/set"]);
    let (device, _) = client(&broker, "sensor-device-2", &[]);
    let before = events(&sim, "sensor").await.len();
    eventually("a reading after the restart", || async {
        device.publish("sensors/t", QoS::AtLeastOnce, false, "2").unwrap();
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        (events(&sim, "sensor").await.len() > before).then_some(())
    })
    .await;
    let after = eventually("a command published after the restart", || async {
        let reply = answer(&sim, "sensor", "set", "after").await;
        reply.is_empty().then_some(())
    });
    after.await;
    // Only what was sent after the restart crosses the new broker: nothing
    // from before, nothing refused, nothing twice.
    assert_eq!(next(&published).await.1, "after");
    // A marker sent last comes next: nothing (from before the restart, or
    // twice) came in between.
    assert_eq!(answer(&sim, "sensor", "set", "marker").await, "");
    assert_eq!(next(&published).await.1, "marker");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn devices_on_one_broker_share_one_connection_and_a_broker_down_at_the_start_is_waited_for() {
    let mut broker = broker_or_skip!("shared");
    broker.down();
    let sim = simulator().await;
    let device = |id: &str, topic: &str| {
        format!(
            "  - id: {id}\n    plugin: mqtt\n    settings:\n      broker: {}\n      subscribe: [{{topic: {topic}}}]\n      commands: {{set: {{topic: out/{id}}}}}\n",
            broker_yaml(&broker)
        )
    };
    // Overlapping filters: `in/#` covers `in/b`.
    let devices = format!("{ECHO_DEVICES}{}{}", device("a", "'in/#'"), device("b", "in/b"));
    let connector = connected(&sim, config_for(&sim, &devices)).await;
    let refused = answer(&sim, "a", "set", "x").await;
    assert!(refused.contains("is not connected"), "{refused}");
    broker.up().expect("mosquitto starts again");

    // mosquitto counts its clients every second under $SYS: the test's own
    // and one connection for both devices.
    let (_counter, counts) = client(&broker, "counter", &["$SYS/broker/clients/connected"]);
    let (device_side, _) = client(&broker, "device-side", &[]);
    eventually("both devices' readings", || async {
        device_side.publish("in/a", QoS::AtLeastOnce, false, "1").unwrap();
        device_side.publish("in/b", QoS::AtLeastOnce, false, "2").unwrap();
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        (!events(&sim, "a").await.is_empty() && !events(&sim, "b").await.is_empty()).then_some(())
    })
    .await;
    // One message on `in/b` reaches each device once, not once per filter.
    device_side.publish("in/b", QoS::AtLeastOnce, false, "once").unwrap();
    device_side.publish("in/a", QoS::AtLeastOnce, false, "fence").unwrap();
    let bodies = |device: &'static str| {
        let sim = sim.clone();
        async move {
            events(&sim, device)
                .await
                .into_iter()
                .map(|(_, body)| body)
                .collect::<Vec<_>>()
        }
    };
    eventually("the fence behind the message", || async {
        (bodies("a").await.contains(&"fence".to_owned()) && bodies("b").await.contains(&"once".to_owned()))
            .then_some(())
    })
    .await;
    for device in ["a", "b"] {
        let once = bodies(device).await.iter().filter(|body| *body == "once").count();
        assert_eq!(once, 1, "device {device} got the message {once} times");
    }
    let connected = eventually("the broker's client count", || async {
        let mut last = None;
        while let Ok((_, count, _)) = counts.try_recv() {
            last = Some(count);
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        last.filter(|count| count == "3")
    })
    .await;
    // counter, device-side, and the connector's one connection.
    assert_eq!(connected, "3");
    connector.shutdown(Duration::from_secs(2)).await;
}
