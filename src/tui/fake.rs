//! A fake engine and a scripted driver, so the whole workbench can be exercised without
//! training: snapshot tests and the render benchmark use them.
//!
//! [`FakeEngine`] answers launches and commands the way the real engine does (Started,
//! Status, Checkpoint, Finished events) and records what it was asked. [`Driver`] owns an
//! [`App`] on a `TestBackend` terminal and feeds it scripted events and keys. The `script`
//! functions make deterministic, realistic-looking GRPO, SFT and DPO metrics and samples.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, unbounded};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use crate::engine::events::{Command, Event, RunId, RunStatus, SampleRecord};
use crate::engine::labels::PairBuilder;
use crate::tui::app::{App, AppConfig};
use crate::tui::engine_link::{Engine, LaunchedRun, Overrides};

/// What the fake engine was asked, shared with the test that drives it.
#[derive(Clone, Debug, Default)]
pub struct FakeRecord {
    pub launched: Vec<PathBuf>,
    /// Run folders asked to resume.
    pub resumed: Vec<PathBuf>,
    pub commands: Vec<(RunId, Command)>,
    /// Newest step per run, as the driver reported it (checkpoints use it).
    pub steps: HashMap<RunId, usize>,
    /// Runs followed from files (`App::watch`): the id and path.
    pub watched: Vec<(RunId, PathBuf)>,
}

/// An engine that trains nothing but answers like the real one.
pub struct FakeEngine {
    events: Sender<Event>,
    record: Arc<Mutex<FakeRecord>>,
    /// When set, launches fail with this message (to show launch errors).
    pub fail_launch: Option<String>,
    /// When set, `Stop` only records the command: the test sends the run's end itself, to
    /// show the workbench waiting for a checkpoint.
    pub hold_stops: bool,
}

impl FakeEngine {
    pub fn new(events: Sender<Event>, record: Arc<Mutex<FakeRecord>>) -> Self {
        Self {
            events,
            record,
            fail_launch: None,
            hold_stops: false,
        }
    }

    fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// The events a run thread sends as it starts.
    fn announce(&self, run: LaunchedRun) -> LaunchedRun {
        self.emit(Event::Status {
            run: run.id.clone(),
            status: RunStatus::Starting,
        });
        self.emit(Event::Started {
            run: run.id.clone(),
            method: run.method.clone(),
            run_dir: run.dir.clone(),
            total_steps: run.total_steps,
            model: None,
        });
        run
    }

    fn record(&self) -> std::sync::MutexGuard<'_, FakeRecord> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for FakeEngine {
    fn launch(&mut self, config: &Path, overrides: &Overrides) -> anyhow::Result<LaunchedRun> {
        if let Some(msg) = &self.fail_launch {
            // The file's name, as the real engine's message ends with its path: screens in
            // tests must not show a temporary folder.
            let name = config.file_name().unwrap_or_default().to_string_lossy();
            anyhow::bail!("{name}: {msg}");
        }
        let stem = config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        let method = std::fs::read_to_string(config)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t.get("method")?.as_str().map(str::to_string))
            .unwrap_or_else(|| stem.clone());
        let id = {
            let mut rec = self.record();
            rec.launched.push(config.to_path_buf());
            // Unique like the run folders: name, name-2, name-3, ...
            let taken = rec
                .launched
                .iter()
                .filter(|p| p.file_stem() == config.file_stem())
                .count();
            if taken > 1 {
                format!("{stem}-{taken}")
            } else {
                stem
            }
        };
        let total_steps = overrides.max_steps.unwrap_or(100);
        Ok(self.announce(LaunchedRun {
            dir: PathBuf::from("runs").join(&id),
            id,
            method,
            total_steps,
        }))
    }

    fn resume(&mut self, run_dir: &Path) -> anyhow::Result<LaunchedRun> {
        // What the real engine reads back: the folder's method and max steps.
        let saved = crate::tui::store::load_run(run_dir)?;
        self.record().resumed.push(run_dir.to_path_buf());
        Ok(self.announce(LaunchedRun {
            id: saved.id,
            method: saved.method,
            dir: run_dir.to_path_buf(),
            total_steps: saved.total_steps.unwrap_or(100),
        }))
    }

    fn watch(&mut self, path: &Path, id: &str) -> anyhow::Result<&'static str> {
        self.record()
            .watched
            .push((id.to_string(), path.to_path_buf()));
        Ok("trl")
    }

    fn send(&mut self, run: &str, command: Command) -> anyhow::Result<()> {
        if self.record().watched.iter().any(|(id, _)| id == run) {
            // The real engine hands a watched run's Stop to its job; the job's state comes
            // back later as an event the test sends.
            self.record().commands.push((run.to_string(), command));
            return Ok(());
        }
        let step = {
            let mut rec = self.record();
            rec.commands.push((run.to_string(), command.clone()));
            rec.steps.get(run).copied().unwrap_or(0)
        };
        let dir = PathBuf::from("runs").join(run);
        let checkpoint = Event::Checkpoint {
            run: run.to_string(),
            step,
            path: dir.join("checkpoints").join(format!("step-{step:06}")),
        };
        match command {
            Command::Pause => self.emit(Event::Status {
                run: run.into(),
                status: RunStatus::Paused,
            }),
            Command::Resume => self.emit(Event::Status {
                run: run.into(),
                status: RunStatus::Running,
            }),
            Command::Save => self.emit(checkpoint),
            Command::Stop if self.hold_stops => {}
            Command::Stop => {
                self.emit(checkpoint);
                self.emit(Event::Status {
                    run: run.into(),
                    status: RunStatus::Stopped,
                });
                self.emit(Event::Finished {
                    run: run.into(),
                    step,
                    status: RunStatus::Stopped,
                });
            }
        }
        Ok(())
    }
}

