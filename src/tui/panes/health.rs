//! Health: the focused run's warnings from the engine's health rules (NaN, KL, reward
//! signal, entropy, grad norm, reward hacking), each with what it means in one line, plus a
//! failure if the run failed and a tally of the other runs.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::engine::health::Severity;
use crate::tui::app::PaneId;
use crate::tui::panes::pane_block;
use crate::tui::store::RunData;
use crate::tui::text::wrap_hanging;
use crate::tui::theme;

/// Indent of the lines under a warning's title.
const INDENT: &str = "  ";

/// What the Health pane draws.
pub struct HealthView<'a> {
    pub run: Option<&'a RunData>,
    pub runs: &'a [RunData],
    pub scroll: u16,
    pub focused: bool,
}

/// `text` wrapped to `width`, the first line after `lead` (styled `lead_style`), the others
/// indented under it.
fn hanging(
    lead: &str,
    lead_style: Style,
    text: &str,
    style: Style,
    width: usize,
) -> Vec<Line<'static>> {
    let body_w = width.saturating_sub(INDENT.len()).max(8);
    let first_w = width.saturating_sub(lead.chars().count()).max(8);
    wrap_hanging(text, first_w, body_w)
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let lead = if i == 0 {
                Span::styled(lead.to_string(), lead_style)
            } else {
                Span::raw(INDENT)
            };
            Line::from(vec![lead, Span::styled(l, style)])
        })
        .collect()
}

/// `Training 1.2M of 135.4M parameters (0.88%) · LoRA r=16 alpha=32 all-linear`.
fn model_line(m: &crate::engine::events::ModelSummary) -> Line<'static> {
    let short = |n: usize| match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    };
    let kind = m
        .adapter
        .clone()
        .unwrap_or_else(|| "full fine-tuning".into());
    Line::from(vec![
        Span::styled("Training ", theme::dim()),
        Span::raw(format!(
            "{} of {} parameters ({:.2}%)",
            short(m.trainable),
            short(m.total),
            100.0 * m.trainable as f64 / m.total.max(1) as f64
        )),
        Span::styled(format!(" · {kind}"), theme::dim()),
    ])
}

/// Draws the Health pane.
pub fn render(frame: &mut Frame, area: Rect, view: &HealthView) {
    let warnings = view.run.map(|r| r.health.warnings()).unwrap_or_default();
    let subtitle = match view.run {
        None => "no run".to_string(),
        Some(r) if r.error.is_some() => format!("{} · failed", r.id),
        Some(r) if warnings.is_empty() => format!("{} · ok", r.id),
        Some(r) => format!("{} · {} warning(s)", r.id, warnings.len()),
    };
    let block = pane_block(PaneId::Health, &subtitle, view.focused);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let mut lines: Vec<Line> = Vec::new();
    let Some(run) = view.run else {
        frame.render_widget(Paragraph::new("No run yet.").style(theme::dim()), inner);
        return;
    };
    if let Some(model) = &run.model {
        lines.push(model_line(model));
    }
    if let Some(err) = &run.error {
        lines.extend(hanging(
            "✗ Run failed: ",
            theme::error(),
            err,
            Style::new(),
            width,
        ));
        lines.extend(hanging(
            INDENT,
            Style::new(),
            "The engine stopped this run; its folder keeps the metrics and checkpoints so far.",
            theme::dim(),
            width,
        ));
    }
    for w in &warnings {
        let (icon, style) = match w.severity {
            Severity::Critical => ("✗", theme::error()),
            Severity::Warning => ("⚠", theme::warning()),
        };
        let lead = format!("{icon} {} · ", w.rule.title());
        lines.extend(hanging(&lead, style, &w.detail, theme::dim(), width));
        lines.extend(hanging(
            INDENT,
            Style::new(),
            w.meaning(),
            Style::new(),
            width,
        ));
    }
    if warnings.is_empty() && run.error.is_none() {
        lines.push(Line::from(vec![
            Span::styled("✓ ", theme::ok()),
            Span::raw(format!("No warnings at step {}.", run.step)),
        ]));
        lines.extend(hanging(
            INDENT,
            Style::new(),
            "Watching: NaN/inf, KL negative or exploding, no reward signal \
             (frac_reward_zero_std), entropy collapse or spike, grad-norm spikes, reward hacking.",
            theme::dim(),
            width,
        ));
    }
    let others: Vec<String> = view
        .runs
        .iter()
        .filter(|r| r.id != run.id)
        .filter_map(|r| {
            let n = r.health.warnings().len();
            (n > 0).then(|| format!("{} ⚠{n}", r.id))
        })
        .collect();
    if !others.is_empty() {
        lines.push(Line::raw(""));
        let text = format!("{} (] shows the next run)", others.join(", "));
        lines.extend(hanging(
            "Other runs: ",
            theme::warning(),
            &text,
            theme::warning(),
            width,
        ));
    }
    let max = (lines.len() as u16).saturating_sub(inner.height);
    frame.render_widget(
        Paragraph::new(lines).scroll((view.scroll.min(max), 0)),
        inner,
    );
}
