//! OpenRLHF (0.11, its dotted flags): GRPO and PPO as `openrlhf.cli.train_ppo_ray`, DPO as
//! `train_dpo`, SFT as `train_sft`, in a `run.sh`. rlft's JSONL is read as it is (the key
//! flags name its columns); the answer checkers become `reward.py`'s `reward_func`. OpenRLHF
//! logs to TensorBoard under the run folder, which `rlft watch` reads.
//!
//! Flags checked against OpenRLHF 0.11.2's argument parsers; OpenRLHF's RL needs GPUs with
//! vLLM and DeepSpeed.

use std::fmt::Write as _;
use std::path::Path;

use super::{Exported, checkers, model_path, not_carried_text, py_f, resolve, write};
use crate::engine::config::{Method, RunConfig, setting_name};
use crate::engine::reward::RewardConfig;

/// Writes `out/run.sh`, `out/data/`, `out/reward.py` (RL) and `out/NOT_CARRIED.md`.
pub fn to_openrlhf(cfg: &RunConfig, config_dir: &Path, out: &Path) -> Result<Exported, String> {
    let mut report = Exported::default();
    let model = model_path(cfg, config_dir, &mut report.not_carried);
    let rows = count_rows(&resolve(config_dir, &cfg.data.train))?;
    let (module, args) = match cfg.method {
        Method::Grpo | Method::Ppo => {
            let mut checks_said = Vec::new();
            let checks = checkers(cfg, &mut checks_said);
            // A reward model is carried (reward.model_name_or_path), the rest is said.
            report.not_carried.extend(
                checks_said
                    .into_iter()
                    .filter(|n| !n.contains("\"reward_model\"")),
            );
            let has_rm = cfg
                .rewards
                .iter()
                .any(|r| matches!(r, RewardConfig::RewardModel(_)));
            if checks.weights.is_empty() && !has_rm {
                return Err("no [[rewards]] rlft can write for OpenRLHF (exact_match, format or a reward_model)".into());
            }
            if !checks.weights.is_empty() {
                write(out, "reward.py", &reward_py(&checks), &mut report)?;
            }
            let args = rl_args(
                cfg,
                config_dir,
                &model,
                rows,
                !checks.weights.is_empty(),
                &mut report.not_carried,
            );
            ("openrlhf.cli.train_ppo_ray", args)
        }
        Method::Dpo => (
            "openrlhf.cli.train_dpo",
            dpo_args(cfg, &model, rows, &mut report.not_carried),
        ),
        Method::Sft => ("openrlhf.cli.train_sft", sft_args(cfg, &model, rows)),
        other => {
            return Err(format!(
                "exporting method \"{}\" to OpenRLHF is not supported (grpo, ppo, dpo and sft are)",
                other.name()
            ));
        }
    };
    let copy = |from: &Path, name: &str, report: &mut Exported| -> Result<(), String> {
        let to = out.join("data").join(name);
        std::fs::create_dir_all(out.join("data")).map_err(|e| format!("{}: {e}", out.display()))?;
        std::fs::copy(resolve(config_dir, from), &to)
            .map_err(|e| format!("copying {}: {e}", resolve(config_dir, from).display()))?;
        report.files.push(to);
        Ok(())
    };
    copy(&cfg.data.train, "train.jsonl", &mut report)?;
    if let Some(e) = &cfg.data.eval {
        copy(e, "eval.jsonl", &mut report)?;
    }
    write(out, "run.sh", &run_sh(cfg, module, &args), &mut report)?;
    let text = not_carried_text(&report.not_carried);
    write(out, "NOT_CARRIED.md", &text, &mut report)?;
    Ok(report)
}

