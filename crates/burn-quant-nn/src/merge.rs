//! Joins with one shared quantizer: [`QuantAdd`] (residual adds) and [`QuantCat`]
//! (concatenation).
//!
//! Brevitas's rationale: an integer adder or concatenation needs its operands on one grid.
//! If the two branches of a residual join were quantized with unrelated scales, an integer
//! backend would have to requantize one of them (a multiply and a rounding) before adding, so
//! Brevitas models share one quantizer between the inputs of a join (`shared_quant =
//! QuantIdentity(...)`, then `shared_quant(a) + shared_quant(b)`); the result then lives on
//! that same grid with no requantization. These layers make that the only way to build them.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::tensor::{Device, Tensor};
use burn_quant_core::{Granularity, QuantParams, fake_quant_with};

use crate::display::scale_source;
use crate::error::{NnError, Result};
use crate::quantizer::{Quantizer, QuantizerConfig, QuantizerRole};
use burn_quant_core::QuantSpec;

/// Configuration of [`QuantAdd`].
#[derive(Config, Debug)]
pub struct QuantAddConfig {
    /// The spec of the quantizer both inputs share (e.g. `QuantSpec::int8_act_per_tensor()`).
    pub spec: QuantSpec,
    /// Stored scale cells (1 per tensor; the channel count for per-channel specs).
    #[config(default = 1)]
    pub cells: usize,
    /// Also pass the sum through the shared quantizer: it then stays on the inputs' grid and
    /// saturates to its range (an integer adder with a saturating output of the inputs' width)
    /// instead of needing one more bit.
    #[config(default = false)]
    pub quantize_sum: bool,
}

impl QuantAddConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<QuantAdd> {
        let act_quant = QuantizerConfig::for_spec(self.spec, QuantizerRole::Activation)
            .with_cells(self.cells)
            .init(device)?;
        Ok(QuantAdd {
            act_quant,
            quantize_sum: self.quantize_sum,
        })
    }
}

/// A residual add whose two inputs share one quantizer: `y = Q(a) + Q(b)` (or `Q(Q(a) +
/// Q(b))` with `quantize_sum`), with the same scale and zero-point for `a`, `b` (and the sum).
///
/// This is not `Q(a + b)` (which would leave the branches float) nor `Q_a(a) + Q_b(b)` (two
/// grids). With a stored scale (static, calibrated; or learned) the one scale is shared
/// exactly, and calibration sees both inputs (and the sum when it is quantized), so the scale
/// covers them all. With a per-call scale, the statistic is taken over both inputs together.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantAdd {
    /// The quantizer both inputs share.
    pub act_quant: Quantizer,
    /// Whether the sum goes through the shared quantizer too.
    #[module(skip)]
    pub quantize_sum: bool,
}

impl ModuleDisplay for QuantAdd {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("act_quant", &self.act_quant.spec.to_string())
            .add("scale", &scale_source(&self.act_quant))
            .add("quantize_sum", &self.quantize_sum)
            .optional()
    }
}

impl QuantAdd {
    /// `Q(a) + Q(b)`. Inputs of one shape (or, with a stored scale, shapes that broadcast);
    /// output the broadcast shape.
    ///
    /// # Panics
    /// On an error of [`QuantAdd::try_forward`].
    pub fn forward<const D: usize>(&self, a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
        self.try_forward(a, b)
            .unwrap_or_else(|e| panic!("QuantAdd: {e}"))
    }

