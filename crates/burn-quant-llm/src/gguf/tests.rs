use super::mix::{shape_fallback, use_more_bits};
use super::*;
use burn_quant_export::gguf::{GgufFile, SpecialTokens, TokenType};

use crate::hparams::RopeScaling;

/// Deterministic pseudo-random values in [-1, 1) (xorshift64*).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            r as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// q/k permutation

#[test]
fn permutation_matches_hand_worked_example() {
    // 2 heads of dim 4, one column: head rows (x0, x1 | x2, x3) pair (0,2) and (1,3) under
    // rotate-half; llama.cpp wants each pair adjacent: 0 2 1 3.
    let rows: Vec<f32> = (0..8).map(|r| r as f32).collect();
    assert_eq!(
        permute_qk_rows(&rows, 8, 1, 2).unwrap(),
        [0., 2., 1., 3., 4., 6., 5., 7.]
    );
    // One head of dim 6: halves (0 1 2 | 3 4 5) → pairs (0,3) (1,4) (2,5).
    let rows: Vec<f32> = (0..6).map(|r| r as f32).collect();
    assert_eq!(
        permute_qk_rows(&rows, 6, 1, 1).unwrap(),
        [0., 3., 1., 4., 2., 5.]
    );
    // Whole rows move: 1 head of dim 4, 2 columns (row r = [10r, 10r + 1]).
    let m: Vec<f32> = (0..4)
        .flat_map(|r| [10. * r as f32, 10. * r as f32 + 1.])
        .collect();
    assert_eq!(
        permute_qk_rows(&m, 4, 2, 1).unwrap(),
        [0., 1., 20., 21., 10., 11., 30., 31.]
    );
    assert_eq!(
        unpermute_qk_rows(&[0., 2., 1., 3., 4., 6., 5., 7.], 8, 1, 2).unwrap(),
        [0., 1., 2., 3., 4., 5., 6., 7.]
    );
}

#[test]
fn permute_and_unpermute_are_inverse() {
    for (heads, hd, cols) in [(1, 2, 3), (3, 8, 5), (9, 64, 2), (4, 6, 1)] {
        let rows = heads * hd;
        let x = values(rows * cols, (heads * 31 + hd) as u64);
        let p = permute_qk_rows(&x, rows, cols, heads).unwrap();
        assert_eq!(unpermute_qk_rows(&p, rows, cols, heads).unwrap(), x);
        assert_eq!(
            permute_qk_rows(
                &unpermute_qk_rows(&x, rows, cols, heads).unwrap(),
                rows,
                cols,
                heads
            )
            .unwrap(),
            x
        );
        if hd > 2 {
            assert_ne!(p, x, "a head dim > 2 must move rows");
        }
    }
    assert!(matches!(
        permute_qk_rows(&[0.; 6], 6, 1, 4),
        Err(LlamaError::BadHParams { .. })
    ));
    assert!(matches!(
        permute_qk_rows(&[0.; 6], 6, 1, 2),
        Err(LlamaError::BadHParams { .. })
    ));
    assert!(matches!(
        permute_qk_rows(&[0.; 5], 4, 1, 1),
        Err(LlamaError::DataLength { .. })
    ));
}

/// The permutation is the one that makes llama.cpp's RoPE (rotate adjacent pairs) on the
/// permuted weights equal Hugging Face's RoPE (rotate halves) on the original weights: the
/// rotated query of the permuted projection is the permuted rotated query, so attention scores
/// q·k are unchanged.
#[test]
fn permuted_weights_give_the_same_rope_output() {
    let (heads, hd, cols, pos) = (3usize, 8usize, 5usize, 7.0f64);
    let rows = heads * hd;
    let w = values(rows * cols, 11);
    let x = values(cols, 12);
    let matvec = |w: &[f32]| -> Vec<f64> {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| w[r * cols + c] as f64 * x[c] as f64)
                    .sum()
            })
            .collect()
    };
    let theta = |i: usize| pos * 10000f64.powf(-2.0 * i as f64 / hd as f64);
    // HF: dims i and i + hd/2 of each head rotate by theta(i).
    let mut hf = matvec(&w);
    for h in 0..heads {
        for i in 0..hd / 2 {
            let (a, b) = (h * hd + i, h * hd + i + hd / 2);
            let (c, s) = (theta(i).cos(), theta(i).sin());
            let (xa, xb) = (hf[a], hf[b]);
            hf[a] = xa * c - xb * s;
            hf[b] = xa * s + xb * c;
        }
    }
    // llama.cpp NORM rope: dims 2i and 2i + 1 rotate by theta(i).
    let mut ll = matvec(&permute_qk_rows(&w, rows, cols, heads).unwrap());
    for h in 0..heads {
        for i in 0..hd / 2 {
            let (a, b) = (h * hd + 2 * i, h * hd + 2 * i + 1);
            let (c, s) = (theta(i).cos(), theta(i).sin());
            let (xa, xb) = (ll[a], ll[b]);
            ll[a] = xa * c - xb * s;
            ll[b] = xa * s + xb * c;
        }
    }
    let hf32: Vec<f32> = hf.iter().map(|&v| v as f32).collect();
    let expected = permute_qk_rows(&hf32, rows, 1, heads).unwrap();
    for (a, b) in ll.iter().zip(&expected) {
        assert!((*a as f32 - b).abs() < 1e-5, "{a} vs {b}");
    }
}

