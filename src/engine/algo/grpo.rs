//! GRPO (Group Relative Policy Optimization, DeepSeekMath; TRL's `GRPOTrainer`): G sampled
//! completions per prompt, rewards normalised within the group as advantages, a clipped
//! ratio objective, optional k3 KL to a frozen reference, and an optional demonstration
//! (SFT) term on reference completions.

pub use crate::engine::config::methods::GrpoSection;

use std::collections::BTreeMap;
use std::rc::Rc;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::TrainError;
use super::layerwise::{self, HeadExtras};
use super::losses::{self, GroupStats, GrpoLossOut};
use super::onpolicy::{self, LoadedPolicy, OnPolicy, Policy, StepReport};
use super::rollout::{
    self, Evaluator, PromptItem, Rewards, Rollout, Sampled, compute_rewards, load_prompts,
    sample_groups,
};
use super::sequences::{HeadOutputs, SeqBatch, score};
use super::{TrainOutcome, scalar};
use crate::engine::config::RunConfig;
use crate::engine::model::{self, CausalLm};
use crate::engine::reward::{self, RewardSource};
use crate::engine::run::RunContext;
use crate::engine::sample::{FinishReason, SamplingParams};

/// CISPO's default cap on the importance weight (TRL recommends 5 for `loss_type = "cispo"`).
const CISPO_MAX: f64 = 5.0;
/// Samples shown per step in the Samples pane: one group's worth is enough to read.
const SAMPLES_PER_STEP: usize = 8;

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let g = cfg.grpo.clone().unwrap_or_default();
    let prompts_per_step = prompts_per_step(&g, cfg.train.per_device_train_batch_size)?;
    let train_device = cfg.train.train_device(device, true);
    let loaded = LoadedPolicy::load(cfg, &train_device, ctx, "GRPO")?;
    let answer_end = g.stop.first().map(String::as_str).unwrap_or("");
    let train = load_prompts(&cfg.data.train, &loaded.tokenizer, g.chat, answer_end)?;
    let mut eval = match &cfg.data.eval {
        Some(p) => load_prompts(p, &loaded.tokenizer, g.chat, answer_end)?,
        None => Vec::new(),
    };
    if g.eval_max_items > 0 {
        eval.truncate(g.eval_max_items);
    }
    // `reward_model` sources run on the plain device: scoring needs no gradients.
    let scorer_device = device.clone().without_autodiff();
    let sources = reward::model::build_all_on(&cfg.rewards, &scorer_device, cfg.frozen_dtype())
        .map_err(|e| TrainError::Invalid(format!("[[rewards]]: {e}")))?;
    if sources.is_empty() {
        return Err(TrainError::Invalid(
            "GRPO needs at least one [[rewards]] source".into(),
        ));
    }
    // The same base with the adapters off (LoRA), or a frozen copy, stored as `[model] dtype`.
    // A resumed run keeps the original model as its reference.
    let reference = (g.beta > 0.0).then(|| {
        model::precision::store_frozen(
            model::lora::without_adapters(loaded.model.valid()),
            cfg.frozen_dtype(),
        )
    });
    let pad = loaded.pad_id();
    let mut policy = loaded.start(cfg, &train_device, ctx, train.len())?;
    let params = SamplingParams {
        max_new_tokens: g.max_completion_length,
        temperature: g.temperature,
        top_k: g.top_k,
        top_p: g.top_p,
        stop_strings: g.stop.clone(),
        seed: cfg.seed,
    };
    let mut method = Grpo {
        cfg,
        evaluator: Evaluator {
            prompts: eval,
            params: params.clone(),
            generations: cfg.train.num_eval_generations,
        },
        g,
        train: Rc::new(train),
        sources,
        reference,
        params,
        prompts_per_step,
        train_device,
        pad,
    };
    onpolicy::drive(cfg, ctx, &mut policy, &mut method)
}

/// Prompts per step: the completions per step (`per_device_train_batch_size`) over the group
/// size, which must divide them.
fn prompts_per_step(g: &GrpoSection, completions_per_step: usize) -> Result<usize, TrainError> {
    if g.num_generations < 2 || !completions_per_step.is_multiple_of(g.num_generations) {
        return Err(TrainError::Invalid(format!(
            "[train] per_device_train_batch_size ({completions_per_step}) must be a multiple of \
             [grpo] num_generations ({}), which must be at least 2",
            g.num_generations
        )));
    }
    Ok(completions_per_step / g.num_generations)
}

