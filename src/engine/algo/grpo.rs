//! GRPO (Group Relative Policy Optimization, DeepSeekMath; TRL's `GRPOTrainer`): G sampled
//! completions per prompt, rewards normalised within the group as advantages, a clipped
//! ratio objective, optional k3 KL to a frozen reference, and an optional demonstration
//! (SFT) term on reference completions.

pub use crate::engine::config::methods::GrpoSection;
use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::prelude::*;

use super::layerwise::{self, HeadExtras};
use super::losses;

/// CISPO's default cap on the importance weight (TRL recommends 5 for `loss_type = "cispo"`).
const CISPO_MAX: f64 = 5.0;
use super::sequences::{HeadOutputs, SeqBatch, score};
use super::state::{self, TrainerState};
use super::{TrainError, TrainOutcome, scalar};
use crate::engine::config::RunConfig;
use crate::engine::data::{self, EpochSampler, Example, Prompt};
use crate::engine::events::{Event, LogLevel, RunStatus, SampleRecord};
use crate::engine::model::tokenizer::{ChatMessage, Tokenizer};
use crate::engine::model::{self, CausalLm, Heads, ModelConfig, hf};
use crate::engine::optim::Optimizer;
use crate::engine::reward::{self, Completion, RewardSource};
use crate::engine::run::{Control, RunContext};
use crate::engine::sample::{self, FinishReason, SamplingParams};

/// Samples shown per step in the Samples pane: one group's worth is enough to read.
const SAMPLES_PER_STEP: usize = 8;
/// Eval prompts decoded together.
const EVAL_BATCH: usize = 64;

/// A prompt with what the checkers and the demonstration term need.
#[derive(Clone, Debug)]
pub struct PromptItem {
    pub text: String,
    pub ids: Vec<u32>,
    pub answer: Option<String>,
    /// Tokens of a reference completion, for the demonstration term.
    pub demo: Option<Vec<u32>>,
}

/// Reads a prompt-only (or prompt+completion) JSONL file into tokenised prompts. A row's
/// demonstration is its `completion`, or else its `answer` followed by `answer_end` (the
/// first stop string, so the demonstration also teaches where to stop).
pub fn load_prompts(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    chat: bool,
    answer_end: &str,
) -> Result<Vec<PromptItem>, TrainError> {
    let mut items = Vec::new();
    for (i, ex) in data::read_jsonl(path)?.into_iter().enumerate() {
        let (prompt, answer, demo_text) = match ex {
            Example::Prompt {
                prompt,
                reference,
                answer,
            } => (prompt, answer.or(reference.clone()), reference),
            Example::PromptCompletion {
                prompt,
                completion: Prompt::Text(c),
            } => (prompt, Some(c.trim().to_string()), Some(c)),
            other => {
                return Err(TrainError::Invalid(format!(
                    "{}: example {}: GRPO needs `prompt` rows (optionally with `answer` or \
                     `completion`); found a `{}` example",
                    path.display(),
                    i + 1,
                    other.kind()
                )));
            }
        };
        let text = render_prompt(&prompt, tokenizer, chat)?;
        let ids = tokenizer.encode(&text, !chat)?;
        let demo_text = demo_text.or_else(|| answer.as_ref().map(|a| format!("{a}{answer_end}")));
        let demo = match demo_text {
            Some(d) => Some(tokenizer.encode(&d, false)?),
            None => None,
        };
        items.push(PromptItem {
            text: prompt_display(&prompt),
            ids,
            answer,
            demo,
        });
    }
    if items.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no prompts",
            path.display()
        )));
    }
    Ok(items)
}

fn prompt_display(p: &Prompt) -> String {
    match p {
        Prompt::Text(t) => t.clone(),
        Prompt::Messages(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
    }
}

fn render_prompt(p: &Prompt, tokenizer: &Tokenizer, chat: bool) -> Result<String, TrainError> {
    Ok(match (p, chat) {
        (Prompt::Text(t), false) => t.clone(),
        (Prompt::Text(t), true) => tokenizer.apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: t.clone(),
            }],
            true,
        )?,
        (Prompt::Messages(m), _) => tokenizer.apply_chat_template(m, true)?,
    })
}

