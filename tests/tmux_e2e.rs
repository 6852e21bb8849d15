//! The real binary in a real terminal (tmux): start the workbench on a GRPO run, see its step
//! counter advance, label a pair, quit, and find the label in the preference JSONL.
//! Without tmux on the machine the test says so loudly and returns (`.ci/run` installs it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// The step shown in the top-right status (`· step N/M`).
fn step_on(screen: &str) -> Option<usize> {
    let first = screen.lines().next()?;
    let i = first.rfind("step ")?;
    first[i + 5..].split('/').next()?.trim().parse().ok()
}

#[test]
fn start_watch_label_quit_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("\n========== SKIPPED: tmux is not installed ==========\n");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    // The shipped GRPO config, with paths made absolute so the run folder lands in tmp.
    let cfg = std::fs::read_to_string(root.join("configs/grpo.toml"))
        .unwrap()
        .replace("\"assets/", &format!("\"{}/assets/", root.display()));
    std::fs::write(tmp.path().join("grpo.toml"), cfg).unwrap();
    let session = format!("rlft-e2e-{}", std::process::id());
    let cmd = format!(
        "{} train grpo.toml --max-steps 400 2>stderr.log",
        env!("CARGO_BIN_EXE_rlft")
    );
    let started = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "48",
            "-c",
        ])
        .arg(tmp.path())
        .arg(&cmd)
        .status()
        .unwrap();
    assert!(started.success());

    let screen = wait_for(
        &session,
        "the GRPO run to take a step",
        Duration::from_secs(120),
        |s| step_on(s).is_some_and(|n| n >= 1),
    );
    let first = step_on(&screen).unwrap();
    let screen = wait_for(
        &session,
        "the step counter to advance",
        Duration::from_secs(120),
        |s| step_on(s).is_some_and(|n| n > first),
    );
    assert!(screen.contains("grpo-arith"), "{screen}");

    // Pairs pane, label the first pair "A better".
    tmux(&["send-keys", "-t", &session, "4"]);
    wait_for(&session, "a pair to label", Duration::from_secs(120), |s| {
        s.contains("Which answer is better")
    });
    tmux(&["send-keys", "-t", &session, "a"]);
    wait_for(
        &session,
        "the label to be confirmed",
        Duration::from_secs(10),
        |s| s.contains("labeled 1"),
    );

    // Quit: the live run is stopped (it checkpoints) after confirmation.
    tmux(&["send-keys", "-t", &session, "q"]);
    wait_for(
        &session,
        "the quit question",
        Duration::from_secs(10),
        |s| s.contains("Quit rlft?"),
    );
    tmux(&["send-keys", "-t", &session, "y"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while tmux(&["has-session", "-t", &session]).is_empty()
        && Command::new("tmux")
            .args(["has-session", "-t", &session])
            .status()
            .is_ok_and(|s| s.success())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    let prefs = std::fs::read_to_string(tmp.path().join("runs/labels/preferences.jsonl"))
        .expect("preferences.jsonl written");
    let rows: Vec<serde_json::Value> = prefs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{prefs}");
    for key in ["prompt", "chosen", "rejected"] {
        assert!(rows[0].get(key).is_some(), "{prefs}");
    }
    assert!(
        tmp.path()
            .join("runs/grpo-arith/checkpoints/final/model.safetensors")
            .exists()
    );
    let stderr = std::fs::read_to_string(tmp.path().join("stderr.log")).unwrap_or_default();
    assert!(
        stderr.trim().is_empty(),
        "nothing may write over the screen: {stderr}"
    );
}
