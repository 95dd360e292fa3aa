//! Calibration before training and evaluation after it, generic over the user's model and
//! forward: each takes the batches (any iterator, e.g. a data loader's `iter()`) and a closure
//! that runs the model on one batch.

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use burn::train::{ClassificationOutput, InferenceStep};
use burn_quant_nn::calibrate;

use crate::error::{QatError, Result};

/// Calibrates every static or learned quantizer scale of `model`: runs `forward` on each batch
/// inside the nn crate's calibration scope (quantizers record their inputs and pass them
/// through unquantized), then writes each quantizer's statistic into its scale `Param`s (same
/// ids). Quantizers with a per-call scale (most weight quantizers, dynamic activations) are
/// left as they are.
///
/// The scope belongs to the calling thread: `forward` must run the model here. No batch is a
/// [`QatError::EmptyData`]; a calibration already running on this thread is a
/// [`QatError::Calibration`].
pub fn calibrate_model<M, B, R>(
    model: M,
    batches: impl IntoIterator<Item = B>,
    mut forward: impl FnMut(&M, B) -> R,
) -> Result<M>
where
    M: Module,
{
    let (model, seen) = calibrate(model, |m| {
        let mut seen = 0usize;
        for batch in batches {
            let _ = forward(m, batch);
            seen += 1;
        }
        seen
    })?;
    if seen == 0 {
        return Err(QatError::EmptyData {
            what: "calibration batch sequence",
        });
    }
    Ok(model)
}

/// Counts of a classification pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Evaluation {
    /// Items seen.
    pub items: usize,
    /// Items whose largest logit is the target class.
    pub correct: usize,
    /// Mean loss over items (batch losses weighted by batch size); `None` when the forward
    /// gave no loss.
    pub mean_loss: Option<f64>,
}

impl Evaluation {
    /// `correct / items`, in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.items.max(1) as f64
    }
}

fn count_correct(logits: Tensor<2>, targets: Tensor<1, Int>) -> Result<(usize, usize)> {
    let [n, _] = logits.dims();
    let [t] = targets.dims();
    if n != t {
        return Err(QatError::Shape(format!(
            "{n} rows of logits for {t} targets"
        )));
    }
    let pred: Vec<i64> = logits.argmax(1).reshape([n]).try_into_vec_as::<i64>()?;
    let labels: Vec<i64> = targets.try_into_vec_as::<i64>()?;
    Ok((n, pred.iter().zip(&labels).filter(|(p, l)| p == l).count()))
}

/// Fraction of the items in `batches` that `model` classifies correctly, in `[0, 1]`:
/// `classify` returns one batch's logits `[n, classes]` and target classes `[n]`. No items is
/// a [`QatError::EmptyData`].
pub fn accuracy<M, B>(
    model: &M,
    batches: impl IntoIterator<Item = B>,
    mut classify: impl FnMut(&M, B) -> (Tensor<2>, Tensor<1, Int>),
) -> Result<f64> {
    let mut eval = Evaluation::default();
    for batch in batches {
        let (logits, targets) = classify(model, batch);
        let (n, correct) = count_correct(logits, targets)?;
        eval.items += n;
        eval.correct += correct;
    }
    if eval.items == 0 {
        return Err(QatError::EmptyData {
            what: "evaluation batch sequence",
        });
    }
    Ok(eval.accuracy())
}

/// Accuracy and mean loss of a model whose `InferenceStep` returns burn-train's
/// [`ClassificationOutput`] (the model `fit` trained), over `batches`. No items is a
/// [`QatError::EmptyData`].
pub fn evaluate<M, B>(model: &M, batches: impl IntoIterator<Item = B>) -> Result<Evaluation>
where
    M: InferenceStep<Input = B, Output = ClassificationOutput>,
{
    let mut eval = Evaluation::default();
    let mut loss_sum = 0.0f64;
    for batch in batches {
        let out = model.step(batch);
        let loss: Vec<f32> = out.loss.try_into_vec_as::<f32>()?;
        let (n, correct) = count_correct(out.output, out.targets)?;
        eval.items += n;
        eval.correct += correct;
        loss_sum += f64::from(loss.first().copied().unwrap_or(f32::NAN)) * n as f64;
    }
    if eval.items == 0 {
        return Err(QatError::EmptyData {
            what: "evaluation batch sequence",
        });
    }
    eval.mean_loss = Some(loss_sum / eval.items as f64);
    Ok(eval)
}
