//! Keys and values of prompt pieces that recur: the system turn of a prompt is the same for every
//! question, and a transcript turn is the same whenever it is retrieved. Each is computed once per
//! model and text, kept in memory for the process and on disk for the next one.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use candle_core::{Device, Tensor};

use super::decoder::Config;

/// The code that computes the stored keys and values, and lays them out on disk.
const COMPUTED_BY: &[&str] = &[
    include_str!("mod.rs"),
    include_str!("decoder.rs"),
    include_str!("kernels.rs"),
    include_str!("kernels/tiles.rs"),
    include_str!("kernels/tiles/amx.rs"),
    include_str!("fused.rs"),
    include_str!("weights.rs"),
    include_str!("optimize.rs"),
    include_str!("kv_store.rs"),
    include_str!("../cache.rs"),
];
const MAGIC: &[u8; 4] = b"TQAK";
/// Floats kept in memory (256 MB): the system turns in use and the most recent transcript turns.
const MEMORY_BUDGET: usize = 64 << 20;
/// Megabytes of entries kept on disk unless `$TQA_PREFIX_CACHE_MB` says otherwise: a transcript
/// adds several hundred (its exchanges as judged and as first in an answer, ~57 KB per token for
/// the default model), and every build that computes differently starts afresh beside the old
/// entries, which nothing would read again.
const DEFAULT_DISK_BUDGET_MB: u64 = 2048;
const DISK_BUDGET_VAR: &str = "TQA_PREFIX_CACHE_MB";

pub type Entries = Vec<(Tensor, Tensor)>;

pub struct KvStore {
    /// Where prefixes are written; `None` keeps them in memory only.
    dir: Option<PathBuf>,
    /// Identifies the model file, the device and the CPU's kernels, so that another model never
    /// reads these entries, and neither a GPU nor a CPU of another kind reads what this one
    /// computed (their last bits differ, and a greedy answer must repeat on each).
    model_id: String,
    /// `cache::code_digest` of [`COMPUTED_BY`], hashed once rather than for every entry looked up.
    code: Vec<u8>,
    /// The device and the CPU's kernels (part of `model_id`).
    computed_on: String,
    /// Keyed by the tokens the entries depend on and how many positions they hold; most recently
    /// used last.
    memory: Vec<((Vec<u32>, usize), Entries)>,
    /// Bytes the folder's entries may take; the least recently used go first.
    disk_budget: u64,
}

impl KvStore {
    pub fn new(dir: Option<PathBuf>, model_path: &Path, device: &Device) -> Self {
        let computed_on = format!("{:?}|{}", device.location(), super::kernels::path());
        Self {
            dir,
            model_id: format!("{}|{computed_on}", model_identity(model_path)),
            code: crate::cache::code_digest(COMPUTED_BY),
            computed_on,
            memory: Vec::new(),
            disk_budget: disk_budget_from_env(),
        }
    }

    /// What decides the last bits of what the model computes, its file aside: the code, the device
    /// and the kernels. Caches of its replies are named by it, so that a build that computes
    /// differently writes its own (a greedy reply can change at a near tie).
    pub fn computation(&self) -> Vec<u8> {
        [self.code.as_slice(), self.computed_on.as_bytes()].concat()
    }

    #[cfg(test)]
    fn with_disk_budget(self, bytes: u64) -> Self {
        Self {
            disk_budget: bytes,
            ..self
        }
    }

