//! Graph-mode QAT: the QAT CNN of `burnq qat`, written with `burn::nn` only, captured, given
//! W4A4 LSQ quantizers by `quantize_graph`, calibrated and fine-tuned through the interpreter
//! with autodiff, reaches the accuracy of the hand-written QAT model (our quantized layers)
//! trained on the same data from the same float weights.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use burn_quant_cli::mnist::Mnist;
use burn_quant_cli::qat::{
    FitConfig, ImageSet, QatCnn, QatConfig, Variant, accuracy, calibrate_model, conv_of, fit,
    image_split,
};
use burn_quant_cli::rng::SplitMix64;
use burn_quant::core::{QuantSpec, ScaleSource, ScaleStat};
use burn_quant_graph::{GraphModel, GraphRecipe, capture, quantize_graph};

/// The QAT CNN with `burn::nn` layers only: conv 1→8 3×3 → ReLU → conv 8→16 3×3 stride 2 →
/// ReLU → flatten → linear 2304→10.
#[derive(Module, Debug)]
struct PlainCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
}

impl PlainCnn {
    /// The float weights of a trained `QatCnn` (ids included).
    fn from_qat(m: &QatCnn) -> Self {
        let mut fc = LinearConfig::new(1, 1).init(&m.fc.weight.device());
        fc.weight = m.fc.weight.clone();
        fc.bias = m.fc.bias.clone();
        Self {
            conv1: conv_of(&m.conv1),
            conv2: conv_of(&m.conv2),
            fc,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = burn::tensor::activation::relu(self.conv1.forward(x));
        let x = burn::tensor::activation::relu(self.conv2.forward(x));
        let [n, c, h, w] = x.dims();
        self.fc.forward(x.reshape([n, c * h * w]))
    }
}

const BATCH: usize = 64;

fn lsq(spec: QuantSpec) -> QuantSpec {
    spec.with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax))
}

/// Fraction of `set` a graph model classifies correctly (batches of [`BATCH`], the last one
/// padded with its first image: the graph has static shapes).
fn graph_accuracy(model: &GraphModel<PlainCnn>, set: &ImageSet, device: &Device) -> f64 {
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut correct = 0;
    for chunk in idx.chunks(BATCH) {
        let mut padded = chunk.to_vec();
        padded.resize(BATCH, chunk[0]);
        let batch = set.batch(&padded, device);
        let logits: Tensor<2> = model.forward(batch.images).expect("runs");
        let pred: Vec<i64> = logits.argmax(1).reshape([BATCH]).try_into_vec_as::<i64>().unwrap();
        let labels: Vec<i64> = batch.targets.try_into_vec_as::<i64>().unwrap();
        correct += (0..chunk.len()).filter(|&i| pred[i] == labels[i]).count();
    }
    correct as f64 / set.len() as f64
}

#[test]
fn graph_mode_w4a4_lsq_qat_matches_the_hand_written_qat_model() {
    // `burnq qat`'s own configuration: 8000 training and 2000 test images.
    let config = QatConfig::default();
    let data = Mnist::embedded().expect("embedded MNIST");
    let split = image_split(&data, config.n_train, config.n_test, config.seed).unwrap();
    let device = Device::flex();

    // The float model both QAT runs start from.
    let float = QatCnn::init(Variant::Float, config.seed + 1, &device).unwrap();
    let fit_cfg = |epochs, lr| FitConfig {
        epochs,
        batch_size: BATCH,
        learning_rate: lr,
        seed: config.seed + 2,
        label: "float".into(),
    };
    let (float, _) = fit(float, &split, &fit_cfg(config.float_epochs, config.float_lr)).unwrap();
    let float_accuracy = accuracy(&float, &split.test, 500).unwrap();

    // Hand-written: our quantized layers (burn-train's Learner).
    let hand = QatCnn::quantized_from(&float, Variant::W4A4Lsq, &device).unwrap();
    let hand = calibrate_model(hand, &split.train, config.n_calib, 128).unwrap();
    let (hand, _) = fit(hand, &split, &fit_cfg(config.qat_epochs, config.qat_lr)).unwrap();
    let hand_accuracy = accuracy(&hand, &split.test, 500).unwrap();

    // Graph mode: the burn::nn model, captured and quantized with no change to its code.
    let plain = PlainCnn::from_qat(&float);
    let sample = split.train.batch(&(0..BATCH).collect::<Vec<_>>(), &device).images;
    let graph = capture(&plain, sample, |m: &PlainCnn, x| m.forward(x)).unwrap();
    let recipe = GraphRecipe::weights_and_inputs(
        lsq(QuantSpec::int8_weight_per_output_channel().with_bits(4)),
        lsq(QuantSpec::int8_act_per_tensor().with_bits(4)),
    );
    let calib: Vec<Tensor<4>> = (0..config.n_calib / BATCH)
        .map(|b| {
            let idx: Vec<usize> = (b * BATCH..(b + 1) * BATCH).collect();
            split.train.batch(&idx, &device).images
        })
        .collect();
    let qg = quantize_graph(&graph, &recipe, &device)
        .unwrap()
        .calibrate(&plain, calib)
        .unwrap();
    // Inputs of conv2 and fc follow ReLUs: unsigned 4-bit, as the hand-written QuantReLUs.
    let unsigned = qg
        .quantizers
        .quantizers
        .iter()
        .filter(|q| matches!(q.spec.format, burn_quant::core::Format::Int { signed: false, .. }))
        .count();
    assert_eq!(unsigned, 2);
    let ad = device.clone().autodiff();
    let mut model = qg.into_model(plain).train().fork(&ad);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut order: Vec<usize> = (0..split.train.len()).collect();
    let mut rng = SplitMix64::new(config.seed + 3);
    for _ in 0..config.qat_epochs {
        rng.shuffle(&mut order);
        for chunk in order.chunks_exact(BATCH) {
            let batch = split.train.batch(chunk, &ad);
            let logits: Tensor<2> = model.forward(batch.images).unwrap();
            let loss = loss_fn.forward(logits, batch.targets);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.qat_lr, model, grads);
        }
    }
    let model = model.valid();
    let graph_accuracy = graph_accuracy(&model, &split.test, &device);
    eprintln!(
        "float {float_accuracy:.4}, hand-written W4A4 LSQ {hand_accuracy:.4}, graph-mode W4A4 LSQ {graph_accuracy:.4}"
    );
    assert!(float_accuracy > 0.9, "float {float_accuracy}");
    // Within noise of each other: 2000 test images give a binomial standard error of ~0.4
    // points at 97%, for each run; the runs also differ in batch order (burn-train's loader
    // vs our loop). Two points is far outside what a broken quantizer, gradient or scale
    // would produce (4-bit without training drops several points, a broken gradient tens).
    assert!(
        (graph_accuracy - hand_accuracy).abs() < 0.02,
        "graph {graph_accuracy} vs hand-written {hand_accuracy}"
    );
}
