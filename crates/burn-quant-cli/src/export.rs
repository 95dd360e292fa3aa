//! `burnq export`: writes a quantized model as GGUF (llama.cpp), ONNX QDQ (onnxruntime), QONNX
//! or a Burn burnpack record.
//!
//! Two models: a Llama-family LLM (`--model` a GGUF file or a Hugging Face directory) for the
//! `gguf:<mix>` formats, and `mnist-mlp`, the quickstart's MLP (trained on the embedded MNIST
//! subset, weights and activations quantized, activations calibrated) for every format.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::QuantSpec;
use burn_quant::export::burnpack::{QuantizedWeights, save_quantized};
use burn_quant::export::onnx::{QdqModelBuilder, QonnxModelBuilder, save_onnx};
use burn_quant::llm::gguf::LlamaMix;
use burn_quant::nn::{QuantLinear, QuantLinearConfig, QuantReLU, QuantReLUConfig, calibrate};

use crate::error::{CliError, Result};
use crate::mnist::{self, Dataset, Mnist, NUM_CLASSES};
use crate::model::{self, MlpConfig};
use crate::quickstart::QuickstartConfig;

/// What `burnq export` writes.
#[derive(Clone, Debug, PartialEq)]
pub enum ExportFormat {
    /// GGUF with a llama.cpp type mix (`gguf:Q4_K_M`, `gguf:Q4_0`, …).
    Gguf(LlamaMix),
    /// ONNX QuantizeLinear/DequantizeLinear graph.
    OnnxQdq,
    /// QONNX (`Quant`, `BipolarQuant`, `FloatQuant` nodes).
    Qonnx,
    /// Burn burnpack record with `QFloat` weights, loadable into the float model.
    Burnpack,
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "onnx-qdq" => Ok(Self::OnnxQdq),
            "qonnx" => Ok(Self::Qonnx),
            "burnpack" => Ok(Self::Burnpack),
            _ => match s.strip_prefix("gguf:") {
                Some(mix) => mix
                    .parse::<LlamaMix>()
                    .map(Self::Gguf)
                    .map_err(|e| e.to_string()),
                None => Err(format!(
                    "unknown format {s:?}: expected gguf:<mix> (e.g. gguf:Q4_K_M, gguf:Q4_0), \
                     onnx-qdq, qonnx or burnpack"
                )),
            },
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gguf(mix) => write!(f, "gguf:{mix}"),
            Self::OnnxQdq => f.write_str("onnx-qdq"),
            Self::Qonnx => f.write_str("qonnx"),
            Self::Burnpack => f.write_str("burnpack"),
        }
    }
}

/// Weight recipes of the `mnist-mlp` model.
pub const MLP_WEIGHT_RECIPES: &[&str] = &["int8", "int4-g32", "int4-g128", "fp8-e4m3", "ternary"];

/// The weight spec of a `mnist-mlp` recipe name.
pub fn mlp_weight_spec(name: &str) -> Result<QuantSpec> {
    Ok(match name {
        "int8" => QuantSpec::int8_weight_per_channel(),
        "int4-g32" => QuantSpec::int4_weight_per_group(32),
        "int4-g128" => QuantSpec::int4_weight_per_group(128),
        "fp8-e4m3" => QuantSpec::fp8_e4m3_weight_per_tensor(),
        "ternary" => QuantSpec::ternary_weight(),
        other => {
            return Err(CliError::config(
                "weights",
                other,
                format!("expected one of {}", MLP_WEIGHT_RECIPES.join(", ")),
            ));
        }
    })
}

/// The quickstart's MLP with quantized layers: int8 input, weights per recipe, uint8 ReLU output.
#[derive(Module, Debug)]
pub struct QuantMlp {
    /// Hidden layer with an int8 input quantizer.
    pub fc1: QuantLinear,
    /// ReLU with a uint8 output quantizer.
    pub relu: QuantReLU,
    /// Output layer.
    pub fc2: QuantLinear,
}

