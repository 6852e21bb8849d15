//! Supervised fine-tuning on TRL-format data (`text`, `messages`, `prompt`+`completion`).

use crate::engine::config::RunConfig;
use crate::engine::data::{self, SftTokenizeOptions, TextCodec, TokenizedExample};
use crate::engine::events::LogLevel;
use crate::engine::model::tokenizer::{ChatMessage, Tokenizer};
use crate::engine::model::{self, Heads};
use crate::engine::run::RunContext;
use burn::prelude::Device;

use super::lm::{LmSetup, train_lm};
use super::{TrainError, TrainOutcome};

impl TextCodec for Tokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        Tokenizer::encode(self, text, add_special_tokens).map_err(|e| e.to_string())
    }

    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        Tokenizer::apply_chat_template(self, messages, add_generation_prompt)
            .map_err(|e| e.to_string())
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos_ids().first().copied()
    }
}

/// Reads, tokenises (and packs) a JSONL file for SFT. Examples left without target tokens
/// (a prompt longer than `max_length`, say) are dropped and counted.
pub fn tokenize_file(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    cfg: &RunConfig,
) -> Result<(Vec<TokenizedExample>, usize), TrainError> {
    let examples = data::read_jsonl(path)?;
    let opts = SftTokenizeOptions {
        max_len: cfg.train.max_length,
        completion_only_loss: cfg.train.completion_only_loss,
        assistant_only_loss: cfg.train.assistant_only_loss,
        append_eos: true,
    };
    let mut out = Vec::with_capacity(examples.len());
    let mut dropped = 0;
    for (i, ex) in examples.iter().enumerate() {
        let t = data::tokenize_for_sft(ex, tokenizer, &opts).map_err(|e| {
            TrainError::Invalid(format!("{}: example {}: {e}", path.display(), i + 1))
        })?;
        if t.num_targets() == 0 {
            dropped += 1;
        } else {
            out.push(t);
        }
    }
    if cfg.train.packing {
        out = data::pack(&out, cfg.train.max_length);
    }
    Ok((out, dropped))
}

pub fn run(cfg: &RunConfig, device: &Device, ctx: &mut RunContext) -> TrainOutcome {
    let train_device = cfg.train.train_device(device, true);
    // A resumed run continues from its checkpoint's weights.
    let loaded = match &ctx.resume_from {
        // A LoRA checkpoint is an adapter folder naming its base; `load` follows it.
        Some(checkpoint) => {
            model::load_checkpoint(checkpoint, &train_device, Heads::Lm, cfg.frozen_dtype())?
        }
        None => model::load_for_run(
            &cfg.model.path,
            cfg.model.adapter.as_deref(),
            cfg.lora.as_ref(),
            &train_device,
            Heads::Lm,
            cfg.seed,
            cfg.frozen_dtype(),
        )?,
    };
    super::check_dropout(cfg, &loaded.model)?;
    ctx.log(
        crate::engine::events::LogLevel::Info,
        crate::engine::model::lora::describe_parameters(&loaded.model),
    );
    let tokenizer = loaded.tokenizer.ok_or_else(|| {
        TrainError::Invalid(format!(
            "{}: the model has no tokenizer.json; SFT needs one to read text",
            cfg.model.path.display()
        ))
    })?;
    let (train, dropped) = tokenize_file(&cfg.data.train, &tokenizer, cfg)?;
    if dropped > 0 {
        ctx.log(
            LogLevel::Warn,
            format!("{dropped} training examples had no target tokens after truncation"),
        );
    }
    let eval = match &cfg.data.eval {
        Some(p) => tokenize_file(p, &tokenizer, cfg)?.0,
        None => Vec::new(),
    };
    let setup = LmSetup {
        config: loaded.config,
        tokenizer,
        generation_config: loaded.generation_config,
        train,
        eval,
    };
    train_lm(loaded.model, setup, cfg, &train_device, ctx, None)
}
