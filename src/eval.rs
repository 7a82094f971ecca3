//! Question sets (the format of `data/eval/dev.jsonl`) and the measures computed over them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::retrieval::{DenseError, Index, Retrieved};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read question set {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: not a question item ({reason}); see data/eval/README.md for the format")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("question set {0} has no items")]
    Empty(PathBuf),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EvalItem {
    pub id: String,
    pub lang: String,
    pub question: String,
    pub answerable: bool,
    #[serde(default)]
    pub gold_quotes: Vec<String>,
    pub speaker: Option<String>,
    #[serde(default)]
    pub must_mention: Vec<Vec<String>>,
    #[serde(default)]
    pub note: String,
}

pub fn load_set(path: &Path) -> Result<Vec<EvalItem>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let items = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| EvalError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<EvalItem>, _>>()?;
    if items.is_empty() {
        return Err(EvalError::Empty(path.to_path_buf()));
    }
    Ok(items)
}

/// Gold quotes never span a line and never contain `**`; passages are compared the same way.
fn normalise(text: &str) -> String {
    text.replace("**", "").replace(['\n', '\r'], "")
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RetrievalMetrics {
    pub items: usize,
    pub hit_at_1: f64,
    pub hit_at_3: f64,
    pub hit_at_5: f64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalMiss {
    pub id: String,
    pub question: String,
    /// Rank of the first turn holding a gold quote, if it was ranked at all.
    pub gold_rank: Option<usize>,
    pub top: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    pub overall: RetrievalMetrics,
    pub by_language: BTreeMap<String, RetrievalMetrics>,
    pub by_speaker: BTreeMap<String, RetrievalMetrics>,
    /// Answerable items whose gold turn is not in the top 5.
    pub missed: Vec<RetrievalMiss>,
}

/// Rank (1-based) of the first turn in `ranking` that holds one of the item's gold quotes.
pub fn gold_rank(ranking: &[Retrieved], item: &EvalItem) -> Option<usize> {
    let quotes: Vec<String> = item.gold_quotes.iter().map(|q| normalise(q)).collect();
    ranking
        .iter()
        .position(|hit| {
            let text = normalise(&hit.turn.text);
            quotes.iter().any(|q| text.contains(q.as_str()))
        })
        .map(|p| p + 1)
}

/// hit@1/3/5 and MRR over the answerable items, overall and split by language and speaker.
pub fn evaluate_retrieval(index: &Index, items: &[EvalItem]) -> Result<RetrievalReport, DenseError> {
    let answerable: Vec<&EvalItem> = items.iter().filter(|i| i.answerable).collect();
    let rankings: Vec<Vec<Retrieved>> = answerable
        .iter()
        .map(|i| index.rank(&i.question))
        .collect::<Result<_, _>>()?;
    let ranks: Vec<Option<usize>> = answerable
        .iter()
        .zip(&rankings)
        .map(|(item, ranking)| gold_rank(ranking, item))
        .collect();
    let metrics = |keep: &dyn Fn(&EvalItem) -> bool| {
        let selected: Vec<Option<usize>> = answerable
            .iter()
            .zip(&ranks)
            .filter(|(item, _)| keep(item))
            .map(|(_, r)| *r)
            .collect();
        metrics_of(&selected)
    };
    let group = |key: &dyn Fn(&EvalItem) -> String| {
        let mut keys: Vec<String> = answerable.iter().map(|i| key(i)).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| (k.clone(), metrics(&|i| key(i) == k)))
            .collect::<BTreeMap<_, _>>()
    };
    let missed = answerable
        .iter()
        .zip(ranks.iter().zip(&rankings))
        .filter(|(_, (r, _))| !r.is_some_and(|r| r <= 5))
        .map(|(item, (r, ranking))| RetrievalMiss {
            id: item.id.clone(),
            question: item.question.clone(),
            gold_rank: *r,
            top: ranking.iter().take(5).map(|h| h.turn.id.clone()).collect(),
        })
        .collect();
    Ok(RetrievalReport {
        overall: metrics(&|_| true),
        by_language: group(&|i| i.lang.clone()),
        by_speaker: group(&|i| i.speaker.clone().unwrap_or_default()),
        missed,
    })
}

fn metrics_of(ranks: &[Option<usize>]) -> RetrievalMetrics {
    let n = ranks.len().max(1) as f64;
    let hit = |k: usize| ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / n;
    RetrievalMetrics {
        items: ranks.len(),
        hit_at_1: hit(1),
        hit_at_3: hit(3),
        hit_at_5: hit(5),
        mrr: ranks.iter().map(|r| r.map_or(0.0, |r| 1.0 / r as f64)).sum::<f64>() / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_hits_within_k() {
        let m = metrics_of(&[Some(1), Some(3), Some(6), None]);
        assert_eq!(m.hit_at_1, 0.25);
        assert_eq!(m.hit_at_3, 0.5);
        assert_eq!(m.hit_at_5, 0.5);
        assert!((m.mrr - (1.0 + 1.0 / 3.0 + 1.0 / 6.0) / 4.0).abs() < 1e-9);
    }
}