impl QuantMlp {
    /// Logits of `[batch, 784]` standardised pixels.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}

/// What exporting `mnist-mlp` did.
#[derive(Clone, Debug)]
pub struct MlpExport {
    /// Test accuracy of the float model.
    pub float_accuracy: f64,
    /// Test accuracy of the quantized model (our fake-quant forward).
    pub quant_accuracy: f64,
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Trains the quickstart MLP, quantizes it with `weights` (a [`MLP_WEIGHT_RECIPES`] name),
/// calibrates its activations on training images and writes it as `format` to `out`.
pub fn export_mnist_mlp(
    config: &QuickstartConfig,
    weights: &str,
    format: &ExportFormat,
    out: &Path,
) -> Result<MlpExport> {
    let spec = mlp_weight_spec(weights)?;
    let data = Mnist::embedded()?;
    let split = mnist::split(&data, config.n_train, config.n_test, config.seed)?;
    let geometry = MlpConfig {
        d_input: split.train.dim,
        d_hidden: config.d_hidden,
        d_output: NUM_CLASSES,
    };
    let (float, _) = crate::quickstart::train_float(config, &geometry, &split.train)?;
    let device = Device::flex();
    let float_accuracy = model::accuracy(&float, &split.test, 1000, &device)?;

    let fc1 = QuantLinearConfig::new(geometry.d_input, geometry.d_hidden)
        .with_weight_quant(Some(spec.clone()))
        .with_input_quant(Some(QuantSpec::int8_act_per_tensor()))
        .from_float(float.fc1.clone(), &device)?;
    let fc2 = QuantLinearConfig::new(geometry.d_hidden, geometry.d_output)
        .with_weight_quant(Some(spec))
        .from_float(float.fc2.clone(), &device)?;
    let relu = QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor()).init(&device)?;
    let quant = QuantMlp { fc1, relu, fc2 };
    let calib = rows(&split.train, 0, 512.min(split.train.len()), &device);
    let (quant, _) = calibrate(quant, |m| {
        m.forward(calib.clone());
    })?;
    let quant_accuracy = model::accuracy_with(|x| quant.forward(x), &split.test, 1000, &device)?;

