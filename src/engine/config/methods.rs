//! Each method's config section (`[grpo]`, `[ppo]`, `[dpo]`, ...) and the named settings they
//! choose from. Plain data with TRL's names and defaults: the algorithms read them, and this
//! module depends on none of the algorithms, so config and training do not import each other.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Per-token KL estimator of KL(π‖π_ref) from sampled tokens (Schulman, "Approximating KL
/// divergence"); TRL `PPOConfig.kl_estimator` ("k1" | "k3"), GRPO always uses k3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `lp − ref_lp`: unbiased, can be negative per token (TRL PPO default).
    #[default]
    K1,
    /// `½ (lp − ref_lp)²`: biased, low variance.
    K2,
    /// `exp(ref_lp − lp) − (ref_lp − lp) − 1`: unbiased and never negative.
    K3,
}

/// DPO loss variant, TRL `DPOConfig.loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// `−(1−ε) log σ(βh) − ε log σ(−βh)` (DPO; cDPO when ε > 0).
    #[default]
    Sigmoid,
    /// `(h − 1/(2β))²` (IPO). TRL feeds it length-normalised log-probs: pass per-sequence
    /// *average* token log-probs for this variant, sums for the others.
    Ipo,
    /// `max(0, 1 − βh)` (SLiC).
    Hinge,
    /// `(−(1−ε) log σ(βh) + ε log σ(−βh)) / (1 − 2ε)` (robust DPO, needs ε < ½).
    Robust,
}

/// How group-relative advantages are scaled, TRL `GRPOConfig.scale_rewards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRewards {
    /// Divide by the group's standard deviation (GRPO paper; TRL default).
    #[default]
    Group,
    /// Divide by the standard deviation over the whole batch (Lite-PPO).
    Batch,
    /// No scaling (Dr. GRPO).
    None,
}

/// Advantage estimators for outcome rewards (one reward per completion, completions in
/// consecutive groups per prompt), by verl's `adv_estimator` names. Each is a small function
/// below, checked alone against a reference written from verl's `core_algos.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// Group-relative, scaled by `scale_rewards` ([`grpo_advantages`]).
    #[default]
    Grpo,
    /// REINFORCE leave-one-out: each completion's reward less the mean of the other
    /// completions of its prompt ([`rloo_advantages`]).
    Rloo,
    /// REINFORCE++: rewards whitened over every completion token of the batch
    /// ([`reinforce_pp_advantages`]).
    ReinforcePp,
    /// REINFORCE++ with a baseline: the group mean subtracted first, then the global
    /// whitening.
    ReinforcePpBaseline,
}

/// How the GRPO per-token loss is reduced, TRL `GRPOConfig.loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLossType {
    /// Mean over sequences of each sequence's token mean (DeepSeekMath GRPO).
    Grpo,
    /// Sum over all valid tokens / (B · max_completion_length) (Dr. GRPO).
    DrGrpo,
    /// Sum over all valid tokens / number of valid tokens (DAPO token-level; TRL default).
    #[default]
    Dapo,
}

/// Where the importance ratio is taken, TRL `GRPOConfig.importance_sampling_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSamplingLevel {
    /// One ratio per token (GRPO, DAPO).
    #[default]
    Token,
    /// One ratio per completion: the exponent of its mean token log-ratio (GSPO, Zheng et al.
    /// 2025), clipped as one.
    Sequence,
}

/// The policy-gradient surrogate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyLoss {
    /// PPO's clipped ratio: `−min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)`.
    #[default]
    Clip,
    /// CISPO (MiniMax-M1; TRL `loss_type = "cispo"`): `−sg(min(ρ, ε_max))·A·log π`, the
    /// importance weight capped and not differentiated, so every token keeps a gradient.
    Cispo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoSection {
    /// Completions per prompt (G).
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    /// KL coefficient; 0 loads no reference model (TRL's default).
    pub beta: f64,
    pub epsilon: f32,
    /// Upper clip (DAPO's clip-higher); defaults to `epsilon`.
    pub epsilon_high: Option<f32>,
    pub loss_type: GrpoLossType,
    /// `token` (GRPO) or `sequence` (GSPO: one clipped ratio per completion).
    pub importance_sampling_level: ImportanceSamplingLevel,
    /// `clip` (PPO's clipped ratio) or `cispo` (capped, stop-gradient weight; `epsilon_high` is
    /// the cap, 5 by default).
    pub policy_loss: PolicyLoss,
    /// Completions cut by `max_completion_length` (no end of sequence) take no part in the
    /// loss (DAPO; TRL `mask_truncated_completions`).
    pub mask_truncated_completions: bool,
    /// DAPO's soft overlong punishment: over the last `overlong_buffer_len` tokens before
    /// `max_completion_length` the reward falls linearly to `−overlong_penalty_factor` (0 = off;
    /// verl's names). Logged as `rewards/overlong/mean`.
    pub overlong_buffer_len: usize,
    pub overlong_penalty_factor: f64,
    /// DAPO's dynamic sampling: groups whose rewards are all equal are dropped and more
    /// prompts sampled until the batch is full, for at most `max_sampling_rounds` rounds.
    /// Logged as `sampling/prompts_drawn` and `sampling/rounds`.
    pub dynamic_sampling: bool,
    pub max_sampling_rounds: usize,
    /// Share of completion tokens, by highest entropy, that train (1 = all; the paper's 0.2).
    pub top_entropy_quantile: f64,
    /// Weight of the entropy bonus subtracted from the loss (verl's `entropy_coeff`; 0 = off):
    /// keeps the policy exploring. Its gradient is the sampled-token estimate (see
    /// `losses::entropy_bonus`).
    pub entropy_coef: f64,
    /// How rewards become advantages: `grpo` (group-relative, scaled by `scale_rewards`),
    /// `rloo`, `reinforce_pp`, `reinforce_pp_baseline` (verl's names).
    pub advantage_estimator: AdvantageEstimator,
    pub scale_rewards: ScaleRewards,
    /// Optimisation passes over each rollout (mu).
    pub num_iterations: usize,
    /// Weight of the NLL of reference completions, where the prompt set has them.
    pub sft_coef: f64,
    /// Generation stops at any of these (they are cut from the completion text).
    pub stop: Vec<String>,
    /// Wrap prompts in the model's chat template.
    pub chat: bool,
    /// Held-out prompts scored greedily at each eval (0 = all).
    pub eval_max_items: usize,
}

