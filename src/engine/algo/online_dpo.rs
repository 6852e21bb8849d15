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
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::prelude::*;

use super::dpo::{DpoStats, RefPair, batch_grads, cache_reference};
use super::grpo::{PromptItem, compute_rewards, evaluate, load_prompts, rollout};
use super::losses::DpoLoss;
use super::preference::{self, Overlong, PairOptions, PreferencePair, Saver};
use super::sequences::{SeqBatch, score, sequence_logprob};
use super::state;
use super::{TrainError, TrainOutcome};
use crate::engine::config::RunConfig;
use crate::engine::data::EpochSampler;
use crate::engine::events::{Event, LogLevel, RunStatus, SampleRecord};
use crate::engine::judge::{self, Judge, JudgeStats, Verdict};
use crate::engine::label_store::LabelStore;
use crate::engine::labels::{
    self, Decision, LogEntry, PairItem, ProposedPair, append_proposed, read_proposed,
};
use crate::engine::model::tokenizer::ChatMessage;
use crate::engine::model::{self, CausalLm, Heads, host_f32};
use crate::engine::optim::Optimizer;
use crate::engine::reward;
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
    let dpo = super::dpo::DpoSection {
        beta: o.beta,
        loss_type: o.loss_type,
        max_prompt_length: o.max_prompt_length,
        ..Default::default()
    };
    let train_cfg = &cfg.train;
    let train_device = cfg.train.train_device(device, true);
    let plain = device.clone().without_autodiff();
    let loaded = super::load_trained_model(cfg, &train_device, Heads::Lm, ctx)?;
    let tokenizer = loaded.tokenizer.clone().ok_or_else(|| {
        TrainError::Invalid(format!(
            "{}: online DPO needs a tokenizer",
            cfg.model.path.display()
        ))
    })?;
    let model_cfg = loaded.config.clone();
    let prompts = load_prompts(&cfg.data.train, &tokenizer, o.chat, "")?;
    let eval = match &cfg.data.eval {
        Some(p) => load_prompts(p, &tokenizer, o.chat, "")?,
        None => Vec::new(),
    };
    let mut truth = reward::model::build_all_on(&cfg.rewards, &plain, cfg.frozen_dtype())
        .map_err(|e| TrainError::Invalid(format!("[[rewards]]: {e}")))?;
    let mut judge: Option<Box<dyn Judge>> = match (&cfg.judge, o.labeler.uses_judge()) {
        (Some(j), true) => Some(
            judge::build(j, &plain, cfg.frozen_dtype())
                .map_err(|e| TrainError::Invalid(e.to_string()))?,
        ),
        _ => None,
    };
    let principle = cfg
        .judge
        .as_ref()
        .map(|j| j.principle().to_string())
        .unwrap_or_default();
    // The label store of the folder holding `labels.jsonl` (by default `labels/` beside the
    // run folder, where the workbench keeps it).
    let labels_dir = match &o.labels {
        Some(log) => log
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf(),
        None => ctx
            .dir
            .path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("labels"),
    };
    let mut label_store = if o.labeler.uses_people() {
        Some(
            LabelStore::open(&labels_dir, &ctx.id)
                .map_err(|e| TrainError::Invalid(format!("the label store: {e}")))?,
        )
    } else {
        None
    };
    let pairs_file = ctx.dir.path.join(labels::RUN_PAIRS_FILE);
    let opts = PairOptions {
        max_length: train_cfg.max_length.min(model_cfg.max_position_embeddings),
        max_prompt_length: o.max_prompt_length,
        overlong: Overlong::Truncate,
    };
    let pad = preference::pad_id(&tokenizer);
    // With LoRA: the base without its adapters, sharing the frozen weights.
    let reference = model::lora::without_adapters(loaded.model.valid());
    let mut policy = loaded.model;
    let mut optim = Optimizer::new(cfg.optim.clone());
    let mut sampler = EpochSampler::new(prompts.len(), cfg.seed);
    let mut num_tokens = 0usize;
    let mut step = 0;
    if let Some(r) = state::resume(
        ctx,
        &train_device,
        Heads::Lm,
        cfg.frozen_dtype(),
        Optimizer::new(cfg.optim.clone()),
        prompts.len(),
        cfg.seed,
    )? {
        (policy, optim, sampler, step, num_tokens) =
            (r.model, r.optim, r.sampler, r.step, r.num_tokens);
    }
    // Pairs proposed before a restart and not labelled yet are still waiting.
    let mut waiting: HashMap<String, Waiting> = HashMap::new();
    let mut used_decisions: HashSet<u64> = HashSet::new();
    if o.labeler.uses_people() {
        let entries = label_store
            .as_ref()
            .map(|s| s.entries().to_vec())
            .unwrap_or_default();
        // Decisions this run trained on before a restart are done; a pair decided while the
        // run was stopped (or loading) waits like an undecided one and is taken at once.
        used_decisions = trained_before(&entries, &ctx.id);
        let done: HashSet<&str> = labels::standing_decisions(&entries)
            .into_iter()
            .filter(|d| used_decisions.contains(&d.seq))
            .map(|d| d.pair_id.as_str())
            .collect();
        for p in read_proposed(&pairs_file).unwrap_or_default() {
            if !done.contains(p.pair.id.as_str()) {
                // Proposed before a restart: the sampled tokens are gone, so the texts are
                // encoded again (without an EOS the policy may not have written).
                let prompt = if o.chat {
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
                waiting.insert(
                    p.pair.id.clone(),
                    Waiting {
                        tokens,
                        item: p.pair,
                    },
                );
            }
        }
    }
    let saver = Saver {
        config: &model_cfg,
        tokenizer: &tokenizer,
        generation_config: &loaded.generation_config,
    };
    let total = train_cfg.max_steps;
    let bs = train_cfg.per_device_train_batch_size;
    ctx.send(Event::Started {
        run: ctx.id.clone(),
        method: cfg.method.name().into(),
        run_dir: ctx.dir.path.clone(),
        total_steps: total,
        model: Some(crate::engine::model::lora::summary(&policy)),
    });
    ctx.status(RunStatus::Running);
    ctx.log(
        LogLevel::Info,
        format!(
            "online DPO: {} prompts, {} x 2 answers per round, labeled by {}{}, beta {}",
            prompts.len(),
            o.prompts_per_step,
            match o.labeler {
                Labeler::Judge => "the AI judge",
                Labeler::Human => "people (Pairs pane)",
                Labeler::Both => "the AI judge, audited by people",
            },
            judge
                .as_ref()
                .map(|j| format!(" (judge `{}`)", j.name()))
                .unwrap_or_default(),
            o.beta
        ),
    );
    let greedy_params = SamplingParams {
        max_new_tokens: o.max_new_tokens,
        temperature: 0.0,
        stop_strings: o.stop.clone(),
        ..Default::default()
    };
    if !eval.is_empty()
        && ctx.resume_from.is_none()
        && !truth.is_empty()
        && cfg.train.eval_before_train
    {
        let m = evaluate(
            &model::lora::for_generation(&policy),
            &eval,
            &mut truth,
            &greedy_params,
            &tokenizer,
            &model_cfg,
            cfg.train.num_eval_generations,
        )?;
        ctx.metrics(0, m);
    }

    let mut ready: VecDeque<(RefPair, LabelSource)> = VecDeque::new();
    let mut judge_stats = JudgeStats::default();
    let mut labelled_by_judge = 0usize;
    let mut labelled_by_people = 0usize;
    let mut round_no = 0u64;
    let mut said_waiting = false;
    // Metrics of the newest rollout, reported with the next optimisation step.
    let mut pending_values: BTreeMap<String, f64> = BTreeMap::new();
    while step < total {
        if saver.obey(&policy, ctx, step, (&sampler, &optim, num_tokens))? {
            return Ok(RunStatus::Stopped);
        }
        let started = Instant::now();
        // 1. A new round of pairs, unless people are the only labellers and their queue is full
        //    or enough labelled pairs are ready already.
        let room_for_people = waiting.len() + o.prompts_per_step <= o.queue_limit;
        let want_round = ready.len() < bs && (o.labeler.uses_judge() || room_for_people);
        if want_round {
            round_no += 1;
            let idx = sampler.next_batch(o.prompts_per_step);
            let batch: Vec<&PromptItem> = idx.iter().map(|&i| &prompts[i]).collect();
            let params = SamplingParams {
                max_new_tokens: o.max_new_tokens,
                temperature: o.temperature,
                top_k: o.top_k,
                top_p: o.top_p,
                stop_strings: o.stop.clone(),
                seed: cfg.seed.wrapping_mul(1_000_003).wrapping_add(round_no),
            };
            let valid = policy.valid();
            let r = rollout(
                &model::lora::for_generation(&policy),
                &batch,
                2,
                &params,
                &tokenizer,
                &model_cfg,
            )?;
            let mut values = rollout_stats(
                &valid,
                &reference,
                &batch,
                &r.tokens,
                &r.prompt_index,
                pad,
                o.temperature,
                &plain,
            )
            .values;
            let eos = r.finish.iter().filter(|f| **f == FinishReason::Eos).count();
            values.insert(
                "val/contain_eos_token".into(),
                eos as f64 / r.finish.len().max(1) as f64,
            );
            let mut records: Vec<SampleRecord> = r
                .texts
                .iter()
                .zip(&r.prompt_index)
                .map(|(c, &i)| SampleRecord {
                    step: step + 1,
                    prompt: batch[i].text.clone(),
                    completion: c.clone(),
                    rewards: BTreeMap::new(),
                    advantage: None,
                })
                .collect();
            if !truth.is_empty() {
                let rewards = compute_rewards(&mut truth, &batch, &r)?;
                for (name, v) in &rewards.per_source {
                    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
                    values.insert(format!("rewards/{name}/mean"), mean);
                    for (rec, x) in records.iter_mut().zip(v) {
                        rec.rewards.insert(name.clone(), *x as f64);
                    }
                }
                let mean_total = rewards.total.iter().map(|&x| x as f64).sum::<f64>()
                    / rewards.total.len().max(1) as f64;
                values.insert("objective/scores".into(), mean_total);
            }
            // Two answers per prompt, in order: rows 2i and 2i+1.
            let mut candidates: Vec<(usize, String, String, Answers)> = Vec::new();
            for (k, pi) in (0..batch.len()).enumerate() {
                let (a, b) = (&r.texts[2 * k], &r.texts[2 * k + 1]);
                if a != b && !a.trim().is_empty() && !b.trim().is_empty() {
                    let tokens = Answers {
                        prompt: batch[pi].ids.clone(),
                        a: r.tokens[2 * k].clone(),
                        b: r.tokens[2 * k + 1].clone(),
                    };
                    candidates.push((pi, a.clone(), b.clone(), tokens));
                }
            }
            values.insert(
                "labels/identical_frac".into(),
                1.0 - candidates.len() as f64 / batch.len().max(1) as f64,
            );
            // 2. The judge, both orders.
            let mut verdicts: Vec<Option<Result<judge::Judgement, String>>> =
                vec![None; candidates.len()];
            if let Some(j) = judge.as_mut() {
                let triples: Vec<(&str, &str, &str)> = candidates
                    .iter()
                    .map(|(pi, a, b, _)| (batch[*pi].text.as_str(), a.as_str(), b.as_str()))
                    .collect();
                let results = judge::judge_pairs(j.as_mut(), &principle, &triples);
                let mut failures = Vec::new();
                for (slot, res) in verdicts.iter_mut().zip(results) {
                    *slot = Some(match res {
                        Ok(v) => {
                            judge_stats.add(&v);
                            Ok(v)
                        }
                        Err(e) => {
                            judge_stats.failed += 1;
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
            }
            let mut labelled = Vec::new();
            let mut proposed = Vec::new();
            for ((pi, a, b, tokens), verdict) in candidates.iter().zip(&verdicts) {
                let item = PairItem::new(
                    ctx.id.clone(),
                    batch[*pi].text.clone(),
                    a.clone(),
                    b.clone(),
                    format!("{}@{}#a", ctx.id, step + 1),
                    format!("{}@{}#b", ctx.id, step + 1),
                );
                if let Some(Ok(v)) = verdict
                    && o.labeler.uses_judge()
                {
                    match v.verdict {
                        Verdict::A => labelled.push((tokens.labelled(&item, true), Vec::new())),
                        Verdict::B => labelled.push((tokens.labelled(&item, false), Vec::new())),
                        Verdict::Tie => {}
                    }
                }
                if o.labeler.uses_people() && waiting.len() + proposed.len() < o.queue_limit {
                    if waiting.contains_key(&item.id) {
                        continue;
                    }
                    let (judge_v, judge_error) = match verdict {
                        Some(Ok(v)) => (Some(*v), None),
                        Some(Err(e)) => (None, Some(e.clone())),
                        None => (None, None),
                    };
                    waiting.insert(
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
                append_proposed(&pairs_file, &proposed)
                    .map_err(|e| TrainError::Invalid(format!("{}: {e}", pairs_file.display())))?;
                ctx.send(Event::Pairs {
                    run: ctx.id.clone(),
                    step: step + 1,
                    pairs: proposed,
                });
            }
            labelled_by_judge += labelled.len();
            ready.extend(to_training_pairs(labelled, &opts, &reference, pad, &plain));
            ctx.samples(step + 1, records);
            pending_values.extend(values);
        }
        // 3. People's new decisions.
        if let Some(store) = label_store.as_mut()
            && !waiting.is_empty()
        {
            if let Err(e) = store.refresh() {
                ctx.log(LogLevel::Warn, format!("reading labels: {e}"));
            }
            let per_pair = store.labels_per_pair();
            let mut labelled = Vec::new();
            for (seqs, id, decision) in
                new_decisions(store.entries(), &waiting, &used_decisions, per_pair)
            {
                used_decisions.extend(seqs.iter().copied());
                let Some(w) = waiting.remove(&id) else {
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
            labelled_by_people += labelled.len();
            ready.extend(to_training_pairs(labelled, &opts, &reference, pad, &plain));
        }
        if ready.is_empty() {
            if o.labeler == Labeler::Human {
                if !said_waiting {
                    ctx.log(
                        LogLevel::Info,
                        format!(
                            "waiting for labels: {} pair(s) queued in the Pairs pane",
                            waiting.len()
                        ),
                    );
                    said_waiting = true;
                }
                std::thread::sleep(LABEL_POLL);
            }
            continue;
        }
        said_waiting = false;
        // 4. One DPO step on the oldest labelled pairs.
        let take = ready.len().min(bs);
        let (rows, sources): (Vec<RefPair>, Vec<LabelSource>) = ready.drain(..take).unzip();
        let refs: Vec<&RefPair> = rows.iter().collect();
        num_tokens += refs.iter().map(|r| r.pair.num_tokens()).sum::<usize>();
        let mut stats = DpoStats::default();
        let (grads, value) = batch_grads(
            &policy,
            &refs,
            &dpo,
            (pad, &train_device),
            &mut stats,
            1.0,
            cfg.train.recompute(),
        )?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: step + 1,
                value,
            });
        }
        let lr = cfg.optim.lr_at(step, total);
        let (next, grad_norm) = optim.step(lr, policy, grads);
        policy = next;
        step += 1;
        // The label log says which run trained on each person's decision, and at which step.
        let trained: Vec<(u64, String)> = sources.into_iter().flatten().collect();
        if let Some(store) = label_store.as_mut()
            && !trained.is_empty()
            && let Err(e) = store
                .note_trained(&ctx.id, step, &trained)
                .and_then(|()| store.export().map(|_| ()))
        {
            ctx.log(LogLevel::Warn, format!("noting trained labels: {e}"));
        }

        let mut values = stats.metrics("", false);
        values.extend(std::mem::take(&mut pending_values));
        values.insert("beta".into(), o.beta);
        values.insert("num_tokens".into(), num_tokens as f64);
        values.insert("learning_rate".into(), lr);
        values.insert("grad_norm".into(), grad_norm as f64);
        values.insert("labels/batch".into(), take as f64);
        values.insert("labels/judge".into(), labelled_by_judge as f64);
        values.insert("labels/human".into(), labelled_by_people as f64);
        values.insert("labels/pending".into(), waiting.len() as f64);
        values.insert("labels/ready".into(), ready.len() as f64);
        if judge.is_some() {
            if let Some(c) = judge_stats.consistency() {
                values.insert("judge/consistency".into(), c);
            }
            if let Some(f) = judge_stats.first_position_rate() {
                values.insert("judge/first_position_rate".into(), f);
            }
            values.insert("judge/failures".into(), judge_stats.failed as f64);
        }
        values.insert("step_time".into(), started.elapsed().as_secs_f64());
        if train_cfg.eval_steps > 0
            && step % train_cfg.eval_steps == 0
            && !eval.is_empty()
            && !truth.is_empty()
        {
            values.extend(evaluate(
                &model::lora::for_generation(&policy),
                &eval,
                &mut truth,
                &greedy_params,
                &tokenizer,
                &model_cfg,
                cfg.train.num_eval_generations,
            )?);
        }
        ctx.metrics(step, values);
        saver.after_step(
            &policy,
            ctx,
            step,
            train_cfg,
            (&sampler, &optim, num_tokens),
        )?;
    }
    saver.save(&policy, ctx, step, true, (&sampler, &optim, num_tokens))?;
    Ok(RunStatus::Finished)
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
