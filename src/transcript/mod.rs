//! Transcript files → ordered speaker turns.
//!
//! Three kinds of file are understood:
//! - an article whose interview body marks each turn with a bold label, `**Name：**` (the shipped
//!   WeChat transcript); everything before the first label (title, summary) and after a heading or
//!   a reference line (footer, list of other articles) is not part of any turn;
//! - subtitle files, WebVTT and SubRip ([`cues`]);
//! - the plainest format, one `Speaker: text` per paragraph or per line (ASCII or full-width
//!   colon), where the label may carry the time the turn starts (`[00:12:34] Sam:`, `Sam
//!   (12:34):`), or a line `Sam Altman  12:34` over the paragraph (as Otter and Zoom export
//!   them).

mod cues;
mod timestamp;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use cues::UNNAMED_SPEAKER;
pub use timestamp::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    #[error("cannot read transcript {path}: {source}. Check the path, or pass --transcript FILE")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("transcript {path} is not UTF-8 text (invalid byte at offset {offset}); convert it to UTF-8, e.g. `iconv -f GB18030 -t UTF-8`")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("transcript {path} opens as UTF-16 text but is not valid UTF-16 (cut short, or another encoding after the byte-order mark); save it again as UTF-8")]
    NotUtf16 { path: PathBuf },
    #[error(
        "transcript {path} is {kind}, not text; tqa reads plain text and subtitle files: {how}"
    )]
    NotText {
        path: PathBuf,
        kind: &'static str,
        how: String,
    },
    #[error("transcript {path} is empty; give a file with turns like `Speaker: text`, one per line or paragraph")]
    Empty { path: PathBuf },
    #[error("transcript {path} has no speaker turns; write each turn as `Speaker: text` (one per line or paragraph) or `**Speaker：** text`, or give a WebVTT or SubRip subtitle file")]
    NoTurns { path: PathBuf },
}

