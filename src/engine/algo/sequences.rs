//! Prompt + completion sequences as training tensors, and the per-token log-probabilities of
//! the completion part: what GRPO, PPO, DPO and reward models all score.

use burn::prelude::*;

use super::token_logprobs;
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

/// Forward pass output over a `SeqBatch`: shifted logits (temperature applied) and the
/// log-probabilities of the targets.
pub struct Scored {
    pub logits: Tensor<3>,
    pub logprobs: Tensor<2>,
}

/// Scores the targets of `batch` under `model`. Logits are divided by `temperature` so the
/// log-probabilities match those of the sampling distribution (as TRL does).
pub fn score(model: &CausalLm, batch: &SeqBatch, temperature: f32) -> Scored {
    let t = batch.ids.dims()[1];
    let hidden = model.hidden(
        batch.ids.clone(),
        batch.positions.clone(),
        batch.valid.clone(),
        None,
    );
    let mut logits = model.logits(hidden).narrow(1, 0, t - 1);
    if temperature > 0.0 && (temperature - 1.0).abs() > f32::EPSILON {
        logits = logits / temperature;
    }
    let logprobs = token_logprobs(logits.clone(), batch.targets.clone());
    Scored { logits, logprobs }
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
