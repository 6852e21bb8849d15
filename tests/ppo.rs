//! PPO end to end on a tiny model made here (TRL metric names, run folder, adaptive KL), and
//! the `reward_model` reward source on a tiny Bradley-Terry model trained here.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rlft::engine::algo::losses;
use rlft::engine::algo::pretrain::{CHATML_TEMPLATE, SPECIAL_TOKENS, arithmetic_lines};
use rlft::engine::algo::sequences::{SeqBatch, last_token_scores};
use rlft::engine::config::RunConfig;
use rlft::engine::events::{Event, RunStatus};
use rlft::engine::model::tokenizer::Tokenizer;
use rlft::engine::model::{CausalLm, Heads, ModelConfig, WeightReader, decoder, hf};
use rlft::engine::optim::{OptimConfig, Optimizer};
use rlft::engine::reward::model::{encode_for_scoring, load_path};
use rlft::engine::run::{MetricsRow, read_metrics};
use rlft::engine::session::{self, LaunchOptions};

/// A tiny Llama with its own BPE tokenizer, saved as a Hugging Face folder; with a `score`
/// head when `score` is set.
fn tiny_model(dir: &Path, name: &str, score: bool) -> PathBuf {
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
    if score {
        r.init_if_missing("score.weight", vec![1, 32], 0.02, 7);
    }
    let model = CausalLm::from_weights(&cfg, &mut r, true, score).unwrap();
    let out = dir.join(name);
    hf::save_dir(&out, &cfg, &model, Some(&tok), None).unwrap();
    out
}

fn write_prompts(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (a, b) = (i % 10, (i * 7) % 10);
            serde_json::json!({"prompt": format!("{a}+{b}="), "answer": format!("{}", a + b)})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn ppo_config(
    model: &Path,
    train: &Path,
    steps: usize,
    extra_ppo: &str,
    rewards: &str,
) -> RunConfig {
    RunConfig::from_toml(&format!(
        r#"method = "ppo"
name = "t"
[model]
path = "{}"
[data]
train = "{}"
[train]
max_steps = {steps}
per_device_train_batch_size = 4
[optim]
learning_rate = 1e-2
lr_scheduler_type = "constant"
[ppo]
response_length = 4
temperature = 1.0
num_ppo_epochs = 2
num_mini_batches = 2
kl_estimator = "k3"
missing_eos_penalty = 0.5
{extra_ppo}
{rewards}
"#,
        model.display(),
        train.display(),
    ))
    .unwrap()
}

const EXACT_MATCH: &str = "[[rewards]]\ntype = \"exact_match\"\n";

fn run_to_end(cfg: RunConfig, root: &Path) -> (Vec<Event>, PathBuf) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        runs_root: root.to_path_buf(),
        ..Default::default()
    };
    let handle = session::launch(cfg, &opts, tx).unwrap();
    let dir = handle.dir.clone();
    handle.thread.join().unwrap();
    (rx.try_iter().collect(), dir)
}

fn assert_finished(events: &[Event], steps: usize) {
    let failed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Finished { status: RunStatus::Finished, step, .. } if *step == steps
    )));
}

fn kl_coefs(rows: &[MetricsRow]) -> Vec<f64> {
    rows.iter().map(|r| r.values["objective/kl_coef"]).collect()
}