/// The policy's completions for a set of prompts, cut at the first stop string.
pub struct Rollout {
    pub prompt_index: Vec<usize>,
    pub tokens: Vec<Vec<u32>>,
    pub texts: Vec<String>,
    pub finish: Vec<FinishReason>,
}

impl Rollout {
    /// Each completion's prompt tokens and its own tokens, row by row, as
    /// [`SeqBatch::new`](super::sequences::SeqBatch::new) takes them.
    pub fn rows<'a>(&'a self, prompts: &[&'a PromptItem]) -> (Vec<&'a [u32]>, Vec<&'a [u32]>) {
        let prompt_rows = self
            .prompt_index
            .iter()
            .map(|&i| prompts[i].ids.as_slice())
            .collect();
        (prompt_rows, self.tokens.iter().map(Vec::as_slice).collect())
    }
}

/// What a step trains on: its prompts, their completions and rewards, and how many prompts
/// were sampled to get them.
pub struct Sampled<'a> {
    pub prompts: Vec<&'a PromptItem>,
    pub rollout: Rollout,
    pub rewards: Rewards,
    pub drawn: usize,
    pub rounds: usize,
}

impl<'a> Sampled<'a> {
    /// Adds one prompt's group of completions (rows `rows` of a round).
    fn push_group(
        &mut self,
        prompt: &'a PromptItem,
        ro: &Rollout,
        rw: &Rewards,
        rows: std::ops::Range<usize>,
    ) {
        let p = self.prompts.len();
        self.prompts.push(prompt);
        for i in rows {
            self.rollout.prompt_index.push(p);
            self.rollout.tokens.push(ro.tokens[i].clone());
            self.rollout.texts.push(ro.texts[i].clone());
            self.rollout.finish.push(ro.finish[i]);
            self.rewards.total.push(rw.total[i]);
            for (name, values) in &rw.per_source {
                self.rewards
                    .per_source
                    .entry(name.clone())
                    .or_default()
                    .push(values[i]);
            }
        }
    }
}

/// DAPO's dynamic sampling (Yu et al. 2025; verl `filter_groups`): a group whose rewards are
/// all equal teaches nothing (its advantages are 0), so it is dropped and more prompts are
/// drawn (`draw(n)`) and generated until `first.len()` groups with a reward spread are in hand,
/// for at most `max_rounds` rounds; the last round fills what is missing whatever the spread.
/// `max_rounds = 1` keeps the first round as it is. `generate(prompts, round)` samples and
/// scores `group` completions per prompt.
pub fn sample_groups<'a>(
    first: Vec<&'a PromptItem>,
    group: usize,
    max_rounds: usize,
    mut draw: impl FnMut(usize) -> Vec<&'a PromptItem>,
    mut generate: impl FnMut(&[&'a PromptItem], usize) -> Result<(Rollout, Rewards), TrainError>,
) -> Result<Sampled<'a>, TrainError> {
    let want = first.len();
    let mut out = Sampled {
        prompts: Vec::with_capacity(want),
        rollout: Rollout {
            prompt_index: Vec::new(),
            tokens: Vec::new(),
            texts: Vec::new(),
            finish: Vec::new(),
        },
        rewards: Rewards {
            total: Vec::new(),
            per_source: BTreeMap::new(),
        },
        drawn: 0,
        rounds: 0,
    };
    let mut batch = first;
    loop {
        out.rounds += 1;
        out.drawn += batch.len();
        let (ro, rw) = generate(&batch, out.rounds - 1)?;
        let last = out.rounds >= max_rounds.max(1);
        for (k, prompt) in batch.iter().enumerate() {
            if out.prompts.len() >= want {
                break;
            }
            let rows = k * group..(k + 1) * group;
            let r = &rw.total[rows.clone()];
            let spread = r.iter().any(|x| (x - r[0]).abs() > 1e-6);
            if spread || last {
                out.push_group(prompt, &ro, &rw, rows);
            }
        }
        if out.prompts.len() >= want || last {
            return Ok(out);
        }
        batch = draw(want - out.prompts.len());
    }
}

