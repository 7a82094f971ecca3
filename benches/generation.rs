//! The hot path on a real model (SmolLM2-135M): one decode step at a short and a long context,
//! and one prefill chunk.
use candle_core::Device;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tqa::model::{Model, ModelSource};

fn load() -> Model {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let source: ModelSource = rt
        .block_on(tqa::model::resolve(Some("smollm2-135m")))
        .expect("smollm2");
    Model::load(&source, &Device::Cpu).expect("load")
}

fn generation(c: &mut Criterion) {
    let mut model = load();
    let text = std::fs::read_to_string(tqa::transcript::default_path()).expect("transcript");
    let tokens = model.encode(&text).expect("encode");
    let mut group = c.benchmark_group("smollm2");
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
    group.finish();
}

criterion_group!(benches, generation);
criterion_main!(benches);
