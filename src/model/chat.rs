//! Chat templates: how a conversation becomes the text the model was trained on.

use super::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Both shipped model families (Qwen2.5, SmolLM2) were tuned on ChatML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    ChatMl,
}

impl ChatTemplate {
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        match name {
            "chatml" => Ok(Self::ChatMl),
            other => Err(ModelError::ChatTemplate(other.to_string())),
        }
    }

    /// Recognises the template from the Jinja source a GGUF carries; a file without one is
    /// assumed to be ChatML, the format of every model in the registry.
    pub fn detect(jinja: Option<String>) -> Result<Self, ModelError> {
        match jinja {
            None => Ok(Self::ChatMl),
            Some(src) if src.contains("<|im_start|>") => Ok(Self::ChatMl),
            Some(_) => Err(ModelError::ChatTemplate(
                "the GGUF's own (not ChatML)".to_string(),
            )),
        }
    }

    /// The prompt for `messages`, ending with the opening of the assistant's reply.
    pub fn render(&self, messages: &[Message]) -> String {
        match self {
            Self::ChatMl => {
                let mut out = String::new();
                for m in messages {
                    let role = match m.role {
                        Role::System => "system",
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    };
                    out.push_str(&format!("<|im_start|>{role}\n{}<|im_end|>\n", m.content));
                }
                out.push_str("<|im_start|>assistant\n");
                out
            }
        }
    }

    /// The token that opens every turn.
    pub fn turn_start(&self) -> &'static str {
        match self {
            Self::ChatMl => "<|im_start|>",
        }
    }

    /// Tokens that close a reply in this template.
    pub fn end_markers(&self) -> &'static [&'static str] {
        match self {
            Self::ChatMl => &["<|im_end|>", "<|endoftext|>"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_roles_and_opens_the_reply() {
        let text = ChatTemplate::ChatMl.render(&[
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, "hi"),
        ]);
        assert_eq!(
            text,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn unknown_templates_are_refused() {
        assert!(ChatTemplate::detect(Some("[INST] {{ m }} [/INST]".into())).is_err());
        assert!(ChatTemplate::from_name("llama2").is_err());
    }
}
