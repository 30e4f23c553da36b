//! The prompt policy: a list of blocked terms, each allowed from some `safety_tolerance` up or
//! blocked at every tolerance, matched whole-word against the prompt.
//!
//! File format (the built-in list, `default_terms.txt`, is an example): one term or phrase per
//! line, `#` to the end of a line is a comment, blank lines are ignored, and a line may start
//! with a prefix:
//! - `always: TERM`: blocked at every tolerance, 6 included;
//! - `N: TERM` (N in 0..=6): allowed from tolerance N up, blocked below;
//! - no prefix: the same as `6:` (blocked at 0..=5, allowed at the least strict tolerance).
//!
//! Matching. Prompt and terms go through the same normalisation: invisible format characters
//! (zero-width spaces and joiners, soft hyphen, BOM...) are removed; Unicode compatibility
//! decomposition (NFKD) with combining marks dropped and recomposition (NFKC), so full-width,
//! mathematical-alphanumeric and accented letters fold to plain ones; lowercasing. The text then
//! splits into words at every character that is not a letter or digit, and a term matches when
//! its words appear in order, adjacent, in
//! 1. the words of the prompt (so `child  porn`, `Child-Porn` and `child, porn` all match
//!    `child porn`), or
//! 2. the words of the prompt with spelled-out and broken-up words rejoined: adjacent words
//!    with only punctuation between them (`n.u.d.e`, `nu_de`), and runs of single characters
//!    even with spaces between them (`n u d e`), become one word;
//!
//! and a phrase also matches when written as one word (`childporn`). Terms in scripts written
//! without spaces (Han, kana, Thai) match as substrings of the prompt's letters.
//! Not handled, knowingly: look-alike letters from other scripts (Cyrillic `а` for Latin `a`),
//! digits for letters (`p0rn`), inflections not listed, and meaning (a blocked word in an
//! innocent sense is still blocked; dropping accents can also merge distinct words).
//!
//! The moderation reason does not echo the matched term: it would turn the API into an oracle
//! for enumerating the list and repeat the offending text into responses and stored tasks.
//! Operators who want the term in their logs get it from [`PromptPolicy::blocked_terms`].

use std::collections::HashMap;
use std::path::Path;

use tokenizers::normalizers::StripAccents;
use tokenizers::{NormalizedString, Normalizer};

use super::policy::SafetyTolerance;
use crate::error::{EngineError, Result};

/// The reason given for a moderated prompt (the same for every term, see the module doc).
pub const PROMPT_REASON: &str = "The prompt contains a term that the content policy blocks.";

/// The built-in term list (minimal; operators should supply their own).
pub const BUILTIN_TERMS: &str = include_str!("default_terms.txt");

#[derive(Debug, Clone)]
struct Term {
    /// The term as written in the list, for operator logs.
    text: String,
    /// Its normalised words.
    words: Vec<String>,
    /// Blocked below this tolerance; `None`: blocked at every tolerance.
    allowed_from: Option<u8>,
    /// Whether to match by substring (scripts written without spaces).
    unspaced: bool,
}

impl Term {
    fn blocks_at(&self, tolerance: SafetyTolerance) -> bool {
        self.allowed_from.is_none_or(|n| tolerance.get() < n)
    }
}

/// A set of blocked terms with their tolerances.
#[derive(Debug, Clone, Default)]
pub struct PromptPolicy {
    terms: Vec<Term>,
    /// Term indices by first word, and by the whole phrase joined into one word.
    by_first: HashMap<String, Vec<usize>>,
    by_joined: HashMap<String, Vec<usize>>,
    unspaced: Vec<usize>,
}

impl PromptPolicy {
    /// A policy that blocks nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in list, [`BUILTIN_TERMS`].
    pub fn builtin() -> Self {
        // The built-in list is parsed in the tests; a parse error here would be a build defect,
        // and an empty policy is the only non-panicking fallback.
        Self::parse(BUILTIN_TERMS, Path::new("<built-in terms>")).unwrap_or_default()
    }

