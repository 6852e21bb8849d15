//! verl (0.9): GRPO and PPO configs as `run.sh`, `python3 -m verl.trainer.main_ppo` with
//! Hydra overrides under verl's names. The prompts become verl's RL dataset rows
//! (`data_source`, `prompt` as chat messages, `reward_model.ground_truth`), the answer
//! checkers a `compute_score` in `reward.py`. verl's `file` logger writes `verl.jsonl` and
//! its rollout dumps `rollouts/<step>.jsonl` into the run folder: what `rlft watch` reads.
//!
//! Names checked against verl 0.9.1's composed config (`main_ppo --cfg job`) and its
//! `validate_config`; verl needs GPUs and vLLM or SGLang to run.

use std::fmt::Write as _;
use std::path::Path;

use super::{Exported, checkers, model_path, not_carried_text, py_f, resolve, write};
use crate::engine::config::{Method, RunConfig, setting_name};
use crate::engine::reward::RewardConfig;

/// A chat template that is the prompt itself: rlft's tasks prompt base models with plain
/// text, and verl always applies a chat template.
const RAW_TEMPLATE: &str = "{% for m in messages %}{{ m.content }}{% endfor %}";

/// Writes `out/run.sh`, `out/reward.py`, `out/data/{train,eval}.jsonl` and `out/NOT_CARRIED.md`.
pub fn to_verl(cfg: &RunConfig, config_dir: &Path, out: &Path) -> Result<Exported, String> {
    if !matches!(cfg.method, Method::Grpo | Method::Ppo) {
        return Err(format!(
            "exporting method \"{}\" to verl is not supported (grpo and ppo are; verl trains RL, use --engine trl or openrlhf for {})",
            cfg.method.name(),
            cfg.method.name()
        ));
    }
    let mut report = Exported::default();
    let model = model_path(cfg, config_dir, &mut report.not_carried);
    let checks = checkers(cfg, &mut report.not_carried);
    if checks.weights.is_empty() {
        return Err(
            "no [[rewards]] rlft can write as Python (exact_match, format): verl needs a reward function"
                .into(),
        );
    }
    let source = format!("rlft/{}", cfg.name());
    let train = convert(&resolve(config_dir, &cfg.data.train), &source)?;
    write(out, "data/train.jsonl", &train.0, &mut report)?;
    if let Some(e) = &cfg.data.eval {
        let eval = convert(&resolve(config_dir, e), &source)?;
        write(out, "data/eval.jsonl", &eval.0, &mut report)?;
    }
    write(out, "reward.py", &reward_py(&checks), &mut report)?;
    let overrides = overrides(cfg, config_dir, &model, train.1, &mut report.not_carried);
    write(out, "run.sh", &run_sh(cfg, &overrides), &mut report)?;
    let text = not_carried_text(&report.not_carried);
    write(out, "NOT_CARRIED.md", &text, &mut report)?;
    Ok(report)
}

/// rlft's `{"prompt", "answer"}` rows as verl's; returns the JSONL and the row count.
fn convert(path: &Path, source: &str) -> Result<(String, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        let prompt = row
            .get("prompt")
            .and_then(|p| p.as_str())
            .ok_or_else(|| format!("{}:{}: no \"prompt\" string", path.display(), i + 1))?;
        let answer = match row.get("answer") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) if !other.is_null() => other.to_string(),
            _ => String::new(),
        };
        let verl_row = serde_json::json!({
            "data_source": source,
            "prompt": [{"role": "user", "content": prompt}],
            "ability": "rlft",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"index": n},
        });
        let _ = writeln!(out, "{verl_row}");
        n += 1;
    }
    Ok((out, n))
}

fn reward_py(checks: &super::Checkers) -> String {
    let mut terms = String::new();
    for (name, weight) in &checks.weights {
        let _ = writeln!(
            terms,
            "    scores[{name:?}] = {name}_one(solution_str, ground_truth)\n    total += {weight:?} * scores[{name:?}]",
        );
    }
    format!(
        r#""""rlft's reward functions for verl: `reward.custom_reward_function.path` points here."""
{code}

def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """The weighted sum of rlft's checkers; each one is logged beside `score`."""
    scores = {{}}
    total = 0.0
{terms}    scores["score"] = total
    return scores
"#,
        code = checks.code
    )
}

