//! Losses, advantage estimators and KL controllers for RL fine-tuning: PPO (GAE, clipped
//! policy and value losses, adaptive KL), GRPO (group advantages, clip-higher, loss
//! aggregations), DPO (sigmoid / IPO / hinge / robust), Bradley-Terry reward models, and the
//! demonstration NLL and token entropy used around them.
//!
//! Each item names the Hugging Face TRL function it mirrors; the tests check every formula
//! against a plain f64 loop written from the formula. Shapes: `[B, T]` is batch x completion
//! tokens and `mask` is f32 0/1 of the same shape. Losses come back as one-element
//! `Tensor<1>`s that keep the autodiff graph of their inputs; metrics are host `f64`s computed
//! from detached values.

pub use crate::engine::config::methods::{
    AdvantageEstimator, DpoLoss, GrpoLossType, ImportanceSamplingLevel, KlEstimator, PolicyLoss,
    ScaleRewards,
};
use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, log_softmax, relu};
use serde::{Deserialize, Serialize};

use super::{TrainError, masked_mean, scalar};

// ---------------------------------------------------------------------------------------------
// KL estimators

impl KlEstimator {
    /// The estimator per token, same shape as the inputs.
    pub fn per_token<const D: usize>(&self, lp: Tensor<D>, ref_lp: Tensor<D>) -> Tensor<D> {
        match self {
            Self::K1 => kl_k1(lp, ref_lp),
            Self::K2 => kl_k2(lp, ref_lp),
            Self::K3 => kl_k3(lp, ref_lp),
        }
    }
}

/// k1 = `lp − ref_lp` (TRL PPO: `kl = -logr` with `logr = ref_logprobs - logprobs`).
pub fn kl_k1<const D: usize>(lp: Tensor<D>, ref_lp: Tensor<D>) -> Tensor<D> {
    lp - ref_lp
}

/// k2 = `½ (lp − ref_lp)²` (OpenRLHF / verl "k2" / "mse").
pub fn kl_k2<const D: usize>(lp: Tensor<D>, ref_lp: Tensor<D>) -> Tensor<D> {
    (lp - ref_lp).square() * 0.5
}

/// k3 = `exp(r) − r − 1` with `r = ref_lp − lp` (TRL PPO `(logr.exp() - 1) - logr`, TRL
/// `GRPOTrainer._compute_loss` `per_token_kl`).
pub fn kl_k3<const D: usize>(lp: Tensor<D>, ref_lp: Tensor<D>) -> Tensor<D> {
    let r = ref_lp - lp;
    r.clone().exp() - r - 1.0
}

// ---------------------------------------------------------------------------------------------
// Whitening and GAE

/// TRL `masked_whiten` (`trl/trainer/utils.py`): `(values − mean) · rsqrt(var + 1e-8)` with
/// the masked mean and the unbiased (Bessel-corrected) masked variance; `shift_mean = false`
/// adds the mean back (TRL's `whiten_rewards`).
///
/// Differences, both harmless at valid positions: positions where `mask` is 0 come out 0
/// (TRL follows every call with `masked_fill(.., padding_mask, 0)`), and where TRL raises on
/// fewer than 2 valid tokens the correction here is `n / max(n − 1, 1)`, so a single token
/// whitens to 0 (to its own value without the shift).
pub fn whiten(values: Tensor<2>, mask: Tensor<2>, shift_mean: bool) -> Tensor<2> {
    let n = mask.clone().sum();
    let mean = masked_mean(values.clone(), mask.clone()).unsqueeze::<2>();
    let centered = values - mean.clone();
    let bessel = n.clone() / (n - 1.0).clamp_min(1.0);
    let var = masked_mean(centered.clone().square(), mask.clone()) * bessel;
    let inv_std = (var + 1e-8).sqrt().recip().unsqueeze::<2>();
    let mut out = centered * inv_std;
    if !shift_mean {
        out = out + mean;
    }
    out * mask
}

/// `(advantages, returns)` from [`gae`], one row per sequence.
pub type GaeRows = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Generalised advantage estimation as TRL PPO's backward loop (`PPOTrainer.train` in
/// `trl/experimental/ppo/ppo_trainer.py`), one row per sequence so rows may differ in
/// length: `δ_t = r_t + γ·V_{t+1} − V_t` with the value after a row's last element taken as
/// 0, `A_t = δ_t + γλ·A_{t+1}`, returns `R_t = A_t + V_t`.
///
/// The row is whatever span the caller scores (TRL's batched loop runs one position past
/// the last non-pad token, where it adds the score). Advantages come back raw; TRL then
/// whitens them over the valid tokens ([`whiten`] with `shift_mean = true`).
///
/// Errors when the two inputs do not have the same number of rows and the same length in
/// every row.
pub fn gae(
    rewards: &[Vec<f32>],
    values: &[Vec<f32>],
    gamma: f64,
    lambda: f64,
) -> Result<GaeRows, TrainError> {
    if rewards.len() != values.len() {
        return Err(TrainError::Invalid(format!(
            "gae: {} reward rows but {} value rows",
            rewards.len(),
            values.len()
        )));
    }
    let mut advantages = Vec::with_capacity(rewards.len());
    let mut returns = Vec::with_capacity(rewards.len());
    for (i, (r, v)) in rewards.iter().zip(values).enumerate() {
        if r.len() != v.len() {
            return Err(TrainError::Invalid(format!(
                "gae: row {i} has {} rewards but {} values",
                r.len(),
                v.len()
            )));
        }
        let n = r.len();
        let mut adv = vec![0.0f32; n];
        let mut ret = vec![0.0f32; n];
        let mut last_gae_lam = 0.0f64;
        for t in (0..n).rev() {
            let next_value = if t + 1 < n { v[t + 1] as f64 } else { 0.0 };
            let delta = r[t] as f64 + gamma * next_value - v[t] as f64;
            last_gae_lam = delta + gamma * lambda * last_gae_lam;
            adv[t] = last_gae_lam as f32;
            ret[t] = (last_gae_lam + v[t] as f64) as f32;
        }
        advantages.push(adv);
        returns.push(ret);
    }
    Ok((advantages, returns))
}

// ---------------------------------------------------------------------------------------------
// PPO

/// Output of [`ppo_policy_loss`].
#[derive(Debug, Clone)]
pub struct PolicyLossOut {
    /// Masked token mean of the clipped surrogate (differentiable).
    pub loss: Tensor<1>,
    /// TRL `policy/clipfrac_avg`: fraction of valid tokens where the clipped term wins.
    pub clipfrac: f64,
    /// TRL `policy/approxkl_avg`: `½ · mean((lp − old_lp)²)`.
    pub approx_kl: f64,
    /// TRL `val/ratio`: mean of `exp(lp − old_lp)`.
    pub ratio_mean: f64,
}

/// TRL PPO policy loss (`PPOTrainer.train`, experimental PPO): `ratio = exp(lp − old_lp)`,
/// `pg = max(−A·ratio, −A·clamp(ratio, 1 − ε, 1 + ε))`, masked token mean. `adv` is per
/// token `[B, T]` (from [`gae`], whitened).
///
/// The metrics are masked means over valid tokens; TRL averages `approxkl` and `ratio` over
/// padding too (its filled logprobs make the difference 0 there), which only rescales them.
pub fn ppo_policy_loss(
    lp: Tensor<2>,
    old_lp: Tensor<2>,
    adv: Tensor<2>,
    mask: Tensor<2>,
    clip_eps: f64,
) -> PolicyLossOut {
    let log_ratio = lp - old_lp;
    let ratio = log_ratio.clone().exp();
    let pg1 = adv.clone().neg() * ratio.clone();
    let pg2 = adv.neg() * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps);
    let loss = masked_mean(pg1.clone().max_pair(pg2.clone()), mask.clone());

    let clipped = pg2.detach().greater(pg1.detach()).float();
    let log_ratio = log_ratio.detach();
    let [clipfrac, mean_sq_log_ratio, ratio_mean] = super::scalars([
        masked_mean(clipped, mask.clone()),
        masked_mean(log_ratio.clone().square(), mask.clone()),
        masked_mean(log_ratio.exp(), mask),
    ]);
    PolicyLossOut {
        loss,
        clipfrac,
        approx_kl: 0.5 * mean_sq_log_ratio,
        ratio_mean,
    }
}

/// TRL PPO clipped value loss (`PPOTrainer.train`): `v_clip = clamp(v, old − c, old + c)`,
/// `loss = ½ · masked_mean(max((v − R)², (v_clip − R)²))`. Also returns TRL's
/// `val/clipfrac_avg`, the fraction of valid tokens where the clipped error is larger.
pub fn ppo_value_loss(
    values: Tensor<2>,
    old_values: Tensor<2>,
    returns: Tensor<2>,
    mask: Tensor<2>,
    clip_range_value: f64,
) -> (Tensor<1>, f64) {
    let c = clip_range_value;
    let clipped = old_values.clone() + (values.clone() - old_values).clamp(-c, c);
    let l1 = (values - returns.clone()).square();
    let l2 = (clipped - returns).square();
    let loss = masked_mean(l1.clone().max_pair(l2.clone()), mask.clone()) * 0.5;
    let frac = scalar(masked_mean(l2.detach().greater(l1.detach()).float(), mask));
    (loss, frac)
}

// ---------------------------------------------------------------------------------------------
// KL coefficient controllers

/// Adaptive KL coefficient of Ziegler et al. 2019, TRL `AdaptiveKLController` (TRL v0.11
/// `trl/trainer/utils.py`; also verl and OpenRLHF).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveKl {
    /// The current coefficient β.
    pub value: f64,
    /// Target KL per sequence.
    pub target: f64,
    /// Horizon in samples (TRL default 10000).
    pub horizon: u64,
}

impl AdaptiveKl {
    /// Errors unless `init_kl_coef ≥ 0`, `target > 0` and `horizon > 0` (all finite).
    pub fn new(init_kl_coef: f64, target: f64, horizon: u64) -> Result<Self, TrainError> {
        if !(init_kl_coef.is_finite() && init_kl_coef >= 0.0) {
            return Err(TrainError::Invalid(format!(
                "adaptive KL: initial coefficient {init_kl_coef} must be finite and >= 0"
            )));
        }
        if !(target.is_finite() && target > 0.0) {
            return Err(TrainError::Invalid(format!(
                "adaptive KL: target {target} must be finite and > 0"
            )));
        }
        if horizon == 0 {
            return Err(TrainError::Invalid(
                "adaptive KL: horizon must be > 0".into(),
            ));
        }
        Ok(Self {
            value: init_kl_coef,
            target,
            horizon,
        })
    }

