//! One QAT training step (forward + backward + Adam) of the `burnq qat` CNN in W4A4 with
//! learned (LSQ) scales, beside one float step of the same CNN on the same batch, in the same
//! run; then where the difference goes.
//!
//! Run: `cargo bench --bench qat_step`. Float and W4A4 steps alternate (the machines are noisy;
//! the ratio of medians is what to compare), each phase timed inside the step. Then:
//! 1. each W4A4 quantizer alone on the exact tensor it sees in the step: one elementwise pass
//!    (the floor of a fused kernel), `Quantizer::forward` (the fused op), the bare LSQ
//!    arithmetic `round_ste(clamp(x / s)) · s` as tensor ops, the host reads the reference
//!    chain makes (scale > 0 check, scales for the parameter checks, `all(is_finite(x))`;
//!    the fused op checks inside its pass instead), and the quantizer's backward;
//! 2. the LSQ formula's tensor ops one by one on the largest activation;
//! 3. the same fake-quant through `Quantizer::forward` and as bare ops on different views of
//!    the same data (the reference chain views every tensor as `[outer, groups, group, inner]`).
//!
//! The weights are the seeded initial ones (the timings do not depend on their values); the
//! W4A4 scales are calibrated on 1,024 training images.

use std::error::Error;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use burn_quant::core::round_ste;
use burn_quant::nn::Quantizer;
use burn_quant_cli::mnist::Mnist;
use burn_quant_cli::qat::{ImageBatch, QatCnn, Variant, calibrate_model, image_split};

const BATCH: usize = 64;
const REPS: usize = 101;
const WARMUP: usize = 5;
const LR: f64 = 5e-4;

/// Median of `t`, in milliseconds.
fn median_ms(t: &mut [f64]) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2] * 1e3
}

