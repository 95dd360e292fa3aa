//! Calibration and evaluation inputs from files: `.npy` arrays and PNG images.
//!
//! - [`parse_npy`] / [`read_npy`] read NumPy's `.npy` format (versions 1.0, 2.0 and 3.0, C
//!   order) into [`TensorData`]; [`npy_bytes`] / [`write_npy`] write it back (atomically).
//! - [`decode_png`] / [`read_png`] read a PNG (gray, gray+alpha, RGB, RGBA, palette; 1–16 bit)
//!   into an [`RgbImage`]; a [`Preprocess`] turns it into a model input, the way the model's
//!   own pipeline does (channel order, `(pixel/255 - mean)/std`, resize and padding).
//!   [`Preprocess::ppocr_det`] and [`Preprocess::ppocr_cls`] describe the PP-OCR models.
//! - [`load_dir`] loads every `.npy` and `.png` of a directory in file-name order;
//!   [`stack_batches`] concatenates same-shaped samples into batches.
//!
//! Every malformed input is a typed error ([`NpyError`], [`ImageError`], [`DatasetError`]),
//! never a panic.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData, f16};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest decoded PNG or preprocessed image accepted, in bytes (512 MiB): a hostile header
/// cannot make us allocate more than this.
pub const MAX_IMAGE_BYTES: usize = 512 << 20;

/// A malformed or unsupported `.npy` byte string.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NpyError {
    /// The bytes end before the part that is being read is complete.
    #[error("truncated: the {part} needs {needed} bytes, only {got} are there")]
    Truncated {
        /// What was being read (`magic`, `header length`, `header`).
        part: &'static str,
        /// Bytes needed up to the end of that part.
        needed: u64,
        /// Bytes present.
        got: u64,
    },
    /// The file does not start with `\x93NUMPY`.
    #[error("not an .npy file: the magic string `\\x93NUMPY` is missing")]
    BadMagic,
    /// A format version other than 1.0, 2.0 or 3.0.
    #[error("unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are read)")]
    UnsupportedVersion {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },
    /// The header dictionary cannot be parsed or lacks a key.
    #[error("bad .npy header: {0}")]
    BadHeader(String),
    /// `fortran_order: True`: only C-order arrays are read.
    #[error("Fortran-order arrays are not supported; save with np.ascontiguousarray first")]
    FortranOrder,
    /// A `descr` other than the supported scalar dtypes.
    #[error(
        "unsupported dtype `{descr}` (supported: f2 f4 f8 u1 i1 u2 i2 u4 i4 u8 i8 b1, either byte order)"
    )]
    UnsupportedDtype {
        /// The header's `descr` value.
        descr: String,
    },
    /// The shape's element or byte count does not fit in `usize`.
    #[error("absurd shape {shape:?}: its byte count overflows")]
    ShapeOverflow {
        /// The header's shape (saturated at `u64::MAX` per dimension).
        shape: Vec<u64>,
    },
    /// The data after the header is not `numel * itemsize` bytes long.
    #[error("shape {shape:?} of `{descr}` needs {expected} data bytes, the file has {got}")]
    ByteCount {
        /// The header's shape.
        shape: Vec<usize>,
        /// The header's dtype.
        descr: String,
        /// Bytes the shape and dtype need.
        expected: usize,
        /// Bytes after the header.
        got: usize,
    },
}

/// A PNG that cannot be decoded, or an image and [`Preprocess`] that do not fit together.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ImageError {
    /// The PNG decoder rejected the bytes.
    #[error("cannot decode PNG: {0}")]
    Decode(String),
    /// A decoded layout this reader does not handle.
    #[error("unsupported PNG layout: {0}")]
    Unsupported(String),
    /// An image (decoded or after preprocessing) larger than [`MAX_IMAGE_BYTES`].
    #[error("image of {width}x{height} is too large (limit {MAX_IMAGE_BYTES} bytes)")]
    TooLarge {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// An image with no pixels.
    #[error("empty image ({width}x{height})")]
    Empty {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// A [`Preprocess`] field out of range.
    #[error("invalid preprocessing: `{field}` {reason}")]
    InvalidPreprocess {
        /// The field (`std[1]`, `resize.h`, …).
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Pixel data whose length does not match the image size.
    #[error("{width}x{height} RGB image needs {expected} samples, got {got}")]
    PixelCount {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// `width * height * 3`.
        expected: usize,
        /// Samples given.
        got: usize,
    },
}

/// Everything that can go wrong loading or writing dataset files.
#[derive(Debug, Error)]
pub enum DatasetError {
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A malformed `.npy` file.
    #[error("{}: {source}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: NpyError,
    },
    /// A PNG that cannot be decoded or preprocessed.
    #[error("{}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ImageError,
    },
    /// A PNG met without a [`Preprocess`] to turn it into a tensor.
    #[error("{}: a PNG needs a preprocessing config (e.g. Preprocess::ppocr_det())", path.display())]
    NeedsPreprocess {
        /// The PNG.
        path: PathBuf,
    },
    /// A directory without any `.npy` or `.png` file.
    #[error("no .npy or .png file in {} ({ignored} other entries)", dir.display())]
    NoInputs {
        /// The directory.
        dir: PathBuf,
        /// Entries that were not `.npy`/`.png` files.
        ignored: usize,
    },
    /// [`npy_bytes`] was given a dtype it does not write.
    #[error("cannot write dtype {dtype} to .npy (f32, i64, i32, u8, i8 and bool are written)")]
    UnsupportedWriteDtype {
        /// The tensor's dtype, debug-formatted.
        dtype: String,
    },
    /// Tensor data whose bytes cannot be read as its dtype.
    #[error("tensor data: {0}")]
    Data(String),
    /// [`stack_batches`] with a batch size of 0 or no samples.
    #[error("cannot batch: {0}")]
    Batch(String),
    /// Samples of different shapes or dtypes cannot be stacked.
    #[error(
        "sample {index} has shape {got:?} ({got_dtype}), sample 0 has {expected:?} ({expected_dtype})"
    )]
    SampleMismatch {
        /// Index of the first sample that differs.
        index: usize,
        /// Shape of sample 0.
        expected: Vec<usize>,
        /// Dtype of sample 0, debug-formatted.
        expected_dtype: String,
        /// Shape of the differing sample.
        got: Vec<usize>,
        /// Dtype of the differing sample, debug-formatted.
        got_dtype: String,
    },
}

