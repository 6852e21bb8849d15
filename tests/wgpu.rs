//! The wgpu device gives the CPU's results. In CI it runs on Mesa's software Vulkan driver
//! (lavapipe, installed by .ci/run); without any adapter the test says so loudly and returns,
//! unless RLFT_REQUIRE_WGPU=1 makes that a failure.

mod common;

use burn::prelude::*;
use common::*;
use rlft::engine::device::DeviceChoice;
use rlft::engine::model::{self, Heads, KvCache};
use rlft::engine::sample::{self, SamplingParams, bool_tensor};

/// The wgpu device, or None (said loudly) where there is no adapter, unless
/// RLFT_REQUIRE_WGPU=1 makes that a failure.
fn wgpu_or_skip() -> Option<Device> {
    match DeviceChoice::Wgpu.init() {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(
                std::env::var("RLFT_REQUIRE_WGPU").is_err(),
                "wgpu required but unavailable: {e}"
            );
            eprintln!("\n========== SKIPPED: no wgpu adapter ({e}) ==========\n");
            None
        }
    }
}

#[test]
fn wgpu_forward_and_cached_decode_equal_cpu() {
    let Some(gpu) = wgpu_or_skip() else {
        return;
    };
    let cpu = Device::flex();
    let dir = fixture("tiny-llama");
    let on_cpu = model::load(&dir, &cpu, Heads::Lm).unwrap();
    let on_gpu = model::load(&dir, &gpu, Heads::Lm).unwrap();
    let ids = vec![vec![1u32, 5, 9, 13, 17, 21, 25, 29]];
    let pos = vec![(0..8).collect::<Vec<i64>>()];
    let valid = vec![vec![true; 8]];
    let a = full_logits(&on_cpu.model, &ids, &pos, &valid, &cpu);
    let b = full_logits(&on_gpu.model, &ids, &pos, &valid, &gpu);
    let diff = max_abs_diff(&a, &b);
    eprintln!("wgpu vs cpu forward: max |diff| = {diff:e}");
    assert!(diff <= 1e-4, "wgpu forward differs from cpu by {diff}");

    // Cached decoding on wgpu (Burn issue #5257: fusion can corrupt incremental forwards):
    // prefill 7 tokens, decode the 8th, compare with the full forward's last position.
    let v = on_gpu.config.vocab_size;
    let mut cache = KvCache::new(on_gpu.model.num_layers());
    let t =
        |vals: Vec<i64>, n: usize| Tensor::<2, Int>::from_data(TensorData::new(vals, [1, n]), &gpu);
    let _ = on_gpu.model.hidden(
        t(vec![1, 5, 9, 13, 17, 21, 25], 7),
        t((0..7).collect(), 7),
        bool_tensor(&[vec![true; 7]], &gpu),
        Some(&mut cache),
    );
    let h = on_gpu.model.hidden(
        t(vec![29], 1),
        t(vec![7], 1),
        bool_tensor(&[vec![true; 8]], &gpu),
        Some(&mut cache),
    );
    let last: Vec<f32> = on_gpu
        .model
        .logits(h)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let diff = max_abs_diff(&last, &a[7 * v..8 * v]);
    eprintln!("wgpu cached decode vs cpu full forward: max |diff| = {diff:e}");
    assert!(diff <= 1e-4, "wgpu cached decode differs by {diff}");

    // Generation on wgpu attends over the whole cache at every step (constant shapes): the
    // same greedy tokens as the CPU, for two left-padded rows.
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 6,
        ..Default::default()
    };
    let prompts = vec![vec![1u32, 5, 9, 13], vec![7u32, 3]];
    let on = |m: &rlft::engine::model::CausalLm| {
        sample::generate(m, &prompts, &params, &[], 0, None, 64)
            .into_iter()
            .map(|g| g.tokens)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        on(&on_gpu.model),
        on(&on_cpu.model),
        "greedy tokens, wgpu vs cpu"
    );
}

/// Two families whose blocks differ most from Llama's run on wgpu as on the CPU: Gemma 2
/// (sandwich norms, soft-capping, sliding windows, `1 + w` norms) and Qwen3 (per-head q/k
/// norms, a head wider than hidden / heads). Forward against transformers, then one SFT and
/// one GRPO run of two steps each.
#[test]
fn wgpu_runs_gemma2_and_qwen3() {
    let Some(gpu) = wgpu_or_skip() else {
        return;
    };
    for case in ["gemma2", "qwen3"] {
        let dir = fixture("families").join(case);
        let expected = json(&dir.join("expected.json"));
        let m = model::load(&dir, &gpu, Heads::Lm).unwrap();
        let ids = ids_2d(&expected["batch_a"]["input_ids"]);
        let t = ids[0].len();
        let got = full_logits(
            &m.model,
            &ids,
            &[(0..t as i64).collect()],
            &[vec![true; t]],
            &gpu,
        );
        let diff = max_abs_diff(&got, &floats(&expected["batch_a"]["logits"]));
        eprintln!("{case} on wgpu vs transformers: max |diff| = {diff:e}");
        assert!(diff <= 1e-4, "{case}: wgpu forward differs by {diff}");

        let tmp = tempfile::tempdir().unwrap();
        let (sft, grpo) = sft_and_grpo(&dir, tmp.path());
        let events = run_to_end(&sft, &tmp.path().join("sft"), DeviceChoice::Wgpu);
        assert!(
            finished(&events),
            "{case}: SFT on wgpu: {}",
            failure(&events)
        );
        let events = run_to_end(&grpo, &tmp.path().join("grpo"), DeviceChoice::Wgpu);
        assert!(
            finished(&events),
            "{case}: GRPO on wgpu: {}",
            failure(&events)
        );
    }
}

