//! Native testing: run a [`Metric`] on an in-memory layer, checked the way the host checks it.
//!
//! Only on non-wasm32 targets. The candidate's source is the same; `export_metric!` exports
//! nothing here.
//!
//! ```
//! use autoprune_sdk::prelude::*;
//! use autoprune_sdk::testing::{run, TestLayer};
//!
//! struct Magnitude;
//! impl Metric for Magnitude {
//!     fn info() -> Info { Info::new("magnitude", "1.0.0", "|W_ij|") }
//!     fn score(layer: &Layer) -> Result<()> {
//!         layer.score_rows(|row, out| for (o, w) in out.iter_mut().zip(row.weights) { *o = w.abs() })
//!     }
//! }
//!
//! let layer = TestLayer::new(2, 2, vec![1.0, -2.0, -3.0, 0.5]).with_tile_rows(1);
//! assert_eq!(run::<Magnitude>(&layer).unwrap(), [1.0, 2.0, 3.0, 0.5]);
//! ```

use std::cell::RefCell;

use crate::{
    ChannelStats, Error, Info, Input, Layer, LayerInfo, LayerKind, Level, Metric, Result, RowStats,
};

/// An in-memory layer: weights, statistics, the optional inputs, and the tile size.
#[derive(Debug, Clone, PartialEq)]
pub struct TestLayer {
    /// Identity and shape; `tile_rows` defaults to all rows, `kind` to `Other`.
    pub info: LayerInfo,
    /// `rows * cols` signed weights, row-major.
    pub weights: Vec<f32>,
    /// Activation statistics; by default every `l2_norm` is 1 and the rest 0.
    pub stats: ChannelStats,
    /// The gradient statistic, row-major; served only to metrics that ask for it.
    pub gradient: Option<Vec<f32>>,
    /// `[(H + λI)⁻¹]_jj` per input channel; served only to metrics that ask for it.
    pub hessian_inverse_diagonal: Option<Vec<f32>>,
    /// Output statistics per row; served only to metrics that ask for them.
    pub output_stats: Option<RowStats>,
}

impl TestLayer {
    /// A `rows × cols` layer with the given row-major weights.
    ///
    /// # Panics
    ///
    /// When `weights` does not hold `rows * cols` values.
    pub fn new(rows: u32, cols: u32, weights: Vec<f32>) -> Self {
        assert_eq!(
            weights.len(),
            rows as usize * cols as usize,
            "weights must be rows * cols"
        );
        let c = cols as usize;
        TestLayer {
            info: LayerInfo {
                block: 0,
                num_blocks: 1,
                kind: LayerKind::Other,
                rows,
                cols,
                tile_rows: rows.max(1),
                sparsity: 0.5,
            },
            weights,
            stats: ChannelStats {
                tokens: 0,
                l2_norm: vec![1.0; c],
                sum: vec![0.0; c],
                mean: vec![0.0; c],
                variance: vec![0.0; c],
                max_abs: vec![0.0; c],
            },
            gradient: None,
            hessian_inverse_diagonal: None,
            output_stats: None,
        }
    }

    /// Set the `||X_j||₂` of every input channel.
    ///
    /// # Panics
    ///
    /// When `l2_norm` does not hold `cols` values.
    pub fn with_l2_norm(mut self, l2_norm: Vec<f32>) -> Self {
        assert_eq!(
            l2_norm.len(),
            self.info.cols as usize,
            "l2_norm must have cols values"
        );
        self.stats.l2_norm = l2_norm;
        self
    }

    /// Set all channel statistics.
    ///
    /// # Panics
    ///
    /// When a list does not hold `cols` values.
    pub fn with_stats(mut self, stats: ChannelStats) -> Self {
        let c = self.info.cols as usize;
        for list in [
            &stats.l2_norm,
            &stats.sum,
            &stats.mean,
            &stats.variance,
            &stats.max_abs,
        ] {
            assert_eq!(list.len(), c, "every statistic must have cols values");
        }
        self.stats = stats;
        self
    }

    /// Set the gradient statistic (`rows * cols` values, row-major).
    ///
    /// # Panics
    ///
    /// When `gradient` does not hold `rows * cols` values.
    pub fn with_gradient(mut self, gradient: Vec<f32>) -> Self {
        assert_eq!(
            gradient.len(),
            self.weights.len(),
            "gradient must be rows * cols"
        );
        self.gradient = Some(gradient);
        self
    }

