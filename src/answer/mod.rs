//! Retrieved turns → prompt → generated answer with checked citations.

pub mod rerank;
mod steer;
pub mod translate;

pub use steer::PASSAGES_PER_QUOTE;

use std::path::Path;
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Serialize;

use candle_core::Tensor;

use crate::model::generate::{check_context, continue_generation, per_second, Prefilled, Steer};
use crate::model::{
    generate, ChatTemplate, Generation, Message, Model, ModelError, ModelInfo, Role,
    SamplingConfig, StopReason,
};
use crate::retrieval::{DenseError, Index, Ranking, Retrieved};
pub use crate::transcript::Language;
use crate::transcript::Turn;
use steer::{AnswerSteer, Whose};

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(
        "the question is empty; ask something, e.g. tqa ask \"What did Altman say about agents?\""
    )]
    EmptyQuestion,
    #[error("the question is {chars} characters long; tqa answers questions of up to {max}: ask about one thing at a time (`tqa search` finds the turns that hold a passage)")]
    QuestionTooLong { chars: usize, max: usize },
    #[error("cannot read prompt file {path}: {source}")]
    Prompt {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("prompt file {file} lacks the placeholder {placeholder}; put it where the {what} go")]
    PromptPlaceholder {
        file: std::path::PathBuf,
        placeholder: &'static str,
        what: &'static str,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("retrieval failed: {0}")]
    Retrieval(#[from] DenseError),
}

/// Most characters of a question. A question is a sentence or two; text pasted by mistake, far
/// longer, would be read once to translate it and once per judged exchange: a 60,000-character
/// one took minutes before the first token (docs/measurements.md, session 49).
pub const MAX_QUESTION_CHARS: usize = 1000;

/// Fails on a question that is empty or too long to be one (`MAX_QUESTION_CHARS`), before any
/// work is done on it.
pub fn check_question(question: &str) -> Result<(), AnswerError> {
    let chars = question.trim().chars().count();
    if chars == 0 {
        return Err(AnswerError::EmptyQuestion);
    }
    if chars > MAX_QUESTION_CHARS {
        return Err(AnswerError::QuestionTooLong {
            chars,
            max: MAX_QUESTION_CHARS,
        });
    }
    Ok(())
}

/// How far past its token limit an answer may go to finish the sentence or quotation the limit
/// falls inside (a cut answer stopped mid-quotation or mid-sentence): a sixth of the limit, 128
/// tokens past the default 768, so that a short limit stays short.
pub fn room_to_finish_sentence(max_new_tokens: usize) -> usize {
    max_new_tokens / 6
}

/// Longest stretch of one turn put into the prompt. Prefill time grows with every token, and the
/// point of a long answer is usually made in its first paragraphs.
const MAX_TURN_CHARS: usize = 700;

/// A text that exists once per answer language.
#[derive(Debug, Clone)]
pub struct PerLanguage {
    pub en: String,
    pub zh: String,
}

impl PerLanguage {
    pub fn get(&self, language: Language) -> &str {
        match language {
            Language::En => &self.en,
            Language::Zh => &self.zh,
        }
    }
}

/// The prompt texts; the defaults are the files in `prompts/`, compiled in.
#[derive(Debug, Clone)]
pub struct Prompts {
    /// Instructions and example, written in the language the answer is to be in: a small model
    /// follows the language of its instructions more reliably than an order to switch.
    pub system: PerLanguage,
    pub user: String,
    /// What the user sees when the model judges that the excerpts do not answer the question.
    pub refusal: PerLanguage,
    /// What follows an answer whose own words only restate the question (see
    /// [`only_restates`]).
    pub restated: PerLanguage,
    pub translate: String,
    /// The instruction with which the model translates the transcript's turns (see [`translate`]).
    pub translate_turn: String,
    /// The instruction with which the model writes the questions each piece of a turn answers
    /// (see [`translate::View::Questions`]).
    pub turn_questions: String,
    pub rewrite: String,
    /// The instruction and the message with which the model judges one turn (see [`rerank`]).
    pub rerank_system: String,
    pub rerank_user: String,
}

impl Default for Prompts {
    fn default() -> Self {
        let text = |s: &str| s.trim().to_string();
        Self {
            system: PerLanguage {
                en: text(include_str!("../../prompts/system-en.txt")),
                zh: text(include_str!("../../prompts/system-zh.txt")),
            },
            user: text(include_str!("../../prompts/user.txt")),
            refusal: PerLanguage {
                en: text(include_str!("../../prompts/refusal-en.txt")),
                zh: text(include_str!("../../prompts/refusal-zh.txt")),
            },
            restated: PerLanguage {
                en: text(include_str!("../../prompts/restated-en.txt")),
                zh: text(include_str!("../../prompts/restated-zh.txt")),
            },
            translate: text(include_str!("../../prompts/translate.txt")),
            translate_turn: text(include_str!("../../prompts/translate-turn.txt")),
            turn_questions: text(include_str!("../../prompts/turn-questions.txt")),
            rewrite: text(include_str!("../../prompts/rewrite.txt")),
            rerank_system: text(include_str!("../../prompts/rerank-system.txt")),
            rerank_user: text(include_str!("../../prompts/rerank-user.txt")),
        }
    }
}

impl Prompts {
    /// Reads the prompt files from `dir`, for trying out prompt changes without rebuilding.
    pub fn from_dir(dir: &Path) -> Result<Self, AnswerError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|source| AnswerError::Prompt { path, source })
        };
        let with_placeholders = |name: &str, turns: &'static str| {
            let text = read(name)?;
            for (placeholder, what) in [(turns, "transcript turns"), ("{question}", "question")] {
                if !text.contains(placeholder) {
                    return Err(AnswerError::PromptPlaceholder {
                        file: dir.join(name),
                        placeholder,
                        what,
                    });
                }
            }
            Ok(text)
        };
        let user = with_placeholders("user.txt", "{turns}")?;
        Ok(Self {
            system: PerLanguage {
                en: read("system-en.txt")?,
                zh: read("system-zh.txt")?,
            },
            user,
            refusal: PerLanguage {
                en: read("refusal-en.txt")?,
                zh: read("refusal-zh.txt")?,
            },
            restated: PerLanguage {
                en: read("restated-en.txt")?,
                zh: read("restated-zh.txt")?,
            },
            translate: read("translate.txt")?,
            translate_turn: read("translate-turn.txt")?,
            turn_questions: read("turn-questions.txt")?,
            rewrite: read("rewrite.txt")?,
            rerank_system: read("rerank-system.txt")?,
            rerank_user: with_placeholders("rerank-user.txt", "{turn}")?,
        })
    }

    /// The answer prompt, ending where the model's reply begins with its verdict. `host` is the
    /// interviewer's name, marked in the turns so that questions are not taken for the guest's
    /// views.
    pub fn answer_prompt(
        &self,
        template: ChatTemplate,
        question: &str,
        turns: &[Retrieved],
        host: Option<&str>,
        language: Language,
    ) -> PromptText {
        let messages = [
            Message::new(Role::System, self.system.get(language)),
            Message::new(Role::User, self.user.as_str()),
        ];
        let rendered = template.render(&messages);
        // `from_dir` and the shipped file guarantee the placeholder; the question goes in after
        // the split, so that a question quoting "{turns}" stays a question.
        let (head, tail) = rendered
            .rsplit_once("{turns}")
            .unwrap_or((rendered.as_str(), ""));
        PromptText {
            head: head.to_string(),
            exchanges: format_exchanges(turns, host),
            tail: format!(
                "{}{VERDICT_PREFIX}",
                tail.replace("{question}", question.trim())
            ),
        }
    }

    /// Where a reply has ended: the start of another "Question:" line, as in the worked example
    /// of the system prompt, which a small model tends to go on with.
    fn reply_stops(&self) -> Vec<String> {
        self.user
            .lines()
            .find_map(|line| line.split_once("{question}"))
            // In the shipped template the turns run straight into the question's label.
            .map(|(before, _)| {
                before
                    .rsplit_once("{turns}")
                    .map_or(before, |(_, label)| label)
                    .trim()
            })
            .filter(|label| !label.is_empty())
            .map(|label| vec![format!("\n{label}")])
            .unwrap_or_default()
    }
}

