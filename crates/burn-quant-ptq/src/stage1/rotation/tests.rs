use super::*;
use crate::testutil::gaussian;
use burn::tensor::Device;

/// `max |M·Mᵀ − I|` via the f64 GEMM.
fn orthogonality_error(m: &[f64], n: usize) -> f64 {
    let mut g = vec![0f64; n * n];
    matmul(
        ViewMut::rows(&mut g, n, n),
        false,
        0.0,
        View::rows(m, n, n),
        View::rows(m, n, n).t(),
        1.0,
    );
    let mut err = 0f64;
    for i in 0..n {
        for j in 0..n {
            let want = if i == j { 1.0 } else { 0.0 };
            err = err.max((g[i * n + j] - want).abs());
        }
    }
    err
}

/// `M·x` for every row of `x` (`[rows, n]`), in f64.
fn reference_rows(m: &[f64], x: &[f32], n: usize) -> Vec<f64> {
    x.chunks(n)
        .flat_map(|row| {
            (0..n).map(move |i| {
                (0..n)
                    .map(|j| m[i * n + j] * f64::from(row[j]))
                    .sum::<f64>()
            })
        })
        .collect()
}

fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max)
        / scale
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("readable f32")
}

/// The three kinds for one length (the dense one only where asked, it costs `O(n³)`).
fn kinds(n: usize, dense: bool) -> Vec<(&'static str, Rotation)> {
    let mut v = vec![
        ("hadamard", Rotation::hadamard(n).unwrap()),
        ("randomized", Rotation::randomized_hadamard(n, 11).unwrap()),
    ];
    if dense {
        v.push(("orthogonal", Rotation::random_orthogonal(n, 11)));
    }
    v
}

#[test]
fn hadamard_rotations_are_orthogonal() {
    for n in [1, 2, 12, 20, 64, 96, 576, 960, 1536] {
        for (name, rot) in kinds(n, false) {
            let err = orthogonality_error(&rot.matrix(), n);
            assert!(err < 1e-6, "{name} n = {n}: |M·Mᵀ − I| = {err}");
        }
    }
}

#[test]
fn large_hadamard_rotations_preserve_inner_products() {
    // n² is too big for the explicit check: ⟨Mx, My⟩ = ⟨x, y⟩ on random pairs and on a few
    // basis vectors instead.
    for n in [5632, 11008, 14336] {
        let rot = Rotation::randomized_hadamard(n, 3).unwrap();
        let x = gaussian(4 * n, n as u64);
        let mut y = x.clone();
        rot.apply_rows(&mut y).unwrap();
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(u, v)| f64::from(*u) * f64::from(*v))
                .sum()
        };
        for i in 0..4 {
            for j in 0..4 {
                let (xi, xj) = (&x[i * n..(i + 1) * n], &x[j * n..(j + 1) * n]);
                let (yi, yj) = (&y[i * n..(i + 1) * n], &y[j * n..(j + 1) * n]);
                let want = dot(xi, xj);
                assert!((dot(yi, yj) - want).abs() < 1e-4 * n as f64, "n = {n}");
            }
        }
        let mut e = vec![0f32; 8 * n];
        for (r, j) in [0, 1, 7, n / 3, n / 2, n - 5, n - 2, n - 1]
            .iter()
            .enumerate()
        {
            e[r * n + j] = 1.0;
        }
        rot.apply_rows(&mut e).unwrap();
        for r in 0..8 {
            for s in 0..8 {
                let d = dot(&e[r * n..(r + 1) * n], &e[s * n..(s + 1) * n]);
                let want = if r == s { 1.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-5, "n = {n}: columns {r}, {s}: {d}");
            }
        }
    }
}

#[test]
fn random_orthogonal_is_orthogonal_and_the_qr_factor_with_positive_r() {
    for n in [1, 2, 64, 576] {
        let rot = Rotation::random_orthogonal(n, 5);
        let m = rot.matrix();
        let err = orthogonality_error(&m, n);
        assert!(err < 1e-10, "n = {n}: |M·Mᵀ − I| = {err}");
        if n > 64 {
            continue;
        }
        // R = Mᵀ·A must be upper triangular with a positive diagonal (the sign fix), where A
        // is the Gaussian matrix the QR factored (drawn column-major).
        let a = gaussian_f64(n * n, 5);
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n).map(|l| m[l * n + i] * a[j * n + l]).sum();
                if i > j {
                    assert!(r.abs() < 1e-10, "R[{i}, {j}] = {r}");
                } else if i == j {
                    assert!(r > 0.0, "R[{i}, {i}] = {r}");
                }
            }
        }
    }
    assert!(Rotation::random_orthogonal(0, 1).is_empty());
}

