//! Exports a small quantized MLP as ONNX QDQ and as QONNX, prints what the files hold and the
//! commands that run them.
//!
//! ```text
//! cargo run --release --example onnx_export
//! ```
//!
//! The model is the quickstart's shape at a smaller size: `Linear(784 → 64)` with int8
//! per-channel weights and a static int8 input quantizer, `ReLU` with a uint8 output quantizer,
//! `Linear(64 → 10)` with int4 weights in groups of 32. Calibrated on random "images".

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::QuantSpec;
use burn_quant::export::onnx::{
    QdqModelBuilder, QonnxModelBuilder, read_onnx, save_onnx, summarize,
};
use burn_quant::nn::{QuantLinear, QuantLinearConfig, QuantReLU, QuantReLUConfig, calibrate};

#[derive(Module, Debug)]
struct Mlp {
    fc1: QuantLinear,
    relu: QuantReLU,
    fc2: QuantLinear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}

/// `[batch, 784]` pseudo-random pixels in [0, 1) (a fixed LCG, so runs are reproducible).
fn images(batch: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut s = seed;
    let v: Vec<f32> = (0..batch * 784)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [batch, 784]), device)
}

fn main() -> burn_quant::Result<()> {
    let device = Device::flex();
    let mlp = Mlp {
        fc1: QuantLinearConfig::new(784, 64)
            .with_input_quant(Some(QuantSpec::int8_act_per_tensor()))
            .init(&device)?,
        relu: QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor()).init(&device)?,
        fc2: QuantLinearConfig::new(64, 10)
            .with_weight_quant(Some(QuantSpec::int4_weight_per_group(32)))
            .init(&device)?,
    };
    // Static activation scales come from calibration batches.
    let (mlp, _) = calibrate(mlp, |m| {
        for seed in 0..4 {
            m.forward(images(16, seed, &device));
        }
    })?;

    let dir = std::env::temp_dir().join("burnq-onnx-example");
    std::fs::create_dir_all(&dir)?;
    let qdq_path = dir.join("mlp_qdq.onnx");
    let qonnx_path = dir.join("mlp_qonnx.onnx");

    let qdq = QdqModelBuilder::new("pixels", &[1, 784])
        .dynamic_batch("batch")
        .linear(&mlp.fc1)?
        .relu(&mlp.relu)?
        .linear(&mlp.fc2)?
        .output_name("logits")
        .build()?;
    save_onnx(&qdq_path, &qdq)?;
    let qonnx = QonnxModelBuilder::new("pixels", &[1, 784])
        .linear(&mlp.fc1)?
        .relu(&mlp.relu)?
        .linear(&mlp.fc2)?
        .output_name("logits")
        .build()?;
    save_onnx(&qonnx_path, &qonnx)?;

    for path in [&qdq_path, &qonnx_path] {
        println!("== {}", path.display());
        println!("{}", summarize(&read_onnx(path)?));
    }

    let logits = mlp.forward(images(1, 99, &device));
    println!(
        "our forward of one image (seed 99): {:?}\n",
        logits.into_data().to_string()
    );

    println!("Run the QDQ model with onnxruntime (graph optimisations off = exactly our graph):");
    println!(
        "  python3 -c \"import numpy as np, onnxruntime as ort; \
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL; \
s = ort.InferenceSession('{}', so); \
print(s.run(None, {{'pixels': np.random.rand(4, 784).astype(np.float32)}})[0])\"",
        qdq_path.display()
    );
    println!("Check it with onnx:");
    println!(
        "  python3 -c \"import onnx; onnx.checker.check_model(onnx.load('{}'), full_check=True); print('ok')\"",
        qdq_path.display()
    );
    println!("Run the QONNX model with qonnx's executor:");
    println!(
        "  python3 -c \"import numpy as np; from qonnx.core.modelwrapper import ModelWrapper; \
from qonnx.core.onnx_exec import execute_onnx; m = ModelWrapper('{}'); \
print(execute_onnx(m, {{'pixels': np.random.rand(1, 784).astype(np.float32)}})['logits'])\"",
        qonnx_path.display()
    );
    Ok(())
}
