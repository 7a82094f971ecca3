use std::path::PathBuf;

use clap::{Args, Subcommand};
use tqa::eval::{self, RetrievalMetrics};

use super::TranscriptArgs;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// hit@1/3/5 and MRR of retrieval over a question set.
    Retrieval(EvalRetrievalArgs),
}

#[derive(Args, Debug)]
pub struct EvalRetrievalArgs {
    /// Question set in the dev-set format (data/eval/README.md).
    #[arg(long, default_value_os_t = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/eval/dev.jsonl"))]
    pub set: PathBuf,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transcript: TranscriptArgs,
}

pub async fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Retrieval(args) => retrieval(args),
    }
}

fn retrieval(args: EvalRetrievalArgs) -> anyhow::Result<()> {
    let items = eval::load_set(&args.set)?;
    let index = args.transcript.index()?;
    let report = eval::evaluate_retrieval(&index, &items)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{:<22} {:>5} {:>6} {:>6} {:>6} {:>6}", "", "items", "hit@1", "hit@3", "hit@5", "MRR");
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
        let rank = miss.gold_rank.map_or("unranked".to_string(), |r| format!("rank {r}"));
        println!("  {} ({rank}; top: {}) {}", miss.id, miss.top.join(" "), miss.question);
    }
    Ok(())
}

fn print_row(label: &str, m: &RetrievalMetrics) {
    println!(
        "{label:<22} {:>5} {:>6.3} {:>6.3} {:>6.3} {:>6.3}",
        m.items, m.hit_at_1, m.hit_at_3, m.hit_at_5, m.mrr
    );
}
