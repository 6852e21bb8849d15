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

/// GRPO settings neither verl's nor OpenRLHF's actor has: said once, in the engine's name.
pub(crate) fn grpo_gaps(
    g: &crate::engine::config::methods::GrpoSection,
    engine: &str,
    out: &mut Vec<String>,
) {
    if g.sft_coef > 0.0 {
        out.push(format!(
            "[grpo] sft_coef: {engine}'s actor has no demonstration term"
        ));
    }
    if g.top_entropy_quantile
        != crate::engine::config::methods::GrpoSection::default().top_entropy_quantile
    {
        out.push(format!(
            "[grpo] top_entropy_quantile: not in {engine}'s actor"
        ));
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
            RewardConfig::ExactMatch(c) if c.check == AnswerKind::Numeric => {
                add_numeric(&mut code);
                code.push_str(EXACT_MATCH_NUMERIC);
                weights.push(("exact_match".to_string(), c.weight));
            }
            RewardConfig::Format(c) if c.check == AnswerKind::Numeric => {
                add_numeric(&mut code);
                code.push_str(&FORMAT_NUMERIC.replace(
                    "MAX_CHARS",
                    &c.max_chars
                        .unwrap_or(AnswerKind::Numeric.default_max_chars())
                        .to_string(),
                ));
                weights.push(("format".to_string(), c.weight));
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

/// Adds the numeric parser once.
fn add_numeric(code: &mut String) {
    if !code.contains("def final_answer(") {
        code.push_str(NUMERIC);
    }
}

/// rlft's numeric answers (`src/engine/tasks/numeric.rs`) in Python: the same tokens
/// (thousands groups, decimals, `a/b`, a sign unless it follows a letter, digit or `)`), the
/// same order (`####`, then the last `\boxed{}`, then the last number), exact fractions.
const NUMERIC: &str = r######"
import re as _re
from fractions import Fraction as _Fraction

_MAX_DIGITS = 30
_TOKEN = _re.compile(r"([0-9]{1,3}(?:,[0-9]{3}(?![0-9]))+|[0-9]+)(?:\.([0-9]+)|/([0-9]+))?")


def _value(int_digits, frac_digits, den_digits):
    if len(int_digits) + len(frac_digits) > _MAX_DIGITS or len(den_digits) > _MAX_DIGITS:
        return None
    mantissa = int(int_digits + frac_digits)
    den = int(den_digits) if den_digits else 10 ** len(frac_digits)
    return None if den == 0 else _Fraction(mantissa, den)


def _scan_numbers(text):
    out = []
    i = 0
    while i < len(text):
        if not text[i].isdigit() or not text[i].isascii():
            i += 1
            continue
        m = _TOKEN.match(text, i)
        value = _value(m.group(1).replace(",", ""), m.group(2) or "", m.group(3) or "")
        if value is not None:
            sign = i > 0 and text[i - 1] == "-" and (i < 2 or not (text[i - 2].isascii() and (text[i - 2].isalnum() or text[i - 2] == ")")))
            out.append(-value if sign else value)
        i = m.end()
    return out


def _braced(s):
    depth = 0
    for i, c in enumerate(s):
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return s[:i]
            depth -= 1
    return None


def _strip_decoration(s):
    kept = [c for c in s if c not in "$*"]
    out = ""
    for i, c in enumerate(kept):
        if c.isspace():
            after = next((a for a in kept[i:] if not a.isspace()), None)
            between = out[-1:].isdigit() and after is not None and after.isdigit()
            if not between or out.endswith(" "):
                continue
            out += " "
        else:
            out += c
    return out


def _parse_frac(s):
    negative = s.startswith("-")
    if negative:
        s = s[1:]
    for prefix in ("\\frac{", "\\dfrac{", "\\tfrac{"):
        if s.startswith(prefix):
            rest = s[len(prefix):]
            break
    else:
        return None
    top = _braced(rest)
    if top is None or not rest[len(top) + 1:].startswith("{"):
        return None
    rest = rest[len(top) + 2:]
    bottom = _braced(rest)
    if bottom is None or len(rest) != len(bottom) + 1:
        return None
    a, b = parse_number(top), parse_number(bottom)
    if a is None or b is None or b == 0:
        return None
    return -(a / b) if negative else a / b


def parse_number(s):
    """One number, the whole of `s` once `$`, `*`, spaces and a final `.` are dropped."""
    clean = s.replace("\\$", "").replace("\\,", "").replace("\\!", "")
    clean = _strip_decoration(clean)
    if clean.endswith("."):
        clean = clean[:-1]
    value = _parse_frac(clean)
    if value is not None:
        return value
    numbers = _scan_numbers(clean)
    start = 1 if clean.startswith("-") else 0
    m = _TOKEN.match(clean, start)
    if len(numbers) == 1 and m is not None and m.end() == len(clean):
        return numbers[0]
    return None


def final_answer(completion):
    """`#### n` (the first number after the last marker), else the last `\\boxed{}`, else the
    last number."""
    for m in reversed(list(_re.finditer("####", completion))):
        rest = completion[m.start() + 4:].lstrip("#")
        line = next((l for l in rest.split("\n") if l.strip()), None)
        if line is not None:
            numbers = _scan_numbers(line)
            if numbers:
                return numbers[0]
    for m in reversed(list(_re.finditer(r"\\boxed\{", completion))):
        content = _braced(completion[m.end():])
        if content is not None:
            value = parse_number(content)
            if value is None:
                numbers = _scan_numbers(content)
                value = numbers[-1] if numbers else None
            if value is not None:
                return value
    numbers = _scan_numbers(completion)
    return numbers[-1] if numbers else None
"######;

const EXACT_MATCH_NUMERIC: &str = r#"
def exact_match_one(completion, answer):
    """rlft's `exact_match` with `check = "numeric"`: the final answer equals the answer."""
    want = parse_number(str(answer).strip())
    return 1.0 if want is not None and final_answer(completion) == want else 0.0
"#;

const FORMAT_NUMERIC: &str = r######"
def format_one(completion, answer=None):
    """rlft's `format` with `check = "numeric"`: the last non-blank line is `#### <number>` or
    holds `\\boxed{<number>}`, the answer's text at most MAX_CHARS characters."""
    lines = [l for l in completion.split("\n") if l.strip()]
    if not lines:
        return 0.0
    last = lines[-1]
    i = last.rfind("####")
    if i >= 0:
        text = last[i + 4:].lstrip("#")
    else:
        j = last.rfind("\\boxed{")
        text = _braced(last[j + len("\\boxed{"):]) if j >= 0 else None
    if text is None or len(text.strip()) > MAX_CHARS or parse_number(text) is None:
        return 0.0
    return 1.0
"######;

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
