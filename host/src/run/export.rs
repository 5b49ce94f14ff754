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
        // The old model moves aside before the new one takes its name, so a failed rename
        // loses neither.
        let old = self.done.with_file_name("model.old");
        if self.done.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old)
                    .with_context(|| format!("removing {}", old.display()))?;
            }
            std::fs::rename(&self.done, &old)
                .with_context(|| format!("moving {} aside", self.done.display()))?;
        }
        std::fs::rename(&self.partial, &self.done)
            .with_context(|| format!("renaming {}", self.partial.display()))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    }
}

impl Drop for ModelOut {
    fn drop(&mut self) {
        if self.partial.exists() {
            drop(self.writer.take());
            let _ = std::fs::remove_dir_all(&self.partial);
        }
    }
}
