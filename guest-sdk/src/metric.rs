//! The [`Metric`] trait a plugin implements, and how it describes itself.

use crate::{Layer, Result};

/// A pruning metric: scores every weight of one linear layer; higher scores are kept.
///
/// Both functions are associated functions (no `self`): a metric is a rule, not an object.
/// Export the implementation with [`export_metric!`](crate::export_metric).
pub trait Metric {
    /// Name, version and one-line description; list optional inputs with
    /// [`Info::needs_gradient`].
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
    pub fn needs_gradient(mut self) -> Self {
        if !self.needs.contains(&Input::Gradient) {
            self.needs.push(Input::Gradient);
        }
        self
    }

    pub(crate) fn wants_gradient(&self) -> bool {
        self.needs.contains(&Input::Gradient)
    }
}
