//! The subset of `onnx.proto` (ONNX IR, proto2) that the exporters write and the reader
//! inspects, as hand-written `prost` messages with the official field numbers.
//!
//! Fields the exporters never set (training info, functions, sparse tensors, non-tensor
//! types, …) are left out: protobuf decoding skips unknown fields, so these structs still read
//! any ONNX file, they just do not keep those parts. Scalar fields that proto2 tracks for
//! presence and whose zero value is meaningful (attribute values) are `Option`s, so a zero is
//! written explicitly; the others follow proto3 style (a default value is not written, which a
//! proto2 reader takes as that same default). Repeated numeric fields are packed exactly where
//! `onnx.proto` says `[packed = true]`.

use prost::{Enumeration, Message};

/// `TensorProto.DataType`: element types of tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// Not set.
    Undefined = 0,
    /// IEEE f32.
    Float = 1,
    /// u8.
    Uint8 = 2,
    /// i8.
    Int8 = 3,
    /// u16.
    Uint16 = 4,
    /// i16.
    Int16 = 5,
    /// i32.
    Int32 = 6,
    /// i64.
    Int64 = 7,
    /// UTF-8 string.
    String = 8,
    /// bool.
    Bool = 9,
    /// IEEE f16.
    Float16 = 10,
    /// IEEE f64.
    Double = 11,
    /// u32.
    Uint32 = 12,
    /// u64.
    Uint64 = 13,
    /// Complex of two f32.
    Complex64 = 14,
    /// Complex of two f64.
    Complex128 = 15,
    /// bfloat16.
    Bfloat16 = 16,
    /// OCP FP8 E4M3 (bias 7, NaN only, no Inf).
    Float8e4m3fn = 17,
    /// FP8 E4M3 with bias 8, no negative zero, no Inf.
    Float8e4m3fnuz = 18,
    /// OCP FP8 E5M2 (IEEE-like).
    Float8e5m2 = 19,
    /// FP8 E5M2 with bias 16, no negative zero, no Inf.
    Float8e5m2fnuz = 20,
    /// 4-bit unsigned integer, two per byte.
    Uint4 = 21,
    /// 4-bit signed integer, two per byte.
    Int4 = 22,
    /// OCP FP4 E2M1, two per byte.
    Float4e2m1 = 23,
    /// OCP E8M0 (MX scale type).
    Float8e8m0 = 24,
    /// 2-bit unsigned integer, four per byte.
    Uint2 = 25,
    /// 2-bit signed integer, four per byte.
    Int2 = 26,
    /// OCP FP6 E2M3.
    Float6e2m3 = 27,
    /// OCP FP6 E3M2.
    Float6e3m2 = 28,
}

impl DataType {
    /// Bits of one element in `raw_data` (`None` for strings, undefined and unknown types).
    pub fn bits(self) -> Option<u32> {
        use DataType::*;
        Some(match self {
            Uint2 | Int2 => 2,
            Uint4 | Int4 | Float4e2m1 => 4,
            Float6e2m3 | Float6e3m2 => 6,
            Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
            | Float8e8m0 => 8,
            Uint16 | Int16 | Float16 | Bfloat16 => 16,
            Float | Int32 | Uint32 => 32,
            Int64 | Uint64 | Double | Complex64 => 64,
            Complex128 => 128,
            Undefined | String => return None,
        })
    }