/// An app on a test terminal, driven by scripted events and keys.
pub struct Driver {
    pub app: App,
    pub terminal: Terminal<TestBackend>,
    pub record: Arc<Mutex<FakeRecord>>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    /// Pairs proposed from each sampled step, as by a run with `[pairs] per_step` set.
    pub pairs_per_step: usize,
    pair_builder: PairBuilder,
}

impl Driver {
    /// A workbench of `width`x`height` with a fake engine.
    pub fn new(config: AppConfig, width: u16, height: u16) -> Self {
        let (tx, rx) = unbounded();
        let record = Arc::new(Mutex::new(FakeRecord::default()));
        let engine = FakeEngine::new(tx.clone(), record.clone());
        Self::with_engine(config, width, height, Box::new(engine), tx, rx, record)
    }

    /// Like [`Driver::new`] with a prepared engine (e.g. one whose launches fail).
    pub fn with_engine(
        config: AppConfig,
        width: u16,
        height: u16,
        engine: Box<dyn Engine>,
        events: Sender<Event>,
        inbox: Receiver<Event>,
        record: Arc<Mutex<FakeRecord>>,
    ) -> Self {
        let app = App::new(config, engine);
        let terminal = match Terminal::new(TestBackend::new(width, height)) {
            Ok(t) => t,
            Err(e) => match e {},
        };
        let mut d = Self {
            app,
            terminal,
            record,
            events,
            inbox,
            pairs_per_step: 4,
            pair_builder: PairBuilder::new(),
        };
        d.pump();
        d
    }

    /// The sender a fake engine for [`Driver::with_engine`] should use, and its inbox.
    pub fn channel() -> (Sender<Event>, Receiver<Event>) {
        unbounded()
    }

    /// Delivers every queued event to the app (as the event loop does each frame).
    pub fn pump(&mut self) {
        while let Ok(ev) = self.inbox.try_recv() {
            self.app.on_engine_event(ev);
        }
    }

    /// Sends one engine event and delivers it.
    pub fn send(&mut self, ev: Event) {
        if let Event::Metrics { run, step, .. } = &ev {
            let mut rec = self.record.lock().unwrap_or_else(|p| p.into_inner());
            rec.steps.insert(run.clone(), *step);
        }
        let _ = self.events.send(ev);
        self.pump();
    }

    /// A run appears: Started plus Running.
    pub fn start(&mut self, run: &str, method: &str, total_steps: usize) {
        self.send(Event::Started {
            run: run.into(),
            method: method.into(),
            run_dir: PathBuf::from("runs").join(run),
            total_steps,
            model: None,
        });
        self.send(Event::Status {
            run: run.into(),
            status: RunStatus::Running,
        });
    }

    /// Metrics for `steps` of a run from `gen`, and samples every `sample_every` steps.
    pub fn train(
        &mut self,
        run: &str,
        steps: std::ops::RangeInclusive<usize>,
        gen_metrics: fn(usize) -> BTreeMap<String, f64>,
        sample_every: usize,
    ) {
        for step in steps {
            self.send(Event::Metrics {
                run: run.into(),
                step,
                wall_time: step as f64 * 1.5,
                values: gen_metrics(step),
            });
            if sample_every > 0 && step.is_multiple_of(sample_every) {
                let samples = script::arith_samples(step, 4);
                let pairs = self
                    .pair_builder
                    .propose(run, step, &samples, self.pairs_per_step);
                self.send(Event::Samples {
                    run: run.into(),
                    step,
                    samples,
                });
                if !pairs.is_empty() {
                    self.send(Event::Pairs {
                        run: run.into(),
                        step,
                        pairs,
                    });
                }
            }
        }
    }

    /// Presses a key.
    pub fn key(&mut self, code: KeyCode) {
        self.key_with(code, KeyModifiers::NONE);
    }

