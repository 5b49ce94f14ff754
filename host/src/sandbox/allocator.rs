//! Allocator plugins: sandboxed components of the WIT `allocator` world that map unit
//! summaries to one sparsity per unit.
//!
//! Same engine, same [`Policy`] limits and the same verdicts as metric plugins: every call
//! gets a fresh store from a pre-linked `InstancePre`, fuel, an epoch deadline and the memory
//! limiter; traps are classified by the same code. What comes back is checked by
//! [`crate::units::validate`]; a refused allocation is
//! [`InvalidOutput::BadAllocation`](super::InvalidOutput::BadAllocation).

use super::bindings::{v0_1_1, v0_2_0, Version};
use super::state::{Allowed, HostState};
use super::{
    check_imports_against, check_info, classify, clip_guest_error, component_of, engine, new_store,
    version_of, wit_kind, ArtifactCache, Failure, GuestError, InvalidOutput, Plugin, Policy, Usage,
    ALLOWED_ALLOCATOR_IMPORTS,
};
use crate::layer::LayerKind;
use crate::units::{self, Bounds, UnitSummary, OUTLIER_MULTIPLES};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};

/// Which world of `autoprune:metric` a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum World {
    /// A pruning metric (`score`).
    Metric,
    /// A layer-wise sparsity allocator (`allocate`).
    Allocator,
}

impl World {
    /// Tell the world from the names of a component's exports: `allocate` makes an allocator,
    /// `score` a metric; both or neither is refused.
    pub fn from_exports<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<World, Failure> {
        let (mut score, mut allocate) = (false, false);
        for n in names {
            score |= n == "score";
            allocate |= n == "allocate";
        }
        match (score, allocate) {
            (true, false) => Ok(World::Metric),
            (false, true) => Ok(World::Allocator),
            (true, true) => Err(Failure::Rejected {
                reason: "the component exports both `score` and `allocate`; a plugin implements one world".into(),
            }),
            (false, false) => Err(Failure::Rejected {
                reason: "the component exports neither `score` (metric world) nor `allocate` (allocator world)".into(),
            }),
        }
    }

    /// The world of a compiled component.
    pub fn of(component: &Component) -> Result<World, Failure> {
        let ty = component.component_type();
        let names: Vec<&str> = ty.exports(engine()).map(|(n, _)| n).collect();
        World::from_exports(names)
    }
}

/// What an allocator says about itself (`describe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocatorInfo {
    /// Short name.
    pub name: String,
    /// Free-form version.
    pub version: String,
    /// One-line description.
    pub description: String,
}

/// A successful, validated allocation.
#[derive(Debug, Clone)]
pub struct Allocated {
    /// One sparsity per unit, validated by [`crate::units::validate`].
    pub sparsities: Vec<f64>,
    /// Resource use of the call.
    pub usage: Usage,
}

/// A linked allocator component, typed by the package version it imports.
enum AllocatorPreAny {
    /// Built against 0.1.1.
    V0_1(v0_1_1::AllocatorPre<HostState>),
    /// Built against 0.2.0.
    V0_2(v0_2_0::AllocatorPre<HostState>),
}

/// An allocator plugin: a validated, compiled component of the `allocator` world, ready to
/// instantiate.
pub struct AllocatorPlugin {
    pre: AllocatorPreAny,
    policy: Policy,
    info: AllocatorInfo,
}

impl std::fmt::Debug for AllocatorPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocatorPlugin")
            .field("info", &self.info)
            .finish()
    }
}

/// A linker with the `allocator` world's imports of `version`.
fn linker(version: Version) -> Result<Linker<HostState>, Failure> {
    let mut linker = Linker::new(engine());
    let res = match version {
        Version::V0_1 => {
            v0_1_1::Allocator::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        }
        Version::V0_2 => {
            v0_2_0::Allocator::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        }
    };
    res.and_then(|()| super::charge::allocator(&mut linker, version))
        .map_err(|e| Failure::Rejected {
            reason: format!("host linker: {e}"),
        })?;
    Ok(linker)
}

impl AllocatorPlugin {
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

