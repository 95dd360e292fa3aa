//! QuantizeLinear / DequantizeLinear import: the quantization a QDQ model already carries
//! becomes our own quantizers (activations) and exact codes (weights).
//!
//! * `DequantizeLinear` of constant codes (int8/uint8/int16/uint16/int4/uint4 at any
//!   granularity ONNX has — per tensor, per axis, blocked — or float8) is a quantized weight:
//!   the layer reads the dequantized values, computed as onnxruntime does
//!   (`(q − z) · s` in f32), and the codes, scales and zero-points are kept exactly
//!   ([`super::super::ImportedWeightQuant`]). An int32 `DequantizeLinear` (a bias) is folded
//!   to its float values and re-exported as written.
//! * `QuantizeLinear → DequantizeLinear` on a run-time value is an activation quantizer: a
//!   [`crate::Op::Quant`] node with the pair's scale and zero-point
//!   ([`super::super::ImportedActivationQuant`]).
//! * Anything else reading QuantizeLinear's integer output (QLinearConv, a lone Q, …) is an
//!   error naming the node.

use burn::tensor::{DType, TensorData};
use burn_quant_core::{Format, Granularity, Minifloat, QuantSpec, WeightLayout, ZeroPoint};
use burn_quant_export::onnx::proto::DataType;

use super::super::tensor::{floats, ints};
use super::super::{ImportedActivationQuant, ImportedWeightQuant};
use super::{Importer, PendingQ, R, Sym};
use crate::ir::{Op, ValueOrigin};
use crate::quantize::{QuantNode, QuantSite};

/// Codes of a constant, with their ONNX element type.
pub(super) struct Codes {
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub codes: Vec<i32>,
}

/// The format of ONNX element type `t` (`None`: not a quantized type).
fn format_of(t: DataType) -> Option<Format> {
    use DataType as D;
    Some(match t {
        D::Int8 => Format::Int {
            bits: 8,
            signed: true,
            narrow: false,
        },
        D::Uint8 => Format::Int {
            bits: 8,
            signed: false,
            narrow: false,
        },
        D::Int16 => Format::Int {
            bits: 16,
            signed: true,
            narrow: false,
        },
        D::Uint16 => Format::Int {
            bits: 16,
            signed: false,
            narrow: false,
        },
        D::Int4 => Format::Int {
            bits: 4,
            signed: true,
            narrow: false,
        },
        D::Uint4 => Format::Int {
            bits: 4,
            signed: false,
            narrow: false,
        },
        D::Int2 => Format::Int {
            bits: 2,
            signed: true,
            narrow: false,
        },
        D::Uint2 => Format::Int {
            bits: 2,
            signed: false,
            narrow: false,
        },
        D::Float8e4m3fn => Format::Minifloat(Minifloat::e4m3()),
        D::Float8e5m2 => Format::Minifloat(Minifloat::e5m2()),
        D::Float8e4m3fnuz => Format::Minifloat(Minifloat::e4m3fnuz()),
        D::Float8e5m2fnuz => Format::Minifloat(Minifloat::e5m2fnuz()),
        _ => return None,
    })
}

fn onnx_type_of(d: DType) -> Option<DataType> {
    Some(match d {
        DType::I8 => DataType::Int8,
        DType::U8 => DataType::Uint8,
        DType::I16 => DataType::Int16,
        DType::U16 => DataType::Uint16,
        DType::I32 => DataType::Int32,
        _ => return None,
    })
}

