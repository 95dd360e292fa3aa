//! Orthogonal maps on feature vectors: Hadamard of any
//! order [`super::hadamard`] reaches, randomized Hadamard, and seeded random orthogonal.
//!
//! # Convention
//!
//! A [`Rotation`] of length `n` is an orthogonal `n × n` matrix `M`. Applied to a feature
//! vector `x` (a row of activations, or a row of a Hugging Face-layout weight `[out, in]` along
//! its input axis) it gives `y = M·x` as a column, i.e. the row-vector form is `x ↦ x·Mᵀ`.
//! Every method applies this **same** map, so an online transform of the activations and the
//! fused weight always agree (the §7.4 rule: apply the identical transform to the activation
//! and to every weight vector along its input axis):
//!
//! * [`Rotation::apply_rows`]: every consecutive `n` values (`[rows, n]` row-major) `x ← M·x`;
//! * [`Rotation::apply_columns`]: a `[n, cols]` matrix (Burn's `Linear` weight `[d_in, d_out]`)
//!   has every column `c ← M·c`, i.e. `W ← M·W`;
//! * [`Rotation::apply_tensor`]: the last axis of a Burn tensor, `x ↦ x·Mᵀ`.
//!
//! Then `(X·Mᵀ)·(M·W) = X·W`: rotate the activations online with `apply_tensor` (or
//! `apply_rows`) and fuse `apply_columns` into the weight that consumes them.
//!
//! # Hadamard index convention
//!
//! With `n = K·P` (`K` the seed order of [`super::hadamard::hadamard_seed`], `P` a power of
//! two) and index `i = a·P + b` (`a < K`, `b < P`):
//! `M = (H_K ⊗ H_P)·diag(s)/√n`. Applying it: multiply `x` elementwise by the signs `s` (all
//! `+1` for the deterministic rotation), view `x` as a `K × P` matrix, FWHT every row (over
//! `b`), multiply by `H_K` over `a` (`y[a, :] = Σ_a' H_K[a, a']·x[a', :]`), scale by `1/√n`.
//! Paley-I seeds are not symmetric, so `M ≠ Mᵀ` in general: never swap the two.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::hadamard::{fwht, hadamard_seed, sylvester};
use crate::error::{PtqError, Result};
use crate::linalg::{View, ViewMut, matmul};

/// Which orthogonal matrix a rotation uses, as Brevitas's `--rotation-mode` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationMode {
    /// A (randomized) Hadamard matrix: `O(n log n + n·K)` per vector, only for the sizes
    /// [`hadamard_seed`] covers.
    Had,
    /// A seeded random orthogonal matrix (QR of a Gaussian matrix): any size, `O(n²)` per
    /// vector and `n²` f64 of storage.
    Ort,
}

impl fmt::Display for RotationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RotationMode::Had => "had",
            RotationMode::Ort => "ort",
        })
    }
}

impl FromStr for RotationMode {
    type Err = PtqError;
    /// Parses `had` / `ort` (the serde names), case-insensitively.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "had" => Ok(RotationMode::Had),
            "ort" => Ok(RotationMode::Ort),
            _ => Err(PtqError::config(
                "rotation_mode",
                s,
                "expected `had` (Hadamard) or `ort` (random orthogonal)",
            )),
        }
    }
}

/// An orthogonal `n × n` matrix `M` acting on feature vectors as `x ↦ M·x` (row form
/// `x ↦ x·Mᵀ`); see the module docs for the convention and the Hadamard index order.
///
/// Cloning is cheap (the matrices are shared).
#[derive(Clone)]
pub struct Rotation {
    n: usize,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// `M = (H_K ⊗ H_P)·diag(s)/√n`.
    Hadamard {
        /// Seed order K.
        k: usize,
        /// `H_K`, row-major `K × K`, ±1.
        hk: Arc<[i8]>,
        /// Power-of-two factor P = n / K.
        p: usize,
        /// Random signs `s` (length n), or `None` for the deterministic rotation.
        signs: Option<Arc<[f32]>>,
    },
    /// `M` row-major `n × n`.
    Dense { m: Arc<[f64]> },
}

