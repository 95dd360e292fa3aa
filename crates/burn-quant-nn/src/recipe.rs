//! Recipes: [`QuantSpec`]s and [`QuantPlan`]s in TOML and JSON files.
//!
//! Every error names where it is in the file: a syntax error its line and column, a bad value
//! its path (`rules[1].spec.format.bits: invalid value: integer `300`, expected u8`), an unknown
//! key its full path (`rules[0].spec.scale.sorce: unknown key`), a value that parses but is not
//! allowed the field at fault (`rules[1].spec.granularity.size: invalid value 0: ...`).
//!
//! ```
//! use burn_quant_nn::plan::QuantPlan;
//!
//! let plan = QuantPlan::from_toml_str(r#"
//!     exclude = ["head.*"]
//!
//!     [[rules]]
//!     pattern = "**.weight"
//!     spec.format = { kind = "int", bits = 4, signed = true, narrow = false }
//!     spec.granularity = { kind = "per_group", axis = 0, size = 128 }
//!     spec.scale = { source = { stats = { kind = "abs_max" } }, restrict = { kind = "float" } }
//!     spec.zero_point = { kind = "symmetric" }
//!     spec.rounding = { kind = "nearest_even" }
//! "#).unwrap();
//! assert_eq!(plan.rules[0].spec, burn_quant_core::QuantSpec::int4_weight_per_group(128));
//!
//! let err = QuantPlan::from_json_str(r#"{"rules": [{"pattern": "**", "spec": 4}]}"#).unwrap_err();
//! assert!(err.to_string().starts_with("rules[0].spec: "), "{err}");
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use burn_quant_core::{QuantError, QuantSpec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::plan::{PlanError, QuantPlan, spec_field_path};

/// The two recipe syntaxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecipeFormat {
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
}

impl RecipeFormat {
    /// The format of a file, from its extension (`.toml` or `.json`, any case).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(Self::Toml),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

impl fmt::Display for RecipeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Toml => "TOML",
            Self::Json => "JSON",
        })
    }
}

/// A line and column in a recipe file, both from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column (characters), from 1.
    pub column: usize,
}

/// What can go wrong when reading or writing a recipe.
#[derive(Debug, Error)]
pub enum RecipeError {
    /// The text is not valid TOML or JSON.
    #[error("{format} syntax error{}: {message}", at(.location))]
    Syntax {
        /// TOML or JSON.
        format: RecipeFormat,
        /// The parser's message.
        message: String,
        /// Where, when the parser says.
        location: Option<Location>,
    },
    /// A value that does not fit its field (wrong type, out of range, missing field, unknown
    /// variant), or a value that fits but is not allowed (a spec that fails validation, a
    /// pattern that cannot match).
    #[error("{path}: {message}{}", at(.location))]
    Invalid {
        /// Where, e.g. `rules[1].spec.format.bits` (`.` is the document itself).
        path: String,
        /// What is wrong.
        message: String,
        /// Line and column, when the parser knows them.
        location: Option<Location>,
    },
    /// A key that no field reads (a typo would otherwise be silently ignored).
    #[error("{path}: unknown key")]
    UnknownKey {
        /// Full path of the key, e.g. `rules[0].spec.scale.sorce`.
        path: String,
    },
    /// Reading or writing the file failed.
    #[error("`{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file name without a `.toml` or `.json` extension.
    #[error("`{}`: unknown recipe format (the file name must end in .toml or .json)", path.display())]
    UnknownExtension {
        /// The file.
        path: PathBuf,
    },
    /// The value cannot be written in the format (e.g. TOML has no integers above `i64::MAX`).
    #[error("cannot write {format}: {message}")]
    Serialize {
        /// TOML or JSON.
        format: RecipeFormat,
        /// The serializer's message.
        message: String,
    },
}

fn at(location: &Option<Location>) -> String {
    match location {
        Some(l) => format!(" (line {}, column {})", l.line, l.column),
        None => String::new(),
    }
}