// ---------------------------------------------------------------------------------------------
// names

#[test]
fn names_map_both_ways() {
    let pairs = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        (
            "model.layers.0.input_layernorm.weight",
            "blk.0.attn_norm.weight",
        ),
        (
            "model.layers.12.self_attn.q_proj.weight",
            "blk.12.attn_q.weight",
        ),
        ("model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"),
        (
            "model.layers.3.self_attn.v_proj.weight",
            "blk.3.attn_v.weight",
        ),
        (
            "model.layers.3.self_attn.o_proj.weight",
            "blk.3.attn_output.weight",
        ),
        (
            "model.layers.29.post_attention_layernorm.weight",
            "blk.29.ffn_norm.weight",
        ),
        (
            "model.layers.1.mlp.gate_proj.weight",
            "blk.1.ffn_gate.weight",
        ),
        ("model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up.weight"),
        (
            "model.layers.1.mlp.down_proj.weight",
            "blk.1.ffn_down.weight",
        ),
    ];
    for (hf, gguf) in pairs {
        let a = LlamaTensorName::parse_hf(hf).unwrap();
        let b = LlamaTensorName::parse_gguf(gguf).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.gguf_name(), gguf);
        assert_eq!(b.hf_name(), hf);
    }
    for bad in [
        "model.layers.x.mlp.up_proj.weight",
        "model.layers.-1.mlp.up_proj.weight",
        "model.layers.1.mlp.up_proj",
        "model.layers.1.input_layernorm.bias",
        "model.embed_tokens.bias",
        "blk.1.attn_q.weight.extra",
        "model.layers.1.mlp.fc1.weight",
        "rope_freqs.weight",
    ] {
        assert!(
            matches!(
                LlamaTensorName::parse_hf(bad).or_else(|_| LlamaTensorName::parse_gguf(bad)),
                Err(LlamaError::UnknownTensor { .. })
            ),
            "{bad}"
        );
    }
    assert_eq!(
        LlamaTensorName::parse_hf_skippable("model.layers.0.self_attn.rotary_emb.inv_freq")
            .unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// hyper-parameters

/// SmolLM2-135M-Instruct's config.json as transformers 5 writes it (rope in rope_parameters).
const SMOLLM2_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1,
  "eos_token_id": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 576,
  "intermediate_size": 1536, "max_position_embeddings": 8192, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
  "num_key_value_heads": 3, "pad_token_id": 2, "rms_norm_eps": 9.999999747378752e-06,
  "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
  "tie_word_embeddings": true, "vocab_size": 49152
}"#;

fn smollm2() -> LlamaHParams {
    LlamaHParams::from_hf_config_json(SMOLLM2_CONFIG).unwrap()
}

