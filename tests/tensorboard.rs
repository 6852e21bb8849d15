//! TensorBoard event files: rlft reads what PyTorch's `SummaryWriter` wrote (the fixture from
//! `tests/fixtures/tensorboard/make_events.py`), including a file cut mid-record, and a run
//! with `report_to = ["tensorboard"]` writes every metrics row into an event file that reads
//! back equal to its `metrics.jsonl`.

mod common;

use std::path::Path;

use common::{run_to_end, tiny_model, write_arith};
use rlft::engine::device::DeviceChoice;
use rlft::engine::run::read_metrics;
use rlft::engine::tensorboard::{EventFileReader, Logged, event_files, values_of};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensorboard")
        .join(name)
}

fn read_all(path: &Path) -> Vec<Logged> {
    let mut r = EventFileReader::new(path);
    r.poll().unwrap().iter().flat_map(values_of).collect()
}

#[test]
fn pytorch_summary_writer_scalars_and_text_read_back() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let values = read_all(&fixture("pytorch.tfevents"));
    let scalars: Vec<(i64, String, f64)> = values
        .iter()
        .filter_map(|v| match v {
            Logged::Scalar {
                step, tag, value, ..
            } => Some((*step, tag.clone(), *value)),
            _ => None,
        })
        .collect();
    let want = expected["scalars"].as_array().unwrap();
    assert_eq!(scalars.len(), want.len());
    for ((step, tag, value), w) in scalars.iter().zip(want) {
        assert_eq!(*step, w["step"].as_i64().unwrap());
        assert_eq!(tag, w["tag"].as_str().unwrap());
        // `simple_value` is an f32.
        assert!(
            (value - w["value"].as_f64().unwrap()).abs() < 1e-6,
            "{tag}@{step}"
        );
    }
    let texts: Vec<&Logged> = values
        .iter()
        .filter(|v| matches!(v, Logged::Text { .. }))
        .collect();
    assert_eq!(
        texts,
        [&Logged::Text {
            step: 5,
            wall_time: 1_700_000_005.0,
            // PyTorch files text under `<tag>/text_summary`.
            tag: "train/generated_samples/text_summary".into(),
            text: "12+35=47".into()
        }]
    );
}

/// A file cut in the middle of its last record (a writer caught mid-flush) reads up to the
/// last whole record, without an error; the rest is read once it is there.
#[test]
fn a_torn_last_record_is_waited_for_not_an_error() {
    let whole = std::fs::read(fixture("pytorch.tfevents")).unwrap();
    let torn = std::fs::read(fixture("pytorch_torn.tfevents")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("events.out.tfevents.1.host");
    std::fs::write(&path, &torn).unwrap();
    let mut r = EventFileReader::new(&path);
    let first: Vec<Logged> = r.poll().unwrap().iter().flat_map(values_of).collect();
    assert_eq!(first.len(), 15, "the 15 scalars; the text record is torn");
    assert!(r.poll().unwrap().is_empty());
    std::fs::write(&path, &whole).unwrap();
    let rest: Vec<Logged> = r.poll().unwrap().iter().flat_map(values_of).collect();
    assert!(matches!(rest.as_slice(), [Logged::Text { .. }]), "{rest:?}");
}

#[test]
fn report_to_tensorboard_writes_every_metrics_row() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("sft.jsonl");
    write_arith(&data, 64, 3);
    let toml = format!(
        "method = \"sft\"\nname = \"tb\"\n[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\n\
         [train]\nmax_steps = 5\nper_device_train_batch_size = 8\nmax_length = 16\n\
         report_to = [\"tensorboard\"]\n[optim]\nlearning_rate = 1e-3\n",
        model.display(),
        data.display()
    );
    run_to_end(&toml, &tmp.path().join("runs"), DeviceChoice::Cpu);
    let dir = tmp.path().join("runs/tb");
    let files = event_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let logged = read_all(&files[0]);
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 5);
    for row in &rows {
        for (name, v) in &row.values {
            let found = logged.iter().any(|l| {
                matches!(l, Logged::Scalar { step, tag, value, .. }
                    if *step == row.step as i64 && tag == name && (value - *v as f32 as f64).abs() < 1e-9)
            });
            assert!(found, "{name} at step {}", row.step);
        }
    }
}

