//! One error type for programs that use several stacks: every crate error converts into
//! [`Error`] with `?`, so a `main` returning [`crate::Result`] needs no `Box<dyn Error>`.

/// Any error of burn-quant; each variant wraps one crate's error unchanged (`source()` and the
/// message are the wrapped error's). Variants of a stack exist only when its feature is on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Formats, specs, quantize / dequantize / fake-quant (`burn_quant_core`).
    #[error(transparent)]
    Quant(#[from] burn_quant_core::QuantError),
    /// Quantizers and quantized layers (`burn_quant_nn`).
    #[error(transparent)]
    Layer(#[from] burn_quant_nn::NnError),
    /// Plans on unmodified models (`burn_quant_nn::plan`).
    #[error(transparent)]
    Plan(#[from] burn_quant_nn::PlanError),
    /// TOML / JSON recipes (`burn_quant_nn::recipe`).
    #[error(transparent)]
    Recipe(#[from] burn_quant_nn::RecipeError),
    /// Reading a tensor's data back (`TensorData` conversions).
    #[error(transparent)]
    TensorData(#[from] burn::tensor::DataError),
    /// Saving or loading a Burn record (`module.into_record().save(path)`).
    #[error(transparent)]
    Record(#[from] burn::store::RecordError),
    /// QAT with burn-train (`burn_quant_qat`).
    #[cfg(feature = "qat")]
    #[error(transparent)]
    Qat(#[from] burn_quant_qat::QatError),
    /// Stage 1 / Stage 2 algorithms (`burn_quant_ptq`).
    #[cfg(feature = "ptq")]
    #[error(transparent)]
    Ptq(#[from] burn_quant_ptq::PtqError),
    /// GGUF container and codecs (`burn_quant_export::gguf`).
    #[cfg(feature = "export")]
    #[error(transparent)]
    Gguf(#[from] burn_quant_export::gguf::GgufError),
    /// ONNX writers and reader (`burn_quant_export::onnx`).
    #[cfg(feature = "export")]
    #[error(transparent)]
    Onnx(#[from] burn_quant_export::onnx::OnnxError),
    /// Burn QFloat tensors and burnpack records (`burn_quant_export::burnpack`).
    #[cfg(feature = "export")]
    #[error(transparent)]
    Burnpack(#[from] burn_quant_export::burnpack::BurnpackError),
    /// GGUF tokenizer metadata (`burn_quant_export::gguf`).
    #[cfg(feature = "export")]
    #[error(transparent)]
    Tokenizer(#[from] burn_quant_export::gguf::TokenizerError),
    /// Llama GGUF export and source, hyper-parameters (`burn_quant_llm::gguf`).
    #[cfg(feature = "llm")]
    #[error(transparent)]
    Llama(#[from] burn_quant_llm::LlamaError),
    /// Llama-family models and the LLM pipeline (`burn_quant_llm`).
    #[cfg(feature = "llm")]
    #[error(transparent)]
    Llm(#[from] burn_quant_llm::LlmError),
    /// Graph mode: capture, interpreter, quantization, lowering, ONNX import.
    #[cfg(feature = "graph")]
    #[error(transparent)]
    Graph(#[from] burn_quant_graph::GraphError),
    /// The ONNX quantization pipeline (`quantize_onnx`).
    #[cfg(feature = "graph")]
    #[error(transparent)]
    OnnxQuant(#[from] burn_quant_graph::OnnxQuantError),
    /// Calibration datasets (npy, PNG, directories).
    #[cfg(feature = "graph")]
    #[error(transparent)]
    Dataset(#[from] burn_quant_graph::dataset::DatasetError),
    /// File-system errors of the caller's own I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A message of the calling program (bad arguments, a failed check of its own), so that a
    /// `main` returning [`Result`] can `?` a `String` error too.
    #[error("{0}")]
    Message(String),
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Message(message)
    }
}

/// A program's own argument parsing (`"4".parse::<usize>()?`).
impl From<std::num::ParseIntError> for Error {
    fn from(e: std::num::ParseIntError) -> Self {
        Self::Message(format!("not an integer: {e}"))
    }
}

/// A program's own argument parsing (`"0.5".parse::<f32>()?`).
impl From<std::num::ParseFloatError> for Error {
    fn from(e: std::num::ParseFloatError) -> Self {
        Self::Message(format!("not a number: {e}"))
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::Message(message.to_string())
    }
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use burn_quant_core::QuantSpec;

    /// `?` converts each crate's error, and the message and source are the wrapped error's.
    #[test]
    fn crate_errors_convert_with_question_mark_and_keep_their_message() {
        fn core_call() -> Result<()> {
            QuantSpec::int8_weight_per_tensor().with_bits(0).validate()?;
            Ok(())
        }
        fn plan_call() -> Result<()> {
            let plan = burn_quant_nn::QuantPlan::new()
                .rule("weight", QuantSpec::int8_weight_per_tensor().with_bits(0));
            plan.validate()?;
            Ok(())
        }
        let core = core_call().unwrap_err();
        assert!(matches!(core, Error::Quant(_)), "{core:?}");
        let direct = QuantSpec::int8_weight_per_tensor()
            .with_bits(0)
            .validate()
            .unwrap_err();
        assert_eq!(core.to_string(), direct.to_string());
        let plan = plan_call().unwrap_err();
        assert!(matches!(plan, Error::Plan(_)), "{plan:?}");
        assert!(plan.to_string().contains("rules[0]"), "{plan}");
    }
}
