//! The transcript's turns translated by the answering model, so that retrieval can also match a
//! question against the turns in the question's own language: an English question and an
//! English rendering of a Chinese turn share words ("the most unusual thing") where the
//! embedder alone, across languages, often misses.
//!
//! The same machinery writes the questions each turn answers ([`View::Questions`]), another
//! view of the turns that retrieval matches questions against.
//!
//! Either costs minutes of generation, so each piece is rewritten once per model and prompt and
//! kept in the cache folder as soon as it is written: a run stopped part way loses nothing, and
//! a transcript edited in one turn is rewritten in that turn only. The shipped transcript's
//! pieces come with tqa ([`shipped_dir`]).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// One line of a cache of rewritten pieces.
#[derive(Serialize, Deserialize)]
struct RewrittenPiece {
    /// `piece_key` of the piece's text.
    piece: String,
    text: String,
}

/// A view of the turns that the model writes.
#[derive(Debug, Clone, Copy)]
pub enum View {
    /// The turns translated into a language.
    Translation,
    /// The questions each turn answers, the way an interviewer would ask them: a question about
    /// a turn tends to be worded like them, not like the turn itself ("compared with a normal
    /// company…" against "a normal company can take its time…").
    Questions,
}

impl View {
    /// Names the view's files and the warning about a damaged one.
    fn kind(self) -> &'static str {
        match self {
            View::Translation => "translation",
            View::Questions => "questions",
        }
    }

    fn instruction(self, prompts: &Prompts, language: Language) -> String {
        let prompt = match self {
            View::Translation => &prompts.translate_turn,
            View::Questions => &prompts.turn_questions,
        };
        prompt.replace("{language}", language_name(language))
    }
}

/// Where rewritten pieces are kept: a cache folder, appended to as each piece is written, and
/// the pieces shipped with tqa (`shipped_dir`), read only.
#[derive(Debug, Clone, Copy)]
pub struct ViewStore<'a> {
    pub cache: Option<&'a Path>,
    pub shipped: Option<&'a Path>,
}

/// The pieces of the shipped transcript as the default model and the shipped prompts rewrite
/// them, so that the first question on a fresh machine does not wait minutes for them. Used
/// only where the model file, instruction and language are the same; the cache folder's own
/// pieces come first. `tests/views.rs` checks that the default model still writes them.
pub fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/views")
}

