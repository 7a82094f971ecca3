//! Matrix products for GGUF block types on CPUs with AVX2 but without the int8 dot-product
//! instructions (AVX-512 VNNI, AVX-VNNI) that candle's fast kernels need: most laptops before
//! 2021, AMD Zen 2 and 3. There candle runs Q4_1 and Q5_0 (SmolLM2's file, most of
//! Qwen2.5-Coder-0.5B's) with scalar code, and Q8_0 one weight row at a time, with no reuse of a
//! weight block across the rows of a prompt and nothing that keeps memory reads ahead of the
//! arithmetic when decoding.
//!
//! Q4_1 and Q5_0 blocks are `value = d * q + m` with an unsigned q (Q4_1: 4 bits and its own
//! `m`; Q5_0: 5 bits and `m = -16 d`); Q8_0 is `d * q` with a signed q. The activations are
//! quantized to 8 bits per block of 32 with their sum kept, and a block's product is
//! `d * d_x * Σ q·x_q + m * d_x * Σ x_q`, the first term from AVX2's unsigned-by-signed byte
//! products.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};

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
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
        }
    }
}

/// A block of 32 activations as bytes: `x ≈ d * q`, and `s = d * Σ q`.
#[derive(Clone, Copy)]
struct ActBlock {
    d: f32,
    s: f32,
    q: [i8; BLOCK],
}

/// Whether tqa uses these kernels on this CPU: it runs them (see [`runs_here`]) and has no int8
/// dot-product instructions, with which candle's kernels on Q8_0 copies are the faster path.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || is_x86_feature_detected!("avxvnni");
        runs_here() && !vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU can run these kernels at all: without AVX2 there is no byte product to build
/// on.
fn runs_here() -> bool {
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

/// Whether [`QuantMatrix`] takes tensors of this type.
pub fn handles(dtype: GgmlDType) -> bool {
    Format::of(dtype).is_some()
}

/// A weight matrix of `rows` × `cols`, row-major, its blocks read where candle holds them.
pub struct QuantMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    weight: Arc<QTensor>,
}

impl QuantMatrix {
    /// `weight` for these kernels, or `None` when they do not take it (another block type, not a
    /// matrix, or a CPU where tqa does not use them).
    pub fn new(weight: Arc<QTensor>) -> Result<Option<Self>> {
        if !available() {
            return Ok(None);
        }
        Self::on_any_avx2_cpu(weight)
    }

    /// [`QuantMatrix::new`] wherever the kernels run, whether or not tqa prefers them there.
    fn on_any_avx2_cpu(weight: Arc<QTensor>) -> Result<Option<Self>> {
        let Some(format) = Format::of(weight.dtype()) else {
            return Ok(None);
        };
        let Ok((rows, cols)) = weight.shape().dims2() else {
            return Ok(None);
        };
        if !runs_here() || !weight.device().is_cpu() || !cols.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let bytes = weight.data()?.len();
        if bytes != rows * cols / BLOCK * format.block_bytes() {
            candle_core::bail!(
                "a {format:?} matrix of {rows}x{cols} holds {bytes} bytes: the model file is \
                 damaged; delete it and fetch it again (`models/fetch NAME`)"
            );
        }
        Ok(Some(Self {
            format,
            rows,
            cols,
            weight,
        }))
    }

