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
//! - **Record.** Every attempt becomes a [`Call`]: the request (model and messages as JSON), the
//!   raw response body (for a stream: the assembled text, `finish_reason`, `usage` and the final
//!   chunk as JSON), a typed verdict when it failed ([`CallVerdict`]), tokens and seconds.
//! - **Bounds.** A response body is read up to [`MAX_RESPONSE_BYTES`] and no further; a
//!   redirect is followed only to the same origin; the API key is never sent over plain
//!   `http://` to a host other than loopback unless `allow_insecure_key` says so.

use super::archive::Call;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Settings of the endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlmConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// Model name sent with every request.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Completion tokens per request.
    pub max_tokens: u32,
    /// Seconds before one request is abandoned (and retried).
    pub timeout_s: f64,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff, seconds.
    pub backoff_base_s: f64,
    /// Largest backoff, seconds.
    pub backoff_max_s: f64,
    /// Largest `Retry-After` honoured, seconds; a longer one ends the call.
    pub retry_after_max_s: f64,
    /// Price per 1000 prompt tokens (any currency; 0 = free).
    pub price_prompt_per_1k: f64,
    /// Price per 1000 completion tokens.
    pub price_completion_per_1k: f64,
    /// Stream the answer (server-sent events) and time out on silence (`idle_timeout_s`).
    #[serde(default = "yes")]
    pub stream: bool,
    /// Seconds without a single byte after which a streamed request is abandoned (and retried).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: f64,
    /// Ask for llama.cpp's prompt-progress chunks (`return_progress`), so that a long prompt
    /// being read does not look like silence. Only for llama.cpp servers (`--llm local`).
    #[serde(default)]
    pub prompt_progress: bool,
    /// Send the API key over plain `http://` to a host that is not loopback (off by default:
    /// anyone on the path reads it).
    #[serde(default)]
    pub allow_insecure_key: bool,
}

fn yes() -> bool {
    true
}

fn default_idle_timeout() -> f64 {
    120.0
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: "http://127.0.0.1:8080/v1".into(),
            model: "default".into(),
            api_key_env: None,
            temperature: 0.8,
            max_tokens: 2048,
            timeout_s: 120.0,
            max_retries: 4,
            backoff_base_s: 1.0,
            backoff_max_s: 30.0,
            retry_after_max_s: 300.0,
            price_prompt_per_1k: 0.0,
            price_completion_per_1k: 0.0,
            stream: true,
            idle_timeout_s: default_idle_timeout(),
            prompt_progress: false,
            allow_insecure_key: false,
        }
    }
}

/// Largest response body read, streamed or not, in bytes. Why 8 MiB: a completion of `max_tokens` tokens is a
/// few tens of KiB (even 100,000 tokens are ≈ 400 KiB of JSON); a hostile endpoint streaming
/// gigabytes must not fill the host's memory.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// Redirects followed, all to the request's own origin. Why 3: a proxy adding a trailing slash
/// needs one; more is a loop.
const MAX_REDIRECTS: usize = 3;

/// Whether `url`'s host is the loopback interface (where plain HTTP never leaves the machine).
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Same scheme, host and port.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl LlmConfig {
    /// Cost of a call with these token counts.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.price_prompt_per_1k
            + completion_tokens as f64 * self.price_completion_per_1k)
            / 1000.0
    }
}

