//! The results of a run: printed as tables, written as JSON, and checked
//! against the targets of issue 8 (reported, never a pass/fail).

use serde::Serialize;

use crate::commands::CommandsResult;
use crate::config::ConfigResult;
use crate::events::EventsResult;
use crate::harness::Machine;
use crate::mqtt::MqttResult;
use crate::outage::OutageResult;
use crate::scale::ScaleResult;
use crate::slow::SlowResult;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub smoke: bool,
    pub events: Vec<EventsResult>,
    pub commands: Option<CommandsResult>,
    pub scale: Vec<ScaleResult>,
    /// Scale runs that did not finish, with why.
    pub scale_failures: Vec<String>,
    pub outage: Option<OutageResult>,
    pub slow: Option<SlowResult>,
    pub config: Vec<ConfigResult>,
    /// Config runs that did not finish, with why.
    pub config_failures: Vec<String>,
    pub mqtt: Option<MqttResult>,
    /// Why the mqtt scenario did not run (no mosquitto, ...).
    pub mqtt_failure: Option<String>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub goal: &'static str,
    pub value: Option<f64>,
    pub met: Option<bool>,
}

impl Report {
    pub fn evaluate(&mut self) {
        let events100 = self.events.iter().find(|e| e.devices == 100);
        let scale100k = self.scale.iter().find(|s| s.devices == 100_000);
        let p99_half = self
            .commands
            .as_ref()
            .and_then(|c| c.paced.iter().find(|p| (p.load - 0.5).abs() < 1e-9))
            .map(|p| p.latency.p99_us);
        let at_least = |v: Option<f64>, goal: f64| v.map(|v| v >= goal);
        let below = |v: Option<f64>, goal: f64| v.map(|v| v < goal);
        let ratio = events100.map(|e| e.ratio);
        let rate = events100.map(|e| e.runtime_per_s);
        let pipelined = self.commands.as_ref().map(|c| c.pipelined.responses_per_s);
        let ready = scale100k.map(|s| s.ready_ms / 1e3);
        let per_device = scale100k.map(|s| s.per_device_bytes);
        let slow = self.slow.as_ref();
        let slow_ratio = slow.map(|s| s.p99_ratio);
        let slow_drops = slow.map(|s| s.link_drops as f64);
        let slow_unanswered = slow.map(|s| s.unanswered as f64);
        let config100k = self.config.iter().find(|c| c.devices == 100_000);
        let config_check = config100k.map(|c| (c.parse_ms + c.check_ms) / 1e3);
        let config_registered = config100k.map(|c| c.registered_ms / 1e3);
        let config_reload = config100k.map(|c| c.reload_ms / 1e3);
        self.targets = vec![
            Target {
                name: "events ratio, 100 devices",
                goal: ">= 0.60 of raw",
                value: ratio,
                met: at_least(ratio, 0.6),
            },
            Target {
                name: "events/s, 100 devices",
                goal: ">= 300000",
                value: rate,
                met: at_least(rate, 300_000.0),
            },
            Target {
                name: "pipelined commands/s",
                goal: ">= 150000",
                value: pipelined,
                met: at_least(pipelined, 150_000.0),
            },
            Target {
                name: "p99 round trip at 50% load (us)",
                goal: "< 1000",
                value: p99_half,
                met: below(p99_half, 1000.0),
            },
            Target {
                name: "100k devices ready (s)",
                goal: "< 10",
                value: ready,
                met: below(ready, 10.0),
            },
            Target {
                name: "memory per idle device (bytes)",
                goal: "<= 2048",
                value: per_device,
                met: per_device.map(|v| v <= 2048.0),
            },
            Target {
                name: "echo p99 beside blocked devices / alone",
                goal: "<= 1.2",
                value: slow_ratio,
                met: slow_ratio.map(|v| v <= 1.2),
            },
            Target {
                name: "link drops beside blocked devices",
                goal: "0",
                value: slow_drops,
                met: slow_drops.map(|v| v == 0.0),
            },
            Target {
                name: "unanswered commands beside blocked devices",
                goal: "0",
                value: slow_unanswered,
                met: slow_unanswered.map(|v| v == 0.0),
            },
            Target {
                name: "connector.yaml of 100,000 devices read and checked, s",
                goal: "< 5",
                value: config_check,
                met: below(config_check, 5.0),
            },
            Target {
                name: "connector.yaml of 100,000 devices: start to all registered, s",
                goal: "< 10",
                value: config_registered,
                met: below(config_registered, 10.0),
            },
            Target {
                name: "connector.yaml of 100,000 devices: reload of a changed file, s",
                goal: "< 5",
                value: config_reload,
                met: below(config_reload, 5.0),
            },
        ];
    }

