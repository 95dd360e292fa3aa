//! Inspection of any ONNX model: a printable summary and the values of initializers.

use std::collections::BTreeMap;
use std::fmt;

use burn_quant_core::Minifloat;
use half::{bf16, f16};

use super::error::{OnnxError, Result};
use super::proto::{
    DataType, ModelProto, TensorProto, ValueInfoProto, tensor_shape_proto, type_proto,
};

/// What `burnq inspect` shows of an ONNX model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    /// IR version.
    pub ir_version: i64,
    /// Producer name and version.
    pub producer: String,
    /// `(domain, version)` of every imported operator set (`""` is ONNX's default domain).
    pub opsets: Vec<(String, i64)>,
    /// Graph inputs.
    pub inputs: Vec<ValueSummary>,
    /// Graph outputs.
    pub outputs: Vec<ValueSummary>,
    /// Number of nodes per `domain:op_type` (`op_type` alone for the default domain), sorted.
    pub ops: Vec<(String, usize)>,
    /// Every initializer.
    pub initializers: Vec<InitializerSummary>,
    /// Model metadata `(key, value)`.
    pub metadata: Vec<(String, String)>,
}

/// A graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueSummary {
    /// Name.
    pub name: String,
    /// Element type (`FLOAT`, …; `?` when not a known tensor type).
    pub elem_type: String,
    /// Dims: a size, a symbolic name, or `?`.
    pub dims: Vec<String>,
}

/// One initializer.
#[derive(Clone, Debug, PartialEq)]
pub struct InitializerSummary {
    /// Name.
    pub name: String,
    /// Element type name (`INT4`, …, or the raw number when unknown).
    pub data_type: String,
    /// Dims.
    pub dims: Vec<i64>,
    /// Bytes of data held in the file (0 for external data).
    pub bytes: usize,
    /// Whether the data lives in an external file.
    pub external: bool,
}

fn value_summary(v: &ValueInfoProto) -> ValueSummary {
    let (elem_type, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let elem = DataType::try_from(t.elem_type)
                .map(|d| d.onnx_name().to_string())
                .unwrap_or_else(|_| t.elem_type.to_string());
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(tensor_shape_proto::dimension::Value::DimValue(n)) => {
                                n.to_string()
                            }
                            Some(tensor_shape_proto::dimension::Value::DimParam(p)) => p.clone(),
                            None => "?".into(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (elem, dims)
        }
        None => ("?".into(), vec![]),
    };
    ValueSummary {
        name: v.name.clone(),
        elem_type,
        dims,
    }
}

fn held_bytes(t: &TensorProto) -> usize {
    t.raw_data.len()
        + t.float_data.len() * 4
        + t.int32_data.len() * 4
        + t.int64_data.len() * 8
        + t.double_data.len() * 8
        + t.uint64_data.len() * 8
        + t.string_data.iter().map(Vec::len).sum::<usize>()
}

/// Summarizes any ONNX model.
pub fn summarize(model: &ModelProto) -> ModelSummary {
    let empty = Default::default();
    let graph = model.graph.as_ref().unwrap_or(&empty);
    let mut ops = BTreeMap::<String, usize>::new();
    for n in &graph.node {
        let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}:{}", n.domain, n.op_type)
        };
        *ops.entry(key).or_default() += 1;
    }
    ModelSummary {
        ir_version: model.ir_version,
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
        opsets: model
            .opset_import
            .iter()
            .map(|o| (o.domain.clone(), o.version))
            .collect(),
        inputs: graph.input.iter().map(value_summary).collect(),
        outputs: graph.output.iter().map(value_summary).collect(),
        ops: ops.into_iter().collect(),
        initializers: graph
            .initializer
            .iter()
            .map(|t| InitializerSummary {
                name: t.name.clone(),
                data_type: t
                    .dtype()
                    .map(|d| d.onnx_name().to_string())
                    .unwrap_or_else(|| t.data_type.to_string()),
                dims: t.dims.clone(),
                bytes: held_bytes(t),
                external: t.data_location == 1,
            })
            .collect(),
        metadata: model
            .metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
    }
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{}:{v}", if d.is_empty() { "ai.onnx" } else { d }))
            .collect();
        writeln!(
            f,
            "ONNX model: IR {}, opsets {}, producer {:?}",
            self.ir_version,
            opsets.join(" "),
            self.producer
        )?;
        for (kind, values) in [("input", &self.inputs), ("output", &self.outputs)] {
            for v in values {
                writeln!(
                    f,
                    "{kind:<7} {} {} [{}]",
                    v.name,
                    v.elem_type,
                    v.dims.join(", ")
                )?;
            }
        }
        let ops: Vec<String> = self.ops.iter().map(|(o, n)| format!("{o} x{n}")).collect();
        writeln!(f, "nodes   {}", ops.join(", "))?;
        let total: usize = self.initializers.iter().map(|i| i.bytes).sum();
        writeln!(
            f,
            "initializers ({}, {total} bytes):",
            self.initializers.len()
        )?;
        let width = self
            .initializers
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(0);
        for i in &self.initializers {
            writeln!(
                f,
                "  {:<width$}  {:<14} {:<18} {:>10} B{}",
                i.name,
                i.data_type,
                format!("{:?}", i.dims),
                i.bytes,
                if i.external { " (external)" } else { "" }
            )?;
        }
        for (k, v) in &self.metadata {
            writeln!(f, "meta    {k} = {v}")?;
        }
        Ok(())
    }
}