/// Why one attempt (or the parse of its answer) failed: recorded as JSON with the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum CallVerdict {
    /// A non-success HTTP status.
    #[error("HTTP {status}: {excerpt}")]
    HttpStatus {
        /// The status code.
        status: u16,
        /// The start of the body.
        excerpt: String,
    },
    /// No response within the timeout.
    #[error("no response within {seconds} s")]
    Timeout {
        /// The timeout.
        seconds: f64,
    },
    /// A streamed answer fell silent: no byte for `seconds`.
    #[error("no byte for {seconds} s (after {received} bytes)")]
    IdleTimeout {
        /// The idle timeout.
        seconds: f64,
        /// Bytes received before the silence.
        received: usize,
    },
    /// The server reported an error inside the stream.
    #[error("the server reported an error mid-stream: {excerpt}")]
    StreamError {
        /// The start of the error event.
        excerpt: String,
    },
    /// Could not connect, or the connection broke.
    #[error("connection failed: {message}")]
    Connection {
        /// What failed.
        message: String,
    },
    /// The body is not the JSON of a chat completion.
    #[error("malformed JSON response: {message}")]
    MalformedJson {
        /// The parser's message.
        message: String,
        /// The start of the body.
        excerpt: String,
    },
    /// `choices` is missing or empty.
    #[error("the response has no choices")]
    EmptyChoices,
    /// The first choice has no text content.
    #[error("the response's message has no content")]
    EmptyContent,
    /// The content holds no Rust code block.
    #[error("no ```rust code block in the response{}", if *truncated { " (cut off at max_tokens)" } else { "" })]
    NoCode {
        /// `finish_reason` was `length`.
        truncated: bool,
    },
    /// The body, or a streamed answer, passed [`MAX_RESPONSE_BYTES`] (reading stopped there).
    #[error("the response body passed {limit} bytes; reading stopped")]
    ResponseTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The endpoint asked to wait longer than allowed.
    #[error("Retry-After of {seconds} s exceeds the {max} s allowed")]
    RetryAfterTooLong {
        /// Requested wait.
        seconds: f64,
        /// Allowed wait.
        max: f64,
    },
}

impl CallVerdict {
    /// The verdict as JSON (what the archive stores).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"verdict\":\"{self}\"}}"))
    }

    /// Whether another attempt may succeed.
    fn retryable(&self) -> bool {
        match self {
            CallVerdict::HttpStatus { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            CallVerdict::Timeout { .. }
            | CallVerdict::IdleTimeout { .. }
            | CallVerdict::Connection { .. } => true,
            _ => false,
        }
    }
}

/// A chat message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A successful completion.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The first choice's text.
    pub content: String,
    /// `finish_reason == "length"`.
    pub truncated: bool,
}

/// The outcome of one logical request: every attempt, and the completion or the last verdict.
#[derive(Debug)]
pub struct ChatOutcome {
    /// One record per HTTP attempt, in order.
    pub attempts: Vec<Call>,
    /// The completion, or why there is none.
    pub result: Result<Completion, CallVerdict>,
}

impl ChatOutcome {
    /// Tokens over every attempt.
    pub fn tokens(&self) -> u64 {
        self.attempts
            .iter()
            .map(|c| c.prompt_tokens + c.completion_tokens)
            .sum()
    }
}

/// An OpenAI-compatible chat-completions client.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    cfg: LlmConfig,
    key: Option<String>,
    url: String,
}

/// The most tokens one call may report (prompt and completion each); larger counts are capped.
pub const MAX_TOKENS_PER_CALL: u64 = 100_000_000;

/// Rough token count of a text (4 characters a token), for budgets and missing `usage`.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

