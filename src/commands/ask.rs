use std::io::Write;

use clap::Args;
use tqa::answer::{self, Answer};
use tqa::model::StopReason;

use super::PipelineArgs;

#[derive(Args, Debug)]
pub struct AskArgs {
    pub question: String,
    /// Print one JSON object (answer, citations, retrieved turns, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub async fn run(args: AskArgs) -> anyhow::Result<()> {
    answer::check_question(&args.question)?;
    let prompts = args.pipeline.answer.prompts()?;
    let (index, mut model) = args.pipeline.load().await?;
    let options = args.pipeline.answer.options(&model.info);
    let mut stdout = std::io::stdout();
    let mut stream = |text: &str| {
        if !args.json {
            let _ = write!(stdout, "{text}");
            let _ = stdout.flush();
        }
    };
    let answer = answer::ask(
        &index,
        &mut model,
        &prompts,
        &args.question,
        &options,
        &mut stream,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_sources(&answer);
    }
    Ok(())
}

/// Length of a cited turn shown under the answer: enough to check the claim against.
const SOURCE_CHARS: usize = 240;

pub fn print_sources(answer: &Answer) {
    println!("\n");
    if !answer.answered && answer.retrieved.is_empty() {
        println!("(no turn of the transcript matches the question's words)");
    } else if !answer.answered {
        // A refusal is a claim about the transcript too: show where it looked.
        let searched: Vec<String> = answer.retrieved.iter().map(|r| r.turn.heading()).collect();
        println!(
            "(closest turns, judged not to answer it: {})",
            searched.join(", ")
        );
    } else if answer.citations.is_empty() {
        println!("(no turns cited)");
    } else {
        println!("Sources:");
    }
    for turn in &answer.citations {
        let text = answer::truncate_chars(&turn.text.replace('\n', " "), SOURCE_CHARS);
        println!("  {}: {}", turn.heading(), text);
    }
    if !answer.invalid_citations.is_empty() {
        println!(
            "  (ignored citations of turns the model was not given: {})",
            answer.invalid_citations.join(", ")
        );
    }
    if answer.stop == Some(StopReason::TokenLimit) {
        println!(
            "  (the answer reached the token limit and may leave out more: --max-tokens raises it)"
        );
    }
    for quote in answer.quotes.iter().filter(|q| !q.verbatim) {
        let text = answer::truncate_chars(&quote.text, SOURCE_CHARS);
        match (&quote.turn, &quote.found_in) {
            (Some(cited), Some(actual)) => {
                println!("  (quoted from {actual}, not {cited}: “{text}”)")
            }
            (Some(cited), None) => println!("  (not said word for word in {cited}: “{text}”)"),
            (None, _) => println!("  (not said word for word in any turn given: “{text}”)"),
        }
    }
    let t = &answer.timings;
    eprintln!(
        "\n{} prompt tokens, {} generated ({} quoted from the turns, {} guessed ahead) · first token after {:.2} s · prefill {:.1} tok/s · decode {:.1} tok/s",
        t.prompt_tokens,
        t.generated_tokens,
        t.quoted_tokens,
        t.guessed_tokens,
        t.time_to_first_token_ms / 1000.0,
        t.prefill_tokens_per_s,
        t.decode_tokens_per_s
    );
}
