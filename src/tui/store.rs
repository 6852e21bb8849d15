//! What the workbench knows about each run: live ones fed by engine events, finished ones read
//! from their folders on disk. Memory per run is bounded (metric series are bucketed, sampled
//! steps are thinned), so a workbench left open on a long run stays small.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::engine::events::{RunId, RunStatus, SampleRecord};
use crate::engine::health::HealthMonitor;
use crate::engine::run::{MetricsRow, read_metrics, read_status};
use crate::tui::series::Series;

/// Sampled steps kept per run. Past this, every other older step is dropped, so the step
/// scrubber still spans the whole run; 512 steps x a GRPO batch of ~16 short samples is a few
/// MB at most.
const MAX_SAMPLE_STEPS: usize = 512;

/// Where a run's data comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Launched in this session; its thread reports events.
    Live,
    /// Read from its folder under the runs root.
    Disk,
    /// Another engine's run (TRL, verl, OpenRLHF), followed from its files (`rlft watch`).
    Watched,
}

/// How long a running run may go without metrics before the Runs pane calls it stalled:
/// longer than any step of the shipped configs on a CPU, and than TRL's logging interval.
pub const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// One run's state as the panes see it.
#[derive(Clone, Debug)]
pub struct RunData {
    pub id: RunId,
    pub method: String,
    pub status: RunStatus,
    pub origin: Origin,
    pub dir: Option<PathBuf>,
    pub total_steps: Option<usize>,
    /// Newest step with metrics.
    pub step: usize,
    /// Wall time of the newest metrics, seconds since the run started.
    pub wall_time: f64,
    /// Series by metric name (sorted, so pickers cycle in a stable order).
    pub metrics: BTreeMap<String, Series>,
    pub samples: BTreeMap<usize, Vec<SampleRecord>>,
    pub health: HealthMonitor,
    /// The engine's failure message, if the run failed.
    pub error: Option<String>,
    /// Step and path (relative to the run folder when inside it) of the newest checkpoint.
    pub last_checkpoint: Option<(usize, String)>,
    /// Trainable and total parameters, and the adapters when the run trains LoRA.
    pub model: Option<crate::engine::events::ModelSummary>,
    /// The best checkpoint by `[train] keep_best`, once there is one.
    pub best: Option<crate::engine::events::BestCheckpoint>,
    /// The job that runs it, for runs `rlft launch` started on another engine.
    pub job: Option<crate::engine::events::JobView>,
    /// When this session last got metrics for the run (for spotting a stalled one).
    pub last_metrics_at: Option<std::time::Instant>,
    series_cap: usize,
}

impl RunData {
    pub fn new(
        id: impl Into<RunId>,
        method: impl Into<String>,
        origin: Origin,
        cap: usize,
    ) -> Self {
        Self {
            id: id.into(),
            method: method.into(),
            status: RunStatus::Starting,
            origin,
            dir: None,
            total_steps: None,
            step: 0,
            wall_time: 0.0,
            metrics: BTreeMap::new(),
            samples: BTreeMap::new(),
            health: HealthMonitor::new(),
            error: None,
            last_checkpoint: None,
            model: None,
            best: None,
            job: None,
            last_metrics_at: None,
            series_cap: cap,
        }
    }

    /// A running run (rlft's or a watched one) that has sent no metrics for [`STALLED_AFTER`]
    /// since it last did in this session: its process may have hung or died.
    pub fn is_stalled(&self, now: std::time::Instant) -> bool {
        self.status == RunStatus::Running
            && self
                .last_metrics_at
                .is_some_and(|t| now.saturating_duration_since(t) >= STALLED_AFTER)
    }

    /// Whether the run is training (or paused) in this session, i.e. would be lost on quit.
    pub fn is_live(&self) -> bool {
        self.origin == Origin::Live
            && matches!(
                self.status,
                RunStatus::Starting | RunStatus::Running | RunStatus::Paused
            )
    }

    pub fn push_metrics(&mut self, step: usize, wall_time: f64, values: &BTreeMap<String, f64>) {
        self.last_metrics_at = Some(std::time::Instant::now());
        self.step = self.step.max(step);
        self.wall_time = self.wall_time.max(wall_time);
        for (name, v) in values {
            let cap = self.series_cap;
            self.metrics
                .entry(name.clone())
                .or_insert_with(|| Series::with_cap(cap))
                .push(step as f64, wall_time, *v);
        }
        self.health.observe(step, values);
    }

