//! AI judges for RLAIF: programs or models that compare two answers to one prompt under a
//! principle ("prefer the answer that is more positive") and say which is better. One trait,
//! [`Judge`], covers a local model ([`model::ModelJudge`]), any OpenAI-compatible endpoint
//! ([`openai::OpenAiJudge`]) and an external program ([`command::CommandJudge`]).
//!
//! A judge answers *ordered* comparisons ("is the first or the second answer better?").
//! [`judge_pairs`] asks each pair in both orders, so a judge that always prefers the first
//! slot cancels out: when the two orders disagree the pair counts as a tie
//! ([`Judgement::consistent`] is false).
//!
//! ```toml
//! [judge]
//! type = "model"              # model | openai | command
//! path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! principle = "Prefer the answer that is more positive and enthusiastic."
//! contrast = "Prefer the answer that is more negative."   # optional, model judges only
//!
//! # type = "openai": base_url = "http://127.0.0.1:8080/v1", model = "smollm2",
//! #   api_key_env = "OPENAI_API_KEY" (the key is read from there, never stored),
//! #   timeout_secs = 30, max_retries = 2
//! # type = "command": command = ["python3", "judge.py"], timeout_secs = 10
//! ```

pub mod command;
pub mod eval;
pub mod model;
pub mod openai;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The verdict a comparison gives, in the order the answers were shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordered {
    First,
    Second,
    Tie,
}

/// One ordered comparison to judge.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Comparison<'a> {
    pub principle: &'a str,
    pub prompt: &'a str,
    pub first: &'a str,
    pub second: &'a str,
}

/// A judge's answer to one ordered comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OrderedVerdict {
    pub verdict: Ordered,
    /// The judge's probability that the first answer is better, where it has one (a model
    /// judge's verdict-token probabilities); `None` for judges that only answer in text.
    pub p_first: Option<f64>,
}

/// The verdict on an unordered pair (answers `a` and `b`), from both orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    A,
    B,
    Tie,
}

/// What [`judge_pairs`] concludes about one pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Whether the two orders agreed (a disagreement is a tie).
    pub consistent: bool,
    /// Whether the judge chose the answer shown first in each order (for position bias):
    /// `(a-first order, b-first order)`; `None` for a tie in that order.
    pub chose_first: (Option<bool>, Option<bool>),
    /// Mean probability that `a` is better over both orders, where the judge gives one.
    pub p_a: Option<f64>,
}

#[derive(Debug, Error)]
pub enum JudgeError {
    /// The `[judge]` section is unusable as written.
    #[error("judge: {0}")]
    Config(String),
    /// A model judge could not load or run its model.
    #[error("judge model `{}`: {message}", path.display())]
    Model { path: PathBuf, message: String },
    /// An endpoint or program could not be reached or run (after retries).
    #[error("judge `{judge}`: {message}")]
    Unavailable { judge: String, message: String },
    /// Ran past its timeout.
    #[error("judge `{judge}` timed out after {secs} s")]
    Timeout { judge: String, secs: f64 },
    /// Answered, but not with a verdict; `head` quotes the start of the reply.
    #[error("judge `{judge}` gave no verdict; reply starts: {head:?}")]
    BadReply { judge: String, head: String },
}

/// Compares answers. Results are per comparison, so one bad reply costs one pair, not the batch.
pub trait Judge: Send {
    /// Shown in logs and metrics (`judge/<name>/...`).
    fn name(&self) -> &str;
    fn compare(&mut self, batch: &[Comparison]) -> Vec<Result<OrderedVerdict, JudgeError>>;
}

/// The `[judge]` section of a run config, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JudgeConfig {
    Model(ModelJudgeConfig),
    #[serde(rename = "openai")]
    OpenAi(OpenAiJudgeConfig),
    Command(CommandJudgeConfig),
}

fn default_principle() -> String {
    "Prefer the answer that is more helpful, correct and polite.".into()
}

fn ten() -> f64 {
    10.0
}

fn thirty() -> f64 {
    30.0
}

fn two() -> u32 {
    2
}

/// `type = "model"`: see [`model::ModelJudge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelJudgeConfig {
    /// A Hugging Face model folder or a `.gguf` file with a chat template.
    pub path: PathBuf,
    #[serde(default = "default_principle")]
    pub principle: String,
    /// The principle's opposite ("Prefer the review that is more negative."). When set, the
    /// judge scores each answer by how much more likely the model finds it under the principle
    /// than under this (contrastive, as RLCD does) instead of asking "1 or 2?": small models
    /// such as SmolLM2-135M judge far better this way (see [`model::ModelJudge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast: Option<String>,
}

