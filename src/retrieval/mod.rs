//! Turns → index → the turns that answer a question.
//!
//! Two scorers rank the turns: BM25 over CJK-aware terms ([`bm25`]), which is exact about names
//! and rare words, and a multilingual embedder ([`dense`]), which matches meaning across
//! languages. Their standardized scores are summed, and each turn gains a share of its
//! neighbours', since an interview stays on a topic for several exchanges. A question that names
//! a speaker prefers that speaker's turns, and an interview pairs a host question with the
//! guest's answer, so every hit brings its partner turn along as context. A question about a
//! moment of the recording ("what did she say at 12:34?") is led by the turn spoken then, where
//! the transcript gives times ([`moment`]).

pub mod bm25;
pub mod dense;
pub mod embed;
pub mod moment;
mod unigram;

use serde::Serialize;

use bm25::Bm25;
pub use dense::{DenseError, DenseIndex};

use crate::transcript::{is_cjk_char, Language, Timestamp, Transcript, Turn};

/// Score factor for turns by the speaker a question names ("what did Altman say…").
const SPEAKER_BOOST: f32 = 1.3;
/// Share of the best score among its neighbours (the [`NEIGHBOUR_REACH`] turns on either side)
/// that a matched turn gains. An interview stays on a topic for several exchanges, and a short
/// answer ("为什么会有怀疑？我们遇到过一些无法解释的行为…") may carry few of the words its
/// topic is asked in, which its neighbours do. On the dev set (docs/measurements.md, session 34)
/// 0.3 lifted such a turn from 13th to 2nd after reranking; 0.4 began to push clear first places
/// down.
const NEIGHBOUR_SHARE: f32 = 0.3;
/// How many turns on each side count as a turn's neighbours: with questions and answers
/// alternating, its partner and at least one turn of each exchange beside its own.
const NEIGHBOUR_REACH: usize = 2;
/// Words that name the interviewer's role rather than a person.
const HOST_WORDS: &[&str] = &["host", "interviewer", "主持人", "主持", "采访者", "记者"];
/// Words that say nothing an answer could add to its question: verbs that report speech or
/// thought without saying what was said (after the plural and third-person "s" is stripped, see
/// `bm25::words`), and pronouns the index's stop words keep.
const EMPTY_WORDS: &[&str] = &[
    "him",
    "us",
    "mention",
    "mentioned",
    "talk",
    "talked",
    "explain",
    "explained",
    "describe",
    "described",
    "note",
    "noted",
    "state",
    "stated",
    "believe",
    "believed",
    "feel",
    "felt",
    "ask",
    "asked",
    "answer",
    "answered",
    "refer",
    "referred",
    "speak",
    "spoke",
    "discuss",
    "discusse",
    "discussed",
    "express",
    "expresse",
    "expressed",
    "also",
    "提到",
    "提及",
    "表示",
    "谈到",
    "谈",
    "讲",
    "说道",
    "指出",
    "称",
    "问",
    "问道",
    "回答",
    "还",
    "也",
];

#[derive(Debug, Clone, Serialize)]
pub struct Retrieved {
    pub turn: Turn,
    pub score: f32,
    /// `None` for a turn that matched the query; the id of the matching turn for a partner turn
    /// (the host question before an answer, or the answer after a question).
    pub partner_of: Option<String>,
    /// The turn's passages, the closest to the question first: where in a long turn the answer
    /// is likely to be. Empty when the index has no embedder.
    pub passages: Vec<Passage>,
    /// The answering model's log-odds that the turn answers the question, for the turns it
    /// judged (see `answer::rerank`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relevance: Option<f32>,
}