    /// The `len` positions of entries stored under `key` (the tokens they depend on: the whole
    /// prefix, or a context plus the piece whose positions are stored), from memory or disk.
    pub fn get(
        &mut self,
        key: &[u32],
        len: usize,
        config: &Config,
        device: &Device,
    ) -> Option<Entries> {
        if let Some(i) = self
            .memory
            .iter()
            .position(|((k, l), _)| k == key && *l == len)
        {
            let entry = self.memory.remove(i);
            let entries = entry.1.clone();
            self.memory.push(entry);
            return Some(entries);
        }
        let path = self.path(key, len)?;
        let floats = match crate::cache::read_floats(&path, MAGIC, &dims(config, len))? {
            Some(floats) => floats,
            None => {
                eprintln!(
                    "warning: prompt cache {} is damaged; recomputing it",
                    path.display()
                );
                // Removed so that the recomputed entries are written in its place.
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        mark_used(&path);
        let entries = split_layers(floats, config, len, device).ok()?;
        self.remember(key, len, entries.clone(), config);
        Some(entries)
    }

    /// Whether the last `len` positions of `key` are stored, without reading them.
    pub fn contains(&self, key: &[u32], len: usize) -> bool {
        self.memory.iter().any(|((k, l), _)| k == key && *l == len)
            || self.path(key, len).is_some_and(|p| p.is_file())
    }

    /// Keeps `entries` under `key`, in memory and, when a folder is set, on disk. A cache that
    /// cannot be written costs the next run a prefill, not this answer.
    pub fn put(&mut self, key: &[u32], entries: Entries, config: &Config) {
        let len = entries
            .first()
            .map_or(Ok(0), |(k, _)| k.dim(1))
            .unwrap_or(0);
        if let Some(path) = self.path(key, len) {
            let written = join_layers(&entries)
                .map_err(|e| e.to_string())
                .and_then(|floats| {
                    crate::cache::write_floats(&path, MAGIC, &dims(config, len), &floats)
                        .map_err(|e| e.to_string())
                });
            match written {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        evict_least_recently_used(dir, self.disk_budget, &path);
                    }
                }
                Err(e) => eprintln!(
                    "warning: cannot write the prompt cache {}: {e}",
                    path.display()
                ),
            }
        }
        self.remember(key, len, entries, config);
    }

    fn remember(&mut self, key: &[u32], len: usize, entries: Entries, config: &Config) {
        let floats =
            |e: &Entries| e.first().map_or(0, |(k, _)| k.elem_count()) * 2 * config.n_layer;
        let mut used: usize =
            self.memory.iter().map(|(_, e)| floats(e)).sum::<usize>() + floats(&entries);
        while used > MEMORY_BUDGET && !self.memory.is_empty() {
            used -= floats(&self.memory.remove(0).1);
        }
        self.memory.push(((key.to_vec(), len), entries));
    }

    /// The file of the last `len` positions of `key`. The length is part of the name: the same
    /// tokens split into a context and a piece in two ways are two different entries.
    fn path(&self, key: &[u32], len: usize) -> Option<PathBuf> {
        let len = (len as u64).to_le_bytes();
        let token_bytes: Vec<u8> = key.iter().flat_map(|t| t.to_le_bytes()).collect();
        let name = crate::cache::content_name(
            "kv",
            &[&self.code, self.model_id.as_bytes(), &len, &token_bytes],
        );
        Some(self.dir.as_ref()?.join(name))
    }
}

fn disk_budget_from_env() -> u64 {
    let megabytes = match std::env::var(DISK_BUDGET_VAR) {
        Ok(value) => value.trim().parse::<u64>().unwrap_or_else(|_| {
            eprintln!(
                "warning: ${DISK_BUDGET_VAR}={value:?} is not a whole number of megabytes; \
                 keeping the prompt cache under {DEFAULT_DISK_BUDGET_MB} MB"
            );
            DEFAULT_DISK_BUDGET_MB
        }),
        Err(_) => DEFAULT_DISK_BUDGET_MB,
    };
    megabytes << 20
}

