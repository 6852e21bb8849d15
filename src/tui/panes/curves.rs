//! Curves: the focused run's metrics as line charts. Up to four charts (a 2x2 grid when there
//! is room, else one at a time), each with the raw line faint behind TensorBoard's debiased
//! EMA, log or linear y, step or wall-time x, other runs overlaid, and a crosshair moved by
//! keys that reads out step and values. Lines are decimated per screen column keeping min and
//! max, so a frame costs the same for 100 or 100 000 points and spikes stay visible.

use std::collections::BTreeMap;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, LegendPosition, Paragraph};

use crate::engine::events::RunId;
use crate::tui::app::{EventState, PaneId};
use crate::tui::keymap::Action;
use crate::tui::panes::pane_block;
use crate::tui::series::{
    Bucket, Series, XAxis, ema_buckets, last_per_column, log_y, minmax_decimate, nearest_bucket,
};
use crate::tui::store::RunData;
use crate::tui::text::{duration, num, truncate};
use crate::tui::theme;

/// Charts per run.
pub const SLOTS: usize = 4;
/// TensorBoard's default smoothing weight.
pub const DEFAULT_SMOOTHING: f64 = 0.6;
/// One key press changes the EMA weight by this much (20 presses span the range).
const SMOOTHING_STEP: f64 = 0.05;
/// TensorBoard's slider maximum; 1.0 would freeze the line at its first value.
const MAX_SMOOTHING: f64 = 0.99;
/// Crosshair presses to cross the whole x range (Shift moves 10 at once).
const CURSOR_STEPS: f64 = 100.0;
/// Other runs drawn in one chart at most; more lines than this are unreadable in braille.
const MAX_OVERLAYS: usize = 5;
/// Inner size from which the four charts are shown as a 2x2 grid: each chart then gets at
/// least 45x9 cells, enough for axis labels and a readable line.
const GRID_MIN_WIDTH: u16 = 90;
const GRID_MIN_HEIGHT: u16 = 18;
/// Columns reserved for y-axis labels when sizing the decimation.
const Y_LABEL_COLUMNS: u16 = 8;

/// The metrics shown by default for a method, one alias list per chart (TRL names; the first
/// alias the run logs wins). Unknown methods show the run's first metrics.
pub fn default_metrics(method: &str) -> [&'static [&'static str]; SLOTS] {
    match method {
        // Held-out exact match is the number that says whether RL works; entropy collapse is
        // a Health warning, and `m` shows it here.
        // Watched runs of other engines (`rlft watch`) chart the same, by their mapped names.
        "grpo" | "ppo" | "rloo" | "online_dpo" | "trl" | "verl" | "tboard" => [
            &["reward", "objective/scores", "objective/rlhf_reward"],
            &["eval/rewards/exact_match/mean", "eval/reward"],
            &["kl", "objective/kl"],
            &["loss", "loss/policy_avg"],
        ],
        "dpo" => [
            &["rewards/margins"],
            &["rewards/accuracies"],
            &["loss"],
            &["grad_norm"],
        ],
        "rm" | "reward" => [&["accuracy"], &["margin"], &["loss"], &["grad_norm"]],
        "distill" => [
            &["loss"],
            &["eval/rewards/exact_match/mean", "eval/reward"],
            &["reward"],
            &["grad_norm"],
        ],
        "kto" => [
            &["rewards/margins"],
            &["kl"],
            &["loss"],
            &["rewards/chosen"],
        ],
        "sft" => [
            &["loss"],
            &["eval_loss"],
            &["mean_token_accuracy"],
            &["grad_norm"],
        ],
        "pretrain" => [
            &["loss"],
            &["eval_loss"],
            &["learning_rate"],
            &["grad_norm"],
        ],
        _ => [&[], &[], &[], &[]],
    }
}

