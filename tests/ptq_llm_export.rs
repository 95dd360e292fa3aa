//! GPTQ's codes reach the GGUF file exactly: SmolLM2 quantized by the sequential pipeline with
//! a Q4_0-structured spec, exported by `burnq ptq-llm --export`'s function, read back.

use burn::tensor::Device;
use burn_quant::export::gguf::{GgufFile, codec, encode_quant_tensor};
use burn_quant::llm::{PtqConfig, load_with_tokenizer, quantize_llama};
use burn_quant::{QuantSpec, ScaleQuant, ScaleRestriction};

#[test]
fn gptq_codes_are_what_the_gguf_holds() {
    let Some(path) = support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    else {
        return;
    };
    let device = Device::flex();
    let loaded = load_with_tokenizer(&path, &device).unwrap();
    let mut model = loaded.model;
    let text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. ".repeat(8);
    let ids = loaded.tokenizer.encode(&text, false).unwrap();
    let windows: Vec<Vec<u32>> = ids.chunks_exact(64).take(2).map(<[u32]>::to_vec).collect();
    let spec = QuantSpec::int4_weight_per_group(32)
        .with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::F16));
    let config = PtqConfig {
        weights: spec.clone(),
        algorithm: "gptq".parse().unwrap(),
        batch_windows: 2,
    };
    let result = quantize_llama(&mut model, &windows, &config, &mut |_| {}).unwrap();
    let dir = std::env::temp_dir().join(format!("burnq-ptq-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("gptq-q4_0.gguf");
    let report =
        burn_quant_cli::ptq_llm::export_gguf(&model, &result.weights, &path, &spec, &out).unwrap();
    assert_eq!(report.tensors.len(), 272);
    let file = GgufFile::read(&out).unwrap();
    // v_proj and down_proj are not permuted: their bytes are the QuantTensor's blocks.
    for (hf, gguf) in [
        (
            "model.layers.4.self_attn.v_proj.weight",
            "blk.4.attn_v.weight",
        ),
        (
            "model.layers.17.mlp.down_proj.weight",
            "blk.17.ffn_down.weight",
        ),
    ] {
        let q = &result.weights[hf];
        let info = file.tensor(gguf).unwrap();
        let bytes = file.tensor_bytes(info);
        assert_eq!(
            bytes,
            encode_quant_tensor(q).unwrap().data.as_slice(),
            "{hf}"
        );
        let decoded = codec::decode(info.ty, bytes).unwrap();
        let ours: Vec<f32> = q
            .dequantize()
            .transpose()
            .into_data()
            .try_into_vec()
            .unwrap();
        assert_eq!(decoded, ours, "{hf}: the file dequantizes to GPTQ's Ŵ");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A model rewritten by fused Stage 1 steps (QuaRot's residual and head rotations, which fold
/// the norms and untie the head) exports to GGUF with its own head: the file has
/// `output.weight`, the loader reads it back untied with unit norms, and the block weights are
/// the quantized ones, code for code. Online rotations are refused before anything is written.
#[test]
fn fused_stage1_models_export_untied() {
    use burn_quant::llm::stage1::{Stage1Step, apply_stage1};
    let Some(path) = support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    else {
        return;
    };
    let device = Device::flex();
    let mut model = load_with_tokenizer(&path, &device).unwrap().model;
    let steps: Vec<Stage1Step> = ["rotate_residual", "rotate_heads"]
        .iter()
        .map(|n| Stage1Step::from_name(n).unwrap())
        .collect();
    apply_stage1(&mut model, &steps, &[], 2).unwrap();
    assert!(
        !model.hparams().tie_word_embeddings,
        "the folded head is untied"
    );
    let spec = QuantSpec::int4_weight_per_group(32)
        .with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::F16));
    let config = PtqConfig {
        weights: spec.clone(),
        algorithm: "rtn".parse().unwrap(),
        batch_windows: 2,
    };
    let result = quantize_llama(&mut model, &[], &config, &mut |_| {}).unwrap();
    let dir = std::env::temp_dir().join(format!("burnq-stage1-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("quarot-fused-q4_0.gguf");
    let report =
        burn_quant_cli::ptq_llm::export_gguf(&model, &result.weights, &path, &spec, &out).unwrap();
    assert_eq!(report.tensors.len(), 273, "272 tensors and the untied head");
    let file = GgufFile::read(&out).unwrap();
    assert!(file.tensor("output.weight").is_some());
    let info = file.tensor("blk.9.ffn_down.weight").unwrap();
    assert_eq!(
        file.tensor_bytes(info),
        encode_quant_tensor(&result.weights["model.layers.9.mlp.down_proj.weight"])
            .unwrap()
            .data
            .as_slice()
    );
    let back = burn_quant::llm::load_model(&out, &device).unwrap();
    assert!(!back.hparams().tie_word_embeddings);
    let norm: Vec<f32> = back.layers[3]
        .input_layernorm
        .weight
        .val()
        .into_data()
        .try_into_vec()
        .unwrap();
    assert!(norm.iter().all(|&g| g == 1.0), "folded norms are ones");
    // An online rotation cannot be written.
    let mut hip = model.clone();
    apply_stage1(&mut hip, &[Stage1Step::from_name("hip").unwrap()], &[], 2).unwrap();
    let e = burn_quant_cli::ptq_llm::export_gguf(&hip, &result.weights, &path, &spec, &out)
        .unwrap_err();
    assert!(e.to_string().contains("online"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Bias correction's biases reach the GGUF as llama.cpp's optional `blk.N.*.bias` tensors
/// (f32), and the file loads back with exactly the corrected model's biases.
#[test]
fn bias_corrected_models_export_their_biases() {
    let Some(path) = support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    else {
        return;
    };
    let device = Device::flex();
    let loaded = load_with_tokenizer(&path, &device).unwrap();
    let float = loaded.model;
    let text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. ".repeat(8);
    let ids = loaded.tokenizer.encode(&text, false).unwrap();
    let windows: Vec<Vec<u32>> = ids.chunks_exact(64).take(2).map(<[u32]>::to_vec).collect();
    let spec = QuantSpec::int4_weight_per_group(32)
        .with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::F16));
    let config = PtqConfig {
        weights: spec.clone(),
        algorithm: "rtn".parse().unwrap(),
        batch_windows: 2,
    };
    let mut model = float.clone();
    let result = quantize_llama(&mut model, &windows, &config, &mut |_| {}).unwrap();
    let report = burn_quant::llm::correct_biases(&float, &mut model, &windows, 2).unwrap();
    assert_eq!(report.layers.len(), 7 * model.num_blocks());
    let dir = std::env::temp_dir().join(format!("burnq-bias-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("rtn-bc-q4_0.gguf");
    let written =
        burn_quant_cli::ptq_llm::export_gguf(&model, &result.weights, &path, &spec, &out).unwrap();
    assert_eq!(written.tensors.len(), 272 + 7 * 30, "every projection gains a bias");
    let file = GgufFile::read(&out).unwrap();
    for name in ["blk.0.attn_q.bias", "blk.7.attn_k.bias", "blk.29.ffn_down.bias"] {
        let info = file.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(info.ty, burn_quant::export::gguf::GgmlType::F32, "{name}");
    }
    let back = burn_quant::llm::load_model(&out, &device).unwrap();
    assert!(back.layers[3].self_attn.q_proj.bias.is_some());
    // Every bias reads back exactly (f32; q/k rows permuted for llama.cpp and back). The
    // logits are not compared: the export also quantizes the embedding (llama-quantize
    // `--pure`), which the in-memory model keeps float.
    let host = |t: burn::tensor::Tensor<1>| -> Vec<f32> { t.into_data().try_into_vec().unwrap() };
    for (i, (ours, theirs)) in model.layers.iter().zip(&back.layers).enumerate() {
        for slot in burn_quant::llm::LinearSlot::ALL {
            let a = ours.linear(slot).bias.as_ref().unwrap().val();
            let b = theirs.linear(slot).bias.as_ref().unwrap().val();
            assert_eq!(host(a), host(b), "block {i} {slot:?}");
        }
    }
    // gguf-py: llama.cpp's converter name map reaches every bias, F32, with our values.
    let mut expected = serde_json::Map::new();
    for i in [0, 13, 29] {
        for slot in burn_quant::llm::LinearSlot::ALL {
            let b = model.layers[i].linear(slot).bias.as_ref().unwrap().val();
            expected.insert(
                format!("model.layers.{i}.{}.bias", slot.hf_name()),
                serde_json::json!(host(b)),
            );
        }
    }
    let json = dir.join("expected-biases.json");
    std::fs::write(&json, serde_json::Value::Object(expected).to_string()).unwrap();
    if let Some(r) = support::run_python("gguf_bias_check.py", &[out.as_os_str(), json.as_os_str()])
    {
        let line = r.unwrap_or_else(|e| panic!("{e}"));
        eprintln!("gguf-py: {line}");
        assert!(line.contains("\"checked\": 21"), "{line}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
