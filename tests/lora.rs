//! LoRA in PEFT's format: adapters made by Python `peft` (fixtures by
//! `tests/fixtures/lora_adapters.py`) give peft's logits in rlft, rlft's adapters use PEFT's
//! names and values, training touches only the adapters, and runs start from a saved adapter.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use common::*;
use rlft::engine::device::DeviceChoice;
use rlft::engine::events::{Event, LogLevel};
use rlft::engine::model::WeightDtype::F32;
use rlft::engine::model::weights::NamedTensors;
use rlft::engine::model::{self, Heads, hf, lora};
use rlft::engine::sample::bool_tensor;

fn cpu() -> Device {
    Device::flex()
}

fn adapter_dir(name: &str) -> PathBuf {
    fixture("lora").join(name)
}

fn logits_of(m: &model::LoadedModel, ids: &[Vec<u32>]) -> Vec<f32> {
    model_logits(&m.model, ids)
}

/// Logits at every position of unpadded rows.
fn model_logits(model: &model::CausalLm, ids: &[Vec<u32>]) -> Vec<f32> {
    let t = ids[0].len();
    full_logits(
        model,
        ids,
        &[(0..t as i64).collect()],
        &[vec![true; t]],
        &cpu(),
    )
}

#[test]
fn peft_adapters_give_peft_logits_unmerged_and_merged() {
    for name in ["llama-qv", "qwen3-all-rslora", "gemma2-mlp"] {
        let dir = adapter_dir(name);
        let e = json(&dir.join("expected.json"));
        let base = fixture(e["base"].as_str().unwrap());
        let ids = ids_2d(&e["input_ids"]);
        let want = floats(&e["logits"]);

        let m = model::load_with_adapter(&base, &dir, &cpu(), Heads::Lm, F32).unwrap();
        assert!(m.model.adapter.is_some(), "{name}");
        let diff = max_abs_diff(&logits_of(&m, &ids), &want);
        eprintln!("{name:>17}: rlft vs peft max |logit diff| {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: adapter logits differ by {diff}");

        // The adapter folder alone finds its base (`base_model_name_or_path`).
        let by_folder = model::load(&dir, &cpu(), Heads::Lm).unwrap();
        assert_eq!(logits_of(&by_folder, &ids), logits_of(&m, &ids), "{name}");

        let merged = model::load_for_inference(&base, Some(&dir), &cpu(), Heads::Lm, F32).unwrap();
        assert!(merged.model.adapter.is_none());
        let diff = max_abs_diff(&logits_of(&merged, &ids), &want);
        assert!(diff <= 1e-4, "{name}: merged logits differ by {diff}");

        // Without its adapters the model is the base again.
        let plain = model::load(&base, &cpu(), Heads::Lm).unwrap();
        let stripped = lora::without_adapters(m.model.clone());
        let a = model_logits(&stripped, &ids);
        assert_eq!(a, logits_of(&plain, &ids), "{name}: adapters off = base");
    }
}

#[test]
fn a_peft_sequence_classification_adapter_gives_peft_scores() {
    let dir = adapter_dir("llama-seqcls");
    let e = json(&dir.join("expected.json"));
    let base = fixture(e["base"].as_str().unwrap());
    let m = model::load_with_adapter(&base, &dir, &cpu(), Heads::Score, F32).unwrap();
    let ids = ids_2d(&e["input_ids"]);
    let t = ids[0].len();
    let flat: Vec<i64> = ids[0].iter().map(|&x| x as i64).collect();
    let device = cpu();
    let hidden = m.model.hidden(
        Tensor::from_data(TensorData::new(flat, [1, t]), &device),
        Tensor::from_data(
            TensorData::new((0..t as i64).collect::<Vec<_>>(), [1, t]),
            &device,
        ),
        bool_tensor(&[vec![true; t]], &device),
        None,
    );
    let scores = m
        .model
        .scores(hidden)
        .unwrap()
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let diff = max_abs_diff(&scores, &floats(&e["scores"]));
    eprintln!("llama-seqcls: rlft vs peft max |score diff| {diff:.2e}");
    assert!(diff <= 1e-4, "scores differ by {diff}");
}

