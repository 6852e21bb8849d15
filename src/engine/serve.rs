//! `rlft serve`: an OpenAI-compatible HTTP server for any model rlft loads (a Hugging Face
//! folder or a `.gguf` file), so OpenAI clients, and the `openai` judge, can talk to it.
//!
//! Endpoints:
//! - `GET /v1/models`: the one model served (`GET /v1/models/{id}` too);
//! - `POST /v1/chat/completions`: `messages`, `max_tokens` / `max_completion_tokens`,
//!   `temperature`, `top_p`, `stop` (a string or a list), `seed`, `stream` (Server-Sent Events
//!   of `chat.completion.chunk` objects, ending with `data: [DONE]`) and
//!   `stream_options.include_usage`; other fields are ignored, `n` other than 1 is refused.
//!
//! Errors are OpenAI-shaped: `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx
//! status. One worker thread owns the model and generates for one request at a time; HTTP
//! handler threads parse requests, tokenize, queue jobs to it and stream its tokens back.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use burn::prelude::Device;
use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value, json};
use thiserror::Error;

use crate::engine::model::tokenizer::{ChatMessage, Tokenizer};
use crate::engine::model::{self, Heads, LoadedModel, ModelError, WeightDtype};
use crate::engine::sample::{FinishReason, Generation, SamplingParams, SingleSequence};

/// HTTP handler threads: requests beyond this many wait in the listener's queue.
const HANDLER_THREADS: usize = 8;
/// Largest request body read.
const MAX_BODY_BYTES: u64 = 8 << 20;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{}: the model has no tokenizer (tokenizer.json) to serve it with", path.display())]
    NoTokenizer { path: PathBuf },
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
}

/// Where and under which name to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port ([`Server::addr`] tells which).
    pub port: u16,
    /// The model id clients see; default: the model's file or folder name.
    pub name: Option<String>,
    /// A PEFT LoRA adapter merged into the model before serving.
    pub adapter: Option<std::path::PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            adapter: None,
            name: None,
        }
    }
}

/// The model id for a path: its file or folder name.
pub fn default_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "model".into())
}

/// A running server. Dropping it (or [`Server::shutdown`]) stops it.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    name: String,
    stop: Arc<AtomicBool>,
    handlers: Vec<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

/// What handler threads share.
struct Shared {
    name: String,
    created: u64,
    tokenizer: Arc<Tokenizer>,
    max_positions: usize,
    jobs: Sender<Job>,
    next_id: AtomicU64,
}

/// One generation request for the worker.
struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    stream: bool,
    reply: Sender<Msg>,
}

/// What the worker sends back for a job.
enum Msg {
    /// New text (streaming only).
    Delta(String),
    Done(Result<Finished, String>),
}

