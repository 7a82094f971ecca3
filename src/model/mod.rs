//! The answering model: where it comes from, loading a quantized GGUF, its tokenizer and chat
//! template, and the generation loop.

pub mod chat;
pub mod decoder;
pub mod fetch;
pub mod fused;
pub mod generate;
pub mod kernels;
pub mod kv_store;
pub mod optimize;
pub mod registry;
pub mod resolve;
pub mod weights;

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use memmap2::{Advice, Mmap, MmapOptions};

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{Device, Tensor};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::transcript::{is_cjk_char, Language};

pub use chat::{ChatTemplate, Message, Role};
pub use decoder::Decoder;
use decoder::{Branch, Region};
pub use generate::{generate, Generation, SamplingConfig, StopReason};
use kv_store::KvStore;
pub use resolve::{resolve, ModelSource};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model registry is invalid: {0}")]
    Registry(String),
    #[error("{0}")]
    NotFound(String),
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable GGUF file ({reason}). Give the path to a .gguf model, or a registry name (`tqa models list`)")]
    NotGguf { path: PathBuf, reason: String },
    #[error("model file {path} is cut short or damaged inside its GGUF header ({reason}). Delete it and fetch it again (`models/fetch NAME`)")]
    DamagedHeader { path: PathBuf, reason: String },
    #[error("model file {path} is truncated: {actual} bytes, its header promises {expected}. Delete it and fetch it again (`models/fetch NAME`)")]
    Truncated {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("model {path} has architecture `{arch}`; tqa runs llama and qwen2 GGUF models")]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("unknown chat template `{0}`: tqa knows `chatml`")]
    ChatTemplate(String),
    #[error("this tqa was built without CUDA; rebuild with `cargo build --release --features cuda` (see scripts/build-cuda.sh) or use --device cpu")]
    NoCuda,
    #[error("CUDA device: {0}")]
    CudaDevice(String),
    #[error("the prompt has {prompt} tokens and {max_new} more are allowed for the answer, but the model's context holds {context}. Ask a shorter question or retrieve fewer turns (-k)")]
    ContextOverflow {
        prompt: usize,
        max_new: usize,
        context: usize,
    },
    #[error("fetching model: {0}")]
    Fetch(String),
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Where the model runs. `Auto` picks CUDA when this build has it and a GPU is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    Auto,
}

impl DeviceChoice {
    pub fn open(self) -> Result<Device, ModelError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if !cfg!(feature = "cuda") => Err(ModelError::NoCuda),
            DeviceChoice::Cuda => {
                Device::new_cuda(0).map_err(|e| ModelError::CudaDevice(e.to_string()))
            }
            DeviceChoice::Auto if candle_core::utils::cuda_is_available() => {
                Device::new_cuda(0).or(Ok(Device::Cpu))
            }
            DeviceChoice::Auto => Ok(Device::Cpu),
        }
    }
}

/// Number of CPU threads for every kernel: rayon's global pool, and candle's own pool and
/// matrix products, which read the count from the environment on every call. Unset, candle
/// re-parses /proc/cpuinfo for it in every f32 matrix product: two per layer and token, about a
/// tenth of SmolLM2's decoding time. Call this before any other thread starts (the environment
/// may only be changed then) and before the first tensor operation.
pub fn set_cpu_threads(threads: usize) {
    keep_freed_buffers();
    let threads = threads.max(1);
    for variable in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        std::env::set_var(variable, threads.to_string());
    }
    // Building the global pool fails only when it already exists; the first setting then stands.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub arch: String,
    pub context_length: usize,
    pub file_bytes: u64,
    #[serde(serialize_with = "crate::serialize_ms")]
    pub load_time: Duration,
    /// From the registry; see `ModelSource`.
    pub min_answered_log_odds: f32,
    pub min_answered_log_odds_reused_turns: f32,
    pub min_owed_relevance: f32,
    pub judges: bool,
    /// See `ModelSource::languages`.
    pub languages: Option<Vec<Language>>,
}

