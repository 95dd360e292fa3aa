//! Quantize a model you did not write: all-MiniLM-L6-v2, a BERT sentence encoder built from
//! `burn::nn` modules only (tests/support/bert.rs), through graph mode with no change to its
//! code, scored by the cosine similarity of its sentence embeddings to FP32.
//!
//! Calibration: 128 sentences of *Emma*; evaluation: 256 sentences of *Pride and Prejudice*
//! (../shared/data/austen-text), all of 8 to 48 tokens, in batches of 16 padded to 48.
//!
//! ```text
//! cargo run --release --example graph_bert
//! ```

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use burn_quant::{Granularity, QuantSpec};
use burn_quant_graph::{GraphRecipe, QuantizedGraph, capture, quantize_graph, stage2};
use burn_quant_ptq::Algorithm;
use support::bert::{
    Bert, TokenBatch, WordPiece, batches, load_minilm, pick_sentences, row_cosines,
};

const BATCH: usize = 16;
const SEQ: usize = 48;
const CALIBRATION: usize = 128;
const EVALUATION: usize = 256;

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 embeddings")
}

/// How a row's weights are quantized after `quantize_graph`.
enum Then {
    /// Nothing to quantize.
    Float,
    /// The graph's own weight quantizers (round to nearest, applied at every forward).
    Rtn,
    /// Calibrate the static activation scales.
    Calibrate,
    /// A Stage 2 algorithm, written back into the model.
    Stage2(&'static str),
}

fn main() -> burn_quant::Result<()> {
    let Some(weights) = support::shared_data("all-minilm-l6-v2/model.safetensors") else {
        return Ok(());
    };
    let dir = weights.parent().expect("a file in a directory");
    let (Some(emma), Some(pride)) = (
        support::shared_data("austen-text/emma.txt"),
        support::shared_data("austen-text/pride_prejudice_eval_slice.txt"),
    ) else {
        return Ok(());
    };
    let device = Device::flex();
    let tok = WordPiece::from_vocab_file(&dir.join("vocab.txt"))?;
    let model: Bert = load_minilm(dir, &device)?;
    let encode = |path: &std::path::Path, count: usize| -> Result<Vec<Vec<u32>>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Ok(pick_sentences(&tok, &text, count, 8, SEQ)?
            .into_iter()
            .map(|(_, ids)| ids)
            .collect())
    };
    let calib = batches(
        &encode(&emma, CALIBRATION)?,
        BATCH,
        SEQ,
        tok.pad_id(),
        &device,
    )?;
    let eval = batches(
        &encode(&pride, EVALUATION)?,
        BATCH,
        SEQ,
        tok.pad_id(),
        &device,
    )?;

    let fp32: Vec<f32> = eval
        .iter()
        .flat_map(|(x, m)| host(model.sentence_embeddings(x.clone(), m.clone())))
        .collect();
    let t = Instant::now();
    // Graph mode: the model's own forward, recorded at the batch shape.
    let graph = capture(
        &model,
        calib[0].clone(),
        |m: &Bert, (x, mask): TokenBatch| m.sentence_embeddings(x, mask),
    )?;
    println!(
        "captured {} nodes ({} Linear) in {:.2} s; calibration {} sentences (Emma), evaluation {} (Pride and Prejudice), batches of {BATCH}×{SEQ} tokens\n",
        graph.nodes.len(),
        graph
            .nodes
            .iter()
            .filter(|n| n.op.kind() == "Linear")
            .count(),
        t.elapsed().as_secs_f64(),
        calib.len() * BATCH,
        eval.len() * BATCH,
    );

    let w8 = QuantSpec::int8_weight_per_output_channel();
    let w4 = QuantSpec::int4_weight_per_input_group(128);
    let a8 = QuantSpec::int8_act_per_tensor();
    let rows: Vec<(&str, GraphRecipe, Then)> = vec![
        (
            "FP32 graph (no quantizers)",
            GraphRecipe::default(),
            Then::Float,
        ),
        ("W8 per output channel", GraphRecipe::weights(w8), Then::Rtn),
        ("W4 g128", GraphRecipe::weights(w4), Then::Rtn),
        ("W4 g128", GraphRecipe::weights(w4), Then::Stage2("gptq")),
        ("W4 g128", GraphRecipe::weights(w4), Then::Stage2("qronos")),
        (
            "W8A8 (Linear + MatMul inputs, per tensor)",
            GraphRecipe::weights_and_inputs(w8, a8).with_share_joins(false),
            Then::Calibrate,
        ),
        (
            "W8A8 + shared residual-add quantizers",
            GraphRecipe::weights_and_inputs(w8, a8).with_share_joins(true),
            Then::Calibrate,
        ),
        (
            "W8A8 + shared residual-add quantizers per hidden channel",
            GraphRecipe::weights_and_inputs(w8, a8)
                .with_join_spec(a8.with_granularity(Granularity::PerChannel { axis: 2 })),
            Then::Calibrate,
        ),
    ];
    println!("| recipe | algorithm | mean cosine | min cosine | quantize s | eval s |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, recipe, then) in rows {
        let t = Instant::now();
        let qg = quantize_graph(&graph, &recipe, &device)?;
        let (algorithm, m, qg): (&str, Bert, QuantizedGraph) = match then {
            Then::Float => ("-", model.clone(), qg),
            Then::Rtn => ("RTN", model.clone(), qg),
            Then::Calibrate => (
                "RTN, calibrated",
                model.clone(),
                qg.calibrate(&model, calib.iter().cloned())?,
            ),
            Then::Stage2(algo) => {
                let algorithm: Algorithm = algo.parse()?;
                let result = stage2(&qg, &model, &algorithm, &calib)?;
                let (m, qg) = result.apply(model.clone(), qg)?;
                (result.algorithm, m, qg)
            }
        };
        let quantize_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut got = Vec::with_capacity(fp32.len());
        for b in &eval {
            let y: Tensor<2> = qg.forward(&m, b.clone())?;
            got.extend(host(y));
        }
        let eval_s = t.elapsed().as_secs_f64();
        let cos = row_cosines(&fp32, &got, 384);
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        let min = cos.iter().copied().fold(1.0, f64::min);
        println!("| {name} | {algorithm} | {mean:.5} | {min:.5} | {quantize_s:.1} | {eval_s:.1} |");
    }
    Ok(())
}
