//! The engine room shared by every world: the one wasmtime engine and its epoch ticker,
//! component compilation, the per-call store with its limits, the resources a call used, and
//! the classification of whatever went wrong into a typed [`Failure`].

use super::policy::Policy;
use super::precheck;
use super::state::{Allowed, HostState};
use super::verdict::{Failure, GuestError, InvalidOutput};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use wasmtime::component::Component;
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

/// A fresh store for one call: memory limiter, fuel and an epoch deadline of `timeout`; the
/// host serves only the optional inputs in `allowed`.
pub(crate) fn new_store(
    policy: &Policy,
    allowed: Allowed,
    fuel: u64,
    timeout: Duration,
) -> Store<HostState> {
    let mut store = Store::new(engine(), HostState::new(policy, allowed));
    store.limiter(|s| &mut s.limiter);
    store.set_fuel(fuel).expect("fuel is enabled on the engine");
    let ticks = timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1;
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_trap();
    store
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
    pub logs: Vec<super::state::LogLine>,
}

impl Usage {
    /// What the call that started at `start` with `fuel` granted used, read from its store.
    pub(crate) fn of(store: &Store<HostState>, fuel: u64, start: Instant) -> Usage {
        let data = store.data();
        Usage {
            fuel: fuel - store.get_fuel().unwrap_or(0),
            fuel_limit: fuel,
            seconds: start.elapsed().as_secs_f64(),
            peak_memory_bytes: data.limiter.peak_bytes as u64,
            logs: data.logs.clone(),
        }
    }
}

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
pub(crate) fn classify(
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
