//! The row quantizer shared by every Stage-2 algorithm: scales and zero-points exactly as the
//! core computes them for the spec (`burn_quant_core::host::compute_params`), frozen either
//! before the algorithm (static) or during the sweep (dynamic: when the lazy block holding a
//! group's first row starts, or when the sweep reaches that row), and the core's element rule
//! to turn one input channel (a row of a Burn `[d_in, d_out]` weight) into codes and
//! dequantized values.
//!
//! The dequantized value used for error feedback is computed as `(decode(code) − z)·s` in f32,
//! the same arithmetic as `QuantTensor::dequantize`, so the algorithm's Ŵ and the returned
//! tensor's dequantization are bit-identical.

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_quant_core::format::RoundMode;
use burn_quant_core::host::{self, HostLevel, HostParams};
use burn_quant_core::rounding::uniform;
use burn_quant_core::{
    Format, Granularity, QuantParams, QuantSpec, QuantTensor, Rounding, ScaleQuant,
    ScaleRestriction, WeightLayout,
};

use crate::algorithm::DynamicGroupTiming;
use crate::error::{PtqError, Result};

/// `spec` for a Burn-layout `[d_in, d_out]` weight: a role granularity resolved as
/// [`WeightLayout::Linear`] (per output channel → axis 1, per input group → axis 0); explicit
/// axes are kept as they are (the algorithms handle every axis of the matrix).
pub(crate) fn linear_spec(spec: &QuantSpec) -> QuantSpec {
    spec.resolve_roles(WeightLayout::Linear)
}

/// When group parameters are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParamTiming {
    /// Once, from the weight before any error feedback.
    Static,
    /// During the sweep, from the rows' values at the given moment, where the spec allows it
    /// (static otherwise). Units of input-channel groups follow the timing; per-row cells
    /// (per input channel, groups along the output axis) always come from the row's value
    /// when it is quantized: the references have no such cells.
    Dynamic(DynamicGroupTiming),
}

/// Element → scale cell of a Burn `[n, m]` weight: `cell = base(row) + (c / div) · mul`.
#[derive(Clone, Copy, Debug)]
enum CellMap {
    Tensor,
    /// Per input channel (per-channel on axis 0).
    Row,
    /// Per output channel, or groups along the input axis of `group` rows.
    Col {
        group: usize,
    },
    /// Groups of `group` output channels within a row.
    RowGroups {
        group: usize,
    },
}

/// Scales, zero-points and codes for one `[n, m]` weight under one spec.
pub(crate) struct RowQuantizer {
    spec: QuantSpec,
    n: usize,
    m: usize,
    format: Format,
    mode: RoundMode,
    seed: Option<u64>,
    map: CellMap,
    params: HostParams,
    /// Rows per dynamically computed unit and which units are done; `None` = static.
    dynamic: Option<(usize, Vec<bool>)>,
    /// Whether dynamic units are computed at the start of the lazy block holding their first
    /// row ([`DynamicGroupTiming::BlockStart`] on groups along the input axis).
    at_block_start: bool,
}

