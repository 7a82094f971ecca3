//! The generation loop: prefill the prompt once, then one token at a time through the KV cache.

use std::time::{Duration, Instant};

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;

use super::decoder::{Region, PREFILL_CHUNK};
use super::{Model, ModelError};

#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// 0 means greedy decoding.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// 1.0 disables the penalty.
    pub repeat_penalty: f32,
    /// How many of the latest tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    pub max_new_tokens: usize,
    /// Texts that end the reply where they begin; they are neither shown nor kept. A small model
    /// that has seen a worked example in its prompt tends to go on with the example's next line.
    pub stop_sequences: Vec<String>,
    /// Longest run of tokens the model may copy from what it wrote earlier in the same reply. A
    /// longer copy is cut where it began, before it is shown, and its line ends there: a small
    /// model that has explained one quotation tends to explain the next one with the same
    /// sentences, word for word. A reply that copies a whole line ends (or goes on where a
    /// steer says so). `None` lets it repeat.
    pub max_self_repeat: Option<usize>,
    /// Most tokens guessed ahead per step in greedy decoding (0: none). The guess is what followed
    /// the reply's latest words where they occur earlier in the prompt, the reply or a text the
    /// steer says it restates (see [`guess_after`], `Steer::restates`); the model checks the
    /// guessed tokens in the pass that runs the sampled one, and every guessed token that is what
    /// it would have chosen saves a pass. A grounded answer restates its turns, so many guesses
    /// hold, and a pass of a few tokens costs little more than a pass of one: a step reads every
    /// weight from memory once either way.
    pub guess_ahead: usize,
    /// Tokens a reply that reaches `max_new_tokens` inside a sentence may go on for, to finish
    /// it (0: it ends at the limit). Past the limit the reply ends at the first end of a
    /// sentence, a quotation or a line, and starts nothing new: an answer cut at its limit
    /// stopped inside a quotation or mid-sentence (docs/measurements.md, session 49).
    pub finish_sentence_within: usize,
}

/// [`SamplingConfig::guess_ahead`] unless told otherwise.
pub const DEFAULT_GUESS_AHEAD: usize = 16;

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            seed: 299_792_458,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            max_new_tokens: 512,
            stop_sequences: Vec::new(),
            max_self_repeat: None,
            guess_ahead: DEFAULT_GUESS_AHEAD,
            finish_sentence_within: 0,
        }
    }
}

impl SamplingConfig {
    /// The most tokens a reply may have: its limit and the room to finish the sentence it is in.
    fn most_tokens(&self) -> usize {
        self.max_new_tokens + self.finish_sentence_within
    }

    fn logits_processor(&self) -> LogitsProcessor {
        let sampling = match (self.temperature, self.top_p) {
            (t, _) if t <= 0.0 => Sampling::ArgMax,
            (temperature, None) => Sampling::All { temperature },
            (temperature, Some(p)) => Sampling::TopP { p, temperature },
        };
        LogitsProcessor::from_sampling(self.seed, sampling)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfTurn,
    TokenLimit,
    StopSequence,
    /// The model went on copying what it had written (see `SamplingConfig::max_self_repeat`).
    Repetition,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prompt through the model and the first token sampled.
    #[serde(serialize_with = "crate::serialize_ms")]
    pub prefill_time: Duration,
    /// Every token after the first.
    #[serde(serialize_with = "crate::serialize_ms")]
    pub decode_time: Duration,
    /// Tokens of `tokens` that a steer supplied rather than the sampler.
    pub steered_tokens: usize,
    /// Part of `decode_time` spent running steered text through the model.
    #[serde(serialize_with = "crate::serialize_ms")]
    pub steer_time: Duration,
    /// Sampled tokens that went through the model and were then cut as a copy (see
    /// `SamplingConfig::max_self_repeat`); they are not in `tokens`.
    pub cut_tokens: usize,
    /// Sampled tokens that a guess had already run through the model (see
    /// `SamplingConfig::guess_ahead`): each saved a pass.
    pub guessed_tokens: usize,
}

impl Generation {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        per_second(self.prompt_tokens, self.prefill_time)
    }

    /// Sampled tokens only, cut ones included: steered text goes through the model as a prefill
    /// does.
    pub fn decode_tokens_per_s(&self) -> f64 {
        per_second(
            (self.tokens.len() + self.cut_tokens).saturating_sub(self.steered_tokens + 1),
            self.decode_time.saturating_sub(self.steer_time),
        )
    }
}

pub(crate) fn per_second(count: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        count as f64 / time.as_secs_f64()
    }
}

