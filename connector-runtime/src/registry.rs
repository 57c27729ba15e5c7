//! [`RegistryActor`] tracks the devices: it (un)registers them with the
//! platform over HTTP (PROTOCOL.md section 6), sends `update` after each
//! success, retries failures with back-off, and routes each incoming command
//! to its device by `device_id`.
//!
//! Every device is registered again, in one batch, after each new session:
//! the platform may have forgotten them while the link was down.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use connector_core::backoff::Backoff;
use connector_core::http::HttpClient;
use connector_core::registration::{self, Outcome};
use connector_core::tls::TlsSettings;
use connector_core::{Credentials, Device, Message as PlatformMessage};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::device::{error_reply, DeviceActor, DeviceCommand, Mailbox, StopDevice, MAILBOX_CAPACITY};
use crate::lifecycle::{Events, Lifecycle, Stats};
use crate::outbox::{Frame, OutboxHandle};

/// Most devices in one registration request: 100,000 devices in one body
/// are about 5 MB, more than a platform (the simulator: 4 MiB) may accept.
/// The rest follow in further requests, one after the other.
const REGISTER_BATCH: usize = 10_000;

/// What the registry needs from the config.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub registration_path: String,
    /// What TLS trusts (the config's `ca_file`); the registry builds its HTTP
    /// client from it on its own thread, as awc clients stay on theirs.
    pub tls: TlsSettings,
    pub credentials: Credentials,
    pub backoff_initial: std::time::Duration,
    pub backoff_max: std::time::Duration,
}

/// Where a device's commands go.
#[derive(Clone)]
pub enum Route {
    /// A device actor driven by a plugin.
    Actor(Addr<DeviceActor>),
    /// A device the embedding program handles itself through `receive()`.
    Program,
}

/// A session is up; `http_base` is where registration goes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkUp {
    pub http_base: String,
}

/// The session is gone; registration waits for the next one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkDown;

/// The platform settings changed (a reload): the session is going away and
/// the next one, on the new settings, registers every device again with them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relink(pub RegistrySettings);

/// A command frame from the platform, to be routed by its `device_id`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct IncomingCommand(pub PlatformMessage);

/// Adds a device and registers it with the platform as soon as it can.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct AddDevice {
    pub device: Device,
    pub route: Route,
}

/// Removes a device: its actor is stopped and it is unregistered.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct RemoveDevice {
    pub id: String,
}

/// Removes a device (if it is there) and adds its successor under the same
/// id in one step (a reload that changed it), so no command for the id finds
/// it missing in between: each goes to the old actor or the new one. The new
/// actor, not yet started, creates its plugin once the old one's is gone.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct ReplaceDevice {
    pub device: Device,
    pub actor: DeviceActor,
}

/// Stops every device actor (for shutdown); answers once they are told.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

/// Asks for the devices and whether each is registered right now.
#[derive(Message)]
#[rtype(result = "Vec<DeviceStatus>")]
pub struct ListDevices;

/// One device as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub device: Device,
    pub registered: bool,
    /// Handled by the embedding program rather than a plugin.
    pub program: bool,
}

/// Why a device could not be added or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("a device with id {0:?} is already registered")]
    Duplicate(String),
    #[error("no device with id {0:?}")]
    Unknown(String),
    #[error("a device id must not be empty")]
    EmptyId,
}

struct Entry {
    /// Shared with the requests and queues that name the device, so a batch
    /// of 10,000 registrations copies pointers, not strings.
    device: Arc<Device>,
    route: Route,
    registered: bool,
    /// The bound on the commands waiting for a device actor.
    mailbox: Mailbox,
}

/// Which request is under way, so its answer is applied to the right state.
enum Job {
    Register(Vec<Arc<Device>>),
    Unregister(Arc<Device>),
}

/// Tracks and (un)registers devices; see the module docs.
pub struct RegistryActor {
    settings: RegistrySettings,
    /// Built from `settings.tls`, anew when the settings change.
    http: HttpClient,
    outbox: OutboxHandle,
    events: Events,
    devices: BTreeMap<String, Entry>,
    /// Removed devices still to be unregistered, in the order they were removed.
    unregister_queue: VecDeque<Arc<Device>>,
    /// Commands for devices the program handles itself, read by `receive()`.
    program_commands: mpsc::Sender<PlatformMessage>,
    http_base: Option<String>,
    /// The (un)registration request under way, if any; a link change
    /// cancels it, so an answer is always about the current session.
    request: Option<SpawnHandle>,
    /// The timer of a retry after a failure; a new session cancels it, since
    /// the failure may have been the old session's.
    retry: Option<SpawnHandle>,
    backoff: Backoff,
    /// Commands a device actor may have waiting; see [`Mailbox`].
    mailbox_capacity: usize,
    /// Set by [`StopAll`]: the devices are stopping, and a command for one
    /// would be dropped unhandled with its actor, so it is answered here.
    stopping: bool,
}

