//! The answer checker: TRL's `accuracy_reward` for verifiable tasks.

use super::{Completion, RewardError, RewardSource};
use crate::engine::tasks::AnswerKind;

/// 1.0 when the completion's answer line (its first line, trimmed) is correct, else 0.0.
///
/// Correct means, by [`AnswerKind`]: `integer` — equal as integers when both parse (`047`
/// matches `47`), else equal as strings; `word` and `text` — equal to the trimmed answer;
/// `countdown` — a valid solution of the prompt (the answer column is not needed); `auto` —
/// the kind guessed from each answer (never `numeric`). Anything after the first newline is
/// ignored, so `"47\nfoo"` is correct for `47`, while `"\n47"` (empty first line) is not.
///
/// `numeric` is the exception: for reasoning completions, the final answer is read from the
/// whole completion (`#### 42`, else the last `\boxed{42}`, else the last number; see
/// [`crate::engine::tasks::extract_final_answer`]) and compared with the answer as an exact
/// number (`$1,234.00` matches `1234`).
///
/// Every completion must carry an answer (except for `countdown`): a prompt set without
/// ground truth is a configuration mistake, reported as [`RewardError::MissingAnswer`].
#[derive(Clone, Debug)]
pub struct ExactMatch {
    name: String,
    kind: AnswerKind,
}

impl ExactMatch {
    pub fn new(kind: AnswerKind) -> Self {
        Self {
            name: "exact_match".into(),
            kind,
        }
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl RewardSource for ExactMatch {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&mut self, batch: &[Completion]) -> Result<Vec<f32>, RewardError> {
        batch
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let answer = match (c.answer, self.kind) {
                    (Some(answer), _) => answer,
                    (None, AnswerKind::Countdown) => "",
                    (None, _) => {
                        return Err(RewardError::MissingAnswer {
                            source_name: self.name.clone(),
                            index,
                        });
                    }
                };
                let correct = self.kind.is_correct(c.prompt, c.completion, answer);
                Ok(if correct { 1.0 } else { 0.0 })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(kind: AnswerKind, prompt: &str, completions: &[&str], answer: &str) -> Vec<f32> {
        let batch: Vec<Completion> = completions
            .iter()
            .map(|c| Completion {
                prompt,
                completion: c,
                answer: Some(answer),
            })
            .collect();
        ExactMatch::new(kind).score(&batch).expect("scores")
    }

    #[test]
    fn arithmetic_edge_cases() {
        let got = score(
            AnswerKind::Auto,
            "12+35=",
            &[
                "47",
                "  47",
                "47  ",
                "47\n",
                "47\n12+1=13",
                "047",
                "48",
                "47abc",
                "4 7",
                "",
                "\n47",
                "forty-seven",
                "-47",
                "47.0",
            ],
            "47",
        );
        assert_eq!(
            got,
            [
                1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
            ]
        );
    }

    #[test]
    fn words_compare_exactly() {
        let got = score(
            AnswerKind::Word,
            "reverse: stone=",
            &["enots", " enots\n", "Enots", "enot", "enots s", ""],
            "enots",
        );
        assert_eq!(got, [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    /// Completions in the shape the `word_problems` prompts ask for.
    #[test]
    fn numeric_reads_the_final_answer_of_the_reasoning() {
        let prompt = "Ava buys 3 pens for $4 each and pays with a $20 bill. How many dollars of \
                      change does she get?";
        let got = score(
            AnswerKind::Numeric,
            prompt,
            &[
                "3 pens cost 3 x $4 = $12.\nHer change is $20 - $12 = $8.\n#### 8",
                "The pens cost $12, so the change is $8.\n#### $8.00",
                "The change is 20 - 12 = 8 dollars.",
                "The answer is $\\boxed{8}$.",
                "#### 7\nWait, 20 - 12 = 8.\n#### 8",
                "3 x 4 = 12\n#### 12\nSo she gets 8 back.",
                "3 x 4 = 12, 20 - 12 = 9.\n#### 9",
                "I cannot solve this.",
                "",
            ],
            "8",
        );
        assert_eq!(got, [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let big = score(
            AnswerKind::Numeric,
            "p",
            &["#### 1,234", "1234.0", "#### 1 234", "#### 12,34"],
            "1234",
        );
        // A space is not a thousands separator: `1 234` reads as 1.
        assert_eq!(big, [1.0, 1.0, 0.0, 0.0]);
        // A non-numeric ground truth matches nothing.
        assert_eq!(score(AnswerKind::Numeric, "p", &["#### 8"], "eight"), [0.0]);
    }

    #[test]
    fn countdown_needs_no_answer_but_others_do() {
        let batch = [Completion {
            prompt: "countdown: 3 7 25 -> 46=",
            completion: "3*7+25\n",
            answer: None,
        }];
        let mut countdown = ExactMatch::new(AnswerKind::Countdown);
        assert_eq!(countdown.score(&batch).expect("scores"), [1.0]);

        let mut auto = ExactMatch::new(AnswerKind::Auto).named("acc");
        let err = auto.score(&batch).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`acc` needs an `answer` column; completion 0 has none"
        );
        assert_eq!(auto.score(&[]).expect("empty batch"), Vec::<f32>::new());
    }
}