/// Generates a reply to `prompt` (already tokenized, chat template applied), handing each piece
/// of text to `on_text` as soon as it forms whole characters.
pub fn generate(
    model: &mut Model,
    prompt: &[u32],
    config: &SamplingConfig,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, ModelError> {
    check_context(model, prompt.len(), config)?;
    let start = Instant::now();
    let (logits, _) = model.prefill(prompt)?;
    continue_generation(
        model,
        Prefilled {
            logits,
            context: prompt.len(),
            start,
        },
        config,
        on_text,
        &mut |_: &str| None,
    )
}

/// A caller that knows better than the model what may come next in a reply (the exact words of a
/// quotation, the turns a citation may name). Both methods see the reply so far.
pub trait Steer {
    /// Text to put into the reply next as if the model had written it.
    fn insert(&mut self, reply: &str) -> Option<String>;

    /// What the next token may be; `None` leaves the model free.
    fn next(&self, _reply: &str) -> Option<Next> {
        None
    }

    /// Text to go on with where the model ends the reply; `None` lets it end.
    fn instead_of_end(&mut self, _reply: &str) -> Option<String> {
        None
    }

    /// Texts besides the prompt that the reply is likely to restate (the turns it answers from,
    /// in the reply's language): guesses are looked up in them too (see
    /// `SamplingConfig::guess_ahead`).
    fn restates(&self) -> &[String] {
        &[]
    }

    /// Whether `instead_of_end` would go on from `reply`. Where it would, the model may not
    /// complete a stop sequence either: that ends a reply as surely as the end of a turn, but
    /// could not be gone on from.
    fn goes_on_after(&self, _reply: &str) -> bool {
        false
    }

    /// Whether the next token may not write Chinese characters: an English reply about Chinese
    /// text is to say it in English, and a small model lets Chinese words slip in.
    fn bars_chinese(&self, _reply: &str) -> bool {
        false
    }
}

/// A steer's limit on the next token.
pub enum Next {
    /// One of the first tokens of these texts' encodings.
    OneOf(Vec<String>),
    /// The same, or the reply ends here.
    OneOfOrEnd(Vec<String>),
    /// Any token that neither ends the reply nor starts a new line.
    OnSameLine,
    /// The reply ends here, as if the model had ended it.
    End,
}

/// Line breaks a token may begin with; their first tokens are what `Next::OnSameLine` rules out.
const LINE_BREAKS: [&str; 5] = ["\n", "\n\n", "\n\n\n", " \n", " \n\n"];

impl<F: FnMut(&str) -> Option<String>> Steer for F {
    fn insert(&mut self, reply: &str) -> Option<String> {
        self(reply)
    }
}

/// A prompt that has been run through the model: the logits for the next token, how many tokens
/// the KV cache holds, and when the prefill began (for time to first token).
pub struct Prefilled {
    pub logits: Tensor,
    pub context: usize,
    pub start: Instant,
}

/// Fails before any work when the prompt and the longest reply would not fit the context.
pub fn check_context(
    model: &Model,
    prompt: usize,
    config: &SamplingConfig,
) -> Result<(), ModelError> {
    let context = model.info.context_length;
    if prompt + config.most_tokens() > context {
        return Err(ModelError::ContextOverflow {
            prompt,
            max_new: config.most_tokens(),
            context,
        });
    }
    Ok(())
}

/// The token loop, from a prompt already in the KV cache: sample, stop or feed the token back.
/// Text that `steer` supplies goes through the model in one chunk, like a prompt.
pub fn continue_generation(
    model: &mut Model,
    prefilled: Prefilled,
    config: &SamplingConfig,
    on_text: &mut dyn FnMut(&str),
    steer: &mut dyn Steer,
) -> Result<Generation, ModelError> {
    let Prefilled {
        logits,
        context,
        start,
    } = prefilled;
    let mut sampler = config.logits_processor();
    let mut stream = TextStream::default();
    let mut text = StopScan::new(&config.stop_sequences);
    let mut generated: Vec<u32> = Vec::with_capacity(config.most_tokens());
    // What the repeat penalty looks at: steered text is the caller's, and an answer is meant to
    // restate a quotation it was given, not be pushed away from its words.
    let mut sampled: Vec<u32> = Vec::with_capacity(config.most_tokens());

    let mut next = sample(
        &mut sampler,
        &logits,
        &[],
        config,
        &token_limit(model, steer, "", &config.stop_sequences)?,
    )?;
    let prefill_time = start.elapsed();

    let mut steered_tokens = 0;
    let mut steer_time = Duration::ZERO;
    let mut copies = config.max_self_repeat.map(SelfRepeats::new);
    // Tokens that went through the model and were then cut: they count against the token limit,
    // which bounds the work of a reply as well as its length.
    let mut cut_tokens = 0;
    // The tokens that go through the model next: the sampled one, and any steered text after it.
    let mut step: Vec<u32> = Vec::new();
    let guess_ahead = if config.temperature <= 0.0 {
        config.guess_ahead
    } else {
        0
    };
    // What the reply restates, the prompt, then the reply so far: what a guess is looked up in,
    // the latest first. Refilled for each lookup, so that cuts and steered text need no
    // bookkeeping of their own.
    let mut lookup = Vec::with_capacity(context + config.most_tokens());
    if guess_ahead > 0 {
        for text in steer.restates() {
            // On lines of their own, so that no token joins one text with the next.
            lookup.extend(model.encode(&format!("\n{text}\n"))?);
        }
    }
    lookup.extend_from_slice(model.context().get(..context).unwrap_or_default());
    let reply_at = lookup.len();
    let mut guesses = Guesses::new(guess_ahead);
    let mut guessed_tokens = 0;
    let decode_start = Instant::now();
    let stop = loop {
        step.clear();
        let mut ended = model.is_stop_token(next);
        let mut copied = false;
        if ended {
            if let Some(rest) = stream.finish(|t| model.decode(t))? {
                if text.push(&rest, on_text) {
                    break StopReason::StopSequence;
                }
            }
        } else {
            let cut_point = CutPoint {
                token: generated.len() - stream.pending(),
                text: text.so_far().len(),
            };
            step.push(next);
            generated.push(next);
            sampled.push(next);
            if let Some(piece) = stream.push(next, |t| model.decode(t))? {
                if let Some(copies) = copies.as_mut() {
                    copies.push(&piece, cut_point);
                    if let Some(start) = copies.over_limit(generated.len()) {
                        cut_tokens +=
                            cut_back(start, &mut generated, &mut sampled, copies, &mut text);
                        step.clear();
                        copied = true;
                    }
                    text.hold_from(copies.start().map(|s| s.text));
                }
                if copied {
                    // The copy ends the line it was on; a reply that copied a whole line ends.
                    let so_far = text.so_far();
                    if so_far.is_empty() || so_far.ends_with('\n') {
                        ended = true;
                    } else {
                        let line_end = line_end_after(so_far);
                        let (gen, step) = (&mut generated, &mut step);
                        if put_steered(model, line_end, config, gen, step, &mut text, on_text)? {
                            break StopReason::StopSequence;
                        }
                    }
                } else {
                    if text.push(&piece, on_text) {
                        break StopReason::StopSequence;
                    }
                    // Consulted only when the text has grown, so that one opening is steered once.
                    if let Some(steered) = steer.insert(text.so_far()) {
                        end_copying(&mut copies, &mut text);
                        let (gen, step) = (&mut generated, &mut step);
                        if put_steered(model, steered, config, gen, step, &mut text, on_text)? {
                            break StopReason::StopSequence;
                        }
                    }
                }
            }
        }
        let past_limit = generated.len() + cut_tokens >= config.max_new_tokens;
        if ended {
            let Some(more) = (!past_limit)
                .then(|| steer.instead_of_end(text.so_far()))
                .flatten()
                .filter(|more| !more.is_empty())
            else {
                break if copied {
                    StopReason::Repetition
                } else {
                    StopReason::EndOfTurn
                };
            };
            end_copying(&mut copies, &mut text);
            let (gen, step) = (&mut generated, &mut step);
            if put_steered(model, more, config, gen, step, &mut text, on_text)? {
                break StopReason::StopSequence;
            }
        }
        let spent = generated.len() + cut_tokens;
        if step.is_empty()
            || spent >= config.most_tokens()
            || (spent >= config.max_new_tokens
                && (config.finish_sentence_within == 0 || ends_sentence(text.so_far())))
        {
            break StopReason::TokenLimit;
        }
        let step_start = Instant::now();
        // The sampled token alone, as the model chose it: the one step a guess may run ahead of.
        let sampled_alone = (step.len() == 1 && !ended && !copied).then(|| step[0]);
        let logits = match guesses.logits_after(sampled_alone) {
            Some(logits) => {
                guessed_tokens += 1;
                logits
            }
            None => {
                let guess = match sampled_alone {
                    Some(_) => {
                        lookup.truncate(reply_at);
                        lookup.extend_from_slice(&generated);
                        let room = config.most_tokens().saturating_sub(generated.len());
                        guess_after(&lookup, guesses.length().min(room))
                    }
                    None => Vec::new(),
                };
                // After a cut this goes back to where the copy began, replacing it in the cache;
                // so does a step after a wrong guess, over the guess.
                let pos = context + generated.len() - step.len();
                let tokens = [step.as_slice(), &guess].concat();
                let rows = model.forward_last(&tokens, pos, 1 + guess.len())?;
                guesses.start(guess, &rows)?;
                rows.get(0)?
            }
        };
        // Where the model ended, or after a cut, every token of the step is the steer's.
        let steered_now = step.len() - usize::from(!(ended || copied));
        if steered_now > 0 {
            steered_tokens += steered_now;
            steer_time += step_start.elapsed();
        }
        let mask = token_limit(model, steer, text.so_far(), &config.stop_sequences)?;
        next = sample(&mut sampler, &logits, &sampled, config, &mask)?;
    };
    if stop != StopReason::StopSequence {
        if let Some(rest) = stream.finish(|t| model.decode(t))? {
            text.push(&rest, on_text);
        }
    }
    // A quotation the limit cut (a filled one longer than the room left) reads as cut, and
    // what follows it is not taken for the speaker's words.
    if stop == StopReason::TokenLimit {
        let so_far = text.so_far();
        if let Some(close) = left_open(so_far.rsplit('\n').next().unwrap_or(so_far)) {
            text.push(&format!("…{close}"), on_text);
        }
    }
    Ok(Generation {
        text: text.finish(on_text),
        tokens: generated,
        stop,
        prompt_tokens: context,
        prefill_time,
        decode_time: decode_start.elapsed(),
        steered_tokens,
        steer_time,
        cut_tokens,
        guessed_tokens,
    })
}

/// Greedy replies to `prompts`, which begin with the same system turn, `width` of them at a time
/// side by side: each step runs the next token of every unfinished reply in one pass, so the
/// weights are read from memory once for all of them where a reply alone reads them once per
/// token (on this machine kind a pass of 8 rows takes about 1.5 times a pass of one). Each reply
/// is the one [`generate`] gives, up to the last bits of products over several rows: where the
/// model's two best tokens nearly tie it may take the other. Where that does not hold (sampling,
/// stop sequences, cut copies, prompts without a shared system turn) the replies are generated
/// one after another. Reply `i` has at most `max_new_tokens[i]` tokens; `on_reply(i, reply)` is
/// called as each is done, in the order they finish.
pub fn generate_side_by_side(
    model: &mut Model,
    prompts: &[Vec<u32>],
    max_new_tokens: &[usize],
    config: &SamplingConfig,
    width: usize,
    on_reply: &mut dyn FnMut(usize, &str),
) -> Result<Vec<String>, ModelError> {
    if max_new_tokens.len() != prompts.len() {
        return Err(candle_core::Error::Msg(format!(
            "{} token limits for {} prompts",
            max_new_tokens.len(),
            prompts.len()
        ))
        .into());
    }
    let plain = config.temperature <= 0.0
        && config.stop_sequences.is_empty()
        && config.max_self_repeat.is_none();
    let shared = prompts.first().and_then(|first| {
        let end = model.system_turn_end(first)?;
        prompts
            .iter()
            .all(|p| p.len() > end && p[..end] == first[..end])
            .then_some(end)
    });
    let (Some(shared), true, true) = (shared, plain, width > 1) else {
        return prompts
            .iter()
            .zip(max_new_tokens)
            .enumerate()
            .map(|(i, (prompt, &max))| {
                let config = SamplingConfig {
                    max_new_tokens: max,
                    ..config.clone()
                };
                let text = generate(model, prompt, &config, &mut |_| {})?.text;
                on_reply(i, &text);
                Ok(text)
            })
            .collect();
    };
    let (side_by_side, first) = SideBySide::new(model, prompts, max_new_tokens, config, shared)?;
    side_by_side.run(first, width, on_reply)
}

/// The state of [`generate_side_by_side`]: each lane is a region of the cache that one reply
/// after another is generated in.
struct SideBySide<'a> {
    model: &'a mut Model,
    prompts: &'a [Vec<u32>],
    max_new_tokens: &'a [usize],
    config: &'a SamplingConfig,
    sampler: LogitsProcessor,
    /// The shared system turn's length, and its keys and values, put at the start of each
    /// lane's region.
    shared: usize,
    system: Vec<(Tensor, Tensor)>,
    /// Cache positions per lane: the longest prompt with its longest reply.
    region: usize,
    replies: Vec<String>,
}

