//! One file per command; this module holds the options they share.

pub mod ask;
pub mod bench;
pub mod chat;
pub mod eval;
pub mod models;
pub mod search;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tqa::answer::translate::{self, View, ViewStore};
use tqa::answer::{AnswerError, AskOptions, Prompts};
use tqa::cache::default_cache_dir;
use tqa::model::registry::Registry;
use tqa::model::{self, DeviceChoice, Model, ModelInfo, SamplingConfig};
use tqa::retrieval::embed::Embedder;
use tqa::retrieval::{DenseIndex, Index, TurnView};
use tqa::transcript::{self, Language, Transcript, Turn};

pub use ask::AskArgs;
pub use bench::BenchArgs;
pub use chat::ChatArgs;
pub use eval::EvalCommand;
pub use models::ModelsCommand;
pub use search::SearchArgs;

#[derive(Args, Debug, Clone)]
pub struct TranscriptArgs {
    /// Transcript file (article with **Speaker：** labels, or `Speaker: text` lines or paragraphs).
    #[arg(long, default_value_os_t = transcript::default_path())]
    pub transcript: PathBuf,
    /// Keyword (BM25) retrieval only: no embedding model, no cross-language matching.
    #[arg(long)]
    pub lexical: bool,
}

impl TranscriptArgs {
    pub fn load(&self) -> anyhow::Result<Transcript> {
        Ok(Transcript::load(&self.transcript)?)
    }

    /// The retrieval index: BM25, plus the multilingual embedder unless `--lexical`.
    pub fn index(&self) -> anyhow::Result<Index> {
        self.index_of(&self.load()?)
    }

    /// [`TranscriptArgs::index`] of a transcript already loaded.
    pub fn index_of(&self, transcript: &Transcript) -> anyhow::Result<Index> {
        let index = Index::build(transcript);
        if self.lexical {
            return Ok(index);
        }
        let entry = Registry::builtin()?.embedder;
        let embedder = Embedder::load(&model::resolve::locate_embedder(&entry)?)?;
        let dense = DenseIndex::build(
            &transcript.turns,
            embedder,
            &entry.package.sha256,
            default_cache_dir().as_deref(),
            &|| eprintln!("embedding the transcript's passages (once; cached for later runs)…"),
        )?;
        Ok(index.with_dense(dense))
    }
}

/// `index` with the turns of a transcript not in English translated into English by `model`
/// (see `answer::translate`), beside the originals.
pub fn with_english_turns(
    index: Index,
    model: &mut Model,
    prompts: &Prompts,
) -> anyhow::Result<Index> {
    if index.language() == Language::En {
        return Ok(index);
    }
    if !model.info.reads(index.language()) {
        eprintln!(
            "the model does not read the transcript's language; its turns are searched as they \
             are, without an English translation"
        );
        return Ok(index);
    }
    let view = rewritten_view(
        &index,
        Language::En,
        "translating the transcript into English, once (cached for later runs; \
         --no-translate-turns skips it)…",
        "embedding the translated passages",
        |store, progress| {
            translate::rewrite(
                model,
                prompts,
                View::Translation,
                index.turns(),
                Language::En,
                store,
                progress,
            )
        },
    )?;
    Ok(index.with_translation(view))
}

/// `index` with the questions each turn answers, written by `model` (see
/// `answer::translate::View::Questions`), beside the originals.
pub fn with_turn_questions(
    index: Index,
    model: &mut Model,
    prompts: &Prompts,
) -> anyhow::Result<Index> {
    let language = index.language();
    if !model.info.reads(language) {
        eprintln!(
            "the model does not read the transcript's language; no questions are written for \
             its turns"
        );
        return Ok(index);
    }
    let view = rewritten_view(
        &index,
        language,
        "writing the questions each turn answers, once (cached for later runs)…",
        "embedding the turns' questions",
        |store, progress| {
            translate::rewrite(
                model,
                prompts,
                View::Questions,
                index.turns(),
                language,
                store,
                progress,
            )
        },
    )?;
    Ok(index.with_questions(view))
}

/// A view of `index`'s turns as `rewrite` writes them (in `language`, announced with
/// `announcement` while it runs, or read from the cache folder or the shipped views), embedded
/// with the index's embedder (announced as `embedding`).
fn rewritten_view<F>(
    index: &Index,
    language: Language,
    announcement: &str,
    embedding: &str,
    rewrite: F,
) -> anyhow::Result<TurnView>
where
    F: FnOnce(ViewStore, &mut dyn FnMut(usize, usize)) -> Result<Vec<Turn>, AnswerError>,
{
    let cache_dir = default_cache_dir();
    let shipped = translate::shipped_dir();
    let store = ViewStore {
        cache: cache_dir.as_deref(),
        shipped: Some(&shipped),
    };
    let turns = with_progress_bar(announcement, |progress| rewrite(store, progress))?;
    let dense = embedded(index, &turns, cache_dir.as_deref(), embedding)?;
    Ok(TurnView::new(&turns, language, dense))
}