/// Chart settings, shared by all runs, plus per-run metric picks.
#[derive(Clone, Debug)]
pub struct CurvesState {
    /// EMA weight in [0, 0.99]; 0 draws the raw line only.
    pub smoothing: f64,
    pub log_y: bool,
    pub x_axis: XAxis,
    pub overlay: bool,
    /// The selected chart (what `m` changes).
    pub slot: usize,
    /// Metrics the user picked, per run and chart.
    picks: BTreeMap<RunId, [Option<String>; SLOTS]>,
    /// Crosshair position in x-axis units; `None` hides it.
    pub cursor: Option<f64>,
}

impl Default for CurvesState {
    fn default() -> Self {
        Self {
            smoothing: DEFAULT_SMOOTHING,
            log_y: false,
            x_axis: XAxis::Step,
            overlay: false,
            slot: 0,
            picks: BTreeMap::new(),
            cursor: None,
        }
    }
}

impl CurvesState {
    /// The metric each chart shows for `run`: the user's pick, else the method's default (even
    /// before it has data, so the chart can say it is waiting), else the run's other metrics.
    pub fn slot_metrics(&self, run: &RunData) -> [Option<String>; SLOTS] {
        let defaults = default_metrics(&run.method);
        let picks = self.picks.get(&run.id);
        let mut out: [Option<String>; SLOTS] = Default::default();
        for (s, slot) in out.iter_mut().enumerate() {
            if let Some(p) = picks.and_then(|p| p[s].clone()) {
                *slot = Some(p);
            } else if let Some(first) = defaults[s].first() {
                let logged = defaults[s].iter().find(|a| run.metrics.contains_key(**a));
                *slot = Some(logged.unwrap_or(first).to_string());
            }
        }
        // Fill charts without a default from metrics not shown yet, in name order.
        let mut spare = run
            .metrics
            .keys()
            .filter(|k| !out.iter().flatten().any(|o| o == *k))
            .cloned()
            .collect::<Vec<_>>()
            .into_iter();
        for slot in out.iter_mut().filter(|s| s.is_none()) {
            *slot = spare.next();
        }
        out
    }

    /// Applies a Curves key.
    pub fn handle(&mut self, action: Action, run: Option<&RunData>) -> EventState {
        match action {
            Action::Up => self.slot = (self.slot + SLOTS - 1) % SLOTS,
            Action::Down => self.slot = (self.slot + 1) % SLOTS,
            Action::NextMetric | Action::PrevMetric => {
                if let Some(run) = run {
                    self.cycle_metric(run, action == Action::NextMetric);
                }
            }
            Action::SmoothMore => self.set_smoothing(self.smoothing + SMOOTHING_STEP),
            Action::SmoothLess => self.set_smoothing(self.smoothing - SMOOTHING_STEP),
            Action::ToggleLogY => self.log_y = !self.log_y,
            Action::ToggleXAxis => {
                self.x_axis = match self.x_axis {
                    XAxis::Step => XAxis::WallTime,
                    XAxis::WallTime => XAxis::Step,
                };
                // The crosshair's position means nothing on the other axis.
                self.cursor = None;
            }
            Action::ToggleOverlay => self.overlay = !self.overlay,
            Action::Left | Action::Right | Action::LeftFast | Action::RightFast => {
                let Some((x0, x1)) = run.and_then(|r| self.x_extent(r)) else {
                    return EventState::Consumed;
                };
                let unit = (x1 - x0) / CURSOR_STEPS;
                let delta = match action {
                    Action::Left => -unit,
                    Action::Right => unit,
                    Action::LeftFast => -10.0 * unit,
                    _ => 10.0 * unit,
                };
                // The first press shows the crosshair on the newest point.
                self.cursor = Some(match self.cursor {
                    None => x1,
                    Some(c) => (c + delta).clamp(x0, x1),
                });
            }
            Action::Home | Action::End => {
                if let Some((x0, x1)) = run.and_then(|r| self.x_extent(r)) {
                    self.cursor = Some(if action == Action::Home { x0 } else { x1 });
                }
            }
            Action::Escape if self.cursor.is_some() => self.cursor = None,
            _ => return EventState::NotConsumed,
        }
        EventState::Consumed
    }

    fn set_smoothing(&mut self, w: f64) {
        // Rounded so repeated steps land on 0.60, not 0.6000000001.
        self.smoothing = ((w.clamp(0.0, MAX_SMOOTHING)) * 100.0).round() / 100.0;
    }

