//! Model-level tests on small random models (no data needed); the tests on the real shared
//! model are in `src/tests/real.rs`; the comparison with a reference model in `src/tests/compare.rs`.

mod compare;
mod graph;
mod real;
mod rounding;
mod stage1;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use burn_quant_core::QuantSpec;

use crate::rng::SplitMix64;
use crate::*;

/// The shared SmolLM2-135M-Instruct (the dequantized Q4_1 GGUF) with its tokenizer, loaded once
/// for every test of this binary; `None` (with a notice) when the shared data is absent.
pub(crate) fn smollm2() -> Option<&'static LoadedModel> {
    static MODEL: std::sync::OnceLock<Option<LoadedModel>> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?;
            Some(
                load_with_tokenizer(path, &burn::tensor::Device::flex())
                    .expect("the shared model loads"),
            )
        })
        .as_ref()
}

/// Path of a file under the shared data directory, or `None` with a notice when it is absent;
/// with `BURNQ_REQUIRE_DATA=1` a missing file is a failure (the pattern of the workspace's
/// `support::shared_data`).
pub(crate) fn shared_data(relative: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("BURNQ_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("BURNQ_REQUIRE_DATA=1 but {} is missing", path.display());
    }
    eprintln!("notice: skipping, {} is absent", path.display());
    None
}

/// A fresh empty directory under the target directory (unique per test name).
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/llm-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

fn tiny(n_kv: usize, tie: bool) -> LlamaHParams {
    LlamaHParams {
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: n_kv,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 64,
        tie_word_embeddings: tie,
    }
}

/// Every tensor of a model in Hugging Face naming/orientation, random (weights of standard
/// deviation ~0.3 so that attention patterns are far from uniform and bugs show).
fn random_tensors(hp: &LlamaHParams, seed: u64) -> HashMap<String, HfTensor> {
    let (d, ff, hd) = (hp.hidden_size, hp.intermediate_size, hp.head_dim);
    let (q, kv) = (hp.num_attention_heads * hd, hp.num_key_value_heads * hd);
    let mut shapes = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![hp.vocab_size, d],
        ),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    if !hp.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![hp.vocab_size, d]));
    }
    for l in 0..hp.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        shapes.extend([
            (format!("{p}self_attn.q_proj.weight"), vec![q, d]),
            (format!("{p}self_attn.k_proj.weight"), vec![kv, d]),
            (format!("{p}self_attn.v_proj.weight"), vec![kv, d]),
            (format!("{p}self_attn.o_proj.weight"), vec![d, q]),
            (format!("{p}mlp.gate_proj.weight"), vec![ff, d]),
            (format!("{p}mlp.up_proj.weight"), vec![ff, d]),
            (format!("{p}mlp.down_proj.weight"), vec![d, ff]),
            (format!("{p}input_layernorm.weight"), vec![d]),
            (format!("{p}post_attention_layernorm.weight"), vec![d]),
        ]);
    }
    let mut rng = SplitMix64::new(seed);
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let norm = shape.len() == 1;
            let data = (0..n)
                .map(|_| {
                    let u = rng.unit_f32() * 2.0 - 1.0;
                    if norm { 1.0 + 0.2 * u } else { 0.5 * u }
                })
                .collect();
            (name.clone(), HfTensor::new(name, shape, data))
        })
        .collect()
}

fn build(hp: &LlamaHParams, tensors: &HashMap<String, HfTensor>) -> Result<LlamaModel> {
    let mut get = |name: &str| Ok(tensors.get(name).cloned());
    LlamaModel::from_hf_tensors(hp, &mut get, &Device::flex())
}

fn logits(model: &LlamaModel, ids: &[u32]) -> Vec<f32> {
    host(model.forward(model.tokens(&[ids]).unwrap()).unwrap())
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0f32, f32::max);
    assert!(
        worst <= tol,
        "{what}: max relative difference {worst} > {tol}"
    );
}

const IDS: [u32; 9] = [3, 17, 42, 5, 60, 0, 33, 17, 8];

