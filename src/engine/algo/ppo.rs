//! PPO for RLHF as TRL's experimental `PPOTrainer` (`trl/experimental/ppo/ppo_trainer.py`),
//! with the legacy adaptive KL controller (Ziegler et al. 2019, TRL v0.11).
//!
//! Each step: one completion per prompt from the policy; the frozen reference's and the
//! rollout policy's token log-probabilities; a per-token reward `−β·KL_t` with the sequence
//! score (reward sources, minus `missing_eos_penalty` when the completion was cut off) added
//! at the last completion token; values from a separate value model (the policy architecture
//! with a scalar head); GAE; whitened advantages; then `num_ppo_epochs` passes of clipped
//! policy and value losses over `num_mini_batches` shuffled mini-batches. Policy and value
//! model have their own optimizers; the loss is TRL's `pg_loss + vf_coef · vf_loss`.
//!
//! Batch sizes follow TRL: a rollout is `per_device_train_batch_size ×
//! gradient_accumulation_steps × num_mini_batches` prompts; each mini-batch is one optimizer
//! step, accumulated over micro-batches of `per_device_train_batch_size`.
//!
//! One difference from TRL's batched loop: TRL adds the score one position past the last
//! token where the padded tensor has room for it (and at the last token otherwise); here it
//! is always the last completion token, as verl and OpenRLHF do, so a row's reward does not
//! depend on how long the other rows in its batch are.

pub use crate::engine::config::methods::{AdaptiveKlSection, PpoSection};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::losses::{self, AdaptiveKl, FixedKl, KlController};
use super::onpolicy::{self, LoadedPolicy, OnPolicy, Policy, StepReport};
use super::rollout::{
    self, Evaluator, PromptItem, Rewards, Rollout, compute_rewards, load_prompts,
};
use super::sequences::{SeqBatch, score};
use super::state::{self, TrainerState};
use super::{TrainError, TrainOutcome, masked_mean, scalar};
use crate::engine::config::RunConfig;
use crate::engine::events::LogLevel;
use crate::engine::model::{self, CausalLm, Heads, ModelConfig, hf, host_f32};
use crate::engine::optim::Optimizer;
use crate::engine::reward::RewardSource;
use crate::engine::run::RunContext;
use crate::engine::sample::{FinishReason, SamplingParams};

/// Samples shown per step in the Samples pane.
const SAMPLES_PER_STEP: usize = 8;
/// Rows per no-grad forward pass when scoring a rollout (TRL's
/// `local_rollout_forward_batch_size` default).
const ROLLOUT_FORWARD_BATCH: usize = 64;

impl PpoSection {
    fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Invalid(format!("[ppo] {m}")));
        if self.response_length == 0 {
            return bad("response_length must be at least 1".into());
        }
        if self.num_ppo_epochs == 0 || self.num_mini_batches == 0 {
            return bad("num_ppo_epochs and num_mini_batches must be at least 1".into());
        }
        for (name, v) in [
            ("kl_coef", self.kl_coef),
            ("vf_coef", self.vf_coef),
            ("cliprange", self.cliprange),
            ("cliprange_value", self.cliprange_value),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be a finite number >= 0, got {v}"));
            }
        }
        for (name, v) in [("gamma", self.gamma), ("lam", self.lam)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        if let Some(p) = self.missing_eos_penalty
            && !p.is_finite()
        {
            return bad(format!("missing_eos_penalty must be finite, got {p}"));
        }
        if let Some(lr) = self.value_learning_rate
            && !(lr.is_finite() && lr > 0.0)
        {
            return bad(format!("value_learning_rate must be positive, got {lr}"));
        }
        Ok(())
    }

    fn kl_controller(&self) -> Result<KlController, TrainError> {
        Ok(match &self.adaptive_kl {
            Some(a) => KlController::Adaptive(AdaptiveKl::new(self.kl_coef, a.target, a.horizon)?),
            None => KlController::Fixed(FixedKl {
                value: self.kl_coef,
            }),
        })
    }
}

/// Where each row's completion sits in the shifted `[B, T − 1]` frame of a [`SeqBatch`]:
/// target index `prompt_len − 1 + t` is completion token `t`.
#[derive(Clone, Copy, Debug)]
struct Span {
    offset: usize,
    len: usize,
}

