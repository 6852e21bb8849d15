//! Snapshot tests of the workbench: each pane and the whole screen at 80x24 and 160x48,
//! driven by scripted engine events from a fake engine and scripted keys. No training runs.
//!
//! Accept new snapshots with `INSTA_UPDATE=always cargo test --release --test tui_snapshots`,
//! then read the `.snap` files: they are what a user would see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crossterm::event::{KeyCode, KeyModifiers};
use rlft::engine::device::DeviceChoice;
use rlft::engine::events::{Command, Event, LogLevel, RunStatus};
use rlft::tui::app::{AppConfig, PaneId, QuitState};
use rlft::tui::fake::{Driver, FakeEngine, FakeRecord, script};
use rlft::tui::store;

/// Both sizes every pane is checked at: the smallest fully usable terminal and a large one.
const SMALL: (u16, u16) = (80, 24);
const LARGE: (u16, u16) = (160, 48);

/// A temporary workspace with `configs/` holding GRPO, SFT and DPO configs.
struct Workspace {
    tmp: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let configs = tmp.path().join("configs");
        std::fs::create_dir_all(&configs).expect("configs dir");
        for (file, method, name, about) in [
            (
                "grpo.toml",
                "grpo",
                "grpo-arith",
                "# GRPO on the arithmetic task with the shipped base model: 8 completions per\n\
                 # prompt, reward = exact match of the sum.\n",
            ),
            ("sft.toml", "sft", "sft-arith", ""),
            ("dpo.toml", "dpo", "dpo-arith", ""),
        ] {
            std::fs::write(
                configs.join(file),
                format!("{about}method = \"{method}\"\nname = \"{name}\"\n"),
            )
            .expect("config");
        }
        Self { tmp }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn config(&self) -> AppConfig {
        let mut c = AppConfig::new(
            self.path().join("configs"),
            self.path().join("runs"),
            DeviceChoice::Cpu,
        );
        // Fixed so snapshots do not depend on the machine.
        c.cpu_cores = 2;
        c.labels_dir = self.path().join("labels");
        c
    }

    fn driver(&self, (w, h): (u16, u16)) -> Driver {
        Driver::new(self.config(), w, h)
    }
}

/// A GRPO run 120 steps in, with samples every 10 steps.
fn grpo_run(d: &mut Driver, name: &str) {
    d.start(name, "grpo", 500);
    d.train(name, 1..=120, script::grpo_metrics, 10);
}

fn sft_run(d: &mut Driver, name: &str) {
    d.start(name, "sft", 60);
    d.train(name, 1..=45, script::sft_metrics, 20);
}

/// A GRPO run going wrong: KL explodes after step 30, a grad-norm spike at 45, NaN loss at
/// 50, and most groups without reward variance.
fn troubled_metrics(step: usize) -> BTreeMap<String, f64> {
    let mut m = script::grpo_metrics(step);
    if step > 30 {
        m.insert("kl".into(), 0.02 * 1.25f64.powi((step - 30) as i32));
    }
    if step == 45 {
        m.insert("grad_norm".into(), 40.0);
    }
    if step >= 50 {
        m.insert("loss".into(), f64::NAN);
    }
    m.insert("frac_reward_zero_std".into(), 0.96);
    m
}

/// One `metrics.jsonl` line as the engine writes it.
fn metrics_line(step: usize, wall_time: f64, values: BTreeMap<String, f64>) -> String {
    let mut row = serde_json::to_value(values).expect("json");
    row["step"] = step.into();
    row["wall_time"] = wall_time.into();
    row.to_string() + "\n"
}

fn snap_name(what: &str, (w, h): (u16, u16)) -> String {
    format!("{what}_{w}x{h}")
}

#[test]
fn whole_screen_grpo_learning_live() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        grpo_run(&mut d, "grpo-arith");
        insta::assert_snapshot!(snap_name("screen_grpo_learning_live", size), d.render());
    }
}

#[test]
fn whole_screen_two_live_runs_say_they_share_the_cpu() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        grpo_run(&mut d, "grpo-arith");
        sft_run(&mut d, "sft-arith");
        let screen = d.render();
        assert!(screen.contains("2 live runs share 2 CPU cores"), "{screen}");
        insta::assert_snapshot!(snap_name("screen_two_runs_share_cpu", size), screen);
    }
}

/// Four runs: live GRPO, paused SFT, a DPO run read from disk, and a failed run.
fn four_runs(ws: &Workspace, d: &mut Driver) {
    grpo_run(d, "grpo-arith");
    sft_run(d, "sft-arith");
    d.key(KeyCode::Char('1'));
    d.key(KeyCode::Down);
    d.key(KeyCode::Char('p'));
    let dir = ws.path().join("runs").join("dpo-arith");
    std::fs::create_dir_all(dir.join("checkpoints").join("final")).expect("run dir");
    std::fs::write(
        dir.join("config.toml"),
        "method = \"dpo\"\n[train]\nmax_steps = 80\n",
    )
    .expect("config");
    let rows: String = (1..=80)
        .map(|s| metrics_line(s, s as f64 * 2.0, script::dpo_metrics(s)))
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), rows).expect("metrics");
    let loaded = store::load_run(&dir).expect("load");
    d.app.on_loaded_run(loaded);
    d.start("ppo-broken", "ppo", 200);
    d.train("ppo-broken", 1..=12, script::grpo_metrics, 0);
    d.send(Event::Failed {
        run: "ppo-broken".into(),
        step: Some(13),
        error: "out of memory allocating 512 MiB for the KV cache".into(),
    });
}

