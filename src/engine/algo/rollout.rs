//! What every on-policy method does with prompts and completions: read prompt files, sample
//! completions from the policy, score them with the run's reward sources, DAPO's dynamic
//! sampling, and held-out evaluation with mean@k and pass@k.

use std::collections::BTreeMap;

use super::TrainError;
use crate::engine::data::{self, Example, Prompt};
use crate::engine::events::SampleRecord;
use crate::engine::model::tokenizer::{ChatMessage, Tokenizer};
use crate::engine::model::{CausalLm, ModelConfig};
use crate::engine::reward::{Completion, RewardSource};
use crate::engine::sample::{self, FinishReason, SamplingParams};

/// Eval prompts decoded together.
const EVAL_BATCH: usize = 64;

/// A prompt with what the checkers and the demonstration term need.
#[derive(Clone, Debug)]
pub struct PromptItem {
    pub text: String,
    pub ids: Vec<u32>,
    pub answer: Option<String>,
    /// Tokens of a reference completion, for the demonstration term.
    pub demo: Option<Vec<u32>>,
}

/// Reads a prompt-only (or prompt+completion) JSONL file into tokenised prompts. A row's
/// demonstration is its `completion`, or else its `answer` followed by `answer_end` (the
/// first stop string, so the demonstration also teaches where to stop).
pub fn load_prompts(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    chat: bool,
    answer_end: &str,
) -> Result<Vec<PromptItem>, TrainError> {
    let mut items = Vec::new();
    for (i, ex) in data::read_jsonl(path)?.into_iter().enumerate() {
        let (prompt, answer, demo_text) = match ex {
            Example::Prompt {
                prompt,
                reference,
                answer,
            } => (prompt, answer.or(reference.clone()), reference),
            Example::PromptCompletion {
                prompt,
                completion: Prompt::Text(c),
            } => (prompt, Some(c.trim().to_string()), Some(c)),
            other => {
                return Err(TrainError::Invalid(format!(
                    "{}: example {}: GRPO needs `prompt` rows (optionally with `answer` or \
                     `completion`); found a `{}` example",
                    path.display(),
                    i + 1,
                    other.kind()
                )));
            }
        };
        let text = render_prompt(&prompt, tokenizer, chat)?;
        let ids = tokenizer.encode(&text, !chat)?;
        let demo_text = demo_text.or_else(|| answer.as_ref().map(|a| format!("{a}{answer_end}")));
        let demo = match demo_text {
            Some(d) => Some(tokenizer.encode(&d, false)?),
            None => None,
        };
        items.push(PromptItem {
            text: prompt_display(&prompt),
            ids,
            answer,
            demo,
        });
    }
    if items.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no prompts",
            path.display()
        )));
    }
    Ok(items)
}

fn prompt_display(p: &Prompt) -> String {
    match p {
        Prompt::Text(t) => t.clone(),
        Prompt::Messages(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
    }
}

fn render_prompt(p: &Prompt, tokenizer: &Tokenizer, chat: bool) -> Result<String, TrainError> {
    Ok(match (p, chat) {
        (Prompt::Text(t), false) => t.clone(),
        (Prompt::Text(t), true) => tokenizer.apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: t.clone(),
            }],
            true,
        )?,
        (Prompt::Messages(m), _) => tokenizer.apply_chat_template(m, true)?,
    })
}

/// The policy's completions for a set of prompts, cut at the first stop string.
pub struct Rollout {
    pub prompt_index: Vec<usize>,
    pub tokens: Vec<Vec<u32>>,
    pub texts: Vec<String>,
    pub finish: Vec<FinishReason>,
}

impl Rollout {
    /// Each completion's prompt tokens and its own tokens, row by row, as
    /// [`SeqBatch::new`](super::sequences::SeqBatch::new) takes them.
    pub fn rows<'a>(&'a self, prompts: &[&'a PromptItem]) -> (Vec<&'a [u32]>, Vec<&'a [u32]>) {
        let prompt_rows = self
            .prompt_index
            .iter()
            .map(|&i| prompts[i].ids.as_slice())
            .collect();
        (prompt_rows, self.tokens.iter().map(Vec::as_slice).collect())
    }
}

/// What a step trains on: its prompts, their completions and rewards, and how many prompts
/// were sampled to get them.
pub struct Sampled<'a> {
    pub prompts: Vec<&'a PromptItem>,
    pub rollout: Rollout,
    pub rewards: Rewards,
    pub drawn: usize,
    pub rounds: usize,
}

