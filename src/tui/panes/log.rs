//! Log: engine messages (run started, checkpoints, warnings, failures) and the workbench's
//! own notes, newest at the bottom. Engine code never prints to the terminal; this is where
//! its words go. Follows new lines unless scrolled back.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::engine::events::LogLevel;
use crate::tui::app::{LogState, PaneId};
use crate::tui::panes::pane_block;
use crate::tui::text::wrap;
use crate::tui::theme;

/// What the Log pane draws.
pub struct LogView<'a> {
    pub state: &'a LogState,
    pub focused: bool,
}

/// Draws the Log pane.
pub fn render(frame: &mut Frame, area: Rect, view: &LogView) {
    let st = view.state;
    let n = st.lines.len();
    let lines = if n == 1 {
        "1 line".to_string()
    } else {
        format!("{n} lines")
    };
    let subtitle = if st.back > 0 {
        format!("{lines} · scrolled back {} (End follows)", st.back)
    } else {
        lines
    };
    let block = pane_block(PaneId::Log, &subtitle, view.focused);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.height == 0 {
        return;
    }
    // Wrap from the newest line backwards until the pane is full.
    let newest = st.lines.len().saturating_sub(st.back);
    let mut rows: Vec<Line> = Vec::new();
    for line in st.lines.range(..newest).rev() {
        let prefix = match &line.run {
            Some(r) => format!("{r}: "),
            None => String::new(),
        };
        let tag = match line.level {
            LogLevel::Info => "",
            LogLevel::Warn => "warning: ",
            LogLevel::Error => "error: ",
        };
        let text = format!("{prefix}{tag}{}", line.text);
        let style = theme::log_level(line.level);
        let wrapped = wrap(&text, inner.width as usize);
        for (i, w) in wrapped.into_iter().enumerate().rev() {
            let span = if i == 0 && !prefix.is_empty() && w.starts_with(&prefix) {
                let rest = w[prefix.len()..].to_string();
                Line::from(vec![
                    Span::styled(prefix.clone(), theme::dim()),
                    Span::styled(rest, style),
                ])
            } else {
                Line::styled(w, style)
            };
            rows.push(span);
        }
        if rows.len() >= inner.height as usize {
            break;
        }
    }
    rows.truncate(inner.height as usize);
    rows.reverse();
    if rows.is_empty() {
        rows.push(Line::styled("Nothing logged yet.", theme::dim()));
    }
    frame.render_widget(Paragraph::new(rows), inner);
}