fn secs(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// Runs `fs` interleaved `REPS` times after `WARMUP` rounds; the median of each, in ms.
fn interleaved<const N: usize>(mut fs: [&mut dyn FnMut(); N]) -> [f64; N] {
    for _ in 0..WARMUP {
        fs.iter_mut().for_each(|f| f());
    }
    let mut t = [(); N].map(|_| Vec::with_capacity(REPS));
    for _ in 0..REPS {
        for (f, t) in fs.iter_mut().zip(t.iter_mut()) {
            t.push(secs(&mut **f));
        }
    }
    t.map(|mut t| median_ms(&mut t))
}

/// A model and its optimizer, stepping on one batch.
struct Trainer {
    model: Option<QatCnn>,
    optim: burn::optim::ModuleOptimizer,
}

impl Trainer {
    fn new(model: QatCnn, device: &Device) -> Self {
        Self {
            model: Some(model.train().fork(device)),
            optim: AdamConfig::new().init(),
        }
    }

    fn model(&self) -> &QatCnn {
        self.model
            .as_ref()
            .expect("the model is back after every step")
    }

    /// Forward, backward and Adam; the time of each phase, in seconds (Flex runs eagerly,
    /// so each phase's work is done when it returns).
    fn step(&mut self, batch: &ImageBatch) -> [f64; 3] {
        let model = self
            .model
            .take()
            .expect("the model is back after every step");
        let t0 = Instant::now();
        let out = model.forward_classification(batch.clone());
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let t2 = Instant::now();
        self.model = Some(self.optim.step(LR, model, grads));
        let t3 = Instant::now();
        [t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64())
    }
}

/// Times `quantizer` on a leaf copy of `x` (the tensor it sees in the step, tracked): one
/// elementwise pass, `Quantizer::forward`, the bare LSQ arithmetic, the host reads a call
/// makes, and the backward of `Quantizer::forward` (net of the `sum` loss's own backward).
/// Prints a line and returns the five medians in ms.
fn measure<const D: usize>(
    name: &str,
    quantizer: &Quantizer,
    x: Tensor<D>,
) -> Result<[f64; 5], Box<dyn Error>> {
    let x = x.detach().require_grad();
    let params = quantizer.params_for(&x)?;
    let s = params.scales.clone();
    let (lo, hi) = (
        quantizer.spec.format.min_value(),
        quantizer.spec.format.max_value(),
    );
    // The floor of a fused single-pass kernel: one tracked elementwise op.
    let mut one_pass = || {
        let _ = x.clone().mul_scalar(1.5);
    };
    let mut forward = || {
        let _ = quantizer.forward(x.clone());
    };
    // The same value and gradients (straight-through rounding, LSQ scale gradient) with
    // nothing else: no shape checks, no host reads.
    let mut bare = || {
        let _ = round_ste((x.clone() / s.clone()).clamp(lo, hi)) * s.clone();
    };
    // What a quantizer call reads back to the host: the scale > 0 check of `params_for`, the
    // scales (`QuantParams::to_host`, for the parameter checks) and `all(is_finite(x))`.
    let mut checks = || {
        let _ = s
            .clone()
            .detach()
            .greater_elem(0.0)
            .all()
            .into_scalar::<bool>();
        let _ = params.to_host();
        let _ = x.clone().is_finite().all().into_scalar::<bool>();
    };
    let mut fwd_bwd = || {
        let _ = quantizer.forward(x.clone()).sum().backward();
    };
    let mut loss_only = || {
        let _ = x.clone().sum().backward();
    };
    let t = interleaved([
        &mut one_pass,
        &mut forward,
        &mut bare,
        &mut checks,
        &mut fwd_bwd,
        &mut loss_only,
    ]);
    let backward = (t[4] - t[1] - t[5]).max(0.0);
    let out = [t[0], t[1], t[2], t[3], backward];
    let n = x.shape().num_elements();
    println!(
        "{name:<20} {n:>9} {:>9.3} {:>10.3} {:>9.3} {:>9.3} {:>10.3}",
        out[0], out[1], out[2], out[3], out[4]
    );
    Ok(out)
}

fn main() -> Result<(), Box<dyn Error>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let data = Mnist::embedded()?;
    let split = image_split(&data, 1024, 64, 42)?;
    let flex = Device::flex();
    let float = QatCnn::init(Variant::Float, 43, &flex)?;
    let w4 = QatCnn::quantized_from(&float, Variant::W4A4Lsq, &flex)?;
    let w4 = calibrate_model(w4, &split.train, 1024, 256)?;
    let device = Device::flex().autodiff();
    let idx: Vec<usize> = (0..BATCH).collect();
    let batch = split.train.batch(&idx, &device);
    let mut f = Trainer::new(float, &device);
    let mut q = Trainer::new(w4, &device);

    println!(
        "qat_step: the `burnq qat` CNN (conv 1->8 3x3, conv 8->16 3x3 s2, linear 2304->10), batch {BATCH}, \
         Device::flex().autodiff(), {threads} threads; median of {REPS} interleaved repeats after {WARMUP} warm-up rounds"
    );
    // Float and W4A4 steps alternate, so both see the same machine load; each phase is timed
    // inside the step.
    let mut phases = [
        [(); 4].map(|_| Vec::with_capacity(REPS)),
        [(); 4].map(|_| Vec::with_capacity(REPS)),
    ];
    for rep in 0..WARMUP + REPS {
        for (trainer, ph) in [&mut f, &mut q].into_iter().zip(phases.iter_mut()) {
            let t = trainer.step(&batch);
            if rep >= WARMUP {
                for (i, v) in t.iter().chain([&t.iter().sum::<f64>()]).enumerate() {
                    ph[i].push(*v);
                }
            }
        }
    }
    let [pf, pq] = phases.map(|ph| ph.map(|mut t| median_ms(&mut t)));
    let (t_f, t_q) = (pf[3], pq[3]);
    println!();
    println!(
        "{:<36} {:>10} {:>10} {:>12} {:>8}",
        "ms (median)", "float", "W4A4 LSQ", "difference", "ratio"
    );
    let row = |name: &str, a: f64, b: f64| {
        println!(
            "{name:<36} {a:>10.3} {b:>10.3} {:>+12.3} {:>7.2}x",
            b - a,
            b / a
        );
    };
    row("training step (fwd + bwd + Adam)", t_f, t_q);
    row("  forward (incl. loss)", pf[0], pq[0]);
    row("  backward (incl. GradientsParams)", pf[1], pq[1]);
    row("  Adam update", pf[2], pq[2]);
    println!();
    println!(
        "W4A4 / float training step: {:.2}x (target <= 1.2x)",
        t_q / t_f
    );

    // The quantizers alone, on the tensors they see in the step.
    println!();
    println!("W4A4 quantizers alone, on the tensors they see in the step (ms, median):");
    println!(
        "{:<20} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10}",
        "quantizer", "elements", "1 pass", "forward", "bare LSQ", "host rd", "backward"
    );
    let m = q.model();
    let wq = |o: Option<&Quantizer>| o.cloned().ok_or("W4A4 quantizes every weight");
    let images = batch.images.clone();
    let pre1 = relu(m.conv1.forward(m.input_quant.forward(images.clone())));
    let pre2 = relu(m.conv2.forward(m.relu1.forward(pre1.clone())));
    let pre1_leaf = pre1.clone();
    let times = [
        measure("input_quant", &m.input_quant.act_quant, images)?,
        measure(
            "conv1.weight_quant",
            &wq(m.conv1.weight_quant.as_ref())?,
            m.conv1.weight.val(),
        )?,
        measure("relu1.act_quant", &m.relu1.act_quant, pre1)?,
        measure(
            "conv2.weight_quant",
            &wq(m.conv2.weight_quant.as_ref())?,
            m.conv2.weight.val(),
        )?,
        measure("relu2.act_quant", &m.relu2.act_quant, pre2)?,
        measure(
            "fc.weight_quant",
            &wq(m.fc.weight_quant.as_ref())?,
            m.fc.weight.val(),
        )?,
    ];
    let total = |i: usize| times.iter().map(|t| t[i]).sum::<f64>();
    let [one, sum_q, sum_bare, sum_checks, sum_bwd] = [0, 1, 2, 3, 4].map(total);
    println!(
        "{:<20} {:>9} {one:>9.3} {sum_q:>10.3} {sum_bare:>9.3} {sum_checks:>9.3} {sum_bwd:>10.3}",
        "total", ""
    );
    println!();
    let over_step = t_q - t_f;
    let over_fwd = pq[0] - pf[0];
    let over_bwd = pq[1] - pf[1];
    println!(
        "step overhead {over_step:.3} ms (medians of phases: forward {over_fwd:.3}, backward {over_bwd:.3}, Adam {:.3})",
        pq[2] - pf[2]
    );
    println!(
        "quantizers alone: forward {sum_q:.3} ms ({:.0}% of the forward overhead; bare LSQ arithmetic {sum_bare:.3}, host reads {sum_checks:.3}), \
         backward {sum_bwd:.3} ms ({:.0}% of the backward overhead)",
        100.0 * sum_q / over_fwd.max(1e-9),
        100.0 * sum_bwd / over_bwd.max(1e-9),
    );
    println!(
        "one elementwise pass over the same tensors costs {one:.3} ms: the LSQ formula makes ~{:.0} such passes forward",
        sum_bare / one.max(1e-9)
    );
    ops_on("relu1 activation", pre1_leaf.clone())?;
    layouts_on("relu1 activation", &m.relu1.act_quant, pre1_leaf)?;
    Ok(())
}