impl<'a> Sampled<'a> {
    /// Adds one prompt's group of completions (rows `rows` of a round).
    fn push_group(
        &mut self,
        prompt: &'a PromptItem,
        ro: &Rollout,
        rw: &Rewards,
        rows: std::ops::Range<usize>,
    ) {
        let p = self.prompts.len();
        self.prompts.push(prompt);
        for i in rows {
            self.rollout.prompt_index.push(p);
            self.rollout.tokens.push(ro.tokens[i].clone());
            self.rollout.texts.push(ro.texts[i].clone());
            self.rollout.finish.push(ro.finish[i]);
            self.rewards.total.push(rw.total[i]);
            for (name, values) in &rw.per_source {
                self.rewards
                    .per_source
                    .entry(name.clone())
                    .or_default()
                    .push(values[i]);
            }
        }
    }
}

/// DAPO's dynamic sampling (Yu et al. 2025; verl `filter_groups`): a group whose rewards are
/// all equal teaches nothing (its advantages are 0), so it is dropped and more prompts are
/// drawn (`draw(n)`) and generated until `first.len()` groups with a reward spread are in hand,
/// for at most `max_rounds` rounds; the last round fills what is missing whatever the spread.
/// `max_rounds = 1` keeps the first round as it is. `generate(prompts, round)` samples and
/// scores `group` completions per prompt.
pub fn sample_groups<'a>(
    first: Vec<&'a PromptItem>,
    group: usize,
    max_rounds: usize,
    mut draw: impl FnMut(usize) -> Vec<&'a PromptItem>,
    mut generate: impl FnMut(&[&'a PromptItem], usize) -> Result<(Rollout, Rewards), TrainError>,
) -> Result<Sampled<'a>, TrainError> {
    let want = first.len();
    let mut out = Sampled {
        prompts: Vec::with_capacity(want),
        rollout: Rollout {
            prompt_index: Vec::new(),
            tokens: Vec::new(),
            texts: Vec::new(),
            finish: Vec::new(),
        },
        rewards: Rewards::default(),
        drawn: 0,
        rounds: 0,
    };
    let mut batch = first;
    loop {
        out.rounds += 1;
        out.drawn += batch.len();
        let (ro, rw) = generate(&batch, out.rounds - 1)?;
        let last = out.rounds >= max_rounds.max(1);
        for (k, prompt) in batch.iter().enumerate() {
            if out.prompts.len() >= want {
                break;
            }
            let rows = k * group..(k + 1) * group;
            let r = &rw.total[rows.clone()];
            let spread = r.iter().any(|x| (x - r[0]).abs() > 1e-6);
            if spread || last {
                out.push_group(prompt, &ro, &rw, rows);
            }
        }
        if out.prompts.len() >= want || last {
            return Ok(out);
        }
        batch = draw(want - out.prompts.len());
    }
}

/// Generates `per_prompt` completions for each prompt with a no-grad copy of the policy.
pub fn rollout(
    policy: &CausalLm,
    prompts: &[&PromptItem],
    per_prompt: usize,
    params: &SamplingParams,
    tokenizer: &Tokenizer,
    config: &ModelConfig,
) -> Result<Rollout, TrainError> {
    let mut rows = Vec::with_capacity(prompts.len() * per_prompt);
    let mut prompt_index = Vec::with_capacity(rows.capacity());
    for (i, p) in prompts.iter().enumerate() {
        for _ in 0..per_prompt {
            rows.push(p.ids.clone());
            prompt_index.push(i);
        }
    }
    let mut eos = tokenizer.eos_ids().to_vec();
    eos.extend(config.eos_ids());
    let pad = tokenizer.pad_id().or(eos.first().copied()).unwrap_or(0);
    let gens = sample::generate(
        policy,
        &rows,
        params,
        &eos,
        pad,
        Some(tokenizer),
        config.max_position_embeddings,
    );
    let mut tokens = Vec::with_capacity(gens.len());
    let mut texts = Vec::with_capacity(gens.len());
    let mut finish = Vec::with_capacity(gens.len());
    for g in gens {
        let mut text = tokenizer.decode(&g.tokens, true)?;
        for s in &params.stop_strings {
            if let Some(i) = text.find(s.as_str()) {
                text.truncate(i);
            }
        }
        texts.push(text);
        tokens.push(g.tokens);
        finish.push(g.finish);
    }
    Ok(Rollout {
        prompt_index,
        tokens,
        texts,
        finish,
    })
}

/// Rewards per source and their weighted total for a rollout.
#[derive(Default)]
pub struct Rewards {
    pub total: Vec<f32>,
    pub per_source: BTreeMap<String, Vec<f32>>,
}