    /// Set the diagonal of the damped inverse input Hessian (`cols` values).
    ///
    /// # Panics
    ///
    /// When `values` does not hold `cols` values.
    pub fn with_hessian_inverse_diagonal(mut self, values: Vec<f32>) -> Self {
        assert_eq!(
            values.len(),
            self.info.cols as usize,
            "hessian_inverse_diagonal must have cols values"
        );
        self.hessian_inverse_diagonal = Some(values);
        self
    }

    /// Set the output statistics (`rows` values per list).
    ///
    /// # Panics
    ///
    /// When a list does not hold `rows` values.
    pub fn with_output_stats(mut self, stats: RowStats) -> Self {
        let r = self.info.rows as usize;
        for list in [&stats.l2_norm, &stats.mean, &stats.variance] {
            assert_eq!(
                list.len(),
                r,
                "every output statistic must have rows values"
            );
        }
        self.output_stats = Some(stats);
        self
    }

    /// Move at most `tile_rows` rows per tile (as a host does for big layers).
    pub fn with_tile_rows(mut self, tile_rows: u32) -> Self {
        self.info.tile_rows = tile_rows;
        self
    }
}

/// Run metric `M` on `layer` and return its scores (row-major), or the metric's error, or an
/// error for output the host would reject (`Error::Failed("invalid output: ...")`: a bad
/// write, a non-finite score, a row written twice or never).
pub fn run<M: Metric>(layer: &TestLayer) -> Result<Vec<f32>> {
    let info = M::info();
    let gradient = info.wants_gradient();
    let backend = Backend {
        layer: layer.clone(),
        info,
        out: RefCell::new(Output {
            scores: vec![0.0; layer.weights.len()],
            written: vec![false; layer.info.rows as usize],
            violation: None,
        }),
    };
    let l = Layer::new(layer.info, gradient, backend);
    let result = M::score(&l);
    let out = l.into_backend().out.into_inner();
    if let Some(v) = out.violation {
        return Err(Error::failed(format!("invalid output: {v}")));
    }
    result?;
    let missing = out.written.iter().filter(|w| !**w).count();
    if let Some(first) = out.written.iter().position(|w| !*w) {
        return Err(Error::failed(format!(
            "invalid output: {missing} of {} rows were never written (first: row {first})",
            out.written.len()
        )));
    }
    Ok(out.scores)
}

/// Scores written so far and the first contract violation.
struct Output {
    scores: Vec<f32>,
    written: Vec<bool>,
    violation: Option<String>,
}

/// The in-memory layer behind a native [`Layer`], checking calls as the host does.
pub(crate) struct Backend {
    layer: TestLayer,
    info: Info,
    out: RefCell<Output>,
}

impl Backend {
    pub(crate) fn stats(&self) -> ChannelStats {
        self.layer.stats.clone()
    }

    pub(crate) fn read_weights(&self, row_start: u32, rows: u32) -> Result<Vec<f32>> {
        self.read(&self.layer.weights, row_start, rows)
    }

    pub(crate) fn read_gradient(&self, row_start: u32, rows: u32) -> Result<Vec<f32>> {
        if !self.info.needs.contains(&Input::Gradient) {
            return Err(Error::unsupported(
                "read-gradient needs `gradient` in metric-info.needs",
            ));
        }
        let gradient = self.layer.gradient.as_ref().ok_or_else(|| {
            Error::unsupported("no gradient statistic for this layer (TestLayer::with_gradient)")
        })?;
        self.read(gradient, row_start, rows)
    }

    pub(crate) fn hessian_inverse_diagonal(&self) -> Result<Vec<f32>> {
        if !self.info.needs.contains(&Input::HessianInverseDiagonal) {
            return Err(Error::unsupported(
                "hessian-inverse-diagonal needs `hessian-inverse-diagonal` in metric-info.needs \
                 (add `.needs_hessian_inverse_diagonal()` to the metric's Info)",
            ));
        }
        self.layer.hessian_inverse_diagonal.clone().ok_or_else(|| {
            Error::unsupported(
                "no Hessian inverse diagonal for this layer (TestLayer::with_hessian_inverse_diagonal)",
            )
        })
    }

    pub(crate) fn output_stats(&self) -> Result<RowStats> {
        if !self.info.needs.contains(&Input::OutputStats) {
            return Err(Error::unsupported(
                "output-stats needs `output-stats` in metric-info.needs \
                 (add `.needs_output_stats()` to the metric's Info)",
            ));
        }
        self.layer.output_stats.clone().ok_or_else(|| {
            Error::unsupported("no output statistics for this layer (TestLayer::with_output_stats)")
        })
    }

