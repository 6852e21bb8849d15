//! The workbench state: runs, pane states, dialogs, and the routing of engine events and keys.
//!
//! `App` never touches the terminal. Engine events come in through [`App::on_engine_event`],
//! keys through [`App::on_key`]; the screen is drawn from it by [`App::render`]. That keeps the
//! whole UI drivable by scripted events and keys in tests.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crossterm::event::{Event as TermEvent, KeyEvent, KeyEventKind};
use ratatui::Frame;

use crate::engine::device::DeviceChoice;
use crate::engine::events::{Command, Event, LogLevel, RunId, RunStatus};
use crate::tui::engine_link::{Engine, Overrides};
use crate::tui::keymap::{self, Action, Scope};
use crate::tui::panes::curves::CurvesState;
use crate::tui::panes::pairs::PairsState;
use crate::tui::panes::samples::SamplesState;
use crate::tui::series;
use crate::tui::store::{LoadedRun, Origin, RunData, RunStore, short_path};
use crate::tui::ui;

/// Engine and UI messages kept for the Log pane: hours of messages, well under a megabyte.
const LOG_CAPACITY: usize = 2000;
/// How often the Pairs pane looks for other labellers' decisions.
const LABEL_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The panes, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaneId {
    Runs,
    Curves,
    Samples,
    Pairs,
    Health,
    Log,
    System,
}

impl PaneId {
    pub const ALL: [PaneId; 7] = [
        PaneId::Runs,
        PaneId::Curves,
        PaneId::Samples,
        PaneId::Pairs,
        PaneId::Health,
        PaneId::Log,
        PaneId::System,
    ];

    pub fn title(self) -> &'static str {
        match self {
            PaneId::Runs => "Runs",
            PaneId::Curves => "Curves",
            PaneId::Samples => "Samples",
            PaneId::Pairs => "Pairs",
            PaneId::Health => "Health",
            PaneId::Log => "Log",
            PaneId::System => "System",
        }
    }

    /// The digit that focuses it.
    pub fn number(self) -> usize {
        PaneId::ALL.iter().position(|p| *p == self).unwrap_or(0) + 1
    }

    pub fn scope(self) -> Scope {
        match self {
            PaneId::Runs => Scope::Runs,
            PaneId::Curves => Scope::Curves,
            PaneId::Samples => Scope::Samples,
            PaneId::Pairs => Scope::Pairs,
            PaneId::Health => Scope::Health,
            PaneId::Log => Scope::Log,
            // No keys of its own.
            PaneId::System => Scope::Global,
        }
    }

    fn cycle(self, forward: bool) -> PaneId {
        let i = self.number() - 1;
        let n = PaneId::ALL.len();
        PaneId::ALL[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }
}

/// Whether a pane used an action (gitui's `EventState`): if not, it goes on to the global keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventState {
    Consumed,
    NotConsumed,
}

/// Settings the app needs; built from `WorkbenchOptions` (or by tests).
#[derive(Clone, Debug)]
pub struct AppConfig {
    pub configs_dir: PathBuf,
    pub runs_root: PathBuf,
    /// Label log, ready-made pairs and the preference file live here.
    pub labels_dir: PathBuf,
    pub device: DeviceChoice,
    /// CPU cores, for the note shown when live runs share the CPU.
    pub cpu_cores: usize,
    /// Seeds the per-pair left/right order.
    pub pair_seed: u64,
    /// Buckets kept per metric series (see [`series::DEFAULT_CAP`]).
    pub series_cap: usize,
    /// Who labels in this workbench (`--annotator`, default the login name).
    pub annotator: String,
}

impl AppConfig {
    pub fn new(configs_dir: PathBuf, runs_root: PathBuf, device: DeviceChoice) -> Self {
        Self {
            labels_dir: runs_root.join("labels"),
            configs_dir,
            runs_root,
            device,
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pair_seed: 0x5eed,
            series_cap: series::DEFAULT_CAP,
            annotator: crate::engine::label_store::default_annotator(),
        }
    }
}

