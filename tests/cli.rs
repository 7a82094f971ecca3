//! The `tqa` binary: exit codes and messages for good and bad input.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Behaviour;

fn tqa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tqa"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run tqa")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exits non-zero, says `needle`, and does not panic.
fn assert_fails_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

fn small_transcript(dir: &Path) -> String {
    let path = dir.join("t.txt");
    std::fs::write(
        &path,
        "Host (00:01): What about agents?\n\nGuest (00:04): Agents will run long tasks with little supervision.\n",
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn missing_model_file() {
    let out = tqa(&[
        "ask",
        "What about agents?",
        "--model",
        "/nonexistent/model.gguf",
    ]);
    assert_fails_with(&out, "/nonexistent/model.gguf");
}

#[test]
fn unknown_model_name_lists_the_known_ones() {
    let out = tqa(&["ask", "What about agents?", "--model", "no-such-model"]);
    assert_fails_with(&out, "smollm2-135m");
}

#[test]
fn truncated_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(2));
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = tqa(&[
        "ask",
        "What about agents?",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_fails_with(&out, "truncated");
}

#[test]
fn a_model_file_cut_inside_its_header_is_reported_in_one_line_even_with_backtraces_on() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(2));
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..64]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tqa"))
        .args([
            "ask",
            "What about agents?",
            "--model",
            model.to_str().unwrap(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run tqa");
    assert_fails_with(&out, "fetch it again");
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn numbers_that_would_run_and_measure_or_answer_nothing_are_refused() {
    let cases: [&[&str]; 8] = [
        &["ask", "What about agents?", "-k", "0"],
        &["ask", "What about agents?", "--max-tokens", "0"],
        &["ask", "What about agents?", "--repeat-penalty", "0"],
        &["ask", "What about agents?", "--top-p", "2"],
        &["ask", "What about agents?", "--temperature", "-1"],
        &["search", "agents", "-k", "0", "--lexical"],
        &["bench", "--prefill", "128,0"],
        &["bench", "--reps", "0", "--threads", "0"],
    ];
    for args in cases {
        let out = tqa(args);
        let err = stderr(&out);
        assert_fails_with(&out, "invalid value");
        assert!(!err.contains("loaded in"), "{args:?} loaded a model: {err}");
    }
}

#[test]
fn a_tokenizer_file_that_cannot_be_used_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(2));
    let not_a_tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(&not_a_tokenizer, "{}").unwrap();
    for tokenizer in [Path::new("/nonexistent/tokenizer.json"), &not_a_tokenizer] {
        let out = tqa(&[
            "ask",
            "What about agents?",
            "--lexical",
            "--transcript",
            &small_transcript(dir.path()),
            "--model",
            model.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
        ]);
        assert_fails_with(&out, tokenizer.to_str().unwrap());
    }
}

#[test]
fn empty_question() {
    let out = tqa(&["ask", "   "]);
    assert_fails_with(&out, "question is empty");
}

#[test]
fn missing_transcript() {
    let out = tqa(&[
        "ask",
        "What about agents?",
        "--transcript",
        "/nonexistent/interview.md",
    ]);
    assert_fails_with(&out, "/nonexistent/interview.md");
    let err = stderr(&out);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

/// "主持人：你好" in GBK, as a Chinese Windows editor may save a transcript: not UTF-8.
fn gbk_transcript(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("bad.md");
    let bytes = [
        0xD6u8, 0xF7, 0xB3, 0xD6, 0xC8, 0xCB, 0xA3, 0xBA, 0xC4, 0xE3, 0xBA, 0xC3,
    ];
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn malformed_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let path = gbk_transcript(dir.path());
    let out = tqa(&["search", "agents", "--transcript", path.to_str().unwrap()]);
    assert_fails_with(&out, "not UTF-8");
}

#[test]
fn a_malformed_transcript_is_reported_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = gbk_transcript(dir.path());
    let out = tqa(&[
        "ask",
        "What about agents?",
        "--transcript",
        path.to_str().unwrap(),
        "--model",
        "/nonexistent/model.gguf",
    ]);
    assert_fails_with(&out, "not UTF-8");
}

#[test]
fn question_longer_than_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(2));
    // Within the length of a question, but three tokens a character for the tiny model.
    let question = "为什么".repeat(tqa::answer::MAX_QUESTION_CHARS / 3);
    let out = tqa(&[
        "ask",
        &question,
        "--model",
        model.to_str().unwrap(),
        "--transcript",
        &small_transcript(dir.path()),
    ]);
    assert_fails_with(&out, "context");
}

