//! Retrieved turns → prompt → generated answer with checked citations.

use std::path::Path;
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Serialize;

use crate::model::{generate, Message, Model, ModelError, Role, SamplingConfig};
use crate::retrieval::{DenseError, Index, Retrieved};
pub use crate::transcript::Language;
use crate::transcript::Turn;

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the question is empty; ask something, e.g. tqa ask \"What did Altman say about agents?\"")]
    EmptyQuestion,
    #[error("cannot read prompt file {path}: {source}")]
    Prompt {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("retrieval failed: {0}")]
    Retrieval(#[from] DenseError),
}

/// Longest stretch of one turn put into the prompt. Prefill time grows with every token, and the
/// point of a long answer is usually made in its first paragraphs.
const MAX_TURN_CHARS: usize = 700;

/// The prompt texts; the defaults are the files in `prompts/`, compiled in.
#[derive(Debug, Clone)]
pub struct Prompts {
    pub system: String,
    pub user: String,
    pub language_en: String,
    pub language_zh: String,
    pub translate: String,
    pub rewrite: String,
}

impl Default for Prompts {
    fn default() -> Self {
        Self {
            system: include_str!("../prompts/system.txt").to_string(),
            user: include_str!("../prompts/user.txt").to_string(),
            language_en: include_str!("../prompts/language-en.txt").to_string(),
            language_zh: include_str!("../prompts/language-zh.txt").to_string(),
            translate: include_str!("../prompts/translate.txt").to_string(),
            rewrite: include_str!("../prompts/rewrite.txt").to_string(),
        }
    }
}

impl Prompts {
    /// Reads the prompt files from `dir`, for trying out prompt changes without rebuilding.
    pub fn from_dir(dir: &Path) -> Result<Self, AnswerError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| AnswerError::Prompt { path, source })
        };
        Ok(Self {
            system: read("system.txt")?,
            user: read("user.txt")?,
            language_en: read("language-en.txt")?,
            language_zh: read("language-zh.txt")?,
            translate: read("translate.txt")?,
            rewrite: read("rewrite.txt")?,
        })
    }

    /// `host` is the interviewer's name, marked in the turns so that questions are not taken for
    /// the guest's views.
    pub fn messages(
        &self,
        question: &str,
        turns: &[Retrieved],
        host: Option<&str>,
        language: Language,
    ) -> Vec<Message> {
        let answer_language = match language {
            Language::En => &self.language_en,
            Language::Zh => &self.language_zh,
        };
        let system = self.system.replace("{answer_language}", answer_language.trim());
        // Transcript text goes in last, so that braces inside it are never taken for placeholders.
        let user = self
            .user
            .replace("{question}", question.trim())
            .replace("{turns}", &format_turns(turns, host));
        vec![
            Message::new(Role::System, system.trim()),
            Message::new(Role::User, user.trim()),
        ]
    }
}

/// Most tokens a rewritten or translated question may take; a question is a sentence or two.
const MAX_QUESTION_TOKENS: usize = 96;

/// Generates one short line from a system instruction and a user message.
fn one_line(model: &mut Model, instruction: &str, input: &str) -> Result<String, AnswerError> {
    let messages = [
        Message::new(Role::System, instruction.trim()),
        Message::new(Role::User, input.trim()),
    ];
    let prompt = model.encode(&model.template().render(&messages))?;
    let config = SamplingConfig {
        max_new_tokens: MAX_QUESTION_TOKENS,
        repeat_penalty: 1.0,
        ..SamplingConfig::default()
    };
    let generation = generate(model, &prompt, &config, &mut |_| {})?;
    let line = generation.text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    Ok(line.trim().to_string())
}

/// A follow-up question ("and what about pricing?") rewritten, with the earlier questions of the
/// conversation, into one that retrieval can use on its own.
pub fn standalone_question(
    model: &mut Model,
    prompts: &Prompts,
    earlier_questions: &[String],
    follow_up: &str,
) -> Result<String, AnswerError> {
    if earlier_questions.is_empty() {
        return Ok(follow_up.trim().to_string());
    }
    let input = format!(
        "Earlier questions:\n{}\n\nFollow-up question: {}",
        earlier_questions.iter().map(|q| format!("- {q}")).collect::<Vec<_>>().join("\n"),
        follow_up.trim()
    );
    let rewritten = one_line(model, &prompts.rewrite, &input)?;
    Ok(if rewritten.is_empty() { follow_up.trim().to_string() } else { rewritten })
}

/// The question in `to`, the transcript's language, by the answering model: keyword search needs
/// the transcript's own words, and the embedder matches same-language text more closely.
pub fn translate_question(
    model: &mut Model,
    prompts: &Prompts,
    question: &str,
    to: Language,
) -> Result<String, AnswerError> {
    let language = match to {
        Language::En => "English",
        Language::Zh => "Simplified Chinese",
    };
    one_line(model, &prompts.translate.replace("{language}", language), question)
}

/// The wordings of `question` to retrieve with: the question itself and, when it is not in the
/// transcript's language and `translate` is on, its translation.
pub fn search_queries(
    index: &Index,
    model: &mut Model,
    prompts: &Prompts,
    question: &str,
    translate: bool,
) -> Result<Vec<String>, AnswerError> {
    let mut queries = vec![question.trim().to_string()];
    if translate && Language::of(question) != index.language() {
        let translated = translate_question(model, prompts, question, index.language())?;
        if !translated.is_empty() {
            queries.push(translated);
        }
    }
    Ok(queries)
}

