//! `rlft export CONFIG --engine trl OUT/`: an rlft GRPO config as a runnable TRL script, for
//! when a run outgrows one machine. The script keeps TRL's names for every setting that has
//! one, copies the data (rlft's JSONL is TRL's prompt format already), writes the shipped
//! checkers as Python reward functions, maps `[lora]` to PEFT, and reports to rlft through
//! `integrations/trl/rlft_callback.py`. What does not carry over is listed, never dropped in
//! silence.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::engine::config::{Method, RunConfig, methods};
use crate::engine::reward::RewardConfig;
use crate::engine::tasks::AnswerKind;

/// What an export wrote and what it could not carry over.
#[derive(Debug, Default)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub not_carried: Vec<String>,
}

/// The callback the exported script reports through, shipped inside the binary so an export
/// works from anywhere.
const CALLBACK: &str = include_str!("../../integrations/trl/rlft_callback.py");

/// Writes `out/train.py`, `out/data/`, `out/rlft_callback.py` and `out/NOT_CARRIED.md`.
pub fn to_trl(cfg: &RunConfig, config_dir: &Path, out: &Path) -> Result<Exported, String> {
    if cfg.method != Method::Grpo {
        return Err(format!(
            "exporting method \"{}\" to TRL is not supported yet (GRPO is)",
            cfg.method.name()
        ));
    }
    let g = cfg.grpo.clone().unwrap_or_default();
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            config_dir.join(p)
        }
    };
    let model = resolve(&cfg.model.path);
    let mut report = Exported::default();
    if model.extension().is_some_and(|e| e == "gguf") {
        report.not_carried.push(format!(
            "[model] path = {}: TRL loads Hugging Face folders; convert it first with \
             `rlft convert {} DIR` and point `MODEL` in train.py at DIR",
            model.display(),
            model.display()
        ));
    }
    std::fs::create_dir_all(out.join("data")).map_err(|e| format!("{}: {e}", out.display()))?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf, String> {
        let to = out.join("data").join(name);
        std::fs::copy(resolve(from), &to)
            .map_err(|e| format!("copying {}: {e}", resolve(from).display()))?;
        Ok(to)
    };
    report.files.push(copy(&cfg.data.train, "train.jsonl")?);
    if let Some(e) = &cfg.data.eval {
        report.files.push(copy(e, "eval.jsonl")?);
    }
    let (rewards, weights) = reward_functions(cfg, &mut report.not_carried);
    not_carried_grpo(&g, &mut report.not_carried);
    let script = script(cfg, &g, &model, &rewards, &weights);
    for (name, text) in [
        ("train.py", script.as_str()),
        ("rlft_callback.py", CALLBACK),
        ("NOT_CARRIED.md", &not_carried_text(&report.not_carried)),
    ] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        report.files.push(path);
    }
    Ok(report)
}

/// The `[[rewards]]` rlft can write as Python (the answer checkers), their names and weights.
fn reward_functions(
    cfg: &RunConfig,
    not_carried: &mut Vec<String>,
) -> (String, Vec<(String, f32)>) {
    let mut code = String::new();
    let mut weights = Vec::new();
    for r in &cfg.rewards {
        match r {
            RewardConfig::ExactMatch(c)
                if matches!(
                    c.check,
                    AnswerKind::Auto | AnswerKind::Integer | AnswerKind::Word | AnswerKind::Text
                ) =>
            {
                code.push_str(EXACT_MATCH);
                weights.push(("exact_match".to_string(), c.weight));
            }
            RewardConfig::Format(c)
                if matches!(c.check, AnswerKind::Auto | AnswerKind::Integer) =>
            {
                let _ = write!(
                    code,
                    "{}",
                    FORMAT.replace("MAX_CHARS", &c.max_chars.unwrap_or(8).to_string())
                );
                weights.push(("format".to_string(), c.weight));
            }
            other => not_carried.push(format!(
                "[[rewards]] {}: no Python version is written; add it to reward_funcs in train.py",
                crate::engine::config::setting_name(other)
                    .chars()
                    .take(80)
                    .collect::<String>()
            )),
        }
    }
    (code, weights)
}

const EXACT_MATCH: &str = r#"
def exact_match(completions, answer, **kwargs):
    """rlft's `exact_match`: 1 when the first line of the completion, trimmed, is the answer
    (as integers when both are)."""
    out = []
    for c, a in zip(completions, answer):
        line = c.split("\n")[0].strip()
        try:
            out.append(1.0 if int(line) == int(a) else 0.0)
        except ValueError:
            out.append(1.0 if line == a.strip() else 0.0)
    return out
"#;

const FORMAT: &str = r#"
def format(completions, **kwargs):
    """rlft's `format` for integer answers: 1 when the first line is a short integer."""
    out = []
    for c in completions:
        first = c.split("\n")[0]
        s = first.strip()
        digits = s[1:] if s.startswith("-") else s
        out.append(1.0 if len(first) <= MAX_CHARS and digits.isdigit() else 0.0)
    return out
"#;

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

