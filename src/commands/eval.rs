use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tqa::answer::rerank::DEFAULT_CANDIDATES;
use tqa::answer::{self, AskOptions};
use tqa::eval::{self, AnswerMetrics, RetrievalMetrics};

use super::{
    prompts_from, with_english_turns, with_turn_questions, ModelArgs, PipelineArgs, TranscriptArgs,
};

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// hit@1/3/5 and MRR of retrieval over a question set.
    Retrieval(EvalRetrievalArgs),
    /// Answer every question of a set end to end and score the answers.
    Answers(EvalAnswersArgs),
}

fn default_set() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/eval/dev.jsonl")
}

#[derive(Args, Debug)]
pub struct EvalRetrievalArgs {
    /// Question set in the dev-set format (data/eval/README.md).
    #[arg(long, default_value_os_t = default_set())]
    pub set: PathBuf,
    #[arg(long)]
    pub json: bool,
    /// Also search with the answering model's translation of each question (into the
    /// transcript's language, or into English for a question already in it), as `tqa ask` does.
    #[arg(long)]
    pub translate: bool,
    /// Also let the answering model judge the N best-ranked turns (default 8) and re-order them,
    /// as `tqa ask` does.
    #[arg(long, value_name = "N")]
    pub rerank: Option<Option<usize>>,
    /// Also match the questions against the transcript's turns translated into English by the
    /// answering model, as `tqa ask` does.
    #[arg(long)]
    pub translate_turns: bool,
    /// Also match the questions against the questions each turn answers, written by the
    /// answering model, as `tqa ask` does.
    #[arg(long)]
    pub turn_questions: bool,
    /// Read the prompt files from this folder instead of the built-in `prompts/`.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[command(flatten)]
    pub transcript: TranscriptArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct EvalAnswersArgs {
    /// Question set in the dev-set format (data/eval/README.md).
    #[arg(long, default_value_os_t = default_set())]
    pub set: PathBuf,
    #[arg(long)]
    pub json: bool,
    /// Only these items, by id (`--ids d01,d07`): a quick check of a prompt change.
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub async fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Retrieval(args) => retrieval(args).await,
        EvalCommand::Answers(args) => answers(args).await,
    }
}

async fn answers(args: EvalAnswersArgs) -> anyhow::Result<()> {
    let mut items = eval::load_set(&args.set)?;
    // Refusal markers come from the whole set, so that a subset is scored as the set would be.
    let markers = eval::refusal_markers(&items);
    if !args.ids.is_empty() {
        let unknown: Vec<&String> = args
            .ids
            .iter()
            .filter(|id| !items.iter().any(|i| &i.id == *id))
            .collect();
        anyhow::ensure!(
            unknown.is_empty(),
            "no items {unknown:?} in {}",
            args.set.display()
        );
        items.retain(|i| args.ids.contains(&i.id));
    }
    let prompts = args.pipeline.answer.prompts()?;
    let (index, mut model) = args.pipeline.load().await?;
    let options = args.pipeline.answer.options(&model.info);
    let bar = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")?
            .progress_chars("=> "),
    );
    let mut records = Vec::with_capacity(items.len());
    for item in &items {
        bar.set_message(item.id.clone());
        let answer = answer::ask(
            &index,
            &mut model,
            &prompts,
            &item.question,
            &options,
            &mut |_| {},
        )?;
        records.push(eval::score_answer(item, &answer, &markers));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = eval::summarize_answers(records);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for r in &report.items {
        let mark = if r.correct { "ok  " } else { "MISS" };
        println!(
            "{mark} {} [{}] {}\n     → {}",
            r.id,
            r.lang,
            r.question,
            r.answer.replace('\n', " ")
        );
    }
    println!(
        "\n{:<10} {:>6} {:>8} {:>8} {:>8} {:>9} {:>6} {:>6} {:>6} {:>9}",
        "",
        "items",
        "answer",
        "refusal",
        "false-r",
        "citations",
        "gold",
        "quotes",
        "lang",
        "TTFT ms"
    );
    print_answer_row("overall", &report.overall);
    for (lang, m) in &report.by_language {
        print_answer_row(lang, m);
    }
    Ok(())
}

fn print_answer_row(label: &str, m: &AnswerMetrics) {
    println!(
        "{label:<10} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>6.3} {:>6.3} {:>6.3} {:>9.0}",
        m.answerable + m.unanswerable,
        m.answer_accuracy,
        m.refusal_accuracy,
        m.false_refusal_rate,
        m.citation_validity,
        m.gold_citation,
        m.quote_validity,
        m.in_question_language,
        m.median_time_to_first_token_ms
    );
}

async fn retrieval(args: EvalRetrievalArgs) -> anyhow::Result<()> {
    let items = eval::load_set(&args.set)?;
    let index = args.transcript.index()?;
    let options = AskOptions {
        translate: args.translate,
        rerank: args
            .rerank
            .map_or(0, |candidates| candidates.unwrap_or(DEFAULT_CANDIDATES)),
        ..AskOptions::default()
    };
    let report =
        if options.translate || options.rerank > 0 || args.translate_turns || args.turn_questions {
            let mut model = args.model.load().await?;
            let prompts = prompts_from(args.prompts.as_deref())?;
            let index = if args.translate_turns {
                with_english_turns(index, &mut model, &prompts)?
            } else {
                index
            };
            let index = if args.turn_questions {
                with_turn_questions(index, &mut model, &prompts)?
            } else {
                index
            };
            eval::evaluate_retrieval(&items, &mut |item| {
                let (_, ranking) =
                    answer::rank_turns(&index, &mut model, &prompts, &item.question, &options)?;
                Ok(ranking.hits)
            })?
        } else {
            eval::evaluate_retrieval(&items, &mut |item| Ok(index.rank(&[&item.question])?))?
        };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<22} {:>5} {:>6} {:>6} {:>6} {:>6} {:>9}",
        "", "items", "hit@1", "hit@3", "hit@5", "MRR", "highlight"
    );
    print_row("overall", &report.overall);
    for (lang, m) in &report.by_language {
        print_row(&format!("language {lang}"), m);
    }
    for (speaker, m) in &report.by_speaker {
        print_row(&format!("speaker {speaker}"), m);
    }
    if !report.missed.is_empty() {
        println!("\nnot in the top 5:");
    }
    for miss in &report.missed {
        let rank = miss
            .gold_rank
            .map_or("unranked".to_string(), |r| format!("rank {r}"));
        println!(
            "  {} ({rank}; top: {}) {}",
            miss.id,
            miss.top.join(" "),
            miss.question
        );
    }
    Ok(())
}

fn print_row(label: &str, m: &RetrievalMetrics) {
    println!(
        "{label:<22} {:>5} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>9.3}",
        m.items, m.hit_at_1, m.hit_at_3, m.hit_at_5, m.mrr, m.highlight
    );
}
