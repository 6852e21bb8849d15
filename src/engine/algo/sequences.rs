//! Prompt + completion sequences as training tensors, and the per-token log-probabilities of
//! the completion part: what GRPO, PPO, DPO and reward models all score.

use burn::prelude::*;

use crate::engine::model::CausalLm;

/// Right-padded `prompt ++ completion` rows. Targets and masks are shifted by one (position
/// `i` predicts token `i + 1`), so they are `[B, T - 1]`.
pub struct SeqBatch {
    pub ids: Tensor<2, Int>,
    pub positions: Tensor<2, Int>,
    pub valid: Tensor<2, Bool>,
    pub targets: Tensor<2, Int>,
    /// 1 where the target is a completion token.
    pub completion_mask: Tensor<2>,
    /// Index of each row's last real token (for scalar heads).
    pub last_index: Vec<usize>,
    pub completion_lengths: Vec<usize>,
}

impl SeqBatch {
    pub fn new(prompts: &[&[u32]], completions: &[&[u32]], pad_id: u32, device: &Device) -> Self {
        assert_eq!(prompts.len(), completions.len());
        let b = prompts.len();
        let t = prompts
            .iter()
            .zip(completions)
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0)
            .max(2);
        let mut ids = Vec::with_capacity(b * t);
        let mut valid = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * (t - 1));
        let mut last_index = Vec::with_capacity(b);
        for (p, c) in prompts.iter().zip(completions) {
            let n = p.len() + c.len();
            ids.extend(p.iter().chain(c.iter()).map(|&x| x as i64));
            ids.extend(std::iter::repeat_n(pad_id as i64, t - n));
            valid.extend((0..t).map(|i| i < n));
            // Target at shifted index j is token j + 1: a completion token when
            // p.len() <= j + 1 < n.
            mask.extend((0..t - 1).map(|j| {
                if j + 1 >= p.len() && j + 1 < n {
                    1.0f32
                } else {
                    0.0
                }
            }));
            last_index.push(n.saturating_sub(1));
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
        let positions: Vec<i64> = (0..b).flat_map(|_| 0..t as i64).collect();
        Self {
            targets: ids.clone().narrow(1, 1, t - 1),
            ids,
            positions: Tensor::from_data(TensorData::new(positions, [b, t]), device),
            valid: Tensor::from_data(TensorData::new(valid, [b, t]), device),
            completion_mask: Tensor::from_data(TensorData::new(mask, [b, t - 1]), device),
            last_index,
            completion_lengths: completions.iter().map(|c| c.len()).collect(),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.last_index.len()
    }
}

/// Forward pass output over a `SeqBatch`: the log-probabilities of the targets (temperature
/// applied) and, when asked, the per-position entropy of the distribution (detached: a metric).
pub struct Scored {
    pub logprobs: Tensor<2>,
    pub entropy: Option<Tensor<2>>,
}

/// Logits of at most this many `[position, vocab]` values exist at once: the LM head runs on
/// chunks of positions, so no `[B, T, V]` tensor is ever formed (at Qwen's 151,936-token
/// vocabulary, 8 x 512 positions would be one 2.5 GB buffer, over wgpu's largest).
pub const HEAD_CHUNK_VALUES: usize = 1 << 26;

/// What the LM head gives per position: the target's log-probability, and optionally the
/// entropy (detached) and the argmax.
pub struct HeadOutputs {
    pub logprobs: Tensor<2>,
    pub entropy: Option<Tensor<2>>,
    pub argmax: Option<Tensor<2, Int>>,
}

/// Runs the LM head over `hidden` `[B, T, H]` in chunks of positions (see
/// [`HEAD_CHUNK_VALUES`]) and gathers the log-probabilities of `targets` `[B, T]`; logits are
/// divided by `temperature` first when it is not 1.
pub fn head_outputs(
    model: &CausalLm,
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
    temperature: f32,
    with_entropy: bool,
    with_argmax: bool,
) -> HeadOutputs {
    head_outputs_in_chunks(
        model,
        hidden,
        targets,
        temperature,
        (with_entropy, with_argmax),
        HEAD_CHUNK_VALUES,
    )
}

fn head_outputs_in_chunks(
    model: &CausalLm,
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
    temperature: f32,
    (with_entropy, with_argmax): (bool, bool),
    chunk_values: usize,
) -> HeadOutputs {
    let [b, t, h] = hidden.dims();
    let vocab = model.vocab_size();
    let n = b * t;
    let chunk = (chunk_values / vocab.max(1)).clamp(1, n.max(1));
    let flat = hidden.reshape([1, n, h]);
    let flat_targets = targets.reshape([n, 1]);
    let scale = temperature > 0.0 && (temperature - 1.0).abs() > f32::EPSILON;
    let (mut lps, mut ents, mut maxes) = (Vec::new(), Vec::new(), Vec::new());
    // One head matrix for every chunk (a head stored narrow is widened once).
    let head = model.head_matrix();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let positions = flat.clone().narrow(1, start, len);
        let mut logits = match &head {
            Some(head) => model.logits_with(head, positions),
            None => model.logits(positions),
        };
        if scale {
            logits = logits / temperature;
        }
        let logits = logits.reshape([len, vocab]);
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        if with_entropy {
            let lp = logp.clone().detach();
            ents.push((lp.clone().exp() * lp).sum_dim(1).neg());
        }
        if with_argmax {
            maxes.push(logp.clone().detach().argmax(1));
        }
        lps.push(logp.gather(1, flat_targets.clone().narrow(0, start, len)));
        start += len;
    }
    HeadOutputs {
        logprobs: Tensor::cat(lps, 0).reshape([b, t]),
        entropy: with_entropy.then(|| Tensor::cat(ents, 0).reshape([b, t])),
        argmax: with_argmax.then(|| Tensor::cat(maxes, 0).reshape([b, t])),
    }
}

