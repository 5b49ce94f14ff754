//! The typed verdict of a failed call or of an unusable answer, and which verdicts are retried.

use serde::{Deserialize, Serialize};

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

    /// The kind, as the JSON's `verdict` field names it (`http_status`, `no_code`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            CallVerdict::HttpStatus { .. } => "http_status",
            CallVerdict::Timeout { .. } => "timeout",
            CallVerdict::IdleTimeout { .. } => "idle_timeout",
            CallVerdict::StreamError { .. } => "stream_error",
            CallVerdict::Connection { .. } => "connection",
            CallVerdict::MalformedJson { .. } => "malformed_json",
            CallVerdict::EmptyChoices => "empty_choices",
            CallVerdict::EmptyContent => "empty_content",
            CallVerdict::NoCode { .. } => "no_code",
            CallVerdict::ResponseTooLarge { .. } => "response_too_large",
            CallVerdict::RetryAfterTooLong { .. } => "retry_after_too_long",
        }
    }

    /// Whether the endpoint failed (no answer, or an answer cut short by the endpoint or the
    /// host's cap), as opposed to an answer the model wrote that held no usable code.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            CallVerdict::HttpStatus { .. }
            | CallVerdict::Timeout { .. }
            | CallVerdict::IdleTimeout { .. }
            | CallVerdict::StreamError { .. }
            | CallVerdict::Connection { .. }
            | CallVerdict::ResponseTooLarge { .. }
            | CallVerdict::RetryAfterTooLong { .. } => true,
            CallVerdict::MalformedJson { .. }
            | CallVerdict::EmptyChoices
            | CallVerdict::EmptyContent
            | CallVerdict::NoCode { .. } => false,
        }
    }

    /// Whether another attempt may succeed.
    pub(super) fn retryable(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_kind_is_the_json_tag() {
        let all = [
            CallVerdict::HttpStatus {
                status: 500,
                excerpt: String::new(),
            },
            CallVerdict::Timeout { seconds: 1.0 },
            CallVerdict::IdleTimeout {
                seconds: 1.0,
                received: 3,
            },
            CallVerdict::StreamError {
                excerpt: String::new(),
            },
            CallVerdict::Connection {
                message: String::new(),
            },
            CallVerdict::MalformedJson {
                message: String::new(),
                excerpt: String::new(),
            },
            CallVerdict::EmptyChoices,
            CallVerdict::EmptyContent,
            CallVerdict::NoCode { truncated: false },
            CallVerdict::ResponseTooLarge { limit: 1 },
            CallVerdict::RetryAfterTooLong {
                seconds: 1.0,
                max: 0.5,
            },
        ];
        for v in all {
            let json: serde_json::Value = serde_json::from_str(&v.to_json()).unwrap();
            assert_eq!(json["verdict"], v.kind());
        }
    }
}
