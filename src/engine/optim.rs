//! AdamW with PyTorch's defaults, a warmup + cosine/linear/constant schedule, and clipping by
//! the global gradient norm (`torch.nn.utils.clip_grad_norm_`), which Burn's per-tensor
//! `Norm` clipping is not.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::model::precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    Linear,
    Cosine,
}

/// Optimiser settings with TRL / transformers `TrainingArguments` names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub learning_rate: f64,
    pub weight_decay: f32,
    pub adam_beta1: f32,
    pub adam_beta2: f32,
    pub adam_epsilon: f32,
    /// 0 disables clipping.
    pub max_grad_norm: f32,
    pub lr_scheduler_type: LrSchedule,
    pub warmup_steps: usize,
    /// Used when `warmup_steps` is 0.
    pub warmup_ratio: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            lr_scheduler_type: LrSchedule::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
        }
    }
}

impl OptimConfig {
    /// Learning rate for optimizer step `step` (0-based) of `total`: linear warmup, then
    /// transformers' linear or half-cosine decay to zero.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warmup = if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as usize
        };
        if step < warmup {
            return self.learning_rate * (step + 1) as f64 / warmup as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        let factor = match self.lr_scheduler_type {
            LrSchedule::Constant => 1.0,
            LrSchedule::Linear => (1.0 - progress).max(0.0),
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
        };
        self.learning_rate * factor
    }
}

/// AdamW plus schedule plus global-norm clipping.
pub struct Optimizer {
    inner: burn::optim::ModuleOptimizer,
    pub config: OptimConfig,
}

impl Optimizer {
    pub fn new(config: OptimConfig) -> Self {
        let inner = AdamWConfig::new()
            .with_beta_1(config.adam_beta1)
            .with_beta_2(config.adam_beta2)
            .with_epsilon(config.adam_epsilon)
            .with_weight_decay(config.weight_decay)
            .init();
        Self { inner, config }
    }

    /// Clips `grads` to the global norm, applies one AdamW step at `lr`, and returns the model
    /// with the norm before clipping. Under mixed precision the gradients come from a scaled
    /// loss (`precision::loss_scale`): they are unscaled here, and a step whose gradients
    /// overflowed is skipped (the model returned unchanged, the norm infinite or NaN).
    pub fn step<M: Module>(&mut self, lr: f64, model: M, mut grads: GradientsParams) -> (M, f32) {
        let loss_scale = precision::loss_scale();
        let norm = global_grad_norm(&model, &grads) / loss_scale;
        if !precision::record_step(norm.is_finite()) {
            return (model, norm);
        }
        let mut factor = 1.0 / loss_scale;
        let max = self.config.max_grad_norm;
        if max > 0.0 && norm.is_finite() && norm > max {
            factor *= max / (norm + 1e-6);
        }
        if factor != 1.0 {
            scale_grads(&model, &mut grads, factor);
        }
        (self.inner.step(lr, model, grads), norm)
    }

    pub fn save(&self, path: &std::path::Path) -> Result<(), String> {
        self.inner
            .save(path)
            .map_err(|e| format!("{}: saving optimizer state: {e:?}", path.display()))
    }

    pub fn load(self, path: &std::path::Path) -> Result<Self, String> {
        let config = self.config.clone();
        let inner = self
            .inner
            .load(path)
            .map_err(|e| format!("{}: loading optimizer state: {e:?}", path.display()))?;
        Ok(Self { inner, config })
    }
}

struct NormVisitor<'a> {
    grads: &'a GradientsParams,
    sum_sq: Option<Tensor<1>>,
}

impl ModuleVisitor for NormVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.cast(burn::tensor::FloatDType::F32).square().sum();
            self.sum_sq = Some(match self.sum_sq.take() {
                Some(total) => total + s,
                None => s,
            });
        }
    }
}

/// L2 norm over all parameter gradients together: summed on the device and read once (one
/// host sync per step, not one per parameter).
pub fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f32 {
    let mut v = NormVisitor {
        grads,
        sum_sq: None,
    };
    model.visit(&mut v);
    v.sum_sq.map_or(0.0, |s| s.into_scalar::<f32>().sqrt())
}

struct ScaleVisitor<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
}

impl ModuleVisitor for ScaleVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f32) {
    let mut v = ScaleVisitor { grads, factor };
    model.visit(&mut v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let cfg = OptimConfig {
            learning_rate: 1.0,
            warmup_steps: 4,
            lr_scheduler_type: LrSchedule::Cosine,
            ..Default::default()
        };
        assert!((cfg.lr_at(0, 100) - 0.25).abs() < 1e-12);
        assert!((cfg.lr_at(3, 100) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(4, 100) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(52, 100) - 0.5).abs() < 1e-12);
        assert!(cfg.lr_at(100, 100).abs() < 1e-12);
        let lin = OptimConfig {
            learning_rate: 2.0,
            ..Default::default()
        };
        assert!((lin.lr_at(25, 100) - 1.5).abs() < 1e-12);
    }
}
