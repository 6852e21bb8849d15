//! Measuring a judge on preference pairs with a known answer (TRL `prompt`/`chosen`/`rejected`
//! JSONL): how often it picks the chosen answer, how often the two orders agree, and how much
//! it favours the answer shown first. `rlft judge` prints these figures.

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{Judge, JudgeError, JudgeStats, Judgement, Verdict, judge_pairs};
use crate::engine::data::{self, DataError, Example, Prompt};

/// One preference pair as plain text.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// A prompt or response as the text a judge reads; a conversation becomes `role: content`
/// lines (a single message is just its content).
fn text_of(p: &Prompt) -> String {
    match p {
        Prompt::Text(t) => t.clone(),
        Prompt::Messages(m) if m.len() == 1 => m[0].content.clone(),
        Prompt::Messages(m) => m
            .iter()
            .map(|m| format!("{}: {}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Reads the preference pairs of a JSONL file; any other kind of record is an error.
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>, DataError> {
    data::read_jsonl(path)?
        .into_iter()
        .map(|ex| match ex {
            Example::Preference {
                prompt,
                chosen,
                rejected,
                ..
            } => Ok(PreferencePair {
                prompt: text_of(&prompt),
                chosen: text_of(&chosen),
                rejected: text_of(&rejected),
            }),
            other => Err(DataError::WrongKind {
                task: "judge evaluation",
                needs: "preference (`prompt`, `chosen`, `rejected`)",
                found: other.kind(),
            }),
        })
        .collect()
}

/// Which pairs show the chosen answer as `a` (random but reproducible from `seed`), so a
/// judge cannot score by always answering `a`.
pub fn chosen_as_a(n: usize, seed: u64) -> Vec<bool> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_bool(0.5)).collect()
}

/// A judge's figures on pairs with a known answer. Rates are `None` when nothing was counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JudgeEval {
    pub pairs: usize,
    /// Pairs whose comparison failed (an error instead of a verdict).
    pub failed: usize,
    /// Pairs where the verdict is the chosen answer.
    pub correct: usize,
    /// Pairs with a verdict A or B (not a tie, not failed).
    pub decisive: usize,
    pub ties: usize,
    /// `correct / pairs`: ties and failures count as wrong.
    pub accuracy: Option<f64>,
    /// `correct / decisive`.
    pub decisive_accuracy: Option<f64>,
    /// `ties / pairs`.
    pub tie_rate: Option<f64>,
    /// Fraction of judged pairs whose two orders agreed.
    pub consistency: Option<f64>,
    /// Fraction of decisive ordered verdicts that picked the answer shown first (0.5 = no
    /// position bias).
    pub first_position_rate: Option<f64>,
    /// Mean probability given to the chosen answer over both orders, where the judge gives
    /// probabilities.
    pub mean_p_chosen: Option<f64>,
    /// Fraction of pairs where that probability is above 0.5 (accuracy of the order-averaged
    /// probability, which cancels position bias instead of calling it a tie).
    pub p_accuracy: Option<f64>,
    pub seconds: f64,
}

/// The figures for `results` (one per pair, from [`judge_pairs`]) given which pairs have the
/// chosen answer as `a`.
pub fn summarize(
    results: &[Result<Judgement, JudgeError>],
    chosen_is_a: &[bool],
    seconds: f64,
) -> JudgeEval {
    assert_eq!(results.len(), chosen_is_a.len());
    let ratio = |n: usize, d: usize| (d > 0).then(|| n as f64 / d as f64);
    let mut stats = JudgeStats::default();
    let (mut failed, mut correct, mut decisive, mut ties) = (0, 0, 0, 0);
    let (mut p_sum, mut p_n, mut p_right) = (0.0, 0, 0);
    for (r, &a_is_chosen) in results.iter().zip(chosen_is_a) {
        let Ok(j) = r else {
            failed += 1;
            continue;
        };
        stats.add(j);
        match j.verdict {
            Verdict::Tie => ties += 1,
            v => {
                decisive += 1;
                correct += usize::from((v == Verdict::A) == a_is_chosen);
            }
        }
        if let Some(p_a) = j.p_a {
            let p = if a_is_chosen { p_a } else { 1.0 - p_a };
            p_sum += p;
            p_n += 1;
            p_right += usize::from(p > 0.5);
        }
    }
    let pairs = results.len();
    JudgeEval {
        pairs,
        failed,
        correct,
        decisive,
        ties,
        accuracy: ratio(correct, pairs),
        decisive_accuracy: ratio(correct, decisive),
        tie_rate: ratio(ties, pairs),
        consistency: stats.consistency(),
        first_position_rate: stats.first_position_rate(),
        mean_p_chosen: (p_n > 0).then(|| p_sum / p_n as f64),
        p_accuracy: ratio(p_right, p_n),
        seconds,
    }
}

/// Pairs judged per [`judge_pairs`] call in [`measure`] (progress granularity).
const MEASURE_CHUNK: usize = 16;

/// Judges every pair in both orders, with chosen/rejected assigned to a/b by
/// [`chosen_as_a`]`(pairs.len(), seed)`, and summarises. `progress(done, total)` is called
/// after each chunk of pairs.
pub fn measure(
    judge: &mut dyn Judge,
    principle: &str,
    pairs: &[PreferencePair],
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> (JudgeEval, Vec<Result<Judgement, JudgeError>>) {
    let started = Instant::now();
    let chosen_is_a = chosen_as_a(pairs.len(), seed);
    let shown: Vec<(&str, &str, &str)> = pairs
        .iter()
        .zip(&chosen_is_a)
        .map(|(p, &a)| {
            let (x, y) = if a {
                (&p.chosen, &p.rejected)
            } else {
                (&p.rejected, &p.chosen)
            };
            (p.prompt.as_str(), x.as_str(), y.as_str())
        })
        .collect();
    let mut results = Vec::with_capacity(pairs.len());
    for chunk in shown.chunks(MEASURE_CHUNK) {
        results.extend(judge_pairs(judge, principle, chunk));
        progress(results.len(), pairs.len());
    }
    let eval = summarize(&results, &chosen_is_a, started.elapsed().as_secs_f64());
    (eval, results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::judge::{Comparison, Ordered, OrderedVerdict, combine};

    fn j(ab: Ordered, ba: Ordered, p: Option<(f64, f64)>) -> Result<Judgement, JudgeError> {
        let (pa, pb) = p.unzip();
        Ok(combine(
            OrderedVerdict {
                verdict: ab,
                p_first: pa,
            },
            OrderedVerdict {
                verdict: ba,
                p_first: pb,
            },
        ))
    }

    #[test]
    fn figures_count_ties_and_failures_as_wrong() {
        use Ordered::*;
        let results = vec![
            j(First, Second, Some((0.9, 0.2))), // A, consistent; chosen is a: correct
            j(Second, First, Some((0.3, 0.6))), // B, consistent; chosen is b: correct
            j(First, Second, Some((0.8, 0.4))), // A; chosen is b: wrong
            j(First, First, Some((0.7, 0.6))),  // position bias: tie
            Err(JudgeError::Config("down".into())),
        ];
        let chosen_is_a = [true, false, false, true, true];
        let e = summarize(&results, &chosen_is_a, 1.5);
        assert_eq!(
            (e.pairs, e.failed, e.correct, e.decisive, e.ties),
            (5, 1, 2, 3, 1)
        );
        assert_eq!(e.accuracy, Some(0.4));
        assert_eq!(e.decisive_accuracy, Some(2.0 / 3.0));
        assert_eq!(e.tie_rate, Some(0.2));
        assert_eq!(e.consistency, Some(0.75));
        // Ordered verdicts choosing the first slot: 1 + 1 + 1 + 2 of 8.
        assert_eq!(e.first_position_rate, Some(5.0 / 8.0));
        // p(chosen): 0.85, 0.65, 0.3, 0.55.
        assert!((e.mean_p_chosen.unwrap() - 0.5875).abs() < 1e-12);
        assert_eq!(e.p_accuracy, Some(0.75));
        assert_eq!(e.seconds, 1.5);
        let none = summarize(&[], &[], 0.0);
        assert_eq!((none.accuracy, none.consistency), (None, None));
    }

    /// Prefers the answer with more `+` signs; ties otherwise.
    struct Plus;
    impl Judge for Plus {
        fn name(&self) -> &str {
            "plus"
        }
        fn compare(&mut self, batch: &[Comparison]) -> Vec<Result<OrderedVerdict, JudgeError>> {
            let plus = |s: &str| s.matches('+').count();
            batch
                .iter()
                .map(|c| {
                    let verdict = match plus(c.first).cmp(&plus(c.second)) {
                        std::cmp::Ordering::Greater => Ordered::First,
                        std::cmp::Ordering::Less => Ordered::Second,
                        std::cmp::Ordering::Equal => Ordered::Tie,
                    };
                    Ok(OrderedVerdict {
                        verdict,
                        p_first: None,
                    })
                })
                .collect()
        }
    }

    #[test]
    fn a_perfect_judge_scores_one_whatever_the_assignment() {
        let pairs: Vec<PreferencePair> = (0..40)
            .map(|i| PreferencePair {
                prompt: "Review:".into(),
                chosen: format!("good{}", "+".repeat(i % 3 + 1)),
                rejected: "bad".into(),
            })
            .collect();
        let assignment = chosen_as_a(pairs.len(), 7);
        assert!(assignment.iter().any(|&a| a) && assignment.iter().any(|&a| !a));
        assert_eq!(assignment, chosen_as_a(pairs.len(), 7));
        let mut calls = 0;
        let (e, results) = measure(&mut Plus, "more +", &pairs, 7, &mut |_, _| calls += 1);
        assert_eq!(results.len(), 40);
        assert_eq!(calls, 3);
        assert_eq!(
            (e.accuracy, e.consistency, e.tie_rate),
            (Some(1.0), Some(1.0), Some(0.0))
        );
        assert_eq!(e.first_position_rate, Some(0.5));
        assert_eq!(e.mean_p_chosen, None);
    }

    #[test]
    fn pairs_read_from_trl_jsonl() {
        let dir = std::env::temp_dir().join(format!("rlft-judge-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prefs.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"Review:\", \"chosen\": \" great\", \"rejected\": \" awful\"}\n",
        )
        .unwrap();
        let pairs = read_pairs(&path).unwrap();
        assert_eq!(pairs[0].chosen, " great");
        std::fs::write(&path, "{\"text\": \"hello\"}\n").unwrap();
        assert!(read_pairs(&path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
