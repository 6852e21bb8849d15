//! A GGUF model file as the Hugging Face checkpoint llama.cpp's converter made it from:
//! `config.json` fields from the `<arch>.*` metadata, Hugging Face tensor names and layouts
//! (what the converter changed undone, per family), and the embedded tokenizer. Everything
//! past this point sees one format.

use std::path::Path;

use serde_json::json;

use super::gguf::{GgufError, GgufFile, unpermute_qk};
use super::tokenizer::Tokenizer;
use super::weights::{HostTensor, NamedTensors};
use super::{Family, ModelError};

/// A GGUF model converted to what a Hugging Face checkpoint directory would hold.
pub struct GgufModel {
    /// config.json content.
    pub config: serde_json::Value,
    /// Weights under Hugging Face names, dequantised to f32.
    pub tensors: NamedTensors,
    pub tokenizer: Tokenizer,
    /// generation_config.json content (special token ids), when the file names any.
    pub generation_config: Option<serde_json::Value>,
}

/// What a llama.cpp tensor is in a Hugging Face checkpoint of `family`: its name there, and
/// what llama.cpp's converter did to it that loading must undo.
#[derive(Clone, Debug, PartialEq)]
struct HfTensor {
    name: String,
    fix: Fix,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fix {
    None,
    /// Rows permuted into the interleaved rotary layout, over this many heads (Llama, Granite).
    Unpermute(QkKind),
    /// Stored as `1 + w` (Gemma norms).
    MinusOne,
    /// A Conv1D weight the converter transposed to `[out, in]` (GPT-2).
    ToConv1d,
}

/// Which of q/k a tensor is, so its rows can be un-permuted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum QkKind {
    Q,
    K,
}

