//! Stage 1 on the Llama model: its declared [`Regions`], the recipe steps
//! ([`Stage1Step`]: norm folding, SmoothQuant, QuaRot's rotations R1–R4, HIP, MagR) and
//! KV-cache quantization ([`KvQuant`]).
//!
//! Paths are Hugging Face names without `.weight` (`model.layers.3.self_attn.v_proj`,
//! `model.layers.3.input_layernorm`, `model.embed_tokens`, `model.norm`, `lm_head`); input
//! sites are `model.layers.N.{qkv, attn_out, gate_up, down}` and the query/key site
//! `model.layers.N.qk`. Every step except MagR leaves the float function unchanged (tested on
//! SmolLM2's real logits); MagR changes it slightly by design (it trades output error for a
//! smaller weight range).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use burn::module::Param;
use burn::tensor::Tensor;
use burn_quant_core::{Granularity, QuantSpec, ScaleSource, ScaleStat};
use burn_quant_ptq::stage1::{
    Heads, Magr, Region, Regions, Rotation, RotationMode, Stage1Report, fold_norms, rotate_heads,
    rotate_online, rotate_query_key, rotate_residual, smooth,
};
use burn_quant_ptq::{CalibInputs, LayerStats, PtqError};
use serde::{Deserialize, Serialize};

use crate::block::{InputSite, LinearSlot};
use crate::error::{LlmError, Result};
use crate::model::LlamaModel;

type PtqResult<T> = std::result::Result<T, PtqError>;

/// The name of an input site in a block (`qkv`, `attn_out`, `gate_up`, `down`).
pub fn site_name(site: InputSite) -> &'static str {
    match site {
        InputSite::Qkv => "qkv",
        InputSite::AttnOut => "attn_out",
        InputSite::GateUp => "gate_up",
        InputSite::Down => "down",
    }
}

/// What a path names in the Llama model.
enum Target {
    Linear(usize, LinearSlot),
    Head,
    InputNorm(usize),
    PostNorm(usize),
    FinalNorm,
    Embedding,
    Site(usize, InputSite),
    QueryKey(usize),
}

fn unknown(path: &str) -> PtqError {
    PtqError::Region {
        transform: "llama regions",
        path: path.to_string(),
        reason: "the Llama model has no such parameter or site".into(),
    }
}

impl LlamaModel {
    fn target(&self, path: &str) -> PtqResult<Target> {
        match path {
            "lm_head" => return Ok(Target::Head),
            "model.norm" => return Ok(Target::FinalNorm),
            "model.embed_tokens" => return Ok(Target::Embedding),
            _ => {}
        }
        let rest = path
            .strip_prefix("model.layers.")
            .ok_or_else(|| unknown(path))?;
        let (i, name) = rest.split_once('.').ok_or_else(|| unknown(path))?;
        let i: usize = i.parse().map_err(|_| unknown(path))?;
        if i >= self.num_blocks() {
            return Err(unknown(path));
        }
        if let Some(slot) = LinearSlot::ALL.into_iter().find(|s| s.hf_name() == name) {
            return Ok(Target::Linear(i, slot));
        }
        if let Some(site) = InputSite::ALL.into_iter().find(|s| site_name(*s) == name) {
            return Ok(Target::Site(i, site));
        }
        match name {
            "input_layernorm" => Ok(Target::InputNorm(i)),
            "post_attention_layernorm" => Ok(Target::PostNorm(i)),
            "qk" => Ok(Target::QueryKey(i)),
            _ => Err(unknown(path)),
        }
    }

    fn linear_at(&self, path: &str) -> PtqResult<&burn_quant_nn::QuantLinear> {
        match self.target(path)? {
            Target::Linear(i, slot) => Ok(self.layers[i].linear(slot)),
            Target::Head => Ok(&self.lm_head),
            _ => Err(unknown(path)),
        }
    }

