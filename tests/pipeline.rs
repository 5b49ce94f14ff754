//! The pruning pipeline end to end: tiny random models (LLaMA and Qwen2) pruned by the
//! sandboxed Wanda plugin and by SparseGPT; and, when the data is there (always in CI), the real
//! SmolLM2 under a reduced SOTU protocol.

mod common;

use autoprune::calib::{window_offsets, windows, Sampler};
use autoprune::eval::{perplexity, PerplexityOptions};
use autoprune::layer::{LayerData, LayerId, LayerKind};
use autoprune::model::{Arch, Model, ModelConfig};
use autoprune::pipeline::{prune_model, Method, PruneConfig};
use autoprune::prune::mask::{Mask, Pattern};
use autoprune::prune::native;
use autoprune::sandbox::{Plugin, Policy};
use candle_core::Device;

fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    // A deterministic, repetitive "text" so a model has something to be perplexed by.
    (0..n as u32)
        .map(|i| (i * 7 + (i / 13) * 3) % vocab)
        .collect()
}

fn plugin(rel: &str) -> Plugin {
    common::plugin(rel, &Policy::default()).expect("candidate loads")
}

#[test]
fn wanda_plugin_prunes_tiny_models_exactly_like_native_wanda() {
    let wanda = plugin("candidates/wanda.rs");
    for arch in [Arch::Llama, Arch::Qwen2] {
        let cfg = ModelConfig::tiny(arch);
        let dense = Model::random(&cfg, 5, &Device::Cpu).unwrap();
        let toks = tokens(4096, cfg.vocab_size as u32);
        let offsets = window_offsets(toks.len(), 4, 64, Sampler::Even).unwrap();
        let wins = windows(&toks, &offsets, 64);
        let mut model = dense.clone();
        let pcfg = PruneConfig {
            sparsity: 0.5,
            layer_sparsity: Vec::new(),
            pattern: Pattern::PerRow,
            batch: 3,
        };
        let report = prune_model(
            &mut model,
            &wins,
            &Method::Metric(&wanda),
            &pcfg,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(report.layers.len(), 7 * cfg.num_layers);
        for l in &report.layers {
            // Exactly floor(cols/2) pruned per row; random weights have no zeros of their own.
            assert_eq!(l.pruned, l.rows * (l.cols / 2), "{:?}", l.kind);
            assert_eq!(l.zeros, l.pruned);
        }
        // Block 0 sees the dense embeddings, so its masks can be recomputed independently:
        // native Wanda on the same statistics gives the same mask hash.
        let rope = dense.rope(64).unwrap();
        let batches: Vec<_> = wins
            .chunks(3)
            .map(|w| dense.embed(&dense.ids_tensor(w).unwrap()).unwrap())
            .collect();
        let inputs =
            autoprune::calib::collect_block_inputs(&dense.blocks[0], &batches, &rope, false)
                .unwrap();
        for (k, kind) in LayerKind::BLOCK.into_iter().enumerate() {
            let lin = dense.blocks[0].linear(kind).unwrap();
            let (rows, cols) = lin.shape();
            let w: Vec<f32> = lin.weight().flatten_all().unwrap().to_vec1().unwrap();
            let data = LayerData {
                id: LayerId {
                    block: 0,
                    num_blocks: 2,
                    kind,
                },
                rows,
                cols,
                weights: &w,
                stats: inputs.stats(kind).unwrap(),
                gradient: None,
                sparsity: 0.5,
            };
            let mask =
                Mask::from_scores(&native::wanda(&data), rows, cols, Pattern::PerRow, 0.5).unwrap();
            assert_eq!(
                format!("{:016x}", mask.hash64()),
                report.layers[k].mask_hash,
                "{arch:?} {kind:?}"
            );
        }
        // The pruned model still runs and is worse than the dense one.
        let opts = PerplexityOptions {
            seq_len: 64,
            windows: 4,
            batch: 2,
        };
        let d = perplexity(&dense, &toks, &opts).unwrap().ppl;
        let p = perplexity(&model, &toks, &opts).unwrap().ppl;
        assert!(
            p.is_finite() && d.is_finite() && p != d,
            "{arch:?}: dense {d}, pruned {p}"
        );
    }
}

#[test]
fn sparsegpt_and_nm_patterns_on_a_tiny_model() {
    let cfg = ModelConfig::tiny(Arch::Llama);
    let toks = tokens(4096, cfg.vocab_size as u32);
    let wins = windows(
        &toks,
        &window_offsets(toks.len(), 4, 64, Sampler::Even).unwrap(),
        64,
    );
    for pattern in [Pattern::PerRow, Pattern::NM { n: 2, m: 4 }] {
        let mut model = Model::random(&cfg, 9, &Device::Cpu).unwrap();
        let pcfg = PruneConfig {
            sparsity: 0.5,
            layer_sparsity: Vec::new(),
            pattern,
            batch: 4,
        };
        let r = prune_model(&mut model, &wins, &Method::SparseGpt, &pcfg, &mut |_, _| {}).unwrap();
        assert!((r.sparsity - 0.5).abs() < 0.02, "{pattern}: {}", r.sparsity);
    }
    let ria = plugin("candidates/ria.rs");
    let mut model = Model::random(&cfg, 9, &Device::Cpu).unwrap();
    let pcfg = PruneConfig {
        sparsity: 0.5,
        layer_sparsity: Vec::new(),
        pattern: Pattern::NM { n: 4, m: 8 },
        batch: 4,
    };
    let r = prune_model(
        &mut model,
        &wins,
        &Method::Metric(&ria),
        &pcfg,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.sparsity, 0.5);
}

#[test]
fn failing_metric_reports_its_verdict_and_layer() {
    let nan = plugin("tests/attacks/nan_output.rs");
    let cfg = ModelConfig::tiny(Arch::Llama);
    let toks = tokens(1024, cfg.vocab_size as u32);
    let wins = windows(&toks, &[0, 100], 64);
    let mut model = Model::random(&cfg, 1, &Device::Cpu).unwrap();
    let pcfg = PruneConfig {
        sparsity: 0.5,
        layer_sparsity: Vec::new(),
        pattern: Pattern::PerRow,
        batch: 2,
    };
    match prune_model(
        &mut model,
        &wins,
        &Method::Metric(&nan),
        &pcfg,
        &mut |_, _| {},
    ) {
        Err(autoprune::pipeline::PipelineError::Metric { layer, failure }) => {
            assert_eq!((layer.block, layer.kind), (0, LayerKind::Q));
            assert_eq!(failure.kind(), "invalid_output");
        }
        other => panic!("{other:?}"),
    }
}
