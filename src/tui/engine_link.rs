//! The workbench's only door into the engine: start runs from configs and send them commands.
//! Events come back on the shared channel given to [`SessionEngine::new`]. Tests swap in
//! [`crate::tui::fake::FakeEngine`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use crossbeam_channel::Sender;

use crate::engine::config::RunConfig;
use crate::engine::device::DeviceChoice;
use crate::engine::events::{Command, Event, RunId};
use crate::engine::session::{self, LaunchOptions, RunHandle};

/// A run the engine accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchedRun {
    pub id: RunId,
    pub method: String,
    pub dir: PathBuf,
    pub total_steps: usize,
}

/// Per-launch overrides (the command line's `--max-steps` / `--run-dir` for autostarted runs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub max_steps: Option<usize>,
    pub run_dir: Option<PathBuf>,
}

/// Starting runs and steering them. Implementations must not block: the UI thread calls them.
pub trait Engine {
    /// Starts a run from a config file.
    fn launch(&mut self, config: &Path, overrides: &Overrides) -> anyhow::Result<LaunchedRun>;
    /// Continues the run in `run_dir` from its newest checkpoint.
    fn resume(&mut self, run_dir: &Path) -> anyhow::Result<LaunchedRun> {
        anyhow::bail!("{}: this engine cannot resume runs", run_dir.display())
    }
    /// Sends a command to a run started by this engine.
    fn send(&mut self, run: &str, command: Command) -> anyhow::Result<()>;
    /// Follows another engine's run from its files (`rlft watch`, `rlft launch`) as run `id`;
    /// returns the engine's name for the Runs pane's method column.
    fn watch(&mut self, path: &Path, _id: &str) -> anyhow::Result<&'static str> {
        anyhow::bail!("{}: this engine cannot watch runs", path.display())
    }
    /// Waits up to `timeout` for run threads to end; returns how many still run.
    fn wait(&mut self, _timeout: Duration) -> usize {
        0
    }
}

/// The real engine: `session::launch` per run, one training thread each.
pub struct SessionEngine {
    events: Sender<Event>,
    runs_root: PathBuf,
    device: DeviceChoice,
    /// `--precision`, for every run this engine starts.
    pub precision: Option<crate::engine::model::precision::Precision>,
    handles: Vec<RunHandle>,
    /// Runs of other engines being followed; `Stop` to one stops its launched job.
    watches: Vec<crate::engine::watch::Watch>,
}

impl Drop for SessionEngine {
    fn drop(&mut self) {
        for w in &self.watches {
            w.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl SessionEngine {
    pub fn new(events: Sender<Event>, runs_root: PathBuf, device: DeviceChoice) -> Self {
        Self {
            events,
            runs_root,
            device,
            precision: None,
            handles: Vec::new(),
            watches: Vec::new(),
        }
    }

    /// Waits up to `timeout` for every run thread to end; returns how many are still running.
    /// Threads never end by being waited on: callers send `Stop` first.
    fn wait_all(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let (done, running): (Vec<RunHandle>, Vec<RunHandle>) =
                std::mem::take(&mut self.handles)
                    .into_iter()
                    .partition(|h| h.thread.is_finished());
            for h in done {
                // The run thread catches its own panics; a join error here has nothing to add.
                let _ = h.thread.join();
            }
            self.handles = running;
            if self.handles.is_empty() || Instant::now() >= deadline {
                return self.handles.len();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl SessionEngine {
    /// Starts (or, with `resume`, continues) a run on its own thread.
    fn start(
        &mut self,
        cfg: RunConfig,
        overrides: &Overrides,
        resume: bool,
    ) -> anyhow::Result<LaunchedRun> {
        let method = cfg.method.name().to_string();
        let total_steps = overrides.max_steps.unwrap_or(cfg.train.max_steps);
        let opts = LaunchOptions {
            runs_root: self.runs_root.clone(),
            run_dir: overrides.run_dir.clone(),
            device: self.device,
            max_steps: overrides.max_steps,
            resume,
            precision: self.precision,
        };
        let handle = session::launch(cfg, &opts, self.events.clone())?;
        let launched = LaunchedRun {
            id: handle.id.clone(),
            method,
            dir: handle.dir.clone(),
            total_steps,
        };
        self.handles.push(handle);
        Ok(launched)
    }
}

impl Engine for SessionEngine {
    fn launch(&mut self, config: &Path, overrides: &Overrides) -> anyhow::Result<LaunchedRun> {
        let cfg = RunConfig::from_file(config)?;
        self.start(cfg, overrides, false)
            .with_context(|| format!("starting a run from {}", config.display()))
    }

    fn resume(&mut self, run_dir: &Path) -> anyhow::Result<LaunchedRun> {
        let config = run_dir.join("config.toml");
        let cfg = RunConfig::from_file(&config)?;
        self.start(
            cfg,
            &Overrides {
                max_steps: None,
                run_dir: Some(run_dir.to_path_buf()),
            },
            true,
        )
        .with_context(|| format!("resuming {}", run_dir.display()))
    }

    fn watch(&mut self, path: &Path, id: &str) -> anyhow::Result<&'static str> {
        let w = crate::engine::watch::spawn(path, id.to_string(), self.events.clone())
            .map_err(anyhow::Error::msg)?;
        let kind = w.source.kind();
        self.watches.push(w);
        Ok(kind)
    }

    fn send(&mut self, run: &str, command: Command) -> anyhow::Result<()> {
        if let Some(w) = self.watches.iter().find(|w| w.id == run) {
            if command != Command::Stop {
                anyhow::bail!("{run} is another engine's run: rlft can only stop its job (x)");
            }
            w.stop_job.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        let handle = self
            .handles
            .iter()
            // The newest: a resumed run's earlier thread has ended.
            .rev()
            .find(|h| h.id == run)
            .ok_or_else(|| anyhow!("run {run} was not started in this session"))?;
        handle
            .commands
            .send(command)
            .map_err(|_| anyhow!("run {run} has ended and takes no more commands"))
    }

    fn wait(&mut self, timeout: Duration) -> usize {
        self.wait_all(timeout)
    }
}
