//! `mqtt`: a device on an MQTT broker, or a whole bridge such as
//! zigbee2mqtt, Tasmota or ESPHome, declared in `connector.yaml` with no
//! code. Subscriptions become events; each platform endpoint publishes a
//! message and may wait for the device's response.
//!
//! An async plugin on the runtime's async plugin thread (client: rumqttc).
//! Devices naming the same broker settings share one connection, which
//! reconnects with back-off on its own and subscribes again after each
//! connect.
//!
//! # Settings
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `broker` | required | `host`, `port` (1883), `client_id` (`sepl-connector-<pid>-<n>`), `user`, `password` or `password_env`, `tls` (false), `keep_alive_s` (30), `clean_session` (true) |
//! | `subscribe` | none | a list of subscriptions, see below |
//! | `commands` | none | a publication per platform endpoint (`{set: {...}}`), see below |
//!
//! A **subscription** has `topic` (a filter: `+` one level, `#` the rest),
//! `qos` (0), `endpoint` (the event's; a template of `{topic}`, `{last}`
//! (the topic's last level, the default) and `{wildcard}` (what the
//! filter's wildcards matched, joined by `/`)) and `pointer` (a JSON pointer:
//! the event is that value of the payload instead of all of it).
//!
//! A **command** has `topic` and `payload` (templates of `{body}`,
//! `{header}`, `{endpoint}`, `{device}`, `{task}`; the payload defaults to
//! `{body}`), `qos` (1) and `retain` (false), and optionally `response`:
//! `topic` (a template too: only a message on the topic the command fills
//! in answers it; a wildcard in it needs `correlation`), `correlation` (a
//! JSON pointer into the response whose value must be the command's task
//! id, which the payload can carry with `{task}`) and `pointer` (the reply
//! is that value of the response).
//! Without `response` the reply is empty once the message is handed to the
//! connection; with it, the reply is the response, or an error when none
//! comes within the device's `command_timeout_ms`. While the broker is not
//! connected a command is refused with an error, never sent late.

mod broker;
pub mod topic;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use connector_core::plugin::{AsyncDevicePlugin, DeviceSpec, EventSink, LocalFuture, PluginError, Reply};
use connector_core::Message;
use rumqttc::QoS;
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::debug;

use crate::settings::{above_zero, check_pointer, pointed, refusal};
use crate::template::{CommandField, Placeholders, Template};
use broker::{Broker, Delivery, Incoming};

pub const NAME: &str = "mqtt";

/// The broker a device is on. Devices with equal settings share one
/// connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub tls: bool,
    #[serde(default = "default_keep_alive_s", deserialize_with = "above_zero")]
    pub keep_alive_s: u64,
    #[serde(default = "default_clean_session")]
    pub clean_session: bool,
}

/// A password in the settings; never printed.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn default_port() -> u16 {
    1883
}

fn default_keep_alive_s() -> u64 {
    30
}

fn default_clean_session() -> bool {
    true
}

/// The `settings:` of an `mqtt` device; the module doc lists them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub broker: BrokerSettings,
    #[serde(default)]
    pub subscribe: Vec<Subscription>,
    #[serde(default)]
    pub commands: BTreeMap<String, Publication>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
    #[serde(default = "default_endpoint")]
    pub endpoint: Template<TopicField>,
    #[serde(default)]
    pub pointer: Option<String>,
}

fn default_endpoint() -> Template<TopicField> {
    Template::parse("{last}").expect("a valid template")
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publication {
    pub topic: Template<CommandField>,
    #[serde(default = "default_payload")]
    pub payload: Template<CommandField>,
    #[serde(default = "default_command_qos")]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub response: Option<ResponseSettings>,
}

fn default_payload() -> Template<CommandField> {
    Template::parse("{body}").expect("a valid template")
}

fn default_command_qos() -> u8 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSettings {
    pub topic: Template<CommandField>,
    #[serde(default)]
    pub correlation: Option<String>,
    #[serde(default)]
    pub pointer: Option<String>,
}

/// What a subscription's endpoint template may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicField {
    /// `{topic}`: the whole topic.
    Topic,
    /// `{last}`: its last level.
    Last,
    /// `{wildcard}`: what the filter's wildcards matched, joined by `/`.
    Wildcard,
}

