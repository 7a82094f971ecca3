//! Dense scoring with a multilingual sentence embedder: an English question finds the Chinese
//! turn that means the same thing without sharing a word with it.
//!
//! Long turns are split into passages (the embedder reads at most 512 tokens, and one vector for
//! a whole page blurs its points); a turn scores as its best passage. Each turn is split twice:
//! into passages of a few sentences, which give quotations enough context, and into pieces of a
//! sentence or two, where one matching sentence is not diluted by its neighbours. Passage vectors
//! are computed once per transcript and embedder and cached on disk.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::embed::{cosine, EmbedError, Embedder, TextKind};
use crate::transcript::Turn;

/// Passage length in characters: a few sentences, one point each. Quotations come from these.
const PASSAGE_CHARS: usize = 160;
/// The finer split: about a sentence or two.
const SENTENCE_CHARS: usize = 80;
/// The code that splits the passages, embeds them and lays the cache out on disk.
const COMPUTED_BY: &[&str] = &[
    include_str!("dense.rs"),
    include_str!("embed.rs"),
    include_str!("unigram.rs"),
    include_str!("../cache.rs"),
];
const CACHE_MAGIC: &[u8; 4] = b"TQAE";

#[derive(Debug, thiserror::Error)]
pub enum DenseError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(
        "cannot write the embedding cache {path}: {source}. Set TQA_CACHE_DIR to a writable folder"
    )]
    CacheWrite {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct DenseIndex {
    /// Shared, so that one loaded embedder can serve several indexes (and benchmarks).
    embedder: Arc<Embedder>,
    passages: PassageSet,
    sentences: PassageSet,
    turn_count: usize,
    /// Whether the passage vectors came from the cache.
    pub from_cache: bool,
}

/// One query's cosine similarities with every passage of both splits, in passage order.
pub struct Similarities {
    pub passages: Vec<f32>,
    sentences: Vec<f32>,
}

/// The turns split one way, with a vector per piece.
struct PassageSet {
    /// For each passage, the index of its turn.
    turn_of: Vec<usize>,
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
    from_cache: bool,
}

/// Where passage vectors come from and go to.
struct Embedding<'a> {
    embedder: &'a Embedder,
    model_id: &'a str,
    cache_dir: Option<&'a Path>,
    /// Tells the user once that the slow path runs, however many splits need it.
    announce: &'a dyn Fn(),
}

impl DenseIndex {
    /// Embeds the passages of `turns`, or reads them from `cache_dir` when an earlier run
    /// embedded the same passages with the same model (`model_id`). A damaged cache file is
    /// rebuilt with a warning. `on_embed` is called before the slow path, to tell the user.
    pub fn build(
        turns: &[Turn],
        embedder: impl Into<Arc<Embedder>>,
        model_id: &str,
        cache_dir: Option<&Path>,
        on_embed: &dyn Fn(),
    ) -> Result<Self, DenseError> {
        let embedder = embedder.into();
        let announced = Cell::new(false);
        let announce = || {
            if !announced.replace(true) {
                on_embed();
            }
        };
        let embedding = Embedding {
            embedder: &embedder,
            model_id,
            cache_dir,
            announce: &announce,
        };
        let passages = PassageSet::build(turns, PASSAGE_CHARS, &embedding)?;
        let sentences = PassageSet::build(turns, SENTENCE_CHARS, &embedding)?;
        Ok(Self {
            from_cache: passages.from_cache && sentences.from_cache,
            embedder,
            passages,
            sentences,
            turn_count: turns.len(),
        })
    }

    pub fn embedder(&self) -> Arc<Embedder> {
        Arc::clone(&self.embedder)
    }

    /// Cosine similarity of the query with every passage of both splits.
    pub fn similarities(&self, query: &str) -> Result<Similarities, DenseError> {
        let q = self.embedder.embed(&[query], TextKind::Query)?;
        let q = q.first().map(Vec::as_slice).unwrap_or(&[]);
        Ok(Similarities {
            passages: self.passages.similarities(q),
            sentences: self.sentences.similarities(q),
        })
    }

    /// Each turn's best passage similarity, in turn order: one ranking per split.
    pub fn turn_scores(&self, similarities: &Similarities) -> [Vec<f32>; 2] {
        [
            self.passages
                .turn_scores(&similarities.passages, self.turn_count),
            self.sentences
                .turn_scores(&similarities.sentences, self.turn_count),
        ]
    }