impl ModelInfo {
    /// Whether the model reads `language`; a model the registry says nothing about is trusted to.
    pub fn reads(&self, language: Language) -> bool {
        self.languages
            .as_ref()
            .is_none_or(|languages| languages.contains(&language))
    }
}

pub struct Model {
    decoder: Decoder,
    /// The tokens whose keys and values the decoder's cache holds, in order.
    cached: Vec<u32>,
    /// How many of `cached` hold exactly what a plain prefill would compute; pieces put together
    /// by `prefill_pieces` are not that, so no plain prompt may reuse them.
    exact: usize,
    /// How many of `cached` hold a head as `prefill_pieces` computes it: its system turn, then
    /// the rest as a chunk of its own. The next piece-wise prompt with the same head (the
    /// reranking's, once per exchange judged) starts after it.
    pieces_head: usize,
    /// System turns and transcript turns computed before, by this process or an earlier one.
    stored: KvStore,
    /// The token that opens a turn of the chat template.
    turn_start: Option<u32>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_tokens: Vec<u32>,
    /// The tokens that write Chinese characters (see [`Model::chinese_tokens`]).
    chinese_tokens: OnceLock<Vec<u32>>,
    pub info: ModelInfo,
}

impl Model {
    /// Loads a GGUF model. The tokenizer comes from `source.tokenizer_json` when given, else from
    /// the GGUF's own metadata, so that a single `.gguf` file is enough.
    pub fn load(source: &ModelSource, device: &Device) -> Result<Self, ModelError> {
        let start = Instant::now();
        keep_freed_buffers();
        let (file, content, map) = open_checked(&source.path)?;
        let file_bytes = file_len(&file, &source.path)?;
        let (path, file, content, map) = if source.optimize && optimize::has_slow_tensors(&content)
        {
            let fast =
                optimize::optimized_path(&source.path, &resolve::models_dir().join(".optimized"))?;
            if !fast.is_file() {
                eprintln!(
                    "converting {} to Q8_0 once (candle has no fast kernels for its tensor types)…",
                    source.path.display()
                );
                optimize::write_optimized_copy(&source.path, &fast)?;
            }
            let (file, content, map) = open_checked(&fast)?;
            (fast, file, content, map)
        } else {
            (source.path.clone(), file, content, map)
        };
        let map = weights_in_place(map, &content, device);
        let path = path.as_path();

        let arch = metadata_string(&content, "general.architecture").unwrap_or_default();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(ModelError::UnsupportedArch {
                path: path.to_path_buf(),
                arch,
            });
        }
        let template = match source.chat_template {
            Some(t) => t,
            None => ChatTemplate::detect(metadata_string(&content, "tokenizer.chat_template"))?,
        };
        // The tokenizer (0.2–0.3 s for Qwen2.5's 151,000 tokens and merges) is built while the
        // layers load: their threads wait on memory and page faults much of the time, and the
        // default model's load took 1.2–1.3 s with the tokenizer first, 0.8–0.9 s beside it.
        let (tokenizer, decoder) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| match &source.tokenizer_json {
                Some(p) => Tokenizer::from_file(p).map_err(|e| {
                    ModelError::Tokenizer(format!(
                        "cannot use {} as the tokenizer ({e}); give a Hugging Face \
                         tokenizer.json, or leave out --tokenizer to use the model's own",
                        p.display()
                    ))
                }),
                None => {
                    Tokenizer::from_gguf(&content).map_err(|e| ModelError::Tokenizer(e.to_string()))
                }
            });
            let decoder =
                Decoder::from_gguf(&content, load_readers(file, path)?, map, &arch, device);
            let tokenizer = tokenizer.join().unwrap_or_else(|_| {
                Err(ModelError::Tokenizer(
                    "building the tokenizer panicked".into(),
                ))
            });
            Ok::<_, ModelError>((tokenizer?, decoder?))
        })?;
        let stop_tokens = stop_tokens(&content, &tokenizer, template);
        let context_length = decoder.config().context_length;
        let stored = KvStore::new(source.prefix_cache.clone(), path, device);
        Ok(Self {
            decoder,
            cached: Vec::new(),
            exact: 0,
            pieces_head: 0,
            stored,
            turn_start: tokenizer.token_to_id(template.turn_start()),
            tokenizer,
            template,
            stop_tokens,
            chinese_tokens: OnceLock::new(),
            info: ModelInfo {
                path: path.to_path_buf(),
                arch,
                context_length,
                file_bytes,
                load_time: start.elapsed(),
                min_answered_log_odds: source.min_answered_log_odds,
                min_answered_log_odds_reused_turns: source.min_answered_log_odds_reused_turns,
                min_owed_relevance: source.min_owed_relevance,
                judges: source.judges,
                languages: source.languages.clone(),
            },
        })
    }

    /// Runs `tokens` at positions `pos..pos + tokens.len()` through the model and returns the
    /// logits for the next token. The KV cache keeps what came before `pos`: `pos == 0` starts a
    /// fresh sequence.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, ModelError> {
        Ok(self.forward_last(tokens, pos, 1)?.squeeze(0)?)
    }

    /// [`Self::forward`], returning the logits after each of the last `rows` tokens (at most
    /// those of the last 256), one row each.
    pub fn forward_last(
        &mut self,
        tokens: &[u32],
        pos: usize,
        rows: usize,
    ) -> Result<Tensor, ModelError> {
        let logits = self.decoder.forward_last(tokens, pos, rows)?;
        self.cached.truncate(pos);
        self.cached.extend_from_slice(tokens);
        if pos < self.pieces_head {
            self.pieces_head = 0;
        }
        if pos <= self.exact {
            self.exact = pos + tokens.len();
        }
        Ok(logits)
    }

    /// The tokens whose keys and values the cache holds, in order.
    pub fn context(&self) -> &[u32] {
        &self.cached
    }

    /// Runs a whole prompt and returns the logits for the next token, computing only what is
    /// not already known: its system turn when that was computed before, by this process or an
    /// earlier one, or for a prompt without one the part it shares with the previous prompt.
    /// Returns how many prompt tokens were reused.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(Tensor, usize), ModelError> {
        self.prefill_keeping(prompt, 0)
    }

    /// Like `prefill`, and also keeps the keys and values of `prompt[..prefix]`, a part past the
    /// system turn that later prompts may begin with (the answer prompt's first exchange: the
    /// turns that follow it attend to it, so it is the one part of them that stays exact when
    /// reused), and reuses it when it was kept before.
    pub fn prefill_keeping(
        &mut self,
        prompt: &[u32],
        prefix: usize,
    ) -> Result<(Tensor, usize), ModelError> {
        let checkpoints = self.checkpoints(prompt, prefix);
        // At least one token has to go through the model to produce logits.
        let reused = self
            .reuse_prefix(prompt, &checkpoints)?
            .min(prompt.len().saturating_sub(1));
        let logits = self.compute_from(prompt, reused, &checkpoints)?;
        Ok((logits, reused))
    }

    /// Where a prompt's computation is cut, and what is before each cut kept: the end of its
    /// system turn, then `prefix` when it lies past it. Empty for a prompt without a system turn.
    fn checkpoints(&self, prompt: &[u32], prefix: usize) -> Vec<usize> {
        let Some(system_turn_end) = self.system_turn_end(prompt) else {
            return Vec::new();
        };
        let mut checkpoints = vec![system_turn_end];
        if prefix > system_turn_end && prefix < prompt.len() {
            checkpoints.push(prefix);
        }
        checkpoints
    }

    /// Computes `prompt` from `start` on and returns the logits of its last position.
    ///
    /// A prompt goes through the model in chunks, and products over chunks of other sizes round
    /// their last bits differently. So that the first run of a question and every later one
    /// compute exactly the same thing (and greedy answers repeat), the prompt is cut at its
    /// checkpoints whether or not what lies before them is known: each part before a checkpoint
    /// is computed on its own and kept, and the rest from the last one, as a later run that
    /// reads the kept parts back does; `reuse_prefix` reuses only whole parts.
    fn compute_from(
        &mut self,
        prompt: &[u32],
        start: usize,
        checkpoints: &[usize],
    ) -> Result<Tensor, ModelError> {
        let start = self.compute_parts(prompt, start, checkpoints)?;
        self.forward(&prompt[start..], start)
    }

    /// Computes and keeps each part of `prompt` that ends at a checkpoint past `start` (see
    /// `compute_from`). Returns where the last one ends.
    fn compute_parts(
        &mut self,
        prompt: &[u32],
        start: usize,
        checkpoints: &[usize],
    ) -> Result<usize, ModelError> {
        let first = start;
        let mut start = start;
        for &end in checkpoints.iter().filter(|&&end| end > first) {
            self.forward(&prompt[start..end], start)?;
            self.keep_part(prompt, start, end)?;
            start = end;
        }
        Ok(start)
    }

    /// Keeps the positions `start..end` of the prompt just computed, under the tokens they depend
    /// on, unless they are kept already.
    fn keep_part(&mut self, prompt: &[u32], start: usize, end: usize) -> Result<(), ModelError> {
        let key = &prompt[..end];
        if end <= self.exact && !self.stored.contains(key, end - start) {
            let entries = self.decoder.cache().export(start, end - start)?;
            self.stored.put(key, entries, self.decoder.config());
        }
        Ok(())
    }

    /// Like `prefill` for the prompt `head + pieces + tail`, except that each piece attends only
    /// to `head` and itself, not to the pieces before it. A piece computed once, in any question,
    /// is then reused at whatever position it lands, so that a prompt built from transcript
    /// turns seen before costs only its tail. Returns how many prompt tokens were reused.
    pub fn prefill_pieces(
        &mut self,
        head: &[u32],
        pieces: &[Vec<u32>],
        tail: &[u32],
    ) -> Result<(Tensor, usize), ModelError> {
        let mut reused = self.put_pieces_head(head)?;
        let mut entries = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let (piece_entries, stored) = self.piece_entries(head, piece)?;
            if stored {
                reused += piece.len();
            }
            entries.push(piece_entries);
        }
        let mut pos = head.len();
        for (piece, piece_entries) in pieces.iter().zip(&entries) {
            self.decoder.import(piece_entries, pos, pos - head.len())?;
            self.cached.truncate(pos);
            self.cached.extend_from_slice(piece);
            pos += piece.len();
        }
        self.exact = self.exact.min(head.len());
        let logits = self.forward(tail, pos)?;
        Ok((logits, reused))
    }

    /// For each of `pieces`, the logits after `head + piece + tail` as `prefill_pieces` computes
    /// a prompt of that one piece, the same to the last bit; the tails of several pieces go
    /// through the model together (`Decoder::forward_branches`), in passes of at most
    /// [`BRANCH_ROWS`] tokens and [`BRANCH_SLOTS`] cache positions.
    pub fn prefill_branches(
        &mut self,
        head: &[u32],
        pieces: &[Vec<u32>],
        tail: &[u32],
    ) -> Result<Vec<Tensor>, ModelError> {
        self.put_pieces_head(head)?;
        let entries = pieces
            .iter()
            .map(|piece| Ok(self.piece_entries(head, piece)?.0))
            .collect::<Result<Vec<_>, ModelError>>()?;
        let mut logits = Vec::with_capacity(pieces.len());
        let mut pass: Vec<Branch> = Vec::new();
        let (mut rows, mut slots) = (0, head.len());
        for (piece, piece_entries) in pieces.iter().zip(&entries) {
            let full =
                rows + tail.len() > BRANCH_ROWS || slots + piece.len() + tail.len() > BRANCH_SLOTS;
            if full && !pass.is_empty() {
                logits.extend(self.decoder.forward_branches(head.len(), &pass)?);
                pass.clear();
                (rows, slots) = (0, head.len());
            }
            pass.push(Branch {
                entries: piece_entries,
                tokens: tail,
            });
            rows += tail.len();
            slots += piece.len() + tail.len();
        }
        if !pass.is_empty() {
            logits.extend(self.decoder.forward_branches(head.len(), &pass)?);
        }
        self.cached.truncate(head.len());
        self.exact = self.exact.min(head.len());
        Ok(logits)
    }

    /// The keys and values of `piece` after `head`, stored or computed (and stored), and whether
    /// they were stored. Computing them leaves `head + piece` in the cache.
    fn piece_entries(
        &mut self,
        head: &[u32],
        piece: &[u32],
    ) -> Result<(Vec<(Tensor, Tensor)>, bool), ModelError> {
        let key: Vec<u32> = head.iter().chain(piece).copied().collect();
        let config = self.decoder.config().clone();
        let device = self.decoder.device().clone();
        if let Some(entries) = self.stored.get(&key, piece.len(), &config, &device) {
            return Ok((entries, true));
        }
        self.forward(piece, head.len())?;
        let entries = self.decoder.cache().export(head.len(), piece.len())?;
        self.stored.put(&key, entries.clone(), &config);
        Ok((entries, false))
    }

    /// Puts `head` in the cache as `prefill_pieces` computes it, from what the cache holds or the
    /// stored system turn where it can. Returns how many of its tokens were not computed.
    fn put_pieces_head(&mut self, head: &[u32]) -> Result<usize, ModelError> {
        if self.pieces_head == head.len() && self.cached.starts_with(head) {
            return Ok(head.len());
        }
        // The whole head is kept as well as its system turn: what follows the system turn (the
        // reranking's "Excerpt:") was otherwise computed again by every process, a pass over
        // every weight for a few tokens (~0.1 s of each `tqa ask` with the default model).
        let mut checkpoints = self.checkpoints(head, 0);
        if !checkpoints.is_empty() {
            checkpoints.push(head.len());
        }
        let reused = self.reuse_prefix(head, &checkpoints)?;
        if reused < head.len() {
            let end = self.compute_parts(head, reused, &checkpoints)?;
            if end < head.len() {
                self.forward(&head[end..], end)?;
            }
        }
        self.pieces_head = head.len();
        Ok(reused)
    }

    /// Puts the longest known part of `prompt` that ends at a checkpoint in the cache, from
    /// what the cache already holds of it or the parts kept before; for a prompt without
    /// checkpoints, whatever the cache holds of it. Returns its length.
    fn reuse_prefix(&mut self, prompt: &[u32], checkpoints: &[usize]) -> Result<usize, ModelError> {
        let in_cache = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(self.exact);
        if checkpoints.is_empty() {
            return Ok(in_cache);
        }
        let device = self.decoder.device().clone();
        let mut reused = 0;
        for (i, &end) in checkpoints.iter().enumerate() {
            // Every prompt cuts its system turn, so the cache holds it as computed on its own;
            // a later part it holds may have been computed in one chunk with what followed it.
            if i == 0 && end <= in_cache {
                reused = end;
                continue;
            }
            // A part is kept as computed from the checkpoint before it (see `compute_from`),
            // even when more of it is in the cache from another prompt: computed from there, in
            // other chunks, it would depend on which prompt came before it.
            let Some(entries) =
                self.stored
                    .get(&prompt[..end], end - reused, self.decoder.config(), &device)
            else {
                break;
            };
            self.decoder.import(&entries, reused, 0)?;
            self.cached.truncate(reused);
            self.cached.extend_from_slice(&prompt[reused..end]);
            self.exact = end;
            reused = end;
        }
        Ok(reused)
    }

    /// [`Decoder::forward_regions`]. The cache then holds several sequences, none of which a
    /// later prompt may take for its own beginning.
    pub(crate) fn forward_regions(
        &mut self,
        regions: &[Region<'_>],
    ) -> Result<Vec<Tensor>, ModelError> {
        self.forget_context();
        Ok(self.decoder.forward_regions(regions)?)
    }

    /// Copies of the keys and values of the cache's positions `start..start + len`.
    pub(crate) fn exported(
        &self,
        start: usize,
        len: usize,
    ) -> Result<Vec<(Tensor, Tensor)>, ModelError> {
        Ok(self.decoder.cache().export(start, len)?)
    }

    /// Empties the cache and gives back its memory: regions side by side take far more than one
    /// sequence needs.
    pub(crate) fn release_cache(&mut self) {
        self.forget_context();
        self.decoder.release_cache();
    }

    /// Marks the cache as holding nothing a prompt may reuse.
    fn forget_context(&mut self) {
        self.cached.clear();
        self.exact = 0;
        self.pieces_head = 0;
    }

    /// See `KvStore::computation`.
    pub(crate) fn computation(&self) -> Vec<u8> {
        self.stored.computation()
    }

    /// Where the second turn of a chat prompt starts, when the prompt goes on after it.
    pub(crate) fn system_turn_end(&self, prompt: &[u32]) -> Option<usize> {
        let start = self.turn_start?;
        let second = prompt
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == start)
            .nth(1)?
            .0;
        (second + 1 < prompt.len()).then_some(second)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn decode(&self, tokens: &[u32]) -> Result<String, ModelError> {
        self.tokenizer
            .decode(tokens, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The tokens that write a Chinese character or part of one, for replies that must not
    /// write one. A part is a token of bytes that are not a whole character (they decode to
    /// U+FFFD): a character without a token of its own is written byte by byte. Listed on first
    /// use: decoding the whole vocabulary takes a while, and most runs never ask.
    pub fn chinese_tokens(&self) -> Result<&[u32], ModelError> {
        if let Some(tokens) = self.chinese_tokens.get() {
            return Ok(tokens);
        }
        let mut tokens = Vec::new();
        for id in 0..self.tokenizer.get_vocab_size(true) as u32 {
            let text = self.decode(&[id])?;
            if text
                .chars()
                .any(|c| is_cjk_char(c) || c == char::REPLACEMENT_CHARACTER)
            {
                tokens.push(id);
            }
        }
        Ok(self.chinese_tokens.get_or_init(|| tokens))
    }

    pub fn is_stop_token(&self, token: u32) -> bool {
        self.stop_tokens.contains(&token)
    }

    /// The tokens that end a reply.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    pub fn template(&self) -> ChatTemplate {
        self.template
    }
}

/// A forward pass allocates activations of several megabytes for every matrix (18 MB for the
/// default model's gate/up over a 256-token chunk). glibc serves blocks that large with fresh
/// memory mappings, unmapped again when freed, so every step faulted its buffers in anew: 1.6
/// million page faults in a benchmark run, 13% of prefill speed. Its dynamic threshold hides
/// this only after a large block has been freed (which loading by copying used to do). These
/// settings keep blocks up to 32 MiB, and up to 256 MiB of free memory, for reuse, in one arena
/// for all threads: with an arena each, the threads that load a model's layers left blocks kept
/// in theirs that counted again in the peak (SmolLM2 170 → 204 MiB). glibc fixes the number of
/// arenas when the first thread after the main one allocates, so `set_cpu_threads` calls this
/// before it starts any.
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator parameters; called once, before the buffers
        // it concerns are allocated.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        });
    }
}

