//! A judge behind any OpenAI-compatible chat-completions endpoint: OpenAI itself, vLLM,
//! llama.cpp's server, or `rlft serve`.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Comparison, Judge, JudgeError, OpenAiJudgeConfig, OrderedVerdict, judge_prompt};

/// Enough for "1", "2", "tie" or a short sentence around them.
const MAX_TOKENS: u32 = 8;
/// Comparisons asked at once (remote APIs answer in parallel; `rlft serve` queues them).
const CONCURRENCY: usize = 4;
/// How much of a reply a `BadReply` error quotes.
const HEAD_CHARS: usize = 200;

/// An API key that never prints.
#[derive(Clone)]
struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Asks one chat completion per ordered comparison: a single user message with
/// [`judge_prompt`], temperature 0, a few tokens; the reply is read with
/// [`super::parse_verdict`].
///
/// Connection errors, timeouts, HTTP 429 and 5xx are retried up to `max_retries` times with
/// exponential backoff (0.5 s, 1 s, 2 s, ...). Each comparison succeeds or fails on its own.
#[derive(Debug)]
pub struct OpenAiJudge {
    name: String,
    url: String,
    model: String,
    key: Option<ApiKey>,
    timeout: Duration,
    max_retries: u32,
    agent: AgentDebug,
}

/// `ureq::Agent` has no `Debug`.
struct AgentDebug(ureq::Agent);

impl fmt::Debug for AgentDebug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Agent")
    }
}

/// How one attempt went.
enum Attempt {
    Done(Result<OrderedVerdict, JudgeError>),
    /// Worth retrying; the error to report if no retry is left.
    Retry(JudgeError),
}

impl OpenAiJudge {
    pub fn new(cfg: &OpenAiJudgeConfig) -> Result<Self, JudgeError> {
        let base = cfg.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(JudgeError::Config(format!(
                "openai `base_url` must start with http:// or https://, got {:?}",
                cfg.base_url
            )));
        }
        if cfg.model.trim().is_empty() {
            return Err(JudgeError::Config("openai `model` is empty".into()));
        }
        if !(cfg.timeout_secs.is_finite() && cfg.timeout_secs > 0.0) {
            return Err(JudgeError::Config(format!(
                "openai `timeout_secs` must be positive, got {}",
                cfg.timeout_secs
            )));
        }
        let key = match cfg.api_key_env.as_deref() {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.trim().is_empty() => Some(ApiKey(k.trim().to_string())),
                _ => {
                    return Err(JudgeError::Config(format!(
                        "openai `api_key_env` names the environment variable {var}, \
                         which is not set (or empty)"
                    )));
                }
            },
        };
        let timeout = Duration::from_secs_f64(cfg.timeout_secs);
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(Self {
            name: format!("openai:{}", cfg.model),
            url: format!("{base}/chat/completions"),
            model: cfg.model.clone(),
            key,
            timeout,
            max_retries: cfg.max_retries,
            agent: AgentDebug(agent),
        })
    }

    /// Judges one comparison, retrying what is worth retrying.
    fn judge_one(&self, c: &Comparison) -> Result<OrderedVerdict, JudgeError> {
        let body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": judge_prompt(c)}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
            "stream": false,
        });
        let mut attempt = 0;
        loop {
            match self.attempt(&body) {
                Attempt::Done(r) => return r,
                Attempt::Retry(e) if attempt >= self.max_retries => return Err(e),
                Attempt::Retry(_) => {
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
            }
        }
    }

    fn attempt(&self, body: &Value) -> Attempt {
        let mut request = self.agent.0.post(&self.url);
        if let Some(key) = &self.key {
            request = request.header("Authorization", &format!("Bearer {}", key.0));
        }
        let started = Instant::now();
        let mut response = match request.send_json(body) {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(self.transport_error(&e, started)),
        };
        let status = response.status().as_u16();
        let text = match response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
        {
            Ok(t) => t,
            Err(e) => return Attempt::Retry(self.transport_error(&e, started)),
        };
        if status == 429 || status >= 500 {
            return Attempt::Retry(self.unavailable(format!(
                "HTTP {status}: {}",
                head(&error_message(&text).unwrap_or(text.clone()))
            )));
        }
        if !(200..300).contains(&status) {
            // 4xx: a wrong URL, model or key; retrying will not help.
            return Attempt::Done(Err(self.unavailable(format!(
                "HTTP {status}: {}",
                head(&error_message(&text).unwrap_or(text.clone()))
            ))));
        }
        Attempt::Done(parse_reply(&text).map_err(|head| JudgeError::BadReply {
            judge: self.name.clone(),
            head,
        }))
    }

    fn transport_error(&self, e: &ureq::Error, started: Instant) -> JudgeError {
        let timed_out = matches!(e, ureq::Error::Timeout(_))
            || matches!(e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut);
        if timed_out {
            return JudgeError::Timeout {
                judge: self.name.clone(),
                secs: self
                    .timeout
                    .as_secs_f64()
                    .max(started.elapsed().as_secs_f64()),
            };
        }
        self.unavailable(format!("{} ({e})", self.url))
    }

    /// An `Unavailable` error whose message cannot hold the key.
    fn unavailable(&self, message: String) -> JudgeError {
        JudgeError::Unavailable {
            judge: self.name.clone(),
            message: self.scrub(message),
        }
    }

    fn scrub(&self, text: String) -> String {
        match &self.key {
            Some(k) if text.contains(k.0.as_str()) => text.replace(k.0.as_str(), "<redacted>"),
            _ => text,
        }
    }
}