#[test]
fn runs_pane_lists_live_saved_paused_and_failed_runs() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        four_runs(&ws, &mut d);
        // Select the first run again: the failed one's toast is cleared by the key.
        d.key(KeyCode::Up);
        d.key(KeyCode::Up);
        d.key(KeyCode::Up);
        let rec = d.record.lock().expect("record").commands.clone();
        assert_eq!(rec, vec![("sft-arith".to_string(), Command::Pause)]);
        insta::assert_snapshot!(snap_name("pane_runs_four_runs", size), d.render());
    }
}

#[test]
fn engine_failure_is_shown_and_the_ui_stays_up() {
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    four_runs(&ws, &mut d);
    let screen = d.render();
    assert!(screen.contains("ppo-broken failed at step 13"), "{screen}");
    insta::assert_snapshot!("screen_engine_failure_80x24", screen);
    // Keys still work after the failure: select the failed run and open Health.
    d.key(KeyCode::Down);
    d.key(KeyCode::Down);
    d.key(KeyCode::Char('5'));
    let screen = d.render();
    assert!(screen.contains("Run failed: out of memory"), "{screen}");
    insta::assert_snapshot!("pane_health_failed_run_80x24", screen);
}

#[test]
fn curves_pane_with_crosshair_log_y_and_wall_time() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        grpo_run(&mut d, "grpo-arith");
        d.key(KeyCode::Char('2'));
        // Crosshair appears at the newest step, then 30 steps back (1% of the range each).
        d.key(KeyCode::Left);
        d.key_with(KeyCode::Left, KeyModifiers::SHIFT);
        d.key_with(KeyCode::Left, KeyModifiers::SHIFT);
        d.key_with(KeyCode::Left, KeyModifiers::SHIFT);
        d.keys("l");
        insta::assert_snapshot!(snap_name("pane_curves_crosshair_log_y", size), d.render());
        d.keys("lw++");
        let screen = d.render();
        assert!(screen.contains("EMA 0.70"), "{screen}");
        assert!(screen.contains("x time"), "{screen}");
        insta::assert_snapshot!(
            snap_name("pane_curves_wall_time_more_smoothing", size),
            screen
        );
    }
}

#[test]
fn curves_pane_overlays_other_runs_and_picks_metrics() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        grpo_run(&mut d, "grpo-arith");
        d.start("grpo-lr-high", "grpo", 500);
        d.train(
            "grpo-lr-high",
            1..=80,
            |s| {
                let mut m = script::grpo_metrics(s * 2);
                m.insert("kl".into(), 0.05 + 0.002 * s as f64);
                m
            },
            0,
        );
        d.keys("2o");
        insta::assert_snapshot!(snap_name("pane_curves_overlay_two_runs", size), d.render());
        // Metric names cycle in name order: chart 3 goes kl -> learning_rate -> loss.
        d.key(KeyCode::Down);
        d.key(KeyCode::Down);
        d.keys("mm");
        let shown = d.app.curves.slot_metrics(d.app.focused().expect("run"))[2].clone();
        assert_eq!(shown.as_deref(), Some("loss"));
        insta::assert_snapshot!(
            snap_name("pane_curves_second_chart_picked_loss", size),
            d.render()
        );
    }
}

#[test]
fn curves_defaults_for_sft_and_dpo() {
    let ws = Workspace::new();
    let mut d = ws.driver(LARGE);
    sft_run(&mut d, "sft-arith");
    insta::assert_snapshot!("pane_curves_sft_defaults_160x48", d.render());
    let mut d = ws.driver(LARGE);
    d.start("dpo-arith", "dpo", 80);
    d.train("dpo-arith", 1..=80, script::dpo_metrics, 0);
    insta::assert_snapshot!("pane_curves_dpo_defaults_160x48", d.render());
}

#[test]
fn samples_pane_follows_live_and_scrubs_back() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        grpo_run(&mut d, "grpo-arith");
        d.key(KeyCode::Char('3'));
        insta::assert_snapshot!(snap_name("pane_samples_live", size), d.render());
        d.key(KeyCode::Left);
        d.key(KeyCode::Left);
        d.key(KeyCode::Down);
        // New steps arrive; the scrubbed-back view stays where it is.
        d.train("grpo-arith", 121..=130, script::grpo_metrics, 10);
        let screen = d.render();
        assert!(screen.contains("step 100 · 10 of 13"), "{screen}");
        insta::assert_snapshot!(snap_name("pane_samples_scrubbed_back", size), screen);
    }
}

#[test]
fn samples_wrap_long_text() {
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    d.start("sft-chat", "sft", 10);
    d.send(Event::Samples {
        run: "sft-chat".into(),
        step: 5,
        samples: vec![rlft::engine::events::SampleRecord {
            step: 5,
            prompt: "<|user|>\nWrite two lines about the sea, in the manner of the sonnets, \
                     and keep them short.\n<|assistant|>\n"
                .into(),
            completion: "The sea doth hold the moon in silver chains,\nand every tide returns \
                         what longing gains; an extraordinarilyunbreakablewordthatmustwrap."
                .into(),
            rewards: BTreeMap::new(),
            advantage: None,
        }],
    });
    d.key(KeyCode::Char('3'));
    insta::assert_snapshot!("pane_samples_long_text_wraps_80x24", d.render());
}

