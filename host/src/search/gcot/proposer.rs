//! The LLM proposer: one GCoT prompt and one chat request per proposal, with the plans in flight
//! tracked until their requests end.

use super::*;
use crate::search::archive::{NewNode, Verdict};
use crate::search::gp::Rng;
use crate::search::llm::{excerpt, parse_response, LlmClient, Message};
use crate::search::run::{Context, Proposal, ProposalFuture, Proposer};
use std::sync::{Arc, Mutex};

/// The LLM proposer: a GCoT prompt per proposal, one chat request, the answer parsed into
/// {thought, code}; every attempt is recorded with the node.
pub struct LlmProposer {
    client: LlmClient,
    templates: Arc<Templates>,
    settings: PromptSettings,
    seed: u64,
    /// Plans of the requests in flight, by proposal index.
    in_flight: Arc<Mutex<Vec<(u64, Plan)>>>,
}

/// Removes a proposal's plan from the in-flight list when its request ends (or is abandoned).
pub struct InFlight {
    list: Arc<Mutex<Vec<(u64, Plan)>>>,
    index: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut l) = self.list.lock() {
            l.retain(|(i, _)| *i != self.index);
        }
    }
}

impl LlmProposer {
    /// A proposer over `client`.
    pub fn new(
        client: LlmClient,
        templates: Templates,
        settings: PromptSettings,
        seed: u64,
    ) -> Self {
        LlmProposer {
            client,
            templates: Arc::new(templates),
            settings,
            seed,
            in_flight: Arc::default(),
        }
    }

    /// The plan and messages of proposal `ctx.index`, drawn apart from the requests in flight
    /// (which the prompt lists), and the proposal's own place in that list, held until the
    /// returned guard is dropped.
    pub fn prepare(&self, ctx: &Context) -> (Plan, Vec<Message>, InFlight) {
        let mut rng = Rng::new(crate::search::proposer::mix(self.seed, ctx.index));
        let mut list = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let others: Vec<Plan> = list.iter().map(|(_, p)| p.clone()).collect();
        let plan = plan_apart(&ctx.nodes, &ctx.edges, &self.name(), &mut rng, &others);
        let messages = build_messages(
            &self.templates,
            &ctx.nodes,
            &ctx.edges,
            &plan,
            &others,
            &self.settings,
        );
        list.push((ctx.index, plan.clone()));
        let guard = InFlight {
            list: self.in_flight.clone(),
            index: ctx.index,
        };
        (plan, messages, guard)
    }
}

impl Proposer for LlmProposer {
    fn name(&self) -> String {
        format!("llm:{}", self.client.config().model)
    }

    fn estimate_tokens(&self) -> u64 {
        // A typical GCoT prompt is 2–4K tokens; the completion is at most max_tokens.
        3000 + self.client.config().max_tokens as u64
    }

    fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.client.config().cost(prompt_tokens, completion_tokens)
    }

    fn propose(&self, ctx: Context) -> ProposalFuture {
        let name = self.name();
        let (plan, messages, guard) = self.prepare(&ctx);
        let client = self.client.clone();
        let jitter = crate::search::proposer::mix(self.seed ^ 0xA5A5, ctx.index);
        Box::pin(async move {
            let outcome = client.chat(&messages, jitter).await;
            drop(guard);
            let tokens = outcome.tokens();
            let mut node = NewNode {
                proposer: name.as_str().into(),
                operator: plan.operator.clone(),
                thought: String::new(),
                code: String::new(),
                expr: None,
                parents: Vec::new(),
                tokens,
            };
            let failure = match &outcome.result {
                Ok(c) => match parse_response(&c.content, c.truncated) {
                    Ok(p) => {
                        node.thought = p.thought;
                        node.code = p.code;
                        None
                    }
                    Err(v) => {
                        node.thought = format!("(malformed response) {}", excerpt(&c.content, 400));
                        Some(Verdict::Call(v))
                    }
                },
                Err(v) => {
                    node.thought = format!("(no response) {v}");
                    Some(Verdict::Call(v.clone()))
                }
            };
            let rationale = if node.thought.is_empty() {
                plan.operator.to_string()
            } else {
                excerpt(&node.thought.replace('\n', " "), 400)
            };
            node.parents = plan
                .parents
                .iter()
                .map(|&p| (p, rationale.clone()))
                .collect();
            let mut calls = outcome.attempts;
            for c in &mut calls {
                c.proposer = name.as_str().into();
            }
            Ok(Proposal {
                node,
                failure,
                calls,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::archive::Operator;
    use crate::search::gcot::fixtures::*;

    #[test]
    fn the_prompt_lists_the_requests_in_flight_until_they_end() {
        let (nodes, edges) = graph();
        let p = LlmProposer::new(
            LlmClient::new(crate::search::llm::LlmConfig::default()).unwrap(),
            Templates::builtin(),
            PromptSettings {
                sparsity: 0.5,
                pattern: "per output row".into(),
            },
            1,
        );
        let ctx = |index| Context {
            index,
            nodes: nodes.clone(),
            edges: edges.clone(),
        };
        let (p0, m0, g0) = p.prepare(&ctx(0));
        let (p1, m1, g1) = p.prepare(&ctx(1));
        assert_ne!(p0, p1);
        assert_ne!(m0[1].content, m1[1].content);
        let marker = "Being written right now by other requests";
        assert!(!m0[1].content.contains(marker));
        let listed = match &p0.operator {
            Operator::New => "- a new metric".to_string(),
            op => format!(
                "- {op} of {}",
                p0.parents
                    .iter()
                    .map(|i| format!("#{i}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        };
        assert!(
            m1[1]
                .content
                .contains(&format!("{marker} (do something different)\n{listed}\n")),
            "{}",
            m1[1].content
        );
        drop((g0, g1));
        let (_, m2, _g2) = p.prepare(&ctx(2));
        assert!(!m2[1].content.contains(marker));
    }
}
