//! Runs: every run of the session and of the runs folder, one row each: name, method, status,
//! step, newest value of its main metric and a sparkline of its whole history. The selected
//! row is the run the other panes show. When several live runs share the CPU (or GPU) the
//! pane says so, since each then trains slower.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap};

use crate::engine::device::DeviceChoice;
use crate::tui::app::PaneId;
use crate::tui::panes::pane_block;
use crate::tui::series::column_means;
use crate::tui::store::RunData;
use crate::tui::text::{num, sparkline, truncate};
use crate::tui::theme;

/// Fixed column widths. The name column fits `grpo-arith-12`; method fits `pretrain`;
/// status fits `finished`; step fits `1200/5000`; last fits `loss 12.35`.
const NAME_W: u16 = 14;
const METHOD_W: u16 = 8;
const STATUS_W: u16 = 8;
const STEP_W: u16 = 9;
const LAST_W: u16 = 10;
const WARN_W: u16 = 2;
/// Below this inner width the method column is dropped so the sparkline keeps some room.
const METHOD_MIN_INNER: u16 = 72;
/// The sparkline is dropped when fewer columns than this are left for it.
const SPARK_MIN_W: u16 = 6;

/// What the Runs pane draws.
pub struct RunsView<'a> {
    pub runs: &'a [RunData],
    pub selected: Option<usize>,
    pub focused: bool,
    pub device: DeviceChoice,
    pub cpu_cores: usize,
}

/// The note shown when live runs share a device, or `None` with fewer than two.
pub fn sharing_note(live: usize, device: DeviceChoice, cpu_cores: usize) -> Option<String> {
    if live < 2 {
        return None;
    }
    Some(match device {
        DeviceChoice::Wgpu => format!("{live} live runs share the GPU: each trains slower"),
        _ => format!("{live} live runs share {cpu_cores} CPU cores: each trains slower"),
    })
}

/// The selected run's best checkpoint (`checkpoints/best`), as the pane's bottom line says
/// it; TRL's `rewards/` segment is left out of the metric so the line fits the narrow pane.
fn best_note(best: &crate::engine::events::BestCheckpoint) -> String {
    format!(
        " ★ best: step {}, {} {} ",
        best.step,
        best.metric.replace("rewards/", ""),
        num(best.value)
    )
}

/// The selected run's launched job (`rlft launch`), as the pane's bottom line says it, in the
/// warning style while its state cannot be asked for.
fn job_note(job: &crate::engine::events::JobView) -> (String, ratatui::style::Style) {
    match (&job.detail, job.state.as_str()) {
        (Some(why), "unknown") => (format!(" ⚠ job state unknown: {why} "), theme::warning()),
        (_, state @ ("pending" | "running")) => (
            format!(" ⚙ job {state} · x stops it · {} ", job.describe),
            theme::ok(),
        ),
        (_, state) => (format!(" ⚙ job {state} · {} ", job.describe), theme::dim()),
    }
}

/// A metric name shortened for the `last` column.
fn short_metric(name: &str) -> String {
    let tail = name.rsplit('/').next().unwrap_or(name);
    match tail {
        "reward" | "scores" | "rlhf_reward" => "rew".into(),
        "margins" | "margin" => "mrg".into(),
        "accuracies" | "accuracy" => "acc".into(),
        "loss" => "loss".into(),
        other => other.chars().take(4).collect(),
    }
}

