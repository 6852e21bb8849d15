//! Samples: the generations a run recorded at one step (prompt, completion, reward per
//! source, advantage), long text wrapped and scrollable, with a step scrubber to go back in
//! time. At the newest step the pane follows new steps; after scrubbing back it stays put.

use std::cell::Cell;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::engine::events::SampleRecord;
use crate::tui::app::{EventState, PaneId};
use crate::tui::keymap::Action;
use crate::tui::panes::pane_block;
use crate::tui::store::RunData;
use crate::tui::text::{num, wrap};
use crate::tui::theme;

/// Lines one PgUp/PgDn moves.
const PAGE: u16 = 10;
/// Width of the `prompt │ ` / `answer │ ` labels that wrapped text hangs from.
const LABEL_W: usize = 9;

/// Which step is shown and how far it is scrolled.
#[derive(Debug, Default)]
pub struct SamplesState {
    /// The chosen step; `None` follows the newest.
    pub step: Option<usize>,
    pub scroll: u16,
    /// The sample `+` / `-` rate (index within the shown step).
    pub selected: usize,
    /// The largest useful scroll, as measured by the last render.
    max_scroll: Cell<u16>,
}

impl SamplesState {
    /// Another run was focused: show its newest step from the top.
    pub fn on_run_changed(&mut self) {
        self.step = None;
        self.scroll = 0;
        self.selected = 0;
    }

    /// The selected sample of the shown step, with its step and index.
    pub fn selected_sample<'a>(
        &self,
        run: &'a RunData,
    ) -> Option<(usize, usize, &'a SampleRecord)> {
        let step = self.shown_step(run)?;
        let samples = run.samples.get(&step)?;
        let i = self.selected.min(samples.len().checked_sub(1)?);
        Some((step, i, &samples[i]))
    }

    /// The step on screen for `run`: the chosen one, or the newest.
    pub fn shown_step(&self, run: &RunData) -> Option<usize> {
        match self.step {
            Some(s) if run.samples.contains_key(&s) => Some(s),
            // A chosen step that was thinned away: the nearest older one.
            Some(s) => run
                .samples
                .range(..s)
                .next_back()
                .map(|(k, _)| *k)
                .or_else(|| run.samples.keys().next().copied()),
            None => run.samples.keys().next_back().copied(),
        }
    }

    /// Applies a Samples key.
    pub fn handle(&mut self, action: Action, run: Option<&RunData>) -> EventState {
        let current = run.and_then(|r| Some((r, self.shown_step(r)?)));
        match action {
            Action::Left | Action::Right | Action::Home | Action::End => {
                let Some((run, cur)) = current else {
                    return EventState::Consumed;
                };
                let newest = run.samples.keys().next_back().copied();
                let target = match action {
                    Action::Left => run.samples.range(..cur).next_back().map(|(k, _)| *k),
                    Action::Right => run.samples.range(cur + 1..).next().map(|(k, _)| *k),
                    Action::Home => run.samples.keys().next().copied(),
                    _ => None,
                };
                // Reaching the newest step (or End) means following new steps again.
                self.step = target.filter(|t| Some(*t) != newest);
                if action == Action::Left && target.is_none() {
                    self.step = Some(cur);
                }
                self.scroll = 0;
                self.selected = 0;
            }
            Action::NextSample | Action::PrevSample => {
                let n = current
                    .and_then(|(r, s)| r.samples.get(&s))
                    .map_or(0, Vec::len);
                self.selected = if action == Action::NextSample {
                    (self.selected + 1).min(n.saturating_sub(1))
                } else {
                    self.selected.saturating_sub(1)
                };
            }
            Action::Up => self.scroll = self.scroll.saturating_sub(1),
            Action::Down => self.scroll = (self.scroll + 1).min(self.max_scroll.get()),
            Action::PageUp => self.scroll = self.scroll.saturating_sub(PAGE),
            Action::PageDown => self.scroll = (self.scroll + PAGE).min(self.max_scroll.get()),
            _ => return EventState::NotConsumed,
        }
        EventState::Consumed
    }
}

/// What the Samples pane draws.
pub struct SamplesView<'a> {
    pub state: &'a SamplesState,
    pub run: Option<&'a RunData>,
    pub focused: bool,
    /// This annotator's thumbs (true = up) by sample origin (`run@step#i`).
    pub ratings: &'a std::collections::HashMap<String, bool>,
}

/// The scrubber: the run's sampled steps as ticks on a track, the shown one as a dot.
fn scrubber(steps: &[usize], shown: usize, width: usize) -> String {
    if width < 3 || steps.is_empty() {
        return String::new();
    }
    let track = width - 2;
    let (first, last) = (steps[0], steps[steps.len() - 1]);
    let pos = |s: usize| {
        if last == first {
            0
        } else {
            (s - first) * (track - 1) / (last - first)
        }
    };
    let mut cells = vec!['─'; track];
    for s in steps {
        cells[pos(*s)] = '┼';
    }
    cells[pos(shown)] = '●';
    format!("◀{}▶", cells.into_iter().collect::<String>())
}

/// Rewards read best with two decimals (0.00, 1.00, -0.50); huge or tiny ones compactly.
fn reward(v: f64) -> String {
    if v.is_finite() && v.abs() < 1e4 && (v == 0.0 || v.abs() >= 0.01) {
        format!("{v:.2}")
    } else {
        num(v)
    }
}

