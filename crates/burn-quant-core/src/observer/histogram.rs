//! Constant-memory calibration statistics of one scale cell: the values themselves up to
//! [`EXACT_CAP`], then a fixed-size histogram of the values' magnitudes, one per sign.
//!
//! # The histogram
//!
//! [`HISTOGRAM_BINS`] bins of width `w = 2^e / HISTOGRAM_BINS` per sign cover `|x| ∈ [0, 2^e)`,
//! where `2^e` is the smallest power of two above the largest |x| seen (at least `2^-126`).
//! When a batch exceeds the range, `e` grows and bin `i` merges into bin `i >> Δe`: bin edges are
//! integer multiples of a power of two, so the binning of every value is exact and the merged
//! histogram is bit for bit the one that binning all values at the final `e` would give. The
//! state is therefore a function of the multiset of values only — independent of how they were
//! split into batches and of the batches' order — and its size never grows: two `u64` counts
//! per bin plus the exact minimum, maximum and count. `w ≤ max|x| / 2048`.
//!
//! # Error bounds (against the same statistic over all values, as [`crate::host`] computes it)
//!
//! - **Percentile** (nearest rank, as the exact statistic): the estimate is the exact value's bin
//!   edge away from zero, clamped to the observed `[min, max]`. So for |x| (symmetric specs)
//!   `p ≤ p̂ < p + w`, and for the signed percentiles of asymmetric specs `|p̂ − p| < w` with
//!   `|p̂| ≥ |p|`: the histogram never clips more than the exact statistic. Percentile 100 is
//!   exact.
//! - **MSE searches** ([`ScaleStat::Mse`], [`SymmetricScale::Mse`]): the same candidate grid
//!   as the exact search ([`ScaleStat::Mse`]'s from the exact min/max, hence identical
//!   candidates; [`SymmetricScale::Mse`]'s from the statistic's range, a percentile within the
//!   bound above), each candidate's squared error evaluated on the bin centres weighted by the
//!   counts. For saturating formats with round-to-nearest the error `|x − Q(x)|` is the
//!   distance from `x` to the grid, which is 1-Lipschitz in `x`, and every value is within `w/2`
//!   of its bin centre; so for every candidate the histogram's RMS error is within `w/2` of the
//!   exact RMS error, and the chosen candidate's exact RMS error is within `w` of the best
//!   candidate's: `RMS(ŝ) ≤ RMS(s*) + w`.
//!
//! Cells with at most [`EXACT_CAP`] values in all (a weight's groups, a small model's
//! activations) keep the values and give exactly the all-values result.

use crate::format::{Format, RoundMode};
use crate::host;
use crate::scale::{ScaleStat, SymmetricScale};
use crate::spec::QuantSpec;

/// Bins per sign of a calibration histogram (`2 · 4096` `u64` counts: 64 KiB per cell).
pub const HISTOGRAM_BINS: usize = 4096;
const BINS_LOG2: i32 = HISTOGRAM_BINS.trailing_zeros() as i32;
/// Values a cell keeps exactly before it switches to the histogram (64 KiB of `f32`, the
/// histogram's own size).
pub const EXACT_CAP: usize = 4 * HISTOGRAM_BINS;
/// The smallest range exponent (`2^-126`, the smallest normal `f32`).
const EXP_MIN: i32 = -126;

/// The smallest `e ≥ EXP_MIN` with `2^e > a` (`a ≥ 0` finite).
fn exponent_above(a: f32) -> i32 {
    if a < f32::MIN_POSITIVE {
        return EXP_MIN;
    }
    // A normal a = m · 2^k with m in [1, 2): 2^(k+1) > a.
    ((a.to_bits() >> 23) & 0xff) as i32 - 127 + 1
}

/// Histogram of one scale cell's values (see the [module documentation](self) for its error
/// bounds).
#[derive(Clone, Debug, PartialEq)]
pub struct CellHistogram {
    /// The range is `|x| < 2^exp`.
    exp: i32,
    /// Counts of `x ≥ 0` with `|x| ∈ [i·w, (i+1)·w)`, `HISTOGRAM_BINS` long.
    pos: Vec<u64>,
    /// Counts of `x < 0` with `|x| ∈ [i·w, (i+1)·w)`, `HISTOGRAM_BINS` long.
    neg: Vec<u64>,
    lo: f32,
    hi: f32,
    count: u64,
}

