//! Automated metric search: proposers (an LLM over any OpenAI-compatible endpoint with
//! graph-driven prompts, or a local llama.cpp server started for the run, symbolic GP, random sampling), the evaluation cascade, the SQLite
//! archive, the loop that ties them together, and the HTML report (`autoprune search`,
//! `autoprune runs show`).

pub mod archive;
pub mod cascade;
pub mod data;
pub mod export;
pub mod fidelity;
pub mod funnel;
pub mod gcot;
pub mod gp;
pub mod llm;
pub mod local_server;
pub mod objective;
pub mod paired;
pub mod proposer;
pub mod records;
pub mod remote;
pub mod report;
pub mod run;
pub mod session;
