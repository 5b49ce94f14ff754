//! Measuring a candidate on the model: its probe masks, pruning under each setting, and its
//! paired losses against Wanda's at a level.

use super::*;

impl Evaluator {
    /// The pruning configuration of setting `i`.
    fn prune_cfg(&self, i: usize) -> PruneConfig {
        let s = &self.cfg.objective.settings[i];
        PruneConfig {
            sparsity: s.sparsity,
            layer_sparsity: self.plans[i].clone(),
            pattern: s.pattern,
            batch: self.cfg.calib_batch,
            path: Default::default(),
        }
    }

    /// Hash of the candidate's masks on the probe layers under every setting.
    pub fn probe_hash(&self, plugin: &Plugin) -> Result<String, EvalError> {
        let mut all = String::new();
        let extras = self.dense_extras(plugin)?;
        for p in &self.probes {
            let block = extras.and_then(|e| e.get(p.block));
            let stats =
                self.dense
                    .get(p.block, p.id.kind)
                    .ok_or_else(|| HostFault::MissingStatistics {
                        layer: p.id.to_string(),
                    })?;
            let data = LayerData {
                id: p.id,
                rows: p.rows,
                cols: p.cols,
                weights: &p.weights,
                stats,
                gradient: self.grads.as_ref().and_then(|g| g.get(p.block, p.id.kind)),
                hessian_inverse_diagonal: block.and_then(|b| b.hessian_inverse_diagonal(p.id.kind)),
                output_stats: block.and_then(|b| b.output_stats(p.id.kind)),
                sparsity: self.cfg.objective.settings[0].sparsity as f32,
            };
            let scored = plugin.score(&data)?;
            for (i, s) in self.cfg.objective.settings.iter().enumerate() {
                let sparsity = self.prune_cfg(i).sparsity_of(p.id);
                let mask = Mask::from_scores(&scored.scores, p.rows, p.cols, s.pattern, sparsity)
                    .map_err(|e| match crate::pipeline::mask_error(p.id, e) {
                    crate::pipeline::PipelineError::Metric { failure, .. } => failure,
                    other => Failure::Rejected {
                        reason: format!("probe mask of {}: {other}", p.id),
                    },
                })?;
                all.push_str(&format!("{:016x}", mask.hash64()));
            }
        }
        Ok(crate::sandbox::sha256_hex(all.as_bytes())[..32].to_string())
    }

    /// The windows a level is measured on.
    pub fn windows(&self, level: Level) -> Vec<&[u32]> {
        let seq = self.data.seq_len;
        let (tokens, n) = match level {
            Level::Screen => (
                &self.data.validation,
                self.cfg.screen_windows.min(self.data.validation_windows),
            ),
            Level::Sequential => (&self.data.validation, self.data.validation_windows),
            Level::Heldout => (&self.data.heldout, self.data.heldout_windows),
        };
        tokens.chunks_exact(seq).take(n).collect()
    }

    /// Where the validation windows come from.
    pub fn validation_source(&self) -> crate::search::data::ValidationSource {
        self.data.validation_source
    }

    /// The protocol's calibration windows.
    pub fn calib_windows(&self) -> Vec<&[u32]> {
        self.data.calib.iter().map(|w| w.as_slice()).collect()
    }

    /// Prune a copy of the dense model with `plugin` under setting `i` as `level` does, and
    /// return the per-window mean NLLs on the level's windows.
    pub fn losses(&self, plugin: &Plugin, i: usize, level: Level) -> Result<Vec<f64>, EvalError> {
        let windows = self.windows(level);
        let prune = match level {
            Level::Screen => Pruning::OneShot,
            Level::Sequential | Level::Heldout => Pruning::Sequential(self.calib_windows()),
        };
        let mut out = self.prune_and_measure(plugin, i, prune, &[&windows])?;
        Ok(out.losses.pop().unwrap_or_default())
    }