#[test]
fn pairs_labelling_flow_with_undo() {
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    d.start("grpo-arith", "grpo", 500);
    d.train("grpo-arith", 1..=60, script::grpo_metrics, 10);
    d.key(KeyCode::Char('4'));
    assert_eq!(d.app.focus, PaneId::Pairs);
    assert_eq!(d.app.pairs.queued(), 6);
    insta::assert_snapshot!("pairs_flow_1_first_pair_80x24", d.render());

    // A better (the left answer).
    let first = d.app.pairs.current().expect("pair").clone();
    let left = if first.a_on_left(d.app.config.pair_seed) {
        first.a.clone()
    } else {
        first.b.clone()
    };
    d.keys("a");
    insta::assert_snapshot!("pairs_flow_2_after_a_better_80x24", d.render());

    // Skip one, call the next a tie, then undo the tie.
    d.keys("st");
    insta::assert_snapshot!("pairs_flow_3_after_skip_and_tie_80x24", d.render());
    let tied = d.app.pairs.counters();
    assert_eq!((tied.labeled, tied.skipped), (2, 1));
    d.keys("u");
    let screen = d.render();
    assert!(screen.contains("Undone"), "{screen}");
    insta::assert_snapshot!("pairs_flow_4_after_undo_pair_is_back_80x24", screen);
    let c = d.app.pairs.counters();
    assert_eq!((c.labeled, c.skipped, c.preferences), (1, 1, 1));
    assert_eq!(c.left_chosen_pct(), Some(100.0));

    // On disk: three decisions and one retraction, appended in order; one TRL preference.
    let log = std::fs::read_to_string(ws.path().join("labels/labels.jsonl")).expect("log");
    let kinds: Vec<&str> = log
        .lines()
        .map(|l| {
            if l.contains("\"kind\":\"retract\"") {
                "retract"
            } else if l.contains("\"decision\":\"skip\"") {
                "skip"
            } else if l.contains("\"decision\":\"tie\"") {
                "tie"
            } else {
                "prefer"
            }
        })
        .collect();
    assert_eq!(kinds, vec!["prefer", "skip", "tie", "retract"]);
    let prefs = std::fs::read_to_string(ws.path().join("labels/preferences.jsonl")).expect("prefs");
    let rows: Vec<serde_json::Value> = prefs
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["prompt"], first.prompt.as_str());
    assert_eq!(rows[0]["chosen"], left.as_str());

    // B better on the returned pair; the Backspace key undoes too.
    d.keys("b");
    assert_eq!(d.app.pairs.counters().preferences, 2);
    d.key(KeyCode::Backspace);
    assert_eq!(d.app.pairs.counters().preferences, 1);
}

#[test]
fn pairs_pane_at_large_size_and_a_new_session_resumes_the_counts() {
    let ws = Workspace::new();
    let mut d = ws.driver(LARGE);
    d.start("grpo-arith", "grpo", 500);
    d.train("grpo-arith", 1..=40, script::grpo_metrics, 10);
    d.keys("4ax");
    insta::assert_snapshot!("pane_pairs_after_two_labels_160x48", d.render());
    // A fresh workbench on the same labels folder picks up the log; labelled pairs are
    // not offered again.
    let mut again = ws.driver(LARGE);
    again.start("grpo-arith", "grpo", 500);
    again.train("grpo-arith", 1..=40, script::grpo_metrics, 10);
    let c = again.app.pairs.counters();
    assert_eq!((c.labeled, c.preferences), (2, 1));
    assert_eq!(again.app.pairs.queued(), 2);
}

/// Pairs an online DPO run proposes with the AI judge's verdicts: the verdict is shown beside
/// the pair, `g` accepts it, a/b override it, and agreement is counted and logged.
#[test]
fn pairs_pane_shows_the_ai_judge_verdict_and_audits_agreement() {
    use rlft::engine::judge::{Judgement, Verdict};
    use rlft::engine::labels::{PairItem, ProposedPair};
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    d.start("rlaif", "online_dpo", 100);
    let judged = |prompt: &str, a: &str, b: &str, verdict: Verdict, p_a: f64| ProposedPair {
        pair: PairItem::new("rlaif", prompt, a, b, "rlaif@1#a", "rlaif@1#b"),
        judge: Some(Judgement {
            verdict,
            consistent: true,
            chose_first: (Some(verdict == Verdict::A), Some(verdict == Verdict::B)),
            p_a: Some(p_a),
        }),
        judge_error: None,
    };
    d.app.on_engine_event(Event::Pairs {
        run: "rlaif".into(),
        step: 1,
        pairs: vec![
            judged(
                "Review:",
                "What a lovely, joyful evening.",
                "A dull and sorry play.",
                Verdict::A,
                0.81,
            ),
            judged(
                "Review:",
                "I hated every minute.",
                "Sweet music, kind friends.",
                Verdict::B,
                0.22,
            ),
            ProposedPair {
                pair: PairItem::new(
                    "rlaif",
                    "Review:",
                    "Fine.",
                    "Bad.",
                    "rlaif@1#a",
                    "rlaif@1#b",
                ),
                judge: None,
                judge_error: Some("judge `smollm2` timed out after 30 s".into()),
            },
        ],
    });
    d.key(KeyCode::Char('4'));
    let screen = d.render();
    assert!(screen.contains("AI judge:"), "{screen}");
    insta::assert_snapshot!("pairs_judge_1_verdict_shown_80x24", screen);
    // Accept the judge's verdict, then override the next one.
    d.keys("g");
    let second = d.app.pairs.current().expect("pair").clone();
    let judge_side_is_left = !second.a_on_left(d.app.config.pair_seed); // the judge chose b
    d.keys(if judge_side_is_left { "b" } else { "a" });
    let audit = d.app.pairs.audit();
    assert_eq!((audit.audited, audit.agreed), (2, 1));
    let screen = d.render();
    assert!(screen.contains("AI judge failed"), "{screen}");
    insta::assert_snapshot!("pairs_judge_2_after_accept_and_override_80x24", screen);
    let log = std::fs::read_to_string(ws.path().join("labels/labels.jsonl")).expect("log");
    assert_eq!(log.lines().filter(|l| l.contains("\"judge\":")).count(), 2);
}

