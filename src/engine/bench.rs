//! Throughput of the three things RL fine-tuning spends its time on: training steps
//! (forward + backward + AdamW), rollouts (batched KV-cache generation) and scoring
//! (no-grad forward, as for a reference model), plus one full GRPO step split into
//! generation / scoring / update. Used by `rlft bench`.

use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use serde::Serialize;

use crate::engine::algo::layerwise::{self, HeadExtras};
use crate::engine::algo::lm::{lm_grads, lm_loss};
use crate::engine::algo::losses::{self, GrpoLossType, ScaleRewards};
use crate::engine::algo::rollout::{PromptItem, Rollout, compute_rewards};
use crate::engine::algo::sequences::{SeqBatch, score};
use crate::engine::algo::{BatchTensors, TrainError, masked_mean, scalar};
use crate::engine::data::{PaddedBatch, TokenizedExample, pad_batch};
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{CausalLm, CpuDecoder, ModelConfig};
use crate::engine::optim::{OptimConfig, Optimizer};
use crate::engine::reward::{ExactMatch, RewardSource};
use crate::engine::sample::{self, SamplingParams};
use crate::engine::tasks::AnswerKind;

/// KL coefficient of the benchmarked GRPO step: non-zero, so the step scores a frozen
/// reference model as most RLHF recipes do.
const GRPO_BENCH_BETA: f64 = 0.04;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub batch: usize,
    pub seq: usize,
    /// Timed iterations after one warm-up.
    pub iters: usize,
    /// Completions per prompt (G) of the GRPO step; `batch` is rounded down to a multiple.
    pub generations: usize,
    /// Time only the GRPO step (the other figures are NaN): for shapes where each phase costs
    /// minutes on a CPU.
    pub only_grpo: bool,
    /// Decoder layers recomputed in the backward pass (`gradient_checkpointing`; see
    /// `algo::layerwise`): None keeps every layer's activations.
    pub recompute: Option<usize>,
    /// How frozen weights are stored (`[model] dtype`): the LoRA base and the reference.
    pub frozen_dtype: crate::engine::model::WeightDtype,
    /// `[train] precision` (mixed precision is entered by the caller, on its thread).
    pub precision: crate::engine::model::precision::Precision,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub params: usize,
    /// Parameters that train (all of them without LoRA).
    pub trainable_params: usize,
    /// `LoRA r=.. alpha=.. all-linear`, or `full fine-tuning`.
    pub training: String,
    /// Gradients were computed layer by layer (`gradient_checkpointing = true`).
    pub gradient_checkpointing: bool,
    /// How many decoder layers were recomputed.
    pub recomputed_layers: usize,
    /// How frozen weights were stored (`f32`, `bf16`, `f16`).
    pub frozen_dtype: String,
    /// Training precision: `f32`, or `f16` (mixed).
    pub precision: String,
    /// Bytes of the policy's parameters as stored, in MB.
    pub weights_mb: f64,
    pub batch: usize,
    pub seq: usize,
    pub train_tokens_per_s: f64,
    pub train_step_s: f64,
    pub rollout_tokens_per_s: f64,
    /// Rollout tokens/s after the prompt is in the cache (the prefill and the first token
    /// excluded), the figure llama.cpp's `llama-bench` reports for generation.
    pub decode_tokens_per_s: f64,
    /// New tokens per rollout row.
    pub rollout_new_tokens: usize,
    pub score_tokens_per_s: f64,
    /// Model FLOPs utilisation basis: 6 * params * tokens / s for training, in GFLOP/s.
    pub train_gflops: f64,
    pub peak_rss_mb: f64,
    /// Worker threads the CPU backend may use (see [`cpu_threads`]).
    pub threads: usize,
    /// One GRPO step (`grpo_prompts` x `grpo_generations` completions of
    /// `grpo_new_tokens` tokens after `seq - grpo_new_tokens` prompt tokens, exact-match
    /// reward on sums, k3 KL to a frozen reference, one AdamW update); `None` without a
    /// tokenizer. Seconds, mean over the timed steps.
    pub grpo_step_s: Option<f64>,
    /// Sampling the completions (no-grad KV-cache decoding) and decoding them to text.
    pub grpo_generation_s: Option<f64>,
    /// Rewards, group advantages and the reference model's log-probs (no-grad forward).
    pub grpo_scoring_s: Option<f64>,
    /// Policy forward with autodiff, GRPO loss, backward and AdamW.
    pub grpo_update_s: Option<f64>,
    pub grpo_prompts: Option<usize>,
    pub grpo_generations: Option<usize>,
    pub grpo_new_tokens: Option<usize>,
}

/// Per-phase seconds of one GRPO step.
#[derive(Clone, Copy, Debug, Default)]
struct GrpoTimes {
    generation: f64,
    scoring: f64,
    update: f64,
}

