//! Online DPO with live feedback (Guo et al. 2024, "Direct Language Model Alignment from
//! Online AI Feedback"; TRL's `OnlineDPOTrainer`): each round the policy writes two answers
//! per prompt, a labeller says which is better, and DPO steps on the labelled pairs as they
//! arrive. The labeller is an AI judge (RLAIF), people in the workbench's Pairs pane, or both:
//!
//! - `labeler = "judge"`: the `[judge]` compares each pair in both orders; a consistent verdict
//!   labels it at once, a tie or inconsistent verdict leaves it unlabelled, and a judge failure
//!   (timeout, garbage reply) is a warning and an unlabelled pair, never the end of the run.
//! - `labeler = "human"`: pairs are appended to the run's `pairs.jsonl` (a bounded, synced
//!   queue: at most `queue_limit` wait at once) and sent as [`Event::Pairs`]; the trainer reads
//!   the label log the Pairs pane writes and steps on each new decision. While nothing is
//!   labelled it waits, still obeying pause/stop.
//! - `labeler = "both"`: the judge labels for training and people audit: the judge's verdict
//!   is shown beside each pair, and a person's decision, when it comes, is trained on too.
//!
//! `[[rewards]]` here are never trained on: they are the ground truth logged beside the
//! judge's labels (`rewards/<name>/mean`), e.g. VADER sentiment for "more positive" judges.

pub use crate::engine::config::methods::{Labeler, OnlineDpoSection};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use burn::module::Module;
use burn::prelude::*;

use super::dpo::{DpoStats, RefPair, batch_grads, cache_reference};
use super::losses::DpoLoss;
use super::onpolicy::{self, LoadedPolicy, OnPolicy, Policy, StepReport};
use super::preference::{self, Overlong, PairOptions, PreferencePair};
use super::rollout::{
    self, Evaluator, PromptItem, Rewards, compute_rewards, load_prompts, rollout,
};
use super::sequences::{SeqBatch, score, sequence_logprob};
use super::{TrainError, TrainOutcome};
use crate::engine::config::RunConfig;
use crate::engine::events::{Event, LogLevel};
use crate::engine::judge::{self, Judge, JudgeStats, Verdict};
use crate::engine::label_store::LabelStore;
use crate::engine::labels::{
    self, Decision, LogEntry, PairItem, ProposedPair, append_proposed, read_proposed,
};
use crate::engine::model::tokenizer::ChatMessage;
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{self, CausalLm, host_f32};
use crate::engine::reward::{self, RewardSource};
use crate::engine::run::RunContext;
use crate::engine::sample::{FinishReason, SamplingParams};

/// How often a run waiting for human labels looks at the label log again: quick enough that
/// a label feels picked up at once, rare enough to cost nothing.
const LABEL_POLL: Duration = Duration::from_millis(200);

impl Labeler {
    fn uses_judge(self) -> bool {
        self != Labeler::Human
    }
    fn uses_people(self) -> bool {
        self != Labeler::Judge
    }
}

impl OnlineDpoSection {
    pub fn validate(&self, has_judge: bool) -> Result<(), String> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(format!(
                "[online_dpo] beta must be a number > 0, not {}",
                self.beta
            ));
        }
        if !matches!(self.loss_type, DpoLoss::Sigmoid | DpoLoss::Ipo) {
            return Err("[online_dpo] loss_type must be \"sigmoid\" or \"ipo\"".into());
        }
        if self.prompts_per_step == 0 || self.max_new_tokens == 0 || self.queue_limit == 0 {
            return Err(
                "[online_dpo] prompts_per_step, max_new_tokens and queue_limit must be positive"
                    .into(),
            );
        }
        if self.labeler.uses_judge() && !has_judge {
            return Err(format!(
                "[online_dpo] labeler = \"{}\" needs a [judge] section (type = \"model\", \
                 \"openai\" or \"command\")",
                if self.labeler == Labeler::Both {
                    "both"
                } else {
                    "judge"
                }
            ));
        }
        Ok(())
    }
}

