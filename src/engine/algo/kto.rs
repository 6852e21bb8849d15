//! KTO (Ethayarajh et al. 2024; TRL's `KTOTrainer`): preference learning from unpaired
//! examples, each answer marked desirable or not (`{"prompt", "completion", "label": bool}`,
//! TRL's unpaired preference format), against a frozen reference. The KL baseline is TRL's:
//! each prompt paired with another example's completion, scored by the policy and the
//! reference, averaged over the batch, clamped at 0 and not differentiated.
//!
//! ```toml
//! method = "kto"
//! [kto]
//! beta = 0.1
//! desirable_weight = 1.0
//! undesirable_weight = 1.0
//! ```

pub use crate::engine::config::methods::KtoSection;
pub use crate::engine::config::methods::RatingScope;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::losses;
use super::onpolicy::{self, LoadedPolicy, OnPolicy, Policy, StepReport};
use super::preference::{self, Overlong, PairOptions, PreferencePair};
use super::rollout::{self, PromptItem};
use super::{TrainError, TrainOutcome, scalar};
use crate::engine::config::RunConfig;
use crate::engine::data::Prompt;
use crate::engine::events::{LogLevel, SampleRecord};
use crate::engine::label_store::LabelStore;
use crate::engine::labels::{LogEntry, RatingEntry};
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{self, CausalLm, host_f32};
use crate::engine::run::RunContext;
use crate::engine::sample::SamplingParams;

/// Held-out pairs scored together.
const EVAL_BATCH: usize = 32;

impl KtoSection {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(format!(
                "[kto] beta must be a positive number, not {}",
                self.beta
            ));
        }
        for (name, w) in [
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(format!("[kto] {name} must be a number >= 0, not {w}"));
            }
        }
        Ok(())
    }
}

/// One labelled answer: the prompt and completion tokens (in `PreferencePair`'s `prompt` and
/// `chosen`) and whether it is desirable.
struct Example {
    tokens: PreferencePair,
    desirable: bool,
}

/// Reads `{"prompt", "completion", "label"}` rows (plain text); a preference row
/// `{"prompt", "chosen", "rejected"}` gives two (TRL's `unpair_preference_dataset`). Rows too
/// long are cut as DPO cuts them; rows left with no completion are dropped and counted.
fn load(
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &PairOptions,
) -> Result<(Vec<Example>, usize), TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    let mut dropped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| TrainError::Invalid(format!("{}:{}: {msg}", path.display(), i + 1));
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let field = |name: &str| -> Result<String, TrainError> {
            row.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    at(format!(
                        "KTO rows need a text `{name}` (`prompt`, `completion`, `label`)"
                    ))
                })
        };
        let prompt = field("prompt")?;
        let answers: Vec<(String, bool)> = if row.get("chosen").is_some() {
            vec![(field("chosen")?, true), (field("rejected")?, false)]
        } else {
            let desirable = row
                .get("label")
                .and_then(|v| v.as_bool())
                .ok_or_else(|| at("`label` must be true (desirable) or false".into()))?;
            vec![(field("completion")?, desirable)]
        };
        for (completion, desirable) in answers {
            let tokens = preference::tokenize_pair(
                &Prompt::Text(prompt.clone()),
                &Prompt::Text(completion.clone()),
                &Prompt::Text(completion),
                None,
                tokenizer,
            )
            .map_err(at)?;
            match preference::fit(tokens, opts) {
                Some(tokens) => out.push(Example { tokens, desirable }),
                None => dropped += 1,
            }
        }
    }
    Ok((out, dropped))
}