    fn cycle_metric(&mut self, run: &RunData, forward: bool) {
        let names: Vec<&String> = run.metrics.keys().collect();
        if names.is_empty() {
            return;
        }
        let current = self.slot_metrics(run)[self.slot].clone();
        let pos = current
            .as_ref()
            .and_then(|c| names.iter().position(|n| *n == c));
        let n = names.len();
        let next = match (pos, forward) {
            (Some(p), true) => (p + 1) % n,
            (Some(p), false) => (p + n - 1) % n,
            (None, true) => 0,
            (None, false) => n - 1,
        };
        let picks = self.picks.entry(run.id.clone()).or_default();
        picks[self.slot] = Some(names[next].clone());
    }

    /// The x range covered by the run's charted metrics.
    fn x_extent(&self, run: &RunData) -> Option<(f64, f64)> {
        let mut range: Option<(f64, f64)> = None;
        for m in self.slot_metrics(run).iter().flatten() {
            if let Some(s) = run.metrics.get(m)
                && let (Some(a), Some(b)) = (s.buckets().first(), s.buckets().last())
            {
                let (a, b) = (a.x(self.x_axis), b.x(self.x_axis));
                range = Some(range.map_or((a, b), |(lo, hi)| (lo.min(a), hi.max(b))));
            }
        }
        range
    }
}

/// What the Curves pane draws: the settings, the focused run and the runs to overlay.
pub struct CurvesView<'a> {
    pub state: &'a CurvesState,
    pub run: Option<&'a RunData>,
    /// Every other run (only used when overlay is on).
    pub others: Vec<&'a RunData>,
    pub focused: bool,
}

/// Draws the Curves pane.
pub fn render(frame: &mut Frame, area: Rect, view: &CurvesView) {
    let st = view.state;
    let settings = format!(
        " EMA {:.2} · {} · x {} · overlay {} ",
        st.smoothing,
        if st.log_y { "log-y" } else { "linear" },
        match st.x_axis {
            XAxis::Step => "step",
            XAxis::WallTime => "time",
        },
        if st.overlay { "on" } else { "off" },
    );
    let name = view.run.map(|r| r.id.as_str()).unwrap_or("no run");
    let block = pane_block(PaneId::Curves, name, view.focused)
        .title_top(Line::styled(settings, theme::dim()).right_aligned());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(run) = view.run else {
        frame.render_widget(
            Paragraph::new("No run yet. Press n to start one from a config in configs/.")
                .style(theme::dim())
                .wrap(ratatui::widgets::Wrap { trim: true }),
            inner,
        );
        return;
    };
    let metrics = st.slot_metrics(run);
    let others: Vec<&RunData> = if st.overlay {
        view.others.clone()
    } else {
        Vec::new()
    };
    if inner.width >= GRID_MIN_WIDTH && inner.height >= GRID_MIN_HEIGHT {
        let rows = Layout::vertical([Constraint::Fill(1); 2]).split(inner);
        for (r, row) in rows.iter().enumerate() {
            let cols = Layout::horizontal([Constraint::Fill(1); 2]).split(*row);
            for (c, cell) in cols.iter().enumerate() {
                let slot = r * 2 + c;
                render_chart(
                    frame,
                    *cell,
                    &ChartCtx {
                        metric: metrics[slot].as_deref(),
                        slot,
                        run,
                        others: &others,
                        state: st,
                        framed: true,
                    },
                );
            }
        }
    } else {
        let [tabs, chart] =
            Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(inner);
        let mut spans = Vec::new();
        for (i, m) in metrics.iter().enumerate() {
            let label = format!(" {} ", m.as_deref().unwrap_or("-"));
            let style = if i == st.slot {
                Style::new()
                    .fg(theme::SLOT_COLORS[i])
                    .add_modifier(Modifier::REVERSED | Modifier::BOLD)
            } else {
                theme::dim()
            };
            spans.push(Span::styled(label, style));
            spans.push(Span::raw(" "));
        }
        frame.render_widget(Line::from(spans), tabs);
        render_chart(
            frame,
            chart,
            &ChartCtx {
                metric: metrics[st.slot].as_deref(),
                slot: st.slot,
                run,
                others: &others,
                state: st,
                framed: false,
            },
        );
    }
}

