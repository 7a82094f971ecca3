//! The generation loop on a tiny model that the test builds itself.
mod common;

use common::Behaviour;
use tqa::model::generate::{continue_generation, Next, Prefilled, Steer};
use tqa::model::{generate, Generation, Model, ModelError, SamplingConfig, StopReason};

fn load(path: &std::path::Path) -> Model {
    common::load_model(path)
}

/// A tiny model that writes "a" whatever it reads: replies whose length and ends tests can
/// count.
fn always_a(dir: &std::path::Path) -> Model {
    load(&common::tiny_model(
        dir,
        Behaviour::AlwaysEmit(u32::from(b'a')),
    ))
}

/// Greedy decoding without the repeat penalty, so that what follows a steer can be compared with
/// what follows the same tokens as a prompt.
fn unpenalized(max_new_tokens: usize) -> SamplingConfig {
    SamplingConfig {
        max_new_tokens,
        repeat_penalty: 1.0,
        ..SamplingConfig::default()
    }
}

/// `prompt` run through the model, ready for `continue_generation`.
fn prefilled(model: &mut Model, prompt: &[u32]) -> Prefilled {
    let (logits, _) = model.prefill(prompt).unwrap();
    Prefilled {
        logits,
        context: prompt.len(),
        start: std::time::Instant::now(),
    }
}

fn run(
    model: &mut Model,
    prompt: &str,
    config: &SamplingConfig,
) -> (tqa::model::Generation, String) {
    let tokens = model.encode(prompt).unwrap();
    let mut streamed = String::new();
    let generation = generate(model, &tokens, config, &mut |t| streamed.push_str(t)).unwrap();
    (generation, streamed)
}

#[test]
fn greedy_generation_is_deterministic_and_streams_what_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Random(7)));
    let config = SamplingConfig {
        max_new_tokens: 24,
        ..SamplingConfig::default()
    };
    let (first, streamed) = run(&mut model, "<|im_start|>user\nhello<|im_end|>\n", &config);
    let (second, _) = run(&mut model, "<|im_start|>user\nhello<|im_end|>\n", &config);
    assert_eq!(first.tokens, second.tokens);
    assert_eq!(streamed, first.text);
    assert!(first.prompt_tokens > 5);
}

#[test]
fn seeded_sampling_repeats_and_different_seeds_diverge() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Random(11)));
    let sampled = |seed| SamplingConfig {
        temperature: 1.5,
        top_p: Some(0.95),
        seed,
        max_new_tokens: 32,
        ..SamplingConfig::default()
    };
    let (a, _) = run(&mut model, "hi", &sampled(1));
    let (b, _) = run(&mut model, "hi", &sampled(1));
    let (c, _) = run(&mut model, "hi", &sampled(2));
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn stops_at_the_end_of_turn_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(
        dir.path(),
        Behaviour::AlwaysEmit(common::im_end_id()),
    ));
    let (g, streamed) = run(&mut model, "hi", &SamplingConfig::default());
    assert_eq!(g.stop, StopReason::EndOfTurn);
    assert!(g.tokens.is_empty());
    assert!(streamed.is_empty());
}

#[test]
fn stops_at_the_token_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = always_a(dir.path());
    let config = SamplingConfig {
        max_new_tokens: 9,
        ..SamplingConfig::default()
    };
    let (g, streamed) = run(&mut model, "hi", &config);
    assert_eq!(g.stop, StopReason::TokenLimit);
    assert_eq!(streamed, "aaaaaaaaa");
}