/// The Hydra overrides, in verl's names.
fn overrides(
    cfg: &RunConfig,
    config_dir: &Path,
    model: &Path,
    train_rows: usize,
    not_carried: &mut Vec<String>,
) -> Vec<String> {
    let t = &cfg.train;
    let o = &cfg.optim;
    let mut v: Vec<String> = Vec::new();
    let mut set = |k: &str, val: String| v.push(format!("{k}={val}"));
    let super::Sampling {
        max_new_tokens: max_response,
        temperature,
        top_k,
        top_p,
        chat,
    } = super::sampling(cfg);
    // verl counts prompts, rlft completions (TRL's batch).
    let (n, prompts, per_update) = super::rollout_shape(cfg);
    let epochs = (t.max_steps * prompts).div_ceil(train_rows.max(1)).max(1);
    set("data.train_files", "$HERE/data/train.jsonl".into());
    if cfg.data.eval.is_some() {
        set("data.val_files", "$HERE/data/eval.jsonl".into());
    }
    set("data.prompt_key", "prompt".into());
    set("data.train_batch_size", prompts.to_string());
    set("data.max_prompt_length", t.max_length.to_string());
    set("data.max_response_length", max_response.to_string());
    set("data.filter_overlong_prompts", "true".into());
    set("data.truncation", "left".into());
    set("actor_rollout_ref.model.path", model.display().to_string());
    if !chat {
        set(
            "actor_rollout_ref.model.custom_chat_template",
            format!("\"{RAW_TEMPLATE}\""),
        );
    }
    set("actor_rollout_ref.actor.optim.lr", py_f(o.learning_rate));
    set(
        "actor_rollout_ref.actor.optim.weight_decay",
        format!("{:?}", o.weight_decay),
    );
    set(
        "actor_rollout_ref.actor.grad_clip",
        format!("{:?}", o.max_grad_norm),
    );
    set(
        "actor_rollout_ref.actor.ppo_mini_batch_size",
        per_update.to_string(),
    );
    set(
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
        "${oc.env:MICRO_BATCH,4}".into(),
    );
    set(
        "actor_rollout_ref.rollout.name",
        "${oc.env:ROLLOUT,vllm}".into(),
    );
    set("actor_rollout_ref.rollout.n", n.to_string());
    set(
        "actor_rollout_ref.rollout.temperature",
        format!("{temperature:?}"),
    );
    set("actor_rollout_ref.rollout.top_p", format!("{top_p:?}"));
    set(
        "actor_rollout_ref.rollout.top_k",
        if top_k == 0 {
            "-1".into()
        } else {
            top_k.to_string()
        },
    );
    set(
        "actor_rollout_ref.rollout.tensor_model_parallel_size",
        "1".into(),
    );
    set(
        "actor_rollout_ref.rollout.gpu_memory_utilization",
        "0.5".into(),
    );
    set(
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
        "${oc.env:MICRO_BATCH,4}".into(),
    );
    set(
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
        "${oc.env:MICRO_BATCH,4}".into(),
    );
    if let Some(l) = &cfg.lora {
        set("actor_rollout_ref.model.lora_rank", l.r.to_string());
        set(
            "actor_rollout_ref.model.lora_alpha",
            format!("{}", l.lora_alpha),
        );
        set(
            "actor_rollout_ref.model.target_modules",
            match &l.target_modules {
                crate::engine::model::lora::TargetModules::Preset(p) => p.clone(),
                crate::engine::model::lora::TargetModules::Names(names) => {
                    format!("[{}]", names.join(","))
                }
            },
        );
        if l.lora_dropout > 0.0 {
            not_carried.push("[lora] lora_dropout: verl's FSDP LoRA has no dropout setting".into());
        }
    }
    match cfg.method {
        Method::Ppo => ppo_overrides(cfg, config_dir, &mut v, not_carried),
        _ => grpo_overrides(cfg, &mut v, not_carried),
    }
    trainer_overrides(cfg, epochs, &mut v, not_carried);
    v
}