#[test]
fn pairs_pane_empty_queue_explains_where_pairs_come_from() {
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    d.keys("4");
    insta::assert_snapshot!("pane_pairs_empty_80x24", d.render());
}

#[test]
fn health_pane_explains_warnings() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        d.start("grpo-hot", "grpo", 500);
        d.train("grpo-hot", 1..=55, troubled_metrics, 0);
        d.key(KeyCode::Char('5'));
        let screen = d.render();
        for needle in [
            "NaN/inf",
            "KL exploding",
            "No learning signal",
            "Grad-norm spike",
        ] {
            assert!(screen.contains(needle), "{needle} missing:\n{screen}");
        }
        insta::assert_snapshot!(snap_name("pane_health_warnings", size), screen);
    }
}

#[test]
fn log_pane_shows_engine_messages_not_stdout() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        grpo_run(&mut d, "grpo-arith");
        d.send(Event::Log {
            run: "grpo-arith".into(),
            level: LogLevel::Warn,
            message: "completion truncated at max_new_tokens in 12 of 16 samples".into(),
        });
        d.send(Event::Checkpoint {
            run: "grpo-arith".into(),
            step: 100,
            path: PathBuf::from("runs/grpo-arith/checkpoints/step-000100"),
        });
        d.key(KeyCode::Char('6'));
        insta::assert_snapshot!(snap_name("pane_log", size), d.render());
    }
}

#[test]
fn help_overlay_lists_every_key() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        grpo_run(&mut d, "grpo-arith");
        d.keys("?");
        insta::assert_snapshot!(snap_name("help_overlay", size), d.render());
        d.key(KeyCode::Esc);
        assert!(d.app.modal.is_none());
    }
    // Every binding's help text is reachable: at 160x48 in two columns, scrolled at 80x24.
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    d.keys("?");
    let mut seen = String::new();
    for _ in 0..80 {
        seen.push_str(&d.render());
        d.key(KeyCode::Down);
    }
    for b in rlft::tui::keymap::BINDINGS {
        assert!(seen.contains(b.help), "help misses {:?}", b.help);
    }
}

#[test]
fn resize_below_minimum_says_too_small_and_recovers() {
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    grpo_run(&mut d, "grpo-arith");
    d.render();
    d.resize(50, 15);
    insta::assert_snapshot!("too_small_50x15", d.render());
    d.resize(80, 24);
    let screen = d.render();
    assert!(!screen.contains("too small"));
    assert_eq!(screen, {
        let mut fresh = ws.driver(SMALL);
        grpo_run(&mut fresh, "grpo-arith");
        fresh.render()
    });
}

#[test]
fn quitting_with_live_runs_asks_then_stops_them_and_waits_for_checkpoints() {
    let ws = Workspace::new();
    let (tx, rx) = Driver::channel();
    let record = Arc::new(Mutex::new(FakeRecord::default()));
    let mut engine = FakeEngine::new(tx.clone(), record.clone());
    engine.hold_stops = true;
    let mut d = Driver::with_engine(ws.config(), 80, 24, Box::new(engine), tx, rx, record);
    grpo_run(&mut d, "grpo-arith");
    sft_run(&mut d, "sft-arith");
    d.keys("q");
    insta::assert_snapshot!("quit_confirm_with_live_runs_80x24", d.render());
    d.keys("y");
    assert!(matches!(d.app.quit, QuitState::Stopping { .. }));
    insta::assert_snapshot!("quit_waiting_for_checkpoints_80x24", d.render());
    let stops: Vec<String> = d
        .record
        .lock()
        .expect("record")
        .commands
        .iter()
        .filter(|(_, c)| *c == Command::Stop)
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(stops, vec!["grpo-arith", "sft-arith"]);
    for (run, step) in [("grpo-arith", 120), ("sft-arith", 45)] {
        assert!(!d.app.should_exit());
        d.send(Event::Checkpoint {
            run: run.into(),
            step,
            path: PathBuf::from(format!("runs/{run}/checkpoints/step-{step:06}")),
        });
        d.send(Event::Finished {
            run: run.into(),
            step,
            status: RunStatus::Stopped,
        });
    }
    assert!(d.app.should_exit());
    assert!(!d.app.quit_forced);
}