struct Finished {
    text: String,
    finish: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Server {
    /// Loads the model at `path` on `device` and starts serving it.
    pub fn start(path: &Path, device: &Device, opts: &ServeOptions) -> Result<Self, ServeError> {
        let loaded = model::load_for_inference(
            path,
            opts.adapter.as_deref(),
            device,
            Heads::Lm,
            WeightDtype::F32,
        )?;
        let name = opts.name.clone().unwrap_or_else(|| default_name(path));
        if loaded.tokenizer.is_none() {
            return Err(ServeError::NoTokenizer { path: path.into() });
        }
        Self::from_loaded(loaded, &name, &opts.host, opts.port)
    }

    /// Serves an already loaded model (with a tokenizer) as `name`.
    pub fn from_loaded(
        loaded: LoadedModel,
        name: &str,
        host: &str,
        port: u16,
    ) -> Result<Self, ServeError> {
        let LoadedModel {
            config,
            model,
            tokenizer,
            ..
        } = loaded;
        let tokenizer = Arc::new(tokenizer.ok_or_else(|| ServeError::NoTokenizer {
            path: PathBuf::from(name),
        })?);
        let bind = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let http = tiny_http::Server::http(bind.as_str()).map_err(|e| ServeError::Bind {
            addr: bind.clone(),
            message: e.to_string(),
        })?;
        let addr = http.server_addr().to_ip().ok_or_else(|| ServeError::Bind {
            addr: bind.clone(),
            message: "not an IP address".into(),
        })?;
        let http = Arc::new(http);

        let mut eos = tokenizer.eos_ids().to_vec();
        eos.extend(config.eos_ids());
        let pad = tokenizer.pad_id().or(eos.first().copied()).unwrap_or(0);
        let max_positions = config.max_position_embeddings;
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let worker = {
            let tokenizer = tokenizer.clone();
            std::thread::Builder::new()
                .name("rlft-serve-worker".into())
                .spawn(move || {
                    let engine = Engine {
                        model: SingleSequence::new(model),
                        tokenizer,
                        eos,
                        pad,
                        max_positions,
                    };
                    engine.run(queue);
                })
                .map_err(|e| ServeError::Bind {
                    addr: bind.clone(),
                    message: format!("cannot start the worker thread: {e}"),
                })?
        };

        let shared = Arc::new(Shared {
            name: name.to_string(),
            created: unix_secs(),
            tokenizer,
            max_positions,
            jobs,
            next_id: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut handlers = Vec::with_capacity(HANDLER_THREADS);
        for i in 0..HANDLER_THREADS {
            let (http, shared, flag) = (http.clone(), shared.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("rlft-serve-http-{i}"))
                .spawn(move || handler_loop(&http, &shared, &flag));
            match spawned {
                Ok(h) => handlers.push(h),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(ServeError::Bind {
                        addr: bind,
                        message: format!("cannot start a handler thread: {e}"),
                    });
                }
            }
        }
        Ok(Self {
            http,
            addr,
            name: name.to_string(),
            stop,
            handlers,
            worker: Some(worker),
        })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The model id clients see.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The API base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Blocks until the server stops (it does not stop on its own).
    pub fn wait(mut self) {
        for h in self.handlers.drain(..) {
            let _ = h.join();
        }
    }

    /// Stops accepting requests, lets handlers finish, and waits for the worker.
    pub fn shutdown(mut self) {
        self.stop_threads();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.handlers.len() {
            self.http.unblock();
        }
        for h in self.handlers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The worker exits once the handlers (the job senders) are gone.
        self.stop_threads();
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ------------------------------------------------------------------------------------------
// The worker: owns the model, generates one job at a time.

struct Engine {
    model: SingleSequence,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    pad: u32,
    max_positions: usize,
}

impl Engine {
    fn run(&self, queue: Receiver<Job>) {
        for job in queue.iter() {
            let result = catch_unwind(AssertUnwindSafe(|| self.generate(&job)))
                .unwrap_or_else(|_| Err("generation failed (the engine panicked)".into()));
            let _ = job.reply.send(Msg::Done(result));
        }
    }

    fn generate(&self, job: &Job) -> Result<Finished, String> {
        let stops = job.params.stop_strings.clone();
        let mut stream = TextStream::new(stops.clone());
        let tokenizer = &*self.tokenizer;
        let mut on_token = |g: &Generation| -> bool {
            if !job.stream {
                return true;
            }
            let Ok(text) = tokenizer.decode(&g.tokens, true) else {
                return true;
            };
            match stream.push(&text) {
                // A send fails when the client went away: stop generating for it.
                Some(delta) => job.reply.send(Msg::Delta(delta)).is_ok(),
                None => true,
            }
        };
        let g = self.model.generate(
            &job.prompt,
            &job.params,
            &self.eos,
            self.pad,
            Some(tokenizer),
            self.max_positions,
            &mut on_token,
        );
        let full = tokenizer
            .decode(&g.tokens, true)
            .map_err(|e| e.to_string())?;
        let (text, hit_stop) = cut_at_stop(&full, &stops);
        let finish = match g.finish {
            _ if hit_stop => "stop",
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        };
        if job.stream
            && let Some(rest) = stream.finish(text)
        {
            let _ = job.reply.send(Msg::Delta(rest));
        }
        Ok(Finished {
            text: text.to_string(),
            finish,
            prompt_tokens: job.prompt.len(),
            completion_tokens: g.tokens.len(),
        })
    }
}

/// The text before the first stop string, and whether one was found.
fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> (&'a str, bool) {
    let first = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match first {
        Some(i) => (&text[..i], true),
        None => (text, false),
    }
}

/// Turns the growing decoded text into deltas for streaming: holds back what could still turn
/// into a stop string and incomplete UTF-8 (U+FFFD at the end), so the deltas add up to the
/// final, stop-truncated text.
struct TextStream {
    stops: Vec<String>,
    sent: String,
}

impl TextStream {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            sent: String::new(),
        }
    }

    fn push(&mut self, text: &str) -> Option<String> {
        let (text, hit) = cut_at_stop(text, &self.stops);
        let mut end = text.len();
        if !hit {
            // The longest end of `text` that begins some stop string.
            let hold = self
                .stops
                .iter()
                .filter_map(|s| {
                    (1..s.len())
                        .rev()
                        .find(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k]))
                })
                .max()
                .unwrap_or(0);
            end -= hold;
        }
        let mut safe = &text[..end];
        safe = safe.trim_end_matches('\u{FFFD}');
        self.emit(safe)
    }

    fn finish(&mut self, text: &str) -> Option<String> {
        self.emit(text)
    }

    fn emit(&mut self, upto: &str) -> Option<String> {
        if upto.len() <= self.sent.len() || !upto.starts_with(self.sent.as_str()) {
            return None;
        }
        let delta = upto[self.sent.len()..].to_string();
        self.sent.push_str(&delta);
        Some(delta)
    }
}

// ------------------------------------------------------------------------------------------
// HTTP handling.

fn handler_loop(http: &tiny_http::Server, shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match http.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => {
                // One access line per request, as web servers log: who, what, status, time.
                let peer = request
                    .remote_addr()
                    .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
                let what = format!("{} {}", request.method(), request.url());
                let started = std::time::Instant::now();
                RESPONSE_STATUS.with(|s| s.set(0));
                // A bug must not take a handler thread down with it.
                let outcome = catch_unwind(AssertUnwindSafe(|| handle(request, shared)));
                let status = match outcome {
                    Ok(()) => RESPONSE_STATUS.with(|s| s.get()).to_string(),
                    Err(_) => "panic".to_string(),
                };
                eprintln!(
                    "{peer} \"{what}\" {status} {:.0} ms",
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            Ok(None) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// An OpenAI-style error response.
#[derive(Debug)]
struct ApiError {
    status: u16,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
    /// The methods a 405 names in its `Allow` header.
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            allow: None,
        }
    }

    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            param,
            ..Self::new(400, "invalid_request_error", message)
        }
    }

