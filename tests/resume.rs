//! Kill a run mid-way, resume it from its last checkpoint, and the metrics that follow equal
//! those of an uninterrupted run with the same seed (exactly: CPU training here is
//! deterministic, and the checkpoint restores weights, optimizer moments, data position and
//! step).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tiny_model, write_prompts};
use rlft::engine::config::RunConfig;
use rlft::engine::run::{MetricsRow, read_metrics};
use rlft::engine::session::{self, LaunchOptions};

fn write_sft(path: &Path) {
    let rows: Vec<String> = (0..64)
        .map(|i| {
            let (a, b) = (i % 9, (i * 5) % 7);
            serde_json::json!({"prompt": format!("{a}+{b}="), "completion": format!("{}", a + b)})
                .to_string()
        })
        .collect();
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
}

fn sft_config(model: &Path, data: &Path) -> String {
    format!(
        "method = \"sft\"\nname = \"r\"\nseed = 3\n[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\n\
         [train]\nmax_steps = 8\nper_device_train_batch_size = 8\nmax_length = 16\nsave_steps = 4\n\
         [optim]\nlearning_rate = 1e-3\nwarmup_steps = 2\nlr_scheduler_type = \"cosine\"\n",
        model.display(),
        data.display()
    )
}

fn grpo_config(model: &Path, data: &Path) -> String {
    format!(
        "method = \"grpo\"\nname = \"g\"\nseed = 5\n[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\n\
         [train]\nmax_steps = 6\nper_device_train_batch_size = 16\nsave_steps = 3\n\
         [optim]\nlearning_rate = 1e-3\n\
         [grpo]\nnum_generations = 4\nmax_completion_length = 4\nbeta = 0.05\nstop = [\"\\n\"]\n\
         [[rewards]]\ntype = \"format\"\n",
        model.display(),
        data.display()
    )
}

