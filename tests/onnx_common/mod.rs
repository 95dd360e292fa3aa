//! Shared by `onnx_export.rs` and `qonnx_export.rs`: `.npy` files to pass tensors to the
//! Python verifiers, running them, and comparisons.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::export::onnx::{ModelProto, save_onnx};

/// A directory for one test's files under cargo's per-target temporary directory.
pub fn work_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("onnx")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a little-endian f32 `.npy` (format version 1.0).
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes,
    // ending in a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

/// Reads a little-endian f32 C-order `.npy` written by numpy.
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "{header}");
    (shape, data)
}

/// A tensor read back from a verifier: shape and row-major values.
pub type Value = (Vec<usize>, Vec<f32>);

/// What a verifier script returned: the graph outputs then the fetched values, and (QDQ with
/// `--optimized`) the outputs of the optimised session.
pub struct Run {
    /// Graph outputs then fetched values, in order.
    pub values: Vec<Value>,
    /// Graph outputs of the optimised session.
    pub optimized: Vec<Value>,
    /// The script's JSON summary line.
    pub summary: String,
}

/// Saves `model`, runs `tests/py/<script>` on it with input `x`, fetching `fetch` values too.
/// `None` when the Python verifier is unavailable (the test then skips with a notice).
pub fn run_verifier(
    script: &str,
    dir: &Path,
    model: &ModelProto,
    x: &[f32],
    shape: &[usize],
    fetch: &[&str],
    extra: &[&str],
) -> Option<Run> {
    let model_path = dir.join("model.onnx");
    save_onnx(&model_path, model).unwrap();
    let input = dir.join("input.npy");
    write_npy(&input, shape, x);
    let out_dir = dir.join("out");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut args: Vec<&OsStr> = vec![
        model_path.as_os_str(),
        input.as_os_str(),
        out_dir.as_os_str(),
    ];
    for f in fetch {
        args.push(OsStr::new("--fetch"));
        args.push(OsStr::new(f));
    }
    args.extend(extra.iter().map(OsStr::new));
    let summary = support::run_python(script, &args)?.unwrap_or_else(|e| panic!("{e}"));
    let read_all = |prefix: &str| {
        (0..)
            .map(|i| out_dir.join(format!("{prefix}_{i}.npy")))
            .take_while(|p| p.exists())
            .map(|p| read_npy(&p))
            .collect::<Vec<_>>()
    };
    Some(Run {
        values: read_all("out"),
        optimized: read_all("opt"),
        summary: summary.trim().to_string(),
    })
}

/// Deterministic pseudo-random values in `[-amp, amp)` (SplitMix64).
pub fn uniform(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// A tensor of `shape` on the flex device.
pub fn tensor<const D: usize>(data: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), &Device::flex())
}

/// Host values of a tensor.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

/// Largest `|a − b| / (1 + |b|)`; panics on a length mismatch.
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x == y {
                0.0
            } else {
                (x - y).abs() / (1.0 + y.abs())
            }
        })
        .fold(0.0, f32::max)
}

/// Asserts `got` equals `want` element for element (bit-identical up to the sign of zero).
pub fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: element {i}: {g} != {w}");
    }
}

/// Asserts `got` is within `tol · (1 + |want|)` of `want` everywhere.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let e = max_rel_err(got, want);
    assert!(e <= tol, "{what}: max relative error {e} > {tol}");
}

/// One layer of an exported model: the value it writes and our reference for it, computed
/// from the verifier's own input of that layer.
pub struct Stage<'a> {
    /// Name of the layer's output value in the graph (`output` for the last).
    pub value: String,
    /// Bit-exact comparison (quantizers, ReLU) or round-off tolerance (MatMul, Conv).
    pub exact: bool,
    /// Our layer's `forward` on `(values, shape)`.
    pub forward: Box<dyn Fn(&[f32], &[usize]) -> Vec<f32> + 'a>,
}

/// Runs `model` with the verifier `script`, fetching every stage's output, and checks each
/// stage against our `forward` on the verifier's input of that stage: a round-off difference
/// upstream cannot then move a value across a rounding boundary. Returns the run (`values[0]`
/// is the graph output).
pub fn check_stages(
    script: &str,
    test: &str,
    model: &ModelProto,
    x: &[f32],
    shape: &[usize],
    stages: &[Stage<'_>],
    extra: &[&str],
) -> Option<Run> {
    let dir = work_dir(test);
    let fetch: Vec<&str> = stages[..stages.len() - 1]
        .iter()
        .map(|s| s.value.as_str())
        .collect();
    let run = run_verifier(script, &dir, model, x, shape, &fetch, extra)?;
    // values: [graph output, stage 0, …, stage n−2]; reorder as stages.
    let mut outs: Vec<Value> = run.values[1..].to_vec();
    outs.push(run.values[0].clone());
    let mut input = (shape.to_vec(), x.to_vec());
    for (i, stage) in stages.iter().enumerate() {
        let want = (stage.forward)(&input.1, &input.0);
        let what = format!("{test}: stage {i} ({})", stage.value);
        if stage.exact {
            assert_exact(&what, &outs[i].1, &want);
        } else {
            assert_close(&what, &outs[i].1, &want, 1e-5);
        }
        input = outs[i].clone();
    }
    Some(run)
}

/// Largest absolute difference.
pub fn max_abs_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The CPU device the tests run on.
pub fn device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}

/// A [`Stage`] from its output name, comparison kind and our forward.
pub fn stage<'a>(
    value: &str,
    exact: bool,
    f: impl Fn(&[f32], &[usize]) -> Vec<f32> + 'a,
) -> Stage<'a> {
    Stage {
        value: value.into(),
        exact,
        forward: Box::new(f),
    }
}

