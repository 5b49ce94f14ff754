//! The layer being scored: its identity, its input statistics, and tile-by-tile access to its
//! weights (read) and scores (write).

use std::cell::{OnceCell, RefCell};

use crate::sys::Backend;
use crate::{Error, Result};

/// The role of a linear layer inside a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection (SwiGLU).
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
    /// Any other linear layer.
    Other,
}

/// Identity and shape of the layer being scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerInfo {
    /// Zero-based index of the transformer block that holds the layer.
    pub block: u32,
    /// Number of transformer blocks in the model.
    pub num_blocks: u32,
    /// The layer's role inside its block.
    pub kind: LayerKind,
    /// Output features: rows of the weight matrix `W[rows, cols]`.
    pub rows: u32,
    /// Input features: columns of `W`, and the length of every list in [`ChannelStats`].
    pub cols: u32,
    /// The most rows the host moves in one tile.
    pub tile_rows: u32,
    /// The sparsity the host will apply to this layer (information only: the host builds the mask).
    pub sparsity: f32,
}

/// Statistics of each input channel `j` over the calibration tokens; every list has `cols`
/// entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelStats {
    /// Number of calibration tokens the statistics were taken over.
    pub tokens: u64,
    /// `sqrt(Σ_tokens x_j²)`: the `||X_j||₂` of Wanda.
    pub l2_norm: Vec<f32>,
    /// `Σ_tokens x_j`.
    pub sum: Vec<f32>,
    /// `sum / tokens`.
    pub mean: Vec<f32>,
    /// Population variance of `x_j` over tokens.
    pub variance: Vec<f32>,
    /// `max_tokens |x_j|`.
    pub max_abs: Vec<f32>,
}

/// Statistics of each output row `i` (output feature `y_i = w_i · x`) of the *dense* layer over
/// the calibration tokens; every list has `rows` entries. Ask for them with
/// [`Info::needs_output_stats`](crate::Info::needs_output_stats), read them with
/// [`Layer::output_stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowStats {
    /// Number of calibration tokens the statistics were taken over.
    pub tokens: u64,
    /// `‖y_i‖₂ = sqrt(Σ_tokens y_i²)`.
    pub l2_norm: Vec<f32>,
    /// `Σ_tokens y_i / tokens`.
    pub mean: Vec<f32>,
    /// Population variance of `y_i` over tokens (never negative).
    pub variance: Vec<f32>,
}

/// One row of the weight matrix, as a [`Layer::score_rows`] closure or a [`Tile`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Index of the row in the layer.
    pub index: u32,
    /// The row's signed weights `W[index, ..]` (`cols` values).
    pub weights: &'a [f32],
    gradient: Option<&'a [f32]>,
}

impl<'a> Row<'a> {
    /// The gradient statistic of the row (`cols` values).
    ///
    /// ```
    /// use autoprune_sdk::prelude::*;
    ///
    /// /// GBLM-style `|W|·|G|`.
    /// struct WTimesG;
    /// impl Metric for WTimesG {
    ///     fn info() -> Info { Info::new("w-times-g", "0.1.0", "|W_ij| * G_ij").needs_gradient() }
    ///     fn score(layer: &Layer) -> Result<()> {
    ///         layer.score_rows(|row, out| {
    ///             for ((o, w), g) in out.iter_mut().zip(row.weights).zip(row.gradient()) {
    ///                 *o = w.abs() * g;
    ///             }
    ///         })
    ///     }
    /// }
    ///
    /// let layer = autoprune_sdk::testing::TestLayer::new(1, 2, vec![-2.0, 3.0])
    ///     .with_gradient(vec![0.5, 2.0]);
    /// assert_eq!(autoprune_sdk::testing::run::<WTimesG>(&layer).unwrap(), [1.0, 6.0]);
    /// ```
    ///
    /// # Panics
    ///
    /// When the metric's [`Info`](crate::Info) did not ask for it with
    /// [`Info::needs_gradient`](crate::Info::needs_gradient).
    pub fn gradient(&self) -> &'a [f32] {
        self.gradient
            .expect("no gradient: add `.needs_gradient()` to the metric's Info")
    }
}