    pub fn weight(&self) -> &Arc<QTensor> {
        &self.weight
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
            quantize_rows(&cpu.as_slice::<f32>()?[start..start + m * self.cols])
        };
        let mut out = vec![0f32; m * self.rows];
        self.product(&acts, m, &mut out)?;
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    /// Writes the products of the `m` quantized rows `acts` with every weight row into `out`
    /// (`m` × `rows`), the weight rows split between candle's CPU threads.
    fn product(&self, acts: &[ActBlock], m: usize, out: &mut [f32]) -> Result<()> {
        let data = self.weight.data()?;
        let row_bytes = self.cols / BLOCK * self.format.block_bytes();
        let out_ptr = SendPtr(out.as_mut_ptr());
        let items = self.rows.div_ceil(ROWS_PER_ITEM);
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            let out_ptr = &out_ptr;
            for item in range {
                let first = item * ROWS_PER_ITEM;
                let last = (first + ROWS_PER_ITEM).min(self.rows);
                let weights = &data[first * row_bytes..last * row_bytes];
                // SAFETY: work items cover disjoint weight rows, so each output element is written
                // by exactly one of them; `out` outlives the pool's call.
                unsafe {
                    rows_product(
                        self.format,
                        weights,
                        last - first,
                        acts,
                        m,
                        |a, r, value| *out_ptr.0.add(a * self.rows + first + r) = value,
                    )
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

/// Quantizes rows of activations, whose width is a multiple of 32, to blocks of 32 bytes, as
/// ggml's Q8_1 does.
fn quantize_rows(x: &[f32]) -> Vec<ActBlock> {
    x.chunks_exact(BLOCK)
        .map(|values| {
            let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            let mut q = [0i8; BLOCK];
            for (q, v) in q.iter_mut().zip(values) {
                *q = (v * inv).round() as i8;
            }
            let sum: i32 = q.iter().map(|&q| q as i32).sum();
            ActBlock {
                d,
                s: d * sum as f32,
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
    acts: &[ActBlock],
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
        unreachable!("QuantMatrix is built only where `available()` holds")
    }
}

/// One weight block unpacked: its 32 values q, and `value = d * q + m`.
#[derive(Clone, Copy)]
struct Unpacked<Q> {
    q: Q,
    d: f32,
    m: f32,
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{ActBlock, Format, Unpacked};

    /// Activation rows computed together, each weight block unpacked once for all of them.
    const ACT_TILE: usize = 4;
    /// Weight rows computed together for a single activation row (decoding), for independent
    /// accumulators.
    const ROW_TILE: usize = 4;

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `weights` holds `n` rows of blocks for `acts`' width.
    pub(super) unsafe fn rows_product(
        format: Format,
        weights: &[u8],
        n: usize,
        acts: &[ActBlock],
        m: usize,
        store: impl FnMut(usize, usize, f32),
    ) {
        match format {
            Format::Q4_1 => rows_of::<Q41>(weights, n, acts, m, store),
            Format::Q5_0 => rows_of::<Q50>(weights, n, acts, m, store),
            Format::Q8_0 => rows_of::<Q80>(weights, n, acts, m, store),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_of<B: Block>(
        weights: &[u8],
        n: usize,
        acts: &[ActBlock],
        m: usize,
        mut store: impl FnMut(usize, usize, f32),
    ) {
        let blocks = acts.len() / m;
        let row_bytes = blocks * B::BYTES;
        let row = |r: usize| &weights[r * row_bytes..(r + 1) * row_bytes];
        let act_row = |a: usize| &acts[a * blocks..(a + 1) * blocks];
        if m == 1 {
            let mut r = 0;
            while r + ROW_TILE <= n {
                let rows = [row(r), row(r + 1), row(r + 2), row(r + 3)];
                let sums = tile::<B, ROW_TILE, 1>(rows, [act_row(0)]);
                for (i, sum) in sums.iter().enumerate() {
                    store(0, r + i, sum[0]);
                }
                r += ROW_TILE;
            }
            for r in r..n {
                store(0, r, tile::<B, 1, 1>([row(r)], [act_row(0)])[0][0]);
            }
            return;
        }
        for r in 0..n {
            let mut a = 0;
            while a + ACT_TILE <= m {
                let tile_acts = [act_row(a), act_row(a + 1), act_row(a + 2), act_row(a + 3)];
                let sums = tile::<B, 1, ACT_TILE>([row(r)], tile_acts);
                for (i, &sum) in sums[0].iter().enumerate() {
                    store(a + i, r, sum);
                }
                a += ACT_TILE;
            }
            for a in a..m {
                store(a, r, tile::<B, 1, 1>([row(r)], [act_row(a)])[0][0]);
            }
        }
    }

    /// How far ahead of the block being computed a weight row is fetched into cache, in bytes.
    /// Decoding reads every weight once per token from memory; the hardware prefetchers alone
    /// kept SmolLM2's 30 gate/up matrices at 6.7 GB/s, and fetching 512, 1,024, 2,048, 4,096 and
    /// 8,192 bytes ahead gave 8.4, 9.8, 12.9, 14.1 and 13.7 GB/s (`cargo bench --bench kernels`,
    /// decode-sweep).
    const PREFETCH_AHEAD: usize = 4096;

    /// A block type's bytes turned into its 32 values in one register.
    trait Block {
        const BYTES: usize = Self::FORMAT.block_bytes();
        const FORMAT: Format;
        /// Whether the values are signed bytes, not unsigned ones.
        const SIGNED: bool;
        unsafe fn unpack(block: *const u8) -> Unpacked<__m256i>;
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
        unsafe fn unpack(block: *const u8) -> Unpacked<__m256i> {
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
        unsafe fn unpack(block: *const u8) -> Unpacked<__m256i> {
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
        unsafe fn unpack(block: *const u8) -> Unpacked<__m256i> {
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

    /// The `W` × `A` products of `W` weight rows with `A` activation rows of the same width.
    // Block `b` indexes the weight rows and the activation rows alike.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<B: Block, const W: usize, const A: usize>(
        rows: [&[u8]; W],
        acts: [&[ActBlock]; A],
    ) -> [[f32; A]; W] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); A]; W];
        let mut offsets = [[0f32; A]; W];
        for b in 0..acts[0].len() {
            let mut weights = [Unpacked {
                q: _mm256_setzero_si256(),
                d: 0.0,
                m: 0.0,
            }; W];
            for w in 0..W {
                let block = rows[w].as_ptr().add(b * B::BYTES);
                _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD) as *const i8);
                weights[w] = B::unpack(block);
            }
            for a in 0..A {
                let act = &acts[a][b];
                let x = _mm256_loadu_si256(act.q.as_ptr() as *const __m256i);
                for w in 0..W {
                    // The byte product takes unsigned values on its left: signed weights give it
                    // their magnitudes and move their signs to the activations.
                    let pairs = if B::SIGNED {
                        let q = weights[w].q;
                        _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q))
                    } else {
                        _mm256_maddubs_epi16(weights[w].q, x)
                    };
                    let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    let scale = _mm256_set1_ps(weights[w].d * act.d);
                    acc[w][a] = _mm256_fmadd_ps(scale, sums, acc[w][a]);
                    if !B::SIGNED {
                        offsets[w][a] += weights[w].m * act.s;
                    }
                }
            }
        }
        let mut out = [[0f32; A]; W];
        for w in 0..W {
            for a in 0..A {
                out[w][a] = horizontal_sum(acc[w][a]) + offsets[w][a];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// The plain-Rust reading of a block, which the SIMD kernels must match.
    fn unpack_scalar(format: Format, block: &[u8]) -> Unpacked<[i32; BLOCK]> {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let mut q = [0i32; BLOCK];
        match format {
            Format::Q4_1 => {
                for (j, byte) in block[4..20].iter().enumerate() {
                    q[j] = (byte & 0x0F) as i32;
                    q[j + 16] = (byte >> 4) as i32;
                }
                let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
                Unpacked { q, d, m }
            }
            Format::Q5_0 => {
                let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                for (j, byte) in block[6..22].iter().enumerate() {
                    q[j] = ((byte & 0x0F) | ((((high >> j) & 1) as u8) << 4)) as i32;
                    q[j + 16] = ((byte >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4)) as i32;
                }
                Unpacked { q, d, m: -16.0 * d }
            }
            Format::Q8_0 => {
                for (q, &byte) in q.iter_mut().zip(&block[2..34]) {
                    *q = byte as i8 as i32;
                }
                Unpacked { q, d, m: 0.0 }
            }
        }
    }

    /// The product of one weight row with one activation row, in plain Rust.
    fn row_dot_scalar(format: Format, row: &[u8], acts: &[ActBlock]) -> f32 {
        row.chunks_exact(format.block_bytes())
            .zip(acts)
            .map(|(block, act)| {
                let w = unpack_scalar(format, block);
                let dot: i32 = w.q.iter().zip(&act.q).map(|(&q, &x)| q * x as i32).sum();
                w.d * act.d * dot as f32 + w.m * act.s
            })
            .sum()
    }

    const FORMATS: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0];

    fn random_matrix(dtype: GgmlDType, rows: usize, cols: usize) -> Arc<QTensor> {
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu).unwrap();
        Arc::new(QTensor::quantize(&w, dtype).unwrap())
    }

    #[test]
    fn the_scalar_reading_of_a_block_matches_candles_dequantization() {
        for dtype in FORMATS {
            let weight = random_matrix(dtype, 3, 64);
            let format = Format::of(dtype).unwrap();
            let expected = weight
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let data = weight.data().unwrap();
            for (r, row) in data.chunks_exact(2 * format.block_bytes()).enumerate() {
                for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
                    let w = unpack_scalar(format, block);
                    for j in 0..BLOCK {
                        let value = w.d * w.q[j] as f32 + w.m;
                        let want = expected[r][b * BLOCK + j];
                        assert!((value - want).abs() < 1e-6, "{dtype:?} row {r} value {j}");
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
            // SmolLM2's and Qwen2.5-0.5B's widths; 7 rows leaves remainders in every tile.
            for (rows, cols) in [(7, 576), (37, 896)] {
                let weight = random_matrix(dtype, rows, cols);
                let matrix = QuantMatrix::on_any_avx2_cpu(weight.clone())
                    .unwrap()
                    .unwrap();
                let data = weight.data().unwrap();
                for m in [1, 2, 5, 9] {
                    let x = Tensor::randn(0f32, 1.0, (m, cols), &Device::Cpu).unwrap();
                    let got = matrix.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                    let acts = quantize_rows(&x.flatten_all().unwrap().to_vec1().unwrap());
                    let row_bytes = cols / BLOCK * matrix.format.block_bytes();
                    for a in 0..m {
                        let act_row = &acts[a * cols / BLOCK..(a + 1) * cols / BLOCK];
                        for (r, row) in data.chunks_exact(row_bytes).enumerate() {
                            let want = row_dot_scalar(matrix.format, row, act_row);
                            let diff = (got[a][r] - want).abs();
                            assert!(
                                diff <= 1e-4 * want.abs().max(1.0),
                                "{dtype:?} {rows}x{cols}, m {m}: [{a}][{r}] {} against {want}",
                                got[a][r]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_kernels_agree_with_candles_matmul_on_the_same_weights() {
        if !runs_here() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for dtype in FORMATS {
            let weight = random_matrix(dtype, 64, 576);
            let matrix = QuantMatrix::on_any_avx2_cpu(weight.clone())
                .unwrap()
                .unwrap();
            let reference = candle_core::quantized::QMatMul::from_arc(weight).unwrap();
            let x = Tensor::randn(0f32, 1.0, (3, 576), &Device::Cpu).unwrap();
            let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = values(matrix.forward(&x).unwrap());
            let want = values(candle_core::Module::forward(&reference, &x).unwrap());
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            assert!(diff <= 1e-3 * scale, "{dtype:?}: {diff} of {scale}");
        }
    }
}
