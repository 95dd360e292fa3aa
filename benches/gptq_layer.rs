//! GPTQ time per linear layer for SmolLM2-135M's shapes (d_in × d_out = 576×576, 576×192,
//! 576×1536, 1536×576) with 16×512 calibration tokens.
//!
//! Run: `cargo bench --bench gptq_layer`. For each shape it prints, measured in the same run:
//! - the statistics accumulation (`H = XᵀX` over 16 batches of 512 tokens) on the host path
//!   (`gemm` on the raw buffers, the default) and on the device path (Burn `matmul` on
//!   `Device::flex()`), each with its achieved GFLOP/s;
//! - the algorithm (factorization + sweep) for W4 symmetric groups (g128 where d_in allows it,
//!   g64 for d_in = 576, which 128 does not divide), with and without act-order;
//! - the FLOP-count estimate of each part and the time it would take at the machine's measured
//!   matmul rate (a plain 1024³ f32 GEMM, same run), so the gap to the hardware shows.
//!
//! Weights are the shared model's block-0 projections when the data is present (otherwise
//! N(0, 1/d_in)); inputs are correlated Gaussian activations (timing does not depend on their
//! values). Ends with a whole-model estimate for GPTQ over 30 blocks (7 layers, 4 distinct
//! inputs each).

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::core::QuantSpec;
use burn_quant_ptq::linalg::{View, ViewMut, matmul};
use burn_quant_ptq::{Accumulation, CalibInputs, Gptq, LayerStats, Stage2Algorithm};
use support::median_secs;

const TOKENS: usize = 512;
const BATCHES: usize = 16;

/// Deterministic N(0, 1) values: xorshift64 + Box-Muller.
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
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

/// `tokens × n` activations with correlated features: Z·A (A = I + 0.3·N(0,1)/√n).
fn activations(tokens: usize, n: usize, seed: u64) -> Vec<f32> {
    let z = normal(tokens * n, seed);
    let mut a: Vec<f32> = normal(n * n, seed + 1)
        .iter()
        .map(|v| 0.3 * v / (n as f32).sqrt())
        .collect();
    for j in 0..n {
        a[j * n + j] += 1.0;
    }
    let mut x = vec![0f32; tokens * n];
    matmul(
        ViewMut::rows(&mut x, tokens, n),
        false,
        0.0,
        View::rows(&z, tokens, n),
        View::rows(&a, n, n),
        1.0,
    );
    x
}

/// The shared model's block-0 weight of this shape in Burn layout, if present.
fn real_weight(d_in: usize, d_out: usize) -> Option<Vec<f32>> {
    use burn_quant::export::gguf::LlamaGgufSource;
    let path = support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let name = match (d_in, d_out) {
        (576, 576) => "model.layers.0.self_attn.q_proj.weight",
        (576, 192) => "model.layers.0.self_attn.k_proj.weight",
        (576, 1536) => "model.layers.0.mlp.gate_proj.weight",
        (1536, 576) => "model.layers.0.mlp.down_proj.weight",
        _ => return None,
    };
    let t = LlamaGgufSource::open(path).ok()?.tensor(name).ok()?;
    // HF [out, in] → Burn [in, out].
    let (out, inp) = (t.shape[0], t.shape[1]);
    let mut w = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            w[i * out + o] = t.data[o * inp + i];
        }
    }
    Some(w)
}