struct ChartCtx<'a> {
    metric: Option<&'a str>,
    slot: usize,
    run: &'a RunData,
    others: &'a [&'a RunData],
    state: &'a CurvesState,
    /// Grid charts have their own border with the metric name; the single chart does not.
    framed: bool,
}

/// One metric's line ready to draw.
struct Prepared {
    raw: Vec<(f64, f64)>,
    smooth: Vec<(f64, f64)>,
}

fn transform(v: f64, log: bool) -> Option<f64> {
    if log { log_y(v) } else { Some(v) }
}

/// Decimates a series and its EMA (one value per bucket; empty when smoothing is off).
fn prepare(
    series: &Series,
    ema: &[f64],
    st: &CurvesState,
    x0: f64,
    x1: f64,
    columns: usize,
) -> Prepared {
    let buckets = series.buckets();
    let axis = st.x_axis;
    let raw = minmax_decimate(
        buckets.iter().filter_map(|b| {
            let hi = transform(b.max, st.log_y)?;
            let lo = transform(b.min, st.log_y).unwrap_or(hi);
            Some((b.x(axis), lo, hi))
        }),
        x0,
        x1,
        columns,
    );
    let smooth = last_per_column(
        buckets
            .iter()
            .zip(ema)
            .filter_map(|(b, v)| Some((b.x(axis), transform(*v, st.log_y)?))),
        x0,
        x1,
        columns,
    );
    Prepared { raw, smooth }
}

/// The overlay line of another run: its EMA (or bucket means when smoothing is off).
fn overlay_line(
    series: &Series,
    st: &CurvesState,
    x0: f64,
    x1: f64,
    columns: usize,
) -> Vec<(f64, f64)> {
    let buckets = series.buckets();
    let values: Vec<f64> = if st.smoothing > 0.0 {
        ema_buckets(buckets, st.smoothing)
    } else {
        buckets.iter().map(Bucket::mean).collect()
    };
    last_per_column(
        buckets
            .iter()
            .zip(&values)
            .filter_map(|(b, v)| Some((b.x(st.x_axis), transform(*v, st.log_y)?))),
        x0,
        x1,
        columns,
    )
}

fn format_x(x: f64, axis: XAxis) -> String {
    match axis {
        XAxis::Step => format!("{}", x.round() as i64),
        XAxis::WallTime => duration(x),
    }
}

fn format_y(y: f64, log: bool) -> String {
    if log { num(10f64.powf(y)) } else { num(y) }
}

