//! Agreement between annotators, from the label log: Cohen's kappa between two annotators,
//! Krippendorff's alpha (nominal) for any number, and each annotator's agreement with the AI
//! judge whose verdict was shown beside the pair. A decision counts as one of three answers:
//! A better, B better, or no preference (tie or both bad); skips are no answer.

use std::collections::{BTreeMap, HashMap};

use crate::engine::judge::Verdict;
use crate::engine::labels::{Decision, LogEntry, standing_decisions};

/// The answer a decision gives, for agreement (`None` for a skip).
fn answer(d: Decision) -> Option<u8> {
    match d {
        Decision::A => Some(0),
        Decision::B => Some(1),
        Decision::Tie | Decision::BothBad => Some(2),
        Decision::Skip => None,
    }
}

/// Cohen's kappa over items both annotators answered, given as (first's, second's) answer:
/// (p_o - p_e) / (1 - p_e). `None` with no items, or when chance agreement is certain (both
/// gave one and the same answer throughout).
pub fn cohen_kappa(items: &[(u8, u8)]) -> Option<f64> {
    let n = items.len() as f64;
    if items.is_empty() {
        return None;
    }
    let observed = items.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let mut first: HashMap<u8, f64> = HashMap::new();
    let mut second: HashMap<u8, f64> = HashMap::new();
    for (a, b) in items {
        *first.entry(*a).or_default() += 1.0;
        *second.entry(*b).or_default() += 1.0;
    }
    let chance: f64 = first
        .iter()
        .map(|(k, c)| (c / n) * (second.get(k).copied().unwrap_or(0.0) / n))
        .sum();
    (chance < 1.0).then(|| (observed - chance) / (1.0 - chance))
}

/// Krippendorff's alpha for nominal answers: each unit is the answers it got (units with
/// fewer than two are not pairable and are left out). 1 - (n - 1) * D_o / D_e over the
/// coincidence matrix; `None` when there is nothing to compare or no variation at all.
pub fn krippendorff_alpha(units: &[Vec<u8>]) -> Option<f64> {
    let mut coincidence: HashMap<(u8, u8), f64> = HashMap::new();
    for unit in units.iter().filter(|u| u.len() >= 2) {
        let weight = 1.0 / (unit.len() - 1) as f64;
        for (i, a) in unit.iter().enumerate() {
            for (j, b) in unit.iter().enumerate() {
                if i != j {
                    *coincidence.entry((*a, *b)).or_default() += weight;
                }
            }
        }
    }
    let mut totals: HashMap<u8, f64> = HashMap::new();
    for ((a, _), o) in &coincidence {
        *totals.entry(*a).or_default() += o;
    }
    let n: f64 = totals.values().sum();
    if n < 2.0 {
        return None;
    }
    let disagreement: f64 = coincidence
        .iter()
        .filter(|((a, b), _)| a != b)
        .map(|(_, o)| o)
        .sum();
    let mut expected = 0.0;
    for (a, na) in &totals {
        for (b, nb) in &totals {
            if a != b {
                expected += na * nb;
            }
        }
    }
    (expected > 0.0).then(|| 1.0 - (n - 1.0) * disagreement / expected)
}

/// Kappa between two annotators over the pairs both labelled.
#[derive(Clone, Debug, PartialEq)]
pub struct PairwiseKappa {
    pub first: String,
    pub second: String,
    pub kappa: Option<f64>,
    pub shared: usize,
}

/// How one annotator's decisions compare with the AI judge's verdicts shown beside them.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeAgreement {
    pub annotator: String,
    pub agreed: usize,
    pub of: usize,
}

/// Agreement over a log's standing decisions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Annotators and how many answers (skips excluded) each gave, by name.
    pub annotators: BTreeMap<String, usize>,
    /// Kappa for every two annotators who share at least one pair.
    pub kappas: Vec<PairwiseKappa>,
    /// Alpha over every pair labelled by two or more, and how many such pairs.
    pub alpha: Option<f64>,
    pub alpha_pairs: usize,
    pub judge: Vec<JudgeAgreement>,
}