struct Lane {
    prompt: usize,
    from: usize,
    /// Positions of the region the cache holds.
    len: usize,
    generated: Vec<u32>,
    /// Sampled, not yet looked at.
    next: u32,
}

impl<'a> SideBySide<'a> {
    fn new(
        model: &'a mut Model,
        prompts: &'a [Vec<u32>],
        max_new_tokens: &'a [usize],
        config: &'a SamplingConfig,
        shared: usize,
    ) -> Result<(Self, Lane), ModelError> {
        let mut region = 0;
        for (prompt, &max) in prompts.iter().zip(max_new_tokens) {
            let config = SamplingConfig {
                max_new_tokens: max,
                ..config.clone()
            };
            check_context(model, prompt.len(), &config)?;
            region = region.max(prompt.len() + max);
        }
        // The first prompt goes through a plain prefill, which computes and keeps its system turn
        // (the same bits as a lane's own prompt), and it becomes the first lane, at the start of
        // the cache. `shared` was found in the first prompt, so there is one.
        let (logits, _) = model.prefill(&prompts[0])?;
        let system = model.exported(0, shared)?;
        let mut side_by_side = Self {
            model,
            prompts,
            max_new_tokens,
            config,
            sampler: config.logits_processor(),
            shared,
            system,
            region,
            replies: vec![String::new(); prompts.len()],
        };
        let first = Lane {
            prompt: 0,
            from: 0,
            len: prompts[0].len(),
            generated: Vec::new(),
            next: side_by_side.sample(&logits, &[])?,
        };
        Ok((side_by_side, first))
    }

