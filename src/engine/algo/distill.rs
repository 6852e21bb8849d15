//! On-policy distillation (Agarwal et al. 2024, "On-Policy Distillation of Language Models";
//! TRL's `GKDTrainer` with `lmbda = 1`, `beta = 1`; prime-rl's `opd`): the student samples
//! completions, the teacher scores every position of them over the whole vocabulary, and the
//! student learns the per-token reverse KL to the teacher. The signal is dense (every token,
//! every vocabulary entry) where RL's is one reward per completion, and it is measured on the
//! student's own mistakes, where training on the teacher's text is not.
//!
//! `[[rewards]]`, when given, are only measured (on the rollout and on held-out prompts), so a
//! run shows whether the student's task accuracy follows the teacher's.

pub use crate::engine::config::methods::DistillSection;

use std::collections::BTreeMap;
use std::rc::Rc;

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::onpolicy::{self, LoadedPolicy, OnPolicy, Policy, StepReport};
use super::rollout::{self, Evaluator, PromptItem, Rewards, compute_rewards, load_prompts};
use super::sequences::SeqBatch;
use super::{TrainError, TrainOutcome, losses, scalar};
use crate::engine::config::RunConfig;
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{self, CausalLm, Heads};
use crate::engine::reward::{self, RewardSource};
use crate::engine::run::RunContext;
use crate::engine::sample::SamplingParams;

/// Samples shown per step in the Samples pane.
const SAMPLES_PER_STEP: usize = 8;
/// Prompts whose encodings must agree between student and teacher tokenizers.
const TOKENIZER_PROBES: usize = 16;

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let d = cfg.distill.clone().unwrap_or_default();
    let train_device = cfg.train.train_device(device, false);
    let plain = device.clone().without_autodiff();
    let loaded = LoadedPolicy::load(cfg, &train_device, ctx, "distillation")?;
    let answer_end = d.stop.first().map(String::as_str).unwrap_or("");
    let train = load_prompts(&cfg.data.train, &loaded.tokenizer, d.chat, answer_end)?;
    let mut eval = match &cfg.data.eval {
        Some(p) => load_prompts(p, &loaded.tokenizer, d.chat, answer_end)?,
        None => Vec::new(),
    };
    if d.eval_max_items > 0 {
        eval.truncate(d.eval_max_items);
    }
    let teacher = load_teacher(&d, cfg, &loaded, &train, &plain)?;
    let sources = reward::model::build_all_on(&cfg.rewards, &plain, cfg.frozen_dtype())
        .map_err(|e| TrainError::Invalid(format!("[[rewards]]: {e}")))?;
    let pad = loaded.pad_id();
    let mut policy = loaded.start(cfg, &train_device, ctx, train.len())?;
    let params = SamplingParams {
        max_new_tokens: d.max_completion_length,
        temperature: d.temperature,
        top_k: d.top_k,
        top_p: d.top_p,
        stop_strings: d.stop.clone(),
        seed: cfg.seed,
    };
    let mut method = Distill {
        cfg,
        evaluator: Evaluator {
            prompts: eval,
            params: params.clone(),
            generations: cfg.train.num_eval_generations,
        },
        prompts_per_step: (cfg.train.per_device_train_batch_size / d.num_generations).max(1),
        d,
        train: Rc::new(train),
        teacher,
        sources,
        params,
        train_device,
        plain,
        pad,
    };
    onpolicy::drive(cfg, ctx, &mut policy, &mut method)
}

/// Loads the teacher (frozen, stored as `[model] dtype`) and checks that it reads the
/// student's tokens: the same vocabulary size and the same encoding of the first prompts.
fn load_teacher(
    d: &DistillSection,
    cfg: &RunConfig,
    student: &LoadedPolicy,
    prompts: &[PromptItem],
    device: &Device,
) -> Result<CausalLm, TrainError> {
    let path = d.teacher.display();
    let teacher = model::load(&d.teacher, device, Heads::Lm)?;
    if teacher.config.vocab_size != student.config.vocab_size {
        return Err(TrainError::Invalid(format!(
            "[distill] teacher {path}: a vocabulary of {} tokens, the student's has {}; \
             distillation compares the two models token by token, so they must share a \
             tokenizer",
            teacher.config.vocab_size, student.config.vocab_size
        )));
    }
    let tokenizer = teacher.tokenizer.as_ref().ok_or_else(|| {
        TrainError::Invalid(format!(
            "[distill] teacher {path}: no tokenizer, so rlft cannot check that it reads the \
             student's tokens"
        ))
    })?;
    if let Some(text) = differing_encoding(&student.tokenizer, tokenizer, prompts)? {
        return Err(TrainError::Invalid(format!(
            "[distill] teacher {path}: its tokenizer encodes {text:?} differently from the \
             student's; distillation compares the two models token by token, so they must \
             share a tokenizer"
        )));
    }
    Ok(model::precision::store_frozen(
        teacher.model,
        cfg.frozen_dtype(),
    ))
}

/// The first probe text (a few prompts) the two tokenizers encode differently, if any.
fn differing_encoding(
    student: &Tokenizer,
    teacher: &Tokenizer,
    prompts: &[PromptItem],
) -> Result<Option<String>, TrainError> {
    for p in prompts.iter().take(TOKENIZER_PROBES) {
        if student.encode(&p.text, false)? != teacher.encode(&p.text, false)? {
            return Ok(Some(p.text.clone()));
        }
    }
    Ok(None)
}

