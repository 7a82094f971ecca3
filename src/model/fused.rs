//! The decoder's element-wise steps on the CPU, each one pass over memory with an exponential
//! the compiler vectorizes. candle runs them as separate passes (scale, mask, softmax; SiLU,
//! product) and calls the C library's scalar `expf` per value: about a tenth of a prompt's time
//! with the default model.

use candle_core::{Device, Layout, Result, Storage, Tensor};

use super::kernels::parallel_chunks_mut;

/// `e^x` rounded to the nearest f32, computed in f64 in plain arithmetic so that loops over
/// slices become vector code: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by its Taylor series
/// to the 11th power (relative error below 1e-13, far under an f32's half ulp), `2^n` from the
/// exponent bits. The C library's `expf`, called once per value, gives the same float for all
/// but about 6 in 10,000 values (one ulp apart there), so the model's outputs stay where they
/// were to the last bit almost everywhere, and so do greedy answers at near-ties.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // ln 2 in two parts, so that `n · LN2_HIGH` is exact for the n that occur.
    const LN2_HIGH: f64 = 0.693_147_180_369_123_8;
    const LN2_LOW: f64 = 1.908_214_929_270_587_7e-10;
    // Adding and taking away 1.5 · 2^52 rounds to the nearest integer without a branch.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    // Outside this range the f32 result is 0 or infinity.
    let x = (x as f64).clamp(-104.0, 89.0);
    let shifted = x * std::f64::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // The same integer read from the bits, where a float-to-int conversion would not vectorize.
    let n_int = (shifted.to_bits() as i64).wrapping_sub(ROUND.to_bits() as i64);
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut series = 1.0 / 39_916_800.0;
    for factorial in [
        3_628_800.0,
        362_880.0,
        40_320.0,
        5_040.0,
        720.0,
        120.0,
        24.0,
        6.0,
        2.0,
        1.0,
        1.0,
    ] {
        series = series * r + 1.0 / factorial;
    }
    (series * f64::from_bits(((n_int + 1023) << 52) as u64)) as f32
}

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
        for ((o, &g), &u) in out.iter_mut().zip(gate_rows.row(r)).zip(up_rows.row(r)) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    });
    Tensor::from_vec(out, (n, width), &Device::Cpu)
}

/// The attention weights of `n` new positions after `pos` cached ones: `scores` is
/// `(kv_heads, group · n, pos + n)`, row `g · n + i` holding query `i`'s products with every key;
/// each row is scaled by `scale` and its softmax taken over the keys up to and including its own
/// position, the later ones weighing zero. The steps are candle's (scale, mask, subtract the
/// maximum, exponentiate, sum, divide) in candle's order, so that only the exponential's last
/// bit can differ from them.
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
            *w = exp(*w - max);
        }
        // Over the whole row, the hidden positions' zeros included, as candle sums it.
        let sum = sum(out);
        for w in out[..visible].iter_mut() {
            *w /= sum;
        }
    });
    Tensor::from_vec(out, (heads, rows, total), &Device::Cpu)
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

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_rounds_as_the_c_library_does() {
        let (mut differ, mut count) = (0, 0);
        for i in 0..=400_000 {
            let x = -103.0 + 192.0 * i as f32 / 400_000.0;
            let (fast, library) = (exp(x), x.exp());
            count += 1;
            if fast != library {
                differ += 1;
                assert!(
                    ulps(fast, library) <= 1,
                    "exp({x}) = {fast}, expf {library}"
                );
            }
        }
        // Both are within a hair of the exact value; they part only where it lies at the
        // midpoint between two floats within the library's own error.
        assert!(differ * 1000 < count, "{differ} of {count} differ");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
    }

    #[test]
    fn silu_times_reads_column_ranges_of_a_stacked_product() {
        let device = Device::Cpu;
        let all = Tensor::randn(0f32, 3.0, (5, 2 * 300), &device).unwrap();
        let (gate, up) = (
            all.narrow(1, 0, 300).unwrap(),
            all.narrow(1, 300, 300).unwrap(),
        );
        let expected = (candle_nn::ops::silu(&gate).unwrap() * &up).unwrap();
        let fused = silu_times(&gate, &up).unwrap();
        let diff = max_difference(&fused, &expected);
        // Up to an ulp where the exponential's last bit differs from the C library's.
        assert!(diff < 1e-5, "differs by {diff}");
    }

    #[test]
    fn causal_softmax_matches_scaling_masking_and_softmax_done_apart() {
        let device = Device::Cpu;
        let (heads, group, n, pos) = (2, 3, 4, 70);
        let scores = Tensor::randn(0f32, 4.0, (heads, group * n, pos + n), &device).unwrap();
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..pos + n).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (n, pos + n), &device).unwrap();
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
        assert!(diff < 1e-7, "differs by {diff}");
    }

    #[test]
    fn a_view_whose_rows_are_not_one_after_another_is_refused() {
        let t = Tensor::zeros((4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let transposed = t.t().unwrap();
        assert!(silu_times(&transposed, &transposed).is_err());
    }
}