/// Per-token rollout quantities, one `Vec` per row of completion length.
struct Experience {
    old_logprobs: Vec<Vec<f32>>,
    old_values: Vec<Vec<f32>>,
    advantages: Vec<Vec<f32>>,
    returns: Vec<Vec<f32>>,
}

/// The rollout's TRL `objective/*` figures.
struct RolloutStats {
    kl: f64,
    entropy: f64,
    non_score_reward: f64,
    scores: f64,
}

/// Copies each row's span out of a `[B, W]` tensor.
fn take_spans(t: Tensor<2>, spans: &[Span]) -> Vec<Vec<f32>> {
    let w = t.dims()[1];
    let host = host_f32(t);
    spans
        .iter()
        .enumerate()
        .map(|(i, s)| host[i * w + s.offset..i * w + s.offset + s.len].to_vec())
        .collect()
}

/// Lays rows out at their spans in a zero `[B, width]` tensor.
fn place_spans(rows: &[&[f32]], spans: &[Span], width: usize, device: &Device) -> Tensor<2> {
    let mut data = vec![0.0f32; rows.len() * width];
    for (i, (r, s)) in rows.iter().zip(spans).enumerate() {
        data[i * width + s.offset..i * width + s.offset + s.len].copy_from_slice(r);
    }
    Tensor::from_data(TensorData::new(data, [rows.len(), width]), device)
}

/// [`losses::whiten`] over all rows' tokens together (TRL whitens the whole batch).
fn whiten_rows(rows: &[Vec<f32>], shift_mean: bool, device: &Device) -> Vec<Vec<f32>> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let spans: Vec<Span> = rows
        .iter()
        .map(|r| Span {
            offset: 0,
            len: r.len(),
        })
        .collect();
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let values = place_spans(&refs, &spans, width, device);
    let ones: Vec<Vec<f32>> = rows.iter().map(|r| vec![1.0; r.len()]).collect();
    let ones: Vec<&[f32]> = ones.iter().map(Vec::as_slice).collect();
    let mask = place_spans(&ones, &spans, width, device);
    take_spans(losses::whiten(values, mask, shift_mean), &spans)
}

