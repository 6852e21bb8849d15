//! The workbench: a terminal UI over the engine's message API.
//!
//! Runs train on their own threads and report [`Event`]s over an unbounded channel, so a
//! trainer never waits on the UI. The UI thread owns the terminal: it waits for keys with a
//! timeout (so keys are handled as they arrive), drains engine events, and redraws at most
//! [`FRAME_INTERVAL`] apart when something changed. Run folders on disk are read by a
//! background thread. Nothing here uses Burn; the engine is reached only through
//! `engine::session`, `engine::events` and the run folders.
//!
//! Modules: [`app`] (state and routing), [`ui`] (layout), [`panes`] (one per pane),
//! [`keymap`] (every key), [`series`] (bounded series, EMA, decimation), [`store`] (runs),
//! [`engine_link`] (launch/commands), [`fake`] (scripted driver for tests and benches).

pub mod app;
pub mod engine_link;
pub mod fake;
pub mod keymap;
pub mod panes;
pub mod series;
pub mod store;
pub mod terminal;
pub mod text;
pub mod theme;
pub mod ui;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, unbounded};

use crate::engine::device::DeviceChoice;
use crate::engine::events::{Event, LogLevel};
use crate::tui::app::{App, AppConfig};
use crate::tui::engine_link::{Overrides, SessionEngine};
use crate::tui::store::LoadedRun;
use crate::tui::terminal::TerminalGuard;

/// Frames at most this far apart: 30 per second is smooth for live curves and, at about
/// 0.5 ms a frame (benches/render.rs), costs trainers sharing the cores under 2% of a core.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(33);
/// Engine events applied between two looks at the keyboard, so a flood of events from fast
/// runs cannot make keys wait (each event takes microseconds).
const MAX_EVENTS_PER_TURN: usize = 20_000;
/// How long quitting waits for run threads after they reported their end.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How to open the workbench.
#[derive(Clone, Debug)]
pub struct WorkbenchOptions {
    /// Configs offered by "new run" (`n`).
    pub configs_dir: PathBuf,
    /// Where runs are written, and where earlier runs are read from.
    pub runs_root: PathBuf,
    /// Configs to launch at start.
    pub autostart: Vec<PathBuf>,
    pub device: DeviceChoice,
    /// Overrides `[train] max_steps` of the autostarted runs.
    pub max_steps: Option<usize>,
    /// Run folder of the first autostarted run (default: `runs_root/<name>`, made unique).
    pub run_dir: Option<PathBuf>,
    /// Label log and preference file; default `runs_root/labels`.
    pub labels_dir: Option<PathBuf>,
    /// Show earlier runs found under `runs_root`.
    pub load_saved_runs: bool,
    /// Overrides `[train] precision` of every run started (`--precision`).
    pub precision: Option<crate::engine::model::precision::Precision>,
    /// Who labels (`--annotator`); default the login name.
    pub annotator: Option<String>,
    /// How many people may label one pair (`--labels-per-pair`), stored for every labeller.
    pub labels_per_pair: Option<usize>,
    /// Runs of other engines to follow from their files (`rlft watch`).
    pub watch: Vec<PathBuf>,
}

impl Default for WorkbenchOptions {
    fn default() -> Self {
        Self {
            configs_dir: PathBuf::from("configs"),
            runs_root: PathBuf::from("runs"),
            autostart: Vec::new(),
            device: DeviceChoice::Cpu,
            max_steps: None,
            run_dir: None,
            labels_dir: None,
            load_saved_runs: true,
            precision: None,
            annotator: None,
            labels_per_pair: None,
            watch: Vec::new(),
        }
    }
}

