//! The library on a tiny W4A4 classifier of synthetic data: it learns, deterministically;
//! calibration sets the static scales; bad configurations and empty data are typed errors.

use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use burn_quant_core::{QuantSpec, ScaleSource, ScaleStat};
use burn_quant_nn::{
    QuantAct, QuantActConfig, QuantLinear, QuantLinearConfig, QuantReLU, QuantReLUConfig,
};

use crate::*;

const CLASSES: usize = 3;
const FEATURES: usize = 4;

/// A point of one of three Gaussian-ish blobs.
#[derive(Clone, Debug)]
struct Point {
    x: [f32; FEATURES],
    class: i64,
}

#[derive(Clone, Debug)]
struct PointBatch {
    x: Tensor<2>,
    y: Tensor<1, Int>,
}

#[derive(Clone, Debug)]
struct PointBatcher;

impl Batcher<Point, PointBatch> for PointBatcher {
    fn batch(&self, items: Vec<Point>, device: &Device) -> PointBatch {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|p| p.x).collect();
        let y: Vec<i64> = items.iter().map(|p| p.class).collect();
        PointBatch {
            x: Tensor::from_data(TensorData::new(x, [n, FEATURES]), device),
            y: Tensor::from_data(TensorData::new(y, [n]), device),
        }
    }
}

/// `n` points, deterministic: class `i % 3`, centre ±1.5 on two features, uniform noise.
fn points(n: usize, seed: u64) -> Vec<Point> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    (0..n)
        .map(|i| {
            let class = (i % CLASSES) as i64;
            let mut x = [0.0; FEATURES];
            for (f, v) in x.iter_mut().enumerate() {
                let centre = match (class, f) {
                    (0, 0) | (1, 1) => 1.5,
                    (2, 0) | (2, 1) => -1.5,
                    _ => 0.0,
                };
                *v = centre + 1.2 * uniform();
            }
            Point { x, class }
        })
        .collect()
}

/// `QuantAct → QuantLinear 4→16 → QuantReLU → QuantLinear 16→3`, W4A4 (learned activation
/// scales).
#[derive(Module, Debug)]
struct Net {
    input: QuantAct,
    fc1: QuantLinear,
    relu: QuantReLU,
    fc2: QuantLinear,
}

fn lsq(spec: QuantSpec) -> QuantSpec {
    spec.with_bits(4)
        .with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax))
}

impl Net {
    fn new(device: &Device) -> Net {
        device.seed(3);
        // int4 weights with a per-call absmax scale; 4-bit activations with learned scales.
        let w4 = QuantSpec::int8_weight_per_channel().with_bits(4);
        Net {
            input: QuantActConfig::new(lsq(QuantSpec::int8_act_per_tensor()))
                .init(device)
                .expect("valid spec"),
            fc1: QuantLinearConfig::new(FEATURES, 16)
                .with_weight_quant(Some(w4))
                .init(device)
                .expect("valid spec"),
            relu: QuantReLUConfig::new(lsq(QuantSpec::uint8_act_per_tensor()))
                .init(device)
                .expect("valid spec"),
            fc2: QuantLinearConfig::new(16, CLASSES)
                .with_weight_quant(Some(w4))
                .init(device)
                .expect("valid spec"),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(self.relu.forward(self.fc1.forward(self.input.forward(x))))
    }

    fn output(&self, b: PointBatch) -> ClassificationOutput {
        let logits = self.forward(b.x);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), b.y.clone());
        ClassificationOutput::new(loss, logits, b.y)
    }
}

