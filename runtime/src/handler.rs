//! The WebAssembly handler host: one `Engine` and `Linker`, an `InstancePre`
//! per handler component, and a `Store` per instance, which serves several
//! calls (see `instances`). Each call has a deadline, a memory cap and a cap
//! on emitted data. Guests get WASI 0.2 with clocks and
//! random, and their stdout and stderr go to the log. They get no network,
//! filesystem or environment beyond their consumer's grants, and the host
//! logs and counts what it denies them (see `sandbox`).

mod instances;
mod output;
mod sandbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::event::Event;
use crate::schema::Schemas;
use instances::{Warm, WarmInstances};
use output::{GuestOutput, Stream};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../handlers/wit",
        world: "handler",
        exports: { default: async },
    });
}

use bindings::switchyard::handler::{host, types};

/// How often the epoch advances. A guest that computes without calling the
/// host is checked against its deadline at this granularity.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of each guest linear memory and table that are zeroed in place and
/// kept resident when an instance is dropped: one 64 KiB wasm page.
const KEEP_RESIDENT: usize = 64 * 1024;

/// Failure of a handler call. The guest's own `retry` and `reject`,
/// a trap or deadline, and a failure on the host side are kept apart because
/// dispatch treats them differently.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("handler asked to retry: {0}")]
    Retry(String),
    #[error("handler rejected the event: {0}")]
    Reject(String),
    #[error("handler trapped: {0}")]
    Trap(String),
    #[error("handler exceeded its deadline of {0:?}")]
    Deadline(Duration),
    #[error("handler exceeded its memory limit of {0} bytes")]
    MemoryLimit(u64),
    #[error("handler emitted more than its limit of {0} bytes of event data")]
    EmitLimit(u64),
    #[error("host failed to run the handler: {0}")]
    Host(String),
}

impl CallError {
    /// Returns the name of the limit the call hit, for metrics: `deadline`,
    /// `memory` or `emit_size`.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            CallError::Deadline(_) => Some("deadline"),
            CallError::MemoryLimit(_) => Some("memory"),
            CallError::EmitLimit(_) => Some("emit_size"),
            _ => None,
        }
    }
}

/// Limits of a consumer's handler.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deadline of one call.
    pub timeout: Duration,
    /// Bytes of linear memory.
    pub memory: u64,
    /// Bytes of event data, summed over every event one call emits.
    pub emit_size: u64,
    /// Calls one instance serves before a fresh one replaces it; 1 gives
    /// every call a fresh instance.
    pub calls_per_instance: u32,
}

/// Host resources a consumer's handler may use.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// Environment variables with the values they had at start.
    pub env: Vec<(String, String)>,
    /// Read-only folders: the path the guest opens, and the host folder.
    pub read_dirs: Vec<(String, PathBuf)>,
    /// Endpoints the handler may open TCP connections to.
    pub connect: Vec<Endpoint>,
}

/// A host and port a handler may connect to, written `host:port`, where
/// the host is an IP address or a name (IPv6 addresses in brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            "expected `host:port`, such as `127.0.0.1:6379` or `redis:6379`".to_owned()
        })?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("`{port}` is not a port number from 1 to 65535"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err("the host is empty; expected `host:port`".to_owned());
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "`{host}` is neither a host name nor an IP address; write an IPv6 address in \
                 brackets, such as `[::1]:6379`"
            ));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

/// Inputs a handler call may read: its consumer's name and config, and the
/// schemas its emitted events must pass.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub consumer: Arc<str>,
    pub config: Arc<BTreeMap<String, String>>,
    pub schemas: Schemas,
    pub limits: Limits,
    pub grants: Arc<Grants>,
}

/// An event a handler emitted: its type and validated data.
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    pub event_type: String,
    pub data: Value,
}

/// A compiled handler component, checked against the handler world, with
/// its instances that wait for the next call. Clones share the instances.
#[derive(Clone)]
pub struct LoadedHandler {
    /// File name such as `email.wasm`.
    pub name: String,
    /// SHA-256 of the component bytes, in hex.
    pub digest: String,
    pre: bindings::HandlerPre<CallState>,
    warm: Arc<WarmInstances>,
}