#[test]
fn gqa_equals_mha_with_repeated_kv_heads() {
    // GQA with 2 KV heads for 4 query heads must equal plain multi-head attention whose key
    // and value heads are the GQA heads repeated: query head h reads KV head h / 2 (HF's
    // repeat_kv). Built independently: the MHA model gets k/v weights with each head's rows
    // copied, and runs with n_rep = 1 (no repetition in the forward at all).
    let gqa_hp = tiny(2, true);
    let tensors = random_tensors(&gqa_hp, 1);
    let gqa = build(&gqa_hp, &tensors).unwrap();
    let mha_hp = tiny(4, true);
    let mut mha_tensors = tensors.clone();
    let hd = gqa_hp.head_dim;
    for (name, t) in &tensors {
        if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
            let d = t.shape[1];
            let mut data = Vec::with_capacity(4 * hd * d);
            for h in 0..4 {
                let kv = h / 2;
                data.extend_from_slice(&t.data[kv * hd * d..(kv + 1) * hd * d]);
            }
            mha_tensors.insert(
                name.clone(),
                HfTensor::new(name.clone(), vec![4 * hd, d], data),
            );
        }
    }
    let mha = build(&mha_hp, &mha_tensors).unwrap();
    let a = logits(&gqa, &IDS);
    let b = logits(&mha, &IDS);
    assert_close(&a, &b, 1e-5, "GQA vs repeated-head MHA");
    // The other grouping (head h reads KV head h % 2) gives different logits: the test sees
    // which head is paired with which.
    let mut wrong = tensors.clone();
    for (name, t) in &tensors {
        if name.ends_with("k_proj.weight") {
            let d = t.shape[1];
            let mut data = Vec::new();
            for h in 0..4 {
                let kv = h % 2;
                data.extend_from_slice(&t.data[kv * hd * d..(kv + 1) * hd * d]);
            }
            wrong.insert(
                name.clone(),
                HfTensor::new(name.clone(), vec![4 * hd, d], data),
            );
        } else if name.ends_with("v_proj.weight") {
            wrong.insert(name.clone(), mha_tensors[name].clone());
        }
    }
    let c = logits(&build(&mha_hp, &wrong).unwrap(), &IDS);
    let diff = a
        .iter()
        .zip(&c)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        diff > 1e-3,
        "a different head grouping should change the logits"
    );
}

#[test]
fn causal_mask_hides_later_tokens() {
    let hp = tiny(2, false);
    let model = build(&hp, &random_tensors(&hp, 2)).unwrap();
    let a = logits(&model, &IDS);
    let mut changed = IDS;
    changed[5] = 44;
    let b = logits(&model, &changed);
    let v = hp.vocab_size;
    // Positions 0..5 never see token 5.
    assert_close(
        &a[..5 * v],
        &b[..5 * v],
        1e-6,
        "positions before the change",
    );
    // From position 5 on they do.
    for p in 5..IDS.len() {
        let diff = (0..v)
            .map(|i| (a[p * v + i] - b[p * v + i]).abs())
            .fold(0f32, f32::max);
        assert!(diff > 1e-4, "position {p} should see the changed token");
    }
}

#[test]
fn incremental_decoding_equals_the_full_forward() {
    // The KV-cached path (prompt of 4, then one token at a time) must give the logits the
    // full causal forward gives at the same positions.
    let hp = tiny(2, true);
    let model = build(&hp, &random_tensors(&hp, 3)).unwrap();
    let full = logits(&model, &IDS);
    let v = hp.vocab_size;
    let rope = model.rope(IDS.len()).unwrap();
    let mut cache = KvCache::new(model.num_blocks());
    let first = model
        .forward_cached(model.tokens(&[&IDS[..4]]).unwrap(), &rope, &mut cache)
        .unwrap();
    assert_close(&host(first), &full[3 * v..4 * v], 1e-5, "prompt pass");
    for p in 4..IDS.len() {
        let step = model
            .forward_cached(model.tokens(&[&IDS[p..p + 1]]).unwrap(), &rope, &mut cache)
            .unwrap();
        assert_close(
            &host(step),
            &full[p * v..(p + 1) * v],
            1e-5,
            &format!("step {p}"),
        );
    }
    assert_eq!(cache.len(), IDS.len());
}

