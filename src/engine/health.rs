//! Training-health rules over a run's metric series: the problems TRL and verl users most
//! often get stuck on, each turned into a warning with a one-line meaning.
//!
//! [`HealthMonitor`] is fed every metrics row of a run (`observe`) and keeps a bounded summary
//! per metric (the first points, a recent window, the newest spike, the first non-finite
//! value), so it costs the same after a million steps as after ten. `warnings()` evaluates the
//! rules. Metric names are TRL's; where trainers differ (GRPO's `kl` vs PPO's `objective/kl`)
//! each rule looks for the known aliases. Pure Rust, no terminal code.

use std::collections::{BTreeMap, VecDeque};

/// Points kept per metric for the recent window. Long enough for a median that shrugs off a
/// single outlier, short enough to react within a few dozen steps.
const RECENT_WINDOW: usize = 50;
/// Points averaged as the run's starting level ("early baseline").
const EARLY_POINTS: usize = 10;
/// Points averaged as the current level, so one noisy step does not raise a warning.
const LATEST_POINTS: usize = 5;
/// A spike stays reported for this many steps after it happened, long enough to be seen.
const SPIKE_MEMORY_STEPS: usize = 100;
/// Points needed in the window before a spike can be judged against its median.
const SPIKE_MIN_HISTORY: usize = 10;

/// Aliases per quantity, GRPO/RLOO names first, then PPO's.
const KL: &[&str] = &["kl", "objective/kl"];
const ENTROPY: &[&str] = &["entropy", "objective/entropy", "policy/entropy_avg"];
const REWARD: &[&str] = &["reward", "objective/scores", "objective/rlhf_reward"];
const GRAD_NORM: &[&str] = &["grad_norm"];
const ZERO_STD: &[&str] = &["frac_reward_zero_std"];

/// The mean KL (nats/token) below which KL counts as negative. GRPO's k3 estimator is never
/// negative, and PPO's k1 estimate wanders only a few thousandths around zero by noise.
const KL_NEGATIVE_BELOW: f64 = -0.01;
/// KL above this is exploding whatever the start was: the policy is far from the reference.
const KL_EXPLODE_ABS: f64 = 5.0;
/// KL above `KL_EXPLODE_GROWTH` x its early level (and above `KL_EXPLODE_FLOOR`) is exploding.
const KL_EXPLODE_GROWTH: f64 = 20.0;
const KL_EXPLODE_FLOOR: f64 = 1.0;
/// Softer KL growth that, together with a rising reward, suggests reward hacking.
const KL_HACK_GROWTH: f64 = 10.0;
const KL_HACK_FLOOR: f64 = 0.5;
/// Reward must have risen by this fraction of max(1, |early reward|) to count as rising.
const REWARD_RISE_MIN: f64 = 0.1;
/// frac_reward_zero_std averaged over the latest points at or above this: no signal.
const ZERO_STD_NEAR_ONE: f64 = 0.9;
/// Entropy below this fraction of its early level has collapsed.
const ENTROPY_COLLAPSE_FRACTION: f64 = 0.1;
/// Early entropy must exceed this for a collapse to be meaningful (nats/token).
const ENTROPY_MIN_EARLY: f64 = 0.05;
/// A point above this multiple of the recent median is an entropy spike.
const ENTROPY_SPIKE_RATIO: f64 = 2.0;
/// A point above this multiple of the recent median is a grad-norm spike. Grad norms are
/// heavy-tailed, so 2-3x is ordinary; 10x is not.
const GRAD_SPIKE_RATIO: f64 = 10.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