impl RegistryActor {
    pub fn new(
        settings: RegistrySettings,
        outbox: OutboxHandle,
        events: Events,
        program_commands: mpsc::Sender<PlatformMessage>,
    ) -> Self {
        let backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
        RegistryActor {
            http: registration_client(&settings.tls),
            settings,
            outbox,
            events,
            devices: BTreeMap::new(),
            unregister_queue: VecDeque::new(),
            program_commands,
            http_base: None,
            request: None,
            retry: None,
            backoff,
            mailbox_capacity: MAILBOX_CAPACITY,
            stopping: false,
        }
    }

    /// Bounds each device's waiting commands at `capacity` (at least 1)
    /// instead of [`MAILBOX_CAPACITY`].
    pub fn with_mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity.max(1);
        self
    }

    /// Starts the next (un)registration if the link is up and none is running:
    /// queued unregistrations first, then one batch of all unregistered devices.
    fn sync(&mut self, ctx: &mut Context<Self>) {
        if self.request.is_some() || self.retry.is_some() {
            return;
        }
        let Some(base) = self.http_base.clone() else { return };
        let job = if let Some(device) = self.unregister_queue.front() {
            Job::Unregister(device.clone())
        } else {
            let batch: Vec<Arc<Device>> = self
                .devices
                .values()
                .filter(|e| !e.registered)
                .take(REGISTER_BATCH)
                .map(|e| e.device.clone())
                .collect();
            if batch.is_empty() {
                return;
            }
            Job::Register(batch)
        };
        let (path, credentials) = (&self.settings.registration_path, &self.settings.credentials);
        let request = match &job {
            Job::Register(batch) => self.http.post(
                registration::register_url(&base, path),
                registration::register_body(credentials, batch),
            ),
            Job::Unregister(device) => self
                .http
                .delete(registration::unregister_url(&base, path, &device.id))
                .body(registration::unregister_body(credentials)),
        }
        .header("Content-Type", "application/json");
        let unregister = matches!(job, Job::Unregister(_));
        let password = credentials.password.clone();
        let answer = async move {
            match request.send().await {
                Ok(response) => match registration::outcome(response.status, unregister) {
                    Outcome::Done => Ok(()),
                    Outcome::CredentialsRefused => {
                        Err((true, format!("credentials refused (HTTP {})", response.status)))
                    }
                    Outcome::Retry => {
                        let body = answer_excerpt(&response.body, password.expose());
                        Err((false, format!("HTTP {}: {body}", response.status)))
                    }
                },
                Err(e) => Err((false, e.to_string())),
            }
        };
        self.request = Some(ctx.spawn(answer.into_actor(self).map(move |result, act, ctx| {
            act.request = None;
            match result {
                Ok(()) => act.job_done(job),
                Err((refused, reason)) => act.job_failed(job, refused, reason, ctx),
            }
            act.sync(ctx);
        })));
    }

    /// A session came up (`Some(http_base)`) or went away (`None`). The
    /// request and retry of the previous session are abandoned: their answer
    /// would be about a session that is gone, and a request to a platform
    /// that went away may hang until its time-out and hold up the new one.
    /// What they were doing is done again: without a session nothing is known
    /// to be registered (the platform may forget devices meanwhile, and
    /// `devices()` must not keep reporting them), and a removal stays queued
    /// until it succeeds.
    fn link_changed(&mut self, http_base: Option<String>, ctx: &mut Context<Self>) {
        if let Some(request) = self.request.take() {
            ctx.cancel_future(request);
        }
        if let Some(retry) = self.retry.take() {
            ctx.cancel_future(retry);
        }
        self.http_base = http_base;
        for entry in self.devices.values_mut() {
            entry.registered = false;
        }
        self.sync(ctx);
    }

    fn job_done(&mut self, job: Job) {
        self.backoff.reset();
        crate::device::enqueue_frame(&self.outbox, &self.events, Frame::update());
        match job {
            Job::Register(batch) => {
                for device in &batch {
                    // Only the entry this request was about: one removed and
                    // added again meanwhile is a new entry, whose id the
                    // queued unregistration is about to remove from the
                    // platform, so it still has to be registered after that.
                    if let Some(entry) = self
                        .devices
                        .get_mut(&device.id)
                        .filter(|e| Arc::ptr_eq(&e.device, device))
                    {
                        entry.registered = true;
                    }
                }
                let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
                info!(devices = ids.len(), "devices registered");
                self.events.publish(Lifecycle::RegistrationSucceeded { devices: ids });
            }
            Job::Unregister(device) => {
                self.unregister_queue.pop_front();
                info!(device_id = %device.id, "device unregistered");
                self.events.publish(Lifecycle::UnregistrationSucceeded {
                    device: device.id.clone(),
                });
            }
        }
    }

    fn job_failed(&mut self, job: Job, refused: bool, reason: String, ctx: &mut Context<Self>) {
        Stats::bump(&self.events.stats.registration_failures);
        let delay = self.backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        match job {
            Job::Register(batch) => {
                let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
                warn!(devices = ids.len(), %reason, retry_in_ms, "device registration failed");
                self.events.publish(Lifecycle::RegistrationFailed {
                    devices: ids,
                    reason: reason.clone(),
                });
            }
            Job::Unregister(device) => {
                warn!(device_id = %device.id, %reason, retry_in_ms, "device unregistration failed");
                self.events.publish(Lifecycle::UnregistrationFailed {
                    device: device.id.clone(),
                    reason: reason.clone(),
                });
            }
        }
        if refused {
            error!(user = %self.settings.credentials.user, "the platform refused the credentials for registration");
            self.events.publish(Lifecycle::CredentialsRefused {
                context: format!("registration: {reason}"),
            });
        }
        self.retry = Some(ctx.run_later(delay, |act, ctx| {
            act.retry = None;
            act.sync(ctx);
        }));
    }
}

