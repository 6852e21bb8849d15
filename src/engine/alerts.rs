//! `[alerts]`: a run's health warnings (KL exploding, NaN, reward hacking, …) call a command
//! or a webhook when they appear, as Trackio's and W&B's alerts do, so a long run that goes
//! wrong at 3 a.m. reaches someone. Each warning alerts once when it appears, and again only
//! if it cleared and came back.
//!
//! Alerts are sent on their own threads: a slow webhook never holds up a training step. How
//! each went (sent, or why not) goes to the run's Log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use crate::engine::events::{Event, LogLevel, RunId};
use crate::engine::health::{HealthMonitor, Rule, Severity, Warning};

/// How long a webhook may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Which warnings alert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MinSeverity {
    /// Every health warning.
    #[default]
    Warning,
    /// Only the critical ones (NaN/inf, KL exploding).
    Critical,
}

/// `[alerts]` in a run config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// Run with `sh -c` on each alert, with `RLFT_RUN`, `RLFT_RUN_DIR`, `RLFT_RULE`,
    /// `RLFT_SEVERITY`, `RLFT_STEP` and `RLFT_ALERT` (one line saying it all) set, e.g.
    /// `notify-send rlft "$RLFT_ALERT"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// An http(s) URL that gets a JSON POST: `text` (Slack, Mattermost), `content` (Discord)
    /// and the fields `run`, `rule`, `severity`, `step`, `detail`, `meaning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default)]
    pub min_severity: MinSeverity,
}

impl AlertsSection {
    pub fn validate(&self) -> Result<(), String> {
        if self.command.as_deref().is_none_or(|c| c.trim().is_empty()) && self.webhook.is_none() {
            return Err("[alerts] needs a command or a webhook (or drop the section)".into());
        }
        if let Some(url) = &self.webhook
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "[alerts] webhook = {url:?}: expected an http:// or https:// URL"
            ));
        }
        Ok(())
    }
}

/// One alert, as the command's environment and the webhook's JSON carry it.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub run: RunId,
    pub rule: Rule,
    pub severity: Severity,
    pub step: usize,
    pub detail: String,
}

impl Alert {
    fn severity_word(&self) -> &'static str {
        match self.severity {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// One line: `rlft run grpo-arith, step 120: KL exploding (critical): kl 7.2 (was 0.02)`.
    pub fn line(&self) -> String {
        format!(
            "rlft run {}, step {}: {} ({}): {}",
            self.run,
            self.step,
            self.rule.title(),
            self.severity_word(),
            self.detail
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "text": self.line(),
            "content": self.line(),
            "run": self.run,
            "rule": self.rule.title(),
            "severity": self.severity_word(),
            "step": self.step,
            "detail": self.detail,
            "meaning": self.rule.meaning(),
        })
    }
}

/// Watches one run's metrics and sends an alert when a warning appears.
pub struct Alerter {
    cfg: AlertsSection,
    run: RunId,
    run_dir: PathBuf,
    health: HealthMonitor,
    /// The warnings raised at the last row.
    active: BTreeSet<Rule>,
    /// Where the outcome of each alert is logged.
    events: Sender<Event>,
}

impl Alerter {
    pub fn new(cfg: AlertsSection, run: &str, run_dir: &Path, events: Sender<Event>) -> Self {
        Self {
            cfg,
            run: run.to_string(),
            run_dir: run_dir.to_path_buf(),
            health: HealthMonitor::new(),
            active: BTreeSet::new(),
            events,
        }
    }

    /// Takes one metrics row; sends (on other threads) the alerts for warnings that appeared
    /// with it, and returns them.
    pub fn observe(&mut self, step: usize, values: &BTreeMap<String, f64>) -> Vec<Alert> {
        self.health.observe(step, values);
        let raised: Vec<Warning> = self
            .health
            .warnings()
            .into_iter()
            .filter(|w| {
                self.cfg.min_severity == MinSeverity::Warning || w.severity == Severity::Critical
            })
            .collect();
        let now: BTreeSet<Rule> = raised.iter().map(|w| w.rule).collect();
        let new: Vec<Alert> = raised
            .into_iter()
            .filter(|w| !self.active.contains(&w.rule))
            .map(|w| Alert {
                run: self.run.clone(),
                rule: w.rule,
                severity: w.severity,
                step: w.step,
                detail: w.detail,
            })
            .collect();
        self.active = now;
        for a in &new {
            self.send(a.clone());
        }
        new
    }

    fn send(&self, alert: Alert) {
        let (cfg, run_dir, events) = (self.cfg.clone(), self.run_dir.clone(), self.events.clone());
        let spawned = std::thread::Builder::new()
            .name("rlft-alert".into())
            .spawn(move || {
                let log = |level, message: String| {
                    let _ = events.send(Event::Log {
                        run: alert.run.clone(),
                        level,
                        message,
                    });
                };
                if let Some(cmd) = &cfg.command {
                    match run_command(cmd, &alert, &run_dir) {
                        Ok(()) => log(
                            LogLevel::Info,
                            format!("alert command ran: {}", alert.rule.title()),
                        ),
                        Err(e) => log(LogLevel::Warn, format!("[alerts] command failed: {e}")),
                    }
                }
                if let Some(url) = &cfg.webhook {
                    match post_webhook(url, &alert) {
                        Ok(()) => log(
                            LogLevel::Info,
                            format!("alert sent to the webhook: {}", alert.rule.title()),
                        ),
                        Err(e) => log(LogLevel::Warn, format!("[alerts] webhook {url}: {e}")),
                    }
                }
            });
        if let Err(e) = spawned {
            let _ = self.events.send(Event::Log {
                run: self.run.clone(),
                level: LogLevel::Warn,
                message: format!("[alerts]: could not start a thread: {e}"),
            });
        }
    }
}

