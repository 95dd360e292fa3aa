//! [`Algorithm`]: any Stage-2 algorithm as plain serde data, chosen by name (`--algo gptq`, a
//! recipe's `algo = "qronos"`).

use std::str::FromStr;

use burn::tensor::Tensor;
use burn_quant_core::QuantSpec;
use serde::{Deserialize, Serialize};

use crate::algorithm::{HostQuantized, Prepared, Stage2Algorithm};
use crate::error::{PtqError, Result};
use crate::stats::{CalibInputs, LayerStats};
use crate::{Adaround, AutoRound, Gpfq, Gptaq, Gptq, Qronos, Rtn};

/// One of the Stage-2 algorithms with its configuration; implements [`Stage2Algorithm`] by
/// delegation. Serialised as `{"algo": "gptq", "percdamp": 0.01, …}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algo", rename_all = "snake_case")]
pub enum Algorithm {
    /// Round to nearest.
    Rtn(Rtn),
    /// GPTQ.
    Gptq(Gptq),
    /// GPFQ.
    Gpfq(Gpfq),
    /// GPTAQ.
    Gptaq(Gptaq),
    /// Qronos.
    Qronos(Qronos),
    /// AdaRound (learned rounding with RTN's scales).
    Adaround(Adaround),
    /// AutoRound (learned rounding and clipping by sign-SGD; block-wise in the LLM pipeline,
    /// layer-wise through [`Stage2Algorithm`]).
    #[serde(rename = "autoround")]
    AutoRound(AutoRound),
}

impl Algorithm {
    /// The names [`Algorithm::from_str`] accepts.
    pub const NAMES: [&'static str; 7] = [
        "rtn",
        "gptq",
        "gpfq",
        "gptaq",
        "qronos",
        "adaround",
        "autoround",
    ];

    /// Turns act-order on or off (no effect on RTN or AdaRound).
    pub fn with_act_order(self, on: bool) -> Self {
        match self {
            Algorithm::Rtn(a) => Algorithm::Rtn(a),
            Algorithm::Gptq(a) => Algorithm::Gptq(a.with_act_order(on)),
            Algorithm::Gpfq(a) => Algorithm::Gpfq(a.with_act_order(on)),
            Algorithm::Gptaq(a) => Algorithm::Gptaq(a.with_act_order(on)),
            Algorithm::Qronos(a) => Algorithm::Qronos(a.with_act_order(on)),
            Algorithm::Adaround(a) => Algorithm::Adaround(a),
            Algorithm::AutoRound(a) => Algorithm::AutoRound(a),
        }
    }

    /// Freezes group parameters before the sweep (`true`: every group's scales and zero-points
    /// come from the weight before any error feedback, as Brevitas's frozen weight scales) or
    /// computes each group's during the sweep (`false`; when, see
    /// [`DynamicGroupTiming`](crate::DynamicGroupTiming)). Sets `static_groups` of GPTQ,
    /// GPTAQ and Qronos; no effect on RTN (no sweep), GPFQ (its weight never changes, so its
    /// parameters are always those of the untouched weight) or AdaRound (RTN's parameters).
    pub fn with_static_groups(self, on: bool) -> Self {
        match self {
            Algorithm::Rtn(a) => Algorithm::Rtn(a),
            Algorithm::Gptq(a) => Algorithm::Gptq(a.with_static_groups(on)),
            Algorithm::Gpfq(a) => Algorithm::Gpfq(a),
            Algorithm::Gptaq(a) => Algorithm::Gptaq(a.with_static_groups(on)),
            Algorithm::Qronos(a) => Algorithm::Qronos(a.with_static_groups(on)),
            Algorithm::Adaround(a) => Algorithm::Adaround(a),
            Algorithm::AutoRound(a) => Algorithm::AutoRound(a),
        }
    }