/// A transcript's bytes as text: UTF-8, or UTF-16 when they open with its byte-order mark, as
/// Windows saves "Unicode" text (Notepad, Word's plain-text export).
fn decode(bytes: Vec<u8>, path: &Path) -> Result<String, TranscriptError> {
    if let Some((kind, how)) = document_format(&bytes, path) {
        return Err(TranscriptError::NotText {
            path: path.to_path_buf(),
            kind,
            how,
        });
    }
    let utf16 = match bytes.get(..2) {
        Some([0xff, 0xfe]) => Some(u16::from_le_bytes as fn([u8; 2]) -> u16),
        Some([0xfe, 0xff]) => Some(u16::from_be_bytes as fn([u8; 2]) -> u16),
        _ => None,
    };
    if let Some(unit) = utf16 {
        let body = &bytes[2..];
        let not_utf16 = || TranscriptError::NotUtf16 {
            path: path.to_path_buf(),
        };
        if !body.len().is_multiple_of(2) {
            return Err(not_utf16());
        }
        let units: Vec<u16> = body.chunks_exact(2).map(|p| unit([p[0], p[1]])).collect();
        return String::from_utf16(&units).map_err(|_| not_utf16());
    }
    String::from_utf8(bytes).map_err(|e| TranscriptError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Documents that transcripts often come as, by their first bytes, with how to get their text:
/// read as text they would only be reported as not UTF-8, with advice about encodings.
fn document_format(bytes: &[u8], path: &Path) -> Option<(&'static str, String)> {
    let text = path.with_extension("txt");
    let (file, text) = (path.display(), text.display());
    if bytes.starts_with(b"%PDF") {
        Some((
            "a PDF",
            format!("extract its text first, e.g. `pdftotext -layout {file} {text}`"),
        ))
    } else if bytes.starts_with(b"PK\x03\x04") {
        Some((
            "a zip archive (a Word .docx, an OpenDocument .odt)",
            format!("save it as plain text first, e.g. `pandoc {file} -t plain -o {text}`"),
        ))
    } else {
        None
    }
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
    /// Where the turn starts in the recording, when the file says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
}

impl Turn {
    /// `[T12] Sam Altman`, with `(12:34)` where the turn's start is known: how a turn is named
    /// above its text, so that it can be found in the recording too.
    pub fn heading(&self) -> String {
        match self.start {
            Some(start) => format!("[{}] {} ({start})", self.id, self.speaker),
            None => format!("[{}] {}", self.id, self.speaker),
        }
    }
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
        let text = decode(bytes, path)?;
        Self::parse(&text, path)
    }

    /// Parses text already in memory; `source` only names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Self, TranscriptError> {
        // A byte-order mark (Notepad writes one in UTF-8 too) would otherwise open the first
        // speaker's name and keep questions from naming that speaker.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim().is_empty() {
            return Err(TranscriptError::Empty {
                path: source.to_path_buf(),
            });
        }
        let raw = if cues::is_cue_file(text) {
            cues::parse(text)
        } else if bold_label_regex().is_match(text) {
            parse_bold_labelled(text)
        } else {
            parse_plain(text)
        };
        let raw: Vec<RawTurn> = raw.into_iter().filter(|raw| !raw.text.is_empty()).collect();
        let raw = if cues::is_cue_file(text) {
            raw
        } else {
            without_header_fields(raw)
        };
        let turns: Vec<Turn> = raw
            .into_iter()
            .enumerate()
            .map(|(i, raw)| Turn {
                id: format!("T{}", i + 1),
                speaker: raw.speaker,
                text: raw.text,
                start: raw.start,
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

/// `**Sam Altman：** text`: the label is short and its colon sits inside the bold span. The time
/// the turn starts may stand before the label or right after it (`[30:55] **Sam:** …`, `**Sam:**
/// [30:55] …`).
fn bold_label_regex() -> Regex {
    let time = timestamp::PATTERN;
    Regex::new(&format!(
        r"(?m)^(?:[\[(](?P<before>{time})[\])]\s*)?\*\*(?P<name>[^*\n]{{1,40}}?)\s*[:：]\s*\*\*\s*(?:[\[(](?P<after>{time})[\])]\s*)?(?P<text>.*)$"
    ))
    .expect("static regex")
}

/// `Name: text`; the name may have the turn's start before it (`[00:12:34] Name:`, `12:34 Name:`)
/// or after it (`Name (12:34):`, `Name 12:34:`), and the text may begin on the next line.
fn plain_label_regex() -> Regex {
    let time = timestamp::PATTERN;
    Regex::new(&format!(
        r"^(?:[\[(]?(?P<before>{time})[\])]?\s+)?(?P<name>[^:：\n]{{1,40}}?)(?:\s*[\[(](?P<after>{time})[\])]|\s+(?P<beside>{time}))?\s*(?P<colon>[:：]\s*)(?P<text>.*)$"
    ))
    .expect("static regex")
}

/// `Sam Altman  12:34` alone on a line: the speaker and start of the paragraph under it.
fn heading_label_regex() -> Regex {
    Regex::new(&format!(r"^([^:：]{{1,40}}?)\s+({})$", timestamp::PATTERN)).expect("static regex")
}

/// A speaker label names someone: it has a letter, and it is not a time or a number ("00" of
/// `00:12:34`, "Note 1").
fn is_name(label: &str) -> bool {
    label.chars().any(char::is_alphabetic)
        && !label.trim().starts_with(|c: char| c.is_ascii_digit())
}

/// One to four words, each capitalised, a number ("Speaker 2") or in a script without capitals,
/// and no sentence punctuation: a label that is not otherwise marked as one ("Sam Altman  12:34"
/// over a paragraph, "Sam Altman:" in a caption) against prose that happens to look like it ("we
/// met at 10:30", "and he said:").
fn written_like_a_name(label: &str) -> bool {
    let words: Vec<&str> = label.split_whitespace().collect();
    let capitalised = |word: &&str| {
        let first = word.chars().next();
        first.is_some_and(|c| c.is_ascii_digit() || c.is_alphabetic() && !c.is_lowercase())
    };
    (1..=4).contains(&words.len())
        && words.iter().all(capitalised)
        && !label.contains(['.', ',', '?', '!', '。', '，', '？', '！'])
}

/// A turn as a format's parser finds it, before it is numbered.
struct RawTurn {
    speaker: String,
    text: String,
    start: Option<Timestamp>,
}

/// Accumulates the paragraphs of one turn, re-joining hard-wrapped lines.
#[derive(Default)]
struct TurnBuilder {
    speaker: String,
    start: Option<Timestamp>,
    paragraphs: Vec<String>,
    current: String,
    last_line: String,
}

impl TurnBuilder {
    fn new(speaker: &str) -> Self {
        Self {
            speaker: speaker.trim().to_string(),
            ..Self::default()
        }
    }

    fn starting_at(mut self, start: Option<Timestamp>) -> Self {
        self.start = start;
        self
    }

    fn speaker(&self) -> &str {
        &self.speaker
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
        self.last_line = line;
    }

    fn ends_with_line(&self, line: &str) -> bool {
        !line.is_empty() && self.last_line == clean_inline(line)
    }

    fn chars(&self) -> usize {
        let paragraphs: usize = self.paragraphs.iter().map(|p| p.chars().count()).sum();
        paragraphs + self.current.chars().count()
    }

    fn ends_sentence(&self) -> bool {
        self.current
            .trim_end_matches(['"', '\'', '”', '’', ')', '）'])
            .ends_with(['.', '?', '!', '。', '？', '！', '…'])
    }

    fn end_paragraph(&mut self) {
        if !self.current.is_empty() {
            self.paragraphs.push(std::mem::take(&mut self.current));
        }
    }

    fn finish(mut self) -> RawTurn {
        self.end_paragraph();
        RawTurn {
            speaker: self.speaker,
            text: self.paragraphs.join("\n"),
            start: self.start,
        }
    }
}

/// `turns` without the fields that head a transcript in the same `Label: value` form as its turns
/// (`**Date:** March 3, 2025`, `Location: Berlin`): before the first speaker who speaks twice,
/// a label used once whose text is one short line without a sentence. As turns they were
/// searched, shown and paired with the host's first question as if someone had said them.
fn without_header_fields(turns: Vec<RawTurn>) -> Vec<RawTurn> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for turn in &turns {
        *uses.entry(turn.speaker.as_str()).or_default() += 1;
    }
    let Some(first_recurring) = turns.iter().position(|t| uses[t.speaker.as_str()] > 1) else {
        return turns;
    };
    let is_field: Vec<bool> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            i < first_recurring && uses[t.speaker.as_str()] == 1 && is_field_value(&t.text)
        })
        .collect();
    turns
        .into_iter()
        .zip(is_field)
        .filter_map(|(turn, field)| (!field).then_some(turn))
        .collect()
}