/// An entry's modification time is when it was last read or written: what eviction goes by.
fn mark_used(path: &Path) {
    let _ = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// Removes the least recently used entries of `dir` until they take at most `budget` bytes;
/// `keep`, the entry just written, stays whatever its size.
fn evict_least_recently_used(dir: &Path, budget: u64, keep: &Path) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = listing
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("kv-") && name.ends_with(".bin")
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    entries.sort();
    for (_, len, path) in entries {
        if total <= budget {
            break;
        }
        if path != keep && std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// Path, size and modification time: hashing a gigabyte of weights would cost more than the
/// prefill it saves.
fn model_identity(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}|{size}|{modified}", canonical.display())
}

/// K and V of every layer: `(n_layer, 2, n_kv_head, len, head_dim)`.
fn dims(config: &Config, len: usize) -> [usize; 5] {
    [config.n_layer, 2, config.n_kv_head, len, config.head_dim]
}

fn join_layers(entries: &Entries) -> candle_core::Result<Vec<f32>> {
    let mut floats = Vec::new();
    for (k, v) in entries {
        floats.extend(k.flatten_all()?.to_vec1::<f32>()?);
        floats.extend(v.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(floats)
}

fn split_layers(
    floats: Vec<f32>,
    config: &Config,
    len: usize,
    device: &Device,
) -> candle_core::Result<Entries> {
    let shape = (config.n_kv_head, len, config.head_dim);
    let all = Tensor::from_vec(
        floats,
        (config.n_layer, 2, config.n_kv_head, len, config.head_dim),
        device,
    )?;
    (0..config.n_layer)
        .map(|layer| {
            let kv = all.get(layer)?;
            Ok((kv.get(0)?.reshape(shape)?, kv.get(1)?.reshape(shape)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            n_layer: 2,
            n_head: 2,
            n_kv_head: 1,
            head_dim: 4,
            rms_eps: 1e-6,
            rope_base: 10_000.0,
            rope_halves: true,
            context_length: 64,
        }
    }

    fn entries(config: &Config, len: usize, value: f32) -> Entries {
        let shape = (config.n_kv_head, len, config.head_dim);
        (0..config.n_layer)
            .map(|_| {
                let t = Tensor::full(value, shape, &Device::Cpu).expect("tensor");
                (t.clone(), t)
            })
            .collect()
    }

    #[test]
    fn the_same_tokens_split_two_ways_are_two_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config();
        let new_store =
            || KvStore::new(Some(dir.path().to_path_buf()), Path::new("m"), &Device::Cpu);
        let key = [1, 2, 3, 4, 5];
        let mut store = new_store();
        store.put(&key, entries(&config, 3, 1.0), &config);
        store.put(&key, entries(&config, 2, 2.0), &config);
        // From memory, then from disk in a fresh store: each length finds its own entries.
        for mut store in [store, new_store()] {
            for (len, value) in [(3, 1.0), (2, 2.0)] {
                let got = store.get(&key, len, &config, &Device::Cpu).expect("stored");
                let (k, _) = &got[0];
                assert_eq!(k.dim(1).expect("dim"), len);
                let first: f32 = k
                    .flatten_all()
                    .and_then(|t| t.get(0))
                    .and_then(|t| t.to_scalar())
                    .expect("value");
                assert_eq!(first, value);
            }
            assert!(store.get(&key, 4, &config, &Device::Cpu).is_none());
        }
    }

    #[test]
    fn the_disk_keeps_the_most_recently_used_entries_within_its_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config();
        let files = || -> Vec<PathBuf> {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
                .expect("listing")
                .map(|e| e.expect("entry").path())
                .collect();
            files.sort();
            files
        };
        let mut store = KvStore::new(Some(dir.path().to_path_buf()), Path::new("m"), &Device::Cpu);
        store.put(&[1], entries(&config, 3, 1.0), &config);
        let a = files().pop().expect("entry written");
        store.put(&[2], entries(&config, 3, 2.0), &config);
        let b = files().into_iter().find(|f| *f != a).expect("second entry");
        let size = std::fs::metadata(&a).expect("size").len();
        let now = SystemTime::now();
        let set_age = |path: &Path, seconds| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(now - std::time::Duration::from_secs(seconds)))
                .expect("mtime set");
        };
        set_age(&a, 20);
        set_age(&b, 10);

        // Read back by the next process, `a` is now the most recently used of the two.
        let mut store = KvStore::new(Some(dir.path().to_path_buf()), Path::new("m"), &Device::Cpu)
            .with_disk_budget(2 * size + size / 2);
        assert!(store.get(&[1], 3, &config, &Device::Cpu).is_some());
        store.put(&[3], entries(&config, 3, 3.0), &config);
        let left = files();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&a) && !left.contains(&b));
        assert!(store.get(&[3], 3, &config, &Device::Cpu).is_some());
    }
}