    fn linear_at_mut(&mut self, path: &str) -> PtqResult<&mut burn_quant_nn::QuantLinear> {
        match self.target(path)? {
            Target::Linear(i, slot) => Ok(self.layers[i].linear_mut(slot)),
            Target::Head => Ok(&mut self.lm_head),
            _ => Err(unknown(path)),
        }
    }

    fn norm_at_mut(&mut self, path: &str) -> PtqResult<&mut crate::norm::RmsNorm> {
        match self.target(path)? {
            Target::InputNorm(i) => Ok(&mut self.layers[i].input_layernorm),
            Target::PostNorm(i) => Ok(&mut self.layers[i].post_attention_layernorm),
            Target::FinalNorm => Ok(&mut self.norm),
            _ => Err(unknown(path)),
        }
    }

    /// Whether any block carries an online rotation (llama.cpp and other plain Llama runtimes
    /// cannot run such a model as it is).
    pub fn has_online_rotations(&self) -> bool {
        self.layers.iter().any(|b| b.has_online_rotations())
    }

    /// Whether any block quantizes its keys, values or queries.
    pub fn has_kv_quant(&self) -> bool {
        self.layers.iter().any(|b| {
            let a = &b.self_attn;
            a.key_quant.is_some() || a.value_quant.is_some() || a.query_quant.is_some()
        })
    }
}

fn check_same(path: &str, have: &[usize], got: &[usize]) -> PtqResult<()> {
    if have != got {
        return Err(PtqError::ShapeMismatch {
            what: "stage-1 replacement",
            got: got.to_vec(),
            expected: format!("{have:?} for {path}"),
        });
    }
    Ok(())
}

impl Regions for LlamaModel {
    fn regions(&self) -> Vec<Region> {
        let hp = &self.hparams;
        let repeat = hp.num_attention_heads / hp.num_key_value_heads.max(1);
        let mut out = vec![];
        let (mut norms, mut readers, mut writers) = (vec![], vec![], vec![]);
        for i in 0..self.num_blocks() {
            let p = |name: &str| format!("model.layers.{i}.{name}");
            let lin = |s: LinearSlot| p(s.hf_name());
            let qkv = vec![lin(LinearSlot::Q), lin(LinearSlot::K), lin(LinearSlot::V)];
            let gate_up = vec![lin(LinearSlot::Gate), lin(LinearSlot::Up)];
            out.push(Region::Norm {
                norm: p("input_layernorm"),
                input: p("qkv"),
                sinks: qkv.clone(),
            });
            out.push(Region::Online {
                input: p("qkv"),
                sinks: qkv.clone(),
            });
            out.push(Region::QueryKey {
                site: p("qk"),
                head_dim: hp.head_dim,
            });
            out.push(Region::Linear {
                source: lin(LinearSlot::V),
                input: p("attn_out"),
                sinks: vec![lin(LinearSlot::O)],
                heads: Some(Heads {
                    head_dim: hp.head_dim,
                    repeat,
                }),
            });
            out.push(Region::Online {
                input: p("attn_out"),
                sinks: vec![lin(LinearSlot::O)],
            });
            out.push(Region::Norm {
                norm: p("post_attention_layernorm"),
                input: p("gate_up"),
                sinks: gate_up.clone(),
            });
            out.push(Region::Online {
                input: p("gate_up"),
                sinks: gate_up.clone(),
            });
            out.push(Region::Linear {
                source: lin(LinearSlot::Up),
                input: p("down"),
                sinks: vec![lin(LinearSlot::Down)],
                heads: None,
            });
            out.push(Region::Online {
                input: p("down"),
                sinks: vec![lin(LinearSlot::Down)],
            });
            norms.extend([p("input_layernorm"), p("post_attention_layernorm")]);
            readers.extend(qkv.into_iter().chain(gate_up));
            writers.extend([lin(LinearSlot::O), lin(LinearSlot::Down)]);
        }
        out.push(Region::Norm {
            norm: "model.norm".into(),
            input: "head".into(),
            sinks: vec!["lm_head".into()],
        });
        norms.push("model.norm".into());
        readers.push("lm_head".into());
        out.push(Region::Residual {
            embeddings: vec!["model.embed_tokens".into()],
            norms,
            readers,
            writers,
        });
        out
    }

