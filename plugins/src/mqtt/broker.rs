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
    /// with the id returned; subscribes the filter if it is new.
    pub fn add(&self, filter: &str, qos: QoS, first: bool, handler: Handler) -> u64 {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let known = self.routes.borrow().iter().any(|r| r.filter == filter && r.qos >= qos);
        self.routes.borrow_mut().push(Route {
            id,
            filter: filter.to_owned(),
            qos,
            first,
            handler,
        });
        // While disconnected the next connect subscribes everything.
        if !known && self.is_connected() {
            if let Err(e) = self.client.try_subscribe(filter, qos) {
                warn!(broker = %self.label, "cannot subscribe {filter}: {e}");
            }
        }
        id
    }

    /// Ends the routes of `ids`; a filter no route uses any more is
    /// unsubscribed.
    pub fn remove(&self, ids: &[u64]) {
        let mut gone = Vec::new();
        self.routes.borrow_mut().retain(|route| {
            let keep = !ids.contains(&route.id);
            if !keep {
                gone.push(route.filter.clone());
            }
            keep
        });
        gone.sort();
        gone.dedup();
        for filter in gone {
            let used = self.routes.borrow().iter().any(|route| route.filter == filter);
            if !used && self.is_connected() {
                let _ = self.client.try_unsubscribe(filter);
            }
        }
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

    fn subscribe_all(&self) {
        let mut filters: Vec<(String, QoS)> = Vec::new();
        for route in self.routes.borrow().iter() {
            match filters.iter_mut().find(|(filter, _)| *filter == route.filter) {
                Some((_, qos)) => {
                    if route.qos > *qos {
                        *qos = route.qos;
                    }
                }
                None => filters.push((route.filter.clone(), route.qos)),
            }
        }
        for (filter, qos) in filters {
            if let Err(e) = self.client.try_subscribe(&filter, qos) {
                warn!(broker = %self.label, "cannot subscribe {filter}: {e}");
            }
        }
    }
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