impl RowQuantizer {
    /// Checks `spec` against the `[n, m]` weight `w` and prepares its parameters: all of them
    /// now for static timing, or the buffers for dynamic timing.
    pub(crate) fn new(
        algorithm: &'static str,
        spec: &QuantSpec,
        w: &[f32],
        n: usize,
        m: usize,
        timing: ParamTiming,
        single_row_units_only: bool,
    ) -> Result<Self> {
        let spec = &linear_spec(spec);
        let layout = spec.check_shape(&[n, m])?;
        if let Format::Minifloat(mf) = spec.format
            && !mf.saturating
        {
            return Err(PtqError::UnsupportedSpec {
                algorithm,
                spec: spec.to_string(),
                reason: "error feedback can push values past the largest finite value, which a \
                         non-saturating minifloat turns into Inf/NaN; use a saturating format"
                    .into(),
            });
        }
        let map = match spec.granularity {
            Granularity::PerTensor => CellMap::Tensor,
            Granularity::PerChannel { axis: 0 } => CellMap::Row,
            // Roles are resolved as `Linear` above; these arms say the same.
            Granularity::PerChannel { .. } | Granularity::PerOutputChannel => {
                CellMap::Col { group: n }
            }
            Granularity::PerGroup { axis: 0, size } | Granularity::PerInputGroup { size } => {
                CellMap::Col { group: size }
            }
            Granularity::PerGroup { size, .. } => CellMap::RowGroups { group: size },
        };
        // Rows a dynamic unit spans, if the spec's cells (and any quantized scale level) are
        // confined to whole rows of the weight.
        let unit = match (spec.scale.restrict, map) {
            (ScaleRestriction::Quantized(ScaleQuant::E4M3Global), _) => None,
            (_, CellMap::Row | CellMap::RowGroups { .. }) => Some(1),
            (
                ScaleRestriction::Quantized(ScaleQuant::SubBlock { super_block, .. }),
                CellMap::Col { group },
            ) if group < n => Some(super_block),
            (_, CellMap::Col { group }) if group < n => Some(group),
            _ => None,
        };
        let unit = unit.filter(|&u| {
            matches!(timing, ParamTiming::Dynamic(_)) && (!single_row_units_only || u == 1)
        });
        let at_block_start = unit.is_some()
            && timing == ParamTiming::Dynamic(DynamicGroupTiming::BlockStart)
            && matches!(map, CellMap::Col { .. });
        let (params, dynamic) = match unit {
            None => (host::compute_params(w, &[n, m], spec)?, None),
            Some(u) => {
                let cells = layout.cells();
                let params = HostParams {
                    scales: vec![0.0; cells],
                    zero_points: spec.zero_point.is_asymmetric().then(|| vec![0.0; cells]),
                    level: None,
                };
                (params, Some((u, vec![false; n.div_ceil(u)])))
            }
        };
        let seed = match spec.rounding {
            Rounding::Stochastic { seed } => Some(seed),
            _ => None,
        };
        Ok(Self {
            spec: *spec,
            n,
            m,
            format: spec.format,
            mode: RoundMode::from(&spec.rounding),
            seed,
            map,
            params,
            dynamic,
            at_block_start,
        })
    }

    /// Rows per dynamically computed unit, if parameters are dynamic.
    pub(crate) fn dynamic_unit(&self) -> Option<usize> {
        self.dynamic.as_ref().map(|(u, _)| *u)
    }

    /// Whether the sweep computes every unit whose first row falls in a lazy block when the
    /// block starts (the GPTQ / GPTAQ references' timing) rather than when it reaches the
    /// unit's first row.
    pub(crate) fn units_at_block_start(&self) -> bool {
        self.at_block_start
    }

    /// Whether `row`'s parameters still have to be computed; if so, `row` starts its unit and
    /// the caller must pass the unit's current rows to [`RowQuantizer::compute_unit`]. The last
    /// unit is shorter when the group size does not divide the rows.
    pub(crate) fn needs_unit(&self, row: usize) -> Option<std::ops::Range<usize>> {
        let (u, done) = self.dynamic.as_ref()?;
        let k = row / u;
        (!done[k]).then(|| k * u..((k + 1) * u).min(self.n))
    }

    /// Computes the parameters of the unit starting at `rows.start` from its current values
    /// (`data` = those rows, row-major).
    pub(crate) fn compute_unit(
        &mut self,
        rows: std::ops::Range<usize>,
        data: &[f32],
    ) -> Result<()> {
        let (u, done) = self.dynamic.as_mut().expect("dynamic parameters");
        let k = rows.start / *u;
        debug_assert_eq!(rows.len(), (*u).min(self.n - rows.start));
        // A short last unit is one (short) group of the spec: the same cells as the others.
        let sub = host::compute_params(data, &[rows.len(), self.m], &self.spec)?;
        done[k] = true;
        let units = done.len();
        let len = sub.scales.len();
        let cells = k * len..(k + 1) * len;
        self.params.scales[cells.clone()].copy_from_slice(&sub.scales);
        if let (Some(z), Some(sz)) = (self.params.zero_points.as_mut(), sub.zero_points.as_ref()) {
            z[cells.clone()].copy_from_slice(sz);
        }
        if let Some(sl) = sub.level {
            let total = units * len;
            let supers = sl.super_scales.len();
            let level = self.params.level.get_or_insert_with(|| HostLevel {
                kind: sl.kind,
                scale_codes: vec![0; total],
                min_codes: sl.min_codes.as_ref().map(|_| vec![0; total]),
                super_scales: vec![0.0; units * supers],
                super_mins: sl.super_mins.as_ref().map(|_| vec![0.0; units * supers]),
                super_shape: match sl.super_shape.as_slice() {
                    [] => vec![],
                    [a, rest @ ..] => std::iter::once(a * units)
                        .chain(rest.iter().copied())
                        .collect(),
                },
            });
            level.scale_codes[cells.clone()].copy_from_slice(&sl.scale_codes);
            if let (Some(d), Some(s)) = (level.min_codes.as_mut(), sl.min_codes.as_ref()) {
                d[cells].copy_from_slice(s);
            }
            let sup = k * supers..(k + 1) * supers;
            level.super_scales[sup.clone()].copy_from_slice(&sl.super_scales);
            if let (Some(d), Some(s)) = (level.super_mins.as_mut(), sl.super_mins.as_ref()) {
                d[sup].copy_from_slice(s);
            }
        }
        Ok(())
    }