/// A pair waiting for a person, with what is needed to train on it once labelled.
struct Waiting {
    /// Token ids to train on once labelled: the prompt and each answer as sampled.
    tokens: Answers,
    item: PairItem,
}

/// A prompt's token ids and two answers' token ids.
#[derive(Clone)]
struct Answers {
    prompt: Vec<u32>,
    a: Vec<u32>,
    b: Vec<u32>,
}

impl Answers {
    /// The pair to train on, `a` chosen when `a_better`. The answers are the tokens the policy
    /// sampled (ending in EOS only where it wrote one), as TRL's online DPO trains on them;
    /// re-encoding the text would add an EOS and teach the policy to stop early.
    fn labelled(&self, item: &PairItem, a_better: bool) -> PreferencePair {
        let (chosen, rejected, chosen_text, rejected_text) = if a_better {
            (&self.a, &self.b, &item.a, &item.b)
        } else {
            (&self.b, &self.a, &item.b, &item.a)
        };
        PreferencePair {
            prompt_text: item.prompt.clone(),
            chosen_text: chosen_text.clone(),
            rejected_text: rejected_text.clone(),
            prompt: self.prompt.clone(),
            chosen: chosen.clone(),
            rejected: rejected.clone(),
            margin: None,
        }
    }
}

/// This run's waiting pairs that have all their labels (`labels_per_pair` standing
/// decisions not used yet), each with those decisions' sequence numbers and their majority
/// (`None` for a split). Retractions of decisions already trained on are ignored (the step is
/// done).
fn new_decisions(
    entries: &[LogEntry],
    waiting: &HashMap<String, Waiting>,
    used: &HashSet<u64>,
    labels_per_pair: usize,
) -> Vec<(Vec<u64>, String, Option<Decision>)> {
    let mut by_pair: Vec<(String, Vec<u64>, Vec<Decision>)> = Vec::new();
    for d in labels::standing_decisions(entries) {
        if !waiting.contains_key(&d.pair_id) || used.contains(&d.seq) {
            continue;
        }
        match by_pair.iter_mut().find(|(id, ..)| *id == d.pair_id) {
            Some((_, seqs, votes)) => {
                seqs.push(d.seq);
                votes.push(d.decision);
            }
            None => by_pair.push((d.pair_id.clone(), vec![d.seq], vec![d.decision])),
        }
    }
    by_pair
        .into_iter()
        .filter(|(_, seqs, _)| seqs.len() >= labels_per_pair)
        .map(|(id, seqs, votes)| (seqs, id, labels::majority(&votes).0))
        .collect()
}

/// Ground-truth rewards and the KL/entropy of a rollout's completions.
struct RolloutStats {
    values: BTreeMap<String, f64>,
}

#[allow(clippy::too_many_arguments)]
fn rollout_stats(
    policy: &CausalLm,
    reference: &CausalLm,
    prompts: &[&PromptItem],
    tokens: &[Vec<u32>],
    prompt_index: &[usize],
    pad: u32,
    temperature: f32,
    device: &Device,
) -> RolloutStats {
    let prompt_rows: Vec<&[u32]> = prompt_index
        .iter()
        .map(|&i| prompts[i].ids.as_slice())
        .collect();
    let completions: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let mut values = BTreeMap::new();
    if completions.iter().all(|c| c.is_empty()) {
        return RolloutStats { values };
    }
    let batch = SeqBatch::new(&prompt_rows, &completions, pad, device);
    let t = temperature.max(1e-3);
    let pol = host_f32(sequence_logprob(
        score(policy, &batch, t).logprobs,
        batch.completion_mask.clone(),
    ));
    let refr = host_f32(sequence_logprob(
        score(reference, &batch, t).logprobs,
        batch.completion_mask.clone(),
    ));
    let n = pol.len().max(1) as f64;
    let kl = pol
        .iter()
        .zip(&refr)
        .map(|(p, r)| (p - r) as f64)
        .sum::<f64>()
        / n;
    let entropy = -pol.iter().map(|&p| p as f64).sum::<f64>() / n;
    values.insert("objective/kl".into(), kl);
    values.insert("objective/entropy".into(), entropy);
    RolloutStats { values }
}

