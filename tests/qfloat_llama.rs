//! The LLM pipeline's codes as Burn `QFloat` weights in memory: a small random Llama quantized
//! by `quantize_llama` (round to nearest, data-free), its `PtqResult.weights` matched to the
//! model's parameters by Hugging Face name and converted with `to_qfloat_model`. The converted
//! model holds the closed-form bytes and computes exactly the fake-quantized model's logits,
//! at batch 1 too (where Burn's `linear` would relayout a per-block weight on flex; our
//! `QuantLinear` does not).

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_quant::QuantSpec;
use burn_quant::export::burnpack::BurnQuantOptions;
use burn_quant::export::{param_bytes, to_qfloat_model};
use burn_quant::llm::{
    LinearSlot, LlamaHParams, LlamaModel, PtqConfig, hf_weight_name, quantize_llama,
};
use burn_quant::nn::{AnyQuantTensor, QuantWeight};

fn hparams() -> LlamaHParams {
    LlamaHParams {
        vocab_size: 61,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: burn_quant::llm::RopeScaling::None,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
    }
}

fn bits(t: Tensor<3>) -> Vec<u32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 logits")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn llama_ptq_codes_run_as_qfloat_weights_exactly() {
    let device = Device::flex();
    let hp = hparams();
    for spec in [
        QuantSpec::int8_weight_per_channel(),
        QuantSpec::int4_weight_per_group(32),
    ] {
        let mut fake = LlamaModel::random(&hp, 3, &device).unwrap();
        let float_bytes = param_bytes(&fake);
        let config = PtqConfig {
            weights: spec,
            algorithm: "rtn".parse().unwrap(),
            batch_windows: 1,
        };
        let result = quantize_llama(&mut fake, &[], &config, &mut |_| {}).unwrap();
        // `fake` now holds the dequantized codes; the same model with the codes as QFloat:
        let mut weights = vec![];
        for b in 0..fake.num_blocks() {
            for slot in LinearSlot::ALL {
                let name = hf_weight_name(b, slot);
                weights.push(QuantWeight {
                    id: fake.block(b).unwrap().linear(slot).weight.id,
                    rule: 0,
                    tensor: AnyQuantTensor::Rank2(result.weights[&name].clone()),
                    path: name,
                });
            }
        }
        assert_eq!(weights.len(), 14);
        let real = to_qfloat_model(fake.clone(), &weights, &BurnQuantOptions::default()).unwrap();

        let bytes = param_bytes(&real);
        assert_eq!(bytes.quantized_params, 14);
        let (d, ff, q, kv) = (64, 96, 64, 32);
        let values = 2 * (d * q + 2 * d * kv + q * d + 3 * d * ff);
        assert_eq!(bytes.quantized_as_f32_bytes, 4 * values as u64);
        // One i8 per value (flex unpacks int4 too) and one f32 scale per Burn block: per
        // channel, blocks span the whole input axis (≤ 255); per group of 32, one per group.
        let scales = if spec == QuantSpec::int8_weight_per_channel() {
            2 * (q + 2 * kv + d + 2 * ff + d)
        } else {
            values / 32
        };
        assert_eq!(bytes.quantized_bytes, (values + 4 * scales) as u64);
        assert_eq!(
            bytes.float_bytes,
            float_bytes.float_bytes - 4 * values as u64
        );

        for (batch, seq) in [(1, 9), (2, 5)] {
            let ids: Vec<i64> = (0..batch * seq).map(|i| (i as i64 * 17 + 3) % 61).collect();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
            assert_eq!(
                bits(real.forward(tokens.clone()).unwrap()),
                bits(fake.forward(tokens).unwrap()),
                "{spec} batch {batch}"
            );
        }
    }
}