/// Maps a llama.cpp tensor name to its Hugging Face name for `family`. `Some(None)` means "no
/// HF counterpart, skip" (e.g. precomputed rope frequencies); `None` means the name is
/// unknown, which the caller reports rather than silently dropping a weight.
fn hf_tensor_name(name: &str, family: Family) -> Option<Option<HfTensor>> {
    use crate::engine::model::config::NormPlacement;
    let plain = |s: &str| {
        Some(Some(HfTensor {
            name: s.to_string(),
            fix: Fix::None,
        }))
    };
    let gemma = matches!(family, Family::Gemma | Family::Gemma2 | Family::Gemma3);
    let (prefix, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let norm_fix = |n: &str| {
        if gemma && suffix == "weight" && n.ends_with("norm") {
            Fix::MinusOne
        } else {
            Fix::None
        }
    };
    if family == Family::Gpt2 {
        let top = match prefix {
            "token_embd" => Some("transformer.wte"),
            "position_embd" => Some("transformer.wpe"),
            "output_norm" => Some("transformer.ln_f"),
            "output" => Some("lm_head"),
            _ => None,
        };
        if let Some(top) = top {
            return plain(&format!("{top}.{suffix}"));
        }
        let rest = prefix.strip_prefix("blk.")?;
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (hf, conv) = match part {
            "attn_norm" => ("ln_1", false),
            "attn_qkv" => ("attn.c_attn", true),
            "attn_output" => ("attn.c_proj", true),
            "ffn_norm" => ("ln_2", false),
            "ffn_up" => ("mlp.c_fc", true),
            "ffn_down" => ("mlp.c_proj", true),
            _ => return None,
        };
        let fix = if conv && suffix == "weight" {
            Fix::ToConv1d
        } else {
            Fix::None
        };
        return Some(Some(HfTensor {
            name: format!("transformer.h.{layer}.{hf}.{suffix}"),
            fix,
        }));
    }
    match prefix {
        "token_embd" => return plain(&format!("model.embed_tokens.{suffix}")),
        "output_norm" => {
            return Some(Some(HfTensor {
                name: format!("model.norm.{suffix}"),
                fix: norm_fix("output_norm"),
            }));
        }
        "output" => return plain(&format!("lm_head.{suffix}")),
        "rope_freqs" | "rope_factors_long" | "rope_factors_short" => return Some(None),
        _ => {}
    }
    let rest = prefix.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    // Llama-architecture converters (Llama, Mistral, Granite) permute q and k.
    let permuted = matches!(family, Family::Llama | Family::Mistral | Family::Granite);
    let placement = match family {
        Family::Gemma2 | Family::Gemma3 => NormPlacement::Sandwich,
        Family::Olmo2 => NormPlacement::Post,
        _ => NormPlacement::Pre,
    };
    let (hf, fix) = match (part, placement) {
        ("attn_q", _) if permuted => ("self_attn.q_proj", Fix::Unpermute(QkKind::Q)),
        ("attn_k", _) if permuted => ("self_attn.k_proj", Fix::Unpermute(QkKind::K)),
        ("attn_q", _) => ("self_attn.q_proj", Fix::None),
        ("attn_k", _) => ("self_attn.k_proj", Fix::None),
        ("attn_v", _) => ("self_attn.v_proj", Fix::None),
        ("attn_output", _) => ("self_attn.o_proj", Fix::None),
        ("attn_qkv", _) if family == Family::Phi3 => ("self_attn.qkv_proj", Fix::None),
        ("attn_q_norm", _) => ("self_attn.q_norm", norm_fix(part)),
        ("attn_k_norm", _) => ("self_attn.k_norm", norm_fix(part)),
        ("ffn_gate", _) => ("mlp.gate_proj", Fix::None),
        ("ffn_up", _) if family == Family::Phi3 => ("mlp.gate_up_proj", Fix::None),
        ("ffn_up", _) => ("mlp.up_proj", Fix::None),
        ("ffn_down", _) => ("mlp.down_proj", Fix::None),
        ("attn_norm", NormPlacement::Pre | NormPlacement::Sandwich) => {
            ("input_layernorm", norm_fix(part))
        }
        ("ffn_norm", NormPlacement::Pre) => ("post_attention_layernorm", norm_fix(part)),
        ("ffn_norm", NormPlacement::Sandwich) => ("pre_feedforward_layernorm", norm_fix(part)),
        ("post_attention_norm", NormPlacement::Sandwich | NormPlacement::Post) => {
            ("post_attention_layernorm", norm_fix(part))
        }
        ("post_ffw_norm", NormPlacement::Sandwich | NormPlacement::Post) => {
            ("post_feedforward_layernorm", norm_fix(part))
        }
        ("attn_rot_embd", _) => return Some(None),
        _ => return None,
    };
    Some(Some(HfTensor {
        name: format!("model.layers.{layer}.{hf}.{suffix}"),
        fix,
    }))
}

/// `config.json` fields of `family` from a GGUF's `<arch>.*` metadata.
fn hf_config(
    file: &GgufFile,
    family: Family,
    tokenizer: &Tokenizer,
) -> Result<serde_json::Value, ModelError> {
    let arch = file.require_str("general.architecture")?.to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.require_u64(&key("embedding_length"))?;
    let n_head = file.require_u64(&key("attention.head_count"))?;
    let n_kv_head = file
        .get_u64(&key("attention.head_count_kv"))?
        .unwrap_or(n_head);
    if n_head == 0 || n_kv_head == 0 {
        return Err(GgufError::Malformed {
            path: file.path().to_path_buf(),
            what: "attention head counts must be positive".to_string(),
        }
        .into());
    }
    let head_dim = match file.get_u64(&key("attention.key_length"))? {
        Some(d) => d,
        None => hidden / n_head,
    };
    let vocab_size = match file.get_u64(&key("vocab_size"))? {
        Some(v) => v,
        None => tokenizer.vocab_size() as u64,
    };
    let tied = file.tensor_info("output.weight").is_none();
    let layers = file.require_u64(&key("block_count"))?;
    let context = file.get_u64(&key("context_length"))?.unwrap_or(2048);
    // The MLP width from the weights: the metadata can be wrong (GPT-2's converter writes
    // 4 x hidden whatever `n_inner` is).
    let ff = match file.tensor_info("blk.0.ffn_down.weight") {
        Some(t) if t.shape().len() == 2 => t.shape()[1] as u64,
        _ => file.require_u64(&key("feed_forward_length"))?,
    };
    if family == Family::Gpt2 {
        return Ok(json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": hidden,
            "n_head": n_head,
            "n_layer": layers,
            "n_positions": context,
            "n_inner": ff,
            "vocab_size": vocab_size,
            "layer_norm_epsilon": file.get_f64(&key("attention.layer_norm_epsilon"))?.unwrap_or(1e-5),
            "activation_function": "gelu_new",
            "tie_word_embeddings": tied,
            "torch_dtype": "float32",
        }));
    }
    let has_bias = file
        .tensor_infos()
        .iter()
        .any(|t| t.name.ends_with("attn_q.bias") || t.name.ends_with("attn_qkv.bias"));
    let mut config = json!({
        "architectures": [family.architecture(false)],
        "model_type": family.model_type(),
        "hidden_size": hidden,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": head_dim,
        "rms_norm_eps": file.get_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        "rope_theta": file.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        "max_position_embeddings": context,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": has_bias && family != Family::Qwen2,
        "mlp_bias": false,
        "torch_dtype": "float32",
    });
    if let Some(dims) = file.get_u64(&key("rope.dimension_count"))?
        && dims != head_dim
        && head_dim > 0
    {
        config["partial_rotary_factor"] = json!(dims as f64 / head_dim as f64);
    }
    // Phi-3 GGUFs store 0 for "no window".
    if let Some(window) = file.get_u64(&key("attention.sliding_window"))?
        && window > 0
    {
        config["sliding_window"] = json!(window);
    }
    if let Some(kind) = file.get_str(&key("rope.scaling.type"))?
        && kind != "none"
    {
        let mut scaling = json!({ "rope_type": kind, "type": kind });
        if let Some(factor) = file.get_f64(&key("rope.scaling.factor"))? {
            scaling["factor"] = json!(factor);
        }
        if let Some(orig) = file.get_u64(&key("rope.scaling.original_context_length"))? {
            scaling["original_max_position_embeddings"] = json!(orig);
        }
        config["rope_scaling"] = scaling;
    }
    if let Some(info) = file.tensor_info("rope_freqs.weight") {
        let name = info.name.clone();
        let factors = file.tensor_f32(&name)?.data;
        let theta = config["rope_theta"].as_f64().unwrap_or(10_000.0);
        let scaling =
            llama3_from_rope_freqs(&factors, theta, head_dim as usize).ok_or_else(|| {
                file.bad_tensor(
                    &name,
                    "per-dimension RoPE factors that are not Llama 3 scaling (factor, low/high \
                 frequency factors 1/4, an original context of a power of two) are not supported",
                )
            })?;
        config["rope_scaling"] = scaling;
    }
    match family {
        Family::Gemma2 | Family::Gemma3 => {
            // llama.cpp scales queries by 1/sqrt(head_dim); the GGUF has no other value.
            config["query_pre_attn_scalar"] = json!(head_dim);
            for name in ["attn_logit_softcapping", "final_logit_softcapping"] {
                if let Some(cap) = file.get_f64(&key(name))? {
                    config[name] = json!(cap);
                }
            }
            if family == Family::Gemma3 {
                if let Some(p) = file.get_u64(&key("attention.sliding_window_pattern"))? {
                    config["sliding_window_pattern"] = json!(p);
                }
                config["rope_local_base_freq"] = json!(
                    file.get_f64(&key("rope.freq_base_swa"))?
                        .unwrap_or(10_000.0)
                );
            }
        }
        Family::Granite => {
            for (name, field) in [
                ("embedding_scale", "embedding_multiplier"),
                ("residual_scale", "residual_multiplier"),
                ("attention.scale", "attention_multiplier"),
                ("logit_scale", "logits_scaling"),
            ] {
                if let Some(v) = file.get_f64(&key(name))? {
                    config[field] = json!(v);
                }
            }
        }
        _ => {}
    }
    Ok(config)
}