    pub fn push_samples(&mut self, step: usize, samples: Vec<SampleRecord>) {
        self.samples.entry(step).or_default().extend(samples);
        if self.samples.len() > MAX_SAMPLE_STEPS {
            let newest = self.samples.keys().next_back().copied();
            let mut i = 0;
            self.samples.retain(|k, _| {
                i += 1;
                Some(*k) == newest || i % 2 == 1
            });
        }
    }

    /// The metric that sums the run up: the first default of its method that it logs
    /// (reward for RL, margins for DPO, loss for SFT), else its first metric.
    pub fn primary_metric(&self) -> Option<&str> {
        crate::tui::panes::curves::default_metrics(&self.method)
            .iter()
            .flat_map(|aliases| aliases.iter())
            .find_map(|m| self.metrics.get_key_value(*m).map(|(k, _)| k.as_str()))
            .or_else(|| self.metrics.keys().next().map(String::as_str))
    }

    /// Step counter as shown in tables: `120/500` or `120`.
    pub fn progress(&self) -> String {
        match self.total_steps {
            Some(t) if t > 0 => format!("{}/{t}", self.step),
            _ => self.step.to_string(),
        }
    }
}

/// The runs, in the order they appeared. Runs are never removed during a session.
#[derive(Clone, Debug, Default)]
pub struct RunStore {
    runs: Vec<RunData>,
}

impl RunStore {
    pub fn all(&self) -> &[RunData] {
        &self.runs
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.runs.iter().position(|r| r.id == id)
    }

    pub fn get(&self, i: usize) -> Option<&RunData> {
        self.runs.get(i)
    }

    pub fn find_mut(&mut self, id: &str) -> Option<&mut RunData> {
        self.runs.iter_mut().find(|r| r.id == id)
    }

    /// Adds a run and returns its index; if one with that id exists it is returned instead.
    pub fn insert(&mut self, run: RunData) -> usize {
        if let Some(i) = self.index_of(&run.id) {
            return i;
        }
        self.runs.push(run);
        self.runs.len() - 1
    }

    /// Replaces the run at `i` (a saved run resumed in this session).
    pub fn replace(&mut self, i: usize, run: RunData) {
        if let Some(slot) = self.runs.get_mut(i) {
            *slot = run;
        }
    }

    pub fn live(&self) -> impl Iterator<Item = &RunData> {
        self.runs.iter().filter(|r| r.is_live())
    }
}

/// A run folder read from disk, ready to become a [`RunData`].
#[derive(Clone, Debug)]
pub struct LoadedRun {
    pub id: RunId,
    pub dir: PathBuf,
    pub method: String,
    pub total_steps: Option<usize>,
    pub status: RunStatus,
    pub metrics: Vec<MetricsRow>,
    pub samples: Vec<SampleRecord>,
    pub last_checkpoint: Option<(usize, String)>,
    /// Why the run failed, from its `status.json`.
    pub error: Option<String>,
    pub best: Option<crate::engine::events::BestCheckpoint>,
}

impl LoadedRun {
    pub fn into_run(self, cap: usize) -> RunData {
        let mut run = RunData::new(self.id, self.method, Origin::Disk, cap);
        run.status = self.status;
        run.dir = Some(self.dir);
        run.total_steps = self.total_steps;
        run.last_checkpoint = self.last_checkpoint;
        run.error = self.error;
        run.best = self.best;
        for row in &self.metrics {
            run.push_metrics(row.step, row.wall_time, &row.values);
        }
        let mut by_step: BTreeMap<usize, Vec<SampleRecord>> = BTreeMap::new();
        for s in self.samples {
            by_step.entry(s.step).or_default().push(s);
        }
        for (step, samples) in by_step {
            run.push_samples(step, samples);
        }
        run
    }
}

/// Run folders under `root` (those holding a `config.toml` or `metrics.jsonl`), by name.
/// A missing root is no runs, not an error.
pub fn scan_runs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.toml").is_file() || p.join("metrics.jsonl").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The first line of the `config.toml` rlft's TRL callback writes
/// (`integrations/trl/rlft_callback.py`): such a folder is another engine's run.
pub const TRL_CALLBACK_MARK: &str = "# Written by rlft's TRL callback";

