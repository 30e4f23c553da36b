//! Offline training of the tiny tokenizers `fluxd model init-tiny` ships, written in the exact
//! file layout of FLUX.1-dev's `tokenizer/` and `tokenizer_2/` folders.
//!
//! CLIP: byte-level BPE trained here by hand (the `tokenizers` BPE trainer only adds the `</w>`
//! forms of bytes it sees at word ends, while CLIP's vocabulary always starts with all 256 byte
//! symbols then their 256 `</w>` forms — OpenAI's `simple_tokenizer.py` layout), merges learnt in
//! order of pair frequency with ties broken by the pair's text, then `<|startoftext|>` and
//! `<|endoftext|>` as the last two ids (eos highest: transformers' CLIP pools at `argmax(ids)`).
//! T5: the `tokenizers` Unigram trainer with `<pad>`=0, `</s>`=1, `<unk>`=2, run without rayon
//! and with its pieces put in a canonical order, so that the files are byte-identical across
//! runs, processes and machines.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{
    AddedToken, ModelWrapper, NormalizedString, Normalizer, OffsetReferential, OffsetType,
    PreTokenizedString, PreTokenizer, Tokenizer,
};

use super::clip::{clip_normalizer, clip_pre_tokenizer, END_OF_WORD};
use super::spm::{self, Piece};
use super::t5::build_t5;
use super::tok_err;
use crate::error::{EngineError, Result};
use crate::tiny_init::write_json;

/// The training text: a few KB of varied English image prompts.
const CORPUS: &str = include_str!("corpus.txt");
/// Target CLIP vocabulary size (512 byte symbols + merges + 2 special tokens).
const CLIP_VOCAB: usize = 1000;
/// Target T5 pieces before the 100 `<extra_id_N>` sentinels.
const T5_PIECES: u32 = 1000;
/// Sentinels T5 appends, as FLUX.1-dev's `tokenizer_config.json` declares (`extra_ids: 100`).
const EXTRA_IDS: usize = 100;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// Vocabulary sizes of the tiny tokenizers, which size the tiny text encoders' embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyVocab {
    /// Ids of the CLIP tokenizer (`<|endoftext|>` is `clip_vocab_size - 1`).
    pub clip_vocab_size: usize,
    /// Ids of the T5 tokenizer, sentinels included.
    pub t5_vocab_size: usize,
}

/// Trains and writes the tiny CLIP tokenizer into `clip_dir` (`vocab.json`, `merges.txt`,
/// `special_tokens_map.json`, `tokenizer_config.json`) and the tiny T5 tokenizer into `t5_dir`
/// (`tokenizer.json`, `spiece.model`, `special_tokens_map.json`, `tokenizer_config.json`).
/// Deterministic: the same bytes every time. Turns off the `tokenizers` crate's rayon
/// parallelism for the rest of the process (`tokenizers::utils::parallelism::set_parallelism`),
/// which its Unigram trainer would otherwise use.
pub fn write_tiny_tokenizers(clip_dir: &Path, t5_dir: &Path) -> Result<TinyVocab> {
    let clip_vocab_size = write_clip(clip_dir)?;
    let t5_vocab_size = write_t5(t5_dir)?;
    Ok(TinyVocab {
        clip_vocab_size,
        t5_vocab_size,
    })
}

/// GPT-2's reversible byte → printable char map, in its own order: the printable ranges first,
/// then the remaining bytes mapped to U+0100 onwards (OpenAI CLIP `bytes_to_unicode`).
fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    let mut out: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable(b) {
            out.extend(char::from_u32(256 + n));
            n += 1;
        }
    }
    out
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| EngineError::io(path, e))
}

/// Word counts of the corpus after CLIP's normalisation and pre-tokenisation (byte-level words).
fn clip_words(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let normalizer = clip_normalizer(dir)?;
    let pre = clip_pre_tokenizer(dir)?;
    let mut words = BTreeMap::new();
    for line in CORPUS.lines() {
        let mut norm = NormalizedString::from(line);
        normalizer
            .normalize(&mut norm)
            .map_err(|e| tok_err(dir, e))?;
        let mut pts = PreTokenizedString::from(norm.get());
        pre.pre_tokenize(&mut pts).map_err(|e| tok_err(dir, e))?;
        for (word, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *words.entry(word.to_owned()).or_insert(0u64) += 1;
        }
    }
    Ok(words)
}

/// One BPE merge: the two symbols joined.
type Merge = (String, String);

