//! RLHF from live labels: while a PPO run goes on, people label pairs of its samples in the
//! Pairs pane (folded into TRL preference JSONL), and every `retrain_every` new labels the
//! reward model is retrained on all labels so far and swapped into the run's reward source.
//! The PPO run scores its next rollout with the new version; each version is saved in the
//! run folder (`reward_model/v<N>`) and reported as `reward_model/version`.
//!
//! ```toml
//! [rlhf]
//! labels = "runs/labels/preferences.jsonl"  # default: labels/preferences.jsonl beside the run
//! retrain_every = 16      # new labels between refreshes
//! rm_steps = 40           # Bradley-Terry steps per refresh, from the configured reward model
//! rm_learning_rate = 1e-4
//! rm_batch_size = 16
//! ```
//!
//! Each refresh starts again from the `[[rewards]]` reward model the run was configured with
//! (not the previous version), so a version depends only on the labels, never on the order in
//! which refreshes happened.

pub use crate::engine::config::methods::RlhfSection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::preference::{self, Overlong, PairOptions, PreferencePair};
use super::rm::pair_loss;
use super::{TrainError, scalar};
use crate::engine::data::EpochSampler;
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{self, CausalLm, Heads, hf};
use crate::engine::optim::{LrSchedule, OptimConfig, Optimizer};
use crate::engine::reward::{self, RewardConfig, RewardSource, WeightedSources};

impl RlhfSection {
    pub fn validate(&self) -> Result<(), String> {
        if self.retrain_every == 0 || self.rm_steps == 0 || self.rm_batch_size == 0 {
            return Err("[rlhf] retrain_every, rm_steps and rm_batch_size must be positive".into());
        }
        if !(self.rm_learning_rate.is_finite() && self.rm_learning_rate > 0.0) {
            return Err("[rlhf] rm_learning_rate must be a positive number".into());
        }
        Ok(())
    }
}

/// The configured reward model's folder and the slot its source scores with.
pub type RewardModelSlot = (PathBuf, Arc<Mutex<CausalLm>>);

/// Loads the run's reward sources, keeping a handle on the (first) reward model's slot.
pub fn build_sources(
    cfgs: &[RewardConfig],
    device: &Device,
    storage: crate::engine::model::WeightDtype,
) -> Result<(WeightedSources, Option<RewardModelSlot>), TrainError> {
    let mut slot = None;
    let mut load = |c: &reward::RewardModelConfig| {
        let rm = reward::model::RewardModel::load(c, device, storage)?;
        if slot.is_none() {
            slot = Some((c.path.clone(), rm.handle()));
        }
        Ok(Box::new(rm) as Box<dyn RewardSource>)
    };
    let sources = reward::build_all_with(cfgs, None, &mut load)
        .map_err(|e| TrainError::Invalid(format!("[[rewards]]: {e}")))?;
    Ok((sources, slot))
}

/// Watches the label file and refreshes the reward model.
pub struct Refresher {
    cfg: RlhfSection,
    labels: PathBuf,
    base: PathBuf,
    slot: Arc<Mutex<CausalLm>>,
    tokenizer: Tokenizer,
    out_dir: PathBuf,
    /// Labels the current version was trained on.
    trained_on: usize,
    /// Size and modification time of the label file when it was last read: PPO asks every
    /// step, and an unchanged file need not be read and tokenised again.
    last_seen: Option<(u64, std::time::SystemTime)>,
    pub version: usize,
    seed: u64,
}

impl Refresher {
    /// `run_dir` receives the versions; `base` is the configured reward model folder.
    pub fn new(
        cfg: RlhfSection,
        run_dir: &Path,
        base: PathBuf,
        slot: Arc<Mutex<CausalLm>>,
        seed: u64,
    ) -> Result<Self, TrainError> {
        cfg.validate().map_err(TrainError::Invalid)?;
        let labels = cfg.labels.clone().unwrap_or_else(|| {
            run_dir
                .parent()
                .unwrap_or(Path::new("."))
                .join("labels")
                .join("preferences.jsonl")
        });
        let tokenizer = Tokenizer::from_dir(&base)?;
        Ok(Self {
            cfg,
            labels,
            base,
            slot,
            tokenizer,
            out_dir: run_dir.join("reward_model"),
            trained_on: 0,
            last_seen: None,
            version: 0,
            seed,
        })
    }

