//! TRL: SFT, reward model, DPO, KTO and GRPO configs as a `train.py` with TRL's config classes
//! and names. rlft's JSONL is TRL's dataset format already (prompt/completion,
//! prompt/chosen/rejected), so the data is copied as it is. The script reports to rlft
//! through `integrations/trl/rlft_callback.py` (metrics, GRPO samples, status) and writes
//! TensorBoard events too.

use std::path::Path;

use super::{Exported, checkers, model_path, not_carried_text, py_f, resolve, write};
use crate::engine::config::{Method, RunConfig, methods, setting_name};

/// The callback the exported script reports through, shipped inside the binary so an export
/// works from anywhere.
const CALLBACK: &str = include_str!("../../../integrations/trl/rlft_callback.py");

/// What differs between TRL's trainers in the script.
struct Plan {
    config_class: &'static str,
    trainer_class: &'static str,
    /// Config arguments of this method (the shared training ones are added to them).
    args: Vec<String>,
    /// Extra `Trainer(...)` arguments, e.g. `reward_funcs=[...]`.
    trainer_kwargs: Vec<String>,
    /// Python defined before the trainer (reward functions).
    prelude: String,
}

/// Writes `out/train.py`, `out/data/`, `out/rlft_callback.py` and `out/NOT_CARRIED.md`.
pub fn to_trl(cfg: &RunConfig, config_dir: &Path, out: &Path) -> Result<Exported, String> {
    let mut report = Exported::default();
    let plan = match cfg.method {
        Method::Grpo => grpo(cfg, &mut report.not_carried),
        Method::Sft => sft(cfg, &mut report.not_carried),
        Method::Dpo => dpo(cfg, &mut report.not_carried),
        Method::Rm => rm(cfg),
        Method::Kto => kto(cfg, &mut report.not_carried),
        other => {
            return Err(format!(
                "exporting method \"{}\" to TRL is not supported yet (sft, rm, dpo, kto and grpo are)",
                other.name()
            ));
        }
    };
    let model = model_path(cfg, config_dir, &mut report.not_carried);
    std::fs::create_dir_all(out.join("data")).map_err(|e| format!("{}: {e}", out.display()))?;
    let copy = |from: &Path, name: &str| -> Result<std::path::PathBuf, String> {
        let to = out.join("data").join(name);
        std::fs::copy(resolve(config_dir, from), &to)
            .map_err(|e| format!("copying {}: {e}", resolve(config_dir, from).display()))?;
        Ok(to)
    };
    report.files.push(copy(&cfg.data.train, "train.jsonl")?);
    if let Some(e) = &cfg.data.eval {
        report.files.push(copy(e, "eval.jsonl")?);
    }
    not_carried_common(cfg, &mut report.not_carried);
    let script = script(cfg, &plan, &model);
    write(out, "train.py", &script, &mut report)?;
    write(out, "rlft_callback.py", CALLBACK, &mut report)?;
    let text = not_carried_text(&report.not_carried);
    write(out, "NOT_CARRIED.md", &text, &mut report)?;
    Ok(report)
}

