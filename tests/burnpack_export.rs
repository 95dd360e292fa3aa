//! Burn-native export across crates: a model of burn-quant-nn layers → its quantized weights in a
//! burnpack record → reloaded into the plain `burn::nn::Linear` model type, outputs compared with
//! the quantized layers' own forward; real MiniLM weights through Burn's QFloat, bit for bit.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_quant::export::burnpack::{
    BurnpackError, QuantizedWeights, burn_mapping, flex_relayout_is_lossless, load_quantized,
    save_quantized, to_burn_qdata, to_burn_qfloat,
};
use burn_quant::nn::{QuantLinear, QuantLinearConfig};
use burn_quant::prelude::*;
use support::{read_linear_weight, shared_data};

#[derive(Module, Debug)]
struct Net {
    fc1: Linear,
    fc2: Linear,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(320, 64).init(device),
            fc2: LinearConfig::new(64, 16).init(device),
        }
    }
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

/// The same network built from burn-quant-nn's quantized layers (weight quantization only).
#[derive(Module, Debug)]
struct QNet {
    fc1: QuantLinear,
    fc2: QuantLinear,
}

impl QNet {
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

fn input<const D: usize>(shape: [usize; D], seed: u32) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u32)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_left(13);
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_data(TensorData::new(v, shape), &Device::flex())
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32")
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> (f32, f32) {
    let (a, b) = (host(a), host(b));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let scale = b.iter().fold(0f32, |m, y| m.max(y.abs()));
    (diff, scale)
}

