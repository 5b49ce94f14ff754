//! `autoprune bench --stats`: the calibration statistics of the device path against the
//! host path, block by block over the whole model: how long each takes and how far apart they
//! are (the equivalence the CUDA path must keep; see `calib::device`).
//!
//! The reference is the model on the CPU with the host's f64 accumulation (what every CPU run
//! uses). The other side is the model on `--device` with statistics accumulated by tensor
//! operations on that device; with `--device cpu` that is candle's CPU backend, so the suite
//! checks the device path's arithmetic on machines without a GPU.

use crate::calib::device::{max_rel_diff, worse};
use crate::calib::hessian::{HessianAccumulator, HessianFactor};
use crate::calib::{collect_block_inputs_with, input_slot, BlockInputs, DevicePath};
use crate::layer::{ChannelStats, LayerData, LayerId, LayerKind};
use crate::model::{Model, Precision};
use crate::pipeline::embed_chunks;
use crate::prune::mask::{Mask, Pattern};
use crate::prune::native;
use crate::prune::sparsegpt::device::{prune_tensor, DeviceFactor};
use crate::prune::sparsegpt::{prune_with_factor, SparseGptConfig};
use crate::setup::{self, CalibSpec, Calibration};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// What `bench --stats` measures.
#[derive(Debug, Clone)]
pub struct StatsSpec {
    /// Model (`None`: SmolLM2 from the data directory).
    pub model: Option<PathBuf>,
    /// Calibration text (`None`: SOTU before 1990).
    pub calib: Option<PathBuf>,
    /// Calibration windows.
    pub windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows per forward pass.
    pub batch: usize,
    /// The device of the compared path: `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Blocks (the first ones) whose SparseGPT Hessians are compared too.
    pub hessian_blocks: usize,
}

/// One block's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct BlockRow {
    /// Block index.
    pub block: usize,
    /// Seconds of the reference pass (CPU model, host accumulation).
    pub host_seconds: f64,
    /// Seconds of the device pass (model on the device, tensor accumulation).
    pub device_seconds: f64,
    /// Largest relative difference of `Σx²` over every channel of every input.
    pub sum_sq_rel: f64,
    /// Largest difference of `Σx`, relative to `sqrt(N · Σx²)` (a bound of `Σ|x|`).
    pub sum_rel: f64,
    /// Largest relative difference of `max |x|`.
    pub max_abs_rel: f64,
    /// Largest Hessian difference relative to the Hessian's largest diagonal entry (`None`
    /// when not compared).
    pub hessian_rel: Option<f64>,
    /// Wanda weights (50 % per output row) kept by one path and pruned by the other.
    pub wanda_mask_diff: usize,
    /// Of those, how many sit within 1e-5 (relative) of their row's threshold: near-ties.
    pub wanda_near_ties: usize,
    /// Weights scored in the block.
    pub weights: usize,
    /// Magnitude masks (50 % per row) from the weights on the device and on the CPU: entries
    /// that differ (the same file's weights, uploaded: 0 is expected). `None` when the compared
    /// device is the CPU, whose model is the reference itself.
    pub magnitude_mask_diff: Option<usize>,
    /// SparseGPT at 50 % on the blocks with Hessians (`None` elsewhere).
    pub sparsegpt: Option<SparseGptRow>,
}

