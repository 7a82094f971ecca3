//! Matrix products for GGUF block types on CPUs with AVX2 but without the int8 dot-product
//! instructions (AVX-512 VNNI, AVX-VNNI) that candle's fast kernels need: most laptops before
//! 2021, AMD Zen 2 and 3. There candle runs Q4_1 and Q5_0 (SmolLM2's file, most of
//! Qwen2.5-Coder-0.5B's) with scalar code, and Q8_0 one weight row at a time, with no reuse of a
//! weight block across the rows of a prompt and nothing that keeps memory reads ahead of the
//! arithmetic when decoding.
//!
//! The k-quants of the default model (Q4_K, Q6_K) have AVX2 kernels in candle that repack every
//! Q4_K matrix (and Q6_K ones for prompts) into tiles of 16 rows with f32 scales, keeping the
//! original as well: the default model took twice its file's size in memory, and seconds of
//! repacking at load. These kernels read the blocks where they lie.
//!
//! With AVX-512 VNNI or AVX-VNNI, candle's repacked kernels compute Q8_0 prompts (and, with
//! AVX-VNNI alone, Q4_K ones) faster than these, but they read more bytes per token than the
//! blocks hold: there these kernels decode, and compute every product of the types candle would
//! have to copy first ([`prefers`]). With AVX-512 VNNI, Q4_K and Q6_K prompts go to tiles of 16
//! weight rows made from the mapped blocks at load (`tiles`).
//!
//! Every format is read as groups of 32 values. Q4_1 and Q5_0 blocks are one group,
//! `value = d * q + m` with an unsigned q (Q4_1: 4 bits and its own `m`; Q5_0: 5 bits and
//! `m = -16 d`); Q8_0 is `d * q` with a signed q. The activations are quantized to 8 bits per
//! group with their sum kept, and a group's product is `d * d_x * Σ q·x_q + m * d_x * Σ x_q`, the
//! first term from AVX2's unsigned-by-signed byte products.
//!
//! Q4_K's and Q6_K's super-blocks hold 8 groups; the activations are quantized per 256 values,
//! so that the groups' products add up as integers before the block's `d * d_x`. Q4_K's groups
//! each have a 6-bit scale, applied to the integer products, and a 6-bit minimum times `dmin`;
//! Q6_K's hold `q - 32` with an 8-bit scale for each half of a group: the products take the
//! unsigned q, and each block subtracts 32 times the half groups' scaled activation sums.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};

use super::weights::QuantBytes;

#[cfg(target_arch = "x86_64")]
mod tiles;

/// A k-quant matrix's blocks again in tiles, for prompts, on CPUs with AVX-512 VNNI (see
/// `tiles`). Elsewhere there are none.
enum PromptTiles {
    #[cfg(target_arch = "x86_64")]
    Q4K(tiles::Tiles<tiles::Q4K>),
    #[cfg(target_arch = "x86_64")]
    Q6K(tiles::Tiles<tiles::Q6K>),
}

impl PromptTiles {
    fn run_here() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            tiles::run_here()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    fn takes(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) && Self::run_here()
    }

    fn pack(format: Format, parts: &[&[u8]], cols: usize) -> Option<Self> {
        match format {
            #[cfg(target_arch = "x86_64")]
            Format::Q4K => tiles::Tiles::pack(parts, cols).map(Self::Q4K),
            #[cfg(target_arch = "x86_64")]
            Format::Q6K => tiles::Tiles::pack(parts, cols).map(Self::Q6K),
            _ => None,
        }
    }

    fn product(&self, acts: &[ActSuperBlock], m: usize, out: &mut [MaybeUninit<f32>]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Q4K(tiles) => tiles.product(acts, m, out),
            #[cfg(target_arch = "x86_64")]
            Self::Q6K(tiles) => tiles.product(acts, m, out),
        }
    }
}

/// Values per block, in the weights and in the quantized activations.
const BLOCK: usize = 32;

/// Weight rows one work item of the thread pool computes.
const ROWS_PER_ITEM: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// f16 d, f16 m, 16 bytes of 4-bit q (low nibbles: values 0–15, high: 16–31).
    Q4_1,
    /// f16 d, 32 high bits, 16 bytes of low nibbles as in Q4_1; value = d * (q - 16).
    Q5_0,
    /// f16 d, 32 signed bytes; value = d * q.
    Q8_0,
    /// 256 values: f16 d, f16 dmin, 12 bytes of eight 6-bit scales and minimums, 128 bytes of
    /// 4-bit q (each 32 bytes: one group in the low nibbles, the next in the high ones).
    Q4K,
    /// 256 values: 128 bytes of the low 4 bits, 64 bytes of the high 2 bits, 16 signed 8-bit
    /// scales (one per 16 values), f16 d; value = d * scale * (q - 32).
    Q6K,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Groups of 32 values in one block.
    const fn groups(self) -> usize {
        match self {
            Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => 1,
            Self::Q4K | Self::Q6K => 8,
        }
    }

    /// Bytes of a row of `cols` values.
    const fn row_bytes(self, cols: usize) -> usize {
        cols / (BLOCK * self.groups()) * self.block_bytes()
    }
}

/// A block of 32 activations as bytes: `x ≈ d * q`, and `s = d * Σ q`.
#[derive(Clone, Copy)]
struct ActBlock {
    d: f32,
    s: f32,
    q: [i8; BLOCK],
}

/// Values in a k-quant super-block.
const SUPER_BLOCK: usize = 8 * BLOCK;

/// A super-block of 256 activations as bytes, `x ≈ d * q` with one `d`, so that the products of
/// its groups with a k-quant block add up as integers; each group's `Σ q` (at most 32 × 127),
/// for Q4_K's minimums, and each half group's, for Q6_K's offset of 32. The bytes come first, on
/// a cache line of their own: AMX loads each 64 of them as one row of a tile, and rows that
/// straddled two lines made its prompts a tenth to a fifth slower.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct ActSuperBlock {
    q: [i8; SUPER_BLOCK],
    d: f32,
    sums: [i16; 8],
    half_sums: [i16; 16],
}

impl ActSuperBlock {
    /// Activations of zero, which add nothing to a product.
    const ZERO: Self = Self {
        d: 0.0,
        sums: [0; 8],
        half_sums: [0; 16],
        q: [0; SUPER_BLOCK],
    };
}

/// Activation rows a prompt's weight block of 32 values meets at once.
const TILE_ROWS: usize = 8;

/// One block of [`TILE_ROWS`] activation rows, interleaved so that one 32-byte register holds the
/// same 4 values of every row: `q[c * TILE_ROWS + i]` are values `4c..4c + 4` of row `i`. A weight
/// block's 4 values broadcast against it give each row's products in its own lane, so a block's
/// 8 steps add up as integers per row and are scaled once for all the rows; row by row, every
/// block needed its products summed across a register and scaled, row after row.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct ActTileBlock {
    q: [[i8; 4]; BLOCK / 4 * TILE_ROWS],
    d: [f32; TILE_ROWS],
    s: [f32; TILE_ROWS],
}

/// Activation rows rounded to the blocks a weight format is multiplied with.
enum Acts {
    /// Row after row, and the rows again in tiles of [`TILE_ROWS`] (as many as fill up).
    Blocks {
        rows: Vec<ActBlock>,
        tiles: Vec<ActTileBlock>,
    },
    SuperBlocks(Vec<ActSuperBlock>),
}

impl Acts {
    /// `x`: rows of `cols` values.
    fn quantize(x: &[f32], cols: usize, format: Format) -> Self {
        if format.groups() == 1 {
            let rows = quantize_rows(x);
            let tiles = interleave(&rows, cols / BLOCK);
            Self::Blocks { rows, tiles }
        } else {
            Self::SuperBlocks(quantize_rows_in_super_blocks(x))
        }
    }
}

/// Whether tqa uses these kernels on this CPU for every product: it runs them (see
/// [`runs_here`]) and has no int8 dot-product instructions, with which candle's kernels on
/// repacked copies compute prompts faster; there these compute only a few rows at a time
/// ([`QuantMatrix::new`]), and those of the types [`prefers`] names.
pub fn available() -> bool {
    runs_here() && !has_int8_dot_products()
}