fn spans_of(prompts: &[&[u32]], completions: &[&[u32]]) -> Vec<Span> {
    prompts
        .iter()
        .zip(completions)
        .map(|(p, c)| Span {
            offset: p.len().saturating_sub(1),
            len: c.len(),
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Unbiased variance (TRL's `torch.var`), 0 for fewer than two values.
fn var(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
}

/// Log-probabilities under the rollout policy and the reference, the value model's values,
/// rewards, GAE advantages (whitened) and returns for one rollout.
#[allow(clippy::too_many_arguments)]
fn experience(
    policy: &CausalLm,
    reference: &CausalLm,
    value_model: &CausalLm,
    prompts: &[&[u32]],
    completions: &[&[u32]],
    scores: &[f32],
    p: &PpoSection,
    beta: f64,
    pad: u32,
    device: &Device,
) -> Result<(Experience, RolloutStats), TrainError> {
    let n = prompts.len();
    let mut old_logprobs = Vec::with_capacity(n);
    let mut ref_kl = Vec::with_capacity(n);
    let mut old_values = Vec::with_capacity(n);
    for start in (0..n).step_by(ROLLOUT_FORWARD_BATCH) {
        let end = (start + ROLLOUT_FORWARD_BATCH).min(n);
        let (ps, cs) = (&prompts[start..end], &completions[start..end]);
        let spans = spans_of(ps, cs);
        let batch = SeqBatch::new(ps, cs, pad, device);
        let lp = score(policy, &batch, p.temperature).logprobs;
        let ref_lp = score(reference, &batch, p.temperature).logprobs;
        let kl = p.kl_estimator.per_token(lp.clone(), ref_lp);
        let values = value_scores(value_model, &batch)?;
        old_logprobs.extend(take_spans(lp, &spans));
        ref_kl.extend(take_spans(kl, &spans));
        old_values.extend(take_spans(values, &spans));
    }

    let mut rewards: Vec<Vec<f32>> = ref_kl
        .iter()
        .map(|kl| kl.iter().map(|&k| (-beta * k as f64) as f32).collect())
        .collect();
    let per_seq = |rows: &[Vec<f32>], f: &dyn Fn(f32) -> f64| -> f64 {
        mean(
            &rows
                .iter()
                .map(|r| r.iter().map(|&x| f(x)).sum::<f64>())
                .collect::<Vec<_>>(),
        )
    };
    let stats = RolloutStats {
        kl: per_seq(&ref_kl, &|x| x as f64),
        entropy: per_seq(&old_logprobs, &|x| -(x as f64)),
        non_score_reward: per_seq(&rewards, &|x| x as f64),
        scores: mean(&scores.iter().map(|&s| s as f64).collect::<Vec<_>>()),
    };
    for (r, &s) in rewards.iter_mut().zip(scores) {
        if let Some(last) = r.last_mut() {
            *last += s;
        }
    }
    if p.whiten_rewards {
        rewards = whiten_rows(&rewards, false, device);
    }
    let (advantages, returns) = losses::gae(&rewards, &old_values, p.gamma, p.lam)?;
    let advantages = whiten_rows(&advantages, true, device);
    Ok((
        Experience {
            old_logprobs,
            old_values,
            advantages,
            returns,
        },
        stats,
    ))
}

/// The value model's scalar head at each shifted position `[B, T − 1]`: the value of the
/// state before each target token.
fn value_scores(value_model: &CausalLm, batch: &SeqBatch) -> Result<Tensor<2>, TrainError> {
    let t = batch.ids.dims()[1];
    let hidden = value_model.hidden(
        batch.ids.clone(),
        batch.positions.clone(),
        batch.valid.clone(),
        None,
    );
    let scores = value_model
        .scores(hidden)
        .ok_or_else(|| TrainError::Invalid("the value model has no score head".into()))?;
    Ok(scores.narrow(1, 0, t - 1))
}

/// Means of TRL's per-micro-batch training statistics over a step.
#[derive(Default)]
struct TrainStats {
    approxkl: Vec<f64>,
    pg_clipfrac: Vec<f64>,
    pg_loss: Vec<f64>,
    vf_loss: Vec<f64>,
    vf_clipfrac: Vec<f64>,
    entropy: Vec<f64>,
    ratio: Vec<f64>,
    grad_norm: Vec<f64>,
    value_grad_norm: Vec<f64>,
}

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let p = cfg.ppo.clone().unwrap_or_default();
    p.validate()?;
    let plain = device.clone().without_autodiff();
    let train_device = cfg.train.train_device(device, false);
    let loaded = LoadedPolicy::load(cfg, &train_device, ctx, "PPO")?;
    let value_model = load_value_model(&p, cfg, &loaded, &train_device)?;
    let (train, evaluator) = prompts(cfg, &p, &loaded)?;
    let (sources, rm_slot) = super::rlhf::build_sources(&cfg.rewards, &plain, cfg.frozen_dtype())?;
    if sources.is_empty() {
        return Err(TrainError::Invalid(
            "PPO needs at least one [[rewards]] source".into(),
        ));
    }
    let refresher = refresher(cfg, ctx, rm_slot)?;
    // With LoRA: the base without its adapters, sharing the frozen weights. A resumed run
    // keeps the original model as its reference.
    let reference = model::precision::store_frozen(
        model::lora::without_adapters(loaded.model.valid()),
        cfg.frozen_dtype(),
    );
    let pad = loaded.pad_id();
    let mut policy = loaded.start(cfg, &train_device, ctx, train.len())?;
    let micro = cfg.train.per_device_train_batch_size;
    let mini = micro * cfg.train.gradient_accumulation_steps;
    let mut method = Ppo {
        cfg,
        train: std::rc::Rc::new(train),
        config: policy.config.clone(),
        evaluator,
        sources,
        refresher,
        reference,
        value_model: Some(value_model),
        value_optim: Optimizer::new(cfg.optim.clone()),
        kl_ctl: p.kl_controller()?,
        rollout_size: mini * p.num_mini_batches,
        micro,
        mini,
        train_device,
        plain,
        pad,
        p,
    };
    if let Some(ck) = policy.resumed_from.clone() {
        method.resume(&ck)?;
    }
    onpolicy::drive(cfg, ctx, &mut policy, &mut method)
}

/// The value model (`[ppo] value_model`, else the policy's weights with a fresh scalar head),
/// which must read the policy's tokens.
fn load_value_model(
    p: &PpoSection,
    cfg: &RunConfig,
    policy: &LoadedPolicy,
    device: &Device,
) -> Result<CausalLm, TrainError> {
    let value_path = p.value_model.clone().unwrap_or(cfg.model.path.clone());
    let value_loaded = model::load(&value_path, device, Heads::Score)?;
    if value_loaded.config.vocab_size != policy.config.vocab_size {
        return Err(TrainError::Invalid(format!(
            "[ppo] value_model {}: vocabulary of {} tokens, but the policy has {}; the value \
             model reads the policy's tokens, so it must share its tokenizer",
            value_path.display(),
            value_loaded.config.vocab_size,
            policy.config.vocab_size
        )));
    }
    Ok(value_loaded.model)
}

/// The training prompts (each with at least one token) and the held-out evaluation.
fn prompts(
    cfg: &RunConfig,
    p: &PpoSection,
    policy: &LoadedPolicy,
) -> Result<(Vec<PromptItem>, Evaluator), TrainError> {
    let train = load_prompts(&cfg.data.train, &policy.tokenizer, p.chat, "")?;
    if let Some(i) = train.iter().position(|x| x.ids.is_empty()) {
        return Err(TrainError::Invalid(format!(
            "{}: prompt {} is empty after tokenisation; PPO needs at least one prompt token",
            cfg.data.train.display(),
            i + 1
        )));
    }
    let mut eval = match &cfg.data.eval {
        Some(path) => load_prompts(path, &policy.tokenizer, p.chat, "")?,
        None => Vec::new(),
    };
    if p.eval_max_items > 0 {
        eval.truncate(p.eval_max_items);
    }
    let evaluator = Evaluator {
        prompts: eval,
        params: sampling(p, cfg.seed),
        generations: cfg.train.num_eval_generations,
    };
    Ok((train, evaluator))
}

fn sampling(p: &PpoSection, seed: u64) -> SamplingParams {
    SamplingParams {
        max_new_tokens: p.response_length,
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        stop_strings: p.stop.clone(),
        seed,
    }
}

/// RLHF from live labels (`[rlhf]`): the reward model is retrained as people label pairs.
fn refresher(
    cfg: &RunConfig,
    ctx: &RunContext,
    rm_slot: Option<super::rlhf::RewardModelSlot>,
) -> Result<Option<super::rlhf::Refresher>, TrainError> {
    let refresher = match (&cfg.rlhf, rm_slot) {
        (Some(r), Some((base, slot))) => Some(super::rlhf::Refresher::new(
            r.clone(),
            &ctx.dir.path,
            base,
            slot,
            cfg.seed,
        )?),
        (Some(_), None) => {
            return Err(TrainError::Invalid(
                "[rlhf] retrains a reward model, but no [[rewards]] source has \
                 type = \"reward_model\""
                    .into(),
            ));
        }
        (None, _) => None,
    };
    if let Some(r) = &refresher {
        ctx.log(
            LogLevel::Info,
            format!(
                "RLHF: the reward model retrains every {} new labels in {}",
                r.retrain_every(),
                r.labels_path().display()
            ),
        );
    }
    Ok(refresher)
}

/// PPO as a configuration of the on-policy loop: one completion per prompt, a value model,
/// the KL to the reference in the per-token reward, GAE, and clipped policy and value losses
/// over shuffled mini-batches.
struct Ppo<'a> {
    cfg: &'a RunConfig,
    p: PpoSection,
    train: std::rc::Rc<Vec<PromptItem>>,
    /// The policy's architecture, which the value model shares.
    config: ModelConfig,
    evaluator: Evaluator,
    sources: Vec<(Box<dyn RewardSource>, f32)>,
    refresher: Option<super::rlhf::Refresher>,
    reference: CausalLm,
    /// Empty only while its optimizer holds it.
    value_model: Option<CausalLm>,
    value_optim: Optimizer,
    kl_ctl: KlController,
    rollout_size: usize,
    micro: usize,
    mini: usize,
    train_device: Device,
    plain: Device,
    pad: u32,
}

impl OnPolicy for Ppo<'_> {
    fn describe(&self) -> String {
        let p = &self.p;
        format!(
            "PPO: {} prompts ({} held out), {} completions per step in {} mini-batches x {} \
             epochs; value model from {}; KL coef {} ({})",
            self.train.len(),
            self.evaluator.prompts.len(),
            self.rollout_size,
            p.num_mini_batches,
            p.num_ppo_epochs,
            match &p.value_model {
                Some(v) => v.display().to_string(),
                None => "the policy, with a fresh head".into(),
            },
            p.kl_coef,
            match &p.adaptive_kl {
                Some(a) => format!("adaptive, target {} horizon {}", a.target, a.horizon),
                None => "fixed".into(),
            }
        )
    }

    fn step(
        &mut self,
        policy: &mut Policy,
        ctx: &mut RunContext,
    ) -> Result<Option<StepReport>, TrainError> {
        // Generate: one completion per prompt.
        let idx = policy.sampler.next_batch(self.rollout_size);
        // Shared, so the prompts stay borrowed while the method's other parts change.
        let train = std::rc::Rc::clone(&self.train);
        let prompts: Vec<&PromptItem> = idx.iter().map(|&i| &train[i]).collect();
        let step_params = SamplingParams {
            seed: self.cfg.seed.wrapping_add(policy.step as u64 * 7919),
            ..sampling(&self.p, self.cfg.seed)
        };
        let gen_started = Instant::now();
        let ro = rollout::rollout(
            &policy.for_generation(),
            &prompts,
            1,
            &step_params,
            &policy.tokenizer,
            &policy.config,
        )?;
        let gen_time = gen_started.elapsed().as_secs_f64();
        // Score: the reward model is refreshed first when new labels came in.
        let refresh_metrics = self.refresh_reward_model(ctx, policy.step);
        let rewards = compute_rewards(&mut self.sources, &prompts, &ro)?;
        let scores = penalised_scores(&rewards.total, &ro, self.p.missing_eos_penalty);
        let (prompt_rows, completion_rows) = ro.rows(&prompts);
        policy.num_tokens += prompt_rows.iter().map(|r| r.len()).sum::<usize>()
            + completion_rows.iter().map(|r| r.len()).sum::<usize>();
        // Advantages: KL-penalised per-token rewards, values, GAE.
        let beta = self.kl_ctl.value();
        let (exp, stats) = experience(
            &policy.model().valid(),
            &self.reference,
            &self.value_model().valid(),
            &prompt_rows,
            &completion_rows,
            &scores,
            &self.p,
            beta,
            self.pad,
            &self.plain,
        )?;
        // Update: policy and value model over shuffled mini-batches.
        let lr = policy.learning_rate(self.cfg);
        let ts = self.update(policy, ctx, &prompt_rows, &completion_rows, &exp, lr)?;
        self.kl_ctl.update(stats.kl, self.rollout_size);

        let mut values = self.metrics(&stats, &ts, beta, &ro, &rewards);
        values.insert("learning_rate".into(), lr);
        values.insert(
            "episode".into(),
            ((policy.step + 1) * self.rollout_size) as f64,
        );
        values.insert("timing/generation".into(), gen_time);
        if let Some(r) = &self.refresher {
            values.insert("reward_model/version".into(), r.version as f64);
        }
        values.extend(refresh_metrics);
        let samples = rollout::sample_records(
            policy.step + 1,
            &prompts,
            &ro,
            &rewards,
            None,
            SAMPLES_PER_STEP,
        );
        Ok(Some(StepReport { values, samples }))
    }

    fn evaluate(&mut self, policy: &Policy) -> Result<BTreeMap<String, f64>, TrainError> {
        policy.evaluate(&self.evaluator, &mut self.sources)
    }

    /// The value model in `value/`, its optimizer, and the KL controller and value parameter
    /// ids in the trainer state.
    fn save_extra(&self, dir: &Path) -> Result<serde_json::Value, TrainError> {
        let value_model = self.value_model();
        hf::save_dir(&dir.join(VALUE_DIR), &self.config, value_model, None, None)?;
        self.value_optim
            .save(&dir.join(VALUE_OPTIMIZER_FILE))
            .map_err(TrainError::Invalid)?;
        let extra = ResumeExtra {
            kl_controller: self.kl_ctl,
            value_param_ids: state::param_ids(value_model),
        };
        serde_json::to_value(extra)
            .map_err(|e| TrainError::Invalid(format!("serialising PPO state: {e}")))
    }
}

impl Ppo<'_> {
    fn value_model(&self) -> &CausalLm {
        self.value_model
            .as_ref()
            .expect("the value model is back after every optimizer step")
    }

    /// The value model, its optimizer and the KL coefficient where checkpoint `ck` left them.
    fn resume(&mut self, ck: &Path) -> Result<(), TrainError> {
        let state = TrainerState::load(ck)?;
        let extra: ResumeExtra = serde_json::from_value(state.extra.clone())
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", ck.display())))?;
        let weights = model::load(&ck.join(VALUE_DIR), &self.train_device, Heads::Score)?;
        self.value_model = Some(state::assign_param_ids(
            weights.model,
            &extra.value_param_ids,
        )?);
        self.value_optim = Optimizer::new(self.cfg.optim.clone())
            .load(&ck.join(VALUE_OPTIMIZER_FILE))
            .map_err(TrainError::Invalid)?;
        self.kl_ctl = extra.kl_controller;
        Ok(())
    }

    /// Retrains the reward model when enough new labels came in (`[rlhf]`); its metrics.
    fn refresh_reward_model(&mut self, ctx: &RunContext, step: usize) -> BTreeMap<String, f64> {
        let Some(r) = self.refresher.as_mut() else {
            return BTreeMap::new();
        };
        match r.maybe_refresh(&self.plain) {
            Ok(Some(m)) => {
                ctx.log(
                    LogLevel::Info,
                    format!(
                        "reward model v{} trained on {} labels; scoring with it from step {}",
                        r.version,
                        m.get("reward_model/labels").copied().unwrap_or(0.0),
                        step + 1
                    ),
                );
                m
            }
            Ok(None) => BTreeMap::new(),
            // A bad label file must not end a long PPO run: keep the current version.
            Err(e) => {
                ctx.log(LogLevel::Warn, format!("reward model refresh failed: {e}"));
                BTreeMap::new()
            }
        }
    }

    /// `num_ppo_epochs` passes over shuffled mini-batches; each mini-batch is one optimizer
    /// step of the policy and one of the value model, accumulated over micro-batches.
    fn update(
        &mut self,
        policy: &mut Policy,
        ctx: &RunContext,
        prompt_rows: &[&[u32]],
        completion_rows: &[&[u32]],
        exp: &Experience,
        lr: f64,
    ) -> Result<TrainStats, TrainError> {
        let p = &self.p;
        let accumulation = self.cfg.train.gradient_accumulation_steps;
        let value_lr_scale = p
            .value_learning_rate
            .map_or(1.0, |v| v / self.cfg.optim.learning_rate);
        let mut ts = TrainStats::default();
        let seed = self.cfg.seed ^ (policy.step as u64).wrapping_mul(0x9E37_79B9);
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..p.num_ppo_epochs {
            let mut order: Vec<usize> = (0..prompt_rows.len()).collect();
            order.shuffle(&mut rng);
            for mini_rows in order.chunks(self.mini) {
                let mut policy_acc = GradientsAccumulator::<CausalLm>::new();
                let mut value_acc = GradientsAccumulator::<CausalLm>::new();
                for rows in mini_rows.chunks(self.micro) {
                    let ps: Vec<&[u32]> = rows.iter().map(|&i| prompt_rows[i]).collect();
                    let cs: Vec<&[u32]> = rows.iter().map(|&i| completion_rows[i]).collect();
                    let loss = self.micro_loss(policy, &ps, &cs, rows, exp, &mut ts)?;
                    policy.check_finite(ctx, scalar(loss.clone()))?;
                    // Policy and value graphs are disjoint: one backward serves both.
                    let mut grads = super::layerwise::scaled(loss / accumulation as f32).backward();
                    policy_acc.accumulate(
                        policy.model(),
                        GradientsParams::from_module(&mut grads, policy.model()),
                    );
                    value_acc.accumulate(
                        self.value_model(),
                        GradientsParams::from_module(&mut grads, self.value_model()),
                    );
                }
                ts.grad_norm
                    .push(policy.apply(lr, policy_acc.grads()) as f64);
                let value_model = self
                    .value_model
                    .take()
                    .expect("the value model is back after every optimizer step");
                let (next, norm) =
                    self.value_optim
                        .step(lr * value_lr_scale, value_model, value_acc.grads());
                self.value_model = Some(next);
                ts.value_grad_norm.push(norm as f64);
            }
        }
        Ok(ts)
    }

    /// TRL's `pg_loss + vf_coef · vf_loss` on one micro-batch (`rows` of the rollout), with
    /// its statistics noted in `ts`.
    fn micro_loss(
        &self,
        policy: &Policy,
        ps: &[&[u32]],
        cs: &[&[u32]],
        rows: &[usize],
        exp: &Experience,
        ts: &mut TrainStats,
    ) -> Result<Tensor<1>, TrainError> {
        let p = &self.p;
        let spans = spans_of(ps, cs);
        let batch = SeqBatch::new(ps, cs, self.pad, &self.train_device);
        let width = batch.ids.dims()[1] - 1;
        let pick = |v: &[Vec<f32>]| {
            let r: Vec<&[f32]> = rows.iter().map(|&i| v[i].as_slice()).collect();
            place_spans(&r, &spans, width, &self.train_device)
        };
        let mask = batch.completion_mask.clone();
        let scored = super::sequences::score_with_entropy(policy.model(), &batch, p.temperature);
        ts.entropy.push(scalar(masked_mean(
            scored.entropy.clone().expect("asked for the entropy"),
            mask.clone(),
        )));
        let pg = losses::ppo_policy_loss(
            scored.logprobs,
            pick(&exp.old_logprobs),
            pick(&exp.advantages),
            mask.clone(),
            p.cliprange,
        );
        let values = value_scores(self.value_model(), &batch)?;
        let (vf_loss, vf_clipfrac) = losses::ppo_value_loss(
            values,
            pick(&exp.old_values),
            pick(&exp.returns),
            mask,
            p.cliprange_value,
        );
        ts.pg_loss.push(scalar(pg.loss.clone()));
        ts.vf_loss.push(scalar(vf_loss.clone()));
        ts.vf_clipfrac.push(vf_clipfrac);
        ts.approxkl.push(pg.approx_kl);
        ts.pg_clipfrac.push(pg.clipfrac);
        ts.ratio.push(pg.ratio_mean);
        Ok(pg.loss + vf_loss * p.vf_coef)
    }

    /// The step's metrics under TRL's `PPOTrainer` names.
    fn metrics(
        &self,
        stats: &RolloutStats,
        ts: &TrainStats,
        beta: f64,
        ro: &Rollout,
        rewards: &Rewards,
    ) -> BTreeMap<String, f64> {
        let mut values = BTreeMap::new();
        values.insert("objective/kl".into(), stats.kl);
        values.insert("objective/entropy".into(), stats.entropy);
        values.insert("objective/non_score_reward".into(), stats.non_score_reward);
        values.insert(
            "objective/rlhf_reward".into(),
            stats.non_score_reward + stats.scores,
        );
        values.insert("objective/scores".into(), stats.scores);
        values.insert("objective/kl_coef".into(), beta);
        values.insert("policy/approxkl_avg".into(), mean(&ts.approxkl));
        values.insert("policy/clipfrac_avg".into(), mean(&ts.pg_clipfrac));
        values.insert("loss/policy_avg".into(), mean(&ts.pg_loss));
        values.insert("loss/value_avg".into(), mean(&ts.vf_loss));
        values.insert("val/clipfrac_avg".into(), mean(&ts.vf_clipfrac));
        values.insert("policy/entropy_avg".into(), mean(&ts.entropy));
        values.insert("val/ratio".into(), mean(&ts.ratio));
        values.insert("val/ratio_var".into(), var(&ts.ratio));
        values.insert(
            "val/num_eos_tokens".into(),
            ro.finish
                .iter()
                .filter(|f| **f == FinishReason::Eos)
                .count() as f64,
        );
        rollout::reward_metrics(rewards, &mut values);
        let lengths: Vec<f64> = ro.tokens.iter().map(|t| t.len() as f64).collect();
        values.insert("completions/mean_length".into(), mean(&lengths));
        values.insert("grad_norm".into(), mean(&ts.grad_norm));
        values.insert("value/grad_norm".into(), mean(&ts.value_grad_norm));
        values
    }
}

