//! Batched generation with a KV cache: left-padded prompts, temperature / top-k / top-p,
//! stop on EOS or stop strings, seeded. Returns token ids, per-token logprobs and finish
//! reasons, which RL algorithms reuse as the "old" policy's logprobs.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{CausalLm, CpuDecoder, KvCache, host_f32};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables nucleus sampling.
    pub top_p: f32,
    pub stop_strings: Vec<String>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            stop_strings: Vec::new(),
            seed: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was produced (it is included in `tokens`).
    Eos,
    /// A stop string appeared in the decoded text.
    Stop,
    /// `max_new_tokens` or the model's context length was reached.
    Length,
}

impl FinishReason {
    /// How generation ended, in words.
    pub fn describe(self) -> &'static str {
        match self {
            FinishReason::Eos => "end of sequence",
            FinishReason::Stop => "stop string",
            FinishReason::Length => "length limit",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the temperature-scaled distribution, before top-k
    /// or top-p filtering (what TRL's GRPO uses as the old policy's logprobs).
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
}

impl Generation {
    /// No tokens yet; `Length` until a token ends it.
    fn empty() -> Self {
        Self {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish: FinishReason::Length,
        }
    }
}

/// Left-padded batch tensors: ids, RoPE positions and the real-token mask.
pub struct PaddedInput {
    pub ids: Tensor<2, Int>,
    pub positions: Tensor<2, Int>,
    pub valid: Tensor<2, Bool>,
    /// Host copy of `valid`, extended as decoding goes on.
    pub valid_host: Vec<Vec<bool>>,
    pub next_position: Vec<i64>,
}

/// Left-pads `rows` with `pad_id`; positions count from each row's first real token, as
/// transformers does (`cumsum(mask) - 1`).
pub fn left_pad(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> PaddedInput {
    let b = rows.len();
    let t = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(b * t);
    let mut positions = Vec::with_capacity(b * t);
    let mut valid = Vec::with_capacity(b);
    let mut next_position = Vec::with_capacity(b);
    for row in rows {
        let pad = t - row.len();
        let mut v = vec![false; pad];
        v.extend(std::iter::repeat_n(true, row.len()));
        ids.extend(std::iter::repeat_n(pad_id as i64, pad));
        ids.extend(row.iter().map(|&x| x as i64));
        positions.extend(std::iter::repeat_n(0i64, pad));
        positions.extend(0..row.len() as i64);
        next_position.push(row.len() as i64);
        valid.push(v);
    }
    PaddedInput {
        ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
        positions: Tensor::from_data(TensorData::new(positions, [b, t]), device),
        valid: bool_tensor(&valid, device),
        valid_host: valid,
        next_position,
    }
}

pub fn bool_tensor(rows: &[Vec<bool>], device: &Device) -> Tensor<2, Bool> {
    let b = rows.len();
    let s = rows.first().map_or(0, Vec::len);
    let flat: Vec<bool> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}

/// Generates continuations for a batch of tokenised prompts. `model` should be a no-grad copy
/// (`model.valid()`): generation never needs an autodiff graph.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    eos_ids: &[u32],
    pad_id: u32,
    tokenizer: Option<&Tokenizer>,
    max_positions: usize,
) -> Vec<Generation> {
    generate_with(
        model,
        prompts,
        params,
        eos_ids,
        pad_id,
        tokenizer,
        max_positions,
        &mut |_, _| true,
    )
}

/// [`generate`], calling `on_token(row, generation so far)` after each token a row produces
/// (for streaming). Returning `false` stops that row (a client that went away).
#[allow(clippy::too_many_arguments)]
pub fn generate_with(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    eos_ids: &[u32],
    pad_id: u32,
    tokenizer: Option<&Tokenizer>,
    max_positions: usize,
    on_token: &mut dyn FnMut(usize, &Generation) -> bool,
) -> Vec<Generation> {
    let device = model.embed_tokens.val().device();
    let b = prompts.len();
    if b == 0 {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut input = left_pad(prompts, pad_id, &device);
    let mut out: Vec<Generation> = (0..b).map(|_| Generation::empty()).collect();
    let mut done = vec![false; b];
    let prompt_len = input.valid_host[0].len();
    let budget = params
        .max_new_tokens
        .min(max_positions.saturating_sub(prompts.iter().map(Vec::len).max().unwrap_or(0)));
    if budget == 0 {
        return out;
    }
    // Keys and values for every position this call can reach, allocated once.
    let capacity = prompt_len + budget;
    let mut cache = KvCache::with_capacity(model.num_layers(), capacity);
    // On a GPU each new sequence length compiles (and tunes) new kernels, seconds per token
    // on first use: there decoding attends over the cache's whole capacity, the slots not yet
    // written masked, so every step has the same shapes. The CPU attends over what is
    // written, which costs less.
    let fixed_shapes = device != Device::flex();

    let mut hidden = model.hidden(
        input.ids.clone(),
        input.positions.clone(),
        input.valid.clone(),
        Some(&mut cache),
    );
    let mut last = hidden.narrow(1, prompt_len - 1, 1);
    // Batch position -> original row. Rows that ended are dropped from the batch (and their
    // cache) once enough of them have, so a long tail of generation costs only the rows still
    // writing. Rows are sampled in their original order either way, so the random stream, and
    // with it every generation, is the same as without dropping.
    let mut active: Vec<usize> = (0..b).collect();
    for step in 0..budget {
        let logits = model.logits(last).squeeze_dim::<2>(1);
        let vocab = logits.dims()[1];
        let host = host_f32(logits);
        let mut next = vec![pad_id; active.len()];
        for (slot, &row) in active.iter().enumerate() {
            if done[row] {
                continue;
            }
            let (token, logprob) =
                sample_token(&host[slot * vocab..(slot + 1) * vocab], params, &mut rng);
            next[slot] = token;
            let g = &mut out[row];
            done[row] = push_token(g, token, logprob, eos_ids, params, tokenizer);
            if !on_token(row, g) {
                done[row] = true;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == budget {
            break;
        }
        // Drop ended rows once they are a quarter of the batch: the copy of the cache that
        // costs is then paid back by the rows no longer computed.
        let ended = active.iter().filter(|&&r| done[r]).count();
        if ended > 0 && ended * 4 >= active.len() {
            let keep: Vec<usize> = (0..active.len()).filter(|&i| !done[active[i]]).collect();
            cache.keep_rows(&keep);
            pick_rows(&mut input.valid_host, &keep);
            pick_rows(&mut input.next_position, &keep);
            pick_rows(&mut next, &keep);
            active = keep.iter().map(|&i| active[i]).collect();
        }
        let n = active.len();
        // Rows that ended but are still in the batch feed padding that nothing attends to.
        let mut positions = Vec::with_capacity(n);
        for ((valid, next_pos), &row) in input
            .valid_host
            .iter_mut()
            .zip(input.next_position.iter_mut())
            .zip(&active)
        {
            valid.push(!done[row]);
            positions.push(*next_pos);
            *next_pos += 1;
        }
        let ids = Tensor::<1, Int>::from_data(
            TensorData::new(next.iter().map(|&x| x as i64).collect::<Vec<_>>(), [n]),
            &device,
        )
        .reshape([n, 1]);
        let pos =
            Tensor::<1, Int>::from_data(TensorData::new(positions, [n]), &device).reshape([n, 1]);
        let valid = if fixed_shapes {
            let padded: Vec<Vec<bool>> = input
                .valid_host
                .iter()
                .map(|row| {
                    let mut row = row.clone();
                    row.resize(capacity.max(row.len()), false);
                    row
                })
                .collect();
            bool_tensor(&padded, &device)
        } else {
            bool_tensor(&input.valid_host, &device)
        };
        hidden = model.hidden(ids, pos, valid, Some(&mut cache));
        last = hidden;
    }
    out
}

/// Appends a sampled token to `g`; true when it ends the generation (EOS or a stop string),
/// with `g.finish` set to why.
fn push_token(
    g: &mut Generation,
    token: u32,
    logprob: f32,
    eos_ids: &[u32],
    params: &SamplingParams,
    tokenizer: Option<&Tokenizer>,
) -> bool {
    g.tokens.push(token);
    g.logprobs.push(logprob);
    if eos_ids.contains(&token) {
        g.finish = FinishReason::Eos;
        return true;
    }
    if !params.stop_strings.is_empty()
        && let Some(tok) = tokenizer
        && let Ok(text) = tok.decode(&g.tokens, false)
        && params
            .stop_strings
            .iter()
            .any(|s| text.contains(s.as_str()))
    {
        g.finish = FinishReason::Stop;
        return true;
    }
    false
}

/// [`generate_with`] for one prompt on a [`CpuDecoder`] (`rlft generate`, `rlft serve` and
/// one-row rollouts on the CPU). Same sampling, random stream and stopping rules, so a seed
/// gives the same text as the batched path up to float rounding. `on_token` gets the
/// generation so far after each token; returning `false` stops it.
#[allow(clippy::too_many_arguments)]
pub fn generate_on_cpu(
    decoder: &CpuDecoder,
    prompt: &[u32],
    params: &SamplingParams,
    eos_ids: &[u32],
    pad_id: u32,
    tokenizer: Option<&Tokenizer>,
    max_positions: usize,
    on_token: &mut dyn FnMut(&Generation) -> bool,
) -> Generation {
    let mut g = Generation::empty();
    // An empty prompt reads one padding token, as the batched path's left padding does.
    let pad = [pad_id];
    let prompt = if prompt.is_empty() { &pad[..] } else { prompt };
    let budget = params
        .max_new_tokens
        .min(max_positions.saturating_sub(prompt.len()));
    if budget == 0 {
        return g;
    }
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut state = decoder.new_state(prompt.len() + budget);
    let mut logits = decoder.forward(&mut state, prompt);
    for step in 0..budget {
        let (token, logprob) = sample_token(&logits, params, &mut rng);
        let ended = push_token(&mut g, token, logprob, eos_ids, params, tokenizer);
        if !on_token(&g) || ended || step + 1 == budget {
            break;
        }
        logits = decoder.forward(&mut state, &[token]);
    }
    g
}

/// Generates one sequence at a time, as `rlft generate` and `rlft serve` do: with a
/// [`CpuDecoder`] when the model lives on the CPU (faster for one row), else with the model on
/// its device.
// One per process: the size of the enum does not matter.
#[allow(clippy::large_enum_variant)]
pub enum SingleSequence {
    Cpu(CpuDecoder),
    Model(CausalLm),
}

impl SingleSequence {
    /// Takes the model; on the CPU, when the decoder implements its family's block, its
    /// weights are copied into a decoder and it is dropped (other families decode on the
    /// batched path).
    pub fn new(model: CausalLm) -> Self {
        if model.embed_tokens.val().device() == Device::flex()
            && let Some(decoder) = CpuDecoder::from_model(&model)
        {
            return Self::Cpu(decoder);
        }
        Self::Model(model)
    }

    /// [`generate_on_cpu`] or a one-row [`generate_with`].
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        eos_ids: &[u32],
        pad_id: u32,
        tokenizer: Option<&Tokenizer>,
        max_positions: usize,
        on_token: &mut dyn FnMut(&Generation) -> bool,
    ) -> Generation {
        match self {
            Self::Cpu(decoder) => generate_on_cpu(
                decoder,
                prompt,
                params,
                eos_ids,
                pad_id,
                tokenizer,
                max_positions,
                on_token,
            ),
            Self::Model(model) => generate_with(
                model,
                &[prompt.to_vec()],
                params,
                eos_ids,
                pad_id,
                tokenizer,
                max_positions,
                &mut |_, g| on_token(g),
            )
            .pop()
            .unwrap_or_else(Generation::empty),
        }
    }
}

/// Keeps the rows `keep` of `v`, in that order.
fn pick_rows<T: Clone>(v: &mut Vec<T>, keep: &[usize]) {
    let old = std::mem::take(v);
    *v = keep.iter().map(|&i| old[i].clone()).collect();
}

/// Picks one token from a row of logits; returns it with its log-probability under the
/// temperature-scaled distribution.
pub fn sample_token(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> (u32, f32) {
    let temperature = if params.temperature > 0.0 {
        params.temperature
    } else {
        1.0
    };
    let scaled: Vec<f32> = logits.iter().map(|&l| l / temperature).collect();
    let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scaled.iter().map(|&l| (l - max).exp()).collect();
    let log_z = max + weights.iter().sum::<f32>().ln();
    if params.temperature <= 0.0 {
        let best = argmax(&scaled);
        return (best as u32, scaled[best] - log_z);
    }
    let vocab = scaled.len();
    let k = if params.top_k > 0 {
        params.top_k.min(vocab)
    } else {
        vocab
    };
    if k == vocab && params.top_p >= 1.0 {
        // No filter: invert the CDF in vocabulary order. The law is the one of a walk in
        // probability order, without sorting the whole vocabulary for every token.
        // `weights` are the unnormalised probabilities exp(l - max).
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        let mut u = rng.random::<f32>() as f64 * total;
        let mut pick = argmax(&scaled);
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                pick = i;
                if u < w as f64 {
                    break;
                }
                u -= w as f64;
            }
        }
        return (pick as u32, scaled[pick] - log_z);
    }
    // Candidates by decreasing probability; top-k then top-p cut the tail. Only as much of
    // the order as the nucleus needs is sorted (a growing head of the candidates).
    let by_prob = |a: &usize, b: &usize| scaled[*b].total_cmp(&scaled[*a]);
    let mut order: Vec<usize> = (0..vocab).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_prob);
        order.truncate(k);
    }
    let mut probs: Vec<f32> = Vec::with_capacity(order.len());
    let mut keep = order.len();
    let mut cumulative = 0.0;
    let mut chunk = if params.top_p < 1.0 { 64 } else { order.len() };
    'sorting: while probs.len() < order.len() {
        let start = probs.len();
        let end = (start + chunk).min(order.len());
        if end < order.len() {
            order[start..].select_nth_unstable_by(end - start - 1, by_prob);
        }
        order[start..end].sort_unstable_by(by_prob);
        for i in start..end {
            let p = (scaled[order[i]] - log_z).exp();
            probs.push(p);
            if params.top_p < 1.0 {
                cumulative += p;
                if cumulative >= params.top_p {
                    keep = i + 1;
                    break 'sorting;
                }
            }
        }
        chunk *= 4;
    }
    let keep = keep.min(probs.len());
    let total: f32 = probs[..keep].iter().sum();
    let mut u = rng.random::<f32>() * total;
    let mut pick = order[keep - 1];
    for (i, p) in probs[..keep].iter().enumerate() {
        if u < *p {
            pick = order[i];
            break;
        }
        u -= p;
    }
    (pick as u32, scaled[pick] - log_z)
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_largest_logit_with_its_logprob() {
        let params = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(0);
        let (tok, lp) = sample_token(&[0.0, 2.0, 1.0], &params, &mut rng);
        assert_eq!(tok, 1);
        let z = (0f32.exp() + 2f32.exp() + 1f32.exp()).ln();
        assert!((lp - (2.0 - z)).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeded_sampling_repeats() {
        let logits = [0.3, 0.1, 2.0, -1.0, 1.9];
        let k1 = SamplingParams {
            top_k: 1,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            assert_eq!(sample_token(&logits, &k1, &mut rng).0, 2);
        }
        let p = SamplingParams::default();
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| sample_token(&logits, &p, &mut rng).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!(draw(3).iter().any(|&t| t != 2), "sampling explores");
    }

    /// Empirical frequencies over `n` draws.
    fn frequencies(logits: &[f32], params: &SamplingParams, n: usize) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(5);
        let mut seen = vec![0usize; logits.len()];
        for _ in 0..n {
            seen[sample_token(logits, params, &mut rng).0 as usize] += 1;
        }
        seen.iter().map(|&c| c as f32 / n as f32).collect()
    }

    #[test]
    fn unfiltered_sampling_follows_the_softmax() {
        let logits: Vec<f32> = (0..50)
            .map(|i| ((i * 37 % 11) as f32) * 0.3 - 1.0)
            .collect();
        let params = SamplingParams {
            temperature: 0.7,
            ..Default::default()
        };
        let z: f32 = logits.iter().map(|l| (l / 0.7).exp()).sum();
        let n = 40_000;
        for (i, f) in frequencies(&logits, &params, n).iter().enumerate() {
            let p = (logits[i] / 0.7).exp() / z;
            let sd = (p * (1.0 - p) / n as f32).sqrt();
            assert!((f - p).abs() < 5.0 * sd + 1e-4, "token {i}: {f} vs {p}");
        }
    }

    #[test]
    fn top_p_over_a_large_vocabulary_keeps_the_sorted_nucleus() {
        // 1000 tokens with distinct logits: the nucleus spans several sorting chunks.
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919 % 1000) as f32) * 0.004)
            .collect();
        let top_p = 0.5;
        let mut sorted: Vec<usize> = (0..logits.len()).collect();
        sorted.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        let mut cumulative = 0.0;
        let mut nucleus = Vec::new();
        for &i in &sorted {
            nucleus.push(i);
            cumulative += logits[i].exp() / z;
            if cumulative >= top_p {
                break;
            }
        }
        assert!(
            nucleus.len() > 64,
            "spans several chunks: {}",
            nucleus.len()
        );
        let params = SamplingParams {
            top_p,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..3000 {
            let (tok, _) = sample_token(&logits, &params, &mut rng);
            assert!(
                nucleus.contains(&(tok as usize)),
                "{tok} outside the nucleus"
            );
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p = [0.5, 0.3, 0.2] (in log space); top_p 0.6 keeps the first two.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let params = SamplingParams {
            top_p: 0.6,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = [0; 3];
        for _ in 0..2000 {
            seen[sample_token(&logits, &params, &mut rng).0 as usize] += 1;
        }
        assert_eq!(seen[2], 0);
        let frac = seen[0] as f32 / 2000.0;
        assert!(
            (frac - 0.625).abs() < 0.05,
            "renormalised 0.5/0.8, got {frac}"
        );
    }
}