/// The people's decisions a labelled pair came from (sequence number, pair id), noted in the
/// label store once a step has trained on it; empty for the judge's labels.
type LabelSource = Vec<(u64, String)>;

/// Fits labelled pairs to the length limits and caches their reference log-probabilities,
/// keeping each pair's source.
fn to_training_pairs(
    labelled: Vec<(PreferencePair, LabelSource)>,
    opts: &PairOptions,
    reference: &CausalLm,
    pad: u32,
    device: &Device,
) -> Vec<(RefPair, LabelSource)> {
    let (pairs, sources): (Vec<PreferencePair>, Vec<LabelSource>) = labelled
        .into_iter()
        .filter_map(|(p, source)| Some((preference::fit(p, opts)?, source)))
        .unzip();
    cache_reference(reference, pairs, pad, device)
        .into_iter()
        .zip(sources)
        .collect()
}

/// On a resumed run, the decisions it already trained on: those the label log notes it
/// trained on. A log without any training note (written before runs noted what they trained
/// on) counts every standing decision as trained, as runs then assumed.
fn trained_before(entries: &[LogEntry], run: &str) -> HashSet<u64> {
    let legacy = !entries
        .iter()
        .any(|e| matches!(e, LogEntry::Trained { .. }));
    if legacy {
        labels::standing_decisions(entries)
            .into_iter()
            .map(|d| d.seq)
            .collect()
    } else {
        entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::Trained {
                    run: r, decision, ..
                } if r == run => Some(*decision),
                _ => None,
            })
            .collect()
    }
}

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let o = cfg.online_dpo.clone().unwrap_or_default();
    o.validate(cfg.judge.is_some())
        .map_err(TrainError::Invalid)?;
    let train_device = cfg.train.train_device(device, true);
    let plain = device.clone().without_autodiff();
    let loaded = LoadedPolicy::load(cfg, &train_device, ctx, "online DPO")?;
    let prompts = load_prompts(&cfg.data.train, &loaded.tokenizer, o.chat, "")?;
    let eval = match &cfg.data.eval {
        Some(p) => load_prompts(p, &loaded.tokenizer, o.chat, "")?,
        None => Vec::new(),
    };
    let truth = reward::model::build_all_on(&cfg.rewards, &plain, cfg.frozen_dtype())
        .map_err(|e| TrainError::Invalid(format!("[[rewards]]: {e}")))?;
    let judge: Option<Box<dyn Judge>> = match (&cfg.judge, o.labeler.uses_judge()) {
        (Some(j), true) => Some(
            judge::build(j, &plain, cfg.frozen_dtype())
                .map_err(|e| TrainError::Invalid(e.to_string()))?,
        ),
        _ => None,
    };
    let label_store = if o.labeler.uses_people() {
        Some(
            LabelStore::open(&labels_dir(&o, ctx), &ctx.id)
                .map_err(|e| TrainError::Invalid(format!("the label store: {e}")))?,
        )
    } else {
        None
    };
    let opts = PairOptions {
        max_length: cfg
            .train
            .max_length
            .min(loaded.config.max_position_embeddings),
        max_prompt_length: o.max_prompt_length,
        overlong: Overlong::Truncate,
    };
    let pad = preference::pad_id(&loaded.tokenizer);
    // With LoRA: the base without its adapters, sharing the frozen weights.
    let reference = model::lora::without_adapters(loaded.model.valid());
    let mut policy = loaded.start(cfg, &train_device, ctx, prompts.len())?;
    let mut method = OnlineDpo {
        cfg,
        dpo: super::dpo::DpoSection {
            beta: o.beta,
            loss_type: o.loss_type,
            max_prompt_length: o.max_prompt_length,
            ..Default::default()
        },
        evaluator: Evaluator {
            prompts: eval,
            params: SamplingParams {
                max_new_tokens: o.max_new_tokens,
                temperature: 0.0,
                stop_strings: o.stop.clone(),
                ..Default::default()
            },
            generations: cfg.train.num_eval_generations,
        },
        principle: cfg
            .judge
            .as_ref()
            .map(|j| j.principle().to_string())
            .unwrap_or_default(),
        prompts: Rc::new(prompts),
        truth,
        judge,
        label_store,
        pairs_file: ctx.dir.path.join(labels::RUN_PAIRS_FILE),
        opts,
        pad,
        reference,
        train_device,
        plain,
        waiting: HashMap::new(),
        used_decisions: HashSet::new(),
        ready: VecDeque::new(),
        judge_stats: JudgeStats::default(),
        labelled_by_judge: 0,
        labelled_by_people: 0,
        round_no: 0,
        said_waiting: false,
        pending_values: BTreeMap::new(),
        o,
    };
    method.restore_waiting(ctx, &policy.tokenizer)?;
    onpolicy::drive(cfg, ctx, &mut policy, &mut method)
}

