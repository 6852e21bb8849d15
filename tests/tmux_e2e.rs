//! The real binary in a real terminal (tmux), through the journey a new user takes: `rlft`
//! starts the default GRPO run, the picker starts online DPO beside it, its pairs are labelled
//! in the Pairs pane (which shows only online DPO's pairs, though GRPO proposes some too), the
//! workbench quits and opens again on the saved runs (no new run), `r` resumes the stopped
//! online DPO run, a pair is labelled again, and every label names the run that trained on it.
//! Without tmux on the machine the test says so loudly and returns (`.ci/run` installs it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rlft::engine::label_store::LabelStore;
use rlft::engine::labels::provenance;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(session: &str, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&screen) {
            return screen;
        }
        if Instant::now() > deadline {
            let _ = tmux(&["kill-session", "-t", session]);
            panic!("timed out waiting for {what}; screen:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the label log holds `n` notes of a run training on a decision.
fn wait_trained(log: &Path, n: usize, session: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches("\"kind\":\"trained\"").count() >= n {
            return;
        }
        if Instant::now() > deadline {
            let screen = tmux(&["capture-pane", "-p", "-t", session]);
            let _ = tmux(&["kill-session", "-t", session]);
            panic!("online DPO did not train on {n} label(s); log:\n{text}\nscreen:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The step shown in the top-right status (`· step N/M`).
fn step_on(screen: &str) -> Option<usize> {
    let first = screen.lines().next()?;
    let i = first.rfind("step ")?;
    first[i + 5..].split('/').next()?.trim().parse().ok()
}

fn start(session: &str, dir: &Path) {
    open(
        session,
        dir,
        &format!("{} 2>>stderr.log", env!("CARGO_BIN_EXE_rlft")),
    );
}

/// A 160x48 tmux session running `cmd` in `dir`.
fn open(session: &str, dir: &Path, cmd: &str) {
    let started = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "160",
            "-y",
            "48",
            "-c",
        ])
        .arg(dir)
        .arg(cmd)
        .status()
        .unwrap();
    assert!(started.success());
}

fn quit(session: &str) {
    tmux(&["send-keys", "-t", session, "q"]);
    wait_for(session, "the quit question", Duration::from_secs(10), |s| {
        s.contains("Quit rlft?")
    });
    tmux(&["send-keys", "-t", session, "y"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while Command::new("tmux")
        .args(["has-session", "-t", session])
        .status()
        .is_ok_and(|s| s.success())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn grpo_then_online_dpo_label_restart_resume_label_again_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("\n========== SKIPPED: tmux is not installed ==========\n");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Kept when the test fails, so the run folders can be read (the path is printed).
    let tmp = tempfile::Builder::new()
        .prefix("rlft-e2e-")
        .disable_cleanup(true)
        .tempdir()
        .unwrap();
    eprintln!("workspace: {}", tmp.path().display());
    let configs = tmp.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    // The shipped configs, with paths made absolute; GRPO also proposes pairs from its samples,
    // so the queue has pairs of two runs.
    let absolute = |name: &str| {
        std::fs::read_to_string(root.join("configs").join(name))
            .unwrap()
            .replace("\"assets/", &format!("\"{}/assets/", root.display()))
    };
    let grpo = absolute("grpo.toml") + "\n[pairs]\nper_step = 2\n";
    std::fs::write(configs.join("grpo.toml"), grpo).unwrap();
    std::fs::write(configs.join("online_dpo.toml"), absolute("online_dpo.toml")).unwrap();
    let session = format!("rlft-e2e-{}", std::process::id());

    // First launch: no runs yet, so `rlft` starts the default GRPO run.
    start(&session, tmp.path());
    let screen = wait_for(
        &session,
        "the GRPO run to take a step",
        Duration::from_secs(180),
        |s| step_on(s).is_some_and(|n| n >= 1),
    );
    assert!(screen.contains("grpo-arith"), "{screen}");

    // Start online DPO from the picker (configs sorted: grpo, online_dpo).
    tmux(&["send-keys", "-t", &session, "n"]);
    wait_for(&session, "the run picker", Duration::from_secs(10), |s| {
        s.contains("online_dpo.toml")
    });
    tmux(&["send-keys", "-t", &session, "Down"]);
    // The picker shows what the selected config does.
    wait_for(
        &session,
        "online DPO's description",
        Duration::from_secs(10),
        |s| s.contains("Online DPO from people's labels"),
    );
    tmux(&["send-keys", "-t", &session, "Enter"]);
    tmux(&["send-keys", "-t", &session, "4"]);
    let screen = wait_for(
        &session,
        "an online DPO pair to label",
        Duration::from_secs(180),
        |s| s.contains("online-dpo: ") && s.contains("From:   online-dpo"),
    );
    assert!(!screen.contains("From:   grpo"), "{screen}");
    tmux(&["send-keys", "-t", &session, "a"]);
    wait_for(&session, "the first label", Duration::from_secs(10), |s| {
        s.contains("labeled 1")
    });
    wait_for(&session, "a second pair", Duration::from_secs(180), |s| {
        s.contains("From:   online-dpo")
    });
    tmux(&["send-keys", "-t", &session, "b"]);
    wait_for(&session, "the second label", Duration::from_secs(10), |s| {
        s.contains("labeled 2")
    });
    let log = tmp.path().join("runs/labels/labels.jsonl");
    wait_trained(&log, 2, &session);
    quit(&session);
    let runs_before: Vec<_> = rlft::tui::store::scan_runs(&tmp.path().join("runs"));
    assert_eq!(runs_before.len(), 2, "{runs_before:?}");

    // Second launch: it opens on the saved runs and starts nothing.
    start(&session, tmp.path());
    let screen = wait_for(&session, "the saved runs", Duration::from_secs(30), |s| {
        s.contains("2 saved runs")
    });
    assert!(screen.contains("stopped"), "{screen}");
    // Select online DPO (runs by name: grpo-arith, online-dpo) and resume it.
    tmux(&["send-keys", "-t", &session, "j", "r"]);
    wait_for(
        &session,
        "online DPO resuming",
        Duration::from_secs(30),
        |s| s.contains("Resuming online-dpo") || s.contains("resuming from the checkpoint"),
    );
    tmux(&["send-keys", "-t", &session, "4"]);
    wait_for(
        &session,
        "an online DPO pair after the restart",
        Duration::from_secs(180),
        |s| s.contains("From:   online-dpo"),
    );
    tmux(&["send-keys", "-t", &session, "a"]);
    wait_for(&session, "the third label", Duration::from_secs(10), |s| {
        s.contains("labeled 3")
    });
    wait_trained(&log, 3, &session);
    quit(&session);

    // No run was added by the second launch; every label was proposed by online DPO and
    // trained on by it, and the preference file has one row per A/B label.
    assert_eq!(
        rlft::tui::store::scan_runs(&tmp.path().join("runs")).len(),
        2
    );
    let labels = LabelStore::open(log.parent().unwrap(), "checker").unwrap();
    let prov = provenance(labels.entries());
    assert_eq!(prov.len(), 3);
    for p in &prov {
        assert_eq!(p.proposed_by, "online-dpo");
        assert_eq!(p.trained_by, vec!["online-dpo"]);
    }
    let prefs = std::fs::read_to_string(tmp.path().join("runs/labels/preferences.jsonl"))
        .expect("preferences.jsonl written");
    assert_eq!(prefs.lines().count(), 3, "{prefs}");
    let stderr = std::fs::read_to_string(tmp.path().join("stderr.log")).unwrap_or_default();
    assert!(
        stderr.trim().is_empty(),
        "nothing may write over the screen: {stderr}"
    );
    let _ = std::fs::remove_dir_all(tmp.path());
}

/// The prompt a screen shows (`Prompt: ...`), for telling two labellers' pairs apart.
fn prompt_on(screen: &str) -> Option<String> {
    screen.lines().find_map(|l| {
        let i = l.find("Prompt: ")?;
        Some(l[i + 8..].trim_end_matches(['│', ' ']).trim().to_string())
    })
}

/// Two people label one queue at once: Ann in the workbench, Bob with `rlft label` in another
/// terminal. Each is shown a pair the other does not hold, and every pair ends up labelled
/// exactly once, by one of them.
#[test]
fn the_workbench_and_rlft_label_share_one_queue_in_tmux() {
    use rlft::engine::labels::{PairItem, ProposedPair, append_proposed, standing_decisions};
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("\n========== SKIPPED: tmux is not installed ==========\n");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let run = runs.join("r1");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.toml"), "method = \"online_dpo\"\n").unwrap();
    const PAIRS: usize = 6;
    let pairs: Vec<ProposedPair> = (0..PAIRS)
        .map(|i| ProposedPair {
            pair: PairItem::new(
                "r1",
                format!("Review {i}:"),
                format!("Lovely film number {i}."),
                "Dull.",
                "r1@1#a",
                "r1@1#b",
            ),
            judge: None,
            judge_error: None,
        })
        .collect();
    append_proposed(&run.join("pairs.jsonl"), &pairs).unwrap();
    let bin = env!("CARGO_BIN_EXE_rlft");
    let (ann, bob) = (
        format!("rlft-ann-{}", std::process::id()),
        format!("rlft-bob-{}", std::process::id()),
    );
    open(
        &ann,
        tmp.path(),
        &format!("{bin} --annotator ann 2>>ann.log"),
    );
    tmux(&["send-keys", "-t", &ann, "4"]);
    let ann_screen = wait_for(&ann, "Ann's first pair", Duration::from_secs(30), |s| {
        s.contains("From:   r1")
    });
    // Bob starts after Ann holds her pair; `; sleep` keeps his terminal for reading.
    open(
        &bob,
        tmp.path(),
        &format!("{bin} label --annotator bob 2>>bob.log; sleep 60"),
    );
    let bob_screen = wait_for(&bob, "Bob's first pair", Duration::from_secs(30), |s| {
        s.contains("labelling as bob") && s.contains("Prompt: ")
    });
    assert_ne!(
        prompt_on(&ann_screen),
        prompt_on(&bob_screen),
        "both were offered the same pair:\n{ann_screen}\n{bob_screen}"
    );
    // They label in turns until the queue is empty.
    let log = runs.join("labels/labels.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut turn = 0;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("\"kind\":\"decision\"").count() >= PAIRS {
            break;
        }
        assert!(Instant::now() < deadline, "labels so far:\n{text}");
        if turn % 2 == 0 {
            tmux(&["send-keys", "-t", &bob, "a", "Enter"]);
        } else {
            tmux(&["send-keys", "-t", &ann, "a"]);
        }
        turn += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    tmux(&["send-keys", "-t", &ann, "q"]);
    let _ = tmux(&["kill-session", "-t", &bob]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = tmux(&["kill-session", "-t", &ann]);
    let store =
        rlft::engine::label_store::LabelStore::open(&runs.join("labels"), "checker").unwrap();
    let standing = standing_decisions(store.entries());
    let ids: std::collections::HashSet<&str> =
        standing.iter().map(|d| d.pair_id.as_str()).collect();
    assert_eq!((standing.len(), ids.len()), (PAIRS, PAIRS), "{standing:#?}");
    let by: std::collections::HashSet<&str> =
        standing.iter().map(|d| d.annotator.as_str()).collect();
    assert_eq!(by, ["ann", "bob"].into(), "both labelled");
}

/// `rlft launch` in a real terminal: the workbench opens on the launched job (here a local
/// "python" that writes metrics as rlft's TRL callback does, until it is stopped), the Runs
/// pane says the job runs, `x` asks what it stops and `y` stops the process; the run ends
/// as stopped.
#[test]
fn a_launched_job_is_watched_and_x_stops_it_in_tmux() {
    use std::os::unix::fs::PermissionsExt as _;
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("\n========== SKIPPED: tmux is not installed ==========\n");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::Builder::new()
        .prefix("rlft-e2e-launch-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(tmp.path().join("configs")).unwrap();
    std::os::unix::fs::symlink(root.join("assets"), tmp.path().join("assets")).unwrap();
    std::fs::copy(
        root.join("configs/grpo_lora.toml"),
        tmp.path().join("configs/grpo_lora.toml"),
    )
    .unwrap();
    let python = tmp.path().join("python");
    std::fs::write(
        &python,
        "#!/bin/sh\nout=\"$3\"\nmkdir -p \"$out\"\ni=0\nwhile true; do i=$((i+1)); echo \"{\\\"step\\\": $i, \\\"wall_time\\\": $i, \\\"reward\\\": 0.$i}\" >> \"$out/metrics.jsonl\"; sleep 0.3; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let session = "rlft-e2e-launch";
    let _ = tmux(&["kill-session", "-t", session]);
    open(
        session,
        tmp.path(),
        &format!(
            "{} launch configs/grpo_lora.toml --python {} 2>>stderr.log",
            env!("CARGO_BIN_EXE_rlft"),
            python.display()
        ),
    );
    wait_for(session, "the job running", Duration::from_secs(30), |s| {
        s.contains("job running · x stops it · local process")
    });
    wait_for(
        session,
        "metrics from the job",
        Duration::from_secs(30),
        |s| step_on(s).is_some_and(|n| n >= 3),
    );
    tmux(&["send-keys", "-t", session, "1"]);
    tmux(&["send-keys", "-t", session, "x"]);
    wait_for(session, "the stop question", Duration::from_secs(10), |s| {
        s.contains("This stops local process")
    });
    tmux(&["send-keys", "-t", session, "y"]);
    let screen = wait_for(session, "the job stopped", Duration::from_secs(30), |s| {
        s.contains("job stopped")
    });
    let _ = tmux(&["kill-session", "-t", session]);
    assert!(screen.contains("stopped"), "{screen}");
    let run = tmp.path().join("runs/grpo-arith-lora-trl");
    let job = rlft::engine::launch::Job::read(&run).unwrap().unwrap();
    assert_eq!(
        job.state(&run).unwrap(),
        rlft::engine::launch::JobState::Stopped
    );
}