/// On wgpu: LoRA gradients computed layer by layer equal one backward pass (and the CPU's),
/// and frozen weights stored in f16 give the f32 logits within rounding. (bf16 is storage
/// only on Vulkan; f16 is what GPUs compute in.)
#[test]
fn wgpu_layerwise_lora_gradients_and_f16_storage() {
    use rlft::engine::model::WeightDtype;
    let Some(gpu) = wgpu_or_skip() else {
        return;
    };
    let dir = fixture("families/qwen2");
    let lora_cfg = model::lora::LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..Default::default()
    };
    let grads = |device: &Device, storage: WeightDtype, recompute: Option<usize>| -> Vec<f32> {
        let device = device.clone().autodiff();
        let m = model::load_for_run(&dir, None, Some(&lora_cfg), &device, Heads::Lm, 3, storage)
            .unwrap()
            .model;
        lora_b_grads(&m, &device, recompute)
    };
    let rel = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-9);
        max_abs_diff(a, b) / scale
    };
    let all = Some(usize::MAX);
    let cpu_whole = grads(&Device::flex(), WeightDtype::F32, None);
    let gpu_whole = grads(&gpu, WeightDtype::F32, None);
    let gpu_layers = grads(&gpu, WeightDtype::F32, all);
    let gpu_f16 = grads(&gpu, WeightDtype::F16, all);
    let (a, b, c) = (
        rel(&gpu_whole, &cpu_whole),
        rel(&gpu_layers, &gpu_whole),
        rel(&gpu_f16, &gpu_whole),
    );
    eprintln!("wgpu LoRA grads: vs cpu {a:.1e}, layer by layer {b:.1e}, f16 base {c:.1e}");
    assert!(a < 1e-3 && b < 1e-3 && c < 2e-2, "{a} {b} {c}");
}

/// Reports say which shader compiler ran: WGSL in the default build; with the `vulkan`
/// feature, SPIR-V on a Vulkan driver that has what cubecl's SPIR-V compiler needs.
#[test]
fn wgpu_reports_its_shader_compiler_and_adapter() {
    let Some(gpu) = wgpu_or_skip() else {
        return;
    };
    let name = rlft::engine::device::runtime_name(&gpu);
    if cfg!(feature = "vulkan") {
        assert!(name == "wgpu<spirv>" || name == "wgpu<wgsl>", "{name}");
    } else {
        assert_eq!(name, "wgpu<wgsl>");
    }
    let described = DeviceChoice::Wgpu.describe(&gpu);
    assert!(described.starts_with(&format!("{name} on ")), "{described}");
    assert_eq!(DeviceChoice::Cpu.describe(&Device::flex()), "cpu (flex)");
}

/// Logits of a small grouped-query model with a soft-cap, a sliding window and a left-padded
/// row, from `cfg` (random weights), on `device`.
fn gqa_logits(model_type: &str, device: &Device) -> Vec<f32> {
    use rlft::engine::model::{CausalLm, ModelConfig, WeightReader, decoder};
    let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
        "model_type": model_type, "vocab_size": 40, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
        "sliding_window": 3, "attn_logit_softcapping": 0.5
    }))
    .unwrap();
    let mut r = WeightReader::new(decoder::init_weights(&cfg, 9), device);
    let m = CausalLm::from_weights(&cfg, &mut r, true, false).unwrap();
    let ids: Vec<i64> = (0..14).map(|i| (i * 5 + 1) % 40).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 7]), device);
    let pos: Vec<i64> = (0..7).chain([0, 0, 0, 1, 2, 3, 4]).collect();
    let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [2, 7]), device);
    let valid: Vec<bool> = std::iter::repeat_n(true, 7)
        .chain([false, false])
        .chain(std::iter::repeat_n(true, 5))
        .collect();
    let valid = Tensor::<2, Bool>::from_data(TensorData::new(valid, [2, 7]), device);
    model::host_f32(m.logits(m.hidden(ids, pos, valid, None)))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// wgpu's fused attention kernel (no-grad passes) gives the decomposed form's logits (the