/// Forward + backward of the same per-tensor LSQ fake-quant on `x` through `Quantizer::forward`
/// (the fused op) and as bare tensor ops on views of the same data (the reference chain views
/// every tensor as 4-D `[outer, groups, group, inner]`).
fn layouts_on(name: &str, quantizer: &Quantizer, x: Tensor<4>) -> Result<(), Box<dyn Error>> {
    let x = x.detach().require_grad();
    let n = x.shape().num_elements();
    let scale = quantizer.scale.as_ref().ok_or("a learned scale")?.clone();
    let (lo, hi) = (
        quantizer.spec.format.min_value(),
        quantizer.spec.format.max_value(),
    );
    let lsq = |x: Tensor<4>, s: Tensor<4>| round_ste((x / s.clone()).clamp(lo, hi)) * s;
    let s4 = || scale.val().reshape([1, 1, 1, 1]);
    let mut loss = || {
        let _ = x.clone().sum().backward();
    };
    let mut via_quantizer = || {
        let _ = quantizer.forward(x.clone()).sum().backward();
    };
    let mut own_shape = || {
        let _ = lsq(x.clone(), s4()).sum().backward();
    };
    let mut view_n1 = || {
        let _ = lsq(x.clone().reshape([1, 1, n, 1]), s4()).sum().backward();
    };
    let mut view_1n = || {
        let _ = lsq(x.clone().reshape([1, 1, 1, n]), s4()).sum().backward();
    };
    let mut mul_n1 = || {
        let _ = (x.clone().reshape([1, 1, n, 1]) * s4()).sum().backward();
    };
    let mut mul_own = || {
        let _ = (x.clone() * s4()).sum().backward();
    };
    let t = interleaved([
        &mut loss,
        &mut via_quantizer,
        &mut own_shape,
        &mut view_n1,
        &mut view_1n,
        &mut mul_n1,
        &mut mul_own,
    ]);
    println!();
    println!(
        "per-tensor LSQ fake-quant on the {name} ({n} elements), forward + backward net of the sum loss, ms (median):"
    );
    let net = |v: f64| (v - t[0]).max(0.0);
    println!(
        "  {:<52} {:>8.3}",
        "Quantizer::forward (the fused op)",
        net(t[1])
    );
    println!(
        "  {:<52} {:>8.3}",
        "bare LSQ ops on the tensor's own shape",
        net(t[2])
    );
    println!(
        "  {:<52} {:>8.3}",
        "bare LSQ ops on the view [1,1,n,1]",
        net(t[3])
    );
    println!(
        "  {:<52} {:>8.3}",
        "bare LSQ ops on the view [1,1,1,n]",
        net(t[4])
    );
    println!("  {:<52} {:>8.3}", "x * s alone, view [1,1,n,1]", net(t[5]));
    println!("  {:<52} {:>8.3}", "x * s alone, own shape", net(t[6]));
    Ok(())
}

