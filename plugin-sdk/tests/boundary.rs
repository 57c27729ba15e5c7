//! The library side of the boundary, driven in-process: this test binary
//! exports plugins with the macro and calls its own declaration's functions
//! the way the runtime's loader would, with a recording host table.

use std::ffi::c_void;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use connector_plugin_sdk::abi::{self, AbiOut, AbiStr, HostApi, PluginDeclaration, Status};
use connector_plugin_sdk::{
    export_plugins, spawn_worker, DevicePlugin, DeviceSpec, EventSink, Message, PluginError, Reply,
};

export_plugins! {
    "probe" => create_probe,
    "fragile" => create_fragile,
}

/// Emits `tick` from a worker on command, panics where told.
struct Probe {
    ticks: Option<(mpsc::Sender<bool>, JoinHandle<()>)>,
}

fn create_probe(_: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    Ok(Box::new(Probe { ticks: None }))
}

fn create_fragile(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    match spec.settings.get("fail").and_then(|v| v.as_str()) {
        Some("error") => Err(PluginError::new("fragile refuses")),
        _ => panic!("fragile breaks in create"),
    }
}

impl DevicePlugin for Probe {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        let (tx, rx) = mpsc::channel::<bool>();
        let sink = events.clone();
        let worker = spawn_worker(&events, "probe", move || {
            for panic in rx.iter() {
                assert!(!panic, "the probe's worker panics");
                let _ = sink.emit("tick", "t");
            }
            // `stop` closed the gate before dropping the sender: refused.
            assert!(sink.emit("late", "l").is_err(), "an event was accepted after stop");
        })
        .unwrap();
        self.ticks = Some((tx, worker));
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        match command.endpoint.as_str() {
            "tick" | "thread-panic" => {
                let (tx, _) = self.ticks.as_ref().unwrap();
                tx.send(command.endpoint == "thread-panic").unwrap();
                Ok(Reply::body("sent").with_header("h"))
            }
            "panic" => panic!("probe panics on {:?}", command.payload),
            _ => Err(PluginError::new("no such endpoint")),
        }
    }

    fn stop(&mut self) {
        if let Some((tx, worker)) = self.ticks.take() {
            drop(tx);
            let _ = worker.join();
        }
    }
}

/// What the fake host saw.
#[derive(Default)]
struct Host {
    events: Mutex<Vec<String>>,
    logs: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
}

fn text(bytes: AbiStr) -> String {
    // SAFETY: the library passes slices readable for the call.
    String::from_utf8(unsafe { bytes.as_bytes() }.to_vec()).unwrap()
}

/// # Safety
/// `ctx` is a live `Host`.
unsafe fn host<'a>(ctx: *mut c_void) -> &'a Host {
    // SAFETY: see the contract; tests keep the host alive past `destroy`.
    unsafe { &*ctx.cast::<Host>() }
}

unsafe extern "C" fn emit(ctx: *mut c_void, event: AbiStr) -> Status {
    // SAFETY: the context given to create.
    unsafe { host(ctx) }.events.lock().unwrap().push(text(event));
    abi::STATUS_OK
}

unsafe extern "C" fn log(ctx: *mut c_void, level: u32, message: AbiStr) {
    if !ctx.is_null() {
        // SAFETY: the context given to create.
        let host = unsafe { host(ctx) };
        host.logs.lock().unwrap().push(format!("{level} {}", text(message)));
    }
}

unsafe extern "C" fn report_failure(ctx: *mut c_void, reason: AbiStr) {
    // SAFETY: the context given to create.
    unsafe { host(ctx) }.failures.lock().unwrap().push(text(reason));
}

static HOST_API: HostApi = HostApi {
    size: std::mem::size_of::<HostApi>() as u32,
    emit: Some(emit),
    log: Some(log),
    report_failure: Some(report_failure),
    reply: None,
};

unsafe extern "C" fn write(ctx: *mut c_void, bytes: AbiStr) {
    // SAFETY: `ctx` is the `String` of `call`.
    unsafe { *ctx.cast::<String>() = text(bytes) };
}

