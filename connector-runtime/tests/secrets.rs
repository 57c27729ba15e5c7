//! The password never shows: not in a log line at any level (ours, or
//! actix', awc's and rustls' own), not in an error, not in a `Debug` output.
//! The whole flow runs at trace level with every line captured, and then the
//! capture is searched for a password nobody else would write.

mod certs;
mod util;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certs::{temp_dir, TestPki};
use connector_core::config::Config;
use connector_core::http;
use connector_core::tls::TlsSettings;
use connector_core::{Device, Message};
use connector_runtime::connection::LinkSettings;
use connector_runtime::registry::RegistrySettings;
use connector_runtime::{Connector, Lifecycle};
use platform_sim::{Command, DropMode, SimConfig};
use tokio::sync::broadcast;
use util::{barrier, device_ids, eventually, wait_event, DEADLINE, ECHO_DEVICES};

/// Distinctive, and without characters JSON or percent-encoding would change.
const PASSWORD: &str = "Pw-9f3kQz7-leakcheck";

/// Every formatted log line of the process, whatever thread wrote it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Installs the capture as the process' only subscriber, at trace level
    /// for every target, with `log` records (actix, awc, rustls) routed in.
    fn install() -> Capture {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_log::LogTracer::init_with_filter(tracing_log::log::LevelFilter::Trace)
            .expect("no other logger in this test process");
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this test process");
        capture
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every `Debug` and `Display` text the test produces, searched at the end.
#[derive(Default)]
struct Shown(Vec<String>);

impl Shown {
    fn debug(&mut self, value: &impl std::fmt::Debug) {
        self.0.push(format!("{value:?}"));
        self.0.push(format!("{value:#?}"));
    }

    fn error(&mut self, error: &(impl std::error::Error + 'static)) {
        self.debug(error);
        let mut cause: Option<&dyn std::error::Error> = Some(error);
        while let Some(e) = cause {
            self.0.push(e.to_string());
            cause = e.source();
        }
    }
}

/// Collects every lifecycle event, for their `Debug` at the end.
fn record_events(mut events: broadcast::Receiver<Lifecycle>, into: Arc<Mutex<Vec<Lifecycle>>>) {
    actix_rt::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => into.lock().unwrap().push(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

#[actix_rt::test]
async fn the_password_appears_in_no_log_line_error_or_debug_output_at_trace_level() {
    let capture = Capture::install();
    let mut shown = Shown::default();
    let pki = TestPki::new();
    let sim = pki
        .simulator(SimConfig {
            user: "alice".into(),
            password: PASSWORD.into(),
            ..SimConfig::default()
        })
        .await;
    shown.debug(sim.config());
    let ca_file = pki.write_ca(&temp_dir("secrets"), "ca.pem");

    // The config, as a file would give it, and through the environment.
    let yaml = format!(
        "platform:\n  lookup_url: {}\n  user: alice\n  password: {PASSWORD}\n  ca_file: {}\n  backoff: {{ initial_ms: 20, max_ms: 200 }}\n  ping_interval_ms: 200\ndevices:\n{ECHO_DEVICES}",
        sim.lookup_url(),
        ca_file.display()
    );
    let mut config = Config::from_yaml_str(&yaml, "secrets.yaml").expect("the config is valid");
    config
        .apply_env_from(|name| (name == "CONNECTOR_PASSWORD").then(|| PASSWORD.to_owned()))
        .unwrap();
    shown.debug(&config);
    shown.debug(&config.credentials());

    // Config errors with the password close by: in a bad value of another
    // key, and pasted into the wrong environment variable.
    let bad_yaml = yaml.replace("ping_interval_ms: 200", "ping_interval_ms: 0");
    shown.error(&Config::from_yaml_str(&bad_yaml, "secrets.yaml").unwrap_err());
    let mut env_victim = config.clone();
    shown.error(
        &env_victim
            .apply_env_from(|name| (name == "CONNECTOR_HTTPS").then(|| PASSWORD.to_owned()))
            .unwrap_err(),
    );
    let mut wrong_key = config.clone();
    wrong_key.platform.lookup_url = format!("http://alice:{PASSWORD}@ho st/");
    shown.error(&wrong_key.validate().unwrap_err());

    // HTTP errors for a URL carrying the password as userinfo.
    let unreachable = format!("http://alice:{PASSWORD}@127.0.0.1:1/lookup");
    shown.debug(&http::get(&unreachable));
    shown.error(
        &http::get(&unreachable)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .unwrap_err(),
    );
    shown.error(
        &http::get(format!("ftp://alice:{PASSWORD}@h/"))
            .send()
            .await
            .unwrap_err(),
    );

    // A start refused for its CA file, with the password in the config.
    let mut no_ca = config.clone();
    no_ca.platform.ca_file = Some(temp_dir("secrets-missing").join("missing.pem"));
    match Connector::start(no_ca).await {
        Ok(_) => panic!("started without its CA file"),
        Err(err) => shown.error(&err),
    }

    // The settings the actors run with.
    let tls = TlsSettings::load(Some(&ca_file)).unwrap();
    shown.debug(&tls);
    shown.debug(&LinkSettings {
        lookup_url: config.lookup_url(),
        https: true,
        tls: tls.clone(),
        credentials: config.credentials(),
        ping_interval: config.platform.ping_interval(),
        pong_timeout: config.platform.pong_timeout(),
        max_frame_bytes: config.platform.max_frame_bytes,
        backoff_initial: config.platform.backoff.initial(),
        backoff_max: config.platform.backoff.max(),
    });
    shown.debug(&RegistrySettings {
        registration_path: config.registration_path().to_owned(),
        tls: tls.clone(),
        credentials: config.credentials(),
        backoff_initial: config.platform.backoff.initial(),
        backoff_max: config.platform.backoff.max(),
    });

    // The whole flow: connect, register, command, events.
    let connector = Connector::start(config).await.expect("the connector starts");
    let lifecycle = Arc::new(Mutex::new(Vec::new()));
    record_events(connector.subscribe(), lifecycle.clone());
    let mut events = connector.subscribe();
    eventually("devices registered", || async {
        (device_ids(&sim).await == ["lamp-1", "plug-2"]).then_some(())
    })
    .await;
    let reply = sim
        .command_and_wait(&Command::new("lamp-1", "set").body("on"), DEADLINE)
        .await
        .unwrap();
    shown.debug(&reply);
    connector.send(Message::event("plug-2", "power", "1")).unwrap();
    barrier(&sim, "lamp-1").await;

    // Refused credentials: first a registration, then the socket handshake.
    sim.set_refuse_credentials(true).await;
    connector
        .register(Device::new("program-3", "sensor", "Program device"))
        .await
        .unwrap();
    wait_event(
        &mut events,
        "registration refused",
        |e| matches!(e, Lifecycle::CredentialsRefused { context } if context.starts_with("registration")),
    )
    .await;
    sim.drop_sessions(DropMode::Close {
        code: 1001,
        reason: "going away".into(),
    })
    .await;
    wait_event(
        &mut events,
        "socket refused",
        |e| matches!(e, Lifecycle::CredentialsRefused { context } if context.starts_with("socket")),
    )
    .await;
    sim.set_refuse_credentials(false).await;
    eventually("all three registered after the refusal", || async {
        (device_ids(&sim).await.len() == 3).then_some(())
    })
    .await;

    // An abrupt drop (TCP reset under TLS), a failed lookup, and reconnect.
    let mut events = connector.subscribe();
    sim.fail_lookups(503, 1).await;
    sim.drop_sessions(DropMode::Reset).await;
    wait_event(&mut events, "the drop", |e| matches!(e, Lifecycle::Disconnected { .. })).await;
    wait_event(&mut events, "reconnected", |e| matches!(e, Lifecycle::Connected { .. })).await;
    barrier(&sim, "lamp-1").await;

    connector
        .unregister(&Device::new("program-3", "sensor", "Program device"))
        .await
        .unwrap();
    wait_event(&mut events, "unregistered", |e| {
        matches!(e, Lifecycle::UnregistrationSucceeded { .. })
    })
    .await;
    shown.debug(&connector.stats());
    connector.shutdown(Duration::from_secs(2)).await;
    sim.stop().await.unwrap();
    // Let late log lines of the stopping actors and server land.
    actix_rt::time::sleep(Duration::from_millis(200)).await;

    for event in lifecycle.lock().unwrap().iter() {
        shown.debug(event);
    }
    let log = capture.text();
    // The capture did see the libraries' trace output, so its silence on the
    // password means something.
    for needle in [
        "TRACE",
        "connector_runtime",
        "platform_sim",
        "actix_http::h1",
        "actix_tls::connect::rustls",
        "log.target=\"rustls::",
    ] {
        assert!(log.contains(needle), "the capture holds no {needle} line");
    }
    assert!(log.contains("the platform refused the credentials"));
    assert!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{}",
        lines_with(&log, PASSWORD)
    );
    for text in &shown.0 {
        assert!(
            !text.contains(PASSWORD),
            "the password is in a Debug or error text: {text}"
        );
    }
    assert!(shown.0.len() > 30, "too few texts checked: {}", shown.0.len());
}

/// The binary at `LOGLEVEL=trace` with its embedded platform, as a user runs it.
#[test]
fn the_binary_at_trace_level_never_prints_the_password() {
    let config = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/demo.yaml");
    let mut child = util::runtime_binary()
        .arg("--config")
        .arg(config)
        .args(["--embedded-platform", "--demo-interval", "0.1"])
        .env("LOGLEVEL", "trace")
        .env("CONNECTOR_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr_pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Run until a few demo commands were answered (or a deadline passed),
    // then stop it as systemd would.
    let mut stderr = Vec::new();
    let mut answers = 0;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        answers += usize::from(line.contains("got the answer"));
        stderr.push(line);
        if answers == 4 {
            break;
        }
    }
    let pid = child.id().to_string();
    let _ = Process::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().unwrap();
    stderr.extend(rx.iter());
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join("\n");
    assert!(answers >= 4, "the demo did not run ({status:?}):\n{stderr}");
    assert!(stderr.contains("TRACE"), "not at trace level:\n{stderr}");
    assert!(!stderr.contains(PASSWORD), "{}", lines_with(&stderr, PASSWORD));
    assert!(!stdout.contains(PASSWORD), "{}", lines_with(&stdout, PASSWORD));
}

fn lines_with(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}
