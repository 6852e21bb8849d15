//! Watching runs of other engines (TRL, verl, OpenRLHF) as they train: a thread per run tails
//! what the engine writes and sends the same [`Event`]s rlft's own runs send, so every pane
//! (curves, samples, health) works on them unchanged.
//!
//! Sources, found from the path given:
//! - a folder with TensorBoard event files (TRL's and OpenRLHF's `tensorboard` logging, verl's
//!   `tensorboard` logger), searched recursively; text summaries become samples;
//! - verl's `file` logger JSONL (`{"step": N, "data": {...}}` a line), with the samples of
//!   `rollout_data_dir` (`<step>.jsonl` rows of `input`, `output`, `score`) when a folder of
//!   them sits beside it or is given;
//! - a folder in rlft's own format (`metrics.jsonl`, `samples.jsonl`), as rlft's TRL callback
//!   (`integrations/trl/`) writes it.
//!
//! A folder `rlft launch` made also has `job.json`: the job's state (a local process, a Ray or
//! Slurm job) is asked for every [`JOB_POLL`] and sent as [`Event::Job`]; the job ending ends
//! the run if the folder's `status.json` has not.
//!
//! Metric names are mapped to rlft's where the meaning is the same ([`rlft_name`]); the
//! original names are kept beside them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::engine::events::{Event, JobView, LogLevel, RunStatus, SampleRecord};
use crate::engine::launch::{Job, JobState};
use crate::engine::tensorboard::{EventFileReader, Logged, event_files, values_of};

/// How often a watched run's files are looked at again. TensorBoard's writers flush every
/// few seconds at most (PyTorch: 120 s by default, TRL's callback at every log).
pub const POLL: Duration = Duration::from_millis(500);
/// Pairs proposed for labelling from each step of a watched run's samples (two answers to
/// the same prompt), as `[pairs] per_step` does for rlft's runs.
pub const WATCH_PAIRS_PER_STEP: usize = 2;

/// How often a launched job's state is asked for (an HTTP request to a Ray head, `squeue`).
pub const JOB_POLL: Duration = Duration::from_secs(2);

/// What a watched path holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    TensorBoard(PathBuf),
    /// verl's file logger, and the rollout dumps folder if there is one.
    VerlJsonl {
        file: PathBuf,
        rollouts: Option<PathBuf>,
    },
    /// rlft's own run-folder format.
    RlftFolder(PathBuf),
}

impl Source {
    /// What `path` is: a JSONL file is verl's log; a folder with `metrics.jsonl` is rlft's
    /// format; a folder with event files (at any depth) is TensorBoard's.
    pub fn detect(path: &Path) -> Result<Self, String> {
        if path.is_file() {
            if path.extension().is_some_and(|e| e == "jsonl") {
                let rollouts = path
                    .parent()
                    .map(|d| d.join("rollouts"))
                    .filter(|d| d.is_dir());
                return Ok(Source::VerlJsonl {
                    file: path.to_path_buf(),
                    rollouts,
                });
            }
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("tfevents"))
            {
                return Ok(Source::TensorBoard(path.to_path_buf()));
            }
            return Err(format!(
                "{}: not a TensorBoard event file or a verl JSONL log",
                path.display()
            ));
        }
        // A folder `rlft launch` made: what its engine writes there, even before it has.
        match crate::engine::launch::Job::engine(path).as_deref() {
            Some("verl") => {
                return Ok(Source::VerlJsonl {
                    file: path.join("verl.jsonl"),
                    rollouts: Some(path.join("rollouts")),
                });
            }
            Some("openrlhf") => return Ok(Source::TensorBoard(path.join("tensorboard"))),
            _ => {}
        }
        if path.join("metrics.jsonl").is_file()
            || path.join(crate::engine::launch::JOB_FILE).is_file()
        {
            return Ok(Source::RlftFolder(path.to_path_buf()));
        }
        if path.is_dir() {
            if !event_files(path).is_empty() {
                return Ok(Source::TensorBoard(path.to_path_buf()));
            }
            return Err(format!(
                "{}: no TensorBoard event files, metrics.jsonl or verl log in it (yet)",
                path.display()
            ));
        }
        Err(format!("{}: no such file or folder", path.display()))
    }

    /// The engine as shown in the Runs pane's method column.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::TensorBoard(_) => "tboard",
            Source::VerlJsonl { .. } => "verl",
            Source::RlftFolder(_) => "trl",
        }
    }
}

