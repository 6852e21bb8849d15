//! Frame render time of the workbench at 160x48 with 4 charts of 100 000 points each.
//!
//! `cargo bench --bench render` (add `-- --quick` for fewer frames). Prints, per scenario,
//! the time to ingest the points and the per-frame draw time (mean, median, p95, max) into a
//! `TestBackend` terminal: the whole UI render plus ratatui's buffer diff, without terminal
//! I/O. Scenarios:
//! * `default store`: the workbench as shipped; each series keeps at most 2048 min/max
//!   buckets, so a frame's cost does not grow with the run's length.
//! * `cap lifted`: every one of the 100 000 points kept as its own bucket and decimated per
//!   frame, i.e. the cost of the decimation itself on raw data.
//!
//! Each is measured with the data still ("static") and with one new step arriving before
//! every frame, as in a live run ("live", the new step's ingest not timed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rlft::engine::device::DeviceChoice;
use rlft::engine::events::Event;
use rlft::tui::app::AppConfig;
use rlft::tui::fake::{Driver, script};
use rlft::tui::series::DEFAULT_CAP;

/// Points per chart, as the issue asks.
const POINTS: usize = 100_000;
const WIDTH: u16 = 160;
const HEIGHT: u16 = 48;

fn metrics(step: usize) -> BTreeMap<String, f64> {
    // The four GRPO charts' metrics, from the scripted generator (spikes included via noise).
    let all = script::grpo_metrics(step % 5_000 + step / 50);
    ["reward", "kl", "loss", "entropy"]
        .iter()
        .filter_map(|k| Some((k.to_string(), *all.get(*k)?)))
        .collect()
}

fn stats(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = times.len();
    let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / n as f64;
    format!(
        "mean {:.3} ms  median {:.3} ms  p95 {:.3} ms  max {:.3} ms  ({n} frames)",
        mean,
        ms(times[n / 2]),
        ms(times[(n * 95 / 100).min(n - 1)]),
        ms(times[n - 1])
    )
}

fn scenario(label: &str, cap: usize, frames: usize) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut config = AppConfig::new(
        tmp.path().join("configs"),
        tmp.path().join("runs"),
        DeviceChoice::Cpu,
    );
    config.labels_dir = tmp.path().join("labels");
    config.series_cap = cap;
    config.cpu_cores = 2;
    let mut d = Driver::new(config, WIDTH, HEIGHT);
    d.start("grpo-bench", "grpo", POINTS * 2);

    let t = Instant::now();
    for step in 1..=POINTS {
        d.app.on_engine_event(Event::Metrics {
            run: "grpo-bench".into(),
            step,
            wall_time: step as f64 * 0.1,
            values: metrics(step),
        });
    }
    let ingest = t.elapsed();
    let run = d.app.focused().expect("run");
    let buckets: Vec<usize> = ["reward", "kl", "loss", "entropy"]
        .iter()
        .map(|m| run.metrics[*m].buckets().len())
        .collect();
    println!("{label}");
    println!(
        "  ingest {POINTS} steps x 4 metrics: {:.1} ms ({:.2} us/step); buckets per chart: {buckets:?}",
        ingest.as_secs_f64() * 1e3,
        ingest.as_secs_f64() * 1e6 / POINTS as f64
    );

    let draw = |d: &mut Driver| {
        let app = &d.app;
        let t = Instant::now();
        if let Err(e) = d.terminal.draw(|f| app.render(f)) {
            match e {}
        }
        t.elapsed()
    };
    for _ in 0..10 {
        draw(&mut d);
    }
    let still: Vec<Duration> = (0..frames).map(|_| draw(&mut d)).collect();
    println!("  static frame {WIDTH}x{HEIGHT}: {}", stats(still));
    let mut step = POINTS;
    let live: Vec<Duration> = (0..frames)
        .map(|_| {
            step += 1;
            d.app.on_engine_event(Event::Metrics {
                run: "grpo-bench".into(),
                step,
                wall_time: step as f64 * 0.1,
                values: metrics(step),
            });
            draw(&mut d)
        })
        .collect();
    println!("  live frame   {WIDTH}x{HEIGHT}: {}", stats(live));
    let screen = d.render();
    assert!(
        screen.contains("reward") && screen.contains("entropy"),
        "{screen}"
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let frames = if quick { 50 } else { 300 };
    println!("rlft workbench render benchmark: 4 charts x {POINTS} points, {WIDTH}x{HEIGHT}");
    scenario(
        &format!("default store (cap {DEFAULT_CAP} min/max buckets per series)"),
        DEFAULT_CAP,
        frames,
    );
    scenario(
        "cap lifted (all 100000 points kept, decimated every frame)",
        POINTS * 4,
        frames / 3,
    );
}
