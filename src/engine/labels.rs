//! Pairwise preference labelling: pairs, queues, and the log of decisions.
//!
//! The log is a list of [`LogEntry`]s: decisions (who chose what on which pair), retractions
//! (undo), ratings of single answers, and notes of which run trained on a decision. The
//! [`crate::engine::label_store`] keeps it safe for several labelling processes at once and
//! exports it as `labels.jsonl`; this module holds the pure parts: folding the log by majority
//! into TRL preference rows (`prompt`, `chosen`, `rejected`), counters, provenance, the queue
//! of pairs waiting and the builder that pairs a run's samples.
//!
//! Pure Rust (no terminal code): the workbench's Pairs pane drives it, and so can tests.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
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
    /// Who decided (`--annotator`, default the login name); empty in logs from before
    /// annotators were recorded.
    #[serde(default)]
    pub annotator: String,
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

/// A judgement of one answer on its own: desirable or not (TRL's KTO `label`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RatingEntry {
    pub seq: u64,
    pub ts: f64,
    /// The run whose sample it was.
    #[serde(default)]
    pub run: String,
    pub prompt: String,
    pub completion: String,
    /// Where the answer came from (`run@step#i`).
    #[serde(default)]
    pub origin: String,
    /// Thumbs up (`true`) or down.
    pub label: bool,
    #[serde(default)]
    pub annotator: String,
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
        /// Who undid it: only one's own decisions can be retracted.
        #[serde(default)]
        annotator: String,
    },
    /// A thumbs-up or thumbs-down on one answer (unpaired feedback, as KTO trains on).
    Rating(RatingEntry),
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
            LogEntry::Rating(r) => Some(r.seq),
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

/// A TRL preference row (`docs/source/dataset_formats.md`, "preference" type, plain text),
/// with how many annotators voted for `chosen` out of how many labelled the pair (TRL
/// ignores the extra columns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preference {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    #[serde(default = "one")]
    pub votes: usize,
    #[serde(default = "one")]
    pub voters: usize,
}

fn one() -> usize {
    1
}

/// What folding by majority dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldStats {
    /// Pairs whose majority said tie or both bad.
    pub ties: usize,
    /// Pairs with no majority (e.g. one vote each for A and B).
    pub splits: usize,
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

/// The decisions still standing: retracted ones removed, and for a pair an annotator decided
/// more than once only their newest kept. In the order of those newest decisions.
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
    let mut newest: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, d) in live.iter().enumerate() {
        newest.insert((d.pair_id.as_str(), d.annotator.as_str()), i);
    }
    live.iter()
        .enumerate()
        .filter(|(i, d)| newest.get(&(d.pair_id.as_str(), d.annotator.as_str())) == Some(i))
        .map(|(_, d)| *d)
        .collect()
}

/// The majority of the votes on one pair (skips are no vote): `A` or `B` when one has more
/// votes than every other answer, `Tie` when a tie or both-bad wins, `None` for a split or no
/// votes. With the winning votes and the number of voters.
pub fn majority(votes: &[Decision]) -> (Option<Decision>, usize, usize) {
    let counted: Vec<Decision> = votes
        .iter()
        .copied()
        .filter(|d| *d != Decision::Skip)
        .collect();
    let count = |want: Decision| counted.iter().filter(|d| **d == want).count();
    let options = [Decision::A, Decision::B, Decision::Tie, Decision::BothBad];
    let tally: Vec<(Decision, usize)> = options.iter().map(|d| (*d, count(*d))).collect();
    let best = tally.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let winners: Vec<Decision> = tally
        .iter()
        .filter(|(_, n)| *n == best && best > 0)
        .map(|(d, _)| *d)
        .collect();
    let winner = match winners.as_slice() {
        [Decision::BothBad] => Some(Decision::Tie),
        [one] => Some(*one),
        _ => None,
    };
    (winner, best, counted.len())
}

/// Folds a label log into TRL preference rows, one per pair by the majority of its
/// annotators: `A` gives chosen = a, `B` gives chosen = b; pairs whose majority is a tie or
/// both bad, and pairs with no majority, give no row and are counted. Retracted decisions and
/// skips do not vote.
pub fn fold_to_preferences(entries: &[LogEntry]) -> (Vec<Preference>, FoldStats) {
    let mut by_pair: Vec<(&DecisionEntry, Vec<Decision>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for d in standing_decisions(entries) {
        match index.get(d.pair_id.as_str()) {
            Some(&i) => by_pair[i].1.push(d.decision),
            None => {
                index.insert(&d.pair_id, by_pair.len());
                by_pair.push((d, vec![d.decision]));
            }
        }
    }
    let mut stats = FoldStats::default();
    let mut rows = Vec::new();
    for (d, votes) in by_pair {
        let (winner, won, voters) = majority(&votes);
        let (chosen, rejected) = match winner {
            Some(Decision::A) => (&d.a, &d.b),
            Some(Decision::B) => (&d.b, &d.a),
            Some(_) => {
                stats.ties += 1;
                continue;
            }
            None if voters > 0 => {
                stats.splits += 1;
                continue;
            }
            None => continue,
        };
        rows.push(Preference {
            prompt: d.prompt.clone(),
            chosen: chosen.clone(),
            rejected: rejected.clone(),
            votes: won,
            voters,
        });
    }
    (rows, stats)
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
    let mut text = String::new();
    for p in prefs {
        text.push_str(&serde_json::to_string(p).map_err(io::Error::other)?);
        text.push('\n');
    }
    write_atomically(path, &text)
}

pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes a whole log as JSONL (one entry per line), atomically: a temporary file renamed
/// into place, so readers (people, scripts, older rlft) never see half a file.
pub fn write_log(path: &Path, entries: &[LogEntry]) -> io::Result<()> {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).map_err(io::Error::other)?);
        text.push('\n');
    }
    write_atomically(path, &text)
}