impl Default for CellHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl CellHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            exp: EXP_MIN,
            pos: vec![0; HISTOGRAM_BINS],
            neg: vec![0; HISTOGRAM_BINS],
            lo: f32::INFINITY,
            hi: f32::NEG_INFINITY,
            count: 0,
        }
    }

    /// Adds finite values (the caller has checked them).
    pub fn add(&mut self, v: &[f32]) {
        if v.is_empty() {
            return;
        }
        let (lo, hi) = v
            .iter()
            .fold((self.lo, self.hi), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        self.rebin(exponent_above(lo.abs().max(hi.abs())));
        let inv_w = 2f64.powi(BINS_LOG2 - self.exp);
        for &x in v {
            // |x| · 2^k is exact in f64, so the bin is exact; |x| < 2^exp keeps it in range.
            let i = (x.abs() as f64 * inv_w) as usize;
            if x.is_sign_negative() && x != 0.0 {
                self.neg[i] += 1;
            } else {
                self.pos[i] += 1;
            }
        }
        self.lo = lo;
        self.hi = hi;
        self.count += v.len() as u64;
    }

    /// Grows the range to `2^exp` (no-op if it covers it already), merging bins by `2^Δe`.
    fn rebin(&mut self, exp: i32) {
        if exp <= self.exp {
            return;
        }
        let shift = ((exp - self.exp) as u32).min(usize::BITS - 1);
        for bins in [&mut self.pos, &mut self.neg] {
            for i in 1..HISTOGRAM_BINS {
                let j = i >> shift;
                if j != i {
                    bins[j] += bins[i];
                    bins[i] = 0;
                }
            }
        }
        self.exp = exp;
    }

    /// Values added so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bin width `w` (see the module documentation's bounds).
    pub fn bin_width(&self) -> f64 {
        2f64.powi(self.exp - BINS_LOG2)
    }

    /// Number of bins per sign (always [`HISTOGRAM_BINS`]: the state does not grow).
    pub fn bins(&self) -> usize {
        self.pos.len()
    }

    /// Smallest and largest value seen (exact).
    pub fn min_max(&self) -> (f32, f32) {
        (self.lo, self.hi)
    }

    /// The nearest rank of percentile `q` among `n` values, 1-based (as the exact statistic).
    fn rank(&self, q: f32) -> u64 {
        let rank = ((q as f64 / 100.0) * self.count as f64).ceil() as u64;
        rank.clamp(1, self.count.max(1))
    }

    /// Estimate of the nearest-rank percentile `q` of |x|: within `[p, p + w)` of the exact
    /// `p`.
    pub fn abs_percentile(&self, q: f32) -> f32 {
        let amax = self.lo.abs().max(self.hi.abs());
        let k = self.rank(q);
        let w = self.bin_width();
        let mut cum = 0;
        for i in 0..HISTOGRAM_BINS {
            cum += self.pos[i] + self.neg[i];
            if cum >= k {
                return (((i + 1) as f64 * w) as f32).min(amax);
            }
        }
        amax
    }

    /// Estimate of the nearest-rank percentile `q` of x: the exact one's bin edge away from
    /// zero, clamped to `[min, max]` (within `w` of the exact one).
    pub fn percentile(&self, q: f32) -> f32 {
        let k = self.rank(q);
        let w = self.bin_width();
        let mut cum = 0;
        for i in (0..HISTOGRAM_BINS).rev() {
            cum += self.neg[i];
            if cum >= k {
                return (-((i + 1) as f64 * w) as f32).max(self.lo);
            }
        }
        for i in 0..HISTOGRAM_BINS {
            cum += self.pos[i];
            if cum >= k {
                return (((i + 1) as f64 * w) as f32).min(self.hi);
            }
        }
        self.hi
    }

    /// The non-empty bins as (centre, count), most negative first.
    fn centres(&self) -> Vec<(f32, f64)> {
        let w = self.bin_width();
        let centre = |i: usize| ((i as f64 + 0.5) * w) as f32;
        let neg = (0..HISTOGRAM_BINS)
            .rev()
            .filter(|&i| self.neg[i] > 0)
            .map(|i| (-centre(i), self.neg[i] as f64));
        let pos = (0..HISTOGRAM_BINS)
            .filter(|&i| self.pos[i] > 0)
            .map(|i| (centre(i), self.pos[i] as f64));
        neg.chain(pos).collect()
    }

    /// (scale, zero-point) of the cell under `spec` and `stat`: the rule of
    /// [`host::cell_params`] with the histogram's percentiles and squared errors. AbsMean and
    /// HQQ need the values (the observer keeps them for those: [`streamable`]); here they fall
    /// back to the range.
    pub fn params(&self, spec: &QuantSpec, stat: ScaleStat) -> (f32, f32) {
        let (lo, hi) = (self.lo, self.hi);
        let sym = !spec.zero_point.is_asymmetric();
        let centres = self.centres();
        let fmt = spec.format;
        let err = |s: f32, z: f32| sq_error(&centres, &fmt, s, z);
        match (spec.scale.symmetric, stat) {
            (SymmetricScale::Mse { grid, min_ratio }, _) if sym => {
                let amax = match stat {
                    ScaleStat::Percentile { q } => self.abs_percentile(q),
                    _ => lo.abs().max(hi.abs()),
                };
                host::mse_symmetric_search(|s| err(s, 0.0), amax, spec, grid, min_ratio)
            }
            (_, ScaleStat::Percentile { q }) if sym => {
                host::symmetric_params(self.abs_percentile(q), hi > -lo, spec)
            }
            (_, ScaleStat::Percentile { q }) => {
                let p_hi = self.percentile(q);
                let p_lo = self.percentile((100.0 - q).max(f32::MIN_POSITIVE));
                host::range_params(p_lo, p_hi, spec)
            }
            (_, ScaleStat::Mse { grid, min_ratio }) => {
                host::mse_range_search(err, lo, hi, spec, grid, min_ratio)
            }
            (_, ScaleStat::MinMax) => host::range_params(lo, hi, spec),
            _ => {
                let (lo, hi) = host::abs_range(lo, hi, spec);
                host::range_params(lo, hi, spec)
            }
        }
    }
}