impl std::ops::AddAssign for GrpoTimes {
    fn add_assign(&mut self, o: Self) {
        self.generation += o.generation;
        self.scoring += o.scoring;
        self.update += o.update;
    }
}

/// Peak resident set size of this process, from `/proc/self/status` (0 where unavailable).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Worker threads of the CPU backend's pool: `RAYON_NUM_THREADS` when set to a positive
/// number (rayon reads it), else the machine's available parallelism.
pub fn cpu_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Deterministic pseudo-random token rows (no tokenizer needed).
fn token_rows(batch: usize, len: usize, vocab: usize, salt: u64) -> Vec<Vec<u32>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn batch_of(rows: &[Vec<u32>]) -> PaddedBatch {
    let examples: Vec<TokenizedExample> = rows
        .iter()
        .map(|r| TokenizedExample {
            input_ids: r.clone(),
            loss_mask: vec![true; r.len()],
        })
        .collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    pad_batch(&refs, 0, false)
}

/// Arithmetic prompts of exactly `prompt_len` tokens: few-shot sums `a + b = c` ending in a
/// question whose sum is the answer (the left end of the few-shot text is cut off).
fn arithmetic_prompts(n: usize, prompt_len: usize, tokenizer: &Tokenizer) -> Vec<PromptItem> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        10 + (x % 90)
    };
    (0..n)
        .map(|_| {
            let mut shots = String::new();
            let (a, b) = (next(), next());
            let question = format!("{a} + {b} =");
            let ids = loop {
                let ids = tokenizer
                    .encode(&format!("{shots}{question}"), false)
                    .unwrap_or_default();
                // Stop once long enough, or if the tokenizer yields nothing.
                if ids.len() >= prompt_len || (ids.is_empty() && shots.len() > 4096) {
                    break ids[ids.len().saturating_sub(prompt_len)..].to_vec();
                }
                let (c, d) = (next(), next());
                shots.push_str(&format!("{c} + {d} = {}\n", c + d));
            };
            PromptItem {
                text: question,
                ids,
                answer: Some((a + b).to_string()),
                demo: None,
            }
        })
        .collect()
}

/// One GRPO step as `algo::grpo::run` takes it (μ = 1, DAPO loss, group-scaled advantages),
/// with a fixed completion length (EOS ignored) so steps compare across engines.
#[allow(clippy::too_many_arguments)]
fn grpo_step(
    policy: CausalLm,
    optim: &mut Optimizer,
    reference: &CausalLm,
    prompts: &[PromptItem],
    generations: usize,
    new_tokens: usize,
    tokenizer: &Tokenizer,
    config: &ModelConfig,
    seed: u64,
    recompute: Option<usize>,
) -> (CausalLm, GrpoTimes) {
    let train_device = policy.embed_tokens.val().device();
    let plain = train_device.clone().without_autodiff();
    let pad = tokenizer
        .pad_id()
        .or_else(|| tokenizer.eos_ids().first().copied())
        .unwrap_or(0);
    let refs: Vec<&PromptItem> = prompts.iter().collect();
    let mut times = GrpoTimes::default();

    // Generation: G samples per prompt from a no-grad copy of the policy.
    let start = Instant::now();
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.ids.clone(), generations))
        .collect();
    let params = SamplingParams {
        max_new_tokens: new_tokens,
        temperature: 1.0,
        seed,
        ..Default::default()
    };
    let gens = sample::generate(
        &crate::engine::model::lora::for_generation(&policy),
        &rows,
        &params,
        &[],
        pad,
        None,
        config.max_position_embeddings,
    );
    let mut ro = Rollout {
        prompt_index: (0..rows.len()).map(|i| i / generations).collect(),
        tokens: Vec::with_capacity(gens.len()),
        texts: Vec::with_capacity(gens.len()),
        finish: Vec::with_capacity(gens.len()),
    };
    for g in gens {
        ro.texts
            .push(tokenizer.decode(&g.tokens, true).unwrap_or_default());
        ro.tokens.push(g.tokens);
        ro.finish.push(g.finish);
    }
    times.generation = start.elapsed().as_secs_f64();

    // Scoring: rewards, advantages and the frozen reference's log-probs.
    let start = Instant::now();
    let mut sources: Vec<(Box<dyn RewardSource>, f32)> =
        vec![(Box::new(ExactMatch::new(AnswerKind::Integer)), 1.0)];
    let rewards = compute_rewards(&mut sources, &refs, &ro).expect("exact-match rewards");
    let (advantages, _) = losses::grpo_advantages(&rewards.total, generations, ScaleRewards::Group)
        .expect("group advantages");
    let (prompt_rows, completion_rows) = ro.rows(&refs);
    let plain_batch = SeqBatch::new(&prompt_rows, &completion_rows, pad, &plain);
    let ref_lp = score(reference, &plain_batch, 1.0).logprobs;
    let _ = ref_lp.clone().slice([0..1, 0..1]).into_data();
    times.scoring = start.elapsed().as_secs_f64();

    // Update: policy forward with autodiff, loss, backward, AdamW.
    let start = Instant::now();
    let batch = SeqBatch::new(&prompt_rows, &completion_rows, pad, &train_device);
    let adv = Tensor::<1>::from_data(
        TensorData::new(advantages.clone(), [advantages.len()]),
        &train_device,
    );
    let extras = HeadExtras {
        entropy: true,
        argmax: false,
    };
    let (grads, _, ()) =
        layerwise::logprob_grads(&policy, (&batch).into(), 1.0, extras, recompute, |scored| {
            let _entropy = scalar(masked_mean(
                scored.entropy.clone().expect("asked for the entropy"),
                batch.completion_mask.clone(),
            ));
            let old = scored.logprobs.clone().detach();
            let out = losses::grpo_loss(
                scored.logprobs,
                old,
                Some(ref_lp),
                adv,
                batch.completion_mask.clone(),
                0.2,
                0.2,
                GRPO_BENCH_BETA,
                GrpoLossType::Dapo,
                new_tokens,
                losses::PolicyObjective::default(),
                None,
            )?;
            Ok::<_, TrainError>((out.loss, ()))
        })
        .expect("grpo loss");
    let (next, _) = optim.step(1e-6, policy, grads);
    let _ = next.embed_tokens.val().slice([0..1, 0..1]).into_data();
    times.update = start.elapsed().as_secs_f64();
    (next, times)
}