    /// Prune a copy of the dense model with `plugin` under setting `i` (`prune`), then the
    /// per-window mean NLLs on each of `sets`: one pruning, several evaluations.
    pub fn prune_and_measure(
        &self,
        plugin: &Plugin,
        i: usize,
        prune: Pruning<'_>,
        sets: &[&[&[u32]]],
    ) -> Result<Measurement, EvalError> {
        let t = Instant::now();
        let mut model = self.data.model.clone();
        let cfg = self.prune_cfg(i);
        match prune {
            Pruning::OneShot => {
                let extras = self.dense_extras(plugin)?;
                prune_one_shot(
                    &mut model,
                    &self.dense,
                    plugin,
                    &cfg,
                    self.grads.as_ref(),
                    extras,
                )
                .map_err(failure_of)?;
            }
            Pruning::Sequential(wins) => {
                let method = Method::Metric(plugin);
                let job = PruneJob::new(&wins, &method, &cfg).with_gradients(self.grads.as_ref());
                prune_model(&mut model, &job, &mut |_| {}).map_err(failure_of)?;
            }
        }
        let mut out = Measurement {
            prune_seconds: t.elapsed().as_secs_f64(),
            ..Measurement::default()
        };
        for w in sets {
            let t = Instant::now();
            out.losses
                .push(window_nlls(&model, w, 2).map_err(|e| HostFault::Evaluation(e.to_string()))?);
            out.eval_seconds.push(t.elapsed().as_secs_f64());
        }
        Ok(out)
    }

    /// Wanda's losses of setting `i` at `level` (the held-out ones are computed at the first
    /// call).
    pub fn reference_losses(&self, i: usize, level: Level) -> Result<Vec<f64>, EvalError> {
        let have = {
            let r = self.reference.lock().map_err(|_| HostFault::PoisonedLock)?;
            match level {
                Level::Screen => r.screen.get(i).cloned(),
                Level::Sequential => r.sequential.get(i).cloned(),
                Level::Heldout => r.heldout.as_ref().and_then(|h| h.get(i).cloned()),
            }
        };
        if let Some(l) = have {
            return Ok(l);
        }
        // Only the held-out losses are computed lazily (at the first final ranking). Wanda
        // failing is not the candidate's doing.
        let reference = |e: &dyn std::fmt::Display| HostFault::Reference(e.to_string());
        let wanda = self.wanda().map_err(|f| reference(&f))?;
        let all: Vec<Vec<f64>> = (0..self.cfg.objective.settings.len())
            .map(|j| self.losses(&wanda, j, Level::Heldout))
            .collect::<Result<_, _>>()
            .map_err(|e| match e {
                EvalError::Guest(f) => reference(&f).into(),
                host => host,
            })?;
        let mut r = self.reference.lock().map_err(|_| HostFault::PoisonedLock)?;
        r.heldout = Some(all.clone());
        Ok(all[i].clone())
    }

    /// Measure `plugin` at `level` under every setting, paired with Wanda.
    pub fn measure(&self, plugin: &Plugin, level: Level) -> Result<LevelResult, EvalError> {
        let t = Instant::now();
        let n = self.cfg.objective.settings.len();
        let mut settings = Vec::with_capacity(n);
        let mut sum_diff: Vec<f64> = Vec::new();
        for (i, s) in self.cfg.objective.settings.iter().enumerate() {
            let cand = self.losses(plugin, i, level)?;
            let base = self.reference_losses(i, level)?;
            let p = paired(&cand, &base, i as u64);
            if sum_diff.is_empty() {
                sum_diff = vec![0.0; cand.len()];
            }
            for (acc, (c, b)) in sum_diff.iter_mut().zip(cand.iter().zip(&base)) {
                let c = if c.is_finite() { *c } else { f64::MAX / 4.0 };
                *acc += (c - b) / n as f64;
            }
            settings.push(SettingResult {
                setting: s.to_string(),
                ppl: mean_exp(&cand),
                wanda_ppl: mean_exp(&base),
                paired: p,
            });
        }
        Ok(LevelResult {
            combined: paired_diffs(&sum_diff, 7),
            settings,
            seconds: t.elapsed().as_secs_f64(),
        })
    }
}
