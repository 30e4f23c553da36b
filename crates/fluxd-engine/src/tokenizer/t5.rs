//! T5's SentencePiece Unigram tokenizer (`tokenizer_2/`), rebuilt as transformers 5.23's
//! `T5Tokenizer` (alias `T5TokenizerFast`) builds it (`transformers/models/t5/tokenization_t5.py`):
//! because that class has its own `__init__`, transformers takes only the vocabulary and the
//! precompiled charsmap from `tokenizer.json` (`tokenization_utils_tokenizers.py`,
//! `convert_to_native_format`) — or from `spiece.model`, plus `<extra_id_N>` appended in
//! reverse (`convert_slow_tokenizer.py`, `T5Converter.convert_from_spm`) — and always uses
//! `Precompiled` → `WhitespaceSplit` + `Metaspace(▁, always, split)` → `Unigram(unk_id=2)` →
//! `$A </s>`. `FluxPipeline._get_t5_prompt_embeds` truncates and pads with `<pad>` to
//! `max_sequence_length`.

use std::path::{Path, PathBuf};

use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{ModelWrapper, NormalizerWrapper, Tokenizer};

use super::{added_special, read_json_opt, special_token, spm, tok_err};
use crate::error::{EngineError, Result};

/// T5's tokenizer (FLUX.1's second text encoder).
#[derive(Debug, Clone)]
pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    eos_id: u32,
    pad_id: u32,
    dir: PathBuf,
}

/// Builds transformers' T5 pipeline around a Unigram vocabulary. `path` names errors.
pub(super) fn build_t5(
    path: &Path,
    vocab: Vec<(String, f64)>,
    charsmap: Option<Precompiled>,
    specials: &[tokenizers::AddedToken],
    eos: &str,
) -> Result<Tokenizer> {
    // transformers hard-codes `unk_id=2` and `byte_fallback=False` for T5.
    let unigram = Unigram::from(vocab, Some(2), false).map_err(|e| tok_err(path, e))?;
    let mut tokenizer = Tokenizer::new(unigram);
    tokenizer
        .with_normalizer(charsmap.map(NormalizerWrapper::Precompiled))
        .map_err(|e| tok_err(path, e))?;
    tokenizer.with_pre_tokenizer(Some(PreSeq::new(vec![
        WhitespaceSplit.into(),
        Metaspace::new('▁', PrependScheme::Always, true).into(),
    ])));
    tokenizer
        .add_special_tokens(specials.iter().cloned())
        .map_err(|e| tok_err(path, e))?;
    let eos_id = tokenizer
        .token_to_id(eos)
        .ok_or_else(|| tok_err(path, format!("eos token {eos} is not in the vocabulary")))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("$A {eos}"))
        .and_then(|b| b.try_pair(format!("$A {eos} $B {eos}")))
        .map_err(|e| tok_err(path, e))?
        .special_tokens(vec![(eos.to_owned(), eos_id)])
        .build()
        .map_err(|e| tok_err(path, e))?;
    tokenizer.with_post_processor(Some(post));
    Ok(tokenizer)
}

/// Finds a `Precompiled` normalizer, alone or inside a `Sequence`.
fn find_precompiled(n: &NormalizerWrapper) -> Option<Precompiled> {
    match n {
        NormalizerWrapper::Precompiled(p) => Some(p.clone()),
        NormalizerWrapper::Sequence(s) => s.as_ref().iter().find_map(find_precompiled),
        _ => None,
    }
}