// ---------------------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------------------

const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Nesting depth the header parser accepts (numpy headers nest two levels).
const MAX_HEADER_DEPTH: usize = 16;

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug, Clone, PartialEq)]
enum PyLit {
    Str(String),
    /// Integers saturate at the `i128` range; the shape check turns that into an overflow.
    Int(i128),
    Bool(bool),
    NoneLit,
    Tuple(Vec<PyLit>),
    List(Vec<PyLit>),
    Dict(Vec<(PyLit, PyLit)>),
}

/// A recursive-descent parser of the Python literal subset `np.save` writes
/// (`ast.literal_eval` semantics for dicts, tuples, lists, strings, ints, booleans, `None`).
struct LitParser<'a> {
    s: &'a [char],
    pos: usize,
}

impl LitParser<'_> {
    fn err(&self, what: &str) -> NpyError {
        NpyError::BadHeader(format!("{what} at character {}", self.pos))
    }

    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: char) -> Result<(), NpyError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected `{c}`")))
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyLit, NpyError> {
        if depth > MAX_HEADER_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.peek() {
            None => Err(self.err("unexpected end")),
            Some('{') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some('}') {
                        self.pos += 1;
                        return Ok(PyLit::Dict(items));
                    }
                    let k = self.value(depth + 1)?;
                    self.expect(':')?;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some('}') => {}
                        _ => return Err(self.err("expected `,` or `}` in dict")),
                    }
                }
            }
            Some(open @ ('(' | '[')) => {
                self.pos += 1;
                let close = if open == '(' { ')' } else { ']' };
                let mut items = Vec::new();
                let mut trailing_comma = false;
                loop {
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    trailing_comma = false;
                    match self.peek() {
                        Some(',') => {
                            self.pos += 1;
                            trailing_comma = true;
                        }
                        Some(c) if c == close => {}
                        _ => return Err(self.err("expected `,` or a closing bracket")),
                    }
                }
                Ok(match open {
                    '[' => PyLit::List(items),
                    // `(x)` is `x` in Python; `(x,)` and `()` are tuples.
                    _ if items.len() == 1 && !trailing_comma => items.pop().expect("one item"),
                    _ => PyLit::Tuple(items),
                })
            }
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                let mut out = String::new();
                loop {
                    match self.s.get(self.pos).copied() {
                        None => return Err(self.err("unterminated string")),
                        Some('\\') => {
                            let c = self
                                .s
                                .get(self.pos + 1)
                                .copied()
                                .ok_or_else(|| self.err("unterminated string"))?;
                            out.push(c);
                            self.pos += 2;
                        }
                        Some(c) if c == q => {
                            self.pos += 1;
                            return Ok(PyLit::Str(out));
                        }
                        Some(c) => {
                            out.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => {
                let negative = c == '-';
                if c == '-' || c == '+' {
                    self.pos += 1;
                }
                let start = self.pos;
                let mut v: i128 = 0;
                while let Some(d) = self.s.get(self.pos).and_then(|c| c.to_digit(10)) {
                    v = v.saturating_mul(10).saturating_add(i128::from(d));
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(self.err("expected digits"));
                }
                // Python 2 wrote longs as `3L`.
                if matches!(self.s.get(self.pos), Some('L' | 'l')) {
                    self.pos += 1;
                }
                Ok(PyLit::Int(if negative { -v } else { v }))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self
                    .s
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                {
                    self.pos += 1;
                }
                let word: String = self.s[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(PyLit::Bool(true)),
                    "False" => Ok(PyLit::Bool(false)),
                    "None" => Ok(PyLit::NoneLit),
                    _ => Err(NpyError::BadHeader(format!("unexpected name `{word}`"))),
                }
            }
            Some(c) => Err(self.err(&format!("unexpected `{}`", c.escape_default()))),
        }
    }
}

/// The dtypes a `.npy` file may hold, with their byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NpyKind {
    F2,
    F4,
    F8,
    U1,
    I1,
    U2,
    I2,
    U4,
    I4,
    U8,
    I8,
    B1,
}

impl NpyKind {
    fn size(self) -> usize {
        match self {
            Self::U1 | Self::I1 | Self::B1 => 1,
            Self::F2 | Self::U2 | Self::I2 => 2,
            Self::F4 | Self::U4 | Self::I4 => 4,
            Self::F8 | Self::U8 | Self::I8 => 8,
        }
    }

    /// Parses a `descr` (`<f4`, `|u1`, `>i8`, …) into kind and big-endianness.
    fn parse(descr: &str) -> Result<(Self, bool), NpyError> {
        let unsupported = || NpyError::UnsupportedDtype {
            descr: descr.to_string(),
        };
        let mut chars = descr.chars();
        let order = chars.next().ok_or_else(unsupported)?;
        let kind = match chars.as_str() {
            "f2" | "e" => Self::F2,
            "f4" => Self::F4,
            "f8" => Self::F8,
            "u1" => Self::U1,
            "i1" => Self::I1,
            "u2" => Self::U2,
            "i2" => Self::I2,
            "u4" => Self::U4,
            "i4" => Self::I4,
            "u8" => Self::U8,
            "i8" => Self::I8,
            "b1" => Self::B1,
            _ => return Err(unsupported()),
        };
        let big = match order {
            '<' => false,
            '>' => true,
            // numpy writes `|` for types without a byte order: single bytes only.
            '|' if kind.size() == 1 => false,
            _ => return Err(unsupported()),
        };
        Ok((kind, big))
    }
}

