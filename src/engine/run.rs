//! A run is a folder: `config.toml` (as resolved), `metrics.jsonl`, `samples.jsonl`,
//! `checkpoints/`. Each metrics or samples line is flushed as it is written, so a crash or a
//! kill loses at most the line being written; readers skip a torn last line.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use serde::{Deserialize, Serialize};

use crate::engine::events::{Command, Event, LogLevel, RunId, RunStatus, SampleRecord};

/// One line of `metrics.jsonl`: step, wall time and TRL-named values side by side. A value
/// that is NaN or infinite is written as `null` (JSON has no NaN) and read back as NaN, so
/// the row, and the Health pane's NaN warning, survive a reload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: usize,
    pub wall_time: f64,
    #[serde(flatten, deserialize_with = "null_as_nan")]
    pub values: BTreeMap<String, f64>,
}

fn null_as_nan<'de, D>(d: D) -> Result<BTreeMap<String, f64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw: BTreeMap<String, Option<f64>> = Deserialize::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

impl MetricsRow {
    /// One `metrics.jsonl` line; Python's bare `NaN`, `Infinity` and `-Infinity` (what
    /// `json.dumps` writes) are taken too. `None` for a line that is not a metrics row.
    pub fn parse(line: &str) -> Option<Self> {
        if let Ok(row) = serde_json::from_str(line) {
            return Some(row);
        }
        let mut v: serde_json::Value = serde_json::from_str(
            &line
                .replace("-Infinity", "null")
                .replace("Infinity", "null")
                .replace("NaN", "null"),
        )
        .ok()?;
        // Infinities read as NaN too: what matters downstream is that the value is not finite.
        let obj = v.as_object_mut()?;
        let step = obj.remove("step")?.as_u64()? as usize;
        let wall_time = obj
            .remove("wall_time")
            .and_then(|w| w.as_f64())
            .unwrap_or(0.0);
        let values = obj
            .iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::Null => Some((k.clone(), f64::NAN)),
                other => other.as_f64().map(|f| (k.clone(), f)),
            })
            .collect();
        Some(Self {
            step,
            wall_time,
            values,
        })
    }
}

pub struct RunDir {
    pub path: PathBuf,
    metrics: File,
    samples: File,
}

impl RunDir {
    /// Creates `root/name`, or `root/name-2`, `-3`, ... when taken.
    pub fn create_unique(root: &Path, name: &str) -> std::io::Result<Self> {
        fs::create_dir_all(root)?;
        let mut path = root.join(name);
        let mut n = 2;
        while path.exists() {
            path = root.join(format!("{name}-{n}"));
            n += 1;
        }
        Self::open(&path)
    }

    /// Opens (creating if needed) a run folder for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(path.join("checkpoints"))?;
        let append = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.join(name))
        };
        Ok(Self {
            path: path.to_path_buf(),
            metrics: append("metrics.jsonl")?,
            samples: append("samples.jsonl")?,
        })
    }

    pub fn id(&self) -> RunId {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into())
    }

    pub fn write_config(&self, toml_text: &str) -> std::io::Result<()> {
        fs::write(self.path.join("config.toml"), toml_text)
    }

    pub fn append_metrics(&mut self, row: &MetricsRow) -> std::io::Result<()> {
        let line = serde_json::to_string(row).map_err(std::io::Error::other)?;
        writeln!(self.metrics, "{line}")?;
        self.metrics.flush()
    }

    pub fn append_samples(&mut self, samples: &[SampleRecord]) -> std::io::Result<()> {
        for s in samples {
            let line = serde_json::to_string(s).map_err(std::io::Error::other)?;
            writeln!(self.samples, "{line}")?;
        }
        self.samples.flush()
    }

    /// Drops `metrics.jsonl` and `samples.jsonl` lines past `step`: a resumed run re-does
    /// those steps, and its stream must read as one run. Files are rewritten atomically.
    pub fn truncate_after(&mut self, step: usize) -> std::io::Result<()> {
        for name in ["metrics.jsonl", "samples.jsonl"] {
            let path = self.path.join(name);
            let text = fs::read_to_string(&path).unwrap_or_default();
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s as usize <= step)
                })
                .collect();
            let tmp = path.with_extension("jsonl.tmp");
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            fs::write(&tmp, out)?;
            fs::rename(&tmp, &path)?;
        }
        *self = Self::open(&self.path)?;
        Ok(())
    }

    /// Records how the run stands (`status.json`): written when it starts and when it ends, so
    /// a reopened workbench tells a stopped run from a finished or failed one. Replaced
    /// atomically; a run killed mid-way leaves `running`, which readers take as interrupted.
    pub fn write_status(&self, status: &RunState) -> std::io::Result<()> {
        let path = self.path.join(STATUS_FILE);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)
    }

    pub fn checkpoint_dir(&self, step: usize) -> PathBuf {
        self.path
            .join("checkpoints")
            .join(format!("step-{step:06}"))
    }

    /// The label store the workbench keeps for this runs folder: `labels/` beside the run.
    pub fn labels_dir(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join("labels")
    }

    /// The best checkpoint by `[train] keep_best`; step pruning leaves it alone.
    pub fn best_dir(&self) -> PathBuf {
        self.path.join("checkpoints").join("best")
    }

    pub fn final_dir(&self) -> PathBuf {
        self.path.join("checkpoints").join("final")
    }

    /// Deletes all but the newest `keep` `step-*` checkpoints.
    pub fn prune_checkpoints(&self, keep: usize) -> std::io::Result<()> {
        let mut steps: Vec<PathBuf> = fs::read_dir(self.path.join("checkpoints"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.contains('.'))
            })
            .collect();
        steps.sort();
        let excess = steps.len().saturating_sub(keep.max(1));
        for old in &steps[..excess] {
            fs::remove_dir_all(old)?;
        }
        Ok(())
    }
}

