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