impl From<PlanError> for RecipeError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::InvalidPattern {
                at,
                pattern,
                reason,
            } => RecipeError::Invalid {
                path: at,
                message: format!("invalid pattern `{pattern}`: {reason}"),
                location: None,
            },
            PlanError::InvalidSpec { at, source } => RecipeError::Invalid {
                path: at,
                message: spec_message(&source),
                location: None,
            },
            other => RecipeError::Invalid {
                path: ".".into(),
                message: other.to_string(),
                location: None,
            },
        }
    }
}

fn spec_message(e: &QuantError) -> String {
    match e {
        QuantError::InvalidConfig { value, reason, .. } => {
            format!("invalid value {value}: {reason}")
        }
        other => other.to_string(),
    }
}

/// Result alias of this module.
pub type RecipeResult<T> = std::result::Result<T, RecipeError>;

/// A type that loads from and saves to TOML and JSON recipes with located errors.
///
/// Implemented for [`QuantSpec`] and [`QuantPlan`]; `QuantPlan` also has the same methods as
/// inherent ones, so it needs no import.
pub trait Recipe: Serialize + DeserializeOwned {
    /// Checks what parsing cannot (value ranges, consistency), naming the field at fault.
    fn check(&self) -> RecipeResult<()>;

    /// Parses a TOML recipe.
    fn from_toml_str(text: &str) -> RecipeResult<Self> {
        load(text, RecipeFormat::Toml)
    }

    /// Parses a JSON recipe.
    fn from_json_str(text: &str) -> RecipeResult<Self> {
        load(text, RecipeFormat::Json)
    }

    /// Reads a recipe file, TOML or JSON by its extension.
    fn from_file(path: impl AsRef<Path>) -> RecipeResult<Self> {
        let path = path.as_ref();
        let format =
            RecipeFormat::from_path(path).ok_or_else(|| RecipeError::UnknownExtension {
                path: path.to_path_buf(),
            })?;
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        load(&text, format)
    }

    /// Writes the recipe as TOML (what [`Recipe::from_toml_str`] reads back).
    fn to_toml_string(&self) -> RecipeResult<String> {
        toml::to_string_pretty(self).map_err(|e| RecipeError::Serialize {
            format: RecipeFormat::Toml,
            message: e.to_string(),
        })
    }

    /// Writes the recipe as pretty-printed JSON (what [`Recipe::from_json_str`] reads back).
    fn to_json_string(&self) -> RecipeResult<String> {
        serde_json::to_string_pretty(self).map_err(|e| RecipeError::Serialize {
            format: RecipeFormat::Json,
            message: e.to_string(),
        })
    }

