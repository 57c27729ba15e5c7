//! Metrics and health over HTTP for the gateway's operator (`metrics.listen`,
//! `--metrics-listen`; off by default):
//!
//! - `GET /metrics`: [`Stats`], buffer depth and session state in the
//!   Prometheus text format.
//! - `GET /health`: 200 while a session is up and every device is
//!   registered; 503 with a JSON `reason` otherwise, for a load balancer,
//!   a container health check or a monitoring probe.
//! - `GET /devices`: every device and whether the platform has it, as JSON.
//!
//! What is served is computed from a [`Snapshot`] by pure functions
//! ([`render_prometheus`], [`health`]); only [`MetricsServer`] does IO.

use std::fmt::Write as _;
use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use crate::connector::StatusSource;
use crate::lifecycle::Stats;
use crate::registry::DeviceStatus;

/// `Content-Type` of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the metrics server did not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is taken, not local, or not allowed.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything the endpoints report, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `(name, help, value)` of every counter, in output order.
    pub counters: Vec<(&'static str, &'static str, u64)>,
    /// Frames sent to the platform, per kind (`response`, `change`, `update`).
    pub frames_sent: [(&'static str, u64); 3],
    pub mailbox_peak: u64,
    pub buffered_frames: usize,
    pub buffered_bytes: usize,
    pub session_up: bool,
    pub devices: Vec<DeviceStatus>,
}

impl Snapshot {
    /// Reads the connector's counters, buffer, session state and devices.
    pub async fn read(source: &StatusSource) -> Snapshot {
        let stats = source.stats();
        let get = |counter| Stats::get(counter);
        let (buffered_frames, buffered_bytes) = source.buffered();
        Snapshot {
            counters: vec![
                (
                    "connector_commands_received_total",
                    "Commands received from the platform.",
                    get(&stats.commands_received),
                ),
                (
                    "connector_bad_frames_total",
                    "Frames from the platform that could not be understood.",
                    get(&stats.bad_frames),
                ),
                (
                    "connector_unknown_device_commands_total",
                    "Commands for a device this connector does not have.",
                    get(&stats.unknown_device_commands),
                ),
                (
                    "connector_commands_refused_total",
                    "Commands refused because their device's mailbox was full.",
                    get(&stats.commands_refused),
                ),
                (
                    "connector_frames_dropped_total",
                    "Frames the outgoing buffer gave up to stay within its bound.",
                    get(&stats.frames_dropped),
                ),
                (
                    "connector_sessions_total",
                    "Sessions established.",
                    get(&stats.sessions),
                ),
                (
                    "connector_connect_failures_total",
                    "Connection attempts that failed.",
                    get(&stats.connect_failures),
                ),
                (
                    "connector_registration_failures_total",
                    "Device registrations that failed.",
                    get(&stats.registration_failures),
                ),
                (
                    "connector_plugin_errors_total",
                    "Errors reported by device plugins.",
                    get(&stats.plugin_errors),
                ),
                (
                    "connector_device_restarts_total",
                    "Device plugins restarted after a failure.",
                    get(&stats.device_restarts),
                ),
                (
                    "connector_command_timeouts_total",
                    "Commands not answered within their device's command_timeout_ms.",
                    get(&stats.command_timeouts),
                ),
                (
                    "connector_late_replies_total",
                    "Plugin answers that came after their command's deadline, dropped.",
                    get(&stats.late_replies),
                ),
            ],
            frames_sent: [
                ("response", get(&stats.frames_sent_response)),
                ("change", get(&stats.frames_sent_change)),
                ("update", get(&stats.frames_sent_update)),
            ],
            mailbox_peak: get(&stats.mailbox_peak),
            buffered_frames,
            buffered_bytes,
            session_up: stats.is_session_up(),
            devices: source.devices().await,
        }
    }
}

/// The snapshot in the Prometheus text exposition format.
pub fn render_prometheus(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let sent: Vec<(String, u64)> = snapshot
        .frames_sent
        .iter()
        .map(|(kind, value)| (format!("{{kind=\"{kind}\"}}"), *value))
        .collect();
    let sent: Vec<(&str, u64)> = sent.iter().map(|(labels, value)| (labels.as_str(), *value)).collect();
    metric(
        "connector_frames_sent_total",
        "counter",
        "Frames flushed to the platform, by kind.",
        &sent,
    );
    for (name, help, value) in &snapshot.counters {
        metric(name, "counter", help, &[("", *value)]);
    }
    let registered = snapshot.devices.iter().filter(|d| d.registered).count();
    let gauges = [
        (
            "connector_mailbox_peak",
            "The most commands one device had waiting at once.",
            snapshot.mailbox_peak,
        ),
        (
            "connector_buffer_frames",
            "Frames waiting in the outgoing buffer.",
            snapshot.buffered_frames as u64,
        ),
        (
            "connector_buffer_bytes",
            "Bytes waiting in the outgoing buffer.",
            snapshot.buffered_bytes as u64,
        ),
        (
            "connector_session_up",
            "1 while a session with the platform is up.",
            u64::from(snapshot.session_up),
        ),
        (
            "connector_devices",
            "Devices of this connector.",
            snapshot.devices.len() as u64,
        ),
        (
            "connector_devices_registered",
            "Devices the platform has registered.",
            registered as u64,
        ),
    ];
    for (name, help, value) in gauges {
        metric(name, "gauge", help, &[("", value)]);
    }
    out
}

/// Why the connector is not healthy, for the 503 answer of `/health`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    #[error("no session with the platform")]
    SessionDown,
    #[error("devices not registered: {}", .0.join(", "))]
    Unregistered(Vec<String>),
}

