//! The model and texts of a search (or a fidelity study): calibration, validation and
//! held-out windows, loaded once per run.

use super::cascade::SearchData;
use crate::calib::{recent_offsets, validation_offsets, window_offsets, Sampler};
use crate::model::Precision;
use crate::setup::{load_model, stream};
use std::path::PathBuf;

/// Where the validation windows of the screen and the sequential level come from. None of
/// them touches the held-out windows.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ValidationSource {
    /// Between the calibration windows, spread over the whole calibration text (every run
    /// recorded before the choice existed).
    #[default]
    Spread,
    /// The end of the calibration text, the part nearest in time to a held-out text that
    /// follows it, skipping calibration windows; the screen reads the last windows.
    Recent,
    /// The evaluation text after the held-out windows: the held-out text's era, disjoint
    /// tokens.
    EvalTail,
}

impl ValidationSource {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ValidationSource::Spread => "spread",
            ValidationSource::Recent => "recent",
            ValidationSource::EvalTail => "eval-tail",
        }
    }

    /// Every source.
    pub const ALL: [ValidationSource; 3] = [
        ValidationSource::Spread,
        ValidationSource::Recent,
        ValidationSource::EvalTail,
    ];
}

/// `n` validation windows of `seq` tokens from `source`: `calib` is the calibration stream
/// and `calib_offsets` its windows, `eval` the evaluation stream, whose first
/// `heldout_windows` windows are the held-out text.
pub fn validation_windows(
    source: ValidationSource,
    calib: &[u32],
    calib_offsets: &[usize],
    eval: &[u32],
    heldout_windows: usize,
    n: usize,
    seq: usize,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let (tokens, offsets) = match source {
        ValidationSource::Spread => (
            calib,
            validation_offsets(calib.len(), calib_offsets, n, seq)?,
        ),
        ValidationSource::Recent => (calib, recent_offsets(calib.len(), calib_offsets, n, seq)?),
        ValidationSource::EvalTail => {
            let first = heldout_windows * seq;
            let need = first + n * seq;
            anyhow::ensure!(
                need <= eval.len(),
                "the evaluation text ({} tokens) is too short for {n} validation windows of \
                 {seq} tokens after its {heldout_windows} held-out windows ({need} tokens needed)",
                eval.len()
            );
            (eval, (0..n).map(|k| first + k * seq).collect())
        }
    };
    Ok(offsets
        .iter()
        .map(|&o| tokens[o..o + seq].to_vec())
        .collect())
}

/// Where a search's (or a fidelity study's) model and text come from.
pub struct DataSpec<'a> {
    /// Model file or folder (default: SmolLM2).
    pub model: Option<&'a PathBuf>,
    /// Calibration text (default: SOTU before 1990).
    pub calib: Option<&'a PathBuf>,
    /// Held-out text (default: SOTU from 1990).
    pub eval: Option<&'a PathBuf>,
    /// Calibration windows.
    pub calib_windows: usize,
    /// Validation windows.
    pub validation_windows: usize,
    /// Where they come from.
    pub validation_source: ValidationSource,
    /// Held-out windows.
    pub heldout_windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Arithmetic of the linear layers.
    pub precision: Precision,
}

/// Load the model and texts and cut the windows of a search.
pub fn search_data(
    spec: &DataSpec<'_>,
    device: &candle_core::Device,
) -> anyhow::Result<SearchData> {
    let loaded = load_model(spec.model, device, spec.precision)?;
    let calib = stream(&loaded.tokenizer, spec.calib, "calib")?;
    let eval = stream(&loaded.tokenizer, spec.eval, "eval")?;
    let seq = spec.seq_len;
    let offsets = window_offsets(calib.tokens.len(), spec.calib_windows, seq, Sampler::Even)?;
    let val = validation_windows(
        spec.validation_source,
        &calib.tokens,
        &offsets,
        &eval.tokens,
        spec.heldout_windows,
        spec.validation_windows,
        seq,
    )?;
    let win = |o: &usize| calib.tokens[*o..*o + seq].to_vec();
    let data = SearchData {
        model: loaded.model,
        calib: offsets.iter().map(win).collect(),
        validation: val.concat(),
        validation_windows: val.len(),
        validation_source: spec.validation_source,
        heldout: eval.tokens,
        heldout_windows: spec.heldout_windows,
        seq_len: seq,
        gradient_cache: crate::build::default_cache()
            .ok()
            .map(|c| c.dir().join("gradients")),
    };
    crate::eval::eval_windows(
        &data.heldout,
        &crate::eval::PerplexityOptions {
            seq_len: seq,
            windows: spec.heldout_windows,
            batch: 2,
        },
    )?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_keeps_clear_of_calibration_and_heldout_windows() {
        let calib: Vec<u32> = (0..20_000).collect();
        let eval: Vec<u32> = (100_000..106_000).collect();
        let cal = window_offsets(calib.len(), 8, 64, Sampler::Even).unwrap();
        let cal_windows: Vec<&[u32]> = cal.iter().map(|&o| &calib[o..o + 64]).collect();
        for source in ValidationSource::ALL {
            let v = validation_windows(source, &calib, &cal, &eval, 10, 16, 64).unwrap();
            assert_eq!(v.len(), 16, "{source:?}");
            for w in &v {
                assert_eq!(w.len(), 64);
                // Tokens are positions, so disjoint windows share no token.
                assert!(cal_windows
                    .iter()
                    .all(|c| !c.contains(&w[0]) && !c.contains(&w[63])));
                assert!(w[0] >= 100_640 || w[0] < 100_000, "not a held-out window");
            }
        }
        let tail = validation_windows(ValidationSource::EvalTail, &calib, &cal, &eval, 10, 16, 64)
            .unwrap();
        assert_eq!(tail[0][0], 100_640, "right after the 10 held-out windows");
        let recent =
            validation_windows(ValidationSource::Recent, &calib, &cal, &eval, 10, 16, 64).unwrap();
        assert_eq!(recent[0][63], 19_999, "the stream's last window first");
        // Too short: the evaluation text has 93 windows of 64, 10 held out.
        let e = validation_windows(ValidationSource::EvalTail, &calib, &cal, &eval, 10, 84, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        assert!(
            validation_windows(ValidationSource::EvalTail, &calib, &cal, &eval, 10, 83, 64).is_ok()
        );
    }

    #[test]
    fn sources_are_named_as_on_the_command_line() {
        use clap::ValueEnum;
        for s in ValidationSource::ALL {
            assert_eq!(ValidationSource::from_str(s.name(), false), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
    }
}
