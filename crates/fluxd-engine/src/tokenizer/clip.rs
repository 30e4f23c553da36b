//! CLIP-L's byte-level BPE tokenizer, built from `vocab.json` + `merges.txt` the way transformers
//! 5.23's `CLIPTokenizer.__init__` builds it (`transformers/models/clip/tokenization_clip.py`):
//! NFC, whitespace runs → one space, lowercase; split on CLIP's regex; GPT-2 byte-level mapping;
//! BPE with the `</w>` end-of-word suffix; `<|startoftext|> … <|endoftext|>`; truncated and padded
//! to `model_max_length` (77) with the pad token, as `FluxPipeline._get_clip_prompt_embeds` asks.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSeq, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    NormalizerWrapper, PaddingDirection, PaddingParams, PaddingStrategy, PreTokenizerWrapper,
    Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::{added_special, read_json_opt, special_token, tok_err};
use crate::error::{EngineError, Result};

/// CLIP's pre-tokenisation regex (transformers' `CLIPTokenizer`, from OpenAI's `simple_tokenizer`):
/// the special tokens, English contractions, letter runs, single digits, other-symbol runs.
pub(super) const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The end-of-word suffix CLIP's BPE appends to the last symbol of every word.
pub(super) const END_OF_WORD: &str = "</w>";

/// CLIP-L's tokenizer (FLUX.1's first text encoder).
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    /// The same pipeline without truncation and padding, to measure prompts.
    untruncated: Tokenizer,
    max_length: usize,
    dir: PathBuf,
}

/// CLIP's normalizer: NFC, `\s+` → `" "`, lowercase.
pub(super) fn clip_normalizer(path: &Path) -> Result<NormalizerWrapper> {
    let replace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| tok_err(path, format!("whitespace regex: {e}")))?;
    Ok(NormSeq::new(vec![NFC.into(), replace.into(), Lowercase.into()]).into())
}

/// CLIP's pre-tokenizer: keep the regex matches (drop what lies between), then byte-level
/// (python's `ByteLevel(add_prefix_space=False)` keeps the default `use_regex=True`).
pub(super) fn clip_pre_tokenizer(path: &Path) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT_REGEX.into()),
        tokenizers::SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| tok_err(path, format!("split regex: {e}")))?;
    Ok(PreSeq::new(vec![split.into(), ByteLevel::new(false, true, true).into()]).into())
}

impl ClipTokenizer {
    /// Loads `vocab.json` and `merges.txt` from `dir`, with the special tokens and
    /// `model_max_length` of `tokenizer_config.json` / `special_tokens_map.json` when present
    /// (defaults: CLIP's `<|startoftext|>`, `<|endoftext|>` for eos/pad/unk, 77).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        for (path, what) in [
            (&vocab, "CLIP BPE vocabulary"),
            (&merges, "CLIP BPE merges"),
        ] {
            if !path.exists() {
                return Err(EngineError::MissingFile {
                    path: path.clone(),
                    what: what.into(),
                });
            }
        }
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let map = read_json_opt(&dir.join("special_tokens_map.json"))?;
        let configs = [&config, &map];
        let bos = special_token(&configs, "bos_token", "<|startoftext|>");
        let eos = special_token(&configs, "eos_token", "<|endoftext|>");
        let pad = special_token(&configs, "pad_token", "<|endoftext|>");
        let unk = special_token(&configs, "unk_token", "<|endoftext|>");
        let max_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(|v| v.as_u64())
            .map_or(77, |v| v as usize);

        let (vocab_s, merges_s) = (path_str(&vocab)?, path_str(&merges)?);
        let bpe = BPE::from_file(vocab_s, merges_s)
            .unk_token(unk.clone())
            .end_of_word_suffix(END_OF_WORD.into())
            .continuing_subword_prefix(String::new())
            .fuse_unk(false)
            .build()
            .map_err(|e| tok_err(dir, format!("loading vocab.json/merges.txt: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer
            .with_normalizer(Some(clip_normalizer(dir)?))
            .map_err(|e| tok_err(dir, e))?;
        tokenizer.with_pre_tokenizer(Some(clip_pre_tokenizer(dir)?));
        let mut specials = vec![];
        for tok in [&bos, &eos, &unk, &pad] {
            if !specials.contains(tok) {
                specials.push(tok.clone());
            }
        }
        let added: Vec<_> = specials.iter().map(|t| added_special(t, &config)).collect();
        tokenizer
            .add_special_tokens(added.iter().cloned())
            .map_err(|e| tok_err(dir, e))?;
        let id = |tok: &str| {
            tokenizer
                .token_to_id(tok)
                .ok_or_else(|| tok_err(&vocab, format!("special token {tok} has no id")))
        };
        let (bos_id, eos_id, pad_id) = (id(&bos)?, id(&eos)?, id(&pad)?);
        // transformers' CLIPTokenizer: RobertaProcessing(sep=eos, cls=bos, trim_offsets=False,
        // add_prefix_space=False) gives `bos … eos`.
        let post = RobertaProcessing::new((eos, eos_id), (bos, bos_id))
            .trim_offsets(false)
            .add_prefix_space(false);
        tokenizer.with_post_processor(Some(post));
        let untruncated = tokenizer.clone();
        // `padding="max_length", truncation=True`: transformers sets these on the backend;
        // truncation leaves room for the two special tokens, so eos survives.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| tok_err(dir, e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad,
        }));
        Ok(Self {
            tokenizer,
            untruncated,
            max_length,
            dir: dir.to_path_buf(),
        })
    }

    /// The ids of `prompt`: `<|startoftext|>`, at most `max_length - 2` tokens, `<|endoftext|>`,
    /// then the pad token up to exactly `max_length` ids.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| tok_err(&self.dir, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The prompt's untruncated length with `<|startoftext|>` and `<|endoftext|>`; above
    /// `max_length` part of the prompt is cut, which diffusers logs as a warning.
    pub fn count_tokens(&self, prompt: &str) -> Result<usize> {
        let enc = self
            .untruncated
            .encode(prompt, true)
            .map_err(|e| tok_err(&self.dir, e))?;
        Ok(enc.len())
    }

    /// The sequence length every encoding has (`model_max_length`, 77 for CLIP-L).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The number of ids, special tokens included (49408 for CLIP-L).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// A path as UTF-8, which the `tokenizers` file readers need.
fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| tok_err(path, "path is not valid UTF-8"))
}
