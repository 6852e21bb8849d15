//! How frozen weights are stored (`[model] dtype`): f32, or f16 / bf16 at half the memory.
//!
//! Only weights that do not train are stored narrow: a LoRA run's base (and so its
//! reference, the same base with the adapters off), a separate reference copy, reward and
//! judge models. Their matrices (linear layers, embeddings, LM head) are kept in the narrow
//! type and widened to f32 where they are used, one matrix at a time, so every product,
//! norm, softmax and loss still runs in f32: the results differ from an f32 model only by the
//! weights' rounding (tests bound it). Norm scales and biases are vectors: they stay f32.
//!
//! On the CPU the widening costs memory bandwidth (one f32 copy of each matrix per use),
//! not accuracy; Burn's flex backend has no bf16 products of its own (it converts too).

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use super::CausalLm;

/// The storage type of frozen weights. Hugging Face's `torch_dtype` names are accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightDtype {
    #[default]
    #[serde(rename = "f32", alias = "float32", alias = "fp32")]
    F32,
    #[serde(rename = "f16", alias = "float16", alias = "fp16")]
    F16,
    #[serde(rename = "bf16", alias = "bfloat16")]
    Bf16,
}

impl WeightDtype {
    pub fn float_dtype(self) -> FloatDType {
        match self {
            WeightDtype::F32 => FloatDType::F32,
            WeightDtype::F16 => FloatDType::F16,
            WeightDtype::Bf16 => FloatDType::BF16,
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == WeightDtype::F32
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(WeightDtype::F32),
            "f16" | "float16" | "fp16" => Ok(WeightDtype::F16),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            _ => Err(format!("unknown dtype `{s}` (expected f32, bf16 or f16)")),
        }
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A parameter's value in f32, for computing with: frozen weights may be stored narrow.
/// (A cast to the type a tensor already has is free.)
pub fn f32_val<const D: usize>(param: &Param<Tensor<D>>) -> Tensor<D> {
    param.val().cast(FloatDType::F32)
}

/// `model` with every frozen matrix (a 2-D parameter that does not require a gradient)
/// stored as `dtype`; trainable parameters and vectors are left as they are.
pub fn store_frozen(model: CausalLm, dtype: WeightDtype) -> CausalLm {
    if dtype.is_f32() {
        return model;
    }
    struct Narrow(FloatDType);
    impl ModuleMapper for Narrow {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = if D == 2 && !tensor.is_require_grad() {
                tensor.cast(self.0)
            } else {
                tensor
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    model.map(&mut Narrow(dtype.float_dtype()))
}

/// Bytes the model's parameters occupy as stored.
pub fn stored_bytes(model: &CausalLm) -> usize {
    use burn::module::ModuleVisitor;
    struct Bytes(usize);
    impl ModuleVisitor for Bytes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            self.0 += value.shape().num_elements() * value.dtype().size();
        }
    }
    let mut bytes = Bytes(0);
    model.visit(&mut bytes);
    bytes.0
}

/// The precision training computes in (`[train] precision`, `--precision`).
///
/// `"f16"` on a GPU is mixed precision by hand (Burn has no autocast): parameters and AdamW
/// stay f32; matrix products (linear layers, attention, the LM head) take f16 operands;
/// norms, softmax, residuals and losses stay f32; the loss is scaled dynamically so small
/// gradients survive f16, and a step whose gradients overflow is skipped (the
/// `skipped_steps` metric). Frozen weights (reference, reward and judge models, a LoRA
/// base) are stored in f16. On the CPU (Burn's flex backend has no f16 products of its own)
/// it means f16 storage of frozen weights, with f32 compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    #[default]
    #[serde(rename = "f32", alias = "float32", alias = "fp32")]
    F32,
    #[serde(rename = "f16", alias = "float16", alias = "fp16")]
    F16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "f16" | "float16" | "fp16" => Ok(Precision::F16),
            _ => Err(format!("unknown precision `{s}` (expected f32 or f16)")),
        }
    }
}

/// PyTorch's `GradScaler` defaults: start at 2^16, halve on overflow, double after 2000
/// steps without one.
const INITIAL_LOSS_SCALE: f32 = 65_536.0;
const LOSS_SCALE_GROWTH_INTERVAL: usize = 2000;

/// Dynamic loss scaling: the loss is multiplied by `scale` before the backward pass and the
/// gradients divided by it before the optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f32,
    /// Steps since the last overflow (or the last growth).
    good_steps: usize,
    /// Steps skipped because their gradients overflowed, over the run.
    pub skipped: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: INITIAL_LOSS_SCALE,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// Records one optimizer step whose (scaled) gradients were `finite` or not; returns
    /// whether the step may be applied.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= LOSS_SCALE_GROWTH_INTERVAL {
                self.scale = (self.scale * 2.0).min(f32::MAX / 2.0);
                self.good_steps = 0;
            }
        } else {
            self.skipped += 1;
            self.scale = (self.scale * 0.5).max(1.0);
            self.good_steps = 0;
        }
        finite
    }
}

