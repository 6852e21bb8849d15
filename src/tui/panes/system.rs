//! System: what the machine is doing while runs train, as W&B's system panel and
//! `nvidia-smi` show it: the host's CPU and memory, each run's process tree (rlft itself for
//! its own runs, a launched job's processes), and NVIDIA GPUs where a driver reports them,
//! with a sparkline of the last two minutes of each.

use std::collections::{BTreeMap, VecDeque};

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::engine::system::SystemSnapshot;
use crate::tui::app::PaneId;
use crate::tui::panes::pane_block;
use crate::tui::text::{sparkline, truncate};
use crate::tui::theme;

/// Samples kept per sparkline: two minutes at one sample every two seconds.
const HISTORY: usize = 60;
/// Name column width (fits `grpo-arith-lora-trl`).
const LABEL_W: usize = 20;

/// The newest snapshot and the recent history of each line's main figure.
#[derive(Default)]
pub struct SystemState {
    pub latest: Option<SystemSnapshot>,
    /// Host CPU, each process tree's CPU, each GPU's utilisation, by line name.
    history: BTreeMap<String, VecDeque<f64>>,
}

impl SystemState {
    pub fn push(&mut self, snap: SystemSnapshot) {
        let mut add = |key: String, v: f64| {
            let h = self.history.entry(key).or_default();
            h.push_back(v);
            if h.len() > HISTORY {
                h.pop_front();
            }
        };
        add("host".into(), f64::from(snap.host_cpu_percent));
        for p in &snap.processes {
            add(format!("proc {}", p.label), f64::from(p.cpu_percent));
        }
        if let Ok(gpus) = &snap.gpus {
            for g in gpus {
                add(format!("gpu {}", g.index), f64::from(g.utilization_percent));
            }
        }
        self.latest = Some(snap);
    }

    fn spark(&self, key: &str, width: usize) -> String {
        let Some(h) = self.history.get(key) else {
            return String::new();
        };
        let values: Vec<f64> = h.iter().copied().collect();
        let from = values.len().saturating_sub(width);
        sparkline(&values[from..])
    }
}

/// What the System pane draws.
pub struct SystemView<'a> {
    pub state: &'a SystemState,
    pub focused: bool,
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Draws the System pane.
pub fn render(frame: &mut Frame, area: Rect, view: &SystemView) {
    let block = pane_block(PaneId::System, "every 2 s", view.focused);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let Some(snap) = &view.state.latest else {
        frame.render_widget(
            Paragraph::new(Line::styled("Measuring the machine…", theme::dim())),
            inner,
        );
        return;
    };
    let mut lines = Vec::new();
    let host = format!(
        "{:<LABEL_W$} CPU {:>5.1}% of {} cores  memory {:.1} / {}  ",
        "host",
        snap.host_cpu_percent,
        snap.cores,
        snap.host_memory_used_bytes as f64 / (1u64 << 30) as f64,
        gib(snap.host_memory_total_bytes),
    );
    let room = width.saturating_sub(host.chars().count());
    lines.push(Line::from(vec![
        Span::raw(host),
        Span::styled(view.state.spark("host", room), theme::ok()),
    ]));
    lines.push(Line::styled(
        format!(
            "{:<LABEL_W$} {:>7} {:>7} {:>9} {:>9}  CPU history",
            "process tree", "pid", "CPU", "memory", "GPU mem"
        ),
        theme::dim(),
    ));
    if snap.processes.is_empty() {
        lines.push(Line::styled(
            "No run process on this machine: start a run (n) or rlft launch --on local.",
            theme::dim(),
        ));
    }
    for p in &snap.processes {
        if !p.alive {
            lines.push(Line::styled(
                format!(
                    "{:<LABEL_W$} {:>7} ended",
                    truncate(&p.label, LABEL_W),
                    p.pid
                ),
                theme::dim(),
            ));
            continue;
        }
        let row = format!(
            "{:<LABEL_W$} {:>7} {:>6.1}% {:>9} {:>9}  ",
            truncate(&p.label, LABEL_W),
            p.pid,
            p.cpu_percent,
            gib(p.memory_bytes),
            p.gpu_memory_bytes.map(gib).unwrap_or_else(|| "-".into()),
        );
        let room = width.saturating_sub(row.chars().count());
        lines.push(Line::from(vec![
            Span::raw(row),
            Span::styled(
                view.state.spark(&format!("proc {}", p.label), room),
                theme::ok(),
            ),
        ]));
    }
    match &snap.gpus {
        Err(why) => lines.push(Line::styled(format!("GPU: {why}"), theme::dim())),
        Ok(gpus) if gpus.is_empty() => {
            lines.push(Line::styled("GPU: the driver reports none", theme::dim()));
        }
        Ok(gpus) => {
            for g in gpus {
                let mut row = format!(
                    "GPU {} {:<14} util {:>3}%  memory {:.1} / {}",
                    g.index,
                    truncate(&g.name, 14),
                    g.utilization_percent,
                    g.memory_used_bytes as f64 / (1u64 << 30) as f64,
                    gib(g.memory_total_bytes),
                );
                if let Some(t) = g.temperature_c {
                    row.push_str(&format!("  {t}°C"));
                }
                if let Some(w) = g.power_watts {
                    row.push_str(&format!("  {w:.0} W"));
                }
                row.push_str("  ");
                let room = width.saturating_sub(row.chars().count());
                lines.push(Line::from(vec![
                    Span::raw(row),
                    Span::styled(
                        view.state.spark(&format!("gpu {}", g.index), room),
                        theme::ok(),
                    ),
                ]));
            }
        }
    }
    let lines: Vec<Line> = lines
        .into_iter()
        .map(|l| {
            if l.width() > width {
                Line::styled(truncate(&l.to_string(), width), l.style)
            } else {
                l
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}