/// The values of an initializer (or any tensor proto) as `f64`, row-major: integers exactly,
/// float8/float4 through their OCP definitions, f16/bf16 widened. Data may be in `raw_data` or
/// in the typed lists; external data, strings, complex and FP6 types are errors, as is data
/// whose length does not match the dims.
pub fn tensor_values(t: &TensorProto) -> Result<Vec<f64>> {
    let err = |reason: String| OnnxError::TensorData {
        name: t.name.clone(),
        reason,
    };
    if t.data_location == 1 {
        return Err(err("data is stored externally".into()));
    }
    let dtype = t
        .dtype()
        .ok_or_else(|| err(format!("unknown data type {}", t.data_type)))?;
    let n = t.dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    });
    let n = n.ok_or_else(|| err(format!("impossible dims {:?}", t.dims)))?;
    let bits = match (dtype, dtype.bits()) {
        (DataType::Complex64 | DataType::Complex128, _)
        | (DataType::Float6e2m3 | DataType::Float6e3m2, _)
        | (_, None) => {
            return Err(err(format!("{} values are not decoded", dtype.onnx_name())));
        }
        (_, Some(b)) => b as usize,
    };
    let raw: Vec<u8> = if !t.raw_data.is_empty() {
        t.raw_data.clone()
    } else {
        match dtype {
            DataType::Float => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DataType::Int64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DataType::Double => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DataType::Uint32 => t
                .uint64_data
                .iter()
                .flat_map(|v| (*v as u32).to_le_bytes())
                .collect(),
            DataType::Uint64 => t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => match bits {
                // Sub-byte types: each int32 holds one packed byte; 8-bit: one element.
                ..=8 => t.int32_data.iter().map(|&v| v as u8).collect(),
                16 => t
                    .int32_data
                    .iter()
                    .flat_map(|&v| (v as u16).to_le_bytes())
                    .collect(),
                _ => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
        }
    };
    let needed = n
        .checked_mul(bits)
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| err(format!("{n} elements overflow")))?;
    if raw.len() != needed {
        return Err(err(format!(
            "{} data bytes for {n} {} elements (expected {needed})",
            raw.len(),
            dtype.onnx_name()
        )));
    }
    let word = |i: usize, w: usize| -> u64 {
        raw[i * w..(i + 1) * w]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64)
    };
    let sub = |i: usize, width: usize| -> u32 {
        let per = 8 / width;
        ((raw[i / per] >> (width * (i % per))) as u32) & ((1 << width) - 1)
    };
    let signed =
        |v: u32, width: u32| -> f64 { (((v << (32 - width)) as i32) >> (32 - width)) as f64 };
    let mf = |m: Minifloat, code: u32| m.decode(code) as f64;
    use DataType as D;
    Ok((0..n)
        .map(|i| match dtype {
            D::Int2 => signed(sub(i, 2), 2),
            D::Uint2 => sub(i, 2) as f64,
            D::Int4 => signed(sub(i, 4), 4),
            D::Uint4 => sub(i, 4) as f64,
            D::Float4e2m1 => mf(Minifloat::e2m1(), sub(i, 4)),
            D::Int8 => raw[i] as i8 as f64,
            D::Uint8 | D::Bool => raw[i] as f64,
            D::Float8e4m3fn => mf(Minifloat::e4m3(), raw[i] as u32),
            D::Float8e4m3fnuz => mf(Minifloat::e4m3fnuz(), raw[i] as u32),
            D::Float8e5m2 => mf(Minifloat::e5m2(), raw[i] as u32),
            D::Float8e5m2fnuz => mf(Minifloat::e5m2fnuz(), raw[i] as u32),
            D::Float8e8m0 => match raw[i] {
                0xff => f64::NAN,
                e => 2f64.powi(e as i32 - 127),
            },
            D::Int16 => word(i, 2) as u16 as i16 as f64,
            D::Uint16 => word(i, 2) as f64,
            D::Float16 => f16::from_bits(word(i, 2) as u16).to_f64(),
            D::Bfloat16 => bf16::from_bits(word(i, 2) as u16).to_f64(),
            D::Float => f32::from_bits(word(i, 4) as u32) as f64,
            D::Int32 => word(i, 4) as u32 as i32 as f64,
            D::Uint32 => word(i, 4) as f64,
            D::Int64 => word(i, 8) as i64 as f64,
            D::Uint64 => word(i, 8) as f64,
            D::Double => f64::from_bits(word(i, 8)),
            D::Undefined
            | D::String
            | D::Complex64
            | D::Complex128
            | D::Float6e2m3
            | D::Float6e3m2 => {
                unreachable!("refused above")
            }
        })
        .collect())
}