pub fn compute_rewards(
    sources: &mut [(Box<dyn RewardSource>, f32)],
    prompts: &[&PromptItem],
    rollout: &Rollout,
) -> Result<Rewards, TrainError> {
    let batch: Vec<Completion> = rollout
        .texts
        .iter()
        .zip(&rollout.prompt_index)
        .map(|(c, &i)| Completion {
            prompt: &prompts[i].text,
            completion: c,
            answer: prompts[i].answer.as_deref(),
        })
        .collect();
    let mut total = vec![0.0; batch.len()];
    let mut per_source = BTreeMap::new();
    for (source, weight) in sources.iter_mut() {
        let values = source
            .score(&batch)
            .map_err(|e| TrainError::Invalid(format!("reward `{}`: {e}", source.name())))?;
        for (t, v) in total.iter_mut().zip(&values) {
            *t += *weight * v;
        }
        per_source.insert(source.name().to_string(), values);
    }
    Ok(Rewards { total, per_source })
}

/// Held-out evaluation: `generations` completions per prompt (1: greedy decoding; more:
/// sampled at the training temperature with a fixed seed), scored by the run's reward
/// sources. Returns [`eval_metrics`].
pub fn evaluate(
    policy: &CausalLm,
    prompts: &[PromptItem],
    sources: &mut [(Box<dyn RewardSource>, f32)],
    params: &SamplingParams,
    tokenizer: &Tokenizer,
    config: &ModelConfig,
    generations: usize,
) -> Result<BTreeMap<String, f64>, TrainError> {
    let k = generations.max(1);
    let eval_params = if k == 1 {
        SamplingParams {
            temperature: 0.0,
            ..params.clone()
        }
    } else {
        params.clone()
    };
    let mut all = Rewards::default();
    for chunk in prompts.chunks((EVAL_BATCH / k).max(1)) {
        let refs: Vec<&PromptItem> = chunk.iter().collect();
        let r = rollout(policy, &refs, k, &eval_params, tokenizer, config)?;
        let rewards = compute_rewards(sources, &refs, &r)?;
        all.total.extend(rewards.total);
        for (name, values) in rewards.per_source {
            all.per_source.entry(name).or_default().extend(values);
        }
    }
    Ok(eval_metrics(&all, k))
}

/// Held-out metrics from `k` scored completions per prompt (rows grouped by prompt): each
/// source's and the total's mean (`eval/rewards/<source>/mean`, `eval/reward`) and, with
/// `k > 1`, `mean@k` and `pass@k`: the share of prompts with at least one completion that
/// scores full marks (1) on that source, as for verifiable rewards such as exact match.
pub fn eval_metrics(rewards: &Rewards, k: usize) -> BTreeMap<String, f64> {
    let k = k.max(1);
    let prompts = (rewards.total.len() / k).max(1) as f64;
    let mut out = BTreeMap::new();
    for (name, values) in &rewards.per_source {
        let mean = values.iter().map(|&x| x as f64).sum::<f64>() / values.len().max(1) as f64;
        out.insert(format!("eval/rewards/{name}/mean"), mean);
        if k > 1 {
            out.insert(format!("eval/rewards/{name}/mean@{k}"), mean);
            let passed = values
                .chunks(k)
                .filter(|g| g.iter().any(|&x| x >= 1.0 - 1e-6))
                .count();
            out.insert(
                format!("eval/rewards/{name}/pass@{k}"),
                passed as f64 / prompts,
            );
        }
    }
    let total = rewards.total.iter().map(|&x| x as f64).sum::<f64>();
    out.insert(
        "eval/reward".into(),
        total / rewards.total.len().max(1) as f64,
    );
    out
}

pub fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

