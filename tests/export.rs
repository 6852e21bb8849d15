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
    for want in ["rlft convert", "dynamic_sampling", "chat"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // The numeric checkers carry over as Python.
    let script = std::fs::read_to_string(tmp.path().join("train.py")).unwrap();
    assert!(script.contains("def final_answer(completion):"));
    assert!(script.contains("reward_funcs=[exact_match, format]"));
    // A reward rlft cannot write in Python (here the sentiment scorer) is listed, and an
    // engine that needs one refuses the config.
    let sentiment_toml = std::fs::read_to_string(root().join("configs/grpo.toml"))
        .unwrap()
        .replace(
            "type = \"exact_match\"\n\n[[rewards]]\ntype = \"format\"\nweight = 0.1",
            "type = \"sentiment\"",
        );
    let sentiment: RunConfig = toml::from_str(&sentiment_toml).unwrap();
    let r = to_trl(&sentiment, root(), &tmp.path().join("s")).unwrap();
    assert!(
        r.not_carried
            .iter()
            .any(|n| n.contains("[[rewards]]") && n.contains("sentiment")),
        "{:?}",
        r.not_carried
    );
    let e = rlft::engine::export::export(
        rlft::engine::export::Engine::Verl,
        &sentiment,
        root(),
        &tmp.path().join("v"),
    )
    .unwrap_err();
    assert!(e.contains("verl needs a reward function"), "{e}");
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

/// `rlft export --engine verl`: verl's dataset rows, its Hydra names, the checkers as
/// `compute_score`; methods verl does not train are refused.
#[test]
fn grpo_exports_to_verl_with_its_names_and_rows() {
    use rlft::engine::export::{Engine, export};
    let cfg = RunConfig::from_file(&root().join("configs/grpo_lora.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let report = export(Engine::Verl, &cfg, root(), tmp.path()).unwrap();
    let run = std::fs::read_to_string(tmp.path().join("run.sh")).unwrap();
    for want in [
        "-m verl.trainer.main_ppo",
        "algorithm.adv_estimator=grpo",
        "data.train_batch_size=8",
        "actor_rollout_ref.rollout.n=8",
        "data.max_response_length=6",
        "actor_rollout_ref.model.lora_rank=16",
        "actor_rollout_ref.model.target_modules=all-linear",
        "actor_rollout_ref.actor.optim.lr=0.0002",
        "\"reward.custom_reward_function.path=$HERE/reward.py\"",
        "trainer.logger=[console,file,tensorboard]",
        "export VERL_FILE_LOGGER_PATH=\"$OUT/verl.jsonl\"",
        "\"trainer.rollout_data_dir=$OUT/rollouts\"",
        "trainer.total_training_steps=600",
        "'actor_rollout_ref.model.custom_chat_template=\"{% for m in messages %}{{ m.content }}{% endfor %}\"'",
    ] {
        assert!(run.contains(want), "{want} missing from:\n{run}");
    }
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(tmp.path().join("data/train.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["prompt"][0]["role"], "user");
    assert_eq!(first["prompt"][0]["content"], "82+97=");
    assert_eq!(first["reward_model"]["ground_truth"], "179");
    assert_eq!(first["data_source"], "rlft/grpo-arith-lora");
    let reward = std::fs::read_to_string(tmp.path().join("reward.py")).unwrap();
    assert!(reward.contains("def compute_score(data_source, solution_str, ground_truth"));
    assert!(
        reward.contains("total += 0.1 * scores[\"format\"]"),
        "{reward}"
    );
    assert!(
        report
            .not_carried
            .iter()
            .any(|n| n.contains("warmup_steps"))
    );
    let dpo = RunConfig::from_file(&root().join("configs/dpo.toml")).unwrap();
    let e = export(Engine::Verl, &dpo, root(), tmp.path()).unwrap_err();
    assert!(e.contains("\"dpo\" to verl is not supported"), "{e}");
}

/// `rlft export --engine openrlhf`: OpenRLHF 0.11's dotted flags for GRPO, PPO with a reward
/// model, DPO and SFT.
#[test]
fn methods_export_to_openrlhf_with_its_flags() {
    use rlft::engine::export::{Engine, export};
    for (config, wants) in [
        (
            "configs/grpo_lora.toml",
            &[
                "-m openrlhf.cli.train_ppo_ray",
                "--algo.advantage.estimator group_norm",
                "--rollout.n_samples_per_prompt 8",
                "--rollout.batch_size 8",
                "--train.batch_size 64",
                "--reward.remote_url \"$HERE/reward.py\"",
                "--data.label_key answer",
                "--data.input_template '{}'",
                "--ds.lora.rank 16",
                "--logger.tensorboard_dir \"$OUT/tensorboard\"",
            ][..],
        ),
        (
            "configs/ppo.toml",
            &[
                "--algo.advantage.estimator gae",
                "--algo.kl.target 3.0",
                "--rollout.batch_size 32",
                "--train.batch_size 16",
                "--critic.model_name_or_path",
                "runs/rm/checkpoints/final\"",
                "--reward.model_name_or_path",
            ][..],
        ),
        (
            "configs/dpo.toml",
            &[
                "deepspeed --num_gpus \"$NGPUS\" --module openrlhf.cli.train_dpo",
                "--model.beta 0.5",
                "--data.chosen_key chosen",
                "--lr_scheduler cosine",
            ][..],
        ),
        (
            "configs/sft.toml",
            &[
                "--module openrlhf.cli.train_sft",
                "--data.output_key completion",
                "--data.max_len 32",
            ][..],
        ),
    ] {
        let cfg = RunConfig::from_file(&root().join(config)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        export(Engine::OpenRlhf, &cfg, root(), tmp.path()).unwrap();
        let run = std::fs::read_to_string(tmp.path().join("run.sh")).unwrap();
        for want in wants {
            assert!(run.contains(want), "{config}: {want} missing from:\n{run}");
        }
    }
}

/// Writes `dir/dump`: a stand-in for `python3` and `deepspeed` that writes the arguments after
/// `-m`/`--module MODULE` one per line to `dir/args` and the module to `dir/module`.
fn argument_dumper(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dump = dir.join("dump");
    std::fs::write(
        &dump,
        format!(
            "#!/bin/sh\nwhile [ \"$#\" -gt 0 ]; do case \"$1\" in -m|--module) echo \"$2\" > {d}/module; shift 2; break;; *) shift;; esac; done\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {d}/args\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(&dump, dir.join("deepspeed")).unwrap();
    dump
}

/// The exported verl and OpenRLHF scripts pass the engines' own checks: verl composes its
/// config from the overrides and runs `validate_config`; OpenRLHF's CLIs parse the flags and
/// run their asserts. Neither trains (both need GPUs). `RLFT_PYTHON` with verl 0.9.1 and
/// openrlhf 0.11.2 installed (`pip install --no-deps verl==0.9.1 openrlhf==0.11.2` plus
/// hydra-core, omegaconf, tensordict, torchdata, codetiming, pylatexenc, orjson).
#[test]
#[ignore = "needs RLFT_PYTHON with verl 0.9.1 and openrlhf 0.11.2"]
fn exported_verl_and_openrlhf_scripts_pass_the_engines_checks() {
    use rlft::engine::export::{Engine, export};
    let python = std::env::var("RLFT_PYTHON").expect("RLFT_PYTHON");
    let fixtures = root().join("tests/fixtures/export");
    // PPO on the arithmetic task with an exact-match reward (verl writes Python rewards only).
    let work = tempfile::tempdir().unwrap();
    let ppo = std::fs::read_to_string(root().join("configs/ppo.toml"))
        .unwrap()
        .replace("review_prompts", "REVIEW")
        .replace(
            "assets/data/REVIEW.jsonl",
            &root()
                .join("assets/tasks/arithmetic_train.jsonl")
                .display()
                .to_string(),
        )
        .replace(
            "assets/data/REVIEW_eval.jsonl",
            &root()
                .join("assets/tasks/arithmetic_eval.jsonl")
                .display()
                .to_string(),
        )
        .replace("value_model = \"runs/rm/checkpoints/final\"\n", "")
        .replace(
            "type = \"reward_model\"\npath = \"runs/rm/checkpoints/final\"\nname = \"sentiment\"",
            "type = \"exact_match\"",
        );
    let ppo_path = work.path().join("ppo_arith.toml");
    std::fs::write(&ppo_path, ppo).unwrap();
    let cases: [(Engine, &Path); 7] = [
        (Engine::Verl, &root().join("configs/grpo_lora.toml")),
        (Engine::Verl, &ppo_path),
        (Engine::OpenRlhf, &root().join("configs/grpo_lora.toml")),
        (Engine::OpenRlhf, &ppo_path),
        (Engine::OpenRlhf, &root().join("configs/ppo.toml")),
        (Engine::OpenRlhf, &root().join("configs/dpo.toml")),
        (Engine::OpenRlhf, &root().join("configs/sft.toml")),
    ];
    for (engine, config) in cases {
        let cfg = RunConfig::from_file(config).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("export");
        export(engine, &cfg, root(), &out).unwrap();
        let dump = argument_dumper(tmp.path());
        let path = format!(
            "{}:{}",
            tmp.path().display(),
            std::env::var("PATH").unwrap()
        );
        let status = std::process::Command::new("bash")
            .arg(out.join("run.sh"))
            .args(["--out", &tmp.path().join("run").display().to_string()])
            .env("PYTHON", &dump)
            .env("PATH", path)
            .env("NGPUS", "2")
            .status()
            .unwrap();
        assert!(status.success());
        let args = tmp.path().join("args");
        let module = std::fs::read_to_string(tmp.path().join("module")).unwrap();
        let checked = match engine {
            // SGLang: verl's vLLM check of the LoRA rank imports vLLM, which needs a GPU build.
            Engine::Verl => std::process::Command::new(&python)
                .arg(fixtures.join("check_verl.py"))
                .arg(&args)
                .env("ROLLOUT", "sglang")
                .env("MICRO_BATCH", "4")
                .output()
                .unwrap(),
            _ => std::process::Command::new(&python)
                .arg(fixtures.join("check_openrlhf.py"))
                .arg(module.trim())
                .arg(&args)
                .output()
                .unwrap(),
        };
        let said = String::from_utf8_lossy(&checked.stdout);
        assert!(
            checked.status.success() && (said.contains("VALIDATED") || said.contains("PARSED_OK")),
            "{engine:?} {}: {said}\n{}",
            config.display(),
            String::from_utf8_lossy(&checked.stderr)
        );
        eprintln!("{engine:?} {}: {}", config.display(), said.trim());
    }
}

/// The reward functions written for verl and OpenRLHF score as rlft's checkers do: 1 for the
/// right first line, 0.1 more for a short integer, nothing for words; OpenRLHF's query is
/// cut after its prompt and its special tokens dropped. `RLFT_PYTHON` with torch.
#[test]
#[ignore = "needs RLFT_PYTHON with torch"]
fn exported_reward_functions_score_as_rlft_does() {
    use rlft::engine::export::{Engine, export};
    let python = std::env::var("RLFT_PYTHON").expect("RLFT_PYTHON");
    let cfg = RunConfig::from_file(&root().join("configs/grpo_lora.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    export(Engine::Verl, &cfg, root(), &tmp.path().join("verl")).unwrap();
    export(Engine::OpenRlhf, &cfg, root(), &tmp.path().join("orl")).unwrap();
    let check = format!(
        r#"
import importlib.util, math
def load(path):
    spec = importlib.util.spec_from_file_location("reward", path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
verl = load("{v}")
for text, want in [("179\n45", 1.1), (" 179", 1.1), ("17", 0.1), ("abc", 0.0)]:
    got = verl.compute_score("rlft/x", text, "179")["score"]
    assert math.isclose(got, want), (text, got)
orl = load("{o}")
out = orl.reward_func(["<|im_start|>82+97=179<|endoftext|>", "82+97=1790000000\n"], ["82+97=", "82+97="], ["179", "179"])
assert [round(float(x), 4) for x in out["rewards"]] == [1.1, 0.0], out
assert [float(x) for x in out["extra_logs"]["exact_match"]] == [1.0, 0.0]
print("REWARDS_OK")
"#,
        v = tmp.path().join("verl/reward.py").display(),
        o = tmp.path().join("orl/reward.py").display()
    );
    let out = std::process::Command::new(python)
        .args(["-c", &check])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("REWARDS_OK"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The numeric checkers written as Python (for the word-problems configs) read the same final
/// answers as rlft's: the same number from every completion below, the same format verdict,
/// the same exact-match score. `RLFT_PYTHON` (any Python 3).
#[test]
#[ignore = "needs RLFT_PYTHON"]
fn numeric_checkers_in_python_agree_with_rlft() {
    use rlft::engine::export::{Engine, export};
    use rlft::engine::tasks::{ends_with_final_answer, extract_final_answer, numbers_equal};
    let python = std::env::var("RLFT_PYTHON").expect("RLFT_PYTHON");
    let cases = [
        "She has 3 + 4 = 7 apples.\n#### 7",
        "#### 1,234",
        "#### 1,234,567.50",
        "#### $18.00.",
        "#### -3",
        "#### The answer is 42 apples",
        "####42",
        "##### 42",
        "so \\boxed{12} and then 13",
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{-\\dfrac{3}{4}}",
        "\\boxed{x = 5}",
        "\\boxed{\\frac{1}{0}} 9",
        "The answer is $18.00.",
        "10-4",
        "x -3",
        "(3)-2",
        "a-7",
        "-7",
        "1,2 apples",
        "1,2345",
        "12,345,678",
        "1234,567",
        "0.5",
        "1/3 of 9",
        "3.14.",
        "5.",
        "no numbers here",
        "",
        "1234567890123456789012345678901 then 4",
        "**Answer: 56**",
        "4 2",
        "She sold 48/2 = 24 clips.\n#### 72\n",
        "#### 7\n#### 8",
        "####\n\n 15 after a blank line",
        "\\boxed{1,000}",
        "worth \\$5",
        "٣ then 4",
        "then 3 \\boxed{4",
        "#### 12 is the answer.\nThen some text",
    ];
    let answers = [
        "7", "1234", "18", "-3", "42", "0.5", "4", "72", "1,000", "1/3",
    ];
    let cfg = RunConfig::from_file(&root().join("configs/grpo_gsm_smollm2.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    export(Engine::Verl, &cfg, root(), &tmp.path().join("verl")).unwrap();
    let mut rows = Vec::new();
    for c in cases {
        let answer = answers
            .iter()
            .find(|a| numbers_equal(a, &extract_final_answer(c).unwrap_or_default()))
            .copied()
            .unwrap_or("7");
        rows.push(serde_json::json!({
            "completion": c,
            "final": extract_final_answer(c),
            "format": ends_with_final_answer(c, Some(24)),
            "answer": answer,
            "exact": extract_final_answer(c).is_some_and(|f| numbers_equal(&f, answer)),
        }));
    }
    let cases_file = tmp.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(&rows).unwrap()).unwrap();
    let check = format!(
        r#"
import importlib.util, json
from fractions import Fraction
spec = importlib.util.spec_from_file_location("reward", "{r}")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
bad = []
for row in json.load(open("{c}")):
    got = m.final_answer(row["completion"])
    want = None if row["final"] is None else Fraction(row["final"])
    if got != want:
        bad.append(("final", row["completion"], str(got), row["final"]))
    if (m.format_one(row["completion"]) == 1.0) != row["format"]:
        bad.append(("format", row["completion"]))
    if (m.exact_match_one(row["completion"], row["answer"]) == 1.0) != row["exact"]:
        bad.append(("exact", row["completion"], row["answer"]))
print(json.dumps(bad))
"#,
        r = tmp.path().join("verl/reward.py").display(),
        c = cases_file.display()
    );
    let out = std::process::Command::new(python)
        .args(["-c", &check])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "[]",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
