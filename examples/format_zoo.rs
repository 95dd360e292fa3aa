//! Every preset on a real weight matrix: bits per weight, SQNR, max error, codes of one group.
//!
//! Run: `cargo run --release --example format_zoo [-- LAYER_NAME]`. Reads the FP32
//! all-MiniLM-L6-v2 checkpoint from `../shared/data` (default layer: layer 0's FFN down
//! projection, Burn layout [1536, 384]).

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::prelude::*;
use support::{read_linear_weight, shared_data, sqnr_db};

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "encoder.layer.0.output.dense.weight".into());
    let Some(path) = shared_data("all-minilm-l6-v2/model.safetensors") else {
        return;
    };
    let bytes = std::fs::read(&path).expect("readable model file");
    let (w, shape) = match read_linear_weight(&bytes, &name) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    println!("{name}: Burn layout {shape:?}, {} weights\n", w.len());
    let x = Tensor::<2>::from_data(TensorData::new(w.clone(), shape), &Device::flex());
    let presets = [
        QuantSpec::int8_weight_per_channel(),
        QuantSpec::int4_weight_per_group(128),
        QuantSpec::int4_weight_per_group(32),
        QuantSpec::int4_weight_per_group(32).asymmetric(),
        QuantSpec::int4_weight_per_group(32)
            .asymmetric()
            .with_stat(ScaleStat::hqq()),
        QuantSpec::int4_weight_per_group(32).with_stat(ScaleStat::mse()),
        QuantSpec::gguf_q4_k(),
        QuantSpec::gguf_q6_k(),
        QuantSpec::gguf_q3_k(),
        QuantSpec::gguf_q2_k(),
        QuantSpec::fp8_e4m3_weight_per_tensor(),
        QuantSpec::mxfp8_e4m3(),
        QuantSpec::mxfp6_e2m3(),
        QuantSpec::mxfp4(),
        QuantSpec::mxint8(),
        QuantSpec::nvfp4(),
        QuantSpec::ternary_weight(),
        QuantSpec::binary_weight(),
    ];
    println!(
        "{:<62} {:>6} {:>8} {:>9} {:>8}",
        "spec", "bits", "SQNR dB", "max err", "ms"
    );
    for spec in presets {
        let start = Instant::now();
        let q = match quantize(x.clone(), &spec) {
            Ok(q) => q,
            Err(e) => {
                println!("{:<62} error: {e}", spec.to_string());
                continue;
            }
        };
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let y = q
            .dequantize()
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32");
        let max_err = w
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let bits = spec.bits_per_element(&shape).expect("valid shape");
        println!(
            "{:<62} {:>6.3} {:>8.2} {:>9.5} {:>8.1}",
            spec.to_string(),
            bits,
            sqnr_db(&w, &y),
            max_err,
            ms
        );
    }
}
