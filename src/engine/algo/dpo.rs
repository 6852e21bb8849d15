//! DPO (Direct Preference Optimization, Rafailov et al. 2023; TRL's `DPOTrainer`): the policy
//! is trained on preference pairs to raise `β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) −
//! log π_ref(y_l))]`, with the sigmoid, IPO, hinge or robust loss, optional label smoothing and
//! an optional RPO term (`rpo_alpha` × the NLL of the chosen tokens).
//!
//! The reference model never changes, so its log-probabilities are computed once, for the
//! whole training and eval sets, with a no-grad copy of the starting policy (`model.valid()`)
//! and cached (TRL's `precompute_ref_log_probs`). Training then needs one forward pass per
//! batch instead of two, and no second model is kept in memory; a resumed run only has to
//! redo that one pass.

pub use crate::engine::config::methods::DpoSection;
use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::layerwise::{self, HeadExtras};
use super::losses::{self, DpoLoss};
use super::preference::{self, Overlong, PairOptions, PreferencePair, Saver};
use super::sequences::{SeqBatch, score, sequence_logprob};
use super::state;
use super::{TrainError, TrainOutcome, scalar};
use crate::engine::config::RunConfig;
use crate::engine::data::EpochSampler;
use crate::engine::events::{Event, LogLevel, RunStatus};
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{self, CausalLm, Heads, host_f32};
use crate::engine::optim::Optimizer;
use crate::engine::run::RunContext;

/// Pairs scored together when caching reference log-probabilities and at eval.
const SCORE_BATCH: usize = 32;

impl DpoSection {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(format!(
                "[dpo] beta must be a number > 0, not {}",
                self.beta
            ));
        }
        let ls = self.label_smoothing;
        let limit_ok = match self.loss_type {
            DpoLoss::Robust => ls < 0.5,
            _ => ls <= 0.5,
        };
        if !(ls >= 0.0 && limit_ok) {
            return Err(format!(
                "[dpo] label_smoothing must be in [0, 0.5{} for loss_type \"{}\", not {ls}",
                if self.loss_type == DpoLoss::Robust {
                    ")"
                } else {
                    "]"
                },
                crate::engine::config::setting_name(&self.loss_type)
            ));
        }
        if let Some(a) = self.rpo_alpha
            && !(a.is_finite() && a >= 0.0)
        {
            return Err(format!("[dpo] rpo_alpha must be a number >= 0, not {a}"));
        }
        if self.max_prompt_length == 0 {
            return Err("[dpo] max_prompt_length must be positive".into());
        }
        Ok(())
    }

    /// IPO compares length-normalised log-probabilities (TRL); the others use sums.
    fn normalise(&self) -> bool {
        self.loss_type == DpoLoss::Ipo
    }
}

/// A pair with the cached reference log-probability sums of its two completions.
pub(super) struct RefPair {
    pub(super) pair: PreferencePair,
    pub(super) ref_chosen: f32,
    pub(super) ref_rejected: f32,
}

/// Sums of completion-token log-probabilities, `[2B]` (chosen rows then rejected rows), and the
/// per-token log-probabilities for the RPO term.
pub(super) fn forward(
    model: &CausalLm,
    pairs: &[&PreferencePair],
    pad: u32,
    device: &Device,
) -> (Tensor<1>, Tensor<2>, Tensor<2>) {
    let batch = preference::pair_batch(pairs, pad, device);
    let scored = score(model, &batch, 1.0);
    let sums = sequence_logprob(scored.logprobs.clone(), batch.completion_mask.clone());
    (sums, scored.logprobs, batch.completion_mask)
}

/// Reference log-probability sums of every pair, with the no-grad starting policy.
pub(super) fn cache_reference(
    reference: &CausalLm,
    pairs: Vec<PreferencePair>,
    pad: u32,
    device: &Device,
) -> Vec<RefPair> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut pending = pairs.into_iter().peekable();
    while pending.peek().is_some() {
        let chunk: Vec<PreferencePair> = pending.by_ref().take(SCORE_BATCH).collect();
        let rows: Vec<&PreferencePair> = chunk.iter().collect();
        let b = rows.len();
        let sums = host_f32(forward(reference, &rows, pad, device).0);
        for (i, pair) in chunk.into_iter().enumerate() {
            out.push(RefPair {
                pair,
                ref_chosen: sums[i],
                ref_rejected: sums[b + i],
            });
        }
    }
    out
}

