//! GGUF block-encoding throughput on a 4096×4096 f32 tensor (N(0, 1) values), beside a plain
//! read (sum) of the same tensor.
//!
//! Run: `cargo bench --bench gguf_encode`. Prints MB/s of f32 input encoded, for the serial
//! per-block path (`GgmlBlock::encode`, what `codec::encode` did before it went parallel) and the
//! parallel one (`codec::encode`, rayon over blocks), and each as a multiple of the read's time
//! measured in the same run (the machines are noisy; ratios are what to compare). The parallel
//! bytes are checked equal to the serial ones.

use burn_quant::export::gguf::GgmlType;
use burn_quant::export::gguf::codec::{self, GgmlBlock, Q4_0, Q4_K};
use rayon::prelude::*;
use support::median_secs;

const N: usize = 4096;

/// Deterministic N(0, 1) values: xorshift64 + Box-Muller.
fn normal(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut uni = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (a, b) = (uni(), uni());
            ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
        })
        .collect()
}

fn main() {
    let threads = rayon::current_num_threads();
    let x = normal(N * N);
    let mb = (N * N * 4) as f64 / 1e6;
    println!(
        "GGUF encode throughput, {N}x{N} f32 ({mb:.0} MB), {threads} threads, MB/s of f32 input"
    );

    let read1 = median_secs(7, || {
        std::hint::black_box(x.iter().sum::<f32>());
    });
    let read = median_secs(7, || {
        std::hint::black_box(
            x.par_chunks(1 << 16)
                .map(|c| c.iter().sum::<f32>())
                .sum::<f32>(),
        );
    });
    println!(
        "{:<40} {:>9.0} MB/s",
        "plain read (sum), one thread",
        mb / read1
    );
    println!(
        "{:<40} {:>9.0} MB/s  (baseline)",
        format!("plain read (sum), {threads} threads"),
        mb / read
    );

    let row = |label: &str, secs: f64| {
        println!(
            "{label:<40} {:>9.1} MB/s  ({:.0}x the read's time)",
            mb / secs,
            secs / read
        );
    };
    let mut serial_bytes = Vec::new();
    let t = median_secs(3, || serial_bytes = Q4_0::encode(&x).expect("Q4_0"));
    row("Q4_0 serial (GgmlBlock::encode)", t);
    let mut par_bytes = Vec::new();
    let tp = median_secs(5, || {
        par_bytes = codec::encode(GgmlType::Q4_0, &x).expect("Q4_0")
    });
    row("Q4_0 parallel (codec::encode)", tp);
    assert!(
        par_bytes == serial_bytes,
        "Q4_0: parallel bytes differ from serial"
    );
    println!("{:<40} {:>9.2}x", "Q4_0 parallel speed-up", t / tp);

    let t = median_secs(3, || serial_bytes = Q4_K::encode(&x).expect("Q4_K"));
    row("Q4_K serial (GgmlBlock::encode)", t);
    let tp = median_secs(3, || {
        par_bytes = codec::encode(GgmlType::Q4_K, &x).expect("Q4_K")
    });
    row("Q4_K parallel (codec::encode)", tp);
    assert!(
        par_bytes == serial_bytes,
        "Q4_K: parallel bytes differ from serial"
    );
    println!("{:<40} {:>9.2}x", "Q4_K parallel speed-up", t / tp);

    // The imatrix path for scale: a 36-step sweep per sub-block instead of 20.
    let imp: Vec<f32> = normal(N).iter().map(|v| (1.5 * v).exp()).collect();
    let tw = median_secs(3, || {
        std::hint::black_box(codec::encode_weighted(GgmlType::Q4_K, &x, N, &imp).expect("Q4_K"));
    });
    row("Q4_K importance path, parallel", tw);
}
