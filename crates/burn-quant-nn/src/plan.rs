//! [`QuantPlan`]: which parameters of a Burn model get which [`QuantSpec`].
//!
//! A plan is an ordered list of [`Rule`]s, `path pattern → spec`; the first rule whose pattern
//! matches a parameter's path (and none of whose exclusions does) decides its spec. Paths are
//! the ones Burn's `ModuleVisitor` / `ModuleMapper` produce: the field names passed to
//! `enter_module`, joined with `.`; `Vec` (and array, tuple) indices and enum variant names are
//! segments of their own (`layers.0.attn.q.weight`, `first.Float.weight`), `Option` adds none.
//!
//! A rule's spec is resolved for each parameter it takes ([`ParamSite::resolve`]): the type of
//! the module that owns the parameter gives its [`WeightLayout`] (`Linear` `[d_in, d_out]`,
//! `Conv2d` `[out, in, kh, kw]`, ...), a role granularity (`QuantSpec::per_output_channel`,
//! `per_input_group`) becomes that layout's axis, and an explicit axis that does not fit it is an
//! error naming the parameter ([`PlanReport::check`] finds it before anything changes).
//!
//! ```
//! use burn_quant_core::QuantSpec;
//! use burn_quant_nn::plan::QuantPlan;
//!
//! let plan = QuantPlan::new()
//!     .rule("layers.*.attn.*.weight", QuantSpec::int8_weight_per_channel())
//!     .rule("**.weight", QuantSpec::int4_weight_per_group(32))
//!     .exclude("head.*");
//! assert_eq!(plan.spec_for("layers.3.attn.q.weight").map(|(rule, _)| rule), Some(0));
//! assert_eq!(plan.spec_for("layers.3.mlp.up.weight").map(|(rule, _)| rule), Some(1));
//! assert!(plan.spec_for("head.weight").is_none());
//! assert!(plan.spec_for("layers.3.mlp.up.bias").is_none());
//! ```

// Errors carry the spec and the core's error so that messages name everything; they are built
// once per failed call, so their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn_quant_core::{QuantError, QuantSpec, WeightLayout};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The `container_type` Burn passes to `enter_module` for the state of a reparameterization.
pub(crate) const REPARAM_CONTAINER: &str = "Reparameterization";

/// Everything that can go wrong when checking a plan or applying it to a model.
///
/// Each variant names where the problem is: a position in the plan (`rules[1].spec.format.bits`)
/// or a parameter path of the model (`layers.0.weight`).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlanError {
    /// A pattern that cannot match anything as written.
    #[error("{at}: invalid pattern `{pattern}`: {reason}")]
    InvalidPattern {
        /// Where the pattern is in the plan, e.g. `rules[0].pattern` or `exclude[1]`.
        at: String,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rule's spec is not valid on its own (whatever it is applied to).
    #[error("{at}: {}", describe_quant_error(source))]
    InvalidSpec {
        /// Where the faulty field is in the plan, e.g. `rules[1].spec.format.bits`.
        at: String,
        /// The core's error.
        source: QuantError,
    },
    /// A matched parameter's shape does not fit its rule's spec (axis out of range, a k-quant
    /// super-block not tiling the axis, an explicit axis that is not the layer's output or input
    /// axis: `source` is then [`QuantError::AxisMismatch`], ...).
    #[error(
        "parameter `{path}` (shape {shape:?}) does not fit the spec of rules[{rule}] ({spec}): {source}"
    )]
    ShapeMismatch {
        /// The parameter's path.
        path: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Index of the rule that matched it.
        rule: usize,
        /// That rule's spec.
        spec: QuantSpec,
        /// The core's error.
        source: QuantError,
    },
    /// A rule gives a parameter a role granularity (per output channel, per input group) and
    /// the parameter has no known weight layout to resolve it against (it is not the `weight`
    /// of a layer [`WeightLayout::from_module_type`] knows).
    #[error(
        "parameter `{path}` (owned by module type `{module_type}`): rules[{rule}] gives it `{}`, \
         a role, but only the `weight` of a known layer (burn::nn Linear, Conv1d/2d/3d, \
         DeformConv2d, ConvTranspose1d/2d/3d, Embedding; burn-quant's Quant* layers) has a \
         layout to resolve it against: give that rule an explicit axis, or exclude the parameter",
        spec.granularity
    )]
    UnresolvedRole {
        /// The parameter's path.
        path: String,
        /// The `container_type` of the module that owns it (`Struct:BatchNorm`, `Vec`, ...).
        module_type: String,
        /// Index of the rule that matched it.
        rule: usize,
        /// That rule's spec.
        spec: QuantSpec,
    },
    /// Quantizing a matched parameter failed (e.g. it holds NaN or infinite values).
    #[error("parameter `{path}`: {source}")]
    Quantize {
        /// The parameter's path.
        path: String,
        /// The core's error.
        source: QuantError,
    },
    /// A matched parameter already carries a reparameterization (LoRA, an attached
    /// quantizer, ...); Burn does not nest reparameterizations.
    #[error(
        "parameter `{path}` already carries a `{name}` reparameterization: call `materialize()` first, or quantize before attaching it"
    )]
    Reparameterized {
        /// The parameter's path.
        path: String,
        /// The `Reparameterization::NAME` found on it.
        name: String,
    },
    /// A combination this crate does not implement, for a given parameter.
    #[error("parameter `{path}`: {reason}")]
    Unsupported {
        /// The parameter's path.
        path: String,
        /// What is not supported.
        reason: String,
    },
}