    fn from_component(component: &Component, policy: &Policy) -> Result<Self, Failure> {
        check_imports_against(component, ALLOWED_ALLOCATOR_IMPORTS)?;
        let version = version_of(component)?;
        let pre = linker(version)?
            .instantiate_pre(component)
            .map_err(|e| Failure::Rejected {
                reason: format!(
                    "cannot link the component against autoprune:metric/allocator@{}: {e:#}",
                    version.package()
                ),
            })?;
        let not_allocator = |e: wasmtime::Error| Failure::Rejected {
            reason: format!("the component does not export the allocator world: {e:#}"),
        };
        let pre = match version {
            Version::V0_1 => {
                AllocatorPreAny::V0_1(v0_1_1::AllocatorPre::new(pre).map_err(not_allocator)?)
            }
            Version::V0_2 => {
                AllocatorPreAny::V0_2(v0_2_0::AllocatorPre::new(pre).map_err(not_allocator)?)
            }
        };
        let mut plugin = Self {
            pre,
            policy: policy.clone(),
            info: AllocatorInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
            },
        };
        plugin.info = plugin.describe()?;
        Ok(plugin)
    }

    /// What the allocator said about itself.
    pub fn info(&self) -> &AllocatorInfo {
        &self.info
    }

    /// The version of the `autoprune:metric` package the component was built against.
    pub fn package_version(&self) -> &'static str {
        match self.pre {
            AllocatorPreAny::V0_1(_) => Version::V0_1.package(),
            AllocatorPreAny::V0_2(_) => Version::V0_2.package(),
        }
    }

    /// The policy this plugin runs under.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Fuel for one `allocate` call on `units` units: `fuel_base + fuel_per_weight · units`.
    /// Why per unit and not per weight: an allocator sees summaries, never the weights.
    pub fn fuel_for(&self, units: usize) -> u64 {
        self.policy.fuel_for(units as u64)
    }

    fn describe(&self) -> Result<AllocatorInfo, Failure> {
        let timeout = Duration::from_millis(self.policy.describe_timeout_ms);
        let fuel = self.policy.fuel_base;
        let mut store = new_store(&self.policy, Allowed::default(), fuel, timeout);
        store.set_hostcall_fuel(64 * 1024);
        let res = match &self.pre {
            AllocatorPreAny::V0_1(pre) => pre
                .instantiate(&mut store)
                .and_then(|a| a.call_describe(&mut store))
                .map(|i| (i.name, i.version, i.description)),
            AllocatorPreAny::V0_2(pre) => pre
                .instantiate(&mut store)
                .and_then(|a| a.call_describe(&mut store))
                .map(|i| (i.name, i.version, i.description)),
        };
        let (name, version, description) = res.map_err(|e| classify(e, &store, fuel, timeout))?;
        let info = AllocatorInfo {
            name,
            version,
            description,
        };
        check_info(&info.name, &info.version, &info.description)?;
        Ok(AllocatorInfo {
            name: info.name,
            version: info.version,
            description: info.description,
        })
    }

    /// One sparsity per unit of `units` with parameter-weighted mean `target`, each within
    /// `bounds`, validated by the host.
    pub fn allocate(
        &self,
        target: f64,
        bounds: Bounds,
        units: &[UnitSummary],
    ) -> Result<Vec<f64>, Failure> {
        self.allocate_with_usage(target, bounds, units)
            .map(|a| a.sparsities)
    }

    /// [`allocate`](Self::allocate), also reporting fuel, time and memory.
    pub fn allocate_with_usage(
        &self,
        target: f64,
        bounds: Bounds,
        units: &[UnitSummary],
    ) -> Result<Allocated, Failure> {
        check_request(target, bounds)?;
        let start = Instant::now();
        let fuel = self.fuel_for(units.len());
        let timeout = self.policy.score_timeout();
        let mut store = new_store(&self.policy, Allowed::default(), fuel, timeout);
        // The request (a few hundred bytes per unit) and the answer (8 bytes per unit) are
        // small; this bounds what a guest can make the host copy.
        store.set_hostcall_fuel(
            (1 << 20) + units.len() * 4096 + self.policy.max_message_bytes as usize,
        );
        let res = match &self.pre {
            AllocatorPreAny::V0_1(pre) => {
                let req = v0_1_1_request::request(target, bounds, units);
                pre.instantiate(&mut store)
                    .and_then(|a| a.call_allocate(&mut store, &req))
                    .map(|r| r.map_err(GuestError::from))
            }
            AllocatorPreAny::V0_2(pre) => {
                let req = v0_2_0_request::request(target, bounds, units);
                pre.instantiate(&mut store)
                    .and_then(|a| a.call_allocate(&mut store, &req))
                    .map(|r| r.map_err(GuestError::from))
            }
        };
        let sparsities = match res {
            Err(e) => Err(classify(e, &store, fuel, timeout)),
            Ok(Err(e)) => Err(Failure::GuestError(clip_guest_error(
                e,
                self.policy.max_message_bytes,
            ))),
            // Validation allows 1e-9 of slack at the bounds; what passes is clamped into them,
            // so a value a hair below 0 never reaches mask building as a negative sparsity.
            Ok(Ok(s)) => units::validate(&s, target, bounds, units)
                .map(|()| s.iter().map(|v| v.clamp(bounds.min, bounds.max)).collect())
                .map_err(|error| Failure::InvalidOutput(InvalidOutput::BadAllocation { error })),
        }?;
        let data = store.data();
        let usage = Usage {
            fuel: fuel - store.get_fuel().unwrap_or(0),
            fuel_limit: fuel,
            seconds: start.elapsed().as_secs_f64(),
            peak_memory_bytes: data.limiter.peak_bytes as u64,
            logs: data.logs.clone(),
        };
        Ok(Allocated { sparsities, usage })
    }
}

