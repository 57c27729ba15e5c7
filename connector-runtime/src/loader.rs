//! Plugin libraries: opens the files `connector.yaml` lists under `plugins:`,
//! checks their declaration (see [`connector_core::abi`]) and registers each
//! plugin type they provide as a [`PluginFactory`], so that the device actor
//! drives a loaded plugin exactly like a compiled-in one.
//!
//! # What is checked, and in which order
//!
//! Opening a file runs its initialisers, the one piece of library code that
//! runs before any check (a Rust `cdylib` has none of its own). Then, before
//! anything of the library is called:
//!
//! 1. the declaration symbol exists;
//! 2. its 16-byte header, the part every ABI version shares, is read alone:
//!    magic number, ABI version, and a size at least that of this version's
//!    declaration as first released ([`abi::DECLARATION_SIZE_V1_0`]). Only
//!    then is the rest read, and of the fields added later only those the
//!    size covers (`command_deferred`; a library without it is driven
//!    through `command`);
//! 3. the panic strategy is `unwind` (with `abort`, a plugin panic would end
//!    the connector instead of restarting a device);
//! 4. the target matches, and the crate-API version is semver-compatible:
//!    it fixes the JSON shapes of what crosses the boundary;
//! 5. the function table is complete and the plugin names are distinct text.
//!
//! A different rustc is only a warning: nothing Rust-specific crosses the
//! boundary (C ABI, byte slices, JSON), so a plugin built by last month's
//! compiler is sound, and refusing it would force a rebuild of every plugin
//! with each toolchain update. The warning is there because a mismatch is
//! the first thing to suspect if one misbehaves.
//!
//! # Lifetime of a library
//!
//! Each file is opened once per process: the outcome is kept in a global map
//! keyed by the canonical path, and a library is never closed. Plugin
//! threads, event sinks held by them, and thread-local destructors may run
//! library code at any time, so no moment is safe to unload it. A refused
//! library stays open too, since its initialisers ran.
//!
//! # Calls
//!
//! A `DynamicPlugin` owns one instance. Its methods take `&mut self`, so
//! calls are one at a time as the ABI requires, and `destroy` is called from
//! `Drop` only: no call can reach an instance after it. The host context
//! handed to the library lives in a `Box` the wrapper frees only after
//! `destroy` returned; the SDK cuts every route to it before that.
//!
//! A panic caught by the library's shims comes back as
//! [`abi::STATUS_PANIC`]. The wrapper re-raises it in the host's own frames
//! with `resume_unwind`, so the device actor's `catch_unwind` sees exactly
//! what a compiled-in plugin's panic gives: the device is restarted.
//!
//! # Deferred replies
//!
//! A library with `command_deferred` gets each command with a token: a
//! number under which the wrapper keeps the command's [`Responder`] in one
//! global table. The host's `reply` takes it out and answers, from whatever
//! thread the library calls it on, also after the instance is gone. A token
//! that is not in the table (never handed out, answered already, or taken
//! back because the call failed) is ignored, so nothing a library passes can
//! reach freed memory.
//!
//! A library that accepts a command and never answers it would leave its
//! entry behind for good, and with it the command's responder, which holds
//! the whole command and a share of the connector's state. So the table is
//! swept as it grows: an insert that finds it at least twice as large as the
//! last sweep left it (and at 256 entries or more) first takes out every
//! entry the platform has its answer to already (the command's deadline
//! passed, or its device stopped) and lets it go. The library's answer for
//! such a token, should it still come, is ignored like a spent one. Sweeping
//! costs a constant per command however many wait, and the table stays
//! within twice the commands still waiting for their answer (or 256).

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::fmt;
use std::mem::{align_of, offset_of, size_of, MaybeUninit};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};

use connector_core::abi::{
    self, AbiOut, AbiStr, CommandDeferredFn, CommandFn, CreateFn, DeclarationHeader, DestroyFn, HostApi,
    PluginDeclaration, PluginFunctions, StartFn, Status, StopFn,
};
use connector_core::plugin::{
    DevicePlugin, DeviceSpec, EventSink, PluginError, PluginFactory, PluginRegistry, Reply, Responder,
};
use connector_core::Message as PlatformMessage;
use libloading::Library;
use tracing::{debug, error, info, trace, warn};

