//! The decoder's element-wise steps on the CPU, each one pass over memory. candle runs them as
//! separate passes (scale, mask, softmax; SiLU, product), reads the gate and up halves of the
//! stacked product through its slower path for strided views, and builds a mask tensor for
//! every chunk: about a tenth of a prompt's time with the default model. These compute candle's
//! arithmetic in candle's order, the C library's `expf` included, so that every result is the
//! same to the last bit: a quantized model rounds its activations to bytes before each product,
//! and an exponential that differed from `expf` in its last bit for 6 in 10,000 values (a
//! vectorized one, tried) moved the judge's log-odds by up to 0.2 and changed 31 of the 40
//! dev-set answers.

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
        for ((o, &g), &u) in out.iter_mut().zip(gate_rows.row(r)).zip(up_rows.row(r)) {
            *o = g / (1.0 + (-g).exp()) * u;
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
            *w = (*w - max).exp();
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

    #[test]
    fn a_view_whose_rows_are_not_one_after_another_is_refused() {
        let t = Tensor::zeros((4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let transposed = t.t().unwrap();
        assert!(silu_times(&transposed, &transposed).is_err());
    }
}
