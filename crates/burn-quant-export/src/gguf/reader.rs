//! Hardened GGUF reader: every malformed input is a typed [`GgufError`], never a panic, and no
//! allocation exceeds what the remaining file bytes could encode.

use std::collections::HashSet;
use std::path::Path;

use super::codec;
use super::types::GgmlType;
use super::value::{MetadataArray, MetadataValue, ValueType};
use super::writer::{check_alignment_value, tensor_byte_size};
use super::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufError, MAX_ARRAY_DEPTH, MAX_DIMS,
    MAX_NAME_LEN, Result, align_up,
};

/// One tensor info of a parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (< 64 bytes).
    pub name: String,
    /// Dims in ggml order (`dims[0]` = `ne[0]`, the contiguous axis).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Unpadded data size in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file held in memory.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Alignment in force.
    pub alignment: u32,
    /// Metadata pairs in file order.
    pub metadata: Vec<(String, MetadataValue)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte offset of the data section.
    pub data_start: u64,
    bytes: Vec<u8>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field,
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(field)?))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in the rest.
    fn check_count(&self, count: u64, min_size: u64, field: &'static str) -> Result<usize> {
        let max = self.remaining() / min_size.max(1);
        if count > max {
            return Err(GgufError::CountTooLarge { field, count, max });
        }
        Ok(count as usize)
    }

    fn string(&mut self, field: &'static str) -> Result<String> {
        let len = self.u64(field)?;
        let len = self.check_count(len, 1, field)?;
        let bytes = self.take(len as u64, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { field })
    }
}

fn read_scalar(c: &mut Cursor<'_>, ty: ValueType, key: &str) -> Result<MetadataValue> {
    const F: &str = "metadata value";
    Ok(match ty {
        ValueType::U8 => MetadataValue::U8(c.arr::<1>(F)?[0]),
        ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(c.arr(F)?)),
        ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(c.arr(F)?)),
        ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(c.arr(F)?)),
        ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(c.arr(F)?)),
        ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(c.arr(F)?)),
        ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(c.arr(F)?)),
        ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(c.arr(F)?)),
        ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(c.arr(F)?)),
        ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(c.arr(F)?)),
        ValueType::Bool => match c.arr::<1>(F)?[0] {
            0 => MetadataValue::Bool(false),
            1 => MetadataValue::Bool(true),
            value => {
                return Err(GgufError::InvalidBool {
                    key: key.to_string(),
                    value,
                });
            }
        },
        ValueType::String => MetadataValue::String(c.string("metadata string value")?),
        ValueType::Array => MetadataValue::Array(read_array(c, key, 1)?),
    })
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<MetadataArray> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            key: key.to_string(),
            max: MAX_ARRAY_DEPTH,
        });
    }
    let type_id = c.u32("array element type")?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_string(),
        type_id,
    })?;
    let count = c.u64("array length")?;
    let n = c.check_count(count, ty.min_encoded_size(), "array length")?;
    macro_rules! prim {
        ($variant:ident, $t:ty) => {{
            let bytes = c.take((n * std::mem::size_of::<$t>()) as u64, "array elements")?;
            MetadataArray::$variant(
                bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|b| <$t>::from_le_bytes(b.try_into().expect("exact chunk")))
                    .collect(),
            )
        }};
    }
    Ok(match ty {
        ValueType::U8 => MetadataArray::U8(c.take(n as u64, "array elements")?.to_vec()),
        ValueType::I8 => prim!(I8, i8),
        ValueType::U16 => prim!(U16, u16),
        ValueType::I16 => prim!(I16, i16),
        ValueType::U32 => prim!(U32, u32),
        ValueType::I32 => prim!(I32, i32),
        ValueType::F32 => prim!(F32, f32),
        ValueType::U64 => prim!(U64, u64),
        ValueType::I64 => prim!(I64, i64),
        ValueType::F64 => prim!(F64, f64),
        ValueType::Bool => {
            let bytes = c.take(n as u64, "array elements")?;
            let mut v = Vec::with_capacity(n);
            for &b in bytes {
                match b {
                    0 => v.push(false),
                    1 => v.push(true),
                    value => {
                        return Err(GgufError::InvalidBool {
                            key: key.to_string(),
                            value,
                        });
                    }
                }
            }
            MetadataArray::Bool(v)
        }
        ValueType::String => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(c.string("array string element")?);
            }
            MetadataArray::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            MetadataArray::Array(v)
        }
    })
}