    /// The upper-case name `onnx.proto` gives the type (`INT4`, `FLOAT8E4M3FN`, …).
    pub fn onnx_name(self) -> &'static str {
        use DataType::*;
        match self {
            Undefined => "UNDEFINED",
            Float => "FLOAT",
            Uint8 => "UINT8",
            Int8 => "INT8",
            Uint16 => "UINT16",
            Int16 => "INT16",
            Int32 => "INT32",
            Int64 => "INT64",
            String => "STRING",
            Bool => "BOOL",
            Float16 => "FLOAT16",
            Double => "DOUBLE",
            Uint32 => "UINT32",
            Uint64 => "UINT64",
            Complex64 => "COMPLEX64",
            Complex128 => "COMPLEX128",
            Bfloat16 => "BFLOAT16",
            Float8e4m3fn => "FLOAT8E4M3FN",
            Float8e4m3fnuz => "FLOAT8E4M3FNUZ",
            Float8e5m2 => "FLOAT8E5M2",
            Float8e5m2fnuz => "FLOAT8E5M2FNUZ",
            Uint4 => "UINT4",
            Int4 => "INT4",
            Float4e2m1 => "FLOAT4E2M1",
            Float8e8m0 => "FLOAT8E8M0",
            Uint2 => "UINT2",
            Int2 => "INT2",
            Float6e2m3 => "FLOAT6E2M3",
            Float6e3m2 => "FLOAT6E3M2",
        }
    }
}

/// `AttributeProto.AttributeType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    /// Not set.
    Undefined = 0,
    /// `f`.
    Float = 1,
    /// `i`.
    Int = 2,
    /// `s`.
    String = 3,
    /// `t`.
    Tensor = 4,
    /// A graph (not used here).
    Graph = 5,
    /// `floats`.
    Floats = 6,
    /// `ints`.
    Ints = 7,
    /// `strings`.
    Strings = 8,
    /// `tensors`.
    Tensors = 9,
    /// A list of graphs (not used here).
    Graphs = 10,
    /// A sparse tensor (not used here).
    SparseTensor = 11,
    /// A list of sparse tensors (not used here).
    SparseTensors = 12,
    /// A type proto (not used here).
    TypeProto = 13,
    /// A list of type protos (not used here).
    TypeProtos = 14,
}

/// A whole model: IR version, operator sets and the graph.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// IR version of the file (10 for opset 21, …).
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Operator sets the graph uses, one per domain.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Tool that wrote the model.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Version of that tool.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Reverse-DNS namespace of the model.
    #[prost(string, tag = "4")]
    pub domain: String,
    /// Version of the model itself.
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// Free text.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The computation.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Named metadata strings.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// A key/value string pair.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// An operator set: domain (`""` is the default ONNX domain) and version.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Domain, e.g. `""` or `qonnx.custom_op.general`.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Operator set version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A graph: nodes in topological order, constant initializers, inputs and outputs.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes, topologically sorted.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors (weights, scales, zero-points).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Free text.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Types and shapes of intermediate values.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
    /// Named metadata strings.
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// One operator application.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Input value names (`""` for an omitted optional input).
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator, e.g. `DequantizeLinear`.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Operator domain (`""`: ONNX).
    #[prost(string, tag = "7")]
    pub domain: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Free text.
    #[prost(string, tag = "6")]
    pub doc_string: String,
}

/// A named attribute value of a node; `type` says which value field is used.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Which value field holds the value.
    #[prost(enumeration = "AttributeType", optional, tag = "20")]
    pub r#type: Option<i32>,
    /// Free text.
    #[prost(string, tag = "13")]
    pub doc_string: String,
    /// Float value.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// Integer value.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// String value (UTF-8 bytes).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    /// Tensor value.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// List of floats.
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    /// List of integers.
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// List of strings.
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    /// List of tensors.
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
}

/// A tensor: element type, dims and data (here always `raw_data`, little-endian, sub-byte
/// types packed low bits first).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Shape (empty for a scalar).
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// Element type, a [`DataType`].
    #[prost(enumeration = "DataType", tag = "2")]
    pub data_type: i32,
    /// Data of FLOAT tensors stored as a list.
    #[prost(float, repeated, packed = "true", tag = "4")]
    pub float_data: Vec<f32>,
    /// Data of INT32 and narrower integer / FLOAT16 / FLOAT8 tensors stored as a list.
    #[prost(int32, repeated, packed = "true", tag = "5")]
    pub int32_data: Vec<i32>,
    /// Data of STRING tensors.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    /// Data of INT64 tensors stored as a list.
    #[prost(int64, repeated, packed = "true", tag = "7")]
    pub int64_data: Vec<i64>,
    /// Name (the value name when used as an initializer).
    #[prost(string, tag = "8")]
    pub name: String,
    /// Free text.
    #[prost(string, tag = "12")]
    pub doc_string: String,
    /// Data as raw little-endian bytes.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// Location of externally stored data (`location`, `offset`, `length`, …).
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0: data in this message; 1: external.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
    /// Data of DOUBLE tensors stored as a list.
    #[prost(double, repeated, packed = "true", tag = "10")]
    pub double_data: Vec<f64>,
    /// Data of UINT32/UINT64 tensors stored as a list.
    #[prost(uint64, repeated, packed = "true", tag = "11")]
    pub uint64_data: Vec<u64>,
}

