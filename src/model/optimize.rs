//! One-time conversion of tensor types that candle 0.11 runs only with scalar kernels (Q4_1,
//! Q5_0, Q5_1) to Q8_0, which has AVX kernels: several times faster for the same answers. The
//! converted file is written once next to the weights' cache and reused. Where tqa's own kernels
//! run a type on this CPU (`super::kernels`), its tensors are left as they are.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::ModelError;

/// Types with no SIMD kernel in candle 0.11.
const SLOW_TYPES: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// Whether any tensor of `content` uses a type that neither candle nor tqa's own kernels run
/// fast on this CPU, so that [`write_optimized_copy`] is worth it.
pub fn has_slow_tensors(content: &gguf_file::Content) -> bool {
    content
        .tensor_infos
        .values()
        .any(|t| SLOW_TYPES.contains(&t.ggml_dtype) && !super::kernels::prefers(t.ggml_dtype))
}

/// Path of the converted copy of `source` inside `dir`, named after the source file, its size
/// and the code that converts it, so that a replaced source, or a build that converts
/// differently, converts again.
pub fn optimized_path(source: &Path, dir: &Path) -> Result<PathBuf, ModelError> {
    let len = std::fs::metadata(source)
        .map_err(|e| ModelError::Io {
            path: source.to_path_buf(),
            source: e,
        })?
        .len();
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let code = crate::cache::short_hex(&crate::cache::code_digest(&[include_str!("optimize.rs")]));
    Ok(dir.join(format!("{stem}.{len}.{code}.q8_0.gguf")))
}

/// Whether `name` is a copy of the source named `stem` in [`optimized_path`]'s form, of any
/// source size and conversion code.
fn is_copy_of(name: &str, stem: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(stem)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_suffix(".q8_0.gguf"))
    else {
        return false;
    };
    let Some((len, code)) = rest.split_once('.') else {
        return false;
    };
    !len.is_empty()
        && len.chars().all(|c| c.is_ascii_digit())
        && code.len() == 32
        && code.chars().all(|c| c.is_ascii_hexdigit())
}

/// Deletes the other copies of `target`'s source beside it: those of a replaced source or of
/// another build's conversion, which no load of this build reads again (hundreds of MB each).
/// Best effort: a copy that cannot be deleted only takes disk space.
fn remove_stale_copies(target: &Path, stem: &str) {
    let Some(dir) = target.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = path != target
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| is_copy_of(n, stem));
        if stale {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes a copy of the GGUF at `source` to `target` with every slow-kernel tensor re-quantized
/// to Q8_0; metadata and all other tensors are copied as they are. Written to a temporary file
/// and renamed, so an interrupted conversion leaves nothing half-written behind.
pub fn write_optimized_copy(source: &Path, target: &Path) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| ModelError::Io { path, source: e }
    };
    let mut file = File::open(source).map_err(io(source))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| ModelError::NotGguf {
        path: source.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(&mut file, name, &Device::Cpu)?;
        tensors.push((name.as_str(), requantize(tensor)?));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();

    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = crate::cache::unique_temp_sibling(target);
    let mut out = BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
    gguf_file::write(&mut out, &metadata, &tensor_refs)?;
    drop(out);
    std::fs::rename(&tmp, target).map_err(io(target))?;
    if let Some(stem) = source.file_stem().and_then(|s| s.to_str()) {
        remove_stale_copies(target, stem);
    }
    Ok(())
}

fn requantize(tensor: QTensor) -> Result<QTensor, ModelError> {
    let blocks_fit = tensor
        .shape()
        .dims()
        .last()
        .is_some_and(|d| d % GgmlDType::Q8_0.block_size() == 0);
    if !SLOW_TYPES.contains(&tensor.dtype()) || !blocks_fit {
        return Ok(tensor);
    }
    let dense = tensor.dequantize(&Device::Cpu)?;
    Ok(QTensor::quantize(&dense, GgmlDType::Q8_0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copies_of_the_same_source_are_stale() {
        let dir = tempfile::tempdir().expect("temp dir");
        let code = "0123456789abcdef0123456789abcdef";
        let current = dir.path().join(format!("model.Q4_1.98.{code}.q8_0.gguf"));
        let names = [
            format!("model.Q4_1.97.{code}.q8_0.gguf"),
            format!("model.Q4_1.98.{}.q8_0.gguf", "f".repeat(32)),
            format!("model.Q4_1.v2.98.{code}.q8_0.gguf"),
            format!("other.98.{code}.q8_0.gguf"),
            "model.Q4_1.98.notes.txt".to_string(),
        ];
        for name in &names {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::write(&current, b"x").expect("write");
        remove_stale_copies(&current, "model.Q4_1");
        let left: Vec<bool> = names.iter().map(|n| dir.path().join(n).exists()).collect();
        assert_eq!(left, [false, false, true, true, true]);
        assert!(current.exists());
    }

    #[test]
    fn a_replaced_source_or_other_conversion_code_gets_another_copy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("model.Q4_1.gguf");
        let copy_of = |bytes: &[u8]| {
            std::fs::write(&source, bytes).expect("write");
            optimized_path(&source, dir.path()).expect("path")
        };
        let first = copy_of(b"one");
        assert_ne!(first, copy_of(b"three"));
        let name = first
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let code_digest =
            |part: &str| part.len() == 32 && part.chars().all(|c| c.is_ascii_hexdigit());
        assert!(
            name.starts_with("model.Q4_1.3.")
                && name.ends_with(".q8_0.gguf")
                && name.split('.').any(code_digest),
            "{name}"
        );
    }
}
