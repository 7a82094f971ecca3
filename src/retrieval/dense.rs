//! Dense scoring with a multilingual sentence embedder: an English question finds the Chinese
//! turn that means the same thing without sharing a word with it.
//!
//! Long turns are split into passages (the embedder reads at most 512 tokens, and one vector for
//! a whole page blurs its points); a turn scores as its best passage. Passage vectors are
//! computed once per transcript and embedder and cached on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::embed::{cosine, EmbedError, Embedder, TextKind};
use crate::transcript::Turn;

/// Passage length in characters: a few sentences, one point each.
const PASSAGE_CHARS: usize = 160;
/// Bumped whenever passage splitting or the file layout changes, so old caches are not reused.
const CACHE_VERSION: u32 = 1;
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
    /// For each passage, the index of its turn.
    passage_turn: Vec<usize>,
    passages: Vec<String>,
    vectors: Vec<Vec<f32>>,
    turn_count: usize,
    /// Whether the passage vectors came from the cache.
    pub from_cache: bool,
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
        let (passage_turn, passages): (Vec<usize>, Vec<String>) = turns
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                split_passages(&t.text, PASSAGE_CHARS)
                    .into_iter()
                    .map(move |p| (i, p))
            })
            .unzip();
        let embedder = embedder.into();
        let cache_file = cache_dir.map(|dir| dir.join(cache_name(model_id, &passages)));
        let cached = cache_file
            .as_deref()
            .and_then(|path| read_cache(path, passages.len(), embedder.dim()));
        let from_cache = cached.is_some();
        let vectors = match cached {
            Some(v) => v,
            None => {
                on_embed();
                let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
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
            embedder,
            passage_turn,
            passages,
            vectors,
            turn_count: turns.len(),
            from_cache,
        })
    }

    /// Cosine similarity of the query with every passage, in passage order.
    pub fn passage_similarities(&self, query: &str) -> Result<Vec<f32>, DenseError> {
        let q = self.embedder.embed(&[query], TextKind::Query)?;
        let q = q.first().map(Vec::as_slice).unwrap_or(&[]);
        Ok(self.vectors.iter().map(|v| cosine(q, v)).collect())
    }

    /// Each turn's best passage similarity, in turn order.
    pub fn turn_scores(&self, passage_similarities: &[f32]) -> Vec<f32> {
        let mut best = vec![f32::MIN; self.turn_count];
        for (&similarity, &turn) in passage_similarities.iter().zip(&self.passage_turn) {
            best[turn] = best[turn].max(similarity);
        }
        best
    }

    /// The passages of the turn at `turn` with their similarities, the closest first.
    pub fn passages_of(&self, turn: usize, passage_similarities: &[f32]) -> Vec<(&str, f32)> {
        let mut passages: Vec<(&str, f32)> = self
            .passage_turn
            .iter()
            .zip(&self.passages)
            .zip(passage_similarities)
            .filter(|((&t, _), _)| t == turn)
            .map(|((_, text), &similarity)| (text.trim(), similarity))
            .collect();
        passages.sort_by(|a, b| b.1.total_cmp(&a.1));
        passages
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
    let version = CACHE_VERSION.to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![&version, model_id.as_bytes()];
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
