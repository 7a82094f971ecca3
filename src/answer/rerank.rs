//! The answering model as a judge of the best-ranked turns. The index matches words and meaning;
//! whether a turn actually answers the question is a judgement the model adds to
//! (docs/measurements.md: on the dev set hit@1 0.515 → 0.697 and hit@3 0.758 → 0.879), at the
//! price of one short prompt per turn judged.

use super::{format_turn, log_odds, AnswerError, Prompts};
use crate::model::generate::check_context;
use crate::model::{Message, Model, Role, SamplingConfig};
use crate::retrieval::{standardized_fusion, Index, Retrieved, ScoreList};

/// How many of the best-ranked turns the model judges unless told otherwise: enough to reach the
/// turns that the index ranks just out of the prompt's reach.
pub const DEFAULT_CANDIDATES: usize = 8;

/// Replies that count as the model's "yes" and "no", by their first token.
const YES: &[&str] = &["yes", "Yes"];
const NO: &[&str] = &["no", "No"];

/// Judges each of the first `candidates` of `hits` on its own, with its partner turn (an answer
/// read without its question often does not say what it is about), records the model's
/// log-odds that it answers `question` in `Retrieved::relevance`, and re-orders those turns by it
/// and the index's score; the rest keep their places.
///
/// The exchange comes before the question in the prompt, so that its keys and values depend on
/// the instructions only: they are computed once per exchange and model and reused for every
/// later question, and a question then costs only its own tokens per turn judged, all turns'
/// in one batch (`Model::prefill_branches`).
pub fn rerank(
    model: &mut Model,
    prompts: &Prompts,
    question: &str,
    hits: &mut [Retrieved],
    candidates: usize,
    index: &Index,
) -> Result<(), AnswerError> {
    let judged = candidates.min(hits.len());
    if judged == 0 {
        return Ok(());
    }
    let messages = [
        Message::new(Role::System, prompts.rerank_system.as_str()),
        Message::new(Role::User, prompts.rerank_user.as_str()),
    ];
    let rendered = model.template().render(&messages);
    // `from_dir` and the shipped file guarantee the placeholder. The head holds the system turn
    // and the opening of the user message, so that the system turn is stored and reused like the
    // answer prompt's, and a turn's judgement does not depend on what the model ran before.
    let (head, tail) = rendered
        .rsplit_once("{turn}")
        .unwrap_or((rendered.as_str(), ""));
    let head = model.encode(head)?;
    let tail = model.encode(&tail.replace("{question}", question.trim()))?;
    let one_token = SamplingConfig {
        max_new_tokens: 1,
        ..SamplingConfig::default()
    };
    // A question and its answer are often both candidates: their exchange is judged once.
    let mut exchanges: Vec<Vec<u32>> = Vec::new();
    let mut exchange_of_hit = Vec::with_capacity(judged);
    for hit in hits.iter().take(judged) {
        let exchange: String = index
            .exchange(&hit.turn)
            .into_iter()
            .map(|turn| format_turn(turn, index.host()))
            .collect();
        let exchange = model.encode(&exchange)?;
        let at = match exchanges.iter().position(|e| *e == exchange) {
            Some(at) => at,
            None => {
                check_context(model, head.len() + exchange.len() + tail.len(), &one_token)?;
                exchanges.push(exchange);
                exchanges.len() - 1
            }
        };
        exchange_of_hit.push(at);
    }
    let relevances = model
        .prefill_branches(&head, &exchanges, &tail)?
        .iter()
        .map(|logits| log_odds(model, logits, YES, NO))
        .collect::<Result<Vec<_>, _>>()?;
    for (hit, &at) in hits.iter_mut().zip(&exchange_of_hit) {
        hit.relevance = relevances[at];
    }
    let scores: Vec<f32> = hits[..judged].iter().map(|h| h.score).collect();
    let Some(relevances) = hits[..judged]
        .iter()
        .map(|h| h.relevance)
        .collect::<Option<Vec<f32>>>()
    else {
        return Ok(());
    };
    let order = judged_order(&scores, &relevances);
    let reordered: Vec<Retrieved> = order.iter().map(|&i| hits[i].clone()).collect();
    hits[..judged].clone_from_slice(&reordered);
    Ok(())
}

/// The candidates' order by the model's judgement and the index's score, each standardized over
/// the candidates and weighted alike. The judgement alone moved turns the index had rightly put
/// first below worse ones: a small model's yes/no is a noisy vote, not a verdict
/// (docs/measurements.md).
fn judged_order(scores: &[f32], relevances: &[f32]) -> Vec<usize> {
    let combined = standardized_fusion(&[
        ScoreList::new(scores.to_vec(), 1.0),
        ScoreList::new(relevances.to_vec(), 1.0),
    ]);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Stable: candidates judged alike keep the index's order.
    order.sort_by(|&a, &b| combined[b].total_cmp(&combined[a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_judgement_overrides_a_small_lead_in_the_index() {
        let order = judged_order(&[5.0, 4.9, 3.0], &[-2.0, 3.0, -2.1]);
        assert_eq!(order, [1, 0, 2]);
    }

    #[test]
    fn a_clear_lead_in_the_index_survives_a_slight_judgement() {
        let order = judged_order(&[9.0, 3.0, 2.9], &[-0.2, 0.0, -0.3]);
        assert_eq!(order[0], 0);
    }

    #[test]
    fn equal_judgements_keep_the_index_order() {
        assert_eq!(judged_order(&[3.0, 2.0, 1.0], &[0.5, 0.5, 0.5]), [0, 1, 2]);
    }
}