#[test]
fn quantized_layers_export_to_a_record_that_the_float_model_loads() {
    let device = Device::flex();
    let float = Net::new(&device);
    let specs = [
        QuantSpec::int8_weight_per_channel(),
        QuantSpec::int4_weight_per_group(32).with_stat(ScaleStat::mse()),
    ];
    let qnet = QNet {
        fc1: QuantLinearConfig::new(320, 64)
            .with_weight_quant(Some(specs[0]))
            .from_float(float.fc1.clone(), &device)
            .expect("layer"),
        fc2: QuantLinearConfig::new(64, 16)
            .with_weight_quant(Some(specs[1]))
            .from_float(float.fc2.clone(), &device)
            .expect("layer"),
    };
    let q1 = qnet
        .fc1
        .quant_weight()
        .expect("quantizes")
        .expect("has a quantizer");
    let q2 = qnet
        .fc2
        .quant_weight()
        .expect("quantizes")
        .expect("has a quantizer");
    let mut weights = QuantizedWeights::new();
    weights
        .insert("fc1.weight", &q1)
        .expect("Burn holds int8 per channel");
    weights
        .insert("fc2.weight", &q2)
        .expect("Burn holds int4 per group");

    let dir = std::env::temp_dir().join(format!("burnq-bpk-nn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("net.bpk");
    let summary = save_quantized(&float, &weights, &path).expect("saves");
    let float_path = dir.join("net-f32.bpk");
    float
        .clone()
        .into_record()
        .save(&float_path)
        .expect("saves");
    let float_bytes = std::fs::metadata(&float_path).expect("written").len();
    println!(
        "record: {} bytes quantized vs {float_bytes} bytes f32 ({:.2}x smaller)",
        summary.file_bytes,
        float_bytes as f64 / summary.file_bytes as f64
    );
    assert!(summary.file_bytes * 3 < float_bytes);

    // A freshly initialised float model (other weights, other ids) takes the record.
    let loaded = load_quantized(Net::new(&device), &path).expect("loads");
    assert!(matches!(loaded.fc1.weight.val().dtype(), DType::QFloat(_)));
    assert!(matches!(loaded.fc2.weight.val().dtype(), DType::QFloat(_)));
    assert!(matches!(
        loaded.fc1.bias.as_ref().unwrap().val().dtype(),
        DType::F32
    ));
    let bits = |t: Tensor<2>| host(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(loaded.fc1.weight.val().dequantize()),
        bits(q1.dequantize())
    );
    assert_eq!(
        bits(loaded.fc2.weight.val().dequantize()),
        bits(q2.dequantize())
    );

    // Burn's forward of the reloaded float model against the quantized layers' own forward.
    // A rank-3 batch folds into one matmul on the untouched quantized weight: f32 round-off.
    let x = input([4, 6, 320], 7);
    let (d, scale) = max_abs_diff(loaded.forward(x.clone()), qnet.forward(x));
    println!("rank 3: max |burn - ours| = {d:e} (outputs up to {scale})");
    assert!(d <= 1e-6 * scale.max(1.0), "{d}");
    // A rank-2 batch goes through a reshape that flex answers by re-quantizing per-block
    // weights with its own scales: exact only where that re-quantization is lossless.
    let x = input([9, 320], 8);
    let (d, scale) = max_abs_diff(loaded.forward(x.clone()), qnet.forward(x));
    let lossless = flex_relayout_is_lossless(&q1).expect("int8")
        && flex_relayout_is_lossless(&q2).expect("int4");
    println!("rank 2: max |burn - ours| = {d:e}, flex relayout lossless: {lossless}");
    if lossless {
        assert!(d <= 1e-6 * scale.max(1.0), "{d}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// FFN down projection of MiniLM layer 0, Burn layout [1536, 384].
fn minilm_ffn_down() -> Option<(Vec<f32>, [usize; 2])> {
    let path = shared_data("all-minilm-l6-v2/model.safetensors")?;
    let bytes = std::fs::read(path).expect("readable model file");
    Some(read_linear_weight(&bytes, "encoder.layer.0.output.dense.weight").expect("tensor present"))
}

#[test]
fn real_minilm_weights_dequantize_bit_exactly_through_burn_qfloat() {
    let Some((w, shape)) = minilm_ffn_down() else {
        return;
    };
    let device = Device::flex();
    let x = || Tensor::<2>::from_data(TensorData::new(w.clone(), shape), &device);
    let bits = |t: Tensor<2>| host(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for spec in [
        QuantSpec::int8_weight_per_tensor(),
        QuantSpec::int8_weight_per_channel(),
        QuantSpec::int4_weight_per_group(32),
        QuantSpec::int4_weight_per_group(128).with_stat(ScaleStat::mse()),
        QuantSpec::int4_weight_per_group(32).with_pow2_scale(Pow2Mode::Ceil),
        QuantSpec::mxint8(),
        QuantSpec::gguf_q8_0(),
        QuantSpec::gguf_q6_k(),
        QuantSpec::ternary_weight(),
    ] {
        let q = quantize(x(), &spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        let burn = to_burn_qfloat(&q, &device).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!(matches!(burn.dtype(), DType::QFloat(_)), "{spec}");
        assert_eq!(bits(burn.dequantize()), bits(q.dequantize()), "{spec}");
        let m = burn_mapping(&q, &Default::default()).expect("mapped above");
        println!(
            "{spec}: {:?} {:?} scales {:?} block {:?}: bit-exact",
            m.scheme.value,
            m.scheme.store,
            m.scheme.scale_dtype(),
            m.block
        );
    }
    // Minifloat data is written (for a GPU backend) but refused on flex, which misreads it.
    for spec in [
        QuantSpec::mxfp4(),
        QuantSpec::nvfp4(),
        QuantSpec::mxfp8_e4m3(),
    ] {
        let q = quantize(x(), &spec).expect("quantizes");
        to_burn_qdata(&q, &Default::default()).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!(matches!(
            to_burn_qfloat(&q, &device),
            Err(BurnpackError::Device { .. })
        ));
    }
    // Asymmetric (Q4_K, zero-points) has no Burn form.
    let q = quantize(x(), &QuantSpec::gguf_q4_k()).expect("quantizes");
    assert!(matches!(
        to_burn_qfloat(&q, &device),
        Err(BurnpackError::Asymmetric { .. })
    ));
}
