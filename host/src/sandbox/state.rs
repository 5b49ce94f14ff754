//! The host side of the WIT `host` interface: the per-evaluation store data.
//!
//! One set of inherent methods serves every published version of the package; the traits of
//! each version's bindings ([`v0_1_1`], [`v0_2_0`]) convert their own types around them.

use super::bindings::{v0_1_1, v0_2_0};
use super::limits::Limiter;
use super::policy::Policy;
use super::verdict::InvalidOutput;
use crate::layer::{LayerData, RowStats};

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

/// A log line a guest sent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Severity.
    pub level: String,
    /// Message (truncated to the policy's limit).
    pub message: String,
}

/// Which optional inputs the metric declared (`metric-info.needs`): the host serves only these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Allowed {
    pub(crate) gradient: bool,
    pub(crate) hessian_inverse_diagonal: bool,
    pub(crate) output_stats: bool,
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
    allowed: Allowed,
    memory_cap: u64,
    /// Fuel per host call and per byte it moves ([`super::charge`]).
    hostcall_fuel: (u64, u64),
}

/// Channel statistics as the WIT `channel-stats` record carries them (version-neutral).
#[derive(Clone, Default)]
struct Channels {
    tokens: u64,
    l2_norm: Vec<f32>,
    sum: Vec<f32>,
    mean: Vec<f32>,
    variance: Vec<f32>,
    max_abs: Vec<f32>,
}

/// A guest-visible error (the WIT `error` variant, version-neutral).
enum HostError {
    Unsupported(String),
    InvalidInput(String),
    Failed(String),
}

/// Severity of a log line (the WIT `log-level`, version-neutral).
#[derive(Clone, Copy)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// The layer being scored and the scores written so far.
struct LayerView {
    rows: usize,
    cols: usize,
    tile_rows: usize,
    weights: RawSlice,
    gradient: Option<RawSlice>,
    hessian_inverse_diagonal: Option<RawSlice>,
    output_stats: Option<RowStats>,
    stats: Channels,
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

fn bad_input(msg: String) -> HostError {
    HostError::InvalidInput(msg)
}

impl HostState {
    pub(crate) fn new(policy: &Policy, allowed: Allowed) -> Self {
        Self {
            limiter: Limiter::new(policy.memory_bytes),
            layer: None,
            logs: Vec::new(),
            dropped_logs: 0,
            panic_message: None,
            max_log_messages: policy.max_log_messages,
            max_message_bytes: policy.max_message_bytes as usize,
            allowed,
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
            hessian_inverse_diagonal: layer.hessian_inverse_diagonal.map(RawSlice::new),
            // Three lists of `rows` values: small next to one tile, copied once per call anyway.
            output_stats: layer.output_stats.cloned(),
            stats: Channels {
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

    fn view(&mut self) -> Result<&mut LayerView, HostError> {
        self.layer
            .as_mut()
            .ok_or_else(|| HostError::Failed("no layer is being scored (describe phase)".into()))
    }

    /// `activation-stats`: empty lists outside `score`.
    fn activation_stats(&self) -> Channels {
        self.layer
            .as_ref()
            .map(|v| v.stats.clone())
            .unwrap_or_default()
    }

    fn read_range(
        &mut self,
        row_start: u32,
        rows: u32,
        gradient: bool,
    ) -> Result<Vec<f32>, HostError> {
        if gradient && !self.allowed.gradient {
            return Err(HostError::Unsupported(
                "read-gradient needs `gradient` in metric-info.needs".into(),
            ));
        }
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
                HostError::Unsupported("no gradient statistic for this layer".into())
            })?
        } else {
            view.weights
        };
        // SAFETY: the store holding this view is dropped before the layer borrow ends.
        let all = unsafe { src.get() };
        Ok(all[r0 * view.cols..(r0 + n) * view.cols].to_vec())
    }

