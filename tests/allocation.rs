//! Layer-wise allocation end to end: summaries of a tiny random model, OWL and SDSA plans
//! applied by the pipeline (every row pruned to its layer's allocated sparsity, the mean on
//! target), and, with the real data, `autoprune sweep` and `autoprune prune --allocation`.

mod common;

use autoprune::alloc::summary::{dense_stats, summarize};
use autoprune::alloc::{
    expand, Allocation, Bounds, Granularity, OwlParams, SdsaParams, SkewSource,
};
use autoprune::calib::{window_offsets, windows, DevicePath, Sampler};
use autoprune::model::{Arch, Model, ModelConfig};
use autoprune::pipeline::{prune_model, Method, PipelineError, PruneConfig, PruneJob};
use autoprune::prune::mask::Pattern;
use autoprune::sandbox::Policy;
use candle_core::Device;
use common::{autoprune, tokens};

#[test]
fn allocations_are_applied_exactly_and_hit_the_target() {
    let wanda = common::plugin("candidates/wanda.rs", &Policy::default()).unwrap();
    let cfg = ModelConfig::tiny(Arch::Llama);
    let dense = Model::random(&cfg, 11, &Device::Cpu).unwrap();
    let toks = tokens(4096, cfg.vocab_size as u32);
    let offsets = window_offsets(toks.len(), 4, 64, Sampler::Even).unwrap();
    let wins = windows(&toks, &offsets, 64);
    let stats = dense_stats(&dense, &wins, 2, Default::default(), &mut |_, _| {}).unwrap();
    assert_eq!(stats.blocks.len(), cfg.num_layers);
    // The dense pass on the tensor path (what a GPU runs) gives the same statistics.
    let tensor = dense_stats(&dense, &wins, 2, DevicePath::Tensor, &mut |_, _| {}).unwrap();
    for (a, b) in stats.blocks.iter().zip(&tensor.blocks) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (x, y) in a.values().zip(b.values()) {
            assert_eq!((x.tokens, &x.max_abs), (y.tokens, &y.max_abs));
            for (u, v) in x.sum_sq.iter().zip(&y.sum_sq) {
                assert!((u - v).abs() <= 1e-12 * u.abs().max(1e-30), "{u} vs {v}");
            }
        }
    }
    let target = 0.6;
    for granularity in [Granularity::Block, Granularity::Layer] {
        let units = summarize(
            &dense,
            &stats,
            Some(&wanda),
            None,
            None,
            target,
            granularity,
        )
        .unwrap();
        let per_unit = match granularity {
            Granularity::Block => 1,
            Granularity::Layer => 7,
        };
        assert_eq!(units.len(), cfg.num_layers * per_unit);
        let params: u64 = units.iter().map(|u| u.params).sum();
        let linear_params: usize = dense
            .blocks
            .iter()
            .flat_map(|b| b.linears().map(|(_, l)| l.shape().0 * l.shape().1))
            .sum();
        assert_eq!(params as usize, linear_params);
        for u in &units {
            // The Wanda plugin's scores are the host's Wanda scores.
            assert!((u.scores.mean - u.wanda.mean).abs() <= 1e-6 * u.wanda.mean);
            assert!((u.scores.skewness - u.wanda.skewness).abs() < 1e-6);
            assert!(u.weights.mean > 0.0 && u.weights.count == u.params);
        }
        for rule in [
            Allocation::Owl(OwlParams {
                m: 3.0,
                lambda: 0.1,
            }),
            Allocation::Sdsa(SdsaParams {
                temperature: 0.5,
                delta: 0.15,
                source: SkewSource::Scores,
            }),
        ] {
            let s = rule.allocate(target, &units).unwrap();
            assert_eq!(s, rule.allocate(target, &units).unwrap(), "deterministic");
            let b: Bounds = rule.bounds(target);
            assert!(s.iter().all(|&x| x >= b.min - 1e-12 && x <= b.max + 1e-12));
            let layer_sparsity = expand(&units, &s, cfg.num_layers);
            let mut model = dense.clone();
            let pcfg = PruneConfig {
                sparsity: target,
                layer_sparsity: layer_sparsity.clone(),
                pattern: Pattern::PerRow,
                batch: 2,
                path: Default::default(),
            };
            let report = prune_model(
                &mut model,
                &PruneJob::new(&wins, &Method::Metric(&wanda), &pcfg),
                &mut |_| {},
            )
            .unwrap();
            let mut pruned_sum = 0.0;
            let mut total = 0.0;
            for (l, &want) in report.layers.iter().zip(&layer_sparsity) {
                assert_eq!(l.target, want);
                let per_row = (l.cols as f64 * want).floor() as usize;
                assert_eq!(l.pruned, l.rows * per_row, "{:?} {want}", l.kind);
                pruned_sum += want * (l.rows * l.cols) as f64;
                total += (l.rows * l.cols) as f64;
            }
            // The allocation's parameter-weighted mean is the target, to a weight per unit.
            assert!((pruned_sum - target * total).abs() <= units.len() as f64);
            // Not uniform: the rule did move some units.
            assert!(s.iter().any(|&x| (x - target).abs() > 1e-3), "{s:?}");
        }
    }
}