/// The label store of the folder holding `labels.jsonl` (by default `labels/` beside the run
/// folder, where the workbench keeps it).
fn labels_dir(o: &OnlineDpoSection, ctx: &RunContext) -> PathBuf {
    match &o.labels {
        Some(log) => log.parent().unwrap_or(Path::new(".")).to_path_buf(),
        None => ctx.dir.labels_dir(),
    }
}

/// Online DPO as a configuration of the on-policy loop: a round of answer pairs, labels from
/// the judge or people, and a DPO step on the labelled pairs as they arrive.
struct OnlineDpo<'a> {
    cfg: &'a RunConfig,
    o: OnlineDpoSection,
    dpo: super::dpo::DpoSection,
    prompts: Rc<Vec<PromptItem>>,
    evaluator: Evaluator,
    /// Ground-truth rewards, logged and never trained on.
    truth: Vec<(Box<dyn RewardSource>, f32)>,
    judge: Option<Box<dyn Judge>>,
    principle: String,
    label_store: Option<LabelStore>,
    pairs_file: PathBuf,
    opts: PairOptions,
    pad: u32,
    reference: CausalLm,
    train_device: Device,
    plain: Device,
    /// Pairs shown to people and not labelled yet, by pair id.
    waiting: HashMap<String, Waiting>,
    /// People's decisions already trained on.
    used_decisions: HashSet<u64>,
    /// Labelled pairs not trained on yet, oldest first.
    ready: VecDeque<(RefPair, LabelSource)>,
    judge_stats: JudgeStats,
    labelled_by_judge: usize,
    labelled_by_people: usize,
    round_no: u64,
    said_waiting: bool,
    /// Metrics of the newest rollout, reported with the next optimisation step.
    pending_values: BTreeMap<String, f64>,
}