/// Every turn that matches a question, best first, as [`Index::ranking`] found them; `hits` may
/// be re-ordered before [`Index::select`] picks from them.
pub struct Ranking {
    pub hits: Vec<Retrieved>,
    scored: Scored,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passage {
    pub text: String,
    /// Its cosine similarity with the question, averaged over the question's wordings: how
    /// closely it matches, on a scale that does not depend on the other turns (unlike
    /// `Retrieved::score`).
    pub similarity: f32,
}

pub struct Index {
    turns: Vec<Turn>,
    lexical: Bm25,
    dense: Option<DenseIndex>,
    /// For each turn, the index of the turn it pairs with in a question/answer exchange.
    partners: Vec<Option<usize>>,
    /// The speaker who asks the questions.
    host: Option<String>,
    /// The language most of the transcript is written in.
    language: Language,
    /// Each speaker with the terms of their name: "what did Altman say" names who spoke, not
    /// what about, so these terms select a speaker instead of matching text.
    speaker_terms: Vec<(String, Vec<String>)>,
    /// The turns translated into another language, scored beside the originals.
    translation: Option<TurnView>,
    /// The questions each turn answers, in the transcript's language, scored beside the
    /// originals (see `answer::translate::View::Questions`).
    questions: Option<TurnView>,
}

/// The transcript's turns rewritten by the answering model (see `answer::translate`), indexed
/// like the originals: translated, so that a question also meets each turn in the question's own
/// language, or as the questions each turn answers.
pub struct TurnView {
    texts: Vec<String>,
    lexical: Bm25,
    dense: Option<DenseIndex>,
    language: Language,
}

impl TurnView {
    /// `turns` are the transcript's turns, in order, with rewritten texts; `dense` is a
    /// [`DenseIndex`] built over them.
    pub fn new(turns: &[Turn], language: Language, dense: Option<DenseIndex>) -> Self {
        Self {
            texts: turns.iter().map(|t| t.text.clone()).collect(),
            lexical: Bm25::build(turns.iter().map(|t| t.text.as_str())),
            dense,
            language,
        }
    }
}

impl Index {
    /// A lexical index; add meaning-based scoring with [`Index::with_dense`].
    pub fn build(transcript: &Transcript) -> Self {
        let lexical = Bm25::build(transcript.turns.iter().map(|t| t.text.as_str()));
        let host = host_speaker(&transcript.turns).map(str::to_string);
        let partners = pair_turns(&transcript.turns, host.as_deref());
        let speaker_terms = transcript
            .speakers()
            .iter()
            .map(|name| (name.to_string(), lexical.terms(name)))
            .collect();
        Self {
            turns: transcript.turns.clone(),
            lexical,
            dense: None,
            partners,
            host,
            language: transcript.language(),
            speaker_terms,
            translation: None,
            questions: None,
        }
    }

    pub fn with_translation(mut self, translation: TurnView) -> Self {
        self.translation = Some(translation);
        self
    }

    /// The text of turn `id` translated into `language`, when the index holds such a translation
    /// (never for the transcript's own language).
    pub fn translation(&self, id: &str, language: Language) -> Option<&str> {
        let view = self
            .translation
            .as_ref()
            .filter(|t| t.language == language)?;
        view.texts.get(self.position(id)?).map(String::as_str)
    }

    /// `questions` are the transcript's turns with, as their texts, the questions they answer.
    pub fn with_questions(mut self, questions: TurnView) -> Self {
        self.questions = Some(questions);
        self
    }

    pub fn with_dense(mut self, dense: DenseIndex) -> Self {
        self.dense = Some(dense);
        self
    }

    pub fn dense(&self) -> Option<&DenseIndex> {
        self.dense.as_ref()
    }

    pub fn language(&self) -> Language {
        self.language
    }

    pub fn turns(&self) -> &[Turn] {
        &self.turns
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Every turn that matches the query, best first. `queries` are one question in several
    /// wordings (the question, and its translation into the transcript's language).
    pub fn rank(&self, queries: &[&str]) -> Result<Vec<Retrieved>, DenseError> {
        Ok(self.ranking(queries)?.hits)
    }

    /// Like [`Index::rank`], keeping what [`Index::select`] needs, so that the order can be
    /// changed in between (see `answer::rerank`).
    pub fn ranking(&self, queries: &[&str]) -> Result<Ranking, DenseError> {
        let scored = self.scores(queries)?;
        let scores = &scored.turns;
        let mut ranked: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > 0.0).collect();
        ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let hits = ranked
            .into_iter()
            .map(|i| self.retrieved(i, scores[i], None, &scored))
            .collect();
        Ok(Ranking { hits, scored })
    }

