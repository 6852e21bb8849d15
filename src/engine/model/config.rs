//! Model configuration read from a Hugging Face `config.json`: the fields every family shares,
//! normalised (GPT-2's `n_embd` is `hidden_size` here), and the [`Arch`] the family derives from
//! its own fields. The JSON as read is kept and written back on save, so a saved checkpoint
//! carries every field transformers needs, in the family's own spelling.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::families::{self, Family};
pub use super::rope::{Rope, RopeScaling, read_rope};

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

/// How a family normalises: Llama's RMSNorm, Gemma's RMSNorm scaled by `1 + w`, GPT-2's
/// LayerNorm (with bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    RmsOneOffset,
    Layer,
}

/// Where a decoder layer puts its norms (HF names differ per family; see `families`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// `x + f(norm(x))` (Llama, GPT-2, ...).
    Pre,
    /// `x + norm_post(f(norm_pre(x)))` (Gemma 2 and 3).
    Sandwich,
    /// `x + norm(f(x))` (OLMo 2).
    Post,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`, `gelu_fast`).
    GeluTanh,
    /// Exact (erf) GELU.
    Gelu,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "gelu_python_tanh" => {
                Activation::GeluTanh
            }
            "gelu" | "gelu_python" => Activation::Gelu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }
}

/// Per-head norm of q and k before RoPE (Qwen3, Gemma 3), or over the whole projection width
/// (OLMo 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    PerHead,
    FullWidth,
}

/// Where a model's positions come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Positions {
    /// Rotary; `local` is a second set for sliding-window layers (Gemma 3).
    Rope {
        global: Box<Rope>,
        local: Option<Box<Rope>>,
    },
    /// A learned `[max_positions, hidden]` table added to the embeddings (GPT-2).
    Learned,
}

/// Attention of one layer: full causal, or causal within `window` positions (a token sees
/// itself and the `window - 1` before it, as transformers masks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerAttention {
    pub window: Option<usize>,
    /// Uses the `local` RoPE of [`Positions::Rope`] (Gemma 3's sliding layers).
    pub local_rope: bool,
}

/// Everything the shared decoder needs to know about one family's network beyond the sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    pub norm: NormKind,
    pub norm_eps: f64,
    pub placement: NormPlacement,
    /// Gated MLP (`act(gate(x)) * up(x)`) or plain (`act(up(x))`, GPT-2).
    pub gated_mlp: bool,
    pub activation: Activation,
    pub qk_norm: QkNorm,
    pub positions: Positions,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Multiplies q·k (1/sqrt(head_dim) unless the family says otherwise).
    pub attention_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Multiplies the token embeddings (Gemma: sqrt(hidden); Granite: `embedding_multiplier`).
    pub embedding_scale: f64,
    /// Multiplies each block's output before the residual add (Granite).
    pub residual_scale: f64,
    /// Multiplies the logits (Granite: 1 / `logits_scaling`).
    pub logit_scale: f64,
    pub layers: Vec<LayerAttention>,
}

impl Arch {
    /// Plain Llama: the block the CPU single-sequence decoder implements (every dimension of
    /// a `head_dim`-wide head rotates).
    pub fn is_plain_llama(&self, head_dim: usize) -> bool {
        let plain_rope = matches!(&self.positions, Positions::Rope { local: None, global }
            if !matches!(global.scaling, RopeScaling::Dynamic { .. }) && global.rotary_dim == head_dim);
        self.norm == NormKind::Rms
            && self.placement == NormPlacement::Pre
            && self.gated_mlp
            && self.activation == Activation::Silu
            && self.qk_norm == QkNorm::None
            && plain_rope
            && self.attn_softcap.is_none()
            && self.final_softcap.is_none()
            && self.embedding_scale == 1.0
            && self.residual_scale == 1.0
            && self.logit_scale == 1.0
            && self.layers.iter().all(|l| l.window.is_none())
    }
}

/// A model's configuration: shared sizes plus the family's [`Arch`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<u32>,
    pub arch: Arch,
    /// `config.json` as read (transformers 5's `rope_parameters` and all), written back on save.
    pub raw: Map<String, Value>,
}

/// A config field lookup that names the field in its errors.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<Option<usize>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| format!("`{key}` must be a non-negative integer, found {v}")),
        }
    }

    pub fn require_usize(&self, key: &str) -> Result<usize, String> {
        self.usize(key)?
            .ok_or_else(|| format!("`{key}` is missing"))
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("`{key}` must be a number, found {v}")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| format!("`{key}` must be true or false, found {v}")),
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("`{key}` must be a string, found {v}")),
        }
    }

    /// The activation named by the first of `keys` present (`hidden_act`, ...).
    pub fn activation(&self, keys: &[&str], default: Activation) -> Result<Activation, String> {
        for key in keys {
            if let Some(name) = self.str(key)? {
                return Activation::parse(name).ok_or_else(|| {
                    format!("`{key}` = `{name}` is not supported (silu, gelu, gelu_pytorch_tanh, gelu_new, relu)")
                });
            }
        }
        Ok(default)
    }
}

impl ModelConfig {
    /// Reads a `config.json` value; errors name the offending field.
    pub fn from_json(value: Value) -> Result<Self, String> {
        let Value::Object(raw) = value else {
            return Err("config.json must be a JSON object".into());
        };
        let f = Fields(&raw);
        let model_type = f.str("model_type")?.unwrap_or("llama");
        let family = Family::from_model_type(model_type).ok_or_else(|| {
            let hint = if model_type == "gemma3" {
                " (a multimodal Gemma 3 config; point rlft at a text-only `gemma3_text` checkpoint)"
            } else {
                ""
            };
            format!(
                "`model_type` = `{model_type}` is not supported{hint}; rlft builds: {}",
                Family::ALL
                    .iter()
                    .map(|f| f.model_type())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let sizes = families::sizes(family, &f)?;
        let arch = families::arch(family, &f, &sizes)?;
        let ids = |key: &str| -> Result<Option<u32>, String> {
            match f.get(key) {
                None => Ok(None),
                Some(Value::Array(a)) => Ok(a.first().and_then(|v| v.as_u64()).map(|v| v as u32)),
                Some(v) => v
                    .as_u64()
                    .map(|v| Some(v as u32))
                    .ok_or_else(|| format!("`{key}` must be a token id, found {v}")),
            }
        };
        let eos_token_id = match f.get("eos_token_id") {
            None => None,
            Some(v) => Some(serde_json::from_value::<TokenIds>(v.clone()).map_err(|_| {
                format!("`eos_token_id` must be an id or a list of ids, found {v}")
            })?),
        };
        let config = ModelConfig {
            family,
            vocab_size: sizes.vocab_size,
            hidden_size: sizes.hidden_size,
            intermediate_size: sizes.intermediate_size,
            num_hidden_layers: sizes.num_hidden_layers,
            num_attention_heads: sizes.num_attention_heads,
            num_key_value_heads: sizes.num_key_value_heads,
            head_dim: sizes.head_dim,
            max_position_embeddings: sizes.max_position_embeddings,
            tie_word_embeddings: sizes.tie_word_embeddings,
            bos_token_id: ids("bos_token_id")?,
            eos_token_id,
            pad_token_id: ids("pad_token_id")?,
            arch,
            raw,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn model_type(&self) -> &'static str {
        self.family.model_type()
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads
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
            ("head_dim", self.head_dim),
        ];
        for (name, value) in fields {
            if value == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if let Positions::Rope { global, local } = &self.arch.positions {
            for rope in std::iter::once(global).chain(local.as_ref()) {
                if rope.rotary_dim == 0
                    || !rope.rotary_dim.is_multiple_of(2)
                    || rope.rotary_dim > self.head_dim
                {
                    return Err(format!(
                        "rotary dimension {} (`partial_rotary_factor` x `head_dim` {}) must be even and within the head",
                        rope.rotary_dim, self.head_dim
                    ));
                }
            }
        }
        let kv = self.num_key_value_heads;
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({kv})",
                self.num_attention_heads
            ));
        }
        if self.arch.layers.len() != self.num_hidden_layers {
            return Err(format!(
                "`layer_types` has {} entries for {} layers",
                self.arch.layers.len(),
                self.num_hidden_layers
            ));
        }
        Ok(())
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Parameter count of the language model (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let a = &self.arch;
        let h = self.hidden_size;
        let hd = self.head_dim;
        let (q_dim, kv_dim) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let ff = self.intermediate_size;
        // A norm's scale, and its bias for LayerNorm.
        let norm = |n: usize| {
            if a.norm == NormKind::Layer { 2 * n } else { n }
        };
        let bias = |on: bool, n: usize| if on { n } else { 0 };
        let attention = h * q_dim
            + 2 * h * kv_dim
            + q_dim * h
            + bias(a.qkv_bias, q_dim + 2 * kv_dim)
            + bias(a.o_bias, h);
        let up_width = if a.gated_mlp { 2 * ff } else { ff };
        let mlp = up_width * h + ff * h + bias(a.mlp_bias, up_width + h);
        let qk_norms = match a.qk_norm {
            QkNorm::None => 0,
            QkNorm::PerHead => 2 * norm(hd),
            QkNorm::FullWidth => norm(q_dim) + norm(kv_dim),
        };
        let names = super::families::norm_names(a.placement);
        let layer_norms = [names.attn, names.attn_post, names.mlp, names.mlp_post]
            .iter()
            .flatten()
            .count()
            * norm(h);
        let per_layer = attention + mlp + qk_norms + layer_norms;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        let positions = match a.positions {
            Positions::Learned => self.max_position_embeddings * h,
            Positions::Rope { .. } => 0,
        };
        embed + positions + head + self.num_hidden_layers * per_layer + norm(h)
    }

    /// The config as `config.json` holds it (what was read, plus anything set since).
    pub fn to_json(&self) -> Value {
        Value::Object(self.raw.clone())
    }
}

/// Sizes every family has, read from the family's own field names.
pub struct Sizes {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl Sizes {
    /// The Llama spelling (`hidden_size`, `num_attention_heads`, ...), shared by every family
    /// but GPT-2.
    pub fn llama_style(f: &Fields, default_tied: bool) -> Result<Self, String> {
        let hidden_size = f.require_usize("hidden_size")?;
        let num_attention_heads = f.require_usize("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err("`num_attention_heads` must be positive".into());
        }
        let head_dim = match f.usize("head_dim")? {
            Some(d) => d,
            None => {
                if !hidden_size.is_multiple_of(num_attention_heads) {
                    return Err(format!(
                        "`hidden_size` ({hidden_size}) is not divisible by `num_attention_heads` ({num_attention_heads}) and there is no `head_dim`"
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        Ok(Sizes {
            vocab_size: f.require_usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.require_usize("intermediate_size")?,
            num_hidden_layers: f.require_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: f
                .usize("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim,
            max_position_embeddings: f.usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(default_tied),
        })
    }
}

/// `serde_json::from_value::<ModelConfig>(json)` reads a `config.json` value through
/// [`ModelConfig::from_json`], so its errors name the field.
impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        ModelConfig::from_json(value).map_err(serde::de::Error::custom)
    }
}

/// Serialises as the `config.json` it was read from.
impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}
