//! `http`: a device behind a REST API (a Shelly or Tasmota plug, a sensor
//! with a web page, a home-made gadget with an HTTP server), declared in
//! `connector.yaml` with no code: polls turn responses into events, and
//! each platform endpoint maps to a request.
//!
//! An async plugin: every `http` device runs on the runtime's one async
//! plugin thread, so a thousand polled devices cost no thread each.
//! Requests go through `connector_core::http` (time-outs, retries) and trust
//! what the platform link trusts (the bundled roots plus `platform.ca_file`).
//!
//! # Settings
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `base_url` | none | prefix of every relative `url` (`http://plug.local`) |
//! | `headers` | none | headers of every request (a mapping) |
//! | `auth` | none | `{basic: {user, password or password_env}}` or `{bearer: {token or token_env}}` |
//! | `timeout_ms` | `3000` | time for one attempt, body included; above 0 |
//! | `retries` | `0` | extra attempts after a transport error, a time-out or a 5xx |
//! | `poll` | none | a list of polls, see below |
//! | `commands` | none | a request per platform endpoint (`{set: {...}, get: {...}}`), see below |
//!
//! A **poll** has `endpoint` (the event's), `url`, `method` (`GET`),
//! `body`, `headers`, `interval_ms` (`10000`), `pointer` (a JSON pointer
//! such as `/apower`: the event is that value instead of the whole body) and
//! `on_change` (`false`; `true` emits only when the value differs from the
//! last one emitted). A failed poll is logged once, and once more when the
//! device answers again.
//!
//! A **command** has `url`, `method` (`GET`, or `POST` when it has a
//! `body`), `body`, `headers` and `pointer` (the reply is that value of the
//! response). `url`, `body` and header values are templates:
//! `{body}`, `{header}`, `{endpoint}`, `{device}` and `{task}` stand for the
//! command's; in the `url` they are percent-encoded. The response body is
//! the reply. A status of 400 or more, or a transport error, is an error
//! reply naming the status and the URL (never its password).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use connector_core::http::{percent_encode, redact_userinfo, HttpClient, HttpOptions, Response};
use connector_core::plugin::{AsyncDevicePlugin, DeviceSpec, EventSink, LocalFuture, PluginError, Reply};
use connector_core::tls;
use connector_core::Message;
use serde::Deserialize;
use tracing::{info, warn};

use crate::settings::{above_zero, check_pointer, pointed, refusal};
use crate::template::{CommandField as Field, Template};

pub const NAME: &str = "http";

/// Default of `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 3_000;
/// Default of a poll's `interval_ms`.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 10_000;

/// The `settings:` of an `http` device; the module doc lists them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: Option<Auth>,
    #[serde(default = "default_timeout_ms", deserialize_with = "above_zero")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub poll: Vec<Poll>,
    #[serde(default)]
    pub commands: BTreeMap<String, CommandRequest>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_poll_interval_ms() -> u64 {
    DEFAULT_POLL_INTERVAL_MS
}

/// How requests log in. A secret comes from the file or, better, from an
/// environment variable named here; it is never shown in a message.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    Basic {
        user: String,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        password_env: Option<String>,
    },
    Bearer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        token_env: Option<String>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { user, .. } => f.debug_struct("Basic").field("user", user).finish_non_exhaustive(),
            Auth::Bearer { .. } => f.debug_struct("Bearer").finish_non_exhaustive(),
        }
    }
}

/// One poll: a request on a timer whose answer is an event.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    pub endpoint: String,
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_poll_interval_ms", deserialize_with = "above_zero")]
    pub interval_ms: u64,
    #[serde(default)]
    pub pointer: Option<String>,
    #[serde(default)]
    pub on_change: bool,
}

/// The request a platform endpoint maps to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub url: Template<Field>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub body: Option<Template<Field>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Template<Field>>,
    #[serde(default)]
    pub pointer: Option<String>,
}

/// An `http` device.
pub struct HttpDevice {
    device_id: String,
    settings: Rc<Settings>,
    /// The `Authorization` header, resolved when the device was created.
    authorization: Option<String>,
    client: Option<HttpClient>,
    polls: Vec<actix_rt::task::JoinHandle<()>>,
}

