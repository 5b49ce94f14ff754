//! Typed verdicts: every way a plugin can fail, as data that tests `match` on.

use crate::units::AllocError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a plugin did not produce a valid result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Failure {
    /// The call ran past its wall-clock deadline (epoch interruption).
    #[error("timeout: the plugin ran longer than {limit_ms} ms")]
    Timeout {
        /// The deadline, in milliseconds.
        limit_ms: u64,
    },
    /// The call used up its fuel (deterministic work limit).
    #[error("out of fuel: the plugin used more than {limit} units of work")]
    OutOfFuel {
        /// Fuel granted to the call.
        limit: u64,
    },
    /// The guest tried to grow its memory beyond the cap.
    #[error("out of memory: the plugin asked for more than {limit_bytes} bytes")]
    OutOfMemory {
        /// The memory cap in bytes.
        limit_bytes: u64,
    },
    /// The wasm stack overflowed (deep or endless recursion).
    #[error("stack overflow")]
    StackOverflow,
    /// The guest panicked; the SDK forwarded the message.
    #[error("panic: {message}")]
    Panic {
        /// The panic message (truncated by the host).
        message: String,
    },
    /// The guest returned, but what it returned is not a valid result.
    #[error("invalid output: {0}")]
    InvalidOutput(InvalidOutput),
    /// The guest reported an error through the WIT `error` variant.
    #[error("guest error: {0}")]
    GuestError(GuestError),
    /// The component was refused before it ran (bad bytes, forbidden imports, too large).
    #[error("rejected: {reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// The candidate source did not compile (or the compile sandbox stopped it).
    #[error("compile error:\n{diagnostics}")]
    Compile {
        /// Compiler diagnostics, safe to show to an LLM (no host file content).
        diagnostics: String,
    },
    /// Any other trap (e.g. an out-of-bounds access or integer division by zero).
    #[error("trap: {message}")]
    Trap {
        /// The trap as wasmtime describes it.
        message: String,
    },
}

impl Failure {
    /// A short stable name of the verdict kind (`timeout`, `out_of_fuel`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout { .. } => "timeout",
            Failure::OutOfFuel { .. } => "out_of_fuel",
            Failure::OutOfMemory { .. } => "out_of_memory",
            Failure::StackOverflow => "stack_overflow",
            Failure::Panic { .. } => "panic",
            Failure::InvalidOutput(_) => "invalid_output",
            Failure::GuestError(_) => "guest_error",
            Failure::Rejected { .. } => "rejected",
            Failure::Compile { .. } => "compile",
            Failure::Trap { .. } => "trap",
        }
    }

    /// Build a `Timeout` from a duration.
    pub fn timeout(limit: Duration) -> Self {
        Failure::Timeout {
            limit_ms: limit.as_millis() as u64,
        }
    }
}

/// How a guest's output broke the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum InvalidOutput {
    /// `write-scores` got a length that is not a whole number of rows within one tile.
    #[error("write-scores at row {row_start} got {len} values; expected a multiple of {cols} covering at most {max_rows} rows inside the layer")]
    WrongLength {
        /// First row of the write.
        row_start: u32,
        /// Values received.
        len: u64,
        /// Columns of the layer.
        cols: u32,
        /// Most rows one write may cover.
        max_rows: u32,
    },
    /// A score is NaN or infinite.
    #[error("non-finite score {value} at row {row}, column {col}")]
    NonFinite {
        /// Row of the first bad score.
        row: u32,
        /// Column of the first bad score.
        col: u32,
        /// The value, as text (NaN and inf do not survive JSON as numbers).
        value: String,
    },
    /// A row was written twice.
    #[error("row {row} was written twice")]
    RowWrittenTwice {
        /// The row.
        row: u32,
    },
    /// `score` returned before every row had scores.
    #[error("{missing} of {rows} rows were never written (first: row {first})")]
    MissingRows {
        /// Rows without scores.
        missing: u32,
        /// Rows of the layer.
        rows: u32,
        /// The first row without scores.
        first: u32,
    },
    /// One call tried to move more data than the host allows (hostcall fuel).
    #[error("a call copied more data than one tile allows")]
    Oversized,
    /// `describe` returned something unusable.
    #[error("bad metric description: {0}")]
    BadInfo(String),
    /// The scores tie so much that a per-layer threshold prunes far beyond the target (see
    /// [`crate::prune::mask::per_layer_prune_limit`]).
    #[error("the scores tie at the threshold: the per-layer rule would prune {pruned} of {weights} weights, more than the {allowed} allowed for the target's {target}")]
    SparsityOvershoot {
        /// Weights the threshold would prune.
        pruned: u64,
        /// Weights the target prunes.
        target: u64,
        /// The most accepted.
        allowed: u64,
        /// Weights of the layer.
        weights: u64,
    },
    /// An allocator's sparsities failed the host's validation ([`crate::units::validate`]):
    /// wrong length, non-finite, out of range, or the wrong parameter-weighted mean.
    #[error("bad allocation: {error}")]
    BadAllocation {
        /// What the validation found.
        error: AllocError,
    },
}

/// An error the guest reported through the WIT `error` variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct GuestError {
    /// `unsupported`, `invalid-input` or `failed`.
    pub kind: String,
    /// The guest's message (truncated by the host).
    pub message: String,
}