/// Result alias of the plan and reparameterization APIs.
pub type PlanResult<T> = std::result::Result<T, PlanError>;

fn describe_quant_error(e: &QuantError) -> String {
    match e {
        QuantError::InvalidConfig { value, reason, .. } => {
            format!("invalid value {value}: {reason}")
        }
        other => other.to_string(),
    }
}

impl PlanError {
    /// A spec error of the rule at `index`, located at the faulty field when the core names it.
    pub fn invalid_spec(index: usize, spec: &QuantSpec, source: QuantError) -> Self {
        let at = match &source {
            QuantError::InvalidConfig { field, .. } => {
                format!("rules[{index}].spec.{}", spec_field_path(spec, field))
            }
            _ => format!("rules[{index}].spec"),
        };
        PlanError::InvalidSpec { at, source }
    }
}

/// The path, in a serialized spec, of a field the core names in `QuantError::InvalidConfig`.
///
/// The core's names are the serde paths except for the statistic, which it calls
/// `scale.stat.*` and which serializes as `scale.source.<stats|dynamic|learned>.*`.
pub fn spec_field_path(spec: &QuantSpec, field: &str) -> String {
    use burn_quant_core::ScaleSource;
    match field.strip_prefix("scale.stat") {
        Some(rest) => {
            let variant = match spec.scale.source {
                ScaleSource::Stats(_) => "stats",
                ScaleSource::Dynamic(_) => "dynamic",
                ScaleSource::Learned(_) => "learned",
                ScaleSource::Const(_) => "const",
            };
            format!("scale.source.{variant}{rest}")
        }
        None => field.to_string(),
    }
}

// ----- weight layouts ------------------------------------------------------------------------

/// A parameter's place in a model: its path and the type of the module that owns it, which
/// decide the [`WeightLayout`] a rule's spec is resolved against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSite {
    /// Dotted path, as Burn's visitors build it (`layers.0.conv.weight`).
    pub path: String,
    /// The `container_type` Burn passes to `enter_module` for the parameter's field: the type
    /// of the module that owns it (`Struct:Conv2d`), or `Vec`, `Array`, ... for a bare
    /// parameter in a collection.
    pub module_type: String,
}

impl ParamSite {
    /// A site from its path and owning module type.
    pub fn new(path: &str, module_type: &str) -> Self {
        Self {
            path: path.to_string(),
            module_type: module_type.to_string(),
        }
    }

    /// The parameter's field name (the last segment of its path).
    pub fn field(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or_default()
    }

    /// The layout of this parameter: its module type's ([`WeightLayout::from_module_type`])
    /// when the parameter is that module's `weight`; `None` for anything else (biases, norm
    /// scales, modules of unknown types).
    pub fn weight_layout(&self) -> Option<WeightLayout> {
        if self.field() != "weight" {
            return None;
        }
        WeightLayout::from_module_type(&self.module_type)
    }

