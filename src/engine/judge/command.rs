//! A judge that is an external program, so users can judge with any tool or API client.

use std::time::Duration;

use serde_json::Value;

use super::{CommandJudgeConfig, Comparison, Judge, JudgeError, Ordered, OrderedVerdict};
use crate::engine::reward::{CommandReward, RewardError, quote_output};

/// Runs a program once per batch of comparisons.
///
/// Protocol:
/// - stdin: a JSON array, one object per ordered comparison:
///   `[{"principle": "...", "prompt": "...", "first": "...", "second": "..."}, ...]`.
/// - stdout: one verdict per comparison, in order: a JSON array whose items are `1`/`2`/`0`
///   (0 = tie) or strings such as `"1"`, `"2"`, `"A"`, `"B"`, `"tie"`; or the same tokens
///   separated by whitespace.
/// - exit status 0.
///
/// Timeouts, failed exits and unreadable output fail every comparison of the batch with an
/// error quoting the output; the trainer shows it and leaves those pairs unlabelled.
pub struct CommandJudge {
    runner: CommandReward,
    name: String,
}

impl CommandJudge {
    pub fn new(cfg: &CommandJudgeConfig) -> Result<Self, JudgeError> {
        let runner = CommandReward::new(
            cfg.command.clone(),
            Duration::from_secs_f64(cfg.timeout_secs.max(0.001)),
        )
        .map_err(|e| JudgeError::Config(e.to_string().replace("reward `command`", "`command`")))?;
        let name = cfg
            .command
            .first()
            .map(|p| {
                std::path::Path::new(p)
                    .file_name()
                    .map_or_else(|| p.clone(), |f| f.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        Ok(Self { runner, name })
    }
}

fn verdict_of(v: &Value) -> Option<Ordered> {
    match v {
        Value::Number(n) => match n.as_i64()? {
            1 => Some(Ordered::First),
            2 => Some(Ordered::Second),
            0 => Some(Ordered::Tie),
            _ => None,
        },
        Value::String(s) => super::parse_verdict(s),
        _ => None,
    }
}

/// The verdicts in a program's output, or a description of what is wrong with it.
fn parse_verdicts(stdout: &[u8], n: usize) -> Result<Vec<Ordered>, String> {
    let text = String::from_utf8_lossy(stdout);
    let items: Vec<Option<Ordered>> = match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::Array(items)) => items.iter().map(verdict_of).collect(),
        Ok(single) if n == 1 => vec![verdict_of(&single)],
        _ => text.split_whitespace().map(super::parse_verdict).collect(),
    };
    if items.len() != n {
        return Err(format!("{} verdicts for {n} comparisons", items.len()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| format!("no verdict in item {}", i + 1)))
        .collect()
}

impl Judge for CommandJudge {
    fn name(&self) -> &str {
        &self.name
    }

    fn compare(&mut self, batch: &[Comparison]) -> Vec<Result<OrderedVerdict, JudgeError>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let fail = |e: &dyn Fn() -> JudgeError| (0..batch.len()).map(|_| Err(e())).collect();
        let input = match serde_json::to_vec(batch) {
            Ok(v) => v,
            Err(e) => {
                return fail(&|| JudgeError::Unavailable {
                    judge: self.name.clone(),
                    message: e.to_string(),
                });
            }
        };
        let stdout = match self.runner.run(input) {
            Ok(out) => out,
            Err(RewardError::Timeout { secs, .. }) => {
                return fail(&|| JudgeError::Timeout {
                    judge: self.runner.display(),
                    secs,
                });
            }
            Err(e) => {
                let message = e.to_string().replace("reward command", "command");
                return fail(&|| JudgeError::Unavailable {
                    judge: self.runner.display(),
                    message: message.clone(),
                });
            }
        };
        match parse_verdicts(&stdout, batch.len()) {
            Ok(verdicts) => verdicts
                .into_iter()
                .map(|verdict| {
                    Ok(OrderedVerdict {
                        verdict,
                        p_first: None,
                    })
                })
                .collect(),
            Err(problem) => fail(&|| JudgeError::BadReply {
                judge: self.runner.display(),
                head: format!("{problem}: {}", quote_output(&stdout)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::judge::{Verdict, judge_pairs};

    fn sh(script: &str, timeout: f64) -> CommandJudge {
        CommandJudge::new(&CommandJudgeConfig {
            command: vec!["sh".into(), "-c".into(), script.into()],
            principle: "longer is better".into(),
            timeout_secs: timeout,
        })
        .unwrap()
    }

    #[test]
    fn a_python_judge_reads_json_and_answers_per_comparison() {
        // Prefers the longer answer; both orders agree, so the pairs are decided.
        let script = "python3 -c 'import json,sys; b=json.load(sys.stdin); \
                      print(json.dumps([1 if len(c[\"first\"])>len(c[\"second\"]) else 2 for c in b]))'";
        let mut j = sh(script, 10.0);
        let out = judge_pairs(
            &mut j,
            "longer",
            &[("p", "long answer", "s"), ("p", "x", "yyyy")],
        );
        let v: Vec<Verdict> = out.into_iter().map(|r| r.unwrap().verdict).collect();
        assert_eq!(v, vec![Verdict::A, Verdict::B]);
    }

    #[test]
    fn garbage_and_timeouts_fail_each_comparison_with_a_clear_error() {
        let mut j = sh("echo what", 10.0);
        let out = judge_pairs(&mut j, "x", &[("p", "a", "b")]);
        let e = out[0].as_ref().unwrap_err().to_string();
        assert!(
            e.contains("no verdict") || e.contains("verdicts for"),
            "{e}"
        );
        assert!(e.contains("what"), "{e}");

        let mut j = sh("sleep 5", 0.3);
        let started = std::time::Instant::now();
        let out = judge_pairs(&mut j, "x", &[("p", "a", "b")]);
        assert!(started.elapsed().as_secs_f64() < 3.0);
        assert!(
            out[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("timed out")
        );
    }
}