impl LoadedHandler {
    /// Returns the same compiled handler without the instances kept for
    /// its calls, so that its next calls start in fresh instances.
    pub fn without_instances(&self) -> LoadedHandler {
        LoadedHandler {
            warm: Arc::default(),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for LoadedHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedHandler")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// State of one store: WASI context, limits, and what the current call
/// emitted.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CallLimiter,
    context: CallContext,
    stdout: GuestOutput,
    stderr: GuestOutput,
    emitted: Vec<Emitted>,
    /// Bytes of event data emitted so far.
    emitted_bytes: u64,
    /// Set once `emit` went over the consumer's `emit_size`.
    emit_limit_hit: bool,
}

impl CallState {
    /// Clears what the previous call left, and tags the guest's output
    /// with the event of the call that starts.
    fn start_call(&mut self, event_id: Arc<str>) {
        self.emitted.clear();
        self.emitted_bytes = 0;
        self.emit_limit_hit = false;
        self.limits.memory_limit_hit = false;
        self.stdout.start(event_id.clone());
        self.stderr.start(event_id);
    }

    /// Logs the output after the guest's last newline, which often
    /// explains a failed call.
    fn finish_call(&self) {
        self.stdout.finish();
        self.stderr.finish();
    }
}

/// `StoreLimits` that also records whether the memory cap stopped a grow,
/// so that such a trap is reported as the limit it is.
struct CallLimiter {
    limits: StoreLimits,
    memory_limit_hit: bool,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.memory_limit_hit = true;
        }
        allowed
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: types::Level, message: String) {
        // The span of the delivery adds the consumer, queue and event ids.
        match level {
            types::Level::Trace => tracing::trace!("{message}"),
            types::Level::Debug => tracing::debug!("{message}"),
            types::Level::Info => tracing::info!("{message}"),
            types::Level::Warn => tracing::warn!("{message}"),
            types::Level::Error => tracing::error!("{message}"),
        }
    }

    fn emit(&mut self, event_type: String, data: Vec<u8>) -> Result<(), String> {
        let limit = self.context.limits.emit_size;
        let total = self.emitted_bytes.saturating_add(data.len() as u64);
        if total > limit {
            self.emit_limit_hit = true;
            return Err(format!(
                "`{event_type}` not emitted: this call's events would hold {total} bytes of data, \
                 over the consumer's limit of {limit} bytes (`limits.emit_size`)"
            ));
        }
        self.emitted_bytes = total;
        let data: Value = serde_json::from_slice(&data)
            .map_err(|err| format!("data of `{event_type}` is not valid JSON: {err}"))?;
        self.context
            .schemas
            .validate(&event_type, &data)
            .map_err(|check| check.to_string())?;
        self.emitted.push(Emitted { event_type, data });
        Ok(())
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.context.config.get(&key).cloned()
    }
}

/// Compiles handler components and runs them. Cheap to clone.
#[derive(Clone)]
pub struct HandlerHost {
    engine: Engine,
    linker: Arc<Linker<CallState>>,
    /// Folder of compiled components, keyed by content and engine settings.
    cache_dir: Option<PathBuf>,
}

