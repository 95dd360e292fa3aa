//! QAT with burn-train's multi-device strategy: a custom rounding rule named in the spec and the
//! model-wide quantization switch reach every quantizer on every worker.
//!
//! # What Burn 0.22 allows on this machine
//!
//! The only CPU backend usable here is flex, and flex has exactly one device: `FlexDevice` is a
//! unit struct ("there's only one CPU device", burn-flex 0.22.1 `backend.rs`), so
//! `Device::flex()` cannot name a second CPU device. burn-train's
//! `ExecutionStrategy::MultiDevice(devices, optim)` does not require the devices to differ: it
//! splits the training data loader over the list and starts **one worker thread per entry**
//! (`MultiDevicesTrainStep`), each of which forks the model onto its device
//! (`model.fork(&device)`) and runs `TrainStep::step` there. So this test passes
//! `Device::flex().autodiff()` twice: two workers, two threads, one physical device — which
//! exercises what the issue is about (settings reaching a forked model on another thread),
//! though not two distinct memory spaces. On a machine with two GPUs the same code runs with
//! `Device::cuda(0)`, `Device::cuda(1)`. DDP (`ExecutionStrategy::ddp`) likewise starts one
//! worker thread per device that forks the model onto it (burn-train `ddp/worker.rs`), so the
//! settings reach its workers the same way; it also starts a collective-communication server
//! over the devices (`DistributedContext::init`), which was not tried with one flex device
//! listed twice, and is not run here.
//!
//! The custom rule counts its calls per thread, and every training step records the thread it
//! ran on, so the test shows that the rule ran on every worker thread, that
//! `set_quantization(model, false)` turned every quantizer off there (our layers' quantizers
//! and a weight quantizer attached to a plain `burn::nn::Linear` by reparameterization), and
//! that a thread-local `without_quantization` scope around the run does not reach the workers
//! (why the model-wide switch exists).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::ThreadId;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::{Module, Param};
use burn::nn::loss::{MseLoss, Reduction};
use burn::nn::{Linear, LinearConfig};
use burn::optim::AdamConfig;
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::logger::InMemoryMetricLogger;
use burn::train::metric::LossMetric;
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim, RegressionOutput,
    SupervisedTraining, TrainOutput, TrainStep,
};
use burn_quant::core::{QuantSpec, RoundingFn, ScaleSource, ScaleStat, register_rounding};
use burn_quant::nn::plan::QuantPlan;
use burn_quant::nn::reparam::attach_weight_quantizers;
use burn_quant::nn::{
    QuantLinear, QuantLinearConfig, QuantMode, quant_modes, set_quantization, without_quantization,
};

/// Nearest-even rounding with the straight-through gradient that counts its calls per thread.
#[derive(Debug, Default)]
struct CountingRule {
    forward: Mutex<HashMap<ThreadId, usize>>,
    surrogate: Mutex<HashMap<ThreadId, usize>>,
}

impl CountingRule {
    fn bump(map: &Mutex<HashMap<ThreadId, usize>>) {
        let id = std::thread::current().id();
        *map.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default() += 1;
    }