    pub fn retrain_every(&self) -> usize {
        self.cfg.retrain_every
    }

    pub fn labels_path(&self) -> &Path {
        &self.labels
    }

    fn read_labels(&self) -> Result<Vec<PreferencePair>, TrainError> {
        if !self.labels.is_file() {
            return Ok(Vec::new());
        }
        let opts = PairOptions {
            max_length: self.cfg.rm_max_length,
            max_prompt_length: self.cfg.rm_max_length,
            overlong: Overlong::Drop,
        };
        Ok(preference::load_pairs(&self.labels, &self.tokenizer, &opts)?.0)
    }

    /// Retrains when `retrain_every` labels arrived since the last version. Returns the
    /// metrics of the refresh, or `None` when it was not due.
    pub fn maybe_refresh(
        &mut self,
        device: &Device,
    ) -> Result<Option<BTreeMap<String, f64>>, TrainError> {
        let seen = std::fs::metadata(&self.labels)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)));
        if seen.is_some() && seen == self.last_seen {
            return Ok(None);
        }
        let pairs = self.read_labels()?;
        self.last_seen = seen;
        if pairs.len() < self.trained_on + self.cfg.retrain_every {
            return Ok(None);
        }
        let started = Instant::now();
        let train_device = device.clone().autodiff();
        let loaded = model::load(&self.base, &train_device, Heads::Score)?;
        let config = loaded.config.clone();
        let mut rm = loaded.model;
        let mut optim = Optimizer::new(OptimConfig {
            learning_rate: self.cfg.rm_learning_rate,
            lr_scheduler_type: LrSchedule::Constant,
            ..Default::default()
        });
        let pad = preference::pad_id(&self.tokenizer);
        let mut sampler = EpochSampler::new(pairs.len(), self.seed + self.version as u64);
        let bs = self.cfg.rm_batch_size.min(pairs.len());
        let mut last_loss = f64::NAN;
        for step in 0..self.cfg.rm_steps {
            let idx = sampler.next_batch(bs);
            let rows: Vec<&PreferencePair> = idx.iter().map(|&i| &pairs[i]).collect();
            let out = pair_loss(&rm, &rows, false, None, pad, &train_device);
            last_loss = scalar(out.loss.clone().detach());
            if !last_loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: step + 1,
                    value: last_loss,
                });
            }
            let grads =
                GradientsParams::from_grads(super::layerwise::scaled(out.loss).backward(), &rm);
            let (next, _) = optim.step(self.cfg.rm_learning_rate, rm, grads);
            rm = next;
        }
        // Accuracy on the labels it was trained on: a sanity check, not a held-out figure.
        let plain = device.clone().without_autodiff();
        let valid = rm.valid();
        let mut correct = 0usize;
        for chunk in pairs.chunks(32) {
            let rows: Vec<&PreferencePair> = chunk.iter().collect();
            let out = pair_loss(&valid, &rows, false, None, pad, &plain);
            correct += out
                .chosen
                .iter()
                .zip(&out.rejected)
                .filter(|(c, r)| c > r)
                .count();
        }
        self.version += 1;
        self.trained_on = pairs.len();
        let dir = self.out_dir.join(format!("v{}", self.version));
        hf::save_dir(&dir, &config, &valid, Some(&self.tokenizer), None)?;
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = valid;
        let mut m = BTreeMap::new();
        m.insert("reward_model/version".into(), self.version as f64);
        m.insert("reward_model/labels".into(), pairs.len() as f64);
        m.insert("reward_model/loss".into(), last_loss);
        m.insert(
            "reward_model/train_accuracy".into(),
            correct as f64 / pairs.len() as f64,
        );
        m.insert(
            "reward_model/refresh_time".into(),
            started.elapsed().as_secs_f64(),
        );
        Ok(Some(m))
    }
}
