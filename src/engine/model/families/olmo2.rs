//! OLMo 2: no norm before attention or MLP; instead RMSNorm on each block's output before the
//! residual add (`post_attention_layernorm`, `post_feedforward_layernorm`), and RMSNorm over
//! the whole q and k projections (all heads at once) before RoPE.
//!
//! GGUF: `olmo2`, with `post_attention_norm`, `post_ffw_norm`, `attn_q_norm`, `attn_k_norm`.

use super::super::config::{Arch, Fields, NormPlacement, QkNorm, Sizes};
use super::llama::llama_like;

pub(super) fn arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    let mut arch = llama_like(f, s, 1e-5)?;
    arch.placement = NormPlacement::Post;
    arch.qk_norm = QkNorm::FullWidth;
    Ok(arch)
}