/// Runs `rewrite`, showing a progress bar with `announcement` once the slow path starts.
fn with_progress_bar<F>(announcement: &str, rewrite: F) -> anyhow::Result<Vec<Turn>>
where
    F: FnOnce(&mut dyn FnMut(usize, usize)) -> Result<Vec<Turn>, AnswerError>,
{
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")?
            .progress_chars("=> "),
    );
    let turns = rewrite(&mut |done, total| {
        if done == 0 {
            eprintln!("{announcement}");
            bar.set_length(total as u64);
        }
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok(turns)
}

/// A dense index over rewritten `turns`, with the embedder of `index`, when it has one.
fn embedded(
    index: &Index,
    turns: &[Turn],
    cache_dir: Option<&Path>,
    what: &str,
) -> anyhow::Result<Option<DenseIndex>> {
    let Some(dense) = index.dense() else {
        return Ok(None);
    };
    Ok(Some(DenseIndex::build(
        turns,
        dense.embedder(),
        &Registry::builtin()?.embedder.package.sha256,
        cache_dir,
        &|| eprintln!("{what} (once; cached for later runs)…"),
    )?))
}

/// What the answering commands (ask, chat, eval answers) share: transcript, model and answer
/// options.
#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub transcript: TranscriptArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
}

impl PipelineArgs {
    /// The index and the answering model, loaded side by side: the embedder's vocabulary and the
    /// model's weights take about the same time to read, and neither waits for the other. Then
    /// the model's English translation of the turns joins the index (see [`with_english_turns`]),
    /// and the questions the turns answer (see [`with_turn_questions`]).
    pub async fn load(&self) -> anyhow::Result<(Index, Model)> {
        // Read first, so that a transcript tqa cannot read is reported at once, not after the
        // model has loaded.
        let transcript = self.transcript.load()?;
        let args = self.transcript.clone();
        let index = tokio::task::spawn_blocking(move || args.index_of(&transcript));
        let mut model = self.model.load().await?;
        let mut index = index.await.context("the index-building thread failed")??;
        let prompts = self.answer.prompts()?;
        if !self.answer.no_translate_turns {
            index = with_english_turns(index, &mut model, &prompts)?;
        }
        if !self.answer.no_turn_questions {
            index = with_turn_questions(index, &mut model, &prompts)?;
        }
        Ok((index, model))
    }
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Registry name (`tqa models list`) or path to a .gguf file. Default: the registry's default.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// A tokenizer.json to use instead of the tokenizer embedded in the GGUF.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Where the model runs: `auto` takes the GPU when this build has CUDA (scripts/build-cuda.sh)
    /// and a GPU is present, else the CPU; the load message says which.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Load the GGUF as it is, without converting slow tensor types (Q4_1, Q5_0, Q5_1) to Q8_0.
    #[arg(long)]
    pub no_optimize: bool,
}

