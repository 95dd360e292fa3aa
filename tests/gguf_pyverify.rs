//! GGUF files we write, read by gguf-py (`GGUFReader`, `gguf.quants`): every metadata type
//! parses to the value we wrote; every codec's decoder equals gguf-py's dequantization bit for
//! bit; our Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/MXFP4/BF16 encoders equal gguf-py's `quantize` byte for
//! byte; `QuantTensor`s written code for code dequantize in gguf-py as they do here.

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::export::gguf::{
    GgmlType, GgufWriter, MetadataArray, MetadataValue, codec, encode_quant_tensor,
};
use burn_quant::prelude::*;

/// Deterministic data with what breaks codecs: ordinary Laplace-like rows, an all-zero block,
/// a block with one huge outlier, tiny values (f16-subnormal scales), exact ties, negatives only.
fn hard_rows(rows: usize, row_len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut v = Vec::with_capacity(rows * row_len);
    for r in 0..rows {
        for i in 0..row_len {
            let u = next();
            let lap = ((u.max(1e-9) * 2.0).ln() * if next() < 0.5 { 1.0 } else { -1.0 }) as f32;
            v.push(match (r % 6, i / 32) {
                (1, 0) => 0.0,
                (1, 1) if i % 32 == 5 => 300.0,
                (2, _) => lap * 1e-7,
                (3, _) => ((i % 16) as f32 - 7.5) * 0.25,
                (4, _) => -lap.abs() - 0.01,
                _ => lap * 0.02,
            });
        }
    }
    v
}

fn metadata() -> Vec<(&'static str, MetadataValue, &'static str, serde_json::Value)> {
    use serde_json::json;
    vec![
        ("t.u8", MetadataValue::U8(200), "UINT8", json!(200)),
        ("t.i8", MetadataValue::I8(-7), "INT8", json!(-7)),
        ("t.u16", MetadataValue::U16(65000), "UINT16", json!(65000)),
        ("t.i16", MetadataValue::I16(-30000), "INT16", json!(-30000)),
        (
            "t.u32",
            MetadataValue::U32(4_000_000_000),
            "UINT32",
            json!(4_000_000_000u32),
        ),
        (
            "t.i32",
            MetadataValue::I32(-2_000_000_000),
            "INT32",
            json!(-2_000_000_000),
        ),
        ("t.f32", MetadataValue::F32(0.5), "FLOAT32", json!(0.5)),
        ("t.bool", MetadataValue::Bool(true), "BOOL", json!(true)),
        (
            "t.string",
            MetadataValue::String("Grüße, GGUF".into()),
            "STRING",
            json!("Grüße, GGUF"),
        ),
        (
            "t.u64",
            MetadataValue::U64(1 << 40),
            "UINT64",
            json!(1u64 << 40),
        ),
        (
            "t.i64",
            MetadataValue::I64(-(1 << 40)),
            "INT64",
            json!(-(1i64 << 40)),
        ),
        ("t.f64", MetadataValue::F64(-2.25), "FLOAT64", json!(-2.25)),
        (
            "t.array_i32",
            MetadataValue::Array(MetadataArray::I32(vec![1, -2, 3])),
            "ARRAY",
            json!([1, -2, 3]),
        ),
        (
            "t.array_str",
            MetadataValue::Array(MetadataArray::String(vec![
                "a b".into(),
                "".into(),
                "ç".into(),
            ])),
            "ARRAY",
            json!(["a b", "", "ç"]),
        ),
        (
            "t.array_nested",
            MetadataValue::Array(MetadataArray::Array(vec![
                MetadataArray::U8(vec![1, 2]),
                MetadataArray::F32(vec![]),
            ])),
            "ARRAY",
            json!({"nested_arrays": 2}),
        ),
    ]
}

