//! Times into the recording, as subtitle files and timestamped transcripts write them.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Serialize, Serializer};

/// Where a turn starts in the recording, so that a cited turn can be found in the audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    millis: u64,
}

impl Timestamp {
    /// Milliseconds from the start of the recording: for a player to seek to.
    pub fn millis(self) -> u64 {
        self.millis
    }

    /// `seconds` from the start of the recording.
    pub fn from_seconds(seconds: u64) -> Self {
        Self {
            millis: seconds * 1000,
        }
    }

    /// `1:02:03`, `12:34` or `00:05,120` (hours optional, milliseconds after `.` or `,`), the
    /// whole of `text`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let caps = WHOLE.captures(text.trim())?;
        let number = |i: usize| -> u64 {
            caps.get(i)
                .and_then(|m| m.as_str().parse().ok())
                .unwrap_or(0)
        };
        let (minutes, seconds) = (number(2), number(3));
        if seconds >= 60 || (caps.get(1).is_some() && minutes >= 60) {
            return None;
        }
        // "5" after the point is 500 ms, not 5.
        let millis = caps.get(4).map_or(0, |m| {
            let digits = m.as_str();
            number(4) * 10_u64.pow(3 - digits.len() as u32)
        });
        Some(Self {
            millis: ((number(1) * 60 + minutes) * 60 + seconds) * 1000 + millis,
        })
    }
}

/// How a time is written, for patterns that find one inside a line.
pub(super) const PATTERN: &str = r"(?:\d{1,2}:)?\d{1,2}:\d{2}(?:[.,]\d{1,3})?";

static WHOLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(\d{1,2}):)?(\d{1,2}):(\d{2})(?:[.,](\d{1,3}))?$").expect("static regex")
});

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.millis / 1000;
        let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
        if hours > 0 {
            write!(f, "{hours}:{minutes:02}:{seconds:02}")
        } else {
            write!(f, "{minutes:02}:{seconds:02}")
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_and_without_hours_and_fractions() {
        let millis = |t: &str| Timestamp::parse(t).map(Timestamp::millis);
        assert_eq!(millis("00:00:01,000"), Some(1_000));
        assert_eq!(millis("01:02:03.5"), Some(3_723_500));
        assert_eq!(millis("12:34"), Some(754_000));
        assert_eq!(millis("0:07"), Some(7_000));
        assert_eq!(millis("12:75"), None);
        assert_eq!(millis("1:75:00"), None);
        assert_eq!(millis("Sam: hi"), None);
    }

    #[test]
    fn shown_the_way_video_players_show_them() {
        let shown = |t: &str| Timestamp::parse(t).map(|t| t.to_string());
        assert_eq!(shown("00:12:34,900").as_deref(), Some("12:34"));
        assert_eq!(shown("1:02:03").as_deref(), Some("1:02:03"));
    }
}
