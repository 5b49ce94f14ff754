//! The sandbox: wasmtime engine, limits, component loading and the evaluation of one layer.
//!
//! Every evaluation gets a fresh `Store` from a pre-linked `InstancePre`, an epoch deadline
//! (wall time), fuel (deterministic work), a memory cap, and a cap on the bytes one host call
//! may copy. Whatever goes wrong comes back as a typed [`Failure`].
//!
//! Two worlds of the `autoprune:metric` package run here: metric plugins ([`Plugin`]) and
//! layer-wise sparsity allocators ([`AllocatorPlugin`]); [`AnyPlugin`] loads either, telling
//! the world from the component's exports.

mod allocator;
mod bindings;
mod cache;
mod charge;
mod policy;
pub mod precheck;
mod state;
mod verdict;

pub use allocator::{Allocated, AllocatorInfo, AllocatorPlugin, AnyPlugin, World};
pub use bindings::{ALLOWED_ALLOCATOR_IMPORTS, ALLOWED_IMPORTS};
pub use cache::{sha256_hex, ArtifactCache, CacheError, MAX_CACHE_BYTES};
pub use policy::Policy;
pub use state::LogLine;
pub use verdict::{Failure, GuestError, InvalidOutput};

use crate::layer::{LayerData, LayerKind};
use bindings::v0_1_1::{types, Metric, MetricPre};
use serde::{Deserialize, Serialize};
use state::HostState;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, Trap};

/// How often the epoch advances. Why 5 ms: deadlines are seconds long, so 5 ms of slack is
/// noise, and a tick this coarse costs nothing measurable.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The process-wide engine: one configuration for every plugin, so compiled artifacts and
/// their cache keys are shared; an epoch ticker thread drives deadlines.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(Policy::default().max_wasm_stack)
            .wasm_simd(true)
            // Results must be bit-repeatable: canonical NaNs (threads are off without the feature).
            .cranelift_nan_canonicalization(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&cfg).expect("static engine configuration is valid");
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("autoprune-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            })
            .expect("spawn epoch ticker");
        engine
    })
}

/// A short fingerprint of the engine configuration and wasmtime version, part of every cache key.
pub fn engine_fingerprint() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine().precompile_compatibility_hash().hash(&mut h);
    format!("wasmtime48.0.8-{:016x}", h.finish())
}

/// What a metric says about itself (`describe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricInfo {
    /// Short name.
    pub name: String,
    /// Free-form version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// Whether the metric reads the gradient statistic.
    pub needs_gradient: bool,
}

/// A successful evaluation of one layer.
#[derive(Debug, Clone)]
pub struct Scored {
    /// One score per weight, row-major; validated finite and complete.
    pub scores: Vec<f32>,
    /// Resource use of the call.
    pub usage: Usage,
}

/// Resources one call used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Fuel consumed (deterministic for a given plugin and input).
    pub fuel: u64,
    /// Fuel granted.
    pub fuel_limit: u64,
    /// Wall time in seconds, instantiation included.
    pub seconds: f64,
    /// Largest guest linear memory seen, in bytes.
    pub peak_memory_bytes: u64,
    /// Log lines the guest sent.
    pub logs: Vec<LogLine>,
}

/// A metric plugin: a validated, compiled component, ready to instantiate.
pub struct Plugin {
    pre: MetricPre<HostState>,
    policy: Policy,
    info: MetricInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).finish()
    }
}

/// Reject a component whose imports leave the metric interface (no WASI, nothing unknown).
pub fn check_imports(component: &Component) -> Result<(), Failure> {
    check_imports_against(component, ALLOWED_IMPORTS)
}