/// `type = "openai"`: see [`openai::OpenAiJudge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiJudgeConfig {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1` (`rlft serve`).
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key (the key itself is never in a config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default = "default_principle")]
    pub principle: String,
    #[serde(default = "thirty")]
    pub timeout_secs: f64,
    /// Retries after a failed request (connection error, timeout, 429 or 5xx), with backoff.
    #[serde(default = "two")]
    pub max_retries: u32,
}

/// `type = "command"`: see [`command::CommandJudge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandJudgeConfig {
    /// Program and arguments, run without a shell.
    pub command: Vec<String>,
    #[serde(default = "default_principle")]
    pub principle: String,
    #[serde(default = "ten")]
    pub timeout_secs: f64,
}

impl JudgeConfig {
    pub fn principle(&self) -> &str {
        match self {
            JudgeConfig::Model(c) => &c.principle,
            JudgeConfig::OpenAi(c) => &c.principle,
            JudgeConfig::Command(c) => &c.principle,
        }
    }
}

/// Builds the judge a config describes. A model judge loads on `device`, its matrices
/// stored as `storage`.
pub fn build(
    cfg: &JudgeConfig,
    device: &burn::tensor::Device,
    storage: crate::engine::model::WeightDtype,
) -> Result<Box<dyn Judge>, JudgeError> {
    Ok(match cfg {
        JudgeConfig::Model(c) => Box::new(
            model::ModelJudge::load_stored(&c.path, None, device, storage)?
                .with_contrast(c.contrast.clone()),
        ),
        JudgeConfig::OpenAi(c) => Box::new(openai::OpenAiJudge::new(c)?),
        JudgeConfig::Command(c) => Box::new(command::CommandJudge::new(c)?),
    })
}

/// The judge prompt text (the user turn) for one ordered comparison. Shared by the model and
/// OpenAI judges so they are asked the same question; answers are labelled 1 and 2 because
/// small models' tokenizers have single tokens for digits.
pub fn judge_prompt(c: &Comparison) -> String {
    format!(
        "{principle}\n\nPrompt: {prompt}\n\nAnswer 1: {first}\n\nAnswer 2: {second}\n\n\
         Which answer is better? Reply with 1 or 2 only.",
        principle = c.principle.trim(),
        prompt = c.prompt.trim(),
        first = c.first.trim(),
        second = c.second.trim(),
    )
}

/// Reads a verdict from a text reply: the first `1`/`2` (or `A`/`B` as a whole word), or
/// "tie". `None` when the reply holds none of them.
pub fn parse_verdict(reply: &str) -> Option<Ordered> {
    let lower = reply.to_ascii_lowercase();
    // A bare letter ("B", "**A**") names an answer; inside a sentence "a" is an article.
    match lower.trim_matches(|c: char| !c.is_ascii_alphanumeric()) {
        "a" => return Some(Ordered::First),
        "b" => return Some(Ordered::Second),
        _ => {}
    }
    for word in lower.split(|c: char| !c.is_ascii_alphanumeric()) {
        match word {
            "1" | "first" => return Some(Ordered::First),
            "2" | "second" => return Some(Ordered::Second),
            "tie" | "equal" | "both" | "neither" => return Some(Ordered::Tie),
            _ => {}
        }
    }
    None
}

