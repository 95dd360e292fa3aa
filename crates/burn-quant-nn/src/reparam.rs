//! Weight quantization of unmodified Burn models, selected by a [`QuantPlan`].
//!
//! Three verbs, none of which changes the model's type:
//!
//! - [`fake_quantize_weights`]: weight-only PTQ (RTN with any statistic: absmax, MSE search, HQQ,
//!   ...). Every matched weight is replaced by its fake-quantized value; parameter ids stay.
//! - [`attach_weight_quantizers`]: weight QAT. Burn's `apply_reparameterization` attaches a
//!   [`WeightFakeQuant`] to every matched weight, so `param.val()` (what every `burn::nn` layer
//!   reads in `forward`) returns the fake-quantized weight, with straight-through gradients to
//!   the stored weight and LSQ gradients to a learned scale. `model.valid().materialize()` folds
//!   the quantizers into plain (fake-quantized) weights again.
//! - [`quantized_weights`]: the exact integer codes, scales and zero-points ([`QuantTensor`]s) of
//!   every matched weight, for export. On a model with attached quantizers it uses their learned
//!   scales, so the codes are exactly what QAT trained.
//!
//! Each verb resolves a rule's spec for the parameter it is applied to
//! ([`crate::plan::ParamSite::resolve`]): a role granularity (`per_output_channel`,
//! `per_input_group`) gets the axis of the owning layer's weight layout (axis 1 of a `Linear`
//! weight, axis 0 of a `Conv2d` weight), and an explicit axis that does not fit a known layer
//! is an error naming the parameter, found before the model is changed.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::Device;
//! use burn_quant_core::QuantSpec;
//! use burn_quant_nn::plan::QuantPlan;
//! use burn_quant_nn::reparam::{attach_weight_quantizers, quantized_weights};
//!
//! let device = Device::flex();
//! let linear: Linear = LinearConfig::new(64, 8).init(&device);
//! let plan = QuantPlan::new().rule("weight", QuantSpec::int4_weight_per_group(32));
//! let qat = attach_weight_quantizers(linear, &plan).unwrap();
//! let codes = quantized_weights(&qat, &plan).unwrap();
//! assert_eq!(codes[0].path, "weight");
//! assert_eq!(codes[0].tensor.get::<2>().unwrap().scales.dims(), [2, 8]);
//! ```

// Errors carry the spec and the core's error so that messages name everything; they are built
// once per failed call, so their size does not matter.
#![allow(clippy::result_large_err)]

use std::any::Any;
use std::collections::HashMap;

use burn::module::{
    Module, ModuleMapper, ModuleVisitor, Param, ParamId, Reparameterization, Reparameterizer,
};
use burn::tensor::{Shape, Tensor, TensorData};
use burn_quant_core::host::pow2_scale;
use burn_quant_core::{
    QuantError, QuantParams, QuantSpec, QuantTensor, ScaleRestriction, ScaleSource, ZeroPoint,
    compute_params, fake_quant, fake_quant_custom, fake_quant_with, quantize, quantize_with,
};

use crate::calibration::QuantMode;
use crate::plan::{Decision, ParamSite, PathTracker, PlanError, PlanResult, QuantPlan};

/// The `Reparameterization::NAME` of [`WeightFakeQuant`]: its state appears under
/// `<param path>.fake_quant.scale` and `<param path>.fake_quant.zero_point`.
pub const FAKE_QUANT_NAME: &str = "fake_quant";

/// A weight fake-quantizer attached to one parameter through Burn's reparameterization.
///
/// `param.val()` returns `fake_quant(base)`; `param.base()` is the stored float weight.
/// Scales are recomputed from the current weight at every call (statistics: absmax, MSE, HQQ,
/// ...; a constant), except for a `ScaleSource::Learned` spec, whose scale is a trainable
/// `Param` initialised from the statistic (LSQ). A stored zero-point exists for asymmetric specs
/// with a learned scale (trainable only if `ZeroPoint::Asymmetric { learned: true }`) or a
/// learned zero-point. Get it back with `param.reparameterization::<WeightFakeQuant>()`.
#[derive(Module, Debug)]
pub struct WeightFakeQuant {
    /// Learned scale, the flattened scale cells `[cells]` (row-major in the granularity's
    /// scale shape); `None` when the scale is recomputed per call.
    pub scale: Option<Param<Tensor<1>>>,
    /// Stored zero-point in grid units, `[cells]`; `None` when symmetric or recomputed.
    pub zero_point: Option<Param<Tensor<1>>>,
    /// Model-wide settings ([`crate::calibration::set_quantization`],
    /// [`crate::calibration::set_rounding`]): switched off, `param.val()` is the float weight.
    /// Travels with clones and forks to every device and thread; not saved in records.
    pub mode: QuantMode,
    /// The spec, resolved for the parameter's weight layout (a role granularity of the plan's
    /// rule is stored as its explicit axis).
    #[module(skip)]
    pub spec: QuantSpec,
    /// Path of the parameter it is attached to (for error messages).
    #[module(skip)]
    pub path: String,
}

impl Reparameterization for WeightFakeQuant {
    const NAME: &'static str = FAKE_QUANT_NAME;

