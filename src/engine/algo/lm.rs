//! The causal language-modelling loop shared by SFT and pretraining: masked next-token loss,
//! gradient accumulation, AdamW with schedule and global-norm clipping, eval loss, sample
//! generations and checkpoints, reporting TRL's metric names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::layerwise::{self, HeadExtras, TokenRows};
use super::sequences::HeadOutputs;
use super::state::TrainerState;
use super::{BatchTensors, TrainError, TrainOutcome, masked_mean, scalar};
use crate::engine::config::RunConfig;
use crate::engine::data::{EpochSampler, TokenizedExample, pad_batch};
use crate::engine::events::{Event, LogLevel, RunStatus, SampleRecord};
use crate::engine::model::tokenizer::{ChatMessage, Tokenizer};
use crate::engine::model::{CausalLm, ModelConfig, hf};
use crate::engine::optim::Optimizer;
use crate::engine::run::{Control, RunContext};
use crate::engine::sample;

/// Eval batches are capped so an eval pass stays a small fraction of training time.
const MAX_EVAL_BATCHES: usize = 16;

/// What a language-model training run needs besides the network itself.
pub struct LmSetup {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub generation_config: Option<serde_json::Value>,
    pub train: Vec<TokenizedExample>,
    pub eval: Vec<TokenizedExample>,
}

/// Loss and token accuracy of one batch. `model` may be an autodiff model (training) or a
/// `valid()` copy (eval).
pub struct LmLoss {
    pub loss: Tensor<1>,
    pub correct: f64,
    pub targets: f64,
}

pub fn lm_loss(model: &CausalLm, batch: &BatchTensors) -> LmLoss {
    let rows = token_rows(batch);
    let hidden = model.hidden(
        rows.ids.clone(),
        rows.positions.clone(),
        rows.valid.clone(),
        None,
    );
    // Position i predicts token i + 1; the head runs in chunks (no [B, T, V] tensor).
    let t = rows.ids.dims()[1];
    let head = super::sequences::head_outputs(
        model,
        hidden.narrow(1, 0, t - 1),
        rows.targets.clone(),
        1.0,
        false,
        true,
    );
    loss_from_head(head, rows.targets, target_mask(batch))
}

/// The rows of `batch` as the layer-wise backward takes them (targets shifted by one).
fn token_rows(batch: &BatchTensors) -> TokenRows {
    let t = batch.ids.dims()[1];
    TokenRows {
        ids: batch.ids.clone(),
        positions: batch.positions.clone(),
        valid: batch.valid.clone(),
        targets: batch.ids.clone().narrow(1, 1, t - 1),
    }
}

/// 1 where a target is trained on, `[B, T - 1]`.
fn target_mask(batch: &BatchTensors) -> Tensor<2> {
    let t = batch.ids.dims()[1];
    batch.loss_mask.clone().narrow(1, 1, t - 1)
}

/// Mean negative log-likelihood of the masked targets, and the argmax's accuracy.
fn loss_from_head(head: HeadOutputs, targets: Tensor<2, Int>, mask: Tensor<2>) -> LmLoss {
    let predicted = head.argmax.expect("asked for the argmax");
    let correct = predicted.equal(targets).float() * mask.clone();
    let correct = scalar(correct.sum());
    let count = scalar(mask.clone().sum());
    LmLoss {
        loss: masked_mean(head.logprobs.neg(), mask),
        correct,
        targets: count,
    }
}

/// Gradients of [`lm_loss`] (times `scale`) for `model`'s trainable parameters, layer by
/// layer as `recompute` says (see `layerwise::logprob_grads`); with the loss's value, correct
/// targets and targets.
pub fn lm_grads(
    model: &CausalLm,
    batch: &BatchTensors,
    scale: f32,
    recompute: Option<usize>,
) -> (GradientsParams, f64, (f64, f64)) {
    let rows = token_rows(batch);
    let targets = rows.targets.clone();
    let extras = HeadExtras {
        entropy: false,
        argmax: true,
    };
    let (grads, value, counts) =
        layerwise::logprob_grads(model, rows, 1.0, extras, recompute, |head| {
            let out = loss_from_head(head, targets, target_mask(batch));
            Ok::<_, std::convert::Infallible>((out.loss * scale, (out.correct, out.targets)))
        })
        .unwrap_or_else(|never| match never {});
    (grads, value / scale as f64, counts)
}

