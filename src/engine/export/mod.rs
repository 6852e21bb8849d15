//! `rlft export CONFIG --engine trl|verl|openrlhf OUT/`: an rlft config as a runnable script of
//! an engine built for many GPUs, for when a run outgrows one machine. Each engine's module
//! keeps that engine's names for every setting that has one, converts the data to the format
//! it reads, writes the shipped answer checkers as Python reward functions, maps `[lora]`,
//! and points the engine's logs where `rlft watch` follows them. What does not carry over is
//! listed in `NOT_CARRIED.md`, never dropped in silence.

pub mod openrlhf;
pub mod trl;
pub mod verl;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::engine::config::RunConfig;
use crate::engine::reward::RewardConfig;
use crate::engine::tasks::AnswerKind;

pub use trl::to_trl;

/// What an export wrote and what it could not carry over.
#[derive(Debug, Default)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub not_carried: Vec<String>,
}

/// The engines rlft exports to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Trl,
    Verl,
    OpenRlhf,
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trl" => Ok(Engine::Trl),
            "verl" => Ok(Engine::Verl),
            "openrlhf" => Ok(Engine::OpenRlhf),
            other => Err(format!("--engine {other}: expected trl, verl or openrlhf")),
        }
    }
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Trl => "trl",
            Engine::Verl => "verl",
            Engine::OpenRlhf => "openrlhf",
        }
    }
}

/// Writes `cfg` as `engine`'s script into `out`; paths in the config are relative to
/// `config_dir`.
pub fn export(
    engine: Engine,
    cfg: &RunConfig,
    config_dir: &Path,
    out: &Path,
) -> Result<Exported, String> {
    match engine {
        Engine::Trl => trl::to_trl(cfg, config_dir, out),
        Engine::Verl => verl::to_verl(cfg, config_dir, out),
        Engine::OpenRlhf => openrlhf::to_openrlhf(cfg, config_dir, out),
    }
}

/// An RL step's shape: completions per prompt, prompts per step (one rollout), and prompts
/// per optimizer update. GRPO counts completions in `[train]` (TRL's batch) and updates once
/// per rollout; PPO's rollout is `num_mini_batches` updates of the batch.
pub(crate) fn rollout_shape(cfg: &RunConfig) -> (usize, usize, usize) {
    let t = &cfg.train;
    let batch = t.per_device_train_batch_size * t.gradient_accumulation_steps;
    match cfg.method {
        crate::engine::config::Method::Ppo => {
            let m = cfg.ppo.as_ref().map_or(1, |p| p.num_mini_batches.max(1));
            (1, batch * m, batch)
        }
        _ => {
            let n = cfg.grpo.as_ref().map_or(1, |g| g.num_generations.max(1));
            let prompts = (batch / n).max(1);
            (n, prompts, prompts)
        }
    }
}

/// How an RL method samples: tokens per completion, temperature, top-k (0 = off), top-p,
/// and whether prompts take the chat template.
pub(crate) struct Sampling {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub chat: bool,
}

pub(crate) fn sampling(cfg: &RunConfig) -> Sampling {
    match cfg.method {
        crate::engine::config::Method::Ppo => {
            let p = cfg.ppo.clone().unwrap_or_default();
            Sampling {
                max_new_tokens: p.response_length,
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                chat: p.chat,
            }
        }
        _ => {
            let g = cfg.grpo.clone().unwrap_or_default();
            Sampling {
                max_new_tokens: g.max_completion_length,
                temperature: g.temperature,
                top_k: g.top_k,
                top_p: g.top_p,
                chat: g.chat,
            }
        }
    }
}

/// A config path made absolute against the config's folder.
pub(crate) fn resolve(config_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    }
}

/// The model folder, with a note when it is a GGUF file (the engines load HF folders).
pub(crate) fn model_path(
    cfg: &RunConfig,
    config_dir: &Path,
    not_carried: &mut Vec<String>,
) -> PathBuf {
    let model = resolve(config_dir, &cfg.model.path);
    if model.extension().is_some_and(|e| e == "gguf") {
        not_carried.push(format!(
            "[model] path = {}: the engines load Hugging Face folders; convert it first with \
             `rlft convert {} DIR` and point the script at DIR",
            model.display(),
            model.display()
        ));
    }
    if cfg.model.adapter.is_some() {
        not_carried.push(
            "[model] adapter: the script trains from the base model; merge the adapter first \
             (`rlft convert --adapter`) or load it in the script"
                .into(),
        );
    }
    model
}

/// Writes `text` to `out/name` and records it.
pub(crate) fn write(
    out: &Path,
    name: &str,
    text: &str,
    report: &mut Exported,
) -> Result<(), String> {
    let path = out.join(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    report.files.push(path);
    Ok(())
}

pub(crate) fn not_carried_text(items: &[String]) -> String {
    let mut s = String::from("# What did not carry over from the rlft config\n\n");
    if items.is_empty() {
        s.push_str("Everything did.\n");
    }
    for i in items {
        let _ = writeln!(s, "- {i}");
    }
    s
}

/// A Python float literal.
pub(crate) fn py_f(v: f64) -> String {
    format!("{v:?}")
}

/// The answer checkers rlft ships, as Python functions of one completion (and its answer)
/// returning 0.0 or 1.0; each engine wraps them in its reward-function signature.
pub(crate) struct Checkers {
    /// Python source of `exact_match(completion, answer)` and `format(completion)` as used.
    pub code: String,
    /// (name, weight) of each reward in the config's order.
    pub weights: Vec<(String, f32)>,
}

/// The config's `[[rewards]]` that rlft can write as Python; the rest are listed.
pub(crate) fn checkers(cfg: &RunConfig, not_carried: &mut Vec<String>) -> Checkers {
    let mut code = String::new();
    let mut weights = Vec::new();
    for r in &cfg.rewards {
        match r {
            RewardConfig::ExactMatch(c)
                if matches!(
                    c.check,
                    AnswerKind::Auto | AnswerKind::Integer | AnswerKind::Word | AnswerKind::Text
                ) =>
            {
                code.push_str(EXACT_MATCH);
                weights.push(("exact_match".to_string(), c.weight));
            }
            RewardConfig::Format(c)
                if matches!(c.check, AnswerKind::Auto | AnswerKind::Integer) =>
            {
                code.push_str(
                    &FORMAT.replace("MAX_CHARS", &c.max_chars.unwrap_or(8).to_string()),
                );
                weights.push(("format".to_string(), c.weight));
            }
            other => not_carried.push(format!(
                "[[rewards]] {}: no Python version is written; add it to the script's reward functions",
                crate::engine::config::setting_name(other)
                    .chars()
                    .take(80)
                    .collect::<String>()
            )),
        }
    }
    Checkers { code, weights }
}

const EXACT_MATCH: &str = r#"
def exact_match_one(completion, answer):
    """rlft's `exact_match`: 1 when the first line of the completion, trimmed, is the answer
    (as integers when both are)."""
    line = completion.split("\n")[0].strip()
    answer = str(answer).strip()
    try:
        return 1.0 if int(line) == int(answer) else 0.0
    except ValueError:
        return 1.0 if line == answer else 0.0
"#;

const FORMAT: &str = r#"
def format_one(completion, answer=None):
    """rlft's `format` for integer answers: 1 when the first line is a short integer."""
    first = completion.split("\n")[0]
    s = first.strip()
    digits = s[1:] if s.startswith("-") else s
    return 1.0 if len(first) <= MAX_CHARS and digits.isdigit() else 0.0
"#;
