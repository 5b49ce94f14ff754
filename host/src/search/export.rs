//! `runs export`: a node's code under a provenance header that says where it came from, what
//! it measured, and how to reproduce it.

use super::archive::{Archive, Node};
use super::cascade::{Detail, LevelResult};
use super::objective::Setting;
use super::session::{archive_path, RunConfig};
use crate::prune::mask::Pattern;
use anyhow::Context;
use std::path::Path;

/// An exported node.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The node's id in its run.
    pub node: i64,
    /// The header followed by the node's code.
    pub source: String,
}

/// Node `node` of the run in `dir` (its best evaluated candidate if `None`) as a source file
/// named `file` (the name the reproduce lines use).
pub fn export(dir: &Path, node: Option<i64>, file: &str) -> anyhow::Result<Exported> {
    let archive = Archive::open_existing(&archive_path(dir))?;
    let nodes = archive.nodes()?;
    let n = match node {
        Some(id) => nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("{} has no node #{id}", dir.display()))?,
        None => super::report::best(&nodes)
            .with_context(|| format!("{} has no evaluated candidate", dir.display()))?,
    };
    anyhow::ensure!(
        !n.code.trim().is_empty(),
        "node #{} has no code (it failed at {})",
        n.id,
        n.stage.as_ref().map_or("?", |s| s.as_str())
    );
    let cfg: Option<RunConfig> = archive
        .meta("config")?
        .and_then(|c| serde_json::from_str(&c).ok());
    let detail: Detail = n
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default();
    let h = header(dir, n, cfg.as_ref(), &detail, file);
    // A generated file's own `//!` header follows ours (inner doc comments must come first).
    Ok(Exported {
        node: n.id,
        source: format!("{h}{}", n.code.trim_start()),
    })
}

/// The provenance header: every line a `//!` comment, control characters blanked.
fn header(dir: &Path, n: &Node, cfg: Option<&RunConfig>, detail: &Detail, file: &str) -> String {
    let mut h = String::new();
    h.push_str(&format!(
        "//! Discovered by `autoprune search` ({}), node #{} of the run `{}`.\n",
        clean(&n.proposer.name()),
        n.id,
        clean(&dir.display().to_string())
    ));
    h.push_str(&format!(
        "//! Idea: {}\n",
        clean(&first_line(&n.thought, 200))
    ));
    if let Some(c) = cfg {
        h.push_str(&format!(
            "//! Objective: {} (ratio to Wanda's perplexity under each setting; SmolLM2-135M, SOTU-512 \
             unless the run names another model), seed {}.\n",
            c.ladder.objective, c.seed
        ));
    }
    h.push_str(&level(
        "Sequential level (validation windows)",
        &detail.sequential,
    ));
    h.push_str(&level("Held-out (the evaluation text)", &detail.heldout));
    for s in cfg.iter().flat_map(|c| &c.ladder.objective.settings) {
        h.push_str(&format!(
            "//! Reproduce: autoprune prune --metric candidates/discovered/{file} {}\n",
            prune_flags(s)
        ));
    }
    h.push_str("//!\n");
    h
}

/// One header line for a level's result (empty if the node did not reach it).
fn level(name: &str, l: &Option<LevelResult>) -> String {
    let Some(l) = l else {
        return String::new();
    };
    let (lo, hi) = l.combined.ratio_ci();
    let per: Vec<String> = l
        .settings
        .iter()
        .map(|s| {
            format!(
                "{}: ppl {:.4} vs Wanda {:.4}",
                s.setting, s.ppl, s.wanda_ppl
            )
        })
        .collect();
    format!(
        "//! {name}: {:.4} × Wanda [95 % CI {lo:.4}, {hi:.4}] over {} windows ({}).\n",
        l.combined.ratio(),
        l.combined.windows,
        per.join("; ")
    )
}

/// The prune flags of a setting (for the reproduce line).
pub fn prune_flags(s: &Setting) -> String {
    let mut f = match s.pattern {
        Pattern::NM { .. } => format!("--pattern {}", s.pattern),
        Pattern::PerRow => format!("--sparsity {}", s.sparsity),
        p => format!("--pattern {p} --sparsity {}", s.sparsity),
    };
    if !s.is_uniform() {
        f.push_str(&format!(" --allocation {}", s.allocation.name()));
    }
    f
}

/// `t` with control characters (newlines included) replaced by spaces.
fn clean(t: &str) -> String {
    t.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The first line of `s`, at most `n` characters.
fn first_line(s: &str, n: usize) -> String {
    s.lines().next().unwrap_or("").chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::Allocation;

    #[test]
    fn reproduce_flags_name_the_pattern_and_allocation() {
        let mut s: Setting = "2:4".parse().unwrap();
        assert_eq!(prune_flags(&s), "--pattern 2:4");
        s = "0.7+sdsa".parse().unwrap();
        assert!(!matches!(s.allocation, Allocation::Uniform));
        assert_eq!(prune_flags(&s), "--sparsity 0.7 --allocation sdsa");
    }

    #[test]
    fn header_text_has_no_control_characters() {
        assert_eq!(clean("a\nb\x1b[31m"), "a b [31m");
        assert_eq!(first_line("idea\nmore", 3), "ide");
    }
}
