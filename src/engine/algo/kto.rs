//! KTO (Ethayarajh et al. 2024; TRL's `KTOTrainer`): preference learning from unpaired
//! examples, each answer marked desirable or not (`{"prompt", "completion", "label": bool}`,
//! TRL's unpaired preference format), against a frozen reference. The KL baseline is TRL's:
//! each prompt paired with another example's completion, scored by the policy and the
//! reference, averaged over the batch, clamped at 0 and not differentiated.
//!
//! ```toml
//! method = "kto"
//! [kto]
//! beta = 0.1
//! desirable_weight = 1.0
//! undesirable_weight = 1.0
//! ```

pub use crate::engine::config::methods::KtoSection;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use super::losses;
use super::preference::{self, Overlong, PairOptions, PreferencePair, Saver};
use super::state;
use super::{TrainError, TrainOutcome, scalar};
use crate::engine::config::RunConfig;
use crate::engine::data::{EpochSampler, Prompt};
use crate::engine::events::{Event, LogLevel, RunStatus};
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{self, Heads, host_f32};
use crate::engine::optim::Optimizer;
use crate::engine::run::RunContext;
use burn::prelude::*;

impl KtoSection {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(format!(
                "[kto] beta must be a positive number, not {}",
                self.beta
            ));
        }
        for (name, w) in [
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(format!("[kto] {name} must be a number >= 0, not {w}"));
            }
        }
        Ok(())
    }
}

/// One labelled answer: the prompt and completion tokens (in `PreferencePair`'s `prompt` and
/// `chosen`) and whether it is desirable.
struct Example {
    tokens: PreferencePair,
    desirable: bool,
}

/// Reads `{"prompt", "completion", "label"}` rows (plain text); a preference row
/// `{"prompt", "chosen", "rejected"}` gives two (TRL's `unpair_preference_dataset`). Rows too
/// long are cut as DPO cuts them; rows left with no completion are dropped and counted.
fn load(
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &PairOptions,
) -> Result<(Vec<Example>, usize), TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    let mut dropped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| TrainError::Invalid(format!("{}:{}: {msg}", path.display(), i + 1));
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let field = |name: &str| -> Result<String, TrainError> {
            row.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    at(format!(
                        "KTO rows need a text `{name}` (`prompt`, `completion`, `label`)"
                    ))
                })
        };
        let prompt = field("prompt")?;
        let answers: Vec<(String, bool)> = if row.get("chosen").is_some() {
            vec![(field("chosen")?, true), (field("rejected")?, false)]
        } else {
            let desirable = row
                .get("label")
                .and_then(|v| v.as_bool())
                .ok_or_else(|| at("`label` must be true (desirable) or false".into()))?;
            vec![(field("completion")?, desirable)]
        };
        for (completion, desirable) in answers {
            let tokens = preference::tokenize_pair(
                &Prompt::Text(prompt.clone()),
                &Prompt::Text(completion.clone()),
                &Prompt::Text(completion),
                None,
                tokenizer,
            )
            .map_err(at)?;
            match preference::fit(tokens, opts) {
                Some(tokens) => out.push(Example { tokens, desirable }),
                None => dropped += 1,
            }
        }
    }
    Ok((out, dropped))
}

