//! Reward model (TRL's `RewardTrainer`): the policy architecture with a scalar `score` head
//! (created fresh when the checkpoint has none), trained on preference pairs with the
//! Bradley-Terry loss `−log σ(r_chosen − r_rejected − margin)` (+ an optional centring term).
//! A sequence's reward is the head's value at its last real token. The saved checkpoint keeps
//! the head as `score.weight`, which PPO and reward sources load with `Heads::Score`.

pub use crate::engine::config::methods::RmSection;
use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::preference::{self, Overlong, PairOptions, PreferencePair, Saver};
use super::sequences::last_token_scores;
use super::state;
use super::{TrainError, TrainOutcome, losses, scalar};
use crate::engine::config::RunConfig;
use crate::engine::data::EpochSampler;
use crate::engine::events::{Event, LogLevel, RunStatus, SampleRecord};
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{CausalLm, Heads, host_f32};
use crate::engine::optim::Optimizer;
use crate::engine::run::RunContext;

/// Held-out pairs shown in the Samples pane at each eval, with their rewards.
const SAMPLE_PAIRS: usize = 4;

impl RmSection {
    pub fn validate(&self) -> Result<(), String> {
        match self.center_rewards_coefficient {
            Some(c) if !(c.is_finite() && c >= 0.0) => Err(format!(
                "[rm] center_rewards_coefficient must be a number >= 0, not {c}"
            )),
            _ => Ok(()),
        }
    }
}

/// Pairwise statistics with TRL's names (without a prefix).
#[derive(Clone, Debug, Default)]
pub struct PairStats {
    pub loss_sum: f64,
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
}

impl PairStats {
    fn add(&mut self, loss: f64, chosen: &[f32], rejected: &[f32]) {
        self.loss_sum += loss * chosen.len() as f64;
        self.chosen.extend_from_slice(chosen);
        self.rejected.extend_from_slice(rejected);
    }

