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