/// Scores the targets of `batch` under `model`. Logits are divided by `temperature` so the
/// log-probabilities match those of the sampling distribution (as TRL does).
pub fn score(model: &CausalLm, batch: &SeqBatch, temperature: f32) -> Scored {
    score_with(model, batch, temperature, false)
}

/// [`score`], with the per-position entropy as well.
pub fn score_with_entropy(model: &CausalLm, batch: &SeqBatch, temperature: f32) -> Scored {
    score_with(model, batch, temperature, true)
}

fn score_with(model: &CausalLm, batch: &SeqBatch, temperature: f32, entropy: bool) -> Scored {
    let t = batch.ids.dims()[1];
    let hidden = model.hidden(
        batch.ids.clone(),
        batch.positions.clone(),
        batch.valid.clone(),
        None,
    );
    // Position i predicts token i + 1: the last position predicts nothing.
    let out = head_outputs(
        model,
        hidden.narrow(1, 0, t - 1),
        batch.targets.clone(),
        temperature,
        entropy,
        false,
    );
    Scored {
        logprobs: out.logprobs,
        entropy: out.entropy,
    }
}

/// Sum of completion-token log-probabilities per row (`[B]`), as DPO uses.
pub fn sequence_logprob(logprobs: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    (logprobs * mask).sum_dim(1).squeeze_dim::<1>(1)
}

/// The scalar head's value at each row's last real token (`[B]`): a reward model's score.
pub fn last_token_scores(model: &CausalLm, batch: &SeqBatch) -> Tensor<1> {
    let hidden = model.hidden(
        batch.ids.clone(),
        batch.positions.clone(),
        batch.valid.clone(),
        None,
    );
    let scores = model
        .scores(hidden)
        .expect("last_token_scores needs a model with a score head");
    let device = scores.device();
    let idx: Vec<i64> = batch.last_index.iter().map(|&i| i as i64).collect();
    let b = idx.len();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [b]), &device).reshape([b, 1]);
    scores.gather(1, idx).squeeze_dim::<1>(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked head gives what one pass over all positions gives: log-probabilities,
    /// entropies and argmax, with 3 positions per chunk (and a ragged last chunk).
    #[test]
    fn chunked_head_equals_the_whole_head() {
        use crate::engine::model::{ModelConfig, WeightReader, decoder};
        let device = Device::flex();
        let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "vocab_size": 50, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 32
        }))
        .unwrap();
        let mut r = WeightReader::new(decoder::init_weights(&cfg, 7), &device);
        let model = CausalLm::from_weights(&cfg, &mut r, true, false).unwrap();
        let ids: Vec<i64> = (0..14).map(|i| (i * 7 + 3) % 50).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 7]), &device);
        let pos = Tensor::<1, Int>::arange(0..7, &device)
            .reshape([1, 7])
            .repeat_dim(0, 2);
        let valid = Tensor::<2, Int>::ones([2, 7], &device).bool();
        let hidden = model.hidden(ids.clone(), pos, valid, None);
        let targets = ids.clone().narrow(1, 1, 6);
        let whole = model.logits(hidden.clone()).narrow(1, 0, 6) / 0.7;
        let want = crate::engine::algo::token_logprobs(whole.clone(), targets.clone());
        let want_entropy = crate::engine::algo::losses::token_entropy(whole.clone());
        let got = head_outputs_in_chunks(
            &model,
            hidden.narrow(1, 0, 6),
            targets,
            0.7,
            (true, true),
            3 * 50,
        );
        let close = |a: Tensor<2>, b: Tensor<2>| {
            let d: f32 = (a - b).abs().max().into_scalar::<f32>();
            assert!(d < 1e-5, "max |diff| {d}");
        };
        close(got.logprobs, want);
        close(got.entropy.unwrap(), want_entropy);
        let argmax: Vec<i64> = got
            .argmax
            .unwrap()
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap();
        let want_argmax: Vec<i64> = whole
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap();
        assert_eq!(argmax, want_argmax);
    }

    #[test]
    fn completion_mask_covers_exactly_the_completion_targets() {
        let device = Device::flex();
        let p1: &[u32] = &[5, 6, 7];
        let c1: &[u32] = &[8, 9];
        let p2: &[u32] = &[5];
        let c2: &[u32] = &[4, 3, 2];
        let b = SeqBatch::new(&[p1, p2], &[c1, c2], 0, &device);
        let mask: Vec<f32> = crate::engine::model::host_f32(b.completion_mask.clone());
        // Row 1: tokens [5,6,7,8,9]; targets [6,7,8,9]; completion targets are 8 and 9.
        assert_eq!(&mask[..4], &[0.0, 0.0, 1.0, 1.0]);
        // Row 2: tokens [5,4,3,2,pad]; targets [4,3,2,pad]; completion 4,3,2.
        assert_eq!(&mask[4..], &[1.0, 1.0, 1.0, 0.0]);
        assert_eq!(b.last_index, vec![4, 3]);
    }
}