    fn linear_weight(&self, path: &str) -> PtqResult<Tensor<2>> {
        Ok(self.linear_at(path)?.weight.val())
    }

    fn set_linear_weight(&mut self, path: &str, weight: Tensor<2>) -> PtqResult<()> {
        let layer = self.linear_at_mut(path)?;
        check_same(path, &layer.weight.dims(), &weight.dims())?;
        layer.weight = Param::initialized(layer.weight.id, weight);
        Ok(())
    }

    fn linear_bias(&self, path: &str) -> PtqResult<Option<Tensor<1>>> {
        Ok(self.linear_at(path)?.bias.as_ref().map(|b| b.val()))
    }

    fn set_linear_bias(&mut self, path: &str, bias: Tensor<1>) -> PtqResult<()> {
        let layer = self.linear_at_mut(path)?;
        check_same(path, &[layer.weight.dims()[1]], &bias.dims())?;
        layer.bias = Some(match &layer.bias {
            Some(b) => Param::initialized(b.id, bias),
            None => Param::from_tensor(bias),
        });
        Ok(())
    }

    fn norm_weight(&self, path: &str) -> PtqResult<Tensor<1>> {
        Ok(match self.target(path)? {
            Target::InputNorm(i) => self.layers[i].input_layernorm.weight.val(),
            Target::PostNorm(i) => self.layers[i].post_attention_layernorm.weight.val(),
            Target::FinalNorm => self.norm.weight.val(),
            _ => return Err(unknown(path)),
        })
    }

    fn set_norm_weight(&mut self, path: &str, weight: Tensor<1>) -> PtqResult<()> {
        let norm = self.norm_at_mut(path)?;
        check_same(path, &norm.weight.dims(), &weight.dims())?;
        norm.weight = Param::initialized(norm.weight.id, weight);
        Ok(())
    }

    fn embedding(&self, path: &str) -> PtqResult<Tensor<2>> {
        match self.target(path)? {
            Target::Embedding => Ok(self.embed_tokens.weight.val()),
            _ => Err(unknown(path)),
        }
    }

    fn set_embedding(&mut self, path: &str, table: Tensor<2>) -> PtqResult<()> {
        match self.target(path)? {
            Target::Embedding => {
                let w = &mut self.embed_tokens.weight;
                check_same(path, &w.dims(), &table.dims())?;
                *w = Param::initialized(w.id, table);
                Ok(())
            }
            _ => Err(unknown(path)),
        }
    }

    fn online_rotation(&self, site: &str) -> PtqResult<Option<Rotation>> {
        match self.target(site)? {
            Target::Site(i, s) => Ok(self.layers[i].site_rotation(s).cloned()),
            Target::QueryKey(i) => Ok(self.layers[i].self_attn.qk_rotation.clone()),
            _ => Err(unknown(site)),
        }
    }

    fn set_online_rotation(&mut self, site: &str, rotation: Option<Rotation>) -> PtqResult<()> {
        match self.target(site)? {
            Target::Site(i, s) => *self.layers[i].site_rotation_mut(s) = rotation,
            Target::QueryKey(i) => self.layers[i].self_attn.qk_rotation = rotation,
            _ => return Err(unknown(site)),
        }
        Ok(())
    }
}

/// SmoothQuant's migration strength.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmoothQuantConfig {
    /// α in `s_j = max|X_j|^α / max|W_j|^(1−α)` (0.5 in the paper and in Brevitas).
    pub alpha: f64,
}

impl Default for SmoothQuantConfig {
    fn default() -> Self {
        Self { alpha: 0.5 }
    }
}

