//! Dense linear algebra on host buffers: a safe strided GEMM over the `gemm` crate, blocked
//! Cholesky and triangular inversion in f64, the upper Cholesky factor of an inverse (what
//! GPTQ-family algorithms iterate with), damping with escalation, and power iteration.
//!
//! Matrices are row-major slices; a [`View`] adds an offset and strides so that transposes and
//! sub-blocks cost nothing.

use gemm::Parallelism;
use rayon::prelude::*;

/// The element types the GEMM wrapper accepts.
pub trait Real: Copy + Send + Sync + 'static + std::ops::Mul<Output = Self> {
    /// Additive identity.
    const ZERO: Self;
}
impl Real for f32 {
    const ZERO: Self = 0.0;
}
impl Real for f64 {
    const ZERO: Self = 0.0;
}

/// A read-only strided matrix view: element (i, j) lives at `offset + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a, T> {
    data: &'a [T],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A mutable strided matrix view (see [`View`]).
#[derive(Debug)]
pub struct ViewMut<'a, T> {
    data: &'a mut [T],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

fn in_bounds(len: usize, offset: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || offset + (rows - 1) * rs + (cols - 1) * cs < len
}

impl<'a, T> View<'a, T> {
    /// A row-major `rows × cols` matrix occupying `data` from its start.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, 0, rows, cols, cols, 1)
    }
    /// A general strided view.
    ///
    /// # Panics
    /// If the view reaches past the end of `data` (a programming error inside this crate).
    pub fn strided(
        data: &'a [T],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Self {
        assert!(
            in_bounds(data.len(), offset, rows, cols, rs, cs),
            "view {rows}x{cols} at {offset} (strides {rs}, {cs}) exceeds a buffer of {}",
            data.len()
        );
        Self {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }
    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// The sub-block of rows `r0..r0+rows` and columns `c0..c0+cols`.
    pub fn block(self, r0: usize, c0: usize, rows: usize, cols: usize) -> Self {
        assert!(r0 + rows <= self.rows && c0 + cols <= self.cols);
        Self {
            offset: self.offset + r0 * self.rs + c0 * self.cs,
            rows,
            cols,
            ..self
        }
    }
}

impl<'a, T> ViewMut<'a, T> {
    /// A row-major `rows × cols` matrix occupying `data` from its start.
    pub fn rows(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, 0, rows, cols, cols, 1)
    }
    /// A general strided view.
    ///
    /// # Panics
    /// If the view reaches past the end of `data` (a programming error inside this crate).
    pub fn strided(
        data: &'a mut [T],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Self {
        assert!(
            in_bounds(data.len(), offset, rows, cols, rs, cs),
            "view {rows}x{cols} at {offset} (strides {rs}, {cs}) exceeds a buffer of {}",
            data.len()
        );
        // Distinct (i, j) must address distinct elements, or the GEMM would race with itself.
        assert!(
            rows <= 1 || cols <= 1 || (rs >= cols * cs.max(1)) || (cs >= rows * rs.max(1)),
            "a mutable view must not overlap itself"
        );
        Self {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }
}

/// `dst ← alpha·dst + beta·lhs·rhs` (or `dst ← beta·lhs·rhs` when `read_dst` is false), on
/// all threads of the current rayon pool (the `gemm` crate stays serial below its own size
/// threshold).
///
/// # Panics
/// On inconsistent shapes (a programming error inside this crate).
pub fn matmul<T: Real>(
    dst: ViewMut<'_, T>,
    read_dst: bool,
    alpha: T,
    lhs: View<'_, T>,
    rhs: View<'_, T>,
    beta: T,
) {
    assert_eq!(lhs.cols, rhs.rows, "inner dimensions");
    assert_eq!((dst.rows, dst.cols), (lhs.rows, rhs.cols), "output shape");
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: nothing to add; a fresh destination is zero.
        for i in 0..m {
            for j in 0..n {
                let d = &mut dst.data[dst.offset + i * dst.rs + j * dst.cs];
                *d = if read_dst { alpha * *d } else { T::ZERO };
            }
        }
        return;
    }
    // SAFETY: every view was bounds-checked when built (the largest index of each is inside
    // its slice), `dst` is a unique borrow that does not overlap itself (checked in
    // `ViewMut::strided`) and cannot alias `lhs`/`rhs` (shared borrows); the strides fit in
    // isize because they index slices; `T` is f32 or f64, which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().add(dst.offset),
            dst.cs as isize,
            dst.rs as isize,
            read_dst,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
}

/// Block size of the factorizations: panels of 64 keep the unblocked parts in L1/L2 while the
/// GEMM updates carry almost all the flops.
const NB: usize = 64;

