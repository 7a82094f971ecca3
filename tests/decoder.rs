//! tqa's own transformer against candle-transformers' quantized llama and qwen2, which stay the
//! reference: the same logits on tiny models of both families, the same greedy tokens on the
//! real models, and a reused prompt prefix that changes nothing.
mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use common::{Arch, Behaviour};
use tqa::model::{Model, ModelSource};

/// candle's own implementation of the file's architecture.
enum Reference {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

impl Reference {
    fn load(path: &Path) -> Reference {
        let mut file = std::fs::File::open(path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let arch = content.metadata["general.architecture"]
            .to_string()
            .unwrap()
            .clone();
        match arch.as_str() {
            "llama" => Reference::Llama(
                quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap(),
            ),
            "qwen2" => Reference::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap(),
            ),
            other => panic!("no reference for {other}"),
        }
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Vec<f32> {
        let input = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = match self {
            Reference::Llama(m) => m.forward(&input, pos),
            Reference::Qwen2(m) => m.forward(&input, pos),
        };
        logits.unwrap().squeeze(0).unwrap().to_vec1().unwrap()
    }
}

/// A tiny model of `arch` with seeded random weights, in a folder that lives as long as the guard.
fn tiny(seed: u64, arch: Arch) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    common::write_tiny_model_of(&path, Behaviour::Random(seed), arch);
    (dir, path)
}

fn load(path: &Path, optimize: bool) -> Model {
    load_caching(path, optimize, None)
}

fn load_caching(path: &Path, optimize: bool, prefix_cache: Option<&Path>) -> Model {
    let source = ModelSource {
        name: "under test".into(),
        path: path.to_path_buf(),
        tokenizer_json: None,
        chat_template: None,
        optimize,
        min_answered_log_odds: 0.0,
        min_answered_log_odds_reused_turns: 0.0,
        min_owed_relevance: 0.0,
        judges: true,
        languages: None,
        prefix_cache: prefix_cache.map(Path::to_path_buf),
    };
    Model::load(&source, &common::test_device()).unwrap()
}

fn logits(model: &mut Model, tokens: &[u32], pos: usize) -> Vec<f32> {
    model.forward(tokens, pos).unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn log_probability(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    logits[token as usize] - max - log_sum
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

/// Prefill then single-token steps, logits compared at every step. The tiny models are f32, so
/// the two implementations differ only in the order of float operations.
fn assert_tiny_matches(arch: Arch) {
    let (_dir, path) = tiny(21, arch);
    let mut ours = load(&path, false);
    let mut reference = Reference::load(&path);
    let prompt = ours
        .encode("<|im_start|>user\nwhat did the guest say?<|im_end|>\n")
        .unwrap();
    let mut expected = reference.forward(&prompt, 0);
    let mut got = logits(&mut ours, &prompt, 0);
    for (step, pos) in (prompt.len()..).enumerate().take(12) {
        let diff = max_abs_diff(&expected, &got);
        assert!(diff < 1e-4, "{arch:?} step {step}: logits differ by {diff}");
        let next = argmax(&expected);
        expected = reference.forward(&[next], pos);
        got = logits(&mut ours, &[next], pos);
    }
}

#[test]
fn llama_logits_match_candle_transformers() {
    assert_tiny_matches(Arch::Llama);
}

#[test]
fn qwen2_with_grouped_query_heads_matches_candle_transformers() {
    assert_tiny_matches(Arch::Qwen2);
}

/// Prompts longer than a prefill chunk go through the layers a chunk at a time; the reference
/// takes them whole.
#[test]
fn a_prompt_of_several_chunks_gives_the_logits_of_one_pass() {
    let (_dir, path) = tiny(5, Arch::Qwen2);
    let mut ours = load(&path, false);
    let mut reference = Reference::load(&path);
    let prompt = ours
        .encode(&"what did the guest say about agents and pricing? ".repeat(60))
        .unwrap();
    assert!(prompt.len() > 512, "{} tokens", prompt.len());
    let diff = max_abs_diff(
        &reference.forward(&prompt, 0),
        &logits(&mut ours, &prompt, 0),
    );
    assert!(diff < 1e-4, "logits differ by {diff}");
}

#[test]
fn a_reused_prefix_gives_the_logits_of_a_fresh_prefill() {
    let (_dir, path) = tiny(8, Arch::Qwen2);
    let mut model = load(&path, false);
    let first = model
        .encode("<|im_start|>system\nshared rules<|im_end|>\n<|im_start|>user\nfirst question")
        .unwrap();
    let second = model
        .encode("<|im_start|>system\nshared rules<|im_end|>\n<|im_start|>user\nanother one")
        .unwrap();
    model.prefill(&first).unwrap();
    let (reused_logits, reused) = model.prefill(&second).unwrap();
    assert!(
        reused > 5,
        "the shared system turn is reused, got {reused} tokens"
    );

    let mut fresh = load(&path, false);
    let expected = logits(&mut fresh, &second, 0);
    let diff = max_abs_diff(&expected, &reused_logits.to_vec1::<f32>().unwrap());
    assert!(diff < 1e-4, "reused prefix changes the logits by {diff}");
}

#[test]
fn the_same_prompt_twice_still_computes_its_last_token() {
    let (_dir, path) = tiny(9, Arch::Llama);
    let mut model = load(&path, false);
    let prompt = model.encode("hello there").unwrap();
    let (once, _) = model.prefill(&prompt).unwrap();
    let (twice, reused) = model.prefill(&prompt).unwrap();
    assert_eq!(reused, prompt.len() - 1);
    let diff = max_abs_diff(
        &once.to_vec1::<f32>().unwrap(),
        &twice.to_vec1::<f32>().unwrap(),
    );
    assert!(
        diff < 1e-4,
        "recomputing the last token changes the logits by {diff}"
    );
}

/// A first run computes and stores the system turn; a later one reads it back. Both must then
/// compute the rest of a long prompt in the same chunks, or the last bits (and a near-tie greedy
/// choice) could differ between the first answer to a question and the next.
fn assert_first_run_repeats(run: impl Fn(&mut Model, &[u32]) -> (candle_core::Tensor, usize)) {
    let (dir, path) = tiny(13, Arch::Llama);
    let cache = dir.path().join("prefixes");
    let mut first = load_caching(&path, false, Some(&cache));
    let head = first
        .encode(&format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}",
            "answer from the excerpts only. ".repeat(30),
            "what did the guest say about agents and pricing? ".repeat(30)
        ))
        .unwrap();
    let (on_first_run, reused) = run(&mut first, &head);
    assert_eq!(reused, 0);
    let (on_later_run, reused) = run(&mut load_caching(&path, false, Some(&cache)), &head);
    assert!(reused > 0, "the stored system turn is reused");
    let diff = max_abs_diff(
        &on_first_run.to_vec1::<f32>().unwrap(),
        &on_later_run.to_vec1::<f32>().unwrap(),
    );
    assert_eq!(diff, 0.0, "the first run's logits differ by {diff}");
}

#[test]
fn a_system_turn_computed_after_another_prompt_is_what_a_fresh_model_computes() {
    let (dir, path) = tiny(13, Arch::Llama);
    let prompt = |model: &Model, instruction: &str| {
        model
            .encode(&format!(
                "<|im_start|>system\nYou {}<|im_end|>\n<|im_start|>user\nagents?<|im_end|>\n",
                instruction.repeat(30)
            ))
            .unwrap()
    };
    // Each model stores its system turns in a folder of its own, so nothing is read back.
    let mut after_another = load_caching(&path, false, Some(&dir.path().join("a")));
    let judge = prompt(&after_another, "judge whether the excerpt answers. ");
    let answer = prompt(&after_another, "answer from the excerpts only. ");
    after_another.prefill(&judge).unwrap();
    let (got, _) = after_another.prefill(&answer).unwrap();
    let mut fresh = load_caching(&path, false, Some(&dir.path().join("b")));
    let (expected, _) = fresh.prefill(&answer).unwrap();
    let diff = max_abs_diff(
        &expected.to_vec1::<f32>().unwrap(),
        &got.to_vec1::<f32>().unwrap(),
    );
    assert_eq!(
        diff, 0.0,
        "the logits depend on the prompt before by {diff}"
    );
}

#[test]
fn the_first_run_of_a_long_prompt_computes_what_later_runs_compute() {
    assert_first_run_repeats(|model, head| {
        let end = model.encode("<|im_end|>\n").unwrap();
        model.prefill(&[head, &end].concat()).unwrap()
    });
}

#[test]
fn the_first_run_of_long_prompt_pieces_computes_what_later_runs_compute() {
    assert_first_run_repeats(|model, head| {
        let piece = model.encode("[T1] Guest: agents.\n\n").unwrap();
        let tail = model.encode("<|im_end|>\n").unwrap();
        model.prefill_pieces(head, &[piece], &tail).unwrap()
    });
}

#[test]
fn a_kept_first_exchange_is_reused_by_the_next_question_and_changes_no_bit() {
    let (dir, path) = tiny(14, Arch::Qwen2);
    let shared = dir.path().join("shared");
    let prompt = |model: &Model, exchanges: &[&str], question: &str| {
        let head = model
            .encode("<|im_start|>system\nrules<|im_end|>\n<|im_start|>user\nexcerpts:\n\n")
            .unwrap();
        let first = model.encode(exchanges[0]).unwrap();
        let kept = head.len() + first.len();
        let rest: Vec<u32> = exchanges[1..]
            .iter()
            .flat_map(|e| model.encode(e).unwrap())
            .chain(model.encode(question).unwrap())
            .collect();
        ([head, first, rest].concat(), kept)
    };
    let a = "[T1] Host: what about agents?\n[T2] Guest: they will do long tasks.\n\n";
    let mut first = load_caching(&path, false, Some(&shared));
    let (one, kept) = prompt(
        &first,
        &[a, "[T5] Guest: pricing.\n\n"],
        "Question: agents?",
    );
    let (_, reused) = first.prefill_keeping(&one, kept).unwrap();
    assert_eq!(reused, 0);

    // Another question given the same first exchange, in the next process.
    let (two, kept) = prompt(
        &first,
        &[a, "[T9] Guest: open source.\n\n"],
        "Question: tasks?",
    );
    let (got, reused) = load_caching(&path, false, Some(&shared))
        .prefill_keeping(&two, kept)
        .unwrap();
    assert_eq!(
        reused, kept,
        "the system turn and the first exchange are reused"
    );
    let (expected, reused) = load_caching(&path, false, Some(&dir.path().join("fresh")))
        .prefill_keeping(&two, kept)
        .unwrap();
    assert_eq!(reused, 0);
    assert_eq!(
        expected.to_vec1::<f32>().unwrap(),
        got.to_vec1::<f32>().unwrap(),
        "a reused first exchange gives other logits than its first run"
    );
    let (plain, _) = load(&path, false).prefill(&two).unwrap();
    let diff = max_abs_diff(&plain.to_vec1().unwrap(), &got.to_vec1().unwrap());
    assert!(diff < 1e-4, "keeping a part changes the logits by {diff}");
}

#[test]
fn a_system_turn_computed_once_is_reused_by_the_next_process_and_survives_damage() {
    let (dir, path) = tiny(10, Arch::Qwen2);
    let cache = dir.path().join("prefixes");
    let text =
        "<|im_start|>system\nthe same rules every time<|im_end|>\n<|im_start|>user\nq<|im_end|>\n";
    let mut first = load_caching(&path, false, Some(&cache));
    let prompt = first.encode(text).unwrap();
    let (expected, reused) = first.prefill(&prompt).unwrap();
    assert_eq!(reused, 0);
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one system turn stored");

    let mut second = load_caching(&path, false, Some(&cache));
    let (logits, reused) = second.prefill(&prompt).unwrap();
    let system_turn = first
        .encode("<|im_start|>system\nthe same rules every time<|im_end|>\n")
        .unwrap()
        .len();
    assert_eq!(reused, system_turn);
    let diff = max_abs_diff(&expected.to_vec1().unwrap(), &logits.to_vec1().unwrap());
    assert!(
        diff < 1e-4,
        "a stored system turn changes the logits by {diff}"
    );

    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&files[0], &bytes).unwrap();
    let mut third = load_caching(&path, false, Some(&cache));
    let (logits, reused) = third.prefill(&prompt).unwrap();
    assert_eq!(reused, 0, "a damaged entry is recomputed, not used");
    let diff = max_abs_diff(&expected.to_vec1().unwrap(), &logits.to_vec1().unwrap());
    assert!(diff < 1e-4);
    let (_, reused) = load_caching(&path, false, Some(&cache))
        .prefill(&prompt)
        .unwrap();
    assert_eq!(
        reused, system_turn,
        "the recomputed entry replaces the damaged one"
    );
}