#[test]
fn ppo_steps_log_trl_metrics_and_fill_the_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "tiny", false);
    let train = tmp.path().join("prompts.jsonl");
    write_prompts(&train, 32);
    let cfg = ppo_config(&model, &train, 3, "", EXACT_MATCH);
    let (events, dir) = run_to_end(cfg, &tmp.path().join("runs"));
    assert_finished(&events, 3);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Started { method, .. } if method == "ppo"
    )));
    let samples = events
        .iter()
        .find_map(|e| match e {
            Event::Samples { samples, .. } => Some(samples.clone()),
            _ => None,
        })
        .expect("samples are sent");
    assert!(!samples.is_empty() && samples[0].rewards.contains_key("exact_match"));
    for f in [
        "config.toml",
        "metrics.jsonl",
        "samples.jsonl",
        "checkpoints/final/config.json",
        "checkpoints/final/model.safetensors",
        "checkpoints/final/tokenizer.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    // The saved config parses back as a PPO run.
    let saved = RunConfig::from_file(&dir.join("config.toml")).unwrap();
    assert_eq!(saved.ppo.as_ref().map(|p| p.response_length), Some(4));
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 3);
    for key in [
        "objective/kl",
        "objective/entropy",
        "objective/rlhf_reward",
        "objective/scores",
        "objective/non_score_reward",
        "objective/kl_coef",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio",
        "policy/entropy_avg",
        "learning_rate",
        "num_tokens",
        "step_time",
        "rewards/exact_match/mean",
    ] {
        for r in &rows {
            let v = r.values.get(key).unwrap_or_else(|| panic!("{key} missing"));
            assert!(v.is_finite(), "{key} = {v}");
        }
    }
    // The first rollout's policy is the reference: no KL yet.
    assert!(rows[0].values["objective/kl"].abs() < 1e-6);
    // 8 completions per step (4 prompts per mini-batch x 2 mini-batches); those that hit the
    // length limit without EOS carry the -0.5 penalty in `objective/scores`.
    for r in &rows {
        let no_eos = (8.0 - r.values["val/num_eos_tokens"]) / 8.0;
        let expect = r.values["rewards/exact_match/mean"] - 0.5 * no_eos;
        assert!(
            (r.values["objective/scores"] - expect).abs() < 1e-6,
            "{r:?}"
        );
    }
    let rlhf = rows[1].values["objective/non_score_reward"] + rows[1].values["objective/scores"];
    assert!((rows[1].values["objective/rlhf_reward"] - rlhf).abs() < 1e-9);
    rlft::engine::model::load(&dir.join("checkpoints/final"), &Device::flex(), Heads::Lm).unwrap();
}

#[test]
fn adaptive_kl_coefficient_follows_the_kl_against_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "tiny", false);
    let train = tmp.path().join("prompts.jsonl");
    write_prompts(&train, 32);
    let root = tmp.path().join("runs");

    // Target far below any KL the policy reaches: after the first step (policy = reference,
    // KL 0) the coefficient grows.
    let above = ppo_config(
        &model,
        &train,
        4,
        "kl_coef = 0.1\nadaptive_kl = { target = 1e-9, horizon = 10 }",
        EXACT_MATCH,
    );
    let (events, dir) = run_to_end(above, &root);
    assert_finished(&events, 4);
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let c = kl_coefs(&rows);
    assert!(rows[1].values["objective/kl"] > 1e-9, "{rows:?}");
    // Step 1 saw KL 0 < target: -20% x 8/10. Later steps see KL > target: +16% each.
    assert!(
        (c[1] - 0.1 * (1.0 - 0.2 * 8.0 / 10.0)).abs() < 1e-9,
        "{c:?}"
    );
    assert!(c[2] > c[1] && c[3] > c[2], "{c:?}");

    // Target far above: the coefficient shrinks every step.
    let below = ppo_config(
        &model,
        &train,
        3,
        "kl_coef = 0.1\nadaptive_kl = { target = 1e6, horizon = 10 }",
        EXACT_MATCH,
    );
    let (events, dir) = run_to_end(below, &root);
    assert_finished(&events, 3);
    let c = kl_coefs(&read_metrics(&dir.join("metrics.jsonl")).unwrap());
    assert!(c[0] == 0.1 && c[1] < c[0] && c[2] < c[1], "{c:?}");
}

/// A few Bradley-Terry steps: completions "77" preferred over "11".
fn train_tiny_rm(base: &Path, out: &Path) {
    let device = Device::flex().autodiff();
    let loaded = rlft::engine::model::load(base, &device, Heads::Score).unwrap();
    let tok = loaded.tokenizer.clone().unwrap();
    let mut model = loaded.model;
    let prompts = ["1+2=", "3+4=", "5+6=", "10+20="];
    let enc = |c: &str| -> Vec<Vec<u32>> {
        prompts
            .iter()
            .map(|p| encode_for_scoring(&tok, p, c).unwrap())
            .collect()
    };
    let (chosen, rejected) = (enc("77"), enc("11"));
    let rows: Vec<&[u32]> = chosen.iter().chain(&rejected).map(Vec::as_slice).collect();
    let empty: Vec<&[u32]> = vec![&[]; rows.len()];
    let mut optim = Optimizer::new(OptimConfig {
        learning_rate: 1e-2,
        ..Default::default()
    });
    for _ in 0..15 {
        let batch = SeqBatch::new(&rows, &empty, 0, &device);
        let s = last_token_scores(&model, &batch);
        let n = prompts.len();
        let loss = losses::bt_loss(s.clone().narrow(0, 0, n), s.narrow(0, n, n), None, None);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads).0;
    }
    hf::save_dir(out, &loaded.config, &model.valid(), Some(&tok), None).unwrap();
}