    /// Writes the recipe to a file, TOML or JSON by its extension.
    fn to_file(&self, path: impl AsRef<Path>) -> RecipeResult<()> {
        let path = path.as_ref();
        let text = match RecipeFormat::from_path(path) {
            Some(RecipeFormat::Toml) => self.to_toml_string()?,
            Some(RecipeFormat::Json) => self.to_json_string()?,
            None => {
                return Err(RecipeError::UnknownExtension {
                    path: path.to_path_buf(),
                });
            }
        };
        std::fs::write(path, text).map_err(|source| RecipeError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Recipe for QuantSpec {
    fn check(&self) -> RecipeResult<()> {
        self.validate().map_err(|e| RecipeError::Invalid {
            path: match &e {
                QuantError::InvalidConfig { field, .. } => spec_field_path(self, field),
                _ => ".".into(),
            },
            message: spec_message(&e),
            location: None,
        })
    }
}

impl Recipe for QuantPlan {
    fn check(&self) -> RecipeResult<()> {
        Ok(self.validate()?)
    }
}

impl QuantPlan {
    /// Parses a TOML plan (see [`Recipe::from_toml_str`]).
    pub fn from_toml_str(text: &str) -> RecipeResult<Self> {
        <Self as Recipe>::from_toml_str(text)
    }

    /// Parses a JSON plan (see [`Recipe::from_json_str`]).
    pub fn from_json_str(text: &str) -> RecipeResult<Self> {
        <Self as Recipe>::from_json_str(text)
    }

    /// Reads a plan file, TOML or JSON by its extension (see [`Recipe::from_file`]).
    pub fn from_file(path: impl AsRef<Path>) -> RecipeResult<Self> {
        <Self as Recipe>::from_file(path)
    }

    /// Writes the plan as TOML (see [`Recipe::to_toml_string`]).
    pub fn to_toml_string(&self) -> RecipeResult<String> {
        <Self as Recipe>::to_toml_string(self)
    }

    /// Writes the plan as JSON (see [`Recipe::to_json_string`]).
    pub fn to_json_string(&self) -> RecipeResult<String> {
        <Self as Recipe>::to_json_string(self)
    }
}

/// Parse (syntax) → typed parse with paths → unknown keys → semantic check.
fn load<T: Recipe>(text: &str, format: RecipeFormat) -> RecipeResult<T> {
    let raw: Value = match format {
        RecipeFormat::Toml => toml::from_str(text).map_err(|e| RecipeError::Syntax {
            format,
            message: e.message().to_string(),
            location: e.span().map(|s| location_of(text, s.start)),
        })?,
        RecipeFormat::Json => serde_json::from_str(text).map_err(|e| RecipeError::Syntax {
            format,
            message: json_message(&e),
            location: (e.line() > 0).then(|| Location {
                line: e.line(),
                column: e.column(),
            }),
        })?,
    };
    let value: T = match format {
        RecipeFormat::Toml => {
            let de = toml::Deserializer::parse(text).map_err(|e| RecipeError::Syntax {
                format,
                message: e.message().to_string(),
                location: e.span().map(|s| location_of(text, s.start)),
            })?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let location = e.inner().span().map(|s| location_of(text, s.start));
                invalid(&raw, e.path(), e.inner().message().to_string(), location)
            })?
        }
        RecipeFormat::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let inner = e.inner();
                let location = (inner.line() > 0).then(|| Location {
                    line: inner.line(),
                    column: inner.column(),
                });
                invalid(&raw, e.path(), json_message(inner), location)
            })?
        }
    };
    // Keys the typed value does not read back are unknown (the core's types do not deny
    // unknown fields themselves).
    let canonical = serde_json::to_value(&value).map_err(|e| RecipeError::Serialize {
        format: RecipeFormat::Json,
        message: e.to_string(),
    })?;
    if let Some(path) = unknown_key(&raw, &canonical, "") {
        return Err(RecipeError::UnknownKey { path });
    }
    value.check()?;
    Ok(value)
}

/// A value error at `path`. serde_path_to_error already ends an unknown field's path with the
/// field; inside the core's internally tagged enums (`format`, `granularity`, ...) serde
/// buffers the object and the path stops at it, so the field whose value the message quotes is
/// looked up in the document and appended when exactly one field holds that value.
fn invalid(
    raw: &Value,
    path: &serde_path_to_error::Path,
    message: String,
    location: Option<Location>,
) -> RecipeError {
    let mut at = path.to_string();
    if let Some(key) = field_quoted_by(raw, path, &message) {
        at = if at == "." {
            key
        } else {
            format!("{at}.{key}")
        };
    }
    RecipeError::Invalid {
        path: at,
        message,
        location,
    }
}

/// The one key of the object at `path` whose value serde's `invalid type` / `invalid value`
/// message quotes (`integer `300``, `string "four"`, ...).
fn field_quoted_by(raw: &Value, path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut v = raw;
    for seg in path.iter() {
        v = match seg {
            Segment::Seq { index } => v.get(*index)?,
            Segment::Map { key } => v.get(key)?,
            Segment::Enum { variant } => v.get(variant)?,
            Segment::Unknown => return None,
        };
    }
    let object = v.as_object()?;
    let unexpected = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let quotes = |x: &Value| -> bool {
        let candidates: Vec<String> = match x {
            Value::Bool(b) => vec![format!("boolean `{b}`")],
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                vec![
                    format!("floating point `{f}`"),
                    format!("floating point `{f:.1}`"),
                ]
            }
            Value::Number(n) => vec![format!("integer `{n}`")],
            Value::String(s) => vec![format!("string {s:?}")],
            Value::Array(_) => vec!["sequence".into()],
            Value::Object(_) => vec!["map".into()],
            Value::Null => vec!["unit value".into()],
        };
        candidates
            .iter()
            .any(|c| unexpected.starts_with(&format!("{c}, expected")))
    };
    let mut hits = object.iter().filter(|(_, x)| quotes(x)).map(|(k, _)| k);
    match (hits.next(), hits.next()) {
        (Some(k), None) => Some(k.clone()),
        _ => None,
    }
}