/// A count that must be at least one: `-k 0` or `--max-tokens 0` would run and answer nothing.
pub fn at_least_one(arg: &str) -> Result<usize, String> {
    match arg.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{arg}` is not a whole number")),
    }
}

/// A number that is finite and not below zero (a temperature).
fn non_negative(arg: &str) -> Result<f64, String> {
    match arg.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("`{arg}` is not a number of 0 or more")),
    }
}

/// A nucleus-sampling threshold: a share of the probability, more than 0 and at most 1.
fn share(arg: &str) -> Result<f64, String> {
    match arg.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("`{arg}` is not a number above 0 and at most 1")),
    }
}

/// A repeat penalty divides the logits of tokens already seen: 0 would make them infinite.
fn penalty(arg: &str) -> Result<f32, String> {
    match arg.parse::<f32>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!(
            "`{arg}` is not a number above 0 (1.0 disables the penalty)"
        )),
    }
}

/// One thread per CPU the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ModelArgs {
    /// Resolves, fetches if needed, and loads the model, reporting on stderr.
    pub async fn load(&self) -> anyhow::Result<Model> {
        let device = self.device.open()?;
        let mut source = model::resolve(self.model.as_deref()).await?;
        source.tokenizer_json = self.tokenizer.clone();
        source.optimize = !self.no_optimize;
        let model = Model::load(&source, &device)
            .with_context(|| format!("loading model `{}`", source.name))?;
        eprintln!(
            "model {} ({}, {:.0} MiB) on {} loaded in {:.2} s",
            source.name,
            model.info.arch,
            model.info.file_bytes as f64 / (1024.0 * 1024.0),
            if device.is_cuda() { "CUDA" } else { "CPU" },
            model.info.load_time.as_secs_f64()
        );
        Ok(model)
    }
}

/// What every answering command shares: retrieval breadth, translation and sampling.
#[derive(Args, Debug, Clone)]
pub struct AnswerArgs {
    /// How many best-matching turns to give the model (each brings its question/answer partner).
    #[arg(short, default_value_t = AskOptions::default().k, value_parser = at_least_one)]
    pub k: usize,
    /// Retrieve with the question as asked, without its translation into the transcript's
    /// language (or into English, for a question in the transcript's language).
    #[arg(long)]
    pub no_translate: bool,
    /// Match questions against the transcript's own turns only, without their English
    /// translation (a transcript not in English is translated by the answering model once, in
    /// minutes, and the translation is cached).
    #[arg(long)]
    pub no_translate_turns: bool,
    /// Match questions against the turns only, not also against the questions each turn
    /// answers (written by the answering model once per transcript, in minutes, and cached).
    #[arg(long)]
    pub no_turn_questions: bool,
    /// Let the answering model judge the N best-ranked turns, each with its partner in the
    /// exchange, and re-order them before the best are picked: better turns, at one short prompt
    /// per exchange. Each exchange is computed once and cached, so later questions cost much less
    /// than the first. Default: 8, or 0 for a model that does not judge turns (`tqa models
    /// list`).
    #[arg(long, value_name = "N")]
    pub rerank: Option<usize>,
    /// Keep the index's order of the turns (the same as `--rerank 0`): a shorter wait for the
    /// first word, and no refusal on the model's judgement of the turns.
    #[arg(long, conflicts_with = "rerank")]
    pub no_rerank: bool,
    /// Let the model answer even when its verdict is that the retrieved turns do not hold the
    /// answer (the verdict is still reported in --json).
    #[arg(long)]
    pub no_judge: bool,
    /// Compute each transcript turn once and reuse it in later questions: a much shorter wait
    /// for the first word once the turns have been seen, but each turn is read without the others.
    #[arg(long)]
    pub reuse_turns: bool,
    /// Let the model write its quotations itself, instead of filling each one it opens after a
    /// citation with the passage of the cited turn that best matches the question.
    #[arg(long)]
    pub no_quote_fill: bool,
    /// Read the prompt files from this folder instead of the built-in `prompts/`.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

impl AnswerArgs {
    pub fn prompts(&self) -> Result<Prompts, AnswerError> {
        prompts_from(self.prompts.as_deref())
    }

    /// The options as given, the defaults `model`'s where not.
    pub fn options(&self, model: &ModelInfo) -> AskOptions {
        let defaults = AskOptions::for_model(model);
        AskOptions {
            k: self.k,
            translate: !self.no_translate,
            rerank: if self.no_rerank {
                0
            } else {
                self.rerank.unwrap_or(defaults.rerank)
            },
            judge: !self.no_judge,
            reuse_turns: self.reuse_turns,
            fill_quotes: !self.no_quote_fill,
            sampling: self.sampling.config(),
        }
    }
}

/// The prompt files of `dir`, or the built-in ones.
pub fn prompts_from(dir: Option<&std::path::Path>) -> Result<Prompts, AnswerError> {
    match dir {
        Some(dir) => Prompts::from_dir(dir),
        None => Ok(Prompts::default()),
    }
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// The answer's token limit; a sentence or quotation it falls inside may run a sixth past it.
    #[arg(long, default_value_t = AskOptions::default().sampling.max_new_tokens, value_parser = at_least_one)]
    pub max_tokens: usize,
    /// 0 = greedy (deterministic).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Nucleus sampling threshold (with --temperature > 0).
    #[arg(long, value_parser = share)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    /// 1.0 disables the penalty.
    #[arg(long, default_value_t = 1.1, value_parser = penalty, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Greedy decoding: most tokens to guess ahead (from the prompt and the reply) and check in
    /// the pass of each sampled token; 0 turns guessing off. A pass of several tokens rounds its
    /// last bits differently from a pass of one, so at a near tie the wording may differ.
    #[arg(long, default_value_t = tqa::model::generate::DEFAULT_GUESS_AHEAD)]
    pub guess_ahead: usize,
}

impl SamplingArgs {
    pub fn config(&self) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            repeat_penalty: self.repeat_penalty,
            max_new_tokens: self.max_tokens,
            finish_sentence_within: tqa::answer::room_to_finish_sentence(self.max_tokens),
            guess_ahead: self.guess_ahead,
            ..AskOptions::default().sampling
        }
    }
}
