//! Scale searches of ggml's k-quant and importance-weighted quantizers (formats.md §1.3).
//!
//! Bit-exactness with ggml rests on evaluating every f32 expression in the same order as ggml's C
//! code does (no fused multiply-add, left-to-right products such as `w·l·l = (w·l)·l`) and on
//! rounding with [`nearest_int`] (half to even) rather than `f32::round` (half away from zero).
//! Weights are always per element; `None` means ggml's default `w = x²`.

/// Below this magnitude a group counts as all zero (ggml's `GROUP_MAX_EPS`).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Nearest integer, ties to even, as ggml's `nearest_int`.
///
/// Adding 1.5·2²³ moves |v| < 2²² into the binade whose ulp is 1, so the addition itself rounds
/// half to even; subtracting the constant again is exact. ggml only defines the result there; past
/// it we round the same way and saturate (NaN gives 0) instead of returning garbage.
#[inline]
pub(crate) fn nearest_int(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    if v.abs() < 4_194_304.0 {
        ((v + MAGIC) - MAGIC) as i32
    } else {
        v.round_ties_even() as i32
    }
}

/// Weight of element `i`: the given one, or x² (ggml's `rmse_type == 1` default).
#[inline]
fn weight(weights: Option<&[f32]>, x: &[f32], i: usize) -> f32 {
    match weights {
        Some(w) => w[i],
        None => x[i] * x[i],
    }
}

/// The element of largest magnitude with its sign (first on ties) and that magnitude.
#[inline]
fn signed_amax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    (max, amax)
}