fn run(cfg_text: &str, dir: &Path, max_steps: Option<usize>, resume: bool) {
    let cfg = RunConfig::from_toml(cfg_text).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        run_dir: Some(dir.to_path_buf()),
        max_steps,
        resume,
        ..Default::default()
    };
    let handle = session::launch(cfg, &opts, tx).unwrap();
    handle.thread.join().unwrap();
    let failures: Vec<String> = rx
        .try_iter()
        .filter_map(|e| match e {
            rlft::engine::events::Event::Failed { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
}

/// Rows by step, without wall time (the only value that legitimately differs).
fn values(rows: &[MetricsRow]) -> Vec<(usize, Vec<(String, f64)>)> {
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

/// Runs to the end, then plays a crash that happened after the last step but before the final
/// save (the `final` checkpoint removed): resuming re-does every step after the newest
/// `step-N` checkpoint, and those rows must come out exactly as the first time.
fn check_resume_matches(cfg_text: &str, tmp: &Path) {
    let dir = tmp.join("run");
    run(cfg_text, &dir, None, false);
    let expected = values(&read_metrics(&dir.join("metrics.jsonl")).unwrap());
    std::fs::remove_dir_all(dir.join("checkpoints/final")).unwrap();
    run(cfg_text, &dir, None, true);
    let broken = dir;
    let resumed = values(&read_metrics(&broken.join("metrics.jsonl")).unwrap());
    assert_eq!(
        resumed.len(),
        expected.len(),
        "one row per step after resume"
    );
    assert_eq!(resumed, expected);
}

#[test]
fn sft_resumed_after_a_crash_continues_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("d.jsonl");
    write_sft(&data);
    check_resume_matches(&sft_config(&model, &data), tmp.path());
}

#[test]
fn grpo_resumed_after_a_crash_continues_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("p.jsonl");
    write_prompts(&data);
    check_resume_matches(&grpo_config(&model, &data), tmp.path());
}

/// The real thing: `kill -9` on the training process, then `--resume`.
#[test]
fn kill_9_then_resume_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("d.jsonl");
    write_sft(&data);
    let cfg_path = tmp.path().join("sft.toml");
    let text = sft_config(&model, &data).replace("max_steps = 8", "max_steps = 400");
    std::fs::write(&cfg_path, &text).unwrap();
    let dir = tmp.path().join("run");
    let bin = env!("CARGO_BIN_EXE_rlft");
    let mut child = Command::new(bin)
        .args([
            "train",
            cfg_path.to_str().unwrap(),
            "--headless",
            "--run-dir",
            dir.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rlft::engine::algo::state::latest_checkpoint(&dir).is_none() && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = read_metrics(&dir.join("metrics.jsonl")).unwrap().len();
    assert!(before >= 4, "killed after {before} steps");
    let status = Command::new(bin)
        .args([
            "train",
            cfg_path.to_str().unwrap(),
            "--headless",
            "--run-dir",
            dir.to_str().unwrap(),
            "--resume",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<usize> = rows.iter().map(|r| r.step).collect();
    assert_eq!(
        steps,
        (1..=400).collect::<Vec<_>>(),
        "one row per step, no gaps or repeats"
    );
}

const LORA: &str = "[lora]\nr = 4\nlora_alpha = 8\ntarget_modules = \"all-linear\"\n";

/// LoRA checkpoints are PEFT adapter folders naming their base: a resumed LoRA run restores
/// the adapters and their optimizer moments and continues the same metrics.
#[test]
fn lora_sft_and_grpo_resumed_continue_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("d.jsonl");
    write_sft(&data);
    let sft = tmp.path().join("sft");
    std::fs::create_dir_all(&sft).unwrap();
    check_resume_matches(&(sft_config(&model, &data) + LORA), &sft);
    assert!(
        sft.join("run/checkpoints/step-000004/adapter_model.safetensors")
            .exists(),
        "a LoRA checkpoint is an adapter folder"
    );
    let prompts = tmp.path().join("p.jsonl");
    write_prompts(&prompts);
    let grpo = tmp.path().join("grpo");
    std::fs::create_dir_all(&grpo).unwrap();
    check_resume_matches(&(grpo_config(&model, &prompts) + LORA), &grpo);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A run stopped from the workbench reopens as stopped (not finished), and `r` in the Runs
/// pane resumes it from its newest checkpoint to the same metrics as `--resume` gives.
#[test]
fn a_stopped_run_reopens_as_stopped_and_resumes_from_the_workbench_like_resume() {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use rlft::engine::device::DeviceChoice;
    use rlft::engine::events::{Command, Event, RunStatus};
    use rlft::tui::app::{App, AppConfig, PaneId};
    use rlft::tui::engine_link::SessionEngine;

    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("d.jsonl");
    write_sft(&data);
    let runs = tmp.path().join("runs");
    let stopped = runs.join("r");

    // Train, and stop the run part way (as `x` in the workbench does).
    let cfg = RunConfig::from_toml(&sft_config(&model, &data)).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        run_dir: Some(stopped.clone()),
        ..Default::default()
    };
    let handle = session::launch(cfg, &opts, tx).unwrap();
    for ev in rx.iter() {
        match ev {
            Event::Metrics { step: 3, .. } => handle.commands.send(Command::Stop).unwrap(),
            Event::Finished { status, .. } => {
                assert_eq!(status, RunStatus::Stopped);
                break;
            }
            Event::Failed { error, .. } => panic!("{error}"),
            _ => {}
        }
    }
    handle.thread.join().unwrap();
    let at_stop = read_metrics(&stopped.join("metrics.jsonl")).unwrap().len();
    assert!(at_stop < 8, "stopped at step {at_stop} of 8");
    let by_flag = runs.join("r-copy");
    copy_dir(&stopped, &by_flag);

    // `--resume` on one copy.
    run(&sft_config(&model, &data), &by_flag, None, true);
    let expected = values(&read_metrics(&by_flag.join("metrics.jsonl")).unwrap());
    assert_eq!(expected.len(), 8);

    // The workbench on the other: it reads back as stopped, and `r` resumes it.
    let (tx, rx) = crossbeam_channel::unbounded();
    let config = AppConfig::new(tmp.path().join("configs"), runs.clone(), DeviceChoice::Cpu);
    let engine = SessionEngine::new(tx, runs.clone(), DeviceChoice::Cpu);
    let mut app = App::new(config, Box::new(engine));
    let loaded = rlft::tui::store::load_run(&stopped).unwrap();
    assert_eq!(loaded.status, RunStatus::Stopped);
    app.on_loaded_run(loaded);
    app.open_on_saved_runs(1);
    assert_eq!(app.focus, PaneId::Runs);
    app.on_key(KeyEvent::new(KeyCode::Char('r'), KeyModifiers::NONE));
    assert!(app.focused().unwrap().is_live(), "{:?}", app.toast);
    let deadline = Instant::now() + Duration::from_secs(300);
    while app.focused().unwrap().is_live() && Instant::now() < deadline {
        if let Ok(ev) = rx.recv_timeout(Duration::from_millis(200)) {
            app.on_engine_event(ev);
        }
    }
    assert_eq!(app.focused().unwrap().status, RunStatus::Finished);
    assert_eq!(app.focused().unwrap().step, 8);
    assert_eq!(app.wait_for_engine(Duration::from_secs(30)), 0);
    let resumed = values(&read_metrics(&stopped.join("metrics.jsonl")).unwrap());
    assert_eq!(resumed, expected);
    // And on disk it now says finished.
    let state = rlft::engine::run::read_status(&stopped).unwrap();
    assert_eq!(state.status, RunStatus::Finished);
}

/// GRPO trains with each advantage estimator by name (RLOO, REINFORCE++ and its baseline
/// variant beside GRPO's own) and each surrogate (GSPO's sequence-level ratio, CISPO), and the
/// run's metrics stay finite.
#[test]
fn grpo_runs_with_each_advantage_estimator_and_policy_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("p.jsonl");
    write_prompts(&data);
    for (estimator, setting) in [
        ("rloo", "advantage_estimator = \"rloo\""),
        ("reinforce_pp", "advantage_estimator = \"reinforce_pp\""),
        (
            "reinforce_pp_baseline",
            "advantage_estimator = \"reinforce_pp_baseline\"",
        ),
        ("gspo", "importance_sampling_level = \"sequence\""),
        ("cispo", "policy_loss = \"cispo\""),
        (
            "dapo",
            "mask_truncated_completions = true\noverlong_buffer_len = 2",
        ),
        ("top_entropy", "top_entropy_quantile = 0.2"),
        ("entropy_bonus", "entropy_coef = 0.01"),
        (
            "dynamic",
            "dynamic_sampling = true\nmax_sampling_rounds = 2",
        ),
        ("eval", ""),
    ] {
        let mut cfg =
            grpo_config(&model, &data).replace("[grpo]\n", &format!("[grpo]\n{setting}\n"));
        if estimator == "eval" {
            // Held-out prompts, 2 sampled completions each, no evaluation before step 1.
            cfg = cfg
                .replace(
                    "[train]\n",
                    "[train]\neval_steps = 1\nnum_eval_generations = 2\neval_before_train = false\n\
                     keep_best = \"eval/reward\"\n",
                )
                .replace(
                    &format!("train = \"{}\"", data.display()),
                    &format!("train = \"{0}\"\neval = \"{0}\"", data.display()),
                );
        }
        let dir = tmp.path().join(estimator);
        run(&cfg, &dir, Some(2), false);
        let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
        assert_eq!(rows.len(), 2, "{estimator}");
        assert!(
            rows.iter()
                .all(|r| r.values.values().all(|v| v.is_finite())),
            "{estimator}: {rows:?}"
        );
        if estimator == "eval" {
            // The best checkpoint by eval/reward, with what made it best.
            let best = dir.join("checkpoints/best");
            assert!(best.join("model.safetensors").exists());
            let note: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(best.join("best.json")).unwrap())
                    .unwrap();
            assert_eq!(note["metric"], "eval/reward");
            let top = rows
                .iter()
                .map(|r| r.values["eval/reward"])
                .fold(f64::MIN, f64::max);
            assert_eq!(note["value"].as_f64().unwrap(), top);
            assert!(
                rows.iter().all(|r| r.step >= 1),
                "no step-0 evaluation: {rows:?}"
            );
            assert!(
                rows.iter()
                    .all(|r| r.values.contains_key("eval/rewards/format/pass@2")
                        && r.values.contains_key("eval/rewards/format/mean@2")),
                "{rows:?}"
            );
        }
        if estimator == "dynamic" {
            assert!(
                rows.iter()
                    .all(|r| r.values["sampling/prompts_drawn"] >= 4.0
                        && r.values["sampling/rounds"] <= 2.0),
                "{rows:?}"
            );
        }
        if estimator == "dapo" {
            // The overlong punishment is logged as a reward source, never above 0.
            assert!(
                rows.iter()
                    .all(|r| r.values["rewards/overlong/mean"] <= 0.0),
                "{rows:?}"
            );
        }
    }
}
