//! One connection per broker, shared by every `mqtt` device that names the
//! same broker settings: it reconnects with back-off on its own, subscribes
//! again after each connect, and hands each incoming message to the devices
//! whose filters match it. Lives on the async plugin thread, so the shared
//! state needs no locks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use connector_core::backoff::Backoff;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use tracing::{debug, info, warn};

use super::topic;
use super::BrokerSettings;

/// First and longest delay between two connection attempts.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Requests (publishes, subscriptions) that may wait for the connection.
const REQUEST_CAPACITY: usize = 1024;
/// Largest message either way: zigbee2mqtt's bridge messages can be large.
const MAX_PACKET_BYTES: usize = 1024 * 1024;

thread_local! {
    /// The open connections of this thread, by their settings.
    static BROKERS: RefCell<HashMap<BrokerSettings, Weak<Broker>>> = RefCell::new(HashMap::new());
}

/// A message for a device: where it came from and what it holds.
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// What the filter's wildcards matched.
    pub wildcards: Vec<&'a str>,
}

/// What a device does with the messages its filter matches.
pub type Handler = Box<dyn Fn(&Incoming<'_>) -> Delivery>;

/// Whether a handler took the message for itself (a command's response),
/// so no other handler gets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Taken,
    Passed,
}

struct Route {
    /// The subscription this route belongs to, to remove it.
    id: u64,
    filter: String,
    qos: QoS,
    /// Responses are offered before events.
    first: bool,
    handler: Handler,
}

/// A shared broker connection; dropped with its last device.
pub struct Broker {
    client: AsyncClient,
    /// `host:port`, for log lines and errors: never the credentials.
    pub label: String,
    connected: Cell<bool>,
    routes: RefCell<Vec<Route>>,
    /// The filters subscribed on this connection: those of the routes that
    /// no other route's filter covers, so the broker sends each message
    /// once, not once per overlapping filter.
    subscribed: RefCell<Vec<(String, QoS)>>,
    task: RefCell<Option<actix_rt::task::JoinHandle<()>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Broker {
    /// The connection for `settings`, opened now if no device has it open.
    pub fn shared(settings: &BrokerSettings, password: Option<String>) -> Rc<Broker> {
        if let Some(broker) = BROKERS.with(|brokers| brokers.borrow().get(settings).and_then(Weak::upgrade)) {
            return broker;
        }
        let (client, eventloop) = AsyncClient::new(options(settings, password), REQUEST_CAPACITY);
        let broker = Rc::new(Broker {
            client,
            label: format!("{}:{}", settings.host, settings.port),
            connected: Cell::new(false),
            routes: RefCell::new(Vec::new()),
            subscribed: RefCell::new(Vec::new()),
            task: RefCell::new(None),
        });
        let task = actix_rt::spawn(run(eventloop, Rc::downgrade(&broker)));
        *broker.task.borrow_mut() = Some(task);
        BROKERS.with(|brokers| {
            let mut brokers = brokers.borrow_mut();
            brokers.retain(|_, broker| broker.strong_count() > 0);
            brokers.insert(settings.clone(), Rc::downgrade(&broker));
        });
        broker
    }

    pub fn is_connected(&self) -> bool {
        self.connected.get()
    }

    /// Routes messages matching `filter` to `handler` until [`Broker::remove`]
    /// with the id returned, subscribing what that takes.
    pub fn add(&self, filter: &str, qos: QoS, first: bool, handler: Handler) -> u64 {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.routes.borrow_mut().push(Route {
            id,
            filter: filter.to_owned(),
            qos,
            first,
            handler,
        });
        self.sync_subscriptions();
        id
    }

    /// Ends the routes of `ids`, unsubscribing what no route needs any more.
    pub fn remove(&self, ids: &[u64]) {
        self.routes.borrow_mut().retain(|route| !ids.contains(&route.id));
        self.sync_subscriptions();
    }

    /// Subscribes the covering set of the routes' filters and unsubscribes
    /// what fell out of it. While disconnected the next connect does it.
    fn sync_subscriptions(&self) {
        if !self.is_connected() {
            return;
        }
        let wanted = covering(
            self.routes
                .borrow()
                .iter()
                .map(|route| (route.filter.as_str(), route.qos)),
        );
        let mut subscribed = self.subscribed.borrow_mut();
        for (filter, qos) in &wanted {
            if !subscribed.iter().any(|(f, q)| f == filter && q >= qos) {
                if let Err(e) = self.client.try_subscribe(filter.as_str(), *qos) {
                    warn!(broker = %self.label, "cannot subscribe {filter}: {e}");
                }
            }
        }
        for (filter, _) in subscribed.iter() {
            if !wanted.iter().any(|(f, _)| f == filter) {
                let _ = self.client.try_unsubscribe(filter.as_str());
            }
        }
        *subscribed = wanted;
    }

    /// Hands a message to the connection without waiting; refused while it
    /// is down, so that a command is never sent after its deadline.
    pub fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        if !self.is_connected() {
            return Err(format!(
                "the broker {} is not connected (reconnecting); nothing was published",
                self.label
            ));
        }
        self.client
            .try_publish(topic, qos, retain, payload)
            .map_err(|e| format!("cannot publish to {topic} on {}: {e}", self.label))
    }

