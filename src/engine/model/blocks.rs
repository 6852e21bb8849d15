//! The blocks every family is built from: linear layers, norms, rotary embeddings, attention
//! (grouped-query, optional q/k norms, soft-capping, sliding windows) and MLPs. Families pick
//! and configure them through their [`Arch`](super::config::Arch); nothing here is copied per
//! family.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{gelu, relu, silu, softmax};

use super::config::{Activation, NormKind, Rope};
use super::lora::Lora;
use super::precision::{self, f32_val};
use super::{LayerCache, ModelError, WeightReader, WeightWriter};

/// `y = x W + b` with `W` stored `[in, out]`, plus a LoRA adapter's `s (x A) B` when one is
/// attached (see `lora.rs`).
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let delta = self.lora.as_ref().map(|lora| lora.delta(x.clone()));
        // Frozen weights may be stored narrow (`[model] dtype`): products run in f32, or in
        // f16 under mixed precision (`[train] precision`).
        let y = precision::linear(x, &self.weight, self.bias.as_ref());
        match delta {
            Some(delta) => y + delta,
            None => y,
        }
    }

    /// Reads a Hugging Face `[out, in]` weight (and bias) named `{name}.weight`.
    pub fn read(
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
            lora: None,
        })
    }

    pub fn write(&self, w: &mut WeightWriter, name: &str) {
        w.linear(&format!("{name}.weight"), &self.weight);
        if let Some(b) = &self.bias {
            w.vector(&format!("{name}.bias"), b);
        }
    }
}

/// RMSNorm (`w` or `1 + w` as the scale) or LayerNorm (with bias), over the last dimension,
/// computed in f32 as transformers does.
#[derive(Module, Debug)]
pub struct Norm {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub eps: f64,
    #[module(skip)]
    pub kind: NormKind,
}

impl Norm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let normed = match self.kind {
            NormKind::Rms | NormKind::RmsOneOffset => {
                let variance = x.clone().square().mean_dim(D - 1);
                x * (variance + self.eps).sqrt().recip()
            }
            NormKind::Layer => {
                let mean = x.clone().mean_dim(D - 1);
                let centred = x - mean;
                let variance = centred.clone().square().mean_dim(D - 1);
                centred * (variance + self.eps).sqrt().recip()
            }
        };
        let scale = match self.kind {
            NormKind::RmsOneOffset => f32_val(&self.weight) + 1.0,
            _ => f32_val(&self.weight),
        };
        let out = normed * scale.unsqueeze();
        match &self.bias {
            Some(b) => out + f32_val(b).unsqueeze(),
            None => out,
        }
    }

    pub fn read(
        r: &mut WeightReader,
        name: &str,
        len: usize,
        kind: NormKind,
        eps: f64,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: r.vector(&format!("{name}.weight"), len)?,
            bias: if kind == NormKind::Layer {
                Some(r.vector(&format!("{name}.bias"), len)?)
            } else {
                None
            },
            eps,
            kind,
        })
    }

    pub fn write(&self, w: &mut WeightWriter, name: &str) {
        w.vector(&format!("{name}.weight"), &self.weight);
        if let Some(b) = &self.bias {
            w.vector(&format!("{name}.bias"), b);
        }
    }
}

/// Rotary embedding of one frequency set: cos and sin are computed on the device for the
/// positions of each pass (`angle = position * inv_freq` in f32, as transformers computes it),
/// so no `[max_positions, head_dim]` table is held (131k positions x 256 dims for Gemma 3).
#[derive(Clone, Debug)]
pub struct Rotary {
    /// `[1, rotary_dim / 2]`, on the plain (non-autodiff) device: a constant.
    inv_freq: Tensor<2>,
    attention_factor: f32,
    pub rope: Rope,
}

impl Rotary {
    pub fn new(rope: &Rope, device: &Device) -> Self {
        let (inv_freq, attention_factor) = rope.inv_freq(0);
        Self {
            inv_freq: Self::inv_freq_tensor(inv_freq, device),
            attention_factor,
            rope: rope.clone(),
        }
    }

    fn inv_freq_tensor(inv_freq: Vec<f32>, device: &Device) -> Tensor<2> {
        let n = inv_freq.len();
        // Constants on the plain device: mixed into autodiff graphs they act as constants, and
        // `valid()` copies of the model can use them unchanged.
        let device = device.clone().without_autodiff();
        Tensor::from_data(TensorData::new(inv_freq, [1, n]), &device)
    }

