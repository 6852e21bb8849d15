//! Entering and leaving the terminal's raw, alternate-screen mode, safely.
//!
//! The terminal is restored when the guard drops (normal exit or an error returned), and by a
//! panic hook when the UI thread panics. Panics on other threads (a training run, which the
//! engine catches and reports as a failed run) must not restore the terminal under a UI that
//! keeps running, nor print over it: the hook collects their message for the Log pane.

use std::io::{self, Stdout};
use std::panic::{self, PanicHookInfo};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};

use anyhow::Context;
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Panic messages from non-UI threads, waiting to be shown in the Log pane.
pub type PanicInbox = Arc<Mutex<Vec<String>>>;

/// Owns the terminal while the workbench runs.
pub struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
    previous_hook: Arc<Hook>,
    pub panics: PanicInbox,
}

fn restore() -> io::Result<()> {
    // Raw mode first: it has more side effects than the alternate screen.
    disable_raw_mode()?;
    execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show)
}

impl TerminalGuard {
    /// Installs the panic hook, then enters raw mode and the alternate screen.
    pub fn enter() -> anyhow::Result<Self> {
        let previous_hook: Arc<Hook> = Arc::new(panic::take_hook());
        let panics: PanicInbox = Arc::default();
        let ui_thread: ThreadId = thread::current().id();
        {
            let previous = previous_hook.clone();
            let inbox = panics.clone();
            panic::set_hook(Box::new(move |info| {
                if thread::current().id() == ui_thread {
                    let _ = restore();
                    previous(info);
                } else {
                    let name = thread::current().name().unwrap_or("unnamed").to_string();
                    if let Ok(mut v) = inbox.lock() {
                        v.push(format!("panic in thread {name}: {info}"));
                    }
                }
            }));
        }
        let setup = || -> anyhow::Result<Terminal<CrosstermBackend<Stdout>>> {
            enable_raw_mode().context("enabling raw mode (is this a terminal?)")?;
            execute!(io::stdout(), EnterAlternateScreen)
                .context("entering the alternate screen")?;
            Terminal::new(CrosstermBackend::new(io::stdout())).context("opening the terminal")
        };
        match setup() {
            Ok(terminal) => Ok(Self {
                terminal,
                previous_hook,
                panics,
            }),
            Err(e) => {
                let _ = restore();
                reinstall(previous_hook);
                Err(e)
            }
        }
    }

    /// Takes the panic messages collected since the last call.
    pub fn take_panics(&self) -> Vec<String> {
        self.panics
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

fn reinstall(previous: Arc<Hook>) {
    let _ = panic::take_hook();
    panic::set_hook(Box::new(move |info| previous(info)));
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = restore();
        // The hook cannot be changed while unwinding (std panics on it); the process is
        // going down with our hook, which has already restored the terminal.
        if !thread::panicking() {
            reinstall(self.previous_hook.clone());
        }
    }
}
