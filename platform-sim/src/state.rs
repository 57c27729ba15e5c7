//! State shared by the HTTP handlers, the WebSocket sessions and the
//! library handle: counters as atomics (cheap under load), registered
//! devices and open sessions behind mutexes, pending command waiters keyed
//! by task id, the bounded ring of recent events, and the fault switches.
//!
//! It outlives a stop/restart of the listener, so counters and devices
//! survive a `pause`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::SimConfig,
    server::Lifecycle,
    wire::{Device, Message},
};

/// Declares the atomic counters and their plain snapshot from one list, so
/// the two can never drift apart.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, bumped with relaxed atomics.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A copy of every counter at one moment (fields are read one by
        /// one, so under load they are not an atomic cut).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct CounterSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }

            pub(crate) fn reset(&self) {
                $(self.$name.store(0, Ordering::Relaxed);)*
            }
        }
    };
}

counters! {
    /// Lookup requests answered 200.
    lookups,
    /// Lookup requests answered with an injected failure status.
    lookups_failed,
    /// Registration requests answered 200.
    registrations,
    /// Devices registered by those requests.
    devices_registered,
    /// Registration requests refused (401, 400 or an injected status).
    registrations_failed,
    /// Unregistrations answered 200.
    unregistrations,
    /// Unregistrations answered 404 (device not registered).
    unregistrations_unknown,
    /// Unregistrations refused (401, 400 or an injected status).
    unregistrations_failed,
    /// WebSocket handshakes accepted.
    sessions_opened,
    /// Sessions whose credentials frame was accepted.
    sessions_authenticated,
    /// Sessions closed with 1008 (bad or refused credentials, time-out).
    sessions_refused,
    /// Sessions ended, for any reason.
    sessions_closed,
    /// Credentials frames received (accepted or not).
    credentials,
    /// Text frames received after the credentials frame.
    text,
    /// Binary frames received (each is also a bad frame).
    binary,
    /// `response:` frames.
    responses,
    /// `response:` frames whose task id had a waiter.
    responses_matched,
    /// `change:` frames.
    changes,
    /// `update` frames.
    updates,
    /// Pings received.
    pings,
    /// Pongs received.
    pongs,
    /// Close frames received.
    close_frames,
    /// Frames that could not be understood: unknown text, bad JSON, binary,
    /// protocol errors.
    bad_frames,
    /// Command frames sent (one per session reached).
    commands_sent,
    /// Of those, the ones still queued when their session ended, so never
    /// written: a platform loses them with the session.
    commands_unsent,
    /// Raw frames sent by the fault API (one per session reached).
    raw_frames_sent,
    /// Sessions dropped by the fault API.
    sessions_dropped,
    /// Events pushed out of the full ring.
    events_evicted,
}

/// What kind of connector frame an [`Event`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A `change:` frame.
    Change,
    /// A `response:` frame.
    Response,
}

/// One recorded connector message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing number, unique per simulator; `since` filters on it.
    pub seq: u64,
    /// Frame kind.
    pub kind: EventKind,
    /// The session it came in on.
    pub session_id: u64,
    /// When it arrived, Unix milliseconds.
    pub received_at_ms: u64,
    /// The parsed message (`device_id`, `endpoint`, `header`, `body`, `time`...).
    #[serde(flatten)]
    pub message: Message,
}

/// Which events to return; every filter is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only this device.
    pub device: Option<String>,
    /// Only this kind.
    pub kind: Option<EventKind>,
    /// Only events with `seq` greater than this; then the *oldest* `limit`
    /// matching events are returned, so a follower pages forward with no gap.
    pub since: Option<u64>,
    /// At most this many (default 100). Without `since`, the newest ones.
    pub limit: Option<usize>,
}

/// Default number of events one query returns.
pub const DEFAULT_EVENT_LIMIT: usize = 100;

/// One open WebSocket session, as listed by the control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Simulator-wide session number.
    pub id: u64,
    /// The connector's address.
    pub peer: Option<SocketAddr>,
    /// When the handshake happened, Unix milliseconds.
    pub opened_at_ms: u64,
    /// Whether the credentials frame was accepted.
    pub authenticated: bool,
    /// The user it presented (empty before the credentials frame).
    pub user: String,
}