/// Trains until `max_steps`, a stop command, or an error. Saves `checkpoints/final` (and
/// `final_copy`, when given) at the end.
pub fn train_lm(
    mut model: CausalLm,
    setup: LmSetup,
    cfg: &RunConfig,
    device: &Device,
    ctx: &mut RunContext,
    final_copy: Option<&Path>,
) -> TrainOutcome {
    let train_cfg = &cfg.train;
    if setup.train.is_empty() {
        return Err(TrainError::Invalid(
            "the training set is empty after tokenisation (every example was empty or had no \
             target tokens)"
                .into(),
        ));
    }
    let pad_id = setup
        .tokenizer
        .pad_id()
        .or_else(|| setup.tokenizer.eos_ids().first().copied())
        .unwrap_or(0);
    let total = train_cfg.max_steps;
    let bs = train_cfg.per_device_train_batch_size;
    let ga = train_cfg.gradient_accumulation_steps;
    let mut sampler = EpochSampler::new(setup.train.len(), cfg.seed);
    let mut optim = Optimizer::new(cfg.optim.clone());
    let mut num_tokens = 0usize;
    let mut step = 0;
    if let Some(ck) = ctx.resume_from.clone() {
        let state = TrainerState::load(&ck)?;
        (model, optim, sampler) = state.restore(&ck, model, optim, setup.train.len(), cfg.seed)?;
        step = state.step;
        num_tokens = state.num_tokens;
        ctx.resume_at(step, state.wall_time);
        ctx.log(
            LogLevel::Info,
            format!("resumed from {} at step {step}", ck.display()),
        );
    }
    ctx.send(Event::Started {
        run: ctx.id.clone(),
        method: cfg.method.name().into(),
        run_dir: ctx.dir.path.clone(),
        total_steps: total,
        model: Some(crate::engine::model::lora::summary(&model)),
    });
    ctx.status(RunStatus::Running);
    ctx.log(
        LogLevel::Info,
        format!(
            "{} training sequences, {} eval; {} parameters; batch {bs} x {ga} accumulation",
            setup.train.len(),
            setup.eval.len(),
            setup.config.num_params()
        ),
    );

    while step < total {
        match ctx.poll() {
            Control::Stop => {
                let dir = ctx.dir.final_dir();
                let progress = (&sampler, &optim, num_tokens);
                save(&setup, &model, ctx, step, dir, None, Some(progress))?;
                return Ok(RunStatus::Stopped);
            }
            Control::Save => {
                let dir = ctx.dir.checkpoint_dir(step);
                let progress = (&sampler, &optim, num_tokens);
                save(&setup, &model, ctx, step, dir, None, Some(progress))?;
                // Asked while paused: the run waits again before its next step.
                continue;
            }
            Control::Continue => {}
        }
        let started = std::time::Instant::now();
        let mut accumulator = GradientsAccumulator::<CausalLm>::new();
        let (mut loss_sum, mut correct, mut targets) = (0.0, 0.0, 0.0);
        for _ in 0..ga {
            let idx = sampler.next_batch(bs);
            let rows: Vec<&TokenizedExample> = idx.iter().map(|&i| &setup.train[i]).collect();
            let batch = BatchTensors::new(&pad_batch(&rows, pad_id, false), device);
            num_tokens += batch.real_tokens;
            let (grads, value, (batch_correct, batch_targets)) =
                lm_grads(&model, &batch, 1.0 / ga as f32, train_cfg.recompute());
            if !value.is_finite() {
                ctx.send(Event::Failed {
                    run: ctx.id.clone(),
                    step: Some(step + 1),
                    error: format!("loss is {value} at step {}", step + 1),
                });
                return Err(TrainError::NonFinite {
                    step: step + 1,
                    value,
                });
            }
            loss_sum += value;
            correct += batch_correct;
            targets += batch_targets;
            accumulator.accumulate(&model, grads);
        }
        let lr = cfg.optim.lr_at(step, total);
        let (next, grad_norm) = optim.step(lr, model, accumulator.grads());
        model = next;
        step += 1;

        let mut values = BTreeMap::new();
        values.insert("loss".into(), loss_sum / ga as f64);
        values.insert("mean_token_accuracy".into(), correct / targets.max(1.0));
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        values.insert("num_tokens".into(), num_tokens as f64);
        values.insert(
            "epoch".into(),
            (step * bs * ga) as f64 / setup.train.len() as f64,
        );
        values.insert("step_time".into(), started.elapsed().as_secs_f64());
        if train_cfg.eval_steps > 0 && step % train_cfg.eval_steps == 0 && !setup.eval.is_empty() {
            let (eval_loss, eval_acc) = evaluate(&model.valid(), &setup.eval, bs, pad_id, device);
            values.insert("eval_loss".into(), eval_loss);
            values.insert("eval_mean_token_accuracy".into(), eval_acc);
        }
        ctx.metrics(step, values);
        super::save_best_if_improved(
            ctx,
            step,
            &model,
            &setup.config,
            &setup.tokenizer,
            &setup.generation_config,
        )?;

        if cfg.samples.every > 0 && step % cfg.samples.every == 0 && !cfg.samples.prompts.is_empty()
        {
            let samples =
                sample_prompts(&model.valid(), &setup.tokenizer, &setup.config, cfg, step);
            match samples {
                Ok(s) => ctx.samples(step, s),
                Err(e) => ctx.log(LogLevel::Warn, format!("sampling failed: {e}")),
            }
        }
        if train_cfg.save_steps > 0 && step % train_cfg.save_steps == 0 && step < total {
            let dir = ctx.dir.checkpoint_dir(step);
            let progress = (&sampler, &optim, num_tokens);
            save(&setup, &model, ctx, step, dir, None, Some(progress))?;
            if let Err(e) = ctx.dir.prune_checkpoints(train_cfg.save_total_limit) {
                ctx.log(LogLevel::Warn, format!("pruning old checkpoints: {e}"));
            }
        }
    }
    let dir = ctx.dir.final_dir();
    // A run that took no step has nothing to publish: never replace a trained model (e.g. the
    // shipped base model) with an untrained one.
    let final_copy = final_copy.filter(|_| step > 0);
    save(&setup, &model, ctx, step, dir, final_copy, None)?;
    Ok(RunStatus::Finished)
}

