//! tqa's own kernels (every product on CPUs with AVX2 and no int8 dot products; decoding, Q4_1,
//! Q5_0 and, as tiles on AVX-512 VNNI, Q4_K and Q6_K on CPUs with them) against candle's, on the
//! matrix shapes of SmolLM2-135M (Q4_1, its output matrix Q8_0), Qwen2.5-Coder-0.5B (Q5_0) and
//! Qwen2.5-Coder-1.5B (Q4_K, Q6_K): one token (decoding) and a prompt chunk of 256 tokens. candle
//! runs Q4_1, Q5_0 and Q8_0 as Q8_0 copies with zero columns up to a width of a multiple of 256,
//! as the decoder pads them for candle's fast kernels, and the k-quants as they are. Also the
//! decoder's fused element-wise steps against candle's separate passes.
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor, D};
use criterion::{criterion_group, criterion_main, Criterion};
use tqa::model::fused;
use tqa::model::kernels::{self, QuantMatrix};
use tqa::model::weights::QuantBytes;

/// (name, dtype, rows, cols): stacked q/k/v, stacked gate/up and down of each model, and
/// SmolLM2's output matrix.
const SHAPES: [(&str, GgmlDType, usize, usize); 10] = [
    ("smollm2-qkv", GgmlDType::Q4_1, 960, 576),
    ("smollm2-gate-up", GgmlDType::Q4_1, 3072, 576),
    ("smollm2-down", GgmlDType::Q4_1, 576, 1536),
    ("smollm2-output", GgmlDType::Q8_0, 49152, 576),
    ("qwen0.5b-qkv", GgmlDType::Q5_0, 1152, 896),
    ("qwen0.5b-gate-up", GgmlDType::Q5_0, 9728, 896),
    ("qwen0.5b-down", GgmlDType::Q5_0, 896, 4864),
    ("qwen1.5b-qkv", GgmlDType::Q4K, 2048, 1536),
    ("qwen1.5b-gate-up", GgmlDType::Q4K, 17920, 1536),
    ("qwen1.5b-down", GgmlDType::Q6K, 1536, 8960),
];

/// candle's matrix and the zero columns its inputs get.
struct CandleCopy {
    matmul: QMatMul,
    padding: usize,
}

impl CandleCopy {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            self.matmul.forward(x)
        } else {
            self.matmul
                .forward(&x.pad_with_zeros(D::Minus1, 0, self.padding)?)
        }
    }
}

/// Random weights of `dtype` for tqa's kernels, and the same weights for candle's: for the types of
/// 32-value blocks a padded Q8_0 copy, as the decoder gives candle.
fn both_kernels(dtype: GgmlDType, rows: usize, cols: usize) -> (QuantMatrix, CandleCopy) {
    let device = Device::Cpu;
    let dense = Tensor::randn(0f32, 0.05, (rows, cols), &device).expect("weights");
    let weight = Arc::new(QTensor::quantize(&dense, dtype).expect("quantize"));
    // The way the decoder builds it where tqa prefers its kernels (with Q4_K's and Q6_K's tiles
    // for prompts on CPUs with AVX-512 VNNI), else as it builds them for decoding.
    let preferred =
        QuantMatrix::stacked(vec![QuantBytes::of_tensor(weight.clone()).expect("bytes")])
            .expect("weights for tqa's kernels");
    let own = match preferred {
        Some(own) => own.with_prompt_tiles().expect("tiles"),
        None => QuantMatrix::new(weight.clone())
            .expect("weights for tqa's kernels")
            .expect("a type these kernels take"),
    };
    let candles = if matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q8_0) {
        let padding = cols.next_multiple_of(256) - cols;
        let matmul = weight
            .dequantize(&device)
            .and_then(|w| w.pad_with_zeros(D::Minus1, 0, padding))
            .and_then(|w| QTensor::quantize(&w, GgmlDType::Q8_0))
            .and_then(QMatMul::from_qtensor)
            .expect("Q8_0 copy");
        CandleCopy { matmul, padding }
    } else {
        let matmul = QMatMul::from_arc(weight).expect("candle's matrix");
        CandleCopy { matmul, padding: 0 }
    };
    (own, candles)
}

