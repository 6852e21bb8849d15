//! The Llama implementation against transformers' outputs on tiny random models (fixtures
//! made by tests/fixtures/tiny_models.py), the KV cache against full forwards, and checkpoint
//! round trips.

mod common;

use burn::prelude::*;
use common::*;
use rlft::engine::model::{self, CpuDecoder, Heads, KvCache, hf};
use rlft::engine::sample::{self, SamplingParams, bool_tensor};

const TINY: [&str; 2] = ["tiny-llama", "tiny-llama-bias-tied"];

fn cpu() -> Device {
    Device::flex()
}

#[test]
fn logits_match_transformers_on_tiny_models() {
    for name in TINY {
        let dir = fixture(name);
        let expected = json(&dir.join("expected.json"));
        let m = model::load(&dir, &cpu(), Heads::Lm).unwrap();

        let a = &expected["batch_a"];
        let ids = ids_2d(&a["input_ids"]);
        let pos: Vec<Vec<i64>> = ids_2d(&a["position_ids"])
            .into_iter()
            .map(|r| r.into_iter().map(i64::from).collect())
            .collect();
        let valid = vec![vec![true; ids[0].len()]];
        let got = full_logits(&m.model, &ids, &pos, &valid, &cpu());
        let diff = max_abs_diff(&got, &floats(&a["logits"]));
        assert!(diff <= 1e-4, "{name}: batch A max |diff| {diff}");

        // Left-padded batch: compare real positions only.
        let b = &expected["batch_b"];
        let ids = ids_2d(&b["input_ids"]);
        let mask = ids_2d(&b["attention_mask"]);
        let pos: Vec<Vec<i64>> = ids_2d(&b["position_ids"])
            .into_iter()
            .map(|r| r.into_iter().map(i64::from).collect())
            .collect();
        let valid: Vec<Vec<bool>> = mask
            .iter()
            .map(|r| r.iter().map(|&x| x == 1).collect())
            .collect();
        let got = full_logits(&m.model, &ids, &pos, &valid, &cpu());
        let want = floats(&b["logits"]);
        let v = m.config.vocab_size;
        let t = ids[0].len();
        let mut worst = 0f32;
        for (row, row_valid) in valid.iter().enumerate() {
            for (j, ok) in row_valid.iter().enumerate() {
                if *ok {
                    let o = (row * t + j) * v;
                    worst = worst.max(max_abs_diff(&got[o..o + v], &want[o..o + v]));
                }
            }
        }
        assert!(worst <= 1e-4, "{name}: batch B max |diff| {worst}");
    }
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    for name in TINY {
        let dir = fixture(name);
        let expected = json(&dir.join("expected.json"));
        let m = model::load(&dir, &cpu(), Heads::Lm).unwrap();
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: 10,
            ..Default::default()
        };
        // Single prompt, EOS ignored (transformers' run with no EOS hit).
        let g = &expected["greedy"];
        let prompt = ids_2d(&g["prompt_ids"]);
        let out = sample::generate(&m.model, &prompt, &params, &[], 0, None, 64);
        let want: Vec<u32> = ids_2d(&serde_json::json!([g["new_ids_ignore_eos"]]))[0].clone();
        assert_eq!(out[0].tokens, want, "{name}: greedy");

        // Left-padded batch: rlft pads itself; row 0 is the unpadded prompt.
        let gb = &expected["greedy_batch_b"];
        let rows = ids_2d(&gb["prompt_ids"]);
        let masks = ids_2d(&gb["attention_mask"]);
        let prompts: Vec<Vec<u32>> = rows
            .iter()
            .zip(&masks)
            .map(|(r, m)| {
                r.iter()
                    .zip(m)
                    .filter(|(_, m)| **m == 1)
                    .map(|(x, _)| *x)
                    .collect()
            })
            .collect();
        let out = sample::generate(&m.model, &prompts, &params, &[2], 0, None, 64);
        let want = ids_2d(&gb["new_ids"]);
        for (row, (o, w)) in out.iter().zip(&want).enumerate() {
            // transformers fills a finished row with padding; compare up to EOS.
            let n = o.tokens.len();
            assert_eq!(
                o.tokens,
                w[..n].to_vec(),
                "{name}: batched greedy row {row}"
            );
            assert!(w[n..].iter().all(|&x| x == 0));
        }
    }
}

