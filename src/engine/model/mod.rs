//! Language models, all in one place:
//! - the families (`families/`: one file each, what differs from Llama) and the blocks they
//!   share (`blocks.rs`), assembled by one decoder (`decoder.rs`), configured from
//!   `config.json` (`config.rs`, with RoPE in `rope.rs`);
//! - LoRA adapters in PEFT's format (`lora.rs`);
//! - the formats: Hugging Face folders and safetensors (`hf.rs`), GGUF (`gguf.rs`, and
//!   `gguf_to_hf.rs` for the conversion), host tensors by checkpoint name (`weights.rs`);
//! - the tokenizer and chat templates (`tokenizer.rs`);
//! - the KV cache used by sampling, and the CPU single-sequence decoder (`cpu_decode/`).

pub mod blocks;
pub mod config;
pub mod cpu_decode;
pub mod decoder;
pub mod families;
pub mod gguf;
pub mod gguf_to_hf;
pub mod hf;
pub mod lora;
pub mod precision;
pub mod rope;
pub mod tokenizer;
pub mod weights;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;

pub use config::ModelConfig;
pub use cpu_decode::{CpuDecoder, DecodeState};
pub use decoder::CausalLm;
pub use families::Family;
pub use precision::WeightDtype;

use tokenizer::Tokenizer;
use weights::{HostTensor, NamedTensors};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The weights do not fit the architecture `config.json` describes.
    #[error("{path}: the weights do not match config.json ({source})")]
    Mismatch {
        path: PathBuf,
        source: Box<ModelError>,
    },
    #[error(transparent)]
    Gguf(#[from] crate::engine::model::gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] crate::engine::model::tokenizer::TokenizerError),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Hands out checkpoint tensors by Hugging Face name, checking shapes and converting Linear
/// weights to Burn's layout. Remembers which names were used so leftovers can be reported.
pub struct WeightReader {
    tensors: NamedTensors,
    used: BTreeSet<String>,
    device: Device,
    /// How matrices are stored (see `precision`): narrowed as each is read, so no f32 copy
    /// of the whole model exists on the device.
    storage: precision::WeightDtype,
}

impl WeightReader {
    pub fn new(tensors: NamedTensors, device: &Device) -> Self {
        Self {
            tensors,
            used: BTreeSet::new(),
            device: device.clone(),
            storage: precision::WeightDtype::F32,
        }
    }

    /// Matrices read from now on are stored as `dtype` (frozen weights only).
    pub fn set_storage(&mut self, dtype: precision::WeightDtype) {
        self.storage = dtype;
    }

    pub fn storage(&self) -> precision::WeightDtype {
        self.storage
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor, ModelError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        if t.shape != expected {
            return Err(ModelError::Shape {
                name: name.into(),
                found: t.shape,
                expected: expected.to_vec(),
            });
        }
        self.used.insert(name.to_string());
        Ok(t)
    }

    /// A `[out, in]` Hugging Face Linear weight, returned as `[in, out]`.
    pub fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Param<Tensor<2>>, ModelError> {
        let t = self.take(name, &[d_out, d_in])?;
        let data = transpose(&t.data, d_out, d_in);
        drop(t);
        Ok(Param::from_tensor(
            Tensor::<2>::from_data(TensorData::new(data, [d_in, d_out]), &self.device)
                .cast(self.storage.float_dtype()),
        ))
    }

    pub fn matrix(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Param<Tensor<2>>, ModelError> {
        let t = self.take(name, &shape)?;
        Ok(Param::from_tensor(
            Tensor::<2>::from_data(TensorData::new(t.data, shape), &self.device)
                .cast(self.storage.float_dtype()),
        ))
    }

    pub fn vector(&mut self, name: &str, len: usize) -> Result<Param<Tensor<1>>, ModelError> {
        let t = self.take(name, &[len])?;
        Ok(Param::from_tensor(Tensor::from_data(
            TensorData::new(t.data, [len]),
            &self.device,
        )))
    }

    /// Adds a freshly initialised tensor under `name` unless the checkpoint has one: a reward
    /// or value head on a plain language model starts from N(0, std^2), as transformers does.
    pub fn init_if_missing(&mut self, name: &str, shape: Vec<usize>, std: f32, seed: u64) {
        if self.tensors.contains_key(name) {
            return;
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                // Box-Muller: rand 0.9 has no normal distribution without rand_distr.
                let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                let u2: f32 = rng.random();
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        self.tensors
            .insert(name.to_string(), HostTensor::new(shape, data));
    }

    /// Names present in the checkpoint that no parameter took (e.g. `rotary_emb.inv_freq`).
    pub fn unused(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// Collects a model's parameters back into Hugging Face names and layouts.
#[derive(Default)]
pub struct WeightWriter {
    pub tensors: NamedTensors,
}

impl WeightWriter {
    fn host<const D: usize>(param: &Param<Tensor<D>>) -> (Vec<usize>, Vec<f32>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        (shape, host_f32(value))
    }

    /// Burn `[in, out]` back to Hugging Face `[out, in]`.
    pub fn linear(&mut self, name: &str, param: &Param<Tensor<2>>) {
        let (shape, data) = Self::host(param);
        let (d_in, d_out) = (shape[0], shape[1]);
        let data = transpose(&data, d_in, d_out);
        self.tensors
            .insert(name.into(), HostTensor::new(vec![d_out, d_in], data));
    }

    pub fn matrix(&mut self, name: &str, param: &Param<Tensor<2>>) {
        let (shape, data) = Self::host(param);
        self.tensors
            .insert(name.into(), HostTensor::new(shape, data));
    }

    pub fn vector(&mut self, name: &str, param: &Param<Tensor<1>>) {
        let (shape, data) = Self::host(param);
        self.tensors
            .insert(name.into(), HostTensor::new(shape, data));
    }
}

/// Copies a float tensor to the host as f32 (whatever its stored float type).
pub fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float data converts to f32")
}

/// Row-major `[rows, cols]` to `[cols, rows]`, in 32 x 32 tiles so both sides stay in cache
/// (a plain double loop misses on every write for checkpoint-sized matrices).
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; data.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

/// Keys and values of one layer, `[B, kv_heads, capacity, head_dim]`. The buffers are
/// allocated once (to the generation's length when known) and new positions are written in
/// place, so a decode step copies only its own keys and values, not the whole history.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
}

impl LayerCache {
    /// Writes new keys/values `[B, kv_heads, T, head_dim]` at positions `past..past + T` and
    /// returns views of positions `0..max(past + T, attend)` to attend over (positions past
    /// the new ones are masked by the caller: a fixed `attend` keeps shapes constant while
    /// decoding). `reserve` is the capacity to allocate when the buffer is missing or too
    /// small (at least doubled when growing).
    pub fn append(
        &mut self,
        k: Tensor<4>,
        v: Tensor<4>,
        past: usize,
        reserve: usize,
        attend: usize,
    ) -> (Tensor<4>, Tensor<4>) {
        let end = (past + k.dims()[2]).max(attend);
        let keys = write_at(self.keys.take(), k, past, reserve.max(end));
        let values = write_at(self.values.take(), v, past, reserve.max(end));
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys.narrow(2, 0, end), values.narrow(2, 0, end))
    }
}

/// `buffer[:, :, past..past + T] = new`, growing `buffer` first when it is too short.
fn write_at(buffer: Option<Tensor<4>>, new: Tensor<4>, past: usize, reserve: usize) -> Tensor<4> {
    let [b, h, t, d] = new.dims();
    let end = past + t;
    let buffer = match buffer {
        Some(buffer) if buffer.dims()[2] >= end => buffer,
        old => {
            let old_capacity = old.as_ref().map_or(0, |o| o.dims()[2]);
            let capacity = end.max(reserve).max(2 * old_capacity);
            let fresh = Tensor::zeros([b, h, capacity, d], (&new.device(), new.dtype()));
            match old {
                Some(old) if past > 0 => {
                    fresh.slice_assign([0..b, 0..h, 0..past, 0..d], old.narrow(2, 0, past))
                }
                _ => fresh,
            }
        }
    };
    // The buffer is uniquely owned here (the views handed out last step are gone), so the
    // backend writes in place.
    buffer.slice_assign([0..b, 0..h, past..end, 0..d], new)
}

/// A per-layer KV cache for incremental decoding.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache that grows as needed (doubling).
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache whose buffers are allocated for `capacity` positions up front (prompt plus
    /// new tokens), so decoding never reallocates.
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            len: 0,
            capacity,
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers are allocated for up front.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keeps only the batch rows `rows` (in that order), e.g. to stop computing sequences that
    /// already ended.
    pub fn keep_rows(&mut self, rows: &[usize]) {
        for layer in &mut self.layers {
            for buffer in [&mut layer.keys, &mut layer.values] {
                if let Some(t) = buffer.take() {
                    let idx = Tensor::<1, Int>::from_data(
                        TensorData::new(
                            rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                            [rows.len()],
                        ),
                        &t.device(),
                    );
                    *buffer = Some(t.select(0, idx));
                }
            }
        }
    }
}

/// What `load` reads: the network, its config, its tokenizer and generation defaults.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub model: CausalLm,
    pub tokenizer: Option<Tokenizer>,
    pub generation_config: Option<serde_json::Value>,
}

/// Which heads to build on the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heads {
    /// Next-token logits (policies, references).
    Lm,
    /// A scalar per position (value and reward models); created fresh when the checkpoint has
    /// none.
    Score,
    Both,
}