    /// `spec` for this parameter of `shape`: a role granularity resolved for its layout, an
    /// explicit axis checked against it ([`QuantSpec::resolve_for`]), then the whole spec
    /// checked against the shape. On a parameter without a layout a role is
    /// [`QuantError::UnresolvedRole`] and an explicit axis passes as it is (no check possible).
    pub fn resolve(&self, spec: QuantSpec, shape: &[usize]) -> Result<QuantSpec, QuantError> {
        let spec = match self.weight_layout() {
            Some(layout) => spec.resolve_for(layout, shape)?,
            None => spec,
        };
        spec.check_shape(shape)?;
        Ok(spec)
    }

    /// The plan error of [`ParamSite::resolve`]'s `source` for rule `rule` (its spec as
    /// written): [`PlanError::UnresolvedRole`] for a role without a layout, else
    /// [`PlanError::ShapeMismatch`].
    pub fn error(
        &self,
        shape: &[usize],
        rule: usize,
        spec: QuantSpec,
        source: QuantError,
    ) -> PlanError {
        match source {
            QuantError::UnresolvedRole { .. } if self.weight_layout().is_none() => {
                PlanError::UnresolvedRole {
                    path: self.path.clone(),
                    module_type: self.module_type.clone(),
                    rule,
                    spec,
                }
            }
            source => PlanError::ShapeMismatch {
                path: self.path.clone(),
                shape: shape.to_vec(),
                rule,
                spec,
                source,
            },
        }
    }

    /// [`ParamSite::resolve`] with its error as a [`PlanError`] naming the parameter.
    pub fn resolve_rule(
        &self,
        shape: &[usize],
        rule: usize,
        spec: QuantSpec,
    ) -> PlanResult<QuantSpec> {
        self.resolve(spec, shape)
            .map_err(|source| self.error(shape, rule, spec, source))
    }
}

// ----- patterns ------------------------------------------------------------------------------

/// One segment of a [`Pattern`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    /// `**`: any number of segments, zero included.
    AnyDepth,
    /// A glob over one segment: `*` matches any run of characters (so `*` alone is any one
    /// segment, `*_proj` any segment ending in `_proj`); other characters match themselves.
    Glob(String),
}

