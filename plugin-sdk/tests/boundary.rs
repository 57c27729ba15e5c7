//! The library side of the boundary, driven in-process: this test binary
//! exports plugins with the macro and calls its own declaration's functions
//! the way the runtime's loader would, with a recording host table.

use std::ffi::c_void;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use connector_plugin_sdk::abi::{
    self, AbiOut, AbiStr, EmitFn, HostApi, LogFn, PluginDeclaration, ReportFailureFn, Status,
};
use connector_plugin_sdk::{
    export_plugins, spawn_worker, DevicePlugin, DeviceSpec, EventSink, Message, PluginError, Reply, Responder,
};

export_plugins! {
    "probe" => create_probe,
    "fragile" => create_fragile,
    "waiter" => create_waiter,
}

/// Answers through its responders, later and from other threads: `hold`
/// keeps the command, `release` answers every held one in order from a
/// thread of its own, `hold-then-panic` keeps it and panics, `drop` drops it
/// unanswered, `panic-later` hands it to a thread that panics, `park` hands
/// it to [`PARKED`] for the test to answer.
struct Waiter {
    held: Vec<(String, Responder)>,
}

/// Responders parked by a `waiter`, answered by the test after `destroy`.
static PARKED: Mutex<Vec<Responder>> = Mutex::new(Vec::new());

fn create_waiter(_: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    Ok(Box::new(Waiter { held: Vec::new() }))
}

