//! Pairs: side-by-side A/B labelling. The prompt on top with the run that proposed the pair,
//! two answers below in an order randomised per pair, which checkpoint wrote which hidden.
//! The queue shows the selected run's pairs (`f` switches to every run's). Each decision is
//! appended to the label log and synced to disk before the pane confirms it; undo appends a
//! retraction and brings the pair back. After each change the log is folded into TRL
//! preference JSONL for RM and DPO runs.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use crate::engine::agreement::Report;
use crate::engine::judge::{JudgeStats, Judgement, Verdict};
use crate::engine::label_store::{LEASE, LOG_FILE, LabelStore, PREFERENCES_FILE, StoreError};
use crate::engine::labels::{
    Counters, Decision, FoldStats, LogEntry, PairItem, PairQueue, ProposedPair, counters,
    fold_to_preferences, pending_pairs, read_pairs_jsonl, standing_decisions,
};
use crate::tui::app::{EventState, PaneId};
use crate::tui::keymap::Action;
use crate::tui::panes::pane_block;
use crate::tui::text::wrap;
use crate::tui::theme;

/// Ready-made pairs in the labels folder.
pub const PAIRS_FILE: &str = "pairs.jsonl";
/// Prompt lines shown above the answers before it is cut (answers matter more).
const PROMPT_MAX_LINES: usize = 4;

/// The labelling session: the store, the queue, the pair this annotator holds and the last
/// confirmation.
pub struct PairsState {
    store: Result<LabelStore, String>,
    queue: PairQueue,
    /// Pairs not to offer this annotator: decided by them, or with all their labels.
    done: HashSet<String>,
    /// Pairs other annotators hold now (see [`LabelStore::lease`]).
    held: HashSet<String>,
    /// The pair shown, held for this annotator, and when the hold was last taken or renewed.
    current_id: Option<String>,
    held_since: Option<Instant>,
    /// The run selected in the workbench: its pairs are shown unless `all_runs`.
    selected_run: Option<String>,
    /// Show every run's pairs (`f`).
    pub all_runs: bool,
    seed: u64,
    /// Shown as `labels/preferences.jsonl`: short, and free of temp-dir noise in tests.
    prefs_label: String,
    counters: Counters,
    /// Preference rows the last export wrote, and what folding by majority dropped.
    rows: usize,
    fold: FoldStats,
    agreement: Report,
    /// This annotator's newest thumbs per sample origin.
    ratings: HashMap<String, bool>,
    /// The last outcome, e.g. "Saved: A better".
    pub message: Option<(bool, String)>,
    pub scroll: u16,
    max_scroll: Cell<u16>,
    startup_note: Option<String>,
    /// The AI judge's verdict (or its failure) per pair id, for pairs runs proposed.
    judged: HashMap<String, JudgeView>,
    judge_stats: JudgeStats,
    audit: Audit,
}

/// What the judge said about a pair, as shown beside it.
#[derive(Clone, Debug, PartialEq)]
enum JudgeView {
    Verdict(Judgement),
    Failed(String),
}

/// Person-vs-judge agreement over standing decisions made with a judge verdict in view.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Audit {
    pub audited: usize,
    pub agreed: usize,
}

impl Audit {
    fn from_entries(entries: &[LogEntry]) -> Self {
        let mut audit = Audit::default();
        for d in standing_decisions(entries) {
            let Some(judge) = d.judge else { continue };
            let person = match d.decision {
                Decision::A => Verdict::A,
                Decision::B => Verdict::B,
                Decision::Tie | Decision::BothBad => Verdict::Tie,
                Decision::Skip => continue,
            };
            audit.audited += 1;
            audit.agreed += usize::from(person == judge);
        }
        audit
    }

    pub fn agreement(&self) -> Option<f64> {
        (self.audited > 0).then(|| self.agreed as f64 / self.audited as f64)
    }
}