/// A dotted parameter-path pattern.
///
/// Segments are separated by `.`; a segment `**` matches any number of path segments (zero
/// included), any other segment matches exactly one path segment, with `*` inside it matching
/// any run of characters (`*`, `*_proj`, `layer*`). Everything else matches literally.
///
/// `"**.weight"` matches `weight`, `fc.weight` and `layers.0.attn.q.weight`; `"head.*"` matches
/// `head.weight` and `head.bias` but not `head.weight.fake_quant.scale`; `"layers.*.attn.*.weight"`
/// matches `layers.3.attn.q.weight`.
///
/// Constructing a pattern never fails; [`Pattern::check`] reports patterns that cannot match
/// anything (empty segments, `**` glued to other characters). Deserialization and
/// [`QuantPlan::validate`] run that check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses `pattern` (infallible; see [`Pattern::check`]).
    pub fn new(pattern: &str) -> Self {
        let segments = pattern
            .split('.')
            .map(|s| {
                if s == "**" {
                    Segment::AnyDepth
                } else {
                    Segment::Glob(s.to_string())
                }
            })
            .collect();
        Self {
            raw: pattern.to_string(),
            segments,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Reports why the pattern cannot match any parameter path, if it cannot.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.raw.is_empty() {
            return Err("a pattern cannot be empty".into());
        }
        if self.raw.chars().any(char::is_whitespace) {
            return Err("parameter paths contain no whitespace".into());
        }
        for seg in &self.segments {
            if let Segment::Glob(g) = seg {
                if g.is_empty() {
                    return Err(
                        "empty segment (two dots in a row, or a leading or trailing dot)".into(),
                    );
                }
                if g.contains("**") {
                    return Err(format!(
                        "`**` must be a whole segment (found in `{g}`); use `*` inside a segment"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether this pattern matches the dotted parameter `path`.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('.').collect()
        };
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((Segment::Glob(g), rest)) => match path.split_first() {
            Some((first, tail)) => {
                glob_match(g.as_bytes(), first.as_bytes()) && match_segments(rest, tail)
            }
            None => false,
        },
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob_match(glob: &[u8], s: &[u8]) -> bool {
    match glob.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| glob_match(rest, &s[k..])),
        Some((c, rest)) => s.first() == Some(c) && glob_match(rest, &s[1..]),
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for Pattern {
    type Err = String;
    /// Parses and [checks](Pattern::check) a pattern.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let p = Pattern::new(s);
        p.check().map(|()| p)
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Self {
        Pattern::new(s)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(|reason: String| {
            serde::de::Error::custom(format!("invalid pattern `{s}`: {reason}"))
        })
    }
}

// ----- rules and plans -----------------------------------------------------------------------

/// One rule of a [`QuantPlan`]: parameters whose path matches `pattern` and none of `exclude`
/// get `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Which parameter paths this rule takes.
    pub pattern: Pattern,
    /// Paths this rule leaves to the following rules, even though `pattern` matches them.
    #[serde(default)]
    pub exclude: Vec<Pattern>,
    /// The spec of every parameter this rule takes.
    pub spec: QuantSpec,
}

impl Rule {
    /// A rule without exclusions.
    pub fn new(pattern: &str, spec: QuantSpec) -> Self {
        Self {
            pattern: Pattern::new(pattern),
            exclude: Vec::new(),
            spec,
        }
    }

    /// The same rule, also leaving paths that match `pattern` to the following rules.
    pub fn exclude(mut self, pattern: &str) -> Self {
        self.exclude.push(Pattern::new(pattern));
        self
    }

    /// Whether this rule takes `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.pattern.matches(path) && !self.exclude.iter().any(|e| e.matches(path))
    }
}

/// Ordered rules "path pattern → [`QuantSpec`]" (first match wins), plus plan-wide exclusions.
///
/// Plain serde data (see [`crate::recipe`] for TOML and JSON recipes); built in code with
/// [`QuantPlan::rule`], [`QuantPlan::with_rule`] and [`QuantPlan::exclude`]. Apply it with
/// [`QuantPlan::report`] (what would happen), [`crate::reparam::fake_quantize_weights`] (PTQ),
/// [`crate::reparam::attach_weight_quantizers`] (QAT) and [`crate::reparam::quantized_weights`]
/// (integer codes for export).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantPlan {
    /// Paths no rule may take, whatever the rules say (e.g. the output head).
    #[serde(default)]
    pub exclude: Vec<Pattern>,
    /// The rules, in priority order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// What a plan decides for one parameter path.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Rule `rule` takes the parameter.
    Matched {
        /// Index of the rule in [`QuantPlan::rules`].
        rule: usize,
        /// That rule's spec.
        spec: QuantSpec,
    },
    /// An exclusion keeps the parameter in float: a plan-wide one, or a rule's own exclusion
    /// when no later rule took the parameter either.
    Excluded {
        /// Which exclusion, e.g. `exclude[0] (head.*)` or `rules[1].exclude[0] (**.bias)`.
        by: String,
    },
    /// No rule's pattern matches the path.
    Unmatched,
    /// The parameter is state of a reparameterization attached to another parameter (an
    /// attached quantizer's learned scale, LoRA factors): plans never quantize those.
    ReparameterizationState,
}

impl QuantPlan {
    /// An empty plan (matches nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// The same plan with one more rule `pattern → spec` (lowest priority so far).
    pub fn rule(self, pattern: &str, spec: QuantSpec) -> Self {
        self.with_rule(Rule::new(pattern, spec))
    }

    /// The same plan with one more rule (lowest priority so far), e.g. one with exclusions:
    /// `plan.with_rule(Rule::new("**.weight", spec).exclude("embed.*"))`.
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The same plan, keeping every path that matches `pattern` in float whatever the rules say.
    pub fn exclude(mut self, pattern: &str) -> Self {
        self.exclude.push(Pattern::new(pattern));
        self
    }

    /// What the plan decides for `path` (parameters outside reparameterizations).
    pub fn decide(&self, path: &str) -> Decision {
        if let Some((i, p)) = self
            .exclude
            .iter()
            .enumerate()
            .find(|(_, p)| p.matches(path))
        {
            return Decision::Excluded {
                by: format!("exclude[{i}] ({p})"),
            };
        }
        let mut excluded_by = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.pattern.matches(path) {
                continue;
            }
            match rule
                .exclude
                .iter()
                .enumerate()
                .find(|(_, e)| e.matches(path))
            {
                None => {
                    return Decision::Matched {
                        rule: i,
                        spec: rule.spec,
                    };
                }
                Some((j, e)) => {
                    excluded_by.get_or_insert_with(|| format!("rules[{i}].exclude[{j}] ({e})"));
                }
            }
        }
        match excluded_by {
            Some(by) => Decision::Excluded { by },
            None => Decision::Unmatched,
        }
    }

    /// The index and spec of the rule that takes `path`, if any.
    pub fn spec_for(&self, path: &str) -> Option<(usize, &QuantSpec)> {
        match self.decide(path) {
            Decision::Matched { rule, .. } => Some((rule, &self.rules[rule].spec)),
            _ => None,
        }
    }

    /// Checks every pattern and every spec on its own; errors name the place in the plan
    /// (`rules[1].spec.format.bits`, `exclude[0]`).
    pub fn validate(&self) -> PlanResult<()> {
        let bad = |at: String, p: &Pattern| {
            p.check().map_err(|reason| PlanError::InvalidPattern {
                at,
                pattern: p.as_str().to_string(),
                reason,
            })
        };
        for (i, p) in self.exclude.iter().enumerate() {
            bad(format!("exclude[{i}]"), p)?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            bad(format!("rules[{i}].pattern"), &rule.pattern)?;
            for (j, p) in rule.exclude.iter().enumerate() {
                bad(format!("rules[{i}].exclude[{j}]"), p)?;
            }
            rule.spec
                .validate()
                .map_err(|e| PlanError::invalid_spec(i, &rule.spec, e))?;
        }
        Ok(())
    }

    /// Lists every float parameter of `model` (path, shape, id, owning module type) with the
    /// plan's decision for it, resolves each matched spec for the parameter's weight layout
    /// (roles → axes; explicit axes checked against known layers, see [`ParamSite::resolve`])
    /// and checks it against the shape. Does not initialise lazy parameters and does not change
    /// the model.
    pub fn report<M: Module>(&self, model: &M) -> PlanReport {
        let mut walker = ParamWalker::default();
        model.visit(&mut walker);
        let entries = walker
            .params
            .into_iter()
            .map(|p| {
                let decision = if p.in_reparameterization {
                    Decision::ReparameterizationState
                } else {
                    self.decide(&p.path)
                };
                let site = ParamSite::new(&p.path, &p.module_type);
                let (resolved, problem) = match &decision {
                    Decision::Matched { spec, .. } => match site.resolve(*spec, &p.shape) {
                        Ok(resolved) => (Some(resolved), None),
                        Err(e) => (None, Some(e)),
                    },
                    _ => (None, None),
                };
                PlanEntry {
                    path: p.path,
                    id: p.id,
                    shape: p.shape,
                    layout: site.weight_layout(),
                    module_type: p.module_type,
                    decision,
                    reparameterization: p.reparameterization,
                    resolved,
                    problem,
                }
            })
            .collect();
        PlanReport {
            entries,
            rules: self.rules.iter().map(|r| r.pattern.to_string()).collect(),
        }
    }
}

impl fmt::Display for QuantPlan {
    /// One line per exclusion and rule, in priority order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.exclude.iter().enumerate() {
            writeln!(f, "exclude[{i}]: {p}")?;
        }
        for (i, r) in self.rules.iter().enumerate() {
            write!(f, "rules[{i}]: {} -> {}", r.pattern, r.spec)?;
            if !r.exclude.is_empty() {
                let ex: Vec<&str> = r.exclude.iter().map(Pattern::as_str).collect();
                write!(f, " (except {})", ex.join(", "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

// ----- reports -------------------------------------------------------------------------------

/// One float parameter of a model and what a plan decides for it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanEntry {
    /// Dotted path, as Burn's visitors build it.
    pub path: String,
    /// The parameter's id.
    pub id: ParamId,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The `container_type` of the module that owns it (`Struct:Conv2d`; see [`ParamSite`]).
    pub module_type: String,
    /// Its weight layout, if it is the `weight` of a known layer ([`ParamSite::weight_layout`]).
    pub layout: Option<WeightLayout>,
    /// The plan's decision (with the rule's spec as written).
    pub decision: Decision,
    /// `Reparameterization::NAME` of a reparameterization attached to this parameter
    /// (`fake_quant`, `lora`), if any.
    pub reparameterization: Option<String>,
    /// The matched spec resolved for this parameter (role → axis), when it fits.
    pub resolved: Option<QuantSpec>,
    /// Why the matched spec cannot be applied to this parameter, if it cannot (a shape that
    /// does not fit, an axis that does not fit the layer, a role without a layout).
    pub problem: Option<QuantError>,
}

impl PlanEntry {
    /// Index of the rule that matched, if any.
    pub fn rule(&self) -> Option<usize> {
        match self.decision {
            Decision::Matched { rule, .. } => Some(rule),
            _ => None,
        }
    }

    /// The spec this parameter gets, if any.
    pub fn spec(&self) -> Option<&QuantSpec> {
        match &self.decision {
            Decision::Matched { spec, .. } => Some(spec),
            _ => None,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The entry's problem as a [`PlanError`] naming the parameter.
    pub fn error(&self) -> Option<PlanError> {
        let (rule, spec) = match &self.decision {
            Decision::Matched { rule, spec } => (*rule, *spec),
            _ => return None,
        };
        let site = ParamSite::new(&self.path, &self.module_type);
        self.problem
            .clone()
            .map(|source| site.error(&self.shape, rule, spec, source))
    }
}

/// Every float parameter of a model with a plan's decision, in traversal order.
///
/// `Display` prints an aligned table (path, shape, rule, spec or reason) followed by a summary,
/// the rules that matched nothing, and the shape problems.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanReport {
    /// One entry per float parameter, in the model's traversal order.
    pub entries: Vec<PlanEntry>,
    /// The plan's rule patterns, by rule index.
    pub rules: Vec<String>,
}

impl PlanReport {
    /// The entry of the parameter at `path`.
    pub fn entry(&self, path: &str) -> Option<&PlanEntry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// Entries some rule takes.
    pub fn matched(&self) -> impl Iterator<Item = &PlanEntry> {
        self.entries.iter().filter(|e| e.rule().is_some())
    }

    /// Entries no rule takes (unmatched, excluded, reparameterization state).
    pub fn unmatched(&self) -> impl Iterator<Item = &PlanEntry> {
        self.entries.iter().filter(|e| e.rule().is_none())
    }

    /// Indices of rules that took no parameter (often a typo in a pattern).
    pub fn unused_rules(&self) -> Vec<usize> {
        let used: BTreeSet<usize> = self.matched().filter_map(PlanEntry::rule).collect();
        (0..self.rules.len())
            .filter(|i| !used.contains(i))
            .collect()
    }

    /// The first matched parameter whose spec does not fit it (shape, layer axis, unresolved
    /// role), as an error naming the parameter.
    pub fn check(&self) -> PlanResult<()> {
        match self.entries.iter().find_map(PlanEntry::error) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 4]> = self
            .entries
            .iter()
            .map(|e| {
                let mut path = e.path.clone();
                if let Some(name) = &e.reparameterization {
                    path.push_str(&format!(" [{name}]"));
                }
                let (rule, what) = match &e.decision {
                    Decision::Matched { rule, spec } => {
                        let what = match (&e.problem, &e.resolved) {
                            (Some(p), _) => format!("{spec}  !! {p}"),
                            (None, Some(r)) if r != spec => {
                                format!("{r} (from {})", spec.granularity)
                            }
                            (None, _) => spec.to_string(),
                        };
                        (rule.to_string(), what)
                    }
                    Decision::Excluded { by } => ("-".into(), format!("(float: excluded by {by})")),
                    Decision::Unmatched => ("-".into(), "(float: no rule matches)".into()),
                    Decision::ReparameterizationState => {
                        ("-".into(), "(reparameterization state)".into())
                    }
                };
                [path, format!("{:?}", e.shape), rule, what]
            })
            .collect();
        let header = ["path", "shape", "rule", "spec"];
        let mut width = header.map(str::len);
        for row in &rows {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: [&str; 4]| {
            writeln!(
                f,
                "{:<w0$}  {:<w1$}  {:>w2$}  {}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2]
            )
        };
        line(f, header)?;
        line(
            f,
            [
                "-".repeat(width[0]).as_str(),
                &"-".repeat(width[1]),
                &"-".repeat(width[2]),
                "----",
            ],
        )?;
        for row in &rows {
            line(f, [&row[0], &row[1], &row[2], &row[3]])?;
        }
        let matched: Vec<&PlanEntry> = self.matched().collect();
        let total: usize = self
            .entries
            .iter()
            .filter(|e| e.decision != Decision::ReparameterizationState)
            .map(PlanEntry::numel)
            .sum();
        let q: usize = matched.iter().map(|e| e.numel()).sum();
        writeln!(
            f,
            "{} of {} parameters matched ({q} of {total} elements)",
            matched.len(),
            self.entries
                .iter()
                .filter(|e| e.decision != Decision::ReparameterizationState)
                .count(),
        )?;
        for i in self.unused_rules() {
            writeln!(
                f,
                "warning: rules[{i}] ({}) matches no parameter",
                self.rules[i]
            )?;
        }
        for e in self.entries.iter().filter_map(PlanEntry::error) {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

// ----- traversal -----------------------------------------------------------------------------

/// Tracks the dotted path, the type of the module owning each field, and the
/// reparameterization nesting of a visitor or mapper.
#[derive(Debug, Default)]
pub(crate) struct PathTracker {
    stack: Vec<String>,
    /// The `container_type` of each entered field: the type of the module that owns it
    /// (`Struct:Linear` for `fc.weight`), `Vec`, `Reparameterization`, ...
    containers: Vec<String>,
    reparam: Vec<bool>,
    depth: usize,
}

impl PathTracker {
    /// Call from `enter_module`; returns the path of the parameter whose reparameterization is
    /// entered, if this enters one (outermost only).
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) -> Option<String> {
        let is_reparam = container_type == REPARAM_CONTAINER;
        let owner = (is_reparam && self.depth == 0).then(|| self.path());
        self.stack.push(name.to_string());
        self.containers.push(container_type.to_string());
        self.reparam.push(is_reparam);
        if is_reparam {
            self.depth += 1;
        }
        owner
    }

    /// Call from `exit_module`.
    pub(crate) fn exit(&mut self) {
        self.stack.pop();
        self.containers.pop();
        if self.reparam.pop() == Some(true) {
            self.depth -= 1;
        }
    }

    /// The current dotted path.
    pub(crate) fn path(&self) -> String {
        self.stack.join(".")
    }

    /// The `container_type` of the innermost entered field: for a parameter being visited, the
    /// type of the module that owns it (`Struct:Conv2d` for `conv.weight`); empty at the root.
    pub(crate) fn module_type(&self) -> &str {
        self.containers.last().map_or("", String::as_str)
    }

    /// Where the parameter being visited sits: its path and its owning module's type.
    pub(crate) fn site(&self) -> ParamSite {
        ParamSite {
            path: self.path(),
            module_type: self.module_type().to_string(),
        }
    }

    /// Whether the traversal is inside a reparameterization's state.
    pub(crate) fn in_reparameterization(&self) -> bool {
        self.depth > 0
    }
}

/// A float parameter seen by [`ParamWalker`].
#[derive(Debug)]
pub(crate) struct SeenParam {
    pub(crate) path: String,
    pub(crate) module_type: String,
    pub(crate) id: ParamId,
    pub(crate) shape: Vec<usize>,
    pub(crate) in_reparameterization: bool,
    pub(crate) reparameterization: Option<String>,
}

/// Lists float parameters with their paths, without initialising lazy ones.
#[derive(Debug, Default)]
pub(crate) struct ParamWalker {
    tracker: PathTracker,
    pub(crate) params: Vec<SeenParam>,
}

impl ModuleVisitor for ParamWalker {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if let Some(owner) = self.tracker.enter(name, container_type) {
            // Burn visits a parameter's base right before entering its reparameterization.
            if let Some(p) = self.params.iter_mut().rev().find(|p| p.path == owner) {
                p.reparameterization = Some(name.to_string());
            }
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.params.push(SeenParam {
            path: self.tracker.path(),
            module_type: self.tracker.module_type().to_string(),
            id: param.id,
            shape: param.lazy_shape().as_slice().to_vec(),
            in_reparameterization: self.tracker.in_reparameterization(),
            reparameterization: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        let p = Pattern::new("layers.*.attn.*.weight");
        assert!(p.matches("layers.0.attn.q.weight"));
        assert!(p.matches("layers.12.attn.out.weight"));
        assert!(!p.matches("layers.0.attn.q.bias"));
        assert!(!p.matches("layers.0.attn.q.lora.weight"));
        assert!(!p.matches("layers.attn.q.weight"));

        let any = Pattern::new("**.weight");
        assert!(any.matches("weight"));
        assert!(any.matches("fc.weight"));
        assert!(any.matches("a.b.c.weight"));
        assert!(!any.matches("a.b.c.weight.fake_quant.scale"));
        assert!(!any.matches("fc.bias"));

        let head = Pattern::new("head.*");
        assert!(head.matches("head.weight"));
        assert!(!head.matches("head"));
        assert!(!head.matches("head.weight.lora.a"));
        assert!(Pattern::new("head.**").matches("head.weight.lora.a"));
        assert!(Pattern::new("head.**").matches("head"));

        let mid = Pattern::new("a.**.z");
        assert!(mid.matches("a.z"));
        assert!(mid.matches("a.b.c.z"));
        assert!(!mid.matches("a.b.c"));

        let glob = Pattern::new("**.*_proj.weight");
        assert!(glob.matches("layers.0.q_proj.weight"));
        assert!(!glob.matches("layers.0.q_projx.weight"));
        assert!(Pattern::new("layer*.w").matches("layers.w"));
        assert!(Pattern::new("layer*.w").matches("layer.w"));
        assert!(!Pattern::new("layer*.w").matches("xlayer.w"));
    }

    #[test]
    fn bad_patterns_are_reported() {
        for bad in ["", "a..b", ".a", "a.", "a.**x", "a b"] {
            assert!(Pattern::new(bad).check().is_err(), "{bad:?}");
            assert!(bad.parse::<Pattern>().is_err(), "{bad:?}");
        }
        for good in ["**", "*", "a.*.b", "**.weight", "*_proj"] {
            assert!(Pattern::new(good).check().is_ok(), "{good:?}");
        }
        let plan = QuantPlan::new()
            .rule("**.weight", QuantSpec::int8_weight_per_channel())
            .rule("a..b", QuantSpec::int8_weight_per_channel());
        let err = plan.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rules[1].pattern: invalid pattern `a..b`"),
            "{err}"
        );
    }

    #[test]
    fn first_match_wins_and_exclusions_fall_through() {
        let int8 = QuantSpec::int8_weight_per_channel();
        let int4 = QuantSpec::int4_weight_per_group(32);
        let plan = QuantPlan::new()
            .with_rule(Rule::new("**.weight", int8).exclude("mlp.**"))
            .rule("mlp.up.*", int4)
            .exclude("head.*");
        assert_eq!(
            plan.decide("attn.weight"),
            Decision::Matched {
                rule: 0,
                spec: int8
            }
        );
        assert_eq!(
            plan.decide("mlp.up.weight"),
            Decision::Matched {
                rule: 1,
                spec: int4
            }
        );
        assert_eq!(
            plan.decide("mlp.down.weight"),
            Decision::Excluded {
                by: "rules[0].exclude[0] (mlp.**)".into()
            }
        );
        assert_eq!(
            plan.decide("head.weight"),
            Decision::Excluded {
                by: "exclude[0] (head.*)".into()
            }
        );
        assert_eq!(plan.decide("attn.bias"), Decision::Unmatched);
    }

    #[test]
    fn invalid_specs_are_located_in_the_plan() {
        let bad = QuantSpec::int8_weight_per_channel().with_group_size(0);
        let plan = QuantPlan::new()
            .rule("**.weight", QuantSpec::int8_weight_per_channel())
            .rule("**.bias", bad);
        let err = plan.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rules[1].spec.granularity.size: invalid value 0"),
            "{err}"
        );
    }
}
