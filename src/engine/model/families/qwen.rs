//! Qwen2 / Qwen2.5 and Qwen3: the Llama block with
//! - Qwen2: bias on q, k and v (never on o);
//! - Qwen3: no biases by default (`attention_bias`), an explicit `head_dim` (q can be wider
//!   than the hidden size), and an RMSNorm over each head of q and k before RoPE.
//!
//! Both may use a sliding window on the layers from `max_window_layers` on when
//! `use_sliding_window` is set. GGUF: `qwen2` / `qwen3`, tensors unpermuted (NeoX rotary).

use super::super::config::{Arch, Fields, QkNorm, Sizes};
use super::layer_attention;
use super::llama::llama_like;

fn sliding(f: &Fields, s: &Sizes, arch: &mut Arch) -> Result<(), String> {
    let use_sliding = f.bool("use_sliding_window")?.unwrap_or(false);
    let window = f.usize("sliding_window")?;
    let first = f.usize("max_window_layers")?.unwrap_or(s.num_hidden_layers);
    arch.layers = layer_attention(
        f,
        s.num_hidden_layers,
        window,
        |i| use_sliding && i >= first,
        false,
    )?;
    Ok(())
}

pub(super) fn qwen2_arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    let mut arch = llama_like(f, s, 1e-6)?;
    arch.qkv_bias = true;
    arch.o_bias = false;
    sliding(f, s, &mut arch)?;
    Ok(arch)
}

pub(super) fn qwen3_arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    let mut arch = llama_like(f, s, 1e-6)?;
    arch.qk_norm = QkNorm::PerHead;
    sliding(f, s, &mut arch)?;
    Ok(arch)
}
