//! Retrieval latency: a query against the hybrid index, building the index (lexical, and hybrid
//! from the embedding cache), and loading the embedder, which `tqa ask` overlaps with the model.
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tqa::model::{registry::Registry, resolve::locate_embedder};
use tqa::retrieval::{embed::Embedder, DenseIndex, Index};
use tqa::transcript::{self, Transcript};

fn load_embedder() -> Embedder {
    let entry = Registry::builtin().expect("registry").embedder;
    Embedder::load(&locate_embedder(&entry).expect("embedder")).expect("load embedder")
}

fn hybrid(transcript: &Transcript, embedder: &Arc<Embedder>, cache: &Path) -> Index {
    let model_id = Registry::builtin()
        .expect("registry")
        .embedder
        .package
        .sha256;
    let dense = DenseIndex::build(
        &transcript.turns,
        Arc::clone(embedder),
        &model_id,
        Some(cache),
        &|| {},
    )
    .expect("dense index");
    Index::build(transcript).with_dense(dense)
}

fn retrieval(c: &mut Criterion) {
    let transcript = Transcript::load(&transcript::default_path()).expect("shipped transcript");
    let cache = std::env::temp_dir().join("tqa-bench-cache");
    let embedder = Arc::new(load_embedder());
    let index = hybrid(&transcript, &embedder, &cache);

    c.bench_function("query/hybrid/en", |b| {
        b.iter(|| {
            index
                .search(&["What did Altman say about agents?"], 3)
                .expect("search")
        })
    });
    c.bench_function("query/hybrid/zh", |b| {
        b.iter(|| {
            index
                .search(&["Altman 怎么看 SaaS 的定价？"], 3)
                .expect("search")
        })
    });
    c.bench_function("index/lexical", |b| b.iter(|| Index::build(&transcript)));
    c.bench_function("index/hybrid-from-cache", |b| {
        b.iter(|| hybrid(&transcript, &embedder, &cache))
    });
    let mut group = c.benchmark_group("embedder");
    group.sample_size(10);
    group.bench_function("load", |b| b.iter(load_embedder));
    group.finish();
}

criterion_group!(benches, retrieval);
criterion_main!(benches);
