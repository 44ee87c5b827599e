//! Subword tokenization: a WordPiece vocabulary trained on the training
//! split with Hugging Face's `tokenizers` crate, saved as the
//! `tokenizer.json` that Python's `tokenizers` and `transformers` load.
//!
//! Normalisation is BERT's (Unicode cleanup, accents stripped and lower
//! case when `lowercase` is set). Chinese, Japanese and Korean ideographs
//! are split into single characters by that normaliser; with
//! [`Segmentation::Jieba`] the text is first cut into Chinese words by
//! `jieba-rs` (the standard segmenter) and ideographs are kept together,
//! so the vocabulary learns words. The jieba step is not part of
//! `tokenizer.json` (the format has no such pre-tokenizer): it is recorded
//! in the run's settings, and Python users run `jieba.cut` first.
//!
//! Token 0 is `[PAD]` and 1 is `[UNK]`, so padding is id 0 whatever the
//! vocabulary.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizedString, Normalizer, NormalizerWrapper, OffsetReferential,
    OffsetType, PostProcessorWrapper, PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
    Tokenizer, TokenizerBuilder,
};

/// The special tokens, in id order.
const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// WordPiece's mark of a piece that continues a word.
const CONTINUATION: &str = "##";

/// `[PAD]`'s id.
pub const PAD: u32 = 0;
/// `[UNK]`'s id.
pub const UNK: u32 = 1;

/// How text in Chinese is cut before the subword model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Segmentation {
    /// Every ideograph a word of its own (BERT's rule).
    #[default]
    Characters,
    /// Words found by jieba.
    Jieba,
}

/// Everything that decides the token ids of a text, saved with a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSettings {
    pub vocab_size: usize,
    /// Subwords seen fewer times are not learned.
    pub min_frequency: u64,
    pub lowercase: bool,
    pub segmentation: Segmentation,
    /// Longer texts are truncated to this many tokens.
    pub max_len: usize,
}

impl Default for TokenizerSettings {
    fn default() -> Self {
        TokenizerSettings {
            vocab_size: 16_000,
            min_frequency: 2,
            lowercase: true,
            segmentation: Segmentation::Characters,
            max_len: 256,
        }
    }
}

/// A trained or loaded tokenizer with its settings.
pub struct TextTokenizer {
    inner: Tokenizer,
    pub settings: TokenizerSettings,
    jieba: Option<jieba_rs::Jieba>,
}

fn tok_error(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{what}: {e}"))
}

impl TextTokenizer {
    /// Learns a vocabulary from `texts` (the training split only).
    pub fn train(texts: &[String], settings: &TokenizerSettings) -> Result<Self> {
        if settings.vocab_size < 8 || settings.max_len == 0 {
            return Err(Error::Usage(format!(
                "tokenizer: vocabulary size {} (at least 8) and maximum length {} (at least 1)",
                settings.vocab_size, settings.max_len
            )));
        }
        let jieba = (settings.segmentation == Segmentation::Jieba).then(jieba_rs::Jieba::new);
        let segmented: Vec<String> = texts.iter().map(|t| segment(jieba.as_ref(), t)).collect();
        let normalizer = BertNormalizer::new(
            true,
            settings.segmentation == Segmentation::Characters,
            Some(settings.lowercase),
            settings.lowercase,
        );
        // The trainer numbers the `##c` continuation pieces in hash-map
        // order, and those ids break ties between equally frequent merges,
        // so the same corpus gave a different vocabulary each run
        // (huggingface/tokenizers#1794). Handing it every continuation
        // piece, sorted, as a reserved token fixes their ids and so the
        // whole vocabulary; they are plain vocabulary entries afterwards.
        let continuations = continuation_pieces(&normalizer, &segmented)?;
        let mut reserved: Vec<AddedToken> = SPECIALS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        reserved.extend(continuations.into_iter().map(|p| AddedToken::from(p, true)));
        let trainer = WordPieceTrainerBuilder::default()
            .vocab_size(settings.vocab_size)
            .min_frequency(settings.min_frequency)
            .special_tokens(reserved)
            .show_progress(false)
            .build();
        let untrained = WordPiece::builder()
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tok_error("tokenizer", e))?;
        let mut scratch = assemble(untrained.into(), normalizer)?;
        let mut trainer: TrainerWrapper = trainer.into();
        scratch
            .train(&mut trainer, segmented.iter())
            .map_err(|e| tok_error("tokenizer training", e))?;
        // Rebuilt so that only the real specials are added tokens (the
        // reserved pieces must not be matched verbatim in input text).
        let mut inner = assemble(scratch.get_model().clone(), normalizer)?;
        inner.add_special_tokens(
            &SPECIALS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect::<Vec<_>>(),
        );
        let t = TextTokenizer {
            inner,
            settings: settings.clone(),
            jieba,
        };
        t.check_specials(&"the trained tokenizer")?;
        Ok(t)
    }

    /// Loads `tokenizer.json` (and the settings saved beside it).
    pub fn load(path: &Path, settings: TokenizerSettings) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            detail: format!("not a tokenizer: {e}"),
        })?;
        let jieba = (settings.segmentation == Segmentation::Jieba).then(jieba_rs::Jieba::new);
        let t = TextTokenizer {
            inner,
            settings,
            jieba,
        };
        t.check_specials(&path.display())?;
        Ok(t)
    }

    /// `[PAD]` and `[UNK]` must have the ids the models assume.
    fn check_specials(&self, what: &dyn std::fmt::Display) -> Result<()> {
        for (tok, id) in [("[PAD]", PAD), ("[UNK]", UNK)] {
            if self.inner.token_to_id(tok) != Some(id) {
                return Err(Error::Usage(format!(
                    "{what}: {tok} has id {:?}, expected {id}",
                    self.inner.token_to_id(tok)
                )));
            }
        }
        Ok(())
    }

    /// Writes `tokenizer.json` atomically (a temporary file renamed).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| tok_error(path.display(), e))?;
        crate::weights::write_atomic(path, json.as_bytes())
    }

    /// Words in the vocabulary, specials included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text`, at most `max_len` of them (truncated at the end).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encoding(text)?.get_ids().to_vec();
        ids.truncate(self.settings.max_len);
        Ok(ids)
    }

    /// The tokens of `text` as strings (for inspection and tests).
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        Ok(self.encoding(text)?.get_tokens().to_vec())
    }

    fn encoding(&self, text: &str) -> Result<tokenizers::Encoding> {
        let seg = segment(self.jieba.as_ref(), text);
        self.inner
            .encode(seg.as_str(), false)
            .map_err(|e| tok_error("tokenize", e))
    }
}

