//! The Python calibration tools through the verifier venv: `render_text.py` pages and text
//! lines load with `dataset::load_dir` (the PNGs through the PP-OCR presets reproduce the
//! script's own NumPy/Pillow preprocessing bit for bit), and `make_qdq_fixtures.py` /
//! `ort_quantize.py` build onnxruntime-quantized models that pass onnx's full checker (the
//! scripts check and fail loudly) with inputs and outputs our `.npy` reader loads.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use burn_quant_graph::dataset::{Preprocess, load_dir, read_npy, stack_batches};
use serde_json::Value;

/// A fresh, empty directory under `target/` (kept on failure for inspection).
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-scratch")
        .join(format!("calibration-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs a `tests/py` script; `None` when the venv is unavailable (the helper printed why).
fn python(script: &str, args: &[&OsStr]) -> Option<Value> {
    let out = support::run_python(script, args)?;
    let stdout = out.unwrap_or_else(|e| panic!("{e}"));
    Some(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{script}: {e}\n{stdout}")))
}

fn render(dir: &Path, kind: &str, count: usize, seed: u64) -> Option<Value> {
    let (count, seed) = (count.to_string(), seed.to_string());
    let args: Vec<OsString> = vec![
        dir.into(),
        "--kind".into(),
        kind.into(),
        "--count".into(),
        count.into(),
        "--seed".into(),
        seed.into(),
    ];
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    python("render_text.py", &args)
}

fn f32s(d: &TensorData) -> &[f32] {
    d.as_slice::<f32>().expect("f32")
}

fn stem(p: &Path) -> String {
    p.file_stem().expect("stem").to_string_lossy().into_owned()
}

#[test]
fn rendered_text_loads_and_matches_the_presets() {
    let cases = [
        ("det", 6, Preprocess::ppocr_det(), [1, 3, 224, 320]),
        ("cls", 8, Preprocess::ppocr_cls(), [1, 3, 48, 192]),
    ];
    for (kind, count, preset, shape) in cases {
        let dir = scratch(kind);
        let Some(summary) = render(&dir, kind, count, 11) else {
            return;
        };
        let base = |v: &Value| {
            let p = v.as_str().unwrap_or("?");
            p.rsplit('/').next().unwrap_or(p).to_string()
        };
        let used: Vec<String> = summary["fonts_used"]
            .as_array()
            .map_or(vec![], |a| a.iter().map(base).collect());
        eprintln!(
            "{kind}: {} fonts found, {} used: {} (default-font fallback: {})",
            summary["fonts_found"].as_array().map_or(0, Vec::len),
            used.len(),
            used.join(", "),
            summary["default_font_fallback"]
        );
        let npys = load_dir(dir.join("npy"), None).expect("npy dir");
        assert_eq!(npys.len(), count);
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for (path, t) in &npys {
            assert_eq!(t.dtype(), DType::F32, "{}", path.display());
            assert_eq!(t.shape().as_slice(), &shape, "{}", path.display());
            let (a, b) = f32s(t)
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            assert!(
                (-1.0..=1.0).contains(&a) && (-1.0..=1.0).contains(&b),
                "{a}..{b}"
            );
            // Dark ink (≤ 70/255) and light paper (≥ ~200/255) are both there.
            assert!(a < -0.4 && b > 0.5, "{}: range {a}..{b}", path.display());
            lo = lo.min(a);
            hi = hi.max(b);
        }
        eprintln!("{kind}: values in [{lo}, {hi}]");
        // The PNGs through the Rust preset equal the script's NumPy/Pillow tensors exactly
        // (achromatic images, so RapidOCR's BGR order changes nothing).
        let pngs = load_dir(dir.join("png"), Some(&preset)).expect("png dir");
        assert_eq!(pngs.len(), count);
        for ((pp, a), (np, b)) in pngs.iter().zip(&npys) {
            assert_eq!(stem(pp), stem(np));
            assert_eq!(a.shape(), b.shape());
            let differ = f32s(a)
                .iter()
                .zip(f32s(b))
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            assert_eq!(differ, 0, "{}: {differ} elements differ", pp.display());
        }
        if kind == "cls" {
            let labels: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("labels.json")).expect("labels.json"),
            )
            .expect("labels json");
            let labels = labels.as_object().expect("object");
            assert_eq!(labels.len(), count);
            for (p, _) in &npys {
                assert!(labels.contains_key(&stem(p)), "{}", p.display());
            }
            let rotated = labels.values().filter(|v| v.as_u64() == Some(180)).count();
            let upright = labels.values().filter(|v| v.as_u64() == Some(0)).count();
            assert_eq!((rotated, upright), (count / 2, count - count / 2));
        }
        // Batches of 4 for calibration.
        let samples: Vec<TensorData> = npys.into_iter().map(|(_, t)| t).collect();
        let batches = stack_batches(&samples, 4).expect("batches");
        assert_eq!(batches[0].shape().as_slice()[0], 4);
        // Deterministic for a seed, different for another.
        let again = scratch(&format!("{kind}-again"));
        render(&again, kind, count, 11).expect("venv");
        let other = scratch(&format!("{kind}-other"));
        render(&other, kind, count, 12).expect("venv");
        let name = format!("{kind}_0000.npy");
        let bytes = |d: &Path| std::fs::read(d.join("npy").join(&name)).expect("npy bytes");
        assert_eq!(bytes(&dir), bytes(&again), "same seed, same tensors");
        assert_ne!(bytes(&dir), bytes(&other), "another seed, other tensors");
        for d in [dir, again, other] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn qdq_fixtures_and_ort_quantize_cli() {
    let dir = scratch("fixtures");
    let Some(report) = python("make_qdq_fixtures.py", &[dir.as_os_str()]) else {
        return;
    };
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let models = manifest["models"].as_object().expect("models");
    let expected = [
        "cnn_f32",
        "cnn_qdq_s8s8_channel",
        "cnn_qdq_u8s8_tensor",
        "mlp_f32",
        "mlp_int4_b32_sym",
        "mlp_qdq_s8s8_channel",
        "mlp_qdq_u8s8_tensor",
        "mlp_uint4_b32_asym",
    ];
    let mut names: Vec<&str> = models.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, expected);
    let input_shape = |family: &str| -> Vec<usize> {
        match family {
            "cnn" => vec![2, 3, 16, 16],
            _ => vec![2, 48],
        }
    };
    for (name, m) in models {
        let family = m["family"].as_str().expect("family");
        assert!(
            dir.join(m["file"].as_str().expect("file")).is_file(),
            "{name}"
        );
        if m["float"] == Value::Bool(false) {
            let q = &m["quantization"];
            assert!(q["nodes_quantized_total"].as_u64() > Some(0), "{name}: {q}");
            assert!(q["dequantize_linear"].as_u64() > Some(0), "{name}");
        }
        if name.contains("int4") {
            assert_eq!(m["opset"]["ai.onnx"], 21, "{name}");
        }
        let inputs = manifest["inputs"][family].as_array().expect("inputs");
        let outputs = m["outputs"].as_array().expect("outputs");
        assert_eq!(inputs.len(), 3);
        assert_eq!(outputs.len(), inputs.len());
        for (x, y) in inputs.iter().zip(outputs) {
            let x = read_npy(dir.join(x.as_str().expect("path"))).expect("input npy");
            assert_eq!(x.shape().as_slice(), input_shape(family).as_slice());
            let y = read_npy(dir.join(y.as_str().expect("path"))).expect("output npy");
            let classes = if family == "cnn" { 10 } else { 16 };
            assert_eq!(y.shape().as_slice(), &[2, classes], "{name}");
            assert!(f32s(&y).iter().all(|v| v.is_finite()));
        }
    }
    eprintln!("fixtures: {report}");
    for family in ["cnn", "mlp"] {
        let calib = load_dir(dir.join("calib").join(family), None).expect("calib");
        assert_eq!(calib.len(), 16);
        assert_eq!(calib[0].1.shape().as_slice()[0], 1);
    }

    // The CLI: static QDQ with entropy calibration on the conv ops only, and int4 MatMul.
    let (cnn, out) = (dir.join("cnn_f32.onnx"), dir.join("cli_cnn.onnx"));
    let calib = dir.join("calib/cnn");
    let args = [
        cnn.as_os_str(),
        out.as_os_str(),
        OsStr::new("--calib"),
        calib.as_os_str(),
        OsStr::new("--per-channel"),
        OsStr::new("--calibrate-method"),
        OsStr::new("entropy"),
        OsStr::new("--op-types"),
        OsStr::new("Conv"),
    ];
    let summary = python("ort_quantize.py", &args).expect("venv");
    // Both convolutions (and the Relu between them, wrapped in QDQ), not the Gemm.
    assert_eq!(summary["nodes_quantized"]["Conv"], 2, "{summary}");
    assert!(
        summary["nodes_quantized"].get("Gemm").is_none(),
        "{summary}"
    );
    assert_eq!(summary["options"]["calibrate_method"], "entropy");
    let out = dir.join("cli_mlp_int4.onnx");
    let mlp = dir.join("mlp_f32.onnx");
    let args = [
        mlp.as_os_str(),
        out.as_os_str(),
        OsStr::new("--matmul-int4"),
        OsStr::new("16"),
        OsStr::new("--symmetric"),
    ];
    let summary = python("ort_quantize.py", &args).expect("venv");
    assert_eq!(
        summary["nodes_quantized"],
        serde_json::json!({"MatMul": 2}),
        "{summary}"
    );
    assert_eq!(summary["opset"]["ai.onnx"], 21);
    let _ = std::fs::remove_dir_all(&dir);
}