/// Opens the workbench and runs it until the user quits. Live runs are stopped (each saves a
/// checkpoint) before it returns. The terminal is restored on every way out.
pub fn run_workbench(opts: WorkbenchOptions) -> anyhow::Result<()> {
    let (tx, rx) = unbounded::<Event>();
    let mut config = AppConfig::new(
        opts.configs_dir.clone(),
        opts.runs_root.clone(),
        opts.device,
    );
    if let Some(dir) = &opts.labels_dir {
        config.labels_dir = dir.clone();
    }
    if let Some(who) = &opts.annotator {
        config.annotator = who.clone();
    }
    if let Some(n) = opts.labels_per_pair {
        let mut store = crate::engine::label_store::LabelStore::open(&config.labels_dir, "")
            .context("opening the label store")?;
        store.set_labels_per_pair(n)?;
    }
    let mut engine = SessionEngine::new(tx, opts.runs_root.clone(), opts.device);
    engine.precision = opts.precision;
    let engine = Box::new(engine);
    // The folders are listed before launching, so new runs are not also loaded as old ones.
    // Other engines' runs in the runs folder are followed live, not loaded once.
    let external = if opts.load_saved_runs {
        store::external_runs(&opts.runs_root)
    } else {
        Vec::new()
    };
    let saved: Vec<PathBuf> = if opts.load_saved_runs {
        store::scan_runs(&opts.runs_root)
            .into_iter()
            .filter(|d| !external.contains(d))
            .collect()
    } else {
        Vec::new()
    };
    let mut app = App::new(config, engine);
    let mut guard = TerminalGuard::enter()?;
    app.autostart(
        &opts.autostart,
        &Overrides {
            max_steps: opts.max_steps,
            run_dir: opts.run_dir.clone(),
        },
    );
    for path in opts.watch.iter().chain(&external) {
        if let Err(e) = app.watch(path) {
            app.note(LogLevel::Error, format!("watch: {e:#}"));
        }
    }
    if opts.autostart.is_empty() && opts.watch.is_empty() {
        app.open_on_saved_runs(saved.len() + external.len());
    }
    let loaded = spawn_loader(saved);
    let monitor = crate::engine::system::Monitor::spawn(crate::engine::system::SAMPLE_EVERY);
    if let Err(e) = &monitor {
        app.note(LogLevel::Warn, format!("the System view is off: {e}"));
    }
    let result = event_loop(&mut guard, &mut app, &rx, &loaded, monitor.ok().as_ref());
    drop(guard);
    if result.is_err() {
        // The UI died (e.g. the terminal went away): still let live runs save a checkpoint.
        app.stop_live_runs();
    }
    // Quitting stopped the live runs and saw them end; give their threads a moment to finish
    // writing. A forced quit (q pressed while waiting) does not wait.
    if !app.quit_forced {
        let still = app.wait_for_engine(JOIN_TIMEOUT);
        if still > 0 {
            eprintln!("rlft: {still} run thread(s) still running at exit");
        }
    }
    result
}

/// Reads saved run folders on a background thread, one message per run.
fn spawn_loader(dirs: Vec<PathBuf>) -> Receiver<anyhow::Result<LoadedRun>> {
    let (tx, rx) = unbounded();
    let spawned = std::thread::Builder::new()
        .name("rlft-load-runs".into())
        .spawn(move || {
            for d in dirs {
                if tx.send(store::load_run(&d)).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        let (etx, erx) = unbounded();
        let _ = etx.send(Err(anyhow::Error::new(e).context("starting the run loader")));
        return erx;
    }
    rx
}

fn event_loop(
    guard: &mut TerminalGuard,
    app: &mut App,
    events: &Receiver<Event>,
    loaded: &Receiver<anyhow::Result<LoadedRun>>,
    monitor: Option<&crate::engine::system::Monitor>,
) -> anyhow::Result<()> {
    let mut next_frame = Instant::now();
    let mut followed = Vec::new();
    loop {
        // Keys: wait for one until the next frame is due, then take all that are queued.
        let wait = next_frame.saturating_duration_since(Instant::now());
        let mut key_seen = false;
        if crossterm::event::poll(wait).context("reading the terminal")? {
            key_seen = true;
            loop {
                let ev = crossterm::event::read().context("reading the terminal")?;
                app.on_terminal_event(ev);
                if !crossterm::event::poll(Duration::ZERO).context("reading the terminal")? {
                    break;
                }
            }
        }
        for ev in events.try_iter().take(MAX_EVENTS_PER_TURN) {
            app.on_engine_event(ev);
        }
        for run in loaded.try_iter() {
            match run {
                Ok(r) => app.on_loaded_run(r),
                Err(e) => app.note(LogLevel::Warn, format!("skipped a saved run: {e:#}")),
            }
        }
        for p in guard.take_panics() {
            app.note(LogLevel::Error, p);
        }
        if let Some(m) = monitor {
            for snap in m.snapshots.try_iter() {
                app.on_system(snap);
            }
            let now_followed = app.followed_processes();
            if now_followed != followed {
                m.follow(now_followed.clone());
                followed = now_followed;
            }
        }
        app.tick(Instant::now());
        if app.should_exit() {
            return Ok(());
        }
        let now = Instant::now();
        // A key is answered at once (keys are rare); engine updates wait for the frame cap.
        if now >= next_frame || key_seen {
            if app.dirty {
                guard
                    .terminal
                    .draw(|f| app.render(f))
                    .context("drawing the screen")?;
                app.dirty = false;
            }
            next_frame = now + FRAME_INTERVAL;
        }
    }
}
