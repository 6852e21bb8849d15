//! Single-sequence decoding on the CPU outside Burn, for `rlft generate`, `rlft serve` and
//! one-row rollouts.
//!
//! Decoding one sequence multiplies every weight matrix by one vector per token, so its speed
//! is the speed at which the weights stream from memory. Burn's CPU backend hands these
//! products to `gemm`, whose one-row path reads the `[in, out]` weights column-wise and reaches
//! about 20 GB/s on the vocabulary projection. Here the weights are copied once, row-major
//! `[out, in]` as in the checkpoint, into one arena in the order a token reads them (on
//! transparent huge pages where Linux offers them), and each product is a set of dot products
//! four rows at a time with AVX-512 or AVX2 where the CPU has them.
//!
//! The arithmetic is the model's own ([`CausalLm::hidden`] and [`CausalLm::logits`]): the same RoPE
//! tables, RMS norm in f32, grouped-query attention and SwiGLU; a test holds the logits to
//! those of the Burn forward pass.

mod attention;
mod kernels;

use rayon::prelude::*;

use super::{CausalLm, host_f32};
use attention::{AttentionDims, attend_chunk, attend_one};
use kernels::{dot_rows, huge_page_vec};

/// Products of at least this many multiply-adds are split over the thread pool: below it,
/// waking threads costs more than the product (a 576 x 192 projection is ~110k).
const PARALLEL_MIN_WORK: usize = 1 << 17;

/// Prompt tokens per forward pass during prefill: the weights are read once per chunk, and
/// the per-chunk activations stay in cache.
const PREFILL_CHUNK: usize = 64;

/// A weight matrix `[rows, cols]` (Hugging Face's `[out, in]`) inside the arena.
#[derive(Clone, Copy, Debug)]
struct Matrix {
    offset: usize,
    rows: usize,
    cols: usize,
}

#[derive(Clone, Debug)]
struct Projection {
    weight: Matrix,
    bias: Option<Vec<f32>>,
}

#[derive(Clone, Debug)]
struct Layer {
    input_norm: Vec<f32>,
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    post_norm: Vec<f32>,
    gate: Projection,
    up: Projection,
    down: Projection,
}

/// A host copy of a plain Llama-block [`CausalLm`]'s language-model path, laid out for one-row decoding.
pub struct CpuDecoder {
    arena: Vec<f32>,
    layers: Vec<Layer>,
    embed: Matrix,
    /// The untied output projection; `None` reads `embed` (tied embeddings).
    lm_head: Option<Matrix>,
    final_norm: Vec<f32>,
    norm_eps: f32,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// `[max_positions, head_dim]`, the model's own tables (sin with its first half negated).
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    max_positions: usize,
}

/// Keys and values of one sequence, `[position, kv_heads * head_dim]` per layer.
pub struct DecodeState {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl DecodeState {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl CpuDecoder {
    /// Whether this decoder implements `model`'s block: the plain Llama block (Llama, SmolLM,
    /// Qwen2, Mistral without a window). Other families decode on the batched path.
    pub fn supports(model: &CausalLm) -> bool {
        let head_dim = model.layers.first().map_or(0, |l| l.self_attn.head_dim);
        // Adapters are merged before decoding (`rlft generate --adapter`); an unmerged one
        // would be ignored here.
        model.arch().is_plain_llama(head_dim) && !super::lora::has_adapters(model)
    }