/// Turns in transcript order, so that a question reads before its answer.
fn format_turns(turns: &[Retrieved], host: Option<&str>) -> String {
    let mut ordered: Vec<&Turn> = turns.iter().map(|r| &r.turn).collect();
    ordered.sort_by_key(|t| turn_number(&t.id));
    ordered
        .iter()
        .map(|t| {
            let role = if Some(t.speaker.as_str()) == host { " (interviewer)" } else { "" };
            let text = truncate_chars(&t.text, MAX_TURN_CHARS);
            format!("[{}] {}{role}: {text}", t.id, t.speaker)
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn turn_number(id: &str) -> usize {
    id.trim_start_matches('T').parse().unwrap_or(usize::MAX)
}

pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Turn ids cited in `answer`, in order of first mention: `[T3]`, `[T3, T5]`, `[T3][T5]` and the
/// full-width `【T3】` all count.
pub fn extract_citations(answer: &str) -> Vec<String> {
    let group = Regex::new(r"[\[【]\s*(T\d+(?:\s*[,，、;]\s*T?\d+)*)\s*[\]】]").expect("static regex");
    let number = Regex::new(r"\d+").expect("static regex");
    let mut ids: Vec<String> = Vec::new();
    for caps in group.captures_iter(answer) {
        for n in number.find_iter(&caps[1]) {
            let id = format!("T{}", n.as_str().trim_start_matches('0'));
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// Translating the question (when needed) and ranking the turns.
    pub retrieval_ms: f64,
    /// From the question to the first generated token: retrieval, prompt and prefill.
    pub time_to_first_token_ms: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub question: String,
    /// What retrieval searched for: the question, and its translation when there is one.
    pub search_queries: Vec<String>,
    pub language: Language,
    pub answer: String,
    /// Cited turns that were given to the model, in order of first citation.
    pub citations: Vec<Turn>,
    /// Cited ids that were not among the turns given to the model.
    pub invalid_citations: Vec<String>,
    pub retrieved: Vec<Retrieved>,
    pub timings: Timings,
}

#[derive(Debug, Clone)]
pub struct AskOptions {
    /// Best-matching turns to retrieve (each brings its question/answer partner).
    pub k: usize,
    /// Translate a question that is not in the transcript's language before retrieval.
    pub translate: bool,
    pub sampling: SamplingConfig,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self {
            k: 3,
            translate: true,
            sampling: SamplingConfig::default(),
        }
    }
}

/// Answers `question` from the turns `index` retrieves, streaming the answer to `on_text`.
pub fn ask(
    index: &Index,
    model: &mut Model,
    prompts: &Prompts,
    question: &str,
    options: &AskOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Answer, AnswerError> {
    if question.trim().is_empty() {
        return Err(AnswerError::EmptyQuestion);
    }
    let start = Instant::now();
    let search_queries = search_queries(index, model, prompts, question, options.translate)?;
    let query_refs: Vec<&str> = search_queries.iter().map(String::as_str).collect();
    let retrieved = index.search(&query_refs, options.k)?;
    let retrieval = start.elapsed();

    let language = Language::of(question);
    let messages = prompts.messages(question, &retrieved, index.host(), language);
    let prompt = model.encode(&model.template().render(&messages))?;
    let before_prefill = start.elapsed();
    let generation = generate(model, &prompt, &options.sampling, on_text)?;

    let (citations, invalid_citations) = check_citations(&generation.text, &retrieved);
    Ok(Answer {
        question: question.to_string(),
        search_queries,
        language,
        answer: generation.text.trim().to_string(),
        citations,
        invalid_citations,
        retrieved,
        timings: Timings {
            retrieval_ms: ms(retrieval),
            time_to_first_token_ms: ms(before_prefill + generation.prefill_time),
            prompt_tokens: generation.prompt_tokens,
            generated_tokens: generation.tokens.len(),
            prefill_tokens_per_s: generation.prefill_tokens_per_s(),
            decode_tokens_per_s: generation.decode_tokens_per_s(),
            total_ms: ms(start.elapsed()),
        },
    })
}

/// Splits the cited ids into turns that were in the prompt and ids that were not.
pub fn check_citations(answer: &str, given: &[Retrieved]) -> (Vec<Turn>, Vec<String>) {
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for id in extract_citations(answer) {
        match given.iter().find(|r| r.turn.id == id) {
            Some(r) => valid.push(r.turn.clone()),
            None => invalid.push(id),
        }
    }
    (valid, invalid)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citation_forms_are_all_recognised() {
        let ids = extract_citations("He said so [T3]. Also [T5, T7] and 【T9】[T3][T12、T02].");
        assert_eq!(ids, ["T3", "T5", "T7", "T9", "T12", "T2"]);
    }

    #[test]
    fn malformed_citations_are_ignored() {
        assert!(extract_citations("see T3, [3], [Turn 4] and [T]").is_empty());
    }

    #[test]
    fn language_follows_the_question() {
        assert_eq!(Language::of("What did Altman say about agents?"), Language::En);
        assert_eq!(Language::of("What is 智能体?"), Language::En);
        assert_eq!(Language::of("Altman 怎么看 OpenAI 的定价？"), Language::Zh);
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate_chars("智能体很好", 3), "智能体…");
        assert_eq!(truncate_chars("abc", 3), "abc");
    }
}