/// Draws the Runs pane.
pub fn render(frame: &mut Frame, area: Rect, view: &RunsView) {
    let live = view.runs.iter().filter(|r| r.is_live()).count();
    let mut subtitle = match (view.runs.len(), live) {
        (0, _) => String::new(),
        (n, 0) => format!("{n}"),
        (n, l) => format!("{n}, {l} live"),
    };
    // Rows inside the border, less the header: say when some runs are out of view.
    let rows = area.height.saturating_sub(3) as usize;
    if view.runs.len() > rows {
        subtitle.push_str(&format!(" · {rows} shown, ↑↓ scroll"));
    }
    let mut block = pane_block(PaneId::Runs, &subtitle, view.focused);
    if let Some(note) = sharing_note(live, view.device, view.cpu_cores) {
        block = block.title_bottom(Line::styled(format!(" ⚠ {note} "), theme::warning()));
    } else if let Some(r) = view.selected.and_then(|i| view.runs.get(i))
        && let Some(err) = &r.error
    {
        let text = truncate(
            &format!(" ✗ {} failed: {err} ", r.id),
            (area.width as usize).saturating_sub(2),
        );
        block = block.title_bottom(Line::styled(text, theme::error()));
    } else if let Some(r) = view.selected.and_then(|i| view.runs.get(i))
        && let Some(job) = &r.job
    {
        let (text, style) = job_note(job);
        block = block.title_bottom(Line::styled(
            truncate(&text, (area.width as usize).saturating_sub(2)),
            style,
        ));
    } else if let Some(r) = view.selected.and_then(|i| view.runs.get(i))
        && let Some(best) = &r.best
    {
        block = block.title_bottom(Line::styled(
            truncate(&best_note(best), (area.width as usize).saturating_sub(2)),
            theme::ok(),
        ));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if view.runs.is_empty() {
        frame.render_widget(
            Paragraph::new("No runs yet. Press n to start one from a config in configs/.")
                .style(theme::dim())
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }

    let with_method = inner.width >= METHOD_MIN_INNER;
    // Highlight symbol (2) + live dot (1) + the fixed columns + one space between columns.
    let fixed = 2
        + 1
        + NAME_W
        + if with_method { METHOD_W + 1 } else { 0 }
        + STATUS_W
        + STEP_W
        + LAST_W
        + WARN_W
        + 6;
    let spark_w = inner.width.saturating_sub(fixed);
    let with_spark = spark_w >= SPARK_MIN_W;

    let mut widths = vec![Constraint::Length(1), Constraint::Length(NAME_W)];
    let mut header = vec!["", "run"];
    if with_method {
        widths.push(Constraint::Length(METHOD_W));
        header.push("method");
    }
    widths.extend([
        Constraint::Length(STATUS_W),
        Constraint::Length(STEP_W),
        Constraint::Length(LAST_W),
        Constraint::Length(WARN_W),
    ]);
    header.extend(["status", "step", "last", ""]);
    if with_spark {
        widths.push(Constraint::Fill(1));
        header.push("history");
    }

    let rows = view.runs.iter().map(|r| {
        let mut cells = vec![
            if r.is_live() {
                Cell::from(Span::styled("●", theme::ok()))
            } else {
                Cell::from(" ")
            },
            Cell::from(truncate(&r.id, NAME_W as usize)),
        ];
        if with_method {
            cells.push(Cell::from(truncate(&r.method, METHOD_W as usize)));
        }
        let primary = r.primary_metric();
        let last = primary
            .and_then(|m| Some((m, r.metrics.get(m)?.last()?.1)))
            .map(|(m, v)| format!("{} {}", short_metric(m), num(v)))
            .unwrap_or_default();
        let warnings = r.health.warnings().len();
        let status = if r.is_stalled(std::time::Instant::now()) {
            Span::styled("stalled", theme::warning())
        } else {
            Span::styled(theme::status_word(r.status), theme::status(r.status))
        };
        cells.extend([
            Cell::from(status),
            Cell::from(r.progress()),
            Cell::from(last),
            if warnings > 0 {
                Cell::from(Span::styled(format!("⚠{warnings}"), theme::warning()))
            } else {
                Cell::from("")
            },
        ]);
        if with_spark {
            let values = primary
                .and_then(|m| r.metrics.get(m))
                .map(|s| column_means(s.buckets(), spark_w as usize))
                .unwrap_or_default();
            cells.push(Cell::from(Span::styled(
                sparkline(&values),
                theme::SLOT_COLORS[0],
            )));
        }
        Row::new(cells)
    });
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme::dim()))
        .column_spacing(1)
        .highlight_symbol("▸ ")
        .highlight_spacing(HighlightSpacing::Always)
        .row_highlight_style(theme::selected_row());
    let mut state = TableState::default().with_selected(view.selected);
    frame.render_stateful_widget(table, inner, &mut state);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_is_only_mentioned_for_two_or_more_live_runs() {
        assert_eq!(sharing_note(1, DeviceChoice::Cpu, 2), None);
        assert_eq!(
            sharing_note(2, DeviceChoice::Cpu, 2).as_deref(),
            Some("2 live runs share 2 CPU cores: each trains slower")
        );
        assert!(
            sharing_note(3, DeviceChoice::Wgpu, 2)
                .unwrap()
                .contains("GPU")
        );
    }

    #[test]
    fn metric_names_shorten_for_the_table() {
        assert_eq!(short_metric("reward"), "rew");
        assert_eq!(short_metric("rewards/margins"), "mrg");
        assert_eq!(short_metric("objective/scores"), "rew");
        assert_eq!(short_metric("eval_loss"), "eval");
    }
}