impl PairsState {
    /// Opens the label store in `dir` as `annotator`, queues the ready-made pairs of
    /// `dir/pairs.jsonl` and the pairs the runs under `runs_root` proposed that this annotator
    /// has not labelled. A store that cannot be opened disables labelling with the reason
    /// shown, rather than failing the workbench.
    pub fn open(dir: &Path, runs_root: &Path, seed: u64, annotator: &str) -> Self {
        let store = LabelStore::open(dir, annotator).map_err(|e| format!("cannot open {e}"));
        let done = store
            .as_ref()
            .map(LabelStore::done_for_me)
            .unwrap_or_default();
        let mut notes = Vec::new();
        if let Ok(st) = &store {
            let (imported, skipped) = st.imported();
            if imported > 0 {
                notes.push(format!(
                    "imported {imported} entries of {} into the label store",
                    dir.join(LOG_FILE).display()
                ));
            }
            if skipped > 0 {
                notes.push(format!(
                    "{}: skipped {skipped} unreadable line(s) (a write cut short by a crash)",
                    dir.join(LOG_FILE).display()
                ));
            }
        }
        let mut queue = PairQueue::new();
        let pairs_path = dir.join(PAIRS_FILE);
        if pairs_path.is_file() {
            match read_pairs_jsonl(&pairs_path) {
                Ok((pairs, bad)) => {
                    for p in pairs {
                        queue.push(p, &done);
                    }
                    if bad > 0 {
                        notes.push(format!(
                            "{}: skipped {bad} bad line(s)",
                            pairs_path.display()
                        ));
                    }
                }
                Err(e) => notes.push(format!("cannot read {}: {e}", pairs_path.display())),
            }
        }
        if let Err(e) = &store {
            notes.push(e.clone());
        }
        // Pairs live runs proposed (each run's persisted queue), not yet labelled.
        let proposed = match pending_pairs(runs_root, &done) {
            Ok(p) => p,
            Err(e) => {
                notes.push(format!("cannot read the runs' pairs.jsonl: {e}"));
                Vec::new()
            }
        };
        let dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut state = Self {
            store,
            queue,
            done,
            held: HashSet::new(),
            current_id: None,
            held_since: None,
            selected_run: None,
            all_runs: false,
            seed,
            prefs_label: format!("{dir_name}/{PREFERENCES_FILE}"),
            counters: Counters::default(),
            rows: 0,
            fold: FoldStats::default(),
            agreement: Report::default(),
            ratings: HashMap::new(),
            message: None,
            scroll: 0,
            max_scroll: Cell::new(0),
            startup_note: (!notes.is_empty()).then(|| notes.join("; ")),
            judged: HashMap::new(),
            judge_stats: JudgeStats::default(),
            audit: Audit::default(),
        };
        state.recount();
        state.add_proposed(proposed);
        state
    }

    /// Reads what other labellers and runs added (another `rlft label`, another workbench),
    /// drops pairs they finished and renews this annotator's hold on the pair shown. Cheap:
    /// the workbench calls it about once a second.
    pub fn sync(&mut self) -> bool {
        let Ok(store) = &mut self.store else {
            return false;
        };
        let changed = match store.refresh() {
            Ok(c) => c,
            Err(e) => {
                self.message = Some((false, format!("Reading the label store failed: {e}")));
                return true;
            }
        };
        self.held = store.held_by_others().unwrap_or_default();
        if changed {
            self.recount();
        }
        let before = self.current_id.clone();
        // Renew the hold on the pair shown halfway through it (a write, so not every look);
        // if someone else took the pair meanwhile, give it up.
        let due = self.held_since.is_none_or(|t| t.elapsed() >= LEASE / 2);
        if due
            && let Some(id) = self.current_id.clone()
            && let Ok(store) = &mut self.store
        {
            if matches!(store.lease(&id), Ok(true)) {
                self.held_since = Some(Instant::now());
            } else {
                self.current_id = None;
            }
        }
        self.advance();
        changed || before != self.current_id
    }

