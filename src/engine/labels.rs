//! Pairwise preference labelling: a queue of A/B pairs and an append-only decision log.
//!
//! The log is the source of truth. Every decision is one JSON line, written and
//! `sync_data()`'d before [`LabelLog::record`] returns, so a label the screen confirmed survives
//! a crash or a power cut. Undo appends a retraction; nothing already written is rewritten.
//! Folding the log gives TRL preference rows (`prompt`, `chosen`, `rejected`) for reward-model
//! and DPO runs; ties, "both bad" and skips are kept in the log but yield no row.
//!
//! Pure Rust (no terminal code): the workbench's Pairs pane drives it, and so can tests.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::events::SampleRecord;
use crate::engine::judge::{Judgement, Verdict};

/// Two answers to one prompt, waiting for a human to compare them.
///
/// `run` is the run that proposed the pair (and will train on it, for online DPO); the Pairs
/// pane shows it and filters by it. `origin_a`/`origin_b` say where each answer came from
/// (run, step, index). They are stored in the log for analysis but never shown before the
/// decision, so the labeller is not swayed by which checkpoint wrote which answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairItem {
    pub id: String,
    /// The proposing run's id (its folder name); empty for ready-made pairs.
    #[serde(default)]
    pub run: String,
    pub prompt: String,
    pub a: String,
    pub b: String,
    #[serde(default)]
    pub origin_a: String,
    #[serde(default)]
    pub origin_b: String,
}

impl PairItem {
    /// A pair whose id is derived from the proposing run and the text, so the same two answers
    /// to the same prompt from one run get the same id whichever order they arrive in (and are
    /// not queued twice), while another run's identical pair is a pair of its own: a label
    /// given to one run never trains another.
    pub fn new(
        run: impl Into<String>,
        prompt: impl Into<String>,
        a: impl Into<String>,
        b: impl Into<String>,
        origin_a: impl Into<String>,
        origin_b: impl Into<String>,
    ) -> Self {
        let (run, prompt, a, b) = (run.into(), prompt.into(), a.into(), b.into());
        let id = pair_id(&run, &prompt, &a, &b);
        Self {
            id,
            run,
            prompt,
            a,
            b,
            origin_a: origin_a.into(),
            origin_b: origin_b.into(),
        }
    }

    /// The step the pair was proposed at, read from its origins (`run@step#i`).
    pub fn step(&self) -> Option<usize> {
        let origin = self
            .origin_b
            .rsplit_once('@')
            .or(self.origin_a.rsplit_once('@'))?
            .1;
        origin.split('#').next()?.parse().ok()
    }

    /// Whether answer `a` is shown on the left. It looks random per pair (a hash of the id and
    /// the session seed), which spreads position bias evenly, yet is reproducible: after a
    /// crash or an undo the same pair comes back in the same layout.
    pub fn a_on_left(&self, seed: u64) -> bool {
        let mut h = Fnv::new();
        h.write(&seed.to_le_bytes());
        h.write(self.id.as_bytes());
        h.finish() & 1 == 0
    }
}

/// A stable, order-independent id for a pair: FNV-1a over the proposing run, the prompt and
/// the sorted answers.
pub fn pair_id(run: &str, prompt: &str, a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Fnv::new();
    for part in [run, prompt, first, second] {
        h.write(part.as_bytes());
        // A separator that cannot appear inside UTF-8 text keeps ("ab","c") != ("a","bc").
        h.write(&[0xff]);
    }
    format!("{:016x}", h.finish())
}

/// 64-bit FNV-1a: tiny, dependency-free and stable across Rust versions (unlike `DefaultHasher`).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        // Fold the high half in: FNV's low bits alone are weakly mixed.
        self.0 ^ (self.0 >> 32)
    }
}

/// What the labeller said about a pair, in terms of the pair's own `a` and `b` (not screen
/// positions; the entry records which side `a` was shown on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    A,
    B,
    Tie,
    BothBad,
    Skip,
}

impl Decision {
    /// Short human wording, used in confirmations.
    pub fn describe(self) -> &'static str {
        match self {
            Decision::A | Decision::B => "preference",
            Decision::Tie => "tie",
            Decision::BothBad => "both bad",
            Decision::Skip => "skipped",
        }
    }
}

