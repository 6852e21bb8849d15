//! Rewards computed by an external program, so users can score completions in any language
//! without touching rlft (the role of TRL's reward callables and verl's `compute_score`).

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Completion, RewardError, RewardSource};

/// Bytes of a misbehaving command's output quoted in errors.
const QUOTE_BYTES: usize = 200;
/// Output read from a command, at most; a runaway printer is cut off (and then fails).
const MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// Runs a program once per batch (not once per completion, so a Python scorer pays its start-up
/// once per step).
///
/// Protocol:
/// - stdin: one JSON array with an object per completion, in batch order,
///   `[{"prompt": "12+35=", "completion": "47", "answer": "47"}, ...]` (`answer` is `null`
///   where the dataset has none), then end of file.
/// - stdout: the scores, one per completion in the same order: a JSON array of numbers
///   (`[1.0, 0.0]`), or numbers separated by whitespace/newlines; a batch of one may print a
///   single number. Scores must be finite.
/// - exit status 0. Anything on stderr is ignored unless the command fails.
///
/// The command runs without a shell, in rlft's working directory and environment, in its own
/// process group. When it runs past the timeout the whole group is killed and the step fails
/// with [`RewardError::Timeout`]; a non-zero exit gives [`RewardError::Exit`] and unparseable
/// output [`RewardError::BadOutput`], both quoting the first 200 bytes of what it printed.
#[derive(Clone, Debug)]
pub struct CommandReward {
    name: String,
    argv: Vec<String>,
    timeout: Duration,
}

impl CommandReward {
    pub fn new(argv: Vec<String>, timeout: Duration) -> Result<Self, RewardError> {
        if argv.first().is_none_or(|program| program.is_empty()) {
            return Err(RewardError::Config(
                "reward `command`: `command` needs at least a program name".into(),
            ));
        }
        Ok(Self {
            name: "command".into(),
            argv,
            timeout,
        })
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The command line as a user would type it, for error messages.
    pub(crate) fn display(&self) -> String {
        let quoted: Vec<String> = self
            .argv
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(char::is_whitespace) {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect();
        quoted.join(" ")
    }

    pub(crate) fn run(&self, input: Vec<u8>) -> Result<Vec<u8>, RewardError> {
        let command = self.display();
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(|source| RewardError::Spawn {
            command: command.clone(),
            source,
        })?;
        let deadline = Instant::now() + self.timeout;

        // Feed stdin from a thread: a command that prints before reading everything must not
        // deadlock against us. Write errors (it closed stdin early) show up as bad output.
        if let Some(mut stdin) = child.stdin.take() {
            thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());

        let status = match wait_until(&mut child, deadline) {
            Ok(Some(status)) => status,
            Ok(None) => {
                kill_group(&mut child);
                return Err(self.timeout_error(command));
            }
            Err(source) => {
                kill_group(&mut child);
                return Err(RewardError::Io { command, source });
            }
        };
        // A background grandchild can keep the pipes open after the command exits; the
        // deadline still holds.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (Ok(out), Ok(err)) = (
            stdout.recv_timeout(remaining),
            stderr.recv_timeout(remaining),
        ) else {
            kill_group(&mut child);
            return Err(self.timeout_error(command));
        };
        if !status.success() {
            let shown = if err.iter().all(u8::is_ascii_whitespace) {
                &out
            } else {
                &err
            };
            return Err(RewardError::Exit {
                command,
                status: status.to_string(),
                output: quote(shown),
            });
        }
        Ok(out)
    }

    fn timeout_error(&self, command: String) -> RewardError {
        RewardError::Timeout {
            command,
            secs: self.timeout.as_secs_f64(),
        }
    }
}

/// Reads a pipe to its end on a thread; the bytes arrive on the returned channel.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(pipe) = pipe {
            let _ = pipe.take(MAX_OUTPUT_BYTES).read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

/// Polls the child until it exits (`Some`) or the deadline passes (`None`). Polling starts at
/// 1 ms so quick scorers cost little, backing off to 20 ms.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Kills the command and everything it started (`sh -c "sleep 5"` leaves `sleep` holding the
/// pipes otherwise), then reaps it. Best effort: there is nothing more to do if it fails.
fn kill_group(child: &mut Child) {
    #[cfg(unix)]
    {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The first [`QUOTE_BYTES`] of some output, lossily decoded.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(QUOTE_BYTES)];
    let mut text = String::from_utf8_lossy(head).into_owned();
    if bytes.len() > QUOTE_BYTES {
        text.push('…');
    }
    text
}

/// Reads `n` scores from a command's stdout; the error describes the problem for
/// [`RewardError::BadOutput`].
fn parse_scores(stdout: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let text = std::str::from_utf8(stdout).map_err(|_| "output that is not UTF-8".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("nothing".into());
    }
    let scores: Vec<f64> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Number(x)) => vec![x.as_f64().unwrap_or(f64::NAN)],
        Ok(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64()
                    .ok_or_else(|| format!("an array whose element {i} is not a number"))
            })
            .collect::<Result<_, _>>()?,
        Ok(_) => return Err("JSON that is not a number or an array of numbers".into()),
        Err(_) => text
            .split_whitespace()
            .map(|word| word.parse::<f64>().ok())
            .collect::<Option<_>>()
            .ok_or("something that is not a JSON array or whitespace-separated numbers")?,
    };
    if scores.len() != n {
        return Err(format!("{} scores for {n} completions", scores.len()));
    }
    if let Some(i) = scores.iter().position(|x| !x.is_finite()) {
        return Err(format!("a non-finite score at index {i}"));
    }
    Ok(scores.into_iter().map(|x| x as f32).collect())
}