    /// Recomputes what follows from the log: pairs done, counters, agreement, audit.
    fn recount(&mut self) {
        let Ok(store) = &self.store else { return };
        self.done = store.done_for_me();
        let entries = store.entries();
        self.counters = counters(entries);
        let (rows, fold) = fold_to_preferences(entries);
        self.rows = rows.len();
        self.fold = fold;
        self.agreement = Report::from_entries(entries);
        self.audit = Audit::from_entries(entries);
        let me = store.annotator();
        self.ratings = entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::Rating(r) if r.annotator == me => Some((r.origin.clone(), r.label)),
                _ => None,
            })
            .collect();
        let done = &self.done;
        self.queue.retain(|p| !done.contains(&p.id));
    }

    /// Makes the first pair of the shown queue that nobody else holds the current one, and
    /// holds it for this annotator. Keeps the current pair while it is still shown.
    fn advance(&mut self) {
        let filter = self.filter().map(str::to_string);
        if let Some(id) = &self.current_id
            && self
                .queue
                .get(id)
                .is_some_and(|p| filter.as_deref().is_none_or(|r| p.run == r))
        {
            return;
        }
        if let Some(old) = self.current_id.take()
            && let Ok(store) = &mut self.store
        {
            let _ = store.release(&old);
        }
        let candidates: Vec<String> = self
            .queue
            .iter_of(filter.as_deref())
            .filter(|p| !self.held.contains(&p.id))
            .map(|p| p.id.clone())
            .collect();
        for id in candidates {
            match &mut self.store {
                Ok(store) => match store.lease(&id) {
                    Ok(true) => {
                        self.current_id = Some(id);
                        self.held_since = Some(Instant::now());
                        return;
                    }
                    Ok(false) => {
                        self.held.insert(id);
                    }
                    Err(e) => {
                        // Show it anyway: a failed hold only risks a second label.
                        self.message = Some((false, format!("Could not hold the pair: {e}")));
                        self.current_id = Some(id);
                        return;
                    }
                },
                Err(_) => {
                    self.current_id = Some(id);
                    return;
                }
            }
        }
    }

    /// Records this annotator's thumbs up or down on one sample (synced before it returns),
    /// then rewrites the exports.
    pub fn rate(
        &mut self,
        run: &str,
        sample: &crate::engine::events::SampleRecord,
        origin: &str,
        good: bool,
    ) -> Result<(), String> {
        let store = self.store.as_mut().map_err(|e| e.clone())?;
        store
            .rate(run, &sample.prompt, &sample.completion, origin, good)
            .map_err(|e| e.to_string())?;
        self.after_change();
        Ok(())
    }

    /// This annotator's thumbs by sample origin.
    pub fn ratings(&self) -> &HashMap<String, bool> {
        &self.ratings
    }

    /// How labels fold and how annotators agree, for the header.
    pub fn agreement(&self) -> &Report {
        &self.agreement
    }

    /// Queues pairs a run proposed, keeping the judge's verdict to show beside each.
    pub fn add_proposed(&mut self, pairs: Vec<ProposedPair>) {
        for p in pairs {
            let view = match (p.judge, p.judge_error) {
                (Some(j), _) => Some(JudgeView::Verdict(j)),
                (None, Some(e)) => Some(JudgeView::Failed(e)),
                (None, None) => None,
            };
            if let Some(view) = view
                && !self.judged.contains_key(&p.pair.id)
            {
                match &view {
                    JudgeView::Verdict(j) => self.judge_stats.add(j),
                    JudgeView::Failed(_) => self.judge_stats.failed += 1,
                }
                self.judged.insert(p.pair.id.clone(), view);
            }
            self.queue.push(p.pair, &self.done);
        }
        if self.current_id.is_none() {
            self.advance();
        }
    }

    /// The judge's verdict on the current pair, if a judge saw it.
    fn current_judgement(&self) -> Option<&Judgement> {
        match self.judged.get(&self.current()?.id)? {
            JudgeView::Verdict(j) => Some(j),
            JudgeView::Failed(_) => None,
        }
    }

    pub fn audit(&self) -> Audit {
        self.audit
    }

    pub fn judge_stats(&self) -> JudgeStats {
        self.judge_stats
    }

    /// Problems met while opening, for the Log pane.
    pub fn startup_note(&self) -> Option<String> {
        self.startup_note.clone()
    }

    /// Follows the workbench's selected run: its pairs are the ones shown.
    pub fn select_run(&mut self, run: Option<&str>) {
        if self.selected_run.as_deref() != run {
            self.selected_run = run.map(str::to_string);
            self.scroll = 0;
            self.advance();
        }
    }

    /// The run whose pairs are shown, or `None` for every run's.
    pub fn filter(&self) -> Option<&str> {
        if self.all_runs {
            None
        } else {
            self.selected_run.as_deref()
        }
    }

    /// The pair shown: held for this annotator, in the shown queue.
    pub fn current(&self) -> Option<&PairItem> {
        self.queue.get(self.current_id.as_deref()?)
    }

    /// Pairs waiting in the shown queue.
    pub fn queued(&self) -> usize {
        self.queue.len_of(self.filter())
    }

    /// Pairs waiting from every run.
    pub fn queued_all(&self) -> usize {
        self.queue.len()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether the current pair shows its `a` answer on the left.
    pub fn a_on_left(&self) -> bool {
        self.current().is_none_or(|p| p.a_on_left(self.seed))
    }

    /// Applies a Pairs key.
    pub fn handle(&mut self, action: Action) -> EventState {
        match action {
            Action::PreferLeft => self.decide(Side::Left),
            Action::PreferRight => self.decide(Side::Right),
            Action::Tie => self.decide(Side::Tie),
            Action::BothBad => self.decide(Side::BothBad),
            Action::Skip => self.decide(Side::Skip),
            Action::Undo => self.undo(),
            Action::AcceptJudge => self.accept_judge(),
            Action::ToggleRunFilter => {
                self.all_runs = !self.all_runs;
                self.scroll = 0;
                self.advance();
                self.message = Some((
                    true,
                    match self.filter() {
                        None => format!("Pairs from every run: {} waiting.", self.queued()),
                        Some(run) => format!("Pairs from {run}: {} waiting.", self.queued()),
                    },
                ));
            }
            Action::Up => self.scroll = self.scroll.saturating_sub(1),
            Action::Down => self.scroll = (self.scroll + 1).min(self.max_scroll.get()),
            _ => return EventState::NotConsumed,
        }
        EventState::Consumed
    }

    /// Takes the judge's verdict as the person's decision (it is logged as theirs, with the
    /// judge's verdict beside it, so it counts as agreement).
    fn accept_judge(&mut self) {
        let Some(j) = self.current_judgement().copied() else {
            self.message = Some((false, "No judge verdict for this pair.".into()));
            return;
        };
        let a_left = self.a_on_left();
        let side = match j.verdict {
            Verdict::A if a_left => Side::Left,
            Verdict::A => Side::Right,
            Verdict::B if a_left => Side::Right,
            Verdict::B => Side::Left,
            Verdict::Tie => Side::Tie,
        };
        self.decide(side);
    }

    fn decide(&mut self, side: Side) {
        let Some(pair) = self.current().cloned() else {
            self.message = Some((false, "No pair to label.".into()));
            return;
        };
        let a_left = pair.a_on_left(self.seed);
        let decision = match side {
            Side::Left if a_left => Decision::A,
            Side::Left => Decision::B,
            Side::Right if a_left => Decision::B,
            Side::Right => Decision::A,
            Side::Tie => Decision::Tie,
            Side::BothBad => Decision::BothBad,
            Side::Skip => Decision::Skip,
        };
        let store = match &mut self.store {
            Ok(st) => st,
            Err(e) => {
                self.message = Some((false, format!("Labelling is off: {e}")));
                return;
            }
        };
        // Only once the decision is synced to disk does the screen confirm and move on.
        let judge = match self.judged.get(&pair.id) {
            Some(JudgeView::Verdict(j)) => Some(j.verdict),
            _ => None,
        };
        match store.record(&pair, a_left, decision, judge) {
            Ok(_) => {
                let _ = store.release(&pair.id);
                self.queue.remove(&pair.id);
                self.current_id = None;
                self.scroll = 0;
                let said = match side {
                    Side::Left => "A better",
                    Side::Right => "B better",
                    Side::Tie => "tie",
                    Side::BothBad => "both bad",
                    Side::Skip => "skipped",
                };
                self.message = Some((true, format!("Saved: {said}. u undoes it.")));
                self.after_change();
            }
            Err(e @ StoreError::Full { .. }) => {
                // Others labelled it first (their labels reached `labels_per_pair`).
                self.queue.remove(&pair.id);
                self.current_id = None;
                self.message = Some((false, format!("Not saved: {e}. Next pair.")));
                self.after_change();
            }
            Err(e) => {
                self.message = Some((false, format!("Not saved ({e}); the pair stays.")));
            }
        }
    }

    fn undo(&mut self) {
        let store = match &mut self.store {
            Ok(st) => st,
            Err(e) => {
                self.message = Some((false, format!("Labelling is off: {e}")));
                return;
            }
        };
        match store.undo() {
            Ok(Some(entry)) => {
                // The pair comes back first, held for this annotator again.
                let _ = store.lease(&entry.pair_id);
                if let Some(old) = self.current_id.take() {
                    let _ = store.release(&old);
                }
                self.queue.push_front(entry.pair());
                self.current_id = Some(entry.pair_id.clone());
                self.held_since = Some(Instant::now());
                self.scroll = 0;
                self.message = Some((
                    true,
                    format!(
                        "Undone: your {} retracted; the pair is back.",
                        entry.decision.describe()
                    ),
                ));
                self.after_change();
            }
            Ok(None) => self.message = Some((false, "Nothing of yours to undo.".into())),
            Err(e) => self.message = Some((false, format!("Undo not saved ({e})."))),
        }
    }

    /// Refreshes what follows from the log and rewrites `labels.jsonl` and the preference
    /// file from the store, then shows the next pair.
    fn after_change(&mut self) {
        self.recount();
        if let Ok(store) = &mut self.store
            && let Err(e) = store.export()
        {
            self.message = Some((false, format!("Label saved, but the export failed: {e}")));
        }
        self.advance();
    }
}

