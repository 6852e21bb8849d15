//! Gradients by per-layer recomputation: what `gradient_checkpointing = true` runs.
//!
//! Autodiff over a whole forward pass keeps every layer's intermediates (attention scores,
//! MLP activations, the LM head's log-softmax) until the backward pass: at Qwen2.5-0.5B's
//! shape and 8 x 512 tokens that is over 20 GB. Here the forward pass runs without autodiff,
//! keeping only each layer's input (`[B, T, H]` per layer); the loss is then differentiated
//! in stages, each holding one piece's graph at a time:
//!
//! 1. **loss**: the token log-probabilities become a leaf, the loss is built on it and
//!    differentiated: `dL/dlogp` `[B, T - 1]`;
//! 2. **head**: a head that trains is recomputed per chunk of positions from the last
//!    layer's output (a leaf) and `sum(logp * dL/dlogp)` differentiated, giving its
//!    gradients and `dL/dx` for those positions; a frozen head (LoRA) got `d logp / d h` in
//!    the pass that scored (`frozen_head_pass`), so only the final norm is
//!    differentiated here. No `[B, T, V]` tensor is kept either way;
//! 3. **layers**, last to first: layer `i` is recomputed from its saved input (a leaf) and
//!    `sum(out * dL/dout)` differentiated, giving its parameters' gradients and `dL/din`;
//! 4. **embeddings**, when they train.
//!
//! The surrogate `sum(y * g)` with `g` constant has gradient `g` at `y`, so each stage's
//! chain rule is the one whole-graph autodiff would apply: the gradients are the same (a
//! test checks them). The recomputed layers run forward twice, as with any activation
//! checkpointing. `gradient_checkpointing_layers = n` recomputes only the first `n` layers
//! (Megatron's block recomputation): the later ones keep their activations and take one
//! backward pass together, trading memory back for speed.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::sequences::{HeadOutputs, SeqBatch, head_outputs};
use crate::engine::model::CausalLm;

/// Positions per chunk of the head's backward: at most this many `[position, vocab]` values
/// (64 MB in f32) and their log-softmax live at once.
const HEAD_BACKWARD_CHUNK_VALUES: usize = 1 << 24;

/// The token rows a loss is computed on: ids, positions and the valid mask `[B, T]`, and the
/// targets `[B, T - 1]` (position `i` predicts token `i + 1`).
pub struct TokenRows {
    pub ids: Tensor<2, Int>,
    pub positions: Tensor<2, Int>,
    pub valid: Tensor<2, Bool>,
    pub targets: Tensor<2, Int>,
}

impl From<&SeqBatch> for TokenRows {
    fn from(b: &SeqBatch) -> Self {
        Self {
            ids: b.ids.clone(),
            positions: b.positions.clone(),
            valid: b.valid.clone(),
            targets: b.targets.clone(),
        }
    }
}

/// What a loss may ask of the head beside the log-probabilities (both detached).
#[derive(Clone, Copy, Default)]
pub struct HeadExtras {
    pub entropy: bool,
    pub argmax: bool,
}

/// The gradients of `loss` (built on the target log-probabilities of `rows` under `model`,
/// logits divided by `temperature`) for every trainable parameter of `model`, the loss's
/// value, and whatever else `loss` measured. With `recompute = Some(n)` the first `n` decoder
/// layers (all of them when `n` is at least their number) keep only their inputs and are
/// recomputed layer by layer in the backward pass (see the module docs); the others, and all
/// of them with `None`, keep their activations for one backward pass. Every way gives the
/// same gradients; each recomputed layer trades its activations for one more forward pass.
pub fn logprob_grads<T, E>(
    model: &CausalLm,
    rows: TokenRows,
    temperature: f32,
    extras: HeadExtras,
    recompute: Option<usize>,
    loss: impl FnOnce(HeadOutputs) -> Result<(Tensor<1>, T), E>,
) -> Result<(GradientsParams, f64, T), E> {
    // A frozen head is differentiated on its own even with nothing recomputed (every layer
    // kept for one backward pass), so no `[positions, vocab]` values are kept.
    let recomputed = match recompute {
        Some(n) => Some(n.min(model.num_layers())),
        None if head_is_frozen(model) => Some(0),
        None => None,
    };
    if let Some(n) = recomputed {
        return grads_by_layer(model, rows, temperature, extras, n, loss);
    }
    let t = rows.ids.dims()[1];
    let hidden = model.hidden(rows.ids, rows.positions, rows.valid, None);
    let out = head_outputs(
        model,
        hidden.narrow(1, 0, t - 1),
        rows.targets,
        temperature,
        extras.entropy,
        extras.argmax,
    );
    let (loss_value, measured) = loss(out)?;
    let value = super::scalar(loss_value.clone());
    let grads = GradientsParams::from_grads(scaled(loss_value).backward(), model);
    Ok((grads, value, measured))
}

