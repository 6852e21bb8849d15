//! Frozen weights stored in bf16 / f16 (`[model] dtype`): half the memory, results within
//! tolerance of f32, LoRA gradients on a narrow base close to those on an f32 base, and runs
//! that train with it (with gradients layer by layer).

mod common;

use burn::prelude::*;
use common::*;
use rlft::engine::device::DeviceChoice;
use rlft::engine::events::Event;
use rlft::engine::model::WeightDtype::{Bf16, F16, F32};
use rlft::engine::model::{self, Heads, WeightDtype, lora, precision};

fn cpu() -> Device {
    Device::flex()
}

/// Tokens every fixture's vocabulary has.
fn rows() -> Vec<Vec<u32>> {
    vec![
        vec![5, 17, 42, 8, 99, 3, 61, 27],
        vec![11, 2, 73, 40, 6, 88, 19, 33],
    ]
}

fn logits(m: &model::CausalLm) -> Vec<f32> {
    let ids = rows();
    let t = ids[0].len();
    let positions: Vec<Vec<i64>> = ids.iter().map(|_| (0..t as i64).collect()).collect();
    let valid: Vec<Vec<bool>> = ids.iter().map(|_| vec![true; t]).collect();
    full_logits(m, &ids, &positions, &valid, &cpu())
}

/// Largest logit difference relative to the largest logit.
fn relative_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    max_abs_diff(got, want) / scale
}

/// Every family's fixture stored in bf16 and f16 gives the f32 logits within the weights'
/// rounding, and its parameters take about half the bytes.
#[test]
fn narrow_storage_stays_within_tolerance_of_f32() {
    for family in ["llama", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "olmo2"] {
        let path = fixture(&format!("families/{family}"));
        let f32_model = model::load_stored(&path, &cpu(), Heads::Lm, F32).unwrap();
        let want = logits(&f32_model.model);
        let f32_bytes = precision::stored_bytes(&f32_model.model);
        for (dtype, tolerance) in [(Bf16, 3e-2), (F16, 4e-3)] {
            let narrow = model::load_stored(&path, &cpu(), Heads::Lm, dtype).unwrap();
            let diff = relative_diff(&logits(&narrow.model), &want);
            let ratio = precision::stored_bytes(&narrow.model) as f64 / f32_bytes as f64;
            eprintln!(
                "{family:>7} {dtype:>4}: max |logit diff| / max |logit| {diff:.1e}, bytes {ratio:.3}x"
            );
            assert!(diff < tolerance, "{family} {dtype}: {diff}");
            assert!(diff > 0.0, "{family} {dtype}: nothing was narrowed");
            assert!(ratio < 0.56, "{family} {dtype}: {ratio:.3}x the f32 bytes");
        }
    }
}

/// The gradients of a LoRA run's adapters on a bf16 base are those on the f32 base within
/// the base's rounding, by one backward pass and layer by layer alike.
#[test]
fn lora_gradients_on_a_narrow_base_match_f32() {
    let path = fixture("families/qwen2");
    let lora_cfg = lora::LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..Default::default()
    };
    let device = cpu().autodiff();
    let grads_for = |storage: WeightDtype, recompute: Option<usize>| -> Vec<f32> {
        let m = model::load_for_run(&path, None, Some(&lora_cfg), &device, Heads::Lm, 3, storage)
            .unwrap()
            .model;
        lora_b_grads(&m, &device, recompute)
    };
    let want = grads_for(F32, None);
    assert!(want.iter().any(|g| g.abs() > 1e-6), "no gradient at all");
    let all = Some(usize::MAX);
    for (storage, recompute) in [(F32, all), (F32, Some(1)), (Bf16, None), (Bf16, all)] {
        let got = grads_for(storage, recompute);
        let diff = relative_diff(&got, &want);
        eprintln!("{storage} recompute={recompute:?}: max |grad diff| / max |grad| {diff:.1e}");
        let tolerance = if storage == F32 { 1e-4 } else { 3e-2 };
        assert!(
            diff < tolerance,
            "{storage} recompute={recompute:?}: {diff}"
        );
    }
}