/// The map of the model file for the weights to be read in place, when tqa's own kernels compute
/// the products of every matrix on this device (the output matrix's single rows wherever they
/// run); its pages are read in now, so that loading, not
/// the first question, pays for reading the file. Otherwise `None`, the map dropped with the
/// header read: the weights would count twice in the peak memory, once as file pages and once as
/// the tensors candle copies from them.
fn weights_in_place(
    map: Arc<Mmap>,
    content: &gguf_file::Content,
    device: &Device,
) -> Option<Arc<Mmap>> {
    let tied = !content.tensor_infos.contains_key("output.weight");
    let every_matrix_own = content
        .tensor_infos
        .iter()
        .filter(|(_, t)| t.shape.rank() == 2)
        .all(|(name, t)| match name.as_str() {
            // Only the last row of a prompt meets the output matrix; embeddings are rows read.
            "output.weight" => kernels::runs_here_for(t.ggml_dtype),
            "token_embd.weight" if tied => kernels::runs_here_for(t.ggml_dtype),
            "token_embd.weight" => true,
            _ => kernels::prefers(t.ggml_dtype),
        });
    if !device.is_cpu() || !every_matrix_own {
        return None;
    }
    // Kernels before Linux 5.14 lack the advice; the pages are then read on first use.
    let _ = map.advise(Advice::PopulateRead);
    Some(map)
}

