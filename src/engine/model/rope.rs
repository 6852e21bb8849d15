//! Rotary position embeddings as configs state them: the theta, the scaling (`linear`,
//! `llama3`, `yarn`, `dynamic`), the rotating share of each head, read from either
//! transformers spelling, and the inverse frequencies each scaling gives (as transformers
//! computes them, in f32).

use serde_json::{Map, Value};

use super::config::Fields;

/// RoPE frequency scaling, as `rope_scaling` / `rope_parameters` state it.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
    /// NTK-aware scaling recomputed for the length of each forward pass.
    Dynamic {
        factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// One set of rotary frequencies.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Leading dimensions of each head that rotate (`partial_rotary_factor * head_dim`).
    pub rotary_dim: usize,
}

/// Reads RoPE settings from either spelling: transformers 4's top-level `rope_theta` and
/// `rope_scaling`, or transformers 5's `rope_parameters` (which may be keyed by layer type, as
/// Gemma 3's is). `layer_type` picks that key (`full_attention`, `sliding_attention`).
pub fn read_rope(
    f: &Fields,
    layer_type: Option<&str>,
    default_theta: f64,
    head_dim: usize,
    max_positions: usize,
) -> Result<Rope, String> {
    let params = f.get("rope_parameters").and_then(|p| p.as_object());
    let params = match (params, layer_type) {
        (Some(p), Some(kind)) if p.get(kind).is_some_and(|v| v.is_object()) => {
            p.get(kind).and_then(|v| v.as_object())
        }
        (p, _) => p,
    };
    let scaling = f.get("rope_scaling").and_then(|v| v.as_object());
    // Values in `rope_scaling` (v4) or `rope_parameters` (v5).
    let source = scaling.or(params);
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(|v| v.as_f64())
        .map(Ok)
        .unwrap_or_else(|| f.f64("rope_theta").map(|t| t.unwrap_or(default_theta)))?;
    let partial = match params.and_then(|p| p.get("partial_rotary_factor")) {
        Some(v) => v.as_f64(),
        None => f.f64("partial_rotary_factor")?,
    }
    .unwrap_or(1.0);
    let rotary_dim = (head_dim as f64 * partial) as usize;
    let scaling = match source {
        None => RopeScaling::None,
        Some(s) => parse_scaling(s, max_positions)?,
    };
    Ok(Rope {
        theta,
        scaling,
        rotary_dim,
    })
}

fn parse_scaling(s: &Map<String, Value>, max_positions: usize) -> Result<RopeScaling, String> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |key: &str| s.get(key).and_then(|v| v.as_f64());
    let need = |key: &str| {
        num(key).ok_or_else(|| format!("`rope_scaling.{key}` is missing for rope type `{kind}`"))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: num("original_max_position_embeddings")
                .unwrap_or(8192.0),
        },
        "yarn" => {
            let original = num("original_max_position_embeddings");
            // transformers: with an explicit original length, the factor is the ratio of the
            // configured length to it.
            let factor = match original {
                Some(orig) if orig > 0.0 => max_positions as f64 / orig,
                _ => need("factor")?,
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original.unwrap_or(max_positions as f64),
                beta_fast: num("beta_fast").unwrap_or(32.0),
                beta_slow: num("beta_slow").unwrap_or(1.0),
                attention_factor: num("attention_factor"),
                mscale: num("mscale"),
                mscale_all_dim: num("mscale_all_dim"),
                truncate: s.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true),
            }
        }
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor")?,
            original_max_position_embeddings: max_positions,
        },
        other => {
            return Err(format!(
                "`rope_scaling` type `{other}` is not supported (default, linear, llama3, yarn, dynamic)"
            ));
        }
    })
}

impl Rope {
    /// Inverse frequencies (f32, as transformers computes them) and the factor cos/sin are
    /// scaled by (YaRN's attention factor; 1 otherwise). `seq_len` matters only for dynamic
    /// scaling: the longest position + 1 of the forward pass.
    pub fn inv_freq(&self, seq_len: usize) -> (Vec<f32>, f32) {
        let d = self.rotary_dim;
        let base_freq = |theta: f64| -> Vec<f32> {
            (0..d / 2)
                .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / d as f32))
                .collect()
        };
        match &self.scaling {
            RopeScaling::None => (base_freq(self.theta), 1.0),
            RopeScaling::Linear { factor } => (
                base_freq(self.theta)
                    .into_iter()
                    .map(|f| f / *factor as f32)
                    .collect(),
                1.0,
            ),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high, old_ctx) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *original_max_position_embeddings as f32,
                );
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                let inv = base_freq(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen >= high_wavelen {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        } else {
                            f
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention =
                    attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                        (Some(m), Some(all)) if *m != 0.0 && *all != 0.0 => {
                            get_mscale(*factor, *m) / get_mscale(*factor, *all)
                        }
                        _ => get_mscale(*factor, 1.0),
                    });
                let dim = d as f64;
                let correction = |rotations: f64| {
                    dim * (original_max_position_embeddings
                        / (rotations * 2.0 * std::f64::consts::PI))
                        .ln()
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let pos_freqs: Vec<f32> = (0..d / 2)
                    .map(|i| (self.theta as f32).powf((2 * i) as f32 / d as f32))
                    .collect();
                let inv = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let ramp =
                            ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        let interp = 1.0 / (*factor as f32 * p);
                        let extra = 1.0 / p;
                        interp * (1.0 - extrapolation) + extra * extrapolation
                    })
                    .collect();
                (inv, attention as f32)
            }
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings,
            } => {
                let orig = *original_max_position_embeddings;
                if seq_len <= orig {
                    return (base_freq(self.theta), 1.0);
                }
                let dim = d as f64;
                let theta = self.theta
                    * ((factor * seq_len as f64 / orig as f64) - (factor - 1.0))
                        .powf(dim / (dim - 2.0));
                (base_freq(theta), 1.0)
            }
        }
    }
}