/// What one batch contributes to the metrics.
#[derive(Default)]
pub(super) struct DpoStats {
    loss_sum: f64,
    nll_sum: f64,
    chosen_rewards: Vec<f32>,
    rejected_rewards: Vec<f32>,
    chosen_logps: Vec<f32>,
    rejected_logps: Vec<f32>,
}

impl DpoStats {
    /// TRL's names, each preceded by `prefix` ("" for training, "eval_" for eval).
    pub(super) fn metrics(&self, prefix: &str, with_nll: bool) -> BTreeMap<String, f64> {
        let n = self.chosen_rewards.len().max(1) as f64;
        let mean = |v: &[f32]| preference::stats(v).0;
        let pairs = self.chosen_rewards.iter().zip(&self.rejected_rewards);
        let correct = pairs.clone().filter(|(c, r)| c > r).count() as f64;
        let margin = pairs.map(|(c, r)| (c - r) as f64).sum::<f64>() / n;
        let mut out = vec![
            ("loss", self.loss_sum / n),
            ("rewards/chosen", mean(&self.chosen_rewards)),
            ("rewards/rejected", mean(&self.rejected_rewards)),
            ("rewards/accuracies", correct / n),
            ("rewards/margins", margin),
            ("logps/chosen", mean(&self.chosen_logps)),
            ("logps/rejected", mean(&self.rejected_logps)),
        ];
        if with_nll {
            out.push(("nll_loss", self.nll_sum / n));
        }
        out.into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect()
    }
}

/// Loss (differentiable) of one batch, and its statistics added to `stats`.
pub(super) fn batch_loss(
    model: &CausalLm,
    rows: &[&RefPair],
    d: &DpoSection,
    pad: u32,
    device: &Device,
    stats: &mut DpoStats,
) -> Result<Tensor<1>, TrainError> {
    let pairs: Vec<&PreferencePair> = rows.iter().map(|r| &r.pair).collect();
    let batch = preference::pair_batch(&pairs, pad, device);
    let scored = score(model, &batch, 1.0);
    pairs_loss(scored.logprobs, &batch, rows, d, device, stats)
}

/// Gradients of [`batch_loss`] (times `scale`) for `model`'s trainable parameters, and the
/// loss's value; `recompute` as `layerwise::logprob_grads` takes it.
pub(super) fn batch_grads(
    model: &CausalLm,
    rows: &[&RefPair],
    d: &DpoSection,
    (pad, device): (u32, &Device),
    stats: &mut DpoStats,
    scale: f32,
    recompute: Option<usize>,
) -> Result<(GradientsParams, f64), TrainError> {
    let pairs: Vec<&PreferencePair> = rows.iter().map(|r| &r.pair).collect();
    let batch = preference::pair_batch(&pairs, pad, device);
    let (grads, value, ()) = layerwise::logprob_grads(
        model,
        (&batch).into(),
        1.0,
        HeadExtras::default(),
        recompute,
        |out| {
            let loss = pairs_loss(out.logprobs, &batch, rows, d, device, stats)?;
            Ok::<_, TrainError>((loss * scale, ()))
        },
    )?;
    Ok((grads, value / scale as f64))
}