impl LlmClient {
    /// A client for `cfg`; reads the API key from the named environment variable (an unset
    /// variable is an error: a key that silently goes missing makes every call a 401).
    pub fn new(cfg: LlmConfig) -> anyhow::Result<Self> {
        let key = match &cfg.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!("the API key variable {var} is not set (or not UTF-8)")
            })?),
            None => None,
        };
        for (name, v) in [
            ("timeout", cfg.timeout_s),
            ("idle timeout", cfg.idle_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                anyhow::bail!("the LLM {name} must be in (0, 86400] seconds (got {v})");
            }
        }
        for (name, v) in [
            ("temperature", cfg.temperature),
            ("backoff base", cfg.backoff_base_s),
            ("backoff max", cfg.backoff_max_s),
            ("Retry-After max", cfg.retry_after_max_s),
            ("prompt price", cfg.price_prompt_per_1k),
            ("completion price", cfg.price_completion_per_1k),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                anyhow::bail!("the LLM {name} must be a finite number ≥ 0 (got {v})");
            }
        }
        for (name, v) in [
            ("backoff base", cfg.backoff_base_s),
            ("backoff max", cfg.backoff_max_s),
            ("Retry-After max", cfg.retry_after_max_s),
        ] {
            if v > 86_400.0 {
                anyhow::bail!("the LLM {name} must be at most 86400 s (got {v})");
            }
        }
        if !(cfg.base_url.starts_with("http://") || cfg.base_url.starts_with("https://")) {
            anyhow::bail!(
                "the LLM base URL must start with http:// or https:// (got {:?})",
                cfg.base_url
            );
        }
        let base = reqwest::Url::parse(&cfg.base_url).map_err(|e| {
            anyhow::anyhow!("the LLM base URL {:?} is not a URL: {e}", cfg.base_url)
        })?;
        if key.is_some()
            && base.scheme() == "http"
            && !is_loopback(&base)
            && !cfg.allow_insecure_key
        {
            anyhow::bail!(
                "refusing to send the API key over plain http:// to {} (anyone on the way could read it): use https://, or pass --allow-insecure-key",
                base.host_str().unwrap_or("?")
            );
        }
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let first = attempt.previous().first().cloned();
            match first {
                Some(f)
                    if attempt.previous().len() <= MAX_REDIRECTS
                        && same_origin(&f, attempt.url()) =>
                {
                    attempt.follow()
                }
                _ => attempt.stop(),
            }
        });
        let http = reqwest::Client::builder()
            .redirect(redirects)
            .timeout(Duration::from_secs_f64(cfg.timeout_s))
            .connect_timeout(Duration::from_secs_f64(cfg.timeout_s.clamp(0.001, 30.0)))
            .user_agent(concat!("autoprune/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let url = format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'));
        Ok(LlmClient {
            http,
            cfg,
            key,
            url,
        })
    }

    /// The settings.
    pub fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    /// One logical request, with retries. `jitter_seed` makes the backoff jitter reproducible.
    pub async fn chat(&self, messages: &[Message], jitter_seed: u64) -> ChatOutcome {
        let mut body = serde_json::json!({
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        });
        if self.cfg.stream {
            body["stream"] = true.into();
            body["stream_options"] = serde_json::json!({ "include_usage": true });
            if self.cfg.prompt_progress {
                body["return_progress"] = true.into();
            }
        }
        let prompt = serde_json::to_string_pretty(&body).unwrap_or_default();
        let prompt_estimate = messages.iter().map(|m| estimate_tokens(&m.content)).sum();
        let mut attempts = Vec::new();
        let mut attempt = 0u32;
        loop {
            let t = Instant::now();
            let (call, result, retry_after) = self.attempt(&body, &prompt, prompt_estimate).await;
            let mut call = call;
            call.seconds = t.elapsed().as_secs_f64();
            attempts.push(call);
            let verdict = match result {
                Ok(c) => {
                    return ChatOutcome {
                        attempts,
                        result: Ok(c),
                    }
                }
                Err(v) => v,
            };
            if !verdict.retryable() || attempt >= self.cfg.max_retries {
                return ChatOutcome {
                    attempts,
                    result: Err(verdict),
                };
            }
            let wait = match retry_after {
                Some(s) if s > self.cfg.retry_after_max_s => {
                    let v = CallVerdict::RetryAfterTooLong {
                        seconds: s,
                        max: self.cfg.retry_after_max_s,
                    };
                    if let Some(last) = attempts.last_mut() {
                        last.error = Some(v.to_json());
                    }
                    return ChatOutcome {
                        attempts,
                        result: Err(v),
                    };
                }
                Some(s) => s,
                None => backoff(&self.cfg, attempt, jitter_seed),
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            attempt += 1;
        }
    }

    /// The verdict of a request that got no (complete) answer.
    fn transport_verdict(&self, e: &reqwest::Error) -> CallVerdict {
        if e.is_timeout() {
            CallVerdict::Timeout {
                seconds: self.cfg.timeout_s,
            }
        } else {
            CallVerdict::Connection {
                message: error_chain(e),
            }
        }
    }

    /// One HTTP attempt: its record, its result, and the server's `Retry-After` (seconds).
    async fn attempt(
        &self,
        body: &serde_json::Value,
        prompt: &str,
        prompt_estimate: u64,
    ) -> (Call, Result<Completion, CallVerdict>, Option<f64>) {
        let mut call = Call {
            proposer: format!("llm:{}", self.cfg.model),
            prompt: prompt.to_string(),
            ..Call::default()
        };
        let mut req = self.http.post(&self.url).json(body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let fail = |mut call: Call, v: CallVerdict, ra: Option<f64>| {
            call.error = Some(v.to_json());
            (call, Err(v), ra)
        };
        // A streamed request may wait for its headers only as long as it may stay silent
        // (llama.cpp sends them when it starts on the prompt, or at once with prompt progress).
        let sent = if self.cfg.stream {
            match tokio::time::timeout(self.idle(), req.send()).await {
                Ok(r) => r,
                Err(_) => return fail(call, self.idle_verdict(0), None),
            }
        } else {
            req.send().await
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return fail(call, self.transport_verdict(&e), None),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let event_stream = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if status.is_success() && event_stream {
            let (call, result) = self.read_stream(call, &mut resp, prompt_estimate).await;
            return (call, result, None);
        }
        let text = match self.read_body(&mut resp).await {
            Ok(t) => t,
            Err(v) => return fail(call, v, retry_after),
        };
        call.response = Some(text.clone());
        if !status.is_success() {
            let v = CallVerdict::HttpStatus {
                status: status.as_u16(),
                excerpt: excerpt(&text, 300),
            };
            return fail(call, v, retry_after);
        }
        let parsed: ChatResponse = match serde_json::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                // Charge what the server may have spent: the prompt, estimated.
                call.prompt_tokens = prompt_estimate;
                let v = CallVerdict::MalformedJson {
                    message: e.to_string(),
                    excerpt: excerpt(&text, 300),
                };
                return fail(call, v, None);
            }
        };
        let content = parsed
            .choices
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| (c.message.as_ref().and_then(|m| m.content.clone()), c));
        let text_out = content.as_ref().and_then(|(c, _)| c.as_deref());
        charge(&mut call, parsed.usage.as_ref(), prompt_estimate, text_out);
        match content {
            None => fail(call, CallVerdict::EmptyChoices, None),
            Some((None, _)) => fail(call, CallVerdict::EmptyContent, None),
            Some((Some(c), _)) if c.trim().is_empty() => {
                fail(call, CallVerdict::EmptyContent, None)
            }
            Some((Some(c), choice)) => (
                call,
                Ok(Completion {
                    content: c,
                    truncated: choice.finish_reason.as_deref() == Some("length"),
                }),
                None,
            ),
        }
    }

    fn idle(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.idle_timeout_s)
    }

    fn idle_verdict(&self, received: usize) -> CallVerdict {
        CallVerdict::IdleTimeout {
            seconds: self.cfg.idle_timeout_s,
            received,
        }
    }

    /// The next piece of a body: `Ok(None)` at its end; silence longer than the idle timeout
    /// (when streaming) is a verdict.
    async fn next_chunk(
        &self,
        resp: &mut reqwest::Response,
        received: usize,
    ) -> Result<Option<Vec<u8>>, CallVerdict> {
        let next = if self.cfg.stream {
            match tokio::time::timeout(self.idle(), resp.chunk()).await {
                Ok(r) => r,
                Err(_) => return Err(self.idle_verdict(received)),
            }
        } else {
            resp.chunk().await
        };
        match next {
            Ok(c) => Ok(c.map(|b| b.to_vec())),
            Err(e) => Err(self.transport_verdict(&e)),
        }
    }

    /// A whole (non-streamed) body as text.
    /// Read up to [`MAX_RESPONSE_BYTES`] and no further (a declared length over it is refused
    /// before reading).
    async fn read_body(&self, resp: &mut reqwest::Response) -> Result<String, CallVerdict> {
        let too_large = CallVerdict::ResponseTooLarge {
            limit: MAX_RESPONSE_BYTES as u64,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large);
        }
        let mut bytes = Vec::new();
        while let Some(c) = self.next_chunk(resp, bytes.len()).await? {
            if bytes.len() + c.len() > MAX_RESPONSE_BYTES {
                return Err(too_large);
            }
            bytes.extend_from_slice(&c);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Read a server-sent-event stream of chat-completion chunks into one completion.
    async fn read_stream(
        &self,
        mut call: Call,
        resp: &mut reqwest::Response,
        prompt_estimate: u64,
    ) -> (Call, Result<Completion, CallVerdict>) {
        let mut sse = SseAssembler::default();
        let mut received = 0usize;
        let outcome = loop {
            let chunk = match self.next_chunk(resp, received).await {
                Ok(Some(c)) => c,
                Ok(None) => break sse.finish(),
                Err(v) => break Err(v),
            };
            received += chunk.len();
            if received > MAX_RESPONSE_BYTES {
                break Err(CallVerdict::ResponseTooLarge {
                    limit: MAX_RESPONSE_BYTES as u64,
                });
            }
            if let Err(v) = sse.feed(&chunk) {
                break Err(v);
            }
            if sse.done {
                break sse.finish();
            }
        };
        call.response = Some(sse.record());
        charge(
            &mut call,
            sse.usage.as_ref(),
            prompt_estimate,
            Some(&sse.content),
        );
        match outcome {
            Ok(c) => (call, Ok(c)),
            Err(v) => {
                call.error = Some(v.to_json());
                (call, Err(v))
            }
        }
    }
}

