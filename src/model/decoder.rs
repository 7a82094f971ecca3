//! The transformer itself, for the llama and qwen2 GGUF families: load, then `forward(tokens,
//! pos)`. candle-transformers has both models, but keeps their KV caches private and grows them
//! by concatenation on every token; owning the forward pass gives a cache that is written in
//! place, can be cut back to any position (so a shared prompt prefix is computed once), and can
//! be copied out and back in.

use std::borrow::Cow;
use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor, D};

use memmap2::Mmap;

use super::fused;
use super::kernels::{self, parallel_chunks_mut, QuantMatrix};
use super::weights::QuantBytes;

/// The hyper-parameters the forward pass needs, read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    /// qwen2 rotates the two halves of a head against each other; llama GGUFs rotate adjacent
    /// pairs (llama.cpp's NEOX and NORM rope types).
    pub rope_halves: bool,
    pub context_length: usize,
}

impl Config {
    pub fn from_gguf(content: &gguf_file::Content, arch: &str) -> Result<Self> {
        let get = |key: &str| {
            content
                .metadata
                .get(&format!("{arch}.{key}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata lacks {arch}.{key}")))
        };
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let embedding = get("embedding_length")?.to_u32()? as usize;
        let head_dim = embedding / n_head;
        // Rotating only part of each head (phi-style) would need other rope tables.
        if let Ok(rotated) = get("rope.dimension_count").and_then(|v| v.to_u32()) {
            if rotated as usize != head_dim {
                candle_core::bail!(
                    "the model rotates {rotated} of {head_dim} dimensions per head; tqa supports rotary embeddings over whole heads only"
                );
            }
        }
        Ok(Self {
            n_layer: get("block_count")?.to_u32()? as usize,
            n_head,
            n_kv_head: get("attention.head_count_kv")?.to_u32()? as usize,
            head_dim,
            rms_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_base: get("rope.freq_base")
                .and_then(|v| v.to_f32())
                .unwrap_or(10_000.0),
            rope_halves: arch == "qwen2",
            context_length: get("context_length")
                .map(|v| v.to_u32())
                .unwrap_or(Ok(2048))? as usize,
        })
    }
}

/// Keys and values of one layer, `(n_kv_head, capacity, head_dim)`, valid up to `len`.
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// The KV cache of all layers. It grows in steps, so a short prompt does not reserve the whole
/// context window.
pub struct KvCache {
    layers: Vec<LayerCache>,
    capacity: usize,
    len: usize,
}

/// Capacity grows in multiples of this many positions.
const CACHE_STEP: usize = 512;

impl KvCache {
    fn new() -> Self {
        Self {
            layers: Vec::new(),
            capacity: 0,
            len: 0,
        }
    }

    /// Makes room for `needed` positions, keeping the first `keep`.
    fn reserve(
        &mut self,
        needed: usize,
        keep: usize,
        config: &Config,
        device: &Device,
    ) -> Result<()> {
        if needed <= self.capacity && !self.layers.is_empty() {
            return Ok(());
        }
        let capacity = needed.div_ceil(CACHE_STEP) * CACHE_STEP;
        let shape = (config.n_kv_head, capacity, config.head_dim);
        let mut old_layers = std::mem::take(&mut self.layers).into_iter();
        self.capacity = 0;
        let mut layers = Vec::with_capacity(config.n_layer);
        for _ in 0..config.n_layer {
            let k = Tensor::zeros(shape, DType::F32, device)?;
            let v = Tensor::zeros(shape, DType::F32, device)?;
            // Each old layer is dropped once copied: the old and the new cache are never held
            // whole at once (growing the default model's from 1,024 to 1,536 positions held
            // 147 MB at once, now 90).
            if let Some(old) = old_layers.next().filter(|_| keep > 0) {
                k.slice_set(&old.k.narrow(1, 0, keep)?.contiguous()?, 1, 0)?;
                v.slice_set(&old.v.narrow(1, 0, keep)?.contiguous()?, 1, 0)?;
            }
            layers.push(LayerCache { k, v });
        }
        self.layers = layers;
        self.capacity = capacity;
        Ok(())
    }

    /// Copies of positions `start..start + len` of every layer, `(n_kv_head, len, head_dim)` each.
    pub fn export(&self, start: usize, len: usize) -> Result<Vec<(Tensor, Tensor)>> {
        if start + len > self.len {
            candle_core::bail!(
                "export of {start}..{} from a cache of {}",
                start + len,
                self.len
            );
        }
        self.layers
            .iter()
            .map(|l| {
                Ok((
                    l.k.narrow(1, start, len)?.copy()?,
                    l.v.narrow(1, start, len)?.copy()?,
                ))
            })
            .collect()
    }
}

/// Token embeddings. On the CPU the table stays quantized and only the rows a forward pass needs
/// are expanded: Qwen2.5's 151k-row table is about 0.9 GB in f32. A table tied to the output
/// projection is read from the projection's copy, which may carry zero columns past `hidden`.
enum Embeddings {
    Quantized { table: QuantBytes, hidden: usize },
    Dense(Tensor),
}

impl Embeddings {
    fn new(table: QuantBytes, hidden: usize, device: &Device) -> Result<Self> {
        if device.is_cpu() {
            Ok(Self::Quantized { table, hidden })
        } else {
            Ok(Self::Dense(
                table.tensor()?.dequantize(device)?.narrow(1, 0, hidden)?,
            ))
        }
    }

    fn rows(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(table) => table.index_select(&Tensor::new(tokens, device)?, 0),
            Self::Quantized { table, hidden } => {
                let (n_vocab, width) = (table.rows(), table.cols());
                let dtype = table.dtype();
                let row_bytes = width / dtype.block_size() * dtype.type_size();
                let data = table.bytes()?;
                let mut picked = Vec::with_capacity(tokens.len() * row_bytes);
                for &token in tokens {
                    let token = token as usize;
                    if token >= n_vocab {
                        candle_core::bail!(
                            "token id {token} is outside the vocabulary of {n_vocab}"
                        );
                    }
                    picked.extend_from_slice(&data[token * row_bytes..(token + 1) * row_bytes]);
                }
                let storage = QStorage::from_data(Cow::Owned(picked), device, dtype)?;
                let rows = QTensor::new(storage, (tokens.len(), width))?.dequantize(device)?;
                if width == *hidden {
                    Ok(rows)
                } else {
                    rows.narrow(1, 0, *hidden)?.contiguous()
                }
            }
        }
    }
}