/// rlft writes an adapter with PEFT's key names, shapes and values, and reads it back.
#[test]
fn rlft_saves_adapters_under_peft_names() {
    for name in ["llama-qv", "qwen3-all-rslora", "llama-seqcls"] {
        let dir = adapter_dir(name);
        let e = json(&dir.join("expected.json"));
        let base = fixture(e["base"].as_str().unwrap());
        let heads = if name.ends_with("seqcls") {
            Heads::Score
        } else {
            Heads::Lm
        };
        let m = model::load_with_adapter(&base, &dir, &cpu(), heads, F32).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("adapter");
        hf::save_dir(&out, &m.config, &m.model, m.tokenizer.as_ref(), None).unwrap();
        assert!(
            !out.join("model.safetensors").exists(),
            "{name}: a LoRA save is an adapter"
        );
        let mut theirs = NamedTensors::new();
        hf::read_safetensors(&dir.join("adapter_model.safetensors"), &mut theirs).unwrap();
        let mut ours = NamedTensors::new();
        hf::read_safetensors(&out.join("adapter_model.safetensors"), &mut ours).unwrap();
        assert_eq!(
            theirs.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "{name}: key names"
        );
        assert_eq!(theirs, ours, "{name}: values");
        let config = json(&out.join("adapter_config.json"));
        assert_eq!(config["peft_type"], "LORA");
        let back = model::load(&out, &cpu(), heads).unwrap();
        if heads == Heads::Lm {
            let ids = ids_2d(&e["input_ids"]);
            assert_eq!(
                logits_of(&back, &ids),
                logits_of(&m, &ids),
                "{name}: reloaded"
            );
        }
    }
}

#[test]
fn adapters_that_do_not_fit_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let src = adapter_dir("llama-qv");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config = json(&src.join("adapter_config.json"));
    config["use_dora"] = true.into();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let base = fixture("families/llama");
    let err = model::load_with_adapter(&base, &dir, &cpu(), Heads::Lm, F32)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("use_dora") && err.to_string().contains("adapter_config.json"),
        "{err}"
    );
    // An adapter made for another model: shapes do not fit.
    let err = model::load_with_adapter(&fixture("families/qwen3"), &src, &cpu(), Heads::Lm, F32)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("adapter_model.safetensors"),
        "{err}"
    );
}

fn lora_section(r: usize) -> String {
    format!(
        "[lora]\nr = {r}\nlora_alpha = {}\ntarget_modules = \"all-linear\"\n",
        2 * r
    )
}

/// The checkpoint folder of a finished run.
fn final_dir(root: &Path) -> PathBuf {
    let run = std::fs::read_dir(root)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    run.join("checkpoints").join("final")
}

/// SFT with LoRA: the log says what trains, the saved checkpoint is a PEFT adapter, the base
/// is untouched (adapters off = the base model), and the adapters moved.
#[test]
fn lora_sft_trains_only_the_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("families/llama");
    let (sft, _) = sft_and_grpo(&base, tmp.path());
    let sft = sft.replace("learning_rate = 1e-3", "learning_rate = 1e-2") + &lora_section(4);
    let root = tmp.path().join("runs");
    let events = run_to_end(&sft, &root, DeviceChoice::Cpu);
    assert!(finished(&events), "{}", failure(&events));
    let described = events.iter().find_map(|e| match e {
        Event::Log {
            level: LogLevel::Info,
            message,
            ..
        } if message.starts_with("trainable params") => Some(message.clone()),
        _ => None,
    });
    let described = described.expect("a trainable-parameters log line");
    assert!(described.contains("LoRA r=4"), "{described}");

    let out = final_dir(&root);
    assert!(
        out.join("adapter_config.json").exists() && out.join("adapter_model.safetensors").exists()
    );
    assert!(!out.join("model.safetensors").exists());
    let trained = model::load(&out, &cpu(), Heads::Lm).unwrap();
    let plain = model::load(&base, &cpu(), Heads::Lm).unwrap();
    let ids = vec![vec![8u32, 45, 82, 119, 156, 193]];
    let stripped = lora::without_adapters(trained.model.clone());
    let a = model_logits(&stripped, &ids);
    assert_eq!(a, logits_of(&plain, &ids), "the base did not move");
    let moved = max_abs_diff(&logits_of(&trained, &ids), &logits_of(&plain, &ids));
    assert!(moved > 1e-4, "the adapters did not move ({moved})");
    let (trainable, total) = lora::parameter_counts(
        &model::load_for_run(
            &base,
            None,
            Some(
                &toml::from_str::<toml::Table>(&lora_section(4)).unwrap()["lora"]
                    .clone()
                    .try_into()
                    .unwrap(),
            ),
            &cpu().autodiff(),
            Heads::Lm,
            0,
            F32,
        )
        .unwrap()
        .model,
    );
    assert!(
        trainable > 0 && trainable < total / 4,
        "{trainable} / {total}"
    );

    // A new run starts from the saved adapter and trains it further.
    std::fs::create_dir_all(tmp.path().join("again")).unwrap();
    let (sft2, _) = sft_and_grpo(&base, &tmp.path().join("again"));
    let sft2 = sft2.replacen(
        "[model]\n",
        &format!("[model]\nadapter = \"{}\"\n", out.display()),
        1,
    );
    let root2 = tmp.path().join("runs2");
    let events = run_to_end(&sft2, &root2, DeviceChoice::Cpu);
    assert!(finished(&events), "{}", failure(&events));
    assert!(final_dir(&root2).join("adapter_model.safetensors").exists());
}