    /// cos/sin for `positions` `[B, T]`, as `[B, 1, T, rotary_dim]`. Dynamic NTK scaling
    /// depends on the longest position of the pass, so its frequencies are recomputed for
    /// that length (as transformers does on a fresh model).
    pub fn at(&self, positions: Tensor<2, Int>) -> RopeAt {
        let [b, t] = positions.dims();
        let d = self.rope.rotary_dim;
        let flat = positions.reshape([b * t, 1]);
        let inv_freq = if matches!(
            self.rope.scaling,
            super::config::RopeScaling::Dynamic { .. }
        ) {
            let longest = flat.clone().max().into_scalar::<i64>().max(0) as usize + 1;
            Self::inv_freq_tensor(self.rope.inv_freq(longest).0, &self.inv_freq.device())
        } else {
            self.inv_freq.clone()
        };
        let device = inv_freq.device();
        let angles = flat.float().to_device(&device) * inv_freq;
        let (cos, sin) = (angles.clone().cos(), angles.sin());
        let (cos, sin) = if self.attention_factor != 1.0 {
            (cos * self.attention_factor, sin * self.attention_factor)
        } else {
            (cos, sin)
        };
        let cos = Tensor::cat(vec![cos.clone(), cos], 1).reshape([b, 1, t, d]);
        let sin = Tensor::cat(vec![sin.clone().neg(), sin], 1).reshape([b, 1, t, d]);
        RopeAt { cos, sin }
    }
}

/// Host cos/sin tables for `n` positions, `[n, rotary_dim]` row-major, sin with its first half
/// negated (the CPU decoder's layout).
pub fn rope_host(rope: &Rope, n: usize) -> (Vec<f32>, Vec<f32>) {
    let d = rope.rotary_dim;
    let (inv_freq, attention_factor) = rope.inv_freq(n);
    let mut cos = Vec::with_capacity(n * d);
    let mut sin = Vec::with_capacity(n * d);
    for pos in 0..n {
        for i in 0..d {
            let angle = pos as f32 * inv_freq[i % (d / 2)];
            cos.push(angle.cos() * attention_factor);
            let s = angle.sin() * attention_factor;
            sin.push(if i < d / 2 { -s } else { s });
        }
    }
    (cos, sin)
}

/// Rotary tables for the positions of one forward pass, `[B, 1, T, rotary_dim]`.
pub struct RopeAt {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl RopeAt {
    /// Hugging Face's "rotate half" convention (not the interleaved one of the original paper);
    /// GGUF's permuted q/k rows are undone at load time to match it. `x * cos +
    /// cat(-x2, x1) * sin`, with the sign folded into the first half of the sin table. With a
    /// partial rotary factor only the leading `rotary_dim` dimensions rotate.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let d = x.dims()[3];
        let r = self.cos.dims()[3];
        let rotate = |x: Tensor<4>| {
            let x1 = x.clone().narrow(3, 0, r / 2);
            let x2 = x.clone().narrow(3, r / 2, r / 2);
            let swapped = Tensor::cat(vec![x2, x1], 3);
            x * self.cos.clone() + swapped * self.sin.clone()
        };
        if r == d {
            rotate(x)
        } else {
            let pass = x.clone().narrow(3, r, d - r);
            Tensor::cat(vec![rotate(x.narrow(3, 0, r)), pass], 3)
        }
    }
}

/// Where q and k are normalised, if anywhere.
#[derive(Module, Debug)]
pub struct QkNorms {
    pub q_norm: Norm,
    pub k_norm: Norm,
    /// Over each head (Qwen3, Gemma 3) or over the whole projection (OLMo 2).
    #[module(skip)]
    pub per_head: bool,
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub qk_norm: Option<QkNorms>,
    #[module(skip)]
    pub n_heads: usize,
    #[module(skip)]
    pub n_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
    /// Multiplies q·k (1/sqrt(head_dim) for most families).
    #[module(skip)]
    pub scale: f64,
    /// `tanh(s / cap) * cap` on the attention scores (Gemma 2).
    #[module(skip)]
    pub softcap: Option<f64>,
}