/// Delay before retry `attempt` (0-based): 0.5 s, 1 s, 2 s, ... capped at 8 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64 << attempt.min(4))
}

/// The start of a text, for error messages.
fn head(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(HEAD_CHARS) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

/// `error.message` of an OpenAI-style error body.
fn error_message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    Some(match e.get("message").and_then(Value::as_str) {
        Some(m) => m.to_string(),
        None => e.to_string(),
    })
}

/// The verdict in a chat-completion response body, or the start of what came back instead.
fn parse_reply(body: &str) -> Result<OrderedVerdict, String> {
    let v: Value = serde_json::from_str(body).map_err(|_| head(body))?;
    let content = v
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| head(body))?;
    match super::parse_verdict(content) {
        Some(verdict) => Ok(OrderedVerdict {
            verdict,
            p_first: None,
        }),
        None => Err(head(content)),
    }
}

impl Judge for OpenAiJudge {
    fn name(&self) -> &str {
        &self.name
    }

    fn compare(&mut self, batch: &[Comparison]) -> Vec<Result<OrderedVerdict, JudgeError>> {
        let this = &*self;
        let mut out = Vec::with_capacity(batch.len());
        for group in batch.chunks(CONCURRENCY) {
            if group.len() == 1 {
                out.push(this.judge_one(&group[0]));
                continue;
            }
            std::thread::scope(|s| {
                let handles: Vec<_> = group
                    .iter()
                    .map(|c| s.spawn(move || this.judge_one(c)))
                    .collect();
                for h in handles {
                    out.push(h.join().unwrap_or_else(|_| {
                        Err(JudgeError::Unavailable {
                            judge: this.name.clone(),
                            message: "the request thread panicked".into(),
                        })
                    }));
                }
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::judge::Ordered;

    fn completion(content: &str) -> String {
        json!({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
        })
        .to_string()
    }

    fn cfg() -> OpenAiJudgeConfig {
        OpenAiJudgeConfig {
            base_url: "http://127.0.0.1:9/v1/".into(),
            model: "m".into(),
            api_key_env: None,
            principle: "p".into(),
            timeout_secs: 1.0,
            max_retries: 0,
        }
    }

    #[test]
    fn replies_parse_to_verdicts() {
        assert_eq!(
            parse_reply(&completion("2")).unwrap().verdict,
            Ordered::Second
        );
        assert_eq!(
            parse_reply(&completion("Answer 1 is better."))
                .unwrap()
                .verdict,
            Ordered::First
        );
        assert_eq!(
            parse_reply(&completion(" tie")).unwrap().verdict,
            Ordered::Tie
        );
        assert_eq!(parse_reply(&completion("no idea")).unwrap_err(), "no idea");
        // Not JSON, or JSON without a message: the start of the body is quoted.
        assert_eq!(parse_reply("<html>oops").unwrap_err(), "<html>oops");
        assert!(
            parse_reply(r#"{"choices": []}"#)
                .unwrap_err()
                .contains("choices")
        );
        let long = "x".repeat(1000);
        assert_eq!(parse_reply(&long).unwrap_err().len(), HEAD_CHARS + 3);
    }

    #[test]
    fn error_bodies_and_backoff() {
        assert_eq!(
            error_message(r#"{"error": {"message": "bad key", "type": "auth"}}"#).as_deref(),
            Some("bad key")
        );
        assert_eq!(error_message("nope"), None);
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_millis(1000));
        assert_eq!(backoff(2), Duration::from_millis(2000));
    }

    #[test]
    fn config_errors_name_the_problem() {
        let j = OpenAiJudge::new(&cfg()).unwrap();
        assert_eq!(j.url, "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(j.name(), "openai:m");
        let mut c = cfg();
        c.api_key_env = Some("RLFT_TEST_SURELY_UNSET_KEY_VAR".into());
        let e = OpenAiJudge::new(&c).unwrap_err();
        assert!(matches!(e, JudgeError::Config(_)));
        assert!(
            e.to_string().contains("RLFT_TEST_SURELY_UNSET_KEY_VAR"),
            "{e}"
        );
        let mut c = cfg();
        c.base_url = "localhost:8080".into();
        assert!(OpenAiJudge::new(&c).is_err());
    }

    #[test]
    fn the_key_is_redacted() {
        let mut j = OpenAiJudge::new(&cfg()).unwrap();
        j.key = Some(ApiKey("sk-secret-123".into()));
        assert!(!format!("{j:?}").contains("sk-secret-123"));
        let e = j.unavailable("echoed sk-secret-123 back".into());
        assert!(!e.to_string().contains("sk-secret-123"));
        assert!(!format!("{e:?}").contains("sk-secret-123"));
    }

    #[test]
    fn an_unreachable_endpoint_fails_each_comparison() {
        // A port that was just free: a connection error, no retry.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = cfg();
        c.base_url = format!("http://127.0.0.1:{port}/v1");
        let mut j = OpenAiJudge::new(&c).unwrap();
        let c = Comparison {
            principle: "p",
            prompt: "q",
            first: "a",
            second: "b",
        };
        let out = j.compare(&[c, c]);
        assert_eq!(out.len(), 2);
        for r in out {
            assert!(
                matches!(
                    r,
                    Err(JudgeError::Unavailable { .. } | JudgeError::Timeout { .. })
                ),
                "{r:?}"
            );
        }
    }
}
