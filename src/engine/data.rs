//! Training data: TRL-format JSONL datasets parsed into [`Example`]s, tokenised for SFT with
//! TRL's loss-masking rules, packed or padded into batches, and visited in a seeded order that
//! can be resumed exactly.
//!
//! The column conventions are TRL's, so datasets exported from the Hugging Face Hub work
//! unchanged:
//!
//! | columns                                   | [`Example`]                    |
//! |-------------------------------------------|--------------------------------|
//! | `text`                                    | [`Example::Text`]              |
//! | `messages`                                | [`Example::Messages`]          |
//! | `prompt` + `completion`                   | [`Example::PromptCompletion`]  |
//! | `prompt` (+ `answer`/`solution`/...)      | [`Example::Prompt`]            |
//! | `prompt` + `chosen` + `rejected`          | [`Example::Preference`]        |
//! | `chosen` + `rejected` (implicit prompt)   | [`Example::Preference`]        |
//!
//! Any of `prompt`, `completion`, `chosen` and `rejected` may be a string or a list of
//! `{"role", "content"}` messages (TRL's "conversational" form). Other columns are ignored, and a
//! `null` column counts as absent (mixed datasets exported from `datasets` fill gaps with nulls).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::engine::model::tokenizer::ChatMessage;

/// What went wrong reading or tokenising a dataset. Line errors carry the file and the 1-based
/// line so a user can open the dataset at the offending record.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One line of a dataset is malformed; `line` is 1-based.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The example's format does not suit the task (for example a preference pair given to SFT).
    #[error("{task} needs {needs} examples; found a `{found}` example")]
    WrongKind {
        task: &'static str,
        needs: &'static str,
        found: &'static str,
    },
    /// The options ask for something this example or chat template cannot provide.
    #[error("{0}")]
    Unsupported(String),
    /// The tokenizer or its chat template failed.
    #[error("tokenizer: {0}")]
    Codec(String),
}

impl DataError {
    /// The 1-based line of a malformed record, if the error is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            DataError::Line { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// A prompt or response: plain text, or a conversation in TRL's conversational form.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Messages(Vec<ChatMessage>),
}

impl Prompt {
    pub fn is_conversational(&self) -> bool {
        matches!(self, Prompt::Messages(_))
    }

    /// The prompt as messages; plain text becomes a single message from `role`, which lets a
    /// text completion follow a conversational prompt.
    pub fn to_messages(&self, role: &str) -> Vec<ChatMessage> {
        match self {
            Prompt::Text(text) => vec![ChatMessage {
                role: role.to_string(),
                content: text.clone(),
            }],
            Prompt::Messages(messages) => messages.clone(),
        }
    }
}

/// One dataset record, classified by TRL's column conventions.
#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    /// `{"text": ...}`: language modelling on raw text.
    Text(String),
    /// `{"messages": [...]}`: a whole conversation.
    Messages(Vec<ChatMessage>),
    /// `{"prompt", "completion"}`: supervised pairs, usually trained on the completion only.
    PromptCompletion { prompt: Prompt, completion: Prompt },
    /// `{"prompt"}` alone, for on-line methods (GRPO, RLOO) that generate their own completions.
    /// `answer` (from `answer`, `solution` or `ground_truth`) and `reference` are kept for
    /// reward checkers.
    Prompt {
        prompt: Prompt,
        reference: Option<String>,
        answer: Option<String>,
    },
    /// `{"prompt", "chosen", "rejected"[, "margin"]}`: preference pairs (DPO and friends).
    /// Without a `prompt` column (TRL's implicit-prompt form) the prompt is the part `chosen`
    /// and `rejected` share, and they keep only what follows it.
    Preference {
        prompt: Prompt,
        chosen: Prompt,
        rejected: Prompt,
        margin: Option<f32>,
    },
}

impl Example {
    /// A short name for the example's format, for messages and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Example::Text(_) => "text",
            Example::Messages(_) => "messages",
            Example::PromptCompletion { .. } => "prompt+completion",
            Example::Prompt { .. } => "prompt",
            Example::Preference { .. } => "preference",
        }
    }

    /// The prompt the policy is asked to continue, for formats that have one.
    pub fn prompt(&self) -> Option<&Prompt> {
        match self {
            Example::PromptCompletion { prompt, .. }
            | Example::Prompt { prompt, .. }
            | Example::Preference { prompt, .. } => Some(prompt),
            Example::Text(_) | Example::Messages(_) => None,
        }
    }
}

const EXPECTED_COLUMNS: &str = "expected a JSON object with `text`, `messages`, \
    `prompt`+`completion`, `prompt` or `prompt`+`chosen`+`rejected`";

/// Reads a JSONL dataset, stopping at the first malformed line. Blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>, DataError> {
    let mut examples = Vec::new();
    for_each_record(path, |record| {
        examples.push(record?);
        Ok(())
    })?;
    Ok(examples)
}

/// Reads a JSONL dataset, skipping malformed lines but reporting each of them, so a large
/// scraped dataset with a few bad rows can still be used. A file that cannot be opened gives
/// no examples and one error.
pub fn read_jsonl_lenient(path: &Path) -> (Vec<Example>, Vec<DataError>) {
    let mut examples = Vec::new();
    let mut errors = Vec::new();
    let outcome = for_each_record(path, |record| {
        match record {
            Ok(example) => examples.push(example),
            Err(err) => errors.push(err),
        }
        Ok(())
    });
    if let Err(err) = outcome {
        errors.push(err);
    }
    (examples, errors)
}