impl Importer<'_> {
    /// Input `k` as integer (or float8 bit-pattern) codes: a constant of any element type,
    /// sub-byte and float8 ones included (which the plain tensor decoder refuses).
    fn codes_in(&mut self, k: usize) -> R<Codes> {
        let name = self.input_name(k).to_string();
        if let Some(t) = self.m.initializer(&name) {
            let dt = DataType::try_from(t.data_type).map_err(|_| {
                self.err(format!("`{name}` has unknown element type {}", t.data_type))
            })?;
            let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
            let codes: Vec<i32> =
                if format_of(dt).is_some_and(|f| matches!(f, Format::Minifloat(_))) {
                    // Bit patterns, exactly as stored.
                    let raw: Vec<u8> = if t.raw_data.is_empty() {
                        t.int32_data.iter().map(|&v| v as u8).collect()
                    } else {
                        t.raw_data.clone()
                    };
                    if raw.len() != shape.iter().product::<usize>() {
                        return Err(
                            self.err(format!("`{name}`: {} bytes for shape {shape:?}", raw.len()))
                        );
                    }
                    raw.into_iter().map(i32::from).collect()
                } else {
                    burn_quant_export::onnx::tensor_values(t)
                        .map_err(|e| self.err(e.to_string()))?
                        .into_iter()
                        .map(|v| v as i32)
                        .collect()
                };
            return Ok(Codes {
                dtype: dt,
                shape,
                codes,
            });
        }
        match self.req(k)? {
            Sym::Host(d) => {
                let dt = onnx_type_of(d.dtype()).ok_or_else(|| {
                    self.err(format!("`{name}` holds {:?}, not integer codes", d.dtype()))
                })?;
                let codes = ints(&d)
                    .map_err(|e| self.err(e))?
                    .into_iter()
                    .map(|v| v as i32)
                    .collect();
                Ok(Codes {
                    dtype: dt,
                    shape: d.shape().as_slice().to_vec(),
                    codes,
                })
            }
            Sym::Run(_) => Err(self.err(format!(
                "`{name}` is computed at run time, not constant codes"
            ))),
        }
    }

    /// Scale (input 1) and zero-point (input 2) of a Q/DQ node, with the granularity they
    /// describe on an input of `shape`.
    fn qdq_params(&mut self, shape: &[usize]) -> R<(Vec<f32>, Option<Codes>, Granularity)> {
        let scale = self.host_in(1)?;
        if !scale.dtype().is_float() {
            return Err(self.err("the scale is not a float"));
        }
        let scales: Vec<f32> = floats(&scale).into_iter().map(|v| v as f32).collect();
        // Sub-byte zero-points are only readable as codes.
        let zp = if self.input_name(2).is_empty() {
            None
        } else {
            Some(self.codes_in(2)?)
        };
        let sshape = scale.shape().as_slice().to_vec();
        let block = self.attr_i("block_size", 0);
        let axis = self.attr_i("axis", 1);
        let gran = if scales.len() == 1 && block == 0 {
            Granularity::PerTensor
        } else {
            let a = self.axis(axis, shape.len())?;
            if block > 0 {
                let size = block as usize;
                let mut want = shape.to_vec();
                want[a] = shape[a].div_ceil(size);
                if sshape != want {
                    return Err(
                        self.err(format!("blocked scale shape {sshape:?}, expected {want:?}"))
                    );
                }
                Granularity::PerGroup { axis: a, size }
            } else {
                if sshape != [shape[a]] {
                    return Err(self.err(format!(
                        "per-axis scale shape {sshape:?} does not fit axis {a} of {shape:?}"
                    )));
                }
                Granularity::PerChannel { axis: a }
            }
        };
        // Negative scales occur in weights (onnxruntime's symmetric int4 blocks use
        // llama.cpp's `max / −8`); the caller decides whether its spec can hold them.
        if scales.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(self.err("a scale is zero or not finite"));
        }
        if let Some(z) = &zp
            && z.codes.len() != scales.len()
        {
            return Err(self.err(format!(
                "{} zero-points for {} scales",
                z.codes.len(),
                scales.len()
            )));
        }
        Ok((scales, zp, gran))
    }

    /// The spec a Q/DQ pair (or a weight DQ) describes.
    fn qdq_spec(&self, dtype: DataType, gran: Granularity, zp: Option<&Codes>) -> R<QuantSpec> {
        let format = format_of(dtype).ok_or_else(|| {
            self.err(format!(
                "{} is not a quantized element type",
                dtype.onnx_name()
            ))
        })?;
        let unsigned = matches!(format, Format::Int { signed: false, .. });
        let asymmetric = unsigned || zp.is_some_and(|z| z.codes.iter().any(|&c| c != 0));
        let spec = QuantSpec::int8_act_per_tensor()
            .with_format(format)
            .with_granularity(gran)
            .with_zero_point(if asymmetric {
                ZeroPoint::Asymmetric { learned: false }
            } else {
                ZeroPoint::Symmetric
            });
        spec.validate().map_err(|e| self.err(e.to_string()))?;
        Ok(spec)
    }

    pub(super) fn quantize_linear(&mut self) -> R<()> {
        self.known_attrs(&[
            "axis",
            "block_size",
            "saturate",
            "output_dtype",
            "precision",
        ])?;
        let x = self.req(0)?;
        let out = self.node().output.first().cloned().unwrap_or_default();
        let zp_type = if self.input_name(2).is_empty() {
            None
        } else {
            Some(self.codes_in(2)?.dtype)
        };
        let dtype = match (zp_type, self.attr_i("output_dtype", 0)) {
            (Some(t), _) => t,
            (None, 0) => DataType::Uint8,
            (None, t) => {
                DataType::try_from(t as i32).map_err(|_| self.err(format!("output_dtype {t}")))?
            }
        };
        self.pending_q.insert(
            out,
            PendingQ {
                x,
                x_name: self.input_name(0).to_string(),
                dtype,
                node: self.n,
                scale_name: self.input_name(1).to_string(),
                zp_name: self.input_name(2).to_string(),
            },
        );
        self.check_extra_outputs(1)
    }

    pub(super) fn dequantize_linear(&mut self) -> R<()> {
        self.known_attrs(&["axis", "block_size", "output_dtype"])?;
        let xname = self.input_name(0).to_string();
        if let Some(q) = self.pending_q.remove(&xname) {
            return self.activation_pair(q);
        }
        let codes = self.codes_in(0)?;
        let (scales, zp, gran) = self.qdq_params(&codes.shape)?;
        if let Some(z) = &zp
            && z.dtype != codes.dtype
        {
            return Err(self.err("the zero-point's element type differs from the codes'"));
        }
        let spec_gran = gran;
        let layout = QuantSpec::int8_act_per_tensor()
            .with_granularity(spec_gran)
            .check_shape(&codes.shape)
            .map_err(|e| self.err(e.to_string()))?;
        // The float values, as onnxruntime computes them: (q − z) · s in f32.
        let format = format_of(codes.dtype);
        let n = codes.codes.len();
        let zps: Vec<f32> = zp
            .as_ref()
            .map(|z| z.codes.iter().map(|&c| c as f32).collect())
            .unwrap_or_else(|| vec![0.0; scales.len()]);
        // The scale cell of element i: per axis the axis index; blocked, the scale tensor
        // has the input's rank with the axis cut into blocks.
        let cell = |i: usize| -> usize {
            let (axis_len, inner, group) = (layout.axis_len, layout.inner, layout.group);
            let o = i / (axis_len * inner);
            let a = (i / inner) % axis_len;
            let r = i % inner;
            match gran {
                Granularity::PerChannel { .. } => a,
                _ => (o * axis_len.div_ceil(group) + a / group) * inner + r,
            }
        };
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let c = codes.codes[i];
                let k = if matches!(gran, Granularity::PerTensor) {
                    0
                } else {
                    cell(i)
                };
                match format {
                    Some(f @ Format::Minifloat(_)) => f.decode(c) * scales[k],
                    _ => (c - zps[k] as i32) as f32 * scales[k],
                }
            })
            .collect();
        let data = TensorData::new(values, codes.shape.clone());
        let out = self.node().output[0].clone();
        if codes.dtype == DataType::Int32 {
            // An int32 bias: float values for the graph; the node stays in the model.
            self.dq_constants.insert(out.clone());
            return self.out_host(data);
        }
        let mut spec = self.qdq_spec(codes.dtype, gran, zp.as_ref())?;
        if scales.iter().any(|&s| s < 0.0) {
            spec = spec.with_symmetric_scale(burn_quant_core::SymmetricScale::SignedExtreme);
            if !spec.allows_negative_scales() {
                return Err(self.err(
                    "negative scales on a grid other than a full-range signed symmetric one",
                ));
            }
        }
        self.weight_codes.insert(
            out.clone(),
            ImportedWeightQuant {
                quantizer: 0,
                path: out,
                quant_node: String::new(),
                spec,
                shape: codes.shape.clone(),
                codes: codes.codes,
                scales,
                zero_points: spec.zero_point.is_asymmetric().then_some(zps),
                onnx_dq: self.n,
            },
        );
        self.out_host(data)
    }

    /// `Q → DQ` on a value: an activation quantizer (or, on a constant, quantized codes).
    fn activation_pair(&mut self, q: PendingQ) -> R<()> {
        let dq_scale = self.input_name(1).to_string();
        let dq_zp = self.input_name(2).to_string();
        // The pair must agree (by name, or by value).
        let same_param = |imp: &mut Self, a: &str, b: &str| -> R<bool> {
            if a == b {
                return Ok(true);
            }
            if a.is_empty() || b.is_empty() {
                return Ok(false);
            }
            let (x, y) = (imp.sym(a)?, imp.sym(b)?);
            Ok(match (x, y) {
                (Sym::Host(x), Sym::Host(y)) => floats(&x) == floats(&y),
                _ => false,
            })
        };
        if !same_param(self, &q.scale_name, &dq_scale)? || !same_param(self, &q.zp_name, &dq_zp)? {
            return Err(self.err("the QuantizeLinear before it has another scale or zero-point"));
        }
        let shape = self.shape(&q.x);
        let (scales, zp, gran) = self.qdq_params(&shape)?;
        if let Sym::Host(_) = q.x {
            return Err(self.err(format!(
                "`{}` is a constant quantized by QuantizeLinear at run time; store its codes as an initializer instead",
                q.x_name
            )));
        }
        if scales.iter().any(|&s| s < 0.0) {
            return Err(self.err("an activation scale is negative"));
        }
        let spec = self.qdq_spec(q.dtype, gran, zp.as_ref())?;
        let x = self.runtime(&q.x, &q.x_name)?;
        let dt = self.g.value(x).dtype;
        let k = self.next_quantizer;
        self.next_quantizer += 1;
        let node = Op::Quant(Box::new(QuantNode {
            quantizer: k,
            site: QuantSite::Input {
                layer: self.name.clone(),
            },
            spec,
        }));
        let o = self.emit("", node, vec![x], shape, dt);
        let zero_points = spec.zero_point.is_asymmetric().then(|| {
            zp.map(|z| z.codes.iter().map(|&c| c as f32).collect())
                .unwrap_or_else(|| vec![0.0; scales.len()])
        });
        let quant_node = self.g.nodes.last().expect("just emitted").name.clone();
        self.activation_quants.push(ImportedActivationQuant {
            quantizer: k,
            quant_node,
            spec,
            scales,
            zero_points,
            onnx_q: q.node,
            onnx_dq: self.n,
        });
        self.out_run(o)
    }

    /// After a layer read weight `name` as parameter value `v`: the imported codes of a
    /// `DequantizeLinear` weight get their (disabled) weight quantizer node, so the graph
    /// lists the weight as quantized and export writes the exact codes.
    pub(super) fn weight_quant_node(
        &mut self,
        name: &str,
        v: crate::ir::ValueId,
        transposed: bool,
        layout: WeightLayout,
    ) -> R<crate::ir::ValueId> {
        let Some(mut w) = self.weight_codes.remove(name) else {
            return Ok(v);
        };
        if transposed {
            // Graph layout `[K, N]` from ONNX `[N, K]`: transpose codes, scales, zero-points.
            let [r, c] = [w.shape[0], w.shape[1]];
            w.codes = transpose2(&w.codes, r, c);
            let layout0 = w
                .spec
                .check_shape(&w.shape)
                .map_err(|e| self.err(e.to_string()))?;
            let [sr, sc] = [layout0.scale_shape[0], layout0.scale_shape[1]];
            w.scales = transpose2(&w.scales, sr, sc);
            w.zero_points = w.zero_points.as_deref().map(|z| transpose2(z, sr, sc));
            w.spec = w.spec.with_granularity(match w.spec.granularity {
                Granularity::PerChannel { axis } => Granularity::PerChannel { axis: 1 - axis },
                Granularity::PerGroup { axis, size } => Granularity::PerGroup {
                    axis: 1 - axis,
                    size,
                },
                g => g,
            });
            w.shape = vec![c, r];
        }
        let path = self.g.params[match self.g.value(v).origin {
            ValueOrigin::Param(p) => p,
            _ => return Ok(v),
        }]
        .path
        .clone();
        w.path = path.clone();
        let k = self.next_quantizer;
        self.next_quantizer += 1;
        let node = Op::Quant(Box::new(QuantNode {
            quantizer: k,
            site: QuantSite::Weight {
                layer: self.name.clone(),
                param: path.clone(),
                layout,
            },
            spec: w.spec,
        }));
        let shape = self.g.value(v).shape.clone();
        let o = self.emit(&format!("{path}.quant"), node, vec![v], shape, DType::F32);
        w.quant_node = self.g.nodes.last().expect("just emitted").name.clone();
        w.quantizer = k;
        self.weight_quants.push(w);
        Ok(o)
    }

    /// Whether `name` is QuantizeLinear's integer output still waiting for its DequantizeLinear.
    pub(super) fn pending_integer(&self, name: &str) -> bool {
        self.pending_q.contains_key(name)
    }
}

/// A row-major `[rows, cols]` matrix transposed.
fn transpose2<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..rows * cols)
        .map(|i| v[(i % rows) * cols + i / rows])
        .collect()
}