    /// Copies the weights of `model` (on any device) into a decoder, when [`Self::supports`]
    /// it. The model's score head, if any, is not copied: this decodes text.
    pub fn from_model(model: &CausalLm) -> Option<Self> {
        if !Self::supports(model) {
            return None;
        }
        let [vocab, hidden] = model.embed_tokens.dims();
        let first = model.layers.first().map(|l| &l.self_attn);
        let (n_heads, n_kv_heads, head_dim) =
            first.map_or((1, 1, hidden), |a| (a.n_heads, a.n_kv_heads, a.head_dim));
        // Sizes first, so the arena is allocated (and advised) once before it is written.
        let mut total = vocab * hidden;
        for l in &model.layers {
            for w in l.linears() {
                total += w.weight.dims().iter().product::<usize>();
            }
        }
        if let Some(h) = &model.lm_head {
            total += h.weight.dims().iter().product::<usize>();
        }
        let mut arena = huge_page_vec(total);
        let push_linear = |arena: &mut Vec<f32>, linear: &super::blocks::Linear| {
            // Burn keeps `[in, out]`; the dot products want `[out, in]`.
            let [cols, rows] = linear.weight.dims();
            let offset = arena.len();
            arena.extend(super::transpose(&host_f32(linear.weight.val()), cols, rows));
            Projection {
                weight: Matrix { offset, rows, cols },
                bias: linear.bias.as_ref().map(|b| host_f32(b.val())),
            }
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            let a = &l.self_attn;
            let m = &l.mlp;
            // Arena order = reading order within a token.
            layers.push(Layer {
                input_norm: host_f32(l.attn_norm.as_ref()?.weight.val()),
                q: push_linear(&mut arena, &a.q_proj),
                k: push_linear(&mut arena, &a.k_proj),
                v: push_linear(&mut arena, &a.v_proj),
                o: push_linear(&mut arena, &a.o_proj),
                post_norm: host_f32(l.mlp_norm.as_ref()?.weight.val()),
                gate: push_linear(&mut arena, m.gate_proj.as_ref()?),
                up: push_linear(&mut arena, &m.up_proj),
                down: push_linear(&mut arena, &m.down_proj),
            });
        }
        let lm_head = model
            .lm_head
            .as_ref()
            .map(|h| push_linear(&mut arena, h).weight);
        let embed = Matrix {
            offset: arena.len(),
            rows: vocab,
            cols: hidden,
        };
        arena.extend(host_f32(model.embed_tokens.val()));
        let max_positions = model_max_positions(model);
        let (rope_cos, rope_sin) = model.rope_host(max_positions)?;
        Some(Self {
            arena,
            layers,
            embed,
            lm_head,
            final_norm: host_f32(model.norm.weight.val()),
            norm_eps: model.norm.eps as f32,
            n_heads,
            n_kv_heads,
            head_dim,
            max_positions,
            rope_cos,
            rope_sin,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.lm_head.unwrap_or(self.embed).rows
    }

    /// A fresh cache with room for `capacity` positions (it grows past that if needed).
    pub fn new_state(&self, capacity: usize) -> DecodeState {
        let kv = self.n_kv_heads * self.head_dim;
        let cap = capacity.min(self.max_positions) * kv;
        DecodeState {
            keys: (0..self.layers.len())
                .map(|_| Vec::with_capacity(cap))
                .collect(),
            values: (0..self.layers.len())
                .map(|_| Vec::with_capacity(cap))
                .collect(),
            len: 0,
        }
    }

    /// Runs `tokens` at the next positions of `state` and returns the next-token logits after
    /// the last of them. Long inputs go through in chunks of [`PREFILL_CHUNK`].
    ///
    /// Panics if `tokens` is empty or runs past the model's positions (callers bound both).
    pub fn forward(&self, state: &mut DecodeState, tokens: &[u32]) -> Vec<f32> {
        // Run the token on a worker of the thread pool: a product split from there keeps
        // half for the calling worker and leaves half for another, where one called from
        // outside waits for a sleeping worker to wake (tens of microseconds, ~200 times a
        // token: 2 threads were slower than 1).
        if rayon::current_num_threads() > 1 && rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.forward_on_worker(state, tokens));
        }
        self.forward_on_worker(state, tokens)
    }

    fn forward_on_worker(&self, state: &mut DecodeState, tokens: &[u32]) -> Vec<f32> {
        assert!(!tokens.is_empty(), "forward needs at least one token");
        assert!(
            state.len + tokens.len() <= self.max_positions,
            "{} positions exceed the model's {}",
            state.len + tokens.len(),
            self.max_positions
        );
        let mut last = Vec::new();
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            last = self.forward_chunk(state, chunk);
        }
        let hidden = self.embed.cols;
        let mut normed = vec![0.0; hidden];
        rms_norm(&last, &self.final_norm, self.norm_eps, &mut normed);
        let head = self.lm_head.unwrap_or(self.embed);
        let mut logits = vec![0.0; head.rows];
        self.linear(head, None, &normed, 1, &mut logits);
        logits
    }