/// Why a plugin library was refused. Each names the file as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("plugin library {}: the file cannot be found or read: {reason}", path.display())]
    NotFound { path: PathBuf, reason: String },
    #[error("plugin library {}: cannot be opened: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error(
        "plugin library {}: exports no `{}`; is it built with connector-plugin-sdk's `export_plugins!`? ({reason})",
        path.display(),
        abi::DECLARATION_SYMBOL
    )]
    MissingSymbol { path: PathBuf, reason: String },
    #[error(
        "plugin library {}: `{}` is not a plugin declaration (magic number {found:#018x}, expected {:#018x})",
        path.display(),
        abi::DECLARATION_SYMBOL,
        abi::MAGIC
    )]
    BadMagic { path: PathBuf, found: u64 },
    #[error(
        "plugin library {}: plugin ABI version {found}, but this runtime speaks version {}; rebuild the plugin \
         against this runtime's connector-plugin-sdk",
        path.display(),
        abi::ABI_VERSION
    )]
    AbiVersion { path: PathBuf, found: u32 },
    #[error(
        "plugin library {}: its declaration is {found} bytes long, shorter than the {} bytes of ABI version {} at \
         its smallest; rebuild it against connector-plugin-sdk {}",
        path.display(),
        abi::DECLARATION_SIZE_V1_0,
        abi::ABI_VERSION,
        abi::API_VERSION
    )]
    TooShort { path: PathBuf, found: u32 },
    #[error(
        "plugin library {}: built with panic = \"abort\", so a plugin panic would end the whole connector; \
         build it with panic = \"unwind\" (the default)",
        path.display()
    )]
    PanicAbort { path: PathBuf },
    #[error("plugin library {}: built for target {found}, but this runtime is {}", path.display(), abi::BUILD_TARGET)]
    Target { path: PathBuf, found: String },
    #[error(
        "plugin library {}: built against connector-plugin-api {found}, which is not compatible with this runtime's {}",
        path.display(),
        abi::API_VERSION
    )]
    ApiVersion { path: PathBuf, found: String },
    #[error("plugin library {}: {problem}", path.display())]
    Malformed { path: PathBuf, problem: String },
    #[error("plugin library {}: provides plugin {name:?}, but {other} has that name already", path.display())]
    NameClash { path: PathBuf, name: String, other: String },
}

/// Every library problem of one config, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// The functions of a checked declaration.
#[derive(Clone, Copy)]
struct Functions {
    create: CreateFn,
    start: StartFn,
    command: CommandFn,
    stop: StopFn,
    destroy: DestroyFn,
    /// Missing in a library built before it existed.
    command_deferred: Option<CommandDeferredFn>,
}

/// A checked, open plugin library. Never closed (see the module docs).
pub struct PluginLibrary {
    path: PathBuf,
    names: Vec<String>,
    rustc: String,
    functions: Functions,
}

impl fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("names", &self.names)
            .field("rustc", &self.rustc)
            .finish()
    }
}

impl PluginLibrary {
    /// The file, as configured when it was first opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin types it provides.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// What the user should know but that does not stop the library from
    /// loading: a compiler differing from the runtime's.
    pub fn warnings(&self) -> Vec<String> {
        if self.rustc == abi::BUILD_RUSTC {
            return Vec::new();
        }
        vec![format!(
            "plugin library {}: built with {}, the runtime with {}; this works, but rebuild it if it misbehaves",
            self.path.display(),
            self.rustc,
            abi::BUILD_RUSTC
        )]
    }

    /// A factory for the plugin type `name` of this library.
    fn factory(self: &Arc<Self>, name: &str) -> DynamicFactory {
        DynamicFactory {
            library: self.clone(),
            name: name.to_owned(),
        }
    }
}

/// Outcomes of every open so far, by canonical path.
static LIBRARIES: Mutex<BTreeMap<PathBuf, Result<Arc<PluginLibrary>, LoadError>>> = Mutex::new(BTreeMap::new());