/// The LSQ formula's tensor ops one by one on `x` (a tracked leaf) with a per-tensor learned
/// scale: forward, and backward net of the `sum` loss's own.
fn ops_on(name: &str, x: Tensor<4>) -> Result<(), Box<dyn Error>> {
    let x = x.detach().require_grad();
    let device = x.device();
    // A leaf scale, reshaped inside each op: a graph tape is consumed by its backward.
    let s = Tensor::<1>::from_floats([0.05], &device).require_grad();
    let s4 = move || -> Tensor<4> { s.clone().reshape([1, 1, 1, 1]) };
    type Op = Box<dyn Fn(Tensor<4>) -> Tensor<4>>;
    let ops: Vec<(&str, Op)> = vec![
        ("x * 1.5 (one pass)", Box::new(|x| x.mul_scalar(1.5))),
        (
            "x / s (broadcast [1,1,1,1])",
            Box::new({
                let s4 = s4.clone();
                move |x| x / s4()
            }),
        ),
        (
            "x * s (broadcast)",
            Box::new({
                let s4 = s4.clone();
                move |x| x * s4()
            }),
        ),
        ("x.clamp(0, 15)", Box::new(|x| x.clamp(0.0, 15.0))),
        ("x.round() (ties to even)", Box::new(|x| x.round())),
        ("round_ste(x)", Box::new(round_ste)),
        (
            "x + 1.5*2^23 - 1.5*2^23 (= round)",
            Box::new(|x| x.add_scalar(12_582_912.0).sub_scalar(12_582_912.0)),
        ),
        (
            "LSQ: round_ste(clamp(x/s))*s",
            Box::new(move |x| round_ste((x / s4()).clamp(0.0, 15.0)) * s4()),
        ),
    ];
    let mut loss = || {
        let _ = x.clone().sum().backward();
    };
    let [loss_ms] = interleaved([&mut loss]);
    println!();
    println!(
        "single tracked ops on the {name} ({} elements), ms (median):",
        x.shape().num_elements()
    );
    println!("  {:<36} {:>8} {:>9}", "op", "forward", "backward");
    for (op, f) in &ops {
        let mut fwd = || {
            let _ = f(x.clone());
        };
        let mut both = || {
            let _ = f(x.clone()).sum().backward();
        };
        let [tf, tb] = interleaved([&mut fwd, &mut both]);
        println!("  {op:<36} {tf:>8.3} {:>9.3}", (tb - tf - loss_ms).max(0.0));
    }
    let mut finite = || {
        let _ = x.clone().is_finite().all().into_scalar::<bool>();
    };
    let [tf] = interleaved([&mut finite]);
    println!("  {:<36} {tf:>8.3}", "all(is_finite(x)) read to host");
    Ok(())
}
