//! The book's "your own model" path (book/src/your-model.md) on real data: a model written with
//! `burn::nn` only, trained on the embedded MNIST digits, then
//! 1. int4 weight PTQ with a plan (`quantize_model`): accuracy within a point of float, and the
//!    model's weights are exactly the dequantized codes;
//! 2. W4A4 QAT through graph mode: after calibration alone (PTQ) and after fine-tuning, and
//!    QAT is at least as accurate as PTQ;
//! 3. ONNX QDQ export of the QAT model: onnxruntime's logits give the same class as our
//!    interpreter on every test image (skipped with a notice without the verifier venv).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_quant::graph::GraphModel;
use burn_quant::prelude::*;
use burn_quant_cli::mnist::{Mnist, PIXEL_MEAN, PIXEL_STD};

/// The user's model: conv 1→8 3×3 stride 2 → ReLU → linear 8·13·13 → 10.
#[derive(Module, Debug)]
struct Net {
    conv: Conv2d,
    act: Relu,
    fc: Linear,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([1, 8], [3, 3])
                .with_stride([2, 2])
                .init(device),
            act: Relu::new(),
            fc: LinearConfig::new(8 * 13 * 13, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let h = self.act.forward(self.conv.forward(x));
        self.fc.forward(h.flatten(1, 3))
    }
}

const BATCH: usize = 50;
const N_TRAIN: usize = 4000;
const N_TEST: usize = 1000;

/// Images `[n, 1, 28, 28]` standardised as `burnq qat` does, and labels.
struct Split {
    images: Vec<f32>,
    labels: Vec<i64>,
}

impl Split {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn batch(&self, start: usize, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let px = 28 * 28;
        let images = self.images[start * px..(start + BATCH) * px].to_vec();
        let x = Tensor::<4>::from_data(TensorData::new(images, [BATCH, 1, 28, 28]), device);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(self.labels[start..start + BATCH].to_vec(), [BATCH]),
            device,
        );
        (x, y)
    }
}

/// The images at positions `range` of a fixed permutation of the set (the embedded digits are
/// stored in runs of one class, so consecutive batches would each hold one digit).
fn split(data: &Mnist, range: std::ops::Range<usize>) -> Split {
    let px = data.rows * data.cols;
    // 7919 is prime and does not divide the set size: i ↦ 7919·i mod n is a permutation.
    let n = data.len();
    assert_ne!(n % 7919, 0);
    let order: Vec<usize> = range.map(|i| (i * 7919) % n).collect();
    Split {
        images: order
            .iter()
            .flat_map(|&i| &data.images[i * px..(i + 1) * px])
            .map(|&p| (p as f32 / 255.0 - PIXEL_MEAN) / PIXEL_STD)
            .collect(),
        labels: order.iter().map(|&i| data.labels[i] as i64).collect(),
    }
}

fn classes(logits: Tensor<2>) -> Vec<i64> {
    logits
        .argmax(1)
        .flatten::<1>(0, 1)
        .into_data()
        .try_into_vec_as::<i64>()
        .unwrap()
}

fn accuracy(set: &Split, device: &Device, forward: impl Fn(Tensor<4>) -> Tensor<2>) -> f64 {
    let mut correct = 0;
    for start in (0..set.len()).step_by(BATCH) {
        let (x, _) = set.batch(start, device);
        let pred = classes(forward(x));
        correct += (0..BATCH)
            .filter(|&i| pred[i] == set.labels[start + i])
            .count();
    }
    correct as f64 / set.len() as f64
}

fn graph_accuracy(model: &GraphModel<Net>, set: &Split, device: &Device) -> f64 {
    accuracy(set, device, |x| model.forward(x).expect("the graph runs"))
}

