//! Subtitle files (WebVTT, SubRip) → turns.
//!
//! A cue holds a few seconds of speech; a turn is what one speaker says until another speaks. The
//! speaker of a line comes from a WebVTT voice tag (`<v Sam Altman>`) or a `Name:` label; a line
//! without one goes on in the turn before it, and `>>` (how captioners mark an unnamed change of
//! speaker) starts a turn of an unnamed speaker. Captions that name nobody would make the whole
//! file one turn, so a turn also ends at the first sentence end after [`TURN_CHARS`].

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use super::timestamp::{Timestamp, PATTERN};
use super::{RawTurn, TurnBuilder};

/// What a turn of a speaker the file does not name is called.
pub const UNNAMED_SPEAKER: &str = "Speaker";

/// Characters after which a turn ends at the next sentence end: a paragraph or two, about the
/// length of an answer in an interview, so that a citation points at something one can read.
const TURN_CHARS: usize = 600;

/// Whether `text` is a subtitle file: it starts with `WEBVTT`, or it has a cue timing line
/// (`00:00:01,000 --> 00:00:04,000`).
pub(super) fn is_cue_file(text: &str) -> bool {
    let first_line = text.trim_start().lines().next();
    first_line.is_some_and(|line| line.starts_with("WEBVTT"))
        || text.lines().any(|line| cue_start(line).is_some())
}

pub(super) fn parse(text: &str) -> Vec<RawTurn> {
    let cues = cues(text);
    let speakers = Speakers::of(&cues);
    let mut turns = Vec::new();
    let mut current: Option<TurnBuilder> = None;
    for cue in &cues {
        for line in &cue.lines {
            let (speaker, text) = speakers.of_line(line);
            let text = plain_text(text);
            if text.is_empty() && matches!(speaker, Speaker::Same) {
                continue;
            }
            let turn_over = current
                .as_ref()
                .is_some_and(|turn| turn.chars() >= TURN_CHARS && turn.ends_sentence());
            let speaker = match (speaker, current.as_ref()) {
                (Speaker::Named(name), Some(turn)) if name == turn.speaker() && !turn_over => None,
                (Speaker::Named(name), _) => Some(name),
                (Speaker::Unnamed, _) => Some(UNNAMED_SPEAKER),
                (Speaker::Same, Some(turn)) if turn_over => Some(turn.speaker()),
                (Speaker::Same, Some(_)) => None,
                (Speaker::Same, None) => Some(UNNAMED_SPEAKER),
            }
            .map(str::to_string);
            if let Some(speaker) = speaker {
                turns.extend(current.take().map(TurnBuilder::finish));
                current = Some(TurnBuilder::new(&speaker).starting_at(Some(cue.start)));
            }
            if let Some(turn) = current.as_mut() {
                // Rolling captions show each line again in the next cue.
                if !turn.ends_with_line(&text) {
                    turn.push_line(&text);
                }
            }
        }
    }
    turns.extend(current.map(TurnBuilder::finish));
    turns
}

struct Cue<'t> {
    start: Timestamp,
    lines: Vec<&'t str>,
}

/// A cue is an optional identifier, its timing, then its text up to an empty line; the file
/// header and NOTE, STYLE and REGION blocks have no timing. A line of spaces is text (auto
/// captions begin cues with one), and a line just before a timing line is that cue's identifier.
fn cues(text: &str) -> Vec<Cue<'_>> {
    let lines: Vec<&str> = text.lines().collect();
    let is_timing = |i: usize| lines.get(i).and_then(|line| cue_start(line));
    let mut cues: Vec<Cue> = Vec::new();
    let mut in_cue = false;
    for (i, line) in lines.iter().enumerate() {
        if let Some(start) = is_timing(i) {
            cues.push(Cue {
                start,
                lines: Vec::new(),
            });
            in_cue = true;
        } else if line.is_empty() {
            in_cue = false;
        } else if in_cue && is_timing(i + 1).is_none() {
            if let Some(cue) = cues.last_mut() {
                cue.lines.push(line.trim());
            }
        }
    }
    cues
}

enum Speaker<'l> {
    Named(&'l str),
    Unnamed,
    Same,
}

