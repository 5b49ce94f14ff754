//! The wasm32 side: the generated bindings' glue, the host backend, the export wrapper and the
//! panic hook. Nothing here is visible to a metric author.

use std::marker::PhantomData;
use std::sync::{Once, OnceLock};

use crate::allocator_bindings::autoprune::metric::{allocation, logging};
use crate::bindings::autoprune::metric::{host, types};
use crate::{
    Allocator, AllocatorInfo, ChannelStats, Distribution, Error, Info, Input, Layer, LayerInfo,
    LayerKind, Level, Metric, Request, Result, RowStats, UnitSummary,
};

/// The layer as the host serves it through `autoprune:metric/host`.
pub(crate) struct Backend;

impl Backend {
    pub(crate) fn stats(&self) -> ChannelStats {
        let s = host::activation_stats();
        ChannelStats {
            tokens: s.tokens,
            l2_norm: s.l2_norm,
            sum: s.sum,
            mean: s.mean,
            variance: s.variance,
            max_abs: s.max_abs,
        }
    }

    pub(crate) fn read_weights(&self, row_start: u32, rows: u32) -> Result<Vec<f32>> {
        host::read_weights(row_start, rows).map_err(Error::from)
    }

    pub(crate) fn read_gradient(&self, row_start: u32, rows: u32) -> Result<Vec<f32>> {
        host::read_gradient(row_start, rows).map_err(Error::from)
    }

    pub(crate) fn hessian_inverse_diagonal(&self) -> Result<Vec<f32>> {
        host::hessian_inverse_diagonal().map_err(Error::from)
    }

    pub(crate) fn output_stats(&self) -> Result<RowStats> {
        let s = host::output_stats().map_err(Error::from)?;
        Ok(RowStats {
            tokens: s.tokens,
            l2_norm: s.l2_norm,
            mean: s.mean,
            variance: s.variance,
        })
    }

    pub(crate) fn write_scores(&self, row_start: u32, scores: &[f32]) -> Result<()> {
        host::write_scores(row_start, scores).map_err(Error::from)
    }
}

/// The log and panic channel of the world this component exports. Set by the export wrapper
/// before any candidate code runs, so a metric references only `host` and an allocator only
/// `logging` (the other world's imports are never linked in).
struct Channel {
    log: fn(types::LogLevel, &str),
    report_panic: fn(&str),
}

static CHANNEL: OnceLock<Channel> = OnceLock::new();

fn wit_level(level: Level) -> types::LogLevel {
    match level {
        Level::Debug => types::LogLevel::Debug,
        Level::Info => types::LogLevel::Info,
        Level::Warn => types::LogLevel::Warn,
        Level::Error => types::LogLevel::Error,
    }
}

pub(crate) fn log(level: Level, message: &str) {
    if let Some(c) = CHANNEL.get() {
        (c.log)(wit_level(level), message);
    }
}

/// Longest panic message sent to the host; it keeps 4 KiB, so more would be copied for nothing.
const MAX_PANIC_BYTES: usize = 4096;

/// Use `channel` for logs and panics, and forward every panic's message (with its location)
/// to the host before the guest traps: on wasm32-unknown-unknown the panic itself is a bare
/// `unreachable` trap.
fn install(channel: fn() -> Channel) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let _ = CHANNEL.set(channel());
        std::panic::set_hook(Box::new(|info| {
            let mut message = info.to_string();
            if message.len() > MAX_PANIC_BYTES {
                let mut cut = MAX_PANIC_BYTES;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
            }
            if let Some(c) = CHANNEL.get() {
                (c.report_panic)(&message);
            }
        }));
    });
}

fn metric_channel() -> Channel {
    Channel {
        log: host::log,
        report_panic: host::report_panic,
    }
}

fn allocator_channel() -> Channel {
    Channel {
        log: logging::log,
        report_panic: logging::report_panic,
    }
}

/// Implements the generated world trait for a [`Metric`]; [`export_metric!`](crate::export_metric)
/// exports `Exporter<YourMetric>`.
#[doc(hidden)]
pub struct Exporter<M>(PhantomData<fn() -> M>);

