//! Preference pairs (TRL's `prompt` + `chosen` + `rejected` rows, optional `margin`) tokenised
//! for the pairwise trainers (reward model, DPO), and their batches: the chosen rows then the
//! rejected rows of the same pairs in one `SeqBatch`, so one forward pass scores both (TRL's
//! `concatenated_forward`).

use std::path::Path;

use burn::prelude::*;

use super::TrainError;
use super::sequences::SeqBatch;
use super::state::TrainerState;
use crate::engine::data::{self, EpochSampler, Example, Prompt};
use crate::engine::events::Event;
use crate::engine::model::tokenizer::{ChatMessage, Tokenizer};
use crate::engine::model::{CausalLm, ModelConfig, hf};
use crate::engine::optim::Optimizer;
use crate::engine::run::{Control, RunContext};

/// One tokenised preference pair. The texts are kept for the Samples pane.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferencePair {
    pub prompt_text: String,
    pub chosen_text: String,
    pub rejected_text: String,
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub margin: Option<f32>,
}

impl PreferencePair {
    /// Tokens of both sequences together (what TRL counts in `num_tokens`).
    pub fn num_tokens(&self) -> usize {
        2 * self.prompt.len() + self.chosen.len() + self.rejected.len()
    }
}

/// What to do with a pair longer than `max_length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlong {
    /// Keep the end of the prompt (at most `max_prompt_length` tokens) and the start of each
    /// completion, as TRL's DPO does.
    Truncate,
    /// Drop the pair, as TRL's RewardTrainer does: truncating would cut the last token, where
    /// the reward is read.
    Drop,
}

#[derive(Clone, Copy, Debug)]
pub struct PairOptions {
    /// Most tokens in prompt + completion.
    pub max_length: usize,
    /// Most prompt tokens (only with [`Overlong::Truncate`]).
    pub max_prompt_length: usize,
    pub overlong: Overlong,
}

/// Reads a preference JSONL file. Returns the pairs and how many were dropped for length (or
/// for having an empty completion after truncation). A malformed line fails with `file:line`.
pub fn load_pairs(
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &PairOptions,
) -> Result<(Vec<PreferencePair>, usize), TrainError> {
    let mut pairs = Vec::new();
    let mut dropped = 0;
    for (i, ex) in data::read_jsonl(path)?.into_iter().enumerate() {
        let Example::Preference {
            prompt,
            chosen,
            rejected,
            margin,
        } = ex
        else {
            return Err(TrainError::Invalid(format!(
                "{}: example {}: preference training needs `prompt`+`chosen`+`rejected` (or \
                 `chosen`+`rejected`) rows; found a `{}` example",
                path.display(),
                i + 1,
                ex.kind()
            )));
        };
        let pair = tokenize_pair(&prompt, &chosen, &rejected, margin, tokenizer).map_err(|e| {
            TrainError::Invalid(format!("{}: example {}: {e}", path.display(), i + 1))
        })?;
        match fit(pair, opts) {
            Some(p) => pairs.push(p),
            None => dropped += 1,
        }
    }
    Ok((pairs, dropped))
}