/// Decodes `N`-byte elements, little- or big-endian, through `from_le`.
fn decode_elems<E, const N: usize>(
    raw: &[u8],
    big: bool,
    from_le: impl Fn([u8; N]) -> E,
) -> Vec<E> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut b: [u8; N] = c.try_into().expect("chunks_exact yields N bytes");
            if big {
                b.reverse();
            }
            from_le(b)
        })
        .collect()
}

/// Parses the bytes of a `.npy` file (format 1.0, 2.0 or 3.0, C order).
///
/// Float kinds (`f2`, `f4`, `f8`) become `f32` ([`DType::F32`]; `f8` is rounded); integer kinds
/// keep their type (`u1` → U8, `i1` → I8, `u2`/`i2`/`u4`/`i4`/`u8`/`i8` → U16/I16/U32/I32/U64/I64),
/// `b1` becomes bool. Either byte order is read. The shape is kept as stored (a 0-d array has
/// shape `[]`). Any malformed input is an [`NpyError`], never a panic.
pub fn parse_npy(bytes: &[u8]) -> Result<TensorData, NpyError> {
    let got = bytes.len() as u64;
    let truncated = |part, needed| NpyError::Truncated { part, needed, got };
    if bytes.len() < 8 {
        // A prefix of the magic is a truncated file, anything else is not an .npy file.
        let n = bytes.len().min(6);
        return Err(if bytes[..n] == NPY_MAGIC[..n] {
            truncated("magic and version", 8)
        } else {
            NpyError::BadMagic
        });
    }
    if &bytes[..6] != NPY_MAGIC {
        return Err(NpyError::BadMagic);
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => return Err(NpyError::UnsupportedVersion { major, minor }),
    };
    let header_start = 8 + len_bytes;
    if bytes.len() < header_start {
        return Err(truncated("header length", header_start as u64));
    }
    let header_len = if len_bytes == 2 {
        u64::from(u16::from_le_bytes([bytes[8], bytes[9]]))
    } else {
        u64::from(u32::from_le_bytes([
            bytes[8], bytes[9], bytes[10], bytes[11],
        ]))
    };
    let data_start = header_start as u64 + header_len;
    if got < data_start {
        return Err(truncated("header", data_start));
    }
    let data_start = data_start as usize; // <= bytes.len()
    let raw_header = &bytes[header_start..data_start];
    let header: Vec<char> = if utf8 {
        std::str::from_utf8(raw_header)
            .map_err(|e| NpyError::BadHeader(format!("not UTF-8: {e}")))?
            .chars()
            .collect()
    } else {
        // Versions 1.0 and 2.0 are latin-1: every byte is one character.
        raw_header.iter().map(|&b| char::from(b)).collect()
    };
    let mut parser = LitParser { s: &header, pos: 0 };
    let lit = parser.value(0)?;
    if parser.peek().is_some() {
        return Err(parser.err("trailing characters after the header dict"));
    }
    let PyLit::Dict(items) = lit else {
        return Err(NpyError::BadHeader("the header is not a dict".into()));
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (k, v) in items {
        let PyLit::Str(key) = k else {
            return Err(NpyError::BadHeader(format!("non-string key {k:?}")));
        };
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            other => return Err(NpyError::BadHeader(format!("unexpected key `{other}`"))),
        };
        if slot.replace(v).is_some() {
            return Err(NpyError::BadHeader(format!("key `{key}` given twice")));
        }
    }
    let descr = match descr {
        Some(PyLit::Str(d)) => d,
        // Structured dtypes have a list descr.
        Some(other) => {
            return Err(NpyError::UnsupportedDtype {
                descr: format!("{other:?}"),
            });
        }
        None => return Err(NpyError::BadHeader("missing key `descr`".into())),
    };
    match fortran {
        Some(PyLit::Bool(false)) => {}
        Some(PyLit::Bool(true)) => return Err(NpyError::FortranOrder),
        Some(other) => {
            return Err(NpyError::BadHeader(format!(
                "`fortran_order` is {other:?}, not a bool"
            )));
        }
        None => return Err(NpyError::BadHeader("missing key `fortran_order`".into())),
    }
    let dims = match shape {
        Some(PyLit::Tuple(d)) => d,
        Some(other) => {
            return Err(NpyError::BadHeader(format!(
                "`shape` is {other:?}, not a tuple"
            )));
        }
        None => return Err(NpyError::BadHeader("missing key `shape`".into())),
    };
    let mut shape64 = Vec::with_capacity(dims.len());
    for d in &dims {
        match *d {
            PyLit::Int(v) if v >= 0 => shape64.push(u64::try_from(v).unwrap_or(u64::MAX)),
            ref other => {
                return Err(NpyError::BadHeader(format!(
                    "shape entry {other:?} is not a non-negative integer"
                )));
            }
        }
    }
    let (kind, big) = NpyKind::parse(&descr)?;
    let overflow = || NpyError::ShapeOverflow {
        shape: shape64.clone(),
    };
    let mut shape = Vec::with_capacity(shape64.len());
    let mut numel: usize = 1;
    for &d in &shape64 {
        let d = usize::try_from(d).map_err(|_| overflow())?;
        numel = numel.checked_mul(d).ok_or_else(overflow)?;
        shape.push(d);
    }
    let expected = numel.checked_mul(kind.size()).ok_or_else(overflow)?;
    let raw = &bytes[data_start..];
    if raw.len() != expected {
        return Err(NpyError::ByteCount {
            shape,
            descr,
            expected,
            got: raw.len(),
        });
    }
    Ok(match kind {
        NpyKind::F2 => TensorData::new(
            decode_elems(raw, big, |b| f16::from_le_bytes(b).to_f32()),
            shape,
        ),
        NpyKind::F4 => TensorData::new(decode_elems(raw, big, f32::from_le_bytes), shape),
        NpyKind::F8 => TensorData::new(
            decode_elems(raw, big, |b| f64::from_le_bytes(b) as f32),
            shape,
        ),
        NpyKind::U1 => TensorData::new(raw.to_vec(), shape),
        NpyKind::I1 => TensorData::new(decode_elems(raw, big, i8::from_le_bytes), shape),
        NpyKind::U2 => TensorData::new(decode_elems(raw, big, u16::from_le_bytes), shape),
        NpyKind::I2 => TensorData::new(decode_elems(raw, big, i16::from_le_bytes), shape),
        NpyKind::U4 => TensorData::new(decode_elems(raw, big, u32::from_le_bytes), shape),
        NpyKind::I4 => TensorData::new(decode_elems(raw, big, i32::from_le_bytes), shape),
        NpyKind::U8 => TensorData::new(decode_elems(raw, big, u64::from_le_bytes), shape),
        NpyKind::I8 => TensorData::new(decode_elems(raw, big, i64::from_le_bytes), shape),
        NpyKind::B1 => TensorData::new(raw.iter().map(|&b| b != 0).collect::<Vec<bool>>(), shape),
    })
}