    /// Quantizes the current values `v` of input channel `row` (original index): writes its
    /// codes and dequantized values. The unit's parameters must be computed.
    pub(crate) fn quantize_row(&self, row: usize, v: &[f32], codes: &mut [i32], deq: &mut [f32]) {
        debug_assert!(
            self.needs_unit(row).is_none(),
            "parameters of row {row} not computed"
        );
        let m = self.m;
        let (base, div, mul) = match self.map {
            CellMap::Tensor => (0, 1, 0),
            CellMap::Row => (row, 1, 0),
            CellMap::Col { group } => ((row / group) * m, 1, 1),
            CellMap::RowGroups { group } => (row * m.div_ceil(group), group, 1),
        };
        let scales = &self.params.scales;
        let zeros = self.params.zero_points.as_deref();
        let fmt = self.format;
        for c in 0..m {
            let cell = base + (c / div) * mul;
            let s = scales[cell];
            let z = zeros.map_or(0.0, |z| z[cell]);
            // The core's element rule (host::quantize_codes): a zero scale maps to the zero-point.
            let g = if s == 0.0 { z } else { v[c] / s + z };
            let noise = self
                .seed
                .map_or(0.0, |seed| uniform(seed, (row * m + c) as u64));
            let code = fmt.encode(fmt.quantize(g, self.mode, noise));
            codes[c] = code;
            deq[c] = (fmt.decode(code) - z) * s;
        }
    }

    /// The finished parameters (every unit must have been computed).
    pub(crate) fn into_params(self) -> HostParams {
        debug_assert!(
            self.dynamic
                .as_ref()
                .is_none_or(|(_, d)| d.iter().all(|&x| x))
        );
        self.params
    }

    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.n
    }
}

