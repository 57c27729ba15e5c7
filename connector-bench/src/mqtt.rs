//! Scenario `mqtt`: events from a local broker (mosquitto) through the
//! `mqtt` plugin to the platform, per second, beside two baselines measured
//! in the same run: the raw WebSocket client publishing straight to the
//! simulator, and a plain MQTT subscriber reading the same broker (the
//! broker's own ceiling). Skipped, with a note, where mosquitto is missing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::config::DeviceConfig;
use connector_runtime::Connector;
use platform_sim::mosquitto::Mosquitto;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::events::Timing;
use crate::harness::{self, counters};

/// Messages the publisher may run ahead of what the far end counted, so
/// the broker's queue stays bounded.
const WINDOW: u64 = 20_000;
/// A payload of the size of a sensor reading.
const PAYLOAD: &str = r#"{"temperature": 21.5, "humidity": 40}"#;

#[derive(Debug, Clone, serde::Serialize)]
pub struct MqttResult {
    /// Events per second at the platform, through the broker and the plugin.
    pub runtime_per_s: f64,
    /// Events per second at the platform from the raw WebSocket client.
    pub raw_per_s: f64,
    /// Messages per second a plain subscriber of the broker reads.
    pub broker_per_s: f64,
    /// runtime / raw.
    pub ratio_to_raw: f64,
    /// runtime / broker.
    pub ratio_to_broker: f64,
}

pub fn run(timing: &Timing) -> Result<MqttResult, String> {
    let started = |name| match Mosquitto::start(name) {
        None => Err("mosquitto is not installed (apt-get install mosquitto)".to_owned()),
        Some(Err(e)) => Err(format!("mosquitto did not start: {e}")),
        Some(Ok(broker)) => Ok(broker),
    };
    let runtime_per_s = through_runtime(&started("bench-runtime")?, timing);
    let broker_per_s = through_broker(&started("bench-plain")?, timing);
    let raw_per_s = crate::events::through_raw(1, timing);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(MqttResult {
        runtime_per_s,
        raw_per_s,
        broker_per_s,
        ratio_to_raw: ratio(runtime_per_s, raw_per_s),
        ratio_to_broker: ratio(runtime_per_s, broker_per_s),
    })
}

/// Publishes QoS 0 readings on `bench/<n>` as fast as the far end keeps
/// up, until `stop`.
fn publisher(
    port: u16,
    received: impl Fn() -> u64 + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut options = MqttOptions::new("bench-publisher", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(options, 10_000);
        std::thread::spawn(move || for _ in connection.iter().take_while(Result::is_ok) {});
        let mut sent: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            if sent.saturating_sub(received()) >= WINDOW {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let topic = format!("bench/{}", sent % 100);
            if client.publish(topic, QoS::AtMostOnce, false, PAYLOAD).is_err() {
                return;
            }
            sent += 1;
        }
        let _ = client.disconnect();
    })
}

fn rate(count: impl Fn() -> u64, timing: &Timing) -> f64 {
    std::thread::sleep(timing.warmup);
    let (c0, t0) = (count(), Instant::now());
    std::thread::sleep(timing.measure);
    let (c1, t1) = (count(), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

fn through_runtime(broker: &Mosquitto, timing: &Timing) -> f64 {
    let sim = harness::simulator(false);
    let settings = serde_json::json!({
        "broker": {"host": "127.0.0.1", "port": broker.port()},
        "subscribe": [{"topic": "bench/#", "endpoint": "{wildcard}"}],
    });
    let device = DeviceConfig {
        id: "mqtt-bridge".to_owned(),
        device_type: "bench".to_owned(),
        plugin: "mqtt".to_owned(),
        settings,
        ..DeviceConfig::default()
    };
    let config = harness::config(sim.lookup_url(), vec![device]);
    let port = broker.port();
    let system = actix_rt::System::new();
    system.block_on(async {
        let connector = Connector::start(config).await.expect("the connector starts");
        harness::wait_async(&sim, Duration::from_millis(5), |c| c.devices_registered >= 1)
            .await
            .expect("the device registered");
        // The plugin subscribes once connected: wait for a first event.
        let stop = Arc::new(AtomicBool::new(false));
        let counted = {
            let sim = sim.clone();
            move || counters(&sim).changes
        };
        let publishing = publisher(port, counted.clone(), stop.clone());
        harness::wait_async(&sim, Duration::from_millis(5), |c| c.changes >= 1)
            .await
            .expect("a first event through the broker");
        let timing = *timing;
        let meter = std::thread::spawn(move || rate(counted, &timing));
        while !meter.is_finished() {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let per_s = meter.join().expect("measurement thread");
        stop.store(true, Ordering::Relaxed);
        let _ = publishing.join();
        connector.shutdown(Duration::from_secs(2)).await;
        per_s
    })
}

fn through_broker(broker: &Mosquitto, timing: &Timing) -> f64 {
    let received = Arc::new(AtomicU64::new(0));
    let mut options = MqttOptions::new("bench-subscriber", "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 64);
    client.subscribe("bench/#", QoS::AtMostOnce).expect("subscribes");
    let counting = received.clone();
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counting.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    subscribed
        .recv_timeout(harness::PATIENCE)
        .expect("the plain subscriber is subscribed");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = received.clone();
    let publishing = publisher(broker.port(), move || seen.load(Ordering::Relaxed), stop.clone());
    let per_s = rate(|| received.load(Ordering::Relaxed), timing);
    stop.store(true, Ordering::Relaxed);
    let _ = publishing.join();
    let _ = client.disconnect();
    per_s
}