#[test]
fn deterministic_power_of_two_hadamard_is_normalized_sylvester() {
    for n in [1usize, 2, 4, 64, 256] {
        let rot = Rotation::hadamard(n).unwrap();
        assert_eq!(rot.seed_order(), Some(1));
        let m = rot.matrix();
        let h = sylvester(n);
        let s = 1.0 / (n as f64).sqrt();
        for (a, b) in m.iter().zip(&h) {
            assert_eq!(*a, f64::from(*b) * s);
        }
    }
}

#[test]
fn apply_rows_is_the_matrix_product() {
    let cases: Vec<(&str, Rotation)> = [12, 20, 96, 576, 1024]
        .into_iter()
        .flat_map(|n| kinds(n, n == 96))
        .chain([("orthogonal 64", Rotation::random_orthogonal(64, 2))])
        .collect();
    for (name, rot) in cases {
        let n = rot.len();
        let x = gaussian(3 * n, 17);
        let want = reference_rows(&rot.matrix(), &x, n);
        let mut y = x.clone();
        rot.apply_rows(&mut y).unwrap();
        let err = max_rel_err(&y, &want);
        assert!(err < 1e-5, "{name} n = {n}: relative error {err}");
    }
}

#[test]
fn apply_tensor_equals_apply_rows_on_rank_3() {
    // Plain flex takes the host path for Hadamard rotations; under autodiff the tensor ops run.
    for device in [Device::flex(), Device::flex().autodiff()] {
        let cases: Vec<(&str, Rotation)> = [1, 12, 96, 576, 1024]
            .into_iter()
            .flat_map(|n| kinds(n, n == 96 || n == 576))
            .collect();
        for (name, rot) in cases {
            let n = rot.len();
            let x = gaussian(2 * 5 * n, 23);
            let t = Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 5, n]), &device);
            let y = rot.apply_tensor(t).unwrap();
            assert_eq!(y.dims(), [2, 5, n]);
            let mut want = x;
            rot.apply_rows(&mut want).unwrap();
            let want: Vec<f64> = want.into_iter().map(f64::from).collect();
            let err = max_rel_err(&host(y), &want);
            assert!(err < 1e-5, "{name} n = {n}: relative error {err}");
        }
    }
}

#[test]
fn apply_tensor_gradient_is_the_transpose() {
    // y = x·Mᵀ, L = Σ y∘g  ⇒  ∂L/∂x = g·M (row form), i.e. Mᵀ·g per row.
    let device = Device::flex().autodiff();
    for rot in [
        Rotation::randomized_hadamard(96, 4).unwrap(),
        Rotation::random_orthogonal(24, 4),
    ] {
        let n = rot.len();
        let x = Tensor::<2>::from_data(TensorData::new(gaussian(3 * n, 1), [3, n]), &device)
            .require_grad();
        let gv = gaussian(3 * n, 2);
        let g = Tensor::<2>::from_data(TensorData::new(gv.clone(), [3, n]), &device);
        let y = rot.apply_tensor(x.clone()).unwrap();
        let grads = (y * g).sum().backward();
        let dx = host(x.grad(&grads).map(Tensor::from_inner).expect("x grad"));
        let m = rot.matrix();
        let mut mt = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                mt[j * n + i] = m[i * n + j];
            }
        }
        let want = reference_rows(&mt, &gv, n);
        let err = max_rel_err(&dx, &want);
        assert!(err < 1e-5, "n = {n}: relative error {err}");
    }
}

#[test]
fn fused_weight_reproduces_the_layer() {
    // X [t, n] rotated online, W [n, m] (Burn layout) fused along its input axis.
    let (t, m) = (7, 5);
    let cases: Vec<(&str, Rotation)> = [12, 96, 576]
        .into_iter()
        .flat_map(|n| kinds(n, n != 576))
        .collect();
    for (name, rot) in cases {
        let n = rot.len();
        let x = gaussian(t * n, 31);
        let w = gaussian(n * m, 32);
        let product = |x: &[f32], w: &[f32]| -> Vec<f64> {
            (0..t)
                .flat_map(|r| {
                    (0..m).map(move |c| {
                        (0..n)
                            .map(|j| f64::from(x[r * n + j]) * f64::from(w[j * m + c]))
                            .sum::<f64>()
                    })
                })
                .collect()
        };
        let want = product(&x, &w);
        let (mut xr, mut wr) = (x.clone(), w.clone());
        rot.apply_rows(&mut xr).unwrap();
        rot.apply_columns(&mut wr, n, m).unwrap();
        let got: Vec<f32> = product(&xr, &wr).into_iter().map(|v| v as f32).collect();
        let err = max_rel_err(&got, &want);
        assert!(err < 1e-4, "{name} n = {n}: relative error {err}");

        // apply_columns is W ← M·W exactly.
        let mat = rot.matrix();
        let mut cols_want = vec![0f64; n * m];
        for i in 0..n {
            for c in 0..m {
                cols_want[i * m + c] = (0..n)
                    .map(|j| mat[i * n + j] * f64::from(w[j * m + c]))
                    .sum();
            }
        }
        assert!(max_rel_err(&wr, &cols_want) < 1e-5, "{name} n = {n}");
    }
}