    /// The decoder layers over `tokens`; returns the residual stream of the last token.
    fn forward_chunk(&self, state: &mut DecodeState, tokens: &[u32]) -> Vec<f32> {
        let t = tokens.len();
        let h = self.embed.cols;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let past = state.len;
        let mut x = Vec::with_capacity(t * h);
        for &id in tokens {
            let start = self.embed.offset + (id as usize).min(self.embed.rows - 1) * h;
            x.extend_from_slice(&self.arena[start..start + h]);
        }
        let mut normed = vec![0.0; t * h];
        let mut q = vec![0.0; t * q_dim];
        let mut k = vec![0.0; t * kv_dim];
        let mut v = vec![0.0; t * kv_dim];
        let mut attn = vec![0.0; t * q_dim];
        let mut proj = vec![0.0; t * h];
        let ff = self.layers.first().map_or(0, |l| l.gate.weight.rows);
        let mut gate = vec![0.0; t * ff];
        let mut up = vec![0.0; t * ff];
        let mut scores = Vec::with_capacity(past + t);
        for (li, layer) in self.layers.iter().enumerate() {
            for i in 0..t {
                let r = i * h..(i + 1) * h;
                rms_norm(
                    &x[r.clone()],
                    &layer.input_norm,
                    self.norm_eps,
                    &mut normed[r],
                );
            }
            self.project_same_input(
                [
                    (&layer.q, &mut q[..]),
                    (&layer.k, &mut k),
                    (&layer.v, &mut v),
                ],
                &normed,
                t,
            );
            for i in 0..t {
                let pos = past + i;
                for head in q[i * q_dim..(i + 1) * q_dim].chunks_mut(hd) {
                    self.rope(head, pos);
                }
                for head in k[i * kv_dim..(i + 1) * kv_dim].chunks_mut(hd) {
                    self.rope(head, pos);
                }
            }
            let keys = &mut state.keys[li];
            let values = &mut state.values[li];
            keys.truncate(past * kv_dim);
            values.truncate(past * kv_dim);
            keys.extend_from_slice(&k);
            values.extend_from_slice(&v);
            let dims = AttentionDims {
                t,
                past,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            if t == 1 {
                attend_one(&dims, &q, keys, values, &mut scores, &mut attn);
            } else {
                attend_chunk(&dims, &q, keys, values, &mut attn);
            }
            self.project(&layer.o, &attn, t, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            for i in 0..t {
                let r = i * h..(i + 1) * h;
                rms_norm(
                    &x[r.clone()],
                    &layer.post_norm,
                    self.norm_eps,
                    &mut normed[r],
                );
            }
            self.project_same_input(
                [(&layer.gate, &mut gate[..]), (&layer.up, &mut up)],
                &normed,
                t,
            );
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            self.project(&layer.down, &gate, t, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        state.len = past + t;
        x.split_off((t - 1) * h)
    }

    fn project(&self, p: &Projection, x: &[f32], t: usize, y: &mut [f32]) {
        self.linear(p.weight, p.bias.as_deref(), x, t, y);
    }

    /// Several projections of the same input (q, k, v; gate, up). For one token they share
    /// one parallel region, split into one block of rows per thread across all of them: a
    /// region costs a fork and a join, ~200 of them a token otherwise.
    fn project_same_input<const N: usize>(
        &self,
        outputs: [(&Projection, &mut [f32]); N],
        x: &[f32],
        t: usize,
    ) {
        let threads = rayon::current_num_threads();
        let total: usize = outputs.iter().map(|(p, _)| p.weight.rows).sum();
        let cols = outputs.first().map_or(0, |(p, _)| p.weight.cols);
        if t > 1 || threads == 1 || total * cols < PARALLEL_MIN_WORK {
            for (p, y) in outputs {
                self.project(p, x, t, y);
            }
            return;
        }
        let block = total.div_ceil(threads).next_multiple_of(4);
        let mut tasks: Vec<RowBlock> = Vec::new();
        for (p, y) in outputs {
            let w = p.weight;
            let weights = &self.arena[w.offset..w.offset + w.rows * w.cols];
            for (i, out) in y[..w.rows].chunks_mut(block).enumerate() {
                let r0 = i * block;
                let bias = p.bias.as_deref().map(|b| &b[r0..r0 + out.len()]);
                tasks.push(RowBlock {
                    weights: &weights[r0 * cols..],
                    out,
                    bias,
                });
            }
        }
        tasks.into_par_iter().for_each(|task| {
            dot_rows(task.weights, &x[..cols], cols, task.out);
            if let Some(b) = task.bias {
                task.out.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
        });
    }

    /// `y[t, rows] = x[t, cols] · W^T (+ bias)`.
    fn linear(&self, w: Matrix, bias: Option<&[f32]>, x: &[f32], t: usize, y: &mut [f32]) {
        let weights = &self.arena[w.offset..w.offset + w.rows * w.cols];
        let (rows, cols) = (w.rows, w.cols);
        if t == 1 {
            let threads = rayon::current_num_threads();
            if rows * cols >= PARALLEL_MIN_WORK && threads > 1 {
                // One contiguous block of rows per thread: each streams its own part of the
                // matrix, and no more tasks are made than threads can take at once.
                let block = rows.div_ceil(threads).next_multiple_of(4);
                y[..rows]
                    .par_chunks_mut(block)
                    .enumerate()
                    .for_each(|(i, out)| {
                        let r0 = i * block;
                        dot_rows(&weights[r0 * cols..], &x[..cols], cols, out);
                    });
            } else {
                dot_rows(weights, &x[..cols], cols, &mut y[..rows]);
            }
        } else {
            // Several tokens (prefill): a real matrix product, compute-bound, where `gemm`'s
            // packed AVX-512 kernels are ~2x faster than dot products. W^T is read through
            // its strides, no copy.
            let parallelism = if rows * cols * t >= PARALLEL_MIN_WORK {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            };
            assert!(x.len() >= t * cols && y.len() >= t * rows);
            // SAFETY: dst is y[t, rows] row-major, lhs x[t, cols] row-major and rhs W^T
            // [cols, rows] read from W[rows, cols]; the asserts above and the arena slice
            // bound every index gemm touches.
            unsafe {
                gemm::gemm(
                    t,
                    rows,
                    cols,
                    y.as_mut_ptr(),
                    1,
                    rows as isize,
                    false,
                    x.as_ptr(),
                    1,
                    cols as isize,
                    weights.as_ptr(),
                    cols as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        if let Some(b) = bias {
            for row in y[..t * rows].chunks_mut(rows) {
                row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
        }
    }

    /// Rotary embedding of one head at `pos`, "rotate half" as [`Llama`] applies it:
    /// `x * cos + cat(x2, x1) * sin` (the sign lives in the sin table), in place.
    fn rope(&self, head: &mut [f32], pos: usize) {
        let d = self.head_dim;
        let half = d / 2;
        let cos = &self.rope_cos[pos * d..(pos + 1) * d];
        let sin = &self.rope_sin[pos * d..(pos + 1) * d];
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos[i] + b * sin[i];
            head[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

impl super::decoder::DecoderLayer {
    /// The projections, in arena order.
    fn linears(&self) -> impl Iterator<Item = &super::blocks::Linear> {
        let (a, m) = (&self.self_attn, &self.mlp);
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
            .into_iter()
            .chain(m.gate_proj.as_ref())
            .chain([&m.up_proj, &m.down_proj])
    }
}

/// Positions the decoder's rotary tables cover: the config's maximum, capped so a 131k-context
/// model does not hold gigabytes of tables (longer generations stop at the cap).
fn model_max_positions(model: &CausalLm) -> usize {
    const CAP: usize = 32_768;
    model.max_positions().min(CAP)
}

/// One thread's share of a product: rows of a weight matrix (from the block's first row),
/// their outputs and their part of the bias.
struct RowBlock<'a> {
    weights: &'a [f32],
    out: &'a mut [f32],
    bias: Option<&'a [f32]>,
}

/// RMS norm in f32 as [`super::blocks::Norm`]: `x / sqrt(mean(x^2) + eps) * weight`.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
}