/// The HTTP client for (un)registration requests.
fn registration_client(tls: &TlsSettings) -> HttpClient {
    HttpClient::from_awc(tls.awc_client(crate::connection::HANDSHAKE_TIMEOUT))
}

/// The start of a refusing answer's body for the log, with the password cut
/// out: a platform's error page may echo the request, credentials included.
fn answer_excerpt(body: &str, password: &str) -> String {
    let redacted = if password.is_empty() {
        body.trim().to_owned()
    } else {
        body.trim().replace(password, "***")
    };
    connector_core::codec::excerpt(redacted.as_bytes())
}

impl Actor for RegistryActor {
    type Context = Context<Self>;
}

impl Handler<LinkUp> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: LinkUp, ctx: &mut Self::Context) {
        self.link_changed(Some(msg.http_base), ctx);
    }
}

impl Handler<Relink> for RegistryActor {
    type Result = ();

    fn handle(&mut self, Relink(settings): Relink, ctx: &mut Self::Context) {
        self.backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
        self.http = registration_client(&settings.tls);
        self.settings = settings;
        // What is under way belongs to the old platform.
        self.link_changed(None, ctx);
    }
}

impl Handler<LinkDown> for RegistryActor {
    type Result = ();

    fn handle(&mut self, _: LinkDown, ctx: &mut Self::Context) {
        self.link_changed(None, ctx);
    }
}

impl Handler<IncomingCommand> for RegistryActor {
    type Result = ();

    fn handle(&mut self, IncomingCommand(command): IncomingCommand, _ctx: &mut Self::Context) {
        match self.devices.get(&command.device_id).map(|e| (&e.route, &e.mailbox)) {
            Some((Route::Actor(_), _)) if self.stopping => {
                let reason = format!("device {} is stopping: the connector shuts down", command.device_id);
                crate::device::enqueue(&self.outbox, &self.events, &error_reply(&command, &reason));
            }
            Some((Route::Actor(addr), mailbox)) => match mailbox.try_reserve() {
                Some(slot) => {
                    let stats = &self.events.stats;
                    stats
                        .mailbox_peak
                        .fetch_max(mailbox.pending() as u64, std::sync::atomic::Ordering::Relaxed);
                    addr.do_send(DeviceCommand(command, slot));
                }
                None => {
                    // Refused, never silently lost: the task gets an answer.
                    Stats::bump(&self.events.stats.commands_refused);
                    warn!(
                        device_id = %command.device_id,
                        task_id = %command.task_id,
                        capacity = mailbox.capacity(),
                        "device busy: its mailbox is full; command answered with an error"
                    );
                    let reason = format!(
                        "device {} is busy ({} commands waiting); command refused",
                        command.device_id,
                        mailbox.capacity()
                    );
                    crate::device::enqueue(&self.outbox, &self.events, &error_reply(&command, &reason));
                }
            },
            Some((Route::Program, _)) => {
                if let Err(e) = self.program_commands.try_send(command) {
                    let command = match e {
                        mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
                    };
                    Stats::bump(&self.events.stats.plugin_errors);
                    warn!(device_id = %command.device_id, task_id = %command.task_id, "the program is not taking commands (queue full or closed); answered with an error");
                    let reply = error_reply(&command, "the connector's program is not taking commands");
                    crate::device::enqueue(&self.outbox, &self.events, &reply);
                }
            }
            None => {
                Stats::bump(&self.events.stats.unknown_device_commands);
                warn!(
                    device_id = %command.device_id,
                    task_id = %command.task_id,
                    endpoint = %command.endpoint,
                    "dropped a command for an unknown device"
                );
            }
        }
    }
}

