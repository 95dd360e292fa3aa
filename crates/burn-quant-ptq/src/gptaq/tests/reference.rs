//! An independent port of the GPTAQ reference code (the authors' `GPTAQ.fasterquant`, Li et
//! al., ICML 2025), written the way the Python reads: the weight as one column per input
//! channel, its own Cholesky, the reference's lazy blocks, and no shared code with
//! `sequential.rs` or `quantizer.rs`. Its quantizer is the core's public host functions
//! (`compute_params` for the reference's `find_params`, `quantize_codes` and
//! `dequantize_codes` for `quantize`): the algorithm is what is under test, not the grid.
//!
//! Precision follows ours where it decides a rounding: the factor `U` and the asymmetry matrix
//! `P` in f64, rounded to f32 for the sweep (the reference computes them in f32 on the GPU;
//! ours in f64, DESIGN §5), the sweep in f32 as in the reference, the lazy block products
//! accumulated in f64 and rounded once (a GEMM's f32 summation order is not a property of the
//! algorithm). One deliberate deviation from the Python, the same as `gptaq.rs`: per-channel
//! parameters are found after dead inputs are zeroed (the reference finds them before).

use burn_quant_core::host::{self, HostParams};
use burn_quant_core::{Granularity, QuantSpec};

/// The arguments of `fasterquant`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reference {
    pub blocksize: usize,
    pub percdamp: f64,
    pub alpha: f64,
    pub actorder: bool,
    pub static_groups: bool,
}

/// The reference's `Quantizer`, reduced to what `fasterquant` uses.
#[derive(Clone)]
struct ColumnQuantizer {
    spec: QuantSpec,
    m: usize,
    params: Option<HostParams>,
}

impl ColumnQuantizer {
    /// `find_params(W[:, cols])`: the parameters of these columns (input channels) of the
    /// reference's `[out, in]` weight, i.e. these rows of the Burn `[in, out]` weight.
    fn find_params(&mut self, cols: &[Vec<f32>]) {
        let data: Vec<f32> = cols.iter().flatten().copied().collect();
        self.params = Some(
            host::compute_params(&data, &[cols.len(), self.m], &self.spec)
                .expect("finite test weights"),
        );
    }

    /// `quantize(w)` of one column: its codes and dequantized values.
    fn quantize(&self, w: &[f32]) -> (Vec<i32>, Vec<f32>) {
        let layout = self.spec.check_shape(&[1, self.m]).expect("one column");
        let p = self.params.as_ref().expect("find_params before quantize");
        let codes = host::quantize_codes(w, &layout, &self.spec, p);
        let q = host::dequantize_codes(&codes, &layout, &self.spec.format, p);
        (codes, q)
    }
}

/// Lower Cholesky factor of the SPD `a` (n × n, row-major).
fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0f64; n * n];
    for j in 0..n {
        let d = a[j * n + j] - (0..j).map(|k| l[j * n + k] * l[j * n + k]).sum::<f64>();
        assert!(d > 0.0, "not positive definite at {j}");
        let djj = d.sqrt();
        l[j * n + j] = djj;
        for i in j + 1..n {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            l[i * n + j] = (a[i * n + j] - s) / djj;
        }
    }
    l
}

/// `torch.cholesky_inverse(L)`: `(L·Lᵀ)⁻¹ = L⁻ᵀ·L⁻¹`.
fn cholesky_inverse(l: &[f64], n: usize) -> Vec<f64> {
    // L⁻¹ by forward substitution, column by column.
    let mut li = vec![0f64; n * n];
    for c in 0..n {
        for i in c..n {
            let rhs = if i == c { 1.0 } else { 0.0 };
            let s: f64 = (c..i).map(|k| l[i * n + k] * li[k * n + c]).sum();
            li[i * n + c] = (rhs - s) / l[i * n + i];
        }
    }
    let mut inv = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            inv[i * n + j] = (i.max(j)..n).map(|k| li[k * n + i] * li[k * n + j]).sum();
        }
    }
    inv
}

