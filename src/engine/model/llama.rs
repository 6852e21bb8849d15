//! Llama-family decoder (Llama 2/3, SmolLM, TinyLlama, Qwen2-style qkv bias): RMSNorm, RoPE,
//! SwiGLU MLP, grouped-query attention, tied or untied embeddings. Field names follow the
//! Hugging Face checkpoint keys (`model.layers.N.self_attn.q_proj.weight`, ...), so loading
//! and saving is a walk over the fields.
//!
//! Linear weights are kept in Burn's `[in, out]` layout (so `x.matmul(w)` needs no transpose
//! per call); the Hugging Face `[out, in]` layout is restored when saving.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};

use super::config::LlamaConfig;
use super::{KvCache, LayerCache, ModelError, WeightReader, WeightWriter};

/// `y = x W + b` with `W` stored `[in, out]`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }

    /// Reads a Hugging Face `[out, in]` weight (and bias) named `{name}.weight`.
    fn read(
        r: &mut WeightReader,
        name: &str,
        [d_in, d_out]: [usize; 2],
        bias: bool,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: r.linear(&format!("{name}.weight"), d_in, d_out)?,
            bias: if bias {
                Some(r.vector(&format!("{name}.bias"), d_out)?)
            } else {
                None
            },
        })
    }

    fn write(&self, w: &mut WeightWriter, name: &str) {
        w.linear(&format!("{name}.weight"), &self.weight);
        if let Some(b) = &self.bias {
            w.vector(&format!("{name}.bias"), b);
        }
    }
}

/// Root-mean-square norm with a learned scale, computed in f32 as transformers does.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance + self.eps).sqrt().recip();
        normed * self.weight.val().unsqueeze()
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    #[module(skip)]
    pub n_heads: usize,
    #[module(skip)]
    pub n_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
}

impl Attention {
    /// `x`: `[B, T, H]`; `rope`: cos/sin for these positions; `bias`: `[B, 1, 1, T, S]`
    /// additive attention bias (0 or -inf), where `S` counts cached plus new keys; `cache`:
    /// the layer's cache and the number of positions already in it.
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeAt,
        bias: &Tensor<5>,
        cache: Option<(&mut LayerCache, usize, usize)>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (n_heads, n_kv, head_dim) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let n_rep = n_heads / n_kv;
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, head_dim]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q_proj.forward(x.clone()), n_heads));
        let mut k = rope.apply(heads(self.k_proj.forward(x.clone()), n_kv));
        let mut v = heads(self.v_proj.forward(x), n_kv);
        if let Some((cache, past, reserve)) = cache {
            (k, v) = cache.append(k, v, past, reserve, bias.dims()[4]);
        }
        let s = k.dims()[2];
        // Grouped-query attention without copying keys and values per query head: query head
        // `h` uses key/value head `h / n_rep`, so the `n_rep` query heads of one group (each
        // with its T rows) stack into one `[n_rep * T, head_dim]` matrix per key/value head.
        let q = q.reshape([b, n_kv, n_rep * t, head_dim]);
        let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
        // -inf where masked: exp(-inf) is 0 on libm's fast path (a finite -1e30 took its slow
        // underflow path, 4% of a training step). No row is fully masked, so no row is NaN: a
        // token's own position never is.
        let scores = scores.reshape([b, n_kv, n_rep, t, s]) + bias.clone();
        let probs = softmax(scores, 4).reshape([b, n_kv, n_rep * t, s]);
        let out = probs
            .matmul(v)
            .reshape([b, n_heads, t, head_dim])
            .swap_dims(1, 2)
            .reshape([b, t, n_heads * head_dim]);
        self.o_proj.forward(out)
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

/// Rotary tables for the positions of one forward pass, `[B, 1, T, head_dim]`.
struct RopeAt {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl RopeAt {
    /// Hugging Face's "rotate half" convention (not the interleaved one of the original paper);
    /// GGUF's permuted q/k rows are undone at load time to match it. `x * cos +
    /// cat(-x2, x1) * sin`, with the sign folded into the first half of the sin table.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let d = x.dims()[3];
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let swapped = Tensor::cat(vec![x2, x1], 3);
        x * self.cos.clone() + swapped * self.sin.clone()
    }
}

