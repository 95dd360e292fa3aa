//! Rounding rules and their gradients.
//!
//! A rounding rule has two halves: the forward value (which integer an element goes to) and the
//! gradient used in backward (a surrogate, since the true derivative of rounding is zero almost
//! everywhere). [`RoundingFn`] is the one trait to implement for a new rule; the built-in
//! [`Rounding`] variants use the straight-through estimator (surrogate gradient 1).
//!
//! # Custom rules are named in the spec
//!
//! A custom rule is registered once per process under a name ([`register_rounding`]) and a spec
//! names it: `Rounding::Custom { name }`, written `rounding = { kind = "custom", name = "rdfs" }`
//! in a TOML recipe (Brevitas names its rule the same way, `float_to_int_impl_type =
//! ROUND_RDFS`). The spec stays plain `Copy` serde data, and every quantizer that holds it — on
//! any thread, on any device, in a model forked to training workers — resolves the same rule
//! from the process-wide registry. An unregistered name is a typed error
//! ([`QuantError::UnknownRounding`]) from [`QuantSpec::validate`](crate::QuantSpec::validate)
//! and from every quantization call.
//!
//! ```
//! use std::sync::Arc;
//! use burn_quant_core::rounding::{Rounding, register_rounding};
//! use burn_quant_core::QuantSpec;
//!
//! // A rule of one's own (here simply floor), registered under a name.
//! let floor = register_rounding("doc_floor", Arc::new(Rounding::Floor)).unwrap();
//! let spec = QuantSpec::int8_weight_per_tensor().with_rounding(floor);
//! spec.validate().unwrap();
//! let json = serde_json::to_string(&spec.rounding).unwrap();
//! assert_eq!(json, r#"{"kind":"custom","name":"doc_floor"}"#);
//! let unknown: Rounding = serde_json::from_str(r#"{"kind":"custom","name":"nowhere"}"#).unwrap();
//! assert!(QuantSpec::int8_weight_per_tensor().with_rounding(unknown).validate().is_err());
//! ```

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{QuantError, Result};

/// Built-in rounding rules (plain serde data, usable in recipes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rounding {
    /// Round to nearest, ties to even (IEEE default; ONNX QuantizeLinear).
    #[default]
    NearestEven,
    /// Round to nearest, ties away from zero (Python `decimal.ROUND_HALF_UP`, QONNX `HALF_UP`).
    HalfUp,
    /// Toward −∞.
    Floor,
    /// Toward +∞.
    Ceil,
    /// Toward zero.
    TowardZero,
    /// `floor(x + u)` with u ~ U[0, 1) drawn from a counter-based generator keyed by `seed` and
    /// the element's flat index: the same seed and shape always give the same result, on any
    /// number of threads.
    Stochastic {
        /// Generator seed.
        seed: u64,
    },
    /// A custom rule registered under `name` with [`register_rounding`] (forward value and
    /// surrogate gradient of its [`RoundingFn`]). Every tensor path honours it: fake-quant,
    /// quantizers, weight quantizers, and [`crate::quantize_with`] (whose codes are the grid
    /// points of the rule's fake-quant value). Element-by-element host code that cannot call a
    /// tensor rule (Stage 2 PTQ algorithms, MSE scale searches) rounds it to nearest even.
    Custom {
        /// The registered name.
        name: RoundingName,
    },
}

/// The name of a custom rounding rule: 1 to [`RoundingName::MAX_LEN`] ASCII letters, digits,
/// `_`, `-` or `.`, stored inline so that [`Rounding`] and every spec holding it stay `Copy`.
/// Serializes as a plain string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoundingName {
    len: u8,
    bytes: [u8; RoundingName::MAX_LEN],
}

impl RoundingName {
    /// The longest name, in bytes.
    pub const MAX_LEN: usize = 31;

