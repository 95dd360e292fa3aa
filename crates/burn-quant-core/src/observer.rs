//! Static calibration: statistics accumulated over many batches, frozen into params.

use burn::tensor::{Device, Tensor};

use crate::error::{QuantError, Result};
use crate::granularity::Layout;
use crate::host::{self, HostParams};
use crate::quantize::QuantParams;
use crate::scale::{ScaleSource, ScaleStat, SymmetricScale};
use crate::spec::QuantSpec;

/// Accumulates the spec's statistic over calibration batches (a static scale).
///
/// Min-max, absmax and absmean are streamed (constant memory); percentile, MSE and HQQ need
/// the values themselves and keep every observed value of each scale cell. Batches may differ
/// in the dimensions that do not change the scale shape (the batch size of a per-tensor or
/// per-channel activation quantizer).
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
    Samples(Vec<Vec<f32>>),
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
        let cells = host::cell_values(data, &layout);
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
                _ => State::Samples(vec![Vec::new(); n]),
            };
        }
        match &mut self.state {
            State::Range { lo, hi } => {
                for (c, v) in cells.iter().enumerate() {
                    for &x in v {
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
            State::Samples(s) => {
                for (c, v) in cells.into_iter().enumerate() {
                    s[c].extend(v);
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
            State::Samples(s) => s
                .iter()
                .map(|v| host::cell_params(v, spec, self.stat()))
                .collect(),
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
