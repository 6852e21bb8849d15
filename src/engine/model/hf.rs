//! Hugging Face model folders in and out: `config.json`, `model.safetensors` (or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`, `generation_config.json`. A GGUF file is
//! converted into the same in-memory form, so everything past this point sees one format.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use super::tokenizer::Tokenizer;
use super::weights::{HostTensor, NamedTensors};
use super::{
    CausalLm, Heads, LoadedModel, ModelConfig, ModelError, WeightReader, WeightWriter, families,
};

/// A checkpoint read from disk, not yet placed on a device.
pub struct Checkpoint {
    pub source: PathBuf,
    pub config: ModelConfig,
    /// Under the family's checkpoint names (converted to canonical names by `build`).
    pub tensors: NamedTensors,
    /// Absent in folders that ship weights only (tests, some exports).
    pub tokenizer: Option<Tokenizer>,
    pub generation_config: Option<serde_json::Value>,
}

/// Std of the fresh scalar head, as transformers' `initializer_range` default.
const SCORE_HEAD_INIT_STD: f32 = 0.02;
/// Fixed so a reward model built twice from the same base starts identical.
const SCORE_HEAD_INIT_SEED: u64 = 0x5c0e;

impl Checkpoint {
    pub fn from_gguf(path: &Path) -> Result<Self, ModelError> {
        let g = super::gguf_to_hf::load_as_hf(path)?;
        let config = parse_config(path, g.config)?;
        Ok(Self {
            source: path.into(),
            config,
            tensors: g.tensors,
            tokenizer: Some(g.tokenizer),
            generation_config: g.generation_config,
        })
    }

    /// Places the weights on `device` as a model with the requested heads.
    /// The model on `device`, its matrices stored as `storage` (see `precision`).
    pub fn build(
        mut self,
        device: &Device,
        heads: Heads,
        storage: super::WeightDtype,
    ) -> Result<LoadedModel, ModelError> {
        families::to_canonical(self.config.family, &self.config, &mut self.tensors).map_err(
            |message| ModelError::Format {
                path: self.source.clone(),
                message,
            },
        )?;
        let mut reader = WeightReader::new(self.tensors, device);
        reader.set_storage(storage);
        let with_score = matches!(heads, Heads::Score | Heads::Both);
        if with_score {
            reader.init_if_missing(
                "score.weight",
                vec![1, self.config.hidden_size],
                SCORE_HEAD_INIT_STD,
                SCORE_HEAD_INIT_SEED,
            );
        }
        let with_lm = matches!(heads, Heads::Lm | Heads::Both);
        let model = CausalLm::from_weights(&self.config, &mut reader, with_lm, with_score)?;
        Ok(LoadedModel {
            config: self.config,
            model,
            tokenizer: self.tokenizer,
            generation_config: self.generation_config,
        })
    }
}

fn parse_config(source: &Path, value: serde_json::Value) -> Result<ModelConfig, ModelError> {
    ModelConfig::from_json(value).map_err(|message| ModelError::Config {
        path: source.into(),
        message,
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let text = fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Format {
        path: path.into(),
        message: format!("invalid JSON: {e}"),
    })
}

/// Reads a Hugging Face model folder.
pub fn read_dir(dir: &Path) -> Result<Checkpoint, ModelError> {
    let config_path = dir.join("config.json");
    let config = parse_config(&config_path, read_json(&config_path)?)?;
    let mut tensors = NamedTensors::new();
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        read_safetensors(&single, &mut tensors)?;
    } else if index.exists() {
        let map = read_json(&index)?;
        let weight_map = map
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Format {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut shards: Vec<&str> = weight_map.values().filter_map(|v| v.as_str()).collect();
        shards.sort();
        shards.dedup();
        for shard in shards {
            read_safetensors(&dir.join(shard), &mut tensors)?;
        }
    } else {
        return Err(ModelError::io(
            &single,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no model.safetensors"),
        ));
    }
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(dir)?)
    } else {
        None
    };
    let gen_path = dir.join("generation_config.json");
    let generation_config = if gen_path.exists() {
        Some(read_json(&gen_path)?)
    } else {
        None
    };
    Ok(Checkpoint {
        source: dir.into(),
        config,
        tensors,
        tokenizer,
        generation_config,
    })
}

/// Reads every tensor of one safetensors file as f32.
pub fn read_safetensors(path: &Path, out: &mut NamedTensors) -> Result<(), ModelError> {
    let file = fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the mapping is read-only and dropped before this function returns; a file
    // truncated underneath us is the only hazard, as with any mmap reader.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Format {
        path: path.into(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Format {
                    path: path.into(),
                    message: format!(
                        "tensor `{name}` has dtype {other:?}; rlft reads F32, F16 and BF16"
                    ),
                });
            }
        };
        out.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok(())
}

/// Writes f32 tensors as one safetensors file (`{"format": "pt"}` as transformers writes).
pub fn write_safetensors(path: &Path, tensors: &NamedTensors) -> Result<(), ModelError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let raw = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), raw, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, raw, shape)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ModelError::Format {
            path: path.into(),
            message: e.to_string(),
        })?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| ModelError::Format {
        path: path.into(),
        message: format!("writing safetensors: {e}"),
    })
}

/// Writes a model as a Hugging Face folder that transformers loads. Files are written to a
/// temporary sibling folder and renamed into place, so a crash never leaves half a checkpoint
/// where a good one was.
pub fn save_dir(
    dir: &Path,
    config: &ModelConfig,
    model: &CausalLm,
    tokenizer: Option<&Tokenizer>,
    generation_config: Option<&serde_json::Value>,
) -> Result<(), ModelError> {
    // A LoRA model saves as a PEFT adapter folder (with the tokenizer, as TRL does).
    if let Some(info) = &model.adapter {
        return super::lora::save_adapter(dir, info, model, |tmp| {
            if let Some(g) = generation_config {
                write_json(&tmp.join("generation_config.json"), g)?;
            }
            if let Some(tokenizer) = tokenizer {
                tokenizer.save(tmp)?;
            }
            Ok(())
        });
    }
    let tmp = dir.with_extension("tmp-save");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let mut writer = WeightWriter::default();
    model.to_weights(&mut writer);
    families::from_canonical(config.family, config, &mut writer.tensors);
    write_safetensors(&tmp.join("model.safetensors"), &writer.tensors)?;
    let mut config_json = config.to_json();
    if let Some(obj) = config_json.as_object_mut() {
        let classifier =
            model.score.is_some() && model.lm_head.is_none() && !config.tie_word_embeddings;
        obj.insert(
            "architectures".into(),
            serde_json::json!([config.family.architecture(classifier)]),
        );
        if model.score.is_some() {
            obj.insert("num_labels".into(), serde_json::json!(1));
        }
        obj.insert("torch_dtype".into(), serde_json::json!("float32"));
        obj.insert(
            "model_type".into(),
            serde_json::json!(config.family.model_type()),
        );
    }
    write_json(&tmp.join("config.json"), &config_json)?;
    if let Some(g) = generation_config {
        write_json(&tmp.join("generation_config.json"), g)?;
    }
    if let Some(tokenizer) = tokenizer {
        tokenizer.save(&tmp)?;
    }
    if dir.exists() {
        let old = dir.with_extension("old-save");
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| ModelError::io(&old, e))?;
        }
        fs::rename(dir, &old).map_err(|e| ModelError::io(dir, e))?;
        fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
        fs::remove_dir_all(&old).map_err(|e| ModelError::io(&old, e))?;
    } else {
        fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
    }
    Ok(())
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Format {
        path: path.into(),
        message: e.to_string(),
    })?;
    fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}