impl TrainStep for Net {
    type Input = PointBatch;
    type Output = ClassificationOutput;
    fn step(&self, b: PointBatch) -> TrainOutput<ClassificationOutput> {
        let out = self.output(b);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for Net {
    type Input = PointBatch;
    type Output = ClassificationOutput;
    fn step(&self, b: PointBatch) -> ClassificationOutput {
        self.output(b)
    }
}

fn batches(data: &[Point], size: usize) -> Vec<PointBatch> {
    data.chunks(size)
        .map(|c| PointBatcher.batch(c.to_vec(), &Device::flex()))
        .collect()
}

fn calibrated(train: &[Point]) -> Net {
    calibrate_model(Net::new(&Device::flex()), batches(train, 64), |m, b| {
        m.forward(b.x)
    })
    .expect("calibrates")
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("f32 tensor")
}

fn config() -> FitConfig {
    FitConfig::new(3)
        .with_batch_size(32)
        .with_learning_rate(5e-3)
        .with_seed(11)
}

#[test]
fn fit_learns_deterministically_and_reports_every_epoch() {
    let (train, valid) = (points(600, 1), points(150, 2));
    let model = calibrated(&train);
    let before =
        accuracy(&model, batches(&valid, 50), |m, b| (m.forward(b.x), b.y)).expect("evaluates");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let run = |model: Net, progress: bool| {
        let trainer = Trainer::new(config()).with_metrics((
            burn::train::metric::AccuracyMetric::new(),
            burn::train::metric::LossMetric::new(),
        ));
        let trainer = if progress {
            let sink = sink.clone();
            trainer.with_progress(move |p| sink.lock().expect("lock").push(p.clone()))
        } else {
            trainer
        };
        trainer
            .fit(
                model,
                PointBatcher,
                InMemDataset::new(train.clone()),
                InMemDataset::new(valid.clone()),
            )
            .expect("trains")
    };
    let (a, report) = run(model.clone(), true);
    let (b, report_b) = run(model, false);

    // It learned: the training loss fell and the validation accuracy is far above chance.
    assert_eq!(report.epochs.len(), 3);
    let loss = |e: usize| report.epochs[e].train_loss().expect("loss recorded");
    assert!(loss(2) < loss(0), "loss {} -> {}", loss(0), loss(2));
    let acc = evaluate(&a, batches(&valid, 50)).expect("evaluates");
    assert_eq!(acc.items, valid.len());
    assert!(
        acc.accuracy() > 0.85,
        "accuracy {} (before {before})",
        acc.accuracy()
    );
    // The Learner's last validation accuracy (in %) is the same pass.
    let learner = report.epochs[2]
        .valid_accuracy()
        .expect("accuracy recorded");
    assert!(
        (learner - 100.0 * acc.accuracy()).abs() < 1e-6,
        "{learner} vs {acc:?}"
    );
    assert!(acc.mean_loss.is_some_and(f64::is_finite));

    // Deterministic: the same seed, model and data give the same weights and metrics.
    assert_eq!(host(a.fc1.weight.val()), host(b.fc1.weight.val()));
    let scale = |m: &Net| host(m.relu.act_quant.scale.as_ref().expect("learned").val());
    assert_eq!(scale(&a), scale(&b));
    let metrics = |r: &FitReport| r.epochs.clone();
    assert_eq!(metrics(&report), metrics(&report_b));

    // The callback saw each batch and each epoch, in order, with the report's metrics.
    let events = events.lock().expect("lock");
    let epochs: Vec<&FitProgress> = events
        .iter()
        .filter(|e| matches!(e, FitProgress::Epoch { .. }))
        .collect();
    assert_eq!(epochs.len(), 3);
    match epochs[2] {
        FitProgress::Epoch {
            epoch,
            epochs,
            metrics,
        } => {
            assert_eq!((*epoch, *epochs), (3, 3));
            assert_eq!(metrics, &report.epochs[2]);
        }
        other => panic!("{other:?}"),
    }
    let last_train = events
        .iter()
        .rev()
        .filter_map(|e| match e {
            FitProgress::Items {
                epoch: 1,
                split: Split::Train,
                done,
                total,
                ..
            } => Some((*done, *total)),
            _ => None,
        })
        .next();
    assert_eq!(last_train, Some((train.len(), train.len())));
}

#[test]
fn calibration_sets_static_scales_and_needs_a_batch() {
    let device = Device::flex();
    let train = points(128, 5);
    let net = Net::new(&device);
    let x = batches(&train, 64).remove(0).x;
    assert!(
        net.input.act_quant.try_forward(x.clone()).is_err(),
        "uncalibrated scales refuse to run"
    );
    let net = calibrated(&train);
    for q in [&net.input.act_quant, &net.relu.act_quant] {
        let s = host(q.scale.as_ref().expect("stored scale").val());
        assert!(s.iter().all(|&v| v > 0.0 && v.is_finite()), "{s:?}");
    }
    // The input scale is the absmax of the data over the 4-bit grid's positive end.
    let absmax = train
        .iter()
        .flat_map(|p| p.x)
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let s = host(net.input.act_quant.scale.as_ref().expect("scale").val())[0];
    assert!(
        (s * 7.0 - absmax).abs() < 1e-3 * absmax.max(1.0),
        "{s} vs {absmax}"
    );
    assert_eq!(net.forward(x).dims(), [64, CLASSES]);

    let none: Vec<PointBatch> = Vec::new();
    assert!(matches!(
        calibrate_model(Net::new(&device), none, |m, b| m.forward(b.x)),
        Err(QatError::EmptyData { .. })
    ));
}

#[test]
fn bad_configs_and_empty_data_are_typed_errors() {
    let train = points(60, 7);
    let model = calibrated(&train);
    let go = |cfg: FitConfig, train: Vec<Point>, valid: Vec<Point>| {
        fit(
            model.clone(),
            PointBatcher,
            InMemDataset::new(train),
            InMemDataset::new(valid),
            &cfg,
        )
        .map(|_| ())
    };
    let field = |r: Result<()>| match r {
        Err(QatError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(
        field(go(FitConfig::new(0), train.clone(), train.clone())),
        "epochs"
    );
    assert_eq!(
        field(go(
            config().with_batch_size(0),
            train.clone(),
            train.clone()
        )),
        "batch_size"
    );
    assert_eq!(
        field(go(
            config().with_learning_rate(-1.0),
            train.clone(),
            train.clone()
        )),
        "learning_rate"
    );
    assert!(matches!(
        go(config(), Vec::new(), train.clone()),
        Err(QatError::EmptyData {
            what: "training data set"
        })
    ));
    assert!(matches!(
        go(config(), train.clone(), Vec::new()),
        Err(QatError::EmptyData {
            what: "validation data set"
        })
    ));
    let none: Vec<PointBatch> = Vec::new();
    assert!(matches!(
        accuracy(&model, none.clone(), |m, b| (m.forward(b.x), b.y)),
        Err(QatError::EmptyData { .. })
    ));
    assert!(matches!(
        evaluate(&model, none),
        Err(QatError::EmptyData { .. })
    ));
    // Logits and targets of different lengths.
    let b = batches(&train, 10).remove(0);
    assert!(matches!(
        accuracy(&model, [b], |m, b| (m.forward(b.x), b.y.slice(0..5))),
        Err(QatError::Shape(_))
    ));
}
