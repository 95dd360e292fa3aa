//! Why a rotation can hurt weight-only RTN: per-layer output error of RTN on SmolLM2's real
//! inputs, with and without HIP's input rotation, beside the same on white (isotropic) inputs.
//!
//! ```text
//! cargo run --release --example rotation_weight_error [--bits B] [--group G] [--blocks N] [--verbose]
//! ```
//!
//! For each block linear, `‖X·W − X·Ŵ‖ / ‖X·W‖` is printed (as SQNR, dB) for
//! * RTN on `W` with the layer's real calibration input `X`,
//! * RTN on the rotated `M·W` with the rotated input `X·Mᵀ` (what HIP runs),
//! * the same two with white Gaussian inputs of the same width.
//!
//! On white inputs the output error is `‖W − Ŵ‖` up to a constant, and the rotation lowers it
//! whenever it lowers the weights' range. On real inputs the error is weighted by the input
//! covariance: in the original basis a few input channels carry most of the energy; the
//! rotation spreads that energy over all channels, so the error of every rounded weight
//! becomes visible.

use burn::tensor::{Device, Distribution, Tensor};
use burn_quant::QuantSpec;
use burn_quant_llm::{
    CALIBRATION_TEXT, CalibrationConfig, InputSite, LinearSlot, calibration_windows_from_text,
    load_with_tokenizer,
};
use burn_quant_ptq::Stage2Algorithm;
use burn_quant_ptq::stage1::Rotation;

fn sqnr_db(x: &Tensor<2>, w: &Tensor<2>, w_hat: &Tensor<2>) -> f64 {
    let y = x.clone().matmul(w.clone());
    let e = y.clone() - x.clone().matmul(w_hat.clone());
    let num = y.square().sum().into_scalar::<f32>() as f64;
    let den = e.square().sum().into_scalar::<f32>() as f64;
    10.0 * (num / den).log10()
}

fn main() -> burn_quant::Result<()> {
    let (mut bits, mut group, mut blocks, mut verbose) = (3u8, 128usize, usize::MAX, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut next = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bits" => bits = next()?.parse()?,
            "--group" => group = next()?.parse()?,
            "--blocks" => blocks = next()?.parse()?,
            "--verbose" => verbose = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (Some(model_path), Some(calib)) = (
        support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        support::shared_data(CALIBRATION_TEXT),
    ) else {
        return Ok(());
    };
    let device = Device::flex();
    let m = load_with_tokenizer(&model_path, &device)?;
    let text = std::fs::read_to_string(calib)?;
    let windows = calibration_windows_from_text(
        &m.tokenizer,
        &text,
        &CalibrationConfig::default().with_num_windows(2),
    )?;
    let spec = if group == 0 {
        QuantSpec::int4_weight_per_group(128)
            .with_bits(bits)
            .with_granularity(burn_quant::Granularity::PerChannel { axis: 1 })
    } else {
        QuantSpec::int4_weight_per_group(group).with_bits(bits)
    };
    let rtn = burn_quant_ptq::Rtn::default();
    let quantize = |w: &Tensor<2>| -> burn_quant::Result<Tensor<2>> {
        let stats = rtn.new_stats(w.dims()[0]);
        Ok(rtn.quantize(w, &stats, &spec)?.tensor.dequantize())
    };
    println!(
        "RTN W{bits} {}: output SQNR (dB)",
        if group == 0 {
            "per-channel".to_string()
        } else {
            format!("g{group}")
        }
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>10}",
        "layer", "real X", "real+HIP", "white X", "white+HIP"
    );
    let rows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    // Per slot: sums of the four SQNRs, and how many layers HIP made worse on real inputs.
    let mut sums = [[0f64; 4]; 7];
    let mut worse = [0usize; 7];
    let mut count = 0usize;
    for i in 0..blocks.min(m.model.num_blocks()) {
        let mut sites = std::collections::BTreeMap::new();
        m.model.observe_block(
            m.model.tokens(&rows)?,
            i,
            &mut |s: InputSite, t: &Tensor<3>| {
                let [b, l, d] = t.dims();
                sites.insert(s, t.clone().reshape([b * l, d]));
            },
        )?;
        for slot in LinearSlot::ALL {
            let x: &Tensor<2> = &sites[&slot.input()];
            let w = m.model.block(i)?.linear(slot).weight.val();
            let d_in = w.dims()[0];
            let rot = Rotation::hadamard(d_in)?;
            let xr = rot.apply_tensor(x.clone())?;
            let mut wr = w.clone().into_data().try_to_vec::<f32>()?;
            rot.apply_columns(&mut wr, d_in, w.dims()[1])?;
            let wr = Tensor::<2>::from_data(burn::tensor::TensorData::new(wr, w.dims()), &device);
            let white =
                Tensor::<2>::random([x.dims()[0], d_in], Distribution::Normal(0.0, 1.0), &device);
            let white_r = rot.apply_tensor(white.clone())?;
            let (wq, wrq) = (quantize(&w)?, quantize(&wr)?);
            let v = [
                sqnr_db(x, &w, &wq),
                sqnr_db(&xr, &wr, &wrq),
                sqnr_db(&white, &w, &wq),
                sqnr_db(&white_r, &wr, &wrq),
            ];
            let k = slot as usize;
            sums[k].iter_mut().zip(v).for_each(|(s, v)| *s += v);
            worse[k] += usize::from(v[1] < v[0]);
            if verbose {
                println!(
                    "{:<26} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                    format!("{i}.{}", slot.hf_name()),
                    v[0],
                    v[1],
                    v[2],
                    v[3]
                );
            }
        }
        count += 1;
    }
    println!("mean over {count} blocks (and the blocks where HIP lowers the real-input SQNR):");
    for slot in LinearSlot::ALL {
        let k = slot as usize;
        let m = sums[k].map(|s| s / count as f64);
        println!(
            "{:<26} {:>10.2} {:>10.2} {:>10.2} {:>10.2}   worse in {}/{count}",
            slot.hf_name(),
            m[0],
            m[1],
            m[2],
            m[3],
            worse[k]
        );
    }
    Ok(())
}
