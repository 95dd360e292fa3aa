//! [`Algorithm`]: any Stage-2 algorithm as plain serde data, chosen by name (`--algo gptq`, a
//! recipe's `algo = "qronos"`).

use std::str::FromStr;

use burn::tensor::Tensor;
use burn_quant_core::QuantSpec;
use serde::{Deserialize, Serialize};

use crate::algorithm::{HostQuantized, Stage2Algorithm};
use crate::error::{PtqError, Result};
use crate::stats::{CalibInputs, LayerStats};
use crate::{Gpfq, Gptaq, Gptq, Qronos, Rtn};

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
}

impl Algorithm {
    /// The names [`Algorithm::from_str`] accepts.
    pub const NAMES: [&'static str; 5] = ["rtn", "gptq", "gpfq", "gptaq", "qronos"];

    /// Turns act-order on or off (no effect on RTN).
    pub fn with_act_order(self, on: bool) -> Self {
        match self {
            Algorithm::Rtn(a) => Algorithm::Rtn(a),
            Algorithm::Gptq(a) => Algorithm::Gptq(a.with_act_order(on)),
            Algorithm::Gpfq(a) => Algorithm::Gpfq(a.with_act_order(on)),
            Algorithm::Gptaq(a) => Algorithm::Gptaq(a.with_act_order(on)),
            Algorithm::Qronos(a) => Algorithm::Qronos(a.with_act_order(on)),
        }
    }

    fn inner(&self) -> &dyn Stage2Algorithm {
        match self {
            Algorithm::Rtn(a) => a,
            Algorithm::Gptq(a) => a,
            Algorithm::Gpfq(a) => a,
            Algorithm::Gptaq(a) => a,
            Algorithm::Qronos(a) => a,
        }
    }
}

impl FromStr for Algorithm {
    type Err = PtqError;

    /// `rtn`, `gptq`, `gpfq`, `gptaq` or `qronos` (any case), with default settings.
    fn from_str(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "rtn" => Algorithm::Rtn(Rtn),
            "gptq" => Algorithm::Gptq(Gptq::default()),
            "gpfq" => Algorithm::Gpfq(Gpfq::default()),
            "gptaq" => Algorithm::Gptaq(Gptaq::default()),
            "qronos" => Algorithm::Qronos(Qronos::default()),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