/// The decoder with its heads. `lm_head` is absent when tied to `embed_tokens`; `score` is the
/// scalar head of value and reward models (Hugging Face's `...ForSequenceClassification`).
#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Option<Linear>,
    pub score: Option<Linear>,
    /// `[max_positions, head_dim]` cos and sin tables (sin with its first half negated);
    /// constants, not parameters.
    #[module(skip)]
    rope_cos: Tensor<2>,
    #[module(skip)]
    rope_sin: Tensor<2>,
}

impl Llama {
    /// Builds the model from weights keyed by Hugging Face names.
    pub fn from_weights(
        cfg: &LlamaConfig,
        r: &mut WeightReader,
        with_lm_head: bool,
        with_score: bool,
    ) -> Result<Self, ModelError> {
        let device = r.device().clone();
        let head_dim = cfg.head_dim();
        let h = cfg.hidden_size;
        let q_dim = cfg.num_attention_heads * head_dim;
        let kv_dim = cfg.num_kv_heads() * head_dim;
        let ff = cfg.intermediate_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: Linear::read(r, &format!("{p}.self_attn.q_proj"), [h, q_dim], bias)?,
                    k_proj: Linear::read(r, &format!("{p}.self_attn.k_proj"), [h, kv_dim], bias)?,
                    v_proj: Linear::read(r, &format!("{p}.self_attn.v_proj"), [h, kv_dim], bias)?,
                    o_proj: Linear::read(
                        r,
                        &format!("{p}.self_attn.o_proj"),
                        [q_dim, h],
                        cfg.o_proj_bias(),
                    )?,
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_kv_heads(),
                    head_dim,
                },
                mlp: Mlp {
                    gate_proj: Linear::read(
                        r,
                        &format!("{p}.mlp.gate_proj"),
                        [h, ff],
                        cfg.mlp_bias,
                    )?,
                    up_proj: Linear::read(r, &format!("{p}.mlp.up_proj"), [h, ff], cfg.mlp_bias)?,
                    down_proj: Linear::read(
                        r,
                        &format!("{p}.mlp.down_proj"),
                        [ff, h],
                        cfg.mlp_bias,
                    )?,
                },
                input_layernorm: RmsNorm {
                    weight: r.vector(&format!("{p}.input_layernorm.weight"), h)?,
                    eps: cfg.rms_norm_eps,
                },
                post_attention_layernorm: RmsNorm {
                    weight: r.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                    eps: cfg.rms_norm_eps,
                },
            });
        }
        let embed_tokens = r.matrix("model.embed_tokens.weight", [cfg.vocab_size, h])?;
        let lm_head = if with_lm_head && !cfg.tie_word_embeddings {
            Some(Linear::read(r, "lm_head", [h, cfg.vocab_size], false)?)
        } else {
            None
        };
        let score = if with_score {
            Some(Linear::read(r, "score", [h, 1], false)?)
        } else {
            None
        };
        let (rope_cos, rope_sin) = rope_tables(cfg, &device);
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm {
                weight: r.vector("model.norm.weight", h)?,
                eps: cfg.rms_norm_eps,
            },
            lm_head,
            score,
            rope_cos,
            rope_sin,
        })
    }

    /// Writes every parameter under its Hugging Face name.
    pub fn to_weights(&self, w: &mut WeightWriter) {
        w.matrix("model.embed_tokens.weight", &self.embed_tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            a.q_proj.write(w, &format!("{p}.self_attn.q_proj"));
            a.k_proj.write(w, &format!("{p}.self_attn.k_proj"));
            a.v_proj.write(w, &format!("{p}.self_attn.v_proj"));
            a.o_proj.write(w, &format!("{p}.self_attn.o_proj"));
            layer.mlp.gate_proj.write(w, &format!("{p}.mlp.gate_proj"));
            layer.mlp.up_proj.write(w, &format!("{p}.mlp.up_proj"));
            layer.mlp.down_proj.write(w, &format!("{p}.mlp.down_proj"));
            w.vector(
                &format!("{p}.input_layernorm.weight"),
                &layer.input_layernorm.weight,
            );
            w.vector(
                &format!("{p}.post_attention_layernorm.weight"),
                &layer.post_attention_layernorm.weight,
            );
        }
        w.vector("model.norm.weight", &self.norm.weight);
        if let Some(head) = &self.lm_head {
            head.write(w, "lm_head");
        }
        if let Some(score) = &self.score {
            score.write(w, "score");
        }
    }

    /// Final hidden states `[B, T, H]` (after the last norm).
    ///
    /// `positions` `[B, T]` are RoPE positions (left-padded rows start later); `valid` `[B, S]`
    /// marks real tokens among `S` >= cached + new key positions (with a cache, a longer `S`
    /// attends over that many cache slots, the ones after the new tokens masked: constant
    /// shapes for GPU decoding); `cache`, when given, is read and extended.
    pub fn hidden(
        &self,
        input_ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        valid: Tensor<2, Bool>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let hidden_size = self.embed_tokens.dims()[1];
        let past = cache.as_ref().map_or(0, |c| c.len());
        let flat_ids = input_ids.reshape([b * t]);
        let mut x = self
            .embed_tokens
            .val()
            .select(0, flat_ids)
            .reshape([b, t, hidden_size]);
        let rope = self.rope_at(positions);
        let bias = attention_bias(valid, past, t);
        let reserve = cache.as_ref().map_or(0, |c| c.capacity());
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache
                .as_deref_mut()
                .map(|c| (&mut c.layers[i], past, reserve));
            let h = layer.input_layernorm.forward(x.clone());
            x = x + layer.self_attn.forward(h, &rope, &bias, layer_cache);
            let h = layer.post_attention_layernorm.forward(x.clone());
            x = x + layer.mlp.forward(h);
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.norm.forward(x)
    }

    /// Next-token logits `[B, T, V]` from hidden states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            // A 2-D matmul against the transposed view: flex's gemm reads the strides as they
            // are, where a 3-D broadcast of the view would copy the whole [V, H] table per call.
            None => {
                let [b, t, h] = hidden.dims();
                let vocab = self.embed_tokens.dims()[0];
                hidden
                    .reshape([b * t, h])
                    .matmul(self.embed_tokens.val().transpose())
                    .reshape([b, t, vocab])
            }
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

    /// Host copies of the RoPE cos and sin tables, `[max_positions, head_dim]` row-major.
    pub(crate) fn rope_host(&self) -> (Vec<f32>, Vec<f32>) {
        (
            super::host_f32(self.rope_cos.clone()),
            super::host_f32(self.rope_sin.clone()),
        )
    }

    fn rope_at(&self, positions: Tensor<2, Int>) -> RopeAt {
        let [b, t] = positions.dims();
        let d = self.rope_cos.dims()[1];
        let flat = positions.reshape([b * t]);
        let take = |table: &Tensor<2>| table.clone().select(0, flat.clone()).reshape([b, 1, t, d]);
        RopeAt {
            cos: take(&self.rope_cos),
            sin: take(&self.rope_sin),
        }
    }
}

