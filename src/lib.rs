//! tqa: question answering over interview transcripts with a local model.
//!
//! The stages, in the order data flows through them: [`transcript`] (file → turns),
//! [`retrieval`] (turns → index → the turns that match a question), [`model`] (GGUF loading,
//! tokenizer, chat template, generation loop), [`answer`] (prompt, generation, citations), and
//! the measurements [`bench`] and [`eval`].

pub mod answer;
pub mod bench;
pub mod eval;
pub mod model;
pub mod retrieval;
pub mod transcript;

/// Durations are reported in milliseconds in JSON output.
pub fn serialize_ms<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// A path next to `path` that no other writer uses, for writing a file and renaming it into
/// place: tests and concurrent runs may produce the same file at the same time.
pub(crate) fn unique_temp_sibling(path: &std::path::Path) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}