/// Loads a Hugging Face model folder, a `.gguf` file, or a PEFT adapter folder (its base, named
/// by `base_model_name_or_path`, with the adapter attached) onto `device`.
pub fn load(path: &Path, device: &Device, heads: Heads) -> Result<LoadedModel, ModelError> {
    load_stored(path, device, heads, WeightDtype::F32)
}

/// [`load`], the matrices stored as `storage` (for frozen models; see `precision`). An
/// adapter folder's adapter stays f32.
pub fn load_stored(
    path: &Path,
    device: &Device,
    heads: Heads,
    storage: WeightDtype,
) -> Result<LoadedModel, ModelError> {
    if lora::is_adapter_dir(path) {
        let base = lora::adapter_base(path)?;
        return load_with_adapter(&base, path, device, heads, storage);
    }
    let checkpoint = if path.is_dir() {
        hf::read_dir(path)?
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        hf::Checkpoint::from_gguf(path)?
    } else if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such model folder or .gguf file",
            ),
        ));
    } else {
        return Err(ModelError::Format {
            path: path.into(),
            message: "expected a Hugging Face model folder (config.json, model.safetensors, \
                      tokenizer.json) or a .gguf file"
                .into(),
        });
    };
    checkpoint
        .build(device, heads, storage)
        .map_err(|e| match e {
            ModelError::Shape { .. } | ModelError::MissingTensor { .. } => ModelError::Mismatch {
                path: path.into(),
                source: Box::new(e),
            },
            other => other,
        })
}

