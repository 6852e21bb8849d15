//! Verifiable tasks for on-line RL (GRPO, RLOO): seeded prompt generators whose answers a
//! program can check, so rewards need no model and held-out accuracy is exact.
//!
//! Prompts of the first three are plain text for a base model (no chat template) and the
//! answer is the first line of the completion; the trainer stops generating at a newline or
//! EOS. `word_problems` is for chat models that reason first: its answer is read from the
//! whole completion (`#### 42`, see [`extract_final_answer`]).
//!
//! | task            | prompt                      | answer column        | checked as         |
//! |-----------------|-----------------------------|----------------------|--------------------|
//! | `arithmetic`    | `12+35=`                    | `47`                 | integer equality   |
//! | `reverse`       | `reverse: stone=`           | `enots`              | string equality    |
//! | `countdown`     | `countdown: 3 7 25 -> 46=`  | `25+(3*7)` (one way) | any valid solution |
//! | `word_problems` | `Ava buys 3 pens for $2 ...`| `14`                 | final number equal |
//!
//! (`word_problems` prompts end with a line asking for the answer as `#### <number>`.)
//!
//! Shipped splits live in `assets/tasks/` (`<task>_eval.jsonl`, `<task>_train.jsonl`, TRL's
//! prompt-only format `{"prompt", "answer"}`) and are written by [`write_split`] with
//! [`EVAL_SEED`] and [`TRAIN_SEED`]. The eval prompts are distinct and never appear in the
//! train file (disjoint by construction, not by luck of the seeds). Note the shipped base model
//! saw nearly all `a+b=c` sums with operands up to 99 during pretraining: "held out" means
//! unseen by RL, not by pretraining.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::data::{self, DataError, Example, Prompt};

mod numeric;
mod word_problems;

pub use numeric::{ends_with_final_answer, extract_final_answer, numbers_equal};
pub use word_problems::INSTRUCTION as WORD_PROBLEM_INSTRUCTION;

/// Seed of the shipped eval splits. Far from the small seeds (0, 1, 42) runs and hand-made
/// splits tend to use, so a quick `generate(n, 0)` does not reproduce the eval stream.
pub const EVAL_SEED: u64 = 1_000_003;
/// Seed of the shipped train splits.
pub const TRAIN_SEED: u64 = 1;

/// The shipped word list for `reverse`: the 600 most frequent lowercase words of 3 to 6
/// letters in `assets/corpus/shakespeare.txt`, palindromes removed, sorted.
const BUILTIN_WORDS: &str = include_str!("../../assets/tasks/words.txt");

#[derive(Debug, Error)]
pub enum TaskError {
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    /// A record of a task file is not a text prompt with an answer; `record` is 1-based.
    #[error("{}: record {record}: {message}", path.display())]
    Record {
        path: PathBuf,
        record: usize,
        message: String,
    },
    /// The task's settings cannot produce prompts.
    #[error("task `{task}`: {message}")]
    Config { task: &'static str, message: String },
}

/// One generated prompt and its ground truth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskItem {
    pub prompt: String,
    /// What checkers compare against: the exact answer, or for `countdown` one valid solution.
    pub answer: String,
}

/// How a task's answer line is validated and compared. `Auto` guesses from the ground truth,
/// for prompt files loaded without knowing their task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// `Integer` if the answer parses as one, `Word` if it is lowercase letters, else `Text`.
    #[default]
    Auto,
    /// An optional `-` and ASCII digits; compared as integers (`047` equals `47`).
    Integer,
    /// ASCII lowercase letters; compared exactly.
    Word,
    /// An expression over the prompt's numbers; correct when it uses each exactly once and
    /// equals the target (see [`check_countdown`]).
    Countdown,
    /// Any non-empty line; compared exactly after trimming.
    Text,
    /// A number anywhere in a reasoning completion: the final answer is read from the whole
    /// text (`#### 42`, else the last `\boxed{42}`, else the last number; see
    /// [`extract_final_answer`]) and compared exactly as a number (`42.0` and `$42` match
    /// `42`). Never guessed by `Auto`: set it with `check = "numeric"`.
    Numeric,
}

impl AnswerKind {
    /// Replaces `Auto` with a concrete kind, guessed from the ground truth when there is one.
    pub fn resolve(self, answer: Option<&str>) -> AnswerKind {
        if self != AnswerKind::Auto {
            return self;
        }
        match answer.map(str::trim) {
            Some(a) if is_integer(a) => AnswerKind::Integer,
            Some(a) if is_word(a) => AnswerKind::Word,
            _ => AnswerKind::Text,
        }
    }

    /// Longest sensible answer line when the task does not say: longer lines are taken as
    /// rambling or a generation cut off by the length limit.
    pub fn default_max_chars(self) -> usize {
        match self {
            AnswerKind::Integer => 8,
            AnswerKind::Word => 16,
            AnswerKind::Countdown => 40,
            // Numeric limits the final answer's text only, not the reasoning before it.
            AnswerKind::Numeric => 24,
            AnswerKind::Auto | AnswerKind::Text => 64,
        }
    }

