//! The byte-level BPE tokenizer of a GGUF model (`tokenizer.ggml.model = "gpt2"`): the
//! vocabulary `tokenizer.ggml.tokens` and the ranked merges `tokenizer.ggml.merges`.
//!
//! Encoding splits the text into pre-tokens with the GPT-2 rule (contractions `'s 't 're 've
//! 'm 'll 'd`, an optional space then letters, digits, or other symbols, and runs of
//! whitespace, the last whitespace character left to the next word), maps each pre-token's
//! UTF-8 bytes to GPT-2's printable byte alphabet, and merges adjacent symbols by rank until
//! no ranked pair is left. With `tokenizer.ggml.pre = "smollm"` (SmolLM's tokenizer) digits
//! are split one by one first, as that model was trained. No prefix space, no BOS token and
//! no special-token parsing: `<|im_start|>` in the text is tokenized as the characters it
//! is.
//!
//! Digits are Rust's [`char::is_numeric`] (exactly `\p{N}`) and letters the other
//! [`char::is_alphabetic`] characters, which agree with `\p{L}` except for the marks and
//! symbols Unicode also calls alphabetic (combining vowel signs of some scripts, circled
//! letters such as `Ⓐ`): text holding those may split differently from the reference
//! tokenizer. ASCII and ordinary prose in Latin, Greek and Cyrillic scripts split exactly.

use std::collections::HashMap;

use super::gguf::Gguf;
use crate::error::Result;

/// How text is cut into pre-tokens before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 split rule.
    Gpt2,
    /// Digits one by one, then the GPT-2 rule (`tokenizer.ggml.pre = "smollm"`).
    Gpt2Digits,
}

/// A byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    /// The pre-tokenizer in use.
    pub pre: PreTokenizer,
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
}

impl Tokenizer {
    /// The tokenizer stored in `g`; an error when it is not byte-level BPE or is malformed,
    /// or its pre-tokenizer is not one of ours.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        Self::from_gguf_with(g, None)
    }

    /// [`from_gguf`](Self::from_gguf) with the pre-tokenizer `pre` instead of the file's,
    /// when given.
    pub fn from_gguf_with(g: &Gguf, pre: Option<PreTokenizer>) -> Result<Self> {
        let model = g.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(g.error(format!(
                "tokenizer.ggml.model is '{model}'; only byte-level BPE ('gpt2') is supported"
            )));
        }
        // llama.cpp's "default" (and an absent name) is another rule set than GPT-2's.
        let pre = match (pre, g.get("tokenizer.ggml.pre").and_then(|v| v.as_str())) {
            (Some(pre), _) => pre,
            (None, Some("gpt2")) => PreTokenizer::Gpt2,
            (None, Some("smollm")) => PreTokenizer::Gpt2Digits,
            (None, other) => {
                return Err(g.error(format!(
                    "tokenizer.ggml.pre is {other:?}; the pre-tokenizers supported are gpt2 and smollm (give one with --pre-tokenizer)"
                )));
            }
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            let v = g
                .get(key)
                .ok_or_else(|| g.error(format!("metadata key {key} is missing")))?;
            let items = v
                .as_array()
                .ok_or_else(|| g.error(format!("{key} must be an array of strings")))?;
            items
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| g.error(format!("{key} must be an array of strings")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                g.error(format!(
                    "tokenizer.ggml.merges[{i}] = {m:?} is not two symbols"
                ))
            })?;
            pairs.push((a.to_string(), b.to_string()));
        }
        Self::new(tokens, pairs, pre).map_err(|e| g.error(e))
    }

    /// A tokenizer from its vocabulary (id = index) and merges (rank = index).
    pub fn new(
        tokens: Vec<String>,
        merges: Vec<(String, String)>,
        pre: PreTokenizer,
    ) -> std::result::Result<Self, String> {
        if tokens.len() > u32::MAX as usize {
            return Err(format!(
                "a vocabulary of {} tokens is too large",
                tokens.len()
            ));
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            // The first of duplicate strings wins, as in llama.cpp.
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let mut ranks = HashMap::with_capacity(merges.len());
        for (r, pair) in merges.into_iter().enumerate() {
            ranks.entry(pair).or_insert(r);
        }
        let byte_char = byte_alphabet();
        let char_byte = byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Self {
            tokens,
            ids,
            ranks,
            pre,
            byte_char,
            char_byte,
        })
    }

    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The token ids of `text`; an error naming the first symbol with no token.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        let mut out = Vec::new();
        let mut cache: HashMap<&str, Vec<u32>> = HashMap::new();
        for piece in pre_tokens(text, self.pre) {
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let ids = self.bpe(piece)?;
            out.extend_from_slice(&ids);
            cache.insert(piece, ids);
        }
        Ok(out)
    }

    /// The text of `ids` (bytes that are not valid UTF-8 are replaced by U+FFFD); an error
    /// for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let t = self.tokens.get(id as usize).ok_or_else(|| {
                format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.vocab()
                )
            })?;
            for c in t.chars() {
                match self.char_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    // A special token spelled in plain characters (e.g. `<|im_end|>`).
                    None => bytes.extend(c.to_string().as_bytes()),
                }
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// BPE of one pre-token.
    fn bpe(&self, piece: &str) -> std::result::Result<Vec<u32>, String> {
        let mut symbols: Vec<String> = piece
            .bytes()
            .map(|b| self.byte_char[b as usize].to_string())
            .collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((rank, _)) = best else { break };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len()
                    && self
                        .ranks
                        .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                        == Some(&rank)
                {
                    merged.push(format!("{}{}", symbols[i], symbols[i + 1]));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut symbols[i]));
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
            .iter()
            .map(|s| {
                self.ids.get(s).copied().ok_or_else(|| {
                    format!("the symbol {s:?} (from {piece:?}) is not in the vocabulary")
                })
            })
            .collect()
    }
}

