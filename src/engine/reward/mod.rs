//! Reward sources for on-line RL: programs that score completions. One trait,
//! [`RewardSource`], covers rule-based checkers ([`ExactMatch`], [`FormatReward`]), external
//! programs ([`CommandReward`]) and, in the trainer, a learned reward model; [`WeightedSum`]
//! combines them the way TRL combines `reward_funcs` with `reward_weights`.
//!
//! A run config lists its sources as `[[rewards]]` tables; unknown keys are errors:
//!
//! ```toml
//! [[rewards]]
//! type = "exact_match"        # alias "accuracy"; 1 if the answer line is correct
//! weight = 1.0                # default 1.0; every source also takes an optional `name`
//! check = "auto"              # auto | integer | word | countdown | text | numeric
//!                             # (default auto; numeric reads `#### 42` from reasoning)
//!
//! [[rewards]]
//! type = "format"             # 1 if the answer line is well formed and short; with
//! weight = 0.1                # check = "numeric", if the text ends with `#### <number>`
//! max_chars = 8               # optional; default from the task or the answer kind
//!
//! [[rewards]]
//! type = "command"            # an external scorer, see `CommandReward`
//! command = ["python3", "score.py"]
//! timeout_secs = 10           # default 10
//! name = "judge"              # default "command"
//!
//! [[rewards]]
//! type = "reward_model"       # a Bradley-Terry model folder, scored by the trainer
//! path = "runs/rm/checkpoints/final"
//!
//! [[rewards]]
//! type = "sentiment"          # VADER compound score of the completion, -1 to 1
//! weight = 1.0                # see `SentimentReward`; default name "sentiment"
//! lexicon = "assets/lexicons/vader_lexicon.txt"   # optional; this is the default
//! ```
//!
//! Logging follows TRL: each source's raw (unweighted) scores are `rewards/<name>/mean` and
//! `rewards/<name>/std`, and `reward` is the weighted sum. Names must therefore be unique
//! within a run; two sources of one type need explicit `name`s.
//!
//! `type = "reward_model"` needs model weights and a device: [`build`] returns
//! [`RewardError::NeedsModel`], and trainers call [`build_all_with`] with
//! [`model::loader`] (or [`model::build_all_on`]), which runs the model on their device.
//! [`build_all`] (no loader) lets the error through, so a config naming a reward model fails
//! clearly where no scorer exists.

mod command;
mod exact;
mod format;
pub mod model;
mod sentiment;
mod weighted;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use command::CommandReward;
pub(crate) use command::quote as quote_output;
pub use exact::ExactMatch;
pub use format::FormatReward;
pub use sentiment::{SentimentReward, Vader};
pub use weighted::{RewardBreakdown, WeightedSum};

use crate::engine::tasks::{AnswerKind, Task};

/// One generated completion as reward sources see it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Completion<'a> {
    /// The prompt as the dataset gives it (before any chat template).
    pub prompt: &'a str,
    /// The decoded completion, cut at the stop string; the end-of-sequence token is not in it.
    pub completion: &'a str,
    /// The dataset's ground truth (`answer`, `solution` or `ground_truth` column), if any.
    pub answer: Option<&'a str>,
}

/// Scores a batch of completions, one value per completion in order.
pub trait RewardSource: Send {
    /// Logged as `rewards/<name>/mean`.
    fn name(&self) -> &str;
    fn score(&mut self, batch: &[Completion]) -> Result<Vec<f32>, RewardError>;
}

