//! `platform-sim`: serve a SEPL platform simulator, or talk to a running
//! one's control API by hand. Arguments are parsed by clap into [`Cli`],
//! `serve` turns them into a checked [`SimConfig`]; the other subcommands
//! become one control request each (see `client`).

mod client;

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use platform_sim::{SimConfig, Simulator, TlsConfig};
use serde_json::{json, Value};

const AFTER_HELP: &str = "\
One port serves everything:
  GET    /lookup                   the socket URL as plain text (ws://HOST:PORT/ws)
  GET    /ws                       the connector's WebSocket
  POST   /discovery                register devices (PROTOCOL.md section 6)
  DELETE /discovery/<encoded id>   unregister a device
  /control/...                     the control API (JSON):
    GET  /control/devices | /control/sessions | /control/counters
    GET  /control/events?device=ID&kind=change|response&since=SEQ&limit=N
    POST /control/reset
    POST /control/command          {\"device_id\",\"endpoint\",\"endpoint_name\"?,\"header\"?,\"body\"?,\"wait_ms\"?}
    POST /control/fault/drop       {\"mode\":\"close\"|\"reset\",\"code\"?}
    POST /control/fault/refuse-credentials {\"refuse\":true}
    POST /control/fault/ignore-pings       {\"ignore\":true}
    POST /control/fault/registration       {\"status\":503,\"times\":2}
    POST /control/fault/lookup             {\"status\":503,\"times\":2}
    POST /control/fault/pause      {\"ms\":500}
    POST /control/fault/raw        {\"text\":\"..\"} | {\"hex\":\"00ff\"} | {\"huge\":1000000}
See platform-sim/README.md for the answers.

Example (serve accepts the credentials of config/*.yaml unless told otherwise):
  platform-sim serve
  connector-runtime --config config/demo.yaml
  platform-sim devices
  platform-sim command --device lamp-1 --endpoint on --body '{}' --wait-ms 5000
  platform-sim events --follow
  platform-sim fault drop --reset --url http://127.0.0.1:8093

TLS: `serve --tls-cert cert.pem --tls-key key.pem` serves https:// and wss://
on the same port (the lookup answers wss://HOST:PORT/ws); give the connector
the CA with platform.ca_file. The client subcommands (devices, command, ...) speak plain HTTP
only, so they cannot steer a simulator in TLS mode.";

/// A SEPL platform simulator for connector tests and experiments.
#[derive(Debug, Parser)]
#[command(name = "platform-sim", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a simulator; prints `lookup: URL` on stdout once listening.
    Serve(ServeArgs),
    /// Send a command to a device and optionally wait for its response.
    Command(CommandArgs),
    /// Print received events, one JSON object a line.
    Events(EventsArgs),
    /// List registered devices.
    Devices(Target),
    /// List open WebSocket sessions.
    Sessions(Target),
    /// Print every counter.
    Counters(Target),
    /// Clear recorded events, counters and fault switches.
    Reset(Target),
    /// Inject a fault.
    Fault(FaultArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on; port 0 lets the OS pick one.
    #[arg(long, default_value = "127.0.0.1:8093")]
    listen: SocketAddr,
    /// Platform user a connector must present; the default is the user of
    /// the example configs in config/.
    #[arg(long, default_value = DEMO_USER)]
    user: String,
    /// Platform password a connector must present (never logged); the
    /// default is the password of the example configs in config/.
    #[arg(long, default_value = DEMO_PASSWORD, hide_default_value = true)]
    password: String,
    /// HTTP path for device (un)registration.
    #[arg(long, default_value = platform_sim::config::DEFAULT_REGISTRATION_PATH)]
    registration_path: String,
    /// HTTP path of the lookup endpoint.
    #[arg(long, default_value = platform_sim::config::DEFAULT_LOOKUP_PATH)]
    lookup_path: String,
    /// Count `change:` frames by prefix only; record no events (fastest).
    #[arg(long)]
    count_only: bool,
    /// How many recent events to keep.
    #[arg(long, default_value_t = platform_sim::config::DEFAULT_EVENT_CAPACITY)]
    event_capacity: usize,
    /// Largest frame accepted from a connector, in bytes.
    #[arg(long, default_value_t = platform_sim::config::DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: usize,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Serve https:// and wss:// with this PEM certificate (chain); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The credentials of the example configs (`config/*.yaml`), so that a
/// simulator started by hand accepts them as they are.
const DEMO_USER: &str = "demo";
const DEMO_PASSWORD: &str = "demo-password";

/// Which running simulator to talk to.
#[derive(Debug, Args)]
struct Target {
    /// Base URL of the running simulator.
    // Global: `fault drop --reset --url U` is where people put it, and
    // `fault --url U drop --reset` keeps working.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8093")]
    url: String,
}

#[derive(Debug, Args)]
struct CommandArgs {
    #[command(flatten)]
    target: Target,
    /// Local device id (device_url).
    #[arg(long)]
    device: String,
    /// Local endpoint (service_url).
    #[arg(long)]
    endpoint: String,
    /// Endpoint name (service_name); defaults to the endpoint.
    #[arg(long)]
    endpoint_name: Option<String>,
    /// The header protocol part.
    #[arg(long, default_value = "")]
    header: String,
    /// The body protocol part.
    #[arg(long, default_value = "")]
    body: String,
    /// Wait this long for the connector's response and print it.
    #[arg(long)]
    wait_ms: Option<u64>,
}

#[derive(Debug, Args)]
struct EventsArgs {
    #[command(flatten)]
    target: Target,
    /// Only events of this device.
    #[arg(long)]
    device: Option<String>,
    /// Only `change` or `response` events.
    #[arg(long)]
    kind: Option<String>,
    /// How many recent events to print first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep printing new events as they arrive (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, Args)]
struct FaultArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    fault: Fault,
}

#[derive(Debug, Subcommand)]
enum Fault {
    /// Drop every session: a clean close frame, or with --reset a TCP reset.
    Drop {
        /// Abrupt TCP reset (ECONNRESET, no close frame).
        #[arg(long)]
        reset: bool,
        /// Close code of a clean close.
        #[arg(long, default_value_t = 1001)]
        code: u16,
    },
    /// Refuse (on) or accept (off) all credentials.
    RefuseCredentials {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Stop (on) or resume (off) answering pings.
    IgnorePings {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Answer the next N (un)registrations with a status.
    Registration {
        #[arg(long)]
        status: u16,
        #[arg(long, default_value_t = 1)]
        times: u32,
    },
    /// Answer the next N lookups with a status.
    Lookup {
        #[arg(long)]
        status: u16,
        #[arg(long, default_value_t = 1)]
        times: u32,
    },
    /// Close the listener and all connections, reopen after MS.
    Pause {
        #[arg(long)]
        ms: u64,
    },
    /// Send a raw frame to the connector.
    Raw {
        /// A text frame with this text.
        #[arg(long, group = "frame")]
        text: Option<String>,
        /// A binary frame, as hex.
        #[arg(long, group = "frame")]
        hex: Option<String>,
        /// A JSON text frame of exactly N bytes.
        #[arg(long, group = "frame")]
        huge: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::Command(args) => command(args),
        Cmd::Events(args) => events(args),
        Cmd::Devices(t) => get_and_print(&t, "/control/devices"),
        Cmd::Sessions(t) => get_and_print(&t, "/control/sessions"),
        Cmd::Counters(t) => get_and_print(&t, "/control/counters"),
        Cmd::Reset(t) => post_and_print(&t, "/control/reset", json!({}), DEFAULT_TIMEOUT),
        Cmd::Fault(args) => fault(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), String>;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn serve(args: ServeArgs) -> CliResult {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .map_err(|e| format!("bad --log-level {:?}: {e}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching; redirected logs stay
        // plain, as connector-runtime's do.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig::from_files(cert, key).map_err(|e| e.to_string())?),
        _ => None,
    };
    let config = SimConfig {
        listen: args.listen,
        user: args.user,
        password: args.password,
        registration_path: args.registration_path,
        lookup_path: args.lookup_path,
        record_events: !args.count_only,
        event_capacity: args.event_capacity,
        max_frame_size: args.max_frame_size,
        tls,
        ..SimConfig::default()
    };
    let user = config.user.clone();
    actix_rt::System::new().block_on(async move {
        let sim = Simulator::start(config).await.map_err(|e| e.to_string())?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "lookup: {}", sim.lookup_url()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        drop(out);
        tracing::info!(
            socket = %sim.socket_url(),
            control = %sim.control_url(),
            registration = %sim.registration_url(),
            %user,
            "serving"
        );
        // Runs until the process is killed (Ctrl-C): the simulator holds no
        // state worth saving.
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Sends one request; a non-2xx answer becomes an error carrying its body.
fn call(url: &str, method: &str, path: &str, body: Option<Value>, timeout: Duration) -> Result<Value, String> {
    let body = body.map(|b| b.to_string());
    let answer = client::request(url, method, path, body.as_deref(), timeout).map_err(|e| e.to_string())?;
    if !(200..300).contains(&answer.status) {
        return Err(format!("HTTP {}: {}", answer.status, answer.body.trim()));
    }
    serde_json::from_str(&answer.body).map_err(|e| format!("answer is not JSON ({e}): {}", answer.body))
}

fn print_json(value: &Value) -> CliResult {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn get_and_print(target: &Target, path: &str) -> CliResult {
    print_json(&call(&target.url, "GET", path, None, DEFAULT_TIMEOUT)?)
}

fn post_and_print(target: &Target, path: &str, body: Value, timeout: Duration) -> CliResult {
    print_json(&call(&target.url, "POST", path, Some(body), timeout)?)
}

fn command(args: CommandArgs) -> CliResult {
    let mut body = json!({
        "device_id": args.device,
        "endpoint": args.endpoint,
        "header": args.header,
        "body": args.body,
    });
    if let Some(name) = args.endpoint_name {
        body["endpoint_name"] = json!(name);
    }
    let mut timeout = DEFAULT_TIMEOUT;
    if let Some(ms) = args.wait_ms {
        body["wait_ms"] = json!(ms);
        timeout += Duration::from_millis(ms);
    }
    post_and_print(&args.target, "/control/command", body, timeout)
}

fn events(args: EventsArgs) -> CliResult {
    let mut query = format!("limit={}", args.limit);
    if let Some(device) = &args.device {
        query.push_str(&format!("&device={}", encode_query(device)));
    }
    if let Some(kind) = &args.kind {
        query.push_str(&format!("&kind={}", encode_query(kind)));
    }
    let mut since: Option<u64> = None;
    loop {
        let path = match since {
            Some(seq) => format!("/control/events?{query}&since={seq}"),
            None => format!("/control/events?{query}"),
        };
        let answer = call(&args.target.url, "GET", &path, None, DEFAULT_TIMEOUT)?;
        let list = answer["events"].as_array().cloned().unwrap_or_default();
        for event in &list {
            println!("{event}");
            since = since.max(event["seq"].as_u64());
        }
        if !args.follow {
            return Ok(());
        }
        // `since` 0 pages forward from the start once the first call found nothing.
        since.get_or_insert(0);
        if list.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Percent-encodes a query value.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn fault(args: FaultArgs) -> CliResult {
    let (path, body) = match args.fault {
        Fault::Drop { reset: true, .. } => ("drop", json!({"mode": "reset"})),
        Fault::Drop { reset: false, code } => ("drop", json!({"mode": "close", "code": code})),
        Fault::RefuseCredentials { state } => ("refuse-credentials", json!({"refuse": state == "on"})),
        Fault::IgnorePings { state } => ("ignore-pings", json!({"ignore": state == "on"})),
        Fault::Registration { status, times } => ("registration", json!({"status": status, "times": times})),
        Fault::Lookup { status, times } => ("lookup", json!({"status": status, "times": times})),
        Fault::Pause { ms } => ("pause", json!({ "ms": ms })),
        Fault::Raw { text, hex, huge } => match (text, hex, huge) {
            (Some(text), _, _) => ("raw", json!({ "text": text })),
            (_, Some(hex), _) => ("raw", json!({ "hex": hex })),
            (_, _, Some(n)) => ("raw", json!({ "huge": n })),
            _ => return Err("fault raw needs one of --text, --hex, --huge".to_owned()),
        },
    };
    post_and_print(&args.target, &format!("/control/fault/{path}"), body, DEFAULT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("a b/c"), "a%20b%2Fc");
    }
}
