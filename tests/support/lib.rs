//! Helpers shared by the workspace's examples, cross-crate tests and benchmarks.
#![warn(missing_docs)]

use std::path::PathBuf;

/// The shared data directory (`../shared/data` beside the repository root).
pub fn shared_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// Path of a file under the shared data directory, or `None` with a printed notice when it is
/// absent. With `BURNQ_REQUIRE_DATA=1` (as CI sets it) a missing file is a panic instead, so a
/// test cannot pass by skipping.
pub fn shared_data(relative: &str) -> Option<PathBuf> {
    let path = shared_data_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("BURNQ_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("BURNQ_REQUIRE_DATA=1 but {} is missing", path.display());
    }
    eprintln!("notice: skipping, {} is absent", path.display());
    None
}

/// Median of repeated timings of `f`, in seconds (benchmarks run on noisy machines).
pub fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

pub use burn_quant::core::metrics::sqnr_db;

/// Reads an F32 tensor from a safetensors file and returns it transposed from PyTorch's
/// `[out, in]` to Burn's `Linear` layout `[in, out]`, as (data, [in, out]).
pub fn read_linear_weight(bytes: &[u8], name: &str) -> Result<(Vec<f32>, [usize; 2]), String> {
    let st = safetensors_view(bytes)?;
    let t = st.tensor(name).map_err(|e| format!("{name}: {e}"))?;
    let shape = t.shape();
    if shape.len() != 2 || t.dtype() != safetensors::Dtype::F32 {
        return Err(format!(
            "{name}: expected a 2-D F32 tensor, got {:?} {:?}",
            t.dtype(),
            shape
        ));
    }
    let (out, inp) = (shape[0], shape[1]);
    let raw = t.data();
    let mut w = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            let k = (o * inp + i) * 4;
            w[i * out + o] = f32::from_le_bytes([raw[k], raw[k + 1], raw[k + 2], raw[k + 3]]);
        }
    }
    Ok((w, [inp, out]))
}

fn safetensors_view(bytes: &[u8]) -> Result<safetensors::SafeTensors<'_>, String> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())
}
