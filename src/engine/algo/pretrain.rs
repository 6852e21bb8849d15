//! `rlft pretrain`: trains rlft's own byte-level BPE tokenizer and a small Llama-family model
//! from scratch on plain text plus generated arithmetic, and writes a Hugging Face folder.
//! This is how the shipped base model in `assets/base/` is made.

use std::path::Path;

use burn::prelude::Device;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::lm::{LmSetup, train_lm};
use super::{TrainError, TrainOutcome};
use crate::engine::config::{PretrainSection, RunConfig};
use crate::engine::data::{TokenizedExample, pack};
use crate::engine::events::LogLevel;
use crate::engine::model::tokenizer::Tokenizer;
use crate::engine::model::{CausalLm, ModelConfig, WeightReader, decoder};
use crate::engine::run::RunContext;

/// Special tokens of the shipped model: end of text doubles as padding; the ChatML markers
/// let the same tokenizer carry a chat template.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Text is tokenised in chunks of about this many bytes (split at blank lines) so documents
/// can be shuffled and held out at a finer grain than whole books.
const CHUNK_BYTES: usize = 4096;
/// Arithmetic lines per generated chunk.
const SUMS_PER_CHUNK: usize = 32;

/// `a+b=c` lines with operands in `0..=max`.
pub fn arithmetic_lines(n: usize, max: u32, rng: &mut StdRng) -> Vec<String> {
    (0..n)
        .map(|_| {
            let a = rng.random_range(0..=max);
            let b = rng.random_range(0..=max);
            format!("{a}+{b}={}", a + b)
        })
        .collect()
}

/// Splits text into chunks of roughly `CHUNK_BYTES`, at paragraph boundaries.
fn chunk_text(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for paragraph in text.split("\n\n") {
        if !current.is_empty() && current.len() + paragraph.len() > CHUNK_BYTES {
            chunks.push(std::mem::take(&mut current));
        }
        current.push_str(paragraph);
        current.push_str("\n\n");
    }
    if !current.trim().is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Corpus chunks (text files, then arithmetic), shuffled with the run's seed.
pub fn build_corpus(p: &PretrainSection, seed: u64) -> Result<Vec<String>, TrainError> {
    let mut chunks = Vec::new();
    for path in &p.corpus {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        chunks.extend(chunk_text(&text.replace("\r\n", "\n")));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let sums = arithmetic_lines(p.arithmetic_lines, p.arithmetic_max_operand, &mut rng);
    for group in sums.chunks(SUMS_PER_CHUNK) {
        chunks.push(group.join("\n") + "\n");
    }
    chunks.shuffle(&mut rng);
    Ok(chunks)
}

fn architecture(
    p: &PretrainSection,
    vocab_size: usize,
    tokenizer: &Tokenizer,
) -> Result<ModelConfig, TrainError> {
    let mut table = p.architecture.clone();
    table.insert("vocab_size".into(), toml::Value::Integer(vocab_size as i64));
    table
        .entry("model_type")
        .or_insert(toml::Value::String("llama".into()));
    let eos = tokenizer.token_id(SPECIAL_TOKENS[0]);
    let mut json = serde_json::to_value(&table).map_err(|e| TrainError::Invalid(e.to_string()))?;
    if let (Some(obj), Some(eos)) = (json.as_object_mut(), eos) {
        obj.insert("bos_token_id".into(), eos.into());
        obj.insert("eos_token_id".into(), eos.into());
        obj.insert("pad_token_id".into(), eos.into());
    }
    let cfg: ModelConfig = serde_json::from_value(json)
        .map_err(|e| TrainError::Invalid(format!("[pretrain.architecture]: {e}")))?;
    cfg.validate()
        .map_err(|e| TrainError::Invalid(format!("[pretrain.architecture]: {e}")))?;
    Ok(cfg)
}

/// Trains the tokenizer and the model; the result is written to `[pretrain] output`.
pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let p = cfg
        .pretrain
        .as_ref()
        .ok_or_else(|| TrainError::Invalid("missing [pretrain] section".into()))?;
    let chunks = build_corpus(p, cfg.seed)?;
    ctx.log(
        LogLevel::Info,
        format!(
            "corpus: {} chunks; training a {}-token BPE",
            chunks.len(),
            p.vocab_size
        ),
    );
    let mut tokenizer =
        Tokenizer::train_bpe(chunks.iter().cloned(), p.vocab_size, &SPECIAL_TOKENS)?;
    tokenizer.set_chat_template(Some(CHATML_TEMPLATE.into()));
    let eos = tokenizer.token_id(SPECIAL_TOKENS[0]).ok_or_else(|| {
        TrainError::Invalid("the trained tokenizer lost its end-of-text token".into())
    })?;

    let mut docs = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        let mut ids = tokenizer.encode(chunk, false)?;
        ids.push(eos);
        let n = ids.len();
        docs.push(TokenizedExample {
            input_ids: ids,
            loss_mask: vec![true; n],
        });
    }
    let n_eval = ((docs.len() as f64 * p.eval_fraction).round() as usize).clamp(1, docs.len() / 2);
    let eval_docs = docs.split_off(docs.len() - n_eval);
    let train = pack(&docs, cfg.train.max_length);
    let eval = pack(&eval_docs, cfg.train.max_length);
    let tokens: usize = train.iter().map(TokenizedExample::len).sum();
    ctx.log(
        LogLevel::Info,
        format!(
            "{tokens} training tokens in {} blocks of {}",
            train.len(),
            cfg.train.max_length
        ),
    );

    let model_cfg = architecture(p, tokenizer.vocab_size(), &tokenizer)?;
    let train_device = device.clone().autodiff();
    let mut reader = WeightReader::new(decoder::init_weights(&model_cfg, cfg.seed), &train_device);
    let model = CausalLm::from_weights(&model_cfg, &mut reader, true, false)?;
    let generation_config = serde_json::json!({
        "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos,
        "do_sample": true, "temperature": 1.0, "max_new_tokens": 64
    });
    let setup = LmSetup {
        config: model_cfg,
        tokenizer,
        generation_config: Some(generation_config),
        train,
        eval,
    };
    train_lm(
        model,
        setup,
        cfg,
        &train_device,
        ctx,
        Some(Path::new(&p.output)),
    )
}

/// ChatML, the template SmolLM2 and Qwen use; the shipped model carries it so chat-format data
/// works with it too.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_lines_are_correct_sums() {
        let mut rng = StdRng::seed_from_u64(1);
        for line in arithmetic_lines(50, 99, &mut rng) {
            let (lhs, c) = line.split_once('=').unwrap();
            let (a, b) = lhs.split_once('+').unwrap();
            let sum: u32 = a.parse::<u32>().unwrap() + b.parse::<u32>().unwrap();
            assert_eq!(sum, c.parse::<u32>().unwrap());
        }
    }

    #[test]
    fn chunks_respect_size_and_keep_all_text() {
        let text = (0..200)
            .map(|i| format!("para {i} {}", "x".repeat(50)))
            .collect::<Vec<_>>()
            .join("\n\n");
        let chunks = chunk_text(&text);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES + 64));
        let joined: String = chunks.concat();
        assert_eq!(joined.matches("para").count(), 200);
    }
}