fn main() {
    let threads = rayon::current_num_threads();
    // The machine's matmul rate: a 1024³ f32 GEMM through the same kernel.
    let k = 1024;
    let (a, b) = (normal(k * k, 1), normal(k * k, 2));
    let mut c = vec![0f32; k * k];
    let t_mm = median_secs(5, || {
        matmul(
            ViewMut::rows(&mut c, k, k),
            false,
            0.0,
            View::rows(&a, k, k),
            View::rows(&b, k, k),
            1.0,
        )
    });
    let rate = 2.0 * (k * k * k) as f64 / t_mm / 1e9;
    println!(
        "GPTQ per linear layer, {BATCHES}×{TOKENS} calibration tokens, {threads} threads; \
         measured f32 matmul rate (1024³): {rate:.1} GFLOP/s"
    );
    println!(
        "{:<10} {:>6} | {:>9} {:>7} | {:>9} {:>7} | {:>9} {:>9} {:>9} | {:>8} {:>8}",
        "d_in×d_out",
        "group",
        "acc host",
        "GFLOP/s",
        "acc dev",
        "GFLOP/s",
        "gptq",
        "act-ord",
        "at rate",
        "acc GF",
        "algo GF"
    );
    let device = Device::flex();
    let mut model_acc = 0.0;
    let mut model_algo = 0.0;
    for (d_in, d_out) in [(576, 576), (576, 192), (576, 1536), (1536, 576)] {
        let w = real_weight(d_in, d_out).unwrap_or_else(|| {
            normal(d_in * d_out, 3)
                .iter()
                .map(|v| v / (d_in as f32).sqrt())
                .collect()
        });
        let batches: Vec<Vec<f32>> = (0..BATCHES)
            .map(|i| activations(TOKENS, d_in, 10 + i as u64))
            .collect();
        let n_tok = (BATCHES * TOKENS) as f64;
        let acc_flop = 2.0 * n_tok * (d_in * d_in) as f64;

        let mut stats = LayerStats::new(d_in, CalibInputs::Quantized);
        let t_acc = median_secs(3, || {
            stats = LayerStats::new(d_in, CalibInputs::Quantized);
            for x in &batches {
                stats.observe_host(x, None).expect("valid batch");
            }
        });
        let tensors: Vec<Tensor<2>> = batches
            .iter()
            .map(|x| Tensor::from_data(TensorData::new(x.clone(), [TOKENS, d_in]), &device))
            .collect();
        let t_dev = median_secs(3, || {
            let mut s = LayerStats::new(d_in, CalibInputs::Quantized)
                .with_accumulation(Accumulation::Device);
            for x in &tensors {
                s.observe(x, None).expect("valid batch");
            }
        });

        let group = if d_in.is_multiple_of(128) { 128 } else { 64 };
        let spec = QuantSpec::int4_weight_per_group(group);
        let run = |gptq: Gptq| {
            let mut secs = 0.0;
            let t = median_secs(3, || {
                let q = gptq
                    .quantize_host(&w, [d_in, d_out], &stats, &spec)
                    .expect("quantizes");
                secs = q.report.seconds;
            });
            (t, secs)
        };
        let (t_gptq, _) = run(Gptq::default());
        let (t_act, _) = run(Gptq::default().with_act_order(true));
        let (n, m) = (d_in as f64, d_out as f64);
        // Cholesky (n³/3 multiply-adds) + triangular inverse (n³/3) + lazy updates (n²·m/2
        // in the trailing GEMMs, n·B·m/2 in-block), 2 flops each.
        let algo_flop = 2.0 * (2.0 * n * n * n / 3.0 + n * n * m / 2.0 + n * 128.0 * m / 2.0);
        println!(
            "{:<10} {:>6} | {:>8.1}ms {:>7.1} | {:>8.1}ms {:>7.1} | {:>7.1}ms {:>7.1}ms {:>7.1}ms | {:>8.2} {:>8.2}",
            format!("{d_in}×{d_out}"),
            format!("g{group}"),
            t_acc * 1e3,
            acc_flop / t_acc / 1e9,
            t_dev * 1e3,
            acc_flop / t_dev / 1e9,
            t_gptq * 1e3,
            t_act * 1e3,
            (acc_flop + algo_flop) / (rate * 1e9) * 1e3,
            acc_flop / 1e9,
            algo_flop / 1e9,
        );
        // Whole model: per block, q/k/v share the 576 input, gate/up share theirs; o and down
        // have their own. Accumulations: 3 × 576 inputs + 1 × 1536; algorithm: each layer.
        let per_block_layers = match (d_in, d_out) {
            (576, 576) => 2.0,  // q, o
            (576, 192) => 2.0,  // k, v
            (576, 1536) => 2.0, // gate, up
            _ => 1.0,           // down
        };
        let per_block_inputs = match (d_in, d_out) {
            (576, 576) => 2.0, // q/k/v input, o input
            (576, 1536) => 1.0,
            (1536, 576) => 1.0,
            _ => 0.0,
        };
        model_acc += 30.0 * per_block_inputs * t_acc;
        model_algo += 30.0 * per_block_layers * t_act;
    }
    println!(
        "whole model (30 blocks, act-order): statistics {model_acc:.1} s + GPTQ {model_algo:.1} s \
         = {:.1} s, excluding the calibration forward passes",
        model_acc + model_algo
    );
}