/// GPT-2's map of the 256 byte values to printable characters: the printable Latin-1 bytes
/// stand for themselves, the others for U+0100 onwards, in order.
pub fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
    }
    map
}

/// The pre-tokens of `text`, as slices of it.
pub fn pre_tokens(text: &str, pre: PreTokenizer) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |&(o, _)| o);
    let digit = |c: char| c.is_numeric();
    let letter = |c: char| c.is_alphabetic() && !c.is_numeric();
    let other = |c: char| !c.is_whitespace() && !letter(c) && !digit(c);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let c = chars[i].1;
        let run = |from: usize, class: &dyn Fn(char) -> bool| {
            let mut j = from;
            while j < chars.len() && class(chars[j].1) {
                j += 1;
            }
            j
        };
        // Contractions, lower case as in GPT-2's pattern.
        if c == '\'' {
            let rest = &text[chars[i].0..];
            if let Some(len) = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
                .iter()
                .find(|p| rest.starts_with(**p))
                .map(|p| p.len())
            {
                // ASCII: as many characters as bytes.
                let stop = i + len;
                out.push(&text[chars[start].0..end_of(stop)]);
                i = stop;
                continue;
            }
        }
        // With digits split first, a digit starts a new piece: no space joins it.
        let split_digit = |j: usize| {
            pre == PreTokenizer::Gpt2Digits && chars.get(j).is_some_and(|&(_, c)| digit(c))
        };
        // An optional space, then one class.
        let body = if c == ' '
            && i + 1 < chars.len()
            && !chars[i + 1].1.is_whitespace()
            && !split_digit(i + 1)
        {
            i + 1
        } else {
            i
        };
        let b = chars[body].1;
        let stop = if letter(b) {
            run(body, &letter)
        } else if digit(b) {
            if pre == PreTokenizer::Gpt2Digits {
                body + 1
            } else {
                run(body, &digit)
            }
        } else if other(b) {
            run(body, &other)
        } else {
            // Whitespace: the run, less its last character when a non-space follows it.
            let j = run(i, &|c: char| c.is_whitespace());
            if j < chars.len() && j - i > 1 && !split_digit(j) {
                j - 1
            } else {
                j
            }
        };
        out.push(&text[chars[start].0..end_of(stop)]);
        i = stop;
    }
    out
}