/// Opens a model file, reads its GGUF header from a memory map of it and checks that the file
/// holds every tensor the header lists. Read from the file, every one of the header's fields
/// costs system calls (candle checks each string against the bytes left): 0.8 s for the 300,000
/// vocabulary and merge strings of Qwen2.5's header.
fn open_checked(path: &Path) -> Result<(File, gguf_file::Content, Arc<Mmap>), ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: tqa never writes a model file in place (downloads and conversions are written
    // beside it and renamed, and a renamed-over file keeps its pages while mapped), so the
    // mapped bytes do not change while the model is loaded.
    let map = unsafe { MmapOptions::new().map(&file) }.map_err(io)?;
    let content = gguf_file::Content::read(&mut Cursor::new(&map[..])).map_err(|e| {
        let (path, reason) = (path.to_path_buf(), message_without_backtrace(&e));
        // A file that begins as a GGUF and then fails to parse is nearly always a download that
        // stopped inside the header: asking for "a .gguf model" would send the user elsewhere.
        if map.starts_with(GGUF_MAGIC) {
            ModelError::DamagedHeader { path, reason }
        } else {
            ModelError::NotGguf { path, reason }
        }
    })?;
    check_complete(&content, map.len() as u64, path)?;
    Ok((file, content, Arc::new(map)))
}

