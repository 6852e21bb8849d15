//! The whole screen: layout, tab line, status line, dialogs and the too-small notice.
//!
//! ```text
//! Wide (>= 140x36)                               Compact (80x24 and up)
//! ┌ Runs ─────────┐ 2 Curves │ 3 Samples │ 4 Pairs ┌ Runs ─────────────────────────┐
//! │               │┌ Curves ─────────────────────┐ └───────────────────────────────┘
//! ├ Health ───────┤│  2x2 charts                 │ 2 Curves │ 3 Samples │ ... 6 Log
//! │               ││                             │ ┌ Curves ───────────────────────┐
//! ├ Log ──────────┤│                             │ │ one chart at a time           │
//! └───────────────┘└─────────────────────────────┘ └───────────────────────────────┘
//! status line: keys of the focused pane                status line
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use crate::tui::app::{App, Modal, PaneId, QuitState};
use crate::tui::keymap::{self, BINDINGS, Scope};
use crate::tui::panes::{curves, health, log, pairs, runs, samples, system};
use crate::tui::text::truncate;
use crate::tui::theme;

/// Below this the UI shows a notice instead: the runs table's fixed columns need 60
/// columns, and 18 rows leave the compact layout's chart at least 8 rows.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 18;
/// From this size the wide layout: a 62-column sidebar (Runs, Health, Log) and a main area
/// that still fits the 2x2 chart grid.
const WIDE_MIN_WIDTH: u16 = 140;
const WIDE_MIN_HEIGHT: u16 = 36;
const SIDEBAR_WIDTH: u16 = 62;
/// Log rows in the wide sidebar: the last ten messages.
const SIDEBAR_LOG_HEIGHT: u16 = 12;
/// Runs pane rows: border, header and one row per run, within these bounds.
const RUNS_MIN_HEIGHT: u16 = 4;
const COMPACT_RUNS_MAX_HEIGHT: u16 = 7;
const WIDE_RUNS_MAX_HEIGHT: u16 = 14;

/// Which arrangement the terminal size allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutMode {
    TooSmall,
    Compact,
    Wide,
}

pub fn layout_mode(area: Rect) -> LayoutMode {
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        LayoutMode::TooSmall
    } else if area.width >= WIDE_MIN_WIDTH && area.height >= WIDE_MIN_HEIGHT {
        LayoutMode::Wide
    } else {
        LayoutMode::Compact
    }
}

/// Draws the whole screen from the app state.
pub fn render(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let mode = layout_mode(area);
    if mode == LayoutMode::TooSmall {
        render_too_small(frame, area, app);
        return;
    }
    let [body, status] = Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(area);
    let runs_rows = app.runs.len() as u16 + 3;
    match mode {
        LayoutMode::Wide => {
            let [side, main] =
                Layout::horizontal([Constraint::Length(SIDEBAR_WIDTH), Constraint::Fill(1)])
                    .areas(body);
            let [runs_area, health_area, log_area] = Layout::vertical([
                Constraint::Length(runs_rows.clamp(RUNS_MIN_HEIGHT, WIDE_RUNS_MAX_HEIGHT)),
                Constraint::Fill(1),
                Constraint::Length(SIDEBAR_LOG_HEIGHT),
            ])
            .areas(side);
            render_pane(frame, runs_area, app, PaneId::Runs);
            render_pane(frame, health_area, app, PaneId::Health);
            render_pane(frame, log_area, app, PaneId::Log);
            let [tabs, pane] =
                Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(main);
            let tab_panes = [
                PaneId::Curves,
                PaneId::Samples,
                PaneId::Pairs,
                PaneId::System,
            ];
            render_tabs(frame, tabs, app, &tab_panes, app.main_tab);
            render_pane(frame, pane, app, app.main_tab);
        }
        _ => {
            let [runs_area, tabs, pane] = Layout::vertical([
                Constraint::Length(runs_rows.clamp(RUNS_MIN_HEIGHT, COMPACT_RUNS_MAX_HEIGHT)),
                Constraint::Length(1),
                Constraint::Fill(1),
            ])
            .areas(body);
            render_pane(frame, runs_area, app, PaneId::Runs);
            // System (7) joins the tab line when shown: 80 columns have no room for it and
            // the focused run's name besides.
            let mut tab_panes = vec![
                PaneId::Curves,
                PaneId::Samples,
                PaneId::Pairs,
                PaneId::Health,
                PaneId::Log,
            ];
            if app.compact_tab == PaneId::System {
                tab_panes.push(PaneId::System);
            }
            render_tabs(frame, tabs, app, &tab_panes, app.compact_tab);
            render_pane(frame, pane, app, app.compact_tab);
        }
    }
    render_status(frame, status, app);
    render_dialogs(frame, body, app);
}

