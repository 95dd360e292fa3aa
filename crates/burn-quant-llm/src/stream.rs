//! Post-training quantization of models larger than memory: [`quantize_llama_streaming`].
//!
//! The checkpoint (a Hugging Face directory of safetensors, F32/F16/BF16, or a llama GGUF) is
//! memory-mapped, never read whole: its tensors stay in their stored type (bf16, f16, f32,
//! ggml blocks) in the page cache, and a decoder block is widened to f32 only when its turn
//! comes. The output GGUF is written as the sweep goes ([`LlamaGgufStream`]: the header first,
//! from the hyper-parameters and the weight spec's ggml type; then each block's tensors as
//! soon as the block is quantized). What stays in memory is one block (its float copy and the
//! one being quantized), the calibration activations of both paths (tokens × `d_model` f32,
//! twice, plus one site's inputs while it is processed), each site's statistics, and the
//! embedding table while the first block's inputs are computed.
//!
//! Each block goes through [`crate::pipeline::quantize_block`], the same code as
//! [`crate::quantize_llama`], so the file holds the same codes as the in-memory pipeline's
//! export of the same model (embedding encoded with the weights' ggml type, norms F32).
//!
//! Not streamed: AutoRound (trains through the whole block with autodiff; in-memory only, a
//! typed [`LlmError::NotStreamable`]), Stage-1 transforms, input quantizers and bias
//! correction (they need the model), and perplexity (run it on the written GGUF).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_quant_export::gguf::{
    GgufFile, GgufTokenizer, TokenizerOptions, encode_quant_tensor, ggml_type_of,
};
use burn_quant_nn::QuantEmbedding;
use burn_quant_ptq::{Algorithm, CalibInputs, LayerReport, Stage2Algorithm};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{LlmError, Result};
use crate::gguf::{
    HfTensor, LlamaExportReport, LlamaGgufConfig, LlamaGgufSource, LlamaGgufStream, LlamaMix,
    LlamaTensor,
};
use crate::hparams::LlamaHParams;
use crate::load::{safetensors_files, to_f32};
use crate::model::decoder_block_from_hf;
use crate::pipeline::{BlockProgress, PtqConfig, PtqResult, PtqTimings, check_windows};
use crate::rope::Rope;

/// Where [`quantize_llama_streaming`] writes, and what it writes besides the tensors.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// The GGUF file to write (atomically: a temporary beside it, renamed at the end).
    pub output: PathBuf,
    /// `general.name`.
    pub name: String,
    /// `burnq.*` provenance strings (key suffix, value).
    pub provenance: Vec<(String, String)>,
    /// The tokenizer keys; `None` reads them from the source (a Hugging Face directory's
    /// `tokenizer.json`, a GGUF's `tokenizer.*` keys).
    pub tokenizer: Option<GgufTokenizer>,
    /// The device the block computations run on.
    pub device: Device,
}

impl StreamOptions {
    /// Options writing `output`, named `burnq ptq-llm` (as `burnq ptq-llm --export`), with the
    /// source's tokenizer, on the CPU.
    pub fn new(output: impl Into<PathBuf>) -> Self {
        Self {
            output: output.into(),
            name: "burnq ptq-llm".into(),
            provenance: Vec::new(),
            tokenizer: None,
            device: Device::flex(),
        }
    }
}

/// What [`quantize_llama_streaming`] did.
#[derive(Debug)]
pub struct StreamReport {
    /// Per-layer diagnostics, in order (Hugging Face names).
    pub layers: Vec<(String, LayerReport)>,
    /// Where the time went (`total` includes reading and writing).
    pub timings: PtqTimings,
    /// Time spent reading and widening the checkpoint's tensors.
    pub read: Duration,
    /// Time spent encoding and writing the GGUF.
    pub write: Duration,
    /// The tensors written.
    pub export: LlamaExportReport,
    /// Bytes of the GGUF written.
    pub bytes_written: u64,
    /// Peak resident set size of the process at the end (Linux `VmHWM`; `None` elsewhere).
    pub peak_rss: Option<u64>,
    /// Bytes the model's tensors take in f32 (what the in-memory pipeline holds).
    pub model_f32_bytes: u64,
}