/// candle's message, without the backtrace candle appends to it when `RUST_BACKTRACE` is set: a
/// damaged file is for the user to replace, and the trace buried that advice.
fn message_without_backtrace(error: &candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => message_without_backtrace(inner),
        other => other.to_string(),
    }
}

/// Most tokens of the branches `Model::prefill_branches` runs in one pass: the quantized products
/// are as fast at 256 rows as at more (see `decoder::PREFILL_CHUNK`).
const BRANCH_ROWS: usize = 256;

/// Most cache positions one pass of branches takes, the shared head included: each branch's
/// piece is copied into the cache beside the others, and 2,048 positions of the default model
/// hold 117 MB.
const BRANCH_SLOTS: usize = 2048;

/// The bytes every GGUF file begins with.
const GGUF_MAGIC: &[u8] = b"GGUF";

/// Most threads that load a model's layers. Measured with two (this machine's cores); more copy
/// and pack through the same memory bus.
const MAX_LOAD_THREADS: usize = 4;

/// `file` and more handles on the same file, each with its own position, one for each thread
/// that loads layers (see `Decoder::from_gguf`): as many as the kernels' threads.
fn load_readers(file: File, path: &Path) -> Result<Vec<File>, ModelError> {
    let threads = rayon::current_num_threads().min(MAX_LOAD_THREADS);
    let mut readers = vec![file];
    for _ in 1..threads {
        readers.push(File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?);
    }
    Ok(readers)
}