/// Whether this CPU has AVX-512 VNNI or AVX-VNNI, with which candle runs Q4_K and Q8_0 through
/// its repacked kernels.
pub fn has_int8_dot_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether tqa computes every product of `dtype` with these kernels on this CPU: everywhere they
/// are [`available`], and for [`OWN_OVER_REPACKED`] and the types of the prompt tiles also where
/// candle's kernels take the other types' prompts.
pub fn prefers(dtype: GgmlDType) -> bool {
    let own_over_repacked = PromptTiles::takes(dtype) || OWN_OVER_REPACKED.contains(&dtype);
    handles(dtype) && (available() || (runs_here() && own_over_repacked))
}

/// Types these kernels compute even on CPUs with int8 dot products, where candle's repacked
/// kernels compute Q8_0 prompts faster. candle runs Q4_1 and Q5_0 only with scalar
/// code: it needed a Q8_0 copy of the file, its columns padded for the fast kernels and then
/// repacked into tiles, three copies of the weights in memory and seconds at load. candle's
/// repacked Q6_K tiles hold 1.5× the bytes of the blocks and gave prompts no speed: the 1.5B
/// model (Q6_K in its output matrix and half its v and down projections), `tqa bench --prefill
/// 512`, two interleaved rounds, candle's / own for Q6_K: 108.1 / 108.8 and 103.7 / 108.4 tok/s,
/// peak 2,260 / 2,031 MiB. (On AVX-512 VNNI CPUs Q6_K prompts now go to the own tiles.)
const OWN_OVER_REPACKED: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q6K];

/// Prompts of at least this many rows go to a matrix's tiles, where it has them; one row
/// (decoding) reads the blocks, fewer bytes from memory. `tqa bench --prefill 1,2,3,4,6,8` on the
/// 1.5B model, two interleaved rounds, tiles from 1, 2, 4 or 16 rows: decode 20.2, 21.6 against
/// 22.9, 22.8 tok/s (tiles from 1 / from 2); 2 and 3 rows 40.3, 30.2 and 40.9, 40.2 against
/// 28.5, 27.2 and 27.9, 27.9 (from 2 / from 4); 4, 6 and 8 rows 48.3, 46.1 / 50.1, 56.1 / 58.6,
/// 59.3 against 27.9, 29.7 / 28.3, 29.0 / 55.5, 46.8 (from 4 / from 16).
const TILED_MIN_ROWS: usize = 2;

/// Which kernels compute the products on this CPU, for the names of cache entries: each path
/// rounds differently, and a greedy answer must repeat.
pub fn path() -> &'static str {
    if available() {
        "own"
    } else if PromptTiles::run_here() {
        "own-k-quant-tiles-candle-prompts-own-decoding"
    } else if runs_here() {
        "candle-prompts-own-decoding"
    } else {
        "candle"
    }
}

/// Whether this CPU can run these kernels at all: without AVX2 there is no byte product to build
/// on.
pub fn runs_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`QuantMatrix::on_any_avx2_cpu`] takes matrices of this type on this CPU.
pub fn runs_here_for(dtype: GgmlDType) -> bool {
    handles(dtype) && runs_here()
}

/// Whether [`QuantMatrix`] takes tensors of this type.
pub fn handles(dtype: GgmlDType) -> bool {
    Format::of(dtype).is_some()
}

/// A weight matrix of `rows` × `cols`, row-major, its blocks read where they lie: one matrix, or
/// several with the same input stacked one under another.
pub struct QuantMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    parts: Vec<QuantBytes>,
    items: Vec<WorkItem>,
    tiles: Option<PromptTiles>,
}

/// Weight rows of one part that one thread computes in one go.
struct WorkItem {
    part: usize,
    /// The first of its rows in the part, and in the stacked matrix.
    first_in_part: usize,
    first: usize,
    rows: usize,
}

impl QuantMatrix {
    /// `weight` for these kernels wherever they run, whether or not tqa prefers them there for
    /// every product (see [`prefers`]): with int8 dot-product instructions candle's repacked
    /// kernels compute prompts faster, but these read the blocks where they lie and decode
    /// faster (see the decoder's `FEW_ROWS`). `None` when they do not take it (another block
    /// type, not a matrix, a CPU without AVX2).
    pub fn new(weight: Arc<QTensor>) -> Result<Option<Self>> {
        Self::on_any_avx2_cpu(vec![QuantBytes::of_tensor(weight)?])
    }

    /// The matrices `parts`, which read the same input, stacked one under another: their
    /// products with an input come in one pass, the input quantized once; or `None` where tqa
    /// does not prefer these kernels for their block type (see [`prefers`]), or when the parts
    /// differ in block type or width.
    pub fn stacked(parts: Vec<QuantBytes>) -> Result<Option<Self>> {
        if !parts.iter().all(|p| prefers(p.dtype())) {
            return Ok(None);
        }
        Self::on_any_avx2_cpu(parts)
    }

    /// The matrix with its blocks also in tiles for prompts, where this CPU runs them and the
    /// type has them (Q4_K and Q6_K, see `tiles`): a matrix that only ever meets one row (a
    /// model's output matrix) is better off without.
    pub fn with_prompt_tiles(mut self) -> Result<Self> {
        if PromptTiles::run_here() {
            let bytes = self
                .parts
                .iter()
                .map(QuantBytes::bytes)
                .collect::<Result<Vec<_>>>()?;
            let parts: Vec<&[u8]> = bytes.iter().map(|b| b.as_ref()).collect();
            self.tiles = PromptTiles::pack(self.format, &parts, self.cols);
        }
        Ok(self)
    }

    /// Whether each activation row's products are the same bits whatever rows come with it: the
    /// k-quants' blocks are computed row by row. Prompt tiles (from 2 rows on) round otherwise
    /// than one row does, and so do the 32-value formats' activations in tiles of 8 rows.
    pub fn computes_rows_apart(&self) -> bool {
        self.tiles.is_none() && self.format.groups() > 1
    }

