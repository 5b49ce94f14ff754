//! The `bindgen!` sites: host-side bindings of `wit/metric.wit` (the `metric` and `allocator`
//! worlds), re-exported under a version alias.

/// Bindings of the `metric` world.
mod metric_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "autoprune:metric/metric@0.1.1",
        // The `host` functions copy tiles and may record violations; none needs the store.
        imports: { default: trappable },
    });
}

/// Bindings of the `allocator` world; the shared `types` interface is the metric world's.
mod allocator_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "autoprune:metric/allocator@0.1.1",
        imports: { default: trappable },
        with: {
            "autoprune:metric/types": super::metric_world::autoprune::metric::types,
        },
    });
}

/// Bindings of the `autoprune:metric@0.1.1` package.
pub mod v0_1_1 {
    pub use super::allocator_world::autoprune::metric::{allocation, logging};
    pub use super::allocator_world::{Allocator, AllocatorPre};
    pub use super::metric_world::autoprune::metric::host;
    pub use super::metric_world::autoprune::metric::types;
    pub use super::metric_world::{Metric, MetricPre};
}

/// Interface names a metric component may import; anything else is rejected. Components built
/// against 0.1.0 import the `@0.1.0` names, which the linker resolves to the 0.1.1 definitions
/// (semver-compatible).
pub const ALLOWED_IMPORTS: &[&str] = &[
    "autoprune:metric/host@0.1.0",
    "autoprune:metric/types@0.1.0",
    "autoprune:metric/host@0.1.1",
    "autoprune:metric/types@0.1.1",
];

/// Interface names an allocator component may import (the world first appeared in 0.1.1).
pub const ALLOWED_ALLOCATOR_IMPORTS: &[&str] = &[
    "autoprune:metric/logging@0.1.1",
    "autoprune:metric/allocation@0.1.1",
    "autoprune:metric/types@0.1.1",
];