/// How a rotation is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationConfig {
    /// `had` (Hadamard: randomized by seeded signs where fused, deterministic where online)
    /// or `ort` (a seeded random orthogonal matrix), Brevitas's `--rotation-mode`.
    pub mode: RotationMode,
    /// Seed of the random signs or of the random orthogonal matrix.
    pub seed: u64,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            mode: RotationMode::Had,
            seed: 0,
        }
    }
}

impl RotationConfig {
    /// A rotation of width `n` fused into weights (residual stream, heads).
    fn fused(&self, n: usize) -> PtqResult<Rotation> {
        match self.mode {
            RotationMode::Had => Rotation::randomized_hadamard(n, self.seed),
            RotationMode::Ort => Ok(Rotation::random_orthogonal(n, self.seed)),
        }
    }

    /// A rotation of width `n` applied online (its Hadamard is deterministic: a fast
    /// transform needs no stored matrix).
    fn online(&self, n: usize) -> PtqResult<Rotation> {
        match self.mode {
            RotationMode::Had => Rotation::hadamard(n),
            RotationMode::Ort => Ok(Rotation::random_orthogonal(n, self.seed)),
        }
    }
}

/// One Stage-1 step of a recipe, applied in list order (Brevitas's order is: fold norms,
/// rotations, SmoothQuant, MagR). In TOML: a name (`"hip"`, `"smoothquant"`,
/// `"quarot:ort"`, `"smoothquant:0.8"`, see [`Stage1Step::from_name`]) or a table
/// (`{ smoothquant = { alpha = 0.8 } }`, `{ hip = { mode = "ort", seed = 3 } }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Stage1Step {
    /// Fold every RMSNorm gain into the linear layers that read it.
    FoldNorms,
    /// SmoothQuant / activation equalization on norm → q/k/v, norm → gate/up, v → o (per
    /// head) and up → down, with statistics from the calibration windows.
    #[serde(rename = "smoothquant")]
    SmoothQuant(SmoothQuantConfig),
    /// QuaRot's R1: the residual stream rotated, fused into the embedding, every block and
    /// the head (folds the norms first).
    RotateResidual(RotationConfig),
    /// QuaRot's R2: every value head and the matching output-projection columns.
    RotateHeads(RotationConfig),
    /// QuaRot's R4: an online rotation of the down-projection input, fused into its weight.
    RotateDown(RotationConfig),
    /// QuaRot's R3: an online rotation of queries and keys after RoPE (for KV-cache
    /// quantization).
    RotateQk(RotationConfig),
    /// QuaRot: fold norms, R1, R2, R4 and R3.
    Quarot(RotationConfig),
    /// Hadamard incoherence processing as Brevitas's `--rotation layerwise` does it: an online
    /// rotation of every block linear's input, fused into the weights (deterministic
    /// Hadamard with `had`).
    Hip(RotationConfig),
    /// MagR: weight magnitude reduction per layer, on calibration statistics.
    Magr(Magr),
}

