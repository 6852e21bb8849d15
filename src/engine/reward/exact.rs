//! The answer checker: TRL's `accuracy_reward` for verifiable tasks.

use super::{Completion, RewardError, RewardSource};
use crate::engine::tasks::AnswerKind;

/// 1.0 when the completion's answer line (its first line, trimmed) is correct, else 0.0.
///
/// Correct means, by [`AnswerKind`]: `integer` — equal as integers when both parse (`047`
/// matches `47`), else equal as strings; `word` and `text` — equal to the trimmed answer;
/// `countdown` — a valid solution of the prompt (the answer column is not needed); `auto` —
/// the kind guessed from each answer. Anything after the first newline is ignored, so
/// `"47\nfoo"` is correct for `47`, while `"\n47"` (empty first line) is not.
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