impl Default for GrpoSection {
    fn default() -> Self {
        Self {
            num_generations: 8,
            max_completion_length: 32,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: None,
            loss_type: GrpoLossType::Dapo,
            advantage_estimator: AdvantageEstimator::Grpo,
            importance_sampling_level: ImportanceSamplingLevel::Token,
            mask_truncated_completions: false,
            top_entropy_quantile: 1.0,
            entropy_coef: 0.0,
            dynamic_sampling: false,
            max_sampling_rounds: 3,
            overlong_buffer_len: 0,
            overlong_penalty_factor: 1.0,
            policy_loss: PolicyLoss::Clip,
            scale_rewards: ScaleRewards::Group,
            num_iterations: 1,
            sft_coef: 0.0,
            stop: Vec::new(),
            chat: false,
            eval_max_items: 0,
        }
    }
}

/// `[ppo]`: TRL `PPOConfig` names and defaults, except where noted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoSection {
    /// Longest completion in tokens (TRL `response_length`).
    #[serde(alias = "max_completion_length")]
    pub response_length: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    /// Generation stops at any of these (they are cut from the completion text).
    pub stop: Vec<String>,
    /// Wrap prompts in the model's chat template.
    pub chat: bool,
    /// Optimisation passes over each rollout.
    pub num_ppo_epochs: usize,
    /// Optimizer steps per pass over a rollout.
    pub num_mini_batches: usize,
    /// KL penalty coefficient β (the initial value when `adaptive_kl` is set).
    pub kl_coef: f64,
    /// `k1` (TRL default) or `k3`; `k2` also works.
    pub kl_estimator: KlEstimator,
    /// Ziegler et al.'s controller: moves β so the per-sequence KL approaches `target`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_kl: Option<AdaptiveKlSection>,
    /// Policy ratio clip ε.
    pub cliprange: f64,
    /// Value clip around the rollout's values.
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// Whiten the per-token rewards (without shifting their mean) before GAE.
    pub whiten_rewards: bool,
    /// Subtracted from the score of completions that did not end with EOS or a stop string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_eos_penalty: Option<f32>,
    /// Where the value model starts: a model folder, typically the reward model (TRL's
    /// examples do this). Default: the policy's weights with a fresh scalar head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_model: Option<PathBuf>,
    /// Value model learning rate; default `[optim] learning_rate` (TRL uses one optimizer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_learning_rate: Option<f64>,
    /// Held-out prompts decoded greedily at each eval (0 = all).
    pub eval_max_items: usize,
}

impl Default for PpoSection {
    fn default() -> Self {
        Self {
            response_length: 53,
            temperature: 0.7,
            top_k: 0,
            top_p: 1.0,
            stop: Vec::new(),
            chat: false,
            num_ppo_epochs: 4,
            num_mini_batches: 1,
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K1,
            adaptive_kl: None,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            whiten_rewards: false,
            missing_eos_penalty: None,
            value_model: None,
            value_learning_rate: None,
            eval_max_items: 0,
        }
    }
}

/// `adaptive_kl = { target = 6.0, horizon = 10000 }` (TRL v0.11 `init_kl_coef`, `target`,
/// `horizon`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveKlSection {
    /// Target KL per sequence (sum over its tokens).
    pub target: f64,
    /// In samples: β moves by at most `±20% · batch / horizon` per step.
    #[serde(default = "default_horizon")]
    pub horizon: u64,
}

fn default_horizon() -> u64 {
    10_000
}