impl Attention {
    /// `x`: `[B, T, H]`; `rope`: cos/sin for these positions (None with learned positions);
    /// `bias`: `[B, 1, 1, T, S]` additive attention bias (0 or -inf), where `S` counts cached
    /// plus new keys; `cache`: the layer's cache, the positions already in it and the
    /// capacity to reserve.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&RopeAt>,
        bias: &Tensor<5>,
        cache: Option<(&mut LayerCache, usize, usize)>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (n_heads, n_kv, head_dim) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let n_rep = n_heads / n_kv;
        let mut q = self.q_proj.forward(x.clone());
        let mut k = self.k_proj.forward(x.clone());
        if let Some(norms) = self.qk_norm.as_ref().filter(|n| !n.per_head) {
            q = norms.q_norm.forward(q);
            k = norms.k_norm.forward(k);
        }
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, head_dim]).swap_dims(1, 2);
        let mut q = heads(q, n_heads);
        let mut k = heads(k, n_kv);
        if let Some(norms) = self.qk_norm.as_ref().filter(|n| n.per_head) {
            q = norms.q_norm.forward(q);
            k = norms.k_norm.forward(k);
        }
        if let Some(rope) = rope {
            q = rope.apply(q);
            k = rope.apply(k);
        }
        let mut v = heads(self.v_proj.forward(x), n_kv);
        if let Some((cache, past, reserve)) = cache {
            (k, v) = cache.append(k, v, past, reserve, bias.dims()[4]);
        }
        let s = k.dims()[2];
        // Decoding one token per row stays decomposed: per (row, head) the kernel's fixed
        // costs outweigh a 1-row product (measured: rollouts 0.65x).
        if t > 1 && fused_attention_applies(&q.device()) {
            // One fused kernel (scale, soft-cap, mask, softmax and both products per head,
            // grouped-query heads read in place): no score tensors are formed.
            let options = burn::tensor::ops::AttentionModuleOptions {
                scale: Some(self.scale),
                softcap: self.softcap,
                is_causal: false,
            };
            let bias = bias.clone().reshape([b, 1, t, s]);
            // flex's kernel reads grouped-query heads in place; cubecl's (wgpu) wants one
            // key/value head per query head.
            let (k, v) = if n_rep > 1 && k.device() != Device::flex() {
                let per_query_head = |x: Tensor<4>| {
                    x.unsqueeze_dim::<5>(2)
                        .expand([b, n_kv, n_rep, s, head_dim])
                        .reshape([b, n_heads, s, head_dim])
                };
                (per_query_head(k), per_query_head(v))
            } else {
                (k, v)
            };
            // Under mixed precision the whole kernel runs on f16 operands.
            let (q, k, v, bias) = match precision::products() {
                Some(half) => (q.cast(half), k.cast(half), v.cast(half), bias.cast(half)),
                None => (q, k, v, bias),
            };
            let out = burn::tensor::module::attention(q, k, v, None, Some(bias), options)
                .cast(burn::tensor::FloatDType::F32)
                .swap_dims(1, 2)
                .reshape([b, t, n_heads * head_dim]);
            return self.o_proj.forward(out);
        }
        // Grouped-query attention without copying keys and values per query head: query head
        // `h` uses key/value head `h / n_rep`, so the `n_rep` query heads of one group (each
        // with its T rows) stack into one `[n_rep * T, head_dim]` matrix per key/value head.
        let q = q.reshape([b, n_kv, n_rep * t, head_dim]);
        let mut scores = precision::matmul(q, k.swap_dims(2, 3)) * self.scale;
        if let Some(cap) = self.softcap {
            scores = (scores / cap).tanh() * cap;
        }
        // -inf where masked: exp(-inf) is 0 on libm's fast path (a finite -1e30 took its slow
        // underflow path, 4% of a training step). No row is fully masked, so no row is NaN: a
        // token's own position never is.
        let scores = scores.reshape([b, n_kv, n_rep, t, s]) + bias.clone();
        let probs = softmax(scores, 4).reshape([b, n_kv, n_rep * t, s]);
        let out = precision::matmul(probs, v)
            .reshape([b, n_heads, t, head_dim])
            .swap_dims(1, 2)
            .reshape([b, t, n_heads * head_dim]);
        self.o_proj.forward(out)
    }
}

