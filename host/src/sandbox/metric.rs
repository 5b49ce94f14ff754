//! The metric world: plugins that score every weight of one layer through the WIT `host`
//! interface, loaded by the shared path of [`super::world`].

use super::bindings::{v0_1_1, v0_2_0, wit_kind, Version, ALLOWED_IMPORTS};
use super::cache::ArtifactCache;
use super::charge;
use super::engine::{classify, clip_guest_error, new_store, Usage};
use super::policy::Policy;
use super::state::{Allowed, HostState};
use super::verdict::{Failure, GuestError};
use super::world::{
    self, check_imports_against, component_of, Described, Pre, Versioned, WitWorld,
};
use crate::calib::hessian::Wanted;
use crate::layer::LayerData;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::Store;

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

/// The metric world, for the shared load path.
pub(crate) struct MetricWorld;

impl WitWorld for MetricWorld {
    type Pre01 = v0_1_1::MetricPre<HostState>;
    type Pre02 = v0_2_0::MetricPre<HostState>;
    const ALLOWED_IMPORTS: &'static [&'static str] = ALLOWED_IMPORTS;
    const LINKS_AGAINST: &'static str = "autoprune:metric";

    fn exports(version: Version) -> String {
        format!("the metric world of autoprune:metric@{}", version.package())
    }

    fn add_to_linker(linker: &mut Linker<HostState>, version: Version) -> wasmtime::Result<()> {
        match version {
            Version::V0_1 => {
                v0_1_1::Metric::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
            }
            Version::V0_2 => {
                v0_2_0::Metric::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
            }
        }?;
        charge::metric(linker, version)
    }

    fn pre_0_1(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre01> {
        v0_1_1::MetricPre::new(pre)
    }

    fn pre_0_2(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre02> {
        v0_2_0::MetricPre::new(pre)
    }

    fn describe(pre: &Pre<Self>, store: &mut Store<HostState>) -> wasmtime::Result<Described> {
        match pre {
            Versioned::V0_1(pre) => pre
                .instantiate(&mut *store)
                .and_then(|m| m.call_describe(&mut *store))
                .map(|i| Described {
                    needs: Allowed {
                        gradient: i.needs.contains(&v0_1_1::types::OptionalInput::Gradient),
                        ..Allowed::default()
                    },
                    name: i.name,
                    version: i.version,
                    description: i.description,
                }),
            Versioned::V0_2(pre) => pre
                .instantiate(&mut *store)
                .and_then(|m| m.call_describe(&mut *store))
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
        }
    }
}

/// A metric plugin: a validated, compiled component, ready to instantiate.
pub struct Plugin {
    pre: Pre<MetricWorld>,
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

/// Reject a component whose imports leave the metric interface (no WASI, nothing unknown).
pub fn check_imports(component: &Component) -> Result<(), Failure> {
    check_imports_against(component, ALLOWED_IMPORTS)
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
    pub(crate) fn from_component(component: &Component, policy: &Policy) -> Result<Self, Failure> {
        let (pre, d) = world::load::<MetricWorld>(component, policy)?;
        Ok(Self {
            pre,
            policy: policy.clone(),
            info: MetricInfo {
                name: d.name,
                version: d.version,
                description: d.description,
                needs_gradient: d.needs.gradient,
                needs_hessian_inverse_diagonal: d.needs.hessian_inverse_diagonal,
                needs_output_stats: d.needs.output_stats,
            },
        })
    }

    /// The version of the `autoprune:metric` package the component was built against
    /// (`"0.1.1"` also for 0.1.0 components, which link against the 0.1.1 definitions).
    pub fn package_version(&self) -> &'static str {
        self.pre.version().package()
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

    /// Create a fresh store and instance and drop them, as every evaluation does; returns the
    /// time it took (for benchmarks).
    pub fn instantiate_only(&self) -> Result<Duration, Failure> {
        let start = Instant::now();
        let timeout = self.policy.score_timeout();
        let mut store = self.store(self.policy.fuel_base, timeout);
        let res = match &self.pre {
            Versioned::V0_1(pre) => pre.instantiate(&mut store).map(drop),
            Versioned::V0_2(pre) => pre.instantiate(&mut store).map(drop),
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
            Versioned::V0_1(pre) => pre
                .instantiate(&mut store)
                .and_then(|m| m.call_score(&mut store, layer_info!(v0_1_1, layer, tile_rows)))
                .map(|r| r.map_err(GuestError::from)),
            Versioned::V0_2(pre) => pre
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
        let usage = Usage::of(&store, fuel, start);
        Ok(Scored { scores, usage })
    }
}
