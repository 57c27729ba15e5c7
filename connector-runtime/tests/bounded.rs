//! Bounded memory through a long outage (issue 7, item 2): devices keep
//! producing while the platform is unreachable, the buffer never holds more
//! than its bound (by count or by bytes), the overflow policy decides what
//! is kept, and every burst of drops is counted, logged once and published
//! once as `Lifecycle::MessagesDropped`.

mod util;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_core::codec;
use connector_core::config::Overflow;
use connector_core::Message;
use connector_runtime::{Connector, Lifecycle, SendError};
use platform_sim::{DropMode, SimConfig, SimHandle};
use tokio::sync::broadcast;
use util::*;

/// The log lines written on this thread while a capture is on.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Routes this thread's log (the test's, and with `actix_rt::test` the
    /// runtime's actors too) into the capture until the guard is dropped.
    fn start(&self) -> tracing::subscriber::DefaultGuard {
        let capture = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || capture.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
    }
}

const FULL_WARNING: &str = "outgoing buffer full";
/// How many frames the bound keeps, whichever way it is set.
const KEEP: u32 = 50;
/// How many events each outage produces: four times the bound.
const PRODUCED: u32 = 200;

#[derive(Debug, Clone, Copy)]
enum Bound {
    Frames,
    Bytes,
}

/// Event bodies of one width, so every frame costs the same bytes.
fn body(n: u32) -> String {
    format!("{n:05}")
}

fn event(n: u32) -> Message {
    Message::event("lamp-1", "level", body(n))
}

/// `max_frames` and `max_bytes` that keep exactly [`KEEP`] frames, bound by
/// `bound` with the other limit far away.
fn limits(bound: Bound) -> (usize, usize) {
    let frame = codec::encode_message(&event(0), connector_runtime::device::unix_now()).len();
    match bound {
        Bound::Frames => (KEEP as usize, 1 << 30),
        // Room for KEEP frames and not one more.
        Bound::Bytes => (1_000_000, KEEP as usize * frame + frame / 2),
    }
}

async fn link_down(sim: &SimHandle, events: &mut broadcast::Receiver<Lifecycle>) {
    sim.fail_lookups(503, u32::MAX).await;
    assert_eq!(sim.drop_sessions(DropMode::close()).await, 1);
    wait_event(events, "the link down", |e| matches!(e, Lifecycle::Disconnected { .. })).await;
}

async fn link_up(sim: &SimHandle, events: &mut broadcast::Receiver<Lifecycle>) {
    sim.fail_lookups(503, 0).await;
    wait_event(events, "connected again", |e| matches!(e, Lifecycle::Connected { .. })).await;
}

/// Sends `numbers` while the link is down, checking the bound after each;
/// returns how many `send` refused.
fn produce(connector: &Connector, numbers: std::ops::Range<u32>, max: (usize, usize)) -> u32 {
    let mut refused = 0;
    for n in numbers {
        match connector.send(event(n)) {
            Ok(()) => {}
            Err(SendError::BufferFull) => refused += 1,
        }
        let (frames, bytes) = connector.buffered();
        assert!(
            frames <= max.0 && bytes <= max.1,
            "after {n}: {frames} frames, {bytes} bytes"
        );
    }
    refused
}

/// The `MessagesDropped` events published so far, as their counts.
fn drop_events(events: &mut broadcast::Receiver<Lifecycle>) -> Vec<u64> {
    let mut counts = Vec::new();
    loop {
        match events.try_recv() {
            Ok(Lifecycle::MessagesDropped { count, .. }) => counts.push(count),
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return counts,
        }
    }
}

/// Two outages, each producing four times the bound: what arrives is what
/// the policy kept, drops are counted exactly, and each burst is logged and
/// published once.
async fn an_outage_overflows_the_buffer_within_its_bound(policy: Overflow, bound: Bound) {
    let sim = simulator_with(SimConfig {
        event_capacity: 100_000,
        ..SimConfig::default()
    })
    .await;
    let capture = Capture::default();
    let _log = capture.start();
    let max = limits(bound);
    let config = config_with(
        &sim,
        &format!(
            "  buffer: {{ max_frames: {}, max_bytes: {}, overflow: {policy} }}\n",
            max.0, max.1
        ),
        ECHO_DEVICES,
    );
    let connector = connected(&sim, config).await;
    barrier(&sim, "lamp-1").await;
    let mut events = connector.subscribe();
    let mut expected = Vec::new();
    let mut dropped = 0;

    for outage in 0..2 {
        let first = outage * PRODUCED;
        link_down(&sim, &mut events).await;
        let refused = produce(&connector, first..first + PRODUCED, max);
        assert_eq!(
            connector.buffered().0,
            KEEP as usize,
            "outage {outage}: full to the bound"
        );
        let kept = match policy {
            Overflow::DropOldest => {
                assert_eq!(refused, 0, "drop_oldest accepts every new event");
                first + PRODUCED - KEEP..first + PRODUCED
            }
            Overflow::DropNewest => {
                assert_eq!(refused, PRODUCED - KEEP, "drop_newest refuses what does not fit");
                first..first + KEEP
            }
        };
        expected.extend(kept.map(body));
        dropped += u64::from(PRODUCED - KEEP);
        assert_eq!(connector.stats().frames_dropped.load(Ordering::Relaxed), dropped);
        // One event per burst, carrying the running total when it started.
        let first_drop = dropped - u64::from(PRODUCED - KEEP) + 1;
        assert_eq!(drop_events(&mut events), [first_drop], "outage {outage}");
        assert_eq!(
            capture.count(FULL_WARNING),
            outage as usize + 1,
            "one warning per burst"
        );

        link_up(&sim, &mut events).await;
        barrier(&sim, "lamp-1").await;
        assert_eq!(event_bodies(&sim, "lamp-1").await, expected, "outage {outage}");
        assert_eq!(connector.buffered(), (0, 0));
    }
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn drop_oldest_bound_by_count_keeps_the_newest_frames() {
    an_outage_overflows_the_buffer_within_its_bound(Overflow::DropOldest, Bound::Frames).await;
}

#[actix_rt::test]
async fn drop_newest_bound_by_count_keeps_the_first_frames() {
    an_outage_overflows_the_buffer_within_its_bound(Overflow::DropNewest, Bound::Frames).await;
}

#[actix_rt::test]
async fn drop_oldest_bound_by_bytes_keeps_the_newest_frames() {
    an_outage_overflows_the_buffer_within_its_bound(Overflow::DropOldest, Bound::Bytes).await;
}

#[actix_rt::test]
async fn drop_newest_bound_by_bytes_keeps_the_first_frames() {
    an_outage_overflows_the_buffer_within_its_bound(Overflow::DropNewest, Bound::Bytes).await;
}