    /// `loss`, `accuracy`, `margin`, `min_reward`, `mean_reward`, `max_reward`, each name
    /// preceded by `prefix` (TRL: "" for training, "eval_" for eval).
    pub fn metrics(&self, prefix: &str) -> BTreeMap<String, f64> {
        let n = self.chosen.len().max(1) as f64;
        let pairs = self.chosen.iter().zip(&self.rejected);
        let correct = pairs.clone().filter(|(c, r)| c > r).count() as f64;
        let margin = pairs.map(|(c, r)| (c - r) as f64).sum::<f64>() / n;
        let all: Vec<f32> = self.chosen.iter().chain(&self.rejected).copied().collect();
        let (mean, min, max) = preference::stats(&all);
        [
            ("loss", self.loss_sum / n),
            ("accuracy", correct / n),
            ("margin", margin),
            ("min_reward", min),
            ("mean_reward", mean),
            ("max_reward", max),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
    }
}

/// Bradley-Terry loss (a differentiable scalar) and the rewards of one batch of pairs.
pub(super) struct BatchOut {
    pub(super) loss: Tensor<1>,
    pub(super) chosen: Vec<f32>,
    pub(super) rejected: Vec<f32>,
}

pub(super) fn pair_loss(
    model: &CausalLm,
    pairs: &[&PreferencePair],
    use_margin: bool,
    center: Option<f64>,
    pad: u32,
    device: &Device,
) -> BatchOut {
    let b = pairs.len();
    let batch = preference::pair_batch(pairs, pad, device);
    let scores = last_token_scores(model, &batch);
    let r_chosen = scores.clone().narrow(0, 0, b);
    let r_rejected = scores.clone().narrow(0, b, b);
    let margin = preference::margins(pairs, use_margin, device);
    let loss = losses::bt_loss(r_chosen, r_rejected, margin, center);
    let host = host_f32(scores.detach());
    BatchOut {
        loss,
        chosen: host[..b].to_vec(),
        rejected: host[b..].to_vec(),
    }
}

/// Rewards and loss over all held-out pairs, with a no-grad model.
pub fn evaluate(
    model: &CausalLm,
    pairs: &[PreferencePair],
    batch_size: usize,
    use_margin: bool,
    center: Option<f64>,
    pad: u32,
    device: &Device,
) -> PairStats {
    let device = device.clone().without_autodiff();
    let mut stats = PairStats::default();
    for chunk in pairs.chunks(batch_size.max(1)) {
        let rows: Vec<&PreferencePair> = chunk.iter().collect();
        let out = pair_loss(model, &rows, use_margin, center, pad, &device);
        stats.add(scalar(out.loss), &out.chosen, &out.rejected);
    }
    stats
}

/// Loads the pairs of one file; overlong pairs are dropped (their last token, where the
/// reward is read, would be cut) and reported.
fn load(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    max_length: usize,
    ctx: &RunContext,
) -> Result<Vec<PreferencePair>, TrainError> {
    let opts = PairOptions {
        max_length,
        max_prompt_length: max_length,
        overlong: Overlong::Drop,
    };
    let (pairs, dropped) = preference::load_pairs(path, tokenizer, &opts)?;
    if dropped > 0 {
        ctx.log(
            LogLevel::Warn,
            format!(
                "{}: {dropped} pairs longer than max_length {max_length} were dropped",
                path.display()
            ),
        );
    }
    Ok(pairs)
}

/// The training pairs (at least one left after the length limit) and the held-out pairs.
fn load_splits(
    cfg: &RunConfig,
    tokenizer: &Tokenizer,
    max_length: usize,
    ctx: &RunContext,
) -> Result<(Vec<PreferencePair>, Vec<PreferencePair>), TrainError> {
    let train = load(&cfg.data.train, tokenizer, max_length, ctx)?;
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no preference pairs left (every pair was longer than max_length {max_length})",
            cfg.data.train.display()
        )));
    }
    let eval = match &cfg.data.eval {
        Some(p) => load(p, tokenizer, max_length, ctx)?,
        None => Vec::new(),
    };
    Ok((train, eval))
}

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let rm = cfg.rm.clone().unwrap_or_default();
    rm.validate().map_err(TrainError::Invalid)?;
    let center = rm.center_rewards_coefficient.filter(|&c| c > 0.0);
    let train_cfg = &cfg.train;
    let train_device = cfg.train.train_device(device, false);
    let loaded = super::load_trained_model(cfg, &train_device, Heads::Score, ctx)?;
    let tokenizer = loaded.tokenizer.clone().ok_or_else(|| {
        TrainError::Invalid(format!(
            "{}: the model has no tokenizer.json; a reward model needs one to read text",
            cfg.model.path.display()
        ))
    })?;
    let model_cfg = loaded.config.clone();
    let max_length = train_cfg.max_length.min(model_cfg.max_position_embeddings);
    let (train, eval) = load_splits(cfg, &tokenizer, max_length, ctx)?;
    let use_margin = train.iter().any(|p| p.margin.is_some());
    let pad = preference::pad_id(&tokenizer);
    let mut model = loaded.model;
    let mut optim = Optimizer::new(cfg.optim.clone());
    let mut sampler = EpochSampler::new(train.len(), cfg.seed);
    let (bs, ga, total) = (
        train_cfg.per_device_train_batch_size,
        train_cfg.gradient_accumulation_steps,
        train_cfg.max_steps,
    );
    let mut num_tokens = 0usize;
    let mut step = 0;
    if let Some(r) = state::resume(
        ctx,
        &train_device,
        Heads::Score,
        cfg.frozen_dtype(),
        Optimizer::new(cfg.optim.clone()),
        train.len(),
        cfg.seed,
    )? {
        (model, optim, sampler, step, num_tokens) =
            (r.model, r.optim, r.sampler, r.step, r.num_tokens);
    }
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
        model: Some(crate::engine::model::lora::summary(&model)),
    });
    ctx.status(RunStatus::Running);
    ctx.log(
        LogLevel::Info,
        format!(
            "reward model: {} pairs ({} held out), batch {bs} pairs x {ga} accumulation, \
             margin {}, centring {:?}",
            train.len(),
            eval.len(),
            if use_margin { "on" } else { "off" },
            center
        ),
    );
    let eval_every = train_cfg.eval_steps;
    // The untrained head's accuracy, as a baseline.
    if eval_every > 0 && !eval.is_empty() && step == 0 {
        let stats = evaluate(
            &model.valid(),
            &eval,
            bs,
            use_margin,
            center,
            pad,
            &train_device,
        );
        ctx.metrics(0, stats.metrics("eval_"));
        ctx.samples(0, eval_samples(&eval, &stats, 0));
    }

    while step < total {
        if saver.obey(&model, ctx, step, (&sampler, &optim, num_tokens))? {
            return Ok(RunStatus::Stopped);
        }
        let started = Instant::now();
        let mut accumulator = GradientsAccumulator::<CausalLm>::new();
        let mut stats = PairStats::default();
        for _ in 0..ga {
            let idx = sampler.next_batch(bs);
            let rows: Vec<&PreferencePair> = idx.iter().map(|&i| &train[i]).collect();
            num_tokens += rows.iter().map(|p| p.num_tokens()).sum::<usize>();
            let out = pair_loss(&model, &rows, use_margin, center, pad, &train_device);
            let value = scalar(out.loss.clone());
            if !value.is_finite() {
                ctx.send(Event::Failed {
                    run: ctx.id.clone(),
                    step: Some(step + 1),
                    error: format!("loss is {value} at step {}", step + 1),
                });
                return Err(TrainError::NonFinite {
                    step: step + 1,
                    value,
                });
            }
            stats.add(value, &out.chosen, &out.rejected);
            let grads = GradientsParams::from_grads(
                super::layerwise::scaled(out.loss / ga as f32).backward(),
                &model,
            );
            accumulator.accumulate(&model, grads);
        }
        let lr = cfg.optim.lr_at(step, total);
        let (next, grad_norm) = optim.step(lr, model, accumulator.grads());
        model = next;
        step += 1;

        let mut values = stats.metrics("");
        values.insert("num_tokens".into(), num_tokens as f64);
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        values.insert("epoch".into(), (step * bs * ga) as f64 / train.len() as f64);
        values.insert("step_time".into(), started.elapsed().as_secs_f64());
        let mut samples = None;
        if eval_every > 0 && step % eval_every == 0 && !eval.is_empty() {
            let stats = evaluate(
                &model.valid(),
                &eval,
                bs,
                use_margin,
                center,
                pad,
                &train_device,
            );
            values.extend(stats.metrics("eval_"));
            samples = Some(eval_samples(&eval, &stats, step));
        }
        ctx.metrics(step, values);
        if let Some(s) = samples {
            ctx.samples(step, s);
        }
        if train_cfg.save_steps > 0 && step % train_cfg.save_steps == 0 && step < total {
            saver.save(&model, ctx, step, false, (&sampler, &optim, num_tokens))?;
            if let Err(e) = ctx.dir.prune_checkpoints(train_cfg.save_total_limit) {
                ctx.log(LogLevel::Warn, format!("pruning old checkpoints: {e}"));
            }
        }
    }
    saver.save(&model, ctx, step, true, (&sampler, &optim, num_tokens))?;
    Ok(RunStatus::Finished)
}

/// The first held-out pairs, chosen then rejected, each with its reward.
fn eval_samples(eval: &[PreferencePair], stats: &PairStats, step: usize) -> Vec<SampleRecord> {
    let mut out = Vec::new();
    for (i, p) in eval.iter().take(SAMPLE_PAIRS).enumerate() {
        for (label, text, reward) in [
            ("chosen", &p.chosen_text, stats.chosen[i]),
            ("rejected", &p.rejected_text, stats.rejected[i]),
        ] {
            out.push(SampleRecord {
                step,
                prompt: p.prompt_text.clone(),
                completion: text.clone(),
                rewards: BTreeMap::from([(label.to_string(), reward as f64)]),
                advantage: None,
            });
        }
    }
    out
}
