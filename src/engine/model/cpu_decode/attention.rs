//! Attention for the CPU decoder: one new token over the cache (dot products), or a prefill
//! chunk (two `gemm` products per head, heads in parallel).

use rayon::prelude::*;

use super::kernels::dot;

/// Shapes of one attention call: `t` new tokens after `past` cached positions.
pub(super) struct AttentionDims {
    pub(super) t: usize,
    pub(super) past: usize,
    pub(super) n_heads: usize,
    pub(super) n_kv_heads: usize,
    pub(super) head_dim: usize,
}

/// Attention of one new token over the cache (`keys`/`values` already hold it). Query head
/// `qh` reads key/value head `qh / (n_heads / n_kv_heads)`, as in the Burn forward.
pub(super) fn attend_one(
    d: &AttentionDims,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, kv_dim) = (d.head_dim, d.n_kv_heads * d.head_dim);
    let group = d.n_heads / d.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let seen = d.past + 1;
    for qh in 0..d.n_heads {
        let kvh = qh / group;
        let query = &q[qh * hd..(qh + 1) * hd];
        scores.clear();
        scores.extend((0..seen).map(|s| {
            let key = &keys[s * kv_dim + kvh * hd..s * kv_dim + (kvh + 1) * hd];
            dot(query, key) * scale
        }));
        softmax_in_place(scores);
        let head_out = &mut out[qh * hd..(qh + 1) * hd];
        head_out.fill(0.0);
        for (s, &p) in scores.iter().enumerate() {
            let value = &values[s * kv_dim + kvh * hd..s * kv_dim + (kvh + 1) * hd];
            for (o, &val) in head_out.iter_mut().zip(value) {
                *o += p * val;
            }
        }
    }
}

/// Causal attention of `t` new tokens (a prefill chunk) over the cache, as two matrix
/// products per query head (scores, then the weighted values) with `gemm`, heads in parallel.
pub(super) fn attend_chunk(
    d: &AttentionDims,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
) {
    let (t, past, hd) = (d.t, d.past, d.head_dim);
    let (q_dim, kv_dim) = (d.n_heads * hd, d.n_kv_heads * hd);
    let group = d.n_heads / d.n_kv_heads;
    let len = past + t;
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(q.len() >= t * q_dim && keys.len() >= len * kv_dim && values.len() >= len * kv_dim);
    let heads: Vec<Vec<f32>> = (0..d.n_heads)
        .into_par_iter()
        .map(|qh| {
            let kvh = qh / group;
            let mut scores = vec![0.0f32; t * len];
            // SAFETY: scores[t, len] row-major; Q_h[t, hd] read from q with row stride q_dim;
            // K_h^T[hd, len] read from keys[len, kv_dim]; all within the asserted lengths.
            unsafe {
                gemm::gemm(
                    t,
                    len,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    q.as_ptr().add(qh * hd),
                    1,
                    q_dim as isize,
                    keys.as_ptr().add(kvh * hd),
                    kv_dim as isize,
                    1,
                    0.0f32,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            // Row i sees positions 0..=past + i.
            for (i, row) in scores.chunks_mut(len).enumerate() {
                let seen = past + i + 1;
                softmax_in_place(&mut row[..seen]);
                row[seen..].fill(0.0);
            }
            let mut head_out = vec![0.0f32; t * hd];
            // SAFETY: head_out[t, hd]; P[t, len]; V_h[len, hd] read from values[len, kv_dim].
            unsafe {
                gemm::gemm(
                    t,
                    hd,
                    len,
                    head_out.as_mut_ptr(),
                    1,
                    hd as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    len as isize,
                    values.as_ptr().add(kvh * hd),
                    1,
                    kv_dim as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            head_out
        })
        .collect();
    for (qh, head_out) in heads.iter().enumerate() {
        for i in 0..t {
            out[i * q_dim + qh * hd..i * q_dim + (qh + 1) * hd]
                .copy_from_slice(&head_out[i * hd..(i + 1) * hd]);
        }
    }
}

fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in v.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    v.iter_mut().for_each(|s| *s *= inv);
}