#[test]
fn turn_pieces_alone_equal_a_plain_prefill_and_are_reused_wherever_they_land() {
    let (_dir, path) = tiny(12, Arch::Qwen2);
    let fresh = || load(&path, false);
    let mut model = fresh();
    let head = model
        .encode("<|im_start|>system\nrules<|im_end|>\n<|im_start|>user\nexcerpts:\n\n")
        .unwrap();
    let a = model.encode("[T1] Host: what now?\n\n").unwrap();
    let b = model.encode("[T2] Guest: something else.\n\n").unwrap();
    let tail = model.encode("Question: what?<|im_end|>\n").unwrap();

    // One piece sees the head and itself, exactly as in a plain prefill.
    let plain: Vec<u32> = [&head[..], &a, &tail].concat();
    let (expected, _) = fresh().prefill(&plain).unwrap();
    let (got, reused) = model
        .prefill_pieces(&head, std::slice::from_ref(&a), &tail)
        .unwrap();
    assert_eq!(reused, 0);
    let diff = max_abs_diff(&expected.to_vec1().unwrap(), &got.to_vec1().unwrap());
    assert!(
        diff < 1e-4,
        "a single piece differs from the plain prefill by {diff}"
    );

    // `a`, stored at the first position after the head, is reused behind `b`, and so is the
    // head the cache holds from the last piece-wise prompt: a first run computes the head in the
    // same chunks, so the logits are the same bits.
    let (got, reused) = model
        .prefill_pieces(&head, &[b.clone(), a.clone()], &tail)
        .unwrap();
    assert_eq!(reused, head.len() + a.len());
    let (expected, _) = fresh()
        .prefill_pieces(&head, &[b.clone(), a.clone()], &tail)
        .unwrap();
    assert_eq!(
        expected.to_vec1::<f32>().unwrap(),
        got.to_vec1::<f32>().unwrap()
    );

    // Pieces put together are not what a plain prefill computes: the same tokens as a plain
    // prompt are recomputed past the system turn.
    let (_, reused) = model.prefill(&[&head[..], &b, &a, &tail].concat()).unwrap();
    let system_turn = model
        .encode("<|im_start|>system\nrules<|im_end|>\n")
        .unwrap();
    assert_eq!(reused, system_turn.len());
    // Nor does the next piece-wise prompt take the head from what the plain prompt left: it
    // reads back the head as the first piece-wise prompt kept it, whole, so that a later process
    // computes none of it, and gets the bits a fresh model computes.
    let (got, reused) = model
        .prefill_pieces(&head, std::slice::from_ref(&a), &tail)
        .unwrap();
    assert_eq!(reused, head.len() + a.len());
    let (expected, _) = fresh()
        .prefill_pieces(&head, std::slice::from_ref(&a), &tail)
        .unwrap();
    assert_eq!(
        expected.to_vec1::<f32>().unwrap(),
        got.to_vec1::<f32>().unwrap()
    );
}