/// `rlft watch` on a TensorBoard folder: the watcher sends the run's scalars as metrics, with
/// rlft's names beside the originals (`train/reward` -> `reward`), its text summaries as
/// samples, and what is appended later as it comes.
#[test]
fn a_watched_tensorboard_folder_streams_metrics_and_samples() {
    use rlft::engine::events::Event;
    use rlft::engine::tensorboard::EventFileWriter;
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("runs/Dec05_host");
    std::fs::create_dir_all(&logdir).unwrap();
    std::fs::copy(
        fixture("pytorch.tfevents"),
        logdir.join("events.out.tfevents.1.host"),
    )
    .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let watch = rlft::engine::watch::spawn(tmp.path(), "trl-run".into(), tx).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut metrics, mut samples) = (Vec::new(), Vec::new());
    while metrics.len() < 5 || samples.is_empty() {
        match rx.recv_deadline(deadline) {
            Ok(Event::Metrics { step, values, .. }) => metrics.push((step, values)),
            Ok(Event::Samples { samples: s, .. }) => samples.extend(s),
            Ok(_) => {}
            Err(e) => panic!("{e}: {metrics:?} {samples:?}"),
        }
    }
    let (step, values) = &metrics[0];
    assert_eq!(*step, 1);
    assert!((values["reward"] - 0.1).abs() < 1e-6, "{values:?}");
    assert!(
        values.contains_key("train/reward"),
        "the original name stays"
    );
    assert_eq!(samples[0].completion, "12+35=47");
    // A second writer in the same folder (a resumed run): its rows arrive too.
    let started = std::time::Instant::now();
    let mut w = EventFileWriter::create(&logdir).unwrap();
    w.scalars(6, 1_700_000_006.0, [("train/reward", 0.75)])
        .unwrap();
    w.flush().unwrap();
    loop {
        match rx.recv_deadline(deadline + std::time::Duration::from_secs(10)) {
            Ok(Event::Metrics {
                step: 6, values, ..
            }) => {
                assert_eq!(values["reward"], 0.75);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("step 6 never came: {e}"),
        }
    }
    eprintln!(
        "a flushed record reached the watcher's events in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    watch.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watch.thread.join().unwrap();
}

/// A real TRL run seen two ways: rlft's callback folder and TRL's own TensorBoard file give
/// the same rewards; the callback's samples and end status come through the watcher.
#[test]
fn a_trl_run_reads_the_same_from_its_callback_folder_and_its_event_file() {
    use rlft::engine::events::Event;
    use rlft::engine::watch::{Source, Tail};
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl_callback");
    let mut tail = Tail::new(Source::detect(&folder).unwrap());
    let events = tail.poll("trl");
    let rewards: Vec<(usize, f64)> = events
        .iter()
        .filter_map(|e| match e {
            // The last line is the trainer's summary (train_runtime, ...), with no reward.
            Event::Metrics { step, values, .. } => Some((*step, *values.get("reward")?)),
            _ => None,
        })
        .collect();
    assert_eq!(rewards.len(), 4);
    assert!(events.iter().any(|e| matches!(e, Event::Samples { samples, .. } if samples[0].rewards.contains_key("exact_match"))));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Finished { step: 4, .. }))
    );
    let tb: Vec<(i64, f64)> = read_all(&fixture("trl_grpo.tfevents"))
        .into_iter()
        .filter_map(|l| match l {
            Logged::Scalar {
                step, tag, value, ..
            } if tag == "train/reward" => Some((step, value)),
            _ => None,
        })
        .collect();
    assert_eq!(tb.len(), 4);
    for ((s1, r1), (s2, r2)) in rewards.iter().zip(&tb) {
        assert_eq!(*s1 as i64, *s2);
        assert!((r1 - r2).abs() < 1e-6, "step {s1}: {r1} vs {r2}");
    }
}

/// verl's file logger and rollout dumps: metrics under rlft's names (originals kept) and the
/// dumped generations as samples with their score.
#[test]
fn a_verl_log_and_its_rollouts_are_read() {
    use rlft::engine::events::Event;
    use rlft::engine::watch::{Source, Tail};
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verl/exp.jsonl");
    let source = Source::detect(&log).unwrap();
    assert!(
        matches!(
            &source,
            Source::VerlJsonl {
                rollouts: Some(_),
                ..
            }
        ),
        "{source:?}"
    );
    let events = Tail::new(source).poll("verl");
    let last = events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics { step, values, .. } => Some((*step, values.clone())),
            _ => None,
        })
        .next_back()
        .unwrap();
    assert_eq!(last.0, 3);
    assert_eq!(last.1["reward"], 0.5);
    assert_eq!(last.1["critic/score/mean"], 0.5);
    assert_eq!(last.1["completions/mean_length"], 4.6);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Samples { step: 2, samples, .. }
        if samples.len() == 2 && samples[0].rewards["score"] == 1.0))
    );
}

/// The Hugging Face trainer's `checkpoint-N` folders of a watched run are reported once each
/// is whole (its `trainer_state.json` is there); a TRL checkpoint is a model folder rlft loads.
#[test]
fn a_watched_runs_whole_checkpoints_are_reported() {
    use rlft::engine::events::Event;
    use rlft::engine::watch::{Source, Tail};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trl-out");
    std::fs::create_dir_all(out.join("runs/Dec05_host")).unwrap();
    std::fs::copy(
        fixture("trl_grpo.tfevents"),
        out.join("runs/Dec05_host/events.out.tfevents.1.host"),
    )
    .unwrap();
    // A checkpoint being written (no trainer_state.json yet), then whole.
    let ck = out.join("checkpoint-4");
    std::fs::create_dir_all(&ck).unwrap();
    let mut tail = Tail::new(Source::detect(&out.join("runs")).unwrap());
    let checkpoints = |events: Vec<Event>| -> Vec<(usize, std::path::PathBuf)> {
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::Checkpoint { step, path, .. } => Some((step, path)),
                _ => None,
            })
            .collect()
    };
    assert!(checkpoints(tail.poll("trl")).is_empty());
    std::fs::write(ck.join("trainer_state.json"), "{}").unwrap();
    assert_eq!(checkpoints(tail.poll("trl")), [(4, ck.clone())]);
    assert!(checkpoints(tail.poll("trl")).is_empty(), "reported once");
}
