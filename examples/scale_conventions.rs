//! The four symmetric scale conventions on one int4 group, and their error on a bell-shaped
//! weight matrix in groups of 128: `cargo run --release --example scale_conventions`.

use burn_quant::prelude::*;

fn main() -> Result<(), QuantError> {
    let device = Device::flex();
    let group = [1.6f32, -0.8, 0.4, 0.2, -0.1, 0.0, 1.0, -0.6];
    let x = Tensor::<1>::from_floats(group, &device);
    println!("one int4 group {group:?}");
    for conv in [
        SymmetricScale::Qmax,
        SymmetricScale::NegQmin,
        SymmetricScale::SignedExtreme,
        SymmetricScale::mse(),
    ] {
        let spec = QuantSpec::int4_weight_per_group(group.len()).with_symmetric_scale(conv);
        let q = quantize(x.clone(), &spec)?;
        let s: Vec<f32> = q
            .scales
            .clone()
            .try_into_vec_as::<f32>()
            .expect("f32 scales");
        println!(
            "  {:<15} scale {:>8.5}  codes {:?}",
            conv.name(),
            s[0],
            q.codes_vec()
        );
    }

    // A 512 × 64 weight of sums of uniforms (bell-shaped), int4 in groups of 128 along the input.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let w: Vec<f32> = (0..512 * 64)
        .map(|_| (0..4).map(|_| uniform()).sum())
        .collect();
    let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [512, 64]), &device);
    println!("int4 g128 on a bell-shaped 512×64 weight: mean squared error");
    for conv in [
        SymmetricScale::Qmax,
        SymmetricScale::NegQmin,
        SymmetricScale::SignedExtreme,
        SymmetricScale::mse(),
    ] {
        let spec = QuantSpec::int4_weight_per_group(128).with_symmetric_scale(conv);
        let back: Vec<f32> = quantize(wt.clone(), &spec)?
            .dequantize()
            .try_into_vec_as::<f32>()
            .expect("f32 values");
        let mse = w
            .iter()
            .zip(&back)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / w.len() as f64;
        println!("  {:<15} {mse:.3e}", conv.name());
    }
    Ok(())
}
