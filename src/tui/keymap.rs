//! Every key the workbench understands, in one table. Key handling, the help overlay and the
//! status-line hints all read [`BINDINGS`], so what is documented is what works.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::tui::app::PaneId;

/// Where a binding applies: everywhere, in one pane, or in a dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Runs,
    Curves,
    Samples,
    Pairs,
    Health,
    Log,
    /// Confirmations, the run picker and the help overlay.
    Dialog,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::Global,
        Scope::Runs,
        Scope::Curves,
        Scope::Samples,
        Scope::Pairs,
        Scope::Health,
        Scope::Log,
        Scope::Dialog,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Scope::Global => "Everywhere",
            Scope::Runs => "Runs",
            Scope::Curves => "Curves",
            Scope::Samples => "Samples",
            Scope::Pairs => "Pairs",
            Scope::Health => "Health",
            Scope::Log => "Log",
            Scope::Dialog => "Dialogs",
        }
    }
}

/// What a key asks for. Panes interpret the generic moves (`Up`, `Left`, ...) in their own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    NextPane,
    PrevPane,
    Focus(PaneId),
    NextRun,
    PrevRun,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Left,
    Right,
    LeftFast,
    RightFast,
    Escape,
    Enter,
    NewRun,
    Pause,
    Resume,
    Stop,
    Save,
    NextMetric,
    PrevMetric,
    SmoothMore,
    SmoothLess,
    ToggleLogY,
    ToggleXAxis,
    ToggleOverlay,
    PreferLeft,
    PreferRight,
    Tie,
    BothBad,
    Skip,
    Undo,
    AcceptJudge,
    ToggleRunFilter,
    NextSample,
    PrevSample,
    ThumbsUp,
    ThumbsDown,
    Yes,
    No,
}

/// One key with its modifiers. Letters match by the character typed (so `M` is Shift+m) and
/// ignore Shift; other keys compare Shift too (so Shift+← differs from ←).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

impl Key {
    const fn ch(c: char) -> Self {
        Self {
            code: KeyCode::Char(c),
            mods: KeyModifiers::NONE,
        }
    }
    const fn ctrl(c: char) -> Self {
        Self {
            code: KeyCode::Char(c),
            mods: KeyModifiers::CONTROL,
        }
    }
    const fn code(code: KeyCode) -> Self {
        Self {
            code,
            mods: KeyModifiers::NONE,
        }
    }
    const fn shift(code: KeyCode) -> Self {
        Self {
            code,
            mods: KeyModifiers::SHIFT,
        }
    }

    /// Whether a terminal key event is this key.
    pub fn matches(&self, ev: &KeyEvent) -> bool {
        let relevant = match ev.code {
            // Typed characters carry their own case; BackTab always comes with Shift.
            KeyCode::Char(_) | KeyCode::BackTab => KeyModifiers::CONTROL | KeyModifiers::ALT,
            _ => KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SHIFT,
        };
        let code_eq = match (self.code, ev.code) {
            // Ctrl+letter arrives lower-case on most terminals, upper-case on some.
            (KeyCode::Char(a), KeyCode::Char(b)) if self.mods.contains(KeyModifiers::CONTROL) => {
                a.eq_ignore_ascii_case(&b)
            }
            (a, b) => a == b,
        };
        code_eq && (ev.modifiers & relevant) == (self.mods & relevant)
    }

    /// How the key is written in help and hints.
    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCode::Char(' ') => "Space".to_string(),
            KeyCode::Char(c) => c.to_string(),
            KeyCode::Left => "←".into(),
            KeyCode::Right => "→".into(),
            KeyCode::Up => "↑".into(),
            KeyCode::Down => "↓".into(),
            KeyCode::PageUp => "PgUp".into(),
            KeyCode::PageDown => "PgDn".into(),
            KeyCode::Home => "Home".into(),
            KeyCode::End => "End".into(),
            KeyCode::Enter => "Enter".into(),
            KeyCode::Esc => "Esc".into(),
            KeyCode::Tab => "Tab".into(),
            KeyCode::BackTab => "Shift+Tab".into(),
            KeyCode::Backspace => "Bksp".into(),
            other => format!("{other:?}"),
        };
        if self.mods.contains(KeyModifiers::CONTROL) {
            format!("Ctrl+{}", base.to_uppercase())
        } else if self.mods.contains(KeyModifiers::SHIFT) {
            format!("Shift+{base}")
        } else {
            base
        }
    }
}