/// Mixed precision for the work done on this thread: each run trains on its own thread, so
/// a run's precision reaches every model it uses (policy, reference, reward models, judge)
/// without threading a flag through every forward pass.
#[derive(Default)]
struct Mixed {
    /// The dtype matrix products take their operands in; None: f32.
    products: Option<FloatDType>,
    scaler: Option<LossScaler>,
}

thread_local! {
    static MIXED: std::cell::RefCell<Mixed> = std::cell::RefCell::default();
}

/// Mixed precision is on for this thread until the guard drops.
pub struct MixedPrecisionGuard(());

impl Drop for MixedPrecisionGuard {
    fn drop(&mut self) {
        MIXED.with(|m| *m.borrow_mut() = Mixed::default());
    }
}

/// Turns `precision` on for this thread's work on `device`: f16 products and loss scaling
/// where the device computes in f16; nothing on the CPU (f32 compute, see [`Precision`]).
/// Err when a GPU cannot compute in f16.
pub fn enter(precision: Precision, device: &Device) -> Result<MixedPrecisionGuard, String> {
    let guard = MixedPrecisionGuard(());
    if precision.is_f32() || *device == Device::flex() {
        return Ok(guard);
    }
    if !device.supports_dtype(FloatDType::F16) {
        return Err(
            "precision = \"f16\": this device cannot compute in f16 (its driver lacks 16-bit \
             floats in shaders); use precision = \"f32\""
                .into(),
        );
    }
    MIXED.with(|m| {
        *m.borrow_mut() = Mixed {
            products: Some(FloatDType::F16),
            scaler: Some(LossScaler::default()),
        }
    });
    Ok(guard)
}

/// The dtype matrix products run in on this thread, when not f32.
pub fn products() -> Option<FloatDType> {
    MIXED.with(|m| m.borrow().products)
}

/// `a.matmul(b)` in this thread's product precision, returned in f32. (Operands are cast
/// per product; a cast to the type a tensor already has is free.)
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    match products() {
        Some(half) => a.cast(half).matmul(b.cast(half)).cast(FloatDType::F32),
        None => a.matmul(b),
    }
}

/// `x W + b` with the product in this thread's precision; the bias is added in f32.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: &Param<Tensor<2>>,
    bias: Option<&Param<Tensor<1>>>,
) -> Tensor<D> {
    match products() {
        Some(half) => {
            let y = burn::tensor::module::linear(x.cast(half), weight.val().cast(half), None)
                .cast(FloatDType::F32);
            match bias {
                Some(b) => y + f32_val(b).unsqueeze(),
                None => y,
            }
        }
        None => burn::tensor::module::linear(x, f32_val(weight), bias.map(f32_val)),
    }
}

/// What the loss is multiplied by before a backward pass on this thread (1 without loss
/// scaling).
pub fn loss_scale() -> f32 {
    MIXED.with(|m| m.borrow().scaler.as_ref().map_or(1.0, |s| s.scale))
}

/// For the optimizer: records a step whose scaled gradients were `finite` or not and
/// returns whether to apply it (always true without loss scaling).
pub fn record_step(finite: bool) -> bool {
    MIXED.with(|m| match m.borrow_mut().scaler.as_mut() {
        Some(scaler) => scaler.update(finite),
        None => true,
    })
}

/// The loss scale and the steps skipped so far, as metrics (nothing without loss scaling).
pub fn metrics() -> Vec<(&'static str, f64)> {
    MIXED.with(|m| match m.borrow().scaler.as_ref() {
        Some(s) => vec![
            ("loss_scale", s.scale as f64),
            ("skipped_steps", s.skipped as f64),
        ],
        None => Vec::new(),
    })
}

/// The scaler's state, for checkpoints (so a resumed run does not restart at 2^16).
pub fn scaler_state() -> Option<LossScaler> {
    MIXED.with(|m| m.borrow().scaler.clone())
}

/// Restores a scaler saved with [`scaler_state`] (ignored without loss scaling).
pub fn restore_scaler(saved: LossScaler) {
    MIXED.with(|m| {
        if let Some(scaler) = m.borrow_mut().scaler.as_mut() {
            *scaler = saved;
        }
    })
}

#[cfg(test)]
mod mixed_tests {
    use super::*;

    #[test]
    fn loss_scale_halves_on_overflow_and_doubles_after_a_clean_stretch() {
        let mut s = LossScaler::default();
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped), (32_768.0, 1));
        for _ in 0..LOSS_SCALE_GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 32_768.0);
        assert!(s.update(true));
        assert_eq!(s.scale, 65_536.0);
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.scale, 1.0, "never below 1");
    }

    #[test]
    fn the_cpu_keeps_f32_products_and_no_loss_scale() {
        let _g = enter(Precision::F16, &Device::flex()).unwrap();
        assert_eq!(products(), None);
        assert_eq!(loss_scale(), 1.0);
        assert!(metrics().is_empty());
    }
}