/// The reward function, logging, checkpoints, evaluation and length of the run.
fn trainer_overrides(
    cfg: &RunConfig,
    epochs: usize,
    v: &mut Vec<String>,
    not_carried: &mut Vec<String>,
) {
    let t = &cfg.train;
    let o = &cfg.optim;
    let mut set = |k: &str, val: String| v.push(format!("{k}={val}"));
    set(
        "reward.custom_reward_function.path",
        "$HERE/reward.py".into(),
    );
    set("reward.custom_reward_function.name", "compute_score".into());
    set("trainer.logger", "[console,file,tensorboard]".into());
    set("trainer.project_name", "rlft".into());
    set("trainer.experiment_name", cfg.name().into());
    set("trainer.default_local_dir", "$OUT/checkpoints".into());
    set("trainer.rollout_data_dir", "$OUT/rollouts".into());
    set("trainer.n_gpus_per_node", "${NGPUS}".into());
    set("trainer.nnodes", "${NNODES}".into());
    set("trainer.total_training_steps", t.max_steps.to_string());
    set("trainer.total_epochs", epochs.to_string());
    set(
        "trainer.save_freq",
        if t.save_steps > 0 {
            t.save_steps.to_string()
        } else {
            "-1".into()
        },
    );
    let eval = cfg.data.eval.is_some() && t.eval_steps > 0;
    set(
        "trainer.test_freq",
        if eval {
            t.eval_steps.to_string()
        } else {
            "-1".into()
        },
    );
    set(
        "trainer.val_before_train",
        (eval && t.eval_before_train).to_string(),
    );
    if o.warmup_steps > 0 {
        not_carried.push(format!(
            "[optim] warmup_steps = {}: verl warms up by a ratio, actor_rollout_ref.actor.optim.lr_warmup_steps_ratio",
            o.warmup_steps
        ));
    }
    if setting_name(&o.lr_scheduler_type) != "constant" {
        not_carried.push(format!(
            "[optim] lr_scheduler_type = {:?}: set actor_rollout_ref.actor.optim.lr_scheduler_type (verl: constant or cosine)",
            setting_name(&o.lr_scheduler_type)
        ));
    }
}

fn grpo_overrides(cfg: &RunConfig, v: &mut Vec<String>, not_carried: &mut Vec<String>) {
    let g = cfg.grpo.clone().unwrap_or_default();
    let mut set = |k: &str, val: String| v.push(format!("{k}={val}"));
    let estimator = match setting_name(&g.advantage_estimator).as_str() {
        "rloo" => "rloo",
        "reinforce_pp" => "reinforce_plus_plus",
        "reinforce_pp_baseline" => "reinforce_plus_plus_baseline",
        _ => "grpo",
    };
    set("algorithm.adv_estimator", estimator.into());
    set(
        "algorithm.norm_adv_by_std_in_grpo",
        (setting_name(&g.scale_rewards) != "none").to_string(),
    );
    set("algorithm.use_kl_in_reward", "false".into());
    set(
        "actor_rollout_ref.actor.use_kl_loss",
        (g.beta > 0.0).to_string(),
    );
    set("actor_rollout_ref.actor.kl_loss_coef", py_f(g.beta));
    // rlft's GRPO KL is the k3 estimator, verl's low_var_kl (k3, clamped).
    set("actor_rollout_ref.actor.kl_loss_type", "low_var_kl".into());
    set(
        "actor_rollout_ref.actor.entropy_coeff",
        py_f(g.entropy_coef),
    );
    set(
        "actor_rollout_ref.actor.clip_ratio_low",
        format!("{:?}", g.epsilon),
    );
    set(
        "actor_rollout_ref.actor.clip_ratio_high",
        format!("{:?}", g.epsilon_high.unwrap_or(g.epsilon)),
    );
    let agg = match setting_name(&g.loss_type).as_str() {
        "grpo" => "seq-mean-token-mean",
        "dr_grpo" => "seq-mean-token-sum-norm",
        _ => "token-mean",
    };
    set("actor_rollout_ref.actor.loss_agg_mode", agg.into());
    let loss_mode = if setting_name(&g.policy_loss) == "cispo" {
        "cispo"
    } else if setting_name(&g.importance_sampling_level) == "sequence" {
        "gspo"
    } else {
        "vanilla"
    };
    set(
        "actor_rollout_ref.actor.policy_loss.loss_mode",
        loss_mode.into(),
    );
    set(
        "actor_rollout_ref.actor.ppo_epochs",
        g.num_iterations.to_string(),
    );
    if g.dynamic_sampling {
        set("algorithm.filter_groups.enable", "true".into());
        set("algorithm.filter_groups.metric", "score".into());
        set(
            "algorithm.filter_groups.max_num_gen_batches",
            g.max_sampling_rounds.to_string(),
        );
    }
    if g.overlong_buffer_len > 0 {
        not_carried.push("[grpo] overlong_buffer_len: verl has it in its DAPO reward manager (reward_model.overlong_buffer), not main_ppo's".into());
    }
    super::grpo_gaps(&g, "verl", not_carried);
    if g.mask_truncated_completions {
        not_carried.push("[grpo] mask_truncated_completions: not in verl's actor".into());
    }
    if !g.stop.is_empty() {
        not_carried.push(
            "[grpo] stop: verl stops at end of sequence; the checkers read the first line, so the reward is the same".into(),
        );
    }
}