/// The rules, each with a title and a one-line meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    NonFinite,
    KlExploding,
    RewardHacking,
    KlNegative,
    NoLearningSignal,
    EntropyCollapse,
    EntropySpike,
    GradNormSpike,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule::NonFinite,
        Rule::KlExploding,
        Rule::RewardHacking,
        Rule::KlNegative,
        Rule::NoLearningSignal,
        Rule::EntropyCollapse,
        Rule::EntropySpike,
        Rule::GradNormSpike,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Rule::NonFinite => "NaN/inf in metrics",
            Rule::KlExploding => "KL exploding",
            Rule::RewardHacking => "Possible reward hacking",
            Rule::KlNegative => "KL negative",
            Rule::NoLearningSignal => "No learning signal",
            Rule::EntropyCollapse => "Entropy collapse",
            Rule::EntropySpike => "Entropy spike",
            Rule::GradNormSpike => "Grad-norm spike",
        }
    }

    /// What it means, in one line, with the usual remedy.
    pub fn meaning(self) -> &'static str {
        match self {
            Rule::NonFinite => {
                "Training diverged numerically; later weights are garbage. Resume from an earlier checkpoint with a lower learning rate."
            }
            Rule::KlExploding => {
                "The policy has run far from the reference model; outputs may degrade. Lower the learning rate or raise beta."
            }
            Rule::RewardHacking => {
                "Reward climbs while the policy drifts far from the reference: it may be gaming the reward, not solving the task. Read the samples."
            }
            Rule::KlNegative => {
                "Sampled text is more likely under the reference than the policy: rollout and scoring disagree (temperature, top-k, padding)."
            }
            Rule::NoLearningSignal => {
                "All completions in most groups get the same reward, so advantages are zero. Make the task easier/harder or sample more, hotter."
            }
            Rule::EntropyCollapse => {
                "The policy has become near-deterministic and stopped exploring. Lower the learning rate or raise the sampling temperature."
            }
            Rule::EntropySpike => {
                "The policy suddenly became much more random, often after an unstable update; outputs may turn to gibberish."
            }
            Rule::GradNormSpike => {
                "One batch pushed the weights hard. Clipping usually absorbs it; repeated spikes come before divergence: lower the learning rate."
            }
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Rule::NonFinite | Rule::KlExploding => Severity::Critical,
            _ => Severity::Warning,
        }
    }
}

/// One raised rule, with the numbers that raised it.
#[derive(Clone, Debug, PartialEq)]
pub struct Warning {
    pub rule: Rule,
    pub severity: Severity,
    /// The metric it was read from (e.g. `objective/kl`).
    pub metric: String,
    /// The step it refers to (the newest step, or when a spike or NaN happened).
    pub step: usize,
    /// Short evidence, e.g. "kl 7.2 (was 0.02)".
    pub detail: String,
}

impl Warning {
    pub fn meaning(&self) -> &'static str {
        self.rule.meaning()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Spike {
    step: usize,
    value: f64,
    ratio: f64,
}

/// Bounded summary of one metric.
#[derive(Clone, Debug, Default)]
struct Track {
    early: Vec<f64>,
    recent: VecDeque<(usize, f64)>,
    first_non_finite: Option<(usize, f64)>,
    /// The newest point that was `spike_ratio` x the median before it, if any.
    spike: Option<Spike>,
}

impl Track {
    fn push(&mut self, step: usize, v: f64, spike_ratio: Option<f64>) {
        if !v.is_finite() {
            self.first_non_finite.get_or_insert((step, v));
            return;
        }
        if let Some(ratio) = spike_ratio
            && self.recent.len() >= SPIKE_MIN_HISTORY
        {
            let median = median(self.recent.iter().map(|(_, x)| *x));
            if median > 0.0 && v > ratio * median {
                self.spike = Some(Spike {
                    step,
                    value: v,
                    ratio: v / median,
                });
            }
        }
        if self.early.len() < EARLY_POINTS {
            self.early.push(v);
        }
        if self.recent.len() == RECENT_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((step, v));
    }

    fn early_mean(&self) -> Option<f64> {
        mean(self.early.iter().copied())
    }

    /// Mean of the newest `n` points.
    fn latest_mean(&self, n: usize) -> Option<f64> {
        mean(self.recent.iter().rev().take(n).map(|(_, v)| *v))
    }

    fn last_step(&self) -> Option<usize> {
        self.recent.back().map(|(s, _)| *s)
    }