fn count_rows(path: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

/// A flag and its values, one per line of `run.sh`.
fn flag(args: &mut Vec<String>, name: &str, value: impl Into<String>) {
    let value = value.into();
    if value.is_empty() {
        args.push(format!("--{name}"));
    } else {
        args.push(format!("--{name} {value}"));
    }
}

/// The shared tail: checkpoints, TensorBoard, LoRA, DeepSpeed.
fn common(cfg: &RunConfig, args: &mut Vec<String>) {
    let t = &cfg.train;
    flag(args, "ckpt.output_dir", "\"$OUT/final\"");
    flag(args, "ckpt.path", "\"$OUT/ckpt\"");
    flag(
        args,
        "ckpt.save_steps",
        if t.save_steps > 0 {
            t.save_steps.to_string()
        } else {
            "-1".into()
        },
    );
    flag(args, "ckpt.save_hf", "");
    flag(args, "logger.logging_steps", "1");
    flag(args, "logger.tensorboard_dir", "\"$OUT/tensorboard\"");
    flag(args, "logger.wandb.run_name", format!("{:?}", cfg.name()));
    if let Some(l) = &cfg.lora {
        flag(args, "ds.lora.rank", l.r.to_string());
        flag(args, "ds.lora.alpha", format!("{}", l.lora_alpha));
        flag(args, "ds.lora.dropout", py_f(l.lora_dropout));
        flag(
            args,
            "ds.lora.target_modules",
            match &l.target_modules {
                crate::engine::model::lora::TargetModules::Preset(p) => p.clone(),
                crate::engine::model::lora::TargetModules::Names(n) => n.join(" "),
            },
        );
    }
    flag(args, "ds.zero_stage", "2");
    flag(args, "ds.param_dtype", "bf16");
    if t.gradient_checkpointing {
        let name = if matches!(cfg.method, Method::Grpo | Method::Ppo) {
            "actor.gradient_checkpointing_enable"
        } else {
            "model.gradient_checkpointing_enable"
        };
        flag(args, name, "");
    }
    // HF scheduler names, as rlft's; warmup by ratio of the steps.
    let o = &cfg.optim;
    let prefix = if matches!(cfg.method, Method::Grpo | Method::Ppo) {
        "actor."
    } else {
        ""
    };
    let mut scheduler = setting_name(&o.lr_scheduler_type);
    if scheduler == "constant" && o.warmup_steps > 0 {
        scheduler = "constant_with_warmup".into();
    }
    flag(args, &format!("{prefix}lr_scheduler"), scheduler);
    flag(
        args,
        &format!("{prefix}lr_warmup_ratio"),
        format!("{}", o.warmup_steps as f64 / t.max_steps.max(1) as f64),
    );
}

fn rl_args(
    cfg: &RunConfig,
    config_dir: &Path,
    model: &Path,
    rows: usize,
    reward_file: bool,
    not_carried: &mut Vec<String>,
) -> Vec<String> {
    let t = &cfg.train;
    let mut a = Vec::new();
    let ppo = cfg.method == Method::Ppo;
    let super::Sampling {
        max_new_tokens: max_new,
        temperature,
        top_k,
        top_p,
        chat,
    } = super::sampling(cfg);
    // OpenRLHF counts prompts per rollout and samples per update.
    let (n, prompts, per_update) = super::rollout_shape(cfg);
    flag(
        &mut a,
        "actor.model_name_or_path",
        format!("{:?}", model.display().to_string()),
    );
    if reward_file {
        flag(&mut a, "reward.remote_url", "\"$HERE/reward.py\"");
    }
    for r in &cfg.rewards {
        if let RewardConfig::RewardModel(m) = r {
            flag(
                &mut a,
                "reward.model_name_or_path",
                format!("{:?}", m.path.display().to_string()),
            );
            flag(&mut a, "reward.num_gpus_per_node", "\"$NGPUS\"");
        }
    }
    flag(&mut a, "data.prompt_dataset", "\"$HERE/data/train.jsonl\"");
    flag(&mut a, "data.input_key", "prompt");
    flag(&mut a, "data.label_key", "answer");
    if chat {
        flag(&mut a, "data.apply_chat_template", "");
    } else {
        flag(&mut a, "data.input_template", "'{}'");
    }
    // One rollout of `prompts` prompts per step, max_steps steps.
    flag(
        &mut a,
        "data.max_samples",
        (t.max_steps * prompts).to_string(),
    );
    flag(
        &mut a,
        "train.num_episodes",
        (t.max_steps * prompts)
            .div_ceil(rows.max(1))
            .max(1)
            .to_string(),
    );
    flag(&mut a, "data.max_len", (t.max_length + max_new).to_string());
    flag(&mut a, "rollout.max_new_tokens", max_new.to_string());
    flag(&mut a, "rollout.n_samples_per_prompt", n.to_string());
    flag(&mut a, "rollout.batch_size", prompts.to_string());
    flag(&mut a, "rollout.micro_batch_size", "\"${MICRO_BATCH:-4}\"");
    flag(&mut a, "rollout.temperature", format!("{temperature:?}"));
    flag(&mut a, "rollout.top_p", format!("{top_p:?}"));
    if top_k > 0 {
        not_carried.push(format!("top_k = {top_k}: OpenRLHF's rollout has no top-k"));
    }
    flag(&mut a, "train.batch_size", (per_update * n).to_string());
    flag(&mut a, "train.micro_batch_size", "\"${MICRO_BATCH:-4}\"");
    flag(&mut a, "actor.adam.lr", py_f(cfg.optim.learning_rate));
    flag(
        &mut a,
        "actor.max_norm",
        format!("{:?}", cfg.optim.max_grad_norm),
    );
    if ppo {
        ppo_args(cfg, config_dir, model, &mut a, not_carried);
    } else {
        grpo_args(cfg, &mut a, not_carried);
    }
    if cfg.data.eval.is_some() && t.eval_steps > 0 {
        if reward_file {
            flag(&mut a, "eval.dataset", "\"$HERE/data/eval.jsonl\"");
            flag(&mut a, "eval.steps", t.eval_steps.to_string());
        } else {
            not_carried.push(
                "[data] eval: OpenRLHF evaluates RL runs with a reward function only, not a reward model".into(),
            );
        }
    }
    for role in ["actor", "ref"] {
        flag(&mut a, &format!("{role}.num_nodes"), "\"$NNODES\"");
        flag(&mut a, &format!("{role}.num_gpus_per_node"), "\"$NGPUS\"");
    }
    if ppo {
        flag(&mut a, "critic.num_nodes", "\"$NNODES\"");
        flag(&mut a, "critic.num_gpus_per_node", "\"$NGPUS\"");
    }
    // One vLLM engine per GPU, colocated with training (OpenRLHF's single-node recipe).
    flag(&mut a, "vllm.num_engines", "\"$((NGPUS * NNODES))\"");
    flag(&mut a, "vllm.tensor_parallel_size", "1");
    flag(&mut a, "vllm.gpu_memory_utilization", "0.5");
    flag(&mut a, "vllm.enable_sleep", "");
    flag(&mut a, "ds.enable_sleep", "");
    flag(&mut a, "train.colocate_all", "");
    common(cfg, &mut a);
    a
}

fn grpo_args(cfg: &RunConfig, a: &mut Vec<String>, not_carried: &mut Vec<String>) {
    let g = cfg.grpo.clone().unwrap_or_default();
    let loss = setting_name(&g.loss_type);
    let estimator = match setting_name(&g.advantage_estimator).as_str() {
        "rloo" => "rloo",
        "reinforce_pp" => "reinforce",
        "reinforce_pp_baseline" => "reinforce_baseline",
        _ if loss == "dr_grpo" => "dr_grpo",
        _ => "group_norm",
    };
    flag(a, "algo.advantage.estimator", estimator);
    if setting_name(&g.scale_rewards) == "none" && estimator == "group_norm" {
        flag(a, "algo.advantage.no_std_norm", "");
    }
    if g.beta > 0.0 {
        flag(a, "algo.kl.use_loss", "");
        flag(a, "algo.kl.init_coef", py_f(g.beta));
        flag(a, "algo.kl.estimator", "k3");
    } else {
        flag(a, "algo.kl.init_coef", "0");
    }
    flag(
        a,
        "actor.eps_clip_low_high",
        format!("{:?} {:?}", g.epsilon, g.epsilon_high.unwrap_or(g.epsilon)),
    );
    if g.entropy_coef > 0.0 {
        flag(a, "actor.entropy_coef", py_f(g.entropy_coef));
    }
    flag(
        a,
        "actor.loss_agg_mode",
        if loss == "grpo" {
            "seq-mean-token-mean"
        } else {
            "token-mean"
        },
    );
    if setting_name(&g.importance_sampling_level) == "sequence" {
        flag(a, "actor.policy_loss_type", "gspo");
    }
    flag(a, "train.max_epochs", g.num_iterations.to_string());
    if g.dynamic_sampling {
        flag(a, "algo.dynamic_filtering_enable", "");
        flag(a, "algo.dynamic_filtering_range", "0 1");
    }
    if g.overlong_buffer_len > 0 {
        flag(
            a,
            "reward.overlong_buffer_len",
            g.overlong_buffer_len.to_string(),
        );
    }
    if setting_name(&g.policy_loss) == "cispo" {
        not_carried.push("[grpo] policy_loss = \"cispo\": OpenRLHF has ppo and gspo losses".into());
    }
    super::grpo_gaps(&g, "OpenRLHF", not_carried);
    if g.mask_truncated_completions {
        not_carried.push("[grpo] mask_truncated_completions: OpenRLHF penalises instead (reward.stop_properly_penalty_coef)".into());
    }
}

fn ppo_args(
    cfg: &RunConfig,
    config_dir: &Path,
    model: &Path,
    a: &mut Vec<String>,
    not_carried: &mut Vec<String>,
) {
    let p = cfg.ppo.clone().unwrap_or_default();
    flag(a, "algo.advantage.estimator", "gae");
    flag(a, "algo.advantage.gamma", format!("{:?}", p.gamma));
    flag(a, "algo.advantage.lambd", format!("{:?}", p.lam));
    flag(a, "algo.kl.init_coef", py_f(p.kl_coef));
    flag(a, "algo.kl.estimator", setting_name(&p.kl_estimator));
    if let Some(k) = &p.adaptive_kl {
        flag(a, "algo.kl.target", py_f(k.target));
        flag(a, "algo.kl.horizon", k.horizon.to_string());
    }
    flag(a, "actor.eps_clip", py_f(p.cliprange));
    flag(a, "critic.value_clip", py_f(p.cliprange_value));
    flag(a, "train.max_epochs", p.num_ppo_epochs.to_string());
    // The value model starts from the policy's weights unless the config names one.
    let critic = p
        .value_model
        .as_deref()
        .map_or(model.to_path_buf(), |m| resolve(config_dir, m));
    flag(
        a,
        "critic.model_name_or_path",
        format!("{:?}", critic.display().to_string()),
    );
    flag(
        a,
        "critic.adam.lr",
        py_f(p.value_learning_rate.unwrap_or(cfg.optim.learning_rate)),
    );
    if p.whiten_rewards {
        not_carried.push("[ppo] whiten_rewards: OpenRLHF normalises rewards with reward.normalize_enable (mean and std)".into());
    }
}

/// What DPO and SFT share: the model, the data file, lengths and the step count (as
/// samples and epochs), batch sizes, the optimizer; `keys` names the data's columns.
fn offline_args(cfg: &RunConfig, model: &Path, rows: usize, keys: &[(&str, &str)]) -> Vec<String> {
    let t = &cfg.train;
    let batch = t.per_device_train_batch_size * t.gradient_accumulation_steps;
    let mut a = Vec::new();
    flag(
        &mut a,
        "model.model_name_or_path",
        format!("{:?}", model.display().to_string()),
    );
    flag(&mut a, "data.dataset", "\"$HERE/data/train.jsonl\"");
    for (flag_name, column) in keys {
        flag(&mut a, flag_name, *column);
    }
    // The prompt as it is (OpenRLHF's SFT default wraps it in "User: ...").
    flag(&mut a, "data.input_template", "'{}'");
    flag(&mut a, "data.max_len", t.max_length.to_string());
    flag(
        &mut a,
        "data.max_samples",
        (t.max_steps * batch).to_string(),
    );
    flag(
        &mut a,
        "train.max_epochs",
        (t.max_steps * batch)
            .div_ceil(rows.max(1))
            .max(1)
            .to_string(),
    );
    flag(&mut a, "train.batch_size", batch.to_string());
    flag(&mut a, "train.micro_batch_size", "\"${MICRO_BATCH:-4}\"");
    flag(&mut a, "adam.lr", py_f(cfg.optim.learning_rate));
    flag(&mut a, "max_norm", format!("{:?}", cfg.optim.max_grad_norm));
    if cfg.data.eval.is_some() && t.eval_steps > 0 {
        flag(&mut a, "eval.dataset", "\"$HERE/data/eval.jsonl\"");
        flag(&mut a, "eval.steps", t.eval_steps.to_string());
    }
    a
}

fn dpo_args(
    cfg: &RunConfig,
    model: &Path,
    rows: usize,
    not_carried: &mut Vec<String>,
) -> Vec<String> {
    let d = cfg.dpo.clone().unwrap_or_default();
    let mut a = offline_args(
        cfg,
        model,
        rows,
        &[
            ("data.prompt_key", "prompt"),
            ("data.chosen_key", "chosen"),
            ("data.rejected_key", "rejected"),
        ],
    );
    flag(&mut a, "model.beta", py_f(d.beta));
    match setting_name(&d.loss_type).as_str() {
        "ipo" => flag(&mut a, "model.ipo_enable", ""),
        "sigmoid" => {}
        other => not_carried.push(format!(
            "[dpo] loss_type = {other:?}: OpenRLHF's DPO has sigmoid and IPO"
        )),
    }
    if d.label_smoothing > 0.0 {
        flag(&mut a, "model.label_smoothing", py_f(d.label_smoothing));
    }
    if let Some(alpha) = d.rpo_alpha {
        flag(&mut a, "model.nll_loss_coef", py_f(alpha));
    }
    common(cfg, &mut a);
    a
}

fn sft_args(cfg: &RunConfig, model: &Path, rows: usize) -> Vec<String> {
    let t = &cfg.train;
    let mut a = offline_args(
        cfg,
        model,
        rows,
        &[
            ("data.input_key", "prompt"),
            ("data.output_key", "completion"),
        ],
    );
    if !t.completion_only_loss {
        // The loss on the prompt too.
        flag(&mut a, "model.pretrain_mode_enable", "");
    }
    if t.packing {
        flag(&mut a, "ds.packing_samples", "");
    }
    common(cfg, &mut a);
    a
}

fn reward_py(checks: &super::Checkers) -> String {
    let mut terms = String::new();
    for (name, weight) in &checks.weights {
        let _ = writeln!(
            terms,
            "        scores[{name:?}] = {name}_one(response, label)\n        total += {weight:?} * scores[{name:?}]",
        );
    }
    let names = checks
        .weights
        .iter()
        .map(|(n, _)| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#""""rlft's reward functions for OpenRLHF: `--reward.remote_url` points here."""
import re

import torch
{code}

# Special tokens OpenRLHF leaves in the decoded query (`<|im_end|>`, `</s>`, ...).
SPECIAL = re.compile(r"<\|[^|>]*\|>|</?s>")


def reward_func(queries, prompts, labels, **kwargs):
    """The weighted sum of rlft's checkers for each response (the query after its prompt)."""
    rewards = []
    logs = {{name: [] for name in [{names}]}}
    for query, prompt, label in zip(queries, prompts, labels):
        at = query.find(prompt)
        response = query[at + len(prompt):] if at >= 0 else query
        response = SPECIAL.sub("", response)
        scores = {{}}
        total = 0.0
{terms}        rewards.append(total)
        for name, value in scores.items():
            logs[name].append(value)
    rewards = torch.tensor(rewards, dtype=torch.float)
    return {{
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {{name: torch.tensor(v, dtype=torch.float) for name, v in logs.items()}},
    }}
"#,
        code = checks.code
    )
}

fn run_sh(cfg: &RunConfig, module: &str, args: &[String]) -> String {
    let name = cfg.name();
    let method = cfg.method.name();
    let launcher = if module.ends_with("train_ppo_ray") {
        // Its own Ray driver: `ray.init()` here, or the cluster's under `ray job submit`.
        format!("\"${{PYTHON:-python3}}\" -m {module}")
    } else {
        format!("deepspeed --num_gpus \"$NGPUS\" --module {module}")
    };
    format!(
        r#"#!/usr/bin/env bash
# {name}: exported by `rlft export --engine openrlhf` from an rlft {method} config, for OpenRLHF
# 0.11 (dotted flags; OpenRLHF 0.10.1 and older use flat ones). NOT_CARRIED.md lists what has
# no OpenRLHF equivalent.
#
#   pip install openrlhf[vllm]          # needs GPUs, DeepSpeed and vLLM
#   NGPUS=8 bash run.sh [--out DIR]     # rlft watch DIR follows its TensorBoard logs live
#
# On Ray: ray job submit --address http://HEAD:8265 -- bash run.sh --out /shared/DIR
# (or `rlft launch CONFIG --engine openrlhf --on ray://HEAD:8265`).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/run"
if [ "${{1:-}}" = "--out" ]; then OUT="$2"; shift 2; fi
mkdir -p "$OUT"
NGPUS="${{NGPUS:-1}}"
NNODES="${{NNODES:-1}}"
exec {launcher} \
  {args} \
  "$@"
"#,
        args = args.join(" \\\n  ")
    )
}