/// Creates an `http` device: the settings must fit, every method be a
/// method, every URL be absolute once `base_url` is put in front, and every
/// secret named by `*_env` be set.
pub fn create(spec: &DeviceSpec) -> Result<HttpDevice, PluginError> {
    let settings: Settings = spec.settings()?;
    let refuse = |key: &str, why: String| refusal(spec, key, why);
    if settings.poll.is_empty() && settings.commands.is_empty() {
        return Err(refuse(
            "poll",
            "missing: set `poll`, `commands` or both, or the device does nothing".to_owned(),
        ));
    }
    let absolute = |key: String, url: &str| -> Result<(), PluginError> {
        let full = join(settings.base_url.as_deref(), url);
        let lower = full.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Ok(())
        } else {
            Err(refuse(
                &key,
                format!(
                    "`{}` is not an http:// or https:// URL; write it whole or set base_url",
                    redact_userinfo(&full)
                ),
            ))
        }
    };
    for (i, poll) in settings.poll.iter().enumerate() {
        if poll.endpoint.is_empty() {
            return Err(refuse(&format!("poll[{i}].endpoint"), "must not be empty".to_owned()));
        }
        absolute(format!("poll[{i}].url"), &poll.url)?;
        method(poll.method.as_deref(), poll.body.is_some()).map_err(|why| refuse(&format!("poll[{i}].method"), why))?;
        check_pointer(poll.pointer.as_deref()).map_err(|why| refuse(&format!("poll[{i}].pointer"), why))?;
    }
    for (endpoint, request) in &settings.commands {
        // The URL's shape is known only with the command's values; a
        // template that starts with a placeholder is taken on trust.
        let sample = request.url.render(|_| Cow::Borrowed("x"));
        absolute(format!("commands.{endpoint}.url"), &sample)?;
        method(request.method.as_deref(), request.body.is_some())
            .map_err(|why| refuse(&format!("commands.{endpoint}.method"), why))?;
        check_pointer(request.pointer.as_deref())
            .map_err(|why| refuse(&format!("commands.{endpoint}.pointer"), why))?;
    }
    let authorization = match &settings.auth {
        None => None,
        Some(auth) => Some(authorization(auth).map_err(|why| refuse("auth", why))?),
    };
    Ok(HttpDevice {
        device_id: spec.id().to_owned(),
        settings: Rc::new(settings),
        authorization,
        client: None,
        polls: Vec::new(),
    })
}

/// The `Authorization` header value for `auth`.
fn authorization(auth: &Auth) -> Result<String, String> {
    let secret = |value: &Option<String>, env: &Option<String>, what: &str| match (value, env) {
        (Some(value), None) => Ok(value.clone()),
        (None, Some(name)) => {
            std::env::var(name).map_err(|_| format!("the environment variable {name} (the {what}) is not set"))
        }
        (None, None) => Err(format!(
            "give the {what}, or the name of the environment variable that holds it (`{what}_env`)"
        )),
        (Some(_), Some(_)) => Err(format!("give the {what} or `{what}_env`, not both")),
    };
    Ok(match auth {
        Auth::Basic {
            user,
            password,
            password_env,
        } => {
            let password = secret(password, password_env, "password")?;
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        }
        Auth::Bearer { token, token_env } => format!("Bearer {}", secret(token, token_env, "token")?),
    })
}

fn method(given: Option<&str>, has_body: bool) -> Result<String, String> {
    let method = match given {
        Some(method) => method.to_ascii_uppercase(),
        None if has_body => "POST".to_owned(),
        None => "GET".to_owned(),
    };
    match method.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => Ok(method),
        _ => Err(format!(
            "`{method}` is not one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
        )),
    }
}

fn join(base: Option<&str>, url: &str) -> String {
    match base {
        Some(base) if !url.contains("://") => {
            format!("{}/{}", base.trim_end_matches('/'), url.trim_start_matches('/'))
        }
        _ => url.to_owned(),
    }
}

impl HttpDevice {
    fn client(&mut self) -> HttpClient {
        self.client
            .get_or_insert_with(|| {
                let timeout = Duration::from_millis(self.settings.timeout_ms);
                let mut client =
                    HttpClient::from_awc(tls::for_plugins().awc_client(timeout)).with_options(HttpOptions {
                        timeout,
                        retries: self.settings.retries,
                        ..HttpOptions::default()
                    });
                for (name, value) in &self.settings.headers {
                    client = client.with_header(name, value);
                }
                if let Some(authorization) = &self.authorization {
                    client = client.with_header("Authorization", authorization);
                }
                client
            })
            .clone()
    }
}