/// How the lines of one file name their speakers.
struct Speakers {
    /// `Name:` labels written like names ("Sam Altman", "HOST", "主持人") or that start at least
    /// two lines ("interviewer"): a caption "and he said: …" names nobody.
    labels: Vec<String>,
}

impl Speakers {
    fn of(cues: &[Cue]) -> Self {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for line in cues.iter().flat_map(|cue| &cue.lines) {
            if let Some(name) = LABEL.captures(line).and_then(|caps| caps.get(1)) {
                *seen.entry(name.as_str().trim()).or_default() += 1;
            }
        }
        Self {
            labels: seen
                .into_iter()
                .filter(|(name, count)| {
                    (*count > 1 || super::written_like_a_name(name)) && super::is_name(name)
                })
                .map(|(name, _)| name.to_string())
                .collect(),
        }
    }

    fn of_line<'l>(&self, line: &'l str) -> (Speaker<'l>, &'l str) {
        if let Some(caps) = VOICE.captures(line) {
            if let (Some(name), Some(rest)) = (caps.get(1), caps.get(2)) {
                return (Speaker::Named(name.as_str().trim()), rest.as_str());
            }
        }
        if let Some(rest) = line.strip_prefix(">>") {
            return (Speaker::Unnamed, rest);
        }
        if let Some(caps) = LABEL.captures(line) {
            if let (Some(name), Some(rest)) = (caps.get(1), caps.get(2)) {
                let name = name.as_str().trim();
                if self.labels.iter().any(|label| label == name) {
                    return (Speaker::Named(name), rest.as_str());
                }
            }
        }
        (Speaker::Same, line)
    }
}

/// The cue's text without markup (`<i>`, `<c.colour>`, `<00:01.000>`) or character references.
fn plain_text(text: &str) -> String {
    let without_tags = TAG.replace_all(text, "");
    let numbered = NUMBERED_REFERENCE.replace_all(&without_tags, |caps: &regex::Captures| {
        let code = match (caps.get(1), caps.get(2)) {
            (Some(decimal), _) => decimal.as_str().parse().ok(),
            (_, Some(hex)) => u32::from_str_radix(hex.as_str(), 16).ok(),
            _ => None,
        };
        code.and_then(char::from_u32)
            .map_or_else(|| caps[0].to_string(), String::from)
    });
    numbered
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
        .trim_start_matches(['-', ' '])
        .trim()
        .to_string()
}

fn cue_start(line: &str) -> Option<Timestamp> {
    let caps = TIMING.captures(line)?;
    Timestamp::parse(caps.get(1)?.as_str())
}

static TIMING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"^\s*({PATTERN})\s*-->\s*{PATTERN}")).expect("static regex")
});

/// `<v Name>` or `<v.class Name>`, then the rest of the line.
static VOICE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*<v(?:\.[^ >]*)?\s+([^>]+)>(.*)$").expect("static regex"));

static LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*-?\s*([^:：<>]{1,40}?)\s*[:：]\s*(.*)$").expect("static regex")
});

static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"</?[a-zA-Z0-9.:_ -]*>|<\d[\d:.]*>").expect("static regex"));

/// `&#8217;` or `&#x2019;`.
static NUMBERED_REFERENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"&#(?:(\d{1,7})|[xX]([0-9a-fA-F]{1,6}));").expect("static regex"));

#[cfg(test)]
mod tests {
    use super::super::{Transcript, Turn};
    use super::*;
    use std::path::Path;

    fn turns(text: &str) -> Vec<Turn> {
        Transcript::parse(text, Path::new("t.vtt")).unwrap().turns
    }

    fn speakers_and_texts(turns: &[Turn]) -> Vec<(&str, &str)> {
        turns
            .iter()
            .map(|t| (t.speaker.as_str(), t.text.as_str()))
            .collect()
    }