    /// Checks and stores `name`.
    pub fn new(name: &str) -> Result<Self> {
        let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.');
        if name.is_empty() || name.len() > Self::MAX_LEN || !name.bytes().all(ok_char) {
            return Err(QuantError::config(
                "rounding.name",
                format!("{name:?}"),
                format!(
                    "a rounding rule's name is 1 to {} ASCII letters, digits, `_`, `-` or `.`",
                    Self::MAX_LEN
                ),
            ));
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("checked ASCII in `new`")
    }
}

impl fmt::Display for RoundingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Debug for RoundingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for RoundingName {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RoundingName {
    fn deserialize<De: Deserializer<'de>>(d: De) -> std::result::Result<Self, De::Error> {
        let name = String::deserialize(d)?;
        RoundingName::new(&name).map_err(serde::de::Error::custom)
    }
}

type Registry = HashMap<RoundingName, Arc<dyn RoundingFn>>;

/// The process-wide registry of custom rules.
static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(Default::default);

/// Registers `rule` under `name` for the whole process (every thread, every device) and returns
/// the [`Rounding`] that names it, to put in a spec. Registering a name again replaces its rule
/// for every later call (register before building or training a model, once).
///
/// # Errors
/// [`QuantError::InvalidConfig`] when `name` is not a valid [`RoundingName`].
pub fn register_rounding(name: &str, rule: Arc<dyn RoundingFn>) -> Result<Rounding> {
    let name = RoundingName::new(name)?;
    REGISTRY
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name, rule);
    Ok(Rounding::Custom { name })
}

/// The rule registered under `name`, if any.
pub fn registered_rounding(name: &RoundingName) -> Option<Arc<dyn RoundingFn>> {
    REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .cloned()
}

/// The registered names, sorted.
pub fn registered_roundings() -> Vec<RoundingName> {
    let mut names: Vec<RoundingName> = REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .copied()
        .collect();
    names.sort();
    names
}

fn unknown(name: &RoundingName) -> QuantError {
    QuantError::UnknownRounding {
        name: name.to_string(),
        registered: registered_roundings()
            .iter()
            .map(|n| n.to_string())
            .collect(),
    }
}

/// A rounding rule for the tensor (autodiff) path: forward value plus surrogate gradient.
///
/// Both methods act element by element on a flattened tensor, so the trait is object safe and
/// works for tensors of every rank. Implement this trait in one file to add a rounding rule;
/// nothing else needs to change (see `examples/rdfs_rounding.rs`).
pub trait RoundingFn: Debug + Send + Sync {
    /// Short name, shown in reports.
    fn name(&self) -> &str;
    /// The rounded value of each element of `x` (x is in grid units).
    fn forward(&self, x: Tensor<1>) -> Tensor<1>;
    /// [`RoundingFn::forward`] for inputs known to satisfy |x| < 2^22 (every clamped grid
    /// value); a rule may use a cheaper formula there. The default is `forward`.
    fn forward_bounded(&self, x: Tensor<1>) -> Tensor<1> {
        self.forward(x)
    }
    /// The surrogate derivative d forward / dx at each element, used in backward.
    /// The default is the straight-through estimator (1 everywhere).
    fn surrogate_grad(&self, x: Tensor<1>) -> Tensor<1> {
        x.ones_like()
    }
    /// Whether the surrogate is the identity; lets the caller skip a multiplication.
    fn is_straight_through(&self) -> bool {
        false
    }
}

impl Rounding {
    /// The rule to call: a built-in rule itself, a custom one from the registry.
    ///
    /// # Errors
    /// [`QuantError::UnknownRounding`] for a custom name that is not registered.
    pub fn resolve(&self) -> Result<Arc<dyn RoundingFn>> {
        match self {
            Rounding::Custom { name } => registered_rounding(name).ok_or_else(|| unknown(name)),
            builtin => Ok(Arc::new(*builtin)),
        }
    }

    /// Checks that a custom name is registered (built-in rules always are).
    ///
    /// # Errors
    /// [`QuantError::UnknownRounding`] naming the rule.
    pub fn check_registered(&self) -> Result<()> {
        match self {
            Rounding::Custom { name } if registered_rounding(name).is_none() => Err(unknown(name)),
            _ => Ok(()),
        }
    }

    /// Whether this is a registered-name rule rather than a built-in one.
    pub fn is_custom(&self) -> bool {
        matches!(self, Rounding::Custom { .. })
    }

    /// The registered rule behind a custom name, for the `RoundingFn` methods below.
    ///
    /// # Panics
    /// When the name is not registered: those methods cannot return an error. Library paths
    /// call [`Rounding::resolve`] first and return [`QuantError::UnknownRounding`] instead.
    fn custom_rule(name: &RoundingName) -> Arc<dyn RoundingFn> {
        registered_rounding(name).unwrap_or_else(|| panic!("{}", unknown(name)))
    }

    /// The rule for the `call`-th use of a quantizer: stochastic rounding gets a seed derived
    /// from its own and `call` (call 0 keeps the seed), so a quantizer that counts its calls
    /// draws fresh noise at every training step while the whole run stays a function of the
    /// seed. Every other rule is returned unchanged.
    pub fn for_call(self, call: u64) -> Rounding {
        match self {
            Rounding::Stochastic { seed } if call > 0 => Rounding::Stochastic {
                seed: mix64(seed ^ call.wrapping_mul(0xD1B5_4A32_D192_ED03)),
            },
            other => other,
        }
    }
}

