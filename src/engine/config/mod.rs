//! Run configs: one TOML file per run, with TRL's option names where TRL has them. Unknown keys
//! are errors, so a typo never silently falls back to a default.

pub mod methods;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::model::WeightDtype;
use crate::engine::model::precision::Precision;

use crate::engine::optim::OptimConfig;
use crate::engine::sample::SamplingParams;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A metrics sink besides `metrics.jsonl` (`[train] report_to`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportTo {
    /// TensorBoard event files in the run folder.
    Tensorboard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Supervised fine-tuning on TRL-format text / messages / prompt+completion data.
    Sft,
    /// Trains rlft's own tokenizer and a model from scratch on plain text (`rlft pretrain`).
    Pretrain,
    /// Group Relative Policy Optimization on prompts with reward sources.
    Grpo,
    /// Bradley-Terry reward model on preference pairs (TRL's `RewardTrainer`).
    Rm,
    /// Direct Preference Optimization on preference pairs (TRL's `DPOTrainer`).
    Dpo,
    /// PPO for RLHF with a value model and KL-penalised rewards (TRL's `PPOTrainer`).
    Ppo,
    /// DPO on pairs the policy writes as it trains, labelled live by an AI judge (RLAIF) or
    /// people (TRL's `OnlineDPOTrainer`).
    OnlineDpo,
    /// KTO on unpaired answers marked desirable or not (TRL's `KTOTrainer`).
    Kto,
    /// On-policy distillation: the student samples, a teacher scores the tokens, the loss is
    /// the per-token reverse KL (TRL's `GKDTrainer` with `lmbda = 1`, `beta = 1`).
    Distill,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Pretrain => "pretrain",
            Method::Grpo => "grpo",
            Method::Rm => "rm",
            Method::Dpo => "dpo",
            Method::Ppo => "ppo",
            Method::OnlineDpo => "online_dpo",
            Method::Kto => "kto",
            Method::Distill => "distill",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub method: Method,
    /// Run name; the run folder is named after it. Defaults to the config file's stem.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub samples: SamplesSection,
    /// Whether the run's samples become pairs for people to label.
    #[serde(default)]
    pub pairs: PairsSection,
    /// GRPO settings (TRL's `GRPOConfig` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<methods::GrpoSection>,
    /// Reward-model settings (TRL's `RewardConfig` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm: Option<methods::RmSection>,
    /// DPO settings (TRL's `DPOConfig` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<methods::DpoSection>,
    /// PPO settings (TRL's `PPOConfig` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppo: Option<methods::PpoSection>,
    /// KTO settings (TRL's `KTOConfig` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kto: Option<methods::KtoSection>,
    /// On-policy distillation settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<methods::DistillSection>,
    /// Online DPO settings (TRL's `OnlineDPOConfig` names where TRL has them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_dpo: Option<methods::OnlineDpoSection>,
    /// PPO only: retrain the reward model from live labels (RLHF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlhf: Option<methods::RlhfSection>,
    /// The AI judge that labels pairs (RLAIF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<crate::engine::judge::JudgeConfig>,
    /// Health warnings call a command or a webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<crate::engine::alerts::AlertsSection>,
    /// LoRA adapters on the policy (PEFT's `LoraConfig` names); the base model is frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::engine::model::lora::LoraConfig>,
    /// Reward sources, summed with their weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewards: Vec<crate::engine::reward::RewardConfig>,
    /// Only for `method = "pretrain"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainSection>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face model folder or a `.gguf` file.
    #[serde(default)]
    pub path: PathBuf,
    /// A PEFT LoRA adapter folder to start from (trained further, the base frozen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
    /// How frozen weights are stored: `"f32"` (default), `"bf16"` or `"f16"` (half the
    /// memory, computed in f32): a LoRA run's base, the reference copy, reward and judge
    /// models. Weights that train stay f32.
    #[serde(default, skip_serializing_if = "WeightDtype::is_f32")]
    pub dtype: WeightDtype,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// TRL-format JSONL.
    #[serde(default)]
    pub train: PathBuf,
    #[serde(default)]
    pub eval: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    pub max_steps: usize,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub max_length: usize,
    pub packing: bool,
    pub completion_only_loss: bool,
    pub assistant_only_loss: bool,
    /// Evaluate every N steps (0 = never).
    pub eval_steps: usize,
    /// Evaluate once before the first step, so curves start from the model as loaded
    /// (verl's `val_before_train`; RL methods).
    pub eval_before_train: bool,
    /// Completions per held-out prompt: 1 decodes greedily; more are sampled at the training
    /// temperature and give `pass@k` and `mean@k` (RL methods).
    pub num_eval_generations: usize,
    /// Keep the checkpoint with the best value of this metric in `checkpoints/best` (never
    /// pruned), e.g. `"eval/rewards/exact_match/mean"` (HF's `metric_for_best_model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_best: Option<String>,
    /// Whether a larger `keep_best` value is better (HF's name).
    pub greater_is_better: bool,
    /// Where metrics go besides `metrics.jsonl` (HF's name): `["tensorboard"]` also writes
    /// TensorBoard event files in the run folder (TensorBoard and `wandb sync` read them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub report_to: Vec<ReportTo>,
    /// Save a checkpoint every N steps (0 = only at the end).
    pub save_steps: usize,
    /// Keep the newest N step checkpoints (older ones are deleted; `final` is always kept).
    pub save_total_limit: usize,
    /// Keep only each decoder layer's input and compute the gradients layer by layer
    /// (`algo::layerwise`: SFT, DPO, online DPO, GRPO); reward-model and PPO training use
    /// Burn's balanced checkpointing instead.
    pub gradient_checkpointing: bool,
    /// With `gradient_checkpointing`, recompute only the first N decoder layers; the later
    /// ones keep their activations (faster, more memory). Default: every layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradient_checkpointing_layers: Option<usize>,
    /// `"f32"` (default) or `"f16"`: mixed precision on a GPU (f16 products, f32 master
    /// weights and AdamW, dynamic loss scaling; see `model::precision::Precision`); on the
    /// CPU, f16 storage of frozen weights with f32 compute.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// Why `lora_dropout` and `gradient_checkpointing` do not mix (yet).
pub const DROPOUT_WITH_CHECKPOINTING: &str = "[lora] lora_dropout > 0 with [train] gradient_checkpointing = true is not supported: the \
     recomputed pass would draw other dropout masks than the forward pass, so the gradients \
     would be wrong; set lora_dropout = 0 (TRL's LoRA-without-regret recipe uses none) or \
     turn checkpointing off";

impl TrainSection {
    /// How many decoder layers the layer-wise backward recomputes (`algo::layerwise`): None
    /// without checkpointing, else `gradient_checkpointing_layers` or all of them.
    pub fn recompute(&self) -> Option<usize> {
        self.gradient_checkpointing
            .then(|| self.gradient_checkpointing_layers.unwrap_or(usize::MAX))
    }

    /// The autodiff device training runs on. With `gradient_checkpointing`, an algorithm
    /// that `recomputes_layers` itself (`algo::layerwise`: SFT, DPO, online DPO, GRPO) gets
    /// the plain autodiff device; the others get Burn's checkpointing strategy.
    pub fn train_device(
        &self,
        device: &burn::prelude::Device,
        recomputes_layers: bool,
    ) -> burn::prelude::Device {
        let device = device.clone().autodiff();
        if self.gradient_checkpointing && !recomputes_layers {
            device.gradient_checkpointing()
        } else {
            device
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            max_steps: 100,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            max_length: 256,
            packing: false,
            completion_only_loss: true,
            assistant_only_loss: false,
            eval_steps: 0,
            eval_before_train: true,
            num_eval_generations: 1,
            keep_best: None,
            greater_is_better: true,
            report_to: Vec::new(),
            save_steps: 0,
            save_total_limit: 2,
            gradient_checkpointing: false,
            gradient_checkpointing_layers: None,
            precision: Precision::F32,
        }
    }
}

/// Generations recorded during training for the Samples pane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplesSection {
    /// Every N steps (0 = never).
    pub every: usize,
    pub prompts: Vec<String>,
    /// Wrap prompts in the model's chat template.
    pub chat: bool,
    #[serde(flatten)]
    pub sampling: SamplingParams,
}

impl Default for SamplesSection {
    fn default() -> Self {
        Self {
            every: 0,
            prompts: Vec::new(),
            chat: false,
            sampling: SamplingParams {
                max_new_tokens: 32,
                temperature: 0.0,
                ..Default::default()
            },
        }
    }
}

/// A setting's value as a config spells it (`"dapo"`, not the Rust name `Dapo`), for messages.
pub fn setting_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// Pairs a run proposes for labelling from its samples (the Pairs pane, `rlft label`).
///
/// Off by default: a GRPO run samples dozens of completions a step, and pairing them all
/// floods the labelling queue with pairs nothing trains on. A PPO run with `[rlhf]` (which
/// retrains its reward model from these labels) proposes 4 a step unless told otherwise.
/// Online DPO proposes its own pairs (`[online_dpo] labeler`), so this does not apply to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairsSection {
    /// Most pairs proposed per step from that step's samples (0 = none).
    pub per_step: Option<usize>,
}