/// Token counts of a call. Counts from the body are untrusted: each is capped, and a `usage`
/// that reports nothing falls back to the estimate (so a budget cannot be dodged by
/// `"usage": {}`).
fn charge(call: &mut Call, usage: Option<&Usage>, prompt_estimate: u64, content: Option<&str>) {
    let cap = |x: Option<u64>| x.unwrap_or(0).min(MAX_TOKENS_PER_CALL);
    match usage {
        Some(u) if cap(u.prompt_tokens) + cap(u.completion_tokens) > 0 => {
            call.prompt_tokens = cap(u.prompt_tokens);
            call.completion_tokens = cap(u.completion_tokens);
        }
        Some(u) if cap(u.total_tokens) > 0 => call.prompt_tokens = cap(u.total_tokens),
        _ => {
            call.prompt_tokens = prompt_estimate.min(MAX_TOKENS_PER_CALL);
            call.completion_tokens = content.map_or(0, estimate_tokens).min(MAX_TOKENS_PER_CALL);
        }
    }
}

/// Assembles a chat-completion event stream (`data: {json}` events, `data: [DONE]` at the end).
#[derive(Default)]
struct SseAssembler {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// `data:` lines of the event being read.
    data: Vec<String>,
    content: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    /// The last event's data (llama.cpp puts `usage` and `timings` there).
    final_chunk: Option<String>,
    events: usize,
    done: bool,
}

