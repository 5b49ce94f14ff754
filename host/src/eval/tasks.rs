//! Zero-shot multiple-choice accuracy, scored as lm-evaluation-harness scores it: the
//! log-likelihood of each choice's continuation given the context; `acc` takes the most
//! likely choice, `acc_norm` the most likely per character of the choice.
//!
//! Tasks are JSON Lines, one item a line: `{"context": "...", "choices": [" a", " b", ...],
//! "gold": 0}` (an optional `"id"` is kept). As in the harness, whitespace at the end of the
//! context moves to the front of each continuation, the continuation's tokens are those of
//! `context + continuation` past the context's own tokens, no BOS token is added, and a
//! sequence longer than the model's context keeps its last tokens.

use super::position_nll;
use crate::data::Speech;
use crate::model::{Model, ModelError, Tokenizer};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One multiple-choice item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Optional identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The context (prompt).
    pub context: String,
    /// The continuations to choose from.
    pub choices: Vec<String>,
    /// Index of the right one.
    pub gold: usize,
}

/// Problems with a task file.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a valid item.
    #[error("{path} line {line}: {why}")]
    Bad {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// No items.
    #[error("{0} has no items")]
    Empty(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Largest task file read (64 MiB) and items kept (100,000).
const MAX_TASK_BYTES: u64 = 64 << 20;
const MAX_ITEMS: usize = 100_000;

/// Check one item: a non-empty context, 2–64 non-empty choices, `gold` among them.
fn check_item(item: &Item) -> Result<(), String> {
    if item.context.trim().is_empty() {
        return Err("empty context".into());
    }
    if !(2..=64).contains(&item.choices.len()) {
        return Err(format!("{} choices (2 to 64 expected)", item.choices.len()));
    }
    if item.choices.iter().any(|c| c.trim().is_empty()) {
        return Err("an empty choice".into());
    }
    if item.gold >= item.choices.len() {
        return Err(format!("gold {} out of range", item.gold));
    }
    Ok(())
}

/// Read a JSONL task file (blank lines are skipped; every other line must be a valid item).
pub fn read_tasks(path: &Path) -> Result<Vec<Item>, TaskError> {
    let p = path.display().to_string();
    let io = |source| TaskError::Io {
        path: p.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_TASK_BYTES {
        return Err(TaskError::Bad {
            path: p,
            line: 0,
            why: format!("{len} bytes (at most {MAX_TASK_BYTES})"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| TaskError::Bad {
            path: p.clone(),
            line: i + 1,
            why,
        };
        let item: Item = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        check_item(&item).map_err(bad)?;
        if items.len() == MAX_ITEMS {
            return Err(bad(format!("more than {MAX_ITEMS} items")));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(TaskError::Empty(p));
    }
    Ok(items)
}

/// Write items as JSONL.
pub fn write_tasks(path: &Path, items: &[Item]) -> std::io::Result<()> {
    let mut s = String::new();
    for it in items {
        s.push_str(&serde_json::to_string(it).map_err(std::io::Error::other)?);
        s.push('\n');
    }
    std::fs::write(path, s)
}

/// The scores of one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scored {
    /// Log-likelihood of each choice's continuation.
    pub loglik: Vec<f64>,
    /// Tokens of each continuation.
    pub tokens: Vec<usize>,
    /// The right choice.
    pub gold: usize,
}

/// Accuracy on a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskScore {
    /// Task name (file stem or built-in name).
    pub task: String,
    /// Items.
    pub items: usize,
    /// Share of items whose most likely choice is the right one.
    pub acc: f64,
    /// Its standard error, `sqrt(acc (1 − acc) / (n − 1))` (the harness's).
    pub acc_stderr: f64,
    /// The same with each log-likelihood divided by the choice's length in characters.
    pub acc_norm: f64,
    /// Its standard error.
    pub acc_norm_stderr: f64,
    /// Seconds.
    pub seconds: f64,
}

/// The context's and the continuation's tokens, the harness's way.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>), ModelError> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed.to_string(),
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context.to_string(), continuation.to_string())
    };
    let enc = |s: &str| {
        tokenizer
            .encode_plain(s)
            .map_err(|e| ModelError::Input(format!("tokenizing: {e}")))
    };
    let whole = enc(&format!("{context}{continuation}"))?;
    let ctx = enc(&context)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// Log-likelihood of each continuation after its context, all in one batch: inputs are
/// `(ctx + cont)` without the last token (the last `max_len` tokens when longer), padded on the
/// right to the longest; attention is causal, so padding after a row's end changes nothing
/// before it.
pub fn loglikelihoods(
    model: &Model,
    pairs: &[(Vec<u32>, Vec<u32>)],
    max_len: usize,
) -> Result<Vec<f64>, ModelError> {
    if pairs.iter().any(|(_, cont)| cont.is_empty()) {
        return Err(ModelError::Input(
            "a choice adds no token to its context".into(),
        ));
    }
    // Without a context token nothing predicts the continuation's first token.
    if pairs.iter().any(|(ctx, _)| ctx.is_empty()) {
        return Err(ModelError::Input("a context with no token".into()));
    }
    let rows: Vec<(Vec<u32>, &[u32])> = pairs
        .iter()
        .map(|(ctx, cont)| {
            let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
            let start = all.len().saturating_sub(max_len + 1);
            (all[start..all.len() - 1].to_vec(), cont.as_slice())
        })
        .collect();
    let t = rows.iter().map(|(inp, _)| inp.len()).max().unwrap_or(0);
    let padded: Vec<Vec<u32>> = rows
        .iter()
        .map(|(inp, _)| {
            let mut v = inp.clone();
            v.resize(t, *inp.last().unwrap_or(&0));
            v
        })
        .collect();
    let refs: Vec<&[u32]> = padded.iter().map(|v| v.as_slice()).collect();
    let ids = model.ids_tensor(&refs)?;
    let rope = model.rope(t)?;
    let mut x = model.embed(&ids)?;
    for block in &model.blocks {
        x = block.forward(&x, &rope, &mut |_, _| Ok(()))?;
    }
    // Only the positions that predict a continuation need logits.
    let mut out = Vec::with_capacity(rows.len());
    for (r, (inp, cont)) in rows.iter().enumerate() {
        let n = cont.len().min(inp.len());
        let row = x.narrow(0, r, 1)?.narrow(1, inp.len() - n, n)?;
        let hidden = model.norm.forward(&row)?;
        let h = hidden.dims3()?.2;
        let logits = model.lm_head.forward(&hidden.reshape((n, h))?)?;
        let nll = position_nll(&logits, &cont[cont.len() - n..])?;
        out.push(-nll.iter().sum::<f64>());
    }
    Ok(out)
}

/// Score every item (`progress(done, total)` after each).
pub fn score(
    model: &Model,
    tokenizer: &Tokenizer,
    items: &[Item],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Scored>, ModelError> {
    let max_len = model.config.max_position_embeddings.max(2);
    let mut out = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let pairs = item
            .choices
            .iter()
            .map(|c| encode_pair(tokenizer, &item.context, c))
            .collect::<Result<Vec<_>, _>>()?;
        let loglik = loglikelihoods(model, &pairs, max_len)?;
        let tokens = pairs.iter().map(|(_, c)| c.len()).collect();
        out.push(Scored {
            loglik,
            tokens,
            gold: item.gold,
        });
        progress(k + 1, items.len());
    }
    Ok(out)
}

/// Index of the largest value (the first on ties, as `numpy.argmax`).
fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// `acc` and `acc_norm` of scored items (choice lengths in characters from `items`).
pub fn accuracy(task: &str, items: &[Item], scored: &[Scored], seconds: f64) -> TaskScore {
    let n = scored.len();
    let mut acc = 0usize;
    let mut acc_norm = 0usize;
    for (it, s) in items.iter().zip(scored) {
        if argmax(s.loglik.iter().copied()) == s.gold {
            acc += 1;
        }
        let norm = s
            .loglik
            .iter()
            .zip(&it.choices)
            .map(|(l, c)| l / c.chars().count() as f64);
        if argmax(norm) == s.gold {
            acc_norm += 1;
        }
    }
    let share = |k: usize| k as f64 / n.max(1) as f64;
    let stderr = |p: f64| {
        if n > 1 {
            (p * (1.0 - p) / (n - 1) as f64).sqrt()
        } else {
            0.0
        }
    };
    let (a, an) = (share(acc), share(acc_norm));
    TaskScore {
        task: task.to_string(),
        items: n,
        acc: a,
        acc_stderr: stderr(a),
        acc_norm: an,
        acc_norm_stderr: stderr(an),
        seconds,
    }
}

/// Name of the built-in task.
pub const SOTU_NEXT: &str = "sotu-next";

/// Sentences of a speech: split after `.`, `!` or `?` followed by whitespace and a capital
/// letter or a quote.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for w in 0..chars.len() {
        let (i, c) = chars[w];
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        if !chars.get(w + 1).is_some_and(|(_, n)| n.is_whitespace()) {
            continue;
        }
        // "Mr. Speaker", "U.S. Congress", "Dr. King": not an end.
        let word: String = text[start..i]
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string();
        if c == '.' && is_abbreviation(&word) {
            continue;
        }
        let after = chars[w + 1..].iter().find(|(_, c)| !c.is_whitespace());
        if let Some(&(k, c2)) = after {
            if c2.is_uppercase() || c2 == '"' {
                out.push(text[start..=i].trim());
                start = k;
            }
        }
    }
    let tail = text[start..].trim();
    if !tail.is_empty() {
        out.push(tail);
    }
    out
}

/// Titles and initials after which a period does not end a sentence.
fn is_abbreviation(word: &str) -> bool {
    const TITLES: [&str; 12] = [
        "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Gen", "Sen", "Rep", "Gov", "Lt",
    ];
    TITLES.contains(&word)
        || (word.len() <= 3 && word.chars().all(|c| c.is_uppercase() || c == '.'))
}

/// A sentence fit to be a choice: 40–200 characters, no stage direction like `[Applause]`.
fn usable(s: &str) -> bool {
    (40..=200).contains(&s.chars().count()) && !s.contains('[') && !s.contains(']')
}

/// The built-in task: in speeches from `from_year` on, choose the true next sentence after
/// two sentences of context among four sentences of the same speech (three taken from a
/// third, a half and two thirds of the speech further on). Deterministic: no random numbers;
/// the right answer's position cycles through 0..4. `items` items spread evenly over the
/// candidates.
pub fn sotu_next(speeches: &[Speech], from_year: u32, items: usize) -> Vec<Item> {
    let mut pool: Vec<Item> = Vec::new();
    for sp in speeches.iter().filter(|s| s.year >= from_year) {
        let sents = sentences(&sp.text);
        let n = sents.len();
        if n < 12 {
            continue;
        }
        for i in 2..n {
            let (a, b, truth) = (sents[i - 2], sents[i - 1], sents[i]);
            if !usable(truth) || a.contains('[') || b.contains('[') {
                continue;
            }
            let mut others = Vec::new();
            for off in [n / 3, n / 2, 2 * n / 3] {
                let mut j = (i + off) % n;
                // Skip what is near the truth, unusable, or already taken.
                let mut tries = 0;
                while (j.abs_diff(i) < 3 || !usable(sents[j]) || others.contains(&sents[j]))
                    && tries < n
                {
                    j = (j + 1) % n;
                    tries += 1;
                }
                if tries < n {
                    others.push(sents[j]);
                }
            }
            if others.len() < 3 || others.contains(&truth) {
                continue;
            }
            pool.push(Item {
                id: Some(format!("{}#{i}", sp.file_name)),
                context: format!("{a} {b}"),
                choices: others.iter().map(|s| format!(" {s}")).collect(),
                gold: 0,
            });
            let last = pool.last_mut().expect("just pushed");
            last.choices.push(format!(" {truth}"));
        }
    }
    let take = items.min(pool.len());
    let mut out = Vec::with_capacity(take);
    for k in 0..take {
        let mut item = pool[k * pool.len() / take.max(1)].clone();
        // Put the truth (last) at position k mod 4.
        let truth = item.choices.pop().expect("four choices");
        let gold = k % 4;
        item.choices.insert(gold, truth);
        item.gold = gold;
        out.push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(gold: usize) -> Item {
        Item {
            id: None,
            context: "The cat".into(),
            choices: vec![" sat".into(), " ran away quickly".into()],
            gold,
        }
    }

    #[test]
    fn accuracy_and_length_normalisation_by_hand() {
        let items = vec![item(0), item(1)];
        // Item 0: " sat" −2 vs −3 → acc picks 0 (right); per char −2/4 = −0.5 vs −3/17 ≈ −0.18
        // → acc_norm picks 1 (wrong). Item 1: −5 vs −4 → 1 (right); −1.25 vs −0.24 → 1.
        let scored = vec![
            Scored {
                loglik: vec![-2.0, -3.0],
                tokens: vec![1, 3],
                gold: 0,
            },
            Scored {
                loglik: vec![-5.0, -4.0],
                tokens: vec![1, 3],
                gold: 1,
            },
        ];
        let s = accuracy("t", &items, &scored, 0.0);
        assert_eq!((s.acc, s.acc_norm), (1.0, 0.5));
        assert_eq!(s.acc_stderr, 0.0);
        assert!((s.acc_norm_stderr - 0.5).abs() < 1e-12);
    }

    #[test]
    fn batched_padded_loglikelihoods_match_full_forward_log_softmax() {
        use crate::model::{Arch, ModelConfig};
        use candle_core::{Device, D};
        let m = Model::random(&ModelConfig::tiny(Arch::Llama), 3, &Device::Cpu).unwrap();
        let seq: Vec<u32> = (0..24u32).map(|i| (i * 97 + 5) % 256).collect();
        // Three continuations of different lengths after contexts of different lengths.
        let pairs = vec![
            (seq[..5].to_vec(), seq[5..9].to_vec()),
            (seq[..10].to_vec(), seq[10..24].to_vec()),
            (seq[..3].to_vec(), seq[3..4].to_vec()),
        ];
        let got = loglikelihoods(&m, &pairs, 2048).unwrap();
        for ((ctx, cont), g) in pairs.iter().zip(&got) {
            // Independent: one unpadded sequence, full logits, log-softmax, pick targets.
            let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
            let logits = m.forward(&m.ids_tensor(&[&all]).unwrap()).unwrap();
            let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
            let lsm = lsm.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            let want: f64 = cont
                .iter()
                .enumerate()
                .map(|(k, &tok)| f64::from(lsm[ctx.len() - 1 + k][tok as usize]))
                .sum();
            assert!(
                (g - want).abs() < 1e-3 * want.abs().max(1.0),
                "{g} vs {want}"
            );
        }
        // Truncation keeps the last tokens: with room for 4 inputs, the 14-token continuation
        // is scored on its last 4 predictions only.
        let short = loglikelihoods(&m, &pairs[1..2], 4).unwrap();
        assert!(short[0] > got[1], "fewer terms: {} vs {}", short[0], got[1]);
        assert!(loglikelihoods(&m, &[(seq[..3].to_vec(), vec![])], 64).is_err());
        assert!(loglikelihoods(&m, &[(vec![], seq[..3].to_vec())], 64).is_err());
    }

    #[test]
    fn ties_go_to_the_first_choice() {
        assert_eq!(argmax([1.0, 1.0, 0.5].into_iter()), 0);
        assert_eq!(argmax([f64::NEG_INFINITY, -1.0].into_iter()), 1);
    }

    #[test]
    fn bad_items_are_refused_with_their_line() {
        let dir = std::env::temp_dir().join(format!("ap-tasks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.jsonl");
        std::fs::write(
            &p,
            "{\"context\":\"a\",\"choices\":[\" b\",\" c\"],\"gold\":1}\n\n{\"context\":\"a\",\"choices\":[\" b\"],\"gold\":0}\n",
        )
        .unwrap();
        let e = read_tasks(&p).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("1 choices"), "{e}");
        std::fs::write(
            &p,
            "{\"context\":\"a\",\"choices\":[\" b\",\" c\"],\"gold\":2}\n",
        )
        .unwrap();
        assert!(read_tasks(&p).unwrap_err().to_string().contains("gold 2"));
        std::fs::write(
            &p,
            "{\"context\":\" \\n\",\"choices\":[\" b\",\" c\"],\"gold\":0}\n",
        )
        .unwrap();
        assert!(read_tasks(&p)
            .unwrap_err()
            .to_string()
            .contains("empty context"));
        std::fs::write(&p, "not json\n").unwrap();
        assert!(read_tasks(&p).unwrap_err().to_string().contains("line 1"));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_tasks(&p), Err(TaskError::Empty(_))));
        let good = vec![item(1)];
        write_tasks(&p, &good).unwrap();
        assert_eq!(read_tasks(&p).unwrap(), good);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sentences_split_at_ends_before_capitals() {
        let s = sentences(
            "It is 3.5 percent. We will win! Will we? Mr. Speaker, the U.S. Senate. \"Yes,\" they said. end",
        );
        assert_eq!(
            s,
            vec![
                "It is 3.5 percent.",
                "We will win!",
                "Will we?",
                "Mr. Speaker, the U.S. Senate.",
                "\"Yes,\" they said. end"
            ]
        );
    }

    #[test]
    fn sotu_next_is_deterministic_and_well_formed() {
        let text: String = (0..40)
            .map(|i| format!("This is sentence number {i} of a long speech about the union. "))
            .collect();
        let speeches = vec![Speech {
            year: 2000,
            file_name: "2000_x.txt".into(),
            text,
        }];
        let a = sotu_next(&speeches, 1990, 8);
        assert_eq!(a, sotu_next(&speeches, 1990, 8));
        assert_eq!(a.len(), 8);
        for (k, it) in a.iter().enumerate() {
            check_item(it).unwrap();
            assert_eq!(it.gold, k % 4);
            assert_eq!(it.choices.len(), 4);
            let mut c = it.choices.clone();
            c.sort();
            c.dedup();
            assert_eq!(c.len(), 4, "distinct choices");
        }
        assert!(sotu_next(&speeches, 2001, 8).is_empty());
    }
}