#[test]
fn batched_rows_are_independent() {
    // Two sequences in one batch give the logits each gives alone.
    let hp = tiny(2, true);
    let model = build(&hp, &random_tensors(&hp, 4)).unwrap();
    let other = [9u32, 9, 1, 2, 50, 7, 7, 30, 11];
    let both = host(
        model
            .forward(model.tokens(&[&IDS, &other]).unwrap())
            .unwrap(),
    );
    let n = IDS.len() * hp.vocab_size;
    assert_close(&both[..n], &logits(&model, &IDS), 1e-5, "row 0");
    assert_close(&both[n..], &logits(&model, &other), 1e-5, "row 1");
}

#[test]
fn input_hook_sees_every_linear_input_once() {
    let hp = tiny(2, true);
    let model = build(&hp, &random_tensors(&hp, 5)).unwrap();
    let rope = model.rope(IDS.len()).unwrap();
    let x = model.embed(model.tokens(&[&IDS]).unwrap()).unwrap();
    let mut seen: Vec<(InputSite, [usize; 3], Tensor<3>)> = Vec::new();
    let block = model.block(0).unwrap();
    let out = block
        .forward(
            x.clone(),
            &rope,
            Some(&mut |site, t: &Tensor<3>| seen.push((site, t.dims(), t.clone()))),
        )
        .unwrap();
    let sites: Vec<InputSite> = seen.iter().map(|s| s.0).collect();
    assert_eq!(sites, InputSite::ALL.to_vec());
    let s = IDS.len();
    assert_eq!(seen[0].1, [1, s, 32]);
    assert_eq!(seen[1].1, [1, s, 32]);
    assert_eq!(seen[2].1, [1, s, 32]);
    assert_eq!(seen[3].1, [1, s, 48]);
    // Every site's consumers take that width as d_input.
    for (site, dims, _) in &seen {
        for &slot in site.consumers() {
            assert_eq!(block.linear(slot).weight.dims()[0], dims[2], "{slot:?}");
            assert_eq!(slot.input(), *site);
        }
    }
    // The Q/K/V input is the block's first norm of x.
    assert_close(
        &host(seen[0].2.clone()),
        &host(block.input_layernorm.forward(x.clone())),
        1e-6,
        "Qkv input",
    );
    // The block output is x + o(AttnOut) + down(Down), and GateUp is the second norm of
    // x + o(AttnOut): the observed tensors are the ones the forward used.
    let after_attn = x.clone() + block.self_attn.o_proj.forward(seen[1].2.clone());
    assert_close(
        &host(seen[2].2.clone()),
        &host(block.post_attention_layernorm.forward(after_attn.clone())),
        1e-5,
        "GateUp input",
    );
    let rebuilt = after_attn + block.mlp.down_proj.forward(seen[3].2.clone());
    assert_close(&host(out.clone()), &host(rebuilt), 1e-5, "block output");
    // Without an input hook the output is the same.
    let plain = block.forward(x.clone(), &rope, None).unwrap();
    assert_eq!(host(plain), host(out.clone()));
    // observe_block(…, 1, …) sees block 1's Q/K/V input: the first norm of block 0's output.
    let mut qkv = None;
    model
        .observe_block(
            model.tokens(&[&IDS]).unwrap(),
            1,
            &mut |site, t: &Tensor<3>| {
                if site == InputSite::Qkv {
                    qkv = Some(t.clone());
                }
            },
        )
        .unwrap();
    let want = model.block(1).unwrap().input_layernorm.forward(out);
    assert_close(&host(qkv.unwrap()), &host(want), 1e-6, "observe_block");
    assert!(matches!(
        model.observe_block(model.tokens(&[&IDS]).unwrap(), 2, &mut |_, _| {}),
        Err(LlmError::NoSuchBlock { .. })
    ));
}