/// GRPO and DPO with LoRA: the reference is the base with the adapters off.
#[test]
fn lora_grpo_and_dpo_run_with_the_base_as_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, grpo) = sft_and_grpo(&fixture("families/qwen3"), tmp.path());
    let events = run_to_end(
        &(grpo + &lora_section(2)),
        &tmp.path().join("grpo"),
        DeviceChoice::Cpu,
    );
    assert!(finished(&events), "{}", failure(&events));
    let dpo = std::fs::read_to_string("configs/dpo_arith.toml").unwrap();
    let dpo = dpo.replace("max_steps = 150", "max_steps = 2") + &lora_section(4);
    let dpo = dpo
        .lines()
        .map(|l| {
            if l.starts_with("eval_steps") || l.starts_with("save_steps") {
                "eval_steps = 2"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let events = run_to_end(&dpo, &tmp.path().join("dpo"), DeviceChoice::Cpu);
    assert!(finished(&events), "{}", failure(&events));
}

/// peft loads rlft's trained adapter (and transformers its merged model) with rlft's logits.
/// Needs Python with torch, transformers and peft:
/// `RLFT_PYTHON=/tmp/fxenv/bin/python cargo test --release --test lora -- --ignored`.
#[test]
#[ignore]
fn peft_loads_what_rlft_trained() {
    let python = std::env::var("RLFT_PYTHON").unwrap_or_else(|_| "python3".into());
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("families/llama");
    let (sft, _) = sft_and_grpo(&base, tmp.path());
    let sft = sft.replace("learning_rate = 1e-3", "learning_rate = 1e-2") + &lora_section(4);
    let root = tmp.path().join("runs");
    let events = run_to_end(&sft, &root, DeviceChoice::Cpu);
    assert!(finished(&events), "{}", failure(&events));
    let adapter = final_dir(&root);
    let m = model::load(&adapter, &cpu(), Heads::Lm).unwrap();
    let ids = vec![vec![8u32, 45, 82, 119, 156, 193, 230, 267, 7, 44, 81, 118]];
    let logits = logits_of(&m, &ids);
    let v = m.config.vocab_size;
    let rows: Vec<Vec<f32>> = logits.chunks(v).map(|c| c.to_vec()).collect();
    let json_path = tmp.path().join("rlft_logits.json");
    std::fs::write(
        &json_path,
        serde_json::json!({"input_ids": ids, "logits": [rows]}).to_string(),
    )
    .unwrap();
    let script = fixture("check_adapter.py");
    let ok = std::process::Command::new(&python)
        .arg(&script)
        .arg(&base)
        .arg(&adapter)
        .arg(&json_path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "peft disagrees with rlft's adapter");
    let merged = tmp.path().join("merged");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_rlft"))
        .args(["merge"])
        .arg(&base)
        .arg(&adapter)
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success());
    let ok = std::process::Command::new(&python)
        .arg(&script)
        .arg("--merged")
        .arg(&merged)
        .arg(&base)
        .arg(&adapter)
        .arg("--ids-json")
        .arg(&json_path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "transformers disagrees with rlft merge's output");
}
