//! The HTTP client: one chat request per attempt, retried and bounded, every attempt recorded as a
//! call with its tokens.

use super::config::{is_loopback, same_origin, MAX_REDIRECTS};
use super::retry::backoff;
use super::stream::{ChatResponse, SseAssembler, Usage};
use super::*;
use crate::search::archive::Call;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

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
            proposer: crate::search::archive::ProposerName::Llm(self.cfg.model.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