    fn read(&self, all: &[f32], row_start: u32, rows: u32) -> Result<Vec<f32>> {
        let LayerInfo {
            rows: total,
            cols,
            tile_rows,
            ..
        } = self.layer.info;
        if rows == 0 || rows > tile_rows || row_start >= total || rows > total - row_start {
            return Err(Error::invalid_input(format!(
                "rows [{row_start}, {}) are outside the layer ({total} rows) or exceed tile-rows {tile_rows}",
                row_start as u64 + rows as u64
            )));
        }
        let (r0, n, c) = (row_start as usize, rows as usize, cols as usize);
        Ok(all[r0 * c..(r0 + n) * c].to_vec())
    }

    pub(crate) fn write_scores(&self, row_start: u32, scores: &[f32]) -> Result<()> {
        let LayerInfo {
            rows,
            cols,
            tile_rows,
            ..
        } = self.layer.info;
        let (r0, c) = (row_start as usize, cols as usize);
        let n = scores.len() / c.max(1);
        let mut out = self.out.borrow_mut();
        let violation = if scores.is_empty()
            || !scores.len().is_multiple_of(c)
            || n > tile_rows as usize
            || r0 >= rows as usize
            || n > rows as usize - r0
        {
            Some(format!(
                "write-scores at row {row_start} got {} values; expected a multiple of {cols} \
                 covering at most {tile_rows} rows inside the layer",
                scores.len()
            ))
        } else if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            Some(format!(
                "non-finite score {} at row {}, column {}",
                scores[i],
                r0 + i / c,
                i % c
            ))
        } else {
            out.written[r0..r0 + n]
                .iter()
                .position(|w| *w)
                .map(|k| format!("row {} was written twice", r0 + k))
        };
        if let Some(v) = violation {
            out.violation.get_or_insert(v.clone());
            return Err(Error::invalid_input(v));
        }
        out.written[r0..r0 + n].fill(true);
        out.scores[r0 * c..(r0 + n) * c].copy_from_slice(scores);
        Ok(())
    }
}

pub(crate) fn log(level: Level, message: &str) {
    eprintln!("[{level:?}] {message}");
}

/// Run an [`Allocator`](crate::Allocator) natively on `req` and check its answer the way the
/// host does ([`check_allocation`](crate::check_allocation)).
///
/// ```
/// use autoprune_sdk::prelude::*;
/// use autoprune_sdk::testing::{run_allocator, unit};
///
/// struct Uniform;
/// impl Allocator for Uniform {
///     fn describe() -> AllocatorInfo { AllocatorInfo::new("uniform", "1.0.0", "the target everywhere") }
///     fn allocate(req: &Request) -> Result<Vec<f64>> { Ok(vec![req.target; req.units.len()]) }
/// }
///
/// let req = Request::new(0.6, vec![unit(0, 10, 0.01), unit(1, 30, 0.02)]);
/// assert_eq!(run_allocator::<Uniform>(&req).unwrap(), [0.6, 0.6]);
/// ```
pub fn run_allocator<A: crate::Allocator>(req: &crate::Request) -> Result<Vec<f64>> {
    let s = A::allocate(req)?;
    crate::check_allocation(req, &s)?;
    Ok(s)
}