    /// Reads a term list file (format in the module doc).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses a term list; errors name `source` and the line.
    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        let mut policy = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |msg: String| EngineError::config(source, format!("line {}: {msg}", n + 1));
            let (allowed_from, term) = match line.split_once(':') {
                Some((prefix, rest)) => {
                    let prefix = prefix.trim();
                    if prefix.eq_ignore_ascii_case("always") {
                        (None, rest.trim())
                    } else if let Ok(v) = prefix.parse::<u8>() {
                        if v > SafetyTolerance::MAX {
                            return Err(bad(format!(
                                "tolerance {v} is above {}; use `always:` to block a term at \
                                 every tolerance",
                                SafetyTolerance::MAX
                            )));
                        }
                        (Some(v), rest.trim())
                    } else {
                        return Err(bad(format!(
                            "prefix `{prefix}` is neither `always` nor a tolerance 0..=6"
                        )));
                    }
                }
                None => (Some(SafetyTolerance::MAX), line),
            };
            let words = words(&normalize(term));
            if words.is_empty() {
                return Err(bad(format!("`{line}` has no letters or digits to match")));
            }
            policy.push(Term {
                text: term.to_string(),
                unspaced: words.iter().any(|w| w.chars().any(is_unspaced_script)),
                words,
                allowed_from,
            });
        }
        Ok(policy)
    }

    /// Adds every term of `other` (e.g. an operator's list to the built-in one).
    pub fn extend(&mut self, other: PromptPolicy) {
        for t in other.terms {
            self.push(t);
        }
    }

    fn push(&mut self, term: Term) {
        let i = self.terms.len();
        if term.unspaced {
            self.unspaced.push(i);
        } else {
            if let Some(first) = term.words.first() {
                self.by_first.entry(first.clone()).or_default().push(i);
            }
            if term.words.len() > 1 {
                self.by_joined
                    .entry(term.words.concat())
                    .or_default()
                    .push(i);
            }
        }
        self.terms.push(term);
    }

    /// Number of terms.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Whether there are no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The terms (as written in their list) that block `prompt` at `tolerance`, in list order.
    pub fn blocked_terms(&self, prompt: &str, tolerance: SafetyTolerance) -> Vec<&str> {
        let text = normalize(prompt);
        let plain = words(&text);
        let joined = rejoined_words(&text);
        let mut hit = vec![false; self.terms.len()];
        for stream in [&plain, &joined] {
            for (pos, w) in stream.iter().enumerate() {
                for &i in self.by_first.get(w).into_iter().flatten() {
                    let t = &self.terms[i].words;
                    if stream.len() - pos >= t.len() && stream[pos..pos + t.len()] == t[..] {
                        hit[i] = true;
                    }
                }
                for &i in self.by_joined.get(w).into_iter().flatten() {
                    hit[i] = true;
                }
            }
        }
        if !self.unspaced.is_empty() {
            let letters = plain.concat();
            for &i in &self.unspaced {
                hit[i] = letters.contains(&self.terms[i].words.concat());
            }
        }
        self.terms
            .iter()
            .zip(hit)
            .filter(|(t, h)| *h && t.blocks_at(tolerance))
            .map(|(t, _)| t.text.as_str())
            .collect()
    }

    /// The moderation reasons for `prompt` at `tolerance`, or `None` if it may be served.
    pub fn moderate(&self, prompt: &str, tolerance: SafetyTolerance) -> Option<Vec<String>> {
        if self.blocked_terms(prompt, tolerance).is_empty() {
            None
        } else {
            Some(vec![PROMPT_REASON.to_string()])
        }
    }
}

/// Characters that render as nothing and would split or disguise a word: soft hyphen, the
/// zero-width space/joiners and direction marks, word joiner and invisible operators,
/// Mongolian vowel separator, combining grapheme joiner, BOM.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// Scripts written without spaces between words: Thai, kana, CJK ideographs.
fn is_unspaced_script(c: char) -> bool {
    matches!(c,
        '\u{0E00}'..='\u{0E7F}' | '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{4DBF}'
        | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}')
}

/// The normalisation of the module doc: invisible characters removed, NFKD, combining marks
/// dropped, NFKC, lowercase.
pub fn normalize(text: &str) -> String {
    let cleaned: String = text.chars().filter(|&c| !is_invisible(c)).collect();
    let mut n = NormalizedString::from(cleaned.as_str());
    n.nfkd();
    // StripAccents only filters characters; it cannot fail.
    let _ = StripAccents.normalize(&mut n);
    n.nfkc();
    n.lowercase();
    n.get().to_string()
}

