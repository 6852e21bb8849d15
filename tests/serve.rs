//! `rlft serve` over real HTTP on a tiny random model, and the `openai` judge against it and
//! against fake endpoints (a good reply, a slow one, a 500 then a good reply, garbage).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use burn::prelude::Device;
use serde_json::{Value, json};

use rlft::engine::judge::openai::OpenAiJudge;
use rlft::engine::judge::{
    Comparison, Judge, JudgeError, OpenAiJudgeConfig, Ordered, judge_prompt,
};
use rlft::engine::model::tokenizer::ChatMessage;
use rlft::engine::model::{self, Heads};
use rlft::engine::sample::{self, FinishReason, SamplingParams};
use rlft::engine::serve::{ServeOptions, Server};

const KEY_VAR: &str = "RLFT_SERVE_TEST_API_KEY";
const KEY: &str = "sk-test-VERY-SECRET-4242";

/// Sets the API key variable once, before any test of this binary does anything else.
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: every test calls this first, so no other thread of ours reads the environment
    // while it is written.
    ONCE.call_once(|| unsafe { std::env::set_var(KEY_VAR, KEY) });
}

/// The tiny model with a longer context (RoPE has no learned positions), so judge prompts fit.
fn tiny(dir: &Path) -> PathBuf {
    let path = common::tiny_model(dir);
    let cfg_path = path.join("config.json");
    let mut cfg = common::json(&cfg_path);
    cfg["max_position_embeddings"] = json!(1024);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    path
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

fn post(url: &str, body: &str) -> (u16, Value) {
    let mut r = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, v)
}

fn serve(path: &Path) -> Server {
    let opts = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        name: None,
        adapter: None,
    };
    Server::start(path, &Device::flex(), &opts).unwrap()
}