    /// [`QuantAdd::forward`] returning errors: an uncalibrated static scale; with a per-call
    /// scale, inputs of different shapes or a granularity that cannot give both inputs the
    /// same scales (per group, per channel of a rank-1 input).
    pub fn try_forward<const D: usize>(&self, a: Tensor<D>, b: Tensor<D>) -> Result<Tensor<D>> {
        let q = &self.act_quant;
        if q.has_stored_scale() {
            // One stored scale: each call quantizes on the same grid (and during calibration
            // each call records its input into the same observer).
            let y = q.try_forward(a)? + q.try_forward(b)?;
            return if self.quantize_sum {
                q.try_forward(y)
            } else {
                Ok(y)
            };
        }
        if !q.is_active() {
            return Ok(a + b);
        }
        let params = self.joint_params(&a, &b)?;
        // The model-wide rounding rule, if one is set (`set_rounding`).
        let spec = q.effective_spec();
        let y = fake_quant_with(a, &spec, &params)? + fake_quant_with(b, &spec, &params)?;
        if self.quantize_sum {
            Ok(fake_quant_with(y, &spec, &params)?)
        } else {
            Ok(y)
        }
    }

    /// Per-call params computed over `a` and `b` together: the statistic of their
    /// concatenation along an axis the scale does not vary on.
    fn joint_params<const D: usize>(&self, a: &Tensor<D>, b: &Tensor<D>) -> Result<QuantParams<D>> {
        let spec = &self.act_quant.spec;
        if a.dims() != b.dims() {
            return Err(NnError::InvalidConfig {
                field: "inputs",
                value: format!("{:?} and {:?}", a.dims(), b.dims()),
                reason: "a per-call shared scale needs inputs of one shape (a stored scale allows broadcasting)".into(),
            });
        }
        let cat_dim = match spec.granularity {
            Granularity::PerTensor => 0,
            Granularity::PerChannel { axis } if D > 1 => usize::from(axis == 0),
            _ => {
                return Err(NnError::InvalidConfig {
                    field: "spec.granularity",
                    value: spec.to_string(),
                    reason: format!(
                        "a per-call scale shared by two inputs of rank {D} must be per tensor or per channel (rank > 1)"
                    ),
                });
            }
        };
        self.act_quant
            .params_for(&Tensor::cat(vec![a.clone(), b.clone()], cat_dim))
    }
}

/// Configuration of [`QuantCat`].
#[derive(Config, Debug)]
pub struct QuantCatConfig {
    /// The spec of the quantizer every input shares (e.g. `QuantSpec::int8_act_per_tensor()`).
    pub spec: QuantSpec,
    /// The dimension to concatenate along.
    pub dim: usize,
    /// Stored scale cells (1 per tensor; the channel count of the result for per-channel specs).
    #[config(default = 1)]
    pub cells: usize,
}

impl QuantCatConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<QuantCat> {
        let act_quant = QuantizerConfig::for_spec(self.spec, QuantizerRole::Activation)
            .with_cells(self.cells)
            .init(device)?;
        Ok(QuantCat {
            act_quant,
            dim: self.dim,
        })
    }
}

/// A concatenation whose inputs share one quantizer, so the result has one scale (Brevitas's
/// `QuantCat` with a shared input quantizer): `y = cat(Q(x₁), …, Q(xₙ))`.
///
/// Computed as `Q(cat(x₁, …, xₙ))`, which is the same thing (fake quantization is elementwise
/// given the params): a stored scale is shared exactly and calibrated over every input; a
/// per-call scale is the statistic of all inputs together.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantCat {
    /// The quantizer every input shares.
    pub act_quant: Quantizer,
    /// The dimension to concatenate along.
    pub dim: usize,
}

impl ModuleDisplay for QuantCat {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("act_quant", &self.act_quant.spec.to_string())
            .add("scale", &scale_source(&self.act_quant))
            .add("dim", &self.dim)
            .optional()
    }
}

impl QuantCat {
    /// Concatenates `inputs` along `dim`: shapes equal except on `dim`; output the same
    /// shape with `dim` the sum of the inputs'.
    ///
    /// # Panics
    /// On an error of [`QuantCat::try_forward`].
    pub fn forward<const D: usize>(&self, inputs: Vec<Tensor<D>>) -> Tensor<D> {
        self.try_forward(inputs)
            .unwrap_or_else(|e| panic!("QuantCat: {e}"))
    }