    fn server(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message)
    }

    fn code(self, code: &'static str) -> Self {
        Self {
            code: Some(code),
            ..self
        }
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

thread_local! {
    /// The status of the response this handler thread sent last, for the access log.
    static RESPONSE_STATUS: std::cell::Cell<u16> = const { std::cell::Cell::new(0) };
}

fn note_status(status: u16) {
    RESPONSE_STATUS.with(|s| s.set(status));
}

fn json_header() -> tiny_http::Header {
    tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("a valid header")
}

fn respond_json(request: tiny_http::Request, status: u16, body: &Value) {
    note_status(status);
    let response = tiny_http::Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(json_header());
    let _ = request.respond(response);
}

fn respond_error(request: tiny_http::Request, e: &ApiError) {
    note_status(e.status);
    let mut response = tiny_http::Response::from_string(e.body().to_string())
        .with_status_code(e.status)
        .with_header(json_header());
    if let Some(allow) = e.allow
        && let Ok(h) = tiny_http::Header::from_bytes(&b"Allow"[..], allow.as_bytes())
    {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}

fn handle(mut request: tiny_http::Request, shared: &Shared) {
    let method = request.method().clone();
    let url = request.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or("");
    let path = path.strip_suffix('/').unwrap_or(path);
    let models_item = path.strip_prefix("/v1/models/").filter(|id| !id.is_empty());
    let allowed = match path {
        "/v1/models" | "/models" | "/health" => "GET",
        "/v1/chat/completions" | "/chat/completions" => "POST",
        _ if models_item.is_some() => "GET",
        _ => {
            let message = format!(
                "unknown path: {method} {path} (this server has GET /v1/models and \
                 POST /v1/chat/completions)"
            );
            let e = ApiError::new(404, "invalid_request_error", message).code("not_found");
            return respond_error(request, &e);
        }
    };
    if method.as_str() != allowed {
        let message = format!("{method} is not allowed on {path}; use {allowed}");
        let e = ApiError {
            allow: Some(allowed),
            ..ApiError::new(405, "invalid_request_error", message).code("method_not_allowed")
        };
        return respond_error(request, &e);
    }
    match path {
        "/health" => respond_json(request, 200, &json!({"status": "ok"})),
        "/v1/models" | "/models" => {
            let body = json!({"object": "list", "data": [model_object(shared)]});
            respond_json(request, 200, &body);
        }
        "/v1/chat/completions" | "/chat/completions" => {
            let parsed = read_body(&mut request).and_then(|body| parse_request(&body, shared));
            match parsed {
                Ok(req) => chat_completion(request, shared, req),
                Err(e) => respond_error(request, &e),
            }
        }
        _ => match models_item {
            Some(id) if id == shared.name => respond_json(request, 200, &model_object(shared)),
            Some(id) => {
                let message = format!(
                    "the model `{id}` does not exist; this server has `{}`",
                    shared.name
                );
                let e = ApiError {
                    param: Some("model"),
                    ..ApiError::new(404, "invalid_request_error", message).code("model_not_found")
                };
                respond_error(request, &e);
            }
            None => respond_error(request, &ApiError::server("unrouted path")),
        },
    }
}

fn model_object(shared: &Shared) -> Value {
    json!({"id": shared.name, "object": "model", "created": shared.created, "owned_by": "rlft"})
}

fn read_body(request: &mut tiny_http::Request) -> Result<Value, ApiError> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}"), None))?;
    if body.len() as u64 > MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "invalid_request_error",
            format!("the request body is over {MAX_BODY_BYTES} bytes"),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty; expected a JSON object with `messages`",
            None,
        ));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "the request body must be a JSON object with `messages`",
            None,
        ));
    }
    Ok(value)
}

