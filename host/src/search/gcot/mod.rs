//! Graph-driven chain of thought (GCoT): the LLM proposer's prompts are walks over the run's
//! graph of attempts.
//!
//! For each proposal a [`Plan`] picks an operator and its parents from the graph (`repair` a
//! recent failure of this proposer, `crossover` two good candidates with different masks,
//! `mutate` a tournament winner, or `new`), and [`build_messages`] fills the editable templates
//! (`host/prompts/*.md`, or a folder given with `--prompts`) with:
//!
//! - the baselines measured in this run and the best candidates (scores, ideas);
//! - diverse candidates (other behaviours, spread over the score range);
//! - the parent's lineage back to its root, with the score change of every step;
//! - failed or screened siblings (other children of the same parent) with their typed verdicts;
//! - lessons distilled from the whole graph: the derivations that helped and hurt most, failure
//!   counts per stage with the latest verdict, duplicates and proxy screening;
//! - the parent's (and the other parent's) full source;
//! - the proposals other requests are writing at this moment (operator and parents), so that
//!   concurrent requests do not receive the same prompt; their plans are also drawn apart
//!   ([`plan_apart`]).
//!
//! The response is parsed into {thought, code} ([`super::llm::parse_response`]); a malformed
//! one is recorded as a failed node with its typed verdict.

#[cfg(test)]
mod fixtures;
mod plan;
mod prompt;
mod proposer;
mod templates;

pub use plan::{plan, plan_apart, Plan};
pub(crate) use prompt::endpoint_failure;
pub use prompt::{
    build_messages, estimate_prompt_tokens, lessons, seeds, PromptSettings, PROMPT_BUDGET_TOKENS,
};
pub use proposer::{InFlight, LlmProposer};
pub use templates::{fill, Templates, TEMPLATE_FILES};
