//! ONNX `TensorProto` → Burn `TensorData`, and the small host arithmetic the importer folds
//! shape computations with.

use std::path::Path;

use burn::tensor::{DType, TensorData};
use burn_quant_export::onnx::proto::{DataType, TensorProto};
use half::{bf16, f16};

/// Largest element count the importer materialises for one host tensor (a `ConstantOfShape`
/// or `Expand` of absurd dims must be an error, not an allocation failure).
pub(crate) const MAX_HOST_ELEMENTS: usize = 1 << 28;

/// The Burn element type an ONNX element type is imported as (`None`: not a plain tensor
/// type; sub-byte, float8 and float4 values only occur as Q/DQ codes, read elsewhere).
pub(crate) fn dtype_of(t: DataType) -> Option<DType> {
    use DataType as D;
    Some(match t {
        D::Float | D::Float16 | D::Bfloat16 => DType::F32,
        D::Double => DType::F64,
        D::Int8 => DType::I8,
        D::Uint8 => DType::U8,
        D::Int16 => DType::I16,
        D::Uint16 => DType::U16,
        D::Int32 => DType::I32,
        D::Int64 => DType::I64,
        D::Uint32 => DType::U32,
        D::Uint64 => DType::U64,
        D::Bool => DType::Bool(burn::tensor::BoolStore::Native),
        _ => return None,
    })
}

/// Element count of `dims`, refusing negative dims and overflow.
pub(crate) fn element_count(dims: &[i64]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .ok_or_else(|| format!("impossible dims {dims:?}"))
}

/// Reads the bytes of an externally stored tensor (`location` relative to the model's
/// directory, never outside it).
fn external_bytes(t: &TensorProto, base: Option<&Path>) -> Result<Vec<u8>, String> {
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.as_str())
    };
    let location = get("location").ok_or("external data without a `location`")?;
    let rel = Path::new(location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "external data location `{location}` leaves the model's directory"
        ));
    }
    let base =
        base.ok_or("external data needs the model's file path (load it with `OnnxModel::load`)")?;
    let bytes =
        std::fs::read(base.join(rel)).map_err(|e| format!("external data `{location}`: {e}"))?;
    let parse = |k: &str| -> Result<Option<usize>, String> {
        get(k)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| format!("external data `{k}` is `{v}`"))
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?.unwrap_or(bytes.len().saturating_sub(offset));
    let end = offset
        .checked_add(length)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| format!("external data `{location}`: {offset}+{length} is past its end"))?;
    Ok(bytes[offset..end].to_vec())
}

