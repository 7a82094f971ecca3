//! Retrieval latency: a query against the hybrid index, and building the index from scratch
//! (lexical) and from the embedding cache.
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use tqa::model::{registry::Registry, resolve::locate_embedder};
use tqa::retrieval::{embed::Embedder, DenseIndex, Index};
use tqa::transcript::{self, Transcript};

fn hybrid(transcript: &Transcript, cache: &Path) -> Index {
    let entry = Registry::builtin().expect("registry").embedder;
    let embedder = Embedder::load(&locate_embedder(&entry).expect("embedder")).expect("load embedder");
    let dense = DenseIndex::build(&transcript.turns, embedder, &entry.package.sha256, Some(cache), &|| {}).expect("dense");
    Index::build(transcript).with_dense(dense)
}

fn retrieval(c: &mut Criterion) {
    let transcript = Transcript::load(&transcript::default_path()).expect("shipped transcript");
    let cache = std::env::temp_dir().join("tqa-bench-cache");
    let index = hybrid(&transcript, &cache);

    c.bench_function("query/hybrid/en", |b| {
        b.iter(|| index.search(&["What did Altman say about agents?"], 3).expect("search"))
    });
    c.bench_function("query/hybrid/zh", |b| {
        b.iter(|| index.search(&["Altman 怎么看 SaaS 的定价？"], 3).expect("search"))
    });
    c.bench_function("index/lexical", |b| b.iter(|| Index::build(&transcript)));
    let mut group = c.benchmark_group("index");
    group.sample_size(10);
    group.bench_function("hybrid-from-cache", |b| b.iter(|| hybrid(&transcript, &cache)));
    group.finish();
}

criterion_group!(benches, retrieval);
criterion_main!(benches);