#[test]
fn replacing_weights_and_weight_quantizers() {
    let hp = tiny(2, true);
    let mut model = build(&hp, &random_tensors(&hp, 6)).unwrap();
    let rope = model.rope(IDS.len()).unwrap();
    let x = model.embed(model.tokens(&[&IDS]).unwrap()).unwrap();
    let before = host(
        model
            .block(1)
            .unwrap()
            .forward(x.clone(), &rope, None)
            .unwrap(),
    );
    // A weight quantizer on `down` gives exactly what replacing its weight with the
    // fake-quantized weight (the core function, computed independently) gives.
    let spec = QuantSpec::int4_weight_per_group(16);
    let w = model
        .block(1)
        .unwrap()
        .linear(LinearSlot::Down)
        .weight
        .val();
    let id = model.block(1).unwrap().linear(LinearSlot::Down).weight.id;
    let wq = burn_quant_core::fake_quant(w.clone(), &spec).unwrap();
    let block = model.block_mut(1).unwrap();
    block
        .set_weight_quant(LinearSlot::Down, Some(spec))
        .unwrap();
    let quant = host(block.forward(x.clone(), &rope, None).unwrap());
    block.set_weight_quant(LinearSlot::Down, None).unwrap();
    block.set_linear_weight(LinearSlot::Down, wq).unwrap();
    assert_eq!(
        block.linear(LinearSlot::Down).weight.id,
        id,
        "parameter id kept"
    );
    let replaced = host(block.forward(x.clone(), &rope, None).unwrap());
    assert_close(&quant, &replaced, 1e-6, "quantizer vs replaced weight");
    let diff = quant
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 1e-4, "int4 weights should change the output");
    // Shapes are checked; block indices too.
    assert!(matches!(
        block.set_linear_weight(LinearSlot::Q, Tensor::zeros([32, 8], &Device::flex())),
        Err(LlmError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        block.set_weight_quant(LinearSlot::Q, Some(QuantSpec::gguf_q4_k())),
        Err(LlmError::Layer(_))
    ));
    assert!(matches!(
        model.block(2),
        Err(LlmError::NoSuchBlock { index: 2, count: 2 })
    ));
    model
        .set_head_weight_quant(Some(QuantSpec::int8_weight_per_channel()))
        .unwrap();
    assert!(model.lm_head.weight_quant.is_some());
}

#[test]
fn tied_head_is_the_transposed_embedding() {
    let hp = tiny(2, true);
    let t = random_tensors(&hp, 7);
    let model = build(&hp, &t).unwrap();
    let emb = &t["model.embed_tokens.weight"];
    let head = host(model.lm_head.weight.val());
    let (v, d) = (hp.vocab_size, hp.hidden_size);
    for tok in [0, 13, v - 1] {
        for i in 0..d {
            assert_eq!(head[i * v + tok], emb.data[tok * d + i]);
        }
    }
    // An untied model needs lm_head.weight.
    let untied = tiny(2, false);
    let err = build(&untied, &t).unwrap_err();
    assert!(matches!(err, LlmError::MissingTensor { ref name } if name == "lm_head.weight"));
}

#[test]
fn input_errors_are_typed() {
    let hp = tiny(2, true);
    let model = LlamaModel::random(&hp, 0, &Device::flex()).unwrap();
    assert!(matches!(
        model.tokens(&[&[1, 61]]),
        Err(LlmError::TokenOutOfRange { id: 61, vocab: 61 })
    ));
    assert!(matches!(
        model.tokens(&[&[1, 2], &[3]]),
        Err(LlmError::InvalidArgument { .. })
    ));
    assert!(matches!(
        model.tokens(&[]),
        Err(LlmError::InvalidArgument { .. })
    ));
    let bad = Tensor::<2, burn::tensor::Int>::from_ints([[0, -1]], &Device::flex());
    assert!(matches!(
        model.embed(bad),
        Err(LlmError::TokenOutOfRange { id: -1, .. })
    ));
    let rope = model.rope(4).unwrap();
    let x = Tensor::<3>::zeros([1, 5, 32], &Device::flex());
    assert!(matches!(
        model.block(0).unwrap().forward(x, &rope, None),
        Err(LlmError::TooLong { end: 5, len: 4, .. })
    ));
    let x = Tensor::<3>::zeros([1, 2, 31], &Device::flex());
    assert!(matches!(
        model.block(0).unwrap().forward(x, &rope, None),
        Err(LlmError::BadInput { .. })
    ));
    assert!(matches!(
        generate_greedy(&model, &[], 3, &[]),
        Err(LlmError::InvalidArgument { .. })
    ));
    // Generation stops at a stop id and includes it; without stop ids it runs to the limit.
    let free = generate_greedy(&model, &[1, 2, 3], 5, &[]).unwrap();
    assert_eq!(free.len(), 5);
    let stopped = generate_greedy(&model, &[1, 2, 3], 5, &[free[1]]).unwrap();
    assert_eq!(
        stopped,
        free[..=free.iter().position(|&t| t == free[1]).unwrap()].to_vec()
    );
}