impl SseAssembler {
    /// Take more bytes; complete events are applied at once.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), CallVerdict> {
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let raw = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&raw);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                self.dispatch()?;
            } else if let Some(d) = line.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            } else if line.starts_with("error") {
                return Err(CallVerdict::StreamError {
                    excerpt: excerpt(line, 300),
                });
            }
            // `event:`, `id:`, `retry:` and `:` comments carry nothing we need.
            if self.done {
                break;
            }
        }
        Ok(())
    }

    /// Apply the event whose `data:` lines were collected.
    fn dispatch(&mut self) -> Result<(), CallVerdict> {
        if self.data.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.data).join("\n");
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        self.events += 1;
        let chunk: StreamChunk =
            serde_json::from_str(&data).map_err(|e| CallVerdict::MalformedJson {
                message: e.to_string(),
                excerpt: excerpt(&data, 300),
            })?;
        if let Some(e) = chunk.error {
            return Err(CallVerdict::StreamError {
                excerpt: excerpt(&e.to_string(), 300),
            });
        }
        for c in chunk
            .choices
            .iter()
            .flatten()
            .filter(|c| c.index.unwrap_or(0) == 0)
        {
            if let Some(t) = c.delta.as_ref().and_then(|d| d.content.as_deref()) {
                self.content.push_str(t);
            }
            if c.finish_reason.is_some() {
                self.finish_reason.clone_from(&c.finish_reason);
            }
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        self.final_chunk = Some(data);
        Ok(())
    }

    /// The completion, once the stream has ended.
    fn finish(&mut self) -> Result<Completion, CallVerdict> {
        // A last event not followed by a blank line still counts.
        if !self.line.is_empty() {
            self.feed(b"\n")?;
        }
        self.dispatch()?;
        if !self.done && self.finish_reason.is_none() {
            return Err(CallVerdict::Connection {
                message: "the stream ended before the answer was complete".into(),
            });
        }
        if self.events == 0 {
            return Err(CallVerdict::EmptyChoices);
        }
        if self.content.trim().is_empty() {
            return Err(CallVerdict::EmptyContent);
        }
        Ok(Completion {
            content: self.content.clone(),
            truncated: self.finish_reason.as_deref() == Some("length"),
        })
    }

    /// What the archive records of a streamed answer: the assembled text, `finish_reason`,
    /// `usage`, the number of events and the final chunk (parsed when it is JSON).
    fn record(&self) -> String {
        let last = self
            .final_chunk
            .as_deref()
            .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap_or_else(|_| d.into()));
        serde_json::json!({
            "stream": true,
            "content": self.content,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "events": self.events,
            "final_chunk": last,
        })
        .to_string()
    }
}