/// Draws one pane from its view.
fn render_pane(frame: &mut Frame, area: Rect, app: &App, pane: PaneId) {
    let focused = app.focus == pane;
    let run = app.focused();
    match pane {
        PaneId::Runs => runs::render(
            frame,
            area,
            &runs::RunsView {
                runs: app.runs.all(),
                selected: app.focused_run,
                focused,
                device: app.config.device,
                cpu_cores: app.config.cpu_cores,
            },
        ),
        PaneId::Curves => curves::render(
            frame,
            area,
            &curves::CurvesView {
                state: &app.curves,
                run,
                others: app
                    .runs
                    .all()
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != app.focused_run)
                    .map(|(_, r)| r)
                    .collect(),
                focused,
            },
        ),
        PaneId::Samples => samples::render(
            frame,
            area,
            &samples::SamplesView {
                state: &app.samples,
                run,
                focused,
                ratings: app.pairs.ratings(),
            },
        ),
        PaneId::Pairs => pairs::render(
            frame,
            area,
            &pairs::PairsView {
                state: &app.pairs,
                focused,
            },
        ),
        PaneId::Health => health::render(
            frame,
            area,
            &health::HealthView {
                run,
                runs: app.runs.all(),
                scroll: app.health_scroll,
                focused,
            },
        ),
        PaneId::Log => log::render(
            frame,
            area,
            &log::LogView {
                state: &app.log,
                focused,
            },
        ),
        PaneId::System => system::render(
            frame,
            area,
            &system::SystemView {
                state: &app.system,
                focused,
            },
        ),
    }
}

/// The tab line: panes that share the main area (with small badges), and the focused run.
fn render_tabs(frame: &mut Frame, area: Rect, app: &App, panes: &[PaneId], shown: PaneId) {
    let mut spans = Vec::new();
    for (i, p) in panes.iter().enumerate() {
        if i > 0 {
            spans.push(Span::styled("│", theme::dim()));
        }
        let badge = match p {
            PaneId::Pairs if app.pairs.queued() > 0 => format!(" ({})", app.pairs.queued()),
            PaneId::Health => match app.focused().map(|r| r.health.warnings().len()) {
                Some(n) if n > 0 => format!(" ⚠{n}"),
                _ => String::new(),
            },
            _ => String::new(),
        };
        let text = format!(" {} {}{badge} ", p.number(), p.title());
        let style = if *p == shown {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::new()
        };
        spans.push(Span::styled(text, style));
    }
    let tabs = Line::from(spans);
    let used = tabs.width() as u16;
    frame.render_widget(tabs, area);
    if let Some(run) = app.focused() {
        let room = area.width.saturating_sub(used + 1) as usize;
        let full = format!(
            "{} · {} · step {} ",
            run.id,
            theme::status_word(run.status),
            run.progress()
        );
        let short = format!("{} {} ", run.id, run.progress());
        let summary = if full.chars().count() <= room {
            full
        } else {
            short
        };
        if room > 10 {
            frame.render_widget(
                Line::styled(truncate(&summary, room), theme::dim()).right_aligned(),
                area,
            );
        }
    }
}