#[test]
fn a_reply_at_its_limit_may_finish_its_sentence_and_starts_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = always_a(dir.path());
    let prompt = model.encode("hi").unwrap();
    // Sentences of three tokens: "aaa" then a steered full stop.
    let reply = |model: &mut Model, max_new_tokens: usize, finish_sentence_within: usize| {
        let config = SamplingConfig {
            max_new_tokens,
            finish_sentence_within,
            ..SamplingConfig::default()
        };
        let ready = prefilled(model, &prompt);
        let mut full_stop = |reply: &str| reply.ends_with("aaa").then(|| ".".to_string());
        continue_generation(model, ready, &config, &mut |_| {}, &mut full_stop).unwrap()
    };
    // The limit falls on the second sentence's first token.
    let limit = 3 + model.encode(".").unwrap().len() + 1;
    let cut = reply(&mut model, limit, 0);
    assert_eq!(
        (cut.text.as_str(), cut.stop),
        ("aaa.a", StopReason::TokenLimit)
    );
    let finished = reply(&mut model, limit, 10);
    assert_eq!(
        finished.text, "aaa.aaa.",
        "the sentence is finished, no other begun"
    );
    assert_eq!(finished.stop, StopReason::TokenLimit);
    let too_long = reply(&mut model, limit, 1);
    assert_eq!(
        too_long.text, "aaa.aa",
        "the room to finish a sentence is bounded too"
    );
}

#[test]
fn a_quotation_cut_at_the_limit_is_closed_as_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = always_a(dir.path());
    let prompt = model.encode("hi").unwrap();
    let ready = prefilled(&mut model, &prompt);
    let mut streamed = String::new();
    let mut quotation = |reply: &str| (reply == "a").then(|| format!("\"{}\"", "b".repeat(50)));
    let cut = continue_generation(
        &mut model,
        ready,
        &unpenalized(10),
        &mut |t| streamed.push_str(t),
        &mut quotation,
    )
    .unwrap();
    assert_eq!(cut.stop, StopReason::TokenLimit);
    assert!(cut.text.ends_with("bb…\""), "{}", cut.text);
    assert_eq!(cut.text.matches('"').count(), 2, "{}", cut.text);
    assert_eq!(streamed, cut.text);
}

/// The same reply with and without guessing ahead, and how many tokens the guesses gave.
fn with_and_without_guesses(model: &mut Model, prompt: &str, config: &SamplingConfig) -> usize {
    let plain = SamplingConfig {
        guess_ahead: 0,
        ..config.clone()
    };
    let guessing = SamplingConfig {
        guess_ahead: 6,
        ..config.clone()
    };
    let (without, _) = run(model, prompt, &plain);
    let (with, streamed) = run(model, prompt, &guessing);
    assert_eq!(without.guessed_tokens, 0);
    assert_eq!(with.tokens, without.tokens);
    assert_eq!(streamed, without.text);
    with.guessed_tokens
}

#[test]
fn guessed_tokens_the_model_would_choose_save_their_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = always_a(dir.path());
    let config = unpenalized(30);
    // Once the reply has repeated itself, every guess ("a" again) holds: only the first tokens
    // and the one sampled in each guessing pass need passes of their own.
    let guessed = with_and_without_guesses(&mut model, "hi", &config);
    assert!(guessed >= 20, "{guessed} of 30 tokens guessed");
}

#[test]
fn wrong_guesses_change_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Random(7)));
    // A prompt full of repeats, so that there is something to guess from at every step, and
    // the penalty, so that the model does not simply go on repeating.
    let config = SamplingConfig {
        max_new_tokens: 40,
        ..SamplingConfig::default()
    };
    with_and_without_guesses(&mut model, &"the cat sat on the mat; ".repeat(8), &config);
}

/// A steer that only says what the reply is likely to restate.
struct Restates(String);

impl Steer for Restates {
    fn insert(&mut self, _reply: &str) -> Option<String> {
        None
    }

    fn restates(&self) -> &[String] {
        std::slice::from_ref(&self.0)
    }
}

#[test]
fn guesses_also_come_from_the_text_a_reply_restates() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Ascii(7)));
    let config = SamplingConfig {
        max_new_tokens: 40,
        ..SamplingConfig::default()
    };
    let prompt = model.encode("tell me").unwrap();
    let reply = |model: &mut Model, steer: &mut Restates| {
        let ready = prefilled(model, &prompt);
        continue_generation(model, ready, &config, &mut |_| {}, steer).unwrap()
    };
    let plain = reply(&mut model, &mut Restates(String::new()));
    // Told that the reply restates what it in fact goes on to write, most tokens are guessed,
    // and the reply is the same.
    let told = reply(&mut model, &mut Restates(plain.text.clone()));
    assert_eq!(told.tokens, plain.tokens);
    assert!(
        told.guessed_tokens >= plain.guessed_tokens + 20,
        "{} guessed when told, {} when not",
        told.guessed_tokens,
        plain.guessed_tokens
    );
}