/// A rank-2 tensor from values and a shape slice.
pub fn t2(v: &[f32], s: &[usize]) -> Tensor<2> {
    tensor(v, [s[0], s[1]])
}

/// A rank-4 tensor from values and a shape slice.
pub fn t4(v: &[f32], s: &[usize]) -> Tensor<4> {
    tensor(v, [s[0], s[1], s[2], s[3]])
}

/// A `QuantAct` of `spec` with `cells` scale cells on `[6, 32]` inputs, calibrated on `calib`
/// when its scale is stored (static), as built.
pub fn calibrated_act(
    spec: burn_quant::core::QuantSpec,
    cells: usize,
    calib: &[f32],
) -> burn_quant::nn::QuantAct {
    let act = burn_quant::nn::QuantActConfig::new(spec)
        .with_cells(cells)
        .init(&device())
        .unwrap();
    if act.act_quant.has_stored_scale() {
        burn_quant::nn::calibrate(act, |a| a.forward(tensor(calib, [6, 32])))
            .unwrap()
            .0
    } else {
        act
    }
}

/// The quickstart's MLP shape (768 → 256 → 10 with a quantized ReLU) that both test files
/// export; each test chooses the layers' specs.
#[derive(burn::module::Module, Debug)]
pub struct Mlp {
    pub fc1: burn_quant::nn::QuantLinear,
    pub relu: burn_quant::nn::QuantReLU,
    pub fc2: burn_quant::nn::QuantLinear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }

    /// Static scales calibrated on three batches of [`pixels`].
    pub fn calibrated(self) -> Self {
        burn_quant::nn::calibrate(self, |m| {
            for seed in 1..4 {
                m.forward(tensor(&pixels(seed), [8, 768]));
            }
        })
        .unwrap()
        .0
    }

    /// The exported layers (`linear`, `relu`, `linear`) and our forward of each.
    pub fn stages(&self) -> [Stage<'_>; 3] {
        [
            stage("linear_0.add", false, |v, s| {
                host(self.fc1.forward(t2(v, s)))
            }),
            stage("relu_1.act_quant", true, |v, s| {
                host(self.relu.forward(t2(v, s)))
            }),
            stage("output", false, |v, s| host(self.fc2.forward(t2(v, s)))),
        ]
    }
}

/// Pixel-like inputs in [0, 1), `[8, 768]`.
pub fn pixels(seed: u64) -> Vec<f32> {
    uniform(8 * 768, seed, 0.5)
        .iter()
        .map(|v| v + 0.5)
        .collect()
}

/// A small CNN like `burnq qat`'s (input quantizer, two convolutions with quantized ReLUs,
/// flatten, classifier) on `[2, 1, 12, 12]` images; each test chooses the specs.
#[derive(burn::module::Module, Debug)]
pub struct Cnn {
    pub input: burn_quant::nn::QuantAct,
    pub conv1: burn_quant::nn::QuantConv2d,
    pub relu1: burn_quant::nn::QuantReLU,
    pub conv2: burn_quant::nn::QuantConv2d,
    pub relu2: burn_quant::nn::QuantReLU,
    pub fc: burn_quant::nn::QuantLinear,
}

impl Cnn {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.input.forward(x);
        let x = self.relu1.forward(self.conv1.forward(x));
        let x = self.relu2.forward(self.conv2.forward(x));
        let [b, c, h, w] = x.dims();
        self.fc.forward(x.reshape([b, c * h * w]))
    }

    /// Static scales calibrated on three batches of [`images`].
    pub fn calibrated(self) -> Self {
        burn_quant::nn::calibrate(self, |m| {
            for seed in 20..23 {
                m.forward(tensor(&images(seed), [2, 1, 12, 12]));
            }
        })
        .unwrap()
        .0
    }

    /// Every layer appended to `b`, in forward order.
    pub fn export<S: burn_quant::export::onnx::QuantStyle>(
        &self,
        b: burn_quant::export::onnx::OnnxModelBuilder<S>,
    ) -> burn_quant::export::onnx::OnnxModelBuilder<S> {
        b.act(&self.input)
            .unwrap()
            .conv2d(&self.conv1)
            .unwrap()
            .relu(&self.relu1)
            .unwrap()
            .conv2d(&self.conv2)
            .unwrap()
            .relu(&self.relu2)
            .unwrap()
            .flatten()
            .unwrap()
            .linear(&self.fc)
            .unwrap()
    }

    /// The exported layers (named `names`, as the builder reports them) and our forward of
    /// each; the flatten is checked as a plain copy.
    pub fn stages<'a>(&'a self, names: &[String]) -> [Stage<'a>; 7] {
        [
            stage(&names[0], true, |v, s| host(self.input.forward(t4(v, s)))),
            stage(&names[1], false, |v, s| host(self.conv1.forward(t4(v, s)))),
            stage(&names[2], true, |v, s| host(self.relu1.forward(t4(v, s)))),
            stage(&names[3], false, |v, s| host(self.conv2.forward(t4(v, s)))),
            stage(&names[4], true, |v, s| host(self.relu2.forward(t4(v, s)))),
            stage(&names[5], true, |v, _| v.to_vec()),
            stage("output", false, |v, s| host(self.fc.forward(t2(v, s)))),
        ]
    }
}

/// Image-like inputs in [-1, 1), `[2, 1, 12, 12]`.
pub fn images(seed: u64) -> Vec<f32> {
    uniform(2 * 144, seed, 1.0)
}
