//! The sandbox: wasmtime engine, limits, component loading and the evaluation of one layer.
//!
//! Every evaluation gets a fresh `Store` from a pre-linked `InstancePre`, an epoch deadline
//! (wall time), fuel (deterministic work), a memory cap, and a cap on the bytes one host call
//! may copy. Whatever goes wrong comes back as a typed [`Failure`].
//!
//! Two worlds of the `autoprune:metric` package run here: metric plugins ([`Plugin`]) and
//! layer-wise sparsity allocators ([`AllocatorPlugin`]); [`AnyPlugin`] loads either, telling
//! the world from the component's exports. Each runs against the package version its component
//! imports (0.1.0/0.1.1 through the 0.1.1 bindings, 0.2.0 through the current ones), so a
//! component keeps loading and scoring exactly as it did when it was built.

mod allocator;
mod bindings;
mod cache;
mod charge;
mod policy;
pub mod precheck;
mod state;
mod verdict;

pub use crate::hash::sha256_hex;
pub use allocator::{Allocated, AllocatorInfo, AllocatorPlugin, AnyPlugin, World};
pub use bindings::{ALLOWED_ALLOCATOR_IMPORTS, ALLOWED_IMPORTS};
pub use cache::{ArtifactCache, CacheError, MAX_CACHE_BYTES};
pub use policy::Policy;
pub use state::LogLine;
pub use verdict::{Failure, GuestError, InvalidOutput};

use crate::calib::hessian::Wanted;
use crate::layer::{LayerData, LayerKind};
use bindings::{v0_1_1, v0_2_0, Version};
use serde::{Deserialize, Serialize};
use state::{Allowed, HostState};
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
    /// Whether the metric reads the diagonal of the damped inverse input Hessian (0.2.0).
    #[serde(default)]
    pub needs_hessian_inverse_diagonal: bool,
    /// Whether the metric reads the per-row statistics of the dense layer output (0.2.0).
    #[serde(default)]
    pub needs_output_stats: bool,
}

impl MetricInfo {
    /// The Hessian-derived inputs the metric declared.
    pub fn wanted(&self) -> Wanted {
        Wanted {
            hessian_inverse_diagonal: self.needs_hessian_inverse_diagonal,
            output_stats: self.needs_output_stats,
        }
    }

    fn allowed(&self) -> Allowed {
        Allowed {
            gradient: self.needs_gradient,
            hessian_inverse_diagonal: self.needs_hessian_inverse_diagonal,
            output_stats: self.needs_output_stats,
        }
    }
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

/// A linked metric component, typed by the package version it imports.
enum MetricPreAny {
    /// Built against 0.1.0 or 0.1.1.
    V0_1(v0_1_1::MetricPre<HostState>),
    /// Built against 0.2.0.
    V0_2(v0_2_0::MetricPre<HostState>),
}

/// A metric plugin: a validated, compiled component, ready to instantiate.
pub struct Plugin {
    pre: MetricPreAny,
    policy: Policy,
    info: MetricInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.info)
            .field("package", &self.package_version())
            .finish()
    }
}