    /// `hessian-inverse-diagonal` (since 0.2.0): only for a metric that declared it.
    fn hessian_inverse_diagonal(&mut self) -> Result<Vec<f32>, HostError> {
        if !self.allowed.hessian_inverse_diagonal {
            return Err(HostError::Unsupported(
                "hessian-inverse-diagonal needs `hessian-inverse-diagonal` in metric-info.needs"
                    .into(),
            ));
        }
        let view = self.view()?;
        let src = view.hessian_inverse_diagonal.ok_or_else(|| {
            HostError::Unsupported("no Hessian inverse diagonal for this layer".into())
        })?;
        // SAFETY: the store holding this view is dropped before the layer borrow ends.
        Ok(unsafe { src.get() }.to_vec())
    }

    /// `output-stats` (since 0.2.0): only for a metric that declared it.
    fn output_stats(&mut self) -> Result<RowStats, HostError> {
        if !self.allowed.output_stats {
            return Err(HostError::Unsupported(
                "output-stats needs `output-stats` in metric-info.needs".into(),
            ));
        }
        let view = self.view()?;
        view.output_stats
            .clone()
            .ok_or_else(|| HostError::Unsupported("no output statistics for this layer".into()))
    }

    fn write_scores(&mut self, row_start: u32, scores: Vec<f32>) -> Result<(), HostError> {
        let view = self.view()?;
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
            return Err(bad_input(msg));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            let v = InvalidOutput::NonFinite {
                row: (r0 + i / cols) as u32,
                col: (i % cols) as u32,
                value: scores[i].to_string(),
            };
            let msg = v.to_string();
            view.violation.get_or_insert(v);
            return Err(bad_input(msg));
        }
        if let Some(k) = view.written[r0..r0 + n].iter().position(|w| *w) {
            let v = InvalidOutput::RowWrittenTwice {
                row: (r0 + k) as u32,
            };
            let msg = v.to_string();
            view.violation.get_or_insert(v);
            return Err(bad_input(msg));
        }
        view.written[r0..r0 + n].fill(true);
        view.scores[r0 * cols..(r0 + n) * cols].copy_from_slice(&scores);
        Ok(())
    }