    /// The `k` best-matching turns, best first, each followed by its partner turn unless that is
    /// already in the list.
    pub fn search(&self, queries: &[&str], k: usize) -> Result<Vec<Retrieved>, DenseError> {
        Ok(self.select(&self.ranking(queries)?, k))
    }

    /// The first `k` turns of `ranking`, each followed by its partner turn unless that is already
    /// in the list.
    pub fn select(&self, ranking: &Ranking, k: usize) -> Vec<Retrieved> {
        let mut out: Vec<Retrieved> = Vec::new();
        for hit in ranking.hits.iter().take(k).cloned() {
            if let Some(seen) = out.iter_mut().find(|r| r.turn.id == hit.turn.id) {
                // Already present as a partner: it is a match in its own right.
                *seen = hit;
                continue;
            }
            let partner = self.position(&hit.turn.id).and_then(|i| self.partners[i]);
            let hit_id = hit.turn.id.clone();
            out.push(hit);
            if let Some(p) = partner.filter(|&p| !out.iter().any(|r| r.turn.id == self.turns[p].id))
            {
                out.push(self.retrieved(p, 0.0, Some(hit_id), &ranking.scored));
            }
        }
        out
    }

    /// Fused score of every turn (0 means no match at all), and every passage's similarity to
    /// the wordings.
    fn scores(&self, queries: &[&str]) -> Result<Scored, DenseError> {
        let mut rankings: Vec<ScoreList> = Vec::new();
        let mut passage_similarities: Vec<f32> = Vec::new();
        for query in queries {
            let translation = self
                .translation
                .as_ref()
                .filter(|t| t.language == Language::of(query));
            // The wording meets the turns in its own language where there is such a view; the
            // originals' passages are still compared with it, to find where a turn answers.
            let similarities = match translation {
                Some(t) => {
                    self.rank_view(
                        &t.lexical,
                        t.dense.as_ref(),
                        t.language,
                        query,
                        &mut rankings,
                    )?;
                    self.dense
                        .as_ref()
                        .map(|d| d.similarities(query))
                        .transpose()?
                }
                None => self.rank_view(
                    &self.lexical,
                    self.dense.as_ref(),
                    self.language,
                    query,
                    &mut rankings,
                )?,
            };
            if let Some(questions) = self
                .questions
                .as_ref()
                .filter(|q| q.language == Language::of(query))
            {
                let before = rankings.len();
                self.rank_view(
                    &questions.lexical,
                    questions.dense.as_ref(),
                    questions.language,
                    query,
                    &mut rankings,
                )?;
                for ranking in &mut rankings[before..] {
                    ranking.penalizes = false;
                }
            }
            if let Some(similarities) = similarities {
                passage_similarities.resize(similarities.passages.len(), 0.0);
                for (sum, s) in passage_similarities.iter_mut().zip(similarities.passages) {
                    *sum += s;
                }
            }
        }
        let mut fused = with_neighbours(&match rankings.as_slice() {
            [lexical] => lexical.scores.clone(),
            _ => standardized_fusion(&rankings),
        });
        if let Some(speaker) = self.named_speaker(queries) {
            for (score, turn) in fused.iter_mut().zip(&self.turns) {
                if turn.speaker == speaker {
                    *score *= SPEAKER_BOOST;
                }
            }
            self.lead_exchanges_with(speaker, &mut fused);
        }
        if let Some(at) = queries
            .iter()
            .find_map(|q| self.turn_at(moment::named_in(q)?))
        {
            let best = fused.iter().copied().fold(0.0, f32::max);
            fused[at] = best + 1.0;
        }
        let wordings = queries.len().max(1) as f32;
        for similarity in &mut passage_similarities {
            *similarity /= wordings;
        }
        Ok(Scored {
            turns: fused,
            passage_similarities,
        })
    }

