//! The wasm32 side: the generated bindings' glue, the host backend, the export wrapper and the
//! panic hook. Nothing here is visible to a metric author.

use std::marker::PhantomData;
use std::sync::Once;

use crate::bindings::autoprune::metric::{host, types};
use crate::{ChannelStats, Error, Info, Input, Layer, LayerInfo, LayerKind, Level, Metric, Result};

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

    pub(crate) fn write_scores(&self, row_start: u32, scores: &[f32]) -> Result<()> {
        host::write_scores(row_start, scores).map_err(Error::from)
    }
}

pub(crate) fn log(level: Level, message: &str) {
    let level = match level {
        Level::Debug => types::LogLevel::Debug,
        Level::Info => types::LogLevel::Info,
        Level::Warn => types::LogLevel::Warn,
        Level::Error => types::LogLevel::Error,
    };
    host::log(level, message);
}

/// Longest panic message sent to the host; it keeps 4 KiB, so more would be copied for nothing.
const MAX_PANIC_BYTES: usize = 4096;

/// Forward every panic's message (with its location) to the host before the guest traps: on
/// wasm32-unknown-unknown the panic itself is a bare `unreachable` trap.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let mut message = info.to_string();
            if message.len() > MAX_PANIC_BYTES {
                let mut cut = MAX_PANIC_BYTES;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
            }
            host::report_panic(&message);
        }));
    });
}

/// Implements the generated world trait for a [`Metric`]; [`export_metric!`](crate::export_metric)
/// exports `Exporter<YourMetric>`.
#[doc(hidden)]
pub struct Exporter<M>(PhantomData<fn() -> M>);

impl<M: Metric> crate::bindings::Guest for Exporter<M> {
    fn describe() -> types::MetricInfo {
        install_panic_hook();
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
        install_panic_hook();
        let layer = Layer::new(layer.into(), M::info().wants_gradient(), Backend);
        M::score(&layer).map_err(Into::into)
    }
}

impl From<types::LayerInfo> for LayerInfo {
    fn from(l: types::LayerInfo) -> Self {
        let kind = match l.kind {
            types::LayerKind::Q => LayerKind::Q,
            types::LayerKind::K => LayerKind::K,
            types::LayerKind::V => LayerKind::V,
            types::LayerKind::O => LayerKind::O,
            types::LayerKind::Gate => LayerKind::Gate,
            types::LayerKind::Up => LayerKind::Up,
            types::LayerKind::Down => LayerKind::Down,
            types::LayerKind::Other => LayerKind::Other,
        };
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