/// The batch as pairs for one forward pass: `chosen` is each example's own completion,
/// `rejected` the previous example's (TRL's mismatched pairs for the KL baseline).
fn batch_pairs(rows: &[&Example]) -> Vec<PreferencePair> {
    let b = rows.len();
    (0..b)
        .map(|i| {
            let other = &rows[(i + b - 1) % b].tokens;
            PreferencePair {
                rejected: other.chosen.clone(),
                rejected_text: other.chosen_text.clone(),
                ..rows[i].tokens.clone()
            }
        })
        .collect()
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let k = cfg.kto.clone().unwrap_or_default();
    k.validate().map_err(TrainError::Invalid)?;
    let train_device = cfg.train.train_device(device, false);
    let plain = device.clone().without_autodiff();
    let loaded = LoadedPolicy::load(cfg, &train_device, ctx, "KTO")?;
    let opts = PairOptions {
        max_length: cfg
            .train
            .max_length
            .min(loaded.config.max_position_embeddings),
        max_prompt_length: k.max_prompt_length,
        overlong: Overlong::Truncate,
    };
    let (train, dropped) = load(&cfg.data.train, &loaded.tokenizer, &opts)?;
    if dropped > 0 {
        ctx.log(
            LogLevel::Warn,
            format!(
                "{}: {dropped} rows had no completion left after truncation and were dropped",
                cfg.data.train.display()
            ),
        );
    }
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no labelled examples",
            cfg.data.train.display()
        )));
    }
    let eval = match &cfg.data.eval {
        Some(p) => load_eval_pairs(p, &loaded.tokenizer, &opts)?,
        None => Vec::new(),
    };
    let ratings = match k.ratings {
        RatingScope::None => None,
        scope => Some(Ratings::open(ctx, scope, loaded.tokenizer.clone(), opts)?),
    };
    let pad = preference::pad_id(&loaded.tokenizer);
    // With LoRA: the base without its adapters, sharing the frozen weights.
    let reference = model::lora::without_adapters(loaded.model.valid());
    let mut policy = loaded.start(cfg, &train_device, ctx, train.len())?;
    let mut method = Kto {
        cfg,
        k,
        train,
        eval,
        reference,
        ratings,
        pad,
        train_device,
        plain,
    };
    onpolicy::drive(cfg, ctx, &mut policy, &mut method)
}

/// Held-out preference pairs (`prompt`, `chosen`, `rejected`): KTO's implicit rewards rank
/// them as DPO's do, which gives the held-out preference accuracy.
fn load_eval_pairs(
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &PairOptions,
) -> Result<Vec<PreferencePair>, TrainError> {
    let (pairs, _) = preference::load_pairs(path, tokenizer, opts).map_err(|e| {
        TrainError::Invalid(format!(
            "[data] eval for KTO: preference pairs (`prompt`, `chosen`, `rejected`) measure the \
             held-out preference accuracy: {e}"
        ))
    })?;
    Ok(pairs)
}

/// KTO as a method of the shared training loop: offline from its data, and, with
/// `[kto] ratings`, online from people's thumbs on samples as they come in.
struct Kto<'a> {
    cfg: &'a RunConfig,
    k: KtoSection,
    train: Vec<Example>,
    eval: Vec<PreferencePair>,
    reference: CausalLm,
    ratings: Option<Ratings>,
    pad: u32,
    train_device: Device,
    plain: Device,
}

impl OnPolicy for Kto<'_> {
    fn describe(&self) -> String {
        let desirable = self.train.iter().filter(|e| e.desirable).count();
        format!(
            "KTO: {} examples ({desirable} desirable, {} undesirable), batch {}, beta {}{}",
            self.train.len(),
            self.train.len() - desirable,
            self.cfg.train.per_device_train_batch_size,
            self.k.beta,
            match self.k.ratings {
                RatingScope::None => "",
                RatingScope::Run => "; rate its samples in the Samples pane (+ / -)",
                RatingScope::All => "; trains on every rating in the labels folder",
            }
        )
    }

    fn step(
        &mut self,
        policy: &mut Policy,
        ctx: &mut RunContext,
    ) -> Result<Option<StepReport>, TrainError> {
        let bs = self.cfg.train.per_device_train_batch_size;
        // People's new ratings first, then the data.
        let rated = match self.ratings.as_mut() {
            Some(r) => r.take(ctx, bs),
            None => Vec::new(),
        };
        let idx = policy.sampler.next_batch(bs - rated.len());
        let rows: Vec<&Example> = rated
            .iter()
            .map(|(e, _)| e)
            .chain(idx.iter().map(|&i| &self.train[i]))
            .collect();
        let (mut values, grads, tokens) = self.loss(policy, &rows)?;
        policy.num_tokens += tokens;
        let lr = policy.learning_rate(self.cfg);
        let grad_norm = policy.apply(lr, grads);
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        values.insert(
            "epoch".into(),
            ((policy.step + 1) * bs) as f64 / self.train.len() as f64,
        );
        let mut samples = Vec::new();
        if let Some(r) = self.ratings.as_mut() {
            r.note_trained(ctx, policy.step + 1, &rated);
            values.insert("labels/ratings".into(), r.trained as f64);
            values.insert("labels/ratings_batch".into(), rated.len() as f64);
            samples = self.samples_to_rate(policy)?;
        }
        Ok(Some(StepReport { values, samples }))
    }

    fn evaluates_before_training(&self) -> bool {
        false
    }

    fn evaluate(&mut self, policy: &Policy) -> Result<BTreeMap<String, f64>, TrainError> {
        if self.eval.is_empty() {
            return Ok(BTreeMap::new());
        }
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for chunk in self.eval.chunks(EVAL_BATCH) {
            let refs: Vec<&PreferencePair> = chunk.iter().collect();
            let p = host_f32(
                super::dpo::forward(&policy.model().valid(), &refs, self.pad, &self.plain).0,
            );
            let r = host_f32(super::dpo::forward(&self.reference, &refs, self.pad, &self.plain).0);
            let b = refs.len();
            for i in 0..b {
                chosen.push(self.k.beta * (p[i] - r[i]) as f64);
                rejected.push(self.k.beta * (p[b + i] - r[b + i]) as f64);
            }
        }
        let wins = chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count();
        let (c, r) = (mean(&chosen).unwrap_or(0.0), mean(&rejected).unwrap_or(0.0));
        Ok(BTreeMap::from([
            ("eval_rewards/chosen".into(), c),
            ("eval_rewards/rejected".into(), r),
            ("eval_rewards/margins".into(), c - r),
            (
                "eval_rewards/accuracies".into(),
                wins as f64 / chosen.len() as f64,
            ),
        ]))
    }
}

