//! Phi-3 / Phi-3.5 / Phi-4-mini: the Llama block with q, k and v fused into one `qkv_proj`
//! (rows q, then k, then v) and gate and up fused into one `gate_up_proj` (gate rows first),
//! optionally rotating only the leading `partial_rotary_factor` of each head. The fused
//! tensors are split on load and fused again on save. `longrope` scaling is refused.
//!
//! GGUF: `phi3`, with `attn_qkv` fused and `ffn_up` holding gate and up.

use super::super::ModelConfig;
use super::super::config::{Arch, Fields, Sizes};
use super::super::weights::NamedTensors;
use super::llama::llama_like;
use super::{layer_attention, split_rows, stack_rows};

pub(super) fn arch(f: &Fields, s: &Sizes) -> Result<Arch, String> {
    let mut arch = llama_like(f, s, 1e-5)?;
    let window = f.usize("sliding_window")?;
    arch.layers = layer_attention(f, s.num_hidden_layers, window, |_| window.is_some(), false)?;
    Ok(arch)
}

pub(super) fn split_fused(cfg: &ModelConfig, t: &mut NamedTensors) -> Result<(), String> {
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let ff = cfg.intermediate_size;
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let qkv = format!("{p}.self_attn.qkv_proj.weight");
        if t.contains_key(&qkv) {
            split_rows(
                t,
                &qkv,
                &[
                    (&format!("{p}.self_attn.q_proj.weight"), q),
                    (&format!("{p}.self_attn.k_proj.weight"), kv),
                    (&format!("{p}.self_attn.v_proj.weight"), kv),
                ],
            )?;
        }
        let gate_up = format!("{p}.mlp.gate_up_proj.weight");
        if t.contains_key(&gate_up) {
            split_rows(
                t,
                &gate_up,
                &[
                    (&format!("{p}.mlp.gate_proj.weight"), ff),
                    (&format!("{p}.mlp.up_proj.weight"), ff),
                ],
            )?;
        }
    }
    Ok(())
}

pub(super) fn fuse(cfg: &ModelConfig, t: &mut NamedTensors) {
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        stack_rows(
            t,
            &format!("{p}.self_attn.qkv_proj.weight"),
            &[
                &format!("{p}.self_attn.q_proj.weight"),
                &format!("{p}.self_attn.k_proj.weight"),
                &format!("{p}.self_attn.v_proj.weight"),
            ],
        );
        stack_rows(
            t,
            &format!("{p}.mlp.gate_up_proj.weight"),
            &[
                &format!("{p}.mlp.gate_proj.weight"),
                &format!("{p}.mlp.up_proj.weight"),
            ],
        );
    }
}