/// Runs of other engines under `root`, to follow live rather than load once: folders with
/// TensorBoard event files and no rlft run in them, and folders rlft's TRL callback writes.
pub fn external_runs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| {
            if p.join(crate::engine::launch::JOB_FILE).is_file() {
                // `rlft launch` made it: another engine's run with its job.
                return true;
            }
            let config = std::fs::read_to_string(p.join("config.toml")).ok();
            match config {
                Some(text) => text.starts_with(TRL_CALLBACK_MARK),
                None => {
                    !p.join("metrics.jsonl").is_file()
                        && !crate::engine::tensorboard::event_files(p).is_empty()
                }
            }
        })
        .collect();
    dirs.sort();
    dirs
}

/// Reads a run folder: method and max steps from `config.toml` (read loosely, so configs
/// of methods this build does not know still load), metrics, samples and checkpoints.
pub fn load_run(dir: &Path) -> anyhow::Result<LoadedRun> {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{}: not a run folder", dir.display()))?;
    let (method, total_steps) = match std::fs::read_to_string(dir.join("config.toml")) {
        Ok(text) => {
            let table: toml::Table = text
                .parse()
                .with_context(|| format!("{}: config.toml does not parse", dir.display()))?;
            let method = table
                .get("method")
                .and_then(|m| m.as_str())
                .unwrap_or("?")
                .to_string();
            let steps = table
                .get("train")
                .and_then(|t| t.get("max_steps"))
                .and_then(|s| s.as_integer())
                .and_then(|s| usize::try_from(s).ok());
            (method, steps)
        }
        Err(_) => ("?".to_string(), None),
    };
    let metrics_path = dir.join("metrics.jsonl");
    let metrics = if metrics_path.is_file() {
        read_metrics(&metrics_path)
            .with_context(|| format!("reading {}", metrics_path.display()))?
    } else {
        Vec::new()
    };
    let samples = read_samples(&dir.join("samples.jsonl"));
    let last_checkpoint = newest_checkpoint(dir);
    let last_step = metrics.last().map_or(0, |r| r.step);
    let (status, error) = match read_status(dir) {
        Some(s) => match s.status {
            RunStatus::Finished | RunStatus::Stopped => (s.status, None),
            RunStatus::Failed => (RunStatus::Failed, s.error),
            // Still marked as training: the process that ran it was killed or crashed.
            RunStatus::Starting | RunStatus::Running | RunStatus::Paused => {
                (RunStatus::Stopped, None)
            }
        },
        // Folders written before `status.json`: only a run that reached its last step is
        // known to have finished (a stopped run also leaves a `final` checkpoint).
        None if total_steps.is_some_and(|t| t > 0 && last_step >= t) => (RunStatus::Finished, None),
        None => (RunStatus::Stopped, None),
    };
    Ok(LoadedRun {
        id,
        dir: dir.to_path_buf(),
        method,
        total_steps,
        status,
        metrics,
        samples,
        last_checkpoint,
        error,
        best: crate::engine::run::read_best(dir),
    })
}

/// `samples.jsonl` rows; unreadable lines (a torn last line) are skipped.
fn read_samples(path: &Path) -> Vec<SampleRecord> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// The newest `checkpoints/step-NNNNNN` (or `final`) of a run folder.
fn newest_checkpoint(dir: &Path) -> Option<(usize, String)> {
    let ckpts = dir.join("checkpoints");
    let mut best: Option<(usize, String)> = None;
    for e in std::fs::read_dir(&ckpts).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let step = if name == "final" {
            usize::MAX
        } else if let Some(n) = name.strip_prefix("step-").and_then(|n| n.parse().ok()) {
            n
        } else {
            continue;
        };
        if best.as_ref().is_none_or(|(s, _)| step > *s) {
            best = Some((step, format!("checkpoints/{name}")));
        }
    }
    best
}

