//! The label store: every decision, retraction, rating and training note of a labels folder,
//! in one SQLite database (`labels.db`) that several processes use at once: the workbench,
//! `rlft label` in other terminals, and the runs that train on the labels.
//!
//! Why SQLite and not locks around the JSONL log: several writers need unique sequence
//! numbers, a check and a write that happen together (a pair may take at most
//! `labels_per_pair` labels; a pair is offered to one annotator at a time), and durability
//! against `kill -9` and power loss. SQLite in WAL mode with `synchronous = FULL` gives all
//! three with a lock that the operating system releases when a process dies; each decision is
//! one `BEGIN IMMEDIATE` transaction, synced before it is confirmed. Hand-written file locking
//! would need the same journal and recovery, and `flock` is advisory and absent on some
//! network file systems.
//!
//! `labels.jsonl` (the log, one entry per line) and `preferences.jsonl` (TRL rows, folded by
//! majority) are written from the store after each change, so people and TRL read the same
//! files as before; an existing `labels.jsonl` is imported the first time a store opens.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::engine::judge::Verdict;
use crate::engine::labels::{
    Decision, DecisionEntry, FoldStats, LogEntry, PairItem, RatingEntry, fold_to_preferences, now,
    read_log, standing_decisions, write_log, write_preferences,
};

/// File names inside a labels folder.
pub const DB_FILE: &str = "labels.db";
pub const LOG_FILE: &str = "labels.jsonl";
pub const PREFERENCES_FILE: &str = "preferences.jsonl";
/// How long a pair offered to one annotator is kept from the others.
pub const LEASE: Duration = Duration::from_secs(120);
/// How long a writer waits for another's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("this pair already has its {want} label(s), from {by}")]
    Full { want: usize, by: String },
    #[error("{}: entry {seq} does not read back: {message}", path.display())]
    Corrupt {
        path: PathBuf,
        seq: i64,
        message: String,
    },
}

/// The annotator name used when none is given: the login name.
pub fn default_annotator() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "annotator".into())
}

/// What this process has read of the store.
#[derive(Default)]
struct Seen {
    /// Every entry read so far, in sequence order, and each one's row number.
    entries: Vec<LogEntry>,
    rows: Vec<i64>,
    last_seq: i64,
    labels_per_pair: usize,
}

impl Seen {
    /// Takes in entries read from the store (in sequence order).
    fn absorb(&mut self, fresh: Vec<(i64, LogEntry)>) -> bool {
        let changed = !fresh.is_empty();
        for (seq, e) in fresh {
            self.last_seq = self.last_seq.max(seq);
            self.rows.push(seq);
            self.entries.push(e);
        }
        changed
    }
}

/// Takes the write lock and reads in what others committed before it (that is in the store
/// whatever happens next). Returns the open transaction.
fn begin<'c>(
    conn: &'c mut Connection,
    seen: &mut Seen,
    db: &Path,
) -> Result<Transaction<'c>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|source| StoreError::Db {
            path: db.to_path_buf(),
            source,
        })?;
    let (fresh, per_pair) = read_since(&tx, seen.last_seq, db)?;
    seen.absorb(fresh);
    seen.labels_per_pair = per_pair;
    Ok(tx)
}

/// One process's handle on a labels folder's store, as one annotator.
pub struct LabelStore {
    conn: Connection,
    dir: PathBuf,
    annotator: String,
    seen: Seen,
    /// Lines of an older `labels.jsonl` imported when the store was made, and those skipped
    /// because they did not parse (a write torn by a crash).
    imported: usize,
    skipped_lines: usize,
}