/// The bottom line: quitting progress, a message, or the focused pane's keys.
fn render_status(frame: &mut Frame, area: Rect, app: &App) {
    let line = if let QuitState::Stopping { waiting } = &app.quit {
        Line::styled(
            format!(
                "Stopping {}: finishing the step and saving a checkpoint… q again quits now",
                waiting.join(", ")
            ),
            theme::warning(),
        )
    } else if let Some(t) = &app.toast {
        Line::styled(
            t.text.clone(),
            if t.error { theme::error() } else { theme::ok() },
        )
    } else {
        // The pane's keys on the left, help and quit always visible on the right.
        let (right, global): (Vec<_>, Vec<_>) = keymap::hints(Scope::Global)
            .into_iter()
            .partition(|(_, hint)| matches!(*hint, "help" | "quit"));
        let right = hint_spans(right, usize::MAX);
        let right_w = Line::from(right.clone()).width() as u16;
        let [left_area, right_area] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(right_w)]).areas(area);
        let own = match app.focus.scope() {
            // A pane without keys of its own: the global ones only, once.
            Scope::Global => Vec::new(),
            scope => keymap::hints(scope),
        };
        let pane_hints = own.into_iter().chain(global);
        let left = hint_spans(pane_hints, left_area.width as usize);
        frame.render_widget(Line::from(left), left_area);
        frame.render_widget(Line::from(right), right_area);
        return;
    };
    frame.render_widget(line, area);
}

/// `key hint  key hint` spans for the status line: as many whole hints as fit in `width`.
fn hint_spans(
    hints: impl IntoIterator<Item = (String, &'static str)>,
    width: usize,
) -> Vec<Span<'static>> {
    let mut spans = Vec::new();
    let mut used = 0;
    for (keys, hint) in hints {
        let text = format!(" {hint}  ");
        let w = Span::raw(keys.as_str()).width() + Span::raw(text.as_str()).width();
        if used + w > width {
            break;
        }
        used += w;
        spans.push(Span::styled(keys, theme::key()));
        spans.push(Span::styled(text, theme::dim()));
    }
    spans
}

