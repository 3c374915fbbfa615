//! The plugin runtime. Three lifetimes of state, named by their types:
//! - process-wide: [`PluginRuntime`] (the wasmtime `Engine` with its pooling allocator, the WASI
//!   linker, the epoch ticker, the call semaphore, the artifact cache);
//! - per plugin version: [`CompiledPlugin`] (the validated component and its `InstancePre`);
//! - per call: a `Store<CallState>` built, used and dropped inside [`PluginRuntime::classify`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceType};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use super::breaker::{Admission, Breaker, BreakerConfig};
use super::cache::ArtifactCache;
use super::contract;
use super::error::{PluginError, UploadError};
use super::limits::PluginLimits;
use super::sandbox::{self, CallState, SandboxSpec};
use super::wit::{self, CLASSIFIER_EXPORT, RiskClassifierPre};
use crate::risk::{ClassifyInput, PluginInfo, Verdict};

/// Process-wide settings of the plugin runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The largest component accepted for upload.
    pub max_component_bytes: usize,
    /// Plugin calls running at once; further calls wait for a slot.
    pub max_concurrent_calls: u32,
    /// Plugin calls of one vendor running at once (default: half the cores, at least one), so
    /// that a vendor whose plugin spins to its deadline on every call holds at most that many
    /// cores and the other vendors keep the rest; further calls wait for a slot.
    pub max_calls_per_vendor: u32,
    /// How long a call waits for a slot before failing as busy.
    pub queue_timeout: Duration,
    /// Limits no vendor may exceed; also sizes the allocator's pool.
    pub platform_max: PluginLimits,
    /// Where compiled artifacts are cached; `None` compiles every time.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Bytes of each linear memory the pool keeps resident between calls (zeroed with memset
    /// instead of being returned to the kernel), trading resident memory for fewer page faults.
    pub keep_resident_bytes: usize,
    /// When a plugin version whose calls keep running out of time or fuel is paused.
    pub breaker: BreakerConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_component_bytes: 20 << 20,
            max_concurrent_calls: 32,
            max_calls_per_vendor: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get().div_ceil(2)).unwrap_or(1)),
            queue_timeout: Duration::from_secs(2),
            platform_max: PluginLimits::platform_max(),
            cache_dir: None,
            keep_resident_bytes: 1 << 20,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Errors starting the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error("could not open the plugin cache directory: {0}")]
    Cache(#[from] std::io::Error),
}

/// A plugin version's identity, as reported with every call and recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginIdentity {
    pub vendor: String,
    /// The plugin's name within the vendor.
    pub name: String,
    /// The immutable version number the host gave the upload.
    pub version: u32,
    /// Hex sha256 of the component bytes.
    pub sha256: String,
}

/// A compiled, validated component: cheap to clone, shared by every call to its plugin version.
#[derive(Clone)]
pub struct CompiledPlugin {
    inner: Arc<CompiledInner>,
}

struct CompiledInner {
    /// sha256 of the component bytes: the content address, and part of the sandbox's seed.
    sha256: [u8; 32],
    /// The component linked against the sandbox's WASI, ready to instantiate per call.
    pre: RiskClassifierPre<CallState>,
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("sha256", &self.sha256_hex())
            .finish()
    }
}

impl CompiledPlugin {
    /// Hex sha256 of the component bytes.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.inner.sha256)
    }
}

/// A plugin version ready to classify: its identity, what it declared, and its compiled code.
#[derive(Debug, Clone)]
pub struct LoadedPlugin {
    pub identity: PluginIdentity,
    pub info: PluginInfo,
    pub compiled: CompiledPlugin,
}

impl LoadedPlugin {
    /// `compiled` as `vendor`'s plugin `version`, named by what it described (`info`): for
    /// plugins run outside the registry (the CLI, tests, benchmarks).
    pub fn new(vendor: &str, version: u32, compiled: CompiledPlugin, info: PluginInfo) -> Self {
        Self {
            identity: PluginIdentity {
                vendor: vendor.to_owned(),
                name: info.name.clone(),
                version,
                sha256: compiled.sha256_hex(),
            },
            info,
            compiled,
        }
    }
}

