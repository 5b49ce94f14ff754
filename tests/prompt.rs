//! The LLM prompt's statement of the SDK cannot drift from the SDK: every signature, field and
//! variant of the API block in `host/prompts/system.md` is checked against the guest SDK's
//! source (and the SDK's public functions, fields and variants against the prompt, so nothing
//! is missing), and a probe that uses every item exactly as the prompt states it is built by
//! the real sandboxed builder, as are the prompt's filled-in examples.

mod common;

use autoprune::search::archive::Operator;
use autoprune::search::gcot::{build_messages, Plan, PromptSettings, Templates, TEMPLATE_FILES};

/// Comments dropped, whitespace collapsed, `mut` bindings and trailing commas removed.
fn norm(s: &str) -> String {
    let no_comments: Vec<&str> = s
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect();
    let mut out = no_comments.join(" ");
    out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for (a, b) in [
        ("( ", "("),
        (" )", ")"),
        (", )", ")"),
        (",)", ")"),
        ("(mut ", "("),
        (", mut ", ", "),
        (", }", " }"),
        (",}", "}"),
    ] {
        out = out.replace(a, b);
    }
    out
}

/// The guest SDK's source (metric side), normalised.
fn sdk() -> String {
    let dir = common::workspace().join("guest-sdk/src");
    ["lib.rs", "metric.rs", "layer.rs", "error.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .map(|t| norm(&t))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `{ … }` block that follows `header` in `text` (both normalised), without the braces.
fn block<'a>(text: &'a str, header: &str) -> &'a str {
    let start = text
        .find(header)
        .unwrap_or_else(|| panic!("the SDK has no `{header}`"))
        + header.len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[start..start + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced block after {header}")
}

/// The API block of the system prompt: (header, item lines) of each `… {` block, plus the
/// lines outside blocks.
fn prompt_api() -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let text = TEMPLATE_FILES
        .iter()
        .find(|(n, _)| *n == "system.md")
        .unwrap()
        .1;
    let from = text.find("# The SDK").expect("API heading");
    let body = &text[from..];
    let start = body.find("```rust\n").unwrap() + 8;
    let end = start + body[start..].find("\n```").unwrap();
    let mut blocks = Vec::new();
    let mut loose = Vec::new();
    let mut cur: Option<(String, Vec<String>)> = None;
    for line in body[start..end].lines() {
        let code = norm(line);
        if code.is_empty() {
            continue;
        }
        if code.ends_with('{') && cur.is_none() {
            cur = Some((code, Vec::new()));
        } else if code == "}" {
            blocks.push(cur.take().expect("a closing brace closes a block"));
        } else if let Some((_, items)) = cur.as_mut() {
            items.push(code);
        } else {
            loose.push(code);
        }
    }
    assert!(cur.is_none(), "unclosed block in the prompt's API");
    (blocks, loose)
}

/// `pub fn` signatures of an SDK block (public API only), up to their body.
fn sdk_fns(block: &str) -> Vec<String> {
    block
        .split("pub fn ")
        .skip(1)
        .map(|rest| {
            let end = rest.find(" {").or_else(|| rest.find(" where")).unwrap();
            format!("pub fn {}", &rest[..end])
        })
        .collect()
}

#[test]
fn the_prompts_sdk_api_is_the_sdks() {
    let sdk = sdk();
    let (blocks, loose) = prompt_api();
    let mut checked = 0;
    for (header, items) in &blocks {
        let sdk_block = block(&sdk, header);
        if header.starts_with("impl") {
            for item in items {
                let sig = item.strip_suffix(';').unwrap_or_else(|| panic!("{item}"));
                assert!(
                    sdk_fns(sdk_block).contains(&sig.to_string()),
                    "`{header}` in the prompt states `{sig}`, the SDK has {:?}",
                    sdk_fns(sdk_block)
                );
                checked += 1;
            }
            // Nothing public is missing from the prompt.
            for f in sdk_fns(sdk_block) {
                assert!(
                    items.contains(&format!("{f};")),
                    "the SDK's `{header}` has `{f}`, the prompt does not"
                );
            }
        } else if header.starts_with("pub trait") {
            for item in items {
                assert!(sdk_block.contains(item.as_str()), "{header}: {item}");
                checked += 1;
            }
            assert_eq!(sdk_block.matches("fn ").count(), items.len(), "{header}");
        } else if header.starts_with("pub struct") {
            let fields: Vec<String> = sdk_block
                .split(',')
                .map(str::trim)
                .filter(|f| f.starts_with("pub "))
                .map(|f| format!("{f},"))
                .collect();
            let mut mine = items.clone();
            mine.sort();
            let mut theirs = fields.clone();
            theirs.sort();
            assert_eq!(mine, theirs, "the fields of `{header}`");
            checked += items.len();
        } else {
            panic!("unexpected block `{header}` in the prompt's API");
        }
    }
    for item in &loose {
        if let Some(m) = item.strip_prefix("export_metric!(") {
            assert!(m.starts_with("MyMetric);"), "{item}");
            assert!(sdk.contains("macro_rules! export_metric"));
        } else if let Some(e) = item.strip_prefix("pub enum ") {
            let (name, vars) = e.split_once(" { ").unwrap();
            let stated: Vec<&str> = vars.trim_end_matches(" }").split(", ").collect();
            let sdk_vars: Vec<String> = block(&sdk, &format!("pub enum {name} {{"))
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            assert_eq!(stated, sdk_vars, "the variants of {name}");
        } else {
            assert!(sdk.contains(item.as_str()), "the SDK has no `{item}`");
        }
        checked += 1;
    }
    // Every type the prompt names is in the prelude it tells the model to import.
    let prelude = block(&sdk, "pub mod prelude {");
    for ty in [
        "Metric",
        "Info",
        "Layer",
        "Row",
        "Tile",
        "ChannelStats",
        "LayerInfo",
        "LayerKind",
        "Error",
        "Result",
        "export_metric",
    ] {
        assert!(
            prelude.contains(&format!(" {ty},")),
            "{ty} is not in the prelude"
        );
    }
    assert!(checked >= 35, "only {checked} API items checked");
}

