//! Assembling a streamed chat completion from server-sent events, and the wire types of
//! chat-completion responses.

use super::*;
use serde::{Deserialize, Serialize};

/// Assembles a chat-completion event stream (`data: {json}` events, `data: [DONE]` at the end).
#[derive(Default)]
pub(super) struct SseAssembler {
    /// Bytes of an unfinished line.
    pub(super) line: Vec<u8>,
    /// `data:` lines of the event being read.
    pub(super) data: Vec<String>,
    pub(super) content: String,
    pub(super) finish_reason: Option<String>,
    pub(super) usage: Option<Usage>,
    /// The last event's data (llama.cpp puts `usage` and `timings` there).
    pub(super) final_chunk: Option<String>,
    pub(super) events: usize,
    pub(super) done: bool,
}

impl SseAssembler {
    /// Take more bytes; complete events are applied at once.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<(), CallVerdict> {
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
    pub(super) fn dispatch(&mut self) -> Result<(), CallVerdict> {
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
    pub(super) fn finish(&mut self) -> Result<Completion, CallVerdict> {
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
    pub(super) fn record(&self) -> String {
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
pub(super) struct StreamChunk {
    pub(super) choices: Option<Vec<StreamChoice>>,
    pub(super) usage: Option<Usage>,
    pub(super) error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(super) struct StreamChoice {
    pub(super) index: Option<u64>,
    pub(super) delta: Option<ChoiceMessage>,
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ChatResponse {
    pub(super) choices: Option<Vec<Choice>>,
    pub(super) usage: Option<Usage>,
}

#[derive(Deserialize)]
pub(super) struct Choice {
    pub(super) message: Option<ChoiceMessage>,
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ChoiceMessage {
    pub(super) content: Option<String>,
}

#[derive(Deserialize, Serialize)]
pub(super) struct Usage {
    pub(super) prompt_tokens: Option<u64>,
    pub(super) completion_tokens: Option<u64>,
    pub(super) total_tokens: Option<u64>,
}
