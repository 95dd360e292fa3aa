//! PTQ of models larger than memory (`burn_quant_llm::quantize_llama_streaming`, issue 16
//! point 4), on synthetic Llama checkpoints written here as a Hugging Face directory
//! (`config.json` + a bf16 `model.safetensors`, random weights):
//!
//! * the streamed GGUF is byte for byte the in-memory pipeline's export (`quantize_llama`, then
//!   the tensors `burnq ptq-llm --export` writes) for GPTQ and RTN, and reads back;
//! * under a data-segment limit (`prlimit --data`, RLIMIT_DATA: anonymous memory and the heap,
//!   not the read-only file mapping) smaller than the model in f32, GPTQ + GGUF export
//!   succeeds streaming and fails in memory, each in a child process (this test binary re-run
//!   on one test with `PTQ_STREAM_CHILD` set).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::Device;
use burn_quant::QuantSpec;
use burn_quant::export::gguf::{
    GgufFile, GgufTokenizer, HfTokenizerSide, TokenizerOptions, encode_quant_tensor, ggml_type_of,
};
use burn_quant_llm::gguf::{
    HfTensor, LlamaGgufConfig, LlamaGgufSource, LlamaMix, LlamaTensor, export_llama_gguf,
};
use burn_quant_llm::{
    LlamaModel, LlmError, PtqConfig, StreamOptions, quantize_llama, quantize_llama_streaming,
};

const VOCAB: usize = 512;
/// The data-segment limit of the children: below the big model's f32 size.
const LIMIT: u64 = 192 << 20;
/// Blocks of the big model: 100 × 3.15 MB + the embedding = 315 MB in f32, 158 MB in bf16.
const BIG_BLOCKS: usize = 100;

fn config_json(blocks: usize) -> String {
    format!(
        r#"{{"model_type": "llama", "vocab_size": {VOCAB}, "hidden_size": 256,
            "intermediate_size": 768, "num_hidden_layers": {blocks},
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
            "tie_word_embeddings": true}}"#
    )
}

/// A byte-level BPE vocabulary of `VOCAB` tokens (`t`, `0`, `t0`, `t3` …) and one merge.
fn tokenizer_json() -> String {
    let vocab: Vec<String> = (0..VOCAB)
        .map(|i| {
            let text = match i {
                0 => "t".to_string(),
                1 => "0".to_string(),
                _ => format!("t{i}"),
            };
            format!("\"{text}\": {i}")
        })
        .collect();
    format!(
        r#"{{"model": {{"type": "BPE", "vocab": {{{}}}, "merges": ["t 0"]}},
            "pre_tokenizer": {{"type": "ByteLevel"}}}}"#,
        vocab.join(", ")
    )
}

fn tokenizer() -> GgufTokenizer {
    let opts = TokenizerOptions {
        pre: Some("default".into()),
        vocab_size: Some(VOCAB),
    };
    GgufTokenizer::from_hf_json(&tokenizer_json(), HfTokenizerSide::default(), &opts)
        .expect("the synthetic tokenizer converts")
}