fn not_carried_text(items: &[String]) -> String {
    let mut s = String::from("# What did not carry over from the rlft config\n\n");
    if items.is_empty() {
        s.push_str("Everything did.\n");
    }
    for i in items {
        let _ = writeln!(s, "- {i}");
    }
    s
}

fn py_f(v: f64) -> String {
    format!("{v:?}")
}

fn script(
    cfg: &RunConfig,
    g: &methods::GrpoSection,
    model: &Path,
    rewards: &str,
    weights: &[(String, f32)],
) -> String {
    let t = &cfg.train;
    let o = &cfg.optim;
    let name = cfg.name();
    let scheduler = crate::engine::config::setting_name(&o.lr_scheduler_type);
    let mut args = vec![
        format!("output_dir=OUT"),
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
        format!("lr_scheduler_type={scheduler:?}"),
        format!("warmup_steps={}", o.warmup_steps),
        format!("max_grad_norm={:?}", o.max_grad_norm),
        format!("weight_decay={:?}", o.weight_decay),
        format!("seed={}", cfg.seed),
        format!("num_generations={}", g.num_generations),
        format!("max_completion_length={}", g.max_completion_length),
        format!("temperature={:?}", g.temperature),
        format!("top_p={:?}", g.top_p),
        format!("beta={}", py_f(g.beta)),
        format!("epsilon={:?}", g.epsilon),
        format!(
            "loss_type={:?}",
            crate::engine::config::setting_name(&g.loss_type)
        ),
        format!(
            "scale_rewards={:?}",
            crate::engine::config::setting_name(&g.scale_rewards)
        ),
        format!(
            "importance_sampling_level={:?}",
            crate::engine::config::setting_name(&g.importance_sampling_level)
        ),
        format!("num_iterations={}", g.num_iterations),
        format!(
            "mask_truncated_completions={}",
            if g.mask_truncated_completions {
                "True"
            } else {
                "False"
            }
        ),
        format!("top_entropy_quantile={}", py_f(g.top_entropy_quantile)),
        format!(
            "reward_weights=[{}]",
            weights
                .iter()
                .map(|(_, w)| format!("{w:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "logging_steps=1".into(),
        // TRL trains in bf16 on a GPU and refuses bf16 on a CPU.
        "bf16=torch.cuda.is_available()".into(),
        "use_cpu=not torch.cuda.is_available()".into(),
        "report_to=[\"tensorboard\"]".into(),
    ];
    if g.top_k > 0 {
        args.push(format!("top_k={}", g.top_k));
    }
    if let Some(e) = g.epsilon_high {
        args.push(format!("epsilon_high={e:?}"));
    }
    if t.save_steps > 0 {
        args.push(format!("save_steps={}", t.save_steps));
    }
    if cfg.data.eval.is_some() && t.eval_steps > 0 {
        args.push("eval_strategy=\"steps\"".into());
        args.push(format!("eval_steps={}", t.eval_steps));
    }
    let peft = match &cfg.lora {
        Some(l) => format!(
            "from peft import LoraConfig\npeft_config = LoraConfig(r={}, lora_alpha={}, lora_dropout={}, target_modules={}, task_type=\"CAUSAL_LM\")\n",
            l.r,
            py_f(l.lora_alpha),
            py_f(l.lora_dropout),
            match &l.target_modules {
                crate::engine::model::lora::TargetModules::Preset(p) => format!("{p:?}"),
                crate::engine::model::lora::TargetModules::Names(n) => format!("{n:?}"),
            }
        ),
        None => "peft_config = None\n".into(),
    };
    let funcs = weights
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let eval = if cfg.data.eval.is_some() {
        "eval_dataset = load_dataset(\"json\", data_files=os.path.join(HERE, \"data\", \"eval.jsonl\"), split=\"train\")\n"
    } else {
        "eval_dataset = None\n"
    };
    format!(
        r#""""{name}: exported by `rlft export` from an rlft GRPO config. TRL's names throughout;
see NOT_CARRIED.md for what rlft settings have no TRL equivalent.

    pip install trl peft tensorboard
    python train.py [--out DIR]          # rlft watch DIR follows it live
"""
import argparse
import os
import sys

import torch
from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from rlft_callback import RlftCallback  # noqa: E402

MODEL = {model:?}
{rewards}
parser = argparse.ArgumentParser()
parser.add_argument("--out", default=os.path.join(HERE, "run"))
OUT = parser.parse_args().out
{peft}
train_dataset = load_dataset("json", data_files=os.path.join(HERE, "data", "train.jsonl"), split="train")
{eval}
args = GRPOConfig(
    {args}
)
trainer = GRPOTrainer(
    model=MODEL,
    reward_funcs=[{funcs}],
    args=args,
    train_dataset=train_dataset,
    eval_dataset=eval_dataset,
    peft_config=peft_config,
)
trainer.add_callback(RlftCallback(OUT, trainer=trainer, method="grpo", name={name:?}))
trainer.train()
"#,
        model = model.display().to_string(),
        args = args.join(",\n    "),
    )
}
