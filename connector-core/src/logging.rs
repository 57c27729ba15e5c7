//! Logging set-up: the [`LogLevel`] and [`LogFormat`] a user writes
//! (`LOGLEVEL`, `log_level:`, `log_format:`) and one [`init_with`] that
//! installs a `tracing` subscriber writing to stderr.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// The seed's variable for the log level (PROTOCOL.md section 1).
pub const ENV_LOG_LEVEL: &str = "LOGLEVEL";

/// The Rust convention for per-module filters (`connector_runtime=debug,awc=warn`).
/// When set it replaces the level, so a developer can dig into one module.
pub const ENV_RUST_LOG: &str = "RUST_LOG";

/// How much the connector logs.
///
/// Parsed case-insensitively from the seed's names `debug`, `info`,
/// `warning`, `error`, `critical` (Python's levels; `critical` maps to
/// [`LogLevel::Error`] because `tracing` has nothing above error) plus
/// `warn` and `trace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warning,
    Error,
}

impl LogLevel {
    /// Every spelling [`LogLevel::from_str`] accepts, for error messages and help texts.
    pub const ACCEPTED: &'static [&'static str] = &["trace", "debug", "info", "warning", "warn", "error", "critical"];

    /// The canonical name, as the seed writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }

    /// The matching `tracing` level.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warning => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = ParseLogLevelError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "trace" => Ok(LogLevel::Trace),
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warning" | "warn" => Ok(LogLevel::Warning),
            "error" | "critical" => Ok(LogLevel::Error),
            _ => Err(ParseLogLevelError {
                value: value.to_owned(),
            }),
        }
    }
}

// A visitor rather than `String::deserialize` + parse: an error raised inside
// the visitor is placed at the value's line, column and key, one raised
// afterwards only at the enclosing mapping's.
impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LevelVisitor;

        impl Visitor<'_> for LevelVisitor {
            type Value = LogLevel;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a log level ({})", LogLevel::ACCEPTED.join(", "))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<LogLevel, E> {
                value.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(LevelVisitor)
    }
}

/// A log level name that is none of [`LogLevel::ACCEPTED`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown log level `{value}`, expected one of {}", LogLevel::ACCEPTED.join(", "))]
pub struct ParseLogLevelError {
    /// The text that did not parse.
    pub value: String,
}

/// How log lines are written.
///
/// Parsed case-insensitively from `text` and `json`, in `connector.yaml`
/// (`log_format:`) and on the command line (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable lines: time, level, target, message and fields.
    #[default]
    Text,
    /// One JSON object per line, for log collectors (journald, Loki, a
    /// container runtime): `timestamp`, `level`, `target`, and the event's
    /// `fields` with its `message` among them.
    Json,
}

impl LogFormat {
    /// Every spelling [`LogFormat::from_str`] accepts.
    pub const ACCEPTED: &'static [&'static str] = &["text", "json"];

    /// The name used in `connector.yaml` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = ParseLogFormatError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ParseLogFormatError {
                value: value.to_owned(),
            }),
        }
    }
}

// A visitor for the same reason as `LogLevel`'s: the error then names the
// value's line, column and key.
impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FormatVisitor;

        impl Visitor<'_> for FormatVisitor {
            type Value = LogFormat;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a log format ({})", LogFormat::ACCEPTED.join(", "))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<LogFormat, E> {
                value.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(FormatVisitor)
    }
}