/// The DPO loss of `rows` given the policy's target log-probabilities over their
/// `[chosen..., rejected...]` batch; records its statistics in `stats`.
fn pairs_loss(
    logprobs: Tensor<2>,
    batch: &SeqBatch,
    rows: &[&RefPair],
    d: &DpoSection,
    device: &Device,
    stats: &mut DpoStats,
) -> Result<Tensor<1>, TrainError> {
    let b = rows.len();
    let pairs: Vec<&PreferencePair> = rows.iter().map(|r| &r.pair).collect();
    let mask = batch.completion_mask.clone();
    let mut sums = sequence_logprob(logprobs.clone(), mask.clone());
    let mut ref_c: Vec<f32> = rows.iter().map(|r| r.ref_chosen).collect();
    let mut ref_r: Vec<f32> = rows.iter().map(|r| r.ref_rejected).collect();
    if d.normalise() {
        let lengths: Vec<f32> = pairs
            .iter()
            .map(|p| p.chosen.len() as f32)
            .chain(pairs.iter().map(|p| p.rejected.len() as f32))
            .collect();
        for i in 0..b {
            ref_c[i] /= lengths[i];
            ref_r[i] /= lengths[b + i];
        }
        sums = sums / Tensor::<1>::from_data(TensorData::new(lengths, [2 * b]), device);
    }
    let constant = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [b]), device);
    let pi_c = sums.clone().narrow(0, 0, b);
    let pi_r = sums.clone().narrow(0, b, b);
    let out = losses::dpo(
        pi_c,
        pi_r,
        constant(ref_c),
        constant(ref_r),
        d.beta,
        d.label_smoothing,
        d.loss_type,
    )?;
    let mut loss = out.losses.mean();
    if let Some(alpha) = d.rpo_alpha.filter(|&a| a > 0.0) {
        let nll = losses::demo_nll(logprobs.narrow(0, 0, b), mask.narrow(0, 0, b));
        stats.nll_sum += scalar(nll.clone().detach()) * b as f64;
        loss = loss + nll * alpha;
    }
    // Weighted by pairs so eval over uneven chunks averages correctly.
    stats.loss_sum += scalar(loss.clone().detach()) * b as f64;
    stats.chosen_rewards.extend(host_f32(out.chosen_rewards));
    stats
        .rejected_rewards
        .extend(host_f32(out.rejected_rewards));
    let logps = host_f32(sums.detach());
    stats.chosen_logps.extend_from_slice(&logps[..b]);
    stats.rejected_logps.extend_from_slice(&logps[b..]);
    Ok(loss)
}

fn evaluate(
    model: &CausalLm,
    eval: &[RefPair],
    d: &DpoSection,
    pad: u32,
    device: &Device,
) -> Result<DpoStats, TrainError> {
    let mut stats = DpoStats::default();
    for chunk in eval.chunks(SCORE_BATCH) {
        let rows: Vec<&RefPair> = chunk.iter().collect();
        batch_loss(model, &rows, d, pad, device, &mut stats)?;
    }
    Ok(stats)
}

fn load(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    opts: &PairOptions,
    ctx: &RunContext,
) -> Result<Vec<PreferencePair>, TrainError> {
    let (pairs, dropped) = preference::load_pairs(path, tokenizer, opts)?;
    if dropped > 0 {
        ctx.log(
            LogLevel::Warn,
            format!(
                "{}: {dropped} pairs had an empty completion after truncation to {} tokens \
                 and were dropped",
                path.display(),
                opts.max_length
            ),
        );
    }
    Ok(pairs)
}