/// ggml `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)`: symmetric codes in
/// `-nmax..nmax-1`, written to `codes` with offset `nmax`, and the weighted least-squares scale.
///
/// The start `iscale = −nmax/M` (M = signed absmax) and 18 perturbations `−(nmax + 0.1·k)/M`,
/// k = ±1..±9, are tried; the rounding that maximises (Σw·x·l)²/Σw·l² wins.
pub(crate) fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    codes: &mut [u8],
) -> f32 {
    let (max, amax) = signed_amax(x);
    if amax < GROUP_MAX_EPS {
        codes.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = weight(weights, x, i);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, codes: &mut [u8]| {
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as u8;
        }
    };
    let iscale = -nmaxf / max;
    fill(iscale, codes);
    let (sumlx, suml2) = sums(iscale);
    // C's `suml2 ? … : 0`: NaN counts as true, as `!= 0` does.
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, codes);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml `make_q3_quants(n, nmax, x, L, do_rmse = true)`: symmetric codes (offset `nmax`) with
/// weights x², refined by up to five passes of coordinate descent on single codes.
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], codes: &mut [u8]) -> f32 {
    let (max, amax) = signed_amax(x);
    if amax < GROUP_MAX_EPS {
        codes.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; 256];
    let l = &mut l[..x.len()];
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        let lf = *li as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let cur = *li as f32;
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li {
                    let nf = new_l as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (c, &li) in codes.iter_mut().zip(l.iter()) {
        *c = (li + nmax) as u8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Parameters of ggml's asymmetric scale/min sweep (`make_qkx2_quants` / `make_qkx3_quants`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sweep {
    /// Largest code.
    pub nmax: i32,
    /// First candidate offset added to `nmax`.
    pub rmin: f32,
    /// Step between candidates.
    pub rdelta: f32,
    /// Number of steps (nstep + 1 candidates).
    pub nstep: i32,
    /// Minimise the weighted absolute error instead of the squared one.
    pub use_mad: bool,
}

/// ggml `make_qkx2_quants` / `make_qkx3_quants` (identical for explicit weights): codes in
/// `0..=nmax` and `(scale, min)` with x ≈ scale·q − min, min ≥ 0.
///
/// Starts from the range [min(x, 0), max(x)]; each candidate inverse scale
/// `(rmin + rdelta·k + nmax)/(max − min)` is rounded, the weighted 2×2 least-squares problem for
/// (scale, offset) is solved for those codes, and the lowest weighted error wins.
pub(crate) fn make_qkx_quants(
    s: Sweep,
    x: &[f32],
    weights: &[f32],
    codes: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    // `max == min` (qkx2) and `max <= min` (qkx3) agree: min ≤ max unless the input holds NaN,
    // which neither variant handles.
    if max == min {
        codes.fill(0);
        return (0.0, -min);
    }
    let nmax = s.nmax;
    let err = |d: f32| if s.use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        codes[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if s.nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for is in 0..=s.nstep {
        iscale = (s.rmin + s.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                codes.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml `make_qp_quants`: quantizes non-negative values (sub-block scales or mins) to codes in
/// `0..=nmax` with one positive scale, weighted by `weights` (each sub-block's total weight).
///
/// Tries the inverse scales `(nmax + 0.1·k)/max`, k = −4..4, keeps the lowest weighted squared
/// error, then refines single codes for up to five passes. Codes are stored as ggml's `uint8_t`
/// (wrapping), and the refinement reads them back that way, as ggml does.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], weights: &[f32], codes: &mut [u8]) -> f32 {
    let mut max = 0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        codes.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..x.len() {
        let diff = x[i] - scale * codes[i] as f32;
        best_mse += weights[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..x.len() {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..x.len() {
        let l = nearest_int(iscale * x[i]).min(nmax);
        codes[i] = l as u8;
        let w = weights[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..x.len() {
            let w = weights[i];
            let cur = codes[i] as f32;
            let mut slx = sumlx - w * x[i] * cur;
            let mut sl2 = suml2 - w * cur * cur;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != codes[i] as i32 {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        codes[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// ggml `best_index_int8`: index of the table entry nearest to `x` in an ascending table (the
/// lower one on ties), found by bisection.
#[inline]
pub(crate) fn best_index_int8(values: &[i8; 16], x: f32) -> u8 {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mid = (ml + mu) / 2;
        if x < values[mid] as f32 {
            mu = mid;
        } else {
            ml = mid;
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even_like_ggml() {
        for (v, r) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (0.49999997, 0),
            (3.7, 4),
            (-3.7, -4),
            (4_194_303.5, 4_194_304),
            (1e9, 1_000_000_000),
        ] {
            assert_eq!(nearest_int(v), r, "{v}");
        }
        assert_eq!(nearest_int(f32::NAN), 0);
        assert_eq!(nearest_int(1e20), i32::MAX);
        // Property over a dense range: equal to the std ties-to-even rounding.
        let mut v = -300.0f32;
        while v < 300.0 {
            assert_eq!(nearest_int(v), v.round_ties_even() as i32, "{v}");
            v += 0.03125 * 0.999;
        }
    }

    #[test]
    fn best_index_is_nearest_entry() {
        let k: [i8; 16] = [
            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
        ];
        let mut x = -140.0f32;
        while x < 130.0 {
            let got = best_index_int8(&k, x) as usize;
            let best = k
                .iter()
                .map(|&v| (v as f32 - x).abs())
                .fold(f32::INFINITY, f32::min);
            assert_eq!((k[got] as f32 - x).abs(), best, "x = {x}");
            x += 0.37;
        }
        // Exactly between −10 and 1 (−4.5): ggml's strict `<` picks the upper entry.
        assert_eq!(best_index_int8(&k, -4.5), 8);
    }

    #[test]
    fn qx_scale_is_least_squares_for_its_codes() {
        let x: Vec<f32> = (0..16).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        let mut codes = [0u8; 16];
        let d = make_qx_quants(4, &x, None, &mut codes);
        let (mut sxl, mut sll) = (0f64, 0f64);
        for (&v, &c) in x.iter().zip(&codes) {
            let l = c as f64 - 4.0;
            assert!((-4.0..=3.0).contains(&l));
            let w = (v * v) as f64;
            sxl += w * v as f64 * l;
            sll += w * l * l;
        }
        assert!((d as f64 - sxl / sll).abs() < 1e-5 * d.abs() as f64);
    }

    #[test]
    fn qp_codes_stay_in_range_and_fit() {
        let x = [0.1f32, 0.5, 0.33, 0.0, 0.9, 0.75, 0.2, 0.61];
        let w = [1.0f32; 8];
        let mut codes = [0u8; 8];
        let d = make_qp_quants(63, &x, &w, &mut codes);
        for (&v, &c) in x.iter().zip(&codes) {
            assert!(c <= 63);
            assert!((v - d * c as f32).abs() <= d, "{v} vs {}", d * c as f32);
        }
    }
}