    let onnx_err = |source| CliError::Onnx {
        what: out.display().to_string(),
        source,
    };
    match format {
        ExportFormat::OnnxQdq => {
            let m = QdqModelBuilder::new("pixels", &[1, geometry.d_input])
                .dynamic_batch("batch")
                .linear(&quant.fc1)
                .and_then(|b| b.relu(&quant.relu))
                .and_then(|b| b.linear(&quant.fc2))
                .and_then(|b| b.output_name("logits").build())
                .map_err(onnx_err)?;
            save_onnx(out, &m).map_err(onnx_err)?;
        }
        ExportFormat::Qonnx => {
            let m = QonnxModelBuilder::new("pixels", &[1, geometry.d_input])
                .linear(&quant.fc1)
                .and_then(|b| b.relu(&quant.relu))
                .and_then(|b| b.linear(&quant.fc2))
                .and_then(|b| b.output_name("logits").build())
                .map_err(onnx_err)?;
            save_onnx(out, &m).map_err(onnx_err)?;
        }
        ExportFormat::Burnpack => {
            let pack_err = |source| CliError::Burnpack {
                what: out.display().to_string(),
                source,
            };
            let mut w = QuantizedWeights::new();
            for (path, layer) in [("fc1.weight", &quant.fc1), ("fc2.weight", &quant.fc2)] {
                let q = layer
                    .quant_weight()?
                    .expect("both layers quantize their weights");
                w.insert(path, &q).map_err(pack_err)?;
            }
            save_quantized(&float, &w, out).map_err(pack_err)?;
        }
        ExportFormat::Gguf(_) => {
            return Err(CliError::config(
                "format",
                format,
                "GGUF export is for Llama-family models (--model FILE.gguf or a Hugging Face \
                 directory); mnist-mlp exports as onnx-qdq, qonnx or burnpack",
            ));
        }
    }
    let bytes = std::fs::metadata(out)
        .map_err(|source| CliError::Io {
            what: out.display().to_string(),
            source,
        })?
        .len();
    Ok(MlpExport {
        float_accuracy,
        quant_accuracy,
        path: out.to_path_buf(),
        bytes,
    })
}

/// Rows `start..end` of `data` as a `[n, dim]` tensor.
fn rows(data: &Dataset, start: usize, end: usize, device: &Device) -> Tensor<2> {
    let v = data.features[start * data.dim..end * data.dim].to_vec();
    Tensor::from_data(TensorData::new(v, [end - start, data.dim]), device)
}

/// What exporting a Llama-family model as GGUF did.
#[derive(Clone, Debug)]
pub struct LlmExport {
    /// The exporter's per-tensor report.
    pub report: burn_quant::llm::gguf::LlamaExportReport,
    /// The file written.
    pub path: PathBuf,
}

/// Re-exports the Llama-family model at `model` (a llama GGUF file, dequantized on load) as GGUF
/// with the llama.cpp type mix `mix`, importance-weighted when `imatrix` is given.
pub fn export_llm_gguf(
    model: &Path,
    mix: LlamaMix,
    imatrix: Option<&Path>,
    out: &Path,
) -> Result<LlmExport> {
    use burn_quant::export::gguf::Imatrix;
    use burn_quant::llm::gguf::{LlamaGgufConfig, LlamaGgufSource, export_llama_gguf};
    let llama_err = |source| CliError::Llama {
        what: model.display().to_string(),
        source,
    };
    let imatrix = imatrix
        .map(|p| {
            Imatrix::read_file(p).map_err(|source| CliError::Gguf {
                what: p.display().to_string(),
                source,
            })
        })
        .transpose()?;
    if model.is_dir() {
        return Err(CliError::config(
            "model",
            model.display(),
            "Hugging Face directories are read by `burnq ptq-llm`; give a llama GGUF file",
        ));
    }
    let source = LlamaGgufSource::open(model).map_err(llama_err)?;
    let name = source.name().unwrap_or("llama").to_string();
    let file_name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config =
        LlamaGgufConfig::new(source.hparams().clone(), name).with_provenance("source", file_name);
    let report = export_llama_gguf(
        out,
        &config,
        source.tokenizer(),
        source.tensors(),
        mix,
        imatrix.as_ref(),
    )
    .map_err(llama_err)?;
    Ok(LlmExport {
        report,
        path: out.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_quant::export::burnpack::load_quantized;
    use burn_quant::export::onnx::{read_onnx, summarize};

    #[test]
    fn formats_parse_and_print_back() {
        for s in [
            "gguf:Q4_K_M",
            "gguf:Q4_0",
            "gguf:Q8_0",
            "onnx-qdq",
            "qonnx",
            "burnpack",
        ] {
            let f: ExportFormat = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        let e = "onnx".parse::<ExportFormat>().unwrap_err();
        assert!(e.contains("onnx-qdq"), "{e}");
        assert!("gguf:Q9_Z".parse::<ExportFormat>().is_err());
        assert!(mlp_weight_spec("int3").is_err());
    }

    /// The exported files hold the model: the QDQ graph has the layers' quantize/dequantize
    /// nodes and int4 weights; the burnpack record loads into the float MLP and classifies like
    /// the quantized model (flex re-quantizes block weights in a rank-2 matmul, so within 1 %).
    #[test]
    fn mnist_mlp_exports_read_back() {
        let config = QuickstartConfig {
            epochs: 1,
            ..QuickstartConfig::default()
        };
        let dir = std::env::temp_dir().join(format!("burnq-cli-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let onnx = dir.join("mlp.onnx");
        let e = export_mnist_mlp(&config, "int4-g32", &ExportFormat::OnnxQdq, &onnx).unwrap();
        assert!(e.quant_accuracy > 0.85, "{}", e.quant_accuracy);
        let summary = summarize(&read_onnx(&onnx).unwrap()).to_string();
        assert!(summary.contains("DequantizeLinear x4"), "{summary}");
        assert!(summary.contains("INT4"), "{summary}");

        let pack = dir.join("mlp.bpk");
        let e = export_mnist_mlp(&config, "int8", &ExportFormat::Burnpack, &pack).unwrap();
        let data = Mnist::embedded().unwrap();
        let split = mnist::split(&data, config.n_train, config.n_test, config.seed).unwrap();
        let geometry = MlpConfig {
            d_input: split.test.dim,
            d_hidden: config.d_hidden,
            d_output: NUM_CLASSES,
        };
        let device = Device::flex();
        let reloaded = load_quantized(geometry.init(0, &device), &pack).unwrap();
        let acc = model::accuracy(&reloaded, &split.test, 1000, &device).unwrap();
        assert!(
            (acc - e.quant_accuracy).abs() <= 0.01,
            "reloaded {acc} vs quantized {}",
            e.quant_accuracy
        );
        // A float model trained from another seed would not get there.
        assert!(acc > 0.85, "{acc}");
        let err = export_mnist_mlp(&config, "int8", &ExportFormat::Gguf(LlamaMix::Q8_0), &pack)
            .unwrap_err();
        assert!(err.to_string().contains("gguf"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