/// The loss as differentiated: times the loss scale under mixed precision, so gradients too
/// small for f16 survive the f16 products (the optimizer divides it out).
pub fn scaled(loss: Tensor<1>) -> Tensor<1> {
    let scale = crate::engine::model::precision::loss_scale();
    if scale == 1.0 { loss } else { loss * scale }
}

/// The LM head does not train (LoRA): its gradient can be taken analytically.
fn head_is_frozen(model: &CausalLm) -> bool {
    model.head_matrix().is_some_and(|head| !head.is_tracked())
}

/// [`logprob_grads`] recomputing the first `recomputed` layers layer by layer (none: every
/// layer keeps its graph, the head still differentiated apart).
fn grads_by_layer<T, E>(
    model: &CausalLm,
    rows: TokenRows,
    temperature: f32,
    extras: HeadExtras,
    recomputed: usize,
    loss: impl FnOnce(HeadOutputs) -> Result<(Tensor<1>, T), E>,
) -> Result<(GradientsParams, f64, T), E> {
    let plain = model.valid();
    let ids = rows.ids.without_autodiff();
    let positions = rows.positions.without_autodiff();
    let valid = rows.valid.without_autodiff();
    let targets = rows.targets.without_autodiff();

    // Forward without autodiff through the recomputed layers, keeping each one's input; the
    // layers after them keep their graph.
    let context = plain.layer_context(positions.clone(), valid, 0);
    let mut inputs = Vec::with_capacity(recomputed);
    let mut x = plain.embed(ids.clone(), positions.clone());
    for i in 0..recomputed {
        inputs.push(x.clone());
        x = plain.layer_forward(i, x, &context, None);
    }
    drop(plain);
    let kept = (recomputed < model.num_layers()).then(|| {
        let input = x.clone().autodiff().require_grad();
        let mut y = input.clone();
        for i in recomputed..model.num_layers() {
            y = model.layer_forward(i, y, &context, None);
        }
        (input, y)
    });
    let last = match &kept {
        Some((_, y)) => y.clone().without_autodiff(),
        None => x,
    };

    // 1-2. loss and head: dL/dx at the last layer's output.
    let mut acc = GradientsAccumulator::<CausalLm>::new();
    let (d_last, value, measured) =
        head_stages(model, last, targets, temperature, extras, loss, &mut acc)?;
    // The kept layers in one backward pass.
    let d_last = match kept {
        Some((input, y)) => {
            let mut grads = (y * d_last).sum().backward();
            let d_input = input
                .grad_remove(&mut grads)
                .expect("the kept layers' output depends on their input");
            acc.accumulate(model, GradientsParams::from_grads(grads, model));
            d_input
        }
        None => d_last,
    };

    // 3. the recomputed layers, last to first.
    let mut d_out = d_last;
    for i in (0..recomputed).rev() {
        let input = inputs
            .pop()
            .expect("one input per layer")
            .autodiff()
            .require_grad();
        let out = model.layer_forward(i, input.clone(), &context, None);
        let mut grads = (out * d_out).sum().backward();
        d_out = input
            .grad_remove(&mut grads)
            .expect("a layer's output depends on its input");
        acc.accumulate(model, GradientsParams::from_grads(grads, model));
    }

    // 4. embeddings, when they train (full fine-tuning).
    let embeddings_train = model.embed_tokens.val().is_require_grad()
        || model
            .embed_positions
            .as_ref()
            .is_some_and(|p| p.val().is_require_grad());
    if embeddings_train {
        let x0 = model.embed(ids, positions);
        let grads = (x0 * d_out).sum().backward();
        acc.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    Ok((acc.grads(), value, measured))
}

/// Stages 1 and 2: the loss on the target log-probabilities of `last` (the last layer's
/// output `[B, T, H]`, no autodiff) and its gradient `dL/d last`; the gradients of the final
/// norm and head parameters that train go to `acc`. Returns `dL/d last`, the loss's value and
/// what the loss measured.
fn head_stages<T, E>(
    model: &CausalLm,
    last: Tensor<3>,
    targets: Tensor<2, Int>,
    temperature: f32,
    extras: HeadExtras,
    loss: impl FnOnce(HeadOutputs) -> Result<(Tensor<1>, T), E>,
    acc: &mut GradientsAccumulator<CausalLm>,
) -> Result<(Tensor<3>, f64, T), E> {
    let [b, t, _] = last.dims();
    let device = last.device();
    // A frozen head (LoRA) gives d logp / d h in the same pass, so its backward needs no
    // second pass over the vocabulary.
    let plain = model.valid();
    let normed = plain.norm.forward(last.clone()).narrow(1, 0, t - 1);
    let (out, d_logprob_d_normed) = if head_is_frozen(model) {
        let (out, jacobian) =
            frozen_head_pass(&plain, normed, targets.clone(), temperature, extras);
        (out, Some(jacobian))
    } else {
        let out = head_outputs(
            &plain,
            normed,
            targets.clone(),
            temperature,
            extras.entropy,
            extras.argmax,
        );
        (out, None)
    };
    drop(plain);
    let logprobs = out.logprobs.autodiff().require_grad();
    let (loss_value, measured) = loss(HeadOutputs {
        logprobs: logprobs.clone(),
        ..out
    })?;
    let value = super::scalar(loss_value.clone());
    let mut grads = scaled(loss_value).backward();
    let d_logprobs = logprobs
        .grad_remove(&mut grads)
        .unwrap_or_else(|| Tensor::zeros([b, t - 1], &device));
    // The loss may reach parameters by other paths too (none today): keep what it found.
    acc.accumulate(model, GradientsParams::from_grads(grads, model));
    let d_last = match d_logprob_d_normed {
        Some(jacobian) => norm_backward(model, last, d_logprobs, jacobian, acc),
        None => head_backward(model, last, targets, d_logprobs, temperature, acc),
    };
    Ok((d_last, value, measured))
}

/// Stage 1 for a frozen LM head: the target log-probabilities (and extras) of `normed`
/// `[B, T - 1, H]` (the final norm's output), and, per position, the gradient of the
/// target's log-probability with respect to that position's `normed` row, `[B * (T - 1), H]`.
///
/// With logits `l = s(c · h W) / τ` (`c` the logit scale, `s` the optional soft-cap
/// `cap · tanh(z / cap)`, `τ` the temperature) and `p = softmax(l)`:
/// `d logp_t / d h = (c / τ) · (s'_t W_t − Σ_v p_v s'_v W_v)`, where `s'_v = 1 − (s_v / cap)²`
/// (1 without a cap). The sum is one more product with the head per chunk, which is what a
/// backward pass through the head would cost, and the logits are formed only once.
fn frozen_head_pass(
    model: &CausalLm,
    normed: Tensor<3>,
    targets: Tensor<2, Int>,
    temperature: f32,
    extras: HeadExtras,
) -> (HeadOutputs, Tensor<2>) {
    let [b, t, h] = normed.dims();
    let n = b * t;
    let head = model.head_matrix().expect("a frozen head is one matrix");
    let vocab = head.dims()[1];
    let arch = model.arch();
    let cap = arch.final_softcap;
    let tau = if temperature > 0.0 { temperature } else { 1.0 };
    let factor = (arch.logit_scale as f32) / tau;
    let chunk = (HEAD_BACKWARD_CHUNK_VALUES / vocab.max(1)).clamp(1, n.max(1));
    let flat = normed.reshape([n, h]);
    let flat_targets = targets.reshape([n, 1]);
    // `[V, H]` rows of the head, for the target terms.
    let rows_of_head = head.clone().transpose();
    let (mut lps, mut ents, mut maxes, mut jacobians) = (vec![], vec![], vec![], vec![]);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = flat.clone().narrow(0, start, len);
        let target = flat_targets.clone().narrow(0, start, len);
        // The model's logits (scale and cap applied), then the temperature.
        let capped = model
            .logits_with(&head, x.reshape([1, len, h]))
            .reshape([len, vocab]);
        let slope = cap.map(|cap| {
            let ratio = capped.clone() / cap;
            (ratio.clone() * ratio).neg() + 1.0
        });
        let logits = if (tau - 1.0).abs() > f32::EPSILON {
            capped / tau
        } else {
            capped
        };
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        let p = logp.clone().exp();
        if extras.entropy {
            ents.push((p.clone() * logp.clone()).sum_dim(1).neg());
        }
        if extras.argmax {
            maxes.push(logp.clone().argmax(1));
        }
        lps.push(logp.gather(1, target.clone()));
        // Σ_v p_v s'_v W_v, and s'_t W_t.
        let (weighted, target_slope) = match slope {
            Some(slope) => {
                let target_slope = slope.clone().gather(1, target.clone());
                (p * slope, Some(target_slope))
            }
            None => (p, None),
        };
        let expected = weighted.matmul(rows_of_head.clone());
        let mut target_rows = rows_of_head.clone().select(0, target.reshape([len]));
        if let Some(s) = target_slope {
            target_rows = target_rows * s;
        }
        jacobians.push((target_rows - expected) * factor);
        start += len;
    }
    let out = HeadOutputs {
        logprobs: Tensor::cat(lps, 0).reshape([b, t]),
        entropy: extras.entropy.then(|| Tensor::cat(ents, 0).reshape([b, t])),
        argmax: extras.argmax.then(|| Tensor::cat(maxes, 0).reshape([b, t])),
    };
    (out, Tensor::cat(jacobians, 0))
}

