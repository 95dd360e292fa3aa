//! RTN: round every weight to the nearest grid point of its group, no data (notes §1). The
//! baseline every other algorithm is compared with, and the fallback when a Hessian cannot be
//! factored at any damping.

use std::time::Instant;

use burn_quant_core::QuantSpec;
use burn_quant_core::host::HostParams;
use serde::{Deserialize, Serialize};

use crate::algorithm::{HostQuantized, LayerReport, Stage2Algorithm, check_weight};
use crate::error::Result;
use crate::quantizer::{ParamTiming, RowQuantizer};
use crate::stats::{CalibInputs, LayerStats};

/// Round-to-nearest with the spec's own scales: identical to `burn_quant_core::quantize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rtn;

impl Stage2Algorithm for Rtn {
    fn name(&self) -> &'static str {
        "rtn"
    }

    fn inputs(&self) -> CalibInputs {
        CalibInputs::None
    }

    fn quantize_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        stats: &LayerStats,
        spec: &QuantSpec,
    ) -> Result<HostQuantized> {
        let started = Instant::now();
        let [n, m] = check_weight(weight, shape, stats.d_in())?;
        let (codes, params, w_hat) = rtn_host("rtn", weight, n, m, spec)?;
        let mut report = LayerReport::new("rtn", shape, stats.tokens());
        report.seconds = started.elapsed().as_secs_f64();
        Ok(HostQuantized {
            codes,
            params,
            w_hat,
            shape,
            report,
        })
    }
}

/// Codes, parameters and dequantized values of `w` (`[n, m]`) by RTN.
pub(crate) fn rtn_host(
    algorithm: &'static str,
    w: &[f32],
    n: usize,
    m: usize,
    spec: &QuantSpec,
) -> Result<(Vec<i32>, HostParams, Vec<f32>)> {
    let rq = RowQuantizer::new(algorithm, spec, w, n, m, ParamTiming::Static, false)?;
    let mut codes = vec![0i32; n * m];
    let mut w_hat = vec![0f32; n * m];
    for r in 0..rq.rows() {
        let span = r * m..(r + 1) * m;
        rq.quantize_row(
            r,
            &w[span.clone()],
            &mut codes[span.clone()],
            &mut w_hat[span],
        );
    }
    Ok((codes, rq.into_params(), w_hat))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Tensor, TensorData};
    use burn_quant_core::quantize;

    #[test]
    fn rtn_is_the_cores_quantize() {
        let device = Device::flex();
        let (n, m) = (256, 48);
        let w = crate::testutil::weights(n, m, 5);
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, m]), &device);
        let stats = Rtn.new_stats(n);
        for spec in [
            QuantSpec::int4_weight_per_group(64),
            QuantSpec::int4_weight_per_group(64)
                .with_bits(3)
                .asymmetric(),
            QuantSpec::int8_weight_per_channel().with_bits(4),
            QuantSpec::gguf_q4_k(),
        ] {
            let q = Rtn.quantize(&wt, &stats, &spec).unwrap();
            let core = quantize(wt.clone(), &spec).unwrap();
            assert_eq!(q.tensor.codes_vec(), core.codes_vec(), "{spec}");
            assert_eq!(
                q.tensor.params().to_host(),
                core.params().to_host(),
                "{spec}"
            );
            assert_eq!(q.report.algorithm, "rtn");
        }
        // Idempotence on the grid (notes §1 oracle): quantizing Ŵ again gives the same codes
        // (the recomputed absmax scale `7s/7` may differ from `s` by an ulp).
        let spec = QuantSpec::int4_weight_per_group(64);
        let first = Rtn.quantize_host(&w, [n, m], &stats, &spec).unwrap();
        let again = Rtn
            .quantize_host(&first.w_hat, [n, m], &stats, &spec)
            .unwrap();
        assert_eq!(again.codes, first.codes);
        assert!(
            again
                .w_hat
                .iter()
                .zip(&first.w_hat)
                .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs())
        );
    }

    /// A spec written by role is resolved as `WeightLayout::Linear` by every Stage 2
    /// algorithm: the same codes and parameters as the explicit `Linear` spec, and the result
    /// carries the explicit spec.
    #[test]
    fn role_specs_are_resolved_as_linear_by_every_algorithm() {
        use crate::testutil::{correlated, upstream};
        use crate::{Adaround, Gpfq, Gptaq, Gptq, Qronos};
        let (n, m, tokens) = (64, 24, 256);
        let w = crate::testutil::weights(n, m, 9);
        let x = correlated(tokens, n, 3);
        let (xf, xq) = upstream(tokens, n, 4, 4);
        let algorithms: Vec<Box<dyn Stage2Algorithm>> = vec![
            Box::new(Rtn),
            Box::new(Gptq::default()),
            Box::new(Gpfq::default()),
            Box::new(Gptaq::default()),
            Box::new(Qronos::default()),
            Box::new(Adaround::default().with_iterations(20)),
        ];
        for (role, explicit) in [
            (
                QuantSpec::int8_weight_per_output_channel().with_bits(4),
                QuantSpec::int8_weight_per_channel().with_bits(4),
            ),
            (
                QuantSpec::int4_weight_per_input_group(16),
                QuantSpec::int4_weight_per_group(16),
            ),
        ] {
            for algo in &algorithms {
                let paired = algo.inputs() == crate::CalibInputs::FloatAndQuantized;
                let stats = if paired {
                    crate::testutil::stats(&xf, Some(&xq), n, true)
                } else {
                    crate::testutil::stats(&x, None, n, false)
                };
                let by_role = algo.quantize_host(&w, [n, m], &stats, &role).unwrap();
                let by_axis = algo.quantize_host(&w, [n, m], &stats, &explicit).unwrap();
                let name = algo.name();
                assert_eq!(by_role.codes, by_axis.codes, "{name} {role}");
                assert_eq!(by_role.params, by_axis.params, "{name} {role}");
                let q = by_role.into_quantized(&role, &Device::flex()).unwrap();
                assert_eq!(q.tensor.spec, explicit, "{name} {role}");
            }
        }
    }
}
