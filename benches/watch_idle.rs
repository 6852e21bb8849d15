//! What following runs costs while nothing happens: the CPU time of the process while watch
//! threads tail idle runs (a TensorBoard folder, a verl log with rollouts, an rlft-format
//! folder with a finished local job) and the System view samples the machine, measured with
//! getrusage over a wall-clock window; and one System sample's cost.
//!
//! `cargo bench --bench watch_idle`

use std::time::{Duration, Instant};

use rlft::engine::system::{Followed, Monitor, Sampler};
use rlft::engine::tensorboard::EventFileWriter;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir");
    // An idle TensorBoard run with 100k scalars already written.
    let tb = dir.path().join("tb");
    std::fs::create_dir_all(&tb).expect("dir");
    let mut w = EventFileWriter::create(&tb).expect("writer");
    for step in 0..100_000 {
        w.scalars(step, step as f64, [("train/reward", 0.5)])
            .expect("write");
    }
    w.flush().expect("flush");
    // An idle verl log with rollouts, and an rlft-format folder.
    let verl = dir.path().join("verl");
    std::fs::create_dir_all(verl.join("rollouts")).expect("dir");
    let lines: String = (1..=1000)
        .map(|s| format!("{{\"step\": {s}, \"data\": {{\"critic/score/mean\": 0.5}}}}\n"))
        .collect();
    std::fs::write(verl.join("exp.jsonl"), lines).expect("write");
    let folder = dir.path().join("trl");
    std::fs::create_dir_all(&folder).expect("dir");
    let rows: String = (1..=1000)
        .map(|s| format!("{{\"step\": {s}, \"wall_time\": {s}.0, \"reward\": 0.5}}\n"))
        .collect();
    std::fs::write(folder.join("metrics.jsonl"), rows).expect("write");

    let (tx, rx) = crossbeam_channel::unbounded();
    let watches: Vec<_> = [tb.clone(), verl.join("exp.jsonl"), folder.clone()]
        .iter()
        .enumerate()
        .map(|(i, p)| rlft::engine::watch::spawn(p, format!("w{i}"), tx.clone()).expect("watch"))
        .collect();
    // Let them read what is there.
    std::thread::sleep(Duration::from_secs(3));
    let backlog = rx.try_iter().count();

    let window = Duration::from_secs(20);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(window);
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    println!(
        "3 idle watched runs (read {backlog} events first): {cpu:.4} s CPU in {wall:.1} s wall = {:.3}% of one core ({} events while idle)",
        cpu / wall * 100.0,
        rx.try_iter().count()
    );

    let monitor = Monitor::spawn(rlft::engine::system::SAMPLE_EVERY).expect("monitor");
    monitor.follow(vec![Followed {
        label: "self".into(),
        pid: std::process::id(),
    }]);
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(window);
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let later = rx.try_iter().count();
    let snapshots = monitor.snapshots.try_iter().count();
    println!(
        "the same + the System sampler every 2 s: {:.3} s CPU in {wall:.1} s wall = {:.3}% of one core ({later} events while idle, {snapshots} snapshot waiting)",
        cpu,
        cpu / wall * 100.0
    );
    for w in &watches {
        w.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    drop(monitor);
    std::thread::sleep(Duration::from_secs(1));

    let mut sampler = Sampler::new();
    let followed = [Followed {
        label: "self".into(),
        pid: std::process::id(),
    }];
    sampler.sample(&followed);
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        sampler.sample(&followed);
    }
    println!(
        "one System sample (host, a process tree, NVML where present): {:.2} ms",
        t.elapsed().as_secs_f64() / n as f64 * 1e3
    );
}