/// The batch as pairs for one forward pass: `chosen` is each example's own completion,
/// `rejected` the previous example's (TRL's mismatched pairs for the KL baseline).
fn batch_pairs(rows: &[&Example]) -> Vec<PreferencePair> {
    let b = rows.len();
    (0..b)
        .map(|i| {
            let other = &rows[(i + b - 1) % b].tokens;
            PreferencePair {
                rejected: other.chosen.clone(),
                rejected_text: other.chosen_text.clone(),
                ..rows[i].tokens.clone()
            }
        })
        .collect()
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let k = cfg.kto.clone().unwrap_or_default();
    k.validate().map_err(TrainError::Invalid)?;
    let train_cfg = &cfg.train;
    let train_device = cfg.train.train_device(device, false);
    let plain = device.clone().without_autodiff();
    let loaded = super::load_trained_model(cfg, &train_device, Heads::Lm, ctx)?;
    let tokenizer = loaded.tokenizer.clone().ok_or_else(|| {
        TrainError::Invalid(format!(
            "{}: the model has no tokenizer.json; KTO needs one to read text",
            cfg.model.path.display()
        ))
    })?;
    let model_cfg = loaded.config.clone();
    let opts = PairOptions {
        max_length: train_cfg.max_length.min(model_cfg.max_position_embeddings),
        max_prompt_length: k.max_prompt_length,
        overlong: Overlong::Truncate,
    };
    let (train, dropped) = load(&cfg.data.train, &tokenizer, &opts)?;
    if dropped > 0 {
        ctx.log(
            LogLevel::Warn,
            format!(
                "{}: {dropped} rows had no completion left after truncation and were dropped",
                cfg.data.train.display()
            ),
        );
    }
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no labelled examples",
            cfg.data.train.display()
        )));
    }
    let pad = preference::pad_id(&tokenizer);
    // With LoRA: the base without its adapters, sharing the frozen weights.
    let reference = model::lora::without_adapters(loaded.model.valid());
    let mut policy = loaded.model;
    let mut optim = Optimizer::new(cfg.optim.clone());
    let mut sampler = EpochSampler::new(train.len(), cfg.seed);
    let (mut num_tokens, mut step) = (0usize, 0);
    if let Some(r) = state::resume(
        ctx,
        &train_device,
        Heads::Lm,
        cfg.frozen_dtype(),
        Optimizer::new(cfg.optim.clone()),
        train.len(),
        cfg.seed,
    )? {
        (policy, optim, sampler, step, num_tokens) =
            (r.model, r.optim, r.sampler, r.step, r.num_tokens);
    }
    let (bs, total) = (train_cfg.per_device_train_batch_size, train_cfg.max_steps);
    let saver = Saver {
        config: &model_cfg,
        tokenizer: &tokenizer,
        generation_config: &loaded.generation_config,
    };
    ctx.send(Event::Started {
        run: ctx.id.clone(),
        method: cfg.method.name().into(),
        run_dir: ctx.dir.path.clone(),
        total_steps: total,
        model: Some(crate::engine::model::lora::summary(&policy)),
    });
    ctx.status(RunStatus::Running);
    let desirable = train.iter().filter(|e| e.desirable).count();
    ctx.log(
        LogLevel::Info,
        format!(
            "KTO: {} examples ({desirable} desirable, {} undesirable), batch {bs}, beta {}",
            train.len(),
            train.len() - desirable,
            k.beta
        ),
    );

    while step < total {
        if saver.obey(&policy, ctx, step, (&sampler, &optim, num_tokens))? {
            return Ok(RunStatus::Stopped);
        }
        let started = Instant::now();
        let idx = sampler.next_batch(bs);
        let rows: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
        let b = rows.len();
        let pairs = batch_pairs(&rows);
        let refs: Vec<&PreferencePair> = pairs.iter().collect();
        num_tokens += refs.iter().map(|p| p.num_tokens()).sum::<usize>();
        // Reference sums for the examples and the mismatched pairs, then the policy's.
        let ref_sums = host_f32(super::dpo::forward(&reference, &refs, pad, &plain).0);
        let (sums, _, _) = super::dpo::forward(&policy, &refs, pad, &train_device);
        let policy_kl = host_f32(sums.clone().narrow(0, b, b).detach());
        let kl = (policy_kl
            .iter()
            .zip(&ref_sums[b..])
            .map(|(p, r)| (p - r) as f64)
            .sum::<f64>()
            / b as f64)
            .max(0.0);
        let ref_own =
            Tensor::<1>::from_data(TensorData::new(ref_sums[..b].to_vec(), [b]), &train_device);
        let labels: Vec<bool> = rows.iter().map(|e| e.desirable).collect();
        let policy_own = sums.narrow(0, 0, b);
        let own_logps = host_f32(policy_own.clone().detach());
        let out = losses::kto_loss(
            policy_own,
            ref_own,
            kl,
            &labels,
            k.beta,
            k.desirable_weight,
            k.undesirable_weight,
        );
        let value = scalar(out.loss.clone());
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: step + 1,
                value,
            });
        }
        let grads = burn::optim::GradientsParams::from_grads(out.loss.backward(), &policy);
        let lr = cfg.optim.lr_at(step, total);
        let (next, grad_norm) = optim.step(lr, policy, grads);
        policy = next;
        step += 1;

        let pick = |want: bool| -> Vec<f64> {
            own_logps
                .iter()
                .zip(&labels)
                .filter(|(_, d)| **d == want)
                .map(|(l, _)| *l as f64)
                .collect()
        };
        let mut values = BTreeMap::new();
        values.insert("loss".into(), value);
        values.insert("kl".into(), kl);
        let (chosen, rejected) = (mean(&out.chosen_rewards), mean(&out.rejected_rewards));
        if let Some(c) = chosen {
            values.insert("rewards/chosen".into(), c);
        }
        if let Some(r) = rejected {
            values.insert("rewards/rejected".into(), r);
        }
        if let (Some(c), Some(r)) = (chosen, rejected) {
            values.insert("rewards/margins".into(), c - r);
        }
        if let Some(l) = mean(&pick(true)) {
            values.insert("logps/chosen".into(), l);
        }
        if let Some(l) = mean(&pick(false)) {
            values.insert("logps/rejected".into(), l);
        }
        values.insert("num_tokens".into(), num_tokens as f64);
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        values.insert("epoch".into(), (step * bs) as f64 / train.len() as f64);
        values.insert("step_time".into(), started.elapsed().as_secs_f64());
        ctx.metrics(step, values);
        saver.after_step(
            &policy,
            ctx,
            step,
            train_cfg,
            (&sampler, &optim, num_tokens),
        )?;
    }
    saver.save(&policy, ctx, step, true, (&sampler, &optim, num_tokens))?;
    Ok(RunStatus::Finished)
}
