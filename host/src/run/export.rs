//! Writing a pruned model under `--out`: into `OUT/model.partial`, renamed `OUT/model` only
//! when complete (the folder of an earlier run is replaced whole, so no stale file stays
//! beside the new weights); removed if the run stops before, so a failed run leaves no model.

use crate::model::{HfWriter, ModelConfig, SaveDtype, Tokenizer};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// A model folder being written (see the module docs).
pub(crate) struct ModelOut {
    writer: Option<HfWriter>,
    partial: PathBuf,
    done: PathBuf,
    /// The weights are complete: from here on the folder is never deleted, whatever fails.
    complete: bool,
}

impl ModelOut {
    /// Start `OUT/model.partial` (an old one, left by a killed run, is removed first).
    pub(crate) fn create(
        out: &Path,
        config: &ModelConfig,
        dtype: SaveDtype,
    ) -> anyhow::Result<Self> {
        let partial = out.join("model.partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .with_context(|| format!("removing {}", partial.display()))?;
        }
        let writer = HfWriter::create(&partial, config, dtype)?;
        Ok(ModelOut {
            writer: Some(writer),
            partial,
            done: out.join("model"),
            complete: false,
        })
    }

    /// The weights' writer.
    pub(crate) fn writer(&mut self) -> &mut HfWriter {
        self.writer
            .as_mut()
            .expect("the writer is only taken by `finish`, which consumes self")
    }

    /// Finish the weights, add the tokenizer and put the folder in place of `OUT/model`.
    pub(crate) fn finish(mut self, tokenizer: &Tokenizer) -> anyhow::Result<()> {
        if let Some(w) = self.writer.take() {
            w.finish()?;
        }
        tokenizer.save(&self.partial.join("tokenizer.json"))?;
        self.complete = true;
        // The old model moves aside before the new one takes its name; if the new one cannot,
        // the old one moves back and the new one stays where it is, named in the error.
        let old = self.done.with_file_name("model.old");
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        let had_old = self.done.exists();
        if had_old {
            std::fs::rename(&self.done, &old)
                .with_context(|| format!("moving {} aside", self.done.display()))?;
        }
        if let Err(e) = std::fs::rename(&self.partial, &self.done) {
            if had_old {
                let _ = std::fs::rename(&old, &self.done);
            }
            return Err(e).with_context(|| {
                format!(
                    "renaming {} to {} (the pruned model is complete there)",
                    self.partial.display(),
                    self.done.display()
                )
            });
        }
        // The new model is in place: failing to delete the old one is not a failed run.
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

impl Drop for ModelOut {
    fn drop(&mut self) {
        if !self.complete {
            drop(self.writer.take());
            let _ = std::fs::remove_dir_all(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, Model};
    use candle_core::Device;

    fn write(out: &Path, seed: u64, finish: bool) {
        let m = Model::random(&ModelConfig::tiny(Arch::Llama), seed, &Device::Cpu).unwrap();
        let tj = out.with_extension("tokenizer.json");
        std::fs::write(
            &tj,
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}"#,
        )
        .unwrap();
        let tokenizer = Tokenizer::from_file(&tj).unwrap();
        let mut o = ModelOut::create(out, &m.config, SaveDtype::F32).unwrap();
        for (name, t) in m.hf_tensors() {
            o.writer().put(&name, &t).unwrap();
        }
        if finish {
            o.finish(&tokenizer).unwrap();
        }
    }

    fn embeddings(out: &Path) -> Vec<f32> {
        let m = Model::load(&out.join("model"), &Device::Cpu).unwrap();
        m.embed_tokens.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A second run replaces the first whole; an unfinished one leaves the finished model as
    /// it was and nothing of its own.
    #[test]
    fn finished_models_replace_and_unfinished_ones_vanish() {
        let root = tempfile::tempdir().unwrap();
        let dir = &root.path().join("out");
        write(dir, 1, true);
        let first = embeddings(dir);
        write(dir, 2, true);
        let second = embeddings(dir);
        assert_ne!(first, second);
        write(dir, 3, false);
        assert_eq!(embeddings(dir), second);
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["model"]);
    }
}
