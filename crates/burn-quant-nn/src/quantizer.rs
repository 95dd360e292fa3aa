//! [`Quantizer`]: a [`QuantSpec`] plus its state (calibrated or learned scale and zero-point).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use burn_quant_core::{
    Granularity, QuantParams, QuantSpec, QuantTensor, Rounding, ScaleSource, WeightLayout,
    compute_params, fake_quant_custom, fake_quant_with, quantize_with, round_ste,
};
use serde::{Deserialize, Serialize};

use crate::calibration::{self, QuantMode};
use crate::error::{NnError, Result};

/// What a quantizer quantizes; decides how a statistics-based (`Stats`) scale behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuantizerRole {
    /// A weight: a `Stats` scale is recomputed from the current weight at every call (the
    /// weight is the whole "calibration set"), so QAT and record loading need no calibration.
    Weight,
    /// An activation: a `Stats` scale is static, filled by [`crate::calibrate`]; a `Dynamic`
    /// one is recomputed per call.
    Activation,
}

/// Configuration of a [`Quantizer`].
#[derive(Config, Debug)]
pub struct QuantizerConfig {
    /// The recipe.
    pub spec: QuantSpec,
    /// Weight or activation quantizer.
    #[config(default = "QuantizerRole::Activation")]
    pub role: QuantizerRole,
    /// Scale cells of a stored scale: 1 per tensor, the channel count per channel.
    #[config(default = 1)]
    pub cells: usize,
}

/// A quantizer module: fake-quantizes its input in the forward pass.
///
/// State: a stored scale (and zero-point) as `Param`s when the scale is static (activations,
/// calibrated) or learned (LSQ, trained with the model); they are saved in records and moved
/// between devices with the module. Scale tensors are flat (`[cells]`) and reshaped to the
/// granularity's scale shape at each call.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct Quantizer {
    /// Stored scale, `[cells]`: calibrated (static) or trained (learned); `None` when the
    /// scale is recomputed per call.
    pub scale: Option<Param<Tensor<1>>>,
    /// Stored zero-point in grid units, `[cells]` (asymmetric specs with a stored scale).
    pub zero_point: Option<Param<Tensor<1>>>,
    /// Model-wide settings ([`crate::calibration::set_quantization`],
    /// [`crate::calibration::set_rounding`]); travels with clones and forks to every device and
    /// thread, not saved in records.
    pub mode: QuantMode,
    /// The recipe.
    #[module(skip)]
    pub spec: QuantSpec,
    /// Weight or activation.
    #[module(skip)]
    pub role: QuantizerRole,
    /// `false` turns this quantizer into the identity (whatever the model-wide [`QuantMode`]).
    #[module(skip)]
    pub enabled: bool,
    /// Forward calls that fake-quantized so far: stochastic rounding draws fresh noise at each
    /// (see [`Rounding::for_call`]). Shared by clones, so a model that is cloned or mapped
    /// during training keeps counting; not saved in records.
    #[module(skip)]
    calls: CallCounter,
}

