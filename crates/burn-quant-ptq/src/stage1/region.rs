//! Transformable regions and the Stage-1 transforms written once against them.
//!
//! A model says where a function-preserving transform may act by implementing [`Regions`]:
//! it lists its [`Region`]s and gives access to the parameters they name (by path) and to its
//! online-rotation slots. The Llama model declares its regions by hand; graph mode discovers
//! them. The transforms here — [`fold_norms`], [`smooth`], [`rotate_residual`],
//! [`rotate_heads`], [`rotate_online`], [`rotate_query_key`] — then work on any such model.
//!
//! Layout conventions: a linear weight is Burn's `[d_in, d_out]` (input channel `j` is row
//! `j`); an embedding table is `[vocab, d]`; a [`Rotation`] `M` maps a feature vector `x` to
//! `M·x`, so fusing it into a reader is `W ← M·W` (every column along the input axis,
//! [`Rotation::apply_columns`]) and into a writer `W ← W·Mᵀ` (every row,
//! [`Rotation::apply_rows`]).

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use super::rotation::Rotation;
use crate::error::{PtqError, Result};

/// Channels grouped in attention heads of `head_dim`; each source head feeds `repeat`
/// consecutive sink heads (grouped-query attention: `n_heads / n_kv_heads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Width of one head.
    pub head_dim: usize,
    /// Sink heads per source head (1 without GQA).
    pub repeat: usize,
}

/// A place in a model where a Stage-1 transform can act without changing its float function.
/// Paths name parameters the way the model's [`Regions`] accessors take them; `input` names
/// an activation site (the input that the sinks share), the key of calibration statistics and
/// of online rotations.
#[derive(Clone, Debug, PartialEq)]
pub enum Region {
    /// A per-channel gain (an RMSNorm weight) whose output is read, channel for channel, only
    /// by the linear layers `sinks`. Foldable (`W ← diag(g)·W`, `g ← 1`) and smoothable
    /// (`g ← g/s`, `W ← diag(s)·W`).
    Norm {
        /// Path of the gain.
        norm: String,
        /// The sinks' shared input site.
        input: String,
        /// The linear layers reading the norm's output.
        sinks: Vec<String>,
    },
    /// The output channels of linear `source` reach the inputs of `sinks` through a map that
    /// is linear in each channel: through attention (which mixes tokens, not features) for
    /// value → output, with `heads` set, where per-head rotations commute too; through
    /// SwiGLU's product with the gate for up → down (`heads` is `None`), where only
    /// per-channel scales do.
    Linear {
        /// Path of the producing layer.
        source: String,
        /// The sinks' shared input site.
        input: String,
        /// The consuming layers.
        sinks: Vec<String>,
        /// Head grouping of the channels, when the path is per head.
        heads: Option<Heads>,
    },
    /// The residual stream: started by `embeddings` (`[vocab, d]` tables), added to by
    /// `writers` (their outputs), read by `readers` (their inputs) through the gains `norms`,
    /// which must be all ones (folded) before a rotation: RMSNorm commutes with an orthogonal
    /// map only without its gain.
    Residual {
        /// Embedding tables writing the stream's first value.
        embeddings: Vec<String>,
        /// Norm gains between the stream and its readers.
        norms: Vec<String>,
        /// Linear layers reading the (normalized) stream.
        readers: Vec<String>,
        /// Linear layers whose output is added to the stream.
        writers: Vec<String>,
    },
    /// An input site of linear layers where the model can apply an online rotation before the
    /// layers (and their input quantizers): Hadamard incoherence processing and QuaRot's
    /// down-projection rotation.
    Online {
        /// The site.
        input: String,
        /// The layers reading it.
        sinks: Vec<String>,
    },
    /// Queries and keys after the positional encoding, per head: the same online rotation of
    /// both preserves every score `q·k`, and the key cache then holds rotated keys.
    QueryKey {
        /// The site.
        site: String,
        /// Width of one head.
        head_dim: usize,
    },
}