    #[test]
    fn webvtt_voices_become_turns_that_start_at_their_first_cue() {
        let turns = turns(
            "WEBVTT\n\nNOTE made by hand\n\n1\n00:00:01.000 --> 00:00:04.000\n<v Harry Stebbings>Welcome back.\n\n\
             00:00:04.000 --> 00:00:06.500 align:start\n<v Harry Stebbings>What about <i>agents</i>?</v>\n\n\
             00:01:02.250 --> 00:01:09.000\n<v.loud Sam Altman>They&#8217;ll do &amp; finish long tasks&#x2026;\n",
        );
        assert_eq!(
            speakers_and_texts(&turns),
            [
                ("Harry Stebbings", "Welcome back. What about agents?"),
                ("Sam Altman", "They’ll do & finish long tasks…")
            ]
        );
        let starts: Vec<String> = turns
            .iter()
            .filter_map(|t| t.start.map(|s| s.to_string()))
            .collect();
        assert_eq!(starts, ["00:01", "01:02"]);
    }

    #[test]
    fn subrip_labels_name_the_speaker_until_the_next_label() {
        let turns = turns(
            "1\n00:00:01,000 --> 00:00:04,000\nHOST: So what comes next?\n\n\
             2\n00:00:04,500 --> 00:00:09,000\nSAM: Agents.\n\n\
             3\n00:00:09,000 --> 00:00:12,000\nThey run for hours\nwithout help. As I said: hours.\n\n\
             4\n00:00:12,000 --> 00:00:14,000\nHOST: Why?\n\n\
             5\n00:00:14,000 --> 00:00:15,000\nSAM: Compute.\n",
        );
        assert_eq!(
            speakers_and_texts(&turns),
            [
                ("HOST", "So what comes next?"),
                (
                    "SAM",
                    "Agents. They run for hours without help. As I said: hours."
                ),
                ("HOST", "Why?"),
                ("SAM", "Compute.")
            ]
        );
    }

    #[test]
    fn captions_that_name_nobody_are_split_at_sentence_ends() {
        let sentence = "Sentence number 10 is about agents and it goes on for a while.";
        let cue = |i: usize| {
            let sentence = sentence.replace("10", &i.to_string());
            format!("{i}\n00:00:{i:02},000 --> 00:00:{i:02},900\n{sentence}\n\n")
        };
        let file: String = (10..40).map(cue).collect();
        let turns = turns(&file);
        assert!(turns.len() > 1);
        for turn in &turns {
            assert_eq!(turn.speaker, UNNAMED_SPEAKER);
            assert!(turn.text.chars().count() < TURN_CHARS + sentence.len() + 1);
            assert!(turn.text.ends_with('.'));
        }
    }

    #[test]
    fn rolling_caption_lines_and_unnamed_speaker_changes() {
        let turns = turns(
            "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n>> how are you\n\n\
             00:00:02.000 --> 00:00:03.000\nhow are you\n<00:00:02.500><c>today</c>\n\n\
             00:00:03.000 --> 00:00:04.000\n>> fine thanks\n",
        );
        assert_eq!(
            speakers_and_texts(&turns),
            [
                (UNNAMED_SPEAKER, "how are you today"),
                (UNNAMED_SPEAKER, "fine thanks")
            ]
        );
    }

    #[test]
    fn labels_written_like_names_count_the_first_time() {
        let turns = turns(
            "WEBVTT\n\n1\n00:00:01.000 --> 00:00:04.000\nHarry Stebbings: So, agents?\n\n\
             2\n00:00:04.500 --> 00:00:09.000\nSam Altman: Yes. And he said: agents.\n \n3\n\
             00:00:09.000 --> 00:00:10.000\n \n主持人：还有呢？\n",
        );
        assert_eq!(
            speakers_and_texts(&turns),
            [
                ("Harry Stebbings", "So, agents?"),
                ("Sam Altman", "Yes. And he said: agents."),
                ("主持人", "还有呢？")
            ]
        );
        assert_eq!(
            turns[2].start.map(|s| s.to_string()).as_deref(),
            Some("00:09")
        );
    }

    #[test]
    fn subtitle_files_are_told_apart_from_timestamped_prose() {
        assert!(is_cue_file("1\n00:00:01,000 --> 00:00:04,000\nhello\n"));
        assert!(!is_cue_file("Alice: it is 10:30 now\n\nBob: fine\n"));
    }
}
