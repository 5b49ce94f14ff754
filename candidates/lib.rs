//! The baseline metric candidates, each a single source file built exactly like an LLM's
//! candidate (plain `rustc` against the prebuilt SDK rlib). Their unit tests run natively with
//! `cargo test --release -p autoprune-candidates`.

/// `(name, source)` of every baseline candidate, for the host to build and evaluate.
pub const BASELINES: &[(&str, &str)] = &[
    ("magnitude", include_str!("magnitude.rs")),
    ("wanda", include_str!("wanda.rs")),
    ("ria", include_str!("ria.rs")),
    ("gblm", include_str!("gblm.rs")),
    ("pruner_zero", include_str!("pruner_zero.rs")),
    ("obs", include_str!("obs.rs")),
];

/// `(name, source)` of every baseline allocator candidate (the `allocator` world).
pub const ALLOCATORS: &[(&str, &str)] = &[("owl", include_str!("owl_alloc.rs"))];
