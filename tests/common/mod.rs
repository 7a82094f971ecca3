//! Shared helpers: tiny llama- and qwen2-architecture GGUFs built in the test itself, and paths.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

pub const HIDDEN: usize = 64;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const FFN: usize = 128;
pub const CONTEXT: u32 = 4096;
/// Key/value heads of the tiny qwen2 model: two query heads share each, as in grouped-query
/// attention.
pub const QWEN2_KV_HEADS: usize = 2;

/// The two transformer families tqa runs: llama rotates adjacent pairs and has no attention
/// biases; qwen2 rotates half against half and adds biases to q, k and v.
#[derive(Clone, Copy, Debug)]
pub enum Arch {
    Llama,
    Qwen2,
}

/// What the tiny model's weights make it do.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Seeded pseudo-random weights: arbitrary but reproducible output.
    Random(u64),
    /// `Random`, but only ASCII tokens can win: what the model writes is text that encodes back
    /// into the bytes it wrote.
    Ascii(u64),
    /// Every layer contributes nothing and the output matrix has one non-zero row, so the
    /// model predicts this token at every position.
    AlwaysEmit(u32),
}

/// The GPT-2 byte-to-character table that byte-level BPE vocabularies are written in.
fn byte_level_char(b: u8) -> char {
    let printable =
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| {
        !((b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x))
    });
    char::from_u32(256 + rank.count() as u32).expect("valid code point")
}

/// Vocabulary: the 256 byte tokens, one merge ("Ġt"), then `<|im_start|>` and `<|im_end|>`.
pub fn vocab() -> Vec<String> {
    let mut tokens: Vec<String> = (0..=255u8)
        .map(|b| byte_level_char(b).to_string())
        .collect();
    tokens.push(format!("{}t", byte_level_char(b' ')));
    tokens.push("<|im_start|>".to_string());
    tokens.push("<|im_end|>".to_string());
    tokens
}

pub fn im_end_id() -> u32 {
    (vocab().len() - 1) as u32
}

/// A reproducible stream of values in [-scale, scale).
fn pseudo_random(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(values: Vec<f32>, shape: (usize, usize)) -> QTensor {
    let t = Tensor::from_vec(values, shape, &Device::Cpu).expect("shape matches values");
    QTensor::quantize(&t, GgmlDType::F32).expect("f32 always quantizes")
}

fn vector(values: Vec<f32>) -> QTensor {
    let n = values.len();
    let t = Tensor::from_vec(values, n, &Device::Cpu).expect("shape matches values");
    QTensor::quantize(&t, GgmlDType::F32).expect("f32 always quantizes")
}

/// Writes a tiny llama GGUF with an embedded tokenizer and ChatML template to `path`.
pub fn write_tiny_model(path: &Path, behaviour: Behaviour) {
    write_tiny_model_of(path, behaviour, Arch::Llama)
}

pub fn write_tiny_model_of(path: &Path, behaviour: Behaviour, arch: Arch) {
    let (name, kv_heads) = match arch {
        Arch::Llama => ("llama", HEADS),
        Arch::Qwen2 => ("qwen2", QWEN2_KV_HEADS),
    };
    let kv_dim = HIDDEN / HEADS * kv_heads;
    let tokens = vocab();
    let n_vocab = tokens.len();
    let mut seed = match behaviour {
        Behaviour::Random(s) | Behaviour::Ascii(s) => s,
        Behaviour::AlwaysEmit(_) => 0,
    };
    let mut matrix = |rows: usize, cols: usize| {
        seed += 1;
        match behaviour {
            Behaviour::Random(_) | Behaviour::Ascii(_) => {
                tensor(pseudo_random(seed, rows * cols, 0.3), (rows, cols))
            }
            Behaviour::AlwaysEmit(_) => tensor(vec![0.0; rows * cols], (rows, cols)),
        }
    };
    let mut named: Vec<(String, QTensor)> = Vec::new();
    for layer in 0..LAYERS {
        let p = format!("blk.{layer}");
        named.push((format!("{p}.attn_q.weight"), matrix(HIDDEN, HIDDEN)));
        named.push((format!("{p}.attn_k.weight"), matrix(kv_dim, HIDDEN)));
        named.push((format!("{p}.attn_v.weight"), matrix(kv_dim, HIDDEN)));
        if let Arch::Qwen2 = arch {
            for (bias, len) in [("q", HIDDEN), ("k", kv_dim), ("v", kv_dim)] {
                let values = matrix(1, len).dequantize(&Device::Cpu).expect("f32 tensor");
                let values = values
                    .flatten_all()
                    .and_then(|t| t.to_vec1())
                    .expect("f32 values");
                named.push((format!("{p}.attn_{bias}.bias"), vector(values)));
            }
        }
        named.push((format!("{p}.attn_output.weight"), matrix(HIDDEN, HIDDEN)));
        named.push((format!("{p}.ffn_gate.weight"), matrix(FFN, HIDDEN)));
        named.push((format!("{p}.ffn_up.weight"), matrix(FFN, HIDDEN)));
        named.push((format!("{p}.ffn_down.weight"), matrix(HIDDEN, FFN)));
        named.push((format!("{p}.attn_norm.weight"), vector(vec![1.0; HIDDEN])));
        named.push((format!("{p}.ffn_norm.weight"), vector(vec![1.0; HIDDEN])));
    }
    let (embedding, output) = match behaviour {
        Behaviour::Random(_) => (matrix(n_vocab, HIDDEN), matrix(n_vocab, HIDDEN)),
        Behaviour::Ascii(seed) => {
            // Rows of zeros score 0, below the best of 128 random scores.
            let mut out = pseudo_random(seed, n_vocab * HIDDEN, 0.3);
            out[128 * HIDDEN..].fill(0.0);
            (matrix(n_vocab, HIDDEN), tensor(out, (n_vocab, HIDDEN)))
        }
        Behaviour::AlwaysEmit(token) => {
            // Every embedding is the all-ones vector, which RMS norm leaves unchanged; only the
            // chosen token's output row sees it.
            let mut out = vec![0.0; n_vocab * HIDDEN];
            let row = token as usize * HIDDEN;
            out[row..row + HIDDEN].fill(1.0);
            (
                tensor(vec![1.0; n_vocab * HIDDEN], (n_vocab, HIDDEN)),
                tensor(out, (n_vocab, HIDDEN)),
            )
        }
    };
    named.push(("token_embd.weight".to_string(), embedding));
    named.push(("output.weight".to_string(), output));
    named.push(("output_norm.weight".to_string(), vector(vec![1.0; HIDDEN])));

    use gguf_file::Value;
    let token_types: Vec<Value> = (0..n_vocab)
        .map(|i| Value::I32(if i >= n_vocab - 2 { 3 } else { 1 }))
        .collect();
    let keys: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(name.into())),
        (
            format!("{name}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{name}.attention.head_count_kv"),
            Value::U32(kv_heads as u32),
        ),
        (format!("{name}.block_count"), Value::U32(LAYERS as u32)),
        (
            format!("{name}.embedding_length"),
            Value::U32(HIDDEN as u32),
        ),
        (
            format!("{name}.rope.dimension_count"),
            Value::U32((HIDDEN / HEADS) as u32),
        ),
        (
            format!("{name}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{name}.context_length"), Value::U32(CONTEXT)),
    ];
    let mut metadata: Vec<(&str, Value)> =
        keys.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    metadata.extend([
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String(format!("{} t", byte_level_char(b' ')))]),
        ),
        ("tokenizer.ggml.token_type", Value::Array(token_types)),
        ("tokenizer.ggml.eos_token_id", Value::U32(im_end_id())),
        (
            "tokenizer.chat_template",
            Value::String("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}".into()),
        ),
    ]);
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).expect("create tiny model file");
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs).expect("write tiny model");
}