impl RewardSource for CommandReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&mut self, batch: &[Completion]) -> Result<Vec<f32>, RewardError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let input = serde_json::to_vec(batch).map_err(|e| RewardError::Io {
            command: self.display(),
            source: std::io::Error::other(e),
        })?;
        let stdout = self.run(input)?;
        parse_scores(&stdout, batch.len()).map_err(|problem| RewardError::BadOutput {
            command: self.display(),
            problem,
            head: quote(&stdout),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Vec<Completion<'static>> {
        vec![
            Completion {
                prompt: "12+35=",
                completion: "47",
                answer: Some("47"),
            },
            Completion {
                prompt: "1+1=",
                completion: "3\n",
                answer: None,
            },
        ]
    }

    fn sh(script: &str, timeout: Duration) -> CommandReward {
        CommandReward::new(vec!["sh".into(), "-c".into(), script.into()], timeout)
            .expect("valid command")
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn python_scorer_reads_json_and_prints_an_array() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("score.py");
        std::fs::write(
            &script,
            "import json, sys\n\
             items = json.load(sys.stdin)\n\
             print(json.dumps([float(i['completion'].strip() == (i['answer'] or '')) \
             for i in items]))\n",
        )
        .expect("write script");
        let mut reward = CommandReward::new(
            vec!["python3".into(), script.display().to_string()],
            10 * SECOND,
        )
        .expect("valid");
        assert_eq!(reward.name(), "command");
        assert_eq!(reward.score(&batch()).expect("scores"), [1.0, 0.0]);
        assert!(reward.score(&[]).expect("empty batch").is_empty());
    }

    #[test]
    fn stdin_is_the_documented_json() {
        let mut echo = sh("cat >&2; exit 3", 10 * SECOND);
        let err = echo.score(&batch()).unwrap_err();
        let RewardError::Exit { output, status, .. } = &err else {
            panic!("{err}");
        };
        assert!(status.contains('3'), "{status}");
        let expected = r#"[{"prompt":"12+35=","completion":"47","answer":"47"},{"prompt":"1+1=","completion":"3\n","answer":null}]"#;
        assert_eq!(output, expected);
    }

    #[test]
    fn whitespace_separated_numbers_work() {
        let mut r = sh("cat >/dev/null; printf '0.5\\n-1\\n'", 10 * SECOND);
        assert_eq!(r.score(&batch()).expect("scores"), [0.5, -1.0]);
        let mut one = sh("echo 2", 10 * SECOND);
        assert_eq!(one.score(&batch()[..1]).expect("scores"), [2.0]);
    }

    #[test]
    fn non_zero_exit_names_the_command_and_quotes_stderr() {
        let mut r = sh("echo 'Traceback: boom' >&2; exit 1", 10 * SECOND);
        let err = r.score(&batch()).unwrap_err().to_string();
        assert!(err.starts_with("reward command `sh -c \"echo"), "{err}");
        assert!(err.contains("Traceback: boom"), "{err}");
        assert!(err.contains("exit status: 1"), "{err}");

        let long = sh(
            "head -c 1000 /dev/zero | tr '\\0' x >&2; exit 2",
            10 * SECOND,
        );
        let err = long.clone().score(&batch()).unwrap_err();
        let RewardError::Exit { output, .. } = err else {
            panic!("expected an exit error")
        };
        assert_eq!(output, format!("{}…", "x".repeat(200)));

        let mut missing = CommandReward::new(vec!["/no/such/scorer".into()], SECOND)
            .expect("valid")
            .named("judge");
        let err = missing.score(&batch()).unwrap_err();
        assert!(matches!(err, RewardError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/no/such/scorer"), "{err}");
    }

    #[test]
    fn timeout_kills_the_command_promptly() {
        let start = Instant::now();
        let mut r = sh("sleep 5", Duration::from_millis(500));
        let err = r.score(&batch()).unwrap_err();
        assert!(matches!(err, RewardError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("timed out after 0.5 s"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );

        // A background child holding stdout past the deadline is also a timeout.
        let start = Instant::now();
        let mut r = sh("(sleep 5; echo 1) & echo 1", Duration::from_millis(500));
        let err = r.score(&batch()[..1]).unwrap_err();
        assert!(matches!(err, RewardError::Timeout { .. }), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn garbage_output_is_quoted() {
        let cases = [
            ("echo hello world", "something that is not a JSON array"),
            ("echo '[1]'", "1 scores for 2 completions"),
            ("echo '[1, \"x\"]'", "element 1 is not a number"),
            ("echo '{\"a\": 1}'", "JSON that is not a number"),
            ("echo 'NaN 1'", "non-finite score at index 0"),
            ("true", "printed nothing"),
        ];
        for (script, problem) in cases {
            let mut r = sh(script, 10 * SECOND);
            let err = r.score(&batch()).unwrap_err();
            assert!(matches!(err, RewardError::BadOutput { .. }), "{err}");
            let message = err.to_string();
            assert!(message.contains(problem), "{script}: {message}");
        }
        let mut r = sh("echo hello world", 10 * SECOND);
        let message = r.score(&batch()).unwrap_err().to_string();
        assert!(
            message.ends_with("output starts: \"hello world\\n\""),
            "{message}"
        );
    }

    #[test]
    fn empty_command_is_a_config_error() {
        assert!(CommandReward::new(vec![], SECOND).is_err());
        assert!(CommandReward::new(vec![String::new()], SECOND).is_err());
    }
}