/// Reject a component that imports anything not in `allowed`.
fn check_imports_against(component: &Component, allowed: &[&str]) -> Result<(), Failure> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine()) {
        if !allowed.contains(&name) {
            return Err(Failure::Rejected {
                reason: format!(
                    "the component imports `{name}`; only {} are allowed",
                    allowed.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// A fresh store for one call: memory limiter, fuel and an epoch deadline of `timeout`.
fn new_store(
    policy: &Policy,
    gradient_allowed: bool,
    fuel: u64,
    timeout: Duration,
) -> Store<HostState> {
    let mut store = Store::new(engine(), HostState::new(policy, gradient_allowed));
    store.limiter(|s| &mut s.limiter);
    store.set_fuel(fuel).expect("fuel is enabled on the engine");
    let ticks = timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1;
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_trap();
    store
}

/// Compile `bytes` (or fetch the artifact from `cache`) after the size check.
fn component_of(
    bytes: &[u8],
    policy: &Policy,
    cache: Option<&ArtifactCache>,
) -> Result<Component, Failure> {
    if bytes.len() as u64 > policy.max_component_bytes {
        return Err(Failure::Rejected {
            reason: format!(
                "component is {} bytes; the limit is {}",
                bytes.len(),
                policy.max_component_bytes
            ),
        });
    }
    match cache {
        Some(c) => c.component(bytes),
        None => compile(bytes),
    }
}

fn linker() -> Result<Linker<HostState>, Failure> {
    let mut linker = Linker::new(engine());
    Metric::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .and_then(|()| charge::metric(&mut linker))
        .map_err(|e| Failure::Rejected {
            reason: format!("host linker: {e}"),
        })?;
    Ok(linker)
}

impl Plugin {
    /// Validate and compile component bytes (or fetch the compiled artifact from `cache`),
    /// then call `describe` once.
    pub fn load(
        bytes: &[u8],
        policy: &Policy,
        cache: Option<&ArtifactCache>,
    ) -> Result<Self, Failure> {
        let component = component_of(bytes, policy, cache)?;
        Self::from_component(&component, policy)
    }

    /// Check, link and describe an already compiled component.
    fn from_component(component: &Component, policy: &Policy) -> Result<Self, Failure> {
        check_imports(component)?;
        let pre = linker()?
            .instantiate_pre(component)
            .map_err(|e| Failure::Rejected {
                reason: format!("cannot link the component against autoprune:metric@0.1.1: {e:#}"),
            })?;
        let pre = MetricPre::new(pre).map_err(|e| Failure::Rejected {
            reason: format!("the component does not export the metric world: {e:#}"),
        })?;
        let mut plugin = Self {
            pre,
            policy: policy.clone(),
            info: MetricInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                needs_gradient: false,
            },
        };
        plugin.info = plugin.describe()?;
        Ok(plugin)
    }

    /// What the metric said about itself.
    pub fn info(&self) -> &MetricInfo {
        &self.info
    }

    /// The policy this plugin runs under.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn store(&self, fuel: u64, timeout: Duration) -> Store<HostState> {
        new_store(&self.policy, self.info.needs_gradient, fuel, timeout)
    }

    fn describe(&self) -> Result<MetricInfo, Failure> {
        let timeout = Duration::from_millis(self.policy.describe_timeout_ms);
        let mut store = self.store(self.policy.fuel_base, timeout);
        store.set_hostcall_fuel(64 * 1024);
        let res = self
            .pre
            .instantiate(&mut store)
            .and_then(|m| m.call_describe(&mut store));
        let info = res.map_err(|e| classify(e, &store, self.policy.fuel_base, timeout))?;
        check_info(&info.name, &info.version, &info.description)?;
        Ok(MetricInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            needs_gradient: info.needs.contains(&types::OptionalInput::Gradient),
        })
    }

    /// Create a fresh store and instance and drop them, as every evaluation does; returns the
    /// time it took (for benchmarks).
    pub fn instantiate_only(&self) -> Result<Duration, Failure> {
        let start = Instant::now();
        let timeout = self.policy.score_timeout();
        let mut store = self.store(self.policy.fuel_base, timeout);
        self.pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &store, self.policy.fuel_base, timeout))?;
        drop(store);
        Ok(start.elapsed())
    }

    /// Score one layer in a fresh store. The host checks everything that comes back.
    pub fn score(&self, layer: &LayerData<'_>) -> Result<Scored, Failure> {
        if layer.weights.len() != layer.rows * layer.cols || layer.stats.cols() != layer.cols {
            return Err(Failure::Rejected {
                reason: format!("host bug: inconsistent layer shape for {}", layer.id),
            });
        }
        if self.info.needs_gradient && layer.gradient.is_none() {
            return Err(Failure::GuestError(GuestError {
                kind: "unsupported".into(),
                message: "the metric needs the gradient statistic, which was not computed".into(),
            }));
        }
        let start = Instant::now();
        let fuel = self.policy.fuel_for((layer.rows * layer.cols) as u64);
        let timeout = self.policy.score_timeout();
        let tile_rows = self.policy.tile_rows(layer.rows, layer.cols);
        // The store borrows `layer` (see `state::RawSlice`) and is dropped at the end of this
        // function, before the borrow ends.
        let mut store = self.store(fuel, timeout);
        store.set_hostcall_fuel(self.policy.hostcall_fuel(tile_rows, layer.cols));
        store.data_mut().attach(layer, tile_rows);
        let info = types::LayerInfo {
            block: layer.id.block,
            num_blocks: layer.id.num_blocks,
            kind: wit_kind(layer.id.kind),
            rows: layer.rows as u32,
            cols: layer.cols as u32,
            tile_rows: tile_rows as u32,
            sparsity: layer.sparsity,
        };
        let res = self
            .pre
            .instantiate(&mut store)
            .and_then(|m| m.call_score(&mut store, info));
        let outcome = match res {
            Err(e) => Err(classify(e, &store, fuel, timeout)),
            Ok(Err(e)) => Err(match store.data().violation() {
                // A broken contract outranks whatever the guest reported afterwards.
                Some(v) => Failure::InvalidOutput(v.clone()),
                None => Failure::GuestError(guest_error(e, self.policy.max_message_bytes)),
            }),
            Ok(Ok(())) => store
                .data_mut()
                .take_scores()
                .map_err(Failure::InvalidOutput),
        };
        let scores = outcome?;
        let data = store.data();
        let usage = Usage {
            fuel: fuel - store.get_fuel().unwrap_or(0),
            fuel_limit: fuel,
            seconds: start.elapsed().as_secs_f64(),
            peak_memory_bytes: data.limiter.peak_bytes as u64,
            logs: data.logs.clone(),
        };
        Ok(Scored { scores, usage })
    }
}