    /// # Panics
    /// When [`WeightFakeQuant::try_apply`] fails (the weight became non-finite, a loaded scale
    /// has the wrong number of cells; a learned scale trained to zero or below is floored at
    /// [`crate::quantizer::MIN_LEARNED_SCALE`], not an error): Burn's
    /// `Param::val()` cannot return an error. The message names the parameter.
    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        self.try_apply(base).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl WeightFakeQuant {
    /// Fake-quantizes `base` (straight-through gradient to `base` — or the surrogate gradient
    /// of a custom rounding rule — and LSQ gradient to a learned scale). Returns `base` itself
    /// while switched off ([`QuantMode::enabled`], or a [`crate::without_quantization`] scope
    /// on this thread).
    pub fn try_apply<const D: usize>(&self, base: Tensor<D>) -> PlanResult<Tensor<D>> {
        if !self.is_active() {
            return Ok(base);
        }
        let params = self.params_for(&base)?;
        let err = |source| PlanError::Quantize {
            path: self.path.clone(),
            source,
        };
        match crate::calibration::rounding_override() {
            Some(rule) => fake_quant_custom(base, &self.spec, &params, rule.as_ref()).map_err(err),
            None => fake_quant_with(base, &self.effective_spec(), &params).map_err(err),
        }
    }

    /// Whether it quantizes now, on this thread: the model-wide [`QuantMode::enabled`] and no
    /// [`crate::without_quantization`] scope.
    pub fn is_active(&self) -> bool {
        self.mode.enabled && !crate::calibration::quantization_disabled()
    }

    /// The spec as applied: the model-wide rounding rule ([`QuantMode::rounding`]) if one is
    /// set, else the spec's own.
    pub fn effective_spec(&self) -> QuantSpec {
        self.spec.with_rounding(self.mode.rounding_for(&self.spec))
    }

    /// The scales and zero-points applied to `base`: the stored ones (a learned scale moved
    /// onto the spec's power-of-two restriction with a straight-through gradient), the rest
    /// computed from `base` (detached).
    pub fn params_for<const D: usize>(&self, base: &Tensor<D>) -> PlanResult<QuantParams<D>> {
        effective_params(
            &self.spec,
            &self.path,
            base,
            self.scale.as_ref().map(Param::val),
            self.zero_point.as_ref().map(Param::val),
        )
    }

    /// The exact codes of `base` under this quantizer (its learned scale, if any, and the
    /// rounding rule in effect), whether or not it is switched on.
    pub fn quantize<const D: usize>(&self, base: Tensor<D>) -> PlanResult<QuantTensor<D>> {
        quantize_stored(
            &self.effective_spec(),
            &self.path,
            base,
            self.scale.as_ref().map(Param::val),
            self.zero_point.as_ref().map(Param::val),
        )
    }
}

fn quant_err(path: &str) -> impl Fn(QuantError) -> PlanError + '_ {
    move |source| PlanError::Quantize {
        path: path.to_string(),
        source,
    }
}

/// Params of `base` from optional stored (flat) scale and zero-point, the rest from statistics.
fn effective_params<const D: usize>(
    spec: &QuantSpec,
    path: &str,
    base: &Tensor<D>,
    scale: Option<Tensor<1>>,
    zero_point: Option<Tensor<1>>,
) -> PlanResult<QuantParams<D>> {
    let err = quant_err(path);
    let layout = spec.check_shape(&base.dims()).map_err(&err)?;
    let needs_stats = scale.is_none() || (spec.zero_point.is_asymmetric() && zero_point.is_none());
    let computed = if needs_stats {
        Some(compute_params(&base.clone().detach(), spec).map_err(&err)?)
    } else {
        None
    };
    let scale_shape = Shape::from(layout.scale_shape.clone());
    let reshape = |t: Tensor<1>, what: &'static str| -> PlanResult<Tensor<D>> {
        let got = t.dims()[0];
        if got != layout.cells() {
            return Err(err(QuantError::ShapeMismatch {
                what,
                got: vec![got],
                expected: vec![layout.cells()],
            }));
        }
        Ok(t.reshape(scale_shape.clone()))
    };
    let (c_scales, c_zp, c_level) = match computed {
        Some(c) => (Some(c.scales), c.zero_points, c.scale_level),
        None => (None, None, None),
    };
    let scales = match (scale, c_scales) {
        (Some(s), _) => restrict_learned(
            crate::quantizer::floor_learned_scale(reshape(s, "scale")?),
            spec,
        ),
        (None, Some(s)) => s,
        (None, None) => unreachable!("statistics are computed when no scale is stored"),
    };
    let zero_points = match zero_point {
        Some(z) => Some(reshape(z, "zero_point")?),
        None => c_zp,
    };
    Ok(QuantParams {
        scales,
        zero_points,
        scale_level: c_level,
    })
}

/// A learned scale moved onto the spec's power-of-two grid (exact forward value, gradient of
/// `2^STE(log2 s)`); other restrictions leave it as is (quantized scale levels are refused
/// when attaching).
fn restrict_learned<const D: usize>(s: Tensor<D>, spec: &QuantSpec) -> Tensor<D> {
    let ScaleRestriction::PowerOfTwo { mode } = spec.scale.restrict else {
        return s;
    };
    let dims = s.dims();
    let host: Vec<f32> = s
        .clone()
        .detach()
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("a float tensor converts to f32");
    let snapped: Vec<f32> = host
        .iter()
        .map(|&v| {
            if v > 0.0 && v.is_finite() {
                pow2_scale(v, mode)
            } else {
                v
            }
        })
        .collect();
    let value = Tensor::<D>::from_data(TensorData::new(snapped, dims.to_vec()), &s.device());
    // d(2^round(log2 s))/ds with a straight-through round = value / s.
    // (Burn's `detach` keeps a leaf's `require_grad`; the constant parts must not track.)
    let s_const = s.clone().detach().set_require_grad(false);
    let surrogate = value.clone() / s_const.clone();
    value + (s - s_const) * surrogate
}

fn quantize_stored<const D: usize>(
    spec: &QuantSpec,
    path: &str,
    base: Tensor<D>,
    scale: Option<Tensor<1>>,
    zero_point: Option<Tensor<1>>,
) -> PlanResult<QuantTensor<D>> {
    let base = base.detach();
    if scale.is_none() && zero_point.is_none() {
        // Recomputed params keep the quantized scale level (MX, NVFP4, k-quants).
        return quantize(base, spec).map_err(quant_err(path));
    }
    let params = effective_params(
        spec,
        path,
        &base,
        scale.map(Tensor::detach),
        zero_point.map(Tensor::detach),
    )?;
    let params = QuantParams {
        scales: params.scales.detach(),
        zero_points: params.zero_points.map(Tensor::detach),
        scale_level: params.scale_level,
    };
    quantize_with(base, spec, params).map_err(quant_err(path))
}

// ----- PTQ: fake_quantize_weights -----------------------------------------------------------------

