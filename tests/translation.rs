//! The transcript's turns translated by the model, and the questions they answer: each piece
//! once, then read back from the cache; a run stopped part way, an edited turn or a damaged cache
//! costs only the pieces they touch.
mod common;

use std::path::{Path, PathBuf};

use common::Behaviour;
use tqa::answer::translate::{questions_for_turns, translate_turns};
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

/// A tiny model, a two-turn transcript and a cache folder, all in a temporary folder.
fn setup() -> (tempfile::TempDir, Model, Transcript, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = common::load_model(&common::tiny_model(dir.path(), Behaviour::Random(5)));
    let transcript = Transcript::parse(
        "Host: Agents?\n\nGuest: They run tasks. They cost compute.",
        Path::new("t.txt"),
    )
    .expect("transcript");
    let cache = dir.path().join("cache");
    (dir, model, transcript, cache)
}

#[test]
fn a_translation_is_computed_once_and_a_damaged_cache_is_not_trusted() {
    let (_dir, mut model, transcript, cache) = setup();

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

    std::fs::write(&files[0], b"{\"piece\":\"cut").expect("damage");
    let (rebuilt, pieces) = translate(&mut model, &transcript, &cache);
    assert_eq!(
        (rebuilt, pieces),
        (first, 2),
        "translated again, the same way"
    );
}

/// Non-empty lines in the cache folder's files.
fn cached_lines(cache: &Path) -> usize {
    std::fs::read_dir(cache).map_or(0, |entries| {
        entries
            .map(|e| std::fs::read_to_string(e.expect("entry").path()).unwrap_or_default())
            .map(|text| text.lines().filter(|l| !l.trim().is_empty()).count())
            .sum()
    })
}

#[test]
fn a_run_stopped_part_way_or_an_edited_turn_costs_only_the_pieces_not_written() {
    let (_dir, mut model, transcript, cache) = setup();
    let prompts = Prompts {
        translate_turn: "Translate into {language}.".into(),
        ..Prompts::default()
    };
    // Each piece is in the cache as soon as it is done, before the run ends.
    let mut cached_as_done = Vec::new();
    let first: Vec<String> = translate_turns(
        &mut model,
        &prompts,
        &transcript.turns,
        Language::Zh,
        Some(&cache),
        &mut |done, _| cached_as_done.push((done, cached_lines(&cache))),
    )
    .expect("translation")
    .into_iter()
    .map(|t| t.text)
    .collect();
    assert_eq!(cached_as_done, [(0, 0), (1, 1), (2, 2)]);
    let file = std::fs::read_dir(&cache)
        .expect("cache folder")
        .next()
        .expect("a cache file")
        .expect("entry")
        .path();

    // Stopped while writing the second piece: its line is cut short.
    let log = std::fs::read_to_string(&file).expect("cache");
    let cut = log.trim_end().rfind('\n').expect("two lines") + 10;
    std::fs::write(&file, &log[..cut]).expect("cut");
    let (resumed, pieces) = translate(&mut model, &transcript, &cache);
    assert_eq!((resumed, pieces), (first.clone(), 1));

    let mut edited = transcript.clone();
    edited.turns[0].text = "Agents? And pricing?".into();
    let (texts, pieces) = translate(&mut model, &edited, &cache);
    assert_eq!(pieces, 1, "the edited turn only");
    assert_eq!(texts[1], first[1]);
}

#[test]
fn the_questions_turns_answer_are_cached_apart_from_their_translation() {
    let (_dir, mut model, transcript, cache) = setup();
    let prompts = Prompts {
        turn_questions: "Questions in {language}.".into(),
        ..Prompts::default()
    };
    let questions = |model: &mut Model| {
        let mut written = 0;
        let turns = questions_for_turns(
            model,
            &prompts,
            &transcript.turns,
            Language::En,
            Some(&cache),
            &mut |done, _| written = done,
        )
        .expect("questions");
        (
            turns.into_iter().map(|t| t.text).collect::<Vec<_>>(),
            written,
        )
    };
    let (first, pieces) = questions(&mut model);
    assert_eq!((first.len(), pieces), (2, 2));
    let (again, pieces) = questions(&mut model);
    assert_eq!((again, pieces), (first, 0), "read from the cache");

    let (_, translated) = translate(&mut model, &transcript, &cache);
    assert_eq!(translated, 2, "a translation is not the questions' cache");
    assert_eq!(std::fs::read_dir(&cache).expect("cache folder").count(), 2);
}
