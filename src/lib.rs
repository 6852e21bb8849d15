pub mod engine;
pub mod tui;