    pub fn key_with(&mut self, code: KeyCode, mods: KeyModifiers) {
        self.app.on_key(KeyEvent::new(code, mods));
        self.pump();
    }

    /// Types characters, one key each.
    pub fn keys(&mut self, chars: &str) {
        for c in chars.chars() {
            let mods = if c.is_ascii_uppercase() {
                KeyModifiers::SHIFT
            } else {
                KeyModifiers::NONE
            };
            self.key_with(KeyCode::Char(c), mods);
        }
    }

    pub fn resize(&mut self, width: u16, height: u16) {
        self.terminal.backend_mut().resize(width, height);
        // `Terminal::draw` notices the new size on the next frame, as after a real resize.
    }

    /// Draws a frame and returns the screen as text (one quoted line per row).
    pub fn render(&mut self) -> String {
        let app = &self.app;
        if let Err(e) = self.terminal.draw(|f| app.render(f)) {
            match e {}
        }
        self.terminal.backend().to_string()
    }
}

/// Deterministic metric and sample generators.
pub mod script {
    use super::*;

    /// Smooth-looking noise in [-1, 1], fixed per (step, salt).
    pub fn noise(step: usize, salt: u64) -> f64 {
        let mut x = (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ salt.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 31;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 29;
        (x % 20_001) as f64 / 10_000.0 - 1.0
    }

    fn row(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// A GRPO run on sums learning: reward rises from ~0.1 to ~0.9, KL grows slowly,
    /// entropy falls gently, fewer groups lack signal over time.
    pub fn grpo_metrics(step: usize) -> BTreeMap<String, f64> {
        let t = step as f64;
        let progress = 1.0 - (-t / 60.0).exp();
        row(&[
            ("reward", 0.1 + 0.8 * progress + 0.08 * noise(step, 1)),
            ("reward_std", 0.35 - 0.15 * progress + 0.03 * noise(step, 2)),
            ("kl", 0.002 + 0.03 * progress + 0.004 * noise(step, 3)),
            ("loss", 0.01 * noise(step, 4)),
            ("entropy", 1.4 - 0.5 * progress + 0.05 * noise(step, 5)),
            ("frac_reward_zero_std", 0.2 + 0.1 * noise(step, 6).abs()),
            ("grad_norm", 0.6 + 0.2 * noise(step, 7).abs()),
            ("learning_rate", 1e-5),
        ])
    }

    /// SFT on sums: loss falls, token accuracy rises, eval every 20 steps.
    pub fn sft_metrics(step: usize) -> BTreeMap<String, f64> {
        let t = step as f64;
        let mut m = row(&[
            (
                "loss",
                0.4 + 2.4 * (-t / 15.0).exp() + 0.05 * noise(step, 11),
            ),
            ("mean_token_accuracy", 0.95 - 0.7 * (-t / 15.0).exp()),
            ("grad_norm", 1.0 + 0.5 * noise(step, 12).abs()),
            ("learning_rate", 5e-4),
        ]);
        if step.is_multiple_of(20) {
            m.insert("eval_loss".into(), 0.5 + 2.2 * (-t / 15.0).exp());
        }
        m
    }

    /// DPO: margins and accuracies rise, loss falls.
    pub fn dpo_metrics(step: usize) -> BTreeMap<String, f64> {
        let p = 1.0 - (-(step as f64) / 40.0).exp();
        row(&[
            ("rewards/margins", 2.0 * p + 0.2 * noise(step, 21)),
            ("rewards/accuracies", 0.5 + 0.45 * p),
            ("loss", 0.69 - 0.5 * p + 0.03 * noise(step, 22)),
            ("grad_norm", 3.0 + noise(step, 23).abs()),
        ])
    }

    /// A GRPO group on one sum: `group` completions, right more often as steps go on.
    pub fn arith_samples(step: usize, group: usize) -> Vec<SampleRecord> {
        let a = 10 + step % 37;
        let b = 20 + (step * 7) % 41;
        let prompt = format!("{a}+{b}=");
        let right = a + b;
        let rewards: Vec<f64> = (0..group)
            .map(|i| {
                if (step / 10 + i).is_multiple_of(3) {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let mean = rewards.iter().sum::<f64>() / group.max(1) as f64;
        (0..group)
            .map(|i| {
                let ok = rewards[i] > 0.5;
                let completion = if ok {
                    right.to_string()
                } else {
                    (right + 10 - i).to_string()
                };
                SampleRecord {
                    step,
                    prompt: prompt.clone(),
                    completion,
                    rewards: BTreeMap::from([
                        ("correct".to_string(), rewards[i]),
                        ("format".to_string(), 1.0),
                    ]),
                    advantage: Some(rewards[i] - mean),
                }
            })
            .collect()
    }
}
