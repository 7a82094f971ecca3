//! What tqa puts into an answer, or holds it to, while the model writes it: quotations word for
//! word from the cited turn, and citations of turns the answer may cite.

use regex::Regex;

use super::{citation_regex, extract_citations, normalize_turn_id, quotation_regex};
use crate::model::generate::{closing_mark, Next, Steer};
use crate::retrieval::Retrieved;
use crate::transcript::{is_cjk_char, Language};

/// The steering of one answer: its citations are held to the citable turns and, when
/// `fill_quotes` is on, its quotations are filled.
pub(super) struct AnswerSteer<'a> {
    quotes: Option<QuoteFiller<'a>>,
    citations: CitationGuard,
    /// The last quotation filled in: the reply goes on after it on the same line, where the
    /// prompt asks for what the speaker meant. Without this, a small model often ends a Chinese
    /// quotation's bullet, or the whole answer, with the quotation alone.
    last_filled: Option<String>,
    /// The given turns in the question's language, where they are in another (see
    /// `Steer::restates`).
    restated: Vec<String>,
    /// Whether the answer is in English.
    english: bool,
    /// Whether a given turn is in Chinese. An English answer about Chinese turns may write
    /// Chinese only in its quotations.
    chinese_given: bool,
}

impl<'a> AnswerSteer<'a> {
    /// `whose` turns the answer may cite, from what the question names; `min_relevance` is the
    /// model's judgement from which a given exchange is owed a bullet (see [`CitationGuard`]).
    pub(super) fn new(
        given: &'a [Retrieved],
        whose: Whose,
        min_relevance: f32,
        fill_quotes: bool,
    ) -> Self {
        Self {
            quotes: fill_quotes.then(|| QuoteFiller::new(given)),
            citations: CitationGuard::new(given, whose, min_relevance),
            last_filled: None,
            restated: Vec::new(),
            english: false,
            chinese_given: given.iter().any(|r| r.turn.text.chars().any(is_cjk_char)),
        }
    }

    /// The answer is to be in `language`: in English, what Chinese turns say is put in English
    /// outside the quotations (see `Steer::bars_chinese`).
    pub(super) fn in_language(mut self, language: Language) -> Self {
        self.english = language == Language::En;
        self
    }

    /// An English answer about Chinese turns restates them in English: the turns' translations
    /// are where its guesses hold.
    pub(super) fn with_restated(mut self, translations: Vec<String>) -> Self {
        self.restated = translations;
        self
    }
}

impl Steer for AnswerSteer<'_> {
    fn restates(&self) -> &[String] {
        &self.restated
    }

    fn insert(&mut self, reply: &str) -> Option<String> {
        let filled = self.quotes.as_ref()?.fill(reply);
        self.last_filled.clone_from(&filled);
        filled
    }

    fn next(&self, reply: &str) -> Option<Next> {
        let spent = || {
            self.quotes
                .as_ref()
                .map_or_else(Vec::new, |q| q.spent(reply))
        };
        if let Some(rest) = self.citations.continuations(reply, spent) {
            return Some(Next::OneOf(rest));
        }
        if reply.ends_with('\n') && self.citations.all_spent(reply, spent) {
            return Some(Next::End);
        }
        if let Some(opening) = self.quotes.as_ref().and_then(|q| q.opening_after(reply)) {
            return Some(Next::OneOf(opening));
        }
        // A long explanation ends its line, and the reply goes on with another bullet or ends:
        // left free after the line break, the model goes on explaining in paragraphs.
        let mut lines = reply.rsplit('\n');
        let line = lines.next().unwrap_or(reply);
        if explanation_sentences(line) >= MAX_EXPLANATION_SENTENCES {
            return Some(Next::OneOfOrEnd(vec!["\n".to_string()]));
        }
        if line.is_empty()
            && lines
                .next()
                .is_some_and(|above| explanation_sentences(above) >= MAX_EXPLANATION_SENTENCES)
        {
            return Some(Next::OneOfOrEnd(vec!["- [".to_string()]));
        }
        let just_filled = self
            .last_filled
            .as_ref()
            .is_some_and(|q| reply.ends_with(q.as_str()));
        just_filled.then_some(Next::OnSameLine)
    }

    fn instead_of_end(&mut self, reply: &str) -> Option<String> {
        self.citations.next_owed_bullet(reply)
    }

    fn goes_on_after(&self, reply: &str) -> bool {
        !self.citations.still_owed(reply).is_empty()
    }

    /// The reply's first token is left free: it opens the first bullet, and listing the
    /// vocabulary's Chinese tokens (~80 ms for the default model) before it would hold up the
    /// first token.
    fn bars_chinese(&self, reply: &str) -> bool {
        self.english
            && self.chinese_given
            && !reply.is_empty()
            && !ends_inside_quotation(reply.rsplit('\n').next().unwrap_or(reply))
    }
}

