//! The gradient statistic of GBLM-Pruner and Pruner-Zero: for every weight of the seven linears
//! of every block, `G_ij = sqrt(Σ_windows (100 · ∂L/∂W_ij)²)`, where `L` is the language-model
//! loss of one calibration window (the mean next-token cross-entropy over its `T − 1` predicted
//! positions, as `transformers` computes it with `labels = input_ids`). It is taken on the dense
//! model, one window at a time (batch 1, as the reference `gradient_computation.py` does: a
//! window's gradient is squared before windows are summed, so batching would change it).
//!
//! # How
//!
//! The gradients come from the differentiable forward and checkpointed backward pass of
//! [`crate::model::diff`] ([`diff::backward_window`]), one window at a time; this module only
//! squares, scales and sums them.
//!
//! # Accumulators
//!
//! `Σ (100·g)²` is accumulated on the host in **f32**, one `Vec<f32>` per (block, linear), the
//! same as the reference (`gradients_l2` is float32 there). With at most a few hundred windows
//! of non-negative terms the relative rounding error stays below ~1e-5, far under what a
//! ranking can see; f64 would double the memory (SmolLM2-135M: 425 MB in f32).

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::DType;

use crate::layer::LayerKind;
use crate::model::{diff, Model, ModelError};

/// The factor GBLM-Pruner and Pruner-Zero multiply gradients by before squaring.
pub const GRADIENT_SCALE: f32 = 100.0;

/// Why the gradient pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum GradientError {
    /// A tensor operation or the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The calibration windows cannot be used (empty, too short, ids outside the vocabulary).
    #[error("gradient pass: {0}")]
    Input(String),
    /// The progress callback asked to stop.
    #[error("the gradient pass was stopped after {done} of {total} windows")]
    Cancelled {
        /// Windows finished.
        done: usize,
        /// Windows requested.
        total: usize,
    },
}

impl From<candle_core::Error> for GradientError {
    fn from(e: candle_core::Error) -> Self {
        GradientError::Model(e.into())
    }
}

type Result<T, E = GradientError> = std::result::Result<T, E>;

/// Position of `kind` in [`LayerKind::BLOCK`] (`None` for [`LayerKind::Other`]).
fn kind_index(kind: LayerKind) -> Option<usize> {
    LayerKind::BLOCK.iter().position(|&k| k == kind)
}

/// The gradient statistic of every linear of every block, row-major like the weights.
#[derive(Debug, Clone)]
pub struct Gradients {
    /// `[block][kind in LayerKind::BLOCK order]`; `None` once released.
    layers: Vec<Option<Vec<Vec<f32>>>>,
    /// Calibration windows accumulated.
    pub windows: usize,
    /// Mean over windows of the window loss (nats per predicted token) of the dense model.
    pub mean_loss: f64,
    /// Wall-clock seconds of the pass.
    pub seconds: f64,
}

impl Gradients {
    /// `G = sqrt(Σ_windows (100·∂L/∂W)²)` of the `kind` linear of `block`, row-major
    /// (`rows · cols` values); `None` for an unknown layer or a released block.
    pub fn get(&self, block: usize, kind: LayerKind) -> Option<&[f32]> {
        let k = kind_index(kind)?;
        self.layers.get(block)?.as_ref().map(|b| b[k].as_slice())
    }

    /// Number of blocks covered.
    pub fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    /// Free the statistic of `block` (a pruning run no longer needs a block it has pruned).
    pub fn release_block(&mut self, block: usize) {
        if let Some(b) = self.layers.get_mut(block) {
            *b = None;
        }
    }

    /// Bytes held by the statistics still present.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flat_map(|b| b.iter().map(|v| v.len() * 4))
            .sum()
    }
}

/// Magic and version of the gradient file format ([`Gradients::save`]).
const FILE_MAGIC: &[u8; 8] = b"APGRAD01";