impl Placeholders for TopicField {
    const NAMES: &'static [&'static str] = &["topic", "last", "wildcard"];

    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "topic" => TopicField::Topic,
            "last" => TopicField::Last,
            "wildcard" => TopicField::Wildcard,
            _ => return None,
        })
    }
}

/// An `mqtt` device.
pub struct MqttDevice {
    device_id: String,
    settings: Rc<Settings>,
    password: Option<String>,
    command_timeout: Duration,
    running: Option<Running>,
}

/// A started device: its connection, routes and waiting commands.
struct Running {
    broker: Rc<Broker>,
    routes: Vec<u64>,
    /// Per command endpoint with a response: the commands waiting for one.
    waiting: BTreeMap<String, Rc<Waiting>>,
}

/// Commands waiting for a response on one topic, oldest first.
type Waiting = RefCell<VecDeque<Waiter>>;

struct Waiter {
    task_id: String,
    /// The response topic as the command filled it in, when that leaves no
    /// wildcard: only a message on exactly this topic answers.
    topic: Option<String>,
    answer: oneshot::Sender<Result<String, String>>,
}

/// Creates an `mqtt` device: the settings must fit, every filter be a
/// filter, every QoS 0, 1 or 2, and a password named by `password_env` be
/// set. Nothing connects until the device starts.
pub fn create(spec: &DeviceSpec) -> Result<MqttDevice, PluginError> {
    let settings: Settings = spec.settings()?;
    let refuse = |key: &str, why: String| refusal(spec, key, why);
    let broker = &settings.broker;
    if broker.host.is_empty() {
        return Err(refuse("broker.host", "must not be empty".to_owned()));
    }
    if settings.subscribe.is_empty() && settings.commands.is_empty() {
        return Err(refuse(
            "subscribe",
            "missing: set `subscribe`, `commands` or both, or the device does nothing".to_owned(),
        ));
    }
    for (i, subscription) in settings.subscribe.iter().enumerate() {
        topic::check_filter(&subscription.topic).map_err(|why| refuse(&format!("subscribe[{i}].topic"), why))?;
        qos(subscription.qos).map_err(|why| refuse(&format!("subscribe[{i}].qos"), why))?;
        check_pointer(subscription.pointer.as_deref())
            .map_err(|why| refuse(&format!("subscribe[{i}].pointer"), why))?;
    }
    for (endpoint, publication) in &settings.commands {
        let key = |field: &str| format!("commands.{endpoint}.{field}");
        qos(publication.qos).map_err(|why| refuse(&key("qos"), why))?;
        if let Some(response) = &publication.response {
            let filter = response_filter(response);
            topic::check_filter(&filter).map_err(|why| refuse(&key("response.topic"), why))?;
            let literal = response.topic.render(|_| Cow::Borrowed(""));
            if literal.contains(['+', '#']) && response.correlation.is_none() {
                return Err(refuse(
                    &key("response.topic"),
                    format!(
                        "`{filter}` has a wildcard, so one device's answer could answer another command: \
                         name the topic with placeholders (zigbee2mqtt/{{body}}) or set `correlation`"
                    ),
                ));
            }
            check_pointer(response.correlation.as_deref()).map_err(|why| refuse(&key("response.correlation"), why))?;
            check_pointer(response.pointer.as_deref()).map_err(|why| refuse(&key("response.pointer"), why))?;
        }
    }
    let password = match (&broker.password, &broker.password_env) {
        (Some(Secret(password)), None) => Some(password.clone()),
        (None, Some(name)) => Some(std::env::var(name).map_err(|_| {
            refuse(
                "broker.password_env",
                format!("the environment variable {name} (the broker's password) is not set"),
            )
        })?),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(refuse(
                "broker.password",
                "give the password or `password_env`, not both".to_owned(),
            ))
        }
    };
    if password.is_some() && broker.user.is_none() {
        return Err(refuse("broker.user", "a password needs a user".to_owned()));
    }
    Ok(MqttDevice {
        device_id: spec.id().to_owned(),
        settings: Rc::new(settings),
        password,
        command_timeout: spec.command_timeout(),
        running: None,
    })
}