impl GgufFile {
    /// Reads and parses a file (the whole file is held in memory).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::parse(std::fs::read(path)?)
    }

    /// Parses a complete GGUF file from bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let (version, alignment, metadata, tensors, data_start) = Self::parse_header(&bytes)?;
        Ok(Self {
            version,
            alignment,
            metadata,
            tensors,
            data_start,
            bytes,
        })
    }

    /// Parses the header (metadata and tensor infos, every offset checked against `buf`'s
    /// length) of a complete file held elsewhere, e.g. memory-mapped, without copying it: the
    /// result holds no bytes ([`tensor_bytes`](Self::tensor_bytes) and
    /// [`bytes`](Self::bytes) are empty); tensor `t` is `buf[data_start + t.offset..][..t.size]`.
    pub fn parse_header_of(buf: &[u8]) -> Result<Self> {
        let (version, alignment, metadata, tensors, data_start) = Self::parse_header(buf)?;
        Ok(Self {
            version,
            alignment,
            metadata,
            tensors,
            data_start,
            bytes: Vec::new(),
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse_header(
        buf: &[u8],
    ) -> Result<(u32, u32, Vec<(String, MetadataValue)>, Vec<TensorInfo>, u64)> {
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count = c.u64("tensor_count")?;
        let kv_count = c.u64("kv_count")?;
        // A kv pair is at least 8 (key len) + 4 (type) + 1 bytes; a tensor info at least
        // 8 (name len) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset) bytes.
        let kv_count = c.check_count(kv_count, 13, "kv_count")?;
        let mut metadata = Vec::with_capacity(kv_count);
        let mut keys = HashSet::with_capacity(kv_count);
        for _ in 0..kv_count {
            let key = c.string("metadata key")?;
            if key.len() >= 65536 {
                return Err(GgufError::KeyTooLong { len: key.len() });
            }
            let type_id = c.u32("metadata value type")?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.clone(),
                type_id,
            })?;
            let value = read_scalar(&mut c, ty, &key)?;
            if !keys.insert(key.clone()) {
                return Err(GgufError::DuplicateKey { key });
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some((_, v)) => check_alignment_value(v)?,
            None => DEFAULT_ALIGNMENT,
        };
        let align = alignment as u64;

        let tensor_count = c.check_count(tensor_count, 32, "tensor_count")?;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count);
        let mut names = HashSet::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = c.string("tensor name")?;
            if name.len() >= MAX_NAME_LEN {
                return Err(GgufError::NameTooLong {
                    len: name.len(),
                    name,
                });
            }
            let n_dims = c.u32("n_dims")?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(GgufError::BadDimCount { name, n_dims });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dim")?);
            }
            let type_id = c.u32("ggml type")?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
                tensor: name.clone(),
                type_id,
            })?;
            let offset = c.u64("tensor offset")?;
            let size = tensor_byte_size(&name, ty, &dims)?;
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor { name });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }

        let file_len = buf.len() as u64;
        let data_start = align_up(c.pos as u64, align).expect("position fits");
        let mut expected = 0u64;
        for t in &tensors {
            if t.offset % align != 0 {
                return Err(GgufError::UnalignedOffset {
                    name: t.name.clone(),
                    offset: t.offset,
                    alignment: align,
                });
            }
            if t.offset < expected {
                return Err(GgufError::OverlappingOffset {
                    name: t.name.clone(),
                    offset: t.offset,
                    expected,
                });
            }
            if t.offset > expected {
                return Err(GgufError::OffsetGap {
                    name: t.name.clone(),
                    offset: t.offset,
                    expected,
                });
            }
            let end = data_start
                .checked_add(t.offset)
                .and_then(|v| v.checked_add(t.size))
                .and_then(|v| align_up(v, align));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(GgufError::OutOfBounds {
                        name: t.name.clone(),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    });
                }
            }
            expected = align_up(t.offset + t.size, align).expect("bounded by file length");
        }
        Ok((version, alignment, metadata, tensors, data_start))
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor info named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw (unpadded) bytes of a tensor (bounds were validated at parse time; an info from
    /// another file that does not fit yields an empty slice).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_start.saturating_add(info.offset);
        let end = start.saturating_add(info.size);
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.bytes.get(s..e))
            .unwrap_or(&[])
    }

    /// Decodes the named tensor to f32 (ggml element order) with its type's codec.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::NoSuchTensor(name.to_string()))?;
        codec::decode(info.ty, self.tensor_bytes(info))
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
