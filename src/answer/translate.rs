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

use super::{instructed_reply, language_name, AnswerError, Prompts};
use crate::model::{Model, SamplingConfig};
use crate::retrieval::dense::split_passages;
use crate::transcript::{Language, Turn};

/// Longest piece translated at once: a small model translating a long turn in one go drops
/// sentences.
const PIECE_CHARS: usize = 320;

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
    let total = pieces.iter().map(Vec::len).sum();
    let mut done = 0;
    on_progress(done, total);
    let mut texts = Vec::with_capacity(turns.len());
    for turn_pieces in &pieces {
        let mut rewritten = Vec::with_capacity(turn_pieces.len());
        for piece in turn_pieces {
            rewritten.push(rewrite_piece(model, instruction, piece)?);
            done += 1;
            on_progress(done, total);
        }
        texts.push(rewritten.join(" "));
    }
    if let Some(path) = &path {
        write_cache(path, to, &texts)?;
    }
    Ok(with_texts(turns, texts))
}

fn rewrite_piece(model: &mut Model, instruction: &str, piece: &str) -> Result<String, AnswerError> {
    let config = SamplingConfig {
        // An English rendering of Chinese takes about one token per character; the margin is
        // for the languages that take more.
        max_new_tokens: 2 * piece.chars().count() + 32,
        ..SamplingConfig::default()
    };
    instructed_reply(model, instruction, piece, &config)
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
    let mut parts: Vec<&[u8]> = vec![model_id.as_bytes(), instruction.as_bytes(), &pieces];
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