    /// Checks every field of the configuration (e.g. after deserialising a recipe, before any
    /// calibration runs): a [`PtqError::InvalidConfig`] naming the field (`percdamp`, `alpha`,
    /// `block_size`, `power_iters`) and its value. [`Stage2Algorithm::quantize`] runs the same
    /// checks.
    pub fn validate(&self) -> Result<()> {
        match self {
            Algorithm::Rtn(_) => Ok(()),
            Algorithm::Gptq(a) => a.validate(),
            Algorithm::Gpfq(a) => a.validate(),
            Algorithm::Gptaq(a) => a.validate(),
            Algorithm::Qronos(a) => a.validate(),
            Algorithm::Adaround(a) => a.validate(),
            Algorithm::AutoRound(a) => a.validate(),
        }
    }

    fn inner(&self) -> &dyn Stage2Algorithm {
        match self {
            Algorithm::Rtn(a) => a,
            Algorithm::Gptq(a) => a,
            Algorithm::Gpfq(a) => a,
            Algorithm::Gptaq(a) => a,
            Algorithm::Qronos(a) => a,
            Algorithm::Adaround(a) => a,
            Algorithm::AutoRound(a) => a,
        }
    }
}

impl FromStr for Algorithm {
    type Err = PtqError;

    /// `rtn`, `gptq`, `gpfq`, `gptaq`, `qronos` or `adaround` (any case), with default
    /// settings.
    fn from_str(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "rtn" => Algorithm::Rtn(Rtn),
            "gptq" => Algorithm::Gptq(Gptq::default()),
            "gpfq" => Algorithm::Gpfq(Gpfq::default()),
            "gptaq" => Algorithm::Gptaq(Gptaq::default()),
            "qronos" => Algorithm::Qronos(Qronos::default()),
            "adaround" => Algorithm::Adaround(Adaround::default()),
            "autoround" => Algorithm::AutoRound(AutoRound::default()),
            _ => {
                return Err(PtqError::config(
                    "algo",
                    name,
                    format!("expected one of {}", Self::NAMES.join(", ")),
                ));
            }
        })
    }
}

