//! An allocation as a run reports it: the rule, one row of statistics and sparsity per unit,
//! and the per-linear sparsities the pipeline applies.

use super::{expand, Granularity, UnitSummary};
use serde::Serialize;

/// One unit of an allocation, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct UnitRow {
    /// Block.
    pub block: u32,
    /// Linear (absent for block units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Weights.
    pub params: u64,
    /// Allocated sparsity.
    pub sparsity: f64,
    /// Skewness of the metric's scores.
    pub score_skewness: f64,
    /// Excess kurtosis of the metric's scores.
    pub score_kurtosis: f64,
    /// Skewness of |W|.
    pub weight_skewness: f64,
    /// Skewness of the Wanda scores.
    pub wanda_skewness: f64,
    /// Share of Wanda scores above 5× their mean (OWL's statistic).
    pub wanda_outlier_ratio_5: f64,
}

/// The allocation of one run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// Rule and its parameters (or the plugin).
    pub rule: serde_json::Value,
    /// Granularity.
    pub granularity: Granularity,
    /// Per-unit results.
    pub units: Vec<UnitRow>,
    /// Seconds of the dense statistics pass.
    pub stats_seconds: f64,
    /// Per-linear sparsities in model order (for the pipeline).
    #[serde(skip)]
    pub layer_sparsity: Vec<f64>,
}

impl Planned {
    /// Turn unit sparsities `s` into the reported plan.
    pub fn new(
        rule: serde_json::Value,
        granularity: Granularity,
        units: &[UnitSummary],
        s: &[f64],
        num_blocks: usize,
        stats_seconds: f64,
    ) -> Planned {
        Planned {
            rule,
            granularity,
            units: units
                .iter()
                .zip(s)
                .map(|(u, &sparsity)| UnitRow {
                    block: u.block,
                    kind: u.kind.map(|k| k.name()),
                    params: u.params,
                    sparsity,
                    score_skewness: u.scores.skewness,
                    score_kurtosis: u.scores.kurtosis,
                    weight_skewness: u.weights.skewness,
                    wanda_skewness: u.wanda.skewness,
                    wanda_outlier_ratio_5: u.wanda.outlier_ratio(5.0).unwrap_or(f64::NAN),
                })
                .collect(),
            stats_seconds,
            layer_sparsity: expand(units, s, num_blocks),
        }
    }

    /// The plan as a table: one line per unit.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::from(
            "block  kind      params  sparsity  skew(scores)  kurt(scores)  skew(wanda)  skew(|W|)  outl5(wanda)",
        );
        for u in &self.units {
            let _ = write!(
                s,
                "\n{:>5}  {:<5} {:>10}  {:>8.4}  {:>12.3}  {:>12.2}  {:>11.3}  {:>9.3}  {:>12.5}",
                u.block,
                u.kind.unwrap_or("-"),
                u.params,
                u.sparsity,
                u.score_skewness,
                u.score_kurtosis,
                u.wanda_skewness,
                u.weight_skewness,
                u.wanda_outlier_ratio_5
            );
        }
        s
    }

    /// The per-unit sparsities on one line, three decimals each.
    pub fn unit_line(&self) -> String {
        self.units
            .iter()
            .map(|u| format!("{:.3}", u.sparsity))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