/// Draws one chart (or its "waiting" placeholder) with its readout line.
fn render_chart(frame: &mut Frame, area: Rect, ctx: &ChartCtx) {
    let st = ctx.state;
    let color = theme::SLOT_COLORS[ctx.slot % SLOTS];
    let selected = ctx.slot == st.slot;
    let metric = ctx.metric.unwrap_or("-");
    let series = ctx.metric.and_then(|m| ctx.run.metrics.get(m));
    let ema: Vec<f64> = match series {
        Some(s) if st.smoothing > 0.0 => ema_buckets(s.buckets(), st.smoothing),
        _ => Vec::new(),
    };
    let readout = series.map(|s| readout(s, &ema, ctx)).unwrap_or_default();
    let (block, chart_area, readout_area) = if ctx.framed {
        let title_style = if selected {
            Style::new()
                .fg(color)
                .add_modifier(Modifier::BOLD | Modifier::REVERSED)
        } else {
            Style::new().fg(color).add_modifier(Modifier::BOLD)
        };
        let block = Block::bordered()
            .border_style(theme::border())
            .title(Span::styled(format!(" {metric} "), title_style))
            .title_bottom(Line::from(truncate(
                &readout,
                area.width.saturating_sub(4) as usize,
            )));
        let inner = block.inner(area);
        (Some(block), inner, None)
    } else {
        let [c, r] = Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(area);
        (None, c, Some(r))
    };
    if let Some(b) = block {
        frame.render_widget(b, area);
    }
    if let Some(r) = readout_area {
        frame.render_widget(Line::from(truncate(&readout, r.width as usize)), r);
    }
    let Some(series) = series.filter(|s| !s.is_empty()) else {
        // Once a run logs metrics, a missing one is usually one it never logs: say why.
        let logging = !ctx.run.metrics.is_empty();
        let why = match ctx.metric {
            Some(m) if ctx.run.metrics.contains_key(m) => format!("{m}: no finite values yet"),
            Some(m) if logging && m.ends_with("kl") => format!(
                "No {m}: this run has no reference model (beta = 0), so it computes no KL. \
                 m picks another metric."
            ),
            Some(m) if logging && m.starts_with("eval") => {
                format!("waiting for {m}: logged every eval_steps steps, if the run has eval data.")
            }
            Some(m) => format!("waiting for {m}…"),
            None => "no metric (m picks one)".to_string(),
        };
        frame.render_widget(
            Paragraph::new(why)
                .style(theme::dim())
                .centered()
                .wrap(ratatui::widgets::Wrap { trim: true }),
            chart_area,
        );
        return;
    };

    let axis = st.x_axis;
    let others: Vec<(&RunData, &Series)> = ctx
        .others
        .iter()
        .filter_map(|r| Some((*r, r.metrics.get(ctx.metric?)?)))
        .filter(|(_, s)| !s.is_empty())
        .take(MAX_OVERLAYS)
        .collect();
    let ends = |s: &Series| {
        let b = s.buckets();
        (b[0].x(axis), b[b.len() - 1].x(axis))
    };
    let (mut x0, mut x1) = ends(series);
    for (_, s) in &others {
        let (a, b) = ends(s);
        x0 = x0.min(a);
        x1 = x1.max(b);
    }
    if x1 <= x0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let columns = 2 * chart_area.width.saturating_sub(Y_LABEL_COLUMNS).max(1) as usize;
    let main = prepare(series, &ema, st, x0, x1, columns);
    let overlays: Vec<(&RunData, Vec<(f64, f64)>)> = others
        .iter()
        .map(|(r, s)| (*r, overlay_line(s, st, x0, x1, columns)))
        .collect();

    let ys = main
        .raw
        .iter()
        .chain(&main.smooth)
        .chain(overlays.iter().flat_map(|(_, l)| l.iter()))
        .map(|p| p.1);
    let (mut y0, mut y1) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if y0 > y1 {
        frame.render_widget(
            Paragraph::new(format!("{metric}: nothing positive to show on a log axis"))
                .style(theme::dim())
                .centered(),
            chart_area,
        );
        return;
    }
    let pad = if y1 > y0 {
        0.05 * (y1 - y0)
    } else {
        0.1 * y0.abs().max(1.0)
    };
    // Padding never reaches values the data cannot take: a loss stays above 0, an accuracy
    // below 1.
    let (lo, hi) = (y0, y1);
    y0 -= pad;
    y1 += pad;
    if !st.log_y {
        if lo >= 0.0 && y0 < 0.0 {
            y0 = 0.0;
        }
        if lo >= 0.0 && hi <= 1.0 && y1 > 1.0 {
            y1 = 1.0;
        }
    }

    let crosshair: Vec<(f64, f64)> = st
        .cursor
        .map(|c| vec![(c.clamp(x0, x1), y0), (c.clamp(x0, x1), y1)])
        .unwrap_or_default();
    let named = !overlays.is_empty();
    let mut datasets = vec![
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(if st.smoothing > 0.0 {
                theme::raw_line()
            } else {
                Style::new().fg(color)
            })
            .data(&main.raw),
    ];
    for (i, (r, line)) in overlays.iter().enumerate() {
        datasets.push(
            Dataset::default()
                .name(truncate(&r.id, 16))
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(theme::OVERLAY_COLORS[i % theme::OVERLAY_COLORS.len()]))
                .data(line),
        );
    }
    if st.smoothing > 0.0 {
        let mut d = Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(color))
            .data(&main.smooth);
        if named {
            d = d.name(truncate(&ctx.run.id, 16));
        }
        datasets.push(d);
    }
    if !crosshair.is_empty() {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme::crosshair())
                .data(&crosshair),
        );
    }
    let xmid = 0.5 * (x0 + x1);
    let ymid = 0.5 * (y0 + y1);
    let chart = Chart::new(datasets)
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .style(theme::dim())
                .labels([format_x(x0, axis), format_x(xmid, axis), format_x(x1, axis)]),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .style(theme::dim())
                .labels([
                    format_y(y0, st.log_y),
                    format_y(ymid, st.log_y),
                    format_y(y1, st.log_y),
                ]),
        )
        .legend_position(Some(legend_corner(&main.raw, (x0, x1), (y0, y1))))
        .hidden_legend_constraints((Constraint::Ratio(2, 3), Constraint::Ratio(1, 2)));
    frame.render_widget(chart, chart_area);
}

