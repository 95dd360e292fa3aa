//! Deterministic synthetic data for the unit tests: Gaussian samples, correlated
//! heavy-tailed activations, and a simulated "quantized path" input.

/// `len` N(0, 1) samples (xorshift64* + Box–Muller), fixed by `seed`.
pub fn gaussian(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut uni = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..len)
        .map(|_| {
            let (a, b) = (uni(), uni());
            ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
        })
        .collect()
}

/// `tokens × n` activations `X = Z·A·diag(c)`: Gaussian `Z`, a random mixing `A` (so features
/// correlate) and heavy-tailed per-channel scales `c` (a few outlier channels), the way LLM
/// activations look.
pub fn correlated(tokens: usize, n: usize, seed: u64) -> Vec<f32> {
    let z = gaussian(tokens * n, seed);
    let a = gaussian(n * n, seed + 1);
    let c: Vec<f32> = gaussian(n, seed + 2)
        .iter()
        .map(|g| (0.8 * g).exp() * if g.abs() > 2.0 { 8.0 } else { 1.0 })
        .collect();
    let mut x = vec![0f32; tokens * n];
    for t in 0..tokens {
        for j in 0..n {
            let mut s = 0f32;
            for k in 0..n {
                s += z[t * n + k] * a[k * n + j];
            }
            x[t * n + j] = s * c[j] / (n as f32).sqrt();
        }
    }
    x
}

/// `tokens × n` activations `X = Z·A` (Gaussian `Z` and `A`): the correlated inputs of the
/// GPTQ paper's oracle experiments.
pub fn mixed(tokens: usize, n: usize, seed: u64) -> Vec<f32> {
    let z = gaussian(tokens * n, seed);
    let a = gaussian(n * n, seed + 1);
    let mut x = vec![0f32; tokens * n];
    for t in 0..tokens {
        for j in 0..n {
            x[t * n + j] = (0..n).map(|k| z[t * n + k] * a[k * n + j]).sum();
        }
    }
    x
}

/// A simulated quantized-path input: `x` with a structured, correlated perturbation of
/// relative size `rel` (what an earlier quantized layer adds).
pub fn perturbed(x: &[f32], n: usize, rel: f32, seed: u64) -> Vec<f32> {
    let tokens = x.len() / n;
    let noise = correlated(tokens, n, seed);
    let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let nn = noise.iter().map(|v| v * v).sum::<f32>().sqrt();
    x.iter()
        .zip(&noise)
        .map(|(a, b)| a + rel * nx / nn * b)
        .collect()
}

/// `[n, m]` weights in Burn's layout, N(0, 1/n) with a few large entries.
pub fn weights(n: usize, m: usize, seed: u64) -> Vec<f32> {
    gaussian(n * m, seed)
        .iter()
        .enumerate()
        .map(|(i, g)| g / (n as f32).sqrt() * if i % 97 == 0 { 4.0 } else { 1.0 })
        .collect()
}

/// `‖X·W − X̃·Ŵ‖ / ‖X·W‖` from activations (f64), for `[tokens, n]` inputs and `[n, m]`
/// weights; `x_quant = x` gives the plain output error `‖X(W − Ŵ)‖ / ‖XW‖`.
pub fn output_error(
    x: &[f32],
    x_quant: &[f32],
    w: &[f32],
    w_hat: &[f32],
    n: usize,
    m: usize,
) -> f64 {
    let t = x.len() / n;
    let (mut num, mut den) = (0f64, 0f64);
    for r in 0..t {
        for c in 0..m {
            let (mut a, mut b) = (0f64, 0f64);
            for j in 0..n {
                a += x[r * n + j] as f64 * w[j * m + c] as f64;
                b += x_quant[r * n + j] as f64 * w_hat[j * m + c] as f64;
            }
            num += (a - b) * (a - b);
            den += a * a;
        }
    }
    (num / den).sqrt()
}

/// Statistics of one batch: paired (`H = X̃ᵀX̃`, `G = X̃ᵀX`) or quantized-input only.
pub fn stats(x: &[f32], x_quant: Option<&[f32]>, n: usize, paired: bool) -> crate::LayerStats {
    use crate::{CalibInputs, LayerStats};
    let kind = if paired {
        CalibInputs::FloatAndQuantized
    } else {
        CalibInputs::Quantized
    };
    let mut s = LayerStats::new(n, kind);
    s.observe_host(x, x_quant).expect("valid test batch");
    s
}

/// Float and quantized-path inputs of a layer behind a quantized producer: `X = Z·A·diag(c)`
/// and `X̃ = Z·Â·diag(c)`, where `Â` is `A` rounded to `bits` bits (symmetric, per column) —
/// the mismatch is correlated with `X`, as after a real quantized layer.
pub fn upstream(tokens: usize, n: usize, bits: u32, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let z = gaussian(tokens * n, seed);
    let a = gaussian(n * n, seed + 1);
    let c: Vec<f32> = gaussian(n, seed + 2)
        .iter()
        .map(|g| (0.8 * g).exp() * if g.abs() > 2.0 { 8.0 } else { 1.0 })
        .collect();
    let qmax = ((1u32 << (bits - 1)) - 1) as f32;
    let mut aq = a.clone();
    for j in 0..n {
        let amax = (0..n).map(|k| a[k * n + j].abs()).fold(0f32, f32::max);
        let s = amax / qmax;
        for k in 0..n {
            aq[k * n + j] = (a[k * n + j] / s).round_ties_even() * s;
        }
    }
    let mul = |a: &[f32]| -> Vec<f32> {
        let mut x = vec![0f32; tokens * n];
        for t in 0..tokens {
            for j in 0..n {
                x[t * n + j] = (0..n).map(|k| z[t * n + k] * a[k * n + j]).sum::<f32>() * c[j]
                    / (n as f32).sqrt();
            }
        }
        x
    };
    (mul(&a), mul(&aq))
}
