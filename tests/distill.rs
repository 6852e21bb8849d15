//! On-policy distillation: the student samples, a teacher scores every token, and the loss is
//! the per-token reverse KL. The teacher here is the tiny test model after a short SFT on sums,
//! so the student has something to learn from.

mod common;

use std::path::{Path, PathBuf};

use common::{run_to_end, tiny_model, write_arith, write_prompts};
use rlft::engine::config::RunConfig;
use rlft::engine::device::DeviceChoice;
use rlft::engine::events::Event;
use rlft::engine::run::read_metrics;

/// A teacher: the tiny model after 40 SFT steps on sums.
fn teacher(tmp: &Path, model: &Path) -> PathBuf {
    let data = tmp.join("sft.jsonl");
    write_arith(&data, 256, 7);
    let toml = format!(
        "method = \"sft\"\nname = \"teacher\"\nseed = 1\n[model]\npath = \"{}\"\n[data]\n\
         train = \"{}\"\n[train]\nmax_steps = 40\nper_device_train_batch_size = 16\n\
         max_length = 16\n[optim]\nlearning_rate = 1e-2\n",
        model.display(),
        data.display()
    );
    let events = run_to_end(&toml, &tmp.join("teacher-runs"), DeviceChoice::Cpu);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Failed { .. })),
        "{events:?}"
    );
    tmp.join("teacher-runs/teacher/checkpoints/final")
}

fn distill_toml(model: &Path, teacher: &Path, data: &Path) -> String {
    format!(
        "method = \"distill\"\nname = \"d\"\nseed = 2\n[model]\npath = \"{0}\"\n[data]\n\
         train = \"{1}\"\neval = \"{1}\"\n[train]\nmax_steps = 16\nper_device_train_batch_size = 8\n\
         eval_steps = 8\nsave_steps = 8\n[optim]\nlearning_rate = 1e-2\n[distill]\n\
         teacher = \"{2}\"\nnum_generations = 2\nmax_completion_length = 4\nstop = [\"\\n\"]\n\
         [[rewards]]\ntype = \"exact_match\"\n",
        model.display(),
        data.display(),
        teacher.display()
    )
}

#[test]
fn distillation_pulls_the_student_towards_the_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let teacher = teacher(tmp.path(), &model);
    let data = tmp.path().join("p.jsonl");
    write_prompts(&data);
    let events = run_to_end(
        &distill_toml(&model, &teacher, &data),
        &tmp.path().join("runs"),
        DeviceChoice::Cpu,
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Failed { .. })),
        "{events:?}"
    );
    let dir = tmp.path().join("runs/d");
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let loss: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.values.get("loss").copied())
        .collect();
    assert_eq!(loss.len(), 16);
    let first = loss[..4].iter().sum::<f64>() / 4.0;
    let last = loss[12..].iter().sum::<f64>() / 4.0;
    eprintln!("reverse KL: {loss:?}");
    assert!(
        loss.iter().all(|l| l.is_finite() && *l >= 0.0),
        "a KL is finite and non-negative: {loss:?}"
    );
    assert!(
        last < first * 0.8,
        "the reverse KL to the teacher should fall: first steps {first:.4}, last {last:.4}"
    );
    // The rewards are measured on the rollout and on held-out prompts, never trained on.
    assert!(
        rows.iter()
            .any(|r| r.values.contains_key("rewards/exact_match/mean"))
    );
    assert!(
        rows.iter()
            .any(|r| r.values.contains_key("eval/rewards/exact_match/mean"))
    );
    assert!(dir.join("checkpoints/final/trainer_state.json").exists());
    assert!(
        std::fs::read_to_string(dir.join("samples.jsonl"))
            .unwrap()
            .lines()
            .count()
            > 0
    );
}

/// A teacher that does not read the student's tokens is refused before training, naming the
/// setting.
#[test]
fn a_teacher_with_another_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("p.jsonl");
    write_prompts(&data);
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/base");
    let events = run_to_end(
        &distill_toml(&model, &other, &data),
        &tmp.path().join("runs"),
        DeviceChoice::Cpu,
    );
    let error = events
        .iter()
        .find_map(|e| match e {
            Event::Failed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .expect("the run fails");
    assert!(
        error.contains("[distill] teacher") && error.contains("tokenizer"),
        "{error}"
    );
    // A missing teacher is caught with the other paths, before a run folder exists.
    let cfg = RunConfig::from_toml(&distill_toml(&model, &tmp.path().join("nope"), &data)).unwrap();
    let err = cfg.check_files().unwrap_err();
    assert!(err.contains("[distill] teacher"), "{err}");
}
