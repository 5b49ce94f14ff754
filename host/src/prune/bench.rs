//! Timing runs for masks and SparseGPT (ignored by default; run with
//! `cargo test --release -p autoprune --lib prune::bench -- --ignored --nocapture`).

use std::time::Instant;

use super::mask::{validate_scores, Mask, Pattern};
use super::sparsegpt::{fasterprune, SparseGptConfig};
use super::testutil::Rng;
use crate::calib::hessian::{HessianAccumulator, HessianFactor};

fn time<T>(label: &str, per: usize, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    let s = t.elapsed().as_secs_f64();
    println!(
        "{label:<44} {:>9.3} ms  {:>7.3} ns/element",
        s * 1e3,
        s * 1e9 / per as f64
    );
    out
}

#[test]
#[ignore]
fn bench_masks() {
    let mut rng = Rng::new(1);
    for (rows, cols) in [(4096, 4096), (576, 1536), (1024, 11008)] {
        let n = rows * cols;
        let s = rng.normals(n);
        println!("-- {rows}x{cols}");
        time("validate", n, || validate_scores(&s, rows, cols).unwrap());
        for p in [
            Pattern::PerRow,
            Pattern::PerLayer,
            Pattern::PerLayerExact,
            Pattern::n_m(2, 4),
        ] {
            time(&format!("mask {p} 0.5 (incl. validate)"), n, || {
                Mask::from_scores(&s, rows, cols, p, 0.5).unwrap()
            });
        }
        let m = Mask::from_scores(&s, rows, cols, Pattern::PerRow, 0.5).unwrap();
        let mut w = s.clone();
        time("apply", n, || m.apply(&mut w).unwrap());
        time("digest (sha256)", n, || m.digest());
    }
}

#[test]
#[ignore]
fn bench_sparsegpt() {
    let mut rng = Rng::new(2);
    let tokens = 16_384;
    for (rows, cols) in [(576, 1536), (1536, 576), (576, 576)] {
        println!("-- W {rows}x{cols}, {tokens} tokens in 32 batches");
        let x = rng.normals(tokens * cols);
        let w0 = rng.normals(rows * cols);
        let t0 = Instant::now();
        let mut h = HessianAccumulator::new(cols);
        time("hessian add_batch x32", tokens * cols * cols, || {
            for b in x.chunks(512 * cols) {
                h.add_batch(b, 1).unwrap();
            }
        });
        let mut h1 = HessianAccumulator::new(cols);
        time(
            "hessian add_batch, one call of 16384",
            tokens * cols * cols,
            || h1.add_batch(&x, 32).unwrap(),
        );
        let f = time(
            "factor (chol + tri-inverse, f64)",
            cols * cols * cols,
            || HessianFactor::new(&h, 0.01).unwrap(),
        );
        drop(f);
        let mut w = w0.clone();
        time("fasterprune 50% (incl. factor)", rows * cols, || {
            fasterprune(&mut w, rows, cols, &h, &SparseGptConfig::unstructured(0.5)).unwrap()
        });
        let mut w = w0.clone();
        time("fasterprune 2:4 (incl. factor)", rows * cols, || {
            fasterprune(&mut w, rows, cols, &h, &SparseGptConfig::n_m(2, 4)).unwrap()
        });
        println!("wall of all the above: {:.3} s", t0.elapsed().as_secs_f64());
    }
}

#[test]
#[ignore]
fn bench_native_metrics() {
    use crate::layer::{ChannelStats, LayerData, LayerId, LayerKind};
    let mut rng = Rng::new(3);
    for (rows, cols) in [(4096, 4096), (576, 1536)] {
        let n = rows * cols;
        let w = rng.normals(n);
        let mut stats = ChannelStats::new(cols);
        stats.accumulate(&rng.normals(64 * cols));
        let layer = LayerData {
            id: LayerId {
                block: 0,
                num_blocks: 1,
                kind: LayerKind::Up,
            },
            rows,
            cols,
            weights: &w,
            stats: &stats,
            gradient: None,
            hessian_inverse_diagonal: None,
            output_stats: None,
            sparsity: 0.5,
        };
        println!("-- native metrics {rows}x{cols} (single thread)");
        time("magnitude", n, || super::native::magnitude(&layer));
        time("wanda", n, || super::native::wanda(&layer));
        time("ria", n, || super::native::ria(&layer));
    }
}