    /// The passages of the turn at `turn` with their similarities (`Similarities::passages`, or
    /// an average of several), the closest first.
    pub fn passages_of(&self, turn: usize, passage_similarities: &[f32]) -> Vec<(&str, f32)> {
        let set = &self.passages;
        let mut passages: Vec<(&str, f32)> = set
            .turn_of
            .iter()
            .zip(&set.texts)
            .zip(passage_similarities)
            .filter(|((&t, _), _)| t == turn)
            .map(|((_, text), &similarity)| (text.trim(), similarity))
            .collect();
        passages.sort_by(|a, b| b.1.total_cmp(&a.1));
        passages
    }
}

impl PassageSet {
    fn build(turns: &[Turn], max_chars: usize, embedding: &Embedding) -> Result<Self, DenseError> {
        let (turn_of, texts): (Vec<usize>, Vec<String>) = turns
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                split_passages(&t.text, max_chars)
                    .into_iter()
                    .map(move |p| (i, p))
            })
            .unzip();
        let embedder = embedding.embedder;
        let cache_file = embedding
            .cache_dir
            .map(|dir| dir.join(cache_name(embedding.model_id, &texts)));
        let cached = cache_file
            .as_deref()
            .and_then(|path| read_cache(path, texts.len(), embedder.dim()));
        let from_cache = cached.is_some();
        let vectors = match cached {
            Some(v) => v,
            None => {
                (embedding.announce)();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let v = embedder.embed(&refs, TextKind::Passage)?;
                // The cache only saves time: a folder that cannot be written costs the next run
                // another embedding pass, not this answer.
                if let Some(Err(e)) = cache_file.as_deref().map(|path| write_cache(path, &v)) {
                    eprintln!("warning: {e}");
                }
                v
            }
        };
        Ok(Self {
            turn_of,
            texts,
            vectors,
            from_cache,
        })
    }

    fn similarities(&self, query: &[f32]) -> Vec<f32> {
        self.vectors.iter().map(|v| cosine(query, v)).collect()
    }

    /// A turn without passages, or with none closer than orthogonal, scores 0: no match.
    fn turn_scores(&self, similarities: &[f32], turn_count: usize) -> Vec<f32> {
        let mut best = vec![0.0_f32; turn_count];
        for (&similarity, &turn) in similarities.iter().zip(&self.turn_of) {
            best[turn] = best[turn].max(similarity);
        }
        best
    }
}

/// Splits at sentence ends into pieces of about `max_chars`; a single longer sentence stays whole.
pub fn split_passages(text: &str, max_chars: usize) -> Vec<String> {
    let mut passages = Vec::new();
    let mut current = String::new();
    for sentence in sentences(text) {
        let len = current.chars().count() + sentence.chars().count();
        if !current.is_empty() && len > max_chars {
            passages.push(std::mem::take(&mut current));
        }
        current.push_str(sentence);
    }
    if !current.trim().is_empty() {
        passages.push(current);
    }
    passages
}

fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '。' | '！' | '？' | '!' | '?' | '\n' | '；') {
            let end = i + c.len_utf8();
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn cache_name(model_id: &str, passages: &[String]) -> String {
    let code = crate::cache::code_digest(COMPUTED_BY);
    let mut parts: Vec<&[u8]> = vec![&code, model_id.as_bytes()];
    parts.extend(passages.iter().map(|p| p.as_bytes()));
    crate::cache::content_name("passages", &parts)
}

fn read_cache(path: &Path, count: usize, dim: usize) -> Option<Vec<Vec<f32>>> {
    match crate::cache::read_floats(path, CACHE_MAGIC, &[count, dim])? {
        Some(floats) => Some(floats.chunks(dim.max(1)).map(<[f32]>::to_vec).collect()),
        None => {
            eprintln!(
                "warning: embedding cache {} is damaged; rebuilding it",
                path.display()
            );
            None
        }
    }
}

fn write_cache(path: &Path, vectors: &[Vec<f32>]) -> Result<(), DenseError> {
    let dim = vectors.first().map_or(0, Vec::len);
    let values: Vec<f32> = vectors.iter().flatten().copied().collect();
    crate::cache::write_floats(path, CACHE_MAGIC, &[vectors.len(), dim], &values).map_err(
        |source| DenseError::CacheWrite {
            path: path.to_path_buf(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_break_at_sentence_ends() {
        let text = "第一句话。第二句话！Third one? 第四";
        assert_eq!(
            split_passages(text, 6),
            ["第一句话。", "第二句话！", "Third one?", " 第四"]
        );
        assert_eq!(split_passages(text, 100), [text]);
    }

    #[test]
    fn cache_name_depends_on_model_and_text() {
        let a = cache_name("m1", &["x".into()]);
        assert_ne!(a, cache_name("m2", &["x".into()]));
        assert_ne!(a, cache_name("m1", &["y".into()]));
        assert_eq!(a, cache_name("m1", &["x".into()]));
    }
}
