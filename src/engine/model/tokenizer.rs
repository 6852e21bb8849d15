//! The tokenizer rlft uses everywhere: a Hugging Face `tokenizers` tokenizer plus the
//! special-token ids and chat template that generation and training need.
//!
//! It can be loaded from a Hugging Face directory, rebuilt from a GGUF file's embedded
//! vocabulary (so token ids match what transformers produces for the same GGUF), or trained
//! from scratch for rlft's own small base model; [`Tokenizer::save`] writes files that
//! transformers' `AutoTokenizer` loads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value, ValueKind, from_args};
use minijinja::{Environment, ErrorKind, State};
use serde_json::json;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::engine::model::gguf::{GgufError, GgufFile};

/// One chat turn, as Hugging Face chat templates expect it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: cannot load tokenizer: {cause}", path.display())]
    Parse {
        path: PathBuf,
        cause: tokenizers::Error,
    },
    #[error("{}: invalid JSON: {cause}", path.display())]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The GGUF's tokenizer data is unusable or of a kind rlft does not support.
    #[error("{}: tokenizer: {what}", path.display())]
    GgufTokenizer { path: PathBuf, what: String },
    #[error("{context}: {cause}")]
    Tokenizers {
        context: String,
        cause: tokenizers::Error,
    },
    #[error("chat template: {cause}")]
    Template { cause: minijinja::Error },
    #[error("{0}")]
    Invalid(String),
}

/// SentencePiece BPE merges rebuilt from piece scores, as transformers does for a GGUF
/// without merges: every split of a piece into two known pieces, ranked by the merged piece's
/// score (ties by the parts' scores), best first.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    let score: std::collections::HashMap<&str, f64> =
        tokens.iter().copied().zip(scores.iter().copied()).collect();
    let mut ranked: Vec<(f64, f64, f64, usize, String, String)> = Vec::new();
    for (order, (piece, &piece_score)) in tokens.iter().zip(scores).enumerate() {
        let bounds: Vec<usize> = piece.char_indices().map(|(i, _)| i).skip(1).collect();
        for i in bounds {
            let (left, right) = piece.split_at(i);
            if let (Some(&l), Some(&r)) = (score.get(left), score.get(right)) {
                ranked.push((
                    piece_score,
                    l,
                    r,
                    order,
                    left.to_string(),
                    right.to_string(),
                ));
            }
        }
    }
    // A stable sort on (piece score desc); within one piece, (left, right) scores desc.
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.3.cmp(&b.3))
            .then(b.1.total_cmp(&a.1))
            .then(b.2.total_cmp(&a.2))
    });
    ranked.into_iter().map(|m| (m.4, m.5)).collect()
}

/// Rendered when a model has no chat template of its own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// End-of-turn tokens that also stop generation when the vocabulary has them as special
/// tokens: a chat model's EOS is often only one of them (SmolLM2's is `<|im_end|>`).
const END_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
];

/// Pre-tokenizer regexes of llama.cpp's `tokenizer.ggml.pre` variants that need one.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `LLAMA_TOKEN_TYPE_*`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A tokenizer with the special-token ids and chat template rlft needs; cheap to clone
/// relative to a training step, and shareable across threads.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    /// Primary EOS first, then other end-of-turn tokens.
    eos: Vec<u32>,
    pad: Option<u32>,
    chat_template: Option<String>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// GPT-2 style byte-level pre-tokenizer (no prefix space, GPT-2 split regex).
fn byte_level() -> ByteLevel {
    ByteLevel::new(false, true, true)
}

/// A pre-tokenizer that splits on `regex` and then maps bytes without GPT-2's regex.
fn regex_then_bytes(regex: &str) -> Result<PreTokenizerWrapper, tokenizers::Error> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

fn read_json(path: &Path) -> Result<serde_json::Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|cause| TokenizerError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    serde_json::from_str(&text).map_err(|cause| TokenizerError::Json {
        path: path.to_path_buf(),
        cause,
    })
}

/// A special token in tokenizer_config.json: a string or an AddedToken dict.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
    }
}

/// tokenizer_config.json's chat_template: a string, or a list of named templates of which
/// the "default" one is used.
fn config_template(config: &serde_json::Value) -> Option<String> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let named =
                |n: &serde_json::Value| n.get("name").and_then(|x| x.as_str()) == Some("default");
            let chosen = list.iter().find(|t| named(t)).or(list.first())?;
            chosen.get("template")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