/// Loads a run's checkpoint to resume from: an adapter folder (LoRA) onto its base stored as
/// `frozen`; a full checkpoint (all of it trains) in f32.
pub fn load_checkpoint(
    path: &Path,
    device: &Device,
    heads: Heads,
    frozen: WeightDtype,
) -> Result<LoadedModel, ModelError> {
    if lora::is_adapter_dir(path) {
        load_stored(path, device, heads, frozen)
    } else {
        load(path, device, heads)
    }
}

/// Loads `base` (its matrices stored as `storage`) and attaches the PEFT adapter in
/// `adapter` (the base frozen, the adapter trainable on an autodiff device). The adapter's
/// tokenizer, when it has one, wins.
pub fn load_with_adapter(
    base: &Path,
    adapter: &Path,
    device: &Device,
    heads: Heads,
    storage: WeightDtype,
) -> Result<LoadedModel, ModelError> {
    let mut loaded = load_stored(base, device, heads, storage)?;
    loaded.model = lora::load_adapter(loaded.model, adapter, &absolute(base))?;
    if adapter.join("tokenizer.json").exists() {
        loaded.tokenizer = Some(Tokenizer::from_dir(adapter)?);
    }
    Ok(loaded)
}

/// Loads a model for generation, serving or judging: `path` (a folder, `.gguf` or adapter
/// folder) with `adapter` attached, every adapter merged into its weights (`W + s A B`), so
/// decoding costs what the base costs. Matrices are stored as `storage`.
pub fn load_for_inference(
    path: &Path,
    adapter: Option<&Path>,
    device: &Device,
    heads: Heads,
    storage: WeightDtype,
) -> Result<LoadedModel, ModelError> {
    let mut loaded = match adapter {
        Some(adapter) => load_with_adapter(path, adapter, device, heads, storage)?,
        None => load_stored(path, device, heads, storage)?,
    };
    loaded.model = lora::merge(loaded.model);
    Ok(loaded)
}