/// One line of the Log pane.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub run: Option<RunId>,
    pub level: LogLevel,
    pub text: String,
}

/// The Log pane's lines and scroll position.
#[derive(Clone, Debug, Default)]
pub struct LogState {
    pub lines: VecDeque<LogLine>,
    /// Lines scrolled back from the newest; 0 follows new lines.
    pub back: usize,
}

impl LogState {
    pub fn push(&mut self, run: Option<&str>, level: LogLevel, text: impl Into<String>) {
        if self.lines.len() == LOG_CAPACITY {
            self.lines.pop_front();
        }
        self.lines.push_back(LogLine {
            run: run.map(str::to_string),
            level,
            text: text.into(),
        });
        if self.back > 0 {
            // Keep the view still while the user reads older lines.
            self.back = (self.back + 1).min(self.lines.len().saturating_sub(1));
        }
    }

    fn handle(&mut self, action: Action) -> EventState {
        let max = self.lines.len().saturating_sub(1);
        self.back = match action {
            Action::Up => (self.back + 1).min(max),
            Action::Down => self.back.saturating_sub(1),
            Action::PageUp => (self.back + 10).min(max),
            Action::PageDown => self.back.saturating_sub(10),
            Action::Home => max,
            Action::End => 0,
            _ => return EventState::NotConsumed,
        };
        EventState::Consumed
    }
}

/// A message in the status line until the next key.
#[derive(Clone, Debug, PartialEq)]
pub struct Toast {
    pub error: bool,
    pub text: String,
}

/// A config the new-run picker offers.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigEntry {
    pub path: PathBuf,
    /// `name (method)` read from the file, or why it could not be read.
    pub summary: String,
    /// The comment the config opens with (what it trains, how to use it), as one paragraph.
    pub description: String,
}

/// Dialogs drawn over the panes; they take all keys while open.
#[derive(Clone, Debug, PartialEq)]
pub enum Modal {
    Help {
        scroll: u16,
    },
    ConfirmQuit,
    ConfirmStop(RunId),
    NewRun {
        configs: Vec<ConfigEntry>,
        selected: usize,
    },
    /// A failure worth reading whole (a config that does not start): it stays until closed,
    /// and the Log pane keeps it.
    Error {
        title: String,
        text: String,
    },
}

/// Quitting: with live runs, stop them (each saves a checkpoint) and wait for them to end.
#[derive(Clone, Debug, PartialEq)]
pub enum QuitState {
    Running,
    Stopping { waiting: Vec<RunId> },
    Done,
}

/// The whole workbench state.
pub struct App {
    pub config: AppConfig,
    pub runs: RunStore,
    /// Index of the run the panes show.
    pub focused_run: Option<usize>,
    pub focus: PaneId,
    /// The pane shown in the main area of the wide layout (Curves, Samples or Pairs).
    pub main_tab: PaneId,
    /// The pane shown below Runs in the compact layout (any pane but Runs).
    pub compact_tab: PaneId,
    pub curves: CurvesState,
    pub samples: SamplesState,
    pub pairs: PairsState,
    pub health_scroll: u16,
    pub log: LogState,
    /// The machine: host, run processes and GPUs (the System pane).
    pub system: crate::tui::panes::system::SystemState,
    pub modal: Option<Modal>,
    pub toast: Option<Toast>,
    pub quit: QuitState,
    /// Something changed since the last frame.
    pub dirty: bool,
    /// The user quit without waiting for runs to stop.
    pub quit_forced: bool,
    engine: Box<dyn Engine>,
    last_sync: std::time::Instant,
}

