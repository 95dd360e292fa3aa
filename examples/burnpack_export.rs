//! Burn-native export: quantize a small MLP's weights with several recipes, save each as a
//! burnpack record of Burn `QFloat` tensors, reload it into the plain float model type and
//! compare with our fake-quant forward; print the file size against the f32 record.
//!
//! `cargo run --release --example burnpack_export`

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::export::burnpack::{
    BurnQuantOptions, QuantizedWeights, burn_mapping, flex_relayout_is_lossless, load_quantized,
    save_quantized,
};
use burn_quant::prelude::*;

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(768, 256).init(device),
            fc2: LinearConfig::new(256, 16).init(device),
        }
    }
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
    /// The same model with dequantized weights: our fake-quant forward.
    fn with_weights(&self, w1: Tensor<2>, w2: Tensor<2>) -> Self {
        let with = |l: &Linear, w| Linear {
            weight: Param::from_tensor(w),
            bias: l.bias.clone(),
        };
        Self {
            fc1: with(&self.fc1, w1),
            fc2: with(&self.fc2, w2),
        }
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32")
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    host(a)
        .iter()
        .zip(host(b))
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn input<const D: usize>(shape: [usize; D]) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect();
    Tensor::from_data(TensorData::new(v, shape), &Device::flex())
}

fn main() -> burn_quant::Result<()> {
    let device = Device::flex();
    device.seed(7);
    let model = Mlp::new(&device);
    let dir = std::env::temp_dir().join("burnq-burnpack-example");
    std::fs::create_dir_all(&dir)?;
    let f32_path = dir.join("mlp-f32.bpk");
    model.clone().into_record().save(&f32_path)?;
    let f32_bytes = std::fs::metadata(&f32_path)?.len();
    println!(
        "MLP 768-256-16, f32 record: {f32_bytes} bytes ({})",
        f32_path.display()
    );
    println!();

    let recipes: [(&str, QuantSpec); 5] = [
        ("int8 per-tensor", QuantSpec::int8_weight_per_tensor()),
        ("int8 per-channel", QuantSpec::int8_weight_per_channel()),
        ("int4 g32", QuantSpec::int4_weight_per_group(32)),
        (
            "int4 g128 mse",
            QuantSpec::int4_weight_per_group(128).with_stat(ScaleStat::mse()),
        ),
        ("ternary", QuantSpec::ternary_weight()),
    ];
    println!(
        "{:<17} {:<34} {:>9} {:>6} {:>9} {:>11} {:>11}",
        "recipe", "Burn scheme (fc1)", "bytes", "vs f32", "weights", "rank-3 Δ", "rank-2 Δ"
    );
    for (name, spec) in recipes {
        let q1 = quantize(model.fc1.weight.val(), &spec)?;
        let q2 = quantize(model.fc2.weight.val(), &spec)?;
        let mut weights = QuantizedWeights::new();
        weights.insert("fc1.weight", &q1)?;
        weights.insert("fc2.weight", &q2)?;
        let path = dir.join(format!("mlp-{}.bpk", name.replace(' ', "-")));
        let summary = save_quantized(&model, &weights, &path)?;

        let loaded = load_quantized(Mlp::new(&device), &path)?;
        let fake = model.with_weights(q1.dequantize(), q2.dequantize());
        let exact = host(loaded.fc1.weight.val().dequantize()) == host(q1.dequantize())
            && host(loaded.fc2.weight.val().dequantize()) == host(q2.dequantize());
        let x3 = input([4, 5, 768]);
        let d3 = max_abs_diff(loaded.forward(x3.clone()), fake.forward(x3));
        let x2 = input([32, 768]);
        let d2 = max_abs_diff(loaded.forward(x2.clone()), fake.forward(x2));
        let lossless = flex_relayout_is_lossless(&q1)? && flex_relayout_is_lossless(&q2)?;
        let m = burn_mapping(&q1, &BurnQuantOptions::default())?;
        let scheme = format!(
            "{:?} {:?} {:?} {}",
            m.scheme.value,
            m.scheme.store,
            m.scheme.scale_dtype(),
            m.block.map_or("per-tensor".into(), |b| format!("{b:?}"))
        );
        println!(
            "{name:<17} {scheme:<34} {:>9} {:>5.2}x {:>9} {d3:>11.3e} {d2:>11.3e}{}",
            summary.file_bytes,
            f32_bytes as f64 / summary.file_bytes as f64,
            if exact { "bit-exact" } else { "DIFFERS" },
            if lossless {
                ""
            } else {
                "  (flex re-quantizes)"
            }
        );
    }
    println!();
    println!(
        "Δ = max |Burn forward of the reloaded float model − our fake-quant forward|. For the\n\
         rank-3 input [4, 5, 768] Burn folds the batches into one matmul on the stored weight;\n\
         a rank-2 input goes through `unsqueeze`, a reshape that Burn's flex backend answers by\n\
         re-quantizing per-block weights with its own absmax scales (per-tensor weights are\n\
         kept). The records themselves are exact: see the weights column.\n\
         Files: {}",
        dir.display()
    );
    Ok(())
}
