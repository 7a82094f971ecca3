use clap::Args;
use tqa::bench::{self, BenchConfig, BenchReport, Stat};

use tqa::answer::Prompts;

use super::{at_least_one, with_english_turns, with_turn_questions, ModelArgs, TranscriptArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Repetitions of each measurement (median and spread are reported).
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub reps: usize,
    /// Prompt lengths for prefill, in tokens.
    #[arg(long, value_delimiter = ',', default_values_t = [128, 512, 1024], value_parser = at_least_one)]
    pub prefill: Vec<usize>,
    /// Context depths at which decode speed is measured.
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1024])]
    pub depths: Vec<usize>,
    /// Tokens decoded per decode measurement.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub decode_tokens: usize,
    /// Skip the time to first token of a real question (each run of it is repeated, with a warm-up, with and without --reuse-turns).
    #[arg(long)]
    pub no_ask: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transcript: TranscriptArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let transcript = args.transcript.load()?;
    // Without the question there is nothing to retrieve: no index, so that the peak memory
    // reported is the model's (jieba's dictionary alone is 17 MB).
    let index = if args.no_ask {
        None
    } else {
        Some(args.transcript.index()?)
    };
    let text: String = transcript
        .turns
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let mut model = args.model.load().await?;
    // The question is answered as `tqa ask` answers it, with the turns' English translation and
    // the questions they answer.
    let index = match index {
        Some(index) => {
            let prompts = Prompts::default();
            let index = with_english_turns(index, &mut model, &prompts)?;
            Some(with_turn_questions(index, &mut model, &prompts)?)
        }
        None => None,
    };
    let config = BenchConfig {
        prompt_lengths: args.prefill,
        decode_depths: args.depths,
        decode_tokens: args.decode_tokens,
        repetitions: args.reps,
        question: if args.no_ask {
            None
        } else {
            BenchConfig::default().question
        },
    };
    let report = bench::run(&mut model, index.as_ref(), &text, &config)?;
    report_unmeasured(&config, &report, model.info.context_length);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Lengths the engine skipped, said on stderr: a requested row that silently went missing from
/// the table reads as a measurement that failed.
fn report_unmeasured(config: &BenchConfig, report: &BenchReport, context: usize) {
    let measured_prefill: Vec<usize> = report.prefill.iter().map(|p| p.tokens).collect();
    let measured_depths: Vec<usize> = report.decode.iter().map(|d| d.depth).collect();
    let skipped = config
        .prompt_lengths
        .iter()
        .filter(|n| !measured_prefill.contains(n))
        .map(|n| format!("prefill of {n} tokens"))
        .chain(
            config
                .decode_depths
                .iter()
                .filter(|d| !measured_depths.contains(d))
                .map(|d| format!("decode at depth {d}")),
        );
    for what in skipped {
        eprintln!(
            "note: {what} not measured: with {} decoded tokens it does not fit the model's context \
             ({context} tokens) or the transcript's length",
            config.decode_tokens
        );
    }
}

fn print_table(r: &BenchReport) {
    let spread = |s: &Stat| format!("{:>8.1}  ({:.1}–{:.1})", s.median, s.min, s.max);
    println!(
        "model {} ({}), {} repetitions, medians (min–max)",
        r.model.path.display(),
        r.model.arch,
        r.repetitions
    );
    println!(
        "load                      {:>8.0} ms",
        r.model.load_time.as_secs_f64() * 1000.0
    );
    for p in &r.prefill {
        println!(
            "prefill {:>5} tokens       {} tok/s",
            p.tokens,
            spread(&p.tokens_per_s)
        );
    }
    for d in &r.decode {
        println!(
            "decode at depth {:>5}     {} tok/s",
            d.depth,
            spread(&d.tokens_per_s)
        );
    }
    if let Some(ask) = &r.ask {
        let tokens = ask.prompt_tokens;
        println!(
            "time to first token       {} ms ({tokens} prompt tokens, warm caches)",
            spread(&ask.time_to_first_token_ms)
        );
        println!(
            "  with --reuse-turns      {} ms",
            spread(&ask.time_to_first_token_reused_turns_ms)
        );
    }
    if let Some(rss) = r.peak_rss_mib {
        println!("peak memory               {rss:>8.0} MiB");
    }
}