/// rlft's name for an engine's metric, where the meaning is the same (`None` otherwise):
/// the Hugging Face trainer's `train/` prefix (TRL, OpenRLHF) is dropped, and verl's names
/// are mapped to TRL's.
pub fn rlft_name(name: &str) -> Option<&str> {
    let verl = match name {
        "critic/score/mean" => Some("reward"),
        "critic/score/std" => Some("reward_std"),
        "actor/entropy" => Some("entropy"),
        "actor/pg_loss" => Some("loss"),
        "actor/kl_loss" => Some("kl"),
        "actor/grad_norm" => Some("grad_norm"),
        "actor/pg_clipfrac" => Some("clip_ratio/region_mean"),
        "response_length/mean" => Some("completions/mean_length"),
        "response_length/clip_ratio" => Some("completions/clipped_ratio"),
        "actor/lr" => Some("learning_rate"),
        _ => None,
    };
    if verl.is_some() {
        return verl;
    }
    match name.strip_prefix("train/") {
        // OpenRLHF's names for what TRL calls these.
        Some("policy_loss") => Some("loss"),
        Some("response_length") => Some("completions/mean_length"),
        Some(rest) if !rest.is_empty() => Some(rest),
        _ => None,
    }
}

/// A metrics row with each mapped name added beside the original.
pub fn with_rlft_names(values: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = values.clone();
    for (name, v) in values {
        if let Some(mapped) = rlft_name(&name)
            && !out.contains_key(mapped)
        {
            out.insert(mapped.to_string(), v);
        }
    }
    out
}

/// A watched run: its thread stops when the handle's `stop` is set.
pub struct Watch {
    pub id: String,
    pub source: Source,
    pub stop: Arc<AtomicBool>,
    /// Set to stop the run's launched job (`x` in the Runs pane); the thread clears it.
    pub stop_job: Arc<AtomicBool>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts watching `path` as run `id`: a `Started` event, then metrics and samples as they
/// appear, polled every [`POLL`]. Errors while reading (a corrupt file) are logged once and
/// the watch goes on with the other files.
pub fn spawn(path: &Path, id: String, events: Sender<Event>) -> Result<Watch, String> {
    let source = Source::detect(path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_job = Arc::new(AtomicBool::new(false));
    let (thread_source, thread_stop, thread_id) = (source.clone(), stop.clone(), id.clone());
    let thread_stop_job = stop_job.clone();
    let run_dir = path.to_path_buf();
    // Known for folders rlft's TRL callback writes (`[train] max_steps` in its config.toml).
    let total_steps = match &source {
        Source::RlftFolder(dir) => std::fs::read_to_string(dir.join("config.toml"))
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t.get("train")?.get("max_steps")?.as_integer())
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0),
        _ => 0,
    };
    let thread = std::thread::Builder::new()
        .name(format!("watch-{id}"))
        .spawn(move || {
            let _ = events.send(Event::Started {
                run: thread_id.clone(),
                method: thread_source.kind().into(),
                run_dir,
                total_steps,
                model: None,
            });
            let mut tail = Tail::new(thread_source.clone());
            tail.propose_pairs(WATCH_PAIRS_PER_STEP);
            if let Source::RlftFolder(dir) = &thread_source {
                match read_alerts(dir) {
                    Ok(Some(cfg)) => tail.alert_on(crate::engine::alerts::Alerter::new(
                        cfg,
                        &thread_id,
                        dir,
                        events.clone(),
                    )),
                    Ok(None) => {}
                    Err(e) => {
                        let _ = events.send(log(&thread_id, LogLevel::Warn, e));
                    }
                }
            }
            while !thread_stop.load(Ordering::Relaxed) {
                if thread_stop_job.swap(false, Ordering::Relaxed) {
                    let said = match tail.stop_job() {
                        Ok(what) => log(&thread_id, LogLevel::Info, format!("stopping {what}")),
                        Err(e) => log(&thread_id, LogLevel::Error, e),
                    };
                    let _ = events.send(said);
                }
                for ev in tail.poll(&thread_id) {
                    if events.send(ev).is_err() {
                        return;
                    }
                }
                std::thread::sleep(POLL);
            }
            let _ = events.send(Event::Status {
                run: thread_id,
                status: RunStatus::Stopped,
            });
        })
        .map_err(|e| format!("starting a watcher: {e}"))?;
    Ok(Watch {
        id,
        source,
        stop,
        stop_job,
        thread,
    })
}

/// The file `rlft launch` writes the config's `[alerts]` to, in the run folder.
pub const ALERTS_FILE: &str = "alerts.toml";