/// Parses every non-blank line of `path` and hands each result to `f`; an error returned by
/// `f`, or a failure to open or read the file, stops the walk.
fn for_each_record(
    path: &Path,
    mut f: impl FnMut(Result<Example, DataError>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let io_error = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io_error)?);
    for (i, line) in reader.lines().enumerate() {
        let line_error = |message| DataError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let line = match line {
            Ok(line) => line,
            // Bad UTF-8 spoils one line, not the file; anything else is a real read failure.
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                f(Err(line_error("not valid UTF-8".to_string())))?;
                continue;
            }
            Err(err) => return Err(io_error(err)),
        };
        // Editors on Windows like to start files with a byte-order mark.
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            &line
        };
        if line.trim().is_empty() {
            continue;
        }
        f(parse_example(line).map_err(line_error))?;
    }
    Ok(())
}

/// Parses one JSONL record. The error says what is wrong without a location; the readers add
/// the file and line.
pub fn parse_example(line: &str) -> Result<Example, String> {
    let value: Value = serde_json::from_str(line).map_err(|err| json_message(&err))?;
    match value {
        Value::Object(object) => example_from_object(&object),
        other => Err(format!("{EXPECTED_COLUMNS}; found {}", describe(&other))),
    }
}

/// serde's message without its "at line 1 column N" suffix, which would mislead since the
/// record is a single line of a larger file.
fn json_message(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match full.strip_suffix(&suffix) {
        Some(message) => format!("invalid JSON at column {}: {message}", err.column()),
        None => format!("invalid JSON: {full}"),
    }
}

fn example_from_object(object: &Map<String, Value>) -> Result<Example, String> {
    let has = |key: &str| object.get(key).is_some_and(|v| !v.is_null());

    if has("chosen") != has("rejected") {
        let (present, missing) = if has("chosen") {
            ("chosen", "rejected")
        } else {
            ("rejected", "chosen")
        };
        return Err(format!(
            "preference records need both `chosen` and `rejected`; found `{present}` without `{missing}`"
        ));
    }
    if has("chosen") {
        let chosen = prompt_field(object, "chosen")?;
        let rejected = prompt_field(object, "rejected")?;
        let (prompt, chosen, rejected) = if has("prompt") {
            (prompt_field(object, "prompt")?, chosen, rejected)
        } else {
            split_implicit_prompt(chosen, rejected)?
        };
        return Ok(Example::Preference {
            prompt,
            chosen,
            rejected,
            margin: margin_field(object)?,
        });
    }
    if has("prompt") && has("completion") {
        return Ok(Example::PromptCompletion {
            prompt: prompt_field(object, "prompt")?,
            completion: prompt_field(object, "completion")?,
        });
    }
    if has("messages") {
        return Ok(Example::Messages(messages_field(object, "messages")?));
    }
    if has("text") {
        return match &object["text"] {
            Value::String(text) => Ok(Example::Text(text.clone())),
            other => Err(format!(
                "`text`: expected a string, found {}",
                describe(other)
            )),
        };
    }
    if has("prompt") {
        return Ok(Example::Prompt {
            prompt: prompt_field(object, "prompt")?,
            reference: scalar_text_field(object, &["reference"])?,
            answer: scalar_text_field(object, &["answer", "solution", "ground_truth"])?,
        });
    }
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    Err(format!(
        "{EXPECTED_COLUMNS}; found keys [{}]",
        keys.join(", ")
    ))
}

/// TRL's implicit-prompt preference form: the prompt is what `chosen` and `rejected` share.
/// For text, a space just before the split goes with the responses, as in TRL's
/// `extract_prompt`.
fn split_implicit_prompt(
    chosen: Prompt,
    rejected: Prompt,
) -> Result<(Prompt, Prompt, Prompt), String> {
    match (chosen, rejected) {
        (Prompt::Messages(chosen), Prompt::Messages(rejected)) => {
            let n = chosen
                .iter()
                .zip(&rejected)
                .take_while(|(a, b)| a == b)
                .count();
            Ok((
                Prompt::Messages(chosen[..n].to_vec()),
                Prompt::Messages(chosen[n..].to_vec()),
                Prompt::Messages(rejected[n..].to_vec()),
            ))
        }
        (Prompt::Text(chosen), Prompt::Text(rejected)) => {
            // When one is a prefix of the other the shorter one's length is a char boundary of
            // both.
            let mut n = chosen
                .char_indices()
                .zip(rejected.chars())
                .find(|((_, a), b)| a != b)
                .map_or(chosen.len().min(rejected.len()), |((i, _), _)| i);
            if chosen[..n].ends_with(' ') {
                n -= 1;
            }
            Ok((
                Prompt::Text(chosen[..n].to_string()),
                Prompt::Text(chosen[n..].to_string()),
                Prompt::Text(rejected[n..].to_string()),
            ))
        }
        _ => Err(
            "without a `prompt`, `chosen` and `rejected` must both be strings or both be \
                  message lists"
                .to_string(),
        ),
    }
}

