//! Online DPO with live labels: an AI judge (an external command here), people (a label log
//! written while the run goes on), judge failures, and a label log that survives `kill -9`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rlft::engine::config::RunConfig;
use rlft::engine::events::{Command, Event, LogLevel, RunStatus};
use rlft::engine::label_store::LabelStore;
use rlft::engine::labels::{Decision, counters, read_proposed};
use rlft::engine::run::read_metrics;
use rlft::engine::session::{self, LaunchOptions};

fn write_prompts(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| serde_json::json!({"prompt": format!("{}+{}=", i % 10, (i * 3) % 10)}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A judge program: prefers the answer with more `1` characters, ties broken by length (so
/// the policy visibly learns to write ones).
const ONES_JUDGE: &str = r#"import json, sys
batch = json.load(sys.stdin)
def key(t): return (t.count("1"), len(t))
print(json.dumps([1 if key(c["first"]) > key(c["second"]) else 2 if key(c["second"]) > key(c["first"]) else 0 for c in batch]))
"#;

fn config(model: &Path, prompts: &Path, steps: usize, online: &str, judge: &str) -> RunConfig {
    RunConfig::from_toml(&format!(
        r#"method = "online_dpo"
name = "odpo"
seed = 1
[model]
path = "{}"
[data]
train = "{}"
[train]
max_steps = {steps}
per_device_train_batch_size = 4
max_length = 32
[optim]
learning_rate = 1e-2
lr_scheduler_type = "constant"
[online_dpo]
prompts_per_step = 4
max_new_tokens = 6
beta = 0.1
{online}
{judge}
"#,
        model.display(),
        prompts.display(),
    ))
    .unwrap()
}

struct Setup {
    tmp: tempfile::TempDir,
    model: PathBuf,
    prompts: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model(tmp.path());
    let prompts = tmp.path().join("p.jsonl");
    write_prompts(&prompts, 32);
    Setup {
        tmp,
        model,
        prompts,
    }
}

fn judge_section(tmp: &Path, script: &str) -> String {
    let path = tmp.join("judge.py");
    std::fs::write(&path, script).unwrap();
    format!(
        "[judge]\ntype = \"command\"\ncommand = [\"python3\", \"{}\"]\nprinciple = \"more ones\"\ntimeout_secs = 20\n",
        path.display()
    )
}

#[test]
fn an_ai_judge_labels_pairs_and_dpo_steps_on_them() {
    let s = setup();
    let judge = judge_section(s.tmp.path(), ONES_JUDGE);
    let cfg = config(&s.model, &s.prompts, 6, "", &judge);
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        runs_root: s.tmp.path().join("runs"),
        ..Default::default()
    };
    let handle = session::launch(cfg, &opts, tx).unwrap();
    let dir = handle.dir.clone();
    handle.thread.join().unwrap();
    let events: Vec<Event> = rx.try_iter().collect();
    let failed: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 6);
    let last = &rows.last().unwrap().values;
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "objective/kl",
        "objective/entropy",
        "judge/consistency",
        "judge/first_position_rate",
        "labels/judge",
        "beta",
    ] {
        assert!(
            rows.iter().any(|r| r.values.contains_key(key)),
            "{key} missing"
        );
    }
    assert!(last["labels/judge"] >= 6.0, "{last:?}");
    // This judge has no position bias, so every decided pair is consistent.
    assert_eq!(last["judge/consistency"], 1.0);
    assert!(dir.join("checkpoints/final/model.safetensors").exists());
    // Samples are recorded for the Samples pane.
    assert!(
        std::fs::read_to_string(dir.join("samples.jsonl"))
            .unwrap()
            .lines()
            .count()
            >= 8
    );
}

#[test]
fn a_judge_that_prints_garbage_warns_and_leaves_pairs_unlabelled_without_failing() {
    let s = setup();
    let judge = judge_section(s.tmp.path(), "print('I think they are both lovely')\n");
    let cfg = config(&s.model, &s.prompts, 3, "", &judge);
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        runs_root: s.tmp.path().join("runs"),
        ..Default::default()
    };
    let handle = session::launch(cfg, &opts, tx).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut warning = None;
    while warning.is_none() && Instant::now() < deadline {
        if let Ok(Event::Log {
            level: LogLevel::Warn,
            message,
            ..
        }) = rx.recv_timeout(Duration::from_secs(1))
        {
            warning = Some(message);
        }
    }
    let warning = warning.expect("a warning about the judge");
    assert!(
        warning.contains("judge failed") && warning.contains("lovely"),
        "{warning}"
    );
    // Still running; it stops cleanly when asked.
    handle.commands.send(Command::Stop).unwrap();
    handle.thread.join().unwrap();
    let rest: Vec<Event> = rx.try_iter().collect();
    assert!(
        !rest.iter().any(|e| matches!(e, Event::Failed { .. })),
        "{rest:?}"
    );
    assert!(rest.iter().any(|e| matches!(
        e,
        Event::Finished {
            status: RunStatus::Stopped,
            ..
        }
    )));
}

