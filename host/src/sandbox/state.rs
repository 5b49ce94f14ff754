//! The host side of the WIT `host` interface: the per-evaluation store data.
//!
//! One set of inherent methods serves every published version of the package; the traits of
//! each version's bindings ([`v0_1_1`], [`v0_2_0`]) convert their own types around them.

use super::bindings::{v0_1_1, v0_2_0};
use super::verdict::InvalidOutput;
use crate::layer::{LayerData, RowStats};
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
    pub(crate) fn new(policy: &super::Policy, allowed: Allowed) -> Self {
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
