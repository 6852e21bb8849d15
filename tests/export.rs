//! `rlft export CONFIG --engine trl OUT/`: the shipped GRPO configs become TRL scripts with
//! TRL's names, the data copied, the checkers as Python, LoRA as PEFT, and what has no TRL
//! equivalent listed. The ignored test runs the script with real TRL (`RLFT_PYTHON`).

use std::path::Path;

use rlft::engine::config::RunConfig;
use rlft::engine::export::to_trl;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_lora_grpo_config_exports_with_trl_names() {
    let cfg = RunConfig::from_file(&root().join("configs/grpo_lora.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let report = to_trl(&cfg, root(), tmp.path()).unwrap();
    let script = std::fs::read_to_string(tmp.path().join("train.py")).unwrap();
    for want in [
        "from trl import GRPOConfig, GRPOTrainer",
        "num_generations=8",
        "max_completion_length=6",
        "per_device_train_batch_size=64",
        "loss_type=\"dapo\"",
        "scale_rewards=\"group\"",
        "beta=0.0",
        "reward_weights=[1.0, 0.1]",
        "reward_funcs=[exact_match, format]",
        "LoraConfig(r=16, lora_alpha=32.0",
        "target_modules=\"all-linear\"",
        "RlftCallback(OUT",
    ] {
        assert!(script.contains(want), "{want} missing from:\n{script}");
    }
    assert!(script.contains(&root().join("assets/base").display().to_string()));
    assert_eq!(
        std::fs::read(tmp.path().join("data/train.jsonl")).unwrap(),
        std::fs::read(root().join("assets/tasks/arithmetic_train.jsonl")).unwrap()
    );
    assert!(tmp.path().join("rlft_callback.py").is_file());
    assert!(report.not_carried.iter().any(|n| n.contains("[grpo] stop")));
}

#[test]
fn what_does_not_carry_over_is_listed_and_other_methods_are_refused() {
    let cfg = RunConfig::from_file(&root().join("configs/grpo_gsm_smollm2.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let report = to_trl(&cfg, root(), tmp.path()).unwrap();
    let text = std::fs::read_to_string(tmp.path().join("NOT_CARRIED.md")).unwrap();
    for want in ["rlft convert", "dynamic_sampling", "chat", "[[rewards]]"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert_eq!(
        report.not_carried.len(),
        text.lines().filter(|l| l.starts_with("- ")).count()
    );
    let ppo = RunConfig::from_file(&root().join("configs/ppo.toml")).unwrap();
    let err = to_trl(&ppo, root(), tmp.path()).unwrap_err();
    assert!(err.contains("not supported yet"), "{err}");
}

/// SFT, reward model, DPO and KTO configs export with their TRL config class and names.
#[test]
fn offline_methods_export_with_their_trl_trainers() {
    for (config, wants) in [
        (
            "configs/sft.toml",
            &[
                "from trl import SFTConfig, SFTTrainer",
                "max_length=32",
                "completion_only_loss=True",
                "eval_steps=20",
                "method=\"sft\"",
            ][..],
        ),
        (
            "configs/rm.toml",
            &[
                "from trl import RewardConfig, RewardTrainer",
                "method=\"rm\"",
            ][..],
        ),
        (
            "configs/dpo.toml",
            &[
                "from trl import DPOConfig, DPOTrainer",
                "beta=0.5",
                "loss_type=\"sigmoid\"",
                "max_length=96",
                "lr_scheduler_type=\"cosine\"",
            ][..],
        ),
        (
            "configs/kto_arith.toml",
            &[
                "from trl import KTOConfig, KTOTrainer",
                "beta=0.25",
                "desirable_weight=",
            ][..],
        ),
        (
            "configs/dpo_arith_lora.toml",
            &["LoraConfig(r=", "task_type=\"CAUSAL_LM\""][..],
        ),
    ] {
        let cfg = RunConfig::from_file(&root().join(config)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        to_trl(&cfg, root(), tmp.path()).unwrap();
        let script = std::fs::read_to_string(tmp.path().join("train.py")).unwrap();
        for want in wants {
            assert!(
                script.contains(want),
                "{config}: {want} missing from:\n{script}"
            );
        }
        assert!(
            !script.contains("trainer=trainer, "),
            "{config}: only GRPO passes the trainer"
        );
    }
}

/// The exported scripts run with real TRL (2 steps each of GRPO with LoRA, SFT, reward
/// model, DPO with LoRA, KTO) and report through rlft's callback.
/// `RLFT_PYTHON=/path/to/python` with torch, trl, peft, datasets.
#[test]
#[ignore = "needs RLFT_PYTHON with torch, trl, peft and datasets"]
fn the_exported_scripts_train_with_trl() {
    for config in [
        "configs/grpo_lora.toml",
        "configs/sft.toml",
        "configs/rm.toml",
        "configs/dpo_arith_lora.toml",
        "configs/kto_arith.toml",
    ] {
        trains_with_trl(config);
    }
}

fn trains_with_trl(config: &str) {
    let python = std::env::var("RLFT_PYTHON").expect("RLFT_PYTHON");
    let cfg = RunConfig::from_file(&root().join(config)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    to_trl(&cfg, root(), tmp.path()).unwrap();
    let script = tmp.path().join("train.py");
    let text = std::fs::read_to_string(&script).unwrap();
    let text = text.replace(&format!("max_steps={}", cfg.train.max_steps), "max_steps=2");
    std::fs::write(&script, text).unwrap();
    let run = tmp.path().join("run");
    let status = std::process::Command::new(python)
        .arg(&script)
        .arg("--out")
        .arg(&run)
        .status()
        .unwrap();
    assert!(status.success(), "{config}");
    let rows = rlft::engine::run::read_metrics(&run.join("metrics.jsonl")).unwrap();
    let want = match cfg.method {
        rlft::engine::config::Method::Grpo => "reward",
        rlft::engine::config::Method::Sft => "mean_token_accuracy",
        rlft::engine::config::Method::Kto => "rewards/chosen",
        _ => "loss",
    };
    assert!(
        rows.iter()
            .any(|r| r.values.keys().any(|k| k.ends_with(want))),
        "{config}: no {want} in {rows:?}"
    );
    assert!(run.join("checkpoint-2").is_dir(), "{config}");
    eprintln!(
        "{config}: {} metrics rows, checkpoint-2 written",
        rows.len()
    );
}