impl Kto<'_> {
    /// TRL's KTO loss on one batch, with the KL baseline from mismatched pairs; its metrics,
    /// gradients and token count.
    fn loss(
        &self,
        policy: &Policy,
        rows: &[&Example],
    ) -> Result<(BTreeMap<String, f64>, GradientsParams, usize), TrainError> {
        let b = rows.len();
        let pairs = batch_pairs(rows);
        let refs: Vec<&PreferencePair> = pairs.iter().collect();
        let tokens = refs.iter().map(|p| p.num_tokens()).sum::<usize>();
        // Reference sums for the examples and the mismatched pairs, then the policy's.
        let ref_sums =
            host_f32(super::dpo::forward(&self.reference, &refs, self.pad, &self.plain).0);
        let (sums, _, _) = super::dpo::forward(policy.model(), &refs, self.pad, &self.train_device);
        let policy_kl = host_f32(sums.clone().narrow(0, b, b).detach());
        let kl = (policy_kl
            .iter()
            .zip(&ref_sums[b..])
            .map(|(p, r)| (p - r) as f64)
            .sum::<f64>()
            / b as f64)
            .max(0.0);
        let ref_own = Tensor::<1>::from_data(
            TensorData::new(ref_sums[..b].to_vec(), [b]),
            &self.train_device,
        );
        let labels: Vec<bool> = rows.iter().map(|e| e.desirable).collect();
        let policy_own = sums.narrow(0, 0, b);
        let own_logps = host_f32(policy_own.clone().detach());
        let k = &self.k;
        let out = losses::kto_loss(
            policy_own,
            ref_own,
            kl,
            &labels,
            k.beta,
            k.desirable_weight,
            k.undesirable_weight,
        );
        let value = scalar(out.loss.clone());
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: policy.step + 1,
                value,
            });
        }
        let grads = GradientsParams::from_grads(out.loss.backward(), policy.model());
        let pick = |want: bool| -> Vec<f64> {
            own_logps
                .iter()
                .zip(&labels)
                .filter(|(_, d)| **d == want)
                .map(|(l, _)| *l as f64)
                .collect()
        };
        let mut values = BTreeMap::new();
        values.insert("loss".into(), value);
        values.insert("kl".into(), kl);
        let (chosen, rejected) = (mean(&out.chosen_rewards), mean(&out.rejected_rewards));
        if let Some(c) = chosen {
            values.insert("rewards/chosen".into(), c);
        }
        if let Some(r) = rejected {
            values.insert("rewards/rejected".into(), r);
        }
        if let (Some(c), Some(r)) = (chosen, rejected) {
            values.insert("rewards/margins".into(), c - r);
        }
        if let Some(l) = mean(&pick(true)) {
            values.insert("logps/chosen".into(), l);
        }
        if let Some(l) = mean(&pick(false)) {
            values.insert("logps/rejected".into(), l);
        }
        Ok((values, grads, tokens))
    }

    /// `samples_per_step` completions of the policy, for people to rate in the Samples pane:
    /// the prompts of the data in turn, one completion each.
    fn samples_to_rate(&self, policy: &Policy) -> Result<Vec<SampleRecord>, TrainError> {
        let n = self.k.samples_per_step.min(self.train.len());
        if n == 0 {
            return Ok(Vec::new());
        }
        let step = policy.step + 1;
        let items: Vec<PromptItem> = (0..n)
            .map(|j| {
                let e = &self.train[(step * n + j) % self.train.len()];
                PromptItem {
                    text: e.tokens.prompt_text.clone(),
                    ids: e.tokens.prompt.clone(),
                    answer: None,
                    demo: None,
                }
            })
            .collect();
        let refs: Vec<&PromptItem> = items.iter().collect();
        let params = SamplingParams {
            max_new_tokens: self.k.max_new_tokens,
            temperature: self.k.temperature,
            stop_strings: self.k.stop.clone(),
            seed: self.cfg.seed.wrapping_add(step as u64 * 7919),
            ..Default::default()
        };
        let ro = rollout::rollout(
            &policy.for_generation(),
            &refs,
            1,
            &params,
            &policy.tokenizer,
            &policy.config,
        )?;
        let none = rollout::Rewards::default();
        Ok(rollout::sample_records(step, &refs, &ro, &none, None, n))
    }
}