/// Writes `text` to a temporary file beside `path`, syncs it and renames it into place.
pub(crate) fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    fs::rename(&tmp, path)
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

/// Pairs proposed under `runs_root` (each run folder's `pairs.jsonl`), oldest run folder
/// first, leaving out those in `done` (e.g. [`crate::engine::label_store::LabelStore::done_for_me`]).
pub fn pending_pairs(runs_root: &Path, done: &HashSet<String>) -> io::Result<Vec<ProposedPair>> {
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
            if !done.contains(&p.pair.id) && seen.insert(p.pair.id.clone()) {
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

    /// The waiting pairs proposed by `run` (any run when `None`), in order.
    pub fn iter_of<'a>(&'a self, run: Option<&'a str>) -> impl Iterator<Item = &'a PairItem> {
        self.pending
            .iter()
            .filter(move |p| run.is_none_or(|r| p.run == r))
    }

    /// The waiting pair with this id.
    pub fn get(&self, id: &str) -> Option<&PairItem> {
        self.pending.iter().find(|p| p.id == id)
    }

    /// Drops the waiting pairs `keep` says no to (e.g. labelled meanwhile by others).
    pub fn retain(&mut self, keep: impl FnMut(&PairItem) -> bool) {
        self.pending.retain(keep);
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
    fn preferences_file_is_trl_jsonl() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out/preferences.jsonl");
        let prefs = vec![Preference {
            prompt: "1+1=".into(),
            chosen: "2".into(),
            rejected: "3".into(),
            votes: 2,
            voters: 3,
        }];
        write_preferences(&path, &prefs).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"prompt\":\"1+1=\",\"chosen\":\"2\",\"rejected\":\"3\",\"votes\":2,\"voters\":3}\n"
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

    fn decision(seq: u64, p: &PairItem, who: &str, d: Decision) -> LogEntry {
        LogEntry::Decision(DecisionEntry {
            seq,
            ts: seq as f64,
            pair_id: p.id.clone(),
            run: p.run.clone(),
            prompt: p.prompt.clone(),
            a: p.a.clone(),
            b: p.b.clone(),
            origin_a: p.origin_a.clone(),
            origin_b: p.origin_b.clone(),
            a_on_left: true,
            decision: d,
            judge: None,
            annotator: who.into(),
        })
    }

    #[test]
    fn provenance_names_the_proposing_run_and_the_runs_that_trained() {
        let mine = PairItem::new(
            "online-dpo",
            "p",
            "x",
            "y",
            "online-dpo@1#a",
            "online-dpo@1#b",
        );
        let other = PairItem::new("grpo", "q", "1", "2", "grpo@3#0", "grpo@3#1");
        let entries = vec![
            decision(1, &mine, "ann", Decision::A),
            decision(2, &other, "ann", Decision::B),
            LogEntry::Trained {
                ts: 3.0,
                run: "online-dpo".into(),
                step: 4,
                decision: 1,
                pair_id: mine.id.clone(),
            },
        ];
        let prov = provenance(&entries);
        assert_eq!(prov.len(), 2);
        assert_eq!(
            (
                prov[0].decision.seq,
                prov[0].proposed_by,
                prov[0].trained_by.clone()
            ),
            (1, "online-dpo", vec!["online-dpo"])
        );
        assert_eq!((prov[1].proposed_by, prov[1].trained_by.len()), ("grpo", 0));
        assert_eq!(mine.step(), Some(1));
    }

    /// Majority folding on a fixture: 3 annotators, each pair a different outcome.
    #[test]
    fn preferences_fold_by_majority_and_count_what_they_drop() {
        let p = |n: usize| pair(n);
        let entries = vec![
            // Pair 1: A, A, B -> chosen a, 2 votes of 3.
            decision(1, &p(1), "ann", Decision::A),
            decision(2, &p(1), "bob", Decision::A),
            decision(3, &p(1), "cy", Decision::B),
            // Pair 2: A, B -> a split, dropped.
            decision(4, &p(2), "ann", Decision::A),
            decision(5, &p(2), "bob", Decision::B),
            // Pair 3: tie, tie, B -> a tie wins, dropped.
            decision(6, &p(3), "ann", Decision::Tie),
            decision(7, &p(3), "bob", Decision::Tie),
            decision(8, &p(3), "cy", Decision::B),
            // Pair 4: B, with a skip that does not vote -> chosen b, 1 of 1.
            decision(9, &p(4), "ann", Decision::B),
            decision(10, &p(4), "bob", Decision::Skip),
        ];
        // Ann changes her mind on pair 2: B, B -> chosen b.
        let (rows, stats) = fold_to_preferences(&entries);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].chosen.as_str(), rows[0].votes, rows[0].voters),
            ("2", 2, 3)
        );
        assert_eq!(
            (rows[1].chosen.as_str(), rows[1].votes, rows[1].voters),
            ("6", 1, 1)
        );
        assert_eq!((stats.ties, stats.splits), (1, 1));
        let mut more = entries.clone();
        more.push(decision(11, &p(2), "ann", Decision::B));
        let (rows, stats) = fold_to_preferences(&more);
        assert_eq!(rows.len(), 3);
        assert_eq!(stats.splits, 0);
        assert_eq!(majority(&[Decision::Tie, Decision::BothBad]).0, None);
        assert_eq!(majority(&[Decision::BothBad]).0, Some(Decision::Tie));
    }
}
