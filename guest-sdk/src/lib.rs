//! Write an autoprune pruning metric in plain Rust.
//!
//! A metric scores every weight of one linear layer at a time; the host keeps the highest
//! scores. This crate hides the WebAssembly plumbing (the `autoprune:metric` WIT world and
//! wit-bindgen): implement [`Metric`], export it with [`export_metric!`], done. The complete
//! Wanda metric:
//!
//! ```
//! use autoprune_sdk::prelude::*;
//!
//! struct Wanda;
//!
//! impl Metric for Wanda {
//!     fn info() -> Info {
//!         Info::new("wanda", "1.0.0", "|W_ij| * ||X_j||_2")
//!     }
//!
//!     fn score(layer: &Layer) -> Result<()> {
//!         let norm = &layer.stats().l2_norm;
//!         layer.score_rows(|row, out| {
//!             for ((o, w), n) in out.iter_mut().zip(row.weights).zip(norm) {
//!                 *o = w.abs() * n;
//!             }
//!         })
//!     }
//! }
//!
//! export_metric!(Wanda);
//! ```
//!
//! What a metric can use:
//! - [`Layer::score_rows`]: elementwise or per-row scores; the SDK moves the tiles.
//! - [`Layer::for_each_tile`]: an extra pass for whole-layer quantities (row/column sums).
//! - [`Layer::info`] (block, kind, shape, sparsity) and [`Layer::stats`] (channel statistics).
//! - [`Row::gradient`], after asking for it with [`Info::needs_gradient`].
//! - [`Layer::hessian_inverse_diagonal`] (`[(H + λI)⁻¹]_jj` per input channel) and
//!   [`Layer::output_stats`] (per-row statistics of the dense output), after asking for them
//!   with [`Info::needs_hessian_inverse_diagonal`] and [`Info::needs_output_stats`].
//! - [`log!`] for messages, [`Error`] for failures the host should see as a verdict.
//!
//! The same source compiles natively, where [`export_metric!`] exports nothing and
//! `testing::run` (non-wasm32 only) scores an in-memory `testing::TestLayer`, so the
//! metric's maths is unit-tested with plain `cargo test`. On `wasm32-unknown-unknown` the
//! candidate imports nothing but `autoprune:metric/host`, and a panic's message (with its
//! location) reaches the host before the guest traps.
//!
//! The SDK also writes *allocators* (the `autoprune:metric/allocator` world): implement
//! [`Allocator`], export it with [`export_allocator!`]; see the [`allocator`](mod@allocator)
//! module for an example and [`project_to_mean`] to turn raw preferences into a valid answer.
//! An allocator candidate imports only `autoprune:metric/logging`.

#![deny(missing_docs)]

// The generated bindings name the SDK by its crate name (`runtime_path`, export macro), which
// must also resolve inside the SDK itself.
extern crate self as autoprune_sdk;

pub mod allocator;
mod error;
mod layer;
mod metric;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[cfg(not(target_arch = "wasm32"))]
use testing as sys;

#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(target_arch = "wasm32")]
use wasm as sys;

pub use allocator::{
    check_allocation, project_to_mean, Allocator, AllocatorInfo, Distribution, Request, UnitSummary,
};
pub use error::{Error, Result};
pub use layer::{ChannelStats, Layer, LayerInfo, LayerKind, Row, RowStats, Tile};
pub use metric::{Info, Input, Metric};

/// Everything a metric needs: `use autoprune_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        export_allocator, export_metric, log, project_to_mean, Allocator, AllocatorInfo,
        ChannelStats, Distribution, Error, Info, Input, Layer, LayerInfo, LayerKind, Level, Metric,
        Request, Result, Row, RowStats, Tile, UnitSummary,
    };
}

/// The generated bindings of the `autoprune:metric` world (the one `generate!` site).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "autoprune:metric/metric@0.2.0",
        runtime_path: "::autoprune_sdk::__rt",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::autoprune_sdk::bindings",
    });
}

/// The generated bindings of the `autoprune:metric/allocator` world; `types` is shared with
/// [`bindings`]. (The host's builder embeds the world's type itself, chosen by the exports.)
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod allocator_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "autoprune:metric/allocator@0.2.0",
        runtime_path: "::autoprune_sdk::__rt",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::autoprune_sdk::allocator_bindings",
        with: {
            "autoprune:metric/types@0.2.0": crate::bindings::autoprune::metric::types,
        },
    });
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

/// Implementation details of the macros.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm::{AllocatorExporter, Exporter};
}

/// Severity of a [`log!`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Detail for debugging a metric.
    Debug,
    /// Normal progress information.
    Info,
    /// Something unexpected that the metric handled.
    Warn,
    /// Something that went wrong.
    Error,
}

/// Send one log line to the host (natively: to stderr). The host truncates long messages and
/// caps their number. Usually called through [`log!`].
pub fn log(level: Level, message: &str) {
    sys::log(level, message);
}

/// Log a formatted message: `log!("...", args)` at info level, or with a level first:
/// `log!(debug: ...)`, `log!(info: ...)`, `log!(warn: ...)`, `log!(error: ...)`.
///
/// ```
/// use autoprune_sdk::prelude::*;
///
/// let (rows, cols) = (4096, 11008);
/// log!("scoring a {rows}x{cols} layer");
/// log!(warn: "{} dead input channels", 3);
/// ```
#[macro_export]
macro_rules! log {
    (debug: $($arg:tt)+) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)+)) };
    (info: $($arg:tt)+) => { $crate::log($crate::Level::Info, &::std::format!($($arg)+)) };
    (warn: $($arg:tt)+) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)+)) };
    (error: $($arg:tt)+) => { $crate::log($crate::Level::Error, &::std::format!($($arg)+)) };
    ($($arg:tt)+) => { $crate::log($crate::Level::Info, &::std::format!($($arg)+)) };
}

/// Export a [`Metric`] implementation as the plugin's `describe` and `score`; use it once per
/// candidate, at the top level.
///
/// On wasm32 it emits the component's exports and a panic hook that forwards panic messages to
/// the host. On other targets it only checks that the type implements [`Metric`], so the same
/// file compiles natively for unit tests.
#[macro_export]
macro_rules! export_metric {
    ($metric:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __AutopruneExport = $crate::__private::Exporter<$metric>;
    $crate::bindings::export!(__AutopruneExport with_types_in $crate::bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn implements_metric<M: $crate::Metric>() {}
            let _ = implements_metric::<$metric>;
        };
    };
}

/// Export an [`Allocator`] implementation as the plugin's `describe` and `allocate`; use it
/// once per candidate, at the top level, instead of [`export_metric!`].
///
/// On wasm32 it emits the component's exports (world `autoprune:metric/allocator`) and a
/// panic hook that forwards panic messages to the host. On other targets it only checks that
/// the type implements [`Allocator`], so the same file compiles natively for unit tests
/// (`testing::run_allocator`).
#[macro_export]
macro_rules! export_allocator {
    ($allocator:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __AutopruneExport = $crate::__private::AllocatorExporter<$allocator>;
            $crate::allocator_bindings::export!(__AutopruneExport with_types_in $crate::allocator_bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn implements_allocator<A: $crate::Allocator>() {}
            let _ = implements_allocator::<$allocator>;
        };
    };
}