/// Quantizes the Llama-family checkpoint at `source` (a Hugging Face directory or a `.gguf`
/// file) block by block with `config`, calibrating on `windows` (token ids, one length), and
/// writes a llama.cpp GGUF to `options.output` as it goes: peak memory is about one block and
/// the calibration activations, not the model (see the module documentation). The weight spec
/// must have a ggml structure ([`ggml_type_of`]); the embedding is written with the same ggml
/// type, norms F32. The file equals the in-memory pipeline's ([`crate::quantize_llama`]
/// followed by the same export) tensor for tensor.
pub fn quantize_llama_streaming(
    source: &Path,
    windows: &[Vec<u32>],
    config: &PtqConfig,
    options: &StreamOptions,
    progress: &mut dyn FnMut(&BlockProgress),
) -> Result<StreamReport> {
    let start = Instant::now();
    if matches!(config.algorithm, Algorithm::AutoRound(_)) {
        return Err(LlmError::NotStreamable(
            "AutoRound trains through whole blocks with autodiff; it runs in memory only \
             (quantize_llama)"
                .into(),
        ));
    }
    let ty = ggml_type_of(&config.weights).map_err(|e| {
        LlmError::NotStreamable(format!(
            "the weight spec has no ggml structure to write as GGUF: {e}"
        ))
    })?;
    let inputs = config.algorithm.inputs();
    let needs_data = inputs != CalibInputs::None;
    let seq = check_windows(windows, needs_data)?;
    let device = &options.device;
    let mut store = TensorStore::open(source)?;
    let hp = store.hparams().clone();
    hp.validate()?;
    let tokenizer = match &options.tokenizer {
        Some(t) => t.clone(),
        None => store.tokenizer()?,
    };
    let mut gguf_config = LlamaGgufConfig::new(hp.clone(), options.name.clone());
    gguf_config.provenance = options.provenance.clone();
    let mut read = Duration::ZERO;
    let mut write = Duration::ZERO;
    let t = Instant::now();
    let mut out = LlamaGgufStream::create(
        &options.output,
        &gguf_config,
        &tokenizer,
        LlamaMix::Uniform(ty),
        Some(ty),
    )?;
    write += t.elapsed();
    let fetch = |store: &mut TensorStore, name: &str, read: &mut Duration| {
        let t = Instant::now();
        let r = store.need(name);
        *read += t.elapsed();
        r
    };

    // Model-level tensors: the embedding (kept until the first block's inputs are computed),
    // the final norm, the untied head (written, never kept).
    let d = hp.hidden_size;
    let embed = fetch(&mut store, "model.embed_tokens.weight", &mut read)?;
    check_shape(&embed, &[hp.vocab_size, d])?;
    let table = Tensor::<2>::from_data(
        TensorData::new(embed.data.clone(), [hp.vocab_size, d]),
        device,
    );
    let t = Instant::now();
    out.write(embed)?;
    write += t.elapsed();
    for name in ["model.norm.weight", "lm_head.weight"] {
        if name == "lm_head.weight" && hp.tie_word_embeddings {
            continue;
        }
        let tensor = fetch(&mut store, name, &mut read)?;
        let t = Instant::now();
        out.write(tensor)?;
        write += t.elapsed();
    }

    let mut timings = PtqTimings::default();
    let (rope, mut x_float) = if needs_data {
        let t = Instant::now();
        let embedding = QuantEmbedding {
            weight: Param::from_tensor(table),
            weight_quant: None,
            output_quant: None,
        };
        let mut x = vec![];
        for chunk in windows.chunks(config.batch_windows.max(1)) {
            x.push(embedding.try_forward(tokens(chunk, hp.vocab_size, device)?)?);
        }
        timings.forward += t.elapsed();
        let rope = Rope::new(hp.head_dim, hp.rope_theta, hp.rope_scaling, seq, device)?;
        (Some(rope), x)
    } else {
        drop(table);
        (None, vec![])
    };
    let mut x_quant = x_float.clone();

    let blocks = hp.num_hidden_layers;
    let mut layers = vec![];
    for i in 0..blocks {
        let block_start = Instant::now();
        let t = Instant::now();
        let float_block = decoder_block_from_hf(&hp, i, &mut |name: &str| store.get(name), device)?;
        read += t.elapsed();
        let mut block = float_block.clone();
        let mut result = PtqResult {
            weights: BTreeMap::new(),
            layers: vec![],
            learned: vec![],
            learned_flops: 0.0,
            timings: PtqTimings::default(),
        };
        crate::pipeline::quantize_block(
            i,
            &mut block,
            &float_block,
            &mut x_float,
            &mut x_quant,
            rope.as_ref(),
            config,
            &mut timings,
            &mut result,
        )?;
        drop(float_block);
        let t = Instant::now();
        for (name, q) in std::mem::take(&mut result.weights) {
            let tensor = encode_quant_tensor(&q).map_err(crate::gguf::LlamaError::from)?;
            out.write(LlamaTensor::Encoded { name, tensor })?;
        }
        for (which, norm) in [
            ("input_layernorm", &block.input_layernorm),
            ("post_attention_layernorm", &block.post_attention_layernorm),
        ] {
            let name = format!("model.layers.{i}.{which}.weight");
            let data = norm
                .weight
                .val()
                .try_into_vec_as::<f32>()
                .map_err(|e| LlmError::invalid("norm weight", &name, format!("{e:?}")))?;
            out.write(HfTensor::new(
                name,
                vec![d],
                data,
            ))?;
        }
        write += t.elapsed();
        layers.append(&mut result.layers);
        progress(&BlockProgress {
            block: i,
            blocks,
            elapsed: block_start.elapsed(),
        });
    }
    let t = Instant::now();
    let bytes_written = out.bytes_written();
    let export = out.finish()?;
    write += t.elapsed();
    timings.total = start.elapsed();
    Ok(StreamReport {
        layers,
        timings,
        read,
        write,
        bytes_written: export.file_bytes.max(bytes_written),
        export,
        peak_rss: peak_rss(),
        model_f32_bytes: 4 * hp_parameters(&hp),
    })
}