/// What the control side asks a session task to do.
#[derive(Debug)]
pub(crate) enum SessionCmd {
    Text(String),
    /// A command frame; `timed` holds its task id when its round trip is
    /// timed (see [`RoundTrips`]).
    Command {
        frame: String,
        timed: Option<String>,
    },
    Binary(bytes::Bytes),
    Close {
        code: u16,
        reason: String,
    },
    Reset,
}

pub(crate) struct SessionEntry {
    pub(crate) info: SessionInfo,
    pub(crate) tx: mpsc::UnboundedSender<SessionCmd>,
}

/// The answer a command waiter receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// Task id of the command (and of the response).
    pub task_id: String,
    /// The response message, parsed.
    pub message: Message,
    /// The response's JSON object exactly as the connector sent it.
    pub raw: serde_json::Value,
}

/// Command round trips timed on the simulator's side of the wire, for
/// latency benchmarks: from a session handing the command frame to its
/// socket to the same session reading the `response:` with its task id. Off
/// by default; a driver's own scheduling is not in these figures.
#[derive(Default)]
pub(crate) struct RoundTrips {
    on: AtomicBool,
    log: Mutex<RoundTripLog>,
}

const ROUND_TRIPS_RESERVED: usize = 1 << 21;
const ROUND_TRIPS_IN_FLIGHT: usize = 1 << 14;

#[derive(Default)]
struct RoundTripLog {
    written: HashMap<String, Instant>,
    samples: Vec<Duration>,
}

impl RoundTrips {
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Turns timing on or off; either way earlier samples are dropped.
    pub(crate) fn switch(&self, on: bool) {
        let mut log = lock(&self.log);
        log.written = HashMap::new();
        log.samples = Vec::new();
        if on {
            // Room for a few seconds at full speed up front: growing the
            // log mid-run copies it, a stall that would show in the figures.
            log.written.reserve(ROUND_TRIPS_IN_FLIGHT);
            log.samples.reserve(ROUND_TRIPS_RESERVED);
        }
        self.on.store(on, Ordering::Relaxed);
    }

    pub(crate) fn written(&self, task_id: String) {
        lock(&self.log).written.insert(task_id, Instant::now());
    }

    pub(crate) fn answered(&self, task_id: &str) {
        let now = Instant::now();
        let mut log = lock(&self.log);
        if let Some(written) = log.written.remove(task_id) {
            log.samples.push(now - written);
        }
    }

    /// The round trips completed so far, in completion order; the log is emptied.
    pub(crate) fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut lock(&self.log).samples)
    }
}

/// "Answer the next `remaining` requests with `status`".
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FailPlan {
    status: u16,
    remaining: u32,
}

/// Fault switches; read on every request or session, so kept cheap.
#[derive(Debug)]
pub(crate) struct Faults {
    pub(crate) refuse_credentials: AtomicBool,
    pub(crate) ignore_pings: AtomicBool,
    registration: Mutex<FailPlan>,
    lookup: Mutex<FailPlan>,
}

impl Faults {
    fn new() -> Self {
        Faults {
            refuse_credentials: AtomicBool::new(false),
            ignore_pings: AtomicBool::new(false),
            registration: Mutex::new(FailPlan::default()),
            lookup: Mutex::new(FailPlan::default()),
        }
    }

    pub(crate) fn set_registration(&self, status: u16, times: u32) {
        *lock(&self.registration) = FailPlan {
            status,
            remaining: times,
        };
    }

    pub(crate) fn set_lookup(&self, status: u16, times: u32) {
        *lock(&self.lookup) = FailPlan {
            status,
            remaining: times,
        };
    }

    /// The injected status for this registration request, if one is due.
    pub(crate) fn take_registration(&self) -> Option<u16> {
        take(&self.registration)
    }

    /// The injected status for this lookup request, if one is due.
    pub(crate) fn take_lookup(&self) -> Option<u16> {
        take(&self.lookup)
    }

    fn clear(&self) {
        self.refuse_credentials.store(false, Ordering::Relaxed);
        self.ignore_pings.store(false, Ordering::Relaxed);
        self.set_registration(0, 0);
        self.set_lookup(0, 0);
    }
}

fn take(plan: &Mutex<FailPlan>) -> Option<u16> {
    let mut plan = lock(plan);
    if plan.remaining == 0 {
        return None;
    }
    plan.remaining -= 1;
    Some(plan.status)
}