#[test]
fn people_label_proposed_pairs_while_the_run_waits_and_it_trains_on_them() {
    let s = setup();
    let labels = s.tmp.path().join("labels.jsonl");
    let online = format!(
        "labeler = \"human\"\nqueue_limit = 8\nlabels = \"{}\"",
        labels.display()
    );
    let cfg = config(&s.model, &s.prompts, 2, &online, "");
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        runs_root: s.tmp.path().join("runs"),
        ..Default::default()
    };
    let handle = session::launch(cfg, &opts, tx).unwrap();
    let dir = handle.dir.clone();
    // Label every proposed pair as a person would in the Pairs pane: A better.
    let mut log = LabelStore::open(labels.parent().unwrap(), "tester").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut proposed = 0;
    while !handle.thread.is_finished() && Instant::now() < deadline {
        if let Ok(Event::Pairs { pairs, .. }) = rx.recv_timeout(Duration::from_millis(200)) {
            for p in pairs {
                assert!(p.judge.is_none());
                log.record(&p.pair, true, Decision::A, None).unwrap();
                proposed += 1;
            }
        }
    }
    handle.thread.join().unwrap();
    assert!(proposed >= 2, "{proposed} pairs proposed");
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 2, "two steps on people's labels");
    assert!(rows[1].values["labels/human"] >= 2.0);
    // The queue was persisted before it was shown, and stayed within its bound.
    let queued = read_proposed(&dir.join("pairs.jsonl")).unwrap();
    assert_eq!(queued.len(), proposed);
    assert!(queued.len() <= 8 + 4);
}