/// Judges each `(prompt, a, b)` in both orders (a first, then b first) in one batch, and
/// combines the two verdicts: agreement gives A or B, disagreement (or a tie in either order)
/// a tie. A comparison that failed fails its pair.
pub fn judge_pairs(
    judge: &mut dyn Judge,
    principle: &str,
    pairs: &[(&str, &str, &str)],
) -> Vec<Result<Judgement, JudgeError>> {
    let mut batch = Vec::with_capacity(pairs.len() * 2);
    for &(prompt, a, b) in pairs {
        batch.push(Comparison {
            principle,
            prompt,
            first: a,
            second: b,
        });
        batch.push(Comparison {
            principle,
            prompt,
            first: b,
            second: a,
        });
    }
    let mut results = judge.compare(&batch).into_iter();
    let mut out = Vec::with_capacity(pairs.len());
    for _ in pairs {
        let (Some(ab), Some(ba)) = (results.next(), results.next()) else {
            out.push(Err(JudgeError::BadReply {
                judge: judge.name().to_string(),
                head: "fewer verdicts than comparisons".into(),
            }));
            continue;
        };
        out.push(match (ab, ba) {
            (Ok(ab), Ok(ba)) => Ok(combine(ab, ba)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        });
    }
    out
}

/// Combines the a-first verdict and the b-first verdict of one pair.
pub fn combine(ab: OrderedVerdict, ba: OrderedVerdict) -> Judgement {
    // In the b-first order, "first" means b.
    let a_in_ab = match ab.verdict {
        Ordered::First => Some(true),
        Ordered::Second => Some(false),
        Ordered::Tie => None,
    };
    let a_in_ba = match ba.verdict {
        Ordered::First => Some(false),
        Ordered::Second => Some(true),
        Ordered::Tie => None,
    };
    let (verdict, consistent) = match (a_in_ab, a_in_ba) {
        (Some(true), Some(true)) => (Verdict::A, true),
        (Some(false), Some(false)) => (Verdict::B, true),
        (None, None) => (Verdict::Tie, true),
        _ => (Verdict::Tie, false),
    };
    let p_a = match (ab.p_first, ba.p_first) {
        (Some(x), Some(y)) => Some((x + (1.0 - y)) / 2.0),
        _ => None,
    };
    Judgement {
        verdict,
        consistent,
        chose_first: (a_in_ab, a_in_ba.map(|a| !a)),
        p_a,
    }
}

/// Running judge statistics over judged pairs with a known answer or a human label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeStats {
    pub judged: usize,
    pub consistent: usize,
    /// Ordered verdicts that were not ties, and how many of them chose the first slot.
    pub decisive_orders: usize,
    pub chose_first: usize,
    pub failed: usize,
}

impl JudgeStats {
    pub fn add(&mut self, j: &Judgement) {
        self.judged += 1;
        self.consistent += usize::from(j.consistent);
        for first in [j.chose_first.0, j.chose_first.1].into_iter().flatten() {
            self.decisive_orders += 1;
            self.chose_first += usize::from(first);
        }
    }

    /// Fraction of pairs whose two orders agreed.
    pub fn consistency(&self) -> Option<f64> {
        (self.judged > 0).then(|| self.consistent as f64 / self.judged as f64)
    }

    /// Fraction of decisive ordered verdicts that picked the answer shown first (0.5 = none).
    pub fn first_position_rate(&self) -> Option<f64> {
        (self.decisive_orders > 0).then(|| self.chose_first as f64 / self.decisive_orders as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ov(verdict: Ordered) -> OrderedVerdict {
        OrderedVerdict {
            verdict,
            p_first: None,
        }
    }

    #[test]
    fn both_orders_agreeing_decide_and_disagreeing_tie() {
        let j = combine(ov(Ordered::First), ov(Ordered::Second));
        assert_eq!((j.verdict, j.consistent), (Verdict::A, true));
        let j = combine(ov(Ordered::Second), ov(Ordered::First));
        assert_eq!((j.verdict, j.consistent), (Verdict::B, true));
        // Always the first slot: position bias, not a preference.
        let j = combine(ov(Ordered::First), ov(Ordered::First));
        assert_eq!((j.verdict, j.consistent), (Verdict::Tie, false));
        assert_eq!(j.chose_first, (Some(true), Some(true)));
        let j = combine(ov(Ordered::Tie), ov(Ordered::Tie));
        assert_eq!((j.verdict, j.consistent), (Verdict::Tie, true));
    }

    #[test]
    fn probabilities_average_over_orders() {
        let ab = OrderedVerdict {
            verdict: Ordered::First,
            p_first: Some(0.9),
        };
        let ba = OrderedVerdict {
            verdict: Ordered::First,
            p_first: Some(0.7),
        };
        let j = combine(ab, ba);
        assert!((j.p_a.unwrap() - 0.6).abs() < 1e-12);
        let mut s = JudgeStats::default();
        s.add(&j);
        assert_eq!(s.first_position_rate(), Some(1.0));
        assert_eq!(s.consistency(), Some(0.0));
    }

    #[test]
    fn verdicts_parse_from_replies() {
        assert_eq!(parse_verdict("2"), Some(Ordered::Second));
        assert_eq!(parse_verdict("Answer 1 is better."), Some(Ordered::First));
        assert_eq!(parse_verdict("**B**"), Some(Ordered::Second));
        assert_eq!(parse_verdict("It's a tie"), Some(Ordered::Tie));
        assert_eq!(parse_verdict("I cannot decide"), None);
    }
}