#[test]
fn repeat_penalty_changes_the_choice_when_it_outweighs_the_margin() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Random(3)));
    let plain = SamplingConfig {
        repeat_penalty: 1.0,
        max_new_tokens: 40,
        ..SamplingConfig::default()
    };
    let heavy = SamplingConfig {
        repeat_penalty: 50.0,
        ..plain.clone()
    };
    let (a, _) = run(&mut model, "abc", &plain);
    let (b, _) = run(&mut model, "abc", &heavy);
    let distinct = |t: &[u32]| t.iter().collect::<std::collections::HashSet<_>>().len();
    assert!(distinct(&b.tokens) >= distinct(&a.tokens));
    assert_ne!(a.tokens, b.tokens);
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Random(5)));
    let long = "x".repeat(common::CONTEXT as usize);
    let tokens = model.encode(&long).unwrap();
    let err = generate(&mut model, &tokens, &SamplingConfig::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, ModelError::ContextOverflow { .. }));
    assert!(err.to_string().contains("context"));
}

#[test]
fn truncated_and_foreign_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::tiny_model(dir.path(), Behaviour::Random(1));
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(&common::model_source(&cut), &candle_core::Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
    std::fs::write(&cut, &bytes[..64]).unwrap();
    let err = Model::load(&common::model_source(&cut), &candle_core::Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::DamagedHeader { .. }), "{err}");
    assert!(err.to_string().contains("fetch it again"), "{err}");
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "definitely not a model").unwrap();
    let err = Model::load(&common::model_source(&text), &candle_core::Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::NotGguf { .. }), "{err}");
}

#[test]
fn steered_text_enters_the_reply_and_generation_goes_on_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Random(7)));
    let config = unpenalized(20);
    let prompt = model.encode("<|im_start|>user\nhello<|im_end|>\n").unwrap();
    let inserted = model.encode("xyz").unwrap();
    let mut streamed = String::new();
    let mut done = false;
    let ready = prefilled(&mut model, &prompt);
    let steered = continue_generation(
        &mut model,
        ready,
        &config,
        &mut |t| streamed.push_str(t),
        &mut |_: &str| (!std::mem::replace(&mut done, true)).then(|| "xyz".to_string()),
    )
    .unwrap();
    assert_eq!(streamed, steered.text);
    assert!(steered.text.contains("xyz"));
    assert_eq!(steered.steered_tokens, inserted.len());

    // What follows the steered text is what the model says after a prompt that ends with it:
    // the inserted tokens went into the KV cache at the right positions.
    let at = steered
        .tokens
        .windows(inserted.len())
        .position(|w| w == inserted.as_slice())
        .unwrap()
        + inserted.len();
    let mut longer = prompt.clone();
    longer.extend_from_slice(&steered.tokens[..at]);
    let rest = SamplingConfig {
        max_new_tokens: config.max_new_tokens - at,
        ..config.clone()
    };
    let reference = generate(&mut model, &longer, &rest, &mut |_| {}).unwrap();
    assert_eq!(reference.tokens, steered.tokens[at..]);
}

/// Limits the first token of the reply and nothing after it.
struct AtStart<F: Fn() -> Next>(F);

impl<F: Fn() -> Next> Steer for AtStart<F> {
    fn insert(&mut self, _reply: &str) -> Option<String> {
        None
    }

    fn next(&self, reply: &str) -> Option<Next> {
        reply.is_empty().then(&self.0)
    }
}