/// A header field's value: a date, a place, a source, not something said.
fn is_field_value(text: &str) -> bool {
    const MAX_FIELD_CHARS: usize = 80;
    text.chars().count() <= MAX_FIELD_CHARS
        && !text.contains('\n')
        && !text.contains(['?', '!', '。', '？', '！'])
        && !text.trim_end().ends_with('.')
        && !text.contains(". ")
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

fn parse_bold_labelled(text: &str) -> Vec<RawTurn> {
    let label = bold_label_regex();
    let speakers: Vec<&str> = label
        .captures_iter(text)
        .filter_map(|caps| caps.name("name"))
        .map(|name| name.as_str().trim())
        .collect();
    let mut turns = Vec::new();
    let mut current: Option<TurnBuilder> = None;
    for raw_line in text.lines() {
        let line = raw_line.trim();
        if let Some(caps) = label.captures(line) {
            turns.extend(current.take().map(TurnBuilder::finish));
            let start = ["before", "after"]
                .into_iter()
                .find_map(|group| caps.name(group))
                .and_then(|m| Timestamp::parse(m.as_str()));
            let mut builder = TurnBuilder::new(&caps["name"]).starting_at(start);
            builder.push_line(&caps["text"]);
            current = Some(builder);
        } else if ends_body(line) {
            turns.extend(current.take().map(TurnBuilder::finish));
            current = heading_speaker(line, &speakers).map(TurnBuilder::new);
        } else if let Some(builder) = current.as_mut() {
            if builder.start.is_none() && builder.chars() == 0 {
                builder.start = leading_time(line);
            }
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

/// The speaker a heading names, for the unlabelled paragraphs under it: "### Sam Altman, CEO,
/// OpenAI", or "## Opening Statement - Chairman Ted Cruz (R-TX)" where a label is "Senator
/// Cruz". The heading's last part after a dash, up to a comma or bracket, must be one of
/// `speakers` (the file's labels) or end in a label's surname, so that a title that merely
/// mentions a speaker ("Sam Altman在DevDay的访谈") names nobody. A surname that several labels
/// share ("Senator Cruz", "Chairman Cruz") leaves the name as the heading writes it.
fn heading_speaker<'h>(heading: &'h str, speakers: &[&'h str]) -> Option<&'h str> {
    let text = heading.trim_start_matches('#').trim();
    let part = [" - ", " – ", " — "]
        .into_iter()
        .fold(text, |text, dash| text.rsplit(dash).next().unwrap_or(text));
    let name = part.split([',', '(', '（', '，']).next()?.trim();
    if speakers.contains(&name) {
        return Some(name);
    }
    let surname = name.split_whitespace().last()?;
    let mut alike = speakers
        .iter()
        .filter(|s| s.split_whitespace().last() == Some(surname));
    let speaker = *alike.next()?;
    Some(if alike.all(|s| *s == speaker) {
        speaker
    } else {
        name
    })
}

/// The time a line begins with, as `[13:26] …` or `(13:26) …`.
fn leading_time(line: &str) -> Option<Timestamp> {
    let rest = line.strip_prefix(['[', '('])?;
    let end = rest.find([']', ')'])?;
    Timestamp::parse(&rest[..end])
}

fn parse_plain(text: &str) -> Vec<RawTurn> {
    let labels = PlainLabels::new();
    let paragraphs = paragraphs(text);
    let line_speakers = line_speakers(&paragraphs, &labels);
    let mut turns = Vec::new();
    let mut current: Option<TurnBuilder> = None;
    for paragraph in &paragraphs {
        for (at, line) in paragraph.iter().enumerate() {
            let label = labels
                .of_line(paragraph, at)
                .filter(|(speaker, ..)| at == 0 || line_speakers.contains(speaker.trim()));
            match label {
                Some((speaker, start, text)) => {
                    turns.extend(current.take().map(TurnBuilder::finish));
                    let mut builder = TurnBuilder::new(speaker).starting_at(start);
                    builder.push_line(text);
                    current = Some(builder);
                }
                None => {
                    if let Some(builder) = current.as_mut() {
                        // An unlabelled paragraph continues the turn before it.
                        if at == 0 {
                            builder.end_paragraph();
                        }
                        builder.push_line(line);
                    }
                }
            }
        }
    }
    turns.extend(current.map(TurnBuilder::finish));
    turns
}

/// The label patterns of the plain format.
struct PlainLabels {
    label: Regex,
    heading: Regex,
}

impl PlainLabels {
    fn new() -> Self {
        Self {
            label: plain_label_regex(),
            heading: heading_label_regex(),
        }
    }

    /// The label of line `at` of `paragraph`, if it carries one; a heading label only where text
    /// follows it in the paragraph.
    fn of_line<'l>(
        &self,
        paragraph: &[&'l str],
        at: usize,
    ) -> Option<(&'l str, Option<Timestamp>, &'l str)> {
        let heading = (at + 1 < paragraph.len()).then_some(&self.heading);
        plain_label(paragraph.get(at)?, &self.label, heading)
    }
}

/// The speakers whose labels also start a turn inside a paragraph, as in files with one turn per
/// line and no blank lines between: those that label a paragraph, every label of a paragraph
/// whose lines are all labelled, and labels written like a name that recur. A hard-wrapped line
/// that merely begins with "Note:" or "他说：" stays in its turn.
fn line_speakers<'t>(paragraphs: &[Vec<&'t str>], labels: &PlainLabels) -> HashSet<&'t str> {
    let mut speakers = HashSet::new();
    let mut name_like: HashMap<&str, usize> = HashMap::new();
    for paragraph in paragraphs {
        let found: Vec<Option<&str>> = (0..paragraph.len())
            .map(|at| {
                labels
                    .of_line(paragraph, at)
                    .map(|(speaker, ..)| speaker.trim())
            })
            .collect();
        let all_labelled = found.iter().all(Option::is_some);
        for (at, speaker) in found.into_iter().enumerate() {
            let Some(speaker) = speaker else { continue };
            if at == 0 || all_labelled {
                speakers.insert(speaker);
            } else if written_like_a_name(speaker) {
                *name_like.entry(speaker).or_default() += 1;
            }
        }
    }
    speakers.extend(
        name_like
            .into_iter()
            .filter(|&(_, lines)| lines > 1)
            .map(|(speaker, _)| speaker),
    );
    speakers
}

/// The speaker, start and first text of a paragraph's first line, when it is labelled; a
/// `heading` label is looked for only where text follows it.
fn plain_label<'l>(
    line: &'l str,
    label: &Regex,
    heading: Option<&Regex>,
) -> Option<(&'l str, Option<Timestamp>, &'l str)> {
    if let Some(caps) = heading.and_then(|heading| heading.captures(line)) {
        let (speaker, start) = (caps.get(1)?.as_str(), caps.get(2)?.as_str());
        if is_name(speaker) && written_like_a_name(speaker) {
            return Some((speaker, Timestamp::parse(start), ""));
        }
    }
    let caps = label.captures(line)?;
    let speaker = caps.name("name")?.as_str();
    let start = ["before", "after", "beside"]
        .into_iter()
        .find_map(|group| caps.name(group))
        .and_then(|m| Timestamp::parse(m.as_str()));
    let text = caps.name("text").map_or("", |m| m.as_str());
    // `https://…` is a link and `at 10:30` a time, not a speaker's label.
    let in_a_link = text.starts_with("//");
    let in_a_time = caps
        .name("colon")
        .is_some_and(|colon| colon.as_str() == ":")
        && text.starts_with(|c: char| c.is_ascii_digit());
    (is_name(speaker) && !in_a_link && !in_a_time).then_some((speaker, start, text))
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

    fn speakers_and_texts(t: &Transcript) -> Vec<(&str, &str)> {
        t.turns
            .iter()
            .map(|t| (t.speaker.as_str(), t.text.as_str()))
            .collect()
    }

    #[test]
    fn one_turn_per_line_without_blank_lines() {
        let t =
            parse("Host: What is your name?\nSam: Sam.\nHost: What food?\n主持人：你好\n").unwrap();
        assert_eq!(
            speakers_and_texts(&t),
            [
                ("Host", "What is your name?"),
                ("Sam", "Sam."),
                ("Host", "What food?"),
                ("主持人", "你好")
            ]
        );
    }

    #[test]
    fn a_recurring_label_inside_a_wrapped_paragraph_starts_a_turn() {
        let t = parse(
            "[00:01] Host: Welcome\nto the show.\n[00:05] Sam Altman: Thanks,\nglad to be here.\n\
             Host: First question.\nSam Altman: Go on.\n",
        )
        .unwrap();
        assert_eq!(
            speakers_and_texts(&t),
            [
                ("Host", "Welcome to the show."),
                ("Sam Altman", "Thanks, glad to be here."),
                ("Host", "First question."),
                ("Sam Altman", "Go on.")
            ]
        );
        assert_eq!(
            t.turns[1].start.map(|s| s.to_string()),
            Some("00:05".into())
        );
    }

    #[test]
    fn a_wrapped_line_that_once_looks_labelled_stays_in_its_turn() {
        let t =
            parse("Alice: I told him\nNote: this matters.\nAnd he agreed.\n\nBob: Yes.\n").unwrap();
        assert_eq!(
            speakers_and_texts(&t),
            [
                ("Alice", "I told him Note: this matters. And he agreed."),
                ("Bob", "Yes.")
            ]
        );
    }

    fn speakers_and_starts(t: &Transcript) -> Vec<(&str, String)> {
        t.turns
            .iter()
            .map(|t| {
                (
                    t.speaker.as_str(),
                    t.start.map(|s| s.to_string()).unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn labels_may_carry_the_time_a_turn_starts() {
        let t = parse(
            "[00:00:05] Harry: Welcome.\n\nSam Altman (01:02:03): Thanks.\n\n\
             12:34 Harry: It is 10:30 here.\n\nSam 12:40: Mine too.\n",
        )
        .unwrap();
        assert_eq!(
            speakers_and_starts(&t),
            [
                ("Harry", "00:05".to_string()),
                ("Sam Altman", "1:02:03".to_string()),
                ("Harry", "12:34".to_string()),
                ("Sam", "12:40".to_string())
            ]
        );
        assert_eq!(t.turns[2].text, "It is 10:30 here.");
    }

    #[test]
    fn a_name_and_time_over_a_paragraph_label_it() {
        let t = parse(
            "Sam Altman  0:03\nAgents will do real work.\n\nHarry Stebbings  0:15\nWhen?\n\nDescript Person (00:00:20):\nSoon.\n",
        )
        .unwrap();
        assert_eq!(
            speakers_and_starts(&t),
            [
                ("Sam Altman", "00:03".to_string()),
                ("Harry Stebbings", "00:15".to_string()),
                ("Descript Person", "00:20".to_string())
            ]
        );
        assert_eq!(t.turns[0].text, "Agents will do real work.");
    }

    #[test]
    fn a_wrapped_paragraph_whose_first_line_ends_in_a_time_goes_on_in_its_turn() {
        let t = parse("Alice: we left early.\n\nWe met at 10:30\nand talked.\n").unwrap();
        assert_eq!(t.turns.len(), 1);
        assert_eq!(
            t.turns[0].text,
            "we left early.\nWe met at 10:30 and talked."
        );
    }

    #[test]
    fn a_bold_label_may_carry_the_time_before_or_after_it() {
        let t = parse("**Host:** [00:10] Why?\n\n[00:20] **Sam:** Because.\n").unwrap();
        assert_eq!(
            speakers_and_starts(&t),
            [("Host", "00:10".to_string()), ("Sam", "00:20".to_string())]
        );
        assert_eq!(
            speakers_and_texts(&t),
            [("Host", "Why?"), ("Sam", "Because.")]
        );
    }

    #[test]
    fn a_heading_that_names_a_speaker_gives_them_the_paragraphs_under_it() {
        let t = parse(
            "# Hearing\n\n**Date:** May 8\n\n---\n\n\
             ## Opening Statement - Chairman Ann Lee (D-CA)\n\n[00:05] Welcome.\n\n---\n\n\
             ### Sam Altman, CEO, OpenAI\n\n[01:00] Thanks.\n\n[01:30] Chips matter.\n\n\
             ## Questions and Answers\n\nUnlabelled notes.\n\n\
             **Senator Lee:** What about chips?\n\n**Sam Altman:** More.\n",
        )
        .unwrap();
        assert_eq!(
            speakers_and_texts(&t),
            [
                ("Senator Lee", "[00:05] Welcome."),
                ("Sam Altman", "[01:00] Thanks.\n[01:30] Chips matter."),
                ("Senator Lee", "What about chips?"),
                ("Sam Altman", "More."),
            ]
        );
        assert_eq!(
            t.turns[0].start.map(|s| s.to_string()).as_deref(),
            Some("00:05")
        );
    }

    #[test]
    fn a_title_that_mentions_a_speaker_names_nobody() {
        let t = parse("# Sam Altman在DevDay的访谈\n\n导读。\n\n**Sam Altman：** 你好。\n").unwrap();
        assert_eq!(speakers_and_texts(&t), [("Sam Altman", "你好。")]);
    }

    #[test]
    fn times_and_links_are_not_speakers() {
        let t = parse(
            "Alice: see https://example.com at 10:30\n\nhttps://example.com/a\n\n00:01: hello\n",
        )
        .unwrap();
        assert_eq!(t.turns.len(), 1);
        assert_eq!(t.turns[0].speaker, "Alice");
        assert!(t.turns[0].start.is_none());
    }

    #[test]
    fn header_fields_in_the_form_of_labels_are_not_turns() {
        let text = "# Interview with Jane Doe\n\n**Date:** March 3, 2025\n**Location:** Berlin\n\n\
                    **Announcer:** Live from the studio, this is the show.\n\n\
                    **Host:** Welcome, Jane. What are you building?\n\n\
                    **Jane Doe:** Batteries that last twenty years.\n\n\
                    **Host:** Why twenty?\n\n**Jane Doe:** That is how long a roof lasts.\n";
        let t = parse(text).unwrap();
        let speakers: Vec<&str> = t.turns.iter().map(|turn| turn.speaker.as_str()).collect();
        assert_eq!(
            speakers,
            ["Announcer", "Host", "Jane Doe", "Host", "Jane Doe"],
            "one sentence said once is a turn; a date and a place are not"
        );
        let plain = "Date: 2025-03-03\n\nHost: Welcome.\n\nGuest: Thanks.\n\nHost: Why?\n\nGuest: Because.\n";
        assert_eq!(parse(plain).unwrap().turns[0].speaker, "Host");
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