    /// Whether `line` (an answer line, already trimmed) has the shape of an answer. For
    /// `Numeric`, `line` is the whole completion and some final answer must be readable.
    pub fn is_well_formed(self, line: &str) -> bool {
        match self {
            AnswerKind::Integer => is_integer(line),
            AnswerKind::Word => is_word(line),
            AnswerKind::Countdown => parse_expression(line).is_ok(),
            AnswerKind::Numeric => numeric::final_answer(line).is_some(),
            AnswerKind::Auto | AnswerKind::Text => !line.is_empty(),
        }
    }

    /// Whether the completion's answer line (for `Numeric`, its final answer) answers
    /// `prompt` correctly. `Auto` resolves against `answer` first.
    pub fn is_correct(self, prompt: &str, completion: &str, answer: &str) -> bool {
        let line = answer_line(completion);
        let expected = answer.trim();
        match self.resolve(Some(answer)) {
            AnswerKind::Numeric => match numeric::parse_number(expected) {
                Some(want) => numeric::final_answer(completion) == Some(want),
                None => false,
            },
            AnswerKind::Integer => match (line.parse::<i64>(), expected.parse::<i64>()) {
                (Ok(got), Ok(want)) => got == want,
                _ => line == expected,
            },
            AnswerKind::Countdown => check_countdown(prompt, line),
            AnswerKind::Word | AnswerKind::Text | AnswerKind::Auto => line == expected,
        }
    }
}

/// The answer part of a completion: its first line, trimmed. Text after the first newline is
/// ignored (the trainer normally stops there anyway).
pub fn answer_line(completion: &str) -> &str {
    completion.split('\n').next().unwrap_or("").trim()
}

fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase())
}

/// A family of prompts with checkable answers.
pub trait Task: Send + Sync {
    /// Short stable name (`arithmetic`), used in file names and logs.
    fn name(&self) -> &str;
    /// `n` items from the stream seeded by `seed`. The same seed gives the same items, and a
    /// shorter request is a prefix of a longer one. Items may repeat.
    fn generate(&self, n: usize, seed: u64) -> Vec<TaskItem>;
    /// How checkers read this task's answers.
    fn answer_kind(&self) -> AnswerKind {
        AnswerKind::Auto
    }
    /// The longest well-formed answer line, in characters, with a little slack for spaces.
    fn max_answer_chars(&self) -> usize {
        self.answer_kind().default_max_chars()
    }
}

/// `a+b=` with both operands drawn uniformly from `0..=max_operand`: the format of the sums the
/// shipped base model was pretrained on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arithmetic {
    pub max_operand: u32,
}

impl Default for Arithmetic {
    fn default() -> Self {
        Self { max_operand: 99 }
    }
}

impl Task for Arithmetic {
    fn name(&self) -> &str {
        "arithmetic"
    }

    fn generate(&self, n: usize, seed: u64) -> Vec<TaskItem> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let a = rng.random_range(0..=self.max_operand) as u64;
                let b = rng.random_range(0..=self.max_operand) as u64;
                TaskItem {
                    prompt: format!("{a}+{b}="),
                    answer: (a + b).to_string(),
                }
            })
            .collect()
    }

    fn answer_kind(&self) -> AnswerKind {
        AnswerKind::Integer
    }

    fn max_answer_chars(&self) -> usize {
        (2 * self.max_operand as u64).to_string().len() + 2
    }
}

/// `reverse: stone=` → `enots`: spell a word backwards. Words are drawn uniformly from a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reverse {
    words: Vec<String>,
}

impl Reverse {
    /// The shipped list (`assets/tasks/words.txt`, compiled in).
    pub fn builtin() -> Self {
        Self {
            words: parse_words(BUILTIN_WORDS),
        }
    }

    /// A list of lowercase ASCII words, at least one.
    pub fn new(words: Vec<String>) -> Result<Self, TaskError> {
        let config = |message| TaskError::Config {
            task: "reverse",
            message,
        };
        if words.is_empty() {
            return Err(config("the word list is empty".into()));
        }
        if let Some(bad) = words.iter().find(|w| !is_word(w)) {
            return Err(config(format!(
                "`{bad}` is not a lowercase ASCII word (answers are checked as a-z only)"
            )));
        }
        Ok(Self { words })
    }

    /// One word a line; blank lines and `#` comments are skipped.
    pub fn from_file(path: &Path) -> Result<Self, TaskError> {
        let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(parse_words(&text))
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }
}

fn parse_words(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

impl Task for Reverse {
    fn name(&self) -> &str {
        "reverse"
    }

    fn generate(&self, n: usize, seed: u64) -> Vec<TaskItem> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .filter_map(|_| self.words.choose(&mut rng))
            .map(|word| TaskItem {
                prompt: format!("reverse: {word}="),
                answer: word.chars().rev().collect(),
            })
            .collect()
    }

    fn answer_kind(&self) -> AnswerKind {
        AnswerKind::Word
    }

    fn max_answer_chars(&self) -> usize {
        self.words.iter().map(String::len).max().unwrap_or(0) + 2
    }
}

/// `countdown: 3 7 25 -> 46=`: combine all the numbers, each exactly once, with `+ - * /` and
/// parentheses to reach the target (TinyZero's task, scaled down). Targets are built from a
/// random expression tree, so every item is solvable; intermediate values stay positive and
/// divisions exact, as in the game show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Countdown {
    /// Numbers per prompt.
    pub numbers: usize,
    /// Numbers are drawn from `1..=max_number`.
    pub max_number: u32,
    /// Targets above this are redrawn (a few tries), to keep answers short.
    pub max_target: u32,
}