/// Beside the best checkpoint: which metric made it best.
pub const BEST_FILE: &str = "best.json";

/// The run folder's record of how the run stands.
pub const STATUS_FILE: &str = "status.json";

/// `status.json`: the run's state, the last step it reported, and why it failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub status: RunStatus,
    pub step: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads a run folder's `status.json`; `None` when it is missing or unreadable (runs written
/// before it existed).
pub fn read_status(dir: &Path) -> Option<RunState> {
    let text = fs::read_to_string(dir.join(STATUS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Reads `metrics.jsonl`, skipping lines that do not parse (a torn last line after a kill).
pub fn read_metrics(path: &Path) -> std::io::Result<Vec<MetricsRow>> {
    let file = File::open(path)?;
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| MetricsRow::parse(&l))
        .collect())
}

/// What a training loop is told after asking for commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Save a checkpoint now, then continue.
    Save,
    Stop,
}

/// The trainer's side of a run: writes the run folder and sends events, obeys commands.
/// Sending never blocks (unbounded channel) and a closed receiver is ignored, so a trainer
/// outlives a UI that quit.
pub struct RunContext {
    pub id: RunId,
    pub dir: RunDir,
    events: Sender<Event>,
    commands: Receiver<Command>,
    started: Instant,
    /// Wall time already spent before a resume, so the time axis continues.
    wall_offset: f64,
    last_step: usize,
    /// The checkpoint a resumed run continues from.
    pub resume_from: Option<PathBuf>,
    /// Most pairs proposed for labelling from each step's samples (`[pairs] per_step`).
    pub pairs_per_step: usize,
    pair_builder: crate::engine::labels::PairBuilder,
    /// A pause that outlives a `Save` asked for while paused (the checkpoint is written at
    /// once, then the run waits again).
    paused: bool,
    /// `[train] keep_best`: the metric and whether larger is better, the best value so far
    /// (kept in `checkpoints/best/best.json` across a resume) and whether the newest metrics
    /// beat it.
    pub keep_best: Option<(String, bool)>,
    best: Option<BestSoFar>,
    best_improved: bool,
    /// `[train] report_to = ["tensorboard"]`: the run's event file.
    tensorboard: Option<crate::engine::tensorboard::EventFileWriter>,
    /// `[alerts]`: health warnings call a command or a webhook.
    alerts: Option<crate::engine::alerts::Alerter>,
}

/// `checkpoints/best/best.json`.
pub use crate::engine::events::BestCheckpoint as BestSoFar;

/// Metrics rows as CSV: `step`, `wall_time`, then every metric any row has, sorted by name;
/// a cell is empty where that step did not log the metric. Names with a comma or a quote are
/// quoted (RFC 4180).
pub fn metrics_csv(rows: &[MetricsRow]) -> String {
    let names: std::collections::BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.values.keys().map(String::as_str))
        .collect();
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("step,wall_time");
    for n in &names {
        out.push(',');
        out.push_str(&quote(n));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{},{}", r.step, r.wall_time));
        for n in &names {
            out.push(',');
            if let Some(v) = r.values.get(*n) {
                out.push_str(&v.to_string());
            }
        }
        out.push('\n');
    }
    out
}

