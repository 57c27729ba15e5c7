//! Lifecycle events, the runtime's replacement for the seed's `con_callbck` /
//! `discon_callbck`, and the counters every part of the runtime bumps.
//!
//! Events go out on a broadcast channel: any number of subscribers, and one
//! that falls behind loses the oldest events (it is told how many) instead of
//! ever blocking the runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it starts losing them.
const CHANNEL_CAPACITY: usize = 1024;

/// Something that happened to the link or to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// A session is up: looked up, connected, credentials accepted.
    Connected {
        url: String,
    },
    /// The session ended or a connection attempt failed; a retry follows.
    Disconnected {
        reason: String,
    },
    /// The platform refused the credentials (socket close 1008 or HTTP 401/403).
    CredentialsRefused {
        context: String,
    },
    RegistrationSucceeded {
        devices: Vec<String>,
    },
    RegistrationFailed {
        devices: Vec<String>,
        reason: String,
    },
    UnregistrationSucceeded {
        device: String,
    },
    UnregistrationFailed {
        device: String,
        reason: String,
    },
    DeviceStarted {
        device: String,
    },
    DeviceStopped {
        device: String,
    },
    /// The device's plugin failed and is being created anew.
    DeviceRestarted {
        device: String,
        reason: String,
        /// Restarts within the current window, this one included (1 to
        /// `device::MAX_RESTARTS`).
        attempt: usize,
        /// How long until the new instance starts (the back-off).
        delay: std::time::Duration,
    },
    /// The device failed too often and was stopped for good.
    DeviceFailed {
        device: String,
        reason: String,
    },
    /// The outgoing buffer gave up frames to stay within its bound.
    MessagesDropped {
        count: u64,
        reason: String,
    },
}

/// Counters shared by every part of the runtime; cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct Stats {
    pub frames_sent_response: AtomicU64,
    pub frames_sent_change: AtomicU64,
    pub frames_sent_update: AtomicU64,
    pub commands_received: AtomicU64,
    pub bad_frames: AtomicU64,
    pub unknown_device_commands: AtomicU64,
    /// Commands refused because their device's mailbox was full (see
    /// `device::MAILBOX_CAPACITY`); each was answered with an error.
    pub commands_refused: AtomicU64,
    /// The most commands any one device had waiting at once: never above
    /// the mailbox capacity.
    pub mailbox_peak: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub sessions: AtomicU64,
    pub connect_failures: AtomicU64,
    pub registration_failures: AtomicU64,
    pub plugin_errors: AtomicU64,
    pub device_restarts: AtomicU64,
    /// Commands a device did not answer within its `command_timeout_ms`;
    /// each got the platform an error reply.
    pub command_timeouts: AtomicU64,
    /// Answers that came after their command's deadline, dropped.
    pub late_replies: AtomicU64,
    /// Whether a session is up (handshake done, not yet lost or closing):
    /// a state, not a counter, for health checks and the `session_up` metric.
    pub session_up: AtomicBool,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records whether a session is up; see [`Stats::session_up`].
    pub fn set_session_up(&self, up: bool) {
        self.session_up.store(up, Ordering::Relaxed);
    }

    /// Whether a session is up.
    pub fn is_session_up(&self) -> bool {
        self.session_up.load(Ordering::Relaxed)
    }
}

/// Where lifecycle events are published, and the shared [`Stats`].
#[derive(Debug, Clone)]
pub struct Events {
    sender: broadcast::Sender<Lifecycle>,
    pub stats: Arc<Stats>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        Events {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            stats: Arc::default(),
        }
    }

    /// Publishes an event; with no subscriber it simply goes nowhere.
    pub fn publish(&self, event: Lifecycle) {
        let _ = self.sender.send(event);
    }

    /// A new subscriber sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Lifecycle> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_subscriber_loses_old_events_but_never_blocks_the_publisher() {
        let events = Events::new();
        let mut slow = events.subscribe();
        for i in 0..(CHANNEL_CAPACITY + 10) {
            events.publish(Lifecycle::DeviceStarted { device: i.to_string() });
        }
        assert_eq!(slow.try_recv(), Err(broadcast::error::TryRecvError::Lagged(10)));
        assert_eq!(
            slow.try_recv().unwrap(),
            Lifecycle::DeviceStarted { device: "10".into() }
        );
    }
}