/// Consecutive whole rows of the layer, as [`Layer::for_each_tile`] hands them out.
#[derive(Debug, Clone, Copy)]
pub struct Tile<'a> {
    /// Index of the tile's first row in the layer.
    pub row_start: u32,
    /// Columns of the layer (length of every row).
    pub cols: usize,
    /// Signed weights of the tile's rows, row-major (`num_rows() * cols` values).
    pub weights: &'a [f32],
    gradient: Option<&'a [f32]>,
}

impl<'a> Tile<'a> {
    /// Rows in this tile.
    pub fn num_rows(&self) -> usize {
        self.weights.len() / self.cols
    }

    /// The tile's rows, in order.
    pub fn rows(&self) -> impl Iterator<Item = Row<'a>> + 'a {
        let (start, cols, gradient) = (self.row_start, self.cols, self.gradient);
        self.weights
            .chunks_exact(cols)
            .enumerate()
            .map(move |(i, weights)| Row {
                index: start + i as u32,
                weights,
                gradient: gradient.map(|g| &g[i * cols..(i + 1) * cols]),
            })
    }

    /// The gradient statistic of the tile's rows, row-major.
    ///
    /// # Panics
    ///
    /// When the metric did not ask for it with [`Info::needs_gradient`](crate::Info::needs_gradient).
    pub fn gradient(&self) -> &'a [f32] {
        self.gradient
            .expect("no gradient: add `.needs_gradient()` to the metric's Info")
    }
}

/// The layer a [`Metric`](crate::Metric) scores.
///
/// Weights arrive in tiles of at most `tile_rows` rows, so memory stays bounded for layers of
/// any size: [`score_rows`](Layer::score_rows) reads each tile, hands every row to the closure
/// and writes the scores back; [`for_each_tile`](Layer::for_each_tile) reads the whole layer
/// once more for quantities that need it all (row or column sums, extremes).
pub struct Layer {
    info: LayerInfo,
    gradient: bool,
    stats: OnceCell<ChannelStats>,
    hessian_inverse_diagonal: OnceCell<Result<Vec<f32>>>,
    output_stats: OnceCell<Result<RowStats>>,
    backend: Backend,
    /// The score buffer, reused by every tile.
    scores: RefCell<Vec<f32>>,
}

