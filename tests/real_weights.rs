//! The format zoo on real pretrained weights (all-MiniLM-L6-v2, FP32, from ../shared/data):
//! properties every quantization user relies on, checked on data nobody tuned the code for.

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::prelude::*;
use support::{read_linear_weight, shared_data, sqnr_db};

/// FFN down projection of layer 0: Burn layout [1536, 384].
fn ffn_down() -> Option<(Vec<f32>, [usize; 2])> {
    let path = shared_data("all-minilm-l6-v2/model.safetensors")?;
    let bytes = std::fs::read(path).expect("readable model file");
    Some(read_linear_weight(&bytes, "encoder.layer.0.output.dense.weight").expect("tensor present"))
}

fn sqnr(w: &[f32], shape: [usize; 2], spec: &QuantSpec) -> f64 {
    let x = Tensor::<2>::from_data(TensorData::new(w.to_vec(), shape), &Device::flex());
    let q = quantize(x, spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let y = q
        .dequantize()
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32");
    sqnr_db(w, &y)
}

#[test]
fn format_zoo_on_real_weights_orders_as_theory_says() {
    let Some((w, shape)) = ffn_down() else { return };
    let s = |spec: QuantSpec| sqnr(&w, shape, &spec);
    let int8 = s(QuantSpec::int8_weight_per_channel());
    let int4_g32 = s(QuantSpec::int4_weight_per_group(32));
    let int4_g128 = s(QuantSpec::int4_weight_per_group(128));
    let int4_g32_asym = s(QuantSpec::int4_weight_per_group(32).asymmetric());
    let q4k = s(QuantSpec::gguf_q4_k());
    let mxfp4 = s(QuantSpec::mxfp4());
    let nvfp4 = s(QuantSpec::nvfp4());
    let fp8 = s(QuantSpec::fp8_e4m3_weight_per_tensor());
    let ternary = s(QuantSpec::ternary_weight());
    println!(
        "SQNR dB: int8 {int8:.2}, int4 g32 {int4_g32:.2}, g128 {int4_g128:.2}, g32 asym {int4_g32_asym:.2}, Q4_K {q4k:.2}, MXFP4 {mxfp4:.2}, NVFP4 {nvfp4:.2}, fp8 {fp8:.2}, ternary {ternary:.2}"
    );
    // ~6 dB per bit: 8-bit per-channel is far above every 4-bit recipe (less than 24 dB here
    // because groups of 32 adapt to this layer's outliers and a per-channel scale cannot).
    assert!(int8 > 30.0 && int8 > int4_g32 + 10.0, "int8 {int8}");
    // Finer groups track the local range better.
    assert!(int4_g32 > int4_g128, "g32 {int4_g32} vs g128 {int4_g128}");
    // Q4_K is asymmetric g32 with 6-bit quantized scales and mins: close to float scales.
    assert!(
        (int4_g32_asym - q4k).abs() < 1.0,
        "asym g32 {int4_g32_asym} vs Q4_K {q4k}"
    );
    // NVFP4's 16-element blocks with E4M3 scales beat MXFP4's 32-element power-of-two blocks.
    assert!(nvfp4 > mxfp4, "NVFP4 {nvfp4} vs MXFP4 {mxfp4}");
    // FP8 E4M3 keeps ~3 mantissa bits over a wide range: well above 4-bit, below int8 per channel.
    assert!(fp8 > int4_g32 && fp8 < int8, "fp8 {fp8}");
    assert!(ternary > 0.0 && ternary < int4_g128, "ternary {ternary}");
}

#[test]
fn scale_search_improves_on_absmax_for_real_weights() {
    let Some((w, shape)) = ffn_down() else { return };
    let base = QuantSpec::int4_weight_per_group(128).with_bits(3);
    let absmax = sqnr(&w, shape, &base);
    let mse = sqnr(&w, shape, &base.with_stat(ScaleStat::mse()));
    assert!(
        mse > absmax + 0.3,
        "MSE search {mse} dB vs absmax {absmax} dB"
    );
    // HQQ minimises an lp (p < 1) error: compare mean |error| with min-max.
    let x = Tensor::<2>::from_data(TensorData::new(w.clone(), shape), &Device::flex());
    let l1 = |spec: &QuantSpec| -> f64 {
        let y = fake_quant(x.clone(), spec)
            .unwrap()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        w.iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / w.len() as f64
    };
    let asym = base.asymmetric();
    let (mm, hqq) = (l1(&asym), l1(&asym.with_stat(ScaleStat::hqq())));
    assert!(hqq < mm, "HQQ mean |err| {hqq} vs min-max {mm}");
}

#[test]
fn observer_over_row_batches_equals_one_shot_per_channel_scales() {
    let Some((w, shape)) = ffn_down() else { return };
    // Per output channel (axis 1) over batches of input rows: the static scale seen over all
    // batches equals the one computed on the whole weight.
    let spec = QuantSpec::int8_weight_per_channel();
    let mut obs = burn_quant::Observer::new(&spec).unwrap();
    for chunk in w.chunks(shape[1] * 256) {
        obs.observe_slice(chunk, &[chunk.len() / shape[1], shape[1]])
            .unwrap();
    }
    let x = Tensor::<2>::from_data(TensorData::new(w.clone(), shape), &Device::flex());
    let want = compute_params(&x, &spec).unwrap().to_host();
    assert_eq!(obs.host_params().unwrap(), want);
}