/// Reads a `.npy` file; see [`parse_npy`] for the dtypes and shapes.
pub fn read_npy(path: impl AsRef<Path>) -> Result<TensorData, DatasetError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes).map_err(|source| DatasetError::Npy {
        path: path.to_path_buf(),
        source,
    })
}

/// Serializes tensor data as a `.npy` file (format 1.0, or 2.0 when the header needs it;
/// little-endian, C order, header padded to 64 bytes as `np.save` does).
///
/// Written dtypes: F32 (`<f4`), I64 (`<i8`), I32 (`<i4`), U8 (`|u1`), I8 (`|i1`) and bool
/// (`|b1`); any other is [`DatasetError::UnsupportedWriteDtype`].
pub fn npy_bytes(data: &TensorData) -> Result<Vec<u8>, DatasetError> {
    fn le<E: burn::tensor::Element, const N: usize>(
        data: &TensorData,
        to_le: impl Fn(E) -> [u8; N],
    ) -> Result<Vec<u8>, DatasetError> {
        let s = data
            .as_slice::<E>()
            .map_err(|e| DatasetError::Data(format!("{e:?}")))?;
        Ok(s.iter().flat_map(|&v| to_le(v)).collect())
    }
    let (descr, body) = match data.dtype() {
        DType::F32 => ("<f4", le(data, f32::to_le_bytes)?),
        DType::I64 => ("<i8", le(data, i64::to_le_bytes)?),
        DType::I32 => ("<i4", le(data, i32::to_le_bytes)?),
        DType::U8 => ("|u1", le(data, u8::to_le_bytes)?),
        DType::I8 => ("|i1", le(data, i8::to_le_bytes)?),
        DType::Bool(_) => (
            "|b1",
            data.clone()
                .try_into_vec_as::<bool>()
                .map_err(|e| DatasetError::Data(format!("{e:?}")))?
                .into_iter()
                .map(u8::from)
                .collect(),
        ),
        other => {
            return Err(DatasetError::UnsupportedWriteDtype {
                dtype: format!("{other:?}"),
            });
        }
    };
    let dims = data.shape().as_slice();
    let shape = match dims {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2 or 4) + header + '\n', padded to a multiple of 64.
    let v1 = header.len() + 1 + 10 <= usize::from(u16::MAX);
    let prefix = if v1 { 10 } else { 12 };
    let total = (prefix + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - prefix - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + body.len());
    out.extend_from_slice(NPY_MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        let len = u16::try_from(header.len()).expect("checked to fit format 1.0");
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        let len = u32::try_from(header.len())
            .map_err(|_| DatasetError::Data(format!("header of {} bytes", header.len())))?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes tensor data to a `.npy` file atomically: into a temporary file beside `path`, synced,
/// then renamed over it, so a reader never sees a half-written file. See [`npy_bytes`] for the
/// dtypes.
pub fn write_npy(path: impl AsRef<Path>, data: &TensorData) -> Result<(), DatasetError> {
    let path = path.as_ref();
    let bytes = npy_bytes(data)?;
    write_atomic(path, &bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| DatasetError::Io { path: p, source }
    };
    let name = path
        .file_name()
        .ok_or_else(|| DatasetError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        })?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------------

/// A decoded image: RGB samples, row-major, interleaved (`[y][x][c]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bits per sample: 8 (samples `0..=255`) or 16 (samples `0..=65535`); other depths, or
    /// samples above the maximum, are an [`ImageError::Unsupported`] in [`Preprocess::apply`].
    pub bit_depth: u8,
    /// `height * width * 3` samples, R, G, B per pixel.
    pub samples: Vec<u16>,
}

impl RgbImage {
    /// An 8-bit image from interleaved RGB bytes (`height * width * 3` of them).
    pub fn from_rgb8(width: usize, height: usize, rgb: &[u8]) -> Result<Self, ImageError> {
        let expected = width
            .checked_mul(height)
            .and_then(|n| n.checked_mul(3))
            .ok_or(ImageError::TooLarge { width, height })?;
        if rgb.len() != expected {
            return Err(ImageError::PixelCount {
                width,
                height,
                expected,
                got: rgb.len(),
            });
        }
        Ok(Self {
            width,
            height,
            bit_depth: 8,
            samples: rgb.iter().map(|&v| u16::from(v)).collect(),
        })
    }

    /// The largest sample value (255 or 65535).
    pub fn max_value(&self) -> u16 {
        if self.bit_depth == 16 { u16::MAX } else { 255 }
    }
}

/// Decodes a PNG: gray, gray+alpha, RGB, RGBA or palette, any bit depth. Palettes and depths
/// below 8 expand to 8 bit, 16-bit images stay 16-bit; gray is replicated to R, G and B;
/// alpha is composited over white (`v*a + max*(max-a)`, divided by `max`, rounded) — text on
/// a transparent background stays readable, as RapidOCR's loader does. Animated PNGs give
/// their first frame.
pub fn decode_png(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let decode = |e: png::DecodingError| ImageError::Decode(e.to_string());
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits {
            bytes: MAX_IMAGE_BYTES,
        },
    );
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(decode)?;
    let (width, height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= MAX_IMAGE_BYTES)
        .ok_or(ImageError::TooLarge { width, height })?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(decode)?;
    let (width, height) = (info.width as usize, info.height as usize);
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { width, height });
    }
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(ImageError::Unsupported(
                "palette image was not expanded".into(),
            ));
        }
    };
    let (bit_depth, bytes_per_sample) = match info.bit_depth {
        png::BitDepth::Eight => (8u8, 1usize),
        png::BitDepth::Sixteen => (16, 2),
        other => {
            return Err(ImageError::Unsupported(format!(
                "bit depth {other:?} after expansion"
            )));
        }
    };
    let row_samples = width * channels;
    let row_bytes = row_samples * bytes_per_sample;
    if info.line_size < row_bytes
        || info
            .line_size
            .checked_mul(height)
            .is_none_or(|n| n > buf.len())
    {
        return Err(ImageError::Decode(format!(
            "decoder returned lines of {} bytes for {width} pixels of {channels} channels",
            info.line_size
        )));
    }
    let max = if bit_depth == 16 { 65535u64 } else { 255 };
    let over_white = |v: u32, a: u32| -> u16 {
        let (v, a) = (u64::from(v), u64::from(a));
        let num = v * a + max * (max - a);
        ((num + max / 2) / max) as u16
    };
    let mut samples = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        let line = &buf[y * info.line_size..y * info.line_size + row_bytes];
        let sample = |i: usize| -> u32 {
            if bytes_per_sample == 2 {
                u32::from(u16::from_be_bytes([line[2 * i], line[2 * i + 1]]))
            } else {
                u32::from(line[i])
            }
        };
        for x in 0..width {
            let i = x * channels;
            let rgb = match channels {
                1 => {
                    let g = sample(i) as u16;
                    [g, g, g]
                }
                2 => {
                    let g = over_white(sample(i), sample(i + 1));
                    [g, g, g]
                }
                3 => [sample(i) as u16, sample(i + 1) as u16, sample(i + 2) as u16],
                _ => {
                    let a = sample(i + 3);
                    [
                        over_white(sample(i), a),
                        over_white(sample(i + 1), a),
                        over_white(sample(i + 2), a),
                    ]
                }
            };
            samples.extend_from_slice(&rgb);
        }
    }
    Ok(RgbImage {
        width,
        height,
        bit_depth,
        samples,
    })
}

