//! SentencePiece's unigram segmentation for the embedder's 250,000 pieces: the best-scoring
//! split of a text into pieces, runs of characters no piece covers fused into one unknown.
//!
//! It computes what `tokenizers`' `Unigram` model computes (a test holds it to that over the
//! whole shipped transcript), with the pieces in a hash map instead of a byte trie: the trie took
//! 213 MB and 0.6 s to build for this vocabulary, the map about a tenth of each.

use std::collections::HashMap;

/// What `tokenizers` and SentencePiece subtract from the lowest piece score to score a character
/// no piece covers.
const UNKNOWN_PENALTY: f64 = 10.0;

/// Pieces with their log-probabilities, in id order.
pub type Pieces = Vec<(String, f64)>;

pub struct Unigram {
    /// Piece → id; a piece listed twice keeps its last id, as in `tokenizers`.
    ids: HashMap<Box<str>, u32>,
    scores: Vec<f64>,
    unknown: u32,
    unknown_score: f64,
    /// Bytes in the longest piece: no match is looked for past that.
    longest: usize,
}

/// The best split of a text's first bytes: its score, the piece that ends it and where that
/// piece starts.
#[derive(Clone, Copy)]
struct BestEnding {
    score: f64,
    id: u32,
    start: usize,
}

impl Unigram {
    /// `unknown` is the id of `<unk>`.
    pub fn new(pieces: Pieces, unknown: u32) -> Self {
        let lowest = pieces.iter().map(|(_, s)| *s).fold(f64::INFINITY, f64::min);
        let longest = pieces.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let mut ids = HashMap::with_capacity(pieces.len());
        let mut scores = Vec::with_capacity(pieces.len());
        for (id, (piece, score)) in pieces.into_iter().enumerate() {
            ids.insert(piece.into_boxed_str(), id as u32);
            scores.push(score);
        }
        Self {
            ids,
            scores,
            unknown,
            unknown_score: lowest - UNKNOWN_PENALTY,
            longest,
        }
    }

    /// The ids of `text`'s pieces, in order.
    pub fn ids(&self, text: &str) -> Vec<u32> {
        let best = self.best_endings(text);
        let mut pieces = Vec::new();
        let mut end = text.len();
        // Walked from the end, a run of unknowns is gathered until a known piece (or the start)
        // closes it.
        let mut unknown_run_end = None;
        while end > 0 {
            let Some(ending) = best[end] else { break };
            if ending.id == self.unknown {
                unknown_run_end.get_or_insert(end);
            } else {
                if let Some(run_end) = unknown_run_end.take() {
                    pieces.push(self.fused(&text[end..run_end]));
                }
                pieces.push(ending.id);
            }
            end = ending.start;
        }
        if let Some(run_end) = unknown_run_end {
            pieces.push(self.fused(&text[..run_end]));
        }
        pieces.reverse();
        pieces
    }

    /// For every byte offset that is a character boundary, the best split of the text before
    /// it. Ties go to the split found first, the one whose last piece starts earliest.
    fn best_endings(&self, text: &str) -> Vec<Option<BestEnding>> {
        let mut best: Vec<Option<BestEnding>> = vec![None; text.len() + 1];
        for (start, first) in text.char_indices() {
            let before = best[start].map_or(0.0, |b| b.score);
            let mut single_character_piece = false;
            let ends = text[start..]
                .char_indices()
                .map(|(i, c)| start + i + c.len_utf8())
                .take_while(|&end| end - start <= self.longest);
            for end in ends {
                if let Some(&id) = self.ids.get(&text[start..end]) {
                    let score = before + self.scores[id as usize];
                    offer(&mut best[end], BestEnding { score, id, start });
                    single_character_piece |= end - start == first.len_utf8();
                }
            }
            if !single_character_piece {
                let end = start + first.len_utf8();
                let score = before + self.unknown_score;
                let id = self.unknown;
                offer(&mut best[end], BestEnding { score, id, start });
            }
        }
        best
    }

    /// A run of characters no piece covers is one unknown, unless the run happens to be a piece.
    fn fused(&self, run: &str) -> u32 {
        self.ids.get(run).copied().unwrap_or(self.unknown)
    }
}

/// Keeps the better of two splits of the same text; on a tie the one offered first.
fn offer(best: &mut Option<BestEnding>, candidate: BestEnding) {
    if best.is_none_or(|b| candidate.score > b.score) {
        *best = Some(candidate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Unigram {
        let pieces = [
            ("<unk>", 0.0),
            ("a", -1.0),
            ("b", -2.0),
            ("ab", -1.5),
            ("c", -3.0),
        ];
        Unigram::new(pieces.iter().map(|(p, s)| (p.to_string(), *s)).collect(), 0)
    }

    #[test]
    fn the_best_scoring_split_wins() {
        // "ab" (-1.5) beats "a" + "b" (-3.0).
        assert_eq!(model().ids("abc"), vec![3, 4]);
    }

    #[test]
    fn a_run_of_uncovered_characters_is_one_unknown() {
        assert_eq!(model().ids("a好好c"), vec![1, 0, 4]);
        assert_eq!(model().ids("好"), vec![0]);
        assert!(model().ids("").is_empty());
    }
}
