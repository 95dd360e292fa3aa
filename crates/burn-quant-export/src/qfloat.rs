//! Real quantized weights in memory: a model whose quantized parameters are Burn `QFloat`
//! tensors, so it holds (and runs on) Burn's quantized storage instead of f32 copies.
//!
//! [`to_qfloat_model`] replaces each parameter named by a [`QuantWeight`] (matched by
//! `ParamId`) with the Burn `QFloat` tensor [`to_burn_qdata`] makes of its codes and scales —
//! the same exact mapping as the burnpack records, nothing re-quantized — on the parameter's
//! own device. [`IntoQFloat::into_qfloat`] does it for a [`QuantizedModel`] from
//! `burn_quant_nn::quantize_model`. [`param_bytes`] counts what the parameters hold.
//!
//! What Burn 0.22 does with such a model, read from its sources and pinned by the tests below:
//!
//! - Memory: Burn's CPU backend `flex` keeps one `i8` per value plus one `f32` per block scale,
//!   whatever the value type (it unpacks `Q4`/`Q2` on load): int8 per channel ≈ ¼ of f32,
//!   int4 per group of 32 ≈ 0.28 of f32 (not ⅛). CubeCL backends (wgpu, CUDA) keep the packed
//!   `u32` words (int4: ⅛ of f32 plus scales; read from Burn's sources, not measured here).
//! - Forward: `matmul`, `conv*` and `linear` with a `QFloat` operand dequantize it to f32 and
//!   run the float kernel (flex has no integer matmul), so the f32 copy of one weight exists
//!   only while its layer runs; the dequantization is Burn's, bit-exact to ours, so a
//!   converted model computes what the fake-quantized one computes.
//! - Except on flex's relayout path: Burn's `linear` unsqueezes the weight for a matrix or
//!   batch-1 input, and flex runs every layout operation of a *per-block* `QFloat` tensor as
//!   dequantize → re-quantize with its own absmax block scales (see
//!   [`flex_relayout_is_lossless`]). A stock `burn::nn::Linear` with a per-channel or per-group
//!   weight therefore computes with slightly different weights there (per-tensor weights are
//!   unaffected); burn-quant's `QuantLinear` multiplies a `QFloat` weight without any layout
//!   operation and stays exact.
//! - A layer of ours that still has a weight quantizer fake-quantizes the dequantized weight on
//!   every forward (correct, but a float weight again while it runs): convert models whose
//!   layers have none, as the LLM pipeline's have.

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::quantization::quantized_data_len;
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_quant_nn::{AnyQuantTensor, QuantWeight, QuantizedModel};

#[cfg(doc)]
use crate::burnpack::flex_relayout_is_lossless;
use crate::burnpack::{BurnQuantOptions, BurnpackError, Result, check_device, to_burn_qdata};

/// Burn's `QFloat` data for a quantized tensor of any rank.
pub fn any_to_burn_qdata(q: &AnyQuantTensor, options: &BurnQuantOptions) -> Result<TensorData> {
    match q {
        AnyQuantTensor::Rank1(q) => to_burn_qdata(q, options),
        AnyQuantTensor::Rank2(q) => to_burn_qdata(q, options),
        AnyQuantTensor::Rank3(q) => to_burn_qdata(q, options),
        AnyQuantTensor::Rank4(q) => to_burn_qdata(q, options),
        AnyQuantTensor::Rank5(q) => to_burn_qdata(q, options),
        AnyQuantTensor::Rank6(q) => to_burn_qdata(q, options),
    }
}