/// People's thumbs up and down from the label store, turned into KTO examples as they come
/// in; each is trained on once, and the store notes which step used it, so a resumed run
/// does not train on it again.
struct Ratings {
    store: LabelStore,
    scope: RatingScope,
    tokenizer: Tokenizer,
    opts: PairOptions,
    /// Ratings taken already (trained, or too long to train on).
    used: HashSet<u64>,
    /// Rated examples waiting for a step, with their sequence numbers.
    fresh: VecDeque<(Example, u64, String)>,
    /// Ratings trained on so far by this run.
    trained: usize,
}

impl Ratings {
    /// The workbench's label store (`labels/` beside the run folder).
    fn open(
        ctx: &RunContext,
        scope: RatingScope,
        tokenizer: Tokenizer,
        opts: PairOptions,
    ) -> Result<Self, TrainError> {
        let dir = ctx.dir.labels_dir();
        let store = LabelStore::open(&dir, &ctx.id)
            .map_err(|e| TrainError::Invalid(format!("the label store: {e}")))?;
        let used: HashSet<u64> = store
            .entries()
            .iter()
            .filter_map(|e| match e {
                LogEntry::Trained { run, decision, .. } if *run == ctx.id => Some(*decision),
                _ => None,
            })
            .collect();
        let trained = used.len();
        Ok(Self {
            store,
            scope,
            tokenizer,
            opts,
            used,
            fresh: VecDeque::new(),
            trained,
        })
    }

    /// New ratings in scope become examples; up to `limit` of the oldest are returned for
    /// this step.
    fn take(&mut self, ctx: &RunContext, limit: usize) -> Vec<(Example, (u64, String))> {
        if let Err(e) = self.store.refresh() {
            ctx.log(LogLevel::Warn, format!("reading ratings: {e}"));
        }
        let new: Vec<RatingEntry> = self
            .store
            .entries()
            .iter()
            .filter_map(|e| match e {
                LogEntry::Rating(r)
                    if !self.used.contains(&r.seq)
                        && (self.scope == RatingScope::All || r.run == ctx.id) =>
                {
                    Some(r.clone())
                }
                _ => None,
            })
            .collect();
        for r in new {
            self.used.insert(r.seq);
            let tokens = preference::tokenize_pair(
                &Prompt::Text(r.prompt.clone()),
                &Prompt::Text(r.completion.clone()),
                &Prompt::Text(r.completion.clone()),
                None,
                &self.tokenizer,
            );
            match tokens.map(|t| preference::fit(t, &self.opts)) {
                Ok(Some(tokens)) => self.fresh.push_back((
                    Example {
                        tokens,
                        desirable: r.label,
                    },
                    r.seq,
                    r.origin.clone(),
                )),
                Ok(None) => ctx.log(
                    LogLevel::Warn,
                    format!(
                        "rating {} of {}: no completion left after truncation",
                        r.seq, r.origin
                    ),
                ),
                Err(e) => ctx.log(LogLevel::Warn, format!("rating {}: {e}", r.seq)),
            }
        }
        let n = self.fresh.len().min(limit);
        self.fresh
            .drain(..n)
            .map(|(e, seq, origin)| (e, (seq, origin)))
            .collect()
    }

    /// Notes in the label store that `step` trained on these ratings.
    fn note_trained(&mut self, ctx: &RunContext, step: usize, rated: &[(Example, (u64, String))]) {
        if rated.is_empty() {
            return;
        }
        self.trained += rated.len();
        let notes: Vec<(u64, String)> = rated.iter().map(|(_, n)| n.clone()).collect();
        if let Err(e) = self
            .store
            .note_trained(&ctx.id, step, &notes)
            .and_then(|()| self.store.export().map(|_| ()))
        {
            ctx.log(LogLevel::Warn, format!("noting trained ratings: {e}"));
        }
    }
}
