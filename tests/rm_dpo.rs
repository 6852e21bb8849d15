//! Reward model and DPO end to end on a tiny model made here and a trivially separable
//! preference set (chosen completions use the digits 1-3, rejected ones 7-9): metrics with
//! TRL's names, learning in a few steps, complete run folders, errors naming file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use rlft::engine::algo::pretrain::{CHATML_TEMPLATE, SPECIAL_TOKENS, arithmetic_lines};
use rlft::engine::config::RunConfig;
use rlft::engine::events::{Event, RunStatus};
use rlft::engine::label_store::LabelStore;
use rlft::engine::labels::LogEntry;
use rlft::engine::model::tokenizer::Tokenizer;
use rlft::engine::model::{CausalLm, Heads, ModelConfig, WeightReader, decoder, hf};
use rlft::engine::run::{MetricsRow, read_metrics};
use rlft::engine::session::{self, LaunchOptions};

/// A tiny Llama with its own BPE tokenizer, saved as a Hugging Face folder (as in sft.rs).
fn tiny_model(dir: &Path) -> PathBuf {
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

/// `n` pairs: an `a+b=` prompt, a chosen completion of digits `chosen..chosen+2` and a
/// rejected one of digits `rejected..rejected+2` (random lengths, so length says nothing).
fn write_pairs(path: &Path, n: usize, seed: u64, chosen: u8, rejected: u8) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut digits = |from: u8| -> String {
        let len = rng.random_range(1..=4);
        (0..len)
            .map(|_| (b'0' + from + rng.random_range(0..3)) as char)
            .collect()
    };
    let lines: Vec<String> = (0..n)
        .map(|_| {
            let (c, r) = (digits(chosen), digits(rejected));
            let prompt = format!("{}+{}=", c.len() * 7, r.len() * 3);
            serde_json::json!({"prompt": prompt, "chosen": c, "rejected": r}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn config(
    method: &str,
    model: &Path,
    train: &Path,
    eval: &Path,
    steps: usize,
    extra: &str,
) -> RunConfig {
    RunConfig::from_toml(&format!(
        r#"method = "{method}"
name = "t"
[model]
path = "{}"
[data]
train = "{}"
eval = "{}"
[train]
max_steps = {steps}
per_device_train_batch_size = 16
max_length = 16
eval_steps = {steps}
save_steps = {half}
[optim]
learning_rate = 3e-3
lr_scheduler_type = "constant"
{extra}
"#,
        model.display(),
        train.display(),
        eval.display(),
        half = steps / 2,
    ))
    .unwrap()
}

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

/// The run finished all its steps without a failure event.
fn assert_finished(events: &[Event], steps: usize) {
    let failed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Finished { status: RunStatus::Finished, step, .. } if *step == steps
        )),
        "no Finished event at step {steps}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Started { .. })));
}

fn assert_run_folder(dir: &Path, steps: usize) {
    for f in [
        "config.toml".to_string(),
        "metrics.jsonl".to_string(),
        "checkpoints/final/model.safetensors".to_string(),
        "checkpoints/final/config.json".to_string(),
        "checkpoints/final/tokenizer.json".to_string(),
        format!("checkpoints/step-{:06}/model.safetensors", steps / 2),
    ] {
        assert!(dir.join(&f).exists(), "{f} missing");
    }
}

fn assert_metrics(rows: &[MetricsRow], keys: &[&str]) {
    for key in keys {
        assert!(
            rows.iter().any(|r| r.values.contains_key(*key)),
            "metric {key} missing"
        );
    }
}

/// Mean of `key` over the rows that have it, first `n` and last `n`.
fn first_last(rows: &[MetricsRow], key: &str, n: usize) -> (f64, f64) {
    let v: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.values.get(key).copied())
        .collect();
    assert!(v.len() >= 2 * n, "{key}: only {} values", v.len());
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (mean(&v[..n]), mean(&v[v.len() - n..]))
}

fn last(rows: &[MetricsRow], key: &str) -> f64 {
    rows.iter()
        .rev()
        .find_map(|r| r.values.get(key).copied())
        .unwrap_or_else(|| panic!("{key} missing"))
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    train: PathBuf,
    eval: PathBuf,
}

fn setup(chosen: u8, rejected: u8) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let (train, eval) = (
        tmp.path().join("train.jsonl"),
        tmp.path().join("eval.jsonl"),
    );
    write_pairs(&train, 256, 1, chosen, rejected);
    write_pairs(&eval, 48, 2, chosen, rejected);
    Setup {
        root: tmp.path().join("runs"),
        _tmp: tmp,
        model,
        train,
        eval,
    }
}