pub fn tiny_model(dir: &Path, behaviour: Behaviour) -> PathBuf {
    let path = dir.join("tiny.gguf");
    write_tiny_model(&path, behaviour);
    path
}

/// The model at `path` loaded as it is (no Q8_0 conversion), on [`test_device`].
pub fn load_model(path: &Path) -> tqa::model::Model {
    tqa::model::Model::load(&model_source(path), &test_device()).expect("model loads")
}

/// The model at `path` as it is: no Q8_0 conversion, no prefix cache, no thresholds.
pub fn model_source(path: &Path) -> tqa::model::ModelSource {
    tqa::model::ModelSource {
        name: "tiny".into(),
        path: path.to_path_buf(),
        tokenizer_json: None,
        chat_template: None,
        optimize: false,
        min_answered_log_odds: 0.0,
        min_answered_log_odds_reused_turns: 0.0,
        min_owed_relevance: 0.0,
        judges: true,
        languages: None,
        prefix_cache: None,
    }
}

pub fn shipped_transcript() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/transcripts/altman-20vc-devday-2024.zh.md")
}

pub fn dev_set() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/eval/dev.jsonl")
}

/// The shipped transcript's index as `tqa` builds it: BM25 plus the multilingual embedder,
/// with the passage vectors cached in `cache_dir`.
pub fn hybrid_index(cache_dir: &Path) -> tqa::retrieval::Index {
    use tqa::model::{registry::Registry, resolve::locate_embedder};
    use tqa::retrieval::{embed::Embedder, DenseIndex, Index};
    let transcript =
        tqa::transcript::Transcript::load(&shipped_transcript()).expect("shipped transcript");
    let entry = Registry::builtin().expect("registry").embedder;
    let embedder =
        Embedder::load(&locate_embedder(&entry).expect("embedder")).expect("load embedder");
    let dense = DenseIndex::build(
        &transcript.turns,
        embedder,
        &entry.package.sha256,
        Some(cache_dir),
        &|| {},
    )
    .expect("dense index");
    Index::build(&transcript).with_dense(dense)
}

/// The device tqa's own model runs on in tests: the CPU, or the GPU when `TQA_TEST_DEVICE=cuda`
/// (scripts/gpu-check.sh, with a binary built by scripts/build-cuda.sh --tests). References such
/// as candle-transformers stay on the CPU either way.
pub fn test_device() -> Device {
    match std::env::var("TQA_TEST_DEVICE").as_deref() {
        Ok("cuda") => tqa::model::DeviceChoice::Cuda
            .open()
            .expect("TQA_TEST_DEVICE=cuda needs a CUDA build and a GPU"),
        Ok("cpu") | Err(_) => Device::Cpu,
        Ok(other) => panic!("TQA_TEST_DEVICE={other}: expected cpu or cuda"),
    }
}