/// The training pairs (at least one) and the held-out pairs (none without `[data] eval`).
fn load_splits(
    cfg: &RunConfig,
    tokenizer: &Tokenizer,
    opts: &PairOptions,
    ctx: &RunContext,
) -> Result<(Vec<PreferencePair>, Vec<PreferencePair>), TrainError> {
    let train = load(&cfg.data.train, tokenizer, opts, ctx)?;
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no preference pairs",
            cfg.data.train.display()
        )));
    }
    let eval = match &cfg.data.eval {
        Some(p) => load(p, tokenizer, opts, ctx)?,
        None => Vec::new(),
    };
    Ok((train, eval))
}

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let d = cfg.dpo.clone().unwrap_or_default();
    d.validate().map_err(TrainError::Invalid)?;
    let train_cfg = &cfg.train;
    let train_device = cfg.train.train_device(device, true);
    let plain = device.clone().without_autodiff();
    let loaded = super::load_trained_model(cfg, &train_device, Heads::Lm, ctx)?;
    let tokenizer = loaded.tokenizer.clone().ok_or_else(|| {
        TrainError::Invalid(format!(
            "{}: the model has no tokenizer.json; DPO needs one to read text",
            cfg.model.path.display()
        ))
    })?;
    let model_cfg = loaded.config.clone();
    let opts = PairOptions {
        max_length: train_cfg.max_length.min(model_cfg.max_position_embeddings),
        max_prompt_length: d.max_prompt_length,
        overlong: Overlong::Truncate,
    };
    let (train, eval) = load_splits(cfg, &tokenizer, &opts, ctx)?;
    let pad = preference::pad_id(&tokenizer);
    // With LoRA: the base without its adapters, sharing the frozen weights.
    let reference = model::lora::without_adapters(loaded.model.valid());
    let mut policy = loaded.model;
    let mut optim = Optimizer::new(cfg.optim.clone());
    let mut sampler = EpochSampler::new(train.len(), cfg.seed);
    let mut num_tokens = 0usize;
    let mut step = 0;
    // Resuming: the policy continues from the checkpoint; the reference is still the
    // starting model, so its cache is recomputed from `[model] path`.
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
    let (bs, ga, total) = (
        train_cfg.per_device_train_batch_size,
        train_cfg.gradient_accumulation_steps,
        train_cfg.max_steps,
    );
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
    let cache_started = Instant::now();
    let train = cache_reference(&reference, train, pad, &plain);
    let eval = cache_reference(&reference, eval, pad, &plain);
    drop(reference);
    ctx.log(
        LogLevel::Info,
        format!(
            "DPO: {} pairs ({} held out), batch {bs} pairs x {ga} accumulation, beta {}, loss \
             {}{}; reference log-probs cached in {:.1}s",
            train.len(),
            eval.len(),
            d.beta,
            crate::engine::config::setting_name(&d.loss_type),
            d.rpo_alpha
                .map(|a| format!(", rpo_alpha {a}"))
                .unwrap_or_default(),
            cache_started.elapsed().as_secs_f64()
        ),
    );
    let with_nll = d.rpo_alpha.is_some_and(|a| a > 0.0);

    while step < total {
        if saver.obey(&policy, ctx, step, (&sampler, &optim, num_tokens))? {
            return Ok(RunStatus::Stopped);
        }
        let started = Instant::now();
        let mut accumulator = GradientsAccumulator::<CausalLm>::new();
        let mut stats = DpoStats::default();
        for _ in 0..ga {
            let idx = sampler.next_batch(bs);
            let rows: Vec<&RefPair> = idx.iter().map(|&i| &train[i]).collect();
            num_tokens += rows.iter().map(|r| r.pair.num_tokens()).sum::<usize>();
            let (grads, value) = batch_grads(
                &policy,
                &rows,
                &d,
                (pad, &train_device),
                &mut stats,
                1.0 / ga as f32,
                train_cfg.recompute(),
            )?;
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
            accumulator.accumulate(&policy, grads);
        }
        let lr = cfg.optim.lr_at(step, total);
        let (next, grad_norm) = optim.step(lr, policy, accumulator.grads());
        policy = next;
        step += 1;

        let mut values = stats.metrics("", with_nll);
        values.insert("num_tokens".into(), num_tokens as f64);
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        values.insert("epoch".into(), (step * bs * ga) as f64 / train.len() as f64);
        values.insert("step_time".into(), started.elapsed().as_secs_f64());
        if train_cfg.eval_steps > 0 && step % train_cfg.eval_steps == 0 && !eval.is_empty() {
            let stats = evaluate(&policy.valid(), &eval, &d, pad, &plain)?;
            values.extend(stats.metrics("eval_", with_nll));
        }
        ctx.metrics(step, values);
        if cfg.samples.every > 0 && step % cfg.samples.every == 0 && !cfg.samples.prompts.is_empty()
        {
            match super::lm::sample_prompts(&policy.valid(), &tokenizer, &model_cfg, cfg, step) {
                Ok(s) => ctx.samples(step, s),
                Err(e) => ctx.log(LogLevel::Warn, format!("sampling failed: {e}")),
            }
        }
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