/// `dir/alerts.toml`, if there is one.
pub fn read_alerts(dir: &Path) -> Result<Option<crate::engine::alerts::AlertsSection>, String> {
    let path = dir.join(ALERTS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let cfg: crate::engine::alerts::AlertsSection =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    cfg.validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(cfg))
}

/// Where each watched file has been read up to.
pub struct Tail {
    source: Source,
    tensorboard: Vec<EventFileReader>,
    /// Byte offsets of JSONL files (metrics, samples) read so far, and any partial last line.
    jsonl: BTreeMap<PathBuf, (u64, String)>,
    /// Rollout dump files already read (verl writes each step's file once).
    rollouts_read: std::collections::BTreeSet<PathBuf>,
    /// Files already reported as unreadable.
    reported: std::collections::BTreeSet<PathBuf>,
    /// The end (finished or failed) an rlft-format folder's `status.json` reported.
    ended: bool,
    /// Hugging Face `checkpoint-N` folders already reported.
    checkpoints: std::collections::BTreeSet<PathBuf>,
    /// The newest TensorBoard step's values, held back until a later step (or a quiet poll)
    /// shows they are all in, so a step whose values straddle two polls is one row.
    held: Option<(i64, f64, BTreeMap<String, f64>)>,
    /// A launched job's record, when it was last asked about, and what it last said.
    job: Option<Job>,
    job_asked: Option<std::time::Instant>,
    job_seen: Option<JobView>,
    /// The newest step seen (a job's end is reported at it).
    last_step: usize,
    /// `[alerts]` of the config `rlft launch` started (the folder's `alerts.toml`).
    alerts: Option<crate::engine::alerts::Alerter>,
    /// Pairs for people to label, from the run's samples.
    pairs: Option<WatchPairs>,
}

/// Pairs proposed from a watched run's samples, queued in the run's folder (`pairs.jsonl`,
/// where the workbench finds them again after a restart).
struct WatchPairs {
    builder: crate::engine::labels::PairBuilder,
    per_step: usize,
    file: PathBuf,
    /// Pairs already in the file: reading the run again after a restart proposes them again.
    known: std::collections::HashSet<String>,
    warned: bool,
}

impl Tail {
    pub fn new(source: Source) -> Self {
        Self {
            source,
            tensorboard: Vec::new(),
            jsonl: BTreeMap::new(),
            rollouts_read: Default::default(),
            reported: Default::default(),
            ended: false,
            checkpoints: Default::default(),
            held: None,
            job: None,
            job_asked: None,
            job_seen: None,
            last_step: 0,
            alerts: None,
            pairs: None,
        }
    }