/// A quantized weight matrix applied to activations, by tqa's own kernels where they take its
/// block type on this CPU (see `kernels`), else by candle's.
enum Projection {
    Own(QuantMatrix),
    Candle(CandleProjection),
}

impl Projection {
    fn new(weight: QuantBytes) -> Result<Self> {
        let own = QuantMatrix::stacked(vec![weight.clone()])?;
        Self::own_or_candle(own.map(QuantMatrix::with_prompt_tiles).transpose()?, weight)
    }

    /// A matrix only the last position of a prompt reaches (the output matrix): one row, which
    /// tqa's kernels compute wherever they run, from the blocks where they lie. candle's took a
    /// copy with zero columns (SmolLM2's and the 0.5B's Q8_0 tables).
    fn for_last_row(weight: QuantBytes) -> Result<Self> {
        let own = QuantMatrix::on_any_avx2_cpu(vec![weight.clone()])?;
        Self::own_or_candle(own, weight)
    }

    /// Whether each input row's products are the same bits whatever rows come with it.
    fn computes_rows_apart(&self) -> bool {
        match self {
            Self::Own(matrix) => matrix.computes_rows_apart(),
            Self::Candle(_) => false,
        }
    }

    fn own_or_candle(own: Option<QuantMatrix>, weight: QuantBytes) -> Result<Self> {
        match own {
            Some(own) => Ok(Self::Own(own)),
            None => Ok(Self::Candle(CandleProjection::new(weight.tensor()?)?)),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Own(matrix) => matrix.forward(x),
            Self::Candle(projection) => projection.forward(x),
        }
    }

    /// Runs the matrix on zeros of each of `row_counts` rows; see `Decoder::warm_up`. tqa's own
    /// kernels read the weights as they are and need none.
    fn warm_up(&self, row_counts: &[usize], device: &Device) -> Result<()> {
        match self {
            Self::Own(_) => Ok(()),
            Self::Candle(projection) => projection.warm_up(row_counts, device),
        }
    }
}

/// candle's fast x86 kernels (AVX-512 VNNI, AMX) quantize the activations in blocks of 256
/// values; for a matrix of any other width they fall back to a scalar loop over rows that is
/// several times slower. Q8_0 matrices whose width is not a multiple of 256 (SmolLM2's 576,
/// Qwen2.5-0.5B's 896) therefore get zero columns up to the next multiple, and their inputs zeros
/// to match: zero columns add nothing to the products.
///
/// Inputs of fewer than [`FEW_ROWS`] rows (decoding) go to tqa's own kernels on the same blocks
/// where they run: candle's tiles read more bytes than the blocks they were made from.
struct CandleProjection {
    matmul: QMatMul,
    weight: Arc<QTensor>,
    padding: usize,
    few_rows: Option<QuantMatrix>,
}

/// Below this many rows tqa's own kernels are faster than candle's repacked ones on the CPUs
/// where candle's are used for prompts (AVX-512 VNNI): `tqa bench --prefill 1,2,4,8,16` on the
/// 1.5B model, own / candle's, 27.1 / 16.3, 31.8 / 28.3, 59.7 / 47.3, 62.1 / 69.0 tok/s; on
/// SmolLM2 (own kernels on its Q4_1 blocks) 114 / 88, 123 / 117, 177 / 192 tok/s at 1, 2, 4.
const FEW_ROWS: usize = 4;

impl CandleProjection {
    fn new(weight: Arc<QTensor>) -> Result<Self> {
        let padding = padding_for_fast_kernels(&weight)?;
        let weight = if padding == 0 {
            weight
        } else {
            Arc::new(pad_columns(&weight, padding)?)
        };
        Ok(Self {
            matmul: QMatMul::from_arc(weight.clone())?,
            few_rows: QuantMatrix::new(weight.clone())?,
            weight,
            padding,
        })
    }

    fn warm_up(&self, row_counts: &[usize], device: &Device) -> Result<()> {
        let (_, width) = self.weight.shape().dims2()?;
        for &rows in row_counts {
            self.forward(&Tensor::zeros(
                (rows, width - self.padding),
                DType::F32,
                device,
            )?)?;
        }
        Ok(())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.padding == 0 {
            x.clone()
        } else {
            x.pad_with_zeros(D::Minus1, 0, self.padding)?
        };
        match &self.few_rows {
            Some(own) if x.elem_count() < FEW_ROWS * x.dim(D::Minus1)? => own.forward(&x),
            _ => self.matmul.forward(&x),
        }
    }
}

const FAST_KERNEL_BLOCK: usize = 256;

fn padding_for_fast_kernels(weight: &QTensor) -> Result<usize> {
    let (_, width) = weight.shape().dims2()?;
    let padding = width.next_multiple_of(FAST_KERNEL_BLOCK) - width;
    let worth_it = padding > 0
        && weight.dtype() == GgmlDType::Q8_0
        && weight.device().is_cpu()
        // Without them candle has no fast Q8_0 kernel, and padding would only add work.
        && kernels::has_int8_dot_products();
    Ok(if worth_it { padding } else { 0 })
}

/// Appends `padding` zero columns to a row-major quantized matrix. A block of zero bytes is a
/// block of zeros (zero scale, zero values), so this is a copy, not a re-quantization.
fn pad_columns(weight: &QTensor, padding: usize) -> Result<QTensor> {
    let (rows, width) = weight.shape().dims2()?;
    let dtype = weight.dtype();
    let block = dtype.block_size();
    if !width.is_multiple_of(block) || !padding.is_multiple_of(block) {
        candle_core::bail!("cannot pad a {dtype:?} matrix of width {width} by {padding}");
    }
    let row_bytes = width / block * dtype.type_size();
    let padded_row_bytes = (width + padding) / block * dtype.type_size();
    let data = weight.data()?;
    let mut padded = vec![0u8; rows * padded_row_bytes];
    for (src, dst) in data
        .chunks_exact(row_bytes)
        .zip(padded.chunks_exact_mut(padded_row_bytes))
    {
        dst[..row_bytes].copy_from_slice(src);
    }
    let storage = QStorage::from_data(Cow::Owned(padded), &weight.device(), dtype)?;
    QTensor::new(storage, (rows, width + padding))
}