impl Default for Countdown {
    fn default() -> Self {
        Self {
            numbers: 3,
            max_number: 25,
            max_target: 100,
        }
    }
}

impl Countdown {
    fn item(&self, rng: &mut StdRng) -> TaskItem {
        let mut last = None;
        for _ in 0..100 {
            let numbers: Vec<u64> = (0..self.numbers.max(1))
                .map(|_| rng.random_range(1..=self.max_number.max(1)) as u64)
                .collect();
            let (target, solution) = random_solution(&numbers, rng);
            let listed: Vec<String> = numbers.iter().map(u64::to_string).collect();
            let item = TaskItem {
                prompt: format!("countdown: {} -> {target}=", listed.join(" ")),
                answer: solution,
            };
            if target <= self.max_target as u64 {
                return item;
            }
            last = Some(item);
        }
        // Unreachably tight settings: keep the last (valid, just large) item.
        last.unwrap_or_else(|| TaskItem {
            prompt: String::new(),
            answer: String::new(),
        })
    }
}

/// Folds the numbers in random order with random operators; returns the value and the
/// expression. Operands that are themselves expressions are parenthesised.
fn random_solution(numbers: &[u64], rng: &mut StdRng) -> (u64, String) {
    let mut pool: Vec<(u64, String, bool)> =
        numbers.iter().map(|&n| (n, n.to_string(), false)).collect();
    pool.shuffle(rng);
    while pool.len() > 1 {
        let (mut a, mut b) = (pool.swap_remove(0), pool.swap_remove(0));
        if rng.random_bool(0.5) {
            std::mem::swap(&mut a, &mut b);
        }
        let op = *[b'+', b'-', b'*', b'/'].choose(rng).unwrap_or(&b'+');
        let (op, value) = match op {
            b'-' if a.0 > b.0 => ('-', a.0 - b.0),
            b'*' => ('*', a.0 * b.0),
            b'/' if b.0 > 1 && a.0 % b.0 == 0 => ('/', a.0 / b.0),
            _ => ('+', a.0 + b.0),
        };
        let wrap = |(_, text, compound): &(u64, String, bool)| {
            if *compound {
                format!("({text})")
            } else {
                text.clone()
            }
        };
        let text = format!("{}{op}{}", wrap(&a), wrap(&b));
        pool.push((value, text, true));
        pool.shuffle(rng);
    }
    let (value, text, _) = pool.pop().unwrap_or((0, String::new(), false));
    (value, text)
}

impl Task for Countdown {
    fn name(&self) -> &str {
        "countdown"
    }

    fn generate(&self, n: usize, seed: u64) -> Vec<TaskItem> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| self.item(&mut rng)).collect()
    }

    fn answer_kind(&self) -> AnswerKind {
        AnswerKind::Countdown
    }

    fn max_answer_chars(&self) -> usize {
        // Each number up to 3 digits, an operator and a pair of parentheses per number.
        6 * self.numbers.max(1) + 4
    }
}

/// GSM8K-like word problems from rlft's own templates (shopping and change, sharing equally,
/// rates, ages, savings...; see `tasks/word_problems.rs`): 2 to 4 operations each, every
/// division exact, the answer a non-negative integer. The prompt is the problem, a newline
/// and [`WORD_PROBLEM_INSTRUCTION`]; answers are checked as [`AnswerKind::Numeric`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordProblems {
    /// Only templates whose solution takes at most this many operations (2 to 4).
    pub max_ops: usize,
}

impl Default for WordProblems {
    fn default() -> Self {
        Self { max_ops: 4 }
    }
}

impl Task for WordProblems {
    fn name(&self) -> &str {
        "word_problems"
    }

    fn generate(&self, n: usize, seed: u64) -> Vec<TaskItem> {
        let mut rng = StdRng::seed_from_u64(seed);
        let templates: Vec<&word_problems::Template> = word_problems::TEMPLATES
            .iter()
            .filter(|t| t.ops <= self.max_ops)
            .collect();
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let Some(template) = templates.choose(&mut rng) else {
                break;
            };
            let (problem, answer) = (template.make)(&mut rng);
            items.push(TaskItem {
                prompt: format!("{problem}\n{}", word_problems::INSTRUCTION),
                answer: answer.to_string(),
            });
        }
        items
    }

    fn answer_kind(&self) -> AnswerKind {
        AnswerKind::Numeric
    }
}

/// The numbers and target of a `countdown: 3 7 25 -> 46=` prompt.
pub fn parse_countdown_prompt(prompt: &str) -> Option<(Vec<i64>, i64)> {
    let rest = prompt.trim().strip_prefix("countdown:")?;
    let (numbers, target) = rest.split_once("->")?;
    let target = target.trim().strip_suffix('=')?.trim().parse().ok()?;
    let numbers = numbers
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<Vec<i64>>>()?;
    Some((numbers, target))
}

