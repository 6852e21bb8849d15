//! The decoder every family shares: token (and, for GPT-2, position) embeddings, a stack of
//! layers (attention and MLP, each with up to two norms, see [`NormPlacement`]), a final norm,
//! and the heads: next-token logits and the scalar `score` head of value and reward models.
//! A family only chooses the blocks' settings ([`Arch`]); weights are read and written under
//! canonical names (Llama's, see `families`).
//!
//! Linear weights are kept in Burn's `[in, out]` layout (so `x.matmul(w)` needs no transpose
//! per call); the Hugging Face `[out, in]` layout is restored when saving.
//!
//! [`NormPlacement`]: super::config::NormPlacement

use burn::module::Param;
use burn::prelude::*;

use super::blocks::{Attention, Linear, Mlp, Norm, QkNorms, RopeAt, Rotary, attention_bias};
use super::config::{Arch, ModelConfig, Positions, QkNorm};
use super::families::norm_names;
use super::precision::f32_val;
use super::weights::{HostTensor, NamedTensors};
use super::{KvCache, ModelError, WeightReader, WeightWriter};
use burn::tensor::FloatDType;

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    /// Before attention (`input_layernorm`).
    pub attn_norm: Option<Norm>,
    /// On attention's output, before the residual add (Gemma 2/3, OLMo 2).
    pub attn_post_norm: Option<Norm>,
    /// Before the MLP (Llama's `post_attention_layernorm`).
    pub mlp_norm: Option<Norm>,
    /// On the MLP's output, before the residual add (Gemma 2/3, OLMo 2).
    pub mlp_post_norm: Option<Norm>,
    /// Sliding-window size, when this layer attends locally.
    #[module(skip)]
    pub window: Option<usize>,
    /// Uses the local rotary set (Gemma 3's sliding layers).
    #[module(skip)]
    pub local_rope: bool,
}

/// A decoder-only language model of any supported family, with its heads. `lm_head` is absent
/// when tied to `embed_tokens`; `score` is the scalar head of value and reward models (Hugging
/// Face's `...ForSequenceClassification`).
#[derive(Module, Debug)]
pub struct CausalLm {
    pub embed_tokens: Param<Tensor<2>>,
    /// Learned absolute positions (GPT-2's `wpe`).
    pub embed_positions: Option<Param<Tensor<2>>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: Norm,
    pub lm_head: Option<Linear>,
    pub score: Option<Linear>,
    #[module(skip)]
    rotary: Option<Rotary>,
    #[module(skip)]
    local_rotary: Option<Rotary>,
    #[module(skip)]
    arch: Arch,
    #[module(skip)]
    max_positions: usize,
    /// Set when LoRA adapters are attached: their config and the base they adapt (what
    /// saving writes as a PEFT adapter folder).
    #[module(skip)]
    pub adapter: Option<super::lora::AdapterInfo>,
}

fn norm(
    r: &mut WeightReader,
    prefix: &str,
    name: Option<&str>,
    len: usize,
    a: &Arch,
) -> Result<Option<Norm>, ModelError> {
    name.map(|n| Norm::read(r, &format!("{prefix}.{n}"), len, a.norm, a.norm_eps))
        .transpose()
}

