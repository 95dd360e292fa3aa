//! Block-wise AutoRound on the real SmolLM2 (skipped with a notice when the shared model is
//! absent): zero iterations is RTN exactly, and a few iterations lower the block output error
//! on real calibration windows, measured independently of the training loop.

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};
use burn_quant_core::QuantSpec;
use burn_quant_ptq::{Algorithm, AutoRound, Rtn};

use super::{host, shared_data};
use crate::*;

fn smollm2() -> Option<&'static LoadedModel> {
    static MODEL: OnceLock<Option<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?;
            Some(load_with_tokenizer(path, &Device::flex()).expect("the shared model loads"))
        })
        .as_ref()
}

/// The first `blocks` blocks of SmolLM2 and four calibration windows of 48 tokens of Emma.
fn truncated(blocks: usize) -> Option<(LlamaModel, Vec<Vec<u32>>)> {
    let m = smollm2()?;
    let text = std::fs::read_to_string(shared_data(CALIBRATION_TEXT)?).unwrap();
    let cfg = CalibrationConfig::default()
        .with_num_windows(4)
        .with_window(48);
    let windows = calibration_windows_from_text(&m.tokenizer, &text, &cfg).unwrap();
    let mut model = m.model.clone();
    model.layers.truncate(blocks);
    Some((model, windows))
}