/// A validated chat-completion request.
#[derive(Debug)]
struct ChatRequest {
    prompt: Vec<u32>,
    params: SamplingParams,
    stream: bool,
    include_usage: bool,
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let p = Some("messages");
    let items = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("missing required field `messages`", p));
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("`messages` must be an array", p)),
    };
    if items.is_empty() {
        return Err(ApiError::invalid("`messages` must not be empty", p));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(ApiError::invalid(
                format!("`messages[{i}]` must be an object"),
                p,
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) if CHAT_ROLES.contains(&r.as_str()) => r.clone(),
            Some(Value::String(r)) if !r.is_empty() => {
                return Err(ApiError::invalid(
                    format!(
                        "`messages[{i}].role` is {r:?}; it must be one of {}",
                        CHAT_ROLES.join(", ")
                    ),
                    p,
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("`messages[{i}].role` must be a non-empty string"),
                    p,
                ));
            }
        };
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                format!(
                                    "`messages[{i}].content[{j}]`: only text parts \
                                     ({{\"type\": \"text\", \"text\": ...}}) are supported"
                                ),
                                p,
                            ));
                        }
                    }
                }
                text
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("`messages[{i}].content` must be a string or a list of text parts"),
                    p,
                ));
            }
        };
        out.push(ChatMessage { role, content });
    }
    Ok(out)
}

/// The message roles chat templates know (OpenAI's, less the deprecated `function`).
const CHAT_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