/// Sentences after which a bullet's explanation of its quotation ends. Left free, the model
/// tends to translate the whole quotation and go on, sentence after sentence, until the reply
/// runs into its token limit mid-sentence (docs/measurements.md, session 48).
const MAX_EXPLANATION_SENTENCES: usize = 3;

/// The finished sentences of `line` after its last quotation, counted when `line` ends with one:
/// an English sentence ends with ".", "!" or "?" followed by a space (not "3.5"), a Chinese one
/// with "。", "！" or "？".
fn explanation_sentences(line: &str) -> usize {
    let ends_sentence = |c: char, before: Option<char>| {
        matches!(c, '。' | '！' | '？')
            || (matches!(c, '.' | '!' | '?') && !before.is_some_and(|b| b.is_ascii_digit()))
    };
    let mut chars = line.chars().rev();
    let (Some(last), before) = (chars.next(), chars.next()) else {
        return 0;
    };
    if !ends_sentence(last, before) || ends_inside_quotation(line) {
        return 0;
    }
    let explanation = quotation_regex()
        .find_iter(line)
        .last()
        .map_or(line, |q| &line[q.end()..]);
    let chars: Vec<char> = explanation.chars().collect();
    let inner = chars.windows(3).filter(|w| {
        matches!(w[1], '。' | '！' | '？') || (ends_sentence(w[1], Some(w[0])) && w[2] == ' ')
    });
    inner.count() + 1
}

/// Whether `line` ends inside a quotation: a straight double quote opens and closes in turn, the
/// other marks each close with their own partner. A straight quote opens only where a quotation
/// can begin (at the start, after a space or a bracket): one written after a word with none open
/// is a stray closing mark ("…excellent results.\""), and does not leave the rest of the line
/// quoted.
fn ends_inside_quotation(line: &str) -> bool {
    let mut awaited = None;
    let mut before = None;
    for c in line.chars() {
        awaited = match awaited {
            Some(close) if c == close => None,
            Some(close) => Some(close),
            None if c == '"' && !may_open_quotation_after(before) => None,
            None => closing_mark(c),
        };
        before = Some(c);
    }
    awaited.is_some()
}

fn may_open_quotation_after(before: Option<char>) -> bool {
    before.is_none_or(|c| c.is_whitespace() || matches!(c, '[' | ']' | '(' | '（' | ':' | '：'))
}

/// Whose turns an answer may cite, from what the question names.
#[derive(Debug, Clone, Copy)]
pub enum Whose<'s> {
    /// The one speaker the question names ("what did Altman say…").
    Named(&'s str),
    /// Everyone but the host, whom the question does not name: the host asks the questions.
    AllButHost(&'s str),
    Anyone,
}

impl Whose<'_> {
    fn may_cite(self, turn: &Retrieved) -> bool {
        match self {
            Whose::Named(speaker) => turn.turn.speaker == speaker,
            Whose::AllButHost(host) => turn.turn.speaker != host,
            Whose::Anyone => true,
        }
    }
}

/// The turns an answer may cite: those given to the model and, among them, those of the speaker
/// the question names ("what did Altman say…"), or, when it names nobody, not the host's. The
/// prompt asks for a speaker's views from their own turns only, yet a small model often cites
/// the host's question that it read just before the answer, and the quotation filled in after
/// the citation is then the question ("What is the biggest risk?" answered first by "- [T5]
/// "What is the biggest risk for the company right now?" Host asks about the biggest risk").
/// When no given turn is such, any given turn is. A citation is held to these turns as the model
/// writes it, digit by digit.
///
/// The answer's first citation is held to the lead: the citable turns of the best-ranked exchange
/// (a matched turn and its partner), or the best-ranked citable turn when that exchange has none.
/// Ranking judges each exchange on its own, and on the dev set it put an answering turn first more
/// often than the model picked one out of all the turns in its prompt (docs/measurements.md);
/// later bullets may cite any citable turn.
///
/// Each given exchange that the ranking judged likely to answer is owed a bullet: where the model
/// would end its reply before citing one of them, a bullet citing one is begun for it. A small
/// model writes one bullet and stops, and a question whose answer spans two exchanges then gets
/// half of it (docs/measurements.md).
struct CitationGuard {
    numbers: Vec<String>,
    lead: Vec<String>,
    /// The citable turns of each exchange owed a bullet.
    owed: Vec<Vec<String>>,
    /// Where the bullet last begun for an owed exchange starts in the reply, and the turns its
    /// citation may name.
    begun: Option<(usize, Vec<String>)>,
    opening: Regex,
    bullet_start: Regex,
    citation: Regex,
}