impl OnPolicy for OnlineDpo<'_> {
    fn describe(&self) -> String {
        format!(
            "online DPO: {} prompts, {} x 2 answers per round, labeled by {}{}, beta {}",
            self.prompts.len(),
            self.o.prompts_per_step,
            match self.o.labeler {
                Labeler::Judge => "the AI judge",
                Labeler::Human => "people (Pairs pane)",
                Labeler::Both => "the AI judge, audited by people",
            },
            self.judge
                .as_ref()
                .map(|j| format!(" (judge `{}`)", j.name()))
                .unwrap_or_default(),
            self.o.beta
        )
    }

    fn step(
        &mut self,
        policy: &mut Policy,
        ctx: &mut RunContext,
    ) -> Result<Option<StepReport>, TrainError> {
        // 1. A new round of pairs, unless people are the only labellers and their queue is
        //    full or enough labelled pairs are ready already.
        let bs = self.cfg.train.per_device_train_batch_size;
        let room_for_people = self.waiting.len() + self.o.prompts_per_step <= self.o.queue_limit;
        if self.ready.len() < bs && (self.o.labeler.uses_judge() || room_for_people) {
            self.propose_round(policy, ctx)?;
        }
        // 2. People's new decisions.
        self.take_decisions(ctx);
        if self.ready.is_empty() {
            if self.o.labeler == Labeler::Human {
                if !self.said_waiting {
                    ctx.log(
                        LogLevel::Info,
                        format!(
                            "waiting for labels: {} pair(s) queued in the Pairs pane",
                            self.waiting.len()
                        ),
                    );
                    self.said_waiting = true;
                }
                std::thread::sleep(LABEL_POLL);
            }
            return Ok(None);
        }
        self.said_waiting = false;
        // 3. One DPO step on the oldest labelled pairs.
        self.update(policy, ctx).map(Some)
    }

    fn evaluate(&mut self, policy: &Policy) -> Result<BTreeMap<String, f64>, TrainError> {
        policy.evaluate(&self.evaluator, &mut self.truth)
    }
}