/// One decision line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionEntry {
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub ts: f64,
    pub pair_id: String,
    /// The run that proposed the pair (empty for ready-made pairs and logs written before
    /// runs were recorded).
    #[serde(default)]
    pub run: String,
    pub prompt: String,
    pub a: String,
    pub b: String,
    pub origin_a: String,
    pub origin_b: String,
    /// Whether `a` was on the left when the decision was made (for position-bias counts).
    pub a_on_left: bool,
    pub decision: Decision,
    /// The AI judge's verdict shown beside the pair when the person decided (for agreement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Verdict>,
}

impl DecisionEntry {
    /// The pair this decision was about, e.g. to put it back in the queue after an undo.
    pub fn pair(&self) -> PairItem {
        PairItem {
            id: self.pair_id.clone(),
            run: self.run.clone(),
            prompt: self.prompt.clone(),
            a: self.a.clone(),
            b: self.b.clone(),
            origin_a: self.origin_a.clone(),
            origin_b: self.origin_b.clone(),
        }
    }

    /// Whether the answer shown on the left won (`None` for ties, both-bad and skips).
    pub fn left_chosen(&self) -> Option<bool> {
        match self.decision {
            Decision::A => Some(self.a_on_left),
            Decision::B => Some(!self.a_on_left),
            _ => None,
        }
    }
}

/// One line of the label log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEntry {
    Decision(DecisionEntry),
    /// Undo: the decision with sequence number `retracts` no longer counts.
    Retract {
        seq: u64,
        ts: f64,
        retracts: u64,
        pair_id: String,
    },
    /// A run trained on the decision with sequence number `decision` at `step`. Written by
    /// the run (not the labeller), so it takes no sequence number of its own.
    Trained {
        ts: f64,
        run: String,
        step: usize,
        decision: u64,
        pair_id: String,
    },
}

impl LogEntry {
    /// The entry's sequence number; `None` for a run's training note, which has none.
    pub fn seq(&self) -> Option<u64> {
        match self {
            LogEntry::Decision(d) => Some(d.seq),
            LogEntry::Retract { seq, .. } => Some(*seq),
            LogEntry::Trained { .. } => None,
        }
    }
}

/// Where a standing decision came from and where it went: the run that proposed the pair and
/// the runs that trained on it (in the order they did).
#[derive(Clone, Debug, PartialEq)]
pub struct Provenance<'a> {
    pub decision: &'a DecisionEntry,
    pub proposed_by: &'a str,
    pub trained_by: Vec<&'a str>,
}

/// Each standing decision with the runs that trained on it, read from the log's
/// [`LogEntry::Trained`] notes.
pub fn provenance(entries: &[LogEntry]) -> Vec<Provenance<'_>> {
    let mut trained: HashMap<u64, Vec<&str>> = HashMap::new();
    for e in entries {
        if let LogEntry::Trained { run, decision, .. } = e {
            let runs = trained.entry(*decision).or_default();
            if !runs.contains(&run.as_str()) {
                runs.push(run);
            }
        }
    }
    standing_decisions(entries)
        .into_iter()
        .map(|d| Provenance {
            decision: d,
            proposed_by: &d.run,
            trained_by: trained.remove(&d.seq).unwrap_or_default(),
        })
        .collect()
}