/// `rlft pretrain`: corpus, tokenizer and architecture of a model trained from scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSection {
    /// Plain-text files; each is split into paragraphs.
    pub corpus: Vec<PathBuf>,
    /// Generated `a+b=c` lines mixed into the corpus so RL tasks have something to improve.
    #[serde(default)]
    pub arithmetic_lines: usize,
    /// Largest operand of the generated sums.
    #[serde(default = "default_max_operand")]
    pub arithmetic_max_operand: u32,
    pub vocab_size: usize,
    /// Where the finished model folder is written.
    pub output: PathBuf,
    /// Hugging Face `config.json` fields of the new model (`hidden_size`, ...).
    pub architecture: toml::Table,
    /// Fraction of the corpus held out for eval loss.
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
}

fn default_max_operand() -> u32 {
    99
}
fn default_eval_fraction() -> f64 {
    0.02
}

impl RunConfig {
    /// How frozen weights are stored: `[model] dtype`, or f16 under `precision = "f16"` when
    /// no narrower type was asked for.
    pub fn frozen_dtype(&self) -> WeightDtype {
        if self.model.dtype.is_f32() && !self.train.precision.is_f32() {
            WeightDtype::F16
        } else {
            self.model.dtype
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text).map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })?;
        if cfg.name.is_none() {
            cfg.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# could not serialise: {e}\n"))
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.method.name())
    }

    /// Pairs proposed per step from the run's samples (see [`PairsSection`]).
    pub fn pairs_per_step(&self) -> usize {
        match (self.method, self.pairs.per_step) {
            (Method::OnlineDpo, _) => 0,
            (_, Some(n)) => n,
            (Method::Ppo, None) if self.rlhf.is_some() => 4,
            _ => 0,
        }
    }

    /// The files the config names exist: checked before a run folder is made, so a typo in a
    /// path leaves nothing behind and fails once, naming the setting.
    pub fn check_files(&self) -> Result<(), String> {
        let mut named: Vec<(&str, &Path)> = Vec::new();
        if self.method != Method::Pretrain {
            named.push(("[model] path", &self.model.path));
            named.push(("[data] train", &self.data.train));
            if let Some(e) = &self.data.eval {
                named.push(("[data] eval", e));
            }
        }
        if let Some(a) = &self.model.adapter {
            named.push(("[model] adapter", a));
        }
        if let Some(d) = &self.distill {
            named.push(("[distill] teacher", &d.teacher));
        }
        for (what, path) in named {
            if !path.as_os_str().is_empty() && !path.exists() {
                return Err(format!(
                    "{what} = \"{}\": no such file or folder",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(a) = &self.alerts {
            a.validate()?;
        }
        let t = &self.train;
        if t.per_device_train_batch_size == 0 || t.gradient_accumulation_steps == 0 {
            return Err(
                "[train] batch size and gradient_accumulation_steps must be positive".into(),
            );
        }
        if t.max_length < 2 {
            return Err("[train] max_length must be at least 2".into());
        }
        if !(self.optim.learning_rate > 0.0 && self.optim.learning_rate.is_finite()) {
            return Err("[optim] learning_rate must be a positive number".into());
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
            if lora.lora_dropout > 0.0 && t.gradient_checkpointing {
                return Err(DROPOUT_WITH_CHECKPOINTING.into());
            }
        }
        if self.method == Method::Pretrain && (self.lora.is_some() || self.model.adapter.is_some())
        {
            return Err(
                "pretraining trains a model from scratch: [lora] and [model] adapter do not apply"
                    .into(),
            );
        }
        if let Some(adapter) = &self.model.adapter
            && self.lora.is_some()
        {
            return Err(format!(
                "[model] adapter = \"{}\" and a [lora] section: train the saved adapter (drop \
                 [lora]) or a new one (drop adapter)",
                adapter.display()
            ));
        }
        match self.method {
            Method::Sft
            | Method::Grpo
            | Method::Rm
            | Method::Dpo
            | Method::Ppo
            | Method::OnlineDpo
            | Method::Kto
            | Method::Distill => {
                if self.model.path.as_os_str().is_empty() {
                    return Err("[model] path is required (a model folder or .gguf file)".into());
                }
                if self.data.train.as_os_str().is_empty() {
                    return Err("[data] train is required (a TRL-format JSONL file)".into());
                }
                if self.method == Method::Grpo && self.rewards.is_empty() {
                    return Err("GRPO needs at least one [[rewards]] source".into());
                }
                if self.method == Method::Grpo {
                    let g = self.grpo.clone().unwrap_or_default();
                    let batch = t.per_device_train_batch_size;
                    if g.num_generations < 2 || !batch.is_multiple_of(g.num_generations) {
                        return Err(format!(
                            "[train] per_device_train_batch_size ({batch}) must be a multiple of \
                             [grpo] num_generations ({}), which must be at least 2: each prompt \
                             gets num_generations completions",
                            g.num_generations
                        ));
                    }
                }
                if self.method == Method::Ppo && self.rewards.is_empty() {
                    return Err("PPO needs at least one [[rewards]] source (typically \
                                type = \"reward_model\")"
                        .into());
                }
            }
            Method::Pretrain => {
                if self.pretrain.is_none() {
                    return Err("method \"pretrain\" needs a [pretrain] section".into());
                }
            }
        }
        if let Some(rm) = &self.rm {
            rm.validate()?;
        }
        if let Some(dpo) = &self.dpo {
            dpo.validate()?;
        }
        if let Some(kto) = &self.kto {
            kto.validate()?;
        }
        if self.method == Method::Distill {
            let d = self.distill.as_ref().ok_or(
                "method \"distill\" needs a [distill] section with teacher = \"<model folder or \
                 .gguf>\"",
            )?;
            if d.teacher.as_os_str().is_empty() {
                return Err(
                    "[distill] teacher is required (a model folder or .gguf file with \
                            the student's tokenizer)"
                        .into(),
                );
            }
            if d.num_generations == 0 || d.max_completion_length == 0 {
                return Err(
                    "[distill] num_generations and max_completion_length must be positive".into(),
                );
            }
            if !t
                .per_device_train_batch_size
                .is_multiple_of(d.num_generations)
            {
                return Err(format!(
                    "[train] per_device_train_batch_size ({}) must be a multiple of [distill] \
                     num_generations ({})",
                    t.per_device_train_batch_size, d.num_generations
                ));
            }
        }
        if let Some(r) = &self.rlhf {
            if self.method != Method::Ppo {
                return Err("[rlhf] is for method = \"ppo\"".into());
            }
            r.validate()?;
        }
        if self.method == Method::OnlineDpo && self.pairs.per_step.is_some_and(|n| n > 0) {
            return Err(
                "[pairs] per_step does not apply to online DPO, which proposes its own \
                        pairs (see [online_dpo] labeler and queue_limit)"
                    .into(),
            );
        }
        if self.method == Method::OnlineDpo {
            self.online_dpo
                .clone()
                .unwrap_or_default()
                .validate(self.judge.is_some())?;
        }
        Ok(())
    }

    /// Relative paths are taken from the current directory when they exist there (configs
    /// name `assets/...` from the repository root), else from the config file's folder.
    fn resolve_paths(&mut self, config_dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.as_os_str().is_empty() || p.is_absolute() || p.exists() {
                return;
            }
            let alt = config_dir.join(&*p);
            if alt.exists() {
                *p = alt;
            }
        };
        fix(&mut self.model.path);
        if let Some(a) = self.model.adapter.as_mut() {
            fix(a);
        }
        fix(&mut self.data.train);
        if let Some(e) = self.data.eval.as_mut() {
            fix(e);
        }
        if let Some(p) = self.pretrain.as_mut() {
            p.corpus.iter_mut().for_each(fix);
        }
        for r in &mut self.rewards {
            if let crate::engine::reward::RewardConfig::RewardModel(c) = r {
                fix(&mut c.path);
            }
            if let crate::engine::reward::RewardConfig::Sentiment(c) = r {
                c.lexicon.iter_mut().for_each(fix);
            }
        }
        if let Some(v) = self.ppo.as_mut().and_then(|p| p.value_model.as_mut()) {
            fix(v);
        }
        if let Some(crate::engine::judge::JudgeConfig::Model(j)) = self.judge.as_mut() {
            fix(&mut j.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_from_samples_are_off_unless_asked_and_never_for_online_dpo() {
        let base = "[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n[[rewards]]\ntype = \"exact_match\"\n";
        let per_step = |head: &str, tail: &str| {
            RunConfig::from_toml(&format!("{head}\n{base}{tail}")).map(|c| c.pairs_per_step())
        };
        assert_eq!(per_step("method = \"grpo\"", ""), Ok(0));
        assert_eq!(
            per_step("method = \"grpo\"", "[pairs]\nper_step = 3\n"),
            Ok(3)
        );
        assert_eq!(per_step("method = \"ppo\"", "[rlhf]\n"), Ok(4));
        let err = per_step("method = \"online_dpo\"", "[pairs]\nper_step = 2\n").unwrap_err();
        assert!(err.contains("[pairs] per_step"), "{err}");
    }

    #[test]
    fn a_grpo_batch_that_is_not_a_multiple_of_num_generations_is_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("grpo-bad.toml");
        std::fs::write(
            &path,
            "method = \"grpo\"\n[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n\
             [train]\nper_device_train_batch_size = 12\n[grpo]\nnum_generations = 8\n\
             [[rewards]]\ntype = \"exact_match\"\n",
        )
        .unwrap();
        let err = RunConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("grpo-bad.toml") && err.contains("multiple of [grpo] num_generations (8)"),
            "{err}"
        );
    }

    #[test]
    fn missing_files_are_named_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("train.jsonl");
        std::fs::write(&data, "{}\n").unwrap();
        let mut cfg = RunConfig::from_toml(
            "method = \"sft\"\n[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n",
        )
        .unwrap();
        cfg.model.path = tmp.path().to_path_buf();
        cfg.data.train = tmp.path().join("trian.jsonl");
        let err = cfg.check_files().unwrap_err();
        assert!(
            err.contains("[data] train") && err.contains("trian.jsonl"),
            "{err}"
        );
        cfg.data.train = data;
        assert_eq!(cfg.check_files(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = RunConfig::from_toml(
            "method = \"sft\"\n[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n[train]\nmax_step = 3\n",
        )
        .unwrap_err();
        assert!(err.contains("max_step"), "{err}");
    }

    /// `gradient_checkpointing` recomputes every layer unless `gradient_checkpointing_layers`
    /// says how many; LoRA dropout does not mix with it.
    #[test]
    fn checkpointing_settings() {
        let base = "method = \"sft\"\n[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n";
        let recompute = |train: &str| {
            RunConfig::from_toml(&format!("{base}[train]\n{train}"))
                .unwrap()
                .train
                .recompute()
        };
        assert_eq!(recompute(""), None);
        assert_eq!(
            recompute("gradient_checkpointing = true\n"),
            Some(usize::MAX)
        );
        assert_eq!(
            recompute("gradient_checkpointing = true\ngradient_checkpointing_layers = 12\n"),
            Some(12)
        );
        assert_eq!(recompute("gradient_checkpointing_layers = 12\n"), None);
        let err = RunConfig::from_toml(&format!(
            "{base}[train]\ngradient_checkpointing = true\n[lora]\nlora_dropout = 0.05\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("lora_dropout") && err.contains("gradient_checkpointing"),
            "{err}"
        );
    }

    #[test]
    fn lora_sections_are_checked_where_they_are_read() {
        let base = "method = \"sft\"\n[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n";
        let cfg = RunConfig::from_toml(&format!(
            "{base}[lora]\nr = 4\ntarget_modules = [\"q_proj\"]\n"
        ))
        .unwrap();
        assert_eq!(cfg.lora.as_ref().unwrap().r, 4);
        let err = RunConfig::from_toml(&format!("{base}[lora]\nr = 0\n")).unwrap_err();
        assert!(err.contains("[lora] r"), "{err}");
        let err = RunConfig::from_toml(&format!("{base}[lora]\nrank = 4\n")).unwrap_err();
        assert!(err.contains("rank"), "{err}");
        let err =
            RunConfig::from_toml(&format!("{base}[lora]\ntarget_modules = \"all\"\n")).unwrap_err();
        assert!(err.contains("target_modules"), "{err}");
        let both = base.replace("path = \"m\"", "path = \"m\"\nadapter = \"a\"");
        let err = RunConfig::from_toml(&format!("{both}[lora]\nr = 4\n")).unwrap_err();
        assert!(err.contains("adapter") && err.contains("[lora]"), "{err}");
    }

    #[test]
    fn sft_config_parses_with_defaults() {
        let cfg = RunConfig::from_toml(
            "method = \"sft\"\n[model]\npath = \"m\"\n[data]\ntrain = \"d.jsonl\"\n[optim]\nlearning_rate = 1e-3\n",
        )
        .unwrap();
        assert_eq!(cfg.train.max_steps, 100);
        assert_eq!(cfg.optim.learning_rate, 1e-3);
        assert!(cfg.train.completion_only_loss);
    }

    #[test]
    fn missing_data_is_a_clear_error() {
        let err = RunConfig::from_toml("method = \"sft\"\n[model]\npath = \"m\"\n").unwrap_err();
        assert!(err.contains("[data] train"), "{err}");
    }

    /// Every shipped config parses, names a method the new-run picker can show, and points at
    /// data that ships (model and reward-model folders made by other runs, and the optional
    /// SmolLM2 download, are not checked).
    #[test]
    fn every_shipped_config_parses_and_its_data_ships() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut methods = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let cfg = RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            methods.push(cfg.method);
            if cfg.method == Method::Pretrain {
                continue;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            for data in std::iter::once(&cfg.data.train).chain(cfg.data.eval.as_ref()) {
                assert!(
                    root.join(data).is_file(),
                    "{}: {}",
                    path.display(),
                    data.display()
                );
            }
        }
        for m in [
            Method::Sft,
            Method::Rm,
            Method::Ppo,
            Method::Dpo,
            Method::Grpo,
            Method::OnlineDpo,
        ] {
            assert!(methods.contains(&m), "no shipped config for {m:?}");
        }
    }
}