/// A tokenizer with BERT's pipeline around `model`.
fn assemble(model: ModelWrapper, normalizer: BertNormalizer) -> Result<Tokenizer> {
    let built = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(model)
    .with_normalizer(Some(normalizer.into()))
    .with_pre_tokenizer(Some(BertPreTokenizer.into()))
    .with_decoder(Some(
        tokenizers::decoders::wordpiece::WordPiece::default().into(),
    ))
    .build()
    .map_err(|e| tok_error("tokenizer", e))?;
    Ok(Tokenizer::from(built))
}

/// `##c` for every character that follows another inside a word of
/// `texts` once normalised and pre-tokenised as the trainer sees them,
/// sorted.
fn continuation_pieces(normalizer: &BertNormalizer, texts: &[String]) -> Result<Vec<String>> {
    let mut chars = std::collections::BTreeSet::new();
    for text in texts {
        let mut normalized = NormalizedString::from(text.as_str());
        normalizer
            .normalize(&mut normalized)
            .map_err(|e| tok_error("tokenizer training", e))?;
        let mut words = PreTokenizedString::from(normalized);
        BertPreTokenizer
            .pre_tokenize(&mut words)
            .map_err(|e| tok_error("tokenizer training", e))?;
        for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            chars.extend(word.chars().skip(1));
        }
    }
    Ok(chars
        .into_iter()
        .map(|c| format!("{CONTINUATION}{c}"))
        .collect())
}

/// `text` with jieba's words separated by spaces, or unchanged.
fn segment(jieba: Option<&jieba_rs::Jieba>, text: &str) -> String {
    match jieba {
        Some(j) => j
            .cut(text, true)
            .iter()
            .map(|t| t.word)
            .collect::<Vec<_>>()
            .join(" "),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let en = [
            "The market rallied as shares rose sharply on Monday.",
            "Shares in the company fell after the market closed.",
            "The team won the match after a late goal.",
            "A late goal gave the team the cup.",
        ];
        let zh = [
            "我们喜欢自然语言处理",
            "自然语言处理很有意思",
            "我们在北京学习自然语言",
            "北京的天气很好",
        ];
        en.iter()
            .chain(&zh)
            .cycle()
            .take(64)
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn trains_saves_and_reloads_the_same_ids() {
        let s = TokenizerSettings {
            vocab_size: 200,
            min_frequency: 1,
            ..Default::default()
        };
        let t = TextTokenizer::train(&corpus(), &s).unwrap();
        let ids = t.encode("The market rallied.").unwrap();
        assert!(!ids.is_empty() && !ids.contains(&UNK), "{ids:?}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        t.save(&p).unwrap();
        let back = TextTokenizer::load(&p, s.clone()).unwrap();
        assert_eq!(back.encode("The market rallied.").unwrap(), ids);
        // Characters: every ideograph its own token.
        assert_eq!(t.tokens("自然语言").unwrap(), ["自", "然", "语", "言"]);
        let long = "goal ".repeat(1000);
        assert_eq!(t.encode(&long).unwrap().len(), s.max_len);
    }

    #[test]
    fn the_same_corpus_gives_the_same_vocabulary_every_time() {
        // Many equally frequent pairs: before the continuation pieces were
        // reserved, this failed at its first comparison.
        let s = TokenizerSettings {
            vocab_size: 150,
            min_frequency: 1,
            ..Default::default()
        };
        let json = |t: &TextTokenizer| t.inner.to_string(false).unwrap();
        let first = json(&TextTokenizer::train(&corpus(), &s).unwrap());
        for _ in 0..8 {
            assert_eq!(json(&TextTokenizer::train(&corpus(), &s).unwrap()), first);
        }
        // The reserved pieces are vocabulary, not added tokens: "##e" in
        // the input is text, not one token.
        let t = TextTokenizer::train(&corpus(), &s).unwrap();
        assert!(t.inner.token_to_id("##e").is_some());
        assert_ne!(t.tokens("a##e").unwrap(), ["a", "##e"]);
    }

    #[test]
    fn jieba_segments_chinese_into_words() {
        let s = TokenizerSettings {
            vocab_size: 300,
            min_frequency: 1,
            segmentation: Segmentation::Jieba,
            ..Default::default()
        };
        let t = TextTokenizer::train(&corpus(), &s).unwrap();
        assert_eq!(
            t.tokens("我们喜欢自然语言处理").unwrap(),
            ["我们", "喜欢", "自然语言", "处理"]
        );
    }

    #[test]
    fn a_file_that_is_not_a_tokenizer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{\"not\": 1}").unwrap();
        let e = TextTokenizer::load(&p, TokenizerSettings::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("not a tokenizer"),
            "{e}"
        );
    }
}
