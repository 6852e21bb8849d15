//! The model families rlft builds, each in one file: which `config.json` fields it reads, how its
//! block differs from Llama's (an [`Arch`]), how its checkpoint keys map onto the shared
//! decoder's, and what llama.cpp's GGUF converter changed in its tensors.
//!
//! The shared decoder (`decoder.rs`) reads weights under *canonical* names: Llama's
//! (`model.layers.N.self_attn.q_proj.weight`, ...) plus the norm names of the placement
//! (`pre_feedforward_layernorm`, ...). Most families use exactly those names; Phi-3 (fused
//! projections) and GPT-2 (Conv1D, `transformer.h.N`) convert in their own files.

mod gemma;
mod gpt2;
mod granite;
mod llama;
mod olmo2;
mod phi3;
mod qwen;

use super::config::{Arch, Fields, LayerAttention, NormPlacement, Sizes};
use super::weights::NamedTensors;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Gemma3,
    Phi3,
    Olmo2,
    Granite,
    Gpt2,
}

impl Family {
    pub const ALL: [Family; 11] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma,
        Family::Gemma2,
        Family::Gemma3,
        Family::Phi3,
        Family::Olmo2,
        Family::Granite,
        Family::Gpt2,
    ];

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            // SmolLM checkpoints are Llama with another name.
            "llama" | "smollm" | "smollm2" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma" => Family::Gemma,
            "gemma2" => Family::Gemma2,
            "gemma3_text" => Family::Gemma3,
            "phi3" => Family::Phi3,
            "olmo2" => Family::Olmo2,
            "granite" => Family::Granite,
            "gpt2" => Family::Gpt2,
            _ => return None,
        })
    }

    /// `model_type` as transformers spells it.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
            Family::Olmo2 => "olmo2",
            Family::Granite => "granite",
            Family::Gpt2 => "gpt2",
        }
    }

    /// The transformers class saved as `architectures[0]`.
    pub fn architecture(self, sequence_classification: bool) -> String {
        let prefix = match self {
            Family::Llama => "Llama",
            Family::Mistral => "Mistral",
            Family::Qwen2 => "Qwen2",
            Family::Qwen3 => "Qwen3",
            Family::Gemma => "Gemma",
            Family::Gemma2 => "Gemma2",
            Family::Gemma3 => "Gemma3",
            Family::Phi3 => "Phi3",
            Family::Olmo2 => "Olmo2",
            Family::Granite => "Granite",
            Family::Gpt2 => "GPT2",
        };
        match (self, sequence_classification) {
            (Family::Gpt2, false) => "GPT2LMHeadModel".into(),
            (Family::Gemma3, true) => "Gemma3TextForSequenceClassification".into(),
            (_, true) => format!("{prefix}ForSequenceClassification"),
            (_, false) => format!("{prefix}ForCausalLM"),
        }
    }

    /// llama.cpp's `general.architecture` for this family's GGUF files (Mistral converts as
    /// `llama`).
    pub fn gguf_architecture(self) -> &'static str {
        match self {
            Family::Llama | Family::Mistral => "llama",
            Family::Gemma3 => "gemma3",
            other => other.model_type(),
        }
    }

    pub fn from_gguf_architecture(arch: &str) -> Option<Self> {
        match arch {
            "gemma3" => Some(Family::Gemma3),
            "mistral" => Some(Family::Mistral),
            other => Family::from_model_type(other).filter(|f| *f != Family::Mistral),
        }
    }
}

/// The shared sizes, from the family's own field names.
pub fn sizes(family: Family, f: &Fields) -> Result<Sizes, String> {
    match family {
        Family::Gpt2 => gpt2::sizes(f),
        Family::Gemma | Family::Gemma2 | Family::Gemma3 => Sizes::llama_style(f, true),
        _ => Sizes::llama_style(f, false),
    }
}

/// The family's block, from its config fields.
pub fn arch(family: Family, f: &Fields, s: &Sizes) -> Result<Arch, String> {
    match family {
        Family::Llama => llama::arch(f, s),
        Family::Mistral => llama::mistral_arch(f, s),
        Family::Qwen2 => qwen::qwen2_arch(f, s),
        Family::Qwen3 => qwen::qwen3_arch(f, s),
        Family::Gemma => gemma::gemma_arch(f, s),
        Family::Gemma2 => gemma::gemma2_arch(f, s),
        Family::Gemma3 => gemma::gemma3_arch(f, s),
        Family::Phi3 => phi3::arch(f, s),
        Family::Olmo2 => olmo2::arch(f, s),
        Family::Granite => granite::arch(f, s),
        Family::Gpt2 => gpt2::arch(f, s),
    }
}

/// Checkpoint tensors renamed / split into canonical names (in place).
pub fn to_canonical(
    family: Family,
    cfg: &super::ModelConfig,
    tensors: &mut NamedTensors,
) -> Result<(), String> {
    match family {
        Family::Phi3 => phi3::split_fused(cfg, tensors),
        Family::Gpt2 => gpt2::to_canonical(cfg, tensors),
        _ => Ok(()),
    }
}