/// The caller's request must make sense before a guest sees it.
fn check_request(target: f64, bounds: Bounds) -> Result<(), Failure> {
    let host = Bounds::HOST;
    let ok = target.is_finite()
        && bounds.min.is_finite()
        && bounds.max.is_finite()
        && host.min <= bounds.min
        && bounds.min <= target
        && target <= bounds.max
        && bounds.max <= host.max;
    if ok {
        Ok(())
    } else {
        Err(Failure::Rejected {
            reason: format!(
                "host bug: allocation request with target {target} and bounds [{}, {}] (must satisfy {} ≤ min ≤ target ≤ max ≤ {})",
                bounds.min, bounds.max, host.min, host.max
            ),
        })
    }
}

/// The WIT `allocation-request` in the types of bindings module `$v`, in module `$m`.
macro_rules! request_module {
    ($m:ident, $v:ident) => {
        mod $m {
            use super::super::bindings::$v::{allocation, types};
            use super::{units, wit_kind, Bounds, LayerKind, UnitSummary, OUTLIER_MULTIPLES};

            fn distribution(d: &units::Distribution) -> allocation::Distribution {
                allocation::Distribution {
                    count: d.count,
                    mean: d.mean,
                    variance: d.variance,
                    skewness: d.skewness,
                    kurtosis: d.kurtosis,
                    max: d.max,
                    outlier_ratios: d.outlier_ratios.clone(),
                }
            }

            fn kind(k: LayerKind) -> types::LayerKind {
                wit_kind(k).into()
            }

            pub(super) fn request(
                target: f64,
                bounds: Bounds,
                units: &[UnitSummary],
            ) -> allocation::AllocationRequest {
                allocation::AllocationRequest {
                    target,
                    min_sparsity: bounds.min,
                    max_sparsity: bounds.max,
                    outlier_multiples: OUTLIER_MULTIPLES.to_vec(),
                    units: units
                        .iter()
                        .map(|u| allocation::UnitSummary {
                            block: u.block,
                            kind: u.kind.map(kind),
                            rows: u.rows,
                            cols: u.cols,
                            params: u.params,
                            weights: distribution(&u.weights),
                            wanda: distribution(&u.wanda),
                            scores: distribution(&u.scores),
                        })
                        .collect(),
                }
            }
        }
    };
}

request_module!(v0_1_1_request, v0_1_1);
request_module!(v0_2_0_request, v0_2_0);

/// A plugin of either world, as loaded from component bytes.
#[derive(Debug)]
pub enum AnyPlugin {
    /// A pruning metric.
    Metric(Plugin),
    /// A layer-wise sparsity allocator.
    Allocator(AllocatorPlugin),
}

impl AnyPlugin {
    /// Compile `bytes`, tell the world from the exports and load the plugin of that world.
    pub fn load(
        bytes: &[u8],
        policy: &Policy,
        cache: Option<&ArtifactCache>,
    ) -> Result<AnyPlugin, Failure> {
        let component = component_of(bytes, policy, cache)?;
        match World::of(&component)? {
            World::Allocator => {
                AllocatorPlugin::from_component(&component, policy).map(AnyPlugin::Allocator)
            }
            World::Metric => Plugin::from_component(&component, policy).map(AnyPlugin::Metric),
        }
    }

    /// The world of the plugin.
    pub fn world(&self) -> World {
        match self {
            AnyPlugin::Metric(_) => World::Metric,
            AnyPlugin::Allocator(_) => World::Allocator,
        }
    }
}
