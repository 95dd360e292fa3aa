//! GPTQ time per linear layer for SmolLM2-135M's shapes (d_in × d_out = 576×576, 576×192,
//! 576×1536, 1536×576) with 16×512 calibration tokens.
//!
//! Run: `cargo bench --bench gptq_layer`. For each shape it prints, measured in the same run:
//! - the statistics accumulation (`H = XᵀX` over 16 batches of 512 tokens) on the host path
//!   (`gemm` on the raw buffers, the default) and on the device path (Burn `matmul` on
//!   `Device::flex()`), each with its achieved GFLOP/s;
//! - the algorithm (factorization + sweep) for W4 symmetric groups of 128 (d_in = 576 ends in
//!   a short group of 64), with and without act-order;
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
use burn_quant_ptq::{Accumulation, CalibInputs, Gptq, LayerStats, Qronos, Stage2Algorithm};
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
    use burn_quant::llm::gguf::LlamaGgufSource;
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

/// Seconds of a `k³` GEMM in `T` through the crate's wrapper (median of 5).
fn gemm_secs<T: burn_quant_ptq::linalg::Real>(k: usize, a: &[T], b: &[T], zero: T, one: T) -> f64 {
    let mut c = vec![zero; k * k];
    median_secs(5, || {
        matmul(
            ViewMut::rows(&mut c, k, k),
            false,
            zero,
            View::rows(a, k, k),
            View::rows(b, k, k),
            one,
        )
    })
}

fn main() {
    let threads = rayon::current_num_threads();
    // The machine's matmul rates: 1024³ GEMMs through the same kernel, f32 and f64.
    let k = 1024;
    let flop = 2.0 * (k * k * k) as f64;
    let (a, b) = (normal(k * k, 1), normal(k * k, 2));
    let rate32 = flop / gemm_secs(k, &a, &b, 0.0f32, 1.0) / 1e9;
    let (a64, b64): (Vec<f64>, Vec<f64>) = (
        a.iter().map(|&v| v as f64).collect(),
        b.iter().map(|&v| v as f64).collect(),
    );
    let rate64 = flop / gemm_secs(k, &a64, &b64, 0.0f64, 1.0) / 1e9;
    println!(
        "GPTQ per linear layer, {BATCHES}×{TOKENS} calibration tokens, {threads} threads; \
         measured matmul rate (1024³): f32 {rate32:.1} GFLOP/s, f64 {rate64:.1} GFLOP/s"
    );
    println!(
        "statistics: H = XᵀX over {BATCHES} batches (host: gemm, upper block triangle only; \
         device: Burn matmul on flex, full product); 'paired' adds G = X̃ᵀX (GPFQ/GPTAQ/Qronos)"
    );
    println!(
        "GF/s columns count the full Gram product (2·N·n²), so the host path's symmetric saving \
         shows as a rate above the GEMM rate"
    );
    println!(
        "{:<10} {:>5} | {:>15} {:>15} {:>9} | {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} {:>8}",
        "d_in×d_out",
        "group",
        "stats host",
        "stats device",
        "paired",
        "gptq",
        "act-ord",
        "qronos",
        "stat GF",
        "fact GF",
        "swp GF",
        "at rate"
    );
    let device = Device::flex();
    let (mut model_acc, mut model_algo, mut model_paired, mut model_qronos) = (0.0, 0.0, 0.0, 0.0);
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
        // A quantized-path input of the same tokens (a perturbed copy), for the paired path.
        let batches_q: Vec<Vec<f32>> = batches
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let noise = normal(x.len(), 100 + i as u64);
                x.iter().zip(&noise).map(|(a, e)| a + 0.05 * e).collect()
            })
            .collect();
        let n_tok = (BATCHES * TOKENS) as f64;
        let full_gram = 2.0 * n_tok * (d_in * d_in) as f64;

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
        let mut paired = LayerStats::new(d_in, CalibInputs::FloatAndQuantized);
        let t_paired = median_secs(3, || {
            paired = LayerStats::new(d_in, CalibInputs::FloatAndQuantized);
            for (x, xq) in batches.iter().zip(&batches_q) {
                paired.observe_host(x, Some(xq)).expect("valid batch");
            }
        });

        let group = 128;
        let spec = QuantSpec::int4_weight_per_group(group);
        let time = |algo: &dyn Stage2Algorithm, stats: &LayerStats| {
            median_secs(3, || {
                algo.quantize_host(&w, [d_in, d_out], stats, &spec)
                    .expect("quantizes");
            })
        };
        let t_gptq = time(&Gptq::default(), &stats);
        let t_act = time(&Gptq::default().with_act_order(true), &stats);
        let t_qronos = time(&Qronos::default().with_act_order(true), &paired);
        let (n, m) = (d_in as f64, d_out as f64);
        // Block-upper Gram (128-column blocks), Cholesky (n³/3 multiply-adds) + triangular
        // inverse (n³/6) in f64, lazy sweep (n²·m/2 in the trailing GEMMs + n·B·m/2 in-block).
        let blocks = d_in.div_ceil(128);
        let sym_cols: f64 = (0..blocks).map(|i| (d_in - 128 * i) as f64).sum::<f64>() * 128.0;
        let stat_flop = 2.0 * n_tok * sym_cols.min(n * n);
        let fact_flop = n * n * n;
        let sweep_flop = n * n * m + n * 128.0 * m;
        let at_rate =
            stat_flop / (rate32 * 1e9) + fact_flop / (rate64 * 1e9) + sweep_flop / (rate32 * 1e9);
        println!(
            "{:<10} {:>5} | {:>6.1}ms {:>5.0}GF/s {:>6.1}ms {:>5.0}GF/s {:>7.1}ms | {:>6.1}ms {:>6.1}ms {:>6.1}ms | {:>7.2} {:>7.2} {:>7.2} {:>6.1}ms",
            format!("{d_in}×{d_out}"),
            format!("g{group}"),
            t_acc * 1e3,
            full_gram / t_acc / 1e9,
            t_dev * 1e3,
            full_gram / t_dev / 1e9,
            t_paired * 1e3,
            t_gptq * 1e3,
            t_act * 1e3,
            t_qronos * 1e3,
            stat_flop / 1e9,
            fact_flop / 1e9,
            sweep_flop / 1e9,
            at_rate * 1e3,
        );
        // Whole model, per block: q/k/v share one 576-wide input, o has its own, gate/up share
        // one, down reads the 1536-wide one; seven layers are quantized.
        let (inputs, layers) = match (d_in, d_out) {
            (576, 576) => (2.0, 2.0),  // q/k/v input + o input; q and o
            (576, 192) => (0.0, 2.0),  // k and v
            (576, 1536) => (1.0, 2.0), // gate/up input; gate and up
            _ => (1.0, 1.0),           // down
        };
        model_acc += 30.0 * inputs * t_acc;
        model_paired += 30.0 * inputs * t_paired;
        model_algo += 30.0 * layers * t_act;
        model_qronos += 30.0 * layers * t_qronos;
    }
    println!(
        "whole model, 30 blocks (estimate from the rows above; the calibration forward passes \
         are not included): GPTQ act-order: statistics {model_acc:.1} s + algorithm \
         {model_algo:.1} s = {:.1} s; Qronos act-order: paired statistics {model_paired:.1} s + \
         algorithm {model_qronos:.1} s = {:.1} s",
        model_acc + model_algo,
        model_paired + model_qronos
    );
}
