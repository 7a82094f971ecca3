//! `tqa`: argument parsing only; each command lives in `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{AskArgs, BenchArgs, ChatArgs, EvalCommand, ModelsCommand, SearchArgs};

#[derive(Parser)]
#[command(
    name = "tqa",
    version,
    about = "Ask an interview transcript questions, offline, with a local model that cites the turns it used"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU threads for the model and the embedder.
    #[arg(long, global = true, default_value_t = commands::default_threads(), value_parser = commands::at_least_one)]
    threads: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a question from the transcript, citing the turns used.
    Ask(AskArgs),
    /// A conversation: one question per line, follow-ups understood in context.
    Chat(ChatArgs),
    /// Show the turns that best match a query.
    Search(SearchArgs),
    /// Measure retrieval or answers against a question set.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Measure model load, prefill, decode and time to first token.
    Bench(BenchArgs),
    /// List, locate or fetch the known models.
    #[command(subcommand)]
    Models(ModelsCommand),
}

fn main() -> ExitCode {
    exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    // Before any other thread starts: see `set_cpu_threads`.
    tqa::model::set_cpu_threads(cli.threads);
    let result = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run(cli.command)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: many library errors already name their cause ("cannot
/// read … : No such file or directory"), and repeating it buries what to do.
fn message(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ask(args) => commands::ask::run(args).await,
        Command::Chat(args) => commands::chat::run(args).await,
        Command::Search(args) => commands::search::run(args),
        Command::Eval(cmd) => commands::eval::run(cmd).await,
        Command::Bench(args) => commands::bench::run(args).await,
        Command::Models(cmd) => commands::models::run(cmd).await,
    }
}

/// `tqa search … | head` closes stdout early; like other Unix tools, tqa should then stop
/// quietly instead of reporting a failed write. Rust ignores SIGPIPE by default.
fn exit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread writes to a pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
