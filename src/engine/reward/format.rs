//! The format checker: rewards answers of the right shape whether or not they are correct,
//! which gives GRPO a signal while accuracy is still near zero (TinyZero's 0.1 format score).

use super::{Completion, RewardError, RewardSource};
use crate::engine::tasks::{AnswerKind, ends_with_final_answer};

/// 1.0 when the completion's first line (everything before the first `\n`, or all of it) is
///
/// 1. well formed once trimmed: non-empty, and for `integer` an optional `-` then digits only,
///    for `word` lowercase ASCII letters only, for `countdown` a parseable expression, for
///    `text` anything; `auto` guesses the kind from each completion's answer; and
/// 2. short: at most `max_chars` characters, counting surrounding spaces. The trainer cuts
///    completions at the stop string, so this is also how a completion that ran to
///    `max_completion_length` without stopping is caught (keep that limit above `max_chars`).
///    The default is the task's longest answer plus 2 when the task is known, else
///    [`AnswerKind::default_max_chars`] (8 for integers, 16 for words).
///
/// Otherwise 0.0. Scale it with the source's `weight`.
///
/// `numeric` (reasoning completions, e.g. the `word_problems` task) has no answer line: the
/// completion earns 1.0 when it ends its reasoning with an explicit final answer, i.e. its last
/// non-blank line holds `#### <number>` (GSM8K's marker; only `$`, spaces, `*` or a final `.`
/// around the number) or `\boxed{<number>}` (see [`ends_with_final_answer`]). A completion
/// cut off by `max_completion_length` rarely ends that way. `max_chars` then bounds the
/// answer's text only (default 24), never the reasoning.
#[derive(Clone, Debug)]
pub struct FormatReward {
    name: String,
    kind: AnswerKind,
    max_chars: Option<usize>,
}

impl FormatReward {
    pub fn new(kind: AnswerKind, max_chars: Option<usize>) -> Self {
        Self {
            name: "format".into(),
            kind,
            max_chars,
        }
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    fn well_formed(&self, c: &Completion) -> bool {
        let kind = self.kind.resolve(c.answer);
        let max_chars = self.max_chars.unwrap_or_else(|| kind.default_max_chars());
        if kind == AnswerKind::Numeric {
            return ends_with_final_answer(c.completion, Some(max_chars));
        }
        let first = c.completion.split('\n').next().unwrap_or("");
        let first = first.strip_suffix('\r').unwrap_or(first);
        first.chars().count() <= max_chars && kind.is_well_formed(first.trim())
    }
}

impl RewardSource for FormatReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&mut self, batch: &[Completion]) -> Result<Vec<f32>, RewardError> {
        Ok(batch
            .iter()
            .map(|c| if self.well_formed(c) { 1.0 } else { 0.0 })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(reward: &mut FormatReward, completions: &[&str], answer: Option<&str>) -> Vec<f32> {
        let batch: Vec<Completion> = completions
            .iter()
            .map(|c| Completion {
                prompt: "p",
                completion: c,
                answer,
            })
            .collect();
        reward.score(&batch).expect("scores")
    }

    #[test]
    fn integers() {
        let mut r = FormatReward::new(AnswerKind::Integer, Some(5));
        let got = score(
            &mut r,
            &[
                "48",
                " 48 ",
                "48\nHAMLET:",
                "48\r\n",
                "123456",
                "4 8",
                "4a",
                "",
                "\n48",
                "-3",
                "  1234",
            ],
            Some("47"),
        );
        assert_eq!(got, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn auto_follows_each_answer() {
        let mut r = FormatReward::new(AnswerKind::Auto, None);
        assert_eq!(score(&mut r, &["12", "ab"], Some("47")), [1.0, 0.0]);
        assert_eq!(score(&mut r, &["12", "ab"], Some("enots")), [0.0, 1.0]);
        assert_eq!(
            score(&mut r, &["123456789"], Some("47")),
            [0.0],
            "8 chars max"
        );
        assert_eq!(score(&mut r, &["Any text.", ""], None), [1.0, 0.0]);
    }

    /// Reasoning completions as SmolLM2-style chat models write them.
    #[test]
    fn numeric_wants_an_explicit_final_answer_at_the_end() {
        let mut r = FormatReward::new(AnswerKind::Numeric, None);
        let got = score(
            &mut r,
            &[
                "Ava pays 3 x $4 = $12, so her change is $20 - $12 = $8.\n#### 8",
                "3 x 4 = 12\n20 - 12 = 8\n\n#### $8.00.\n",
                "So the change is $\\boxed{8}$.",
                "#### 8\nI hope this helps!",
                "Her change is $8.",
                "#### eight",
                "Step 1: 3 x 4 = 12. Step 2: 20 -",
                "",
            ],
            Some("8"),
        );
        assert_eq!(got, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Long reasoning is fine; max_chars bounds the answer after `####` only.
        let long = format!("{}\n#### 123456", "Let me think. ".repeat(40));
        assert_eq!(score(&mut r, &[&long], None), [1.0]);
        let mut short = FormatReward::new(AnswerKind::Numeric, Some(3));
        assert_eq!(
            score(&mut short, &[&long, "ok\n#### 123"], None),
            [0.0, 1.0]
        );
        // Auto never means numeric: a reasoning completion fails the first-line rule.
        let mut auto = FormatReward::new(AnswerKind::Auto, None);
        assert_eq!(
            score(&mut auto, &["3 x 4 = 12\n#### 12"], Some("12")),
            [0.0]
        );
    }

    #[test]
    fn words_and_countdown() {
        let mut r = FormatReward::new(AnswerKind::Word, None);
        assert_eq!(
            score(&mut r, &["enots", "Enots", "en ots", "enots!"], None),
            [1.0, 0.0, 0.0, 0.0]
        );
        let mut r = FormatReward::new(AnswerKind::Countdown, None).named("shape");
        assert_eq!(r.name(), "shape");
        assert_eq!(
            score(&mut r, &["(3+7)*25", "3+", "x", "1 2"], None),
            [1.0, 0.0, 0.0, 0.0]
        );
    }
}