/// A box of at most `w`x`h` in the middle of `area`, cleared.
fn dialog_area(frame: &mut Frame, area: Rect, w: u16, h: u16) -> Rect {
    let [v] = Layout::vertical([Constraint::Length(h.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [r] = Layout::horizontal([Constraint::Length(w.min(area.width))])
        .flex(Flex::Center)
        .areas(v);
    frame.render_widget(Clear, r);
    r
}

fn dialog_block(title: &str) -> Block<'static> {
    Block::bordered()
        .border_style(theme::focused_border())
        .title(Span::styled(format!(" {title} "), theme::title()))
}

fn render_dialogs(frame: &mut Frame, area: Rect, app: &App) {
    if let QuitState::Stopping { waiting } = &app.quit {
        let text = vec![
            Line::raw(format!("Waiting for {} to stop.", waiting.join(", "))),
            Line::styled(
                "Each finishes its current step and saves a checkpoint.",
                theme::dim(),
            ),
            Line::styled("Press q again to quit without waiting.", theme::dim()),
        ];
        let r = dialog_area(frame, area, 64, 5);
        frame.render_widget(
            Paragraph::new(text)
                .block(dialog_block("Stopping runs"))
                .wrap(Wrap { trim: true }),
            r,
        );
    }
    match &app.modal {
        None => {}
        Some(Modal::Help { scroll }) => render_help(frame, area, *scroll),
        Some(Modal::ConfirmQuit) => {
            let live: Vec<&str> = app.runs.live().map(|r| r.id.as_str()).collect();
            let text = vec![
                Line::raw(format!(
                    "{} still training: {}.",
                    plural(live.len()),
                    live.join(", ")
                )),
                Line::raw(""),
                Line::from(vec![
                    Span::styled("y", theme::key()),
                    Span::raw(" stop them (each saves a checkpoint), then quit"),
                ]),
                Line::from(vec![
                    Span::styled("n", theme::key()),
                    Span::raw(" / "),
                    Span::styled("Esc", theme::key()),
                    Span::raw(" keep working"),
                ]),
            ];
            let r = dialog_area(frame, area, 62, 6);
            frame.render_widget(
                Paragraph::new(text)
                    .block(dialog_block("Quit rlft?"))
                    .wrap(Wrap { trim: true }),
                r,
            );
        }
        Some(Modal::ConfirmStop(run)) => render_stop_dialog(frame, area, app, run),
        Some(Modal::NewRun { configs, selected }) => {
            let mut lines: Vec<Line> = configs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let name = c
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let marker = if i == *selected { "▸ " } else { "  " };
                    let style = if i == *selected {
                        theme::selected_row()
                    } else {
                        Style::new()
                    };
                    Line::from(vec![
                        Span::styled(format!("{marker}{name:<16}"), style),
                        Span::styled(format!(" {}", c.summary), theme::dim()),
                    ])
                })
                .collect();
            // What the selected config does, from the comment it opens with.
            let width = area.width.min(70).saturating_sub(2) as usize;
            if let Some(c) = configs.get(*selected)
                && !c.description.is_empty()
            {
                lines.push(Line::raw(""));
                let mut desc = crate::tui::text::wrap(&c.description, width);
                if desc.len() > DESCRIPTION_LINES {
                    desc.truncate(DESCRIPTION_LINES);
                    if let Some(l) = desc.last_mut() {
                        l.push_str(" …");
                    }
                }
                lines.extend(desc.into_iter().map(|l| Line::styled(l, theme::dim())));
            }
            lines.push(Line::raw(""));
            lines.push(Line::from(vec![
                Span::styled("Enter", theme::key()),
                Span::raw(" start   "),
                Span::styled("↑↓", theme::key()),
                Span::raw(" choose   "),
                Span::styled("Esc", theme::key()),
                Span::raw(" cancel"),
            ]));
            let h = lines.len() as u16 + 2;
            let r = dialog_area(frame, area, 70, h);
            let folder = app
                .config
                .configs_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| app.config.configs_dir.display().to_string());
            let title = format!("Start a run from {folder}/");
            frame.render_widget(Paragraph::new(lines).block(dialog_block(&title)), r);
        }
        Some(Modal::Error { title, text }) => {
            let width = area.width.min(76).saturating_sub(2) as usize;
            let mut lines: Vec<Line> = crate::tui::text::wrap(text, width)
                .into_iter()
                .map(Line::raw)
                .collect();
            lines.push(Line::raw(""));
            lines.push(Line::styled(
                "The Log pane (6) keeps this message.",
                theme::dim(),
            ));
            lines.push(Line::from(vec![
                Span::styled("Enter", theme::key()),
                Span::raw(" / "),
                Span::styled("Esc", theme::key()),
                Span::raw(" close"),
            ]));
            let h = lines.len() as u16 + 2;
            let r = dialog_area(frame, area, 76, h);
            frame.render_widget(
                Paragraph::new(lines)
                    .block(dialog_block(title).border_style(theme::error()))
                    .wrap(Wrap { trim: false }),
                r,
            );
        }
    }
}