/// Opens and checks the library at `path`, once per process.
pub fn open(path: &Path) -> Result<Arc<PluginLibrary>, LoadError> {
    let canonical = path.canonicalize().map_err(|e| LoadError::NotFound {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut libraries = LIBRARIES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(outcome) = libraries.get(&canonical) {
        return outcome.clone();
    }
    let outcome = open_uncached(path, &canonical);
    match &outcome {
        Ok(library) => {
            info!(library = %path.display(), plugins = ?library.names, "plugin library loaded");
            for warning in library.warnings() {
                warn!("{warning}");
            }
        }
        Err(e) => debug!(library = %path.display(), "plugin library refused: {e}"),
    }
    libraries.insert(canonical, outcome.clone());
    outcome
}

fn open_uncached(path: &Path, canonical: &Path) -> Result<Arc<PluginLibrary>, LoadError> {
    // SAFETY: opening runs the library's initialisers, which we cannot check
    // beforehand; the user named this file as a plugin to run, and a Rust
    // cdylib has no initialisers of its own.
    let library = unsafe { Library::new(canonical) }.map_err(|e| LoadError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // Never closed: see the module docs.
    let library: &'static Library = Box::leak(Box::new(library));
    let symbol = format!("{}\0", abi::DECLARATION_SYMBOL);
    // SAFETY: the symbol's value is taken as a bare address; what it points
    // at is only read after `inspect` checked it.
    let address = unsafe { library.get::<*const c_void>(symbol.as_bytes()) }
        .map(|symbol| *symbol)
        .map_err(|e| LoadError::MissingSymbol {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    // SAFETY: `address` is the exported declaration symbol of a library that
    // stays loaded for the life of the process.
    unsafe { inspect(path, address.cast()) }.map(Arc::new)
}

/// Checks the declaration at `address`, header first; see the module docs.
///
/// # Safety
/// `address` is null or points at readable, unchanging memory at least a
/// [`DeclarationHeader`] long that stays valid for the life of the process,
/// and at least `header.size` bytes long when the header has the right magic
/// and version (the library's own claim, which is all a host can go by).
unsafe fn inspect(path: &Path, address: *const u8) -> Result<PluginLibrary, LoadError> {
    let malformed = |problem: String| LoadError::Malformed {
        path: path.to_owned(),
        problem,
    };
    if address.is_null() || address.align_offset(align_of::<PluginDeclaration>()) != 0 {
        return Err(malformed(format!(
            "`{}` is at a null or misaligned address",
            abi::DECLARATION_SYMBOL
        )));
    }
    // SAFETY: every declaration starts with a header, aligned as checked.
    let header = unsafe { address.cast::<DeclarationHeader>().read() };
    if header.magic != abi::MAGIC {
        return Err(LoadError::BadMagic {
            path: path.to_owned(),
            found: header.magic,
        });
    }
    if header.abi_version != abi::ABI_VERSION {
        return Err(LoadError::AbiVersion {
            path: path.to_owned(),
            found: header.abi_version,
        });
    }
    let size = header.size as usize;
    if size < abi::DECLARATION_SIZE_V1_0 {
        return Err(LoadError::TooShort {
            path: path.to_owned(),
            found: header.size,
        });
    }
    // SAFETY: the header vouches for `size` bytes of a declaration of this
    // version, at least its first release's, which is what `read_declaration`
    // needs.
    let declaration = unsafe { read_declaration(address, size) };

    match declaration.panic_strategy {
        abi::PANIC_UNWIND => {}
        abi::PANIC_ABORT => return Err(LoadError::PanicAbort { path: path.to_owned() }),
        other => return Err(malformed(format!("unknown panic strategy {other}"))),
    }
    // SAFETY: the declaration's texts point at the library's static data.
    let text = |field: &str, value: AbiStr| match unsafe { value.as_str() } {
        Ok(text) => Ok(text.to_owned()),
        Err(_) => Err(malformed(format!("its {field} is not UTF-8"))),
    };
    let target = text("target", declaration.target)?;
    if target != abi::BUILD_TARGET {
        return Err(LoadError::Target {
            path: path.to_owned(),
            found: target,
        });
    }
    let api_version = text("API version", declaration.api_version)?;
    if !abi::api_compatible(abi::API_VERSION, &api_version) {
        return Err(LoadError::ApiVersion {
            path: path.to_owned(),
            found: api_version,
        });
    }
    let rustc = text("rustc version", declaration.rustc_version)?;

    let table = declaration.functions;
    let missing = |name: &str| malformed(format!("declares no `{name}` function"));
    let functions = Functions {
        create: table.create.ok_or_else(|| missing("create"))?,
        start: table.start.ok_or_else(|| missing("start"))?,
        command: table.command.ok_or_else(|| missing("command"))?,
        stop: table.stop.ok_or_else(|| missing("stop"))?,
        destroy: table.destroy.ok_or_else(|| missing("destroy"))?,
        command_deferred: table.command_deferred,
    };

    if declaration.plugin_count == 0 || declaration.plugin_names.is_null() {
        return Err(malformed("declares no plugin types".into()));
    }
    // SAFETY: `plugin_count` names at `plugin_names`, static in the library.
    let raw_names = unsafe { std::slice::from_raw_parts(declaration.plugin_names, declaration.plugin_count) };
    let mut names: Vec<String> = Vec::with_capacity(raw_names.len());
    for raw in raw_names {
        let name = text("plugin name", *raw)?;
        if name.is_empty() {
            return Err(malformed("declares a plugin with an empty name".into()));
        }
        if names.contains(&name) {
            return Err(malformed(format!("declares plugin {name:?} twice")));
        }
        names.push(name);
    }
    Ok(PluginLibrary {
        path: path.to_owned(),
        names,
        rustc,
        functions,
    })
}

/// Where the declaration's `command_deferred` is: a declaration at least
/// `COMMAND_DEFERRED_AT + size_of::<Option<CommandDeferredFn>>()` bytes long
/// has the field.
const COMMAND_DEFERRED_AT: usize =
    offset_of!(PluginDeclaration, functions) + offset_of!(PluginFunctions, command_deferred);

/// A copy of the declaration at `address`: the fields of the first release of
/// ABI version 1, and of those added since each one `size` covers; the
/// others are `None`. The texts and names it points at stay the library's.
///
/// # Safety
/// `address` is aligned for a [`PluginDeclaration`] and points at `size`
/// readable bytes, `size` at least [`abi::DECLARATION_SIZE_V1_0`], holding a
/// declaration of this ABI version.
unsafe fn read_declaration(address: *const u8, size: usize) -> PluginDeclaration {
    let mut copy = MaybeUninit::<PluginDeclaration>::zeroed();
    // SAFETY: the caller vouches for the first `DECLARATION_SIZE_V1_0` bytes,
    // and the copy, a whole declaration, has room for them.
    unsafe {
        std::ptr::copy_nonoverlapping(address, copy.as_mut_ptr().cast::<u8>(), abi::DECLARATION_SIZE_V1_0);
    }
    // SAFETY: every field is either copied whole from the library's
    // declaration or still zero, and zero is a valid value of each field not
    // copied (a null `Option` of a function pointer).
    let mut declaration = unsafe { copy.assume_init() };
    if size >= COMMAND_DEFERRED_AT + size_of::<Option<CommandDeferredFn>>() {
        // SAFETY: `size` covers the field, which the library laid out as this
        // build does (same ABI version), at an offset aligned for it.
        declaration.functions.command_deferred = unsafe {
            address
                .add(COMMAND_DEFERRED_AT)
                .cast::<Option<CommandDeferredFn>>()
                .read()
        };
    }
    declaration
}

/// Opens every library of `paths` and registers its plugin types in
/// `registry`. A name that is already there (compiled in, or from an earlier
/// library) is an error naming both. All problems are reported together.
pub fn register_libraries(
    registry: &mut PluginRegistry,
    paths: &[PathBuf],
) -> Result<Vec<Arc<PluginLibrary>>, LoadErrors> {
    let mut errors = Vec::new();
    let mut loaded: Vec<Arc<PluginLibrary>> = Vec::new();
    let mut from_library: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in paths {
        let library = match open(path) {
            Ok(library) => library,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        // The same file listed twice is the same library, not a clash.
        if loaded.iter().any(|known| Arc::ptr_eq(known, &library)) {
            continue;
        }
        for name in library.names() {
            let other = match from_library.get(name) {
                Some(first) => Some(format!("plugin library {}", first.display())),
                None if registry.contains(name) => Some(format!("the compiled-in plugin {name:?}")),
                None => None,
            };
            match other {
                Some(other) => errors.push(LoadError::NameClash {
                    path: path.clone(),
                    name: name.clone(),
                    other,
                }),
                None => {
                    from_library.insert(name.clone(), path.clone());
                    registry.register(name.clone(), library.factory(name));
                }
            }
        }
        loaded.push(library);
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(LoadErrors(errors))
    }
}

/// Makes instances of one plugin type of a library.
struct DynamicFactory {
    library: Arc<PluginLibrary>,
    name: String,
}

/// What the library's host functions get as their context: one per instance.
struct HostContext {
    device_id: String,
    plugin: String,
    /// The runtime's sink for this device, from `start` until `stop`.
    sink: RwLock<Option<EventSink>>,
}

impl HostContext {
    fn sink(&self) -> Option<EventSink> {
        self.sink.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_sink(&self, sink: Option<EventSink>) {
        *self.sink.write().unwrap_or_else(PoisonError::into_inner) = sink;
    }
}

/// The host's table, the same for every instance; a static, so it outlives
/// every library.
static HOST_API: HostApi = HostApi {
    size: size_of::<HostApi>() as u32,
    emit: Some(host_emit),
    log: Some(host_log),
    report_failure: Some(host_report_failure),
    reply: Some(host_reply),
};

/// A command handed to a library's `command_deferred`, until it is answered.
struct Waiting {
    responder: Responder,
    /// Names the library in an answer that does not parse.
    library: Arc<PluginLibrary>,
}

/// The commands libraries are to answer, by token; see the module docs.
static WAITING: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);
/// The next token; 0 is never handed out.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The size below which the table of deferred commands is never swept.
const SWEEP_AT: usize = 256;

/// The deferred commands by token, swept as it grows (see the module docs).
#[derive(Default)]
struct Table {
    waiting: HashMap<u64, Waiting>,
    /// Twice what the last sweep left (0 before the first one).
    sweep_at: usize,
}

impl Table {
    /// Keeps `waiting` under `token`. Gives back the entries a sweep took
    /// out to make room, to be let go of once the table's lock is released
    /// (letting go of a responder runs the runtime's code).
    fn insert(&mut self, token: u64, waiting: Waiting) -> Vec<Waiting> {
        let swept = if self.waiting.len() >= self.sweep_at.max(SWEEP_AT) {
            self.sweep()
        } else {
            Vec::new()
        };
        self.waiting.insert(token, waiting);
        swept
    }

    /// Takes out every entry the platform has its answer to already.
    fn sweep(&mut self) -> Vec<Waiting> {
        let answered: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, waiting)| waiting.responder.is_answered())
            .map(|(&token, _)| token)
            .collect();
        let swept = answered.iter().filter_map(|token| self.waiting.remove(token)).collect();
        self.sweep_at = 2 * self.waiting.len();
        // What a burst of unanswered commands grew goes back, but not the
        // room the table may fill before the next sweep.
        self.waiting.shrink_to(self.sweep_at.max(SWEEP_AT));
        swept
    }

    fn take(&mut self, token: u64) -> Option<Waiting> {
        self.waiting.remove(&token)
    }
}

/// Lets go of a deferred command the platform has its answer to already,
/// without a second answer that would count as a late reply.
fn let_go(waiting: Waiting) {
    waiting.responder.abandon();
}

/// Keeps `responder` until the library answers; returns its token.
fn await_reply(responder: Responder, library: &Arc<PluginLibrary>) -> u64 {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let waiting = Waiting {
        responder,
        library: library.clone(),
    };
    let swept = WAITING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token, waiting);
    if !swept.is_empty() {
        debug!(
            swept = swept.len(),
            "let go of deferred commands plugin libraries never answered; the platform had its answers already"
        );
        swept.into_iter().for_each(let_go);
    }
    token
}

/// The command waiting under `token`, taken out: only one taker gets it.
fn take_waiting(token: u64) -> Option<Waiting> {
    WAITING.lock().unwrap_or_else(PoisonError::into_inner).take(token)
}

unsafe extern "C" fn host_reply(token: u64, status: Status, bytes: AbiStr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Some(waiting) = take_waiting(token) else {
            debug!(
                token,
                status, "a plugin library answered with an unknown or spent token; ignored"
            );
            return;
        };
        // SAFETY: the answer is readable for the call.
        let bytes = unsafe { bytes.as_bytes() };
        let result = if status == abi::STATUS_OK {
            serde_json::from_slice::<Reply>(bytes).map_err(|e| {
                PluginError::new(format!(
                    "plugin library {}: the deferred reply does not parse: {e}",
                    waiting.library.path.display()
                ))
            })
        } else {
            Err(PluginError::new(String::from_utf8_lossy(bytes)))
        };
        waiting.responder.send(result);
    }));
}