impl OnlineDpo<'_> {
    /// Pairs proposed before a restart and not labelled yet wait again; decisions this run
    /// trained on before are done, and a pair decided while the run was stopped (or loading)
    /// waits like an undecided one and is taken at once.
    fn restore_waiting(
        &mut self,
        ctx: &RunContext,
        tokenizer: &Tokenizer,
    ) -> Result<(), TrainError> {
        let Some(store) = &self.label_store else {
            return Ok(());
        };
        let entries = store.entries().to_vec();
        self.used_decisions = trained_before(&entries, &ctx.id);
        let done: HashSet<&str> = labels::standing_decisions(&entries)
            .into_iter()
            .filter(|d| self.used_decisions.contains(&d.seq))
            .map(|d| d.pair_id.as_str())
            .collect();
        for p in read_proposed(&self.pairs_file).unwrap_or_default() {
            if done.contains(p.pair.id.as_str()) {
                continue;
            }
            // Proposed before a restart: the sampled tokens are gone, so the texts are
            // encoded again (without an EOS the policy may not have written).
            let prompt = if self.o.chat {
                let text = tokenizer.apply_chat_template(
                    &[ChatMessage {
                        role: "user".into(),
                        content: p.pair.prompt.clone(),
                    }],
                    true,
                )?;
                tokenizer.encode(&text, false)?
            } else {
                tokenizer.encode(&p.pair.prompt, true)?
            };
            let tokens = Answers {
                prompt,
                a: tokenizer.encode(&p.pair.a, false)?,
                b: tokenizer.encode(&p.pair.b, false)?,
            };
            self.waiting.insert(
                p.pair.id.clone(),
                Waiting {
                    tokens,
                    item: p.pair,
                },
            );
        }
        Ok(())
    }

    /// Generate and label: two answers per prompt, the judge's verdicts (both orders), the
    /// pairs people will label queued in `pairs.jsonl` and sent to the workbench, and the
    /// round's samples and metrics.
    fn propose_round(
        &mut self,
        policy: &mut Policy,
        ctx: &mut RunContext,
    ) -> Result<(), TrainError> {
        let o = &self.o;
        let step = policy.step;
        self.round_no += 1;
        let idx = policy.sampler.next_batch(o.prompts_per_step);
        let prompts = Rc::clone(&self.prompts);
        let batch: Vec<&PromptItem> = idx.iter().map(|&i| &prompts[i]).collect();
        let params = SamplingParams {
            max_new_tokens: o.max_new_tokens,
            temperature: o.temperature,
            top_k: o.top_k,
            top_p: o.top_p,
            stop_strings: o.stop.clone(),
            seed: self
                .cfg
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.round_no),
        };
        let r = rollout(
            &policy.for_generation(),
            &batch,
            2,
            &params,
            &policy.tokenizer,
            &policy.config,
        )?;
        let mut values = rollout_stats(
            &policy.model().valid(),
            &self.reference,
            &batch,
            &r.tokens,
            &r.prompt_index,
            self.pad,
            o.temperature,
            &self.plain,
        )
        .values;
        let eos = r.finish.iter().filter(|f| **f == FinishReason::Eos).count();
        values.insert(
            "val/contain_eos_token".into(),
            eos as f64 / r.finish.len().max(1) as f64,
        );
        let rewards = if self.truth.is_empty() {
            Rewards::default()
        } else {
            compute_rewards(&mut self.truth, &batch, &r)?
        };
        for (name, v) in &rewards.per_source {
            values.insert(format!("rewards/{name}/mean"), rollout::mean(v));
        }
        if !rewards.total.is_empty() {
            values.insert("objective/scores".into(), rollout::mean(&rewards.total));
        }
        let records = rollout::sample_records(step + 1, &batch, &r, &rewards, None, usize::MAX);
        self.queue_pairs(ctx, step + 1, &batch, &r, &mut values)?;
        ctx.samples(step + 1, records);
        self.pending_values.extend(values);
        Ok(())
    }

    /// Label: the round's answer pairs (two different, non-empty answers to a prompt), the
    /// judge's verdicts trained on at once, and the pairs for people queued in `pairs.jsonl`
    /// and sent to the workbench.
    fn queue_pairs(
        &mut self,
        ctx: &mut RunContext,
        step: usize,
        batch: &[&PromptItem],
        r: &rollout::Rollout,
        values: &mut BTreeMap<String, f64>,
    ) -> Result<(), TrainError> {
        // Two answers per prompt, in order: rows 2i and 2i+1.
        let mut candidates: Vec<(usize, String, String, Answers)> = Vec::new();
        for (k, item) in batch.iter().enumerate() {
            let (a, b) = (&r.texts[2 * k], &r.texts[2 * k + 1]);
            if a != b && !a.trim().is_empty() && !b.trim().is_empty() {
                let tokens = Answers {
                    prompt: item.ids.clone(),
                    a: r.tokens[2 * k].clone(),
                    b: r.tokens[2 * k + 1].clone(),
                };
                candidates.push((k, a.clone(), b.clone(), tokens));
            }
        }
        values.insert(
            "labels/identical_frac".into(),
            1.0 - candidates.len() as f64 / batch.len().max(1) as f64,
        );
        let verdicts = self.judge_candidates(ctx, batch, &candidates);
        let mut labelled = Vec::new();
        let mut proposed = Vec::new();
        for ((pi, a, b, tokens), verdict) in candidates.iter().zip(&verdicts) {
            let item = PairItem::new(
                ctx.id.clone(),
                batch[*pi].text.clone(),
                a.clone(),
                b.clone(),
                format!("{}@{}#a", ctx.id, step),
                format!("{}@{}#b", ctx.id, step),
            );
            if let Some(Ok(v)) = verdict
                && self.o.labeler.uses_judge()
            {
                match v.verdict {
                    Verdict::A => labelled.push((tokens.labelled(&item, true), Vec::new())),
                    Verdict::B => labelled.push((tokens.labelled(&item, false), Vec::new())),
                    Verdict::Tie => {}
                }
            }
            if self.o.labeler.uses_people()
                && self.waiting.len() + proposed.len() < self.o.queue_limit
            {
                if self.waiting.contains_key(&item.id) {
                    continue;
                }
                let (judge_v, judge_error) = match verdict {
                    Some(Ok(v)) => (Some(*v), None),
                    Some(Err(e)) => (None, Some(e.clone())),
                    None => (None, None),
                };
                self.waiting.insert(
                    item.id.clone(),
                    Waiting {
                        tokens: tokens.clone(),
                        item: item.clone(),
                    },
                );
                proposed.push(ProposedPair {
                    pair: item,
                    judge: judge_v,
                    judge_error,
                });
            }
        }
        if !proposed.is_empty() {
            // On disk before anyone sees them, so a crash loses no queued pair.
            append_proposed(&self.pairs_file, &proposed)
                .map_err(|e| TrainError::Invalid(format!("{}: {e}", self.pairs_file.display())))?;
            ctx.send(Event::Pairs {
                run: ctx.id.clone(),
                step,
                pairs: proposed,
            });
        }
        self.labelled_by_judge += labelled.len();
        self.ready.extend(to_training_pairs(
            labelled,
            &self.opts,
            &self.reference,
            self.pad,
            &self.plain,
        ));
        Ok(())
    }

    /// The judge's verdict on each candidate pair (both orders); a failure is a warning and
    /// an unlabelled pair. `None` everywhere without a judge.
    #[allow(clippy::type_complexity)]
    fn judge_candidates(
        &mut self,
        ctx: &RunContext,
        batch: &[&PromptItem],
        candidates: &[(usize, String, String, Answers)],
    ) -> Vec<Option<Result<judge::Judgement, String>>> {
        let mut verdicts = vec![None; candidates.len()];
        let Some(j) = self.judge.as_mut() else {
            return verdicts;
        };
        let triples: Vec<(&str, &str, &str)> = candidates
            .iter()
            .map(|(pi, a, b, _)| (batch[*pi].text.as_str(), a.as_str(), b.as_str()))
            .collect();
        let results = judge::judge_pairs(j.as_mut(), &self.principle, &triples);
        let mut failures = Vec::new();
        for (slot, res) in verdicts.iter_mut().zip(results) {
            *slot = Some(match res {
                Ok(v) => {
                    self.judge_stats.add(&v);
                    Ok(v)
                }
                Err(e) => {
                    self.judge_stats.failed += 1;
                    failures.push(e.to_string());
                    Err(e.to_string())
                }
            });
        }
        if let Some(first) = failures.first() {
            ctx.log(
                LogLevel::Warn,
                format!(
                    "judge failed on {} of {} pairs (left unlabeled): {first}",
                    failures.len(),
                    candidates.len()
                ),
            );
        }
        verdicts
    }

    /// People's new decisions on waiting pairs (each pair's majority once it has all its
    /// labels), made ready to train on.
    fn take_decisions(&mut self, ctx: &RunContext) {
        let Some(store) = self.label_store.as_mut() else {
            return;
        };
        if self.waiting.is_empty() {
            return;
        }
        if let Err(e) = store.refresh() {
            ctx.log(LogLevel::Warn, format!("reading labels: {e}"));
        }
        let per_pair = store.labels_per_pair();
        let mut labelled = Vec::new();
        for (seqs, id, decision) in new_decisions(
            store.entries(),
            &self.waiting,
            &self.used_decisions,
            per_pair,
        ) {
            self.used_decisions.extend(seqs.iter().copied());
            let Some(w) = self.waiting.remove(&id) else {
                continue;
            };
            // The majority of the pair's labels; a tie or a split trains nothing.
            let a_better = match decision {
                Some(Decision::A) => true,
                Some(Decision::B) => false,
                _ => continue,
            };
            let source = seqs.into_iter().map(|s| (s, id.clone())).collect();
            labelled.push((w.tokens.labelled(&w.item, a_better), source));
        }
        self.labelled_by_people += labelled.len();
        self.ready.extend(to_training_pairs(
            labelled,
            &self.opts,
            &self.reference,
            self.pad,
            &self.plain,
        ));
    }

    /// Update: one DPO step on the oldest labelled pairs; people's decisions it used are
    /// noted in the label store.
    fn update(&mut self, policy: &mut Policy, ctx: &RunContext) -> Result<StepReport, TrainError> {
        let take = self
            .ready
            .len()
            .min(self.cfg.train.per_device_train_batch_size);
        let (rows, sources): (Vec<RefPair>, Vec<LabelSource>) = self.ready.drain(..take).unzip();
        let refs: Vec<&RefPair> = rows.iter().collect();
        policy.num_tokens += refs.iter().map(|r| r.pair.num_tokens()).sum::<usize>();
        let mut stats = DpoStats::default();
        let (grads, value) = batch_grads(
            policy.model(),
            &refs,
            &self.dpo,
            (self.pad, &self.train_device),
            &mut stats,
            1.0,
            self.cfg.train.recompute(),
        )?;
        policy.check_finite(ctx, value)?;
        let lr = policy.learning_rate(self.cfg);
        let grad_norm = policy.apply(lr, grads);
        // The label log says which run trained on each person's decision, and at which step.
        let trained: Vec<(u64, String)> = sources.into_iter().flatten().collect();
        if let Some(store) = self.label_store.as_mut()
            && !trained.is_empty()
            && let Err(e) = store
                .note_trained(&ctx.id, policy.step + 1, &trained)
                .and_then(|()| store.export().map(|_| ()))
        {
            ctx.log(LogLevel::Warn, format!("noting trained labels: {e}"));
        }
        let mut values = stats.metrics("", false);
        values.extend(std::mem::take(&mut self.pending_values));
        values.insert("beta".into(), self.o.beta);
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        values.insert("labels/batch".into(), take as f64);
        values.insert("labels/judge".into(), self.labelled_by_judge as f64);
        values.insert("labels/human".into(), self.labelled_by_people as f64);
        values.insert("labels/pending".into(), self.waiting.len() as f64);
        values.insert("labels/ready".into(), self.ready.len() as f64);
        if self.judge.is_some() {
            if let Some(c) = self.judge_stats.consistency() {
                values.insert("judge/consistency".into(), c);
            }
            if let Some(f) = self.judge_stats.first_position_rate() {
                values.insert("judge/first_position_rate".into(), f);
            }
            values.insert("judge/failures".into(), self.judge_stats.failed as f64);
        }
        Ok(StepReport {
            values,
            samples: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judge_labeler_needs_a_judge_section() {
        let o = OnlineDpoSection::default();
        assert!(o.validate(false).unwrap_err().contains("[judge]"));
        assert!(o.validate(true).is_ok());
        let people = OnlineDpoSection {
            labeler: Labeler::Human,
            ..Default::default()
        };
        assert!(people.validate(false).is_ok());
        let hinge = OnlineDpoSection {
            loss_type: DpoLoss::Hinge,
            ..Default::default()
        };
        assert!(hinge.validate(true).is_err());
    }

    /// A resumed run retrains nothing it noted, and takes decisions made while it was away.
    #[test]
    fn a_resumed_run_knows_which_decisions_it_trained_on() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LabelStore::open(tmp.path(), "ann").unwrap();
        let pair = |n: usize| PairItem::new("od", format!("{n}"), "a", "b", "od@1#a", "od@1#b");
        let s1 = store.record(&pair(1), true, Decision::A, None).unwrap();
        let s2 = store.record(&pair(2), true, Decision::B, None).unwrap();
        // A log from before runs noted their training: everything standing counts as done.
        assert_eq!(
            trained_before(store.entries(), "od"),
            HashSet::from([s1, s2])
        );
        // With notes: only what this run noted; the decision made while it was stopped waits.
        store.note_trained("od", 1, &[(s1, pair(1).id)]).unwrap();
        store.note_trained("other", 1, &[(s2, pair(2).id)]).unwrap();
        assert_eq!(trained_before(store.entries(), "od"), HashSet::from([s1]));
    }
}