/// A `QuantTensor<2>` from host codes and parameters on `device` (a role spec is stored
/// resolved for the `[d_in, d_out]` layout).
pub(crate) fn quant_tensor(
    codes: Vec<i32>,
    params: HostParams,
    spec: &QuantSpec,
    n: usize,
    m: usize,
    device: &Device,
) -> Result<QuantTensor<2>> {
    let spec = &linear_spec(spec);
    let layout = spec.check_shape(&[n, m])?;
    host::check_params(&params, &layout, spec)?;
    let p = QuantParams::<2>::from_host(params, &layout, device);
    Ok(QuantTensor {
        codes: Tensor::<2, Int>::from_data(TensorData::new(codes, [n, m]), device),
        scales: p.scales,
        zero_points: p.zero_points,
        scale_level: p.scale_level,
        spec: *spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_quant_core::{Minifloat, ScaleStat, quantize};

    const DYNAMIC: ParamTiming = ParamTiming::Dynamic(DynamicGroupTiming::BlockStart);

    fn specs() -> Vec<QuantSpec> {
        vec![
            QuantSpec::int4_weight_per_group(32),
            QuantSpec::int4_weight_per_group(32)
                .with_bits(3)
                .asymmetric(),
            QuantSpec::int8_weight_per_channel().with_bits(4),
            QuantSpec::int8_weight_per_channel().with_axis(0),
            QuantSpec::int4_weight_per_group(16).with_axis(1),
            QuantSpec::int8_weight_per_tensor(),
            QuantSpec::gguf_q4_0(),
            QuantSpec::gguf_q4_1(),
            QuantSpec::gguf_q4_k(),
            QuantSpec::gguf_q3_k(),
            QuantSpec::mxfp4(),
            QuantSpec::nvfp4(),
            QuantSpec::int4_weight_per_group(32).with_stat(ScaleStat::mse()),
            QuantSpec::int4_weight_per_group(32).with_rounding(Rounding::Stochastic { seed: 3 }),
        ]
    }

    /// Row by row with dynamic units (computed from the untouched weight), the quantizer gives
    /// the core's own codes and parameters, and `QuantTensor::dequantize` reproduces the
    /// dequantized rows bit for bit; also where groups do not divide the weight (500 rows =
    /// 15·32 + 20, 70 columns = 4·16 + 6: a short last group, here a short last unit).
    #[test]
    fn untouched_rows_give_the_cores_codes_for_every_spec() {
        let device = Device::flex();
        for (n, m) in [(512, 64), (500, 70)] {
            let w = crate::testutil::weights(n, m, 11);
            for spec in specs() {
                if n == 500
                    && matches!(
                        spec.scale.restrict,
                        ScaleRestriction::Quantized(ScaleQuant::SubBlock { .. })
                    )
                {
                    // k-quant super-blocks must tile the axis.
                    assert!(RowQuantizer::new("t", &spec, &w, n, m, DYNAMIC, false).is_err());
                    continue;
                }
                untouched_rows_case(&device, &spec, &w, n, m);
            }
        }
    }

    fn untouched_rows_case(device: &Device, spec: &QuantSpec, w: &[f32], n: usize, m: usize) {
        let spec = *spec;
        let device = device.clone();
        {
            for timing in [
                ParamTiming::Static,
                ParamTiming::Dynamic(DynamicGroupTiming::BlockStart),
                ParamTiming::Dynamic(DynamicGroupTiming::GroupStart),
            ] {
                let mut rq = RowQuantizer::new("test", &spec, w, n, m, timing, false).unwrap();
                let mut codes = vec![0i32; n * m];
                let mut deq = vec![0f32; n * m];
                for r in 0..n {
                    if let Some(rows) = rq.needs_unit(r) {
                        let data = w[rows.start * m..rows.end * m].to_vec();
                        rq.compute_unit(rows, &data).unwrap();
                    }
                    rq.quantize_row(
                        r,
                        &w[r * m..(r + 1) * m],
                        &mut codes[r * m..(r + 1) * m],
                        &mut deq[r * m..(r + 1) * m],
                    );
                }
                let wt = Tensor::<2>::from_data(TensorData::new(w.to_vec(), [n, m]), &device);
                let core = quantize(wt, &spec).unwrap();
                assert_eq!(codes, core.codes_vec(), "{spec} {timing:?}");
                let params = rq.into_params();
                assert_eq!(params, core.params().to_host(), "{spec} {timing:?}");
                let q = quant_tensor(codes, params, &spec, n, m, &device).unwrap();
                let back: Vec<f32> = q.dequantize().try_into_vec_as::<f32>().unwrap();
                assert!(
                    back.iter()
                        .zip(&deq)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{spec} {timing:?}"
                );
            }
        }
    }

    #[test]
    fn dynamic_units_follow_the_spec() {
        let (n, m) = (512, 64);
        let w = vec![0.5f32; n * m];
        let unit = |s: QuantSpec, only1| {
            RowQuantizer::new("t", &s, &w, n, m, DYNAMIC, only1)
                .unwrap()
                .dynamic_unit()
        };
        assert_eq!(unit(QuantSpec::int4_weight_per_group(32), false), Some(32));
        assert_eq!(unit(QuantSpec::int4_weight_per_group(32), true), None);
        assert_eq!(unit(QuantSpec::gguf_q4_k(), false), Some(256));
        assert_eq!(
            unit(QuantSpec::nvfp4(), false),
            None,
            "a global scale spans the tensor"
        );
        assert_eq!(
            unit(QuantSpec::int8_weight_per_channel(), false),
            None,
            "per output channel spans all rows"
        );
        assert_eq!(
            unit(QuantSpec::int8_weight_per_channel().with_axis(0), true),
            Some(1)
        );
        assert_eq!(unit(QuantSpec::int4_weight_per_group(n), false), None);
    }

    #[test]
    fn unusable_specs_are_typed_errors() {
        let w = vec![0.5f32; 64 * 8];
        let e = RowQuantizer::new("gptq", &QuantSpec::gguf_q4_k(), &w, 64, 8, DYNAMIC, false)
            .err()
            .unwrap();
        assert!(matches!(e, PtqError::Quant(_)), "{e}");
        let nosat = QuantSpec::fp8_e4m3_weight_per_tensor()
            .with_format(Format::Minifloat(Minifloat::e5m2().with_saturating(false)));
        let e = RowQuantizer::new("gptq", &nosat, &w, 64, 8, ParamTiming::Static, false)
            .err()
            .unwrap();
        assert!(matches!(e, PtqError::UnsupportedSpec { .. }), "{e}");
    }
}