fn grpo(cfg: &RunConfig, not_carried: &mut Vec<String>) -> Plan {
    let g = cfg.grpo.clone().unwrap_or_default();
    let checks = checkers(cfg, not_carried);
    let mut prelude = checks.code.clone();
    for (name, _) in &checks.weights {
        prelude.push_str(&match name.as_str() {
            "exact_match" => "\ndef exact_match(completions, answer, **kwargs):\n    return [exact_match_one(c, a) for c, a in zip(completions, answer)]\n".to_string(),
            _ => "\ndef format(completions, **kwargs):\n    return [format_one(c) for c in completions]\n".to_string(),
        });
    }
    not_carried_grpo(&g, not_carried);
    let mut args = vec![
        format!("num_generations={}", g.num_generations),
        format!("max_completion_length={}", g.max_completion_length),
        format!("temperature={:?}", g.temperature),
        format!("top_p={:?}", g.top_p),
        format!("beta={}", py_f(g.beta)),
        format!("epsilon={:?}", g.epsilon),
        format!("loss_type={:?}", setting_name(&g.loss_type)),
        format!("scale_rewards={:?}", setting_name(&g.scale_rewards)),
        format!(
            "importance_sampling_level={:?}",
            setting_name(&g.importance_sampling_level)
        ),
        format!("num_iterations={}", g.num_iterations),
        format!(
            "mask_truncated_completions={}",
            py_bool(g.mask_truncated_completions)
        ),
        format!("top_entropy_quantile={}", py_f(g.top_entropy_quantile)),
        format!(
            "reward_weights=[{}]",
            checks
                .weights
                .iter()
                .map(|(_, w)| format!("{w:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    if g.top_k > 0 {
        args.push(format!("top_k={}", g.top_k));
    }
    if let Some(e) = g.epsilon_high {
        args.push(format!("epsilon_high={e:?}"));
    }
    let funcs = checks
        .weights
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Plan {
        config_class: "GRPOConfig",
        trainer_class: "GRPOTrainer",
        args,
        trainer_kwargs: vec![format!("reward_funcs=[{funcs}]")],
        prelude,
    }
}

fn sft(cfg: &RunConfig, not_carried: &mut Vec<String>) -> Plan {
    let t = &cfg.train;
    let mut args = vec![
        format!("max_length={}", t.max_length),
        format!("completion_only_loss={}", py_bool(t.completion_only_loss)),
        format!("packing={}", py_bool(t.packing)),
    ];
    if t.assistant_only_loss {
        args.push("assistant_only_loss=True".into());
    }
    if cfg.samples.every > 0 {
        not_carried.push(
            "[samples]: rlft's periodic generations from fixed prompts; TRL's SFTTrainer does not generate during training"
                .into(),
        );
    }
    Plan {
        config_class: "SFTConfig",
        trainer_class: "SFTTrainer",
        args,
        trainer_kwargs: vec![],
        prelude: String::new(),
    }
}

fn dpo(cfg: &RunConfig, not_carried: &mut Vec<String>) -> Plan {
    let d = cfg.dpo.clone().unwrap_or_default();
    let loss = setting_name(&d.loss_type);
    let mut args = vec![
        format!("beta={}", py_f(d.beta)),
        format!("label_smoothing={}", py_f(d.label_smoothing)),
        format!("max_length={}", cfg.train.max_length),
    ];
    // RPO's NLL term is TRL 1.x's "sft" loss, weighted beside the preference loss.
    match d.rpo_alpha {
        Some(alpha) => {
            args.push(format!("loss_type=[{loss:?}, \"sft\"]"));
            args.push(format!("loss_weights=[1.0, {}]", py_f(alpha)));
        }
        None => args.push(format!("loss_type={loss:?}")),
    }
    if d.max_prompt_length != methods::DpoSection::default().max_prompt_length {
        not_carried.push(format!(
            "[dpo] max_prompt_length = {}: TRL 1.x truncates by max_length only (truncation_mode keeps the start or the end)",
            d.max_prompt_length
        ));
    }
    Plan {
        config_class: "DPOConfig",
        trainer_class: "DPOTrainer",
        args,
        trainer_kwargs: vec![],
        prelude: String::new(),
    }
}

fn rm(cfg: &RunConfig) -> Plan {
    let r = cfg.rm.clone().unwrap_or_default();
    let mut args = vec![format!("max_length={}", cfg.train.max_length)];
    if let Some(c) = r.center_rewards_coefficient {
        args.push(format!("center_rewards_coefficient={}", py_f(c)));
    }
    Plan {
        config_class: "RewardConfig",
        trainer_class: "RewardTrainer",
        args,
        trainer_kwargs: vec![],
        prelude: String::new(),
    }
}

fn kto(cfg: &RunConfig, not_carried: &mut Vec<String>) -> Plan {
    let k = cfg.kto.clone().unwrap_or_default();
    if k.ratings != methods::KtoSection::default().ratings {
        not_carried.push(
            "[kto] ratings: rlft trains on people's ratings of its samples while it runs; TRL's KTOTrainer trains on a fixed dataset"
                .into(),
        );
    }
    if k.max_prompt_length != methods::KtoSection::default().max_prompt_length {
        not_carried.push(format!(
            "[kto] max_prompt_length = {}: TRL 1.x truncates by max_length only",
            k.max_prompt_length
        ));
    }
    Plan {
        config_class: "KTOConfig",
        trainer_class: "KTOTrainer",
        args: vec![
            format!("beta={}", py_f(k.beta)),
            format!("desirable_weight={}", py_f(k.desirable_weight)),
            format!("undesirable_weight={}", py_f(k.undesirable_weight)),
            format!("max_length={}", cfg.train.max_length),
        ],
        trainer_kwargs: vec![],
        prelude: String::new(),
    }
}

/// Settings of every method that TRL has no field for.
fn not_carried_common(cfg: &RunConfig, out: &mut Vec<String>) {
    let t = &cfg.train;
    if let Some(m) = &t.keep_best {
        out.push(format!(
            "[train] keep_best = {m:?}: add metric_for_best_model=\"eval_{m}\", greater_is_better and load_best_model_at_end=True (with save_strategy matching eval_strategy)"
        ));
    }
    if cfg.alerts.is_some() {
        out.push(
            "[alerts]: not in the script; `rlft launch` sends them while it follows the run".into(),
        );
    }
    if cfg.pairs.per_step.is_some_and(|n| n > 0) {
        out.push("[pairs]: labelling pairs while the run trains is rlft's own".into());
    }
}

/// GRPO settings TRL has no field for.
fn not_carried_grpo(g: &methods::GrpoSection, out: &mut Vec<String>) {
    let d = methods::GrpoSection::default();
    let mut say = |what: &str, why: &str| out.push(format!("[grpo] {what}: {why}"));
    if g.advantage_estimator != d.advantage_estimator {
        say(
            "advantage_estimator",
            "TRL's GRPOTrainer uses group-relative advantages (TRL has a separate RLOOTrainer)",
        );
    }
    if g.policy_loss != d.policy_loss {
        say("policy_loss = \"cispo\"", "not carried over");
    }
    if g.dynamic_sampling {
        say(
            "dynamic_sampling",
            "TRL's GRPOTrainer has no dynamic sampling",
        );
    }
    if g.overlong_buffer_len > 0 {
        say(
            "overlong_buffer_len",
            "add trl.rewards.get_soft_overlong_punishment to reward_funcs",
        );
    }
    if g.sft_coef > 0.0 {
        say("sft_coef", "TRL's GRPOTrainer has no demonstration term");
    }
    if g.entropy_coef > 0.0 {
        say("entropy_coef", "TRL's GRPOTrainer has no entropy bonus");
    }
    if !g.stop.is_empty() {
        say(
            "stop",
            "TRL stops at end of sequence only; the checkers read the first line, so the reward is the same, but completions run to max_completion_length",
        );
    }
    if g.chat {
        say(
            "chat",
            "make the dataset conversational (prompt as a list of messages) for TRL to apply the chat template",
        );
    }
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The training arguments every TRL trainer shares (transformers' `TrainingArguments`).
fn common_args(cfg: &RunConfig) -> Vec<String> {
    let t = &cfg.train;
    let o = &cfg.optim;
    let mut args = vec![
        "output_dir=OUT".to_string(),
        format!("max_steps={}", t.max_steps),
        format!(
            "per_device_train_batch_size={}",
            t.per_device_train_batch_size
        ),
        format!(
            "gradient_accumulation_steps={}",
            t.gradient_accumulation_steps
        ),
        format!("learning_rate={}", py_f(o.learning_rate)),
        format!("lr_scheduler_type={:?}", setting_name(&o.lr_scheduler_type)),
        format!("warmup_steps={}", o.warmup_steps),
        format!("max_grad_norm={:?}", o.max_grad_norm),
        format!("weight_decay={:?}", o.weight_decay),
        format!("seed={}", cfg.seed),
        "logging_steps=1".into(),
        // TRL trains in bf16 on a GPU and refuses bf16 on a CPU.
        "bf16=torch.cuda.is_available()".into(),
        "use_cpu=not torch.cuda.is_available()".into(),
        "report_to=[\"tensorboard\"]".into(),
    ];
    if t.save_steps > 0 {
        args.push(format!("save_steps={}", t.save_steps));
    }
    if t.save_total_limit > 0 {
        args.push(format!("save_total_limit={}", t.save_total_limit));
    }
    if t.gradient_checkpointing {
        args.push("gradient_checkpointing=True".into());
    }
    if cfg.data.eval.is_some() && t.eval_steps > 0 {
        args.push("eval_strategy=\"steps\"".into());
        args.push(format!("eval_steps={}", t.eval_steps));
        if t.eval_before_train {
            args.push("eval_on_start=True".into());
        }
    }
    args
}

fn script(cfg: &RunConfig, plan: &Plan, model: &Path) -> String {
    let name = cfg.name();
    let method = cfg.method.name();
    let mut args = common_args(cfg);
    args.extend(plan.args.iter().cloned());
    let peft = match &cfg.lora {
        Some(l) => format!(
            "from peft import LoraConfig\npeft_config = LoraConfig(r={}, lora_alpha={}, lora_dropout={}, target_modules={}, task_type=\"{}\")\n",
            l.r,
            py_f(l.lora_alpha),
            py_f(l.lora_dropout),
            match &l.target_modules {
                crate::engine::model::lora::TargetModules::Preset(p) => format!("{p:?}"),
                crate::engine::model::lora::TargetModules::Names(n) => format!("{n:?}"),
            },
            if cfg.method == Method::Rm {
                "SEQ_CLS"
            } else {
                "CAUSAL_LM"
            }
        ),
        None => "peft_config = None\n".into(),
    };
    let eval = if cfg.data.eval.is_some() {
        "eval_dataset = load_dataset(\"json\", data_files=os.path.join(HERE, \"data\", \"eval.jsonl\"), split=\"train\")\n"
    } else {
        "eval_dataset = None\n"
    };
    let mut kwargs = vec!["model=MODEL".to_string()];
    kwargs.extend(plan.trainer_kwargs.iter().cloned());
    kwargs.extend([
        "args=args".to_string(),
        "train_dataset=train_dataset".into(),
        "eval_dataset=eval_dataset".into(),
        "peft_config=peft_config".into(),
    ]);
    // The callback reads GRPO's generations from the trainer for the Samples pane.
    let trainer_arg = if cfg.method == Method::Grpo {
        "trainer=trainer, "
    } else {
        ""
    };
    format!(
        r#""""{name}: exported by `rlft export` from an rlft {method} config. TRL's names throughout;
see NOT_CARRIED.md for what rlft settings have no TRL equivalent.

    pip install trl peft tensorboard
    python train.py [--out DIR]          # rlft watch DIR follows it live
"""
import argparse
import os
import sys

import torch
from datasets import load_dataset
from trl import {config_class}, {trainer_class}

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from rlft_callback import RlftCallback  # noqa: E402

MODEL = {model:?}
{prelude}
parser = argparse.ArgumentParser()
parser.add_argument("--out", default=os.path.join(HERE, "run"))
OUT = parser.parse_args().out
{peft}
train_dataset = load_dataset("json", data_files=os.path.join(HERE, "data", "train.jsonl"), split="train")
{eval}
args = {config_class}(
    {args}
)
trainer = {trainer_class}(
    {kwargs}
)
trainer.add_callback(RlftCallback(OUT, {trainer_arg}method={method:?}, name={name:?}))
trainer.train()
"#,
        config_class = plan.config_class,
        trainer_class = plan.trainer_class,
        prelude = plan.prelude,
        model = model.display().to_string(),
        args = args.join(",\n    "),
        kwargs = kwargs.join(",\n    "),
    )
}
