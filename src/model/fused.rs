//! The decoder's element-wise steps on the CPU, each one pass over memory. candle runs them as
//! separate passes (scale, mask, softmax; SiLU, product), reads the gate and up halves of the
//! stacked product through its slower path for strided views, and builds a mask tensor for
//! every chunk: about a tenth of a prompt's time with the default model. These compute candle's
//! arithmetic in candle's order, the C library's `expf` included (its own steps, four values at
//! a time: [`exp_in_place`]), so that every result is the same to the last bit: a quantized
//! model rounds its activations to bytes before each product, and an exponential that differed
//! from `expf` in its last bit for 6 in 10,000 values (a vectorized one, tried) moved the
//! judge's log-odds by up to 0.2 and changed 31 of the 40 dev-set answers.

use candle_core::{Device, Layout, Result, Storage, Tensor};

use super::kernels::parallel_chunks_mut;

/// `silu(gate) · up`, value by value, for `(n, width)` matrices whose rows are contiguous (whole
/// tensors, or column ranges of one, as a stacked gate/up product is cut).
pub fn silu_times(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (n, width) = gate.dims2()?;
    if up.dims2()? != (n, width) {
        candle_core::bail!(
            "gate {:?} and up {:?} differ in shape",
            gate.shape(),
            up.shape()
        );
    }
    let (gate_storage, gate_layout) = gate.storage_and_layout();
    let (up_storage, up_layout) = up.storage_and_layout();
    let gate_rows = Rows::of(&gate_storage, gate_layout)?;
    let up_rows = Rows::of(&up_storage, up_layout)?;
    let mut out = vec![0f32; n * width];
    parallel_chunks_mut(&mut out, width, |r, out| {
        let gate = gate_rows.row(r);
        for (o, &g) in out.iter_mut().zip(gate) {
            *o = -g;
        }
        exp_in_place(out);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up_rows.row(r)) {
            *o = g / (1.0 + *o) * u;
        }
    });
    Tensor::from_vec(out, (n, width), &Device::Cpu)
}

/// The attention weights of `n` new positions after `pos` cached ones: `scores` is
/// `(kv_heads, group · n, pos + n)`, row `g · n + i` holding query `i`'s products with every key;
/// each row is scaled by `scale` and its softmax taken over the keys up to and including its own
/// position, the later ones weighing zero. The steps are candle's (scale, mask, subtract the
/// maximum, exponentiate, sum, divide) in candle's order.
pub fn causal_softmax(scores: &Tensor, n: usize, pos: usize, scale: f32) -> Result<Tensor> {
    let (heads, rows, total) = scores.dims3()?;
    if rows % n != 0 || total != pos + n {
        candle_core::bail!(
            "scores {:?} do not match {n} queries after {pos} positions",
            scores.shape()
        );
    }
    let (storage, layout) = scores.storage_and_layout();
    let scores = Rows::of(&storage, layout)?;
    let mut out = vec![0f32; heads * rows * total];
    parallel_chunks_mut(&mut out, total, |r, out| {
        let visible = pos + r % n + 1;
        let weights = &mut out[..visible];
        for (w, &s) in weights.iter_mut().zip(scores.row(r)) {
            *w = s * scale;
        }
        let max = weights.iter().fold(f32::NEG_INFINITY, |m, &w| m.max(w));
        for w in weights.iter_mut() {
            *w -= max;
        }
        exp_in_place(weights);
        // Over the whole row, the hidden positions' zeros included, as candle sums it.
        let sum = sum(out);
        for w in out[..visible].iter_mut() {
            *w /= sum;
        }
    });
    Tensor::from_vec(out, (heads, rows, total), &Device::Cpu)
}

/// Replaces each value by its exponential, the same float as the C library's `expf` gives (see
/// [`exp`]).
pub fn exp_in_place(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if exp::runs_here() {
        let mut fours = values.chunks_exact_mut(4);
        for four in &mut fours {
            // SAFETY: `runs_here` held.
            unsafe { exp::four(four) };
        }
        for v in fours.into_remainder() {
            *v = v.exp();
        }
        return;
    }
    for v in values.iter_mut() {
        *v = v.exp();
    }
}

