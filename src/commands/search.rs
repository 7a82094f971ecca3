use clap::Args;

use super::TranscriptArgs;

#[derive(Args, Debug)]
pub struct SearchArgs {
    pub query: String,
    /// How many best-matching turns (each brings its question/answer partner).
    #[arg(short, default_value_t = 5, value_parser = super::at_least_one)]
    pub k: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transcript: TranscriptArgs,
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.query.trim().is_empty(),
        "the query is empty; give words to search for"
    );
    let index = args.transcript.index()?;
    let hits = index.search(&[&args.query], args.k)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    if hits.is_empty() {
        println!("no turn matches {:?}", args.query);
    }
    for hit in hits {
        let how = match hit.partner_of {
            Some(id) => format!("pairs with {id}"),
            None => format!("score {:.4}", hit.score),
        };
        println!("{} · {how}\n{}", hit.turn.heading(), hit.turn.text);
        // In a turn of several passages, point at the one the question is closest to.
        if hit.passages.len() > 1 {
            println!("» closest passage: {}", hit.passages[0].text);
        }
        println!();
    }
    Ok(())
}
