//! Tokenizers: a Hugging Face `tokenizer.json`, or the byte-level BPE tokenizer embedded in a
//! GGUF file rebuilt as the equivalent Hugging Face pipeline (so it can be saved as
//! `tokenizer.json` for export).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::NormalizerWrapper;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::gguf::GgufFile;
use super::{ModelConfig, ModelError, Result};

/// llama.cpp token type of control tokens (`<|im_start|>`, ...): matched as special tokens.
const TOKEN_TYPE_CONTROL: u32 = 3;
/// llama.cpp token type of user-defined tokens: matched as plain added tokens.
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// The splitting regex of Llama 3's tokenizer (`llama-bpe`): digits in groups of up to three.
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The splitting regex of Qwen2's tokenizer: single digits.
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Largest `tokenizer.json` read. Why 64 MiB: the largest real ones (256k-token vocabularies
/// with their merges) are about 35 MiB.
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// A text tokenizer with the same ids as the model's training tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .finish()
    }
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json` of at most [`MAX_TOKENIZER_BYTES`] (checked before
    /// it is read).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_limited(path, MAX_TOKENIZER_BYTES)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// The tokenizer that belongs to a model path: embedded in a GGUF file, or
    /// `tokenizer.json` inside (or next to) a Hugging Face model directory.
    pub fn for_model(path: &Path) -> Result<Self> {
        if path.is_file() && super::gguf::has_magic(path)? {
            return Self::from_gguf(path);
        }
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(path)
        };
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Build the tokenizer embedded in a GGUF file (`tokenizer.ggml.*`).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        super::guard_panics(path, || {
            Self::from_gguf_metadata(&GgufFile::open(path)?.content.metadata)
        })
    }

    /// Build from GGUF metadata: byte-level BPE (`tokenizer.ggml.model` = `gpt2`) with the
    /// pre-tokenizer named by `tokenizer.ggml.pre` (`smollm`, `gpt2`/`default`,
    /// `llama-bpe`/`llama3`, `qwen2`).
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self> {
        let kind = md_str(md, "tokenizer.ggml.model")?.unwrap_or_default();
        match kind.as_str() {
            "gpt2" => {}
            "llama" => return Self::from_gguf_sentencepiece(md),
            _ => {
                return Err(ModelError::Tokenizer(format!(
                    "GGUF tokenizer model `{}` is not supported (byte-level BPE `gpt2` or \
                     SentencePiece `llama`); pass a tokenizer.json instead",
                    crate::term::line(&kind)
                )))
            }
        }
        let pre = md_str(md, "tokenizer.ggml.pre")?.unwrap_or_else(|| "default".into());
        let tokens = md_strings(md, "tokenizer.ggml.tokens")?;
        let merges = md_strings(md, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(ModelError::Tokenizer(format!("malformed merge `{m}`"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            // Llama 3 looks whole words up before merging; llama.cpp does the same for it.
            .ignore_merges(matches!(pre.as_str(), "llama-bpe" | "llama3"))
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        set_pipeline(&mut inner, &pre)?;
        add_gguf_special_tokens(&mut inner, md, &tokens)?;
        add_bos_template(&mut inner, md, &tokens, false)?;
        Ok(Self { inner })
    }

    /// A SentencePiece BPE vocabulary (`tokenizer.ggml.model` = `llama`: Gemma, LLaMA 1/2)
    /// as the equivalent Hugging Face pipeline: spaces become `▁` (and a leading `▁` when
    /// `add_space_prefix` is set), BPE whose merge ranks follow the pieces' scores (llama.cpp
    /// merges the adjacent pair whose concatenation has the highest score; the merges are
    /// derived the way transformers' `SentencePieceExtractor` derives them), byte fallback
    /// for characters outside the vocabulary, and user-defined pieces (Gemma's runs of
    /// newlines and spaces, HTML tags) matched whole in the raw text first.
    fn from_gguf_sentencepiece(md: &HashMap<String, Value>) -> Result<Self> {
        let tokens = md_strings(md, "tokenizer.ggml.tokens")?;
        let scores = md_numbers(md, "tokenizer.ggml.scores", tokens.len())?;
        let types = md_numbers(md, "tokenizer.ggml.token_type", tokens.len())?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(ModelError::Tokenizer(
                "the SentencePiece vocabulary repeats a piece".into(),
            ));
        }
        check_piece_sizes(&tokens)?;
        let merges = spm_merges(&tokens, &scores, &types, &vocab)?;
        let unk = match md.get("tokenizer.ggml.unknown_token_id").map(Value::to_u32) {
            Some(Ok(id)) => tokens.get(id as usize).cloned(),
            _ => None,
        };
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = unk {
            builder = builder.unk_token(unk);
        }
        let bpe = builder
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        // llama.cpp's defaults for SentencePiece vocabularies: a space prefix and a BOS.
        let prefix = !matches!(
            md.get("tokenizer.ggml.add_space_prefix"),
            Some(Value::Bool(false))
        );
        let replace = Replace::new(" ", "▁")
            .map_err(|e| ModelError::Tokenizer(format!("normalizer: {e}")))?;
        let normalizer: NormalizerWrapper = if prefix {
            NormSequence::new(vec![Prepend::new("▁".into()).into(), replace.into()]).into()
        } else {
            replace.into()
        };
        inner.with_normalizer(Some(normalizer));
        let space =
            Replace::new("▁", " ").map_err(|e| ModelError::Tokenizer(format!("decoder: {e}")))?;
        let mut steps: Vec<DecoderWrapper> = vec![
            space.into(),
            ByteFallback::default().into(),
            Fuse::default().into(),
        ];
        if prefix {
            steps.push(Strip::new(' ', 1, 0).into());
        }
        inner.with_decoder(Some(DecoderSequence::new(steps)));
        let mut special = Vec::new();
        let mut plain = Vec::new();
        for (tok, &ty) in tokens.iter().zip(&types) {
            match ty as u32 {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(tok.clone(), true)),
                // Matched in the raw text, before spaces become `▁`, as llama.cpp does.
                TOKEN_TYPE_USER_DEFINED => {
                    plain.push(AddedToken::from(tok.clone(), false).normalized(false))
                }
                _ => {}
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&plain);
        add_bos_template(&mut inner, md, &tokens, true)?;
        Ok(Self { inner })
    }

    /// Token ids of `text`, with special tokens added the way the model's own tokenizer
    /// adds them for a plain `tokenizer(text)` call (none for SmolLM2).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text` with no special token added (no BOS), as lm-evaluation-harness
    /// encodes multiple-choice contexts and continuations.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The largest id the tokenizer can produce, added tokens included.
    pub fn max_token_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).values().copied().max()
    }

    /// Error unless every id the tokenizer can produce has an embedding row in the model.
    pub fn check_fits(&self, config: &ModelConfig) -> Result<()> {
        match self.max_token_id() {
            Some(max) if max as usize >= config.vocab_size => {
                Err(ModelError::TokenizerMismatch(format!(
                    "tokenizer ids go up to {max} but the model embeds only {} tokens",
                    config.vocab_size
                )))
            }
            None => Err(ModelError::TokenizerMismatch(
                "the tokenizer has an empty vocabulary".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Write as a Hugging Face `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Normalizer, pre-tokenizer, decoder and post-processor of each known `tokenizer.ggml.pre`,
/// copied from the corresponding Hugging Face `tokenizer.json`.
fn set_pipeline(tk: &mut tokenizers::Tokenizer, pre: &str) -> Result<()> {
    let byte_level = |trim_offsets, use_regex| ByteLevel::new(false, trim_offsets, use_regex);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        // SmolLM: single digits first, then GPT-2's byte-level split, no prefix space.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true, true).into()]).into(),
        "gpt2" | "default" => byte_level(true, true).into(),
        "llama-bpe" | "llama3" => split_then_bytes(REGEX_LLAMA3, byte_level(true, false))?,
        "qwen2" => {
            tk.with_normalizer(Some(NFC));
            split_then_bytes(REGEX_QWEN2, byte_level(false, false))?
        }
        other => {
            return Err(ModelError::Tokenizer(format!(
                "unknown GGUF pre-tokenizer `{other}` (supported: smollm, gpt2, default, llama-bpe, qwen2)"
            )))
        }
    };
    tk.with_pre_tokenizer(Some(pre_tokenizer));
    tk.with_decoder(Some(ByteLevel::default()));
    tk.with_post_processor(Some(ByteLevel::new(true, false, true)));
    Ok(())
}

fn split_then_bytes(regex: &str, bytes: ByteLevel) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| ModelError::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
    Ok(Sequence::new(vec![split.into(), bytes.into()]).into())
}

/// Control tokens become special added tokens (matched whole in raw text, as in the
/// model's `tokenizer.json`); user-defined ones become plain added tokens.
fn add_gguf_special_tokens(
    tk: &mut tokenizers::Tokenizer,
    md: &HashMap<String, Value>,
    tokens: &[String],
) -> Result<()> {
    let Some(Value::Array(types)) = md.get("tokenizer.ggml.token_type") else {
        return Ok(());
    };
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for (tok, ty) in tokens.iter().zip(types) {
        match ty.to_u32().or_else(|_| ty.to_i32().map(|v| v as u32)) {
            Ok(TOKEN_TYPE_CONTROL) => special.push(AddedToken::from(tok.clone(), true)),
            Ok(TOKEN_TYPE_USER_DEFINED) => plain.push(AddedToken::from(tok.clone(), false)),
            _ => {}
        }
    }
    tk.add_special_tokens(&special);
    tk.add_tokens(&plain);
    Ok(())
}

/// When the GGUF asks for a BOS token (`tokenizer.ggml.add_bos_token`; `default` when the key
/// is absent: llama.cpp adds one for SentencePiece vocabularies), prepend it the way a Hugging
/// Face `TemplateProcessing` does.
fn add_bos_template(
    tk: &mut tokenizers::Tokenizer,
    md: &HashMap<String, Value>,
    tokens: &[String],
    default: bool,
) -> Result<()> {
    let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        _ => default,
    };
    if !add_bos {
        return Ok(());
    }
    let id = match md.get("tokenizer.ggml.bos_token_id").map(Value::to_u32) {
        Some(Ok(id)) => id,
        _ => {
            return Err(ModelError::Tokenizer(
                "add_bos_token is set but bos_token_id is missing".into(),
            ))
        }
    };
    let bos = tokens.get(id as usize).ok_or_else(|| {
        ModelError::Tokenizer(format!("bos_token_id {id} is outside the vocabulary"))
    })?;
    let template = TemplateProcessing::builder()
        .try_single(format!("{bos}:0 $A:0"))
        .and_then(|b| b.try_pair(format!("{bos}:0 $A:0 {bos}:1 $B:1")))
        .map_err(|e| ModelError::Tokenizer(format!("BOS template: {e}")))?
        .special_tokens(vec![(bos.clone(), id)])
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("BOS template: {e}")))?;
    tk.with_post_processor(Some(template));
    Ok(())
}

/// Longest SentencePiece piece accepted, in bytes. Why 256: deriving merges costs the square
/// of a piece's length, and real vocabularies' longest pieces are under 100 bytes (Gemma 3: 48).
const MAX_PIECE_BYTES: usize = 256;
/// Most bytes of all pieces together. Why 8 MiB: Gemma 3's 262,144 pieces take 1.8 MiB.
const MAX_VOCAB_BYTES: usize = 8 << 20;
/// Most merges derived. Why 4 Mi: Gemma 3's vocabulary yields 514,847; each merge holds two
/// strings, so this bounds the memory a hostile vocabulary can make us spend.
const MAX_MERGES: usize = 4 << 20;

/// Refuse a vocabulary whose merges would take unbounded time to derive (a hostile file).
fn check_piece_sizes(tokens: &[String]) -> Result<()> {
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() > MAX_PIECE_BYTES)
    {
        return Err(ModelError::Tokenizer(format!(
            "SentencePiece piece {i} is {} bytes long; the limit is {MAX_PIECE_BYTES}",
            t.len()
        )));
    }
    let total: usize = tokens.iter().map(String::len).sum();
    if total > MAX_VOCAB_BYTES {
        return Err(ModelError::Tokenizer(format!(
            "the SentencePiece pieces take {total} bytes; the limit is {MAX_VOCAB_BYTES}"
        )));
    }
    Ok(())
}

/// llama.cpp token type of the `<0xXX>` byte pieces.
const TOKEN_TYPE_BYTE: u32 = 6;

/// BPE merges equivalent to SentencePiece's scores: every split `(l, r)` of a piece into two
/// pieces, ranked by the whole piece's score (highest first; ties by the ids of `l`, `r`, as
/// transformers orders them). Byte pieces are never merge results.
fn spm_merges(
    tokens: &[String],
    scores: &[f64],
    types: &[f64],
    vocab: &Vocab,
) -> Result<Vec<(String, String)>> {
    let mut merges: Vec<(f64, u32, u32, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types[i] as u32 == TOKEN_TYPE_BYTE {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&a), Some(&b)) = (vocab.get(l), vocab.get(r)) {
                if merges.len() == MAX_MERGES {
                    return Err(ModelError::Tokenizer(format!(
                        "the SentencePiece vocabulary yields more than {MAX_MERGES} merges"
                    )));
                }
                merges.push((scores[i], a, b, i));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    Ok(merges
        .into_iter()
        .map(|(_, a, b, _)| (tokens[a as usize].clone(), tokens[b as usize].clone()))
        .collect())
}

/// A numeric array of `len` entries (scores, token types) as f64.
fn md_numbers(md: &HashMap<String, Value>, key: &str, len: usize) -> Result<Vec<f64>> {
    let Some(Value::Array(items)) = md.get(key) else {
        return Err(ModelError::Tokenizer(format!(
            "GGUF metadata has no array `{key}`"
        )));
    };
    if items.len() != len {
        return Err(ModelError::Tokenizer(format!(
            "`{key}` has {} entries for {len} tokens",
            items.len()
        )));
    }
    items
        .iter()
        .map(|v| match *v {
            Value::F32(x) => Ok(f64::from(x)),
            Value::F64(x) => Ok(x),
            Value::I32(x) => Ok(f64::from(x)),
            Value::U32(x) => Ok(f64::from(x)),
            Value::I8(x) => Ok(f64::from(x)),
            Value::U8(x) => Ok(f64::from(x)),
            _ => Err(ModelError::Tokenizer(format!("`{key}` holds a non-number"))),
        })
        .collect()
}

fn md_str(md: &HashMap<String, Value>, key: &str) -> Result<Option<String>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ModelError::Tokenizer(format!("`{key}` is not a string"))),
    }
}

fn md_strings(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    let Some(Value::Array(items)) = md.get(key) else {
        return Err(ModelError::Tokenizer(format!(
            "GGUF metadata has no string array `{key}`"
        )));
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(ModelError::Tokenizer(format!("`{key}` holds a non-string"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_md(pre: &str) -> HashMap<String, Value> {
        // Bytes 'a' 'b' 'Ġ' '1' '2' plus merges a+b → ab, Ġ+ab → Ġab.
        let tokens = ["<|endoftext|>", "a", "b", "Ġ", "1", "2", "ab", "Ġab"];
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        md.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
        md.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                tokens
                    .iter()
                    .map(|t| Value::String(t.to_string()))
                    .collect(),
            ),
        );
        md.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![
                Value::String("a b".into()),
                Value::String("Ġ ab".into()),
            ]),
        );
        let types = (0..tokens.len())
            .map(|i| Value::I32(if i == 0 { 3 } else { 1 }))
            .collect();
        md.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
        md
    }

    /// A SentencePiece vocabulary like Gemma's: control, normal, user-defined and byte pieces.
    fn spm_md(prefix: bool) -> HashMap<String, Value> {
        // (piece, score, llama.cpp type)
        let pieces: [(&str, f32, i32); 13] = [
            ("<pad>", -1000.0, 3),
            ("<bos>", -1000.0, 3),
            ("<unk>", -1000.0, 2),
            ("▁", -10.0, 1),
            ("a", -10.0, 1),
            ("b", -10.0, 1),
            ("c", -10.0, 1),
            ("ab", -1.0, 1),
            ("▁ab", -2.0, 1),
            ("abc", -3.0, 1),
            ("  ", -1000.0, 4),
            ("<0x7A>", 0.0, 6),
            ("\n\n", -1000.0, 4),
        ];
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        let col =
            |f: &dyn Fn(&(&str, f32, i32)) -> Value| Value::Array(pieces.iter().map(f).collect());
        md.insert(
            "tokenizer.ggml.tokens".into(),
            col(&|p| Value::String(p.0.into())),
        );
        md.insert("tokenizer.ggml.scores".into(), col(&|p| Value::F32(p.1)));
        md.insert(
            "tokenizer.ggml.token_type".into(),
            col(&|p| Value::I32(p.2)),
        );
        md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(2));
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        md.insert(
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(prefix),
        );
        md
    }

    #[test]
    fn gguf_sentencepiece_merges_by_score_with_byte_fallback() {
        let tk = Tokenizer::from_gguf_metadata(&spm_md(false)).unwrap();
        // "ab abc z": a+b (score −1) first everywhere, then ▁+ab (−2); "▁ab"+"c" is no piece,
        // so c stays; z is not in the vocabulary and falls back to its byte.
        assert_eq!(tk.encode("ab abc z").unwrap(), vec![1, 7, 8, 6, 3, 11]);
        assert_eq!(tk.encode_plain("abc").unwrap(), vec![9]);
        // User-defined pieces are matched whole in the raw text (two spaces, a blank line).
        assert_eq!(tk.encode_plain("a  b\n\nc").unwrap(), vec![4, 10, 5, 12, 6]);
        assert_eq!(tk.decode(&[7, 8, 6, 3, 11]).unwrap(), "ab abc z");
        // With a space prefix the text starts with ▁: "▁ab".
        let pre = Tokenizer::from_gguf_metadata(&spm_md(true)).unwrap();
        assert_eq!(pre.encode_plain("ab").unwrap(), vec![8]);
        assert_eq!(pre.decode(&[8]).unwrap(), "ab");
    }

    #[test]
    fn hostile_sentencepiece_vocabularies_are_refused() {
        // A huge piece would make deriving merges quadratic in its length.
        let mut md = spm_md(false);
        let Some(Value::Array(tokens)) = md.get_mut("tokenizer.ggml.tokens") else {
            unreachable!()
        };
        tokens[4] = Value::String("a".repeat(MAX_PIECE_BYTES + 1));
        let e = Tokenizer::from_gguf_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("piece 4") && e.contains("limit"), "{e}");
        // Scores that do not match the pieces.
        let mut md = spm_md(false);
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(vec![Value::F32(0.0)]),
        );
        let e = Tokenizer::from_gguf_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("scores"), "{e}");
    }

    #[test]
    fn gguf_bpe_smollm_splits_digits_and_matches_specials() {
        let tk = Tokenizer::from_gguf_metadata(&tiny_md("smollm")).unwrap();
        // "ab ab12<|endoftext|>" → ab, Ġab, 1, 2, <|endoftext|>.
        assert_eq!(
            tk.encode("ab ab12<|endoftext|>").unwrap(),
            vec![6, 7, 4, 5, 0]
        );
        assert_eq!(tk.decode(&[6, 7, 4, 5]).unwrap(), "ab ab12");
        assert_eq!(tk.max_token_id(), Some(7));
    }

    #[test]
    fn unknown_pre_and_model_are_errors() {
        let err = Tokenizer::from_gguf_metadata(&tiny_md("mystery")).unwrap_err();
        assert!(err.to_string().contains("mystery"), "{err}");
        let mut md = tiny_md("smollm");
        md.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&md),
            Err(ModelError::Tokenizer(_))
        ));
        // SentencePiece needs scores for every piece.
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&md),
            Err(ModelError::Tokenizer(_))
        ));
        md.remove("tokenizer.ggml.tokens");
        assert!(Tokenizer::from_gguf_metadata(&md).is_err());
    }

    #[test]
    fn vocab_must_fit_the_model() {
        let tk = Tokenizer::from_gguf_metadata(&tiny_md("gpt2")).unwrap();
        let mut cfg = ModelConfig::tiny(super::super::Arch::Llama);
        cfg.vocab_size = 8;
        tk.check_fits(&cfg).unwrap();
        cfg.vocab_size = 7;
        assert!(matches!(
            tk.check_fits(&cfg),
            Err(ModelError::TokenizerMismatch(_))
        ));
    }

    #[test]
    fn saves_as_tokenizer_json_and_reloads() {
        let tk = Tokenizer::from_gguf_metadata(&tiny_md("smollm")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tk.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        assert_eq!(
            back.encode("ab ab12").unwrap(),
            tk.encode("ab ab12").unwrap()
        );
    }

    #[test]
    fn bos_template_when_requested() {
        let mut md = tiny_md("gpt2");
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
        let tk = Tokenizer::from_gguf_metadata(&md).unwrap();
        assert_eq!(tk.encode("ab").unwrap(), vec![0, 6]);
    }
}
