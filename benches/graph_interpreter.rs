//! What graph mode costs: the interpreter's forward against the eager forward of the same
//! `burn::nn` model, and `quantize_graph` + static calibration against eager forwards.
//!
//! Run: `cargo bench --bench graph_interpreter`. For an MLP, a ResNet-style CNN and a
//! transformer encoder it prints, measured in the same run (median of 7 after a warm-up):
//! - eager forward ms (the baseline) and the interpreter's forward ms as a ratio (bound to
//!   the live model, as `QuantizedGraph::forward` and `GraphModel` run it; the goal is ≤ 1.1×);
//! - the same for forward + backward on the autodiff device;
//! - capture ms, and `quantize_graph` (W8A8) + calibration over 8 batches, in eager forwards.

use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};
use burn_quant::core::QuantSpec;
use burn_quant_graph::{GraphIo, GraphRecipe, Interpreter, capture, quantize_graph};
use support::cnn::ConvBn;
use support::median_secs;

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc3.forward(relu(self.fc2.forward(relu(self.fc1.forward(x)))))
    }
}

#[derive(Module, Debug)]
struct Cnn {
    stem: ConvBn,
    a: ConvBn,
    b: ConvBn,
    down: ConvBn,
    c: ConvBn,
    d: ConvBn,
    pool: AdaptiveAvgPool2d,
    head: Linear,
}

impl Cnn {
    fn new(device: &Device) -> Self {
        Self {
            stem: ConvBn::new(3, 32, 1, device),
            a: ConvBn::new(32, 32, 1, device),
            b: ConvBn::new(32, 32, 1, device),
            down: ConvBn::new(32, 64, 2, device),
            c: ConvBn::new(64, 64, 1, device),
            d: ConvBn::new(64, 64, 1, device),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(64, 10).init(device),
        }
    }
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.stem.forward(x));
        let x = relu(self.b.forward(relu(self.a.forward(x.clone()))) + x);
        let x = relu(self.down.forward(x));
        let x = relu(self.d.forward(relu(self.c.forward(x.clone()))) + x);
        let x = self.pool.forward(x);
        let [n, c, _, _] = x.dims();
        self.head.forward(x.reshape([n, c]))
    }
}

#[derive(Module, Debug)]
struct Encoder {
    encoder: TransformerEncoder,
}

impl Encoder {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.encoder.forward(TransformerEncoderInput::new(x))
    }
}

fn sync<const D: usize>(t: Tensor<D>) {
    let _ = t.into_data();
}

fn time(f: &mut dyn FnMut()) -> f64 {
    f();
    median_secs(7, f) * 1e3
}

/// Times one model: eager vs interpreter, forward and forward + backward, capture, quantize
/// + calibrate.
fn bench<M, const DI: usize, const DO: usize>(
    name: &str,
    model: &M,
    shape: [usize; DI],
    forward: impl Fn(&M, Tensor<DI>) -> Tensor<DO> + Copy,
) where
    M: Module,
    Tensor<DI>: GraphIo,
    Tensor<DO>: GraphIo,
{
    let device = Device::flex();
    let x = Tensor::<DI>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let t0 = std::time::Instant::now();
    let graph = capture(model, x.clone(), forward).expect("captures");
    let capture_ms = t0.elapsed().as_secs_f64() * 1e3;
    let eager = time(&mut || sync(forward(model, x.clone())));
    let interp = time(&mut || {
        let mut i = Interpreter::new(&graph, &device);
        i.bind(model);
        let y: Tensor<DO> = Tensor::from_dispatch(i.run(vec![x.clone().into_dispatch()]).unwrap().remove(0));
        sync(y)
    });
    // Forward + backward on the autodiff device (parameters require gradients).
    let ad = device.clone().autodiff();
    let live = model.clone().train().fork(&ad);
    let xa = Tensor::<DI>::from_data(x.clone().into_data(), &ad);
    let eager_bw = time(&mut || {
        let _ = forward(&live, xa.clone()).sum().backward();
    });
    let interp_bw = time(&mut || {
        let mut i = Interpreter::new(&graph, &ad);
        i.bind(&live);
        let y: Tensor<DO> =
            Tensor::from_dispatch(i.run(vec![xa.clone().into_dispatch()]).unwrap().remove(0));
        let _ = y.sum().backward();
    });
    let recipe = GraphRecipe::weights_and_inputs(
        QuantSpec::int8_weight_per_output_channel(),
        QuantSpec::int8_act_per_tensor(),
    );
    let t0 = std::time::Instant::now();
    let qg = quantize_graph(&graph, &recipe, &device).expect("quantizes");
    let _ = qg.calibrate(model, (0..8).map(|_| x.clone())).expect("calibrates");
    let quant_ms = t0.elapsed().as_secs_f64() * 1e3;
    println!(
        "{name:<12} {eager:>9.2} {:>16} {eager_bw:>11.2} {:>16} {capture_ms:>10.1} {:>22}",
        format!("{interp:.2} ({:.2}×)", interp / eager),
        format!("{interp_bw:.2} ({:.2}×)", interp_bw / eager_bw),
        format!("{quant_ms:.1} ({:.1} fwd)", quant_ms / eager),
    );
}

fn main() {
    let device = Device::flex();
    println!("graph mode cost on Device::flex() (median of 7)");
    println!(
        "{:<12} {:>9} {:>16} {:>11} {:>16} {:>10} {:>22}",
        "model", "eager ms", "interp ms (×)", "eager f+b", "interp f+b (×)", "capture ms", "quantize+calib ms"
    );
    let mlp = Mlp {
        fc1: LinearConfig::new(512, 2048).init(&device),
        fc2: LinearConfig::new(2048, 2048).init(&device),
        fc3: LinearConfig::new(2048, 512).init(&device),
    };
    bench("mlp", &mlp, [256, 512], |m: &Mlp, x| m.forward(x));
    let cnn = Cnn::new(&device);
    bench("resnet-cnn", &cnn, [16, 3, 32, 32], |m: &Cnn, x| m.forward(x));
    let enc = Encoder {
        encoder: TransformerEncoderConfig::new(256, 1024, 8, 4)
            .with_dropout(0.0)
            .init(&device),
    };
    bench("transformer", &enc, [8, 128, 256], |m: &Encoder, x| m.forward(x));
}