/// SparseGPT's OBS update on the host (f32 loop, the CPU model's weights) against the tensor
/// path on the device, over a block's seven linears.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SparseGptRow {
    /// Mask entries that differ when each path uses its own Hessian (what a run sees).
    pub mask_diff: usize,
    /// Mask entries that differ with the same (host) factor: the update's numerics alone.
    pub same_factor_mask_diff: usize,
    /// With the same factor, `‖W_host − W_device‖ / ‖W_host‖` (Frobenius) of the updated
    /// weights, the worst layer's: a flipped near-tie moves its row's later weights too.
    pub same_factor_weight_rel: f64,
    /// With the same factor, the relative difference of SparseGPT's loss `Σ (w − q)²/d²/2`
    /// (what the update minimises), the worst layer's.
    pub same_factor_loss_rel: f64,
    /// Seconds of the host's update (the same factor).
    pub host_seconds: f64,
    /// Seconds of the device's update (the same factor; the upload of `U`, once per input
    /// slot, and the download of the updated weights included; the factorisation not, as for
    /// the host).
    pub device_seconds: f64,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    /// The model.
    pub model: String,
    /// The compared device.
    pub device: String,
    /// Calibration windows × tokens.
    pub windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Per block.
    pub blocks: Vec<BlockRow>,
    /// Total seconds of the reference pass.
    pub host_seconds: f64,
    /// Total seconds of the device pass.
    pub device_seconds: f64,
    /// `host_seconds / device_seconds`.
    pub speedup: f64,
}

impl StatsReport {
    /// The largest of a column over the blocks.
    fn worst(&self, f: impl Fn(&BlockRow) -> f64) -> f64 {
        self.blocks.iter().map(f).fold(0.0, worse)
    }

    /// Largest `Σx²` relative difference.
    pub fn sum_sq_rel(&self) -> f64 {
        self.worst(|b| b.sum_sq_rel)
    }

    /// Largest `Σx` difference (relative to `sqrt(N · Σx²)`).
    pub fn sum_rel(&self) -> f64 {
        self.worst(|b| b.sum_rel)
    }

    /// Largest `max |x|` relative difference.
    pub fn max_abs_rel(&self) -> f64 {
        self.worst(|b| b.max_abs_rel)
    }

    /// Largest Hessian difference (relative to its diagonal).
    pub fn hessian_rel(&self) -> f64 {
        self.worst(|b| b.hessian_rel.unwrap_or(0.0))
    }

    /// Magnitude mask differences over the model (`None` on the CPU: nothing to compare).
    pub fn magnitude_mask_diff(&self) -> Option<usize> {
        self.blocks.iter().map(|b| b.magnitude_mask_diff).sum()
    }

    /// SparseGPT's comparison summed over the blocks that ran it (`None`: none did), and the
    /// weights of those blocks.
    pub fn sparsegpt(&self) -> Option<(SparseGptRow, usize)> {
        let mut rows = self
            .blocks
            .iter()
            .filter_map(|b| b.sparsegpt.as_ref().map(|s| (s, b.weights)))
            .peekable();
        rows.peek()?;
        Some(
            rows.fold((SparseGptRow::default(), 0), |(mut t, n), (s, w)| {
                t.mask_diff += s.mask_diff;
                t.same_factor_mask_diff += s.same_factor_mask_diff;
                t.same_factor_weight_rel =
                    worse(t.same_factor_weight_rel, s.same_factor_weight_rel);
                t.same_factor_loss_rel = worse(t.same_factor_loss_rel, s.same_factor_loss_rel);
                t.host_seconds += s.host_seconds;
                t.device_seconds += s.device_seconds;
                (t, n + w)
            }),
        )
    }

    /// Wanda mask differences and near-ties among them, over the model.
    pub fn wanda(&self) -> (usize, usize, usize) {
        self.blocks.iter().fold((0, 0, 0), |(d, t, w), b| {
            (d + b.wanda_mask_diff, t + b.wanda_near_ties, w + b.weights)
        })
    }
}

/// Largest `Σx` difference relative to `sqrt(N · Σx²)` (≥ `Σ|x|`), so channels whose sum
/// cancels are not measured against their tiny total.
fn sum_rel(a: &ChannelStats, b: &ChannelStats) -> f64 {
    let n = a.tokens.max(1) as f64;
    a.sum
        .iter()
        .zip(&b.sum)
        .zip(&a.sum_sq)
        .map(|((x, y), sq)| {
            let scale = (n * sq).sqrt();
            if !x.is_finite() || !y.is_finite() || !scale.is_finite() {
                f64::NAN
            } else if scale == 0.0 {
                (x - y).abs()
            } else {
                (x - y).abs() / scale
            }
        })
        .fold(0.0, worse)
}

