//! Gemma, Gemma 2 and Gemma 3 (text). All three:
//! - scale the token embeddings by sqrt(hidden_size);
//! - use RMSNorm scaled by `1 + w` (the checkpoint stores the offset `w`);
//! - use a GeGLU MLP (tanh GELU, `hidden_activation`);
//! - tie the LM head to the embeddings.
//!
//! Gemma 2 adds norms after attention and after the MLP, attention and final-logit soft-capping
//! (`tanh(x / cap) * cap`), q scaled by `query_pre_attn_scalar^-0.5`, and a sliding window on
//! every other layer (layer 0 first). Gemma 3 drops the soft-caps by default, normalises each
//! head of q and k (also `1 + w`), and gives its sliding layers (all but every
//! `sliding_window_pattern`-th) their own RoPE base, `rope_local_base_freq`, without scaling.
//!
//! GGUF: llama.cpp's converter stores every norm weight as `1 + w` (undone on load); it does
//! not store `query_pre_attn_scalar` (llama.cpp uses `head_dim`).

use super::super::config::{
    Activation, Arch, Fields, NormKind, NormPlacement, Positions, QkNorm, Rope, RopeScaling, Sizes,
    read_rope,
};
use super::layer_attention;
use super::llama::llama_like;

fn gemma_base(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    let mut arch = llama_like(f, s, 1e-6)?;
    arch.norm = NormKind::RmsOneOffset;
    // `hidden_activation` wins over `hidden_act` (Gemma 1 configs say `gelu` in `hidden_act`
    // but run the tanh approximation).
    arch.activation = f.activation(&["hidden_activation", "hidden_act"], Activation::GeluTanh)?;
    arch.embedding_scale = (s.hidden_size as f64).sqrt();
    Ok(arch)
}

pub(super) fn gemma_arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    gemma_base(f, s)
}

fn query_scale(f: &Fields, s: &Sizes) -> Result<f64, String> {
    let scalar = f.f64("query_pre_attn_scalar")?.unwrap_or(s.head_dim as f64);
    if scalar <= 0.0 {
        return Err(format!(
            "`query_pre_attn_scalar` must be positive, found {scalar}"
        ));
    }
    Ok(scalar.powf(-0.5))
}

pub(super) fn gemma2_arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    let mut arch = gemma_base(f, s)?;
    arch.placement = NormPlacement::Sandwich;
    arch.attention_scale = query_scale(f, s)?;
    arch.attn_softcap = f.f64("attn_logit_softcapping")?;
    arch.final_softcap = f.f64("final_logit_softcapping")?;
    let window = f.usize("sliding_window")?;
    arch.layers = layer_attention(f, s.num_hidden_layers, window, |i| (i + 1) % 2 != 0, false)?;
    Ok(arch)
}

pub(super) fn gemma3_arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    if f.bool("use_bidirectional_attention")?.unwrap_or(false) {
        return Err("`use_bidirectional_attention` = true (an encoder) is not supported".into());
    }
    let mut arch = gemma_base(f, s)?;
    arch.placement = NormPlacement::Sandwich;
    arch.qk_norm = QkNorm::PerHead;
    arch.attention_scale = query_scale(f, s)?;
    arch.attn_softcap = f.f64("attn_logit_softcapping")?;
    arch.final_softcap = f.f64("final_logit_softcapping")?;
    let window = f.usize("sliding_window")?;
    // transformers 5 writes the pattern as `_sliding_window_pattern` beside `layer_types`.
    let pattern = match f.usize("sliding_window_pattern")? {
        Some(p) => p,
        None => f.usize("_sliding_window_pattern")?.unwrap_or(6),
    }
    .max(1);
    arch.layers = layer_attention(
        f,
        s.num_hidden_layers,
        window,
        |i| (i + 1) % pattern != 0,
        true,
    )?;
    let global = read_rope(
        f,
        Some("full_attention"),
        1_000_000.0,
        s.head_dim,
        s.max_position_embeddings,
    )?;
    // transformers 5 keys `rope_parameters` by layer type; transformers 4 has a separate
    // `rope_local_base_freq` and no scaling for local layers.
    let keyed = f
        .get("rope_parameters")
        .and_then(|p| p.get("sliding_attention"))
        .is_some();
    let local = if keyed {
        read_rope(
            f,
            Some("sliding_attention"),
            10_000.0,
            s.head_dim,
            s.max_position_embeddings,
        )?
    } else {
        Rope {
            theta: f.f64("rope_local_base_freq")?.unwrap_or(10_000.0),
            scaling: RopeScaling::None,
            rotary_dim: global.rotary_dim,
        }
    };
    arch.positions = Positions::Rope {
        global: Box::new(global),
        local: Some(Box::new(local)),
    };
    Ok(arch)
}