#[derive(Debug, Error)]
pub enum RewardError {
    /// A `[[rewards]]` entry is unusable as written.
    #[error("{0}")]
    Config(String),
    /// `type = "reward_model"`: only the trainer can load and run the model. Intercept this
    /// (or use [`build_all_with`]) to supply the model-backed scorer.
    #[error(
        "reward model `{}` needs a model-backed scorer, which this command does not provide",
        config.path.display()
    )]
    NeedsModel { config: RewardModelConfig },
    /// A `reward_model` folder could not be loaded or run.
    #[error("reward model `{}`: {message}", path.display())]
    Model { path: PathBuf, message: String },
    /// Two sources would log under the same `rewards/<name>/...` key.
    #[error("two reward sources are named `{0}`; give them distinct `name`s")]
    DuplicateName(String),
    /// A checker was given a completion whose prompt has no ground truth.
    #[error("`{source_name}` needs an `answer` column; completion {index} has none")]
    MissingAnswer { source_name: String, index: usize },
    /// A source returned the wrong number of scores.
    #[error("`{source_name}` returned {got} scores for {expected} completions")]
    WrongLength {
        source_name: String,
        expected: usize,
        got: usize,
    },
    /// A source inside a [`WeightedSum`] failed.
    #[error("reward `{name}`: {source}")]
    Source {
        name: String,
        source: Box<RewardError>,
    },
    #[error("reward command `{command}` could not start: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("reward command `{command}`: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
    /// Exited unsuccessfully; `output` is the start of its stderr (or stdout if that is empty).
    #[error("reward command `{command}` failed ({status}); output starts: {output:?}")]
    Exit {
        command: String,
        status: String,
        output: String,
    },
    /// Ran past its timeout and was killed (with its process group).
    #[error("reward command `{command}` timed out after {secs} s and was killed")]
    Timeout { command: String, secs: f64 },
    /// Exited successfully but its stdout is not the scores; `head` is its first 200 bytes.
    #[error("reward command `{command}` printed {problem}; output starts: {head:?}")]
    BadOutput {
        command: String,
        problem: String,
        head: String,
    },
}

/// Sources with their weights, in config order (what [`build_all`] returns).
pub type WeightedSources = Vec<(Box<dyn RewardSource>, f32)>;

/// The trainer's hook that turns a `reward_model` entry into a scorer.
pub type ModelLoader<'a> =
    dyn FnMut(&RewardModelConfig) -> Result<Box<dyn RewardSource>, RewardError> + 'a;

/// One `[[rewards]]` table, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RewardConfig {
    #[serde(alias = "accuracy")]
    ExactMatch(ExactMatchConfig),
    Format(FormatConfig),
    Command(CommandConfig),
    RewardModel(RewardModelConfig),
    Sentiment(SentimentConfig),
}

fn one() -> f32 {
    1.0
}

fn ten() -> f64 {
    10.0
}

/// `type = "exact_match"`: see [`ExactMatch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactMatchConfig {
    #[serde(default = "one")]
    pub weight: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How answers are compared; `auto` follows the task, or guesses from each answer.
    #[serde(default)]
    pub check: AnswerKind,
}

/// `type = "format"`: see [`FormatReward`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatConfig {
    #[serde(default = "one")]
    pub weight: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub check: AnswerKind,
    /// Longest answer line, in characters, that still counts as well formed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
}