#[test]
fn paley_one_rotation_is_not_symmetric_and_the_transpose_breaks_fusion() {
    // 96 = 12 ⊗ 8 with the skew Paley-I seed of order 12.
    let rot = Rotation::hadamard(96).unwrap();
    assert_eq!(rot.seed_order(), Some(12));
    let n = 96;
    let m = rot.matrix();
    let asym = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| (m[i * n + j] - m[j * n + i]).abs())
        .fold(0.0, f64::max);
    assert!(asym > 0.1, "a Paley-I based rotation must not be symmetric");
    // Fusing Mᵀ instead of M into the weight breaks the layer.
    let x = gaussian(n, 41);
    let w = gaussian(n, 42); // one output column
    let mut xr = x.clone();
    rot.apply_rows(&mut xr).unwrap();
    let want: f64 = x
        .iter()
        .zip(&w)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    let wrong: f64 = (0..n)
        .map(|i| {
            let wt: f64 = (0..n).map(|j| m[j * n + i] * f64::from(w[j])).sum(); // Mᵀ·w
            f64::from(xr[i]) * wt
        })
        .sum();
    assert!((wrong - want).abs() > 1e-2 * want.abs().max(1.0));
}

#[test]
fn norms_are_preserved() {
    for rot in [
        Rotation::hadamard(576).unwrap(),
        Rotation::randomized_hadamard(1536, 9).unwrap(),
        Rotation::random_orthogonal(100, 9),
    ] {
        let n = rot.len();
        let x = gaussian(n, 3);
        let mut y = x.clone();
        rot.apply_rows(&mut y).unwrap();
        let norm = |v: &[f32]| v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        assert!((norm(&y) - norm(&x)).abs() < 1e-5 * norm(&x), "n = {n}");
    }
}

#[test]
fn seeds_are_reproducible_and_distinct() {
    let bytes = |r: &Rotation| -> Vec<u64> { r.matrix().iter().map(|v| v.to_bits()).collect() };
    let a = Rotation::randomized_hadamard(576, 7).unwrap();
    let b = Rotation::randomized_hadamard(576, 7).unwrap();
    let c = Rotation::randomized_hadamard(576, 8).unwrap();
    assert_eq!(bytes(&a), bytes(&b));
    assert_ne!(bytes(&a), bytes(&c));
    assert_ne!(bytes(&a), bytes(&Rotation::hadamard(576).unwrap()));
    let a = Rotation::random_orthogonal(48, 7);
    let b = Rotation::random_orthogonal(48, 7);
    let c = Rotation::random_orthogonal(48, 8);
    assert_eq!(bytes(&a), bytes(&b));
    assert_ne!(bytes(&a), bytes(&c));
    // The host paths are deterministic too (same bits for the same input).
    let x = gaussian(4 * 576, 1);
    let (mut y1, mut y2) = (x.clone(), x);
    Rotation::new(RotationMode::Had, 576, 3)
        .unwrap()
        .apply_rows(&mut y1)
        .unwrap();
    Rotation::new(RotationMode::Had, 576, 3)
        .unwrap()
        .apply_rows(&mut y2)
        .unwrap();
    assert_eq!(y1, y2);
}