/// The weighted reward total, less `penalty` for completions cut off at the length limit
/// (TRL's `missing_eos_penalty`; a stop string counts as a proper end).
fn penalised_scores(total: &[f32], ro: &Rollout, penalty: Option<f32>) -> Vec<f32> {
    total
        .iter()
        .zip(&ro.finish)
        .map(|(&s, f)| match (penalty, f) {
            (Some(pen), FinishReason::Length) => s - pen,
            _ => s,
        })
        .collect()
}

/// Value model folder inside a checkpoint (only needed to resume).
const VALUE_DIR: &str = "value";
const VALUE_OPTIMIZER_FILE: &str = "value_optimizer.bin";

/// PPO's part of `trainer_state.json` (`extra`).
#[derive(Serialize, Deserialize)]
struct ResumeExtra {
    kl_controller: KlController,
    /// The value model's parameter ids, which key its optimizer's saved moments.
    value_param_ids: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_round_trip_through_the_shifted_frame() {
        let device = Device::flex();
        let p1: &[u32] = &[5, 6, 7];
        let c1: &[u32] = &[8, 9];
        let p2: &[u32] = &[5];
        let c2: &[u32] = &[4, 3, 2];
        let spans = spans_of(&[p1, p2], &[c1, c2]);
        let batch = SeqBatch::new(&[p1, p2], &[c1, c2], 0, &device);
        let width = batch.ids.dims()[1] - 1;
        let rows: [&[f32]; 2] = [&[1.0, 2.0], &[3.0, 4.0, 5.0]];
        let t = place_spans(&rows, &spans, width, &device);
        // Non-zero exactly where the completion mask is 1.
        let placed = host_f32(t.clone());
        let mask = host_f32(batch.completion_mask.clone());
        for (v, m) in placed.iter().zip(&mask) {
            assert_eq!(*v != 0.0, *m == 1.0);
        }
        assert_eq!(
            take_spans(t, &spans),
            vec![vec![1.0, 2.0], vec![3.0, 4.0, 5.0]]
        );
    }

