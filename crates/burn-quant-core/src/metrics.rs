//! Error metrics between a tensor and its quantized approximation.

/// Signal-to-quantization-noise ratio `10·log10(Σx² / Σ(x − x̂)²)` in dB (`inf` when exact).
pub fn sqnr_db(x: &[f32], approx: &[f32]) -> f64 {
    let (mut s, mut e) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(approx) {
        s += (a as f64).powi(2);
        e += ((a - b) as f64).powi(2);
    }
    if e == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (s / e).log10()
    }
}

/// Largest absolute difference.
pub fn max_abs_error(x: &[f32], approx: &[f32]) -> f32 {
    x.iter()
        .zip(approx)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Mean squared difference.
pub fn mse(x: &[f32], approx: &[f32]) -> f64 {
    let n = x.len().max(1) as f64;
    x.iter()
        .zip(approx)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() {
        assert_eq!(sqnr_db(&[1.0, 1.0], &[1.0, 1.0]), f64::INFINITY);
        // Σx² = 2, Σe² = 0.02 → 20 dB.
        assert!((sqnr_db(&[1.0, 1.0], &[0.9, 1.1]) - 20.0).abs() < 1e-5);
        assert_eq!(max_abs_error(&[1.0, -2.0], &[1.5, -2.25]), 0.5);
        assert!((mse(&[1.0, -2.0], &[1.5, -2.5]) - 0.25).abs() < 1e-12);
    }
}