#[test]
fn unsupported_sizes_and_bad_inputs_are_errors() {
    for n in [0, 6, 7, 92, 156, 172] {
        let err = Rotation::hadamard(n).unwrap_err();
        assert!(
            matches!(&err, PtqError::InvalidConfig { field: "n", value, reason }
                if *value == n.to_string() && reason.contains("ort")),
            "{err}"
        );
        assert!(Rotation::randomized_hadamard(n, 1).is_err());
        assert!(Rotation::new(RotationMode::Had, n, 1).is_err());
    }
    assert!(Rotation::new(RotationMode::Ort, 0, 1).is_err());
    let ort = Rotation::new(RotationMode::Ort, 6, 1).unwrap();
    assert_eq!(
        (ort.len(), ort.mode(), ort.seed_order()),
        (6, RotationMode::Ort, None)
    );
    assert_eq!(
        Rotation::new(RotationMode::Had, 12, 1).unwrap().mode(),
        RotationMode::Had
    );

    let rot = Rotation::hadamard(12).unwrap();
    assert!(matches!(
        rot.apply_rows(&mut [0.0; 13]),
        Err(PtqError::ShapeMismatch { .. })
    ));
    rot.apply_rows(&mut []).unwrap();
    assert!(rot.apply_columns(&mut [0.0; 24], 8, 3).is_err());
    assert!(rot.apply_columns(&mut [0.0; 24], 12, 3).is_err());
    rot.apply_columns(&mut [0.0; 24], 12, 2).unwrap();
    let t = Tensor::<2>::from_data(TensorData::new(vec![0f32; 10], [2, 5]), &Device::flex());
    assert!(matches!(
        rot.apply_tensor(t),
        Err(PtqError::ShapeMismatch { .. })
    ));
    let empty = Rotation::random_orthogonal(0, 1);
    empty.apply_rows(&mut []).unwrap();
    assert!(empty.apply_rows(&mut [1.0]).is_err());
}

#[test]
fn rotation_mode_names() {
    assert_eq!(
        serde_json::to_string(&RotationMode::Had).unwrap(),
        "\"had\""
    );
    assert_eq!(
        serde_json::from_str::<RotationMode>("\"ort\"").unwrap(),
        RotationMode::Ort
    );
    assert_eq!("HAD".parse::<RotationMode>().unwrap(), RotationMode::Had);
    assert_eq!(RotationMode::Ort.to_string(), "ort");
    assert!("qr".parse::<RotationMode>().is_err());
    let dbg = format!("{:?}", Rotation::randomized_hadamard(576, 1).unwrap());
    assert!(
        dbg.contains("seed_order: 36") && dbg.contains("random_signs: true"),
        "{dbg}"
    );
}

/// The P factor as `log₂ P` butterfly stages (narrow / add / sub / cat), the alternative to
/// the `H_P` GEMM that `apply_tensor` uses.
fn p_factor_butterflies(y: Tensor<2>, rows: usize, p: usize) -> Tensor<2> {
    let mut y = y;
    let mut h = 1;
    while h < p {
        let y4: Tensor<4> = y.reshape([rows, p / (2 * h), 2, h]);
        let a = y4.clone().narrow(2, 0, 1);
        let b = y4.narrow(2, 1, 1);
        y = Tensor::cat(vec![a.clone() + b.clone(), a - b], 2).reshape([rows, p]);
        h *= 2;
    }
    y
}

/// How the test-only variants apply the P factor.
#[derive(Clone, Copy, Debug)]
enum PFactor {
    /// One `[rows·K, P]·H_P` GEMM.
    Gemm,
    /// `H_P = H_P₁ ⊗ H_P₂`, two GEMMs (what `apply_tensor` does above `SPLIT_P_ABOVE`).
    Split,
    /// `log₂ P` butterfly stages.
    Butterfly,
}