impl DevicePlugin for Waiter {
    fn command_deferred(&mut self, command: &Message, reply: Responder) {
        match command.endpoint.as_str() {
            "hold" => self.held.push((command.payload.clone(), reply)),
            "hold-then-panic" => {
                self.held.push((command.payload.clone(), reply));
                panic!("the waiter panics holding {:?}", command.payload);
            }
            "release" => {
                let held = std::mem::take(&mut self.held);
                let count = held.len();
                std::thread::spawn(move || {
                    for (body, responder) in held {
                        responder.reply(Reply::body(body));
                    }
                    reply.reply(Reply::body(format!("released {count}")));
                });
            }
            "drop" => drop(reply),
            "panic-later" => {
                std::thread::spawn(move || {
                    let _reply = reply;
                    panic!("the waiter's thread panics with a command unanswered");
                });
            }
            "park" => PARKED.lock().unwrap().push(reply),
            other => reply.error(format!("no endpoint {other:?}")),
        }
    }
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

/// Every `reply` the library made, as (token, status, text). Shared by all
/// tests, so each uses tokens of its own.
static REPLIES: Mutex<Vec<(u64, Status, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn reply(token: u64, status: Status, bytes: AbiStr) {
    REPLIES.lock().unwrap().push((token, status, text(bytes)));
}

/// The replies with tokens in `tokens`, in the order they came.
fn replies(tokens: std::ops::Range<u64>) -> Vec<(u64, Status, String)> {
    let replies = REPLIES.lock().unwrap();
    replies.iter().filter(|(t, _, _)| tokens.contains(t)).cloned().collect()
}

static HOST_API: HostApi = HostApi {
    size: std::mem::size_of::<HostApi>() as u32,
    emit: Some(emit),
    log: Some(log),
    report_failure: Some(report_failure),
    reply: Some(reply),
};

/// A host's table as ABI version 1 was first released: no `reply`.
#[repr(C)]
struct HostApiV1_0 {
    size: u32,
    emit: Option<EmitFn>,
    log: Option<LogFn>,
    report_failure: Option<ReportFailureFn>,
}

static OLD_HOST_API: HostApiV1_0 = HostApiV1_0 {
    size: std::mem::size_of::<HostApiV1_0>() as u32,
    emit: Some(emit),
    log: Some(log),
    report_failure: Some(report_failure),
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

fn create(name: &str, spec: serde_json::Value, host: &Host, api: *const HostApi) -> (Status, String, *mut c_void) {
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

fn command_deferred(instance: *mut c_void, endpoint: &str, payload: &str, token: u64) -> (Status, String) {
    let message = Message {
        endpoint: endpoint.into(),
        payload: payload.into(),
        task_id: format!("task-{token}"),
        ..Message::default()
    };
    let json = serde_json::to_vec(&message).unwrap();
    let deferred = declaration().functions.command_deferred.unwrap();
    // SAFETY: a live instance from `create`, one call at a time.
    call(|out| unsafe { deferred(instance, AbiStr::new(&json), token, out) })
}

fn reply_json(body: &str) -> String {
    serde_json::to_string(&Reply::body(body)).unwrap()
}

#[test]
fn the_declaration_describes_this_build() {
    let declaration = declaration();
    assert_eq!(declaration.header, abi::DeclarationHeader::current());
    assert_eq!(
        declaration.header.size as usize,
        std::mem::size_of::<PluginDeclaration>()
    );
    assert!(declaration.functions.command_deferred.is_some());
    assert_eq!(declaration.panic_strategy, abi::PANIC_UNWIND);
    // SAFETY: the declaration's texts are static.
    let names: Vec<String> = unsafe { std::slice::from_raw_parts(declaration.plugin_names, declaration.plugin_count) }
        .iter()
        .map(|n| text(*n))
        .collect();
    assert_eq!(names, ["probe", "fragile", "waiter"]);
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
        "this library has no plugin named \"lamp\" (it has: probe, fragile, waiter)"
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

#[test]
fn a_plain_command_through_command_deferred_is_answered_with_its_token_during_the_call() {
    let host = Host::default();
    let (_, _, instance) = create("probe", spec("probe", serde_json::json!({})), &host, &HOST_API);
    let functions = declaration().functions;
    // SAFETY: a live instance, one call at a time (for all calls below).
    call(|out| unsafe { (functions.start.unwrap())(instance, out) });
    // `probe` has only `command`; the SDK's default answers with it, in the call.
    assert_eq!(
        command_deferred(instance, "tick", "", 101),
        (abi::STATUS_OK, String::new())
    );
    assert_eq!(
        command_deferred(instance, "nope", "", 102),
        (abi::STATUS_OK, String::new())
    );
    let reply = serde_json::to_string(&Reply::body("sent").with_header("h")).unwrap();
    assert_eq!(
        replies(100..200),
        [
            (101, abi::STATUS_OK, reply),
            (102, abi::STATUS_ERROR, "no such endpoint".to_owned())
        ]
    );
    // A panic is the call's status, with its text; the token is never used.
    let (status, answer) = command_deferred(instance, "panic", "p", 103);
    assert_eq!((status, answer.as_str()), (abi::STATUS_PANIC, "probe panics on \"p\""));
    assert_eq!(replies(103..104), []);
    // SAFETY: as above; destroy is the last call.
    call(|out| unsafe { (functions.stop.unwrap())(instance, out) });
    // SAFETY: the last call with this instance.
    assert_eq!(unsafe { (functions.destroy.unwrap())(instance) }, abi::STATUS_OK);
}

#[test]
fn deferred_answers_come_later_from_other_threads_in_order_each_with_its_token() {
    let host = Host::default();
    let (status, _, instance) = create("waiter", spec("waiter", serde_json::json!({})), &host, &HOST_API);
    assert_eq!(status, abi::STATUS_OK);
    for (token, body) in [(201, "a"), (202, "b"), (203, "c")] {
        assert_eq!(command_deferred(instance, "hold", body, token).0, abi::STATUS_OK);
    }
    assert_eq!(replies(200..300), [], "held commands are not answered yet");
    assert_eq!(command_deferred(instance, "release", "", 204).0, abi::STATUS_OK);
    wait_until("four replies", || replies(200..300).len() == 4);
    assert_eq!(
        replies(200..300),
        [
            (201, abi::STATUS_OK, reply_json("a")),
            (202, abi::STATUS_OK, reply_json("b")),
            (203, abi::STATUS_OK, reply_json("c")),
            (204, abi::STATUS_OK, reply_json("released 3")),
        ]
    );
    // Dropped unanswered: an error answer, not silence.
    assert_eq!(command_deferred(instance, "drop", "", 205).0, abi::STATUS_OK);
    assert_eq!(
        replies(205..206),
        [(
            205,
            abi::STATUS_ERROR,
            "the plugin dropped the command without answering it".to_owned()
        )]
    );
    // Dropped by a thread that panicked, after the call: still answered.
    assert_eq!(command_deferred(instance, "panic-later", "", 206).0, abi::STATUS_OK);
    wait_until("the abandoned command's answer", || replies(206..207).len() == 1);
    assert_eq!(
        replies(206..207),
        [(
            206,
            abi::STATUS_ERROR,
            "the plugin panicked before answering the command".to_owned()
        )]
    );
    // SAFETY: the last call with this instance.
    assert_eq!(
        unsafe { (declaration().functions.destroy.unwrap())(instance) },
        abi::STATUS_OK
    );
}

#[test]
fn a_token_of_a_failed_call_is_never_used_even_by_a_responder_the_plugin_kept() {
    let host = Host::default();
    let (_, _, instance) = create("waiter", spec("waiter", serde_json::json!({})), &host, &HOST_API);
    let (status, answer) = command_deferred(instance, "hold-then-panic", "kept", 301);
    assert_eq!(
        (status, answer.as_str()),
        (abi::STATUS_PANIC, "the waiter panics holding \"kept\"")
    );
    // The plugin still has the responder and answers it with the next ones.
    assert_eq!(command_deferred(instance, "hold", "next", 302).0, abi::STATUS_OK);
    assert_eq!(command_deferred(instance, "release", "", 303).0, abi::STATUS_OK);
    wait_until("the release", || replies(303..304).len() == 1);
    assert_eq!(
        replies(300..400),
        [
            (302, abi::STATUS_OK, reply_json("next")),
            (303, abi::STATUS_OK, reply_json("released 2")),
        ],
        "token 301 was used after its call failed"
    );
    // SAFETY: the last call with this instance.
    assert_eq!(
        unsafe { (declaration().functions.destroy.unwrap())(instance) },
        abi::STATUS_OK
    );
}

#[test]
fn a_responder_answers_after_its_instance_was_destroyed() {
    let host = Host::default();
    let (_, _, instance) = create("waiter", spec("waiter", serde_json::json!({})), &host, &HOST_API);
    assert_eq!(command_deferred(instance, "park", "", 401).0, abi::STATUS_OK);
    // SAFETY: the last call with this instance.
    assert_eq!(
        unsafe { (declaration().functions.destroy.unwrap())(instance) },
        abi::STATUS_OK
    );
    let parked = PARKED.lock().unwrap().pop().expect("the waiter parked its responder");
    std::thread::spawn(move || parked.reply(Reply::body("after destroy")))
        .join()
        .unwrap();
    assert_eq!(replies(400..500), [(401, abi::STATUS_OK, reply_json("after destroy"))]);
}

#[test]
fn a_host_table_of_the_first_v1_layout_is_accepted_and_commands_go_through_command() {
    assert_eq!(std::mem::size_of::<HostApiV1_0>(), abi::HOST_API_SIZE_V1_0);
    let host = Host::default();
    // The table really is that short: reading `reply` would read past it.
    let old = (&OLD_HOST_API as *const HostApiV1_0).cast::<HostApi>();
    let (status, answer, instance) = create("probe", spec("probe", serde_json::json!({})), &host, old);
    assert_eq!((status, answer.as_str()), (abi::STATUS_OK, ""));
    let functions = declaration().functions;
    // SAFETY: a live instance, one call at a time (for all calls below).
    let (status, _) = call(|out| unsafe { (functions.start.unwrap())(instance, out) });
    assert_eq!(status, abi::STATUS_OK);
    let (status, reply) = command(instance, "tick", "");
    assert_eq!(status, abi::STATUS_OK);
    assert_eq!(serde_json::from_str::<Reply>(&reply).unwrap().body, "sent");
    // Such a host never calls command_deferred; if it did, it is refused.
    let (status, answer) = command_deferred(instance, "tick", "", 501);
    assert_eq!(status, abi::STATUS_UNSUPPORTED);
    assert!(answer.contains("no `reply`"), "{answer}");
    assert_eq!(replies(500..600), []);
    // SAFETY: as above.
    call(|out| unsafe { (functions.stop.unwrap())(instance, out) });
    // SAFETY: the last call with this instance.
    assert_eq!(unsafe { (functions.destroy.unwrap())(instance) }, abi::STATUS_OK);
}