/// A poisoned lock only means another handler panicked mid-update; the data
/// here stays usable, and the simulator must keep answering.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix time in whole seconds (PROTOCOL.md section 5).
pub(crate) fn now_secs() -> u64 {
    now_ms() / 1000
}

struct EventRing {
    events: VecDeque<Event>,
    next_seq: u64,
}

/// The state itself; one per simulator, behind an `Arc`.
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) counters: Counters,
    pub(crate) faults: Faults,
    pub(crate) round_trips: RoundTrips,
    devices: Mutex<BTreeMap<String, Device>>,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    waiters: Mutex<HashMap<String, oneshot::Sender<CommandResponse>>>,
    events: Mutex<EventRing>,
    next_session: AtomicU64,
    next_task: AtomicU64,
    /// Distinguishes task ids of two simulators started in one test run.
    task_prefix: String,
    pub(crate) local_addr: SocketAddr,
    /// Where stop/restart requests go (the supervisor in `server`).
    pub(crate) lifecycle: mpsc::UnboundedSender<Lifecycle>,
}

impl Shared {
    pub(crate) fn new(config: SimConfig, local_addr: SocketAddr, lifecycle: mpsc::UnboundedSender<Lifecycle>) -> Self {
        let capacity = config.event_capacity.min(4096);
        Shared {
            config,
            counters: Counters::default(),
            faults: Faults::new(),
            round_trips: RoundTrips::default(),
            devices: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            events: Mutex::new(EventRing {
                events: VecDeque::with_capacity(capacity),
                next_seq: 1,
            }),
            next_session: AtomicU64::new(1),
            next_task: AtomicU64::new(1),
            task_prefix: format!("sim-{:x}", now_ms() ^ u64::from(local_addr.port())),
            local_addr,
            lifecycle,
        }
    }

    pub(crate) fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    // ---- devices ----

    pub(crate) fn register(&self, devices: Vec<Device>) -> usize {
        let mut map = lock(&self.devices);
        let n = devices.len();
        for device in devices {
            map.insert(device.id.clone(), device);
        }
        n
    }

    pub(crate) fn unregister(&self, id: &str) -> bool {
        lock(&self.devices).remove(id).is_some()
    }

    pub(crate) fn devices(&self) -> Vec<Device> {
        lock(&self.devices).values().cloned().collect()
    }

    pub(crate) fn is_registered(&self, id: &str) -> bool {
        lock(&self.devices).contains_key(id)
    }

    // ---- sessions ----

    pub(crate) fn open_session(&self, peer: Option<SocketAddr>) -> (u64, mpsc::UnboundedReceiver<SessionCmd>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let info = SessionInfo {
            id,
            peer,
            opened_at_ms: now_ms(),
            authenticated: false,
            user: String::new(),
        };
        lock(&self.sessions).insert(id, SessionEntry { info, tx });
        self.bump(&self.counters.sessions_opened);
        (id, rx)
    }

    pub(crate) fn authenticate(&self, id: u64, user: &str) {
        if let Some(entry) = lock(&self.sessions).get_mut(&id) {
            entry.info.authenticated = true;
            entry.info.user = user.to_owned();
        }
        self.bump(&self.counters.sessions_authenticated);
    }

    pub(crate) fn close_session(&self, id: u64) {
        lock(&self.sessions).remove(&id);
        self.bump(&self.counters.sessions_closed);
    }

    pub(crate) fn sessions(&self) -> Vec<SessionInfo> {
        let mut list: Vec<_> = lock(&self.sessions).values().map(|e| e.info.clone()).collect();
        list.sort_by_key(|s| s.id);
        list
    }

    /// Sends one command per authenticated session (built by `make`);
    /// returns how many were reached.
    pub(crate) fn broadcast(&self, make: impl Fn() -> SessionCmd) -> usize {
        lock(&self.sessions)
            .values()
            .filter(|e| e.info.authenticated)
            .filter(|e| e.tx.send(make()).is_ok())
            .count()
    }

    /// Sends one command per open session, authenticated or not.
    pub(crate) fn broadcast_all(&self, make: impl Fn() -> SessionCmd) -> usize {
        lock(&self.sessions)
            .values()
            .filter(|e| e.tx.send(make()).is_ok())
            .count()
    }

    // ---- commands ----