fn prompt_field(object: &Map<String, Value>, key: &str) -> Result<Prompt, String> {
    match &object[key] {
        Value::String(text) => Ok(Prompt::Text(text.clone())),
        Value::Array(_) => Ok(Prompt::Messages(messages_field(object, key)?)),
        other => Err(format!(
            "`{key}`: expected a string or a list of messages, found {}",
            describe(other)
        )),
    }
}

fn messages_field(object: &Map<String, Value>, key: &str) -> Result<Vec<ChatMessage>, String> {
    let Value::Array(items) = &object[key] else {
        return Err(format!(
            "`{key}`: expected a list of {{\"role\", \"content\"}} messages, found {}",
            describe(&object[key])
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_message(item).map_err(|err| format!("`{key}[{i}]`: {err}")))
        .collect()
}

/// One `{"role", "content"}` message. A null content (an assistant turn that only calls tools)
/// reads as empty, and a list of text parts (the multimodal layout) is joined.
fn parse_message(value: &Value) -> Result<ChatMessage, String> {
    let Value::Object(message) = value else {
        return Err(format!(
            "expected a {{\"role\", \"content\"}} object, found {}",
            describe(value)
        ));
    };
    let role = match message.get("role") {
        Some(Value::String(role)) => role.clone(),
        Some(other) => {
            return Err(format!(
                "`role`: expected a string, found {}",
                describe(other)
            ));
        }
        None => return Err("missing `role`".to_string()),
    };
    let content = match message.get("content") {
        Some(Value::String(content)) => content.clone(),
        None | Some(Value::Null) => String::new(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("text") {
                Some(Value::String(text)) => Ok(text.as_str()),
                _ => Err(
                    "`content`: only text parts (`{\"type\": \"text\", \"text\": ...}`) \
                          are supported"
                        .to_string(),
                ),
            })
            .collect::<Result<String, String>>()?,
        Some(other) => {
            return Err(format!(
                "`content`: expected a string, found {}",
                describe(other)
            ));
        }
    };
    Ok(ChatMessage { role, content })
}

/// The first present key of `keys` as text. Numbers are accepted because math datasets often
/// store answers as numbers.
fn scalar_text_field(object: &Map<String, Value>, keys: &[&str]) -> Result<Option<String>, String> {
    let Some((key, value)) = keys
        .iter()
        .find_map(|key| object.get(*key).filter(|v| !v.is_null()).map(|v| (key, v)))
    else {
        return Ok(None);
    };
    match value {
        Value::String(text) => Ok(Some(text.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(format!(
            "`{key}`: expected a string or a number, found {}",
            describe(other)
        )),
    }
}

fn margin_field(object: &Map<String, Value>) -> Result<Option<f32>, String> {
    match object.get("margin") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().map(|m| m as f32)),
        Some(other) => Err(format!(
            "`margin`: expected a number, found {}",
            describe(other)
        )),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The tokenizer as SFT tokenisation sees it, so this module does not depend on the concrete
/// tokenizer type (and tests can use a toy one).
pub trait TextCodec {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String>;
    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String>;
    fn eos_id(&self) -> Option<u32>;
}

/// A tokenised training sequence. `loss_mask[i]` says whether token `i` is a target that
/// counts in the loss; the trainer shifts (logits at `i - 1` predict token `i`), so
/// `loss_mask[0]` never contributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenizedExample {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<bool>,
}

impl TokenizedExample {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// How many tokens count in the loss; zero means the example teaches nothing (for example
    /// a prompt that truncation left without its completion).
    pub fn num_targets(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Keeps the first `max_len` tokens, as TRL truncates.
    pub fn truncate(&mut self, max_len: usize) {
        self.input_ids.truncate(max_len);
        self.loss_mask.truncate(max_len);
    }
}

/// How SFT turns examples into token sequences; the defaults are TRL's `SFTConfig` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SftTokenizeOptions {
    /// Sequences are cut to this many tokens, keeping the beginning; 0 means no limit.
    pub max_len: usize,
    /// For `prompt`+`completion` examples, leave the prompt out of the loss.
    pub completion_only_loss: bool,
    /// For conversations, count only the tokens of assistant turns.
    pub assistant_only_loss: bool,
    /// End plain-text sequences with EOS so the model learns to stop. Conversations are left
    /// alone: their chat template already closes every turn.
    pub append_eos: bool,
}

impl Default for SftTokenizeOptions {
    fn default() -> Self {
        Self {
            max_len: 1024,
            completion_only_loss: true,
            assistant_only_loss: false,
            append_eos: true,
        }
    }
}

/// Tokenises one example for SFT following TRL's `SFTTrainer`:
///
/// - `text`: the text plus EOS, every token a target;
/// - `messages`: the rendered conversation, every token a target unless `assistant_only_loss`;
/// - `prompt`+`completion` as text: prompt then completion plus EOS, the prompt masked out when
///   `completion_only_loss`;
/// - `prompt`+`completion` as messages: the prompt rendered with the generation prompt, the
///   whole conversation rendered, the prompt's tokens masked out when `completion_only_loss`.
///
/// `prompt`-only and preference examples are an error: they belong to other trainers.
pub fn tokenize_for_sft(
    ex: &Example,
    codec: &dyn TextCodec,
    opts: &SftTokenizeOptions,
) -> Result<TokenizedExample, DataError> {
    let mut out = match ex {
        Example::Text(text) => {
            require_conversational(opts, ex)?;
            let mut input_ids = encode(codec, text, true)?;
            push_eos(&mut input_ids, codec, opts);
            all_targets(input_ids)
        }
        Example::Messages(messages) => tokenize_conversation(&[], messages, codec, opts)?,
        Example::PromptCompletion {
            prompt: Prompt::Text(prompt),
            completion: Prompt::Text(completion),
        } => {
            require_conversational(opts, ex)?;
            // Tokenised whole rather than concatenated so merges across the seam come out as
            // the model will see them; the prompt's own token count sets the mask, as in TRL.
            let prompt_len = encode(codec, prompt, true)?.len();
            let mut input_ids = encode(codec, &format!("{prompt}{completion}"), true)?;
            push_eos(&mut input_ids, codec, opts);
            let mut out = all_targets(input_ids);
            if opts.completion_only_loss {
                mask_prefix(&mut out.loss_mask, prompt_len);
            }
            out
        }
        Example::PromptCompletion { prompt, completion } => tokenize_conversation(
            &prompt.to_messages("user"),
            &completion.to_messages("assistant"),
            codec,
            opts,
        )?,
        Example::Prompt { .. } | Example::Preference { .. } => {
            return Err(DataError::WrongKind {
                task: "SFT",
                needs: "`text`, `messages` or `prompt`+`completion`",
                found: ex.kind(),
            });
        }
    };
    if opts.max_len > 0 {
        out.truncate(opts.max_len);
    }
    Ok(out)
}

/// A conversation split into a prompt (masked when `completion_only_loss`) and the rest.
fn tokenize_conversation(
    prompt: &[ChatMessage],
    completion: &[ChatMessage],
    codec: &dyn TextCodec,
    opts: &SftTokenizeOptions,
) -> Result<TokenizedExample, DataError> {
    let messages: Vec<ChatMessage> = prompt.iter().chain(completion).cloned().collect();
    let text = template(codec, &messages, false)?;
    let mut out = all_targets(encode(codec, &text, false)?);
    if opts.completion_only_loss && !prompt.is_empty() {
        let prompt_len = encode(codec, &template(codec, prompt, true)?, false)?.len();
        mask_prefix(&mut out.loss_mask, prompt_len);
    }
    if opts.assistant_only_loss {
        let assistant = assistant_mask(&messages, &text, out.len(), codec)?;
        for (m, a) in out.loss_mask.iter_mut().zip(assistant) {
            *m &= a;
        }
    }
    Ok(out)
}

/// Marks the tokens of assistant turns. Templates differ too much to parse, so each turn is
/// located by rendering the conversation up to it: the text before the turn (with the
/// generation prompt, so the assistant header is not a target) and the text through it.
/// This needs a template that renders earlier turns the same whatever follows them.
fn assistant_mask(
    messages: &[ChatMessage],
    full_text: &str,
    full_len: usize,
    codec: &dyn TextCodec,
) -> Result<Vec<bool>, DataError> {
    let unstable = || {
        DataError::Unsupported(
            "assistant_only_loss: the chat template renders earlier turns differently once later \
             turns follow, so assistant turns cannot be located; turn assistant_only_loss off"
                .to_string(),
        )
    };
    let mut mask = vec![false; full_len];
    for (i, message) in messages.iter().enumerate() {
        if message.role != "assistant" {
            continue;
        }
        let end_text = template(codec, &messages[..=i], false)?;
        if !full_text.starts_with(&end_text) {
            return Err(unstable());
        }
        // Some templates add nothing for a generation prompt or render it differently from a
        // real turn's header; then the turn starts where the previous text ends.
        let mut start_text = template(codec, &messages[..i], true)?;
        if !end_text.starts_with(&start_text) {
            start_text = template(codec, &messages[..i], false)?;
            if !end_text.starts_with(&start_text) {
                return Err(unstable());
            }
        }
        let start = encode(codec, &start_text, false)?.len();
        let end = encode(codec, &end_text, false)?.len().min(full_len);
        if start < end {
            mask[start..end].fill(true);
        }
    }
    Ok(mask)
}

fn require_conversational(opts: &SftTokenizeOptions, ex: &Example) -> Result<(), DataError> {
    if opts.assistant_only_loss {
        return Err(DataError::Unsupported(format!(
            "assistant_only_loss needs conversational examples (`messages`, or `prompt`+`completion` \
             as message lists); found a `{}` example with plain text",
            ex.kind()
        )));
    }
    Ok(())
}

fn encode(
    codec: &dyn TextCodec,
    text: &str,
    add_special_tokens: bool,
) -> Result<Vec<u32>, DataError> {
    codec
        .encode(text, add_special_tokens)
        .map_err(DataError::Codec)
}

fn template(
    codec: &dyn TextCodec,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String, DataError> {
    codec
        .apply_chat_template(messages, add_generation_prompt)
        .map_err(DataError::Codec)
}

/// Appends EOS unless the text already ended with it; without a known EOS there is nothing to
/// append.
fn push_eos(ids: &mut Vec<u32>, codec: &dyn TextCodec, opts: &SftTokenizeOptions) {
    if let Some(eos) = codec.eos_id().filter(|_| opts.append_eos)
        && ids.last() != Some(&eos)
    {
        ids.push(eos);
    }
}

fn all_targets(input_ids: Vec<u32>) -> TokenizedExample {
    let loss_mask = vec![true; input_ids.len()];
    TokenizedExample {
        input_ids,
        loss_mask,
    }
}

fn mask_prefix(mask: &mut [bool], len: usize) {
    let len = len.min(mask.len());
    mask[..len].fill(false);
}

/// Concatenates examples and cuts the stream into `seq_len`-token blocks, as TRL's
/// `packing_strategy="wrapped"`: no padding is wasted, at the cost of attention crossing
/// example boundaries. The last partial block is dropped unless it is the only one, so every
/// batch has the same shape. A `seq_len` of 0 gives no blocks.
pub fn pack(examples: &[TokenizedExample], seq_len: usize) -> Vec<TokenizedExample> {
    if seq_len == 0 {
        return Vec::new();
    }
    let ids: Vec<u32> = examples
        .iter()
        .flat_map(|e| e.input_ids.iter().copied())
        .collect();
    let mask: Vec<bool> = examples
        .iter()
        .flat_map(|e| e.loss_mask.iter().copied())
        .collect();
    let mut blocks: Vec<TokenizedExample> = ids
        .chunks(seq_len)
        .zip(mask.chunks(seq_len))
        .map(|(ids, mask)| TokenizedExample {
            input_ids: ids.to_vec(),
            loss_mask: mask.to_vec(),
        })
        .collect();
    if blocks.len() > 1 && blocks.last().is_some_and(|b| b.len() < seq_len) {
        blocks.pop();
    }
    blocks
}

/// A batch of sequences padded to a common length.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PaddedBatch {
    pub input_ids: Vec<Vec<u32>>,
    /// True at real tokens, false at padding.
    pub attention_mask: Vec<Vec<bool>>,
    /// The examples' loss masks, false at padding.
    pub loss_mask: Vec<Vec<bool>>,
}

/// Pads a batch to its longest sequence. Training pads on the right; generation pads on the
/// left so every row's next token comes at the same position.
pub fn pad_batch(examples: &[&TokenizedExample], pad_id: u32, left: bool) -> PaddedBatch {
    let width = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let mut batch = PaddedBatch::default();
    for example in examples {
        let pad = width - example.len();
        let mut ids = Vec::with_capacity(width);
        let mut attention = Vec::with_capacity(width);
        let mut loss = Vec::with_capacity(width);
        if left {
            ids.resize(pad, pad_id);
            attention.resize(pad, false);
            loss.resize(pad, false);
        }
        ids.extend_from_slice(&example.input_ids);
        attention.resize(attention.len() + example.len(), true);
        loss.extend_from_slice(&example.loss_mask);
        // A loss mask shorter than its ids is padded with "not a target".
        loss.resize(attention.len(), false);
        ids.resize(width, pad_id);
        attention.resize(width, false);
        loss.resize(width, false);
        batch.input_ids.push(ids);
        batch.attention_mask.push(attention);
        batch.loss_mask.push(loss);
    }
    batch
}

/// Dataset indices in a fresh seeded shuffle each epoch. Each epoch's order depends only on
/// `(seed, epoch)`, so a run resumed from [`EpochSampler::position`] sees exactly the batches it
/// would have seen. Orders are reproducible with the pinned `rand` version (its `StdRng`
/// algorithm may change between major versions).
#[derive(Clone, Debug)]
pub struct EpochSampler {
    len: usize,
    seed: u64,
    epoch: u64,
    index: usize,
    order: Vec<usize>,
}

impl EpochSampler {
    pub fn new(len: usize, seed: u64) -> Self {
        Self::from_position(len, seed, 0, 0)
    }

    /// Resumes at `index` within `epoch`'s order; an `index` past the end carries into later
    /// epochs.
    pub fn from_position(len: usize, seed: u64, epoch: u64, index: usize) -> Self {
        let (epoch, index) = match (index.checked_div(len), index.checked_rem(len)) {
            (Some(carry), Some(rest)) => (epoch + carry as u64, rest),
            _ => (epoch, 0),
        };
        Self {
            len,
            seed,
            epoch,
            index,
            order: epoch_order(len, seed, epoch),
        }
    }

    /// `(epoch, index)` of the next index to be drawn; after a whole epoch it is `(epoch + 1, 0)`.
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.index)
    }

    /// The dataset size this sampler draws from.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next `batch_size` indices. A batch that crosses an epoch boundary continues into the
    /// next epoch's shuffle, so batches always have full size (an index can then appear twice
    /// in that one batch). An empty dataset gives empty batches.
    pub fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        let mut batch = Vec::with_capacity(batch_size);
        if self.len == 0 {
            return batch;
        }
        while batch.len() < batch_size {
            let take = (batch_size - batch.len()).min(self.len - self.index);
            batch.extend_from_slice(&self.order[self.index..self.index + take]);
            self.index += take;
            if self.index == self.len {
                self.epoch += 1;
                self.index = 0;
                self.order = epoch_order(self.len, self.seed, self.epoch);
            }
        }
        batch
    }
}

fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    // Distinct epochs get unrelated streams; the golden-ratio multiplier spreads small epoch
    // numbers over all 64 bits before `seed_from_u64` mixes them further.
    let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const BOS: u32 = 1;
    const EOS: u32 = 2;

    /// Byte-level toy tokenizer: each byte is a token (ASCII only in tests, so ids >= 32 never
    /// clash with BOS/EOS), and the chat template is `<role>content\n` per message with
    /// `<assistant>` as the generation prompt.
    struct ByteCodec;

    impl TextCodec for ByteCodec {
        fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
            let bos = add_special_tokens.then_some(BOS);
            Ok(bos.into_iter().chain(text.bytes().map(u32::from)).collect())
        }

        fn apply_chat_template(
            &self,
            messages: &[ChatMessage],
            add_generation_prompt: bool,
        ) -> Result<String, String> {
            let mut out: String = messages
                .iter()
                .map(|m| format!("<{}>{}\n", m.role, m.content))
                .collect();
            if add_generation_prompt {
                out.push_str("<assistant>");
            }
            Ok(out)
        }

        fn eos_id(&self) -> Option<u32> {
            Some(EOS)
        }
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }

    fn write_file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(contents.as_bytes()).expect("write");
        file
    }

    fn parse(line: &str) -> Example {
        parse_example(line).unwrap_or_else(|err| panic!("{line}: {err}"))
    }

    /// The tokens of `text` under `ByteCodec`, without BOS.
    fn bytes(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// The substring of the rendered ids that the loss mask selects.
    fn targets(out: &TokenizedExample) -> String {
        out.input_ids
            .iter()
            .zip(&out.loss_mask)
            .filter(|(_, m)| **m)
            .map(|(&id, _)| match id {
                BOS => '^',
                EOS => '$',
                b => char::from(b as u8),
            })
            .collect()
    }

    #[test]
    fn parses_every_column_format() {
        assert_eq!(
            parse(r#"{"text": "hi", "id": 3}"#),
            Example::Text("hi".into())
        );
        assert_eq!(
            parse(
                r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#
            ),
            Example::Messages(vec![msg("user", "a"), msg("assistant", "b")])
        );
        assert_eq!(
            parse(r#"{"prompt": "2+2=", "completion": "4"}"#),
            Example::PromptCompletion {
                prompt: Prompt::Text("2+2=".into()),
                completion: Prompt::Text("4".into()),
            }
        );
        assert_eq!(
            parse(
                r#"{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}"#
            ),
            Example::PromptCompletion {
                prompt: Prompt::Messages(vec![msg("user", "q")]),
                completion: Prompt::Messages(vec![msg("assistant", "a")]),
            }
        );
        assert_eq!(
            parse(r#"{"prompt": "q", "solution": 42, "reference": "r", "extra": [1]}"#),
            Example::Prompt {
                prompt: Prompt::Text("q".into()),
                reference: Some("r".into()),
                answer: Some("42".into()),
            }
        );
        assert_eq!(
            parse(r#"{"prompt": "q", "completion": null}"#),
            Example::Prompt {
                prompt: Prompt::Text("q".into()),
                reference: None,
                answer: None,
            }
        );
        assert_eq!(
            parse(r#"{"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 0.5}"#),
            Example::Preference {
                prompt: Prompt::Text("q".into()),
                chosen: Prompt::Text("good".into()),
                rejected: Prompt::Text("bad".into()),
                margin: Some(0.5),
            }
        );
        let ex = parse(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "assistant", "content": null}]}"#,
        );
        assert_eq!(
            ex,
            Example::Messages(vec![msg("user", "ab"), msg("assistant", "")])
        );
        assert_eq!(ex.kind(), "messages");
    }

    #[test]
    fn implicit_prompt_is_the_shared_prefix() {
        let ex = parse(
            r#"{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
                "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}"#,
        );
        assert_eq!(
            ex,
            Example::Preference {
                prompt: Prompt::Messages(vec![msg("user", "q")]),
                chosen: Prompt::Messages(vec![msg("assistant", "good")]),
                rejected: Prompt::Messages(vec![msg("assistant", "bad")]),
                margin: None,
            }
        );
        let ex = parse(r#"{"chosen": "The sky is blue.", "rejected": "The sky is green."}"#);
        assert_eq!(
            ex,
            Example::Preference {
                prompt: Prompt::Text("The sky is".into()),
                chosen: Prompt::Text(" blue.".into()),
                rejected: Prompt::Text(" green.".into()),
                margin: None,
            }
        );
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        let err = parse_example(r#"{"foo": 1, "bar": 2}"#).unwrap_err();
        assert!(err.starts_with(EXPECTED_COLUMNS), "{err}");
        assert!(
            err.ends_with("found keys [bar, foo]") || err.ends_with("found keys [foo, bar]"),
            "{err}"
        );
        let err = parse_example(r#"{"text": 5}"#).unwrap_err();
        assert_eq!(err, "`text`: expected a string, found a number");
        let err =
            parse_example(r#"{"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}"#)
                .unwrap_err();
        assert_eq!(err, "`messages[1]`: missing `role`");
        let err = parse_example(r#"{"prompt": "q", "chosen": "a"}"#).unwrap_err();
        assert!(err.contains("`chosen` without `rejected`"), "{err}");
        let err =
            parse_example(r#"{"chosen": "a", "rejected": [{"role": "user", "content": "b"}]}"#)
                .unwrap_err();
        assert!(err.contains("both be strings"), "{err}");
        let err = parse_example("[1, 2]").unwrap_err();
        assert!(err.ends_with("found a list"), "{err}");
        let err = parse_example(r#"{"text": "a" "#).unwrap_err();
        assert!(err.starts_with("invalid JSON at column"), "{err}");
        assert!(!err.contains("line 1"), "{err}");
    }

    #[test]
    fn reads_files_and_reports_file_and_line() {
        let file = write_file(
            "\u{feff}{\"text\": \"a\"}\n\n  \n{\"prompt\": \"p\"}\r\n{\"foo\": 1}\n{\"text\": \"b\"}\n{oops\n",
        );
        let err = read_jsonl(file.path()).unwrap_err();
        assert_eq!(err.line(), Some(5));
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{}:5: {EXPECTED_COLUMNS}", file.path().display())),
            "{message}"
        );
        assert!(message.ends_with("found keys [foo]"), "{message}");

        let (examples, errors) = read_jsonl_lenient(file.path());
        assert_eq!(
            examples,
            vec![
                Example::Text("a".into()),
                Example::Prompt {
                    prompt: Prompt::Text("p".into()),
                    reference: None,
                    answer: None,
                },
                Example::Text("b".into()),
            ]
        );
        let lines: Vec<_> = errors.iter().map(DataError::line).collect();
        assert_eq!(lines, vec![Some(5), Some(7)]);
        assert!(
            errors[1].to_string().contains(":7: invalid JSON"),
            "{}",
            errors[1]
        );

        let good = write_file("{\"text\": \"a\"}\n{\"text\": \"b\"}\n");
        assert_eq!(read_jsonl(good.path()).map(|e| e.len()).ok(), Some(2));
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = Path::new("/definitely/not/here.jsonl");
        let err = read_jsonl(path).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(
            err.to_string().contains("/definitely/not/here.jsonl"),
            "{err}"
        );
        let (examples, errors) = read_jsonl_lenient(path);
        assert!(examples.is_empty());
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn invalid_utf8_is_a_line_error() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"{\"text\": \"a\"}\n{\"text\": \"\xff\"}\n{\"text\": \"c\"}\n")
            .expect("write");
        let (examples, errors) = read_jsonl_lenient(file.path());
        assert_eq!(examples.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line(), Some(2));
    }

    #[test]
    fn text_trains_on_everything_and_ends_with_eos() {
        let out = tokenize_for_sft(&Example::Text("hi".into()), &ByteCodec, &Default::default())
            .expect("tokenize");
        assert_eq!(out.input_ids, [vec![BOS], bytes("hi"), vec![EOS]].concat());
        assert_eq!(out.loss_mask, vec![true; 4]);
        let opts = SftTokenizeOptions {
            append_eos: false,
            ..Default::default()
        };
        let out =
            tokenize_for_sft(&Example::Text("hi".into()), &ByteCodec, &opts).expect("tokenize");
        assert_eq!(out.input_ids, [vec![BOS], bytes("hi")].concat());
    }

    #[test]
    fn text_completion_only_masks_the_prompt() {
        let ex = parse(r#"{"prompt": "2+2=", "completion": "4"}"#);
        let out = tokenize_for_sft(&ex, &ByteCodec, &Default::default()).expect("tokenize");
        assert_eq!(
            out.input_ids,
            [vec![BOS], bytes("2+2=4"), vec![EOS]].concat()
        );
        assert_eq!(targets(&out), "4$");
        let opts = SftTokenizeOptions {
            completion_only_loss: false,
            ..Default::default()
        };
        let out = tokenize_for_sft(&ex, &ByteCodec, &opts).expect("tokenize");
        assert_eq!(targets(&out), "^2+2=4$");
    }

    #[test]
    fn conversational_completion_only_masks_the_prompt_and_header() {
        let ex = parse(
            r#"{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}"#,
        );
        let out = tokenize_for_sft(&ex, &ByteCodec, &Default::default()).expect("tokenize");
        assert_eq!(out.input_ids, bytes("<user>q\n<assistant>a\n"));
        assert_eq!(targets(&out), "a\n");

        // A text completion after a conversational prompt is an assistant turn.
        let ex = Example::PromptCompletion {
            prompt: Prompt::Messages(vec![msg("user", "q")]),
            completion: Prompt::Text("a".into()),
        };
        let out2 = tokenize_for_sft(&ex, &ByteCodec, &Default::default()).expect("tokenize");
        assert_eq!(out2, out);
    }

    #[test]
    fn messages_train_on_everything_or_only_assistant_turns() {
        let ex = Example::Messages(vec![
            msg("system", "s"),
            msg("user", "q1"),
            msg("assistant", "a1"),
            msg("user", "q2"),
            msg("assistant", "a2"),
        ]);
        let all = tokenize_for_sft(&ex, &ByteCodec, &Default::default()).expect("tokenize");
        let rendered = "<system>s\n<user>q1\n<assistant>a1\n<user>q2\n<assistant>a2\n";
        assert_eq!(all.input_ids, bytes(rendered));
        assert_eq!(targets(&all), rendered);

        let opts = SftTokenizeOptions {
            assistant_only_loss: true,
            ..Default::default()
        };
        let out = tokenize_for_sft(&ex, &ByteCodec, &opts).expect("tokenize");
        assert_eq!(out.input_ids, all.input_ids);
        assert_eq!(targets(&out), "a1\na2\n");
    }

    #[test]
    fn assistant_only_loss_refuses_plain_text() {
        let opts = SftTokenizeOptions {
            assistant_only_loss: true,
            ..Default::default()
        };
        let err = tokenize_for_sft(&Example::Text("x".into()), &ByteCodec, &opts).unwrap_err();
        assert!(matches!(err, DataError::Unsupported(_)), "{err}");
    }

    #[test]
    fn truncation_keeps_the_beginning() {
        let ex = parse(r#"{"prompt": "abc", "completion": "defgh"}"#);
        let opts = SftTokenizeOptions {
            max_len: 6,
            ..Default::default()
        };
        let out = tokenize_for_sft(&ex, &ByteCodec, &opts).expect("tokenize");
        assert_eq!(out.input_ids, [vec![BOS], bytes("abcde")].concat());
        assert_eq!(out.loss_mask, vec![false, false, false, false, true, true]);
        assert_eq!(out.num_targets(), 2);
    }

    #[test]
    fn sft_rejects_prompt_only_and_preference_examples() {
        for line in [
            r#"{"prompt": "q", "answer": "4"}"#,
            r#"{"prompt": "q", "chosen": "a", "rejected": "b"}"#,
        ] {
            let ex = parse(line);
            let err = tokenize_for_sft(&ex, &ByteCodec, &Default::default()).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(&format!("found a `{}` example", ex.kind())),
                "{message}"
            );
            assert!(message.starts_with("SFT needs `text`, `messages` or `prompt`+`completion`"));
        }
    }

    fn seq(ids: &[u32]) -> TokenizedExample {
        all_targets(ids.to_vec())
    }

    #[test]
    fn packing_cuts_fixed_blocks() {
        let examples = [seq(&[1, 2, 3]), seq(&[4, 5]), seq(&[6, 7, 8, 9])];
        let blocks = pack(&examples, 4);
        // 9 tokens: two full blocks; the 1-token remainder is dropped.
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].input_ids, vec![1, 2, 3, 4]);
        assert_eq!(blocks[1].input_ids, vec![5, 6, 7, 8]);
        assert!(blocks.iter().all(|b| b.loss_mask.len() == 4));

        let only = pack(&[seq(&[1, 2])], 4);
        assert_eq!(only, vec![seq(&[1, 2])]);
        assert!(pack(&[], 4).is_empty());
        assert!(pack(&examples, 0).is_empty());

        let mut masked = seq(&[1, 2, 3, 4]);
        masked.loss_mask = vec![false, true, false, true];
        let blocks = pack(&[masked], 2);
        assert_eq!(blocks[0].loss_mask, vec![false, true]);
        assert_eq!(blocks[1].loss_mask, vec![false, true]);
    }

    #[test]
    fn pad_batch_pads_right_or_left() {
        let mut a = seq(&[5, 6, 7]);
        a.loss_mask = vec![false, true, true];
        let b = seq(&[8]);
        let right = pad_batch(&[&a, &b], 0, false);
        assert_eq!(right.input_ids, vec![vec![5, 6, 7], vec![8, 0, 0]]);
        assert_eq!(
            right.attention_mask,
            vec![vec![true, true, true], vec![true, false, false]]
        );
        assert_eq!(
            right.loss_mask,
            vec![vec![false, true, true], vec![true, false, false]]
        );

        let left = pad_batch(&[&a, &b], 0, true);
        assert_eq!(left.input_ids, vec![vec![5, 6, 7], vec![0, 0, 8]]);
        assert_eq!(
            left.attention_mask,
            vec![vec![true, true, true], vec![false, false, true]]
        );
        assert_eq!(
            left.loss_mask,
            vec![vec![false, true, true], vec![false, false, true]]
        );

        assert_eq!(pad_batch(&[], 0, false), PaddedBatch::default());
    }

    #[test]
    fn sampler_is_deterministic_and_covers_each_epoch() {
        let mut a = EpochSampler::new(10, 7);
        let mut b = EpochSampler::new(10, 7);
        let first: Vec<usize> = (0..5).flat_map(|_| a.next_batch(2)).collect();
        let again: Vec<usize> = (0..5).flat_map(|_| b.next_batch(2)).collect();
        assert_eq!(first, again);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(a.position(), (1, 0));

        let second: Vec<usize> = (0..5).flat_map(|_| a.next_batch(2)).collect();
        assert_ne!(first, second, "each epoch reshuffles");
        let other_seed: Vec<usize> = EpochSampler::new(10, 8).next_batch(10);
        assert_ne!(first, other_seed);

        assert!(EpochSampler::new(0, 1).next_batch(4).is_empty());
    }

    #[test]
    fn sampler_resumes_exactly() {
        let mut straight = EpochSampler::new(7, 42);
        let mut seen = Vec::new();
        let mut saved = None;
        for step in 0..10 {
            if step == 4 {
                saved = Some(straight.position());
            }
            seen.push(straight.next_batch(3));
        }
        let (epoch, index) = saved.expect("saved position");
        // 4 batches of 3 from 7 items: epoch 1, index 5.
        assert_eq!((epoch, index), (1, 5));
        let mut resumed = EpochSampler::from_position(7, 42, epoch, index);
        let rest: Vec<Vec<usize>> = (4..10).map(|_| resumed.next_batch(3)).collect();
        assert_eq!(rest, seen[4..]);
        assert_eq!(resumed.position(), straight.position());

        // An index past the end carries into the next epoch.
        let carried = EpochSampler::from_position(7, 42, 0, 12);
        assert_eq!(carried.position(), (1, 5));
    }
}
