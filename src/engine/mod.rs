//! The engine: models, tokenizers, data, sampling, algorithms and run store. No terminal UI
//! code lives here; the UI talks to the engine only through `events`.

pub mod weights;

pub fn probe() -> f32 {
    use burn::prelude::*;
    let d = Device::flex();
    let t = Tensor::<1>::from_floats([1.0, 2.0], &d);
    let _tok = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    t.sum().into_scalar().elem::<f32>()
}
