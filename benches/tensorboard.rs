//! Reading TensorBoard event files: 1M scalar events (one tagged value each, as PyTorch's
//! `add_scalar` writes them) read and decoded from a file on disk, and the cost of polling a
//! file that has not grown (what tailing an idle run costs).
//!
//! `cargo bench --bench tensorboard`

use std::time::Instant;

use rlft::engine::tensorboard::{EventFileReader, EventFileWriter, Logged, values_of};

const EVENTS: usize = 1_000_000;

fn main() {
    // On this repository's disk rather than a RAM-backed /tmp.
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir");
    let mut w = EventFileWriter::create(dir.path()).expect("writer");
    for step in 0..EVENTS {
        w.scalars(
            step,
            step as f64 * 0.01,
            [("train/loss", 1.0 / (1 + step) as f64)],
        )
        .expect("write");
    }
    w.flush().expect("flush");
    let path = w.path().to_path_buf();
    let bytes = std::fs::metadata(&path).expect("file").len();
    for round in 1..=3 {
        let t = Instant::now();
        let mut r = EventFileReader::new(&path);
        let events = r.poll().expect("read");
        let scalars = events
            .iter()
            .flat_map(values_of)
            .filter(|v| matches!(v, Logged::Scalar { .. }))
            .count();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(scalars, EVENTS);
        println!(
            "read {scalars} scalar events ({:.1} MB) in {secs:.3} s ({:.1} M events/s), round {round}",
            bytes as f64 / 1e6,
            scalars as f64 / secs / 1e6
        );
        if round == 3 {
            let polls = 10_000;
            let t = Instant::now();
            for _ in 0..polls {
                assert!(r.poll().expect("poll").is_empty());
            }
            println!(
                "polling the file unchanged: {:.1} µs a poll",
                t.elapsed().as_secs_f64() / polls as f64 * 1e6
            );
        }
    }
}