impl Stage1Step {
    /// A step by short name: `fold_norms`, `smoothquant[:α]`, `rotate_residual[:mode]`,
    /// `rotate_heads[:mode]`, `rotate_down[:mode]`, `rotate_qk[:mode]`, `quarot[:mode]`,
    /// `hip[:mode]`, `magr[:α]` (mode `had` or `ort`; defaults otherwise).
    pub fn from_name(name: &str) -> Result<Self> {
        let (head, arg) = match name.split_once(':') {
            Some((h, a)) => (h, Some(a)),
            None => (name, None),
        };
        let bad = |why: String| LlmError::invalid("stage1", name, why);
        let number = |a: &str| -> Result<f64> {
            a.parse::<f64>()
                .map_err(|_| bad(format!("`{a}` is not a number")))
        };
        let rotation = || -> Result<RotationConfig> {
            let mode = match arg {
                None | Some("had") => RotationMode::Had,
                Some("ort") => RotationMode::Ort,
                Some(other) => {
                    return Err(bad(format!(
                        "rotation mode `{other}`: expected `had` or `ort`"
                    )));
                }
            };
            Ok(RotationConfig { mode, seed: 0 })
        };
        let step = match head {
            "fold_norms" if arg.is_none() => Stage1Step::FoldNorms,
            "smoothquant" => Stage1Step::SmoothQuant(SmoothQuantConfig {
                alpha: arg.map(number).transpose()?.unwrap_or(0.5),
            }),
            "rotate_residual" => Stage1Step::RotateResidual(rotation()?),
            "rotate_heads" => Stage1Step::RotateHeads(rotation()?),
            "rotate_down" => Stage1Step::RotateDown(rotation()?),
            "rotate_qk" => Stage1Step::RotateQk(rotation()?),
            "quarot" => Stage1Step::Quarot(rotation()?),
            "hip" => Stage1Step::Hip(rotation()?),
            "magr" => {
                let mut m = Magr::default();
                if let Some(a) = arg {
                    m.alpha = number(a)?;
                }
                Stage1Step::Magr(m)
            }
            _ => {
                return Err(bad(
                    "expected fold_norms, smoothquant[:alpha], rotate_residual, rotate_heads, \
                     rotate_down, rotate_qk, quarot, hip (each [:had|:ort]) or magr[:alpha]"
                        .into(),
                ));
            }
        };
        step.validate()?;
        Ok(step)
    }

    /// Checks the step's parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            Stage1Step::SmoothQuant(c)
                if !(c.alpha.is_finite() && (0.0..=1.0).contains(&c.alpha)) =>
            {
                Err(LlmError::invalid(
                    "stage1.smoothquant.alpha",
                    c.alpha,
                    "must be in [0, 1]",
                ))
            }
            Stage1Step::Magr(m) => Ok(m.validate()?),
            _ => Ok(()),
        }
    }

    /// Whether the step inserts an online rotation (a runtime without one, such as llama.cpp,
    /// cannot run the result).
    pub fn has_online_rotation(&self) -> bool {
        matches!(
            self,
            Stage1Step::RotateDown(_)
                | Stage1Step::RotateQk(_)
                | Stage1Step::Quarot(_)
                | Stage1Step::Hip(_)
        )
    }

    /// Whether the step needs calibration windows.
    pub fn needs_data(&self) -> bool {
        matches!(self, Stage1Step::SmoothQuant(_) | Stage1Step::Magr(_))
    }

    /// A short label (`smoothquant α=0.5`, `hip ort`).
    pub fn label(&self) -> String {
        let rot = |name: &str, c: &RotationConfig| match c.mode {
            RotationMode::Had => name.to_string(),
            RotationMode::Ort => format!("{name} ort"),
        };
        match self {
            Stage1Step::FoldNorms => "fold_norms".into(),
            Stage1Step::SmoothQuant(c) => format!("smoothquant α={}", c.alpha),
            Stage1Step::RotateResidual(c) => rot("rotate_residual", c),
            Stage1Step::RotateHeads(c) => rot("rotate_heads", c),
            Stage1Step::RotateDown(c) => rot("rotate_down", c),
            Stage1Step::RotateQk(c) => rot("rotate_qk", c),
            Stage1Step::Quarot(c) => rot("quarot", c),
            Stage1Step::Hip(c) => rot("hip", c),
            Stage1Step::Magr(m) => format!("magr α={}", m.alpha),
        }
    }
}

/// A Stage-1 entry of a recipe: a short name or a full step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stage1Entry {
    /// A name [`Stage1Step::from_name`] knows.
    Name(String),
    /// A full step.
    Step(Stage1Step),
}

impl Stage1Entry {
    /// The step this entry names.
    pub fn step(&self) -> Result<Stage1Step> {
        match self {
            Stage1Entry::Name(n) => Stage1Step::from_name(n),
            Stage1Entry::Step(s) => {
                s.validate()?;
                Ok(s.clone())
            }
        }
    }
}

/// What one applied step did and cost.
#[derive(Clone, Debug)]
pub struct Stage1Timing {
    /// The step's label.
    pub step: String,
    /// Wall time, calibration passes included.
    pub time: Duration,
    /// What changed.
    pub report: Stage1Report,
}