impl LabelStore {
    /// Opens (creating if needed) the store of a labels folder for `annotator`.
    pub fn open(dir: &Path, annotator: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let db = dir.join(DB_FILE);
        let err = |source| StoreError::Db {
            path: db.clone(),
            source,
        };
        let mut conn = Connection::open(&db).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // WAL: readers never wait for the writer; FULL: each commit is synced (power loss).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let (imported, skipped_lines) = {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS entries (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     kind TEXT NOT NULL,
                     pair_id TEXT NOT NULL DEFAULT '',
                     annotator TEXT NOT NULL DEFAULT '',
                     body TEXT NOT NULL);
                 CREATE INDEX IF NOT EXISTS entries_pair ON entries(pair_id);
                 CREATE TABLE IF NOT EXISTS leases (
                     pair_id TEXT PRIMARY KEY,
                     annotator TEXT NOT NULL,
                     expires REAL NOT NULL);
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
            )
            .map_err(err)?;
            let counts = import_jsonl_once(&tx, &dir.join(LOG_FILE)).map_err(|e| match e {
                ImportError::Db(source) => err(source),
                ImportError::Io(source) => StoreError::Io {
                    path: dir.join(LOG_FILE),
                    source,
                },
            })?;
            tx.commit().map_err(err)?;
            counts
        };
        let mut store = Self {
            conn,
            dir: dir.to_path_buf(),
            annotator: annotator.to_string(),
            seen: Seen {
                labels_per_pair: 1,
                ..Seen::default()
            },
            imported,
            skipped_lines,
        };
        store.refresh()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn annotator(&self) -> &str {
        &self.annotator
    }

    /// Every entry read so far (call [`LabelStore::refresh`] for other processes' new ones).
    pub fn entries(&self) -> &[LogEntry] {
        &self.seen.entries
    }

    /// How many people may label one pair (agreement needs two or more).
    pub fn labels_per_pair(&self) -> usize {
        self.seen.labels_per_pair
    }

    /// Entries imported from an older `labels.jsonl`, and its lines that did not parse.
    pub fn imported(&self) -> (usize, usize) {
        (self.imported, self.skipped_lines)
    }

    /// Wraps a database error with the database's path.
    fn db_err(&self) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        let path = self.dir.join(DB_FILE);
        move |source| StoreError::Db {
            path: path.clone(),
            source,
        }
    }

    /// Reads what other processes added since the last look. Returns whether anything did.
    pub fn refresh(&mut self) -> Result<bool, StoreError> {
        let db = self.dir.join(DB_FILE);
        let (fresh, per_pair) = read_since(&self.conn, self.seen.last_seq, &db)?;
        self.seen.labels_per_pair = per_pair;
        Ok(self.seen.absorb(fresh))
    }

    /// Sets how many people may label one pair, for every process on this store.
    pub fn set_labels_per_pair(&mut self, n: usize) -> Result<(), StoreError> {
        let n = n.max(1);
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('labels_per_pair', ?1)",
                params![n.to_string()],
            )
            .map_err(self.db_err())?;
        self.seen.labels_per_pair = n;
        Ok(())
    }

    /// Records this annotator's decision on a pair, with the AI judge's verdict that was
    /// shown beside it; returns its sequence number once it is synced to disk. Refused when
    /// the pair already has `labels_per_pair` labels from other annotators (relabelling one's
    /// own decision replaces it).
    pub fn record(
        &mut self,
        pair: &PairItem,
        a_on_left: bool,
        decision: Decision,
        judge: Option<Verdict>,
    ) -> Result<u64, StoreError> {
        let entry = LogEntry::Decision(DecisionEntry {
            seq: 0,
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
            annotator: self.annotator.clone(),
        });
        let me = self.annotator.clone();
        self.write(|entries, per_pair| {
            let others: Vec<&str> = standing_decisions(entries)
                .into_iter()
                .filter(|d| d.pair_id == pair.id && d.annotator != me)
                .map(|d| d.annotator.as_str())
                .collect();
            if others.len() >= per_pair {
                return Err(StoreError::Full {
                    want: per_pair,
                    by: others.join(", "),
                });
            }
            Ok(Some(entry))
        })
        .map(|seq| seq.unwrap_or(0))
    }

    /// Retracts this annotator's newest standing decision (never another's) and returns it,
    /// or `None` when there is nothing of theirs to undo.
    pub fn undo(&mut self) -> Result<Option<DecisionEntry>, StoreError> {
        let me = self.annotator.clone();
        let mut undone = None;
        self.write(|entries, _| {
            let Some(target) = standing_decisions(entries)
                .into_iter()
                .rev()
                .find(|d| d.annotator == me)
                .cloned()
            else {
                return Ok(None);
            };
            let retract = LogEntry::Retract {
                seq: 0,
                ts: now(),
                retracts: target.seq,
                pair_id: target.pair_id.clone(),
                annotator: me.clone(),
            };
            undone = Some(target);
            Ok(Some(retract))
        })?;
        Ok(undone)
    }

    /// Records a thumbs-up or thumbs-down on one answer.
    pub fn rate(
        &mut self,
        run: &str,
        prompt: &str,
        completion: &str,
        origin: &str,
        label: bool,
    ) -> Result<u64, StoreError> {
        let entry = LogEntry::Rating(RatingEntry {
            seq: 0,
            ts: now(),
            run: run.to_string(),
            prompt: prompt.to_string(),
            completion: completion.to_string(),
            origin: origin.to_string(),
            label,
            annotator: self.annotator.clone(),
        });
        self.write(|_, _| Ok(Some(entry)))
            .map(|seq| seq.unwrap_or(0))
    }

    /// Notes that `run` trained on these decisions (sequence number, pair id) at `step`.
    pub fn note_trained(
        &mut self,
        run: &str,
        step: usize,
        decisions: &[(u64, String)],
    ) -> Result<(), StoreError> {
        for (decision, pair_id) in decisions {
            let note = LogEntry::Trained {
                ts: now(),
                run: run.to_string(),
                step,
                decision: *decision,
                pair_id: pair_id.clone(),
            };
            self.write(|_, _| Ok(Some(note)))?;
        }
        Ok(())
    }

    /// One write transaction: reads what others added (under the write lock, so `decide`
    /// sees the latest state), lets `decide` return the entry to add (or refuse), adds it and
    /// commits (synced). Returns the new entry's sequence number.
    fn write(
        &mut self,
        decide: impl FnOnce(&[LogEntry], usize) -> Result<Option<LogEntry>, StoreError>,
    ) -> Result<Option<u64>, StoreError> {
        let db = self.dir.join(DB_FILE);
        let err = |source| StoreError::Db {
            path: db.clone(),
            source,
        };
        let tx = begin(&mut self.conn, &mut self.seen, &db)?;
        let per_pair = self.seen.labels_per_pair;
        let Some(entry) = decide(&self.seen.entries, per_pair)? else {
            tx.commit().map_err(err)?;
            return Ok(None);
        };
        let seq = insert(&tx, &entry, None).map_err(err)?;
        tx.commit().map_err(err)?;
        self.seen.absorb(vec![(seq, with_seq(entry, seq))]);
        Ok(Some(seq as u64))
    }

    /// Offers a pair to this annotator: true when nobody else holds it, and then it is held
    /// for [`LEASE`] (or until released, decided or the process ends and the lease expires).
    pub fn lease(&mut self, pair_id: &str) -> Result<bool, StoreError> {
        let me = self.annotator.clone();
        let err = self.db_err();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let t = now();
        tx.execute("DELETE FROM leases WHERE expires < ?1", params![t])
            .map_err(&err)?;
        let holder: Option<String> = tx
            .query_row(
                "SELECT annotator FROM leases WHERE pair_id = ?1",
                params![pair_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        let free = holder.is_none_or(|h| h == me);
        if free {
            tx.execute(
                "INSERT OR REPLACE INTO leases(pair_id, annotator, expires) VALUES (?1, ?2, ?3)",
                params![pair_id, me, t + LEASE.as_secs_f64()],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(free)
    }

    /// Gives a held pair back to the others.
    pub fn release(&mut self, pair_id: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM leases WHERE pair_id = ?1 AND annotator = ?2",
                params![pair_id, self.annotator],
            )
            .map_err(self.db_err())?;
        Ok(())
    }

    /// Pairs other annotators hold now.
    pub fn held_by_others(&self) -> Result<HashSet<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT pair_id FROM leases WHERE annotator != ?1 AND expires >= ?2")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map(params![self.annotator, now()], |r| r.get::<_, String>(0))
            .map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    /// Pairs this annotator should not be offered: those they decided (skips included) and
    /// those that have all their labels.
    pub fn done_for_me(&self) -> HashSet<String> {
        let mut count: std::collections::HashMap<&str, usize> = Default::default();
        let mut mine = HashSet::new();
        for d in standing_decisions(&self.seen.entries) {
            if d.annotator == self.annotator {
                mine.insert(d.pair_id.clone());
            } else {
                *count.entry(&d.pair_id).or_default() += 1;
            }
        }
        mine.extend(
            count
                .into_iter()
                .filter(|(_, n)| *n >= self.seen.labels_per_pair)
                .map(|(id, _)| id.to_string()),
        );
        mine
    }

    /// Writes `labels.jsonl` and `preferences.jsonl` from the store. Exports are made under
    /// the write lock, so two processes never leave an older export over a newer one. The log
    /// only grows, so only the entries not exported yet are appended (the store remembers how
    /// far it got); it is written whole when missing. The preference file is folded anew.
    pub fn export(&mut self) -> Result<FoldStats, StoreError> {
        let db = self.dir.join(DB_FILE);
        let err = |source| StoreError::Db {
            path: db.clone(),
            source,
        };
        let tx = begin(&mut self.conn, &mut self.seen, &db)?;
        let io_err = |path: PathBuf| move |source| StoreError::Io { path, source };
        let log = self.dir.join(LOG_FILE);
        let exported: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'exported_upto'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(err)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if exported == 0 || !log.is_file() {
            write_log(&log, &self.seen.entries).map_err(io_err(log))?;
        } else {
            let from = self.seen.rows.partition_point(|r| *r <= exported);
            append_log(&log, &self.seen.entries[from..]).map_err(io_err(log))?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('exported_upto', ?1)",
            params![self.seen.last_seq.to_string()],
        )
        .map_err(err)?;
        let (prefs, stats) = fold_to_preferences(&self.seen.entries);
        let out = self.dir.join(PREFERENCES_FILE);
        write_preferences(&out, &prefs).map_err(io_err(out))?;
        tx.commit().map_err(err)?;
        Ok(stats)
    }
}

/// Appends entries to an exported log, synced.
fn append_log(path: &Path, entries: &[LogEntry]) -> io::Result<()> {
    use std::io::Write;
    if entries.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).map_err(io::Error::other)?);
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()
}