fn qos(level: u8) -> Result<QoS, String> {
    match level {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(format!("{level} is not a QoS: 0, 1 or 2")),
    }
}

/// `payload`'s value at `pointer` as text, or the whole payload.
fn pick(payload: &[u8], pointer: Option<&str>) -> Result<String, String> {
    pointed(&String::from_utf8_lossy(payload), pointer)
}

impl AsyncDevicePlugin for MqttDevice {
    fn start(&mut self, events: EventSink) -> LocalFuture<'_, Result<(), PluginError>> {
        let broker = Broker::shared(&self.settings.broker, self.password.clone());
        let mut routes = Vec::new();
        for subscription in &self.settings.subscribe {
            let sink = events.clone();
            let subscription_settings = subscription.clone();
            let handler = Box::new(move |incoming: &Incoming<'_>| {
                let endpoint = subscription_settings.endpoint.render(|field| match field {
                    TopicField::Topic => Cow::Borrowed(incoming.topic),
                    TopicField::Last => Cow::Borrowed(incoming.topic.rsplit('/').next().unwrap_or_default()),
                    TopicField::Wildcard => Cow::Owned(incoming.wildcards.join("/")),
                });
                match pick(incoming.payload, subscription_settings.pointer.as_deref()) {
                    Ok(body) => {
                        let _ = sink.emit(endpoint, body);
                    }
                    Err(why) => {
                        debug!(device_id = %sink.device_id(), topic = %incoming.topic, "message skipped: {why}")
                    }
                }
                Delivery::Passed
            });
            let level = qos(subscription.qos).unwrap_or(QoS::AtMostOnce);
            routes.push(broker.add(&subscription.topic, level, false, handler));
        }
        let mut waiting = BTreeMap::new();
        for (endpoint, publication) in &self.settings.commands {
            let Some(response) = publication.response.clone() else {
                continue;
            };
            let queue: Rc<Waiting> = Rc::default();
            let waiters = queue.clone();
            let filter = response_filter(&response);
            let handler = Box::new(move |incoming: &Incoming<'_>| answer_waiter(&waiters, &response, incoming));
            routes.push(broker.add(&filter, QoS::AtLeastOnce, true, handler));
            waiting.insert(endpoint.clone(), queue);
        }
        self.running = Some(Running {
            broker,
            routes,
            waiting,
        });
        Box::pin(async { Ok(()) })
    }

    fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
        Box::pin(async move {
            let running = self
                .running
                .as_ref()
                .ok_or_else(|| PluginError::new("the device is not started"))?;
            let Some(publication) = self.settings.commands.get(&command.endpoint) else {
                let known: Vec<&str> = self.settings.commands.keys().map(String::as_str).collect();
                return Err(PluginError::new(format!(
                    "unknown endpoint {:?} (this device knows: {})",
                    command.endpoint,
                    known.join(", ")
                )));
            };
            let value = |field: CommandField| Cow::Borrowed(field.of(command, &self.device_id));
            let topic = publication.topic.render(value);
            if topic.is_empty() || topic.contains(['+', '#']) {
                return Err(PluginError::new(format!(
                    "cannot publish to `{topic}`: a topic to publish to is not empty and has no + or # \
                     (check what the command put into the topic template)"
                )));
            }
            let payload = publication.payload.render(value);
            let level = qos(publication.qos).unwrap_or(QoS::AtLeastOnce);
            // The waiter goes in first: a quick device may answer before
            // the publish call returns.
            let answer = match running.waiting.get(&command.endpoint) {
                Some(queue) => {
                    let (tx, rx) = oneshot::channel();
                    let expected = publication
                        .response
                        .as_ref()
                        .map(|response| response.topic.render(value))
                        .filter(|topic| !topic.contains(['+', '#']));
                    queue.borrow_mut().push_back(Waiter {
                        task_id: command.task_id.clone(),
                        topic: expected,
                        answer: tx,
                    });
                    Some((queue.clone(), rx))
                }
                None => None,
            };
            if let Err(why) = running
                .broker
                .publish(&topic, level, publication.retain, payload.into_bytes())
            {
                if let Some((queue, _)) = &answer {
                    queue.borrow_mut().retain(|w| w.task_id != command.task_id);
                }
                return Err(PluginError::new(why));
            }
            let Some((queue, rx)) = answer else {
                return Ok(Reply::body(""));
            };
            let response = publication
                .response
                .as_ref()
                .map(|r| r.topic.render(value))
                .unwrap_or_default();
            match tokio::time::timeout(self.command_timeout, rx).await {
                Ok(Ok(Ok(body))) => Ok(Reply::body(body)),
                Ok(Ok(Err(why))) => Err(PluginError::new(format!("the response on {response}: {why}"))),
                Ok(Err(_)) => Err(PluginError::new("the device stopped before the response came")),
                Err(_) => {
                    queue.borrow_mut().retain(|w| w.task_id != command.task_id);
                    Err(PluginError::new(format!(
                        "no response on {response} within {} ms",
                        self.command_timeout.as_millis()
                    )))
                }
            }
        })
    }

    fn stop(&mut self) -> LocalFuture<'_, ()> {
        if let Some(running) = self.running.take() {
            running.broker.remove(&running.routes);
        }
        Box::pin(async {})
    }
}

