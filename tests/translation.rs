//! The transcript's turns translated by the model, and the questions they answer: each piece
//! once, then read back from the cache; a run stopped part way, an edited turn or a damaged cache
//! costs only the pieces they touch.
mod common;

use std::path::{Path, PathBuf};

use common::Behaviour;
use tqa::answer::translate::{self, View, ViewStore};
use tqa::answer::Prompts;
use tqa::model::Model;
use tqa::transcript::{Language, Transcript};

/// The tiny model's tokens are bytes: short instructions keep its prompts short.
fn short_prompts() -> Prompts {
    Prompts {
        translate_turn: "Translate into {language}.".into(),
        turn_questions: "Questions in {language}.".into(),
        ..Prompts::default()
    }
}

/// The texts of `view` and how many pieces were written (0: all read from `store`).
fn rewritten(
    model: &mut Model,
    view: View,
    transcript: &Transcript,
    store: ViewStore,
) -> (Vec<String>, usize) {
    let mut written = 0;
    let turns = translate::rewrite(
        model,
        &short_prompts(),
        view,
        &transcript.turns,
        Language::Zh,
        store,
        &mut |done, _| written = done,
    )
    .expect("rewriting");
    (turns.into_iter().map(|t| t.text).collect(), written)
}

/// The translated texts and how many pieces were translated (0: all read from the cache).
fn translate(model: &mut Model, transcript: &Transcript, cache: &Path) -> (Vec<String>, usize) {
    let store = ViewStore {
        cache: Some(cache),
        shipped: None,
    };
    rewritten(model, View::Translation, transcript, store)
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
    // Each piece is in the cache as soon as it is done, before the run ends.
    let mut cached_as_done = Vec::new();
    let first: Vec<String> = translate::rewrite(
        &mut model,
        &short_prompts(),
        View::Translation,
        &transcript.turns,
        Language::Zh,
        ViewStore {
            cache: Some(&cache),
            shipped: None,
        },
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
    let store = ViewStore {
        cache: Some(&cache),
        shipped: None,
    };
    let (first, pieces) = rewritten(&mut model, View::Questions, &transcript, store);
    assert_eq!((first.len(), pieces), (2, 2));
    let (again, pieces) = rewritten(&mut model, View::Questions, &transcript, store);
    assert_eq!((again, pieces), (first, 0), "read from the cache");

    let (_, translated) = translate(&mut model, &transcript, &cache);
    assert_eq!(translated, 2, "a translation is not the questions' cache");
    assert_eq!(std::fs::read_dir(&cache).expect("cache folder").count(), 2);
}

#[test]
fn shipped_pieces_are_read_where_the_cache_has_none_and_never_written() {
    let (dir, mut model, transcript, cache) = setup();
    let (computed, _) = translate(&mut model, &transcript, &cache);
    // Ship what was computed, under the shipped name, and start again from an empty cache.
    let shipped = dir.path().join("shipped");
    std::fs::create_dir(&shipped).expect("shipped folder");
    let log = std::fs::read_dir(&cache)
        .expect("cache folder")
        .next()
        .expect("a cache file")
        .expect("entry")
        .path();
    let name = translate::shipped_name(&model, &short_prompts(), View::Translation, Language::Zh);
    std::fs::copy(&log, shipped.join(name)).expect("ship");
    std::fs::remove_dir_all(&cache).expect("empty the cache");
    let store = ViewStore {
        cache: Some(&cache),
        shipped: Some(&shipped),
    };
    let (texts, written) = rewritten(&mut model, View::Translation, &transcript, store);
    assert_eq!(
        (texts, written),
        (computed, 0),
        "read from the shipped pieces"
    );
    assert_eq!(cached_lines(&cache), 0, "nothing to write");

    // Other instructions do not read them.
    let (_, written) = rewritten(&mut model, View::Questions, &transcript, store);
    assert_eq!(written, 2);
}