/// `fasterquant` on the Burn-layout weight `w` (`[n, m]`, row j = the reference's column j)
/// with the statistics `h` = mean `X̃ᵀX̃` and `g` = mean `X̃ᵀX` (what `LayerStats` holds; the
/// reference's `dXXT` is `(X − X̃)ᵀX̃ = gᵀ − h`). Returns the codes and the dequantized
/// weight, `[n, m]`, in the original order.
pub(super) fn fasterquant(
    w: &[f32],
    [n, m]: [usize; 2],
    h: &[f64],
    g: &[f64],
    spec: &QuantSpec,
    cfg: Reference,
) -> (Vec<i32>, Vec<f32>) {
    let mut cols: Vec<Vec<f32>> = (0..n).map(|j| w[j * m..(j + 1) * m].to_vec()).collect();
    let mut hm = h.to_vec();
    let mut dxxt: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            g[j * n + i] - h[i * n + j]
        })
        .collect();
    let groupsize = match spec.granularity {
        Granularity::PerGroup { axis: 0, size } => Some(size),
        _ => None,
    };
    let mut quantizer = ColumnQuantizer {
        spec: *spec,
        m,
        params: None,
    };

    // dead = diag(H) == 0; H[dead, dead] = 1; W[:, dead] = 0; dXXT[:, dead] = 0
    for j in 0..n {
        if hm[j * n + j] == 0.0 {
            hm[j * n + j] = 1.0;
            cols[j].fill(0.0);
            for i in 0..n {
                dxxt[i * n + j] = 0.0;
            }
        }
    }
    // `if not self.quantizer.ready(): self.quantizer.find_params(W)` (see the module doc).
    if groupsize.is_none() {
        quantizer.find_params(&cols);
    }
    let mut groups = Vec::new();
    if let (true, Some(gs)) = (cfg.static_groups, groupsize) {
        for i in (0..n).step_by(gs) {
            let mut q = quantizer.clone();
            q.find_params(&cols[i..(i + gs).min(n)]);
            groups.push(q);
        }
    }
    let perm: Vec<usize> = if cfg.actorder {
        let mut p: Vec<usize> = (0..n).collect();
        p.sort_by(|&a, &b| hm[b * n + b].total_cmp(&hm[a * n + a]));
        cols = p.iter().map(|&j| cols[j].clone()).collect();
        let permute =
            |a: &[f64]| -> Vec<f64> { (0..n * n).map(|k| a[p[k / n] * n + p[k % n]]).collect() };
        hm = permute(&hm);
        dxxt = permute(&dxxt);
        p
    } else {
        (0..n).collect()
    };

    // damp = percdamp · mean(diag H); Hinv = chol(cholesky_inverse(chol(H + damp·I)), upper)
    let damp = cfg.percdamp * (0..n).map(|j| hm[j * n + j]).sum::<f64>() / n as f64;
    for j in 0..n {
        hm[j * n + j] += damp;
    }
    let inv = cholesky_inverse(&cholesky(&hm, n), n);
    let l2 = cholesky(&inv, n);
    let hinv: Vec<f64> = (0..n * n).map(|k| l2[(k % n) * n + k / n]).collect();
    // P = α · triu(dXXT · Hinvᵀ, 1) · Hinv
    let mut a = vec![0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            a[i * n + j] = (0..n).map(|k| dxxt[i * n + k] * hinv[j * n + k]).sum();
        }
    }
    let mut p = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            p[i * n + j] = cfg.alpha * (0..n).map(|k| a[i * n + k] * hinv[k * n + j]).sum::<f64>();
        }
    }
    let hinv: Vec<f32> = hinv.iter().map(|&v| v as f32).collect();
    let p: Vec<f32> = p.iter().map(|&v| v as f32).collect();

    let mut codes = vec![Vec::new(); n];
    let mut qs = vec![Vec::new(); n];
    for i1 in (0..n).step_by(cfg.blocksize) {
        let i2 = (i1 + cfg.blocksize).min(n);
        let count = i2 - i1;
        let mut w1: Vec<Vec<f32>> = cols[i1..i2].to_vec();
        let mut err1 = vec![vec![0f32; m]; count];
        for i in 0..count {
            let j = i1 + i;
            let wi = w1[i].clone();
            let d = hinv[j * n + j];
            if let Some(gs) = groupsize {
                if !cfg.static_groups {
                    if j % gs == 0 {
                        // From W, not W1: the block's columns before this block's feedback.
                        quantizer.find_params(&cols[j..(j + gs).min(n)]);
                    }
                } else {
                    let idx = if cfg.actorder { perm[j] } else { j };
                    quantizer = groups[idx / gs].clone();
                }
            }
            let (c, q) = quantizer.quantize(&wi);
            let e: Vec<f32> = wi.iter().zip(&q).map(|(a, b)| (a - b) / d).collect();
            // W1[:, i:] -= err1 ⊗ Hinv1[i, i:] − w ⊗ P1[i, i:]
            for (k, col) in w1.iter_mut().enumerate().skip(i) {
                let (hu, pp) = (hinv[j * n + i1 + k], p[j * n + i1 + k]);
                for r in 0..m {
                    col[r] -= e[r] * hu - wi[r] * pp;
                }
            }
            err1[i] = e;
            codes[j] = c;
            qs[j] = q;
        }
        // W[:, i2:] -= Err1 · Hinv[i1:i2, i2:] − W1 · P[i1:i2, i2:]   (W1 as the block left it)
        for (t, col) in cols.iter_mut().enumerate().skip(i2) {
            for r in 0..m {
                let acc: f64 = (0..count)
                    .map(|k| {
                        err1[k][r] as f64 * hinv[(i1 + k) * n + t] as f64
                            - w1[k][r] as f64 * p[(i1 + k) * n + t] as f64
                    })
                    .sum();
                col[r] -= acc as f32;
            }
        }
    }

    // Q = Q[:, invperm]
    let mut out_codes = vec![0i32; n * m];
    let mut out_q = vec![0f32; n * m];
    for (j, &orig) in perm.iter().enumerate() {
        out_codes[orig * m..(orig + 1) * m].copy_from_slice(&codes[j]);
        out_q[orig * m..(orig + 1) * m].copy_from_slice(&qs[j]);
    }
    (out_codes, out_q)
}
