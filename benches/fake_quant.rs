//! Fake-quant throughput on a 4096×4096 f32 tensor, beside a plain copy of the same tensor.
//!
//! Run: `cargo bench --bench fake_quant`. Prints GB/s of f32 input processed and the ratio to
//! the copy measured in the same run (the machines are noisy; ratios are what to compare).
//! The issue-16 table: `fake_quant_with` (the fused op on Flex) and `compute_params` (scale
//! statistics) per spec, as ratios to the multi-threaded copy; then the reference chain.

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::core::fake_quant_reference;
use burn_quant::prelude::*;
use rayon::prelude::*;
use support::median_secs;

const N: usize = 4096;

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "fake-quant throughput, {N}x{N} f32 ({} MiB), {threads} threads, median of 7",
        (N * N * 4) >> 20
    );
    let src: Vec<f32> = (0..N * N)
        .map(|i| ((i as u64).wrapping_mul(2654435761) % 20001) as f32 / 10000.0 - 1.0)
        .collect();
    let bytes = (N * N * 4) as f64;
    let gbs = |secs: f64| bytes / secs / 1e9;

    let mut dst = vec![0f32; N * N];
    let copy1 = median_secs(7, || dst.copy_from_slice(&src));
    println!(
        "{:<44} {:>8.2} GB/s",
        "plain copy, one thread (memcpy)",
        gbs(copy1)
    );
    // The baseline: a copy on all threads, like the kernels below.
    let copy = median_secs(7, || {
        dst.par_chunks_mut(1 << 15)
            .zip(src.par_chunks(1 << 15))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
    println!(
        "{:<44} {:>8.2} GB/s  (baseline)",
        format!("plain copy, {threads} threads"),
        gbs(copy)
    );

    let mut inplace = src.clone();
    let one = std::hint::black_box(1.0f32);
    let trivial = median_secs(7, || {
        inplace
            .par_chunks_mut(1 << 15)
            .for_each(|c| c.iter_mut().for_each(|x| *x *= one))
    });
    println!(
        "{:<44} {:>8.2} GB/s  ({:.2}x copy)",
        "in place x *= 1 (read+write, same buffer)",
        gbs(trivial),
        copy / trivial
    );

    // What any tensor-in/tensor-out op pays at least: a new 64 MiB output (fresh pages from
    // the OS, zeroed by the kernel at first touch) written in parallel from the input.
    let alloc_copy = median_secs(7, || {
        let mut out = Vec::<f32>::with_capacity(N * N);
        out.spare_capacity_mut()
            .par_chunks_mut(1 << 15)
            .zip(src.par_chunks(1 << 15))
            .for_each(|(d, s)| {
                for (d, &s) in d.iter_mut().zip(s) {
                    d.write(s);
                }
            });
        // SAFETY: every element was written above.
        unsafe { out.set_len(N * N) };
        std::hint::black_box(out);
    });
    println!(
        "{:<44} {:>8.2} GB/s  ({:.2}x copy)",
        "copy into a new buffer, 2 threads",
        gbs(alloc_copy),
        copy / alloc_copy
    );

    let device = Device::flex();
    let x = Tensor::<2>::from_data(TensorData::new(src.clone(), [N, N]), &device);
    let tensor_copy = median_secs(7, || {
        let _ = x.clone().add_scalar(0.0).into_data();
    });
    println!(
        "{:<44} {:>8.2} GB/s  ({:.2}x copy)",
        "Burn tensor add_scalar(0) + into_data",
        gbs(tensor_copy),
        copy / tensor_copy
    );

    // The rows of issue 16: the tensor-level API on Flex (the fused op: zero-copy read, one
    // write) and the scale statistics (compute_params reads the Flex storage in place).
    println!();
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "spec (4096x4096 f32, Flex)",
        "fq GB/s",
        "/copy",
        "owned",
        "/copy",
        "stats",
        "/copy"
    );
    let mut chain_rows = Vec::new();
    for (name, spec) in [
        ("int8 per-channel", QuantSpec::int8_weight_per_channel()),
        ("int4 g128", QuantSpec::int4_weight_per_group(128)),
        (
            "FP8 e4m3 per-tensor",
            QuantSpec::fp8_e4m3_weight_per_tensor(),
        ),
        ("MXFP4 (e2m1, block 32, E8M0)", QuantSpec::mxfp4()),
    ] {
        let stats = median_secs(7, || {
            let _ = compute_params(&x, &spec).expect("finite input");
        });
        let tparams = compute_params(&x, &spec).expect("finite input");
        let api = median_secs(7, || {
            let _ = fake_quant_with(x.clone(), &spec, &tparams).expect("valid");
        });
        // An input the call owns (nothing else holds it) is overwritten in place: each call
        // quantizes the previous call's output (same work per element).
        let mut owned = Some(Tensor::<2>::from_data(
            TensorData::new(src.clone(), [N, N]),
            &device,
        ));
        let in_place = median_secs(7, || {
            let x = owned.take().expect("put back by every call");
            owned = Some(fake_quant_with(x, &spec, &tparams).expect("valid"));
        });
        println!(
            "{:<34} {:>8.2} {:>7.2}x {:>8.2} {:>7.2}x {:>8.2} {:>7.2}x",
            name,
            gbs(api),
            copy / api,
            gbs(in_place),
            copy / in_place,
            gbs(stats),
            copy / stats
        );
        let tensor_path = median_secs(3, || {
            let _ = fake_quant_reference(x.clone(), &spec, &tparams)
                .expect("valid")
                .into_data();
        });
        chain_rows.push((name, tensor_path));
    }
    println!();
    for (name, t) in chain_rows {
        println!(
            "{:<44} {:>8.2} GB/s  ({:.2}x copy)",
            format!("{name}: reference chain (fake_quant_reference)"),
            gbs(t),
            copy / t
        );
    }
}