    /// Proposes up to `per_step` pairs from each step's samples for people to label.
    pub fn propose_pairs(&mut self, per_step: usize) {
        let Some(folder) = self.folder() else {
            return;
        };
        let file = folder.join(crate::engine::labels::RUN_PAIRS_FILE);
        let known = crate::engine::labels::read_proposed(&file)
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.pair.id)
            .collect();
        self.pairs = Some(WatchPairs {
            builder: crate::engine::labels::PairBuilder::new(),
            per_step,
            file,
            known,
            warned: false,
        });
    }

    /// The folder the watched run's files are in.
    fn folder(&self) -> Option<PathBuf> {
        match &self.source {
            Source::RlftFolder(dir) => Some(dir.clone()),
            Source::VerlJsonl { file, .. } => file.parent().map(Path::to_path_buf),
            Source::TensorBoard(p) if p.is_file() => p.parent().map(Path::to_path_buf),
            Source::TensorBoard(p) => Some(p.clone()),
        }
    }

    /// Pairs from the samples among `out`, saved to the queue file and sent.
    fn pairs_from_samples(&mut self, id: &str, out: &mut Vec<Event>) {
        let Some(wp) = self.pairs.as_mut() else {
            return;
        };
        let mut new = Vec::new();
        for ev in out.iter() {
            if let Event::Samples { step, samples, .. } = ev {
                let pairs = wp.builder.propose(id, *step, samples, wp.per_step);
                if !pairs.is_empty() {
                    new.push((*step, pairs));
                }
            }
        }
        for (step, pairs) in new {
            // Saved once; sent every time (the queue takes each pair once), so pairs of a
            // folder outside the runs folder come back after a restart too.
            let fresh: Vec<_> = pairs
                .iter()
                .filter(|p| wp.known.insert(p.pair.id.clone()))
                .cloned()
                .collect();
            if !fresh.is_empty()
                && let Err(e) = crate::engine::labels::append_proposed(&wp.file, &fresh)
                && !wp.warned
            {
                wp.warned = true;
                out.push(log(
                    id,
                    LogLevel::Warn,
                    format!(
                        "{}: {e}: pairs to label are kept until rlft quits",
                        wp.file.display()
                    ),
                ));
            }
            out.push(Event::Pairs {
                run: id.to_string(),
                step,
                pairs,
            });
        }
    }

    /// Sends `[alerts]` when the watched run's health warnings appear.
    pub fn alert_on(&mut self, alerter: crate::engine::alerts::Alerter) {
        self.alerts = Some(alerter);
    }

    /// The run folder a launched job records itself in: the folder watched, or the one the
    /// watched log is in (`verl.jsonl`, `tensorboard/`).
    fn run_dir(&self) -> Option<PathBuf> {
        let dir = match &self.source {
            Source::RlftFolder(dir) => return Some(dir.clone()),
            Source::VerlJsonl { file, .. } => file.parent()?.to_path_buf(),
            Source::TensorBoard(p) if p.file_name().is_some_and(|n| n == "tensorboard") => {
                p.parent()?.to_path_buf()
            }
            Source::TensorBoard(p) if p.is_dir() => p.clone(),
            Source::TensorBoard(p) => p.parent()?.to_path_buf(),
        };
        dir.join(crate::engine::launch::JOB_FILE)
            .is_file()
            .then_some(dir)
    }

    /// Stops the folder's launched job; says which job, or why not.
    pub fn stop_job(&mut self) -> Result<String, String> {
        let Some(dir) = &self.run_dir() else {
            return Err("this run was not launched by rlft: there is no job to stop".into());
        };
        let job = match &self.job {
            Some(j) => j.clone(),
            None => match Job::read(dir) {
                Some(Ok(j)) => j,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(format!(
                        "{}: no job.json: rlft did not launch this run",
                        dir.display()
                    ));
                }
            },
        };
        job.stop(dir)
            .map_err(|e| format!("stopping {}: {e}", job.describe()))?;
        // Asked again at the next poll.
        self.job_asked = None;
        Ok(job.describe())
    }

    /// The launched job's state, every [`JOB_POLL`], as an event when it changed; its end
    /// ends the run when the folder's `status.json` has not.
    fn poll_job(&mut self, dir: &Path, id: &str, out: &mut Vec<Event>) {
        if self.job_asked.is_some_and(|t| t.elapsed() < JOB_POLL)
            || self
                .job_seen
                .as_ref()
                .is_some_and(|v| matches!(v.state.as_str(), "succeeded" | "failed" | "stopped"))
        {
            return;
        }
        if self.job.is_none() {
            match Job::read(dir) {
                None => return,
                Some(Ok(j)) => self.job = Some(j),
                Some(Err(e)) => {
                    if self
                        .reported
                        .insert(dir.join(crate::engine::launch::JOB_FILE))
                    {
                        out.push(log(id, LogLevel::Error, e));
                    }
                    return;
                }
            }
        }
        let Some(job) = self.job.clone() else {
            return;
        };
        self.job_asked = Some(std::time::Instant::now());
        let (state, detail) = match job.state(dir) {
            Ok(JobState::Failed(why)) => (JobState::Failed(why.clone()), Some(why)),
            Ok(s) => (s, None),
            Err(e) => {
                let view = JobView {
                    describe: job.describe(),
                    state: "unknown".into(),
                    detail: Some(e.to_string()),
                    pid: job.pid(),
                };
                if self.job_seen.as_ref() != Some(&view) {
                    out.push(log(id, LogLevel::Warn, e.to_string()));
                    self.job_seen = Some(view.clone());
                    out.push(Event::Job {
                        run: id.to_string(),
                        job: view,
                    });
                }
                return;
            }
        };
        let view = JobView {
            describe: job.describe(),
            state: state.word().into(),
            detail: detail.clone(),
            pid: job.pid(),
        };
        if self.job_seen.as_ref() == Some(&view) {
            return;
        }
        self.job_seen = Some(view.clone());
        out.push(Event::Job {
            run: id.to_string(),
            job: view,
        });
        if !state.is_final() {
            return;
        }
        // OpenRLHF saves the trained model (or adapter) to `final/` as it ends: whole now.
        let last = dir.join("final");
        if state == JobState::Succeeded
            && (last.join("config.json").is_file() || last.join("adapter_config.json").is_file())
            && self.checkpoints.insert(last.clone())
        {
            out.push(Event::Checkpoint {
                run: id.to_string(),
                step: self.last_step,
                path: last,
            });
        }
        if self.ended {
            return;
        }
        // The callback's status.json may land just after the process ends: look once more.
        self.poll_status(dir, id, out);
        if self.ended {
            return;
        }
        self.ended = true;
        let run = id.to_string();
        let step = out
            .iter()
            .filter_map(|e| match e {
                Event::Metrics { step, .. } => Some(*step),
                _ => None,
            })
            .max()
            .unwrap_or(self.last_step);
        match state {
            JobState::Failed(why) => {
                let tail = job.log_tail(dir, 12);
                if let Some(t) = &tail {
                    out.push(log(
                        id,
                        LogLevel::Error,
                        format!("{} output, last lines:\n{t}", job.describe()),
                    ));
                }
                out.push(Event::Failed {
                    run,
                    step: Some(step),
                    error: format!("{} failed: {why}", job.describe()),
                });
            }
            JobState::Stopped => out.push(Event::Finished {
                run,
                step,
                status: RunStatus::Stopped,
            }),
            _ => out.push(Event::Finished {
                run,
                step,
                status: RunStatus::Finished,
            }),
        }
    }

    /// Everything new since the last poll, as events of run `id`.
    pub fn poll(&mut self, id: &str) -> Vec<Event> {
        let mut out = Vec::new();
        self.poll_checkpoints(id, &mut out);
        match self.source.clone() {
            Source::TensorBoard(path) => self.poll_tensorboard(&path, id, &mut out),
            Source::VerlJsonl { file, rollouts } => {
                for line in self.new_lines(&file, id, &mut out) {
                    if let Some((step, values)) = verl_row(&line) {
                        out.push(metrics(id, step, 0.0, values));
                    }
                }
                if let Some(dir) = rollouts {
                    self.poll_rollouts(&dir, id, &mut out);
                }
            }
            Source::RlftFolder(dir) => {
                for line in self.new_lines(&dir.join("metrics.jsonl"), id, &mut out) {
                    if let Some(row) = crate::engine::run::MetricsRow::parse(&line) {
                        out.push(metrics(id, row.step, row.wall_time, row.values));
                    }
                }
                let mut by_step: BTreeMap<usize, Vec<SampleRecord>> = BTreeMap::new();
                for line in self.new_lines(&dir.join("samples.jsonl"), id, &mut out) {
                    if let Ok(s) = serde_json::from_str::<SampleRecord>(&line) {
                        by_step.entry(s.step).or_default().push(s);
                    }
                }
                for (step, samples) in by_step {
                    out.push(Event::Samples {
                        run: id.to_string(),
                        step,
                        samples,
                    });
                }
                self.poll_status(&dir, id, &mut out);
            }
        }
        if let Some(dir) = self.run_dir() {
            self.poll_job(&dir, id, &mut out);
        }
        self.pairs_from_samples(id, &mut out);
        let mut alerts = Vec::new();
        for ev in &out {
            if let Event::Metrics { step, values, .. } = ev {
                self.last_step = self.last_step.max(*step);
                if let Some(a) = self.alerts.as_mut() {
                    alerts.extend(a.observe(*step, values));
                }
            }
        }
        for a in alerts {
            out.push(log(id, LogLevel::Warn, format!("alert: {}", a.line())));
        }
        out
    }

    fn poll_tensorboard(&mut self, path: &Path, id: &str, out: &mut Vec<Event>) {
        let files = if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            event_files(path)
        };
        for f in files {
            if !self.tensorboard.iter().any(|r| r.path() == f) {
                self.tensorboard.push(EventFileReader::new(f));
            }
        }
        let mut rows: BTreeMap<i64, (f64, BTreeMap<String, f64>)> = BTreeMap::new();
        let mut texts: BTreeMap<i64, Vec<SampleRecord>> = BTreeMap::new();
        for r in &mut self.tensorboard {
            let events = match r.poll() {
                Ok(e) => e,
                Err(e) => {
                    if self.reported.insert(r.path().to_path_buf()) {
                        out.push(log(id, LogLevel::Warn, e.to_string()));
                    }
                    continue;
                }
            };
            for logged in events.iter().flat_map(values_of) {
                match logged {
                    Logged::Scalar {
                        step,
                        wall_time,
                        tag,
                        value,
                    } => {
                        let row = rows.entry(step).or_insert((wall_time, BTreeMap::new()));
                        row.1.insert(tag, value);
                    }
                    Logged::Text {
                        step, tag, text, ..
                    } => {
                        texts.entry(step).or_default().push(SampleRecord {
                            step: step.max(0) as usize,
                            prompt: tag,
                            completion: text,
                            rewards: BTreeMap::new(),
                            advantage: None,
                        });
                    }
                }
            }
        }
        if rows.is_empty() {
            // A quiet poll: the held step has all its values.
            if let Some((step, wall, values)) = self.held.take() {
                out.push(metrics(id, step.max(0) as usize, wall, values));
            }
        } else {
            if let Some((step, wall, values)) = self.held.take() {
                let row = rows.entry(step).or_insert((wall, BTreeMap::new()));
                for (k, v) in values {
                    row.1.entry(k).or_insert(v);
                }
            }
            let newest = rows.keys().next_back().copied();
            for (step, (wall, values)) in rows {
                if Some(step) == newest {
                    self.held = Some((step, wall, values));
                } else {
                    out.push(metrics(id, step.max(0) as usize, wall, values));
                }
            }
        }
        for (step, samples) in texts {
            out.push(Event::Samples {
                run: id.to_string(),
                step: step.max(0) as usize,
                samples,
            });
        }
    }

    /// Checkpoints the Hugging Face trainer (TRL) saved, `output_dir/checkpoint-N`, once each
    /// is whole (its `trainer_state.json`, written last, is there): they are model folders
    /// (or PEFT adapters) that `rlft generate`, `serve`, `judge` and new runs load as they are.
    fn poll_checkpoints(&mut self, id: &str, out: &mut Vec<Event>) {
        let root = match &self.source {
            Source::TensorBoard(p) | Source::RlftFolder(p) => p.clone(),
            Source::VerlJsonl { file, .. } => match file.parent() {
                Some(p) => p.to_path_buf(),
                None => return,
            },
        };
        // Watching `output_dir/runs` (TRL's TensorBoard folder): the checkpoints are above.
        // A launched verl run keeps its checkpoints in `checkpoints/global_step_N`.
        let mut dirs = match (root.file_name(), root.parent()) {
            (Some(n), Some(parent)) if n == "runs" || n == "tensorboard" => {
                vec![root.clone(), parent.to_path_buf()]
            }
            _ => vec![root.clone()],
        };
        dirs.push(root.join("checkpoints"));
        let mut found: Vec<(usize, PathBuf)> = dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|entries| entries.flatten())
            .filter_map(|e| {
                let p = e.path();
                let name = p.file_name()?.to_str()?;
                // TRL's HF checkpoints (complete once trainer_state.json is written), verl's
                // FSDP ones (complete once the actor's shards are).
                if let Some(step) = name.strip_prefix("checkpoint-") {
                    let step = step.parse().ok()?;
                    return p.join("trainer_state.json").is_file().then_some((step, p));
                }
                let step = name.strip_prefix("global_step_")?.parse().ok()?;
                p.join("actor").is_dir().then_some((step, p))
            })
            .filter(|(_, p)| !self.checkpoints.contains(p))
            .collect();
        found.sort();
        for (step, path) in found {
            self.checkpoints.insert(path.clone());
            out.push(Event::Checkpoint {
                run: id.to_string(),
                step,
                path,
            });
        }
    }

    /// The end of a run its `status.json` reports (rlft's TRL callback writes it), once.
    fn poll_status(&mut self, dir: &Path, id: &str, out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        let Some(state) = crate::engine::run::read_status(dir) else {
            return;
        };
        let run = id.to_string();
        match state.status {
            RunStatus::Finished | RunStatus::Stopped => out.push(Event::Finished {
                run,
                step: state.step,
                status: state.status,
            }),
            RunStatus::Failed => out.push(Event::Failed {
                run,
                step: Some(state.step),
                error: state.error.unwrap_or_else(|| "the run failed".into()),
            }),
            RunStatus::Starting | RunStatus::Running | RunStatus::Paused => return,
        }
        self.ended = true;
    }

    /// verl's `rollout_data_dir`: one `<step>.jsonl` per step, rows of `input`, `output`,
    /// `score` (and `gts`).
    fn poll_rollouts(&mut self, dir: &Path, id: &str, out: &mut Vec<Event>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut files: Vec<(usize, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let step = p.file_stem()?.to_str()?.parse().ok()?;
                (p.extension()? == "jsonl").then_some((step, p))
            })
            .filter(|(_, p)| !self.rollouts_read.contains(p))
            .collect();
        files.sort();
        for (step, path) in files {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            // Written at once by verl; a file still being written ends without a newline.
            if !text.ends_with('\n') {
                continue;
            }
            self.rollouts_read.insert(path);
            let samples: Vec<SampleRecord> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .map(|v| SampleRecord {
                    step,
                    prompt: v["input"].as_str().unwrap_or_default().to_string(),
                    completion: v["output"].as_str().unwrap_or_default().to_string(),
                    rewards: v["score"]
                        .as_f64()
                        .map(|s| BTreeMap::from([("score".to_string(), s)]))
                        .unwrap_or_default(),
                    advantage: None,
                })
                .collect();
            if !samples.is_empty() {
                out.push(Event::Samples {
                    run: id.to_string(),
                    step,
                    samples,
                });
            }
        }
    }

    /// Whole lines appended to `path` since the last call (a partial last line waits; a file
    /// that shrank, as verl's logger truncates on a restart, is read again from the start).
    fn new_lines(&mut self, path: &Path, id: &str, out: &mut Vec<Event>) -> Vec<String> {
        let Ok(mut file) = File::open(path) else {
            return Vec::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let (offset, partial) = self.jsonl.entry(path.to_path_buf()).or_default();
        if len < *offset {
            *offset = 0;
            partial.clear();
        }
        if len == *offset || file.seek(SeekFrom::Start(*offset)).is_err() {
            return Vec::new();
        }
        let mut lines = Vec::new();
        let mut reader = BufReader::new(file);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(n) => {
                    *offset += n as u64;
                    if line.ends_with('\n') {
                        let whole = std::mem::take(partial) + line.trim_end();
                        if !whole.is_empty() {
                            lines.push(whole);
                        }
                    } else {
                        partial.push_str(&line);
                    }
                }
                Err(e) => {
                    if self.reported.insert(path.to_path_buf()) {
                        out.push(log(id, LogLevel::Warn, format!("{}: {e}", path.display())));
                    }
                    break;
                }
            }
        }
        lines
    }
}

