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
    /// Encoded bytes; `None` for a tensor declared with [`GgufWriter::declare_tensor`].
    data: Option<Vec<u8>>,
    /// Unpadded byte size.
    size: u64,
}

/// Collects the metadata and the encoded tensors of a GGUF v3 file, then streams the file out
/// (`write_to`) or writes it atomically (`write_file`) without a second in-memory copy.
///
/// Metadata keys and tensors are written in insertion order; tensor offsets are the running sum
/// of padded sizes (llama.cpp's rule). Dims are given in ggml order (`dims[0]` = contiguous axis).
///
/// For files larger than memory, tensors can be *declared* (name, dims, type: all the header
/// needs) with [`declare_tensor`](Self::declare_tensor) and their bytes written one at a time,
/// in declaration order, through the [`GgufStream`] that [`stream_file`](Self::stream_file)
/// opens.
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
        self.push_tensor(name.into(), dims, ty, Some(data))
    }

    /// Declares a tensor whose bytes are written later, through [`GgufStream::write_tensor`]
    /// (the header needs only its name, dims and type). A writer holding declared tensors can
    /// only be streamed ([`stream_file`](Self::stream_file)).
    pub fn declare_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<&mut Self> {
        self.push_tensor(name.into(), dims, ty, None)
    }

    fn push_tensor(
        &mut self,
        name: String,
        dims: &[u64],
        ty: GgmlType,
        data: Option<Vec<u8>>,
    ) -> Result<&mut Self> {
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
        if let Some(data) = &data
            && expected != data.len() as u64
        {
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
            size: expected,
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
    /// Fails on a declared tensor ([`declare_tensor`](Self::declare_tensor): no bytes yet).
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<()> {
        if let Some(t) = self.tensors.iter().find(|t| t.data.is_none()) {
            return Err(GgufError::DataSizeMismatch {
                name: t.name.clone(),
                expected: t.size,
                actual: 0,
            });
        }
        out.write_all(&self.header()?)?;
        let align = self.alignment() as u64;
        for t in &self.tensors {
            write_padded(out, t.data.as_deref().unwrap_or_default(), align)?;
        }
        Ok(())
    }

    /// Metadata and tensor infos, padded to the alignment: everything before the data.
    fn header(&self) -> Result<Vec<u8>> {
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
            offset = align_up(offset + t.size, align).expect("size fits memory");
        }
        pad(&mut head, align);
        Ok(head)
    }

    /// Opens `path` for streaming: the header (metadata and every tensor's info) is written at
    /// once to a temporary file beside `path`; tensors added with their bytes are written when
    /// their turn comes, declared ones by [`GgufStream::write_tensor`], in order.
    /// [`GgufStream::finish`] syncs and renames the file into place (atomic, as
    /// [`write_file`](Self::write_file)); a stream dropped unfinished removes its temporary.
    pub fn stream_file(self, path: impl AsRef<Path>) -> Result<GgufStream> {
        let path = path.as_ref().to_path_buf();
        let tmp = temporary_path(&path)?;
        let header = self.header()?;
        let file = std::fs::File::create(&tmp)?;
        let mut stream = GgufStream {
            out: Some(std::io::BufWriter::new(file)),
            tmp,
            path,
            align: self.alignment() as u64,
            written: 0,
            pending: self.tensors.into_iter().collect(),
        };
        stream.write(&header)?;
        stream.flush_ready()?;
        Ok(stream)
    }

    /// Writes the file atomically: streamed to a temporary file in the same directory,
    /// synced, then renamed over `path`.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tmp = temporary_path(path)?;
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

/// A GGUF file being written tensor by tensor ([`GgufWriter::stream_file`]): the header is
/// on disk, the declared tensors' bytes come one at a time, so memory holds one tensor.
#[derive(Debug)]
pub struct GgufStream {
    out: Option<std::io::BufWriter<std::fs::File>>,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    align: u64,
    written: u64,
    pending: std::collections::VecDeque<PendingTensor>,
}

impl GgufStream {
    /// Writes the bytes of the next declared tensor, `name` (checked against the header's
    /// order and size).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(next) = self.pending.front() else {
            return Err(GgufError::StreamOrder {
                expected: String::new(),
                found: name.to_string(),
            });
        };
        if next.name != name {
            return Err(GgufError::StreamOrder {
                expected: next.name.clone(),
                found: name.to_string(),
            });
        }
        if next.size != data.len() as u64 {
            return Err(GgufError::DataSizeMismatch {
                name: name.to_string(),
                expected: next.size,
                actual: data.len() as u64,
            });
        }
        self.pending.pop_front();
        self.write_tensor_data(data)?;
        self.flush_ready()
    }

    /// The name of the tensor the stream expects next, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.pending.front().map(|t| t.name.as_str())
    }

    /// Bytes written so far (header included).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Checks that every tensor was written, syncs the file and renames it into place;
    /// returns the file size.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(t) = self.pending.front() {
            return Err(GgufError::StreamOrder {
                expected: t.name.clone(),
                found: String::new(),
            });
        }
        let out = self.out.take().expect("a live stream has its file");
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(self.written)
    }

    /// Writes the tensors at the front that were given with their bytes.
    fn flush_ready(&mut self) -> Result<()> {
        while self.pending.front().is_some_and(|t| t.data.is_some()) {
            let t = self.pending.pop_front().expect("checked");
            self.write_tensor_data(t.data.as_deref().unwrap_or_default())?;
        }
        Ok(())
    }

    fn write_tensor_data(&mut self, data: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("a live stream has its file");
        self.written += write_padded(out, data, self.align)?;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("a live stream has its file");
        out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

impl Drop for GgufStream {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            // Unfinished: the temporary file is not a valid GGUF.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `data` followed by zeros up to the alignment; returns the bytes written.
fn write_padded<W: Write>(out: &mut W, data: &[u8], align: u64) -> Result<u64> {
    out.write_all(data)?;
    let rem = data.len() as u64 % align;
    let mut n = data.len() as u64;
    if rem != 0 {
        let zeros = vec![0u8; (align - rem) as usize];
        out.write_all(&zeros)?;
        n += align - rem;
    }
    Ok(n)
}

/// The temporary file beside `path` that is renamed over it: `.<name>.tmp<pid>`.
fn temporary_path(path: &Path) -> Result<std::path::PathBuf> {
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
    Ok(dir.join(tmp_name))
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

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::gguf::GgufFile;

    fn writer(declared: bool) -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_metadata("general.name", MetadataValue::String("s".into()))
            .unwrap();
        let a: Vec<f32> = (0..64).map(|i| i as f32 / 7.0).collect();
        w.add_tensor_f32("a", &[64], GgmlType::F32, &a).unwrap();
        let b = codec::encode(GgmlType::Q8_0, &a).unwrap();
        if declared {
            w.declare_tensor("b", &[32, 2], GgmlType::Q8_0).unwrap();
            w.declare_tensor("c", &[3], GgmlType::F32).unwrap();
        } else {
            w.add_tensor_bytes("b", &[32, 2], GgmlType::Q8_0, b)
                .unwrap();
            w.add_tensor_f32("c", &[3], GgmlType::F32, &[1.0, 2.0, 3.0])
                .unwrap();
        }
        w
    }

    /// Declared tensors streamed in order give the same bytes as the in-memory writer;
    /// out-of-order, mis-sized and missing tensors are typed errors, and an unfinished stream
    /// leaves no file behind.
    #[test]
    fn streamed_file_equals_the_written_one() {
        let dir = std::env::temp_dir().join(format!("gguf-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (whole, streamed) = (dir.join("whole.gguf"), dir.join("streamed.gguf"));
        writer(false).write_file(&whole).unwrap();
        assert!(writer(true).write_to(&mut Vec::new()).is_err());
        let a: Vec<f32> = (0..64).map(|i| i as f32 / 7.0).collect();
        let b = codec::encode(GgmlType::Q8_0, &a).unwrap();
        let c: Vec<u8> = [1f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut s = writer(true).stream_file(&streamed).unwrap();
        assert_eq!(s.next_tensor(), Some("b"));
        assert!(matches!(
            s.write_tensor("c", &c),
            Err(GgufError::StreamOrder { .. })
        ));
        assert!(matches!(
            s.write_tensor("b", &b[1..]),
            Err(GgufError::DataSizeMismatch { .. })
        ));
        s.write_tensor("b", &b).unwrap();
        s.write_tensor("c", &c).unwrap();
        let n = s.finish().unwrap();
        let bytes = std::fs::read(&streamed).unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(bytes, std::fs::read(&whole).unwrap());
        let header = GgufFile::parse_header_of(&bytes).unwrap();
        assert_eq!(
            header.tensors,
            GgufFile::parse(bytes.clone()).unwrap().tensors
        );
        assert!(header.bytes().is_empty());

        let unfinished = dir.join("unfinished.gguf");
        let mut s = writer(true).stream_file(&unfinished).unwrap();
        s.write_tensor("b", &b).unwrap();
        assert!(matches!(s.finish(), Err(GgufError::StreamOrder { .. })));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
