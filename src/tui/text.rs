//! Text helpers shared by the panes: wrapping long generations, compact numbers, sparklines.

use ratatui::text::Span;

/// Display width of one character (wide CJK = 2, combining = 0), via ratatui's own measure.
fn char_width(c: char) -> usize {
    let mut buf = [0u8; 4];
    Span::raw(&*c.encode_utf8(&mut buf)).width()
}

/// Makes model output safe to draw: tabs become spaces, carriage returns and other control
/// characters (which would move the terminal cursor) become a visible `·`.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("    "),
            '\n' => out.push('\n'),
            c if c.is_control() => out.push('·'),
            c => out.push(c),
        }
    }
    out
}

/// Wraps text to `width` display columns: at spaces where possible, inside a word when it
/// alone is wider than the line. Newlines are kept; an empty input gives one empty line.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    for para in sanitize(text).split('\n') {
        let mut line = String::new();
        let mut line_w = 0;
        for word in split_keep_spaces(para) {
            let word_w: usize = word.chars().map(char_width).sum();
            if line_w + word_w <= width {
                line.push_str(word);
                line_w += word_w;
                continue;
            }
            if word.trim().is_empty() {
                // A space at the wrap point: end the line there.
                lines.push(std::mem::take(&mut line));
                line_w = 0;
                continue;
            }
            if line_w > 0 && word_w <= width {
                lines.push(line.trim_end().to_string());
                line.clear();
                line.push_str(word);
                line_w = word_w;
                continue;
            }
            for c in word.chars() {
                let cw = char_width(c);
                if line_w + cw > width && line_w > 0 {
                    lines.push(std::mem::take(&mut line));
                    line_w = 0;
                }
                line.push(c);
                line_w += cw;
            }
        }
        lines.push(line);
    }
    lines
}

/// Wraps with a first line of `first` columns and the rest of `rest` columns (for text that
/// follows a label on its first line and hangs indented below it).
pub fn wrap_hanging(text: &str, first: usize, rest: usize) -> Vec<String> {
    let clean = sanitize(text);
    let head = wrap(&clean, first).into_iter().next().unwrap_or_default();
    // `head` is a prefix of `clean`: wrapping only drops spaces after the cut.
    let tail = clean.get(head.len()..).unwrap_or("");
    let tail = tail
        .strip_prefix('\n')
        .unwrap_or(tail)
        .trim_start_matches(' ');
    let mut out = vec![head];
    if !tail.is_empty() {
        out.extend(wrap(tail, rest));
    }
    out
}

/// Splits into alternating runs of non-spaces and single spaces.
fn split_keep_spaces(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = if rest.starts_with(' ') {
            1
        } else {
            rest.find(' ').unwrap_or(rest.len())
        };
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

/// Shortens text to `width` columns, ending in `…` when cut.
pub fn truncate(text: &str, width: usize) -> String {
    let total: usize = text.chars().map(char_width).sum();
    if total <= width {
        return text.to_string();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in text.chars() {
        let cw = char_width(c);
        if w + cw + 1 > width {
            break;
        }
        out.push(c);
        w += cw;
    }
    if width > 0 {
        out.push('…');
    }
    out
}

/// A metric value in at most ~7 columns: 4 significant digits, scientific when tiny or huge.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if v.fract() == 0.0 && a < 1e5 {
        // Counts (tokens, labels, steps) read as integers.
        format!("{v:.0}")
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// Seconds as a short duration: `42s`, `3m05s`, `2h14m`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Eighth-block sparkline of the values, one character each (the newest on the right).
/// Non-finite values show as a space.
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                ' '
            } else if hi <= lo {
                BARS[3]
            } else {
                let t = ((v - lo) / (hi - lo) * 7.0).round() as usize;
                BARS[t.min(7)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_breaks_at_spaces_and_inside_long_words() {
        assert_eq!(
            wrap("the quick brown fox", 10),
            vec!["the quick", "brown fox"]
        );
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("a\n\nb", 5), vec!["a", "", "b"]);
        assert_eq!(wrap("", 5), vec![""]);
    }

    #[test]
    fn hanging_wrap_gives_the_first_line_its_own_width() {
        assert_eq!(
            wrap_hanging("alpha beta gamma delta", 11, 6),
            vec!["alpha beta", "gamma", "delta"]
        );
        assert_eq!(wrap_hanging("a\nb c", 10, 3), vec!["a", "b c"]);
        assert_eq!(wrap_hanging("short", 10, 3), vec!["short"]);
    }

    #[test]
    fn wrap_counts_wide_characters_as_two_columns() {
        assert_eq!(wrap("日本語です", 4), vec!["日本", "語で", "す"]);
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        assert_eq!(sanitize("a\tb\r\x1b[2J"), "a    b··[2J");
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(num(0.53212), "0.5321");
        assert_eq!(num(12.346), "12.35");
        assert_eq!(num(123456.0), "1.23e5");
        assert_eq!(num(0.0000123), "1.23e-5");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "NaN");
        // Counts read as integers, not `144.0`.
        assert_eq!(num(144.0), "144");
        assert_eq!(num(-3.0), "-3");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(8040.0), "2h14m");
    }

    #[test]
    fn sparkline_spans_the_bar_range() {
        assert_eq!(sparkline(&[0.0, 0.5, 1.0]), "▁▅█");
        assert_eq!(sparkline(&[2.0, 2.0]), "▄▄");
        assert_eq!(sparkline(&[0.0, f64::NAN, 1.0]), "▁ █");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