/// A prompt in the parts `Model::prefill_pieces` takes: everything before the transcript turns,
/// one piece per exchange (a host question with its answer, or a turn alone), and everything
/// after.
#[derive(Debug, Clone)]
pub struct PromptText {
    pub head: String,
    pub exchanges: Vec<String>,
    pub tail: String,
}

/// A `PromptText` tokenized part by part, so that each exchange's tokens are the same in every
/// prompt it appears in.
struct PromptTokens {
    head: Vec<u32>,
    exchanges: Vec<Vec<u32>>,
    tail: Vec<u32>,
}

impl PromptTokens {
    fn encode(model: &Model, text: &PromptText) -> Result<Self, ModelError> {
        Ok(Self {
            head: model.encode(&text.head)?,
            exchanges: text
                .exchanges
                .iter()
                .map(|t| model.encode(t))
                .collect::<Result<_, _>>()?,
            tail: model.encode(&text.tail)?,
        })
    }

    fn len(&self) -> usize {
        self.head.len() + self.exchanges.iter().map(Vec::len).sum::<usize>() + self.tail.len()
    }

    /// Where the first exchange ends: the prompt up to there recurs whenever a question is given
    /// the same least relevant exchange.
    fn first_exchange_end(&self) -> usize {
        self.head.len() + self.exchanges.first().map_or(0, Vec::len)
    }

    fn concat(&self) -> Vec<u32> {
        let mut all = self.head.clone();
        all.extend(self.exchanges.iter().flatten());
        all.extend(&self.tail);
        all
    }
}

/// Longest run of tokens an answer may copy from its own earlier words: a phrase may recur, a
/// sentence may not (a bullet that explains its quotation with the previous bullet's words).
const MAX_SELF_REPEAT: usize = 16;

/// Most tokens a rewritten or translated question may take; a question is a sentence or two.
const MAX_QUESTION_TOKENS: usize = 96;

/// Generates one short line from a system instruction and a user message.
fn one_line(model: &mut Model, instruction: &str, input: &str) -> Result<String, AnswerError> {
    let config = SamplingConfig {
        max_new_tokens: MAX_QUESTION_TOKENS,
        repeat_penalty: 1.0,
        ..SamplingConfig::default()
    };
    let reply = instructed_reply(model, instruction, input, &config)?;
    let line = reply
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    Ok(line.trim().to_string())
}

/// The model's reply, trimmed, to a system instruction and a user message.
fn instructed_reply(
    model: &mut Model,
    instruction: &str,
    input: &str,
    config: &SamplingConfig,
) -> Result<String, AnswerError> {
    let prompt = instructed_prompt(model, instruction, input)?;
    let generation = generate(model, &prompt, config, &mut |_| {})?;
    Ok(generation.text.trim().to_string())
}

/// The prompt of [`instructed_reply`], tokenized.
fn instructed_prompt(
    model: &Model,
    instruction: &str,
    input: &str,
) -> Result<Vec<u32>, AnswerError> {
    let messages = [
        Message::new(Role::System, instruction.trim()),
        Message::new(Role::User, input.trim()),
    ];
    Ok(model.encode(&model.template().render(&messages))?)
}