/// Reads and decodes a PNG file; see [`decode_png`].
pub fn read_png(path: impl AsRef<Path>) -> Result<RgbImage, DatasetError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_png(&bytes).map_err(|source| DatasetError::Image {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// Preprocessing
// ---------------------------------------------------------------------------------------------

/// Memory layout of the produced tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `[1, C, H, W]` (ONNX vision models).
    #[default]
    Nchw,
    /// `[1, H, W, C]`.
    Nhwc,
}

/// Channel order of the produced tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    /// Red, green, blue (PIL, torchvision).
    Rgb,
    /// Blue, green, red (OpenCV, hence Paddle and RapidOCR).
    Bgr,
}

/// Interpolation used by [`Resize::Exact`] and [`Resize::FitHeight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Pillow's `Image.resize(..., BILINEAR)`: a triangle filter whose support grows with the
    /// downscaling factor (antialiasing), applied horizontally then vertically. On 8-bit
    /// images it reproduces Pillow's fixed-point arithmetic (22-bit coefficients, rounding to
    /// 8 bit after each pass) bit for bit; on 16-bit images it uses the same filter in `f64`.
    #[default]
    PilBilinear,
    /// Plain bilinear interpolation with half-pixel centres and no antialiasing (OpenCV's
    /// `INTER_LINEAR`, PyTorch `interpolate(align_corners=False)`), in `f32` without rounding
    /// to integers.
    Bilinear,
}

/// How the image is brought to the model's input size. Pad values are written into the
/// produced tensor as they are (after normalization, not in pixel units).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Resize {
    /// Keep the size; pad bottom and right up to multiples of `multiple_of` (1: no padding).
    None {
        /// Height and width are padded to multiples of this (≥ 1).
        #[serde(default = "one")]
        multiple_of: usize,
        /// Value of padded elements.
        #[serde(default)]
        pad_value: f32,
    },
    /// Resize to exactly `h` × `w` pixels.
    Exact {
        /// Output height.
        h: usize,
        /// Output width.
        w: usize,
    },
    /// Resize to height `h` keeping the aspect ratio, width `min(ceil(h*w0/h0), max_w)`, then
    /// pad on the right to `max_w` (RapidOCR's `resize_norm_img` for the classifier and
    /// recognizer).
    FitHeight {
        /// Output height.
        h: usize,
        /// Output width after padding; the resized width never exceeds it.
        max_w: usize,
        /// Value of padded elements.
        #[serde(default)]
        pad_value: f32,
    },
}

fn one() -> usize {
    1
}

/// A model's input preprocessing: resize, then per channel `(pixel/max - mean) / std` with
/// `max` 255 for 8-bit images (65535 for 16-bit), in `f32` arithmetic as NumPy does on a
/// `float32` array, then the channel order and layout of the tensor. Prints, compares and
/// (de)serializes (JSON, TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Layout of the produced tensor (batch 1).
    #[serde(default)]
    pub layout: Layout,
    /// Channel order of the produced tensor; `mean` and `std` are given in this order.
    pub channel_order: ChannelOrder,
    /// Per-channel mean, on the `[0, 1]` pixel scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, on the `[0, 1]` pixel scale (non-zero).
    pub std: [f32; 3],
    /// Size policy.
    pub resize: Resize,
    /// Interpolation when resizing.
    #[serde(default)]
    pub filter: Filter,
}