/// Learns BPE merges until the vocabulary holds `CLIP_VOCAB - 2` symbols.
fn train_clip_bpe(dir: &Path) -> Result<(Vec<String>, Vec<Merge>)> {
    let bytes = byte_symbols();
    let mut vocab: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    vocab.extend(bytes.iter().map(|c| format!("{c}{END_OF_WORD}")));
    let mut known: std::collections::HashSet<String> = vocab.iter().cloned().collect();
    let mut words: Vec<(Vec<String>, u64)> = clip_words(dir)?
        .into_iter()
        .map(|(w, n)| {
            let mut syms: Vec<String> = w.chars().map(String::from).collect();
            if let Some(last) = syms.last_mut() {
                last.push_str(END_OF_WORD);
            }
            (syms, n)
        })
        .collect();
    let mut merges = vec![];
    while vocab.len() < CLIP_VOCAB - 2 {
        let mut counts: HashMap<(&str, &str), u64> = HashMap::new();
        for (syms, n) in &words {
            for pair in syms.windows(2) {
                *counts.entry((&pair[0], &pair[1])).or_insert(0) += n;
            }
        }
        // Most frequent pair; ties go to the smallest pair so that the result is reproducible.
        let Some(((a, b), _)) = counts
            .into_iter()
            .max_by(|(p, n), (q, m)| n.cmp(m).then_with(|| q.cmp(p)))
        else {
            return Err(tok_err(
                dir,
                "tiny CLIP corpus too small for the target vocabulary",
            ));
        };
        let (a, b) = (a.to_owned(), b.to_owned());
        let joined = format!("{a}{b}");
        for (syms, _) in &mut words {
            let mut i = 0;
            while i + 1 < syms.len() {
                if syms[i] == a && syms[i + 1] == b {
                    syms[i] = joined.clone();
                    syms.remove(i + 1);
                }
                i += 1;
            }
        }
        if known.insert(joined.clone()) {
            vocab.push(joined);
        }
        merges.push((a, b));
    }
    Ok((vocab, merges))
}

fn write_clip(dir: &Path) -> Result<usize> {
    let (mut vocab, merges) = train_clip_bpe(dir)?;
    vocab.push(BOS.into());
    vocab.push(EOS.into());
    // vocab.json as the hub has it: one line, ids in order.
    let mut json = String::from("{");
    for (id, tok) in vocab.iter().enumerate() {
        if id > 0 {
            json.push(',');
        }
        let key = serde_json::to_string(tok).map_err(|e| tok_err(dir, e))?;
        json.push_str(&format!("{key}:{id}"));
    }
    json.push('}');
    write_file(&dir.join("vocab.json"), json.as_bytes())?;
    let mut text = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        text.push_str(&format!("{a} {b}\n"));
    }
    write_file(&dir.join("merges.txt"), text.as_bytes())?;

    let special = |content: &str| {
        serde_json::json!({"content": content, "lstrip": false, "normalized": true,
            "rstrip": false, "single_word": false})
    };
    write_json(
        &dir.join("special_tokens_map.json"),
        &serde_json::json!({"bos_token": special(BOS), "eos_token": special(EOS),
            "pad_token": EOS, "unk_token": special(EOS)}),
    )?;
    let decoder_entry = |content: &str| {
        let mut v = special(content);
        v["special"] = true.into();
        v
    };
    let n = vocab.len();
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({
            "add_prefix_space": false,
            "added_tokens_decoder": {
                (n - 2).to_string(): decoder_entry(BOS),
                (n - 1).to_string(): decoder_entry(EOS),
            },
            "bos_token": BOS,
            "clean_up_tokenization_spaces": true,
            "do_lower_case": true,
            "eos_token": EOS,
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": EOS,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": EOS,
        }),
    )?;
    Ok(n)
}

/// Trains the Unigram pieces: `<pad>`, `</s>`, `<unk>`, then the rest by falling score (ties by
/// text), scores rounded to f32 as `spiece.model` stores them.
fn train_t5_unigram(dir: &Path) -> Result<Vec<(String, f32)>> {
    // The trainer's parallel reductions would sum floats in a thread-count-dependent order.
    tokenizers::utils::parallelism::set_parallelism(false);
    let mut tokenizer = Tokenizer::new(Unigram::default());
    tokenizer.with_pre_tokenizer(Some(PreSeq::new(vec![
        WhitespaceSplit.into(),
        Metaspace::new('▁', PrependScheme::Always, true).into(),
    ])));
    let specials: Vec<AddedToken> = ["<pad>", "</s>", "<unk>"]
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer: TrainerWrapper = UnigramTrainer::builder()
        .vocab_size(T5_PIECES)
        .special_tokens(specials)
        .unk_token(Some("<unk>".into()))
        .show_progress(false)
        .build()
        .map_err(|e| tok_err(dir, e))?
        .into();
    tokenizer
        .train(&mut trainer, CORPUS.lines())
        .map_err(|e| tok_err(dir, e))?;
    let ModelWrapper::Unigram(model) = tokenizer.get_model() else {
        return Err(tok_err(dir, "Unigram trainer returned another model"));
    };
    let mut trained: Vec<(String, f64)> = model.iter().skip(3).cloned().collect();
    canonical_rare_chars(&mut trained);
    let mut pieces: Vec<(String, f32)> = trained.into_iter().map(|(p, s)| (p, s as f32)).collect();
    pieces.sort_by(|(p, s), (q, t)| t.total_cmp(s).then_with(|| p.cmp(q)));
    let mut out: Vec<(String, f32)> = ["<pad>", "</s>", "<unk>"]
        .iter()
        .map(|t| ((*t).to_owned(), 0.0))
        .collect();
    out.extend(pieces);
    Ok(out)
}

