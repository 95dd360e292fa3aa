//! Stage 1: function-preserving transforms applied before the weights are rounded.
//!
//! * [`region`]: the transformable regions a model declares ([`Regions`]) and the transforms
//!   written once against them: norm folding, SmoothQuant, rotations (fused and online).
//! * [`rotation`]: orthogonal maps on feature vectors — Hadamard of any order the
//!   constructions reach (Sylvester ⊗ Paley), randomized Hadamard, seeded random orthogonal —
//!   applied on host rows and on Burn tensors.
//! * [`magr`]: weight-magnitude reduction (ℓ∞-regularised, output-preserving least squares).

pub mod hadamard;
pub mod magr;
pub mod region;
pub mod rotation;

pub use magr::{Magr, MagrReport};
pub use region::{
    Heads, Region, Regions, Stage1Report, fold_norms, rotate_heads, rotate_online,
    rotate_query_key, rotate_residual, smooth, smoothing_factors,
};
pub use rotation::{Rotation, RotationMode};
