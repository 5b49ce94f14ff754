//! The pruning pipeline end to end: tiny random models (LLaMA and Qwen2) pruned by the
//! sandboxed Wanda plugin, by metrics reading the WIT 0.2.0 Hessian inputs, and by SparseGPT;
//! and, when the data is there (always in CI), the real SmolLM2 under a reduced SOTU protocol.

mod common;

use autoprune::calib::hessian::{block_extras, Wanted};
use autoprune::calib::{collect_block_inputs, window_offsets, windows, Sampler};
use autoprune::eval::{perplexity, PerplexityOptions};
use autoprune::layer::{LayerData, LayerId, LayerKind};
use autoprune::model::{Arch, Model, ModelConfig};
use autoprune::pipeline::{prune_model, Method, PruneConfig, PruneJob};
use autoprune::prune::mask::{Mask, Pattern};
use autoprune::prune::native;
use autoprune::sandbox::{Plugin, Policy};
use autoprune::search::gp;
use candle_core::Device;
use common::{candidate, tokens};

#[test]
fn wanda_plugin_prunes_tiny_models_exactly_like_native_wanda() {
    let wanda = candidate("candidates/wanda.rs");
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
            path: Default::default(),
        };
        let report = prune_model(
            &mut model,
            &PruneJob::new(&wins, &Method::Metric(&wanda), &pcfg),
            &mut |_| {},
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
        let inputs = collect_block_inputs(&dense.blocks[0], &batches, &rope, false).unwrap();
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
                hessian_inverse_diagonal: None,
                output_stats: None,
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

/// The sequential protocol written out natively: per block, the dense pass with Hessians,
/// the WIT 0.2.0 inputs from `calib::hessian`, scores from `score`, host masks, the pruned
/// pass. Returns every layer's mask hash in model order.
fn native_sequential(
    model: &mut Model,
    wins: &[&[u32]],
    batch: usize,
    pattern: Pattern,
    score: &dyn Fn(&LayerData<'_>) -> Vec<f32>,
) -> Vec<String> {
    let rope = model.rope(wins[0].len()).unwrap();
    let mut inps: Vec<_> = wins
        .chunks(batch)
        .map(|w| model.embed(&model.ids_tensor(w).unwrap()).unwrap())
        .collect();
    let n = model.blocks.len();
    let wanted = Wanted {
        hessian_inverse_diagonal: true,
        output_stats: true,
    };
    let mut hashes = Vec::new();
    for b in 0..n {
        let inputs = collect_block_inputs(&model.blocks[b], &inps, &rope, true).unwrap();
        let extras = block_extras(&model.blocks[b], &inputs, wanted).unwrap();
        for kind in LayerKind::BLOCK {
            let lin = model.blocks[b].linear(kind).unwrap();
            let (rows, cols) = lin.shape();
            let mut w: Vec<f32> = lin.weight().flatten_all().unwrap().to_vec1().unwrap();
            let data = LayerData {
                id: LayerId {
                    block: b as u32,
                    num_blocks: n as u32,
                    kind,
                },
                rows,
                cols,
                weights: &w,
                stats: inputs.stats(kind).unwrap(),
                gradient: None,
                hessian_inverse_diagonal: extras.hessian_inverse_diagonal(kind),
                output_stats: extras.output_stats(kind),
                sparsity: 0.5,
            };
            let mask = Mask::from_scores(&score(&data), rows, cols, pattern, 0.5).unwrap();
            mask.apply(&mut w).unwrap();
            hashes.push(format!("{:016x}", mask.hash64()));
            let t = candle_core::Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
            model.blocks[b].set_weight(kind, t).unwrap();
        }
        let block = &model.blocks[b];
        inps = inps
            .iter()
            .map(|x| block.forward(x, &rope, &mut |_, _| Ok(())).unwrap())
            .collect();
    }
    hashes
}

#[test]
fn metrics_reading_the_hessian_inputs_prune_tiny_models_like_the_native_computation() {
    let cfg = ModelConfig::tiny(Arch::Llama);
    let dense = Model::random(&cfg, 13, &Device::Cpu).unwrap();
    let toks = tokens(4096, cfg.vocab_size as u32);
    let wins = windows(
        &toks,
        &window_offsets(toks.len(), 4, 64, Sampler::Even).unwrap(),
        64,
    );
    // OBS (the candidate) and a GP tree reading both inputs: `|W|·O / H`.
    let tree = gp::Expr::bin(
        gp::BinOp::Div,
        gp::Expr::bin(gp::BinOp::Mul, gp::Expr::W, gp::Expr::O),
        gp::Expr::H,
    );
    let built = common::builder(true)
        .build(&gp::render(&tree, "w-o-over-h"))
        .expect("the tree builds");
    let tree_plugin = Plugin::load(&built.wasm, &Policy::default(), None).unwrap();
    let obs = candidate("candidates/obs.rs");
    let obs_native = |l: &LayerData<'_>| -> Vec<f32> {
        let h = l.hessian_inverse_diagonal.unwrap();
        l.weights
            .iter()
            .enumerate()
            .map(|(k, w)| w * w / h[k % l.cols])
            .collect()
    };
    let tree_native = |l: &LayerData<'_>| gp::eval_layer(&tree, l);
    type Native<'a> = &'a dyn Fn(&LayerData<'_>) -> Vec<f32>;
    let cases: [(&Plugin, Native<'_>, Pattern); 3] = [
        (&obs, &obs_native, Pattern::PerRow),
        (&obs, &obs_native, Pattern::n_m(2, 4)),
        (&tree_plugin, &tree_native, Pattern::PerRow),
    ];
    for (plugin, native, pattern) in cases {
        let mut sandboxed = dense.clone();
        let pcfg = PruneConfig {
            sparsity: 0.5,
            layer_sparsity: Vec::new(),
            pattern,
            batch: 2,
            path: Default::default(),
        };
        let report = prune_model(
            &mut sandboxed,
            &PruneJob::new(&wins, &Method::Metric(plugin), &pcfg),
            &mut |_| {},
        )
        .unwrap();
        assert!(report.hessian_seconds > 0.0 && report.hessian_inputs_seconds > 0.0);
        let mut native_model = dense.clone();
        let want = native_sequential(&mut native_model, &wins, 2, pattern, native);
        let got: Vec<String> = report.layers.iter().map(|l| l.mask_hash.clone()).collect();
        assert_eq!(got, want, "{} {pattern}", plugin.info().name);
    }
    // Wanda declares neither: no Hessian is accumulated for it.
    let mut model = dense.clone();
    let pcfg = PruneConfig::uniform(0.5, Pattern::PerRow, 2);
    let r = prune_model(
        &mut model,
        &PruneJob::new(
            &wins,
            &Method::Metric(&candidate("candidates/wanda.rs")),
            &pcfg,
        ),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((r.hessian_seconds, r.hessian_inputs_seconds), (0.0, 0.0));
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
    for pattern in [Pattern::PerRow, Pattern::n_m(2, 4)] {
        let mut model = Model::random(&cfg, 9, &Device::Cpu).unwrap();
        let pcfg = PruneConfig {
            sparsity: 0.5,
            layer_sparsity: Vec::new(),
            pattern,
            batch: 4,
            path: Default::default(),
        };
        let r = prune_model(
            &mut model,
            &PruneJob::new(&wins, &Method::SparseGpt, &pcfg),
            &mut |_| {},
        )
        .unwrap();
        assert!((r.sparsity - 0.5).abs() < 0.02, "{pattern}: {}", r.sparsity);
    }
    let ria = candidate("candidates/ria.rs");
    let mut model = Model::random(&cfg, 9, &Device::Cpu).unwrap();
    let pcfg = PruneConfig {
        sparsity: 0.5,
        layer_sparsity: Vec::new(),
        pattern: Pattern::n_m(4, 8),
        batch: 4,
        path: Default::default(),
    };
    let r = prune_model(
        &mut model,
        &PruneJob::new(&wins, &Method::Metric(&ria), &pcfg),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.sparsity, 0.5);
}

#[test]
fn failing_metric_reports_its_verdict_and_layer() {
    let nan = candidate("tests/attacks/nan_output.rs");
    let cfg = ModelConfig::tiny(Arch::Llama);
    let toks = tokens(1024, cfg.vocab_size as u32);
    let wins = windows(&toks, &[0, 100], 64);
    let mut model = Model::random(&cfg, 1, &Device::Cpu).unwrap();
    let pcfg = PruneConfig {
        sparsity: 0.5,
        layer_sparsity: Vec::new(),
        pattern: Pattern::PerRow,
        batch: 2,
        path: Default::default(),
    };
    match prune_model(
        &mut model,
        &PruneJob::new(&wins, &Method::Metric(&nan), &pcfg),
        &mut |_| {},
    ) {
        Err(autoprune::pipeline::PipelineError::Metric { layer, failure }) => {
            assert_eq!((layer.block, layer.kind), (0, LayerKind::Q));
            assert_eq!(failure.kind(), "invalid_output");
        }
        other => panic!("{other:?}"),
    }
}