impl fmt::Debug for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The matrices can hold millions of entries: describe, do not dump.
        match &self.kind {
            Kind::Hadamard { k, p, signs, .. } => f
                .debug_struct("Rotation")
                .field("n", &self.n)
                .field("kind", &"hadamard")
                .field("seed_order", k)
                .field("power_of_two", p)
                .field("random_signs", &signs.is_some())
                .finish(),
            Kind::Dense { .. } => f
                .debug_struct("Rotation")
                .field("n", &self.n)
                .field("kind", &"random_orthogonal")
                .finish(),
        }
    }
}

/// Above this power-of-two factor `apply_tensor` splits `H_P = H_P₁ ⊗ H_P₂` into two GEMMs
/// (`O(√P)` instead of `O(P)` multiply-adds per element); measured on `flex`, see the
/// `time_tensor_variants` test.
const SPLIT_P_ABOVE: usize = 128;

/// Rows handled per f64 GEMM block by the dense paths: bounds the temporary buffers to
/// `2·BLOCK·n` f64 whatever the number of rows.
const BLOCK: usize = 256;

impl Rotation {
    /// The deterministic normalized Hadamard rotation `M = (H_K ⊗ H_P)/√n` (no signs), the
    /// one Brevitas's layerwise HIP uses (§7.5). For a power of two it is the normalized
    /// Sylvester matrix.
    ///
    /// # Errors
    /// [`PtqError::InvalidConfig`] (field `n`) when `n` has no Hadamard seed here (`n = 0`,
    /// odd `n > 1`, `n ≡ 2 mod 4`, 92, 156, ...; see [`super::hadamard`]); use
    /// [`RotationMode::Ort`] for such sizes.
    pub fn hadamard(n: usize) -> Result<Self> {
        let (k, hk) = hadamard_seed(n).ok_or_else(|| {
            PtqError::config(
                "n",
                n,
                format!(
                    "no Hadamard matrix of order {n} can be built (need n = K·2^j with K a \
                     Sylvester/Paley/Kronecker order); use the random orthogonal rotation \
                     (`ort`) for this size"
                ),
            )
        })?;
        Ok(Self {
            n,
            kind: Kind::Hadamard {
                k,
                hk: hk.into(),
                p: n / k,
                signs: None,
            },
        })
    }

    /// The randomized Hadamard rotation `M = (H_K ⊗ H_P)·diag(s)/√n` with ±1 signs `s` drawn
    /// from `seed` (QuaRot's R1). The same seed always gives the same signs.
    ///
    /// # Errors
    /// As [`Rotation::hadamard`].
    pub fn randomized_hadamard(n: usize, seed: u64) -> Result<Self> {
        let mut rot = Self::hadamard(n)?;
        let mut rng = SplitMix64::new(seed);
        let signs: Arc<[f32]> = (0..n)
            .map(|_| if rng.next() >> 63 == 0 { 1.0 } else { -1.0 })
            .collect();
        if let Kind::Hadamard { signs: s, .. } = &mut rot.kind {
            *s = Some(signs);
        }
        Ok(rot)
    }

    /// A seeded random orthogonal `n × n` matrix: the `Q` of a Householder QR (in f64) of an
    /// `n × n` standard Gaussian matrix, with `Q`'s columns multiplied by `sign(diag R)` so
    /// that it is Haar-distributed (Brevitas's `ort`). Costs `O(n³)` once and `n²` f64.
    pub fn random_orthogonal(n: usize, seed: u64) -> Self {
        Self {
            n,
            kind: Kind::Dense {
                m: random_orthogonal_matrix(n, seed).into(),
            },
        }
    }

    /// The rotation a config asks for: [`RotationMode::Had`] is
    /// [`Rotation::randomized_hadamard`]`(n, seed)` (for the deterministic, unsigned one call
    /// [`Rotation::hadamard`]); [`RotationMode::Ort`] is
    /// [`Rotation::random_orthogonal`]`(n, seed)`.
    ///
    /// # Errors
    /// [`PtqError::InvalidConfig`] (field `n`) for `n = 0`, or for `Had` when `n` has no
    /// Hadamard seed.
    pub fn new(mode: RotationMode, n: usize, seed: u64) -> Result<Self> {
        if n == 0 {
            return Err(PtqError::config(
                "n",
                n,
                "a rotation needs at least one feature",
            ));
        }
        match mode {
            RotationMode::Had => Self::randomized_hadamard(n, seed),
            RotationMode::Ort => Ok(Self::random_orthogonal(n, seed)),
        }
    }

