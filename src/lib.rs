//! tqa: question answering over interview transcripts with a local model.
//!
//! The stages, in the order data flows through them: [`transcript`] (file → turns),
//! [`retrieval`] (turns → index → the turns that match a question), [`model`] (GGUF loading,
//! tokenizer, chat template, generation loop), [`answer`] (prompt, generation, citations), and
//! the measurements [`bench`] and [`eval`].

pub mod answer;
pub mod bench;
pub mod cache;
pub mod eval;
pub mod model;
pub mod retrieval;
pub mod transcript;

/// Durations are reported in milliseconds in JSON output.
pub fn serialize_ms<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}