fn run_command(cmd: &str, alert: &Alert, run_dir: &Path) -> Result<(), String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("RLFT_RUN", &alert.run)
        .env("RLFT_RUN_DIR", run_dir)
        .env("RLFT_RULE", alert.rule.title())
        .env("RLFT_SEVERITY", alert.severity_word())
        .env("RLFT_STEP", alert.step.to_string())
        .env("RLFT_ALERT", alert.line())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "`{cmd}` exited with {}: {}",
        out.status,
        stderr.trim().chars().take(200).collect::<String>()
    ))
}

fn post_webhook(url: &str, alert: &Alert) -> Result<(), String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(WEBHOOK_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut reply = agent
        .post(url)
        .send_json(alert.json())
        .map_err(|e| format!("not reached: {e}"))?;
    let status = reply.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body = reply
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    Err(format!(
        "HTTP {status}: {}",
        body.chars().take(200).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(loss: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("loss".to_string(), loss), ("reward".to_string(), 0.5)])
    }

    /// Waits for `n` Log events and returns their messages.
    fn logs(rx: &crossbeam_channel::Receiver<Event>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Event::Log { message, .. }) => out.push(message),
                Ok(_) => {}
                Err(e) => panic!("waiting for {n} log lines, got {out:?}: {e}"),
            }
        }
        out
    }

    #[test]
    fn a_warning_runs_the_command_once_while_it_stays_raised() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("alerts.txt");
        let cfg = AlertsSection {
            command: Some(format!(
                "echo \"$RLFT_RULE|$RLFT_SEVERITY|$RLFT_STEP|$RLFT_RUN|$RLFT_ALERT\" >> '{}'",
                out.display()
            )),
            ..Default::default()
        };
        cfg.validate().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut a = Alerter::new(cfg, "grpo-x", tmp.path(), tx);
        for step in 1..=5 {
            assert!(a.observe(step, &row(0.5)).is_empty());
        }
        let fired = a.observe(6, &row(f64::NAN));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule, Rule::NonFinite);
        // Still raised: no second alert.
        assert!(a.observe(7, &row(f64::NAN)).is_empty());
        assert_eq!(logs(&rx, 1), vec!["alert command ran: NaN/inf in metrics"]);
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.starts_with("NaN/inf in metrics|critical|6|grpo-x|rlft run grpo-x, step 6: NaN/inf in metrics (critical)"),
            "{text}"
        );
    }

    #[test]
    fn the_webhook_gets_json_and_failures_are_logged_not_raised() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", server.server_addr().to_ip().unwrap());
        let (body_tx, body_rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for (i, mut rq) in server.incoming_requests().enumerate() {
                let mut body = String::new();
                let _ = rq.as_reader().read_to_string(&mut body);
                let _ = body_tx.send(body);
                let code = if i == 0 { 200 } else { 500 };
                let _ = rq.respond(tiny_http::Response::from_string("no").with_status_code(code));
            }
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let cfg = AlertsSection {
            webhook: Some(url),
            ..Default::default()
        };
        let mut a = Alerter::new(cfg.clone(), "ppo-y", Path::new("."), tx);
        a.observe(1, &row(f64::INFINITY));
        let body: serde_json::Value =
            serde_json::from_str(&body_rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
        assert_eq!(body["run"], "ppo-y");
        assert_eq!(body["rule"], "NaN/inf in metrics");
        assert_eq!(body["severity"], "critical");
        assert!(
            body["text"]
                .as_str()
                .unwrap()
                .starts_with("rlft run ppo-y, step 1")
        );
        assert_eq!(body["text"], body["content"]);
        assert_eq!(
            logs(&rx, 1),
            vec!["alert sent to the webhook: NaN/inf in metrics"]
        );
        // A second alert: the receiver fails it; a closed port is not reached. Both are
        // logged, and training goes on.
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut b = Alerter::new(cfg.clone(), "ppo-z", Path::new("."), tx);
        b.observe(1, &row(f64::NAN));
        let said = logs(&rx, 1);
        assert!(said[0].contains("HTTP 500"), "{said:?}");
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}/hook", free.local_addr().unwrap());
        drop(free);
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut c = Alerter::new(
            AlertsSection {
                webhook: Some(closed),
                ..Default::default()
            },
            "ppo-w",
            Path::new("."),
            tx,
        );
        c.observe(1, &row(f64::NAN));
        let said = logs(&rx, 1);
        assert!(said[0].contains("not reached"), "{said:?}");
    }

    #[test]
    fn a_section_without_a_target_or_with_a_bad_url_is_refused() {
        let e = AlertsSection::default().validate().unwrap_err();
        assert!(e.contains("needs a command or a webhook"), "{e}");
        let e = AlertsSection {
            webhook: Some("hooks.slack.com/x".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("http:// or https://"), "{e}");
    }
}