/// Text pairs: the prompt with the tokenizer's special tokens (BOS), each completion on its own
/// plus EOS, as TRL's DPO tokenises them. Conversational pairs (any part a message list) are
/// rendered with the chat template: the prompt with the generation prompt, each completion as
/// what the full conversation adds after it; the template closes the turn, so no EOS is added.
pub fn tokenize_pair(
    prompt: &Prompt,
    chosen: &Prompt,
    rejected: &Prompt,
    margin: Option<f32>,
    tokenizer: &Tokenizer,
) -> Result<PreferencePair, String> {
    let chat =
        prompt.is_conversational() || chosen.is_conversational() || rejected.is_conversational();
    let enc = |text: &str, special: bool| {
        tokenizer
            .encode(text, special)
            .map_err(|e| format!("tokenizer: {e}"))
    };
    let (prompt_text, chosen_text, rejected_text, mut prompt_ids, chosen_ids, rejected_ids);
    if chat {
        let messages = prompt.to_messages("user");
        let template = |m: &[ChatMessage], gen_prompt: bool| {
            tokenizer
                .apply_chat_template(m, gen_prompt)
                .map_err(|e| format!("chat template: {e}"))
        };
        let head = template(&messages, true)?;
        let tail = |completion: &Prompt| -> Result<String, String> {
            let full: Vec<ChatMessage> = messages
                .iter()
                .cloned()
                .chain(completion.to_messages("assistant"))
                .collect();
            let full = template(&full, false)?;
            // Templates that render the generation prompt differently from a real turn's
            // header: fall back to the prompt without it.
            match full.strip_prefix(head.as_str()) {
                Some(rest) => Ok(rest.to_string()),
                None => {
                    let bare = template(&messages, false)?;
                    full.strip_prefix(bare.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| {
                            "the chat template renders the prompt differently once a reply \
                             follows, so the reply cannot be separated from it"
                                .to_string()
                        })
                }
            }
        };
        chosen_text = tail(chosen)?;
        rejected_text = tail(rejected)?;
        prompt_ids = enc(&head, false)?;
        chosen_ids = enc(&chosen_text, false)?;
        rejected_ids = enc(&rejected_text, false)?;
        prompt_text = messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
    } else {
        let text = |p: &Prompt| match p {
            Prompt::Text(t) => t.clone(),
            Prompt::Messages(_) => unreachable!("not conversational"),
        };
        prompt_text = text(prompt);
        chosen_text = text(chosen);
        rejected_text = text(rejected);
        prompt_ids = enc(&prompt_text, true)?;
        let eos = tokenizer.eos_ids().first().copied();
        let with_eos = |mut ids: Vec<u32>| {
            if let Some(e) = eos
                && ids.last() != Some(&e)
            {
                ids.push(e);
            }
            ids
        };
        chosen_ids = with_eos(enc(&chosen_text, false)?);
        rejected_ids = with_eos(enc(&rejected_text, false)?);
    }
    // The first token of a sequence is never predicted; with an empty prompt a BOS lets the
    // first completion token be scored.
    if prompt_ids.is_empty()
        && let Some(bos) = tokenizer.bos_id()
    {
        prompt_ids.push(bos);
    }
    Ok(PreferencePair {
        prompt_text,
        chosen_text,
        rejected_text,
        prompt: prompt_ids,
        chosen: chosen_ids,
        rejected: rejected_ids,
        margin,
    })
}

/// Applies the length limits; `None` when the pair is dropped.
pub fn fit(mut pair: PreferencePair, opts: &PairOptions) -> Option<PreferencePair> {
    let too_long = |p: &PreferencePair| {
        p.prompt.len() + p.chosen.len().max(p.rejected.len()) > opts.max_length
    };
    if too_long(&pair) {
        match opts.overlong {
            Overlong::Drop => return None,
            Overlong::Truncate => {
                let keep = opts
                    .max_prompt_length
                    .min(opts.max_length.saturating_sub(1));
                if pair.prompt.len() > keep {
                    pair.prompt.drain(..pair.prompt.len() - keep);
                }
                let room = opts.max_length - pair.prompt.len();
                pair.chosen.truncate(room);
                pair.rejected.truncate(room);
            }
        }
    }
    if pair.chosen.is_empty() || pair.rejected.is_empty() {
        return None;
    }
    Some(pair)
}

/// The chosen rows then the rejected rows of `pairs` (`2 * pairs.len()` rows).
pub fn pair_batch(pairs: &[&PreferencePair], pad_id: u32, device: &Device) -> SeqBatch {
    let prompts: Vec<&[u32]> = pairs
        .iter()
        .chain(pairs.iter())
        .map(|p| p.prompt.as_slice())
        .collect();
    let completions: Vec<&[u32]> = pairs
        .iter()
        .map(|p| p.chosen.as_slice())
        .chain(pairs.iter().map(|p| p.rejected.as_slice()))
        .collect();
    SeqBatch::new(&prompts, &completions, pad_id, device)
}

/// Per-pair margins as a tensor when any pair in the dataset has one (missing ones count as 0).
pub fn margins(pairs: &[&PreferencePair], use_margin: bool, device: &Device) -> Option<Tensor<1>> {
    if !use_margin {
        return None;
    }
    let m: Vec<f32> = pairs.iter().map(|p| p.margin.unwrap_or(0.0)).collect();
    let n = m.len();
    Some(Tensor::from_data(TensorData::new(m, [n]), device))
}

/// The pad id for batches: the tokenizer's pad, else its EOS, else 0 (padding is masked out).
pub fn pad_id(tokenizer: &Tokenizer) -> u32 {
    tokenizer
        .pad_id()
        .or_else(|| tokenizer.eos_ids().first().copied())
        .unwrap_or(0)
}

/// Where a run is, for checkpoints a resume can continue from: sampler, optimizer, tokens.
pub type Progress<'a> = (&'a EpochSampler, &'a Optimizer, usize);

/// Writes the Hugging Face folders of a run (`checkpoints/step-N`, `checkpoints/final`), with
/// the trainer state a resume needs, and reports them.
pub struct Saver<'a> {
    pub config: &'a ModelConfig,
    pub tokenizer: &'a Tokenizer,
    pub generation_config: &'a Option<serde_json::Value>,
}

