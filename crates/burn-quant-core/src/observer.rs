//! Static calibration: statistics accumulated over many batches, frozen into params.

use burn::tensor::{Device, Tensor};

use crate::error::{QuantError, Result};
use crate::granularity::Layout;
use crate::host::{self, HostParams};
use crate::quantize::QuantParams;
use crate::scale::{ScaleSource, ScaleStat, SymmetricScale};
use crate::spec::QuantSpec;

pub mod histogram;

use histogram::CellValues;

/// Accumulates the spec's statistic over calibration batches (a static scale).
///
/// Min-max, absmax and absmean are streamed exactly (constant memory). Percentile and MSE
/// statistics keep a cell's values up to [`histogram::EXACT_CAP`] (exact results) and a
/// fixed-size histogram beyond (constant memory per scale cell, at most 64 KiB; the error
/// bounds against the all-values statistic are in [`histogram`]). HQQ needs every value and
/// keeps them. Batches may differ in the dimensions that do not change the scale shape (the
/// batch size of a per-tensor or per-channel activation quantizer). The result depends only
/// on the batches' values, not on their order, except in the exact regime where an MSE
/// search sums its errors in observation order (same batches in the same order give the same
/// bytes).
#[derive(Clone, Debug)]
pub struct Observer {
    spec: QuantSpec,
    scale_shape: Option<Vec<usize>>,
    layout: Option<Layout>,
    state: State,
    batches: usize,
}

#[derive(Clone, Debug)]
enum State {
    Empty,
    Range { lo: Vec<f32>, hi: Vec<f32> },
    AbsSum { sum: Vec<f64>, count: Vec<u64> },
    Cells(Vec<CellValues>),
}