#[test]
fn reward_model_learns_a_separable_set_and_saves_its_head() {
    // High digits preferred: the fresh random head happens to score low digits higher, so
    // accuracy has to be learned, not found.
    let s = setup(7, 1);
    let steps = 30;
    let cfg = config("rm", &s.model, &s.train, &s.eval, steps, "");
    let (events, dir) = run_to_end(cfg, &s.root);
    assert_finished(&events, steps);
    assert_run_folder(&dir, steps);
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_metrics(
        &rows,
        &[
            "loss",
            "accuracy",
            "margin",
            "min_reward",
            "mean_reward",
            "max_reward",
            "num_tokens",
            "learning_rate",
            "grad_norm",
            "eval_loss",
            "eval_accuracy",
            "eval_margin",
        ],
    );
    // An eval before training gives the baseline.
    assert_eq!(rows[0].step, 0);
    let (loss0, loss1) = first_last(&rows, "loss", 5);
    assert!(
        loss1 < loss0 * 0.7,
        "loss should fall: {loss0:.3} -> {loss1:.3}"
    );
    let (acc0, acc1) = first_last(&rows, "accuracy", 5);
    assert!(
        acc1 > acc0 && acc1 >= 0.9,
        "accuracy {acc0:.2} -> {acc1:.2}"
    );
    let eval_acc = last(&rows, "eval_accuracy");
    assert!(eval_acc >= 0.9, "held-out accuracy {eval_acc:.2}");
    assert!(last(&rows, "eval_loss") < rows[0].values["eval_loss"]);
    assert!(events.iter().any(|e| matches!(e, Event::Samples { .. })));

    // The head is saved and read back as the score head.
    let mut tensors = BTreeMap::new();
    hf::read_safetensors(
        &dir.join("checkpoints/final/model.safetensors"),
        &mut tensors,
    )
    .unwrap();
    assert_eq!(tensors["score.weight"].shape, vec![1, 32]);
    let loaded = rlft::engine::model::load(
        &dir.join("checkpoints/final"),
        &Device::flex(),
        Heads::Score,
    )
    .unwrap();
    assert!(loaded.model.score.is_some());
}

#[test]
fn dpo_raises_margins_and_accuracies() {
    let s = setup(1, 7);
    let steps = 30;
    let cfg = config(
        "dpo",
        &s.model,
        &s.train,
        &s.eval,
        steps,
        "[dpo]\nbeta = 0.1\n[samples]\nevery = 15\nprompts = [\"1+2=\"]\nmax_new_tokens = 3\n",
    );
    let (events, dir) = run_to_end(cfg, &s.root);
    assert_finished(&events, steps);
    assert_run_folder(&dir, steps);
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), steps);
    assert_metrics(
        &rows,
        &[
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
            "learning_rate",
            "grad_norm",
            "num_tokens",
            "eval_loss",
            "eval_rewards/accuracies",
            "eval_rewards/margins",
        ],
    );
    // Policy = reference at the first step: margins start at 0, loss at ln 2.
    assert!(rows[0].values["rewards/margins"].abs() < 1e-4);
    assert!((rows[0].values["loss"] - std::f64::consts::LN_2).abs() < 1e-4);
    let (m0, m1) = first_last(&rows, "rewards/margins", 5);
    assert!(m1 > m0 + 0.5, "margins {m0:.3} -> {m1:.3}");
    let (a0, a1) = first_last(&rows, "rewards/accuracies", 5);
    assert!(a1 > a0 && a1 >= 0.9, "accuracies {a0:.2} -> {a1:.2}");
    let eval_acc = last(&rows, "eval_rewards/accuracies");
    assert!(eval_acc >= 0.9, "held-out accuracy {eval_acc:.2}");
    assert!(last(&rows, "eval_rewards/margins") > 0.5);
    assert!(events.iter().any(|e| matches!(e, Event::Samples { .. })));
}

