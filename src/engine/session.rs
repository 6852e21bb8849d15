//! Starting runs: each run trains on its own thread and reports through the shared event
//! channel; its commands arrive on a channel of its own.

use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, unbounded};

use crate::engine::algo;
use crate::engine::config::{Method, RunConfig};
use crate::engine::device::DeviceChoice;
use crate::engine::events::{Command, Event, RunId, RunStatus};
use crate::engine::run::{RunContext, RunDir, RunState};

#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// Where new run folders are created (`runs/` by default).
    pub runs_root: PathBuf,
    /// An explicit run folder instead of `runs_root/<name>`.
    pub run_dir: Option<PathBuf>,
    pub device: DeviceChoice,
    /// Overrides `[train] max_steps`.
    pub max_steps: Option<usize>,
    /// Continue the run in `run_dir` from its newest checkpoint.
    pub resume: bool,
    /// Overrides `[train] precision` (`--precision`).
    pub precision: Option<crate::engine::model::precision::Precision>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            runs_root: PathBuf::from("runs"),
            run_dir: None,
            device: DeviceChoice::Cpu,
            max_steps: None,
            resume: false,
            precision: None,
        }
    }
}

/// The UI's (or the headless driver's) handle on a live run.
pub struct RunHandle {
    pub id: RunId,
    pub dir: PathBuf,
    pub commands: Sender<Command>,
    pub thread: JoinHandle<()>,
}

/// Creates the run folder, writes the resolved config and starts the training thread.
pub fn launch(
    mut cfg: RunConfig,
    opts: &LaunchOptions,
    events: Sender<Event>,
) -> std::io::Result<RunHandle> {
    if let Some(n) = opts.max_steps {
        cfg.train.max_steps = n;
    }
    if let Some(p) = opts.precision {
        cfg.train.precision = p;
    }
    // Before the run folder exists: a wrong path fails once and leaves nothing behind.
    cfg.check_files()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
    let mut dir = match &opts.run_dir {
        Some(d) => RunDir::open(d)?,
        None => RunDir::create_unique(&opts.runs_root, cfg.name())?,
    };
    let resume_from = if opts.resume {
        let ck = algo::state::latest_checkpoint(&dir.path).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{}: no checkpoint with a trainer state to resume from",
                    dir.path.display()
                ),
            )
        })?;
        let state = algo::state::TrainerState::load(&ck)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        dir.truncate_after(state.step)?;
        Some(ck)
    } else {
        None
    };
    dir.write_config(&cfg.to_toml())?;
    let id = dir.id();
    let path = dir.path.clone();
    let (tx, rx) = unbounded();
    let device_choice = opts.device;
    let thread_events = events.clone();
    let thread = std::thread::Builder::new()
        .name(format!("run-{id}"))
        .spawn(move || {
            let mut ctx = RunContext::new(dir, thread_events, rx);
            ctx.resume_from = resume_from;
            ctx.configure(&cfg);
            ctx.status(RunStatus::Starting);
            let record = |ctx: &RunContext, status: RunStatus, error: Option<String>| {
                let state = RunState {
                    status,
                    step: ctx.last_step(),
                    error,
                };
                if let Err(e) = ctx.dir.write_status(&state) {
                    ctx.log(
                        crate::engine::events::LogLevel::Warn,
                        format!("writing {}: {e}", crate::engine::run::STATUS_FILE),
                    );
                }
            };
            record(&ctx, RunStatus::Running, None);
            let run_id = ctx.id.clone();
            // A panic inside Burn must end this run, not the program.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let device = device_choice.init().map_err(algo::TrainError::Invalid)?;
                // Every model this run uses computes on this thread.
                let _mixed = crate::engine::model::precision::enter(cfg.train.precision, &device)
                    .map_err(algo::TrainError::Invalid)?;
                if !cfg.train.precision.is_f32() {
                    let how = if crate::engine::model::precision::products().is_some() {
                        "f16 products, f32 weights and AdamW, dynamic loss scaling"
                    } else {
                        "the CPU computes in f32; frozen weights are stored in f16"
                    };
                    ctx.log(
                        crate::engine::events::LogLevel::Info,
                        format!("precision f16: {how}"),
                    );
                }
                match cfg.method {
                    Method::Sft => algo::sft::run(&cfg, &device, &mut ctx),
                    Method::Pretrain => algo::pretrain::run(&cfg, &device, &mut ctx),
                    Method::Grpo => algo::grpo::run(&cfg, &device, &mut ctx),
                    Method::Ppo => algo::ppo::run(&cfg, &device, &mut ctx),
                    Method::Rm => algo::rm::run(&cfg, &device, &mut ctx),
                    Method::Dpo => algo::dpo::run(&cfg, &device, &mut ctx),
                    Method::Kto => algo::kto::run(&cfg, &device, &mut ctx),
                    Method::Distill => algo::distill::run(&cfg, &device, &mut ctx),
                    Method::OnlineDpo => algo::online_dpo::run(&cfg, &device, &mut ctx),
                }
            }));
            let event = match result {
                Ok(Ok(status)) => {
                    record(&ctx, status, None);
                    ctx.status(status);
                    Event::Finished {
                        run: run_id,
                        step: ctx.last_step(),
                        status,
                    }
                }
                Ok(Err(e)) => {
                    record(&ctx, RunStatus::Failed, Some(e.to_string()));
                    ctx.status(RunStatus::Failed);
                    Event::Failed {
                        run: run_id,
                        // A failure while setting up (data, model) is at no step.
                        step: (ctx.last_step() > 0).then(|| ctx.last_step() + 1),
                        error: e.to_string(),
                    }
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    record(
                        &ctx,
                        RunStatus::Failed,
                        Some(format!("internal error: {msg}")),
                    );
                    ctx.status(RunStatus::Failed);
                    Event::Failed {
                        run: run_id,
                        step: None,
                        error: format!("internal error: {msg}"),
                    }
                }
            };
            ctx.send(event);
        })?;
    Ok(RunHandle {
        id,
        dir: path,
        commands: tx,
        thread,
    })
}