/// Decodes a tensor of a plain element type into `TensorData` (FLOAT16/BFLOAT16 widened to
/// f32; see [`dtype_of`]).
pub(crate) fn decode_tensor(t: &TensorProto, base: Option<&Path>) -> Result<TensorData, String> {
    let dt = DataType::try_from(t.data_type)
        .map_err(|_| format!("unknown element type {}", t.data_type))?;
    dtype_of(dt).ok_or_else(|| {
        format!(
            "{} tensors are read only as QuantizeLinear/DequantizeLinear codes",
            dt.onnx_name()
        )
    })?;
    let n = element_count(&t.dims)?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let width = dt.bits().expect("plain types have a width") as usize / 8;
    let raw: Vec<u8> = if t.data_location == 1 {
        external_bytes(t, base)?
    } else if !t.raw_data.is_empty() || n == 0 {
        t.raw_data.clone()
    } else {
        use DataType as D;
        match dt {
            D::Float => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            D::Double => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            D::Int64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            D::Uint64 => t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            D::Uint32 => t
                .uint64_data
                .iter()
                .flat_map(|v| (*v as u32).to_le_bytes())
                .collect(),
            D::Int32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            D::Int16 | D::Uint16 | D::Float16 | D::Bfloat16 => t
                .int32_data
                .iter()
                .flat_map(|v| (*v as u16).to_le_bytes())
                .collect(),
            _ => t.int32_data.iter().map(|&v| v as u8).collect(),
        }
    };
    let needed = n
        .checked_mul(width)
        .ok_or_else(|| format!("{n} elements overflow"))?;
    if raw.len() != needed {
        return Err(format!(
            "{} data bytes for {n} {} elements (expected {needed})",
            raw.len(),
            dt.onnx_name()
        ));
    }
    let words = |w: usize| raw.chunks_exact(w);
    use DataType as D;
    Ok(match dt {
        D::Float => TensorData::new(
            words(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Float16 => TensorData::new(
            words(2)
                .map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Bfloat16 => TensorData::new(
            words(2)
                .map(|b| bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Double => TensorData::new(
            words(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Int8 => TensorData::new(raw.iter().map(|&b| b as i8).collect::<Vec<_>>(), shape),
        D::Uint8 => TensorData::new(raw, shape),
        D::Bool => TensorData::new(raw.iter().map(|&b| b != 0).collect::<Vec<_>>(), shape),
        D::Int16 => TensorData::new(
            words(2)
                .map(|b| i16::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Uint16 => TensorData::new(
            words(2)
                .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Int32 => TensorData::new(
            words(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Uint32 => TensorData::new(
            words(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Int64 => TensorData::new(
            words(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<_>>(),
            shape,
        ),
        D::Uint64 => TensorData::new(
            words(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<_>>(),
            shape,
        ),
        _ => unreachable!("dtype_of refused it"),
    })
}

/// A host tensor as exact integers (bools as 0/1; floats must be integral).
pub(crate) fn ints(d: &TensorData) -> Result<Vec<i64>, String> {
    let dt = d.dtype();
    if dt.is_bool() {
        return Ok(d.iter::<bool>().map(|b| b as i64).collect());
    }
    if dt.is_float() {
        let v: Vec<f64> = d.iter::<f64>().collect();
        if v.iter().any(|x| x.fract() != 0.0 || !x.is_finite()) {
            return Err("expected integers, got fractional values".into());
        }
        return Ok(v.into_iter().map(|x| x as i64).collect());
    }
    Ok(match dt {
        DType::U64 => d
            .iter::<u64>()
            .map(|x| x.min(i64::MAX as u64) as i64)
            .collect(),
        _ => d.iter::<i64>().collect(),
    })
}

/// A host tensor as f64.
pub(crate) fn floats(d: &TensorData) -> Vec<f64> {
    if d.dtype().is_bool() {
        return d.iter::<bool>().map(|b| b as u8 as f64).collect();
    }
    d.iter::<f64>().collect()
}

/// Host data of `dtype` from f64 values (rounding toward zero for integers, as ONNX Cast
/// does for in-range values).
pub(crate) fn from_f64(values: Vec<f64>, shape: Vec<usize>, dtype: DType) -> TensorData {
    match dtype {
        DType::F64 => TensorData::new(values, shape),
        d if d.is_float() => TensorData::new(
            values.into_iter().map(|v| v as f32).collect::<Vec<_>>(),
            shape,
        ),
        d if d.is_bool() => TensorData::new(
            values.into_iter().map(|v| v != 0.0).collect::<Vec<_>>(),
            shape,
        ),
        d => TensorData::new(
            values.into_iter().map(|v| v as i64).collect::<Vec<_>>(),
            shape,
        )
        .convert_dtype(d),
    }
}

/// Host data of `dtype` from exact integers.
pub(crate) fn from_i64(values: Vec<i64>, shape: Vec<usize>, dtype: DType) -> TensorData {
    match dtype {
        DType::I64 => TensorData::new(values, shape),
        d if d.is_float() => from_f64(values.into_iter().map(|v| v as f64).collect(), shape, d),
        d if d.is_bool() => TensorData::new(
            values.into_iter().map(|v| v != 0).collect::<Vec<_>>(),
            shape,
        ),
        d => TensorData::new(values, shape).convert_dtype(d),
    }
}

/// Numpy broadcasting of two shapes.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; r - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (a, b) = (pad(a), pad(b));
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        })
        .collect()
}

/// For each element of the broadcast `out` shape, the flat index into a tensor of `shape`.
pub(crate) fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let r = out.len();
    let mut padded = vec![1; r - shape.len()];
    padded.extend_from_slice(shape);
    let mut strides = vec![0; r];
    let mut s = 1;
    for k in (0..r).rev() {
        strides[k] = if padded[k] == 1 { 0 } else { s };
        s *= padded[k];
    }
    (0..n)
        .map(|mut flat| {
            let mut idx = 0;
            for k in (0..r).rev() {
                let i = flat % out[k];
                flat /= out[k];
                idx += i * strides[k];
            }
            idx
        })
        .collect()
}

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}