/// Runs `f` with an `out` and returns the status and what was written.
fn call(f: impl FnOnce(AbiOut) -> Status) -> (Status, String) {
    let mut answer = String::new();
    let out = AbiOut {
        ctx: (&mut answer as *mut String).cast(),
        write,
    };
    let status = f(out);
    (status, answer)
}

/// Polls `done` for up to ten seconds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn declaration() -> &'static PluginDeclaration {
    &SEPL_PLUGIN_DECLARATION
}

fn create(name: &str, spec: serde_json::Value, host: &Host, api: &HostApi) -> (Status, String, *mut c_void) {
    let spec = serde_json::to_vec(&spec).unwrap();
    let mut instance = std::ptr::null_mut();
    let (status, answer) = call(|out| {
        // SAFETY: everything is borrowed for the call; `host` outlives the instance.
        unsafe {
            (declaration().functions.create.unwrap())(
                AbiStr::new(name.as_bytes()),
                AbiStr::new(&spec),
                api,
                (host as *const Host).cast_mut().cast(),
                &mut instance,
                out,
            )
        }
    });
    (status, answer, instance)
}

fn spec(plugin: &str, settings: serde_json::Value) -> serde_json::Value {
    serde_json::to_value(
        DeviceSpec::new("dev-1", "t", "n")
            .with_plugin(plugin)
            .with_settings(settings),
    )
    .unwrap()
}

fn command(instance: *mut c_void, endpoint: &str, payload: &str) -> (Status, String) {
    let message = Message {
        endpoint: endpoint.into(),
        payload: payload.into(),
        task_id: "task".into(),
        ..Message::default()
    };
    let json = serde_json::to_vec(&message).unwrap();
    // SAFETY: a live instance from `create`, one call at a time.
    call(|out| unsafe { (declaration().functions.command.unwrap())(instance, AbiStr::new(&json), out) })
}

#[test]
fn the_declaration_describes_this_build() {
    let declaration = declaration();
    assert_eq!(declaration.header, abi::DeclarationHeader::current());
    assert_eq!(declaration.panic_strategy, abi::PANIC_UNWIND);
    // SAFETY: the declaration's texts are static.
    let names: Vec<String> = unsafe { std::slice::from_raw_parts(declaration.plugin_names, declaration.plugin_count) }
        .iter()
        .map(|n| text(*n))
        .collect();
    assert_eq!(names, ["probe", "fragile"]);
    assert_eq!(text(declaration.api_version), abi::API_VERSION);
    assert_eq!(text(declaration.rustc_version), abi::BUILD_RUSTC);
    assert!(abi::BUILD_RUSTC.starts_with("rustc "), "{}", abi::BUILD_RUSTC);
}

#[test]
fn a_plugin_is_driven_through_the_table_and_its_events_stop_at_stop() {
    let host = Host::default();
    let (status, answer, instance) = create("probe", spec("probe", serde_json::json!({})), &host, &HOST_API);
    assert_eq!((status, answer.as_str()), (abi::STATUS_OK, ""));
    let functions = declaration().functions;
    // SAFETY: a live instance, one call at a time (for all calls below).
    let (status, _) = call(|out| unsafe { (functions.start.unwrap())(instance, out) });
    assert_eq!(status, abi::STATUS_OK);

    let (status, reply) = command(instance, "tick", "");
    assert_eq!(status, abi::STATUS_OK);
    let reply: Reply = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply, Reply::body("sent").with_header("h"));
    wait_until("the tick event", || !host.events.lock().unwrap().is_empty());
    let (status, error) = command(instance, "nope", "");
    assert_eq!((status, error.as_str()), (abi::STATUS_ERROR, "no such endpoint"));

    // SAFETY: as above.
    let (status, _) = call(|out| unsafe { (functions.stop.unwrap())(instance, out) });
    assert_eq!(status, abi::STATUS_OK);
    let events = host.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let event: Message = serde_json::from_str(&events[0]).unwrap();
    assert_eq!((event.device_id.as_str(), event.endpoint.as_str()), ("dev-1", "tick"));
    // SAFETY: the last call with this instance.
    assert_eq!(unsafe { (functions.destroy.unwrap())(instance) }, abi::STATUS_OK);
}