/// In-place lower Cholesky factor of the symmetric `n × n` matrix `a` (only its lower triangle
/// is read); the strict upper triangle is zeroed. Returns the index of the first pivot that is
/// not positive and finite, on failure.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n);
    // A pivot this small relative to the largest diagonal entry means the matrix is singular
    // to working precision: "succeeding" would give a factor with entries ~1/√ε.
    let max_diag = (0..n).map(|i| a[i * n + i].abs()).fold(0f64, f64::max);
    let tol = 16.0 * n as f64 * f64::EPSILON * max_diag;
    let mut panel = Vec::new();
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        let b = k1 - k0;
        // 1. The diagonal block (already updated by every earlier panel).
        for j in k0..k1 {
            let rj = j * n;
            let d = a[rj + j] - a[rj + k0..rj + j].iter().map(|v| v * v).sum::<f64>();
            if !(d > tol && d.is_finite()) {
                return Err(j);
            }
            let l = d.sqrt();
            a[rj + j] = l;
            for i in j + 1..k1 {
                let ri = i * n;
                let s: f64 = (k0..j).map(|p| a[ri + p] * a[rj + p]).sum();
                a[ri + j] = (a[ri + j] - s) / l;
            }
        }
        if k1 == n {
            break;
        }
        // 2. The panel below it: L21 = A21 · L11⁻ᵀ, one independent forward substitution per row.
        let (top, bottom) = a.split_at_mut(k1 * n);
        bottom.par_chunks_mut(n).for_each(|row| {
            for j in k0..k1 {
                let rj = j * n;
                let s: f64 = (k0..j).map(|p| row[p] * top[rj + p]).sum();
                row[j] = (row[j] - s) / top[rj + j];
            }
        });
        // 3. Trailing update A22 −= L21·L21ᵀ, lower part only, in strips of NB rows.
        let rows = n - k1;
        panel.clear();
        panel.extend((k1..n).flat_map(|i| a[i * n + k0..i * n + k1].iter().copied()));
        for r0 in (0..rows).step_by(NB) {
            let r1 = (r0 + NB).min(rows);
            let p = View::rows(&panel, rows, b);
            let dst = ViewMut::strided(a, (k1 + r0) * n + k1, r1 - r0, r1, n, 1);
            matmul(
                dst,
                true,
                1.0,
                p.block(r0, 0, r1 - r0, b),
                p.block(0, 0, r1, b).t(),
                -1.0,
            );
        }
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

/// The inverse of the lower-triangular `n × n` matrix `l` (non-zero diagonal), lower triangular.
pub fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(l.len(), n * n);
    let mut x = vec![0f64; n * n];
    let mut xii = Vec::new();
    let mut t = Vec::new();
    for i0 in (0..n).step_by(NB) {
        let i1 = (i0 + NB).min(n);
        let b = i1 - i0;
        // The diagonal block's inverse by forward substitution, column by column.
        xii.clear();
        xii.resize(b * b, 0.0);
        for j in 0..b {
            xii[j * b + j] = 1.0 / l[(i0 + j) * n + i0 + j];
            for i in j + 1..b {
                let li = (i0 + i) * n + i0;
                let s: f64 = (j..i).map(|k| l[li + k] * xii[k * b + j]).sum();
                xii[i * b + j] = -s / l[li + i];
            }
        }
        for i in 0..b {
            x[(i0 + i) * n + i0..(i0 + i) * n + i0 + b].copy_from_slice(&xii[i * b..(i + 1) * b]);
        }
        if i0 == 0 {
            continue;
        }
        // X[I, :i0] = −X_II · (L[I, :i0] · X[:i0, :i0]); X[:i0, :i0] is lower triangular,
        // so block column J of the product only needs rows J.. of it (half the flops).
        t.clear();
        t.resize(b * i0, 0.0);
        for j0 in (0..i0).step_by(NB) {
            let jb = NB.min(i0 - j0);
            matmul(
                ViewMut::strided(&mut t, j0, b, jb, i0, 1),
                false,
                0.0,
                View::strided(l, i0 * n + j0, b, i0 - j0, n, 1),
                View::rows(&x, i0, n).block(j0, j0, i0 - j0, jb),
                1.0,
            );
        }
        matmul(
            ViewMut::strided(&mut x, i0 * n, b, i0, n, 1),
            false,
            0.0,
            View::rows(&xii, b, b),
            View::rows(&t, b, i0),
            -1.0,
        );
    }
    x
}