/// The context behind a host-function call.
///
/// # Safety
/// `ctx` is null or a context the wrapper handed to `create` and has not
/// freed; the SDK guarantees the latter by cutting its link before `destroy`
/// returns.
unsafe fn context<'a>(ctx: *mut c_void) -> Option<&'a HostContext> {
    // SAFETY: see the function's contract; only shared references are made.
    unsafe { ctx.cast::<HostContext>().cast_const().as_ref() }
}

unsafe extern "C" fn host_emit(ctx: *mut c_void, event_json: AbiStr) -> Status {
    // Nothing may unwind out of an extern "C" function; a panic here is ours.
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the library passes back the context it got, while it is valid.
        let Some(context) = (unsafe { context(ctx) }) else {
            return abi::STATUS_INVALID;
        };
        // SAFETY: the event is readable for the call.
        let event: PlatformMessage = match serde_json::from_slice(unsafe { event_json.as_bytes() }) {
            Ok(event) => event,
            Err(e) => {
                warn!(device_id = %context.device_id, "plugin sent an event that does not parse: {e}");
                return abi::STATUS_INVALID;
            }
        };
        match context.sink().map(|sink| sink.send(event)) {
            Some(Ok(())) => abi::STATUS_OK,
            Some(Err(_)) | None => abi::STATUS_STOPPED,
        }
    }))
    .unwrap_or(abi::STATUS_PANIC)
}

unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, message: AbiStr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the message is readable for the call.
        let message = String::from_utf8_lossy(unsafe { message.as_bytes() });
        // SAFETY: null or the live context, as for emit.
        let (device_id, plugin) = match unsafe { context(ctx) } {
            Some(context) => (context.device_id.as_str(), context.plugin.as_str()),
            None => ("", ""),
        };
        match level {
            abi::LOG_ERROR => error!(target: "plugin", device_id, plugin, "{message}"),
            abi::LOG_WARN => warn!(target: "plugin", device_id, plugin, "{message}"),
            abi::LOG_INFO => info!(target: "plugin", device_id, plugin, "{message}"),
            abi::LOG_DEBUG => debug!(target: "plugin", device_id, plugin, "{message}"),
            _ => trace!(target: "plugin", device_id, plugin, "{message}"),
        }
    }));
}

unsafe extern "C" fn host_report_failure(ctx: *mut c_void, reason: AbiStr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the live context, as for emit.
        if let Some(context) = unsafe { context(ctx) } {
            // SAFETY: the reason is readable for the call.
            let reason = String::from_utf8_lossy(unsafe { reason.as_bytes() });
            if let Some(sink) = context.sink() {
                sink.report_failure(reason);
            }
        }
    }));
}

/// Collects what a library function writes to its `out`.
unsafe extern "C" fn write_out(ctx: *mut c_void, bytes: AbiStr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `Vec` of `Answer::out`, borrowed mutably for the call.
        if let Some(buffer) = unsafe { ctx.cast::<Vec<u8>>().as_mut() } {
            buffer.clear();
            // SAFETY: the bytes are readable for the call.
            buffer.extend_from_slice(unsafe { bytes.as_bytes() });
        }
    }));
}

/// The text a library function answered with.
#[derive(Default)]
struct Answer(Vec<u8>);