impl Saver<'_> {
    /// Applies the user's command between steps: a checkpoint on `Save`, a final checkpoint on
    /// `Stop`. Returns whether the run must end.
    pub fn obey(
        &self,
        model: &CausalLm,
        ctx: &mut RunContext,
        step: usize,
        progress: Progress<'_>,
    ) -> Result<bool, TrainError> {
        loop {
            match ctx.poll() {
                Control::Stop => {
                    self.save(model, ctx, step, true, progress)?;
                    return Ok(true);
                }
                // Asked while paused: saved now, then the run waits again.
                Control::Save => self.save(model, ctx, step, false, progress)?,
                Control::Continue => return Ok(false),
            }
        }
    }

    /// What follows a step's metrics: `checkpoints/best` when `keep_best` improved, and every
    /// `save_steps` a resumable checkpoint (older ones pruned to `save_total_limit`).
    pub fn after_step(
        &self,
        model: &CausalLm,
        ctx: &mut RunContext,
        step: usize,
        train: &crate::engine::config::TrainSection,
        progress: Progress<'_>,
    ) -> Result<(), TrainError> {
        super::save_best_if_improved(
            ctx,
            step,
            model,
            self.config,
            self.tokenizer,
            self.generation_config,
        )?;
        if train.save_steps > 0 && step.is_multiple_of(train.save_steps) && step < train.max_steps {
            self.save(model, ctx, step, false, progress)?;
            if let Err(e) = ctx.dir.prune_checkpoints(train.save_total_limit) {
                ctx.log(
                    crate::engine::events::LogLevel::Warn,
                    format!("pruning old checkpoints: {e}"),
                );
            }
        }
        Ok(())
    }

    pub fn save(
        &self,
        model: &CausalLm,
        ctx: &mut RunContext,
        step: usize,
        is_final: bool,
        progress: Progress<'_>,
    ) -> Result<(), TrainError> {
        let dir = if is_final {
            ctx.dir.final_dir()
        } else {
            ctx.dir.checkpoint_dir(step)
        };
        hf::save_dir(
            &dir,
            self.config,
            model,
            Some(self.tokenizer),
            self.generation_config.as_ref(),
        )?;
        let (sampler, optim, num_tokens) = progress;
        TrainerState::capture(step, sampler, num_tokens, ctx.wall_time(), model)
            .save(&dir, optim)?;
        ctx.send(Event::Checkpoint {
            run: ctx.id.clone(),
            step,
            path: dir,
        });
        Ok(())
    }
}

/// Mean, min and max of a host vector (0 for an empty one).
pub fn stats(v: &[f32]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let min = v.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    (mean, min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(p: usize, c: usize, r: usize) -> PreferencePair {
        PreferencePair {
            prompt_text: String::new(),
            chosen_text: String::new(),
            rejected_text: String::new(),
            prompt: (0..p as u32).collect(),
            chosen: (100..100 + c as u32).collect(),
            rejected: (200..200 + r as u32).collect(),
            margin: None,
        }
    }

    #[test]
    fn truncation_keeps_the_prompt_end_and_the_completion_start() {
        let opts = PairOptions {
            max_length: 8,
            max_prompt_length: 3,
            overlong: Overlong::Truncate,
        };
        let p = fit(pair(5, 10, 2), &opts).unwrap();
        assert_eq!(p.prompt, vec![2, 3, 4]);
        assert_eq!(p.chosen, (100..105).collect::<Vec<_>>());
        assert_eq!(p.rejected, vec![200, 201]);
        // Short pairs are left alone.
        assert_eq!(fit(pair(5, 2, 3), &opts).unwrap(), pair(5, 2, 3));
    }

    #[test]
    fn overlong_pairs_are_dropped_for_reward_models() {
        let opts = PairOptions {
            max_length: 8,
            max_prompt_length: 8,
            overlong: Overlong::Drop,
        };
        assert!(fit(pair(5, 4, 2), &opts).is_none());
        assert!(fit(pair(5, 3, 2), &opts).is_some());
    }

    #[test]
    fn a_pair_batch_has_chosen_rows_then_rejected_rows() {
        let device = Device::flex();
        let (a, b) = (pair(2, 1, 3), pair(1, 2, 2));
        let batch = pair_batch(&[&a, &b], 0, &device);
        assert_eq!(batch.batch_size(), 4);
        assert_eq!(batch.completion_lengths, vec![1, 2, 3, 2]);
        assert_eq!(batch.last_index, vec![2, 2, 4, 2]);
    }
}