/// One labelling process of the team test: labels the shared pairs as `annotator`, holding
/// each before showing it, and now and then undoes its newest decision; prints every
/// confirmed decision and undo. Runs until killed.
fn team_labeller(dir: &Path, annotator: &str) {
    use rand::{Rng, SeedableRng};
    let mut store = LabelStore::open(dir, annotator).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    let pairs: Vec<rlft::engine::labels::PairItem> = (0..TEAM_PAIRS)
        .map(|i| rlft::engine::labels::PairItem::new("team", format!("p{i}"), "a", "b", "", ""))
        .collect();
    loop {
        let i = rng.random_range(0..pairs.len());
        store.refresh().unwrap();
        if store.done_for_me().contains(&pairs[i].id) || !store.lease(&pairs[i].id).unwrap() {
            continue;
        }
        if rng.random_range(0..7) == 0
            && let Some(d) = store.undo().unwrap()
        {
            println!("undone {}", d.seq);
        }
        let decision = [Decision::A, Decision::B, Decision::Tie][rng.random_range(0..3)];
        match store.record(&pairs[i], true, decision, None) {
            Ok(seq) => println!("confirmed {seq} {}", pairs[i].id),
            Err(rlft::engine::label_store::StoreError::Full { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        store.release(&pairs[i].id).unwrap();
    }
}

const TEAM_PAIRS: usize = 40;

/// Four labelling processes on one labels folder for 30 s (`RLFT_TEAM_SECS`), killed with
/// SIGKILL at random and restarted: every confirmed decision is in the store exactly once
/// under its annotator, sequence numbers are unique, no pair has more than
/// `labels_per_pair` labels, and every undo retracted its own annotator's decision.
#[test]
fn four_labellers_with_random_kill_9s_lose_and_double_nothing() {
    if let (Ok(dir), Ok(who)) = (
        std::env::var("RLFT_LABEL_CHILD"),
        std::env::var("RLFT_ANNOTATOR"),
    ) {
        team_labeller(Path::new(&dir), &who);
        return;
    }
    use rand::{Rng, SeedableRng};
    use std::collections::{HashMap, HashSet};
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("labels");
    LabelStore::open(&dir, "setup")
        .unwrap()
        .set_labels_per_pair(2)
        .unwrap();
    // (annotator, line) for every line a labeller printed.
    let said: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let spawn = |who: &str| {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "four_labellers_with_random_kill_9s_lose_and_double_nothing",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RLFT_LABEL_CHILD", &dir)
            .env("RLFT_ANNOTATOR", who)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (said, who) = (said.clone(), who.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                said.lock().unwrap().push((who.clone(), line));
            }
        });
        child
    };
    let names: Vec<String> = (0..4).map(|i| format!("ann{i}")).collect();
    let mut team: Vec<std::process::Child> = names.iter().map(|n| spawn(n)).collect();
    let secs: u64 = std::env::var("RLFT_TEAM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kills = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        let k = rng.random_range(0..team.len());
        team[k].kill().unwrap(); // SIGKILL, maybe mid-transaction
        team[k].wait().unwrap();
        kills += 1;
        team[k] = spawn(&names[k]);
    }
    for c in &mut team {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let said = said.lock().unwrap().clone();
    let store = LabelStore::open(&dir, "checker").unwrap();
    let entries = store.entries();
    // Sequence numbers are unique.
    let seqs: Vec<u64> = entries.iter().filter_map(|e| e.seq()).collect();
    assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), seqs.len());
    let decisions: HashMap<u64, &rlft::engine::labels::DecisionEntry> = entries
        .iter()
        .filter_map(|e| match e {
            rlft::engine::labels::LogEntry::Decision(d) => Some((d.seq, d)),
            _ => None,
        })
        .collect();
    // Every confirmed decision is there once, under its annotator and pair.
    let mut confirmed = 0;
    for (who, line) in &said {
        if let Some(rest) = line.strip_prefix("confirmed ") {
            let (seq, pair) = rest.split_once(' ').unwrap();
            let d = decisions
                .get(&seq.parse::<u64>().unwrap())
                .unwrap_or_else(|| panic!("confirmed decision {seq} of {who} lost"));
            assert_eq!(
                (d.annotator.as_str(), d.pair_id.as_str()),
                (who.as_str(), pair)
            );
            confirmed += 1;
        }
    }
    // Every undo a labeller confirmed is in the store.
    let retracted: HashSet<u64> = entries
        .iter()
        .filter_map(|e| match e {
            rlft::engine::labels::LogEntry::Retract { retracts, .. } => Some(*retracts),
            _ => None,
        })
        .collect();
    for (who, line) in &said {
        if let Some(seq) = line.strip_prefix("undone ") {
            assert!(
                retracted.contains(&seq.parse().unwrap()),
                "{who}'s undo {seq} lost"
            );
        }
    }
    // Every retraction took back its own annotator's decision.
    let mut retractions = 0;
    for e in entries {
        if let rlft::engine::labels::LogEntry::Retract {
            retracts,
            annotator,
            ..
        } = e
        {
            assert_eq!(&decisions[retracts].annotator, annotator);
            retractions += 1;
        }
    }
    // No pair has more than labels_per_pair standing labels.
    let mut per_pair: HashMap<&str, usize> = HashMap::new();
    for d in rlft::engine::labels::standing_decisions(entries) {
        *per_pair.entry(&d.pair_id).or_default() += 1;
    }
    assert!(per_pair.values().all(|n| *n <= 2), "{per_pair:?}");
    eprintln!(
        "team: {confirmed} confirmed decisions, {retractions} undos, {kills} kill -9s, \
         {} pairs labelled in {secs} s",
        per_pair.len()
    );
    assert!(
        confirmed > 20 && kills > 5,
        "{confirmed} decisions, {kills} kills"
    );
}

/// `rlft label`: the same labelling from a plain terminal or a script, into the same log.
#[test]
fn rlft_label_labels_waiting_pairs_from_stdin() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    std::fs::create_dir_all(runs.join("r1")).unwrap();
    let pairs: Vec<rlft::engine::labels::ProposedPair> = (0..3)
        .map(|i| rlft::engine::labels::ProposedPair {
            pair: rlft::engine::labels::PairItem::new(
                "r1",
                format!("{i}+1="),
                format!("{}", i + 1),
                "7",
                "r1@1#a",
                "r1@1#b",
            ),
            judge: None,
            judge_error: None,
        })
        .collect();
    rlft::engine::labels::append_proposed(&runs.join("r1/pairs.jsonl"), &pairs).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rlft"))
        .args(["label", "--runs"])
        .arg(&runs)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // a, a, undo the second, b, then quit before the third.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a\na\nu\nb\nq\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Undone"), "{text}");
    let log = LabelStore::open(&runs.join("labels"), "someone else").unwrap();
    assert_eq!(counters(log.entries()).labeled, 2, "{text}");
    let prefs = std::fs::read_to_string(runs.join("labels/preferences.jsonl")).unwrap();
    assert_eq!(prefs.lines().count(), 2);
    // The third pair is still waiting for the workbench or the next `rlft label`.
    let waiting = rlft::engine::labels::pending_pairs(&runs, &log.done_for_me()).unwrap();
    assert_eq!(waiting.len(), 1);
    // `--stats`: who labelled, agreement, and how the labels fold.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rlft"))
        .args(["label", "--stats", "--annotator", "tester", "--runs"])
        .arg(&runs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("annotators:") && text.contains("preferences by majority: 2 row(s)"),
        "{text}"
    );
}