    /// Whether there are enough points past the early baseline to compare against it.
    fn has_history(&self) -> bool {
        self.early.len() >= EARLY_POINTS && self.recent.len() >= EARLY_POINTS + LATEST_POINTS
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = values.fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
    (n > 0).then(|| sum / n as f64)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Health rules for one run, fed its metrics rows in order.
#[derive(Clone, Debug, Default)]
pub struct HealthMonitor {
    tracks: BTreeMap<String, Track>,
    last_step: usize,
}

impl HealthMonitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one metrics row.
    pub fn observe(&mut self, step: usize, values: &BTreeMap<String, f64>) {
        self.last_step = self.last_step.max(step);
        for (name, v) in values {
            let spike = if GRAD_NORM.contains(&name.as_str()) {
                Some(GRAD_SPIKE_RATIO)
            } else if ENTROPY.contains(&name.as_str()) {
                Some(ENTROPY_SPIKE_RATIO)
            } else {
                None
            };
            self.tracks
                .entry(name.clone())
                .or_default()
                .push(step, *v, spike);
        }
    }

    /// The newest step observed.
    pub fn last_step(&self) -> usize {
        self.last_step
    }

    /// Every rule that currently fires, most severe first.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        out.extend(self.non_finite());
        out.extend(self.kl_exploding());
        out.extend(self.reward_hacking());
        out.extend(self.kl_negative());
        out.extend(self.no_learning_signal());
        out.extend(self.entropy_collapse());
        out.extend(self.spike(ENTROPY, Rule::EntropySpike));
        out.extend(self.spike(GRAD_NORM, Rule::GradNormSpike));
        out.sort_by_key(|w| (std::cmp::Reverse(w.severity), w.rule));
        out
    }

    fn find(&self, aliases: &[&str]) -> Option<(&str, &Track)> {
        aliases
            .iter()
            .find_map(|a| self.tracks.get_key_value(*a))
            .map(|(k, t)| (k.as_str(), t))
    }

    fn warning(&self, rule: Rule, metric: &str, step: usize, detail: String) -> Warning {
        Warning {
            rule,
            severity: rule.severity(),
            metric: metric.to_string(),
            step,
            detail,
        }
    }

    /// Any NaN or infinity in any metric.
    fn non_finite(&self) -> Vec<Warning> {
        self.tracks
            .iter()
            .filter_map(|(name, t)| {
                let (step, v) = t.first_non_finite?;
                Some(self.warning(
                    Rule::NonFinite,
                    name,
                    step,
                    format!("{name} = {v} at step {step}"),
                ))
            })
            .collect()
    }

    fn kl_exploding(&self) -> Option<Warning> {
        let (name, t) = self.find(KL)?;
        let now = t.latest_mean(LATEST_POINTS)?;
        let early = t.early_mean()?;
        let grown =
            t.has_history() && now > KL_EXPLODE_FLOOR && now > KL_EXPLODE_GROWTH * early.max(1e-3);
        (now > KL_EXPLODE_ABS || grown).then(|| {
            self.warning(
                Rule::KlExploding,
                name,
                t.last_step().unwrap_or(0),
                format!(
                    "{name} {} over the last {LATEST_POINTS} steps (started at {})",
                    num(now),
                    num(early)
                ),
            )
        })
    }

    fn reward_hacking(&self) -> Option<Warning> {
        let (kl_name, kl) = self.find(KL)?;
        let (r_name, r) = self.find(REWARD)?;
        if !kl.has_history() || !r.has_history() {
            return None;
        }
        let (kl_now, kl_early) = (kl.latest_mean(LATEST_POINTS)?, kl.early_mean()?);
        let (r_now, r_early) = (r.latest_mean(EARLY_POINTS)?, r.early_mean()?);
        let rising = r_now - r_early > REWARD_RISE_MIN * r_early.abs().max(1.0);
        let drifting = kl_now > KL_HACK_FLOOR && kl_now > KL_HACK_GROWTH * kl_early.max(1e-3);
        (rising && drifting).then(|| {
            self.warning(
                Rule::RewardHacking,
                kl_name,
                kl.last_step().unwrap_or(0),
                format!(
                    "{r_name} {} -> {} while {kl_name} {} -> {}",
                    num(r_early),
                    num(r_now),
                    num(kl_early),
                    num(kl_now)
                ),
            )
        })
    }