/// Whether `stat` can be computed from a histogram (percentile, MSE, absmax, min-max); AbsMean
/// is streamed by the observer on its own and HQQ needs every value.
pub fn streamable(stat: ScaleStat) -> bool {
    !matches!(stat, ScaleStat::AbsMean | ScaleStat::Hqq { .. })
}

/// Squared error of fake-quantizing the bin centres with (s, z), weighted by their counts (the
/// rule of the exact search: nearest-even rounding).
fn sq_error(centres: &[(f32, f64)], format: &Format, s: f32, z: f32) -> f64 {
    centres
        .iter()
        .map(|&(x, c)| {
            let q = format.quantize(x / s + z, RoundMode::NearestEven, 0.0);
            let e = (x - (q - z) * s) as f64;
            c * e * e
        })
        .sum()
}

/// The calibration values of one scale cell: exact up to [`EXACT_CAP`] values (or always, for a
/// statistic that is not [`streamable`]), a [`CellHistogram`] beyond.
#[derive(Clone, Debug)]
pub(crate) enum CellValues {
    Exact(Vec<f32>),
    Histogram(CellHistogram),
}

impl CellValues {
    /// Adds a batch of the cell's (checked, finite) values.
    pub(crate) fn add(&mut self, v: &[f32], streamable: bool) {
        match self {
            CellValues::Exact(e) if !streamable || e.len() + v.len() <= EXACT_CAP => {
                e.reserve_exact(v.len());
                e.extend_from_slice(v);
            }
            CellValues::Exact(e) => {
                let mut h = CellHistogram::new();
                h.add(e);
                h.add(v);
                *self = CellValues::Histogram(h);
            }
            CellValues::Histogram(h) => h.add(v),
        }
    }

    /// (scale, zero-point) of the cell.
    pub(crate) fn params(&self, spec: &QuantSpec, stat: ScaleStat) -> (f32, f32) {
        match self {
            CellValues::Exact(v) => host::cell_params(v, spec, stat),
            CellValues::Histogram(h) => h.params(spec, stat),
        }
    }