#[derive(Deserialize)]
struct StreamChunk {
    choices: Option<Vec<StreamChoice>>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StreamChoice {
    index: Option<u64>,
    delta: Option<ChoiceMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Option<Vec<Choice>>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The first `n` characters of `s` (with an ellipsis when cut).
pub fn excerpt(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

/// Backoff before retry `attempt` (0-based): `base · 2^attempt`, capped, ±25 % jitter derived
/// from `seed` and `attempt`.
fn backoff(cfg: &LlmConfig, attempt: u32, seed: u64) -> f64 {
    let raw = (cfg.backoff_base_s * 2f64.powi(attempt.min(30) as i32)).min(cfg.backoff_max_s);
    let mut z = seed ^ (attempt as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    (raw * (0.75 + 0.5 * unit)).max(0.0)
}

/// `Retry-After`: delta-seconds, or an HTTP date (IMF-fixdate) converted to seconds from now.
pub fn parse_retry_after(v: &str) -> Option<f64> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then_some(s);
    }
    let at = parse_http_date(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some((at - now).max(0.0))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → Unix seconds.
fn parse_http_date(v: &str) -> Option<f64> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || !(0..24).contains(&hms[0])
        || !(0..60).contains(&hms[1])
        || !(0..=60).contains(&hms[2])
    {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]) as f64)
}

/// What a response proposes.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The analysis and hypothesis, in words.
    pub thought: String,
    /// The full candidate source.
    pub code: String,
}

/// Parse a response into {thought, code}.
///
/// The code is the first fenced block tagged `rust` (or untagged) that defines a metric
/// (`export_metric!`), else the first `rust` block; the thought is the text before it (a
/// leading `Thought:`/`## Thought` heading is dropped). A JSON object `{"thought", "code"}`
/// is accepted too.
pub fn parse_response(content: &str, truncated: bool) -> Result<Parsed, CallVerdict> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(content.trim()) {
        if let (Some(t), Some(c)) = (v["thought"].as_str(), v["code"].as_str()) {
            if !c.trim().is_empty() {
                return Ok(Parsed {
                    thought: t.trim().to_string(),
                    code: c.to_string(),
                });
            }
        }
    }
    let blocks = fenced_blocks(content);
    let pick = blocks
        .iter()
        .find(|b| (b.lang == "rust" || b.lang.is_empty()) && b.body.contains("export_metric!"))
        .or_else(|| blocks.iter().find(|b| b.lang == "rust" || b.lang == "rs"));
    let Some(b) = pick else {
        return Err(CallVerdict::NoCode { truncated });
    };
    let before = &content[..b.start];
    let mut thought = before.trim().to_string();
    for h in [
        "## Thought",
        "# Thought",
        "Thought:",
        "**Thought**",
        "THOUGHT:",
    ] {
        if let Some(rest) = thought.strip_prefix(h) {
            thought = rest.trim().to_string();
        }
    }
    // Drop a trailing "## Code" heading.
    for h in ["## Code", "# Code", "Code:", "**Code**", "CODE:"] {
        if let Some(rest) = thought.strip_suffix(h) {
            thought = rest.trim().to_string();
        }
    }
    Ok(Parsed {
        thought,
        code: b.body.to_string(),
    })
}

