//! GGUF v3 writer.

use std::io::Write;
use std::path::Path;

use super::codec;
use super::types::GgmlType;
use super::value::{MetadataArray, MetadataValue};
use super::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GgufError, MAX_DIMS, MAX_NAME_LEN,
    Result, align_up,
};

/// Key of the quantization version; written as 2 when a quantized tensor is present.
pub const QUANTIZATION_VERSION_KEY: &str = "general.quantization_version";

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Collects the metadata and the encoded tensors of a GGUF v3 file, then streams the file out
/// (`write_to`) or writes it atomically (`write_file`) without a second in-memory copy.
///
/// Metadata keys and tensors are written in insertion order; tensor offsets are the running sum
/// of padded sizes (llama.cpp's rule). Dims are given in ggml order (`dims[0]` = contiguous axis).
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata pair; fails on a duplicate or over-long key.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: MetadataValue,
    ) -> Result<&mut Self> {
        let key = key.into();
        if key.len() >= 65536 {
            return Err(GgufError::KeyTooLong { len: key.len() });
        }
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(GgufError::DuplicateKey { key });
        }
        if key == ALIGNMENT_KEY {
            check_alignment_value(&value)?;
        }
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Sets `general.alignment` (must be a non-zero power of two).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self> {
        self.add_metadata(ALIGNMENT_KEY, MetadataValue::U32(alignment))
    }

    /// The alignment in force (from `general.alignment` or the default 32).
    pub fn alignment(&self) -> u32 {
        self.metadata
            .iter()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .and_then(|(_, v)| v.as_u32())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Adds a tensor from already-encoded bytes. `dims` are in ggml order.
    pub fn add_tensor_bytes(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        if name.len() >= MAX_NAME_LEN {
            return Err(GgufError::NameTooLong {
                len: name.len(),
                name,
            });
        }
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                name,
                n_dims: dims.len() as u32,
            });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor { name });
        }
        let expected = tensor_byte_size(&name, ty, dims)?;
        if expected != data.len() as u64 {
            return Err(GgufError::DataSizeMismatch {
                name,
                expected,
                actual: data.len() as u64,
            });
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(self)
    }

    /// Encodes `values` (ggml element order: `ne[0]` fastest) with the codec of `ty` and adds the
    /// tensor.
    pub fn add_tensor_f32(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        values: &[f32],
    ) -> Result<&mut Self> {
        let name = name.into();
        let n = element_count(dims).ok_or_else(|| GgufError::DimsOverflow {
            name: name.clone(),
            dims: dims.to_vec(),
        })?;
        if n != values.len() as u64 {
            return Err(GgufError::DataSizeMismatch {
                name,
                expected: n,
                actual: values.len() as u64,
            });
        }
        let data = codec::encode(ty, values)?;
        self.add_tensor_bytes(name, dims, ty, data)
    }

    /// Serializes the whole file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Streams the file to `out`: the header (metadata and tensor infos) is built in memory,
    /// the tensor data is written from the writer's buffers without another copy of the file.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<()> {
        let mut metadata = self.metadata.clone();
        if let Some(t) = self.tensors.iter().find(|t| t.ty.is_quantized()) {
            match metadata.iter().find(|(k, _)| k == QUANTIZATION_VERSION_KEY) {
                None => metadata.push((QUANTIZATION_VERSION_KEY.into(), MetadataValue::U32(2))),
                Some((_, MetadataValue::U32(_))) => {}
                Some(_) => {
                    return Err(GgufError::MissingQuantizationVersion {
                        name: t.name.clone(),
                    });
                }
            }
        }
        let align = self.alignment() as u64;
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in &metadata {
            write_string(&mut head, k);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            write_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + t.data.len() as u64, align).expect("size fits memory");
        }
        pad(&mut head, align);
        out.write_all(&head)?;
        let zeros = vec![0u8; align as usize];
        for t in &self.tensors {
            out.write_all(&t.data)?;
            let rem = (t.data.len() as u64 % align) as usize;
            if rem != 0 {
                out.write_all(&zeros[..align as usize - rem])?;
            }
        }
        Ok(())
    }

    /// Writes the file atomically: streamed to a temporary file in the same directory,
    /// synced, then renamed over `path`.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let file_name = path.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| -> Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            self.write_to(&mut f)?;
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            drop(f);
            Ok(std::fs::rename(&tmp, path)?)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Bytes of a tensor of `ty` with ggml dims `dims` (the writer's and the reader's one check):
/// the element count must fit, and `ne[0]` must be a multiple of the type's block size.
pub fn tensor_byte_size(name: &str, ty: GgmlType, dims: &[u64]) -> Result<u64> {
    let overflow = || GgufError::DimsOverflow {
        name: name.to_string(),
        dims: dims.to_vec(),
    };
    let n = element_count(dims).ok_or_else(overflow)?;
    if !dims[0].is_multiple_of(ty.block_size() as u64) {
        return Err(GgufError::NotBlockMultiple {
            name: name.to_string(),
            ty,
            ne0: dims[0],
            block_size: ty.block_size(),
        });
    }
    ty.byte_size(n).ok_or_else(overflow)
}

pub(crate) fn element_count(dims: &[u64]) -> Option<u64> {
    let mut n: u64 = 1;
    for &d in dims {
        if d > i64::MAX as u64 {
            return None;
        }
        n = n.checked_mul(d)?;
    }
    if n > i64::MAX as u64 { None } else { Some(n) }
}

pub(crate) fn check_alignment_value(v: &MetadataValue) -> Result<u32> {
    match v {
        MetadataValue::U32(a) if *a != 0 && a.is_power_of_two() => Ok(*a),
        MetadataValue::U32(a) => Err(GgufError::BadAlignment {
            value: format!("{a} is not a non-zero power of two"),
        }),
        other => Err(GgufError::BadAlignment {
            value: format!("type {:?} (must be u32)", other.value_type()),
        }),
    }
}

fn pad(out: &mut Vec<u8>, align: u64) {
    let target = align_up(out.len() as u64, align).expect("fits") as usize;
    out.resize(target, 0);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &MetadataValue) {
    match v {
        MetadataValue::U8(x) => out.push(*x),
        MetadataValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(x) => out.push(*x as u8),
        MetadataValue::String(s) => write_string(out, s),
        MetadataValue::Array(a) => write_array(out, a),
        MetadataValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn write_array(out: &mut Vec<u8>, a: &MetadataArray) {
    out.extend_from_slice(&a.element_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetadataArray::U8(v) => out.extend_from_slice(v),
        MetadataArray::I8(v) => le!(v),
        MetadataArray::U16(v) => le!(v),
        MetadataArray::I16(v) => le!(v),
        MetadataArray::U32(v) => le!(v),
        MetadataArray::I32(v) => le!(v),
        MetadataArray::F32(v) => le!(v),
        MetadataArray::Bool(v) => out.extend(v.iter().map(|b| *b as u8)),
        MetadataArray::String(v) => v.iter().for_each(|s| write_string(out, s)),
        MetadataArray::Array(v) => v.iter().for_each(|a| write_array(out, a)),
        MetadataArray::U64(v) => le!(v),
        MetadataArray::I64(v) => le!(v),
        MetadataArray::F64(v) => le!(v),
    }
}