    /// Bytes held (capacities).
    pub(crate) fn bytes(&self) -> usize {
        match self {
            CellValues::Exact(v) => v.capacity() * size_of::<f32>(),
            CellValues::Histogram(h) => (h.pos.capacity() + h.neg.capacity()) * size_of::<u64>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bell-shaped values with sparse outliers (as LLM activations: a few channels 50× larger).
    pub(crate) fn activations(seed: u64, n: usize, outlier: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let mut u = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n)
            .map(|i| {
                let x: f32 = (0..4).map(|_| u()).sum::<f32>() + 0.1;
                if i % 577 == 3 { x * outlier } else { x }
            })
            .collect()
    }

    fn exact_percentile(v: &[f32], q: f32) -> f32 {
        let mut a = v.to_vec();
        a.sort_by(f32::total_cmp);
        let k = (((q as f64 / 100.0) * a.len() as f64).ceil() as usize).clamp(1, a.len());
        a[k - 1]
    }

    #[test]
    fn percentiles_are_within_one_bin_of_the_exact_ones() {
        let batches = [
            activations(1, 20_000, 10.0),
            activations(2, 30_000, 60.0),
            activations(3, 10_000, 3.0),
        ];
        let all: Vec<f32> = batches.concat();
        let mut h = CellHistogram::new();
        for b in &batches {
            h.add(b);
        }
        let w = h.bin_width() as f32;
        let amax = all.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(w <= amax / 2048.0, "w = {w}, amax = {amax}");
        let abs: Vec<f32> = all.iter().map(|x| x.abs()).collect();
        for q in [50.0, 99.0, 99.9, 99.99, 99.999, 100.0] {
            let (p, ph) = (exact_percentile(&abs, q), h.abs_percentile(q));
            assert!(p <= ph && ph < p + w, "|x| q{q}: {ph} vs exact {p}, w {w}");
            for q in [q, 100.0 - q + 1e-3] {
                let (p, ph) = (exact_percentile(&all, q), h.percentile(q));
                assert!(
                    (ph - p).abs() < w && ph.abs() >= p.abs(),
                    "x q{q}: {ph} vs exact {p}, w {w}"
                );
            }
        }
        assert_eq!(
            h.abs_percentile(100.0),
            amax,
            "percentile 100 is the exact max"
        );
    }

    #[test]
    fn merging_batches_of_different_ranges_equals_binning_all_at_once() {
        // Ranges 0.01, 100 and 1: two re-binnings (by 2^14 and none), any order.
        let scale = |v: Vec<f32>, s: f32| v.into_iter().map(|x| x * s).collect::<Vec<_>>();
        let batches = [
            scale(activations(4, 5_000, 1.0), 0.01),
            scale(activations(5, 5_000, 30.0), 3.0),
            activations(6, 5_000, 1.0),
        ];
        let mut once = CellHistogram::new();
        once.add(&batches.concat());
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let mut h = CellHistogram::new();
            for i in order {
                h.add(&batches[i]);
            }
            assert_eq!(h, once, "order {order:?}");
        }
        assert_eq!(once.count(), 15_000);
        assert_eq!(once.bins(), HISTOGRAM_BINS);
    }

    #[test]
    fn zeros_and_signs_are_binned_apart() {
        let mut h = CellHistogram::new();
        h.add(&[0.0, -0.0, 0.0]);
        assert_eq!(h.percentile(100.0), 0.0);
        assert_eq!(h.abs_percentile(50.0), 0.0);
        h.add(&[-1.0, 0.5]);
        assert_eq!(h.min_max(), (-1.0, 0.5));
        // Rank 1 of 5 is the most negative value, rank 5 the largest.
        assert_eq!(h.percentile(20.0), -1.0);
        assert_eq!(h.percentile(100.0), 0.5);
        assert_eq!(h.abs_percentile(100.0), 1.0);
    }

    #[test]
    fn exact_values_switch_to_the_histogram_past_the_cap() {
        let mut c = CellValues::Exact(Vec::new());
        c.add(&activations(7, EXACT_CAP, 5.0), true);
        assert!(matches!(c, CellValues::Exact(_)));
        c.add(&[1.0], true);
        let CellValues::Histogram(h) = &c else {
            panic!("past the cap: a histogram");
        };
        assert_eq!(h.count(), EXACT_CAP as u64 + 1);
        let bytes = c.bytes();
        for s in 0..20 {
            c.add(&activations(s, 10_000, 40.0), true);
        }
        assert_eq!(c.bytes(), bytes, "the state does not grow");
        // HQQ keeps every value.
        let mut c = CellValues::Exact(Vec::new());
        c.add(&activations(8, EXACT_CAP + 1, 1.0), false);
        assert!(matches!(c, CellValues::Exact(ref v) if v.len() == EXACT_CAP + 1));
    }
}