    pub fn print(&self) {
        let m = &self.machine;
        println!(
            "connector-bench{} -- {} cores, {} MiB, {} ({}), {} UTC",
            if self.smoke { " (smoke)" } else { "" },
            m.cores,
            m.memory_mib,
            m.cpu,
            m.kernel,
            m.date_utc
        );
        if !self.events.is_empty() {
            println!("\nevents (change frames counted by the platform)");
            println!("| devices | runtime events/s | raw events/s | ratio | dropped |");
            println!("|---:|---:|---:|---:|---:|");
            for e in &self.events {
                println!(
                    "| {} | {:.0} | {:.0} | {:.2} | {} |",
                    e.devices, e.runtime_per_s, e.raw_per_s, e.ratio, e.runtime_dropped
                );
            }
        }
        if let Some(c) = &self.commands {
            println!(
                "\ncommands ({} echo devices; round trip = platform sends, response matched)",
                c.devices
            );
            println!("| mode | responses/s | p50 us | p99 us | p99.9 us | errors |");
            println!("|---|---:|---:|---:|---:|---:|");
            println!(
                "| pipelined, window {}, counted | {:.0} | - | - | - | - |",
                c.pipelined.window, c.pipelined.responses_per_s
            );
            for (name, r) in [
                (
                    format!("pipelined, window {}, each awaited", c.pipelined_waited.window),
                    &c.pipelined_waited,
                ),
                ("one at a time".to_owned(), &c.one_at_a_time),
            ] {
                println!(
                    "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                    r.responses_per_s, r.latency.p50_us, r.latency.p99_us, r.latency.p999_us, r.errors
                );
            }
            for p in &c.paced {
                println!(
                    "| paced {:.0}% ({:.0}/s) | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                    p.load * 100.0,
                    p.target_per_s,
                    p.responses_per_s,
                    p.latency.p50_us,
                    p.latency.p99_us,
                    p.latency.p999_us,
                    p.errors
                );
            }
        }
        if !self.scale.is_empty() || !self.scale_failures.is_empty() {
            println!("\nscale (echo devices; runtime in a process of its own)");
            println!("| devices | ready ms | start() ms | RSS before KiB | RSS ready KiB | bytes/device | registration requests |");
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            for s in &self.scale {
                println!(
                    "| {} | {:.0} | {:.0} | {} | {} | {:.0} | {} |",
                    s.devices,
                    s.ready_ms,
                    s.start_call_ms,
                    s.rss_before_kib,
                    s.rss_ready_kib,
                    s.per_device_bytes,
                    s.registration_requests
                );
            }
            for f in &self.scale_failures {
                println!("| failed: {f} |");
            }
        }
        if let Some(o) = &self.outage {
            println!(
                "\noutage ({:.0} events/s; platform not listening for {:.0} ms)",
                o.rate_per_s, o.outage_ms
            );
            println!("| back -> first event ms | down -> connected ms | emitted | received | duplicates | lost | accepted while down | lost of those |");
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {:.1} | {:.0} | {} | {} | {} | {} | {} | {} |",
                o.back_to_first_event_ms,
                o.down_to_connected_ms,
                o.emitted,
                o.received_distinct,
                o.duplicates,
                o.lost,
                o.accepted_while_down,
                o.lost_accepted_while_down
            );
        }
        if let Some(s) = &self.slow {
            println!(
                "\nslow-devices ({} echo devices, each command awaited; {} neighbours blocking {:.0} ms per command)",
                s.echo_devices, s.slow_devices, s.slow_block_ms
            );
            println!("| echo devices | p50 us | p99 us | p99.9 us |");
            println!("|---|---:|---:|---:|");
            for (name, l) in [("alone", &s.alone), ("beside the blocked devices", &s.beside_slow)] {
                println!("| {name} | {:.0} | {:.0} | {:.0} |", l.p50_us, l.p99_us, l.p999_us);
            }
            println!(
                "p99 ratio {:.2}; {} commands to the blocked devices; link drops {}; unanswered {}",
                s.p99_ratio, s.slow_commands, s.link_drops, s.unanswered
            );
            println!(
                "| devices blocking {:.0} ms | pool threads | commands/s | ideal/s | share of ideal |",
                s.many_block_ms
            );
            println!("|---:|---:|---:|---:|---:|");
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.2} |",
                s.many_devices, s.pool_threads, s.many_per_s, s.ideal_per_s, s.share_of_ideal
            );
        }
        if !self.config.is_empty() || !self.config_failures.is_empty() {
            println!("\nconfig (connector.yaml of echo devices; runtime in a process of its own)");
            println!(
                "| devices | file KiB | read ms | check ms | peak RSS KiB | registered ms | reload ms | reload +/-/~ |"
            );
            println!("|---:|---:|---:|---:|---:|---:|---:|---|");
            for c in &self.config {
                println!(
                    "| {} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {}/{}/{} |",
                    c.devices,
                    c.file_bytes / 1024,
                    c.parse_ms,
                    c.check_ms,
                    c.peak_kib,
                    c.registered_ms,
                    c.reload_ms,
                    c.reload_added,
                    c.reload_removed,
                    c.reload_changed
                );
            }
            for f in &self.config_failures {
                println!("| failed: {f} |");
            }
        }
        if let Some(m) = &self.mqtt {
            println!(
                "\nmqtt (QoS 0 readings from a local mosquitto to the platform, one device subscribed to bench/#)"
            );
            println!("| path | messages/s | runtime's ratio to it |");
            println!("|---|---:|---:|");
            println!(
                "| broker -> mqtt plugin -> runtime -> platform | {:.0} | 1.00 |",
                m.runtime_per_s
            );
            println!(
                "| raw WebSocket client -> platform | {:.0} | {:.2} |",
                m.raw_per_s, m.ratio_to_raw
            );
            println!(
                "| broker -> plain MQTT subscriber | {:.0} | {:.2} |",
                m.broker_per_s, m.ratio_to_broker
            );
        }
        if let Some(why) = &self.mqtt_failure {
            println!("\nmqtt: not run: {why}");
        }
        if !self.targets.is_empty() {
            println!("\ntargets");
            println!("| target | goal | value | met |");
            println!("|---|---|---:|---|");
            for t in &self.targets {
                let value = t.value.map_or("-".to_owned(), |v| {
                    if v.abs() < 10.0 {
                        format!("{v:.2}")
                    } else {
                        format!("{v:.0}")
                    }
                });
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "not run",
                };
                println!("| {} | {} | {} | {} |", t.name, t.goal, value, met);
            }
        }
    }
}
