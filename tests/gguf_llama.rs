//! The shared SmolLM2-135M-Instruct GGUF (written by llama.cpp's converter and quantizer, Q4_1)
//! read back into Hugging Face tensors, re-exported with our llama exporter as Q8_0 and Q4_K_M,
//! and checked by readers nobody here wrote: gguf-py (`tests/py/gguf_llama_check.py`: keys and
//! types llama.cpp needs, tokenizer equal to tokenizer.json and to the converter's, tensor types
//! as llama-quantize's rules give, values close to the source) and llama.cpp itself (the same
//! bytes as llama-quantize's output for the same mix; `scripts/llama-cpp-check.sh`: loads,
//! tokenizes the same, per-token NLL equal to the llama-quantize file's, greedy chat
//! generation). The llama.cpp venv is built on first use, once per machine, into a cache outside
//! the clone (`support::llama_cpp_python`, `scripts/llama-cpp-venv.sh`: about 5 min on 2
//! cores); with `BURNQ_REQUIRE_DATA=1` (CI) a failed build fails the test instead of skipping.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use burn_quant::export::gguf::{GgufFile, GgufTokenizer, TokenizerOptions};
use burn_quant::llm::LlamaHParams;
use burn_quant::llm::gguf::{LlamaGgufConfig, LlamaGgufSource, LlamaMix, export_llama_gguf};

const SOURCE: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
const DIR: &str = "smollm2-135m-instruct";

/// The source GGUF opened once for all tests (98 MB), or `None` when the data is absent.
fn source() -> Option<&'static (LlamaGgufSource, PathBuf)> {
    static SRC: OnceLock<Option<(LlamaGgufSource, PathBuf)>> = OnceLock::new();
    SRC.get_or_init(|| {
        let path = support::shared_data(SOURCE)?;
        let src = LlamaGgufSource::open(&path).expect("the shared SmolLM2 GGUF opens");
        Some((src, path))
    })
    .as_ref()
}

/// Tokenizer from the Hugging Face files. Their `tokenizer.json` was re-derived from the GGUF by
/// transformers and lost SmolLM's digit-splitting pre-tokenizer step, so llama.cpp's name for
/// the family ("smollm") is passed explicitly.
fn hf_tokenizer(dir: &Path) -> GgufTokenizer {
    let opts = TokenizerOptions {
        pre: Some("smollm".into()),
        vocab_size: None,
    };
    GgufTokenizer::from_hf_dir(dir, &opts).expect("tokenizer.json converts")
}

/// Exports the shared model with `mix` (once per mix per process: tests run in parallel and
/// share the files) and returns the file.
fn export(mix: LlamaMix) -> Option<PathBuf> {
    static DONE: Mutex<Vec<(LlamaMix, PathBuf)>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = done.iter().find(|(m, _)| *m == mix) {
        return Some(p.clone());
    }
    let (src, src_path) = source()?;
    let dir = support::shared_data(DIR)?;
    let hp = LlamaHParams::from_hf_config_file(dir.join("config.json")).unwrap();
    let config = LlamaGgufConfig::new(hp, "SmolLM2 135M Instruct (burn-quant re-export)")
        .with_provenance("source", src_path.file_name().unwrap().to_string_lossy());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("smollm2-{mix}.gguf"));
    let start = std::time::Instant::now();
    let report =
        export_llama_gguf(&out, &config, &hf_tokenizer(&dir), src.tensors(), mix, None).unwrap();
    eprintln!(
        "exported {mix}: {} tensors, {:.1} MB, types {:?}, {:.1} s",
        report.tensors.len(),
        report.file_bytes as f64 / 1e6,
        report.type_counts(),
        start.elapsed().as_secs_f64()
    );
    done.push((mix, out.clone()));
    Some(out)
}

fn gguf_py_check(mix: LlamaMix) {
    let Some(out) = export(mix) else { return };
    let (_, src_path) = source().unwrap();
    let tj = support::shared_data(&format!("{DIR}/tokenizer.json")).unwrap();
    let mix_name = mix.to_string();
    let args = [
        out.as_os_str(),
        src_path.as_os_str(),
        tj.as_os_str(),
        OsStr::new(&mix_name),
    ];
    let Some(result) = support::run_python("gguf_llama_check.py", &args) else {
        return;
    };
    match result {
        Ok(stdout) => eprintln!("gguf_llama_check {mix}: {}", stdout.trim()),
        Err(e) => panic!("{e}"),
    }
}