/// serde_json's message without its trailing " at line L column C".
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) if e.line() > 0 => s[..i].to_string(),
        _ => s,
    }
}

fn location_of(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Location { line, column }
}

/// The first key of `raw` that `canonical` (the parsed value written back) lacks.
fn unknown_key(raw: &Value, canonical: &Value, path: &str) -> Option<String> {
    match (raw, canonical) {
        (Value::Object(r), Value::Object(c)) => r.iter().find_map(|(k, rv)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match c.get(k) {
                None => Some(p),
                Some(cv) => unknown_key(rv, cv, &p),
            }
        }),
        (Value::Array(r), Value::Array(c)) => r
            .iter()
            .zip(c)
            .enumerate()
            .find_map(|(i, (rv, cv))| unknown_key(rv, cv, &format!("{path}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Rule;
    use burn_quant_core::{Format, Minifloat, Pow2Mode, Rounding, ScaleSource, ScaleStat};

    fn sample_plan() -> QuantPlan {
        QuantPlan::new()
            .with_rule(
                Rule::new(
                    "layers.*.attn.*.weight",
                    QuantSpec::int8_weight_per_channel(),
                )
                .exclude("layers.0.**"),
            )
            .rule(
                "**.weight",
                QuantSpec::int4_weight_per_group(32)
                    .asymmetric()
                    .with_stat(ScaleStat::hqq()),
            )
            .rule("conv.*", QuantSpec::mxfp4())
            .rule("emb.weight", QuantSpec::gguf_q4_k())
            .rule(
                "x.*",
                QuantSpec::fp8_e4m3_weight_per_tensor()
                    .with_format(Format::Minifloat(Minifloat::e5m2()))
                    .with_rounding(Rounding::Stochastic { seed: 7 }),
            )
            .rule(
                "y.*",
                QuantSpec::int8_weight_per_channel()
                    .with_pow2_scale(Pow2Mode::Ceil)
                    .with_scale_source(ScaleSource::Learned(ScaleStat::Percentile { q: 99.5 })),
            )
            .rule(
                "z.*",
                QuantSpec::int8_weight_per_tensor().with_scale_source(ScaleSource::Const(0.125)),
            )
            .exclude("head.*")
    }

    #[test]
    fn plans_round_trip_through_toml_and_json() {
        let plan = sample_plan();
        let toml_text = plan.to_toml_string().unwrap();
        assert_eq!(
            QuantPlan::from_toml_str(&toml_text).unwrap(),
            plan,
            "{toml_text}"
        );
        let json_text = plan.to_json_string().unwrap();
        assert_eq!(
            QuantPlan::from_json_str(&json_text).unwrap(),
            plan,
            "{json_text}"
        );
    }

    #[test]
    fn specs_round_trip_through_toml_and_json() {
        for spec in [
            QuantSpec::int8_weight_per_channel(),
            QuantSpec::nvfp4(),
            QuantSpec::gguf_q6_k(),
            QuantSpec::binary_weight(),
            QuantSpec::int4_weight_per_group(64).with_stat(ScaleStat::mse()),
        ] {
            let t = spec.to_toml_string().unwrap();
            assert_eq!(QuantSpec::from_toml_str(&t).unwrap(), spec, "{t}");
            let j = spec.to_json_string().unwrap();
            assert_eq!(QuantSpec::from_json_str(&j).unwrap(), spec, "{j}");
        }
    }

    #[test]
    fn files_load_by_extension() {
        let dir = std::env::temp_dir().join(format!("burn-quant-nn-recipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plan = sample_plan();
        for name in ["plan.toml", "plan.JSON"] {
            let path = dir.join(name);
            plan.to_file(&path).unwrap();
            assert_eq!(QuantPlan::from_file(&path).unwrap(), plan, "{name}");
        }
        let err = QuantPlan::from_file(dir.join("plan.yaml")).unwrap_err();
        assert!(matches!(err, RecipeError::UnknownExtension { .. }), "{err}");
        let err = QuantPlan::from_file(dir.join("missing.toml")).unwrap_err();
        assert!(matches!(err, RecipeError::Io { .. }), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_example_recipe_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/int4-g128.toml");
        let plan = QuantPlan::from_file(path).unwrap();
        assert_eq!(plan.rules.len(), 1);
        assert_eq!(plan.rules[0].pattern.as_str(), "**.weight");
        assert_eq!(
            plan.rules[0].spec,
            QuantSpec::int4_weight_per_input_group(128)
        );
        assert!(plan.decide("lm_head.weight") != plan.decide("layers.0.attn.q.weight"));
        assert!(plan.spec_for("layers.0.attn.q.weight").is_some());
        assert!(plan.spec_for("lm_head.weight").is_none());
    }

    #[test]
    fn role_granularities_parse_from_toml_and_json() {
        let plan = QuantPlan::from_toml_str(
            r#"
[[rules]]
pattern = "**.conv*.weight"
spec.format = { kind = "int", bits = 8, signed = true, narrow = true }
spec.granularity = { kind = "per_output_channel" }
spec.scale = { source = { stats = { kind = "abs_max" } }, restrict = { kind = "float" } }
spec.zero_point = { kind = "symmetric" }
spec.rounding = { kind = "nearest_even" }

[[rules]]
pattern = "**.weight"
[rules.spec]
format = { kind = "int", bits = 4, signed = true, narrow = false }
granularity = { kind = "per_input_group", size = 64 }
scale = { source = { stats = { kind = "abs_max" } }, restrict = { kind = "float" } }
zero_point = { kind = "symmetric" }
rounding = { kind = "nearest_even" }
"#,
        )
        .unwrap();
        assert_eq!(
            plan.rules[0].spec,
            QuantSpec::int8_weight_per_output_channel()
        );
        assert_eq!(
            plan.rules[1].spec,
            QuantSpec::int4_weight_per_input_group(64)
        );
        // Round trip, both formats.
        let toml_text = plan.to_toml_string().unwrap();
        assert!(toml_text.contains("per_output_channel"), "{toml_text}");
        assert_eq!(QuantPlan::from_toml_str(&toml_text).unwrap(), plan);
        let json_text = plan.to_json_string().unwrap();
        assert_eq!(QuantPlan::from_json_str(&json_text).unwrap(), plan);
        // A role takes no axis: an `axis` beside it is an unknown key, not silently dropped.
        let e = QuantPlan::from_toml_str(
            r#"
[[rules]]
pattern = "**.weight"
spec.format = { kind = "int", bits = 8, signed = true, narrow = true }
spec.granularity = { kind = "per_output_channel", axis = 1 }
spec.scale = { source = { stats = { kind = "abs_max" } }, restrict = { kind = "float" } }
spec.zero_point = { kind = "symmetric" }
spec.rounding = { kind = "nearest_even" }
"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, RecipeError::UnknownKey { path } if path == "rules[0].spec.granularity.axis"),
            "{e}"
        );
        // A role group still needs its size, and a valid one.
        let e = QuantPlan::from_toml_str(
            r#"
[[rules]]
pattern = "**.weight"
spec.format = { kind = "int", bits = 4, signed = true, narrow = false }
spec.granularity = { kind = "per_input_group", size = 0 }
spec.scale = { source = { stats = { kind = "abs_max" } }, restrict = { kind = "float" } }
spec.zero_point = { kind = "symmetric" }
spec.rounding = { kind = "nearest_even" }
"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("rules[0].spec.granularity.size: invalid value 0"),
            "{e}"
        );
    }

    /// A valid two-rule TOML plan; tests break one value of it.
    const TWO_RULES: &str = r#"
exclude = ["head.*"]

[[rules]]
pattern = "**.bias"
spec.format = { kind = "int", bits = 8, signed = true, narrow = false }
spec.granularity = { kind = "per_tensor" }
spec.scale = { source = { stats = { kind = "abs_max" } }, restrict = { kind = "float" } }
spec.zero_point = { kind = "symmetric" }
spec.rounding = { kind = "nearest_even" }

[[rules]]
pattern = "**.weight"

[rules.spec]
format = { kind = "int", bits = 4, signed = true, narrow = false }
granularity = { kind = "per_group", axis = 0, size = 128 }
scale = { source = { stats = { kind = "percentile", q = 99.5 } }, restrict = { kind = "float" } }
zero_point = { kind = "symmetric" }
rounding = { kind = "nearest_even" }
"#;

    /// The error of `TWO_RULES` with `from` replaced by `to`, as TOML and as JSON.
    fn errors_after(from: &str, to: &str) -> [String; 2] {
        assert!(TWO_RULES.contains(from), "{from}");
        let bad = TWO_RULES.replacen(from, to, 1);
        let toml_err = match QuantPlan::from_toml_str(&bad) {
            Ok(p) => panic!("parsed: {p:?}\n{bad}"),
            Err(e) => e.to_string(),
        };
        let as_json: Value = toml::from_str(&bad).unwrap();
        let json_err = match QuantPlan::from_json_str(&as_json.to_string()) {
            Ok(p) => panic!("parsed: {p:?}\n{as_json}"),
            Err(e) => e.to_string(),
        };
        [toml_err, json_err]
    }

    #[test]
    fn errors_name_the_path_inside_the_file() {
        QuantPlan::from_toml_str(TWO_RULES).unwrap();
        let cases = [
            // Values of the wrong type or range, inside the core's tagged enums.
            (
                "bits = 4",
                "bits = 300",
                "rules[1].spec.format.bits: invalid value: integer `300`, expected u8",
            ),
            (
                "bits = 8",
                "bits = \"8\"",
                "rules[0].spec.format.bits: invalid type: string \"8\", expected u8",
            ),
            (
                "size = 128",
                "size = -1",
                "rules[1].spec.granularity.size: invalid value: integer `-1`, expected usize",
            ),
            (
                "q = 99.5",
                "q = \"high\"",
                "rules[1].spec.scale.source.stats.q: invalid type: string \"high\", expected f32",
            ),
            (
                "narrow = false }\ngranularity",
                "narrow = 0 }\ngranularity",
                "rules[1].spec.format.narrow: invalid type: integer `0`, expected a boolean",
            ),
            // Unknown variants and missing fields.
            (
                "per_group",
                "per_grop",
                "rules[1].spec.granularity.kind: unknown variant `per_grop`",
            ),
            (
                "\"abs_max\"",
                "\"absmax\"",
                "rules[0].spec.scale.source.stats.kind: unknown variant `absmax`",
            ),
            (
                "axis = 0, ",
                "",
                "rules[1].spec.granularity: missing field `axis`",
            ),
            (
                "spec.rounding = { kind = \"nearest_even\" }",
                "",
                "rules[0].spec: missing field `rounding`",
            ),
            // Values that parse but are not allowed.
            (
                "bits = 4",
                "bits = 20",
                "rules[1].spec.format.bits: invalid value 20",
            ),
            (
                "size = 128",
                "size = 0",
                "rules[1].spec.granularity.size: invalid value 0",
            ),
            (
                "q = 99.5",
                "q = 120.0",
                "rules[1].spec.scale.source.stats.q: invalid value 120",
            ),
            (
                "\"**.weight\"",
                "\"a..weight\"",
                "rules[1].pattern: invalid pattern `a..weight`",
            ),
            (
                "\"head.*\"",
                "\"head.**x\"",
                "exclude[0]: invalid pattern `head.**x`",
            ),
            // Unknown keys, at every level.
            (
                "pattern = \"**.bias\"",
                "patern = \"**.bias\"",
                "rules[0].patern: unknown field `patern`",
            ),
            (
                "\nrounding = {",
                "\ncolour = 1\nrounding = {",
                "rules[1].spec.colour: unknown key",
            ),
            // A misspelt field of the core's types is first of all a missing one.
            (
                "\nzero_point = {",
                "\nzero_pont = {",
                "rules[1].spec: missing field `zero_point`",
            ),
            (
                "bits = 4,",
                "bits = 4, bitz = 4,",
                "rules[1].spec.format.bitz: unknown key",
            ),
            (
                "q = 99.5",
                "q = 99.5, grid = 3",
                "rules[1].spec.scale.source.stats.grid: unknown key",
            ),
        ];
        for (from, to, expected) in cases {
            for (syntax, e) in ["TOML", "JSON"].into_iter().zip(errors_after(from, to)) {
                assert!(
                    e.starts_with(expected),
                    "{syntax}, {from} -> {to}:\n  got      {e}\n  expected {expected}"
                );
            }
        }
        // A type error carries the line of the faulty value in TOML (line 16: `format = {...}`).
        let bad = TWO_RULES.replacen("bits = 4", "bits = 300", 1);
        let e = QuantPlan::from_toml_str(&bad).unwrap_err();
        assert!(
            matches!(
                e,
                RecipeError::Invalid {
                    location: Some(Location { line: 16, .. }),
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        let good = QuantPlan::new()
            .rule("**.weight", QuantSpec::int4_weight_per_group(128))
            .to_json_string()
            .unwrap();
        let mut v: Value = serde_json::from_str(&good).unwrap();
        // (path of the extra key, JSON pointer of the object that gets it)
        let cases = [
            ("extra", ""),
            ("rules[0].patern", "/rules/0"),
            ("rules[0].spec.colour", "/rules/0/spec"),
            ("rules[0].spec.format.bitz", "/rules/0/spec/format"),
            ("rules[0].spec.scale.sorce", "/rules/0/spec/scale"),
            (
                "rules[0].spec.scale.source.stats.q",
                "/rules/0/spec/scale/source/stats",
            ),
        ];
        for (path, parent) in cases {
            let mut bad = v.clone();
            let key = path.rsplit('.').next().unwrap();
            let object = bad
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .unwrap();
            object.insert(key.to_string(), Value::from(1));
            let text = serde_json::to_string(&bad).unwrap();
            let e = QuantPlan::from_json_str(&text).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("{path}: ")),
                "{path}: {e}"
            );
            // And the same in TOML.
            let toml_text = toml::to_string(&bad).unwrap();
            let e = QuantPlan::from_toml_str(&toml_text).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("{path}: ")),
                "{path}: {e}\n{toml_text}"
            );
        }
        // The untouched document is fine.
        v["rules"][0]["exclude"] = Value::Array(vec![]);
        QuantPlan::from_json_str(&v.to_string()).unwrap();
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = QuantPlan::from_toml_str("[[rules]]\npattern = \n").unwrap_err();
        assert!(
            matches!(
                e,
                RecipeError::Syntax {
                    format: RecipeFormat::Toml,
                    location: Some(Location { line: 2, .. }),
                    ..
                }
            ),
            "{e:?}"
        );
        let e = QuantPlan::from_json_str("{\n \"rules\": [,]}").unwrap_err();
        assert!(
            matches!(
                e,
                RecipeError::Syntax {
                    format: RecipeFormat::Json,
                    location: Some(Location { line: 2, .. }),
                    ..
                }
            ),
            "{e:?}"
        );
        let e = QuantPlan::from_json_str("{} {}").unwrap_err();
        assert!(matches!(e, RecipeError::Syntax { .. }), "{e:?}");
    }

    #[test]
    fn spec_recipes_check_values() {
        let mut v = serde_json::to_value(QuantSpec::int4_weight_per_group(128)).unwrap();
        v["granularity"]["size"] = Value::from(0);
        let e = QuantSpec::from_json_str(&v.to_string()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("granularity.size: invalid value 0"),
            "{e}"
        );
        // The core calls the statistic `scale.stat`; the error gives its place in the file.
        let learned = QuantSpec::int8_weight_per_channel()
            .with_scale_source(ScaleSource::Learned(ScaleStat::Percentile { q: 0.0 }));
        let e = QuantSpec::from_json_str(&serde_json::to_string(&learned).unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("scale.source.learned.q: invalid value 0"),
            "{e}"
        );
    }
}
