//! # burn-quant-core
//!
//! The quantization core of burn-quant: element [`Format`]s (integers of any width, OCP
//! minifloats, binary, ternary), [`Granularity`] (per tensor / channel / group, or by role —
//! per output channel, per input group — resolved for a layer's [`WeightLayout`]),
//! [`ScaleSpec`] (statistics, power-of-two and quantized scales: MX E8M0, NVFP4 E4M3, GGUF k-quant
//! sub-block scales), [`ZeroPoint`], [`Rounding`], all combined in a [`QuantSpec`].
//!
//! Three verbs act on Burn tensors of any rank:
//! - [`quantize`] → [`QuantTensor`]: exact integer codes, scales, zero-points;
//! - [`QuantTensor::dequantize`]: back to float;
//! - [`fake_quant`] / [`fake_quant_with`]: quantize-dequantize with straight-through
//!   gradients (LSQ gradients for a learned scale), usable under `Device::flex().autodiff()`.
//!
//! ## The fused fake-quant op
//!
//! On a Flex (CPU) device, plain or autodiff, [`fake_quant_with`] runs one fused,
//! differentiable op registered through Burn's backend extension mechanism
//! ([`fused::FakeQuantBackend`]): the forward reads `x` in place and writes one buffer; the
//! backward gives the straight-through gradient of `x` and the LSQ gradients of the scale and
//! zero-point in one pass. Other devices, custom rounding rules, rounding offsets and non-f32
//! tensors keep the reference chain of Burn ops, [`fake_quant_reference`], which defines the
//! semantics: the fused op's values are bit-exact to it and its gradients equal up to the
//! order of summation (see [`fused`]).
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use burn_quant_core::{quantize, QuantSpec};
//!
//! let device = Device::flex();
//! let w = Tensor::<2>::from_floats([[0.1, -0.5], [0.25, 1.0]], &device);
//! let q = quantize(w, &QuantSpec::int8_weight_per_channel()).unwrap();
//! assert_eq!(q.codes_vec(), vec![51, -64, 127, 127]);
//! ```
#![warn(missing_docs)]

mod element;
pub mod error;
pub mod format;
pub mod fused;
pub mod granularity;
pub mod host;
pub mod metrics;
pub mod observer;
pub mod quantize;
pub mod rounding;
pub mod scale;
pub mod spec;
pub mod weight_layout;

pub use error::{QuantError, Result};
pub use format::{Format, Minifloat, RoundMode, Special};
pub use granularity::{Granularity, Layout};
pub use observer::Observer;
pub use quantize::{
    QuantParams, QuantTensor, ScaleLevel, compute_params, dequantize, fake_quant,
    fake_quant_custom, fake_quant_fused, fake_quant_offset, fake_quant_reference, fake_quant_with, grad_scale, quantize, quantize_with,
    round_ste, with_surrogate_grad,
};
pub use rounding::{Rounding, RoundingFn, RoundingName, register_rounding};
pub use scale::{
    Pow2Mode, ScaleQuant, ScaleRestriction, ScaleSource, ScaleSpec, ScaleStat, SymmetricScale,
    ZeroPoint,
};
pub use spec::QuantSpec;
pub use weight_layout::WeightLayout;