/// `[B, 1, 1, T, S]` additive attention bias, -inf where masked: causal over absolute cache
/// positions (so positions after the new tokens, when `S > past + T`, are masked), and
/// padding keys masked. A token's own position is never masked, so no
/// softmax row is empty.
fn attention_bias(valid: Tensor<2, Bool>, past: usize, t: usize) -> Tensor<5> {
    let [b, s] = valid.dims();
    debug_assert!(s >= past + t, "valid mask shorter than the cache");
    let device = valid.device();
    let query_pos = Tensor::<1, Int>::arange(past as i64..(past + t) as i64, &device)
        .reshape([1, t, 1])
        .expand([b, t, s]);
    let key_pos = Tensor::<1, Int>::arange(0..s as i64, &device)
        .reshape([1, 1, s])
        .expand([b, t, s]);
    let future = key_pos.clone().greater(query_pos.clone());
    let own = key_pos.equal(query_pos);
    let padding = valid.bool_not().reshape([b, 1, s]).expand([b, t, s]);
    let masked = future.bool_or(padding.bool_and(own.bool_not()));
    Tensor::<3>::zeros([b, t, s], &device)
        .mask_fill(masked, f32::NEG_INFINITY)
        .reshape([b, 1, 1, t, s])
}

/// cos/sin tables for RoPE in the "rotate half" layout: `[max_positions, head_dim]`. The first
/// half of each sin row is negated (the sign of the rotated half, see [`RopeAt::apply`]).
fn rope_tables(cfg: &LlamaConfig, device: &Device) -> (Tensor<2>, Tensor<2>) {
    // Constants on the plain device: mixed into autodiff graphs they act as constants, and
    // `valid()` copies of the model can use them unchanged.
    let device = &device.clone().without_autodiff();
    let d = cfg.head_dim();
    let n = cfg.max_position_embeddings;
    let inv_freq = cfg.rope_inv_freq();
    let mut cos = Vec::with_capacity(n * d);
    let mut sin = Vec::with_capacity(n * d);
    for pos in 0..n {
        for i in 0..d {
            // transformers computes the angle in f32: pos * inv_freq (f32), then cos/sin.
            let angle = pos as f32 * inv_freq[i % (d / 2)];
            cos.push(angle.cos());
            sin.push(if i < d / 2 { -angle.sin() } else { angle.sin() });
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [n, d]), device),
        Tensor::from_data(TensorData::new(sin, [n, d]), device),
    )
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Llama>();
}