impl Preprocess {
    /// The PP-OCR DB text detector (`PP-OCRv6_det_small.onnx`) as RapidOCR feeds it:
    /// BGR, `(p/255 - 0.5)/0.5`, NCHW. Sides must be multiples of 32; where RapidOCR rescales
    /// to reach them, this preset keeps the pixels as they are and pads the bottom and right
    /// with 0.0 (the normalized mid-grey), as Paddle's pad-to-stride does, so an image whose
    /// sides are already multiples of 32 is unchanged. Large pages are not downscaled.
    pub fn ppocr_det() -> Self {
        Self {
            layout: Layout::Nchw,
            channel_order: ChannelOrder::Bgr,
            mean: [0.5; 3],
            std: [0.5; 3],
            resize: Resize::None {
                multiple_of: 32,
                pad_value: 0.0,
            },
            filter: Filter::PilBilinear,
        }
    }

    /// The PP-OCR text-line direction classifier (`ch_ppocr_mobile_v2.0_cls_mobile.onnx`):
    /// RapidOCR's `resize_norm_img` for the `[3, 48, 192]` input — height 48 keeping the
    /// aspect ratio, width `min(ceil(48*w/h), 192)` with Pillow's bilinear filter, BGR,
    /// `(p/255 - 0.5)/0.5`, zero-padded on the right to 192, NCHW.
    pub fn ppocr_cls() -> Self {
        Self {
            layout: Layout::Nchw,
            channel_order: ChannelOrder::Bgr,
            mean: [0.5; 3],
            std: [0.5; 3],
            resize: Resize::FitHeight {
                h: 48,
                max_w: 192,
                pad_value: 0.0,
            },
            filter: Filter::PilBilinear,
        }
    }

    /// Checks every field: finite means, finite non-zero standard deviations, positive sizes
    /// and multiples, finite pad values.
    pub fn validate(&self) -> Result<(), ImageError> {
        let bad = |field: String, reason: &str| {
            Err(ImageError::InvalidPreprocess {
                field,
                reason: reason.to_string(),
            })
        };
        for c in 0..3 {
            if !self.mean[c].is_finite() {
                return bad(format!("mean[{c}]"), "must be finite");
            }
            if !self.std[c].is_finite() || self.std[c] == 0.0 {
                return bad(format!("std[{c}]"), "must be finite and non-zero");
            }
        }
        match self.resize {
            Resize::None {
                multiple_of,
                pad_value,
            } => {
                if multiple_of == 0 {
                    return bad("resize.multiple_of".into(), "must be at least 1");
                }
                if !pad_value.is_finite() {
                    return bad("resize.pad_value".into(), "must be finite");
                }
            }
            Resize::Exact { h, w } => {
                if h == 0 || w == 0 {
                    return bad("resize.h/w".into(), "must be at least 1");
                }
            }
            Resize::FitHeight {
                h,
                max_w,
                pad_value,
            } => {
                if h == 0 || max_w == 0 {
                    return bad("resize.h/max_w".into(), "must be at least 1");
                }
                if !pad_value.is_finite() {
                    return bad("resize.pad_value".into(), "must be finite");
                }
            }
        }
        Ok(())
    }

    /// Turns an image into a batch-1 `f32` tensor (`[1, 3, H, W]` for NCHW, `[1, H, W, 3]`
    /// for NHWC), `H` and `W` given by [`Preprocess::resize`].
    pub fn apply(&self, image: &RgbImage) -> Result<TensorData, ImageError> {
        self.validate()?;
        let (w0, h0) = (image.width, image.height);
        if w0 == 0 || h0 == 0 {
            return Err(ImageError::Empty {
                width: w0,
                height: h0,
            });
        }
        let expected =
            w0.checked_mul(h0)
                .and_then(|n| n.checked_mul(3))
                .ok_or(ImageError::TooLarge {
                    width: w0,
                    height: h0,
                })?;
        if image.samples.len() != expected {
            return Err(ImageError::PixelCount {
                width: w0,
                height: h0,
                expected,
                got: image.samples.len(),
            });
        }
        if image.bit_depth != 8 && image.bit_depth != 16 {
            return Err(ImageError::Unsupported(format!(
                "bit depth {} (8 or 16)",
                image.bit_depth
            )));
        }
        if let Some(v) = image.samples.iter().find(|&&v| v > image.max_value()) {
            return Err(ImageError::Unsupported(format!(
                "sample {v} above {} in a {}-bit image",
                image.max_value(),
                image.bit_depth
            )));
        }
        // (content width, content height, canvas width, canvas height, pad value)
        let (cw, ch, out_w, out_h, pad) = match self.resize {
            Resize::None {
                multiple_of,
                pad_value,
            } => {
                let up = |v: usize| v.div_ceil(multiple_of).checked_mul(multiple_of);
                let too_large = ImageError::TooLarge {
                    width: w0,
                    height: h0,
                };
                let out_w = up(w0).ok_or(too_large.clone())?;
                let out_h = up(h0).ok_or(too_large)?;
                (w0, h0, out_w, out_h, pad_value)
            }
            Resize::Exact { h, w } => (w, h, w, h, 0.0),
            Resize::FitHeight {
                h,
                max_w,
                pad_value,
            } => {
                // ceil(h * w0 / h0) in integers: exact where float arithmetic might not be.
                let rw = (h as u128 * w0 as u128).div_ceil(h0 as u128);
                let rw = usize::try_from(rw).unwrap_or(usize::MAX).clamp(1, max_w);
                (rw, h, max_w, h, pad_value)
            }
        };
        let canvas = out_w
            .checked_mul(out_h)
            .and_then(|n| n.checked_mul(3))
            .filter(|&n| n.saturating_mul(4) <= MAX_IMAGE_BYTES)
            .ok_or(ImageError::TooLarge {
                width: out_w,
                height: out_h,
            })?;
        if cw.saturating_mul(h0).saturating_mul(12) > MAX_IMAGE_BYTES {
            // The horizontal pass's intermediate image.
            return Err(ImageError::TooLarge {
                width: cw,
                height: h0,
            });
        }
        let pixels = resize(image, cw, ch, self.filter);
        let divisor = f32::from(image.max_value());
        let mut out = vec![pad; canvas];
        for y in 0..ch {
            for x in 0..cw {
                for c in 0..3 {
                    let src = match self.channel_order {
                        ChannelOrder::Rgb => c,
                        ChannelOrder::Bgr => 2 - c,
                    };
                    let p = pixels[(y * cw + x) * 3 + src];
                    let v = (p / divisor - self.mean[c]) / self.std[c];
                    let at = match self.layout {
                        Layout::Nchw => (c * out_h + y) * out_w + x,
                        Layout::Nhwc => (y * out_w + x) * 3 + c,
                    };
                    out[at] = v;
                }
            }
        }
        let shape = match self.layout {
            Layout::Nchw => [1, 3, out_h, out_w],
            Layout::Nhwc => [1, out_h, out_w, 3],
        };
        Ok(TensorData::new(out, shape))
    }
}

