//! The words a capture is found by, and the terms of a search: one tokenizer for both stores, so
//! that SQLite and PostgreSQL answer a search alike.
//!
//! A word is a run of letters and digits, lower-cased; every other character separates words,
//! and each Chinese or Japanese ideograph or kana is a word of its own (those scripts do not put
//! spaces between words). A capture is indexed by the distinct words of its question and its
//! answer (the first [`MAX_INDEXED_CHARS`] characters of each). A search matches the captures
//! that have, for every term of the query, a word that starts with it: `env` finds "Envoy".

use std::collections::HashSet;

/// Characters of the question, and of the answer, that are indexed.
pub const MAX_INDEXED_CHARS: usize = 64 * 1024;
/// Longest word kept, in characters; longer words (and terms) are cut to this.
pub const MAX_WORD_CHARS: usize = 64;
/// Most terms a search may have.
pub const MAX_TERMS: usize = 16;

fn is_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x3134F) // CJK Extensions B–G
}

/// Calls `emit` with every word of `text`, in order.
fn each_word(text: &str, limit: usize, mut emit: impl FnMut(String)) {
    let mut word = String::new();
    let mut chars = 0;
    let mut flush = |word: &mut String, chars: &mut usize| {
        if !word.is_empty() {
            emit(std::mem::take(word));
        }
        *chars = 0;
    };
    for c in text.chars().take(limit) {
        if is_ideograph(c) {
            flush(&mut word, &mut chars);
            word.push(c);
            flush(&mut word, &mut chars);
        } else if c.is_alphanumeric() {
            if chars < MAX_WORD_CHARS {
                word.extend(c.to_lowercase());
                chars += 1;
            }
        } else {
            flush(&mut word, &mut chars);
        }
    }
    flush(&mut word, &mut chars);
}

/// The distinct words of the question and the answer, separated by single spaces: what a store
/// indexes for a capture.
pub fn index_words(question: Option<&str>, answer: Option<&str>) -> String {
    let mut seen = HashSet::new();
    let mut out = String::new();
    for text in [question, answer].into_iter().flatten() {
        each_word(text, MAX_INDEXED_CHARS, |w| {
            if seen.insert(w.clone()) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&w);
            }
        });
    }
    out
}

/// Why a search query cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query has no letters or digits.
    #[error("has no letters or digits to search for")]
    NoWords,
    /// The query has more terms than [`MAX_TERMS`].
    #[error("has {0} words; at most {MAX_TERMS} are searched")]
    TooManyWords(usize),
}

/// The distinct terms of a search query, in order.
pub fn terms(query: &str) -> Result<Vec<String>, QueryError> {
    let mut out: Vec<String> = Vec::new();
    each_word(query, usize::MAX, |w| {
        if !out.contains(&w) {
            out.push(w);
        }
    });
    match out.len() {
        0 => Err(QueryError::NoWords),
        n if n > MAX_TERMS => Err(QueryError::TooManyWords(n)),
        _ => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_runs_of_letters_and_digits() {
        assert_eq!(
            index_words(Some("Who built Envoy? Lyft, in 2016 (gpt-4o)."), None),
            "who built envoy lyft in 2016 gpt 4o"
        );
        assert_eq!(index_words(Some("Größe ÉTÉ"), None), "größe été");
    }

    #[test]
    fn question_and_answer_words_are_indexed_once_each() {
        assert_eq!(
            index_words(Some("What is Envoy? envoy!"), Some("Envoy is a proxy.")),
            "what is envoy a proxy"
        );
        assert_eq!(index_words(None, None), "");
    }

    #[test]
    fn ideographs_and_kana_are_words_of_their_own() {
        assert_eq!(
            index_words(Some("東京タワー is tall"), None),
            "東 京 タ ワ ー is tall"
        );
        assert_eq!(index_words(Some("한국어 문장"), None), "한국어 문장");
    }

    #[test]
    fn long_words_are_cut_and_long_texts_indexed_up_to_the_limit() {
        let long = "a".repeat(200);
        assert_eq!(index_words(Some(&long), None), "a".repeat(MAX_WORD_CHARS));
        let text = format!("{} tail", "x ".repeat(MAX_INDEXED_CHARS));
        assert!(!index_words(Some(&text), None).contains("tail"));
    }

    #[test]
    fn query_terms_are_tokenized_like_the_index() {
        assert_eq!(
            terms("  ENVOY  gpt-4o envoy").unwrap(),
            ["envoy", "gpt", "4o"]
        );
        assert_eq!(terms("?!"), Err(QueryError::NoWords));
        let many = (0..20)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(terms(&many), Err(QueryError::TooManyWords(20)));
    }

    proptest::proptest! {
        #[test]
        fn indexed_words_never_hold_a_separator(text in "\\PC{0,80}") {
            let words = index_words(Some(&text), None);
            for w in words.split(' ').filter(|w| !w.is_empty()) {
                // Both stores split only on ASCII non-alphanumerics (and take words as given).
                proptest::prop_assert!(!w.chars().any(|c| c.is_ascii() && !c.is_ascii_alphanumeric()), "{w:?}");
            }
        }

        #[test]
        fn every_word_of_a_text_finds_it(text in "[a-zA-Z0-9 .,é]{0,60}") {
            let words: Vec<String> = index_words(Some(&text), None).split(' ').filter(|w| !w.is_empty()).map(str::to_owned).collect();
            if let Ok(ts) = terms(&text) {
                for t in ts {
                    proptest::prop_assert!(words.iter().any(|w| w.starts_with(&t)));
                }
            }
        }
    }
}