/// "Stop RUN?": rlft's own run checkpoints first; a launched job is stopped by its launcher.
fn render_stop_dialog(frame: &mut Frame, area: Rect, app: &App, run: &str) {
    let job = app
        .runs
        .index_of(run)
        .and_then(|i| app.runs.get(i))
        .and_then(|r| r.job.as_ref());
    let what = match job {
        Some(job) => format!(
            "This stops {}: the engine keeps what it has saved.",
            job.describe
        ),
        None => "It finishes the current step, saves a checkpoint and ends.".into(),
    };
    let text = vec![
        Line::raw(what),
        Line::raw(""),
        Line::from(vec![
            Span::styled("y", theme::key()),
            Span::raw(" stop   "),
            Span::styled("n", theme::key()),
            Span::raw(" / "),
            Span::styled("Esc", theme::key()),
            Span::raw(" cancel"),
        ]),
    ];
    // A job's description wraps to more lines.
    let r = dialog_area(frame, area, 62, if job.is_some() { 7 } else { 5 });
    frame.render_widget(
        Paragraph::new(text)
            .block(dialog_block(&format!("Stop {run}?")))
            .wrap(Wrap { trim: true }),
        r,
    );
}

/// Lines of a config's description shown in the run picker.
const DESCRIPTION_LINES: usize = 4;

fn plural(n: usize) -> String {
    if n == 1 {
        "1 run is".into()
    } else {
        format!("{n} runs are")
    }
}

/// Help lines for some scopes: a heading per scope, then `keys  what they do`.
fn help_lines(scopes: &[Scope]) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for scope in scopes {
        if !lines.is_empty() {
            lines.push(Line::raw(""));
        }
        lines.push(Line::styled(scope.title(), theme::title()));
        for b in BINDINGS.iter().filter(|b| b.scope == *scope) {
            lines.push(Line::from(vec![
                Span::styled(
                    format!("  {:<20}", keymap::keys_label(b.keys)),
                    theme::key(),
                ),
                Span::raw(b.help),
            ]));
        }
    }
    lines
}

/// The help overlay: every binding, by scope; two columns when there is room.
fn render_help(frame: &mut Frame, area: Rect, scroll: u16) {
    let w = area.width.saturating_sub(4).min(150);
    let h = area.height.saturating_sub(2);
    let r = dialog_area(frame, area, w, h);
    let block = dialog_block("Keys")
        .title_bottom(Line::styled(" ↑↓ scroll · ? or Esc closes ", theme::dim()));
    let inner = block.inner(r);
    frame.render_widget(block, r);
    if inner.width >= 120 {
        let [left, right] = Layout::horizontal([Constraint::Fill(1); 2])
            .spacing(2)
            .areas(inner);
        // Balanced so both columns fit 160x48 without scrolling.
        let l = help_lines(&[Scope::Global, Scope::Runs, Scope::Curves]);
        let rt = help_lines(&[
            Scope::Samples,
            Scope::Pairs,
            Scope::Health,
            Scope::Log,
            Scope::Dialog,
        ]);
        frame.render_widget(Paragraph::new(l).scroll((scroll, 0)), left);
        frame.render_widget(Paragraph::new(rt).scroll((scroll, 0)), right);
    } else {
        let lines = help_lines(&Scope::ALL);
        let max = (lines.len() as u16).saturating_sub(inner.height);
        frame.render_widget(Paragraph::new(lines).scroll((scroll.min(max), 0)), inner);
    }
}

/// The notice shown below the minimum size. Keys still work, so q (and y) can quit.
fn render_too_small(frame: &mut Frame, area: Rect, app: &App) {
    let mut lines = vec![
        Line::styled("Terminal too small", theme::warning()),
        Line::raw(format!(
            "{}x{}, rlft needs {MIN_WIDTH}x{MIN_HEIGHT}.",
            area.width, area.height
        )),
        Line::raw("Enlarge it, or press q to quit."),
    ];
    if app.modal == Some(Modal::ConfirmQuit) {
        lines.push(Line::styled(
            "Runs are live: y stops them and quits.",
            theme::warning(),
        ));
    }
    let h = lines.len() as u16;
    let [v] = Layout::vertical([Constraint::Length(h)])
        .flex(Flex::Center)
        .areas(area);
    frame.render_widget(
        Paragraph::new(lines).centered().wrap(Wrap { trim: true }),
        v,
    );
}