/// Resizes to `w` × `h`, returning interleaved RGB samples in the image's own units
/// (`0..=255` or `0..=65535`) as `f32`.
fn resize(image: &RgbImage, w: usize, h: usize, filter: Filter) -> Vec<f32> {
    if w == image.width && h == image.height {
        return image.samples.iter().map(|&v| f32::from(v)).collect();
    }
    match filter {
        Filter::Bilinear => bilinear(image, w, h),
        Filter::PilBilinear if image.bit_depth == 8 => {
            let src: Vec<u8> = image
                .samples
                .iter()
                .map(|&v| u8::try_from(v).unwrap_or(u8::MAX))
                .collect();
            pil_resample_u8(&src, image.width, image.height, w, h)
                .into_iter()
                .map(f32::from)
                .collect()
        }
        Filter::PilBilinear => {
            let src: Vec<f64> = image.samples.iter().map(|&v| f64::from(v)).collect();
            pil_resample_f64(&src, image.width, image.height, w, h)
                .into_iter()
                .map(|v| v as f32)
                .collect()
        }
    }
}

/// Plain bilinear interpolation, half-pixel centres, edges clamped.
fn bilinear(image: &RgbImage, w: usize, h: usize) -> Vec<f32> {
    let taps = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f64 / out as f64;
        (0..out)
            .map(|o| {
                let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, (s - i0 as f64).min(1.0) as f32)
            })
            .collect()
    };
    let (xs, ys) = (taps(w, image.width), taps(h, image.height));
    let px = |x: usize, y: usize, c: usize| f32::from(image.samples[(y * image.width + x) * 3 + c]);
    let mut out = Vec::with_capacity(w * h * 3);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            for c in 0..3 {
                let top = px(x0, y0, c) + (px(x1, y0, c) - px(x0, y0, c)) * fx;
                let bottom = px(x0, y1, c) + (px(x1, y1, c) - px(x0, y1, c)) * fx;
                out.push(top + (bottom - top) * fy);
            }
        }
    }
    out
}

/// Pillow's resampling coefficients for one axis (`precompute_coeffs` in Pillow's
/// `Resample.c`, bilinear filter): for every output index the first input index, the tap
/// count, and `ksize` normalized weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<f64>,
}

fn pil_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 { 1.0 - x } else { 0.0 }
    };
    // Pillow: `(double)(in1 - in0) / outSize` with float box edges; sizes are far below 2^24,
    // so the float subtraction is exact.
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0 times the scale
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0.0f64; out_size * ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncation toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let xmax = xmax.clamp(0, ksize as i64) as usize;
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        let mut ww = 0.0;
        for (x, slot) in row.iter_mut().enumerate().take(xmax) {
            let w = triangle(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *slot = w;
            ww += w;
        }
        if ww != 0.0 {
            for slot in row.iter_mut().take(xmax) {
                *slot /= ww;
            }
        }
        bounds.push((xmin as usize, xmax));
    }
    Coeffs { bounds, ksize, k }
}

/// Pillow's `normalize_coeffs_8bpc`: weights as 22-bit fixed point, rounded half away from 0.
fn fixed_point(k: &[f64]) -> Vec<i64> {
    const ONE: f64 = (1u32 << PIL_PRECISION_BITS) as f64;
    k.iter()
        .map(|&v| {
            if v < 0.0 {
                (-0.5 + v * ONE) as i64
            } else {
                (0.5 + v * ONE) as i64
            }
        })
        .collect()
}

/// Pillow's fixed-point precision for 8-bit resampling (`32 - 8 - 2`).
const PIL_PRECISION_BITS: u32 = 22;

fn clip8(acc: i64) -> u8 {
    (acc >> PIL_PRECISION_BITS).clamp(0, 255) as u8
}

/// `Image.resize((w, h), BILINEAR)` of an 8-bit RGB image, Pillow's arithmetic exactly:
/// horizontal pass (if the width changes) rounded to 8 bit, then vertical pass (if the height
/// changes).
fn pil_resample_u8(src: &[u8], w0: usize, h0: usize, w: usize, h: usize) -> Vec<u8> {
    let half = 1i64 << (PIL_PRECISION_BITS - 1);
    let mut cur = src.to_vec();
    let mut cur_w = w0;
    if w != w0 {
        let c = pil_coeffs(w0, w);
        let k = fixed_point(&c.k);
        let mut out = vec![0u8; w * h0 * 3];
        for y in 0..h0 {
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let kk = &k[xx * c.ksize..xx * c.ksize + n];
                for ch in 0..3 {
                    let mut acc = half;
                    for (x, &kv) in kk.iter().enumerate() {
                        acc += i64::from(cur[(y * w0 + xmin + x) * 3 + ch]) * kv;
                    }
                    out[(y * w + xx) * 3 + ch] = clip8(acc);
                }
            }
        }
        cur = out;
        cur_w = w;
    }
    if h != h0 {
        let c = pil_coeffs(h0, h);
        let k = fixed_point(&c.k);
        let mut out = vec![0u8; cur_w * h * 3];
        for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
            let kk = &k[yy * c.ksize..yy * c.ksize + n];
            for x in 0..cur_w {
                for ch in 0..3 {
                    let mut acc = half;
                    for (y, &kv) in kk.iter().enumerate() {
                        acc += i64::from(cur[((ymin + y) * cur_w + x) * 3 + ch]) * kv;
                    }
                    out[(yy * cur_w + x) * 3 + ch] = clip8(acc);
                }
            }
        }
        cur = out;
    }
    cur
}

