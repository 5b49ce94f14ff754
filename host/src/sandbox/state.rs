//! The host side of the WIT `host` interface: the per-evaluation store data.

use super::bindings::v0_1_1::{allocation, host, logging, types};
use super::verdict::InvalidOutput;
use crate::layer::LayerData;
use wasmtime::{ResourceLimiter, StoreLimits};

/// A borrowed `f32` slice stored without its lifetime.
///
/// `Store<T>` needs `T: 'static`, but copying a layer's weights into the store would cost as
/// much as scoring them. The store is created inside [`super::Plugin::score`], holds this view
/// while the borrowed layer is alive, and is dropped before that function returns.
#[derive(Clone, Copy)]
struct RawSlice {
    ptr: *const f32,
    len: usize,
}

// SAFETY: the pointee is plain `f32` data that is only read, and the store (the only holder)
// never outlives the borrow it was made from (see `RawSlice`).
unsafe impl Send for RawSlice {}

impl RawSlice {
    fn new(s: &[f32]) -> Self {
        Self {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// The slice this was made from must still be borrowed (see the type's docs).
    unsafe fn get(&self) -> &[f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Memory limiter: wasmtime's `StoreLimits` (cap, trap on grow failure) plus a record of the
/// peak size and a typed marker when the cap was hit.
pub(crate) struct Limiter {
    inner: StoreLimits,
    pub(crate) peak_bytes: usize,
    pub(crate) hit_cap: bool,
}

impl Limiter {
    pub(crate) fn new(memory_bytes: u64) -> Self {
        let inner = wasmtime::StoreLimitsBuilder::new()
            .memory_size(memory_bytes as usize)
            .memories(1)
            .tables(4)
            .table_elements(100_000)
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        Self {
            inner,
            peak_bytes: 0,
            hit_cap: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        match &r {
            Ok(true) => self.peak_bytes = self.peak_bytes.max(desired),
            _ => self.hit_cap = true,
        }
        r
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// A log line a guest sent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Severity.
    pub level: String,
    /// Message (truncated to the policy's limit).
    pub message: String,
}

/// Everything the store of one evaluation holds.
pub(crate) struct HostState {
    pub(crate) limiter: Limiter,
    layer: Option<LayerView>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) dropped_logs: u32,
    pub(crate) panic_message: Option<String>,
    max_log_messages: u32,
    max_message_bytes: usize,
    gradient_allowed: bool,
    memory_cap: u64,
    /// Fuel per host call and per byte it moves ([`super::charge`]).
    hostcall_fuel: (u64, u64),
}

/// The layer being scored and the scores written so far.
struct LayerView {
    rows: usize,
    cols: usize,
    tile_rows: usize,
    weights: RawSlice,
    gradient: Option<RawSlice>,
    stats: types::ChannelStats,
    scores: Vec<f32>,
    written: Vec<bool>,
    violation: Option<InvalidOutput>,
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

fn bad_input(msg: String) -> types::Error {
    types::Error::InvalidInput(msg)
}

impl HostState {
    pub(crate) fn new(policy: &super::Policy, gradient_allowed: bool) -> Self {
        Self {
            limiter: Limiter::new(policy.memory_bytes),
            layer: None,
            logs: Vec::new(),
            dropped_logs: 0,
            panic_message: None,
            max_log_messages: policy.max_log_messages,
            max_message_bytes: policy.max_message_bytes as usize,
            gradient_allowed,
            memory_cap: policy.memory_bytes,
            hostcall_fuel: (policy.hostcall_fuel_per_call, policy.hostcall_fuel_per_byte),
        }
    }

    /// Point the store at `layer`. The caller must drop the store before `layer`'s borrows end.
    pub(crate) fn attach(&mut self, layer: &LayerData<'_>, tile_rows: usize) {
        let stats = layer.stats;
        self.layer = Some(LayerView {
            rows: layer.rows,
            cols: layer.cols,
            tile_rows,
            weights: RawSlice::new(layer.weights),
            gradient: layer.gradient.map(RawSlice::new),
            stats: types::ChannelStats {
                tokens: stats.tokens,
                l2_norm: stats.l2_norm(),
                sum: stats.sum.iter().map(|&x| x as f32).collect(),
                mean: stats.mean(),
                variance: stats.variance(),
                max_abs: stats.max_abs.clone(),
            },
            scores: vec![0.0; layer.rows * layer.cols],
            written: vec![false; layer.rows],
            violation: None,
        });
    }

    /// Scores written, or the contract violation that makes them invalid.
    pub(crate) fn take_scores(&mut self) -> Result<Vec<f32>, InvalidOutput> {
        let view = self.layer.take().expect("attach before take_scores");
        if let Some(v) = view.violation {
            return Err(v);
        }
        let missing = view.written.iter().filter(|w| !**w).count();
        if missing > 0 {
            let first = view.written.iter().position(|w| !*w).unwrap_or(0);
            return Err(InvalidOutput::MissingRows {
                missing: missing as u32,
                rows: view.rows as u32,
                first: first as u32,
            });
        }
        Ok(view.scores)
    }

    /// The recorded contract violation, if any.
    pub(crate) fn violation(&self) -> Option<&InvalidOutput> {
        self.layer.as_ref().and_then(|v| v.violation.as_ref())
    }

    fn view(&mut self) -> Result<&mut LayerView, types::Error> {
        self.layer
            .as_mut()
            .ok_or_else(|| types::Error::Failed("no layer is being scored (describe phase)".into()))
    }

    fn read_range(
        &mut self,
        row_start: u32,
        rows: u32,
        gradient: bool,
    ) -> Result<Vec<f32>, types::Error> {
        let view = self.view()?;
        let (r0, n) = (row_start as usize, rows as usize);
        if n == 0 || n > view.tile_rows || r0 >= view.rows || n > view.rows - r0 {
            return Err(bad_input(format!(
                "rows [{r0}, {}) are outside the layer ({} rows) or exceed tile-rows {}",
                r0 + n,
                view.rows,
                view.tile_rows
            )));
        }
        let src = if gradient {
            view.gradient.ok_or_else(|| {
                types::Error::Unsupported("no gradient statistic for this layer".into())
            })?
        } else {
            view.weights
        };
        // SAFETY: the store holding this view is dropped before the layer borrow ends.
        let all = unsafe { src.get() };
        Ok(all[r0 * view.cols..(r0 + n) * view.cols].to_vec())
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn activation_stats(&mut self) -> wasmtime::Result<types::ChannelStats> {
        match self.layer.as_ref() {
            Some(v) => Ok(v.stats.clone()),
            None => Ok(types::ChannelStats {
                tokens: 0,
                l2_norm: vec![],
                sum: vec![],
                mean: vec![],
                variance: vec![],
                max_abs: vec![],
            }),
        }
    }

    fn read_weights(
        &mut self,
        row_start: u32,
        rows: u32,
    ) -> wasmtime::Result<Result<Vec<f32>, types::Error>> {
        Ok(self.read_range(row_start, rows, false))
    }

    fn read_gradient(
        &mut self,
        row_start: u32,
        rows: u32,
    ) -> wasmtime::Result<Result<Vec<f32>, types::Error>> {
        if !self.gradient_allowed {
            return Ok(Err(types::Error::Unsupported(
                "read-gradient needs `gradient` in metric-info.needs".into(),
            )));
        }
        Ok(self.read_range(row_start, rows, true))
    }

    fn write_scores(
        &mut self,
        row_start: u32,
        scores: Vec<f32>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let view = match self.view() {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let (r0, cols) = (row_start as usize, view.cols);
        let n = scores.len() / cols.max(1);
        let shape_ok = !scores.is_empty()
            && scores.len().is_multiple_of(cols)
            && n <= view.tile_rows
            && r0 < view.rows
            && n <= view.rows - r0;
        if !shape_ok {
            let v = InvalidOutput::WrongLength {
                row_start,
                len: scores.len() as u64,
                cols: cols as u32,
                max_rows: view.tile_rows as u32,
            };
            let msg = v.to_string();
            view.violation.get_or_insert(v);
            return Ok(Err(bad_input(msg)));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            let v = InvalidOutput::NonFinite {
                row: (r0 + i / cols) as u32,
                col: (i % cols) as u32,
                value: scores[i].to_string(),
            };
            let msg = v.to_string();
            view.violation.get_or_insert(v);
            return Ok(Err(bad_input(msg)));
        }
        if let Some(k) = view.written[r0..r0 + n].iter().position(|w| *w) {
            let v = InvalidOutput::RowWrittenTwice {
                row: (r0 + k) as u32,
            };
            let msg = v.to_string();
            view.violation.get_or_insert(v);
            return Ok(Err(bad_input(msg)));
        }
        view.written[r0..r0 + n].fill(true);
        view.scores[r0 * cols..(r0 + n) * cols].copy_from_slice(&scores);
        Ok(Ok(()))
    }

    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        self.push_log(level, message);
        Ok(())
    }

    fn report_panic(&mut self, message: String) -> wasmtime::Result<()> {
        self.record_panic(message);
        Ok(())
    }
}

impl allocation::Host for HostState {}

/// The allocator world's only capability: the same log and panic channel as a metric's.
impl logging::Host for HostState {
    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        self.push_log(level, message);
        Ok(())
    }

    fn report_panic(&mut self, message: String) -> wasmtime::Result<()> {
        self.record_panic(message);
        Ok(())
    }
}

impl HostState {
    /// Keep a log line (truncated), or count it as dropped past the cap.
    fn push_log(&mut self, level: types::LogLevel, message: String) {
        if self.logs.len() >= self.max_log_messages as usize {
            self.dropped_logs = self.dropped_logs.saturating_add(1);
            return;
        }
        let level = match level {
            types::LogLevel::Debug => "debug",
            types::LogLevel::Info => "info",
            types::LogLevel::Warn => "warn",
            types::LogLevel::Error => "error",
        };
        self.logs.push(LogLine {
            level: level.into(),
            message: truncate(message, self.max_message_bytes),
        });
    }

    /// Keep the first panic message (truncated).
    fn record_panic(&mut self, message: String) {
        if self.panic_message.is_none() {
            self.panic_message = Some(truncate(message, self.max_message_bytes));
        }
    }
}

impl HostState {
    /// Fuel per host call and per byte moved.
    pub(crate) fn hostcall_prices(&self) -> (u64, u64) {
        self.hostcall_fuel
    }

    /// The memory cap in bytes (for verdicts).
    pub(crate) fn limiter_cap(&self) -> u64 {
        self.memory_cap
    }
}

#[cfg(test)]
mod tests {
    //! The WIT boundary as a guest sees it: arbitrary sequences of host calls with arbitrary
    //! arguments (rows out of range, wrong lengths, NaN and infinity, rows written twice).

    use super::*;
    use crate::layer::{ChannelStats, LayerId, LayerKind};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Call {
        Read { r0: u32, n: u32, gradient: bool },
        Write { r0: u32, len: u32, poison: Option<(usize, f32)> },
        Stats,
    }

    fn call() -> impl Strategy<Value = Call> {
        let small = prop_oneof![0u32..24, Just(u32::MAX), Just(u32::MAX / 2)];
        let poison = prop::option::of((
            any::<usize>(),
            prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY), Just(1.5f32)],
        ));
        prop_oneof![
            (small.clone(), small.clone(), any::<bool>())
                .prop_map(|(r0, n, gradient)| Call::Read { r0, n, gradient }),
            (small.clone(), 0u32..200, poison).prop_map(|(r0, len, poison)| Call::Write {
                r0,
                len,
                poison
            }),
            Just(Call::Stats),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Reads return exactly the rows asked for or an error; a write is accepted exactly
        /// when its shape is a whole number of rows inside one tile and the layer, every value
        /// is finite and no row is written twice; the first violation is what the verdict
        /// reports; and the scores that come back are exactly the accepted writes.
        #[test]
        fn host_calls_keep_the_contract_whatever_the_guest_sends(
            rows in 1usize..12,
            cols in 1usize..7,
            tile in 1usize..12,
            gradient_allowed in any::<bool>(),
            calls in prop::collection::vec(call(), 0..40),
        ) {
            let tile_rows = tile.min(rows);
            let weights: Vec<f32> = (0..rows * cols).map(|i| i as f32 - 3.5).collect();
            let grad: Vec<f32> = weights.iter().map(|w| w.abs()).collect();
            let stats = ChannelStats::new(cols);
            let layer = LayerData {
                id: LayerId { block: 0, num_blocks: 1, kind: LayerKind::Q },
                rows,
                cols,
                weights: &weights,
                stats: &stats,
                gradient: Some(&grad),
                sparsity: 0.5,
            };
            let mut state = HostState::new(&super::super::Policy::default(), gradient_allowed);
            state.attach(&layer, tile_rows);
            let mut written = vec![false; rows];
            let mut expected = vec![0f32; rows * cols];
            let mut first_violation = false;
            for c in calls {
                match c {
                    Call::Read { r0, n, gradient } => {
                        let got = if gradient {
                            host::Host::read_gradient(&mut state, r0, n).unwrap()
                        } else {
                            host::Host::read_weights(&mut state, r0, n).unwrap()
                        };
                        let (r0, n) = (r0 as usize, n as usize);
                        let valid = n >= 1 && n <= tile_rows && r0 < rows && n <= rows - r0
                            && (!gradient || gradient_allowed);
                        let src = if gradient { &grad } else { &weights };
                        match got {
                            Ok(v) => {
                                prop_assert!(valid);
                                prop_assert_eq!(&v[..], &src[r0 * cols..(r0 + n) * cols]);
                            }
                            Err(_) => prop_assert!(!valid),
                        }
                    }
                    Call::Write { r0, len, poison } => {
                        let mut scores: Vec<f32> = (0..len).map(|i| i as f32 * 0.25).collect();
                        if let (Some((at, v)), false) = (poison, scores.is_empty()) {
                            let at = at % scores.len();
                            scores[at] = v;
                        }
                        let (r, l) = (r0 as usize, len as usize);
                        let n = l / cols;
                        let shape = l > 0 && l % cols == 0 && n <= tile_rows && r < rows
                            && n <= rows - r;
                        let finite = scores.iter().all(|s| s.is_finite());
                        let fresh = shape && written[r..r + n].iter().all(|w| !w);
                        let accept = shape && finite && fresh;
                        let res = host::Host::write_scores(&mut state, r0, scores.clone()).unwrap();
                        prop_assert_eq!(res.is_ok(), accept);
                        if accept {
                            written[r..r + n].fill(true);
                            expected[r * cols..(r + n) * cols].copy_from_slice(&scores);
                        } else {
                            first_violation = true;
                        }
                    }
                    Call::Stats => {
                        let s = host::Host::activation_stats(&mut state).unwrap();
                        prop_assert_eq!(s.l2_norm.len(), cols);
                    }
                }
                prop_assert_eq!(state.violation().is_some(), first_violation);
            }
            match state.take_scores() {
                Ok(s) => {
                    prop_assert!(!first_violation && written.iter().all(|w| *w));
                    prop_assert_eq!(s, expected);
                }
                Err(InvalidOutput::MissingRows { missing, .. }) => {
                    prop_assert!(!first_violation);
                    prop_assert_eq!(missing as usize, written.iter().filter(|w| !**w).count());
                }
                Err(_) => prop_assert!(first_violation),
            }
        }
    }
}