/// Name and type of a graph input, output or intermediate value.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type (a tensor type here).
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// Free text.
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// A value type; only tensor types are modelled (other kinds decode as `value: None`).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// The kind of type.
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    /// Optional denotation.
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested types of [`TypeProto`].
pub mod type_proto {
    use super::{DataType, TensorShapeProto};

    /// A tensor type: element type and (optional) shape.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// Element type, a [`DataType`].
        #[prost(enumeration = "DataType", tag = "1")]
        pub elem_type: i32,
        /// Shape; `None` when unknown.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    /// The kinds of type that are modelled.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// A tensor.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }
}

/// A tensor shape: one entry per axis, each a number or a symbolic name.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Axes.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested types of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One axis of a shape.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// Fixed size or symbolic name; `None` when unknown.
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        /// Optional denotation.
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// Nested types of [`Dimension`].
    pub mod dimension {
        /// A fixed size or a symbolic name.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// Fixed size.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// Symbolic name (e.g. `batch`).
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

// ----- constructors used by the builders -----------------------------------------------------

impl AttributeProto {
    /// An `INT` attribute.
    pub fn int(name: &str, value: i64) -> Self {
        Self {
            name: name.into(),
            r#type: Some(AttributeType::Int as i32),
            i: Some(value),
            ..Default::default()
        }
    }
    /// An `INTS` attribute.
    pub fn ints(name: &str, values: &[i64]) -> Self {
        Self {
            name: name.into(),
            r#type: Some(AttributeType::Ints as i32),
            ints: values.to_vec(),
            ..Default::default()
        }
    }
    /// A `FLOAT` attribute.
    pub fn float(name: &str, value: f32) -> Self {
        Self {
            name: name.into(),
            r#type: Some(AttributeType::Float as i32),
            f: Some(value),
            ..Default::default()
        }
    }
    /// A `STRING` attribute.
    pub fn string(name: &str, value: &str) -> Self {
        Self {
            name: name.into(),
            r#type: Some(AttributeType::String as i32),
            s: Some(value.as_bytes().to_vec()),
            ..Default::default()
        }
    }
}

impl TensorProto {
    /// A tensor with `raw_data` holding `bytes` (already encoded for `data_type`).
    pub fn raw(name: &str, data_type: DataType, dims: &[usize], bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            data_type: data_type as i32,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw_data: bytes,
            ..Default::default()
        }
    }
    /// A FLOAT tensor.
    pub fn f32s(name: &str, dims: &[usize], values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::raw(name, DataType::Float, dims, bytes)
    }
    /// An INT64 tensor.
    pub fn i64s(name: &str, dims: &[usize], values: &[i64]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::raw(name, DataType::Int64, dims, bytes)
    }
    /// The element type, if it is one `onnx.proto` knows.
    pub fn dtype(&self) -> Option<DataType> {
        DataType::try_from(self.data_type).ok()
    }
    /// The dims as `usize` (`None` if one is negative).
    pub fn shape(&self) -> Option<Vec<usize>> {
        self.dims.iter().map(|&d| usize::try_from(d).ok()).collect()
    }
}

impl ValueInfoProto {
    /// A tensor value of `elem_type`; each dim is a fixed size or a symbolic name.
    pub fn tensor(name: &str, elem_type: DataType, dims: &[Dim]) -> Self {
        use tensor_shape_proto::{Dimension, dimension::Value};
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(n) => Value::DimValue(*n as i64),
                    Dim::Param(p) => Value::DimParam(p.clone()),
                }),
                denotation: String::new(),
            })
            .collect();
        Self {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: elem_type as i32,
                    shape: Some(TensorShapeProto { dim }),
                })),
                denotation: String::new(),
            }),
            doc_string: String::new(),
        }
    }
}