/// A call counter shared by the clones of one quantizer.
#[derive(Clone, Debug, Default)]
struct CallCounter(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl CallCounter {
    /// The number of calls before this one, counting this one.
    fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

impl QuantizerConfig {
    /// A quantizer for `spec` with the given role (one scale cell).
    pub fn for_spec(spec: QuantSpec, role: QuantizerRole) -> Self {
        Self::new(spec).with_role(role)
    }

    /// Builds the quantizer; its stored scale (if any) starts at zero = not calibrated.
    ///
    /// A role granularity (per output channel, per input group) is refused: a quantizer applies
    /// its spec to whatever tensor it is given, so the axis must be explicit. Resolve the spec
    /// for the weight's layout first (`QuantSpec::resolve_for`), as the quant layers do.
    pub fn init(&self, device: &Device) -> Result<Quantizer> {
        self.spec.validate()?;
        if self.spec.granularity.is_role() {
            return Err(NnError::InvalidConfig {
                field: "spec.granularity",
                value: self.spec.granularity.to_string(),
                reason: "a quantizer needs an explicit axis: resolve the role for the weight's \
                         layout first (`QuantSpec::resolve_for`; the quant layers and plans do)"
                    .into(),
            });
        }
        if self.cells == 0 {
            return Err(NnError::InvalidConfig {
                field: "cells",
                value: "0".into(),
                reason: "a stored scale needs at least one cell".into(),
            });
        }
        let learned = matches!(self.spec.scale.source, ScaleSource::Learned(_));
        let stored = learned
            || (self.role == QuantizerRole::Activation
                && matches!(self.spec.scale.source, ScaleSource::Stats(_)));
        let param = |learn: bool| {
            Param::from_tensor(Tensor::<1>::zeros([self.cells], device)).set_require_grad(learn)
        };
        let scale = stored.then(|| param(learned));
        let learned_zp = matches!(
            self.spec.zero_point,
            burn_quant_core::ZeroPoint::Asymmetric { learned: true }
        );
        let zero_point =
            (stored && self.spec.zero_point.is_asymmetric()).then(|| param(learned_zp));
        Ok(Quantizer {
            scale,
            zero_point,
            mode: QuantMode::default(),
            spec: self.spec,
            role: self.role,
            enabled: true,
            calls: CallCounter::default(),
        })
    }
}

/// Builds an activation quantizer whose stored scale (if any) gets the right number of cells:
/// `known` lists `(axis, length)` pairs that are fixed at build time; a stored per-channel
/// scale along another axis, or a stored per-group scale, cannot be sized and is refused at
/// build time (`field` names the config field in the error), as are the weight roles
/// (per output channel, per input group), which name no activation axis.
pub fn activation_quantizer(
    spec: Option<QuantSpec>,
    field: &'static str,
    known: &[(usize, usize)],
    device: &Device,
) -> Result<Option<Quantizer>> {
    let Some(spec) = spec else { return Ok(None) };
    let stored = matches!(
        spec.scale.source,
        ScaleSource::Stats(_) | ScaleSource::Learned(_)
    );
    let cells = match spec.granularity {
        g @ (Granularity::PerOutputChannel | Granularity::PerInputGroup { .. }) => {
            return Err(NnError::InvalidConfig {
                field,
                value: g.to_string(),
                reason: "output channels and input groups are roles of a layer's weight; an \
                         activation's granularity names its axis (per_channel / per_group)"
                    .into(),
            });
        }
        _ if !stored => 1,
        Granularity::PerTensor => 1,
        Granularity::PerChannel { axis } => match known.iter().find(|(a, _)| *a == axis) {
            Some(&(_, len)) => len,
            None => {
                return Err(NnError::InvalidConfig {
                    field,
                    value: format!("{:?}", spec.granularity),
                    reason: format!(
                        "a stored (static or learned) per-channel scale needs a channel count known at build time; possible axes: {:?}",
                        known.iter().map(|(a, _)| *a).collect::<Vec<_>>()
                    ),
                });
            }
        },
        Granularity::PerGroup { .. } => {
            return Err(NnError::InvalidConfig {
                field,
                value: format!("{:?}", spec.granularity),
                reason: "a stored (static or learned) per-group scale needs the input shape; use a dynamic scale".into(),
            });
        }
    };
    QuantizerConfig::for_spec(spec, QuantizerRole::Activation)
        .with_cells(cells)
        .init(device)
        .map(Some)
}

impl Quantizer {
    /// The same quantizer switched on or off.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Whether the quantizer quantizes now, on this thread: its own `enabled`, the model-wide
    /// [`QuantMode::enabled`] and no [`crate::without_quantization`] scope.
    pub fn is_active(&self) -> bool {
        self.enabled && self.mode.enabled && !calibration::quantization_disabled()
    }

    /// The spec as applied: the model-wide rounding rule ([`QuantMode::rounding`]) if one is
    /// set, else the spec's own.
    pub fn effective_spec(&self) -> QuantSpec {
        self.spec.with_rounding(self.mode.rounding_for(&self.spec))
    }

    /// Whether the scale is stored (static or learned) rather than recomputed per call.
    pub fn has_stored_scale(&self) -> bool {
        self.scale.is_some()
    }

    /// Fake-quantizes `x` (straight-through gradients, or the surrogate gradient of a custom
    /// rounding rule). During [`crate::calibrate`] a quantizer with a stored scale records `x`
    /// and passes it through unchanged; when not [`Quantizer::is_active`] it is the identity.
    ///
    /// # Panics
    /// On an error of [`Quantizer::try_forward`] (an uncalibrated static scale, a spec that does
    /// not fit the input's shape, non-finite input), like Burn's own layers on a shape mismatch.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Quantizer::forward`] returning errors instead of panicking.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        Ok(self.forward_with_params(x)?.0)
    }

    /// Fake-quantizes `x` and also returns the params used (`None` when nothing was quantized).
    pub fn forward_with_params<const D: usize>(
        &self,
        x: Tensor<D>,
    ) -> Result<(Tensor<D>, Option<QuantParams<D>>)> {
        if !self.is_active() {
            return Ok((x, None));
        }
        if let Some(scale) = &self.scale
            && calibration::observe(
                scale.id,
                self.zero_point.as_ref().map(|z| z.id),
                &self.spec,
                &x,
            )?
        {
            return Ok((x, None));
        }
        let params = self.params_for(&x)?;
        let y = match calibration::rounding_override() {
            Some(rounding) => fake_quant_custom(x, &self.spec, &params, rounding.as_ref())?,
            // A custom rule named in the spec (or the mode) is resolved from the registry
            // here, on whatever thread runs the forward.
            None => fake_quant_with(x, &self.spec_for_this_call(), &params)?,
        };
        Ok((y, Some(params)))
    }

    /// The spec for the next fake-quant call: stochastic rounding with a per-call seed (the
    /// first call uses the spec's own seed), anything else as is.
    fn spec_for_this_call(&self) -> QuantSpec {
        let spec = self.effective_spec();
        match spec.rounding {
            Rounding::Stochastic { .. } => {
                spec.with_rounding(spec.rounding.for_call(self.calls.next()))
            }
            _ => spec,
        }
    }

    /// The params this quantizer applies to an input shaped like `x`: the stored ones reshaped
    /// to the granularity, or statistics of `x` (detached).
    pub fn params_for<const D: usize>(&self, x: &Tensor<D>) -> Result<QuantParams<D>> {
        let Some(scale) = &self.scale else {
            return Ok(compute_params(&x.clone().detach(), &self.spec)?);
        };
        let shape = x.dims();
        let layout = self.spec.check_shape(&shape)?;
        let stored = scale.shape().dims::<1>()[0];
        if stored != layout.cells() {
            return Err(NnError::CellMismatch {
                what: self.describe(),
                stored,
                needed: layout.cells(),
                shape: shape.to_vec(),
            });
        }
        let s = scale.val();
        let learned = matches!(self.spec.scale.source, ScaleSource::Learned(_));
        let s = if learned {
            // A learned scale starts at exactly zero (not calibrated); once trained it may
            // cross zero, which must not stop training: it is floored instead.
            let uncalibrated =
                burn_quant_core::fused::with_host_slice(&s, |v| v.contains(&0.0))
                    .unwrap_or_else(|| {
                        s.clone()
                            .detach()
                            .equal_elem(0.0)
                            .any()
                            .into_scalar::<bool>()
                    });
            if uncalibrated {
                return Err(NnError::NotCalibrated {
                    what: self.describe(),
                });
            }
            floor_learned_scale(s)
        } else {
            // Read in place on Flex (no device reduction, no copy); one reduction elsewhere.
            let calibrated =
                burn_quant_core::fused::with_host_slice(&s, |v| v.iter().all(|&v| v > 0.0))
                    .unwrap_or_else(|| {
                        s.clone()
                            .detach()
                            .greater_elem(0.0)
                            .all()
                            .into_scalar::<bool>()
                    });
            if !calibrated {
                return Err(NnError::NotCalibrated {
                    what: self.describe(),
                });
            }
            s
        };
        let dims: [usize; D] = layout
            .scale_shape
            .clone()
            .try_into()
            .expect("scale shape has the input's rank");
        Ok(QuantParams {
            scales: s.reshape(dims),
            zero_points: self.zero_point.as_ref().map(|z| z.val().reshape(dims)),
            scale_level: None,
        })
    }

    /// The exact integer codes, scales and zero-points this quantizer gives `x` (with the
    /// rounding rule in effect: [`Quantizer::effective_spec`]).
    pub fn quantize<const D: usize>(&self, x: Tensor<D>) -> Result<QuantTensor<D>> {
        let spec = self.effective_spec();
        if self.scale.is_none() {
            // Recomputed params carry the quantized scale level (MX, NVFP4, k-quants) too.
            return Ok(burn_quant_core::quantize(x, &spec)?);
        }
        let params = self.params_for(&x)?;
        Ok(quantize_with(x, &spec, params)?)
    }

    fn describe(&self) -> String {
        format!("{:?} quantizer ({})", self.role, self.spec)
    }
}

/// The smallest value a learned (LSQ) scale takes in the forward pass.
pub const MIN_LEARNED_SCALE: f32 = 1e-8;

/// A learned scale as the forward pass uses it: `max(s, MIN_LEARNED_SCALE)`, with the gradient
/// passed straight through to `s` (Brevitas's `scaling_min_val` clamp with a straight-through
/// gradient). An optimizer step that drives a scale to zero or below would otherwise make the
/// quantizer divide by a non-positive scale; the floored scale keeps training going, and the
/// straight-through gradient lets the stored value come back.
pub fn floor_learned_scale<const D: usize>(s: Tensor<D>) -> Tensor<D> {
    // Burn's `detach` keeps a leaf's `require_grad`: the constant parts must not track.
    let constant = s.clone().detach().set_require_grad(false);
    let floored = constant.clone().clamp_min(MIN_LEARNED_SCALE);
    // `floored + (s − s)`: the forward value is exactly `floored` (no cancellation).
    floored + (s - constant)
}

/// An int32 bias with scale `s_in · s_w[channel]` and straight-through rounding.
///
/// `per_channel` is the weight-scale shape of a per-output-channel spec; its cells repeat
/// `d_output / cells` times (a grouped transposed convolution shares one weight column per
/// group position). While quantization is off the bias stays float.
pub fn int32_bias<const DI: usize, const DW: usize>(
    layer: &str,
    has_input_quant: bool,
    bias: Tensor<1>,
    input: Option<&QuantParams<DI>>,
    weight: Option<&QuantParams<DW>>,
    per_channel: [usize; DW],
) -> Result<Tensor<1>> {
    if !has_input_quant {
        return Err(NnError::MissingInputScale {
            layer: layer.into(),
        });
    }
    let (Some(input), Some(weight)) = (input, weight) else {
        return Ok(bias);
    };
    let d_output = bias.dims()[0];
    if input.scales.shape().num_elements() != 1 {
        return Err(NnError::InvalidConfig {
            field: "input_quant.granularity",
            value: "not per tensor".into(),
            reason: "an int32 bias needs a per-tensor input scale".into(),
        });
    }
    let s_in = input.scales.clone().reshape([1]);
    let s_w = weight.scales.clone();
    let cells = s_w.shape().num_elements();
    if cells != 1 && s_w.dims() != per_channel {
        return Err(NnError::InvalidConfig {
            field: "weight_quant.granularity",
            value: format!("scales {:?}", s_w.dims()),
            reason: format!(
                "an int32 bias needs a per-tensor or per-output-channel weight scale {per_channel:?}"
            ),
        });
    }
    let s_w = s_w.reshape([cells]);
    let s_w = if cells == 1 {
        s_w.expand([d_output])
    } else {
        s_w.repeat_dim(0, d_output / cells)
    };
    let s_b = s_w * s_in;
    let limit = i32::MAX as f32;
    Ok(round_ste((bias / s_b.clone()).clamp(-limit, limit)) * s_b)
}

/// A weight quantizer for a weight of `shape` stored as `layout` (one stored cell per scale
/// cell, which only a learned weight scale uses). The spec is resolved for the layout first
/// (a role becomes the layer's axis, an explicit axis must fit it) and stored resolved.
pub(crate) fn weight_quantizer(
    spec: Option<QuantSpec>,
    layout: WeightLayout,
    shape: &[usize],
    device: &Device,
) -> Result<Option<Quantizer>> {
    spec.map(|spec| {
        // A layer's own config names its weight spec deliberately: roles get the layer's
        // axes, explicit axes are kept as written (groups along a Linear's outputs are a
        // legitimate, if unusual, choice). Plans and graph mode, whose rules reach layers of
        // every kind, check explicit axes against each layer instead.
        let spec = spec.resolve_roles(layout);
        let cells = spec.check_shape(shape)?.cells();
        QuantizerConfig::for_spec(spec, QuantizerRole::Weight)
            .with_cells(cells)
            .init(device)
    })
    .transpose()
}

/// Runs an optional quantizer, returning the params it applied.
pub(crate) fn quant_opt<const D: usize>(
    q: &Option<Quantizer>,
    x: Tensor<D>,
) -> Result<(Tensor<D>, Option<QuantParams<D>>)> {
    match q {
        Some(q) => q.forward_with_params(x),
        None => Ok((x, None)),
    }
}

/// Runs an optional quantizer.
pub(crate) fn quant_out<const D: usize>(q: &Option<Quantizer>, x: Tensor<D>) -> Result<Tensor<D>> {
    match q {
        Some(q) => q.try_forward(x),
        None => Ok(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_quant_core::fake_quant;

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().expect("f32")
    }

    /// A learned scale that training drove to zero or below is floored at
    /// [`MIN_LEARNED_SCALE`] (forward) with a straight-through gradient, instead of failing;
    /// an uncalibrated one (exactly zero) is still an error.
    #[test]
    fn a_learned_scale_driven_below_zero_is_floored_and_keeps_its_gradient() {
        use burn_quant_core::ScaleStat;
        let device = Device::flex().autodiff();
        let spec = QuantSpec::int8_act_per_tensor()
            .with_bits(4)
            .with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax));
        let mut q = QuantizerConfig::for_spec(spec, QuantizerRole::Activation)
            .init(&device)
            .expect("valid");
        let x = Tensor::<2>::from_floats([[0.5, -1.0], [2.0, 0.25]], &device);
        assert!(matches!(
            q.params_for(&x),
            Err(NnError::NotCalibrated { .. })
        ));
        let negative = Tensor::<1>::from_floats([-0.3], &device).require_grad();
        q.scale = Some(Param::from_tensor(negative));
        let params = q
            .params_for(&x)
            .expect("a trained negative scale is floored");
        let used: Vec<f32> = params.scales.clone().into_data().try_into_vec_as().unwrap();
        assert_eq!(used, vec![MIN_LEARNED_SCALE]);
        let y = q.try_forward(x.clone()).expect("runs");
        assert!(host(y.clone().detach()).iter().all(|v| v.is_finite()));
        let grads = y.sum().backward();
        let g = q.scale.as_ref().unwrap().val().grad(&grads);
        assert!(g.is_some(), "the stored scale still receives a gradient");
    }

    /// QAT with stochastic rounding needs new noise at every step: each call of a quantizer
    /// draws a fresh seed (the first uses the spec's own), the sequence is a function of the
    /// seed only, clones continue it, and the mean over many calls tends to the input
    /// (stochastic rounding is unbiased).
    #[test]
    fn stochastic_rounding_draws_fresh_noise_at_every_call() {
        let device = Device::flex();
        let spec = QuantSpec::int8_weight_per_tensor()
            .with_bits(4)
            .with_rounding(Rounding::Stochastic { seed: 11 });
        let xs: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 9.0)
            .collect();
        let x = Tensor::<2>::from_data(burn::tensor::TensorData::new(xs.clone(), [8, 8]), &device);
        let make = || {
            QuantizerConfig::for_spec(spec, QuantizerRole::Weight)
                .init(&device)
                .expect("valid")
        };
        let q = make();
        let first = host(q.forward(x.clone()));
        let second = host(q.forward(x.clone()));
        assert_ne!(first, second, "the same noise twice");
        assert_eq!(first, host(fake_quant(x.clone(), &spec).expect("fits")));
        // A fresh quantizer replays the sequence; a clone continues it.
        let fresh = make();
        assert_eq!(host(fresh.forward(x.clone())), first);
        assert_eq!(host(fresh.forward(x.clone())), second);
        let third = host(q.clone().forward(x.clone()));
        assert_eq!(host(fresh.forward(x.clone())), third);
        // Unbiased: the mean over 400 calls is within a few standard errors of x.
        let n = 400;
        let mut mean = vec![0f64; xs.len()];
        for _ in 0..n {
            for (m, v) in mean.iter_mut().zip(host(q.forward(x.clone()))) {
                *m += v as f64 / n as f64;
            }
        }
        let scale = xs.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 7.0;
        let worst = mean
            .iter()
            .zip(&xs)
            .map(|(m, &v)| (m - v as f64).abs())
            .fold(0f64, f64::max);
        // One call's error is at most `scale` with std ≤ scale/2; 5 standard errors of 400.
        assert!(
            worst < 5.0 * 0.5 * scale / (n as f64).sqrt(),
            "{worst} vs scale {scale}"
        );
    }

    /// Every quant layer resolves a role weight spec with its own layout (and stores the
    /// explicit result), and refuses an explicit axis that does not fit it.
    #[test]
    fn layers_resolve_role_weight_specs_with_their_own_layout() {
        use crate::{
            QuantConv1dConfig, QuantConv2dConfig, QuantConvTranspose2dConfig, QuantEmbeddingConfig,
            QuantLinearConfig, QuantLstmConfig, QuantMultiHeadAttentionConfig,
        };
        let device = Device::flex();
        let out = QuantSpec::int8_weight_per_output_channel();
        let grp = QuantSpec::int4_weight_per_input_group(2);
        let spec_of = |q: &Option<Quantizer>| q.as_ref().expect("quantized").spec.granularity;
        let ch = |axis| Granularity::PerChannel { axis };
        let gr = |axis| Granularity::PerGroup { axis, size: 2 };

        let linear = |s| {
            QuantLinearConfig::new(8, 4)
                .with_weight_quant(Some(s))
                .init(&device)
        };
        assert_eq!(spec_of(&linear(out).unwrap().weight_quant), ch(1));
        assert_eq!(spec_of(&linear(grp).unwrap().weight_quant), gr(0));
        let conv1 = |s| {
            QuantConv1dConfig::new(4, 6, 3)
                .with_weight_quant(Some(s))
                .init(&device)
        };
        assert_eq!(spec_of(&conv1(out).unwrap().weight_quant), ch(0));
        assert_eq!(spec_of(&conv1(grp).unwrap().weight_quant), gr(1));
        let conv2 = |s| {
            QuantConv2dConfig::new([4, 6], [3, 3])
                .with_weight_quant(Some(s))
                .init(&device)
        };
        assert_eq!(spec_of(&conv2(out).unwrap().weight_quant), ch(0));
        assert_eq!(spec_of(&conv2(grp).unwrap().weight_quant), gr(1));
        let deconv = |s| {
            QuantConvTranspose2dConfig::new([4, 6], [3, 3])
                .with_weight_quant(Some(s))
                .init(&device)
        };
        assert_eq!(spec_of(&deconv(out).unwrap().weight_quant), ch(1));
        assert_eq!(spec_of(&deconv(grp).unwrap().weight_quant), gr(0));
        let emb = |s| {
            QuantEmbeddingConfig::new(10, 4)
                .with_weight_quant(Some(s))
                .init(&device)
        };
        assert_eq!(spec_of(&emb(out).unwrap().weight_quant), ch(0));
        assert_eq!(spec_of(&emb(grp).unwrap().weight_quant), gr(1));
        // Attention projections and recurrent gates are `QuantLinear`s.
        let mha = QuantMultiHeadAttentionConfig::new(8, 2)
            .with_weight_quant(Some(out))
            .init(&device)
            .unwrap();
        for p in [&mha.query, &mha.key, &mha.value, &mha.output] {
            assert_eq!(spec_of(&p.weight_quant), ch(1));
        }
        let lstm = QuantLstmConfig::new(4, 6, true)
            .with_weight_quant(Some(grp))
            .init(&device)
            .unwrap();
        assert_eq!(
            spec_of(&lstm.input_gate.input_transform.weight_quant),
            gr(0)
        );
        assert_eq!(
            spec_of(&lstm.cell_gate.hidden_transform.weight_quant),
            gr(0)
        );

        // The role forward equals the explicit forward, bit for bit.
        let x = Tensor::<4>::random([1, 4, 5, 5], burn::tensor::Distribution::Default, &device);
        let by_role = conv2(out).unwrap();
        let explicit = QuantConv2dConfig::new([4, 6], [3, 3])
            .init(&device)
            .unwrap();
        let explicit = crate::QuantConv2d {
            weight: by_role.weight.clone(),
            bias: by_role.bias.clone(),
            ..explicit
        };
        let host4 = |t: Tensor<4>| t.into_data().try_into_vec_as::<f32>().expect("f32");
        assert_eq!(
            host4(by_role.forward(x.clone())),
            host4(explicit.forward(x))
        );

        // An explicit axis in a layer's own config is kept as written (the user named it for
        // this layer): here per input channel of the conv weight.
        let conv = conv2(QuantSpec::int8_weight_per_channel()).unwrap();
        assert_eq!(
            conv.weight_quant.as_ref().unwrap().spec.granularity,
            Granularity::PerChannel { axis: 1 }
        );
        // A bare quantizer or an activation spec has no layer to resolve a role against.
        for role in [QuantizerRole::Weight, QuantizerRole::Activation] {
            let e = QuantizerConfig::for_spec(out, role)
                .init(&device)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    NnError::InvalidConfig {
                        field: "spec.granularity",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        let e = QuantLinearConfig::new(8, 4)
            .with_input_quant(Some(QuantSpec::int8_act_per_tensor().per_output_channel()))
            .init(&device)
            .unwrap_err();
        assert!(
            matches!(
                e,
                NnError::InvalidConfig {
                    field: "input_quant",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            emb(QuantSpec::int4_weight_per_group(2))
                .unwrap()
                .weight_quant
                .unwrap()
                .spec
                .granularity,
            Granularity::PerGroup { axis: 0, size: 2 }
        );
    }
}
