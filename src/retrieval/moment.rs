//! The moment of the recording a question asks about: "what did she say at 12:34?", "around the
//! 40-minute mark", "1 hour 5 minutes in", "第12分钟", "12分30秒左右". In a transcript that gives
//! times, the turn being spoken then leads the ranking (see `Index::ranking`).
//!
//! A number of minutes counts only with a word that places it in the recording ("at", "around",
//! "minute 12", "in", "mark", "第", "左右"): "it took 12 minutes" and "12分钟内" are durations.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use crate::transcript::Timestamp;

/// `12:34` or `1:02:03`, not part of a longer run of digits and colons.
static CLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^\d:])((?:\d{1,2}:)?\d{1,2}:\d{2})(?:$|[^\d:])").expect("static regex")
});

/// Hours (optional), minutes and seconds (optional), in English and in Chinese, each with the
/// words that place them in the recording, before or after: one pattern each.
static PLACED: LazyLock<[Regex; 4]> = LazyLock::new(|| {
    let english = r"(?:(?P<h>\d{1,2})\s*(?:hours?|hrs?|h)\s*(?:and\s+)?)?(?P<m>\d{1,3})\s*-?\s*(?:minutes?|mins?)(?:\s*(?:and\s+)?(?P<s>\d{1,2})\s*(?:seconds?|secs?))?";
    let chinese = r"(?:(?P<h>\d{1,2})\s*个?小时\s*(?:零\s*)?)?(?P<m>\d{1,3})\s*分(?:钟)?(?:\s*(?P<s>\d{1,2})\s*秒)?";
    [
        format!(r"(?i)\b(?:at|around|near|roughly|approximately)\s+(?:the\s+)?{english}"),
        // "15 minutes in?", not "15 minutes in the new model".
        format!(r"(?i)\b{english}\s+(?:in\s*(?:[?.,;!]|$)|into\b|mark\b)"),
        format!(r"第\s*{chinese}"),
        // Not "12分钟内" (within 12 minutes).
        format!(r"{chinese}\s*(?:左右|的时候|时候|时|处|前后|那里|那儿)"),
    ]
    .map(|pattern| Regex::new(&pattern).expect("static regex"))
});

/// "minute 12", "the 12th minute".
static MINUTE_NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bminute\s+(?P<m>\d{1,3})\b|\b(?P<n>\d{1,3})(?:st|nd|rd|th)\s+minute\b")
        .expect("static regex")
});

/// The moment `question` asks about, when it names one.
pub fn named_in(question: &str) -> Option<Timestamp> {
    if let Some(clock) = CLOCK.captures(question) {
        if let Some(at) = Timestamp::parse(&clock[1]) {
            return Some(at);
        }
    }
    if let Some(caps) = MINUTE_NUMBER.captures(question) {
        let minutes = caps.name("m").or_else(|| caps.name("n"))?.as_str();
        return Some(Timestamp::from_seconds(minutes.parse::<u64>().ok()? * 60));
    }
    PLACED
        .iter()
        .find_map(|pattern| pattern.captures(question))
        .and_then(|caps| amount(&caps))
}

/// The hours, minutes and seconds a match captured, as a moment; `None` for seconds past 59.
fn amount(caps: &Captures) -> Option<Timestamp> {
    let number = |name: &str| -> Option<u64> {
        caps.name(name).map_or(Some(0), |m| m.as_str().parse().ok())
    };
    let (hours, minutes, seconds) = (number("h")?, number("m")?, number("s")?);
    if seconds >= 60 {
        return None;
    }
    Some(Timestamp::from_seconds(
        (hours * 60 + minutes) * 60 + seconds,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(question: &str) -> Option<u64> {
        named_in(question).map(|t| t.millis() / 1000)
    }

    #[test]
    fn clock_times_name_a_moment() {
        assert_eq!(seconds("What did Sam say at 12:34?"), Some(754));
        assert_eq!(seconds("what was said at 1:02:03"), Some(3723));
        assert_eq!(seconds("12:34 的时候他说了什么？"), Some(754));
        assert_eq!(seconds("the ratio 3:2:1:7"), None);
    }

    #[test]
    fn minutes_placed_in_the_recording_name_a_moment() {
        assert_eq!(seconds("What did he say around minute 40?"), Some(2400));
        assert_eq!(seconds("What came up in the 12th minute?"), Some(720));
        assert_eq!(seconds("What did she say 15 minutes in?"), Some(900));
        assert_eq!(seconds("anything around the 40-minute mark?"), Some(2400));
        assert_eq!(
            seconds("what did they discuss at 1 hour 5 minutes?"),
            Some(3900)
        );
        assert_eq!(seconds("at 3 minutes and 20 seconds"), Some(200));
        assert_eq!(seconds("主持人在第12分钟问了什么？"), Some(720));
        assert_eq!(seconds("Altman 在12分30秒左右说了什么？"), Some(750));
        assert_eq!(seconds("1小时5分钟的时候在聊什么？"), Some(3900));
    }

    #[test]
    fn durations_and_plain_numbers_name_no_moment() {
        assert_eq!(
            seconds("Which task takes 12 minutes with the new model?"),
            None
        );
        assert_eq!(
            seconds("Which task takes 12 minutes in the new model?"),
            None
        );
        assert_eq!(
            seconds("What did he say about 5 minutes of planning?"),
            None
        );
        assert_eq!(seconds("他说哪件事能在12分钟内完成？"), None);
        assert_eq!(
            seconds("What did Altman say about the 95% of startups?"),
            None
        );
        assert_eq!(seconds("What did Altman say about agents?"), None);
    }
}