/// `turns` as `view` in `language`, each piece read from `store` when an earlier run wrote it
/// with the same model and prompt. `on_progress(done, total)` is called before the first piece
/// is written (`done` = 0: the slow path runs, tell the user) and after each one; `total` counts
/// the pieces not stored.
pub fn rewrite(
    model: &mut Model,
    prompts: &Prompts,
    view: View,
    turns: &[Turn],
    language: Language,
    store: ViewStore,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Turn>, AnswerError> {
    let instruction = view.instruction(prompts, language);
    rewrite_turns(
        model,
        view.kind(),
        &instruction,
        turns,
        language,
        store,
        on_progress,
    )
}

/// The name of the file in `shipped_dir` that holds `view` as `model` writes it with `prompts`.
pub fn shipped_name(model: &Model, prompts: &Prompts, view: View, language: Language) -> String {
    let instruction = view.instruction(prompts, language);
    file_name(model, view.kind(), &instruction, language, b"")
}

/// Each turn's pieces rewritten by the model as `instruction` says, into `to`, joined again per
/// turn; pieces an earlier run rewrote the same way, or shipped, are read from `store`.
fn rewrite_turns(
    model: &mut Model,
    kind: &str,
    instruction: &str,
    turns: &[Turn],
    to: Language,
    store: ViewStore,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Turn>, AnswerError> {
    // Each piece with its key in the cache.
    let pieces: Vec<Vec<(String, String)>> = turns
        .iter()
        .map(|t| {
            split_passages(&t.text, PIECE_CHARS)
                .into_iter()
                .map(|piece| (piece_key(&piece), piece))
                .collect()
        })
        .collect();
    let computation = model.computation();
    let log = store
        .cache
        .map(|dir| dir.join(file_name(model, kind, instruction, to, &computation)));
    let mut rewritten = log
        .as_deref()
        .map(|p| read_log(p, kind))
        .unwrap_or_default();
    if let Some(dir) = store.shipped {
        let shipped = read_log(
            &dir.join(file_name(model, kind, instruction, to, b"")),
            kind,
        );
        for (key, text) in shipped {
            rewritten.entry(key).or_insert(text);
        }
    }
    // A piece said twice ("是的。") is rewritten once.
    let mut seen = HashSet::new();
    let missing: Vec<&(String, String)> = pieces
        .iter()
        .flatten()
        .filter(|(key, _)| !rewritten.contains_key(key) && seen.insert(key))
        .collect();
    if !missing.is_empty() {
        let replies = rewrite_pieces(model, instruction, &missing, log.as_deref(), on_progress)?;
        rewritten.extend(missing.iter().map(|(key, _)| key.clone()).zip(replies));
    }
    let texts: Vec<String> = pieces
        .iter()
        .map(|turn_pieces| {
            let texts: Vec<&str> = turn_pieces
                .iter()
                .filter_map(|(key, _)| rewritten.get(key).map(String::as_str))
                .collect();
            texts.join(" ")
        })
        .collect();
    Ok(with_texts(turns, texts))
}

/// Rewrites `pieces` (each with its key), in order, side by side, appending each to the `log` as
/// it is done.
fn rewrite_pieces(
    model: &mut Model,
    instruction: &str,
    pieces: &[&(String, String)],
    log: Option<&Path>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<String>, AnswerError> {
    let prompts = pieces
        .iter()
        .map(|(_, piece)| instructed_prompt(model, instruction, piece))
        .collect::<Result<Vec<_>, _>>()?;
    // An English rendering of Chinese takes about one token per character; the margin is for
    // the languages that take more.
    let limits: Vec<usize> = pieces
        .iter()
        .map(|(_, piece)| 2 * piece.chars().count() + 32)
        .collect();
    let mut log = log.map(Log::open);
    let total = pieces.len();
    let mut done = 0;
    on_progress(done, total);
    let replies = generate_side_by_side(
        model,
        &prompts,
        &limits,
        &SamplingConfig::default(),
        SIDE_BY_SIDE,
        &mut |i, reply| {
            if let Some(log) = log.as_mut() {
                log.append(&pieces[i].0, reply.trim());
            }
            done += 1;
            on_progress(done, total);
        },
    )?;
    Ok(replies
        .into_iter()
        .map(|reply| reply.trim().to_string())
        .collect())
}

/// Names a piece in the cache by its text.
fn piece_key(piece: &str) -> String {
    crate::cache::short_hex(&Sha256::digest(piece.as_bytes()))
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
/// In the cache, what decides the last bits of its replies (`computation`: code, device,
/// kernels) names the file too; shipped files leave it empty, since they are to outlive changes
/// to the kernels that leave the replies alone.
fn file_name(
    model: &Model,
    kind: &str,
    instruction: &str,
    to: Language,
    computation: &[u8],
) -> String {
    let file = model
        .info
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model_id = format!("{file}|{}", model.info.file_bytes);
    let pieces = PIECE_CHARS.to_le_bytes();
    let language = language_name(to);
    // Replies generated side by side may differ from those generated alone at near ties.
    let parts: [&[u8]; 6] = [
        model_id.as_bytes(),
        computation,
        instruction.as_bytes(),
        &pieces,
        language.as_bytes(),
        b"side by side",
    ];
    crate::cache::content_name(kind, &parts).replace(".bin", ".jsonl")
}

/// The pieces a log holds, by key. A line that does not read (the last one, cut short when a run
/// was stopped while writing it) is skipped with a warning: its piece is rewritten.
fn read_log(path: &Path, kind: &str) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    let mut pieces = HashMap::new();
    let mut damaged = 0;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        match serde_json::from_str::<RewrittenPiece>(line) {
            Ok(piece) => {
                pieces.insert(piece.piece, piece.text);
            }
            Err(_) => damaged += 1,
        }
    }
    if damaged > 0 {
        eprintln!(
            "warning: {damaged} damaged line(s) in the {kind} cache {}; their pieces are written again",
            path.display()
        );
    }
    pieces
}

/// A cache of rewritten pieces, one JSON object per line, appended to as each piece is done.
struct Log {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Until the first line is appended: the file may end in a line cut short, which the next
    /// one must not be joined to.
    fresh: bool,
}

impl Log {
    fn open(path: &Path) -> Self {
        let file = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            });
        let mut log = Self {
            path: path.to_path_buf(),
            file: None,
            fresh: true,
        };
        match file {
            Ok(file) => log.file = Some(file),
            Err(e) => log.give_up(&e),
        }
        log
    }

    /// A line goes out in one write, so that a run stopped part way leaves whole lines and at
    /// most one cut short, and runs writing the same log at once do not interleave theirs.
    fn append(&mut self, piece: &str, text: &str) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let entry = RewrittenPiece {
            piece: piece.to_string(),
            text: text.to_string(),
        };
        let start = if std::mem::take(&mut self.fresh) {
            "\n"
        } else {
            ""
        };
        let written = serde_json::to_string(&entry)
            .map_err(std::io::Error::other)
            .and_then(|line| file.write_all(format!("{start}{line}\n").as_bytes()));
        if let Err(e) = written {
            self.give_up(&e);
        }
    }

    /// The rewriting goes on without a cache: losing minutes of work at the end for want of a
    /// cache would be worse.
    fn give_up(&mut self, error: &std::io::Error) {
        eprintln!(
            "warning: cannot write the cache {}: {error}; the next run rewrites these pieces \
             again (TQA_CACHE_DIR sets another cache folder)",
            self.path.display()
        );
        self.file = None;
    }
}