impl HandlerHost {
    /// Creates the engine and linker, and starts the epoch ticker that
    /// enforces deadlines.
    pub fn new() -> Result<Self, CallError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Instances are made often: for the first calls of each consumer,
        // after each trap and every `calls_per_instance` calls. The default
        // on-demand allocator maps and unmaps linear memory and the async
        // stack each time, and those system calls cost more than the rest
        // of the consume pipeline. The pooling allocator reuses them from
        // reserved slots. Its default limits allow 1000 core instances at
        // once, 4 GiB per memory, and one table of 20,000 elements and one
        // memory per core module, so a component over them fails to load.
        // Idle instances keep their slots. Each consumer has at most as many
        // as its `concurrency`, so all of them need the consumers'
        // `concurrency` summed.
        //
        // When an instance is dropped, the allocator zeroes its linear memory
        // and tables with `madvise` by default. perf showed the TLB
        // shootdowns that this causes on the other cores, and the page
        // faults of the next call, as 15 to 20 % of a Kafka consume drain
        // with a no-op guest. Up to `KEEP_RESIDENT` bytes of each are zeroed
        // with `memset` instead, and stay resident in their slot.
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).map_err(host_error)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(host_error)?;
        sandbox::watch_open_at(&mut linker).map_err(host_error)?;
        bindings::Handler::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(host_error)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(host_error)?;

        Ok(HandlerHost {
            engine,
            linker: Arc::new(linker),
            cache_dir: None,
        })
    }

    /// Keeps compiled components in `dir`, so a restart does not compile
    /// unchanged handlers again.
    pub fn with_cache_dir(mut self, dir: PathBuf) -> Self {
        self.cache_dir = Some(dir);
        self
    }

    /// Compiles a component and checks that it implements the handler world
    /// with imports this host provides.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<LoadedHandler, String> {
        if !is_component(bytes) {
            return Err(describe_non_component(bytes));
        }
        let digest = digest(bytes);
        let component = self.compile(bytes, &digest)?;
        let mismatch = |err: wasmtime::Error| {
            format!(
                "component does not match the handler world: {err:#}; {}",
                self.describe_component(&component)
            )
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(mismatch)?;
        let pre = bindings::HandlerPre::new(instance_pre).map_err(mismatch)?;
        Ok(LoadedHandler {
            name: name.to_owned(),
            digest,
            pre,
            warm: Arc::default(),
        })
    }

    /// Compiles a component, or loads it from the cache when this engine
    /// compiled the same bytes before.
    fn compile(&self, bytes: &[u8], digest: &str) -> Result<Component, String> {
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(|err| format!("{err:#}"));
        };
        let path = dir.join(format!("{digest}-{}.cwasm", self.engine_key()));
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (part of its name), in
            // a folder only this runtime writes to.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err,
                        "cannot load compiled component from the cache; compiling again");
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|err| format!("{err:#}"))?;
        if let Err(err) = write_cache(dir, &path, &component) {
            tracing::warn!(path = %path.display(), error = %err, "cannot write compiled component to the cache");
        }
        Ok(component)
    }

    /// Lists what a component imports and exports next to what the
    /// handler world expects, for the error of a component of another world.
    fn describe_component(&self, component: &Component) -> String {
        let component_type = component.component_type();
        let imports: Vec<&str> = component_type
            .imports(&self.engine)
            .map(|(name, _)| name)
            .collect();
        let exports: Vec<&str> = component_type
            .exports(&self.engine)
            .map(|(name, _)| name)
            .collect();
        format!(
            "it imports {} and exports {}, but a handler exports `handle` and imports at most \
             `switchyard:handler/host@0.1.0`, `switchyard:handler/types@0.1.0` and WASI 0.2",
            name_list(&imports),
            name_list(&exports),
        )
    }

    fn engine_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Reads and loads a component file.
    pub fn load_file(&self, path: &Path) -> Result<LoadedHandler, String> {
        let bytes = std::fs::read(path).map_err(|err| format!("cannot read: {err}"))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.load(&name, &bytes)
    }

    /// Calls `handle` on an instance of the consumer's that finished its
    /// last call cleanly, or on a fresh one, and returns what it emitted.
    pub async fn call(
        &self,
        handler: &LoadedHandler,
        context: &CallContext,
        event: &Event,
        attempt: u32,
    ) -> Result<Vec<Emitted>, CallError> {
        let input = to_wit_event(event, attempt);
        let event_id: Arc<str> = Arc::from(event.id.as_str());
        let deadline = tokio::time::Instant::now() + context.limits.timeout;
        let mut warm = match handler.warm.take(&context.consumer) {
            Some(warm) => warm,
            None => self.new_store(context)?,
        };
        let mut outcome = call_on(
            &mut warm,
            handler,
            context,
            &input,
            event_id.clone(),
            deadline,
        )
        .await;
        // Memory that earlier calls left allocated counts against the
        // limit too. So an instance that reaches it after serving other
        // calls gets the event again in a fresh instance, within the same
        // deadline, and only a call that needs too much memory on its own
        // fails. That first hit is logged but not counted as a limit hit.
        if warm.calls > 1 && matches!(outcome, Err(CallError::MemoryLimit(_))) {
            tracing::warn!(
                consumer = %context.consumer,
                calls = warm.calls - 1,
                limit_bytes = context.limits.memory,
                "handler instance reached its memory limit after serving other calls, so the \
                 event is handled again in a fresh instance. The handler may keep memory from \
                 one call to the next: free it, or lower `limits.calls_per_instance`"
            );
            warm = self.new_store(context)?;
            outcome = call_on(&mut warm, handler, context, &input, event_id, deadline).await;
        }

        // After a trap, a limit or a deadline, the guest's memory may be in
        // any state, so the instance is dropped. A guest that returned its
        // own retry or reject is as sound as one that returned ok.
        let returned = matches!(
            outcome,
            Ok(_) | Err(CallError::Retry(_) | CallError::Reject(_))
        );
        if returned && warm.calls < context.limits.calls_per_instance {
            handler.warm.give_back(&context.consumer, warm);
        }
        outcome
    }

    /// Makes a store for a consumer's handler, with the consumer's grants
    /// and limits. The handler is instantiated in it at the first call.
    fn new_store(&self, context: &CallContext) -> Result<Warm, CallError> {
        let stdout = GuestOutput::new(Stream::Stdout, context.consumer.clone());
        let stderr = GuestOutput::new(Stream::Stderr, context.consumer.clone());
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .envs(&context.grants.env)
            // Sockets may be created, so that every use of an address
            // reaches the check below, which denies, logs and counts it.
            .allow_tcp(true)
            .allow_udp(true)
            .socket_addr_check(sandbox::socket_check(
                context.consumer.clone(),
                context.grants.clone(),
            ))
            // Name lookups reach a DNS server, so only a handler with
            // endpoints to connect to may make them.
            .allow_ip_name_lookup(!context.grants.connect.is_empty());
        for (guest, host) in &context.grants.read_dirs {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
                .map_err(|err| {
                    CallError::Host(format!(
                        "cannot open granted folder `{}`: {err}",
                        host.display()
                    ))
                })?;
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(context.limits.memory).unwrap_or(usize::MAX))
            .trap_on_grow_failure(true)
            .build();
        let state = CallState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: CallLimiter {
                limits,
                memory_limit_hit: false,
            },
            context: context.clone(),
            stdout,
            stderr,
            emitted: Vec::new(),
            emitted_bytes: 0,
            emit_limit_hit: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // Yield to the async runtime at every epoch tick, so a guest that
        // never returns still lets the timeout below fire and other events run.
        store.epoch_deadline_async_yield_and_update(1);
        Ok(Warm::new(store))
    }
}