/// Notes in the label log that `run` trained on these decisions (sequence number, pair id) at
/// `step`. One append of whole lines, synced: the labeller appends to the same file, and
/// appends of whole lines do not interleave.
pub fn append_trained(
    path: &Path,
    run: &str,
    step: usize,
    decisions: &[(u64, String)],
) -> io::Result<()> {
    if decisions.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    let ts = now();
    for (decision, pair_id) in decisions {
        let entry = LogEntry::Trained {
            ts,
            run: run.to_string(),
            step,
            decision: *decision,
            pair_id: pair_id.clone(),
        };
        text.push_str(&serde_json::to_string(&entry).map_err(io::Error::other)?);
        text.push('\n');
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    // A torn line left by a crash must not swallow the first note.
    if ends_without_newline_path(path)? {
        text.insert(0, '\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_data()
}

fn ends_without_newline_path(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    ends_without_newline(&mut f)
}

/// A TRL preference row (`docs/source/dataset_formats.md`, "preference" type, plain text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preference {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// Counts shown above the Pairs pane. Only the latest standing decision per pair counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// A, B, tie or both bad.
    pub labeled: usize,
    pub skipped: usize,
    /// A or B: the pairs that become preference rows.
    pub preferences: usize,
    pub ties: usize,
    pub both_bad: usize,
    /// Of the A/B decisions, how many chose the answer shown on the left.
    pub left_chosen: usize,
}

impl Counters {
    /// Position bias: the share of A/B decisions that went to the left answer, in percent.
    /// Near 50 % is healthy; far from it suggests people pick a side, not an answer.
    pub fn left_chosen_pct(&self) -> Option<f64> {
        (self.preferences > 0).then(|| 100.0 * self.left_chosen as f64 / self.preferences as f64)
    }
}

/// The decisions still standing: retracted ones removed, and for a pair decided more than
/// once only the newest kept. In the order of those newest decisions.
pub fn standing_decisions(entries: &[LogEntry]) -> Vec<&DecisionEntry> {
    let retracted: HashSet<u64> = entries
        .iter()
        .filter_map(|e| match e {
            LogEntry::Retract { retracts, .. } => Some(*retracts),
            _ => None,
        })
        .collect();
    let live: Vec<&DecisionEntry> = entries
        .iter()
        .filter_map(|e| match e {
            LogEntry::Decision(d) if !retracted.contains(&d.seq) => Some(d),
            _ => None,
        })
        .collect();
    let mut newest: HashMap<&str, usize> = HashMap::new();
    for (i, d) in live.iter().enumerate() {
        newest.insert(d.pair_id.as_str(), i);
    }
    live.iter()
        .enumerate()
        .filter(|(i, d)| newest.get(d.pair_id.as_str()) == Some(i))
        .map(|(_, d)| *d)
        .collect()
}

/// Folds a label log into TRL preference rows: "A better" gives chosen = a, "B better" gives
/// chosen = b; ties, both-bad and skips give nothing; retracted decisions are ignored.
pub fn fold_to_preferences(entries: &[LogEntry]) -> Vec<Preference> {
    standing_decisions(entries)
        .into_iter()
        .filter_map(|d| {
            let (chosen, rejected) = match d.decision {
                Decision::A => (&d.a, &d.b),
                Decision::B => (&d.b, &d.a),
                _ => return None,
            };
            Some(Preference {
                prompt: d.prompt.clone(),
                chosen: chosen.clone(),
                rejected: rejected.clone(),
            })
        })
        .collect()
}

/// Counts over the standing decisions of a log.
pub fn counters(entries: &[LogEntry]) -> Counters {
    let mut c = Counters::default();
    for d in standing_decisions(entries) {
        match d.decision {
            Decision::Skip => c.skipped += 1,
            Decision::Tie => {
                c.labeled += 1;
                c.ties += 1;
            }
            Decision::BothBad => {
                c.labeled += 1;
                c.both_bad += 1;
            }
            Decision::A | Decision::B => {
                c.labeled += 1;
                c.preferences += 1;
                if d.left_chosen() == Some(true) {
                    c.left_chosen += 1;
                }
            }
        }
    }
    c
}

/// Writes preference rows as JSONL (one `{"prompt","chosen","rejected"}` per line). The file
/// is derived data, so it is written whole to a temporary file and renamed into place: a
/// reader never sees half a file.
pub fn write_preferences(path: &Path, prefs: &[Preference]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut text = String::new();
    for p in prefs {
        text.push_str(&serde_json::to_string(p).map_err(io::Error::other)?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

/// The append-only label log (`labels.jsonl`).
pub struct LabelLog {
    path: PathBuf,
    file: File,
    entries: Vec<LogEntry>,
    next_seq: u64,
    /// Lines that did not parse when the log was opened (a torn last line after a crash).
    skipped_lines: usize,
    /// A failed write may have left a partial line; the next append starts a fresh line.
    needs_newline: bool,
}

impl LabelLog {
    /// Opens (creating if needed) a log and reads what it holds. Lines that do not parse are
    /// skipped and counted. If the file does not end in a newline (a write torn by a crash),
    /// a newline is appended first so the next entry is not glued to the fragment.
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            fs::create_dir_all(dir)?;
        }
        let is_new = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        if is_new {
            // A new file's name is only durable once its folder is synced. Best effort:
            // not every platform can open a folder for syncing.
            if let Some(d) = dir.and_then(|d| File::open(d).ok()) {
                let _ = d.sync_all();
            }
        }
        let mut entries = Vec::new();
        let mut skipped_lines = 0;
        {
            // Bytes, not `read_line`: a torn write may cut a UTF-8 character in half.
            let mut reader = BufReader::new(&mut file);
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                match serde_json::from_str::<LogEntry>(text) {
                    Ok(e) => entries.push(e),
                    Err(_) => skipped_lines += 1,
                }
            }
        }
        let needs_newline = ends_without_newline(&mut file)?;
        let next_seq = entries
            .iter()
            .filter_map(LogEntry::seq)
            .max()
            .map_or(1, |s| s + 1);
        Ok(Self {
            path: path.to_path_buf(),
            file,
            entries,
            next_seq,
            skipped_lines,
            needs_newline,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    /// Lines skipped when the log was opened because they did not parse.
    pub fn skipped_lines(&self) -> usize {
        self.skipped_lines
    }

    /// Appends a decision and syncs it to disk; only then returns its sequence number.
    pub fn record(
        &mut self,
        pair: &PairItem,
        a_on_left: bool,
        decision: Decision,
    ) -> io::Result<u64> {
        self.record_audited(pair, a_on_left, decision, None)
    }

    /// [`LabelLog::record`] with the AI judge's verdict that was shown beside the pair.
    pub fn record_audited(
        &mut self,
        pair: &PairItem,
        a_on_left: bool,
        decision: Decision,
        judge: Option<Verdict>,
    ) -> io::Result<u64> {
        let seq = self.next_seq;
        self.append(LogEntry::Decision(DecisionEntry {
            seq,
            ts: now(),
            pair_id: pair.id.clone(),
            run: pair.run.clone(),
            prompt: pair.prompt.clone(),
            a: pair.a.clone(),
            b: pair.b.clone(),
            origin_a: pair.origin_a.clone(),
            origin_b: pair.origin_b.clone(),
            a_on_left,
            decision,
            judge,
        }))?;
        Ok(seq)
    }

    /// Retracts the newest decision that still stands (appending a retraction entry) and
    /// returns it, or `None` when there is nothing to undo.
    pub fn undo(&mut self) -> io::Result<Option<DecisionEntry>> {
        let retracted: HashSet<u64> = self
            .entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::Retract { retracts, .. } => Some(*retracts),
                _ => None,
            })
            .collect();
        let Some(target) = self.entries.iter().rev().find_map(|e| match e {
            LogEntry::Decision(d) if !retracted.contains(&d.seq) => Some(d.clone()),
            _ => None,
        }) else {
            return Ok(None);
        };
        self.append(LogEntry::Retract {
            seq: self.next_seq,
            ts: now(),
            retracts: target.seq,
            pair_id: target.pair_id.clone(),
        })?;
        Ok(Some(target))
    }

    /// Ids of pairs with a standing decision (skips included): they are not queued again.
    pub fn decided_ids(&self) -> HashSet<String> {
        standing_decisions(&self.entries)
            .into_iter()
            .map(|d| d.pair_id.clone())
            .collect()
    }

    pub fn counters(&self) -> Counters {
        counters(&self.entries)
    }

    pub fn preferences(&self) -> Vec<Preference> {
        fold_to_preferences(&self.entries)
    }

    fn append(&mut self, entry: LogEntry) -> io::Result<()> {
        let mut line = String::new();
        if self.needs_newline {
            line.push('\n');
        }
        line.push_str(&serde_json::to_string(&entry).map_err(io::Error::other)?);
        line.push('\n');
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.needs_newline = true;
            return Err(e);
        }
        self.needs_newline = false;
        if let Some(seq) = entry.seq() {
            self.next_seq = seq + 1;
        }
        self.entries.push(entry);
        Ok(())
    }
}

fn ends_without_newline(file: &mut File) -> io::Result<bool> {
    if file.seek(SeekFrom::End(0))? == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::End(-1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reads a label log without opening it for writing (a trainer polling for new labels while
/// the workbench appends). A missing file is an empty log; unparseable lines are skipped.
pub fn read_log(path: &Path) -> io::Result<Vec<LogEntry>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            serde_json::from_str::<LogEntry>(String::from_utf8_lossy(line).trim()).ok()
        })
        .collect())
}

/// A pair a run asks people to label, with the AI judge's verdict when a judge saw it first.
/// Runs append these to `pairs.jsonl` in their folder (the persisted queue) and send them as
/// [`crate::engine::events::Event::Pairs`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProposedPair {
    #[serde(flatten)]
    pub pair: PairItem,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judgement>,
    /// Why the judge gave no verdict (timeout, garbage reply), shown beside the pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_error: Option<String>,
}