/// What to subscribe to hear a command's response: the topic with `+` for
/// each placeholder.
fn response_filter(response: &ResponseSettings) -> String {
    response.topic.render(|_| Cow::Borrowed("+"))
}

/// Gives a response to the command it answers: among those waiting on this
/// topic, the one whose task id is at the correlation pointer, or without
/// one the oldest.
fn answer_waiter(queue: &Waiting, response: &ResponseSettings, incoming: &Incoming<'_>) -> Delivery {
    let mut waiting = queue.borrow_mut();
    let payload = incoming.payload;
    let on_its_topic = |w: &Waiter| w.topic.as_deref().is_none_or(|topic| topic == incoming.topic);
    let at = match &response.correlation {
        None => waiting.iter().position(on_its_topic),
        Some(pointer) => match pick(payload, Some(pointer)) {
            Ok(task_id) => waiting.iter().position(|w| w.task_id == task_id && on_its_topic(w)),
            Err(_) => None,
        },
    };
    let Some(at) = at else { return Delivery::Passed };
    let Some(waiter) = waiting.remove(at) else {
        return Delivery::Passed;
    };
    let _ = waiter.answer.send(pick(payload, response.pointer.as_deref()));
    Delivery::Taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(settings: serde_json::Value) -> DeviceSpec {
        DeviceSpec::new("m-1", "t", "M")
            .with_plugin(NAME)
            .with_settings(settings)
    }

    fn refusal(settings: serde_json::Value) -> String {
        crate::settings::refused(create, &spec(settings))
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        let broker = json!({"host": "127.0.0.1"});
        for (settings, want) in [
            (json!({"subscribe": [{"topic": "a"}]}), "missing field `broker`"),
            (
                json!({"broker": {"host": ""}, "subscribe": [{"topic": "a"}]}),
                "`settings.broker.host`: must not be empty",
            ),
            (json!({"broker": broker}), "`settings.subscribe`: missing"),
            (
                json!({"broker": broker, "subscribe": [{"topic": "a/#/b"}]}),
                "`settings.subscribe[0].topic`",
            ),
            (
                json!({"broker": broker, "subscribe": [{"topic": "a", "qos": 3}]}),
                "`settings.subscribe[0].qos`: 3 is not a QoS",
            ),
            (
                json!({"broker": broker, "subscribe": [{"topic": "a", "endpoint": "{level}"}]}),
                "unknown placeholder `{level}`",
            ),
            (
                json!({"broker": broker, "commands": {"set": {"topic": "a/{value}"}}}),
                "unknown placeholder `{value}`",
            ),
            (
                json!({"broker": broker, "commands": {"set": {"topic": "a", "response": {"topic": "b", "correlation": "id"}}}}),
                "`settings.commands.set.response.correlation`",
            ),
            (
                json!({"broker": broker, "commands": {"get": {"topic": "a", "response": {"topic": "z/+"}}}}),
                "`settings.commands.get.response.topic`: `z/+` has a wildcard",
            ),
            (
                json!({"broker": {"host": "h", "password": "pw"}, "subscribe": [{"topic": "a"}]}),
                "`settings.broker.user`: a password needs a user",
            ),
            (
                json!({"broker": {"host": "h", "user": "u", "password_env": "MQTT_TEST_UNSET_VARIABLE"}, "subscribe": [{"topic": "a"}]}),
                "MQTT_TEST_UNSET_VARIABLE (the broker's password) is not set",
            ),
            (
                json!({"broker": {"host": "h", "keep_alive_s": 0}, "subscribe": [{"topic": "a"}]}),
                "must be above 0",
            ),
        ] {
            let err = refusal(settings.clone());
            assert!(err.contains(want), "{settings}: {err}");
        }
    }

    #[test]
    fn the_password_is_never_in_debug_output() {
        let settings =
            json!({"broker": {"host": "h", "user": "u", "password": "s3cr3t-pw"}, "subscribe": [{"topic": "a"}]});
        let parsed: Settings = spec(settings).settings().unwrap();
        assert!(!format!("{parsed:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn a_response_goes_to_the_command_it_names_or_to_the_oldest_on_its_topic() {
        let queue: Waiting = RefCell::default();
        let mut answers = Vec::new();
        for (task, topic) in [("t1", "z/lamp"), ("t2", "z/plug")] {
            let (tx, rx) = oneshot::channel();
            queue.borrow_mut().push_back(Waiter {
                task_id: task.into(),
                topic: Some(topic.into()),
                answer: tx,
            });
            answers.push(rx);
        }
        let on = |topic: &'static str, payload: &'static [u8]| Incoming {
            topic,
            payload,
            wildcards: Vec::new(),
        };
        let correlated = ResponseSettings {
            topic: Template::parse("z/{body}").unwrap(),
            correlation: Some("/id".into()),
            pointer: Some("/state".into()),
        };
        let answer = |settings: &ResponseSettings, incoming: Incoming<'_>| answer_waiter(&queue, settings, &incoming);
        assert_eq!(
            answer(&correlated, on("z/plug", br#"{"id": "t9", "state": "x"}"#)),
            Delivery::Passed
        );
        assert_eq!(
            answer(&correlated, on("z/plug", br#"{"id": "t2", "state": "ON"}"#)),
            Delivery::Taken
        );
        assert_eq!(answers.pop().unwrap().try_recv().unwrap(), Ok("ON".to_owned()));
        let plain = ResponseSettings {
            topic: Template::parse("z/{body}").unwrap(),
            correlation: None,
            pointer: None,
        };
        assert_eq!(answer(&plain, on("z/sensor", b"not for t1")), Delivery::Passed);
        assert_eq!(answer(&plain, on("z/lamp", b"done")), Delivery::Taken);
        assert_eq!(answers.pop().unwrap().try_recv().unwrap(), Ok("done".to_owned()));
        assert_eq!(answer(&plain, on("z/lamp", b"nobody waits")), Delivery::Passed);
    }

    #[test]
    fn a_payload_is_picked_whole_or_by_pointer() {
        assert_eq!(pick(b"21.5", None).unwrap(), "21.5");
        assert_eq!(
            pick(br#"{"temperature": 21.5, "state": "ON"}"#, Some("/state")).unwrap(),
            "ON"
        );
        assert_eq!(pick(br#"{"temperature": 21.5}"#, Some("/temperature")).unwrap(), "21.5");
        assert!(pick(b"plain", Some("/x")).unwrap_err().contains("not JSON"));
    }
}
