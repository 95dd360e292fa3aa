//! The BERT ONNX fixture: tests/py/make_bert_onnx.py writes all-MiniLM-L6-v2
//! (../shared/data/all-minilm-l6-v2) as `torch.onnx.export` of a Hugging Face `BertModel` lays
//! it out (opset 14, unfused attention, decomposed LayerNorm and GELU, dynamic batch and
//! sequence), checks it against the numpy BERT of tests/py/bert_reference.py through
//! onnxruntime with graph optimizations disabled (max |Δ| ≤ 1e-4 on every unpadded token, or
//! the script fails), and writes the padded batch it ran with onnxruntime's output beside the
//! model, so an importer test can compare against onnxruntime without running Python again.
//!
//! Skips when the model or the Python verifier venv is absent; `BURNQ_REQUIRE_DATA=1` makes
//! either a failure.

use std::ffi::OsStr;

#[test]
fn make_bert_onnx_writes_a_checked_export_and_its_io() {
    let Some(weights) = support::shared_data("all-minilm-l6-v2/model.safetensors") else {
        return;
    };
    let model_dir = weights.parent().expect("a file in a directory");
    let dir = std::env::temp_dir().join(format!("burnq-bert-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let onnx = dir.join("bert.onnx");
    let result = support::run_python(
        "make_bert_onnx.py",
        &[
            model_dir.as_os_str(),
            onnx.as_os_str(),
            OsStr::new("--opset"),
            OsStr::new("14"),
            OsStr::new("--write-io"),
        ],
    );
    let Some(result) = result else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let stdout = match result {
        Ok(stdout) => stdout,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("{e}");
        }
    };
    eprintln!("{stdout}");
    let sizes: Vec<(&str, u64)> = [
        "bert.onnx",
        "input_ids.npy",
        "attention_mask.npy",
        "token_type_ids.npy",
        "last_hidden_state.npy",
    ]
    .into_iter()
    .map(|f| (f, std::fs::metadata(dir.join(f)).map_or(0, |m| m.len())))
    .collect();
    let _ = std::fs::remove_dir_all(&dir);
    for (f, len) in &sizes {
        assert!(*len > 0, "{f} missing or empty");
    }
    // 22.7 M float32 parameters.
    assert!(
        sizes[0].1 > 80 << 20,
        "bert.onnx is only {} bytes",
        sizes[0].1
    );
    assert!(
        stdout.contains("vs numpy f64: max |Δ|"),
        "the self-check did not run:\n{stdout}"
    );
}