/// Wanda masks (`|W|·‖X_j‖`, 50 % per row) from both statistics: entries that differ, and
/// how many of those are near-ties (score within 1e-5 relative of the row's threshold).
fn wanda_diff(
    id: LayerId,
    w: &[f32],
    rows: usize,
    a: &ChannelStats,
    b: &ChannelStats,
) -> anyhow::Result<(usize, usize)> {
    let cols = a.cols();
    let score = |stats: &ChannelStats| {
        native::wanda(&LayerData {
            id,
            rows,
            cols,
            weights: w,
            stats,
            gradient: None,
            hessian_inverse_diagonal: None,
            output_stats: None,
            sparsity: 0.5,
        })
    };
    let (sa, sb) = (score(a), score(b));
    let ma = Mask::from_scores(&sa, rows, cols, Pattern::PerRow, 0.5)?;
    let mb = Mask::from_scores(&sb, rows, cols, Pattern::PerRow, 0.5)?;
    let (mut diff, mut ties) = (0, 0);
    for r in 0..rows {
        let row = &sa[r * cols..(r + 1) * cols];
        // The row's threshold: the largest pruned score of the reference mask.
        let threshold = (0..cols)
            .filter(|&c| !ma.is_kept(r, c))
            .map(|c| row[c])
            .fold(0.0f32, f32::max);
        for (c, &score) in row.iter().enumerate() {
            if ma.is_kept(r, c) != mb.is_kept(r, c) {
                diff += 1;
                if (score - threshold).abs() <= 1e-5 * threshold.abs().max(f32::MIN_POSITIVE) {
                    ties += 1;
                }
            }
        }
    }
    Ok((diff, ties))
}

fn compare_block(
    block: usize,
    cpu_model: &Model,
    dev_model: &Model,
    host: &BlockInputs,
    dev: &BlockInputs,
) -> anyhow::Result<BlockRow> {
    let mut row = BlockRow {
        block,
        host_seconds: 0.0,
        device_seconds: 0.0,
        sum_sq_rel: 0.0,
        sum_rel: 0.0,
        max_abs_rel: 0.0,
        hessian_rel: None,
        wanda_mask_diff: 0,
        wanda_near_ties: 0,
        weights: 0,
        magnitude_mask_diff: None,
        sparsegpt: None,
    };
    for (kind, a) in &host.stats {
        let b = dev
            .stats
            .get(kind)
            .ok_or_else(|| anyhow::anyhow!("block {block}: the device path has no {kind:?}"))?;
        anyhow::ensure!(
            a.tokens == b.tokens && a.cols() == b.cols(),
            "block {block} {kind:?}: {} × {} tokens × channels on the host, {} × {} on the device",
            a.tokens,
            a.cols(),
            b.tokens,
            b.cols()
        );
        row.sum_sq_rel = worse(row.sum_sq_rel, max_rel_diff(&a.sum_sq, &b.sum_sq));
        row.sum_rel = worse(row.sum_rel, sum_rel(a, b));
        let (ma, mb): (Vec<f64>, Vec<f64>) = (
            a.max_abs.iter().map(|&v| v as f64).collect(),
            b.max_abs.iter().map(|&v| v as f64).collect(),
        );
        row.max_abs_rel = worse(row.max_abs_rel, max_rel_diff(&ma, &mb));
    }
    for (kind, a) in &host.hessians {
        let b = dev.hessians.get(kind).ok_or_else(|| {
            anyhow::anyhow!("block {block}: the device path has no Hessian of {kind:?}")
        })?;
        let (ha, hb, n) = (a.to_matrix(), b.to_matrix(), a.cols());
        let diag = (0..n).map(|i| ha[i * n + i].abs()).fold(0.0, f64::max);
        let worst = ha
            .iter()
            .zip(&hb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, worse)
            / diag.max(f64::MIN_POSITIVE);
        row.hessian_rel = Some(worse(row.hessian_rel.unwrap_or(0.0), worst));
    }
    for (what, v) in [
        ("Σx²", row.sum_sq_rel),
        ("Σx", row.sum_rel),
        ("max |x|", row.max_abs_rel),
        ("the Hessian", row.hessian_rel.unwrap_or(0.0)),
    ] {
        anyhow::ensure!(
            v.is_finite(),
            "block {block}: {what} is not finite on one of the paths"
        );
    }
    let b = &cpu_model.blocks[block];
    // SparseGPT's factors per input slot (q/k/v and gate/up share theirs), made once.
    let mut factors: BTreeMap<LayerKind, SlotFactors> = BTreeMap::new();
    for kind in LayerKind::BLOCK {
        let Some(linear) = b.linear(kind) else {
            continue;
        };
        let (Some(a), Some(d)) = (host.stats(kind), dev.stats(kind)) else {
            continue;
        };
        let (rows, _) = linear.shape();
        let w = linear.weight().flatten_all()?.to_vec1::<f32>()?;
        let id = LayerId::of(block, cpu_model.blocks.len(), kind);
        let (diff, ties) = wanda_diff(id, &w, rows, a, d)?;
        row.wanda_mask_diff += diff;
        row.wanda_near_ties += ties;
        row.weights += w.len();
        let on_device = dev_model.blocks[block]
            .linear(kind)
            .ok_or_else(|| anyhow::anyhow!("block {block}: the device model has no {kind:?}"))?
            .weight();
        if !on_device.device().is_cpu() {
            let wd = on_device.flatten_all()?.to_vec1::<f32>()?;
            *row.magnitude_mask_diff.get_or_insert(0) += magnitude_diff(&w, &wd, rows)?;
        }
        if let (Some(ha), Some(hd)) = (host.hessian(kind), dev.hessian(kind)) {
            let sg = row.sparsegpt.get_or_insert_with(SparseGptRow::default);
            let f = match factors.entry(input_slot(kind)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(SlotFactors::new(sg, ha, hd, on_device.device())?),
            };
            sparsegpt_diff(sg, &w, rows, on_device, f)?;
        }
    }
    Ok(row)
}

