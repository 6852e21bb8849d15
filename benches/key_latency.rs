//! Key-to-screen latency of the workbench while a GRPO run trains on both cores: the real
//! binary in tmux, a key that changes the screen (`l`, log-y on the focused chart), and the
//! time until `tmux capture-pane` shows the change. The figure includes tmux's own round trip,
//! so it is an upper bound on rlft's latency.
//!
//! `cargo bench --bench key_latency` (needs tmux; builds the release binary first).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Presses per measurement; the median and p95 of these are reported.
const PRESSES: usize = 30;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("key_latency: tmux is not installed; nothing measured");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("cargo")
        .args(["build", "--release", "--bin", "rlft"])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success());
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target.join("release/rlft");
    let tmp = std::env::temp_dir().join(format!("rlft-key-latency-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let cfg = std::fs::read_to_string(root.join("configs/grpo.toml"))
        .unwrap()
        .replace("\"assets/", &format!("\"{}/assets/", root.display()));
    std::fs::write(tmp.join("grpo.toml"), cfg).unwrap();
    let session = format!("rlft-lat-{}", std::process::id());
    let cmd = format!("{} train grpo.toml --max-steps 100000", bin.display());
    Command::new("tmux")
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
        .arg(&tmp)
        .arg(&cmd)
        .status()
        .unwrap();
    // Let training get going so both cores are busy.
    std::thread::sleep(Duration::from_secs(15));
    let screen = tmux(&["capture-pane", "-p", "-t", &session]);
    if !screen.contains("running") {
        eprintln!("key_latency: the workbench did not start a run; screen:\n{screen}");
        let _ = tmux(&["kill-session", "-t", &session]);
        return;
    }
    tmux(&["send-keys", "-t", &session, "2"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut samples = Vec::with_capacity(PRESSES);
    for _ in 0..PRESSES {
        let before = tmux(&["capture-pane", "-p", "-t", &session]);
        let start = Instant::now();
        tmux(&["send-keys", "-t", &session, "l"]);
        loop {
            let now = tmux(&["capture-pane", "-p", "-t", &session]);
            // The y-axis mode in the Curves title flips between linear and log-y (the key
            // hints always say "log-y", so look for the title's "· linear ·").
            if now.contains("· linear ·") != before.contains("· linear ·") {
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                eprintln!("key_latency: no change seen; screen:\n{now}");
                break;
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    tmux(&["send-keys", "-t", &session, "q"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux(&["send-keys", "-t", &session, "y"]);
    std::thread::sleep(Duration::from_secs(3));
    let _ = tmux(&["kill-session", "-t", &session]);
    samples.sort_by(f64::total_cmp);
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "key-to-screen latency while training ({PRESSES} presses): median {:.1} ms, p95 {:.1} ms, max {:.1} ms (target <= 50 ms)",
        p(0.5),
        p(0.95),
        p(1.0)
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