/// A log format name that is none of [`LogFormat::ACCEPTED`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format `{value}`, expected one of {}", LogFormat::ACCEPTED.join(", "))]
pub struct ParseLogFormatError {
    /// The text that did not parse.
    pub value: String,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// A global subscriber was installed before (an earlier [`init`], or a
    /// test harness). The existing one stays in place and keeps working, so
    /// callers that may run twice can ignore this variant.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized,
    /// `RUST_LOG` is set but is not a valid filter.
    #[error("{ENV_RUST_LOG}: `{value}` is not a valid filter: {source}")]
    Filter {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// `LOGLEVEL` names no log level.
    #[error("{ENV_LOG_LEVEL}: {0}")]
    Level(#[from] ParseLogLevelError),
}

/// Installs the global subscriber: text lines on stderr at `level`.
///
/// A non-empty `RUST_LOG` replaces `level` (see [`ENV_RUST_LOG`]). Calling it
/// again returns [`LoggingError::AlreadyInitialized`] and changes nothing.
pub fn init(level: LogLevel) -> Result<(), LoggingError> {
    init_with(level, LogFormat::Text)
}

/// [`init`] with a chosen output format. Level and `RUST_LOG` filter as in
/// [`init`]; [`LogFormat::Json`] writes one object per line and never
/// colours, so every line parses.
pub fn init_with(level: LogLevel, format: LogFormat) -> Result<(), LoggingError> {
    let rust_log = std::env::var(ENV_RUST_LOG).ok();
    let filter = build_filter(level, rust_log.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching; log files stay plain.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInitialized)
}

/// The seed's way: reads `LOGLEVEL` (unset or empty means `info`), installs
/// the subscriber, and returns the level it used.
pub fn init_from_env() -> Result<LogLevel, LoggingError> {
    let level = level_from_env(|name| std::env::var(name).ok())?;
    init(level)?;
    Ok(level)
}

fn level_from_env(get: impl FnOnce(&str) -> Option<String>) -> Result<LogLevel, ParseLogLevelError> {
    match get(ENV_LOG_LEVEL) {
        Some(value) if !value.trim().is_empty() => value.parse(),
        _ => Ok(LogLevel::default()),
    }
}

fn build_filter(level: LogLevel, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    match rust_log {
        Some(value) if !value.trim().is_empty() => {
            EnvFilter::builder()
                .parse(value)
                .map_err(|source| LoggingError::Filter {
                    value: value.to_owned(),
                    source,
                })
        }
        _ => Ok(EnvFilter::default().add_directive(LevelFilter::from(level.as_tracing()).into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_name_parses_in_any_case() {
        let table = [
            ("trace", LogLevel::Trace),
            ("debug", LogLevel::Debug),
            ("DEBUG", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("Info", LogLevel::Info),
            ("warning", LogLevel::Warning),
            ("warn", LogLevel::Warning),
            ("WARNING", LogLevel::Warning),
            ("error", LogLevel::Error),
            ("critical", LogLevel::Error),
            ("CRITICAL", LogLevel::Error),
        ];
        for (text, level) in table {
            assert_eq!(text.parse::<LogLevel>(), Ok(level), "{text}");
        }
    }

    #[test]
    fn an_unknown_level_is_an_error_listing_the_accepted_names() {
        let err = "verbose".parse::<LogLevel>().unwrap_err();
        let message = err.to_string();
        assert!(message.contains("`verbose`"), "{message}");
        for name in LogLevel::ACCEPTED {
            assert!(message.contains(name), "{message} lacks {name}");
        }
    }

    #[test]
    fn the_default_level_is_info_as_in_the_seed() {
        assert_eq!(LogLevel::default(), LogLevel::Info);
        assert_eq!(level_from_env(|_| None), Ok(LogLevel::Info));
        assert_eq!(level_from_env(|_| Some(String::new())), Ok(LogLevel::Info));
        assert_eq!(level_from_env(|_| Some("critical".into())), Ok(LogLevel::Error));
        assert!(level_from_env(|_| Some("loud".into())).is_err());
    }

    #[test]
    fn a_level_reads_from_yaml_through_serde() {
        let level: LogLevel = serde_json::from_str("\"Warn\"").unwrap();
        assert_eq!(level, LogLevel::Warning);
        assert!(serde_json::from_str::<LogLevel>("\"loud\"").is_err());
    }

    #[test]
    fn the_filter_follows_the_level_unless_rust_log_is_set() {
        let filter = build_filter(LogLevel::Warning, None).unwrap();
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::WARN));
        let filter = build_filter(LogLevel::Warning, Some("  ")).unwrap();
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::WARN));
        let filter = build_filter(LogLevel::Warning, Some("trace")).unwrap();
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::TRACE));
        let err = build_filter(LogLevel::Info, Some("a=loud")).unwrap_err();
        assert!(err.to_string().starts_with("RUST_LOG: `a=loud`"), "{err}");
    }

    #[test]
    fn log_formats_parse_in_any_case_and_unknown_ones_list_the_accepted_names() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!(" JSON ".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(LogFormat::default(), LogFormat::Text);
        let message = "xml".parse::<LogFormat>().unwrap_err().to_string();
        assert_eq!(message, "unknown log format `xml`, expected one of text, json");
        let format: LogFormat = serde_json::from_str("\"json\"").unwrap();
        assert_eq!(format, LogFormat::Json);
    }

    #[test]
    fn a_second_init_reports_already_initialized_and_keeps_the_first() {
        // The first call may already fail if another test got there first;
        // the second must say so either way.
        let _ = init(LogLevel::Info);
        assert!(matches!(init(LogLevel::Debug), Err(LoggingError::AlreadyInitialized)));
    }
}