/// The upper-triangular U with `UᵀU = A⁻¹` for a symmetric positive definite `A`, or `None`
/// when `A` is not numerically positive definite (or U is not finite).
///
/// With J the reversal permutation and `JAJ = LLᵀ`, `A = (JLJ)(JLJ)ᵀ`, so `A⁻¹ = UᵀU` with
/// `U = (JLJ)⁻¹ = J·L⁻¹·J`: one Cholesky and one triangular inverse, no explicit `A⁻¹`.
pub fn upper_cholesky_of_inverse(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut r: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            a[(n - 1 - i) * n + (n - 1 - j)]
        })
        .collect();
    cholesky_lower(&mut r, n).ok()?;
    let x = lower_inverse(&r, n);
    let u: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            x[(n - 1 - i) * n + (n - 1 - j)]
        })
        .collect();
    let ok = u.iter().all(|v| v.is_finite()) && (0..n).all(|i| u[i * n + i] > 0.0);
    ok.then_some(u)
}

/// A damped inverse factor: `U` with `UᵀU = (H + λI)⁻¹`.
#[derive(Debug, Clone)]
pub struct DampedFactor {
    /// Upper-triangular factor, row-major n × n.
    pub u: Vec<f64>,
    /// The damping λ that was finally added to the diagonal.
    pub lambda: f64,
    /// How many times λ had to grow (×10 each) before the factorization succeeded.
    pub retries: u32,
}

/// How many ×10 escalations of the damping are tried before giving up.
pub const MAX_DAMPING_RETRIES: u32 = 8;

/// Factors `(H + λI)⁻¹`, multiplying λ by 10 after each failure (at most
/// [`MAX_DAMPING_RETRIES`] times). `lambda0` must be positive; `floor` replaces it when it is
/// not (e.g. a zero matrix).
pub fn damped_inverse_factor(
    h: &[f64],
    n: usize,
    lambda0: f64,
    floor: f64,
) -> Option<DampedFactor> {
    let mut lambda = if lambda0 > 0.0 && lambda0.is_finite() {
        lambda0
    } else {
        floor
    };
    let mut hd = h.to_vec();
    for retries in 0..=MAX_DAMPING_RETRIES {
        hd.copy_from_slice(h);
        for i in 0..n {
            hd[i * n + i] += lambda;
        }
        if let Some(u) = upper_cholesky_of_inverse(&hd, n) {
            return Some(DampedFactor { u, lambda, retries });
        }
        lambda *= 10.0;
    }
    None
}