/// The config.json and the GGUF's llama.* keys describe the same model; tokenizer.json (with
/// its side files) converts to exactly the tokenizer llama.cpp's converter wrote.
#[test]
fn hf_files_agree_with_the_converter_written_gguf() {
    let Some((src, _)) = source() else { return };
    let Some(dir) = support::shared_data(DIR) else {
        return;
    };
    let hp = LlamaHParams::from_hf_config_file(dir.join("config.json")).unwrap();
    assert_eq!(&hp, src.hparams());
    let ours = hf_tokenizer(&dir);
    let theirs = src.tokenizer();
    assert_eq!(ours.tokens.len(), 49152);
    assert_eq!(ours.merges.len(), 48900);
    assert_eq!(ours.tokens, theirs.tokens);
    assert_eq!(ours.token_types, theirs.token_types);
    assert_eq!(ours.merges, theirs.merges);
    assert_eq!(ours.special, theirs.special);
    assert_eq!(ours.add_bos, theirs.add_bos);
    assert_eq!(ours.chat_template, theirs.chat_template);
    assert_eq!(ours.pre, theirs.pre);
    // The derivation without the explicit name sees a plain ByteLevel pre-tokenizer.
    let derived = GgufTokenizer::from_hf_dir(&dir, &TokenizerOptions::default()).unwrap();
    assert_eq!(derived.pre.as_deref(), Some("gpt-2"));
}

#[test]
fn smollm2_q8_0_reexport_passes_gguf_py() {
    gguf_py_check(LlamaMix::Q8_0);
}

#[test]
fn smollm2_q4_k_m_reexport_passes_gguf_py() {
    gguf_py_check(LlamaMix::Q4_K_M);
}

/// Runs `tests/py/<script>` with the llama.cpp venv's Python (built on first use); `None` when
/// the venv cannot be built outside CI.
fn llama_cpp_python(script: &str, args: &[&OsStr]) -> Option<std::process::Output> {
    let python = support::llama_cpp_python()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Some(
        std::process::Command::new(python)
            .arg(root.join("tests/py").join(script))
            .args(args)
            .output()
            .expect("python runs"),
    )
}

/// Against llama.cpp itself (its venv is built on first use, once per machine): llama-quantize's
/// own output for the same source and mix has exactly our tensor names, dims, types and bytes
/// (so the mix rules, the q/k un-permute/permute round trip and the encoders all agree);
/// llama.cpp loads our file, tokenizes like it, scores a fixed passage within a small NLL gap of
/// it, and generates greedily from the chat template (text printed).
#[test]
fn llama_cpp_loads_and_generates_from_the_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mixes = [(LlamaMix::Q8_0, "0.0001"), (LlamaMix::Q4_K_M, "0.02")];
    for (mix, gap) in mixes {
        let Some(ours) = export(mix) else { return };
        let (_, src_path) = source().unwrap();
        let theirs =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("llama-quantize-{mix}.gguf"));
        let mix_name = mix.to_string();
        let args = [
            src_path.as_os_str(),
            theirs.as_os_str(),
            OsStr::new(&mix_name),
        ];
        let Some(q) = llama_cpp_python("gguf_llama_quantize.py", &args) else {
            return;
        };
        assert!(
            q.status.success(),
            "llama-quantize {mix}: {}",
            String::from_utf8_lossy(&q.stderr)
        );

        let a = GgufFile::read(&ours).unwrap();
        let b = GgufFile::read(&theirs).unwrap();
        let mut names: Vec<&str> = a.tensors.iter().map(|t| t.name.as_str()).collect();
        let mut their_names: Vec<&str> = b.tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        their_names.sort();
        assert_eq!(names, their_names);
        for t in &a.tensors {
            let u = b.tensor(&t.name).unwrap();
            assert_eq!((t.ty, &t.dims), (u.ty, &u.dims), "{}", t.name);
            assert!(
                a.tensor_bytes(t) == b.tensor_bytes(u),
                "{} ({:?}) differs from llama-quantize's bytes",
                t.name,
                t.ty
            );
        }
        eprintln!(
            "{mix} vs llama-quantize: {} tensors, same types and bytes",
            a.tensors.len()
        );

        let o = std::process::Command::new("bash")
            .arg(root.join("scripts/llama-cpp-check.sh"))
            .arg(&ours)
            .arg(&theirs)
            .args(["--max-nll-gap", gap])
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "llama-cpp-check {mix} failed:\n{stdout}\n{stderr}"
        );
        eprintln!("llama.cpp {mix}:\n{}", stdout.trim());
    }
}