/// GRPO and its variants (RLOO, REINFORCE++, GSPO, CISPO, DAPO) as a configuration of the
/// on-policy loop.
struct Grpo<'a> {
    cfg: &'a RunConfig,
    g: GrpoSection,
    train: Rc<Vec<PromptItem>>,
    evaluator: Evaluator,
    sources: Vec<(Box<dyn RewardSource>, f32)>,
    /// The frozen reference of the KL term (`beta > 0`).
    reference: Option<CausalLm>,
    params: SamplingParams,
    prompts_per_step: usize,
    train_device: Device,
    pad: u32,
}

/// What one policy update measured.
struct Update {
    loss: f64,
    entropy: f64,
    out: GrpoLossOut,
    grad_norm: f32,
    lr: f64,
}

impl OnPolicy for Grpo<'_> {
    fn describe(&self) -> String {
        format!(
            "GRPO: {} prompts ({} held out), {} prompts x {} completions per step, beta {}, \
             loss {}",
            self.train.len(),
            self.evaluator.prompts.len(),
            self.prompts_per_step,
            self.g.num_generations,
            self.g.beta,
            crate::engine::config::setting_name(&self.g.loss_type)
        )
    }

    fn step(
        &mut self,
        policy: &mut Policy,
        ctx: &mut RunContext,
    ) -> Result<Option<StepReport>, TrainError> {
        let gen_started = std::time::Instant::now();
        // Shared, so the sampled prompts stay borrowed while the method's other parts change.
        let train = Rc::clone(&self.train);
        let Sampled {
            prompts,
            rollout: ro,
            mut rewards,
            drawn,
            rounds,
        } = self.generate(&train, policy)?;
        let gen_time = gen_started.elapsed().as_secs_f64();
        let (prompt_rows, completion_rows) = ro.rows(&prompts);
        let lengths: Vec<usize> = completion_rows.iter().map(|c| c.len()).collect();
        self.shape_rewards(&mut rewards, &lengths);
        let (advantages, stats) = losses::outcome_advantages(
            self.g.advantage_estimator,
            &rewards.total,
            self.g.num_generations,
            self.g.scale_rewards,
            &lengths,
        )?;
        policy.num_tokens +=
            prompt_rows.iter().map(|p| p.len()).sum::<usize>() + lengths.iter().sum::<usize>();
        let mut batch = SeqBatch::new(&prompt_rows, &completion_rows, self.pad, &self.train_device);
        if self.g.mask_truncated_completions {
            mask_truncated(&mut batch, &ro.finish, &self.train_device);
        }
        let demo = demo_batch(&prompts, self.g.sft_coef, self.pad, &self.train_device);
        let update = self.update(
            policy,
            ctx,
            &batch,
            &prompt_rows,
            &completion_rows,
            &advantages,
            demo,
        )?;
        let mut values = self.metrics(&ro, &rewards, &stats, &update);
        if self.g.dynamic_sampling {
            values.insert("sampling/prompts_drawn".into(), drawn as f64);
            values.insert("sampling/rounds".into(), rounds as f64);
        }
        values.insert("timing/generation".into(), gen_time);
        let samples = rollout::sample_records(
            policy.step + 1,
            &prompts,
            &ro,
            &rewards,
            Some(&advantages),
            SAMPLES_PER_STEP,
        );
        Ok(Some(StepReport { values, samples }))
    }

    fn evaluate(&mut self, policy: &Policy) -> Result<BTreeMap<String, f64>, TrainError> {
        policy.evaluate(&self.evaluator, &mut self.sources)
    }
}