impl RegistryActor {
    fn add(&mut self, device: Device, route: Route) -> Result<(), RegistryError> {
        if device.id.is_empty() {
            return Err(RegistryError::EmptyId);
        }
        if self.devices.contains_key(&device.id) {
            return Err(RegistryError::Duplicate(device.id));
        }
        debug!(device_id = %device.id, "device added");
        self.devices.insert(
            device.id.clone(),
            Entry {
                device: Arc::new(device),
                route,
                registered: false,
                mailbox: Mailbox::new(self.mailbox_capacity),
            },
        );
        Ok(())
    }

    /// Takes the device out and queues its unregistration; its route is
    /// returned for the caller to stop.
    fn remove(&mut self, id: &str) -> Result<Route, RegistryError> {
        let entry = self
            .devices
            .remove(id)
            .ok_or_else(|| RegistryError::Unknown(id.to_owned()))?;
        self.unregister_queue.push_back(entry.device);
        Ok(entry.route)
    }
}

impl Handler<AddDevice> for RegistryActor {
    type Result = Result<(), RegistryError>;

    fn handle(&mut self, msg: AddDevice, ctx: &mut Self::Context) -> Self::Result {
        self.add(msg.device, msg.route)?;
        self.sync(ctx);
        Ok(())
    }
}

impl Handler<RemoveDevice> for RegistryActor {
    type Result = Result<(), RegistryError>;

    fn handle(&mut self, msg: RemoveDevice, ctx: &mut Self::Context) -> Self::Result {
        if let Route::Actor(addr) = self.remove(&msg.id)? {
            addr.do_send(StopDevice);
        }
        self.sync(ctx);
        Ok(())
    }
}

impl Handler<ReplaceDevice> for RegistryActor {
    type Result = Result<(), RegistryError>;

    fn handle(&mut self, msg: ReplaceDevice, ctx: &mut Self::Context) -> Self::Result {
        if msg.device.id.is_empty() {
            // Before the new actor starts, so a refusal leaves nothing behind.
            return Err(RegistryError::EmptyId);
        }
        let stopped = match self.remove(&msg.device.id) {
            Ok(Route::Actor(old)) => Some(old.send(StopDevice)),
            Ok(Route::Program) => None,
            Err(_) => {
                debug!(device_id = %msg.device.id, "replaced a device that was not running: added");
                None
            }
        };
        let actor = msg.actor.start_after(async move {
            if let Some(stopped) = stopped {
                // An error means the old actor is gone already: as good.
                let _ = stopped.await;
            }
        });
        self.add(msg.device, Route::Actor(actor))?;
        self.sync(ctx);
        Ok(())
    }
}

impl Handler<StopAll> for RegistryActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopAll, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let stops: Vec<_> = self
            .devices
            .values()
            .filter_map(|e| match &e.route {
                Route::Actor(addr) => Some(addr.send(StopDevice)),
                Route::Program => None,
            })
            .collect();
        Box::pin(async move {
            for stop in stops {
                let _ = stop.await;
            }
        })
    }
}

impl Handler<ListDevices> for RegistryActor {
    type Result = MessageResult<ListDevices>;

    fn handle(&mut self, _: ListDevices, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.devices
                .values()
                .map(|e| DeviceStatus {
                    device: Device::clone(&e.device),
                    registered: e.registered,
                    program: matches!(e.route, Route::Program),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::answer_excerpt;

    #[test]
    fn a_refusing_answer_is_shortened_and_never_echoes_the_password() {
        let body = format!("bad request: {{\"pw\": \"hunter2\"}} {}", "x".repeat(500));
        let shown = answer_excerpt(&body, "hunter2");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.starts_with("bad request: {\"pw\": \"***\"}"), "{shown}");
        assert!(shown.chars().count() < 100, "{shown}");
        assert_eq!(answer_excerpt(" down ", ""), "down");
    }
}