fn ppo_overrides(
    cfg: &RunConfig,
    config_dir: &Path,
    v: &mut Vec<String>,
    not_carried: &mut Vec<String>,
) {
    let p = cfg.ppo.clone().unwrap_or_default();
    let mut set = |k: &str, val: String| v.push(format!("{k}={val}"));
    set("algorithm.adv_estimator", "gae".into());
    set("algorithm.gamma", format!("{:?}", p.gamma));
    set("algorithm.lam", format!("{:?}", p.lam));
    set("algorithm.use_kl_in_reward", "true".into());
    set(
        "algorithm.kl_ctrl.type",
        if p.adaptive_kl.is_some() {
            "adaptive"
        } else {
            "fixed"
        }
        .into(),
    );
    set("algorithm.kl_ctrl.kl_coef", py_f(p.kl_coef));
    if let Some(a) = &p.adaptive_kl {
        set("algorithm.kl_ctrl.target_kl", py_f(a.target));
        set("algorithm.kl_ctrl.horizon", a.horizon.to_string());
    }
    set(
        "algorithm.kl_penalty",
        match setting_name(&p.kl_estimator).as_str() {
            "k3" => "low_var_kl",
            "k2" => "mse",
            _ => "kl",
        }
        .into(),
    );
    set("actor_rollout_ref.actor.use_kl_loss", "false".into());
    set("actor_rollout_ref.actor.clip_ratio_low", py_f(p.cliprange));
    set("actor_rollout_ref.actor.clip_ratio_high", py_f(p.cliprange));
    set(
        "actor_rollout_ref.actor.ppo_epochs",
        p.num_ppo_epochs.to_string(),
    );
    let critic = match &p.value_model {
        Some(m) => resolve(config_dir, m).display().to_string(),
        None => "${actor_rollout_ref.model.path}".into(),
    };
    set("critic.model.path", critic);
    set(
        "critic.optim.lr",
        py_f(p.value_learning_rate.unwrap_or(cfg.optim.learning_rate)),
    );
    set(
        "critic.ppo_micro_batch_size_per_gpu",
        "${oc.env:MICRO_BATCH,4}".into(),
    );
    set("critic.cliprange_value", py_f(p.cliprange_value));
    if p.whiten_rewards {
        not_carried.push("[ppo] whiten_rewards: not in verl's GAE".into());
    }
    if p.missing_eos_penalty.is_some() {
        not_carried.push("[ppo] missing_eos_penalty: add it to reward.py (verl passes the response without its EOS)".into());
    }
    for r in &cfg.rewards {
        if let RewardConfig::RewardModel(m) = r {
            not_carried.push(format!(
                "[[rewards]] reward_model {}: verl scores with a reward model through reward_model.enable=true and reward_model.model.path (an HF sequence-classification folder)",
                m.path.display()
            ));
        }
    }
}

fn run_sh(cfg: &RunConfig, overrides: &[String]) -> String {
    let name = cfg.name();
    let method = cfg.method.name();
    let lines = overrides
        .iter()
        .map(|o| {
            // OmegaConf's `${...}` and Jinja are verl's, not the shell's: single quotes. The
            // script's own variables ($HERE, $OUT, $NGPUS) expand: double quotes.
            if o.contains("${oc.") || o.contains("${actor") || o.contains("{%") {
                format!("  '{o}'")
            } else if o.contains('$') || o.contains(' ') {
                format!("  \"{o}\"")
            } else {
                format!("  {o}")
            }
        })
        .collect::<Vec<_>>()
        .join(" \\\n");
    format!(
        r#"#!/usr/bin/env bash
# {name}: exported by `rlft export --engine verl` from an rlft {method} config, for verl 0.9
# (python3 -m verl.trainer.main_ppo; verl's names throughout). NOT_CARRIED.md lists what has
# no verl equivalent.
#
#   pip install verl vllm            # verl needs GPUs and vLLM (or ROLLOUT=sglang)
#   NGPUS=8 bash run.sh [--out DIR]  # rlft watch DIR follows it live (verl.jsonl, rollouts/)
#
# On Ray: ray job submit --address http://HEAD:8265 -- bash run.sh --out /shared/DIR
# (or `rlft launch CONFIG --engine verl --on ray://HEAD:8265`). DIR must be on storage the
# nodes share.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/run"
if [ "${{1:-}}" = "--out" ]; then OUT="$2"; shift 2; fi
mkdir -p "$OUT"
NGPUS="${{NGPUS:-1}}"
NNODES="${{NNODES:-1}}"
export VERL_FILE_LOGGER_PATH="$OUT/verl.jsonl"
export TENSORBOARD_DIR="$OUT/tensorboard"
exec "${{PYTHON:-python3}}" -m verl.trainer.main_ppo \
{lines} \
  "$@"
"#
    )
}