impl CitationGuard {
    fn new(given: &[Retrieved], whose: Whose, min_relevance: f32) -> Self {
        let citable: Vec<&Retrieved> = if given.iter().any(|r| whose.may_cite(r)) {
            given.iter().filter(|r| whose.may_cite(r)).collect()
        } else {
            given.iter().collect()
        };
        Self {
            numbers: citable.iter().map(|r| number(r)).collect(),
            lead: lead(given, &citable).iter().map(|r| number(r)).collect(),
            owed: owed(given, &citable, min_relevance),
            begun: None,
            opening: Regex::new(r"([\[【])\s*T(\d*)$").expect("static regex"),
            bullet_start: Regex::new(r"^\s*[-*•]\s*[\[【]\s*T\d*$").expect("static regex"),
            citation: citation_regex(),
        }
    }

    /// When `reply` ends inside a citation ("[T", "[T1"), the rest of each id it may cite that
    /// begins with the digits written so far, with the closing bracket. A bullet's leading
    /// citation names a turn with something left to quote, while there is one (`spent`: the
    /// turns without, see [`QuoteFiller::spent`]): the quotation after it would otherwise repeat
    /// an earlier bullet's.
    fn continuations(&self, reply: &str, spent: impl Fn() -> Vec<String>) -> Option<Vec<String>> {
        // Consulted at every token: only the line being written can hold an open citation.
        let line_start = reply.rfind('\n').map_or(0, |at| at + 1);
        let line = &reply[line_start..];
        let caps = self.opening.captures(line)?;
        let close = if &caps[1] == "【" { '】' } else { ']' };
        let written = &caps[2];
        let begun_here = self
            .begun
            .as_ref()
            .filter(|(start, _)| *start == line_start && !self.citation.is_match(line));
        let allowed = match begun_here {
            Some((_, owed)) => owed,
            None if !self.lead.is_empty() && !self.citation.is_match(reply) => &self.lead,
            None => &self.numbers,
        };
        let leads_bullet = self.bullet_start.is_match(line);
        let spent = if leads_bullet { spent() } else { Vec::new() };
        let fresh: Vec<&String> = allowed.iter().filter(|n| !spent.contains(n)).collect();
        let allowed: Vec<&String> = if fresh.is_empty() {
            allowed.iter().collect()
        } else {
            fresh
        };
        let rest: Vec<String> = allowed
            .into_iter()
            .filter_map(|n| n.strip_prefix(written))
            .map(|rest| format!("{rest}{close}"))
            .collect();
        (!rest.is_empty()).then_some(rest)
    }

    /// Whether `reply` has cited a turn and every citable turn is `spent`: a further bullet
    /// could only repeat a quotation.
    fn all_spent(&self, reply: &str, spent: impl Fn() -> Vec<String>) -> bool {
        if !self.citation.is_match(reply) {
            return false;
        }
        let spent = spent();
        self.numbers.iter().all(|n| spent.contains(n))
    }

    /// The citable turns of the exchanges owed a bullet that `reply` has not cited, once it has
    /// cited a turn.
    fn still_owed(&self, reply: &str) -> Vec<String> {
        let cited = extract_citations(reply);
        if cited.is_empty() {
            return Vec::new();
        }
        let is_cited = |n: &String| cited.iter().any(|id| id.trim_start_matches('T') == n);
        self.owed
            .iter()
            .filter(|exchange| !exchange.iter().any(is_cited))
            .flatten()
            .cloned()
            .collect()
    }