#[test]
fn allowed_continuations_hold_the_next_token_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Random(7)));
    let config = unpenalized(6);
    let prompt = model.encode("<|im_start|>user\nhello<|im_end|>\n").unwrap();
    let (free, _) = run(&mut model, "<|im_start|>user\nhello<|im_end|>\n", &config);
    // A text whose first token is not the model's own first choice.
    let forced = ["xyz", "abc"]
        .into_iter()
        .find(|t| model.encode(t).unwrap()[0] != free.tokens[0])
        .unwrap();
    let ready = prefilled(&mut model, &prompt);
    let held = continue_generation(
        &mut model,
        ready,
        &config,
        &mut |_| {},
        &mut AtStart(|| Next::OneOf(vec![forced.to_string()])),
    )
    .unwrap();
    assert_eq!(held.tokens[0], model.encode(forced).unwrap()[0]);
    // Then the model is free again, going on from the token it was held to.
    let mut longer = prompt.clone();
    longer.push(held.tokens[0]);
    let one = SamplingConfig {
        max_new_tokens: 1,
        ..config.clone()
    };
    let reference = generate(&mut model, &longer, &one, &mut |_| {}).unwrap();
    assert_eq!(reference.tokens.first(), held.tokens.get(1));
}

/// The reply of a tiny model that always emits `emits`, with `next` limiting its first token.
fn held_at_start(
    dir: &std::path::Path,
    emits: u32,
    max_new_tokens: usize,
    next: fn() -> Next,
) -> (Model, Generation) {
    let mut model = load(&common::tiny_model(dir, Behaviour::AlwaysEmit(emits)));
    let prompt = model.encode("<|im_start|>user\nhello<|im_end|>\n").unwrap();
    let ready = prefilled(&mut model, &prompt);
    let reply = continue_generation(
        &mut model,
        ready,
        &unpenalized(max_new_tokens),
        &mut |_| {},
        &mut AtStart(next),
    )
    .unwrap();
    (model, reply)
}

#[test]
fn a_reply_held_on_its_line_cannot_end_there() {
    let dir = tempfile::tempdir().unwrap();
    let (model, held) = held_at_start(dir.path(), common::im_end_id(), 4, || Next::OnSameLine);
    // The model would end at once; held, it writes one token, then ends.
    assert_eq!(held.tokens.len(), 1);
    assert_ne!(held.tokens[0], common::im_end_id());
    assert!(!model.decode(&held.tokens).unwrap().contains('\n'));
    assert_eq!(held.stop, StopReason::EndOfTurn);
}

#[test]
fn a_steer_can_end_the_reply_where_the_model_would_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ended) = held_at_start(dir.path(), u32::from(b'a'), 8, || Next::End);
    // The model would write "a" to the token limit; the steer ends the reply before it begins.
    assert_eq!(ended.text, "");
    assert_eq!(ended.stop, StopReason::EndOfTurn);
    assert!(ended.tokens.is_empty());
}

/// Bars Chinese from the whole reply.
struct NoChinese;

impl Steer for NoChinese {
    fn insert(&mut self, _reply: &str) -> Option<String> {
        None
    }

    fn bars_chinese(&self, _reply: &str) -> bool {
        true
    }
}

#[test]
fn a_reply_barred_from_chinese_writes_no_part_of_a_chinese_character() {
    let dir = tempfile::tempdir().unwrap();
    // The first byte of "中" (E4 B8 AD), which the tiny vocabulary writes byte by byte.
    let lead_byte = 0xE4;
    let mut model = load(&common::tiny_model(
        dir.path(),
        Behaviour::AlwaysEmit(lead_byte),
    ));
    let prompt = model.encode("<|im_start|>user\nhello<|im_end|>\n").unwrap();
    let mut reply = |steer: &mut dyn Steer| {
        let ready = prefilled(&mut model, &prompt);
        continue_generation(&mut model, ready, &unpenalized(4), &mut |_| {}, steer).unwrap()
    };
    let free = reply(&mut |_: &str| None::<String>);
    assert_eq!(free.tokens, [lead_byte; 4]);
    let barred = reply(&mut NoChinese);
    let non_ascii_bytes = 0x80..0x100;
    assert!(
        barred.tokens.iter().all(|t| !non_ascii_bytes.contains(t)),
        "{:?}",
        barred.tokens
    );
    assert!(!barred.text.contains(char::REPLACEMENT_CHARACTER));
}

