//! Llama (Llama 2 / 3.x, SmolLM, TinyLlama) and Mistral: RMSNorm before attention and MLP,
//! SwiGLU, grouped-query attention, RoPE (with `llama3`, `linear`, `yarn` or `dynamic` scaling).
//! Mistral adds a sliding window to every layer.
//!
//! GGUF: both convert as `llama`; llama.cpp's converter permutes the rows of q and k into the
//! interleaved rotary layout (undone on load) and does not store Mistral's `sliding_window`.

use super::super::config::{
    Activation, Arch, Fields, NormKind, NormPlacement, Positions, QkNorm, Sizes, read_rope,
};
use super::layer_attention;

/// The Llama block with this config's values; other families start from it.
pub(super) fn llama_like(f: &Fields, s: &Sizes, default_eps: f64) -> Result<Arch, String> {
    let bias = f.bool("attention_bias")?.unwrap_or(false);
    Ok(Arch {
        norm: NormKind::Rms,
        norm_eps: f.f64("rms_norm_eps")?.unwrap_or(default_eps),
        placement: NormPlacement::Pre,
        gated_mlp: true,
        activation: f.activation(&["hidden_act"], Activation::Silu)?,
        qk_norm: QkNorm::None,
        positions: Positions::Rope {
            global: Box::new(read_rope(
                f,
                None,
                10_000.0,
                s.head_dim,
                s.max_position_embeddings,
            )?),
            local: None,
        },
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: f.bool("mlp_bias")?.unwrap_or(false),
        attention_scale: 1.0 / (s.head_dim as f64).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        embedding_scale: 1.0,
        residual_scale: 1.0,
        logit_scale: 1.0,
        // Llama itself never slides, but a `layer_types` list is honoured (or refused) rather
        // than ignored.
        layers: layer_attention(
            f,
            s.num_hidden_layers,
            f.usize("sliding_window")?,
            |_| false,
            false,
        )?,
    })
}

pub(super) fn arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    llama_like(f, s, 1e-6)
}

pub(super) fn mistral_arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    let mut arch = llama_like(f, s, 1e-6)?;
    let window = f.usize("sliding_window")?;
    arch.layers = layer_attention(f, s.num_hidden_layers, window, |_| window.is_some(), false)?;
    Ok(arch)
}