/// Matrices that read the same input (q, k and v; gate and up). When they share a tensor type
/// they are stacked into one matrix at load, so that a step pads and quantizes the input and
/// wakes the thread pool once instead of once per matrix; the result is cut back into parts.
/// tqa's own kernels take the matrices as the parts of one, where they lie; for candle's they
/// are copied one under another, on the CPU only.
enum SharedInput {
    Stacked {
        projection: Projection,
        rows: Vec<usize>,
    },
    Apart(Vec<Projection>),
}

impl SharedInput {
    fn new(weights: Vec<QuantBytes>) -> Result<Self> {
        let rows = weights.iter().map(QuantBytes::rows).collect();
        if let Some(own) = QuantMatrix::stacked(weights.clone())? {
            return Ok(Self::Stacked {
                projection: Projection::Own(own.with_prompt_tiles()?),
                rows,
            });
        }
        let Some(first) = weights.first() else {
            candle_core::bail!("no matrices to stack");
        };
        let stackable = weights
            .iter()
            .all(|w| w.is_cpu() && w.dtype() == first.dtype() && w.cols() == first.cols());
        if !stackable {
            let apart = weights
                .into_iter()
                .map(Projection::new)
                .collect::<Result<_>>()?;
            return Ok(Self::Apart(apart));
        }
        let mut bytes = Vec::new();
        for w in &weights {
            bytes.extend_from_slice(&w.bytes()?);
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, first.dtype())?;
        let stacked = QTensor::new(storage, (rows.iter().sum::<usize>(), first.cols()))?;
        Ok(Self::Stacked {
            projection: Projection::Candle(CandleProjection::new(Arc::new(stacked))?),
            rows,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Apart(projections) => projections.iter().map(|p| p.forward(x)).collect(),
            Self::Stacked { projection, rows } => {
                let all = projection.forward(x)?;
                let mut start = 0;
                rows.iter()
                    .map(|&count| {
                        let part = all.narrow(D::Minus1, start, count);
                        start += count;
                        part
                    })
                    .collect()
            }
        }
    }

    fn projections(&self) -> Vec<&Projection> {
        match self {
            Self::Apart(projections) => projections.iter().collect(),
            Self::Stacked { projection, .. } => vec![projection],
        }
    }
}

struct Attention {
    qkv: SharedInput,
    o: Projection,
    /// qwen2 has biases on q, k and v; llama has none.
    bias: Option<[Tensor; 3]>,
}

struct Mlp {
    /// Gate and up.
    gate_up: SharedInput,
    down: Projection,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let parts = self.gate_up.forward(x)?;
        let [gate, up] = parts.as_slice() else {
            candle_core::bail!("the feed-forward block needs a gate and an up matrix");
        };
        let hidden = if gate.device().is_cpu() {
            fused::silu_times(gate, up)?
        } else {
            (candle_nn::ops::silu(gate)? * up)?
        };
        self.down.forward(&hidden)
    }
}

struct Layer {
    attn_norm: Tensor,
    attn: Attention,
    ffn_norm: Tensor,
    mlp: Mlp,
}

impl Layer {
    /// Layer `i` from the file, warmed up (see [`WARM_UP_ROWS`]).
    fn load<R: Read + Seek>(tensors: &mut Tensors<'_, R>, i: usize, arch: &str) -> Result<Self> {
        let name = |suffix: &str| format!("blk.{i}.{suffix}");
        let bias = if arch == "qwen2" {
            Some([
                tensors.dequantized(&name("attn_q.bias"))?,
                tensors.dequantized(&name("attn_k.bias"))?,
                tensors.dequantized(&name("attn_v.bias"))?,
            ])
        } else {
            None
        };
        let layer = Self {
            attn_norm: tensors.dequantized(&name("attn_norm.weight"))?,
            attn: Attention {
                qkv: SharedInput::new(vec![
                    tensors.matrix(&name("attn_q.weight"))?,
                    tensors.matrix(&name("attn_k.weight"))?,
                    tensors.matrix(&name("attn_v.weight"))?,
                ])?,
                o: Projection::new(tensors.matrix(&name("attn_output.weight"))?)?,
                bias,
            },
            ffn_norm: tensors.dequantized(&name("ffn_norm.weight"))?,
            mlp: Mlp {
                gate_up: SharedInput::new(vec![
                    tensors.matrix(&name("ffn_gate.weight"))?,
                    tensors.matrix(&name("ffn_up.weight"))?,
                ])?,
                down: Projection::new(tensors.matrix(&name("ffn_down.weight"))?)?,
            },
        };
        for projection in layer.projections() {
            projection.warm_up(&WARM_UP_ROWS, tensors.device)?;
        }
        Ok(layer)
    }

    fn projections(&self) -> Vec<&Projection> {
        let (a, m) = (&self.attn, &self.mlp);
        let mut all = a.qkv.projections();
        all.extend(m.gate_up.projections());
        all.extend([&a.o, &m.down]);
        all
    }
}

/// Long prompts go through the layers this many tokens at a time. Attention scores grow with the
/// square of a chunk's length: 2,048 tokens at once made SmolLM2 spend most of its prefill on
/// (and hold 240 MB per layer for) scores, mask and softmax. Measured on this machine, 128–256
/// doubled prefill at 2,048 tokens for SmolLM2 and gained a third at 1,024 for the 1.5B model;
/// the quantized matmuls are as fast at 256 rows as at more.
pub(crate) const PREFILL_CHUNK: usize = 256;

/// The row counts every matrix candle computes is run on once at load. candle repacks quantized
/// weights for its fast kernels on their first use, differently for one token and for more;
/// doing that at load moves the cost from the first question to loading. The fewest rows candle
/// computes ([`FEW_ROWS`]) trigger it: the product itself is wasted work. (Until the own tiles
/// took Q4_K, CPUs with AMX needed 32 rows as well, for candle's AMX tiles.)
const WARM_UP_ROWS: [usize; 2] = [FEW_ROWS, 1];