impl CausalLm {
    /// Builds the model from weights under canonical names.
    pub fn from_weights(
        cfg: &ModelConfig,
        r: &mut WeightReader,
        with_lm_head: bool,
        with_score: bool,
    ) -> Result<Self, ModelError> {
        let device = r.device().clone();
        let a = &cfg.arch;
        let head_dim = cfg.head_dim;
        let h = cfg.hidden_size;
        let q_dim = cfg.num_attention_heads * head_dim;
        let kv_dim = cfg.num_key_value_heads * head_dim;
        let ff = cfg.intermediate_size;
        let names = norm_names(a.placement);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, kind) in a.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let proj = |r: &mut WeightReader, name: &str, dims: [usize; 2], bias: bool| {
                Linear::read(r, &format!("{p}.{name}"), dims, bias)
            };
            let qk_norm = match a.qk_norm {
                QkNorm::None => None,
                QkNorm::PerHead | QkNorm::FullWidth => {
                    let per_head = a.qk_norm == QkNorm::PerHead;
                    let (q_len, k_len) = if per_head {
                        (head_dim, head_dim)
                    } else {
                        (q_dim, kv_dim)
                    };
                    Some(QkNorms {
                        q_norm: Norm::read(
                            r,
                            &format!("{p}.self_attn.q_norm"),
                            q_len,
                            a.norm,
                            a.norm_eps,
                        )?,
                        k_norm: Norm::read(
                            r,
                            &format!("{p}.self_attn.k_norm"),
                            k_len,
                            a.norm,
                            a.norm_eps,
                        )?,
                        per_head,
                    })
                }
            };
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: proj(r, "self_attn.q_proj", [h, q_dim], a.qkv_bias)?,
                    k_proj: proj(r, "self_attn.k_proj", [h, kv_dim], a.qkv_bias)?,
                    v_proj: proj(r, "self_attn.v_proj", [h, kv_dim], a.qkv_bias)?,
                    o_proj: proj(r, "self_attn.o_proj", [q_dim, h], a.o_bias)?,
                    qk_norm,
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim,
                    scale: a.attention_scale,
                    softcap: a.attn_softcap,
                },
                mlp: Mlp {
                    gate_proj: if a.gated_mlp {
                        Some(proj(r, "mlp.gate_proj", [h, ff], a.mlp_bias)?)
                    } else {
                        None
                    },
                    up_proj: proj(r, "mlp.up_proj", [h, ff], a.mlp_bias)?,
                    down_proj: proj(r, "mlp.down_proj", [ff, h], a.mlp_bias)?,
                    activation: a.activation,
                },
                attn_norm: norm(r, &p, names.attn, h, a)?,
                attn_post_norm: norm(r, &p, names.attn_post, h, a)?,
                mlp_norm: norm(r, &p, names.mlp, h, a)?,
                mlp_post_norm: norm(r, &p, names.mlp_post, h, a)?,
                window: kind.window,
                local_rope: kind.local_rope,
            });
        }
        let embed_tokens = r.matrix("model.embed_tokens.weight", [cfg.vocab_size, h])?;
        let embed_positions = match a.positions {
            Positions::Learned => Some(r.matrix(
                "model.embed_positions.weight",
                [cfg.max_position_embeddings, h],
            )?),
            Positions::Rope { .. } => None,
        };
        let lm_head = if with_lm_head && !cfg.tie_word_embeddings {
            Some(Linear::read(r, "lm_head", [h, cfg.vocab_size], false)?)
        } else {
            None
        };
        // The score head is small and often trains (`modules_to_save`): always f32.
        let storage = r.storage();
        r.set_storage(super::precision::WeightDtype::F32);
        let score = if with_score {
            Some(Linear::read(r, "score", [h, 1], false)?)
        } else {
            None
        };
        r.set_storage(storage);
        let (rotary, local_rotary) = match &a.positions {
            Positions::Rope { global, local } => (
                Some(Rotary::new(global, &device)),
                local.as_ref().map(|l| Rotary::new(l, &device)),
            ),
            Positions::Learned => (None, None),
        };
        Ok(Self {
            embed_tokens,
            embed_positions,
            layers,
            norm: Norm::read(r, "model.norm", h, a.norm, a.norm_eps)?,
            lm_head,
            score,
            rotary,
            local_rotary,
            arch: a.clone(),
            max_positions: cfg.max_position_embeddings,
            adapter: None,
        })
    }

    /// Writes every parameter under its canonical name.
    pub fn to_weights(&self, w: &mut WeightWriter) {
        let names = norm_names(self.arch.placement);
        w.matrix("model.embed_tokens.weight", &self.embed_tokens);
        if let Some(pos) = &self.embed_positions {
            w.matrix("model.embed_positions.weight", pos);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            a.q_proj.write(w, &format!("{p}.self_attn.q_proj"));
            a.k_proj.write(w, &format!("{p}.self_attn.k_proj"));
            a.v_proj.write(w, &format!("{p}.self_attn.v_proj"));
            a.o_proj.write(w, &format!("{p}.self_attn.o_proj"));
            if let Some(n) = &a.qk_norm {
                n.q_norm.write(w, &format!("{p}.self_attn.q_norm"));
                n.k_norm.write(w, &format!("{p}.self_attn.k_norm"));
            }
            if let Some(gate) = &layer.mlp.gate_proj {
                gate.write(w, &format!("{p}.mlp.gate_proj"));
            }
            layer.mlp.up_proj.write(w, &format!("{p}.mlp.up_proj"));
            layer.mlp.down_proj.write(w, &format!("{p}.mlp.down_proj"));
            let slots = [
                (&layer.attn_norm, names.attn),
                (&layer.attn_post_norm, names.attn_post),
                (&layer.mlp_norm, names.mlp),
                (&layer.mlp_post_norm, names.mlp_post),
            ];
            for (norm, name) in slots {
                if let (Some(norm), Some(name)) = (norm, name) {
                    norm.write(w, &format!("{p}.{name}"));
                }
            }
        }
        self.norm.write(w, "model.norm");
        if let Some(head) = &self.lm_head {
            head.write(w, "lm_head");
        }
        if let Some(score) = &self.score {
            score.write(w, "score");
        }
    }

    /// Rows of the LM head (the embedding table when tied).
    pub fn vocab_size(&self) -> usize {
        match &self.lm_head {
            Some(head) => head.weight.dims()[1],
            None => self.embed_tokens.dims()[0],
        }
    }

    /// `max_position_embeddings` of the config it was built from.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The block settings this model was built with.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// Final hidden states `[B, T, H]` (after the last norm).
    ///
    /// `positions` `[B, T]` are RoPE (or learned) positions (left-padded rows start later);
    /// `valid` `[B, S]` marks real tokens among `S` >= cached + new key positions (with a
    /// cache, a longer `S` attends over that many cache slots, the ones after the new tokens
    /// masked: constant shapes for GPU decoding); `cache`, when given, is read and extended.
    pub fn hidden(
        &self,
        input_ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        valid: Tensor<2, Bool>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let t = input_ids.dims()[1];
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed(input_ids, positions.clone());
        let context = self.layer_context(positions, valid, past);
        let reserve = cache.as_ref().map_or(0, |c| c.capacity());
        for i in 0..self.layers.len() {
            let layer_cache = cache
                .as_deref_mut()
                .map(|c| (&mut c.layers[i], past, reserve));
            x = self.layer_forward(i, x, &context, layer_cache);
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.norm.forward(x)
    }

    /// Token (and learned position) embeddings `[B, T, H]`: the input of the first layer.
    pub fn embed(&self, input_ids: Tensor<2, Int>, positions: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let hidden_size = self.embed_tokens.dims()[1];
        let flat_ids = input_ids.reshape([b * t]);
        // Rows are widened after the lookup: a table stored narrow is never copied whole.
        let mut x = self
            .embed_tokens
            .val()
            .select(0, flat_ids)
            .cast(FloatDType::F32)
            .reshape([b, t, hidden_size]);
        if self.arch.embedding_scale != 1.0 {
            // transformers multiplies by the scale rounded to the activations' dtype.
            x = x * (self.arch.embedding_scale as f32);
        }
        if let Some(table) = &self.embed_positions {
            x = x + table
                .val()
                .select(0, positions.reshape([b * t]))
                .cast(FloatDType::F32)
                .reshape([b, t, hidden_size]);
        }
        x
    }

    /// What every layer of one pass shares: rotary tables at the pass's positions and one
    /// attention mask per distinct window. `past` cached positions precede the new ones.
    pub fn layer_context(
        &self,
        positions: Tensor<2, Int>,
        valid: Tensor<2, Bool>,
        past: usize,
    ) -> LayerContext {
        let t = positions.dims()[1];
        let rope = self.rotary.as_ref().map(|r| r.at(positions.clone()));
        let local_rope = self.local_rotary.as_ref().map(|r| r.at(positions));
        // One mask per distinct window (full attention is `None`).
        let mut biases: Vec<(Option<usize>, Tensor<5>)> = Vec::new();
        for layer in &self.layers {
            if !biases.iter().any(|(w, _)| *w == layer.window) {
                biases.push((
                    layer.window,
                    attention_bias(valid.clone(), past, t, layer.window),
                ));
            }
        }
        LayerContext {
            rope,
            local_rope,
            biases,
        }
    }

    /// Layer `i` on its input `x` `[B, T, H]` (the residual stream), returning its output.
    /// `cache` is this layer's KV cache with the cached length and capacity.
    pub fn layer_forward(
        &self,
        i: usize,
        x: Tensor<3>,
        context: &LayerContext,
        cache: Option<(&mut super::LayerCache, usize, usize)>,
    ) -> Tensor<3> {
        let layer = &self.layers[i];
        let residual = self.arch.residual_scale;
        let add = |x: Tensor<3>, h: Tensor<3>| {
            if residual != 1.0 {
                x + h * residual
            } else {
                x + h
            }
        };
        let bias = &context
            .biases
            .iter()
            .find(|(w, _)| *w == layer.window)
            .expect("a mask per window")
            .1;
        let rope = if layer.local_rope {
            context.local_rope.as_ref()
        } else {
            context.rope.as_ref()
        };
        let h = match &layer.attn_norm {
            Some(n) => n.forward(x.clone()),
            None => x.clone(),
        };
        let mut h = layer.self_attn.forward(h, rope, bias, cache);
        if let Some(n) = &layer.attn_post_norm {
            h = n.forward(h);
        }
        let x = add(x, h);
        let h = match &layer.mlp_norm {
            Some(n) => n.forward(x.clone()),
            None => x.clone(),
        };
        let mut h = layer.mlp.forward(h);
        if let Some(n) = &layer.mlp_post_norm {
            h = n.forward(h);
        }
        add(x, h)
    }

    /// Next-token logits `[B, T, V]` from hidden states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match self.head_matrix() {
            Some(head) => self.logits_with(&head, hidden),
            None => {
                let head = self.lm_head.as_ref().expect("a LoRA head is an lm_head");
                self.finish_logits(head.forward(hidden))
            }
        }
    }

    /// The LM head as one `[H, V]` f32 matrix (a view of the embedding table when tied and
    /// stored in f32), for [`Self::logits_with`]: what many chunks of positions share, so a
    /// head stored narrow is widened once per pass, not once per chunk. None when the head
    /// has a LoRA adapter.
    pub fn head_matrix(&self) -> Option<Tensor<2>> {
        match &self.lm_head {
            Some(head) if head.lora.is_some() => None,
            Some(head) => Some(f32_val(&head.weight)),
            // The transposed view: flex's gemm reads the strides as they are, where a 3-D
            // broadcast of the view would copy the whole [V, H] table per call.
            None => Some(f32_val(&self.embed_tokens).transpose()),
        }
    }

    /// Next-token logits `[B, T, V]` from hidden states with `head` from
    /// [`Self::head_matrix`].
    pub fn logits_with(&self, head: &Tensor<2>, hidden: Tensor<3>) -> Tensor<3> {
        let [b, t, h] = hidden.dims();
        let vocab = head.dims()[1];
        let logits = super::precision::matmul(hidden.reshape([b * t, h]), head.clone())
            .reshape([b, t, vocab]);
        self.finish_logits(logits)
    }

    /// The family's logit scale and final soft-cap.
    fn finish_logits(&self, logits: Tensor<3>) -> Tensor<3> {
        let logits = if self.arch.logit_scale != 1.0 {
            logits * self.arch.logit_scale
        } else {
            logits
        };
        match self.arch.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Scalar scores `[B, T]` from hidden states (value / reward head).
    pub fn scores(&self, hidden: Tensor<3>) -> Option<Tensor<2>> {
        self.score
            .as_ref()
            .map(|s| s.forward(hidden).squeeze_dim(2))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Host copies of the global RoPE cos and sin tables for `n` positions, `[n, rotary_dim]`
    /// row-major (the CPU decoder's layout); None with learned positions.
    pub(crate) fn rope_host(&self, n: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        self.rotary
            .as_ref()
            .map(|r| super::blocks::rope_host(&r.rope, n))
    }
}

/// Per-pass constants the layers share (see [`CausalLm::layer_context`]): built once per
/// forward pass, on whatever device the positions and mask live on.
pub struct LayerContext {
    rope: Option<RopeAt>,
    local_rope: Option<RopeAt>,
    biases: Vec<(Option<usize>, Tensor<5>)>,
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<CausalLm>();
}

/// Fresh weights for training from scratch, keyed by canonical names: N(0, 0.02) as
/// transformers' `initializer_range`, residual output projections scaled down by
/// `1/sqrt(2 * layers)` (GPT-2's rule, which keeps early training stable), norm scales at 1
/// (0 for `1 + w` norms), biases at 0.
pub fn init_weights(cfg: &ModelConfig, seed: u64) -> NamedTensors {
    use rand::{Rng, SeedableRng};
    const INIT_STD: f32 = 0.02;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut normal = |shape: Vec<usize>, std: f32| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                let u2: f32 = rng.random();
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        HostTensor::new(shape, data)
    };
    let a = &cfg.arch;
    let h = cfg.hidden_size;
    let hd = cfg.head_dim;
    let q = cfg.num_attention_heads * hd;
    let kv = cfg.num_key_value_heads * hd;
    let ff = cfg.intermediate_size;
    let residual_std = INIT_STD / (2.0 * cfg.num_hidden_layers as f32).sqrt();
    let gain = if a.norm == super::config::NormKind::RmsOneOffset {
        0.0
    } else {
        1.0
    };
    let zeros = |n: usize| HostTensor::new(vec![n], vec![0.0; n]);
    let mut t = NamedTensors::new();
    let add_norm = |t: &mut NamedTensors, name: String, n: usize| {
        t.insert(
            format!("{name}.weight"),
            HostTensor::new(vec![n], vec![gain; n]),
        );
        if a.norm == super::config::NormKind::Layer {
            t.insert(format!("{name}.bias"), zeros(n));
        }
    };
    t.insert(
        "model.embed_tokens.weight".into(),
        normal(vec![cfg.vocab_size, h], INIT_STD),
    );
    if a.positions == Positions::Learned {
        t.insert(
            "model.embed_positions.weight".into(),
            normal(vec![cfg.max_position_embeddings, h], INIT_STD),
        );
    }
    let names = norm_names(a.placement);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut shapes = vec![
            ("self_attn.q_proj", q, h, INIT_STD, a.qkv_bias),
            ("self_attn.k_proj", kv, h, INIT_STD, a.qkv_bias),
            ("self_attn.v_proj", kv, h, INIT_STD, a.qkv_bias),
            ("self_attn.o_proj", h, q, residual_std, a.o_bias),
            ("mlp.up_proj", ff, h, INIT_STD, a.mlp_bias),
            ("mlp.down_proj", h, ff, residual_std, a.mlp_bias),
        ];
        if a.gated_mlp {
            shapes.push(("mlp.gate_proj", ff, h, INIT_STD, a.mlp_bias));
        }
        for (name, out, inp, std, bias) in shapes {
            t.insert(format!("{p}.{name}.weight"), normal(vec![out, inp], std));
            if bias {
                t.insert(format!("{p}.{name}.bias"), zeros(out));
            }
        }
        match a.qk_norm {
            QkNorm::None => {}
            QkNorm::PerHead => {
                add_norm(&mut t, format!("{p}.self_attn.q_norm"), hd);
                add_norm(&mut t, format!("{p}.self_attn.k_norm"), hd);
            }
            QkNorm::FullWidth => {
                add_norm(&mut t, format!("{p}.self_attn.q_norm"), q);
                add_norm(&mut t, format!("{p}.self_attn.k_norm"), kv);
            }
        }
        for name in [names.attn, names.attn_post, names.mlp, names.mlp_post]
            .into_iter()
            .flatten()
        {
            add_norm(&mut t, format!("{p}.{name}"), h);
        }
    }
    add_norm(&mut t, "model.norm".into(), h);
    if !cfg.tie_word_embeddings {
        t.insert(
            "lm_head.weight".into(),
            normal(vec![cfg.vocab_size, h], INIT_STD),
        );
    }
    t
}
