//! Helpers shared by the workspace's examples, cross-crate tests and benchmarks.
#![warn(missing_docs)]

use std::path::PathBuf;

pub mod bert;
pub mod cnn;

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

pub use burn_quant::core::metrics::sqnr_db;

/// Reads an F32 tensor from a safetensors file and returns it transposed from PyTorch's
/// `[out, in]` to Burn's `Linear` layout `[in, out]`, as (data, [in, out]).
pub fn read_linear_weight(bytes: &[u8], name: &str) -> Result<(Vec<f32>, [usize; 2]), String> {
    let st = safetensors_view(bytes)?;
    let t = st.tensor(name).map_err(|e| format!("{name}: {e}"))?;
    let shape = t.shape();
    if shape.len() != 2 || t.dtype() != safetensors::Dtype::F32 {
        return Err(format!(
            "{name}: expected a 2-D F32 tensor, got {:?} {:?}",
            t.dtype(),
            shape
        ));
    }
    let (out, inp) = (shape[0], shape[1]);
    let raw = t.data();
    let mut w = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            let k = (o * inp + i) * 4;
            w[i * out + o] = f32::from_le_bytes([raw[k], raw[k + 1], raw[k + 2], raw[k + 3]]);
        }
    }
    Ok((w, [inp, out]))
}

fn safetensors_view(bytes: &[u8]) -> Result<safetensors::SafeTensors<'_>, String> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())
}

/// The Python interpreter of the verifier venv (`target/pyverify`), holding the third-party
/// readers our exports are checked with (`gguf`, `onnx`, `onnxruntime`, `qonnx`, pinned in
/// `tests/py/requirements.txt`). The venv is created on first use, so `cargo test --release`
/// needs nothing prepared but `python3`. Returns `None` with a printed notice when it cannot be
/// made; with `BURNQ_REQUIRE_DATA=1` (CI) that is a panic instead.
pub fn python_verifier() -> Option<PathBuf> {
    static VENV: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    match VENV.get_or_init(make_verifier_venv) {
        Ok(python) => Some(python.clone()),
        Err(why) => {
            if std::env::var("BURNQ_REQUIRE_DATA").is_ok_and(|v| v == "1") {
                panic!("BURNQ_REQUIRE_DATA=1 but the Python verifier venv is unavailable: {why}");
            }
            eprintln!("notice: skipping, Python verifier venv unavailable: {why}");
            None
        }
    }
}

/// Runs `tests/py/<script>` with the verifier venv's Python and `args`; returns its stdout, or
/// an error with its stderr when it exits non-zero. `None` when the venv is unavailable.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) -> Option<Result<String, String>> {
    let python = python_verifier()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(python)
        .arg(root.join("tests/py").join(script))
        .args(args)
        .output();
    Some(match out {
        Err(e) => Err(format!("cannot run {script}: {e}")),
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{script} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
    })
}

fn make_verifier_venv() -> Result<PathBuf, String> {
    use std::process::Command;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let requirements = std::fs::read_to_string(root.join("tests/py/requirements.txt"))
        .map_err(|e| format!("tests/py/requirements.txt: {e}"))?;
    let venv = root.join("target/pyverify");
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.done");
    // Test binaries may run in parallel processes (nextest): one creates, the others wait.
    let lock = root.join("target/pyverify.lock");
    std::fs::create_dir_all(root.join("target")).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    loop {
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) {
            return Ok(python);
        }
        match std::fs::create_dir(&lock) {
            Ok(()) => break,
            Err(_) if started.elapsed().as_secs() < 900 => {
                std::thread::sleep(std::time::Duration::from_millis(500))
            }
            Err(_) => return Err(format!("{} held for 15 minutes", lock.display())),
        }
    }
    let result = (|| {
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) {
            return Ok(());
        }
        eprintln!(
            "notice: creating the Python verifier venv in {}",
            venv.display()
        );
        let run = |cmd: &mut Command| -> Result<(), String> {
            let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
        };
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(root.join("tests/py/requirements.txt")))?;
        std::fs::write(&stamp, &requirements).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir(&lock);
    result.map(|()| python)
}

/// The Python interpreter of the llama.cpp venv: llama-cpp-python 0.3.36's bindings on the
/// llama.cpp it vendors (the version our GGUF exports are checked against), with
/// `llama_model_quantize` (llama-quantize) and the model loader. `scripts/llama-cpp-venv.sh`
/// builds it on first use, once per machine, into a cache outside the clone that every clone
/// reuses (`$BURNQ_CACHE`, else `$XDG_CACHE_HOME/burn-quant`, else `~/.cache/burn-quant`), under
/// a lock: about 5 minutes on 2 cores, then nothing. Returns `None` with a printed notice
/// when it cannot be built (no C++ compiler, no PyPI); with `BURNQ_REQUIRE_DATA=1` (CI) that
/// is a panic instead, so the llama.cpp checks cannot pass by skipping.
pub fn llama_cpp_python() -> Option<PathBuf> {
    static VENV: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    match VENV.get_or_init(make_llama_cpp_venv) {
        Ok(python) => Some(python.clone()),
        Err(why) => {
            if std::env::var("BURNQ_REQUIRE_DATA").is_ok_and(|v| v == "1") {
                panic!("BURNQ_REQUIRE_DATA=1 but the llama.cpp venv is unavailable: {why}");
            }
            eprintln!("notice: skipping the llama.cpp checks, its venv is unavailable: {why}");
            None
        }
    }
}

fn make_llama_cpp_venv() -> Result<PathBuf, String> {
    use std::process::{Command, Stdio};
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/llama-cpp-venv.sh");
    let started = std::time::Instant::now();
    // The script's progress and errors go straight to the terminal: a first build takes minutes.
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}; its error is printed above)",
            script.display(),
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let python = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !python.is_file() {
        return Err(format!(
            "{} printed no python: {stdout:?}",
            script.display()
        ));
    }
    let secs = started.elapsed().as_secs_f64();
    if secs > 10.0 {
        eprintln!(
            "notice: the llama.cpp venv took {secs:.0} s ({})",
            python.display()
        );
    }
    Ok(python)
}

/// Largest element-wise `|a − b|` of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared outputs differ in length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs the ONNX model at `onnx` with onnxruntime on `x` through tests/py/onnx_qdq_run.py
/// (onnx.checker's full check first; graph optimisations off, so every Q/DQ runs as
/// written), with its files under `dir`; the first output, or `None` when the verifier venv
/// is unavailable.
pub fn onnxruntime_output(
    onnx: &std::path::Path,
    x: &burn::tensor::TensorData,
    dir: &std::path::Path,
) -> Option<Vec<f32>> {
    use burn_quant::graph::dataset::{read_npy, write_npy};
    let input = dir.join("onnxruntime_x.npy");
    write_npy(&input, x).expect("write the input .npy");
    let out = dir.join("onnxruntime");
    std::fs::create_dir_all(&out).expect("output directory");
    let args = [onnx.as_os_str(), input.as_os_str(), out.as_os_str()];
    run_python("onnx_qdq_run.py", &args)?.unwrap_or_else(|e| panic!("{e}"));
    Some(
        read_npy(out.join("out_0.npy"))
            .expect("onnxruntime's output")
            .try_into_vec::<f32>()
            .expect("f32 output"),
    )
}