/// What one call did: everything the audit log records about a plugin's classification.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub plugin: PluginIdentity,
    pub outcome: Result<Verdict, PluginError>,
    /// Fuel consumed by instantiation and the call.
    pub fuel_used: u64,
    /// Wall time from building the sandbox to dropping it (excluding any wait for a slot).
    pub wall_time: Duration,
    /// The call's captured stdout/stderr.
    pub log: String,
    /// Whether the log hit its cap and lost output.
    pub log_truncated: bool,
}

/// The process-wide plugin runtime.
pub struct PluginRuntime {
    /// Compiles and runs every plugin; owns the pooling allocator.
    engine: Engine,
    /// WASI 0.2, deny-by-default per call; cloned per plugin version to stub unknown imports.
    linker: Linker<CallState>,
    config: RuntimeConfig,
    /// Bounds the calls inside guest code at once (and so the pool slots in use).
    permits: Semaphore,
    /// Each vendor's own bound, [`RuntimeConfig::max_calls_per_vendor`].
    vendor_permits: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The breakers of plugin versions with recent costly failures (others have none).
    breakers: std::sync::Mutex<HashMap<PluginIdentity, Breaker>>,
    cache: Option<ArtifactCache>,
    /// Advances the engine's epoch every millisecond so running guests check their deadline.
    _ticker: EpochTicker,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The interval at which running guests are interrupted to check their wall-clock deadline.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The error a guest is stopped with when its wall-clock deadline passes.
#[derive(Debug)]
struct DeadlineReached;

impl std::fmt::Display for DeadlineReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wall-clock deadline reached")
    }
}

impl std::error::Error for DeadlineReached {}

/// What to ask a guest.
enum Ask<'a> {
    Describe,
    Classify(&'a wit::ClassifyInput<'a>),
}

/// A guest's raw answer.
enum Answer {
    Info(wit::approval::risk::types::PluginInfo),
    Verdict(Result<wit::approval::risk::types::Verdict, String>),
}

/// One finished guest invocation, before its answer is checked against the contract.
struct Invocation {
    answer: Result<Answer, PluginError>,
    fuel_used: u64,
    wall_time: Duration,
    log: String,
    log_truncated: bool,
}