impl Gradients {
    /// Write the statistic to `path` (atomically: a temporary file renamed into place):
    /// a header (magic, windows, mean loss, seconds, block and layer counts, each layer's
    /// length), the values as little-endian f32, and a SHA-256 of everything before it.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut buf: Vec<u8> = Vec::with_capacity(self.bytes() + 4096);
        buf.extend_from_slice(FILE_MAGIC);
        buf.extend_from_slice(&(self.windows as u64).to_le_bytes());
        buf.extend_from_slice(&self.mean_loss.to_le_bytes());
        buf.extend_from_slice(&self.seconds.to_le_bytes());
        buf.extend_from_slice(&(self.layers.len() as u64).to_le_bytes());
        for block in &self.layers {
            let block = block
                .as_ref()
                .ok_or_else(|| std::io::Error::other("a released block cannot be saved"))?;
            buf.extend_from_slice(&(block.len() as u64).to_le_bytes());
            for l in block {
                buf.extend_from_slice(&(l.len() as u64).to_le_bytes());
            }
        }
        for l in self.layers.iter().flatten().flatten() {
            for v in l {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        let digest = crate::hash::sha256_hex(&buf);
        buf.extend_from_slice(digest.as_bytes());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp =
            tempfile::NamedTempFile::new_in(path.parent().unwrap_or(std::path::Path::new(".")))?;
        tmp.write_all(&buf)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Read a statistic written by [`Gradients::save`] for `model`: every block's layers must
    /// have the model's weight counts, and the checksum must match; anything else is an error
    /// (never a panic), so a corrupt or foreign file is recomputed instead of used.
    pub fn load(path: &std::path::Path, model: &Model) -> Result<Gradients> {
        let bad = |why: &str| GradientError::Input(format!("{}: {why}", path.display()));
        let expected: u64 = model
            .blocks
            .iter()
            .flat_map(|b| b.linears().map(|(_, l)| l.weight().elem_count() as u64))
            .sum();
        let meta = std::fs::metadata(path).map_err(|e| bad(&e.to_string()))?;
        // Header, per-layer lengths, values and digest; refuse before reading anything larger.
        let limit = 4 * expected + 64 + 16 * (model.blocks.len() as u64 + 1) * 8 + 64;
        if meta.len() > limit {
            return Err(bad("larger than the model's gradient statistic"));
        }
        let buf = std::fs::read(path).map_err(|e| bad(&e.to_string()))?;
        if buf.len() < 8 + 32 + 64 || &buf[..8] != FILE_MAGIC {
            return Err(bad("not a gradient statistic file"));
        }
        let (body, digest) = buf.split_at(buf.len() - 64);
        if crate::hash::sha256_hex(body).as_bytes() != digest {
            return Err(bad("checksum mismatch"));
        }
        let mut at = 8usize;
        let u64_at = |at: &mut usize| -> Result<u64> {
            let b = body
                .get(*at..*at + 8)
                .ok_or_else(|| bad("truncated header"))?;
            *at += 8;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let windows = u64_at(&mut at)? as usize;
        let mean_loss = f64::from_bits(u64_at(&mut at)?);
        let seconds = f64::from_bits(u64_at(&mut at)?);
        let blocks = u64_at(&mut at)? as usize;
        if blocks != model.blocks.len() {
            return Err(bad("block count differs from the model's"));
        }
        let mut shapes = Vec::with_capacity(blocks);
        for b in &model.blocks {
            let n = u64_at(&mut at)? as usize;
            let want: Vec<usize> = b.linears().map(|(_, l)| l.weight().elem_count()).collect();
            if n != want.len() {
                return Err(bad("layer count differs from the model's"));
            }
            let mut lens = Vec::with_capacity(n);
            for &w in &want {
                let len = u64_at(&mut at)? as usize;
                if len != w {
                    return Err(bad("a layer's size differs from the model's"));
                }
                lens.push(len);
            }
            shapes.push(lens);
        }
        let mut layers = Vec::with_capacity(blocks);
        for lens in shapes {
            let mut block = Vec::with_capacity(lens.len());
            for len in lens {
                let bytes = body
                    .get(at..at + 4 * len)
                    .ok_or_else(|| bad("truncated values"))?;
                at += 4 * len;
                block.push(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect(),
                );
            }
            layers.push(Some(block));
        }
        if at != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Gradients {
            layers,
            windows,
            mean_loss,
            seconds,
        })
    }
}

/// Compute the gradient statistic of all seven linears of every block of the dense `model` over
/// the calibration `windows` (each of at least 2 tokens; lengths may differ), one window at a
/// time.
///
/// `progress(done, total)` is called after every window; returning `ControlFlow::Break(())`
/// stops the pass with [`GradientError::Cancelled`] (the statistics of finished windows are
/// dropped: a partial sum is not the statistic).
pub fn compute(
    model: &Model,
    windows: &[&[u32]],
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<Gradients> {
    let start = Instant::now();
    if windows.is_empty() {
        return Err(GradientError::Input("no calibration windows".into()));
    }
    let mut acc: Vec<Vec<Vec<f32>>> = model
        .blocks
        .iter()
        .map(|b| {
            b.linears()
                .map(|(_, l)| vec![0f32; l.weight().elem_count()])
                .collect()
        })
        .collect();
    let mut loss_sum = 0f64;
    for (w, window) in windows.iter().enumerate() {
        if window.len() < 2 {
            return Err(GradientError::Input(format!(
                "a window needs at least 2 tokens for a next-token loss, got {}",
                window.len()
            )));
        }
        let loss = diff::backward_window(model, window, DType::F32, &mut |block,
                                                                          kind,
                                                                          g|
         -> Result<()> {
            let k = kind_index(kind).expect("a block linear");
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let a = &mut acc[block][k];
            if g.len() != a.len() {
                return Err(GradientError::Input(format!(
                    "gradient of block {block} {} has {} values, expected {}",
                    kind.name(),
                    g.len(),
                    a.len()
                )));
            }
            for (a, g) in a.iter_mut().zip(&g) {
                let s = GRADIENT_SCALE * g;
                *a += s * s;
            }
            Ok(())
        })?;
        loss_sum += loss;
        if progress(w + 1, windows.len()).is_break() {
            return Err(GradientError::Cancelled {
                done: w + 1,
                total: windows.len(),
            });
        }
    }
    for v in acc.iter_mut().flatten() {
        v.iter_mut().for_each(|x| *x = x.sqrt());
    }
    Ok(Gradients {
        layers: acc.into_iter().map(Some).collect(),
        windows: windows.len(),
        mean_loss: loss_sum / windows.len() as f64,
        seconds: start.elapsed().as_secs_f64(),
    })
}
