//! Automated metric search: proposers that generate candidate metric sources.
//!
//! - [`gp`]: symbolic genetic programming over Pruner-Zero-style expression trees, rendered to
//!   complete candidate sources for the sandboxed builder.

pub mod gp;