/// Healthy: a session is up and every device is registered.
pub fn health(snapshot: &Snapshot) -> Result<(), Unhealthy> {
    if !snapshot.session_up {
        return Err(Unhealthy::SessionDown);
    }
    let unregistered: Vec<String> = snapshot
        .devices
        .iter()
        .filter(|d| !d.registered)
        .map(|d| d.device.id.clone())
        .collect();
    if unregistered.is_empty() {
        Ok(())
    } else {
        Err(Unhealthy::Unregistered(unregistered))
    }
}

/// The `/devices` answer.
pub fn devices_json(devices: &[DeviceStatus]) -> serde_json::Value {
    devices
        .iter()
        .map(|d| {
            json!({
                "id": d.device.id,
                "type": d.device.device_type,
                "name": d.device.name,
                "registered": d.registered,
                "program": d.program,
            })
        })
        .collect()
}

async fn metrics_endpoint(source: web::Data<StatusSource>) -> HttpResponse {
    let snapshot = Snapshot::read(&source).await;
    HttpResponse::Ok()
        .content_type(PROMETHEUS_CONTENT_TYPE)
        .body(render_prometheus(&snapshot))
}

async fn health_endpoint(source: web::Data<StatusSource>) -> HttpResponse {
    let snapshot = Snapshot::read(&source).await;
    match health(&snapshot) {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ok" })),
        Err(reason) => HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
            .json(json!({ "status": "unavailable", "reason": reason.to_string() })),
    }
}

async fn devices_endpoint(source: web::Data<StatusSource>) -> HttpResponse {
    HttpResponse::Ok().json(devices_json(&source.devices().await))
}

/// A running metrics endpoint; [`MetricsServer::stop`] ends it.
pub struct MetricsServer {
    handle: ServerHandle,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` (port 0 picks a free port) and serves `source`.
    /// Must be called inside an actix system.
    pub fn start(addr: SocketAddr, source: StatusSource) -> Result<MetricsServer, MetricsError> {
        let data = web::Data::new(source);
        let bind_err = |source| MetricsError::Bind { addr, source };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/metrics", web::get().to(metrics_endpoint))
                .route("/health", web::get().to(health_endpoint))
                .route("/devices", web::get().to(devices_endpoint))
        })
        // A scrape every few seconds needs no more than one thread.
        .workers(1)
        // The binary handles SIGTERM and Ctrl-C itself and stops this server
        // as part of its own shutdown.
        .disable_signals()
        .shutdown_timeout(1)
        .bind(addr)
        .map_err(bind_err)?;
        let addr = server.addrs().first().copied().unwrap_or(addr);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(MetricsServer { handle, addr })
    }

    /// The address it listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and waits for open requests to finish (at most 1 s).
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

#[cfg(test)]
mod tests {
    use connector_core::Device;

    use super::*;

    fn device(id: &str, registered: bool) -> DeviceStatus {
        DeviceStatus {
            device: Device::new(id, "lamp", id),
            registered,
            program: false,
        }
    }

    #[test]
    fn the_prometheus_text_has_help_type_and_a_sample_for_every_metric() {
        let snapshot = Snapshot {
            counters: vec![("connector_sessions_total", "Sessions.", 2)],
            frames_sent: [("response", 3), ("change", 4), ("update", 0)],
            buffered_frames: 5,
            buffered_bytes: 120,
            session_up: true,
            devices: vec![device("a", true), device("b", false)],
            ..Snapshot::default()
        };
        let text = render_prometheus(&snapshot);
        for line in [
            "# TYPE connector_frames_sent_total counter",
            "connector_frames_sent_total{kind=\"response\"} 3",
            "connector_frames_sent_total{kind=\"change\"} 4",
            "# HELP connector_sessions_total Sessions.",
            "connector_sessions_total 2",
            "# TYPE connector_buffer_frames gauge",
            "connector_buffer_frames 5",
            "connector_buffer_bytes 120",
            "connector_session_up 1",
            "connector_devices 2",
            "connector_devices_registered 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn health_needs_a_session_and_every_device_registered() {
        let mut snapshot = Snapshot {
            session_up: true,
            devices: vec![device("a", true), device("b", true)],
            ..Snapshot::default()
        };
        assert_eq!(health(&snapshot), Ok(()));
        snapshot.devices[1].registered = false;
        assert_eq!(health(&snapshot), Err(Unhealthy::Unregistered(vec!["b".into()])));
        snapshot.session_up = false;
        assert_eq!(health(&snapshot), Err(Unhealthy::SessionDown));
        assert_eq!(
            Unhealthy::Unregistered(vec!["b".into()]).to_string(),
            "devices not registered: b"
        );
    }
}