/// `model` with every parameter named by `weights` (matched by [`QuantWeight::id`]) replaced by
/// its Burn `QFloat` tensor on that parameter's device; other parameters are untouched. The
/// replaced parameters keep their ids and need no gradient (an attached reparameterization,
/// such as a QAT fake-quantizer, is dropped: the weight is now quantized).
///
/// Everything is checked before the model is changed: a weight whose id is no float parameter
/// of `model` ([`BurnpackError::UnknownParameter`]), given twice
/// ([`BurnpackError::DuplicatePath`]), of another shape ([`BurnpackError::ShapeMismatch`]), or
/// that Burn cannot hold or the device cannot decode ([`BurnpackError::Parameter`] naming the
/// parameter, around the reason) is an error.
pub fn to_qfloat_model<M: Module>(
    model: M,
    weights: &[QuantWeight],
    options: &BurnQuantOptions,
) -> Result<M> {
    let survey = Survey::of(&model);
    let mut seen = HashSet::new();
    for w in weights {
        if !seen.insert(w.id) {
            return Err(BurnpackError::DuplicatePath {
                path: w.path.clone(),
            });
        }
    }
    let mut by_id = HashMap::with_capacity(weights.len());
    for w in weights {
        let Some(p) = survey.params.get(&w.id) else {
            return Err(BurnpackError::UnknownParameter {
                path: w.path.clone(),
                known: survey.paths.clone(),
            });
        };
        let quantized = w.tensor.shape();
        if quantized != p.shape {
            return Err(BurnpackError::ShapeMismatch {
                path: p.path.clone(),
                quantized,
                parameter: p.shape.clone(),
            });
        }
        let in_param = |source| BurnpackError::Parameter {
            path: p.path.clone(),
            source: Box::new(source),
        };
        let data = any_to_burn_qdata(&w.tensor, options).map_err(in_param)?;
        check_device(data.dtype(), &p.device).map_err(in_param)?;
        by_id.insert(w.id, data);
    }
    Ok(model.map(&mut ToQFloat { by_id }))
}

/// Conversion of a quantized model to Burn's quantized storage.
pub trait IntoQFloat {
    /// The model type.
    type Model;
    /// The model with its quantized weights as Burn `QFloat` tensors ([`to_qfloat_model`]).
    fn into_qfloat(self, options: &BurnQuantOptions) -> Result<Self::Model>;
}

impl<M: Module> IntoQFloat for QuantizedModel<M> {
    type Model = M;
    /// The codes of `burn_quant_nn::quantize_model`, in place of its dequantized weights.
    fn into_qfloat(self, options: &BurnQuantOptions) -> Result<M> {
        to_qfloat_model(self.model, &self.weights, options)
    }
}

/// What one float parameter of a model is, found without materialising it.
struct ParamInfo {
    path: String,
    shape: Vec<usize>,
    device: Device,
}

/// Every float parameter of a model by id, and their paths in traversal order.
struct Survey {
    stack: Vec<String>,
    params: HashMap<ParamId, ParamInfo>,
    paths: Vec<String>,
}

impl Survey {
    fn of<M: Module>(model: &M) -> Self {
        let mut s = Survey {
            stack: vec![],
            params: HashMap::new(),
            paths: vec![],
        };
        model.visit(&mut s);
        s
    }
}

impl ModuleVisitor for Survey {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.stack.join(".");
        self.paths.push(path.clone());
        self.params.insert(
            param.id,
            ParamInfo {
                path,
                shape: param.lazy_shape().to_vec(),
                device: param.lazy_device(),
            },
        );
    }
}

/// Replaces the parameters found in `by_id` (checked beforehand) by their `QFloat` tensors.
struct ToQFloat {
    by_id: HashMap<ParamId, TensorData>,
}

impl ModuleMapper for ToQFloat {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(data) = self.by_id.remove(&param.id) else {
            return param;
        };
        let (id, device) = (param.id, param.lazy_device());
        // The float value goes before the quantized one is allocated.
        drop(param);
        Param::initialized(id, Tensor::from_data(data, &device))
    }
}

/// Bytes held by a model's float parameters, as their dtypes say the device stores them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamBytes {
    /// Parameters stored as plain floats.
    pub float_params: usize,
    /// Their bytes (elements × dtype size).
    pub float_bytes: u64,
    /// Parameters stored as Burn `QFloat`.
    pub quantized_params: usize,
    /// Their bytes: values and scales in the store the backend reports (`Native` `i8` on flex,
    /// packed `u32` words on CubeCL backends), Burn's `quantized_data_len`.
    pub quantized_bytes: u64,
    /// What the quantized parameters would take as `f32`.
    pub quantized_as_f32_bytes: u64,
}

impl ParamBytes {
    /// All parameter bytes.
    pub fn total(&self) -> u64 {
        self.float_bytes + self.quantized_bytes
    }
}

