//! Granite (IBM Granite 3.x): the Llama block with four multipliers:
//! `embedding_multiplier` on the token embeddings, `residual_multiplier` on each block's
//! output before the residual add, `attention_multiplier` in place of 1/sqrt(head_dim), and
//! logits divided by `logits_scaling`.
//!
//! GGUF: `granite` (q/k permuted like Llama), the multipliers as `granite.embedding_scale`,
//! `granite.residual_scale`, `granite.attention.scale` and `granite.logit_scale`.

use super::super::config::{Arch, Fields, Sizes};
use super::llama::llama_like;

pub(super) fn arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    let mut arch = llama_like(f, s, 1e-6)?;
    arch.embedding_scale = f.f64("embedding_multiplier")?.unwrap_or(1.0);
    arch.residual_scale = f.f64("residual_multiplier")?.unwrap_or(1.0);
    arch.attention_scale = f
        .f64("attention_multiplier")?
        .unwrap_or(arch.attention_scale);
    let logits_scaling = f.f64("logits_scaling")?.unwrap_or(1.0);
    if logits_scaling == 0.0 {
        return Err("`logits_scaling` must not be 0".into());
    }
    arch.logit_scale = 1.0 / logits_scaling;
    Ok(arch)
}
