//! Errors of the GGUF container and codecs.

use super::types::GgmlType;

/// Everything that can go wrong reading or writing GGUF; each variant names the offending
/// field and value.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Underlying I/O failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with "GGUF".
    #[error("bad magic 0x{found:08x} (expected 0x46554747, \"GGUF\")")]
    BadMagic {
        /// The u32 found at offset 0.
        found: u32,
    },
    /// A version other than 2 or 3.
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion {
        /// The version read.
        version: u32,
    },
    /// The file ends before `field` could be read.
    #[error(
        "truncated file: {field} needs {needed} bytes at offset {offset}, {available} available"
    )]
    Truncated {
        /// What was being read.
        field: &'static str,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A count or length larger than the rest of the file could possibly hold.
    #[error("{field} = {count} is impossible: at most {max} fit in the remaining file")]
    CountTooLarge {
        /// What was counted.
        field: &'static str,
        /// The count read.
        count: u64,
        /// The most the remaining bytes allow.
        max: u64,
    },
    /// Unknown metadata value type id.
    #[error("key {key:?}: unknown metadata value type {type_id}")]
    UnknownValueType {
        /// Key whose value (or array element) has the bad type.
        key: String,
        /// The id read.
        type_id: u32,
    },
    /// Unknown or retired ggml type id.
    #[error("tensor {tensor:?}: unknown ggml type id {type_id}")]
    UnknownGgmlType {
        /// Tensor name.
        tensor: String,
        /// The id read.
        type_id: u32,
    },
    /// A string that is not UTF-8.
    #[error("{field}: string is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string was.
        field: &'static str,
    },
    /// A bool byte other than 0 or 1.
    #[error("key {key:?}: bool byte {value} is neither 0 nor 1")]
    InvalidBool {
        /// The key.
        key: String,
        /// The byte read.
        value: u8,
    },
    /// Arrays nested deeper than [`super::MAX_ARRAY_DEPTH`].
    #[error("key {key:?}: arrays nested deeper than {max}")]
    NestingTooDeep {
        /// The key.
        key: String,
        /// The limit.
        max: usize,
    },
    /// The same metadata key twice.
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// The same tensor name twice.
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// Tensor name of 64 bytes or more.
    #[error("tensor name {name:?} is {len} bytes (must be < 64)")]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Metadata key of 65536 bytes or more.
    #[error("metadata key of {len} bytes (must be < 65536)")]
    KeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// n_dims outside 1..=4.
    #[error("tensor {name:?}: n_dims = {n_dims} (must be 1..=4)")]
    BadDimCount {
        /// Tensor name.
        name: String,
        /// The n_dims read.
        n_dims: u32,
    },
    /// A dim that does not fit an i64, or an element count that overflows.
    #[error("tensor {name:?}: dims {dims:?} overflow")]
    DimsOverflow {
        /// Tensor name.
        name: String,
        /// The dims.
        dims: Vec<u64>,
    },
    /// `ne[0]` not a multiple of the type's block size.
    #[error("tensor {name:?}: ne[0] = {ne0} is not a multiple of {ty:?}'s block size {block_size}")]
    NotBlockMultiple {
        /// Tensor name.
        name: String,
        /// Type.
        ty: GgmlType,
        /// `ne[0]`.
        ne0: u64,
        /// Block size of the type.
        block_size: usize,
    },
    /// `general.alignment` of the wrong type, zero or not a power of two.
    #[error("bad general.alignment: {value}")]
    BadAlignment {
        /// Description of the value found.
        value: String,
    },
    /// `general.quantization_version` missing while some tensor is quantized (writer only).
    #[error("general.quantization_version (u32) is required when a tensor is quantized ({name:?})")]
    MissingQuantizationVersion {
        /// The first quantized tensor.
        name: String,
    },
    /// Offset not a multiple of the alignment.
    #[error("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    UnalignedOffset {
        /// Tensor name.
        name: String,
        /// Offset read.
        offset: u64,
        /// Alignment in force.
        alignment: u64,
    },
    /// Offset before the end of the previous tensor.
    #[error("tensor {name:?}: offset {offset} overlaps the previous tensor (expected {expected})")]
    OverlappingOffset {
        /// Tensor name.
        name: String,
        /// Offset read.
        offset: u64,
        /// Running sum of padded sizes.
        expected: u64,
    },
    /// Offset leaving a gap after the previous tensor (llama.cpp requires none).
    #[error("tensor {name:?}: offset {offset} leaves a gap (expected {expected})")]
    OffsetGap {
        /// Tensor name.
        name: String,
        /// Offset read.
        offset: u64,
        /// Running sum of padded sizes.
        expected: u64,
    },
    /// Tensor data (with its padding) past the end of the file.
    #[error("tensor {name:?}: data ends at byte {end}, file has {file_len}")]
    OutOfBounds {
        /// Tensor name.
        name: String,
        /// End of the padded data.
        end: u64,
        /// File length.
        file_len: u64,
    },
    /// Writer: data length does not match dims and type.
    #[error("tensor {name:?}: {actual} bytes of data, dims and type need {expected}")]
    DataSizeMismatch {
        /// Tensor name.
        name: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
    /// A `QuantTensor`'s spec has no ggml block structure.
    #[error("QuantTensor spec `{spec}` has no ggml type: {reason}")]
    SpecNotGgml {
        /// The spec, as displayed.
        spec: String,
        /// Why no ggml type holds it.
        reason: String,
    },
    /// A `QuantTensor` was asked to be written as a ggml type its spec does not match.
    #[error(
        "QuantTensor spec `{spec}` cannot be written as ggml {ty:?} code for code: {reason} (re-quantize explicitly to convert)"
    )]
    SpecMismatch {
        /// The spec, as displayed.
        spec: String,
        /// The requested ggml type.
        ty: GgmlType,
        /// What differs.
        reason: String,
    },
    /// A `QuantTensor` lacks part of the scale level its spec implies.
    #[error("QuantTensor has no {0} although its spec needs them")]
    MissingLevel(&'static str),
    /// No codec for the type.
    #[error("no codec for ggml type {0:?}")]
    UnsupportedType(GgmlType),
    /// Importance vector whose length is not the row length.
    #[error("importance has {len} values, the row length is {row_len}")]
    ImportanceLength {
        /// Values given.
        len: usize,
        /// The row length they must match.
        row_len: usize,
    },
    /// An importance value that is NaN, infinite or negative.
    #[error("importance[{index}] = {value} (must be finite and >= 0)")]
    InvalidImportance {
        /// Column of the value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Codec input length not a multiple of the block.
    #[error("{what}: length {len} is not a multiple of {multiple}")]
    BadLength {
        /// What was measured.
        what: &'static str,
        /// The length.
        len: usize,
        /// The required multiple.
        multiple: usize,
    },
    /// No tensor of that name.
    #[error("no tensor named {0:?}")]
    NoSuchTensor(String),
    /// Streaming writer: a tensor given out of the declared order, or the stream finished
    /// before every declared tensor was written.
    #[error("streamed GGUF: expected tensor {expected:?} next, got {found:?}")]
    StreamOrder {
        /// The tensor the header declares next (empty when none is left).
        expected: String,
        /// The tensor given (empty when the stream was finished).
        found: String,
    },
}