impl AsyncDevicePlugin for HttpDevice {
    fn start(&mut self, events: EventSink) -> LocalFuture<'_, Result<(), PluginError>> {
        let client = self.client();
        for index in 0..self.settings.poll.len() {
            let task = poll_loop(client.clone(), self.settings.clone(), index, events.clone());
            self.polls.push(actix_rt::spawn(task));
        }
        Box::pin(async { Ok(()) })
    }

    fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
        let client = self.client();
        Box::pin(async move {
            let Some(request) = self.settings.commands.get(&command.endpoint) else {
                let known: Vec<&str> = self.settings.commands.keys().map(String::as_str).collect();
                return Err(PluginError::new(format!(
                    "unknown endpoint {:?} (this device knows: {})",
                    command.endpoint,
                    known.join(", ")
                )));
            };
            let value = |field: Field| Cow::Borrowed(field.of(command, &self.device_id));
            let url = request.url.render(|field| Cow::Owned(percent_encode(&value(field))));
            let url = join(self.settings.base_url.as_deref(), &url);
            let body = request.body.as_ref().map(|body| body.render(value));
            let method = method(request.method.as_deref(), body.is_some()).map_err(PluginError::new)?;
            let mut builder = client.request(parse_method(&method), &url);
            for (name, template) in &request.headers {
                builder = builder.header(name, template.render(value));
            }
            if let Some(body) = body {
                builder = builder.body(body);
            }
            let response = builder.send().await.map_err(|e| PluginError::new(e.to_string()))?;
            let answer = answer(&response, &method, &url, request.pointer.as_deref())?;
            Ok(Reply::body(answer))
        })
    }

    fn stop(&mut self) -> LocalFuture<'_, ()> {
        for poll in self.polls.drain(..) {
            poll.abort();
        }
        Box::pin(async {})
    }
}

fn parse_method(method: &str) -> awc::http::Method {
    awc::http::Method::from_bytes(method.as_bytes()).unwrap_or(awc::http::Method::GET)
}

/// The text a response stands for: its body, or the value at `pointer` in
/// it; an error for a status of 400 or more.
fn answer(response: &Response, method: &str, url: &str, pointer: Option<&str>) -> Result<String, PluginError> {
    let url = redact_userinfo(url);
    if response.status >= 400 {
        let start: String = response.body.chars().take(200).collect();
        let said = if start.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", start.trim())
        };
        return Err(PluginError::new(format!(
            "{method} {url}: HTTP {}{said}",
            response.status
        )));
    }
    pointed(&response.body, pointer).map_err(|why| {
        let pointer = pointer.unwrap_or_default();
        PluginError::new(format!("{method} {url}: cannot take {pointer} from the answer: {why}"))
    })
}