/// How much of the last answer a follow-up is rewritten with: its first sentences, where an
/// answer says what "that" in "why does he think that?" refers to.
const LAST_ANSWER_CHARS: usize = 400;

/// A follow-up question ("and what about pricing?", "why does he think that?") rewritten, with
/// the earlier questions of the conversation and the own words of the last answer (see
/// [`own_words`]), into one that retrieval can use on its own.
pub fn standalone_question(
    model: &mut Model,
    prompts: &Prompts,
    earlier_questions: &[String],
    last_answer: Option<&str>,
    follow_up: &str,
) -> Result<String, AnswerError> {
    if earlier_questions.is_empty() {
        return Ok(follow_up.trim().to_string());
    }
    let input = follow_up_input(earlier_questions, last_answer, follow_up);
    let rewritten = one_line(model, &prompts.rewrite, &input)?;
    Ok(if rewritten.is_empty() {
        follow_up.trim().to_string()
    } else {
        rewritten
    })
}

/// The message with which the model rewrites a follow-up (see [`standalone_question`]).
fn follow_up_input(
    earlier_questions: &[String],
    last_answer: Option<&str>,
    follow_up: &str,
) -> String {
    let questions = earlier_questions
        .iter()
        .map(|q| format!("- {q}"))
        .collect::<Vec<_>>()
        .join("\n");
    let answer = last_answer
        .map(|a| {
            own_words(a)
                .lines()
                .map(|line| line.trim().trim_start_matches(['-', '*', '•']))
                .flat_map(str::split_whitespace)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|a| !a.is_empty())
        .map(|a| format!("\n\nLast answer: {}", truncate_chars(&a, LAST_ANSWER_CHARS)))
        .unwrap_or_default();
    format!(
        "Earlier questions:\n{questions}{answer}\n\nFollow-up question: {}",
        follow_up.trim()
    )
}

fn language_name(language: Language) -> &'static str {
    match language {
        Language::En => "English",
        Language::Zh => "Simplified Chinese",
    }
}

/// The question in `to`, by the answering model.
pub fn translate_question(
    model: &mut Model,
    prompts: &Prompts,
    question: &str,
    to: Language,
) -> Result<String, AnswerError> {
    let instruction = prompts.translate.replace("{language}", language_name(to));
    one_line(model, &instruction, question)
}

/// The wordings of `question` to retrieve with: the question itself and, when `translate` is
/// on, its translation (see [`second_wording`]).
pub fn search_queries(
    index: &Index,
    model: &mut Model,
    prompts: &Prompts,
    question: &str,
    translate: bool,
) -> Result<Vec<String>, AnswerError> {
    let mut queries = vec![question.trim().to_string()];
    if let (true, Some(to)) = (translate, second_wording(question, index.language())) {
        let translated = translate_question(model, prompts, question, to)?;
        if !translated.is_empty() {
            queries.push(translated);
        }
    }
    Ok(queries)
}

/// The language a question is also searched in: the transcript's, when the question is in
/// another, since keyword search needs the transcript's own words; else English, when the
/// question is not in English, since the embedder ranks the turn that answers higher with an
/// English view of a paraphrased question beside it (Chinese questions over the Chinese
/// transcript: hit@1 0.29 → 0.43, MRR 0.52 → 0.61 on the dev set).
fn second_wording(question: &str, transcript: Language) -> Option<Language> {
    match Language::of(question) {
        asked if asked != transcript => Some(transcript),
        Language::Zh => Some(Language::En),
        Language::En => None,
    }
}

/// Every turn that matches `question`, best first, and the wordings retrieval searched with: the
/// index's ranking, with its first `options.rerank` turns re-ordered by the model's judgement.
pub fn rank_turns(
    index: &Index,
    model: &mut Model,
    prompts: &Prompts,
    question: &str,
    options: &AskOptions,
) -> Result<(Vec<String>, Ranking), AnswerError> {
    let queries = search_queries(index, model, prompts, question, options.translate)?;
    let query_refs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let mut ranking = index.ranking(&query_refs)?;
    rerank::rerank(
        model,
        prompts,
        question,
        &mut ranking.hits,
        options.rerank,
        index,
    )?;
    Ok((queries, ranking))
}

/// Each exchange (a matched turn with its partner) in transcript order, so that a question reads
/// before its answer; the exchanges from the weakest match to the best, so that the best stands
/// next to the question, where a small model looks first. Each turn ends with a blank line.
fn format_exchanges(turns: &[Retrieved], host: Option<&str>) -> Vec<String> {
    let mut exchanges: Vec<Vec<&Turn>> = Vec::new();
    let mut leaders: Vec<&str> = Vec::new();
    for r in turns {
        let leader = r.partner_of.as_deref().unwrap_or(&r.turn.id);
        match leaders.iter().position(|l| *l == leader) {
            Some(at) => exchanges[at].push(&r.turn),
            None => {
                leaders.push(leader);
                exchanges.push(vec![&r.turn]);
            }
        }
    }
    exchanges
        .iter_mut()
        .rev()
        .map(|exchange| {
            exchange.sort_by_key(|t| turn_number(&t.id));
            exchange.iter().map(|t| format_turn(t, host)).collect()
        })
        .collect()
}