    fn kl_negative(&self) -> Option<Warning> {
        let (name, t) = self.find(KL)?;
        if t.recent.len() < LATEST_POINTS {
            return None;
        }
        let now = t.latest_mean(LATEST_POINTS)?;
        (now < KL_NEGATIVE_BELOW).then(|| {
            self.warning(
                Rule::KlNegative,
                name,
                t.last_step().unwrap_or(0),
                format!("{name} {} over the last {LATEST_POINTS} steps", num(now)),
            )
        })
    }

    fn no_learning_signal(&self) -> Option<Warning> {
        let (name, t) = self.find(ZERO_STD)?;
        let n = 2 * LATEST_POINTS;
        if t.recent.len() < n {
            return None;
        }
        let now = t.latest_mean(n)?;
        (now >= ZERO_STD_NEAR_ONE).then(|| {
            self.warning(
                Rule::NoLearningSignal,
                name,
                t.last_step().unwrap_or(0),
                format!("{name} {:.0}% over the last {n} steps", 100.0 * now),
            )
        })
    }

    fn entropy_collapse(&self) -> Option<Warning> {
        let (name, t) = self.find(ENTROPY)?;
        if !t.has_history() {
            return None;
        }
        let (now, early) = (t.latest_mean(LATEST_POINTS)?, t.early_mean()?);
        (early > ENTROPY_MIN_EARLY && now < ENTROPY_COLLAPSE_FRACTION * early).then(|| {
            self.warning(
                Rule::EntropyCollapse,
                name,
                t.last_step().unwrap_or(0),
                format!("{name} {} (started at {})", num(now), num(early)),
            )
        })
    }

    fn spike(&self, aliases: &[&str], rule: Rule) -> Option<Warning> {
        let (name, t) = self.find(aliases)?;
        let s = t.spike?;
        (self.last_step.saturating_sub(s.step) <= SPIKE_MEMORY_STEPS).then(|| {
            self.warning(
                rule,
                name,
                s.step,
                format!(
                    "{name} {} at step {} ({:.0}x the recent median)",
                    num(s.value),
                    s.step,
                    s.ratio
                ),
            )
        })
    }
}

/// Compact number formatting for warning details.
fn num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds series (one value per step, all the same length) into a monitor.
    fn feed(series: &[(&str, Vec<f64>)]) -> HealthMonitor {
        let mut m = HealthMonitor::new();
        let steps = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        for step in 0..steps {
            let row: BTreeMap<String, f64> = series
                .iter()
                .filter_map(|(k, v)| v.get(step).map(|x| (k.to_string(), *x)))
                .collect();
            m.observe(step + 1, &row);
        }
        m
    }

    fn rules(m: &HealthMonitor) -> Vec<Rule> {
        m.warnings().into_iter().map(|w| w.rule).collect()
    }

