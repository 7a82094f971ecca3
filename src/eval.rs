//! Question sets (the format of `data/eval/dev.jsonl`) and the measures computed over them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::answer::{
    own_words, quotation_regex, Answer, AnswerError, Language, PASSAGES_PER_QUOTE,
};
use crate::retrieval::Retrieved;

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
    /// Share of items whose gold turn, wherever it ranks, has a gold quote in the passages closest
    /// to the question that a filled quotation takes: whether what is picked out of a long turn
    /// is what answers.
    pub highlight: f64,
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
    /// Every answerable item's gold rank, by id: what two runs are compared on.
    pub gold_ranks: BTreeMap<String, Option<usize>>,
}

/// Rank (1-based) of the first turn in `ranking` that holds one of the item's gold quotes.
pub fn gold_rank(ranking: &[Retrieved], item: &EvalItem) -> Option<usize> {
    ranking
        .iter()
        .position(|hit| holds_gold_quote(&hit.turn.text, item))
        .map(|p| p + 1)
}

fn holds_gold_quote(text: &str, item: &EvalItem) -> bool {
    let text = normalise(text);
    item.gold_quotes
        .iter()
        .any(|q| text.contains(normalise(q).as_str()))
}

/// Where the gold turn ranks, and whether its closest passages hold a gold quote.
#[derive(Debug, Clone, Copy)]
struct GoldHit {
    rank: Option<usize>,
    highlighted: bool,
}

fn gold_hit(ranking: &[Retrieved], item: &EvalItem) -> GoldHit {
    let rank = gold_rank(ranking, item);
    let highlighted = ranking
        .iter()
        .filter(|hit| holds_gold_quote(&hit.turn.text, item))
        .any(|hit| {
            hit.passages
                .iter()
                .take(PASSAGES_PER_QUOTE)
                .any(|closest| holds_gold_quote(&closest.text, item))
        });
    GoldHit { rank, highlighted }
}

