use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use tqa::answer;

use super::ask::print_sources;
use super::PipelineArgs;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// A conversation on stdin: one question per line, follow-ups understood in context; the model
/// and index are loaded once.
pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let prompts = args.pipeline.answer.prompts()?;
    let (index, mut model) = args.pipeline.load().await?;
    let options = args.pipeline.answer.options(&model.info);
    let interactive = std::io::stdin().is_terminal();
    let mut earlier: Vec<String> = Vec::new();
    let mut last_answer: Option<String> = None;
    let mut stdout = std::io::stdout();
    if interactive {
        eprintln!("Ask about the transcript; an empty line or Ctrl-D ends the conversation.");
        eprint!("> ");
    }
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            break;
        }
        // One line that is not a question does not end the conversation.
        if let Err(not_a_question) = answer::check_question(&line) {
            eprintln!("error: {not_a_question}");
            if interactive {
                eprint!("> ");
            }
            continue;
        }
        let question = answer::standalone_question(
            &mut model,
            &prompts,
            &earlier,
            last_answer.as_deref(),
            &line,
        )?;
        if question != line.trim() {
            eprintln!("(understood as: {question})");
        }
        let mut stream = |text: &str| {
            let _ = write!(stdout, "{text}");
            let _ = stdout.flush();
        };
        let answer = answer::ask(
            &index,
            &mut model,
            &prompts,
            &question,
            &options,
            &mut stream,
        )?;
        print_sources(&answer);
        println!();
        earlier.push(question);
        last_answer = answer.answered.then_some(answer.answer);
        if interactive {
            eprint!("> ");
        }
    }
    Ok(())
}