impl App {
    pub fn new(config: AppConfig, engine: Box<dyn Engine>) -> Self {
        let pairs = PairsState::open(
            &config.labels_dir,
            &config.runs_root,
            config.pair_seed,
            &config.annotator,
        );
        let mut app = Self {
            runs: RunStore::default(),
            focused_run: None,
            focus: PaneId::Curves,
            main_tab: PaneId::Curves,
            compact_tab: PaneId::Curves,
            curves: CurvesState::default(),
            samples: SamplesState::default(),
            pairs,
            health_scroll: 0,
            log: LogState::default(),
            system: Default::default(),
            modal: None,
            toast: None,
            quit: QuitState::Running,
            dirty: true,
            quit_forced: false,
            engine,
            config,
            last_sync: std::time::Instant::now(),
        };
        if let Some(msg) = app.pairs.startup_note() {
            app.log.push(None, LogLevel::Warn, msg);
        }
        app
    }

    /// Work done between frames: reads what other labellers added to the label store about
    /// once a second (not every frame: each look is a database query).
    pub fn tick(&mut self, now: std::time::Instant) {
        if now.duration_since(self.last_sync) >= LABEL_SYNC_INTERVAL {
            self.last_sync = now;
            if self.pairs.sync() {
                self.dirty = true;
            }
        }
    }

    /// The run the panes show.
    pub fn focused(&self) -> Option<&RunData> {
        self.focused_run.and_then(|i| self.runs.get(i))
    }

    /// Whether the event loop should end.
    pub fn should_exit(&self) -> bool {
        self.quit == QuitState::Done
    }

    /// After quitting: waits up to `timeout` for run threads; returns how many still run.
    pub fn wait_for_engine(&mut self, timeout: std::time::Duration) -> usize {
        self.engine.wait(timeout)
    }

    /// Draws the whole screen.
    pub fn render(&self, frame: &mut Frame) {
        ui::render(frame, self);
    }

    /// Starts runs from configs (e.g. at startup); failures are shown, not returned, so the
    /// workbench still opens.
    pub fn autostart(&mut self, configs: &[PathBuf], overrides: &Overrides) {
        for (i, cfg) in configs.iter().enumerate() {
            // The run folder override names one folder: only the first run can have it.
            let o = Overrides {
                max_steps: overrides.max_steps,
                run_dir: if i == 0 {
                    overrides.run_dir.clone()
                } else {
                    None
                },
            };
            self.launch(cfg, &o);
        }
    }

    fn launch(&mut self, config: &Path, overrides: &Overrides) {
        match self.engine.launch(config, overrides) {
            Ok(l) => {
                let mut run = RunData::new(&l.id, &l.method, Origin::Live, self.config.series_cap);
                run.dir = Some(l.dir);
                run.total_steps = Some(l.total_steps);
                let i = self.runs.insert(run);
                self.focus_run(i);
                self.log.push(
                    Some(&l.id),
                    LogLevel::Info,
                    format!("launched {} from {}", l.method, file_name(config)),
                );
            }
            Err(e) => {
                let text = format!("could not start {}: {e:#}", file_name(config));
                self.log.push(None, LogLevel::Error, &text);
                self.modal = Some(Modal::Error {
                    title: format!("{} did not start", file_name(config)),
                    text: format!("{e:#}"),
                });
            }
        }
    }

    fn focus_run(&mut self, i: usize) {
        if self.focused_run != Some(i) {
            self.focused_run = Some(i);
            self.samples.on_run_changed();
            self.health_scroll = 0;
        }
        let id = self.runs.get(i).map(|r| r.id.clone());
        self.pairs.select_run(id.as_deref());
    }

    /// Opening without starting a run: the Runs pane has the focus (its keys are the ones the
    /// status line shows) and a hint says how to start one.
    pub fn open_on_saved_runs(&mut self, saved: usize) {
        self.set_focus(PaneId::Runs);
        let folder = file_name(&self.config.runs_root);
        let text = match saved {
            0 => format!("No runs in {folder}/ yet: n starts one from a config."),
            n => format!(
                "{n} saved run{} in {folder}/: n starts a new one, r resumes a stopped one.",
                if n == 1 { "" } else { "s" },
            ),
        };
        self.toast = Some(Toast { error: false, text });
    }

