//! `burnq inspect FILE`: what a GGUF, ONNX or burnpack file holds (tensors, types, shapes,
//! bytes, metadata), read with burn-quant's own hardened readers.

use std::fmt::Write as _;
use std::path::Path;

use burn_quant::export::gguf::{GgmlType, GgufFile, MetadataArray, MetadataValue};

use crate::error::{CliError, Result};
use crate::table;

/// How many array elements a metadata line shows before eliding the rest.
const SHOWN_ELEMENTS: usize = 6;

/// The file kinds `inspect` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// GGUF v2/v3 (recognised by its magic).
    Gguf,
    /// A Burn burnpack record (recognised by its magic).
    Burnpack,
    /// An ONNX model (protobuf has no magic: recognised by the `.onnx` extension).
    Onnx,
}

/// burnpack's magic number, little-endian on disk.
const BURNPACK_MAGIC: [u8; 4] = 0x4255_524Eu32.to_le_bytes();

/// Recognises a file by its first bytes (and, where a format has no magic, its extension).
pub fn detect(path: &Path, head: &[u8]) -> Result<FileKind> {
    if head.starts_with(b"GGUF") {
        return Ok(FileKind::Gguf);
    }
    if head.starts_with(&BURNPACK_MAGIC) {
        return Ok(FileKind::Burnpack);
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        return Ok(FileKind::Onnx);
    }
    Err(CliError::config(
        "file",
        path.display(),
        "neither GGUF nor burnpack (no magic) nor ONNX (no .onnx extension)",
    ))
}

/// The inspection report of the file at `path`.
pub fn inspect(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| CliError::Io {
        what: path.display().to_string(),
        source,
    })?;
    match detect(path, &bytes[..bytes.len().min(8)])? {
        FileKind::Gguf => {
            let file = GgufFile::parse(bytes).map_err(|source| CliError::Gguf {
                what: path.display().to_string(),
                source,
            })?;
            Ok(gguf_report(&file))
        }
        FileKind::Onnx => {
            let onnx_err = |source| CliError::Onnx {
                what: path.display().to_string(),
                source,
            };
            let model = burn_quant::export::onnx::decode_onnx(&bytes).map_err(onnx_err)?;
            Ok(format!(
                "ONNX, {} bytes\n{}",
                bytes.len(),
                burn_quant::export::onnx::summarize(&model)
            ))
        }
        FileKind::Burnpack => {
            let (tensors, metadata) =
                burn_quant::export::burnpack::describe(path).map_err(|source| {
                    CliError::Burnpack {
                        what: path.display().to_string(),
                        source,
                    }
                })?;
            Ok(burnpack_report(bytes.len(), &tensors, &metadata))
        }
    }
}

/// Renders a burnpack record: metadata, then name, dtype, shape and bytes of every tensor.
pub fn burnpack_report(
    file_len: usize,
    tensors: &[burn_quant::export::burnpack::PackedTensorInfo],
    metadata: &[(String, String)],
) -> String {
    let mut out = format!("burnpack: {} tensors, {file_len} bytes\n", tensors.len());
    out.push_str("\nmetadata\n");
    for (k, v) in metadata {
        let _ = writeln!(out, "  {k} = {}", quote(v));
    }
    let rows: Vec<[String; 4]> = tensors
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.dtype.clone(),
                format!("{:?}", t.shape),
                t.bytes.to_string(),
            ]
        })
        .collect();
    out.push_str("\ntensors\n");
    out.push_str(&table::aligned(["name", "dtype", "shape", "bytes"], &rows));
    out
}

/// Renders a parsed GGUF: header facts, every metadata pair, a tensor table and totals by type.
pub fn gguf_report(file: &GgufFile) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "GGUF v{}: {} tensors, {} metadata keys, {} bytes",
        file.version,
        file.tensors.len(),
        file.metadata.len(),
        file.bytes().len()
    );
    out.push_str("\nmetadata\n");
    for (key, value) in &file.metadata {
        let _ = writeln!(out, "  {key} = {}", show_value(value));
    }
    let rows: Vec<[String; 5]> = file
        .tensors
        .iter()
        .map(|t| {
            let n = t.n_elements();
            [
                t.name.clone(),
                format!("{:?}", t.ty),
                format!("{:?}", t.dims),
                t.size.to_string(),
                format!("{:.3}", bits_per_weight(t.size, n)),
            ]
        })
        .collect();
    out.push_str("\ntensors (dims in ggml order, ne[0] first)\n");
    out.push_str(&table::aligned(
        ["name", "type", "dims", "bytes", "bits/weight"],
        &rows,
    ));
    let mut by_type: Vec<(GgmlType, usize, u64, u64)> = vec![];
    for t in &file.tensors {
        match by_type.iter_mut().find(|e| e.0 == t.ty) {
            Some(e) => {
                e.1 += 1;
                e.2 += t.size;
                e.3 += t.n_elements();
            }
            None => by_type.push((t.ty, 1, t.size, t.n_elements())),
        }
    }
    let total: (u64, u64) = by_type.iter().fold((0, 0), |a, e| (a.0 + e.2, a.1 + e.3));
    let mut rows: Vec<[String; 5]> = by_type
        .iter()
        .map(|(ty, count, bytes, n)| {
            [
                format!("{ty:?}"),
                count.to_string(),
                n.to_string(),
                bytes.to_string(),
                format!("{:.3}", bits_per_weight(*bytes, *n)),
            ]
        })
        .collect();
    rows.push([
        "total".into(),
        file.tensors.len().to_string(),
        total.1.to_string(),
        total.0.to_string(),
        format!("{:.3}", bits_per_weight(total.0, total.1)),
    ]);
    out.push_str("\nby type\n");
    out.push_str(&table::aligned(
        ["type", "tensors", "elements", "bytes", "bits/weight"],
        &rows,
    ));
    out
}

