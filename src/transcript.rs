//! Transcript files → ordered speaker turns.
//!
//! Two formats are understood:
//! - an article whose interview body marks each turn with a bold label, `**Name：**` (the shipped
//!   WeChat transcript); everything before the first label (title, summary) and after a heading or
//!   a reference line (footer, list of other articles) is not part of any turn;
//! - the plainest format, one `Speaker: text` per paragraph (ASCII or full-width colon).

use std::path::{Path, PathBuf};

use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    #[error("cannot read transcript {path}: {source}. Check the path, or pass --transcript FILE")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("transcript {path} is not UTF-8 text (invalid byte at offset {offset}); convert it to UTF-8, e.g. `iconv -f GB18030 -t UTF-8`")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("transcript {path} is empty; give a file with turns like `Speaker: text`, one per paragraph")]
    Empty { path: PathBuf },
    #[error("transcript {path} has no speaker turns; write each turn as `Speaker: text` (one per paragraph) or `**Speaker：** text`")]
    NoTurns { path: PathBuf },
}

/// The transcript that ships with tqa: Sam Altman at OpenAI DevDay 2024, in Chinese.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/transcripts/altman-20vc-devday-2024.zh.md")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    /// `T1`, `T2`, … in transcript order.
    pub id: String,
    pub speaker: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Transcript {
    pub source: PathBuf,
    pub turns: Vec<Turn>,
}