#[test]
fn hparams_from_hf_config_and_metadata_types() {
    let hp = smollm2();
    assert_eq!(
        hp,
        LlamaHParams {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    );
    let md = hp.metadata();
    let get = |k: &str| md.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("llama.block_count"), Some(MetadataValue::U32(30)));
    assert_eq!(
        get("llama.attention.head_count_kv"),
        Some(MetadataValue::U32(3))
    );
    assert_eq!(
        get("llama.rope.dimension_count"),
        Some(MetadataValue::U32(64))
    );
    assert_eq!(
        get("llama.rope.freq_base"),
        Some(MetadataValue::F32(100000.0))
    );
    assert_eq!(get("llama.context_length"), Some(MetadataValue::U32(8192)));

    // Older transformers: rope_theta at the top level, defaults for the optional fields.
    let old = r#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
        "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 10,
        "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
        "rope_scaling": {"type": "linear", "factor": 4.0}}"#;
    let hp = LlamaHParams::from_hf_config_json(old).unwrap();
    assert_eq!(hp.num_key_value_heads, 4);
    assert_eq!(hp.head_dim, 16);
    assert_eq!(hp.rope_theta, 500000.0);
    assert_eq!(hp.rope_scaling, RopeScaling::Linear { factor: 4.0 });
    assert!(!hp.tie_word_embeddings);
    assert_eq!(hp.max_position_embeddings, 2048);
}

