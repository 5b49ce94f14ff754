//! The LLM side of the search: a client for any OpenAI-compatible chat-completions endpoint
//! (real HTTP on tokio), and the parser that turns a response into {thought, code}.
//!
//! - **Streaming.** By default the answer is streamed (`stream: true`, server-sent events) and a
//!   request is abandoned when no byte arrives for `idle_timeout_s`, not when a total time is
//!   up: a slow local model that keeps producing tokens is never cut off (the total timeout is
//!   a generous cap). `usage` comes from the final chunk (`stream_options.include_usage`). A
//!   server that answers a streamed request with plain JSON is read as before.
//! - **Retries.** Connection errors, timeouts, HTTP 408/429/500/502/503/504 are retried with
//!   exponential backoff (`backoff_base · 2^k`, capped, with deterministic ±25 % jitter); a
//!   `Retry-After` header (seconds or an HTTP date) is honoured instead, up to
//!   `retry_after_max`. Anything else — 4xx, a body that is not JSON, no choices, no content —
//!   is the endpoint's answer and is not retried.
//! - **Accounting.** Tokens come from the response's `usage`; when it is missing they are
//!   estimated (4 characters a token) and the call says so.
//! - **Record.** Every attempt becomes a [`Call`](super::archive::Call): the request (model and
//!   messages as JSON), the raw response body (for a stream: the assembled text, `finish_reason`,
//!   `usage` and the final chunk as JSON), a typed verdict when it failed ([`CallVerdict`]),
//!   tokens and seconds.
//! - **Bounds.** A response body is read up to [`MAX_RESPONSE_BYTES`] and no further; a
//!   redirect is followed only to the same origin; the API key is never sent over plain
//!   `http://` to a host other than loopback unless `allow_insecure_key` says so.

mod client;
mod config;
mod parse;
mod retry;
mod stream;
mod verdict;

pub use client::{
    estimate_tokens, ChatOutcome, Completion, LlmClient, Message, MAX_TOKENS_PER_CALL,
};
pub use config::{LlmConfig, MAX_RESPONSE_BYTES};
pub use parse::{excerpt, parse_response, Parsed};
pub use retry::parse_retry_after;
pub use verdict::CallVerdict;
