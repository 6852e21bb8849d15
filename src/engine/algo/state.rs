//! What a checkpoint needs besides the weights for a run to continue exactly where it was:
//! step, data position, token count, wall time, KL-controller state and optimizer moments.
//! Saved as `trainer_state.json` + `optimizer.bin` inside each `checkpoints/step-N/` folder.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::engine::data::EpochSampler;
use crate::engine::optim::Optimizer;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.bin";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// `EpochSampler::position()`: the next batch's epoch and index.
    pub sampler_epoch: u64,
    pub sampler_index: usize,
    pub num_tokens: usize,
    pub wall_time: f64,
    /// Burn parameter ids in module visit order. The optimizer's saved moments are keyed by
    /// these ids, and a reloaded model gets fresh ones, so they are restored before the
    /// optimizer state is loaded.
    #[serde(default)]
    pub param_ids: Vec<u64>,
    /// Method-specific state (KL controller, reward-model version, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Mixed precision's loss scale and skipped steps, so a resumed run goes on from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::engine::model::precision::LossScaler>,
}

impl TrainerState {
    /// Progress of a run after `step` optimizer steps.
    pub fn capture<M: Module>(
        step: usize,
        sampler: &EpochSampler,
        num_tokens: usize,
        wall_time: f64,
        model: &M,
    ) -> Self {
        let (sampler_epoch, sampler_index) = sampler.position();
        Self {
            step,
            sampler_epoch,
            sampler_index,
            num_tokens,
            wall_time,
            param_ids: param_ids(model),
            extra: serde_json::Value::Null,
            loss_scaler: crate::engine::model::precision::scaler_state(),
        }
    }

    /// Puts a reloaded model, a fresh optimizer and the data sampler back where the checkpoint
    /// in `dir` left them.
    pub fn restore<M: Module>(
        &self,
        dir: &Path,
        model: M,
        optim: Optimizer,
        data_len: usize,
        seed: u64,
    ) -> Result<(M, Optimizer, EpochSampler), TrainError> {
        let model = assign_param_ids(model, &self.param_ids)?;
        if let Some(scaler) = &self.loss_scaler {
            crate::engine::model::precision::restore_scaler(scaler.clone());
        }
        let optim = optim
            .load(&dir.join(OPTIMIZER_FILE))
            .map_err(TrainError::Invalid)?;
        let sampler =
            EpochSampler::from_position(data_len, seed, self.sampler_epoch, self.sampler_index);
        Ok((model, optim, sampler))
    }

    /// Writes the state and the optimizer next to a saved model folder.
    pub fn save(&self, dir: &Path, optim: &Optimizer) -> Result<(), TrainError> {
        // The optimizer first: the state file is what marks a checkpoint resumable, so a kill
        // between the two writes leaves a checkpoint that is skipped, not a broken one.
        optim
            .save(&dir.join(OPTIMIZER_FILE))
            .map_err(TrainError::Invalid)?;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| TrainError::Invalid(format!("serialising trainer state: {e}")))?;
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(|source| TrainError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| TrainError::Io { path, source })
    }

    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
    }
}

struct IdCollector(Vec<u64>);

impl ModuleVisitor for IdCollector {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.id.val());
    }
}

/// Parameter ids of `model` in visit order.
pub fn param_ids<M: Module>(model: &M) -> Vec<u64> {
    let mut c = IdCollector(Vec::new());
    model.visit(&mut c);
    c.0
}

struct IdAssigner<'a> {
    ids: &'a [u64],
    next: usize,
}

impl ModuleMapper for IdAssigner<'_> {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if let Some(&id) = self.ids.get(self.next) {
            param.id = ParamId::from(id);
        }
        self.next += 1;
        param
    }
}

/// Gives `model`'s parameters the ids saved with a checkpoint (same architecture, same visit
/// order), so the saved optimizer state attaches to them.
pub fn assign_param_ids<M: Module>(model: M, ids: &[u64]) -> Result<M, TrainError> {
    let count = param_ids(&model).len();
    if count != ids.len() {
        return Err(TrainError::Invalid(format!(
            "checkpoint has optimizer state for {} parameters, the model has {count}",
            ids.len()
        )));
    }
    Ok(model.map(&mut IdAssigner { ids, next: 0 }))
}

/// The newest checkpoint of a run that has a trainer state, if any: the newest
/// `checkpoints/step-N`, or `checkpoints/final` when it is at least as far (a run stopped by
/// the user saves there, and resuming it continues from where it stopped).
pub fn latest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    let newest = latest_step_checkpoint(run_dir);
    let final_dir = run_dir.join("checkpoints").join("final");
    if final_dir.join(STATE_FILE).exists()
        && let Ok(state) = TrainerState::load(&final_dir)
    {
        let newest_step = newest
            .as_ref()
            .and_then(|p| p.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok());
        if newest_step.is_none_or(|s: usize| state.step >= s) {
            return Some(final_dir);
        }
    }
    newest
}

fn latest_step_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && !n.contains('.'))
                && p.join(STATE_FILE).exists()
        })
        .collect();
    steps.sort();
    steps.pop()
}

/// Where a resumed run continues: the restored model, optimizer and sampler, and the step and
/// token count it had reached.
pub struct Resumed {
    pub model: crate::engine::model::CausalLm,
    pub optim: Optimizer,
    pub sampler: EpochSampler,
    pub step: usize,
    pub num_tokens: usize,
}

/// When the run resumes (`ctx.resume_from`), loads the checkpoint's weights with `heads` on
/// `device` (a LoRA base stored as `frozen`), restores the trainer state onto them and moves the run's step and clock there.
pub fn resume(
    ctx: &mut crate::engine::run::RunContext,
    device: &burn::prelude::Device,
    heads: crate::engine::model::Heads,
    frozen: crate::engine::model::WeightDtype,
    optim: Optimizer,
    data_len: usize,
    seed: u64,
) -> Result<Option<Resumed>, TrainError> {
    let Some(ck) = ctx.resume_from.clone() else {
        return Ok(None);
    };
    let state = TrainerState::load(&ck)?;
    let weights = crate::engine::model::load_checkpoint(&ck, device, heads, frozen)?.model;
    let (model, optim, sampler) = state.restore(&ck, weights, optim, data_len, seed)?;
    ctx.resume_at(state.step, state.wall_time);
    ctx.log(
        crate::engine::events::LogLevel::Info,
        format!("resumed from {} at step {}", ck.display(), state.step),
    );
    Ok(Some(Resumed {
        model,
        optim,
        sampler,
        step: state.step,
        num_tokens: state.num_tokens,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_checkpoint_needs_a_state_file() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path().join("checkpoints");
        for (name, with_state) in [
            ("step-000002", true),
            ("step-000004", true),
            ("step-000006", false),
        ] {
            std::fs::create_dir_all(ck.join(name)).unwrap();
            if with_state {
                std::fs::write(ck.join(name).join(STATE_FILE), "{}").unwrap();
            }
        }
        assert_eq!(latest_checkpoint(tmp.path()), Some(ck.join("step-000004")));
    }
}