/// A turn as the model reads it: id, speaker, marked when it is the host, where it starts in
/// the recording when the transcript says (so that a question about a moment can be answered
/// from it), and its text, cut to `MAX_TURN_CHARS`, ending with a blank line.
fn format_turn(turn: &Turn, host: Option<&str>) -> String {
    let role = (Some(turn.speaker.as_str()) == host).then(|| "host".to_string());
    let notes: Vec<String> = role
        .into_iter()
        .chain(turn.start.map(|start| start.to_string()))
        .collect();
    let notes = match notes.as_slice() {
        [] => String::new(),
        _ => format!(" ({})", notes.join(", ")),
    };
    let text = truncate_chars(&turn.text, MAX_TURN_CHARS);
    format!("[{}] {}{notes}: {text}\n\n", turn.id, turn.speaker)
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

/// A citation of one or more turns: `[T3]`, `[T3, T5]`, the full-width `【T3】`; the ids are the
/// first group.
pub fn citation_regex() -> Regex {
    Regex::new(r"[\[【]\s*(T\d+(?:\s*[,，、;]\s*T?\d+)*)\s*[\]】]").expect("static regex")
}

/// Turn ids cited in `answer`, in order of first mention: `[T3]`, `[T3, T5]`, `[T3][T5]` and the
/// full-width `【T3】` all count.
pub fn extract_citations(answer: &str) -> Vec<String> {
    let number = Regex::new(r"\d+").expect("static regex");
    let mut ids: Vec<String> = Vec::new();
    for caps in citation_regex().captures_iter(answer) {
        for n in number.find_iter(&caps[1]) {
            let id = normalize_turn_id(n.as_str());
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
    /// Prompt tokens whose keys and values were not computed for this answer: a system turn or
    /// (with `reuse_turns`) transcript turns computed before.
    pub reused_prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Generated tokens that were quotations filled from the turns, not sampled.
    pub quoted_tokens: usize,
    /// Sampled tokens that a guess ahead had already run through the model.
    pub guessed_tokens: usize,
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
    /// The model's verdict that the retrieved turns answer the question; when false, `answer`
    /// is the refusal.
    pub answered: bool,
    /// The verdict's logit for "yes" minus that for "no"; absent for a vocabulary whose first
    /// tokens of the two words are the same, where the answer goes ahead unjudged, and when the
    /// reranking judged no turn likely enough to answer (`retrieved[].relevance`), where no
    /// verdict was asked for.
    pub answered_log_odds: Option<f32>,
    /// With reranking: the model's log-odds that the best turn it judged answers the question;
    /// below even odds tqa refuses.
    pub best_relevance: Option<f32>,
    /// The answer's own words only restate the question (see [`only_restates`]; not asked of a
    /// question about what the host said). For a model that judges (`ModelInfo::judges`),
    /// `answer` then ends with a line saying that the transcript does not say it.
    pub restates_question: bool,
    pub answer: String,
    /// Cited turns that were given to the model, in order of first citation.
    pub citations: Vec<Turn>,
    /// Cited ids that were not among the turns given to the model.
    pub invalid_citations: Vec<String>,
    /// The answer's quotations, each checked against the turn it is attributed to.
    pub quotes: Vec<Quote>,
    pub retrieved: Vec<Retrieved>,
    /// Why the model's reply ended; absent for a refusal written without it. `token_limit` means
    /// the answer reached its limit and may leave out what the model would have gone on with.
    pub stop: Option<StopReason>,
    pub timings: Timings,
}

#[derive(Debug, Clone)]
pub struct AskOptions {
    /// Best-matching turns to retrieve (each brings its question/answer partner).
    pub k: usize,
    /// Translate a question that is not in the transcript's language before retrieval.
    pub translate: bool,
    /// How many of the best-ranked turns the model judges and re-orders before the `k` best are
    /// picked (see [`rerank`]); 0 keeps the index's order. On by default: on the dev set it put
    /// the answering turn among those given more often, answered more questions and refused more
    /// of those the transcript does not answer (docs/measurements.md).
    pub rerank: usize,
    /// Refuse when the model's verdict says the retrieved turns do not answer the question.
    pub judge: bool,
    /// Compute each transcript turn once, attending to the instructions only, and reuse it in
    /// every later prompt (see `Model::prefill_pieces`). Off by default: the turns then do not
    /// see each other, which changes the answers.
    pub reuse_turns: bool,
    /// Fill each quotation the model opens after a citation with the cited turn's passage
    /// closest to the question (see `QuoteFiller`).
    pub fill_quotes: bool,
    pub sampling: SamplingConfig,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self {
            k: 3,
            translate: true,
            rerank: rerank::DEFAULT_CANDIDATES,
            judge: true,
            reuse_turns: false,
            fill_quotes: true,
            // Up to three bullets, one per exchange given, each with a quotation of two passages;
            // a longer reply is a model that has lost its way.
            sampling: SamplingConfig {
                max_new_tokens: 768,
                finish_sentence_within: room_to_finish_sentence(768),
                max_self_repeat: Some(MAX_SELF_REPEAT),
                ..SamplingConfig::default()
            },
        }
    }
}

impl AskOptions {
    /// The defaults for `model`: a model whose yes/no judgement of an exchange tells nothing
    /// (`judges = false` in the registry) keeps the index's order, and nothing is refused on its
    /// judgement.
    pub fn for_model(model: &ModelInfo) -> Self {
        let defaults = Self::default();
        Self {
            rerank: if model.judges { defaults.rerank } else { 0 },
            ..defaults
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
    check_question(question)?;
    let start = Instant::now();
    let (search_queries, ranking) = rank_turns(index, model, prompts, question, options)?;
    let retrieved = index.select(&ranking, options.k);
    let retrieval = start.elapsed();

    let language = Language::of(question);
    let text = prompts.answer_prompt(
        model.template(),
        question,
        &retrieved,
        index.host(),
        language,
    );
    let prompt = PromptTokens::encode(model, &text)?;
    check_context(model, prompt.len() + VERDICT_TOKENS, &options.sampling)?;

    let prefill_start = Instant::now();
    let before_prefill = prefill_start - start;
    let mut options = options.clone();
    options
        .sampling
        .stop_sequences
        .extend(prompts.reply_stops());
    let queries: Vec<&str> = search_queries.iter().map(String::as_str).collect();
    let named_speaker = index.named_speaker(&queries);
    let whose = match (named_speaker, index.host()) {
        (Some(speaker), _) => Whose::Named(speaker),
        (None, Some(host)) if !index.names_host(&queries) => Whose::AllButHost(host),
        _ => Whose::Anyone,
    };
    let mut steer = AnswerSteer::new(
        &retrieved,
        whose,
        model.info.min_owed_relevance,
        options.fill_quotes,
    )
    .with_restated(
        retrieved
            .iter()
            .filter_map(|r| index.translation(&r.turn.id, language))
            .map(str::to_string)
            .collect(),
    )
    .in_language(language);
    // With no turn to answer from, the model could only answer from what it knows.
    let judged =
        if retrieved.is_empty() || (options.judge && judged_to_answer_nowhere(&ranking.hits)) {
            Judged::refused_unread()
        } else {
            judge_and_generate(model, &prompt, &options, prefill_start, on_text, &mut steer)?
        };
    if judged.generation.is_none() {
        on_text(prompts.refusal.get(language));
    }
    let prefill_time = judged
        .generation
        .as_ref()
        .map_or(judged.verdict_time, |g| g.prefill_time);

    let generated = judged.generation.as_ref().map(|g| g.text.trim());
    // A question about what the host asked is answered by quoting the host's question, and an
    // explanation of a question can only restate it ("Host asks about Berlin.").
    let asks_for_the_hosts_words = named_speaker.is_some() && named_speaker == index.host();
    let restates_question = !asks_for_the_hosts_words
        && generated.is_some_and(|text| only_restates(text, question, index));
    let mut text = generated
        .unwrap_or(prompts.refusal.get(language))
        .to_string();
    // A model whose judgement tells nothing restates the question just as often when the passage
    // it quoted does answer it (docs/measurements.md, session 48): for it, restating says nothing
    // about the transcript either.
    if restates_question && model.info.judges {
        let note = prompts.restated.get(language);
        on_text(&format!("\n{note}"));
        text = format!("{text}\n{note}");
    }
    let (citations, invalid_citations) = check_citations(&text, &retrieved);
    let quotes = check_quotes(&text, &retrieved);
    Ok(Answer {
        question: question.to_string(),
        search_queries,
        language,
        answered: judged.generation.is_some(),
        answered_log_odds: judged.log_odds,
        best_relevance: best_relevance(&ranking.hits),
        restates_question,
        answer: text,
        citations,
        invalid_citations,
        quotes,
        retrieved,
        stop: judged.generation.as_ref().map(|g| g.stop),
        timings: Timings {
            retrieval_ms: ms(retrieval),
            time_to_first_token_ms: ms(before_prefill + prefill_time),
            prompt_tokens: prompt.len(),
            reused_prompt_tokens: judged.reused,
            generated_tokens: judged.generation.as_ref().map_or(0, |g| g.tokens.len()),
            quoted_tokens: judged.generation.as_ref().map_or(0, |g| g.steered_tokens),
            guessed_tokens: judged.generation.as_ref().map_or(0, |g| g.guessed_tokens),
            prefill_tokens_per_s: per_second(prompt.len(), prefill_time),
            decode_tokens_per_s: judged
                .generation
                .as_ref()
                .map_or(0.0, Generation::decode_tokens_per_s),
            total_ms: ms(start.elapsed()),
        },
    })
}

struct Judged {
    reused: usize,
    log_odds: Option<f32>,
    /// From the start of the prefill to the verdict.
    verdict_time: Duration,
    /// `None` when the verdict was "no".
    generation: Option<Generation>,
}

impl Judged {
    /// A refusal decided before the prompt was read.
    fn refused_unread() -> Self {
        Self {
            reused: 0,
            log_odds: None,
            verdict_time: Duration::ZERO,
            generation: None,
        }
    }
}

/// Whether the answer's own words, outside its citations and quotations, only restate the
/// question. A small model that finds no answer in its turns sometimes writes the question back
/// as a statement ("Altman 说上个月让他感到震撼的那项研究成果具体是什么。"), which reads like an
/// answer and tells nothing; its verdict had said yes (docs/measurements.md, session 48). A line
/// of a quotation alone answers by what it quotes.
fn only_restates(answer: &str, question: &str, index: &Index) -> bool {
    let quotation = quotation_regex();
    let mut restates = false;
    for line in answer.lines() {
        let own_words = own_words(line);
        if !index.words_beyond(&own_words, question).is_empty() {
            return false;
        }
        if !index.words_beyond(&own_words, "").is_empty() {
            restates = true;
        } else if quotation.is_match(line) {
            return false;
        }
    }
    restates
}

/// Whether the model, judging the best-ranked turns (see [`rerank`]), leaned "no" on every one:
/// then no prompt of them would hold the answer either, and the model is not asked to write one.
/// Even odds, not the calibrated margin that owes a turn a bullet: a refusal withholds the whole
/// answer, and the answer's own verdict still refuses after it (Chinese questions, judged less
/// surely, were refused at 0.16; docs/measurements.md, session 28).
fn judged_to_answer_nowhere(hits: &[Retrieved]) -> bool {
    best_relevance(hits).is_some_and(|r| r < 0.0)
}

/// The model's judgement of the turn it found likeliest to answer, when it judged any.
fn best_relevance(hits: &[Retrieved]) -> Option<f32> {
    hits.iter().filter_map(|h| h.relevance).reduce(f32::max)
}

/// Prefills `prompt` (which ends with the verdict prefix), reads the verdict and, when it is "yes"
/// or judging is off, generates the answer after it.
fn judge_and_generate(
    model: &mut Model,
    prompt: &PromptTokens,
    options: &AskOptions,
    prefill_start: Instant,
    on_text: &mut dyn FnMut(&str),
    steer: &mut dyn Steer,
) -> Result<Judged, AnswerError> {
    let (logits, reused) = if options.reuse_turns {
        model.prefill_pieces(&prompt.head, &prompt.exchanges, &prompt.tail)?
    } else {
        model.prefill_keeping(&prompt.concat(), prompt.first_exchange_end())?
    };
    let log_odds = answered_log_odds(model, &logits)?;
    let verdict_time = prefill_start.elapsed();
    let threshold = if options.reuse_turns {
        model.info.min_answered_log_odds_reused_turns
    } else {
        model.info.min_answered_log_odds
    };
    if options.judge && log_odds.is_some_and(|odds| odds < threshold) {
        return Ok(Judged {
            reused,
            log_odds,
            verdict_time,
            generation: None,
        });
    }
    let verdict = model.encode(VERDICT_YES)?;
    let logits = model.forward(&verdict, prompt.len())?;
    let prefilled = Prefilled {
        logits,
        context: prompt.len() + verdict.len(),
        start: prefill_start,
    };
    let generation = continue_generation(model, prefilled, &options.sampling, on_text, steer)?;
    Ok(Judged {
        reused,
        log_odds,
        verdict_time,
        generation: Some(generation),
    })
}

/// The model's reply is made to begin with a verdict line, as the system prompts ask: whether the
/// excerpts answer the question. Reading the verdict from the logits of its first word costs one
/// token; a "no" ends the answer with the refusal, so the model never gets to invent one.
const VERDICT_PREFIX: &str = "Answered:";
const VERDICT_YES: &str = " yes\n";
const VERDICT_NO: &str = " no";
/// Room for the verdict's own tokens, on top of the prompt and the answer.
const VERDICT_TOKENS: usize = 4;

/// How much likelier the model finds "yes" than "no" at the verdict.
fn answered_log_odds(model: &Model, logits: &Tensor) -> Result<Option<f32>, AnswerError> {
    log_odds(model, logits, &[VERDICT_YES], &[VERDICT_NO])
}

/// How much likelier the model finds a reply beginning with one of `yes` than with one of `no`,
/// from the logits of the reply's first token: the log of the ratio of their summed
/// probabilities. `None` when the two sets share a first token, and the logits cannot tell them
/// apart.
fn log_odds(
    model: &Model,
    logits: &Tensor,
    yes: &[&str],
    no: &[&str],
) -> Result<Option<f32>, AnswerError> {
    let first_tokens = |words: &[&str]| -> Result<Vec<u32>, AnswerError> {
        words
            .iter()
            .map(|text| {
                model.encode(text)?.first().copied().ok_or_else(|| {
                    AnswerError::Model(ModelError::Tokenizer(format!(
                        "{text:?} encodes to no token"
                    )))
                })
            })
            .collect()
    };
    let (mut yes, mut no) = (first_tokens(yes)?, first_tokens(no)?);
    for ids in [&mut yes, &mut no] {
        ids.sort_unstable();
        ids.dedup();
    }
    if yes.iter().any(|t| no.contains(t)) {
        return Ok(None);
    }
    let logits = logits.to_vec1::<f32>().map_err(ModelError::from)?;
    let log_sum = |ids: &[u32]| {
        let weights: Vec<f32> = ids
            .iter()
            .map(|&id| {
                logits
                    .get(id as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY)
            })
            .collect();
        let max = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return max;
        }
        max + weights.iter().map(|w| (w - max).exp()).sum::<f32>().ln()
    };
    Ok(Some(log_sum(&yes) - log_sum(&no)))
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

/// A quotation in an answer.
#[derive(Debug, Clone, Serialize)]
pub struct Quote {
    /// The turn it is attributed to: the citation before it on its line, else the first one
    /// after it; `None` when its line cites nothing, and then any given turn may hold it.
    pub turn: Option<String>,
    pub text: String,
    /// Whether that turn says it word for word, apart from spacing, bold marks and the
    /// ellipses that mark a cut.
    pub verbatim: bool,
    /// When it does not: the given turn that does, if any (the quote is right, its citation
    /// wrong).
    pub found_in: Option<String>,
}

/// Text in straight, curly or CJK quotation marks, within one line.
pub fn quotation_regex() -> Regex {
    Regex::new(r#""[^"\n]*"|“[^”\n]*”|「[^」\n]*」|『[^』\n]*』"#).expect("static regex")
}

/// The answer's own words: what is left without its quotations and citations.
pub fn own_words(answer: &str) -> String {
    let unquoted = quotation_regex().replace_all(answer, "");
    citation_regex().replace_all(&unquoted, "").into_owned()
}

/// Finds the answer's quotations and checks each against the turn it is attributed to: a small
/// model sometimes "quotes" words it made up, and the reader should know which quotes to trust.
pub fn check_quotes(answer: &str, given: &[Retrieved]) -> Vec<Quote> {
    let quotation = quotation_regex();
    let mut quotes = Vec::new();
    for line in answer.lines() {
        let cited: Vec<(usize, String)> = citation_spans(line);
        for m in quotation.find_iter(line) {
            let quoted = m.as_str();
            let open = quoted.chars().next().map_or(0, char::len_utf8);
            let close = quoted.chars().last().map_or(0, char::len_utf8);
            let inner = quoted.get(open..quoted.len() - close).unwrap_or_default();
            if inner.trim().is_empty() {
                continue;
            }
            let turn = cited
                .iter()
                .rev()
                .find(|(at, _)| *at < m.start())
                .or_else(|| cited.first())
                .map(|(_, id)| id.clone());
            let holders: Vec<&str> = given
                .iter()
                .filter(|r| says_verbatim(&r.turn.text, inner))
                .map(|r| r.turn.id.as_str())
                .collect();
            let verbatim = match &turn {
                Some(id) => holders.contains(&id.as_str()),
                None => !holders.is_empty(),
            };
            let found_in = holders
                .first()
                .filter(|_| !verbatim)
                .map(|id| id.to_string());
            quotes.push(Quote {
                turn,
                text: inner.to_string(),
                verbatim,
                found_in,
            });
        }
    }
    quotes
}

/// Byte offset and first turn id of each citation in `line`.
fn citation_spans(line: &str) -> Vec<(usize, String)> {
    let group = Regex::new(r"[\[【]\s*(T\d+)").expect("static regex");
    group
        .captures_iter(line)
        .filter_map(|c| {
            c.get(1).map(|id| {
                (
                    c.get(0).map_or(0, |m| m.start()),
                    normalize_turn_id(id.as_str()),
                )
            })
        })
        .collect()
}

fn normalize_turn_id(id: &str) -> String {
    format!("T{}", id.trim_start_matches('T').trim_start_matches('0'))
}

/// Whether every piece of `quote` between ellipses occurs in `text`, ignoring spacing, bold
/// marks and the punctuation at the pieces' ends.
fn says_verbatim(text: &str, quote: &str) -> bool {
    let squeeze = |s: &str| -> String {
        s.replace("**", "")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect()
    };
    let text = squeeze(text);
    let quote = squeeze(quote);
    let pieces: Vec<&str> = quote
        .split(['…', '⋯'])
        .flat_map(|p| p.split("..."))
        .map(|p| p.trim_matches(|c: char| c.is_ascii_punctuation() || "。，、；：！？".contains(c)))
        .filter(|p| !p.is_empty())
        .collect();
    !pieces.is_empty() && pieces.iter().all(|p| text.contains(p))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::Timestamp;

    #[test]
    fn a_model_whose_judgement_tells_nothing_is_not_asked_for_it_by_default() {
        let info = |judges| ModelInfo {
            path: "model.gguf".into(),
            arch: "qwen2".into(),
            context_length: 32_768,
            file_bytes: 0,
            load_time: std::time::Duration::ZERO,
            min_answered_log_odds: 0.0,
            min_answered_log_odds_reused_turns: 0.0,
            min_owed_relevance: 0.0,
            judges,
            languages: None,
        };
        assert_eq!(
            AskOptions::for_model(&info(true)).rerank,
            rerank::DEFAULT_CANDIDATES
        );
        assert_eq!(AskOptions::for_model(&info(false)).rerank, 0);
        assert_eq!(
            AskOptions::for_model(&info(false)).k,
            AskOptions::default().k
        );
    }

    #[test]
    fn an_answer_that_only_restates_its_question_is_told_apart() {
        let transcript = crate::transcript::Transcript::parse(
            "Harry Stebbings: 上个月有什么让你震撼？\n\nSam Altman: 这是一个我无法透露的研究成果。",
            Path::new("t.txt"),
        )
        .expect("a two-turn transcript");
        let index = Index::build(&transcript);
        let asked = "Altman 说上个月让他感到震撼的那项研究成果具体是什么？";
        let quoted = "- [T2] \"这是一个我无法透露的研究成果。\"";
        let echo = format!("{quoted} Altman说上个月让他感到震撼的那项研究成果具体是什么。");
        assert!(only_restates(&echo, asked, &index));
        let explained = format!("{quoted} Altman 说他不能透露那项研究成果。");
        assert!(!only_restates(&explained, asked, &index));
        assert!(!only_restates(quoted, asked, &index), "a quotation alone");
        assert!(
            !only_restates(&format!("{echo}\n{quoted}"), asked, &index),
            "a line that answers by quoting"
        );
    }

    #[test]
    fn a_follow_up_is_rewritten_with_the_last_answers_own_words() {
        let earlier = ["What did Altman say about agents?".to_string()];
        let answer =
            "- [T16] \"代理可以打300个电话\" Agents can call 300 restaurants.\n- [T20] \"\"";
        let input = follow_up_input(&earlier, Some(answer), " Why does he think that? ");
        assert_eq!(
            input,
            "Earlier questions:\n- What did Altman say about agents?\n\nLast answer: Agents can \
             call 300 restaurants.\n\nFollow-up question: Why does he think that?"
        );
        assert!(!follow_up_input(&earlier, None, "And pricing?").contains("Last answer"));
    }

    #[test]
    fn a_question_is_also_searched_in_the_transcripts_language_else_in_english() {
        let english = "What did Altman say about agents?";
        let chinese = "Altman 对代理说了什么？";
        assert_eq!(second_wording(english, Language::Zh), Some(Language::Zh));
        assert_eq!(second_wording(chinese, Language::En), Some(Language::En));
        assert_eq!(second_wording(chinese, Language::Zh), Some(Language::En));
        assert_eq!(second_wording(english, Language::En), None);
    }

    #[test]
    fn citation_forms_are_all_recognised() {
        let ids = extract_citations("He said so [T3]. Also [T5, T7] and 【T9】[T3][T12、T02].");
        assert_eq!(ids, ["T3", "T5", "T7", "T9", "T12", "T2"]);
    }

    #[test]
    fn malformed_citations_are_ignored() {
        assert!(extract_citations("see T3, [3], [Turn 4] and [T]").is_empty());
    }

    pub(crate) fn given(id: &str, speaker: &str, text: &str) -> Retrieved {
        Retrieved {
            turn: Turn {
                id: id.into(),
                speaker: speaker.into(),
                text: text.into(),
                start: None,
            },
            score: 1.0,
            passages: Vec::new(),
            relevance: None,
            partner_of: None,
        }
    }

    #[test]
    fn only_a_judge_leaning_no_on_every_turn_refuses() {
        let judged = |relevances: &[Option<f32>]| -> Vec<Retrieved> {
            relevances
                .iter()
                .map(|&relevance| Retrieved {
                    relevance,
                    ..given("T1", "Guest", "text")
                })
                .collect()
        };
        assert!(judged_to_answer_nowhere(&judged(&[
            Some(-0.5),
            Some(-0.01)
        ])));
        // Above even odds, however slightly: the answer's verdict decides.
        assert!(!judged_to_answer_nowhere(&judged(&[
            Some(-1.0),
            Some(0.16)
        ])));
        // Not judged at all (`--no-rerank`): nothing to refuse on.
        assert!(!judged_to_answer_nowhere(&judged(&[None, None])));
    }

    #[test]
    fn each_exchange_is_one_piece_in_turn_order_with_the_best_match_last() {
        let partner = |id: &str, speaker: &str, text: &str, of: &str| Retrieved {
            partner_of: Some(of.into()),
            ..given(id, speaker, text)
        };
        let turns = [
            given("T8", "Guest", "Agents book tables."),
            partner("T7", "Host", "What about agents?", "T8"),
            given("T3", "Host", "Pricing?"),
        ];
        let pieces = format_exchanges(&turns, Some("Host"));
        assert_eq!(
            pieces,
            [
                "[T3] Host (host): Pricing?\n\n",
                "[T7] Host (host): What about agents?\n\n[T8] Guest: Agents book tables.\n\n",
            ]
        );
    }

    #[test]
    fn a_turn_shows_the_model_where_it_starts_in_the_recording() {
        let timed = |id: &str, speaker: &str, start: &str| Turn {
            start: Timestamp::parse(start),
            ..given(id, speaker, "Agents book tables.").turn
        };
        assert_eq!(
            format_turn(&timed("T7", "Host", "12:34"), Some("Host")),
            "[T7] Host (host, 12:34): Agents book tables.\n\n"
        );
        assert_eq!(
            format_turn(&timed("T8", "Guest", "1:02:03"), Some("Host")),
            "[T8] Guest (1:02:03): Agents book tables.\n\n"
        );
    }

    #[test]
    fn quotes_are_checked_against_the_turn_they_are_attributed_to() {
        let turns = [
            given(
                "T2",
                "Sam",
                "我们希望模型**真正优秀**。其他的事情\n以后再说。",
            ),
            given("T3", "Sam", "Pricing follows compute."),
        ];
        let answer = "- [T2] “我们希望模型真正优秀” He wants the models to be great.\n\
                      - [T3] \"Pricing follows compute\" and \"pricing is free\"\n\
                      - \"其他的事情以后再说\" [T3]\n\
                      - [T2] 「我们希望…以后再说。」";
        let quotes = check_quotes(answer, &turns);
        let summary: Vec<(Option<&str>, bool, Option<&str>)> = quotes
            .iter()
            .map(|q| (q.turn.as_deref(), q.verbatim, q.found_in.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (Some("T2"), true, None),
                (Some("T3"), true, None),
                (Some("T3"), false, None),
                (Some("T3"), false, Some("T2")),
                (Some("T2"), true, None),
            ]
        );
        assert_eq!(quotes[0].text, "我们希望模型真正优秀");
    }

    #[test]
    fn a_quote_on_an_uncited_line_may_come_from_any_given_turn() {
        let quotes = check_quotes(
            "He said \"Pricing follows compute\".",
            &[given("T3", "Sam", "Pricing follows compute.")],
        );
        assert!(quotes[0].turn.is_none() && quotes[0].verbatim);
    }

    #[test]
    fn language_follows_the_question() {
        assert_eq!(
            Language::of("What did Altman say about agents?"),
            Language::En
        );
        assert_eq!(Language::of("What is 智能体?"), Language::En);
        assert_eq!(Language::of("Altman 怎么看 OpenAI 的定价？"), Language::Zh);
    }

    #[test]
    fn a_reply_stops_where_the_prompt_would_ask_the_next_question() {
        assert_eq!(Prompts::default().reply_stops(), ["\nQuestion:"]);
    }

    #[test]
    fn prompt_folders_load_and_a_missing_placeholder_names_its_file() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        let prompts = Prompts::from_dir(&shipped).expect("the shipped prompts load");
        assert_eq!(prompts.rerank_user, Prompts::default().rerank_user);

        let dir = tempfile::tempdir().expect("temp dir");
        for entry in std::fs::read_dir(&shipped).expect("prompts folder") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
        std::fs::write(dir.path().join("rerank-user.txt"), "Question: {question}").expect("write");
        let err = Prompts::from_dir(dir.path())
            .expect_err("no {turn}")
            .to_string();
        assert!(
            err.contains("rerank-user.txt") && err.contains("{turn}"),
            "{err}"
        );
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate_chars("智能体很好", 3), "智能体…");
        assert_eq!(truncate_chars("abc", 3), "abc");
    }
}