    /// [`QuantCat::forward`] returning errors: no input, `dim` out of range, shapes that
    /// differ off `dim`, an uncalibrated static scale.
    pub fn try_forward<const D: usize>(&self, inputs: Vec<Tensor<D>>) -> Result<Tensor<D>> {
        let Some(first) = inputs.first() else {
            return Err(NnError::InvalidConfig {
                field: "inputs",
                value: "[]".into(),
                reason: "nothing to concatenate".into(),
            });
        };
        if self.dim >= D {
            return Err(NnError::InvalidConfig {
                field: "dim",
                value: self.dim.to_string(),
                reason: format!("the inputs have rank {D}"),
            });
        }
        let first = first.dims();
        for x in &inputs[1..] {
            let dims = x.dims();
            if (0..D).any(|d| d != self.dim && dims[d] != first[d]) {
                return Err(NnError::InvalidConfig {
                    field: "inputs",
                    value: format!("{first:?} and {dims:?}"),
                    reason: format!("shapes must be equal except on dim {}", self.dim),
                });
            }
        }
        self.act_quant.try_forward(Tensor::cat(inputs, self.dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{calibrate, without_quantization};
    use burn::tensor::TensorData;
    use burn_quant_core::{ScaleSource, ScaleStat, fake_quant};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().expect("f32 data")
    }

    fn input<const D: usize>(
        shape: [usize; D],
        seed: u64,
        scale: f32,
        device: &Device,
    ) -> Tensor<D> {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n)
            .map(|i| (burn_quant_core::rounding::uniform(seed, i as u64) - 0.5) * scale)
            .collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn absmax<const D: usize>(t: &Tensor<D>) -> f32 {
        host(t.clone()).iter().fold(0f32, |m, v| m.max(v.abs()))
    }

    fn per_tensor<const D: usize>(s: f32, device: &Device) -> QuantParams<D> {
        QuantParams {
            scales: Tensor::<1>::from_floats([s], device).reshape([1; D]),
            zero_points: None,
            scale_level: None,
        }
    }

    fn fq<const D: usize>(x: Tensor<D>, s: f32) -> Vec<f32> {
        let device = x.device();
        host(
            fake_quant_with(
                x,
                &QuantSpec::int8_act_per_tensor(),
                &per_tensor(s, &device),
            )
            .expect("core fake-quant"),
        )
    }

    fn dynamic() -> QuantSpec {
        QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax))
    }

