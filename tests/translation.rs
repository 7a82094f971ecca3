//! The transcript's turns translated by the model: once, then read back from the cache; a
//! damaged cache file is translated again, not trusted.
mod common;

use std::path::Path;

use common::Behaviour;
use tqa::answer::translate::translate_turns;
use tqa::answer::Prompts;
use tqa::model::Model;
use tqa::transcript::{Language, Transcript};

/// The translated texts and how many pieces were translated (0: all read from the cache).
fn translate(model: &mut Model, transcript: &Transcript, cache: &Path) -> (Vec<String>, usize) {
    // The tiny model's tokens are bytes: a short instruction keeps its prompts short.
    let prompts = Prompts {
        translate_turn: "Translate into {language}.".into(),
        ..Prompts::default()
    };
    let mut translated = 0;
    let turns = translate_turns(
        model,
        &prompts,
        &transcript.turns,
        Language::Zh,
        Some(cache),
        &mut |done, _| translated = done,
    )
    .expect("translation");
    (turns.into_iter().map(|t| t.text).collect(), translated)
}

#[test]
fn a_translation_is_computed_once_and_a_damaged_cache_is_not_trusted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = common::load_model(&common::tiny_model(dir.path(), Behaviour::Random(5)));
    let transcript = Transcript::parse(
        "Host: Agents?\n\nGuest: They run tasks. They cost compute.",
        Path::new("t.txt"),
    )
    .expect("transcript");
    let cache = dir.path().join("cache");

    let (first, pieces) = translate(&mut model, &transcript, &cache);
    assert_eq!(first.len(), transcript.turns.len());
    assert_eq!(pieces, 2, "one piece per short turn");
    let files: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");

    let (again, pieces) = translate(&mut model, &transcript, &cache);
    assert_eq!((again, pieces), (first.clone(), 0), "read from the cache");

    std::fs::write(&files[0], b"{\"language\":\"zh\",\"texts\":[\"cut").expect("damage");
    let (rebuilt, pieces) = translate(&mut model, &transcript, &cache);
    assert_eq!(
        (rebuilt, pieces),
        (first, 2),
        "translated again, the same way"
    );
}