/// Whether `expression` solves the countdown `prompt`: it parses (`+ - * /`, parentheses,
/// non-negative integers; no unary minus), uses the prompt's numbers each exactly once, and
/// equals the target exactly (rational arithmetic, so `7/2*4` is 14; division by zero or
/// overflow fails).
pub fn check_countdown(prompt: &str, expression: &str) -> bool {
    let Some((mut numbers, target)) = parse_countdown_prompt(prompt) else {
        return false;
    };
    let Ok((value, mut used)) = parse_expression(expression) else {
        return false;
    };
    numbers.sort_unstable();
    used.sort_unstable();
    numbers == used && value == Ratio::from(target)
}

/// An exact fraction, always reduced with a positive denominator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ratio {
    num: i64,
    den: i64,
}

impl From<i64> for Ratio {
    fn from(n: i64) -> Self {
        Ratio { num: n, den: 1 }
    }
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

impl Ratio {
    fn new(num: i64, den: i64) -> Option<Ratio> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        let sign = if den < 0 { -1 } else { 1 };
        Some(Ratio {
            num: num.checked_div(g)?.checked_mul(sign)?,
            den: den.checked_div(g)?.checked_mul(sign)?,
        })
    }

    fn apply(self, op: u8, rhs: Ratio) -> Option<Ratio> {
        let (a, b, c, d) = (self.num, self.den, rhs.num, rhs.den);
        match op {
            b'+' => Ratio::new(a.checked_mul(d)?.checked_add(c.checked_mul(b)?)?, b * d),
            b'-' => Ratio::new(a.checked_mul(d)?.checked_sub(c.checked_mul(b)?)?, b * d),
            b'*' => Ratio::new(a.checked_mul(c)?, b.checked_mul(d)?),
            b'/' => Ratio::new(a.checked_mul(d)?, b.checked_mul(c)?),
            _ => None,
        }
    }
}

/// Longest expression the checker reads; anything longer is not an answer a small model
/// should be rewarded for.
const MAX_EXPRESSION_BYTES: usize = 128;
/// Parenthesis nesting limit, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 16;

/// Parses and evaluates an arithmetic expression; returns its value and the numbers it uses.
fn parse_expression(text: &str) -> Result<(Ratio, Vec<i64>), ()> {
    if text.len() > MAX_EXPRESSION_BYTES {
        return Err(());
    }
    let mut parser = ExprParser {
        bytes: text.as_bytes(),
        pos: 0,
        numbers: Vec::new(),
    };
    let value = parser.expr(0)?;
    parser.skip_spaces();
    if parser.pos != parser.bytes.len() {
        return Err(());
    }
    Ok((value, parser.numbers))
}

/// Recursive descent over `expr := term (('+'|'-') term)*`, `term := factor (('*'|'/')
/// factor)*`, `factor := number | '(' expr ')'`.
struct ExprParser<'a> {
    bytes: &'a [u8],
    pos: usize,
    numbers: Vec<i64>,
}

impl ExprParser<'_> {
    fn skip_spaces(&mut self) {
        while self.bytes.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_spaces();
        self.bytes.get(self.pos).copied()
    }

    fn expr(&mut self, depth: usize) -> Result<Ratio, ()> {
        let mut value = self.term(depth)?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let rhs = self.term(depth)?;
            value = value.apply(op, rhs).ok_or(())?;
        }
        Ok(value)
    }

    fn term(&mut self, depth: usize) -> Result<Ratio, ()> {
        let mut value = self.factor(depth)?;
        while let Some(op @ (b'*' | b'/')) = self.peek() {
            self.pos += 1;
            let rhs = self.factor(depth)?;
            value = value.apply(op, rhs).ok_or(())?;
        }
        Ok(value)
    }

    fn factor(&mut self, depth: usize) -> Result<Ratio, ()> {
        match self.peek() {
            Some(b'(') if depth < MAX_DEPTH => {
                self.pos += 1;
                let value = self.expr(depth + 1)?;
                if self.peek() != Some(b')') {
                    return Err(());
                }
                self.pos += 1;
                Ok(value)
            }
            Some(b'0'..=b'9') => {
                let start = self.pos;
                while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                let digits = std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|_| ())?;
                let n: i64 = digits.parse().map_err(|_| ())?;
                if n > 1_000_000_000 {
                    return Err(());
                }
                self.numbers.push(n);
                Ok(Ratio::from(n))
            }
            _ => Err(()),
        }
    }
}

/// A task chosen in a run config: `[task] name = "arithmetic"` plus its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum TaskConfig {
    Arithmetic(ArithmeticConfig),
    Reverse(ReverseConfig),
    Countdown(CountdownConfig),
    WordProblems(WordProblemsConfig),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArithmeticConfig {
    pub max_operand: u32,
}