/// A model whose Stage-1 regions are declared, with access to the parameters they name.
pub trait Regions {
    /// The regions, in forward order.
    fn regions(&self) -> Vec<Region>;
    /// A linear weight, `[d_in, d_out]`.
    fn linear_weight(&self, path: &str) -> Result<Tensor<2>>;
    /// Replaces a linear weight (same shape).
    fn set_linear_weight(&mut self, path: &str, weight: Tensor<2>) -> Result<()>;
    /// A linear bias, `[d_out]`, if the layer has one.
    fn linear_bias(&self, path: &str) -> Result<Option<Tensor<1>>>;
    /// Replaces (or adds) a linear bias.
    fn set_linear_bias(&mut self, path: &str, bias: Tensor<1>) -> Result<()>;
    /// A norm gain, `[d]`.
    fn norm_weight(&self, path: &str) -> Result<Tensor<1>>;
    /// Replaces a norm gain.
    fn set_norm_weight(&mut self, path: &str, weight: Tensor<1>) -> Result<()>;
    /// An embedding table, `[vocab, d]`.
    fn embedding(&self, path: &str) -> Result<Tensor<2>>;
    /// Replaces an embedding table.
    fn set_embedding(&mut self, path: &str, table: Tensor<2>) -> Result<()>;
    /// The online rotation at a site ([`Region::Online`] input or [`Region::QueryKey`] site).
    fn online_rotation(&self, site: &str) -> Result<Option<Rotation>>;
    /// Sets (or removes) the online rotation at a site.
    fn set_online_rotation(&mut self, site: &str, rotation: Option<Rotation>) -> Result<()>;
}

/// What a transform changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stage1Report {
    /// Regions the transform acted on.
    pub regions: usize,
    /// Weight matrices and tables rewritten.
    pub tensors: usize,
    /// Online rotations inserted.
    pub online: usize,
    /// Regions left alone, with why (e.g. SmoothQuant on an input already rotated online).
    pub skipped: Vec<(String, String)>,
}

fn host2(t: Tensor<2>) -> Result<(Vec<f32>, [usize; 2])> {
    let dims = t.dims();
    let v = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| PtqError::InvalidStatistics {
            reason: format!("reading a weight: {e:?}"),
        })?;
    Ok((v, dims))
}

fn host1(t: Tensor<1>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| PtqError::InvalidStatistics {
            reason: format!("reading a vector: {e:?}"),
        })
}

fn like2(data: Vec<f32>, dims: [usize; 2], like: &Tensor<2>) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, dims), &like.device())
}

fn like1(data: Vec<f32>, like: &Tensor<1>) -> Tensor<1> {
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), &like.device())
}