/// Weight-only PTQ: replaces every weight `plan` matches by its fake-quantized value (the
/// spec's statistic: absmax, min-max, percentile, MSE search, HQQ; its rounding), keeping
/// parameter ids and gradient settings. Unmatched parameters are untouched (bit-identical).
///
/// Nothing is changed unless every matched shape fits its spec; the error names the parameter.
/// A matched parameter that carries a reparameterization is refused ([`PlanError::Reparameterized`]).
pub fn fake_quantize_weights<M: Module>(model: M, plan: &QuantPlan) -> PlanResult<M> {
    check_plain_weights(&model, plan)?;
    let mut mapper = QuantizeMapper {
        plan,
        tracker: PathTracker::default(),
        error: None,
    };
    let model = model.map(&mut mapper);
    match mapper.error {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

/// The checks of the PTQ verbs, before the model is touched: a valid plan, every matched shape
/// fits its spec, and no matched parameter carries a reparameterization.
fn check_plain_weights<M: Module>(model: &M, plan: &QuantPlan) -> PlanResult<()> {
    plan.validate()?;
    let report = plan.report(model);
    report.check()?;
    match report
        .matched()
        .find_map(|e| e.reparameterization.as_ref().map(|name| (e, name)))
    {
        Some((entry, name)) => Err(PlanError::Reparameterized {
            path: entry.path.clone(),
            name: name.clone(),
        }),
        None => Ok(()),
    }
}

struct QuantizeMapper<'a> {
    plan: &'a QuantPlan,
    tracker: PathTracker,
    error: Option<PlanError>,
}

impl ModuleMapper for QuantizeMapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.tracker.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() || self.tracker.in_reparameterization() {
            return param;
        }
        let site = self.tracker.site();
        let Some((rule, spec)) = self.plan.spec_for(&site.path) else {
            return param;
        };
        let shape = param.lazy_shape().as_slice().to_vec();
        let spec = match site.resolve_rule(&shape, rule, *spec) {
            Ok(spec) => spec,
            Err(e) => {
                self.error = Some(e);
                return param;
            }
        };
        let path = site.path;
        let mut error = None;
        let param = param.map(|w| {
            let require_grad = w.is_require_grad();
            // Burn's `detach` keeps a leaf's `require_grad`: drop it so that the core takes
            // its fused (non-differentiable) path and returns a fresh leaf.
            match fake_quant(w.clone().detach().set_require_grad(false), &spec) {
                Ok(q) if require_grad => q.require_grad(),
                Ok(q) => q,
                Err(source) => {
                    error = Some(PlanError::Quantize {
                        path: path.clone(),
                        source,
                    });
                    w
                }
            }
        });
        self.error = error;
        param
    }
}

// ----- QAT: attach_weight_quantizers ---------------------------------------------------------

/// Weight QAT on an unmodified model: attaches a [`WeightFakeQuant`] to every weight `plan`
/// matches, with Burn's `apply_reparameterization`. The model's type does not change; its
/// `forward` now sees fake-quantized weights. Learned scales (and zero-points) are new `Param`s
/// of the model (`<path>.fake_quant.scale`), initialised from the spec's statistic of the
/// current weight, so an optimizer trains them and records save them.
///
/// Every matched shape is checked first; errors name the parameter. Refused: a matched
/// parameter that already carries a reparameterization (Burn does not nest them), and a
/// learned scale with a quantized scale level (MX, NVFP4, k-quants).
pub fn attach_weight_quantizers<M: Module>(model: M, plan: &QuantPlan) -> PlanResult<M> {
    plan.validate()?;
    let mut prepare = Prepare {
        plan,
        tracker: PathTracker::default(),
        prepared: HashMap::new(),
        error: None,
    };
    model.visit(&mut prepare);
    if let Some(e) = prepare.error {
        return Err(e);
    }
    let mut attach = Attach {
        prepared: prepare.prepared,
    };
    let model = model.apply_reparameterization(&mut attach);
    match attach.prepared.keys().next() {
        None => Ok(model),
        Some(path) => Err(PlanError::Unsupported {
            path: path.clone(),
            reason: "Burn's reparameterization did not reach this parameter".into(),
        }),
    }
}

/// Builds the quantizers (and initial learned scales) before the model is consumed, so that
/// every error is returned with the model untouched.
struct Prepare<'a> {
    plan: &'a QuantPlan,
    tracker: PathTracker,
    prepared: HashMap<String, WeightFakeQuant>,
    error: Option<PlanError>,
}

impl ModuleVisitor for Prepare<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if let Some(owner) = self.tracker.enter(name, container_type)
            && self.error.is_none()
            && self.prepared.contains_key(&owner)
        {
            self.error = Some(PlanError::Reparameterized {
                path: owner,
                name: name.to_string(),
            });
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() || self.tracker.in_reparameterization() {
            return;
        }
        let site = self.tracker.site();
        let Decision::Matched { rule, spec } = self.plan.decide(&site.path) else {
            return;
        };
        match build_quantizer(&site, rule, spec, param) {
            Ok(q) => {
                self.prepared.insert(site.path, q);
            }
            Err(e) => self.error = Some(e),
        }
    }
}

/// The quantizer of the parameter at `site` for rule `rule`'s `spec`, resolved for the
/// parameter's weight layout (the quantizer stores the resolved, explicit spec).
fn build_quantizer<const D: usize>(
    site: &ParamSite,
    rule: usize,
    spec: QuantSpec,
    param: &Param<Tensor<D>>,
) -> PlanResult<WeightFakeQuant> {
    let path = site.path.as_str();
    let shape = param.lazy_shape().as_slice().to_vec();
    let spec = site.resolve_rule(&shape, rule, spec)?;
    let layout = spec
        .check_shape(&shape)
        .map_err(|source| site.error(&shape, rule, spec, source))?;
    let learned_scale = matches!(spec.scale.source, ScaleSource::Learned(_));
    let learned_zp = matches!(spec.zero_point, ZeroPoint::Asymmetric { learned: true });
    if learned_scale && matches!(spec.scale.restrict, ScaleRestriction::Quantized(_)) {
        return Err(PlanError::Unsupported {
            path: path.to_string(),
            reason: format!(
                "a learned scale cannot have a quantized scale level ({spec}); use a statistic"
            ),
        });
    }
    let mut q = WeightFakeQuant {
        scale: None,
        zero_point: None,
        mode: QuantMode::default(),
        spec,
        path: path.to_string(),
    };
    if !(learned_scale || learned_zp) {
        return Ok(q);
    }
    let init = compute_params(&param.val().detach(), &spec).map_err(quant_err(path))?;
    let cells = layout.cells();
    if learned_scale {
        q.scale = Some(Param::from_tensor(init.scales.reshape([cells])));
    }
    if let Some(z) = init.zero_points {
        q.zero_point = Some(Param::from_tensor(z.reshape([cells])).set_require_grad(learned_zp));
    }
    Ok(q)
}

struct Attach {
    prepared: HashMap<String, WeightFakeQuant>,
}

impl Reparameterizer for &mut Attach {
    type Reparam = WeightFakeQuant;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<WeightFakeQuant>) {
        let quantizer = self.prepared.remove(path);
        (param, quantizer)
    }
}

// ----- export: quantized_weights -----------------------------------------------------------------