    /// Adds the rankings of one view of the turns (the originals, or their translation) for one
    /// wording of the question to `rankings`, each with its weight; returns the passages'
    /// similarities when the view has an embedder.
    fn rank_view(
        &self,
        lexical: &Bm25,
        dense: Option<&DenseIndex>,
        language: Language,
        query: &str,
        rankings: &mut Vec<ScoreList>,
    ) -> Result<Option<dense::Similarities>, DenseError> {
        let content_terms: Vec<String> = lexical
            .terms(query)
            .into_iter()
            .filter(|t| !self.speaker_terms.iter().any(|(_, name)| name.contains(t)))
            .collect();
        rankings.push(ScoreList::new(
            lexical.scores(&content_terms),
            lexical.known_share(&content_terms),
        ));
        let Some(dense) = dense else {
            return Ok(None);
        };
        let similarities = dense.similarities(query)?;
        let [passages, sentences] = dense.turn_scores(&similarities);
        // Across languages the small embedder needs a passage's context: matched one sentence
        // at a time, an English question's ranking got worse (docs/measurements.md).
        if Language::of(query) == language {
            rankings.push(ScoreList::new(passages, 0.5));
            rankings.push(ScoreList::new(sentences, 0.5));
        } else {
            rankings.push(ScoreList::new(passages, 1.0));
        }
        Ok(Some(similarities))
    }

    /// Where a turn outranks its partner by `speaker`, the two swap scores: the exchange keeps
    /// its place, led by the turn that says what the question asks `speaker` said. A question
    /// about an answer tends to repeat the host's question, so the question outscores the answer.
    fn lead_exchanges_with(&self, speaker: &str, scores: &mut [f32]) {
        for (turn, partner) in self.partners.iter().enumerate() {
            if let Some(partner) = *partner {
                if self.turns[turn].speaker == speaker && scores[partner] > scores[turn] {
                    scores.swap(turn, partner);
                }
            }
        }
    }