    fn run(
        mut self,
        first: Lane,
        width: usize,
        on_reply: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<String>, ModelError> {
        let mut waiting = 1..self.prompts.len();
        let mut lanes: Vec<Lane> = Vec::with_capacity(width);
        lanes.push(first);
        for (slot, prompt) in (1..width).zip(waiting.by_ref()) {
            lanes.push(self.start(prompt, slot * self.region)?);
        }
        loop {
            let mut i = 0;
            while i < lanes.len() {
                if !self.settle(&mut lanes[i], on_reply)? {
                    i += 1;
                    continue;
                }
                match waiting.next() {
                    Some(prompt) => lanes[i] = self.start(prompt, lanes[i].from)?,
                    None => {
                        lanes.swap_remove(i);
                    }
                }
            }
            if lanes.is_empty() {
                break;
            }
            let steps: Vec<[u32; 1]> = lanes.iter().map(|lane| [lane.next]).collect();
            let regions: Vec<Region> = lanes
                .iter()
                .zip(&steps)
                .map(|(lane, step)| Region {
                    from: lane.from,
                    len: lane.len,
                    entries: &[],
                    tokens: step,
                })
                .collect();
            let logits = self.model.forward_regions(&regions)?;
            for (lane, logits) in lanes.iter_mut().zip(&logits) {
                lane.len += 1;
                lane.next = self.sample(logits, &lane.generated)?;
            }
        }
        self.model.release_cache();
        Ok(self.replies)
    }

    /// Runs prompt `prompt` into the region at `from` and samples its first token.
    fn start(&mut self, prompt: usize, from: usize) -> Result<Lane, ModelError> {
        let tokens = &self.prompts[prompt];
        // In the chunks a plain prefill cuts the part after the system turn into.
        let mut len = self.shared;
        let mut logits = Vec::new();
        for (i, chunk) in tokens[self.shared..].chunks(PREFILL_CHUNK).enumerate() {
            let (entries, before) = match i {
                0 => (self.system.as_slice(), 0),
                _ => (&[][..], len),
            };
            logits = self.model.forward_regions(&[Region {
                from,
                len: before,
                entries,
                tokens: chunk,
            }])?;
            len += chunk.len();
        }
        let logits = logits.pop().ok_or_else(|| {
            candle_core::Error::Msg("a prompt with nothing after its system turn".into())
        })?;
        let next = self.sample(&logits, &[])?;
        Ok(Lane {
            prompt,
            from,
            len,
            generated: Vec::new(),
            next,
        })
    }

    /// Takes in a lane's sampled token, as `continue_generation` does; returns whether its reply
    /// is done (and stored).
    fn settle(
        &mut self,
        lane: &mut Lane,
        on_reply: &mut dyn FnMut(usize, &str),
    ) -> Result<bool, ModelError> {
        if !self.model.is_stop_token(lane.next) {
            lane.generated.push(lane.next);
            if lane.generated.len() < self.max_new_tokens[lane.prompt] {
                return Ok(false);
            }
        }
        self.replies[lane.prompt] = self.model.decode(&lane.generated)?;
        on_reply(lane.prompt, &self.replies[lane.prompt]);
        Ok(true)
    }

    fn sample(&mut self, logits: &Tensor, sampled: &[u32]) -> Result<u32, ModelError> {
        sample(&mut self.sampler, logits, sampled, self.config, &Mask::None)
    }
}

/// Tokens guessed after the last sampled one and run through the model with it, and the logits
/// after each: for as long as the reply goes on to sample them, its next logits are already
/// known and the cache already holds its tokens.
struct Guesses {
    tokens: Vec<u32>,
    logits: Vec<Tensor>,
    used: usize,
    /// How many tokens to guess next: as many as the last guess proved worth. A pass costs more
    /// the more tokens it runs, and how far guesses hold depends on the reply: a Chinese answer
    /// restating its Chinese turns goes on as they go for many tokens, an English answer about
    /// Chinese turns rarely for more than one.
    length: usize,
    most: usize,
}

/// Tokens in the first guess of a reply.
const FIRST_GUESS: usize = 4;

impl Guesses {
    /// Guesses of at most `most` tokens.
    fn new(most: usize) -> Self {
        Self {
            tokens: Vec::new(),
            logits: Vec::new(),
            used: 0,
            length: FIRST_GUESS.min(most),
            most,
        }
    }

