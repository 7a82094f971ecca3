//! Lexical scoring: CJK-aware terms and BM25.
//!
//! Chinese has no spaces, so CJK runs become jieba words (search mode, which also emits the
//! shorter words inside long ones) plus overlapping character pairs; Latin text is split on
//! non-alphanumerics. Stop words and punctuation are dropped.

use std::collections::HashMap;

use jieba_rs::Jieba;

use crate::transcript::is_cjk_char;

/// BM25 parameters: the usual defaults, which suit turns of a few sentences to a few paragraphs.
const K1: f32 = 1.2;
const B: f32 = 0.75;

pub struct Bm25 {
    jieba: Jieba,
    term_freqs: Vec<HashMap<String, u32>>,
    doc_lens: Vec<f32>,
    avg_doc_len: f32,
    doc_freq: HashMap<String, u32>,
}

impl Bm25 {
    pub fn build<'a>(docs: impl IntoIterator<Item = &'a str>) -> Self {
        let jieba = Jieba::new();
        let term_freqs: Vec<HashMap<String, u32>> = docs
            .into_iter()
            .map(|d| count_terms(&tokenize(&jieba, d)))
            .collect();
        let doc_lens: Vec<f32> = term_freqs
            .iter()
            .map(|tf| tf.values().sum::<u32>() as f32)
            .collect();
        let avg_doc_len = doc_lens.iter().sum::<f32>() / doc_lens.len().max(1) as f32;
        let mut doc_freq = HashMap::new();
        for tf in &term_freqs {
            for term in tf.keys() {
                *doc_freq.entry(term.clone()).or_insert(0) += 1;
            }
        }
        Self {
            jieba,
            term_freqs,
            doc_lens,
            avg_doc_len,
            doc_freq,
        }
    }

    pub fn terms(&self, text: &str) -> Vec<String> {
        tokenize(&self.jieba, text)
    }

    /// The words of `text`, without the character pairs that [`Bm25::terms`] adds.
    pub fn words(&self, text: &str) -> Vec<String> {
        words(&self.jieba, text)
    }

    /// Share of `terms` that occur anywhere in the documents. An English question over a Chinese
    /// transcript shares few words with it, and the few it shares ("OpenAI", "AI") say little;
    /// fusion trusts lexical ranking in proportion to this share.
    pub fn known_share(&self, terms: &[String]) -> f32 {
        if terms.is_empty() {
            return 0.0;
        }
        let known = terms
            .iter()
            .filter(|t| self.doc_freq.contains_key(*t))
            .count();
        known as f32 / terms.len() as f32
    }

    /// BM25 score of every document for the query `terms`, in document order.
    pub fn scores(&self, terms: &[String]) -> Vec<f32> {
        let n_docs = self.term_freqs.len() as f32;
        self.term_freqs
            .iter()
            .zip(&self.doc_lens)
            .map(|(tf_of, &len)| {
                terms
                    .iter()
                    .map(|term| {
                        let tf = tf_of.get(term).copied().unwrap_or(0) as f32;
                        if tf == 0.0 {
                            return 0.0;
                        }
                        let df = self.doc_freq.get(term).copied().unwrap_or(0) as f32;
                        let idf = ((n_docs - df + 0.5) / (df + 0.5) + 1.0).ln();
                        let norm = K1 * (1.0 - B + B * len / self.avg_doc_len);
                        idf * tf * (K1 + 1.0) / (tf + norm)
                    })
                    .sum()
            })
            .collect()
    }
}

fn count_terms(terms: &[String]) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for t in terms {
        *counts.entry(t.clone()).or_insert(0) += 1;
    }
    counts
}

/// Lower-cased index terms: [`words`], plus overlapping character pairs of CJK runs.
pub fn tokenize(jieba: &Jieba, text: &str) -> Vec<String> {
    let mut terms = words(jieba, text);
    for (is_cjk, run) in script_runs(text) {
        if is_cjk {
            terms.extend(char_bigrams(&run));
        }
    }
    terms
}