/// Every codec we have (`codec::ENCODABLE`), plus `QuantTensor`s written code for code.
#[test]
fn gguf_py_reads_our_files_and_agrees_bit_for_bit() {
    let Some(_) = support::python_verifier() else {
        return;
    };
    let mut w = GgufWriter::new();
    w.add_metadata("general.quantization_version", MetadataValue::U32(2))
        .unwrap();
    for (k, v, _, _) in metadata() {
        w.add_metadata(k, v).unwrap();
    }
    let (rows, row_len) = (12, 512);
    let x = hard_rows(rows, row_len, 42);
    let dims = [row_len as u64, rows as u64];
    for &ty in codec::ENCODABLE {
        let name = format!("t.{ty:?}");
        let bytes = codec::encode(ty, &x).unwrap();
        let dec = codec::decode(ty, &bytes).unwrap();
        w.add_tensor_bytes(name.clone(), &dims, ty, bytes).unwrap();
        w.add_tensor_f32(format!("{name}.dec"), &dims, GgmlType::F32, &dec)
            .unwrap();
        w.add_tensor_f32(format!("{name}.src"), &dims, GgmlType::F32, &x)
            .unwrap();
    }
    // Code for code: a Burn-oriented [d_in, d_out] weight, each ggml structure.
    let device = Device::flex();
    let mut burn_w = vec![0f32; x.len()];
    for r in 0..rows {
        for i in 0..row_len {
            burn_w[i * rows + r] = x[r * row_len + i];
        }
    }
    let wt = Tensor::<2>::from_data(TensorData::new(burn_w, vec![row_len, rows]), &device);
    let specs = [
        QuantSpec::gguf_q8_0(),
        QuantSpec::gguf_q4_0(),
        QuantSpec::gguf_q4_1(),
        QuantSpec::gguf_q5_0(),
        QuantSpec::gguf_q5_1(),
        QuantSpec::mxfp4(),
        QuantSpec::gguf_q2_k(),
        QuantSpec::gguf_q3_k(),
        QuantSpec::gguf_q4_k(),
        QuantSpec::gguf_q5_k(),
        QuantSpec::gguf_q6_k(),
    ];
    let mut expect_close = vec![];
    for spec in specs {
        let q = quantize(wt.clone(), &spec).unwrap();
        let g = encode_quant_tensor(&q).unwrap();
        let name = format!("qt.{:?}", g.ty);
        let deq: Vec<f32> = q
            .dequantize()
            .transpose()
            .into_data()
            .try_into_vec()
            .unwrap();
        let dec = codec::decode(g.ty, &g.data).unwrap();
        let max_scale: f32 = q.scales.clone().max().into_scalar();
        w.add_tensor_bytes(name.clone(), &g.dims, g.ty, g.data)
            .unwrap();
        w.add_tensor_f32(format!("{name}.dec"), &g.dims, GgmlType::F32, &dec)
            .unwrap();
        w.add_tensor_f32(format!("{name}.deq"), &g.dims, GgmlType::F32, &deq)
            .unwrap();
        expect_close.push((name, spec.zero_point.is_asymmetric(), max_scale));
    }
    let dir = std::env::temp_dir().join(format!("burnq-gguf-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("all.gguf");
    w.write_file(&path).unwrap();
    let out = support::run_python("gguf_verify.py", &[path.as_os_str()])
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // Metadata: every type parsed back to what we wrote.
    for (k, _, ty, value) in metadata() {
        let got = &report["metadata"][k];
        assert_eq!(got[0], ty, "{k}: {got}");
        if let (Some(a), Some(b)) = (got[1].as_f64(), value.as_f64()) {
            assert_eq!(a, b, "{k}");
        } else {
            assert_eq!(got[1], value, "{k}");
        }
    }
    // Every codec tensor and every code-for-code tensor was decoded identically by gguf-py.
    let checked: Vec<&str> = report["checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for &ty in codec::ENCODABLE {
        assert!(
            checked.contains(&format!("t.{ty:?}").as_str()),
            "{ty:?} not checked: {checked:?}"
        );
    }
    for (name, _, _) in &expect_close {
        assert!(checked.contains(&name.as_str()), "{name} not checked");
    }
    // gguf-py's encoders (the ones it has) produce our bytes.
    let equal: Vec<&str> = report["encoder_equal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::MXFP4,
        GgmlType::BF16,
    ] {
        assert!(
            equal.contains(&format!("t.{ty:?}").as_str()),
            "{ty:?} encoder not compared: {equal:?}"
        );
    }
    // QuantTensors: gguf-py's reading of the file is their own dequantization (exact when
    // symmetric; offsets differ only in f32 rounding).
    for (name, asym, max_scale) in expect_close {
        let d = report["max_abs_diff_vs_quant_tensor"][&name]
            .as_f64()
            .unwrap();
        let tol = if asym { max_scale as f64 * 1e-4 } else { 0.0 };
        assert!(d <= tol, "{name}: max |gguf-py − ours| = {d} > {tol}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