/// Decoding one token at a time with the cache gives the logits of a full forward pass, both
/// attending over what is cached and (as GPU decoding does, for constant shapes) over the
/// cache's whole capacity with the unwritten slots masked.
#[test]
fn kv_cache_logits_equal_full_sequence_logits() {
    let device = cpu();
    let m = model::load(&fixture("tiny-llama"), &device, Heads::Lm).unwrap();
    let rows: Vec<Vec<u32>> = vec![
        vec![1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45],
        vec![0, 0, 0, 1, 7, 3, 88, 42, 6, 11, 2, 50],
    ];
    let valid: Vec<Vec<bool>> = vec![vec![true; 12], [vec![false; 3], vec![true; 9]].concat()];
    let positions: Vec<Vec<i64>> = vec![(0..12).collect(), [vec![0; 3], (0..9).collect()].concat()];
    let full = full_logits(&m.model, &rows, &positions, &valid, &device);
    let v = m.config.vocab_size;

    let prefill = 5;
    for whole_capacity in [false, true] {
        let mut cache = KvCache::with_capacity(m.model.num_layers(), 12);
        let slice_ids = |from: usize, to: usize| -> Tensor<2, Int> {
            let flat: Vec<i64> = rows
                .iter()
                .flat_map(|r| r[from..to].iter().map(|&x| x as i64))
                .collect();
            Tensor::from_data(TensorData::new(flat, [2, to - from]), &device)
        };
        let slice_pos = |from: usize, to: usize| -> Tensor<2, Int> {
            let flat: Vec<i64> = positions
                .iter()
                .flat_map(|r| r[from..to].to_vec())
                .collect();
            Tensor::from_data(TensorData::new(flat, [2, to - from]), &device)
        };
        let valid_upto = |to: usize| {
            let len = if whole_capacity && to > prefill {
                12
            } else {
                to
            };
            let rows: Vec<Vec<bool>> = valid
                .iter()
                .map(|r| {
                    let mut row = r[..to].to_vec();
                    row.resize(len, false);
                    row
                })
                .collect();
            bool_tensor(&rows, &device)
        };
        let mut worst = 0f32;
        let mut check = |logits: Vec<f32>, from: usize, to: usize| {
            let steps = to - from;
            for row in 0..2 {
                for j in 0..steps {
                    if !valid[row][from + j] {
                        continue;
                    }
                    let got = &logits[(row * steps + j) * v..(row * steps + j + 1) * v];
                    let o = (row * 12 + from + j) * v;
                    worst = worst.max(max_abs_diff(got, &full[o..o + v]));
                }
            }
        };
        let h = m.model.hidden(
            slice_ids(0, prefill),
            slice_pos(0, prefill),
            valid_upto(prefill),
            Some(&mut cache),
        );
        check(
            m.model
                .logits(h)
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap(),
            0,
            prefill,
        );
        for t in prefill..12 {
            let h = m.model.hidden(
                slice_ids(t, t + 1),
                slice_pos(t, t + 1),
                valid_upto(t + 1),
                Some(&mut cache),
            );
            check(
                m.model
                    .logits(h)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap(),
                t,
                t + 1,
            );
        }
        assert_eq!(cache.len(), 12);
        assert!(
            worst <= 1e-4,
            "cached vs full max |diff| {worst} (whole capacity: {whole_capacity})"
        );
    }
}

/// Save -> load gives the same logits and the same tensor names as the original checkpoint.
#[test]
fn save_then_load_gives_identical_logits() {
    let device = cpu();
    for name in TINY {
        let dir = fixture(name);
        let m = model::load(&dir, &device, Heads::Lm).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("saved");
        hf::save_dir(
            &out,
            &m.config,
            &m.model,
            None,
            m.generation_config.as_ref(),
        )
        .unwrap();
        let again = model::load(&out, &device, Heads::Lm).unwrap();
        assert_eq!(again.config.num_hidden_layers, m.config.num_hidden_layers);
        let ids = vec![vec![1u32, 5, 9, 13, 17, 21]];
        let pos = vec![(0..6).collect::<Vec<i64>>()];
        let valid = vec![vec![true; 6]];
        let a = full_logits(&m.model, &ids, &pos, &valid, &device);
        let b = full_logits(&again.model, &ids, &pos, &valid, &device);
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}");

        let mut original = rlft::engine::model::weights::NamedTensors::new();
        hf::read_safetensors(&dir.join("model.safetensors"), &mut original).unwrap();
        let mut saved = rlft::engine::model::weights::NamedTensors::new();
        hf::read_safetensors(&out.join("model.safetensors"), &mut saved).unwrap();
        assert_eq!(
            original.keys().collect::<Vec<_>>(),
            saved.keys().collect::<Vec<_>>()
        );
        assert_eq!(original, saved, "{name}: tensors round-trip bit for bit");
    }
}