    /// The length `n` of the vectors it acts on.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether `n = 0` (only [`Rotation::random_orthogonal`]`(0, _)` builds one).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Which kind of matrix this is.
    pub fn mode(&self) -> RotationMode {
        match self.kind {
            Kind::Hadamard { .. } => RotationMode::Had,
            Kind::Dense { .. } => RotationMode::Ort,
        }
    }

    /// The Hadamard seed order `K` (`n = K·P`), or `None` for a dense rotation.
    pub fn seed_order(&self) -> Option<usize> {
        match self.kind {
            Kind::Hadamard { k, .. } => Some(k),
            Kind::Dense { .. } => None,
        }
    }

    /// `M`, row-major `n × n`, in f64.
    pub fn matrix(&self) -> Vec<f64> {
        let n = self.n;
        match &self.kind {
            Kind::Dense { m } => m.to_vec(),
            Kind::Hadamard { k, hk, p, signs } => {
                let (k, p) = (*k, *p);
                let scale = 1.0 / (n as f64).sqrt();
                let mut m = vec![0f64; n * n];
                m.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
                    let (a, b) = (i / p, i % p);
                    for (j, out) in row.iter_mut().enumerate() {
                        let (a2, b2) = (j / p, j % p);
                        let hp = if (b & b2).count_ones() % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        };
                        let s = signs.as_ref().map_or(1.0, |s| f64::from(s[j]));
                        *out = f64::from(hk[a * k + a2]) * hp * s * scale;
                    }
                });
                m
            }
        }
    }

    /// Applies `x ← M·x` to every consecutive chunk of `n` values of `data` (a row-major
    /// `[rows, n]` buffer), rows in parallel. Hadamard: `O(n log n + n·K)` per row in f32;
    /// dense: an f64-accumulated GEMM.
    ///
    /// # Errors
    /// [`PtqError::ShapeMismatch`] when `data.len()` is not a multiple of `n`.
    pub fn apply_rows(&self, data: &mut [f32]) -> Result<()> {
        let n = self.n;
        if n == 0 || !data.len().is_multiple_of(n) {
            if data.is_empty() {
                return Ok(());
            }
            return Err(PtqError::ShapeMismatch {
                what: "data",
                got: vec![data.len()],
                expected: format!("a whole number of rows of {n} values"),
            });
        }
        match &self.kind {
            Kind::Hadamard { k, hk, p, signs } => {
                let (k, p) = (*k, *p);
                let scale = (1.0 / (n as f64).sqrt()) as f32;
                // H_K/√n in f32 for the GEMM (even K = 12 runs faster as a GEMM than as
                // signed segment adds, see `time_tensor_variants`).
                let hk_scaled: Vec<f32> = hk.iter().map(|&v| f32::from(v) * scale).collect();
                data.par_chunks_mut(n).for_each_init(
                    || vec![0f32; n],
                    |tmp, row| hadamard_row(row, tmp, k, p, &hk_scaled, signs.as_deref(), scale),
                );
            }
            Kind::Dense { m } => {
                // Y = X·Mᵀ, a block of rows at a time.
                let mt = View::rows(m, n, n).t();
                let mut x = vec![0f64; BLOCK * n];
                let mut y = vec![0f64; BLOCK * n];
                for chunk in data.chunks_mut(BLOCK * n) {
                    let r = chunk.len() / n;
                    for (d, s) in x.iter_mut().zip(chunk.iter()) {
                        *d = f64::from(*s);
                    }
                    matmul(
                        ViewMut::rows(&mut y[..r * n], r, n),
                        false,
                        0.0,
                        View::rows(&x[..r * n], r, n),
                        mt,
                        1.0,
                    );
                    for (d, s) in chunk.iter_mut().zip(y.iter()) {
                        *d = *s as f32;
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies `c ← M·c` to every column `c` of `data`, a row-major `rows × cols` matrix with
    /// `rows == n`, i.e. `W ← M·W`. This fuses the rotation into a weight in Burn's `Linear`
    /// layout `[d_in, d_out]` along its input axis: `(X·Mᵀ)·(M·W) = X·W`, so the rotated
    /// activations of [`Rotation::apply_rows`] / [`Rotation::apply_tensor`] meet a weight
    /// rotated with this.
    ///
    /// # Errors
    /// [`PtqError::ShapeMismatch`] when `rows != n` or `data.len() != rows·cols`.
    pub fn apply_columns(&self, data: &mut [f32], rows: usize, cols: usize) -> Result<()> {
        let n = self.n;
        if rows != n || rows.checked_mul(cols) != Some(data.len()) {
            return Err(PtqError::ShapeMismatch {
                what: "data",
                got: vec![rows, cols, data.len()],
                expected: format!("[{n}, cols] with {n}·cols values (rows, cols, length)"),
            });
        }
        if n == 0 || cols == 0 {
            return Ok(());
        }
        match &self.kind {
            Kind::Hadamard { .. } => {
                // Transpose so every column is a contiguous row, reuse the row kernel.
                let mut t = vec![0f32; data.len()];
                t.par_chunks_mut(n).enumerate().for_each(|(c, col)| {
                    for (r, v) in col.iter_mut().enumerate() {
                        *v = data[r * cols + c];
                    }
                });
                self.apply_rows(&mut t)?;
                data.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = t[c * n + r];
                    }
                });
            }
            Kind::Dense { m } => {
                // W[:, c0..c0+w] ← M·W[:, c0..c0+w], a block of columns at a time in f64.
                let mv = View::rows(m, n, n);
                let width = BLOCK.min(cols);
                let mut w = vec![0f64; n * width];
                let mut y = vec![0f64; n * width];
                for c0 in (0..cols).step_by(width) {
                    let cw = width.min(cols - c0);
                    for r in 0..n {
                        for c in 0..cw {
                            w[r * cw + c] = f64::from(data[r * cols + c0 + c]);
                        }
                    }
                    matmul(
                        ViewMut::rows(&mut y[..n * cw], n, cw),
                        false,
                        0.0,
                        mv,
                        View::rows(&w[..n * cw], n, cw),
                        1.0,
                    );
                    for r in 0..n {
                        for c in 0..cw {
                            data[r * cols + c0 + c] = y[r * cw + c] as f32;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The same map on the **last** axis of `x` (length `n`): `x ↦ x·Mᵀ`, built from Burn
    /// tensor ops only, so it runs on `x`'s device in `x`'s float dtype and is differentiable
    /// under autodiff. This is the online transform of a model's forward pass.
    ///
    /// Hadamard: the signs multiply first; then `x` is viewed as `[rows·K, P]` and multiplied
    /// by `H_P` — one GEMM for `P ≤ 128`, two GEMMs over `H_P = H_P₁ ⊗ H_P₂` above — and as
    /// `[rows, K, P]` left-multiplied by `H_K` (a broadcast batched GEMM); `1/√n` is folded
    /// into the last factor. On `flex` ([8192, n] inputs) this beat `log₂ P` butterfly stages
    /// (narrow/add/sub/cat) by 3.5–8× and was on par with or faster than a transposed `H_K`
    /// GEMM (`time_tensor_variants`). The constant
    /// matrices (`K² + P` values at most) are uploaded on every call. Dense: `x·Mᵀ` with `Mᵀ`
    /// (`n²` values, f32) uploaded on every call.
    ///
    /// A Hadamard rotation of an f32 tensor on the plain (not autodiff) `flex` device takes the
    /// host path instead ([`Rotation::apply_rows`] on the tensor's buffer): same map, no graph
    /// to keep, and the fast transform beats the GEMMs there.
    ///
    /// # Errors
    /// [`PtqError::ShapeMismatch`] when `D = 0` or the last axis is not `n` long.
    pub fn apply_tensor<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let dims = x.dims();
        let n = self.n;
        if D == 0 || dims[D - 1] != n {
            return Err(PtqError::ShapeMismatch {
                what: "x",
                got: dims.to_vec(),
                expected: format!("[..., {n}]"),
            });
        }
        let rows: usize = dims[..D - 1].iter().product();
        if rows == 0 || n == 0 {
            return Ok(x);
        }
        let device = x.device();
        if matches!(self.kind, Kind::Hadamard { .. })
            && !device.is_autodiff()
            && device == burn::tensor::Device::flex()
            && x.dtype() == burn::tensor::DType::F32
        {
            // No gradient to keep and the data already on the host: the FWHT on the raw
            // buffer is 4–5× faster than the tensor GEMMs at n = 1536 (benches/online_rotation).
            let mut data =
                x.into_data()
                    .try_into_vec::<f32>()
                    .map_err(|e| PtqError::InvalidStatistics {
                        reason: format!("reading an f32 tensor: {e:?}"),
                    })?;
            self.apply_rows(&mut data)?;
            return Ok(Tensor::from_data(TensorData::new(data, dims), &device));
        }
        let x2: Tensor<2> = x.reshape([rows, n]);
        let y = match &self.kind {
            Kind::Hadamard { .. } => self.hadamard_tensor(x2, SPLIT_P_ABOVE),
            Kind::Dense { m } => {
                let mut mt = vec![0f32; n * n];
                for i in 0..n {
                    for j in 0..n {
                        mt[j * n + i] = m[i * n + j] as f32;
                    }
                }
                let mt = TensorData::new(mt, [n, n]);
                let mt = Tensor::<2>::from_data(mt, (&x2.device(), x2.dtype()));
                x2.matmul(mt)
            }
        };
        Ok(y.reshape(dims))
    }
}

impl Rotation {
    /// The Hadamard map on `[rows, n]` with tensor ops: `x` is viewed as `[rows, K, P₁, P₂]`
    /// (`P = P₁·P₂`, `H_P = H_P₁ ⊗ H_P₂` in Sylvester order; `P₁ = 1` unless
    /// `P > split_p_above`) and each factor is one GEMM along its axis, innermost first: the
    /// last axis as `[·, d]·Aᵀ`, an inner axis as the broadcast batched product
    /// `A[1, d, d]·x[·, d, inner]`. `1/√n` rides on the last factor applied.
    fn hadamard_tensor(&self, x2: Tensor<2>, split_p_above: usize) -> Tensor<2> {
        let Kind::Hadamard { k, hk, p, signs } = &self.kind else {
            unreachable!("called for Hadamard rotations only")
        };
        let (k, p, n) = (*k, *p, self.n);
        let [rows, _] = x2.dims();
        let device = x2.device();
        let dtype = x2.dtype();
        let constant = |values: Vec<f32>, shape: [usize; 2]| -> Tensor<2> {
            Tensor::<2>::from_data(TensorData::new(values, shape), (&device, dtype))
        };
        let mut y = match signs {
            Some(s) => x2 * constant(s.to_vec(), [1, n]),
            None => x2,
        };
        let p1 = if p > split_p_above {
            1usize << (p.trailing_zeros() / 2)
        } else {
            1
        };
        // Axes outermost first, with their ±1 matrices (row-major d × d) as f32.
        let sylvester_f32 =
            |d: usize| -> Vec<f32> { sylvester(d).into_iter().map(f32::from).collect() };
        let axes: Vec<(usize, Vec<f32>)> = [
            (k, hk.iter().map(|&v| f32::from(v)).collect()),
            (p1, sylvester_f32(p1)),
            (p / p1, sylvester_f32(p / p1)),
        ]
        .into_iter()
        .filter(|(d, _)| *d > 1)
        .collect();
        let scale = (1.0 / (n as f64).sqrt()) as f32;
        if axes.is_empty() {
            return y.mul_scalar(scale); // n = 1: M = [s₀]
        }
        let mut inner = 1;
        for (idx, (d, mut a)) in axes.into_iter().enumerate().rev() {
            if idx == 0 {
                a.iter_mut().for_each(|v| *v *= scale);
            }
            let outer = rows * n / (d * inner);
            y = if inner == 1 {
                // y_row ← y_row·Aᵀ (A is K × K here only when P = 1; Sylvester is symmetric).
                let mut at = vec![0f32; d * d];
                for i in 0..d {
                    for j in 0..d {
                        at[j * d + i] = a[i * d + j];
                    }
                }
                y.reshape([outer, d]).matmul(constant(at, [d, d]))
            } else {
                let a3: Tensor<3> = constant(a, [d, d]).reshape([1, d, d]);
                let y3: Tensor<3> = y.reshape([outer, d, inner]);
                a3.matmul(y3).reshape([outer, d * inner])
            };
            inner *= d;
        }
        y.reshape([rows, n])
    }
}

/// One row of the Hadamard map: signs, FWHT of each of the K segments of length P, then
/// `H_K/√n` over the segment index as one `K × K · K × P` f32 GEMM (`hk_scaled` row-major);
/// `tmp` is `n` long scratch.
fn hadamard_row(
    row: &mut [f32],
    tmp: &mut [f32],
    k: usize,
    p: usize,
    hk_scaled: &[f32],
    signs: Option<&[f32]>,
    scale: f32,
) {
    if let Some(s) = signs {
        for (v, s) in row.iter_mut().zip(s) {
            *v *= s;
        }
    }
    for seg in row.chunks_exact_mut(p) {
        fwht(seg);
    }
    if k == 1 {
        row.iter_mut().for_each(|v| *v *= scale);
        return;
    }
    matmul(
        ViewMut::rows(tmp, k, p),
        false,
        0.0,
        View::rows(hk_scaled, k, k),
        View::rows(row, k, p),
        1.0,
    );
    row.copy_from_slice(tmp);
}

/// splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed, seedable stream; enough for
/// signs and Gaussian draws, and stable across platforms and versions of any dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1), 53 bits.
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// `len` standard normal draws (Box–Muller, both outputs used).
fn gaussian_f64(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let (u, v) = (rng.uniform(), rng.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let t = std::f64::consts::TAU * v;
        out.push(r * t.cos());
        out.push(r * t.sin());
    }
    out.truncate(len);
    out
}

/// Row-major `Q` of the Householder QR of a seeded Gaussian `n × n` matrix `A = Q·R`, with
/// column `j` of `Q` multiplied by `sign(R_jj)` (so `R` has a positive diagonal and `Q` is
/// Haar-distributed). Works column-major so every reflector update is a contiguous dot and
/// axpy per column, columns in parallel.
fn random_orthogonal_matrix(n: usize, seed: u64) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    // Column-major: column j is a[j·n .. (j+1)·n]. Entries are i.i.d., so the order in which
    // they are drawn does not matter for the distribution, only for reproducibility.
    let mut a = gaussian_f64(n * n, seed);
    // Unit Householder vectors v_k (rows k..n), H_k = I − 2·v_k·v_kᵀ, and sign(R_kk).
    let mut reflectors: Vec<Vec<f64>> = Vec::with_capacity(n);
    let mut r_sign = vec![1f64; n];
    for kk in 0..n {
        let (head, tail) = a.split_at_mut((kk + 1) * n);
        let x = &head[kk * n + kk..(kk + 1) * n];
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            reflectors.push(Vec::new()); // nothing to annihilate: H_k = I, R_kk = 0
            continue;
        }
        let s = if x[0] >= 0.0 { 1.0 } else { -1.0 };
        // v = x + s·‖x‖·e₀ maps x to −s·‖x‖·e₀, so R_kk = −s·‖x‖.
        let mut v = x.to_vec();
        v[0] += s * norm;
        let vn = v.iter().map(|t| t * t).sum::<f64>().sqrt();
        v.iter_mut().for_each(|t| *t /= vn);
        r_sign[kk] = -s;
        tail.par_chunks_mut(n)
            .for_each(|col| reflect(&mut col[kk..], &v));
        reflectors.push(v);
    }
    // Q = H_0·H_1·…·H_{n−1}·I, accumulated from the right onto the identity's columns.
    let mut q = vec![0f64; n * n];
    q.par_chunks_mut(n).enumerate().for_each(|(j, col)| {
        col[j] = 1.0;
        for (kk, v) in reflectors.iter().enumerate().rev() {
            if !v.is_empty() {
                reflect(&mut col[kk..], v);
            }
        }
    });
    // Row-major output with the sign fix on Q's columns.
    let mut m = vec![0f64; n * n];
    m.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, out) in row.iter_mut().enumerate() {
            *out = q[j * n + i] * r_sign[j];
        }
    });
    m
}

/// `c ← (I − 2·v·vᵀ)·c` for a unit `v` of the same length.
fn reflect(c: &mut [f64], v: &[f64]) {
    let d = 2.0 * c.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
    c.iter_mut().zip(v).for_each(|(a, b)| *a -= d * b);
}

#[cfg(test)]
mod tests;