impl Stage2Algorithm for Algorithm {
    fn name(&self) -> &'static str {
        self.inner().name()
    }
    fn inputs(&self) -> CalibInputs {
        self.inner().inputs()
    }
    fn new_stats(&self, d_in: usize) -> LayerStats {
        self.inner().new_stats(d_in)
    }
    fn observe(
        &self,
        stats: &mut LayerStats,
        x: &Tensor<2>,
        x_quant: Option<&Tensor<2>>,
    ) -> Result<()> {
        self.inner().observe(stats, x, x_quant)
    }
    fn quantize_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        stats: &LayerStats,
        spec: &QuantSpec,
    ) -> Result<HostQuantized> {
        self.inner().quantize_host(weight, shape, stats, spec)
    }
    fn prepare<'a>(&self, stats: &'a LayerStats) -> Result<Prepared<'a>> {
        self.inner().prepare(stats)
    }
    fn quantize_prepared_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        prepared: &Prepared<'_>,
        spec: &QuantSpec,
    ) -> Result<HostQuantized> {
        self.inner()
            .quantize_prepared_host(weight, shape, prepared, spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DynamicGroupTiming;

    #[test]
    fn names_round_trip_and_configs_serialise() {
        for name in Algorithm::NAMES {
            let a: Algorithm = name.parse().unwrap();
            assert_eq!(a.name(), name);
            let json = serde_json::to_string(&a).unwrap();
            assert!(json.contains(&format!("\"algo\":\"{name}\"")), "{json}");
            assert_eq!(serde_json::from_str::<Algorithm>(&json).unwrap(), a);
        }
        // Missing fields take the defaults.
        let a: Algorithm =
            serde_json::from_str(r#"{"algo": "qronos", "act_order": true}"#).unwrap();
        assert_eq!(a, Algorithm::Qronos(Qronos::default().with_act_order(true)));
        assert!(matches!(
            "optq".parse::<Algorithm>(),
            Err(PtqError::InvalidConfig { field: "algo", .. })
        ));
        let a: Algorithm = "GPTQ".parse::<Algorithm>().unwrap().with_act_order(true);
        assert_eq!(a, Algorithm::Gptq(Gptq::default().with_act_order(true)));
        assert_eq!(
            "gpfq".parse::<Algorithm>().unwrap().inputs(),
            CalibInputs::FloatAndQuantized
        );
        assert_eq!(
            "rtn".parse::<Algorithm>().unwrap().inputs(),
            CalibInputs::None
        );
        assert_eq!(
            "AdaRound".parse::<Algorithm>().unwrap(),
            Algorithm::Adaround(Adaround::default())
        );
        assert_eq!(
            "adaround".parse::<Algorithm>().unwrap().inputs(),
            CalibInputs::Quantized
        );
        let a: Algorithm = serde_json::from_str(
            r#"{"algo": "adaround", "iterations": 200, "float_target": true}"#,
        )
        .unwrap();
        assert_eq!(
            a,
            Algorithm::Adaround(
                Adaround::default()
                    .with_iterations(200)
                    .with_float_target(true)
            )
        );
        assert_eq!(a.inputs(), CalibInputs::FloatAndQuantized);
    }

    #[test]
    fn static_groups_set_and_serialise() {
        for name in Algorithm::NAMES {
            let a: Algorithm = name.parse().unwrap();
            let on = a.with_static_groups(true);
            match on {
                Algorithm::Gptq(g) => assert!(g.static_groups),
                Algorithm::Gptaq(g) => assert!(g.static_groups),
                Algorithm::Qronos(q) => assert!(q.static_groups),
                // No sweep (RTN), a weight that never changes (GPFQ) or RTN's parameters
                // (AdaRound): nothing to set.
                Algorithm::Rtn(_)
                | Algorithm::Gpfq(_)
                | Algorithm::Adaround(_)
                | Algorithm::AutoRound(_) => assert_eq!(on, a),
            }
            for v in [on, a.with_static_groups(false)] {
                let json = serde_json::to_string(&v).unwrap();
                assert_eq!(
                    serde_json::from_str::<Algorithm>(&json).unwrap(),
                    v,
                    "{json}"
                );
            }
        }
        assert_eq!(
            Algorithm::Qronos(Qronos::default()).with_static_groups(false),
            Algorithm::Qronos(Qronos::default().with_static_groups(false))
        );
        // Every field of GPTAQ travels, non-default values included.
        let a = Algorithm::Gptaq(Gptaq {
            percdamp: 0.05,
            alpha: 0.125,
            block_size: 64,
            act_order: true,
            static_groups: true,
            dynamic_group_timing: DynamicGroupTiming::GroupStart,
        });
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("\"static_groups\":true"), "{json}");
        assert!(
            json.contains("\"dynamic_group_timing\":\"group_start\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Algorithm>(&json).unwrap(), a);
        let a: Algorithm =
            serde_json::from_str(r#"{"algo": "gptaq", "static_groups": true, "alpha": 0.5}"#)
                .unwrap();
        assert_eq!(
            a,
            Algorithm::Gptaq(Gptaq::default().with_static_groups(true).with_alpha(0.5))
        );
        a.validate().unwrap();
        let a: Algorithm =
            serde_json::from_str(r#"{"algo": "gptq", "dynamic_group_timing": "group_start"}"#)
                .unwrap();
        assert_eq!(
            a,
            Algorithm::Gptq(
                Gptq::default().with_dynamic_group_timing(DynamicGroupTiming::GroupStart)
            )
        );
        assert!(
            serde_json::from_str::<Algorithm>(
                r#"{"algo": "gptq", "dynamic_group_timing": "late"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn bad_values_are_typed_errors_naming_the_field() {
        fn field(a: Algorithm) -> &'static str {
            match a.validate() {
                Err(PtqError::InvalidConfig { field, .. }) => field,
                other => panic!("{a:?}: {other:?}"),
            }
        }
        let gptaq: Algorithm =
            serde_json::from_str(r#"{"algo": "gptaq", "alpha": -0.25}"#).unwrap();
        assert_eq!(field(gptaq), "alpha");
        let msg = gptaq.validate().unwrap_err().to_string();
        assert!(msg.contains("alpha") && msg.contains("-0.25"), "{msg}");
        assert_eq!(
            field(Algorithm::Gptaq(Gptaq::default().with_alpha(f64::NAN))),
            "alpha"
        );
        assert_eq!(
            field(Algorithm::Gptaq(Gptaq::default().with_percdamp(0.0))),
            "percdamp"
        );
        assert_eq!(
            field(Algorithm::Gptq(Gptq::default().with_percdamp(f64::NAN))),
            "percdamp"
        );
        assert_eq!(
            field(Algorithm::Gptq(Gptq::default().with_block_size(0))),
            "block_size"
        );
        assert_eq!(
            field(Algorithm::Qronos(Qronos::default().with_alpha(f64::NAN))),
            "alpha"
        );
        assert_eq!(
            field(Algorithm::Qronos(Qronos::default().with_alpha(-1e-6))),
            "alpha"
        );
        let q: Algorithm = serde_json::from_str(r#"{"algo": "qronos", "power_iters": 0}"#).unwrap();
        assert_eq!(field(q), "power_iters");
        assert_eq!(
            field(Algorithm::Gpfq(Gpfq::default().with_block_size(0))),
            "block_size"
        );
        assert_eq!(
            field(Algorithm::Adaround(Adaround::default().with_lambda(-1.0))),
            "lambda"
        );
        // Quantizing runs the same checks.
        let n = 8;
        let stats = crate::testutil::stats(&crate::testutil::correlated(32, n, 1), None, n, true);
        let err = gptaq
            .quantize_host(
                &vec![0.1; n * 4],
                [n, 4],
                &stats,
                &QuantSpec::int4_weight_per_group(8),
            )
            .unwrap_err();
        assert!(
            matches!(err, PtqError::InvalidConfig { field: "alpha", .. }),
            "{err}"
        );
        for name in Algorithm::NAMES {
            name.parse::<Algorithm>().unwrap().validate().unwrap();
        }
    }

    /// With `static_groups` on, GPTQ, GPTAQ and Qronos compute every group's parameters from
    /// the untouched weight before the sweep (as Brevitas's frozen weight scales): exactly
    /// RTN's parameters, with and without act-order, for int groups (a short last one
    /// included) and a k-quant; only the codes differ. Dynamic groups (GPTQ, GPTAQ) see the
    /// feedback and differ.
    #[test]
    fn static_groups_are_found_from_the_original_weight() {
        let (n, m, t) = (256, 32, 800);
        let x = crate::testutil::correlated(t, n, 61);
        let xq = crate::testutil::perturbed(&x, n, 0.2, 62);
        let w = crate::testutil::weights(n, m, 63);
        let stats = crate::testutil::stats(&x, Some(&xq), n, true);
        for spec in [
            QuantSpec::int4_weight_per_group(32),
            QuantSpec::int4_weight_per_group(32)
                .with_bits(3)
                .asymmetric(),
            // A short last group: 256 = 2·96 + 64.
            QuantSpec::int4_weight_per_group(96),
            QuantSpec::gguf_q4_k(),
        ] {
            let rtn = Rtn.quantize_host(&w, [n, m], &stats, &spec).unwrap();
            for name in ["gptq", "gptaq", "qronos"] {
                for act in [false, true] {
                    let a = name
                        .parse::<Algorithm>()
                        .unwrap()
                        .with_act_order(act)
                        .with_static_groups(true);
                    let q = a.quantize_host(&w, [n, m], &stats, &spec).unwrap();
                    assert!(!q.report.dynamic_groups, "{name} {spec}");
                    assert_eq!(q.params, rtn.params, "{name} {spec} act-order {act}");
                    assert_ne!(q.codes, rtn.codes, "{name} {spec} act-order {act}");
                }
            }
        }
        let spec = QuantSpec::int4_weight_per_group(32);
        let rtn = Rtn.quantize_host(&w, [n, m], &stats, &spec).unwrap();
        for name in ["gptq", "gptaq"] {
            let a = name.parse::<Algorithm>().unwrap().with_static_groups(false);
            let q = a.quantize_host(&w, [n, m], &stats, &spec).unwrap();
            assert!(q.report.dynamic_groups, "{name}");
            assert_ne!(q.params, rtn.params, "{name}");
        }
    }
}
