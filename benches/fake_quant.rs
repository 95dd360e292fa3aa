//! Fake-quant throughput on a 4096×4096 f32 tensor, beside a plain copy of the same tensor.
//!
//! Run: `cargo bench --bench fake_quant`. Prints GB/s of f32 input processed and the ratio to
//! the copy measured in the same run (the machines are noisy; ratios are what to compare).

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::core::host;
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

    for (name, spec) in [
        ("int8 per-channel", QuantSpec::int8_weight_per_channel()),
        ("MXFP4 (e2m1, block 32, E8M0)", QuantSpec::mxfp4()),
        (
            "MXFP4, blocks along axis 1",
            QuantSpec::mxfp4().with_axis(1),
        ),
        (
            "fp8 e4m3 per-tensor",
            QuantSpec::fp8_e4m3_weight_per_tensor(),
        ),
    ] {
        let layout = spec.granularity.layout(&[N, N]).expect("valid layout");
        let t_params = median_secs(3, || {
            host::compute_params(&src, &[N, N], &spec).expect("finite input");
        });
        let params = host::compute_params(&src, &[N, N], &spec).expect("finite input");
        let mut buf = src.clone();
        let fused = median_secs(7, || {
            host::fake_quant_in_place(&mut buf, &layout, &spec, &params)
        });
        println!(
            "{:<44} {:>8.2} GB/s  ({:.2}x copy)",
            format!("{name}: fused kernel, in place"),
            gbs(fused),
            copy / fused
        );

        let tparams = compute_params(&x, &spec).expect("finite input");
        let api = median_secs(7, || {
            let _ = fake_quant_with(x.clone(), &spec, &tparams).expect("valid");
        });
        println!(
            "{:<44} {:>8.2} GB/s  ({:.2}x copy)",
            format!("{name}: fake_quant_with (tensor in/out)"),
            gbs(api),
            copy / api
        );

        let tensor_path = median_secs(3, || {
            let _ = fake_quant_custom(x.clone(), &spec, &tparams, &spec.rounding)
                .expect("valid")
                .into_data();
        });
        println!(
            "{:<44} {:>8.2} GB/s  ({:.2}x copy)",
            format!("{name}: differentiable tensor path"),
            gbs(tensor_path),
            copy / tensor_path
        );
        println!(
            "{:<44} {:>8.2} GB/s",
            format!("{name}: scale statistics (absmax)"),
            gbs(t_params)
        );
    }
}
