//! Colours and styles in one place. The 16 basic ANSI colours only, so the workbench looks
//! right on any terminal theme and over SSH.

use ratatui::style::{Color, Modifier, Style};

use crate::engine::events::{LogLevel, RunStatus};

/// Border of the focused pane.
pub fn focused_border() -> Style {
    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
}

/// Border of the other panes.
pub fn border() -> Style {
    Style::new().fg(Color::DarkGray)
}

pub fn title() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

/// Secondary text: labels, units, hints.
pub fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

pub fn key() -> Style {
    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
}

pub fn selected_row() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

pub fn warning() -> Style {
    Style::new().fg(Color::Yellow)
}

pub fn error() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}

pub fn ok() -> Style {
    Style::new().fg(Color::Green)
}

/// The faint raw line drawn behind the smoothed one.
pub fn raw_line() -> Style {
    Style::new().fg(Color::DarkGray)
}

pub fn crosshair() -> Style {
    Style::new().fg(Color::Yellow)
}

/// Line colours: the focused run's charts by slot, then overlaid runs.
pub const SLOT_COLORS: [Color; 4] = [Color::Green, Color::Magenta, Color::Cyan, Color::Yellow];
pub const OVERLAY_COLORS: [Color; 5] = [
    Color::LightBlue,
    Color::LightRed,
    Color::LightYellow,
    Color::LightMagenta,
    Color::White,
];

pub fn status(s: RunStatus) -> Style {
    match s {
        RunStatus::Starting => Style::new().fg(Color::Cyan),
        RunStatus::Running => ok(),
        RunStatus::Paused => warning(),
        RunStatus::Finished => Style::new(),
        RunStatus::Stopped => dim(),
        RunStatus::Failed => error(),
    }
}

pub fn status_word(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Starting => "starting",
        RunStatus::Running => "running",
        RunStatus::Paused => "paused",
        RunStatus::Finished => "finished",
        RunStatus::Stopped => "stopped",
        RunStatus::Failed => "failed",
    }
}

pub fn log_level(l: LogLevel) -> Style {
    match l {
        LogLevel::Info => Style::new(),
        LogLevel::Warn => warning(),
        LogLevel::Error => error(),
    }
}