/// Goes on with "ab" the first `times` times the model would end.
struct GoOn {
    times: usize,
}

impl Steer for GoOn {
    fn insert(&mut self, _reply: &str) -> Option<String> {
        None
    }

    fn instead_of_end(&mut self, _reply: &str) -> Option<String> {
        self.times = self.times.checked_sub(1)?;
        Some("ab".to_string())
    }
}

#[test]
fn a_steer_can_go_on_where_the_model_would_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(
        dir.path(),
        Behaviour::AlwaysEmit(common::im_end_id()),
    ));
    let prompt = model.encode("<|im_start|>user\nhello<|im_end|>\n").unwrap();
    let go_on_twice = |model: &mut Model, max_new_tokens: usize, streamed: &mut String| {
        let ready = prefilled(model, &prompt);
        continue_generation(
            model,
            ready,
            &unpenalized(max_new_tokens),
            &mut |t| streamed.push_str(t),
            &mut GoOn { times: 2 },
        )
        .unwrap()
    };
    let mut streamed = String::new();
    let went_on = go_on_twice(&mut model, 16, &mut streamed);
    assert_eq!(went_on.text, "abab");
    assert_eq!(streamed, went_on.text);
    let ab = model.encode("ab").unwrap();
    assert_eq!(went_on.tokens, [ab.clone(), ab.clone()].concat());
    assert_eq!(went_on.steered_tokens, 2 * ab.len());
    assert_eq!(went_on.stop, StopReason::EndOfTurn);

    // Text past the token limit is cut there.
    let cut = go_on_twice(&mut model, 1, &mut String::new());
    assert_eq!(cut.tokens.len(), 1);
    assert_eq!(cut.stop, StopReason::TokenLimit);

    // A reply past its limit, with room to finish a sentence, does not go on where it ends.
    let ready = prefilled(&mut model, &prompt);
    let with_room = SamplingConfig {
        finish_sentence_within: 16,
        ..unpenalized(ab.len())
    };
    let once = continue_generation(
        &mut model,
        ready,
        &with_room,
        &mut |_| {},
        &mut GoOn { times: 2 },
    )
    .unwrap();
    assert_eq!(once.text, "ab");
    assert_eq!(once.stop, StopReason::EndOfTurn);
}

/// Would go on after every reply, with nothing to say yet.
struct AlwaysGoesOn;

impl Steer for AlwaysGoesOn {
    fn insert(&mut self, _reply: &str) -> Option<String> {
        None
    }

    fn goes_on_after(&self, _reply: &str) -> bool {
        true
    }
}

#[test]
fn a_steer_that_would_go_on_keeps_a_stop_sequence_from_ending_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    // A token that is also the first of its own text's encoding (the tiny tokenizer puts a space
    // before a word), so that ruling out the stop sequence's rest rules out this token.
    let emitted = u32::from(b' ');
    let mut model = load(&common::tiny_model(
        dir.path(),
        Behaviour::AlwaysEmit(emitted),
    ));
    let piece = model.decode(&[emitted]).unwrap();
    assert_eq!(model.encode(&piece).unwrap()[0], emitted);
    let prompt = model.encode("<|im_start|>user\nhello<|im_end|>\n").unwrap();
    let config = SamplingConfig {
        stop_sequences: vec![piece.repeat(2)],
        ..unpenalized(6)
    };
    let ready = prefilled(&mut model, &prompt);
    let stopped =
        continue_generation(&mut model, ready, &config, &mut |_| {}, &mut |_: &str| None).unwrap();
    assert_eq!(stopped.stop, StopReason::StopSequence);

    let ready = prefilled(&mut model, &prompt);
    let went_on =
        continue_generation(&mut model, ready, &config, &mut |_| {}, &mut AlwaysGoesOn).unwrap();
    assert_eq!(went_on.stop, StopReason::TokenLimit);
    assert_eq!(went_on.tokens.len(), 6);
    assert_eq!(went_on.tokens[0], emitted);
    assert!(
        !went_on.text.contains(&config.stop_sequences[0]),
        "{:?}",
        went_on.text
    );
}