/// Streams `request`: the non-empty content deltas and the finish reason, after checking the
/// event framing (a role delta first, chunk objects, `[DONE]` last).
fn stream(url: &str, request: &Value) -> (Vec<String>, String) {
    let mut request = request.clone();
    request["stream"] = json!(true);
    let r = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(request.to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let content_type = r.headers().get("content-type").unwrap().to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let reader = BufReader::new(r.into_body().into_reader());
    let mut events = Vec::new();
    for line in reader.lines() {
        if let Some(data) = line.unwrap().strip_prefix("data: ") {
            events.push(data.to_string());
        }
    }
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = chunks.last().unwrap()["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_string();
    let deltas = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    (deltas, finish)
}

#[test]
fn serves_models_completions_streams_and_errors() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path());
    let server = serve(&path);
    assert_ne!(server.addr().port(), 0);
    let base = server.base_url();
    assert_eq!(server.name(), "tiny");

    // /v1/models
    let mut r = agent().get(&format!("{base}/models")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let models: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "tiny");

    // What the engine itself generates for the same chat-templated prompt.
    let loaded = model::load(&path, &Device::flex(), Heads::Lm).unwrap();
    let tok = loaded.tokenizer.as_ref().unwrap();
    assert!(
        tok.chat_template().is_some(),
        "the tiny model has a chat template"
    );
    let messages = [
        ChatMessage::system("You add numbers."),
        ChatMessage::user("12+35="),
    ];
    let text = tok.apply_chat_template(&messages, true).unwrap();
    let ids = tok.encode(&text, false).unwrap();
    let mut eos = tok.eos_ids().to_vec();
    eos.extend(loaded.config.eos_ids());
    let pad = tok.pad_id().or(eos.first().copied()).unwrap_or(0);
    // (text before any stop string, finish_reason, completion tokens)
    let engine = |params: &SamplingParams| {
        let g = &sample::generate(
            &loaded.model,
            std::slice::from_ref(&ids),
            params,
            &eos,
            pad,
            Some(tok),
            1024,
        )[0];
        let full = tok.decode(&g.tokens, true).unwrap();
        let cut = params
            .stop_strings
            .iter()
            .filter_map(|s| full.find(s.as_str()))
            .min();
        let finish = match g.finish {
            FinishReason::Length if cut.is_none() => "length",
            _ => "stop",
        };
        (
            full[..cut.unwrap_or(full.len())].to_string(),
            finish,
            g.tokens.len(),
        )
    };
    let url = format!("{base}/chat/completions");
    let greedy = json!({
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You add numbers."},
            {"role": "user", "content": "12+35="},
        ],
        "max_tokens": 24,
        "temperature": 0,
    });
    let mut sampled = greedy.clone();
    sampled["temperature"] = json!(1.0);
    sampled["seed"] = json!(7);
    let greedy_params = SamplingParams {
        max_new_tokens: 24,
        temperature: 0.0,
        ..Default::default()
    };
    let sampled_params = SamplingParams {
        temperature: 1.0,
        seed: 7,
        ..greedy_params.clone()
    };

    let mut sampled_text = String::new();
    for (request, params) in [(&greedy, &greedy_params), (&sampled, &sampled_params)] {
        let (want, want_finish, n) = engine(params);
        assert!(!want.is_empty(), "a random model still says something");
        let (status, reply) = post(&url, &request.to_string());
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["object"], "chat.completion");
        assert_eq!(reply["model"], "tiny");
        let choice = &reply["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        let got = choice["message"]["content"].as_str().unwrap();
        assert_eq!(got, want, "server and engine outputs differ for {request}");
        assert_eq!(choice["finish_reason"], want_finish);
        assert_eq!(reply["usage"]["prompt_tokens"], ids.len());
        assert_eq!(reply["usage"]["completion_tokens"], n);
        assert_eq!(reply["usage"]["total_tokens"], ids.len() + n);

        // Streamed: deltas that add up to the same text, then the finish reason.
        let (deltas, finish) = stream(&url, request);
        assert!(deltas.len() >= 3, "several content chunks, got {deltas:?}");
        assert_eq!(deltas.concat(), want);
        assert_eq!(finish, want_finish);
        sampled_text = want;
    }

    // A stop string (two characters from the middle of the sampled text): the text ends
    // before it, with finish_reason "stop", streamed or not.
    let chars: Vec<char> = sampled_text.chars().collect();
    assert!(chars.len() >= 6, "{sampled_text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let mut stopped = sampled.clone();
    stopped["stop"] = json!(stop);
    let (want, want_finish, _) = engine(&SamplingParams {
        stop_strings: vec![stop.clone()],
        ..sampled_params.clone()
    });
    assert!(!want.contains(&stop));
    let (status, reply) = post(&url, &stopped.to_string());
    assert_eq!(status, 200);
    assert_eq!(reply["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(reply["choices"][0]["finish_reason"], want_finish);
    let (deltas, finish) = stream(&url, &stopped);
    assert_eq!(deltas.concat(), want);
    assert_eq!(finish, want_finish);

    // Errors.
    let (status, e) = post(&format!("{base}/chat/completions"), "{not json");
    assert_eq!(status, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("JSON"),
        "{e}"
    );
    let (status, e) = post(&format!("{base}/chat/completions"), r#"{"model": "tiny"}"#);
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("messages"),
        "{e}"
    );
    let (status, e) = post(
        &format!("{base}/chat/completions"),
        r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#,
    );
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("temperature"),
        "{e}"
    );
    let (status, e) = post(&format!("{base}/nope"), "{}");
    assert_eq!(status, 404);
    assert!(e["error"]["message"].is_string());
    let mut r = agent()
        .get(&format!("{base}/chat/completions"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let e: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("POST"),
        "{e}"
    );
    // Odd bytes do not take the server down.
    let (status, _) = post(&format!("{base}/chat/completions"), "\u{0}\u{ffff}[[[[");
    assert_eq!(status, 400);
    let (status, _) = post(&url, &greedy.to_string());
    assert_eq!(status, 200);

    // The openai judge against this server: a random model answers garbage, so each
    // comparison is a verdict or a BadReply quoting what the model said.
    let cfg = OpenAiJudgeConfig {
        base_url: base.clone(),
        model: "tiny".into(),
        api_key_env: Some(KEY_VAR.into()),
        principle: "Prefer the correct sum.".into(),
        timeout_secs: 60.0,
        max_retries: 0,
    };
    let mut judge = OpenAiJudge::new(&cfg).unwrap();
    let c = |first, second| Comparison {
        principle: "Prefer the correct sum.",
        prompt: "12+35=",
        first,
        second,
    };
    let batch = [c("47", "46"), c("46", "47")];
    let out = judge.compare(&batch);
    assert_eq!(out.len(), 2);
    for (r, comparison) in out.iter().zip(&batch) {
        match r {
            Ok(v) => assert!(matches!(
                v.verdict,
                Ordered::First | Ordered::Second | Ordered::Tie
            )),
            Err(e @ JudgeError::BadReply { head, .. }) => {
                // The quote is what the server answers to the same judge prompt (greedy).
                let ask = json!({
                    "model": "tiny",
                    "messages": [{"role": "user", "content": judge_prompt(comparison)}],
                    "temperature": 0,
                    "max_tokens": 8,
                });
                let (status, reply) = post(&format!("{base}/chat/completions"), &ask.to_string());
                assert_eq!(status, 200);
                let said = reply["choices"][0]["message"]["content"].as_str().unwrap();
                assert_eq!(head, said.trim());
                assert!(e.to_string().contains(&format!("{head:?}")), "{e}");
                assert_no_key(e);
            }
            Err(e) => panic!("judge over loopback failed: {e}"),
        }
    }
    server.shutdown();
}

/// A fake OpenAI endpoint on a free port; `reply(n, request)` answers the n-th request
/// (0-based), each on its own thread.
fn fake<F>(reply: F) -> (String, Arc<AtomicU32>)
where
    F: Fn(u32, tiny_http::Request) + Send + Sync + 'static,
{
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let count = Arc::new(AtomicU32::new(0));
    let reply = Arc::new(reply);
    let n = count.clone();
    std::thread::spawn(move || {
        for mut rq in server.incoming_requests() {
            let i = n.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            std::thread::spawn(move || {
                let mut body = String::new();
                let _ = rq.as_reader().read_to_string(&mut body);
                reply(i, rq);
            });
        }
    });
    (format!("http://127.0.0.1:{port}/v1"), count)
}

fn respond(rq: tiny_http::Request, status: u16, body: String) {
    let _ = rq.respond(tiny_http::Response::from_string(body).with_status_code(status));
}

fn completion(content: &str) -> String {
    json!({"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    ]})
    .to_string()
}

fn judge_at(base: &str, timeout_secs: f64, max_retries: u32) -> OpenAiJudge {
    OpenAiJudge::new(&OpenAiJudgeConfig {
        base_url: base.into(),
        model: "fake".into(),
        api_key_env: Some(KEY_VAR.into()),
        principle: "p".into(),
        timeout_secs,
        max_retries,
    })
    .unwrap()
}

const C: Comparison = Comparison {
    principle: "Prefer the correct sum.",
    prompt: "1+1=",
    first: "3",
    second: "2",
};

fn assert_no_key(e: &JudgeError) {
    assert!(!e.to_string().contains(KEY), "key in Display: {e}");
    assert!(!format!("{e:?}").contains(KEY), "key in Debug: {e:?}");
}

#[test]
fn judge_reads_a_verdict_and_sends_the_key() {
    init();
    let (base, _) = fake(|_, rq| {
        let auth = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.to_string());
        if auth.as_deref() == Some(&format!("Bearer {KEY}")) {
            respond(rq, 200, completion("2"));
        } else {
            respond(rq, 401, json!({"error": {"message": "no key"}}).to_string());
        }
    });
    let mut judge = judge_at(&base, 5.0, 0);
    assert!(!format!("{judge:?}").contains(KEY));
    let out = judge.compare(&[C]);
    assert_eq!(out[0].as_ref().unwrap().verdict, Ordered::Second);
}

#[test]
fn judge_times_out_within_its_retry_budget() {
    init();
    let (base, count) = fake(|_, rq| {
        std::thread::sleep(Duration::from_secs(4));
        respond(rq, 200, completion("1"));
    });
    let mut judge = judge_at(&base, 0.5, 1);
    let started = Instant::now();
    let out = judge.compare(&[C]);
    let secs = started.elapsed().as_secs_f64();
    // 2 attempts of 0.5 s plus a 0.5 s backoff, plus slack.
    assert!(secs < 0.5 * 2.0 + 0.5 + 1.5, "took {secs:.2} s");
    match &out[0] {
        Err(e @ JudgeError::Timeout { .. }) => assert_no_key(e),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), 2, "one retry");
}

#[test]
fn judge_retries_a_server_error() {
    init();
    let (base, count) = fake(|n, rq| {
        if n == 0 {
            respond(
                rq,
                500,
                json!({"error": {"message": "overloaded"}}).to_string(),
            );
        } else {
            respond(rq, 200, completion("1"));
        }
    });
    let mut judge = judge_at(&base, 5.0, 2);
    let out = judge.compare(&[C]);
    assert_eq!(out[0].as_ref().unwrap().verdict, Ordered::First);
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // Out of retries: the last server error, and no key even when the server echoes it.
    let (base, count) = fake(|_, rq| {
        let auth = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.to_string())
            .unwrap_or_default();
        respond(rq, 503, format!("down; you sent {auth}"));
    });
    let mut judge = judge_at(&base, 5.0, 1);
    let out = judge.compare(&[C]);
    match &out[0] {
        Err(e @ JudgeError::Unavailable { message, .. }) => {
            assert!(
                message.contains("503") && message.contains("down"),
                "{message}"
            );
            assert_no_key(e);
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[test]
fn judge_quotes_garbage_replies() {
    init();
    let (base, _) = fake(|n, rq| {
        if n % 2 == 0 {
            respond(rq, 200, "this is not json at all".into());
        } else {
            respond(rq, 200, completion("  I cannot decide. "));
        }
    });
    let mut judge = judge_at(&base, 5.0, 0);
    // One at a time, so request n matches comparison n.
    let out = [judge.compare(&[C]), judge.compare(&[C])];
    let heads: Vec<String> = out
        .iter()
        .map(|r| match &r[0] {
            Err(e @ JudgeError::BadReply { head, .. }) => {
                assert_no_key(e);
                head.clone()
            }
            other => panic!("expected BadReply, got {other:?}"),
        })
        .collect();
    assert_eq!(heads[0], "this is not json at all");
    assert_eq!(heads[1], "I cannot decide.");
}

/// `rlft generate` streams what the engine generates: the prompt, then the completion of the
/// batched generator (greedy, and sampled with a seed), whole.
#[test]
fn rlft_generate_prints_the_engines_completion() {
    let m = model::load(Path::new("assets/base"), &Device::flex(), Heads::Lm).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let prompt = "ROMEO:";
    for (temperature, seed) in [("0", 0u64), ("0.8", 5)] {
        let params = SamplingParams {
            max_new_tokens: 30,
            temperature: temperature.parse().unwrap(),
            seed,
            ..Default::default()
        };
        let ids = tok.encode(prompt, true).unwrap();
        let mut eos = tok.eos_ids().to_vec();
        eos.extend(m.config.eos_ids());
        let pad = tok.pad_id().or(eos.first().copied()).unwrap_or(0);
        let out = sample::generate(&m.model, &[ids], &params, &eos, pad, Some(tok), 512);
        let want = format!("{prompt}{}\n", tok.decode(&out[0].tokens, true).unwrap());
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_rlft"))
            .args(["generate", "--model", "assets/base", "--prompt", prompt])
            .args(["--max-new-tokens", "30", "--temperature", temperature])
            .args(["--seed", &seed.to_string()])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&run.stdout),
            want,
            "temperature {temperature}"
        );
    }
}

/// `rlft serve` logs one access line per request on stderr, as web servers do.
#[test]
fn rlft_serve_logs_each_request() {
    use std::io::{BufRead, BufReader, Read};
    init();
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rlft"))
        .args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .trim_end_matches("/v1")
        .to_string();
    let models = agent().get(&format!("{base}/v1/models")).call().unwrap();
    assert_eq!(models.status().as_u16(), 200);
    let missing = agent().get(&format!("{base}/nowhere")).call().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    child.kill().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    assert!(err.contains("127.0.0.1 \"GET /v1/models\" 200 "), "{err}");
    assert!(err.contains("\"GET /nowhere\" 404 "), "{err}");
}