/// Lower-cased words: jieba words for CJK runs, alphanumeric words (plurals stripped) for the
/// rest, stop words and punctuation dropped.
pub fn words(jieba: &Jieba, text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for (is_cjk, run) in script_runs(text) {
        if is_cjk {
            words.extend(
                jieba
                    .cut_for_search(&run, true)
                    .into_iter()
                    .map(|token| token.word)
                    .filter(|w| w.chars().any(is_cjk_char) && !ZH_STOP.contains(w))
                    .map(str::to_string),
            );
        } else {
            words.extend(
                run.split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_lowercase)
                    .filter(|w| !EN_STOP.contains(&w.as_str()))
                    .map(|w| stem(&w)),
            );
        }
    }
    words
}

/// Overlapping character pairs catch the paraphrases and compounds that word segmentation
/// splits differently in the question and in the turn.
fn char_bigrams(run: &str) -> Vec<String> {
    let chars: Vec<char> = run.chars().collect();
    chars.windows(2).map(|w| w.iter().collect()).collect()
}

/// Crude plural stripping so "agents" matches "agent"; enough for keyword overlap.
fn stem(word: &str) -> String {
    let keeps_its_s = ["ss", "us", "is", "as"]
        .iter()
        .any(|end| word.ends_with(end));
    match word.strip_suffix('s') {
        Some(base) if base.len() > 2 && !keeps_its_s => base.to_string(),
        _ => word.to_string(),
    }
}

/// Splits text into maximal runs of CJK and non-CJK characters.
fn script_runs(text: &str) -> Vec<(bool, String)> {
    let mut runs: Vec<(bool, String)> = Vec::new();
    for c in text.chars() {
        let cjk = is_cjk_char(c);
        match runs.last_mut() {
            Some((kind, run)) if *kind == cjk => run.push(c),
            _ => runs.push((cjk, c.to_string())),
        }
    }
    runs
}

const EN_STOP: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "did",
    "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "how", "i", "if", "in",
    "is", "it", "its", "me", "my", "of", "on", "or", "our", "she", "so", "that", "the", "their",
    "them", "there", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "would", "you", "your", "say", "said", "says", "think", "thinks",
];

const ZH_STOP: &[&str] = &[
    "的",
    "了",
    "是",
    "我",
    "你",
    "他",
    "她",
    "它",
    "我们",
    "你们",
    "他们",
    "在",
    "和",
    "与",
    "也",
    "就",
    "都",
    "而",
    "及",
    "这",
    "那",
    "这个",
    "那个",
    "一个",
    "什么",
    "怎么",
    "如何",
    "吗",
    "呢",
    "吧",
    "啊",
    "说",
    "认为",
    "觉得",
    "有",
    "没有",
    "不",
    "会",
    "对",
    "把",
    "被",
    "让",
    "从",
    "到",
    "为",
    "为什么",
    "哪些",
    "哪里",
    "哪个",
    "是否",
    "关于",
    "就是",
    "因为",
    "所以",
    "但",
    "但是",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_is_segmented_into_words_and_pairs() {
        let terms = tokenize(&Jieba::new(), "我认为智能体会改变软件的定价");
        assert!(terms.contains(&"定价".to_string()));
        assert!(terms.contains(&"能体".to_string()));
        assert!(!terms.contains(&"的".to_string()));
    }

    #[test]
    fn mixed_text_keeps_latin_words() {
        let terms = tokenize(&Jieba::new(), "SaaS的定价 agents");
        assert!(terms.contains(&"saas".to_string()));
        assert!(terms.contains(&"agent".to_string()));
    }

    #[test]
    fn rarer_terms_weigh_more() {
        let bm25 = Bm25::build(["pricing compute", "pricing agents", "pricing"]);
        let scores = bm25.scores(&bm25.terms("agents pricing"));
        assert!(scores[1] > scores[0] && scores[1] > scores[2]);
    }
}