/// `type = "command"`: see [`CommandReward`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Program and arguments, run without a shell.
    pub command: Vec<String>,
    #[serde(default = "ten")]
    pub timeout_secs: f64,
    #[serde(default = "one")]
    pub weight: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `type = "reward_model"`: a trained Bradley-Terry model; built by the trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelConfig {
    pub path: PathBuf,
    #[serde(default = "one")]
    pub weight: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `type = "sentiment"`: see [`SentimentReward`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentimentConfig {
    #[serde(default = "one")]
    pub weight: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VADER lexicon file; default: the shipped `assets/lexicons/vader_lexicon.txt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexicon: Option<PathBuf>,
}

impl RewardConfig {
    /// Multiplies this source's scores in the total `reward`.
    pub fn weight(&self) -> f32 {
        match self {
            RewardConfig::ExactMatch(c) => c.weight,
            RewardConfig::Format(c) => c.weight,
            RewardConfig::Command(c) => c.weight,
            RewardConfig::RewardModel(c) => c.weight,
            RewardConfig::Sentiment(c) => c.weight,
        }
    }

    /// The logging name: `name` if given, else the type (`exact_match`, `format`,
    /// `command`, `reward_model`, `sentiment`).
    pub fn name(&self) -> &str {
        let (name, default) = match self {
            RewardConfig::ExactMatch(c) => (&c.name, "exact_match"),
            RewardConfig::Format(c) => (&c.name, "format"),
            RewardConfig::Command(c) => (&c.name, "command"),
            RewardConfig::RewardModel(c) => (&c.name, "reward_model"),
            RewardConfig::Sentiment(c) => (&c.name, "sentiment"),
        };
        name.as_deref().unwrap_or(default)
    }
}

/// Builds one source. `task`, when known, decides how `check = "auto"` checkers read answers
/// and the format reward's length limit; without it they are inferred from each answer.
/// A `reward_model` entry gives [`RewardError::NeedsModel`].
pub fn build(
    cfg: &RewardConfig,
    task: Option<&dyn Task>,
) -> Result<Box<dyn RewardSource>, RewardError> {
    let weight = cfg.weight();
    if !weight.is_finite() {
        return Err(RewardError::Config(format!(
            "reward `{}`: weight must be a finite number, got {weight}",
            cfg.name()
        )));
    }
    if cfg.name().trim().is_empty() || cfg.name().contains(char::is_whitespace) {
        return Err(RewardError::Config(format!(
            "reward name {:?} must be non-empty without spaces (it becomes a metric key)",
            cfg.name()
        )));
    }
    let name = cfg.name().to_string();
    let with_task = |check: AnswerKind| match (check, task) {
        (AnswerKind::Auto, Some(task)) => task.answer_kind(),
        _ => check,
    };
    Ok(match cfg {
        RewardConfig::ExactMatch(c) => Box::new(ExactMatch::new(with_task(c.check)).named(name)),
        RewardConfig::Format(c) => {
            let max_chars = match (c.max_chars, task) {
                (Some(0), _) => {
                    return Err(RewardError::Config(format!(
                        "reward `{name}`: max_chars must be at least 1"
                    )));
                }
                (Some(n), _) => Some(n),
                (None, Some(task)) if c.check == AnswerKind::Auto => Some(task.max_answer_chars()),
                (None, _) => None,
            };
            Box::new(FormatReward::new(with_task(c.check), max_chars).named(name))
        }
        RewardConfig::Command(c) => {
            let timeout = std::time::Duration::try_from_secs_f64(c.timeout_secs)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    RewardError::Config(format!(
                        "reward `{name}`: timeout_secs must be a positive number of seconds, \
                         got {}",
                        c.timeout_secs
                    ))
                })?;
            Box::new(CommandReward::new(c.command.clone(), timeout)?.named(name))
        }
        RewardConfig::RewardModel(c) => {
            return Err(RewardError::NeedsModel { config: c.clone() });
        }
        RewardConfig::Sentiment(c) => {
            Box::new(SentimentReward::load(c.lexicon.as_deref())?.named(name))
        }
    })
}

/// Builds every source with its weight, for a trainer without a reward-model scorer:
/// `reward_model` entries fail with [`RewardError::NeedsModel`]. Names must be unique.
pub fn build_all(cfgs: &[RewardConfig]) -> Result<WeightedSources, RewardError> {
    build_all_with(cfgs, None, &mut |c| {
        Err(RewardError::NeedsModel { config: c.clone() })
    })
}

/// Builds every source with its weight; `load_model` turns each `reward_model` entry into the
/// trainer's scorer (its name should be `cfg.name` or `"reward_model"`). Names must be
/// unique.
pub fn build_all_with(
    cfgs: &[RewardConfig],
    task: Option<&dyn Task>,
    load_model: &mut ModelLoader,
) -> Result<WeightedSources, RewardError> {
    let mut out: WeightedSources = Vec::with_capacity(cfgs.len());
    for cfg in cfgs {
        let source = match build(cfg, task) {
            Err(RewardError::NeedsModel { config }) => load_model(&config)?,
            other => other?,
        };
        if out.iter().any(|(s, _)| s.name() == source.name()) {
            return Err(RewardError::DuplicateName(source.name().to_string()));
        }
        out.push((source, cfg.weight()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tasks::{Arithmetic, Reverse, WordProblems};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrap {
        rewards: Vec<RewardConfig>,
    }

    fn parse(text: &str) -> Result<Vec<RewardConfig>, String> {
        toml::from_str::<Wrap>(text)
            .map(|w| w.rewards)
            .map_err(|e| e.to_string())
    }

    fn c<'a>(prompt: &'a str, completion: &'a str, answer: &'a str) -> Completion<'a> {
        Completion {
            prompt,
            completion,
            answer: Some(answer),
        }
    }

    #[test]
    fn config_parses_every_type_with_defaults() {
        let cfgs = parse(
            r#"
            [[rewards]]
            type = "exact_match"
            [[rewards]]
            type = "format"
            weight = 0.1
            max_chars = 6
            check = "integer"
            [[rewards]]
            type = "command"
            command = ["python3", "score.py"]
            name = "judge"
            [[rewards]]
            type = "reward_model"
            path = "runs/rm/final"
            weight = 0.5
            [[rewards]]
            type = "accuracy"
            name = "acc"
            "#,
        )
        .expect("parses");
        assert_eq!(
            cfgs[0],
            RewardConfig::ExactMatch(ExactMatchConfig {
                weight: 1.0,
                name: None,
                check: AnswerKind::Auto
            })
        );
        assert_eq!(
            cfgs[1],
            RewardConfig::Format(FormatConfig {
                weight: 0.1,
                name: None,
                check: AnswerKind::Integer,
                max_chars: Some(6)
            })
        );
        assert_eq!(
            cfgs[2],
            RewardConfig::Command(CommandConfig {
                command: vec!["python3".into(), "score.py".into()],
                timeout_secs: 10.0,
                weight: 1.0,
                name: Some("judge".into())
            })
        );
        let names: Vec<&str> = cfgs.iter().map(RewardConfig::name).collect();
        assert_eq!(
            names,
            ["exact_match", "format", "judge", "reward_model", "acc"]
        );
        assert_eq!(cfgs[3].weight(), 0.5);

        // Round trip through TOML (run folders save the resolved config).
        #[derive(Serialize)]
        struct Out<'a> {
            rewards: &'a [RewardConfig],
        }
        let text = toml::to_string(&Out { rewards: &cfgs }).expect("serialises");
        assert_eq!(parse(&text).expect("re-parses"), cfgs);
    }

    #[test]
    fn config_rejects_typos_and_unknown_types() {
        let err = parse("[[rewards]]\ntype = \"exact_match\"\nweigth = 2.0\n").unwrap_err();
        assert!(err.contains("weigth"), "{err}");
        let err =
            parse("[[rewards]]\ntype = \"command\"\ncommand = [\"x\"]\ntimeout = 1\n").unwrap_err();
        assert!(err.contains("timeout"), "{err}");
        let err = parse("[[rewards]]\ntype = \"vibes\"\n").unwrap_err();
        assert!(err.contains("vibes"), "{err}");
        let err = parse("[[rewards]]\ntype = \"sentiment\"\nlexicon_path = \"x\"\n").unwrap_err();
        assert!(err.contains("lexicon_path"), "{err}");
        assert!(
            parse("[[rewards]]\nweight = 1.0\n").is_err(),
            "type is required"
        );
        assert!(
            parse("[[rewards]]\ntype = \"command\"\n").is_err(),
            "command is required"
        );
    }

    #[test]
    fn build_validates_and_defers_reward_models() {
        let cfgs = parse(
            "[[rewards]]\ntype = \"exact_match\"\n[[rewards]]\ntype = \"reward_model\"\n\
             path = \"rm\"\nweight = 0.5\n",
        )
        .expect("parses");
        let err = build(&cfgs[1], None).err().expect("needs a model");
        assert!(
            matches!(&err, RewardError::NeedsModel { config } if config.path == std::path::Path::new("rm"))
        );
        assert!(build_all(&cfgs).is_err());

        struct Fake;
        impl RewardSource for Fake {
            fn name(&self) -> &str {
                "reward_model"
            }
            fn score(&mut self, batch: &[Completion]) -> Result<Vec<f32>, RewardError> {
                Ok(vec![0.25; batch.len()])
            }
        }
        let built = build_all_with(&cfgs, None, &mut |_| Ok(Box::new(Fake))).expect("builds");
        let got: Vec<(&str, f32)> = built.iter().map(|(s, w)| (s.name(), *w)).collect();
        assert_eq!(got, [("exact_match", 1.0), ("reward_model", 0.5)]);

        let dup = parse("[[rewards]]\ntype = \"format\"\n[[rewards]]\ntype = \"format\"\n")
            .expect("parses");
        let err = build_all(&dup).err().expect("duplicate");
        assert!(err.to_string().contains("distinct `name`s"), "{err}");

        for bad in [
            "[[rewards]]\ntype = \"command\"\ncommand = []\n",
            "[[rewards]]\ntype = \"command\"\ncommand = [\"x\"]\ntimeout_secs = 0\n",
            "[[rewards]]\ntype = \"command\"\ncommand = [\"x\"]\ntimeout_secs = -1\n",
            "[[rewards]]\ntype = \"format\"\nmax_chars = 0\n",
            "[[rewards]]\ntype = \"format\"\nname = \"a b\"\n",
            "[[rewards]]\ntype = \"format\"\nweight = nan\n",
        ] {
            let cfgs = parse(bad).expect(bad);
            assert!(
                matches!(build(&cfgs[0], None), Err(RewardError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn task_decides_auto_checks() {
        let cfgs = parse("[[rewards]]\ntype = \"format\"\n").expect("parses");
        // Arithmetic answers are at most 3 digits: with 2 characters of slack, 5.
        let mut with_task = build(&cfgs[0], Some(&Arithmetic::default())).expect("builds");
        let mut without = build(&cfgs[0], None).expect("builds");
        let batch = [c("1+1=", "222222", "2")];
        assert_eq!(with_task.score(&batch).expect("scores"), [0.0]);
        assert_eq!(without.score(&batch).expect("scores"), [1.0]);

        let cfgs = parse("[[rewards]]\ntype = \"exact_match\"\n").expect("parses");
        let mut em = build(&cfgs[0], Some(&Reverse::builtin())).expect("builds");
        let batch = [c("reverse: net=", "ten", "ten")];
        assert_eq!(em.score(&batch).expect("scores"), [1.0]);
    }

    /// What configs/grpo_gsm_smollm2.toml asks for, with and without the task known.
    #[test]
    fn numeric_checks_from_the_config_or_the_task() {
        let explicit = parse(
            "[[rewards]]\ntype = \"exact_match\"\ncheck = \"numeric\"\n\
             [[rewards]]\ntype = \"format\"\ncheck = \"numeric\"\nweight = 0.1\n",
        )
        .expect("parses");
        assert!(matches!(
            &explicit[0],
            RewardConfig::ExactMatch(ExactMatchConfig {
                check: AnswerKind::Numeric,
                ..
            })
        ));
        let auto = parse("[[rewards]]\ntype = \"exact_match\"\n[[rewards]]\ntype = \"format\"\n")
            .expect("parses");
        let batch = [
            c("p", "2 x 6 = 12, 12 + 2 = 14.\n#### 14", "14"),
            c("p", "2 x 6 = 12, so 13.", "14"),
            c("p", "14", "14"),
        ];
        let task = WordProblems::default();
        for cfgs in [&explicit, &auto] {
            let mut sources =
                build_all_with(cfgs, Some(&task), &mut |_| unreachable!()).expect("builds");
            let em = sources[0].0.score(&batch).expect("scores");
            let format = sources[1].0.score(&batch).expect("scores");
            assert_eq!((em, format), (vec![1.0, 0.0, 1.0], vec![1.0, 0.0, 0.0]));
        }
        // Without the task, `auto` keeps the first-line rules.
        let mut em = build(&auto[0], None).expect("builds");
        assert_eq!(em.score(&batch).expect("scores"), [0.0, 0.0, 1.0]);
    }
}