/// Largest eigenvalue of the symmetric positive semi-definite `h` by `iters` steps of power
/// iteration from the all-ones vector (non-negative, so it is not orthogonal to the Perron
/// vector of a Gram matrix of non-negative data); returns the Rayleigh quotient.
pub fn lambda_max(h: &[f64], n: usize, iters: usize) -> f64 {
    let mut v = vec![1.0 / (n as f64).sqrt(); n];
    let mut w = vec![0f64; n];
    let matvec = |v: &[f64], w: &mut [f64]| {
        w.par_iter_mut().enumerate().for_each(|(i, wi)| {
            *wi = h[i * n..(i + 1) * n]
                .iter()
                .zip(v)
                .map(|(a, b)| a * b)
                .sum()
        });
    };
    for _ in 0..iters {
        matvec(&v, &mut w);
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return 0.0;
        }
        v.iter_mut().zip(&w).for_each(|(a, b)| *a = b / norm);
    }
    matvec(&v, &mut w);
    v.iter().zip(&w).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic SPD matrix: BᵀB/k + εI with B pseudo-random.
    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let k = n + 3;
        let b = crate::testutil::gaussian(k * n, seed);
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..k)
                    .map(|r| b[r * n + i] as f64 * b[r * n + j] as f64)
                    .sum::<f64>()
                    / k as f64;
            }
            a[i * n + i] += 1e-3;
        }
        a
    }

    fn naive_matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn matmul_matches_the_triple_loop_with_transposes_and_blocks() {
        let (m, k, n) = (37, 19, 23);
        let a: Vec<f64> = crate::testutil::gaussian(m * k, 1)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let b: Vec<f64> = crate::testutil::gaussian(k * n, 2)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let want = naive_matmul(&a, &b, m, k, n);
        // dst = 2·dst − A·B with dst starting at 1.
        let mut c = vec![1f64; m * n];
        matmul(
            ViewMut::rows(&mut c, m, n),
            true,
            2.0,
            View::rows(&a, m, k),
            View::rows(&b, k, n),
            -1.0,
        );
        for (got, w) in c.iter().zip(&want) {
            assert!((got - (2.0 - w)).abs() < 1e-12);
        }
        // (Bᵀ Aᵀ)ᵀ through transposed views, written into a transposed destination.
        let mut ct = vec![0f64; n * m];
        let dst = ViewMut::strided(&mut ct, 0, m, n, 1, m);
        matmul(
            dst,
            false,
            0.0,
            View::rows(&a, m, k),
            View::rows(&b, k, n),
            1.0,
        );
        for i in 0..m {
            for j in 0..n {
                assert!((ct[j * m + i] - want[i * n + j]).abs() < 1e-12);
            }
        }
        // A sub-block.
        let mut s = vec![0f64; 4 * 5];
        matmul(
            ViewMut::rows(&mut s, 4, 5),
            false,
            0.0,
            View::rows(&a, m, k).block(3, 0, 4, k),
            View::rows(&b, k, n).block(0, 7, k, 5),
            1.0,
        );
        for i in 0..4 {
            for j in 0..5 {
                assert!((s[i * 5 + j] - want[(i + 3) * n + j + 7]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn cholesky_reconstructs_across_several_panels() {
        for n in [1, 5, 64, 65, 150] {
            let a = spd(n, n as u64);
            let mut l = a.clone();
            cholesky_lower(&mut l, n).unwrap();
            let mut lt = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    lt[j * n + i] = l[i * n + j];
                }
            }
            let llt = naive_matmul(&l, &lt, n, n, n);
            let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (x, y) in llt.iter().zip(&a) {
                assert!((x - y).abs() < 1e-10 * scale, "n = {n}");
            }
            assert!((0..n).all(|i| (i + 1..n).all(|j| l[i * n + j] == 0.0)));
        }
    }

    #[test]
    fn cholesky_reports_the_failing_pivot() {
        // [[1, 2], [2, 1]] has eigenvalues 3 and −1: the second pivot is 1 − 4 < 0.
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky_lower(&mut a, 2), Err(1));
        let mut z = vec![0.0; 9];
        assert_eq!(cholesky_lower(&mut z, 3), Err(0));
    }

    #[test]
    fn upper_factor_of_the_inverse_times_the_matrix_is_identity() {
        for n in [3, 64, 130] {
            let a = spd(n, 7 + n as u64);
            let u = upper_cholesky_of_inverse(&a, n).unwrap();
            assert!((0..n).all(|i| (0..i).all(|j| u[i * n + j] == 0.0)), "upper");
            // Uᵀ U A = I.
            let mut ut = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    ut[j * n + i] = u[i * n + j];
                }
            }
            let inv = naive_matmul(&ut, &u, n, n, n);
            let id = naive_matmul(&inv, &a, n, n, n);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (id[i * n + j] - want).abs() < 1e-8,
                        "n = {n} ({i}, {j}): {}",
                        id[i * n + j]
                    );
                }
            }
        }
    }

    #[test]
    fn damping_escalates_until_an_indefinite_matrix_factors() {
        // Eigenvalues 3 and −1: λ must exceed 1, so 0.01 → 0.1 → 1 fail and 10 succeeds.
        let a = vec![1.0, 2.0, 2.0, 1.0];
        let f = damped_inverse_factor(&a, 2, 0.01, 1e-8).unwrap();
        assert_eq!(f.retries, 3);
        assert!((f.lambda - 10.0).abs() < 1e-9);
        // A zero matrix starts from the floor.
        let f = damped_inverse_factor(&[0.0; 4], 2, 0.0, 1e-8).unwrap();
        assert_eq!((f.retries, f.lambda), (0, 1e-8));
    }

    #[test]
    fn power_iteration_finds_the_largest_eigenvalue() {
        // diag(1, 5, 2) rotated by nothing: λ_max = 5.
        let a = vec![1.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 2.0];
        assert!((lambda_max(&a, 3, 100) - 5.0).abs() < 1e-9);
        // A Gram matrix: compare with the Rayleigh quotient bound and trace.
        let a = spd(40, 3);
        let l = lambda_max(&a, 40, 200);
        let tr: f64 = (0..40).map(|i| a[i * 40 + i]).sum();
        assert!(l > 0.0 && l <= tr);
        // No vector beats it (Rayleigh quotient of a few random vectors).
        for s in 0..5 {
            let v: Vec<f64> = crate::testutil::gaussian(40, 100 + s)
                .iter()
                .map(|&x| x as f64)
                .collect();
            let av = naive_matmul(&a, &v, 40, 40, 1);
            let rq = v.iter().zip(&av).map(|(x, y)| x * y).sum::<f64>()
                / v.iter().map(|x| x * x).sum::<f64>();
            assert!(rq <= l * (1.0 + 1e-9));
        }
    }
}