/// A [`QuantTensor`] of rank 1 to 6 (Burn parameters have a static rank; a plan matches
/// parameters of every rank: `Linear` weights are rank 2, `Conv2d` weights rank 4).
#[derive(Clone, Debug)]
pub enum AnyQuantTensor {
    /// Rank 1.
    Rank1(QuantTensor<1>),
    /// Rank 2 (`Linear`, `Embedding`).
    Rank2(QuantTensor<2>),
    /// Rank 3 (`Conv1d`).
    Rank3(QuantTensor<3>),
    /// Rank 4 (`Conv2d`).
    Rank4(QuantTensor<4>),
    /// Rank 5 (`Conv3d`).
    Rank5(QuantTensor<5>),
    /// Rank 6.
    Rank6(QuantTensor<6>),
}

macro_rules! on_any_quant {
    ($value:expr, $q:ident => $body:expr) => {
        match $value {
            AnyQuantTensor::Rank1($q) => $body,
            AnyQuantTensor::Rank2($q) => $body,
            AnyQuantTensor::Rank3($q) => $body,
            AnyQuantTensor::Rank4($q) => $body,
            AnyQuantTensor::Rank5($q) => $body,
            AnyQuantTensor::Rank6($q) => $body,
        }
    };
}

impl AnyQuantTensor {
    /// The rank.
    pub fn rank(&self) -> usize {
        on_any_quant!(self, q => q.codes.dims().len())
    }

    /// The logical shape.
    pub fn shape(&self) -> Vec<usize> {
        on_any_quant!(self, q => q.codes.dims().to_vec())
    }

    /// The spec that produced it.
    pub fn spec(&self) -> &QuantSpec {
        on_any_quant!(self, q => &q.spec)
    }

    /// The codes, row-major.
    pub fn codes_vec(&self) -> Vec<i32> {
        on_any_quant!(self, q => q.codes_vec())
    }

    /// The dequantized values, row-major.
    pub fn dequantize_vec(&self) -> Vec<f32> {
        on_any_quant!(self, q => q
            .dequantize()
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("a float tensor converts to f32"))
    }

    /// The tensor if its rank is `D`.
    pub fn get<const D: usize>(&self) -> Option<&QuantTensor<D>> {
        on_any_quant!(self, q => (q as &dyn Any).downcast_ref::<QuantTensor<D>>())
    }

    /// The tensor if its rank is `D`, else `self` back.
    pub fn into_rank<const D: usize>(self) -> Result<QuantTensor<D>, Self> {
        if self.rank() != D {
            return Err(self);
        }
        let boxed: Box<dyn Any> = on_any_quant!(self, q => Box::new(q) as Box<dyn Any>);
        Ok(*boxed
            .downcast::<QuantTensor<D>>()
            .expect("the rank was checked above"))
    }
}

/// The quantized form of one parameter, from [`quantized_weights`].
#[derive(Clone, Debug)]
pub struct QuantWeight {
    /// The parameter's path.
    pub path: String,
    /// The parameter's id.
    pub id: ParamId,
    /// Index of the plan rule that matched it.
    pub rule: usize,
    /// Codes, scales, zero-points and spec.
    pub tensor: AnyQuantTensor,
}

/// The exact integer codes, scales and zero-points of every parameter `plan` matches, in the
/// model's traversal order.
///
/// Plain parameters are quantized with their rule's spec (scales from its statistic). A
/// parameter carrying a [`WeightFakeQuant`] (from [`attach_weight_quantizers`]) uses its
/// learned scale and zero-point, so the codes dequantize exactly to what the QAT model's
/// `forward` sees. A matched parameter carrying another reparameterization (LoRA) is refused:
/// `materialize()` it first. Ranks above 6 are refused.
pub fn quantized_weights<M: Module>(model: &M, plan: &QuantPlan) -> PlanResult<Vec<QuantWeight>> {
    plan.validate()?;
    let mut collect = Collect {
        plan,
        tracker: PathTracker::default(),
        pending: Vec::new(),
        error: None,
    };
    model.visit(&mut collect);
    if let Some(e) = collect.error {
        return Err(e);
    }
    collect
        .pending
        .into_iter()
        .map(|p| {
            if let Some(name) = p.reparameterization.filter(|n| n != FAKE_QUANT_NAME) {
                return Err(PlanError::Reparameterized { path: p.path, name });
            }
            let (spec, path) = (p.spec, p.path.as_str());
            let tensor = match p.base {
                AnyTensor::R1(t) => {
                    AnyQuantTensor::Rank1(quantize_stored(&spec, path, t, p.scale, p.zero_point)?)
                }
                AnyTensor::R2(t) => {
                    AnyQuantTensor::Rank2(quantize_stored(&spec, path, t, p.scale, p.zero_point)?)
                }
                AnyTensor::R3(t) => {
                    AnyQuantTensor::Rank3(quantize_stored(&spec, path, t, p.scale, p.zero_point)?)
                }
                AnyTensor::R4(t) => {
                    AnyQuantTensor::Rank4(quantize_stored(&spec, path, t, p.scale, p.zero_point)?)
                }
                AnyTensor::R5(t) => {
                    AnyQuantTensor::Rank5(quantize_stored(&spec, path, t, p.scale, p.zero_point)?)
                }
                AnyTensor::R6(t) => {
                    AnyQuantTensor::Rank6(quantize_stored(&spec, path, t, p.scale, p.zero_point)?)
                }
            };
            Ok(QuantWeight {
                path: p.path,
                id: p.id,
                rule: p.rule,
                tensor,
            })
        })
        .collect()
}

/// A float tensor of rank 1 to 6.
enum AnyTensor {
    R1(Tensor<1>),
    R2(Tensor<2>),
    R3(Tensor<3>),
    R4(Tensor<4>),
    R5(Tensor<5>),
    R6(Tensor<6>),
}

fn erase<const D: usize>(t: Tensor<D>) -> Option<AnyTensor> {
    let b: Box<dyn Any> = Box::new(t);
    match D {
        1 => b.downcast().ok().map(|t| AnyTensor::R1(*t)),
        2 => b.downcast().ok().map(|t| AnyTensor::R2(*t)),
        3 => b.downcast().ok().map(|t| AnyTensor::R3(*t)),
        4 => b.downcast().ok().map(|t| AnyTensor::R4(*t)),
        5 => b.downcast().ok().map(|t| AnyTensor::R5(*t)),
        6 => b.downcast().ok().map(|t| AnyTensor::R6(*t)),
        _ => None,
    }
}