#[test]
fn a_scalar_head_is_added_to_a_language_model_and_saved() {
    let device = cpu();
    let m = model::load(&fixture("tiny-llama"), &device, Heads::Both).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9], [1, 3]), &device);
    let pos = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 2], [1, 3]), &device);
    let valid = bool_tensor(&[vec![true; 3]], &device);
    let scores = m
        .model
        .scores(m.model.hidden(ids, pos, valid, None))
        .unwrap();
    assert_eq!(scores.dims(), [1, 3]);
    let tmp = tempfile::tempdir().unwrap();
    hf::save_dir(
        tmp.path().join("rm").as_path(),
        &m.config,
        &m.model,
        None,
        None,
    )
    .unwrap();
    let mut saved = rlft::engine::model::weights::NamedTensors::new();
    hf::read_safetensors(&tmp.path().join("rm/model.safetensors"), &mut saved).unwrap();
    assert_eq!(saved["score.weight"].shape, vec![1, m.config.hidden_size]);
}

#[test]
fn malformed_model_files_name_the_file_or_tensor() {
    let device = cpu();
    let tmp = tempfile::tempdir().unwrap();
    // Missing folder.
    let err = model::load(&tmp.path().join("nope"), &device, Heads::Lm)
        .err()
        .unwrap();
    assert!(err.to_string().contains("nope"), "{err}");
    // Broken config.json.
    let dir = tmp.path().join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = model::load(&dir, &device, Heads::Lm).err().unwrap();
    assert!(err.to_string().contains("config.json"), "{err}");
    // A weight with the wrong shape.
    let dir = tmp.path().join("shape");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("tiny-llama");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = rlft::engine::model::weights::NamedTensors::new();
    hf::read_safetensors(&src.join("model.safetensors"), &mut tensors).unwrap();
    tensors.get_mut("model.norm.weight").unwrap().shape = vec![2, 16];
    hf::write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let err = model::load(&dir, &device, Heads::Lm)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.norm.weight"), "{err}");
    // The model folder is named, and config.json blamed.
    assert!(
        err.contains("shape") && err.contains("config.json"),
        "{err}"
    );
    // A config.json whose sizes disagree with the weights names the folder too.
    let dir = tmp.path().join("wider");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(cfg["intermediate_size"].as_u64().unwrap() * 2);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let err = model::load(&dir, &device, Heads::Lm)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("wider") && err.contains("do not match config.json"),
        "{err}"
    );
    // A truncated safetensors file.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = model::load(&dir, &device, Heads::Lm).err().unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    // A GGUF that is not one.
    let fake = tmp.path().join("fake.gguf");
    std::fs::write(&fake, b"GGUF but not really").unwrap();
    let err = model::load(&fake, &device, Heads::Lm).err().unwrap();
    assert!(err.to_string().contains("fake.gguf"), "{err}");
}

/// Rows that end early are dropped from the batch (and the KV cache) as decoding goes on; the
/// rows still writing must come out exactly as when each is generated alone.
#[test]
fn rows_that_end_early_leave_the_batch_without_changing_the_others() {
    let dir = fixture(TINY[0]);
    let m = model::load(&dir, &cpu(), Heads::Lm).unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 12,
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|i| {
            (0..(3 + i as usize))
                .map(|j| (7 * i + 3 * j as u32) % 50 + 3)
                .collect()
        })
        .collect();
    // End a row as soon as it writes the token row 0 writes first, so rows end at different
    // steps (row 0 at once).
    let first = sample::generate(&m.model, &prompts[..1], &params, &[], 0, None, 64)[0].tokens[0];
    let eos = [first];
    let batched = sample::generate(&m.model, &prompts, &params, &eos, 0, None, 64);
    assert_eq!(batched[0].tokens, vec![first]);
    let lengths: Vec<usize> = batched.iter().map(|g| g.tokens.len()).collect();
    let ended_early = lengths
        .iter()
        .filter(|&&n| n < params.max_new_tokens)
        .count();
    assert!(
        ended_early >= 2,
        "rows should end at different steps: {lengths:?}"
    );
    for (i, p) in prompts.iter().enumerate() {
        let alone = sample::generate(
            &m.model,
            std::slice::from_ref(p),
            &params,
            &eos,
            0,
            None,
            64,
        );
        assert_eq!(batched[i].tokens, alone[0].tokens, "row {i}");
        assert_eq!(batched[i].finish, alone[0].finish, "row {i}");
    }
}