/// A model with fresh random weights (N(0, 0.02), as [`decoder::init_weights`]) in the shape
/// of `dir/config.json`, with `dir/tokenizer.json` when present: for measuring a checkpoint's
/// shape where its weights cannot be fetched (`rlft bench --random-weights`).
pub fn random_weights(
    dir: &Path,
    device: &Device,
    heads: Heads,
    storage: WeightDtype,
) -> Result<LoadedModel, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format {
        path: path.clone(),
        message: format!("invalid JSON: {e}"),
    })?;
    let config = ModelConfig::from_json(value).map_err(|message| ModelError::Config {
        path: path.clone(),
        message,
    })?;
    let mut tensors = decoder::init_weights(&config, 0);
    let with_score = matches!(heads, Heads::Score | Heads::Both);
    if with_score {
        tensors.insert(
            "score.weight".into(),
            HostTensor::new(vec![1, config.hidden_size], vec![0.0; config.hidden_size]),
        );
    }
    let mut reader = WeightReader::new(tensors, device);
    reader.set_storage(storage);
    let model = CausalLm::from_weights(&config, &mut reader, heads != Heads::Score, with_score)?;
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(dir)?)
    } else {
        None
    };
    Ok(LoadedModel {
        config,
        model,
        tokenizer,
        generation_config: None,
    })
}

/// `path` made absolute where it exists (what an adapter records as its base, so a resume
/// from another directory finds it).
fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Loads the model a run trains: `[model] path`, with `[model] adapter` attached, or fresh
/// adapters from `[lora]` (base frozen, its matrices stored as `frozen`); a plain model
/// (all of it training, so f32) otherwise.
pub fn load_for_run(
    path: &Path,
    adapter: Option<&Path>,
    lora_config: Option<&lora::LoraConfig>,
    device: &Device,
    heads: Heads,
    seed: u64,
    frozen: WeightDtype,
) -> Result<LoadedModel, ModelError> {
    match (adapter, lora_config) {
        (Some(_), Some(_)) => Err(ModelError::Config {
            path: path.to_path_buf(),
            message: "both `[model] adapter` and a `[lora]` section: train the saved adapter \
                      (drop `[lora]`) or a new one (drop `adapter`)"
                .into(),
        }),
        (Some(adapter), None) => load_with_adapter(path, adapter, device, heads, frozen),
        (None, Some(cfg)) => {
            let mut loaded = load_stored(path, device, heads, frozen)?;
            loaded.model = lora::add_adapters(
                loaded.model,
                loaded.config.family,
                cfg,
                &absolute(path),
                seed,
            )
            .map_err(|message| ModelError::Config {
                path: path.to_path_buf(),
                message,
            })?;
            Ok(loaded)
        }
        (None, None) => load(path, device, heads),
    }
}
