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
    /// The memory cap in bytes (for verdicts).
    pub(crate) fn limiter_cap(&self) -> u64 {
        self.memory_cap
    }
}