/// The single-sequence CPU decoder gives transformers' logits at every position, whether a
/// token arrives in the prefill or one at a time, with and without biases and tied heads.
#[test]
fn cpu_decoder_logits_equal_transformers_at_every_position() {
    for name in TINY {
        let dir = fixture(name);
        let expected = json(&dir.join("expected.json"));
        let m = model::load(&dir, &cpu(), Heads::Lm).unwrap();
        let decoder = CpuDecoder::from_model(&m.model).expect("a plain Llama block");
        let a = &expected["batch_a"];
        let ids = ids_2d(&a["input_ids"])[0].clone();
        let want = floats(&a["logits"]);
        let v = m.config.vocab_size;
        assert_eq!(decoder.vocab_size(), v);
        let prefill = 3;
        let mut state = decoder.new_state(ids.len());
        let mut got = decoder.forward(&mut state, &ids[..prefill]);
        for j in prefill - 1..ids.len() {
            let diff = max_abs_diff(&got, &want[j * v..(j + 1) * v]);
            assert!(diff <= 1e-4, "{name}: position {j} max |diff| {diff}");
            if j + 1 < ids.len() {
                got = decoder.forward(&mut state, &[ids[j + 1]]);
            }
        }
        assert_eq!(state.len(), ids.len());
    }
}

/// A prompt longer than one prefill chunk, then cached decoding, against the Burn forward
/// of the whole sequence; and `generate_on_cpu` writes what the batched generator writes,
/// greedy and sampled with a seed, stopping on EOS.
#[test]
fn cpu_decoder_follows_the_burn_forward_through_long_prompts_and_generation() {
    let m = model::load(std::path::Path::new("assets/base"), &cpu(), Heads::Lm).unwrap();
    let decoder = CpuDecoder::from_model(&m.model).expect("a plain Llama block");
    let v = m.config.vocab_size;
    let ids: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % v as u32).collect();
    let positions = vec![(0..ids.len() as i64).collect::<Vec<_>>()];
    let full = full_logits(
        &m.model,
        std::slice::from_ref(&ids),
        &positions,
        &[vec![true; ids.len()]],
        &cpu(),
    );
    let mut state = decoder.new_state(16);
    let prompt = 130;
    let mut got = decoder.forward(&mut state, &ids[..prompt]);
    for j in prompt - 1..ids.len() {
        let diff = max_abs_diff(&got, &full[j * v..(j + 1) * v]);
        assert!(diff <= 1e-3, "position {j}: max |diff| {diff}");
        if j + 1 < ids.len() {
            got = decoder.forward(&mut state, &[ids[j + 1]]);
        }
    }

    let prompt = ids[..20].to_vec();
    for (temperature, seed) in [(0.0, 0), (1.0, 7), (0.8, 3)] {
        let params = SamplingParams {
            temperature,
            seed,
            max_new_tokens: 48,
            ..Default::default()
        };
        let batched = sample::generate(
            &m.model,
            std::slice::from_ref(&prompt),
            &params,
            &[0],
            0,
            None,
            512,
        );
        let mut streamed = 0;
        let single =
            sample::generate_on_cpu(&decoder, &prompt, &params, &[0], 0, None, 512, &mut |g| {
                streamed = g.tokens.len();
                true
            });
        assert_eq!(
            single.tokens, batched[0].tokens,
            "temperature {temperature}"
        );
        assert_eq!(single.finish, batched[0].finish);
        assert_eq!(streamed, single.tokens.len());
        let lp = max_abs_diff(&single.logprobs, &batched[0].logprobs);
        assert!(lp <= 1e-3, "logprobs differ by {lp}");
    }
}

/// Projections with biases, large enough to be split across threads (q, k and v in one
/// parallel region), decode as the Burn forward does.
#[test]
fn cpu_decoder_splits_biased_projections_across_threads() {
    let cfg: model::ModelConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 300, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "attention_bias": true, "mlp_bias": true,
        "tie_word_embeddings": true, "model_type": "llama"
    }))
    .unwrap();
    let mut weights = model::decoder::init_weights(&cfg, 3);
    for (name, t) in weights.iter_mut() {
        if name.ends_with(".bias") {
            for (i, v) in t.data.iter_mut().enumerate() {
                *v = (i as f32 * 0.7).sin() * 0.1;
            }
        }
    }
    let mut reader = model::WeightReader::new(weights, &cpu());
    let llama = model::CausalLm::from_weights(&cfg, &mut reader, true, false).unwrap();
    let ids: Vec<u32> = (0..12u32).map(|i| (i * 29 + 5) % 300).collect();
    let full = full_logits(
        &llama,
        std::slice::from_ref(&ids),
        &[(0..12).collect()],
        &[vec![true; 12]],
        &cpu(),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        let decoder = CpuDecoder::from_model(&llama).expect("a plain Llama block");
        let mut state = decoder.new_state(12);
        let mut got = decoder.forward(&mut state, &ids[..4]);
        for j in 3..12 {
            let diff = max_abs_diff(&got, &full[j * 300..(j + 1) * 300]);
            assert!(diff <= 1e-4, "position {j}: max |diff| {diff}");
            if j + 1 < 12 {
                got = decoder.forward(&mut state, &[ids[j + 1]]);
            }
        }
    });
}
