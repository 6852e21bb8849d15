//! The one loop of the on-policy methods (GRPO and its variants, PPO, online DPO, on-policy
//! distillation). Every step runs a method's phases — sample prompts, generate, score,
//! advantages, update ([`OnPolicy::step`]) — and the loop owns what the methods share: the
//! start, the user's commands (pause, save, stop), held-out evaluation, metrics, samples,
//! the best checkpoint and periodic, resumable checkpoints.
//!
//! A method is a struct holding its settings, prompts, reward sources and frozen models; the
//! policy, its optimizer and the data position are the loop's ([`Policy`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;

use super::state::{self, TrainerState};
use super::{TrainError, TrainOutcome};
use crate::engine::config::RunConfig;
use crate::engine::data::EpochSampler;
use crate::engine::events::{Event, LogLevel, RunStatus, SampleRecord};
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{self, CausalLm, Heads, ModelConfig, hf};
use crate::engine::optim::Optimizer;
use crate::engine::run::{Control, RunContext};

/// The model being trained and where its training stands.
pub struct Policy {
    /// Empty only while the optimizer holds the model during [`Policy::apply`].
    slot: Option<CausalLm>,
    pub optim: Optimizer,
    pub sampler: EpochSampler,
    /// Optimizer steps done.
    pub step: usize,
    pub num_tokens: usize,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub generation_config: Option<serde_json::Value>,
    /// The checkpoint the run resumed from, where a method finds its own saved state.
    pub resumed_from: Option<PathBuf>,
}

/// The policy as loaded, before the run knows its data (and so before resuming).
pub struct LoadedPolicy {
    pub model: CausalLm,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub generation_config: Option<serde_json::Value>,
}

impl LoadedPolicy {
    /// Loads `[model]` (with `[lora]` or a saved adapter) on the training device; `method`
    /// names the method in the error when the model has no tokenizer.
    pub fn load(
        cfg: &RunConfig,
        device: &Device,
        ctx: &RunContext,
        method: &str,
    ) -> Result<Self, TrainError> {
        let loaded = super::load_trained_model(cfg, device, Heads::Lm, ctx)?;
        let tokenizer = loaded.tokenizer.ok_or_else(|| {
            TrainError::Invalid(format!(
                "{}: {method} needs a tokenizer",
                cfg.model.path.display()
            ))
        })?;
        Ok(Self {
            model: loaded.model,
            config: loaded.config,
            tokenizer,
            generation_config: loaded.generation_config,
        })
    }

    /// The pad token rollouts and batches use: the tokenizer's, else its first EOS.
    pub fn pad_id(&self) -> u32 {
        self.tokenizer
            .pad_id()
            .or_else(|| self.tokenizer.eos_ids().first().copied())
            .unwrap_or(0)
    }

    /// The policy ready to train on `data_len` prompts: fresh, or where the checkpoint the
    /// run resumes from left it (weights, optimizer, data position, step).
    pub fn start(
        self,
        cfg: &RunConfig,
        device: &Device,
        ctx: &mut RunContext,
        data_len: usize,
    ) -> Result<Policy, TrainError> {
        let resumed_from = ctx.resume_from.clone();
        let mut policy = Policy {
            slot: Some(self.model),
            optim: Optimizer::new(cfg.optim.clone()),
            sampler: EpochSampler::new(data_len, cfg.seed),
            step: 0,
            num_tokens: 0,
            config: self.config,
            tokenizer: self.tokenizer,
            generation_config: self.generation_config,
            resumed_from,
        };
        if let Some(r) = state::resume(
            ctx,
            device,
            Heads::Lm,
            cfg.frozen_dtype(),
            Optimizer::new(cfg.optim.clone()),
            data_len,
            cfg.seed,
        )? {
            policy.slot = Some(r.model);
            (policy.optim, policy.sampler, policy.step, policy.num_tokens) =
                (r.optim, r.sampler, r.step, r.num_tokens);
        }
        Ok(policy)
    }
}

impl Policy {
    /// The model being trained.
    pub fn model(&self) -> &CausalLm {
        self.slot
            .as_ref()
            .expect("the policy is back in its slot after every optimizer step")
    }

    /// A no-grad copy to sample from (adapters merged where that is faster).
    pub fn for_generation(&self) -> CausalLm {
        model::lora::for_generation(self.model())
    }

    /// Held-out metrics of the policy as it is now, by `evaluator` with the run's `sources`.
    pub fn evaluate(
        &self,
        evaluator: &super::rollout::Evaluator,
        sources: &mut [(Box<dyn crate::engine::reward::RewardSource>, f32)],
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        evaluator.run(self.model(), sources, &self.tokenizer, &self.config)
    }

    /// The learning rate of the coming step.
    pub fn learning_rate(&self, cfg: &RunConfig) -> f64 {
        cfg.optim.lr_at(self.step, cfg.train.max_steps)
    }

    /// One optimizer step with `grads`; returns the gradient norm before clipping.
    pub fn apply(&mut self, lr: f64, grads: burn::optim::GradientsParams) -> f32 {
        let model = self
            .slot
            .take()
            .expect("the policy is back in its slot after every optimizer step");
        // Owned, so the optimizer can update parameters in place.
        let (next, norm) = self.optim.step(lr, model, grads);
        self.slot = Some(next);
        norm
    }