#[test]
fn search_prints_ranked_turns_as_json() {
    let out = tqa(&["search", "代理", "-k", "2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &hits[0];
    assert!(first["turn"]["id"].as_str().unwrap().starts_with('T'));
    assert!(first["score"].as_f64().unwrap() > 0.0);
    assert!(first["turn"]["text"].as_str().unwrap().contains("代理"));
}

/// What `tqa search --lexical "compute"` shows of a transcript file named `name` holding
/// `content`.
fn search_compute_in(name: &str, content: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    let out = tqa(&[
        "search",
        "compute",
        "--lexical",
        "--transcript",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn search_reads_a_subtitle_file_and_shows_where_each_turn_starts() {
    let shown = search_compute_in(
        "talk.vtt",
        "WEBVTT\n\n00:00:01.000 --> 00:00:04.000\n<v Harry Stebbings>What about pricing?\n\n\
         00:01:04.500 --> 00:01:09.000\n<v Sam Altman>Pricing will follow\n\n\
         00:01:09.000 --> 00:01:12.000\n<v Sam Altman>the cost of compute.\n",
    );
    assert!(
        shown.contains("[T2] Sam Altman (01:04) · score")
            && shown.contains("Pricing will follow the cost of compute.")
            && shown.contains("[T1] Harry Stebbings (00:01) · pairs with T2"),
        "{shown}"
    );
}

#[test]
fn search_reads_one_turn_per_line_without_blank_lines() {
    let shown = search_compute_in(
        "talk.txt",
        "Harry: What about pricing?\nSam: Pricing will follow the cost of compute.\nHarry: Thanks.\n",
    );
    assert!(
        shown.contains("[T2] Sam · score")
            && shown.contains("[T1] Harry · pairs with T2")
            && !shown.contains("Thanks"),
        "{shown}"
    );
}

/// `tqa ask` on a tiny model of random weights over a small transcript, 6 tokens at most.
fn ask_tiny_model(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(4));
    let transcript = small_transcript(dir.path());
    let mut args = vec![
        "ask",
        "What about agents?",
        "--model",
        model.to_str().unwrap(),
        "--transcript",
        &transcript,
        "--max-tokens",
        "6",
    ];
    args.extend_from_slice(extra);
    let out = tqa(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

#[test]
fn a_question_no_turn_matches_is_refused_without_asking_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(4));
    let transcript = small_transcript(dir.path());
    let ask = |extra: &[&str]| {
        let mut args = vec!["ask", "???", "--lexical", "--no-judge", "--transcript"];
        args.extend([transcript.as_str(), "--model", model.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = tqa(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let shown = String::from_utf8_lossy(&ask(&[]).stdout).into_owned();
    assert!(
        shown.contains("no turn of the transcript matches"),
        "{shown}"
    );
    let v: serde_json::Value = serde_json::from_slice(&ask(&["--json"]).stdout).unwrap();
    assert_eq!(v["answered"], false);
    assert_eq!(v["timings"]["generated_tokens"], 0);
}

#[test]
fn a_cache_folder_that_cannot_be_written_is_said_once_and_the_answer_still_comes() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(4));
    let transcript = small_transcript(dir.path());
    // A folder inside a file: not even root can make it.
    let cache = Path::new(&transcript).join("cache");
    let out = Command::new(env!("CARGO_BIN_EXE_tqa"))
        .args([
            "ask",
            "What about agents?",
            "--lexical",
            "--max-tokens",
            "4",
        ])
        .args([
            "--transcript",
            &transcript,
            "--model",
            model.to_str().unwrap(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("TQA_CACHE_DIR", &cache)
        .output()
        .expect("run tqa");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("TQA_CACHE_DIR"), "{err}");
}

#[test]
fn ask_json_on_a_tiny_model_reports_every_field() {
    let out = ask_tiny_model(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["question"], "What about agents?");
    assert!(v["answer"].is_string());
    assert!(v["citations"].is_array());
    assert!(v["quotes"].is_array());
    let turns: Vec<(&str, &str)> = v["retrieved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let turn = &r["turn"];
            (
                turn["id"].as_str().unwrap(),
                turn["start"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        turns.contains(&("T1", "00:01")) && turns.contains(&("T2", "00:04")),
        "{turns:?}"
    );
    for field in [
        "retrieval_ms",
        "time_to_first_token_ms",
        "prompt_tokens",
        "reused_prompt_tokens",
        "generated_tokens",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
    ] {
        assert!(v["timings"][field].is_number(), "timings.{field} missing");
    }
    // Random weights end no sentence: the reply runs to its limit and the room to finish one.
    assert_eq!(
        v["timings"]["generated_tokens"],
        6 + tqa::answer::room_to_finish_sentence(6)
    );
    assert_eq!(v["stop"], "token_limit");
}

#[test]
fn an_answer_cut_at_the_token_limit_says_so() {
    let out = ask_tiny_model(&[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("token limit"), "{shown}");
    assert!(shown.contains("--max-tokens"), "{shown}");
}

#[test]
fn bench_json_on_a_tiny_model_emits_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(6));
    let out = tqa(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--reps",
        "2",
        "--prefill",
        "16,64",
        "--depths",
        "0,32,1000000",
        "--decode-tokens",
        "8",
        "--json",
        "--transcript",
        &small_transcript(dir.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["model"]["load_time"].is_number());
    assert_eq!(v["prefill"].as_array().unwrap().len(), 2);
    assert_eq!(v["decode"].as_array().unwrap().len(), 2);
    assert!(
        stderr(&out).contains("decode at depth 1000000 not measured"),
        "a depth beyond the context is skipped, and said to be: {}",
        stderr(&out)
    );
    for p in v["prefill"].as_array().unwrap() {
        assert!(p["tokens_per_s"]["median"].as_f64().unwrap() > 0.0);
    }
    assert!(
        v["ask"]["time_to_first_token_ms"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        v["ask"]["time_to_first_token_reused_turns_ms"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(v["ask"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_question_too_long_to_be_one_is_refused_before_the_model_loads() {
    let pasted = "What did he say about agents and tools? ".repeat(40);
    let out = tqa(&["ask", &pasted, "--model", "/nonexistent/model.gguf"]);
    assert_fails_with(&out, "1599 characters long");
    assert!(!stderr(&out).contains("/nonexistent/model.gguf"));
}

#[test]
fn chat_answers_each_line_with_the_model_loaded_once() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), Behaviour::Random(8));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tqa"))
        .args([
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--transcript",
            &small_transcript(dir.path()),
            "--max-tokens",
            "4",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "What about agents?\n{}\nAnd about tasks?\n",
                "agents ".repeat(200)
            )
            .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("loaded in").count(), 1, "{err}");
    assert!(
        err.contains("characters long"),
        "a line too long to be a question is refused, and the conversation goes on: {err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers = stdout.matches("Sources:").count() + stdout.matches("(no turns cited)").count();
    assert_eq!(answers, 2, "{stdout}");
}