/// Mean squared difference of the last block's output, quantized model vs float model, over
/// every window: `‖f_q(x) − f(x)‖² / numel`.
fn block_output_error(float: &LlamaModel, quant: &LlamaModel, windows: &[Vec<u32>]) -> f64 {
    let rows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let seq = windows[0].len();
    let rope = float.rope(seq).unwrap();
    let run = |m: &LlamaModel| -> Vec<f32> {
        let mut x: Tensor<3> = m.embed(m.tokens(&rows).unwrap()).unwrap();
        for b in &m.layers {
            x = b.forward(x, &rope, None).unwrap();
        }
        host(x)
    };
    let (a, b) = (run(quant), run(float));
    a.iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

fn quantize(model: &mut LlamaModel, windows: &[Vec<u32>], algorithm: Algorithm) -> PtqResult {
    let config = PtqConfig {
        weights: QuantSpec::int4_weight_per_group(64).with_bits(3),
        algorithm,
        batch_windows: 2,
    };
    quantize_model(model, windows, &config, &mut |_| {}).unwrap()
}

#[test]
fn autoround_with_zero_iterations_is_rtn_on_smollm2() {
    let Some((model, windows)) = truncated(2) else {
        return;
    };
    let (mut a, mut r) = (model.clone(), model);
    let ar = quantize(
        &mut a,
        &windows,
        Algorithm::AutoRound(AutoRound::default().with_iterations(0)),
    );
    let rtn = quantize(&mut r, &windows, Algorithm::Rtn(Rtn));
    assert_eq!(ar.weights.len(), 14);
    for (name, q) in &ar.weights {
        let r = &rtn.weights[name];
        assert_eq!(q.codes_vec(), r.codes_vec(), "{name}");
        assert_eq!(host(q.params().scales), host(r.params().scales), "{name}");
    }
    assert_eq!(ar.learned.len(), 2);
}

/// A few sign-SGD steps through the real block forward lower the output error of both blocks
/// (block 1 trains on the inputs of the quantized block 0) below RTN's, on every window.
#[test]
fn a_few_autoround_iterations_lower_smollm2_block_error() {
    let Some((float, windows)) = truncated(2) else {
        return;
    };
    let (mut a, mut r) = (float.clone(), float.clone());
    let ar = quantize(
        &mut a,
        &windows,
        Algorithm::AutoRound(AutoRound::default().with_iterations(12)),
    );
    quantize(&mut r, &windows, Algorithm::Rtn(Rtn));
    for (block, report) in &ar.learned {
        println!("block {block}: {report:?}");
        // Four windows, batches of eight: every iteration sees the whole set, so the kept
        // loss is below the first (RTN's) one.
        assert!(report.best_loss < report.initial_loss, "{report:?}");
    }
    for blocks in 1..=2 {
        let mut f = float.clone();
        f.layers.truncate(blocks);
        let (mut qa, mut qr) = (a.clone(), r.clone());
        qa.layers.truncate(blocks);
        qr.layers.truncate(blocks);
        let (e_ar, e_rtn) = (
            block_output_error(&f, &qa, &windows),
            block_output_error(&f, &qr, &windows),
        );
        println!("after {blocks} block(s): AutoRound {e_ar:.3e}, RTN {e_rtn:.3e}");
        assert!(e_ar < 0.9 * e_rtn, "AutoRound {e_ar} vs RTN {e_rtn}");
    }
    // The model holds exactly the exported codes' dequantization.
    for (name, q) in &ar.weights {
        let block: usize = name.split('.').nth(2).unwrap().parse().unwrap();
        let slot = LinearSlot::ALL
            .into_iter()
            .find(|s| name.ends_with(&format!("{}.weight", s.hf_name())))
            .unwrap();
        assert_eq!(
            host(a.layers[block].linear(slot).weight.val()),
            host(q.dequantize()),
            "{name}"
        );
    }
}

/// Bias correction on the real SmolLM2 after RTN: every layer of the first block gets the
/// bias that makes its mean output error over the calibration tokens zero, measured behind
/// the corrected earlier layers (closed form: the mean of `X_f·W − (X̃·Ŵ + δ)` vanishes).
#[test]
fn bias_correction_removes_the_mean_output_error_on_smollm2() {
    let Some((float, windows)) = truncated(1) else {
        return;
    };
    let mut quant = float.clone();
    quantize(&mut quant, &windows, Algorithm::Rtn(Rtn));
    let before = mean_output_errors(&float, &quant, &windows);
    let report = correct_biases(&float, &mut quant, &windows, 2).unwrap();
    assert_eq!(report.layers.len(), 7);
    assert_eq!(report.tokens, (windows.len() * windows[0].len()) as u64);
    let after = mean_output_errors(&float, &quant, &windows);
    for (slot, (b, a)) in LinearSlot::ALL.iter().zip(before.iter().zip(&after)) {
        println!("{slot:?}: mean output error RMS {b:.3e} → {a:.3e}");
        assert!(*a < 1e-3 * b.max(1e-3), "{slot:?}: {b} → {a}");
    }
}

/// Per layer of block 0, the RMS over output channels of the mean (over calibration tokens)
/// of `float layer(float input) − quant layer(quant input)`.
fn mean_output_errors(float: &LlamaModel, quant: &LlamaModel, windows: &[Vec<u32>]) -> Vec<f64> {
    let rows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let rope = float.rope(windows[0].len()).unwrap();
    let outputs = |m: &LlamaModel| -> Vec<Vec<f32>> {
        let x = m.embed(m.tokens(&rows).unwrap()).unwrap();
        let mut sites = std::collections::BTreeMap::new();
        let mut keep = |s: InputSite, v: &Tensor<3>| {
            sites.insert(s, v.clone());
        };
        m.layers[0].forward(x, &rope, Some(&mut keep)).unwrap();
        LinearSlot::ALL
            .iter()
            .map(|&slot| {
                let y = m.layers[0]
                    .linear(slot)
                    .try_forward(sites[&slot.input()].clone())
                    .unwrap();
                let [b, s, d] = y.dims();
                host(y.reshape([b * s, d]).mean_dim(0))
            })
            .collect()
    };
    let (f, q) = (outputs(float), outputs(quant));
    f.iter()
        .zip(&q)
        .map(|(f, q)| {
            (f.iter()
                .zip(q)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / f.len() as f64)
                .sqrt()
        })
        .collect()
}
