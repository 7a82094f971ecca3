//! Dense scoring with a multilingual sentence embedder: an English question finds the Chinese
//! turn that means the same thing without sharing a word with it.
//!
//! Long turns are split into passages (the embedder reads at most 512 tokens, and one vector for
//! a whole page blurs its points); a turn scores as its best passage. Passage vectors are
//! computed once per transcript and embedder and cached on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

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
    #[error("cannot write the embedding cache {path}: {source}. Set TQA_CACHE_DIR to a writable folder")]
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
            .flat_map(|(i, t)| split_passages(&t.text, PASSAGE_CHARS).into_iter().map(move |p| (i, p)))
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
            vectors,
            turn_count: turns.len(),
            from_cache,
        })
    }

    /// Cosine similarity of the query with each turn's best passage, in turn order.
    pub fn scores(&self, query: &str) -> Result<Vec<f32>, DenseError> {
        let q = self.embedder.embed(&[query], TextKind::Query)?;
        let q = q.first().map(Vec::as_slice).unwrap_or(&[]);
        let mut best = vec![f32::MIN; self.turn_count];
        for (vector, &turn) in self.vectors.iter().zip(&self.passage_turn) {
            best[turn] = best[turn].max(cosine(q, vector));
        }
        Ok(best)
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
    let mut hasher = Sha256::new();
    hasher.update(CACHE_VERSION.to_le_bytes());
    hasher.update(model_id.as_bytes());
    for p in passages {
        hasher.update((p.len() as u64).to_le_bytes());
        hasher.update(p.as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("passages-{hex}.bin")
}

/// Layout: magic, count and dim (u32 LE), the f32 LE values, then the sha256 of the values.
fn read_cache(path: &Path, count: usize, dim: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    let values_len = count * dim * 4;
    let expected = 12 + values_len + 32;
    let intact = bytes.len() == expected
        && &bytes[..4] == CACHE_MAGIC
        && bytes[4..8] == (count as u32).to_le_bytes()
        && bytes[8..12] == (dim as u32).to_le_bytes()
        && Sha256::digest(&bytes[12..12 + values_len]).as_slice() == &bytes[12 + values_len..];
    if !intact {
        eprintln!(
            "warning: embedding cache {} is damaged; rebuilding it",
            path.display()
        );
        return None;
    }
    let floats: Vec<f32> = bytes[12..12 + values_len]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some(floats.chunks(dim).map(<[f32]>::to_vec).collect())
}

/// Written to a temporary file and renamed, so a crash never leaves a half-written cache.
fn write_cache(path: &Path, vectors: &[Vec<f32>]) -> Result<(), DenseError> {
    let err = |source| DenseError::CacheWrite {
        path: path.to_path_buf(),
        source,
    };
    let dim = vectors.first().map_or(0, Vec::len);
    let values: Vec<u8> = vectors.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = crate::unique_temp_sibling(path);
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(CACHE_MAGIC).map_err(err)?;
    file.write_all(&(vectors.len() as u32).to_le_bytes()).map_err(err)?;
    file.write_all(&(dim as u32).to_le_bytes()).map_err(err)?;
    file.write_all(&values).map_err(err)?;
    file.write_all(&Sha256::digest(&values)).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// `$TQA_CACHE_DIR`, else `$XDG_CACHE_HOME/tqa`, else `~/.cache/tqa`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("TQA_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("tqa")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/tqa")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_break_at_sentence_ends() {
        let text = "第一句话。第二句话！Third one? 第四";
        assert_eq!(split_passages(text, 6), ["第一句话。", "第二句话！", "Third one?", " 第四"]);
        assert_eq!(split_passages(text, 100), [text]);
    }

    #[test]
    fn cache_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bin");
        let vectors = vec![vec![0.5, -1.0, 2.0], vec![3.0, 0.0, 1.5]];
        write_cache(&path, &vectors).unwrap();
        assert_eq!(read_cache(&path, 2, 3), Some(vectors));
        assert_eq!(read_cache(&path, 3, 3), None);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[14] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read_cache(&path, 2, 3), None);
    }

    #[test]
    fn cache_name_depends_on_model_and_text() {
        let a = cache_name("m1", &["x".into()]);
        assert_ne!(a, cache_name("m2", &["x".into()]));
        assert_ne!(a, cache_name("m1", &["y".into()]));
        assert_eq!(a, cache_name("m1", &["x".into()]));
    }
}