/// A LoRA GRPO run and a LoRA SFT run with `dtype = "bf16"` and gradients layer by layer
/// train to their end, and the saved adapter loads onto the f32 base.
#[test]
fn lora_runs_train_on_a_bf16_base_layer_by_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("families/llama");
    let (sft, grpo) = sft_and_grpo(&base, tmp.path());
    let narrow = |toml: String| {
        toml.replace(
            &format!("path = \"{}\"\n", base.display()),
            &format!("path = \"{}\"\ndtype = \"bf16\"\n", base.display()),
        )
        .replace("[train]\n", "[train]\ngradient_checkpointing = true\n")
            + "[lora]\nr = 4\nlora_alpha = 8\n"
    };
    for (name, toml) in [("sft", narrow(sft)), ("grpo", narrow(grpo))] {
        assert!(toml.contains("dtype = \"bf16\""), "{toml}");
        let root = tmp.path().join(name);
        let events = run_to_end(&toml, &root, DeviceChoice::Cpu);
        assert!(finished(&events), "{name}: {}", failure(&events));
        let says = events.iter().any(|e| {
            matches!(e, Event::Log { message, .. }
                if message.starts_with("trainable params") && message.contains("base in bf16"))
        });
        assert!(says, "{name}: the log says the base is stored in bf16");
        let run = std::fs::read_dir(&root)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let adapter = run.join("checkpoints").join("final");
        assert!(adapter.join("adapter_model.safetensors").exists(), "{name}");
        let loaded = model::load(&adapter, &cpu(), Heads::Lm).unwrap();
        assert!(loaded.model.adapter.is_some(), "{name}");
    }
}

/// `[model] dtype` takes Hugging Face's names and refuses others, naming the value.
#[test]
fn dtype_config_values() {
    let cfg = |v: &str| {
        rlft::engine::config::RunConfig::from_toml(&format!(
            "method = \"sft\"\n[model]\npath = \"m\"\ndtype = \"{v}\"\n[data]\ntrain = \"t\"\n"
        ))
    };
    for (name, want) in [
        ("bf16", Bf16),
        ("bfloat16", Bf16),
        ("f16", F16),
        ("float16", F16),
        ("f32", F32),
    ] {
        assert_eq!(cfg(name).unwrap().model.dtype, want, "{name}");
    }
    let err = cfg("int8").unwrap_err().to_string();
    assert!(err.contains("int8") && err.contains("dtype"), "{err}");
}

/// `[train] precision`: read with Hugging Face's names too, f16 stores frozen weights in f16
/// unless `[model] dtype` asks for another narrow type, a bad value names the field, and on
/// the CPU an f16 run trains (f32 compute) with no loss scale.
#[test]
fn precision_setting_reads_and_runs_on_the_cpu() {
    use rlft::engine::config::RunConfig;
    use rlft::engine::model::precision::Precision;
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let (sft, _) = sft_and_grpo(&model, tmp.path());
    let with = |extra: &str| sft.replace("[train]\n", &format!("[train]\n{extra}\n"));
    let cfg = RunConfig::from_toml(&with("precision = \"fp16\"")).unwrap();
    assert_eq!(cfg.train.precision, Precision::F16);
    assert_eq!(cfg.frozen_dtype(), F16);
    let bf16_base = with("precision = \"f16\"").replace("[model]\n", "[model]\ndtype = \"bf16\"\n");
    assert_eq!(
        RunConfig::from_toml(&bf16_base).unwrap().frozen_dtype(),
        Bf16
    );
    assert_eq!(RunConfig::from_toml(&sft).unwrap().frozen_dtype(), F32);
    let err = RunConfig::from_toml(&with("precision = \"f8\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("precision") && err.contains("f8"), "{err}");

    let events = run_to_end(&with("precision = \"f16\""), tmp.path(), DeviceChoice::Cpu);
    assert!(finished(&events), "{}", failure(&events));
    let metrics: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics { values, .. } => Some(values.clone()),
            _ => None,
        })
        .collect();
    assert!(metrics.iter().all(|m| !m.contains_key("loss_scale")));
    assert!(metrics.iter().all(|m| m["loss"].is_finite()));
}