impl Report {
    pub fn from_entries(entries: &[LogEntry]) -> Self {
        let mut by_pair: HashMap<&str, BTreeMap<&str, u8>> = HashMap::new();
        let mut report = Report::default();
        let mut judge: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for d in standing_decisions(entries) {
            let Some(a) = answer(d.decision) else {
                continue;
            };
            by_pair
                .entry(&d.pair_id)
                .or_default()
                .insert(&d.annotator, a);
            *report.annotators.entry(d.annotator.clone()).or_default() += 1;
            if let Some(v) = d.judge {
                let judged = match v {
                    Verdict::A => 0,
                    Verdict::B => 1,
                    Verdict::Tie => 2,
                };
                let e = judge.entry(&d.annotator).or_default();
                e.0 += usize::from(judged == a);
                e.1 += 1;
            }
        }
        let names: Vec<&String> = report.annotators.keys().collect();
        for (i, first) in names.iter().enumerate() {
            for second in &names[i + 1..] {
                let items: Vec<(u8, u8)> = by_pair
                    .values()
                    .filter_map(|m| Some((*m.get(first.as_str())?, *m.get(second.as_str())?)))
                    .collect();
                if !items.is_empty() {
                    report.kappas.push(PairwiseKappa {
                        first: (*first).clone(),
                        second: (*second).clone(),
                        kappa: cohen_kappa(&items),
                        shared: items.len(),
                    });
                }
            }
        }
        let units: Vec<Vec<u8>> = by_pair
            .values()
            .filter(|m| m.len() >= 2)
            .map(|m| m.values().copied().collect())
            .collect();
        report.alpha_pairs = units.len();
        report.alpha = krippendorff_alpha(&units);
        report.judge = judge
            .into_iter()
            .map(|(annotator, (agreed, of))| JudgeAgreement {
                annotator: annotator.to_string(),
                agreed,
                of,
            })
            .collect();
        report
    }

    /// One line for the Pairs pane header, once two people have labelled the same pairs.
    pub fn summary(&self) -> Option<String> {
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        match self.kappas.as_slice() {
            [] => None,
            [k] if self.annotators.len() == 2 => Some(format!(
                "κ {} ({} · {}, {} shared)",
                fmt(k.kappa),
                k.first,
                k.second,
                k.shared
            )),
            _ => Some(format!(
                "α {} ({} annotators, {} pairs)",
                fmt(self.alpha),
                self.annotators.len(),
                self.alpha_pairs
            )),
        }
    }

    /// The whole report as lines of text (`rlft label --stats`).
    pub fn lines(&self) -> Vec<String> {
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
        let mut out = Vec::new();
        if self.annotators.is_empty() {
            out.push("No decisions yet.".to_string());
            return out;
        }
        out.push("annotators:".into());
        for (name, n) in &self.annotators {
            let name = if name.is_empty() { "(unnamed)" } else { name };
            out.push(format!("  {name:<16} {n} answer(s)"));
        }
        if !self.kappas.is_empty() {
            out.push("Cohen's kappa (pairs both labelled):".into());
            for k in &self.kappas {
                out.push(format!(
                    "  {} · {}: {} over {}",
                    k.first,
                    k.second,
                    fmt(k.kappa),
                    k.shared
                ));
            }
        }
        out.push(format!(
            "Krippendorff's alpha (nominal): {} over {} pair(s) with 2+ labels",
            fmt(self.alpha),
            self.alpha_pairs
        ));
        if !self.judge.is_empty() {
            out.push("agreement with the AI judge:".into());
            for j in &self.judge {
                out.push(format!(
                    "  {:<16} {}/{} ({:.0}%)",
                    j.annotator,
                    j.agreed,
                    j.of,
                    100.0 * j.agreed as f64 / j.of.max(1) as f64
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u8 = 0;
    const B: u8 = 1;

    /// Ten pairs, two annotators (worked by hand): they agree on 7, so p_o = 0.7; the first
    /// said A 6 times, the second 5, so p_e = 0.6 * 0.5 + 0.4 * 0.5 = 0.5 and kappa = 0.4.
    /// Alpha: coincidences AA 8, BB 6, AB = BA 3; n_A 11, n_B 9, n 20;
    /// alpha = 1 - 19 * 6 / (2 * 11 * 9) = 84 / 198.
    #[test]
    fn kappa_and_alpha_equal_a_hand_computation() {
        let first = [A, A, A, B, B, B, A, B, A, A];
        let second = [A, A, B, B, B, A, A, B, A, B];
        let items: Vec<(u8, u8)> = first.iter().copied().zip(second).collect();
        assert!((cohen_kappa(&items).unwrap() - 0.4).abs() < 1e-12);
        let units: Vec<Vec<u8>> = items.iter().map(|(a, b)| vec![*a, *b]).collect();
        assert!((krippendorff_alpha(&units).unwrap() - 84.0 / 198.0).abs() < 1e-12);
    }

    /// Three annotators with a missing answer: unit 1 AAA, unit 2 AB, unit 3 BBB. Coincidences
    /// AA 3, BB 3, AB = BA 1; n_A = n_B = 4, n = 8; alpha = 1 - 7 * 2 / 32 = 0.5625.
    #[test]
    fn alpha_handles_three_annotators_and_missing_answers() {
        let units = vec![vec![A, A, A], vec![A, B], vec![B, B, B], vec![A]];
        assert!((krippendorff_alpha(&units).unwrap() - 0.5625).abs() < 1e-12);
        // Perfect agreement with variation is 1; no variation at all is undefined.
        assert_eq!(krippendorff_alpha(&[vec![A, A], vec![B, B]]), Some(1.0));
        assert_eq!(krippendorff_alpha(&[vec![A, A], vec![A, A]]), None);
        assert_eq!(cohen_kappa(&[(A, A), (A, A)]), None);
    }
}