/// Stage 2 for a frozen head: `dL/dh = dL/dlogp · d logp / d h` per position, then through
/// the final norm (autodiff: its scale may train) to `dL/d last`.
fn norm_backward(
    model: &CausalLm,
    last: Tensor<3>,
    d_logprobs: Tensor<2>,
    jacobian: Tensor<2>,
    acc: &mut GradientsAccumulator<CausalLm>,
) -> Tensor<3> {
    let [b, t, h] = last.dims();
    let d_normed = (jacobian * d_logprobs.reshape([b * (t - 1), 1])).reshape([b, t - 1, h]);
    let x = last.autodiff().require_grad();
    let normed = model.norm.forward(x.clone()).narrow(1, 0, t - 1);
    let mut grads = (normed * d_normed).sum().backward();
    let d_last = x
        .grad_remove(&mut grads)
        .expect("the norm's output depends on its input");
    acc.accumulate(model, GradientsParams::from_grads(grads, model));
    d_last
}

/// Stage 2: the final norm and LM head recomputed per chunk of positions from `last` (the
/// last layer's output, `[B, T, H]`, no autodiff), with `d_logprobs` `[B, T - 1]` the loss's
/// gradient at each target's log-probability. Accumulates the head's parameter gradients
/// into `acc` and returns `dL/d last` (zero at each row's final position, which predicts
/// nothing).
fn head_backward(
    model: &CausalLm,
    last: Tensor<3>,
    targets: Tensor<2, Int>,
    d_logprobs: Tensor<2>,
    temperature: f32,
    acc: &mut GradientsAccumulator<CausalLm>,
) -> Tensor<3> {
    let [b, t, h] = last.dims();
    let device = last.device();
    let n = b * (t - 1);
    let vocab = model.vocab_size();
    let chunk = (HEAD_BACKWARD_CHUNK_VALUES / vocab.max(1)).clamp(1, n.max(1));
    let flat = last.narrow(1, 0, t - 1).reshape([n, h]);
    let flat_targets = targets.reshape([n, 1]);
    let flat_d = d_logprobs.reshape([n, 1]);
    let scale = temperature > 0.0 && (temperature - 1.0).abs() > f32::EPSILON;
    let mut d_chunks = Vec::with_capacity(n.div_ceil(chunk));
    // A frozen head is shared by every chunk (widened once when stored narrow); a trained
    // one is rebuilt per chunk, as each chunk's backward consumes its graph.
    let frozen_head = model.head_matrix().filter(|head| !head.is_tracked());
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = flat.clone().narrow(0, start, len).autodiff().require_grad();
        let normed = model.norm.forward(x.clone().reshape([1, len, h]));
        let logits = match &frozen_head {
            Some(head) => model.logits_with(head, normed),
            None => model.logits(normed),
        };
        let mut logits = logits.reshape([len, vocab]);
        if scale {
            logits = logits / temperature;
        }
        let logp = burn::tensor::activation::log_softmax(logits, 1)
            .gather(1, flat_targets.clone().narrow(0, start, len));
        let surrogate = (logp * flat_d.clone().narrow(0, start, len)).sum();
        let mut grads = surrogate.backward();
        d_chunks.push(
            x.grad_remove(&mut grads)
                .unwrap_or_else(|| Tensor::zeros([len, h], &device)),
        );
        acc.accumulate(model, GradientsParams::from_grads(grads, model));
        start += len;
    }
    let d = Tensor::cat(d_chunks, 0).reshape([b, t - 1, h]);
    Tensor::cat(vec![d, Tensor::zeros([b, 1, h], &device)], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::{ModelConfig, WeightReader, decoder, lora};

    fn tiny(model_type: &str, tie: bool) -> (ModelConfig, CausalLm) {
        let device = Device::flex().autodiff();
        let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
            "model_type": model_type, "vocab_size": 40, "hidden_size": 16,
            "intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64,
            "tie_word_embeddings": tie, "head_dim": 4, "sliding_window": 4,
            "final_logit_softcapping": 0.5
        }))
        .unwrap();
        let mut r = WeightReader::new(decoder::init_weights(&cfg, 11), &device);
        let model = CausalLm::from_weights(&cfg, &mut r, true, false).unwrap();
        (cfg, model)
    }

    fn batch(device: &Device) -> SeqBatch {
        let p1: &[u32] = &[3, 9, 17];
        let c1: &[u32] = &[5, 22, 8, 30];
        let p2: &[u32] = &[11, 2];
        let c2: &[u32] = &[19, 1];
        SeqBatch::new(&[p1, p2], &[c1, c2], 0, device)
    }

    /// A loss of GRPO's shape: advantage-weighted log-probabilities, squared so the gradient
    /// at each token differs, over the completion mask.
    fn loss(scored: HeadOutputs, batch: &SeqBatch) -> Result<(Tensor<1>, f32), String> {
        let device = scored.logprobs.device();
        let adv = Tensor::<2>::from_data(TensorData::new(vec![1.5f32, -0.5], [2, 1]), &device);
        let lp = scored.logprobs;
        let l = ((lp.clone() * adv + lp.square() * 0.1) * batch.completion_mask.clone())
            .sum()
            .neg();
        Ok((l, 0.0))
    }

    /// Gradients by each path against one backward pass over the whole graph; returns how
    /// many parameters had one.
    fn assert_same_grads(model: &CausalLm, temperature: f32) -> usize {
        let device = Device::flex().autodiff();
        let b = batch(&device);
        let extras = HeadExtras {
            entropy: true,
            argmax: true,
        };
        let grads = |recompute| {
            logprob_grads(model, (&b).into(), temperature, extras, recompute, |s| {
                loss(s, &b)
            })
            .unwrap()
        };
        // The reference: one backward pass over the whole graph, head included.
        let (whole, whole_value) = {
            let scored = super::super::sequences::score(model, &b, temperature);
            let out = HeadOutputs {
                logprobs: scored.logprobs,
                entropy: scored.entropy,
                argmax: None,
            };
            let (l, _) = loss(out, &b).unwrap();
            let value = super::super::scalar(l.clone());
            (GradientsParams::from_grads(l.backward(), model), value)
        };
        let mut compared = 0;
        // No recomputation, the first 2 of 3 layers, all of them.
        for recompute in [None, Some(2), Some(usize::MAX)] {
            let (staged, staged_value, _) = grads(recompute);
            assert!((whole_value - staged_value).abs() < 1e-5 * whole_value.abs().max(1.0));
            compared = compare(model, &whole, &staged);
        }
        compared
    }

    /// Compares two sets of gradients parameter by parameter; returns how many had one.
    fn compare(model: &CausalLm, whole: &GradientsParams, staged: &GradientsParams) -> usize {
        let model_ids = param_ids(model);
        let mut compared = 0;
        let mut visit = |id: burn::module::ParamId, shape_len: usize| {
            let (want, got) = match shape_len {
                1 => (
                    whole.get::<1>(id).map(|t| t.reshape([-1])),
                    staged.get::<1>(id).map(|t| t.reshape([-1])),
                ),
                _ => (
                    whole.get::<2>(id).map(|t| t.reshape([-1])),
                    staged.get::<2>(id).map(|t| t.reshape([-1])),
                ),
            };
            match (want, got) {
                (Some(w), Some(g)) => {
                    let scale: f32 = w.clone().abs().max().into_scalar::<f32>().max(1e-6);
                    let d: f32 = (w - g).abs().max().into_scalar::<f32>();
                    assert!(
                        d / scale < 1e-4,
                        "param {id}: max |diff| {d} (scale {scale})"
                    );
                    compared += 1;
                }
                (None, None) => {}
                (w, g) => panic!(
                    "param {id}: whole has grad {}, staged has grad {}",
                    w.is_some(),
                    g.is_some()
                ),
            }
        };
        for (id, rank) in model_ids {
            visit(id, rank);
        }
        assert!(compared > 0, "no gradients compared");
        compared
    }

    fn param_ids(model: &CausalLm) -> Vec<(burn::module::ParamId, usize)> {
        use burn::module::{ModuleVisitor, Param};
        struct Ids(Vec<(burn::module::ParamId, usize)>);
        impl ModuleVisitor for Ids {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push((param.id, D));
            }
        }
        let mut ids = Ids(Vec::new());
        model.visit(&mut ids);
        ids.0
    }

    /// Full fine-tuning, tied and untied heads (the tied embedding gets gradients from both
    /// the head and the lookup), at temperature 1 and 0.7: the same gradients as one backward.
    #[test]
    fn layerwise_gradients_equal_whole_graph_gradients() {
        for (family, tie) in [("llama", true), ("qwen2", false), ("gemma2", true)] {
            let (_, model) = tiny(family, tie);
            let all = param_ids(&model).len();
            assert_eq!(
                assert_same_grads(&model, 1.0),
                all,
                "{family}: every parameter trains"
            );
            assert_eq!(assert_same_grads(&model, 0.7), all);
        }
    }

    /// With LoRA on every linear layer only the adapters get gradients, the same ones: the
    /// frozen head's analytic gradient (with Gemma 2's final soft-cap, at 0.5 so it bites,
    /// and a temperature) included.
    #[test]
    fn layerwise_gradients_equal_whole_graph_gradients_with_lora() {
        use crate::engine::model::Family;
        for (family, name, tie) in [
            (Family::Llama, "llama", true),
            (Family::Qwen2, "qwen2", false),
            (Family::Gemma2, "gemma2", true),
        ] {
            let (_, model) = tiny(name, tie);
            let cfg = lora::LoraConfig {
                r: 4,
                lora_alpha: 8.0,
                target_modules: lora::TargetModules::Preset("all-linear".into()),
                ..Default::default()
            };
            let model = lora::add_adapters(model, family, &cfg, "base", 5).unwrap();
            // B starts at zero (as PEFT): move it so A gets a gradient too.
            let model = perturb_lora_b(model);
            // 7 projections x 3 layers, A and B each.
            assert_eq!(assert_same_grads(&model, 1.0), 42, "{name}");
            assert_eq!(assert_same_grads(&model, 0.7), 42, "{name}");
        }
    }

    fn perturb_lora_b(model: CausalLm) -> CausalLm {
        use burn::module::{ModuleMapper, Param};
        struct Shift;
        impl ModuleMapper for Shift {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let (id, tensor, mapper) = param.consume();
                let is_trainable = tensor.is_require_grad();
                let tensor =
                    if is_trainable && tensor.clone().abs().max().into_scalar::<f32>() == 0.0 {
                        let shape = tensor.shape();
                        let device = tensor.device();
                        Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 0.1), &device)
                            .require_grad()
                    } else {
                        tensor
                    };
                Param::from_mapped_value(id, tensor, mapper)
            }
        }
        model.map(&mut Shift)
    }
}