#[test]
fn quitting_without_live_runs_is_immediate_and_n_cancels() {
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    grpo_run(&mut d, "grpo-arith");
    d.keys("qn");
    assert!(!d.app.should_exit());
    d.send(Event::Finished {
        run: "grpo-arith".into(),
        step: 120,
        status: RunStatus::Finished,
    });
    d.key_with(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert!(d.app.should_exit());
}

#[test]
fn new_run_picker_launches_from_configs_and_controls_reach_the_engine() {
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    d.keys("1n");
    insta::assert_snapshot!("new_run_picker_80x24", d.render());
    d.key(KeyCode::Down);
    d.key(KeyCode::Enter);
    let launched = d.record.lock().expect("record").launched.clone();
    assert_eq!(launched, vec![ws.path().join("configs/grpo.toml")]);
    d.train("grpo", 1..=30, script::grpo_metrics, 10);
    // Pause, resume, checkpoint, then stop (asks first).
    d.keys("prc");
    d.keys("x");
    insta::assert_snapshot!("stop_confirm_80x24", d.render());
    d.keys("y");
    let cmds: Vec<Command> = d
        .record
        .lock()
        .expect("record")
        .commands
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    assert_eq!(
        cmds,
        vec![
            Command::Pause,
            Command::Resume,
            Command::Save,
            Command::Stop
        ]
    );
    insta::assert_snapshot!("run_stopped_after_checkpoint_80x24", d.render());
}

#[test]
fn a_failed_launch_is_reported_not_fatal() {
    let ws = Workspace::new();
    let (tx, rx) = Driver::channel();
    let record = Arc::new(Mutex::new(FakeRecord::default()));
    let mut engine = FakeEngine::new(tx.clone(), record.clone());
    engine.fail_launch = Some("[model] path is required".into());
    let mut d = Driver::with_engine(ws.config(), 80, 24, Box::new(engine), tx, rx, record);
    d.keys("1n");
    d.key(KeyCode::Enter);
    let screen = d.render();
    assert!(screen.contains("dpo.toml did not start"), "{screen}");
    assert!(d.app.runs.is_empty());
    assert!(!d.app.should_exit());
}

#[test]
fn saved_runs_load_from_disk() {
    let ws = Workspace::new();
    let dir = ws.path().join("runs").join("sft-arith");
    std::fs::create_dir_all(dir.join("checkpoints").join("step-000040")).expect("dir");
    std::fs::write(
        dir.join("config.toml"),
        "method = \"sft\"\n[train]\nmax_steps = 60\n",
    )
    .expect("config");
    let rows: String = (1..=40)
        .map(|s| metrics_line(s, s as f64, script::sft_metrics(s)))
        .collect();
    // The last line was cut short by a kill.
    std::fs::write(dir.join("metrics.jsonl"), rows + "{\"step\":41,\"lo").expect("metrics");
    let samples: String = script::arith_samples(40, 2)
        .iter()
        .map(|s| serde_json::to_string(s).expect("json") + "\n")
        .collect();
    std::fs::write(dir.join("samples.jsonl"), samples).expect("samples");
    let dirs = store::scan_runs(&ws.path().join("runs"));
    assert_eq!(dirs, vec![dir.clone()]);
    let mut d = ws.driver(SMALL);
    d.app.on_loaded_run(store::load_run(&dir).expect("load"));
    let run = d.app.focused().expect("run");
    assert_eq!((run.step, run.status), (40, RunStatus::Stopped));
    insta::assert_snapshot!("saved_run_from_disk_80x24", d.render());
}

#[test]
fn an_empty_workbench_says_how_to_start() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        insta::assert_snapshot!(snap_name("screen_empty", size), d.render());
    }
}

/// The Health pane says what a run trains: how many parameters, and its LoRA adapters.
#[test]
fn health_pane_says_what_a_lora_run_trains() {
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    d.send(Event::Started {
        run: "grpo-lora".into(),
        method: "grpo".into(),
        run_dir: std::path::PathBuf::from("runs/grpo-lora"),
        total_steps: 500,
        model: Some(rlft::engine::events::ModelSummary {
            trainable: 1_843_200,
            total: 136_358_208,
            adapter: Some("LoRA r=16 alpha=32 all-linear".into()),
        }),
    });
    d.train("grpo-lora", 1..=20, script::grpo_metrics, 0);
    d.key(KeyCode::Char('5'));
    let screen = d.render();
    assert!(
        screen.contains("1.8M of 136.4M parameters (1.35%)") && screen.contains("LoRA r=16"),
        "{screen}"
    );
    insta::assert_snapshot!("pane_health_lora_run_80x24", screen);
}

/// GRPO proposes pairs from its samples while an online DPO run proposes its own: the queue
/// shows the selected run's pairs, says how many wait elsewhere, `f` shows every run's, and a
/// decision names the run that proposed the pair.
#[test]
fn pairs_are_queued_by_run_and_f_shows_every_run() {
    use rlft::engine::label_store::LabelStore;
    use rlft::engine::labels::{PairItem, ProposedPair};
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        grpo_run(&mut d, "grpo-arith");
        d.start("online-dpo", "online_dpo", 200);
        let proposed: Vec<ProposedPair> = (0..3)
            .map(|i| ProposedPair {
                pair: PairItem::new(
                    "online-dpo",
                    format!("Review {i}:"),
                    "A warm, funny and generous film.",
                    "Dull.",
                    "online-dpo@1#a",
                    "online-dpo@1#b",
                ),
                judge: None,
                judge_error: None,
            })
            .collect();
        d.send(Event::Pairs {
            run: "online-dpo".into(),
            step: 1,
            pairs: proposed,
        });
        // Select online DPO (`]` from the first run): its pairs only.
        d.keys("]4");
        let from_grpo = d.app.pairs.queued_all() - d.app.pairs.queued();
        assert_eq!(d.app.pairs.queued(), 3);
        assert!(from_grpo > 0, "GRPO proposed pairs too");
        assert_eq!(d.app.pairs.current().expect("pair").run, "online-dpo");
        insta::assert_snapshot!(snap_name("pairs_by_run_selected", size), d.render());
        d.keys("f");
        assert_eq!(d.app.pairs.queued(), 3 + from_grpo);
        insta::assert_snapshot!(snap_name("pairs_by_run_all_runs", size), d.render());
        // Back to the selected run; a decision records the run that proposed the pair.
        d.keys("fa");
        let log = LabelStore::open(&ws.path().join("labels"), "checker").expect("log");
        let prov = rlft::engine::labels::provenance(log.entries());
        assert_eq!(prov.len(), 1);
        assert_eq!(prov[0].proposed_by, "online-dpo");
        // `]` wraps from the last run to the first, and the queue follows the selection.
        d.keys("]");
        assert_eq!(d.app.focused().expect("run").id, "grpo-arith");
        assert_eq!(d.app.pairs.current().expect("pair").run, "grpo-arith");
        d.keys("[");
        assert_eq!(d.app.focused().expect("run").id, "online-dpo");
    }
}

