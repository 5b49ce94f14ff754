//! Search fixtures: the reduced protocol's flags for `autoprune search` on the real model, and
//! a search ladder on a tiny random LLaMA.

use super::builder;
use autoprune::sandbox::Policy;

/// `autoprune search` flags of a reduced protocol on the real model (seconds per candidate;
/// no gradient pass, so the gradient baselines are left out).
pub const REDUCED_SEARCH: [&str; 11] = [
    "--calib-windows",
    "2",
    "--validation-windows",
    "2",
    "--screen-windows",
    "1",
    "--eval-windows",
    "1",
    "--heldout-top",
    "1",
    "--no-gradient",
];
/// A search ladder on a tiny random LLaMA (fast) with a bubblewrap builder: `calib`
/// calibration windows, `val` validation windows (the screen reads 2), promotion past the
/// screen at ratio `promote_ratio` to Wanda; the gradient statistic is computed (cheap here).
pub fn tiny_search_evaluator(
    calib: usize,
    val: usize,
    promote_ratio: f64,
) -> autoprune::search::cascade::Evaluator {
    tiny_search_evaluator_for(calib, val, promote_ratio, "0.5".parse().unwrap())
}

/// [`tiny_search_evaluator`] for another objective.
pub fn tiny_search_evaluator_for(
    calib: usize,
    val: usize,
    promote_ratio: f64,
    objective: autoprune::search::objective::Objective,
) -> autoprune::search::cascade::Evaluator {
    use autoprune::calib::{validation_offsets, window_offsets, Sampler};
    use autoprune::model::{Arch, Model, ModelConfig};
    use autoprune::search::cascade::{Evaluator, LadderConfig, SearchData};
    let cfg = ModelConfig::tiny(Arch::Llama);
    let model = Model::random(&cfg, 21, &candle_core::Device::Cpu).unwrap();
    let vocab = cfg.vocab_size as u32;
    let toks: Vec<u32> = (0..20_000u32)
        .map(|i| (i * 7 + (i / 13) * 3 + (i * i / 97)) % vocab)
        .collect();
    let seq = 64;
    let win = |o: &usize| toks[*o..*o + seq].to_vec();
    let calib = window_offsets(toks.len(), calib, seq, Sampler::Even).unwrap();
    let val = validation_offsets(toks.len(), &calib, val, seq).unwrap();
    let data = SearchData {
        model,
        calib: calib.iter().map(win).collect(),
        validation: val.iter().flat_map(win).collect(),
        validation_windows: val.len(),
        validation_source: autoprune::search::data::ValidationSource::Spread,
        heldout: toks[..seq * val.len()].to_vec(),
        heldout_windows: val.len(),
        seq_len: seq,
        gradient_cache: None,
    };
    let ladder = LadderConfig {
        objective,
        screen_windows: 2,
        promote_ratio,
        calib_batch: 4,
        gradient: true,
    };
    Evaluator::new(
        ladder,
        data,
        builder(true),
        Policy::default(),
        None,
        &mut |_| {},
    )
    .unwrap()
}
