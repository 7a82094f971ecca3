//! The views of the shipped transcript that ship with tqa (`data/views`: its turns in English and
//! the questions they answer) are what the default model writes: computed again here, piece by
//! piece, they must agree. With `TQA_REFRESH_SHIPPED_VIEWS=1` this test writes them instead,
//! after a change to the default model, the prompts or the way pieces are cut.
mod common;

use std::collections::HashMap;
use std::path::Path;

use tqa::answer::translate::{self, View, ViewStore};
use tqa::answer::Prompts;
use tqa::model::Model;
use tqa::transcript::{Language, Transcript};

/// Pieces that a change to the kernels may reword at a near tie, out of ~100 per view: greedy
/// decoding on another CPU rounds some sums differently.
const MAX_REWORDED: f64 = 0.1;

#[test]
fn the_shipped_views_are_what_the_default_model_writes() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let source = runtime
        .block_on(tqa::model::resolve(None))
        .expect("the default model (models/fetch qwen2.5-coder-1.5b)");
    let mut model = Model::load(&source, &common::test_device()).expect("model loads");
    let transcript = Transcript::load(&common::shipped_transcript()).expect("shipped transcript");
    let refresh = std::env::var_os("TQA_REFRESH_SHIPPED_VIEWS").is_some();
    for (view, language) in [
        (View::Translation, Language::En),
        (View::Questions, transcript.language()),
    ] {
        let cache = tempfile::tempdir().expect("temp dir");
        let written = written_pieces(&mut model, &transcript, view, language, cache.path());
        let shipped = translate::shipped_dir().join(translate::shipped_name(
            &model,
            &Prompts::default(),
            view,
            language,
        ));
        if refresh {
            std::fs::create_dir_all(translate::shipped_dir()).expect("data/views");
            std::fs::copy(&written, &shipped).expect("write the shipped view");
            continue;
        }
        let (computed, shipped_pieces) = (pieces_in(&written), pieces_in(&shipped));
        let mut keys: Vec<_> = computed.keys().collect();
        keys.sort();
        let mut shipped_keys: Vec<_> = shipped_pieces.keys().collect();
        shipped_keys.sort();
        assert_eq!(
            keys, shipped_keys,
            "{view:?}: the shipped file has other pieces"
        );
        let reworded = computed
            .iter()
            .filter(|(key, text)| shipped_pieces.get(*key) != Some(*text))
            .count();
        assert!(
            (reworded as f64) <= MAX_REWORDED * computed.len() as f64,
            "{view:?}: {reworded} of {} pieces differ from {}; if the model, prompts or pieces \
             changed, run TQA_REFRESH_SHIPPED_VIEWS=1 cargo test --release --test views",
            computed.len(),
            shipped.display()
        );
    }
}

/// Writes `view` of every turn into a cache folder of its own, without the shipped pieces, and
/// returns the file it wrote.
fn written_pieces(
    model: &mut Model,
    transcript: &Transcript,
    view: View,
    language: Language,
    cache: &Path,
) -> std::path::PathBuf {
    let store = ViewStore {
        cache: Some(cache),
        shipped: None,
    };
    translate::rewrite(
        model,
        &Prompts::default(),
        view,
        &transcript.turns,
        language,
        store,
        &mut |_, _| {},
    )
    .expect("rewriting");
    let mut files = std::fs::read_dir(cache).expect("cache folder");
    files.next().expect("one file").expect("cache entry").path()
}

/// A view file's pieces: their keys and texts.
fn pieces_in(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; write it with TQA_REFRESH_SHIPPED_VIEWS=1 cargo test --release --test views",
            path.display()
        )
    });
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let piece: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let field = |name: &str| piece[name].as_str().expect("a text field").to_string();
            (field("piece"), field("text"))
        })
        .collect()
}
