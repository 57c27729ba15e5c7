//! Scenario `outage`: a steady stream of numbered events from one device
//! while the platform stops listening and drops its connections, and comes
//! back after a pause. Measures the time from the platform being back to the
//! first event it receives, and which numbers never arrived (the events
//! accepted while the link was down must all arrive).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_runtime::{Connector, Lifecycle};

use crate::harness::{self, counters};
use crate::pump::{self, Pump};

#[derive(Debug, Clone, serde::Serialize)]
pub struct OutageResult {
    pub rate_per_s: f64,
    pub outage_ms: f64,
    /// Platform listening again -> first event received.
    pub back_to_first_event_ms: f64,
    /// Link down (`Disconnected`) -> link up (`Connected`) as the runtime saw it.
    pub down_to_connected_ms: f64,
    pub emitted: u64,
    pub received_distinct: u64,
    pub duplicates: u64,
    /// Numbers that never arrived.
    pub lost: u64,
    /// Of those, accepted while the link was down (must be 0).
    pub lost_accepted_while_down: u64,
    pub accepted_while_down: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rate: f64,
    pub before: Duration,
    pub outage: Duration,
    pub after: Duration,
}

impl Plan {
    pub fn scaled(smoke: bool) -> Plan {
        if smoke {
            Plan {
                rate: 2_000.0,
                before: Duration::from_millis(200),
                outage: Duration::from_millis(300),
                after: Duration::from_millis(300),
            }
        } else {
            Plan {
                rate: 20_000.0,
                before: Duration::from_secs(1),
                outage: Duration::from_secs(2),
                after: Duration::from_secs(1),
            }
        }
    }
}

/// When the link went down and came back, with the pump's count then.
#[derive(Default)]
struct Marks {
    down: Option<(Instant, u64)>,
    up: Option<(Instant, u64)>,
}

pub fn run(plan: Plan) -> OutageResult {
    let sim = harness::simulator(true);
    let received: pump::Received = {
        let sim = sim.clone();
        Arc::new(move || counters(&sim).changes)
    };
    let pump = Pump::new(received, u64::MAX);
    let config = harness::config(sim.lookup_url(), harness::devices(1, "o", pump::PLUGIN));
    actix_rt::System::new().block_on(async {
        let connector = Connector::builder(config)
            .plugin(pump::PLUGIN, pump.factory())
            .start()
            .await
            .expect("the connector starts");
        harness::wait_async(&sim, Duration::from_millis(5), |c| c.devices_registered >= 1)
            .await
            .expect("device registered");
        while pump.devices() < 1 {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        let mut lifecycle = connector.subscribe();
        let threads = pump.start(1, Some(plan.rate));
        actix_rt::time::sleep(plan.before).await;

        // The runtime's view of the link, recorded as it happens.
        let marks: Rc<RefCell<Marks>> = Rc::default();
        let watcher = {
            let (marks, pump) = (marks.clone(), pump.clone());
            actix_rt::spawn(async move {
                loop {
                    let event = match lifecycle.recv().await {
                        Ok(event) => event,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    };
                    let mut m = marks.borrow_mut();
                    match event {
                        Lifecycle::Disconnected { .. } if m.down.is_none() => {
                            m.down = Some((Instant::now(), pump.emitted()));
                        }
                        Lifecycle::Connected { .. } if m.down.is_some() && m.up.is_none() => {
                            m.up = Some((Instant::now(), pump.emitted()));
                            return;
                        }
                        _ => {}
                    }
                }
            })
        };
        sim.stop_listening().await.expect("the simulator stops listening");
        let stopped = Instant::now();
        actix_rt::time::sleep(plan.outage).await;
        let outage_ms = stopped.elapsed().as_secs_f64() * 1e3;
        sim.start_listening().await.expect("the simulator listens again");
        let back = Instant::now();
        let changes_at_back = counters(&sim).changes;
        let first = harness::wait_async(&sim, Duration::from_micros(500), |c| c.changes > changes_at_back)
            .await
            .expect("events flow again");
        let _ = watcher.await;
        let (down_at, seq_down) = marks.borrow().down.expect("the runtime saw the link go down");
        let (up_at, seq_up) = marks.borrow().up.expect("the runtime saw the link come back");
        actix_rt::time::sleep(plan.after).await;
        pump.stop(threads);
        let emitted = pump.emitted();
        // Until everything arrived, or nothing more arrives for 300 ms (frames
        // lost with the reset never will), and a little longer for duplicates.
        let mut last = (counters(&sim).changes, Instant::now());
        while last.0 < emitted && last.1.elapsed() < Duration::from_millis(300) {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
            let now = counters(&sim).changes;
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        let events = sim.events().await;
        let mut seen = HashSet::with_capacity(events.len());
        let mut duplicates = 0;
        for event in &events {
            if let Ok(seq) = event.message.body.parse::<u64>() {
                if !seen.insert(seq) {
                    duplicates += 1;
                }
            }
        }
        let lost = (0..emitted).filter(|s| !seen.contains(s)).count() as u64;
        let lost_while_down = (seq_down..seq_up).filter(|s| !seen.contains(s)).count() as u64;
        connector.shutdown(Duration::from_secs(1)).await;
        OutageResult {
            rate_per_s: plan.rate,
            outage_ms,
            back_to_first_event_ms: (first - back).as_secs_f64() * 1e3,
            down_to_connected_ms: (up_at - down_at).as_secs_f64() * 1e3,
            emitted,
            received_distinct: seen.len() as u64,
            duplicates,
            lost,
            lost_accepted_while_down: lost_while_down,
            accepted_while_down: seq_up - seq_down,
        }
    })
}