/// The trainer gives the characters it never scored `min + k·0.0001` with `k` in hash-set order
/// (`tokenizers` `UnigramTrainer::finalize`), which differs between processes. The set of those
/// characters and the multiset of their scores are stable, so hand the sorted scores out again
/// in character order: same scores, reproducible assignment.
fn canonical_rare_chars(pieces: &mut [(String, f64)]) {
    let min = pieces.iter().map(|(_, s)| *s).fold(f64::INFINITY, f64::min);
    let mut rare: Vec<usize> = (0..pieces.len())
        .filter(|&i| pieces[i].0.chars().count() == 1 && pieces[i].1 < min + 0.01)
        .collect();
    let mut scores: Vec<f64> = rare.iter().map(|&i| pieces[i].1).collect();
    scores.sort_by(f64::total_cmp);
    rare.sort_by(|&i, &j| pieces[i].0.cmp(&pieces[j].0));
    for (i, s) in rare.into_iter().zip(scores) {
        pieces[i].1 = s;
    }
}

fn write_t5(dir: &Path) -> Result<usize> {
    let pieces = train_t5_unigram(dir)?;
    let spm_pieces: Vec<Piece> = pieces
        .iter()
        .enumerate()
        .map(|(i, (p, s))| Piece {
            piece: p.clone(),
            score: *s,
            kind: match i {
                0 | 1 => spm::TYPE_CONTROL,
                2 => spm::TYPE_UNKNOWN,
                _ => spm::TYPE_NORMAL,
            },
        })
        .collect();
    write_file(
        &dir.join("spiece.model"),
        &spm::write_t5_unigram(&spm_pieces),
    )?;

    let extra: Vec<String> = (0..EXTRA_IDS).map(|i| format!("<extra_id_{i}>")).collect();
    let mut vocab: Vec<(String, f64)> = pieces
        .iter()
        .map(|(p, s)| (p.clone(), f64::from(*s)))
        .collect();
    vocab.extend(extra.iter().rev().map(|t| (t.clone(), 0.0)));
    let n = vocab.len();
    let mut specials: Vec<AddedToken> = ["<pad>", "</s>", "<unk>"]
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    specials.extend(extra.iter().map(|t| AddedToken::from(t.clone(), true)));
    let tokenizer = build_t5(dir, vocab, None, &specials, "</s>")?;
    let json = tokenizer.to_string(true).map_err(|e| tok_err(dir, e))?;
    write_file(&dir.join("tokenizer.json"), json.as_bytes())?;

    let special = |content: &str| {
        serde_json::json!({"content": content, "lstrip": false, "normalized": false,
            "rstrip": false, "single_word": false})
    };
    write_json(
        &dir.join("special_tokens_map.json"),
        &serde_json::json!({"additional_special_tokens": extra, "eos_token": special("</s>"),
            "pad_token": special("<pad>"), "unk_token": special("<unk>")}),
    )?;
    let mut decoder = serde_json::Map::new();
    let mut entry = |id: usize, content: &str| {
        let mut v = special(content);
        v["special"] = true.into();
        decoder.insert(id.to_string(), v);
    };
    entry(0, "<pad>");
    entry(1, "</s>");
    entry(2, "<unk>");
    for (i, t) in extra.iter().enumerate() {
        entry(n - 1 - i, t);
    }
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({
            "add_prefix_space": true,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": extra,
            "clean_up_tokenization_spaces": true,
            "eos_token": "</s>",
            "extra_ids": EXTRA_IDS,
            "legacy": true,
            "model_max_length": 512,
            "pad_token": "<pad>",
            "sp_model_kwargs": {},
            "tokenizer_class": "T5Tokenizer",
            "unk_token": "<unk>",
        }),
    )?;
    Ok(n)
}