/// Parameters of a model with hyper-parameters `hp` (no biases).
fn hp_parameters(hp: &LlamaHParams) -> u64 {
    let (d, ff) = (hp.hidden_size as u64, hp.intermediate_size as u64);
    let (q, kv) = (
        (hp.num_attention_heads * hp.head_dim) as u64,
        (hp.num_key_value_heads * hp.head_dim) as u64,
    );
    let block = d * (2 * q + 2 * kv) + 3 * d * ff + 2 * d;
    let head = if hp.tie_word_embeddings {
        0
    } else {
        hp.vocab_size as u64 * d
    };
    hp.vocab_size as u64 * d + d + head + hp.num_hidden_layers as u64 * block
}

/// Peak resident set size of this process (Linux `/proc/self/status` `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A `[batch, seq]` token tensor from equally long windows, checked against the vocabulary.
fn tokens(rows: &[Vec<u32>], vocab: usize, device: &Device) -> Result<Tensor<2, Int>> {
    let seq = rows.first().map_or(0, Vec::len);
    let mut flat = Vec::with_capacity(rows.len() * seq);
    for r in rows {
        for &id in r {
            if id as usize >= vocab {
                return Err(LlmError::TokenOutOfRange {
                    id: id as i64,
                    vocab,
                });
            }
            flat.push(id as i64);
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(flat, [rows.len(), seq]),
        device,
    ))
}

fn check_shape(t: &HfTensor, expected: &[usize]) -> Result<()> {
    if t.shape != expected || t.data.len() != expected.iter().product::<usize>() {
        return Err(LlmError::ShapeMismatch {
            name: t.name.clone(),
            expected: expected.to_vec(),
            actual: t.shape.clone(),
        });
    }
    Ok(())
}

/// One tensor of a memory-mapped safetensors file: where its bytes are.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    len: usize,
}

/// A checkpoint memory-mapped, whose tensors are read (and widened to f32) one at a time; the
/// pages of a tensor are released from this process right after it is read (the file stays
/// in the page cache, which the kernel reclaims as needed).
enum TensorStore {
    Safetensors {
        dir: PathBuf,
        hparams: LlamaHParams,
        maps: Vec<(PathBuf, Mmap)>,
        index: BTreeMap<String, Entry>,
    },
    Gguf {
        map: Mmap,
        source: Box<LlamaGgufSource>,
    },
}

