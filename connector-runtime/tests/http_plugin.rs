//! The built-in `http` plugin through the real runtime and simulator against
//! a real HTTP device server on loopback: polls as events (whole, by JSON
//! pointer, only on change), commands as templated requests with basic
//! auth from the environment, error statuses, and a device server that is
//! down at the start and comes back.

mod util;

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use platform_sim::{Command, EventKind};
use util::*;

/// The device's password, in the variable `password_env` names: set once,
/// before any connector of this test binary reads the environment.
fn set_password() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("HTTP_PLUGIN_TEST_PASSWORD", "plug-secret"));
}

/// What the stand-in device serves, and every request it got.
#[derive(Default)]
struct Device {
    power: Mutex<f64>,
    on: Mutex<bool>,
    /// (method, path and query, body, Authorization header)
    seen: Mutex<Vec<(String, String, String, String)>>,
}

async fn status(device: web::Data<Device>) -> HttpResponse {
    let power = *device.power.lock().unwrap();
    let on = *device.on.lock().unwrap();
    HttpResponse::Ok().body(format!(r#"{{"apower": {power}, "on": {on}}}"#))
}

async fn relay(device: web::Data<Device>, request: HttpRequest, body: String) -> HttpResponse {
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let target = request.uri().to_string();
    device
        .seen
        .lock()
        .unwrap()
        .push((request.method().to_string(), target, body.clone(), auth.clone()));
    if auth != "Basic YWRtaW46cGx1Zy1zZWNyZXQ=" {
        return HttpResponse::Unauthorized().body("who are you?");
    }
    let wanted: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let Some(on) = wanted["on"].as_bool() else {
        return HttpResponse::BadRequest().body("`on` must be true or false");
    };
    let was_on = std::mem::replace(&mut *device.on.lock().unwrap(), on);
    HttpResponse::Ok().body(format!(r#"{{"was_on": {was_on}}}"#))
}

/// Serves the stand-in device at `addr` (port 0: any free port).
fn serve(device: web::Data<Device>, addr: SocketAddr) -> (SocketAddr, ServerHandle) {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(device.clone())
            .route("/status", web::get().to(status))
            .route("/relay", web::post().to(relay))
            .route(
                "/busy",
                web::get().to(|| async { HttpResponse::ServiceUnavailable().body("relay busy") }),
            )
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)
    .expect("the device server binds");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (addr, handle)
}

fn devices_yaml(addr: SocketAddr) -> String {
    format!(
        "{ECHO_DEVICES}  - id: shelly-1
    plugin: http
    settings:
      base_url: http://{addr}
      timeout_ms: 2000
      auth: {{basic: {{user: admin, password_env: HTTP_PLUGIN_TEST_PASSWORD}}}}
      poll:
        - {{endpoint: status, url: /status, interval_ms: 50}}
        - {{endpoint: power, url: /status, interval_ms: 50, pointer: /apower, on_change: true}}
      commands:
        set: {{url: '/relay?by={{device}}', body: '{{\"on\": {{body}}}}', pointer: /was_on}}
        get: {{url: /status}}
        busy: {{url: /busy}}
"
    )
}

async fn answer(sim: &platform_sim::SimHandle, endpoint: &str, body: &str) -> String {
    sim.command_and_wait(&Command::new("shelly-1", endpoint).body(body), DEADLINE)
        .await
        .expect("the platform gets an answer")
        .message
        .body
}

async fn bodies(sim: &platform_sim::SimHandle, endpoint: &str) -> Vec<String> {
    frames(sim, "shelly-1", EventKind::Change)
        .await
        .into_iter()
        .filter(|e| e.message.endpoint == endpoint)
        .map(|e| e.message.body)
        .collect()
}

#[actix_rt::test]
async fn polls_become_events_and_commands_become_requests() {
    set_password();
    let sim = simulator().await;
    let device = web::Data::new(Device::default());
    *device.power.lock().unwrap() = 12.5;
    let (addr, server) = serve(device.clone(), "127.0.0.1:0".parse().unwrap());
    let connector = connected(&sim, config_for(&sim, &devices_yaml(addr))).await;

    // The whole body, on every poll; the pointed value only when it changes.
    eventually("several status events", || async {
        (bodies(&sim, "status").await.len() >= 3).then_some(())
    })
    .await;
    assert_eq!(bodies(&sim, "status").await[0], r#"{"apower": 12.5, "on": false}"#);
    assert_eq!(bodies(&sim, "power").await, ["12.5"], "one event while the value stays");
    *device.power.lock().unwrap() = 40.0;
    eventually("the changed power", || async {
        (bodies(&sim, "power").await == ["12.5", "40"]).then_some(())
    })
    .await;

    // A command: templated URL and body, basic auth, the reply by pointer.
    assert_eq!(answer(&sim, "set", "true").await, "false");
    assert!(*device.on.lock().unwrap());
    assert_eq!(answer(&sim, "set", "false").await, "true");
    let seen = device.seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, "POST");
    assert_eq!(seen[0].1, "/relay?by=shelly-1");
    assert_eq!(seen[0].2, r#"{"on": true}"#);
    assert_eq!(answer(&sim, "get", "").await, r#"{"apower": 40, "on": false}"#);

    // The device refuses: the reply is an error naming the status and URL.
    let refused = answer(&sim, "set", "maybe").await;
    assert!(
        refused.contains(&format!("POST http://{addr}/relay?by=shelly-1: HTTP 400")),
        "{refused}"
    );
    let busy = answer(&sim, "busy", "").await;
    assert!(
        busy.contains(&format!("GET http://{addr}/busy: HTTP 503: relay busy")),
        "{busy}"
    );
    let unknown = answer(&sim, "dance", "").await;
    assert!(
        unknown.contains("unknown endpoint \\\"dance\\\" (this device knows: busy, get, set)"),
        "{unknown}"
    );
    for reply in [&refused, &busy, &unknown] {
        assert!(!reply.contains("plug-secret"), "the password leaked: {reply}");
    }
    connector.shutdown(Duration::from_secs(2)).await;
    server.stop(false).await;
}

#[actix_rt::test]
async fn a_device_server_down_at_the_start_is_polled_until_it_comes_back() {
    set_password();
    let sim = simulator().await;
    // A free port, with nothing listening on it yet.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let connector = connected(&sim, config_for(&sim, &devices_yaml(addr))).await;

    let down = answer(&sim, "get", "").await;
    assert!(down.contains(&format!("GET http://{addr}/status")), "{down}");
    assert!(bodies(&sim, "status").await.is_empty());

    let device = web::Data::new(Device::default());
    *device.power.lock().unwrap() = 7.0;
    let (_, server) = serve(device.clone(), addr);
    eventually("events once the device is back", || async {
        (bodies(&sim, "power").await == ["7"]).then_some(())
    })
    .await;
    assert_eq!(answer(&sim, "get", "").await, r#"{"apower": 7, "on": false}"#);
    connector.shutdown(Duration::from_secs(2)).await;
    server.stop(false).await;
}

#[test]
fn check_names_an_unset_password_variable_with_the_line() {
    let dir = std::env::temp_dir().join(format!("http-plugin-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("connector.yaml");
    std::fs::write(
        &path,
        "devices:\n  - id: plug\n    plugin: http\n    settings:\n      commands: {get: {url: 'http://127.0.0.1:9/'}}\n      auth: {bearer: {token_env: HTTP_PLUGIN_TEST_UNSET_TOKEN}}\n",
    )
    .unwrap();
    // Nothing in this test binary sets the variable.
    let (code, stderr) = check_file(&path, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("connector.yaml:6:13: devices[0].settings.auth: device \"plug\"")
            && stderr.contains("HTTP_PLUGIN_TEST_UNSET_TOKEN (the token) is not set"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
