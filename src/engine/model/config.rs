//! Model configuration read from a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

/// `eos_token_id` is an int in most configs and a list in Llama 3's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    2048
}

/// The fields of a Llama-family `config.json` that shape the network. Unknown fields are
/// kept in `extra` so a saved checkpoint writes back what it read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q, k, v and o projections (Llama's flag).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub model_type: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Qwen2 puts bias on q/k/v but not on o; Llama's `attention_bias` covers all four.
    pub fn o_proj_bias(&self) -> bool {
        self.attention_bias && self.model_type != "qwen2"
    }

    /// Checks the shape facts the forward pass relies on; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in fields {
            if value == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` ({}) is not divisible by `num_attention_heads` ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim()
            ));
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({kv})",
                self.num_attention_heads
            ));
        }
        if let Some(scaling) = &self.rope_scaling {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            if !matches!(kind, "default" | "llama3") {
                return Err(format!(
                    "`rope_scaling` type `{kind}` is not supported (default, llama3)"
                ));
            }
        }
        Ok(())
    }

    /// RoPE inverse frequencies in f32, with Llama 3.1's frequency scaling when configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        let mut inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        let llama3 = self.rope_scaling.as_ref().filter(|s| {
            s.get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(|v| v.as_str())
                == Some("llama3")
        });
        if let Some(s) = llama3 {
            let get = |k: &str, default: f64| s.get(k).and_then(|v| v.as_f64()).unwrap_or(default);
            let factor = get("factor", 8.0) as f32;
            let low = get("low_freq_factor", 1.0) as f32;
            let high = get("high_freq_factor", 4.0) as f32;
            let old_ctx = get("original_max_position_embeddings", 8192.0) as f32;
            let low_wavelen = old_ctx / low;
            let high_wavelen = old_ctx / high;
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old_ctx / wavelen - low) / (high - low);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
        inv
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Parameter count of the language model (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let h = self.hidden_size;
        let hd = self.head_dim();
        let q = h * self.num_attention_heads * hd;
        let kv = 2 * h * self.num_kv_heads() * hd;
        let o = self.num_attention_heads * hd * h;
        let mlp = 3 * h * self.intermediate_size;
        let per_layer = q + kv + o + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_hidden_layers * per_layer + h
    }
}