/// One row of the key table.
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    pub scope: Scope,
    pub keys: &'static [Key],
    pub action: Action,
    /// Full wording for the help overlay.
    pub help: &'static str,
    /// One or two words for the status line; empty to leave it out there.
    pub hint: &'static str,
}

const fn b(
    scope: Scope,
    keys: &'static [Key],
    action: Action,
    help: &'static str,
    hint: &'static str,
) -> Binding {
    Binding {
        scope,
        keys,
        action,
        help,
        hint,
    }
}

use KeyCode as K;
use Scope as S;

/// The key table. Within a scope, earlier rows win; a pane's scope is tried before Global.
pub const BINDINGS: &[Binding] = &[
    // Everywhere.
    b(
        S::Global,
        &[Key::ch('?')],
        Action::Help,
        "show or hide this help",
        "help",
    ),
    b(
        S::Global,
        &[Key::ch('q'), Key::ctrl('c')],
        Action::Quit,
        "quit (asks first if runs are live; they checkpoint)",
        "quit",
    ),
    b(
        S::Global,
        &[Key::code(K::Tab)],
        Action::NextPane,
        "focus the next pane",
        "pane",
    ),
    b(
        S::Global,
        &[Key::code(K::BackTab)],
        Action::PrevPane,
        "focus the previous pane",
        "",
    ),
    b(
        S::Global,
        &[Key::ch('1')],
        Action::Focus(PaneId::Runs),
        "focus Runs",
        "",
    ),
    b(
        S::Global,
        &[Key::ch('2')],
        Action::Focus(PaneId::Curves),
        "focus Curves",
        "",
    ),
    b(
        S::Global,
        &[Key::ch('3')],
        Action::Focus(PaneId::Samples),
        "focus Samples",
        "",
    ),
    b(
        S::Global,
        &[Key::ch('4')],
        Action::Focus(PaneId::Pairs),
        "focus Pairs (labelling)",
        "",
    ),
    b(
        S::Global,
        &[Key::ch('5')],
        Action::Focus(PaneId::Health),
        "focus Health",
        "",
    ),
    b(
        S::Global,
        &[Key::ch('6')],
        Action::Focus(PaneId::Log),
        "focus Log",
        "",
    ),
    b(
        S::Global,
        &[Key::ch('7')],
        Action::Focus(PaneId::System),
        "focus System (CPU, memory, GPUs)",
        "",
    ),
    b(
        S::Global,
        &[Key::ch('n')],
        Action::NewRun,
        "start a new run from a config in configs/",
        "new",
    ),
    b(
        S::Global,
        &[Key::ch(']')],
        Action::NextRun,
        "show the next run",
        "run",
    ),
    b(
        S::Global,
        &[Key::ch('[')],
        Action::PrevRun,
        "show the previous run",
        "",
    ),
    // Runs.
    b(
        S::Runs,
        &[Key::code(K::Up), Key::ch('k')],
        Action::Up,
        "select the run above",
        "",
    ),
    b(
        S::Runs,
        &[Key::code(K::Down), Key::ch('j')],
        Action::Down,
        "select the run below",
        "select",
    ),
    b(
        S::Runs,
        &[Key::ch('p')],
        Action::Pause,
        "pause the selected run",
        "pause",
    ),
    b(
        S::Runs,
        &[Key::ch('r')],
        Action::Resume,
        "resume the selected run",
        "resume",
    ),
    b(
        S::Runs,
        &[Key::ch('x')],
        Action::Stop,
        "stop (asks): checkpoint and end; or stop its job",
        "stop",
    ),
    b(
        S::Runs,
        &[Key::ch('c')],
        Action::Save,
        "save a checkpoint of the selected run now",
        "ckpt",
    ),
    // Curves.
    b(
        S::Curves,
        &[Key::code(K::Left)],
        Action::Left,
        "move the crosshair left",
        "cursor",
    ),
    b(
        S::Curves,
        &[Key::code(K::Right)],
        Action::Right,
        "move the crosshair right",
        "",
    ),
    b(
        S::Curves,
        &[Key::shift(K::Left)],
        Action::LeftFast,
        "move the crosshair 10x left",
        "",
    ),
    b(
        S::Curves,
        &[Key::shift(K::Right)],
        Action::RightFast,
        "move the crosshair 10x right",
        "",
    ),
    b(
        S::Curves,
        &[Key::code(K::Home)],
        Action::Home,
        "crosshair to the first point",
        "",
    ),
    b(
        S::Curves,
        &[Key::code(K::End)],
        Action::End,
        "crosshair to the newest point",
        "",
    ),
    b(
        S::Curves,
        &[Key::code(K::Esc)],
        Action::Escape,
        "hide the crosshair",
        "",
    ),
    b(
        S::Curves,
        &[Key::code(K::Up), Key::ch('k')],
        Action::Up,
        "select the previous chart",
        "",
    ),
    b(
        S::Curves,
        &[Key::code(K::Down), Key::ch('j')],
        Action::Down,
        "select the next chart",
        "chart",
    ),
    b(
        S::Curves,
        &[Key::ch('m')],
        Action::NextMetric,
        "next metric in the selected chart",
        "metric",
    ),
    b(
        S::Curves,
        &[Key::ch('M')],
        Action::PrevMetric,
        "previous metric in the selected chart",
        "",
    ),
    b(
        S::Curves,
        &[Key::ch('+'), Key::ch('=')],
        Action::SmoothMore,
        "more smoothing (EMA weight +0.05)",
        "smooth",
    ),
    b(
        S::Curves,
        &[Key::ch('-')],
        Action::SmoothLess,
        "less smoothing (EMA weight -0.05)",
        "",
    ),
    b(
        S::Curves,
        &[Key::ch('l')],
        Action::ToggleLogY,
        "log / linear y axis",
        "log-y",
    ),
    b(
        S::Curves,
        &[Key::ch('w')],
        Action::ToggleXAxis,
        "x axis: step / wall time",
        "x-axis",
    ),
    b(
        S::Curves,
        &[Key::ch('o')],
        Action::ToggleOverlay,
        "overlay the same metric from other runs",
        "overlay",
    ),
    // Samples.
    b(
        S::Samples,
        &[Key::code(K::Left), Key::ch('h')],
        Action::Left,
        "previous sampled step",
        "step",
    ),
    b(
        S::Samples,
        &[Key::code(K::Right), Key::ch('l')],
        Action::Right,
        "next sampled step",
        "",
    ),
    b(
        S::Samples,
        &[Key::code(K::Home)],
        Action::Home,
        "first sampled step",
        "",
    ),
    b(
        S::Samples,
        &[Key::code(K::End)],
        Action::End,
        "newest step, and follow new ones",
        "live",
    ),
    b(
        S::Samples,
        &[Key::code(K::Up), Key::ch('k')],
        Action::Up,
        "scroll up",
        "scroll",
    ),
    b(
        S::Samples,
        &[Key::code(K::Down), Key::ch('j')],
        Action::Down,
        "scroll down",
        "",
    ),
    b(
        S::Samples,
        &[Key::ch('J')],
        Action::NextSample,
        "select the next sample (for + / -)",
        "",
    ),
    b(
        S::Samples,
        &[Key::ch('K')],
        Action::PrevSample,
        "select the previous sample",
        "",
    ),
    b(
        S::Samples,
        &[Key::ch('+')],
        Action::ThumbsUp,
        "thumbs up: the selected answer is good (KTO label)",
        "good",
    ),
    b(
        S::Samples,
        &[Key::ch('-')],
        Action::ThumbsDown,
        "thumbs down: the selected answer is bad",
        "bad",
    ),
    b(
        S::Samples,
        &[Key::code(K::PageUp)],
        Action::PageUp,
        "scroll a page up",
        "",
    ),
    b(
        S::Samples,
        &[Key::code(K::PageDown)],
        Action::PageDown,
        "scroll a page down",
        "",
    ),
    // Pairs.
    b(
        S::Pairs,
        &[Key::ch('a'), Key::code(K::Left)],
        Action::PreferLeft,
        "A (left) is better",
        "A better",
    ),
    b(
        S::Pairs,
        &[Key::ch('b'), Key::code(K::Right)],
        Action::PreferRight,
        "B (right) is better",
        "B better",
    ),
    b(
        S::Pairs,
        &[Key::ch('t'), Key::ch('=')],
        Action::Tie,
        "tie: equally good",
        "tie",
    ),
    b(
        S::Pairs,
        &[Key::ch('x')],
        Action::BothBad,
        "both are bad",
        "both bad",
    ),
    b(
        S::Pairs,
        &[Key::ch('s')],
        Action::Skip,
        "skip this pair",
        "skip",
    ),
    b(
        S::Pairs,
        &[Key::ch('g')],
        Action::AcceptJudge,
        "go with the AI judge's verdict (shown below)",
        "",
    ),
    b(
        S::Pairs,
        &[Key::ch('u'), Key::ctrl('z'), Key::code(K::Backspace)],
        Action::Undo,
        "undo the last decision (logged as a retraction)",
        "undo",
    ),
    b(
        S::Pairs,
        &[Key::ch('f')],
        Action::ToggleRunFilter,
        "pairs of the selected run / of every run",
        "runs",
    ),
    b(
        S::Pairs,
        &[Key::code(K::Up), Key::ch('k')],
        Action::Up,
        "scroll the answers up",
        "",
    ),
    b(
        S::Pairs,
        &[Key::code(K::Down), Key::ch('j')],
        Action::Down,
        "scroll the answers down",
        "",
    ),
    // Health.
    b(
        S::Health,
        &[Key::code(K::Up), Key::ch('k')],
        Action::Up,
        "scroll up",
        "scroll",
    ),
    b(
        S::Health,
        &[Key::code(K::Down), Key::ch('j')],
        Action::Down,
        "scroll down",
        "",
    ),
    // Log.
    b(
        S::Log,
        &[Key::code(K::Up), Key::ch('k')],
        Action::Up,
        "scroll to older lines",
        "scroll",
    ),
    b(
        S::Log,
        &[Key::code(K::Down), Key::ch('j')],
        Action::Down,
        "scroll to newer lines",
        "",
    ),
    b(
        S::Log,
        &[Key::code(K::PageUp)],
        Action::PageUp,
        "a page older",
        "",
    ),
    b(
        S::Log,
        &[Key::code(K::PageDown)],
        Action::PageDown,
        "a page newer",
        "",
    ),
    b(
        S::Log,
        &[Key::code(K::Home)],
        Action::Home,
        "oldest line",
        "",
    ),
    b(
        S::Log,
        &[Key::code(K::End)],
        Action::End,
        "newest line, and follow new ones",
        "follow",
    ),
    // Dialogs.
    b(
        S::Dialog,
        &[Key::ch('y'), Key::code(K::Enter)],
        Action::Yes,
        "yes / start the chosen run",
        "",
    ),
    b(
        S::Dialog,
        &[Key::ch('n'), Key::code(K::Esc)],
        Action::No,
        "no / cancel / close",
        "",
    ),
    b(
        S::Dialog,
        &[Key::code(K::Up), Key::ch('k')],
        Action::Up,
        "move up (run picker, help)",
        "",
    ),
    b(
        S::Dialog,
        &[Key::code(K::Down), Key::ch('j')],
        Action::Down,
        "move down (run picker, help)",
        "",
    ),
    b(
        S::Dialog,
        &[Key::ch('?'), Key::ch('q')],
        Action::Help,
        "close the help",
        "",
    ),
];