    /// The speaker a question names, when it names exactly one in its wordings ("what did Altman
    /// say…", "主持人问了什么"); a question naming both sides is about the exchange.
    pub fn named_speaker(&self, queries: &[&str]) -> Option<&str> {
        let mut named: Vec<&str> = queries
            .iter()
            .flat_map(|q| self.named_speakers(&self.lexical.terms(q)))
            .collect();
        named.sort_unstable();
        named.dedup();
        match named.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The words of `text` that tell something `question` does not: neither in the question
    /// (for Chinese, anywhere in it, as segmentation may cut the two differently), nor a part of
    /// a speaker's name, nor a word that only reports speech ("says", "提到").
    pub fn words_beyond(&self, text: &str, question: &str) -> Vec<String> {
        let asked = self.lexical.words(question);
        let question = question.to_lowercase();
        self.lexical
            .words(text)
            .into_iter()
            .filter(|w| {
                let in_question = asked.contains(w)
                    || (w.chars().any(is_cjk_char) && question.contains(w.as_str()));
                !in_question
                    && !EMPTY_WORDS.contains(&w.as_str())
                    && !self.speaker_terms.iter().any(|(_, name)| name.contains(w))
            })
            .collect()
    }

    /// Whether a wording of the question names the host, alone or beside another speaker ("what
    /// did the host ask Altman…").
    pub fn names_host(&self, queries: &[&str]) -> bool {
        self.host().is_some_and(|host| {
            queries
                .iter()
                .any(|q| self.named_speakers(&self.lexical.terms(q)).contains(&host))
        })
    }

    /// Speakers the query names, by a part of their name or, for the host, by role.
    fn named_speakers(&self, terms: &[String]) -> Vec<&str> {
        let mentions_host = terms.iter().any(|t| HOST_WORDS.contains(&t.as_str()));
        self.speaker_terms
            .iter()
            .filter(|(name, name_terms)| {
                terms.iter().any(|t| name_terms.contains(t))
                    || (mentions_host && Some(name.as_str()) == self.host())
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The turn being spoken at `moment`: the last to start at or before it, or the first that
    /// has a start when it is before them all; `None` in a transcript without times.
    fn turn_at(&self, moment: Timestamp) -> Option<usize> {
        let timed = || {
            self.turns
                .iter()
                .enumerate()
                .filter_map(|(i, t)| Some((i, t.start?)))
        };
        timed()
            .rfind(|&(_, start)| start <= moment)
            .or_else(|| timed().next())
            .map(|(i, _)| i)
    }

    /// The exchange `turn` belongs to: the turn with its partner (see [`Index::select`]), in
    /// transcript order.
    pub fn exchange(&self, turn: &Turn) -> Vec<&Turn> {
        let Some(i) = self.position(&turn.id) else {
            return Vec::new();
        };
        let mut positions = vec![i];
        positions.extend(self.partners[i]);
        positions.sort_unstable();
        positions.into_iter().map(|p| &self.turns[p]).collect()
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.turns.iter().position(|t| t.id == id)
    }

    fn retrieved(
        &self,
        i: usize,
        score: f32,
        partner_of: Option<String>,
        scored: &Scored,
    ) -> Retrieved {
        let passages = self.dense.as_ref().map_or_else(Vec::new, |dense| {
            dense
                .passages_of(i, &scored.passage_similarities)
                .into_iter()
                .map(|(text, similarity)| Passage {
                    text: text.to_string(),
                    similarity,
                })
                .collect()
        });
        Retrieved {
            turn: self.turns[i].clone(),
            score,
            relevance: None,
            partner_of,
            passages,
        }
    }
}

struct Scored {
    /// Fused score per turn, in turn order.
    turns: Vec<f32>,
    /// Cosine similarity per passage, averaged over the wordings; empty without an embedder.
    passage_similarities: Vec<f32>,
}

/// One scorer's score for every turn, in turn order, and how much it counts in
/// [`standardized_fusion`].
#[derive(Debug, Clone)]
pub(crate) struct ScoreList {
    pub scores: Vec<f32>,
    pub weight: f32,
    /// Whether a score below the scorer's mean counts against a turn. Not for the questions the
    /// model wrote for each turn: where it summed a turn up poorly ("为什么会有怀疑？" for an
    /// answer about failed training runs), the turn is not thereby off the question's topic.
    pub penalizes: bool,
}

impl ScoreList {
    pub(crate) fn new(scores: Vec<f32>, weight: f32) -> Self {
        Self {
            scores,
            weight,
            penalizes: true,
        }
    }
}

/// Σ weight × (score − mean) / standard deviation, per scorer. Standardizing puts BM25's
/// unbounded scores and the embedder's narrow band of cosines (0.7–0.9 for every turn) on one
/// scale, on which a scorer's clear favourite stands out by how far it lies above the rest.
/// Fusing ranks instead (reciprocal-rank fusion, measured in docs/measurements.md) rewarded turns
/// that were middling for every scorer. Shifted so that the weakest turn any scorer matched scores
/// just above 0, and a turn no scorer matched scores 0.
pub(crate) fn standardized_fusion(score_lists: &[ScoreList]) -> Vec<f32> {
    let n = score_lists.first().map_or(0, |l| l.scores.len());
    let mut fused = vec![0.0_f32; n];
    for list in score_lists {
        let scores = &list.scores;
        let mean = scores.iter().sum::<f32>() / n as f32;
        let variance = scores.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / n as f32;
        if variance <= 0.0 {
            // A scorer that rates every turn alike says nothing about any of them.
            continue;
        }
        let sd = variance.sqrt();
        for (sum, s) in fused.iter_mut().zip(scores) {
            let standardized = (s - mean) / sd;
            *sum += list.weight
                * if list.penalizes {
                    standardized
                } else {
                    standardized.max(0.0)
                };
        }
    }
    let matched: Vec<bool> = (0..n)
        .map(|i| score_lists.iter().any(|l| l.scores[i] > 0.0))
        .collect();
    let floor = fused
        .iter()
        .zip(&matched)
        .filter(|(_, &m)| m)
        .map(|(f, _)| *f)
        .fold(f32::INFINITY, f32::min);
    fused
        .iter()
        .zip(matched)
        .map(|(f, m)| if m { f - floor + 1e-3 } else { 0.0 })
        .collect()
}

/// Each matched turn's score plus [`NEIGHBOUR_SHARE`] of the best score within
/// [`NEIGHBOUR_REACH`] turns of it; a turn nothing matched stays at 0, so that context alone
/// never retrieves a turn.
fn with_neighbours(scores: &[f32]) -> Vec<f32> {
    scores
        .iter()
        .enumerate()
        .map(|(i, &own)| {
            if own <= 0.0 {
                return own;
            }
            let near = i.saturating_sub(NEIGHBOUR_REACH)..=(i + NEIGHBOUR_REACH);
            let best_neighbour = near
                .filter(|&j| j != i)
                .filter_map(|j| scores.get(j))
                .copied()
                .fold(0.0_f32, f32::max);
            own + NEIGHBOUR_SHARE * best_neighbour
        })
        .collect()
}

/// The host is the speaker whose turns most often ask questions, of two or more; each host turn pairs with the
/// guest turn after it, and each guest turn with the host turn before it.
fn pair_turns(turns: &[Turn], host: Option<&str>) -> Vec<Option<usize>> {
    (0..turns.len())
        .map(|i| {
            let is_host = Some(turns[i].speaker.as_str()) == host;
            let partner = if is_host {
                i.checked_add(1)
            } else {
                i.checked_sub(1)
            };
            partner.filter(|&p| p < turns.len() && turns[p].speaker != turns[i].speaker)
        })
        .collect()
}

fn host_speaker(turns: &[Turn]) -> Option<&str> {
    let mut stats: Vec<(&str, usize, usize)> = Vec::new();
    for t in turns {
        let asks = usize::from(t.text.contains('?') || t.text.contains('？'));
        match stats.iter_mut().find(|(name, _, _)| *name == t.speaker) {
            Some(entry) => {
                entry.1 += asks;
                entry.2 += 1;
            }
            None => stats.push((&t.speaker, asks, 1)),
        }
    }
    // A talk or a caption file that names nobody has no one who asks the others.
    if stats.len() < 2 {
        return None;
    }
    let share = |&(_, asks, n): &(&str, usize, usize)| asks as f32 / n as f32;
    stats
        .iter()
        .max_by(|a, b| share(a).total_cmp(&share(b)))
        .map(|(name, _, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn transcript(text: &str) -> Transcript {
        Transcript::parse(text, Path::new("t.txt")).unwrap()
    }

    /// The turns of `t` with other texts: a translation, or the questions each answers.
    fn rewritten(t: &Transcript, texts: &[&str]) -> Vec<Turn> {
        texts
            .iter()
            .zip(&t.turns)
            .map(|(text, turn)| Turn {
                text: text.to_string(),
                ..turn.clone()
            })
            .collect()
    }

    #[test]
    fn a_question_names_the_host_by_name_or_by_role_beside_another_speaker() {
        let t = transcript(
            "Harry Stebbings: 你怎么看代理？\n\nSam Altman: 代理会做很多事。\n\n\
             Harry Stebbings: 还有呢？\n\nSam Altman: 没有了。",
        );
        let index = Index::build(&t);
        assert_eq!(index.host(), Some("Harry Stebbings"));
        assert!(index.names_host(&["What did the host ask Altman about agents?"]));
        assert!(index.names_host(&["Harry 问了 Altman 什么？"]));
        assert!(index.names_host(&["About agents", "主持人问了什么？"]));
        assert!(!index.names_host(&["What did Altman say about agents?"]));
        assert!(!index.names_host(&["What about agents?"]));
    }

    #[test]
    fn words_beyond_the_question_leave_out_its_words_speakers_and_speech_verbs() {
        let t = transcript("Sam Altman: 我们会继续研究。\n\nHarry Stebbings: 好的。");
        let index = Index::build(&t);
        let asked = "Altman 说上个月让他感到震撼的那项研究成果具体是什么？";
        assert!(index
            .words_beyond(
                "Altman提到上个月让他感到震撼的那项研究成果具体是什么。",
                asked
            )
            .is_empty());
        assert_eq!(
            index.words_beyond("他说那项研究成果是一种新的推理方法。", asked),
            ["一种", "新", "推理", "方法", "推理方法"]
        );
        assert_eq!(
            index.words_beyond(
                "Sam Altman says that the research results shocked him.",
                "Which research result shocked Altman?"
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_matched_answer_brings_its_question() {
        let t = transcript(
            "Host: What about pricing?\n\nGuest: Pricing will follow compute.\n\nHost: And agents?\n\nGuest: Agents run long tasks.",
        );
        let index = Index::build(&t);
        let hits = index.search(&["long tasks"], 1).unwrap();
        let ids: Vec<_> = hits.iter().map(|r| r.turn.id.as_str()).collect();
        assert_eq!(ids, ["T4", "T3"]);
        assert_eq!(hits[1].partner_of.as_deref(), Some("T4"));
        assert_eq!(index.host(), Some("Host"));
    }

    #[test]
    fn a_talk_by_one_speaker_has_no_host_and_no_pairs() {
        let t = transcript("Sam: Why agents? Because they work.\n\nSam: What next? Compute.");
        let index = Index::build(&t);
        assert_eq!(index.host(), None);
        let hits = index.search(&["compute"], 1).unwrap();
        assert_eq!(hits.len(), 1);
    }

    #[test]
    fn unrelated_queries_retrieve_nothing_lexically() {
        let t = transcript("Host: What about pricing?\n\nGuest: Pricing will follow compute.");
        assert!(Index::build(&t).search(&["zebra"], 3).unwrap().is_empty());
    }

    #[test]
    fn a_question_about_a_moment_is_led_by_the_turn_spoken_then() {
        let turns = [
            "Host: What about pricing?",
            "Guest: Pricing will follow compute, pricing first.",
            "Host: And agents?",
            "Guest: Agents run long tasks; pricing matters less.",
        ];
        let starts = ["[00:00:05] ", "[00:01:10] ", "[00:12:30] ", "[00:13:05] "];
        let timed: Vec<String> = starts
            .iter()
            .zip(turns)
            .map(|(s, t)| s.to_string() + t)
            .collect();
        let index = Index::build(&transcript(&timed.join("\n\n")));
        let lead = |query: &str| index.rank(&[query]).unwrap()[0].turn.id.clone();
        assert_ne!(lead("what did he say about pricing"), "T4");
        assert_eq!(lead("what did he say about pricing at 13:20?"), "T4");
        assert_eq!(lead("what did the host ask around minute 12?"), "T2");
        // Before the first turn's start: the first turn.
        assert_eq!(lead("what was said at 0:01?"), "T1");

        // Without times, the moment changes nothing.
        let untimed = Index::build(&transcript(&turns.join("\n\n")));
        let ids = |query: &str| -> Vec<String> {
            let hits = untimed.rank(&[query]).unwrap();
            hits.into_iter().map(|r| r.turn.id).collect()
        };
        assert_eq!(ids("pricing at 13:20"), ids("pricing"));
    }

    #[test]
    fn naming_a_speaker_prefers_their_turns() {
        let t = transcript(
            "Ann Lee: Do you like tea?\n\nBob Stone: I like tea a lot.\n\nAnn Lee: Tea is fine by me, tea is good.",
        );
        let index = Index::build(&t);
        assert_eq!(
            index.rank(&["Bob Stone tea"]).unwrap()[0].turn.speaker,
            "Bob Stone"
        );
        assert_eq!(
            index.rank(&["what did Ann say about tea"]).unwrap()[0]
                .turn
                .speaker,
            "Ann Lee"
        );
    }

    #[test]
    fn the_named_speaker_leads_an_exchange_the_other_side_matched() {
        let t = transcript(
            "Ann Lee: Why do teams waste talent?\n\nBob Stone: Offices are built badly and luck decides.\n\nAnn Lee: Anything else?\n\nBob Stone: Offices again.",
        );
        let index = Index::build(&t);
        let ids = |query: &str| -> Vec<String> {
            let hits = index.search(&[query], 1).unwrap();
            hits.iter().map(|h| h.turn.id.clone()).collect()
        };
        assert_eq!(ids("why do teams waste talent"), ["T1", "T2"]);
        assert_eq!(ids("why does Bob say teams waste talent"), ["T2", "T1"]);
    }

    #[test]
    fn a_question_meets_the_turns_in_its_own_language() {
        let t = transcript("主持人: 定价怎么样？\n\n嘉宾: 价格会跟着算力走。\n\n主持人: 代理呢？\n\n嘉宾: 代理能运行很长的任务。");
        let english = rewritten(
            &t,
            &[
                "What about pricing?",
                "Prices will follow compute.",
                "And agents?",
                "Agents can run long tasks.",
            ],
        );
        let plain = Index::build(&t);
        assert!(plain.rank(&["long tasks"]).unwrap().is_empty());
        let index = plain.with_translation(TurnView::new(&english, Language::En, None));
        assert_eq!(index.rank(&["long tasks"]).unwrap()[0].turn.id, "T4");
        // A Chinese wording still meets the Chinese originals.
        assert_eq!(index.rank(&["价格"]).unwrap()[0].turn.id, "T2");
        assert_eq!(
            index.translation("T4", Language::En),
            Some("Agents can run long tasks.")
        );
        assert_eq!(index.translation("T4", Language::Zh), None);
        assert_eq!(index.translation("T9", Language::En), None);
    }

    #[test]
    fn a_turn_is_found_by_the_questions_it_answers() {
        let t = transcript(
            "Host: Tell me about the early days.\n\nGuest: Four of us shared one server in a garage.\n\nHost: And now?\n\nGuest: Thousands work here now.",
        );
        let questions = rewritten(
            &t,
            &[
                "What were the early days like?",
                "How big was the team at the start?",
                "What is it like now?",
                "How many people work there today?",
            ],
        );
        let plain = Index::build(&t);
        let query = "how big was the team at the start";
        assert!(plain.rank(&[query]).unwrap().is_empty());
        let index = plain.with_questions(TurnView::new(&questions, Language::En, None));
        assert_eq!(index.rank(&[query]).unwrap()[0].turn.id, "T2");
    }

    #[test]
    fn a_scorer_that_does_not_penalize_adds_evidence_and_takes_none_away() {
        let lexical = ScoreList::new(vec![3.0, 2.0, 1.0], 1.0);
        let questions = ScoreList::new(vec![0.0, 1.0, 1.0], 1.0);
        let penalizing = standardized_fusion(&[lexical.clone(), questions.clone()]);
        assert!(penalizing[1] > penalizing[0]);
        let adding = standardized_fusion(&[
            lexical,
            ScoreList {
                penalizes: false,
                ..questions
            },
        ]);
        assert!(adding[0] > adding[1] && adding[1] > adding[2]);
    }

    #[test]
    fn fusion_rewards_agreement_and_weighs_scorers() {
        let fused = standardized_fusion(&[
            ScoreList::new(vec![3.0, 2.0, 0.0], 1.0),
            ScoreList::new(vec![0.1, 0.9, 0.5], 1.0),
        ]);
        assert!(fused[1] > fused[0] && fused[0] > fused[2] && fused[2] > 0.0);
        let lexical_only = standardized_fusion(&[
            ScoreList::new(vec![3.0, 2.0, 0.0], 1.0),
            ScoreList::new(vec![0.1, 0.9, 0.5], 0.0),
        ]);
        assert!(lexical_only[0] > lexical_only[1]);
    }

    #[test]
    fn a_turn_between_strong_matches_rises_above_an_isolated_one() {
        let scores = [0.0, 9.0, 0.0, 1.0, 0.0, 9.0, 0.0, 0.0, 0.0, 1.2, 0.0];
        let lifted = with_neighbours(&scores);
        assert!(lifted[3] > lifted[9], "{lifted:?}");
        assert_eq!(lifted[2], 0.0, "context alone must not retrieve a turn");
        assert!(lifted[1] > lifted[3] && lifted[5] > lifted[3]);
    }

    #[test]
    fn fusion_scores_unmatched_turns_zero() {
        let fused = standardized_fusion(&[
            ScoreList::new(vec![2.0, 0.0, 1.0], 1.0),
            ScoreList::new(vec![0.0, 0.0, 0.0], 1.0),
        ]);
        assert_eq!(fused[1], 0.0);
        assert!(fused[0] > fused[2] && fused[2] > 0.0);
    }
}