    /// The opening of a bullet for the exchanges still owed one, when `reply` has cited a turn
    /// and would end without citing them; the citation it opens is held to their turns.
    fn next_owed_bullet(&mut self, reply: &str) -> Option<String> {
        let still_owed = self.still_owed(reply);
        if still_owed.is_empty() {
            return None;
        }
        let line_break = if reply.ends_with('\n') { "" } else { "\n" };
        self.begun = Some((reply.len() + line_break.len(), still_owed));
        Some(format!("{line_break}- [T"))
    }
}

fn number(r: &Retrieved) -> String {
    r.turn.id.trim_start_matches('T').to_string()
}

/// The citable turns of each given exchange whose best judged turn reached `min_relevance`, in
/// the order given; none when the ranking was not judged.
fn owed(given: &[Retrieved], citable: &[&Retrieved], min_relevance: f32) -> Vec<Vec<String>> {
    let leader = |r: &Retrieved| r.partner_of.clone().unwrap_or_else(|| r.turn.id.clone());
    let mut leaders: Vec<String> = Vec::new();
    for r in given {
        let judged_to_answer = r.relevance.is_some_and(|rel| rel >= min_relevance);
        if judged_to_answer && !leaders.contains(&leader(r)) {
            leaders.push(leader(r));
        }
    }
    leaders
        .iter()
        .map(|l| {
            citable
                .iter()
                .filter(|r| leader(r) == *l)
                .map(|r| number(r))
                .collect::<Vec<_>>()
        })
        .filter(|numbers| !numbers.is_empty())
        .collect()
}

/// The turns a first citation is held to (see [`CitationGuard`]); none when the ranking was not
/// judged, since the index's own first turn is a weaker guess (docs/measurements.md).
fn lead<'a>(given: &[Retrieved], citable: &[&'a Retrieved]) -> Vec<&'a Retrieved> {
    let Some(best) = given.first().filter(|r| r.relevance.is_some()) else {
        return Vec::new();
    };
    let in_best_exchange = |r: &&&Retrieved| {
        r.turn.id == best.turn.id || r.partner_of.as_deref() == Some(best.turn.id.as_str())
    };
    let lead: Vec<&Retrieved> = citable.iter().filter(in_best_exchange).copied().collect();
    if lead.is_empty() {
        citable.first().copied().into_iter().collect()
    } else {
        lead
    }
}

/// Passages that one quotation takes from a turn. The passage closest to the question holds the
/// point more often than not, but the sentence that answers is often the next one.
pub const PASSAGES_PER_QUOTE: usize = 2;

/// Writes the quotations of an answer for the model. When the model cites a turn and opens a
/// quotation, the quotation becomes the passages of that turn that retrieval found closest to the
/// question and that the answer has not quoted yet, in the turn's order. A small model asked to
/// quote copies whole turns, the wrong sentence, or words the turn never said; a passage is word
/// for word, and it costs a prefill instead of a decode.
struct QuoteFiller<'a> {
    given: &'a [Retrieved],
    opening: Regex,
    bullet_citation: Regex,
}