    /// A run of another engine followed from its files (`rlft watch`): listed at once, filled
    /// in by the watcher's events.
    /// Follows another engine's run at `path` (a folder or a log file), named after it (made
    /// unique among the runs shown).
    pub fn watch(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        let base = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "watched".into());
        let mut id = base.clone();
        let mut n = 2;
        while self.runs.index_of(&id).is_some() {
            id = format!("{base}-{n}");
            n += 1;
        }
        let kind = self.engine.watch(path, &id)?;
        self.add_watched(&id, kind, path.to_path_buf());
        Ok(())
    }

    pub fn add_watched(&mut self, id: &str, method: &str, dir: PathBuf) {
        let mut run = RunData::new(id, method, Origin::Watched, self.config.series_cap);
        run.status = RunStatus::Running;
        run.dir = Some(dir);
        let i = self.runs.insert(run);
        if self.focused_run.is_none() {
            self.focus_run(i);
        }
        self.dirty = true;
    }

    /// A run folder read from disk. Ignored if a run of that name is already known (it was
    /// launched in this session).
    pub fn on_loaded_run(&mut self, loaded: LoadedRun) {
        if self.runs.index_of(&loaded.id).is_some() {
            return;
        }
        let run = loaded.into_run(self.config.series_cap);
        let i = self.runs.insert(run);
        if self.focused_run.is_none() {
            self.focus_run(i);
        }
        self.dirty = true;
    }

    /// A new sample of the machine (CPU, memory, GPUs).
    pub fn on_system(&mut self, snap: crate::engine::system::SystemSnapshot) {
        self.system.push(snap);
        if self.focus == PaneId::System || self.compact_tab == PaneId::System {
            self.dirty = true;
        }
    }

    /// The processes the System pane follows: rlft itself while its own runs train, and the
    /// process of each running job `rlft launch` started on this machine.
    pub fn followed_processes(&self) -> Vec<crate::engine::system::Followed> {
        let mut out = Vec::new();
        let live: Vec<&str> = self
            .runs
            .all()
            .iter()
            .filter(|r| r.is_live())
            .map(|r| r.id.as_str())
            .collect();
        if !live.is_empty() {
            out.push(crate::engine::system::Followed {
                label: format!("rlft: {}", live.join(", ")),
                pid: std::process::id(),
            });
        }
        for r in self.runs.all() {
            if let Some(job) = &r.job
                && let Some(pid) = job.pid
                && matches!(job.state.as_str(), "pending" | "running")
            {
                out.push(crate::engine::system::Followed {
                    label: r.id.clone(),
                    pid,
                });
            }
        }
        out
    }

    /// A message for the Log pane from outside the engine (loader errors, panics).
    pub fn note(&mut self, level: LogLevel, text: impl Into<String>) {
        self.log.push(None, level, text);
        self.dirty = true;
    }

    /// Applies one engine event.
    pub fn on_engine_event(&mut self, ev: Event) {
        self.dirty = true;
        let id = ev.run().to_string();
        let cap = self.config.series_cap;
        let i = match self.runs.index_of(&id) {
            Some(i) => i,
            // A run this session did not launch (e.g. another driver's): show it anyway.
            None => self.runs.insert(RunData::new(&id, "?", Origin::Live, cap)),
        };
        if self.focused_run.is_none() {
            self.focus_run(i);
        }
        let Some(run) = self.runs.find_mut(&id) else {
            return;
        };
        match ev {
            Event::Started {
                method,
                run_dir,
                total_steps,
                model,
                ..
            } => {
                run.model = model;
                run.method = method.clone();
                run.dir = Some(run_dir);
                run.total_steps = Some(total_steps);
                if run.status == RunStatus::Starting {
                    run.status = RunStatus::Running;
                }
                self.log.push(
                    Some(&id),
                    LogLevel::Info,
                    format!("started {method}: {total_steps} steps"),
                );
            }
            Event::Metrics {
                step,
                wall_time,
                values,
                ..
            } => {
                if run.status == RunStatus::Starting {
                    run.status = RunStatus::Running;
                }
                run.push_metrics(step, wall_time, &values);
            }
            Event::Samples { step, samples, .. } => run.push_samples(step, samples),
            Event::Pairs { pairs, .. } => self.pairs.add_proposed(pairs),
            Event::Log { level, message, .. } => self.log.push(Some(&id), level, message),
            Event::Status { status, .. } => {
                // A late status must not revive a run that has ended.
                if !matches!(run.status, RunStatus::Finished | RunStatus::Failed) {
                    run.status = status;
                }
                self.quit_progress(&id);
            }
            Event::Best { best, .. } => run.best = Some(best),
            Event::Job { job, .. } => run.job = Some(job),
            Event::Checkpoint { step, path, .. } => {
                let shown = short_path(&path, run.dir.as_deref());
                run.last_checkpoint = Some((step, shown.clone()));
                self.log.push(
                    Some(&id),
                    LogLevel::Info,
                    format!("checkpoint at step {step}: {shown}"),
                );
            }
            Event::Finished { step, status, .. } => {
                run.status = status;
                let how = if status == RunStatus::Stopped {
                    "stopped"
                } else {
                    "finished"
                };
                self.log
                    .push(Some(&id), LogLevel::Info, format!("{how} at step {step}"));
                self.quit_progress(&id);
            }
            Event::Failed { step, error, .. } => {
                run.status = RunStatus::Failed;
                run.error = Some(error.clone());
                let at = step.map(|s| format!(" at step {s}")).unwrap_or_default();
                let text = format!("run {id} failed{at}: {error}");
                self.log.push(Some(&id), LogLevel::Error, &text);
                self.toast = Some(Toast { error: true, text });
                self.quit_progress(&id);
            }
        }
    }

    /// While quitting, notes that a run has ended; when none is left, quitting is done.
    fn quit_progress(&mut self, id: &str) {
        let ended = self
            .runs
            .index_of(id)
            .and_then(|i| self.runs.get(i))
            .is_some_and(|r| !r.is_live());
        if let QuitState::Stopping { waiting } = &mut self.quit {
            if ended {
                waiting.retain(|w| w != id);
            }
            if waiting.is_empty() {
                self.quit = QuitState::Done;
            }
        }
    }

    /// Applies a terminal event: keys (presses and repeats) and resizes.
    pub fn on_terminal_event(&mut self, ev: TermEvent) {
        match ev {
            TermEvent::Key(k) => self.on_key(k),
            TermEvent::Resize(..) => self.dirty = true,
            _ => {}
        }
    }

    /// Applies one key press.
    pub fn on_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        self.dirty = true;
        self.toast = None;
        if let Some(modal) = self.modal.take() {
            let next = self.modal_key(modal, &key);
            // A dialog the key itself opened (a launch error) replaces the one it closed.
            if self.modal.is_none() {
                self.modal = next;
            }
            return;
        }
        if let Some(action) = keymap::lookup(self.focus.scope(), &key)
            && self.pane_action(action) == EventState::Consumed
        {
            return;
        }
        if let Some(action) = keymap::lookup(Scope::Global, &key) {
            self.global_action(action);
        }
    }

    /// Keys while a dialog is open. Returns the dialog to keep open, if any.
    fn modal_key(&mut self, modal: Modal, key: &KeyEvent) -> Option<Modal> {
        let action = keymap::lookup(Scope::Dialog, key);
        match modal {
            Modal::Help { scroll } => match action {
                Some(Action::No | Action::Help) => None,
                Some(Action::Up) => Some(Modal::Help {
                    scroll: scroll.saturating_sub(1),
                }),
                Some(Action::Down) => Some(Modal::Help { scroll: scroll + 1 }),
                _ => Some(Modal::Help { scroll }),
            },
            Modal::ConfirmQuit => match action {
                Some(Action::Yes) => {
                    self.stop_all_and_quit();
                    None
                }
                Some(Action::No) => None,
                _ => Some(Modal::ConfirmQuit),
            },
            Modal::ConfirmStop(run) => match action {
                Some(Action::Yes) => {
                    self.command(&run, Command::Stop);
                    None
                }
                Some(Action::No) => None,
                _ => Some(Modal::ConfirmStop(run)),
            },
            Modal::NewRun { configs, selected } => match action {
                Some(Action::Up) => Some(Modal::NewRun {
                    selected: selected.saturating_sub(1),
                    configs,
                }),
                Some(Action::Down) => Some(Modal::NewRun {
                    selected: (selected + 1).min(configs.len().saturating_sub(1)),
                    configs,
                }),
                Some(Action::Yes) => {
                    if let Some(c) = configs.get(selected) {
                        let path = c.path.clone();
                        self.launch(&path, &Overrides::default());
                    }
                    None
                }
                Some(Action::No) => None,
                _ => Some(Modal::NewRun { configs, selected }),
            },
            Modal::Error { title, text } => match action {
                Some(Action::Yes | Action::No) => None,
                _ => Some(Modal::Error { title, text }),
            },
        }
    }

    fn global_action(&mut self, action: Action) {
        match action {
            Action::Help => self.modal = Some(Modal::Help { scroll: 0 }),
            Action::Quit => self.request_quit(),
            Action::NextPane => self.set_focus(self.focus.cycle(true)),
            Action::PrevPane => self.set_focus(self.focus.cycle(false)),
            Action::Focus(p) => self.set_focus(p),
            Action::NextRun => self.move_run(1, true),
            Action::PrevRun => self.move_run(-1, true),
            Action::NewRun => self.open_new_run(),
            _ => {}
        }
    }

    fn set_focus(&mut self, p: PaneId) {
        self.focus = p;
        if matches!(p, PaneId::Curves | PaneId::Samples | PaneId::Pairs) {
            self.main_tab = p;
        }
        if p != PaneId::Runs {
            self.compact_tab = p;
        }
    }

    /// Selects the run `delta` rows away; `]` and `[` wrap around the ends, the Runs pane's
    /// arrows stop at them (as lists do).
    fn move_run(&mut self, delta: isize, wrap: bool) {
        let n = self.runs.len() as isize;
        if n == 0 {
            return;
        }
        let cur = self.focused_run.unwrap_or(0) as isize;
        let next = if wrap {
            (cur + delta).rem_euclid(n)
        } else {
            (cur + delta).clamp(0, n - 1)
        };
        self.focus_run(next as usize);
    }

    fn request_quit(&mut self) {
        match &self.quit {
            // Asked again while waiting for runs to stop: quit now.
            QuitState::Stopping { .. } => {
                self.quit = QuitState::Done;
                self.quit_forced = true;
            }
            QuitState::Done => {}
            QuitState::Running => {
                if self.runs.live().next().is_some() {
                    self.modal = Some(Modal::ConfirmQuit);
                } else {
                    self.quit = QuitState::Done;
                }
            }
        }
    }

    /// Asks every live run to stop (each finishes its step and saves a checkpoint); returns
    /// the runs asked.
    pub fn stop_live_runs(&mut self) -> Vec<RunId> {
        let live: Vec<RunId> = self.runs.live().map(|r| r.id.clone()).collect();
        for id in &live {
            self.command(id, Command::Stop);
        }
        live
    }

    fn stop_all_and_quit(&mut self) {
        let live = self.stop_live_runs();
        self.quit = if live.is_empty() {
            QuitState::Done
        } else {
            QuitState::Stopping { waiting: live }
        };
    }

    fn command(&mut self, run: &str, command: Command) {
        let what = format!("{command:?}").to_lowercase();
        match self.engine.send(run, command) {
            Ok(()) => self
                .log
                .push(Some(run), LogLevel::Info, format!("asked to {what}")),
            Err(e) => {
                let text = format!("could not {what} {run}: {e:#}");
                self.log.push(Some(run), LogLevel::Error, &text);
                self.toast = Some(Toast { error: true, text });
            }
        }
    }

    /// Offers an action to the focused pane.
    fn pane_action(&mut self, action: Action) -> EventState {
        match self.focus {
            PaneId::Runs => self.runs_action(action),
            PaneId::Curves => {
                let run = self.focused_run.and_then(|i| self.runs.get(i));
                self.curves.handle(action, run)
            }
            PaneId::Samples if matches!(action, Action::ThumbsUp | Action::ThumbsDown) => {
                self.rate_selected(action == Action::ThumbsUp);
                EventState::Consumed
            }
            PaneId::Samples => {
                let run = self.focused_run.and_then(|i| self.runs.get(i));
                self.samples.handle(action, run)
            }
            PaneId::Pairs => self.pairs.handle(action),
            PaneId::Health => match action {
                Action::Up => {
                    self.health_scroll = self.health_scroll.saturating_sub(1);
                    EventState::Consumed
                }
                Action::Down => {
                    self.health_scroll = self.health_scroll.saturating_add(1);
                    EventState::Consumed
                }
                _ => EventState::NotConsumed,
            },
            PaneId::Log => self.log.handle(action),
            PaneId::System => EventState::NotConsumed,
        }
    }

    fn runs_action(&mut self, action: Action) -> EventState {
        match action {
            Action::Up => self.move_run(-1, false),
            Action::Down => self.move_run(1, false),
            Action::Pause | Action::Resume | Action::Stop | Action::Save => {
                let Some(run) = self.focused() else {
                    self.toast = Some(Toast {
                        error: false,
                        text: "No run selected. Press n to start one.".into(),
                    });
                    return EventState::Consumed;
                };
                let (id, live, status) = (run.id.clone(), run.is_live(), run.status);
                if run.origin == Origin::Watched {
                    let job_running = run.job.as_ref().is_some_and(|j| {
                        matches!(j.state.as_str(), "pending" | "running" | "unknown")
                    });
                    if action == Action::Stop && job_running {
                        self.modal = Some(Modal::ConfirmStop(id));
                    } else {
                        let text = match (&run.job, action) {
                            (Some(j), Action::Stop) => {
                                format!("Its job has {}: nothing to stop.", j.state)
                            }
                            (Some(_), _) => format!(
                                "{id} runs on another engine: only x (stop its job) applies."
                            ),
                            (None, _) => {
                                format!("rlft did not launch {id}: it only follows its files.")
                            }
                        };
                        self.toast = Some(Toast { error: false, text });
                    }
                    return EventState::Consumed;
                }
                if !live {
                    if action == Action::Resume
                        && matches!(status, RunStatus::Stopped | RunStatus::Failed)
                    {
                        self.resume_saved(&id);
                        return EventState::Consumed;
                    }
                    let word = crate::tui::theme::status_word(status);
                    let text = match action {
                        Action::Resume => format!("{id} has {word}: there is nothing to resume."),
                        _ => format!("{id} is {word}, not training: r resumes a stopped run."),
                    };
                    self.toast = Some(Toast { error: false, text });
                    return EventState::Consumed;
                }
                match action {
                    Action::Pause if status == RunStatus::Paused => {
                        self.toast = Some(Toast {
                            error: false,
                            text: format!("{id} is already paused; r resumes it."),
                        });
                    }
                    Action::Pause => self.command(&id, Command::Pause),
                    Action::Resume => self.command(&id, Command::Resume),
                    Action::Save => self.command(&id, Command::Save),
                    _ => self.modal = Some(Modal::ConfirmStop(id)),
                }
            }
            _ => return EventState::NotConsumed,
        }
        EventState::Consumed
    }

    /// Continues a stopped (or failed) run from its newest checkpoint, in its own folder: what
    /// `rlft train CONFIG --run-dir DIR --resume` does. The run's history is read again, since
    /// resuming drops the metrics logged after that checkpoint.
    fn resume_saved(&mut self, id: &str) {
        let Some(i) = self.runs.index_of(id) else {
            return;
        };
        let Some(dir) = self.runs.get(i).and_then(|r| r.dir.clone()) else {
            return;
        };
        match self.engine.resume(&dir) {
            Ok(l) => {
                let mut run = match crate::tui::store::load_run(&dir) {
                    Ok(loaded) => loaded.into_run(self.config.series_cap),
                    Err(e) => {
                        self.log.push(
                            Some(id),
                            LogLevel::Warn,
                            format!("could not read the run's history again: {e:#}"),
                        );
                        RunData::new(&l.id, &l.method, Origin::Live, self.config.series_cap)
                    }
                };
                run.origin = Origin::Live;
                run.status = RunStatus::Starting;
                run.error = None;
                run.dir = Some(l.dir);
                run.total_steps = Some(l.total_steps);
                let step = run.step;
                self.runs.replace(i, run);
                self.focus_run(i);
                self.log.push(
                    Some(id),
                    LogLevel::Info,
                    format!("resuming from the checkpoint at step {step}"),
                );
                self.toast = Some(Toast {
                    error: false,
                    text: format!("Resuming {id} from step {step}."),
                });
            }
            Err(e) => {
                let text = format!("could not resume {id}: {e:#}");
                self.log.push(Some(id), LogLevel::Error, &text);
                self.toast = Some(Toast { error: true, text });
            }
        }
    }

    /// Thumbs up or down on the selected sample, into the label store (KTO's unpaired labels).
    fn rate_selected(&mut self, good: bool) {
        let Some(run) = self.focused_run.and_then(|i| self.runs.get(i)) else {
            return;
        };
        let Some((step, i, sample)) = self.samples.selected_sample(run) else {
            self.toast = Some(Toast {
                error: false,
                text: "No sample to rate.".into(),
            });
            return;
        };
        let origin = crate::tui::panes::samples::sample_origin(&run.id, step, i);
        let (run_id, sample) = (run.id.clone(), sample.clone());
        let text = match self.pairs.rate(&run_id, &sample, &origin, good) {
            Ok(()) => format!(
                "Saved: sample #{} of step {step} {}.",
                i + 1,
                if good { "good" } else { "bad" }
            ),
            Err(e) => format!("Not saved: {e}"),
        };
        self.toast = Some(Toast {
            error: text.starts_with("Not"),
            text,
        });
    }

    fn open_new_run(&mut self) {
        let configs = list_configs(&self.config.configs_dir);
        if configs.is_empty() {
            self.toast = Some(Toast {
                error: true,
                text: format!("No .toml configs in {}.", self.config.configs_dir.display()),
            });
            return;
        }
        self.modal = Some(Modal::NewRun {
            configs,
            selected: 0,
        });
    }
}

/// A path's last component, for messages (full paths are long and machine-specific).
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The `.toml` files of the configs folder, by name, each with `name (method)` from its text.
pub fn list_configs(dir: &Path) -> Vec<ConfigEntry> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
            let description = text.as_deref().map(leading_comment).unwrap_or_default();
            let summary = match text.and_then(|t| {
                t.parse::<toml::Table>()
                    .map_err(|e| e.message().to_string())
            }) {
                Ok(t) => {
                    let stem = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let name = t.get("name").and_then(|v| v.as_str()).unwrap_or(&stem);
                    let method = t.get("method").and_then(|v| v.as_str()).unwrap_or("?");
                    format!("{name} ({method})")
                }
                Err(e) => format!("unreadable: {e}"),
            };
            ConfigEntry {
                path,
                summary,
                description,
            }
        })
        .collect()
}

/// The `#` comment block a config file opens with, as one paragraph.
fn leading_comment(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