fn number(
    body: &Value,
    key: &'static str,
    default: f32,
    range: std::ops::RangeInclusive<f32>,
) -> Result<f32, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN) as f32;
            if range.contains(&x) {
                Ok(x)
            } else {
                Err(ApiError::invalid(
                    format!(
                        "`{key}` must be between {} and {}, got {n}",
                        range.start(),
                        range.end()
                    ),
                    Some(key),
                ))
            }
        }
        Some(_) => Err(ApiError::invalid(
            format!("`{key}` must be a number"),
            Some(key),
        )),
    }
}

fn parse_request(body: &Value, shared: &Shared) -> Result<ChatRequest, ApiError> {
    let messages = parse_messages(body.get("messages"))?;
    let max_tokens = match ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|k| body.get(k).filter(|v| !v.is_null()).map(|v| (k, v)))
    {
        None => None,
        Some((k, v)) => match v.as_u64() {
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => {
                return Err(ApiError::invalid(
                    format!("`{k}` must be an integer of at least 1"),
                    Some(if k == "max_tokens" {
                        "max_tokens"
                    } else {
                        "max_completion_tokens"
                    }),
                ));
            }
        },
    };
    let temperature = number(body, "temperature", 1.0, 0.0..=2.0)?;
    let top_p = number(body, "top_p", 1.0, 0.0..=1.0)?;
    let stop_strings = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    _ => {
                        return Err(ApiError::invalid(
                            "`stop` must be a string or a list of strings",
                            Some("stop"),
                        ));
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`stop` must be a string or a list of strings",
                Some("stop"),
            ));
        }
    };
    let stop_strings: Vec<String> = stop_strings.into_iter().filter(|s| !s.is_empty()).collect();
    let seed = match body.get("seed") {
        None | Some(Value::Null) => {
            // Unseeded requests differ from each other, as OpenAI's do.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ shared.next_id.load(Ordering::Relaxed).rotate_left(32)
        }
        Some(Value::Number(n)) if n.as_i64().is_some() || n.as_u64().is_some() => {
            n.as_u64().unwrap_or_else(|| n.as_i64().unwrap_or(0) as u64)
        }
        Some(_) => return Err(ApiError::invalid("`seed` must be an integer", Some("seed"))),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "`stream` must be a boolean",
                Some("stream"),
            ));
        }
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(ApiError::invalid("only `n` = 1 is supported", Some("n")));
        }
    }

    let text = shared
        .tokenizer
        .apply_chat_template(&messages, true)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    let prompt = shared
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::server(e.to_string()))?;
    if prompt.len() >= shared.max_positions {
        let message = format!(
            "the prompt is {} tokens; this model's context is {} tokens",
            prompt.len(),
            shared.max_positions
        );
        return Err(ApiError::invalid(message, Some("messages")).code("context_length_exceeded"));
    }
    let room = shared.max_positions - prompt.len();
    Ok(ChatRequest {
        prompt,
        params: SamplingParams {
            max_new_tokens: max_tokens.unwrap_or(room).min(room),
            temperature,
            top_k: 0,
            top_p,
            stop_strings,
            seed,
        },
        stream,
        include_usage,
    })
}

fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

fn chat_completion(request: tiny_http::Request, shared: &Shared, req: ChatRequest) {
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("chatcmpl-{:x}{n:x}", unix_secs());
    let created = unix_secs();
    let (reply, replies) = crossbeam_channel::unbounded();
    let job = Job {
        prompt: req.prompt,
        params: req.params,
        stream: req.stream,
        reply,
    };
    if shared.jobs.send(job).is_err() {
        let e = ApiError::new(503, "server_error", "the model worker has stopped");
        return respond_error(request, &e);
    }
    if req.stream {
        return stream_completion(request, shared, &id, created, req.include_usage, &replies);
    }
    let finished = loop {
        match replies.recv() {
            Ok(Msg::Delta(_)) => {}
            Ok(Msg::Done(r)) => break r,
            Err(_) => break Err("the model worker has stopped".into()),
        }
    };
    match finished {
        Ok(f) => {
            let body = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": shared.name,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": f.text},
                    "logprobs": null,
                    "finish_reason": f.finish,
                }],
                "usage": usage(&f),
            });
            respond_json(request, 200, &body);
        }
        Err(message) => respond_error(request, &ApiError::server(message)),
    }
}