/// Fresh weights for training from scratch, keyed by Hugging Face names: N(0, 0.02) as
/// transformers' `initializer_range`, residual output projections scaled down by
/// `1/sqrt(2 * layers)` (GPT-2's rule, which keeps early training stable), norms at 1.
pub fn init_weights(cfg: &LlamaConfig, seed: u64) -> crate::engine::weights::NamedTensors {
    use crate::engine::weights::HostTensor;
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
    let h = cfg.hidden_size;
    let hd = cfg.head_dim();
    let q = cfg.num_attention_heads * hd;
    let kv = cfg.num_kv_heads() * hd;
    let ff = cfg.intermediate_size;
    let residual_std = INIT_STD / (2.0 * cfg.num_hidden_layers as f32).sqrt();
    let ones = |n: usize| HostTensor::new(vec![n], vec![1.0; n]);
    let zeros = |n: usize| HostTensor::new(vec![n], vec![0.0; n]);
    let mut t = crate::engine::weights::NamedTensors::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        normal(vec![cfg.vocab_size, h], INIT_STD),
    );
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let shapes = [
            ("self_attn.q_proj", q, h, INIT_STD, cfg.attention_bias),
            ("self_attn.k_proj", kv, h, INIT_STD, cfg.attention_bias),
            ("self_attn.v_proj", kv, h, INIT_STD, cfg.attention_bias),
            ("self_attn.o_proj", h, q, residual_std, cfg.o_proj_bias()),
            ("mlp.gate_proj", ff, h, INIT_STD, cfg.mlp_bias),
            ("mlp.up_proj", ff, h, INIT_STD, cfg.mlp_bias),
            ("mlp.down_proj", h, ff, residual_std, cfg.mlp_bias),
        ];
        for (name, out, inp, std, bias) in shapes {
            t.insert(format!("{p}.{name}.weight"), normal(vec![out, inp], std));
            if bias {
                t.insert(format!("{p}.{name}.bias"), zeros(out));
            }
        }
        t.insert(format!("{p}.input_layernorm.weight"), ones(h));
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(h));
    }
    t.insert("model.norm.weight".into(), ones(h));
    if !cfg.tie_word_embeddings {
        t.insert(
            "lm_head.weight".into(),
            normal(vec![cfg.vocab_size, h], INIT_STD),
        );
    }
    t
}