/// Magnitude masks (50 % per row) of two copies of a layer's weights: entries that differ.
fn magnitude_diff(a: &[f32], b: &[f32], rows: usize) -> anyhow::Result<usize> {
    let cols = a.len() / rows.max(1);
    let mask = |w: &[f32]| {
        let s: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        Mask::from_scores(&s, rows, cols, Pattern::PerRow, 0.5)
    };
    mask(a)?
        .differing(&mask(b)?)
        .ok_or_else(|| anyhow::anyhow!("the two copies of a layer have different shapes"))
}

/// One input slot's SparseGPT factors: the host's, and on the device the host's (the same
/// factor on both sides) and the device path's own.
struct SlotFactors {
    host: HessianFactor,
    same: DeviceFactor,
    own: DeviceFactor,
}

impl SlotFactors {
    /// Factor `ha` (host) and `hd` (device path), and upload both; the uploads count as the
    /// device's update time in `row`.
    fn new(
        row: &mut SparseGptRow,
        ha: &HessianAccumulator,
        hd: &HessianAccumulator,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let percdamp = SparseGptConfig::default().percdamp;
        let host = HessianFactor::new(ha, percdamp)?;
        let own = HessianFactor::new(hd, percdamp)?;
        let t = Instant::now();
        let same = DeviceFactor::new(&host, device)?;
        row.device_seconds += t.elapsed().as_secs_f64();
        let own = DeviceFactor::new(&own, device)?;
        Ok(SlotFactors { host, same, own })
    }
}

