//! The [`Metric`] trait a plugin implements, and how it describes itself.

use crate::{Layer, Result};

/// A pruning metric: scores every weight of one linear layer; higher scores are kept.
///
/// Both functions are associated functions (no `self`): a metric is a rule, not an object.
/// Export the implementation with [`export_metric!`](crate::export_metric).
pub trait Metric {
    /// Name, version and one-line description; list optional inputs with
    /// [`Info::needs_gradient`], [`Info::needs_hessian_inverse_diagonal`] and
    /// [`Info::needs_output_stats`].
    fn info() -> Info;

    /// Score `layer`: write every row's scores exactly once, usually with one
    /// [`Layer::score_rows`] call (after [`Layer::for_each_tile`] passes for whole-layer sums).
    fn score(layer: &Layer) -> Result<()>;
}

/// Inputs the host computes only on request, because they cost extra work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// Per-weight gradient magnitude `sqrt(Σ_windows (100·∂L/∂W_ij)²)`; costs a backward pass.
    Gradient,
    /// `[(H + λI)⁻¹]_jj` per input channel ([`Layer::hessian_inverse_diagonal`](crate::Layer::hessian_inverse_diagonal));
    /// costs the input Hessian and its inverse.
    HessianInverseDiagonal,
    /// Statistics of the dense layer output per row ([`Layer::output_stats`](crate::Layer::output_stats));
    /// costs the input Hessian and one product per layer.
    OutputStats,
}

/// How a metric describes itself to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Short name, e.g. `"wanda"`.
    pub name: String,
    /// Version of the metric, free-form, e.g. `"1.0.0"`.
    pub version: String,
    /// One-line description of the rule.
    pub description: String,
    /// Optional inputs the metric reads.
    pub needs: Vec<Input>,
}

impl Info {
    /// A metric that needs no optional input.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Info {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            needs: Vec::new(),
        }
    }

    /// Ask the host for the gradient statistic ([`Row::gradient`](crate::Row::gradient)).
    pub fn needs_gradient(self) -> Self {
        self.needs(Input::Gradient)
    }

    /// Ask the host for the diagonal of the damped inverse input Hessian
    /// ([`Layer::hessian_inverse_diagonal`](crate::Layer::hessian_inverse_diagonal)).
    pub fn needs_hessian_inverse_diagonal(self) -> Self {
        self.needs(Input::HessianInverseDiagonal)
    }

    /// Ask the host for the statistics of the dense layer output per row
    /// ([`Layer::output_stats`](crate::Layer::output_stats)).
    pub fn needs_output_stats(self) -> Self {
        self.needs(Input::OutputStats)
    }

    /// Ask the host for `input` (once, however often it is asked).
    pub fn needs(mut self, input: Input) -> Self {
        if !self.needs.contains(&input) {
            self.needs.push(input);
        }
        self
    }

    pub(crate) fn wants_gradient(&self) -> bool {
        self.needs.contains(&Input::Gradient)
    }
}