/// One line of verl's file logger: `{"step": N, "data": {"name": value, ...}}`.
fn verl_row(line: &str) -> Option<(usize, BTreeMap<String, f64>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let step = v["step"].as_u64()? as usize;
    let values = v["data"]
        .as_object()?
        .iter()
        .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
        .collect();
    Some((step, values))
}

fn metrics(id: &str, step: usize, wall_time: f64, values: BTreeMap<String, f64>) -> Event {
    Event::Metrics {
        run: id.to_string(),
        step,
        wall_time,
        values: with_rlft_names(values),
    }
}

fn log(id: &str, level: LogLevel, message: String) -> Event {
    Event::Log {
        run: id.to_string(),
        level,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A watched run's samples become pairs to label (two per step), saved once in its folder
    /// and proposed again after a restart without being saved twice.
    #[test]
    fn a_watched_run_s_samples_become_pairs_to_label() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\": 1, \"wall_time\": 0.1, \"reward\": 0.5}\n",
        )
        .unwrap();
        let samples: String = ["179", "178", "17", "179\n3"]
            .iter()
            .map(|c| {
                serde_json::json!({"step": 1, "prompt": "82+97=", "completion": c, "rewards": {}})
                    .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(dir.join("samples.jsonl"), samples).unwrap();
        let pairs_of = |events: &[Event]| -> Vec<String> {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Pairs { pairs, .. } => Some(pairs.iter().map(|p| p.pair.id.clone())),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        let mut tail = Tail::new(Source::detect(dir).unwrap());
        tail.propose_pairs(WATCH_PAIRS_PER_STEP);
        let first = pairs_of(&tail.poll("trl"));
        assert_eq!(first.len(), 2);
        let file = dir.join(crate::engine::labels::RUN_PAIRS_FILE);
        assert_eq!(
            crate::engine::labels::read_proposed(&file).unwrap().len(),
            2
        );
        // rlft restarts and reads the run again.
        let mut again = Tail::new(Source::detect(dir).unwrap());
        again.propose_pairs(WATCH_PAIRS_PER_STEP);
        assert_eq!(pairs_of(&again.poll("trl")), first);
        assert_eq!(
            crate::engine::labels::read_proposed(&file).unwrap().len(),
            2
        );
    }

    /// A launched run's `alerts.toml`: the watcher sends the alert when the job's metrics
    /// raise a warning; a broken file is named.
    #[test]
    fn a_watched_run_with_alerts_toml_alerts_on_its_metrics() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let out = dir.join("alert.txt");
        std::fs::write(
            dir.join(ALERTS_FILE),
            format!("command = \"echo $RLFT_RULE > '{}'\"\n", out.display()),
        )
        .unwrap();
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\": 1, \"wall_time\": 0.1, \"loss\": 0.5}\n{\"step\": 2, \"wall_time\": 0.2, \"loss\": NaN}\n",
        )
        .unwrap();
        let cfg = read_alerts(dir).unwrap().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut tail = Tail::new(Source::detect(dir).unwrap());
        tail.alert_on(crate::engine::alerts::Alerter::new(cfg, "trl", dir, tx));
        let events = tail.poll("trl");
        assert!(
            events.iter().any(|e| matches!(e, Event::Log { message, .. } if message.starts_with("alert: rlft run trl, step 2: NaN/inf"))),
            "{events:?}"
        );
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Ok(Event::Log { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "NaN/inf in metrics"
        );
        std::fs::write(dir.join(ALERTS_FILE), "webhook = \"ftp://x\"\n").unwrap();
        let e = read_alerts(dir).unwrap_err();
        assert!(e.contains("alerts.toml") && e.contains("http://"), "{e}");
    }

    #[test]
    fn names_map_to_rlft_and_originals_stay() {
        assert_eq!(rlft_name("critic/score/mean"), Some("reward"));
        assert_eq!(rlft_name("train/reward"), Some("reward"));
        assert_eq!(rlft_name("train/policy_loss"), Some("loss"));
        assert_eq!(
            rlft_name("train/completions/mean_length"),
            Some("completions/mean_length")
        );
        assert_eq!(rlft_name("perf/throughput"), None);
        let row = with_rlft_names(BTreeMap::from([("critic/score/mean".to_string(), 0.5)]));
        assert_eq!(row["reward"], 0.5);
        assert_eq!(row["critic/score/mean"], 0.5);
    }

    #[test]
    fn a_verl_log_is_tailed_line_by_line_and_a_partial_line_waits() {
        let tmp = tempfile::tempdir().unwrap();
        let log_path = tmp.path().join("exp.jsonl");
        let mut f = File::create(&log_path).unwrap();
        writeln!(
            f,
            r#"{{"step": 1, "data": {{"critic/score/mean": 0.25, "actor/entropy": 1.5}}}}"#
        )
        .unwrap();
        write!(f, r#"{{"step": 2, "data": {{"critic/score/me"#).unwrap();
        f.flush().unwrap();
        let mut tail = Tail::new(Source::detect(&log_path).unwrap());
        let first = tail.poll("v");
        assert_eq!(first.len(), 1);
        let Event::Metrics { step, values, .. } = &first[0] else {
            panic!("{first:?}")
        };
        assert_eq!((*step, values["reward"], values["entropy"]), (1, 0.25, 1.5));
        writeln!(f, r#"an": 0.5}}}}"#).unwrap();
        f.flush().unwrap();
        let second = tail.poll("v");
        assert!(
            matches!(&second[..], [Event::Metrics { step: 2, values, .. }] if values["reward"] == 0.5),
            "{second:?}"
        );
        assert!(tail.poll("v").is_empty());
    }

    /// A step's values split over two polls (the writer flushed between them) come out as
    /// one row, once a quiet poll shows the step is complete.
    #[test]
    fn a_tensorboard_step_split_over_two_polls_is_one_row() {
        use crate::engine::tensorboard::EventFileWriter;
        let tmp = tempfile::tempdir().unwrap();
        let mut w = EventFileWriter::create(tmp.path()).unwrap();
        w.scalars(1, 1.0, [("train/loss", 2.0)]).unwrap();
        w.scalars(2, 2.0, [("train/loss", 1.5)]).unwrap();
        w.flush().unwrap();
        let mut tail = Tail::new(Source::detect(tmp.path()).unwrap());
        let steps = |events: Vec<Event>| -> Vec<(usize, usize)> {
            events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Metrics { step, values, .. } => Some((step, values.len())),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(steps(tail.poll("t")), [(1, 2)], "step 2 is held");
        w.scalars(2, 2.0, [("train/reward", 0.5)]).unwrap();
        w.flush().unwrap();
        assert!(
            steps(tail.poll("t")).is_empty(),
            "more of step 2: still held"
        );
        // loss, reward and their rlft names.
        assert_eq!(steps(tail.poll("t")), [(2, 4)]);
        assert!(steps(tail.poll("t")).is_empty());
    }

    #[test]
    fn a_missing_or_empty_path_says_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Source::detect(&tmp.path().join("nope")).unwrap_err();
        assert!(err.contains("no such file"), "{err}");
        let err = Source::detect(tmp.path()).unwrap_err();
        assert!(err.contains("no TensorBoard event files"), "{err}");
    }
}