    /// How many tokens the next guess may hold.
    fn length(&self) -> usize {
        self.length
    }

    /// `tokens` went through the model after the sampled token; `rows` holds the logits after
    /// that token and then after each of them.
    fn start(&mut self, tokens: Vec<u32>, rows: &Tensor) -> Result<(), ModelError> {
        self.logits = (1..=tokens.len())
            .map(|row| rows.get(row))
            .collect::<candle_core::Result<_>>()?;
        self.tokens = tokens;
        self.used = 0;
        Ok(())
    }

    /// The logits after `sampled`, when it is the next guessed token; otherwise the guess is
    /// over (and the next pass overwrites its tokens in the cache), and the next one is twice as
    /// long if this one held to its end, else one token longer than what held.
    fn logits_after(&mut self, sampled: Option<u32>) -> Option<Tensor> {
        match sampled {
            Some(token) if self.tokens.get(self.used) == Some(&token) => {
                self.used += 1;
                Some(self.logits[self.used - 1].clone())
            }
            _ => {
                if !self.tokens.is_empty() {
                    self.length = if self.used == self.tokens.len() {
                        (2 * self.length).min(self.most)
                    } else {
                        self.used + 1
                    };
                }
                self.tokens.clear();
                self.logits.clear();
                None
            }
        }
    }
}

/// Most and fewest of the latest tokens that a guess matches earlier in the text: a longer match
/// is likelier to go on as it went on before, and a single token (a comma, "the") predicts little.
const GUESS_MATCH: std::ops::RangeInclusive<usize> = 2..=3;

/// At most `max` tokens that followed an earlier occurrence of `text`'s last tokens (the longest
/// of [`GUESS_MATCH`] that occurs), or none: the latest occurrence with `max` tokens after it,
/// else the earliest, which has the most. Where the reply repeats itself ("aaaa"), the latest
/// occurrence lies too close to the end to guess more than a token or two from.
fn guess_after(text: &[u32], max: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    for n in GUESS_MATCH.rev() {
        let Some(latest) = text.len().checked_sub(n).map(|at| &text[at..]) else {
            continue;
        };
        // Windows that start before the latest tokens do: any occurrence but theirs.
        let earlier = &text[..text.len() - 1];
        let mut occurrences = earlier
            .windows(n)
            .enumerate()
            .rev()
            .filter(|(_, w)| *w == latest)
            .map(|(start, _)| start + n);
        let Some(mut from) = occurrences.next() else {
            continue;
        };
        while from + max > text.len() {
            match occurrences.next() {
                Some(earlier_one) => from = earlier_one,
                None => break,
            }
        }
        return text[from..(from + max).min(text.len())].to_vec();
    }
    Vec::new()
}

/// Cuts the reply back to `start`, where a copy began; returns how many of the tokens cut went
/// through the model (all but the one just sampled). A copy holds no steered text, so every token
/// cut was sampled.
fn cut_back(
    start: CutPoint,
    generated: &mut Vec<u32>,
    sampled: &mut Vec<u32>,
    copies: &mut SelfRepeats,
    text: &mut StopScan,
) -> usize {
    let cut = generated.len() - start.token;
    generated.truncate(start.token);
    sampled.truncate(sampled.len() - cut);
    copies.cut(start);
    text.cut(start.text);
    cut - 1
}

/// Steered text comes between the model's tokens: a copy of the model's words runs up to it, and
/// what was held as a possible copy is shown.
fn end_copying(copies: &mut Option<SelfRepeats>, text: &mut StopScan) {
    if let Some(copies) = copies {
        copies.break_run();
    }
    text.hold_from(None);
}

/// What ends the last line of `text` where a copy was cut from it: a line break, after the
/// closing mark of the line's first quotation when the line leaves it open (the copy began with
/// the mark; a mark left open later in the line is more likely a stray one), or after an
/// ellipsis when the cut leaves a sentence unfinished, so that it reads as cut short, not as
/// the whole of what the model meant.
fn line_end_after(text: &str) -> String {
    let line = text.rsplit('\n').next().unwrap_or(text);
    match left_open(line) {
        Some(close) => format!("{close}\n"),
        None if line.trim_end().ends_with(SENTENCE_ENDS) => "\n".to_string(),
        None => "…\n".to_string(),
    }
}

/// The mark that would close `line`'s first quotation, where the line leaves it open.
fn left_open(line: &str) -> Option<char> {
    let (inside, close) = line
        .char_indices()
        .find_map(|(at, c)| Some((at + c.len_utf8(), closing_mark(c)?)))?;
    (!line[inside..].contains(close)).then_some(close)
}

/// Whether `text` ends a line, or a sentence or quotation that its line does not leave inside
/// a quotation (`- [T8] "` opens one; a full stop after a digit may be a decimal point).
fn ends_sentence(text: &str) -> bool {
    if text.ends_with('\n') {
        return true;
    }
    let line = text.rsplit('\n').next().unwrap_or(text).trim_end();
    let mut last_two = line.chars().rev();
    let (last, before) = (last_two.next(), last_two.next());
    let quotations_closed = line.matches('"').count().is_multiple_of(2);
    quotations_closed
        && match last {
            Some('.') => !before.is_some_and(|c| c.is_ascii_digit()),
            Some(c) => SENTENCE_ENDS.contains(&c),
            None => false,
        }
}

/// Characters a finished sentence, or a quotation, may end with.
const SENTENCE_ENDS: &[char] = &[
    '.', '。', '!', '！', '?', '？', '…', '"', '”', '」', '』', ')', '）',
];

/// The mark that closes a quotation `open` opens, if it opens one.
pub(crate) fn closing_mark(open: char) -> Option<char> {
    match open {
        '"' => Some('"'),
        '“' => Some('”'),
        '「' => Some('」'),
        '『' => Some('』'),
        _ => None,
    }
}

/// Where a reply can be cut back to: before the token at `token` in the reply, whose text begins
/// at byte `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CutPoint {
    token: usize,
    text: usize,
}

