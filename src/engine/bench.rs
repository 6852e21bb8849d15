//! Throughput of the three things RL fine-tuning spends its time on: training steps
//! (forward + backward + AdamW), rollouts (batched KV-cache generation) and scoring
//! (no-grad forward, as for a reference model). Used by `rlft bench`.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::Serialize;

use crate::engine::algo::lm::lm_loss;
use crate::engine::algo::{BatchTensors, scalar};
use crate::engine::data::{PaddedBatch, TokenizedExample, pad_batch};
use crate::engine::model::{Llama, LlamaConfig};
use crate::engine::optim::{OptimConfig, Optimizer};
use crate::engine::sample::{self, SamplingParams};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub batch: usize,
    pub seq: usize,
    /// Timed iterations after one warm-up.
    pub iters: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub params: usize,
    pub batch: usize,
    pub seq: usize,
    pub train_tokens_per_s: f64,
    pub train_step_s: f64,
    pub rollout_tokens_per_s: f64,
    /// New tokens per rollout row.
    pub rollout_new_tokens: usize,
    pub score_tokens_per_s: f64,
    /// Model FLOPs utilisation basis: 6 * params * tokens / s for training, in GFLOP/s.
    pub train_gflops: f64,
    pub peak_rss_mb: f64,
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

/// Runs the three measurements on `model`, which must be loaded on `device.autodiff()`:
/// training uses it directly, scoring and rollouts a no-grad `valid()` copy.
pub fn run(
    name: &str,
    config: &LlamaConfig,
    model: Llama,
    device: &Device,
    device_name: &str,
    opts: &BenchOptions,
) -> BenchReport {
    let (b, t) = (opts.batch, opts.seq.min(config.max_position_embeddings));
    let rows = token_rows(b, t, config.vocab_size, 1);
    let tokens = (b * t) as f64;

    // Scoring: no-grad forward over the whole batch.
    let plain = device.clone().without_autodiff();
    let score_batch = BatchTensors::new(&batch_of(&rows), &plain);
    let score_model = model.valid();
    let time_score = || {
        let start = Instant::now();
        let out = lm_loss(&score_model, &score_batch);
        let _ = scalar(out.loss);
        start.elapsed().as_secs_f64()
    };
    time_score();
    let score_s: f64 = (0..opts.iters).map(|_| time_score()).sum::<f64>() / opts.iters as f64;

    // Rollouts: prompts of a quarter of the sequence, the rest generated (EOS ignored).
    let prompt_len = (t / 4).max(1);
    let new_tokens = t - prompt_len;
    let prompts = token_rows(b, prompt_len, config.vocab_size, 2);
    let params = SamplingParams {
        max_new_tokens: new_tokens,
        temperature: 1.0,
        ..Default::default()
    };
    let rollout = || {
        let start = Instant::now();
        let _ = sample::generate(
            &score_model,
            &prompts,
            &params,
            &[],
            0,
            None,
            config.max_position_embeddings,
        );
        start.elapsed().as_secs_f64()
    };
    rollout();
    let rollout_s = rollout();

    // Training: forward + backward + AdamW on an autodiff copy.
    let train_device = device.clone().autodiff();
    let mut policy = model;
    let mut optim = Optimizer::new(OptimConfig::default());
    let train_batch = BatchTensors::new(&batch_of(&rows), &train_device);
    let mut step = |policy: Llama| {
        let start = Instant::now();
        let out = lm_loss(&policy, &train_batch);
        let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
        let (next, _) = optim.step(1e-5, policy, grads);
        // Force the update to finish before the clock stops.
        let _ = next.embed_tokens.val().slice([0..1, 0..1]).into_data();
        (next, start.elapsed().as_secs_f64())
    };
    (policy, _) = step(policy);
    let mut train_s = 0.0;
    for _ in 0..opts.iters {
        let (next, s) = step(policy);
        policy = next;
        train_s += s;
    }
    train_s /= opts.iters as f64;
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
        rollout_new_tokens: new_tokens,
        score_tokens_per_s: tokens / score_s,
        train_gflops: 6.0 * params as f64 * tokens / train_s / 1e9,
        peak_rss_mb: peak_rss_mb(),
    }
}
