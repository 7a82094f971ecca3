//! The transcript's turns translated by the answering model, so that retrieval can also match a
//! question against the turns in the question's own language: an English question and an
//! English rendering of a Chinese turn share words ("the most unusual thing") where the
//! embedder alone, across languages, often misses.
//!
//! The same machinery writes the questions each turn answers (`questions_for_turns`), another
//! view of the turns that retrieval matches questions against.
//!
//! Either costs minutes of generation, so it is done once per transcript, model and prompt, and
//! kept in the cache folder.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{instructed_prompt, language_name, AnswerError, Prompts};
use crate::model::generate::generate_side_by_side;
use crate::model::{Model, SamplingConfig};
use crate::retrieval::dense::split_passages;
use crate::transcript::{Language, Turn};

/// Longest piece translated at once: a small model translating a long turn in one go drops
/// sentences.
const PIECE_CHARS: usize = 320;

/// How many pieces are rewritten side by side (`generate_side_by_side`): on this machine kind a
/// pass of 8 rows runs 5.4 times the tokens per second of a pass of one (`tqa bench --prefill
/// 1,8`). Each needs cache room for its prompt and longest reply, ~1,000 positions: ~460 MB
/// for the default model while the rewriting runs.
const SIDE_BY_SIDE: usize = 8;

#[derive(Serialize, Deserialize)]
struct CachedTranslation {
    language: Language,
    texts: Vec<String>,
}

/// `turns` with their texts in `to`, read from `cache_dir` when an earlier run translated the
/// same turns with the same model and prompt. `on_progress(done, total)` is called before the
/// first piece is translated (`done` = 0: the slow path runs, tell the user) and after each one.
pub fn translate_turns(
    model: &mut Model,
    prompts: &Prompts,
    turns: &[Turn],
    to: Language,
    cache_dir: Option<&Path>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Turn>, AnswerError> {
    let instruction = prompts
        .translate_turn
        .replace("{language}", language_name(to));
    rewrite_turns(
        model,
        "translation",
        &instruction,
        turns,
        to,
        cache_dir,
        on_progress,
    )
}

/// `turns` with their texts replaced by the questions each piece of them answers, written by the
/// model in `language` (the transcript's own). A question about a turn tends to be worded like
/// the questions the turn answers, not like the turn itself ("compared with a normal company…"
/// against "a normal company can take its time…"); cached like a translation.
pub fn questions_for_turns(
    model: &mut Model,
    prompts: &Prompts,
    turns: &[Turn],
    language: Language,
    cache_dir: Option<&Path>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Turn>, AnswerError> {
    let instruction = prompts
        .turn_questions
        .replace("{language}", language_name(language));
    rewrite_turns(
        model,
        "questions",
        &instruction,
        turns,
        language,
        cache_dir,
        on_progress,
    )
}

/// Each turn's pieces rewritten by the model as `instruction` says, into `to`, joined again per
/// turn; read from `cache_dir` when an earlier run did the same with the same model. `kind` names
/// the cache file and the warning about a damaged one.
fn rewrite_turns(
    model: &mut Model,
    kind: &str,
    instruction: &str,
    turns: &[Turn],
    to: Language,
    cache_dir: Option<&Path>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Turn>, AnswerError> {
    let path = cache_dir.map(|dir| dir.join(cache_name(model, kind, instruction, turns)));
    if let Some(texts) = path
        .as_deref()
        .and_then(|p| read_cache(p, kind, to, turns.len()))
    {
        return Ok(with_texts(turns, texts));
    }
    let pieces: Vec<Vec<String>> = turns
        .iter()
        .map(|t| split_passages(&t.text, PIECE_CHARS))
        .collect();
    let all: Vec<&String> = pieces.iter().flatten().collect();
    let prompts = all
        .iter()
        .map(|piece| instructed_prompt(model, instruction, piece))
        .collect::<Result<Vec<_>, _>>()?;
    // An English rendering of Chinese takes about one token per character; the margin is for
    // the languages that take more.
    let limits: Vec<usize> = all.iter().map(|p| 2 * p.chars().count() + 32).collect();
    let total = all.len();
    let mut done = 0;
    on_progress(done, total);
    let replies = generate_side_by_side(
        model,
        &prompts,
        &limits,
        &SamplingConfig::default(),
        SIDE_BY_SIDE,
        &mut || {
            done += 1;
            on_progress(done, total);
        },
    )?;
    let mut replies = replies.into_iter().map(|reply| reply.trim().to_string());
    let texts: Vec<String> = pieces
        .iter()
        .map(|turn_pieces| {
            let rewritten: Vec<String> = replies.by_ref().take(turn_pieces.len()).collect();
            rewritten.join(" ")
        })
        .collect();
    if let Some(path) = &path {
        write_cache(path, to, &texts)?;
    }
    Ok(with_texts(turns, texts))
}

fn with_texts(turns: &[Turn], texts: Vec<String>) -> Vec<Turn> {
    turns
        .iter()
        .zip(texts)
        .map(|(turn, text)| Turn {
            text,
            ..turn.clone()
        })
        .collect()
}

/// The model is named by its file's name and size: the same weights fetched into another folder
/// translate the same way, and hashing a gigabyte would cost more than reading the cache saves.
fn cache_name(model: &Model, kind: &str, instruction: &str, turns: &[Turn]) -> String {
    let file = model
        .info
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model_id = format!("{file}|{}", model.info.file_bytes);
    let pieces = PIECE_CHARS.to_le_bytes();
    // Replies generated side by side may differ from those generated alone at near ties.
    let mut parts: Vec<&[u8]> = vec![
        model_id.as_bytes(),
        instruction.as_bytes(),
        &pieces,
        b"side by side",
    ];
    parts.extend(turns.iter().map(|t| t.text.as_bytes()));
    crate::cache::content_name(kind, &parts).replace(".bin", ".json")
}

fn read_cache(path: &Path, kind: &str, to: Language, turn_count: usize) -> Option<Vec<String>> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<CachedTranslation>(&bytes) {
        Ok(cached) if cached.language == to && cached.texts.len() == turn_count => {
            Some(cached.texts)
        }
        _ => {
            eprintln!(
                "warning: {kind} cache {} is damaged; writing it again",
                path.display()
            );
            None
        }
    }
}

fn write_cache(path: &Path, language: Language, texts: &[String]) -> Result<(), AnswerError> {
    let cached = CachedTranslation {
        language,
        texts: texts.to_vec(),
    };
    let json = serde_json::to_vec(&cached).map_err(std::io::Error::other);
    json.and_then(|bytes| crate::cache::write_bytes(path, &bytes))
        .map_err(|source| AnswerError::CacheWrite {
            path: path.to_path_buf(),
            source,
        })
}