    /// Keep a log line (truncated), or count it as dropped past the cap.
    fn push_log(&mut self, level: Level, message: String) {
        if self.logs.len() >= self.max_log_messages as usize {
            self.dropped_logs = self.dropped_logs.saturating_add(1);
            return;
        }
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
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

    /// Fuel per host call and per byte moved.
    pub(crate) fn hostcall_prices(&self) -> (u64, u64) {
        self.hostcall_fuel
    }

    /// The memory cap in bytes (for verdicts).
    pub(crate) fn limiter_cap(&self) -> u64 {
        self.memory_cap
    }
}

/// The traits of one version's bindings, around the shared inherent methods; `$extra` holds
/// the `host` functions that version added.
macro_rules! impl_version {
    ($v:ident { $($extra:tt)* }) => {
        impl From<HostError> for $v::types::Error {
            fn from(e: HostError) -> Self {
                match e {
                    HostError::Unsupported(m) => $v::types::Error::Unsupported(m),
                    HostError::InvalidInput(m) => $v::types::Error::InvalidInput(m),
                    HostError::Failed(m) => $v::types::Error::Failed(m),
                }
            }
        }

        impl From<$v::types::LogLevel> for Level {
            fn from(l: $v::types::LogLevel) -> Self {
                match l {
                    $v::types::LogLevel::Debug => Level::Debug,
                    $v::types::LogLevel::Info => Level::Info,
                    $v::types::LogLevel::Warn => Level::Warn,
                    $v::types::LogLevel::Error => Level::Error,
                }
            }
        }

        impl $v::types::Host for HostState {}

        impl $v::host::Host for HostState {
            fn activation_stats(&mut self) -> wasmtime::Result<$v::types::ChannelStats> {
                let c = HostState::activation_stats(self);
                Ok($v::types::ChannelStats {
                    tokens: c.tokens,
                    l2_norm: c.l2_norm,
                    sum: c.sum,
                    mean: c.mean,
                    variance: c.variance,
                    max_abs: c.max_abs,
                })
            }

            fn read_weights(
                &mut self,
                row_start: u32,
                rows: u32,
            ) -> wasmtime::Result<Result<Vec<f32>, $v::types::Error>> {
                Ok(self.read_range(row_start, rows, false).map_err(Into::into))
            }

            fn read_gradient(
                &mut self,
                row_start: u32,
                rows: u32,
            ) -> wasmtime::Result<Result<Vec<f32>, $v::types::Error>> {
                Ok(self.read_range(row_start, rows, true).map_err(Into::into))
            }

            fn write_scores(
                &mut self,
                row_start: u32,
                scores: Vec<f32>,
            ) -> wasmtime::Result<Result<(), $v::types::Error>> {
                Ok(HostState::write_scores(self, row_start, scores).map_err(Into::into))
            }

            fn log(&mut self, level: $v::types::LogLevel, message: String) -> wasmtime::Result<()> {
                self.push_log(level.into(), message);
                Ok(())
            }

            fn report_panic(&mut self, message: String) -> wasmtime::Result<()> {
                self.record_panic(message);
                Ok(())
            }

            $($extra)*
        }

        impl $v::allocation::Host for HostState {}

        /// The allocator world's only capability: the same log and panic channel as a metric's.
        impl $v::logging::Host for HostState {
            fn log(&mut self, level: $v::types::LogLevel, message: String) -> wasmtime::Result<()> {
                self.push_log(level.into(), message);
                Ok(())
            }

            fn report_panic(&mut self, message: String) -> wasmtime::Result<()> {
                self.record_panic(message);
                Ok(())
            }
        }
    };
}

impl_version!(v0_1_1 {});

impl_version!(v0_2_0 {
    fn hessian_inverse_diagonal(
        &mut self,
    ) -> wasmtime::Result<Result<Vec<f32>, v0_2_0::types::Error>> {
        Ok(HostState::hessian_inverse_diagonal(self).map_err(Into::into))
    }

    fn output_stats(&mut self) -> wasmtime::Result<Result<v0_2_0::types::RowStats, v0_2_0::types::Error>> {
        Ok(HostState::output_stats(self)
            .map(|r| v0_2_0::types::RowStats {
                tokens: r.tokens,
                l2_norm: r.l2_norm,
                mean: r.mean,
                variance: r.variance,
            })
            .map_err(Into::into))
    }
});
#[cfg(test)]
mod tests {
    //! The WIT boundary as a guest sees it: arbitrary sequences of host calls with arbitrary
    //! arguments (rows out of range, wrong lengths, NaN and infinity, rows written twice).

    use super::*;
    use crate::layer::{ChannelStats, LayerId, LayerKind};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Call {
        Read {
            r0: u32,
            n: u32,
            gradient: bool,
        },
        Write {
            r0: u32,
            len: u32,
            poison: Option<(usize, f32)>,
        },
        Stats,
    }

    fn call() -> impl Strategy<Value = Call> {
        let small = prop_oneof![0u32..24, Just(u32::MAX), Just(u32::MAX / 2)];
        let poison = prop::option::of((
            any::<usize>(),
            prop_oneof![
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::NEG_INFINITY),
                Just(1.5f32)
            ],
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
                hessian_inverse_diagonal: None,
                output_stats: None,
                sparsity: 0.5,
            };
            let mut state = HostState::new(
                &Policy::default(),
                Allowed { gradient: gradient_allowed, ..Allowed::default() },
            );
            state.attach(&layer, tile_rows);
            let mut written = vec![false; rows];
            let mut expected = vec![0f32; rows * cols];
            let mut first_violation = false;
            for c in calls {
                match c {
                    Call::Read { r0, n, gradient } => {
                        let got = if gradient {
                            v0_2_0::host::Host::read_gradient(&mut state, r0, n).unwrap()
                        } else {
                            v0_2_0::host::Host::read_weights(&mut state, r0, n).unwrap()
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
                        let res = v0_2_0::host::Host::write_scores(&mut state, r0, scores.clone()).unwrap();
                        prop_assert_eq!(res.is_ok(), accept);
                        if accept {
                            written[r..r + n].fill(true);
                            expected[r * cols..(r + n) * cols].copy_from_slice(&scores);
                        } else {
                            first_violation = true;
                        }
                    }
                    Call::Stats => {
                        let s = v0_2_0::host::Host::activation_stats(&mut state).unwrap();
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