/// The action a key triggers in `scope` (not falling back to Global; the caller does that so
/// a pane can decline an action and let it through).
pub fn lookup(scope: Scope, ev: &KeyEvent) -> Option<Action> {
    BINDINGS
        .iter()
        .filter(|b| b.scope == scope)
        .find(|b| b.keys.iter().any(|k| k.matches(ev)))
        .map(|b| b.action)
}

/// Keys of a binding as shown to the user, e.g. `a/←`.
pub fn keys_label(keys: &[Key]) -> String {
    keys.iter().map(Key::label).collect::<Vec<_>>().join("/")
}

/// Short `(keys, hint)` pairs for the status line of a scope, in table order.
pub fn hints(scope: Scope) -> Vec<(String, &'static str)> {
    BINDINGS
        .iter()
        .filter(|b| b.scope == scope && !b.hint.is_empty())
        .map(|b| {
            // Hints show the first key only; arrows read better as a pair.
            let keys = match b.keys.first().map(|k| (k.code, k.mods)) {
                Some((KeyCode::Up | KeyCode::Down, KeyModifiers::NONE)) => "↑↓".to_string(),
                Some((KeyCode::Left | KeyCode::Right, KeyModifiers::NONE)) => "←→".to_string(),
                _ => b.keys.first().map(Key::label).unwrap_or_default(),
            };
            (keys, b.hint)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    #[test]
    fn letters_match_by_case_and_arrows_by_shift() {
        let m = press(KeyCode::Char('M'), KeyModifiers::SHIFT);
        assert_eq!(lookup(Scope::Curves, &m), Some(Action::PrevMetric));
        let m = press(KeyCode::Char('m'), KeyModifiers::NONE);
        assert_eq!(lookup(Scope::Curves, &m), Some(Action::NextMetric));
        let l = press(KeyCode::Left, KeyModifiers::SHIFT);
        assert_eq!(lookup(Scope::Curves, &l), Some(Action::LeftFast));
        let l = press(KeyCode::Left, KeyModifiers::NONE);
        assert_eq!(lookup(Scope::Curves, &l), Some(Action::Left));
    }

    #[test]
    fn ctrl_keys_need_ctrl() {
        let c = press(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(lookup(Scope::Global, &c), Some(Action::Quit));
        let c = press(KeyCode::Char('c'), KeyModifiers::NONE);
        assert_eq!(lookup(Scope::Global, &c), None);
        let z = press(
            KeyCode::Char('Z'),
            KeyModifiers::CONTROL | KeyModifiers::SHIFT,
        );
        assert_eq!(lookup(Scope::Pairs, &z), Some(Action::Undo));
    }

    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        for scope in Scope::ALL {
            let keys: Vec<Key> = BINDINGS
                .iter()
                .filter(|b| b.scope == scope)
                .flat_map(|b| b.keys.iter().copied())
                .collect();
            for (i, k) in keys.iter().enumerate() {
                assert!(!keys[i + 1..].contains(k), "{scope:?}: {k:?} bound twice");
            }
        }
    }

    #[test]
    fn pane_keys_do_not_hide_global_pane_switching() {
        for scope in [S::Runs, S::Curves, S::Samples, S::Pairs, S::Health, S::Log] {
            for c in ['1', '2', '3', '4', '5', '6', '?', 'q'] {
                let ev = press(KeyCode::Char(c), KeyModifiers::NONE);
                assert_eq!(lookup(scope, &ev), None, "{scope:?} shadows {c}");
            }
        }
    }

    #[test]
    fn every_scope_has_help_and_labels_read_well() {
        for scope in Scope::ALL {
            assert!(BINDINGS.iter().any(|b| b.scope == scope));
        }
        assert_eq!(keys_label(&[Key::ch('a'), Key::code(KeyCode::Left)]), "a/←");
        assert_eq!(Key::ctrl('z').label(), "Ctrl+Z");
        assert_eq!(Key::shift(KeyCode::Left).label(), "Shift+←");
    }
}