/// same model on the autodiff device), with grouped-query heads, a soft-cap, a sliding
/// window and a left-padded row; and f16 products (mixed precision) stay close to f32.
#[test]
fn wgpu_fused_attention_and_f16_products_match_f32() {
    use rlft::engine::model::blocks::fused_attention_applies;
    use rlft::engine::model::precision::{self, Precision};
    let Some(gpu) = wgpu_or_skip() else {
        return;
    };
    assert!(fused_attention_applies(&gpu) && !fused_attention_applies(&gpu.clone().autodiff()));
    for model_type in ["qwen2", "gemma2"] {
        let fused = gqa_logits(model_type, &gpu);
        let decomposed = gqa_logits(model_type, &gpu.clone().autodiff());
        let d = max_diff(&fused, &decomposed);
        assert!(d < 1e-4, "{model_type}: fused vs decomposed max |diff| {d}");
        if gpu.supports_dtype(burn::tensor::FloatDType::F16) {
            let _mixed = precision::enter(Precision::F16, &gpu).unwrap();
            assert!(precision::products().is_some());
            let half = gqa_logits(model_type, &gpu);
            let half_grad = gqa_logits(model_type, &gpu.clone().autodiff());
            drop(_mixed);
            let scale = fused.iter().map(|v| v.abs()).fold(0f32, f32::max);
            for (what, out) in [("fused", &half), ("decomposed", &half_grad)] {
                let d = max_diff(out, &fused);
                assert!(
                    d < 2e-2 * scale.max(1.0),
                    "{model_type} f16 {what}: {d} (scale {scale})"
                );
                assert!(
                    d > 0.0,
                    "{model_type} f16 {what}: products did not run in f16"
                );
            }
        } else {
            eprintln!("this wgpu adapter has no f16: mixed precision not checked");
        }
    }
}

/// The values of `name` per step, from a run's events.
fn metric(events: &[rlft::engine::events::Event], name: &str) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| match e {
            rlft::engine::events::Event::Metrics { values, .. } => values.get(name).copied(),
            _ => None,
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// `steps` of SFT and of GRPO on the tiny model in f32 and in mixed f16 on wgpu: f16 tracks
/// f32 (SFT's final loss within 2%; GRPO's losses finite, its reward within noise) and
/// reports its loss scale and skipped steps. CI runs a few steps on lavapipe;
/// `RLFT_PRECISION_STEPS=200` is the full check (on a GPU).
#[test]
fn wgpu_f16_training_tracks_f32() {
    let Some(gpu) = wgpu_or_skip() else {
        return;
    };
    if !gpu.supports_dtype(burn::tensor::FloatDType::F16) {
        eprintln!("this wgpu adapter has no f16: mixed precision not checked");
        return;
    }
    let steps: usize = std::env::var("RLFT_PRECISION_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let (sft, grpo) = sft_and_grpo(&model, tmp.path());
    let with = |toml: &str, precision: &str, steps: usize| {
        toml.replace("max_steps = 2", &format!("max_steps = {steps}"))
            .replace("eval_steps = 2", &format!("eval_steps = {steps}"))
            .replace(
                "[train]\n",
                &format!("[train]\nprecision = \"{precision}\"\n"),
            )
    };
    let run = |toml: String| {
        let events = run_to_end(&toml, tmp.path(), DeviceChoice::Wgpu);
        assert!(
            events.iter().any(|e| matches!(
                e,
                rlft::engine::events::Event::Finished {
                    status: rlft::engine::events::RunStatus::Finished,
                    ..
                }
            )),
            "{}",
            failure(&events)
        );
        events
    };

    let sft32 = run(with(&sft, "f32", steps));
    let sft16 = run(with(&sft, "f16", steps));
    assert!(metric(&sft32, "loss_scale").is_empty());
    assert_eq!(metric(&sft16, "loss_scale").len(), steps);
    let skipped = *metric(&sft16, "skipped_steps").last().unwrap();
    let (l32, l16) = (
        *metric(&sft32, "loss").last().unwrap(),
        *metric(&sft16, "loss").last().unwrap(),
    );
    let drift = metric(&sft32, "loss")
        .iter()
        .zip(metric(&sft16, "loss"))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "SFT {steps} steps: final loss f32 {l32:.5}, f16 {l16:.5}; largest step difference \
         {drift:.2e}; {skipped} skipped"
    );
    assert!(
        drift > 0.0,
        "the f16 run computed exactly what the f32 run did"
    );
    assert!(
        metric(&sft32, "loss")[0] - l32 > 0.1,
        "SFT learned nothing in {steps} steps"
    );
    assert!(((l16 - l32) / l32).abs() < 0.02, "f16 {l16} vs f32 {l32}");
    let (e32, e16) = (
        *metric(&sft32, "eval_loss").last().unwrap(),
        *metric(&sft16, "eval_loss").last().unwrap(),
    );
    assert!(
        ((e16 - e32) / e32).abs() < 0.02,
        "eval f16 {e16} vs f32 {e32}"
    );

    let grpo_steps = (steps / 5).max(4);
    let g32 = run(with(&grpo, "f32", grpo_steps));
    let g16 = run(with(&grpo, "f16", grpo_steps));
    let losses = metric(&g16, "loss");
    assert_eq!(losses.len(), grpo_steps);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let (r32, r16) = (mean(&metric(&g32, "reward")), mean(&metric(&g16, "reward")));
    eprintln!("GRPO {grpo_steps} steps: mean reward f32 {r32:.3}, f16 {r16:.3}");
    assert!((r32 - r16).abs() <= 0.25, "reward f16 {r16} vs f32 {r32}");
}