/// Generates `per_prompt` completions for each prompt with a no-grad copy of the policy.
pub fn rollout(
    policy: &CausalLm,
    prompts: &[&PromptItem],
    per_prompt: usize,
    params: &SamplingParams,
    tokenizer: &Tokenizer,
    config: &ModelConfig,
) -> Result<Rollout, TrainError> {
    let mut rows = Vec::with_capacity(prompts.len() * per_prompt);
    let mut prompt_index = Vec::with_capacity(rows.capacity());
    for (i, p) in prompts.iter().enumerate() {
        for _ in 0..per_prompt {
            rows.push(p.ids.clone());
            prompt_index.push(i);
        }
    }
    let mut eos = tokenizer.eos_ids().to_vec();
    eos.extend(config.eos_ids());
    let pad = tokenizer.pad_id().or(eos.first().copied()).unwrap_or(0);
    let gens = sample::generate(
        policy,
        &rows,
        params,
        &eos,
        pad,
        Some(tokenizer),
        config.max_position_embeddings,
    );
    let mut tokens = Vec::with_capacity(gens.len());
    let mut texts = Vec::with_capacity(gens.len());
    let mut finish = Vec::with_capacity(gens.len());
    for g in gens {
        let mut text = tokenizer.decode(&g.tokens, true)?;
        for s in &params.stop_strings {
            if let Some(i) = text.find(s.as_str()) {
                text.truncate(i);
            }
        }
        texts.push(text);
        tokens.push(g.tokens);
        finish.push(g.finish);
    }
    Ok(Rollout {
        prompt_index,
        tokens,
        texts,
        finish,
    })
}

/// Rewards per source and their weighted total for a rollout.
pub struct Rewards {
    pub total: Vec<f32>,
    pub per_source: BTreeMap<String, Vec<f32>>,
}

pub fn compute_rewards(
    sources: &mut [(Box<dyn RewardSource>, f32)],
    prompts: &[&PromptItem],
    rollout: &Rollout,
) -> Result<Rewards, TrainError> {
    let batch: Vec<Completion> = rollout
        .texts
        .iter()
        .zip(&rollout.prompt_index)
        .map(|(c, &i)| Completion {
            prompt: &prompts[i].text,
            completion: c,
            answer: prompts[i].answer.as_deref(),
        })
        .collect();
    let mut total = vec![0.0; batch.len()];
    let mut per_source = BTreeMap::new();
    for (source, weight) in sources.iter_mut() {
        let values = source
            .score(&batch)
            .map_err(|e| TrainError::Invalid(format!("reward `{}`: {e}", source.name())))?;
        for (t, v) in total.iter_mut().zip(&values) {
            *t += *weight * v;
        }
        per_source.insert(source.name().to_string(), values);
    }
    Ok(Rewards { total, per_source })
}

/// Held-out evaluation: `generations` completions per prompt (1: greedy decoding; more:
/// sampled at the training temperature with a fixed seed), scored by the run's reward
/// sources. Returns [`eval_metrics`].
pub fn evaluate(
    policy: &CausalLm,
    prompts: &[PromptItem],
    sources: &mut [(Box<dyn RewardSource>, f32)],
    params: &SamplingParams,
    tokenizer: &Tokenizer,
    config: &ModelConfig,
    generations: usize,
) -> Result<BTreeMap<String, f64>, TrainError> {
    let k = generations.max(1);
    let eval_params = if k == 1 {
        SamplingParams {
            temperature: 0.0,
            ..params.clone()
        }
    } else {
        params.clone()
    };
    let mut all = Rewards {
        total: Vec::new(),
        per_source: BTreeMap::new(),
    };
    for chunk in prompts.chunks((EVAL_BATCH / k).max(1)) {
        let refs: Vec<&PromptItem> = chunk.iter().collect();
        let r = rollout(policy, &refs, k, &eval_params, tokenizer, config)?;
        let rewards = compute_rewards(sources, &refs, &r)?;
        all.total.extend(rewards.total);
        for (name, values) in rewards.per_source {
            all.per_source.entry(name).or_default().extend(values);
        }
    }
    Ok(eval_metrics(&all, k))
}

