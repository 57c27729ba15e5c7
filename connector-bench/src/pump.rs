//! The event source of the runtime side: a `blast` plugin whose devices hand
//! their [`EventSink`]s to one shared [`Pump`], and the pump's threads that
//! emit through them round-robin, as fast as the link takes them (or at a
//! fixed rate). Thousands of devices then need no thousand threads, and
//! each event still goes the way a plugin's event goes: sink, encode, outbox.
//!
//! Flow control: a thread waits while more than `window` emitted events are
//! not yet counted by the simulator, so the outgoing buffer never overflows
//! and nothing is dropped; the rate measured is what the link delivers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
use connector_core::Message;

/// Name of the plugin in the bench's configs.
pub const PLUGIN: &str = "blast";
/// Endpoint and body of every throughput event (also the raw baseline's).
pub const ENDPOINT: &str = "power";
pub const BODY: &str = "{'unit': 'kW', 'value': '1.43'}";

/// What the simulator has counted so far (its `changes` counter).
pub type Received = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Shared by every `blast` device of one connector.
pub struct Pump {
    sinks: Mutex<Vec<EventSink>>,
    emitted: AtomicU64,
    stop: AtomicBool,
    received: Received,
    window: u64,
}

impl Pump {
    pub fn new(received: Received, window: u64) -> Arc<Pump> {
        Arc::new(Pump {
            sinks: Mutex::new(Vec::new()),
            emitted: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            received,
            window,
        })
    }

    /// The `blast` plugin factory feeding this pump.
    pub fn factory(self: &Arc<Self>) -> impl Fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
        let pump = self.clone();
        move |_spec| Ok(Box::new(Blast { pump: pump.clone() }))
    }

    /// Devices started so far.
    pub fn devices(&self) -> usize {
        self.sinks.lock().unwrap().len()
    }

    /// Events handed to sinks so far (also the next sequence number).
    pub fn emitted(&self) -> u64 {
        self.emitted.load(Ordering::Relaxed)
    }

    /// Starts `threads` threads; each takes every `threads`-th device. With a
    /// `rate` (events per second for the whole pump, one thread only), each
    /// event's body is its sequence number; otherwise [`BODY`].
    pub fn start(self: &Arc<Self>, threads: usize, rate: Option<f64>) -> Vec<JoinHandle<()>> {
        let sinks = self.sinks.lock().unwrap().clone();
        let threads = threads.clamp(1, sinks.len().max(1));
        (0..threads)
            .map(|t| {
                let mine: Vec<EventSink> = sinks.iter().skip(t).step_by(threads).cloned().collect();
                let pump = self.clone();
                std::thread::Builder::new()
                    .name(format!("pump-{t}"))
                    .spawn(move || match rate {
                        None => pump.blast(&mine),
                        Some(rate) => pump.paced(&mine, rate),
                    })
                    .expect("pump thread starts")
            })
            .collect()
    }

    pub fn stop(&self, threads: Vec<JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
    }

    fn blast(&self, sinks: &[EventSink]) {
        if sinks.is_empty() {
            return;
        }
        let base = (self.received)().wrapping_sub(self.emitted());
        let mut i = 0;
        while !self.stop.load(Ordering::Relaxed) {
            // Flow control, checked once per 64 events.
            loop {
                let ahead = self.emitted().saturating_sub((self.received)().wrapping_sub(base));
                if ahead <= self.window || self.stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            for _ in 0..64 {
                let _ = sinks[i].emit(ENDPOINT, BODY);
                i = if i + 1 == sinks.len() { 0 } else { i + 1 };
            }
            self.emitted.fetch_add(64, Ordering::Relaxed);
        }
    }

    fn paced(&self, sinks: &[EventSink], rate: f64) {
        let start = Instant::now();
        let mut i = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while self.emitted() < due {
                let seq = self.emitted();
                let _ = sinks[i].send(Message::event("", "seq", seq.to_string()));
                self.emitted.store(seq + 1, Ordering::Relaxed);
                i = (i + 1) % sinks.len();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A device that does nothing but give its sink to the pump.
struct Blast {
    pump: Arc<Pump>,
}

impl DevicePlugin for Blast {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        self.pump.sinks.lock().unwrap().push(events);
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        Ok(Reply::body(command.payload.clone()))
    }
}