/// One axis of a graph input/output shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A symbolic size (e.g. the batch), any value at run time.
    Param(String),
}

impl ModelProto {
    /// The protobuf encoding of the model (the bytes of a `.onnx` file).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    /// Version of the default (`""`/`ai.onnx`) operator set, if imported.
    pub fn default_opset(&self) -> Option<i64> {
        self.opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-encoded protobuf bytes (wire format: tag = field << 3 | wire type) decode into
    /// the right fields: this pins the field numbers independently of prost's encoder.
    #[test]
    fn field_numbers_match_onnx_proto() {
        // OperatorSetIdProto { domain = "x" (1, len), version = 21 (2, varint) }
        let opset = OperatorSetIdProto::decode(&[0x0a, 0x01, b'x', 0x10, 21][..]).unwrap();
        assert_eq!((opset.domain.as_str(), opset.version), ("x", 21));
        // ModelProto { ir_version = 10 (1), opset_import (8, len) = {version 21} }
        let model = ModelProto::decode(&[0x08, 10, 0x42, 0x02, 0x10, 21][..]).unwrap();
        assert_eq!(model.ir_version, 10);
        assert_eq!(model.default_opset(), Some(21));
        // TensorProto { dims = 2 (1, unpacked varint), data_type = INT4 (2), raw_data (9) }
        let t = TensorProto::decode(&[0x08, 2, 0x10, 22, 0x4a, 0x01, 0xe1][..]).unwrap();
        assert_eq!(
            (t.dims.clone(), t.dtype(), t.raw_data.clone()),
            (vec![2], Some(DataType::Int4), vec![0xe1])
        );
        // AttributeProto { name "axis" (1), i = 0 (3), type = INT (20: tag bytes a0 01) }
        let a =
            AttributeProto::decode(&[0x0a, 4, b'a', b'x', b'i', b's', 0x18, 0, 0xa0, 0x01, 2][..])
                .unwrap();
        assert_eq!((a.name.as_str(), a.i, a.r#type), ("axis", Some(0), Some(2)));
        // ... and prost encodes an explicit zero for the proto2 optional `i`.
        assert_eq!(
            AttributeProto::int("axis", 0).encode_to_vec(),
            vec![0x0a, 4, b'a', b'x', b'i', b's', 0x18, 0, 0xa0, 0x01, 2]
        );
        // NodeProto { input (1), output (2), op_type (4) = "Relu", domain (7) }
        let n = NodeProto::decode(
            &[
                0x0a, 1, b'a', 0x12, 1, b'b', 0x22, 4, b'R', b'e', b'l', b'u', 0x3a, 1, b'd',
            ][..],
        )
        .unwrap();
        assert_eq!(
            (n.input, n.output, n.op_type.as_str(), n.domain.as_str()),
            (vec!["a".to_string()], vec!["b".to_string()], "Relu", "d")
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_garbage_is_an_error() {
        // A ModelProto with field 20 (training_info, not modelled) before ir_version.
        let model = ModelProto::decode(&[0xa2, 0x01, 0x00, 0x08, 7][..]).unwrap();
        assert_eq!(model.ir_version, 7);
        assert!(ModelProto::decode(&[0x0a, 0xff, 0xff][..]).is_err());
        assert!(ModelProto::decode(&[0x3a, 0x10, 0x01][..]).is_err());
    }

    #[test]
    fn data_type_numbers_and_names() {
        assert_eq!(DataType::Int4 as i32, 22);
        assert_eq!(DataType::Float8e5m2 as i32, 19);
        assert_eq!(DataType::Int2 as i32, 26);
        assert_eq!(DataType::Float8e4m3fn.onnx_name(), "FLOAT8E4M3FN");
        assert_eq!(DataType::Int4.bits(), Some(4));
    }
}