/// A GGUF file's tensors. Matrices tqa's own kernels take are read in place from the file's
/// memory map when there is one; everything else is copied into candle's tensors.
struct Tensors<'a, R> {
    content: &'a gguf_file::Content,
    reader: &'a mut R,
    map: Option<Arc<Mmap>>,
    device: &'a Device,
}

impl<R: Read + Seek> Tensors<'_, R> {
    fn tensor(&mut self, name: &str) -> Result<QTensor> {
        self.content.tensor(self.reader, name, self.device)
    }

    fn dequantized(&mut self, name: &str) -> Result<Tensor> {
        self.tensor(name)?.dequantize(self.device)
    }

    fn matrix(&mut self, name: &str) -> Result<QuantBytes> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            candle_core::bail!("the model file has no tensor {name}");
        };
        match &self.map {
            Some(map) if kernels::handles(info.ggml_dtype) => {
                let (rows, cols) = info.shape.dims2()?;
                let start = self.content.tensor_data_offset + info.offset;
                QuantBytes::mapped(map.clone(), start as usize, info.ggml_dtype, rows, cols)
            }
            _ => QuantBytes::of_tensor(Arc::new(self.tensor(name)?)),
        }
    }
}

pub struct Decoder {
    config: Config,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Projection,
    /// Rotation angles per position, `(context_length, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
    cache: KvCache,
    device: Device,
}