#[test]
fn bad_configs_are_typed_errors() {
    let with = |from: &str, to: &str| {
        let text = SMOLLM2_CONFIG.replace(from, to);
        assert_ne!(text, SMOLLM2_CONFIG, "{from}");
        LlamaHParams::from_hf_config_json(&text)
    };
    assert!(matches!(
        with(r#""model_type": "llama""#, r#""model_type": "gpt2""#),
        Err(LlamaError::UnsupportedArchitecture { .. })
    ));
    assert!(matches!(
        with(r#""hidden_size": 576,"#, ""),
        Err(LlamaError::MissingField { .. })
    ));
    assert!(matches!(
        with(r#""num_key_value_heads": 3"#, r#""num_key_value_heads": 4"#),
        Err(LlamaError::BadHParams { .. })
    ));
    assert!(matches!(
        with(r#""num_hidden_layers": 30"#, r#""num_hidden_layers": -1"#),
        Err(LlamaError::BadField { .. })
    ));
    assert!(matches!(
        with(r#""rope_type": "default""#, r#""rope_type": "llama3""#),
        Err(LlamaError::UnsupportedRopeScaling { .. })
    ));
    assert!(matches!(
        with(r#""head_dim": 64"#, r#""head_dim": 63"#),
        Err(LlamaError::BadHParams { .. })
    ));
    assert!(matches!(
        LlamaHParams::from_hf_config_json("[1,"),
        Err(LlamaError::Json { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// mixes

/// Llama-2-7B's shape (32 blocks, 4096 wide, no GQA, untied output).
fn llama2_7b() -> LlamaHParams {
    LlamaHParams {
        vocab_size: 32000,
        hidden_size: 4096,
        intermediate_size: 11008,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 32,
        head_dim: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
    }
}

/// Types a mix gives every tensor of a model, counted per type.
fn type_counts(mix: LlamaMix, hp: &LlamaHParams) -> Vec<(GgmlType, usize)> {
    let mut names = LlamaTensorName::required(hp);
    names.sort_by_key(|n| n.order_key());
    let report = LlamaExportReport {
        tensors: names
            .iter()
            .map(|n| {
                let dims: Vec<u64> = n
                    .hf_shape(hp)
                    .unwrap()
                    .iter()
                    .rev()
                    .map(|&d| d as u64)
                    .collect();
                ExportedTensor {
                    name: n.gguf_name(),
                    ty: mix.tensor_type(n, &dims, hp, false),
                    dims,
                    bytes: 0,
                    weighted: false,
                    given: false,
                }
            })
            .collect(),
        file_type: mix.file_type(),
        file_bytes: 0,
    };
    report.type_counts()
}

/// The per-type tensor counts llama.cpp prints when loading the widely distributed
/// llama-2-7b Q4_K_M / Q4_K_S / Q3_K_M files ("type q6_K: 33 tensors", …).
#[test]
fn mixes_reproduce_llama_cpp_counts_for_llama2_7b() {
    use GgmlType as T;
    let hp = llama2_7b();
    assert_eq!(
        type_counts(LlamaMix::Q4_K_M, &hp),
        [(T::F32, 65), (T::Q4_K, 193), (T::Q6_K, 33)]
    );
    assert_eq!(
        type_counts(LlamaMix::Q4_K_S, &hp),
        [(T::F32, 65), (T::Q4_K, 217), (T::Q5_K, 8), (T::Q6_K, 1)]
    );
    assert_eq!(
        type_counts(LlamaMix::Q3_K_M, &hp),
        [
            (T::F32, 65),
            (T::Q3_K, 129),
            (T::Q4_K, 92),
            (T::Q5_K, 4),
            (T::Q6_K, 1)
        ]
    );
    assert_eq!(
        type_counts(LlamaMix::Q8_0, &hp),
        [(T::F32, 65), (T::Q8_0, 226)]
    );
    assert_eq!(
        type_counts(LlamaMix::Uniform(T::Q4_0), &hp),
        [(T::F32, 65), (T::Q4_0, 226)]
    );
}

#[test]
fn more_bits_layers_for_30_blocks() {
    let more: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
    // First 30/8 = 3, last from 7·30/8 = 26, and i with (i − 3) % 3 == 2 between.
    assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
}

#[test]
fn q4_k_m_on_smollm2_uses_the_shape_fallbacks() {
    use GgmlType as T;
    let hp = smollm2();
    let ty = |name: &str| {
        let n = LlamaTensorName::parse_gguf(name).unwrap();
        let dims: Vec<u64> = n
            .hf_shape(&hp)
            .unwrap()
            .iter()
            .rev()
            .map(|&d| d as u64)
            .collect();
        LlamaMix::Q4_K_M.tensor_type(&n, &dims, &hp, false)
    };
    // ne[0] = 576 is not a multiple of 256: Q4_K → Q5_0, Q6_K → Q8_0.
    assert_eq!(ty("blk.4.attn_q.weight"), T::Q5_0);
    assert_eq!(ty("blk.4.attn_v.weight"), T::Q5_0);
    assert_eq!(ty("blk.5.attn_v.weight"), T::Q8_0);
    assert_eq!(ty("blk.4.ffn_up.weight"), T::Q5_0);
    // ffn_down has ne[0] = 1536 = 6·256.
    assert_eq!(ty("blk.4.ffn_down.weight"), T::Q4_K);
    assert_eq!(ty("blk.5.ffn_down.weight"), T::Q6_K);
    // Tied embedding is quantized as the output: Q6_K, but 576 % 256 ≠ 0 → Q8_0.
    assert_eq!(ty("token_embd.weight"), T::Q8_0);
    assert_eq!(ty("blk.4.attn_norm.weight"), T::F32);
    assert_eq!(
        type_counts(LlamaMix::Q4_K_M, &hp),
        [
            (T::F32, 61),
            (T::Q5_0, 166),
            (T::Q8_0, 15),
            (T::Q4_K, 16),
            (T::Q6_K, 14)
        ]
    );
}

#[test]
fn shape_fallback_table() {
    use GgmlType as T;
    assert_eq!(shape_fallback(T::Q4_K, 4096), T::Q4_K);
    assert_eq!(shape_fallback(T::Q4_K, 576), T::Q5_0);
    assert_eq!(shape_fallback(T::Q5_K, 576), T::Q5_1);
    assert_eq!(shape_fallback(T::Q6_K, 576), T::Q8_0);
    assert_eq!(shape_fallback(T::Q2_K, 576), T::Q4_0);
    assert_eq!(shape_fallback(T::IQ4_XS, 576), T::IQ4_NL);
    assert_eq!(shape_fallback(T::Q4_K, 100), T::F16);
    assert_eq!(shape_fallback(T::Q8_0, 100), T::F16);
}

#[test]
fn mix_names_parse_and_print() {
    for s in ["Q4_K_M", "q4_k_m", "Q8_0", "Q2_K_S", "IQ4_NL", "F16"] {
        let m: LlamaMix = s.parse().unwrap();
        assert!(m.to_string().eq_ignore_ascii_case(s));
    }
    assert_eq!(
        "uniform-q4_k".parse::<LlamaMix>().unwrap(),
        LlamaMix::Uniform(GgmlType::Q4_K)
    );
    assert_eq!(LlamaMix::Q4_K_M.file_type(), 15);
    assert_eq!(LlamaMix::Uniform(GgmlType::Q8_0).file_type(), 7);
    assert!(matches!(
        "Q4_K_X".parse::<LlamaMix>(),
        Err(LlamaError::UnknownMix(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// export and read back

fn tiny_hparams(tied: bool) -> LlamaHParams {
    LlamaHParams {
        vocab_size: 6,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 128,
        tie_word_embeddings: tied,
    }
}

fn tiny_tokenizer() -> GgufTokenizer {
    GgufTokenizer {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens: ["<s>", "a", "b", "ab", "Ġ", "Ġab"]
            .map(String::from)
            .to_vec(),
        token_types: [3, 1, 1, 1, 1, 1]
            .map(|t| TokenType::from_id(t).unwrap())
            .to_vec(),
        scores: None,
        merges: vec!["a b".into(), "Ġ ab".into()],
        special: SpecialTokens {
            bos: Some(0),
            eos: Some(0),
            ..Default::default()
        },
        add_bos: Some(false),
        add_eos: None,
        add_space_prefix: None,
        chat_template: None,
    }
}

fn tiny_tensors(hp: &LlamaHParams, with_bias: bool) -> Vec<HfTensor> {
    let mut names = LlamaTensorName::required(hp);
    if with_bias {
        names.push(LlamaTensorName::parse_hf("model.layers.1.self_attn.q_proj.bias").unwrap());
        names.push(LlamaTensorName::parse_hf("model.layers.0.self_attn.k_proj.bias").unwrap());
    }
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let shape = n.hf_shape(hp).unwrap();
            let len = shape.iter().product();
            HfTensor::new(n.hf_name(), shape, values(len, i as u64 + 1))
        })
        .collect()
}

fn build(
    hp: &LlamaHParams,
    tensors: Vec<HfTensor>,
    mix: LlamaMix,
) -> Result<(GgufWriter, LlamaExportReport), LlamaError> {
    let cfg = LlamaGgufConfig::new(hp.clone(), "tiny").with_provenance("source", "unit test");
    build_llama_gguf(
        &cfg,
        &tiny_tokenizer(),
        tensors.into_iter().map(Ok),
        mix,
        None,
    )
}

#[test]
fn f32_export_reads_back_exactly_in_hf_orientation() {
    for tied in [true, false] {
        let hp = tiny_hparams(tied);
        let mut input = tiny_tensors(&hp, true);
        input.reverse(); // the file order must not depend on the input order
        let (w, report) = build(&hp, input.clone(), LlamaMix::F32).unwrap();
        assert_eq!(report.file_type, 0);
        assert_eq!(report.tensors[0].name, "token_embd.weight");
        assert_eq!(report.tensors.len(), input.len());
        let file = GgufFile::parse(w.to_bytes().unwrap()).unwrap();
        assert_eq!(
            file.get("burnq.source").and_then(|v| v.as_str()),
            Some("unit test")
        );
        // The stored q rows are permuted: stored row 1 of head 0 is HF row 8 (d/2 = 8).
        let q_hf = input
            .iter()
            .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        let q_stored = file.tensor_f32("blk.0.attn_q.weight").unwrap();
        assert_eq!(&q_stored[64..128], &q_hf.data[8 * 64..9 * 64]);
        assert_eq!(file.tensor("blk.0.attn_q.weight").unwrap().dims, [64, 64]);
        assert_eq!(file.tensor("blk.0.attn_k.weight").unwrap().dims, [64, 32]);

        let source = LlamaGgufSource::from_file(file).unwrap();
        assert_eq!(source.hparams(), &hp);
        assert_eq!(source.tokenizer(), &tiny_tokenizer());
        let mut back: Vec<HfTensor> = source.tensors().map(Result::unwrap).collect();
        back.sort_by(|a, b| a.name.cmp(&b.name));
        input.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, input);
    }
}

#[test]
fn quantized_export_round_trips_within_the_type_error() {
    let hp = tiny_hparams(true);
    let input = tiny_tensors(&hp, false);
    let (w, report) = build(&hp, input.clone(), LlamaMix::Q8_0).unwrap();
    assert!(report.tensors.iter().all(|t| t.ty
        == if t.dims.len() == 1 {
            GgmlType::F32
        } else {
            GgmlType::Q8_0
        }));
    let source =
        LlamaGgufSource::from_file(GgufFile::parse(w.to_bytes().unwrap()).unwrap()).unwrap();
    for t in &input {
        let back = source.tensor(&t.name).unwrap();
        assert_eq!(back.shape, t.shape);
        // Q8_0: |error| ≤ d/2 = absmax/254 per block of 32; values are in [-1, 1).
        let max_err = back
            .data
            .iter()
            .zip(&t.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err <= 1.0 / 254.0 + 1e-3, "{}: {max_err}", t.name);
    }
}

#[test]
fn export_rejects_inconsistent_inputs() {
    let hp = tiny_hparams(false);
    let good = tiny_tensors(&hp, false);
    let with = |f: &dyn Fn(&mut Vec<HfTensor>)| {
        let mut t = good.clone();
        f(&mut t);
        build(&hp, t, LlamaMix::F32).map(|_| ())
    };
    assert!(matches!(
        with(&|t| {
            t.pop();
        }),
        Err(LlamaError::MissingTensor { .. })
    ));
    assert!(matches!(
        with(&|t| {
            let dup = t[3].clone();
            t.push(dup);
        }),
        Err(LlamaError::DuplicateTensor { .. })
    ));
    assert!(matches!(
        with(&|t| t[0].shape = vec![6, 32, 2]),
        Err(LlamaError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        with(&|t| {
            t[0].data.pop();
        }),
        Err(LlamaError::DataLength { .. })
    ));
    assert!(matches!(
        with(&|t| t[0].name = "model.embed.weight".into()),
        Err(LlamaError::UnknownTensor { .. })
    ));
    assert!(matches!(
        with(&|t| t.push(HfTensor::new(
            "model.layers.7.input_layernorm.weight",
            vec![64],
            vec![0.; 64]
        ))),
        Err(LlamaError::UnknownTensor { .. })
    ));
    let mut big = hp.clone();
    big.vocab_size = 7;
    let cfg = LlamaGgufConfig::new(big, "x");
    assert!(matches!(
        build_llama_gguf(
            &cfg,
            &tiny_tokenizer(),
            std::iter::empty::<Result<HfTensor, LlamaError>>(),
            LlamaMix::F32,
            None
        ),
        Err(LlamaError::VocabMismatch { .. })
    ));
}

#[test]
fn tied_models_drop_a_stored_lm_head() {
    let hp = tiny_hparams(true);
    let mut t = tiny_tensors(&hp, false);
    t.push(HfTensor::new(
        "lm_head.weight",
        vec![6, 64],
        values(6 * 64, 99),
    ));
    let (_, report) = build(&hp, t, LlamaMix::F32).unwrap();
    assert!(report.tensors.iter().all(|t| t.name != "output.weight"));
}

#[test]
fn burn_linear_is_transposed() {
    // Burn [d_input = 2, d_output = 3]: row i holds the weights from input i.
    let burn = [1., 2., 3., 4., 5., 6.];
    let t = HfTensor::from_burn_linear("w", 2, 3, &burn).unwrap();
    assert_eq!(t.shape, [3, 2]);
    assert_eq!(t.data, [1., 4., 2., 5., 3., 6.]);
    assert!(HfTensor::from_burn_linear("w", 2, 2, &burn).is_err());
}

/// With an importance matrix the weights that have an entry are encoded by the weighted
/// search, which must lower the importance-weighted error against the unweighted encoder.
#[test]
fn imatrix_lowers_the_weighted_error() {
    let mut hp = tiny_hparams(true);
    hp.hidden_size = 256;
    hp.head_dim = 64;
    hp.intermediate_size = 256;
    let input = tiny_tensors(&hp, false);
    // Activations: every eighth column carries almost all the energy.
    let x: Vec<f32> = values(256 * 64, 5)
        .iter()
        .enumerate()
        .map(|(i, v)| if i % 8 == 0 { v * 30.0 } else { v * 0.1 })
        .collect();
    let mut im = Imatrix::new();
    im.accumulate("blk.0.ffn_up.weight", &x, 256).unwrap();
    let importance = im.importance("blk.0.ffn_up.weight").unwrap();
    let cfg = LlamaGgufConfig::new(hp.clone(), "tiny");
    let mix = LlamaMix::Uniform(GgmlType::Q4_K);
    let run = |imatrix: Option<&Imatrix>| {
        let (w, report) = build_llama_gguf(
            &cfg,
            &tiny_tokenizer(),
            input.clone().into_iter().map(Ok),
            mix,
            imatrix,
        )
        .unwrap();
        let file = GgufFile::parse(w.to_bytes().unwrap()).unwrap();
        (file.tensor_f32("blk.0.ffn_up.weight").unwrap(), report)
    };
    let (plain, plain_report) = run(None);
    let (weighted, report) = run(Some(&im));
    assert!(plain_report.tensors.iter().all(|t| !t.weighted));
    let flagged: Vec<&str> = report
        .tensors
        .iter()
        .filter(|t| t.weighted)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(flagged, ["blk.0.ffn_up.weight"]);
    let orig = &input
        .iter()
        .find(|t| t.name == "model.layers.0.mlp.up_proj.weight")
        .unwrap()
        .data;
    let werr = |q: &[f32]| -> f64 {
        q.iter()
            .zip(orig)
            .enumerate()
            .map(|(i, (a, b))| importance[i % 256] as f64 * ((a - b) as f64).powi(2))
            .sum()
    };
    let (e_plain, e_weighted) = (werr(&plain), werr(&weighted));
    eprintln!("weighted error: plain {e_plain:.4e}, with imatrix {e_weighted:.4e}");
    assert!(
        e_weighted < 0.5 * e_plain,
        "weighted {e_weighted} vs plain {e_plain}"
    );
}

/// Weights given already encoded keep their type and codes; q/k rows move as whole encoded
/// rows, which equals encoding the permuted f32 rows because ggml blocks never cross a row.
#[test]
fn encoded_weights_are_written_code_for_code() {
    let hp = tiny_hparams(true);
    let floats = tiny_tensors(&hp, false);
    let encode = |t: &HfTensor, ty: GgmlType| GgmlTensor {
        ty,
        dims: [t.shape[1] as u64, t.shape[0] as u64],
        data: codec::encode(ty, &t.data).unwrap(),
    };
    let q = floats
        .iter()
        .find(|t| t.name == "model.layers.1.self_attn.q_proj.weight")
        .unwrap()
        .clone();
    let up = floats
        .iter()
        .find(|t| t.name == "model.layers.0.mlp.up_proj.weight")
        .unwrap()
        .clone();
    let inputs: Vec<LlamaTensor> = floats
        .iter()
        .map(|t| match t.name.as_str() {
            n if n == q.name => LlamaTensor::Encoded {
                name: t.name.clone(),
                tensor: encode(t, GgmlType::Q4_0),
            },
            n if n == up.name => LlamaTensor::Encoded {
                name: t.name.clone(),
                tensor: encode(t, GgmlType::Q5_1),
            },
            _ => LlamaTensor::Float(t.clone()),
        })
        .collect();
    let cfg = LlamaGgufConfig::new(hp.clone(), "tiny");
    let (w, report) = build_llama_gguf(
        &cfg,
        &tiny_tokenizer(),
        inputs.into_iter().map(Ok),
        LlamaMix::Q8_0,
        None,
    )
    .unwrap();
    let given: Vec<(&str, GgmlType)> = report
        .tensors
        .iter()
        .filter(|t| t.given)
        .map(|t| (t.name.as_str(), t.ty))
        .collect();
    assert_eq!(
        given,
        [
            ("blk.0.ffn_up.weight", GgmlType::Q5_1),
            ("blk.1.attn_q.weight", GgmlType::Q4_0)
        ]
    );
    let file = GgufFile::parse(w.to_bytes().unwrap()).unwrap();
    let stored = |n: &str| file.tensor_bytes(file.tensor(n).unwrap()).to_vec();
    let permuted = permute_qk_rows(&q.data, 64, 64, 4).unwrap();
    assert_eq!(
        stored("blk.1.attn_q.weight"),
        codec::encode(GgmlType::Q4_0, &permuted).unwrap()
    );
    assert_eq!(
        stored("blk.0.ffn_up.weight"),
        codec::encode(GgmlType::Q5_1, &up.data).unwrap()
    );
    // The rest follows the mix.
    assert_eq!(
        file.tensor("blk.0.attn_q.weight").unwrap().ty,
        GgmlType::Q8_0
    );

    // An encoded weight whose dims disagree with the hyper-parameters is refused.
    let mut bad = encode(&up, GgmlType::Q8_0);
    bad.dims = [96, 64];
    let err = build_llama_gguf(
        &cfg,
        &tiny_tokenizer(),
        [Ok(LlamaTensor::Encoded {
            name: up.name.clone(),
            tensor: bad,
        })],
        LlamaMix::Q8_0,
        None,
    );
    assert!(matches!(err, Err(LlamaError::ShapeMismatch { .. })));
}