    /// [`QuantMatrix::stacked`] wherever the kernels run, whether or not tqa prefers them there:
    /// for a matrix that only ever meets one row, which they compute fastest wherever they run.
    pub fn on_any_avx2_cpu(parts: Vec<QuantBytes>) -> Result<Option<Self>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let Some(format) = Format::of(first.dtype()) else {
            return Ok(None);
        };
        let cols = first.cols();
        let block_values = BLOCK * format.groups();
        let alike = parts
            .iter()
            .all(|p| p.dtype() == first.dtype() && p.cols() == cols && p.is_cpu());
        if !runs_here() || !alike || !cols.is_multiple_of(block_values) {
            return Ok(None);
        }
        for part in &parts {
            let (rows, bytes) = (part.rows(), part.bytes()?.len());
            if bytes != rows * format.row_bytes(cols) {
                candle_core::bail!(
                    "a {format:?} matrix of {rows}x{cols} holds {bytes} bytes: the model file is \
                     damaged; delete it and fetch it again (`models/fetch NAME`)"
                );
            }
        }
        let mut items = Vec::new();
        let mut first_row = 0;
        for (part, weights) in parts.iter().enumerate() {
            for first_in_part in (0..weights.rows()).step_by(ROWS_PER_ITEM) {
                let rows = ROWS_PER_ITEM.min(weights.rows() - first_in_part);
                items.push(WorkItem {
                    part,
                    first_in_part,
                    first: first_row + first_in_part,
                    rows,
                });
            }
            first_row += weights.rows();
        }
        Ok(Some(Self {
            format,
            rows: first_row,
            cols,
            parts,
            items,
            tiles: None,
        }))
    }

    /// `x @ selfᵀ` for `x` of shape `(..., cols)`: shape `(..., rows)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut shape = x.dims().to_vec();
        if shape.last() != Some(&self.cols) {
            candle_core::bail!(
                "input of shape {shape:?} for a matrix of {} columns",
                self.cols
            );
        }
        let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let m = x.elem_count() / self.cols;
        let acts = {
            let (storage, layout) = x.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("these kernels run on the CPU only");
            };
            let start = layout.start_offset();
            Acts::quantize(
                &cpu.as_slice::<f32>()?[start..start + m * self.cols],
                self.cols,
                self.format,
            )
        };
        // Not zeroed first: every product is written, and zeroing showed as ~4% of a prompt in perf.
        let len = m * self.rows;
        let mut out = Vec::with_capacity(len);
        self.product(&acts, m, &mut out.spare_capacity_mut()[..len])?;
        // SAFETY: `product` has written all `m * rows` products.
        unsafe { out.set_len(len) };
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    /// Writes the products of the `m` quantized rows `acts` with every weight row into `out`
    /// (`m` × `rows`, every element), the weight rows split between candle's CPU threads.
    fn product(&self, acts: &Acts, m: usize, out: &mut [MaybeUninit<f32>]) -> Result<()> {
        if let (Some(tiles), Acts::SuperBlocks(blocks)) = (&self.tiles, acts) {
            if m >= TILED_MIN_ROWS {
                tiles.product(blocks, m, out);
                return Ok(());
            }
        }
        let parts = self
            .parts
            .iter()
            .map(QuantBytes::bytes)
            .collect::<Result<Vec<_>>>()?;
        let row_bytes = self.format.row_bytes(self.cols);
        let out_ptr = SendPtr(out.as_mut_ptr().cast());
        candle_core::utils::barrier_pool().execute_chunked(self.items.len(), |range| {
            let out_ptr = &out_ptr;
            for item in &self.items[range] {
                let start = item.first_in_part * row_bytes;
                let weights = &parts[item.part][start..start + item.rows * row_bytes];
                // SAFETY: work items cover disjoint weight rows, so each output element is written
                // by exactly one of them; `out` outlives the pool's call.
                unsafe {
                    rows_product(self.format, weights, item.rows, acts, m, |a, r, value| {
                        *out_ptr.0.add(a * self.rows + item.first + r) = value
                    })
                }
            }
        });
        Ok(())
    }
}

/// Calls `f(i, chunk)` for each `chunk`-long piece of `out` (the last may be shorter), the
/// pieces split between candle's CPU threads.
pub fn parallel_chunks_mut(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let len = out.len();
    let out_ptr = SendPtr(out.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(len.div_ceil(chunk), |range| {
        let out_ptr = &out_ptr;
        for i in range {
            let start = i * chunk;
            // SAFETY: each index is handed to exactly one thread, so the pieces never overlap;
            // `out` outlives the pool's call.
            let piece = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.0.add(start), chunk.min(len - start))
            };
            f(i, piece);
        }
    });
}

struct SendPtr(*mut f32);
// SAFETY: the pointer is only written through at positions no other thread writes.
unsafe impl Sync for SendPtr {}

/// Rounds `values` to bytes with one scale `d`, as ggml's Q8_1 (32 values) and Q8_K (256) do,
/// halves away from zero as `f32::round` does. Written in plain arithmetic that the compiler
/// vectorizes (`f32::round` and a saturating `as i8` it does not, which made rounding a
/// prompt's activations a tenth of the time of its products); adding and taking away 1.5 · 2^23
/// leaves a whole number in the low bits.
fn round_to_bytes(values: &[f32], q: &mut [i8]) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    for (q, v) in q.iter_mut().zip(values) {
        let scaled = v * inv;
        let whole = scaled.trunc();
        let away = if (scaled - whole).abs() >= 0.5 {
            1f32.copysign(scaled)
        } else {
            0.0
        };
        // |scaled| ≤ 127 (and a hair more), so the whole number fits the byte.
        *q = ((whole + away + ROUND).to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32) as i8;
    }
    d
}

fn sum_of(q: &[i8]) -> i32 {
    q.iter().map(|&q| q as i32).sum()
}

/// Quantizes rows of activations, whose width is a multiple of 32, to blocks of 32 bytes.
fn quantize_rows(x: &[f32]) -> Vec<ActBlock> {
    x.chunks_exact(BLOCK)
        .map(|values| {
            let mut q = [0i8; BLOCK];
            let d = round_to_bytes(values, &mut q);
            ActBlock {
                d,
                s: d * sum_of(&q) as f32,
                q,
            }
        })
        .collect()
}

/// The rows of `blocks` blocks each in `rows`, in tiles of [`TILE_ROWS`] rows, block after block;
/// the rows that do not fill a tile are left out.
fn interleave(rows: &[ActBlock], blocks: usize) -> Vec<ActTileBlock> {
    let tile_count = rows.len() / blocks / TILE_ROWS;
    let mut tiles = Vec::with_capacity(tile_count * blocks);
    for t in 0..tile_count {
        for b in 0..blocks {
            let act = |i: usize| &rows[(t * TILE_ROWS + i) * blocks + b];
            tiles.push(ActTileBlock {
                q: std::array::from_fn(|k| {
                    let (c, i) = (k / TILE_ROWS, k % TILE_ROWS);
                    std::array::from_fn(|j| act(i).q[4 * c + j])
                }),
                d: std::array::from_fn(|i| act(i).d),
                s: std::array::from_fn(|i| act(i).s),
            });
        }
    }
    tiles
}

/// Quantizes rows of activations, whose width is a multiple of 256, to super-blocks.
fn quantize_rows_in_super_blocks(x: &[f32]) -> Vec<ActSuperBlock> {
    x.chunks_exact(SUPER_BLOCK)
        .map(|values| {
            let mut q = [0i8; SUPER_BLOCK];
            let d = round_to_bytes(values, &mut q);
            let mut half_sums = [0i16; 16];
            for (sum, half) in half_sums.iter_mut().zip(q.chunks_exact(BLOCK / 2)) {
                *sum = sum_of(half) as i16;
            }
            let sums = std::array::from_fn(|j| half_sums[2 * j] + half_sums[2 * j + 1]);
            ActSuperBlock {
                d,
                sums,
                half_sums,
                q,
            }
        })
        .collect()
}

/// Computes `n` weight rows (`weights`, consecutive) against `m` activation rows, handing each
/// result to `store(activation row, weight row, value)`.
///
/// # Safety
/// `weights` holds `n` rows of the format's blocks for `acts`' row width.
unsafe fn rows_product(
    format: Format,
    weights: &[u8],
    n: usize,
    acts: &Acts,
    m: usize,
    store: impl FnMut(usize, usize, f32),
) {
    #[cfg(target_arch = "x86_64")]
    {
        avx2::rows_product(format, weights, n, acts, m, store)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (format, weights, n, acts, m, store);
        unreachable!("QuantMatrix is built only where `runs_here()` holds")
    }
}

