//! Allocator plugins: sandboxed components of the WIT `allocator` world that map unit
//! summaries to one sparsity per unit.
//!
//! Same engine, same [`Policy`] limits and the same verdicts as metric plugins: every call
//! gets a fresh store from a pre-linked `InstancePre`, fuel, an epoch deadline and the memory
//! limiter; traps are classified by the same code, and loading is the shared path of
//! [`super::world`]. What comes back is checked by [`crate::units::validate`]; a refused
//! allocation is
//! [`InvalidOutput::BadAllocation`](super::InvalidOutput::BadAllocation).

use super::bindings::{v0_1_1, v0_2_0, Version, ALLOWED_ALLOCATOR_IMPORTS};
use super::cache::ArtifactCache;
use super::charge;
use super::engine::{classify, clip_guest_error, new_store, Usage};
use super::policy::Policy;
use super::state::{Allowed, HostState};
use super::verdict::{Failure, GuestError, InvalidOutput};
use super::world::{self, component_of, Described, Pre, Versioned, WitWorld};
use crate::layer::LayerKind;
use crate::units::{self, Bounds, UnitSummary, OUTLIER_MULTIPLES};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::Store;

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

/// The allocator world, for the shared load path.
pub(crate) struct AllocatorWorld;

impl WitWorld for AllocatorWorld {
    type Pre01 = v0_1_1::AllocatorPre<HostState>;
    type Pre02 = v0_2_0::AllocatorPre<HostState>;
    const ALLOWED_IMPORTS: &'static [&'static str] = ALLOWED_ALLOCATOR_IMPORTS;
    const LINKS_AGAINST: &'static str = "autoprune:metric/allocator";

    fn exports(_: Version) -> String {
        "the allocator world".into()
    }

    fn add_to_linker(linker: &mut Linker<HostState>, version: Version) -> wasmtime::Result<()> {
        match version {
            Version::V0_1 => {
                v0_1_1::Allocator::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
            }
            Version::V0_2 => {
                v0_2_0::Allocator::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
            }
        }?;
        charge::allocator(linker, version)
    }

    fn pre_0_1(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre01> {
        v0_1_1::AllocatorPre::new(pre)
    }

    fn pre_0_2(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre02> {
        v0_2_0::AllocatorPre::new(pre)
    }

    fn describe(pre: &Pre<Self>, store: &mut Store<HostState>) -> wasmtime::Result<Described> {
        let described = |name, version, description| Described {
            name,
            version,
            description,
            needs: Allowed::default(),
        };
        match pre {
            Versioned::V0_1(pre) => pre
                .instantiate(&mut *store)
                .and_then(|a| a.call_describe(&mut *store))
                .map(|i| described(i.name, i.version, i.description)),
            Versioned::V0_2(pre) => pre
                .instantiate(&mut *store)
                .and_then(|a| a.call_describe(&mut *store))
                .map(|i| described(i.name, i.version, i.description)),
        }
    }
}

/// An allocator plugin: a validated, compiled component of the `allocator` world, ready to
/// instantiate.
pub struct AllocatorPlugin {
    pre: Pre<AllocatorWorld>,
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

    /// Check, link and describe an already compiled component.
    pub(crate) fn from_component(component: &Component, policy: &Policy) -> Result<Self, Failure> {
        let (pre, d) = world::load::<AllocatorWorld>(component, policy)?;
        Ok(Self {
            pre,
            policy: policy.clone(),
            info: AllocatorInfo {
                name: d.name,
                version: d.version,
                description: d.description,
            },
        })
    }

    /// What the allocator said about itself.
    pub fn info(&self) -> &AllocatorInfo {
        &self.info
    }

    /// The version of the `autoprune:metric` package the component was built against.
    pub fn package_version(&self) -> &'static str {
        self.pre.version().package()
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
            Versioned::V0_1(pre) => {
                let req = v0_1_1_request::request(target, bounds, units);
                pre.instantiate(&mut store)
                    .and_then(|a| a.call_allocate(&mut store, &req))
                    .map(|r| r.map_err(GuestError::from))
            }
            Versioned::V0_2(pre) => {
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
        let usage = Usage::of(&store, fuel, start);
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
            use super::super::bindings::{
                wit_kind,
                $v::{allocation, types},
            };
            use super::{units, Bounds, LayerKind, UnitSummary, OUTLIER_MULTIPLES};

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