impl T5Tokenizer {
    /// Loads `dir/tokenizer.json` when present, else builds the vocabulary from
    /// `dir/spiece.model` (+ `extra_ids` sentinels from `tokenizer_config.json`, default 100).
    /// Special tokens come from `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let map = read_json_opt(&dir.join("special_tokens_map.json"))?;
        let configs = [&config, &map];
        let eos = special_token(&configs, "eos_token", "</s>");
        let unk = special_token(&configs, "unk_token", "<unk>");
        let pad = special_token(&configs, "pad_token", "<pad>");
        let extra_ids = config
            .as_ref()
            .and_then(|c| c.get("extra_ids"))
            .and_then(|v| v.as_u64())
            .map_or(100, |v| v as usize);
        let mut additional: Vec<String> = configs
            .iter()
            .filter_map(|c| {
                c.as_ref()?
                    .get("additional_special_tokens")?
                    .as_array()
                    .cloned()
            })
            .next()
            .unwrap_or_default()
            .iter()
            .filter_map(super::token_content)
            .collect();
        if !additional.iter().any(|t| t.starts_with("<extra_id_")) {
            additional.extend((0..extra_ids).map(|i| format!("<extra_id_{i}>")));
        }

        let json = dir.join("tokenizer.json");
        let spiece = dir.join("spiece.model");
        let (source, vocab, charsmap) = if json.exists() {
            let file = Tokenizer::from_file(&json).map_err(|e| tok_err(&json, e))?;
            let ModelWrapper::Unigram(model) = file.get_model() else {
                return Err(tok_err(&json, "not a Unigram (sentencepiece) tokenizer"));
            };
            let vocab = model.iter().map(|(p, s)| (p.clone(), *s)).collect();
            (
                json,
                vocab,
                file.get_normalizer().and_then(find_precompiled),
            )
        } else if spiece.exists() {
            let model = spm::read(&spiece)?;
            let mut vocab: Vec<(String, f64)> = model
                .pieces
                .into_iter()
                .map(|p| (p.piece, f64::from(p.score)))
                .collect();
            vocab.extend(
                (0..extra_ids)
                    .rev()
                    .map(|i| (format!("<extra_id_{i}>"), 0.0)),
            );
            let charsmap = if model.charsmap.is_empty() {
                None
            } else {
                Some(Precompiled::from(&model.charsmap).map_err(|e| tok_err(&spiece, e))?)
            };
            (spiece, vocab, charsmap)
        } else {
            return Err(EngineError::MissingFile {
                path: json,
                what: "T5 tokenizer (tokenizer.json or spiece.model)".into(),
            });
        };

        let mut names = vec![eos.clone(), unk.clone(), pad.clone()];
        names.extend(additional);
        let specials: Vec<_> = names.iter().map(|t| added_special(t, &config)).collect();
        let tokenizer = build_t5(&source, vocab, charsmap, &specials, &eos)?;
        let id = |tok: &str| {
            tokenizer
                .token_to_id(tok)
                .ok_or_else(|| tok_err(&source, format!("special token {tok} has no id")))
        };
        let (eos_id, pad_id) = (id(&eos)?, id(&pad)?);
        Ok(Self {
            tokenizer,
            eos_id,
            pad_id,
            dir: dir.to_path_buf(),
        })
    }

    /// The prompt's tokens without `</s>`, untruncated.
    fn content_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| tok_err(&self.dir, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Exactly `max_length` ids: at most `max_length - 1` prompt tokens, `</s>`, then `<pad>`
    /// (`truncation=True` keeps room for the special token, as the tokenizers backend does).
    pub fn encode(&self, prompt: &str, max_length: usize) -> Result<Vec<u32>> {
        if max_length == 0 {
            return Err(EngineError::InvalidInput(
                "T5 max_length must be at least 1".into(),
            ));
        }
        let mut ids = self.content_ids(prompt)?;
        ids.truncate(max_length - 1);
        ids.push(self.eos_id);
        ids.resize(max_length, self.pad_id);
        Ok(ids)
    }

    /// The prompt's untruncated length including `</s>`, what diffusers compares against
    /// `max_sequence_length` to warn that part of a prompt was cut.
    pub fn count_tokens(&self, prompt: &str) -> Result<usize> {
        Ok(self.content_ids(prompt)?.len() + 1)
    }

    /// The number of ids, sentinels and special tokens included (32100 for FLUX.1's T5).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}