/// One poll of one device, every `interval_ms` until aborted by `stop`.
async fn poll_loop(client: HttpClient, settings: Rc<Settings>, index: usize, events: EventSink) {
    let poll = &settings.poll[index];
    let url = join(settings.base_url.as_deref(), &poll.url);
    let method = method(poll.method.as_deref(), poll.body.is_some()).unwrap_or_else(|_| "GET".to_owned());
    let mut interval = actix_rt::time::interval(Duration::from_millis(poll.interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<String> = None;
    let mut failing = false;
    loop {
        interval.tick().await;
        let mut request = client.request(parse_method(&method), &url);
        for (name, value) in &poll.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &poll.body {
            request = request.body(body.clone());
        }
        let result = match request.send().await {
            Ok(response) => answer(&response, &method, &url, poll.pointer.as_deref()),
            Err(e) => Err(PluginError::new(e.to_string())),
        };
        match result {
            Ok(value) => {
                if failing {
                    info!(device_id = %events.device_id(), endpoint = %poll.endpoint, "poll answers again");
                    failing = false;
                }
                if poll.on_change && last.as_deref() == Some(value.as_str()) {
                    continue;
                }
                if events.emit(poll.endpoint.clone(), value.clone()).is_err() {
                    return;
                }
                last = Some(value);
            }
            Err(e) if !failing => {
                warn!(device_id = %events.device_id(), endpoint = %poll.endpoint, "poll failed, trying again every {} ms: {e}", poll.interval_ms);
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Standard base64 with padding, for the `Basic` header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(settings: serde_json::Value) -> DeviceSpec {
        DeviceSpec::new("h-1", "t", "H")
            .with_plugin(NAME)
            .with_settings(settings)
    }

    fn refusal(settings: serde_json::Value) -> String {
        crate::settings::refused(create, &spec(settings))
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (text, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(text.as_bytes()), want, "{text}");
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        for (settings, want) in [
            (json!({}), "`settings.poll`: missing"),
            (
                json!({"poll": [{"endpoint": "p", "url": "/x"}]}),
                "`settings.poll[0].url`: `/x` is not an http:// or https:// URL",
            ),
            (
                json!({"base_url": "ftp://h", "poll": [{"endpoint": "p", "url": "/x"}]}),
                "`ftp://h/x` is not an http",
            ),
            (
                json!({"poll": [{"endpoint": "", "url": "http://h/"}]}),
                "`settings.poll[0].endpoint`: must not be empty",
            ),
            (
                json!({"poll": [{"endpoint": "p", "url": "http://h/", "interval_ms": 0}]}),
                "must be above 0",
            ),
            (
                json!({"poll": [{"endpoint": "p", "url": "http://h/", "method": "FETCH"}]}),
                "`settings.poll[0].method`: `FETCH` is not one of",
            ),
            (
                json!({"poll": [{"endpoint": "p", "url": "http://h/", "pointer": "apower"}]}),
                "is not a JSON pointer",
            ),
            (
                json!({"commands": {"set": {"url": "http://h/{value}"}}}),
                "unknown placeholder `{value}`",
            ),
            (
                json!({"commands": {"set": {"url": "/relay"}}}),
                "`settings.commands.set.url`",
            ),
            (
                json!({"commands": {"get": {"url": "http://h/"}}, "auth": {"basic": {"user": "u"}}}),
                "`settings.auth`: give the password",
            ),
            (
                json!({"commands": {"get": {"url": "http://h/"}}, "auth": {"bearer": {"token_env": "NO_SUCH_VARIABLE_SET_HERE"}}}),
                "NO_SUCH_VARIABLE_SET_HERE (the token) is not set",
            ),
            (
                json!({"commands": {"get": {"url": "http://h/"}}, "colour": 1}),
                "unknown field `colour`",
            ),
        ] {
            let err = refusal(settings.clone());
            assert!(err.contains(want), "{settings}: {err}");
        }
    }

    #[test]
    fn a_password_is_never_in_a_refusal_or_in_debug_output() {
        let settings =
            json!({"commands": {"get": {"url": "ftp://x"}}, "auth": {"basic": {"user": "u", "password": "s3cr3t-pw"}}});
        let err = refusal(settings.clone());
        assert!(!err.contains("s3cr3t-pw"), "{err}");
        let parsed: Settings = spec(settings).settings().unwrap();
        assert!(!format!("{parsed:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn an_answer_is_the_body_or_the_pointed_value_and_an_error_status_is_an_error() {
        let response = |status: u16, body: &str| Response {
            status,
            headers: BTreeMap::new(),
            body: body.to_owned(),
        };
        let ok = response(200, r#"{"apower": 12.5, "name": "plug", "on": {"v": true}}"#);
        assert_eq!(answer(&ok, "GET", "http://h/", None).unwrap(), ok.body);
        assert_eq!(answer(&ok, "GET", "http://h/", Some("/apower")).unwrap(), "12.5");
        assert_eq!(answer(&ok, "GET", "http://h/", Some("/name")).unwrap(), "plug");
        assert_eq!(answer(&ok, "GET", "http://h/", Some("/on")).unwrap(), r#"{"v":true}"#);
        let missing = answer(&ok, "GET", "http://h/", Some("/nope")).unwrap_err().to_string();
        assert!(missing.contains("nothing at /nope"), "{missing}");
        let err = answer(&response(503, "relay busy"), "POST", "http://admin:pw@h/relay", None)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "POST http://h/relay: HTTP 503: relay busy");
    }

    #[test]
    fn relative_urls_join_the_base() {
        assert_eq!(join(Some("http://h/"), "/a"), "http://h/a");
        assert_eq!(join(Some("http://h"), "a?b=1"), "http://h/a?b=1");
        assert_eq!(join(Some("http://h"), "http://other/x"), "http://other/x");
        assert_eq!(join(None, "/a"), "/a");
    }
}