/// Runs saved by earlier sessions: the workbench opens on them with the Runs pane focused and
/// a hint; a stopped run reads back as stopped (not finished), and `r` resumes it.
#[test]
fn saved_runs_open_as_they_ended_and_r_resumes_a_stopped_one() {
    use rlft::engine::run::{RunDir, RunState};
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let runs = ws.path().join("runs");
        for (name, status, steps) in [
            ("grpo-arith", RunStatus::Stopped, 185),
            ("sft-arith", RunStatus::Finished, 60),
            ("dpo-arith", RunStatus::Failed, 12),
        ] {
            let dir = RunDir::create_unique(&runs, name).expect("run dir");
            let method = name.split('-').next().expect("method");
            dir.write_config(&format!(
                "method = \"{method}\"\n[train]\nmax_steps = 600\n"
            ))
            .expect("config");
            std::fs::create_dir_all(dir.final_dir()).expect("final");
            let metrics = match method {
                "grpo" => script::grpo_metrics,
                "sft" => script::sft_metrics,
                _ => script::dpo_metrics,
            };
            let rows: String = (1..=steps)
                .map(|s| metrics_line(s, s as f64, metrics(s)))
                .collect();
            std::fs::write(dir.path.join("metrics.jsonl"), rows).expect("metrics");
            let state = RunState {
                status,
                step: steps,
                error: (status == RunStatus::Failed)
                    .then(|| "loss is NaN at step 13 (learning_rate 1e-2 too high?)".into()),
            };
            dir.write_status(&state).expect("status");
        }
        let mut d = ws.driver(size);
        let saved = store::scan_runs(&runs);
        for dir in &saved {
            d.app.on_loaded_run(store::load_run(dir).expect("load"));
        }
        d.app.open_on_saved_runs(saved.len());
        assert_eq!(d.app.focus, PaneId::Runs);
        let statuses: Vec<RunStatus> = d.app.runs.all().iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            vec![RunStatus::Failed, RunStatus::Stopped, RunStatus::Finished]
        );
        insta::assert_snapshot!(snap_name("saved_runs_opened", size), d.render());
        // The finished run has nothing to resume; the stopped one resumes.
        d.keys("jj");
        assert_eq!(d.app.focused().expect("run").id, "sft-arith");
        d.keys("r");
        assert!(d.record.lock().expect("record").resumed.is_empty());
        d.keys("kr");
        let resumed = d.record.lock().expect("record").resumed.clone();
        assert_eq!(resumed, vec![runs.join("grpo-arith")]);
        let run = d.app.focused().expect("run");
        assert!(run.is_live(), "{:?}", run.status);
        assert_eq!(run.step, 185, "the history up to the checkpoint is kept");
        insta::assert_snapshot!(snap_name("saved_run_resumed", size), d.render());
    }
}

/// A config that does not start: the whole error stays on screen until closed, and the Log
/// pane keeps it.
#[test]
fn a_config_error_from_the_picker_is_shown_whole() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let (tx, rx) = Driver::channel();
        let record = Arc::new(Mutex::new(FakeRecord::default()));
        let mut engine = FakeEngine::new(tx.clone(), record.clone());
        engine.fail_launch = Some(
            "[data] train = \"assets/tasks/arithmetic_tarin.jsonl\": no such file or folder \
             (paths are read from the current folder, then from the config's folder)"
                .into(),
        );
        let (w, h) = size;
        let mut d = Driver::with_engine(ws.config(), w, h, Box::new(engine), tx, rx, record);
        d.keys("1n");
        d.key(KeyCode::Down);
        insta::assert_snapshot!(
            snap_name("new_run_picker_with_description", size),
            d.render()
        );
        d.key(KeyCode::Enter);
        let screen = d.render();
        assert!(screen.contains("grpo.toml did not start"), "{screen}");
        assert!(screen.contains("arithmetic_tarin.jsonl"), "{screen}");
        insta::assert_snapshot!(snap_name("config_error_shown_whole", size), screen);
        d.key(KeyCode::Esc);
        assert!(d.app.modal.is_none());
        assert!(
            d.app
                .log
                .lines
                .iter()
                .any(|l| l.text.contains("arithmetic_tarin.jsonl"))
        );
    }
}

/// GRPO without a reference model logs no KL: the chart says why instead of waiting forever,
/// and held-out exact match is shown by default. Counts show as integers.
#[test]
fn grpo_without_kl_says_why_and_shows_held_out_exact_match() {
    fn no_kl(step: usize) -> BTreeMap<String, f64> {
        let mut m = script::grpo_metrics(step);
        m.remove("kl");
        m.insert("num_tokens".into(), (step * 144) as f64);
        if step.is_multiple_of(10) {
            m.insert(
                "eval/rewards/exact_match/mean".into(),
                (0.2 + step as f64 / 200.0).min(1.0),
            );
        }
        m
    }
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        d.start("grpo-arith", "grpo", 600);
        d.train("grpo-arith", 1..=80, no_kl, 0);
        // The third chart is kl (at 80x24 one chart shows at a time: select it).
        d.key(KeyCode::Char('2'));
        d.key(KeyCode::Down);
        d.key(KeyCode::Down);
        let screen = d.render();
        assert!(screen.contains("no reference model"), "{screen}");
        insta::assert_snapshot!(snap_name("grpo_without_kl", size), screen);
    }
}