/// The same two passes with `f64` weights and no rounding (16-bit images).
fn pil_resample_f64(src: &[f64], w0: usize, h0: usize, w: usize, h: usize) -> Vec<f64> {
    let mut cur = src.to_vec();
    let mut cur_w = w0;
    if w != w0 {
        let c = pil_coeffs(w0, w);
        let mut out = vec![0.0; w * h0 * 3];
        for y in 0..h0 {
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let kk = &c.k[xx * c.ksize..xx * c.ksize + n];
                for ch in 0..3 {
                    out[(y * w + xx) * 3 + ch] = kk
                        .iter()
                        .enumerate()
                        .map(|(x, &kv)| cur[(y * w0 + xmin + x) * 3 + ch] * kv)
                        .sum();
                }
            }
        }
        cur = out;
        cur_w = w;
    }
    if h != h0 {
        let c = pil_coeffs(h0, h);
        let mut out = vec![0.0; cur_w * h * 3];
        for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
            let kk = &c.k[yy * c.ksize..yy * c.ksize + n];
            for x in 0..cur_w {
                for ch in 0..3 {
                    out[(yy * cur_w + x) * 3 + ch] = kk
                        .iter()
                        .enumerate()
                        .map(|(y, &kv)| cur[((ymin + y) * cur_w + x) * 3 + ch] * kv)
                        .sum();
                }
            }
        }
        cur = out;
    }
    cur
}

// ---------------------------------------------------------------------------------------------
// Directories and batches
// ---------------------------------------------------------------------------------------------

/// Loads every `*.npy` and `*.png` file of `dir` (extensions in any case; subdirectories and
/// other files are ignored), sorted by file name so the order is the same on every machine.
///
/// - `.npy` files are returned as stored ([`parse_npy`]): no batch axis is added, so save
///   them with a leading batch axis of 1 (as `x[None]`), as model inputs are.
/// - `.png` files go through `preprocess` ([`Preprocess::apply`]) into `[1, C, H, W]` (or
///   NHWC); a PNG without a `preprocess` is [`DatasetError::NeedsPreprocess`].
///
/// A directory with neither is [`DatasetError::NoInputs`].
pub fn load_dir(
    dir: impl AsRef<Path>,
    preprocess: Option<&Preprocess>,
) -> Result<Vec<(PathBuf, TensorData)>, DatasetError> {
    let dir = dir.as_ref();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DatasetError::Io { path, source }
    };
    let mut files = Vec::new();
    let mut ignored = 0;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            // Following symlinks; a dangling link with an input's name is an error.
            Some(ext @ ("npy" | "png")) if fs::metadata(&path).map_err(io(&path))?.is_file() => {
                files.push((path.clone(), ext == "png"))
            }
            _ => ignored += 1,
        }
    }
    if files.is_empty() {
        return Err(DatasetError::NoInputs {
            dir: dir.to_path_buf(),
            ignored,
        });
    }
    files.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    files
        .into_iter()
        .map(|(path, is_png)| {
            let data = if is_png {
                let pre = preprocess
                    .ok_or_else(|| DatasetError::NeedsPreprocess { path: path.clone() })?;
                let image = read_png(&path)?;
                pre.apply(&image).map_err(|source| DatasetError::Image {
                    path: path.clone(),
                    source,
                })?
            } else {
                read_npy(&path)?
            };
            Ok((path, data))
        })
        .collect()
}

/// Concatenates samples along their first axis, `n` samples per batch, in order: samples of
/// shape `[1, C, H, W]` give batches `[n, C, H, W]`; when `n` does not divide the count, the
/// last batch holds the remainder. All samples must have the same shape and dtype.
pub fn stack_batches(samples: &[TensorData], n: usize) -> Result<Vec<TensorData>, DatasetError> {
    if n == 0 {
        return Err(DatasetError::Batch("batch size 0".into()));
    }
    let Some(first) = samples.first() else {
        return Err(DatasetError::Batch("no samples".into()));
    };
    let dims = first.shape().as_slice().to_vec();
    if dims.is_empty() {
        return Err(DatasetError::Batch(
            "0-d samples have no axis to stack along".into(),
        ));
    }
    for (index, s) in samples.iter().enumerate() {
        if s.shape().as_slice() != dims.as_slice() || s.dtype() != first.dtype() {
            return Err(DatasetError::SampleMismatch {
                index,
                expected: dims.clone(),
                expected_dtype: format!("{:?}", first.dtype()),
                got: s.shape().as_slice().to_vec(),
                got_dtype: format!("{:?}", s.dtype()),
            });
        }
    }
    samples
        .chunks(n)
        .map(|chunk| {
            let mut bytes = Vec::with_capacity(chunk.iter().map(|s| s.as_bytes().len()).sum());
            for s in chunk {
                bytes.extend_from_slice(s.as_bytes());
            }
            let mut shape = dims.clone();
            shape[0] *= chunk.len();
            TensorData::try_from_bytes_vec(bytes, shape, first.dtype())
                .map_err(|e| DatasetError::Data(format!("{e:?}")))
        })
        .collect()
}