/// Sample standard deviation (n − 1), as `torch.std`.
pub fn std(v: &[f32]) -> f64 {
    let m = mean(v);
    let n = v.len();
    if n < 2 {
        return 0.0;
    }
    (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
}

/// Each reward source's mean and standard deviation over a rollout, under TRL's names
/// (`rewards/<name>/mean`, `rewards/<name>/std`).
pub fn reward_metrics(rewards: &Rewards, values: &mut BTreeMap<String, f64>) {
    for (name, v) in &rewards.per_source {
        values.insert(format!("rewards/{name}/mean"), mean(v));
        values.insert(format!("rewards/{name}/std"), std(v));
    }
}

/// The first `limit` completions of a rollout as the Samples pane shows them, with each
/// source's reward and, where the method has one, the advantage.
pub fn sample_records(
    step: usize,
    prompts: &[&PromptItem],
    rollout: &Rollout,
    rewards: &Rewards,
    advantages: Option<&[f32]>,
    limit: usize,
) -> Vec<SampleRecord> {
    (0..rollout.texts.len().min(limit))
        .map(|i| SampleRecord {
            step,
            prompt: prompts[rollout.prompt_index[i]].text.clone(),
            completion: rollout.texts[i].clone(),
            rewards: rewards
                .per_source
                .iter()
                .map(|(k, v)| (k.clone(), v[i] as f64))
                .collect(),
            advantage: advantages.map(|a| a[i] as f64),
        })
        .collect()
}

/// Held-out evaluation as a run configures it: the eval prompts, the sampling settings
/// (greedy unless `generations > 1`) and the reward sources that score them.
pub struct Evaluator {
    pub prompts: Vec<PromptItem>,
    pub params: SamplingParams,
    pub generations: usize,
}

impl Evaluator {
    /// [`evaluate`] on the policy as it is now; empty when there is nothing to evaluate.
    pub fn run(
        &self,
        policy: &CausalLm,
        sources: &mut [(Box<dyn RewardSource>, f32)],
        tokenizer: &Tokenizer,
        config: &ModelConfig,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        if self.prompts.is_empty() || sources.is_empty() {
            return Ok(BTreeMap::new());
        }
        evaluate(
            &crate::engine::model::lora::for_generation(policy),
            &self.prompts,
            sources,
            &self.params,
            tokenizer,
            config,
            self.generations,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> PromptItem {
        PromptItem {
            text: format!("p{n}"),
            ids: vec![n as u32],
            answer: None,
            demo: None,
        }
    }

    /// A fake generator: prompt `pN` gets rewards all equal when N is even, spread when odd.
    fn fake(batch: &[&PromptItem], _round: usize) -> Result<(Rollout, Rewards), TrainError> {
        let mut ro = Rollout {
            prompt_index: Vec::new(),
            tokens: Vec::new(),
            texts: Vec::new(),
            finish: Vec::new(),
        };
        let mut total = Vec::new();
        for (k, p) in batch.iter().enumerate() {
            let n = p.ids[0] as usize;
            for j in 0..2 {
                ro.prompt_index.push(k);
                ro.tokens.push(vec![j]);
                ro.texts.push(format!("{n}/{j}"));
                ro.finish.push(FinishReason::Eos);
                total.push(if n % 2 == 1 { j as f32 } else { 1.0 });
            }
        }
        let per_source = BTreeMap::from([("r".to_string(), total.clone())]);
        Ok((ro, Rewards { total, per_source }))
    }

    #[test]
    fn dynamic_sampling_keeps_groups_with_a_spread_and_draws_more() {
        let items: Vec<PromptItem> = (0..20).map(item).collect();
        let mut next = 4;
        let first: Vec<&PromptItem> = items[0..4].iter().collect();
        // Round 1: p0..p3, two with a spread (p1, p3); round 2 draws 2 more: p4, p5 -> p5.
        // Round 3 (the last) draws 1 and keeps it whatever its spread: p6.
        let s = sample_groups(
            first,
            2,
            3,
            |n| {
                let out = items[next..next + n].iter().collect();
                next += n;
                out
            },
            fake,
        )
        .unwrap();
        let kept: Vec<&str> = s.prompts.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(kept, ["p1", "p3", "p5", "p6"]);
        assert_eq!((s.drawn, s.rounds), (7, 3));
        assert_eq!(s.rollout.texts.len(), 8);
        assert_eq!(s.rollout.prompt_index, [0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(s.rewards.per_source["r"], s.rewards.total);
        // Off (one round): the first batch as it is.
        let first: Vec<&PromptItem> = items[0..4].iter().collect();
        let s = sample_groups(first, 2, 1, |_| Vec::new(), fake).unwrap();
        assert_eq!(s.prompts.len(), 4);
        assert_eq!((s.drawn, s.rounds), (4, 1));
    }

    /// Three prompts, two completions each: exact match 1/0, 0/0, 1/1 gives mean 0.5 and
    /// pass@2 = 2/3; a source that never reaches 1 passes nothing.
    #[test]
    fn eval_metrics_give_mean_and_pass_at_k() {
        let em = vec![1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        let fmt = vec![0.5; 6];
        let rewards = Rewards {
            total: em.iter().zip(&fmt).map(|(a, b)| a + 0.1 * b).collect(),
            per_source: BTreeMap::from([
                ("exact_match".to_string(), em),
                ("format".to_string(), fmt),
            ]),
        };
        let m = eval_metrics(&rewards, 2);
        assert!((m["eval/rewards/exact_match/mean"] - 0.5).abs() < 1e-9);
        assert!((m["eval/rewards/exact_match/mean@2"] - 0.5).abs() < 1e-9);
        assert!((m["eval/rewards/exact_match/pass@2"] - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(m["eval/rewards/format/pass@2"], 0.0);
        assert!((m["eval/reward"] - 0.55).abs() < 1e-6);
        // One greedy completion per prompt: means only, as before.
        assert!(!eval_metrics(&rewards, 1).keys().any(|k| k.contains('@')));
    }
}