/// Applies `steps` in order to `model`, calibrating the data-driven ones (SmoothQuant, MagR)
/// on `windows` in batches of `batch_windows` with the model as transformed so far. With tied
/// embeddings, the head is untied once a step makes it differ from the embedding.
pub fn apply_stage1(
    model: &mut LlamaModel,
    steps: &[Stage1Step],
    windows: &[Vec<u32>],
    batch_windows: usize,
) -> Result<Vec<Stage1Timing>> {
    let mut out = vec![];
    for step in steps {
        step.validate()?;
        if step.needs_data() && windows.is_empty() {
            return Err(LlmError::Calibration(format!(
                "Stage 1 `{}` needs calibration windows",
                step.label()
            )));
        }
        let t = Instant::now();
        let report = apply_step(model, step, windows, batch_windows)?;
        out.push(Stage1Timing {
            step: step.label(),
            time: t.elapsed(),
            report,
        });
    }
    if model.hparams.tie_word_embeddings && !steps.is_empty() && !head_is_tied(model)? {
        model.hparams.tie_word_embeddings = false;
    }
    Ok(out)
}

/// Whether the head still equals the transposed embedding table.
fn head_is_tied(model: &LlamaModel) -> Result<bool> {
    let e = model.embed_tokens.weight.val();
    let h = model.lm_head.weight.val().transpose();
    let (e, h) = (
        e.into_data().try_to_vec::<f32>().map_err(data_error)?,
        h.into_data().try_to_vec::<f32>().map_err(data_error)?,
    );
    Ok(e == h)
}

fn data_error(e: burn::tensor::DataError) -> LlmError {
    LlmError::Calibration(format!("reading a tensor: {e:?}"))
}

fn add(a: &mut Stage1Report, b: Stage1Report) {
    a.regions += b.regions;
    a.tensors += b.tensors;
    a.online += b.online;
    a.skipped.extend(b.skipped);
}

fn apply_step(
    model: &mut LlamaModel,
    step: &Stage1Step,
    windows: &[Vec<u32>],
    batch_windows: usize,
) -> Result<Stage1Report> {
    let site = |name: &'static str| move |s: &str| s.ends_with(name);
    Ok(match step {
        Stage1Step::FoldNorms => fold_norms(model)?,
        Stage1Step::SmoothQuant(c) => {
            let stats = input_absmax(model, windows, batch_windows)?;
            smooth(model, &stats, c.alpha)?
        }
        Stage1Step::RotateResidual(c) => {
            let mut r = fold_norms(model)?;
            let rotation = c.fused(model.hparams.hidden_size)?;
            add(&mut r, rotate_residual(model, &rotation)?);
            r
        }
        Stage1Step::RotateHeads(c) => {
            let rotation = c.fused(model.hparams.head_dim)?;
            rotate_heads(model, &rotation)?
        }
        Stage1Step::RotateDown(c) => rotate_online(model, &site(".down"), &mut online_by_width(c))?,
        Stage1Step::RotateQk(c) => rotate_query_key(model, &mut online_by_width(c))?,
        Stage1Step::Quarot(c) => {
            let mut r = Stage1Report::default();
            for s in [
                Stage1Step::RotateResidual(*c),
                Stage1Step::RotateHeads(*c),
                Stage1Step::RotateDown(*c),
                Stage1Step::RotateQk(*c),
            ] {
                add(&mut r, apply_step(model, &s, windows, batch_windows)?);
            }
            r
        }
        Stage1Step::Hip(c) => rotate_online(model, &|_| true, &mut online_by_width(c))?,
        Stage1Step::Magr(m) => apply_magr(model, m, windows, batch_windows)?,
    })
}