impl Tokenizer {
    /// Wraps a tokenizer; `eos` is extended with the vocabulary's end-of-turn tokens.
    fn from_parts(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: impl IntoIterator<Item = u32>,
        pad: Option<u32>,
        chat_template: Option<String>,
    ) -> Self {
        let mut ids: Vec<u32> = Vec::new();
        let added = inner.get_added_vocabulary();
        let extra = END_TOKENS
            .iter()
            .filter(|t| added.is_special_token(t))
            .filter_map(|t| inner.token_to_id(t));
        for id in eos.into_iter().chain(extra) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Self {
            inner,
            bos,
            eos: ids,
            pad,
            chat_template,
        }
    }

    /// Loads a Hugging Face tokenizer directory: tokenizer.json, plus tokenizer_config.json
    /// (special tokens, chat template), chat_template.jinja and generation_config.json (extra
    /// EOS ids) when present.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|cause| TokenizerError::Io {
            path: path.clone(),
            cause,
        })?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|cause| TokenizerError::Parse {
            path: path.clone(),
            cause,
        })?;

        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            read_json(&config_path)?
        } else {
            json!({})
        };
        let id_of = |key: &str| config_token(&config, key).and_then(|t| inner.token_to_id(&t));
        let (bos, pad) = (id_of("bos_token"), id_of("pad_token"));
        let mut eos: Vec<u32> = id_of("eos_token").into_iter().collect();

        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let gen_config = read_json(&gen_path)?;
            match gen_config.get("eos_token_id") {
                Some(serde_json::Value::Array(ids)) => {
                    eos.extend(ids.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
                }
                Some(v) => eos.extend(v.as_u64().map(|v| v as u32)),
                None => {}
            }
        }

        // Newer transformers save the template beside the config; it takes precedence.
        let jinja_path = dir.join("chat_template.jinja");
        let template = if jinja_path.exists() {
            Some(
                std::fs::read_to_string(&jinja_path).map_err(|cause| TokenizerError::Io {
                    path: jinja_path,
                    cause,
                })?,
            )
        } else {
            config_template(&config)
        };
        Ok(Self::from_parts(inner, bos, eos, pad, template))
    }

    /// Rebuilds the tokenizer embedded in a GGUF file (`tokenizer.ggml.*`), as transformers
    /// does when loading a GGUF:
    /// - `gpt2`: byte-level BPE over the token list and merges;
    /// - `llama` (SentencePiece BPE, as Llama 2, Mistral, Gemma and Phi-3 ship): BPE with byte
    ///   fallback over the pieces, merges ranked by the merged piece's score when the file has
    ///   none, spaces as `▁` (with a leading `▁` when `add_space_prefix`).
    ///
    /// Control tokens (type 3) become special tokens.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let invalid = |what: String| TokenizerError::GgufTokenizer {
            path: gguf.path().to_path_buf(),
            what,
        };
        let model = gguf.require_str("tokenizer.ggml.model")?;
        let sentencepiece = match model {
            "gpt2" => false,
            "llama" => true,
            other => {
                return Err(invalid(format!(
                    "tokenizer model `{other}` is not supported (rlft reads `gpt2` byte-level BPE and `llama` SentencePiece BPE)"
                )));
            }
        };
        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| GgufError::MissingKey {
                path: gguf.path().to_path_buf(),
                key: "tokenizer.ggml.tokens".into(),
            })?;
        let merges = match gguf.get_str_array("tokenizer.ggml.merges")? {
            Some(merges) => merges
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    m.split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| {
                            invalid(format!(
                                "merge #{i} `{m}` is not two tokens separated by a space"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None if sentencepiece => {
                let scores = gguf
                    .get_f64_array("tokenizer.ggml.scores")?
                    .ok_or_else(|| GgufError::MissingKey {
                        path: gguf.path().to_path_buf(),
                        key: "tokenizer.ggml.scores".into(),
                    })?;
                if scores.len() != tokens.len() {
                    return Err(invalid(format!(
                        "{} scores for {} tokens",
                        scores.len(),
                        tokens.len()
                    )));
                }
                merges_from_scores(&tokens, &scores)
            }
            None => {
                return Err(TokenizerError::Gguf(GgufError::MissingKey {
                    path: gguf.path().to_path_buf(),
                    key: "tokenizer.ggml.merges".into(),
                }));
            }
        };
        let types = gguf.get_i64_array("tokenizer.ggml.token_type")?;
        if let Some(types) = &types
            && types.len() != tokens.len()
        {
            return Err(invalid(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let id_key = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match gguf.get_u64(key)? {
                None => Ok(None),
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                Some(id) => Err(invalid(format!(
                    "{key} = {id} is outside the {}-token vocabulary",
                    tokens.len()
                ))),
            }
        };
        let (bos, eos) = (
            id_key("tokenizer.ggml.bos_token_id")?,
            id_key("tokenizer.ggml.eos_token_id")?,
        );
        let pad = id_key("tokenizer.ggml.padding_token_id")?;
        let unk = id_key("tokenizer.ggml.unknown_token_id")?;

        // Settings as in transformers' GGUF converter: unknown characters become the UNK
        // token (byte-level vocabularies may lack rare control bytes), fused.
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .fuse_unk(true)
            .byte_fallback(true);
        if let Some(unk) = unk {
            builder = builder.unk_token(tokens[unk as usize].to_string());
        }
        let bpe = builder
            .build()
            .map_err(|e| invalid(format!("cannot build BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);

        if sentencepiece {
            // As transformers 5 writes these tokenizers: a Metaspace pre-tokenizer that adds
            // `▁` before the first word only (Llama 2, Mistral, Phi-3), or spaces replaced by
            // `▁` without a prefix (Gemma, `add_space_prefix = false`).
            use tokenizers::decoders::byte_fallback::ByteFallback;
            use tokenizers::decoders::fuse::Fuse;
            use tokenizers::decoders::sequence::Sequence as DecoderSequence;
            use tokenizers::decoders::strip::Strip;
            use tokenizers::normalizers::Replace;
            use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
            let space_prefix = gguf
                .get_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            let replace = |a: &str, b: &str| {
                Replace::new(a, b).map_err(|e| invalid(format!("normalizer: {e}")))
            };
            let mut decoders = vec![
                replace("\u{2581}", " ")?.into(),
                ByteFallback::default().into(),
                Fuse::default().into(),
            ];
            if space_prefix {
                inner.with_pre_tokenizer(Some(Metaspace::new(
                    '\u{2581}',
                    PrependScheme::First,
                    false,
                )));
                decoders.push(Strip::new(' ', 1, 0).into());
            } else {
                inner.with_normalizer(Some(replace(" ", "\u{2581}")?));
            }
            inner.with_decoder(Some(DecoderSequence::new(decoders)));
        } else {
            let pre: PreTokenizerWrapper = match gguf.get_str("tokenizer.ggml.pre")? {
                // SmolLM's HF tokenizer splits digits individually before the byte-level split.
                Some("smollm") => {
                    Sequence::new(vec![Digits::new(true).into(), byte_level().into()]).into()
                }
                Some("llama-bpe" | "llama3") => regex_then_bytes(LLAMA3_REGEX)
                    .map_err(|e| invalid(format!("pre-tokenizer: {e}")))?,
                Some("qwen2") => regex_then_bytes(QWEN2_REGEX)
                    .map_err(|e| invalid(format!("pre-tokenizer: {e}")))?,
                // "gpt2", "default" and names rlft does not know: GPT-2's split, which is also
                // what transformers uses for every GGUF byte-level tokenizer.
                _ => byte_level().into(),
            };
            inner.with_pre_tokenizer(Some(pre));
            inner.with_decoder(Some(byte_level()));
        }

        let added_token = |id: usize, special: bool| {
            AddedToken::from(tokens[id].to_string(), special).normalized(false)
        };
        match &types {
            Some(types) => {
                let of_type = |kind: i64, special: bool| -> Vec<AddedToken> {
                    (0..tokens.len())
                        .filter(|&i| types[i] == kind)
                        .map(|i| added_token(i, special))
                        .collect()
                };
                inner.add_special_tokens(&of_type(TOKEN_TYPE_CONTROL, true));
                inner.add_tokens(&of_type(TOKEN_TYPE_USER_DEFINED, false));
            }
            // Without token types, transformers treats UNK, BOS and EOS as the specials.
            None => {
                let specials: Vec<AddedToken> = [unk, bos, eos]
                    .into_iter()
                    .flatten()
                    .map(|id| added_token(id as usize, true))
                    .collect();
                inner.add_special_tokens(&specials);
            }
        }

        let add_bos = gguf
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false);
        let add_eos = gguf
            .get_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        let bos_edge = bos.filter(|_| add_bos).map(|id| (tokens[id as usize], id));
        let eos_edge = eos.filter(|_| add_eos).map(|id| (tokens[id as usize], id));
        if bos_edge.is_some() || eos_edge.is_some() {
            let processor = edge_tokens_processor(bos_edge, eos_edge)
                .map_err(|e| invalid(format!("BOS/EOS template: {e}")))?;
            inner.with_post_processor(Some(processor));
        }

        let template = gguf.get_str("tokenizer.chat_template")?.map(str::to_string);
        Ok(Self::from_parts(inner, bos, eos, pad, template))
    }

    /// Trains a byte-level BPE tokenizer (GPT-2 style: any text is encodable) for rlft's
    /// own base model. The first special token serves as BOS, EOS and padding, as
    /// `<|endoftext|>` does for GPT-2; chat end tokens such as `<|im_end|>` also stop.
    pub fn train_bpe(
        texts: impl IntoIterator<Item = impl AsRef<str> + Send, IntoIter: Send>,
        vocab_size: usize,
        special_tokens: &[&str],
    ) -> Result<Self, TokenizerError> {
        let alphabet = ByteLevel::alphabet();
        let minimum = alphabet.len() + special_tokens.len();
        if vocab_size < minimum {
            return Err(TokenizerError::Invalid(format!(
                "vocab_size {vocab_size} is below the {minimum} tokens needed for the 256 byte \
                 symbols and {} special tokens",
                special_tokens.len()
            )));
        }
        let specials = special_tokens
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(0)
            .special_tokens(specials)
            .initial_alphabet(alphabet.into_iter().collect())
            .build()
            .into();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        // Digits one per token (as SmolLM2 and Llama 3 do): sums are then learnable digit by
        // digit instead of as a lookup table of multi-digit tokens.
        let digits_then_bytes: PreTokenizerWrapper =
            Sequence::new(vec![Digits::new(true).into(), byte_level().into()]).into();
        inner.with_pre_tokenizer(Some(digits_then_bytes));
        inner.with_decoder(Some(byte_level()));
        inner
            .train(&mut trainer, texts.into_iter())
            .map_err(|cause| TokenizerError::Tokenizers {
                context: "training BPE".into(),
                cause,
            })?;
        let first = special_tokens.first().and_then(|t| inner.token_to_id(t));
        Ok(Self::from_parts(inner, first, first, first, None))
    }

    /// Writes tokenizer.json and tokenizer_config.json (special tokens and the chat template
    /// that [`Self::apply_chat_template`] uses) so transformers' AutoTokenizer loads the same
    /// tokenizer.
    pub fn save(&self, dir: &Path) -> Result<(), TokenizerError> {
        std::fs::create_dir_all(dir).map_err(|cause| TokenizerError::Io {
            path: dir.to_path_buf(),
            cause,
        })?;
        let path = dir.join("tokenizer.json");
        let text = self
            .inner
            .to_string(true)
            .map_err(|cause| TokenizerError::Tokenizers {
                context: format!("serialising {}", path.display()),
                cause,
            })?;
        std::fs::write(&path, text).map_err(|cause| TokenizerError::Io { path, cause })?;

        let token = |id: Option<u32>| id.and_then(|id| self.inner.id_to_token(id));
        let config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(self.bos),
            "eos_token": token(self.eos.first().copied()),
            "pad_token": token(self.pad),
            "chat_template": self.effective_template(),
            "clean_up_tokenization_spaces": false,
        });
        let path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|cause| TokenizerError::Json {
            path: path.clone(),
            cause,
        })?;
        std::fs::write(&path, text).map_err(|cause| TokenizerError::Io { path, cause })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|cause| TokenizerError::Tokenizers {
                context: "encoding text".into(),
                cause,
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|cause| TokenizerError::Tokenizers {
                context: "decoding token ids".into(),
                cause,
            })
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Ids that end generation: the model's EOS first, then end-of-turn tokens.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// The underlying Hugging Face tokenizer, for batch encoding or offsets.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
    }

    /// The model's own template; None means [`CHATML_TEMPLATE`] is used.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    fn effective_template(&self) -> &str {
        self.chat_template.as_deref().unwrap_or(CHATML_TEMPLATE)
    }

    /// Renders messages with the chat template the way transformers does (Jinja with
    /// trim_blocks/lstrip_blocks, `bos_token`/`eos_token` variables, `raise_exception`,
    /// `strftime_now`, Python-style `tojson` and common Python string/dict methods).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template_error = |cause| TokenizerError::Template { cause };
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(python_method);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| {
            strftime(&format, unix_now())
        });
        env.add_filter("tojson", python_tojson);
        let template = env
            .template_from_str(self.effective_template())
            .map_err(template_error)?;

        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        let named = [
            ("bos_token", self.bos),
            ("eos_token", self.eos.first().copied()),
            ("pad_token", self.pad),
        ];
        for (name, id) in named {
            // HF leaves unset tokens undefined, which renders as "", not "none".
            if let Some(token) = id.and_then(|id| self.inner.id_to_token(id)) {
                ctx.insert(name, Value::from(token));
            }
        }
        template.render(ctx).map_err(template_error)
    }
}