    /// A steady noisy series around `level`.
    fn steady(level: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| level * (1.0 + 0.05 * ((i * 7 % 5) as f64 - 2.0) / 2.0))
            .collect()
    }

    #[test]
    fn healthy_grpo_run_raises_nothing() {
        let reward: Vec<f64> = (0..80).map(|i| 0.2 + 0.005 * i as f64).collect();
        let m = feed(&[
            ("reward", reward),
            ("kl", steady(0.02, 80)),
            ("entropy", steady(1.2, 80)),
            ("grad_norm", steady(0.8, 80)),
            ("frac_reward_zero_std", steady(0.3, 80)),
        ]);
        assert_eq!(rules(&m), vec![]);
    }

    #[test]
    fn nan_anywhere_is_critical_with_its_step() {
        let mut loss = steady(2.0, 20);
        loss[12] = f64::NAN;
        let w = feed(&[("loss", loss)]).warnings();
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0].rule, w[0].severity),
            (Rule::NonFinite, Severity::Critical)
        );
        assert_eq!(w[0].step, 13);
        assert!(w[0].detail.contains("NaN"), "{}", w[0].detail);
    }

    #[test]
    fn negative_kl_is_flagged_but_noise_around_zero_is_not() {
        let m = feed(&[("objective/kl", vec![-0.05; 20])]);
        assert_eq!(rules(&m), vec![Rule::KlNegative]);
        let noise: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { -0.004 } else { 0.003 })
            .collect();
        assert_eq!(rules(&feed(&[("objective/kl", noise)])), vec![]);
    }

    #[test]
    fn kl_exploding_by_growth_or_absolute_level() {
        let mut kl = steady(0.02, 30);
        kl.extend(vec![1.5; 10]);
        assert_eq!(rules(&feed(&[("kl", kl)])), vec![Rule::KlExploding]);
        // Too young to judge growth, but 8 nats is exploding anyway.
        assert_eq!(
            rules(&feed(&[("kl", vec![8.0; 6])])),
            vec![Rule::KlExploding]
        );
        // Large but steady from the start is not growth.
        assert_eq!(rules(&feed(&[("kl", steady(2.0, 40))])), vec![]);
    }

    #[test]
    fn reward_rising_while_kl_drifts_is_possible_hacking() {
        let mut kl = steady(0.02, 30);
        kl.extend(vec![0.6; 20]);
        let reward: Vec<f64> = (0..50).map(|i| 0.1 + 0.03 * i as f64).collect();
        assert_eq!(
            rules(&feed(&[("kl", kl.clone()), ("reward", reward)])),
            vec![Rule::RewardHacking]
        );
        // The same KL drift with a flat reward is not hacking (and 0.6 is not exploding).
        assert_eq!(
            rules(&feed(&[("kl", kl), ("reward", steady(0.5, 50))])),
            vec![]
        );
    }

    #[test]
    fn all_zero_std_groups_mean_no_learning_signal() {
        let m = feed(&[("frac_reward_zero_std", vec![0.95; 12])]);
        assert_eq!(rules(&m), vec![Rule::NoLearningSignal]);
        assert_eq!(
            rules(&feed(&[("frac_reward_zero_std", vec![0.5; 12])])),
            vec![]
        );
    }

    #[test]
    fn entropy_collapse_after_a_healthy_start() {
        let mut e = steady(1.5, 20);
        e.extend(vec![0.05; 10]);
        assert_eq!(rules(&feed(&[("entropy", e)])), vec![Rule::EntropyCollapse]);
    }

    #[test]
    fn entropy_spike_is_remembered_for_a_while_then_forgotten() {
        let mut e = steady(1.0, 30);
        e.push(3.5);
        e.extend(steady(1.0, 20));
        let w = feed(&[("entropy", e.clone())]).warnings();
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].rule, w[0].step), (Rule::EntropySpike, 31));
        e.extend(steady(1.0, SPIKE_MEMORY_STEPS));
        assert_eq!(rules(&feed(&[("entropy", e)])), vec![]);
    }

    #[test]
    fn grad_norm_spike_needs_ten_times_the_median() {
        let mut g = steady(0.5, 20);
        g.push(4.0); // 8x: heavy tail, not a spike
        assert_eq!(rules(&feed(&[("grad_norm", g.clone())])), vec![]);
        g.push(9.0);
        let w = feed(&[("grad_norm", g)]).warnings();
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].rule, w[0].step), (Rule::GradNormSpike, 22));
    }

    #[test]
    fn warnings_are_ordered_most_severe_first() {
        let mut kl = vec![0.02; 10];
        kl.extend(vec![9.0; 10]);
        let mut loss = vec![1.0; 20];
        loss[3] = f64::INFINITY;
        let w = feed(&[
            ("kl", kl),
            ("loss", loss),
            ("frac_reward_zero_std", vec![1.0; 20]),
        ])
        .warnings();
        let got: Vec<Rule> = w.iter().map(|w| w.rule).collect();
        assert_eq!(
            got,
            vec![Rule::NonFinite, Rule::KlExploding, Rule::NoLearningSignal]
        );
    }

    #[test]
    fn every_rule_has_a_one_line_meaning() {
        for r in Rule::ALL {
            assert!(!r.meaning().contains('\n'));
            assert!(r.meaning().len() < 140, "{r:?} meaning too long");
        }
    }
}