/// The ending of the model's text that repeats, character for character, text it wrote earlier
/// in the reply (steered text is not the model's and is skipped). Characters, not tokens: the
/// same words after a quotation's closing mark ("\" Altman") are often split into other tokens
/// than before.
struct SelfRepeats {
    limit: usize,
    /// The model's text, each character with where a cut before the token that wrote it goes.
    own: Vec<(char, CutPoint)>,
    /// For each character of `own`, how many characters ending with it match the latest ones.
    matched: Vec<usize>,
    /// Characters in the repeating ending.
    run: usize,
}

impl SelfRepeats {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            own: Vec::new(),
            matched: Vec::new(),
            run: 0,
        }
    }

    /// Adds text the model wrote; `at` is where a cut before the token it begins with goes.
    fn push(&mut self, piece: &str, at: CutPoint) {
        for c in piece.chars() {
            // Backwards, so that each match grows from the previous character's match before that
            // is updated in its turn.
            for j in (0..self.own.len()).rev() {
                self.matched[j] = if self.own[j].0 == c {
                    j.checked_sub(1).map_or(0, |i| self.matched[i]) + 1
                } else {
                    0
                };
            }
            self.run = self.matched.iter().copied().max().unwrap_or(0);
            self.own.push((c, at));
            self.matched.push(0);
        }
    }

    /// Where the repeating ending begins: before the token that wrote its first character.
    fn start(&self) -> Option<CutPoint> {
        (self.run > 0).then(|| self.own[self.own.len() - self.run].1)
    }

    /// Where the repeating ending begins once it spans more than the limit's tokens, with the
    /// reply `tokens` long.
    fn over_limit(&self, tokens: usize) -> Option<CutPoint> {
        self.start().filter(|s| tokens - s.token > self.limit)
    }

    /// Forgets the text from `start` on, which the reply no longer holds.
    fn cut(&mut self, start: CutPoint) {
        let kept = self.own.partition_point(|(_, at)| at.token < start.token);
        self.own.truncate(kept);
        self.matched.truncate(kept);
        self.break_run();
    }

    fn break_run(&mut self) {
        self.matched.fill(0);
        self.run = 0;
    }
}

/// Puts `steered` into the reply as if the model had written it, cut to the room `config` leaves:
/// into the reply's tokens, the tokens the model reads next, and the text. True when it completes
/// a stop sequence.
fn put_steered(
    model: &Model,
    steered: String,
    config: &SamplingConfig,
    generated: &mut Vec<u32>,
    step: &mut Vec<u32>,
    text: &mut StopScan,
    on_text: &mut dyn FnMut(&str),
) -> Result<bool, ModelError> {
    let mut tokens = model.encode(&steered)?;
    let room = config.most_tokens().saturating_sub(generated.len());
    let shown = if tokens.len() > room {
        tokens.truncate(room);
        model.decode(&tokens)?
    } else {
        steered
    };
    generated.extend_from_slice(&tokens);
    step.extend_from_slice(&tokens);
    Ok(text.push(&shown, on_text))
}

/// The tokens `steer` allows next, or rules out; where the steer would go on after the reply,
/// also the next token of any stop sequence the reply has begun.
fn token_limit(
    model: &Model,
    steer: &dyn Steer,
    reply: &str,
    stops: &[String],
) -> Result<Mask, ModelError> {
    let first_tokens = |texts: &[&str]| -> Result<Vec<u32>, ModelError> {
        let mut tokens = Vec::with_capacity(texts.len());
        for text in texts {
            tokens.extend(model.encode(text)?.first());
        }
        Ok(tokens)
    };
    let mask = match steer.next(reply) {
        None => Mask::None,
        Some(Next::OneOf(texts)) => {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            Mask::Only(first_tokens(&texts)?)
        }
        Some(Next::OneOfOrEnd(texts)) => {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let mut allowed = first_tokens(&texts)?;
            allowed.extend(model.stop_tokens());
            Mask::Only(allowed)
        }
        Some(Next::OnSameLine) => {
            let mut ruled_out = first_tokens(&LINE_BREAKS)?;
            ruled_out.extend(model.stop_tokens());
            Mask::Except(ruled_out)
        }
        Some(Next::End) => Mask::Only(model.stop_tokens().to_vec()),
    };
    let mask = if steer.bars_chinese(reply) {
        mask.ruling_out(model.chinese_tokens()?)
    } else {
        mask
    };
    let begun = stop_rests(reply, stops);
    if begun.is_empty() || !steer.goes_on_after(reply) {
        return Ok(mask);
    }
    Ok(mask.ruling_out(&first_tokens(&begun)?))
}

/// What would complete each stop sequence that `reply` ends with the beginning of.
fn stop_rests<'s>(reply: &str, stops: &'s [String]) -> Vec<&'s str> {
    stops
        .iter()
        .flat_map(|stop| {
            stop.char_indices()
                .skip(1)
                .filter(|&(end, _)| reply.ends_with(&stop[..end]))
                .map(|(end, _)| &stop[end..])
        })
        .collect()
}

enum Mask {
    None,
    Only(Vec<u32>),
    Except(Vec<u32>),
}

impl Mask {
    /// This limit with `tokens` ruled out as well; where the steer named the only tokens that may
    /// come next, they stand.
    fn ruling_out(self, tokens: &[u32]) -> Self {
        match self {
            Mask::None => Mask::Except(tokens.to_vec()),
            Mask::Except(mut ruled_out) => {
                ruled_out.extend_from_slice(tokens);
                Mask::Except(ruled_out)
            }
            only @ Mask::Only(_) => only,
        }
    }
}