    fn forward_calls(&self) -> HashMap<ThreadId, usize> {
        self.forward
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn surrogate_calls(&self) -> HashMap<ThreadId, usize> {
        self.surrogate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl RoundingFn for CountingRule {
    fn name(&self) -> &str {
        "counting"
    }
    fn forward(&self, x: Tensor<1>) -> Tensor<1> {
        Self::bump(&self.forward);
        x.round()
    }
    fn surrogate_grad(&self, x: Tensor<1>) -> Tensor<1> {
        Self::bump(&self.surrogate);
        x.ones_like()
    }
}

/// What each training step saw: its thread and the model-wide mode of every quantizer.
static STEPS: Mutex<Vec<(ThreadId, Vec<QuantMode>)>> = Mutex::new(Vec::new());

/// A small regression net: a plain Burn `Linear` (weight quantizer attached by a plan) and
/// one of our `QuantLinear`s (weight and input quantizers).
#[derive(Module, Debug)]
struct Net {
    fc1: Linear,
    fc2: QuantLinear,
}

impl Net {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(burn::tensor::activation::relu(self.fc1.forward(x)))
    }

    fn regression(&self, batch: Batch) -> RegressionOutput {
        let output = self.forward(batch.inputs);
        let loss = MseLoss::new().forward(output.clone(), batch.targets.clone(), Reduction::Mean);
        RegressionOutput::new(loss, output, batch.targets)
    }
}

impl TrainStep for Net {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> TrainOutput<RegressionOutput> {
        STEPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((std::thread::current().id(), quant_modes(self)));
        let item = self.regression(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for Net {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> RegressionOutput {
        self.regression(batch)
    }
}

#[derive(Clone, Debug)]
struct Item {
    x: [f32; 8],
    y: [f32; 2],
}

#[derive(Clone, Debug)]
struct Batch {
    inputs: Tensor<2>,
    targets: Tensor<2>,
}

struct ItemBatcher;

impl Batcher<Item, Batch> for ItemBatcher {
    fn batch(&self, items: Vec<Item>, device: &Device) -> Batch {
        let n = items.len();
        let xs: Vec<f32> = items.iter().flat_map(|i| i.x).collect();
        let ys: Vec<f32> = items.iter().flat_map(|i| i.y).collect();
        Batch {
            inputs: Tensor::from_data(TensorData::new(xs, [n, 8]), device),
            targets: Tensor::from_data(TensorData::new(ys, [n, 2]), device),
        }
    }
}

/// Deterministic items: y = a fixed linear function of x.
fn items(n: usize, offset: usize) -> Vec<Item> {
    (0..n)
        .map(|k| {
            let i = k + offset;
            let x: [f32; 8] = std::array::from_fn(|j| (((i * 7 + j * 13) % 17) as f32 - 8.0) / 8.0);
            let y = [
                x.iter().step_by(2).sum::<f32>() * 0.5,
                x[1] - x[3] + 0.25 * x[5],
            ];
            Item { x, y }
        })
        .collect()
}

fn net(weight: QuantSpec, act: QuantSpec, device: &Device) -> Net {
    let mut fc1 = LinearConfig::new(8, 16).init(device);
    // Deterministic weights (no dependence on the backend's random state).
    let w: Vec<f32> = (0..8 * 16)
        .map(|i| (((i * 37) % 29) as f32 - 14.0) / 40.0)
        .collect();
    fc1.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [8, 16]), device));
    let fc2 = QuantLinearConfig::new(16, 2)
        .with_weight_quant(Some(weight))
        .with_input_quant(Some(act))
        .init(device)
        .expect("valid quant layer");
    let plan = QuantPlan::new().rule("fc1.weight", weight);
    attach_weight_quantizers(Net { fc1, fc2 }, &plan).expect("the plan matches fc1.weight")
}

/// One epoch of burn-train with the multi-device strategy on `devices`; returns the trained
/// model and the steps it ran (thread, quantizer modes).
fn fit(model: Net, devices: Vec<Device>) -> (Net, Vec<(ThreadId, Vec<QuantMode>)>) {
    STEPS.lock().unwrap_or_else(PoisonError::into_inner).clear();
    let train = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(8)
        .build(InMemDataset::new(items(64, 0)));
    let valid = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(16)
        .build(InMemDataset::new(items(16, 1000)));
    let dir = std::env::temp_dir().join(format!("burnq-qat-multi-device-{}", std::process::id()));
    let learner = Learner::new(model.train(), AdamConfig::new().init(), 1e-3);
    let result = SupervisedTraining::new(&dir, train, valid)
        .metrics((LossMetric::new(),))
        .num_epochs(1)
        .with_training_strategy(
            ExecutionStrategy::MultiDevice(devices, MultiDeviceOptim::OptimMainDevice).into(),
        )
        .with_application_logger(None)
        .with_metric_logger(InMemoryMetricLogger::new())
        .launch(learner);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        result.error.is_none(),
        "training failed: {:?}",
        result.error
    );
    let steps = std::mem::take(&mut *STEPS.lock().unwrap_or_else(PoisonError::into_inner));
    (result.model, steps)
}

fn bits(t: Tensor<2>) -> Vec<u32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn minus(
    after: &HashMap<ThreadId, usize>,
    before: &HashMap<ThreadId, usize>,
    t: &ThreadId,
) -> usize {
    after.get(t).copied().unwrap_or(0) - before.get(t).copied().unwrap_or(0)
}

#[test]
fn a_named_rule_and_the_model_wide_switch_reach_every_multi_device_worker() {
    let rule = Arc::new(CountingRule::default());
    let counting = register_rounding("qat_multi_device_counting", rule.clone()).unwrap();
    let weight = QuantSpec::int8_weight_per_tensor()
        .with_bits(4)
        .with_rounding(counting);
    let act = QuantSpec::int8_act_per_tensor()
        .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax))
        .with_rounding(counting);
    let device = Device::flex().autodiff();
    let devices = vec![device.clone(), device.clone()];
    let main = std::thread::current().id();
    let model = net(weight, act, &device);
    // fc1's attached weight quantizer, fc2's weight and input quantizers.
    assert_eq!(quant_modes(&model).len(), 3);

    // 1. Quantized QAT: the spec's named rule runs on both worker threads.
    let (before_f, before_s) = (rule.forward_calls(), rule.surrogate_calls());
    let (trained, steps) = fit(model, devices.clone());
    let workers: HashSet<ThreadId> = steps.iter().map(|(t, _)| *t).collect();
    assert_eq!(steps.len(), 8, "64 items in batches of 8");
    assert_eq!(workers.len(), 2, "one worker thread per device entry");
    assert!(!workers.contains(&main), "steps ran on worker threads");
    let (after_f, after_s) = (rule.forward_calls(), rule.surrogate_calls());
    for t in &workers {
        let steps_here = steps.iter().filter(|(s, _)| s == t).count();
        // Three quantizers per forward; the surrogate on the autodiff path of each.
        assert_eq!(minus(&after_f, &before_f, t), 3 * steps_here, "{t:?}");
        assert_eq!(minus(&after_s, &before_s, t), 3 * steps_here, "{t:?}");
        assert!(steps_here > 0);
    }
    assert!(steps.iter().all(|(_, m)| m.iter().all(|m| m.enabled)));
    // The quantizers trained: the weights moved but stay the spec's (codes on the 4-bit grid).
    assert_eq!(
        trained.fc2.weight_quant.as_ref().unwrap().spec.rounding,
        counting
    );

    // 2. A thread-local scope around the run does not reach the workers.
    let model = net(weight, act, &device);
    let before = rule.forward_calls();
    let (_, steps) = without_quantization(|| fit(model, devices.clone()));
    let after = rule.forward_calls();
    let workers: HashSet<ThreadId> = steps.iter().map(|(t, _)| *t).collect();
    assert_eq!(workers.len(), 2);
    for t in &workers {
        assert!(minus(&after, &before, t) > 0, "the scope leaked into {t:?}");
    }

    // 3. The model-wide switch does: every quantizer is off on every worker, the rule is never
    //    called there, and the forward is the float network's.
    let model = set_quantization(net(weight, act, &device), false);
    let before = rule.forward_calls();
    let (trained_off, steps) = fit(model, devices);
    let after = rule.forward_calls();
    let workers: HashSet<ThreadId> = steps.iter().map(|(t, _)| *t).collect();
    assert_eq!(steps.len(), 8);
    assert_eq!(workers.len(), 2);
    for (t, modes) in &steps {
        assert_eq!(modes.len(), 3);
        assert!(
            modes.iter().all(|m| !m.enabled),
            "a quantizer was on in {t:?}"
        );
        assert_eq!(minus(&after, &before, t), 0, "the rule ran in {t:?}");
    }
    assert_eq!(
        minus(&after, &before, &main),
        0,
        "validation ran unquantized too"
    );
    let x: Tensor<2> = ItemBatcher.batch(items(4, 500), &Device::flex()).inputs;
    let off = trained_off.valid();
    // Off, the attached quantizer gives the stored float weight; folding it in changes nothing.
    let fc1_float = off.fc1.clone().materialize();
    assert_eq!(bits(fc1_float.weight.val()), bits(off.fc1.weight.base()));
    let fc2_float = QuantLinear {
        weight_quant: None,
        input_quant: None,
        ..off.fc2.clone()
    };
    let want = fc2_float.forward(burn::tensor::activation::relu(fc1_float.forward(x.clone())));
    assert_eq!(bits(off.forward(x.clone())), bits(want.clone()));
    // Switched back on, the same trained model quantizes again with the spec's named rule.
    let before = rule.forward_calls();
    let on = set_quantization(off, true);
    assert!(
        quant_modes(&on)
            .iter()
            .all(|m| m.enabled && m.rounding.is_none())
    );
    assert_ne!(bits(on.forward(x)), bits(want));
    assert_eq!(minus(&rule.forward_calls(), &before, &main), 3);
}