impl Default for ArithmeticConfig {
    fn default() -> Self {
        Self {
            max_operand: Arithmetic::default().max_operand,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReverseConfig {
    /// A word list (one a line); the shipped list when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountdownConfig {
    pub numbers: usize,
    pub max_number: u32,
    pub max_target: u32,
}

impl Default for CountdownConfig {
    fn default() -> Self {
        let d = Countdown::default();
        Self {
            numbers: d.numbers,
            max_number: d.max_number,
            max_target: d.max_target,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WordProblemsConfig {
    /// Most operations a problem's solution takes, 2 to 4 (lower is easier).
    pub max_ops: usize,
}

impl Default for WordProblemsConfig {
    fn default() -> Self {
        Self {
            max_ops: WordProblems::default().max_ops,
        }
    }
}

impl TaskConfig {
    pub fn build(&self) -> Result<Box<dyn Task>, TaskError> {
        Ok(match self {
            TaskConfig::Arithmetic(c) => Box::new(Arithmetic {
                max_operand: c.max_operand,
            }),
            TaskConfig::Reverse(c) => Box::new(match &c.words {
                Some(path) => Reverse::from_file(path)?,
                None => Reverse::builtin(),
            }),
            TaskConfig::Countdown(c) => {
                if !(1..=6).contains(&c.numbers) || c.max_number == 0 || c.max_target == 0 {
                    return Err(TaskError::Config {
                        task: "countdown",
                        message: format!(
                            "needs 1..=6 numbers and positive max_number / max_target; got \
                             numbers = {}, max_number = {}, max_target = {}",
                            c.numbers, c.max_number, c.max_target
                        ),
                    });
                }
                Box::new(Countdown {
                    numbers: c.numbers,
                    max_number: c.max_number,
                    max_target: c.max_target,
                })
            }
            TaskConfig::WordProblems(c) => {
                if !(2..=4).contains(&c.max_ops) {
                    return Err(TaskError::Config {
                        task: "word_problems",
                        message: format!(
                            "max_ops must be 2, 3 or 4 (operations per problem); got {}",
                            c.max_ops
                        ),
                    });
                }
                Box::new(WordProblems { max_ops: c.max_ops })
            }
        })
    }
}

/// Up to `n` items from `seed`'s stream whose prompts are not in `exclude` (and, with
/// `distinct`, not repeated). Stops early, with fewer items, when the stream runs dry (a task
/// with fewer distinct prompts than asked for).
pub fn generate_excluding(
    task: &dyn Task,
    n: usize,
    seed: u64,
    exclude: &HashSet<String>,
    distinct: bool,
) -> Vec<TaskItem> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    // One long stream rather than reseeding, so the result depends only on `seed`.
    let mut want = 2 * n + 64;
    for _ in 0..6 {
        out.clear();
        seen.clear();
        for item in task.generate(want, seed) {
            if out.len() == n {
                break;
            }
            if exclude.contains(&item.prompt) || (distinct && !seen.insert(item.prompt.clone())) {
                continue;
            }
            out.push(item);
        }
        if out.len() == n {
            break;
        }
        want *= 4;
    }
    out
}

/// A held-out split: `n_eval` distinct prompts from [`EVAL_SEED`], and `n_train` prompts
/// from [`TRAIN_SEED`] that never appear among them (repeats allowed).
pub fn held_out_split(
    task: &dyn Task,
    n_eval: usize,
    n_train: usize,
) -> (Vec<TaskItem>, Vec<TaskItem>) {
    let eval = generate_excluding(task, n_eval, EVAL_SEED, &HashSet::new(), true);
    let exclude: HashSet<String> = eval.iter().map(|i| i.prompt.clone()).collect();
    let train = generate_excluding(task, n_train, TRAIN_SEED, &exclude, false);
    (eval, train)
}

/// Writes [`held_out_split`] as `<dir>/<task>_eval.jsonl` and `<dir>/<task>_train.jsonl`
/// (how `assets/tasks/` was made); returns the two paths.
pub fn write_split(
    task: &dyn Task,
    dir: &Path,
    n_eval: usize,
    n_train: usize,
) -> Result<(PathBuf, PathBuf), TaskError> {
    let (eval, train) = held_out_split(task, n_eval, n_train);
    let eval_path = dir.join(format!("{}_eval.jsonl", task.name()));
    let train_path = dir.join(format!("{}_train.jsonl", task.name()));
    write_jsonl(&eval_path, &eval)?;
    write_jsonl(&train_path, &train)?;
    Ok((eval_path, train_path))
}

/// Items as TRL prompt-only JSONL, `{"prompt": ..., "answer": ...}` a line.
pub fn to_jsonl(items: &[TaskItem]) -> String {
    let mut out = String::new();
    for item in items {
        let prompt = serde_json::Value::String(item.prompt.clone());
        let answer = serde_json::Value::String(item.answer.clone());
        let _ = writeln!(out, "{{\"prompt\": {prompt}, \"answer\": {answer}}}");
    }
    out
}

pub fn write_jsonl(path: &Path, items: &[TaskItem]) -> Result<(), TaskError> {
    std::fs::write(path, to_jsonl(items)).map_err(|source| TaskError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a task file: every record must be a plain-text `prompt` with an `answer` (or
/// `solution` / `ground_truth`, as `data` reads them).
pub fn load_items(path: &Path) -> Result<Vec<TaskItem>, TaskError> {
    data::read_jsonl(path)?
        .into_iter()
        .enumerate()
        .map(|(i, example)| {
            let record = |message: String| TaskError::Record {
                path: path.to_path_buf(),
                record: i + 1,
                message,
            };
            match example {
                Example::Prompt {
                    prompt: Prompt::Text(prompt),
                    answer: Some(answer),
                    ..
                } => Ok(TaskItem { prompt, answer }),
                Example::Prompt {
                    prompt: Prompt::Text(_),
                    answer: None,
                    ..
                } => Err(record("no `answer` column".into())),
                Example::Prompt { .. } => Err(record(
                    "a conversational prompt; task files hold plain-text prompts".into(),
                )),
                other => Err(record(format!(
                    "expected `prompt` + `answer`; found a `{}` example",
                    other.kind()
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tasks")
    }

    #[test]
    fn arithmetic_is_seeded_prefix_stable_and_correct() {
        let task = Arithmetic::default();
        let a = task.generate(300, 7);
        assert_eq!(a, task.generate(300, 7));
        assert_eq!(a[..50], task.generate(50, 7)[..]);
        assert_ne!(a, task.generate(300, 8));
        for item in &a {
            let (x, y) = item
                .prompt
                .strip_suffix('=')
                .and_then(|p| p.split_once('+'))
                .expect("a+b=");
            let (x, y): (u64, u64) = (x.parse().expect("a"), y.parse().expect("b"));
            assert!(x <= 99 && y <= 99);
            assert_eq!(item.answer, (x + y).to_string());
        }
        let small = Arithmetic { max_operand: 3 }.generate(100, 1);
        assert!(small.iter().all(|i| i.answer.parse::<u32>().unwrap() <= 6));
        assert_eq!(task.max_answer_chars(), 5);
    }

    #[test]
    fn reverse_spells_backwards() {
        let task = Reverse::builtin();
        assert_eq!(task.words().len(), 600);
        let items = task.generate(100, 3);
        assert_eq!(items, task.generate(100, 3));
        for item in &items {
            let word = item
                .prompt
                .strip_prefix("reverse: ")
                .and_then(|p| p.strip_suffix('='))
                .expect("reverse: w=");
            assert!(task.words().iter().any(|w| w == word));
            assert_eq!(item.answer.chars().rev().collect::<String>(), word);
            assert_ne!(item.answer, word, "palindromes are excluded");
        }
        let one = Reverse::new(vec!["stone".into()]).expect("valid");
        assert_eq!(
            one.generate(1, 0),
            vec![TaskItem {
                prompt: "reverse: stone=".into(),
                answer: "enots".into()
            }]
        );
        assert!(Reverse::new(vec![]).is_err());
        let err = Reverse::new(vec!["Stone".into()]).unwrap_err();
        assert!(err.to_string().contains("`Stone`"), "{err}");
    }

    #[test]
    fn countdown_items_are_solved_by_their_answers() {
        let task = Countdown::default();
        let items = task.generate(300, 11);
        assert_eq!(items, task.generate(300, 11));
        for item in &items {
            let (numbers, target) = parse_countdown_prompt(&item.prompt).expect(&item.prompt);
            assert_eq!(numbers.len(), 3);
            assert!((1..=100).contains(&target), "{}", item.prompt);
            assert!(
                check_countdown(&item.prompt, &item.answer),
                "{} {}",
                item.prompt,
                item.answer
            );
            assert!(item.answer.len() <= task.max_answer_chars());
            assert!(AnswerKind::Countdown.is_correct(&item.prompt, &item.answer, "unused"));
        }
    }

    #[test]
    fn countdown_checker_is_strict_and_safe() {
        let p = "countdown: 3 7 25 -> 46=";
        assert!(check_countdown(p, "25+3*7"));
        assert!(check_countdown(p, " 7 * 3 + 25 "));
        assert!(!check_countdown(p, "25+21"), "21 is not a given number");
        assert!(!check_countdown(p, "25+3*7+0"), "extra number");
        assert!(!check_countdown(p, "25+3+7"), "wrong value");
        assert!(!check_countdown(p, "25+3*7="), "trailing junk");
        assert!(!check_countdown(p, "-3+7*25"), "no unary minus");
        assert!(!check_countdown(p, ""));
        assert!(!check_countdown("12+35=", "47"), "not a countdown prompt");
        // Exact rationals: 7/2 is not truncated.
        assert!(check_countdown("countdown: 7 2 4 -> 14=", "7/2*4"));
        assert!(!check_countdown("countdown: 7 0 4 -> 14=", "7/0*4"));
        let deep = format!("{}3{}", "(".repeat(40), ")".repeat(40));
        assert!(!check_countdown("countdown: 3 -> 3=", &deep));
        assert!(check_countdown("countdown: 3 -> 3=", "((3))"));
        assert!(!check_countdown(p, &"9".repeat(30)));
        assert!(!check_countdown("countdown: 3 -> 3=", &"1".repeat(200)));
    }

    #[test]
    fn answer_kinds_check_lines() {
        use AnswerKind::*;
        assert_eq!(Auto.resolve(Some(" 47 ")), Integer);
        assert_eq!(Auto.resolve(Some("enots")), Word);
        assert_eq!(Auto.resolve(Some("Hello there")), Text);
        assert_eq!(Auto.resolve(None), Text);
        assert_eq!(Word.resolve(Some("47")), Word);

        assert!(Integer.is_correct("", "47", "47"));
        assert!(Integer.is_correct("", "  47  \nmore text", "47"));
        assert!(
            Integer.is_correct("", "047", "47"),
            "integers compare as numbers"
        );
        assert!(!Integer.is_correct("", "4 7", "47"));
        assert!(!Integer.is_correct("", "47abc", "47"));
        assert!(!Integer.is_correct("", "", "47"));
        assert!(
            !Integer.is_correct("", "\n47", "47"),
            "the answer is the first line"
        );
        assert!(Auto.is_correct("", "47\r\n", "47"));
        assert!(Word.is_correct("", "enots\n", "enots"));
        assert!(!Word.is_correct("", "Enots", "enots"));

        assert!(Integer.is_well_formed("47"));
        assert!(Integer.is_well_formed("-3"));
        assert!(!Integer.is_well_formed("-"));
        assert!(!Integer.is_well_formed("4.7"));
        assert!(Word.is_well_formed("enots"));
        assert!(!Word.is_well_formed("en ots"));
        assert!(Countdown.is_well_formed("(1+2)*3"));
        assert!(!Countdown.is_well_formed("1+"));
        assert!(Text.is_well_formed("x") && !Text.is_well_formed(""));
    }

    #[test]
    fn held_out_split_is_disjoint_distinct_and_seeded() {
        for task in [
            Box::new(Arithmetic::default()) as Box<dyn Task>,
            Box::new(Reverse::builtin()),
            Box::new(WordProblems::default()),
        ] {
            let (eval, train) = held_out_split(task.as_ref(), 200, 500);
            assert_eq!((eval.len(), train.len()), (200, 500));
            let eval_prompts: HashSet<&str> = eval.iter().map(|i| i.prompt.as_str()).collect();
            assert_eq!(eval_prompts.len(), 200, "eval prompts are distinct");
            assert!(
                train
                    .iter()
                    .all(|i| !eval_prompts.contains(i.prompt.as_str()))
            );
            assert_eq!((eval, train), held_out_split(task.as_ref(), 200, 500));
        }
        // A stream with too few distinct prompts gives what it has.
        let tiny = Reverse::new(vec!["ab".into(), "cd".into()]).expect("valid");
        let got = generate_excluding(&tiny, 5, 0, &HashSet::new(), true);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn word_problems_are_seeded_prefix_stable_and_exact() {
        let task = WordProblems::default();
        let items = task.generate(2000, 5);
        assert_eq!(items, task.generate(2000, 5));
        assert_eq!(items[..100], task.generate(100, 5)[..]);
        assert_ne!(items[..100], task.generate(100, 6)[..]);
        let distinct: HashSet<&str> = items.iter().map(|i| i.prompt.as_str()).collect();
        assert!(distinct.len() > 1980, "{} distinct", distinct.len());
        for item in &items {
            let (problem, instruction) = item.prompt.split_once('\n').expect("two lines");
            assert_eq!(instruction, WORD_PROBLEM_INSTRUCTION);
            assert!(problem.ends_with('?'), "{problem}");
            assert!(
                !problem.contains("  ") && !problem.contains(" 1 "),
                "{problem}"
            );
            let answer: u64 = item.answer.parse().expect("a non-negative integer");
            assert!(answer < 10_000, "{problem} {answer}");
            // The answer in the requested shape scores; the last number of the problem
            // (what a model that copies it would say) mostly does not.
            let good = format!("Some steps.\n#### {answer}");
            assert!(AnswerKind::Numeric.is_correct(&item.prompt, &good, &item.answer));
            assert!(ends_with_final_answer(&good, None));
        }
        // max_ops keeps the short ones.
        let easy = WordProblems { max_ops: 2 }.generate(300, 5);
        let ops2 = word_problems::TEMPLATES
            .iter()
            .filter(|t| t.ops <= 2)
            .count();
        assert!(ops2 >= 4);
        let hard = task.generate(300, 5);
        let mean_len = |v: &[TaskItem]| v.iter().map(|i| i.prompt.len()).sum::<usize>() / v.len();
        assert!(mean_len(&easy) < mean_len(&hard));
        assert_eq!(task.answer_kind(), AnswerKind::Numeric);
        assert!(WordProblems { max_ops: 1 }.generate(5, 0).is_empty());
    }

    #[test]
    fn every_word_problem_template_keeps_its_promises() {
        let mut rng = StdRng::seed_from_u64(9);
        for (index, template) in word_problems::TEMPLATES.iter().enumerate() {
            assert!((2..=4).contains(&template.ops), "template {index}");
            let mut answers = HashSet::new();
            for _ in 0..500 {
                let (text, answer) = (template.make)(&mut rng);
                assert!(text.ends_with('?'), "template {index}: {text}");
                assert!(!text.contains('{'), "template {index}: {text}");
                answers.insert(answer);
            }
            assert!(answers.len() > 5, "template {index} varies its answer");
        }
        assert!((12..=20).contains(&word_problems::TEMPLATES.len()));
    }

    #[test]
    fn numeric_answer_kind() {
        use AnswerKind::*;
        assert_eq!(
            Auto.resolve(Some("42")),
            Integer,
            "auto never guesses numeric"
        );
        assert_eq!(Numeric.resolve(Some("42")), Numeric);
        let c = "Ava has 3 + 4 = 7 pens.\nShe gives away 2, so 7 - 2 = 5.\n#### 5";
        assert!(Numeric.is_correct("", c, "5"));
        assert!(Numeric.is_correct("", c, " 5.0 "));
        assert!(!Numeric.is_correct("", c, "7"));
        assert!(
            !Integer.is_correct("", c, "5"),
            "integer reads the first line"
        );
        assert!(Numeric.is_correct("", "The answer is $1,234.00.", "1234"));
        assert!(!Numeric.is_correct("", "no idea", "5"));
        assert!(Numeric.is_well_formed(c));
        assert!(Numeric.is_well_formed("about 5 apples"));
        assert!(!Numeric.is_well_formed("no idea"));
        assert_eq!(
            serde_json::to_string(&Numeric).expect("serialises"),
            "\"numeric\""
        );
    }

    /// What `assets/tasks/` holds: task, eval items, train items.
    fn shipped() -> [(Box<dyn Task>, usize, usize); 4] {
        [
            (Box::new(Arithmetic::default()), 200, 2000),
            (Box::new(Reverse::builtin()), 200, 2000),
            // Longer lines, and beyond a 4M-parameter model: fewer, to keep the repo small.
            (Box::new(Countdown::default()), 200, 1000),
            (Box::new(WordProblems::default()), 200, 2000),
        ]
    }

    #[test]
    fn shipped_files_match_the_generators() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (task, n_eval, n_train) in shipped() {
            let (eval, train) =
                write_split(task.as_ref(), dir.path(), n_eval, n_train).expect("write");
            for path in [eval, train] {
                let name = path.file_name().expect("name");
                let shipped = std::fs::read_to_string(assets().join(name)).expect("shipped file");
                let fresh = std::fs::read_to_string(&path).expect("fresh file");
                assert!(shipped == fresh, "{name:?} is stale: run the ignored test");
            }
            let loaded = load_items(&assets().join(format!("{}_eval.jsonl", task.name())));
            let loaded = loaded.expect("loads");
            assert_eq!(loaded.len(), n_eval);
            let kind = task.answer_kind();
            assert!(
                loaded
                    .iter()
                    .all(|i| kind.is_correct(&i.prompt, &i.answer, &i.answer))
            );
        }
    }

    /// Rewrites `assets/tasks/*.jsonl`:
    /// `cargo test --release --lib tasks::tests::regenerate_shipped_files -- --ignored`.
    #[test]
    #[ignore]
    fn regenerate_shipped_files() {
        for (task, n_eval, n_train) in shipped() {
            write_split(task.as_ref(), &assets(), n_eval, n_train).expect("write");
        }
    }

    #[test]
    fn load_items_explains_bad_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.jsonl");
        let items = Arithmetic::default().generate(3, 0);
        write_jsonl(&path, &items).expect("write");
        assert_eq!(load_items(&path).expect("load"), items);

        std::fs::write(
            &path,
            "{\"prompt\": \"1+1=\", \"answer\": \"2\"}\n{\"prompt\": \"x\"}\n",
        )
        .expect("write");
        let err = load_items(&path).unwrap_err().to_string();
        assert!(err.ends_with("record 2: no `answer` column"), "{err}");
        std::fs::write(&path, "{\"text\": \"x\"}\n").expect("write");
        let err = load_items(&path).unwrap_err().to_string();
        assert!(err.contains("found a `text` example"), "{err}");
        assert!(load_items(&dir.path().join("missing.jsonl")).is_err());
    }

    #[test]
    fn task_config_reads_toml() {
        #[derive(Deserialize)]
        struct Wrap {
            task: TaskConfig,
        }
        let w: Wrap =
            toml::from_str("[task]\nname = \"arithmetic\"\nmax_operand = 9\n").expect("parses");
        assert_eq!(
            w.task,
            TaskConfig::Arithmetic(ArithmeticConfig { max_operand: 9 })
        );
        let task = w.task.build().expect("builds");
        assert_eq!(task.name(), "arithmetic");
        let w: Wrap = toml::from_str("[task]\nname = \"reverse\"\n").expect("parses");
        assert_eq!(w.task.build().expect("builds").name(), "reverse");
        let w: Wrap = toml::from_str("[task]\nname = \"countdown\"\nnumbers = 0\n").expect("ok");
        assert!(w.task.build().is_err());
        let w: Wrap = toml::from_str("[task]\nname = \"word_problems\"\n").expect("parses");
        assert_eq!(
            w.task,
            TaskConfig::WordProblems(WordProblemsConfig { max_ops: 4 })
        );
        let task = w.task.build().expect("builds");
        assert_eq!(
            (task.name(), task.answer_kind()),
            ("word_problems", AnswerKind::Numeric)
        );
        let w: Wrap =
            toml::from_str("[task]\nname = \"word_problems\"\nmax_ops = 5\n").expect("parses");
        let err = w.task.build().err().expect("out of range").to_string();
        assert!(err.contains("max_ops must be 2, 3 or 4"), "{err}");
        let bad = toml::from_str::<Wrap>("[task]\nname = \"word_problems\"\nsteps = 3\n");
        assert!(bad.is_err(), "unknown keys are errors");
        let bad = toml::from_str::<Wrap>("[task]\nname = \"arithmetic\"\nmax_operands = 9\n");
        assert!(bad.is_err(), "unknown keys are errors");
    }
}