#[test]
fn random_models_are_reproducible() {
    let hp = tiny(2, true);
    let a = LlamaModel::random(&hp, 9, &Device::flex()).unwrap();
    let b = LlamaModel::random(&hp, 9, &Device::flex()).unwrap();
    let c = LlamaModel::random(&hp, 10, &Device::flex()).unwrap();
    assert_eq!(logits(&a, &IDS), logits(&b, &IDS));
    assert_ne!(logits(&a, &IDS), logits(&c, &IDS));
}

// --- Hugging Face directories -------------------------------------------------------------

/// Writes `tensors` as safetensors with `dtype` (F32, F16 or BF16) into `shards` files (with
/// an index when more than one) and a config.json for `hp`.
fn write_hf_dir(
    dir: &Path,
    hp: &LlamaHParams,
    tensors: &HashMap<String, HfTensor>,
    dtype: safetensors::Dtype,
    shards: usize,
) {
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": hp.vocab_size,
        "hidden_size": hp.hidden_size,
        "intermediate_size": hp.intermediate_size,
        "num_hidden_layers": hp.num_hidden_layers,
        "num_attention_heads": hp.num_attention_heads,
        "num_key_value_heads": hp.num_key_value_heads,
        "head_dim": hp.head_dim,
        "rms_norm_eps": hp.rms_norm_eps,
        "rope_theta": hp.rope_theta,
        "max_position_embeddings": hp.max_position_embeddings,
        "tie_word_embeddings": hp.tie_word_embeddings,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let t = &tensors[*n];
            let bytes = match dtype {
                safetensors::Dtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                safetensors::Dtype::F16 => t
                    .data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                safetensors::Dtype::BF16 => t
                    .data
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                other => panic!("test writer: {other:?}"),
            };
            ((*n).clone(), t.shape.clone(), bytes)
        })
        .collect();
    let per = encoded.len().div_ceil(shards).max(1);
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in encoded.chunks(per).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", k + 1)
        };
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = chunk
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap(),
                )
            })
            .collect();
        for (n, _) in &views {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        let bytes = safetensors::serialize(views, None).unwrap();
        std::fs::write(dir.join(&file), bytes).unwrap();
    }
    if shards > 1 {
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

/// `tensors` with every value rounded through `round`.
fn rounded(
    tensors: &HashMap<String, HfTensor>,
    round: impl Fn(f32) -> f32,
) -> HashMap<String, HfTensor> {
    tensors
        .iter()
        .map(|(k, t)| {
            let mut t = t.clone();
            t.data.iter_mut().for_each(|v| *v = round(*v));
            (k.clone(), t)
        })
        .collect()
}

#[test]
fn safetensors_directories_load_in_f32_f16_bf16_and_shards() {
    // The reference is the model built in memory from the same values (rounded through the
    // storage dtype by `half`, independently of the loader): logits must be identical.
    let hp = tiny(2, false);
    let tensors = random_tensors(&hp, 11);
    type Case = (&'static str, safetensors::Dtype, usize, fn(f32) -> f32);
    let cases: [Case; 4] = [
        ("f32", safetensors::Dtype::F32, 1, |v| v),
        ("f16", safetensors::Dtype::F16, 1, |v| {
            half::f16::from_f32(v).to_f32()
        }),
        ("bf16", safetensors::Dtype::BF16, 1, |v| {
            half::bf16::from_f32(v).to_f32()
        }),
        ("sharded", safetensors::Dtype::F32, 3, |v| v),
    ];
    for (name, dtype, shards, round) in cases {
        let dir = scratch_dir(&format!("hf-{name}"));
        write_hf_dir(&dir, &hp, &tensors, dtype, shards);
        let loaded = load_model(&dir, &Device::flex()).unwrap();
        let reference = build(&hp, &rounded(&tensors, round)).unwrap();
        assert_eq!(loaded.hparams(), &hp, "{name}");
        assert_eq!(logits(&loaded, &IDS), logits(&reference, &IDS), "{name}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn loading_errors_are_typed() {
    let device = Device::flex();
    let hp = tiny(2, true);
    let tensors = random_tensors(&hp, 12);
    let dir = scratch_dir("load-errors");
    // Not a model.
    assert!(matches!(
        load_model(dir.join("nothing-here"), &device),
        Err(LlmError::NotAModel { .. })
    ));
    assert!(matches!(
        load_model(&dir, &device),
        Err(LlmError::NotAModel { .. })
    ));
    // config.json but no weights.
    write_hf_dir(&dir, &hp, &tensors, safetensors::Dtype::F32, 1);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(matches!(
        load_model(&dir, &device),
        Err(LlmError::Io { .. })
    ));
    // A missing tensor, then a tensor of the wrong shape.
    let mut partial = tensors.clone();
    partial.remove("model.layers.1.mlp.up_proj.weight");
    write_hf_dir(&dir, &hp, &partial, safetensors::Dtype::F32, 1);
    assert!(matches!(
        load_model(&dir, &device),
        Err(LlmError::MissingTensor { ref name }) if name == "model.layers.1.mlp.up_proj.weight"
    ));
    let mut wrong = tensors.clone();
    let t = wrong
        .get_mut("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    t.shape = vec![8, 64];
    write_hf_dir(&dir, &hp, &wrong, safetensors::Dtype::F32, 1);
    assert!(matches!(
        load_model(&dir, &device),
        Err(LlmError::ShapeMismatch { .. })
    ));
    // A dtype the loader does not convert.
    // (The embedding is the first tensor the loader asks for.)
    let i32_bytes = vec![0u8; 4 * 61 * 32];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![61, 32], &i32_bytes)
            .unwrap();
    let bytes = safetensors::serialize([("model.embed_tokens.weight", view)], None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    assert!(matches!(
        load_model(&dir, &device),
        Err(LlmError::UnsupportedDtype { ref name, .. }) if name == "model.embed_tokens.weight"
    ));
    // Corrupt safetensors, corrupt config, unsupported architecture.
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{not json",
    )
    .unwrap();
    assert!(matches!(
        load_model(&dir, &device),
        Err(LlmError::Safetensors { .. })
    ));
    std::fs::write(dir.join("config.json"), "{").unwrap();
    assert!(matches!(load_model(&dir, &device), Err(LlmError::Llama(_))));
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    assert!(matches!(load_model(&dir, &device), Err(LlmError::Llama(_))));
    // A shard index that points outside the directory.
    write_hf_dir(&dir, &hp, &tensors, safetensors::Dtype::F32, 1);
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "../x.safetensors"}}"#,
    )
    .unwrap();
    assert!(matches!(
        load_model(&dir, &device),
        Err(LlmError::Json { .. })
    ));
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    // Without tokenizer.json, load_with_tokenizer refuses before reading weights; a garbage
    // GGUF is a typed GGUF error.
    assert!(matches!(
        load_with_tokenizer(&dir, &device),
        Err(LlmError::MissingTokenizer { .. })
    ));
    let gguf = dir.join("broken.gguf");
    std::fs::write(&gguf, b"GGUF\x03\0\0\0garbage").unwrap();
    assert!(matches!(
        load_model(&gguf, &device),
        Err(LlmError::Llama(_))
    ));
    assert!(matches!(
        load_with_tokenizer(&gguf, &device),
        Err(LlmError::MissingTokenizer { .. })
    ));
    assert!(matches!(
        LlamaTokenizer::from_dir(&dir),
        Err(LlmError::MissingTokenizer { .. })
    ));
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    assert!(matches!(
        LlamaTokenizer::from_dir(&dir),
        Err(LlmError::Tokenizer { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