    /// `e = clip(current / target − 1, −0.2, 0.2)`, `β ← β · (1 + e · n_steps / horizon)`.
    /// A non-finite `current_kl` (or a state that [`AdaptiveKl::new`] would reject, say from
    /// an edited resume file) leaves β unchanged rather than poisoning it.
    pub fn update(&mut self, current_kl: f64, n_steps: usize) {
        let usable = current_kl.is_finite()
            && self.target.is_finite()
            && self.target > 0.0
            && self.horizon > 0;
        if !usable {
            return;
        }
        let proportional_error = (current_kl / self.target - 1.0).clamp(-0.2, 0.2);
        let mult = 1.0 + proportional_error * n_steps as f64 / self.horizon as f64;
        self.value *= mult;
    }
}

/// Constant KL coefficient, TRL `FixedKLController`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FixedKl {
    pub value: f64,
}

impl FixedKl {
    /// Does nothing; the coefficient is fixed.
    pub fn update(&mut self, _current_kl: f64, _n_steps: usize) {}
}

/// Either controller, serialised as `{"type": "fixed" | "adaptive", ...fields}` for resume.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum KlController {
    Fixed(FixedKl),
    Adaptive(AdaptiveKl),
}

impl KlController {
    /// The current coefficient β.
    pub fn value(&self) -> f64 {
        match self {
            Self::Fixed(c) => c.value,
            Self::Adaptive(c) => c.value,
        }
    }

    pub fn update(&mut self, current_kl: f64, n_steps: usize) {
        match self {
            Self::Fixed(c) => c.update(current_kl, n_steps),
            Self::Adaptive(c) => c.update(current_kl, n_steps),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reward model

/// Bradley-Terry pairwise loss, TRL `RewardTrainer.compute_loss`:
/// `mean(−log σ(r_c − r_r − margin)) + η · mean((r_c + r_r)²)`, with `η` the optional
/// `center_rewards_coefficient`. Inputs are `[N]` scalar rewards per pair.
pub fn bt_loss(
    r_chosen: Tensor<1>,
    r_rejected: Tensor<1>,
    margin: Option<Tensor<1>>,
    center_rewards_coefficient: Option<f64>,
) -> Tensor<1> {
    let mut diff = r_chosen.clone() - r_rejected.clone();
    if let Some(m) = margin {
        diff = diff - m;
    }
    let loss = log_sigmoid(diff).neg().mean();
    match center_rewards_coefficient {
        Some(coef) => loss + (r_chosen + r_rejected).square().mean() * coef,
        None => loss,
    }
}

// ---------------------------------------------------------------------------------------------
// DPO

/// Output of [`dpo`], all `[N]`.
#[derive(Debug, Clone)]
pub struct DpoOut {
    /// Per-pair losses (differentiable); the training loss is their mean.
    pub losses: Tensor<1>,
    /// `β (π_c − ref_c)`, detached (TRL `rewards/chosen`).
    pub chosen_rewards: Tensor<1>,
    /// `β (π_r − ref_r)`, detached (TRL `rewards/rejected`).
    pub rejected_rewards: Tensor<1>,
}

/// TRL `DPOTrainer.dpo_loss`: `h = (π_c − π_r) − (ref_c − ref_r)` from sequence log-prob
/// sums (averages for [`DpoLoss::Ipo`]), then the variant's loss per pair. RPO's extra NLL
/// term on the chosen tokens is [`demo_nll`].
///
/// Errors unless `beta` is finite and > 0 and `label_smoothing` is in `[0, 0.5]` (`[0, 0.5)`
/// for [`DpoLoss::Robust`]).
pub fn dpo(
    pi_c: Tensor<1>,
    pi_r: Tensor<1>,
    ref_c: Tensor<1>,
    ref_r: Tensor<1>,
    beta: f64,
    label_smoothing: f64,
    variant: DpoLoss,
) -> Result<DpoOut, TrainError> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(TrainError::Invalid(format!(
            "dpo: beta {beta} must be finite and > 0"
        )));
    }
    let ls = label_smoothing;
    let ls_ok = match variant {
        DpoLoss::Robust => (0.0..0.5).contains(&ls),
        _ => (0.0..=0.5).contains(&ls),
    };
    if !ls_ok {
        return Err(TrainError::Invalid(format!(
            "dpo: label_smoothing {ls} out of range for {variant:?} (0 <= ls {} 0.5)",
            if variant == DpoLoss::Robust {
                "<"
            } else {
                "<="
            }
        )));
    }
    let chosen_ratio = pi_c - ref_c;
    let rejected_ratio = pi_r - ref_r;
    let logits = chosen_ratio.clone() - rejected_ratio.clone();
    let z = logits.clone() * beta;
    let losses = match variant {
        DpoLoss::Sigmoid => log_sigmoid(z.clone()) * (-(1.0 - ls)) - log_sigmoid(z.neg()) * ls,
        DpoLoss::Ipo => (logits - 1.0 / (2.0 * beta)).square(),
        DpoLoss::Hinge => relu(z.neg() + 1.0),
        DpoLoss::Robust => {
            (log_sigmoid(z.clone()) * (-(1.0 - ls)) + log_sigmoid(z.neg()) * ls) / (1.0 - 2.0 * ls)
        }
    };
    Ok(DpoOut {
        losses,
        chosen_rewards: chosen_ratio.detach() * beta,
        rejected_rewards: rejected_ratio.detach() * beta,
    })
}

// ---------------------------------------------------------------------------------------------
// GRPO

/// Reward-spread metrics from [`grpo_advantages`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GroupStats {
    /// TRL `reward_std`: mean over samples of the std used for each sample (the group std for
    /// `Group` and `None`, the batch std for `Batch`).
    pub reward_std_mean: f64,
    /// TRL `frac_reward_zero_std`: fraction of samples whose std is 0 (`isclose`, 1e-8).
    pub frac_zero_std: f64,
}

/// Group-relative advantages, TRL `GRPOTrainer._generate_and_score_completions`: rewards come
/// in consecutive groups of `group_size` completions of one prompt; `A = r − mean(group)`,
/// divided by `std + 1e-4` unless `scale` is `None`. Standard deviations are unbiased
/// (`torch.std`); a group (or batch) of one has std 0, as TRL does for that case. A group
/// whose rewards are all equal gets advantage 0.
///
/// Errors when `group_size` is 0, the number of rewards is not a multiple of it, or a reward
/// is not finite.
pub fn grpo_advantages(
    rewards: &[f32],
    group_size: usize,
    scale: ScaleRewards,
) -> Result<(Vec<f32>, GroupStats), TrainError> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(TrainError::Invalid(format!(
            "grpo: {} rewards do not split into groups of {group_size}",
            rewards.len()
        )));
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(TrainError::Invalid(format!(
            "grpo: reward {i} is not finite ({})",
            rewards[i]
        )));
    }
    let r: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
    let batch_std = unbiased_std(&r);
    let mut advantages = Vec::with_capacity(r.len());
    let mut std_sum = 0.0;
    let mut zero_std = 0usize;
    for group in r.chunks(group_size) {
        let mean = group.iter().sum::<f64>() / group.len() as f64;
        let std = match scale {
            ScaleRewards::Batch => batch_std,
            ScaleRewards::Group | ScaleRewards::None => unbiased_std(group),
        };
        for &x in group {
            let a = x - mean;
            let a = match scale {
                ScaleRewards::None => a,
                ScaleRewards::Group | ScaleRewards::Batch => a / (std + 1e-4),
            };
            advantages.push(a as f32);
        }
        std_sum += std * group.len() as f64;
        if std.abs() <= 1e-8 {
            zero_std += group.len();
        }
    }
    let n = r.len().max(1) as f64;
    let stats = GroupStats {
        reward_std_mean: std_sum / n,
        frac_zero_std: zero_std as f64 / n,
    };
    Ok((advantages, stats))
}

/// The advantage of each completion under `estimator`; `lengths` are the completions' token
/// counts (REINFORCE++ whitens over tokens, so longer completions weigh more, as in verl).
pub fn outcome_advantages(
    estimator: AdvantageEstimator,
    rewards: &[f32],
    group_size: usize,
    scale: ScaleRewards,
    lengths: &[usize],
) -> Result<(Vec<f32>, GroupStats), TrainError> {
    match estimator {
        AdvantageEstimator::Grpo => grpo_advantages(rewards, group_size, scale),
        AdvantageEstimator::Rloo => {
            let (_, stats) = grpo_advantages(rewards, group_size, ScaleRewards::Group)?;
            Ok((rloo_advantages(rewards, group_size), stats))
        }
        AdvantageEstimator::ReinforcePp | AdvantageEstimator::ReinforcePpBaseline => {
            let (_, stats) = grpo_advantages(rewards, group_size, ScaleRewards::Group)?;
            if lengths.len() != rewards.len() {
                return Err(TrainError::Invalid(format!(
                    "reinforce_pp: {} rewards but {} completion lengths",
                    rewards.len(),
                    lengths.len()
                )));
            }
            let baseline = estimator == AdvantageEstimator::ReinforcePpBaseline;
            Ok((
                reinforce_pp_advantages(rewards, group_size, lengths, baseline),
                stats,
            ))
        }
    }
}

/// RLOO (Ahmadian et al. 2024; verl `compute_rloo_outcome_advantage`): `A_i = r_i − mean of
/// the other rewards of the group` = `(n·r_i − Σ r) / (n − 1)`. A group of one keeps its
/// reward. Groups are checked by [`grpo_advantages`] first.
pub fn rloo_advantages(rewards: &[f32], group_size: usize) -> Vec<f32> {
    rewards
        .chunks(group_size.max(1))
        .flat_map(|group| {
            let n = group.len() as f64;
            let sum: f64 = group.iter().map(|&r| r as f64).sum();
            group.iter().map(move |&r| {
                if n > 1.0 {
                    (r as f64 - (sum - r as f64) / (n - 1.0)) as f32
                } else {
                    r
                }
            })
        })
        .collect()
}