struct Pending {
    path: String,
    id: ParamId,
    rule: usize,
    spec: QuantSpec,
    base: AnyTensor,
    reparameterization: Option<String>,
    scale: Option<Tensor<1>>,
    zero_point: Option<Tensor<1>>,
}

struct Collect<'a> {
    plan: &'a QuantPlan,
    tracker: PathTracker,
    pending: Vec<Pending>,
    error: Option<PlanError>,
}

impl ModuleVisitor for Collect<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if let Some(owner) = self.tracker.enter(name, container_type)
            && let Some(p) = self.pending.last_mut().filter(|p| p.path == owner)
        {
            p.reparameterization = Some(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let path = self.tracker.path();
        if self.tracker.in_reparameterization() {
            // State of our own quantizer: `<owner>.fake_quant.{scale, zero_point}`.
            let Some(p) = self.pending.last_mut() else {
                return;
            };
            if p.reparameterization.as_deref() != Some(FAKE_QUANT_NAME) {
                return;
            }
            let prefix = format!("{}.{FAKE_QUANT_NAME}.", p.path);
            let Some(field) = path.strip_prefix(&prefix) else {
                return;
            };
            let Some(AnyTensor::R1(t)) = erase(param.val()) else {
                return;
            };
            match field {
                "scale" => p.scale = Some(t),
                "zero_point" => p.zero_point = Some(t),
                _ => {}
            }
            return;
        }
        let Decision::Matched { rule, spec } = self.plan.decide(&path) else {
            return;
        };
        let shape = param.lazy_shape().as_slice().to_vec();
        let spec = match self.tracker.site().resolve_rule(&shape, rule, spec) {
            Ok(spec) => spec,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        let Some(base) = erase(param.val()) else {
            self.error = Some(PlanError::Unsupported {
                path,
                reason: format!("rank {D} parameters are not supported (ranks 1 to 6 are)"),
            });
            return;
        };
        self.pending.push(Pending {
            path,
            id: param.id,
            rule,
            spec,
            base,
            reparameterization: None,
            scale: None,
            zero_point: None,
        });
    }
}

// ----- both at once: quantize_model ---------------------------------------------------------

/// A model whose matched weights were quantized once, in both forms: [`QuantizedModel::model`]
/// computes with the dequantized weights (fake-quant), [`QuantizedModel::weights`] holds their
/// exact codes for export or for Burn's quantized storage. Each weight of `model` equals the
/// `dequantize()` of its entry in `weights`, bit for bit.
#[derive(Clone, Debug)]
pub struct QuantizedModel<M> {
    /// The model, every matched weight replaced by its dequantized value (same parameter ids and
    /// gradient settings; unmatched parameters bit-identical).
    pub model: M,
    /// The codes, scales and zero-points of every matched weight, in traversal order.
    pub weights: Vec<QuantWeight>,
}

/// Weight PTQ in one call (TorchAO's `quantize_(model, config)`): quantizes every weight `plan`
/// matches exactly once and returns both the fake-quantized model and the [`QuantWeight`]s, so
/// evaluating and exporting see the same codes.
///
/// Same checks and errors as [`fake_quantize_weights`]: nothing is changed unless every matched
/// shape fits its spec, and a matched parameter carrying a reparameterization is refused (after
/// QAT, `model.valid()` with its [`WeightFakeQuant`]s goes to [`quantized_weights`] instead).
pub fn quantize_model<M: Module>(model: M, plan: &QuantPlan) -> PlanResult<QuantizedModel<M>> {
    check_plain_weights(&model, plan)?;
    let weights = quantized_weights(&model, plan)?;
    let mut replace = ReplaceDequantized {
        by_id: weights.iter().map(|w| (w.id, &w.tensor)).collect(),
    };
    let model = model.map(&mut replace);
    Ok(QuantizedModel { model, weights })
}

/// Replaces each parameter found in `by_id` by the dequantized tensor.
struct ReplaceDequantized<'a> {
    by_id: HashMap<ParamId, &'a AnyQuantTensor>,
}

impl ModuleMapper for ReplaceDequantized<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(quant) = self.by_id.get(&param.id) else {
            return param;
        };
        let Some(q) = quant.get::<D>() else {
            return param;
        };
        let dequantized = q.dequantize();
        param.map(|w| {
            if w.is_require_grad() {
                dequantized.require_grad()
            } else {
                dequantized
            }
        })
    }
}