#[test]
fn pieces_continued_in_one_batch_give_what_each_gives_alone() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let (_dir, path) = tiny(31, arch);
        let mut model = load(&path, false);
        let head = model
            .encode("<|im_start|>system\nrules<|im_end|>\n<|im_start|>user\nexcerpt:\n\n")
            .unwrap();
        let pieces: Vec<Vec<u32>> = [
            "[T1] Host: what now?\n\n",
            "[T2] Guest: something else entirely, at some length.\n\n",
            "[T3] Guest: agents.\n\n",
            "[T1] Host: what now?\n\n[T2] Guest: something else.\n\n",
            "[T7] Guest: pricing, and then a longer answer about open source.\n\n",
            "[T9] Host: why?\n\n",
        ]
        .iter()
        .map(|p| model.encode(p).unwrap())
        .collect();
        // Long enough that the six tails take two passes.
        let tail = model
            .encode("Question: what did the guest say about the thing the host asked?<|im_end|>\n")
            .unwrap();
        assert!(tail.len() * pieces.len() > 256);

        let together = model.prefill_branches(&head, &pieces, &tail).unwrap();
        assert_eq!(together.len(), pieces.len());
        for (piece, got) in pieces.iter().zip(&together) {
            let (alone, _) = load(&path, false)
                .prefill_pieces(&head, std::slice::from_ref(piece), &tail)
                .unwrap();
            assert_eq!(
                alone.to_vec1::<f32>().unwrap(),
                got.to_vec1::<f32>().unwrap(),
                "{arch:?}: a piece judged in the batch differs from the piece alone"
            );
        }

        // What the batch leaves in the cache changes nothing for the next prompt.
        let plain: Vec<u32> = [&head[..], &pieces[1], &tail].concat();
        let (after, _) = model.prefill(&plain).unwrap();
        let (fresh, _) = load(&path, false).prefill(&plain).unwrap();
        assert_eq!(
            fresh.to_vec1::<f32>().unwrap(),
            after.to_vec1::<f32>().unwrap()
        );
    }
}