fn region_error(transform: &'static str, path: &str, reason: impl Into<String>) -> PtqError {
    PtqError::Region {
        transform,
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// A reader's weight on the host, `[d_in, d_out]`, checked to read `width` channels (`of`
/// names what sets the width in the error: "the region", "the rotation").
fn reader_weight(
    model: &dyn Regions,
    transform: &'static str,
    path: &str,
    width: usize,
    of: &str,
) -> Result<(Tensor<2>, Vec<f32>, [usize; 2])> {
    let w = model.linear_weight(path)?;
    let (data, dims) = host2(w.clone())?;
    if dims[0] != width {
        return Err(region_error(
            transform,
            path,
            format!("reads {} channels, {of} has {width}", dims[0]),
        ));
    }
    Ok((w, data, dims))
}

/// Multiplies row `j` of every sink weight by `factor[j]` (`W ← diag(factor)·W`).
fn scale_sink_rows(
    model: &mut dyn Regions,
    transform: &'static str,
    sinks: &[String],
    factor: &[f32],
) -> Result<usize> {
    for sink in sinks {
        let (w, mut data, dims) =
            reader_weight(model, transform, sink, factor.len(), "the region")?;
        for (row, f) in data.chunks_mut(dims[1]).zip(factor) {
            row.iter_mut().for_each(|v| *v *= f);
        }
        model.set_linear_weight(sink, like2(data, dims, &w))?;
    }
    Ok(sinks.len())
}

/// Folds every norm gain into the linear layers that read it ([`Region::Norm`]:
/// `W ← diag(g)·W`, then `g ← 1`). Idempotent.
pub fn fold_norms(model: &mut dyn Regions) -> Result<Stage1Report> {
    let mut report = Stage1Report::default();
    for region in model.regions() {
        let Region::Norm { norm, sinks, .. } = region else {
            continue;
        };
        let g = model.norm_weight(&norm)?;
        let gain = host1(g.clone())?;
        if gain.iter().all(|&v| v == 1.0) {
            continue;
        }
        report.tensors += scale_sink_rows(model, "fold_norms", &sinks, &gain)?;
        model.set_norm_weight(&norm, like1(vec![1.0; gain.len()], &g))?;
        report.regions += 1;
        report.tensors += 1;
    }
    Ok(report)
}

/// SmoothQuant's per-channel factors (notes §7.1): `s_j = a_j^α / w_j^(1−α)` from the
/// activation range `a_j` and the weight range `w_j` of channel `j`; 1 where either range is
/// at most 1e-9 (Brevitas's safeguard) or the result is not finite.
pub fn smoothing_factors(act_absmax: &[f32], weight_absmax: &[f32], alpha: f64) -> Vec<f32> {
    act_absmax
        .iter()
        .zip(weight_absmax)
        .map(|(&a, &w)| {
            let (a, w) = (a as f64, w as f64);
            if a <= 1e-9 || w <= 1e-9 {
                return 1.0;
            }
            let s = a.powf(alpha) / w.powf(1.0 - alpha);
            if s.is_finite() && s > 0.0 {
                s as f32
            } else {
                1.0
            }
        })
        .collect()
}

/// Largest `|W[j, :]|` per input channel `j` over all `sinks`.
fn sink_row_absmax(model: &dyn Regions, sinks: &[String], width: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; width];
    for sink in sinks {
        let (_, data, dims) = reader_weight(model, "smoothquant", sink, width, "the region")?;
        for (o, row) in out.iter_mut().zip(data.chunks(dims[1])) {
            *o = row.iter().fold(*o, |m, v| m.max(v.abs()));
        }
    }
    Ok(out)
}

/// Which source channel feeds sink channel `c` under `heads` (GQA: sink head `c / hd` reads
/// source head `(c / hd) / repeat`).
fn source_channel(c: usize, heads: Option<Heads>) -> usize {
    match heads {
        None => c,
        Some(h) => (c / h.head_dim / h.repeat.max(1)) * h.head_dim + c % h.head_dim,
    }
}

/// SmoothQuant / activation equalization (notes §7.1) on every [`Region::Norm`] and
/// [`Region::Linear`] whose input site has statistics in `act_absmax` (the largest `|x_j|`
/// per channel over the calibration tokens, keyed by site): the difficulty of channel `j` moves
/// from the activations to the weights by `s_j` ([`smoothing_factors`]), the division folded
/// into the producer (the norm gain, or the source layer's output channels and bias). Under
/// grouped heads one factor serves each source channel (the largest activation range of the
/// sink channels it feeds). A site that already carries an online rotation is skipped (listed
/// in [`Stage1Report::skipped`]): its channels are no longer the producer's; when every site
/// is, that is an error.
pub fn smooth(
    model: &mut dyn Regions,
    act_absmax: &BTreeMap<String, Vec<f32>>,
    alpha: f64,
) -> Result<Stage1Report> {
    if !(alpha.is_finite() && (0.0..=1.0).contains(&alpha)) {
        return Err(PtqError::config("alpha", alpha, "must be in [0, 1]"));
    }
    let mut report = Stage1Report::default();
    for region in model.regions() {
        let (input, sinks) = match &region {
            Region::Norm { input, sinks, .. } | Region::Linear { input, sinks, .. } => {
                (input.clone(), sinks.clone())
            }
            _ => continue,
        };
        let Some(act) = act_absmax.get(&input) else {
            continue;
        };
        if model.online_rotation(&input)?.is_some() {
            report.skipped.push((
                input,
                "rotated online: its channels are not the producer's".into(),
            ));
            continue;
        }
        let wmax = sink_row_absmax(model, &sinks, act.len())?;
        match region {
            Region::Norm { norm, .. } => {
                let s = smoothing_factors(act, &wmax, alpha);
                let g = model.norm_weight(&norm)?;
                let gain: Vec<f32> = host1(g.clone())?
                    .iter()
                    .zip(&s)
                    .map(|(g, s)| g / s)
                    .collect();
                if gain.len() != s.len() {
                    return Err(region_error(
                        "smoothquant",
                        &norm,
                        format!("has {} channels, its sinks read {}", gain.len(), s.len()),
                    ));
                }
                model.set_norm_weight(&norm, like1(gain, &g))?;
                report.tensors += 1 + scale_sink_rows(model, "smoothquant", &sinks, &s)?;
            }
            Region::Linear { source, heads, .. } => {
                let w = model.linear_weight(&source)?;
                let (mut data, dims) = host2(w.clone())?;
                let n_src = dims[1];
                let (mut a_src, mut w_src) = (vec![0f32; n_src], vec![0f32; n_src]);
                for c in 0..act.len() {
                    let k = source_channel(c, heads);
                    if k >= n_src {
                        return Err(region_error(
                            "smoothquant",
                            &source,
                            format!("writes {n_src} channels; its sinks read {}", act.len()),
                        ));
                    }
                    a_src[k] = a_src[k].max(act[c]);
                    w_src[k] = w_src[k].max(wmax[c]);
                }
                let s = smoothing_factors(&a_src, &w_src, alpha);
                for row in data.chunks_mut(n_src) {
                    row.iter_mut().zip(&s).for_each(|(v, s)| *v /= s);
                }
                model.set_linear_weight(&source, like2(data, dims, &w))?;
                if let Some(b) = model.linear_bias(&source)? {
                    let bias = host1(b.clone())?
                        .iter()
                        .zip(&s)
                        .map(|(b, s)| b / s)
                        .collect();
                    model.set_linear_bias(&source, like1(bias, &b))?;
                }
                let per_sink: Vec<f32> = (0..act.len())
                    .map(|c| s[source_channel(c, heads)])
                    .collect();
                report.tensors += 1 + scale_sink_rows(model, "smoothquant", &sinks, &per_sink)?;
            }
            _ => unreachable!("filtered above"),
        }
        report.regions += 1;
    }
    if report.regions == 0
        && let Some((site, _)) = report.skipped.first()
    {
        return Err(region_error(
            "smoothquant",
            site,
            "every input with statistics is rotated online, so no channel belongs to its \
             producer; apply smoothquant before the online rotations",
        ));
    }
    Ok(report)
}

/// Fuses `rotation` into the columns of a reader (`W ← M·W`).
fn fuse_reader(
    model: &mut dyn Regions,
    transform: &'static str,
    path: &str,
    rotation: &Rotation,
) -> Result<()> {
    let (w, mut data, dims) =
        reader_weight(model, transform, path, rotation.len(), "the rotation")?;
    rotation.apply_columns(&mut data, dims[0], dims[1])?;
    model.set_linear_weight(path, like2(data, dims, &w))
}

/// Fuses `rotation` into the output of a writer (`W ← W·Mᵀ`, `b ← M·b`); with `heads`, the
/// rotation acts on each head's block of output channels.
fn fuse_writer(
    model: &mut dyn Regions,
    transform: &'static str,
    path: &str,
    rotation: &Rotation,
) -> Result<()> {
    let w = model.linear_weight(path)?;
    let (mut data, dims) = host2(w.clone())?;
    if !dims[1].is_multiple_of(rotation.len()) {
        return Err(region_error(
            transform,
            path,
            format!(
                "writes {} channels, not a multiple of the rotation's {}",
                dims[1],
                rotation.len()
            ),
        ));
    }
    rotation.apply_rows(&mut data)?;
    model.set_linear_weight(path, like2(data, dims, &w))?;
    if let Some(b) = model.linear_bias(path)? {
        let mut bias = host1(b.clone())?;
        rotation.apply_rows(&mut bias)?;
        model.set_linear_bias(path, like1(bias, &b))?;
    }
    Ok(())
}

/// The sites of the [`Region::Online`] regions that feed any of `paths`.
fn online_sites_feeding(model: &dyn Regions, paths: &[String]) -> Vec<String> {
    model
        .regions()
        .into_iter()
        .filter_map(|r| match r {
            Region::Online { input, sinks } if sinks.iter().any(|s| paths.contains(s)) => {
                Some(input)
            }
            _ => None,
        })
        .collect()
}

/// Rotates the residual stream (QuaRot's R1, notes §7.4): embeddings `E ← E·Mᵀ`, readers
/// `W ← M·W`, writers `W ← W·Mᵀ`, so the stream carries `M·x` everywhere and every output is
/// unchanged. The norms between the stream and its readers must be folded first
/// ([`fold_norms`]); readers must not yet carry online rotations.
pub fn rotate_residual(model: &mut dyn Regions, rotation: &Rotation) -> Result<Stage1Report> {
    const T: &str = "rotate_residual";
    let mut report = Stage1Report::default();
    for region in model.regions() {
        let Region::Residual {
            embeddings,
            norms,
            readers,
            writers,
        } = region
        else {
            continue;
        };
        for norm in &norms {
            let g = host1(model.norm_weight(norm)?)?;
            if g.iter().any(|&v| v != 1.0) {
                return Err(region_error(
                    T,
                    norm,
                    "the norm has a gain; fold the norms first (`fold_norms`)",
                ));
            }
        }
        if let Some(site) = online_sites_feeding(model, &readers)
            .into_iter()
            .find(|s| matches!(model.online_rotation(s), Ok(Some(_))))
        {
            return Err(region_error(
                T,
                &site,
                "a reader of the residual stream is already rotated online; rotate the \
                 residual stream first",
            ));
        }
        for e in &embeddings {
            let t = model.embedding(e)?;
            let (mut data, dims) = host2(t.clone())?;
            if dims[1] != rotation.len() {
                return Err(region_error(
                    T,
                    e,
                    format!("has width {}, the rotation {}", dims[1], rotation.len()),
                ));
            }
            rotation.apply_rows(&mut data)?;
            model.set_embedding(e, like2(data, dims, &t))?;
        }
        for r in &readers {
            fuse_reader(model, T, r, rotation)?;
        }
        for w in &writers {
            let width = model.linear_weight(w)?.dims()[1];
            if width != rotation.len() {
                return Err(region_error(
                    T,
                    w,
                    format!(
                        "writes {width} channels, the rotation has {}",
                        rotation.len()
                    ),
                ));
            }
            fuse_writer(model, T, w, rotation)?;
        }
        report.regions += 1;
        report.tensors += embeddings.len() + readers.len() + writers.len();
    }
    Ok(report)
}

/// Rotates every head of every [`Region::Linear`] with `heads` (QuaRot's R2, value → output,
/// notes §7.4): the source's output channels per head `W ← W·(I ⊗ Mᵀ)`, the sinks' input
/// channels per head `W ← (I ⊗ M)·W`. `rotation` has the head width.
pub fn rotate_heads(model: &mut dyn Regions, rotation: &Rotation) -> Result<Stage1Report> {
    const T: &str = "rotate_heads";
    let mut report = Stage1Report::default();
    for region in model.regions() {
        let Region::Linear {
            source,
            input,
            sinks,
            heads: Some(heads),
        } = region
        else {
            continue;
        };
        if heads.head_dim != rotation.len() {
            return Err(region_error(
                T,
                &source,
                format!(
                    "heads are {} wide, the rotation is {}",
                    heads.head_dim,
                    rotation.len()
                ),
            ));
        }
        if model.online_rotation(&input)?.is_some() {
            return Err(region_error(
                T,
                &input,
                "the sinks' input is rotated online; rotate the heads first",
            ));
        }
        fuse_writer(model, T, &source, rotation)?;
        for sink in &sinks {
            let w = model.linear_weight(sink)?;
            let (mut data, dims) = host2(w.clone())?;
            let hd = heads.head_dim;
            if !dims[0].is_multiple_of(hd) {
                return Err(region_error(
                    T,
                    sink,
                    format!("reads {} channels, not whole heads of {hd}", dims[0]),
                ));
            }
            for block in data.chunks_mut(hd * dims[1]) {
                rotation.apply_columns(block, hd, dims[1])?;
            }
            model.set_linear_weight(sink, like2(data, dims, &w))?;
        }
        report.regions += 1;
        report.tensors += 1 + sinks.len();
    }
    Ok(report)
}

/// Inserts an online rotation at the input of every [`Region::Online`] region accepted by
/// `select`, fused into its sinks (`W ← M·W`): HIP (every site) or QuaRot's R4 (the
/// down-projection input). `rotation_for(width)` builds the rotation for a site of that width;
/// a site that already carries one is refused.
pub fn rotate_online(
    model: &mut dyn Regions,
    select: &dyn Fn(&str) -> bool,
    rotation_for: &mut dyn FnMut(usize) -> Result<Rotation>,
) -> Result<Stage1Report> {
    const T: &str = "rotate_online";
    let mut report = Stage1Report::default();
    for region in model.regions() {
        let Region::Online { input, sinks } = region else {
            continue;
        };
        if !select(&input) {
            continue;
        }
        if model.online_rotation(&input)?.is_some() {
            return Err(region_error(
                T,
                &input,
                "already rotated online (one online rotation per site)",
            ));
        }
        let Some(first) = sinks.first() else {
            continue;
        };
        let width = model.linear_weight(first)?.dims()[0];
        let rotation = rotation_for(width)?;
        for sink in &sinks {
            fuse_reader(model, T, sink, &rotation)?;
        }
        model.set_online_rotation(&input, Some(rotation))?;
        report.regions += 1;
        report.tensors += sinks.len();
        report.online += 1;
    }
    Ok(report)
}

/// Inserts the same online rotation on queries and keys after the positional encoding in
/// every [`Region::QueryKey`] (QuaRot's R3): scores are unchanged and the key cache holds
/// rotated keys, whose outliers are spread over the head.
pub fn rotate_query_key(
    model: &mut dyn Regions,
    rotation_for: &mut dyn FnMut(usize) -> Result<Rotation>,
) -> Result<Stage1Report> {
    let mut report = Stage1Report::default();
    for region in model.regions() {
        let Region::QueryKey { site, head_dim } = region else {
            continue;
        };
        if model.online_rotation(&site)?.is_some() {
            return Err(region_error(
                "rotate_query_key",
                &site,
                "already rotated online",
            ));
        }
        model.set_online_rotation(&site, Some(rotation_for(head_dim)?))?;
        report.regions += 1;
        report.online += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At α = 0.5 the factors equalize the ranges: `a_j/s_j = w_j·s_j` on every channel;
    /// α = 0 moves nothing from the activations (`s = 1/w`), α = 1 everything (`s = a`);
    /// degenerate ranges give the identity.
    #[test]
    fn smoothing_factors_follow_the_closed_form() {
        let a = [4.0f32, 0.5, 100.0, 0.0, 3.0];
        let w = [0.25f32, 2.0, 0.01, 1.0, 0.0];
        let s = smoothing_factors(&a, &w, 0.5);
        for j in 0..3 {
            let (x, y) = (a[j] / s[j], w[j] * s[j]);
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{j}: {x} vs {y}");
        }
        assert_eq!((s[3], s[4]), (1.0, 1.0));
        let s0 = smoothing_factors(&a[..3], &w[..3], 0.0);
        let s1 = smoothing_factors(&a[..3], &w[..3], 1.0);
        for j in 0..3 {
            assert!((s0[j] - 1.0 / w[j]).abs() <= 1e-5 / w[j]);
            assert!((s1[j] - a[j]).abs() <= 1e-5 * a[j]);
        }
    }

    #[test]
    fn grouped_heads_map_sink_channels_to_their_value_head() {
        let h = Some(Heads {
            head_dim: 4,
            repeat: 3,
        });
        // Sink heads 0..3 read source head 0, 3..6 source head 1.
        assert_eq!(source_channel(0, h), 0);
        assert_eq!(source_channel(11, h), 3);
        assert_eq!(source_channel(12, h), 4);
        assert_eq!(source_channel(23, h), 7);
        assert_eq!(source_channel(7, None), 7);
    }
}