/// One sample as lines: a header with rewards and advantage, then prompt and answer wrapped
/// under their labels.
fn sample_lines(
    i: usize,
    s: &SampleRecord,
    width: usize,
    selected: bool,
    rating: Option<bool>,
) -> Vec<Line<'static>> {
    let marker = if selected { "▸" } else { " " };
    let mut head = vec![Span::styled(format!("{marker}#{} ", i + 1), theme::title())];
    match rating {
        Some(true) => head.push(Span::styled("[+] ", theme::ok())),
        Some(false) => head.push(Span::styled("[-] ", theme::error())),
        None => {}
    }
    let rewards: Vec<String> = s
        .rewards
        .iter()
        .map(|(k, v)| format!("{k} {}", reward(*v)))
        .collect();
    if !rewards.is_empty() {
        head.push(Span::raw(rewards.join(" · ")));
    }
    if let Some(a) = s.advantage {
        let style = if a > 0.0 {
            theme::ok()
        } else if a < 0.0 {
            theme::error().remove_modifier(Modifier::BOLD)
        } else {
            theme::dim()
        };
        head.push(Span::raw(" · "));
        head.push(Span::styled(format!("adv {a:+.2}"), style));
    }
    let mut lines = vec![Line::from(head)];
    let text_w = width.saturating_sub(LABEL_W).max(8);
    for (label, text, style) in [
        ("prompt", &s.prompt, theme::dim()),
        ("answer", &s.completion, Style::new()),
    ] {
        for (j, l) in wrap(text, text_w).into_iter().enumerate() {
            let lead = if j == 0 {
                format!("{label:>6} │ ")
            } else {
                format!("{:>6} │ ", "")
            };
            lines.push(Line::from(vec![
                Span::styled(lead, theme::dim()),
                Span::styled(l, style),
            ]));
        }
    }
    lines
}

/// Where a sample came from, as ratings and pairs name it: `run@step#i`.
pub fn sample_origin(run: &str, step: usize, i: usize) -> String {
    format!("{run}@{step}#{i}")
}

/// Draws the Samples pane.
pub fn render(frame: &mut Frame, area: Rect, view: &SamplesView) {
    let st = view.state;
    let name = view.run.map(|r| r.id.as_str()).unwrap_or("no run");
    let mut block = pane_block(PaneId::Samples, name, view.focused);
    let shown = view.run.and_then(|r| Some((r, st.shown_step(r)?)));
    if let Some((run, step)) = shown {
        let steps: Vec<usize> = run.samples.keys().copied().collect();
        let k = steps.iter().position(|s| *s == step).unwrap_or(0) + 1;
        let mode = match (st.step.is_some(), run.is_live()) {
            (true, true) => Span::styled("End: follow live ", theme::warning()),
            (true, false) => Span::styled("End: newest ", theme::warning()),
            (false, true) => Span::styled("following live ", theme::ok()),
            (false, false) => Span::styled("newest ", theme::dim()),
        };
        block = block.title_top(
            Line::from(vec![
                Span::raw(format!(" step {step} · {k} of {} · ", steps.len())),
                mode,
            ])
            .right_aligned(),
        );
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some((run, step)) = shown else {
        let text = if view.run.is_some() {
            "No samples yet. Runs record generations every [samples] every steps."
        } else {
            "No run yet."
        };
        frame.render_widget(Paragraph::new(text).style(theme::dim()), inner);
        return;
    };
    let [scrub, body] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(inner);
    let steps: Vec<usize> = run.samples.keys().copied().collect();
    frame.render_widget(
        Line::styled(scrubber(&steps, step, scrub.width as usize), theme::dim()),
        scrub,
    );
    let mut lines = Vec::new();
    let selected = st.selected_sample(run).map(|(_, i, _)| i);
    for (i, s) in run.samples[&step].iter().enumerate() {
        if i > 0 {
            lines.push(Line::raw(""));
        }
        let origin = sample_origin(&run.id, step, i);
        let rating = view.ratings.get(&origin).copied();
        lines.extend(sample_lines(
            i,
            s,
            body.width as usize,
            view.focused && selected == Some(i),
            rating,
        ));
    }
    let max = (lines.len() as u16).saturating_sub(body.height);
    st.max_scroll.set(max);
    let scroll = st.scroll.min(max);
    frame.render_widget(Paragraph::new(lines).scroll((scroll, 0)), body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::store::Origin;

    fn run_with_steps(steps: &[usize]) -> RunData {
        let mut r = RunData::new("r", "grpo", Origin::Live, 16);
        for s in steps {
            r.push_samples(*s, Vec::new());
        }
        r
    }

    #[test]
    fn scrubbing_back_stops_following_and_end_follows_again() {
        let r = run_with_steps(&[10, 20, 30]);
        let mut st = SamplesState::default();
        assert_eq!(st.shown_step(&r), Some(30));
        st.handle(Action::Left, Some(&r));
        assert_eq!((st.step, st.shown_step(&r)), (Some(20), Some(20)));
        st.handle(Action::Home, Some(&r));
        assert_eq!(st.shown_step(&r), Some(10));
        st.handle(Action::Left, Some(&r));
        assert_eq!(st.shown_step(&r), Some(10));
        st.handle(Action::Right, Some(&r));
        st.handle(Action::Right, Some(&r));
        // Back at the newest: following again.
        assert_eq!(st.step, None);
        st.handle(Action::Left, Some(&r));
        st.handle(Action::End, Some(&r));
        assert_eq!(st.step, None);
    }

    #[test]
    fn scrubber_marks_steps_and_the_shown_one() {
        assert_eq!(scrubber(&[0, 5, 10], 5, 13), "◀┼────●────┼▶");
        assert_eq!(scrubber(&[7], 7, 5), "◀●──▶");
    }
}