/// The real quantized models, teacher-forced along the reference's greedy tokens. Activations
/// are rounded to 8 bits before every quantized matmul, in blocks of 32 by the reference and of
/// 256 by the fast kernels tqa's padded matrices reach, and a different (equally exact) order of
/// float additions does the rest: the chosen token's log-probability moves by up to about 0.35.
/// So it must stay within `NOISE` of the reference's, and the greedy choice must agree wherever
/// the reference's top two are further apart than two such moves.
fn assert_real_model_matches(name: &str) {
    const NOISE: f32 = 0.75;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let source = runtime.block_on(tqa::model::resolve(Some(name))).unwrap();
    let mut ours = load(&source.path, source.optimize);
    // Load the reference from the file ours actually read (the Q8_0 copy, when optimized).
    let mut reference = Reference::load(&ours.info.path.clone());
    let prompt = ours
        .encode("<|im_start|>user\nName three things people use interviews for.<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let (mut expected, mut got) = (reference.forward(&prompt, 0), logits(&mut ours, &prompt, 0));
    let mut clear_choices = 0;
    for pos in prompt.len()..prompt.len() + 48 {
        let next = argmax(&expected);
        let shift = (log_probability(&got, next) - log_probability(&expected, next)).abs();
        assert!(
            shift < NOISE,
            "{name} at {pos}: the chosen token's log-probability moved by {shift}"
        );
        let mut sorted = expected.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 2.0 * NOISE {
            clear_choices += 1;
            assert_eq!(
                argmax(&got),
                next,
                "{name} at {pos}: a different greedy token"
            );
        }
        expected = reference.forward(&[next], pos);
        got = logits(&mut ours, &[next], pos);
    }
    assert!(
        clear_choices >= 16,
        "{name}: only {clear_choices} clear choices to compare"
    );
}

#[test]
fn smollm2_makes_the_greedy_choices_of_candle_transformers() {
    assert_real_model_matches("smollm2-135m");
}

#[test]
fn default_qwen2_model_makes_the_greedy_choices_of_candle_transformers() {
    assert_real_model_matches("qwen2.5-coder-1.5b");
}
