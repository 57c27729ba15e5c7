//! [`Connector`]: the library API, the seed's `Connector` in Rust form. Start
//! it from a [`Config`], then `send`, `receive`, `register`, `unregister` and
//! `subscribe`; the actors behind it keep the link alive.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use connector_core::config::{Config, DeviceConfig};
use connector_core::plugin::{DeviceSpec, PluginError, PluginRegistry};
use connector_core::tls::TlsSettings;
use connector_core::{Device, Message as PlatformMessage};
use tokio::sync::{broadcast, mpsc};
use tracing::{error, info, warn};

use crate::connection::{ConnectionActor, LinkSettings, Shutdown};
use crate::device::{enqueue, DeviceActor, DeviceShared};
use crate::lifecycle::{Events, Lifecycle, Stats};
use crate::outbox::{Outbox, OutboxHandle};
use crate::pool::PluginPool;
use crate::registry::{
    AddDevice, DeviceStatus, ListDevices, RegistryActor, RegistryError, RegistrySettings, Relink, RemoveDevice,
    ReplaceDevice, Route, StopAll,
};
use crate::reload::{self, ReloadError, ReloadReport};

/// How many commands for program-handled devices wait for `receive()` before
/// further ones are answered with an error.
const PROGRAM_QUEUE: usize = 10_000;
/// How long a shutdown waits for the buffer to drain by default.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the plugins of a reload (or `--check`) may take to check every
/// device's settings before the check is given up and the reload refused.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] connector_core::config::ConfigError),
    /// `platform.ca_file` is missing, unreadable or holds no usable CA.
    #[error(transparent)]
    Tls(#[from] connector_core::tls::TlsError),
    #[error("{0}")]
    Plugin(#[from] PluginError),
    /// A library of `plugins:` is missing, malformed, or clashes by name.
    #[error(transparent)]
    PluginLibraries(#[from] crate::loader::LoadErrors),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the runtime stopped while starting: {0}")]
    Mailbox(#[from] MailboxError),
    /// The threads for plugin calls could not be made.
    #[error("cannot start the plugin pool ({threads} threads): {source}")]
    Pool {
        threads: usize,
        #[source]
        source: rayon_core::ThreadPoolBuildError,
    },
    /// The persistent outbox (`platform.buffer.path`) cannot be opened.
    #[error(transparent)]
    Buffer(#[from] crate::outbox::JournalError),
}

/// Why `send` did not accept a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the outgoing buffer is full and its policy is drop_newest; the message was dropped")]
    BufferFull,
}

/// A running connector. Must be created inside an actix system (for example
/// under `#[actix_rt::main]`); its methods may be called from any task.
pub struct Connector {
    /// The registry, the outgoing buffer and the events: what the connector
    /// works through, and what [`Connector::status`] hands out.
    shared: StatusSource,
    commands: tokio::sync::Mutex<mpsc::Receiver<PlatformMessage>>,
    /// The plugins devices are started with (also on a reload), and the
    /// pool their calls run on.
    devices: Arc<DeviceShared>,
    /// The config and link running now; the lock keeps reloads one at a time.
    running: tokio::sync::Mutex<Running>,
}

/// What a reload replaces.
struct Running {
    config: Config,
    /// A reload that changes the platform settings starts a new one. Shared
    /// with that reload's task, which puts the new link here even if the
    /// reload's caller stops waiting half-way.
    connection: Arc<std::sync::Mutex<Addr<ConnectionActor>>>,
    /// The task applying the last reload, while it runs. Awaited in place
    /// (never taken out first), so a waiter dropped half-way leaves it here
    /// for the next one.
    applying: Option<actix_rt::task::JoinHandle<Result<NotAdded, ReloadError>>>,
}

/// Devices a reload's task could not add (a program registered the id after
/// the reload's check), each with the reason.
type NotAdded = Vec<(String, String)>;

impl Running {
    /// Waits for a reload whose caller stopped waiting to finish applying.
    /// Its failure is logged, not passed to this caller, whose own work
    /// (a shutdown, say) must go on.
    async fn settle(&mut self) {
        let Some(applying) = self.applying.as_mut() else { return };
        let outcome = applying.await;
        self.applying = None;
        let outcome = match outcome {
            Err(e) if e.is_panic() => {
                error!("an earlier reload panicked while applying; its devices may be in part the old ones");
                return;
            }
            other => other,
        };
        if let Err(e) = self.applied(outcome) {
            warn!(error = %e, "an earlier reload did not finish applying");
        }
    }

    /// Takes in what a reload's task did: a device it could not add leaves
    /// the running config, so the next reload tries it again.
    fn applied(
        &mut self,
        outcome: Result<Result<NotAdded, ReloadError>, actix_rt::task::JoinError>,
    ) -> Result<(), ReloadError> {
        let not_added = match outcome {
            Ok(result) => result?,
            Err(_) => return Err(ReloadError::Mailbox(actix::MailboxError::Closed)),
        };
        if not_added.is_empty() {
            return Ok(());
        }
        self.config
            .devices
            .retain(|d| !not_added.iter().any(|(id, _)| *id == d.id));
        Err(ReloadError::Devices(
            not_added.into_iter().map(|(_, why)| why).collect(),
        ))
    }
}

/// A checked reload, to be applied by a task of its own.
struct Plan {
    relink: Option<(LinkSettings, RegistrySettings)>,
    /// Ids: a removed device needs no more than that.
    removed: Vec<String>,
    changed: Vec<DeviceConfig>,
    added: Vec<DeviceConfig>,
}

impl Plan {
    fn report(&self) -> ReloadReport {
        let ids = |list: &[DeviceConfig]| list.iter().map(|d| d.id.clone()).collect();
        ReloadReport {
            added: ids(&self.added),
            removed: self.removed.clone(),
            changed: ids(&self.changed),
            reconnected: self.relink.is_some(),
        }
    }

    async fn apply(
        self,
        connection: Arc<std::sync::Mutex<Addr<ConnectionActor>>>,
        shared: StatusSource,
        devices: Arc<DeviceShared>,
    ) -> Result<NotAdded, ReloadError> {
        if let Some((link, registry_settings)) = self.relink {
            info!(lookup_url = %connector_core::http::redact_userinfo(&link.lookup_url), "reload: the platform settings changed; reconnecting");
            hand_over(connection, link, registry_settings, &shared).await?;
        }
        for id in self.removed {
            if let Err(e) = shared.registry.send(RemoveDevice { id: id.clone() }).await? {
                warn!(device_id = %id, error = %e, "reload: the device was not running");
            }
        }
        let actor = |device: &DeviceConfig| DeviceActor::new(DeviceSpec::from(device), devices.clone());
        for device in &self.changed {
            // One step, so no command for the device finds its id missing.
            let replace = ReplaceDevice {
                device: device.device(),
                actor: actor(device),
            };
            shared.registry.send(replace).await??;
        }
        let mut not_added = NotAdded::new();
        for device in &self.added {
            let add = AddDevice {
                device: device.device(),
                route: Route::Actor(actor(device).start()),
            };
            // The others are still added: one clash must not strand them.
            if let Err(e) = shared.registry.send(add).await? {
                warn!(device_id = %device.id, error = %e, "reload: the device could not be added");
                not_added.push((device.id.clone(), format!("device {:?}: {e}", device.id)));
            }
        }
        Ok(not_added)
    }
}

/// Starts a [`Connector`] with the built-in plugins plus any added here.
pub struct ConnectorBuilder {
    config: Config,
    plugins: PluginRegistry,
    device_mailbox: usize,
}

impl ConnectorBuilder {
    /// Adds a compiled-in plugin under `name`, for the config's `plugin:` key.
    pub fn plugin(mut self, name: impl Into<String>, factory: impl connector_core::plugin::PluginFactory) -> Self {
        self.plugins.register(name, factory);
        self
    }

    /// Adds a compiled-in [`AsyncDevicePlugin`](connector_core::plugin::AsyncDevicePlugin)
    /// under `name`: `factory` makes one instance per device, and every
    /// instance runs on the async plugins' thread (see [`crate::async_plugin`]).
    pub fn async_plugin<P, F>(self, name: impl Into<String>, factory: F) -> Self
    where
        P: connector_core::plugin::AsyncDevicePlugin,
        F: Fn(&DeviceSpec) -> Result<P, PluginError> + Send + Sync + 'static,
    {
        self.plugin(name, crate::async_plugin::async_factory(factory))
    }

    /// How many commands each device may have waiting before further ones
    /// are refused with an error reply (default
    /// [`MAILBOX_CAPACITY`](crate::device::MAILBOX_CAPACITY); at least 1).
    pub fn device_mailbox(mut self, capacity: usize) -> Self {
        self.device_mailbox = capacity;
        self
    }

    /// Replaces the whole set of plugins.
    pub fn plugins(mut self, plugins: PluginRegistry) -> Self {
        self.plugins = plugins;
        self
    }

    /// Checks the config, loads its plugin libraries, starts the link and one
    /// actor per configured device. Every device's plugin must be known
    /// before anything starts.
    pub async fn start(self) -> Result<Connector, StartError> {
        let ConnectorBuilder {
            config,
            mut plugins,
            device_mailbox,
        } = self;
        config.validate()?;
        // Libraries join the compiled-in plugins; each file is opened once per process.
        crate::loader::register_libraries(&mut plugins, &config.plugins)?;
        let specs: Vec<DeviceSpec> = config.devices.iter().map(DeviceSpec::from).collect();
        if let Some(unknown) = specs.iter().find_map(|spec| unknown_plugin(&plugins, spec)) {
            return Err(PluginError::new(unknown).into());
        }
        // Before any actor starts, so a broken CA file stops the start.
        let (link, registry_settings) = link_settings(&config)?;
        let events = Events::new();
        let outbox = open_outbox(&config.platform.buffer, &events)?;
        let (program_tx, program_rx) = mpsc::channel(PROGRAM_QUEUE);
        let pool = PluginPool::new(config.plugin_threads).map_err(|source| StartError::Pool {
            threads: config.plugin_threads,
            source,
        })?;
        let registry = RegistryActor::new(registry_settings, outbox.clone(), events.clone(), program_tx)
            .with_mailbox_capacity(device_mailbox)
            .start();
        let devices = Arc::new(DeviceShared::new(
            Arc::new(plugins),
            outbox.clone(),
            events.clone(),
            Arc::new(pool),
        ));
        for spec in specs {
            let device = spec.device.clone();
            let actor = DeviceActor::new(spec, devices.clone()).start();
            registry
                .send(AddDevice {
                    device,
                    route: Route::Actor(actor),
                })
                .await??;
        }
        let connection = ConnectionActor::new(link, outbox.clone(), events.clone(), registry.clone()).start();
        info!(devices = config.devices.len(), "connector started");
        Ok(Connector {
            shared: StatusSource {
                registry,
                outbox,
                events,
            },
            commands: tokio::sync::Mutex::new(program_rx),
            devices,
            running: tokio::sync::Mutex::new(Running {
                config,
                connection: Arc::new(std::sync::Mutex::new(connection)),
                applying: None,
            }),
        })
    }
}

/// A reload's change of platform: the old link closes first (its last batch
/// is written, then the close handshake) so frames never overtake each other
/// across the two sessions; only then does the registry get the new settings,
/// so no registration goes to the old platform; and the new link drains the
/// same buffer.
async fn hand_over(
    slot: Arc<std::sync::Mutex<Addr<ConnectionActor>>>,
    link: LinkSettings,
    registry_settings: RegistrySettings,
    shared: &StatusSource,
) -> Result<(), actix::MailboxError> {
    let old = lock(&slot).clone();
    let _ = old
        .send(Shutdown {
            flush_timeout: Duration::ZERO,
            handover: true,
        })
        .await;
    shared.registry.send(Relink(registry_settings)).await?;
    let new = ConnectionActor::new(
        link,
        shared.outbox.clone(),
        shared.events.clone(),
        shared.registry.clone(),
    );
    *lock(&slot) = new.start();
    Ok(())
}

/// The slot's lock; a panic while it was held leaves a valid address.
fn lock<T>(slot: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The link's and the registry's settings from a checked config; both trust
/// what the config's TLS settings say. Fails if `platform.ca_file` is unusable.
fn link_settings(config: &Config) -> Result<(LinkSettings, RegistrySettings), connector_core::tls::TlsError> {
    let platform = &config.platform;
    let tls = TlsSettings::load(platform.ca_file.as_deref())?;
    connector_core::tls::set_for_plugins(tls.clone());
    let registry = RegistrySettings {
        registration_path: config.registration_path().to_owned(),
        tls: tls.clone(),
        credentials: config.credentials(),
        backoff_initial: platform.backoff.initial(),
        backoff_max: platform.backoff.max(),
    };
    let link = LinkSettings {
        lookup_url: config.lookup_url(),
        https: platform.https,
        tls,
        credentials: config.credentials(),
        ping_interval: platform.ping_interval(),
        pong_timeout: platform.pong_timeout(),
        max_frame_bytes: platform.max_frame_bytes,
        backoff_initial: platform.backoff.initial(),
        backoff_max: platform.backoff.max(),
    };
    Ok((link, registry))
}

/// `" (declared at line N)"` for a device read from a file, for messages.
fn origin(spec: &DeviceSpec) -> String {
    spec.origin.as_deref().map(|o| format!(" ({o})")).unwrap_or_default()
}

/// Why the device cannot start if `plugins` lacks its plugin (listing the
/// known ones); `None` when it is there.
fn unknown_plugin(plugins: &PluginRegistry, spec: &DeviceSpec) -> Option<String> {
    if plugins.contains(&spec.plugin) {
        return None;
    }
    let known: Vec<&str> = plugins.names().collect();
    Some(format!(
        "device {:?}{}: no plugin named {:?} (known: {})",
        spec.id(),
        origin(spec),
        spec.plugin,
        known.join(", ")
    ))
}

/// Whether `plugins` has the device's plugin and it takes the settings.
fn check_plugin(plugins: &PluginRegistry, spec: &DeviceSpec) -> Result<(), String> {
    if let Some(unknown) = unknown_plugin(plugins, spec) {
        return Err(unknown);
    }
    plugins
        .check_settings(spec)
        .map_err(|e| format!("device {:?}{}: {e}", spec.id(), origin(spec)))
}

/// A settings check of many devices as one job, to run off the caller's
/// thread (plugin code: a factory may block). `check` gives each item's
/// problem (any type a message turns into, so a caller can place it); the
/// job notes `label` of the item it is at, so that a check given up after a
/// time-out can name it.
pub struct SettingsCheck<J> {
    job: J,
    current: Arc<std::sync::Mutex<String>>,
}

impl SettingsCheck<()> {
    pub fn new<T: Send + 'static, P: Send + 'static>(
        items: Vec<T>,
        label: impl Fn(&T) -> String + Send + 'static,
        check: impl Fn(&T) -> Option<P> + Send + 'static,
    ) -> SettingsCheck<impl FnOnce() -> Vec<P> + Send + 'static> {
        let current = Arc::new(std::sync::Mutex::new(String::new()));
        let at = current.clone();
        let job = move || {
            items
                .iter()
                .filter_map(|item| {
                    *lock(&at) = label(item);
                    check(item)
                })
                .collect()
        };
        SettingsCheck { job, current }
    }
}

impl<P, J> SettingsCheck<J>
where
    P: From<String> + Send + 'static,
    J: FnOnce() -> Vec<P> + Send + 'static,
{
    /// The problem to report when the check did not finish within `limit`.
    fn given_up(current: &std::sync::Mutex<String>, limit: Duration) -> String {
        format!(
            "{}: its plugin did not finish checking the settings within {} s; the check was given up",
            lock(current),
            limit.as_secs()
        )
    }

    /// Runs the check on a thread of its own and waits at most `limit`:
    /// for `--check` and a SIGHUP reload, which have no pool at hand.
    pub fn on_thread(self, limit: Duration) -> Vec<P> {
        let (tx, rx) = std::sync::mpsc::channel();
        let job = self.job;
        let spawned = std::thread::Builder::new()
            .name("settings-check".into())
            .spawn(move || {
                let _ = tx.send(job());
            });
        if let Err(e) = spawned {
            return vec![format!("cannot start the settings check: {e}").into()];
        }
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| vec![Self::given_up(&self.current, limit).into()])
    }

    /// Runs the check on the plugin pool and waits at most `limit`.
    async fn on_pool(self, pool: &PluginPool, limit: Duration) -> Vec<P> {
        match tokio::time::timeout(limit, pool.run(self.job)).await {
            Ok(Ok(problems)) => problems,
            Ok(Err(e)) => vec![format!("the settings check did not run: {e}").into()],
            Err(_) => vec![Self::given_up(&self.current, limit).into()],
        }
    }
}

/// The outgoing buffer: in memory, or on disk too when `buffer.path` is set,
/// then starting with what a previous run left unsent.
fn open_outbox(
    buffer: &connector_core::config::BufferConfig,
    events: &Events,
) -> Result<OutboxHandle, crate::outbox::JournalError> {
    let Some(path) = &buffer.path else {
        return Ok(OutboxHandle::new(Outbox::new(
            buffer.max_frames,
            buffer.max_bytes,
            buffer.overflow,
        )));
    };
    let (outbox, restored) = Outbox::open(buffer.max_frames, buffer.max_bytes, buffer.overflow, path)?;
    info!(path = %path.display(), frames = restored.frames, bytes = restored.bytes, "persistent outbox opened");
    if restored.dropped > 0 {
        events
            .stats
            .frames_dropped
            .fetch_add(restored.dropped, std::sync::atomic::Ordering::Relaxed);
        warn!(
            dropped = restored.dropped,
            policy = %buffer.overflow,
            "frames left by the previous run exceed the buffer's bound; dropped by its policy"
        );
    }
    Ok(OutboxHandle::new(outbox))
}

/// The built-in plugins (`echo`, `generator`, `sysmetrics`, `exec`, and the
/// async `http` and `mqtt` behind the async adapter) every
/// [`Connector::builder`] starts with.
#[cfg(feature = "builtin-plugins")]
pub fn builtin_plugins() -> PluginRegistry {
    crate::async_plugin::with_builtin_async(connector_plugins::builtin())
}

/// No plugins: this build is without the `builtin-plugins` feature.
#[cfg(not(feature = "builtin-plugins"))]
pub fn builtin_plugins() -> PluginRegistry {
    PluginRegistry::new()
}

impl Connector {
    /// A builder with the [built-in plugins](builtin_plugins) (`echo`, ...),
    /// if this build has them (feature `builtin-plugins`, on by default).
    pub fn builder(config: Config) -> ConnectorBuilder {
        ConnectorBuilder {
            config,
            plugins: builtin_plugins(),
            device_mailbox: crate::device::MAILBOX_CAPACITY,
        }
    }

    /// Starts a connector with the [built-in plugins](builtin_plugins).
    pub async fn start(config: Config) -> Result<Connector, StartError> {
        Connector::builder(config).start().await
    }

    /// Sends a message to the platform: a reply when it carries a task id, an
    /// event otherwise. It waits in the buffer while the link is down.
    pub fn send(&self, message: PlatformMessage) -> Result<(), SendError> {
        if enqueue(&self.shared.outbox, &self.shared.events, &message) {
            Ok(())
        } else {
            Err(SendError::BufferFull)
        }
    }

    /// Waits for the next command for a device this program registered with
    /// [`register`](Self::register). `None` once the connector is gone.
    pub async fn receive(&self) -> Option<PlatformMessage> {
        self.commands.lock().await.recv().await
    }

    /// Registers a device this program handles itself: its commands come out
    /// of [`receive`](Self::receive).
    pub async fn register(&self, device: Device) -> Result<(), RegistryError> {
        self.shared
            .registry
            .send(AddDevice {
                device,
                route: Route::Program,
            })
            .await
            .unwrap_or_else(|_| Err(RegistryError::Unknown("(connector stopped)".into())))
    }

    /// Removes a device, whichever way it was added, and unregisters it.
    pub async fn unregister(&self, device: &Device) -> Result<(), RegistryError> {
        self.shared
            .registry
            .send(RemoveDevice { id: device.id.clone() })
            .await
            .unwrap_or_else(|_| Err(RegistryError::Unknown(device.id.clone())))
    }

    /// Applies a new config without a restart (see [`crate::reload`]): added
    /// devices are started and registered, removed ones stopped and
    /// unregistered, changed ones restarted (unregistered and registered again
    /// under the same id); the others keep running. The platform session stays
    /// up unless the `platform:` settings changed: then the link closes and
    /// reconnects with the new ones, the buffer is handed over untouched, and
    /// every device registers again with the new settings.
    ///
    /// A config that fails validation, names an unknown plugin, gives a plugin
    /// settings it refuses, has an unusable `ca_file`, changes
    /// `platform.buffer` or the `plugins:` section, or adds a device whose id
    /// the program registered is refused as a whole and nothing changes.
    ///
    /// Once checked, the config is applied in a task of its own that runs to
    /// its end even if this future is dropped (a caller's time-out); the next
    /// reload or shutdown waits for it. A device that cannot be added then
    /// (the program registered its id meanwhile) does not stop the others; it
    /// is named in the error and left out of the running config, so the next
    /// reload tries it again.
    pub async fn reload(&self, new: Config) -> Result<ReloadReport, ReloadError> {
        let mut running = self.running.lock().await;
        running.settle().await;
        let old = &running.config;
        new.validate()?;
        reload::check_sections(old, &new)?;
        // On the plugin pool: plugin code never runs on the link's thread.
        let specs = new.devices.iter().map(DeviceSpec::from).collect();
        let plugins = self.devices.plugins.clone();
        let check = SettingsCheck::new(
            specs,
            |spec: &DeviceSpec| format!("device {:?}{}", spec.id(), origin(spec)),
            move |spec| check_plugin(&plugins, spec).err(),
        );
        let problems = check.on_pool(&self.devices.pool, CHECK_TIMEOUT).await;
        if !problems.is_empty() {
            return Err(ReloadError::Devices(problems));
        }
        // Built before anything changes, so a broken CA file refuses the reload.
        let relink = if new.platform == old.platform {
            None
        } else {
            Some(link_settings(&new)?)
        };
        if new.metrics != old.metrics || new.log_level != old.log_level || new.log_format != old.log_format {
            warn!("metrics and logging settings are applied on the next restart, not on a reload");
        }
        let diff = reload::diff(&old.devices, &new.devices);
        // The program may have registered an id the file now adds: refused
        // here, before anything changes, rather than half-way through.
        // A set: a reload may add 100,000 devices to as many running ones.
        let program: std::collections::HashSet<String> = if diff.added.is_empty() {
            Default::default()
        } else {
            let devices = self.shared.devices().await;
            devices.into_iter().filter(|r| r.program).map(|r| r.device.id).collect()
        };
        let taken: Vec<String> = diff
            .added
            .iter()
            .filter(|d| program.contains(&d.id))
            .map(|d| {
                let spec = DeviceSpec::from(*d);
                format!(
                    "device {:?}{}: the id is taken by a device the program registered",
                    d.id,
                    origin(&spec)
                )
            })
            .collect();
        if !taken.is_empty() {
            return Err(ReloadError::Devices(taken));
        }
        let owned = |list: &[&DeviceConfig]| list.iter().map(|d| (*d).clone()).collect::<Vec<_>>();
        let plan = Plan {
            relink,
            removed: diff.removed.iter().map(|d| d.id.clone()).collect(),
            changed: owned(&diff.changed),
            added: owned(&diff.added),
        };
        let report = plan.report();
        let apply = plan.apply(running.connection.clone(), self.shared.clone(), self.devices.clone());
        // From here on the new config is what runs, whether or not the
        // caller waits for the task to finish applying it.
        running.config = new;
        running.applying = Some(actix_rt::spawn(apply));
        let outcome = running.applying.as_mut().expect("just set").await;
        running.applying = None;
        let outcome = match outcome {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            other => other,
        };
        running.applied(outcome)?;
        info!(
            added = report.added.len(),
            removed = report.removed.len(),
            changed = report.changed.len(),
            reconnected = report.reconnected,
            "reload: {report}"
        );
        Ok(report)
    }

    /// Lifecycle events from now on (connected, disconnected, registered, ...).
    pub fn subscribe(&self) -> broadcast::Receiver<Lifecycle> {
        self.shared.events.subscribe()
    }

    /// The runtime's counters.
    pub fn stats(&self) -> &Stats {
        self.shared.stats()
    }

    /// Frames and bytes waiting in the outgoing buffer.
    /// Frames the writer has taken but not yet flushed count too: they are
    /// held within the same bound.
    pub fn buffered(&self) -> (usize, usize) {
        self.shared.buffered()
    }

    /// Every device and whether the platform has it registered.
    pub async fn devices(&self) -> Vec<DeviceStatus> {
        self.shared.devices().await
    }

    /// A handle for observing this connector from other tasks and threads
    /// (the metrics server): counters, buffer depth, session and devices.
    pub fn status(&self) -> StatusSource {
        self.shared.clone()
    }

    /// Stops the devices, sends what is buffered while the link is up (for at
    /// most `flush_timeout`), closes the session and stops the actors.
    pub async fn shutdown(self, flush_timeout: Duration) {
        let mut running = self.running.into_inner();
        running.settle().await;
        let _ = self.shared.registry.send(StopAll).await;
        let connection = lock(&running.connection).clone();
        let _ = connection
            .send(Shutdown {
                flush_timeout,
                handover: false,
            })
            .await;
        // A plugin hung in a call keeps its thread; nothing waits for it.
        self.devices.pool.shut_down();
        info!("connector stopped");
    }
}

/// A cheap, clonable, read-only view of a running [`Connector`] (see
/// [`Connector::status`]). It keeps working from any thread; once the
/// connector is gone, `devices` is empty.
#[derive(Clone)]
pub struct StatusSource {
    registry: Addr<RegistryActor>,
    outbox: OutboxHandle,
    events: Events,
}

impl StatusSource {
    /// As [`Connector::stats`].
    pub fn stats(&self) -> &Stats {
        &self.events.stats
    }

    /// As [`Connector::buffered`].
    pub fn buffered(&self) -> (usize, usize) {
        self.outbox.lock().held()
    }

    /// As [`Connector::devices`].
    pub async fn devices(&self) -> Vec<DeviceStatus> {
        self.registry.send(ListDevices).await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Type-checked, never run: the API's futures are `Send`, so a program
    /// may await them in `tokio::spawn`ed tasks ("from any task").
    #[allow(dead_code)]
    fn api_futures_are_send(connector: Connector, config: Config, device: Device) {
        fn send<T: Send>(_: T) {}
        send(connector.reload(config));
        send(connector.register(device.clone()));
        send(connector.unregister(&device));
        send(connector.receive());
        send(connector.devices());
        send(connector.status().devices());
        send(connector.shutdown(DEFAULT_FLUSH_TIMEOUT));
    }
}
