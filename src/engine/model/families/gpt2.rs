//! GPT-2: learned absolute positions (`wpe`) added to the token embeddings, LayerNorm with
//! bias, a plain (non-gated) MLP with `gelu_new`, biases on every projection, and Conv1D
//! weights stored `[in, out]` with q, k and v packed in one `c_attn`.
//!
//! Keys: `transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`,
//! `transformer.{wte, wpe, ln_f}` (the hub's original files have no `transformer.` prefix). They
//! are converted to canonical Linear names on load and back on save; the `attn.bias` mask
//! buffers of old files are dropped.
//!
//! GGUF: `gpt2`; the converter already transposes Conv1D to `[out, in]`.

use super::super::config::{
    Activation, Arch, Fields, NormKind, NormPlacement, Positions, QkNorm, Sizes,
};
use super::super::weights::{HostTensor, NamedTensors};
use super::super::{ModelConfig, transpose};
use super::{full_layers, split_rows, stack_rows};

pub(super) fn sizes(f: &Fields) -> Result<Sizes, String> {
    let hidden = f.require_usize("n_embd")?;
    let heads = f.require_usize("n_head")?;
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!(
            "`n_embd` ({hidden}) is not divisible by `n_head` ({heads})"
        ));
    }
    Ok(Sizes {
        vocab_size: f.require_usize("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: f.usize("n_inner")?.unwrap_or(4 * hidden),
        num_hidden_layers: f.require_usize("n_layer")?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: hidden / heads,
        max_position_embeddings: f.require_usize("n_positions")?,
        tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(true),
    })
}

pub(super) fn arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    if f.bool("scale_attn_by_inverse_layer_idx")?.unwrap_or(false) {
        return Err("`scale_attn_by_inverse_layer_idx` = true is not supported".into());
    }
    let scaled = f.bool("scale_attn_weights")?.unwrap_or(true);
    Ok(Arch {
        norm: NormKind::Layer,
        norm_eps: f.f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        placement: NormPlacement::Pre,
        gated_mlp: false,
        activation: f.activation(&["activation_function"], Activation::GeluTanh)?,
        qk_norm: QkNorm::None,
        positions: Positions::Learned,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        attention_scale: if scaled {
            1.0 / (s.head_dim as f64).sqrt()
        } else {
            1.0
        },
        attn_softcap: None,
        final_softcap: None,
        embedding_scale: 1.0,
        residual_scale: 1.0,
        logit_scale: 1.0,
        layers: full_layers(s.num_hidden_layers),
    })
}

/// `(gpt2 name, canonical name, Conv1D)` for one layer's tensors, without `.weight`/`.bias`.
fn layer_names(i: usize) -> [(String, String, bool); 5] {
    let c = format!("model.layers.{i}");
    [
        (format!("h.{i}.ln_1"), format!("{c}.input_layernorm"), false),
        (
            format!("h.{i}.attn.c_proj"),
            format!("{c}.self_attn.o_proj"),
            true,
        ),
        (
            format!("h.{i}.ln_2"),
            format!("{c}.post_attention_layernorm"),
            false,
        ),
        (format!("h.{i}.mlp.c_fc"), format!("{c}.mlp.up_proj"), true),
        (
            format!("h.{i}.mlp.c_proj"),
            format!("{c}.mlp.down_proj"),
            true,
        ),
    ]
}

fn transposed(t: HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    HostTensor::new(vec![cols, rows], transpose(&t.data, rows, cols))
}

/// Moves `{from}.weight` / `{from}.bias` to `{to}.*`, transposing a Conv1D weight.
fn rename(t: &mut NamedTensors, from: &str, to: &str, conv: bool) {
    for suffix in ["weight", "bias"] {
        if let Some(v) = t.remove(&format!("{from}.{suffix}")) {
            let v = if conv && suffix == "weight" && v.shape.len() == 2 {
                transposed(v)
            } else {
                v
            };
            t.insert(format!("{to}.{suffix}"), v);
        }
    }
}

pub(super) fn to_canonical(cfg: &ModelConfig, t: &mut NamedTensors) -> Result<(), String> {
    // Files saved from `GPT2Model` have no `transformer.` prefix.
    let old: Vec<String> = t.keys().cloned().collect();
    for name in old {
        let bare = ["h.", "wte.", "wpe.", "ln_f."]
            .iter()
            .any(|p| name.starts_with(p));
        if bare && let Some(v) = t.remove(&name) {
            t.insert(format!("transformer.{name}"), v);
        }
    }
    t.retain(|k, _| !(k.ends_with(".attn.bias") || k.ends_with(".attn.masked_bias")));
    let rename = |t: &mut NamedTensors, from: &str, to: &str, conv: bool| {
        rename(t, &format!("transformer.{from}"), to, conv)
    };
    rename(t, "wte", "model.embed_tokens", false);
    rename(t, "wpe", "model.embed_positions", false);
    rename(t, "ln_f", "model.norm", false);
    for i in 0..cfg.num_hidden_layers {
        for (from, to, conv) in layer_names(i) {
            rename(t, &from, &to, conv);
        }
        rename(
            t,
            &format!("h.{i}.attn.c_attn"),
            &format!("model.layers.{i}.self_attn.qkv"),
            true,
        );
        let h = cfg.hidden_size;
        for suffix in ["weight", "bias"] {
            let c = format!("model.layers.{i}.self_attn");
            let fused = format!("{c}.qkv.{suffix}");
            if t.contains_key(&fused) {
                split_rows(
                    t,
                    &fused,
                    &[
                        (&format!("{c}.q_proj.{suffix}"), h),
                        (&format!("{c}.k_proj.{suffix}"), h),
                        (&format!("{c}.v_proj.{suffix}"), h),
                    ],
                )?;
            }
        }
    }
    Ok(())
}

pub(super) fn from_canonical(cfg: &ModelConfig, t: &mut NamedTensors) {
    let rename = |t: &mut NamedTensors, from: &str, to: &str, conv: bool| {
        rename(t, from, &format!("transformer.{to}"), conv)
    };
    rename(t, "model.embed_tokens", "wte", false);
    rename(t, "model.embed_positions", "wpe", false);
    rename(t, "model.norm", "ln_f", false);
    for i in 0..cfg.num_hidden_layers {
        for (to, from, conv) in layer_names(i) {
            rename(t, &from, &to, conv);
        }
        let c = format!("model.layers.{i}.self_attn");
        for suffix in ["weight", "bias"] {
            stack_rows(
                t,
                &format!("{c}.qkv.{suffix}"),
                &[
                    &format!("{c}.q_proj.{suffix}"),
                    &format!("{c}.k_proj.{suffix}"),
                    &format!("{c}.v_proj.{suffix}"),
                ],
            );
        }
        rename(t, &format!("{c}.qkv"), &format!("h.{i}.attn.c_attn"), true);
    }
}