impl<'a> QuoteFiller<'a> {
    fn new(given: &'a [Retrieved]) -> Self {
        Self {
            given,
            opening: Regex::new(r#"[\[【]\s*(T\d+)\s*[\]】]\s*[:：]?\s*(["“「『])$"#)
                .expect("static regex"),
            bullet_citation: Regex::new(r"^\s*[-*•]\s*[\[【]\s*T\d+\s*[\]】](\s?)$")
                .expect("static regex"),
        }
    }

    /// The quotation marks the line may go on with, when `reply` ends with a bullet's leading
    /// citation. Left free there, a small model now and then copies the prompt's excerpt header
    /// ("[T59] 主持人…: …") after it, with another turn's words, where a quotation is checked
    /// and filled from the turn cited.
    fn opening_after(&self, reply: &str) -> Option<Vec<String>> {
        let line = reply.rsplit('\n').next().unwrap_or(reply);
        let caps = self.bullet_citation.captures(line)?;
        let space = if caps[1].is_empty() { " " } else { "" };
        Some(["\"", "“"].map(|mark| format!("{space}{mark}")).to_vec())
    }

    /// The quotation's words and closing mark, when `reply` ends with a cited turn's opening
    /// mark and some passage of that turn is not in the reply yet.
    fn fill(&self, reply: &str) -> Option<String> {
        let line = reply.rsplit('\n').next().unwrap_or(reply);
        // The regex runs only when the reply has just grown an opening mark.
        closing_mark(line.chars().last()?)?;
        let caps = self.opening.captures(line)?;
        let id = normalize_turn_id(caps.get(1)?.as_str());
        let close = closing_mark(caps.get(2)?.as_str().chars().next()?)?;
        let turn = self.given.iter().find(|r| r.turn.id == id)?;
        let mut fresh: Vec<&str> = unquoted_passages(turn, reply)
            .take(PASSAGES_PER_QUOTE)
            .collect();
        let text = &turn.turn.text;
        fresh.sort_by_key(|p| text.find(p).unwrap_or(usize::MAX));
        let quoted = fresh
            .iter()
            .map(|p| plain_words(p))
            .reduce(|quoted, next| {
                // Passages that follow each other in the turn read as one; a gap is marked.
                let whole = plain_words(text);
                ["", " "]
                    .iter()
                    .map(|space| format!("{quoted}{space}{next}"))
                    .find(|joined| whole.contains(joined.as_str()))
                    .unwrap_or_else(|| format!("{quoted} … {next}"))
            })?;
        Some(format!("{quoted}{close}"))
    }

    /// The numbers of the given turns whose passages `reply` has all quoted: a quotation opened
    /// after citing one is left to the model, which then copies an earlier quotation.
    fn spent(&self, reply: &str) -> Vec<String> {
        self.given
            .iter()
            .filter(|r| !r.passages.is_empty() && unquoted_passages(r, reply).next().is_none())
            .map(number)
            .collect()
    }
}

/// The passages of `turn`, closest to the question first, that `reply` does not quote yet.
fn unquoted_passages<'a>(turn: &'a Retrieved, reply: &'a str) -> impl Iterator<Item = &'a str> {
    turn.passages
        .iter()
        .map(|p| p.text.as_str())
        .filter(move |text| {
            let words = plain_words(text);
            !words.is_empty() && !reply.contains(words.as_str())
        })
}

/// Text as it is quoted: without bold marks, its spacing and line breaks made single spaces.
fn plain_words(text: &str) -> String {
    text.replace("**", "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::says_verbatim;
    use crate::answer::tests::given;
    use crate::retrieval::Passage;

    #[test]
    fn a_citation_is_held_to_the_named_speakers_given_turns() {
        let turns = [
            given("T1", "Harry", "问题？"),
            given("T12", "Sam", "回答。"),
            given("T13", "Harry", "下一个问题？"),
            given("T2", "Sam", "另一个回答。"),
        ];
        let guard = CitationGuard::new(&turns, Whose::Named("Sam"), 0.0);
        assert_eq!(
            guard.continuations("Answered: yes\n- [T", Vec::new),
            Some(vec!["12]".to_string(), "2]".to_string()])
        );
        assert_eq!(
            guard.continuations("- [T1", Vec::new),
            Some(vec!["2]".to_string()])
        );
        assert_eq!(
            guard.continuations("- 【T12", Vec::new),
            Some(vec!["】".to_string()])
        );
        // Outside a citation, and past digits no citable id begins with, the model is free.
        assert_eq!(guard.continuations("- [T12] \"", Vec::new), None);
        assert_eq!(guard.continuations("- [T9", Vec::new), None);

        let anyone = CitationGuard::new(&turns, Whose::Anyone, 0.0);
        assert_eq!(
            anyone.continuations("[T1", Vec::new).map(|c| c.len()),
            Some(3),
            "T1 itself, T12 and T13"
        );
        let nobody_named_is_given = CitationGuard::new(&turns, Whose::Named("Li"), 0.0);
        assert_eq!(nobody_named_is_given.numbers, anyone.numbers);
        let not_the_host = CitationGuard::new(&turns, Whose::AllButHost("Harry"), 0.0);
        assert_eq!(not_the_host.numbers, guard.numbers);
        let only_the_host_given = CitationGuard::new(&turns[..1], Whose::AllButHost("Harry"), 0.0);
        assert_eq!(only_the_host_given.numbers, ["1"]);
    }

    /// Two judged exchanges as ranking gives them: T15's question (judged 2.0) with T16's
    /// answer, and T13's answer (judged 0.5) with T12's question.
    fn two_judged_exchanges() -> Vec<Retrieved> {
        let mut turns = vec![
            given("T15", "Harry", "问题？"),
            given("T16", "Sam", "回答。"),
            given("T13", "Sam", "另一个回答。"),
            given("T12", "Harry", "上一个问题？"),
        ];
        turns[0].relevance = Some(2.0);
        turns[1].partner_of = Some("T15".into());
        turns[2].relevance = Some(0.5);
        turns[3].partner_of = Some("T13".into());
        turns
    }

    #[test]
    fn a_judged_rankings_first_citation_is_in_its_best_exchange() {
        let mut turns = two_judged_exchanges();
        let guard = CitationGuard::new(&turns, Whose::Anyone, 0.0);
        let first = guard.continuations("Answered: yes\n- [T", Vec::new);
        assert_eq!(first, Some(vec!["15]".to_string(), "16]".to_string()]));
        assert_eq!(
            guard.continuations("- [T13", Vec::new),
            None,
            "not in the lead"
        );
        let second = guard.continuations("- [T16] \"回答。\" ok\n- [T", Vec::new);
        assert_eq!(second.map(|c| c.len()), Some(4), "then any given turn");
        // A named speaker's turns only; the best-ranked of them when the best exchange has none.
        let named = CitationGuard::new(&turns, Whose::Named("Sam"), 0.0);
        assert_eq!(
            named.continuations("- [T", Vec::new),
            Some(vec!["16]".to_string()])
        );
        let mut hosts_elsewhere = [
            given("T16", "Sam", "回答。"),
            given("T12", "Harry", "上一个问题？"),
            given("T14", "Harry", "下一个问题？"),
        ];
        hosts_elsewhere[0].relevance = Some(1.0);
        let host_named = CitationGuard::new(&hosts_elsewhere, Whose::Named("Harry"), 0.0);
        assert_eq!(
            host_named.continuations("- [T", Vec::new),
            Some(vec!["12]".to_string()])
        );

        // The index's order alone does not lead.
        turns[0].relevance = None;
        let unjudged = CitationGuard::new(&turns, Whose::Anyone, 0.0);
        assert_eq!(
            unjudged.continuations("- [T", Vec::new).map(|c| c.len()),
            Some(4)
        );
    }

    #[test]
    fn each_exchange_judged_to_answer_is_owed_a_bullet() {
        let mut turns = two_judged_exchanges();
        let mut unrelated = given("T30", "Sam", "无关的回答。");
        unrelated.relevance = Some(0.1);
        turns.push(unrelated);
        let mut guard = CitationGuard::new(&turns, Whose::Named("Sam"), 0.25);
        assert_eq!(guard.next_owed_bullet("No citation."), None);
        let reply = "- [T16] \"回答。\" ok";
        assert_eq!(
            guard.still_owed(reply),
            ["13"],
            "what a stop sequence may not end before"
        );
        let opened = guard
            .next_owed_bullet(reply)
            .expect("T13's exchange is owed");
        assert_eq!(opened, "\n- [T");
        let reply = format!("{reply}{opened}");
        assert_eq!(
            guard.continuations(&reply, Vec::new),
            Some(vec!["13]".to_string()]),
            "the named speaker's turn of the owed exchange, not T30"
        );
        let reply = format!("{reply}13] \"另一个回答。\" and\n");
        assert_eq!(
            guard.continuations(&format!("{reply}- [T3"), Vec::new),
            Some(vec!["0]".to_string()])
        );
        assert_eq!(
            guard.next_owed_bullet(&reply),
            None,
            "every owed exchange is cited"
        );

        let mut one_exchange = CitationGuard::new(&turns[..2], Whose::Anyone, 0.25);
        one_exchange
            .owed
            .iter()
            .for_each(|o| assert_eq!(o, &["15", "16"]));
        assert_eq!(one_exchange.next_owed_bullet("- [T15] ok"), None);
        turns[0].relevance = None;
        assert!(CitationGuard::new(&turns[..2], Whose::Anyone, 0.0)
            .owed
            .is_empty());
    }

    #[test]
    fn the_reply_goes_on_after_a_filled_quotation_on_the_same_line() {
        let mut turn = given("T4", "Sam", "大约两百万美元。");
        turn.passages = vec![Passage {
            text: "大约两百万美元。".into(),
            similarity: 0.9,
        }];
        let turns = [turn];
        let mut steer = AnswerSteer::new(&turns, Whose::Anyone, 0.0, true);
        let opened = "Answered: yes\n- [T4] \"";
        let filled = steer.insert(opened).expect("a quotation");
        let reply = format!("{opened}{filled}");
        assert!(matches!(steer.next(&reply), Some(Next::OnSameLine)));
        assert!(steer.next(&format!("{reply} He")).is_none());
        assert!(matches!(
            steer.next(&format!("{reply} He\n- [T")),
            Some(Next::OneOf(_))
        ));
    }

    #[test]
    fn an_english_answer_bars_chinese_outside_its_quotations() {
        let turns = [given("T4", "Sam", "大约两百万美元。")];
        let english = AnswerSteer::new(&turns, Whose::Anyone, 0.0, true).in_language(Language::En);
        assert!(!english.bars_chinese(""), "the first token is free");
        for (reply, inside) in [
            ("- [T4] ", false),
            ("- [T4] \"大约", true),
            ("- [T4] \"大约两百万美元。\" He says", false),
            ("- [T4] “大约两百万美元。” He calls it \"", true),
            ("- [T4] 「大约」 and 『", true),
            // Only the line being written counts: a quotation left open above it is closed.
            ("- [T4] \"大约\n- [T4] He", false),
            // A stray closing mark opens nothing.
            ("- [T4] \"大约。\" He got results.\" And", false),
            ("- [T4]\"大约", true),
        ] {
            assert_eq!(english.bars_chinese(reply), !inside, "{reply}");
        }
        let chinese = AnswerSteer::new(&turns, Whose::Anyone, 0.0, true).in_language(Language::Zh);
        assert!(!chinese.bars_chinese("- [T4] \"大约两百万美元。\" 他说"));
        // English turns: nothing to bar, and no vocabulary to look through.
        let english_turns = [given("T4", "Sam", "About two million dollars.")];
        let about_english = AnswerSteer::new(&english_turns, Whose::Anyone, 0.0, true);
        assert!(!about_english
            .in_language(Language::En)
            .bars_chinese("- [T4] He"));
    }

    #[test]
    fn an_explanation_ends_its_line_after_three_sentences() {
        let quoted = "- [T4] \"大约两百万美元。主要是服务器。还招了人。\"";
        for (explanation, sentences) in [
            (" Wu Dan says it cost two million dollars.", 1),
            (" It cost $2.5 million. Mostly servers! Why? Growth.", 4),
            (" GPT 3.5 was bad.", 1),
            (" It cost two million dollars. Mostly", 0),
            (
                " 她说花了两百万美元。主要用在服务器上。还招了四名工程师。",
                3,
            ),
        ] {
            assert_eq!(
                explanation_sentences(&format!("{quoted}{explanation}")),
                sentences,
                "{explanation}"
            );
        }
        assert_eq!(explanation_sentences("- [T4] \"One. Two. Three."), 0);
        let turns = [given("T4", "Sam", "大约两百万美元。")];
        let steer = AnswerSteer::new(&turns, Whose::Anyone, 0.0, false);
        let long = format!("{quoted} It cost two million. Mostly servers. And four hires.");
        assert!(matches!(steer.next(&long), Some(Next::OneOfOrEnd(t)) if t == ["\n"]));
        assert!(
            matches!(steer.next(&format!("{long}\n")), Some(Next::OneOfOrEnd(t)) if t == ["- ["]),
            "another bullet or the end, not a paragraph"
        );
        assert!(steer
            .next(&format!("{quoted} It cost two million."))
            .is_none());
    }

    /// Quotations are filled with passages not quoted yet: once a turn's are all quoted, a
    /// bullet citing it again could only repeat an earlier quotation.
    #[test]
    fn bullets_cite_turns_with_something_left_to_quote_and_end_when_none_has() {
        let with_passage = |id: &str, text: &str| {
            let mut turn = given(id, "Sam", text);
            turn.passages = vec![Passage {
                text: text.into(),
                similarity: 0.9,
            }];
            turn
        };
        let turns = [
            with_passage("T4", "大约两百万美元。"),
            with_passage("T7", "四名工程师。"),
        ];
        let steer = AnswerSteer::new(&turns, Whose::Anyone, 0.0, true);
        let one = "- [T4] \"大约两百万美元。\" 他说两百万。\n";
        assert!(steer.next(one).is_none());
        match steer.next(&format!("{one}- [T")) {
            Some(Next::OneOf(rest)) => assert_eq!(rest, ["7]"]),
            _ => panic!("the citation is held to T7"),
        }
        // Inside a sentence any given turn may be named.
        let inline = steer.next(&format!("{one}- 他在 [T"));
        assert!(matches!(inline, Some(Next::OneOf(rest)) if rest.len() == 2));
        let both = format!("{one}- [T7] \"四名工程师。\" 还有工程师。\n");
        assert!(matches!(steer.next(&both), Some(Next::End)));
        assert!(steer.next(&both[..both.len() - 1]).is_none(), "mid-line");
        // The model writes its own quotations: nothing is spent.
        let unfilled = AnswerSteer::new(&turns, Whose::Anyone, 0.0, false);
        assert!(unfilled.next(&both).is_none());
        // Without passages (no embedder) nothing is filled, so nothing is spent either.
        let bare = [given("T4", "Sam", "大约两百万美元。")];
        let steer = AnswerSteer::new(&bare, Whose::Anyone, 0.0, true);
        assert!(steer.next("- [T4] \"大约两百万美元。\" ok\n").is_none());
    }

    #[test]
    fn a_bullets_leading_citation_goes_on_with_a_quotation() {
        let turns = [given("T4", "Sam", "一句话。")];
        let steer = AnswerSteer::new(&turns, Whose::Anyone, 0.0, true);
        let marks = |reply: &str| match steer.next(reply) {
            Some(Next::OneOf(marks)) => Some(marks),
            _ => None,
        };
        let spaced = Some(vec![" \"".to_string(), " “".to_string()]);
        assert_eq!(marks("- [T4]"), spaced);
        assert_eq!(marks("Answered: yes\n- 【T4】"), spaced);
        assert_eq!(
            marks("- [T4] "),
            Some(vec!["\"".to_string(), "“".to_string()])
        );
        // A citation inside a sentence, or one already followed by words, is left alone.
        assert_eq!(marks("- He said so [T4]"), None);
        assert_eq!(marks("- [T4] He"), None);
        // Where the model writes its own quotations, it may write anything after the citation.
        let unfilled = AnswerSteer::new(&turns, Whose::Anyone, 0.0, false);
        assert!(unfilled.next("- [T4]").is_none());
    }

    #[test]
    fn an_opened_quotation_is_filled_with_the_cited_turns_closest_passages_in_order() {
        let text = "前言。大约两百万美元，\n主要是**服务器**。后记。中间的话。结尾。";
        let mut turn = given("T4", "Sam", text);
        let passage = |text: &str, similarity| Passage {
            text: text.into(),
            similarity,
        };
        turn.passages = vec![
            passage("大约两百万美元，\n主要是**服务器**。", 0.9),
            passage("后记。", 0.85),
            passage("结尾。", 0.8),
            passage("前言。", 0.7),
            passage("中间的话。", 0.6),
        ];
        let mut paragraphs = given("T6", "Sam", "甲。\n\n乙。");
        paragraphs.passages = vec![passage("乙。", 0.9), passage("甲。", 0.8)];
        let turns = [turn, given("T5", "Sam", "没有段落。"), paragraphs];
        let filler = QuoteFiller::new(&turns);
        // Passages a paragraph break apart are next to each other.
        assert_eq!(filler.fill("- [T6] \"").as_deref(), Some("甲。 乙。\""));
        let best = "大约两百万美元， 主要是服务器。后记。";
        assert_eq!(
            filler.fill("Answered: yes\n- [T4] \"").as_deref(),
            Some(format!("{best}\"").as_str())
        );
        assert_eq!(
            filler.fill("- 【T04】：“").as_deref(),
            Some(format!("{best}”").as_str())
        );
        assert!(says_verbatim(text, best));
        // The next quotation of the turn takes the next closest passages; apart, they are marked.
        let quoted_once = format!("- [T4] \"{best}\" ok\n- [T4] \"");
        let next = "前言。 … 结尾。";
        assert_eq!(
            filler.fill(&quoted_once).as_deref(),
            Some(format!("{next}\"").as_str())
        );
        assert!(says_verbatim(text, next));
        let quoted_twice = format!("{quoted_once}{next}\"\n- [T4] \"");
        assert_eq!(filler.fill(&quoted_twice).as_deref(), Some("中间的话。\""));
        // A quotation not right after a citation, a turn without passages, one not given, and a
        // turn quoted in full are left to the model.
        assert_eq!(filler.fill("- [T4] He said \""), None);
        assert_eq!(filler.fill("- [T5] \""), None);
        assert_eq!(filler.fill("- [T9] \""), None);
        assert_eq!(
            filler.fill(&format!("{quoted_twice}中间的话。\"\n- [T4] \"")),
            None
        );
        assert_eq!(filler.fill("- [T4] \"大约"), None);
    }
}