struct Block<'a> {
    lang: String,
    body: &'a str,
    start: usize,
}

/// Closed ``` fenced blocks of a markdown text (an unterminated block is not a block).
fn fenced_blocks(text: &str) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(open) = text[pos..].find("```") {
        let start = pos + open;
        let after = start + 3;
        let line_end = text[after..].find('\n').map_or(text.len(), |i| after + i);
        let lang = text[after..line_end].trim().to_lowercase();
        let body_start = (line_end + 1).min(text.len());
        let Some(close) = text[body_start..].find("```") else {
            break;
        };
        let body_end = body_start + close;
        out.push(Block {
            lang,
            body: &text[body_start..body_end],
            start,
        });
        pos = body_end + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thought_and_code() {
        let r = "## Thought\nUse the column norm squared.\n\n## Code\n```rust\nuse x;\nexport_metric!(M);\n```\ntrailing";
        let p = parse_response(r, false).unwrap();
        assert_eq!(p.thought, "Use the column norm squared.");
        assert_eq!(p.code, "use x;\nexport_metric!(M);\n");
    }

    #[test]
    fn prefers_the_block_that_exports_a_metric() {
        let r = "idea\n```rust\nfn helper() {}\n```\n```rust\nexport_metric!(A);\n```";
        assert_eq!(
            parse_response(r, false).unwrap().code,
            "export_metric!(A);\n"
        );
    }

    #[test]
    fn json_objects_are_accepted() {
        let r = r#"{"thought": "t", "code": "export_metric!(B);"}"#;
        let p = parse_response(r, false).unwrap();
        assert_eq!(
            (p.thought.as_str(), p.code.as_str()),
            ("t", "export_metric!(B);")
        );
    }

    #[test]
    fn no_code_and_cut_off_code_are_typed() {
        assert_eq!(
            parse_response("I think we should...", false),
            Err(CallVerdict::NoCode { truncated: false })
        );
        assert_eq!(
            parse_response("```rust\nfn main() {", true),
            Err(CallVerdict::NoCode { truncated: true })
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(3.0));
        assert_eq!(parse_retry_after(" 0.5 "), Some(0.5));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_http_date("Sun, 06 Nov 99999999999999 08:49:37 GMT"),
            None
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 99999999999:49:37 GMT"),
            None
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777.0)
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(0.0)
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let cfg = LlmConfig {
            backoff_base_s: 1.0,
            backoff_max_s: 5.0,
            ..LlmConfig::default()
        };
        for (a, raw) in [(0u32, 1.0f64), (1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0)] {
            let b = backoff(&cfg, a, 7);
            assert!(b >= 0.75 * raw && b <= 1.25 * raw, "{a}: {b}");
            assert_eq!(b, backoff(&cfg, a, 7));
        }
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let http = |status| CallVerdict::HttpStatus {
            status,
            excerpt: String::new(),
        };
        assert!(http(429).retryable() && http(503).retryable());
        assert!(!http(400).retryable() && !http(401).retryable());
        assert!(!CallVerdict::EmptyChoices.retryable());
        assert!(CallVerdict::Timeout { seconds: 1.0 }.retryable());
    }

    #[test]
    fn nonsense_settings_are_refused_not_panicked_on() {
        for cfg in [
            LlmConfig {
                timeout_s: f64::INFINITY,
                ..LlmConfig::default()
            },
            LlmConfig {
                timeout_s: f64::NAN,
                ..LlmConfig::default()
            },
            LlmConfig {
                timeout_s: 0.0,
                ..LlmConfig::default()
            },
            LlmConfig {
                temperature: f64::NAN,
                ..LlmConfig::default()
            },
            LlmConfig {
                price_prompt_per_1k: -1.0,
                ..LlmConfig::default()
            },
        ] {
            assert!(LlmClient::new(cfg).is_err());
        }
        assert!(LlmClient::new(LlmConfig::default()).is_ok());
    }

    #[test]
    fn costs_use_both_prices() {
        let cfg = LlmConfig {
            price_prompt_per_1k: 0.5,
            price_completion_per_1k: 2.0,
            ..LlmConfig::default()
        };
        assert!((cfg.cost(2000, 500) - 2.0).abs() < 1e-12);
    }
}