#[test]
fn dpo_variants_run_and_rpo_logs_its_nll() {
    let s = setup(1, 7);
    for (loss, extra) in [
        ("ipo", ""),
        ("hinge", ""),
        ("robust", "label_smoothing = 0.1\n"),
        ("sigmoid", "label_smoothing = 0.1\nrpo_alpha = 1.0\n"),
    ] {
        let cfg = config(
            "dpo",
            &s.model,
            &s.train,
            &s.eval,
            4,
            &format!("[dpo]\nloss_type = \"{loss}\"\n{extra}"),
        );
        let (events, dir) = run_to_end(cfg, &s.root);
        assert_finished(&events, 4);
        let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
        let margin = last(&rows, "rewards/margins");
        assert!(
            margin.is_finite() && margin > 0.0,
            "{loss}: margin {margin}"
        );
        assert_eq!(
            rows.iter().any(|r| r.values.contains_key("nll_loss")),
            extra.contains("rpo_alpha"),
            "{loss}"
        );
    }
}

#[test]
fn a_bad_preference_line_fails_the_run_naming_file_and_line() {
    let s = setup(1, 7);
    let bad = s.root.parent().unwrap().join("bad_prefs.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"1+1=\", \"chosen\": \"2\", \"rejected\": \"3\"}\n\
         {\"prompt\": \"1+2=\", \"chosen\": \"3\"}\n",
    )
    .unwrap();
    for method in ["rm", "dpo"] {
        let cfg = config(method, &s.model, &bad, &s.eval, 3, "");
        let (events, _) = run_to_end(cfg, &s.root);
        let error = events
            .iter()
            .find_map(|e| match e {
                Event::Failed { error, .. } => Some(error.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{method}: the run should fail"));
        assert!(
            error.contains("bad_prefs.jsonl:2") && error.contains("rejected"),
            "{method}: {error}"
        );
    }
    // Rows of another format are refused with what was expected.
    let sft = s.root.parent().unwrap().join("sft_rows.jsonl");
    std::fs::write(&sft, "{\"prompt\": \"1+1=\", \"completion\": \"2\"}\n").unwrap();
    let (events, _) = run_to_end(config("dpo", &s.model, &sft, &s.eval, 3, ""), &s.root);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Failed { error, .. } if error.contains("sft_rows.jsonl") && error.contains("chosen")
    )));
}

