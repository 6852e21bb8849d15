//! One module per pane. Each has a pure `render(frame, area, view)` that draws from a cheap
//! borrowed view; panes with keys of their own have a state type with a `handle` method.

pub mod curves;
pub mod health;
pub mod log;
pub mod pairs;
pub mod runs;
pub mod samples;
pub mod system;

use ratatui::text::{Line, Span};
use ratatui::widgets::Block;

use crate::tui::app::PaneId;
use crate::tui::theme;

/// The border every pane has: ` N Title · subtitle `, highlighted when focused.
pub fn pane_block(pane: PaneId, subtitle: &str, focused: bool) -> Block<'static> {
    let border = if focused {
        theme::focused_border()
    } else {
        theme::border()
    };
    let mut spans = vec![
        Span::styled(format!(" {} ", pane.number()), theme::key()),
        Span::styled(pane.title().to_string(), theme::title()),
    ];
    if !subtitle.is_empty() {
        spans.push(Span::raw(format!(" · {subtitle}")));
    }
    spans.push(Span::raw(" "));
    Block::bordered()
        .border_style(border)
        .title(Line::from(spans))
}