    pub(crate) fn next_task_id(&self) -> String {
        let n = self.next_task.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.task_prefix)
    }

    pub(crate) fn add_waiter(&self, task_id: &str) -> oneshot::Receiver<CommandResponse> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(task_id.to_owned(), tx);
        rx
    }

    pub(crate) fn remove_waiter(&self, task_id: &str) {
        lock(&self.waiters).remove(task_id);
    }

    /// Hands a response to its waiter; `true` when there was one.
    pub(crate) fn deliver(&self, response: CommandResponse) -> bool {
        let waiter = lock(&self.waiters).remove(&response.task_id);
        match waiter {
            Some(tx) => tx.send(response).is_ok(),
            None => false,
        }
    }

    // ---- events ----

    pub(crate) fn record(&self, kind: EventKind, session_id: u64, message: Message) {
        let mut ring = lock(&self.events);
        let seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.events.len() >= self.config.event_capacity {
            ring.events.pop_front();
            self.bump(&self.counters.events_evicted);
        }
        ring.events.push_back(Event {
            seq,
            kind,
            session_id,
            received_at_ms: now_ms(),
            message,
        });
    }

    pub(crate) fn events(&self, filter: &EventFilter) -> Vec<Event> {
        let limit = filter.limit.unwrap_or(DEFAULT_EVENT_LIMIT);
        let ring = lock(&self.events);
        let matches = |e: &&Event| {
            filter.device.as_ref().is_none_or(|d| &e.message.device_id == d)
                && filter.kind.is_none_or(|k| e.kind == k)
                && filter.since.is_none_or(|s| e.seq > s)
        };
        if filter.since.is_some() {
            ring.events.iter().filter(matches).take(limit).cloned().collect()
        } else {
            let mut newest: Vec<Event> = ring.events.iter().rev().filter(matches).take(limit).cloned().collect();
            newest.reverse();
            newest
        }
    }

    /// Clears events, counters and fault switches; devices and sessions,
    /// being live state, stay.
    pub(crate) fn reset(&self) {
        lock(&self.events).events.clear();
        self.counters.reset();
        self.faults.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(capacity: usize) -> Shared {
        let config = SimConfig {
            event_capacity: capacity,
            ..SimConfig::default()
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        Shared::new(config, "127.0.0.1:1".parse().unwrap(), tx)
    }

    fn change(device: &str) -> Message {
        Message {
            device_id: device.into(),
            ..Message::default()
        }
    }

    #[test]
    fn ring_keeps_the_newest_events_and_counts_evictions() {
        let s = shared(3);
        for i in 0..5 {
            s.record(EventKind::Change, 1, change(&format!("d{i}")));
        }
        let seqs: Vec<u64> = s.events(&EventFilter::default()).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(s.counters.snapshot().events_evicted, 2);
    }

    #[test]
    fn event_filter_by_device_since_and_limit() {
        let s = shared(100);
        for i in 0..10 {
            s.record(EventKind::Change, 1, change(if i % 2 == 0 { "a" } else { "b" }));
        }
        let only_a = s.events(&EventFilter {
            device: Some("a".into()),
            ..EventFilter::default()
        });
        assert_eq!(only_a.len(), 5);
        assert!(only_a.iter().all(|e| e.message.device_id == "a"));

        let newest_two = s.events(&EventFilter {
            limit: Some(2),
            ..EventFilter::default()
        });
        assert_eq!(newest_two.iter().map(|e| e.seq).collect::<Vec<_>>(), [9, 10]);

        let after_four = s.events(&EventFilter {
            since: Some(4),
            limit: Some(2),
            ..EventFilter::default()
        });
        assert_eq!(after_four.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn fail_plan_runs_out() {
        let s = shared(1);
        s.faults.set_lookup(503, 2);
        assert_eq!(s.faults.take_lookup(), Some(503));
        assert_eq!(s.faults.take_lookup(), Some(503));
        assert_eq!(s.faults.take_lookup(), None);
    }

    #[test]
    fn reset_clears_counters_events_and_faults_but_keeps_devices() {
        let s = shared(10);
        s.register(vec![Device {
            id: "d".into(),
            ..Device::default()
        }]);
        s.record(EventKind::Change, 1, change("d"));
        s.bump(&s.counters.changes);
        s.faults.set_registration(500, 3);
        s.reset();
        assert!(s.events(&EventFilter::default()).is_empty());
        assert_eq!(s.counters.snapshot(), CounterSnapshot::default());
        assert_eq!(s.faults.take_registration(), None);
        assert_eq!(s.devices().len(), 1);
    }
}