/// Full-vocabulary log-probabilities `[B, T − 1, V]` of the next token at each position of
/// `batch` (the positions its targets and completion mask use), logits divided by
/// `temperature`.
fn vocab_logprobs(model: &CausalLm, batch: &SeqBatch, temperature: f32) -> Tensor<3> {
    let t = batch.ids.dims()[1];
    let hidden = model.hidden(
        batch.ids.clone(),
        batch.positions.clone(),
        batch.valid.clone(),
        None,
    );
    let logits = model.logits(hidden.narrow(1, 0, t - 1));
    let logits = if (temperature - 1.0).abs() > f32::EPSILON && temperature > 0.0 {
        logits / temperature
    } else {
        logits
    };
    log_softmax(logits, 2)
}

/// On-policy distillation as a configuration of the on-policy loop.
struct Distill<'a> {
    cfg: &'a RunConfig,
    d: DistillSection,
    train: Rc<Vec<PromptItem>>,
    evaluator: Evaluator,
    teacher: CausalLm,
    /// Measured only, never trained on.
    sources: Vec<(Box<dyn RewardSource>, f32)>,
    params: SamplingParams,
    prompts_per_step: usize,
    train_device: Device,
    plain: Device,
    pad: u32,
}

impl OnPolicy for Distill<'_> {
    fn describe(&self) -> String {
        format!(
            "on-policy distillation from {}: {} prompts ({} held out), {} prompts x {} \
             completions per step, loss reverse KL",
            self.d.teacher.display(),
            self.train.len(),
            self.evaluator.prompts.len(),
            self.prompts_per_step,
            self.d.num_generations
        )
    }

    fn step(
        &mut self,
        policy: &mut Policy,
        ctx: &mut RunContext,
    ) -> Result<Option<StepReport>, TrainError> {
        // Generate: the student samples.
        let train = Rc::clone(&self.train);
        let idx = policy.sampler.next_batch(self.prompts_per_step);
        let prompts: Vec<&PromptItem> = idx.iter().map(|&i| &train[i]).collect();
        let step_params = SamplingParams {
            seed: self.cfg.seed.wrapping_add(policy.step as u64 * 7919),
            ..self.params.clone()
        };
        let ro = rollout::rollout(
            &policy.for_generation(),
            &prompts,
            self.d.num_generations,
            &step_params,
            &policy.tokenizer,
            &policy.config,
        )?;
        let (prompt_rows, completion_rows) = ro.rows(&prompts);
        policy.num_tokens += prompt_rows.iter().map(|p| p.len()).sum::<usize>()
            + completion_rows.iter().map(|c| c.len()).sum::<usize>();
        // Score: the teacher at every position, a constant in the student's graph; the
        // rewards are only measured.
        let plain_batch = SeqBatch::new(&prompt_rows, &completion_rows, self.pad, &self.plain);
        let teacher_lp = vocab_logprobs(&self.teacher, &plain_batch, self.d.temperature);
        let rewards = if self.sources.is_empty() {
            Rewards::default()
        } else {
            compute_rewards(&mut self.sources, &prompts, &ro)?
        };
        // Update: the reverse KL on the student's completion tokens.
        let batch = SeqBatch::new(&prompt_rows, &completion_rows, self.pad, &self.train_device);
        let student_lp = vocab_logprobs(policy.model(), &batch, self.d.temperature);
        let loss = losses::reverse_kl(student_lp, teacher_lp, batch.completion_mask.clone());
        let loss_value = scalar(loss.clone());
        policy.check_finite(ctx, loss_value)?;
        let mut grads = super::layerwise::scaled(loss).backward();
        let grads = GradientsParams::from_module(&mut grads, policy.model());
        let lr = policy.learning_rate(self.cfg);
        let grad_norm = policy.apply(lr, grads);

        let mut values = BTreeMap::new();
        values.insert("loss".into(), loss_value);
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        let lengths: Vec<f32> = ro.tokens.iter().map(|t| t.len() as f32).collect();
        values.insert("completions/mean_length".into(), rollout::mean(&lengths));
        if !rewards.total.is_empty() {
            values.insert("reward".into(), rollout::mean(&rewards.total));
            rollout::reward_metrics(&rewards, &mut values);
        }
        let samples = rollout::sample_records(
            policy.step + 1,
            &prompts,
            &ro,
            &rewards,
            None,
            SAMPLES_PER_STEP,
        );
        Ok(Some(StepReport { values, samples }))
    }

    fn evaluate(&mut self, policy: &Policy) -> Result<BTreeMap<String, f64>, TrainError> {
        policy.evaluate(&self.evaluator, &mut self.sources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_needs_a_teacher_and_rejects_typos() {
        let base = "method = \"distill\"\n[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";
        let err = RunConfig::from_toml(base).unwrap_err().to_string();
        assert!(err.contains("[distill]"), "{err}");
        let err = RunConfig::from_toml(&format!("{base}[distill]\nteacher = \"\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("teacher is required"), "{err}");
        let err = RunConfig::from_toml(&format!("{base}[distill]\nteacher = \"x\"\nlmbda = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lmbda"), "{err}");
        let cfg = RunConfig::from_toml(&format!("{base}[distill]\nteacher = \"x\"\n")).unwrap();
        assert_eq!(cfg.distill.unwrap().num_generations, 1);
    }
}