/// `[dpo]`: TRL `DPOConfig` names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoSection {
    /// Strength of the implicit KL constraint (TRL default 0.1).
    pub beta: f64,
    pub loss_type: DpoLoss,
    /// Assumed probability that a label is flipped (cDPO / robust DPO); 0 = off.
    pub label_smoothing: f64,
    /// Weight of the NLL of the chosen completions (RPO, Pang et al. 2024); unset = off.
    pub rpo_alpha: Option<f64>,
    /// Prompts longer than this keep their last tokens; completions then get what is left
    /// of `[train] max_length`.
    pub max_prompt_length: usize,
}

impl Default for DpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            rpo_alpha: None,
            max_prompt_length: 128,
        }
    }
}

/// `[rm]`: TRL `RewardConfig` options that are not general training options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmSection {
    /// Weight of `mean((r_chosen + r_rejected)²)`, which keeps rewards centred on 0
    /// (Eisenstein et al. 2023); unset = off, as in TRL.
    pub center_rewards_coefficient: Option<f64>,
}

/// `[kto]`: TRL `KTOConfig` names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtoSection {
    pub beta: f64,
    /// Weights of the desirable and undesirable losses (TRL: keep
    /// `desirable_weight · n_desirable / (undesirable_weight · n_undesirable)` in [1, 4/3]).
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    /// Prompt tokens kept (from the end) when a row is too long.
    pub max_prompt_length: usize,
    /// Thumbs up / down from the workbench's Samples pane, trained on while the run goes on:
    /// `none`, `run` (ratings of this run's own samples) or `all` (every rating in the labels
    /// folder, whichever run wrote the sample).
    pub ratings: RatingScope,
    /// Completions the run samples each step for people to rate (with `ratings`).
    pub samples_per_step: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    /// Generation stops at any of these.
    pub stop: Vec<String>,
}

/// Which Samples-pane ratings a KTO run trains on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatingScope {
    #[default]
    None,
    Run,
    All,
}

impl Default for KtoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            max_prompt_length: 128,
            ratings: RatingScope::None,
            samples_per_step: 4,
            max_new_tokens: 16,
            temperature: 1.0,
            stop: Vec::new(),
        }
    }
}

/// Who labels the pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labeler {
    #[default]
    Judge,
    Human,
    Both,
}

/// `[online_dpo]`: TRL `OnlineDPOConfig` names where TRL has them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnlineDpoSection {
    pub beta: f64,
    pub loss_type: DpoLoss,
    /// Prompts per round; each gets two answers.
    pub prompts_per_step: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub stop: Vec<String>,
    /// Wrap prompts in the model's chat template.
    pub chat: bool,
    pub labeler: Labeler,
    /// The label log people write (default: `labels/labels.jsonl` beside the run folder,
    /// where the workbench keeps it).
    pub labels: Option<PathBuf>,
    /// Most pairs waiting for people at once; the run stops proposing more until some are
    /// labelled.
    pub queue_limit: usize,
    pub max_prompt_length: usize,
}

impl Default for OnlineDpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: DpoLoss::Sigmoid,
            prompts_per_step: 8,
            max_new_tokens: 24,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            stop: Vec::new(),
            chat: false,
            labeler: Labeler::Judge,
            labels: None,
            queue_limit: 64,
            max_prompt_length: 128,
        }
    }
}

/// `[rlhf]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlhfSection {
    /// TRL preference JSONL people's labels are folded into.
    pub labels: Option<PathBuf>,
    pub retrain_every: usize,
    pub rm_steps: usize,
    pub rm_learning_rate: f64,
    pub rm_batch_size: usize,
    /// Longest `prompt + completion` in tokens; longer pairs are left out.
    pub rm_max_length: usize,
}

impl Default for RlhfSection {
    fn default() -> Self {
        Self {
            labels: None,
            retrain_every: 16,
            rm_steps: 40,
            rm_learning_rate: 1e-4,
            rm_batch_size: 16,
            rm_max_length: 128,
        }
    }
}

/// `[distill]`: on-policy distillation (TRL's `GKDTrainer` with `lmbda = 1`, `beta = 1`;
/// prime-rl's `opd`): the student samples completions, the teacher scores every token of
/// them, and the student learns the per-token reverse KL to the teacher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillSection {
    /// The teacher: any model rlft loads (a model folder or `.gguf` file) with the student's
    /// tokenizer.
    pub teacher: PathBuf,
    /// Completions sampled per prompt.
    pub num_generations: usize,
    pub max_completion_length: usize,
    /// Sampling temperature, also applied to both models' logits in the loss (TRL's GKD).
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    /// Generation stops at any of these (they are cut from the completion text).
    pub stop: Vec<String>,
    /// Wrap prompts in the model's chat template.
    pub chat: bool,
    /// Held-out prompts scored greedily at each eval by the run's `[[rewards]]` (0 = all).
    pub eval_max_items: usize,
}

impl Default for DistillSection {
    fn default() -> Self {
        Self {
            teacher: PathBuf::new(),
            num_generations: 1,
            max_completion_length: 32,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            stop: Vec::new(),
            chat: false,
            eval_max_items: 0,
        }
    }
}