impl Decoder {
    /// Builds the model from a GGUF file's tensors and warms it up (see [`WARM_UP_ROWS`]).
    /// `readers` are handles on the file, each with its own position: the layers are split
    /// between them, one thread each, so that copying or tiling the weights and candle's packing
    /// run on every core. With `map`, a memory map of the same file, the matrices tqa's own
    /// kernels take are read in place from it instead of copied.
    pub fn from_gguf<R: Read + Seek + Send>(
        content: &gguf_file::Content,
        mut readers: Vec<R>,
        map: Option<Arc<Mmap>>,
        arch: &str,
        device: &Device,
    ) -> Result<Self> {
        let config = Config::from_gguf(content, arch)?;
        let map = map.filter(|_| device.is_cpu());
        let Some(reader) = readers.first_mut() else {
            candle_core::bail!("loading a model needs a reader of its file");
        };
        let mut tensors = Tensors {
            content,
            reader,
            map: map.clone(),
            device,
        };
        let embedding_table = tensors.matrix("token_embd.weight")?;
        // Models with tied embeddings (Qwen2.5 up to 3B, SmolLM2) have no output matrix.
        let (output, embedding_table) = if content.tensor_infos.contains_key("output.weight") {
            (
                Projection::for_last_row(tensors.matrix("output.weight")?)?,
                embedding_table,
            )
        } else {
            let output = Projection::for_last_row(embedding_table.clone())?;
            // candle's projection may have padded a copy of the table: read the embeddings from
            // that copy, so that the table is held once.
            let table = match &output {
                Projection::Candle(projection) => QuantBytes::of_tensor(projection.weight.clone())?,
                Projection::Own(_) => embedding_table,
            };
            (output, table)
        };
        let output_norm = tensors.dequantized("output_norm.weight")?;
        // Only the last position of a prompt reaches the output matrix.
        output.warm_up(&[1], device)?;
        let per_reader = config.n_layer.div_ceil(readers.len());
        let loaded: Vec<Result<Vec<Layer>>> = std::thread::scope(|scope| {
            let threads: Vec<_> = readers
                .iter_mut()
                .enumerate()
                .map(|(r, reader)| {
                    let first = (r * per_reader).min(config.n_layer);
                    let end = (first + per_reader).min(config.n_layer);
                    let mut tensors = Tensors {
                        content,
                        reader,
                        map: map.clone(),
                        device,
                    };
                    scope.spawn(move || {
                        (first..end)
                            .map(|i| Layer::load(&mut tensors, i, arch))
                            .collect::<Result<Vec<Layer>>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|thread| {
                    thread.join().unwrap_or_else(|_| {
                        Err(candle_core::Error::Msg(
                            "a thread loading the model's layers panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut layers = Vec::with_capacity(config.n_layer);
        for part in loaded {
            layers.extend(part?);
        }
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            embeddings: Embeddings::new(embedding_table, config.n_head * config.head_dim, device)?,
            layers,
            output_norm,
            output,
            cos,
            sin,
            cache: KvCache::new(),
            device: device.clone(),
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Drops the cache and its memory; the next pass starts a fresh one.
    pub fn release_cache(&mut self) {
        self.cache = KvCache::new();
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Runs `tokens` at positions `pos..pos + tokens.len()` and returns the logits after each of
    /// the last `rows` of them, one row each (a token loop checks several guessed tokens in one
    /// pass). Whatever the cache held from `pos` on is replaced, so `pos` may be anything up to
    /// the cache's length: 0 starts over, a smaller `pos` reuses the prefix before it.
    pub fn forward_last(&mut self, tokens: &[u32], pos: usize, rows: usize) -> Result<Tensor> {
        let n = tokens.len();
        if n == 0 {
            candle_core::bail!("forward needs at least one token");
        }
        if pos > self.cache.len {
            candle_core::bail!(
                "position {pos} is past the {} cached positions",
                self.cache.len
            );
        }
        if pos + n > self.config.context_length {
            candle_core::bail!(
                "{} positions exceed the context of {}",
                pos + n,
                self.config.context_length
            );
        }
        let last_chunk = (n - 1) / PREFILL_CHUNK * PREFILL_CHUNK;
        if rows == 0 || rows > n - last_chunk {
            candle_core::bail!(
                "logits of {rows} rows asked of a last chunk of {}",
                n - last_chunk
            );
        }
        self.cache
            .reserve(pos + n, pos, &self.config, &self.device)?;
        for start in (0..last_chunk).step_by(PREFILL_CHUNK) {
            self.forward_chunk(&tokens[start..start + PREFILL_CHUNK], pos + start)?;
        }
        let h = self.forward_chunk(&tokens[last_chunk..], pos + last_chunk)?;
        let last = h.narrow(0, h.dim(0)? - rows, rows)?;
        self.logits_of_rows(&last)
    }

    /// `forward_last` for at most `PREFILL_CHUNK` tokens: their final hidden states.
    fn forward_chunk(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor> {
        let n = tokens.len();
        let span = Span::new(&self.cos, &self.sin, 0..n, (0, 0), pos, &self.device)?;
        let h = self.forward_rows(tokens, std::slice::from_ref(&span))?;
        self.cache.len = pos + n;
        Ok(h)
    }

    /// Continues the cache's first `shared` positions with several independent branches at
    /// once. Branch i is `entries` (keys and values exported from positions `shared..`, as a
    /// piece computed after the shared prefix leaves them) followed by `tokens`, which see the
    /// prefix, the branch's own entries and the branch's earlier tokens, nothing of the other
    /// branches: each branch computes what `import` of its entries at `shared` followed by
    /// `forward_last` of its tokens would, to the last bit. Their products with the weights run as
    /// one batch: each matrix is read, and the threads woken, once for all of them (the dev
    /// set's judgements took 5% less time; README). Returns the logits of each branch's last
    /// token; afterwards the cache holds the shared prefix only.
    pub fn forward_branches(
        &mut self,
        shared: usize,
        branches: &[Branch<'_>],
    ) -> Result<Vec<Tensor>> {
        if shared > self.cache.len {
            candle_core::bail!(
                "position {shared} is past the {} cached positions",
                self.cache.len
            );
        }
        let mut spans = Vec::with_capacity(branches.len());
        let (mut slot, mut row) = (shared, 0);
        for branch in branches {
            let (before, n) = (entries_len(branch.entries)?, branch.tokens.len());
            if n == 0 {
                candle_core::bail!("a branch needs at least one token");
            }
            if shared + before + n > self.config.context_length {
                candle_core::bail!(
                    "{} positions exceed the context of {}",
                    shared + before + n,
                    self.config.context_length
                );
            }
            spans.push(Span::new(
                &self.cos,
                &self.sin,
                row..row + n,
                (shared, slot),
                slot + before,
                &self.device,
            )?);
            slot += before + n;
            row += n;
        }
        self.cache
            .reserve(slot, shared, &self.config, &self.device)?;
        for (branch, span) in branches.iter().zip(&spans) {
            self.put_entries(branch.entries, span.from, 0)?;
        }
        let tokens: Vec<u32> = branches.iter().flat_map(|b| b.tokens).copied().collect();
        self.forward_spans(&tokens, &spans, shared)
    }

    /// Continues several sequences at once, each in a region of the cache of its own: a region's
    /// rows see only the slots from its `from` on, as if the sequence began there, so each
    /// computes what a plain pass of its tokens would (the products with the weights over several
    /// rows may round their last bits differently from a pass of one). The matrices are read, and
    /// the threads woken, once for all of them. Returns the logits after each region's last
    /// token; the cache keeps every region.
    pub fn forward_regions(&mut self, regions: &[Region<'_>]) -> Result<Vec<Tensor>> {
        let mut spans = Vec::with_capacity(regions.len());
        let (mut row, mut end) = (0, self.cache.len);
        for region in regions {
            let (before, n) = (entries_len(region.entries)?, region.tokens.len());
            if n == 0 {
                candle_core::bail!("a region needs at least one token");
            }
            if region.len + before + n > self.config.context_length {
                candle_core::bail!(
                    "{} positions exceed the context of {}",
                    region.len + before + n,
                    self.config.context_length
                );
            }
            let slot = region.from + region.len + before;
            spans.push(Span::new(
                &self.cos,
                &self.sin,
                row..row + n,
                (0, region.from),
                slot,
                &self.device,
            )?);
            row += n;
            end = end.max(slot + n);
        }
        self.cache
            .reserve(end, self.cache.len, &self.config, &self.device)?;
        for region in regions {
            self.put_entries(region.entries, region.from + region.len, 0)?;
        }
        let tokens: Vec<u32> = regions.iter().flat_map(|r| r.tokens).copied().collect();
        self.forward_spans(&tokens, &spans, end)
    }

    /// Runs `tokens` (the spans' rows, in order), leaves the cache's first `len` positions
    /// counted as held, and returns the logits after each span's last row.
    fn forward_spans(&mut self, tokens: &[u32], spans: &[Span], len: usize) -> Result<Vec<Tensor>> {
        let h = self.forward_rows(tokens, spans)?;
        self.cache.len = len;
        let last_rows: Vec<usize> = spans.iter().map(|span| span.rows.end - 1).collect();
        self.logits_after(&h, &last_rows)
    }

    /// The next-token logits after each of `rows` of the final hidden states. They meet the
    /// output matrix together where it computes each row on its own (tqa's kernels): it is the
    /// largest matrix of a small model (the 1.5B model's 151,936 rows, a sixth of its bytes),
    /// and one product of 8 rows takes about as long as two of one row (16 ms against 57 for 8
    /// apart). candle's products of several rows round otherwise than one row's, and a turn
    /// judged beside others must get the judgement it gets alone: there, one row at a time.
    fn logits_after(&self, h: &Tensor, rows: &[usize]) -> Result<Vec<Tensor>> {
        if !self.output.computes_rows_apart() {
            return rows
                .iter()
                .map(|&row| self.logits_of_rows(&h.narrow(0, row, 1)?)?.squeeze(0))
                .collect();
        }
        let rows: Vec<u32> = rows.iter().map(|&row| row as u32).collect();
        let rows = Tensor::new(rows.as_slice(), h.device())?;
        let logits = self.logits_of_rows(&h.index_select(&rows, 0)?)?;
        (0..logits.dim(0)?).map(|i| logits.get(i)).collect()
    }

    /// Runs `tokens` through the layers, each span's rows as the continuation of its part of the
    /// cache, and returns the final hidden states, `(n, hidden)`.
    fn forward_rows(&self, tokens: &[u32], spans: &[Span]) -> Result<Tensor> {
        let mut h = self.embeddings.rows(tokens, &self.device)?;
        for (layer, cache) in self.layers.iter().zip(&self.cache.layers) {
            let x = candle_nn::ops::rms_norm(&h, &layer.attn_norm, self.config.rms_eps as f32)?;
            let x = attention(&layer.attn, &x, cache, spans, &self.config)?;
            h = (h + x)?;
            let x = candle_nn::ops::rms_norm(&h, &layer.ffn_norm, self.config.rms_eps as f32)?;
            h = (&h + layer.mlp.forward(&x)?)?;
        }
        Ok(h)
    }

    /// The next-token logits after each row of final hidden states `h`, one row each.
    fn logits_of_rows(&self, h: &Tensor) -> Result<Tensor> {
        let h = candle_nn::ops::rms_norm(h, &self.output_norm, self.config.rms_eps as f32)?;
        self.output.forward(&h)
    }

    /// Puts exported cache entries at positions `pos..pos + len`, dropping whatever followed.
    /// Entries exported from another position are moved by `shift` positions: rotary position
    /// embeddings make that a rotation of the keys by the angle of `shift`.
    pub fn import(&mut self, entries: &[(Tensor, Tensor)], pos: usize, shift: usize) -> Result<()> {
        if entries.len() != self.config.n_layer {
            candle_core::bail!(
                "cache entries for {} layers, the model has {}",
                entries.len(),
                self.config.n_layer
            );
        }
        if pos > self.cache.len {
            candle_core::bail!(
                "position {pos} is past the {} cached positions",
                self.cache.len
            );
        }
        let len = entries_len(entries)?;
        self.cache
            .reserve(pos + len, pos, &self.config, &self.device)?;
        self.put_entries(entries, pos, shift)?;
        self.cache.len = pos + len;
        Ok(())
    }

    /// Writes `entries` at cache slot `slot` on, their keys rotated by `shift` positions; the
    /// cache must have room for them.
    fn put_entries(&self, entries: &[(Tensor, Tensor)], slot: usize, shift: usize) -> Result<()> {
        for ((k, v), layer) in entries.iter().zip(&self.cache.layers) {
            let k = k.to_device(&self.device)?.contiguous()?;
            let k = match shift {
                0 => k,
                _ => rotate(
                    &self.config,
                    (&self.cos, &self.sin),
                    &k.unsqueeze(0)?,
                    shift,
                )?
                .squeeze(0)?,
            };
            layer.k.slice_set(&k, 1, slot)?;
            layer
                .v
                .slice_set(&v.to_device(&self.device)?.contiguous()?, 1, slot)?;
        }
        Ok(())
    }
}

/// One branch of `Decoder::forward_branches`.
pub struct Branch<'a> {
    pub entries: &'a [(Tensor, Tensor)],
    pub tokens: &'a [u32],
}

/// How many positions exported cache entries hold.
fn entries_len(entries: &[(Tensor, Tensor)]) -> Result<usize> {
    match entries.first() {
        Some((k, _)) => k.dim(1),
        None => Ok(0),
    }
}

/// One sequence of `Decoder::forward_regions`: it lies in the cache from slot `from` on, `len`
/// positions of it are there, and `entries` (keys and values exported from a sequence's first
/// positions) then `tokens` continue it.
pub struct Region<'a> {
    pub from: usize,
    pub len: usize,
    pub entries: &'a [(Tensor, Tensor)],
    pub tokens: &'a [u32],
}

/// The rows of a forward pass that continue one sequence in the cache: the first `shared`
/// slots, then slots `from..slot`, then the rows themselves, written from `slot` on. A plain
/// forward pass is one span with `shared` and `from` 0.
struct Span {
    rows: std::ops::Range<usize>,
    shared: usize,
    from: usize,
    slot: usize,
    /// Rotation angles of the rows' positions, `(n, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
    /// The causal mask, on devices that add one (see `causal_mask`).
    mask: Option<Tensor>,
}

impl Span {
    fn new(
        cos: &Tensor,
        sin: &Tensor,
        rows: std::ops::Range<usize>,
        (shared, from): (usize, usize),
        slot: usize,
        device: &Device,
    ) -> Result<Self> {
        let n = rows.len();
        let position = shared + slot - from;
        // The CPU's softmax masks as it goes (`fused::causal_softmax`).
        let mask = match device.is_cpu() {
            true => None,
            false => causal_mask(n, position, device)?,
        };
        Ok(Self {
            cos: cos.narrow(0, position, n)?,
            sin: sin.narrow(0, position, n)?,
            rows,
            shared,
            from,
            slot,
            mask,
        })
    }

    /// The position of the span's first row: how many keys come before it.
    fn position(&self) -> usize {
        self.shared + self.slot - self.from
    }

    /// What the span's rows attend to, `(n_kv_head, position + n, head_dim)`: a view of the
    /// cache for a plain pass, a copy of its two parts for a branch.
    fn visible(&self, cached: &Tensor) -> Result<Tensor> {
        let own = cached.narrow(1, self.from, self.slot + self.rows.len() - self.from)?;
        match self.shared {
            0 => Ok(own),
            shared => Tensor::cat(&[&cached.narrow(1, 0, shared)?, &own], 1),
        }
    }
}

/// Rotates `x` (`(1, heads, len, head_dim)`) by the angles of position `by`, the same for every
/// row: rotations compose, so keys computed at position p become those of position p + by.
fn rotate(
    config: &Config,
    (cos, sin): (&Tensor, &Tensor),
    x: &Tensor,
    by: usize,
) -> Result<Tensor> {
    let len = x.dim(2)?;
    let half = config.head_dim / 2;
    let cos = cos
        .narrow(0, by, 1)?
        .broadcast_as((len, half))?
        .contiguous()?;
    let sin = sin
        .narrow(0, by, 1)?
        .broadcast_as((len, half))?
        .contiguous()?;
    rope(config, x, &cos, &sin)
}

fn rope(config: &Config, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if config.rope_halves {
        candle_nn::rotary_emb::rope(x, cos, sin)
    } else {
        candle_nn::rotary_emb::rope_i(x, cos, sin)
    }
}

/// Self-attention of `x` (`(n, hidden)`) over the cache, each span's rows over what that span
/// sees. Grouped query heads are folded onto their shared key/value head instead of copying K
/// and V per head.
fn attention(
    attn: &Attention,
    x: &Tensor,
    cache: &LayerCache,
    spans: &[Span],
    config: &Config,
) -> Result<Tensor> {
    let parts = attn.qkv.forward(x)?;
    let [q, k, v] = parts.as_slice() else {
        candle_core::bail!("attention needs q, k and v matrices");
    };
    let (mut q, mut k, mut v) = (q.clone(), k.clone(), v.clone());
    if let Some([bq, bk, bv]) = &attn.bias {
        q = q.broadcast_add(bq)?;
        k = k.broadcast_add(bk)?;
        v = v.broadcast_add(bv)?;
    }
    let out = match spans {
        [span] => span_attention(&q, &k, &v, cache, span, config)?,
        _ => {
            let outs = spans
                .iter()
                .map(|span| {
                    let (start, n) = (span.rows.start, span.rows.len());
                    let rows = |t: &Tensor| t.narrow(0, start, n);
                    span_attention(&rows(&q)?, &rows(&k)?, &rows(&v)?, cache, span, config)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&outs, 0)?
        }
    };
    attn.o.forward(&out)
}

/// Attention of one span's rows (`q`, `k`, `v`: their projections, `(n, heads · head_dim)`):
/// rotates them to their positions, writes their keys and values to the cache and returns the
/// heads' outputs, `(n, n_head · head_dim)`.
fn span_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &LayerCache,
    span: &Span,
    config: &Config,
) -> Result<Tensor> {
    let n = q.dim(0)?;
    let (n_head, n_kv, d) = (config.n_head, config.n_kv_head, config.head_dim);
    let heads =
        |t: &Tensor, count: usize| t.reshape((1, n, count, d))?.transpose(1, 2)?.contiguous();
    let q = rope(config, &heads(q, n_head)?, &span.cos, &span.sin)?;
    let k = rope(config, &heads(k, n_kv)?, &span.cos, &span.sin)?;
    let v = heads(v, n_kv)?;
    cache.k.slice_set(&k.squeeze(0)?, 1, span.slot)?;
    cache.v.slice_set(&v.squeeze(0)?, 1, span.slot)?;
    let pos = span.position();
    if n == 1 && span.shared == 0 && q.device().is_cpu() {
        return single_query_attention(&q, cache, span.from..span.slot + 1, config);
    }
    let keys = span.visible(&cache.k)?;
    let values = span.visible(&cache.v)?;

    let group = n_head / n_kv;
    let q = q.reshape((n_kv, group * n, d))?;
    let scale = 1.0 / (d as f64).sqrt();
    let scores = q.matmul(&keys.t()?)?;
    let weights = if q.device().is_cpu() {
        fused::causal_softmax(&scores, n, pos, scale as f32)?
    } else {
        let scores = (scores * scale)?;
        let scores = match &span.mask {
            Some(mask) => scores
                .reshape((n_kv, group, n, pos + n))?
                .broadcast_add(mask)?
                .reshape((n_kv, group * n, pos + n))?,
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    let out = weights.matmul(&values)?;
    out.reshape((n_head, n, d))?
        .transpose(0, 1)?
        .reshape((n, n_head * d))
}

/// Attention of one position (`q`: `(1, n_head, 1, head_dim)`) over the cached ones in `slots`,
/// as plain loops over the cache, the heads split between candle's CPU threads: for a single
/// query row candle's matrix products spent more time packing their operands than multiplying
/// (a tenth of SmolLM2's decoding time). Where the key/value heads split evenly between the
/// threads, a thread takes every query head of its key/value heads and reads each key and value
/// once for all of them, not once per query head. Returns `(1, n_head * head_dim)`.
fn single_query_attention(
    q: &Tensor,
    cache: &LayerCache,
    slots: std::ops::Range<usize>,
    config: &Config,
) -> Result<Tensor> {
    let len = slots.len();
    let (n_head, n_kv, d) = (config.n_head, config.n_kv_head, config.head_dim);
    let group = n_head / n_kv;
    let heads_together = if n_kv % candle_core::utils::get_num_threads() == 0 {
        group
    } else {
        1
    };
    let capacity = cache.k.dim(1)?;
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let (keys, key_layout) = cache.k.storage_and_layout();
    let (values, value_layout) = cache.v.storage_and_layout();
    let keys = cpu_f32(&keys, key_layout)?;
    let values = cpu_f32(&values, value_layout)?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; n_head * d];
    parallel_chunks_mut(&mut out, heads_together * d, |unit, out| {
        let first_head = unit * heads_together;
        let kv = first_head / group;
        let span = (kv * capacity + slots.start) * d..(kv * capacity + slots.end) * d;
        let queries = &q[first_head * d..(first_head + heads_together) * d];
        // `weights[h * len + j]`: head h's weight of position j.
        let mut weights = vec![0f32; heads_together * len];
        for (j, key) in keys[span.clone()].chunks_exact(d).enumerate() {
            for (h, query) in queries.chunks_exact(d).enumerate() {
                weights[h * len + j] = dot(query, key) * scale;
            }
        }
        let totals: Vec<f32> = weights
            .chunks_exact_mut(len)
            .map(|weights| {
                let max = weights.iter().fold(f32::NEG_INFINITY, |m, &w| m.max(w));
                for w in weights.iter_mut() {
                    *w -= max;
                }
                fused::exp_in_place(weights);
                weights.iter().fold(0.0, |total, w| total + w)
            })
            .collect();
        for (j, value) in values[span].chunks_exact(d).enumerate() {
            for (h, out) in out.chunks_exact_mut(d).enumerate() {
                let w = weights[h * len + j] / totals[h];
                for (o, v) in out.iter_mut().zip(value) {
                    *o += w * v;
                }
            }
        }
    });
    Tensor::from_vec(out, (1, n_head * d), &Device::Cpu)
}

/// The f32 values of a contiguous CPU tensor.
fn cpu_f32<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> Result<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(cpu) if layout.is_contiguous() => {
            let all = cpu.as_slice::<f32>()?;
            Ok(&all[layout.start_offset()..layout.start_offset() + layout.shape().elem_count()])
        }
        _ => candle_core::bail!("expected a contiguous f32 tensor on the CPU"),
    }
}

/// A dot product in eight independent lanes, which the compiler turns into vector instructions.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_blocks, b_blocks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Additive mask for `n` new positions after `pos` cached ones; a single token sees everything.
/// The CPU masks inside `fused::causal_softmax` instead; this is what other devices add.
pub fn causal_mask(n: usize, pos: usize, device: &Device) -> Result<Option<Tensor>> {
    if n == 1 {
        return Ok(None);
    }
    let total = pos + n;
    let values: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (n, total), device).map(Some)
}

fn rope_tables(config: &Config, device: &Device) -> Result<(Tensor, Tensor)> {
    let d = config.head_dim;
    let inv_freq: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1.0 / config.rope_base.powf(i as f32 / d as f32))
        .collect();
    let positions = Tensor::arange(0, config.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.context_length, 1))?;
    let angles =
        positions.broadcast_mul(&Tensor::new(inv_freq.as_slice(), device)?.reshape((1, d / 2))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rope_halves: bool) -> Config {
        Config {
            n_layer: 1,
            n_head: 2,
            n_kv_head: 2,
            head_dim: 8,
            rms_eps: 1e-6,
            rope_base: 10_000.0,
            rope_halves,
            context_length: 64,
        }
    }

    #[test]
    fn rotating_stored_keys_moves_them_to_a_later_position() {
        for halves in [true, false] {
            let config = config(halves);
            let (cos, sin) = rope_tables(&config, &Device::Cpu).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &Device::Cpu).unwrap();
            let at = |pos: usize| {
                let c = cos.narrow(0, pos, 5).unwrap();
                let s = sin.narrow(0, pos, 5).unwrap();
                rope(&config, &x, &c, &s).unwrap()
            };
            let moved = rotate(&config, (&cos, &sin), &at(3), 20).unwrap();
            let diff = (moved - at(23))
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-4,
                "rope_halves={halves}: rotated keys differ by {diff}"
            );
        }
    }

    #[test]
    fn the_mask_hides_only_later_positions() {
        let mask = causal_mask(2, 3, &Device::Cpu)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(mask[0], [0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(mask[1], [0.0; 5]);
        assert!(causal_mask(1, 7, &Device::Cpu).unwrap().is_none());
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The Q8_0 shapes of SmolLM2 (width 576) and Qwen2.5-0.5B (width 896), and the 1.5B
    /// model's k-quants (width 1536), for decoding (own kernels, where they run), a few tokens
    /// either side of `FEW_ROWS`, and a prompt chunk. All paths round the activations to 8 bits
    /// (in blocks of different sizes), so each is held to the float product of the dequantized
    /// weights, within 2% of its range.
    #[test]
    fn candle_projections_compute_the_product_of_the_unpadded_matrix() {
        let device = Device::Cpu;
        let q8 = GgmlDType::Q8_0;
        for (dtype, rows, width) in [
            (q8, 896, 896),
            (q8, 128, 896),
            (q8, 4864, 896),
            (q8, 576, 576),
            (q8, 1536, 576),
            (GgmlDType::Q4K, 256, 1536),
            (GgmlDType::Q6K, 256, 1536),
        ] {
            let weight = Tensor::randn(0f32, 0.05, (rows, width), &device).unwrap();
            let quantized = Arc::new(QTensor::quantize(&weight, dtype).unwrap());
            let exact_weight = quantized.dequantize(&device).unwrap();
            let plain = QMatMul::from_arc(quantized.clone()).unwrap();
            let projection = CandleProjection::new(quantized).unwrap();
            if kernels::has_int8_dot_products() {
                assert!(projection.few_rows.is_some());
                if dtype == q8 {
                    assert_eq!(projection.padding, width.next_multiple_of(256) - width);
                }
            }
            for tokens in [1, FEW_ROWS - 1, FEW_ROWS, 37] {
                let x = Tensor::randn(0f32, 1.0, (tokens, width), &device).unwrap();
                let exact = x.matmul(&exact_weight.t().unwrap()).unwrap();
                let tolerance = 0.02 * max_abs(&exact);
                for (path, got) in [
                    ("padded", projection.forward(&x).unwrap()),
                    ("plain", plain.forward(&x).unwrap()),
                ] {
                    let error = max_abs(&(got - &exact).unwrap());
                    assert!(
                        error < tolerance,
                        "{path} {dtype:?} {rows}x{width}, {tokens} tokens: off by {error} (tolerance {tolerance})"
                    );
                }
            }
        }
    }

    /// q, k and v of Qwen2.5-0.5B's shapes; the 1.5B model's layers mix Q4_K and Q6_K.
    #[test]
    fn stacked_matrices_give_each_matrix_its_own_product() {
        let device = Device::Cpu;
        let floats: Vec<Tensor> = [896, 128, 128]
            .iter()
            .map(|&rows| Tensor::randn(0f32, 0.05, (rows, 896), &device).unwrap())
            .collect();
        let quantized = |w: &Tensor, dtype| {
            QuantBytes::of_tensor(Arc::new(QTensor::quantize(w, dtype).unwrap())).unwrap()
        };
        let x = Tensor::randn(0f32, 1.0, (5, 896), &device).unwrap();

        let stacked = SharedInput::new(
            floats
                .iter()
                .map(|w| quantized(w, GgmlDType::Q8_0))
                .collect(),
        )
        .unwrap();
        assert!(matches!(stacked, SharedInput::Stacked { .. }));
        let parts = stacked.forward(&x).unwrap();
        assert_eq!(parts.len(), 3);
        for (part, w) in parts.iter().zip(&floats) {
            let alone = Projection::new(quantized(w, GgmlDType::Q8_0))
                .unwrap()
                .forward(&x)
                .unwrap();
            assert_eq!(part.dims(), alone.dims());
            let diff = max_abs(&(part - alone).unwrap());
            assert!(diff < 1e-5, "a stacked part differs by {diff}");
        }

        let mixed = vec![
            quantized(&floats[0], GgmlDType::Q8_0),
            quantized(&floats[1], GgmlDType::Q4_0),
        ];
        assert!(matches!(
            SharedInput::new(mixed).unwrap(),
            SharedInput::Apart(_)
        ));
    }
}