impl<M: Metric> crate::bindings::Guest for Exporter<M> {
    fn describe() -> types::MetricInfo {
        install(metric_channel);
        let Info {
            name,
            version,
            description,
            needs,
        } = M::info();
        let needs = needs
            .into_iter()
            .map(|n| match n {
                Input::Gradient => types::OptionalInput::Gradient,
                Input::HessianInverseDiagonal => types::OptionalInput::HessianInverseDiagonal,
                Input::OutputStats => types::OptionalInput::OutputStats,
            })
            .collect();
        types::MetricInfo {
            name,
            version,
            description,
            needs,
        }
    }

    fn score(layer: types::LayerInfo) -> core::result::Result<(), types::Error> {
        install(metric_channel);
        let layer = Layer::new(layer.into(), M::info().wants_gradient(), Backend);
        M::score(&layer).map_err(Into::into)
    }
}

impl From<types::LayerInfo> for LayerInfo {
    fn from(l: types::LayerInfo) -> Self {
        let kind = layer_kind(l.kind);
        LayerInfo {
            block: l.block,
            num_blocks: l.num_blocks,
            kind,
            rows: l.rows,
            cols: l.cols,
            tile_rows: l.tile_rows,
            sparsity: l.sparsity,
        }
    }
}

fn layer_kind(k: types::LayerKind) -> LayerKind {
    match k {
        types::LayerKind::Q => LayerKind::Q,
        types::LayerKind::K => LayerKind::K,
        types::LayerKind::V => LayerKind::V,
        types::LayerKind::O => LayerKind::O,
        types::LayerKind::Gate => LayerKind::Gate,
        types::LayerKind::Up => LayerKind::Up,
        types::LayerKind::Down => LayerKind::Down,
        types::LayerKind::Other => LayerKind::Other,
    }
}

impl From<types::Error> for Error {
    fn from(e: types::Error) -> Self {
        match e {
            types::Error::Unsupported(m) => Error::Unsupported(m),
            types::Error::InvalidInput(m) => Error::InvalidInput(m),
            types::Error::Failed(m) => Error::Failed(m),
        }
    }
}

impl From<Error> for types::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Unsupported(m) => types::Error::Unsupported(m),
            Error::InvalidInput(m) => types::Error::InvalidInput(m),
            Error::Failed(m) => types::Error::Failed(m),
        }
    }
}

/// Implements the generated allocator world trait for an [`Allocator`];
/// [`export_allocator!`](crate::export_allocator) exports `AllocatorExporter<YourAllocator>`.
#[doc(hidden)]
pub struct AllocatorExporter<A>(PhantomData<fn() -> A>);

impl<A: Allocator> crate::allocator_bindings::Guest for AllocatorExporter<A> {
    fn describe() -> allocation::AllocatorInfo {
        install(allocator_channel);
        let AllocatorInfo {
            name,
            version,
            description,
        } = A::describe();
        allocation::AllocatorInfo {
            name,
            version,
            description,
        }
    }

    fn allocate(
        req: allocation::AllocationRequest,
    ) -> core::result::Result<Vec<f64>, types::Error> {
        install(allocator_channel);
        A::allocate(&req.into()).map_err(Into::into)
    }
}

impl From<allocation::Distribution> for Distribution {
    fn from(d: allocation::Distribution) -> Self {
        Distribution {
            count: d.count,
            mean: d.mean,
            variance: d.variance,
            skewness: d.skewness,
            kurtosis: d.kurtosis,
            max: d.max,
            outlier_ratios: d.outlier_ratios,
        }
    }
}

impl From<allocation::AllocationRequest> for Request {
    fn from(r: allocation::AllocationRequest) -> Self {
        Request {
            target: r.target,
            min_sparsity: r.min_sparsity,
            max_sparsity: r.max_sparsity,
            outlier_multiples: r.outlier_multiples,
            units: r
                .units
                .into_iter()
                .map(|u| UnitSummary {
                    block: u.block,
                    kind: u.kind.map(layer_kind),
                    rows: u.rows,
                    cols: u.cols,
                    params: u.params,
                    weights: u.weights.into(),
                    wanda: u.wanda.into(),
                    scores: u.scores.into(),
                })
                .collect(),
        }
    }
}
