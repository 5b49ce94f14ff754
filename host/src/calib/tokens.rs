//! Tokenize a text once: token streams are cached by the hash of the tokenizer and the text.

use crate::hash::sha256_hex;
use crate::model::{ModelError, Tokenizer};
use std::path::Path;

/// Token ids of `text`, read from `cache_dir` when this tokenizer already encoded this text.
pub fn tokenize_cached(
    tokenizer: &Tokenizer,
    text: &str,
    cache_dir: Option<&Path>,
) -> Result<Vec<u32>, ModelError> {
    let Some(dir) = cache_dir else {
        return tokenizer.encode(text);
    };
    let tok_json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let key = sha256_hex(
        format!(
            "{}\n{}",
            sha256_hex(tok_json.as_bytes()),
            sha256_hex(text.as_bytes())
        )
        .as_bytes(),
    );
    let path = dir.join("tokens").join(format!("{key}.u32"));
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() % 4 == 0 {
            return Ok(bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect());
        }
    }
    let ids = tokenizer.encode(text)?;
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    // A cache that cannot be written only costs time.
    if std::fs::create_dir_all(path.parent().expect("has parent")).is_ok() {
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir.join("tokens")) {
            if std::io::Write::write_all(&mut tmp, &bytes).is_ok() {
                let _ = tmp.persist(&path);
            }
        }
    }
    Ok(ids)
}
