//! `type = "reward_model"`: a trained Bradley-Terry reward model (a model folder with a
//! `score` head, as `method = "rm"` saves it) scoring `prompt + completion` texts, batched and
//! without autodiff. Trainers plug it in through [`super::build_all_with`] with [`loader`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::prelude::*;

use super::{Completion, ModelLoader, RewardError, RewardModelConfig, RewardSource};
use crate::engine::algo::sequences::{SeqBatch, last_token_scores};
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{CausalLm, Heads, WeightDtype, hf, host_f32};

/// Texts scored together; bounds activation memory on long completions.
const SCORE_BATCH: usize = 32;

/// A reward model on a plain (no-autodiff) device.
pub struct RewardModel {
    name: String,
    path: PathBuf,
    /// Shared so an RLHF run can swap in a retrained model while the source is in use
    /// ([`RewardModel::handle`]).
    model: Arc<Mutex<CausalLm>>,
    tokenizer: Tokenizer,
    pad_id: u32,
    max_len: usize,
    device: Device,
}

/// Token ids a reward model scores for `prompt + completion`, tokenised as the preference
/// trainer does for text pairs (`algo::preference::tokenize_pair`): the prompt with the
/// tokenizer's special tokens (a BOS when it is empty), then the completion on its own ending
/// in EOS. The score is read at that EOS, as in training.
pub fn encode_for_scoring(
    tokenizer: &Tokenizer,
    prompt: &str,
    completion: &str,
) -> Result<Vec<u32>, crate::engine::model::tokenizer::TokenizerError> {
    let mut ids = tokenizer.encode(prompt, true)?;
    if ids.is_empty()
        && let Some(bos) = tokenizer.bos_id()
    {
        ids.push(bos);
    }
    ids.extend(tokenizer.encode(completion, false)?);
    if let Some(&eos) = tokenizer.eos_ids().first()
        && ids.last() != Some(&eos)
    {
        ids.push(eos);
    }
    Ok(ids)
}

impl RewardModel {
    /// Loads the folder at `cfg.path`. It must have a trained `score` head: a plain language
    /// model would get a random one, and its scores would be noise.
    /// Its matrices are stored as `storage` (`[model] dtype`; the score head stays f32).
    pub fn load(
        cfg: &RewardModelConfig,
        device: &Device,
        storage: WeightDtype,
    ) -> Result<Self, RewardError> {
        let path = cfg.path.clone();
        let err = |message: String| RewardError::Model {
            path: path.clone(),
            message,
        };
        if !path.is_dir() {
            return Err(err(
                "not a model folder (train one with `method = \"rm\"`; its \
                 checkpoints/final folder is the reward model)"
                    .into(),
            ));
        }
        let checkpoint = hf::read_dir(&path).map_err(|e| err(e.to_string()))?;
        if !checkpoint.tensors.contains_key("score.weight") {
            return Err(err(
                "has no `score` head, so it is not a reward model (train one with \
                 `method = \"rm\"`)"
                    .into(),
            ));
        }
        // Scoring never needs gradients; an autodiff device would only grow a graph.
        let device = device.clone().without_autodiff();
        let loaded = checkpoint
            .build(&device, Heads::Score, storage)
            .map_err(|e| err(e.to_string()))?;
        let tokenizer = loaded
            .tokenizer
            .ok_or_else(|| err("has no tokenizer.json".into()))?;
        let pad_id = tokenizer
            .pad_id()
            .or_else(|| tokenizer.eos_ids().first().copied())
            .unwrap_or(0);
        Ok(Self {
            name: cfg.name.clone().unwrap_or_else(|| "reward_model".into()),
            path,
            model: Arc::new(Mutex::new(loaded.model)),
            tokenizer,
            pad_id,
            max_len: loaded.config.max_position_embeddings.max(2),
            device,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The slot holding the model: replacing what it holds changes what this source scores
    /// with from the next batch on (RLHF's reward-model refresh).
    pub fn handle(&self) -> Arc<Mutex<CausalLm>> {
        Arc::clone(&self.model)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn model(&self) -> MutexGuard<'_, CausalLm> {
        // A panic while the lock was held left a whole model behind; keep using it.
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Scores already tokenised sequences, one scalar each (the head at the last token).
    /// Sequences longer than the model's context keep their last tokens.
    pub fn score_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>, RewardError> {
        let mut out = vec![0.0f32; rows.len()];
        // Similar lengths together waste less padding.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        for chunk in order.chunks(SCORE_BATCH) {
            let seqs: Vec<&[u32]> = chunk
                .iter()
                .map(|&i| {
                    let r = rows[i].as_slice();
                    &r[r.len().saturating_sub(self.max_len)..]
                })
                .collect();
            if let Some(&i) = chunk.iter().find(|&&i| rows[i].is_empty()) {
                return Err(RewardError::Model {
                    path: self.path.clone(),
                    message: format!("text {i} tokenised to nothing"),
                });
            }
            let empty: Vec<&[u32]> = vec![&[]; seqs.len()];
            let batch = SeqBatch::new(&seqs, &empty, self.pad_id, &self.device);
            let scores = host_f32(last_token_scores(&self.model(), &batch));
            for (&i, s) in chunk.iter().zip(scores) {
                if !s.is_finite() {
                    return Err(RewardError::Model {
                        path: self.path.clone(),
                        message: format!("score of text {i} is {s}"),
                    });
                }
                out[i] = s;
            }
        }
        Ok(out)
    }

    /// Scores `prompt + completion` texts.
    pub fn score_texts(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, RewardError> {
        let rows = pairs
            .iter()
            .map(|(p, c)| encode_for_scoring(&self.tokenizer, p, c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RewardError::Model {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        self.score_ids(&rows)
    }
}

impl RewardSource for RewardModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&mut self, batch: &[Completion]) -> Result<Vec<f32>, RewardError> {
        let pairs: Vec<(&str, &str)> = batch.iter().map(|c| (c.prompt, c.completion)).collect();
        self.score_texts(&pairs)
    }
}

/// The [`super::build_all_with`] hook that loads `reward_model` entries onto `device`.
pub fn loader(
    device: &Device,
    storage: WeightDtype,
) -> impl FnMut(&RewardModelConfig) -> Result<Box<dyn RewardSource>, RewardError> + '_ {
    move |cfg| Ok(Box::new(RewardModel::load(cfg, device, storage)?) as Box<dyn RewardSource>)
}

/// Every `[[rewards]]` source, with `reward_model` entries loaded onto `device`, their
/// matrices stored as `storage`.
pub fn build_all_on(
    cfgs: &[super::RewardConfig],
    device: &Device,
    storage: WeightDtype,
) -> Result<super::WeightedSources, RewardError> {
    let mut load = loader(device, storage);
    let load: &mut ModelLoader = &mut load;
    super::build_all_with(cfgs, None, load)
}

/// Loads a reward model folder directly (tests and tools).
pub fn load_path(path: &Path, device: &Device) -> Result<RewardModel, RewardError> {
    RewardModel::load(
        &RewardModelConfig {
            path: path.to_path_buf(),
            weight: 1.0,
            name: None,
        },
        device,
        WeightDtype::F32,
    )
}
