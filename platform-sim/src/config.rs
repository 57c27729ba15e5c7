//! The simulator's configuration: plain data with every default in one
//! place ([`SimConfig::default`]), checked by [`SimConfig::validate`] before
//! anything starts.

use std::{fmt, net::SocketAddr, time::Duration};

use crate::{tls::TlsConfig, SimError};

/// Default listen address: loopback, port chosen by the OS.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";
/// Default registration path (PROTOCOL.md section 1).
pub const DEFAULT_REGISTRATION_PATH: &str = "discovery";
/// Default lookup path.
pub const DEFAULT_LOOKUP_PATH: &str = "lookup";
/// Default size of the ring of recorded events.
pub const DEFAULT_EVENT_CAPACITY: usize = 10_000;
/// Default largest accepted WebSocket frame (and aggregated message).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1024 * 1024;
/// Default time a new socket has to send its credentials frame.
pub const DEFAULT_CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a simulator needs to start. `Debug` never shows the password.
#[derive(Clone)]
pub struct SimConfig {
    /// Where to listen; port 0 lets the OS choose (see `SimHandle::local_addr`).
    pub listen: SocketAddr,
    /// The user a connector must present (seed default: empty).
    pub user: String,
    /// The password a connector must present (seed default: empty).
    pub password: String,
    /// HTTP path for device (un)registration, without slashes.
    pub registration_path: String,
    /// HTTP path of the lookup endpoint, without slashes.
    pub lookup_path: String,
    /// `true`: parse `change:` frames and keep them in the event ring.
    /// `false` (counting-only): count them by prefix, parse nothing.
    /// `response:` frames are always parsed, since command waiters need them.
    pub record_events: bool,
    /// How many recent events the ring keeps; the oldest go first.
    pub event_capacity: usize,
    /// Largest frame accepted from a connector; a bigger one closes the
    /// session with code 1009, as the frame cannot be skipped.
    pub max_frame_size: usize,
    /// How long a new socket may take to send its credentials frame.
    pub credentials_timeout: Duration,
    /// Serve `https://` and `wss://` with this certificate instead of plain
    /// HTTP (see [`crate::tls`]). Default: none, plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: DEFAULT_LISTEN.parse().expect("constant address parses"),
            user: String::new(),
            password: String::new(),
            registration_path: DEFAULT_REGISTRATION_PATH.to_owned(),
            lookup_path: DEFAULT_LOOKUP_PATH.to_owned(),
            record_events: true,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            credentials_timeout: DEFAULT_CREDENTIALS_TIMEOUT,
            tls: None,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("listen", &self.listen)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("registration_path", &self.registration_path)
            .field("lookup_path", &self.lookup_path)
            .field("record_events", &self.record_events)
            .field("event_capacity", &self.event_capacity)
            .field("max_frame_size", &self.max_frame_size)
            .field("credentials_timeout", &self.credentials_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Paths the simulator serves itself; a configured path may not take them.
const RESERVED_PATHS: [&str; 2] = ["ws", "control"];

impl SimConfig {
    /// Checks the whole configuration and reports every problem at once.
    /// Leading and trailing slashes of the paths are tolerated and trimmed.
    pub fn validate(mut self) -> Result<SimConfig, SimError> {
        self.registration_path = self.registration_path.trim_matches('/').to_owned();
        self.lookup_path = self.lookup_path.trim_matches('/').to_owned();
        let mut problems = Vec::new();
        for (name, path) in [
            ("registration_path", &self.registration_path),
            ("lookup_path", &self.lookup_path),
        ] {
            if path.is_empty() {
                problems.push(format!("{name} is empty"));
            } else if path.contains('/') || path.contains(['{', '}', '?', '#', ' ']) {
                problems.push(format!("{name} {path:?} must be one plain path segment"));
            } else if RESERVED_PATHS.contains(&path.as_str()) {
                problems.push(format!("{name} {path:?} is reserved by the simulator"));
            }
        }
        if self.registration_path == self.lookup_path && !self.lookup_path.is_empty() {
            problems.push("registration_path and lookup_path are the same".to_owned());
        }
        if self.event_capacity == 0 {
            problems.push("event_capacity must be at least 1".to_owned());
        }
        if self.max_frame_size < 64 {
            problems.push("max_frame_size must be at least 64 bytes".to_owned());
        }
        if let Some(Err(problem)) = self.tls.as_ref().map(TlsConfig::server_config) {
            problems.push(problem);
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(SimError::Config(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        let config = SimConfig::default().validate().unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.registration_path, "discovery");
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let config = SimConfig {
            registration_path: "ws".into(),
            lookup_path: "a/b".into(),
            event_capacity: 0,
            ..SimConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("reserved"), "{err}");
        assert!(err.contains("one plain path segment"), "{err}");
        assert!(err.contains("event_capacity"), "{err}");
    }

    #[test]
    fn validate_trims_slashes() {
        let config = SimConfig {
            registration_path: "/devices/".into(),
            ..SimConfig::default()
        };
        assert_eq!(config.validate().unwrap().registration_path, "devices");
    }

    #[test]
    fn debug_hides_the_password() {
        let config = SimConfig {
            password: "hunter2".into(),
            ..SimConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