/// hit@1/3/5 and MRR over the answerable items, overall and split by language and speaker.
/// `rank` ranks the turns for an item's question (see [`crate::answer::rank_turns`]).
pub fn evaluate_retrieval(
    items: &[EvalItem],
    rank: &mut dyn FnMut(&EvalItem) -> Result<Vec<Retrieved>, AnswerError>,
) -> Result<RetrievalReport, AnswerError> {
    let answerable: Vec<&EvalItem> = items.iter().filter(|i| i.answerable).collect();
    let rankings = answerable
        .iter()
        .map(|item| rank(item))
        .collect::<Result<Vec<_>, _>>()?;
    let hits: Vec<GoldHit> = answerable
        .iter()
        .zip(&rankings)
        .map(|(item, ranking)| gold_hit(ranking, item))
        .collect();
    let metrics = |keep: &dyn Fn(&EvalItem) -> bool| {
        let selected: Vec<GoldHit> = answerable
            .iter()
            .zip(&hits)
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
        .zip(hits.iter().zip(&rankings))
        .filter(|(_, (hit, _))| hit.rank.is_none_or(|r| r > 5))
        .map(|(item, (hit, ranking))| RetrievalMiss {
            id: item.id.clone(),
            question: item.question.clone(),
            gold_rank: hit.rank,
            top: ranking.iter().take(5).map(|h| h.turn.id.clone()).collect(),
        })
        .collect();
    let gold_ranks = answerable
        .iter()
        .zip(&hits)
        .map(|(item, hit)| (item.id.clone(), hit.rank))
        .collect();
    Ok(RetrievalReport {
        overall: metrics(&|_| true),
        by_language: group(&|i| i.lang.clone()),
        by_speaker: group(&|i| i.speaker.clone().unwrap_or_default()),
        missed,
        gold_ranks,
    })
}

fn metrics_of(hits: &[GoldHit]) -> RetrievalMetrics {
    let n = hits.len().max(1) as f64;
    let share =
        |test: &dyn Fn(&GoldHit) -> bool| hits.iter().filter(|h| test(h)).count() as f64 / n;
    let within = |k: usize| share(&|h| h.rank.is_some_and(|r| r <= k));
    RetrievalMetrics {
        items: hits.len(),
        hit_at_1: within(1),
        hit_at_3: within(3),
        hit_at_5: within(5),
        mrr: hits
            .iter()
            .map(|h| h.rank.map_or(0.0, |r| 1.0 / r as f64))
            .sum::<f64>()
            / n,
        highlight: share(&|h| h.highlighted),
    }
}

/// The answer without what it quotes: a quotation keeps the transcript's language on purpose, and
/// the language that counts is that of the answer's own words.
pub fn unquoted(answer: &str) -> String {
    quotation_regex().replace_all(answer, "").into_owned()
}

/// The language of the answer's own words. An answer of citations and quotations only ("- [T4]
/// “…”") is in the language it quotes: its turn ids are not English words.
pub fn answer_language(answer: &str) -> Language {
    let own_words = own_words(answer);
    if own_words.chars().any(char::is_alphabetic) {
        Language::of(&own_words)
    } else {
        Language::of(answer)
    }
}

/// Case-insensitive substring match of every fact (any of its alternatives), as the dev set's
/// README defines it.
pub fn mentions_all(answer: &str, facts: &[Vec<String>]) -> bool {
    let a = answer.to_lowercase();
    facts
        .iter()
        .all(|fact| fact.iter().any(|alt| a.contains(&alt.to_lowercase())))
}

/// Phrases that say "the transcript does not cover this": the set's own refusal facts.
pub fn refusal_markers(items: &[EvalItem]) -> Vec<String> {
    let mut markers: Vec<String> = items
        .iter()
        .filter(|i| !i.answerable)
        .flat_map(|i| i.must_mention.iter().flatten().cloned())
        .collect();
    markers.sort();
    markers.dedup();
    markers
}

#[derive(Debug, Clone, Serialize)]
pub struct AnswerRecord {
    pub id: String,
    pub lang: String,
    pub question: String,
    pub answerable: bool,
    pub answer: String,
    /// Answerable: every fact is mentioned. Unanswerable: the answer refuses.
    pub correct: bool,
    pub refused: bool,
    /// The model's confidence that the given turns answer the question (see `Answer`).
    pub answered_log_odds: Option<f32>,
    /// The model's judgement of the likeliest turn, with reranking (see `Answer`).
    pub best_relevance: Option<f32>,
    /// The answer only restated the question, and tqa said so (see `Answer`).
    pub restates_question: bool,
    /// Turns given to the model, best first.
    pub given: Vec<String>,
    pub cited: Vec<String>,
    /// Answerable: some cited turn holds one of the item's gold quotes.
    pub cites_gold: bool,
    /// Cited ids that were not among the turns given to the model.
    pub invalid_citations: Vec<String>,
    /// Quotations that the turn they are attributed to does not say word for word.
    pub unverified_quotes: Vec<String>,
    pub quotes: usize,
    pub in_question_language: bool,
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
}

/// Scores one answer against its item.
pub fn score_answer(item: &EvalItem, answer: &Answer, markers: &[String]) -> AnswerRecord {
    // A quoted "did not mention anyone" is the speaker's words, not the answer declining.
    let own_words = unquoted(&answer.answer).to_lowercase();
    let refused = markers
        .iter()
        .any(|m| own_words.contains(&m.to_lowercase()));
    let correct = if item.answerable {
        mentions_all(&answer.answer, &item.must_mention)
    } else {
        refused
    };
    AnswerRecord {
        id: item.id.clone(),
        lang: item.lang.clone(),
        question: item.question.clone(),
        answerable: item.answerable,
        answer: answer.answer.clone(),
        correct,
        refused,
        answered_log_odds: answer.answered_log_odds,
        best_relevance: answer.best_relevance,
        restates_question: answer.restates_question,
        given: answer.retrieved.iter().map(|r| r.turn.id.clone()).collect(),
        cited: answer.citations.iter().map(|t| t.id.clone()).collect(),
        cites_gold: answer
            .citations
            .iter()
            .any(|t| holds_gold_quote(&t.text, item)),
        invalid_citations: answer.invalid_citations.clone(),
        unverified_quotes: answer
            .quotes
            .iter()
            .filter(|q| !q.verbatim)
            .map(|q| q.text.clone())
            .collect(),
        quotes: answer.quotes.len(),
        in_question_language: answer_language(&answer.answer) == Language::of(&item.question),
        time_to_first_token_ms: answer.timings.time_to_first_token_ms,
        total_ms: answer.timings.total_ms,
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AnswerMetrics {
    pub answerable: usize,
    pub unanswerable: usize,
    /// Share of answerable items whose answer mentions every fact.
    pub answer_accuracy: f64,
    /// Share of unanswerable items whose answer says the transcript does not cover it.
    pub refusal_accuracy: f64,
    /// Share of answerable items whose answer refuses.
    pub false_refusal_rate: f64,
    /// Share of answers whose every citation points to a turn given to the model.
    pub citation_validity: f64,
    /// Share of answerable items whose answer cites a turn that holds a gold quote: whether the
    /// answer points the reader to where the transcript answers.
    pub gold_citation: f64,
    /// Share of the answers' quotations that the turn they are attributed to says word for word
    /// (1 when no answer quotes).
    pub quote_validity: f64,
    /// Share of answers written in the question's language.
    pub in_question_language: f64,
    pub median_time_to_first_token_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnswerReport {
    pub overall: AnswerMetrics,
    pub by_language: BTreeMap<String, AnswerMetrics>,
    pub items: Vec<AnswerRecord>,
}

pub fn summarize_answers(records: Vec<AnswerRecord>) -> AnswerReport {
    let mut langs: Vec<String> = records.iter().map(|r| r.lang.clone()).collect();
    langs.sort();
    langs.dedup();
    let by_language = langs
        .into_iter()
        .map(|lang| {
            let subset: Vec<&AnswerRecord> = records.iter().filter(|r| r.lang == lang).collect();
            (lang, answer_metrics(&subset))
        })
        .collect();
    AnswerReport {
        overall: answer_metrics(&records.iter().collect::<Vec<_>>()),
        by_language,
        items: records,
    }
}

fn answer_metrics(records: &[&AnswerRecord]) -> AnswerMetrics {
    let share = |subset: &[&&AnswerRecord], pred: &dyn Fn(&AnswerRecord) -> bool| {
        if subset.is_empty() {
            0.0
        } else {
            subset.iter().filter(|r| pred(r)).count() as f64 / subset.len() as f64
        }
    };
    let answerable: Vec<&&AnswerRecord> = records.iter().filter(|r| r.answerable).collect();
    let unanswerable: Vec<&&AnswerRecord> = records.iter().filter(|r| !r.answerable).collect();
    let all: Vec<&&AnswerRecord> = records.iter().collect();
    let ttft = crate::bench::Stat::of(records.iter().map(|r| r.time_to_first_token_ms).collect());
    AnswerMetrics {
        answerable: answerable.len(),
        unanswerable: unanswerable.len(),
        answer_accuracy: share(&answerable, &|r| r.correct),
        refusal_accuracy: share(&unanswerable, &|r| r.correct),
        false_refusal_rate: share(&answerable, &|r| r.refused),
        citation_validity: share(&all, &|r| r.invalid_citations.is_empty()),
        gold_citation: share(&answerable, &|r| r.cites_gold),
        quote_validity: quote_validity(records),
        in_question_language: share(&all, &|r| r.in_question_language),
        median_time_to_first_token_ms: ttft.median,
    }
}

fn quote_validity(records: &[&AnswerRecord]) -> f64 {
    let quotes: usize = records.iter().map(|r| r.quotes).sum();
    let unverified: usize = records.iter().map(|r| r.unverified_quotes.len()).sum();
    if quotes == 0 {
        1.0
    } else {
        (quotes - unverified.min(quotes)) as f64 / quotes as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_hits_within_k() {
        let hit = |rank, highlighted| GoldHit { rank, highlighted };
        let m = metrics_of(&[
            hit(Some(1), true),
            hit(Some(3), false),
            hit(Some(6), true),
            hit(None, false),
        ]);
        assert_eq!(m.hit_at_1, 0.25);
        assert_eq!(m.hit_at_3, 0.5);
        assert_eq!(m.hit_at_5, 0.5);
        assert!((m.mrr - (1.0 + 1.0 / 3.0 + 1.0 / 6.0) / 4.0).abs() < 1e-9);
        assert_eq!(m.highlight, 0.5);
    }

    fn item(answerable: bool, facts: &[&[&str]]) -> EvalItem {
        EvalItem {
            id: "x".into(),
            lang: "en".into(),
            question: "What did he say about agents?".into(),
            answerable,
            gold_quotes: if answerable {
                vec!["长期任务".into()]
            } else {
                vec![]
            },
            speaker: None,
            must_mention: facts
                .iter()
                .map(|f| f.iter().map(|s| s.to_string()).collect())
                .collect(),
            note: String::new(),
        }
    }

    fn answer(text: &str, cited: &[&str], invalid: &[&str]) -> Answer {
        let turn = |id: &str| crate::transcript::Turn {
            id: id.into(),
            speaker: "Sam Altman".into(),
            start: None,
            text: if id == "T12" {
                "智能体可以完成长期任务。"
            } else {
                "…"
            }
            .into(),
        };
        Answer {
            question: "What did he say about agents?".into(),
            search_queries: vec![],
            language: Language::En,
            answered: !cited.is_empty(),
            answered_log_odds: None,
            best_relevance: None,
            restates_question: false,
            answer: text.into(),
            citations: cited.iter().map(|id| turn(id)).collect(),
            invalid_citations: invalid.iter().map(|s| s.to_string()).collect(),
            // No turns are given here, so every quotation counts as unverified.
            quotes: crate::answer::check_quotes(text, &[]),
            retrieved: vec![],
            stop: None,
            timings: crate::answer::Timings {
                retrieval_ms: 1.0,
                time_to_first_token_ms: 100.0,
                prompt_tokens: 10,
                reused_prompt_tokens: 0,
                generated_tokens: 5,
                quoted_tokens: 0,
                guessed_tokens: 0,
                prefill_tokens_per_s: 1.0,
                decode_tokens_per_s: 1.0,
                total_ms: 200.0,
            },
        }
    }

    #[test]
    fn answers_are_scored_on_facts_refusals_citations_and_language() {
        let markers = vec!["not mention".to_string(), "未提及".to_string()];
        let facts: &[&[&str]] = &[&["long task", "长期任务"], &["supervision", "监督"]];
        let citing_t12 =
            |text: &str| score_answer(&item(true, facts), &answer(text, &["T12"], &[]), &markers);
        let good = citing_t12("Agents take long tasks with little supervision [T12].");
        assert!(good.correct && !good.refused && good.in_question_language);
        let partial = citing_t12("Agents take long tasks [T12].");
        assert!(!partial.correct);
        let refusal = score_answer(
            &item(true, facts),
            &answer("The transcript does not mention this.", &[], &[]),
            &markers,
        );
        assert!(!refusal.correct && refusal.refused);
        let proper_refusal = score_answer(
            &item(false, &[&["not mention", "未提及"]]),
            &answer("The transcript does not mention this.", &[], &[]),
            &markers,
        );
        assert!(proper_refusal.correct);
        let chinese = score_answer(
            &item(true, facts),
            &answer(
                "他说智能体可以在很少监督的情况下完成长期任务。",
                &[],
                &["T99"],
            ),
            &markers,
        );
        assert!(chinese.correct && !chinese.in_question_language);
        let quoting = citing_t12(
            "- [T12] “智能体可以在很少监督的情况下完成长期任务” He says agents run long tasks under little supervision.",
        );
        assert!(quoting.correct && quoting.in_question_language);
        assert_eq!((quoting.quotes, quoting.unverified_quotes.len()), (1, 1));
        // Citations and quotations only: the answer is in the language it quotes.
        let quote_only = "- [T12] “智能体可以在很少监督的情况下完成长期任务”";
        assert!(!citing_t12(quote_only).in_question_language);
        let mut chinese_item = item(true, facts);
        chinese_item.question = "他对智能体说了什么？".into();
        let chinese_quote_only =
            score_answer(&chinese_item, &answer(quote_only, &["T12"], &[]), &markers);
        assert!(chinese_quote_only.in_question_language);
        let quoted_marker = citing_t12("- [T12] “我未提及长期任务” He talks of supervision.");
        assert!(!quoted_marker.refused);
        assert_eq!(summarize_answers(vec![quoting]).overall.quote_validity, 0.0);

        let report = summarize_answers(vec![good, partial, refusal, proper_refusal, chinese]);
        let m = &report.overall;
        assert_eq!((m.answerable, m.unanswerable), (4, 1));
        assert_eq!(m.answer_accuracy, 0.5);
        assert_eq!(m.refusal_accuracy, 1.0);
        assert_eq!(m.false_refusal_rate, 0.25);
        assert_eq!(m.citation_validity, 0.8);
        // Of the answerable items, the two citing T12 cite the turn with the gold quote.
        assert_eq!(m.gold_citation, 0.5);
        assert_eq!(m.in_question_language, 0.8);
    }
}