/// A metric that uses every item of the prompt's API with the types the prompt states.
const PROBE: &str = r#"
use autoprune_sdk::prelude::*;

struct Probe;

impl Metric for Probe {
    fn info() -> Info {
        let i: Info = Info::new("probe", "0.1.0", String::from("every API item"));
        let i: Info = i.needs_gradient();
        i
    }

    fn score(layer: &Layer) -> Result<()> {
        let (rows, cols): (usize, usize) = (layer.rows(), layer.cols());
        let info: &LayerInfo = layer.info();
        let _: (u32, u32, u32, u32, u32, f32) =
            (info.block, info.num_blocks, info.rows, info.cols, info.tile_rows, info.sparsity);
        let boost: f32 = match info.kind {
            LayerKind::Q | LayerKind::K | LayerKind::V | LayerKind::O => 1.0,
            LayerKind::Gate | LayerKind::Up | LayerKind::Down | LayerKind::Other => 1.0,
        };
        let s: &ChannelStats = layer.stats();
        let _: u64 = s.tokens;
        let parts: [&Vec<f32>; 5] = [&s.l2_norm, &s.sum, &s.mean, &s.variance, &s.max_abs];
        if parts.iter().any(|v| v.len() != cols) || rows == 0 {
            return Err(Error::invalid_input("bad shape"));
        }
        let mut col_max = vec![0.0f32; cols];
        let pass: Result<()> = layer.for_each_tile(|tile: Tile<'_>| {
            let _: (u32, usize, &[f32], &[f32]) =
                (tile.row_start, tile.cols, tile.weights, tile.gradient());
            let _: usize = tile.num_rows();
            for row in tile.rows() {
                let row: Row<'_> = row;
                for (m, w) in col_max.iter_mut().zip(row.weights) {
                    *m = m.max(w.abs());
                }
            }
        });
        pass?;
        let e: Error = Error::failed("unused");
        let _: &str = e.message();
        let _ = Error::unsupported("unused");
        let done: Result<()> = layer.score_rows(|row: Row<'_>, out: &mut [f32]| {
            let _: u32 = row.index;
            let g: &[f32] = row.gradient();
            for (((o, w), m), g) in out.iter_mut().zip(row.weights).zip(&col_max).zip(g) {
                *o = boost * w.abs() / (m + 1e-8) + 0.0 * g;
            }
        });
        done
    }
}

export_metric!(MyMetric);
type MyMetric = Probe;
"#;

#[test]
fn the_prompts_api_and_examples_build_in_the_sandbox() {
    let b = common::builder(true);
    b.build(PROBE)
        .unwrap_or_else(|e| panic!("the API probe: {e}"));
    // The filled system prompt's example blocks (the candidates as the model sees them).
    let m = build_messages(
        &Templates::builtin(),
        &[],
        &[],
        &Plan {
            operator: Operator::New,
            parents: vec![],
        },
        &[],
        &PromptSettings {
            sparsity: 0.5,
            pattern: "per output row".into(),
        },
    );
    let examples: Vec<&str> = m[0]
        .content
        .split("```rust\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .filter(|b| b.contains("export_metric!(") && !b.contains("MyMetric"))
        .collect();
    assert_eq!(examples.len(), 2, "{}", m[0].content);
    for e in examples {
        b.build(e).unwrap_or_else(|err| panic!("{err}\n{e}"));
    }
}