/// Llama 3's `rope_scaling` recovered from the per-dimension factors llama.cpp's converter
/// stores instead (`rope_freqs.weight`, each rotary frequency divided by its factor): the
/// factor is the largest, the low/high frequency factors are Meta's 1 and 4, and the original
/// context is the power of two that reproduces every factor.
fn llama3_from_rope_freqs(
    factors: &[f32],
    theta: f64,
    head_dim: usize,
) -> Option<serde_json::Value> {
    if factors.len() * 2 != head_dim || factors.is_empty() {
        return None;
    }
    let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
    let (low, high) = (1.0f64, 4.0f64);
    (4..=24).map(|k| (1u64 << k) as f64).find_map(|old_ctx| {
        let fits = factors.iter().enumerate().all(|(i, &got)| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let want = if wavelen < old_ctx / high {
                1.0
            } else if wavelen > old_ctx / low {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            ((got as f64 - want) / want).abs() < 1e-4
        });
        fits.then(|| {
            json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": old_ctx,
            })
        })
    })
}

/// Loads a GGUF of a supported family as the Hugging Face checkpoint it was converted from:
/// `config.json` values from the `<arch>.*` metadata, HF tensor names, what the converter
/// changed undone (q/k row order, Gemma's `1 + w` norms, GPT-2's Conv1D layout), and the
/// embedded tokenizer.
pub fn load_as_hf(path: &Path) -> Result<GgufModel, ModelError> {
    let file = GgufFile::open(path)?;
    let arch = file.require_str("general.architecture")?;
    let family =
        Family::from_gguf_architecture(arch).ok_or_else(|| GgufError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: arch.to_string(),
        })?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let config = hf_config(&file, family, &tokenizer)?;
    let n_head = config
        .get("num_attention_heads")
        .or_else(|| config.get("n_head"))
        .and_then(|v| v.as_u64())
        .unwrap_or(1) as usize;
    let n_kv_head = config
        .get("num_key_value_heads")
        .and_then(|v| v.as_u64())
        .map_or(n_head, |v| v as usize);

    let mut generation = serde_json::Map::new();
    let mut config = config;
    for (key, id) in [
        ("bos_token_id", file.get_u64("tokenizer.ggml.bos_token_id")?),
        ("eos_token_id", file.get_u64("tokenizer.ggml.eos_token_id")?),
        (
            "pad_token_id",
            file.get_u64("tokenizer.ggml.padding_token_id")?,
        ),
    ] {
        if let Some(id) = id {
            config[key] = json!(id);
            generation.insert(key.to_string(), json!(id));
        }
    }
    // Chat models stop on end-of-turn tokens as well as EOS; HF puts the list here.
    if tokenizer.eos_ids().len() > 1 {
        generation.insert("eos_token_id".to_string(), json!(tokenizer.eos_ids()));
    }
    let generation_config =
        (!generation.is_empty()).then_some(serde_json::Value::Object(generation));

    let mut tensors = NamedTensors::new();
    for info in file.tensor_infos() {
        let Some(mapped) = hf_tensor_name(&info.name, family) else {
            return Err(file
                .bad_tensor(
                    &info.name,
                    format!("no Hugging Face {} counterpart", family.model_type()),
                )
                .into());
        };
        let Some(HfTensor { name: hf_name, fix }) = mapped else {
            continue;
        };
        let mut tensor = file.tensor_f32(&info.name)?;
        match fix {
            Fix::None => {}
            Fix::MinusOne => tensor.data.iter_mut().for_each(|v| *v -= 1.0),
            Fix::ToConv1d => {
                let &[rows, cols] = tensor.shape.as_slice() else {
                    return Err(file
                        .bad_tensor(
                            &info.name,
                            format!("expected a matrix, found shape {:?}", tensor.shape),
                        )
                        .into());
                };
                tensor = HostTensor::new(
                    vec![cols, rows],
                    crate::engine::model::transpose(&tensor.data, rows, cols),
                );
            }
            Fix::Unpermute(kind) => {
                let heads = match kind {
                    QkKind::Q => n_head,
                    QkKind::K => n_kv_head,
                };
                let cols = if tensor.shape.len() == 2 {
                    tensor.shape[1]
                } else {
                    1
                };
                tensor.data = unpermute_qk(&tensor.data, cols, heads).ok_or_else(|| {
                    file.bad_tensor(
                        &info.name,
                        format!(
                            "shape {:?} does not split into {heads} rotary heads",
                            tensor.shape
                        ),
                    )
                })?;
            }
        }
        tensors.insert(hf_name, tensor);
    }
    Ok(GgufModel {
        config,
        tensors,
        tokenizer,
        generation_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llama_names() {
        let m = |n: &str| hf_tensor_name(n, Family::Llama).map(|o| o.map(|t| t.name));
        assert_eq!(
            m("token_embd.weight"),
            Some(Some("model.embed_tokens.weight".into()))
        );
        assert_eq!(
            m("blk.12.attn_k.bias"),
            Some(Some("model.layers.12.self_attn.k_proj.bias".into()))
        );
        assert_eq!(
            m("blk.0.ffn_norm.weight"),
            Some(Some(
                "model.layers.0.post_attention_layernorm.weight".into()
            ))
        );
        assert_eq!(m("rope_freqs.weight"), Some(None));
        assert_eq!(m("blk.0.attn_qkv.weight"), None);
        assert_eq!(m("blk.x.attn_q.weight"), None);
    }

    const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

    #[test]
    fn loads_real_smollm2_gguf() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SMOLLM2);
        if !path.exists() {
            eprintln!(
                "\n*** SKIPPED loads_real_smollm2_gguf: {} not found ***\n",
                path.display()
            );
            return;
        }
        let m = load_as_hf(&path).expect("load SmolLM2");
        let c = &m.config;
        assert_eq!(c["num_hidden_layers"], 30);
        assert_eq!(c["hidden_size"], 576);
        assert_eq!(c["num_attention_heads"], 9);
        assert_eq!(c["num_key_value_heads"], 3);
        assert_eq!(c["vocab_size"], 49152);
        assert_eq!(c["head_dim"], 64);
        assert_eq!(c["intermediate_size"], 1536);
        assert_eq!(c["tie_word_embeddings"], true);
        assert_eq!(c["attention_bias"], false);
        assert_eq!(c["bos_token_id"], 1);
        assert_eq!(c["eos_token_id"], 2);
        assert_eq!(
            m.tensors["model.embed_tokens.weight"].shape,
            vec![49152, 576]
        );
        assert_eq!(
            m.tensors["model.layers.0.self_attn.k_proj.weight"].shape,
            vec![192, 576]
        );
        assert_eq!(
            m.tensors["model.layers.29.mlp.down_proj.weight"].shape,
            vec![576, 1536]
        );
        assert!(!m.tensors.contains_key("lm_head.weight"));
        // 1 embedding + 30 layers * 9 tensors + final norm.
        assert_eq!(m.tensors.len(), 1 + 30 * 9 + 1);
        check_against_transformers_fixture(&m.tensors);
    }

    /// Compares with the weights transformers loaded from the same GGUF
    /// (tests/fixtures/smollm2_parity.json, 6 significant digits).
    fn check_against_transformers_fixture(tensors: &NamedTensors) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_parity.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!(
                "\n*** SKIPPED transformers weight parity: {} not found ***\n",
                path.display()
            );
            return;
        };
        let fixture: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs() + 1e-6;
        let samples = fixture["weights"]["tensors"]
            .as_array()
            .expect("weights.tensors");
        assert!(!samples.is_empty());
        for sample in samples {
            let name = sample["hf_name"].as_str().expect("hf_name");
            let t = &tensors[name];
            let shape: Vec<usize> = serde_json::from_value(sample["hf_shape"].clone()).unwrap();
            assert_eq!(t.shape, shape, "{name}");
            if let Some(first) = sample.get("hf_first16") {
                let first: Vec<f64> = serde_json::from_value(first.clone()).unwrap();
                for (i, &e) in first.iter().enumerate() {
                    assert!(
                        close(t.data[i] as f64, e),
                        "{name}[{i}] = {}, transformers has {e}",
                        t.data[i]
                    );
                }
            } else {
                let cols = t.shape[1];
                let rows: Vec<Vec<f64>> =
                    serde_json::from_value(sample["hf_rows_0_1_2_first8"].clone()).unwrap();
                let last: Vec<f64> =
                    serde_json::from_value(sample["hf_row_last_first8"].clone()).unwrap();
                let expected = rows.iter().enumerate().chain([(t.shape[0] - 1, &last)]);
                for (r, expect) in expected {
                    for (c, &e) in expect.iter().enumerate() {
                        let v = t.data[r * cols + c] as f64;
                        assert!(close(v, e), "{name}[{r}, {c}] = {v}, transformers has {e}");
                    }
                }
            }
            let sum: f64 = t.data.iter().map(|&v| v as f64).sum();
            let e = sample["hf_sum"].as_f64().unwrap();
            assert!(
                (sum - e).abs() <= 1e-5 * e.abs() + 1e-3,
                "{name} sums to {sum}, transformers {e}"
            );
        }
    }
}