/// The store's entries after `after`, each with its sequence number, and `labels_per_pair`.
fn read_since(
    conn: &Connection,
    after: i64,
    db: &Path,
) -> Result<(Vec<(i64, LogEntry)>, usize), StoreError> {
    let err = |source| StoreError::Db {
        path: db.to_path_buf(),
        source,
    };
    let mut stmt = conn
        .prepare_cached("SELECT seq, body FROM entries WHERE seq > ?1 ORDER BY seq")
        .map_err(err)?;
    let rows = stmt
        .query_map(params![after], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(err)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, body) = row.map_err(err)?;
        let entry: LogEntry = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
            path: db.to_path_buf(),
            seq,
            message: e.to_string(),
        })?;
        out.push((seq, with_seq(entry, seq)));
    }
    let per_pair: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'labels_per_pair'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    let per_pair = per_pair.and_then(|v| v.parse().ok()).unwrap_or(1usize);
    Ok((out, per_pair.max(1)))
}

/// The entry with its sequence number set (entries are stored before their number is known).
fn with_seq(entry: LogEntry, seq: i64) -> LogEntry {
    let seq = seq as u64;
    match entry {
        LogEntry::Decision(mut d) => {
            d.seq = seq;
            LogEntry::Decision(d)
        }
        LogEntry::Retract {
            ts,
            retracts,
            pair_id,
            annotator,
            ..
        } => LogEntry::Retract {
            seq,
            ts,
            retracts,
            pair_id,
            annotator,
        },
        LogEntry::Rating(mut r) => {
            r.seq = seq;
            LogEntry::Rating(r)
        }
        trained @ LogEntry::Trained { .. } => trained,
    }
}