/// Runs one call in `warm`: clears the previous call's state, then calls
/// `handle` until `deadline` and flushes the guest's output.
async fn call_on(
    warm: &mut Warm,
    handler: &LoadedHandler,
    context: &CallContext,
    input: &types::Event,
    event_id: Arc<str>,
    deadline: tokio::time::Instant,
) -> Result<Vec<Emitted>, CallError> {
    warm.store.data_mut().start_call(event_id);
    // Epoch checks yield from now on, not from the instance's last call.
    warm.store.set_epoch_deadline(1);
    let outcome = run_handle(warm, handler, context, input, deadline).await;
    warm.store.data().finish_call();
    warm.calls += 1;
    outcome
}

/// Calls `handle` until `deadline`, instantiating the handler first when
/// the store has no instance yet.
async fn run_handle(
    warm: &mut Warm,
    handler: &LoadedHandler,
    context: &CallContext,
    input: &types::Event,
    deadline: tokio::time::Instant,
) -> Result<Vec<Emitted>, CallError> {
    let timeout = context.limits.timeout;
    let run = async {
        let instance = match warm.instance.take() {
            Some(instance) => instance,
            None => handler.pre.instantiate_async(&mut warm.store).await?,
        };
        let result = instance.call_handle(&mut warm.store, input).await;
        warm.instance = Some(instance);
        result
    };
    let result = match tokio::time::timeout_at(deadline, run).await {
        Err(_) => return Err(CallError::Deadline(timeout)),
        Ok(Err(_)) if warm.store.data().limits.memory_limit_hit => {
            return Err(CallError::MemoryLimit(context.limits.memory));
        }
        Ok(Err(trap)) => return Err(CallError::Trap(format!("{trap:#}"))),
        Ok(Ok(result)) => result,
    };
    let state = warm.store.data_mut();
    // Whatever the guest made of the rejected `emit`, the call is one
    // attempt that hit a limit, and none of its events are published.
    if state.emit_limit_hit {
        return Err(CallError::EmitLimit(context.limits.emit_size));
    }
    match result {
        Ok(()) => Ok(std::mem::take(&mut state.emitted)),
        Err(types::HandlerError::Retry(reason)) => Err(CallError::Retry(reason)),
        Err(types::HandlerError::Reject(reason)) => Err(CallError::Reject(reason)),
    }
}

fn to_wit_event(event: &Event, attempt: u32) -> types::Event {
    types::Event {
        id: event.id.clone(),
        type_: event.event_type.clone(),
        source: event.source.clone(),
        time: event.time.clone(),
        subject: event.subject.clone(),
        data_content_type: event.data_content_type.clone(),
        data: serde_json::to_vec(&event.data).unwrap_or_default(),
        extensions: event
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        attempt,
    }
}

/// Writes a compiled component through a temporary file and a rename, so
/// a concurrent reader never sees half a file.
fn write_cache(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

fn host_error(err: impl std::fmt::Display) -> CallError {
    CallError::Host(err.to_string())
}

const WASM_MAGIC: &[u8] = b"\0asm";

/// Reports whether bytes start with the header of a component (layer 1), as
/// opposed to a core module (layer 0).
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == WASM_MAGIC && bytes[6..8] == [1, 0]
}

fn describe_non_component(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "file is empty (a write may still be in progress)".to_owned()
    } else if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        "file is not WebAssembly (no `\\0asm` header)".to_owned()
    } else if bytes[6..8] == [0, 0] {
        format!(
            "file is a core WebAssembly module, not a component; it exports {}. Build it for the \
             handler world and turn it into a component with `wasm-tools component new`",
            name_list(&core_module_exports(bytes))
        )
    } else {
        "file has an unknown WebAssembly layer".to_owned()
    }
}

/// Returns the export names of a core module, as far as it parses.
fn core_module_exports(bytes: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(wasmparser::Payload::ExportSection(section)) = payload else {
            continue;
        };
        names.extend(section.into_iter().flatten().map(|e| e.name.to_owned()));
    }
    names
}

/// Formats names as "`a`, `b`", or "nothing" for none.
fn name_list<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "nothing".to_owned();
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("`{}`", n.as_ref())).collect();
    quoted.join(", ")
}

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
