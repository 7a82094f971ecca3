//! Speed measurements of a loaded model: prefill and decode throughput at several lengths,
//! time to first token of a real question, and peak memory. Greedy decoding on fixed text, so
//! runs are comparable.

use std::time::Instant;

use serde::Serialize;

use crate::answer::{self, AnswerError, AskOptions, Prompts};
use crate::model::generate::per_second;
use crate::model::{Model, ModelError, ModelInfo, SamplingConfig};
use crate::retrieval::Index;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub prompt_lengths: Vec<usize>,
    pub decode_depths: Vec<usize>,
    pub decode_tokens: usize,
    pub repetitions: usize,
    /// Question for the time-to-first-token measurement through the whole answer pipeline;
    /// `None` skips that measurement.
    pub question: Option<String>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            prompt_lengths: vec![128, 512, 1024],
            decode_depths: vec![0, 1024],
            decode_tokens: 64,
            repetitions: 3,
            question: Some("What did Altman say about agents?".to_string()),
        }
    }
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => samples[n / 2],
            _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
        };
        Self {
            median,
            min: samples.first().copied().unwrap_or(0.0),
            max: samples.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefillResult {
    pub tokens: usize,
    pub tokens_per_s: Stat,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeResult {
    pub depth: usize,
    pub tokens: usize,
    pub tokens_per_s: Stat,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: ModelInfo,
    pub repetitions: usize,
    pub prefill: Vec<PrefillResult>,
    pub decode: Vec<DecodeResult>,
    /// `None` when `BenchConfig::question` is.
    pub ask: Option<AskTiming>,
    pub peak_rss_mib: Option<f64>,
}

/// A real question through translation, retrieval, the answer prompt and the verdict, with warm
/// caches.
#[derive(Debug, Clone, Serialize)]
pub struct AskTiming {
    pub prompt_tokens: usize,
    pub time_to_first_token_ms: Stat,
    /// The same with `AskOptions::reuse_turns`.
    pub time_to_first_token_reused_turns_ms: Stat,
}

/// Runs every measurement. `text` supplies the tokens for prefill and decode context (the
/// transcript itself, so the token mix is the real one); lengths beyond the model's context are
/// skipped. The time to first token is measured when there is both a question and an `index` to
/// retrieve from.
pub fn run(
    model: &mut Model,
    index: Option<&Index>,
    text: &str,
    config: &BenchConfig,
) -> Result<BenchReport, AnswerError> {
    let source = model.encode(text)?;
    let context = model.info.context_length;
    let fits = |n: usize| n <= source.len() && n + config.decode_tokens < context;

    let mut prefill = Vec::new();
    for &n in config.prompt_lengths.iter().filter(|&&n| fits(n)) {
        let samples = repeat(config.repetitions, || {
            let start = Instant::now();
            model.forward(&source[..n], 0)?;
            Ok::<_, ModelError>(per_second(n, start.elapsed()))
        })?;
        prefill.push(PrefillResult {
            tokens: n,
            tokens_per_s: Stat::of(samples),
        });
    }

    let mut decode = Vec::new();
    for &depth in config.decode_depths.iter().filter(|&&d| fits(d.max(1))) {
        let samples = repeat(config.repetitions, || {
            decode_tokens_per_s(model, &source[..depth.max(1)], config.decode_tokens)
        })?;
        decode.push(DecodeResult {
            depth,
            tokens: config.decode_tokens,
            tokens_per_s: Stat::of(samples),
        });
    }

    let ask = match (&config.question, index) {
        (Some(question), Some(index)) => {
            Some(ask_timing(model, index, question, config.repetitions)?)
        }
        _ => None,
    };

    Ok(BenchReport {
        model: model.info.clone(),
        repetitions: config.repetitions,
        prefill,
        decode,
        ask,
        peak_rss_mib: peak_rss_mib(),
    })
}

fn ask_timing(
    model: &mut Model,
    index: &Index,
    question: &str,
    repetitions: usize,
) -> Result<AskTiming, AnswerError> {
    let plain = AskOptions {
        sampling: SamplingConfig {
            max_new_tokens: 1,
            ..SamplingConfig::default()
        },
        ..AskOptions::for_model(&model.info)
    };
    let (time_to_first_token_ms, prompt_tokens) =
        time_to_first_token(model, index, question, repetitions, &plain)?;
    let reusing = AskOptions {
        reuse_turns: true,
        ..plain
    };
    let (time_to_first_token_reused_turns_ms, _) =
        time_to_first_token(model, index, question, repetitions, &reusing)?;
    Ok(AskTiming {
        prompt_tokens,
        time_to_first_token_ms,
        time_to_first_token_reused_turns_ms,
    })
}

/// Time to first token of the benchmark question with warm caches: one untimed run first, so
/// that what tqa keeps between runs (the system turn; the turns, with `reuse_turns`) is there.
fn time_to_first_token(
    model: &mut Model,
    index: &Index,
    question: &str,
    repetitions: usize,
    options: &AskOptions,
) -> Result<(Stat, usize), AnswerError> {
    let prompts = Prompts::default();
    let mut ask = || answer::ask(index, model, &prompts, question, options, &mut |_| {});
    let prompt_tokens = ask()?.timings.prompt_tokens;
    let samples = repeat(repetitions, || {
        Ok::<_, AnswerError>(ask()?.timings.time_to_first_token_ms)
    })?;
    Ok((Stat::of(samples), prompt_tokens))
}

fn repeat<E>(times: usize, mut measure: impl FnMut() -> Result<f64, E>) -> Result<Vec<f64>, E> {
    (0..times.max(1)).map(|_| measure()).collect()
}

/// Decode speed after a context of `context.len()` tokens: greedy, ignoring end tokens, so every
/// run decodes exactly `tokens` tokens.
fn decode_tokens_per_s(
    model: &mut Model,
    context: &[u32],
    tokens: usize,
) -> Result<f64, ModelError> {
    let logits = model.forward(context, 0)?;
    let mut next = logits.argmax(0)?.to_scalar::<u32>()?;
    let start = Instant::now();
    for pos in context.len()..context.len() + tokens {
        let logits = model.forward(&[next], pos)?;
        next = logits.argmax(0)?.to_scalar::<u32>()?;
    }
    Ok(per_second(tokens, start.elapsed()))
}

/// High-water mark of resident memory, from /proc (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