impl PluginRuntime {
    /// Builds the engine, the pool and the WASI linker.
    ///
    /// # Errors
    /// The engine rejects the configuration, or the cache directory cannot be created.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine_err = |e: wasmtime::Error| RuntimeError::Engine(e.to_string());
        let calls = config.max_concurrent_calls.max(1);
        let per = |n: usize| calls.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(calls)
            .total_core_instances(per(sandbox::MAX_CORE_INSTANCES))
            .max_core_instances_per_component(per(sandbox::MAX_CORE_INSTANCES) / calls)
            .total_memories(per(sandbox::MAX_MEMORIES))
            .max_memories_per_component(per(sandbox::MAX_MEMORIES) / calls)
            .total_tables(per(sandbox::MAX_TABLES))
            .max_tables_per_component(per(sandbox::MAX_TABLES) / calls)
            .total_stacks(calls)
            .max_memory_size(config.platform_max.memory_bytes)
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(config.keep_resident_bytes)
            // Reset only the pages a call dirtied (found with Linux's PAGEMAP_SCAN, kernel 6.7+)
            // instead of memsetting the first `keep_resident_bytes` of every memory after every
            // call: that reset was about two thirds of a fresh call's time (see BENCHMARKS.md).
            // `Auto` falls back to the memset where the ioctl is unavailable.
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir, &engine)?),
            None => None,
        };
        Ok(Self {
            _ticker: EpochTicker::start(&engine),
            permits: Semaphore::new(calls as usize),
            vendor_permits: std::sync::Mutex::default(),
            breakers: std::sync::Mutex::default(),
            engine,
            linker,
            config,
            cache,
        })
    }

    /// The runtime's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Validates and compiles an uploaded component. CPU-heavy (milliseconds to seconds): call it
    /// from a blocking context, e.g. `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    /// An [`UploadError`] saying what is wrong with the component in a vendor's terms.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledPlugin, UploadError> {
        check_envelope(bytes, self.config.max_component_bytes)?;
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let sha_hex = hex::encode(sha256);
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.engine, &sha_hex));
        let component = match cached {
            Some(component) => component,
            None => {
                let component =
                    Component::new(&self.engine, bytes).map_err(|e| UploadError::Invalid {
                        detail: first_line(&format!("{e:?}")),
                    })?;
                if let Some(cache) = &self.cache {
                    cache.store(&sha_hex, &component);
                }
                component
            }
        };
        self.link(&component).map(|pre| CompiledPlugin {
            inner: Arc::new(CompiledInner { sha256, pre }),
        })
    }

    /// Checks the component's imports and exports against the contract and links it.
    fn link(&self, component: &Component) -> Result<RiskClassifierPre<CallState>, UploadError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if !(name.starts_with("wasi:") || name.starts_with("approval:risk/types@")) {
                return Err(UploadError::ForbiddenImport {
                    import: name.to_owned(),
                });
            }
        }
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        if !exports.iter().any(|n| n == CLASSIFIER_EXPORT) {
            let found = if exports.is_empty() {
                "nothing".to_owned()
            } else {
                exports
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(UploadError::MissingExport {
                expected: CLASSIFIER_EXPORT,
                found,
            });
        }
        let mut linker = self.linker.clone();
        let host_err = |e: wasmtime::Error| UploadError::WrongSignature {
            export: CLASSIFIER_EXPORT,
            detail: first_line(&format!("{e:?}")),
        };
        stub_unserved_imports(&mut linker, component, &self.engine).map_err(host_err)?;
        let pre = linker.instantiate_pre(component).map_err(host_err)?;
        RiskClassifierPre::new(pre).map_err(host_err)
    }

    /// Runs the component's `describe` in a sandbox and checks the answer.
    ///
    /// # Errors
    /// The call failed, or its answer breaks the contract.
    pub async fn describe(
        &self,
        compiled: &CompiledPlugin,
        limits: &PluginLimits,
    ) -> Result<PluginInfo, UploadError> {
        let spec = SandboxSpec {
            seed: "describe".to_owned(),
            now_ms: 0,
        };
        let limits = limits.clamped_to(&self.config.platform_max);
        let invocation = self.invoke(compiled, spec, &limits, Ask::Describe).await;
        let raw = match invocation.answer {
            Ok(Answer::Info(info)) => info,
            Ok(Answer::Verdict(_)) => unreachable_answer(),
            Err(err) => return Err(UploadError::DescribeFailed(err)),
        };
        let (info, size) = wit::plugin_info(raw);
        let limit = limits.max_output_bytes;
        if size > limit {
            return Err(UploadError::DescribeFailed(PluginError::OutputTooLarge {
                bytes: size,
                limit,
            }));
        }
        contract::check_info(&info).map_err(|problem| UploadError::BadDescription { problem })?;
        Ok(info)
    }

    /// Classifies one request with one plugin version, in a fresh sandbox. Never fails: a failed
    /// call is reported in [`CallReport::outcome`] for the policy's fail mode to handle.
    pub async fn classify(
        &self,
        plugin: &LoadedPlugin,
        input: &ClassifyInput,
        limits: &PluginLimits,
    ) -> CallReport {
        let limits = limits.clamped_to(&self.config.platform_max);
        let size = wit::input_size(input);
        let now_ms = input.request.requested_at_ms;
        let invocation = if size > limits.max_input_bytes {
            Invocation::refused(PluginError::InputTooLarge {
                bytes: size,
                limit: limits.max_input_bytes,
            })
        } else if let Admission::Refuse { until_ms, failures } =
            self.breaker(&plugin.identity, |b, config| b.admit(now_ms, config))
        {
            Invocation::refused(PluginError::Suspended { until_ms, failures })
        } else {
            let spec = SandboxSpec {
                seed: input.request.id.clone(),
                now_ms,
            };
            let wit_input = wit::ClassifyInput::new(input);
            match self.vendor_slot(&plugin.identity.vendor).await {
                Some(_slot) => {
                    let invocation = self
                        .invoke(&plugin.compiled, spec, &limits, Ask::Classify(&wit_input))
                        .await;
                    let costly = matches!(
                        invocation.answer,
                        Err(PluginError::Deadline { .. } | PluginError::OutOfFuel { .. })
                    );
                    self.breaker(&plugin.identity, |b, config| {
                        b.record(costly, now_ms, config);
                    });
                    invocation
                }
                None => {
                    self.breaker(&plugin.identity, |b, _| b.abandon());
                    Invocation::refused(PluginError::Busy {
                        waited: self.config.queue_timeout,
                    })
                }
            }
        };
        let Invocation {
            answer,
            fuel_used,
            wall_time,
            log,
            log_truncated,
        } = invocation;
        let outcome = match answer {
            Err(err) => Err(err),
            Ok(Answer::Info(_)) => unreachable_answer(),
            Ok(Answer::Verdict(Err(message))) => Err(PluginError::Declined {
                message: truncate(&message, contract::MAX_REASON_BYTES),
            }),
            Ok(Answer::Verdict(Ok(raw))) => {
                let (verdict, size) = wit::verdict(raw);
                if size > limits.max_output_bytes {
                    Err(PluginError::OutputTooLarge {
                        bytes: size,
                        limit: limits.max_output_bytes,
                    })
                } else {
                    contract::check_verdict(&verdict, &plugin.info, &input.request)
                        .map(|()| verdict)
                        .map_err(|problem| PluginError::MalformedVerdict { problem })
                }
            }
        };
        CallReport {
            plugin: plugin.identity.clone(),
            outcome,
            fuel_used,
            wall_time,
            log,
            log_truncated,
        }
    }

    /// Runs `f` on `plugin`'s breaker, keeping only breakers that are not idle.
    fn breaker<T>(
        &self,
        plugin: &PluginIdentity,
        f: impl FnOnce(&mut Breaker, &BreakerConfig) -> T,
    ) -> T {
        let mut map = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(plugin) {
            Some(breaker) => {
                let out = f(breaker, &self.config.breaker);
                if breaker.is_idle() {
                    map.remove(plugin);
                }
                out
            }
            None => {
                let mut breaker = Breaker::default();
                let out = f(&mut breaker, &self.config.breaker);
                if !breaker.is_idle() {
                    map.insert(plugin.clone(), breaker);
                }
                out
            }
        }
    }

    /// A slot among `vendor`'s calls, or `None` after waiting the queue timeout for one.
    async fn vendor_slot(&self, vendor: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut map = self
                .vendor_permits
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match map.get(vendor) {
                Some(semaphore) => Arc::clone(semaphore),
                None => {
                    let per_vendor = self.config.max_calls_per_vendor.max(1) as usize;
                    let semaphore = Arc::new(Semaphore::new(per_vendor));
                    map.insert(vendor.to_owned(), Arc::clone(&semaphore));
                    semaphore
                }
            }
        };
        tokio::time::timeout(self.config.queue_timeout, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Runs one export in a fresh store with every limit set before guest code runs. The caller
    /// has already clamped `limits` to the platform maxima.
    async fn invoke(
        &self,
        compiled: &CompiledPlugin,
        spec: SandboxSpec,
        limits: &PluginLimits,
        ask: Ask<'_>,
    ) -> Invocation {
        if !Engine::same(&self.engine, compiled.inner.pre.instance_pre().engine()) {
            return Invocation::refused(PluginError::Host {
                message: "the plugin was compiled by another runtime".to_owned(),
            });
        }
        let waited = self.config.queue_timeout;
        let _permit = match tokio::time::timeout(waited, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Invocation::refused(PluginError::Busy { waited });
            }
        };
        let started = Instant::now();
        let deadline = started + limits.deadline;
        let state = CallState::new(
            spec,
            &compiled.inner.sha256,
            limits.memory_bytes,
            limits.log_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        if let Err(err) = store.set_fuel(limits.fuel) {
            return Invocation::refused(PluginError::Host {
                message: err.to_string(),
            });
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let call = async {
            let instance = compiled.inner.pre.instantiate_async(&mut store).await?;
            let guest = instance.approval_risk_classifier();
            match ask {
                Ask::Describe => guest.call_describe(&mut store).await.map(Answer::Info),
                Ask::Classify(input) => guest
                    .call_classify(&mut store, input.get())
                    .await
                    .map(Answer::Verdict),
            }
        };
        // The epoch callback stops guest code; this timeout also stops a guest blocked in a host
        // call (a WASI sleep or poll), where no epoch check runs.
        let result = tokio::time::timeout(limits.deadline, call).await;
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let memory_refused = store.data().limiter.memory_refused;
        let (log, log_truncated) = store.data().log.take();
        drop(store);
        let answer = match result {
            Err(_elapsed) => Err(PluginError::Deadline {
                limit: limits.deadline,
            }),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(failure(&err, memory_refused, limits)),
        };
        Invocation {
            answer,
            fuel_used,
            wall_time: started.elapsed(),
            log,
            log_truncated,
        }
    }
}

/// One instance kept across calls, for benchmarks and diagnostics only: guest state persists
/// between calls, which the host never allows for requests (they get a fresh instance each).
#[doc(hidden)]
pub struct ReusedInstance {
    store: Store<CallState>,
    instance: wit::RiskClassifier,
}

impl std::fmt::Debug for ReusedInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReusedInstance").finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Instantiates `plugin` once for repeated calls (see [`ReusedInstance`]).
    ///
    /// # Errors
    /// Instantiation failed.
    #[doc(hidden)]
    pub async fn reused_instance(
        &self,
        plugin: &LoadedPlugin,
    ) -> Result<ReusedInstance, PluginError> {
        let limits = PluginLimits::default();
        let spec = SandboxSpec {
            seed: "reused".to_owned(),
            now_ms: 0,
        };
        let state = CallState::new(
            spec,
            &plugin.compiled.inner.sha256,
            limits.memory_bytes,
            limits.log_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        let host = |e: wasmtime::Error| PluginError::Host {
            message: e.to_string(),
        };
        store.set_fuel(u64::MAX).map_err(host)?;
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = plugin
            .compiled
            .inner
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(host)?;
        Ok(ReusedInstance { store, instance })
    }
}

impl ReusedInstance {
    /// Classifies on the kept instance, without the contract checks of a real call.
    ///
    /// # Errors
    /// The call trapped or the plugin declined.
    pub async fn classify(&mut self, input: &ClassifyInput) -> Result<Verdict, PluginError> {
        let host = |e: wasmtime::Error| PluginError::Host {
            message: e.to_string(),
        };
        self.store.set_fuel(u64::MAX).map_err(host)?;
        let input = wit::ClassifyInput::new(input);
        let answer = self
            .instance
            .approval_risk_classifier()
            .call_classify(&mut self.store, input.get())
            .await
            .map_err(host)?;
        answer
            .map(|raw| wit::verdict(raw).0)
            .map_err(|message| PluginError::Declined { message })
    }
}

impl Invocation {
    /// An invocation the host refused before any guest code ran.
    fn refused(error: PluginError) -> Self {
        Self {
            answer: Err(error),
            fuel_used: 0,
            wall_time: Duration::ZERO,
            log: String::new(),
            log_truncated: false,
        }
    }
}

fn unreachable_answer() -> ! {
    unreachable!("each Ask variant is answered by its own export")
}

/// Maps a wasmtime error from a guest call to the plugin error it stands for.
fn failure(err: &wasmtime::Error, memory_refused: bool, limits: &PluginLimits) -> PluginError {
    if err.is::<DeadlineReached>() {
        return PluginError::Deadline {
            limit: limits.deadline,
        };
    }
    if err.is::<wasmtime::PoolConcurrencyLimitError>() {
        return PluginError::Host {
            message: err.to_string(),
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginError::OutOfFuel { limit: limits.fuel },
        Some(Trap::StackOverflow) => PluginError::StackOverflow,
        Some(Trap::Interrupt) => PluginError::Deadline {
            limit: limits.deadline,
        },
        _ if memory_refused => PluginError::OutOfMemory {
            limit_bytes: limits.memory_bytes,
        },
        Some(trap) => PluginError::Trap {
            message: trap.to_string(),
        },
        None => PluginError::Trap {
            message: truncate(
                &first_line(&err.root_cause().to_string()),
                contract::MAX_REASON_BYTES,
            ),
        },
    }
}

/// The WASI 0.2 interfaces the sandbox serves; an import of any 0.2.x version of them resolves
/// to wasmtime-wasi's implementation by semver.
const SERVED_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure-seed",
    "wasi:random/insecure",
    "wasi:random/random",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
];

fn is_served(import: &str) -> bool {
    let (interface, version) = import.split_once('@').unwrap_or((import, ""));
    version.starts_with("0.2.") && SERVED_WASI.contains(&interface)
}

/// The resource type given to stubbed imports' resources.
struct Unserved;

/// Links the imports the sandbox does not serve (other WASI interfaces such as wasi:http, and
/// the contract's type-only interface) to functions that trap when called, so components whose
/// toolchain imports them at start-up still load. Served WASI imports are left to the linker's
/// semver matching.
fn stub_unserved_imports(
    linker: &mut Linker<CallState>,
    component: &Component,
    engine: &Engine,
) -> wasmtime::Result<()> {
    for (name, item) in component.component_type().imports(engine) {
        if is_served(name) {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let mut stubs = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{name}#{export}");
                    stubs.func_new(export, move |_, _, _, _| {
                        Err(wasmtime::format_err!(
                            "the sandbox does not provide `{what}`"
                        ))
                    })?;
                }
                ComponentItem::Resource(_) => {
                    stubs.resource(export, ResourceType::host::<Unserved>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Rejects what is obviously not a component before handing bytes to the compiler.
fn check_envelope(bytes: &[u8], max: usize) -> Result<(), UploadError> {
    if bytes.is_empty() {
        return Err(UploadError::Empty);
    }
    if bytes.len() > max {
        return Err(UploadError::TooLarge {
            bytes: bytes.len(),
            limit: max,
        });
    }
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(UploadError::CoreModule),
        Some([0, b'a', b's', b'm', ..]) => Ok(()),
        _ => Err(UploadError::NotWasm),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("plugin-epoch".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        Self { stop, handle }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_told_apart() {
        assert_eq!(check_envelope(b"", 10), Err(UploadError::Empty));
        assert_eq!(
            check_envelope(b"hello world", 100),
            Err(UploadError::NotWasm)
        );
        assert_eq!(
            check_envelope(b"\0asm\x01\0\0\0", 100),
            Err(UploadError::CoreModule)
        );
        assert_eq!(check_envelope(b"\0asm\x0d\0\x01\0", 100), Ok(()));
        assert_eq!(
            check_envelope(&[0; 11], 10),
            Err(UploadError::TooLarge {
                bytes: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("¥¥¥", 3), "¥…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
