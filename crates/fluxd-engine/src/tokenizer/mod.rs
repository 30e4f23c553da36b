//! The two FLUX.1 tokenizers — CLIP-L byte-level BPE (`tokenizer/`) and T5 Unigram
//! (`tokenizer_2/`) — loaded from the files the FLUX.1-dev repository ships, plus the offline
//! training of tiny tokenizers that `fluxd model init-tiny` writes.
//!
//! Both tokenizers rebuild the exact `tokenizers` pipelines that transformers 5.23 builds for
//! `CLIPTokenizer` and `T5Tokenizer(Fast)` (`transformers/models/{clip,t5}/tokenization_*.py`), so
//! the ids equal those diffusers' `FluxPipeline` feeds its text encoders.

mod clip;
mod spm;
mod t5;
mod train;

use std::path::{Path, PathBuf};

pub use clip::ClipTokenizer;
pub use t5::T5Tokenizer;
pub use train::{write_tiny_tokenizers, TinyVocab};

use crate::error::{EngineError, Result};

/// A tokenizer error naming `path`.
fn tok_err(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer {
        path: path.into(),
        msg: msg.to_string(),
    }
}

/// Reads a JSON file if it exists (`None` when absent).
fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::config(path, e.to_string()))
}

/// A special-token entry as the hub configs spell it: a plain string or `{"content": ...}`.
fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The special token named `key` (`"eos_token"`, ...), looked up in `tokenizer_config.json` and
/// then `special_tokens_map.json`, as transformers merges them; `default` when neither names it.
fn special_token(configs: &[&Option<serde_json::Value>], key: &str, default: &str) -> String {
    configs
        .iter()
        .filter_map(|c| c.as_ref()?.get(key).and_then(token_content))
        .next()
        .unwrap_or_else(|| default.to_owned())
}

/// An added special token with the flags `tokenizer_config.json`'s `added_tokens_decoder` gives
/// it (lstrip/rstrip/normalized/single_word); transformers registers special tokens that way, so
/// their matching inside a prompt follows the same rules.
fn added_special(content: &str, config: &Option<serde_json::Value>) -> tokenizers::AddedToken {
    let entry = config
        .as_ref()
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(|d| d.as_object())
        .and_then(|d| {
            d.values()
                .find(|v| token_content(v).as_deref() == Some(content))
        });
    let flag = |name: &str, default: bool| {
        entry
            .and_then(|e| e.get(name))
            .and_then(|v| v.as_bool())
            .unwrap_or(default)
    };
    tokenizers::AddedToken::from(content.to_owned(), true)
        .lstrip(flag("lstrip", false))
        .rstrip(flag("rstrip", false))
        .single_word(flag("single_word", false))
        .normalized(flag("normalized", false))
}

#[cfg(test)]
mod tests;
