//! Real weights: all-MiniLM-L6-v2 (F32 safetensors) and SmolLM2-135M-Instruct (Q4_1/Q8_0 GGUF as
//! shipped), from the shared data directory; each test skips with a notice when the file is
//! absent (and fails instead when `BURNQ_REQUIRE_DATA=1`).

use std::path::PathBuf;

use super::super::*;
use super::candle::{candle_decode, compare_with_candle};
use super::props::weighted_sq_error;
use crate::gguf::{GgmlType, GgufFile};

/// `../shared/data/<relative>` beside the repository root, as the workspace's `support` crate
/// finds it.
fn shared_data(relative: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("BURNQ_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("BURNQ_REQUIRE_DATA=1 but {} is absent", path.display());
    }
    eprintln!("notice: skipping, {} is absent", path.display());
    None
}

/// A named 2-D weight: (name, row-major values, [rows, cols]).
type Weight = (String, Vec<f32>, [usize; 2]);

/// The 2-D F32 weights of MiniLM.
fn minilm_weights() -> Option<Vec<Weight>> {
    let path = shared_data("all-minilm-l6-v2/model.safetensors")?;
    let bytes = std::fs::read(&path).expect("read MiniLM");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("MiniLM safetensors");
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 2 {
            continue;
        }
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.push((name, v, [view.shape()[0], view.shape()[1]]));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}

/// Strongly non-uniform importance: log-normal over ~4 decades, deterministic.
fn lognormal_importance(n: usize, seed: u64) -> Vec<f32> {
    let u = super::values(2 * n, seed, 1.0);
    (0..n)
        .map(|i| {
            let a = (u[2 * i].abs() as f64).max(1e-12);
            let g = (-2.0 * a.ln()).sqrt() * (std::f64::consts::PI * u[2 * i + 1] as f64).cos();
            (2.3 * g).exp() as f32
        })
        .collect()
}

#[test]
fn minilm_encoders_agree_with_candle() {
    let Some(weights) = minilm_weights() else {
        return;
    };
    // The encoder layers' matrices (no embeddings), flattened as rows of 1536: every size is a
    // multiple of it, and the reference encoders do not see rows anyway.
    let x: Vec<f32> = weights
        .iter()
        .filter(|(n, ..)| n.starts_with("encoder.layer.0.") || n.starts_with("encoder.layer.5."))
        .flat_map(|(_, v, _)| v.iter().copied())
        .collect();
    assert_eq!(x.len() % 1536, 0);
    assert!(x.len() > 3_000_000, "{}", x.len());
    compare_with_candle("MiniLM", &x, 1536, &lognormal_importance(1536, 7));
}

/// The point of an imatrix: with a strongly non-uniform importance, the importance path's
/// importance-weighted squared error is lower than the reference encoder's, on real weights.
#[test]
fn minilm_importance_lowers_weighted_error() {
    let Some(weights) = minilm_weights() else {
        return;
    };
    for (name, x, [_, cols]) in weights
        .iter()
        .filter(|(n, ..)| n.starts_with("encoder.layer.3."))
    {
        let imp = lognormal_importance(*cols, 11);
        for &ty in IMPORTANCE_AWARE
            .iter()
            .filter(|t| cols % t.block_size() == 0)
        {
            let r = decode(ty, &encode(ty, x).unwrap()).unwrap();
            let w = decode(ty, &encode_weighted(ty, x, *cols, &imp).unwrap()).unwrap();
            let (er, ew) = (
                weighted_sq_error(x, &r, &imp),
                weighted_sq_error(x, &w, &imp),
            );
            eprintln!(
                "{name} {ty:?}: weighted error ratio importance/reference {:.3}",
                ew / er
            );
            assert!(ew < 0.9 * er, "{name} {ty:?}: {ew} vs reference {er}");
        }
    }
}

/// A GGUF made by llama.cpp's tools: our reader + decoders against candle's decoders, and our
/// reference encoder applied to the decoded values gives back the file's bytes (decoding then
/// re-encoding is a fixed point of ggml's reference quantizers for Q8_0 and Q4_1 blocks).
#[test]
fn smollm2_gguf_decodes_like_candle_and_re_encodes_to_its_bytes() {
    let Some(path) = shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::read(&path).expect("read SmolLM2 GGUF");
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let (mut blocks, mut same_blocks) = (0usize, 0usize);
    for info in &file.tensors {
        let pick = info.name == "token_embd.weight"
            || info.name.starts_with("blk.0.")
            || info.name.starts_with("blk.29.")
            || info.ty == GgmlType::F32;
        if !pick {
            continue;
        }
        *seen.entry(format!("{:?}", info.ty)).or_default() += 1;
        let bytes = file.tensor_bytes(info);
        let ours = file.tensor_f32(&info.name).expect("decode");
        assert_eq!(ours.len() as u64, info.n_elements());
        assert!(ours.iter().all(|v| v.is_finite()), "{}", info.name);
        if info.ty == GgmlType::F32 {
            continue;
        }
        let theirs = candle_decode(info.ty, bytes);
        assert!(
            ours.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: decode differs from candle",
            info.name
        );
        let again = encode(info.ty, &ours).unwrap();
        let ts = info.ty.type_size();
        blocks += bytes.len() / ts;
        same_blocks += bytes
            .chunks(ts)
            .zip(again.chunks(ts))
            .filter(|(a, b)| a == b)
            .count();
    }
    eprintln!(
        "SmolLM2 tensors checked by type: {seen:?}; re-encoded blocks identical: {same_blocks} of {blocks}"
    );
    assert!(seen.contains_key("Q4_1") && seen.contains_key("Q8_0") && seen.contains_key("F32"));
    assert!(
        same_blocks as f64 >= 0.999 * blocks as f64,
        "{same_blocks} of {blocks}"
    );
}