/// Held-out metrics from `k` scored completions per prompt (rows grouped by prompt): each
/// source's and the total's mean (`eval/rewards/<source>/mean`, `eval/reward`) and, with
/// `k > 1`, `mean@k` and `pass@k`: the share of prompts with at least one completion that
/// scores full marks (1) on that source, as for verifiable rewards such as exact match.
pub fn eval_metrics(rewards: &Rewards, k: usize) -> BTreeMap<String, f64> {
    let k = k.max(1);
    let prompts = (rewards.total.len() / k).max(1) as f64;
    let mut out = BTreeMap::new();
    for (name, values) in &rewards.per_source {
        let mean = values.iter().map(|&x| x as f64).sum::<f64>() / values.len().max(1) as f64;
        out.insert(format!("eval/rewards/{name}/mean"), mean);
        if k > 1 {
            out.insert(format!("eval/rewards/{name}/mean@{k}"), mean);
            let passed = values
                .chunks(k)
                .filter(|g| g.iter().any(|&x| x >= 1.0 - 1e-6))
                .count();
            out.insert(
                format!("eval/rewards/{name}/pass@{k}"),
                passed as f64 / prompts,
            );
        }
    }
    let total = rewards.total.iter().map(|&x| x as f64).sum::<f64>();
    out.insert(
        "eval/reward".into(),
        total / rewards.total.len().max(1) as f64,
    );
    out
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

fn std(v: &[f32]) -> f64 {
    let m = mean(v);
    let n = v.len();
    if n < 2 {
        return 0.0;
    }
    (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
}

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let g = cfg.grpo.clone().unwrap_or_default();
    let train_cfg = &cfg.train;
    let completions_per_step = train_cfg.per_device_train_batch_size;
    if g.num_generations < 2 || !completions_per_step.is_multiple_of(g.num_generations) {
        return Err(TrainError::Invalid(format!(
            "[train] per_device_train_batch_size ({completions_per_step}) must be a multiple of \
             [grpo] num_generations ({}), which must be at least 2",
            g.num_generations
        )));
    }
    let prompts_per_step = completions_per_step / g.num_generations;
    let train_device = cfg.train.train_device(device, true);
    let loaded = super::load_trained_model(cfg, &train_device, Heads::Lm, ctx)?;
    let tokenizer = loaded.tokenizer.clone().ok_or_else(|| {
        TrainError::Invalid(format!(
            "{}: GRPO needs a tokenizer",
            cfg.model.path.display()
        ))
    })?;
    let model_cfg = loaded.config.clone();
    let answer_end = g.stop.first().map(String::as_str).unwrap_or("");
    let train = load_prompts(&cfg.data.train, &tokenizer, g.chat, answer_end)?;
    let mut eval = match &cfg.data.eval {
        Some(p) => load_prompts(p, &tokenizer, g.chat, answer_end)?,
        None => Vec::new(),
    };
    if g.eval_max_items > 0 {
        eval.truncate(g.eval_max_items);
    }
    // `reward_model` sources run on the plain device: scoring needs no gradients.
    let scorer_device = device.clone().without_autodiff();
    let mut sources = reward::model::build_all_on(&cfg.rewards, &scorer_device, cfg.frozen_dtype())
        .map_err(|e| TrainError::Invalid(format!("[[rewards]]: {e}")))?;
    if sources.is_empty() {
        return Err(TrainError::Invalid(
            "GRPO needs at least one [[rewards]] source".into(),
        ));
    }
    // With LoRA: the base without its adapters, sharing the frozen weights.
    // The same base with the adapters off (LoRA), or a frozen copy, stored as `[model] dtype`.
    let reference = (g.beta > 0.0).then(|| {
        model::precision::store_frozen(
            model::lora::without_adapters(loaded.model.valid()),
            cfg.frozen_dtype(),
        )
    });
    let mut policy = loaded.model;
    let mut optim = Optimizer::new(cfg.optim.clone());
    let mut sampler = EpochSampler::new(train.len(), cfg.seed);
    let mut step = 0;
    let mut num_tokens = 0usize;
    // Resuming: the policy continues from the checkpoint; the reference stays the original.
    let resumed = state::resume(
        ctx,
        &train_device,
        Heads::Lm,
        cfg.frozen_dtype(),
        Optimizer::new(cfg.optim.clone()),
        train.len(),
        cfg.seed,
    )?;
    let resume = resumed.is_some();
    if let Some(r) = resumed {
        (policy, optim, sampler, step, num_tokens) =
            (r.model, r.optim, r.sampler, r.step, r.num_tokens);
    }
    let pad = tokenizer
        .pad_id()
        .or_else(|| tokenizer.eos_ids().first().copied())
        .unwrap_or(0);
    let params = SamplingParams {
        max_new_tokens: g.max_completion_length,
        temperature: g.temperature,
        top_k: g.top_k,
        top_p: g.top_p,
        stop_strings: g.stop.clone(),
        seed: cfg.seed,
    };
    let eps_high = g.epsilon_high.unwrap_or(g.epsilon);
    let total_steps = train_cfg.max_steps;

    ctx.send(Event::Started {
        run: ctx.id.clone(),
        method: cfg.method.name().into(),
        run_dir: ctx.dir.path.clone(),
        total_steps,
        model: Some(crate::engine::model::lora::summary(&policy)),
    });
    ctx.status(RunStatus::Running);
    ctx.log(
        LogLevel::Info,
        format!(
            "GRPO: {} prompts ({} held out), {prompts_per_step} prompts x {} completions per \
             step, beta {}, loss {}",
            train.len(),
            eval.len(),
            g.num_generations,
            g.beta,
            crate::engine::config::setting_name(&g.loss_type)
        ),
    );
    if !eval.is_empty() && !resume && cfg.train.eval_before_train {
        let metrics = evaluate(
            &model::lora::for_generation(&policy),
            &eval,
            &mut sources,
            &params,
            &tokenizer,
            &model_cfg,
            cfg.train.num_eval_generations,
        )?;
        ctx.metrics(0, metrics);
    }

    while step < total_steps {
        match ctx.poll() {
            Control::Stop => {
                save(
                    &policy,
                    &model_cfg,
                    &tokenizer,
                    &loaded.generation_config,
                    ctx,
                    step,
                    true,
                    Some((&sampler, &optim, num_tokens)),
                )?;
                return Ok(RunStatus::Stopped);
            }
            Control::Save => {
                save(
                    &policy,
                    &model_cfg,
                    &tokenizer,
                    &loaded.generation_config,
                    ctx,
                    step,
                    false,
                    Some((&sampler, &optim, num_tokens)),
                )?;
                // Asked while paused: the run waits again before its next step.
                continue;
            }
            Control::Continue => {}
        }
        let started = Instant::now();
        let idx = sampler.next_batch(prompts_per_step);
        let first: Vec<&PromptItem> = idx.iter().map(|&i| &train[i]).collect();
        let gen_started = Instant::now();
        let generator = model::lora::for_generation(&policy);
        let max_rounds = if g.dynamic_sampling {
            g.max_sampling_rounds.max(1)
        } else {
            1
        };
        let sampled = sample_groups(
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
                let ro = rollout(
                    &generator,
                    batch,
                    g.num_generations,
                    &step_params,
                    &tokenizer,
                    &model_cfg,
                )?;
                let rw = compute_rewards(&mut sources, batch, &ro)?;
                Ok((ro, rw))
            },
        )?;
        drop(generator);
        let gen_time = gen_started.elapsed().as_secs_f64();
        let Sampled {
            prompts,
            rollout: ro,
            mut rewards,
            drawn,
            rounds,
        } = sampled;
        let (prompt_rows, completion_rows) = ro.rows(&prompts);
        let lengths: Vec<usize> = completion_rows.iter().map(|c| c.len()).collect();
        if g.overlong_buffer_len > 0 {
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
        let (advantages, stats) = losses::outcome_advantages(
            g.advantage_estimator,
            &rewards.total,
            g.num_generations,
            g.scale_rewards,
            &lengths,
        )?;

        let mut batch = SeqBatch::new(&prompt_rows, &completion_rows, pad, &train_device);
        if g.mask_truncated_completions {
            // Rows cut by the length limit keep no token in the loss.
            let keep: Vec<f32> = ro
                .finish
                .iter()
                .map(|f| f32::from(u8::from(*f != FinishReason::Length)))
                .collect();
            let keep = Tensor::<1>::from_data(
                burn::tensor::TensorData::new(keep, [ro.finish.len()]),
                &train_device,
            )
            .reshape([ro.finish.len(), 1])
            .expand(batch.completion_mask.dims());
            batch.completion_mask = batch.completion_mask * keep;
        }
        num_tokens += prompt_rows.iter().map(|p| p.len()).sum::<usize>()
            + completion_rows.iter().map(|c| c.len()).sum::<usize>();
        let plain = train_device.clone().without_autodiff();
        let plain_batch = SeqBatch::new(&prompt_rows, &completion_rows, pad, &plain);
        let ref_lp = reference
            .as_ref()
            // Constants: a tensor without autodiff joins the graph as one, whatever the
            // training device's checkpointing strategy.
            .map(|r| score(r, &plain_batch, g.temperature).logprobs);
        let old_lp = (g.num_iterations > 1)
            .then(|| score(&policy.valid(), &plain_batch, g.temperature).logprobs);
        let adv = Tensor::<1>::from_data(
            TensorData::new(advantages.clone(), [advantages.len()]),
            &train_device,
        );
        let demo = demo_batch(&prompts, g.sft_coef, pad, &train_device);

        let objective = losses::PolicyObjective {
            loss: g.policy_loss,
            level: g.importance_sampling_level,
            // CISPO caps the weight itself (TRL's recommendation: 5), not 1 + ε.
            cispo_max: g.epsilon_high.map_or(CISPO_MAX, f64::from),
        };
        let mut last = None;
        for _ in 0..g.num_iterations.max(1) {
            // The policy loss on the scored completions, and what it measured.
            let policy_loss = |scored: HeadOutputs| -> Result<_, TrainError> {
                let entropy = scalar(super::masked_mean(
                    scored.entropy.clone().expect("asked for the entropy"),
                    batch.completion_mask.clone(),
                ));
                let old = old_lp
                    .clone()
                    .unwrap_or_else(|| scored.logprobs.clone().detach());
                // Only the highest-entropy tokens train (`top_entropy_quantile` < 1).
                let token_weight = (g.top_entropy_quantile < 1.0).then(|| {
                    let dims = batch.completion_mask.dims();
                    let ent =
                        model::host_f32(scored.entropy.clone().expect("asked for the entropy"));
                    let mask = model::host_f32(batch.completion_mask.clone());
                    let keep = losses::high_entropy_mask(&ent, &mask, g.top_entropy_quantile);
                    Tensor::<2>::from_data(TensorData::new(keep, dims), &train_device)
                });
                let out = losses::grpo_loss(
                    scored.logprobs,
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
                Ok((out.loss.clone(), (entropy, out)))
            };
            let recompute = train_cfg.recompute();
            let with_entropy = HeadExtras {
                entropy: true,
                argmax: false,
            };
            let (grads, mut loss_value, (entropy, out)) = layerwise::logprob_grads(
                &policy,
                (&batch).into(),
                g.temperature,
                with_entropy,
                recompute,
                policy_loss,
            )?;
            let grads = match &demo {
                Some(d) => {
                    let demo_loss = |scored: HeadOutputs| -> Result<_, TrainError> {
                        let mask = d.completion_mask.clone();
                        Ok((losses::demo_nll(scored.logprobs, mask) * g.sft_coef, ()))
                    };
                    let (demo_grads, demo_value, ()) = layerwise::logprob_grads(
                        &policy,
                        d.into(),
                        1.0,
                        HeadExtras::default(),
                        recompute,
                        demo_loss,
                    )?;
                    loss_value += demo_value;
                    let mut acc = GradientsAccumulator::<CausalLm>::new();
                    acc.accumulate(&policy, grads);
                    acc.accumulate(&policy, demo_grads);
                    acc.grads()
                }
                None => grads,
            };
            if !loss_value.is_finite() {
                ctx.send(Event::Failed {
                    run: ctx.id.clone(),
                    step: Some(step + 1),
                    error: format!("loss is {loss_value} at step {}", step + 1),
                });
                return Err(TrainError::NonFinite {
                    step: step + 1,
                    value: loss_value,
                });
            }
            let lr = cfg.optim.lr_at(step, total_steps);
            let (next, grad_norm) = optim.step(lr, policy, grads);
            policy = next;
            last = Some((loss_value, entropy, out, grad_norm, lr));
        }
        step += 1;
        let Some((loss_value, entropy, out, grad_norm, lr)) = last else {
            unreachable!("at least one iteration runs")
        };

        let lengths: Vec<f32> = ro.tokens.iter().map(|t| t.len() as f32).collect();
        let clipped = ro
            .finish
            .iter()
            .filter(|f| **f == FinishReason::Length)
            .count();
        let mut values = BTreeMap::new();
        values.insert("loss".into(), loss_value);
        values.insert("reward".into(), mean(&rewards.total));
        values.insert("reward_std".into(), stats.reward_std_mean);
        for (name, v) in &rewards.per_source {
            values.insert(format!("rewards/{name}/mean"), mean(v));
            values.insert(format!("rewards/{name}/std"), std(v));
        }
        values.insert("frac_reward_zero_std".into(), stats.frac_zero_std);
        if g.dynamic_sampling {
            values.insert("sampling/prompts_drawn".into(), drawn as f64);
            values.insert("sampling/rounds".into(), rounds as f64);
        }
        if let Some(kl) = out.kl_mean {
            values.insert("kl".into(), kl);
        }
        values.insert("entropy".into(), entropy);
        values.insert("clip_ratio/low_mean".into(), out.clip_low_frac);
        values.insert("clip_ratio/high_mean".into(), out.clip_high_frac);
        values.insert("clip_ratio/region_mean".into(), out.clip_region_frac);
        values.insert("completions/mean_length".into(), mean(&lengths));
        values.insert(
            "completions/clipped_ratio".into(),
            clipped as f64 / lengths.len().max(1) as f64,
        );
        values.insert("num_tokens".into(), num_tokens as f64);
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        values.insert("step_time".into(), started.elapsed().as_secs_f64());
        values.insert("timing/generation".into(), gen_time);
        if train_cfg.eval_steps > 0 && step % train_cfg.eval_steps == 0 && !eval.is_empty() {
            values.extend(evaluate(
                &model::lora::for_generation(&policy),
                &eval,
                &mut sources,
                &params,
                &tokenizer,
                &model_cfg,
                cfg.train.num_eval_generations,
            )?);
        }
        ctx.metrics(step, values);
        super::save_best_if_improved(
            ctx,
            step,
            &policy,
            &model_cfg,
            &tokenizer,
            &loaded.generation_config,
        )?;
        let samples = (0..ro.texts.len().min(SAMPLES_PER_STEP))
            .map(|i| SampleRecord {
                step,
                prompt: prompts[ro.prompt_index[i]].text.clone(),
                completion: ro.texts[i].clone(),
                rewards: rewards
                    .per_source
                    .iter()
                    .map(|(k, v)| (k.clone(), v[i] as f64))
                    .collect(),
                advantage: Some(advantages[i] as f64),
            })
            .collect();
        ctx.samples(step, samples);
        if train_cfg.save_steps > 0 && step % train_cfg.save_steps == 0 && step < total_steps {
            save(
                &policy,
                &model_cfg,
                &tokenizer,
                &loaded.generation_config,
                ctx,
                step,
                false,
                Some((&sampler, &optim, num_tokens)),
            )?;
            if let Err(e) = ctx.dir.prune_checkpoints(train_cfg.save_total_limit) {
                ctx.log(LogLevel::Warn, format!("pruning old checkpoints: {e}"));
            }
        }
    }
    save(
        &policy,
        &model_cfg,
        &tokenizer,
        &loaded.generation_config,
        ctx,
        step,
        true,
        Some((&sampler, &optim, num_tokens)),
    )?;
    Ok(RunStatus::Finished)
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

/// Saves the policy under `checkpoints/` (with what a resume needs) and reports it.
#[allow(clippy::too_many_arguments)]
fn save(
    policy: &CausalLm,
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    generation_config: &Option<serde_json::Value>,
    ctx: &mut RunContext,
    step: usize,
    is_final: bool,
    progress: Option<(&EpochSampler, &Optimizer, usize)>,
) -> Result<(), TrainError> {
    let dir = if is_final {
        ctx.dir.final_dir()
    } else {
        ctx.dir.checkpoint_dir(step)
    };
    hf::save_dir(
        &dir,
        config,
        policy,
        Some(tokenizer),
        generation_config.as_ref(),
    )?;
    if let Some((sampler, optim, num_tokens)) = progress {
        TrainerState::capture(step, sampler, num_tokens, ctx.wall_time(), policy)
            .save(&dir, optim)?;
    }
    ctx.send(Event::Checkpoint {
        run: ctx.id.clone(),
        step,
        path: dir,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> PromptItem {
        PromptItem {
            text: format!("p{n}"),
            ids: vec![n as u32],
            answer: None,
            demo: None,
        }
    }

    /// A fake generator: prompt `pN` gets rewards all equal when N is even, spread when odd.
    fn fake(batch: &[&PromptItem], _round: usize) -> Result<(Rollout, Rewards), TrainError> {
        let mut ro = Rollout {
            prompt_index: Vec::new(),
            tokens: Vec::new(),
            texts: Vec::new(),
            finish: Vec::new(),
        };
        let mut total = Vec::new();
        for (k, p) in batch.iter().enumerate() {
            let n = p.ids[0] as usize;
            for j in 0..2 {
                ro.prompt_index.push(k);
                ro.tokens.push(vec![j]);
                ro.texts.push(format!("{n}/{j}"));
                ro.finish.push(FinishReason::Eos);
                total.push(if n % 2 == 1 { j as f32 } else { 1.0 });
            }
        }
        let per_source = BTreeMap::from([("r".to_string(), total.clone())]);
        Ok((ro, Rewards { total, per_source }))
    }

    #[test]
    fn dynamic_sampling_keeps_groups_with_a_spread_and_draws_more() {
        let items: Vec<PromptItem> = (0..20).map(item).collect();
        let mut next = 4;
        let first: Vec<&PromptItem> = items[0..4].iter().collect();
        // Round 1: p0..p3, two with a spread (p1, p3); round 2 draws 2 more: p4, p5 -> p5.
        // Round 3 (the last) draws 1 and keeps it whatever its spread: p6.
        let s = sample_groups(
            first,
            2,
            3,
            |n| {
                let out = items[next..next + n].iter().collect();
                next += n;
                out
            },
            fake,
        )
        .unwrap();
        let kept: Vec<&str> = s.prompts.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(kept, ["p1", "p3", "p5", "p6"]);
        assert_eq!((s.drawn, s.rounds), (7, 3));
        assert_eq!(s.rollout.texts.len(), 8);
        assert_eq!(s.rollout.prompt_index, [0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(s.rewards.per_source["r"], s.rewards.total);
        // Off (one round): the first batch as it is.
        let first: Vec<&PromptItem> = items[0..4].iter().collect();
        let s = sample_groups(first, 2, 1, |_| Vec::new(), fake).unwrap();
        assert_eq!(s.prompts.len(), 4);
        assert_eq!((s.drawn, s.rounds), (4, 1));
    }

    /// Three prompts, two completions each: exact match 1/0, 0/0, 1/1 gives mean 0.5 and
    /// pass@2 = 2/3; a source that never reaches 1 passes nothing.
    #[test]
    fn eval_metrics_give_mean_and_pass_at_k() {
        let em = vec![1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        let fmt = vec![0.5; 6];
        let rewards = Rewards {
            total: em.iter().zip(&fmt).map(|(a, b)| a + 0.1 * b).collect(),
            per_source: BTreeMap::from([
                ("exact_match".to_string(), em),
                ("format".to_string(), fmt),
            ]),
        };
        let m = eval_metrics(&rewards, 2);
        assert!((m["eval/rewards/exact_match/mean"] - 0.5).abs() < 1e-9);
        assert!((m["eval/rewards/exact_match/mean@2"] - 0.5).abs() < 1e-9);
        assert!((m["eval/rewards/exact_match/pass@2"] - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(m["eval/rewards/format/pass@2"], 0.0);
        assert!((m["eval/reward"] - 0.55).abs() < 1e-6);
        // One greedy completion per prompt: means only, as before.
        assert!(!eval_metrics(&rewards, 1).keys().any(|k| k.contains('@')));
    }
}
