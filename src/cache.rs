//! Files of floats that tqa computes once and keeps: passage embeddings, prompt-prefix KV
//! entries. Each file is checked before use and written so that a crash never leaves half of one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The cache folder, `$TQA_CACHE_DIR`, else `$XDG_CACHE_HOME/tqa`, else `~/.cache/tqa`, made
/// if missing; `None` when there is none or it cannot be written, said once: every cache would
/// otherwise warn about every file it failed to keep.
pub fn default_cache_dir() -> Option<PathBuf> {
    static USABLE: OnceLock<Option<PathBuf>> = OnceLock::new();
    USABLE
        .get_or_init(|| {
            let dir = configured_cache_dir()?;
            match check_writable(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    eprintln!(
                        "warning: cannot write to the cache folder {}: {e}; nothing computed is \
                         kept for later runs (TQA_CACHE_DIR sets another folder)",
                        dir.display()
                    );
                    None
                }
            }
        })
        .clone()
}

fn configured_cache_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("TQA_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("tqa")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/tqa")))
}

fn check_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = unique_temp_sibling(&dir.join("write-check"));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Layout: `magic`, the dimensions (u32 LE), the f32 LE values, then the CRC-32 of the values.
/// `None` when the file is missing; `Some(None)` when it exists but is damaged or of other
/// dimensions, so that the caller can say so before rebuilding it.
///
/// The values are read straight into the returned vector and checked with a CRC: the default
/// model's stored prefixes run to 20 MB for a long exchange, and reading them into a buffer,
/// hashing that with SHA-256 and converting it into a second one took 30–140 ms each, several
/// times per question (a checksum guards against truncation and damage, not against an attacker
/// who can write to the cache folder anyway).
pub fn read_floats(path: &Path, magic: &[u8; 4], dims: &[usize]) -> Option<Option<Vec<f32>>> {
    let mut file = std::fs::File::open(path).ok()?;
    Some(read_checked(&mut file, magic, dims))
}

fn read_checked(file: &mut std::fs::File, magic: &[u8; 4], dims: &[usize]) -> Option<Vec<f32>> {
    let expected_header = header(magic, dims);
    let count = dims.iter().product::<usize>();
    let file_len = file.metadata().ok()?.len();
    if file_len != (expected_header.len() + count * 4 + CHECKSUM_LEN) as u64 {
        return None;
    }
    let mut found_header = vec![0u8; expected_header.len()];
    file.read_exact(&mut found_header).ok()?;
    if found_header != expected_header {
        return None;
    }
    let mut values = vec![0f32; count];
    file.read_exact(bytemuck::cast_slice_mut(&mut values))
        .ok()?;
    let mut checksum = [0u8; CHECKSUM_LEN];
    file.read_exact(&mut checksum).ok()?;
    if crc32fast::hash(bytemuck::cast_slice(&values)) != u32::from_le_bytes(checksum) {
        return None;
    }
    // The file holds little-endian values; a no-op where the CPU is little-endian.
    for value in &mut values {
        *value = f32::from_bits(u32::from_le(value.to_bits()));
    }
    Some(values)
}

const CHECKSUM_LEN: usize = 4;

fn header(magic: &[u8; 4], dims: &[usize]) -> Vec<u8> {
    let mut header = magic.to_vec();
    for &d in dims {
        header.extend((d as u32).to_le_bytes());
    }
    header
}

/// Written to a temporary file and renamed into place.
pub fn write_floats(
    path: &Path,
    magic: &[u8; 4],
    dims: &[usize],
    values: &[f32],
) -> std::io::Result<()> {
    let mut bytes = header(magic, dims);
    let start = bytes.len();
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    let checksum = crc32fast::hash(&bytes[start..]);
    bytes.extend(checksum.to_le_bytes());
    write_bytes(path, &bytes)
}

/// Writes `bytes` to a temporary file and renames it into place, so that a crash never leaves
/// half a file under `path`.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = unique_temp_sibling(path);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Every cache entry's name includes this digest of the source files whose code computes what it
/// holds (and of the crate versions they build on). A build that computes differently, down to
/// the last bit, then never reads what another build wrote: a greedy answer read against a stale
/// entry would differ from the same answer computed afresh, and a version number bumped by hand
/// was forgotten more than once.
pub fn code_digest(sources: &[&str]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for source in sources.iter().chain([&include_str!("../Cargo.lock")]) {
        hasher.update((source.len() as u64).to_le_bytes());
        hasher.update(source.as_bytes());
    }
    hasher.finalize().to_vec()
}

/// A short hex name for a cache entry from everything its content depends on.
pub fn content_name(prefix: &str, parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    format!("{prefix}-{}.bin", short_hex(&hasher.finalize()))
}

/// The first 16 bytes of a digest in hex: short enough for a file name, long enough never to
/// collide among a cache's entries.
pub fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// A path next to `path` that no other writer uses, for writing a file and renaming it into
/// place: tests and concurrent runs may produce the same file at the same time.
pub(crate) fn unique_temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bin");
        let values = vec![0.5, -1.0, 2.0, 3.0, 0.0, 1.5];
        write_floats(&path, b"TEST", &[2, 3], &values).unwrap();
        assert_eq!(read_floats(&path, b"TEST", &[2, 3]), Some(Some(values)));
        assert_eq!(read_floats(&path, b"TEST", &[3, 3]), Some(None));
        assert_eq!(read_floats(&path, b"ELSE", &[2, 3]), Some(None));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[14] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read_floats(&path, b"TEST", &[2, 3]), Some(None));
        assert_eq!(
            read_floats(&dir.path().join("missing.bin"), b"TEST", &[2, 3]),
            None
        );
    }

    #[test]
    fn content_names_depend_on_every_part() {
        let a = content_name("p", &[b"m1", b"x"]);
        assert_ne!(a, content_name("p", &[b"m2", b"x"]));
        assert_ne!(a, content_name("p", &[b"m1", b"y"]));
        assert_ne!(a, content_name("p", &[b"m1x", b""]));
        assert_eq!(a, content_name("p", &[b"m1", b"x"]));
    }

    #[test]
    fn code_digests_change_with_any_source() {
        let a = code_digest(&["fn a() {}", "fn b() {}"]);
        assert_eq!(a, code_digest(&["fn a() {}", "fn b() {}"]));
        assert_ne!(a, code_digest(&["fn a() {}", "fn b() { }"]));
        assert_ne!(a, code_digest(&["fn a() {}fn b() {}"]));
    }
}