/// Runs the measurements on `model`, which must be loaded on `device.autodiff()`: training
/// uses it directly, scoring and rollouts a no-grad `valid()` copy. The GRPO step needs
/// `tokenizer` (its reward reads text); without one it is skipped.
pub fn run(
    name: &str,
    config: &ModelConfig,
    model: CausalLm,
    tokenizer: Option<&Tokenizer>,
    device: &Device,
    device_name: &str,
    opts: &BenchOptions,
) -> BenchReport {
    let (b, t) = (opts.batch, opts.seq.min(config.max_position_embeddings));
    let rows = token_rows(b, t, config.vocab_size, 1);
    let tokens = (b * t) as f64;

    let (trainable_params, _) = crate::engine::model::lora::parameter_counts(&model);
    let weights_mb = crate::engine::model::precision::stored_bytes(&model) as f64 / 1e6;
    let training = model
        .adapter
        .as_ref()
        .map_or_else(|| "full fine-tuning".to_string(), |a| a.describe());
    // Scoring: no-grad forward over the whole batch. With LoRA this is the base (the
    // reference a run uses; generation and serving merge the adapters into it).
    let plain = device.clone().without_autodiff();
    let score_batch = BatchTensors::new(&batch_of(&rows), &plain);
    // The GRPO step's reference: the base with the adapters off (LoRA) or a frozen copy,
    // stored as `--dtype` (as `[model] dtype` does in a run).
    let score_model = crate::engine::model::precision::store_frozen(
        crate::engine::model::lora::without_adapters(model.valid()),
        opts.frozen_dtype,
    );
    let time_score = || {
        let start = Instant::now();
        let out = lm_loss(&score_model, &score_batch);
        let _ = scalar(out.loss);
        start.elapsed().as_secs_f64()
    };
    let timed = if opts.only_grpo { 0 } else { opts.iters };
    if timed > 0 {
        time_score();
    }
    let score_s: f64 = (0..timed).map(|_| time_score()).sum::<f64>() / timed as f64;

    // Rollouts: prompts of a quarter of the sequence, the rest generated (EOS ignored).
    let prompt_len = (t / 4).max(1);
    let new_tokens = t - prompt_len;
    let prompts = token_rows(b, prompt_len, config.vocab_size, 2);
    let params = SamplingParams {
        max_new_tokens: new_tokens,
        temperature: 1.0,
        ..Default::default()
    };
    // One row on the CPU is what `rlft generate` and `rlft serve` do: the single-sequence
    // decoder, built once as they build it (not timed).
    let cpu_decoder = (b == 1 && device_name.starts_with("cpu"))
        .then(|| CpuDecoder::from_model(&model))
        .flatten();
    // Seconds for the whole rollout, and for its decoding alone: from the first sampled token
    // to the last, as llama.cpp's `llama-bench` times generation after its context.
    let rollout = || {
        let start = Instant::now();
        let mut first: Option<Instant> = None;
        let mut last = start;
        let mut stamp = || {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
        };
        match &cpu_decoder {
            Some(decoder) => {
                let _ = sample::generate_on_cpu(
                    decoder,
                    &prompts[0],
                    &params,
                    &[],
                    0,
                    None,
                    config.max_position_embeddings,
                    &mut |_| {
                        stamp();
                        true
                    },
                );
            }
            None => {
                let _ = sample::generate_with(
                    &score_model,
                    &prompts,
                    &params,
                    &[],
                    0,
                    None,
                    config.max_position_embeddings,
                    &mut |_, _| {
                        stamp();
                        true
                    },
                );
            }
        }
        let total = start.elapsed().as_secs_f64();
        let decode = first.map_or(0.0, |f| (last - f).as_secs_f64());
        (total, decode)
    };
    if timed > 0 {
        rollout();
    }
    let (mut rollout_s, mut decode_s) = if timed > 0 {
        (0.0, 0.0)
    } else {
        (f64::NAN, f64::NAN)
    };
    for _ in 0..timed {
        let (total, decode) = rollout();
        rollout_s += total / timed as f64;
        decode_s += decode / timed as f64;
    }
    drop(cpu_decoder);

    // Training: forward + backward + AdamW on an autodiff copy.
    let train_device = model.embed_tokens.val().device();
    let gradient_checkpointing = opts.recompute.is_some_and(|n| n > 0);
    let recomputed_layers = opts.recompute.unwrap_or(0).min(config.num_hidden_layers);
    let mut policy = model;
    let mut optim = Optimizer::new(OptimConfig::default());
    let train_batch = BatchTensors::new(&batch_of(&rows), &train_device);
    let mut step = |policy: CausalLm| {
        let start = Instant::now();
        let (grads, _, _) = lm_grads(&policy, &train_batch, 1.0, opts.recompute);
        let (next, _) = optim.step(1e-5, policy, grads);
        // Force the update to finish before the clock stops.
        let _ = next.embed_tokens.val().slice([0..1, 0..1]).into_data();
        (next, start.elapsed().as_secs_f64())
    };
    if timed > 0 {
        (policy, _) = step(policy);
    }
    let mut train_s = 0.0;
    for _ in 0..timed {
        let (next, s) = step(policy);
        policy = next;
        train_s += s;
    }
    train_s /= timed as f64;

    // One GRPO step: B/G prompts of T/2 tokens x G completions of T - T/2 tokens.
    let g = opts.generations.clamp(1, b);
    let grpo = if let Some(tok) = tokenizer {
        let prompt_len = (t / 2).max(1);
        let new_tokens = t - prompt_len;
        let prompts = arithmetic_prompts(b / g, prompt_len, tok);
        let mut total = GrpoTimes::default();
        for i in 0..opts.iters {
            let (next, times) = grpo_step(
                policy,
                &mut optim,
                &score_model,
                &prompts,
                g,
                new_tokens,
                tok,
                config,
                i as u64 + 1,
                opts.recompute,
            );
            policy = next;
            total += times;
        }
        let n = opts.iters as f64;
        Some((
            GrpoTimes {
                generation: total.generation / n,
                scoring: total.scoring / n,
                update: total.update / n,
            },
            prompts.len(),
            new_tokens,
        ))
    } else {
        None
    };
    drop(policy);
    let params = config.num_params();
    BenchReport {
        model: name.into(),
        device: device_name.into(),
        params,
        batch: b,
        seq: t,
        train_tokens_per_s: tokens / train_s,
        train_step_s: train_s,
        rollout_tokens_per_s: (b * new_tokens) as f64 / rollout_s,
        // The first token of each row comes from the prefill.
        decode_tokens_per_s: if decode_s.is_nan() {
            f64::NAN
        } else {
            (b * new_tokens.saturating_sub(1)) as f64 / decode_s.max(1e-9)
        },
        rollout_new_tokens: new_tokens,
        score_tokens_per_s: tokens / score_s,
        train_gflops: 6.0 * params as f64 * tokens / train_s / 1e9,
        peak_rss_mb: peak_rss_mb(),
        trainable_params,
        training,
        gradient_checkpointing,
        recomputed_layers,
        frozen_dtype: opts.frozen_dtype.name().into(),
        precision: opts.precision.name().into(),
        weights_mb,
        threads: cpu_threads(),
        grpo_step_s: grpo.map(|(x, _, _)| x.generation + x.scoring + x.update),
        grpo_generation_s: grpo.map(|(x, _, _)| x.generation),
        grpo_scoring_s: grpo.map(|(x, _, _)| x.scoring),
        grpo_update_s: grpo.map(|(x, _, _)| x.update),
        grpo_prompts: grpo.map(|(_, p, _)| p),
        grpo_generations: grpo.map(|_| g),
        grpo_new_tokens: grpo.map(|(_, _, n)| n),
    }
}