/// REINFORCE++ (Hu 2025; verl `compute_reinforce_plus_plus_outcome_advantage` and
/// `..._baseline_outcome_advantage`) for outcome rewards with γ = 1: every token of a
/// completion gets its reward (less its group's mean with `baseline`), and the values are
/// whitened over all completion tokens of the batch, verl's `masked_whiten`: mean and
/// Bessel-corrected variance over tokens, `(x − mean) / sqrt(var + 1e-8)`. Per completion this
/// is one value, each weighted by its token count.
pub fn reinforce_pp_advantages(
    rewards: &[f32],
    group_size: usize,
    lengths: &[usize],
    baseline: bool,
) -> Vec<f32> {
    let mut x: Vec<f64> = rewards.iter().map(|&r| r as f64).collect();
    if baseline {
        for group in x.chunks_mut(group_size.max(1)) {
            let mean = group.iter().sum::<f64>() / group.len() as f64;
            for v in group.iter_mut() {
                *v -= mean;
            }
        }
    }
    let tokens: f64 = lengths.iter().map(|&l| l as f64).sum();
    if tokens < 2.0 {
        return vec![0.0; rewards.len()];
    }
    let mean = x
        .iter()
        .zip(lengths)
        .map(|(v, &l)| v * l as f64)
        .sum::<f64>()
        / tokens;
    let var = x
        .iter()
        .zip(lengths)
        .map(|(v, &l)| (v - mean).powi(2) * l as f64)
        .sum::<f64>()
        / tokens
        * (tokens / (tokens - 1.0));
    let scale = 1.0 / (var + 1e-8).sqrt();
    x.iter().map(|v| ((v - mean) * scale) as f32).collect()
}

/// DAPO's soft overlong punishment (Yu et al. 2025, eq. 13; verl `overlong_buffer`): 0 up
/// to `max_len − buffer` tokens, then falling linearly to `−factor` at `max_len` (and
/// staying there beyond). Added to a completion's reward; `buffer = 0` turns it off.
pub fn overlong_penalty(len: usize, max_len: usize, buffer: usize, factor: f64) -> f32 {
    if buffer == 0 {
        return 0.0;
    }
    let start = max_len.saturating_sub(buffer);
    if len <= start {
        return 0.0;
    }
    let over = (len - start).min(buffer) as f64;
    (-(over / buffer as f64) * factor) as f32
}

/// "Beyond the 80/20 rule" (Wang et al. 2025; TRL `top_entropy_quantile`): 1 for the valid
/// tokens whose entropy is at least the `1 − top` quantile of the valid tokens' entropies
/// (`torch.quantile`, linear interpolation), 0 elsewhere, so only the top `top` share of
/// tokens by entropy trains. `entropy` and `mask` are row-major `[B, T]`.
pub fn high_entropy_mask(entropy: &[f32], mask: &[f32], top: f64) -> Vec<f32> {
    let mut valid: Vec<f64> = entropy
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m > 0.0)
        .map(|(e, _)| *e as f64)
        .collect();
    if valid.is_empty() {
        return vec![0.0; entropy.len()];
    }
    valid.sort_by(f64::total_cmp);
    let q = (1.0 - top).clamp(0.0, 1.0);
    let pos = q * (valid.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let threshold = valid[lo] + (valid[hi] - valid[lo]) * (pos - lo as f64);
    entropy
        .iter()
        .zip(mask)
        .map(|(e, m)| f32::from(u8::from(*m > 0.0 && *e as f64 >= threshold)))
        .collect()
}

/// `torch.std` (Bessel-corrected); 0 for fewer than two values.
fn unbiased_std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// The surrogate and where its ratio is taken; `cispo_max` is CISPO's cap on the weight.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PolicyObjective {
    pub loss: PolicyLoss,
    pub level: ImportanceSamplingLevel,
    pub cispo_max: f64,
}

/// Output of [`grpo_loss`].
#[derive(Debug, Clone)]
pub struct GrpoLossOut {
    /// The aggregated loss (differentiable).
    pub loss: Tensor<1>,
    /// TRL `clip_ratio/low_mean`: valid tokens with `ratio < 1 − ε_low` and `A < 0`.
    pub clip_low_frac: f64,
    /// TRL `clip_ratio/high_mean`: valid tokens with `ratio > 1 + ε_high` and `A > 0`.
    pub clip_high_frac: f64,
    /// TRL `clip_ratio/region_mean`: either of the two.
    pub clip_region_frac: f64,
    /// TRL `kl`: masked token mean of k3; `None` when no reference log-probs were given.
    pub kl_mean: Option<f64>,
}

/// TRL `GRPOTrainer._compute_loss`: `ratio = exp(lp − old_lp)` per token (or, at
/// `Sequence` level, `exp` of each completion's mean log-ratio, the same for all its tokens),
/// per token `−min(ratio·A, clamp(ratio, 1 − ε_low, 1 + ε_high)·A)` (or CISPO's
/// `−sg(min(ratio, cispo_max))·A·lp`) `+ β·k3(lp, ref_lp)`, reduced by `loss_type`. `adv` is one advantage per sequence `[B]`; with one
/// update per rollout (μ = 1) pass `old_lp = lp.clone().detach()`. `epsilon_low` is TRL
/// `epsilon` (0.2), `epsilon_high` TRL `epsilon_high` (defaults to `epsilon`; DAPO 0.28),
/// `beta` the k3 coefficient (TRL default 0), `max_completion_length` the Dr. GRPO length.
///
/// `Dapo` divides by the valid tokens of this call; TRL divides by the tokens of the whole
/// generation batch, so under gradient accumulation scale each micro-batch loss by
/// `local_tokens / total_tokens`.
///
/// Errors when `beta ≠ 0` without `ref_lp`, or for `DrGrpo` with `max_completion_length` 0.
#[allow(clippy::too_many_arguments)] // TRL's names, one per hyper-parameter
pub fn grpo_loss(
    lp: Tensor<2>,
    old_lp: Tensor<2>,
    ref_lp: Option<Tensor<2>>,
    adv: Tensor<1>,
    mask: Tensor<2>,
    epsilon_low: f64,
    epsilon_high: f64,
    beta: f64,
    loss_type: GrpoLossType,
    max_completion_length: usize,
    objective: PolicyObjective,
    token_weight: Option<Tensor<2>>,
) -> Result<GrpoLossOut, TrainError> {
    let [b, t] = lp.dims();
    if beta != 0.0 && ref_lp.is_none() {
        return Err(TrainError::Invalid(format!(
            "grpo: beta = {beta} needs reference log-probs"
        )));
    }
    if loss_type == GrpoLossType::DrGrpo && max_completion_length == 0 {
        return Err(TrainError::Invalid(
            "grpo: dr_grpo needs max_completion_length > 0".into(),
        ));
    }
    let adv = adv.reshape([b, 1]).expand([b, t]);
    let log_ratio = lp.clone() - old_lp;
    let log_ratio = match objective.level {
        ImportanceSamplingLevel::Token => log_ratio,
        ImportanceSamplingLevel::Sequence => ((log_ratio * mask.clone()).sum_dim(1)
            / mask.clone().sum_dim(1).clamp_min(1.0))
        .expand([b, t]),
    };
    let ratio = log_ratio.exp();
    let mut per_token = match objective.loss {
        PolicyLoss::Clip => {
            let clipped = ratio.clone().clamp(1.0 - epsilon_low, 1.0 + epsilon_high);
            (ratio.clone() * adv.clone())
                .min_pair(clipped * adv.clone())
                .neg()
        }
        PolicyLoss::Cispo => {
            let weight = ratio.clone().clamp_max(objective.cispo_max).detach();
            (weight * adv.clone() * lp.clone()).neg()
        }
    };
    // E.g. only the highest-entropy tokens (`top_entropy_quantile`); the KL term stays whole.
    if let Some(w) = token_weight {
        per_token = per_token * w;
    }
    let mut kl_mean = None;
    if let Some(ref_lp) = ref_lp {
        let kl = kl_k3(lp, ref_lp);
        kl_mean = Some(masked_mean(kl.clone().detach(), mask.clone()));
        if beta != 0.0 {
            per_token = per_token + kl * beta;
        }
    }
    let masked = per_token * mask.clone();
    let loss = match loss_type {
        GrpoLossType::Grpo => (masked.sum_dim(1) / mask.clone().sum_dim(1).clamp_min(1.0)).mean(),
        GrpoLossType::DrGrpo => masked.sum() / (b.max(1) * max_completion_length) as f64,
        GrpoLossType::Dapo => masked.sum() / mask.clone().sum().clamp_min(1.0),
    };

    let ratio = ratio.detach();
    let adv = adv.detach();
    let (low, high) = match objective.loss {
        PolicyLoss::Clip => (
            ratio
                .clone()
                .lower_elem(1.0 - epsilon_low)
                .bool_and(adv.clone().lower_elem(0.0)),
            ratio
                .greater_elem(1.0 + epsilon_high)
                .bool_and(adv.greater_elem(0.0)),
        ),
        // CISPO's only clip: weights capped at `cispo_max` (TRL `cispo_clip_ratio`).
        PolicyLoss::Cispo => (
            ratio.clone().lower_elem(f64::NEG_INFINITY),
            ratio.greater_elem(objective.cispo_max),
        ),
    };
    let region = low.clone().bool_or(high.clone());
    let kl = kl_mean.clone().unwrap_or_else(|| mask.zeros_like().sum());
    // The metrics in one read.
    let [clip_low_frac, clip_high_frac, clip_region_frac, kl] = super::scalars([
        masked_mean(low.float(), mask.clone()),
        masked_mean(high.float(), mask.clone()),
        masked_mean(region.float(), mask),
        kl,
    ]);
    Ok(GrpoLossOut {
        loss,
        clip_low_frac,
        clip_high_frac,
        clip_region_frac,
        kl_mean: kl_mean.map(|_| kl),
    })
}

// ---------------------------------------------------------------------------------------------
// KTO

/// Output of [`kto_loss`].
#[derive(Debug, Clone)]
pub struct KtoOut {
    /// Mean of the weighted per-example losses (differentiable).
    pub loss: Tensor<1>,
    /// `β·(log π − log π_ref)` per example (detached), desirable and undesirable apart.
    pub chosen_rewards: Vec<f64>,
    pub rejected_rewards: Vec<f64>,
}

