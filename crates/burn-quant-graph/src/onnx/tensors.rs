//! Host data for the lowering: element types, initializers from recorded data, the live
//! parameters of a model, and rank dispatch for quantizers.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{BoolStore, DType, Shape, Tensor, TensorData};
use burn_quant_export::onnx::proto::{DataType, TensorProto};

use crate::GraphError;

/// The ONNX element type of a Burn dtype (`None` for Burn's quantized `QFloat`, which a graph
/// value never is).
pub(crate) fn onnx_dtype(dtype: DType) -> Option<DataType> {
    Some(match dtype {
        DType::F64 => DataType::Double,
        DType::F32 | DType::Flex32 => DataType::Float,
        DType::F16 => DataType::Float16,
        DType::BF16 => DataType::Bfloat16,
        DType::I64 => DataType::Int64,
        DType::I32 => DataType::Int32,
        DType::I16 => DataType::Int16,
        DType::I8 => DataType::Int8,
        DType::U64 => DataType::Uint64,
        DType::U32 => DataType::Uint32,
        DType::U16 => DataType::Uint16,
        DType::U8 => DataType::Uint8,
        DType::Bool(_) => DataType::Bool,
        DType::QFloat(_) => return None,
    })
}

/// An initializer named `name` holding `data` (any element type but `QFloat`), with `shape`
/// (which must hold as many elements).
pub(crate) fn tensor_proto(
    name: &str,
    data: &TensorData,
    shape: &[usize],
) -> Result<TensorProto, String> {
    let dtype = data.dtype();
    let ty = onnx_dtype(dtype).ok_or_else(|| format!("element type {dtype:?} has no ONNX type"))?;
    let n: usize = shape.iter().product();
    if data.num_elements() != n {
        return Err(format!(
            "{} elements do not fill shape {shape:?}",
            data.num_elements()
        ));
    }
    let bytes = match dtype {
        DType::Bool(BoolStore::U32) => data
            .as_bytes()
            .chunks_exact(4)
            .map(|c| u8::from(c.iter().any(|&b| b != 0)))
            .collect(),
        DType::Bool(_) => data.as_bytes().iter().map(|&b| u8::from(b != 0)).collect(),
        // Every other element type is stored as its own little-endian values, which is
        // `raw_data`'s encoding (the targets Burn runs on are little-endian).
        _ => data.as_bytes().to_vec(),
    };
    if bytes.len() * 8 != n * ty.bits().unwrap_or(0) as usize {
        return Err(format!(
            "{} bytes do not hold {n} {}",
            bytes.len(),
            ty.onnx_name()
        ));
    }
    Ok(TensorProto::raw(name, ty, shape, bytes))
}

/// A rank-0 tensor of `dtype` holding `value`.
pub(crate) fn scalar_data(value: burn::tensor::Scalar, dtype: DType) -> TensorData {
    TensorData::full_dtype(Shape::from(Vec::<usize>::new()), value, dtype)
}

/// A module's float parameters on the host, by `ParamId`.
#[derive(Default)]
pub(crate) struct HostParams {
    pub by_id: HashMap<ParamId, TensorData>,
}

impl ModuleVisitor for HostParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.by_id.insert(param.id, param.val().into_data());
    }
}

impl HostParams {
    /// Adds every float parameter of `module`.
    pub fn add<M: Module>(&mut self, module: &M) {
        module.visit(self);
    }
}

/// Runs `$body` with `$t` bound to a float tensor of `$data` (any rank 1..=6) on `$device`;
/// `$at` names the value in the error for other ranks.
macro_rules! with_float_tensor {
    ($data:expr, $device:expr, $at:expr, |$t:ident| $body:expr) => {{
        let data: burn::tensor::TensorData = $data;
        match data.rank() {
            1 => {
                let $t = burn::tensor::Tensor::<1>::from_data(data, $device);
                $body
            }
            2 => {
                let $t = burn::tensor::Tensor::<2>::from_data(data, $device);
                $body
            }
            3 => {
                let $t = burn::tensor::Tensor::<3>::from_data(data, $device);
                $body
            }
            4 => {
                let $t = burn::tensor::Tensor::<4>::from_data(data, $device);
                $body
            }
            5 => {
                let $t = burn::tensor::Tensor::<5>::from_data(data, $device);
                $body
            }
            6 => {
                let $t = burn::tensor::Tensor::<6>::from_data(data, $device);
                $body
            }
            r => Err(GraphError::UnsupportedOp {
                op: format!("quantizer on a rank-{r} tensor"),
                at: $at,
            }),
        }
    }};
}
pub(crate) use with_float_tensor;

/// `data` with `shape` (a graph-owned parameter is stored flat); an error when the element
/// counts differ.
pub(crate) fn reshaped(
    data: TensorData,
    shape: &[usize],
    at: &str,
) -> Result<TensorData, GraphError> {
    if data.shape().as_slice() == shape {
        return Ok(data);
    }
    let n: usize = shape.iter().product();
    if data.num_elements() != n {
        return Err(GraphError::Malformed(format!(
            "parameter `{at}` holds {} values, the graph reads it as {shape:?}",
            data.num_elements()
        )));
    }
    let (bytes, _, dtype) = data.into_parts();
    Ok(TensorData::from_bytes(bytes, shape.to_vec(), dtype))
}