impl RoundingFn for Rounding {
    fn name(&self) -> &str {
        match self {
            Rounding::NearestEven => "nearest_even",
            Rounding::HalfUp => "half_up",
            Rounding::Floor => "floor",
            Rounding::Ceil => "ceil",
            Rounding::TowardZero => "toward_zero",
            Rounding::Stochastic { .. } => "stochastic",
            Rounding::Custom { name } => name.as_str(),
        }
    }

    fn forward(&self, x: Tensor<1>) -> Tensor<1> {
        match self {
            Rounding::NearestEven => x.round(),
            Rounding::HalfUp => {
                let sign = x.clone().sign();
                x.abs().add_scalar(0.5).floor() * sign
            }
            Rounding::Floor => x.floor(),
            Rounding::Ceil => x.ceil(),
            Rounding::TowardZero => x.trunc(),
            Rounding::Stochastic { seed } => {
                let noise = uniform_noise(*seed, x.dims()[0], &x.device());
                (x + noise).floor()
            }
            Rounding::Custom { name } => Self::custom_rule(name).forward(x),
        }
    }

    fn forward_bounded(&self, x: Tensor<1>) -> Tensor<1> {
        match self {
            // Adding 1.5·2^23 lands in [2^23, 2^24), where the f32 spacing is 1: the FPU's own
            // ties-to-even rounding does the work, in two element-wise passes (Burn's `round`
            // is a much slower scalar loop on the CPU backend).
            Rounding::NearestEven => x.add_scalar(12_582_912.0).sub_scalar(12_582_912.0),
            Rounding::Custom { name } => Self::custom_rule(name).forward_bounded(x),
            other => other.forward(x),
        }
    }

    fn surrogate_grad(&self, x: Tensor<1>) -> Tensor<1> {
        match self {
            Rounding::Custom { name } => Self::custom_rule(name).surrogate_grad(x),
            _ => x.ones_like(),
        }
    }

    fn is_straight_through(&self) -> bool {
        match self {
            Rounding::Custom { name } => Self::custom_rule(name).is_straight_through(),
            _ => true,
        }
    }
}