    #[test]
    fn whitening_rows_matches_the_masked_formula() {
        let device = Device::flex();
        let rows = vec![vec![1.0, 2.0, 3.0], vec![4.0]];
        let w = whiten_rows(&rows, true, &device);
        let all: Vec<f64> = rows.iter().flatten().map(|&x| x as f64).collect();
        let m = mean(&all);
        let sd = (var(&all) + 1e-8).sqrt();
        let expect: Vec<f64> = all.iter().map(|x| (x - m) / sd).collect();
        let got: Vec<f64> = w.iter().flatten().map(|&x| x as f64).collect();
        for (g, e) in got.iter().zip(&expect) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {expect:?}");
        }
    }

    #[test]
    fn section_parses_with_trl_names_and_rejects_typos() {
        #[derive(Deserialize)]
        struct Wrap {
            ppo: PpoSection,
        }
        let w: Wrap = toml::from_str(
            "[ppo]\nresponse_length = 8\nkl_estimator = \"k3\"\nmissing_eos_penalty = 1.0\n\
             adaptive_kl = { target = 6.0 }\n",
        )
        .unwrap();
        assert_eq!(w.ppo.response_length, 8);
        assert_eq!(w.ppo.kl_estimator, losses::KlEstimator::K3);
        assert_eq!(
            w.ppo.adaptive_kl,
            Some(AdaptiveKlSection {
                target: 6.0,
                horizon: 10_000
            })
        );
        assert_eq!(w.ppo.num_ppo_epochs, 4);
        let err = toml::from_str::<Wrap>("[ppo]\nkl_coeff = 0.1\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("kl_coeff"), "{err}");
    }
}