/// Writes `dir/config.json` and a bf16 `dir/model.safetensors` of `blocks` blocks (uniform
/// weights of standard deviation 0.02, norm scales near 1), tensor by tensor.
fn write_model(dir: &Path, blocks: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config_json(blocks)).unwrap();
    let (d, ff, q, kv) = (256usize, 768usize, 256usize, 128usize);
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![VOCAB, d])];
    for l in 0..blocks {
        for (name, shape) in [
            ("input_layernorm", vec![d]),
            ("self_attn.q_proj", vec![q, d]),
            ("self_attn.k_proj", vec![kv, d]),
            ("self_attn.v_proj", vec![kv, d]),
            ("self_attn.o_proj", vec![d, q]),
            ("post_attention_layernorm", vec![d]),
            ("mlp.gate_proj", vec![ff, d]),
            ("mlp.up_proj", vec![ff, d]),
            ("mlp.down_proj", vec![d, ff]),
        ] {
            tensors.push((format!("model.layers.{l}.{name}.weight"), shape));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![d]));
    let mut header = Vec::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = 2 * shape.iter().product::<usize>();
        header.push(format!(
            "\"{name}\": {{\"dtype\": \"BF16\", \"shape\": {shape:?}, \"data_offsets\": [{offset}, {}]}}",
            offset + bytes
        ));
        offset += bytes;
    }
    let mut header = format!("{{{}}}", header.join(", ")).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(dir.join("model.safetensors")).unwrap());
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    let mut s = seed;
    let a = 0.02 * 3f32.sqrt();
    for (_, shape) in &tensors {
        let norm = shape.len() == 1;
        let n: usize = shape.iter().product();
        let mut buf = Vec::with_capacity(2 * n);
        for _ in 0..n {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            let v = if norm { 1.0 + 0.1 * u } else { a * u };
            buf.extend_from_slice(&bf16(v).to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// f32 → bf16 bits, rounded to nearest even (finite values).
fn bf16(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn windows() -> Vec<Vec<u32>> {
    let mut s = 7u64;
    (0..4)
        .map(|_| {
            (0..32)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) % VOCAB as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn ptq_config(algo: &str) -> PtqConfig {
    PtqConfig {
        weights: QuantSpec::gguf_q4_0(),
        algorithm: algo.parse().unwrap(),
        batch_windows: 4,
    }
}

fn stream_options(out: &Path, spec: &QuantSpec) -> StreamOptions {
    let mut o = StreamOptions::new(out);
    o.provenance.push(("spec".into(), spec.to_string()));
    o.tokenizer = Some(tokenizer());
    o
}

/// The in-memory pipeline and the export `burnq ptq-llm --export` writes (block linears code
/// for code, the embedding with the same ggml type, norms F32).
fn in_memory(dir: &Path, algo: &str, out: &Path) {
    let config = ptq_config(algo);
    let mut model = LlamaModel::from_hf_dir(dir, &Device::flex()).unwrap();
    let result = quantize_llama(&mut model, &windows(), &config, &mut |_| {}).unwrap();
    let ty = ggml_type_of(&config.weights).unwrap();
    let h = model.hparams().clone();
    let mut tensors: Vec<Result<LlamaTensor, _>> = vec![];
    for (name, q) in &result.weights {
        tensors.push(Ok(LlamaTensor::Encoded {
            name: name.clone(),
            tensor: encode_quant_tensor(q).unwrap(),
        }));
    }
    let host = |t: burn::tensor::Tensor<1>| t.try_into_vec_as::<f32>().unwrap();
    let embed = model
        .embed_tokens
        .weight
        .val()
        .try_into_vec_as::<f32>()
        .unwrap();
    tensors.push(Ok(HfTensor::new(
        "model.embed_tokens.weight",
        vec![h.vocab_size, h.hidden_size],
        embed,
    )
    .into()));
    tensors.push(Ok(HfTensor::new(
        "model.norm.weight",
        vec![h.hidden_size],
        host(model.norm.weight.val()),
    )
    .into()));
    for i in 0..model.num_blocks() {
        let b = model.block(i).unwrap();
        for (which, w) in [
            ("input_layernorm", &b.input_layernorm.weight),
            (
                "post_attention_layernorm",
                &b.post_attention_layernorm.weight,
            ),
        ] {
            tensors.push(Ok(HfTensor::new(
                format!("model.layers.{i}.{which}.weight"),
                vec![h.hidden_size],
                host(w.val()),
            )
            .into()));
        }
    }
    let gguf_config = LlamaGgufConfig::new(h, "burnq ptq-llm")
        .with_provenance("spec", config.weights.to_string());
    export_llama_gguf(
        out,
        &gguf_config,
        &tokenizer(),
        tensors,
        LlamaMix::Uniform(ty),
        None,
    )
    .unwrap();
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ptq_stream-{name}"))
}

/// The streamed GGUF is the in-memory pipeline's export, byte for byte (GPTQ and RTN), loads
/// with our reader as a llama model, and AutoRound is refused with a typed error.
#[test]
fn streamed_gguf_equals_the_in_memory_export() {
    let dir = tmp("small");
    write_model(&dir, 3, 1);
    for algo in ["gptq", "rtn"] {
        let (a, b) = (
            tmp(&format!("{algo}-memory.gguf")),
            tmp(&format!("{algo}-stream.gguf")),
        );
        in_memory(&dir, algo, &a);
        let config = ptq_config(algo);
        let mut blocks = 0;
        let r = quantize_llama_streaming(
            &dir,
            &windows(),
            &config,
            &stream_options(&b, &config.weights),
            &mut |_| blocks += 1,
        )
        .unwrap();
        assert_eq!(blocks, 3);
        assert_eq!(r.layers.len(), 21);
        let (ma, mb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(r.bytes_written, mb.len() as u64);
        let (fa, fb) = (
            GgufFile::parse(ma.clone()).unwrap(),
            GgufFile::parse(mb.clone()).unwrap(),
        );
        assert_eq!(fa.tensors, fb.tensors, "{algo}: tensor infos");
        for t in &fa.tensors {
            assert_eq!(fa.tensor_bytes(t), fb.tensor_bytes(t), "{algo}: {}", t.name);
        }
        assert!(ma == mb, "{algo}: the files differ outside the tensors");
        let src = LlamaGgufSource::open(&b).unwrap();
        assert_eq!(src.hparams().num_hidden_layers, 3);
        assert_eq!(src.tensors().count(), 2 + 3 * 9);
    }
    let e = quantize_llama_streaming(
        &dir,
        &windows(),
        &ptq_config("autoround"),
        &stream_options(&tmp("autoround.gguf"), &QuantSpec::gguf_q4_0()),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, LlmError::NotStreamable(_)), "{e}");
    assert!(!tmp("autoround.gguf").exists());
}

/// What a child runs under the memory limit: `stream` or `memory` (GPTQ + GGUF export).
#[test]
fn child_under_memory_limit() {
    let Ok(mode) = std::env::var("PTQ_STREAM_CHILD") else {
        return; // Only meaningful as a child of `larger_than_the_memory_limit`.
    };
    let dir = PathBuf::from(std::env::var("PTQ_STREAM_DIR").unwrap());
    let out = PathBuf::from(std::env::var("PTQ_STREAM_OUT").unwrap());
    let config = ptq_config("gptq");
    let t = Instant::now();
    match mode.as_str() {
        "stream" => {
            let r = quantize_llama_streaming(
                &dir,
                &windows(),
                &config,
                &stream_options(&out, &config.weights),
                &mut |_| {},
            )
            .unwrap();
            println!(
                "CHILD stream: model {:.0} MB f32, wrote {:.1} MB, peak RSS {:.1} MB, {:.1} s \
                 (read {:.1} s, write {:.1} s)",
                r.model_f32_bytes as f64 / 1e6,
                r.bytes_written as f64 / 1e6,
                r.peak_rss.unwrap_or(0) as f64 / 1e6,
                t.elapsed().as_secs_f64(),
                r.read.as_secs_f64(),
                r.write.as_secs_f64()
            );
        }
        _ => {
            in_memory(&dir, "gptq", &out);
            println!("CHILD memory: done in {:.1} s", t.elapsed().as_secs_f64());
        }
    }
}

fn run_child(mode: &str, dir: &Path, out: &Path) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let o = Command::new("prlimit")
        .arg(format!("--data={LIMIT}:{LIMIT}"))
        .arg(&exe)
        .args(["--exact", "child_under_memory_limit", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("PTQ_STREAM_CHILD", mode)
        .env("PTQ_STREAM_DIR", dir)
        .env("PTQ_STREAM_OUT", out)
        .output()
        .expect("prlimit (util-linux) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// A model of 315 MB in f32 (158 MB bf16 on disk) under a 192 MiB data limit: the streaming
/// GPTQ + GGUF export succeeds, the in-memory one runs out of memory.
#[test]
fn larger_than_the_memory_limit() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tmp("big");
    if !dir.join("model.safetensors").is_file() {
        write_model(&dir, BIG_BLOCKS, 2);
    }
    let f32_bytes = 4 * std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len()
        / 2;
    assert!(
        f32_bytes > LIMIT,
        "{f32_bytes} B in f32 must exceed the limit"
    );
    let out = tmp("big-stream.gguf");
    let _ = std::fs::remove_file(&out);
    let (ok, text) = run_child("stream", &dir, &out);
    eprintln!("{text}");
    assert!(ok, "streaming failed under the limit:\n{text}");
    assert!(text.contains("CHILD stream"), "{text}");
    let src = LlamaGgufSource::open(&out).unwrap();
    assert_eq!(src.hparams().num_hidden_layers, BIG_BLOCKS);
    let mem_out = tmp("big-memory.gguf");
    let (ok, text) = run_child("memory", &dir, &mem_out);
    assert!(
        !ok,
        "the in-memory pipeline fitted under the limit: the test proves nothing\n{text}"
    );
    assert!(!text.contains("CHILD memory: done"), "{text}");
    eprintln!(
        "in-memory under {} MiB: failed as expected ({})",
        LIMIT >> 20,
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    );
}
