//! How long a labelling decision takes to be confirmed: `LabelStore::record`, which returns
//! once the decision is committed and synced to disk (SQLite WAL, `synchronous = FULL`), and
//! the hold taken on the next pair (`lease`). Alone, and with a second process labelling the
//! same store at the same time. The store lives in a folder of this repository's disk (not
//! `/tmp`, which may be a RAM disk where syncing costs nothing).
//!
//! `cargo bench --bench label_store`

use std::time::{Duration, Instant};

use rlft::engine::label_store::LabelStore;
use rlft::engine::labels::{Decision, PairItem};

/// Decisions timed per measurement.
const DECISIONS: usize = 300;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Times `DECISIONS` leases and decisions by `annotator`; returns (record, lease) timings.
fn label(dir: &std::path::Path, annotator: &str, offset: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut store = LabelStore::open(dir, annotator).expect("store");
    let (mut rec, mut lease) = (Vec::new(), Vec::new());
    for i in 0..DECISIONS {
        let pair = PairItem::new("bench", format!("p{}", i + offset), "a", "b", "", "");
        let t = Instant::now();
        store.lease(&pair.id).expect("lease");
        lease.push(t.elapsed());
        let t = Instant::now();
        store
            .record(&pair, true, Decision::A, None)
            .expect("record");
        rec.push(t.elapsed());
    }
    (rec, lease)
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what:<40} median {:>6.2} ms  p90 {:>6.2} ms  max {:>6.2} ms  (n = {})",
        pct(&times, 0.5),
        pct(&times, 0.9),
        pct(&times, 1.0),
        times.len()
    );
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = root.join("target");
    std::fs::create_dir_all(&scratch).expect("target folder");
    let tmp = tempfile::tempdir_in(&scratch).expect("temp folder on disk");
    let dir = tmp.path().join("labels");

    let (rec, lease) = label(&dir, "alone", 0);
    report("record, one labeller", rec.clone());
    report("lease, one labeller", lease);

    // Two labellers at once, each in its own thread with its own connection (as two
    // processes have): each waits for the other's commits.
    let d2 = dir.clone();
    let other = std::thread::spawn(move || label(&d2, "other", 100_000));
    let (rec2, _) = label(&dir, "together", 200_000);
    let (rec3, _) = other.join().expect("second labeller");
    report("record, two labellers at once", [rec2, rec3].concat());

    let mut sorted = rec;
    sorted.sort();
    let median = pct(&sorted, 0.5);
    println!(
        "target: a decision confirmed (synced) in under 5 ms median: {} ({median:.2} ms)",
        if median < 5.0 { "met" } else { "MISSED" }
    );
}
