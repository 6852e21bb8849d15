//! Several sources combined into one reward, keeping each source's scores for logging.

use std::collections::BTreeMap;

use super::{Completion, RewardError, RewardSource, WeightedSources};

/// `reward = Σ weight_i · score_i` over its sources, like TRL's `reward_weights`. Each
/// source's raw scores are kept in the [`RewardBreakdown`] for `rewards/<name>/mean`.
pub struct WeightedSum {
    sources: WeightedSources,
}

/// The scores of one batch: the weighted total and each source's unweighted values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RewardBreakdown {
    pub total: Vec<f32>,
    pub per_source: BTreeMap<String, Vec<f32>>,
}

impl WeightedSum {
    /// Sources with their weights (as [`super::build_all`] returns them). Names must be unique.
    pub fn new(sources: WeightedSources) -> Result<Self, RewardError> {
        for (i, (source, _)) in sources.iter().enumerate() {
            if sources[..i].iter().any(|(s, _)| s.name() == source.name()) {
                return Err(RewardError::DuplicateName(source.name().to_string()));
            }
        }
        Ok(Self { sources })
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Source names and weights, in config order.
    pub fn weights(&self) -> Vec<(&str, f32)> {
        self.sources.iter().map(|(s, w)| (s.name(), *w)).collect()
    }

    /// Scores the batch with every source. A failing source fails the batch, with its name.
    pub fn score_all(&mut self, batch: &[Completion]) -> Result<RewardBreakdown, RewardError> {
        let mut out = RewardBreakdown {
            total: vec![0.0; batch.len()],
            per_source: BTreeMap::new(),
        };
        for (source, weight) in &mut self.sources {
            let name = source.name().to_string();
            let values = source.score(batch).map_err(|e| RewardError::Source {
                name: name.clone(),
                source: Box::new(e),
            })?;
            if values.len() != batch.len() {
                return Err(RewardError::WrongLength {
                    source_name: name,
                    expected: batch.len(),
                    got: values.len(),
                });
            }
            for (t, v) in out.total.iter_mut().zip(&values) {
                *t += *weight * v;
            }
            out.per_source.insert(name, values);
        }
        Ok(out)
    }
}

impl RewardSource for WeightedSum {
    fn name(&self) -> &str {
        "reward"
    }

    fn score(&mut self, batch: &[Completion]) -> Result<Vec<f32>, RewardError> {
        Ok(self.score_all(batch)?.total)
    }
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

/// Sample standard deviation (n − 1), as torch's `std` that TRL logs; 0 below two values.
fn std(v: &[f32]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    let ss: f64 = v.iter().map(|&x| (x as f64 - m).powi(2)).sum();
    (ss / (v.len() - 1) as f64).sqrt()
}

impl RewardBreakdown {
    /// TRL's names: `reward` (mean total), `rewards/<name>/mean` and `rewards/<name>/std`.
    /// Group statistics (`reward_std`, `frac_reward_zero_std`) belong to the trainer, which
    /// knows the groups.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        out.insert("reward".to_string(), mean(&self.total));
        for (name, values) in &self.per_source {
            out.insert(format!("rewards/{name}/mean"), mean(values));
            out.insert(format!("rewards/{name}/std"), std(values));
        }
        out
    }

    /// Completion `i`'s score per source, for a [`SampleRecord`](crate::engine::events::SampleRecord).
    pub fn sample(&self, i: usize) -> BTreeMap<String, f64> {
        self.per_source
            .iter()
            .filter_map(|(name, values)| Some((name.clone(), *values.get(i)? as f64)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::reward::{ExactMatch, FormatReward};
    use crate::engine::tasks::AnswerKind;

    struct Fixed(&'static str, Vec<f32>);
    impl RewardSource for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn score(&mut self, _: &[Completion]) -> Result<Vec<f32>, RewardError> {
            Ok(self.1.clone())
        }
    }

    fn batch() -> Vec<Completion<'static>> {
        ["47", "48", "forty", "47 and more"]
            .into_iter()
            .map(|completion| Completion {
                prompt: "12+35=",
                completion,
                answer: Some("47"),
            })
            .collect()
    }

    #[test]
    fn weights_combine_and_sources_are_kept() {
        let mut sum = WeightedSum::new(vec![
            (Box::new(ExactMatch::new(AnswerKind::Auto)), 1.0),
            (Box::new(FormatReward::new(AnswerKind::Auto, None)), 0.5),
        ])
        .expect("unique names");
        assert_eq!(sum.weights(), [("exact_match", 1.0), ("format", 0.5)]);
        let got = sum.score_all(&batch()).expect("scores");
        assert_eq!(got.per_source["exact_match"], [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(got.per_source["format"], [1.0, 1.0, 0.0, 0.0]);
        assert_eq!(got.total, [1.5, 0.5, 0.0, 0.0]);

        let m = got.metrics();
        assert_eq!(m["reward"], 0.5);
        assert_eq!(m["rewards/exact_match/mean"], 0.25);
        assert_eq!(m["rewards/format/mean"], 0.5);
        assert!((m["rewards/format/std"] - (1.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert_eq!(m.len(), 5);
        let s = got.sample(1);
        assert_eq!(s["exact_match"], 0.0);
        assert_eq!(s["format"], 1.0);
        assert!(got.sample(9).is_empty());

        assert_eq!(sum.score(&batch()).expect("scores"), got.total);
        assert_eq!(sum.name(), "reward");
    }

    #[test]
    fn errors_name_the_source() {
        let dup = WeightedSum::new(vec![
            (Box::new(Fixed("a", vec![])), 1.0),
            (Box::new(Fixed("a", vec![])), 1.0),
        ]);
        assert!(matches!(dup, Err(RewardError::DuplicateName(n)) if n == "a"));

        let mut short =
            WeightedSum::new(vec![(Box::new(Fixed("short", vec![1.0])), 1.0)]).expect("valid");
        let err = short.score_all(&batch()).unwrap_err().to_string();
        assert_eq!(err, "`short` returned 1 scores for 4 completions");

        let mut missing =
            WeightedSum::new(vec![(Box::new(ExactMatch::new(AnswerKind::Auto)), 1.0)])
                .expect("valid");
        let no_answer = [Completion {
            prompt: "p",
            completion: "c",
            answer: None,
        }];
        let err = missing.score_all(&no_answer).unwrap_err().to_string();
        assert!(err.starts_with("reward `exact_match`: "), "{err}");

        let mut empty = WeightedSum::new(vec![]).expect("valid");
        assert!(empty.is_empty());
        assert_eq!(empty.score(&batch()).expect("scores"), [0.0; 4]);
    }
}