/// A decision as the labeller sees it: by screen side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Left,
    Right,
    Tie,
    BothBad,
    Skip,
}

/// What the Pairs pane draws.
pub struct PairsView<'a> {
    pub state: &'a PairsState,
    pub focused: bool,
}

fn answer_block(label: &'static str) -> Block<'static> {
    Block::bordered()
        .border_style(theme::border())
        .title(Span::styled(format!(" {label} "), theme::title()))
}

/// Draws the Pairs pane.
pub fn render(frame: &mut Frame, area: Rect, view: &PairsView) {
    let st = view.state;
    let c = st.counters;
    // Which queue is shown: the selected run's, with the rest counted, or every run's.
    let queue = match st.filter() {
        Some(run) if st.queued_all() > st.queued() => format!(
            "{run}: {} queued ({} in all runs)",
            st.queued(),
            st.queued_all()
        ),
        Some(run) => format!("{run}: {} queued", st.queued()),
        None => format!("all runs: {} queued", st.queued()),
    };
    let mut counts = format!("{queue} · labeled {} · skipped {}", c.labeled, c.skipped);
    // Position bias, once there is something to measure.
    if let Some(p) = c.left_chosen_pct() {
        counts.push_str(&format!(" · picked left {p:.0}%"));
    }
    // Agreement between annotators once two labelled the same pairs, and the judge audit
    // once a judge is in the loop.
    let js = st.judge_stats;
    let mut audit_parts = Vec::new();
    if let Some(a) = st.agreement.summary() {
        audit_parts.push(a);
    }
    if js.judged + js.failed > 0 || st.audit.audited > 0 {
        let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.0}%", 100.0 * v));
        let mut text = format!(
            "judge vs people: agree {}/{} ({}) · consistent {} · 1st slot {}",
            st.audit.agreed,
            st.audit.audited,
            pct(st.audit.agreement()),
            pct(js.consistency()),
            pct(js.first_position_rate()),
        );
        if js.failed > 0 {
            text.push_str(&format!(" · {} failed", js.failed));
        }
        audit_parts.push(text);
    }
    let audit_line =
        (!audit_parts.is_empty()).then(|| Line::styled(audit_parts.join(" · "), theme::dim()));
    let rows = if st.rows == 1 { "row" } else { "rows" };
    let mut bottom = format!(" {} preference {rows}", st.rows);
    let dropped: Vec<String> = [(st.fold.ties, "tie"), (st.fold.splits, "split")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
        .collect();
    if !dropped.is_empty() {
        bottom.push_str(&format!(" ({} dropped)", dropped.join(", ")));
    }
    bottom.push_str(&format!(" → {} ", st.prefs_label));
    let block = pane_block(PaneId::Pairs, &counts, view.focused)
        .title_bottom(Line::styled(bottom, theme::dim()));
    let inner = block.inner(area);
    frame.render_widget(block, area);

    let [msg_area, audit_area, body] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::from(audit_line.is_some())),
        Constraint::Fill(1),
    ])
    .areas(inner);
    if let Some(line) = audit_line {
        frame.render_widget(line, audit_area);
    }
    if let Some((ok, text)) = &st.message {
        let style = if *ok { theme::ok() } else { theme::warning() };
        frame.render_widget(Line::styled(text.clone(), style), msg_area);
    } else if st.current().is_some() {
        frame.render_widget(
            Line::styled(
                "Which answer is better? Answers are shown in random order, sources hidden.",
                theme::dim(),
            ),
            msg_area,
        );
    }
    let Some(pair) = st.current() else {
        let others = st.queued_all() - st.queued();
        let why = match (&st.store, st.filter()) {
            (Err(e), _) => format!("Labelling is off: {e}"),
            (Ok(_), Some(run)) if others > 0 => format!(
                "No pairs from {run}. {others} wait from other runs: f shows every run's pairs."
            ),
            (Ok(_), _) => "No pairs waiting. Online DPO runs with labeler = \"human\" or \
                           \"both\" propose pairs, as do runs with [pairs] per_step > 0 (from \
                           their samples), and pairs.jsonl in the labels folder."
                .to_string(),
        };
        frame.render_widget(
            Paragraph::new(why)
                .style(theme::dim())
                .wrap(Wrap { trim: true }),
            body,
        );
        return;
    };
    let prompt_w = body.width.saturating_sub(8).max(8) as usize;
    let mut prompt_lines = wrap(&pair.prompt, prompt_w);
    if prompt_lines.len() > PROMPT_MAX_LINES {
        prompt_lines.truncate(PROMPT_MAX_LINES);
        if let Some(l) = prompt_lines.last_mut() {
            l.push_str(" …");
        }
    }
    let judge_line = st.judged.get(&pair.id).map(|view| {
        let a_left = pair.a_on_left(st.seed);
        match view {
            JudgeView::Verdict(j) => {
                let said = match (j.verdict, a_left) {
                    (Verdict::A, true) | (Verdict::B, false) => "A better",
                    (Verdict::A, false) | (Verdict::B, true) => "B better",
                    (Verdict::Tie, _) if j.consistent => "tie",
                    (Verdict::Tie, _) => "tie (the two orders disagreed)",
                };
                let p = j
                    .p_a
                    .map(|p| {
                        let p_left = if a_left { p } else { 1.0 - p };
                        format!(", P(A) {p_left:.2}")
                    })
                    .unwrap_or_default();
                Line::from(vec![
                    Span::styled("AI judge: ", theme::dim()),
                    Span::styled(format!("{said}{p}"), theme::title()),
                    Span::styled(" · g accepts, a/b/t/x override", theme::dim()),
                ])
            }
            JudgeView::Failed(e) => Line::from(vec![
                Span::styled("AI judge failed: ", theme::warning()),
                Span::styled(e.clone(), theme::dim()),
            ]),
        }
    });
    let [prompt_area, answers, judge_area] = Layout::vertical([
        Constraint::Length(prompt_lines.len() as u16 + 1),
        Constraint::Fill(1),
        Constraint::Length(u16::from(judge_line.is_some())),
    ])
    .areas(body);
    if let Some(line) = judge_line {
        frame.render_widget(Paragraph::new(line), judge_area);
    }
    let mut prompt: Vec<Line> = prompt_lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let lead = if i == 0 { "Prompt: " } else { "        " };
            Line::from(vec![Span::styled(lead, theme::dim()), Span::raw(l)])
        })
        .collect();
    // Which run proposed the pair (and, for online DPO, will train on the label).
    let from = match (pair.run.as_str(), pair.step()) {
        ("", _) => "ready-made pairs (labels/pairs.jsonl)".to_string(),
        (run, Some(step)) => format!("{run}, step {step}"),
        (run, None) => run.to_string(),
    };
    prompt.push(Line::from(vec![
        Span::styled("From:   ", theme::dim()),
        Span::styled(from, theme::dim()),
    ]));
    frame.render_widget(Paragraph::new(prompt), prompt_area);

    let (left, right) = if pair.a_on_left(st.seed) {
        (&pair.a, &pair.b)
    } else {
        (&pair.b, &pair.a)
    };
    let [la, ra] = Layout::horizontal([Constraint::Fill(1); 2]).areas(answers);
    let mut max_lines = 0;
    for (label, text, rect) in [("A", left, la), ("B", right, ra)] {
        let block = answer_block(label);
        let inner = block.inner(rect);
        let lines: Vec<Line> = wrap(text, inner.width as usize)
            .into_iter()
            .map(|l| Line::styled(l, Style::new()))
            .collect();
        max_lines = max_lines.max(lines.len() as u16);
        let scroll = st
            .scroll
            .min((lines.len() as u16).saturating_sub(inner.height));
        frame.render_widget(block, rect);
        frame.render_widget(Paragraph::new(lines).scroll((scroll, 0)), inner);
    }
    let visible = la.height.saturating_sub(2);
    st.max_scroll.set(max_lines.saturating_sub(visible));
}
