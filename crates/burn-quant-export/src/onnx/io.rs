//! Writing and reading `.onnx` files.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::error::{OnnxError, Result};
use super::proto::ModelProto;

/// Writes `model` to `path` atomically: the bytes go to a temporary file in the same directory,
/// which is then renamed over `path`, so a reader never sees a half-written model.
pub fn save_onnx(path: impl AsRef<Path>, model: &ModelProto) -> Result<()> {
    let path = path.as_ref();
    let io = |source: std::io::Error| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("the path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    // Unique per process and call, so concurrent saves to one path never share a temp file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&model.encode_to_vec())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Reads an ONNX model from `path` (any producer's: parts not modelled by
/// [`super::proto`] are skipped).
pub fn read_onnx(path: impl AsRef<Path>) -> Result<ModelProto> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, path.to_path_buf())
}

/// Decodes an ONNX model from its protobuf bytes.
pub fn decode_onnx(bytes: &[u8]) -> Result<ModelProto> {
    decode(bytes, PathBuf::from("<bytes>"))
}

fn decode(bytes: &[u8], path: PathBuf) -> Result<ModelProto> {
    // prost bounds nesting (recursion limit 100) and never allocates more than the input
    // holds, so hostile bytes give an error, not a crash.
    ModelProto::decode(bytes).map_err(|source| OnnxError::Decode { path, source })
}