#[cfg(test)]
mod role_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanEntry, Rule};
    use burn::module::Lora;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::{Device, Distribution, Int};
    use burn_quant_core::ScaleStat;

    /// A model made only of `burn::nn` layers.
    #[derive(Module, Debug)]
    struct Net {
        conv: Conv2d,
        emb: Embedding,
        blocks: Vec<Linear>,
        head: Linear,
    }

    impl Net {
        fn new(device: &Device) -> Self {
            Self {
                conv: Conv2dConfig::new([4, 8], [3, 3]).init(device),
                emb: EmbeddingConfig::new(32, 16).init(device),
                blocks: (0..2)
                    .map(|_| LinearConfig::new(16, 16).init(device))
                    .collect(),
                head: LinearConfig::new(16, 4).init(device),
            }
        }

        /// A scalar loss touching every parameter.
        fn loss(&self, device: &Device) -> Tensor<1> {
            let tokens = Tensor::<2, Int>::from_data([[1, 5, 7], [30, 2, 0]], device);
            let mut h = self.emb.forward(tokens);
            for block in &self.blocks {
                h = block.forward(h).tanh();
            }
            let out = self.head.forward(h).powf_scalar(2.0).sum();
            let img = Tensor::<4>::random([2, 4, 6, 6], Distribution::Default, device);
            let conv = self.conv.forward(img).powf_scalar(2.0).mean();
            out + conv
        }
    }

    fn int8_conv() -> QuantSpec {
        QuantSpec::int8_weight_per_channel().with_axis(0)
    }

    fn int4_g8() -> QuantSpec {
        QuantSpec::int4_weight_per_group(8)
    }

    fn learned_int4_g8() -> QuantSpec {
        int4_g8().with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax))
    }

    fn plan(block_spec: QuantSpec) -> QuantPlan {
        QuantPlan::new()
            .rule("conv.weight", int8_conv())
            .rule("blocks.*.weight", block_spec)
            // By role: one scale per row (token) of the `[n_embedding, d_model]` table.
            .rule("emb.weight", QuantSpec::int8_weight_per_output_channel())
            .rule("**.weight", QuantSpec::int8_weight_per_tensor())
            .rule("nothing.*", QuantSpec::int8_weight_per_tensor())
            .exclude("head.*")
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        host(t).into_iter().map(f32::to_bits).collect()
    }

    #[test]
    fn report_matches_the_right_paths() {
        let device = Device::flex();
        let net = Net::new(&device);
        let report = plan(int4_g8()).report(&net);
        let rule = |p: &str| report.entry(p).and_then(PlanEntry::rule);
        let paths: Vec<&str> = report.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "conv.weight",
                "conv.bias",
                "emb.weight",
                "blocks.0.weight",
                "blocks.0.bias",
                "blocks.1.weight",
                "blocks.1.bias",
                "head.weight",
                "head.bias"
            ]
        );
        assert_eq!(rule("conv.weight"), Some(0));
        assert_eq!(rule("blocks.0.weight"), Some(1));
        assert_eq!(rule("blocks.1.weight"), Some(1));
        assert_eq!(rule("emb.weight"), Some(2));
        for p in ["conv.bias", "blocks.0.bias", "blocks.1.bias"] {
            assert_eq!(
                report.entry(p).unwrap().decision,
                Decision::Unmatched,
                "{p}"
            );
        }
        for p in ["head.weight", "head.bias"] {
            assert!(
                matches!(report.entry(p).unwrap().decision, Decision::Excluded { .. }),
                "{p}"
            );
        }
        assert_eq!(report.entry("conv.weight").unwrap().shape, vec![8, 4, 3, 3]);
        assert_eq!(
            report.entry("blocks.0.weight").unwrap().spec(),
            Some(&int4_g8())
        );
        assert_eq!(report.entry("conv.weight").unwrap().id, net.conv.weight.id);
        assert_eq!(report.unused_rules(), vec![3, 4]);
        assert!(report.check().is_ok());

        let table = report.to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("path") && lines[0].contains("shape"),
            "{table}"
        );
        // Aligned: the shape column starts at the same offset in every row.
        let col = lines[0].find("shape").unwrap();
        for l in &lines[2..11] {
            assert_eq!(&l[col - 2..col], "  ", "{table}");
            assert_ne!(&l[col..col + 1], " ", "{table}");
        }
        assert!(table.contains("blocks.1.weight"), "{table}");
        assert!(table.contains("int4 sym per-group(axis 0, 8)"), "{table}");
        assert!(table.contains("excluded by exclude[0] (head.*)"), "{table}");
        assert!(table.contains("4 of 9 parameters matched"), "{table}");
        assert!(
            table.contains("rules[4] (nothing.*) matches no parameter"),
            "{table}"
        );
    }

    #[test]
    fn fake_quantize_weights_equals_core_fake_quant_and_keeps_the_rest() {
        let device = Device::flex();
        let net = Net::new(&device);
        let before = net.clone();
        let plan = plan(int4_g8().with_stat(ScaleStat::mse()));
        let q = fake_quantize_weights(net, &plan).unwrap();

        let expect = |w: Tensor<2>, spec: QuantSpec| bits(fake_quant(w, &spec).unwrap());
        assert_eq!(
            bits(q.conv.weight.val()),
            bits(fake_quant(before.conv.weight.val(), &int8_conv()).unwrap())
        );
        for i in 0..2 {
            let spec = int4_g8().with_stat(ScaleStat::mse());
            assert_eq!(
                bits(q.blocks[i].weight.val()),
                expect(before.blocks[i].weight.val(), spec)
            );
            assert_ne!(
                bits(q.blocks[i].weight.val()),
                bits(before.blocks[i].weight.val())
            );
            assert_eq!(q.blocks[i].weight.id, before.blocks[i].weight.id);
            let b = |m: &Net| bits(m.blocks[i].bias.as_ref().unwrap().val());
            assert_eq!(b(&q), b(&before));
        }
        assert_eq!(
            bits(q.emb.weight.val()),
            expect(
                before.emb.weight.val(),
                QuantSpec::int8_weight_per_channel().with_axis(0)
            )
        );
        assert_eq!(bits(q.head.weight.val()), bits(before.head.weight.val()));
        assert_eq!(
            bits(q.conv.bias.as_ref().unwrap().val()),
            bits(before.conv.bias.as_ref().unwrap().val())
        );
        // The codes of the original weights dequantize to the quantized model's weights.
        let codes = quantized_weights(&before, &plan).unwrap();
        let names: Vec<&str> = codes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv.weight",
                "emb.weight",
                "blocks.0.weight",
                "blocks.1.weight"
            ]
        );
        assert_eq!(codes[0].tensor.rank(), 4);
        assert_eq!(codes[0].tensor.dequantize_vec(), host(q.conv.weight.val()));
        assert_eq!(
            codes[2].tensor.dequantize_vec(),
            host(q.blocks[0].weight.val())
        );
        assert!(codes[2].tensor.get::<4>().is_none());
        assert_eq!(codes[2].tensor.get::<2>().unwrap().scales.dims(), [2, 16]);
        let q4 = codes[0].tensor.clone().into_rank::<4>().unwrap();
        assert_eq!(q4.scales.dims(), [8, 1, 1, 1]);
    }

    #[test]
    fn fake_quantize_weights_on_autodiff_keeps_weights_trainable() {
        let device = Device::flex().autodiff();
        let net = Net::new(&device);
        let before = net.blocks[0].weight.val().detach().set_require_grad(false);
        let q = fake_quantize_weights(net, &plan(int4_g8())).unwrap();
        assert!(q.blocks[0].weight.val().is_require_grad());
        assert_eq!(
            bits(q.blocks[0].weight.val()),
            bits(fake_quant(before, &int4_g8()).unwrap())
        );
        let grads = q.loss(&device).backward();
        assert!(q.blocks[0].weight.val().grad(&grads).is_some());
    }

    #[test]
    fn quantize_model_gives_the_fake_quantized_model_and_its_codes_from_one_quantization() {
        let device = Device::flex().autodiff();
        let net = Net::new(&device);
        let before = net.clone();
        // Stochastic rounding: two separate quantizations would differ, one cannot.
        let spec = int4_g8().with_rounding(burn_quant_core::Rounding::Stochastic { seed: 7 });
        let plan = plan(spec);
        let QuantizedModel { model, weights } = quantize_model(net, &plan).unwrap();
        assert_eq!(weights.len(), 4);
        let fetch = |path: &str| weights.iter().find(|w| w.path == path).unwrap();
        for i in 0..2 {
            let w = fetch(&format!("blocks.{i}.weight"));
            assert_eq!(w.id, before.blocks[i].weight.id);
            assert_eq!(
                w.tensor.dequantize_vec(),
                host(model.blocks[i].weight.val())
            );
            assert_ne!(
                bits(model.blocks[i].weight.val()),
                bits(before.blocks[i].weight.val())
            );
            assert!(model.blocks[i].weight.val().is_require_grad());
        }
        assert_eq!(
            fetch("conv.weight").tensor.dequantize_vec(),
            host(model.conv.weight.val())
        );
        assert_eq!(
            bits(model.head.weight.val()),
            bits(before.head.weight.val())
        );
        let grads = model.loss(&device).backward();
        assert!(model.blocks[0].weight.val().grad(&grads).is_some());
        // Refused like fake_quantize_weights: a model with attached quantizers.
        let qat = attach_weight_quantizers(before, &plan).unwrap();
        assert!(matches!(
            quantize_model(qat, &plan),
            Err(PlanError::Reparameterized { .. })
        ));
    }

    #[test]
    fn shape_errors_name_the_parameter() {
        let device = Device::flex();
        let net = Net::new(&device);
        // 16 inputs cannot hold a k-quant super-block of 256.
        let bad = plan(QuantSpec::gguf_q4_k());
        let check = |e: PlanError| {
            let s = e.to_string();
            assert!(
                s.starts_with("parameter `blocks.0.weight` (shape [16, 16])"),
                "{s}"
            );
            assert!(
                matches!(e, PlanError::ShapeMismatch { rule: 1, .. }),
                "{e:?}"
            );
        };
        check(bad.report(&net).check().unwrap_err());
        assert!(
            bad.report(&net)
                .to_string()
                .contains("error: parameter `blocks.0.weight`")
        );
        check(fake_quantize_weights(net.clone(), &bad).unwrap_err());
        check(attach_weight_quantizers(net.clone(), &bad).unwrap_err());
        check(quantized_weights(&net, &bad).unwrap_err());
        // An axis beyond the rank.
        let e = attach_weight_quantizers(
            net,
            &QuantPlan::new().rule("**.bias", QuantSpec::int8_weight_per_channel()),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("parameter `conv.bias` (shape [8])"),
            "{e}"
        );
    }

    #[test]
    fn attached_quantizers_train_with_straight_through_and_lsq_gradients() {
        let device = Device::flex().autodiff();
        let net = Net::new(&device);
        let params_before = net.num_params();
        let base0 = net.blocks[0].weight.val();
        let plan = plan(learned_int4_g8());
        // The type does not change: the result is still a `Net`.
        let qat: Net = attach_weight_quantizers(net, &plan).unwrap();
        // One learned scale per group of 8 inputs and output: 2 x 16 per block.
        assert_eq!(qat.num_params(), params_before + 2 * 2 * 16);

        let fq0 = qat.blocks[0]
            .weight
            .reparameterization::<WeightFakeQuant>()
            .unwrap();
        assert!(fq0.scale.is_some());
        assert_eq!(fq0.spec, learned_int4_g8());
        let fq_conv = qat
            .conv
            .weight
            .reparameterization::<WeightFakeQuant>()
            .unwrap();
        assert!(fq_conv.scale.is_none());
        assert!(
            qat.head
                .weight
                .reparameterization::<WeightFakeQuant>()
                .is_none()
        );
        assert!(
            qat.blocks[0]
                .bias
                .as_ref()
                .unwrap()
                .reparameterization::<WeightFakeQuant>()
                .is_none()
        );

        // Forward sees fake-quantized weights; the stored weight is unchanged.
        assert_eq!(bits(qat.blocks[0].weight.base()), bits(base0.clone()));
        let fq = host(fake_quant(base0.clone().detach(), &int4_g8()).unwrap());
        let val = host(qat.blocks[0].weight.val());
        for (a, b) in val.iter().zip(&fq) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(
            bits(qat.conv.weight.val()),
            bits(fake_quant(qat.conv.weight.base().detach(), &int8_conv()).unwrap())
        );

        // Straight-through: d(sum(w_q * c))/dw = c (absmax scales clip nothing).
        let c = Tensor::<2>::random([16, 16], Distribution::Default, &device);
        let grads = (qat.blocks[0].weight.val() * c.clone().detach())
            .sum()
            .backward();
        let g = host(qat.blocks[0].weight.base().grad(&grads).unwrap());
        let c = host(c);
        // Exactly c up to the rounding of (c · s) / s, except where x/s rounds just above qmax
        // (a group's absmax element) and the clamp stops the gradient.
        let clipped = g
            .iter()
            .zip(&c)
            .filter(|(g, c)| (*g - *c).abs() > 1e-5 * c.abs().max(1.0))
            .inspect(|(g, _)| assert_eq!(**g, 0.0))
            .count();
        assert!(clipped <= 32, "{clipped}");
        let gs = fq0.scale.as_ref().unwrap().val().grad(&grads).unwrap();
        assert!(host(gs).iter().any(|v| *v != 0.0));

        // A model loss reaches every base weight and every learned scale.
        let grads = qat.loss(&device).backward();
        for w in [
            &qat.blocks[0].weight,
            &qat.blocks[1].weight,
            &qat.emb.weight,
        ] {
            assert!(w.base().grad(&grads).is_some());
        }
        assert!(qat.conv.weight.base().grad(&grads).is_some());
        let scale_grad = |m: &Net, i: usize| {
            let fq = m.blocks[i]
                .weight
                .reparameterization::<WeightFakeQuant>()
                .unwrap();
            fq.scale.as_ref().unwrap().val().grad(&grads)
        };
        assert!(scale_grad(&qat, 0).is_some());
        assert!(scale_grad(&qat, 1).is_some());

        // An optimizer step moves the learned scales; the exported codes follow them.
        let scale_of = |m: &Net| {
            let fq = m.blocks[1]
                .weight
                .reparameterization::<WeightFakeQuant>()
                .unwrap();
            host(fq.scale.as_ref().unwrap().val())
        };
        let s_before = scale_of(&qat);
        let gp = GradientsParams::from_grads(grads, &qat);
        let mut optim = AdamConfig::new().init();
        let qat = optim.step(1e-3, qat, gp);
        let s_after = scale_of(&qat);
        assert_ne!(s_before, s_after);
        let codes = quantized_weights(&qat, &plan).unwrap();
        let b1 = codes.iter().find(|c| c.path == "blocks.1.weight").unwrap();
        let q = b1.tensor.get::<2>().unwrap();
        assert_eq!(host(q.scales.clone().reshape([32])), s_after);
        let deq = b1.tensor.dequantize_vec();
        let val = host(qat.blocks[1].weight.val());
        for (a, b) in deq.iter().zip(&val) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }

        // Materialising folds the quantizers into plain fake-quantized weights.
        let expected = host(qat.blocks[1].weight.val());
        let merged = qat.valid().materialize();
        assert!(
            merged.blocks[1]
                .weight
                .reparameterization::<WeightFakeQuant>()
                .is_none()
        );
        assert_eq!(merged.num_params(), params_before);
        assert_eq!(host(merged.blocks[1].weight.val()), expected);
    }

    #[test]
    fn learned_scales_survive_records_and_pow2_stays_exact() {
        let device = Device::flex().autodiff();
        let spec = QuantSpec::int8_weight_per_channel()
            .with_pow2_scale(burn_quant_core::Pow2Mode::Ceil)
            .with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax));
        let plan = QuantPlan::new().rule("blocks.*.weight", spec);
        let qat = attach_weight_quantizers(Net::new(&device), &plan).unwrap();
        let fq = qat.blocks[0]
            .weight
            .reparameterization::<WeightFakeQuant>()
            .unwrap();
        let scale = fq.scale.as_ref().unwrap().val();
        // Move the scale off the power-of-two grid: the forward still uses powers of two,
        // and the gradient still reaches it.
        let params = effective_params(
            &spec,
            "x",
            &qat.blocks[0].weight.base(),
            Some(scale.clone() * 1.3),
            None,
        )
        .unwrap();
        for s in host(params.scales.clone()) {
            assert_eq!(s, 2f32.powi(s.log2().round() as i32), "{s}");
        }
        let grads = qat.blocks[0].weight.val().sum().backward();
        assert!(fq.scale.as_ref().unwrap().val().grad(&grads).is_some());

        let record = qat.clone().into_record();
        let fresh = attach_weight_quantizers(Net::new(&device), &plan).unwrap();
        let loaded = fresh.load_record(record);
        let s = |m: &Net| {
            let fq = m.blocks[0]
                .weight
                .reparameterization::<WeightFakeQuant>()
                .unwrap();
            host(fq.scale.as_ref().unwrap().val())
        };
        assert_eq!(s(&loaded), s(&qat));
        assert_eq!(
            bits(loaded.blocks[0].weight.val()),
            bits(qat.blocks[0].weight.val())
        );
    }

    #[test]
    fn asymmetric_learned_specs_store_zero_points() {
        let device = Device::flex().autodiff();
        let spec = int4_g8()
            .asymmetric()
            .with_scale_source(ScaleSource::Learned(ScaleStat::MinMax))
            .with_zero_point(ZeroPoint::Asymmetric { learned: true });
        let plan = QuantPlan::new().rule("blocks.*.weight", spec);
        let qat = attach_weight_quantizers(Net::new(&device), &plan).unwrap();
        let fq = qat.blocks[0]
            .weight
            .reparameterization::<WeightFakeQuant>()
            .unwrap();
        let zp = fq.zero_point.as_ref().unwrap();
        assert_eq!(zp.val().dims(), [32]);
        let c = Tensor::<2>::random([16, 16], Distribution::Default, &device);
        let grads = (qat.blocks[0].weight.val() * c.detach()).sum().backward();
        assert!(zp.val().grad(&grads).is_some());
        assert!(fq.scale.as_ref().unwrap().val().grad(&grads).is_some());
        let codes = quantized_weights(&qat, &plan).unwrap();
        let deq = codes[0].tensor.dequantize_vec();
        let val = host(qat.blocks[0].weight.val());
        for (a, b) in deq.iter().zip(&val) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let device = Device::flex();
        // A learned scale with a quantized scale level.
        let mx = QuantSpec::mxfp4()
            .per_input_group(burn_quant_core::spec::MX_BLOCK)
            .with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax));
        let plan_mx = QuantPlan::new().rule("emb.weight", mx);
        let e = attach_weight_quantizers(Net::new(&device), &plan_mx).unwrap_err();
        assert!(
            matches!(e, PlanError::Unsupported { ref path, .. } if path == "emb.weight"),
            "{e}"
        );

        // Reparameterizations do not nest; LoRA state is never matched.
        let lora = Net::new(&device).apply_lora(Lora::new(2, 4.0));
        let all = QuantPlan::new().rule("**", QuantSpec::int8_weight_per_tensor());
        let report = all.report(&lora);
        let a = report.entry("head.weight.lora.a").unwrap();
        assert_eq!(a.decision, Decision::ReparameterizationState);
        assert_eq!(
            report
                .entry("head.weight")
                .unwrap()
                .reparameterization
                .as_deref(),
            Some("lora")
        );
        let e = attach_weight_quantizers(lora.clone(), &all).unwrap_err();
        assert!(
            matches!(e, PlanError::Reparameterized { ref name, .. } if name == "lora"),
            "{e}"
        );
        let e = fake_quantize_weights(lora.clone(), &all).unwrap_err();
        assert!(matches!(e, PlanError::Reparameterized { .. }), "{e}");
        let e = quantized_weights(&lora, &all).unwrap_err();
        assert!(matches!(e, PlanError::Reparameterized { .. }), "{e}");
        // Attaching twice is refused too.
        let once = attach_weight_quantizers(Net::new(&device), &all).unwrap();
        let e = attach_weight_quantizers(once, &all).unwrap_err();
        assert!(
            matches!(e, PlanError::Reparameterized { ref name, .. } if name == FAKE_QUANT_NAME),
            "{e}"
        );

        // Non-finite weights are reported by path.
        let mut net = Net::new(&device);
        net.head.weight = net.head.weight.map(|w| w.mul_scalar(f32::NAN));
        let e = fake_quantize_weights(net, &all).unwrap_err();
        assert!(e.to_string().starts_with("parameter `head.weight`"), "{e}");

        // A rule with exclusions.
        let plan = QuantPlan::new().with_rule(Rule::new("**.weight", int4_g8()).exclude("conv.*"));
        let report = plan.report(&Net::new(&device));
        assert_eq!(report.matched().count(), 4);
        assert!(report.entry("conv.weight").unwrap().rule().is_none());
    }
}