#[test]
fn preference_sections_parse_with_trl_defaults_and_reject_bad_values() {
    let base = "[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n";
    let cfg = RunConfig::from_toml(&format!("method = \"dpo\"\n{base}")).unwrap();
    assert!(cfg.dpo.is_none());
    let cfg = RunConfig::from_toml(&format!(
        "method = \"dpo\"\n{base}[dpo]\nloss_type = \"ipo\"\nrpo_alpha = 0.5\n"
    ))
    .unwrap();
    let d = cfg.dpo.clone().unwrap();
    assert_eq!(
        (d.beta, d.label_smoothing, d.rpo_alpha),
        (0.1, 0.0, Some(0.5))
    );
    // The resolved config written to the run folder reads back the same.
    assert_eq!(RunConfig::from_toml(&cfg.to_toml()).unwrap(), cfg);
    let cfg = RunConfig::from_toml(&format!(
        "method = \"rm\"\n{base}[rm]\ncenter_rewards_coefficient = 0.01\n"
    ))
    .unwrap();
    assert_eq!(cfg.rm.unwrap().center_rewards_coefficient, Some(0.01));
    for (text, needle) in [
        (format!("method = \"dpo\"\n{base}[dpo]\nbta = 0.1\n"), "bta"),
        (
            format!("method = \"dpo\"\n{base}[dpo]\nloss_type = \"kto\"\n"),
            "kto",
        ),
        (
            format!("method = \"dpo\"\n{base}[dpo]\nbeta = 0.0\n"),
            "beta",
        ),
        (
            format!(
                "method = \"dpo\"\n{base}[dpo]\nloss_type = \"robust\"\nlabel_smoothing = 0.5\n"
            ),
            "label_smoothing",
        ),
        (
            format!("method = \"rm\"\n{base}[rm]\ncenter_rewards_coefficient = -1.0\n"),
            "center",
        ),
        (
            "method = \"rm\"\n[model]\npath = \"m\"\n".to_string(),
            "[data] train",
        ),
        (
            "method = \"dpo\"\n[data]\ntrain = \"d.jsonl\"\n".to_string(),
            "[model] path",
        ),
    ] {
        let err = RunConfig::from_toml(&text).unwrap_err();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// Metric rows without the timings, which differ between runs.
fn comparable(rows: &[MetricsRow]) -> Vec<(usize, Vec<(String, f64)>)> {
    rows.iter()
        .map(|r| {
            let v = r
                .values
                .iter()
                .filter(|(k, _)| !k.contains("time"))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            (r.step, v)
        })
        .collect()
}

#[test]
fn rm_and_dpo_resumed_after_a_crash_continue_the_same_metrics() {
    let s = setup(1, 7);
    for method in ["rm", "dpo"] {
        // Checkpoints at steps 3 and 6 (final); eval at 6.
        let cfg = config(method, &s.model, &s.train, &s.eval, 6, "");
        let dir = s.root.join(format!("resume-{method}"));
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
            dir.join("checkpoints/step-000003/trainer_state.json")
                .exists()
        );
        // A crash before the final save: resuming redoes steps 4-6 from the step-3 checkpoint
        // (DPO against the original reference, not the checkpoint).
        std::fs::remove_dir_all(dir.join("checkpoints/final")).unwrap();
        run(true);
        let resumed = comparable(&read_metrics(&dir.join("metrics.jsonl")).unwrap());
        assert_eq!(resumed, expected, "{method}");
    }
}

/// Poisons one weight of a model folder so the first forward pass gives NaN.
fn poison(model: &Path) {
    let mut tensors = rlft::engine::model::weights::NamedTensors::new();
    let file = model.join("model.safetensors");
    rlft::engine::model::hf::read_safetensors(&file, &mut tensors).unwrap();
    tensors.get_mut("model.norm.weight").unwrap().data[0] = f32::NAN;
    rlft::engine::model::hf::write_safetensors(&file, &tensors).unwrap();
}

/// A NaN loss ends an RM or DPO run with an error naming the step, and writes no checkpoint.
#[test]
fn a_nan_loss_fails_rm_and_dpo_naming_the_step_and_saves_nothing() {
    let s = setup(1, 6);
    poison(&s.model);
    for method in ["rm", "dpo"] {
        let cfg = config(method, &s.model, &s.train, &s.eval, 4, "");
        let (events, dir) = run_to_end(cfg, &s.root);
        let (step, error) = events
            .iter()
            .find_map(|e| match e {
                Event::Failed { step, error, .. } => Some((*step, error.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{method}: the run should fail"));
        assert_eq!(step, Some(1), "{method}: {error}");
        assert!(
            error.contains("step 1") && error.to_lowercase().contains("nan"),
            "{method}: {error}"
        );
        assert!(!dir.join("checkpoints").read_dir().unwrap().any(|_| true));
    }
}

/// The preference pairs unpaired for KTO: each chosen completion a desirable row, each
/// rejected one an undesirable row (TRL's `unpair_preference_dataset`).
fn write_unpaired(pairs: &Path, out: &Path) {
    let mut rows = Vec::new();
    for line in std::fs::read_to_string(pairs).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (key, label) in [("chosen", true), ("rejected", false)] {
            rows.push(
                serde_json::json!({"prompt": v["prompt"], "completion": v[key], "label": label})
                    .to_string(),
            );
        }
    }
    std::fs::write(out, rows.join("\n") + "\n").unwrap();
}

/// KTO on the separable set, unpaired: the policy starts at the reference (rewards 0, loss
/// 1 − σ(0) = 0.5 at KL 0) and learns to favour desirable answers (margins rise).
#[test]
fn kto_learns_from_unpaired_labels() {
    let s = setup(1, 7);
    let unpaired = s.train.with_file_name("kto.jsonl");
    write_unpaired(&s.train, &unpaired);
    let steps = 30;
    let cfg = config(
        "kto",
        &s.model,
        &unpaired,
        &s.eval,
        steps,
        "[kto]\nbeta = 0.1\n",
    );
    let (events, dir) = run_to_end(cfg, &s.root);
    assert_finished(&events, steps);
    assert_run_folder(&dir, steps);
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), steps);
    assert_metrics(
        &rows,
        &[
            "loss",
            "kl",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
            "learning_rate",
            "grad_norm",
            "num_tokens",
        ],
    );
    // Held-out preference pairs ranked by KTO's implicit reward, as DPO reports them.
    let last = &rows.last().unwrap().values;
    for key in [
        "eval_rewards/accuracies",
        "eval_rewards/margins",
        "eval_rewards/chosen",
    ] {
        assert!(last.contains_key(key), "{key}: {last:?}");
    }
    assert!(last["eval_rewards/margins"] > 0.0, "{last:?}");
    assert!(rows[0].values["rewards/margins"].abs() < 1e-4);
    assert!((rows[0].values["loss"] - 0.5).abs() < 1e-4);
    let (m0, m1) = first_last(&rows, "rewards/margins", 5);
    assert!(m1 > m0 + 0.3, "margins {m0:.3} -> {m1:.3}");
    // Preference rows are read unpaired, as they are.
    let cfg = config("kto", &s.model, &s.train, &s.eval, 2, "");
    let (events, _) = run_to_end(cfg, &s.root);
    assert_finished(&events, 2);
    // A row without a label names its file and line.
    std::fs::write(&unpaired, "{\"prompt\": \"1+1=\", \"completion\": \"2\"}\n").unwrap();
    let cfg = config("kto", &s.model, &unpaired, &s.eval, 2, "");
    let (events, _) = run_to_end(cfg, &s.root);
    let error = events
        .iter()
        .find_map(|e| match e {
            Event::Failed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .expect("the run fails");
    assert!(
        error.contains("kto.jsonl:1") && error.contains("label"),
        "{error}"
    );
}

/// KTO from people: with `[kto] ratings = "run"` the run samples answers for the Samples pane,
/// and thumbs up / down on them (the label store, as the pane writes them) are trained on at
/// the next step, once each; the store notes which step used each rating.
#[test]
fn kto_trains_on_ratings_of_its_samples_while_it_runs() {
    let s = setup(1, 7);
    let unpaired = s.train.with_file_name("kto.jsonl");
    write_unpaired(&s.train, &unpaired);
    let steps = 40;
    let cfg = config(
        "kto",
        &s.model,
        &unpaired,
        &s.eval,
        steps,
        "[kto]
ratings = \"run\"
samples_per_step = 2
max_new_tokens = 4
",
    );
    // A rating of another run's sample is not this run's to train on.
    let labels = s.root.join("labels");
    let mut store = LabelStore::open(&labels, "ann").unwrap();
    store.rate("other", "1+1=", "2", "other@1#0", true).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        runs_root: s.root.clone(),
        ..Default::default()
    };
    let handle = session::launch(cfg, &opts, tx).unwrap();
    let run = handle.id.clone();
    let mut rated = Vec::new();
    // Rate the first two samples the run shows, as the Samples pane would.
    for event in rx.iter() {
        match event {
            Event::Samples { step, samples, .. } if rated.len() < 2 => {
                for (i, sample) in samples.iter().enumerate().take(2 - rated.len()) {
                    let origin = format!("{run}@{step}#{i}");
                    let good = rated.is_empty();
                    rated.push(
                        store
                            .rate(&run, &sample.prompt, &sample.completion, &origin, good)
                            .unwrap(),
                    );
                }
            }
            Event::Finished { .. } | Event::Failed { .. } => break,
            _ => {}
        }
    }
    handle.thread.join().unwrap();
    let rows = read_metrics(&handle.dir.join("metrics.jsonl")).unwrap();
    let trained = rows.last().unwrap().values["labels/ratings"];
    assert_eq!(trained, 2.0, "both ratings trained on, the other run's not");
    let batches: f64 = rows.iter().map(|r| r.values["labels/ratings_batch"]).sum();
    assert_eq!(batches, 2.0, "each rating trained on once");
    store.refresh().unwrap();
    let noted: Vec<u64> = store
        .entries()
        .iter()
        .filter_map(|e| match e {
            LogEntry::Trained {
                run: r, decision, ..
            } if *r == run => Some(*decision),
            _ => None,
        })
        .collect();
    assert_eq!(noted.len(), 2);
    assert!(
        rated.iter().all(|seq| noted.contains(seq)),
        "{rated:?} {noted:?}"
    );
}