/// Adds one entry; `seq` keeps an imported entry's number.
fn insert(tx: &Transaction, entry: &LogEntry, seq: Option<i64>) -> rusqlite::Result<i64> {
    let (kind, pair_id, annotator) = match entry {
        LogEntry::Decision(d) => ("decision", d.pair_id.as_str(), d.annotator.as_str()),
        LogEntry::Retract {
            pair_id, annotator, ..
        } => ("retract", pair_id.as_str(), annotator.as_str()),
        LogEntry::Rating(r) => ("rating", "", r.annotator.as_str()),
        LogEntry::Trained { pair_id, .. } => ("trained", pair_id.as_str(), ""),
    };
    let body = serde_json::to_string(entry)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.execute(
        "INSERT INTO entries(seq, kind, pair_id, annotator, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![seq, kind, pair_id, annotator, body],
    )?;
    Ok(tx.last_insert_rowid())
}

enum ImportError {
    Db(rusqlite::Error),
    Io(io::Error),
}

/// The first time a store is made in a folder, the entries of its older `labels.jsonl` move
/// in with their sequence numbers. Returns (imported, unreadable lines).
fn import_jsonl_once(tx: &Transaction, log: &Path) -> Result<(usize, usize), ImportError> {
    let done: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = 'imported'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(ImportError::Db)?;
    if done.is_some() {
        return Ok((0, 0));
    }
    let mut counts = (0, 0);
    if log.is_file() {
        let text = std::fs::read(log).map_err(ImportError::Io)?;
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .collect();
        let entries = read_log(log).map_err(ImportError::Io)?;
        counts = (entries.len(), lines.len().saturating_sub(entries.len()));
        for e in &entries {
            let seq = e.seq().map(|s| s as i64);
            insert(tx, e, seq).map_err(ImportError::Db)?;
        }
    }
    tx.execute(
        "INSERT INTO meta(key, value) VALUES ('imported', ?1)",
        params![counts.0.to_string()],
    )
    .map_err(ImportError::Db)?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::labels::{Preference, counters, provenance};

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

    #[test]
    fn decisions_fold_into_trl_preferences_and_undo_retracts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = LabelStore::open(tmp.path(), "ann").unwrap();
        s.record(&pair(1), true, Decision::A, None).unwrap();
        s.record(&pair(2), false, Decision::B, None).unwrap();
        s.record(&pair(3), true, Decision::Tie, None).unwrap();
        s.record(&pair(4), true, Decision::Skip, None).unwrap();
        s.record(&pair(5), true, Decision::BothBad, None).unwrap();
        s.record(&pair(6), true, Decision::A, None).unwrap();
        let undone = s.undo().unwrap().unwrap();
        assert_eq!(undone.pair_id, pair(6).id);
        let (prefs, stats) = fold_to_preferences(s.entries());
        let row = |p: &str, c: &str, r: &str| Preference {
            prompt: p.into(),
            chosen: c.into(),
            rejected: r.into(),
            votes: 1,
            voters: 1,
        };
        assert_eq!(prefs, vec![row("1+1=", "2", "3"), row("2+1=", "4", "3")]);
        assert_eq!((stats.ties, stats.splits), (2, 0));
        let c = counters(s.entries());
        assert_eq!((c.labeled, c.skipped, c.preferences), (4, 1, 2));
        assert_eq!(c.left_chosen_pct(), Some(100.0));
        assert!(!s.done_for_me().contains(&pair(6).id));
        assert!(s.done_for_me().contains(&pair(4).id));
        // The exports: the log with its retraction, and TRL rows with their votes.
        s.export().unwrap();
        let log = std::fs::read_to_string(tmp.path().join(LOG_FILE)).unwrap();
        assert_eq!(log.lines().count(), 7);
        assert!(log.lines().last().unwrap().contains("\"kind\":\"retract\""));
        let prefs = std::fs::read_to_string(tmp.path().join(PREFERENCES_FILE)).unwrap();
        assert_eq!(
            prefs.lines().next().unwrap(),
            "{\"prompt\":\"1+1=\",\"chosen\":\"2\",\"rejected\":\"3\",\"votes\":1,\"voters\":1}"
        );
    }

    #[test]
    fn undo_takes_back_only_ones_own_decisions() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ann = LabelStore::open(tmp.path(), "ann").unwrap();
        let mut bob = LabelStore::open(tmp.path(), "bob").unwrap();
        bob.set_labels_per_pair(2).unwrap();
        ann.record(&pair(1), true, Decision::A, None).unwrap();
        bob.record(&pair(2), true, Decision::B, None).unwrap();
        // Ann's undo skips Bob's newer decision and takes back her own.
        assert_eq!(ann.undo().unwrap().unwrap().pair_id, pair(1).id);
        assert!(ann.undo().unwrap().is_none());
        bob.refresh().unwrap();
        let standing = standing_decisions(bob.entries());
        assert_eq!(standing.len(), 1);
        assert_eq!(standing[0].annotator, "bob");
    }

    #[test]
    fn a_pair_takes_at_most_labels_per_pair_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ann = LabelStore::open(tmp.path(), "ann").unwrap();
        let mut bob = LabelStore::open(tmp.path(), "bob").unwrap();
        let mut cy = LabelStore::open(tmp.path(), "cy").unwrap();
        ann.record(&pair(1), true, Decision::A, None).unwrap();
        let full = bob.record(&pair(1), true, Decision::B, None).unwrap_err();
        assert!(full.to_string().contains("ann"), "{full}");
        // Relabelling one's own decision replaces it.
        ann.record(&pair(1), true, Decision::B, None).unwrap();
        ann.set_labels_per_pair(2).unwrap();
        bob.record(&pair(1), true, Decision::B, None).unwrap();
        assert!(cy.record(&pair(1), true, Decision::A, None).is_err());
        cy.refresh().unwrap();
        assert_eq!(cy.labels_per_pair(), 2);
        assert!(cy.done_for_me().contains(&pair(1).id));
        let (prefs, _) = fold_to_preferences(cy.entries());
        assert_eq!((prefs[0].votes, prefs[0].voters), (2, 2));
    }

    #[test]
    fn a_pair_is_offered_to_one_annotator_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ann = LabelStore::open(tmp.path(), "ann").unwrap();
        let mut bob = LabelStore::open(tmp.path(), "bob").unwrap();
        // Durable and concurrent: write-ahead log, every commit synced.
        let mode: String = ann
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = ann
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
        assert!(ann.lease("p1").unwrap());
        assert!(ann.lease("p1").unwrap(), "renewing one's own lease");
        assert!(!bob.lease("p1").unwrap());
        assert!(bob.held_by_others().unwrap().contains("p1"));
        ann.release("p1").unwrap();
        assert!(bob.lease("p1").unwrap());
    }

    #[test]
    fn an_older_jsonl_log_is_imported_once_with_its_numbers_and_torn_line_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join(LOG_FILE);
        let old = LogEntry::Decision(DecisionEntry {
            seq: 7,
            ts: 1.0,
            pair_id: pair(1).id,
            run: String::new(),
            prompt: "1+1=".into(),
            a: "2".into(),
            b: "3".into(),
            origin_a: String::new(),
            origin_b: String::new(),
            a_on_left: true,
            decision: Decision::A,
            judge: None,
            annotator: String::new(),
        });
        let text = serde_json::to_string(&old).unwrap() + "\n{\"kind\":\"decision\",\"seq\":8,\"ts";
        std::fs::write(&log, text).unwrap();
        let mut s = LabelStore::open(tmp.path(), "ann").unwrap();
        assert_eq!(s.imported(), (1, 1));
        assert_eq!(s.entries()[0].seq(), Some(7));
        // New decisions number after the imported ones; a second open imports nothing.
        assert_eq!(s.record(&pair(2), true, Decision::B, None).unwrap(), 8);
        s.export().unwrap();
        let mut again = LabelStore::open(tmp.path(), "ann").unwrap();
        assert_eq!(again.imported(), (0, 0));
        assert_eq!(again.entries().len(), 2);
        // Later exports append what is new to the exported log.
        again.record(&pair(3), true, Decision::A, None).unwrap();
        again.export().unwrap();
        let exported = read_log(&log).unwrap();
        assert_eq!(exported.len(), 3);
        assert_eq!(
            exported
                .iter()
                .filter_map(LogEntry::seq)
                .collect::<Vec<_>>(),
            [7, 8, 9]
        );
    }

    #[test]
    fn ratings_and_training_notes_go_through_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = LabelStore::open(tmp.path(), "ann").unwrap();
        let up = s.rate("grpo", "1+1=", "2", "grpo@3#0", true).unwrap();
        let seq = s.record(&pair(1), true, Decision::A, None).unwrap();
        s.note_trained("run", 4, &[(seq, pair(1).id)]).unwrap();
        let other = LabelStore::open(tmp.path(), "bob").unwrap();
        match &other.entries()[0] {
            LogEntry::Rating(r) => {
                assert_eq!((r.seq, r.label, r.annotator.as_str()), (up, true, "ann"));
            }
            e => panic!("{e:?}"),
        }
        let prov = provenance(other.entries());
        assert_eq!(prov[0].trained_by, vec!["run"]);
    }
}
