//! SFT end to end on a tiny model made here: events, run folder, falling loss, errors that
//! name the bad file and line.

mod common;

use common::tiny_model;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use rlft::engine::config::RunConfig;
use rlft::engine::events::{Event, RunStatus};
use rlft::engine::run::read_metrics;
use rlft::engine::session::{self, LaunchOptions};

fn write_data(path: &Path, n: usize, seed: u64) {
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

fn config(model: &Path, train: &Path, eval: &Path, steps: usize) -> RunConfig {
    RunConfig::from_toml(&format!(
        r#"method = "sft"
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
[optim]
learning_rate = 3e-3
lr_scheduler_type = "constant"
[samples]
every = {steps}
prompts = ["1+2="]
max_new_tokens = 3
temperature = 0.0
"#,
        model.display(),
        train.display(),
        eval.display()
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

#[test]
fn sft_loss_falls_and_the_run_folder_has_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let (train, eval) = (
        tmp.path().join("train.jsonl"),
        tmp.path().join("eval.jsonl"),
    );
    write_data(&train, 256, 1);
    write_data(&eval, 32, 2);
    let (events, dir) = run_to_end(config(&model, &train, &eval, 40), &tmp.path().join("runs"));

    let failed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Finished {
            status: RunStatus::Finished,
            step: 40,
            ..
        }
    )));
    assert!(events.iter().any(|e| matches!(e, Event::Samples { .. })));
    for f in [
        "config.toml",
        "metrics.jsonl",
        "samples.jsonl",
        "checkpoints/final/model.safetensors",
        "checkpoints/final/tokenizer.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 40);
    for key in [
        "loss",
        "mean_token_accuracy",
        "learning_rate",
        "grad_norm",
        "num_tokens",
        "eval_loss",
    ] {
        assert!(
            rows.iter().any(|r| r.values.contains_key(key)),
            "metric {key} missing"
        );
    }
    let first: f64 = rows[..5].iter().map(|r| r.values["loss"]).sum::<f64>() / 5.0;
    let last: f64 = rows[35..].iter().map(|r| r.values["loss"]).sum::<f64>() / 5.0;
    assert!(
        last < first * 0.8,
        "loss should fall: first {first:.3}, last {last:.3}"
    );
    // The saved checkpoint loads back.
    rlft::engine::model::load(
        &dir.join("checkpoints/final"),
        &Device::flex(),
        rlft::engine::model::Heads::Lm,
    )
    .unwrap();
}

#[test]
fn a_malformed_jsonl_line_fails_the_run_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let train = tmp.path().join("bad.jsonl");
    std::fs::write(
        &train,
        "{\"prompt\": \"1+1=\", \"completion\": \"2\"}\n{\"prompt\": oops}\n",
    )
    .unwrap();
    let (events, _) = run_to_end(config(&model, &train, &train, 3), &tmp.path().join("runs"));
    let error = events
        .iter()
        .find_map(|e| match e {
            Event::Failed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .expect("the run fails");
    assert!(
        error.contains("bad.jsonl") && error.contains(":2"),
        "{error}"
    );
}

/// A data path that does not exist fails before any run folder is made, naming the setting;
/// a failure while reading the data is at no step (not "step 1").
#[test]
fn a_missing_data_file_fails_before_a_run_folder_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let missing = tmp.path().join("trian.jsonl");
    let runs = tmp.path().join("runs");
    let opts = LaunchOptions {
        runs_root: runs.clone(),
        ..Default::default()
    };
    let (tx, _rx) = crossbeam_channel::unbounded();
    let err = session::launch(config(&model, &missing, &missing, 3), &opts, tx)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("[data] train") && err.contains("trian.jsonl"),
        "{err}"
    );
    let made: Vec<_> = std::fs::read_dir(&runs)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(made.is_empty(), "{made:?}");

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": oops}\n").unwrap();
    let (events, _) = run_to_end(config(&model, &bad, &bad, 3), &runs);
    let step = events.iter().find_map(|e| match e {
        Event::Failed { step, .. } => Some(*step),
        _ => None,
    });
    assert_eq!(step, Some(None), "a data error is at no step");
}

#[test]
fn a_broken_config_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.toml");
    std::fs::write(&path, "method = \"sft\"\n[train\nmax_steps = 3\n").unwrap();
    let err = RunConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("broken.toml"), "{err}");
    std::fs::write(&path, "method = \"sfx\"\n").unwrap();
    let err = RunConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("sfx"), "{err}");
}

/// A NaN loss ends the run with an error naming the step, and writes no checkpoint (a good
/// one from earlier would stay untouched).
#[test]
fn a_nan_loss_fails_naming_the_step_and_saves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    // Poison one weight.
    let mut tensors = rlft::engine::model::weights::NamedTensors::new();
    rlft::engine::model::hf::read_safetensors(&model.join("model.safetensors"), &mut tensors)
        .unwrap();
    tensors.get_mut("model.norm.weight").unwrap().data[0] = f32::NAN;
    rlft::engine::model::hf::write_safetensors(&model.join("model.safetensors"), &tensors).unwrap();
    let (train, eval) = (
        tmp.path().join("train.jsonl"),
        tmp.path().join("eval.jsonl"),
    );
    write_data(&train, 32, 1);
    write_data(&eval, 8, 2);
    let (events, dir) = run_to_end(config(&model, &train, &eval, 5), &tmp.path().join("runs"));
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

/// `keep_best = "eval_loss"` with `greater_is_better = false` keeps the model with the lowest
/// held-out loss in `checkpoints/best`, and `best.json` says which value at which step.
#[test]
fn sft_keeps_the_checkpoint_with_the_lowest_eval_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let train = tmp.path().join("train.jsonl");
    let eval = tmp.path().join("eval.jsonl");
    write_data(&train, 64, 1);
    write_data(&eval, 16, 2);
    let mut cfg = config(&model, &train, &eval, 6);
    cfg.train.eval_steps = 2;
    cfg.train.keep_best = Some("eval_loss".into());
    cfg.train.greater_is_better = false;
    let (_, dir) = run_to_end(cfg, &tmp.path().join("runs"));
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let (best_step, best) = rows
        .iter()
        .filter(|r| r.step > 0)
        .filter_map(|r| Some((r.step, *r.values.get("eval_loss")?)))
        .fold((0, f64::MAX), |a, b| if b.1 < a.1 { b } else { a });
    let note: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("checkpoints/best/best.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(note["value"].as_f64().unwrap(), best);
    assert_eq!(note["step"].as_u64().unwrap() as usize, best_step);
    assert!(dir.join("checkpoints/best/model.safetensors").exists());
}
