//! A quantized model that is smaller in memory: quantize an MLP's weights to int4 (groups of
//! 32 inputs), convert them to Burn `QFloat` tensors in place, and compare what the parameters
//! hold and what the model computes with the fake-quantized model.
//!
//! `cargo run --release --example qfloat_in_memory`

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};
use burn_quant::export::burnpack::BurnQuantOptions;
use burn_quant::export::{IntoQFloat, param_bytes};
use burn_quant::nn::{LayerQuant, QuantLinear, QuantPlan, quantize_model};
use burn_quant::prelude::QuantSpec;

/// Our `QuantLinear` layers without quantizers: they multiply a `QFloat` weight as stored
/// (a stock `burn::nn::Linear` works too, but flex re-quantizes per-block weights on its
/// matrix-input path; see the book's export chapter).
#[derive(Module, Debug)]
struct Mlp {
    fc1: QuantLinear,
    fc2: QuantLinear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

fn main() -> burn_quant::Result<()> {
    let device = Device::flex();
    let layer = |i, o| {
        QuantLinear::from_float(
            LinearConfig::new(i, o).init(&device),
            &LayerQuant::float(),
            &device,
        )
    };
    let model = Mlp {
        fc1: layer(768, 1024)?,
        fc2: layer(1024, 10)?,
    };
    let plan = QuantPlan::new().rule("**.weight", QuantSpec::int4_weight_per_input_group(32));
    let quantized = quantize_model(model, &plan)?;
    let fake = quantized.model.clone();
    let real = quantized.into_qfloat(&BurnQuantOptions::default())?;

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let (f, r) = (param_bytes(&fake), param_bytes(&real));
    println!(
        "fake-quantized: {:.2} MiB of parameters (f32)",
        mib(f.total())
    );
    println!(
        "QFloat:         {:.2} MiB ({:.2}x), the {} quantized weights {:.2} of {:.2} MiB",
        mib(r.total()),
        r.total() as f64 / f.total() as f64,
        r.quantized_params,
        mib(r.quantized_bytes),
        mib(r.quantized_as_f32_bytes)
    );
    let x = Tensor::<2>::random([8, 768], Distribution::Normal(0.0, 1.0), &device);
    let diff: f32 = (real.forward(x.clone()) - fake.forward(x))
        .abs()
        .max()
        .into_scalar();
    println!("max |QFloat forward - fake-quantized forward| = {diff:e}");
    Ok(())
}