/// Canonical tensors back to the family's checkpoint names and layouts (in place).
pub fn from_canonical(family: Family, cfg: &super::ModelConfig, tensors: &mut NamedTensors) {
    match family {
        Family::Phi3 => phi3::fuse(cfg, tensors),
        Family::Gpt2 => gpt2::from_canonical(cfg, tensors),
        _ => {}
    }
}

/// The canonical names of a layer's four norm slots (before and after attention, before and
/// after the MLP), as transformers names them for each placement.
pub struct NormNames {
    pub attn: Option<&'static str>,
    pub attn_post: Option<&'static str>,
    pub mlp: Option<&'static str>,
    pub mlp_post: Option<&'static str>,
}

pub fn norm_names(placement: NormPlacement) -> NormNames {
    match placement {
        NormPlacement::Pre => NormNames {
            attn: Some("input_layernorm"),
            attn_post: None,
            mlp: Some("post_attention_layernorm"),
            mlp_post: None,
        },
        NormPlacement::Sandwich => NormNames {
            attn: Some("input_layernorm"),
            attn_post: Some("post_attention_layernorm"),
            mlp: Some("pre_feedforward_layernorm"),
            mlp_post: Some("post_feedforward_layernorm"),
        },
        NormPlacement::Post => NormNames {
            attn: None,
            attn_post: Some("post_attention_layernorm"),
            mlp: None,
            mlp_post: Some("post_feedforward_layernorm"),
        },
    }
}

/// Per-layer attention from `layer_types` when the config lists them (transformers 5 writes
/// them), else from the family's default pattern. `window` is `sliding_window`.
pub(crate) fn layer_attention(
    f: &Fields,
    num_layers: usize,
    window: Option<usize>,
    default_sliding: impl Fn(usize) -> bool,
    local_rope: bool,
) -> Result<Vec<LayerAttention>, String> {
    let sliding: Vec<bool> = match f.get("layer_types") {
        Some(serde_json::Value::Array(types)) => types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("full_attention") => Ok(false),
                Some("sliding_attention") => Ok(true),
                _ => Err(format!(
                    "`layer_types[{i}]` = {t} is not supported (full_attention, sliding_attention)"
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("`layer_types` must be a list, found {other}")),
        None => (0..num_layers).map(default_sliding).collect(),
    };
    sliding
        .into_iter()
        .enumerate()
        .map(|(i, sliding)| {
            if !sliding {
                return Ok(LayerAttention {
                    window: None,
                    local_rope: false,
                });
            }
            let window = window.filter(|w| *w > 0).ok_or_else(|| {
                format!("layer {i} uses sliding-window attention but `sliding_window` is not set")
            })?;
            Ok(LayerAttention {
                window: Some(window),
                local_rope,
            })
        })
        .collect()
}

/// Layers that all attend fully.
pub(crate) fn full_layers(n: usize) -> Vec<LayerAttention> {
    vec![
        LayerAttention {
            window: None,
            local_rope: false,
        };
        n
    ]
}

/// Splits a `[a + b + ..., in]` row-stacked tensor (and its bias) into parts of the given row
/// counts.
pub(crate) fn split_rows(
    tensors: &mut NamedTensors,
    from: &str,
    parts: &[(&str, usize)],
) -> Result<(), String> {
    let Some(t) = tensors.remove(from) else {
        return Err(format!("tensor `{from}` is missing from the checkpoint"));
    };
    let rows: usize = parts.iter().map(|p| p.1).sum();
    if t.shape.first() != Some(&rows) {
        return Err(format!(
            "tensor `{from}` has shape {:?}, expected {rows} rows",
            t.shape
        ));
    }
    let cols = t.data.len() / rows.max(1);
    let mut start = 0;
    for (name, n) in parts {
        let mut shape = t.shape.clone();
        shape[0] = *n;
        let data = t.data[start * cols..(start + n) * cols].to_vec();
        tensors.insert(
            name.to_string(),
            super::weights::HostTensor::new(shape, data),
        );
        start += n;
    }
    Ok(())
}

/// The inverse of [`split_rows`]; does nothing when a part is missing.
pub(crate) fn stack_rows(tensors: &mut NamedTensors, into: &str, parts: &[&str]) {
    if !parts.iter().all(|p| tensors.contains_key(*p)) {
        return;
    }
    let mut shape = Vec::new();
    let mut data = Vec::new();
    for p in parts {
        let Some(t) = tensors.remove(*p) else { return };
        if shape.is_empty() {
            shape = t.shape.clone();
        } else {
            shape[0] += t.shape[0];
        }
        data.extend(t.data);
    }
    tensors.insert(
        into.to_string(),
        super::weights::HostTensor::new(shape, data),
    );
}