/// The C library's `expf` (glibc from 2.27 on, whose algorithm is Arm's optimized-routines'),
/// four values at a time: the same double-precision steps, fused multiply-adds where glibc's
/// FMA build has them, the same table and coefficients, so the same float to the last bit (all
/// 2^32 floats checked against glibc 2.36, see the tests). The decoder's exponentials (SiLU,
/// softmax) were a twentieth of a prompt's time as calls to `expf` one value at a time:
/// `cargo bench --bench kernels -- element-wise/.*/fused` 2.66 → 1.55 ms (SiLU) and 1.85 →
/// 1.05 ms (attention weights).
#[cfg(target_arch = "x86_64")]
mod exp {
    use std::arch::x86_64::*;

    /// `2^(i/32)` rounded to a double, as bits, less `i << 47`: the exponent the reduction's
    /// integer adds back.
    const TABLE: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    /// `32 / ln 2`.
    const INV_LN2_32: f64 = f64::from_bits(0x40471547652b82fe);
    /// Adding it rounds to an integer, which then lies in the low bits.
    const SHIFT: f64 = f64::from_bits(0x4338000000000000);
    /// `2^(r/32) ≈ 1 + C2 r + C1 r² + C0 r³`.
    const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
    const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
    const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);
    /// The top 12 bits (sign cleared) past which `expf` takes its slow path (|x| ≥ 88, NaN).
    pub(super) const SLOW_ABOVE: i32 = 0x42a;

    pub(super) fn runs_here() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `values` holds 4.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn four(values: &mut [f32]) {
        let x = _mm_loadu_ps(values.as_ptr());
        let top = _mm_and_si128(
            _mm_srli_epi32::<20>(_mm_castps_si128(x)),
            _mm_set1_epi32(0x7ff),
        );
        let slow = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(
            top,
            _mm_set1_epi32(SLOW_ABOVE),
        )));
        let xd = _mm256_cvtps_pd(x);
        let inv_ln2 = _mm256_set1_pd(INV_LN2_32);
        let shift = _mm256_set1_pd(SHIFT);
        let z = _mm256_fmadd_pd(inv_ln2, xd, shift);
        let k = _mm256_castpd_si256(z);
        let r = _mm256_fmsub_pd(inv_ln2, xd, _mm256_sub_pd(z, shift));
        let entry = _mm256_i64gather_epi64::<8>(
            TABLE.as_ptr() as *const i64,
            _mm256_and_si256(k, _mm256_set1_epi64x(31)),
        );
        let s = _mm256_castsi256_pd(_mm256_add_epi64(entry, _mm256_slli_epi64::<47>(k)));
        let z = _mm256_fmadd_pd(r, _mm256_set1_pd(C0), _mm256_set1_pd(C1));
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(r, _mm256_set1_pd(C2), _mm256_set1_pd(1.0));
        let y = _mm256_mul_pd(_mm256_fmadd_pd(z, r2, y), s);
        _mm_storeu_ps(values.as_mut_ptr(), _mm256_cvtpd_ps(y));
        if slow != 0 {
            let x: [f32; 4] = std::mem::transmute(x);
            for (lane, v) in values.iter_mut().enumerate() {
                if slow & (1 << lane) != 0 {
                    *v = x[lane].exp();
                }
            }
        }
    }
}

/// A sum in the order of candle's on CPUs with AVX2: four accumulators of 8 lanes over each 32
/// values, added pairwise, the lanes then added pairwise, then the values left over one by one.
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 32];
    let blocks = values.chunks_exact(32);
    let rest = blocks.remainder();
    for block in blocks {
        for (lane, v) in lanes.iter_mut().zip(block) {
            *lane += v;
        }
    }
    let eight: [f32; 8] =
        std::array::from_fn(|l| (lanes[l] + lanes[8 + l]) + (lanes[16 + l] + lanes[24 + l]));
    let four: [f32; 4] = std::array::from_fn(|l| eight[l] + eight[l + 4]);
    let mut total = (four[0] + four[1]) + (four[2] + four[3]);
    for v in rest {
        total += v;
    }
    total
}

/// The rows of a 2- or 3-D f32 CPU tensor whose last dimension is contiguous.
struct Rows<'a> {
    values: &'a [f32],
    start: usize,
    stride: usize,
    width: usize,
}

impl<'a> Rows<'a> {
    fn of(storage: &'a Storage, layout: &Layout) -> Result<Self> {
        let Storage::Cpu(cpu) = storage else {
            candle_core::bail!("fused steps run on the CPU only");
        };
        let dims = layout.dims();
        let strides = layout.stride();
        let width = dims.last().copied().unwrap_or(0);
        let rows_contiguous = match (dims, strides) {
            ([_, _], [_, 1]) => true,
            ([heads, rows, _], [head_stride, row_stride, 1]) => {
                *heads == 1 || *head_stride == rows * row_stride
            }
            _ => false,
        };
        if !rows_contiguous {
            candle_core::bail!("fused steps need rows laid out one after another");
        }
        Ok(Self {
            values: cpu.as_slice::<f32>()?,
            start: layout.start_offset(),
            stride: strides[strides.len() - 2],
            width,
        })
    }