/// SparseGPT at 50 % on one layer, the host's update against the tensor path's: with each
/// path's own Hessian, and with the host's factor on both sides.
fn sparsegpt_diff(
    row: &mut SparseGptRow,
    w: &[f32],
    rows: usize,
    on_device: &Tensor,
    f: &SlotFactors,
) -> anyhow::Result<()> {
    let cols = f.host.cols();
    let cfg = SparseGptConfig::unstructured(0.5);
    let t = Instant::now();
    let mut wh = w.to_vec();
    let host = prune_with_factor(&mut wh, rows, cols, &f.host, &cfg)?;
    row.host_seconds += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (same, same_stats) = prune_tensor(on_device, &f.same, &cfg)?;
    let same = same.flatten_all()?.to_vec1::<f32>()?;
    row.device_seconds += t.elapsed().as_secs_f64();
    let (_, own) = prune_tensor(on_device, &f.own, &cfg)?;
    let differ = |m: &Mask| {
        host.mask
            .differing(m)
            .ok_or_else(|| anyhow::anyhow!("SparseGPT's masks have different shapes"))
    };
    row.mask_diff += differ(&own.mask)?;
    row.same_factor_mask_diff += differ(&same_stats.mask)?;
    let (diff, norm) = wh
        .iter()
        .zip(&same)
        .fold((0.0f64, 0.0f64), |(d, n), (&a, &b)| {
            let (a, b) = (a as f64, b as f64);
            (d + (a - b) * (a - b), n + a * a)
        });
    let worst = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
    row.same_factor_weight_rel = worse(row.same_factor_weight_rel, worst);
    let loss_rel = (host.loss - same_stats.loss).abs() / host.loss.max(f64::MIN_POSITIVE);
    row.same_factor_loss_rel = worse(row.same_factor_loss_rel, loss_rel);
    Ok(())
}

/// Run the comparison; `progress(done, total)` after every block.
pub fn run(
    spec: &StatsSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<StatsReport> {
    let device = setup::device(&spec.device)?;
    let cpu = setup::load_model(spec.model.as_ref(), &Device::Cpu, Precision::F32)?;
    let on_device = if device.is_cpu() {
        None
    } else {
        Some(setup::load_model(spec.model.as_ref(), &device, Precision::F32)?.model)
    };
    let dev_model = on_device.as_ref().unwrap_or(&cpu.model);
    let calib = Calibration::load(
        &CalibSpec {
            file: spec.calib.clone(),
            windows: spec.windows,
            ..CalibSpec::default()
        },
        &cpu.tokenizer,
        spec.seq_len,
    )?;
    let windows = calib.windows(spec.seq_len);
    let (rope_h, rope_d) = (cpu.model.rope(spec.seq_len)?, dev_model.rope(spec.seq_len)?);
    let embed = |m: &Model| embed_chunks(&windows, spec.batch, |w| m.embed(&m.ids_tensor(w)?));
    let mut xs_h = embed(&cpu.model)?;
    let mut xs_d = embed(dev_model)?;
    let total = cpu.model.blocks.len();
    let mut report = StatsReport {
        model: setup::file_name(&cpu.path),
        device: spec.device.clone(),
        windows: windows.len(),
        seq_len: spec.seq_len,
        blocks: Vec::with_capacity(total),
        host_seconds: 0.0,
        device_seconds: 0.0,
        speedup: 0.0,
    };
    for i in 0..total {
        let hessians = i < spec.hessian_blocks;
        let t = Instant::now();
        let (host, outs_h) = collect_block_inputs_with(
            &cpu.model.blocks[i],
            &xs_h,
            &rope_h,
            hessians,
            DevicePath::Host,
        )?;
        let host_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (dev, outs_d) = collect_block_inputs_with(
            &dev_model.blocks[i],
            &xs_d,
            &rope_d,
            hessians,
            DevicePath::Tensor,
        )?;
        // The statistics are on the host now (their copy waits for the device); the outputs
        // may still be computing: wait for them too, so the time is the block's.
        if let Some(last) = outs_d.last() {
            last.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
        }
        let device_seconds = t.elapsed().as_secs_f64();
        let mut row = compare_block(i, &cpu.model, dev_model, &host, &dev)?;
        row.host_seconds = host_seconds;
        row.device_seconds = device_seconds;
        report.host_seconds += host_seconds;
        report.device_seconds += device_seconds;
        report.blocks.push(row);
        xs_h = outs_h;
        xs_d = outs_d;
        progress(i + 1, total);
    }
    report.speedup = report.host_seconds / report.device_seconds.max(1e-12);
    Ok(report)
}
