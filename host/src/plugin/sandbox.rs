//! The per-call sandbox: a deterministic, deny-by-default WASI and the resource limiter.
//!
//! Everything here lives for exactly one call (one `Store`). No filesystem is preopened, sockets
//! and name lookups are refused, the environment and arguments are empty, stdin is closed, both
//! clocks read the request time, randomness comes from a generator seeded by the request id and
//! the component's hash, and stdout/stderr go to one capped in-memory log.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use sha2::{Digest as _, Sha256};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_io::bytes::Bytes;

/// What makes one call's sandbox deterministic: the same spec gives the same guest-visible world.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Seeds the random generators (together with the component hash).
    pub seed: String,
    /// What both clocks read, in milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// The state of one call's `Store`.
pub struct CallState {
    /// The deny-by-default WASI context, built from `spec` the first time the guest calls into
    /// WASI. A component that imports no WASI never needs one, and many calls of one that does
    /// never use it; either way the guest sees the same context, whenever it is built.
    wasi: Option<WasiCtx>,
    /// What the WASI context is built from.
    spec: SandboxSpec,
    /// The component's sha256, which seeds the random generators together with `spec.seed`.
    component_sha256: [u8; 32],
    /// Resources (streams, pollables) the guest holds during the call.
    table: ResourceTable,
    /// Enforces the memory, table and instance caps and remembers whether memory was refused.
    pub(crate) limiter: CallLimiter,
    /// The captured stdout/stderr of the call.
    pub(crate) log: CallLog,
}

impl std::fmt::Debug for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallState")
            .field("spec", &self.spec)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl CallState {
    /// A fresh sandbox for one call.
    pub(crate) fn new(
        spec: SandboxSpec,
        component_sha256: &[u8; 32],
        memory_bytes: usize,
        log_bytes: usize,
    ) -> Self {
        Self {
            wasi: None,
            spec,
            component_sha256: *component_sha256,
            table: ResourceTable::new(),
            limiter: CallLimiter::new(memory_bytes),
            log: CallLog::new(log_bytes),
        }
    }
}

/// The deny-by-default WASI context of a call: no preopens, sockets and name lookups refused,
/// empty environment and arguments, closed stdin, both clocks at the request time, generators
/// seeded from the spec's seed and the component's hash, stdout and stderr into `log`.
fn deny_by_default_wasi(spec: &SandboxSpec, component_sha256: &[u8; 32], log: &CallLog) -> WasiCtx {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(b"approval-host sandbox seed v1\0")
        .chain_update(component_sha256)
        .chain_update(spec.seed.as_bytes())
        .finalize()
        .into();
    let insecure_seed = u128::from_le_bytes(seed[..16].try_into().unwrap_or_default());
    let clock = FrozenClock(Duration::from_millis(spec.now_ms));
    let mut builder = WasiCtx::builder();
    builder
        .stdout(log.clone())
        .stderr(log.clone())
        .wall_clock(clock)
        .monotonic_clock(clock)
        .secure_random(StdRng::from_seed(seed))
        .insecure_random(StdRng::from_seed(Sha256::digest(seed).into()))
        .insecure_random_seed(insecure_seed)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder.build()
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let Self {
            wasi,
            spec,
            component_sha256,
            table,
            log,
            ..
        } = self;
        let ctx = wasi.get_or_insert_with(|| deny_by_default_wasi(spec, component_sha256, log));
        WasiCtxView { ctx, table }
    }
}

/// A clock stopped at the request time: wall and monotonic readings never move during a call.
#[derive(Debug, Clone, Copy)]
struct FrozenClock(Duration);

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Caps memory (summed over all memories), tables and instances, and records a refused growth
/// so a failed call can be reported as out-of-memory rather than as the trap the guest's
/// allocator turned it into.
#[derive(Debug)]
pub(crate) struct CallLimiter {
    /// The memory cap for the whole component.
    memory_limit: usize,
    /// Memory granted so far, over all memories.
    memory_used: usize,
    /// Set once a growth was refused.
    pub(crate) memory_refused: bool,
}

/// Table elements any one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Core instances, tables and memories one component may create.
pub(crate) const MAX_CORE_INSTANCES: usize = 50;
pub(crate) const MAX_TABLES: usize = 50;
pub(crate) const MAX_MEMORIES: usize = 4;

impl CallLimiter {
    fn new(memory_limit: usize) -> Self {
        Self {
            memory_limit,
            memory_used: 0,
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self
            .memory_used
            .saturating_add(desired.saturating_sub(current));
        if after > self.memory_limit {
            self.memory_refused = true;
            return Ok(false);
        }
        self.memory_used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// One call's stdout and stderr, interleaved, kept up to a cap. Writes past the cap succeed (so a
/// chatty guest is not broken by logging) but are dropped and the log is marked truncated.
#[derive(Debug, Clone)]
pub(crate) struct CallLog(Arc<Mutex<LogBuffer>>);

#[derive(Debug)]
struct LogBuffer {
    bytes: Vec<u8>,
    cap: usize,
    truncated: bool,
}

/// The most a single write may carry; the guest splits larger writes.
const WRITE_PERMIT: usize = 64 << 10;

impl CallLog {
    fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(LogBuffer {
            bytes: Vec::new(),
            cap,
            truncated: false,
        })))
    }

    fn append(&self, data: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let room = buf.cap.saturating_sub(buf.bytes.len());
        if data.len() > room {
            buf.truncated = true;
        }
        buf.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// The captured text (invalid UTF-8 replaced) and whether some was dropped.
    pub(crate) fn take(&self) -> (String, bool) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&buf.bytes).into_owned();
        buf.bytes.clear();
        (text, buf.truncated)
    }
}

impl IsTerminal for CallLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CallLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CallLog {
    async fn ready(&mut self) {}
}

impl OutputStream for CallLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for CallLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_its_cap_and_says_it_dropped_the_rest() {
        let log = CallLog::new(8);
        log.append(b"hello ");
        log.append(b"world");
        assert_eq!(log.take(), ("hello wo".to_owned(), true));
    }

    #[test]
    fn memory_is_capped_over_all_memories() {
        let mut limiter = CallLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap_or(false));
        assert!(!limiter.memory_growing(0, 60, None).unwrap_or(true));
        assert!(limiter.memory_refused);
        assert!(limiter.memory_growing(60, 100, None).unwrap_or(false));
    }
}