#[test]
fn allocation_with_n_m_or_wrong_length_is_refused() {
    let wanda = common::plugin("candidates/wanda.rs", &Policy::default()).unwrap();
    let cfg = ModelConfig::tiny(Arch::Llama);
    let mut model = Model::random(&cfg, 3, &Device::Cpu).unwrap();
    let toks = tokens(2048, cfg.vocab_size as u32);
    let wins = windows(&toks, &[0, 512], 64);
    for (pattern, n) in [
        (Pattern::n_m(2, 4), 7 * cfg.num_layers),
        (Pattern::PerRow, 3),
    ] {
        let pcfg = PruneConfig {
            sparsity: 0.5,
            layer_sparsity: vec![0.5; n],
            pattern,
            batch: 2,
            path: Default::default(),
        };
        match prune_model(
            &mut model,
            &PruneJob::new(&wins, &Method::Metric(&wanda), &pcfg),
            &mut |_| {},
        ) {
            Err(PipelineError::Config(_)) => {}
            other => panic!(
                "expected a configuration error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

/// A reduced sweep on the real SmolLM2 (2 calibration windows, 1 evaluation window): three
/// allocations at one sparsity, the table and the plot; a rerun skips every finished cell.
#[test]
fn sweep_on_real_smollm2_writes_table_and_plot_and_resumes() {
    common::require_real_data!();
    let out = tempfile::tempdir().unwrap();
    let run = || {
        autoprune()
            .args(["sweep", "--metric"])
            .arg(common::workspace().join("candidates/wanda.rs"))
            .args([
                "--sparsities",
                "0.7",
                "--allocations",
                "uniform,owl,sdsa",
                "--calib-windows",
                "2",
                "--eval-windows",
                "1",
                "--out",
            ])
            .arg(out.path())
            .output()
            .unwrap()
    };
    let first = run();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    assert_eq!(err.matches("ppl ").count(), 3, "{err}");
    let cells = std::fs::read_to_string(out.path().join("cells.jsonl")).unwrap();
    assert_eq!(cells.lines().count(), 4); // dense + 3 cells
    let table = std::fs::read_to_string(out.path().join("table.md")).unwrap();
    for a in ["| uniform |", "| owl M=5 λ=0.08 |", "| sdsa T="] {
        assert!(table.contains(a), "{table}");
    }
    let svg = std::fs::read_to_string(out.path().join("sweep.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 3);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("table.json")).unwrap()).unwrap();
    let cells = json.as_array().unwrap();
    let ppl = |fam: &str| {
        cells.iter().find(|c| c["family"] == fam).unwrap()["ppl"]
            .as_f64()
            .unwrap()
    };
    assert!(ppl("uniform").is_finite() && ppl("owl").is_finite() && ppl("sdsa").is_finite());
    assert!(ppl("dense") < ppl("uniform"));
    // Non-uniform cells record their unit sparsities (30 blocks), uniform ones none.
    for c in cells
        .iter()
        .filter(|c| c["family"] == "owl" || c["family"] == "sdsa")
    {
        assert_eq!(c["unit_sparsity"].as_array().unwrap().len(), 30);
    }
    // Rerun: nothing left to do.
    let again = run();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert_eq!(err.matches("ppl ").count(), 0, "{err}");
    let cells = std::fs::read_to_string(out.path().join("cells.jsonl")).unwrap();
    assert_eq!(cells.lines().count(), 4);
}

/// `prune --allocation owl` records its plan in the report; N:M with an allocation is refused.
#[test]
fn prune_with_owl_allocation_reports_the_plan() {
    common::require_real_data!();
    let base = |extra: &[&str]| {
        autoprune()
            .args(["prune", "--metric"])
            .arg(common::workspace().join("candidates/wanda.rs"))
            .args([
                "--sparsity",
                "0.7",
                "--calib-windows",
                "2",
                "--eval-windows",
                "1",
                "--skip-dense",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = base(&["--allocation", "owl"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let units = r["allocation"]["units"].as_array().unwrap();
    assert_eq!(units.len(), 30);
    let s: Vec<f64> = units
        .iter()
        .map(|u| u["sparsity"].as_f64().unwrap())
        .collect();
    let mean = s.iter().sum::<f64>() / 30.0;
    assert!((mean - 0.7).abs() < 1e-9, "{mean}");
    let spread =
        s.iter().cloned().fold(f64::MIN, f64::max) - s.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        (spread - 0.16).abs() < 1e-9,
        "OWL spreads over 2λ: {spread}"
    );
    // Each layer's recorded target is its block's allocation.
    let layers = r["layers"].as_array().unwrap();
    for l in layers {
        let b = l["block"].as_u64().unwrap() as usize;
        assert_eq!(l["target"].as_f64().unwrap(), s[b]);
    }
    let o = base(&["--allocation", "sdsa", "--pattern", "2:4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unstructured"));
}

/// An allocator plugin through `prune`: the OWL candidate plans what the built-in OWL plans;
/// a plugin whose mean is wrong stops the run with its typed verdict and exit status 1.
#[test]
fn prune_with_an_allocator_plugin_matches_builtin_owl() {
    common::require_real_data!();
    let plan = |allocation: &str| {
        let o = autoprune()
            .args(["prune", "--metric"])
            .arg(common::workspace().join("candidates/wanda.rs"))
            .args([
                "--sparsity",
                "0.7",
                "--calib-windows",
                "2",
                "--plan-only",
                "--json",
                "--allocation",
                allocation,
            ])
            .output()
            .unwrap();
        (
            o.status.code(),
            o.stdout,
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let unit_sparsities = |out: &[u8]| -> Vec<f64> {
        let v: serde_json::Value = serde_json::from_slice(out).unwrap();
        v["units"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["sparsity"].as_f64().unwrap())
            .collect()
    };
    let (code, builtin, err) = plan("owl");
    assert_eq!(code, Some(0), "{err}");
    let plugin_src = common::workspace().join("candidates/owl_alloc.rs");
    let (code, plugin, err) = plan(plugin_src.to_str().unwrap());
    assert_eq!(code, Some(0), "{err}");
    let (a, b) = (unit_sparsities(&builtin), unit_sparsities(&plugin));
    assert_eq!(a.len(), 30);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
    }
    let bad = common::workspace().join("tests/attacks/alloc_wrong_mean.rs");
    let (code, out, err) = plan(bad.to_str().unwrap());
    assert_eq!(code, Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["failure"]["reason"], "bad_allocation", "{v}");
}