/// Maps `path` read-only.
fn map(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| LlmError::io(path, e))?;
    // SAFETY: the mapping is read-only; like every reader of memory-mapped checkpoints we
    // assume the file is not truncated or rewritten while it is being quantized.
    unsafe { Mmap::map(&file) }.map_err(|e| LlmError::io(path, e))
}

/// Drops this process's pages of `map[start..start + len]` (they are re-read from the file if
/// touched again), so that the resident set does not grow with the model.
fn release(map: &Mmap, start: usize, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: a read-only shared file mapping: MADV_DONTNEED only drops the page-table entries;
    // a later access reads the same bytes from the file again. A failure is harmless.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
}

impl TensorStore {
    fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let config = path.join("config.json");
            if !config.is_file() {
                return Err(LlmError::NotAModel {
                    path: path.to_path_buf(),
                });
            }
            let hparams = LlamaHParams::from_hf_config_file(&config)?;
            let mut maps = vec![];
            let mut index = BTreeMap::new();
            for (file, p) in safetensors_files(path)?.into_iter().enumerate() {
                let m = map(&p)?;
                let st = SafeTensors::deserialize(&m).map_err(|e| LlmError::Safetensors {
                    path: p.clone(),
                    why: e.to_string(),
                })?;
                let base = m.as_ptr() as usize;
                for (name, view) in st.iter() {
                    index.insert(
                        name.to_string(),
                        Entry {
                            file,
                            dtype: view.dtype(),
                            shape: view.shape().to_vec(),
                            start: view.data().as_ptr() as usize - base,
                            len: view.data().len(),
                        },
                    );
                }
                drop(st);
                maps.push((p, m));
            }
            Ok(Self::Safetensors {
                dir: path.to_path_buf(),
                hparams,
                maps,
                index,
            })
        } else if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let map = map(path)?;
            let header = GgufFile::parse_header_of(&map).map_err(crate::gguf::LlamaError::from)?;
            let source = Box::new(LlamaGgufSource::from_file(header)?);
            Ok(Self::Gguf { map, source })
        } else {
            Err(LlmError::NotAModel {
                path: path.to_path_buf(),
            })
        }
    }

    fn hparams(&self) -> &LlamaHParams {
        match self {
            Self::Safetensors { hparams, .. } => hparams,
            Self::Gguf { source, .. } => source.hparams(),
        }
    }

    fn tokenizer(&self) -> Result<GgufTokenizer> {
        match self {
            Self::Safetensors { dir, .. } => {
                GgufTokenizer::from_hf_dir(dir, &TokenizerOptions::default())
                    .map_err(|e| crate::gguf::LlamaError::from(e).into())
            }
            Self::Gguf { source, .. } => Ok(source.tokenizer().clone()),
        }
    }

    /// The tensor named `name` (Hugging Face name) in f32, `None` when the checkpoint does not
    /// hold it (or a llama GGUF cannot: a bias).
    fn get(&mut self, name: &str) -> Result<Option<HfTensor>> {
        match self {
            Self::Safetensors { maps, index, .. } => {
                let Some(e) = index.get(name) else {
                    return Ok(None);
                };
                let m = &maps[e.file].1;
                let data = to_f32(name, e.dtype, &m[e.start..e.start + e.len])?;
                release(m, e.start, e.len);
                Ok(Some(HfTensor::new(name, e.shape.clone(), data)))
            }
            Self::Gguf { map, source } => match source.tensor_in(name, map) {
                Ok(t) => {
                    let gguf = crate::gguf::LlamaTensorName::parse_hf(name)?.gguf_name();
                    if let Some(info) = source.file().tensor(&gguf) {
                        let start = (source.file().data_start + info.offset) as usize;
                        release(map, start, info.size as usize);
                    }
                    Ok(Some(t))
                }
                Err(
                    crate::gguf::LlamaError::MissingTensor { .. }
                    | crate::gguf::LlamaError::UnknownTensor { .. },
                ) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// [`get`](Self::get), the tensor being required.
    fn need(&mut self, name: &str) -> Result<HfTensor> {
        self.get(name)?
            .ok_or_else(|| LlmError::MissingTensor { name: name.into() })
    }
}