    #[track_caller]
    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "at {i}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn add_shares_one_calibrated_scale_between_its_inputs() {
        let device = Device::flex();
        let (a, b) = (
            input([4, 8], 1, 2.0, &device),
            input([4, 8], 2, 6.0, &device),
        );
        let layer = QuantAddConfig::new(QuantSpec::int8_act_per_tensor())
            .init(&device)
            .unwrap();
        assert!(matches!(
            layer.try_forward(a.clone(), b.clone()),
            Err(NnError::NotCalibrated { .. })
        ));
        let (layer, _) = calibrate(layer, |m| m.forward(a.clone(), b.clone())).unwrap();
        // The scale covers both inputs (b is the wider one): one grid for the join.
        let s = absmax(&a).max(absmax(&b)) / 127.0;
        assert_eq!(host(layer.act_quant.scale.as_ref().unwrap().val()), vec![s]);
        let want: Vec<f32> = fq(a.clone(), s)
            .iter()
            .zip(fq(b.clone(), s))
            .map(|(x, y)| x + y)
            .collect();
        let got = host(layer.forward(a.clone(), b.clone()));
        close(&got, &want);
        // a on its own scale would be finer: sharing really changed its grid.
        assert_ne!(fq(a.clone(), absmax(&a) / 127.0), fq(a.clone(), s));
        // Every output is a multiple of the shared scale.
        assert!(got.iter().all(|v| ((v / s) - (v / s).round()).abs() < 1e-3));
        assert_eq!(
            host(without_quantization(|| layer.forward(a.clone(), b.clone()))),
            host(a + b)
        );
    }

    #[test]
    fn add_with_quantized_sum_calibrates_over_the_sum_and_saturates() {
        let device = Device::flex();
        let (a, b) = (input([16], 3, 4.0, &device), input([16], 4, 4.0, &device));
        let layer = QuantAddConfig::new(QuantSpec::int8_act_per_tensor())
            .with_quantize_sum(true)
            .init(&device)
            .unwrap();
        let (layer, _) = calibrate(layer, |m| m.forward(a.clone(), b.clone())).unwrap();
        let s = absmax(&a)
            .max(absmax(&b))
            .max(absmax(&(a.clone() + b.clone())))
            / 127.0;
        assert_eq!(host(layer.act_quant.scale.as_ref().unwrap().val()), vec![s]);
        let sum: Vec<f32> = fq(a.clone(), s)
            .iter()
            .zip(fq(b.clone(), s))
            .map(|(x, y)| x + y)
            .collect();
        let sum = Tensor::<1>::from_data(TensorData::new(sum, [16]), &device);
        close(&host(layer.forward(a.clone(), b.clone())), &fq(sum, s));
        // With a scale calibrated on small inputs, a large sum saturates to [-128·s, 127·s].
        let small = QuantAddConfig::new(QuantSpec::int8_act_per_tensor())
            .with_quantize_sum(true)
            .init(&device)
            .unwrap();
        let (small, _) = calibrate(small, |m| {
            m.forward(a.clone().mul_scalar(0.1), b.clone().mul_scalar(0.1))
        })
        .unwrap();
        let s_small = host(small.act_quant.scale.as_ref().unwrap().val())[0];
        let y = host(small.forward(a.clone(), a.clone()));
        let (lo, hi) = (-128.0 * s_small, 127.0 * s_small);
        assert!(
            y.iter()
                .all(|v| *v >= lo * (1.0 + 1e-6) && *v <= hi * (1.0 + 1e-6)),
            "{y:?}"
        );
        assert!(
            y.iter().any(|v| (v - hi).abs() < 1e-5) && y.iter().any(|v| (v - lo).abs() < 1e-5),
            "{y:?}"
        );
    }

    #[test]
    fn add_with_a_per_call_scale_takes_the_statistic_over_both_inputs() {
        let device = Device::flex();
        let (a, b) = (
            input([4, 8], 5, 2.0, &device),
            input([4, 8], 6, 6.0, &device),
        );
        let layer = QuantAddConfig::new(dynamic()).init(&device).unwrap();
        let s = absmax(&a).max(absmax(&b)) / 127.0;
        let want: Vec<f32> = fq(a.clone(), s)
            .iter()
            .zip(fq(b.clone(), s))
            .map(|(x, y)| x + y)
            .collect();
        close(&host(layer.forward(a.clone(), b.clone())), &want);
        // Per channel (axis 0): the statistic per row over both inputs.
        let per_row = dynamic().with_granularity(Granularity::PerChannel { axis: 0 });
        let layer = QuantAddConfig::new(per_row).init(&device).unwrap();
        let joint = fake_quant(Tensor::cat(vec![a.clone(), b.clone()], 1), &per_row).unwrap();
        let want = joint.clone().narrow(1, 0, 8) + joint.narrow(1, 8, 8);
        close(&host(layer.forward(a.clone(), b.clone())), &host(want));
        // Errors instead of silently separate scales.
        let err = layer
            .try_forward(a.clone(), b.clone().narrow(0, 0, 2))
            .unwrap_err();
        assert!(
            matches!(
                err,
                NnError::InvalidConfig {
                    field: "inputs",
                    ..
                }
            ),
            "{err}"
        );
        let grouped = QuantAddConfig::new(
            dynamic().with_granularity(Granularity::PerGroup { axis: 1, size: 4 }),
        )
        .init(&device)
        .unwrap();
        let err = grouped.try_forward(a, b).unwrap_err();
        assert!(
            matches!(
                err,
                NnError::InvalidConfig {
                    field: "spec.granularity",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn add_with_a_stored_scale_broadcasts_and_passes_gradients_to_both_inputs() {
        let device = Device::flex().autodiff();
        let a = input([4, 8], 7, 2.0, &device).require_grad();
        let b = input([1, 8], 8, 2.0, &device).require_grad();
        let layer = QuantAddConfig::new(QuantSpec::int8_act_per_tensor())
            .init(&device)
            .unwrap();
        let (layer, _) = calibrate(layer, |m| m.forward(a.clone(), b.clone())).unwrap();
        let y = layer.forward(a.clone(), b.clone());
        assert_eq!(y.dims(), [4, 8]);
        let grads = y.sum().backward();
        // Straight through (absmax scale: nothing clipped except possibly the absmax element,
        // which this range keeps inside): d/da = 1, d/db = 4 (broadcast over four rows).
        let ga = host(a.grad(&grads).map(Tensor::from_inner).expect("grad a"));
        let gb = host(b.grad(&grads).map(Tensor::from_inner).expect("grad b"));
        assert!(ga.iter().filter(|g| **g == 1.0).count() >= 31, "{ga:?}");
        assert!(gb.iter().filter(|g| **g == 4.0).count() >= 7, "{gb:?}");
    }

    #[test]
    fn cat_quantizes_every_input_on_one_calibrated_scale() {
        let device = Device::flex();
        let xs = [
            input([2, 3, 4], 9, 1.0, &device),
            input([2, 5, 4], 10, 8.0, &device),
        ];
        let layer = QuantCatConfig::new(QuantSpec::int8_act_per_tensor(), 1)
            .init(&device)
            .unwrap();
        assert!(matches!(
            layer.try_forward(xs.to_vec()),
            Err(NnError::NotCalibrated { .. })
        ));
        let (layer, seen) = calibrate(layer, |m| m.forward(xs.to_vec())).unwrap();
        assert_eq!(
            host(seen),
            host(Tensor::cat(xs.to_vec(), 1)),
            "calibration passes through"
        );
        let s = absmax(&xs[0]).max(absmax(&xs[1])) / 127.0;
        assert_eq!(host(layer.act_quant.scale.as_ref().unwrap().val()), vec![s]);
        let y = layer.forward(xs.to_vec());
        assert_eq!(y.dims(), [2, 8, 4]);
        close(&host(y.clone().narrow(1, 0, 3)), &fq(xs[0].clone(), s));
        close(&host(y.narrow(1, 3, 5)), &fq(xs[1].clone(), s));
        assert_eq!(
            host(without_quantization(|| layer.forward(xs.to_vec()))),
            host(Tensor::cat(xs.to_vec(), 1))
        );
        // Per-call scale: the statistic over all inputs.
        let dynamic = QuantCatConfig::new(dynamic(), 1).init(&device).unwrap();
        close(
            &host(dynamic.forward(xs.to_vec()).narrow(1, 0, 3)),
            &fq(xs[0].clone(), s),
        );
    }

    #[test]
    fn cat_rejects_bad_inputs() {
        let device = Device::flex();
        let layer = QuantCatConfig::new(dynamic(), 1).init(&device).unwrap();
        let err = layer.try_forward(Vec::<Tensor<2>>::new()).unwrap_err();
        assert!(
            matches!(
                err,
                NnError::InvalidConfig {
                    field: "inputs",
                    ..
                }
            ),
            "{err}"
        );
        let err = layer
            .try_forward(vec![
                input([2, 3], 1, 1.0, &device),
                input([3, 3], 2, 1.0, &device),
            ])
            .unwrap_err();
        assert!(
            matches!(
                err,
                NnError::InvalidConfig {
                    field: "inputs",
                    ..
                }
            ),
            "{err}"
        );
        let err = layer
            .try_forward(vec![input([4], 1, 1.0, &device)])
            .unwrap_err();
        assert!(
            matches!(err, NnError::InvalidConfig { field: "dim", .. }),
            "{err}"
        );
    }
}