/// A block unit of `params` weights whose Wanda scores have outlier ratio `wanda_ratio5` at
/// `m = 5` (and the same ratio at every other multiple); the other summaries are plain
/// (mean 1, variance 1, no skew).
pub fn unit(block: u32, params: u64, wanda_ratio5: f64) -> crate::UnitSummary {
    let plain = crate::Distribution {
        count: params,
        mean: 1.0,
        variance: 1.0,
        skewness: 0.0,
        kurtosis: 0.0,
        max: 10.0,
        outlier_ratios: vec![0.0; 4],
    };
    let wanda = crate::Distribution {
        outlier_ratios: vec![wanda_ratio5; 4],
        ..plain.clone()
    };
    crate::UnitSummary {
        block,
        kind: None,
        rows: 0,
        cols: 0,
        params,
        weights: plain.clone(),
        wanda,
        scores: plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Row;

    /// A metric whose scoring rule is a plain function, to provoke each host check.
    struct Rule<const R: u8>;
    impl<const R: u8> Metric for Rule<R> {
        fn info() -> Info {
            Info::new("rule", "0", "test")
        }
        fn score(layer: &Layer) -> Result<()> {
            let copy = |row: Row<'_>, out: &mut [f32]| out.copy_from_slice(row.weights);
            match R {
                0 => layer.score_rows(|_, out| out.fill(f32::NAN)),
                1 => Ok(()),
                2 => layer.score_rows(copy).and_then(|()| layer.score_rows(copy)),
                3 => layer.score_rows(|_, _| layer.score_rows(|_, _| ()).unwrap()),
                _ => layer.score_rows(|row, out| out.copy_from_slice(row.gradient())),
            }
        }
    }

    fn layer() -> TestLayer {
        TestLayer::new(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).with_tile_rows(2)
    }

    #[test]
    fn non_finite_scores_are_invalid_output() {
        let err = run::<Rule<0>>(&layer()).unwrap_err();
        assert_eq!(
            err,
            Error::failed("invalid output: non-finite score NaN at row 0, column 0")
        );
    }

    #[test]
    fn missing_rows_are_invalid_output() {
        let err = run::<Rule<1>>(&layer()).unwrap_err();
        assert_eq!(
            err,
            Error::failed("invalid output: 3 of 3 rows were never written (first: row 0)")
        );
    }

    #[test]
    fn rows_written_twice_are_invalid_output() {
        let err = run::<Rule<2>>(&layer()).unwrap_err();
        assert_eq!(
            err,
            Error::failed("invalid output: row 0 was written twice")
        );
    }

    #[test]
    #[should_panic(expected = "score_rows cannot be called inside score_rows")]
    fn nested_score_rows_is_refused() {
        let _ = run::<Rule<3>>(&layer());
    }

    #[test]
    #[should_panic(expected = "add `.needs_gradient()`")]
    fn undeclared_gradient_panics_with_a_hint() {
        let _ = run::<Rule<4>>(&layer().with_gradient(vec![0.0; 6]));
    }

    /// Scores every weight of row `i` with `O_i + H_j` when `DECLARE`, reading both inputs.
    struct Extras<const DECLARE: bool>;
    impl<const DECLARE: bool> Metric for Extras<DECLARE> {
        fn info() -> Info {
            let i = Info::new("extras", "0", "O_i + H_j");
            if DECLARE {
                i.needs_hessian_inverse_diagonal().needs_output_stats()
            } else {
                i
            }
        }
        fn score(layer: &Layer) -> Result<()> {
            let h = layer.hessian_inverse_diagonal()?;
            let o = &layer.output_stats()?.l2_norm;
            layer.score_rows(|row, out| {
                for (x, h) in out.iter_mut().zip(h) {
                    *x = o[row.index as usize] + h;
                }
            })
        }
    }

    #[test]
    fn declared_hessian_inputs_are_served_and_undeclared_ones_refused() {
        let rows = RowStats {
            tokens: 4,
            l2_norm: vec![10.0, 20.0, 30.0],
            mean: vec![0.0; 3],
            variance: vec![1.0; 3],
        };
        let full = layer()
            .with_hessian_inverse_diagonal(vec![0.5, 2.0])
            .with_output_stats(rows);
        assert_eq!(
            run::<Extras<true>>(&full).unwrap(),
            [10.5, 12.0, 20.5, 22.0, 30.5, 32.0]
        );
        match run::<Extras<false>>(&full).unwrap_err() {
            Error::Unsupported(m) => assert!(m.contains("needs_hessian_inverse_diagonal"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Declared, but the test layer has none: unsupported too (as a host without them).
        assert!(matches!(
            run::<Extras<true>>(&layer()),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn tiles_cover_the_layer_in_order() {
        struct Tiles;
        impl Metric for Tiles {
            fn info() -> Info {
                Info::new("tiles", "0", "row index")
            }
            fn score(layer: &Layer) -> Result<()> {
                let mut seen = Vec::new();
                layer.for_each_tile(|t| seen.push((t.row_start, t.num_rows())))?;
                // 3 rows in tiles of 2: rows 0-1, then row 2.
                assert_eq!(seen, [(0, 2), (2, 1)]);
                layer.score_rows(|row, out| out.fill(row.index as f32))
            }
        }
        assert_eq!(
            run::<Tiles>(&layer()).unwrap(),
            [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
        );
    }
}