/// Online rotations by width, each built once (a random orthogonal matrix costs a QR
/// decomposition; every site of one width shares it, as every head shares QuaRot's R2).
fn online_by_width(c: &RotationConfig) -> impl FnMut(usize) -> PtqResult<Rotation> + '_ {
    let mut built: BTreeMap<usize, Rotation> = BTreeMap::new();
    move |n| {
        if let Some(r) = built.get(&n) {
            return Ok(r.clone());
        }
        let r = c.online(n)?;
        built.insert(n, r.clone());
        Ok(r)
    }
}

/// `[batch, seq, d]` → per-channel `max |x|`, `[d]`, on the host.
fn channel_absmax(x: &Tensor<3>) -> Result<Vec<f32>> {
    let [b, s, d] = x.dims();
    x.clone()
        .abs()
        .reshape([b * s, d])
        .max_dim(0)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(data_error)
}

fn batches(
    model: &LlamaModel,
    windows: &[Vec<u32>],
    batch_windows: usize,
) -> Result<Vec<Tensor<3>>> {
    windows
        .chunks(batch_windows.max(1))
        .map(|chunk| {
            let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            model.embed(model.tokens(&rows)?)
        })
        .collect()
}

/// The largest `|x_j|` per channel of every block linear's input over `windows`, keyed by
/// site path (`model.layers.N.qkv`, …), from the float model (quantizers off).
pub fn input_absmax(
    model: &LlamaModel,
    windows: &[Vec<u32>],
    batch_windows: usize,
) -> Result<BTreeMap<String, Vec<f32>>> {
    let seq = windows.first().map_or(0, Vec::len);
    if windows.is_empty() || seq == 0 || windows.iter().any(|w| w.len() != seq) {
        return Err(LlmError::Calibration(
            "activation statistics need non-empty windows of one length".into(),
        ));
    }
    let rope = model.rope(seq)?;
    let mut stats: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    burn_quant_nn::without_quantization(|| -> Result<()> {
        for mut x in batches(model, windows, batch_windows)? {
            for (i, block) in model.layers.iter().enumerate() {
                let mut failure = None;
                let mut see = |site: InputSite, t: &Tensor<3>| match channel_absmax(t) {
                    Ok(m) => {
                        let key = format!("model.layers.{i}.{}", site_name(site));
                        let e = stats.entry(key).or_insert_with(|| vec![0.0; m.len()]);
                        e.iter_mut().zip(&m).for_each(|(a, b)| *a = a.max(*b));
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                };
                x = block.forward(x, &rope, Some(&mut see))?;
                if let Some(e) = failure {
                    return Err(e);
                }
            }
        }
        Ok(())
    })?;
    Ok(stats)
}

/// MagR on every block linear, block by block: each block's input statistics come from the
/// blocks before it as MagR left them.
fn apply_magr(
    model: &mut LlamaModel,
    magr: &Magr,
    windows: &[Vec<u32>],
    batch_windows: usize,
) -> Result<Stage1Report> {
    let seq = windows.first().map_or(0, Vec::len);
    let rope = model.rope(seq)?;
    let mut xs = batches(model, windows, batch_windows)?;
    let mut report = Stage1Report::default();
    burn_quant_nn::without_quantization(|| -> Result<()> {
        for i in 0..model.num_blocks() {
            let mut stats: BTreeMap<InputSite, LayerStats> = BTreeMap::new();
            let block = model.block(i)?;
            for x in &xs {
                let mut failure = None;
                let mut see = |site: InputSite, t: &Tensor<3>| {
                    let [b, s, d] = t.dims();
                    let st = stats
                        .entry(site)
                        .or_insert_with(|| LayerStats::new(d, CalibInputs::Quantized));
                    if let Err(e) = st.observe(&t.clone().reshape([b * s, d]), None) {
                        failure.get_or_insert(e);
                    }
                };
                block.forward(x.clone(), &rope, Some(&mut see))?;
                if let Some(e) = failure {
                    return Err(e.into());
                }
            }
            let block = model.block_mut(i)?;
            for slot in LinearSlot::ALL {
                let w = block.linear(slot).weight.val();
                let (w, _) = magr.apply(&w, &stats[&slot.input()])?;
                block.set_linear_weight(slot, w)?;
                report.tensors += 1;
            }
            report.regions += 1;
            let block = model.block(i)?;
            for x in xs.iter_mut() {
                *x = block.forward(x.clone(), &rope, None)?;
            }
        }
        Ok(())
    })?;
    Ok(report)
}

/// Quantization of the attention inputs: keys and values as the KV cache holds them (after
/// RoPE and the query/key rotation), and optionally the queries. Specs act on
/// `[batch, heads, seq, head_dim]` tensors and must have dynamic scales (the cache is written
/// token by token): per head and token is groups along axis 3 at least `head_dim` long
/// ([`KvQuant::per_head_token`]).
#[derive(Clone, Debug, PartialEq)]
pub struct KvQuant {
    /// Spec of the keys.
    pub keys: QuantSpec,
    /// Spec of the values.
    pub values: QuantSpec,
    /// Spec of the queries (attention-input quantization), if any.
    pub queries: Option<QuantSpec>,
}

/// One group along the head axis longer than any head: one scale per (batch, head, token).
const PER_HEAD_TOKEN: Granularity = Granularity::PerGroup {
    axis: 3,
    size: usize::MAX >> 1,
};

impl KvQuant {
    /// Keys and values with `spec`'s format, one dynamic absmax scale per head and token.
    pub fn per_head_token(spec: QuantSpec) -> Self {
        let spec = spec
            .with_granularity(PER_HEAD_TOKEN)
            .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax));
        Self {
            keys: spec,
            values: spec,
            queries: None,
        }
    }

    /// Per head/token presets by name: `int4`, `int8` (symmetric), `fp8_e4m3`.
    pub fn preset(name: &str) -> Result<Self> {
        let spec = match name {
            "fp8_e4m3" => QuantSpec::fp8_e4m3_act_per_tensor(),
            other => match other.strip_prefix("int").and_then(|b| b.parse::<u8>().ok()) {
                Some(b) if (2..=16).contains(&b) => QuantSpec::int8_act_per_tensor().with_bits(b),
                _ => {
                    return Err(LlmError::invalid(
                        "kv",
                        name,
                        "expected int{bits} (per head and token) or fp8_e4m3",
                    ));
                }
            },
        };
        Ok(Self::per_head_token(spec))
    }

    /// Also quantizes the queries with the key spec.
    pub fn with_queries(mut self) -> Self {
        self.queries = Some(self.keys);
        self
    }

    /// Checks every spec: valid, and dynamic.
    pub fn validate(&self) -> Result<()> {
        for (field, spec) in [
            ("kv.keys", Some(&self.keys)),
            ("kv.values", Some(&self.values)),
            ("kv.queries", self.queries.as_ref()),
        ] {
            let Some(spec) = spec else { continue };
            spec.validate()
                .map_err(|e| LlmError::invalid(field, spec, e.to_string()))?;
            if !matches!(spec.scale.source, ScaleSource::Dynamic(_)) {
                return Err(LlmError::invalid(
                    field,
                    spec,
                    "KV-cache scales must be dynamic (the cache is written token by token)",
                ));
            }
        }
        Ok(())
    }
}

/// Puts the key, value (and query) quantizers of `kv` on every block's attention.
pub fn quantize_kv(model: &mut LlamaModel, kv: &KvQuant) -> Result<()> {
    kv.validate()?;
    let device = model.device();
    let make = |spec: Option<QuantSpec>, field| -> Result<_> {
        Ok(burn_quant_nn::quantizer::activation_quantizer(
            spec,
            field,
            &[],
            &device,
        )?)
    };
    for block in model.layers.iter_mut() {
        let a = &mut block.self_attn;
        a.key_quant = make(Some(kv.keys), "key_quant")?;
        a.value_quant = make(Some(kv.values), "value_quant")?;
        a.query_quant = make(kv.queries, "query_quant")?;
    }
    Ok(())
}