impl Grpo<'_> {
    /// Generate and score: G completions for each of the step's prompts, sampled from the
    /// policy and rewarded; with dynamic sampling, more prompts until the groups with a reward
    /// spread fill the batch.
    fn generate<'t>(
        &mut self,
        train: &'t [PromptItem],
        policy: &mut Policy,
    ) -> Result<Sampled<'t>, TrainError> {
        let Self {
            cfg,
            g,
            sources,
            params,
            ..
        } = self;
        let step = policy.step;
        let generator = policy.for_generation();
        let Policy {
            sampler,
            tokenizer,
            config,
            ..
        } = policy;
        let first: Vec<&PromptItem> = sampler
            .next_batch(self.prompts_per_step)
            .iter()
            .map(|&i| &train[i])
            .collect();
        let max_rounds = if g.dynamic_sampling {
            g.max_sampling_rounds.max(1)
        } else {
            1
        };
        sample_groups(
            first,
            g.num_generations,
            max_rounds,
            |n| sampler.next_batch(n).iter().map(|&i| &train[i]).collect(),
            |batch, round| {
                let step_params = SamplingParams {
                    seed: cfg
                        .seed
                        .wrapping_add(step as u64 * 7919)
                        .wrapping_add(round as u64 * 104_729),
                    ..params.clone()
                };
                let ro = rollout::rollout(
                    &generator,
                    batch,
                    g.num_generations,
                    &step_params,
                    tokenizer,
                    config,
                )?;
                let rw = compute_rewards(sources, batch, &ro)?;
                Ok((ro, rw))
            },
        )
    }

    /// Reward shaping: DAPO's soft overlong punishment, added to the total and logged as its
    /// own source.
    fn shape_rewards(&self, rewards: &mut Rewards, lengths: &[usize]) {
        let g = &self.g;
        if g.overlong_buffer_len == 0 {
            return;
        }
        let penalty: Vec<f32> = lengths
            .iter()
            .map(|&l| {
                losses::overlong_penalty(
                    l,
                    g.max_completion_length,
                    g.overlong_buffer_len,
                    g.overlong_penalty_factor,
                )
            })
            .collect();
        for (t, p) in rewards.total.iter_mut().zip(&penalty) {
            *t += p;
        }
        rewards.per_source.insert("overlong".into(), penalty);
    }

    /// Update: `num_iterations` optimizer steps of the policy loss on the rollout (plus the
    /// demonstration term where it is on).
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        policy: &mut Policy,
        ctx: &RunContext,
        batch: &SeqBatch,
        prompt_rows: &[&[u32]],
        completion_rows: &[&[u32]],
        advantages: &[f32],
        demo: Option<SeqBatch>,
    ) -> Result<Update, TrainError> {
        let g = &self.g;
        let plain = self.train_device.clone().without_autodiff();
        let plain_batch = SeqBatch::new(prompt_rows, completion_rows, self.pad, &plain);
        // Constants: a tensor without autodiff joins the graph as one, whatever the training
        // device's checkpointing strategy.
        let ref_lp = self
            .reference
            .as_ref()
            .map(|r| score(r, &plain_batch, g.temperature).logprobs);
        let old_lp = (g.num_iterations > 1)
            .then(|| score(&policy.model().valid(), &plain_batch, g.temperature).logprobs);
        let adv = Tensor::<1>::from_data(
            TensorData::new(advantages.to_vec(), [advantages.len()]),
            &self.train_device,
        );
        let objective = losses::PolicyObjective {
            loss: g.policy_loss,
            level: g.importance_sampling_level,
            // CISPO caps the weight itself (TRL's recommendation: 5), not 1 + ε.
            cispo_max: g.epsilon_high.map_or(CISPO_MAX, f64::from),
        };
        let eps_high = g.epsilon_high.unwrap_or(g.epsilon);
        let recompute = self.cfg.train.recompute();
        let mut last = None;
        for _ in 0..g.num_iterations.max(1) {
            // The policy loss on the scored completions, and what it measured.
            let policy_loss = |scored: HeadOutputs| -> Result<_, TrainError> {
                let token_entropy = scored.entropy.clone().expect("asked for the entropy");
                let entropy = scalar(super::masked_mean(
                    token_entropy.clone(),
                    batch.completion_mask.clone(),
                ));
                let old = old_lp
                    .clone()
                    .unwrap_or_else(|| scored.logprobs.clone().detach());
                // Only the highest-entropy tokens train (`top_entropy_quantile` < 1).
                let token_weight = (g.top_entropy_quantile < 1.0).then(|| {
                    let dims = batch.completion_mask.dims();
                    let ent = model::host_f32(token_entropy.clone());
                    let mask = model::host_f32(batch.completion_mask.clone());
                    let keep = losses::high_entropy_mask(&ent, &mask, g.top_entropy_quantile);
                    Tensor::<2>::from_data(TensorData::new(keep, dims), &self.train_device)
                });
                let mut out = losses::grpo_loss(
                    scored.logprobs.clone(),
                    old,
                    ref_lp.clone(),
                    adv.clone(),
                    batch.completion_mask.clone(),
                    g.epsilon as f64,
                    eps_high as f64,
                    g.beta,
                    g.loss_type,
                    g.max_completion_length,
                    objective,
                    token_weight,
                )?;
                if g.entropy_coef > 0.0 {
                    // The entropy bonus: higher entropy lowers the loss.
                    out.loss = out.loss
                        - losses::entropy_bonus(
                            scored.logprobs.clone(),
                            batch.completion_mask.clone(),
                        ) * g.entropy_coef;
                }
                Ok((out.loss.clone(), (entropy, out)))
            };
            let with_entropy = HeadExtras {
                entropy: true,
                argmax: false,
            };
            let (grads, mut loss, (entropy, out)) = layerwise::logprob_grads(
                policy.model(),
                batch.into(),
                g.temperature,
                with_entropy,
                recompute,
                policy_loss,
            )?;
            let grads = match &demo {
                Some(d) => {
                    let (demo_grads, demo_loss) = self.demo_grads(policy.model(), d)?;
                    loss += demo_loss;
                    let mut acc = GradientsAccumulator::<CausalLm>::new();
                    acc.accumulate(policy.model(), grads);
                    acc.accumulate(policy.model(), demo_grads);
                    acc.grads()
                }
                None => grads,
            };
            policy.check_finite(ctx, loss)?;
            let lr = policy.learning_rate(self.cfg);
            let grad_norm = policy.apply(lr, grads);
            last = Some(Update {
                loss,
                entropy,
                out,
                grad_norm,
                lr,
            });
        }
        Ok(last.expect("at least one iteration runs"))
    }

    /// The demonstration term's gradients: the NLL of reference completions, weighted.
    fn demo_grads(
        &self,
        model: &CausalLm,
        d: &SeqBatch,
    ) -> Result<(GradientsParams, f64), TrainError> {
        let coef = self.g.sft_coef;
        let demo_loss = |scored: HeadOutputs| -> Result<_, TrainError> {
            let mask = d.completion_mask.clone();
            Ok((losses::demo_nll(scored.logprobs, mask) * coef, ()))
        };
        let (grads, value, ()) = layerwise::logprob_grads(
            model,
            d.into(),
            1.0,
            HeadExtras::default(),
            self.cfg.train.recompute(),
            demo_loss,
        )?;
        Ok((grads, value))
    }

    /// The step's metrics under TRL's `GRPOTrainer` names.
    fn metrics(
        &self,
        ro: &Rollout,
        rewards: &Rewards,
        stats: &GroupStats,
        u: &Update,
    ) -> BTreeMap<String, f64> {
        let lengths: Vec<f32> = ro.tokens.iter().map(|t| t.len() as f32).collect();
        let clipped = ro
            .finish
            .iter()
            .filter(|f| **f == FinishReason::Length)
            .count();
        let mut values = BTreeMap::new();
        values.insert("loss".into(), u.loss);
        values.insert("reward".into(), rollout::mean(&rewards.total));
        values.insert("reward_std".into(), stats.reward_std_mean);
        rollout::reward_metrics(rewards, &mut values);
        values.insert("frac_reward_zero_std".into(), stats.frac_zero_std);
        if let Some(kl) = u.out.kl_mean {
            values.insert("kl".into(), kl);
        }
        values.insert("entropy".into(), u.entropy);
        values.insert("clip_ratio/low_mean".into(), u.out.clip_low_frac);
        values.insert("clip_ratio/high_mean".into(), u.out.clip_high_frac);
        values.insert("clip_ratio/region_mean".into(), u.out.clip_region_frac);
        values.insert("completions/mean_length".into(), rollout::mean(&lengths));
        values.insert(
            "completions/clipped_ratio".into(),
            clipped as f64 / lengths.len().max(1) as f64,
        );
        values.insert("learning_rate".into(), u.lr);
        values.insert("grad_norm".into(), u.grad_norm as f64);
        values
    }
}