#[test]
fn reward_model_source_prefers_what_it_was_trained_to_prefer_and_drives_ppo() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path(), "tiny", false);
    let rm_dir = tmp.path().join("rm");
    train_tiny_rm(&base, &rm_dir);

    let rm = load_path(&rm_dir, &Device::flex()).unwrap();
    let pairs = [
        ("2+2=", "77"),
        ("2+2=", "11"),
        ("7+1=", "77"),
        ("7+1=", "11"),
    ];
    let s = rm.score_texts(&pairs).unwrap();
    assert_eq!(s.len(), 4);
    assert!(s.iter().all(|x| x.is_finite()), "{s:?}");
    assert!(
        s[0] > s[1] && s[2] > s[3],
        "preferred text should score higher: {s:?}"
    );

    // A language model without a trained score head is refused.
    let err = load_path(&base, &Device::flex()).err().expect("not an RM");
    assert!(err.to_string().contains("score"), "{err}");

    // `type = "reward_model"` in a PPO config (value model started from the RM, as TRL does).
    let train = tmp.path().join("prompts.jsonl");
    write_prompts(&train, 16);
    let rewards = format!(
        "[[rewards]]\ntype = \"reward_model\"\npath = \"{}\"\nname = \"rm\"\n",
        rm_dir.display()
    );
    let extra = format!("value_model = \"{}\"", rm_dir.display());
    let cfg = ppo_config(&base, &train, 2, &extra, &rewards);
    let (events, dir) = run_to_end(cfg, &tmp.path().join("runs"));
    assert_finished(&events, 2);
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert!(rows[0].values["rewards/rm/mean"].is_finite());

    // And in GRPO, through the same loader.
    let grpo = RunConfig::from_toml(&format!(
        "method = \"grpo\"\n[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\n[train]\n\
         max_steps = 1\nper_device_train_batch_size = 4\n[grpo]\nnum_generations = 2\n\
         max_completion_length = 3\n{rewards}",
        base.display(),
        train.display()
    ))
    .unwrap();
    let (events, _) = run_to_end(grpo, &tmp.path().join("runs"));
    assert_finished(&events, 1);
}

#[test]
fn ppo_config_needs_a_reward_source() {
    let err = RunConfig::from_toml(
        "method = \"ppo\"\n[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n",
    )
    .unwrap_err();
    assert!(err.contains("[[rewards]]"), "{err}");
}

/// Metrics by step without wall-clock values (the only ones that legitimately differ).
fn comparable(rows: &[MetricsRow]) -> Vec<(usize, Vec<(String, f64)>)> {
    rows.iter()
        .map(|r| {
            let v = r
                .values
                .iter()
                .filter(|(k, _)| !k.contains("time") && !k.starts_with("timing"))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            (r.step, v)
        })
        .collect()
}

#[test]
fn ppo_resumed_after_a_crash_continues_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "tiny", false);
    let train = tmp.path().join("prompts.jsonl");
    write_prompts(&train, 32);
    let mut cfg = ppo_config(
        &model,
        &train,
        6,
        "adaptive_kl = { target = 1e-3, horizon = 10 }",
        EXACT_MATCH,
    );
    cfg.train.save_steps = 3;
    let dir = tmp.path().join("run");
    let run = |resume: bool| {
        let (tx, rx) = crossbeam_channel::unbounded();
        let opts = LaunchOptions {
            run_dir: Some(dir.clone()),
            resume,
            ..Default::default()
        };
        session::launch(cfg.clone(), &opts, tx)
            .unwrap()
            .thread
            .join()
            .unwrap();
        assert_finished(&rx.try_iter().collect::<Vec<_>>(), 6);
    };
    run(false);
    let expected = comparable(&read_metrics(&dir.join("metrics.jsonl")).unwrap());
    assert!(
        dir.join("checkpoints/step-000003/value/model.safetensors")
            .exists()
    );
    // A crash after the last step but before the final save: resuming redoes steps 4-6 from
    // the step-3 checkpoint (policy, value model, optimizers, data position, KL coefficient).
    std::fs::remove_dir_all(dir.join("checkpoints/final")).unwrap();
    run(true);
    let resumed = comparable(&read_metrics(&dir.join("metrics.jsonl")).unwrap());
    assert_eq!(resumed, expected);
}