/// A uniform sample in [0, 1) for element `index` under `seed` (SplitMix64 of the pair).
///
/// Counter-based, so the value depends only on (seed, index): deterministic under any
/// parallel schedule.
#[inline(always)]
pub fn uniform(seed: u64, index: u64) -> f32 {
    let z = mix64(
        (seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x9E37_79B9_7F4A_7C15),
    );
    // 24 random bits -> exactly representable in f32, strictly below 1.
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// SplitMix64's output function (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tensor of `len` uniform samples for `seed`, element i = [`uniform`]`(seed, i)`.
pub fn uniform_noise(seed: u64, len: usize, device: &Device) -> Tensor<1> {
    let v: Vec<f32> = (0..len as u64).map(|i| uniform(seed, i)).collect();
    Tensor::from_data(TensorData::new(v, [len]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule that rounds like floor and counts its forward calls (per process).
    #[derive(Debug, Default)]
    struct CountingFloor(std::sync::atomic::AtomicUsize);

    impl RoundingFn for CountingFloor {
        fn name(&self) -> &str {
            "counting_floor"
        }
        fn forward(&self, x: Tensor<1>) -> Tensor<1> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            x.floor()
        }
        fn surrogate_grad(&self, x: Tensor<1>) -> Tensor<1> {
            x.ones_like().mul_scalar(0.5)
        }
    }

    #[test]
    fn names_are_checked_copy_and_serialize_as_strings() {
        for bad in [
            "",
            "has space",
            "ünï",
            &"x".repeat(RoundingName::MAX_LEN + 1),
        ] {
            assert!(
                matches!(
                    RoundingName::new(bad),
                    Err(QuantError::InvalidConfig {
                        field: "rounding.name",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        let long = "a.b-c_D9".repeat(3);
        let name = RoundingName::new(&long).unwrap();
        assert_eq!(name.as_str(), long);
        let r = Rounding::Custom { name };
        let copy = r;
        assert_eq!(copy, r);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!(r#"{{"kind":"custom","name":"{long}"}}"#));
        assert_eq!(serde_json::from_str::<Rounding>(&json).unwrap(), r);
        // Built-in rules keep their serde form.
        assert_eq!(
            serde_json::to_string(&Rounding::Stochastic { seed: 3 }).unwrap(),
            r#"{"kind":"stochastic","seed":3}"#
        );
        let bad = serde_json::from_str::<Rounding>(r#"{"kind":"custom","name":"a b"}"#);
        assert!(bad.unwrap_err().to_string().contains("rounding.name"));
    }

    #[test]
    fn registered_rules_resolve_and_unknown_names_are_typed_errors() {
        let rule = Arc::new(CountingFloor::default());
        let r = register_rounding("test_counting_floor", rule.clone()).unwrap();
        assert!(r.is_custom());
        assert_eq!(r.name(), "test_counting_floor");
        assert!(
            registered_roundings().contains(&RoundingName::new("test_counting_floor").unwrap())
        );
        r.check_registered().unwrap();
        let device = Device::flex();
        let x = Tensor::<1>::from_floats([0.5, -0.5, 1.7], &device);
        let y = r.resolve().unwrap().forward(x.clone());
        assert_eq!(
            y.into_data().try_into_vec_as::<f32>().unwrap(),
            vec![0.0, -1.0, 1.0]
        );
        // `Rounding` itself delegates to the registered rule.
        assert!(!r.is_straight_through());
        let g = r
            .surrogate_grad(x.clone())
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        assert_eq!(g, vec![0.5; 3]);
        assert_eq!(rule.0.load(std::sync::atomic::Ordering::Relaxed), 1);

        let missing = Rounding::Custom {
            name: RoundingName::new("test_never_registered").unwrap(),
        };
        let e = missing.resolve().unwrap_err();
        match &e {
            QuantError::UnknownRounding { name, registered } => {
                assert_eq!(name, "test_never_registered");
                assert!(registered.iter().any(|n| n == "test_counting_floor"));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("test_never_registered"));
        assert_eq!(missing.check_registered().unwrap_err(), e);
        assert_eq!(Rounding::Floor.check_registered(), Ok(()));
    }

    #[test]
    fn per_call_seeds_are_distinct_and_leave_other_rules_alone() {
        let r = Rounding::Stochastic { seed: 7 };
        assert_eq!(r.for_call(0), r);
        let seeds: std::collections::HashSet<Rounding> = (0..1000).map(|c| r.for_call(c)).collect();
        assert_eq!(seeds.len(), 1000);
        assert_eq!(r.for_call(5), r.for_call(5));
        assert_ne!(Rounding::Stochastic { seed: 8 }.for_call(5), r.for_call(5));
        assert_eq!(Rounding::Floor.for_call(3), Rounding::Floor);
    }
    use crate::format::RoundMode;

    #[test]
    fn tensor_rounding_equals_the_host_rule_on_ties_and_signs() {
        let device = Device::flex();
        let xs = [
            -2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, -1.2, 1.7, 0.0, 3.49, -3.51,
        ];
        let cases = [
            (Rounding::NearestEven, RoundMode::NearestEven),
            (Rounding::HalfUp, RoundMode::HalfUp),
            (Rounding::Floor, RoundMode::Floor),
            (Rounding::Ceil, RoundMode::Ceil),
            (Rounding::TowardZero, RoundMode::TowardZero),
        ];
        for (r, m) in cases {
            let t = r.forward(Tensor::<1>::from_floats(xs, &device));
            let got = t.into_data().try_into_vec_as::<f32>().unwrap();
            let want: Vec<f32> = xs.iter().map(|&x| m.apply(x, 0.0)).collect();
            assert_eq!(got, want, "{r:?}");
        }
        assert_eq!(RoundMode::NearestEven.apply(2.5, 0.0), 2.0);
        assert_eq!(RoundMode::HalfUp.apply(2.5, 0.0), 3.0);
        assert_eq!(RoundMode::HalfUp.apply(-2.5, 0.0), -3.0);
        assert_eq!(RoundMode::TowardZero.apply(-2.7, 0.0), -2.0);
    }

    #[test]
    fn stochastic_tensor_rounding_uses_the_same_noise_as_the_host() {
        let device = Device::flex();
        let xs: Vec<f32> = (0..100).map(|i| i as f32 * 0.37 - 18.0).collect();
        let got = Rounding::Stochastic { seed: 42 }
            .forward(Tensor::<1>::from_floats(xs.as_slice(), &device))
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let want: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| RoundMode::Stochastic.apply(x, uniform(42, i as u64)))
            .collect();
        assert_eq!(got, want);
        assert!((0..10_000).all(|i| (0.0..1.0).contains(&uniform(1, i))));
    }
}