/// TRL `KTOTrainer.kto_loss` (Ethayarajh et al. 2024): with `r = log π(y|x) − log π_ref(y|x)`
/// per example and `kl` the batch's detached KL estimate (clamped at 0), a desirable example
/// costs `w_d·(1 − σ(β·(r − kl)))` and an undesirable one `w_u·(1 − σ(β·(kl − r)))`; the loss
/// is their mean. `policy_logps`, `ref_logps`: summed completion log-probs `[B]`.
pub fn kto_loss(
    policy_logps: Tensor<1>,
    ref_logps: Tensor<1>,
    kl: f64,
    desirable: &[bool],
    beta: f64,
    desirable_weight: f64,
    undesirable_weight: f64,
) -> KtoOut {
    let device = policy_logps.device();
    let [b] = policy_logps.dims();
    let sign: Vec<f32> = desirable
        .iter()
        .map(|&d| if d { 1.0 } else { -1.0 })
        .collect();
    let weight: Vec<f32> = desirable
        .iter()
        .map(|&d| {
            if d {
                desirable_weight as f32
            } else {
                undesirable_weight as f32
            }
        })
        .collect();
    let sign = Tensor::<1>::from_data(TensorData::new(sign, [b]), &device);
    let weight = Tensor::<1>::from_data(TensorData::new(weight, [b]), &device);
    let logratio = policy_logps - ref_logps;
    // Desirable: σ(β(r − kl)); undesirable: σ(β(kl − r)) = σ(−β(r − kl)).
    let z = (logratio.clone() - kl) * sign * beta;
    let losses = (burn::tensor::activation::sigmoid(z).neg() + 1.0) * weight;
    let loss = losses.mean();
    let rewards: Vec<f64> = host_f64(logratio.detach() * beta);
    let (mut chosen_rewards, mut rejected_rewards) = (Vec::new(), Vec::new());
    for (r, d) in rewards.into_iter().zip(desirable) {
        if *d {
            chosen_rewards.push(r);
        } else {
            rejected_rewards.push(r);
        }
    }
    KtoOut {
        loss,
        chosen_rewards,
        rejected_rewards,
    }
}