/// A checkpoint path as shown: relative to the run folder when inside it.
pub fn short_path(path: &Path, run_dir: Option<&Path>) -> String {
    run_dir
        .and_then(|d| path.strip_prefix(d).ok())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_run_without_metrics_for_ten_minutes_is_stalled() {
        let mut run = RunData::new("r", "grpo", Origin::Watched, 64);
        run.status = RunStatus::Running;
        let now = std::time::Instant::now();
        assert!(!run.is_stalled(now), "no metrics yet: not judged");
        run.push_metrics(1, 1.0, &BTreeMap::from([("loss".to_string(), 1.0)]));
        let last = run.last_metrics_at.expect("noted");
        assert!(!run.is_stalled(last + STALLED_AFTER / 2));
        assert!(run.is_stalled(last + STALLED_AFTER));
        run.status = RunStatus::Finished;
        assert!(
            !run.is_stalled(last + STALLED_AFTER),
            "an ended run is not stalled"
        );
    }

    /// Another engine's runs in the runs folder are told apart from rlft's: a folder of
    /// TensorBoard files only, or one rlft's TRL callback wrote.
    #[test]
    fn external_runs_are_told_apart_from_rlft_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["rlft-run", "tb-only/Dec05_host", "trl-callback", "empty"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("rlft-run/config.toml"), "method = \"grpo\"\n").unwrap();
        std::fs::write(root.join("rlft-run/metrics.jsonl"), "").unwrap();
        std::fs::write(root.join("tb-only/Dec05_host/events.out.tfevents.1.h"), b"").unwrap();
        std::fs::write(
            root.join("trl-callback/config.toml"),
            format!(
                "{TRL_CALLBACK_MARK} (integrations/trl/rlft_callback.py).\nmethod = \"grpo\"\n"
            ),
        )
        .unwrap();
        assert_eq!(
            external_runs(root),
            [root.join("tb-only"), root.join("trl-callback")]
        );
        assert!(scan_runs(root).contains(&root.join("rlft-run")));
    }

    #[test]
    fn sample_steps_are_thinned_but_span_the_run() {
        let mut run = RunData::new("r", "grpo", Origin::Live, 64);
        for step in 0..2000 {
            run.push_samples(step, Vec::new());
        }
        assert!(run.samples.len() <= MAX_SAMPLE_STEPS);
        assert_eq!(run.samples.keys().next(), Some(&0));
        assert_eq!(run.samples.keys().next_back(), Some(&1999));
    }

    #[test]
    fn a_run_folder_loads_with_its_method_progress_and_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("grpo-arith");
        std::fs::create_dir_all(dir.join("checkpoints/step-000020")).unwrap();
        std::fs::write(
            dir.join("config.toml"),
            "method = \"grpo\"\n[train]\nmax_steps = 50\n[future_section]\nx = 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\":1,\"wall_time\":0.5,\"reward\":0.1}\n{\"step\":2,\"wall_time\":1.0,\"reward\":0.3}\n{\"step\":3,",
        )
        .unwrap();
        std::fs::write(
            dir.join("samples.jsonl"),
            "{\"step\":2,\"prompt\":\"1+1=\",\"completion\":\"2\",\"rewards\":{\"correct\":1.0}}\n",
        )
        .unwrap();
        assert_eq!(scan_runs(tmp.path()), vec![dir.clone()]);
        let loaded = load_run(&dir).unwrap();
        assert_eq!(loaded.method, "grpo");
        assert_eq!(loaded.total_steps, Some(50));
        assert_eq!(loaded.status, RunStatus::Stopped);
        assert_eq!(
            loaded.last_checkpoint,
            Some((20, "checkpoints/step-000020".into()))
        );
        let run = loaded.into_run(64);
        assert_eq!(run.step, 2);
        assert_eq!(run.progress(), "2/50");
        assert_eq!(run.metrics["reward"].last(), Some((2.0, 0.3)));
        assert_eq!(run.samples[&2].len(), 1);
        assert_eq!(run.primary_metric(), Some("reward"));
        assert!(!run.is_live());
    }

    #[test]
    fn stopped_failed_and_finished_runs_read_back_as_they_ended() {
        use crate::engine::run::{RunDir, RunState};
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            (RunStatus::Stopped, None, RunStatus::Stopped),
            (RunStatus::Finished, None, RunStatus::Finished),
            (
                RunStatus::Failed,
                Some("NaN loss".to_string()),
                RunStatus::Failed,
            ),
            // Killed while training: it left `running` behind.
            (RunStatus::Running, None, RunStatus::Stopped),
        ];
        for (i, (written, error, shown)) in cases.into_iter().enumerate() {
            let dir = RunDir::create_unique(tmp.path(), &format!("r{i}")).unwrap();
            dir.write_config("method = \"sft\"\n[train]\nmax_steps = 10\n")
                .unwrap();
            // A stopped run also saves a `final` checkpoint: that must not read as finished.
            std::fs::create_dir_all(dir.final_dir()).unwrap();
            let state = RunState {
                status: written,
                step: 4,
                error: error.clone(),
            };
            dir.write_status(&state).unwrap();
            let loaded = load_run(&dir.path).unwrap();
            assert_eq!(loaded.status, shown, "{written:?}");
            assert_eq!(loaded.error, error);
        }
    }

    #[test]
    fn missing_runs_root_is_empty() {
        assert!(scan_runs(Path::new("/nonexistent/rlft-runs")).is_empty());
    }
}