/// The limits on a plugin's self-description.
fn check_info(name: &str, version: &str, description: &str) -> Result<(), Failure> {
    let bad = |what: &str| Failure::InvalidOutput(InvalidOutput::BadInfo(what.into()));
    if name.is_empty() || name.len() > 128 {
        return Err(bad("name must be 1..=128 bytes"));
    }
    if version.len() > 64 || description.len() > 4096 {
        return Err(bad(
            "version (≤64 bytes) or description (≤4096 bytes) too long",
        ));
    }
    Ok(())
}

/// Compile component bytes with the shared engine (no cache), after the shape limits of
/// [`precheck`].
pub fn compile(bytes: &[u8]) -> Result<Component, Failure> {
    if wasmparser_magic(bytes).is_none() {
        return Err(Failure::Rejected {
            reason: "not a WebAssembly component (bad magic or truncated header)".into(),
        });
    }
    precheck::check(bytes)?;
    Component::new(engine(), bytes).map_err(|e| Failure::Rejected {
        reason: format!("invalid component: {e:#}"),
    })
}

/// `Some(())` when the bytes start like a component (`\0asm`, layer 1).
fn wasmparser_magic(bytes: &[u8]) -> Option<()> {
    (bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[6..8] == [1, 0]).then_some(())
}

fn wit_kind(kind: LayerKind) -> types::LayerKind {
    match kind {
        LayerKind::Q => types::LayerKind::Q,
        LayerKind::K => types::LayerKind::K,
        LayerKind::V => types::LayerKind::V,
        LayerKind::O => types::LayerKind::O,
        LayerKind::Gate => types::LayerKind::Gate,
        LayerKind::Up => types::LayerKind::Up,
        LayerKind::Down => types::LayerKind::Down,
        LayerKind::Other => types::LayerKind::Other,
    }
}

fn guest_error(e: types::Error, max: u32) -> GuestError {
    let (kind, message) = match e {
        types::Error::Unsupported(m) => ("unsupported", m),
        types::Error::InvalidInput(m) => ("invalid-input", m),
        types::Error::Failed(m) => ("failed", m),
    };
    let mut message = message;
    if message.len() > max as usize {
        let mut cut = max as usize;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    GuestError {
        kind: kind.into(),
        message,
    }
}

/// Turn a wasmtime error from instantiation or a call into a verdict. The one place that
/// knows how wasmtime reports each limit.
fn classify(
    err: wasmtime::Error,
    store: &Store<HostState>,
    fuel: u64,
    timeout: Duration,
) -> Failure {
    let data = store.data();
    if data.limiter.hit_cap {
        return Failure::OutOfMemory {
            limit_bytes: data.limiter_cap(),
        };
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => Failure::timeout(timeout),
            Trap::OutOfFuel => Failure::OutOfFuel { limit: fuel },
            Trap::StackOverflow => Failure::StackOverflow,
            Trap::UnreachableCodeReached if data.panic_message.is_some() => Failure::Panic {
                message: data.panic_message.clone().unwrap_or_default(),
            },
            other => Failure::Trap {
                message: other.to_string(),
            },
        };
    }
    if let Some(message) = &data.panic_message {
        return Failure::Panic {
            message: message.clone(),
        };
    }
    let text = format!("{err:#}");
    // wasmtime's hostcall-fuel error type is private; its message is the only handle.
    if text.contains("too much data is being copied") {
        return Failure::InvalidOutput(InvalidOutput::Oversized);
    }
    if let Some(v) = data.violation() {
        return Failure::InvalidOutput(v.clone());
    }
    Failure::Trap { message: text }
}