    fn row(&self, r: usize) -> &'a [f32] {
        let start = self.start + r * self.stride;
        &self.values[start..start + self.width]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
        diff.and_then(|d| d.to_scalar::<f32>()).unwrap()
    }

    #[test]
    fn silu_times_gives_candles_bits_from_column_ranges_of_a_stacked_product() {
        let device = Device::Cpu;
        let all = Tensor::randn(0f32, 3.0, (5, 2 * 300), &device).unwrap();
        let (gate, up) = (
            all.narrow(1, 0, 300).unwrap(),
            all.narrow(1, 300, 300).unwrap(),
        );
        let expected = (candle_nn::ops::silu(&gate).unwrap() * &up).unwrap();
        let fused = silu_times(&gate, &up).unwrap();
        let diff = max_difference(&fused, &expected);
        assert_eq!(diff, 0.0, "differs by {diff}");
    }

    #[test]
    fn causal_softmax_gives_the_bits_of_scaling_masking_and_softmax_done_apart() {
        let device = Device::Cpu;
        let (heads, group, n, pos) = (2, 3, 4, 70);
        let scores = Tensor::randn(0f32, 4.0, (heads, group * n, pos + n), &device).unwrap();
        let mask = super::super::decoder::causal_mask(n, pos, &device)
            .unwrap()
            .expect("a mask for several positions");
        let scale = 0.125;
        let expected = (&scores * scale as f64)
            .unwrap()
            .reshape((heads, group, n, pos + n))
            .unwrap()
            .broadcast_add(&mask)
            .unwrap()
            .reshape((heads, group * n, pos + n))
            .unwrap();
        let expected = candle_nn::ops::softmax_last_dim(&expected).unwrap();
        let fused = causal_softmax(&scores, n, pos, scale).unwrap();
        let diff = max_difference(&fused, &expected);
        assert_eq!(diff, 0.0, "differs by {diff}");
    }

    /// Every `stride`-th float of both signs up to where `expf` takes its slow path (the rest
    /// go to `expf` itself), its exponential against the C library's.
    #[cfg(target_arch = "x86_64")]
    fn exp_matches_the_c_library_every(stride: u32) {
        let fast_up_to = ((exp::SLOW_ABOVE as u32 + 1) << 20) - 1;
        let mut mismatches = 0;
        let chunk = 4096 * stride;
        for sign in [0, 1 << 31] {
            for first in (0..=fast_up_to).step_by(chunk as usize) {
                let inputs: Vec<f32> = (first..=fast_up_to.min(first + (chunk - 1)))
                    .step_by(stride as usize)
                    .map(|bits| f32::from_bits(sign | bits))
                    .collect();
                let mut got = inputs.clone();
                exp_in_place(&mut got);
                mismatches += inputs
                    .iter()
                    .zip(&got)
                    .filter(|(x, y)| x.exp().to_bits() != y.to_bits())
                    .count();
            }
        }
        assert_eq!(mismatches, 0, "floats whose exponential differs");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn exp_gives_the_c_librarys_bits() {
        exp_matches_the_c_library_every(29);
        let mut edges = [
            0.0,
            -0.0,
            87.99,
            88.0,
            88.73,
            -88.0,
            -104.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ];
        let expected = edges.map(|x| x.exp().to_bits());
        exp_in_place(&mut edges);
        assert_eq!(edges.map(f32::to_bits), expected);
        let mut nan = [f32::NAN; 4];
        exp_in_place(&mut nan);
        assert!(nan.iter().all(|x| x.is_nan()));
    }

    /// All floats: `cargo test --release -- --ignored every_float`.
    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "half a minute; the sampled test runs every time"]
    fn exp_gives_the_c_librarys_bits_for_every_float() {
        exp_matches_the_c_library_every(1);
    }

    #[test]
    fn a_view_whose_rows_are_not_one_after_another_is_refused() {
        let t = Tensor::zeros((4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let transposed = t.t().unwrap();
        assert!(silu_times(&transposed, &transposed).is_err());
    }
}