fn file_len(file: &File, path: &Path) -> Result<u64, ModelError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn metadata_string(content: &gguf_file::Content, key: &str) -> Option<String> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

/// A download cut short still has a valid header; without this check loading fails later with
/// an unexplained read error.
fn check_complete(
    content: &gguf_file::Content,
    actual: u64,
    path: &Path,
) -> Result<(), ModelError> {
    let end_of_data = content
        .tensor_infos
        .values()
        .map(|t| {
            let bytes = t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size();
            t.offset + bytes as u64
        })
        .max()
        .unwrap_or(0);
    let expected = content.tensor_data_offset + end_of_data;
    if actual < expected {
        return Err(ModelError::Truncated {
            path: path.to_path_buf(),
            actual,
            expected,
        });
    }
    Ok(())
}

/// The GGUF's end-of-sequence token plus the template's end-of-turn marker: chat models end an
/// answer with either.
fn stop_tokens(
    content: &gguf_file::Content,
    tokenizer: &Tokenizer,
    template: ChatTemplate,
) -> Vec<u32> {
    let eos = content
        .metadata
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.to_u32().ok());
    let markers = template
        .end_markers()
        .iter()
        .filter_map(|m| tokenizer.token_to_id(m));
    let mut stops: Vec<u32> = eos.into_iter().chain(markers).collect();
    stops.sort_unstable();
    stops.dedup();
    stops
}