/// The repeat penalty looks at the tokens the model sampled for this reply only: an answer is
/// expected to repeat the prompt's turn ids and names, and penalising them pushes the model away
/// from citing.
fn sample(
    sampler: &mut LogitsProcessor,
    logits: &Tensor,
    sampled: &[u32],
    config: &SamplingConfig,
    mask: &Mask,
) -> Result<u32, ModelError> {
    let logits = if config.repeat_penalty == 1.0 || sampled.is_empty() {
        logits.clone()
    } else {
        let recent = &sampled[sampled.len().saturating_sub(config.repeat_last_n)..];
        candle_transformers::utils::apply_repeat_penalty(logits, config.repeat_penalty, recent)?
    };
    let logits = match mask {
        Mask::None => logits,
        Mask::Only(tokens) => masked(&logits, tokens, true)?,
        Mask::Except(tokens) => masked(&logits, tokens, false)?,
    };
    Ok(sampler.sample(&logits)?)
}

/// `logits` with only `tokens` possible (`keep`), or all but them.
fn masked(logits: &Tensor, tokens: &[u32], keep: bool) -> Result<Tensor, ModelError> {
    let mut values = logits.to_vec1::<f32>()?;
    // A list may be long (every token that writes Chinese): looked up once per token, not
    // searched through for each.
    let mut listed = vec![false; values.len()];
    for &token in tokens {
        if let Some(flag) = listed.get_mut(token as usize) {
            *flag = true;
        }
    }
    for (value, listed) in values.iter_mut().zip(listed) {
        if listed != keep {
            *value = f32::NEG_INFINITY;
        }
    }
    let n = values.len();
    Ok(Tensor::from_vec(values, n, logits.device())?)
}

/// Turns a token stream into printable text. Byte-level tokenizers split a Chinese character
/// over several tokens; until the bytes form a whole character the decoder yields U+FFFD, so
/// those tokens are held back and decoded together with the ones that complete them.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u32>,
}

/// A UTF-8 character has at most 4 bytes; a longer incomplete run is not going to complete.
const MAX_PENDING: usize = 4;

impl TextStream {
    pub fn push<E>(
        &mut self,
        token: u32,
        decode: impl Fn(&[u32]) -> Result<String, E>,
    ) -> Result<Option<String>, E> {
        self.pending.push(token);
        let text = decode(&self.pending)?;
        if text.ends_with('\u{FFFD}') && self.pending.len() < MAX_PENDING {
            return Ok(None);
        }
        self.pending.clear();
        Ok(Some(text).filter(|t| !t.is_empty()))
    }

    pub fn finish<E>(
        &mut self,
        decode: impl Fn(&[u32]) -> Result<String, E>,
    ) -> Result<Option<String>, E> {
        let text = decode(&std::mem::take(&mut self.pending))?;
        Ok(Some(text).filter(|t| !t.is_empty()))
    }

    /// Tokens held until they form whole characters.
    fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The reply's text, passed on as it grows except for an ending that may be the start of a stop
/// sequence, or a copy of earlier words that may yet be cut: that part is held until it is known
/// not to be one. Trailing white space is passed on with the text after it, so that a reply
/// ended after a line break does not show a blank line.
struct StopScan<'a> {
    stops: &'a [String],
    text: String,
    shown: usize,
    /// Where a possible copy begins (see `SelfRepeats`).
    hold: Option<usize>,
}

impl<'a> StopScan<'a> {
    fn new(stops: &'a [String]) -> Self {
        Self {
            stops,
            text: String::new(),
            shown: 0,
            hold: None,
        }
    }

    fn hold_from(&mut self, at: Option<usize>) {
        self.hold = at;
    }

    /// Drops the text from `at` on, which was held and never shown.
    fn cut(&mut self, at: usize) {
        self.text.truncate(at.max(self.shown));
        self.hold = None;
    }

    /// Adds `piece`; true when the text now contains a stop sequence, which is cut off.
    fn push(&mut self, piece: &str, on_text: &mut dyn FnMut(&str)) -> bool {
        self.text.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        let show_to = match found {
            Some(at) => {
                self.text.truncate(at);
                at
            }
            None => (self.text.len() - self.held_back()).min(self.hold.unwrap_or(usize::MAX)),
        };
        let show_to = self.shown.max(self.text[..show_to].trim_end().len());
        if show_to > self.shown {
            on_text(&self.text[self.shown..show_to]);
            self.shown = show_to;
        }
        found.is_some()
    }