impl Observer {
    /// An observer for `spec` (its statistic decides what is kept).
    pub fn new(spec: &QuantSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            spec: *spec,
            scale_shape: None,
            layout: None,
            state: State::Empty,
            batches: 0,
        })
    }

    /// Bytes of the per-cell statistics the observer holds (capacities): bounded by the
    /// number of scale cells times 64 KiB for percentile and MSE statistics, whatever the
    /// number of batches (HQQ keeps every value).
    pub fn state_bytes(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Range { lo, hi } => (lo.capacity() + hi.capacity()) * size_of::<f32>(),
            State::AbsSum { sum, count } => {
                sum.capacity() * size_of::<f64>() + count.capacity() * size_of::<u64>()
            }
            State::Cells(c) => c.iter().map(CellValues::bytes).sum(),
        }
    }

    /// Number of batches observed so far.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Observes one batch given as a tensor.
    pub fn observe<const D: usize>(&mut self, x: &Tensor<D>) -> Result<()> {
        let data = x
            .to_data()
            .try_into_vec_as::<f32>()
            .expect("float tensor data converts to f32");
        self.observe_slice(&data, &x.dims())
    }

    /// Observes one batch given as row-major data of `shape`.
    pub fn observe_slice(&mut self, data: &[f32], shape: &[usize]) -> Result<()> {
        host::check_input(data, shape, "x")?;
        let layout = self.spec.check_shape(shape)?;
        match &self.scale_shape {
            Some(s) if *s != layout.scale_shape => {
                return Err(QuantError::ShapeMismatch {
                    what: "calibration batch scales",
                    got: layout.scale_shape.clone(),
                    expected: s.clone(),
                });
            }
            _ => self.scale_shape = Some(layout.scale_shape.clone()),
        }
        // A per-tensor cell is the batch itself: no gathered copy.
        let gathered;
        let cells: Vec<&[f32]> = if layout.cells() == 1 {
            vec![data]
        } else {
            gathered = host::cell_values(data, &layout);
            gathered.iter().map(Vec::as_slice).collect()
        };
        let stat = self.stat();
        let n = cells.len();
        // The MSE convention of a symmetric spec searches over the values themselves.
        let search = matches!(self.spec.scale.symmetric, SymmetricScale::Mse { .. })
            && !self.spec.zero_point.is_asymmetric();
        if let State::Empty = self.state {
            self.state = match stat {
                ScaleStat::AbsMax | ScaleStat::MinMax if !search => State::Range {
                    lo: vec![f32::INFINITY; n],
                    hi: vec![f32::NEG_INFINITY; n],
                },
                ScaleStat::AbsMean => State::AbsSum {
                    sum: vec![0.0; n],
                    count: vec![0; n],
                },
                _ => State::Cells(vec![CellValues::Exact(Vec::new()); n]),
            };
        }
        match &mut self.state {
            State::Range { lo, hi } => {
                for (c, v) in cells.iter().enumerate() {
                    for &x in v.iter() {
                        lo[c] = lo[c].min(x);
                        hi[c] = hi[c].max(x);
                    }
                }
            }
            State::AbsSum { sum, count } => {
                for (c, v) in cells.iter().enumerate() {
                    sum[c] += v.iter().map(|x| x.abs() as f64).sum::<f64>();
                    count[c] += v.len() as u64;
                }
            }
            State::Cells(s) => {
                let streamable = histogram::streamable(stat);
                for (c, v) in cells.iter().enumerate() {
                    s[c].add(v, streamable);
                }
            }
            State::Empty => unreachable!("initialised above"),
        }
        self.layout = Some(layout);
        self.batches += 1;
        Ok(())
    }

    fn stat(&self) -> ScaleStat {
        match self.spec.scale.source {
            ScaleSource::Const(_) => ScaleStat::AbsMax,
            other => other.stat().expect("non-constant sources have a statistic"),
        }
    }

    /// The frozen params on the host.
    pub fn host_params(&self) -> Result<HostParams> {
        let (Some(layout), false) = (&self.layout, self.batches == 0) else {
            return Err(QuantError::EmptyTensor {
                what: "calibration set",
                shape: vec![0],
            });
        };
        let spec = &self.spec;
        if let ScaleSource::Const(c) = spec.scale.source {
            let zeros = spec
                .zero_point
                .is_asymmetric()
                .then(|| vec![0.0; layout.cells()]);
            return Ok(HostParams {
                scales: vec![c; layout.cells()],
                zero_points: zeros,
                level: None,
            });
        }
        let per_cell: Vec<(f32, f32)> = match &self.state {
            State::Range { lo, hi } => lo
                .iter()
                .zip(hi)
                .map(|(&lo, &hi)| match self.stat() {
                    ScaleStat::AbsMax => {
                        let (lo, hi) = host::abs_range(lo, hi, spec);
                        host::range_params(lo, hi, spec)
                    }
                    _ => host::range_params(lo, hi, spec),
                })
                .collect(),
            State::AbsSum { sum, count } => sum
                .iter()
                .zip(count)
                .map(|(&s, &c)| {
                    let m = (s / c.max(1) as f64) as f32;
                    // Same rule as a one-batch AbsMean.
                    host::cell_params(&[m, -m], spec, ScaleStat::AbsMean)
                })
                .collect(),
            State::Cells(s) => s.iter().map(|c| c.params(spec, self.stat())).collect(),
            State::Empty => unreachable!("batches > 0"),
        };
        let amax: Option<Vec<f32>> = match (&self.state, self.stat()) {
            (State::Range { lo, hi }, ScaleStat::AbsMax) => Some(
                lo.iter()
                    .zip(hi)
                    .map(|(l, h)| l.abs().max(h.abs()))
                    .collect(),
            ),
            _ => None,
        };
        host::finish_params(per_cell, amax.as_deref(), spec, layout)
    }

    /// The frozen params as tensors on `device`.
    pub fn params<const D: usize>(&self, device: &Device) -> Result<QuantParams<D>> {
        let hp = self.host_params()?;
        let layout = self
            .layout
            .as_ref()
            .expect("host_params succeeded, so a batch was seen");
        if layout.scale_shape.len() != D {
            return Err(QuantError::ShapeMismatch {
                what: "params rank",
                got: vec![D],
                expected: vec![layout.scale_shape.len()],
            });
        }
        Ok(QuantParams::from_host(hp, layout, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::compute_params;
    use burn::tensor::TensorData;

    fn batch(seed: u64, rows: usize) -> Vec<f32> {
        (0..rows * 8)
            .map(|i| (crate::rounding::uniform(seed, i as u64) - 0.3) * (1 + seed) as f32)
            .collect()
    }

    #[test]
    fn observing_batches_equals_computing_on_their_concatenation() {
        let device = Device::flex();
        let specs = [
            QuantSpec::int8_act_per_tensor(),
            QuantSpec::uint8_act_per_tensor().asymmetric(),
            QuantSpec::int8_weight_per_channel(),
            QuantSpec::ternary_weight(),
            QuantSpec::int8_act_per_tensor().with_stat(ScaleStat::Percentile { q: 99.0 }),
            QuantSpec::int8_act_per_tensor()
                .with_bits(4)
                .with_stat(ScaleStat::mse()),
        ];
        let (a, b) = (batch(1, 16), batch(2, 24));
        let mut all = a.clone();
        all.extend(&b);
        for spec in specs {
            let mut obs = Observer::new(&spec).unwrap();
            obs.observe_slice(&a, &[16, 8]).unwrap();
            obs.observe_slice(&b, &[24, 8]).unwrap();
            assert_eq!(obs.batches(), 2);
            let got = obs.params::<2>(&device).unwrap().to_host();
            let x = Tensor::<2>::from_data(TensorData::new(all.clone(), [40, 8]), &device);
            let want = compute_params(&x, &spec).unwrap().to_host();
            // AbsMean's mean over batches is accumulated in f64: compare to a ulp.
            for (g, w) in got.scales.iter().zip(&want.scales) {
                assert!((g - w).abs() <= w.abs() * 1e-6, "{spec:?}: {g} vs {w}");
            }
            assert_eq!(got.zero_points, want.zero_points, "{spec:?}");
        }
    }

    /// Bell-shaped activations `[rows, 96]` whose channels 5 and 77 are outlier channels
    /// (`outlier` times larger, as in LLM activations).
    fn activations(seed: u64, rows: usize, outlier: f32) -> Vec<f32> {
        (0..rows * 96)
            .map(|i| {
                let u = |k: u64| crate::rounding::uniform(seed * 7 + k, i as u64) - 0.5;
                let x = u(0) + u(1) + u(2) + u(3) + 0.05;
                if i % 96 == 5 || i % 96 == 77 {
                    x * outlier
                } else {
                    x
                }
            })
            .collect()
    }

    /// Squared error of fake-quantizing `v` with (s, z), nearest-even.
    fn sse(v: &[f32], spec: &QuantSpec, s: f32, z: f32) -> f64 {
        v.iter()
            .map(|&x| {
                let q = spec
                    .format
                    .quantize(x / s + z, crate::RoundMode::NearestEven, 0.0);
                ((x - (q - z) * s) as f64).powi(2)
            })
            .sum()
    }

    /// Six batches of 64 rows (36,864 values per tensor, past the exact cap of 16,384), ranges
    /// growing and shrinking.
    fn outlier_batches() -> Vec<Vec<f32>> {
        [8.0, 20.0, 60.0, 4.0, 30.0, 10.0]
            .iter()
            .enumerate()
            .map(|(i, &o)| activations(i as u64 + 1, 64, o))
            .collect()
    }

    fn observe_all(spec: &QuantSpec, batches: &[Vec<f32>]) -> Observer {
        let mut obs = Observer::new(spec).unwrap();
        for b in batches {
            obs.observe_slice(b, &[b.len() / 96, 96]).unwrap();
        }
        obs
    }

    #[test]
    fn percentiles_past_the_exact_cap_are_within_one_bin_of_all_values() {
        let batches = outlier_batches();
        let all = batches.concat();
        let mut h = histogram::CellHistogram::new();
        h.add(&all);
        let w = h.bin_width() as f32;
        let sym = QuantSpec::int8_act_per_tensor().with_stat(ScaleStat::Percentile { q: 99.999 });
        let asym = QuantSpec::uint8_act_per_tensor()
            .asymmetric()
            .with_stat(ScaleStat::Percentile { q: 99.9 });
        for (spec, div) in [(sym, 127.0), (asym, 255.0 / 2.0)] {
            let obs = observe_all(&spec, &batches);
            assert!(
                matches!(&obs.state, State::Cells(c) if matches!(c[0], CellValues::Histogram(_)))
            );
            let got = obs.host_params().unwrap().scales[0];
            let want = host::compute_params(&all, &[all.len() / 96, 96], &spec)
                .unwrap()
                .scales[0];
            // Symmetric: p ≤ p̂ < p + w; asymmetric: each end within w, so the range within 2w.
            let tol = w / div * (1.0 + 1e-5);
            assert!(
                got >= want * (1.0 - 1e-6) && got - want <= tol,
                "{spec}: {got} vs exact {want} (bound {tol})"
            );
        }
    }

    #[test]
    fn mse_past_the_exact_cap_is_within_its_bound_of_the_exact_search() {
        let batches = outlier_batches();
        let all = batches.concat();
        let n = all.len() as f64;
        let mut h = histogram::CellHistogram::new();
        h.add(&all);
        let w = h.bin_width();
        let specs = [
            // Same candidates as the exact search: the RMS bound holds.
            (
                QuantSpec::int8_act_per_tensor().with_stat(ScaleStat::mse()),
                true,
            ),
            (
                QuantSpec::uint8_act_per_tensor()
                    .with_bits(4)
                    .asymmetric()
                    .with_stat(ScaleStat::mse()),
                true,
            ),
            (
                QuantSpec::int8_act_per_tensor()
                    .with_bits(4)
                    .with_symmetric_scale(SymmetricScale::mse()),
                true,
            ),
            // Candidates around a percentile that is itself within a bin.
            (
                QuantSpec::int8_act_per_tensor()
                    .with_symmetric_scale(SymmetricScale::mse())
                    .with_stat(ScaleStat::Percentile { q: 99.99 }),
                false,
            ),
        ];
        for (spec, same_candidates) in specs {
            let obs = observe_all(&spec, &batches);
            let got = obs.host_params().unwrap();
            let want = host::compute_params(&all, &[all.len() / 96, 96], &spec).unwrap();
            let z = |p: &HostParams| p.zero_points.as_ref().map_or(0.0, |z| z[0]);
            let e_got = sse(&all, &spec, got.scales[0], z(&got));
            let e_want = sse(&all, &spec, want.scales[0], z(&want));
            let (r_got, r_want) = ((e_got / n).sqrt(), (e_want / n).sqrt());
            if same_candidates {
                assert!(r_got <= r_want + w, "{spec}: RMS {r_got} vs {r_want} + {w}");
            }
            assert!(
                e_got <= e_want * 1.02,
                "{spec}: error {e_got} vs exact {e_want} (scales {} vs {})",
                got.scales[0],
                want.scales[0]
            );
        }
    }

    #[test]
    fn state_is_constant_in_the_number_of_batches_and_independent_of_their_order() {
        let spec = QuantSpec::int8_act_per_tensor().with_stat(ScaleStat::mse());
        let batches = outlier_batches();
        let few = observe_all(&spec, &batches);
        let many_batches: Vec<Vec<f32>> = (0..40)
            .map(|i| activations(100 + i, 64, 1.0 + i as f32))
            .collect();
        let many = observe_all(&spec, &many_batches);
        assert_eq!(many.batches(), 40);
        assert_eq!(few.state_bytes(), many.state_bytes());
        assert_eq!(
            many.state_bytes(),
            2 * histogram::HISTOGRAM_BINS * size_of::<u64>()
        );
        // Per channel: one histogram per cell, the same size after 6 or 40 batches.
        let pc = QuantSpec::int8_act_per_tensor()
            .with_granularity(crate::Granularity::PerChannel { axis: 1 })
            .with_stat(ScaleStat::Percentile { q: 99.0 });
        let mut big = Vec::new();
        for _ in 0..3 {
            big.extend(outlier_batches());
        }
        let pc_bytes = |b: &[Vec<f32>]| {
            let mut obs = Observer::new(&pc).unwrap();
            for x in b {
                obs.observe_slice(x, &[x.len() / 96, 96]).unwrap();
            }
            obs.state_bytes()
        };
        assert!(pc_bytes(&big) <= 96 * histogram::EXACT_CAP * size_of::<f32>());
        // Any order: the same bytes (histogram regime).
        let mut rev = batches.clone();
        rev.reverse();
        for spec in [
            spec,
            QuantSpec::int8_act_per_tensor().with_stat(ScaleStat::Percentile { q: 99.9 }),
        ] {
            let a = observe_all(&spec, &batches).host_params().unwrap();
            let b = observe_all(&spec, &rev).host_params().unwrap();
            assert_eq!(a, b, "{spec}");
        }
    }

    #[test]
    fn nan_and_empty_batches_are_errors_in_the_histogram_regime() {
        let spec = QuantSpec::int8_act_per_tensor().with_stat(ScaleStat::Percentile { q: 99.0 });
        let batches = outlier_batches();
        let mut obs = observe_all(&spec, &batches);
        let before = obs.host_params().unwrap();
        let mut bad = batches[0].clone();
        bad[17] = f32::NAN;
        assert!(matches!(
            obs.observe_slice(&bad, &[64, 96]),
            Err(QuantError::NonFinite { index: 17, .. })
        ));
        assert!(matches!(
            obs.observe_slice(&[], &[0, 96]),
            Err(QuantError::EmptyTensor { .. })
        ));
        assert_eq!(obs.batches(), batches.len());
        assert_eq!(
            obs.host_params().unwrap(),
            before,
            "a refused batch changes nothing"
        );
    }

    #[test]
    fn empty_calibration_and_shape_changes_are_errors() {
        let obs = Observer::new(&QuantSpec::int8_act_per_tensor()).unwrap();
        assert!(matches!(
            obs.host_params(),
            Err(QuantError::EmptyTensor {
                what: "calibration set",
                ..
            })
        ));
        let mut obs = Observer::new(&QuantSpec::int4_weight_per_group(8)).unwrap();
        obs.observe_slice(&batch(1, 16), &[16, 8]).unwrap();
        assert!(matches!(
            obs.observe_slice(&batch(1, 8), &[8, 16]),
            Err(QuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            obs.observe_slice(&[f32::NAN; 128], &[16, 8]),
            Err(QuantError::NonFinite { .. })
        ));
    }
}
