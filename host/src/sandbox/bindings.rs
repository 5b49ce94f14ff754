//! The `bindgen!` sites: host-side bindings of the `autoprune:metric` package, one pair of
//! worlds (`metric`, `allocator`) per published version, re-exported under version aliases.
//!
//! - [`v0_2_0`]: `wit/metric.wit`, the current package; every newly built component uses it.
//! - [`v0_1_1`]: `wit/v0.1.1/metric.wit`, the 0.1.1 package kept verbatim, so components built
//!   against 0.1.0 or 0.1.1 keep loading and scoring exactly as before (wasmtime links their
//!   `@0.1.0` imports against the `@0.1.1` definitions: semver-compatible).
//!
//! The conversions between the host's types and the shared `types` interface of each version
//! (layer kinds, guest errors) live here too, so every world uses the same ones.
//!
//! `wit/v0.1.1/` is named as a file path: `Resolve::push_dir` on `wit/` ignores every
//! subfolder but `deps/`, so the old package never leaks into the current bindings.

use super::verdict::GuestError;
use crate::layer::LayerKind;

/// Bindings of the 0.2.0 `metric` world.
mod metric_world {
    wasmtime::component::bindgen!({
        path: "../wit/metric.wit",
        world: "autoprune:metric/metric@0.2.0",
        // The `host` functions copy tiles and may record violations; none needs the store.
        imports: { default: trappable },
    });
}

/// Bindings of the 0.2.0 `allocator` world; the shared `types` interface is the metric world's.
mod allocator_world {
    wasmtime::component::bindgen!({
        path: "../wit/metric.wit",
        world: "autoprune:metric/allocator@0.2.0",
        imports: { default: trappable },
        with: {
            "autoprune:metric/types": super::metric_world::autoprune::metric::types,
        },
    });
}

/// Bindings of the 0.1.1 `metric` world (components built before 0.2.0).
mod metric_world_0_1_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.1/metric.wit",
        world: "autoprune:metric/metric@0.1.1",
        imports: { default: trappable },
    });
}

/// Bindings of the 0.1.1 `allocator` world.
mod allocator_world_0_1_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.1/metric.wit",
        world: "autoprune:metric/allocator@0.1.1",
        imports: { default: trappable },
        with: {
            "autoprune:metric/types": super::metric_world_0_1_1::autoprune::metric::types,
        },
    });
}

/// Bindings of the `autoprune:metric@0.2.0` package (the current contract).
pub mod v0_2_0 {
    pub use super::allocator_world::autoprune::metric::{allocation, logging};
    pub use super::allocator_world::{Allocator, AllocatorPre};
    pub use super::metric_world::autoprune::metric::host;
    pub use super::metric_world::autoprune::metric::types;
    pub use super::metric_world::{Metric, MetricPre};
}

/// Bindings of the `autoprune:metric@0.1.1` package (also serves 0.1.0 components).
pub mod v0_1_1 {
    pub use super::allocator_world_0_1_1::autoprune::metric::{allocation, logging};
    pub use super::allocator_world_0_1_1::{Allocator, AllocatorPre};
    pub use super::metric_world_0_1_1::autoprune::metric::host;
    pub use super::metric_world_0_1_1::autoprune::metric::types;
    pub use super::metric_world_0_1_1::{Metric, MetricPre};
}

/// A published version of the package, as a component's imports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// `@0.1.0` or `@0.1.1`: linked against the 0.1.1 definitions.
    V0_1,
    /// `@0.2.0`.
    V0_2,
}

impl Version {
    /// The version of an import name such as `autoprune:metric/host@0.1.0` (`None` for a name
    /// outside the published versions).
    pub(crate) fn of_import(name: &str) -> Option<Version> {
        match name.rsplit_once('@')?.1 {
            "0.1.0" | "0.1.1" => Some(Version::V0_1),
            "0.2.0" => Some(Version::V0_2),
            _ => None,
        }
    }

    /// The package version of the bindings that serve it.
    pub(crate) fn package(self) -> &'static str {
        match self {
            Version::V0_1 => "0.1.1",
            Version::V0_2 => "0.2.0",
        }
    }
}

/// Interface names a metric component may import; anything else is rejected. Components built
/// against 0.1.0 import the `@0.1.0` names, which the linker resolves to the 0.1.1 definitions
/// (semver-compatible); components built since 0.2.0 import the `@0.2.0` names.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "autoprune:metric/host@0.1.0",
    "autoprune:metric/types@0.1.0",
    "autoprune:metric/host@0.1.1",
    "autoprune:metric/types@0.1.1",
    "autoprune:metric/host@0.2.0",
    "autoprune:metric/types@0.2.0",
];

/// Interface names an allocator component may import (the world first appeared in 0.1.1).
pub const ALLOWED_ALLOCATOR_IMPORTS: &[&str] = &[
    "autoprune:metric/logging@0.1.1",
    "autoprune:metric/allocation@0.1.1",
    "autoprune:metric/types@0.1.1",
    "autoprune:metric/logging@0.2.0",
    "autoprune:metric/allocation@0.2.0",
    "autoprune:metric/types@0.2.0",
];

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

/// The WIT name of a host layer kind.
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
