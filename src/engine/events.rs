//! The only way the engine and its users (the terminal UI, the headless printer, tests) talk:
//! the engine sends `Event`s out and obeys `Command`s sent in. Both channels are unbounded, so
//! a trainer never waits on a slow reader.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Runs are named by their folder name (unique under the runs folder).
pub type RunId = String;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Starting,
    Running,
    Paused,
    Finished,
    Stopped,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// One generation shown in the Samples pane and appended to `samples.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub step: usize,
    pub prompt: String,
    pub completion: String,
    /// Reward per source (empty for methods without rewards).
    #[serde(default)]
    pub rewards: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advantage: Option<f64>,
}

/// What a run trains: parameter counts, and the adapters when it trains LoRA.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub trainable: usize,
    pub total: usize,
    /// `LoRA r=16 alpha=32 all-linear`; None for full fine-tuning.
    pub adapter: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Started {
        run: RunId,
        method: String,
        run_dir: PathBuf,
        total_steps: usize,
        /// The trained model's parameters (None where a run has no model, e.g. test fakes).
        model: Option<ModelSummary>,
    },
    /// TRL-named scalars for one optimisation step.
    Metrics {
        run: RunId,
        step: usize,
        /// Seconds since the run (or its first resume) started.
        wall_time: f64,
        values: BTreeMap<String, f64>,
    },
    Samples {
        run: RunId,
        step: usize,
        samples: Vec<SampleRecord>,
    },
    /// Pairs the run asks people to label (online DPO / RLAIF with human labels), each with
    /// the AI judge's verdict when one judged it. Also appended to the run's `pairs.jsonl`.
    Pairs {
        run: RunId,
        step: usize,
        pairs: Vec<crate::engine::labels::ProposedPair>,
    },
    Log {
        run: RunId,
        level: LogLevel,
        message: String,
    },
    Status {
        run: RunId,
        status: RunStatus,
    },
    Checkpoint {
        run: RunId,
        step: usize,
        path: PathBuf,
    },
    Finished {
        run: RunId,
        step: usize,
        /// Why it ended: max steps reached, or stopped by the user.
        status: RunStatus,
    },
    Failed {
        run: RunId,
        step: Option<usize>,
        error: String,
    },
    /// A new best checkpoint by `[train] keep_best` (saved in `checkpoints/best`).
    Best {
        run: RunId,
        best: BestCheckpoint,
    },
    /// A launched job's state changed (`rlft launch`: a local process, a Ray or Slurm job).
    Job {
        run: RunId,
        job: JobView,
    },
}

/// A launched job as the Runs pane shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    /// "ray job rlft-x at http://…", "slurm job 42", "local process 1234".
    pub describe: String,
    /// pending, running, succeeded, failed, stopped; or "unknown" while the launcher cannot
    /// be asked.
    pub state: String,
    /// Why it failed, or why its state is unknown (an unreachable Ray head, a missing tool).
    pub detail: Option<String>,
    /// The job's process on this machine (local jobs), for the System view.
    pub pid: Option<u32>,
}

/// The best checkpoint by `[train] keep_best`: which metric, its value, at which step
/// (`checkpoints/best/best.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestCheckpoint {
    pub metric: String,
    pub value: f64,
    pub step: usize,
}

impl Event {
    pub fn run(&self) -> &str {
        match self {
            Event::Started { run, .. }
            | Event::Metrics { run, .. }
            | Event::Samples { run, .. }
            | Event::Pairs { run, .. }
            | Event::Log { run, .. }
            | Event::Status { run, .. }
            | Event::Checkpoint { run, .. }
            | Event::Finished { run, .. }
            | Event::Failed { run, .. }
            | Event::Best { run, .. }
            | Event::Job { run, .. } => run,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    /// Finish the current step, save a checkpoint and end.
    Stop,
    /// Save a checkpoint after the current step.
    Save,
}
