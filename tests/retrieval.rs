mod common;

use std::path::PathBuf;

use tqa::eval::{evaluate_retrieval, load_set};
use tqa::retrieval::Index;
use tqa::transcript::Transcript;

/// The passage vectors are cached under target/ so the suite embeds the transcript once.
fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("embeddings")
}

/// Floors just under the measured quality of the hybrid retriever on the dev set: a change that
/// loses hits in either language fails here.
#[test]
fn gold_turns_rank_in_the_top_5_in_both_languages() {
    let index = common::hybrid_index(&cache_dir());
    let items = load_set(&common::dev_set()).unwrap();
    let report = evaluate_retrieval(&items, &mut |i| Ok(index.rank(&[&i.question])?)).unwrap();
    let hits = |lang: &str| {
        let m = &report.by_language[lang];
        (m.hit_at_5 * m.items as f64).round() as usize
    };
    assert!(hits("en") + hits("zh") >= 10);
    assert!(
        report.by_language["en"].hit_at_5 >= 0.70,
        "{:?}",
        report.by_language["en"]
    );
    assert!(
        report.by_language["zh"].hit_at_5 >= 0.80,
        "{:?}",
        report.by_language["zh"]
    );
    assert!(report.overall.mrr >= 0.45, "{:?}", report.overall);
    assert!(report.overall.hit_at_3 >= 0.60, "{:?}", report.overall);
}

#[test]
fn lexical_retrieval_alone_finds_chinese_questions() {
    let index = Index::build(&Transcript::load(&common::shipped_transcript()).unwrap());
    let items = load_set(&common::dev_set()).unwrap();
    let report = evaluate_retrieval(&items, &mut |i| Ok(index.rank(&[&i.question])?)).unwrap();
    assert!(
        report.by_language["zh"].hit_at_5 >= 0.45,
        "{:?}",
        report.by_language["zh"]
    );
    assert_eq!(report.overall.items, 33);
    assert_eq!(report.by_speaker["Sam Altman"].items, 28);
    let missed = 33.0 * (1.0 - report.overall.hit_at_5);
    assert_eq!(report.missed.len(), missed.round() as usize);
    assert_eq!(report.gold_ranks.len(), 33);
    let beyond_five = report
        .gold_ranks
        .values()
        .filter(|rank| rank.is_none_or(|r| r > 5))
        .count();
    assert_eq!(beyond_five, report.missed.len());
}

#[test]
fn second_index_build_reads_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let first = common::hybrid_index(dir.path());
    let second = common::hybrid_index(dir.path());
    assert!(!first.dense().unwrap().from_cache);
    assert!(second.dense().unwrap().from_cache);
    let q = "What did Altman say about agents?";
    let ids = |i: &Index| {
        i.rank(&[q])
            .unwrap()
            .iter()
            .take(5)
            .map(|r| r.turn.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ids(&second));
}

#[test]
fn a_damaged_cache_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    common::hybrid_index(dir.path());
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::write(&path, b"TQAE garbage").unwrap();
    }
    let rebuilt = common::hybrid_index(dir.path());
    assert!(!rebuilt.dense().unwrap().from_cache);
    let again = common::hybrid_index(dir.path());
    assert!(again.dense().unwrap().from_cache);
}

#[test]
fn english_question_about_agents_finds_the_chinese_turns_on_agents() {
    let index = common::hybrid_index(&cache_dir());
    let hits = index
        .search(&["What did Altman say about agents?"], 3)
        .unwrap();
    assert!(
        hits.iter().any(|h| h.turn.text.contains("代理")),
        "{hits:?}"
    );
    assert_eq!(hits[0].turn.speaker, "Sam Altman");
}

#[test]
fn search_pairs_answers_with_their_questions() {
    let index = Index::build(&Transcript::load(&common::shipped_transcript()).unwrap());
    let hits = index.search(&["代理 长期任务 监督"], 1).unwrap();
    assert_eq!(hits.len(), 2, "the best turn should bring its partner");
    assert_ne!(hits[0].turn.speaker, hits[1].turn.speaker);
    let a: usize = hits[0].turn.id[1..].parse().unwrap();
    let b: usize = hits[1].turn.id[1..].parse().unwrap();
    assert_eq!(a.abs_diff(b), 1);
}