/// A post-processor that puts BOS before and/or EOS after each sequence, as llama.cpp
/// does for GGUFs with `add_bos_token`/`add_eos_token`.
fn edge_tokens_processor(
    bos: Option<(&str, u32)>,
    eos: Option<(&str, u32)>,
) -> Result<TemplateProcessing, String> {
    let wrap = |seq: &str, type_id: u32| -> Vec<String> {
        bos.iter()
            .map(|b| format!("{}:{type_id}", b.0))
            .chain([format!("${seq}:{type_id}")])
            .chain(eos.iter().map(|e| format!("{}:{type_id}", e.0)))
            .collect()
    };
    let single = wrap("A", 0);
    let pair = [single.clone(), wrap("B", 1)].concat();
    let specials: Vec<(String, u32)> = bos
        .iter()
        .chain(eos.iter())
        .map(|&(t, id)| (t.to_string(), id))
        .collect();
    TemplateProcessing::builder()
        .try_single(single)?
        .try_pair(pair)?
        .special_tokens(specials)
        .build()
        .map_err(|e| e.to_string())
}

/// Python methods that HF chat templates call on strings and dicts (`.strip()`,
/// `.items()`, ...), which Jinja2 allows and minijinja does not have natively.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<&str>,) = from_args(args)?;
                let pat = |c: char| chars.map_or(c.is_whitespace(), |cs| cs.contains(c));
                let out = match method {
                    "strip" => s.trim_matches(pat),
                    "lstrip" => s.trim_start_matches(pat),
                    _ => s.trim_end_matches(pat),
                };
                return Ok(Value::from(out));
            }
            "upper" | "lower" | "title" | "capitalize" => {
                let () = from_args(args)?;
                return state.apply_filter(method, std::slice::from_ref(value));
            }
            "startswith" | "endswith" => {
                let (affix,): (&str,) = from_args(args)?;
                let yes = if method == "startswith" {
                    s.starts_with(affix)
                } else {
                    s.ends_with(affix)
                };
                return Ok(Value::from(yes));
            }
            "split" => {
                let (sep, maxsplit): (Option<&str>, Option<i64>) = from_args(args)?;
                let limit = maxsplit.filter(|&m| m >= 0).map(|m| m as usize + 1);
                let parts: Vec<String> = match (sep, limit) {
                    (None, None) => s.split_whitespace().map(str::to_string).collect(),
                    (None, Some(n)) => {
                        // Python keeps the unsplit remainder, minus its leading whitespace.
                        let mut parts = Vec::new();
                        let mut rest = s.trim_start();
                        while parts.len() + 1 < n && !rest.is_empty() {
                            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                            parts.push(rest[..end].to_string());
                            rest = rest[end..].trim_start();
                        }
                        if !rest.is_empty() {
                            parts.push(rest.to_string());
                        }
                        parts
                    }
                    (Some(sep), None) => s.split(sep).map(str::to_string).collect(),
                    (Some(sep), Some(n)) => s.splitn(n, sep).map(str::to_string).collect(),
                };
                return Ok(Value::from(parts));
            }
            "replace" => {
                let (old, new, count): (&str, &str, Option<usize>) = from_args(args)?;
                let out = match count {
                    Some(n) => s.replacen(old, new, n),
                    None => s.replace(old, new),
                };
                return Ok(Value::from(out));
            }
            _ => {}
        }
    }
    if value.kind() == ValueKind::Map {
        match method {
            "items" => {
                let () = from_args(args)?;
                return state.apply_filter("items", std::slice::from_ref(value));
            }
            "keys" | "values" => {
                let () = from_args(args)?;
                let mut out = Vec::new();
                for key in value.try_iter()? {
                    out.push(if method == "keys" {
                        key
                    } else {
                        value.get_item(&key)?
                    });
                }
                return Ok(Value::from(out));
            }
            "get" => {
                let (key, default): (Value, Option<Value>) = from_args(args)?;
                let found = value.get_item(&key)?;
                return Ok(if found.is_undefined() {
                    default.unwrap_or(Value::from(()))
                } else {
                    found
                });
            }
            _ => {}
        }
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`, whose
/// separators (", " and ": ") differ from serde_json's compact output.
fn python_tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let mut out = Vec::new();
    let result = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(
                value,
                &mut serde_json::Serializer::with_formatter(&mut out, formatter),
            )
        }
        None => serde::Serialize::serialize(
            value,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonJson),
        ),
    };
    result
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(text))
}

/// serde_json formatter with Python's default `json.dumps` separators.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Python's `strftime` for the directives chat templates use (`%d %b %Y` and friends),
/// in UTC. Unknown directives are kept verbatim.
fn strftime(format: &str, unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        [
            "The quick brown fox jumps over the lazy dog.",
            "A journey of a thousand miles begins with a single step.",
            "To be, or not to be, that is the question.",
            "Reinforcement learning fine-tunes language models with rewards: 1 + 2 = 3.",
            "Naïve café owners serve crème brûlée — très bien! 🎉",
        ]
        .iter()
        .cycle()
        .take(50)
        .map(|s| s.to_string())
        .collect()
    }

    fn trained() -> Tokenizer {
        Tokenizer::train_bpe(
            corpus(),
            400,
            &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        )
        .expect("train")
    }

    #[test]
    fn trained_bpe_round_trips_text() {
        let tok = trained();
        assert!(
            tok.vocab_size() > 259 && tok.vocab_size() <= 400,
            "{}",
            tok.vocab_size()
        );
        assert_eq!(tok.token_id("<|endoftext|>"), Some(0));
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.pad_id(), Some(0));
        assert_eq!(tok.eos_ids(), &[0, 2]);
        for text in corpus()
            .iter()
            .take(5)
            .map(String::as_str)
            .chain(["unseen ✓ text\n\twith tabs", ""])
        {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
        // Merges were learned: a frequent word takes fewer tokens than bytes.
        assert!(tok.encode(" the", false).unwrap().len() < 4);
        let ids = tok.encode("<|im_start|>user", false).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(tok.decode(&ids, true).unwrap(), "user");
        assert!(Tokenizer::train_bpe(corpus(), 100, &[]).is_err());
    }

    #[test]
    fn save_then_from_dir_gives_identical_ids() {
        let mut tok = trained();
        tok.set_chat_template(Some(
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}".into(),
        ));
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        let loaded = Tokenizer::from_dir(dir.path()).unwrap();
        for text in corpus().iter().take(5) {
            assert_eq!(
                loaded.encode(text, true).unwrap(),
                tok.encode(text, true).unwrap()
            );
        }
        assert_eq!(loaded.vocab_size(), tok.vocab_size());
        assert_eq!(loaded.bos_id(), tok.bos_id());
        assert_eq!(loaded.eos_ids(), tok.eos_ids());
        assert_eq!(loaded.pad_id(), tok.pad_id());
        assert_eq!(loaded.chat_template(), tok.chat_template());
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["eos_token"], "<|endoftext|>");
        assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    }

    #[test]
    fn from_dir_reads_hf_config_variants() {
        let dir = tempfile::tempdir().unwrap();
        trained().save(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<|im_start|>", "special": true}, "eos_token": "<|im_end|>",
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [2, 0]}"#,
        )
        .unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.eos_ids(), &[2, 0]);
        assert_eq!(tok.pad_id(), None);
        assert_eq!(tok.chat_template(), Some("D"));
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        assert_eq!(
            Tokenizer::from_dir(dir.path()).unwrap().chat_template(),
            Some("J")
        );
    }

    #[test]
    fn malformed_files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 42").unwrap();
        let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join("tokenizer.json").display().to_string()),
            "{err}"
        );
        trained().save(dir.path()).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), "not json").unwrap();
        let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer_config.json"), "{err}");
    }

    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_templates() {
        let mut tok = trained();
        let messages = [
            ChatMessage::user("Hi!"),
            ChatMessage::assistant("Hello."),
            ChatMessage::user("2+2?"),
        ];
        // Default ChatML when the model has none.
        assert_eq!(tok.chat_template(), None);
        assert_eq!(
            tok.apply_chat_template(&messages[..1], true).unwrap(),
            "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            tok.apply_chat_template(&messages[..1], false).unwrap(),
            "<|im_start|>user\nHi!<|im_end|>\n"
        );

        tok.set_chat_template(Some(SMOLLM2_TEMPLATE.to_string()));
        let text = tok.apply_chat_template(&messages, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n\
             <|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        // The rendered special tokens encode as single ids.
        let ids = tok.encode(&text, false).unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 5);
    }

    #[test]
    fn templates_get_hf_helpers() {
        let mut tok = trained();
        tok.set_chat_template(Some(
            "{% if messages[0].role != 'system' %}{{ raise_exception('need a system message') }}{% endif %}\
             {{ bos_token }}{{ messages[0].content.strip() | upper }}|{{ messages[1].content.split(',') | join('+') }}|{{ ' x  y z '.split(none, 1) | join('+') }}|\
             {{ {'a': [1, 'é']} | tojson }}|{{ {'k': 1}.get('x', 'dflt') }}{% for k, v in {'z': 2}.items() %}{{ k }}{{ v }}{% endfor %}"
                .into(),
        ));
        let ok = [
            ChatMessage::system("  be brief \n"),
            ChatMessage::user("a,b"),
        ];
        assert_eq!(
            tok.apply_chat_template(&ok, false).unwrap(),
            "<|endoftext|>BE BRIEF|a+b|x+y z |{\"a\": [1, \"é\"]}|dfltz2"
        );
        let err = tok
            .apply_chat_template(&ok[1..], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("need a system message"), "{err}");
        tok.set_chat_template(Some("{% for %}".into()));
        assert!(matches!(
            tok.apply_chat_template(&ok, false),
            Err(TokenizerError::Template { .. })
        ));
    }

    #[test]
    fn strftime_formats_dates() {
        // 2024-07-26 13:25:09 UTC was a Friday.
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %A %%", 1_722_000_309),
            "26 Jul 2024 13:25:09 Friday %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
    }

    /// A tiny GGUF vocabulary exercising BOS insertion, token types and the llama3 split.
    fn tiny_gguf(pre: &str, with_types: bool) -> tempfile::NamedTempFile {
        let mut w = crate::engine::model::gguf::test_writer::Writer::new();
        let tokens = [
            "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "12", "<tool>",
        ];
        w.kv_str("tokenizer.ggml.model", "gpt2")
            .kv_str("tokenizer.ggml.pre", pre)
            .kv_str_array("tokenizer.ggml.tokens", &tokens)
            .kv_str_array("tokenizer.ggml.merges", &["a b", "Ġ ab", "1 2"])
            .kv_u32("tokenizer.ggml.bos_token_id", 0)
            .kv_u32("tokenizer.ggml.eos_token_id", 1)
            .kv_bool("tokenizer.ggml.add_bos_token", true);
        if with_types {
            w.kv_i32_array(
                "tokenizer.ggml.token_type",
                &[3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4],
            );
        }
        w.write()
    }

    #[test]
    fn gguf_tokenizer_settings_are_honoured() {
        let tmp = tiny_gguf("llama-bpe", true);
        let tok = Tokenizer::from_gguf(&GgufFile::open(tmp.path()).unwrap()).unwrap();
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.eos_ids(), &[1]);
        // add_bos_token puts BOS first; the user-defined token is matched whole.
        assert_eq!(
            tok.encode("ab ab<tool>12", true).unwrap(),
            vec![0, 4, 6, 10, 9]
        );
        assert_eq!(tok.encode("ab ab", false).unwrap(), vec![4, 6]);
        assert_eq!(tok.decode(&[0, 4, 6, 1], true).unwrap(), "ab ab");
        // "smollm" splits digits one by one before merging.
        let tmp = tiny_gguf("smollm", false);
        let tok = Tokenizer::from_gguf(&GgufFile::open(tmp.path()).unwrap()).unwrap();
        assert_eq!(tok.encode("12", false).unwrap(), vec![7, 8]);
        assert_eq!(tok.encode("</s>", false).unwrap(), vec![1]);
        assert!(regex_then_bytes(QWEN2_REGEX).is_ok());
        // A tokenizer model rlft does not build (WordPiece) is refused with the file named;
        // a SentencePiece one without its pieces names the missing key.
        let mut w = crate::engine::model::gguf::test_writer::Writer::new();
        w.kv_str("tokenizer.ggml.model", "bert");
        let tmp = w.write();
        let err = Tokenizer::from_gguf(&GgufFile::open(tmp.path()).unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`bert`") && msg.contains(&tmp.path().display().to_string()),
            "{msg}"
        );
        let mut w = crate::engine::model::gguf::test_writer::Writer::new();
        w.kv_str("tokenizer.ggml.model", "llama");
        let tmp = w.write();
        let err = Tokenizer::from_gguf(&GgufFile::open(tmp.path()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
    }

    fn smollm2() -> Option<GgufFile> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.exists() {
            eprintln!("\n*** SKIPPED: {} not found ***\n", path.display());
            return None;
        }
        Some(GgufFile::open(&path).expect("open SmolLM2 GGUF"))
    }

    #[test]
    fn smollm2_gguf_tokenizer_facts() {
        let Some(gguf) = smollm2() else { return };
        let tok = Tokenizer::from_gguf(&gguf).unwrap();
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!(tok.token_id("<|im_start|>"), Some(1));
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.eos_ids(), &[2, 0]);
        assert_eq!(tok.pad_id(), Some(2));
        assert_eq!(tok.encode("<|im_start|>user", false).unwrap()[0], 1);
        for text in [
            "Hello, world! 12345 ×÷ 🎉\n\n  code()",
            "The year 2024.",
            "",
        ] {
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
        // Digits are split one per token.
        assert_eq!(tok.encode("12345", false).unwrap().len(), 5);
        let chat = tok
            .apply_chat_template(&[ChatMessage::user("Hi")], true)
            .unwrap();
        assert!(
            chat.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        );
        assert!(chat.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }

    /// Token ids, decodes and chat renderings that transformers produced from the same GGUF
    /// (tests/fixtures/smollm2_parity.json).
    #[test]
    fn smollm2_matches_transformers_fixture() {
        let Some(gguf) = smollm2() else { return };
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_parity.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("\n*** SKIPPED: {} not found ***\n", path.display());
            return;
        };
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let tok = Tokenizer::from_gguf(&gguf).unwrap();
        let cases = fixture["tokenization"].as_array().unwrap();
        assert!(!cases.is_empty());
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tok.encode(text, true).unwrap(), ids, "ids of {text:?}");
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{text:?}"
            );
            let skipped = case["decoded_skip_special"].as_str().unwrap();
            assert_eq!(tok.decode(&ids, true).unwrap(), skipped, "{text:?}");
        }
        let chat = &fixture["chat"];
        assert_eq!(tok.chat_template(), chat["chat_template"].as_str());
        for case in chat["cases"].as_array().unwrap() {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(case["messages"].clone()).unwrap();
            let prompt = case["add_generation_prompt"].as_bool().unwrap();
            let text = tok.apply_chat_template(&messages, prompt).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{}", case["name"]);
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tok.encode(&text, true).unwrap(), ids, "{}", case["name"]);
        }
        let info = &fixture["tokenizer_info"];
        assert_eq!(tok.vocab_size() as u64, info["len"].as_u64().unwrap());
        assert_eq!(tok.bos_id().map(u64::from), info["bos_token_id"].as_u64());
        assert_eq!(
            tok.eos_ids()[0] as u64,
            info["eos_token_id"].as_u64().unwrap()
        );
        assert_eq!(tok.pad_id().map(u64::from), info["pad_token_id"].as_u64());
        for added in info["added_tokens"].as_array().unwrap() {
            let content = added["content"].as_str().unwrap();
            assert_eq!(
                tok.token_id(content).map(u64::from),
                added["id"].as_u64(),
                "{content}"
            );
            assert!(
                tok.inner().get_added_vocabulary().is_special_token(content),
                "{content}"
            );
        }
    }
}
