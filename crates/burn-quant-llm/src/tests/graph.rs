//! Graph mode on the Llama model: GPTQ through the captured graph (any model's path) gives
//! the same codes as this crate's block-sequential pipeline, with the same calibration
//! batches, on the first two blocks of the real SmolLM2.

use burn::tensor::{Int, Tensor};
use burn_quant_core::QuantSpec;
use burn_quant_graph::{GraphRecipe, capture, quantize_graph, stage2};
use burn_quant_nn::AnyQuantTensor;
use burn_quant_ptq::Algorithm;

use super::{shared_data, smollm2};
use crate::*;

#[test]
fn gptq_through_the_graph_gives_the_pipelines_codes_on_smollm2() {
    let Some(m) = smollm2() else {
        return;
    };
    let Some(text_path) = shared_data(CALIBRATION_TEXT) else {
        return;
    };
    let text = std::fs::read_to_string(text_path).unwrap();
    let cfg = CalibrationConfig::default().with_num_windows(4).with_window(32);
    let windows = calibration_windows_from_text(&m.tokenizer, &text, &cfg).unwrap();
    let mut model = m.model.clone();
    model.layers.truncate(2);
    let spec = QuantSpec::int4_weight_per_group(64);
    let algorithm: Algorithm = "gptq".parse().unwrap();

    // The pipeline, two windows per batch.
    let mut piped = model.clone();
    let config = PtqConfig {
        weights: spec,
        algorithm,
        batch_windows: 2,
    };
    let result = quantize_llama(&mut piped, &windows, &config, &mut |_| {}).unwrap();

    // Graph mode: the model's own forward captured, the same batches of two windows.
    let batches: Vec<Tensor<2, Int>> = windows
        .chunks(2)
        .map(|c| {
            let rows: Vec<&[u32]> = c.iter().map(Vec::as_slice).collect();
            model.tokens(&rows).unwrap()
        })
        .collect();
    // `LlamaModel::forward` (and `QuantEmbedding`) check token ids against the vocabulary, a
    // branch on data that a trace cannot record: the captured forward is the same computation
    // without the check (the table is float here).
    let graph = capture(&model, batches[0].clone(), |m: &LlamaModel, t| {
        let [_, s] = t.dims();
        let rope = m.rope(s).expect("rope");
        let mut x = burn::tensor::module::embedding(m.embed_tokens.weight.val(), t);
        for block in &m.layers {
            x = block.forward(x, &rope, None).expect("block");
        }
        m.final_norm_and_head(x).expect("head")
    })
    .unwrap();
    let recipe = GraphRecipe::weights(spec).exclude("lm_head");
    let qg = quantize_graph(&graph, &recipe, &burn::tensor::Device::flex()).unwrap();
    let graphed = stage2(&qg, &model, &algorithm, &batches).unwrap();
    assert_eq!(graphed.weights.len(), 14, "7 linears in each of 2 blocks");
    assert_eq!(result.weights.len(), 14);
    for w in &graphed.weights {
        let hf = format!("model.{}", w.path);
        let piped = result
            .weights
            .get(&hf)
            .unwrap_or_else(|| panic!("the pipeline has no {hf}"));
        let AnyQuantTensor::Rank2(q) = &w.tensor else {
            panic!("{} is not rank 2", w.path)
        };
        assert_eq!(q.codes_vec(), piped.codes_vec(), "codes of {hf}");
        assert_eq!(
            super::host(q.scales.clone()),
            super::host(piped.scales.clone()),
            "scales of {hf}"
        );
    }
}
