//! Quantizes a model written with `burn::nn` only (no change to its code) and exports it as
//! ONNX QDQ: capture → W8A8 quantizers → calibration → `.onnx`.
//!
//! ```text
//! cargo run --release --example graph_onnx_export
//! ```
//!
//! The model is a small CNN: conv → BatchNorm → ReLU stem, a residual block, max pooling,
//! global average pooling and a linear head. Graph mode folds the BatchNorms into the
//! convolutions, quantizes every weight to int8 per output channel and every layer input to
//! int8 per tensor (unsigned after ReLU), with one shared quantizer on the residual add, and
//! calibrates the activation scales on a few random batches.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};
use burn_quant::QuantSpec;
use burn_quant::export::onnx::{read_onnx, summarize};
use burn_quant::graph::onnx::OnnxExport;
use burn_quant::graph::{GraphRecipe, capture, quantize_graph};

/// A user's model: nothing here knows about quantization.
#[derive(Module, Debug)]
struct Cnn {
    stem: Conv2d,
    stem_bn: BatchNorm,
    block: Conv2d,
    block_bn: BatchNorm,
    pool: MaxPool2d,
    gap: AdaptiveAvgPool2d,
    head: Linear,
}

impl Cnn {
    fn new(device: &Device) -> Self {
        let conv = |c_in, c_out| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            stem: conv(1, 16),
            stem_bn: BatchNormConfig::new(16).init(device),
            block: conv(16, 16),
            block_bn: BatchNormConfig::new(16).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(16, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.stem_bn.forward(self.stem.forward(x)));
        let r = relu(self.block_bn.forward(self.block.forward(x.clone())));
        let x = self.gap.forward(self.pool.forward(x + r));
        let [n, c, _, _] = x.dims();
        self.head.forward(x.reshape([n, c]))
    }
}

fn main() -> burn_quant::Result<()> {
    let device = Device::flex();
    let model = Cnn::new(&device);
    let images = |_| Tensor::<4>::random([8, 1, 28, 28], Distribution::Uniform(0.0, 1.0), &device);

    // 1. Capture one forward at the export's input shape (a graph is a trace: static shapes).
    let graph = capture(&model, images(0), |m: &Cnn, x| m.forward(x))?;
    println!("captured: {:?}", graph.op_histogram());

    // 2. W8A8: int8 weights per output channel, int8 layer inputs per tensor, calibrated.
    let recipe = GraphRecipe::weights_and_inputs(
        QuantSpec::int8_weight_per_output_channel(),
        QuantSpec::int8_act_per_tensor(),
    );
    let qg = quantize_graph(&graph, &recipe, &device)?.calibrate(&model, (1..5).map(images))?;
    println!(
        "quantized: {} quantizers, {:?}",
        qg.quantizers.quantizers.len(),
        qg.graph.op_histogram()
    );

    // 3. Export: weights as int8 codes + DequantizeLinear, activations as
    //    QuantizeLinear → DequantizeLinear with the calibrated scales.
    let dir = std::env::temp_dir().join("burnq-graph-onnx-example");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cnn_w8a8_qdq.onnx");
    OnnxExport::quantized(&qg)
        .bind(&model)
        .input_names(&["images"])
        .output_names(&["logits"])
        .qdq()?
        .save(&path)?;
    let bytes = std::fs::metadata(&path)?.len();
    println!("wrote {} ({bytes} bytes)", path.display());
    println!("{}", summarize(&read_onnx(&path)?));
    println!("Check and run it:");
    println!(
        "  python -c \"import onnx, onnxruntime as ort, numpy as np; m = '{}'; onnx.checker.check_model(onnx.load(m), full_check=True); print(ort.InferenceSession(m).run(None, {{'images': np.random.rand(8, 1, 28, 28).astype(np.float32)}})[0].shape)\"",
        path.display()
    );
    Ok(())
}
