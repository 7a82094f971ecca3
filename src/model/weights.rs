//! Where a quantized matrix's blocks lie: in a tensor candle loaded, or in place in a memory map
//! of the model file.
//!
//! tqa's own kernels (`kernels`) read the blocks as the GGUF file stores them, so on CPUs where
//! they run the matrices need not be copied at all: loading the default model copied its 1 GB
//! up to four times (read into a buffer, into candle's block vectors, stacked, into candle's
//! storage again), 2–3 s on a laptop-class CPU. Mapped, the weights are the file's pages: the
//! operating system's file cache holds them once, for every process that loads the model.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Result};
use memmap2::Mmap;

/// A `rows` × `cols` quantized matrix, row-major.
#[derive(Clone)]
pub struct QuantBytes {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    source: Source,
}

#[derive(Clone)]
enum Source {
    Tensor(Arc<QTensor>),
    Mapped { map: Arc<Mmap>, range: Range<usize> },
}

impl QuantBytes {
    pub fn of_tensor(tensor: Arc<QTensor>) -> Result<Self> {
        let (rows, cols) = tensor.shape().dims2()?;
        Ok(Self {
            dtype: tensor.dtype(),
            rows,
            cols,
            source: Source::Tensor(tensor),
        })
    }

    /// The matrix whose blocks start `start` bytes into `map`.
    pub fn mapped(
        map: Arc<Mmap>,
        start: usize,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        if !cols.is_multiple_of(dtype.block_size()) {
            candle_core::bail!(
                "a {dtype:?} matrix cannot be {cols} values wide: the model file is damaged; \
                 delete it and fetch it again (`models/fetch NAME`)"
            );
        }
        let end = start + rows * (cols / dtype.block_size()) * dtype.type_size();
        if end > map.len() {
            candle_core::bail!(
                "a {dtype:?} matrix of {rows}x{cols} ends past the end of the model file: the \
                 file is damaged; delete it and fetch it again (`models/fetch NAME`)"
            );
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            source: Source::Mapped {
                map,
                range: start..end,
            },
        })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn is_cpu(&self) -> bool {
        match &self.source {
            Source::Tensor(tensor) => tensor.device().is_cpu(),
            Source::Mapped { .. } => true,
        }
    }

    pub fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        match &self.source {
            Source::Tensor(tensor) => tensor.data(),
            Source::Mapped { map, range } => Ok(Cow::Borrowed(&map[range.clone()])),
        }
    }

    /// The matrix as a candle tensor, for candle's kernels: a mapped matrix is copied.
    pub fn tensor(&self) -> Result<Arc<QTensor>> {
        match &self.source {
            Source::Tensor(tensor) => Ok(tensor.clone()),
            Source::Mapped { .. } => {
                let storage = QStorage::from_data(self.bytes()?, &Device::Cpu, self.dtype)?;
                Ok(Arc::new(QTensor::new(storage, (self.rows, self.cols))?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use candle_core::Tensor;

    use super::*;

    /// A file holding `header` bytes, then `tensor`'s blocks, and a map of it.
    fn mapped_file(header: usize, tensor: &QTensor) -> (tempfile::NamedTempFile, Arc<Mmap>) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&vec![7u8; header]).unwrap();
        file.write_all(&tensor.data().unwrap()).unwrap();
        file.flush().unwrap();
        // SAFETY: the file is the test's own and is not written while mapped.
        let map = unsafe { Mmap::map(file.as_file()) }.unwrap();
        (file, Arc::new(map))
    }

    #[test]
    fn a_mapped_matrix_is_the_tensor_stored_in_the_file() {
        let values = Tensor::randn(0f32, 1.0, (3, 512), &Device::Cpu).unwrap();
        let tensor = QTensor::quantize(&values, GgmlDType::Q4K).unwrap();
        let (_file, map) = mapped_file(96, &tensor);
        let mapped = QuantBytes::mapped(map, 96, GgmlDType::Q4K, 3, 512).unwrap();
        assert_eq!((mapped.rows(), mapped.cols()), (3, 512));
        assert_eq!(mapped.bytes().unwrap(), tensor.data().unwrap());
        let copied = mapped.tensor().unwrap().dequantize(&Device::Cpu).unwrap();
        let original = tensor.dequantize(&Device::Cpu).unwrap();
        let difference = (copied - original)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(difference.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn a_matrix_that_runs_past_the_end_of_the_file_is_reported_as_damage() {
        let values = Tensor::randn(0f32, 1.0, (2, 256), &Device::Cpu).unwrap();
        let tensor = QTensor::quantize(&values, GgmlDType::Q6K).unwrap();
        let (_file, map) = mapped_file(32, &tensor);
        let error = QuantBytes::mapped(map.clone(), 32, GgmlDType::Q6K, 3, 256)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("damaged"), "{error}");
        let error = QuantBytes::mapped(map, 32, GgmlDType::Q6K, 2, 100)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("damaged"), "{error}");
    }
}