/// More runs than the Runs box holds: the title says how many are shown.
#[test]
fn the_runs_box_says_when_runs_are_out_of_view() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        for i in 1..=12 {
            let name = format!("grpo-arith-{i}");
            d.start(&name, "grpo", 100);
            d.train(&name, 1..=5, script::grpo_metrics, 0);
        }
        let screen = d.render();
        assert!(screen.contains("shown, ↑↓ scroll"), "{screen}");
        insta::assert_snapshot!(snap_name("runs_out_of_view", size), screen);
    }
}

/// Labelling as a team: another labeller ("ann", in another process) holds the first pair, so
/// this workbench ("bob") is offered the next; with two labels per pair, the pairs both label
/// show their agreement (Cohen's kappa) in the header, and preferences fold by majority.
#[test]
fn a_team_labels_one_queue_each_pair_offered_to_one_and_agreement_shown() {
    use rlft::engine::label_store::LabelStore;
    use rlft::engine::labels::Decision;
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let labels = ws.path().join("labels");
        let mut ann = LabelStore::open(&labels, "ann").expect("store");
        ann.set_labels_per_pair(2).expect("setting");
        let mut config = ws.config();
        config.annotator = "bob".into();
        let (w, h) = size;
        let mut d = Driver::new(config, w, h);
        d.start("grpo-arith", "grpo", 500);
        d.train("grpo-arith", 1..=60, script::grpo_metrics, 10);
        d.key(KeyCode::Char('4'));
        // The pair on Bob's screen is held for him: Ann is not offered it meanwhile.
        let first = d.app.pairs.current().expect("pair").clone();
        assert!(
            !ann.lease(&first.id).expect("lease"),
            "bob holds the pair shown"
        );
        // Bob labels the pair he was shown: A better; Ann then labels it too (disagreeing
        // on the next one).
        let a_left = first.a_on_left(d.app.config.pair_seed);
        d.keys(if a_left { "a" } else { "b" });
        ann.record(&first, true, Decision::A, None)
            .expect("ann's label");
        let second = d.app.pairs.current().expect("pair").clone();
        d.keys(if second.a_on_left(d.app.config.pair_seed) {
            "a"
        } else {
            "b"
        });
        ann.record(&second, true, Decision::B, None)
            .expect("ann's label");
        ann.export().expect("export");
        // Ann holds the next pair in the queue: at its next look the workbench, which
        // shows the pair after Bob's, keeps it, and it reads Ann's labels.
        let shown = d.app.pairs.current().expect("pair").clone();
        d.app
            .tick(std::time::Instant::now() + std::time::Duration::from_secs(5));
        assert_eq!(d.app.pairs.current().map(|p| p.id.clone()), Some(shown.id));
        let report = d.app.pairs.agreement().clone();
        assert_eq!(report.kappas.len(), 1);
        assert_eq!(report.kappas[0].shared, 2);
        let screen = d.render();
        assert!(screen.contains("κ"), "{screen}");
        insta::assert_snapshot!(snap_name("pairs_team_agreement", size), screen);
        // The export folds by majority: the agreed pair is a row with 2 votes of 2; the
        // disagreement is a split.
        let prefs = std::fs::read_to_string(labels.join("preferences.jsonl")).expect("prefs");
        assert!(prefs.contains("\"votes\":2,\"voters\":2"), "{prefs}");
        assert_eq!(prefs.lines().count(), 1, "{prefs}");
    }
}

/// Thumbs up or down on one sample in the Samples pane (`J`/`K` select, `+`/`-` rate): each
/// goes to the label store as a rating (KTO's unpaired label) and shows beside the sample.
#[test]
fn samples_are_rated_thumbs_up_or_down_into_the_label_store() {
    use rlft::engine::label_store::LabelStore;
    use rlft::engine::labels::LogEntry;
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        d.start("grpo-arith", "grpo", 500);
        d.train("grpo-arith", 1..=30, script::grpo_metrics, 10);
        d.keys("3J+J-");
        let screen = d.render();
        assert!(screen.contains("[+]") && screen.contains("[-]"), "{screen}");
        insta::assert_snapshot!(snap_name("samples_rated", size), screen);
        let store = LabelStore::open(&ws.path().join("labels"), "checker").expect("store");
        let ratings: Vec<(String, bool)> = store
            .entries()
            .iter()
            .filter_map(|e| match e {
                LogEntry::Rating(r) => Some((r.origin.clone(), r.label)),
                _ => None,
            })
            .collect();
        assert_eq!(
            ratings,
            vec![
                ("grpo-arith@30#1".to_string(), true),
                ("grpo-arith@30#2".to_string(), false)
            ]
        );
    }
}

/// `[train] keep_best`: the Runs pane names the selected run's best checkpoint, live (from the
/// engine's event) and when the run folder is opened again (from `checkpoints/best/best.json`).
#[test]
fn the_runs_pane_marks_the_best_checkpoint() {
    for size in [SMALL, LARGE] {
        let ws = Workspace::new();
        let mut d = ws.driver(size);
        d.start("grpo-arith", "grpo", 600);
        d.train("grpo-arith", 1..=40, script::grpo_metrics, 0);
        d.send(Event::Best {
            run: "grpo-arith".into(),
            best: rlft::engine::events::BestCheckpoint {
                metric: "eval/rewards/exact_match/mean".into(),
                value: 0.915,
                step: 30,
            },
        });
        let screen = d.render();
        assert!(
            screen.contains("★ best: step 30, eval/exact_match/mean 0.9150"),
            "{screen}"
        );
        insta::assert_snapshot!(snap_name("runs_best_checkpoint", size), screen);
    }
    // A saved run folder: read back from best.json.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("grpo-arith");
    std::fs::create_dir_all(dir.join("checkpoints/best")).unwrap();
    std::fs::write(dir.join("config.toml"), "method = \"grpo\"\n").unwrap();
    std::fs::write(
        dir.join("checkpoints/best/best.json"),
        r#"{"metric": "eval/reward", "value": 0.5, "step": 12}"#,
    )
    .unwrap();
    let loaded = store::load_run(&dir).unwrap();
    assert_eq!(
        loaded.best.map(|b| (b.metric, b.step)),
        Some(("eval/reward".into(), 12))
    );
}