/// DAPO's `mask_truncated_completions`: rows cut by the length limit keep no token in the
/// loss.
fn mask_truncated(batch: &mut SeqBatch, finish: &[FinishReason], device: &Device) {
    let keep: Vec<f32> = finish
        .iter()
        .map(|f| f32::from(u8::from(*f != FinishReason::Length)))
        .collect();
    let keep = Tensor::<1>::from_data(TensorData::new(keep, [finish.len()]), device)
        .reshape([finish.len(), 1])
        .expand(batch.completion_mask.dims());
    batch.completion_mask = batch.completion_mask.clone() * keep;
}

/// Prompt + reference completion rows for the demonstration term, when it is on and the
/// prompts have references.
fn demo_batch(prompts: &[&PromptItem], coef: f64, pad: u32, device: &Device) -> Option<SeqBatch> {
    if coef <= 0.0 {
        return None;
    }
    let with_demo: Vec<&PromptItem> = prompts
        .iter()
        .copied()
        .filter(|p| p.demo.is_some())
        .collect();
    if with_demo.is_empty() {
        return None;
    }
    let p: Vec<&[u32]> = with_demo.iter().map(|p| p.ids.as_slice()).collect();
    let c: Vec<&[u32]> = with_demo
        .iter()
        .map(|p| p.demo.as_deref().unwrap_or_default())
        .collect();
    Some(SeqBatch::new(&p, &c, pad, device))
}