fn bits_per_weight(bytes: u64, elements: u64) -> f64 {
    if elements == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elements as f64
    }
}

/// One metadata value as text: scalars as themselves, strings quoted (long ones cut), arrays
/// as `[count × type] [first elements, …]`.
pub fn show_value(value: &MetadataValue) -> String {
    match value {
        MetadataValue::String(s) => quote(s),
        MetadataValue::Array(a) => show_array(a),
        MetadataValue::U8(v) => v.to_string(),
        MetadataValue::I8(v) => v.to_string(),
        MetadataValue::U16(v) => v.to_string(),
        MetadataValue::I16(v) => v.to_string(),
        MetadataValue::U32(v) => v.to_string(),
        MetadataValue::I32(v) => v.to_string(),
        MetadataValue::U64(v) => v.to_string(),
        MetadataValue::I64(v) => v.to_string(),
        MetadataValue::F32(v) => v.to_string(),
        MetadataValue::F64(v) => v.to_string(),
        MetadataValue::Bool(v) => v.to_string(),
    }
}

fn quote(s: &str) -> String {
    const MAX: usize = 80;
    let cut: String = s.chars().take(MAX).collect();
    let more = if s.chars().count() > MAX { "…" } else { "" };
    format!("{cut:?}{more}")
}

fn show_array(a: &MetadataArray) -> String {
    fn list<T>(name: &str, v: &[T], f: impl Fn(&T) -> String) -> String {
        let shown: Vec<String> = v.iter().take(SHOWN_ELEMENTS).map(f).collect();
        let more = if v.len() > SHOWN_ELEMENTS {
            ", …"
        } else {
            ""
        };
        format!("[{} × {name}] [{}{more}]", v.len(), shown.join(", "))
    }
    match a {
        MetadataArray::U8(v) => list("u8", v, u8::to_string),
        MetadataArray::I8(v) => list("i8", v, i8::to_string),
        MetadataArray::U16(v) => list("u16", v, u16::to_string),
        MetadataArray::I16(v) => list("i16", v, i16::to_string),
        MetadataArray::U32(v) => list("u32", v, u32::to_string),
        MetadataArray::I32(v) => list("i32", v, i32::to_string),
        MetadataArray::U64(v) => list("u64", v, u64::to_string),
        MetadataArray::I64(v) => list("i64", v, i64::to_string),
        MetadataArray::F32(v) => list("f32", v, f32::to_string),
        MetadataArray::F64(v) => list("f64", v, f64::to_string),
        MetadataArray::Bool(v) => list("bool", v, bool::to_string),
        MetadataArray::String(v) => list("string", v, |s| quote(s)),
        MetadataArray::Array(v) => list("array", v, show_array),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_quant::export::gguf::GgufWriter;

    #[test]
    fn gguf_report_lists_metadata_tensors_and_totals() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.quantization_version", MetadataValue::U32(2))
            .unwrap();
        w.add_metadata(
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(
                (0..10).map(|i| format!("t{i}")).collect(),
            )),
        )
        .unwrap();
        w.add_tensor_f32("blk.0.w", &[64, 2], GgmlType::Q8_0, &[0.25; 128])
            .unwrap();
        w.add_tensor_f32("norm", &[64], GgmlType::F32, &[1.0; 64])
            .unwrap();
        let file = GgufFile::parse(w.to_bytes().unwrap()).unwrap();
        let r = gguf_report(&file);
        assert!(r.starts_with("GGUF v3: 2 tensors, 2 metadata keys"), "{r}");
        assert!(r.contains("tokenizer.ggml.tokens = [10 × string] [\"t0\", \"t1\", \"t2\", \"t3\", \"t4\", \"t5\", …]"), "{r}");
        // Q8_0: 4 blocks of 34 bytes = 136 bytes for 128 weights = 8.5 bits per weight.
        let has_row = |cells: &[&str]| {
            r.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == cells)
        };
        assert!(
            has_row(&["blk.0.w", "Q8_0", "[64,", "2]", "136", "8.500"]),
            "{r}"
        );
        // 136 + 256 bytes for 192 weights.
        assert!(has_row(&["total", "2", "192", "392", "16.333"]), "{r}");
    }

    #[test]
    fn unknown_files_are_errors() {
        let e = detect(Path::new("x.bin"), b"\x00\x01").unwrap_err();
        assert!(e.to_string().contains("x.bin"), "{e}");
    }
}