/// Mean loss per target token and token accuracy over (up to `MAX_EVAL_BATCHES` batches of)
/// the eval set.
pub fn evaluate(
    model: &CausalLm,
    eval: &[TokenizedExample],
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> (f64, f64) {
    let device = device.clone().without_autodiff();
    let (mut loss, mut correct, mut targets) = (0.0, 0.0, 0.0);
    for chunk in eval.chunks(batch_size).take(MAX_EVAL_BATCHES) {
        let rows: Vec<&TokenizedExample> = chunk.iter().collect();
        let batch = BatchTensors::new(&pad_batch(&rows, pad_id, false), &device);
        let out = lm_loss(model, &batch);
        loss += scalar(out.loss) * out.targets;
        correct += out.correct;
        targets += out.targets;
    }
    (loss / targets.max(1.0), correct / targets.max(1.0))
}

/// Greedy (or as configured) generations for `[samples] prompts`.
pub fn sample_prompts(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    config: &ModelConfig,
    cfg: &RunConfig,
    step: usize,
) -> Result<Vec<SampleRecord>, TrainError> {
    let prompts = &cfg.samples.prompts;
    let mut ids = Vec::with_capacity(prompts.len());
    for p in prompts {
        let text = if cfg.samples.chat {
            tokenizer.apply_chat_template(
                &[ChatMessage {
                    role: "user".into(),
                    content: p.clone(),
                }],
                true,
            )?
        } else {
            p.clone()
        };
        ids.push(tokenizer.encode(&text, !cfg.samples.chat)?);
    }
    let mut eos = tokenizer.eos_ids().to_vec();
    eos.extend(config.eos_ids());
    let pad = tokenizer.pad_id().or(eos.first().copied()).unwrap_or(0);
    let params = sample::SamplingParams {
        seed: cfg.samples.sampling.seed.wrapping_add(step as u64),
        ..cfg.samples.sampling.clone()
    };
    let gens = sample::generate(
        model,
        &ids,
        &params,
        &eos,
        pad,
        Some(tokenizer),
        config.max_position_embeddings,
    );
    let mut out = Vec::with_capacity(gens.len());
    for (prompt, g) in prompts.iter().zip(gens) {
        out.push(SampleRecord {
            step,
            prompt: prompt.clone(),
            completion: tokenizer.decode(&g.tokens, true)?,
            rewards: BTreeMap::new(),
            advantage: None,
        });
    }
    Ok(out)
}

/// Data position, optimizer and token count: what a resumable checkpoint stores.
type Progress<'a> = (&'a EpochSampler, &'a Optimizer, usize);

/// Saves a Hugging Face folder at `dir` (and a copy at `extra`), with the trainer state when
/// `progress` is given, and reports it.
fn save(
    setup: &LmSetup,
    model: &CausalLm,
    ctx: &mut RunContext,
    step: usize,
    dir: PathBuf,
    extra: Option<&Path>,
    progress: Option<Progress>,
) -> Result<(), TrainError> {
    let gen_cfg = setup.generation_config.as_ref();
    hf::save_dir(&dir, &setup.config, model, Some(&setup.tokenizer), gen_cfg)?;
    if let Some((sampler, optim, num_tokens)) = progress {
        TrainerState::capture(step, sampler, num_tokens, ctx.wall_time(), model)
            .save(&dir, optim)?;
    }
    if let Some(extra) = extra {
        hf::save_dir(extra, &setup.config, model, Some(&setup.tokenizer), gen_cfg)?;
    }
    ctx.send(Event::Checkpoint {
        run: ctx.id.clone(),
        step,
        path: dir,
    });
    Ok(())
}