impl Transcript {
    pub fn load(path: &Path) -> Result<Self, TranscriptError> {
        let bytes = std::fs::read(path).map_err(|source| TranscriptError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| TranscriptError::NotUtf8 {
            path: path.to_path_buf(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses text already in memory; `source` only names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Self, TranscriptError> {
        if text.trim().is_empty() {
            return Err(TranscriptError::Empty {
                path: source.to_path_buf(),
            });
        }
        let raw = if bold_label_regex().is_match(text) {
            parse_bold_labelled(text)
        } else {
            parse_plain(text)
        };
        let turns: Vec<Turn> = raw
            .into_iter()
            .filter(|(_, text)| !text.is_empty())
            .enumerate()
            .map(|(i, (speaker, text))| Turn {
                id: format!("T{}", i + 1),
                speaker,
                text,
            })
            .collect();
        if turns.is_empty() {
            return Err(TranscriptError::NoTurns {
                path: source.to_path_buf(),
            });
        }
        Ok(Self {
            source: source.to_path_buf(),
            turns,
        })
    }

    pub fn turn(&self, id: &str) -> Option<&Turn> {
        self.turns.iter().find(|t| t.id == id)
    }

    /// The language most turns are written in.
    pub fn language(&self) -> Language {
        let zh = self
            .turns
            .iter()
            .filter(|t| Language::of(&t.text) == Language::Zh)
            .count();
        if zh * 2 > self.turns.len() {
            Language::Zh
        } else {
            Language::En
        }
    }

    /// Speaker names in order of first appearance.
    pub fn speakers(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for turn in &self.turns {
            if !names.contains(&turn.speaker.as_str()) {
                names.push(&turn.speaker);
            }
        }
        names
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    En,
    Zh,
}

impl Language {
    /// Chinese when CJK characters outweigh the Latin words: a Chinese question often names
    /// "OpenAI" or "GPT", an English one rarely carries more than a quoted term.
    pub fn of(text: &str) -> Self {
        let cjk = text.chars().filter(|&c| is_cjk_char(c)).count();
        let latin_words = text
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .count();
        if cjk > 2 * latin_words {
            Language::Zh
        } else {
            Language::En
        }
    }
}

pub fn is_cjk_char(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

fn bold_label_regex() -> Regex {
    // The label is short and its colon sits inside the bold span: `**Sam Altman：** text`.
    Regex::new(r"(?m)^\*\*([^*\n]{1,40}?)\s*[:：]\s*\*\*\s*(.*)$").expect("static regex")
}

fn plain_label_regex() -> Regex {
    Regex::new(r"^([^:：\n]{1,40}?)\s*[:：]\s*(.+)$").expect("static regex")
}

/// Accumulates the paragraphs of one turn, re-joining hard-wrapped lines.
#[derive(Default)]
struct TurnBuilder {
    speaker: String,
    paragraphs: Vec<String>,
    current: String,
}

impl TurnBuilder {
    fn new(speaker: &str) -> Self {
        Self {
            speaker: speaker.trim().to_string(),
            ..Self::default()
        }
    }

    fn push_line(&mut self, line: &str) {
        let line = clean_inline(line);
        if line.is_empty() {
            return;
        }
        if needs_space_between(&self.current, &line) {
            self.current.push(' ');
        }
        self.current.push_str(&line);
    }

    fn end_paragraph(&mut self) {
        if !self.current.is_empty() {
            self.paragraphs.push(std::mem::take(&mut self.current));
        }
    }

    fn finish(mut self) -> (String, String) {
        self.end_paragraph();
        (self.speaker, self.paragraphs.join("\n"))
    }
}

/// Strips markdown emphasis; bold spans sit inside sentences and carry no meaning for retrieval.
fn clean_inline(line: &str) -> String {
    line.replace("**", "").trim().to_string()
}

/// Lines are hard-wrapped mid-sentence ("Peter\nThiel", "OpenAI\n可能会"): only two Latin words or
/// numbers need a space when re-joined; Chinese text joins directly.
fn needs_space_between(before: &str, after: &str) -> bool {
    match (before.chars().last(), after.chars().next()) {
        (Some(a), Some(b)) => {
            a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric()
                || (a.is_ascii_punctuation() && a != '(' && b.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

fn is_image(line: &str) -> bool {
    line.starts_with("![")
}

/// A heading, a rule, or a line that is entirely italic (a source note such as `_参考资料: …_`)
/// ends the interview body; text after it belongs to no turn until the next speaker label.
fn ends_body(line: &str) -> bool {
    let is_heading = line.starts_with('#');
    let is_rule = !line.is_empty() && line.chars().all(|c| matches!(c, '*' | '-' | '_' | ' '));
    let is_italic_note = line.len() > 2 && line.starts_with('_') && line.ends_with('_');
    is_heading || is_rule || is_italic_note
}

fn parse_bold_labelled(text: &str) -> Vec<(String, String)> {
    let label = bold_label_regex();
    let mut turns = Vec::new();
    let mut current: Option<TurnBuilder> = None;
    for raw_line in text.lines() {
        let line = raw_line.trim();
        if let Some(caps) = label.captures(line) {
            turns.extend(current.take().map(TurnBuilder::finish));
            let mut builder = TurnBuilder::new(&caps[1]);
            builder.push_line(&caps[2]);
            current = Some(builder);
        } else if ends_body(line) {
            turns.extend(current.take().map(TurnBuilder::finish));
        } else if let Some(builder) = current.as_mut() {
            if line.is_empty() || is_image(line) {
                builder.end_paragraph();
            } else {
                builder.push_line(line);
            }
        }
    }
    turns.extend(current.map(TurnBuilder::finish));
    turns
}

fn parse_plain(text: &str) -> Vec<(String, String)> {
    let label = plain_label_regex();
    let mut turns = Vec::new();
    let mut current: Option<TurnBuilder> = None;
    for paragraph in paragraphs(text) {
        let mut lines = paragraph.iter();
        let Some(first) = lines.next() else { continue };
        match label.captures(first) {
            Some(caps) if !caps[1].contains("://") => {
                turns.extend(current.take().map(TurnBuilder::finish));
                let mut builder = TurnBuilder::new(&caps[1]);
                builder.push_line(&caps[2]);
                current = Some(builder);
            }
            // An unlabelled paragraph continues the turn before it.
            _ => {
                if let Some(builder) = current.as_mut() {
                    builder.end_paragraph();
                    builder.push_line(first);
                }
            }
        }
        if let Some(builder) = current.as_mut() {
            for line in lines {
                builder.push_line(line);
            }
        }
    }
    turns.extend(current.map(TurnBuilder::finish));
    turns
}

fn paragraphs(text: &str) -> Vec<Vec<&str>> {
    let mut out = vec![Vec::new()];
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            out.push(Vec::new());
        } else if let Some(last) = out.last_mut() {
            last.push(line);
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Transcript, TranscriptError> {
        Transcript::parse(text, Path::new("test.txt"))
    }

    #[test]
    fn wrapped_latin_words_get_a_space_and_chinese_joins_directly() {
        let t = parse("**Host：** I am Peter\nThiel and 我们\n可以\n").unwrap();
        assert_eq!(t.turns[0].text, "I am Peter Thiel and 我们可以");
    }

    #[test]
    fn image_lines_split_paragraphs_but_not_turns() {
        let t = parse("**A：** one\n\n![](http://x/img.png)\n\ntwo\n**B：** three").unwrap();
        assert_eq!(t.turns.len(), 2);
        assert_eq!(t.turns[0].text, "one\ntwo");
    }

    #[test]
    fn heading_ends_the_body() {
        let t = parse("# Title\n\n**A：** hi\n\n## 往期精选\n\n1. other article").unwrap();
        assert_eq!(t.turns.len(), 1);
        assert_eq!(t.turns[0].text, "hi");
    }

    #[test]
    fn plain_format_with_both_colons() {
        let t = parse("Alice: hello there\n\nBob：你好\n\nmore from Bob\n").unwrap();
        let speakers: Vec<_> = t.turns.iter().map(|t| t.speaker.as_str()).collect();
        assert_eq!(speakers, ["Alice", "Bob"]);
        assert_eq!(t.turns[1].text, "你好\nmore from Bob");
        assert_eq!(t.turns[1].id, "T2");
    }

    #[test]
    fn empty_and_turnless_inputs_are_errors() {
        assert!(matches!(parse("  \n"), Err(TranscriptError::Empty { .. })));
        assert!(matches!(
            parse("just some prose without speakers"),
            Err(TranscriptError::NoTurns { .. })
        ));
    }
}