/// Whether attention on `device` runs as Burn's fused `module::attention`: without autodiff
/// (under autodiff Burn falls back to the decomposed form anyway: scoring, references,
/// rewards and generation gain), on the CPU backend and on wgpu, whose kernels take
/// grouped-query heads, the additive mask and soft-capping as they are (tests check both
/// against the decomposed form).
pub fn fused_attention_applies(device: &Device) -> bool {
    !device.is_autodiff()
}

/// `down(act(gate(x)) * up(x))` when gated (SwiGLU, GeGLU), `down(act(up(x)))` otherwise.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Option<Linear>,
    pub up_proj: Linear,
    pub down_proj: Linear,
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = match &self.gate_proj {
            Some(gate) => {
                activate(gate.forward(x.clone()), self.activation) * self.up_proj.forward(x)
            }
            None => activate(self.up_proj.forward(x), self.activation),
        };
        self.down_proj.forward(hidden)
    }
}

pub fn activate<const D: usize>(x: Tensor<D>, activation: Activation) -> Tensor<D> {
    match activation {
        Activation::Silu => silu(x),
        Activation::Gelu => gelu(x),
        Activation::Relu => relu(x),
        Activation::GeluTanh => {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as `gelu_pytorch_tanh`.
            const C: f64 = 0.797_884_560_802_865_4;
            let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * C;
            x * (inner.tanh() + 1.0) * 0.5
        }
    }
}

/// `[B, 1, 1, T, S]` additive attention bias, -inf where masked: causal over absolute cache
/// positions (so positions after the new tokens, when `S > past + T`, are masked), padding
/// keys masked, and with a `window` keys `window` or more positions back masked. A token's own
/// position is never masked, so no softmax row is empty.
pub fn attention_bias(
    valid: Tensor<2, Bool>,
    past: usize,
    t: usize,
    window: Option<usize>,
) -> Tensor<5> {
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
    let own = key_pos.clone().equal(query_pos.clone());
    let padding = valid.bool_not().reshape([b, 1, s]).expand([b, t, s]);
    let mut masked = future.bool_or(padding.bool_and(own.bool_not()));
    if let Some(window) = window {
        // Left padding sits before a row's tokens, so slot distance is position distance.
        let too_old = key_pos.add_scalar(window as i64).lower_equal(query_pos);
        masked = masked.bool_or(too_old);
    }
    Tensor::<3>::zeros([b, t, s], &device)
        .mask_fill(masked, f32::NEG_INFINITY)
        .reshape([b, 1, 1, t, s])
}

#[cfg(test)]
mod attention_tests {
    use super::*;
    use crate::engine::model::{CausalLm, ModelConfig, WeightReader, decoder};

    /// The fused kernel (plain CPU device) gives the decomposed form's logits (the same
    /// model on the autodiff device), with grouped-query heads, a soft-cap, a sliding window
    /// and a left-padded row.
    #[test]
    fn fused_attention_equals_the_decomposed_form() {
        for model_type in ["qwen2", "gemma2"] {
            let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
                "model_type": model_type, "vocab_size": 40, "hidden_size": 32,
                "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
                "sliding_window": 3, "attn_logit_softcapping": 0.5
            }))
            .unwrap();
            let logits = |device: &Device| {
                let mut r = WeightReader::new(decoder::init_weights(&cfg, 9), device);
                let m = CausalLm::from_weights(&cfg, &mut r, true, false).unwrap();
                let ids: Vec<i64> = (0..14).map(|i| (i * 5 + 1) % 40).collect();
                let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 7]), device);
                let pos: Vec<i64> = (0..7).chain([0, 0, 0, 1, 2, 3, 4]).collect();
                let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [2, 7]), device);
                let valid: Vec<bool> = std::iter::repeat_n(true, 7)
                    .chain([false, false])
                    .chain(std::iter::repeat_n(true, 5))
                    .collect();
                let valid = Tensor::<2, Bool>::from_data(TensorData::new(valid, [2, 7]), device);
                let fused = fused_attention_applies(device);
                let out = m.logits(m.hidden(ids, pos, valid, None));
                (crate::engine::model::host_f32(out), fused)
            };
            let (fused, took_fused) = logits(&Device::flex());
            let (decomposed, took_decomposed) = logits(&Device::flex().autodiff());
            assert!(took_fused && !took_decomposed, "{model_type}: paths");
            let d = fused
                .iter()
                .zip(&decomposed)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "{model_type}: max |diff| {d}");
        }
    }
}