/// The package version a component was built against, from its imports: `@0.1.0`/`@0.1.1`
/// names or `@0.2.0` names, never both. A component that imports nothing is taken as current.
pub(crate) fn version_of(component: &Component) -> Result<Version, Failure> {
    let ty = component.component_type();
    let mut found: Option<Version> = None;
    for (name, _) in ty.imports(engine()) {
        let Some(v) = Version::of_import(name) else {
            continue;
        };
        if found.is_some_and(|f| f != v) {
            return Err(Failure::Rejected {
                reason: format!(
                    "the component imports `{name}` next to names of another package version; a component is built against one version"
                ),
            });
        }
        found = Some(v);
    }
    Ok(found.unwrap_or(Version::V0_2))
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

/// A fresh store for one call: memory limiter, fuel and an epoch deadline of `timeout`; the
/// host serves only the optional inputs in `allowed`.
fn new_store(policy: &Policy, allowed: Allowed, fuel: u64, timeout: Duration) -> Store<HostState> {
    let mut store = Store::new(engine(), HostState::new(policy, allowed));
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

/// A linker with the `metric` world's imports of `version`.
fn linker(version: Version) -> Result<Linker<HostState>, Failure> {
    let mut linker = Linker::new(engine());
    let res = match version {
        Version::V0_1 => {
            v0_1_1::Metric::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        }
        Version::V0_2 => {
            v0_2_0::Metric::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        }
    };
    res.and_then(|()| charge::metric(&mut linker, version))
        .map_err(|e| Failure::Rejected {
            reason: format!("host linker: {e}"),
        })?;
    Ok(linker)
}

/// What `describe` returned, in either version's types.
struct Described {
    name: String,
    version: String,
    description: String,
    needs: Allowed,
}

/// The WIT `layer-info` of `layer` in the types of bindings module `$v`.
macro_rules! layer_info {
    ($v:ident, $layer:expr, $tile_rows:expr) => {{
        let l: &LayerData<'_> = $layer;
        $v::types::LayerInfo {
            block: l.id.block,
            num_blocks: l.id.num_blocks,
            kind: wit_kind(l.id.kind).into(),
            rows: l.rows as u32,
            cols: l.cols as u32,
            tile_rows: $tile_rows as u32,
            sparsity: l.sparsity,
        }
    }};
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
        let version = version_of(component)?;
        let pre = linker(version)?
            .instantiate_pre(component)
            .map_err(|e| Failure::Rejected {
                reason: format!(
                    "cannot link the component against autoprune:metric@{}: {e:#}",
                    version.package()
                ),
            })?;
        let not_metric = |e: wasmtime::Error| Failure::Rejected {
            reason: format!(
                "the component does not export the metric world of autoprune:metric@{}: {e:#}",
                version.package()
            ),
        };
        let pre = match version {
            Version::V0_1 => MetricPreAny::V0_1(v0_1_1::MetricPre::new(pre).map_err(not_metric)?),
            Version::V0_2 => MetricPreAny::V0_2(v0_2_0::MetricPre::new(pre).map_err(not_metric)?),
        };
        let mut plugin = Self {
            pre,
            policy: policy.clone(),
            info: MetricInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                needs_gradient: false,
                needs_hessian_inverse_diagonal: false,
                needs_output_stats: false,
            },
        };
        plugin.info = plugin.describe()?;
        Ok(plugin)
    }

    /// The version of the `autoprune:metric` package the component was built against
    /// (`"0.1.1"` also for 0.1.0 components, which link against the 0.1.1 definitions).
    pub fn package_version(&self) -> &'static str {
        match self.pre {
            MetricPreAny::V0_1(_) => Version::V0_1.package(),
            MetricPreAny::V0_2(_) => Version::V0_2.package(),
        }
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
        new_store(&self.policy, self.info.allowed(), fuel, timeout)
    }

    fn describe(&self) -> Result<MetricInfo, Failure> {
        let timeout = Duration::from_millis(self.policy.describe_timeout_ms);
        let mut store = self.store(self.policy.fuel_base, timeout);
        store.set_hostcall_fuel(64 * 1024);
        let res = match &self.pre {
            MetricPreAny::V0_1(pre) => pre
                .instantiate(&mut store)
                .and_then(|m| m.call_describe(&mut store))
                .map(|i| Described {
                    needs: Allowed {
                        gradient: i.needs.contains(&v0_1_1::types::OptionalInput::Gradient),
                        ..Allowed::default()
                    },
                    name: i.name,
                    version: i.version,
                    description: i.description,
                }),
            MetricPreAny::V0_2(pre) => pre
                .instantiate(&mut store)
                .and_then(|m| m.call_describe(&mut store))
                .map(|i| {
                    use v0_2_0::types::OptionalInput as In;
                    Described {
                        needs: Allowed {
                            gradient: i.needs.contains(&In::Gradient),
                            hessian_inverse_diagonal: i.needs.contains(&In::HessianInverseDiagonal),
                            output_stats: i.needs.contains(&In::OutputStats),
                        },
                        name: i.name,
                        version: i.version,
                        description: i.description,
                    }
                }),
        };
        let info = res.map_err(|e| classify(e, &store, self.policy.fuel_base, timeout))?;
        check_info(&info.name, &info.version, &info.description)?;
        Ok(MetricInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            needs_gradient: info.needs.gradient,
            needs_hessian_inverse_diagonal: info.needs.hessian_inverse_diagonal,
            needs_output_stats: info.needs.output_stats,
        })
    }

    /// Create a fresh store and instance and drop them, as every evaluation does; returns the
    /// time it took (for benchmarks).
    pub fn instantiate_only(&self) -> Result<Duration, Failure> {
        let start = Instant::now();
        let timeout = self.policy.score_timeout();
        let mut store = self.store(self.policy.fuel_base, timeout);
        let res = match &self.pre {
            MetricPreAny::V0_1(pre) => pre.instantiate(&mut store).map(drop),
            MetricPreAny::V0_2(pre) => pre.instantiate(&mut store).map(drop),
        };
        res.map_err(|e| classify(e, &store, self.policy.fuel_base, timeout))?;
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
        let inconsistent = layer
            .hessian_inverse_diagonal
            .is_some_and(|h| h.len() != layer.cols)
            || layer.output_stats.is_some_and(|o| !o.has_rows(layer.rows));
        if inconsistent {
            return Err(Failure::Rejected {
                reason: format!(
                    "host bug: optional inputs of the wrong length for {}",
                    layer.id
                ),
            });
        }
        let missing = [
            (
                self.info.needs_gradient && layer.gradient.is_none(),
                "the gradient statistic",
            ),
            (
                self.info.needs_hessian_inverse_diagonal
                    && layer.hessian_inverse_diagonal.is_none(),
                "the Hessian inverse diagonal",
            ),
            (
                self.info.needs_output_stats && layer.output_stats.is_none(),
                "the output statistics",
            ),
        ];
        if let Some((_, what)) = missing.iter().find(|(m, _)| *m) {
            return Err(Failure::GuestError(GuestError {
                kind: "unsupported".into(),
                message: format!("the metric needs {what}, which was not computed"),
            }));
        }
        let start = Instant::now();
        let fuel = self.policy.fuel_for((layer.rows * layer.cols) as u64);
        let timeout = self.policy.score_timeout();
        let tile_rows = self.policy.tile_rows(layer.rows, layer.cols);
        // The store borrows `layer` (see `state::RawSlice`) and is dropped at the end of this
        // function, before the borrow ends.
        let mut store = self.store(fuel, timeout);
        store.set_hostcall_fuel(
            self.policy
                .hostcall_fuel_for_layer(tile_rows, layer.rows, layer.cols),
        );
        store.data_mut().attach(layer, tile_rows);
        let res = match &self.pre {
            MetricPreAny::V0_1(pre) => pre
                .instantiate(&mut store)
                .and_then(|m| m.call_score(&mut store, layer_info!(v0_1_1, layer, tile_rows)))
                .map(|r| r.map_err(GuestError::from)),
            MetricPreAny::V0_2(pre) => pre
                .instantiate(&mut store)
                .and_then(|m| m.call_score(&mut store, layer_info!(v0_2_0, layer, tile_rows)))
                .map(|r| r.map_err(GuestError::from)),
        };
        let outcome = match res {
            Err(e) => Err(classify(e, &store, fuel, timeout)),
            Ok(Err(e)) => Err(match store.data().violation() {
                // A broken contract outranks whatever the guest reported afterwards.
                Some(v) => Failure::InvalidOutput(v.clone()),
                None => Failure::GuestError(clip_guest_error(e, self.policy.max_message_bytes)),
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

/// A layer kind as the WIT names it (converted into either version's `layer-kind`).
#[derive(Clone, Copy)]
pub(crate) enum WitKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    Other,
}

pub(crate) fn wit_kind(kind: LayerKind) -> WitKind {
    match kind {
        LayerKind::Q => WitKind::Q,
        LayerKind::K => WitKind::K,
        LayerKind::V => WitKind::V,
        LayerKind::O => WitKind::O,
        LayerKind::Gate => WitKind::Gate,
        LayerKind::Up => WitKind::Up,
        LayerKind::Down => WitKind::Down,
        LayerKind::Other => WitKind::Other,
    }
}

/// Conversions between the host's types and those of bindings module `$v`.
macro_rules! wit_conversions {
    ($v:ident) => {
        impl From<WitKind> for $v::types::LayerKind {
            fn from(k: WitKind) -> Self {
                match k {
                    WitKind::Q => $v::types::LayerKind::Q,
                    WitKind::K => $v::types::LayerKind::K,
                    WitKind::V => $v::types::LayerKind::V,
                    WitKind::O => $v::types::LayerKind::O,
                    WitKind::Gate => $v::types::LayerKind::Gate,
                    WitKind::Up => $v::types::LayerKind::Up,
                    WitKind::Down => $v::types::LayerKind::Down,
                    WitKind::Other => $v::types::LayerKind::Other,
                }
            }
        }

        impl From<$v::types::Error> for GuestError {
            fn from(e: $v::types::Error) -> Self {
                let (kind, message) = match e {
                    $v::types::Error::Unsupported(m) => ("unsupported", m),
                    $v::types::Error::InvalidInput(m) => ("invalid-input", m),
                    $v::types::Error::Failed(m) => ("failed", m),
                };
                GuestError {
                    kind: kind.into(),
                    message,
                }
            }
        }
    };
}

wit_conversions!(v0_1_1);
wit_conversions!(v0_2_0);

/// `e` with its message cut to `max` bytes (at a character boundary).
pub(crate) fn clip_guest_error(mut e: GuestError, max: u32) -> GuestError {
    if e.message.len() > max as usize {
        let mut cut = max as usize;
        while !e.message.is_char_boundary(cut) {
            cut -= 1;
        }
        e.message.truncate(cut);
    }
    e
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