impl Answer {
    /// A writer into this answer, valid while `self` is borrowed.
    fn out(&mut self) -> AbiOut {
        AbiOut {
            ctx: (&mut self.0 as *mut Vec<u8>).cast(),
            write: write_out,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// What a status other than OK means for the device: an error, or a panic
/// re-raised in the host so the device actor restarts the device.
fn failure(library: &PluginLibrary, call: &str, status: Status, answer: &Answer) -> PluginError {
    let text = answer.text();
    match status {
        abi::STATUS_ERROR => PluginError::new(text),
        abi::STATUS_PANIC => resume_unwind(Box::new(text)),
        other => PluginError::new(format!(
            "plugin library {}: `{call}` failed with status {other}: {text}",
            library.path.display()
        )),
    }
}

impl PluginFactory for DynamicFactory {
    fn create(&self, spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
        let spec_json = serde_json::to_vec(spec).map_err(|e| PluginError::new(format!("spec to JSON: {e}")))?;
        let context = Box::new(HostContext {
            device_id: spec.id().to_owned(),
            plugin: self.name.clone(),
            sink: RwLock::new(None),
        });
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut answer = Answer::default();
        // SAFETY: inputs are borrowed for the call; `HOST_API` is static; the
        // context is boxed and freed only after `destroy` (or right here if
        // no instance was made); `instance` is writable.
        let status = unsafe {
            (self.library.functions.create)(
                AbiStr::new(self.name.as_bytes()),
                AbiStr::new(&spec_json),
                &HOST_API,
                (&*context as *const HostContext).cast_mut().cast(),
                &mut instance,
                answer.out(),
            )
        };
        if status != abi::STATUS_OK {
            return Err(failure(&self.library, "create", status, &answer));
        }
        if instance.is_null() {
            return Err(PluginError::new(format!(
                "plugin library {}: `create` returned no instance",
                self.library.path.display()
            )));
        }
        Ok(Box::new(DynamicPlugin {
            library: self.library.clone(),
            instance,
            context,
        }))
    }
}

/// One instance of a library's plugin, as a [`DevicePlugin`].
struct DynamicPlugin {
    library: Arc<PluginLibrary>,
    /// Live from `create` until `Drop` destroys it.
    instance: *mut c_void,
    /// Handed to the library with the instance; freed after `destroy`.
    context: Box<HostContext>,
}

// SAFETY: the ABI allows an instance's functions to be called from any
// thread, one at a time, which `&mut self` on every call guarantees.
unsafe impl Send for DynamicPlugin {}

impl DynamicPlugin {
    fn check(&self, call: &str, status: Status, answer: &Answer) -> Result<(), PluginError> {
        if status == abi::STATUS_OK {
            Ok(())
        } else {
            Err(failure(&self.library, call, status, answer))
        }
    }
}

impl DevicePlugin for DynamicPlugin {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        self.context.set_sink(Some(events));
        let mut answer = Answer::default();
        // SAFETY: a live instance (destroyed only in Drop), one call at a time.
        let status = unsafe { (self.library.functions.start)(self.instance, answer.out()) };
        self.check("start", status, &answer)
    }

    fn command(&mut self, command: &PlatformMessage) -> Result<Reply, PluginError> {
        let json = serde_json::to_vec(command).map_err(|e| PluginError::new(format!("command to JSON: {e}")))?;
        let mut answer = Answer::default();
        // SAFETY: a live instance, one call at a time; the command is borrowed for the call.
        let status = unsafe { (self.library.functions.command)(self.instance, AbiStr::new(&json), answer.out()) };
        self.check("command", status, &answer)?;
        serde_json::from_slice(&answer.0).map_err(|e| {
            PluginError::new(format!(
                "plugin library {}: the reply does not parse: {e}",
                self.library.path.display()
            ))
        })
    }

    fn command_deferred(&mut self, command: &PlatformMessage, reply: Responder) {
        let Some(command_deferred) = self.library.functions.command_deferred else {
            // A library built before deferred replies: it answers in the call.
            return reply.send(self.command(command));
        };
        let json = match serde_json::to_vec(command) {
            Ok(json) => json,
            Err(e) => return reply.error(format!("command to JSON: {e}")),
        };
        let token = await_reply(reply, &self.library);
        let mut answer = Answer::default();
        // SAFETY: a live instance, one call at a time; the command is
        // borrowed for the call; the token is a plain number.
        let status = unsafe { command_deferred(self.instance, AbiStr::new(&json), token, answer.out()) };
        if status == abi::STATUS_OK {
            return;
        }
        // The library gave up the token: the answer is ours to give. If it
        // answered anyway before failing, that answer stands.
        let waiting = take_waiting(token);
        // A panic is re-raised here, as in `command`; the responder is then
        // dropped while unwinding, which leaves the answer to the device
        // actor, which reports the panic.
        let error = failure(&self.library, "command_deferred", status, &answer);
        match waiting {
            Some(waiting) => waiting.responder.send(Err(error)),
            None => {
                debug!(device_id = %self.context.device_id, token, "the library failed a command it had answered: {error}")
            }
        }
    }

    fn stop(&mut self) {
        let mut answer = Answer::default();
        // SAFETY: a live instance, one call at a time.
        let status = unsafe { (self.library.functions.stop)(self.instance, answer.out()) };
        self.context.set_sink(None);
        if status == abi::STATUS_PANIC {
            // The device actor reports it like a compiled-in plugin's panic.
            resume_unwind(Box::new(answer.text()));
        }
    }
}

impl Drop for DynamicPlugin {
    fn drop(&mut self) {
        // SAFETY: the instance is live, and this is the last call with it:
        // `self` is going away and no other code has the pointer.
        let status = unsafe { (self.library.functions.destroy)(self.instance) };
        self.instance = std::ptr::null_mut();
        if status != abi::STATUS_OK {
            warn!(device_id = %self.context.device_id, status, "plugin failed while being destroyed");
        }
        // `context` is freed after this, once the library can no longer use it.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect_static(declaration: &'static PluginDeclaration) -> Result<PluginLibrary, LoadError> {
        // SAFETY: a whole, static declaration.
        unsafe {
            inspect(
                Path::new("libtest.so"),
                (declaration as *const PluginDeclaration).cast(),
            )
        }
    }

    const NAMES: &[AbiStr] = &[AbiStr::from_static("one"), AbiStr::from_static("two")];

    unsafe extern "C" fn never_create(
        _: AbiStr,
        _: AbiStr,
        _: *const HostApi,
        _: *mut c_void,
        _: *mut *mut c_void,
        _: AbiOut,
    ) -> Status {
        unreachable!("inspect calls nothing")
    }

    const fn good() -> PluginDeclaration {
        PluginDeclaration {
            header: DeclarationHeader::current(),
            api_version: AbiStr::from_static(abi::API_VERSION),
            rustc_version: AbiStr::from_static(abi::BUILD_RUSTC),
            target: AbiStr::from_static(abi::BUILD_TARGET),
            panic_strategy: abi::PANIC_UNWIND,
            plugin_names: NAMES.as_ptr(),
            plugin_count: NAMES.len(),
            functions: abi::PluginFunctions {
                create: Some(never_create),
                start: Some(never_start),
                command: Some(never_command),
                stop: Some(never_stop),
                destroy: Some(never_destroy),
                command_deferred: None,
            },
        }
    }

    #[test]
    fn an_incomplete_function_table_is_refused_by_name() {
        static DECLARATION: PluginDeclaration = PluginDeclaration {
            functions: abi::PluginFunctions {
                start: None,
                ..good().functions
            },
            ..good()
        };
        let err = inspect_static(&DECLARATION).unwrap_err().to_string();
        assert_eq!(err, "plugin library libtest.so: declares no `start` function");
    }

    #[test]
    fn another_target_or_an_incompatible_api_version_is_refused() {
        static TARGET: PluginDeclaration = PluginDeclaration {
            target: AbiStr::from_static("riscv64gc-unknown-none-elf"),
            ..good()
        };
        static API: PluginDeclaration = PluginDeclaration {
            api_version: AbiStr::from_static("7.0.0"),
            ..good()
        };
        let err = inspect_static(&TARGET).unwrap_err().to_string();
        assert!(
            err.contains("built for target riscv64gc-unknown-none-elf, but this runtime is"),
            "{err}"
        );
        let err = inspect_static(&API).unwrap_err().to_string();
        assert!(
            err.contains("built against connector-plugin-api 7.0.0, which is not compatible"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_or_empty_plugin_names_are_refused() {
        const TWICE: &[AbiStr] = &[AbiStr::from_static("one"), AbiStr::from_static("one")];
        static DUPLICATE: PluginDeclaration = PluginDeclaration {
            plugin_names: TWICE.as_ptr(),
            plugin_count: TWICE.len(),
            ..good()
        };
        static NONE: PluginDeclaration = PluginDeclaration {
            plugin_count: 0,
            ..good()
        };
        let err = inspect_static(&DUPLICATE).unwrap_err().to_string();
        assert!(err.ends_with("declares plugin \"one\" twice"), "{err}");
        let err = inspect_static(&NONE).unwrap_err().to_string();
        assert!(err.ends_with("declares no plugin types"), "{err}");
    }

    #[test]
    fn a_library_built_by_another_rustc_loads_with_a_warning() {
        static OTHER_RUSTC: PluginDeclaration = PluginDeclaration {
            rustc_version: AbiStr::from_static("rustc 1.80.0 (051478957 2024-07-21)"),
            ..good()
        };
        let library = inspect_static(&OTHER_RUSTC).unwrap();
        assert_eq!(library.names(), ["one", "two"]);
        let warnings = library.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("built with rustc 1.80.0"), "{warnings:?}");
    }

    /// A declaration as ABI version 1 was first released: no
    /// `command_deferred`, and a size that says so.
    #[repr(C)]
    struct DeclarationV1_0 {
        header: DeclarationHeader,
        api_version: AbiStr,
        rustc_version: AbiStr,
        target: AbiStr,
        panic_strategy: u32,
        plugin_names: *const AbiStr,
        plugin_count: usize,
        create: Option<CreateFn>,
        start: Option<StartFn>,
        command: Option<CommandFn>,
        stop: Option<StopFn>,
        destroy: Option<DestroyFn>,
    }

    // SAFETY: immutable, pointing at statics only.
    unsafe impl Sync for DeclarationV1_0 {}

    static OLD: DeclarationV1_0 = DeclarationV1_0 {
        header: DeclarationHeader {
            size: size_of::<DeclarationV1_0>() as u32,
            ..DeclarationHeader::current()
        },
        api_version: AbiStr::from_static(abi::API_VERSION),
        rustc_version: AbiStr::from_static(abi::BUILD_RUSTC),
        target: AbiStr::from_static(abi::BUILD_TARGET),
        panic_strategy: abi::PANIC_UNWIND,
        plugin_names: NAMES.as_ptr(),
        plugin_count: NAMES.len(),
        create: Some(never_create),
        start: Some(never_start),
        command: Some(never_command),
        stop: Some(never_stop),
        destroy: Some(never_destroy),
    };

    #[test]
    fn a_declaration_of_the_first_v1_layout_loads_without_command_deferred() {
        assert_eq!(size_of::<DeclarationV1_0>(), abi::DECLARATION_SIZE_V1_0);
        // SAFETY: a whole static declaration of the size its header gives.
        let library = unsafe { inspect(Path::new("libold.so"), (&OLD as *const DeclarationV1_0).cast()) }.unwrap();
        assert_eq!(library.names(), ["one", "two"]);
        assert!(library.warnings().is_empty(), "{:?}", library.warnings());
        assert!(library.functions.command_deferred.is_none());
    }

    #[test]
    fn a_declaration_of_this_build_brings_its_command_deferred() {
        static NEW: PluginDeclaration = PluginDeclaration {
            functions: abi::PluginFunctions {
                command_deferred: Some(never_command_deferred),
                ..good().functions
            },
            ..good()
        };
        let library = inspect_static(&NEW).unwrap();
        assert!(library.functions.command_deferred.is_some());
        // One whose size stops short of the field does without it, even
        // though the bytes behind are there.
        static CUT: PluginDeclaration = PluginDeclaration {
            header: DeclarationHeader {
                size: abi::DECLARATION_SIZE_V1_0 as u32 + 4,
                ..DeclarationHeader::current()
            },
            ..NEW
        };
        assert!(inspect_static(&CUT).unwrap().functions.command_deferred.is_none());
    }

    #[test]
    fn a_declaration_shorter_than_the_first_v1_layout_is_refused_naming_the_sdk() {
        static SHORT: PluginDeclaration = PluginDeclaration {
            header: DeclarationHeader {
                size: abi::DECLARATION_SIZE_V1_0 as u32 - 8,
                ..DeclarationHeader::current()
            },
            ..good()
        };
        let err = inspect_static(&SHORT).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "plugin library libtest.so: its declaration is {} bytes long, shorter than the {} bytes of ABI \
                 version 1 at its smallest; rebuild it against connector-plugin-sdk {}",
                abi::DECLARATION_SIZE_V1_0 - 8,
                abi::DECLARATION_SIZE_V1_0,
                abi::API_VERSION
            )
        );
    }

    fn reply(token: u64, status: Status, bytes: &[u8]) {
        // SAFETY: the bytes are borrowed for the call.
        unsafe { host_reply(token, status, AbiStr::new(bytes)) }
    }

    #[test]
    fn the_host_answers_a_token_once_and_ignores_unknown_or_spent_ones() {
        // SAFETY: a whole, static declaration.
        let library =
            Arc::new(unsafe { inspect(Path::new("libdeferred.so"), (&OLD as *const DeclarationV1_0).cast()) }.unwrap());
        let library = &library;
        let (responder, answers) = Responder::channel();
        let token = await_reply(responder, library);
        reply(token, abi::STATUS_OK, br#"{"header":"h","body":"b"}"#);
        assert_eq!(answers.try_recv().unwrap(), Ok(Reply::body("b").with_header("h")));
        // Spent: a second answer and a made-up token go nowhere, harmlessly.
        reply(token, abi::STATUS_OK, br#"{"body":"again"}"#);
        reply(0, abi::STATUS_ERROR, b"nobody's");
        reply(u64::MAX, abi::STATUS_OK, b"{}");
        assert!(answers.try_recv().is_err(), "answered twice");

        let (responder, answers) = Responder::channel();
        reply(
            await_reply(responder, library),
            abi::STATUS_ERROR,
            b"the sensor is gone",
        );
        assert_eq!(answers.try_recv().unwrap(), Err(PluginError::new("the sensor is gone")));

        let (responder, answers) = Responder::channel();
        reply(await_reply(responder, library), abi::STATUS_OK, b"not json");
        let err = answers.try_recv().unwrap().unwrap_err().to_string();
        assert!(
            err.starts_with("plugin library libdeferred.so: the deferred reply does not parse: "),
            "{err}"
        );
    }

    #[test]
    fn a_growing_table_lets_go_of_the_commands_the_platform_has_its_answer_to() {
        // SAFETY: a whole, static declaration.
        let library =
            Arc::new(unsafe { inspect(Path::new("libleaky.so"), (&OLD as *const DeclarationV1_0).cast()) }.unwrap());
        let entry = |answered: bool| Waiting {
            responder: Responder::new(|_| {}).with_answered(move || answered),
            library: library.clone(),
        };
        let mut table = Table::default();
        // Every other command's deadline passes; the library answers none.
        for token in 1..=SWEEP_AT as u64 {
            assert!(table.insert(token, entry(token % 2 == 0)).is_empty(), "swept early");
        }
        let swept = table.insert(1000, entry(false));
        assert_eq!(swept.len(), SWEEP_AT / 2);
        assert!(swept.iter().all(|waiting| waiting.responder.is_answered()));
        let mut left: Vec<u64> = table.waiting.keys().copied().collect();
        left.sort_unstable();
        let mut expected: Vec<u64> = (1..=SWEEP_AT as u64).filter(|t| t % 2 == 1).collect();
        expected.push(1000);
        assert_eq!(left, expected, "the commands still waiting stay, answerable");
        assert!(table.take(1).is_some());

        // The next sweep waits until the table has doubled, and one that
        // finds everything still waiting takes nothing.
        let waiting = table.waiting.len();
        for token in 2000..2000 + waiting as u64 {
            assert!(table.insert(token, entry(false)).is_empty());
        }
        assert!(table.insert(5000, entry(false)).is_empty());
        assert_eq!(table.waiting.len(), 2 * waiting + 1);
    }

    unsafe extern "C" fn never_command_deferred(_: *mut c_void, _: AbiStr, _: u64, _: AbiOut) -> Status {
        unreachable!()
    }
    unsafe extern "C" fn never_start(_: *mut c_void, _: AbiOut) -> Status {
        unreachable!()
    }
    unsafe extern "C" fn never_command(_: *mut c_void, _: AbiStr, _: AbiOut) -> Status {
        unreachable!()
    }
    unsafe extern "C" fn never_stop(_: *mut c_void, _: AbiOut) -> Status {
        unreachable!()
    }
    unsafe extern "C" fn never_destroy(_: *mut c_void) -> Status {
        unreachable!()
    }
}
