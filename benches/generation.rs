//! The hot path on the real models (SmolLM2-135M and the default Qwen2.5-Coder-1.5B): one decode
//! step at a short and a long context, and prefill chunks from an empty cache and after 256
//! cached positions, as an answer prompt's exchanges follow its instructions.
use candle_core::Device;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tqa::model::{Model, ModelSource};

const MODELS: [&str; 2] = ["smollm2-135m", "qwen2.5-coder-1.5b"];

fn load(name: &str) -> Model {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let source: ModelSource = rt
        .block_on(tqa::model::resolve(Some(name)))
        .expect("a registry model");
    Model::load(&source, &Device::Cpu).expect("load")
}

fn generation(c: &mut Criterion) {
    for name in MODELS {
        model_steps(c, name);
    }
}

fn model_steps(c: &mut Criterion, name: &str) {
    let mut model = load(name);
    let text = std::fs::read_to_string(tqa::transcript::default_path()).expect("transcript");
    let tokens = model.encode(&text).expect("encode");
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    // Each decode step grows the KV cache, so every measured step starts from a fresh prefill
    // (excluded from the timing) at the same depth.
    let model_cell = std::cell::RefCell::new(&mut model);
    for depth in [16usize, 512] {
        group.bench_function(format!("decode-step/depth-{depth}"), |b| {
            b.iter_batched(
                || {
                    model_cell
                        .borrow_mut()
                        .forward(&tokens[..depth], 0)
                        .expect("prefill")
                },
                |_| {
                    model_cell
                        .borrow_mut()
                        .forward(&tokens[depth..depth + 1], depth)
                        .expect("decode")
                },
                BatchSize::PerIteration,
            )
        });
    }
    let model = model_cell.into_inner();
    group.bench_function("prefill/128-tokens", |b| {
        b.iter(|| model.forward(&tokens[..128], 0).expect("prefill"))
    });
    model.forward(&tokens[..256], 0).expect("prefill");
    group.bench_function("prefill/256-tokens-after-256", |b| {
        b.iter(|| model.forward(&tokens[256..512], 256).expect("prefill"))
    });
    group.finish();
}

criterion_group!(benches, generation);
criterion_main!(benches);
