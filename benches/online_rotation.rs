//! What an online rotation costs in a forward pass: the Hadamard (and random orthogonal)
//! transform of a layer input against the matmul of the layer it feeds, for SmolLM2-135M's
//! widths (576 → q/k/v/gate/up/o inputs, 1536 → the down-projection input) on 2048 tokens.
//!
//! Run: `cargo bench --bench online_rotation`. For each width it prints, measured in the same
//! run (median of 5 after a warm-up):
//! - the layer's matmul `[tokens, n] × [n, m]` on `Device::flex()` (the baseline);
//! - `Rotation::apply_tensor` on the autodiff device (Burn tensor ops, differentiable: what a
//!   learned-rounding forward runs), Hadamard and dense random orthogonal, with the ratio to
//!   the matmul;
//! - `Rotation::apply_tensor` on plain `flex`, which takes the host path (FWHT over the
//!   power-of-two factor and a small product with the seed matrix, `O(n log n + n·K)` per
//!   row, plus the buffer round trip): what evaluation and calibration run.

use burn::tensor::{Device, Distribution, Tensor};
use burn_quant_ptq::stage1::Rotation;
use support::median_secs;

const TOKENS: usize = 2048;

fn main() {
    let device = Device::flex();
    println!("online rotation cost per forward, {TOKENS} tokens (median of 5)");
    println!(
        "{:>6} {:>6} {:>12} {:>22} {:>22} {:>22}",
        "n",
        "m",
        "matmul ms",
        "hadamard autodiff ms (×)",
        "hadamard flex ms (×)",
        "ort autodiff ms (×)"
    );
    for (n, m) in [(576usize, 1536usize), (1536, 576)] {
        let x = Tensor::<2>::random([TOKENS, n], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([n, m], Distribution::Normal(0.0, 0.02), &device);
        let had = Rotation::hadamard(n).expect("SmolLM2 widths have a Hadamard");
        let ort = Rotation::random_orthogonal(n, 0);
        let sync = |t: Tensor<2>| {
            let _ = t.into_data();
        };
        let time = |f: &mut dyn FnMut()| {
            f();
            median_secs(5, f) * 1e3
        };
        let base = time(&mut || sync(x.clone().matmul(w.clone())));
        let xa = Tensor::<2>::from_data(x.clone().into_data(), &device.clone().autodiff());
        let tensor = time(&mut || sync(had.apply_tensor(xa.clone()).expect("width fits")));
        let host_ms = time(&mut || sync(had.apply_tensor(x.clone()).expect("width fits")));
        let dense = time(&mut || sync(ort.apply_tensor(xa.clone()).expect("width fits")));
        println!(
            "{n:>6} {m:>6} {base:>12.2} {:>22} {:>22} {:>22}",
            format!("{tensor:.2} ({:.2}×)", tensor / base),
            format!("{host_ms:.2} ({:.2}×)", host_ms / base),
            format!("{dense:.2} ({:.2}×)", dense / base),
        );
    }
}