/// Q4_K's eight 6-bit scales and eight minimums, one per byte, from their 12 packed bytes:
/// groups 0–3 in the low 6 bits of bytes 0–3 (scales) and 4–7 (minimums), groups 4–7 in the
/// nibbles of bytes 8–11 with their top 2 bits in the top bits of bytes 0–7.
fn q4k_scales_and_mins(packed: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let low6 = 0x3f3f_3f3f;
    let top2 = |w: u32| ((w >> 6) & 0x0303_0303) << 4;
    let scales_low = w0 & low6;
    let scales_high = (w2 & 0x0f0f_0f0f) | top2(w0);
    let mins_low = w1 & low6;
    let mins_high = ((w2 >> 4) & 0x0f0f_0f0f) | top2(w1);
    (
        scales_low as u64 | (scales_high as u64) << 32,
        mins_low as u64 | (mins_high as u64) << 32,
    )
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{ActBlock, ActSuperBlock, ActTileBlock, Acts, Format, BLOCK, TILE_ROWS};

    /// One weight block unpacked: its 32 values q, and `value = d * q + m`.
    struct Unpacked {
        q: __m256i,
        d: f32,
        m: f32,
    }

    /// Activation rows a k-quant block meets at once, unpacked once for all of them: 8 where the
    /// code is compiled for AVX-512's 32 vector registers, 4 in AVX2's 16. From 4 to 8 on
    /// AVX-512, `tqa bench --prefill 512`, two interleaved rounds, the 1.5B model (its Q6_K
    /// prompts): 96.8 / 97.6 → 107.8 / 119.4 tok/s.
    const ACT_TILE: usize = if cfg!(target_feature = "avx512f") {
        8
    } else {
        4
    };

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `weights` holds `n` rows of blocks for `acts`' width.
    pub(super) unsafe fn rows_product(
        format: Format,
        weights: &[u8],
        n: usize,
        acts: &Acts,
        m: usize,
        store: impl FnMut(usize, usize, f32),
    ) {
        match (format, acts) {
            (Format::Q4_1, Acts::Blocks { rows, tiles }) => {
                blocks::<Q41>(weights, n, rows, tiles, m, store)
            }
            (Format::Q5_0, Acts::Blocks { rows, tiles }) => {
                blocks::<Q50>(weights, n, rows, tiles, m, store)
            }
            (Format::Q8_0, Acts::Blocks { rows, tiles }) => {
                blocks::<Q80>(weights, n, rows, tiles, m, store)
            }
            (Format::Q4K, Acts::SuperBlocks(acts)) => {
                rows_of(&SuperBlocks::<Q4K>::new(weights, n, acts, m), n, m, store)
            }
            (Format::Q6K, Acts::SuperBlocks(acts)) => {
                rows_of(&SuperBlocks::<Q6K>::new(weights, n, acts, m), n, m, store)
            }
            _ => unreachable!("`Acts::quantize` rounds activations to the format's blocks"),
        }
    }

    /// [`rows_product`] for a format of single blocks, its byte products summed by VNNI's
    /// instruction where the CPU has it.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn blocks<B: Block>(
        weights: &[u8],
        n: usize,
        rows: &[ActBlock],
        tiles: &[ActTileBlock],
        m: usize,
        store: impl FnMut(usize, usize, f32),
    ) {
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            let blocks = TiledBlocks::<B, Vnni>::new(weights, n, rows, tiles, m);
            rows_of(&blocks, n, m, store)
        } else {
            let blocks = TiledBlocks::<B, Avx2>::new(weights, n, rows, tiles, m);
            rows_of(&blocks, n, m, store)
        }
    }

    /// Products of one weight row with activation rows, both by index: with one row, and with a
    /// full tile of `FULL` rows from `first` (at most [`TILE_ROWS`]; the rest of the array is
    /// unused).
    trait Tiles {
        const FULL: usize;
        unsafe fn one(&self, row: usize, act: usize) -> f32;
        unsafe fn full(&self, row: usize, first: usize) -> [f32; TILE_ROWS];
    }

    /// Weight rows of one format and activation rows of the blocks it is multiplied with.
    struct Rows<'a, B, Act> {
        weights: &'a [u8],
        row_bytes: usize,
        acts: &'a [Act],
        act_row_len: usize,
        format: std::marker::PhantomData<B>,
    }

    impl<'a, B, Act> Rows<'a, B, Act> {
        /// `n` weight rows and `m` activation rows.
        fn new(weights: &'a [u8], n: usize, acts: &'a [Act], m: usize) -> Self {
            Self {
                weights,
                row_bytes: weights.len() / n,
                acts,
                act_row_len: acts.len() / m,
                format: std::marker::PhantomData,
            }
        }

        fn row(&self, r: usize) -> &'a [u8] {
            &self.weights[r * self.row_bytes..(r + 1) * self.row_bytes]
        }

        fn act_row(&self, a: usize) -> &'a [Act] {
            &self.acts[a * self.act_row_len..(a + 1) * self.act_row_len]
        }
    }

    type SuperBlocks<'a, K> = Rows<'a, K, ActSuperBlock>;

    /// Weight rows of a format of single blocks, the activation rows and their tiles.
    struct TiledBlocks<'a, B, D> {
        rows: Rows<'a, (B, D), ActBlock>,
        tiles: &'a [ActTileBlock],
    }

    impl<'a, B, D> TiledBlocks<'a, B, D> {
        fn new(
            weights: &'a [u8],
            n: usize,
            rows: &'a [ActBlock],
            tiles: &'a [ActTileBlock],
            m: usize,
        ) -> Self {
            Self {
                rows: Rows::new(weights, n, rows, m),
                tiles,
            }
        }
    }

    impl<B: Block, D: GroupSums> Tiles for TiledBlocks<'_, B, D> {
        const FULL: usize = TILE_ROWS;

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn one(&self, row: usize, act: usize) -> f32 {
            row_product::<B, D>(self.rows.row(row), self.rows.act_row(act))
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn full(&self, row: usize, first: usize) -> [f32; TILE_ROWS] {
            let blocks = self.rows.act_row_len;
            let tile = &self.tiles[first / TILE_ROWS * blocks..][..blocks];
            interleaved_tile::<B, D>(self.rows.row(row), tile)
        }
    }

    impl<K: SuperBlock> Tiles for SuperBlocks<'_, K> {
        const FULL: usize = ACT_TILE;

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn one(&self, row: usize, act: usize) -> f32 {
            super_tile::<K, 1>(self.row(row), [self.act_row(act)])[0]
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn full(&self, row: usize, first: usize) -> [f32; TILE_ROWS] {
            let acts = std::array::from_fn(|i| self.act_row(first + i));
            let sums = super_tile::<K, ACT_TILE>(self.row(row), acts);
            std::array::from_fn(|i| sums.get(i).copied().unwrap_or(0.0))
        }
    }

    /// Computes `n` weight rows against `m` activation rows, `ACT_TILE` activation rows per
    /// weight row. A single activation row (decoding) reads the weights one row after another:
    /// computing 4 rows side by side, in 4 streams, read the 1.5B model's 28 gate/up matrices
    /// at 12 GB/s against 16 in one stream (`cargo bench --bench kernels`, decode-sweep), and
    /// decoded 11 tok/s against 15.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_of<T: Tiles>(
        tiles: &T,
        n: usize,
        m: usize,
        mut store: impl FnMut(usize, usize, f32),
    ) {
        // Activation rows outside, weight rows inside: the item's few weight rows stay in
        // cache while the activations, megabytes for a long prompt, are read once. The other
        // way round, the down projection of Qwen2.5-1.5B read 2.3 MB of them from L3 for every
        // weight row, and took twice candle's time.
        let mut a = 0;
        while a + T::FULL <= m {
            for r in 0..n {
                let sums = tiles.full(r, a);
                for (i, &sum) in sums[..T::FULL].iter().enumerate() {
                    store(a + i, r, sum);
                }
            }
            a += T::FULL;
        }
        for a in a..m {
            for r in 0..n {
                store(a, r, tiles.one(r, a));
            }
        }
    }

    /// How far ahead of the block being computed a weight row is fetched into cache, in bytes.
    /// Decoding reads every weight once per token from memory. Reading 4 rows side by side, the
    /// hardware prefetchers alone kept SmolLM2's 30 gate/up matrices at 6.7 GB/s, and fetching
    /// 512, 1,024, 2,048, 4,096 and 8,192 bytes ahead gave 8.4, 9.8, 12.9, 14.1 and 13.7 GB/s.
    /// Reading one row at a time, the 1.5B model's 28 gate/up matrices take 32 ms without it and
    /// 26.5 ms with it; 2,048 and 8,192 bytes ahead were within the noise (`cargo bench --bench
    /// kernels`, decode-sweep). The fetch goes to the outer caches (`_MM_HINT_T2`), not to the
    /// core's first level: 28.8 ms → 24.3–26.0 for the same 28 matrices on a Xeon with AMX,
    /// where (with another kernel) `_MM_HINT_T1` gave 25.0 against 23.7 and the non-temporal
    /// hint 37.2.
    pub(super) const PREFETCH_AHEAD: usize = 4096;

    /// A block type's bytes turned into its 32 values in one register.
    trait Block {
        const BYTES: usize = Self::FORMAT.block_bytes();
        const FORMAT: Format;
        /// Whether the values are signed bytes, not unsigned ones.
        const SIGNED: bool;
        unsafe fn unpack(block: *const u8) -> Unpacked;
    }

    struct Q41;
    struct Q50;
    struct Q80;

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn half_to_f32(bytes: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*bytes, *bytes.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Low nibbles as bytes 0–15, high nibbles as bytes 16–31.
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles(bytes: *const u8) -> __m256i {
        let packed = _mm_loadu_si128(bytes as *const __m128i);
        let low_mask = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(packed, low_mask);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_mask);
        _mm256_set_m128i(high, low)
    }

    impl Block for Q41 {
        const FORMAT: Format = Format::Q4_1;
        const SIGNED: bool = false;
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn unpack(block: *const u8) -> Unpacked {
            Unpacked {
                q: nibbles(block.add(4)),
                d: half_to_f32(block),
                m: half_to_f32(block.add(2)),
            }
        }
    }

    impl Block for Q50 {
        const FORMAT: Format = Format::Q5_0;
        const SIGNED: bool = false;
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn unpack(block: *const u8) -> Unpacked {
            let d = half_to_f32(block);
            let high =
                i32::from_le_bytes([*block.add(2), *block.add(3), *block.add(4), *block.add(5)]);
            // Byte j of the result gets bit j of `high`: each byte first takes the byte of
            // `high` holding its bit, then all bits but that one are set, and only where it was
            // set the byte is all ones.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(high),
                _mm256_set_epi64x(
                    0x0303030303030303,
                    0x0202020202020202,
                    0x0101010101010101,
                    0,
                ),
            );
            let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
            let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
            let fifth_bit = _mm256_and_si256(set, _mm256_set1_epi8(0x10));
            Unpacked {
                q: _mm256_or_si256(nibbles(block.add(6)), fifth_bit),
                d,
                m: -16.0 * d,
            }
        }
    }

    impl Block for Q80 {
        const FORMAT: Format = Format::Q8_0;
        const SIGNED: bool = true;
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn unpack(block: *const u8) -> Unpacked {
            Unpacked {
                q: _mm256_loadu_si256(block.add(2) as *const __m256i),
                d: half_to_f32(block),
                m: 0.0,
            }
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The product of a weight row with an activation row of the same width.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_product<B: Block, D: GroupSums>(row: &[u8], act_row: &[ActBlock]) -> f32 {
        debug_assert_eq!(row.len(), act_row.len() * B::BYTES);
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        for (b, act) in act_row.iter().enumerate() {
            let block = row.as_ptr().add(b * B::BYTES);
            _mm_prefetch::<_MM_HINT_T2>(block.wrapping_add(PREFETCH_AHEAD) as *const i8);
            let weights = B::unpack(block);
            let x = _mm256_loadu_si256(act.q.as_ptr() as *const __m256i);
            let sums = D::accumulate(_mm256_setzero_si256(), B::SIGNED, weights.q, x);
            let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(act.d));
            acc = _mm256_fmadd_ps(scaled, _mm256_set1_ps(weights.d), acc);
            if !B::SIGNED {
                offset = weights.m.mul_add(act.s, offset);
            }
        }
        horizontal_sum(acc) + offset
    }

    /// The products of a weight row with a tile of [`TILE_ROWS`] activation rows ([`ActTileBlock`]),
    /// one row per lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn interleaved_tile<B: Block, D: GroupSums>(
        row: &[u8],
        tile: &[ActTileBlock],
    ) -> [f32; TILE_ROWS] {
        debug_assert_eq!(row.len(), tile.len() * B::BYTES);
        let mut acc = _mm256_setzero_ps();
        let mut offsets = _mm256_setzero_ps();
        for (b, acts) in tile.iter().enumerate() {
            let block = row.as_ptr().add(b * B::BYTES);
            _mm_prefetch::<_MM_HINT_T2>(block.wrapping_add(PREFETCH_AHEAD) as *const i8);
            let weights = B::unpack(block);
            // Two chains of additions, not one of eight: each waits for the one before it.
            let mut dots = [_mm256_setzero_si256(); 2];
            for c in 0..BLOCK / 4 {
                let q = _mm256_permutevar8x32_epi32(weights.q, _mm256_set1_epi32(c as i32));
                let x = _mm256_load_si256(acts.q.as_ptr().add(c * TILE_ROWS) as *const __m256i);
                dots[c % 2] = D::accumulate(dots[c % 2], B::SIGNED, q, x);
            }
            let dots = _mm256_add_epi32(dots[0], dots[1]);
            let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(dots), _mm256_load_ps(acts.d.as_ptr()));
            acc = _mm256_fmadd_ps(scaled, _mm256_set1_ps(weights.d), acc);
            if !B::SIGNED {
                let sums = _mm256_load_ps(acts.s.as_ptr());
                offsets = _mm256_fmadd_ps(_mm256_set1_ps(weights.m), sums, offsets);
            }
        }
        let mut out = [0f32; TILE_ROWS];
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc, offsets));
        out
    }

    /// A k-quant block type: 8 groups of 32 unsigned values, read as a header once per block and
    /// one group at a time, `value = d * pair_scale * (q - offset) + dmin * min`, where each
    /// pair of values has an integer scale and each group an integer minimum.
    trait SuperBlock {
        const FORMAT: Format;
        const BYTES: usize = Self::FORMAT.block_bytes();
        /// Whether the groups have minimums.
        const HAS_MINS: bool;
        /// What the block says about all its groups.
        type Header: Copy;
        unsafe fn header(block: *const u8) -> Self::Header;
        /// `(d, dmin)`.
        fn scales(header: &Self::Header) -> (f32, f32);
        /// The scales of the pairs of values of group `group`, as 16-bit lanes.
        unsafe fn pair_scales(header: &Self::Header, group: usize) -> __m256i;
        /// Σ over the groups of each one's minimum times `sums` of that group.
        unsafe fn min_products(header: &Self::Header, sums: &[i16; 8]) -> i32;
        /// The offset's products, `Σ pair_scale * offset * x_q`, in 32-bit lanes, subtracted
        /// from the products of the unsigned values: AVX2's byte products take only unsigned
        /// weights, and correcting once per block is cheaper than moving signs in every group.
        unsafe fn offset_products(header: &Self::Header, act: &ActSuperBlock) -> __m256i;
        unsafe fn group(block: *const u8, group: usize) -> __m256i;
    }

    struct Q4K;
    struct Q6K;

    /// The low (`high == false`) or high nibbles of 32 bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles_of_32(bytes: *const u8, high: bool) -> __m256i {
        let packed = _mm256_loadu_si256(bytes as *const __m256i);
        let shifted = if high {
            _mm256_srli_epi16(packed, 4)
        } else {
            packed
        };
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
    }

    /// Q4_K's header: d, dmin, the groups' 6-bit scales as 16-bit lanes 0–7 of both halves, and
    /// their minimums as 16-bit lanes.
    #[derive(Clone, Copy)]
    struct Q4KHeader {
        d: f32,
        dmin: f32,
        scales: __m256i,
        mins: __m128i,
    }

    impl SuperBlock for Q4K {
        const FORMAT: Format = Format::Q4K;
        const HAS_MINS: bool = true;
        type Header = Q4KHeader;
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn header(block: *const u8) -> Self::Header {
            let packed = &*(block.add(4) as *const [u8; 12]);
            let (scales, mins) = super::q4k_scales_and_mins(packed);
            let widen = |bytes: u64| _mm_cvtepu8_epi16(_mm_set1_epi64x(bytes as i64));
            Q4KHeader {
                d: half_to_f32(block),
                dmin: half_to_f32(block.add(2)),
                scales: _mm256_broadcastsi128_si256(widen(scales)),
                mins: widen(mins),
            }
        }
        fn scales(header: &Self::Header) -> (f32, f32) {
            (header.d, header.dmin)
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn pair_scales(header: &Self::Header, group: usize) -> __m256i {
            _mm256_shuffle_epi8(header.scales, _mm256_set1_epi16(lane_of_i16(group)))
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn min_products(header: &Self::Header, sums: &[i16; 8]) -> i32 {
            let products = _mm_madd_epi16(
                header.mins,
                _mm_loadu_si128(sums.as_ptr() as *const __m128i),
            );
            let pairs = _mm_add_epi32(products, _mm_unpackhi_epi64(products, products));
            -(_mm_cvtsi128_si32(pairs) + _mm_extract_epi32::<1>(pairs))
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn offset_products(_header: &Self::Header, _act: &ActSuperBlock) -> __m256i {
            _mm256_setzero_si256()
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn group(block: *const u8, group: usize) -> __m256i {
            nibbles_of_32(block.add(16 + 32 * (group / 2)), group % 2 == 1)
        }
    }

    /// Q6_K's header: d, and the 16 scales as 16-bit lanes, all of them and each half broadcast
    /// to both 128-bit halves (AVX2's byte shuffle stays within a half).
    #[derive(Clone, Copy)]
    struct Q6KHeader {
        d: f32,
        scales: __m256i,
        first_half: __m256i,
        second_half: __m256i,
    }

    impl SuperBlock for Q6K {
        const FORMAT: Format = Format::Q6K;
        const HAS_MINS: bool = false;
        type Header = Q6KHeader;
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn header(block: *const u8) -> Self::Header {
            let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(192) as *const __m128i));
            Q6KHeader {
                d: half_to_f32(block.add(208)),
                scales,
                first_half: _mm256_permute2x128_si256::<0x00>(scales, scales),
                second_half: _mm256_permute2x128_si256::<0x11>(scales, scales),
            }
        }
        fn scales(header: &Self::Header) -> (f32, f32) {
            (header.d, 0.0)
        }
        /// One signed 8-bit scale for each half of a group: scale `2 * group` for the group's
        /// first 16 values (the low 128 bits), the next for the rest.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn pair_scales(header: &Self::Header, group: usize) -> __m256i {
            let source = if group < 4 {
                header.first_half
            } else {
                header.second_half
            };
            let first = 2 * (group % 4);
            _mm256_shuffle_epi8(
                source,
                _mm256_set_m128i(
                    _mm_set1_epi16(lane_of_i16(first + 1)),
                    _mm_set1_epi16(lane_of_i16(first)),
                ),
            )
        }
        unsafe fn min_products(_header: &Self::Header, _sums: &[i16; 8]) -> i32 {
            0
        }
        /// `32 * Σ scale * Σ x_q` over the 16 half groups.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn offset_products(header: &Self::Header, act: &ActSuperBlock) -> __m256i {
            let sums = _mm256_loadu_si256(act.half_sums.as_ptr() as *const __m256i);
            _mm256_slli_epi32::<5>(_mm256_madd_epi16(header.scales, sums))
        }
        /// Values `q` (0–63): the low 4 bits from a nibble of the first 128 bytes, the high 2
        /// from the next 64.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn group(block: *const u8, group: usize) -> __m256i {
            let (half, part) = (group / 4, group % 4);
            let low = nibbles_of_32(block.add(64 * half + 32 * (part % 2)), part >= 2);
            let high_bits = _mm256_srl_epi16(
                _mm256_loadu_si256(block.add(128 + 32 * half) as *const __m256i),
                _mm_cvtsi32_si128(2 * part as i32),
            );
            let high = _mm256_slli_epi16(_mm256_and_si256(high_bits, _mm256_set1_epi8(3)), 4);
            _mm256_or_si256(low, high)
        }
    }

    /// The control bytes of a byte shuffle that copies 16-bit lane `lane` (of the 8 in each
    /// 128-bit half) to every lane of that half.
    fn lane_of_i16(lane: usize) -> i16 {
        let byte = (2 * lane) as i16;
        ((byte + 1) << 8) | byte
    }

    /// The byte products of one group of weights `q` with activations `x`, summed in fours
    /// (32-bit lanes) and added to `acc`. Both instructions take unsigned values on their left.
    trait GroupSums {
        unsafe fn add_unsigned(acc: __m256i, q: __m256i, x: __m256i) -> __m256i;

        /// Signed weights give the product their magnitudes and move their signs to the
        /// activations.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn accumulate(acc: __m256i, signed: bool, q: __m256i, x: __m256i) -> __m256i {
            if signed {
                Self::add_unsigned(acc, _mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q))
            } else {
                Self::add_unsigned(acc, q, x)
            }
        }
    }

    /// AVX2's byte products summed in pairs as 16 bits, then in pairs of pairs.
    struct Avx2;
    /// AVX-512 VNNI's one instruction for the same sums: no pair of products reaches 16 bits'
    /// limit (|q| ≤ 128, |x| ≤ 127), so both give the same values.
    struct Vnni;

    impl GroupSums for Avx2 {
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn add_unsigned(acc: __m256i, q: __m256i, x: __m256i) -> __m256i {
            let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
            _mm256_add_epi32(acc, sums)
        }
    }

    impl GroupSums for Vnni {
        #[inline]
        #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
        unsafe fn add_unsigned(acc: __m256i, q: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, q, x)
        }
    }

    /// [`tile`] for k-quants: within a block, the products of its 8 groups add up as integers,
    /// and the block adds `d * d_x` times their sum and `dmin * d_x` times the minimums'
    /// products with the groups' sums.
    // Index `a` runs over several arrays at once.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn super_tile<K: SuperBlock, const A: usize>(
        row: &[u8],
        acts: [&[ActSuperBlock]; A],
    ) -> [f32; A] {
        let mut acc = [_mm256_setzero_ps(); A];
        let mut offsets = [0f32; A];
        for b in 0..acts[0].len() {
            let block = row.as_ptr().add(b * K::BYTES);
            for line in (0..K::BYTES).step_by(64) {
                let ahead = block.wrapping_add(PREFETCH_AHEAD + line);
                _mm_prefetch::<_MM_HINT_T2>(ahead as *const i8);
            }
            let header = K::header(block);
            let mut products = [_mm256_setzero_si256(); A];
            for j in 0..8 {
                let q = K::group(block, j);
                let pair_scales = K::pair_scales(&header, j);
                for a in 0..A {
                    let x = acts[a][b].q.as_ptr().add(j * BLOCK) as *const __m256i;
                    let pairs = _mm256_maddubs_epi16(q, _mm256_loadu_si256(x));
                    let scaled = _mm256_madd_epi16(pairs, pair_scales);
                    products[a] = _mm256_add_epi32(products[a], scaled);
                }
            }
            let (d, dmin) = K::scales(&header);
            for a in 0..A {
                let act = &acts[a][b];
                let offsets_of_q = K::offset_products(&header, act);
                let sums = _mm256_cvtepi32_ps(_mm256_sub_epi32(products[a], offsets_of_q));
                acc[a] = _mm256_fmadd_ps(_mm256_set1_ps(d * act.d), sums, acc[a]);
                if K::HAS_MINS {
                    let mins = K::min_products(&header, &act.sums);
                    offsets[a] += dmin * act.d * mins as f32;
                }
            }
        }
        std::array::from_fn(|a| horizontal_sum(acc[a]) + offsets[a])
    }

    #[cfg(test)]
    mod tests {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};

        use super::*;

        fn has_vnni() -> bool {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
        }

        /// A tile of activation rows against one weight row, with each instruction set's sums.
        fn both_tiles<B: Block>(dtype: GgmlDType) -> [[f32; TILE_ROWS]; 2] {
            let cols = 896;
            let w = Tensor::randn(0f32, 0.05, (1, cols), &Device::Cpu).unwrap();
            let weight = QTensor::quantize(&w, dtype).unwrap();
            let row = weight.data().unwrap();
            let x = Tensor::randn(0f32, 1.0, (TILE_ROWS * cols,), &Device::Cpu).unwrap();
            let Acts::Blocks { tiles, .. } = Acts::quantize(&x.to_vec1().unwrap(), cols, B::FORMAT)
            else {
                unreachable!("single-block formats")
            };
            // SAFETY: the caller checked the CPU's features; `row` is one row for the tile.
            unsafe {
                [
                    interleaved_tile::<B, Avx2>(&row, &tiles),
                    interleaved_tile::<B, Vnni>(&row, &tiles),
                ]
            }
        }

        #[test]
        fn tiles_of_rows_give_the_same_products_with_vnni_as_with_avx2() {
            if !has_vnni() {
                eprintln!("skipped: this CPU has no AVX-512 VNNI");
                return;
            }
            for [avx2, vnni] in [
                both_tiles::<Q41>(GgmlDType::Q4_1),
                both_tiles::<Q50>(GgmlDType::Q5_0),
                both_tiles::<Q80>(GgmlDType::Q8_0),
            ] {
                assert_eq!(avx2, vnni);
                assert!(avx2.iter().all(|v| v.is_finite() && *v != 0.0), "{avx2:?}");
            }
        }

        #[test]
        fn vnni_sums_the_byte_products_as_avx2_does() {
            if !has_vnni() {
                eprintln!("skipped: this CPU has no AVX-512 VNNI");
                return;
            }
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut byte = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            };
            for _ in 0..1000 {
                let x: [i8; 32] = std::array::from_fn(|_| (byte() as i8).max(-127));
                let unsigned: [u8; 32] = std::array::from_fn(|_| byte() % 32);
                let signed: [u8; 32] = std::array::from_fn(|i| if i == 0 { 0x80 } else { byte() });
                for (is_signed, q) in [(false, unsigned), (true, signed)] {
                    // SAFETY: the CPU has the features checked above; the arrays are 32 bytes.
                    let [via_avx2, via_vnni] = unsafe {
                        let q = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
                        let x = _mm256_loadu_si256(x.as_ptr() as *const __m256i);
                        [
                            Avx2::accumulate(_mm256_set1_epi32(5), is_signed, q, x),
                            Vnni::accumulate(_mm256_set1_epi32(5), is_signed, q, x),
                        ]
                        .map(|v| std::mem::transmute::<__m256i, [i32; 8]>(v))
                    };
                    assert_eq!(via_avx2, via_vnni, "signed {is_signed}, q {q:?}, x {x:?}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    #[test]
    fn activations_round_halves_away_from_zero_as_f32_round_does() {
        // 127 / 127.0 scales by one, so the halves below are met exactly.
        let mut values: Vec<f32> = (-254..=254).map(|k| k as f32 / 2.0).collect();
        values.extend((0..2000).map(|i| ((i * 7919) % 2000) as f32 / 15.7 - 63.7));
        for block in values.chunks(BLOCK) {
            let mut q = [0i8; BLOCK];
            let d = round_to_bytes(block, &mut q);
            let inv = 1.0 / d;
            for (v, q) in block.iter().zip(q) {
                assert_eq!(q, (v * inv).round() as i8, "{v} at scale {d}");
            }
        }
    }

    /// One weight group read in plain Rust: its 32 values q, and `value = d * q + m`.
    struct ScalarGroup {
        q: [i32; BLOCK],
        d: f32,
        m: f32,
    }

    /// Q4_K's scale and minimum of one group, read as ggml's reference code reads them.
    fn q4k_scale_and_min(scales: &[u8], group: usize) -> (u8, u8) {
        if group < 4 {
            (scales[group] & 63, scales[group + 4] & 63)
        } else {
            (
                (scales[group + 4] & 0x0F) | ((scales[group - 4] >> 6) << 4),
                (scales[group + 4] >> 4) | ((scales[group] >> 6) << 4),
            )
        }
    }

    #[test]
    fn q4k_scales_and_minimums_unpack_all_at_once_as_one_at_a_time() {
        for seed in 0..64u8 {
            let packed: [u8; 12] = std::array::from_fn(|i| seed.wrapping_mul(37) ^ (i as u8 * 91));
            let (scales, mins) = q4k_scales_and_mins(&packed);
            for group in 0..8 {
                let (scale, min) = q4k_scale_and_min(&packed, group);
                assert_eq!((scales >> (8 * group)) as u8, scale, "scale {group}");
                assert_eq!((mins >> (8 * group)) as u8, min, "minimum {group}");
            }
        }
    }

    fn half(bytes: &[u8]) -> f32 {
        f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
    }

    /// The plain-Rust reading of a group of a block, which the SIMD kernels must match. Q6_K's
    /// per-half scales are folded into q, as the kernels apply them to the integer products.
    fn unpack_scalar(format: Format, block: &[u8], group: usize) -> ScalarGroup {
        let d = half(block);
        let mut q = [0i32; BLOCK];
        match format {
            Format::Q4_1 => {
                for (j, byte) in block[4..20].iter().enumerate() {
                    q[j] = (byte & 0x0F) as i32;
                    q[j + 16] = (byte >> 4) as i32;
                }
                let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
                ScalarGroup { q, d, m }
            }
            Format::Q5_0 => {
                let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                for (j, byte) in block[6..22].iter().enumerate() {
                    q[j] = ((byte & 0x0F) | ((((high >> j) & 1) as u8) << 4)) as i32;
                    q[j + 16] = ((byte >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4)) as i32;
                }
                ScalarGroup { q, d, m: -16.0 * d }
            }
            Format::Q8_0 => {
                for (q, &byte) in q.iter_mut().zip(&block[2..34]) {
                    *q = byte as i8 as i32;
                }
                ScalarGroup { q, d, m: 0.0 }
            }
            Format::Q4K => {
                let (scale, min) = q4k_scale_and_min(&block[4..16], group);
                let start = 16 + 32 * (group / 2);
                for (q, &byte) in q.iter_mut().zip(&block[start..start + 32]) {
                    *q = if group.is_multiple_of(2) {
                        byte & 0x0F
                    } else {
                        byte >> 4
                    } as i32;
                }
                ScalarGroup {
                    q,
                    d: d * scale as f32,
                    m: -half(&block[2..]) * min as f32,
                }
            }
            Format::Q6K => {
                let (half_index, part) = (group / 4, group % 4);
                let low = 64 * half_index + 32 * (part % 2);
                for (j, q) in q.iter_mut().enumerate() {
                    let byte = block[low + j];
                    let nibble = if part < 2 { byte & 0x0F } else { byte >> 4 };
                    let top = (block[128 + 32 * half_index + j] >> (2 * part)) & 3;
                    let scale = block[192 + 2 * group + j / 16] as i8 as i32;
                    *q = scale * ((nibble | (top << 4)) as i32 - 32);
                }
                ScalarGroup {
                    q,
                    d: half(&block[208..]),
                    m: 0.0,
                }
            }
        }
    }

    /// Every group of a row, in order.
    fn groups_scalar(format: Format, row: &[u8]) -> Vec<ScalarGroup> {
        row.chunks_exact(format.block_bytes())
            .flat_map(|block| (0..format.groups()).map(move |g| unpack_scalar(format, block, g)))
            .collect()
    }

    /// Every group of 32 of all rows of `acts`, in order: its scale, values and their sum.
    fn act_groups(acts: &Acts) -> Vec<(f32, &[i8], i32)> {
        match acts {
            Acts::Blocks { rows, .. } => {
                rows.iter().map(|b| (b.d, &b.q[..], sum_of(&b.q))).collect()
            }
            Acts::SuperBlocks(blocks) => blocks
                .iter()
                .flat_map(|b| {
                    (0..8).map(|j| (b.d, &b.q[j * BLOCK..(j + 1) * BLOCK], b.sums[j] as i32))
                })
                .collect(),
        }
    }

    /// The product of one weight row with activation row `a` of `acts`, in plain Rust.
    fn row_dot_scalar(format: Format, row: &[u8], acts: &Acts, a: usize) -> f32 {
        let groups = groups_scalar(format, row);
        let act_groups = act_groups(acts);
        let act_row = &act_groups[a * groups.len()..(a + 1) * groups.len()];
        groups
            .iter()
            .zip(act_row)
            .map(|(w, &(d_x, x, sum))| {
                let dot: i32 = w.q.iter().zip(x).map(|(&q, &x)| q * x as i32).sum();
                w.d * d_x * dot as f32 + w.m * d_x * sum as f32
            })
            .sum()
    }

    const FORMATS: [GgmlDType; 5] = [
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ];

    /// Matrix widths of the real models for a type: SmolLM2's and Qwen2.5-0.5B's for the
    /// 32-value blocks, Qwen2.5-1.5B's and Qwen2.5-0.5B's down projection for the 256-value ones.
    fn widths(dtype: GgmlDType) -> [usize; 2] {
        match Format::of(dtype).map(Format::groups) {
            Some(1) => [576, 896],
            _ => [1536, 4864],
        }
    }

    fn random_matrix(dtype: GgmlDType, rows: usize, cols: usize) -> Arc<QTensor> {
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu).unwrap();
        Arc::new(QTensor::quantize(&w, dtype).unwrap())
    }

    #[test]
    fn the_scalar_reading_of_a_block_matches_candles_dequantization() {
        for dtype in FORMATS {
            let format = Format::of(dtype).unwrap();
            let cols = 2 * BLOCK * format.groups();
            let weight = random_matrix(dtype, 3, cols);
            let expected = weight
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let data = weight.data().unwrap();
            for (r, row) in data.chunks_exact(format.row_bytes(cols)).enumerate() {
                for (g, w) in groups_scalar(format, row).iter().enumerate() {
                    for j in 0..BLOCK {
                        let value = w.d * w.q[j] as f32 + w.m;
                        let want = expected[r][g * BLOCK + j];
                        assert!(
                            (value - want).abs() < 1e-6,
                            "{dtype:?} row {r} group {g} value {j}: {value} against {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_kernels_compute_what_the_plain_reading_computes_for_every_row_count() {
        if !runs_here() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for dtype in FORMATS {
            // 7 rows leave remainders in every tile.
            let [narrow, wide] = widths(dtype);
            for (rows, cols) in [(7, narrow), (37, wide)] {
                let weight = random_matrix(dtype, rows, cols);
                let matrix =
                    QuantMatrix::on_any_avx2_cpu(vec![
                        QuantBytes::of_tensor(weight.clone()).unwrap()
                    ])
                    .unwrap()
                    .unwrap();
                let data = weight.data().unwrap();
                for m in [1, 2, 5, 9] {
                    let x = Tensor::randn(0f32, 1.0, (m, cols), &Device::Cpu).unwrap();
                    let got = matrix.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                    let acts = Acts::quantize(
                        &x.flatten_all().unwrap().to_vec1().unwrap(),
                        cols,
                        matrix.format,
                    );
                    let row_bytes = matrix.format.row_bytes(cols);
                    for (a, got_row) in got.iter().enumerate() {
                        for (r, row) in data.chunks_exact(row_bytes).enumerate() {
                            let want = row_dot_scalar(matrix.format, row, &acts, a);
                            let diff = (got_row[r] - want).abs();
                            assert!(
                                diff <= 1e-4 * want.abs().max(1.0),
                                "{dtype:?} {rows}x{cols}, m {m}: [{a}][{r}] {} against {want}",
                                got_row[r]
                            );
                        }
                    }
                }
            }
        }
    }

    /// What [`QuantMatrix::computes_rows_apart`] promises: each row of a product of several rows
    /// is, to the bit, the product of that row alone.
    #[test]
    fn without_tiles_a_row_computes_the_same_bits_whatever_rows_come_with_it() {
        if !runs_here() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for dtype in FORMATS {
            let [cols, _] = widths(dtype);
            let weight = random_matrix(dtype, 37, cols);
            let matrix = QuantMatrix::on_any_avx2_cpu(vec![QuantBytes::of_tensor(weight).unwrap()])
                .unwrap()
                .unwrap();
            assert_eq!(
                matrix.computes_rows_apart(),
                matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K)
            );
            if !matrix.computes_rows_apart() {
                continue;
            }
            for m in [2, 5, 8, 9, 13] {
                let x = Tensor::randn(0f32, 1.0, (m, cols), &Device::Cpu).unwrap();
                let together = matrix.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                for (row, got) in together.iter().enumerate() {
                    let alone = matrix.forward(&x.narrow(0, row, 1).unwrap()).unwrap();
                    assert_eq!(
                        &alone.to_vec2::<f32>().unwrap()[0],
                        got,
                        "{dtype:?}, row {row} of {m}"
                    );
                }
            }
        }
    }

    /// Stacked Q4_K and Q6_K parts in tiles, for every count of prompt rows a pass over a column
    /// of tiles takes (1 to 6, the 1 as what 13 rows leave) and more, against the plain reading
    /// of the same blocks.
    #[test]
    fn tiles_compute_what_the_plain_reading_computes() {
        if !PromptTiles::run_here() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let cols = 1536;
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let weights = [
                random_matrix(dtype, 32, cols),
                random_matrix(dtype, 16, cols),
            ];
            let parts = weights
                .iter()
                .map(|w| QuantBytes::of_tensor(w.clone()).unwrap())
                .collect();
            let matrix = QuantMatrix::stacked(parts)
                .unwrap()
                .unwrap()
                .with_prompt_tiles()
                .unwrap();
            assert!(matrix.tiles.is_some(), "{dtype:?} has no tiles");
            let format = matrix.format;
            let data: Vec<u8> = weights
                .iter()
                .flat_map(|w| w.data().unwrap().to_vec())
                .collect();
            let row_bytes = format.row_bytes(cols);
            for m in [2, 3, 4, 5, 6, 7, 13] {
                let x = Tensor::randn(0f32, 1.0, (m, cols), &Device::Cpu).unwrap();
                let got = matrix.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                let values = x.flatten_all().unwrap().to_vec1().unwrap();
                let acts = Acts::quantize(&values, cols, format);
                for (a, got_row) in got.iter().enumerate() {
                    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
                        let want = row_dot_scalar(format, row, &acts, a);
                        let diff = (got_row[r] - want).abs();
                        assert!(
                            diff <= 1e-4 * want.abs().max(1.0),
                            "{dtype:?}, m {m}: [{a}][{r}] {} against {want}",
                            got_row[r]
                        );
                    }
                }
            }
        }
    }

    /// Both kernels round the activations to 8 bits (per 256 values for the k-quants, per 32 for
    /// the others), each in its own way: each is held to the product of the same
    /// weights in f32 (root-mean-square error relative to the product's), and these kernels to
    /// be no further from it than candle's.
    #[test]
    fn the_kernels_are_as_close_to_the_float_product_as_candles_matmul() {
        if !runs_here() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for dtype in FORMATS {
            let cols = widths(dtype)[0];
            let weight = random_matrix(dtype, 64, cols);
            let matrix =
                QuantMatrix::on_any_avx2_cpu(vec![QuantBytes::of_tensor(weight.clone()).unwrap()])
                    .unwrap()
                    .unwrap();
            let x = Tensor::randn(0f32, 1.0, (3, cols), &Device::Cpu).unwrap();
            let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let exact = values(
                x.matmul(&weight.dequantize(&Device::Cpu).unwrap().t().unwrap())
                    .unwrap(),
            );
            let candle = candle_core::quantized::QMatMul::from_arc(weight).unwrap();
            let candles = values(candle_core::Module::forward(&candle, &x).unwrap());
            let own = values(matrix.forward(&x).unwrap());
            let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|v| v * v).sum::<f32>().sqrt();
            let error = |got: &[f32]| {
                norm(&mut got.iter().zip(&exact).map(|(g, e)| g - e))
                    / norm(&mut exact.iter().copied())
            };
            let (own_error, candle_error) = (error(&own), error(&candles));
            eprintln!("{dtype:?}: own {own_error:.2e}, candle {candle_error:.2e}");
            assert!(own_error <= 1e-2, "{dtype:?}: relative error {own_error}");
            assert!(
                own_error <= 1.1 * candle_error + 1e-4,
                "{dtype:?}: {own_error} against candle's {candle_error}"
            );
        }
    }
}
