//! The one `bindgen!` site: host-side bindings of `wit/metric.wit`, re-exported under a version alias.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "autoprune:metric/metric@0.1.0",
    // The `host` functions copy tiles and may record violations; none needs the store.
    imports: { default: trappable },
});

/// Bindings of the `autoprune:metric@0.1.0` package.
pub mod v0_1_0 {
    pub use super::autoprune::metric::host;
    pub use super::autoprune::metric::types;
    pub use super::{Metric, MetricPre};
}

/// Interface names a metric component may import; anything else is rejected.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "autoprune:metric/host@0.1.0",
    "autoprune:metric/types@0.1.0",
];