/// Counts the bytes `model`'s float parameters hold, quantized or not. Reads dtypes and shapes
/// only; no data is copied.
pub fn param_bytes<M: Module>(model: &M) -> ParamBytes {
    struct Count(ParamBytes);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // The stored value: an attached reparameterization keeps the dtype and shape.
            let t = param.base();
            let shape = t.shape();
            let n = shape.num_elements() as u64;
            match t.dtype() {
                DType::QFloat(scheme) => {
                    self.0.quantized_params += 1;
                    self.0.quantized_bytes += quantized_data_len(&scheme, &shape) as u64;
                    self.0.quantized_as_f32_bytes += 4 * n;
                }
                dtype => {
                    self.0.float_params += 1;
                    self.0.float_bytes += n * dtype.size() as u64;
                }
            }
        }
    }
    let mut count = Count(ParamBytes::default());
    model.visit(&mut count);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burnpack::flex_relayout_is_lossless;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::activation::relu;
    use burn::tensor::quantization::QuantStore;
    use burn_quant_core::{QuantSpec, quantize};
    use burn_quant_nn::{QuantLinear, QuantLinearConfig, QuantPlan, quantize_model};

    /// Deterministic inputs in [-1, 1) (xorshift).
    fn input<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<D> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        t.into_data()
            .try_into_vec_as::<f32>()
            .expect("f32")
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn is_qfloat<const D: usize>(p: &Param<Tensor<D>>) -> bool {
        matches!(p.val().dtype(), DType::QFloat(_))
    }

    /// A model of stock `burn::nn` layers; `d_in` > 255 so per-channel weights need several
    /// Burn blocks per channel.
    #[derive(Module, Debug)]
    struct Mlp {
        fc1: Linear,
        fc2: Linear,
    }

    impl Mlp {
        /// Seeded weights (Burn's initializers are not), in the range of its default init:
        /// the test's tolerance must see the same model on every run.
        fn new(device: &Device) -> Self {
            let linear = |d_in: usize, d_out: usize, seed: u64| {
                let mut l = LinearConfig::new(d_in, d_out).init(device);
                let bound = 1.0 / (d_in as f32).sqrt();
                l.weight = Param::from_tensor(input([d_in, d_out], seed).mul_scalar(bound));
                l.bias = Some(Param::from_tensor(input([d_out], seed + 1).mul_scalar(bound)));
                l
            };
            Self {
                fc1: linear(320, 64, 101),
                fc2: linear(64, 16, 103),
            }
        }
        fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
            self.fc2.forward(relu(self.fc1.forward(x)))
        }
    }

    /// The same layers as burn-quant's `QuantLinear` without quantizers (as the LLM pipeline
    /// builds them).
    #[derive(Module, Debug)]
    struct QMlp {
        fc1: QuantLinear,
        fc2: QuantLinear,
    }

    impl QMlp {
        fn from(m: Mlp, device: &Device) -> Self {
            let wrap = |l: Linear| {
                let [i, o] = l.weight.dims();
                QuantLinearConfig::new(i, o)
                    .with_weight_quant(None)
                    .from_float(l, device)
                    .expect("shapes agree")
            };
            Self {
                fc1: wrap(m.fc1),
                fc2: wrap(m.fc2),
            }
        }
        fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
            self.fc2.forward(relu(self.fc1.forward(x)))
        }
    }

    #[derive(Module, Debug)]
    struct ConvNet {
        conv1: Conv2d,
        conv2: Conv2d,
        head: Linear,
    }

    impl ConvNet {
        fn new(device: &Device) -> Self {
            Self {
                conv1: Conv2dConfig::new([3, 16], [3, 3]).init(device),
                conv2: Conv2dConfig::new([16, 32], [3, 3]).init(device),
                head: LinearConfig::new(32 * 4 * 4, 10).init(device),
            }
        }
        fn forward(&self, x: Tensor<4>) -> Tensor<2> {
            let x = relu(self.conv2.forward(relu(self.conv1.forward(x))));
            let [b, c, h, w] = x.dims();
            self.head.forward(x.reshape([b, c * h * w]))
        }
    }

    fn plan(spec: QuantSpec) -> QuantPlan {
        QuantPlan::new().rule("**.weight", spec)
    }

    fn opts() -> BurnQuantOptions {
        BurnQuantOptions::default()
    }

    #[test]
    fn a_converted_burn_nn_mlp_computes_what_the_fake_quantized_one_computes() {
        let device = Device::flex();
        let specs = [
            QuantSpec::int8_weight_per_tensor(),
            QuantSpec::int8_weight_per_output_channel(),
            QuantSpec::int4_weight_per_input_group(32),
        ];
        for spec in specs {
            let qm = quantize_model(Mlp::new(&device), &plan(spec)).unwrap();
            let fake = qm.model.clone();
            let lossless = qm.weights.iter().all(|w| match &w.tensor {
                AnyQuantTensor::Rank2(q) => flex_relayout_is_lossless(q).unwrap(),
                _ => unreachable!("Linear weights are rank 2"),
            });
            let conv = qm.into_qfloat(&opts()).unwrap();
            assert!(is_qfloat(&conv.fc1.weight) && is_qfloat(&conv.fc2.weight));
            assert_eq!(conv.fc1.weight.id, fake.fc1.weight.id);
            // Biases are untouched.
            assert_eq!(
                bits(conv.fc1.bias.as_ref().unwrap().val()),
                bits(fake.fc1.bias.as_ref().unwrap().val())
            );
            // Several batches of a few rows: Burn folds them into one matmul on the weight as
            // stored — bit for bit the fake-quantized model's float `linear`.
            let x3 = input([4, 3, 320], 1);
            assert_eq!(
                bits(conv.forward(x3.clone())),
                bits(fake.forward(x3)),
                "{spec}"
            );
            // A matrix input: Burn unsqueezes the weight, which flex re-quantizes when it is
            // per block. Exact when that re-quantization is (per tensor), else close.
            let x2 = input([5, 320], 2);
            let d2 = max_abs_diff(conv.forward(x2.clone()), fake.forward(x2));
            if lossless {
                assert_eq!(d2, 0.0, "{spec}");
            } else {
                assert!(d2 > 0.0 && d2 < 0.05, "{spec}: {d2}");
            }
            println!(
                "{spec}: rank-2 max |converted - fake| = {d2:e} (lossless relayout: {lossless})"
            );
        }
    }

    #[test]
    fn quant_linear_multiplies_a_qfloat_weight_as_stored() {
        let device = Device::flex();
        for spec in [
            QuantSpec::int8_weight_per_output_channel(),
            QuantSpec::int4_weight_per_input_group(32),
        ] {
            let qm = quantize_model(QMlp::from(Mlp::new(&device), &device), &plan(spec)).unwrap();
            let fake = qm.model.clone();
            let conv = qm.into_qfloat(&opts()).unwrap();
            assert!(is_qfloat(&conv.fc1.weight));
            // Matrix, batch-1 and several-batch inputs: all exact (no relayout of the weight).
            for (x, seed) in [(input([5, 320], 3), 3), (input([1, 320], 4), 4)] {
                assert_eq!(
                    bits(conv.forward(x.clone())),
                    bits(fake.forward(x)),
                    "{spec} {seed}"
                );
            }
            let x = input([1, 6, 320], 5);
            let (a, b) = (conv.forward(x.clone()), fake.forward(x));
            assert_eq!(a.dims(), [1, 6, 16]);
            assert_eq!(bits(a), bits(b), "{spec} rank 3");
            let x = input([320], 6);
            assert_eq!(
                bits(conv.forward(x.clone())),
                bits(fake.forward(x)),
                "{spec} rank 1"
            );
        }
    }

    #[test]
    fn a_converted_conv_net_computes_what_the_fake_quantized_one_computes() {
        let device = Device::flex();
        let plan = QuantPlan::new()
            .rule("conv1.weight", QuantSpec::int8_weight_per_output_channel())
            .rule("conv2.weight", QuantSpec::int4_weight_per_input_group(8))
            .rule("head.weight", QuantSpec::int8_weight_per_tensor());
        let qm = quantize_model(ConvNet::new(&device), &plan).unwrap();
        assert_eq!(qm.weights.len(), 3);
        let fake = qm.model.clone();
        let conv = qm.into_qfloat(&opts()).unwrap();
        assert!(is_qfloat(&conv.conv1.weight) && is_qfloat(&conv.conv2.weight));
        // Convolutions dequantize the weight (Burn's dequantization, exact) and run the float
        // kernel; the per-tensor head survives the matrix path.
        let x = input([2, 3, 8, 8], 7);
        assert_eq!(bits(conv.forward(x.clone())), bits(fake.forward(x)));
    }

    #[test]
    fn converted_parameters_hold_the_closed_form_bytes() {
        let device = Device::flex();
        let model = Mlp::new(&device);
        let float = param_bytes(&model);
        assert_eq!(float.float_params, 4);
        assert_eq!(float.float_bytes, 4 * (320 * 64 + 64 + 64 * 16 + 16));
        assert_eq!(float.quantized_params, 0);

        // int8 per output channel: 1 byte per value, and one f32 scale per Burn block: fc1
        // [320, 64] has blocks [160, 1] (d_in > 255), 2 per channel; fc2 [64, 16] blocks [64, 1].
        let conv = quantize_model(
            model.clone(),
            &plan(QuantSpec::int8_weight_per_output_channel()),
        )
        .unwrap()
        .into_qfloat(&opts())
        .unwrap();
        let b = param_bytes(&conv);
        assert_eq!(b.quantized_params, 2);
        assert_eq!(
            b.quantized_bytes,
            (320 * 64 + 4 * 2 * 64) + (64 * 16 + 4 * 16)
        );
        assert_eq!(b.quantized_as_f32_bytes, 4 * (320 * 64 + 64 * 16));
        assert_eq!(b.float_bytes, 4 * (64 + 16));
        // Stored by flex as one i8 per value.
        let DType::QFloat(scheme) = conv.fc1.weight.val().dtype() else {
            unreachable!()
        };
        assert_eq!(scheme.store, QuantStore::Native);

        // int4, groups of 32 inputs: Burn's data packs two values per byte, but flex unpacks
        // them to one i8 each on load: n bytes + one f32 per group.
        let qm = quantize_model(model, &plan(QuantSpec::int4_weight_per_input_group(32))).unwrap();
        let packed: u64 = qm
            .weights
            .iter()
            .map(|w| any_to_burn_qdata(&w.tensor, &opts()).unwrap().bytes().len() as u64)
            .sum();
        let scales = 4 * (320 / 32 * 64 + 64 / 32 * 16);
        assert_eq!(packed, (320 * 64 + 64 * 16) / 2 + scales);
        let b = param_bytes(&qm.into_qfloat(&opts()).unwrap());
        assert_eq!(b.quantized_bytes, (320 * 64 + 64 * 16) + scales);
    }

    #[test]
    fn refused_weights_are_errors_naming_the_parameter_and_change_nothing() {
        let device = Device::flex();
        let model = Mlp::new(&device);
        let qm = quantize_model(model.clone(), &plan(QuantSpec::int8_weight_per_tensor())).unwrap();

        // A weight of another model: unknown id.
        let other = quantize_model(
            Mlp::new(&device),
            &plan(QuantSpec::int8_weight_per_tensor()),
        )
        .unwrap();
        let err = to_qfloat_model(model.clone(), &other.weights[..1], &opts()).unwrap_err();
        assert!(
            matches!(&err, BurnpackError::UnknownParameter { path, known }
                if path == "fc1.weight" && known.contains(&"fc2.bias".to_string())),
            "{err}"
        );
        // Twice the same weight.
        let twice = [qm.weights[0].clone(), qm.weights[0].clone()];
        let err = to_qfloat_model(model.clone(), &twice, &opts()).unwrap_err();
        assert!(matches!(err, BurnpackError::DuplicatePath { .. }), "{err}");
        // fc2's codes under fc1's id: shape mismatch.
        let mut wrong = qm.weights[1].clone();
        wrong.id = model.fc1.weight.id;
        let err = to_qfloat_model(model.clone(), &[wrong], &opts()).unwrap_err();
        assert!(
            matches!(&err, BurnpackError::ShapeMismatch { path, .. } if path == "fc1.weight"),
            "{err}"
        );
        // Asymmetric codes: Burn has no zero-point.
        let asym = quantize_model(
            model.clone(),
            &plan(QuantSpec::int8_weight_per_tensor().asymmetric()),
        )
        .unwrap();
        let err = to_qfloat_model(model.clone(), &asym.weights, &opts()).unwrap_err();
        assert!(
            matches!(&err, BurnpackError::Parameter { path, source }
                if path == "fc1.weight" && matches!(**source, BurnpackError::Asymmetric { .. })),
            "{err}"
        );
        assert!(err.to_string().starts_with("`fc1.weight`: "), "{err}");
        // FP8 values: flex cannot decode them.
        let fp8 = quantize_model(
            model.clone(),
            &plan(QuantSpec::fp8_e4m3_weight_per_tensor()),
        )
        .unwrap();
        let err = to_qfloat_model(model.clone(), &fp8.weights, &opts()).unwrap_err();
        assert!(
            matches!(&err, BurnpackError::Parameter { source, .. }
                if matches!(**source, BurnpackError::Device { .. })),
            "{err}"
        );
        // A weight quantized by hand (outside a plan) converts too.
        let q = quantize(model.fc2.weight.val(), &QuantSpec::int8_weight_per_tensor()).unwrap();
        let by_hand = QuantWeight {
            path: "fc2.weight".into(),
            id: model.fc2.weight.id,
            rule: 0,
            tensor: AnyQuantTensor::Rank2(q),
        };
        let conv = to_qfloat_model(model, &[by_hand], &opts()).unwrap();
        assert!(!is_qfloat(&conv.fc1.weight) && is_qfloat(&conv.fc2.weight));
    }
}
