//! Parsing a model's answer into {thought, code}: fenced blocks, a JSON object, or a typed verdict.

use super::*;

/// The first `n` characters of `s` (with an ellipsis when cut).
pub fn excerpt(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
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
}
