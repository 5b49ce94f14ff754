//! The sandbox: wasmtime engine, limits, component loading, and the two worlds of the
//! `autoprune:metric` package that run in it, shaped like Spin's `crates/core`.
//!
//! Every call gets a fresh `Store` from a pre-linked `InstancePre`, an epoch deadline (wall
//! time), fuel (deterministic work), a memory cap, and a cap on the bytes one host call may
//! copy. Whatever goes wrong comes back as a typed [`Failure`].
//!
//! Metric plugins ([`Plugin`]) and layer-wise sparsity allocators ([`AllocatorPlugin`]) load
//! through one path; [`AnyPlugin`] loads either, telling the world from the component's
//! exports. Each runs against the package version its component imports (0.1.0/0.1.1 through
//! the 0.1.1 bindings, 0.2.0 through the current ones), so a component keeps loading and
//! scoring exactly as it did when it was built.
//!
//! - `engine`: the [`engine()`], compilation, the per-call store, [`Usage`], and the
//!   classification of traps into verdicts; `limits`: the store's memory limiter;
//! - `world`: the one load path (size, compile or cache, imports, version, link, describe);
//! - `metric` and `allocator`: one module per world; `any`: a plugin of either world;
//! - `bindings`: the `bindgen!` sites per package version; `state`: the store data and the host
//!   side of the WIT interfaces; `charge`: host calls paid in fuel;
//! - [`cache`](ArtifactCache), [`policy`](Policy), [`precheck`], [`verdict`](Failure).

mod allocator;
mod any;
mod bindings;
mod cache;
mod charge;
mod engine;
mod limits;
mod metric;
mod policy;
pub mod precheck;
mod state;
mod verdict;
mod world;

pub use crate::hash::sha256_hex;
pub use allocator::{Allocated, AllocatorInfo, AllocatorPlugin};
pub use any::{AnyPlugin, World};
pub use bindings::{ALLOWED_ALLOCATOR_IMPORTS, ALLOWED_IMPORTS};
pub use cache::{ArtifactCache, CacheError, MAX_CACHE_BYTES};
pub use engine::{compile, engine, engine_fingerprint, Usage};
pub use metric::{check_imports, MetricInfo, Plugin, Scored};
pub use policy::Policy;
pub use state::LogLine;
pub use verdict::{Failure, GuestError, InvalidOutput};