fn host_f64(t: Tensor<1>) -> Vec<f64> {
    crate::engine::model::host_f32(t)
        .into_iter()
        .map(f64::from)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Auxiliary terms and metrics

/// On-policy distillation's loss, TRL's `generalized_jsd_loss` at `beta = 1` (GKD with
/// `lmbda = 1`): the reverse KL `KL(student ‖ teacher) = Σ_v p_s(v) (log p_s(v) − log p_t(v))`
/// at each position, from full-vocabulary log-probabilities `[B, T, V]`, averaged over the
/// positions where `mask` (`[B, T]`) is 1. Mode-seeking: the student is pushed off tokens the
/// teacher finds unlikely rather than spread over everything the teacher allows.
pub fn reverse_kl(student_lp: Tensor<3>, teacher_lp: Tensor<3>, mask: Tensor<2>) -> Tensor<1> {
    let p = student_lp.clone().exp();
    let per_token = (p * (student_lp - teacher_lp))
        .sum_dim(2)
        .squeeze_dim::<2>(2);
    super::masked_mean(per_token, mask)
}

/// Entropy bonus on sampled tokens (subtract `coef · bonus` from the loss). Its value is the
/// Monte Carlo estimate of the mean token entropy, the masked mean of `−lp`; its gradient is
/// the score-function estimate `mean(−lp · ∇lp)`, which equals the entropy's gradient in
/// expectation over on-policy samples (`∇H = −E[log p · ∇log p]`, as `E[∇log p] = 0`). Only
/// the sampled tokens' log-probabilities are needed, so the bonus works with the layer-wise
/// backward, which never differentiates through the full vocabulary's entropy.
pub fn entropy_bonus(lp: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let neg = lp.clone().detach().neg();
    let surrogate = neg.clone() + neg * (lp.clone() - lp.detach());
    super::masked_mean(surrogate, mask)
}

/// Demonstration NLL: masked token mean of `−lp` over demonstration tokens `[B, T]`, to add
/// as `sft_coef · demo_nll` to the GRPO loss (cf. PPO-ptx, CHORD). The same term is RPO's NLL
/// on the chosen completions (TRL `DPOTrainer` `rpo_alpha` / `loss_type=["sigmoid", "sft"]`).
pub fn demo_nll(lp_demo: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    masked_mean(lp_demo.neg(), mask)
}

/// Entropy of the next-token distribution per position, `−Σ_v p_v log p_v`: `[B, T, V]`
/// logits to `[B, T]` (TRL `entropy_from_logits`). For metrics; pass detached logits (or
/// logits from a non-autodiff forward) so no graph is kept for it.
pub fn token_entropy(logits: Tensor<3>) -> Tensor<2> {
    let logp = log_softmax(logits, 2);
    let p = logp.clone().exp();
    (p * logp).sum_dim(2).squeeze_dim::<2>(2).neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::host_f32;

    const TOL: f64 = 1e-5;

    fn dev() -> Device {
        Device::flex()
    }

    fn t2(rows: &[Vec<f64>], device: &Device) -> Tensor<2> {
        let b = rows.len();
        let t = rows.first().map_or(0, Vec::len);
        let data: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(data, [b, t]), device)
    }

    fn t1(v: &[f64], device: &Device) -> Tensor<1> {
        let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(data, [v.len()]), device)
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        host_f32(t).into_iter().map(|x| x as f64).collect()
    }

    fn close(what: &str, got: f64, want: f64) {
        assert!(
            (got - want).abs() <= TOL,
            "{what}: got {got}, want {want} (diff {})",
            (got - want).abs()
        );
    }

    fn close_all(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            close(&format!("{what}[{i}]"), *g, *w);
        }
    }

    // Plain f64 references, written from the formulas.

    fn ref_log_sigmoid(x: f64) -> f64 {
        if x >= 0.0 {
            -(-x).exp().ln_1p()
        } else {
            x - x.exp().ln_1p()
        }
    }

    fn ref_masked_mean(v: &[Vec<f64>], m: &[Vec<f64>]) -> f64 {
        let mut s = 0.0;
        let mut n = 0.0;
        for (vr, mr) in v.iter().zip(m) {
            for (x, k) in vr.iter().zip(mr) {
                s += x * k;
                n += k;
            }
        }
        s / f64::max(n, 1.0)
    }

    fn ref_k3(lp: f64, rf: f64) -> f64 {
        let r = rf - lp;
        r.exp() - r - 1.0
    }

    fn map2(a: &[Vec<f64>], b: &[Vec<f64>], f: impl Fn(f64, f64) -> f64) -> Vec<Vec<f64>> {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.iter().zip(y).map(|(&p, &q)| f(p, q)).collect())
            .collect()
    }

    fn flat(v: &[Vec<f64>]) -> Vec<f64> {
        v.iter().flatten().copied().collect()
    }

    #[test]
    fn kl_estimators_match_formulas() {
        let d = dev();
        let lp = vec![vec![-1.0, -2.5, -0.3], vec![-4.0, -0.01, -1.7]];
        let rf = vec![vec![-1.2, -2.0, -0.3], vec![-3.1, -0.5, -2.9]];
        let k1 = map2(&lp, &rf, |a, b| a - b);
        let k2 = map2(&lp, &rf, |a, b| 0.5 * (a - b) * (a - b));
        let k3 = map2(&lp, &rf, ref_k3);
        close_all("k1", &host(kl_k1(t2(&lp, &d), t2(&rf, &d))), &flat(&k1));
        close_all("k2", &host(kl_k2(t2(&lp, &d), t2(&rf, &d))), &flat(&k2));
        close_all("k3", &host(kl_k3(t2(&lp, &d), t2(&rf, &d))), &flat(&k3));
        for (est, want) in [
            (KlEstimator::K1, &k1),
            (KlEstimator::K2, &k2),
            (KlEstimator::K3, &k3),
        ] {
            let got = host(est.per_token(t2(&lp, &d), t2(&rf, &d)));
            close_all(&format!("{est:?}"), &got, &flat(want));
        }
        // k3 is never negative, k1 can be.
        assert!(flat(&k3).iter().all(|&x| x >= 0.0));
        assert!(flat(&k1).iter().any(|&x| x < 0.0));
        assert_eq!(serde_json::to_string(&KlEstimator::K3).unwrap(), "\"k3\"");
        let k: KlEstimator = serde_json::from_str("\"k1\"").unwrap();
        assert_eq!(k, KlEstimator::K1);
    }

    #[test]
    fn whiten_matches_masked_whiten() {
        let d = dev();
        let v = vec![vec![1.0, 2.0, 4.0, 100.0], vec![-1.0, 0.5, -7.0, -7.0]];
        let m = vec![vec![1.0, 1.0, 1.0, 0.0], vec![1.0, 1.0, 0.0, 0.0]];
        let valid: Vec<f64> = flat(&v)
            .into_iter()
            .zip(flat(&m))
            .filter(|(_, k)| *k > 0.0)
            .map(|(x, _)| x)
            .collect();
        let n = valid.len() as f64;
        let mean = valid.iter().sum::<f64>() / n;
        let var = valid.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        for shift in [true, false] {
            let want: Vec<f64> = flat(&v)
                .iter()
                .zip(flat(&m))
                .map(|(&x, k)| {
                    let w = (x - mean) / (var + 1e-8).sqrt() + if shift { 0.0 } else { mean };
                    w * k
                })
                .collect();
            let got = host(whiten(t2(&v, &d), t2(&m, &d), shift));
            close_all(&format!("whiten shift={shift}"), &got, &want);
        }
        // One valid token: 0 rather than TRL's error.
        let one = whiten(t2(&[vec![3.0, 9.0]], &d), t2(&[vec![1.0, 0.0]], &d), true);
        close_all("single", &host(one), &[0.0, 0.0]);
    }

    #[test]
    fn gae_hand_computed_case() {
        // γ = 0.9, λ = 0.8, r = [1, 2], V = [0.5, 1.0]:
        // t=1: δ = 2 − 1 = 1, A = 1, R = 2
        // t=0: δ = 1 + 0.9·1 − 0.5 = 1.4, A = 1.4 + 0.72·1 = 2.12, R = 2.62
        let (a, r) = gae(&[vec![1.0, 2.0]], &[vec![0.5, 1.0]], 0.9, 0.8).unwrap();
        let a: Vec<f64> = a[0].iter().map(|&x| x as f64).collect();
        let r: Vec<f64> = r[0].iter().map(|&x| x as f64).collect();
        close_all("adv", &a, &[2.12, 1.0]);
        close_all("ret", &r, &[2.62, 2.0]);
    }

    #[test]
    fn gae_matches_discounted_td_sum_on_ragged_rows() {
        let rewards = vec![vec![0.1, -0.2, 0.0, 0.3, 1.5], vec![-0.05, 0.2, 2.0]];
        let values = vec![vec![0.4, 0.3, 0.5, 0.9, 1.1], vec![0.0, -0.3, 0.7]];
        let (gamma, lambda) = (0.99, 0.95);
        let to32 = |x: &Vec<Vec<f64>>| -> Vec<Vec<f32>> {
            x.iter()
                .map(|r| r.iter().map(|&v| v as f32).collect())
                .collect()
        };
        let (adv, ret) = gae(&to32(&rewards), &to32(&values), gamma, lambda).unwrap();
        for (row, (r, v)) in rewards.iter().zip(&values).enumerate() {
            let n = r.len();
            assert_eq!(adv[row].len(), n);
            // A_t = Σ_l (γλ)^l δ_{t+l}, with V after the end = 0.
            let delta: Vec<f64> = (0..n)
                .map(|t| {
                    let next = if t + 1 < n { v[t + 1] } else { 0.0 };
                    r[t] + gamma * next - v[t]
                })
                .collect();
            for t in 0..n {
                let want: f64 = (t..n)
                    .map(|k| (gamma * lambda).powi((k - t) as i32) * delta[k])
                    .sum();
                close(&format!("adv[{row}][{t}]"), adv[row][t] as f64, want);
                close(&format!("ret[{row}][{t}]"), ret[row][t] as f64, want + v[t]);
            }
        }
        assert!(gae(&[vec![1.0]], &[vec![1.0, 2.0]], 1.0, 1.0).is_err());
        assert!(gae(&[vec![1.0]], &[], 1.0, 1.0).is_err());
    }

    /// Policy inputs covering: A > 0 clipped above, A < 0 clipped below, A > 0 with a small
    /// ratio (unclipped), A < 0 with a large ratio (unclipped), near-1 ratios, and padding
    /// holding wild values that must not count.
    fn ppo_case() -> [Vec<Vec<f64>>; 4] {
        let lp = vec![
            vec![-1.0, -2.0, -0.5, -3.0, -1.0],
            vec![-0.7, -1.5, -2.2, -9.0, -9.0],
        ];
        let old = vec![
            vec![-1.5, -1.5, -0.55, -3.5, -1.3],
            vec![-0.2, -1.0, -2.6, -1.0, -1.0],
        ];
        let adv = vec![
            vec![1.0, -0.8, 0.3, -1.2, 2.0],
            vec![-0.5, 0.9, 0.4, 50.0, -50.0],
        ];
        let mask = vec![vec![1.0, 1.0, 1.0, 1.0, 1.0], vec![1.0, 1.0, 1.0, 0.0, 0.0]];
        [lp, old, adv, mask]
    }

    #[test]
    fn ppo_policy_loss_matches_reference() {
        let d = dev();
        let [lp, old, adv, mask] = ppo_case();
        for eps in [0.2, 0.1] {
            let mut pg = Vec::new();
            let mut clipped = Vec::new();
            let mut kl = Vec::new();
            let mut ratios = Vec::new();
            for i in 0..lp.len() {
                let (mut p, mut c, mut k, mut q) = (vec![], vec![], vec![], vec![]);
                for t in 0..lp[i].len() {
                    let ratio = (lp[i][t] - old[i][t]).exp();
                    let a = adv[i][t];
                    let l1 = -a * ratio;
                    let l2 = -a * ratio.clamp(1.0 - eps, 1.0 + eps);
                    p.push(l1.max(l2));
                    c.push(if l2 > l1 { 1.0 } else { 0.0 });
                    k.push(0.5 * (lp[i][t] - old[i][t]).powi(2));
                    q.push(ratio);
                }
                pg.push(p);
                clipped.push(c);
                kl.push(k);
                ratios.push(q);
            }
            let out = ppo_policy_loss(t2(&lp, &d), t2(&old, &d), t2(&adv, &d), t2(&mask, &d), eps);
            close("pg loss", scalar(out.loss), ref_masked_mean(&pg, &mask));
            let clipfrac = ref_masked_mean(&clipped, &mask);
            close("clipfrac", out.clipfrac, clipfrac);
            close("approx_kl", out.approx_kl, ref_masked_mean(&kl, &mask));
            close(
                "ratio_mean",
                out.ratio_mean,
                ref_masked_mean(&ratios, &mask),
            );
            // Both clipped and unclipped tokens are present.
            assert!(clipfrac > 0.0 && clipfrac < 1.0, "clipfrac {clipfrac}");
        }
    }

    #[test]
    fn ppo_value_loss_matches_reference() {
        let d = dev();
        let v: Vec<Vec<f64>> = vec![vec![0.95, 1.9, -0.3, 0.0], vec![2.0, 0.1, 7.0, 7.0]];
        let old = vec![vec![0.4, 1.0, 0.2, 0.0], vec![1.5, 0.15, 0.0, 0.0]];
        let ret = vec![vec![1.0, 1.1, 0.5, 0.0], vec![0.0, 0.1, -3.0, -3.0]];
        let mask = vec![vec![1.0, 1.0, 1.0, 0.0], vec![1.0, 1.0, 0.0, 0.0]];
        let c = 0.2;
        let mut loss = Vec::new();
        let mut frac = Vec::new();
        for i in 0..v.len() {
            let (mut l, mut f) = (vec![], vec![]);
            for t in 0..v[i].len() {
                let vc = v[i][t].clamp(old[i][t] - c, old[i][t] + c);
                let l1 = (v[i][t] - ret[i][t]).powi(2);
                let l2 = (vc - ret[i][t]).powi(2);
                l.push(l1.max(l2));
                f.push(if l2 > l1 { 1.0 } else { 0.0 });
            }
            loss.push(l);
            frac.push(f);
        }
        let (got, got_frac) =
            ppo_value_loss(t2(&v, &d), t2(&old, &d), t2(&ret, &d), t2(&mask, &d), c);
        close("vf loss", scalar(got), 0.5 * ref_masked_mean(&loss, &mask));
        let want_frac = ref_masked_mean(&frac, &mask);
        close("vf clipfrac", got_frac, want_frac);
        assert!(want_frac > 0.0 && want_frac < 1.0);
    }

    #[test]
    fn adaptive_kl_updates_and_clips() {
        let mut kl = AdaptiveKl::new(0.2, 6.0, 10_000).unwrap();
        // 9 / 6 − 1 = 0.5, clipped to 0.2.
        kl.update(9.0, 256);
        let mut want = 0.2 * (1.0 + 0.2 * 256.0 / 10_000.0);
        close("after 1", kl.value, want);
        // 5.4 / 6 − 1 = −0.1, inside the clip.
        kl.update(5.4, 512);
        want *= 1.0 + (5.4 / 6.0 - 1.0) * 512.0 / 10_000.0;
        close("after 2", kl.value, want);
        // 0 / 6 − 1 = −1, clipped to −0.2.
        kl.update(0.0, 100);
        want *= 1.0 - 0.2 * 100.0 / 10_000.0;
        close("after 3", kl.value, want);
        kl.update(f64::NAN, 100);
        close("NaN ignored", kl.value, want);

        assert!(AdaptiveKl::new(0.2, 0.0, 10).is_err());
        assert!(AdaptiveKl::new(0.2, 6.0, 0).is_err());
        assert!(AdaptiveKl::new(f64::NAN, 6.0, 10).is_err());

        let mut fixed = KlController::Fixed(FixedKl { value: 0.05 });
        fixed.update(100.0, 1000);
        close("fixed", fixed.value(), 0.05);

        let ctl = KlController::Adaptive(kl);
        let json = serde_json::to_string(&ctl).unwrap();
        assert!(json.contains("\"type\":\"adaptive\""), "{json}");
        let back: KlController = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ctl);
        let mut back = back;
        back.update(12.0, 10_000);
        close("resumed", back.value(), want * 1.2);
    }

    #[test]
    fn bt_loss_with_margin_and_centering() {
        let d = dev();
        let rc = [1.5, -0.2, 0.3, 4.0];
        let rr = [0.5, 0.4, 0.3, -3.0];
        let margin = [0.5, 0.0, 1.0, 2.0];
        let coef = 0.01;
        let n = rc.len() as f64;
        let nll = |m: &[f64]| -> f64 {
            (0..rc.len())
                .map(|i| -ref_log_sigmoid(rc[i] - rr[i] - m[i]))
                .sum::<f64>()
                / n
        };
        let center = (0..rc.len()).map(|i| (rc[i] + rr[i]).powi(2)).sum::<f64>() / n;

        let plain = bt_loss(t1(&rc, &d), t1(&rr, &d), None, None);
        close("plain", scalar(plain), nll(&[0.0; 4]));
        let with_margin = bt_loss(t1(&rc, &d), t1(&rr, &d), Some(t1(&margin, &d)), None);
        close("margin", scalar(with_margin), nll(&margin));
        let full = bt_loss(t1(&rc, &d), t1(&rr, &d), Some(t1(&margin, &d)), Some(coef));
        close("margin+center", scalar(full), nll(&margin) + coef * center);
    }

    #[test]
    fn dpo_variants_match_reference() {
        let d = dev();
        let pi_c = [-10.0, -22.5, -5.0];
        let pi_r = [-12.0, -20.0, -5.5];
        let ref_c = [-11.0, -21.0, -5.25];
        let ref_r = [-11.5, -21.5, -5.0];
        let beta = 0.1;
        for variant in [
            DpoLoss::Sigmoid,
            DpoLoss::Ipo,
            DpoLoss::Hinge,
            DpoLoss::Robust,
        ] {
            for ls in [0.0, 0.1] {
                let want: Vec<f64> = (0..3)
                    .map(|i| {
                        let h = (pi_c[i] - pi_r[i]) - (ref_c[i] - ref_r[i]);
                        let z = beta * h;
                        match variant {
                            DpoLoss::Sigmoid => {
                                -ref_log_sigmoid(z) * (1.0 - ls) - ref_log_sigmoid(-z) * ls
                            }
                            DpoLoss::Ipo => (h - 1.0 / (2.0 * beta)).powi(2),
                            DpoLoss::Hinge => f64::max(0.0, 1.0 - z),
                            DpoLoss::Robust => {
                                (-ref_log_sigmoid(z) * (1.0 - ls) + ref_log_sigmoid(-z) * ls)
                                    / (1.0 - 2.0 * ls)
                            }
                        }
                    })
                    .collect();
                let out = dpo(
                    t1(&pi_c, &d),
                    t1(&pi_r, &d),
                    t1(&ref_c, &d),
                    t1(&ref_r, &d),
                    beta,
                    ls,
                    variant,
                )
                .unwrap();
                close_all(&format!("{variant:?} ls={ls}"), &host(out.losses), &want);
                let cr: Vec<f64> = (0..3).map(|i| beta * (pi_c[i] - ref_c[i])).collect();
                let rr: Vec<f64> = (0..3).map(|i| beta * (pi_r[i] - ref_r[i])).collect();
                close_all("chosen rewards", &host(out.chosen_rewards), &cr);
                close_all("rejected rewards", &host(out.rejected_rewards), &rr);
            }
        }
        // Label smoothing changes sigmoid and robust, not hinge.
        let run = |variant, ls| {
            host(
                dpo(
                    t1(&pi_c, &d),
                    t1(&pi_r, &d),
                    t1(&ref_c, &d),
                    t1(&ref_r, &d),
                    beta,
                    ls,
                    variant,
                )
                .unwrap()
                .losses,
            )
        };
        assert!((run(DpoLoss::Sigmoid, 0.0)[0] - run(DpoLoss::Sigmoid, 0.1)[0]).abs() > 1e-3);
        assert!((run(DpoLoss::Robust, 0.0)[0] - run(DpoLoss::Robust, 0.1)[0]).abs() > 1e-3);
        assert_eq!(
            serde_json::to_string(&DpoLoss::Robust).unwrap(),
            "\"robust\""
        );
    }

    #[test]
    fn dpo_rejects_bad_hyperparameters() {
        let d = dev();
        let x = || t1(&[-1.0], &d);
        assert!(dpo(x(), x(), x(), x(), 0.0, 0.0, DpoLoss::Sigmoid).is_err());
        assert!(dpo(x(), x(), x(), x(), f64::NAN, 0.0, DpoLoss::Ipo).is_err());
        assert!(dpo(x(), x(), x(), x(), 0.1, 0.5, DpoLoss::Robust).is_err());
        assert!(dpo(x(), x(), x(), x(), 0.1, -0.1, DpoLoss::Sigmoid).is_err());
        assert!(dpo(x(), x(), x(), x(), 0.1, 0.5, DpoLoss::Sigmoid).is_ok());
    }

    #[test]
    fn grpo_advantages_for_each_scale() {
        // Groups of 3; the middle group has all-equal rewards (std 0).
        let rewards = [1.0f32, 0.0, 0.5, 0.7, 0.7, 0.7, 0.2, 0.9, 0.4];
        let r: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
        let std = |xs: &[f64]| {
            let n = xs.len() as f64;
            let m = xs.iter().sum::<f64>() / n;
            (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        let group_stds: Vec<f64> = r.chunks(3).map(std).collect();
        let batch_std = std(&r);
        for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
            let (adv, stats) = grpo_advantages(&rewards, 3, scale).unwrap();
            let mut want = Vec::new();
            for (g, group) in r.chunks(3).enumerate() {
                let mean = group.iter().sum::<f64>() / 3.0;
                for &x in group {
                    want.push(match scale {
                        ScaleRewards::Group => (x - mean) / (group_stds[g] + 1e-4),
                        ScaleRewards::Batch => (x - mean) / (batch_std + 1e-4),
                        ScaleRewards::None => x - mean,
                    });
                }
            }
            let got: Vec<f64> = adv.iter().map(|&x| x as f64).collect();
            close_all(&format!("{scale:?}"), &got, &want);
            // The zero-std group gets advantage 0 under every scaling.
            close_all("zero-std group", &got[3..6], &[0.0; 3]);
            match scale {
                ScaleRewards::Batch => {
                    close("batch reward_std", stats.reward_std_mean, batch_std);
                    close("batch frac_zero_std", stats.frac_zero_std, 0.0);
                }
                ScaleRewards::Group | ScaleRewards::None => {
                    let mean_std = group_stds.iter().sum::<f64>() / 3.0;
                    close("reward_std", stats.reward_std_mean, mean_std);
                    close("frac_zero_std", stats.frac_zero_std, 1.0 / 3.0);
                }
            }
        }
        assert_eq!(
            serde_json::to_string(&ScaleRewards::None).unwrap(),
            "\"none\""
        );
    }

    /// RLOO against the leave-one-out mean computed directly.
    #[test]
    fn rloo_is_the_reward_less_the_others_mean() {
        let rewards = [1.0f32, 0.0, 0.5, 0.0, 2.0, 2.0, -1.0, 3.0];
        let got = rloo_advantages(&rewards, 4);
        let mut want = Vec::new();
        for g in rewards.chunks(4) {
            for (i, r) in g.iter().enumerate() {
                let others: Vec<f64> = g
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, x)| *x as f64)
                    .collect();
                want.push(*r as f64 - others.iter().sum::<f64>() / others.len() as f64);
            }
        }
        close_all(
            "rloo",
            &got.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &want,
        );
        // The advantages of a group sum to zero.
        close("rloo sum", got[..4].iter().map(|&x| x as f64).sum(), 0.0);
    }

    /// REINFORCE++ (with and without the group baseline) against verl's token-level
    /// `masked_whiten`, written out over explicit token rows with a mask.
    #[test]
    fn reinforce_pp_whitens_over_the_batch_tokens() {
        let rewards = [1.0f32, 0.0, 0.0, 1.0, 0.5, 0.25];
        let lengths = [3usize, 1, 4, 2, 5, 1];
        let max_len = *lengths.iter().max().unwrap();
        for baseline in [false, true] {
            let got = reinforce_pp_advantages(&rewards, 3, &lengths, baseline);
            // Token rows: each completion's score broadcast over its tokens, masked.
            let mut scores: Vec<f64> = rewards.iter().map(|&r| r as f64).collect();
            if baseline {
                for g in scores.chunks_mut(3) {
                    let m = g.iter().sum::<f64>() / 3.0;
                    g.iter_mut().for_each(|v| *v -= m);
                }
            }
            let values: Vec<Vec<f64>> = scores.iter().map(|s| vec![*s; max_len]).collect();
            let mask: Vec<Vec<f64>> = lengths
                .iter()
                .map(|&l| (0..max_len).map(|t| f64::from(u8::from(t < l))).collect())
                .collect();
            let mean = ref_masked_mean(&values, &mask);
            let centered: Vec<Vec<f64>> = values
                .iter()
                .map(|r| r.iter().map(|v| (v - mean).powi(2)).collect())
                .collect();
            let n: f64 = mask.iter().flatten().sum();
            let var = ref_masked_mean(&centered, &mask) * n / (n - 1.0);
            let want: Vec<f64> = scores
                .iter()
                .map(|s| (s - mean) / (var + 1e-8).sqrt())
                .collect();
            close_all(
                &format!("reinforce_pp baseline={baseline}"),
                &got.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                &want,
            );
        }
    }

    /// DAPO's soft overlong punishment against its formula: R = 0 for |y| <= L_max − L_cache,
    /// ((L_max − L_cache) − |y|) / L_cache inside the buffer, −1 beyond L_max (times the factor).
    #[test]
    fn overlong_penalty_follows_dapo() {
        let (max, buf) = (20, 8);
        for len in 0..30usize {
            let want = if len <= max - buf {
                0.0
            } else if len <= max {
                ((max - buf) as f64 - len as f64) / buf as f64
            } else {
                -1.0
            };
            close(
                &format!("len {len}"),
                overlong_penalty(len, max, buf, 0.5) as f64,
                0.5 * want,
            );
        }
        assert_eq!(overlong_penalty(40, 20, 0, 1.0), 0.0);
    }

    /// The top-entropy mask against `torch.quantile` worked by hand: valid entropies
    /// 0.1, 0.2, 0.4, 0.8, 1.6; the 0.6 quantile (top 40 %) sits at position 2.4 of the sorted
    /// values, 0.4 + 0.4·(0.8 − 0.4) = 0.56, so 0.8 and 1.6 train; padding never does.
    #[test]
    fn high_entropy_mask_keeps_the_top_share_of_valid_tokens() {
        let entropy = [0.4f32, 1.6, 9.0, 0.1, 0.8, 0.2];
        let mask = [1.0f32, 1.0, 0.0, 1.0, 1.0, 1.0];
        assert_eq!(
            high_entropy_mask(&entropy, &mask, 0.4),
            vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
        );
        // Everything valid at top = 1; nothing without valid tokens.
        assert_eq!(
            high_entropy_mask(&entropy, &mask, 1.0),
            vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
        );
        assert_eq!(high_entropy_mask(&entropy, &[0.0; 6], 0.2), vec![0.0; 6]);
    }

    /// KTO's loss and rewards against TRL's formula, and its gradient: for a desirable example
    /// d/dlogπ = −w_d·β·σ'(β(r − kl)) / B, for an undesirable one +w_u·β·σ'(β(kl − r)) / B.
    #[test]
    fn kto_loss_matches_trl() {
        let d = Device::flex().autodiff();
        let policy = [-3.0, -5.5, -2.0, -7.0];
        let reference = [-3.4, -5.0, -2.5, -6.0];
        let desirable = [true, false, true, false];
        let (beta, kl, wd, wu) = (0.3, 0.15, 1.0, 1.5);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let lp = t1(&policy, &d).require_grad();
        let out = kto_loss(lp.clone(), t1(&reference, &d), kl, &desirable, beta, wd, wu);
        let b = policy.len() as f64;
        let (mut want, mut grad) = (0.0, Vec::new());
        for i in 0..policy.len() {
            let r = policy[i] - reference[i];
            if desirable[i] {
                let s = sig(beta * (r - kl));
                want += wd * (1.0 - s);
                grad.push(-wd * beta * s * (1.0 - s) / b);
            } else {
                let s = sig(beta * (kl - r));
                want += wu * (1.0 - s);
                grad.push(wu * beta * s * (1.0 - s) / b);
            }
        }
        close("kto loss", scalar(out.loss.clone()), want / b);
        close_all(
            "chosen rewards",
            &out.chosen_rewards,
            &[beta * 0.4, beta * 0.5],
        );
        close_all(
            "rejected rewards",
            &out.rejected_rewards,
            &[-0.5 * beta, -beta],
        );
        let grads = out.loss.backward();
        let got = host(lp.grad(&grads).expect("gradient"));
        close_all("kto grad", &got, &grad);
    }

    /// Reverse KL from logits, in f64: per position `Σ_v p_s (log p_s − log p_t)`, its masked
    /// mean, and the gradient with respect to the student's logits,
    /// `p_s,v · ((log p_s,v − log p_t,v) − KL) / N` at each counted position (0 elsewhere).
    #[test]
    fn reverse_kl_matches_gkd_at_beta_1() {
        let d = Device::flex().autodiff();
        let student = [
            [[0.2, -1.0, 0.5], [1.5, 0.0, -0.3]],
            [[-0.7, 0.4, 0.9], [0.0, 0.0, 2.0]],
        ];
        let teacher = [
            [[0.0, -0.5, 1.0], [0.3, 0.3, -1.0]],
            [[1.0, -2.0, 0.1], [0.5, -0.5, 0.0]],
        ];
        let mask = [[1.0, 1.0], [0.0, 1.0]];
        let log_softmax64 = |z: &[f64; 3]| {
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            z.map(|x| x - lse)
        };
        let n: f64 = mask.iter().flatten().sum();
        let (mut want, mut grad) = (0.0, Vec::new());
        for b in 0..2 {
            for t in 0..2 {
                let (ls, lt) = (log_softmax64(&student[b][t]), log_softmax64(&teacher[b][t]));
                let kl: f64 = (0..3).map(|v| ls[v].exp() * (ls[v] - lt[v])).sum();
                want += mask[b][t] * kl;
                for v in 0..3 {
                    grad.push(mask[b][t] * ls[v].exp() * ((ls[v] - lt[v]) - kl) / n);
                }
            }
        }
        let t3 = |x: &[[[f64; 3]; 2]; 2]| {
            let data: Vec<f32> = x.iter().flatten().flatten().map(|&v| v as f32).collect();
            Tensor::<3>::from_data(TensorData::new(data, [2, 2, 3]), &d)
        };
        let logits = t3(&student).require_grad();
        let student_lp = log_softmax(logits.clone(), 2);
        let teacher_lp = log_softmax(t3(&teacher), 2);
        let mask_t = t2(&mask.map(|r| r.to_vec()), &d);
        let loss = reverse_kl(student_lp, teacher_lp, mask_t);
        close("reverse kl", scalar(loss.clone()), want / n);
        let grads = loss.backward();
        close_all(
            "reverse kl grad",
            &host(logits.grad(&grads).expect("gradient")),
            &grad,
        );
    }

    /// The entropy bonus's value is the masked mean of `−lp`, its gradient `−lp / N` at each
    /// counted token (the score-function estimate of the entropy's gradient).
    #[test]
    fn entropy_bonus_is_the_sampled_estimate() {
        let d = Device::flex().autodiff();
        let lp = [vec![-0.5, -2.0, -1.0], vec![-3.0, -0.1, -0.7]];
        let mask = [vec![1.0, 1.0, 0.0], vec![1.0, 0.0, 1.0]];
        let n = 4.0;
        let x = t2(&lp, &d).require_grad();
        let bonus = entropy_bonus(x.clone(), t2(&mask, &d));
        let want: f64 = lp
            .iter()
            .flatten()
            .zip(mask.iter().flatten())
            .map(|(l, m)| -l * m)
            .sum::<f64>()
            / n;
        close("entropy bonus", scalar(bonus.clone()), want);
        let grads = bonus.backward();
        let expect: Vec<f64> = lp
            .iter()
            .flatten()
            .zip(mask.iter().flatten())
            .map(|(l, m)| -l * m / n)
            .collect();
        close_all(
            "entropy bonus grad",
            &host(x.grad(&grads).expect("gradient")),
            &expect,
        );
    }

    #[test]
    fn the_estimators_are_chosen_by_name() {
        let rewards = [1.0f32, 0.0, 1.0, 1.0];
        let lengths = [2usize, 2, 2, 2];
        let by = |e| outcome_advantages(e, &rewards, 2, ScaleRewards::Group, &lengths);
        assert_eq!(
            by(AdvantageEstimator::Rloo).unwrap().0,
            rloo_advantages(&rewards, 2)
        );
        assert_eq!(
            by(AdvantageEstimator::Grpo).unwrap(),
            grpo_advantages(&rewards, 2, ScaleRewards::Group).unwrap()
        );
        // Same reward spread metrics whatever the estimator.
        assert_eq!(
            by(AdvantageEstimator::ReinforcePp).unwrap().1,
            by(AdvantageEstimator::Grpo).unwrap().1
        );
        assert!(
            outcome_advantages(
                AdvantageEstimator::ReinforcePp,
                &rewards,
                2,
                ScaleRewards::Group,
                &[1]
            )
            .is_err()
        );
        let names: Vec<AdvantageEstimator> =
            ["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
                .iter()
                .map(|n| serde_json::from_value(serde_json::json!(n)).unwrap())
                .collect();
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn grpo_advantages_rejects_bad_groups() {
        assert!(grpo_advantages(&[1.0, 2.0, 3.0], 2, ScaleRewards::Group).is_err());
        assert!(grpo_advantages(&[1.0, 2.0], 0, ScaleRewards::Group).is_err());
        assert!(grpo_advantages(&[1.0, f32::NAN], 2, ScaleRewards::Group).is_err());
        // A group of one: std 0, advantage 0 (TRL's eval case).
        let (adv, stats) = grpo_advantages(&[3.0, 5.0], 1, ScaleRewards::Group).unwrap();
        assert_eq!(adv, vec![0.0, 0.0]);
        close("frac", stats.frac_zero_std, 1.0);
    }

    /// GRPO inputs: 3 sequences of valid lengths 4, 2 and 3 (padding holds wild values),
    /// ratios on both sides of `[1 − ε_low, 1 + ε_high]` with both advantage signs.
    fn grpo_case() -> [Vec<Vec<f64>>; 4] {
        let lp = vec![
            vec![-1.0, -0.5, -2.0, -0.9],
            vec![-1.2, -0.3, 5.0, 5.0],
            vec![-0.6, -2.4, -1.1, -7.0],
        ];
        let old = vec![
            vec![-1.4, -0.45, -1.7, -0.9],
            vec![-0.8, -0.6, -1.0, -1.0],
            vec![-0.55, -2.9, -0.7, -1.0],
        ];
        let rf = vec![
            vec![-1.1, -0.7, -1.8, -1.3],
            vec![-1.0, -0.2, -1.0, -1.0],
            vec![-0.9, -2.0, -1.0, -1.0],
        ];
        let mask = vec![
            vec![1.0, 1.0, 1.0, 1.0],
            vec![1.0, 1.0, 0.0, 0.0],
            vec![1.0, 1.0, 1.0, 0.0],
        ];
        [lp, old, rf, mask]
    }

    /// The hyper-parameters of [`grpo_loss`], bundled for the tests.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct GrpoLossConfig {
        /// Lower clip `ε_low` (TRL `epsilon`, default 0.2).
        epsilon_low: f64,
        /// Upper clip `ε_high` (TRL `epsilon_high`, defaults to `epsilon`; DAPO uses 0.28).
        epsilon_high: f64,
        /// KL coefficient on the k3 term (TRL default 0.0).
        beta: f64,
        loss_type: GrpoLossType,
        /// Denominator length for [`GrpoLossType::DrGrpo`] (TRL `max_completion_length`).
        max_completion_length: usize,
    }

    impl Default for GrpoLossConfig {
        fn default() -> Self {
            Self {
                epsilon_low: 0.2,
                epsilon_high: 0.2,
                beta: 0.0,
                loss_type: GrpoLossType::Dapo,
                max_completion_length: 256,
            }
        }
    }

    fn run_grpo(
        lp: Tensor<2>,
        old: Tensor<2>,
        rf: Option<Tensor<2>>,
        adv: Tensor<1>,
        mask: Tensor<2>,
        cfg: &GrpoLossConfig,
    ) -> Result<GrpoLossOut, TrainError> {
        grpo_loss(
            lp,
            old,
            rf,
            adv,
            mask,
            cfg.epsilon_low,
            cfg.epsilon_high,
            cfg.beta,
            cfg.loss_type,
            cfg.max_completion_length,
            PolicyObjective::default(),
            None,
        )
    }

    const GRPO_ADV: [f64; 3] = [1.0, -0.5, 0.8];

    /// Per-token GRPO loss, low/high clip indicators.
    type GrpoRef = (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>);

    fn ref_grpo_tokens(
        lp: &[Vec<f64>],
        old: &[Vec<f64>],
        rf: &[Vec<f64>],
        cfg: &GrpoLossConfig,
    ) -> GrpoRef {
        let (mut loss, mut low, mut high) = (vec![], vec![], vec![]);
        for i in 0..lp.len() {
            let a = GRPO_ADV[i];
            let (mut l, mut lo, mut hi) = (vec![], vec![], vec![]);
            for t in 0..lp[i].len() {
                let ratio = (lp[i][t] - old[i][t]).exp();
                let clipped = ratio.clamp(1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high);
                let pg = -f64::min(ratio * a, clipped * a);
                l.push(pg + cfg.beta * ref_k3(lp[i][t], rf[i][t]));
                lo.push(f64::from(ratio < 1.0 - cfg.epsilon_low && a < 0.0));
                hi.push(f64::from(ratio > 1.0 + cfg.epsilon_high && a > 0.0));
            }
            loss.push(l);
            low.push(lo);
            high.push(hi);
        }
        (loss, low, high)
    }

    fn ref_grpo_aggregate(per_token: &[Vec<f64>], mask: &[Vec<f64>], cfg: &GrpoLossConfig) -> f64 {
        let b = per_token.len() as f64;
        let total: f64 = per_token
            .iter()
            .zip(mask)
            .flat_map(|(l, m)| l.iter().zip(m).map(|(x, k)| x * k))
            .sum();
        let tokens: f64 = mask.iter().flatten().sum();
        match cfg.loss_type {
            GrpoLossType::Grpo => {
                per_token
                    .iter()
                    .zip(mask)
                    .map(|(l, m)| {
                        let s: f64 = l.iter().zip(m).map(|(x, k)| x * k).sum();
                        s / m.iter().sum::<f64>()
                    })
                    .sum::<f64>()
                    / b
            }
            GrpoLossType::DrGrpo => total / (b * cfg.max_completion_length as f64),
            GrpoLossType::Dapo => total / tokens,
        }
    }

    #[test]
    fn grpo_loss_aggregations_match_reference() {
        let d = dev();
        let [lp, old, rf, mask] = grpo_case();
        for loss_type in [GrpoLossType::Grpo, GrpoLossType::DrGrpo, GrpoLossType::Dapo] {
            for beta in [0.0, 0.04] {
                let cfg = GrpoLossConfig {
                    epsilon_low: 0.2,
                    epsilon_high: 0.28,
                    beta,
                    loss_type,
                    max_completion_length: 6,
                };
                let (per_token, low, high) = ref_grpo_tokens(&lp, &old, &rf, &cfg);
                let out = run_grpo(
                    t2(&lp, &d),
                    t2(&old, &d),
                    Some(t2(&rf, &d)),
                    t1(&GRPO_ADV, &d),
                    t2(&mask, &d),
                    &cfg,
                )
                .unwrap();
                let what = format!("{loss_type:?} beta={beta}");
                close(
                    &what,
                    scalar(out.loss),
                    ref_grpo_aggregate(&per_token, &mask, &cfg),
                );
                let want_low = ref_masked_mean(&low, &mask);
                let want_high = ref_masked_mean(&high, &mask);
                close("clip low", out.clip_low_frac, want_low);
                close("clip high", out.clip_high_frac, want_high);
                close("clip region", out.clip_region_frac, want_low + want_high);
                assert!(want_low > 0.0 && want_high > 0.0);
                let kl = map2(&lp, &rf, ref_k3);
                close(
                    "kl",
                    out.kl_mean.expect("kl with ref"),
                    ref_masked_mean(&kl, &mask),
                );
            }
        }
        // The three aggregations really differ on ragged masks.
        let cfg = |loss_type| GrpoLossConfig {
            loss_type,
            max_completion_length: 6,
            ..GrpoLossConfig::default()
        };
        let (pt, _, _) = ref_grpo_tokens(&lp, &old, &rf, &cfg(GrpoLossType::Grpo));
        let g = ref_grpo_aggregate(&pt, &mask, &cfg(GrpoLossType::Grpo));
        let dr = ref_grpo_aggregate(&pt, &mask, &cfg(GrpoLossType::DrGrpo));
        let da = ref_grpo_aggregate(&pt, &mask, &cfg(GrpoLossType::Dapo));
        assert!((g - dr).abs() > 1e-3 && (g - da).abs() > 1e-3 && (dr - da).abs() > 1e-3);
    }

    #[test]
    fn grpo_loss_without_reference() {
        let d = dev();
        let [lp, old, _, mask] = grpo_case();
        let cfg = GrpoLossConfig::default();
        let out = run_grpo(
            t2(&lp, &d),
            t2(&old, &d),
            None,
            t1(&GRPO_ADV, &d),
            t2(&mask, &d),
            &cfg,
        )
        .unwrap();
        assert!(out.kl_mean.is_none());
        let (pt, _, _) = ref_grpo_tokens(&lp, &old, &lp, &cfg);
        close(
            "dapo",
            scalar(out.loss),
            ref_grpo_aggregate(&pt, &mask, &cfg),
        );

        let with_beta = GrpoLossConfig { beta: 0.1, ..cfg };
        let err = run_grpo(
            t2(&lp, &d),
            t2(&old, &d),
            None,
            t1(&GRPO_ADV, &d),
            t2(&mask, &d),
            &with_beta,
        );
        assert!(err.is_err());
        let dr = GrpoLossConfig {
            loss_type: GrpoLossType::DrGrpo,
            max_completion_length: 0,
            ..cfg
        };
        let err = run_grpo(
            t2(&lp, &d),
            t2(&old, &d),
            None,
            t1(&GRPO_ADV, &d),
            t2(&mask, &d),
            &dr,
        );
        assert!(err.is_err());
        assert_eq!(
            serde_json::to_string(&GrpoLossType::DrGrpo).unwrap(),
            "\"dr_grpo\""
        );
    }

    #[test]
    fn demo_nll_is_masked_token_mean() {
        let d = dev();
        let lp = vec![vec![-0.5, -1.5, -3.0], vec![-0.1, -20.0, -20.0]];
        let mask = vec![vec![1.0, 1.0, 1.0], vec![1.0, 0.0, 0.0]];
        let want = (0.5 + 1.5 + 3.0 + 0.1) / 4.0;
        close("demo", scalar(demo_nll(t2(&lp, &d), t2(&mask, &d))), want);
    }

    #[test]
    fn token_entropy_matches_reference() {
        let d = dev();
        // [B=2, T=2, V=3]
        let logits = [
            [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
            [[10.0, -10.0, 0.5], [-1.0, 4.0, 2.0]],
        ];
        let mut want = Vec::new();
        for row in &logits {
            for pos in row {
                let max = pos.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = pos.iter().map(|x| (x - max).exp()).sum();
                let h: f64 = pos
                    .iter()
                    .map(|x| {
                        let p = (x - max).exp() / z;
                        -p * p.ln()
                    })
                    .sum();
                want.push(h);
            }
        }
        let data: Vec<f32> = logits
            .iter()
            .flatten()
            .flatten()
            .map(|&x| x as f32)
            .collect();
        let t = Tensor::<3>::from_data(TensorData::new(data, [2, 2, 3]), &d);
        let got = host(token_entropy(t));
        close_all("entropy", &got, &want);
        close("uniform", got[1], 3f64.ln());
    }

    #[test]
    fn ppo_policy_gradient_matches_hand_derivative() {
        let d = Device::flex().autodiff();
        let [lp, old, adv, mask] = ppo_case();
        let eps = 0.2;
        let lp_t = t2(&lp, &d).require_grad();
        let out = ppo_policy_loss(lp_t.clone(), t2(&old, &d), t2(&adv, &d), t2(&mask, &d), eps);
        let grads = out.loss.backward();
        let got = host(lp_t.grad(&grads).expect("gradient for lp"));
        // d/dlp of max(−A·ρ, −A·clip(ρ)): −A·ρ/n where the unclipped term is active, else 0.
        let n: f64 = mask.iter().flatten().sum();
        let mut want = Vec::new();
        for i in 0..lp.len() {
            for t in 0..lp[i].len() {
                let ratio = (lp[i][t] - old[i][t]).exp();
                let a = adv[i][t];
                let l1 = -a * ratio;
                let l2 = -a * ratio.clamp(1.0 - eps, 1.0 + eps);
                let active = l1 >= l2;
                want.push(if active {
                    -a * ratio / n * mask[i][t]
                } else {
                    0.0
                });
            }
        }
        close_all("d loss / d lp", &got, &want);
        assert!(want.iter().filter(|&&g| g == 0.0).count() > 2);
    }

    /// GSPO (sequence-level ratio) and CISPO (capped, stop-gradient weight), token-mean
    /// (`dapo`) aggregation: loss values and gradients against references written from TRL's
    /// `_compute_loss`. GSPO's ratio is `exp(mean_t (lp − old))` per completion; CISPO's loss is
    /// `−sg(min(ρ, cap))·A·lp`, whose gradient is `−sg(min(ρ, cap))·A / n`.
    #[test]
    fn gspo_and_cispo_match_trl_formulas() {
        let d = Device::flex().autodiff();
        let [lp, old, _, mask] = grpo_case();
        let n: f64 = mask.iter().flatten().sum();
        let seq_ratio: Vec<f64> = (0..lp.len())
            .map(|i| {
                let (s, k) = (0..lp[i].len()).fold((0.0, 0.0), |(s, k), t| {
                    (s + (lp[i][t] - old[i][t]) * mask[i][t], k + mask[i][t])
                });
                (s / f64::max(k, 1.0)).exp()
            })
            .collect();
        let cases = [
            (PolicyLoss::Clip, ImportanceSamplingLevel::Sequence),
            (PolicyLoss::Cispo, ImportanceSamplingLevel::Token),
            (PolicyLoss::Cispo, ImportanceSamplingLevel::Sequence),
        ];
        for (loss, level) in cases {
            let objective = PolicyObjective {
                loss,
                level,
                cispo_max: 1.1,
            };
            let lp_t = t2(&lp, &d).require_grad();
            let out = grpo_loss(
                lp_t.clone(),
                t2(&old, &d),
                None,
                t1(&GRPO_ADV, &d),
                t2(&mask, &d),
                0.2,
                0.28,
                0.0,
                GrpoLossType::Dapo,
                0,
                objective,
                None,
            )
            .unwrap();
            let (mut value, mut grad, mut capped) = (0.0, Vec::new(), 0.0);
            for i in 0..lp.len() {
                let a = GRPO_ADV[i];
                for t in 0..lp[i].len() {
                    let m = mask[i][t];
                    let ratio = match level {
                        ImportanceSamplingLevel::Token => (lp[i][t] - old[i][t]).exp(),
                        ImportanceSamplingLevel::Sequence => seq_ratio[i],
                    };
                    match loss {
                        PolicyLoss::Clip => {
                            let clipped = ratio.clamp(0.8, 1.28);
                            value += -f64::min(ratio * a, clipped * a) * m;
                            // The row's loss counts once per token (len times) and its ratio
                            // moves with each token's log-ratio by ratio/len: each token gets
                            // −A·ratio/n while the unclipped term is the smaller, else 0.
                            let active = ratio * a <= clipped * a;
                            grad.push(if active { -a * ratio * m / n } else { 0.0 });
                        }
                        PolicyLoss::Cispo => {
                            let w = ratio.min(1.1);
                            value += -w * a * lp[i][t] * m;
                            grad.push(-w * a / n * m);
                            capped += f64::from(ratio > 1.1) * m;
                        }
                    }
                }
            }
            let what = format!("{loss:?} {level:?}");
            close(&what, scalar(out.loss.clone()), value / n);
            let grads = out.loss.backward();
            let got = host(lp_t.grad(&grads).expect("gradient for lp"));
            close_all(&format!("{what} grad"), &got, &grad);
            if loss == PolicyLoss::Cispo {
                close(&format!("{what} capped"), out.clip_high_frac, capped / n);
                close(&format!("{what} low"), out.clip_low_frac, 0.0);
            }
        }
    }

    #[test]
    fn grpo_gradient_matches_finite_difference() {
        let d = Device::flex().autodiff();
        let [lp, old, rf, mask] = grpo_case();
        for loss_type in [GrpoLossType::Grpo, GrpoLossType::Dapo] {
            let cfg = GrpoLossConfig {
                epsilon_low: 0.2,
                epsilon_high: 0.28,
                beta: 0.04,
                loss_type,
                max_completion_length: 6,
            };
            let lp_t = t2(&lp, &d).require_grad();
            let out = run_grpo(
                lp_t.clone(),
                t2(&old, &d),
                Some(t2(&rf, &d)),
                t1(&GRPO_ADV, &d),
                t2(&mask, &d),
                &cfg,
            )
            .unwrap();
            let grads = out.loss.backward();
            let got = host(lp_t.grad(&grads).expect("gradient for lp"));
            let f = |x: &[Vec<f64>]| {
                let (pt, _, _) = ref_grpo_tokens(x, &old, &rf, &cfg);
                ref_grpo_aggregate(&pt, &mask, &cfg)
            };
            let h = 1e-6;
            let mut want = Vec::new();
            for i in 0..lp.len() {
                for t in 0..lp[i].len() {
                    let mut up = lp.clone();
                    up[i][t] += h;
                    let mut down = lp.clone();
                    down[i][t] -= h;
                    want.push((f(&up) - f(&down)) / (2.0 * h));
                }
            }
            close_all(&format!("{loss_type:?} grad"), &got, &want);
        }
    }
}