/// A Hadamard rotation's tensor map with the P factor and the K factor chosen; the K factor
/// either as the broadcast batched GEMM `H_K[1, K, K]·x[rows, K, P]` or (`transposed_k`) as
/// one `[rows·P, K]·H_Kᵀ` GEMM between two transposes.
fn hadamard_tensor_variant(
    rot: &Rotation,
    x: Tensor<2>,
    pf: PFactor,
    transposed_k: bool,
) -> Tensor<2> {
    if !transposed_k {
        match pf {
            PFactor::Gemm => return rot.hadamard_tensor(x, usize::MAX),
            PFactor::Split => return rot.hadamard_tensor(x, 0),
            PFactor::Butterfly => {}
        }
    }
    let Kind::Hadamard { k, hk, p, signs } = &rot.kind else {
        panic!("hadamard only")
    };
    let (k, p, n) = (*k, *p, rot.n);
    let [rows, _] = x.dims();
    let device = x.device();
    let scale = (1.0 / (n as f64).sqrt()) as f32;
    let mut y = match signs {
        Some(s) => x * Tensor::<2>::from_data(TensorData::new(s.to_vec(), [1, n]), &device),
        None => x,
    };
    y = y.reshape([rows * k, p]);
    y = match pf {
        PFactor::Butterfly => p_factor_butterflies(y, rows * k, p),
        PFactor::Gemm => {
            let hp: Vec<f32> = sylvester(p).into_iter().map(f32::from).collect();
            y.matmul(Tensor::from_data(TensorData::new(hp, [p, p]), &device))
        }
        PFactor::Split => {
            // Reuse the library path for the P factor alone via a deterministic K = 1 view.
            let plain = Rotation::hadamard(p).unwrap();
            plain.hadamard_tensor(y, 0).mul_scalar((p as f32).sqrt())
        }
    };
    let hkv: Vec<f32> = hk.iter().map(|&v| f32::from(v) * scale).collect();
    let hkt = Tensor::<2>::from_data(TensorData::new(hkv, [k, k]), &device);
    let y3: Tensor<3> = y.reshape([rows, k, p]);
    if transposed_k {
        let z: Tensor<2> = y3.swap_dims(1, 2).reshape([rows * p, k]);
        let z: Tensor<3> = z.matmul(hkt.transpose()).reshape([rows, p, k]);
        z.swap_dims(1, 2).reshape([rows, n])
    } else {
        let hkt: Tensor<3> = hkt.reshape([1, k, k]);
        hkt.matmul(y3).reshape([rows, n])
    }
}

#[test]
fn tensor_variants_agree() {
    let device = Device::flex();
    for rot in [
        Rotation::randomized_hadamard(96, 5).unwrap(),
        Rotation::randomized_hadamard(12 * 1024, 5).unwrap(),
        Rotation::hadamard(2048).unwrap(),
        Rotation::randomized_hadamard(11008, 5).unwrap(),
        Rotation::hadamard(576).unwrap(),
    ] {
        let n = rot.len();
        let x = Tensor::<2>::from_data(TensorData::new(gaussian(4 * n, 8), [4, n]), &device);
        let mut want = gaussian(4 * n, 8);
        rot.apply_rows(&mut want).unwrap();
        let want: Vec<f64> = want.into_iter().map(f64::from).collect();
        let got = host(rot.apply_tensor(x.clone()).unwrap());
        assert!(max_rel_err(&got, &want) < 1e-5, "n = {n}: apply_tensor");
        for pf in [PFactor::Gemm, PFactor::Split, PFactor::Butterfly] {
            for tk in [false, true] {
                let got = host(hadamard_tensor_variant(&rot, x.clone(), pf, tk));
                assert!(
                    max_rel_err(&got, &want) < 1e-5,
                    "n = {n}: {pf:?}, transposed K {tk}"
                );
            }
        }
    }
}

/// Timing of the `apply_tensor` variants on `flex` (release):
/// `cargo test --release -p burn-quant-ptq stage1::rotation::tests::time_tensor_variants -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_tensor_variants() {
    use std::time::Instant;
    let device = Device::flex();
    let sizes: Vec<usize> = std::env::var("ROT_SIZES")
        .ok()
        .map(|s| s.split(',').map(|v| v.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1536, 576, 5632, 4096, 11008]);
    for n in sizes {
        let rows = 8192;
        let rot = Rotation::randomized_hadamard(n, 1).unwrap();
        let x = Tensor::<2>::from_data(TensorData::new(gaussian(rows * n, 2), [rows, n]), &device);
        let time = |f: &dyn Fn() -> Vec<f32>| -> f64 {
            (0..3)
                .map(|_| {
                    let t0 = Instant::now();
                    let _ = f();
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        };
        let mut report = vec![];
        for pf in [PFactor::Gemm, PFactor::Split, PFactor::Butterfly] {
            for tk in [false, true] {
                let ms = time(&|| host(hadamard_tensor_variant(&rot, x.clone(), pf, tk)));
                let k = if tk { "transposed H_K" } else { "batched H_K" };
                report.push(format!("{pf:?} + {k}: {ms:.1} ms"));
            }
        }
        let ms = time(&|| host(rot.apply_tensor(x.clone()).unwrap()));
        report.push(format!("apply_tensor: {ms:.1} ms"));
        let base = gaussian(rows * n, 2);
        let ms = time(&|| {
            let mut h = base.clone();
            rot.apply_rows(&mut h).unwrap();
            h
        });
        report.push(format!("host apply_rows: {ms:.1} ms"));
        let k = rot.seed_order().unwrap();
        println!(
            "[{rows}, {n}] (K = {k}, P = {}):\n  {}",
            n / k,
            report.join("\n  ")
        );
    }
}