/// A NaN loss (here from a value model with a poisoned head) ends the run with an error naming
/// the step, and no checkpoint is written.
#[test]
fn a_nan_loss_fails_ppo_naming_the_step_and_saves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tiny_model(tmp.path(), "policy", false);
    let value = tiny_model(tmp.path(), "value", true);
    let mut tensors = rlft::engine::model::weights::NamedTensors::new();
    let file = value.join("model.safetensors");
    rlft::engine::model::hf::read_safetensors(&file, &mut tensors).unwrap();
    tensors.get_mut("score.weight").unwrap().data[0] = f32::NAN;
    rlft::engine::model::hf::write_safetensors(&file, &tensors).unwrap();
    let train = tmp.path().join("p.jsonl");
    write_prompts(&train, 16);
    let extra = format!("value_model = \"{}\"", value.display());
    let cfg = ppo_config(&policy, &train, 3, &extra, EXACT_MATCH);
    let (events, dir) = run_to_end(cfg, &tmp.path().join("runs"));
    let (step, error) = events
        .iter()
        .find_map(|e| match e {
            Event::Failed { step, error, .. } => Some((*step, error.clone())),
            _ => None,
        })
        .expect("the run fails");
    assert_eq!(step, Some(1), "{error}");
    assert!(
        error.contains("step 1") && error.to_lowercase().contains("nan"),
        "{error}"
    );
    assert!(!dir.join("checkpoints/final").exists());
}

/// RLHF from live labels: people's labels (here written to the preference file directly, as
/// the Pairs pane does) retrain the reward model every `retrain_every` labels, and the PPO run
/// scores with the new version. The labels say the opposite of what the starting reward model
/// learned, so the new version must rank the other way.
#[test]
fn rlhf_retrains_the_reward_model_from_labels_and_ppo_picks_it_up() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path(), "tiny", false);
    let rm_dir = tmp.path().join("rm");
    train_tiny_rm(&base, &rm_dir); // prefers "77" over "11"
    let labels = tmp.path().join("preferences.jsonl");
    let write_labels = |n: usize| {
        let rows: Vec<String> = (0..n)
            .map(|i| {
                serde_json::json!({"prompt": format!("{}+{}=", i % 9, i % 7), "chosen": "11", "rejected": "77"})
                    .to_string()
            })
            .collect();
        std::fs::write(&labels, rows.join("\n") + "\n").unwrap();
    };
    write_labels(8);

    // The refresher on its own: a version per `retrain_every` new labels.
    let slot_rm = load_path(&rm_dir, &Device::flex()).unwrap();
    let section = rlft::engine::algo::rlhf::RlhfSection {
        labels: Some(labels.clone()),
        retrain_every: 4,
        rm_steps: 30,
        rm_learning_rate: 1e-2,
        rm_batch_size: 8,
        rm_max_length: 32,
    };
    let run_dir = tmp.path().join("runs/manual");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut refresher = rlft::engine::algo::rlhf::Refresher::new(
        section.clone(),
        &run_dir,
        rm_dir.clone(),
        slot_rm.handle(),
        0,
    )
    .unwrap();
    let m = refresher
        .maybe_refresh(&Device::flex())
        .unwrap()
        .expect("due");
    assert_eq!(m["reward_model/version"], 1.0);
    assert_eq!(m["reward_model/labels"], 8.0);
    assert!(m["reward_model/train_accuracy"] > 0.9, "{m:?}");
    let s = slot_rm
        .score_texts(&[("2+2=", "11"), ("2+2=", "77")])
        .unwrap();
    assert!(
        s[0] > s[1],
        "the swapped-in model follows the labels: {s:?}"
    );
    assert!(run_dir.join("reward_model/v1/model.safetensors").exists());
    assert!(refresher.maybe_refresh(&Device::flex()).unwrap().is_none());
    write_labels(12);
    let m = refresher
        .maybe_refresh(&Device::flex())
        .unwrap()
        .expect("due again");
    assert_eq!(m["reward_model/version"], 2.0);

    // In a PPO run: the first step refreshes, and every step reports the version in use.
    let train = tmp.path().join("prompts.jsonl");
    write_prompts(&train, 16);
    let rewards = format!(
        "[[rewards]]\ntype = \"reward_model\"\npath = \"{}\"\nname = \"rm\"\n[rlhf]\nlabels = \"{}\"\n\
         retrain_every = 4\nrm_steps = 10\nrm_learning_rate = 1e-2\nrm_batch_size = 8\n",
        rm_dir.display(),
        labels.display()
    );
    let cfg = ppo_config(&base, &train, 2, "", &rewards);
    let (events, dir) = run_to_end(cfg, &tmp.path().join("runs"));
    assert_finished(&events, 2);
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows[0].values["reward_model/version"], 1.0);
    assert_eq!(rows[0].values["reward_model/labels"], 12.0);
    assert_eq!(rows[1].values["reward_model/version"], 1.0);
    assert!(dir.join("reward_model/v1/config.json").exists());
}
