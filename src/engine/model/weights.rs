//! Host-side tensors keyed by Hugging Face checkpoint names: the common currency between
//! file formats (safetensors, GGUF) and the Burn model, so each format is read in one place.

use std::collections::BTreeMap;

/// A dense f32 tensor in PyTorch layout (row-major, shape in PyTorch order, so a Linear
/// weight is `[out_features, in_features]`).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Weights keyed by their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, ...).
pub type NamedTensors = BTreeMap<String, HostTensor>;
