//! Training methods, one file each, and the pieces they share: token log-probabilities,
//! masked means and batches as tensors.

pub mod distill;
pub mod dpo;
pub mod grpo;
pub mod kto;
pub mod layerwise;
pub mod lm;
pub mod losses;
pub mod online_dpo;
pub mod onpolicy;
pub mod ppo;
pub mod preference;
pub mod pretrain;
pub mod rlhf;
pub mod rm;
pub mod rollout;
pub mod sequences;
pub mod sft;
pub mod state;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::engine::data::PaddedBatch;
use crate::engine::events::RunStatus;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] crate::engine::model::ModelError),
    #[error(transparent)]
    Data(#[from] crate::engine::data::DataError),
    #[error(transparent)]
    Tokenizer(#[from] crate::engine::model::tokenizer::TokenizerError),
    #[error("{0}")]
    Invalid(String),
    #[error("non-finite loss ({value}) at step {step}; the last good checkpoint is kept")]
    NonFinite { step: usize, value: f64 },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Loads the model a run trains (`[model] path`, with `[model] adapter` or fresh `[lora]`
/// When the newest metrics set a new best by `[train] keep_best`, saves the model (no trainer
/// state: resuming uses the step checkpoints) to `checkpoints/best`, which pruning leaves
/// alone, notes the value in `best.json` and reports the checkpoint.
pub fn save_best_if_improved(
    ctx: &mut crate::engine::run::RunContext,
    step: usize,
    model: &crate::engine::model::CausalLm,
    config: &crate::engine::model::ModelConfig,
    tokenizer: &crate::engine::model::tokenizer::Tokenizer,
    generation_config: &Option<serde_json::Value>,
) -> Result<(), TrainError> {
    if !ctx.take_best_improved() {
        return Ok(());
    }
    let dir = ctx.dir.best_dir();
    crate::engine::model::hf::save_dir(
        &dir,
        config,
        model,
        Some(tokenizer),
        generation_config.as_ref(),
    )?;
    ctx.send(crate::engine::events::Event::Checkpoint {
        run: ctx.id.clone(),
        step,
        path: dir,
    });
    ctx.note_best();
    Ok(())
}

/// adapters) on `device`, and logs what trains.
pub fn load_trained_model(
    cfg: &crate::engine::config::RunConfig,
    device: &Device,
    heads: crate::engine::model::Heads,
    ctx: &crate::engine::run::RunContext,
) -> Result<crate::engine::model::LoadedModel, TrainError> {
    use crate::engine::model;
    let loaded = model::load_for_run(
        &cfg.model.path,
        cfg.model.adapter.as_deref(),
        cfg.lora.as_ref(),
        device,
        heads,
        cfg.seed,
        cfg.frozen_dtype(),
    )?;
    check_dropout(cfg, &loaded.model)?;
    ctx.log(
        crate::engine::events::LogLevel::Info,
        model::lora::describe_parameters(&loaded.model),
    );
    Ok(loaded)
}

/// Refuses a saved adapter with dropout under per-layer recomputation (see
/// [`crate::engine::config::DROPOUT_WITH_CHECKPOINTING`]); `[lora]` is checked with the config.
pub fn check_dropout(
    cfg: &crate::engine::config::RunConfig,
    model: &crate::engine::model::CausalLm,
) -> Result<(), TrainError> {
    let dropout = model
        .adapter
        .as_ref()
        .map_or(0.0, |a| a.config.lora_dropout);
    if cfg.train.gradient_checkpointing && dropout > 0.0 {
        return Err(TrainError::Invalid(format!(
            "the adapter has lora_dropout = {dropout}: {}",
            crate::engine::config::DROPOUT_WITH_CHECKPOINTING
        )));
    }
    Ok(())
}

/// How a training loop ended when it did not fail.
pub type TrainOutcome = Result<RunStatus, TrainError>;

/// `log p(target)` per position: `[B, T, V]` logits and `[B, T]` targets to `[B, T]`.
pub fn token_logprobs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2)
}

/// Mean of `values` over positions where `mask` is 1 (`[B, T]` each); 0 when the mask is
/// empty rather than NaN.
pub fn masked_mean(values: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let count = mask.clone().sum().clamp_min(1.0);
    (values * mask).sum() / count
}

/// A right-padded training batch on a device: ids, attention mask and loss mask.
pub struct BatchTensors {
    pub ids: Tensor<2, Int>,
    pub positions: Tensor<2, Int>,
    pub valid: Tensor<2, Bool>,
    pub loss_mask: Tensor<2>,
    pub real_tokens: usize,
}

impl BatchTensors {
    pub fn new(batch: &PaddedBatch, device: &Device) -> Self {
        let b = batch.input_ids.len();
        let t = batch.input_ids.first().map_or(0, Vec::len);
        let ids: Vec<i64> = batch
            .input_ids
            .iter()
            .flatten()
            .map(|&x| x as i64)
            .collect();
        let valid: Vec<bool> = batch.attention_mask.iter().flatten().copied().collect();
        let loss: Vec<f32> = batch
            .loss_mask
            .iter()
            .flatten()
            .map(|&m| if m { 1.0 } else { 0.0 })
            .collect();
        let real_tokens = valid.iter().filter(|&&v| v).count();
        // Right padding: every row starts at position 0.
        let positions: Vec<i64> = (0..b).flat_map(|_| 0..t as i64).collect();
        Self {
            ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
            positions: Tensor::from_data(TensorData::new(positions, [b, t]), device),
            valid: Tensor::from_data(TensorData::new(valid, [b, t]), device),
            loss_mask: Tensor::from_data(TensorData::new(loss, [b, t]), device),
            real_tokens,
        }
    }
}

/// Scalar of a one-element tensor as f64.
/// Several one-value tensors read in one transaction: one host sync, not one per value (each
/// costs a queue flush and a wait on a GPU).
pub fn scalars<const N: usize>(values: [Tensor<1>; N]) -> [f64; N] {
    let transaction = values
        .into_iter()
        .fold(burn::tensor::Transaction::default(), |tx, v| tx.register(v));
    let data = transaction.execute();
    std::array::from_fn(|i| {
        data[i]
            .clone()
            .convert::<f32>()
            .as_slice::<f32>()
            .ok()
            .and_then(|s| s.first().copied())
            .map_or(f64::NAN, |v| v as f64)
    })
}

pub fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}