    fn deliver(&self, topic_name: &str, payload: &[u8]) {
        let routes = self.routes.borrow();
        let ordered = routes
            .iter()
            .filter(|r| r.first)
            .chain(routes.iter().filter(|r| !r.first));
        let mut taken = false;
        for route in ordered {
            if taken && route.first {
                continue;
            }
            let Some(wildcards) = topic::matches(&route.filter, topic_name) else {
                continue;
            };
            let incoming = Incoming {
                topic: topic_name,
                payload,
                wildcards,
            };
            if (route.handler)(&incoming) == Delivery::Taken {
                taken = true;
            }
        }
    }

    /// After a connect: the session may be new, so everything is subscribed.
    fn subscribe_all(&self) {
        self.subscribed.borrow_mut().clear();
        self.sync_subscriptions();
    }
}

/// The filters (each with the highest QoS among those it covers) that no
/// other filter of `filters` covers: subscribing these alone hears every
/// filter's messages exactly once.
fn covering<'a>(filters: impl Iterator<Item = (&'a str, QoS)>) -> Vec<(String, QoS)> {
    let mut all: Vec<(&str, QoS)> = Vec::new();
    for (filter, qos) in filters {
        match all.iter_mut().find(|(f, _)| *f == filter) {
            Some((_, known)) if qos > *known => *known = qos,
            Some(_) => {}
            None => all.push((filter, qos)),
        }
    }
    let mut kept: Vec<(String, QoS)> = Vec::new();
    for (filter, _) in &all {
        if all
            .iter()
            .any(|(other, _)| other != filter && topic::covers(other, filter))
        {
            continue;
        }
        let qos = all
            .iter()
            .filter(|(other, _)| topic::covers(filter, other))
            .map(|(_, qos)| *qos)
            .fold(QoS::AtMostOnce, |a, b| if b > a { b } else { a });
        kept.push(((*filter).to_owned(), qos));
    }
    kept
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        if let Some(task) = self.task.borrow_mut().take() {
            task.abort();
        }
    }
}

fn options(settings: &BrokerSettings, password: Option<String>) -> MqttOptions {
    let client_id = settings.client_id.clone().unwrap_or_else(|| {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        format!("sepl-connector-{}-{n}", std::process::id())
    });
    let mut options = MqttOptions::new(client_id, settings.host.clone(), settings.port);
    options
        .set_keep_alive(Duration::from_secs(settings.keep_alive_s))
        .set_clean_session(settings.clean_session)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(user) = &settings.user {
        options.set_credentials(user.clone(), password.unwrap_or_default());
    }
    if settings.tls {
        let config = connector_core::tls::for_plugins().rustls_config();
        options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config)));
    }
    options
}

/// Drives the connection: messages in, requests out, pings; after an error
/// it waits a back-off and connects again. Ends with the last device.
async fn run(mut eventloop: EventLoop, broker: Weak<Broker>) {
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
    let mut failures: u32 = 0;
    loop {
        let event = eventloop.poll().await;
        let Some(broker) = broker.upgrade() else { return };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(broker = %broker.label, "connected to the MQTT broker");
                broker.connected.set(true);
                backoff.reset();
                failures = 0;
                broker.subscribe_all();
            }
            Ok(Event::Incoming(Packet::Publish(message))) => broker.deliver(&message.topic, &message.payload),
            Ok(_) => {}
            Err(e) => {
                let was_connected = broker.connected.replace(false);
                let delay = backoff.next_delay();
                failures += 1;
                let why = describe(&e);
                if was_connected {
                    warn!(broker = %broker.label, "lost the MQTT broker ({why}); connecting again");
                } else if failures == 1 {
                    warn!(broker = %broker.label, "cannot reach the MQTT broker ({why}); trying again with back-off");
                } else {
                    debug!(broker = %broker.label, failures, "still cannot reach the MQTT broker ({why})");
                }
                drop(broker);
                actix_rt::time::sleep(delay).await;
            }
        }
    }
}

fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => format!("the broker refused the connection: {code:?}"),
        other => other.to_string(),
    }
}