/// Maximal runs of letters and digits.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Words with broken-up words rejoined: adjacent words separated by punctuation only, and
/// adjacent single characters whatever separates them, become one.
fn rejoined_words(text: &str) -> Vec<String> {
    // Words with whether whitespace separates them from the previous word.
    let mut tokens: Vec<(String, bool)> = Vec::new();
    let mut current = String::new();
    let mut spaced = true;
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_alphanumeric() {
            current.push(c);
            continue;
        }
        if !current.is_empty() {
            tokens.push((std::mem::take(&mut current), spaced));
            spaced = false;
        }
        spaced |= c.is_whitespace();
    }
    let mut out: Vec<String> = Vec::new();
    let mut last_single = false;
    for (word, spaced) in tokens {
        let single = word.chars().count() == 1;
        match out.last_mut() {
            Some(prev) if !spaced || (single && last_single) => prev.push_str(&word),
            _ => out.push(word),
        }
        last_single = single;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(v: u8) -> SafetyTolerance {
        SafetyTolerance::new(v).unwrap_or_default()
    }

    fn policy(text: &str) -> PromptPolicy {
        PromptPolicy::parse(text, Path::new("terms.txt")).unwrap_or_default()
    }

    #[test]
    fn the_builtin_list_parses_and_has_always_terms() -> Result<()> {
        let p = PromptPolicy::parse(BUILTIN_TERMS, Path::new("builtin"))?;
        assert!(p.len() > 10);
        assert_eq!(p.len(), PromptPolicy::builtin().len());
        assert!(p.terms.iter().any(|t| t.allowed_from.is_none()));
        assert_eq!(
            p.moderate("a watercolor of a lighthouse at dawn", tol(0)),
            None
        );
        assert_eq!(
            p.moderate("Child-Porn", tol(6)),
            Some(vec![PROMPT_REASON.to_string()])
        );
        Ok(())
    }

    #[test]
    fn prefixes_set_the_tolerance_from_which_a_term_is_allowed() {
        let p = policy("# comment\n\n3: lingerie   # inline comment\nalways: forbidden thing\nplain\n0: harmless\n");
        assert_eq!(p.len(), 4);
        for t in 0..=6 {
            let lingerie = p.blocked_terms("red lingerie", tol(t));
            assert_eq!(lingerie.is_empty(), t >= 3, "tolerance {t}");
            assert_eq!(
                p.blocked_terms("a forbidden thing", tol(t)),
                ["forbidden thing"]
            );
            assert_eq!(p.blocked_terms("plain", tol(t)).is_empty(), t == 6);
            assert!(p.blocked_terms("harmless", tol(t)).is_empty());
        }
    }

    #[test]
    fn bad_lines_are_errors_naming_file_and_line() {
        for (text, needle) in [
            ("ok\n7: x", "line 2"),
            ("sometimes: x", "line 1"),
            ("3: ...", "line 1"),
        ] {
            let msg = PromptPolicy::parse(text, Path::new("terms.txt"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains("terms.txt") && msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn matching_is_whole_word_case_and_width_insensitive() {
        let p = policy("always: nude\nalways: child porn");
        let blocked = |s: &str| !p.blocked_terms(s, tol(6)).is_empty();
        for s in [
            "NUDE",
            "a Nude figure",
            "ｎｕｄｅ",     // full-width
            "𝐧𝐮𝐝𝐞",         // mathematical bold
            "nüdé",         // accents
            "nu\u{200B}de", // zero-width space
            "n u d e",      // spelled out
            "n.u.d.e",
            "nu-de",
            "child   porn",
            "CHILD, porn!",
            "childporn",
            "c h i l d p o r n",
        ] {
            assert!(blocked(s), "{s:?} should be blocked");
        }
        for s in [
            "nudes",
            "denude",
            "a nu de",
            "child portrait",
            "porn child",
            "nudibranch",
        ] {
            assert!(!blocked(s), "{s:?} should pass");
        }
    }

    #[test]
    fn unspaced_scripts_match_as_substrings() {
        let p = policy("always: 色情");
        assert!(!p.blocked_terms("一张色情图片", tol(6)).is_empty());
        assert!(p.blocked_terms("一张风景图片", tol(6)).is_empty());
    }

    #[test]
    fn extend_adds_an_operator_list() {
        let mut p = PromptPolicy::builtin();
        let n = p.len();
        p.extend(policy("always: mycorp secret"));
        assert_eq!(p.len(), n + 1);
        assert!(p.moderate("the MyCorp Secret logo", tol(6)).is_some());
        assert!(PromptPolicy::empty().moderate("nude", tol(0)).is_none());
    }
}