/// A run `rlft launch` started as a Ray job: the Runs pane's bottom line says the job's state
/// (a warning while the head cannot be asked), `x` asks and then hands Stop to the engine,
/// which stops the job; the job's end comes back as events. A watched run that rlft did not
/// launch says why it cannot be stopped.
#[test]
fn a_launched_job_shows_its_state_and_x_stops_it() {
    use rlft::engine::events::JobView;
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    d.app
        .watch(Path::new("runs/grpo-arith-trl"))
        .expect("watch");
    let job = |state: &str, detail: Option<&str>| Event::Job {
        run: "grpo-arith-trl".into(),
        job: JobView {
            describe: "ray job rlft-grpo-arith-trl-1764 at http://10.0.0.1:8265".into(),
            state: state.into(),
            detail: detail.map(str::to_string),
            pid: None,
        },
    };
    d.send(job("pending", None));
    d.train("grpo-arith-trl", 1..=30, script::grpo_metrics, 10);
    d.send(job(
        "unknown",
        Some("the Ray head at http://10.0.0.1:8265 is unreachable: connection refused"),
    ));
    insta::assert_snapshot!("runs_job_head_unreachable_80x24", d.render());
    d.send(job("running", None));
    insta::assert_snapshot!("runs_launched_job_80x24", d.render());
    d.keys("1x");
    insta::assert_snapshot!("runs_launched_job_stop_confirm_80x24", d.render());
    d.keys("y");
    let stops: Vec<(String, Command)> = d.record.lock().expect("record").commands.clone();
    assert_eq!(stops, vec![("grpo-arith-trl".to_string(), Command::Stop)]);
    d.send(job("stopped", None));
    d.send(Event::Finished {
        run: "grpo-arith-trl".into(),
        step: 30,
        status: RunStatus::Stopped,
    });
    let run = d.app.focused().expect("run");
    assert_eq!(run.status, RunStatus::Stopped);
    assert_eq!(run.job.as_ref().map(|j| j.state.as_str()), Some("stopped"));
    // Nothing left to stop: x says so instead of asking.
    d.keys("x");
    let screen = d.render();
    assert!(screen.contains("nothing to stop"), "{screen}");

    let mut d = ws.driver(SMALL);
    d.app
        .watch(Path::new("runs/verl-exp.jsonl"))
        .expect("watch");
    d.keys("1x");
    assert!(
        d.render().contains("rlft did not launch verl-exp"),
        "{}",
        d.render()
    );
}

/// The System pane: the host, rlft's own process while its runs train, a launched job's
/// process tree, and GPUs (here as NVML reports an H200); without a driver it says so.
#[test]
fn system_pane_shows_processes_and_gpus() {
    use rlft::engine::system::{GpuUsage, ProcessUsage, SystemSnapshot};
    let ws = Workspace::new();
    let mut d = ws.driver(SMALL);
    grpo_run(&mut d, "grpo-arith");
    let followed = d.app.followed_processes();
    assert_eq!(followed.len(), 1);
    assert_eq!(followed[0].label, "rlft: grpo-arith");
    assert_eq!(followed[0].pid, std::process::id());
    let snap = |i: u32, gpus: Result<Vec<GpuUsage>, String>| SystemSnapshot {
        cores: 16,
        host_cpu_percent: 40.0 + (i % 5) as f32 * 10.0,
        host_memory_used_bytes: 40 << 30,
        host_memory_total_bytes: 128 << 30,
        processes: vec![
            ProcessUsage {
                label: "rlft: grpo-arith".into(),
                pid: 4242,
                cpu_percent: 380.0 + (i % 3) as f32 * 40.0,
                memory_bytes: 3 << 30,
                gpu_memory_bytes: Some(21 << 30),
                processes: 1,
                alive: true,
            },
            ProcessUsage {
                label: "grpo-arith-trl".into(),
                pid: 5151,
                cpu_percent: 99.5,
                memory_bytes: 5 << 30,
                gpu_memory_bytes: Some(60 << 30),
                processes: 3,
                alive: true,
            },
            ProcessUsage {
                label: "old-job".into(),
                pid: 6161,
                cpu_percent: 0.0,
                memory_bytes: 0,
                gpu_memory_bytes: None,
                processes: 0,
                alive: false,
            },
        ],
        gpus,
    };
    let h200 = |i: u32| GpuUsage {
        index: 0,
        name: "NVIDIA H200".into(),
        utilization_percent: 60 + (i % 4) * 10,
        memory_used_bytes: 81 << 30,
        memory_total_bytes: 140 << 30,
        temperature_c: Some(61),
        power_watts: Some(402.0),
    };
    for i in 0..20 {
        d.app.on_system(snap(i, Ok(vec![h200(i)])));
    }
    d.keys("7");
    insta::assert_snapshot!("system_pane_80x24", d.render());
    d.app.on_system(snap(
        20,
        Err("no NVIDIA driver (libnvidia-ml not found)".into()),
    ));
    let screen = d.render();
    assert!(
        screen.contains("GPU: no NVIDIA driver (libnvidia-ml not found)"),
        "{screen}"
    );
}