fn products(c: &mut Criterion) {
    if !kernels::runs_here() {
        eprintln!("this CPU does not run tqa's own kernels; nothing to compare");
        return;
    }
    let device = Device::Cpu;
    let mut group = c.benchmark_group("kernels");
    group.sample_size(20);
    for (name, dtype, rows, cols) in SHAPES {
        let (own, candles) = both_kernels(dtype, rows, cols);
        for tokens in [1usize, 256] {
            let x = Tensor::randn(0f32, 1.0, (tokens, cols), &device).expect("input");
            group.bench_function(format!("{name}/{tokens}/own"), |b| {
                b.iter(|| own.forward(&x).expect("own"))
            });
            group.bench_function(format!("{name}/{tokens}/candle"), |b| {
                b.iter(|| candles.forward(&x).expect("candle"))
            });
        }
    }
    group.finish();
}

/// Decoding reads every layer's weights once per token, from memory rather than cache: a
/// model's layers of one matrix, one token each, in turn (SmolLM2's 30 gate/up matrices, the
/// 1.5B model's 28).
fn decode_sweep(c: &mut Criterion) {
    if !kernels::runs_here() {
        return;
    }
    let device = Device::Cpu;
    let mut group = c.benchmark_group("decode-sweep");
    group.sample_size(20);
    for (name, dtype, rows, cols, layers) in [
        ("smollm2-gate-up-x30", GgmlDType::Q4_1, 3072, 576, 30),
        ("qwen1.5b-gate-up-x28", GgmlDType::Q4K, 17920, 1536, 28),
    ] {
        let (own, candles): (Vec<QuantMatrix>, Vec<CandleCopy>) =
            (0..layers).map(|_| both_kernels(dtype, rows, cols)).unzip();
        let x = Tensor::randn(0f32, 1.0, (1, cols), &device).expect("input");
        group.bench_function(format!("{name}/own"), |b| {
            b.iter(|| {
                for matrix in &own {
                    std::hint::black_box(matrix.forward(&x).expect("own"));
                }
            })
        });
        group.bench_function(format!("{name}/candle"), |b| {
            b.iter(|| {
                for matrix in &candles {
                    std::hint::black_box(matrix.forward(&x).expect("candle"));
                }
            })
        });
    }
    group.finish();
}

/// The decoder's element-wise steps of one 256-token prompt chunk of the default model, fused
/// (`tqa::model::fused`) against candle's separate passes: SiLU of the gate times up, read from
/// the stacked gate/up product, and the attention weights of 256 queries after 256 cached
/// positions (12 query heads on 2 key/value heads).
fn element_wise(c: &mut Criterion) {
    let device = Device::Cpu;
    let mut group = c.benchmark_group("element-wise");
    group.sample_size(20);
    let (n, width) = (256, 8960);
    let gate_up = Tensor::randn(0f32, 1.0, (n, 2 * width), &device).expect("gate/up");
    let gate = gate_up.narrow(1, 0, width).expect("gate");
    let up = gate_up.narrow(1, width, width).expect("up");
    group.bench_function("qwen1.5b-silu-times-up/256/fused", |b| {
        b.iter(|| fused::silu_times(&gate, &up).expect("fused"))
    });
    group.bench_function("qwen1.5b-silu-times-up/256/candle", |b| {
        b.iter(|| (candle_nn::ops::silu(&gate).expect("silu") * &up).expect("product"))
    });
    let (kv_heads, group_size, pos) = (2, 6, 256);
    let scores =
        Tensor::randn(0f32, 1.0, (kv_heads, group_size * n, pos + n), &device).expect("scores");
    let mask = tqa::model::decoder::causal_mask(n, pos, &device)
        .expect("mask")
        .expect("a mask for several positions");
    let scale = 1.0 / (128f64).sqrt();
    group.bench_function("qwen1.5b-attention-weights/256-after-256/fused", |b| {
        b.iter(|| fused::causal_softmax(&scores, n, pos, scale as f32).expect("fused"))
    });
    group.bench_function("qwen1.5b-attention-weights/256-after-256/candle", |b| {
        b.iter(|| {
            let masked = (&scores * scale)
                .and_then(|s| s.reshape((kv_heads, group_size, n, pos + n)))
                .and_then(|s| s.broadcast_add(&mask))
                .and_then(|s| s.reshape((kv_heads, group_size * n, pos + n)))
                .expect("masked scores");
            candle_nn::ops::softmax_last_dim(&masked).expect("softmax")
        })
    });
    group.finish();
}

criterion_group!(benches, products, decode_sweep, element_wise);
criterion_main!(benches);