#[test]
fn int4_ptq_w4a4_qat_and_onnx_export_of_a_burn_nn_model() {
    let data = Mnist::embedded().expect("embedded MNIST");
    let (train, test) = (
        split(&data, 0..N_TRAIN),
        split(&data, N_TRAIN..N_TRAIN + N_TEST),
    );
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);

    // The user's float training.
    let mut model = Net::new(&ad);
    let mut optim = AdamConfig::new().init();
    for _epoch in 0..2 {
        for start in (0..train.len()).step_by(BATCH) {
            let (x, y) = train.batch(start, &ad);
            let loss = loss_fn.forward(model.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(2e-3, model, grads);
        }
    }
    let float = model.valid();
    let float_acc = accuracy(&test, &device, |x| float.forward(x));
    assert!(float_acc > 0.9, "float accuracy {float_acc}");

    // 1. int4 weight PTQ.
    let plan = QuantPlan::new()
        .rule("conv.weight", QuantSpec::int8_weight_per_output_channel().with_bits(4))
        .rule("**.weight", QuantSpec::int4_weight_per_input_group(32));
    let QuantizedModel {
        model: int4,
        weights,
    } = quantize_model(float.clone(), &plan).unwrap();
    assert_eq!(weights.len(), 2);
    let fc = weights.iter().find(|w| w.path == "fc.weight").unwrap();
    let fc_values: Vec<f32> = int4.fc.weight.val().into_data().try_into_vec_as::<f32>().unwrap();
    assert_eq!(fc.tensor.dequantize_vec(), fc_values);
    assert!(fc.tensor.codes_vec().iter().all(|c| (-7..=7).contains(c)));
    let int4_acc = accuracy(&test, &device, |x| int4.forward(x));
    println!("float {float_acc:.4}  int4 weights (RTN) {int4_acc:.4}");
    assert!(int4_acc > float_acc - 0.01, "int4 {int4_acc} vs float {float_acc}");

    // 2. W4A4 through graph mode: calibrated (PTQ), then fine-tuned (QAT).
    let lsq = |s: QuantSpec| s.with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax));
    let recipe = GraphRecipe::weights_and_inputs(
        lsq(QuantSpec::int8_weight_per_output_channel().with_bits(4)),
        lsq(QuantSpec::int8_act_per_tensor().with_bits(4)),
    );
    let sample = train.batch(0, &device).0;
    let graph = capture(&float, sample, |m: &Net, x| m.forward(x)).unwrap();
    let calib = (0..8).map(|b| train.batch(b * BATCH, &device).0);
    let qg = quantize_graph(&graph, &recipe, &device)
        .unwrap()
        .calibrate(&float, calib)
        .unwrap();
    let ptq = qg.into_model(float.clone());
    let ptq_acc = graph_accuracy(&ptq, &test, &device);

    let mut qat = ptq.clone().train().fork(&ad);
    let mut optim = AdamConfig::new().init();
    for start in (0..train.len()).step_by(BATCH) {
        let (x, y) = train.batch(start, &ad);
        let logits: Tensor<2> = qat.forward(x).unwrap();
        let loss = loss_fn.forward(logits, y);
        let grads = GradientsParams::from_grads(loss.backward(), &qat);
        qat = optim.step(5e-4, qat, grads);
    }
    let qat = qat.valid();
    let qat_acc = graph_accuracy(&qat, &test, &device);
    println!("W4A4: calibrated only {ptq_acc:.4}  after one QAT epoch {qat_acc:.4}");
    assert!(qat_acc >= ptq_acc, "QAT {qat_acc} below PTQ {ptq_acc}");
    assert!(qat_acc > float_acc - 0.02, "QAT {qat_acc} vs float {float_acc}");

    // 3. ONNX QDQ export; onnxruntime agrees with the interpreter.
    let (trained, qg) = qat.clone().into_parts();
    let dir = std::env::temp_dir().join(format!("burnq-your-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w4a4.onnx");
    qg.save_onnx(&path, &trained).unwrap();
    let (x, _) = test.batch(0, &device);
    let ours = classes(qat.forward(x.clone()).unwrap());
    let Some(theirs) = support::onnxruntime_output(&path, &x.into_data(), &dir) else {
        println!("notice: onnxruntime check skipped (no verifier venv)");
        return;
    };
    let theirs = classes(Tensor::<2>::from_data(
        TensorData::new(theirs, [BATCH, 10]),
        &device,
    ));
    assert_eq!(ours, theirs, "onnxruntime's classes differ from the interpreter's");
}