impl Layer {
    pub(crate) fn new(info: LayerInfo, gradient: bool, backend: Backend) -> Self {
        Layer {
            info,
            gradient,
            stats: OnceCell::new(),
            hessian_inverse_diagonal: OnceCell::new(),
            output_stats: OnceCell::new(),
            backend,
            scores: RefCell::new(Vec::new()),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn into_backend(self) -> Backend {
        self.backend
    }

    /// Identity and shape of the layer.
    pub fn info(&self) -> &LayerInfo {
        &self.info
    }

    /// Rows of the weight matrix (output features).
    pub fn rows(&self) -> usize {
        self.info.rows as usize
    }

    /// Columns of the weight matrix (input features).
    pub fn cols(&self) -> usize {
        self.info.cols as usize
    }

    /// Activation statistics of the input channels, fetched from the host on first use and
    /// cached.
    pub fn stats(&self) -> &ChannelStats {
        self.stats.get_or_init(|| self.backend.stats())
    }

    /// `[(H + λI)⁻¹]_jj` for every input channel `j` (`cols` values), fetched from the host on
    /// first use and cached: `H = XᵀX / tokens` over the calibration inputs,
    /// `λ = 0.01·mean(diag H)`. Every value is finite and positive. Ask for it with
    /// [`Info::needs_hessian_inverse_diagonal`](crate::Info::needs_hessian_inverse_diagonal);
    /// without that the host answers [`Error::Unsupported`].
    ///
    /// OBS's saliency of removing one weight (without the update of the others):
    ///
    /// ```
    /// use autoprune_sdk::prelude::*;
    ///
    /// struct Obs;
    /// impl Metric for Obs {
    ///     fn info() -> Info { Info::new("obs", "1.0.0", "w^2 / [H^-1]_jj").needs_hessian_inverse_diagonal() }
    ///     fn score(layer: &Layer) -> Result<()> {
    ///         let hinv = layer.hessian_inverse_diagonal()?;
    ///         layer.score_rows(|row, out| {
    ///             for ((o, w), h) in out.iter_mut().zip(row.weights).zip(hinv) { *o = w * w / h; }
    ///         })
    ///     }
    /// }
    ///
    /// let layer = autoprune_sdk::testing::TestLayer::new(1, 2, vec![-2.0, 3.0])
    ///     .with_hessian_inverse_diagonal(vec![0.5, 3.0]);
    /// assert_eq!(autoprune_sdk::testing::run::<Obs>(&layer).unwrap(), [8.0, 3.0]);
    /// ```
    pub fn hessian_inverse_diagonal(&self) -> Result<&[f32]> {
        let cols = self.cols();
        self.hessian_inverse_diagonal
            .get_or_init(|| {
                let v = self.backend.hessian_inverse_diagonal()?;
                if v.len() != cols {
                    return Err(Error::failed(format!(
                        "host sent {} Hessian inverse values for {cols} columns",
                        v.len()
                    )));
                }
                Ok(v)
            })
            .as_deref()
            .map_err(Clone::clone)
    }

    /// Statistics of every output row of the dense layer (see [`RowStats`]), fetched from the
    /// host on first use and cached. Ask for them with
    /// [`Info::needs_output_stats`](crate::Info::needs_output_stats); without that the host
    /// answers [`Error::Unsupported`].
    pub fn output_stats(&self) -> Result<&RowStats> {
        let rows = self.rows();
        self.output_stats
            .get_or_init(|| {
                let s = self.backend.output_stats()?;
                if [&s.l2_norm, &s.mean, &s.variance]
                    .iter()
                    .any(|l| l.len() != rows)
                {
                    return Err(Error::failed(format!(
                        "host sent output statistics that do not have {rows} rows"
                    )));
                }
                Ok(s)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Read the whole layer once, tile by tile, without writing scores: the first pass of a
    /// metric that needs whole-layer quantities. Each tile also carries the gradient when the
    /// metric asked for it.
    ///
    /// ```
    /// use autoprune_sdk::prelude::*;
    ///
    /// /// `|W_ij| / Σ_i |W_ij|`: magnitude relative to its column.
    /// struct ColumnShare;
    /// impl Metric for ColumnShare {
    ///     fn info() -> Info { Info::new("column-share", "0.1.0", "|W_ij| / sum_i |W_ij|") }
    ///     fn score(layer: &Layer) -> Result<()> {
    ///         let mut col_sum = vec![0.0f32; layer.cols()];
    ///         layer.for_each_tile(|tile| {
    ///             for row in tile.rows() {
    ///                 for (s, w) in col_sum.iter_mut().zip(row.weights) { *s += w.abs(); }
    ///             }
    ///         })?;
    ///         // An all-zero column scores 0 instead of 0/0.
    ///         let inv: Vec<f32> = col_sum.iter().map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 }).collect();
    ///         layer.score_rows(|row, out| {
    ///             for ((o, w), i) in out.iter_mut().zip(row.weights).zip(&inv) { *o = w.abs() * i; }
    ///         })
    ///     }
    /// }
    ///
    /// // Column sums: 1 + 3 = 4 and 2 + 2 = 4.
    /// let layer = autoprune_sdk::testing::TestLayer::new(2, 2, vec![1.0, -2.0, 3.0, 2.0]).with_tile_rows(1);
    /// assert_eq!(autoprune_sdk::testing::run::<ColumnShare>(&layer).unwrap(), [0.25, 0.5, 0.75, 0.5]);
    /// ```
    pub fn for_each_tile(&self, mut f: impl FnMut(Tile<'_>)) -> Result<()> {
        for (start, n) in self.tile_ranges()? {
            let (weights, gradient) = self.read(start, n)?;
            f(self.tile(start, &weights, gradient.as_deref()));
        }
        Ok(())
    }

    /// Score every row: `f(row, out)` fills `out` (`cols` values, zeroed beforehand) with the
    /// scores of `row.weights`; the SDK reads the tiles and writes the scores back. Call it once
    /// per layer: the host rejects a row written twice.
    ///
    /// The closure gets whole rows so its loop vectorizes (simd128): write it over slices with
    /// iterators, as below.
    ///
    /// ```
    /// use autoprune_sdk::prelude::*;
    ///
    /// struct Wanda;
    /// impl Metric for Wanda {
    ///     fn info() -> Info { Info::new("wanda", "1.0.0", "|W_ij| * ||X_j||_2") }
    ///     fn score(layer: &Layer) -> Result<()> {
    ///         let norm = &layer.stats().l2_norm;
    ///         layer.score_rows(|row, out| {
    ///             for ((o, w), n) in out.iter_mut().zip(row.weights).zip(norm) { *o = w.abs() * n; }
    ///         })
    ///     }
    /// }
    ///
    /// let layer = autoprune_sdk::testing::TestLayer::new(1, 2, vec![-1.0, 2.0]).with_l2_norm(vec![3.0, 0.5]);
    /// assert_eq!(autoprune_sdk::testing::run::<Wanda>(&layer).unwrap(), [3.0, 1.0]);
    /// ```
    pub fn score_rows(&self, mut f: impl FnMut(Row<'_>, &mut [f32])) -> Result<()> {
        let mut scores = self
            .scores
            .try_borrow_mut()
            .map_err(|_| Error::failed("score_rows cannot be called inside score_rows"))?;
        let cols = self.cols();
        for (start, n) in self.tile_ranges()? {
            let (weights, gradient) = self.read(start, n)?;
            scores.clear();
            scores.resize(weights.len(), 0.0);
            let tile = self.tile(start, &weights, gradient.as_deref());
            for (row, out) in tile.rows().zip(scores.chunks_exact_mut(cols)) {
                f(row, out);
            }
            // Free the input tile first so the next read reuses its memory.
            drop((weights, gradient));
            self.backend.write_scores(start, &scores)?;
        }
        Ok(())
    }

    /// `(row_start, rows)` of every tile, after checking the shape the host sent.
    fn tile_ranges(&self) -> Result<impl Iterator<Item = (u32, u32)>> {
        let LayerInfo {
            rows,
            cols,
            tile_rows,
            ..
        } = self.info;
        if cols == 0 || tile_rows == 0 {
            return Err(Error::invalid_input(format!(
                "layer has cols = {cols}, tile-rows = {tile_rows}"
            )));
        }
        (tile_rows as usize)
            .checked_mul(cols as usize)
            .ok_or_else(|| Error::invalid_input("tile-rows * cols overflows"))?;
        Ok((0..rows)
            .step_by(tile_rows as usize)
            .map(move |start| (start, tile_rows.min(rows - start))))
    }

    /// Read the weights (and the gradient, if the metric asked for it) of one tile.
    fn read(&self, start: u32, n: u32) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let len = n as usize * self.cols();
        let check = |v: Vec<f32>| {
            if v.len() == len {
                Ok(v)
            } else {
                Err(Error::failed(format!(
                    "host sent {} values for rows {start}..{}, expected {len}",
                    v.len(),
                    start + n
                )))
            }
        };
        let weights = check(self.backend.read_weights(start, n)?)?;
        let gradient = if self.gradient {
            Some(check(self.backend.read_gradient(start, n)?)?)
        } else {
            None
        };
        Ok((weights, gradient))
    }

    fn tile<'a>(
        &self,
        row_start: u32,
        weights: &'a [f32],
        gradient: Option<&'a [f32]>,
    ) -> Tile<'a> {
        Tile {
            row_start,
            cols: self.cols(),
            weights,
            gradient,
        }
    }
}
