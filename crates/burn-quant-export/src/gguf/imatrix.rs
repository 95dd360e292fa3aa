//! Importance matrices (llama.cpp's "imatrix") from our calibration statistics.
//!
//! For a weight whose input is `x` (one row per calibration token, one column per input
//! feature), the importance of input column `j` is the mean of `x_j²` over the calibration
//! tokens: the diagonal of the GPTQ Hessian `XᵀX / n`. llama.cpp's importance-weighted
//! quantizers ([`super::codec::encode_weighted`]) use it to spend precision where activations are
//! large. [`Imatrix`] accumulates it from activations, and reads and writes llama.cpp's GGUF
//! imatrix files (`<weight>.in_sum2`, `<weight>.counts`, `imatrix.*` keys), so a file made by
//! `llama-imatrix` works here and ours works with `llama-quantize --imatrix`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataArray, MetadataValue, Result};

/// Accumulated Σx² per input column for each weight, with the token count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    entries: BTreeMap<String, ImatrixEntry>,
    /// Names of the calibration data sets (`imatrix.datasets`).
    pub datasets: Vec<String>,
    /// Calibration chunks seen (`imatrix.chunk_count`).
    pub chunk_count: u32,
    /// Tokens per chunk (`imatrix.chunk_size`).
    pub chunk_size: u32,
}

/// One weight's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// Σ over tokens of x_j², per input column j.
    pub in_sum2: Vec<f32>,
    /// Number of tokens accumulated.
    pub count: f32,
}

impl Imatrix {
    /// An empty matrix.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the activations `x` (row-major, `x.len() / d_in` tokens of `d_in` features) seen at
    /// the input of the weight named `weight` (its GGUF name, e.g. `blk.0.attn_q.weight`).
    pub fn accumulate(&mut self, weight: &str, x: &[f32], d_in: usize) -> Result<()> {
        if d_in == 0 || !x.len().is_multiple_of(d_in) {
            return Err(GgufError::BadLength {
                what: "activations for the imatrix",
                len: x.len(),
                multiple: d_in.max(1),
            });
        }
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            return Err(GgufError::InvalidImportance {
                index,
                value: x[index],
            });
        }
        let e = self
            .entries
            .entry(weight.to_string())
            .or_insert_with(|| ImatrixEntry {
                in_sum2: vec![0.0; d_in],
                count: 0.0,
            });
        if e.in_sum2.len() != d_in {
            return Err(GgufError::ImportanceLength {
                len: d_in,
                row_len: e.in_sum2.len(),
            });
        }
        // f64 partial sums per call keep long calibration runs accurate.
        let mut acc = vec![0f64; d_in];
        for row in x.chunks_exact(d_in) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += (*v as f64) * (*v as f64);
            }
        }
        for (s, a) in e.in_sum2.iter_mut().zip(acc) {
            *s = (*s as f64 + a) as f32;
        }
        e.count += (x.len() / d_in) as f32;
        Ok(())
    }

    /// The importance vector of `weight` (mean x² per input column), if recorded.
    pub fn importance(&self, weight: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(weight)?;
        let n = e.count.max(1.0);
        Some(e.in_sum2.iter().map(|s| s / n).collect())
    }

    /// The raw entry of `weight`.
    pub fn entry(&self, weight: &str) -> Option<&ImatrixEntry> {
        self.entries.get(weight)
    }

    /// Names of the weights with statistics, sorted.
    pub fn weights(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes llama.cpp's GGUF imatrix layout (atomically).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut w = GgufWriter::new();
        w.add_metadata("general.type", MetadataValue::String("imatrix".into()))?;
        w.add_metadata(
            "imatrix.datasets",
            MetadataValue::Array(MetadataArray::String(self.datasets.clone())),
        )?;
        w.add_metadata("imatrix.chunk_count", MetadataValue::U32(self.chunk_count))?;
        w.add_metadata("imatrix.chunk_size", MetadataValue::U32(self.chunk_size))?;
        for (name, e) in &self.entries {
            w.add_tensor_f32(
                format!("{name}.in_sum2"),
                &[e.in_sum2.len() as u64, 1],
                GgmlType::F32,
                &e.in_sum2,
            )?;
            w.add_tensor_f32(format!("{name}.counts"), &[1, 1], GgmlType::F32, &[e.count])?;
        }
        w.write_file(path)
    }

    /// Reads a GGUF imatrix file (as `llama-imatrix` writes it). Only single-matrix weights are
    /// kept; a mixture-of-experts entry (several counts) is an error naming it.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self> {
        let f = GgufFile::read(path)?;
        let mut m = Imatrix::new();
        if let Some(MetadataValue::Array(MetadataArray::String(d))) = f.get("imatrix.datasets") {
            m.datasets = d.clone();
        }
        m.chunk_count = f
            .get("imatrix.chunk_count")
            .and_then(|v| v.as_u32())
            .unwrap_or(0);
        m.chunk_size = f
            .get("imatrix.chunk_size")
            .and_then(|v| v.as_u32())
            .unwrap_or(0);
        for t in &f.tensors {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let counts_name = format!("{name}.counts");
            let counts = f.tensor_f32(&counts_name)?;
            let [count] = counts[..] else {
                return Err(GgufError::ImportanceLength {
                    len: counts.len(),
                    row_len: 1,
                });
            };
            let in_sum2 = f.tensor_f32(&t.name)?;
            if let Some(index) = in_sum2.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(GgufError::InvalidImportance {
                    index,
                    value: in_sum2[index],
                });
            }
            m.entries
                .insert(name.to_string(), ImatrixEntry { in_sum2, count });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_is_the_mean_square_per_column_and_round_trips_through_gguf() {
        let mut m = Imatrix::new();
        // Two calls of 2 tokens × 3 features.
        m.accumulate("blk.0.attn_q.weight", &[1.0, -2.0, 0.0, 3.0, 0.5, 0.0], 3)
            .unwrap();
        m.accumulate("blk.0.attn_q.weight", &[0.0, 0.0, 2.0, 1.0, 0.5, 0.0], 3)
            .unwrap();
        m.datasets = vec!["emma.txt".into()];
        m.chunk_count = 2;
        m.chunk_size = 2;
        let imp = m.importance("blk.0.attn_q.weight").unwrap();
        assert_eq!(imp, vec![11.0 / 4.0, 4.5 / 4.0, 4.0 / 4.0]);
        let dir = std::env::temp_dir().join(format!("burnq-imatrix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("imatrix.gguf");
        m.write_file(&path).unwrap();
        let back = Imatrix::read_file(&path).unwrap();
        assert_eq!(back, m);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_activations_are_errors() {
        let mut m = Imatrix::new();
        assert!(matches!(
            m.accumulate("w", &[1.0; 5], 3),
            Err(GgufError::BadLength { .. })
        ));
        assert!(matches!(
            m.accumulate("w", &[1.0, f32::NAN, 0.0], 3),
            Err(GgufError::InvalidImportance { index: 1, .. })
        ));
        m.accumulate("w", &[1.0; 3], 3).unwrap();
        assert!(matches!(
            m.accumulate("w", &[1.0; 4], 4),
            Err(GgufError::ImportanceLength { .. })
        ));
    }
}
