//! Limits on one plugin evaluation, as serde data: every number with its reason.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a plugin may spend. Separate from the engine so it can be read from a file and
/// recorded next to every result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Wall-clock limit of one `score` call (one layer), in milliseconds.
    /// Why 60 s: Wanda on an 11008×4096 layer takes ~0.1 s through the tile path; a metric
    /// 100× heavier (per-row sorts, several passes) still fits, an endless loop does not.
    pub score_timeout_ms: u64,
    /// Wall-clock limit of `describe`, in milliseconds. Why: it only returns a small record.
    pub describe_timeout_ms: u64,
    /// Fuel granted per weight of the layer, on top of `fuel_base`.
    /// Why 4096: a simd128 elementwise metric uses ~5 units per weight, a scalar one ~19, a
    /// per-row sort a few hundred; 4096 leaves room for several passes and still bounds work
    /// deterministically (the same candidate always stops at the same instruction).
    pub fuel_per_weight: u64,
    /// Fuel granted to every call regardless of size (set-up, per-column statistics).
    /// Why 2^28: ~0.3 s of wasm at typical rates; enough for per-channel work on any layer.
    pub fuel_base: u64,
    /// Cap on a guest's linear memory, in bytes.
    /// Why 256 MiB: a few tile buffers (each `tile_bytes`) plus per-column and per-row state of
    /// the widest layers (LLaMA-70B: 28672 columns) fit many times over; a memory bomb does not.
    pub memory_bytes: u64,
    /// Target size of one tile of weights or scores moved between host and guest, in bytes.
    /// Why 1 MiB: measured 1.6 ns/weight end to end at 1 MiB tiles against 3.6–4.0 ns for whole
    /// 64 MiB blocks (fresh-allocation page faults dominate big copies); it also fits in L2.
    pub tile_bytes: u64,
    /// Largest number of log messages kept per evaluation. Why: a chatty guest must not fill
    /// the host's memory or the user's terminal.
    pub max_log_messages: u32,
    /// Longest log or panic message kept, in bytes (longer ones are truncated).
    pub max_message_bytes: u32,
    /// Largest `.wasm` component accepted, in bytes. Why 16 MiB: a metric compiles to well
    /// under 1 MiB; anything near this is not a metric.
    pub max_component_bytes: u64,
    /// Wasm stack, in bytes. Why 1 MiB: Fastly's choice for untrusted code; deep recursion
    /// traps cleanly as a stack overflow long before it could hurt the host.
    pub max_wasm_stack: usize,
    /// Fuel charged for every byte a host call moves between host and guest (tiles read,
    /// scores written, statistics, log text); see `sandbox::charge`. Why 4: measured on the
    /// 2-core reference machine, a 1 MiB tile read costs the host about as much wall time as
    /// 4 Mi units of wasm fuel, so host copies are no cheaper per unit of fuel than guest work
    /// and the fuel grant bounds a layer's wall time whatever the mix. An elementwise metric
    /// moves 8 bytes per weight (read + write): 32 units, under 1 % of `fuel_per_weight`.
    pub hostcall_fuel_per_byte: u64,
    /// Fuel charged for every host call, whatever it moves. Why 2048: a host call that
    /// returns at once (an invalid request) still costs about as much as 2 Ki units of wasm
    /// work; a metric makes a few calls per tile, so the fee is noise for it.
    pub hostcall_fuel_per_call: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            score_timeout_ms: 60_000,
            describe_timeout_ms: 1_000,
            fuel_per_weight: 4096,
            fuel_base: 1 << 28,
            memory_bytes: 256 << 20,
            tile_bytes: 1 << 20,
            max_log_messages: 64,
            max_message_bytes: 4096,
            max_component_bytes: 16 << 20,
            max_wasm_stack: 1 << 20,
            hostcall_fuel_per_byte: 4,
            hostcall_fuel_per_call: 2048,
        }
    }
}

impl Policy {
    /// Wall-clock limit of one `score` call.
    pub fn score_timeout(&self) -> Duration {
        Duration::from_millis(self.score_timeout_ms)
    }

    /// Fuel for scoring a layer of `weights` weights.
    pub fn fuel_for(&self, weights: u64) -> u64 {
        self.fuel_base
            .saturating_add(self.fuel_per_weight.saturating_mul(weights))
    }

    /// Rows per tile for a layer with `cols` columns: at least one row, at most `tile_bytes`.
    pub fn tile_rows(&self, rows: usize, cols: usize) -> usize {
        let by_bytes = (self.tile_bytes as usize) / (cols.max(1) * 4);
        by_bytes.clamp(1, rows.max(1))
    }

    /// Bytes one guest→host call may copy: a tile of scores plus small change.
    /// Why: wasmtime's default (128 MiB per call) would let a guest make the host allocate far
    /// more than any legitimate tile.
    pub fn hostcall_fuel(&self, tile_rows: usize, cols: usize) -> usize {
        tile_rows * cols * 4 + 64 * 1024 + self.max_message_bytes as usize
    }

    /// Bytes one call may copy while scoring a `rows × cols` layer: [`Self::hostcall_fuel`],
    /// or the `output-stats` record (three lists of `rows` f32) if that is larger. Why: a tile
    /// is ≥ 1 MiB or the whole layer, so the record only decides for layers with 87,000+ rows
    /// (or fewer than 3 columns); a guest still cannot make one call copy more than that.
    pub fn hostcall_fuel_for_layer(&self, tile_rows: usize, rows: usize, cols: usize) -> usize {
        self.hostcall_fuel(tile_rows, cols)
            .max(rows * 12 + 64 * 1024 + self.max_message_bytes as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Policy>(r#"{"memory_bytes": 1, "memroy": 2}"#);
        assert!(err.is_err());
        let p: Policy = serde_json::from_str(r#"{"memory_bytes": 1048576}"#).unwrap();
        assert_eq!(p.memory_bytes, 1 << 20);
        assert_eq!(p.fuel_per_weight, Policy::default().fuel_per_weight);
    }

    #[test]
    fn tiles_are_bounded() {
        let p = Policy::default();
        assert_eq!(p.tile_rows(4096, 4096), 64); // 1 MiB / 16 KiB per row
        assert_eq!(p.tile_rows(10, 4096), 10);
        assert_eq!(p.tile_rows(8, 1 << 20), 1); // a single huge row still moves
    }
}