    /// Length of the longest ending of the text that begins a stop sequence.
    fn held_back(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .skip(1)
                    .map(move |(end, _)| &stop[..end])
            })
            .filter(|prefix| self.text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    fn so_far(&self) -> &str {
        &self.text
    }

    fn finish(self, on_text: &mut dyn FnMut(&str)) -> String {
        let end = self.text.trim_end().len();
        if self.shown < end {
            on_text(&self.text[self.shown..end]);
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_end_outside_quotations_and_not_at_a_decimal_point() {
        assert!(ends_sentence("- [T8] \"我们会做到。\""));
        assert!(ends_sentence("He says it will change. "));
        assert!(ends_sentence("- [T8] \"…\" He says so.\n"));
        assert!(
            !ends_sentence("- [T8] \"我们会做到。"),
            "inside the quotation"
        );
        assert!(!ends_sentence("- [T8] \""), "a quotation just opened");
        assert!(!ends_sentence("version 0."));
        assert!(!ends_sentence("He says that"));
    }

    #[test]
    fn a_begun_stop_sequence_is_completed_by_its_rest() {
        let stops = ["\nQuestion:".to_string()];
        assert_eq!(
            stop_rests("- [T8] \"…\" He says so.\n", &stops),
            ["Question:"]
        );
        assert_eq!(stop_rests("- [T8] \"…\"\nQues", &stops), ["tion:"]);
        assert!(stop_rests("- [T8] \"…\" He says so.", &stops).is_empty());
    }

    #[test]
    fn a_guess_is_what_followed_the_longest_match_of_the_latest_tokens() {
        // [1, 2, 3] came before 4, then before 9; [2, 3] last came before 7.
        let text = [1, 2, 3, 4, 5, 1, 2, 3, 9, 2, 3, 7, 8, 1, 2, 3];
        assert_eq!(guess_after(&text, 3), [9, 2, 3]);
        // The latest occurrence has too few tokens after it for 9, the earliest has them.
        assert_eq!(guess_after(&text, 8), [9, 2, 3, 7, 8, 1, 2, 3]);
        assert_eq!(guess_after(&text, 9), [4, 5, 1, 2, 3, 9, 2, 3, 7]);
        // What follows may run up to the latest tokens themselves.
        assert_eq!(guess_after(&[5, 5, 5, 5], 4), [5]);
    }

    #[test]
    fn nothing_is_guessed_without_two_matching_tokens_or_room() {
        assert!(guess_after(&[1, 2, 3, 4, 3], 4).is_empty());
        assert!(guess_after(&[1, 2, 1, 2], 0).is_empty());
        assert!(guess_after(&[], 4).is_empty());
    }

    /// Decodes token ids as raw bytes, the way a byte-level tokenizer decodes byte tokens.
    fn bytes(ids: &[u32]) -> Result<String, ()> {
        let raw: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    #[test]
    fn split_characters_are_held_until_whole() {
        let mut stream = TextStream::default();
        let mut out = Vec::new();
        for b in "a智能".bytes() {
            out.extend(stream.push(b as u32, bytes).unwrap());
        }
        out.extend(stream.finish(bytes).unwrap());
        assert_eq!(out, ["a", "智", "能"]);
    }

    fn scan(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut scan = StopScan::new(&stops);
        let mut shown = Vec::new();
        let mut stopped = false;
        for piece in pieces {
            stopped = scan.push(piece, &mut |t| shown.push(t.to_string()));
            if stopped {
                break;
            }
        }
        let text = scan.finish(&mut |t| shown.push(t.to_string()));
        (shown, text, stopped)
    }

    #[test]
    fn a_stop_sequence_split_over_pieces_is_never_shown() {
        let (shown, text, stopped) = scan(
            &["\nQuestion:"],
            &["- [T4] yes", "\nQu", "est", "ion: next?"],
        );
        assert!(stopped);
        assert_eq!(text, "- [T4] yes");
        assert_eq!(shown.concat(), "- [T4] yes");
    }

    #[test]
    fn a_held_back_false_start_is_shown_once_it_diverges() {
        let (shown, text, stopped) = scan(&["\nQuestion:"], &["a", "\nQu", "ick", " end"]);
        assert!(!stopped);
        assert_eq!(shown, ["a", "\nQuick", " end"]);
        assert_eq!(text, "a\nQuick end");
    }

    #[test]
    fn held_back_text_is_shown_at_the_end() {
        let (shown, text, _) = scan(&["\nQuestion:"], &["done", "\nQu"]);
        assert_eq!(shown.concat(), "done\nQu");
        assert_eq!(text, "done\nQu");
    }

    #[test]
    fn white_space_is_shown_with_the_text_after_it_and_never_at_the_end() {
        let (shown, text, _) = scan(&[], &["a ", "b\n", "\n", "c", "\n"]);
        assert_eq!(shown, ["a", " b", "\n\nc"]);
        assert_eq!(text, "a b\n\nc\n");
    }

    /// `pieces` written one token each, the token at `i` starting at text byte `10 * i`.
    fn repeats_of(pieces: &[&str], limit: usize) -> SelfRepeats {
        let mut repeats = SelfRepeats::new(limit);
        for (i, piece) in pieces.iter().enumerate() {
            repeats.push(piece, at(i));
        }
        repeats
    }

    fn at(token: usize) -> CutPoint {
        CutPoint {
            token,
            text: 10 * token,
        }
    }

    #[test]
    fn a_copy_is_the_longest_ending_written_before_whatever_its_tokens() {
        let first = ["He", " said", " it", " works", ".", " "];
        let again = [first.as_slice(), &["He s", "aid", " it"]].concat();
        let repeats = repeats_of(&again, 3);
        assert_eq!(repeats.start(), Some(at(6)));
        assert_eq!(repeats.over_limit(9), None);
        assert_eq!(repeats.over_limit(10), Some(at(6)));
        // Within a token: the copy is cut before the token that began it.
        let within = repeats_of(&["ab", "c", "xb", "c"], 3);
        assert_eq!(within.start(), Some(at(2)));
        assert_eq!(repeats_of(&["ab", "cd"], 3).start(), None);
    }

    #[test]
    fn a_copy_does_not_run_across_a_break_or_a_cut() {
        let mut repeats = repeats_of(&["a", "b", "c", "a", "b"], 3);
        repeats.break_run();
        repeats.push("c", at(5));
        // "c" follows "b" before too, but the copy starts afresh after the break.
        assert_eq!(repeats.start(), Some(at(5)));
        repeats.cut(at(3));
        assert_eq!(repeats.start(), None);
        repeats.push("x", at(3));
        assert_eq!(repeats.start(), None);
    }

    #[test]
    fn a_cut_line_closes_the_quotation_it_leaves_open() {
        assert_eq!(line_end_after("- [T4] \"他说了。"), "\"\n");
        assert_eq!(line_end_after("x “a” and\n- [T4] “他说"), "”\n");
    }

    #[test]
    fn a_cut_sentence_is_marked_as_cut_short() {
        assert_eq!(line_end_after("- [T4] \"他说了。\" He said so."), "\n");
        assert_eq!(line_end_after("- [T4] \"他说了。\" 他说过。"), "\n");
        assert_eq!(
            line_end_after("- [T4] \"他说了。\""),
            "\n",
            "nothing after the quotation"
        );
        assert_eq!(
            line_end_after("- [T4] \"他说了。\" He said that while"),
            "…\n"
        );
        assert_eq!(line_end_after("- [T4] \"他说了。\" Altman 认为，"), "…\n");
        assert_eq!(line_end_after("- [T4] \"他说了。\" He said \" so"), "…\n");
    }

    #[test]
    fn invalid_bytes_are_flushed_not_held_forever() {
        let mut stream = TextStream::default();
        let pieces: Vec<String> = [0xE6u32, 0x99, 0xFF, 0xFF, b'x' as u32]
            .into_iter()
            .filter_map(|t| stream.push(t, bytes).unwrap())
            .collect();
        assert!(pieces.concat().ends_with('x'));
    }
}