/// The best checkpoint a run folder holds (`checkpoints/best/best.json`), if any.
pub fn read_best(run_dir: &Path) -> Option<BestSoFar> {
    let text = fs::read_to_string(run_dir.join("checkpoints/best").join(BEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

impl RunContext {
    pub fn new(dir: RunDir, events: Sender<Event>, commands: Receiver<Command>) -> Self {
        Self {
            id: dir.id(),
            dir,
            events,
            commands,
            started: Instant::now(),
            wall_offset: 0.0,
            last_step: 0,
            resume_from: None,
            pairs_per_step: 0,
            pair_builder: crate::engine::labels::PairBuilder::new(),
            paused: false,
            keep_best: None,
            best: None,
            best_improved: false,
            tensorboard: None,
            alerts: None,
        }
    }

    /// Continues the run's clock and step counter from a checkpoint (resume).
    pub fn resume_at(&mut self, step: usize, wall_time: f64) {
        self.wall_offset = wall_time;
        self.last_step = step;
    }

    /// The last step metrics were reported for.
    pub fn last_step(&self) -> usize {
        self.last_step
    }

    pub fn wall_time(&self) -> f64 {
        self.wall_offset + self.started.elapsed().as_secs_f64()
    }

    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.send(Event::Log {
            run: self.id.clone(),
            level,
            message: message.into(),
        });
    }

    pub fn status(&self, status: RunStatus) {
        self.send(Event::Status {
            run: self.id.clone(),
            status,
        });
    }

    /// Follows `[train] keep_best`: the best value so far is read back from an earlier
    /// `checkpoints/best/best.json` (a resumed run does not forget it).
    pub fn keep_best(&mut self, metric: &str, greater_is_better: bool) {
        self.keep_best = Some((metric.to_string(), greater_is_better));
        self.best = std::fs::read_to_string(self.dir.best_dir().join(BEST_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<BestSoFar>(&t).ok())
            .filter(|b| b.metric == metric);
    }

    /// Whether the newest metrics set a new best (then the caller saves `checkpoints/best`
    /// and calls [`RunContext::note_best`]).
    pub fn take_best_improved(&mut self) -> bool {
        std::mem::take(&mut self.best_improved)
    }

    /// Records the best value beside the saved best checkpoint.
    pub fn note_best(&self) {
        if let Some(best) = &self.best {
            let path = self.dir.best_dir().join(BEST_FILE);
            let text = serde_json::to_string_pretty(best).unwrap_or_default();
            if let Err(e) = fs::write(&path, text) {
                self.log(LogLevel::Warn, format!("writing {}: {e}", path.display()));
            } else {
                self.log(
                    LogLevel::Info,
                    format!(
                        "best {} so far: {} at step {} (checkpoints/best)",
                        best.metric, best.value, best.step
                    ),
                );
                self.send(Event::Best {
                    run: self.id.clone(),
                    best: best.clone(),
                });
            }
        }
    }

    /// Also writes every metrics row to a TensorBoard event file in the run folder (a new
    /// file per start, as TensorBoard's writers do; it reads them all in order).
    /// What the config asks of the run folder and its events: pairs to label, the best
    /// checkpoint, TensorBoard files, alerts.
    pub fn configure(&mut self, cfg: &crate::engine::config::RunConfig) {
        self.pairs_per_step = cfg.pairs_per_step();
        if let Some(metric) = &cfg.train.keep_best {
            self.keep_best(metric, cfg.train.greater_is_better);
        }
        if cfg
            .train
            .report_to
            .contains(&crate::engine::config::ReportTo::Tensorboard)
        {
            self.report_to_tensorboard();
        }
        if let Some(a) = &cfg.alerts {
            self.alert_on(a.clone());
        }
    }

    /// Sends `[alerts]` when the run's health warnings appear.
    pub fn alert_on(&mut self, cfg: crate::engine::alerts::AlertsSection) {
        self.alerts = Some(crate::engine::alerts::Alerter::new(
            cfg,
            &self.id,
            &self.dir.path,
            self.events.clone(),
        ));
    }

    pub fn report_to_tensorboard(&mut self) {
        match crate::engine::tensorboard::EventFileWriter::create(&self.dir.path) {
            Ok(w) => self.tensorboard = Some(w),
            Err(e) => self.log(LogLevel::Warn, format!("TensorBoard: {e}")),
        }
    }

    /// Appends to `metrics.jsonl` and reports the values.
    pub fn metrics(&mut self, step: usize, mut values: BTreeMap<String, f64>) {
        self.last_step = step;
        if let Some((metric, greater)) = &self.keep_best
            && step > 0
            && let Some(&v) = values.get(metric)
            && v.is_finite()
        {
            let better = self
                .best
                .as_ref()
                .is_none_or(|b| if *greater { v > b.value } else { v < b.value });
            if better {
                self.best = Some(BestSoFar {
                    metric: metric.clone(),
                    value: v,
                    step,
                });
                self.best_improved = true;
            }
        }
        // Under mixed precision: the loss scale and the steps skipped on overflow.
        for (name, value) in crate::engine::model::precision::metrics() {
            values.insert(name.into(), value);
        }
        let row = MetricsRow {
            step,
            wall_time: self.wall_time(),
            values,
        };
        if let Err(e) = self.dir.append_metrics(&row) {
            self.log(LogLevel::Error, format!("writing metrics.jsonl: {e}"));
        }
        if let Some(a) = self.alerts.as_mut() {
            for alert in a.observe(step, &row.values) {
                self.log(LogLevel::Warn, format!("alert: {}", alert.line()));
            }
        }
        if let Some(tb) = self.tensorboard.as_mut() {
            // TensorBoard's time axis is Unix time.
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let written = tb
                .scalars(step, unix, row.values.iter().map(|(k, v)| (k.as_str(), *v)))
                .and_then(|()| tb.flush());
            if let Err(e) = written {
                self.tensorboard = None;
                self.log(LogLevel::Warn, format!("TensorBoard, stopped writing: {e}"));
            }
        }
        self.send(Event::Metrics {
            run: self.id.clone(),
            step,
            wall_time: row.wall_time,
            values: row.values,
        });
    }

    pub fn samples(&mut self, step: usize, samples: Vec<SampleRecord>) {
        if let Err(e) = self.dir.append_samples(&samples) {
            self.log(LogLevel::Error, format!("writing samples.jsonl: {e}"));
        }
        if self.pairs_per_step > 0 {
            self.propose_pairs(step, &samples);
        }
        self.send(Event::Samples {
            run: self.id.clone(),
            step,
            samples,
        });
    }

    /// Pairs from this step's samples, at most `pairs_per_step`: appended to the run's
    /// `pairs.jsonl` (synced, so a crash loses none) and sent for the Pairs pane.
    fn propose_pairs(&mut self, step: usize, samples: &[SampleRecord]) {
        use crate::engine::labels::{RUN_PAIRS_FILE, append_proposed};
        let pairs = self
            .pair_builder
            .propose(&self.id, step, samples, self.pairs_per_step);
        if pairs.is_empty() {
            return;
        }
        let path = self.dir.path.join(RUN_PAIRS_FILE);
        if let Err(e) = append_proposed(&path, &pairs) {
            self.log(LogLevel::Error, format!("writing {}: {e}", path.display()));
            return;
        }
        self.send(Event::Pairs {
            run: self.id.clone(),
            step,
            pairs,
        });
    }

    /// Drains pending commands. While paused, blocks here (the only place a trainer waits)
    /// until resumed or stopped. A `Save` while paused returns at once so the checkpoint is
    /// written now; the next call waits again.
    pub fn poll(&mut self) -> Control {
        let mut control = Control::Continue;
        loop {
            let paused = self.paused;
            let next = if paused {
                self.commands.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                self.commands.try_recv()
            };
            match next {
                Ok(Command::Pause) => {
                    if !paused {
                        self.paused = true;
                        self.status(RunStatus::Paused);
                    }
                }
                Ok(Command::Resume) => {
                    if paused {
                        self.paused = false;
                        self.status(RunStatus::Running);
                    }
                }
                Ok(Command::Save) if paused => return Control::Save,
                Ok(Command::Save) => control = Control::Save,
                Ok(Command::Stop) => {
                    self.paused = false;
                    return Control::Stop;
                }
                Err(TryRecvError::Empty) => return control,
                // Nobody can resume us any more: keep training rather than hang.
                Err(TryRecvError::Disconnected) => {
                    if paused {
                        self.paused = false;
                        self.status(RunStatus::Running);
                    }
                    return control;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_csv_has_a_column_per_metric_and_blanks_where_a_step_lacks_one() {
        let row = |step, pairs: &[(&str, f64)]| MetricsRow {
            step,
            wall_time: step as f64 * 0.5,
            values: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let rows = [
            row(1, &[("loss", 2.5), ("a,b", 1.0)]),
            row(2, &[("loss", 2.0), ("eval_loss", 2.25)]),
        ];
        assert_eq!(
            metrics_csv(&rows),
            "step,wall_time,\"a,b\",eval_loss,loss\n1,0.5,1,,2.5\n2,1,,2.25,2\n"
        );
    }

    #[test]
    fn metrics_survive_and_torn_lines_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = RunDir::create_unique(tmp.path(), "r").unwrap();
        let row = MetricsRow {
            step: 1,
            wall_time: 0.5,
            values: BTreeMap::from([("loss".to_string(), 2.0)]),
        };
        dir.append_metrics(&row).unwrap();
        // A kill in the middle of a write leaves a partial line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path.join("metrics.jsonl"))
            .unwrap();
        write!(f, "{{\"step\": 2, \"wall_ti").unwrap();
        let rows = read_metrics(&dir.path.join("metrics.jsonl")).unwrap();
        assert_eq!(rows, vec![row]);
        let again = RunDir::create_unique(tmp.path(), "r").unwrap();
        assert!(again.path.ends_with("r-2"));
    }

    #[test]
    fn a_checkpoint_asked_for_while_paused_is_written_at_once_and_the_pause_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create_unique(tmp.path(), "r").unwrap();
        let (etx, _erx) = crossbeam_channel::unbounded();
        let (cmd, crx) = crossbeam_channel::unbounded();
        let mut ctx = RunContext::new(dir, etx, crx);
        cmd.send(Command::Pause).unwrap();
        cmd.send(Command::Save).unwrap();
        // Save returns while still paused...
        assert_eq!(ctx.poll(), Control::Save);
        // ...and the next poll waits again until resumed.
        let t = std::thread::spawn(move || ctx.poll());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!t.is_finished(), "the run went on while paused");
        cmd.send(Command::Resume).unwrap();
        assert_eq!(t.join().unwrap(), Control::Continue);
    }

    #[test]
    fn non_finite_values_survive_a_round_trip_and_python_s_nan_is_read() {
        let row = MetricsRow {
            step: 3,
            wall_time: 1.5,
            values: BTreeMap::from([("loss".to_string(), f64::NAN), ("kl".to_string(), 0.25)]),
        };
        let line = serde_json::to_string(&row).unwrap();
        assert!(line.contains("\"loss\":null"), "{line}");
        let back = MetricsRow::parse(&line).unwrap();
        assert!(back.values["loss"].is_nan());
        assert_eq!(back.values["kl"], 0.25);
        let py = MetricsRow::parse(r#"{"step": 4, "loss": NaN, "grad_norm": Infinity, "kl": 0.5}"#)
            .unwrap();
        assert_eq!(py.step, 4);
        assert!(py.values["loss"].is_nan() && py.values["grad_norm"].is_nan());
        assert_eq!(py.values["kl"], 0.5);
        assert!(MetricsRow::parse("{\"no_step\": 1}").is_none());
    }

    /// `[alerts]` on an rlft run: the NaN that the Health pane shows also runs the command,
    /// once, and the Log says so.
    #[test]
    fn a_run_with_alerts_runs_the_command_when_a_warning_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create_unique(tmp.path(), "grpo").unwrap();
        let out = tmp.path().join("alert.txt");
        let (etx, erx) = crossbeam_channel::unbounded();
        let (_cmd, crx) = crossbeam_channel::unbounded();
        let mut ctx = RunContext::new(dir, etx, crx);
        ctx.alert_on(crate::engine::alerts::AlertsSection {
            command: Some(format!("echo \"$RLFT_ALERT\" > '{}'", out.display())),
            ..Default::default()
        });
        for step in 1..=3 {
            let loss = if step == 3 { f64::NAN } else { 0.5 };
            ctx.metrics(step, BTreeMap::from([("loss".to_string(), loss)]));
        }
        let mut logs = Vec::new();
        while logs.len() < 2 {
            if let Event::Log { message, .. } = erx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap()
            {
                logs.push(message);
            }
        }
        assert!(
            logs[0].starts_with("alert: rlft run grpo, step 3: NaN/inf"),
            "{logs:?}"
        );
        assert_eq!(logs[1], "alert command ran: NaN/inf in metrics");
        let said = std::fs::read_to_string(&out).unwrap();
        assert!(
            said.starts_with("rlft run grpo, step 3: NaN/inf in metrics (critical)"),
            "{said}"
        );
    }

    #[test]
    fn samples_become_capped_pairs_on_disk_and_as_events() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create_unique(tmp.path(), "grpo").unwrap();
        let (etx, erx) = crossbeam_channel::unbounded();
        let (_cmd, crx) = crossbeam_channel::unbounded();
        let mut ctx = RunContext::new(dir, etx, crx);
        let sample = |p: &str, c: &str| SampleRecord {
            step: 1,
            prompt: p.into(),
            completion: c.into(),
            rewards: BTreeMap::new(),
            advantage: None,
        };
        let step: Vec<SampleRecord> = (0..8).map(|i| sample("1+1=", &i.to_string())).collect();
        // Off by default: samples only.
        ctx.samples(1, step.clone());
        ctx.pairs_per_step = 2;
        ctx.samples(2, step);
        let pairs: Vec<_> = erx
            .try_iter()
            .filter_map(|e| match e {
                Event::Pairs { pairs, .. } => Some(pairs),
                _ => None,
            })
            .collect();
        assert_eq!(pairs.len(), 1, "pairs only once asked for");
        assert_eq!(pairs[0].len(), 2, "capped at per_step");
        assert!(pairs[0].iter().all(|p| p.pair.run == "grpo"));
        let on_disk = crate::engine::labels::read_proposed(
            &tmp.path()
                .join("grpo")
                .join(crate::engine::labels::RUN_PAIRS_FILE),
        )
        .unwrap();
        assert_eq!(on_disk, pairs[0]);
    }

    #[test]
    fn keep_best_follows_the_metric_either_way_and_survives_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create_unique(tmp.path(), "r").unwrap();
        let (etx, _erx) = crossbeam_channel::unbounded();
        let (_cmd, crx) = crossbeam_channel::unbounded();
        let mut ctx = RunContext::new(dir, etx, crx);
        ctx.keep_best("eval_loss", false);
        let row = |v: f64| BTreeMap::from([("eval_loss".to_string(), v)]);
        ctx.metrics(0, row(0.1)); // before training: not a checkpoint of this run
        assert!(!ctx.take_best_improved());
        ctx.metrics(1, row(2.0));
        assert!(ctx.take_best_improved());
        ctx.metrics(2, row(3.0));
        assert!(!ctx.take_best_improved(), "lower is better");
        ctx.metrics(3, BTreeMap::new());
        assert!(!ctx.take_best_improved());
        ctx.metrics(4, row(1.5));
        assert!(ctx.take_best_improved());
        std::fs::create_dir_all(ctx.dir.best_dir()).unwrap();
        ctx.note_best();
        // A resumed run reads the best back and is not fooled by a worse value.
        let (etx, _erx) = crossbeam_channel::unbounded();
        let (_cmd, crx) = crossbeam_channel::unbounded();
        let mut again = RunContext::new(RunDir::open(&tmp.path().join("r")).unwrap(), etx, crx);
        again.keep_best("eval_loss", false);
        again.metrics(5, row(1.7));
        assert!(!again.take_best_improved());
    }

    #[test]
    fn pause_blocks_until_resume_and_stop_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create_unique(tmp.path(), "r").unwrap();
        let (etx, erx) = crossbeam_channel::unbounded();
        let (ctx_tx, crx) = crossbeam_channel::unbounded();
        let mut ctx = RunContext::new(dir, etx, crx);
        assert_eq!(ctx.poll(), Control::Continue);
        ctx_tx.send(Command::Save).unwrap();
        assert_eq!(ctx.poll(), Control::Save);
        ctx_tx.send(Command::Pause).unwrap();
        let t = std::thread::spawn(move || ctx.poll());
        std::thread::sleep(std::time::Duration::from_millis(50));
        ctx_tx.send(Command::Resume).unwrap();
        assert_eq!(t.join().unwrap(), Control::Continue);
        let statuses: Vec<_> = erx
            .try_iter()
            .filter_map(|e| match e {
                Event::Status { status, .. } => Some(status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, vec![RunStatus::Paused, RunStatus::Running]);
    }
}