/// Writes a Server-Sent Events response by hand (chunked, flushed per event), so each token
/// reaches the client as it is produced.
fn stream_completion(
    request: tiny_http::Request,
    shared: &Shared,
    id: &str,
    created: u64,
    include_usage: bool,
    replies: &Receiver<Msg>,
) {
    note_status(200);
    let mut out = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": shared.name,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    // A failed write means the client went away; dropping `replies` then stops the worker.
    if send_event(
        &mut out,
        &chunk(json!({"role": "assistant", "content": ""}), None),
    )
    .is_err()
    {
        return;
    }
    let finished = loop {
        match replies.recv() {
            Ok(Msg::Delta(text)) => {
                if send_event(&mut out, &chunk(json!({"content": text}), None)).is_err() {
                    return;
                }
            }
            Ok(Msg::Done(r)) => break r,
            Err(_) => break Err("the model worker has stopped".to_string()),
        }
    };
    let sent = match finished {
        Ok(f) => send_event(&mut out, &chunk(json!({}), Some(f.finish))).and_then(|()| {
            if include_usage {
                let last = json!({
                    "id": id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": shared.name,
                    "choices": [],
                    "usage": usage(&f),
                });
                send_event(&mut out, &last)
            } else {
                Ok(())
            }
        }),
        Err(message) => send_event(&mut out, &ApiError::server(message).body()),
    };
    if sent.is_ok() && send_chunk(&mut out, b"data: [DONE]\n\n").is_ok() {
        let _ = out.write_all(b"0\r\n\r\n").and_then(|()| out.flush());
    }
}

fn send_event(out: &mut dyn Write, value: &Value) -> std::io::Result<()> {
    send_chunk(out, format!("data: {value}\n\n").as_bytes())
}

/// One HTTP chunk, flushed.
fn send_chunk(out: &mut dyn Write, data: &[u8]) -> std::io::Result<()> {
    write!(out, "{:x}\r\n", data.len())?;
    out.write_all(data)?;
    out.write_all(b"\r\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_the_text() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(cut_at_stop("abc END x\n\n", &stops), ("abc ", true));
        assert_eq!(cut_at_stop("abc", &stops), ("abc", false));
    }

    #[test]
    fn streamed_deltas_add_up_to_the_truncated_text() {
        let mut s = TextStream::new(vec!["STOP".into()]);
        let mut got = String::new();
        for text in [
            "He",
            "Hello S",
            "Hello ST",
            "Hello Sun",
            "Hello Sun \u{FFFD}",
            "Hello Sun é",
            "Hello Sun é STO",
            "Hello Sun é STOP and more",
        ] {
            if let Some(d) = s.push(text) {
                assert!(
                    !d.contains('S') || d.contains("Sun"),
                    "held back a stop prefix: {d:?}"
                );
                got.push_str(&d);
            }
        }
        if let Some(d) = s.finish("Hello Sun é ") {
            got.push_str(&d);
        }
        assert_eq!(got, "Hello Sun é ");
    }

    #[test]
    fn messages_are_validated_with_the_field_named() {
        let e = parse_messages(None).unwrap_err();
        assert_eq!((e.status, e.param), (400, Some("messages")));
        assert!(e.message.contains("messages"));
        let e = parse_messages(Some(&json!([{"content": "hi"}]))).unwrap_err();
        assert!(e.message.contains("messages[0].role"), "{}", e.message);
        let m = parse_messages(Some(&json!([
            {"role": "system", "content": null},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ])))
        .unwrap();
        assert_eq!(m[1].content, "ab");
        assert_eq!(m[0].content, "");
        // A role chat templates do not know is a 400 naming the field and the roles allowed.
        let e = parse_messages(Some(&json!([{"role": "wizard", "content": "hi"}]))).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("messages[0].role") && e.message.contains("system, user"),
            "{}",
            e.message
        );
        assert!(parse_messages(Some(&json!([{"role": "tool", "content": "42"}]))).is_ok());
    }
}