/// A reply that copies more than `limit` of its own tokens is cut where the copy began, and what
/// was cut is never streamed: the copy's line ends there, and a reply that copies a whole line
/// ends.
#[test]
fn a_reply_copying_itself_is_cut_where_the_copy_began() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = always_a(dir.path());
    let limited = |max_self_repeat| SamplingConfig {
        max_self_repeat,
        ..unpenalized(32)
    };
    let (free, _) = run(&mut model, "hi", &limited(None));
    assert_eq!(free.stop, StopReason::TokenLimit);
    assert_eq!(free.text, "a".repeat(32));

    // From the second "a" on, every token repeats the one before it. The line ends after the
    // first, marked as cut short; the next line is all copy.
    let (cut, streamed) = run(&mut model, "hi", &limited(Some(3)));
    assert_eq!(cut.stop, StopReason::Repetition);
    assert_eq!(cut.text, "a…\n");
    assert_eq!(streamed, "a…", "a line break at the end is not shown");
    let line_end = model.encode("…\n").unwrap();
    assert_eq!(
        cut.tokens,
        [vec![u32::from(b'a')], line_end.clone()].concat()
    );
    assert_eq!(cut.steered_tokens, line_end.len());
    // Each of the two copies was cut at four tokens, three of them already through the model.
    assert_eq!(cut.cut_tokens, 6);

    // Where a steer goes on instead of ending, the model starts afresh after the steered text.
    let prompt = model.encode("hi").unwrap();
    let ready = prefilled(&mut model, &prompt);
    let mut streamed = String::new();
    // Each cut costs its copy's tokens and the line end's: room for three lines.
    let roomy = SamplingConfig {
        max_new_tokens: 64,
        ..limited(Some(3))
    };
    let went_on = continue_generation(
        &mut model,
        ready,
        &roomy,
        &mut |t| streamed.push_str(t),
        &mut GoOn { times: 2 },
    )
    .unwrap();
    assert_eq!(went_on.text, "a…\nab…\nab…\n");
    assert_eq!(streamed, went_on.text.trim_end());
    assert_eq!(went_on.stop, StopReason::Repetition);
}

#[test]
fn replies_side_by_side_are_the_replies_generated_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&common::tiny_model(dir.path(), Behaviour::Random(7)));
    let prompts: Vec<Vec<u32>> = ["hello", "the cat sat", "a", "on the mat; on the mat", "why"]
        .iter()
        .map(|q| {
            let text = format!("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
            model.encode(&text).unwrap()
        })
        .collect();
    // Of different lengths, so that lanes finish and take the next prompt at different steps.
    let limits = [24, 6, 17, 3, 24];
    let config = SamplingConfig {
        guess_ahead: 0,
        ..SamplingConfig::default()
    };
    let alone: Vec<String> = prompts
        .iter()
        .zip(limits)
        .map(|(prompt, max_new_tokens)| {
            let config = SamplingConfig {
                max_new_tokens,
                ..config.clone()
            };
            generate(&mut model, prompt, &config, &mut |_| {})
                .unwrap()
                .text
        })
        .collect();
    assert!(alone.iter().any(|reply| reply.chars().count() > 6));
    let mut done = vec![String::new(); prompts.len()];
    let side_by_side = tqa::model::generate::generate_side_by_side(
        &mut model,
        &prompts,
        &limits,
        &config,
        2,
        &mut |i, reply| done[i] = reply.to_string(),
    )
    .unwrap();
    assert_eq!(side_by_side, alone);
    assert_eq!(done, alone, "each reply is handed over as it is done");
    // The cache is left for plain prompts again.
    let again = SamplingConfig {
        max_new_tokens: limits[0],
        ..config
    };
    let reply = generate(&mut model, &prompts[0], &again, &mut |_| {}).unwrap();
    assert_eq!(reply.text, alone[0]);
}
