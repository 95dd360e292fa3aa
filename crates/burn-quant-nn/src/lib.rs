//! # burn-quant-nn
//!
//! The ways into a Burn model: the [`Quantizer`] module (a `QuantSpec` plus its calibrated or
//! learned state), quantized layers whose parameter names equal `burn::nn`'s so float records
//! load unchanged, calibration sessions, and weight quantization of unmodified Burn models
//! through `QuantPlan` and Burn's reparameterization.
//!
//! A quantized layer wraps the matching `burn::nn` layer, taking its weights (ids included)
//! and dimensions; [`LayerQuant`] says what is quantized, from plain specs (an absent spec
//! means float):
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::tensor::Device;
//! use burn_quant_core::QuantSpec;
//! use burn_quant_nn::{LayerQuant, QuantLinear};
//!
//! let device = Device::flex();
//! let quant = LayerQuant::weights(QuantSpec::int8_weight_per_output_channel())
//!     .with_input(QuantSpec::int8_act_per_tensor());
//! let fc = QuantLinear::from_float(LinearConfig::new(16, 4).init(&device), &quant, &device)?;
//! // Burn's `ModuleDisplay`: dimensions and each quantizer's spec (`none` when absent).
//! assert!(format!("{fc}").starts_with("QuantLinear {d_input: 16, d_output: 4, bias: true"));
//! # Ok::<(), burn_quant_nn::NnError>(())
//! ```
//!
//! Fresh layers come from the configs, as in Burn: `QuantLinearConfig::new(16, 4)
//! .with_quant(quant).init(&device)`.
#![warn(missing_docs)]

pub mod act;
pub mod attention;
pub mod calibration;
pub mod conv;
mod display;
pub mod embedding;
pub mod error;
pub mod layer_quant;
pub mod linear;
pub mod merge;
pub mod plan;
pub mod presets;
pub mod quantizer;
pub mod recipe;
pub mod recurrent;

pub use act::{QuantAct, QuantActConfig, QuantReLU, QuantReLUConfig};
#[allow(deprecated)]
pub use calibration::with_rounding;
pub use calibration::{
    QuantMode, calibrate, quant_modes, set_quantization, set_rounding, without_quantization,
    write_params,
};
pub use error::{NnError, Result};
pub use layer_quant::LayerQuant;
pub use linear::{QuantLinear, QuantLinearConfig};
pub use quantizer::{Quantizer, QuantizerConfig, QuantizerRole};

pub mod reparam;

pub use act::{
    QuantHardTanh, QuantHardTanhConfig, QuantSigmoid, QuantSigmoidConfig, QuantTanh,
    QuantTanhConfig,
};
pub use attention::{QuantMhaInput, QuantMultiHeadAttention, QuantMultiHeadAttentionConfig};
pub use conv::{
    QuantConv1d, QuantConv1dConfig, QuantConv2d, QuantConv2dConfig, QuantConvTranspose2d,
    QuantConvTranspose2dConfig,
};
pub use embedding::{QuantEmbedding, QuantEmbeddingConfig};
pub use merge::{QuantAdd, QuantAddConfig, QuantCat, QuantCatConfig};
pub use plan::{Decision, ParamSite, Pattern, PlanEntry, PlanError, PlanReport, QuantPlan, Rule};
pub use recipe::{Recipe, RecipeError, RecipeFormat};
pub use recurrent::{QuantGateController, QuantGru, QuantGruConfig, QuantLstm, QuantLstmConfig};
pub use reparam::{
    AnyQuantTensor, QuantWeight, QuantizedModel, WeightFakeQuant, attach_weight_quantizers,
    fake_quantize_weights, quantize_model, quantized_weights,
};