/// Appends proposed pairs to a queue file and syncs it, so a crash loses none of them.
pub fn append_proposed(path: &Path, pairs: &[ProposedPair]) -> io::Result<()> {
    let mut text = String::new();
    for p in pairs {
        text.push_str(&serde_json::to_string(p).map_err(io::Error::other)?);
        text.push('\n');
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()
}

/// Reads a queue file written by [`append_proposed`]; torn lines are skipped.
pub fn read_proposed(path: &Path) -> io::Result<Vec<ProposedPair>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            serde_json::from_str::<ProposedPair>(String::from_utf8_lossy(line).trim()).ok()
        })
        .collect())
}

/// A run's queue of pairs proposed for labelling, inside its run folder.
pub const RUN_PAIRS_FILE: &str = "pairs.jsonl";

/// Pairs proposed under `runs_root` (each run folder's `pairs.jsonl`, then the labels folder's
/// `pairs.jsonl`) that `entries` holds no standing decision for, oldest run folder first.
pub fn pending_pairs(runs_root: &Path, entries: &[LogEntry]) -> io::Result<Vec<ProposedPair>> {
    let decided: HashSet<&str> = standing_decisions(entries)
        .into_iter()
        .map(|d| d.pair_id.as_str())
        .collect();
    let mut files: Vec<PathBuf> = match fs::read_dir(runs_root) {
        Ok(read) => read
            .flatten()
            .map(|e| e.path().join(RUN_PAIRS_FILE))
            .filter(|p| p.is_file())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for f in files {
        // Queues written before pairs named their run: the folder says which run it was.
        let folder = f
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for mut p in read_proposed(&f)? {
            if p.pair.run.is_empty() {
                p.pair.run = folder.clone();
            }
            if !decided.contains(p.pair.id.as_str()) && seen.insert(p.pair.id.clone()) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Pairs waiting to be labelled, in order; a pair id is only ever queued once.
#[derive(Debug, Default)]
pub struct PairQueue {
    pending: VecDeque<PairItem>,
    seen: HashSet<String>,
}

impl PairQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a pair unless its id was queued before or is in `decided`. Returns whether it was.
    pub fn push(&mut self, item: PairItem, decided: &HashSet<String>) -> bool {
        if decided.contains(&item.id) || !self.seen.insert(item.id.clone()) {
            return false;
        }
        self.pending.push_back(item);
        true
    }

    /// Puts a pair back at the front (after an undo), even if it was queued before.
    pub fn push_front(&mut self, item: PairItem) {
        self.pending.retain(|p| p.id != item.id);
        self.seen.insert(item.id.clone());
        self.pending.push_front(item);
    }

    pub fn current(&self) -> Option<&PairItem> {
        self.pending.front()
    }

    pub fn pop(&mut self) -> Option<PairItem> {
        self.pending.pop_front()
    }

    /// The first waiting pair proposed by `run` (any run when `None`).
    pub fn current_of(&self, run: Option<&str>) -> Option<&PairItem> {
        self.pending.iter().find(|p| run.is_none_or(|r| p.run == r))
    }

    /// How many pairs `run` has waiting (all runs when `None`).
    pub fn len_of(&self, run: Option<&str>) -> usize {
        self.pending
            .iter()
            .filter(|p| run.is_none_or(|r| p.run == r))
            .count()
    }

    /// The runs with pairs waiting, in the order their first pair was queued.
    pub fn runs(&self) -> Vec<&str> {
        let mut runs: Vec<&str> = Vec::new();
        for p in &self.pending {
            if !runs.contains(&p.run.as_str()) {
                runs.push(&p.run);
            }
        }
        runs
    }

    /// Takes the pair with this id out of the queue.
    pub fn remove(&mut self, id: &str) -> Option<PairItem> {
        let i = self.pending.iter().position(|p| p.id == id)?;
        self.pending.remove(i)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Turns the generations runs report into pairs worth comparing:
/// * within one step, several completions for the same prompt (a GRPO group) are paired
///   two by two;
/// * a prompt sampled once per step (SFT, greedy evals) is paired with the run's previous,
///   different answer to it, so a labeller compares the model before and after training.
///
/// Identical answers are never paired.
#[derive(Debug, Default)]
pub struct PairBuilder {
    /// (run, prompt) -> (origin, completion) of the newest answer seen.
    last: HashMap<(String, String), (String, String)>,
}

impl PairBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `max` of the pairs one step's samples give, as proposals for people (no judge
    /// saw them).
    pub fn propose(
        &mut self,
        run: &str,
        step: usize,
        samples: &[SampleRecord],
        max: usize,
    ) -> Vec<ProposedPair> {
        self.add_step(run, step, samples)
            .into_iter()
            .take(max)
            .map(|pair| ProposedPair {
                pair,
                judge: None,
                judge_error: None,
            })
            .collect()
    }

    /// The new pairs one step's samples give.
    pub fn add_step(&mut self, run: &str, step: usize, samples: &[SampleRecord]) -> Vec<PairItem> {
        // Group by prompt, keeping first-seen order and each completion's index in the step.
        let mut groups: Vec<(&str, Vec<(usize, &str)>)> = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            match groups.iter_mut().find(|(p, _)| *p == s.prompt) {
                Some((_, g)) => {
                    if !g.iter().any(|(_, c)| *c == s.completion) {
                        g.push((i, &s.completion));
                    }
                }
                None => groups.push((&s.prompt, vec![(i, &s.completion)])),
            }
        }
        let origin = |i: usize| format!("{run}@{step}#{i}");
        let mut out = Vec::new();
        for (prompt, group) in groups {
            if group.len() >= 2 {
                for two in group.chunks_exact(2) {
                    let ((ia, a), (ib, b)) = (two[0], two[1]);
                    out.push(PairItem::new(run, prompt, a, b, origin(ia), origin(ib)));
                }
            } else if let Some((prev_origin, prev)) =
                self.last.get(&(run.to_string(), prompt.to_string()))
                && prev != group[0].1
            {
                let (i, c) = group[0];
                out.push(PairItem::new(
                    run,
                    prompt,
                    prev.clone(),
                    c,
                    prev_origin.clone(),
                    origin(i),
                ));
            }
            if let Some(&(i, c)) = group.last() {
                self.last.insert(
                    (run.to_string(), prompt.to_string()),
                    (origin(i), c.to_string()),
                );
            }
        }
        out
    }
}

/// Reads ready-made pairs from JSONL: `{"prompt", "a", "b"}` per line, with optional `id`,
/// `run`, `origin_a`, `origin_b`. Lines that do not parse are skipped; the count is returned.
pub fn read_pairs_jsonl(path: &Path) -> io::Result<(Vec<PairItem>, usize)> {
    #[derive(Deserialize)]
    struct Row {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        run: String,
        prompt: String,
        a: String,
        b: String,
        #[serde(default)]
        origin_a: String,
        #[serde(default)]
        origin_b: String,
    }
    let reader = BufReader::new(File::open(path)?);
    let mut pairs = Vec::new();
    let mut bad = 0;
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Row>(&line) {
            Ok(r) => {
                let mut item = PairItem::new(r.run, r.prompt, r.a, r.b, r.origin_a, r.origin_b);
                if let Some(id) = r.id {
                    item.id = id;
                }
                pairs.push(item);
            }
            Err(_) => bad += 1,
        }
    }
    Ok((pairs, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pair(n: usize) -> PairItem {
        PairItem::new(
            "run",
            format!("{n}+1="),
            format!("{}", n + 1),
            format!("{}", n + 2),
            format!("run@{n}#0"),
            format!("run@{n}#1"),
        )
    }

    fn sample(prompt: &str, completion: &str) -> SampleRecord {
        SampleRecord {
            step: 0,
            prompt: prompt.into(),
            completion: completion.into(),
            rewards: BTreeMap::new(),
            advantage: None,
        }
    }

    #[test]
    fn pair_ids_ignore_answer_order_but_not_prompt() {
        assert_eq!(pair_id("r", "p", "x", "y"), pair_id("r", "p", "y", "x"));
        assert_ne!(pair_id("r", "p", "x", "y"), pair_id("r", "q", "x", "y"));
        assert_ne!(pair_id("r", "p", "ab", "c"), pair_id("r", "p", "a", "bc"));
        // The same pair proposed by two runs is two pairs: a label trains only its own run.
        assert_ne!(
            pair_id("online-dpo", "p", "x", "y"),
            pair_id("online-dpo-2", "p", "x", "y")
        );
    }

    #[test]
    fn left_right_order_is_reproducible_and_mixed() {
        let lefts: Vec<bool> = (0..64).map(|n| pair(n).a_on_left(7)).collect();
        let again: Vec<bool> = (0..64).map(|n| pair(n).a_on_left(7)).collect();
        assert_eq!(lefts, again);
        let n_left = lefts.iter().filter(|l| **l).count();
        assert!((16..=48).contains(&n_left), "{n_left} of 64 on the left");
    }

    #[test]
    fn decisions_fold_into_trl_preferences_and_undo_retracts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = LabelLog::open(&tmp.path().join("labels.jsonl")).unwrap();
        log.record(&pair(1), true, Decision::A).unwrap();
        log.record(&pair(2), false, Decision::B).unwrap();
        log.record(&pair(3), true, Decision::Tie).unwrap();
        log.record(&pair(4), true, Decision::Skip).unwrap();
        log.record(&pair(5), true, Decision::BothBad).unwrap();
        log.record(&pair(6), true, Decision::A).unwrap();
        let undone = log.undo().unwrap().unwrap();
        assert_eq!(undone.pair_id, pair(6).id);

        let prefs = log.preferences();
        assert_eq!(
            prefs,
            vec![
                Preference {
                    prompt: "1+1=".into(),
                    chosen: "2".into(),
                    rejected: "3".into()
                },
                Preference {
                    prompt: "2+1=".into(),
                    chosen: "4".into(),
                    rejected: "3".into()
                },
            ]
        );
        let c = log.counters();
        assert_eq!((c.labeled, c.skipped, c.preferences), (4, 1, 2));
        assert_eq!((c.ties, c.both_bad), (1, 1));
        // Pair 1: a on the left, A chosen (left). Pair 2: a on the right, B chosen (left).
        assert_eq!(c.left_chosen_pct(), Some(100.0));

        // Undo wrote a retraction line; nothing was rewritten.
        let text = fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 7);
        assert!(
            text.lines()
                .last()
                .unwrap()
                .contains("\"kind\":\"retract\"")
        );
        assert!(!log.decided_ids().contains(&pair(6).id));
        assert!(log.decided_ids().contains(&pair(4).id));
    }

    #[test]
    fn undo_twice_walks_back_and_nothing_left_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = LabelLog::open(&tmp.path().join("l.jsonl")).unwrap();
        assert!(log.undo().unwrap().is_none());
        log.record(&pair(1), true, Decision::A).unwrap();
        log.record(&pair(2), true, Decision::B).unwrap();
        assert_eq!(log.undo().unwrap().unwrap().pair_id, pair(2).id);
        assert_eq!(log.undo().unwrap().unwrap().pair_id, pair(1).id);
        assert!(log.undo().unwrap().is_none());
        assert!(log.preferences().is_empty());
    }

    #[test]
    fn relabelling_a_pair_keeps_only_the_newest_decision() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = LabelLog::open(&tmp.path().join("l.jsonl")).unwrap();
        log.record(&pair(1), true, Decision::A).unwrap();
        log.record(&pair(1), true, Decision::B).unwrap();
        let prefs = log.preferences();
        assert_eq!(prefs.len(), 1);
        assert_eq!(prefs[0].chosen, "3");
        assert_eq!(log.counters().labeled, 1);
    }

    #[test]
    fn reopening_after_a_crash_ignores_the_torn_line_and_appends_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("labels.jsonl");
        {
            let mut log = LabelLog::open(&path).unwrap();
            log.record(&pair(1), true, Decision::A).unwrap();
            log.record(&pair(2), true, Decision::B).unwrap();
        }
        // A crash in the middle of the third write leaves half a line, no newline.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        write!(
            f,
            "{{\"kind\":\"decision\",\"seq\":3,\"ts\":1.0,\"pair_id\":\"ab"
        )
        .unwrap();
        drop(f);

        let mut log = LabelLog::open(&path).unwrap();
        assert_eq!(log.entries().len(), 2);
        assert_eq!(log.skipped_lines(), 1);
        assert_eq!(log.preferences().len(), 2);
        let seq = log.record(&pair(3), false, Decision::A).unwrap();
        assert_eq!(seq, 3);
        drop(log);

        // The new entry is on its own line and the log reads back whole.
        let log = LabelLog::open(&path).unwrap();
        assert_eq!(log.entries().len(), 3);
        assert_eq!(log.skipped_lines(), 1);
        assert_eq!(log.preferences().len(), 3);
    }

    #[test]
    fn preferences_file_is_trl_jsonl() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out/preferences.jsonl");
        let prefs = vec![Preference {
            prompt: "1+1=".into(),
            chosen: "2".into(),
            rejected: "3".into(),
        }];
        write_preferences(&path, &prefs).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"prompt\":\"1+1=\",\"chosen\":\"2\",\"rejected\":\"3\"}\n"
        );
    }

    #[test]
    fn queue_skips_decided_and_repeated_pairs_and_undo_goes_first() {
        let mut q = PairQueue::new();
        let decided: HashSet<String> = [pair(2).id].into();
        assert!(q.push(pair(1), &decided));
        assert!(!q.push(pair(2), &decided));
        assert!(!q.push(pair(1), &decided));
        assert!(q.push(pair(3), &decided));
        let first = q.pop().unwrap();
        q.push_front(first.clone());
        assert_eq!(q.current(), Some(&first));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn builder_pairs_groups_and_successive_steps() {
        let mut b = PairBuilder::new();
        let group = [
            sample("1+1=", "2"),
            sample("1+1=", "3"),
            sample("1+1=", "2"),
            sample("1+1=", "11"),
            sample("2+2=", "4"),
        ];
        let pairs = b.add_step("grpo", 5, &group);
        // "2" repeats, so the distinct answers are 2, 3, 11: one pair (2,3); "2+2=" is alone.
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].a.as_str(), pairs[0].b.as_str()), ("2", "3"));
        assert_eq!(pairs[0].origin_a, "grpo@5#0");
        // Next step the lone prompt has a new answer: paired with the previous one.
        let pairs = b.add_step("grpo", 6, &[sample("2+2=", "5")]);
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].a.as_str(), pairs[0].b.as_str()), ("4", "5"));
        // The same answer again gives nothing.
        assert!(b.add_step("grpo", 7, &[sample("2+2=", "5")]).is_empty());
    }

    #[test]
    fn pairs_jsonl_is_read_and_bad_lines_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pairs.jsonl");
        fs::write(
            &path,
            "{\"prompt\":\"p\",\"a\":\"x\",\"b\":\"y\"}\nnot json\n{\"id\":\"k\",\"prompt\":\"q\",\"a\":\"1\",\"b\":\"2\"}\n",
        )
        .unwrap();
        let (pairs, bad) = read_pairs_jsonl(&path).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].id, "k");
    }

    #[test]
    fn provenance_names_the_proposing_run_and_the_runs_that_trained() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("labels.jsonl");
        let mut log = LabelLog::open(&path).unwrap();
        let mine = PairItem::new(
            "online-dpo",
            "p",
            "x",
            "y",
            "online-dpo@1#a",
            "online-dpo@1#b",
        );
        let other = PairItem::new("grpo", "q", "1", "2", "grpo@3#0", "grpo@3#1");
        let s1 = log.record(&mine, true, Decision::A).unwrap();
        let s2 = log.record(&other, true, Decision::B).unwrap();
        // The run notes what it trained on, appended beside the labeller's lines.
        append_trained(&path, "online-dpo", 4, &[(s1, mine.id.clone())]).unwrap();
        drop(log);
        let log = LabelLog::open(&path).unwrap();
        assert_eq!(log.skipped_lines(), 0);
        let prov = provenance(log.entries());
        assert_eq!(prov.len(), 2);
        assert_eq!(
            (
                prov[0].decision.seq,
                prov[0].proposed_by,
                prov[0].trained_by.clone()
            ),
            (s1, "online-dpo", vec!["online-dpo"])
        );
        assert_eq!(
            (
                prov[1].decision.seq,
                prov[1].proposed_by,
                prov[1].trained_by.len()
            ),
            (s2, "grpo", 0)
        );
        // Notes take no sequence number: the next decision follows the last one.
        let mut log = log;
        assert_eq!(log.record(&pair(9), true, Decision::A).unwrap(), s2 + 1);
        assert_eq!(mine.step(), Some(1));
    }

    #[test]
    fn the_queue_filters_by_run() {
        let mut q = PairQueue::new();
        let none = HashSet::new();
        let p = |run: &str, n: usize| PairItem::new(run, format!("{n}="), "a", "b", "", "");
        q.push(p("grpo", 1), &none);
        q.push(p("online-dpo", 2), &none);
        q.push(p("grpo", 3), &none);
        assert_eq!(q.len_of(None), 3);
        assert_eq!(q.len_of(Some("online-dpo")), 1);
        assert_eq!(q.current_of(Some("online-dpo")).unwrap().prompt, "2=");
        assert_eq!(q.current_of(None).unwrap().prompt, "1=");
        assert_eq!(q.runs(), vec!["grpo", "online-dpo"]);
        let id = q.current_of(Some("online-dpo")).unwrap().id.clone();
        assert!(q.remove(&id).is_some());
        assert!(q.current_of(Some("online-dpo")).is_none());
        assert_eq!(q.len(), 2);
    }
}
