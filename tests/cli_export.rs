//! `burnq export` / `burnq inspect` on the shared SmolLM2: the CLI re-exports the Q4_1 GGUF
//! as Q8_0, and what it reports is what the file holds.

use burn_quant::export::gguf::{GgmlType, GgufFile};
use burn_quant_cli::cli::{ExportArgs, run_export};

#[test]
fn export_llm_gguf_and_inspect_it() {
    let Some(model) = support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("burnq-cli-llm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("smollm2-q8_0.gguf");
    let args = ExportArgs {
        model: model.display().to_string(),
        format: "gguf:Q8_0".parse().unwrap(),
        out: out.clone(),
        weights: "int8".into(),
        imatrix: None,
        seed: 0,
    };
    let report = run_export(&args).unwrap();
    assert!(report.contains("F32: 61 tensors"), "{report}");
    assert!(report.contains("Q8_0: 211 tensors"), "{report}");
    let file = GgufFile::read(&out).unwrap();
    assert_eq!(file.tensors.len(), 272);
    let q8 = file
        .tensors
        .iter()
        .filter(|t| t.ty == GgmlType::Q8_0)
        .count();
    assert_eq!(q8, 211);
    let text = burn_quant_cli::inspect::inspect(&out).unwrap();
    assert!(text.contains("general.architecture = \"llama\""), "{text}");
    assert!(text.contains("burnq.mix = \"Q8_0\""), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}
