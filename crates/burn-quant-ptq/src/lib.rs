//! # burn-quant-ptq
//!
//! Post-training quantization of Burn linear layers with calibration data: per-layer
//! statistics ([`LayerStats`]: `H = X̃ᵀX̃` and the float/quantized cross term `G = X̃ᵀX`) and
//! the Stage-2 weight algorithms behind one trait, [`Stage2Algorithm`]:
//!
//! | algorithm | target | inputs | file |
//! |---|---|---|---|
//! | [`Rtn`] | nearest grid point | none | `rtn.rs` |
//! | [`Gptq`] | `‖X̃W − X̃Ŵ‖` | quantized-path | `gptq.rs` |
//! | [`Gpfq`] | `‖XW − X̃Ŵ‖` | float + quantized | `gpfq.rs` |
//! | [`Gptaq`] | `‖XW − X̃Ŵ‖` | float + quantized | `gptaq.rs` |
//! | [`Qronos`] | `‖XW − X̃Ŵ‖` | float + quantized | `qronos.rs` |
//! | [`Adaround`] | `‖X̃W − X̃Ŵ‖` (or `‖XW − X̃Ŵ‖`), learned rounding | quantized-path (or both) | `adaround.rs` |
//! | [`AutoRound`] | block output (or `‖XW − X̃Ŵ‖` per layer), learned rounding and clipping, sign-SGD through autodiff | float + quantized | `autoround.rs` |
//!
//! [`bias_correction()`] turns calibration means ([`InputMeans`]) into the bias shift that
//! removes a quantized layer's mean output error (notes §7.7).
//!
//! Stage 1 ([`stage1`]) rewrites a model's weights before any of them, without changing its
//! float function: a model declares its regions ([`stage1::Regions`]) and the transforms —
//! norm folding, SmoothQuant, rotations fused or online (Hadamard of any order the
//! Sylvester/Paley constructions reach, or seeded random orthogonal), MagR — act on them.
//!
//! Each returns a `QuantTensor<2>` whose codes, scales and zero-points follow the spec exactly
//! as `burn_quant_core` lays them out (any granularity, F16 / MX / NVFP4 / k-quant scale
//! levels), so `dequantize()` gives the algorithm's Ŵ bit for bit and the exporters can encode
//! it code for code. Weights are in Burn's `Linear` layout `[d_input, d_output]`; algorithms
//! run over input channels and groups run along axis 0. The equations, defaults and oracles
//! follow the papers cited in each algorithm's module.
//!
//! ```
//! use burn::tensor::{Device, Tensor, TensorData};
//! use burn_quant_core::QuantSpec;
//! use burn_quant_ptq::{Gptq, Stage2Algorithm};
//!
//! let device = Device::flex();
//! let (d_in, d_out, tokens) = (64, 16, 256);
//! let x: Vec<f32> = (0..tokens * d_in).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
//! let w: Vec<f32> = (0..d_in * d_out).map(|i| ((i * 104729) % 97) as f32 / 400.0 - 0.12).collect();
//! let x = Tensor::<2>::from_data(TensorData::new(x, [tokens, d_in]), &device);
//! let w = Tensor::<2>::from_data(TensorData::new(w, [d_in, d_out]), &device);
//!
//! let gptq = Gptq::default();
//! let mut stats = gptq.new_stats(d_in);
//! gptq.observe(&mut stats, &x, None)?;          // once per calibration batch
//! let q = gptq.quantize(&w, &stats, &QuantSpec::int4_weight_per_group(32))?;
//! assert_eq!(q.tensor.dequantize().dims(), [d_in, d_out]);
//! # Ok::<(), burn_quant_ptq::PtqError>(())
//! ```
#![warn(missing_docs)]

pub mod adaround;
pub mod algorithm;
pub mod autoround;
pub mod bias_correction;
mod choice;
pub mod error;
pub mod gpfq;
pub mod gptaq;
pub mod gptq;
pub mod linalg;
pub mod qronos;
mod quantizer;
pub mod rtn;
mod sequential;
pub mod stage1;
pub mod stats;
#[cfg(test)]
mod testutil;

pub use adaround::Adaround;
pub use algorithm::{
    DynamicGroupTiming, HostQuantized, LayerReport, Prepared, Quantized, Stage2Algorithm,
};
pub use autoround::{AutoRound, AutoRoundOutcome, AutoRoundReport, BlockWeight};
pub use bias_correction::{InputMeans, bias_correction};
pub use choice::Algorithm;
pub use error::{PtqError, Result};
pub use gpfq::Gpfq;
pub use gptaq::Gptaq;
pub use gptq::Gptq;
pub use qronos::Qronos;
pub use rtn::Rtn;
pub use stats::{Accumulation, CalibInputs, LayerStats, OutputError};