/// Where the overlay legend covers the fewest points: the corner whose third of the chart
/// holds the least of the run's line (the top right when tied, where curves rarely start).
fn legend_corner(
    points: &[(f64, f64)],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> LegendPosition {
    let (wx, wy) = ((x1 - x0) / 3.0, (y1 - y0) / 3.0);
    let corners = [
        (LegendPosition::TopRight, true, true),
        (LegendPosition::BottomRight, true, false),
        (LegendPosition::TopLeft, false, true),
        (LegendPosition::BottomLeft, false, false),
    ];
    corners
        .into_iter()
        .min_by_key(|(_, right, top)| {
            points
                .iter()
                .filter(|(x, y)| {
                    let in_x = if *right { *x >= x1 - wx } else { *x <= x0 + wx };
                    let in_y = if *top { *y >= y1 - wy } else { *y <= y0 + wy };
                    in_x && in_y
                })
                .count()
        })
        .map_or(LegendPosition::TopRight, |(p, ..)| p)
}

/// The line under a chart: the newest value, or at the crosshair, with the EMA and overlays.
fn readout(series: &Series, ema: &[f64], ctx: &ChartCtx) -> String {
    let st = ctx.state;
    let buckets = series.buckets();
    let i = match st.cursor {
        Some(c) => nearest_bucket(buckets, c, st.x_axis),
        None => buckets.len().checked_sub(1),
    };
    let Some(i) = i else {
        return String::new();
    };
    let b = &buckets[i];
    let mut text = String::from(if st.cursor.is_some() { "⌖ " } else { "" });
    if st.x_axis == XAxis::WallTime {
        text.push_str(&format!("{} ", duration(b.wall1)));
    }
    if b.is_merged() {
        text.push_str(&format!(
            "steps {}-{}: {} [{}…{}]",
            b.step0,
            b.step1,
            num(b.mean()),
            num(b.min),
            num(b.max)
        ));
    } else {
        text.push_str(&format!("step {}: {}", b.step0, num(b.last)));
    }
    if let Some(e) = ema.get(i) {
        text.push_str(&format!(" (EMA {})", num(*e)));
    }
    if series.non_finite() > 0 {
        text.push_str(&format!(" · {} NaN/inf", series.non_finite()));
    }
    if let Some(metric) = ctx.metric {
        let x = b.x(st.x_axis);
        for r in ctx.others.iter().take(MAX_OVERLAYS) {
            if let Some(s) = r.metrics.get(metric)
                && let Some(j) = nearest_bucket(s.buckets(), x, st.x_axis)
            {
                let v = if st.smoothing > 0.0 {
                    ema_buckets(s.buckets(), st.smoothing)[j]
                } else {
                    s.buckets()[j].mean()
                };
                text.push_str(&format!(" · {} {}", truncate(&r.id, 12), num(v)));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::store::Origin;

    fn run(method: &str, metrics: &[&str], steps: usize) -> RunData {
        let mut r = RunData::new("r", method, Origin::Live, 4096);
        for s in 1..=steps {
            let values = metrics.iter().map(|m| (m.to_string(), s as f64)).collect();
            r.push_metrics(s, s as f64, &values);
        }
        r
    }

    #[test]
    fn defaults_follow_the_method_and_its_aliases() {
        let st = CurvesState::default();
        let ppo = run("ppo", &["objective/kl", "objective/scores", "loss"], 1);
        let m = st.slot_metrics(&ppo);
        assert_eq!(m[0].as_deref(), Some("objective/scores"));
        assert_eq!(m[2].as_deref(), Some("objective/kl"));
        // Not logged yet: shown as waiting under its first name.
        assert_eq!(m[1].as_deref(), Some("eval/rewards/exact_match/mean"));
        // A GRPO run's held-out score under its total's name when it has no exact match.
        let grpo = run("grpo", &["reward", "eval/reward"], 1);
        assert_eq!(st.slot_metrics(&grpo)[1].as_deref(), Some("eval/reward"));
        let dpo = run("dpo", &[], 0);
        assert_eq!(st.slot_metrics(&dpo)[0].as_deref(), Some("rewards/margins"));
        let other = run("mystery", &["b", "a"], 1);
        let m = st.slot_metrics(&other);
        assert_eq!(
            (m[0].as_deref(), m[1].as_deref(), m[2].as_deref()),
            (Some("a"), Some("b"), None)
        );
    }

    #[test]
    fn metric_keys_cycle_through_what_the_run_logs() {
        let mut st = CurvesState::default();
        let r = run("sft", &["loss", "grad_norm", "learning_rate"], 2);
        // Names in order: grad_norm, learning_rate, loss; chart 1 starts on loss.
        st.handle(Action::NextMetric, Some(&r));
        assert_eq!(st.slot_metrics(&r)[0].as_deref(), Some("grad_norm"));
        st.handle(Action::PrevMetric, Some(&r));
        st.handle(Action::PrevMetric, Some(&r));
        assert_eq!(st.slot_metrics(&r)[0].as_deref(), Some("learning_rate"));
    }

    #[test]
    fn smoothing_steps_are_clamped_and_round() {
        let mut st = CurvesState::default();
        for _ in 0..30 {
            st.handle(Action::SmoothMore, None);
        }
        assert_eq!(st.smoothing, MAX_SMOOTHING);
        for _ in 0..30 {
            st.handle(Action::SmoothLess, None);
        }
        assert_eq!(st.smoothing, 0.0);
        st.handle(Action::SmoothMore, None);
        assert_eq!(st.smoothing, 0.05);
    }

    #[test]
    fn crosshair_starts_at_the_newest_point_and_stays_in_range() {
        let mut st = CurvesState::default();
        let r = run("sft", &["loss"], 101);
        st.handle(Action::Left, Some(&r));
        assert_eq!(st.cursor, Some(101.0));
        st.handle(Action::Left, Some(&r));
        assert_eq!(st.cursor, Some(100.0));
        st.handle(Action::LeftFast, Some(&r));
        assert_eq!(st.cursor, Some(90.0));
        st.handle(Action::Home, Some(&r));
        assert_eq!(st.cursor, Some(1.0));
        st.handle(Action::Left, Some(&r));
        assert_eq!(st.cursor, Some(1.0));
        assert_eq!(st.handle(Action::Escape, Some(&r)), EventState::Consumed);
        assert_eq!(st.cursor, None);
        // Esc with no crosshair is left for others.
        assert_eq!(st.handle(Action::Escape, Some(&r)), EventState::NotConsumed);
    }

    #[test]
    fn the_legend_goes_where_the_line_is_not() {
        // A falling loss fills the top left and bottom right: the legend goes top right.
        let falling: Vec<(f64, f64)> = (0..30).map(|i| (i as f64, 30.0 - i as f64)).collect();
        assert_eq!(
            legend_corner(&falling, (0.0, 30.0), (0.0, 30.0)),
            LegendPosition::TopRight
        );
        // A rising reward fills the bottom left and top right: the legend goes bottom right.
        let rising: Vec<(f64, f64)> = (0..30).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(
            legend_corner(&rising, (0.0, 30.0), (0.0, 30.0)),
            LegendPosition::BottomRight
        );
    }
}
