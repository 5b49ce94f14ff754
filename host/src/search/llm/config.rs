//! The endpoint's settings, their checks and prices, and the rules for where a request may go
//! (loopback, same origin).

use serde::{Deserialize, Serialize};

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
pub(super) const MAX_REDIRECTS: usize = 3;

/// Whether `url`'s host is the loopback interface (where plain HTTP never leaves the machine).
pub(super) fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Same scheme, host and port.
pub(super) fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