#[test]
fn panics_are_caught_at_the_boundary_and_reported_with_their_message() {
    let host = Host::default();
    let functions = declaration().functions;

    let (status, answer, instance) = create("fragile", spec("fragile", serde_json::json!({})), &host, &HOST_API);
    assert_eq!(
        (status, answer.as_str()),
        (abi::STATUS_PANIC, "fragile breaks in create")
    );
    assert!(instance.is_null());
    let settings = serde_json::json!({"fail": "error"});
    let (status, answer, _) = create("fragile", spec("fragile", settings), &host, &HOST_API);
    assert_eq!((status, answer.as_str()), (abi::STATUS_ERROR, "fragile refuses"));

    let (_, _, instance) = create("probe", spec("probe", serde_json::json!({})), &host, &HOST_API);
    // SAFETY: a live instance, one call at a time (for all calls below).
    call(|out| unsafe { (functions.start.unwrap())(instance, out) });
    let (status, answer) = command(instance, "panic", "p");
    assert_eq!((status, answer.as_str()), (abi::STATUS_PANIC, "probe panics on \"p\""));

    // A panic in the plugin's own worker thread becomes a failure report.
    assert_eq!(command(instance, "thread-panic", "").0, abi::STATUS_OK);
    wait_until("a failure report", || !host.failures.lock().unwrap().is_empty());
    let failures = host.failures.lock().unwrap().clone();
    assert!(
        failures[0].starts_with("worker thread \"probe\" panicked: "),
        "{failures:?}"
    );
    // Logged through the host, tagged with the device's context.
    let logs = host.logs.lock().unwrap().clone();
    assert!(logs.iter().any(|l| l.starts_with("1 worker thread")), "{logs:?}");

    // SAFETY: as above; destroy is the last call.
    call(|out| unsafe { (functions.stop.unwrap())(instance, out) });
    // SAFETY: the last call with this instance.
    assert_eq!(unsafe { (functions.destroy.unwrap())(instance) }, abi::STATUS_OK);
}

#[test]
fn bad_arguments_are_refused_without_reaching_the_plugin() {
    let host = Host::default();
    let (status, answer, _) = create("lamp", spec("lamp", serde_json::json!({})), &host, &HOST_API);
    assert_eq!(status, abi::STATUS_INVALID);
    assert_eq!(
        answer,
        "this library has no plugin named \"lamp\" (it has: probe, fragile)"
    );

    let (status, answer, _) = create("probe", serde_json::json!({"device": 5}), &host, &HOST_API);
    assert_eq!(status, abi::STATUS_INVALID);
    assert!(answer.starts_with("the device spec does not parse"), "{answer}");

    let short = HostApi { size: 8, ..HOST_API };
    let (status, answer, _) = create("probe", spec("probe", serde_json::json!({})), &host, &short);
    assert_eq!(status, abi::STATUS_UNSUPPORTED);
    assert!(answer.starts_with("the host's function table has 8 bytes"), "{answer}");
}

#[test]
fn a_worker_sees_its_events_refused_once_stop_begins() {
    let host = Host::default();
    let functions = declaration().functions;
    let (_, _, instance) = create("probe", spec("probe", serde_json::json!({})), &host, &HOST_API);
    // SAFETY: a live instance, one call at a time.
    call(|out| unsafe { (functions.start.unwrap())(instance, out) });
    // SAFETY: as above. The worker emits "late" after stop closed the gate.
    call(|out| unsafe { (functions.stop.unwrap())(instance, out) });
    let probe_refused = {
        let events = host.events.lock().unwrap();
        !events.iter().any(|e| e.contains("late"))
    };
    assert!(probe_refused, "an event reached the host after stop");
    // SAFETY: the last call with this instance.
    assert_eq!(unsafe { (functions.destroy.unwrap())(instance) }, abi::STATUS_OK);
}