    /// Ends the run with a clear error when the coming step's loss is not a number.
    pub fn check_finite(&self, ctx: &RunContext, loss: f64) -> Result<(), TrainError> {
        if loss.is_finite() {
            return Ok(());
        }
        let step = self.step + 1;
        ctx.send(Event::Failed {
            run: ctx.id.clone(),
            step: Some(step),
            error: format!("loss is {loss} at step {step}"),
        });
        Err(TrainError::NonFinite { step, value: loss })
    }
}

/// What a step reports: its metrics (the loop adds `step_time`, `num_tokens` and any eval)
/// and the samples the Samples pane shows for it.
#[derive(Default)]
pub struct StepReport {
    pub values: BTreeMap<String, f64>,
    pub samples: Vec<SampleRecord>,
}

/// An on-policy method: its phases, its held-out evaluation and what its checkpoints hold
/// besides the policy.
pub trait OnPolicy {
    /// The line logged when the run starts (data, batch shape, the settings that matter).
    fn describe(&self) -> String;

    /// One step: sample prompts, generate, score, advantages, update the policy. `None` when
    /// there was nothing to train on yet (online DPO waiting for labels): no optimizer step
    /// was taken and nothing is logged.
    fn step(
        &mut self,
        policy: &mut Policy,
        ctx: &mut RunContext,
    ) -> Result<Option<StepReport>, TrainError>;

    /// Held-out metrics of the policy as it is now; empty when the run has no eval set.
    fn evaluate(&mut self, policy: &Policy) -> Result<BTreeMap<String, f64>, TrainError>;

    /// Whether `[train] eval_before_train` applies (RL methods; preference methods evaluate
    /// from their first `eval_steps` on, as DPO does).
    fn evaluates_before_training(&self) -> bool {
        true
    }

    /// Writes what a resume needs besides the policy and its optimizer into the checkpoint
    /// folder `dir` (a value model, ...) and returns the trainer state's `extra`.
    fn save_extra(&self, _dir: &Path) -> Result<serde_json::Value, TrainError> {
        Ok(serde_json::Value::Null)
    }
}

/// Runs `method` until `[train] max_steps` or a stop, then saves the final checkpoint.
pub fn drive(
    cfg: &RunConfig,
    ctx: &mut RunContext,
    policy: &mut Policy,
    method: &mut dyn OnPolicy,
) -> TrainOutcome {
    let train = &cfg.train;
    ctx.send(Event::Started {
        run: ctx.id.clone(),
        method: cfg.method.name().into(),
        run_dir: ctx.dir.path.clone(),
        total_steps: train.max_steps,
        model: Some(model::lora::summary(policy.model())),
    });
    ctx.status(RunStatus::Running);
    ctx.log(LogLevel::Info, method.describe());
    if policy.resumed_from.is_none()
        && train.eval_before_train
        && method.evaluates_before_training()
    {
        let metrics = method.evaluate(policy)?;
        if !metrics.is_empty() {
            ctx.metrics(0, metrics);
        }
    }
    while policy.step < train.max_steps {
        match ctx.poll() {
            Control::Stop => {
                save(policy, method, ctx, true)?;
                return Ok(RunStatus::Stopped);
            }
            Control::Save => {
                save(policy, method, ctx, false)?;
                // Asked while paused: the run waits again before its next step.
                continue;
            }
            Control::Continue => {}
        }
        let started = Instant::now();
        let Some(report) = method.step(policy, ctx)? else {
            continue;
        };
        policy.step += 1;
        let step = policy.step;
        let StepReport {
            mut values,
            samples,
        } = report;
        values.insert("num_tokens".into(), policy.num_tokens as f64);
        values.insert("step_time".into(), started.elapsed().as_secs_f64());
        if train.eval_steps > 0 && step.is_multiple_of(train.eval_steps) {
            values.extend(method.evaluate(policy)?);
        }
        ctx.metrics(step, values);
        super::save_best_if_improved(
            ctx,
            step,
            policy.model(),
            &policy.config,
            &policy.tokenizer,
            &policy.generation_config,
        )?;
        if !samples.is_empty() {
            ctx.samples(step, samples);
        }
        if train.save_steps > 0 && step.is_multiple_of(train.save_steps) && step < train.max_steps {
            save(policy, method, ctx, false)?;
            if let Err(e) = ctx.dir.prune_checkpoints(train.save_total_limit) {
                ctx.log(LogLevel::Warn, format!("pruning old checkpoints: {e}"));
            }
        }
    }
    save(policy, method, ctx, true)?;
    Ok(RunStatus::Finished)
}

/// Saves the policy as a Hugging Face folder under `checkpoints/` (`final` at the end or on
/// a stop) with what a resume needs, and reports it.
fn save(
    policy: &Policy,
    method: &dyn OnPolicy,
    ctx: &mut RunContext,
    is_final: bool,
) -> Result<(), TrainError> {
    let dir = if is_final {
        ctx.dir.final_dir()
    } else {
        ctx.dir.checkpoint_dir(policy.step)
    };
    hf::save_dir(
        &dir,
        &policy.config,
        policy.model(),
        Some(&policy.tokenizer),
        policy.generation_config.as_ref(),
    )?;
    let mut state = TrainerState::capture(
        policy.step,
        &policy.sampler,
        policy.num_tokens,
        ctx.wall_time(),
        policy.model(),
    );
    state.extra = method.save_extra(&dir)?;
    // Written last: the state file is what marks the checkpoint resumable.
    state.save(&dir, &policy.optim)?;
    ctx.send(Event::Checkpoint {
        run: ctx.id.clone(),
        step: policy.step,
        path: dir,
    });
    Ok(())
}
