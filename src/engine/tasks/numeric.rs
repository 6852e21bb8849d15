//! Final answers of reasoning completions, read the way GSM8K-style recipes read them: the
//! number after the last `#### ` marker, else the last `\boxed{...}`, else the last number in
//! the text. Numbers compare as exact rationals, so `18`, `18.00`, `$18` and `36/2` agree.

use std::fmt;

/// Longest digit run read as a number: longer ones are not answers to grade-school problems,
/// and the limit keeps every value exact in `i128`.
const MAX_DIGITS: usize = 30;

/// An exact fraction, reduced, with a positive denominator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

impl Rational {
    fn new(num: i128, den: i128) -> Option<Rational> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        let sign = if den < 0 { -1 } else { 1 };
        Some(Rational {
            num: num.checked_div(g)?.checked_mul(sign)?,
            den: den.checked_div(g)?.checked_mul(sign)?,
        })
    }

    fn div(self, rhs: Rational) -> Option<Rational> {
        Rational::new(
            self.num.checked_mul(rhs.den)?,
            self.den.checked_mul(rhs.num)?,
        )
    }

    fn neg(self) -> Rational {
        Rational {
            num: -self.num,
            den: self.den,
        }
    }

    /// `den` as `10^k`, when the value has a finite decimal expansion.
    fn decimal_places(self) -> Option<u32> {
        let (mut d, mut twos, mut fives) = (self.den, 0u32, 0u32);
        while d % 2 == 0 {
            d /= 2;
            twos += 1;
        }
        while d % 5 == 0 {
            d /= 5;
            fives += 1;
        }
        (d == 1).then_some(twos.max(fives))
    }
}

/// The normalised form: `42`, `-3`, `0.5`, or `1/3` when there is no finite decimal.
impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            return write!(f, "{}", self.num);
        }
        let scaled = self.decimal_places().and_then(|k| {
            let pow = 10i128.checked_pow(k)?;
            Some((self.num.checked_mul(pow / self.den)?, pow, k))
        });
        match scaled {
            Some((n, pow, k)) => {
                let sign = if n < 0 { "-" } else { "" };
                let (int, frac) = (n.abs() / pow, n.abs() % pow);
                write!(f, "{sign}{int}.{frac:0width$}", width = k as usize)
            }
            None => write!(f, "{}/{}", self.num, self.den),
        }
    }
}

/// The final answer of `completion`, normalised (`1,234.50` gives `1234.5`, `$18.00` gives
/// `18`), or None when it holds no number. Read in this order:
///
/// 1. GSM8K's marker: the first number on the first non-blank line after the last `####`
///    that is followed by one (`#### 1,234`, `#### $18.00.`, `#### The answer is 7`);
/// 2. else the content of the last `\boxed{...}` with a number in it (`\boxed{ 12 }`,
///    `\boxed{\frac{1}{2}}`);
/// 3. else the last number anywhere in the text (`The answer is $18.00.`).
///
/// Numbers are ASCII digits with optional `,` thousands groups (`1,234`; `1,2` is two
/// numbers), an optional decimal part and an optional `/denominator`; a `-` right before the
/// digits is a sign unless it follows a letter, digit or `)` (so `10-4` reads 4). Runs of more
/// than 30 digits are not read.
pub fn extract_final_answer(completion: &str) -> Option<String> {
    final_answer(completion).map(|r| r.to_string())
}

/// Whether `a` and `b` are the same number: each is parsed as one number, leniently (`$`,
/// spaces, thousands commas and a trailing `.` are ignored, but a space between digits is not
/// a separator; `42.0` equals `42`, `0.5` equals `1/2` and `\frac{1}{2}`), and compared
/// exactly. False when either is not a number.
pub fn numbers_equal(a: &str, b: &str) -> bool {
    match (parse_number(a), parse_number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Whether the completion ends its reasoning with an explicit final answer: its last non-blank
/// line holds `#### <number>` (nothing but `$`, spaces, `*` or a final `.` around the number)
/// or a `\boxed{<number>}`. With `max_chars`, the answer's text (after `####`, or inside the
/// braces) may be at most that long.
pub fn ends_with_final_answer(completion: &str, max_chars: Option<usize>) -> bool {
    let Some(last) = completion.lines().rev().find(|l| !l.trim().is_empty()) else {
        return false;
    };
    let answer = match last.rfind("####") {
        Some(i) => Some(last[i + 4..].trim_start_matches('#')),
        None => last
            .rfind("\\boxed{")
            .and_then(|i| braced(&last[i + "\\boxed{".len()..])),
    };
    answer.is_some_and(|text| {
        max_chars.is_none_or(|max| text.trim().chars().count() <= max)
            && parse_number(text).is_some()
    })
}

/// [`extract_final_answer`] before normalisation.
pub(crate) fn final_answer(completion: &str) -> Option<Rational> {
    after_marker(completion)
        .or_else(|| in_box(completion))
        .or_else(|| scan_numbers(completion).pop())
}

fn after_marker(text: &str) -> Option<Rational> {
    text.rmatch_indices("####").find_map(|(i, _)| {
        let rest = text[i + 4..].trim_start_matches('#');
        let line = rest.lines().find(|l| !l.trim().is_empty())?;
        scan_numbers(line).into_iter().next()
    })
}

fn in_box(text: &str) -> Option<Rational> {
    text.rmatch_indices("\\boxed{").find_map(|(i, m)| {
        let content = braced(&text[i + m.len()..])?;
        parse_number(content).or_else(|| scan_numbers(content).pop())
    })
}

/// The text up to the `}` that closes an already opened brace; None if it never closes.
fn braced(s: &str) -> Option<&str> {
    let mut depth = 0usize;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' if depth == 0 => return Some(&s[..i]),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// One number, the whole of `s` once decoration is removed: spaces (not between digits), `$`
/// (and LaTeX's `\$`), LaTeX thin spaces `\,` and `\!`, Markdown `*`, one trailing `.`;
/// `\frac{a}{b}` (and `\dfrac`, `\tfrac`) with an optional `-` before it.
pub(crate) fn parse_number(s: &str) -> Option<Rational> {
    let clean = s.replace("\\$", "").replace("\\,", "").replace("\\!", "");
    let clean = strip_decoration(&clean);
    let clean = clean.strip_suffix('.').unwrap_or(&clean);
    if let Some(value) = parse_frac(clean) {
        return Some(value);
    }
    match scan_numbers(clean).as_slice() {
        // The token must span the whole string: `12abc` or `1-2` are not numbers.
        [only] if number_text_len(clean) == Some(clean.len()) => Some(*only),
        _ => None,
    }
}

/// Drops `$`, `*` and spaces, except a space between two digits (`4 2` is not 42).
fn strip_decoration(s: &str) -> String {
    let kept: Vec<char> = s.chars().filter(|&c| c != '$' && c != '*').collect();
    let mut out = String::with_capacity(kept.len());
    for (i, &c) in kept.iter().enumerate() {
        if c.is_whitespace() {
            let before = out.chars().next_back();
            let after = kept[i..].iter().find(|c| !c.is_whitespace());
            let between_digits = before.is_some_and(|b| b.is_ascii_digit())
                && after.is_some_and(|a| a.is_ascii_digit());
            if !between_digits || out.ends_with(' ') {
                continue;
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_frac(s: &str) -> Option<Rational> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let rest = ["\\frac{", "\\dfrac{", "\\tfrac{"]
        .iter()
        .find_map(|p| s.strip_prefix(p))?;
    let top = braced(rest)?;
    let rest = rest[top.len() + 1..].strip_prefix('{')?;
    let bottom = braced(rest)?;
    if rest.len() != bottom.len() + 1 {
        return None;
    }
    let value = parse_number(top)?.div(parse_number(bottom)?)?;
    Some(if negative { value.neg() } else { value })
}

/// Length of the number token at the start of `s` (with its sign), if one starts there.
fn number_text_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let start = usize::from(bytes.first() == Some(&b'-'));
    match read_number(bytes, start) {
        (Some(_), end) => Some(end),
        (None, _) => None,
    }
}

/// Every readable number token in `text`, in order.
fn scan_numbers(text: &str) -> Vec<Rational> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let (value, end) = read_number(bytes, i);
        // An unreadable token (too long, a zero denominator) is skipped whole.
        if let Some(value) = value {
            out.push(if is_sign(bytes, i) {
                value.neg()
            } else {
                value
            });
        }
        i = end;
    }
    out
}

/// Whether the byte before the digits at `i` is a minus sign rather than a subtraction.
fn is_sign(bytes: &[u8], i: usize) -> bool {
    if i == 0 || bytes[i - 1] != b'-' {
        return false;
    }
    match i.checked_sub(2).map(|j| bytes[j]) {
        None => true,
        Some(b) => !(b.is_ascii_alphanumeric() || b == b')'),
    }
}

/// Reads the unsigned number whose first digit is at `start`: digits with optional `,`
/// groups of three, then an optional `.digits` or `/digits`. Returns its value (None when it
/// is too long or divides by zero) and where the token ends (`start` if no digit is there).
fn read_number(bytes: &[u8], start: usize) -> (Option<Rational>, usize) {
    let digits_end = |from: usize| {
        let mut j = from;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        j
    };
    let mut end = digits_end(start);
    if end == start {
        return (None, start);
    }
    let mut int_digits: Vec<u8> = bytes[start..end].to_vec();
    // Thousands groups only after a first group of 1 to 3 digits: `1,234,567`.
    if int_digits.len() <= 3 {
        while bytes.get(end) == Some(&b',') && digits_end(end + 1) == end + 4 {
            int_digits.extend_from_slice(&bytes[end + 1..end + 4]);
            end += 4;
        }
    }
    let next_is_digit = |j: usize| bytes.get(j + 1).is_some_and(u8::is_ascii_digit);
    let (mut frac_digits, mut den_digits): (&[u8], &[u8]) = (&[], &[]);
    if bytes.get(end) == Some(&b'.') && next_is_digit(end) {
        let frac_end = digits_end(end + 1);
        frac_digits = &bytes[end + 1..frac_end];
        end = frac_end;
    } else if bytes.get(end) == Some(&b'/') && next_is_digit(end) {
        let den_end = digits_end(end + 1);
        den_digits = &bytes[end + 1..den_end];
        end = den_end;
    }
    (value_of(&int_digits, frac_digits, den_digits), end)
}

fn value_of(int_digits: &[u8], frac_digits: &[u8], den_digits: &[u8]) -> Option<Rational> {
    if int_digits.len() + frac_digits.len() > MAX_DIGITS || den_digits.len() > MAX_DIGITS {
        return None;
    }
    let as_int = |d: &[u8]| -> Option<i128> {
        d.iter().try_fold(0i128, |acc, b| {
            acc.checked_mul(10)?.checked_add(i128::from(b - b'0'))
        })
    };
    let mantissa = as_int(&[int_digits, frac_digits].concat())?;
    let den = if den_digits.is_empty() {
        10i128.checked_pow(u32::try_from(frac_digits.len()).ok()?)?
    } else {
        as_int(den_digits)?
    };
    Rational::new(mantissa, den)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(text: &str) -> Option<String> {
        extract_final_answer(text)
    }

    #[test]
    fn gsm8k_marker_comes_first() {
        assert_eq!(x("She has 3 + 4 = 7 apples.\n#### 7"), Some("7".into()));
        assert_eq!(x("#### 1,234"), Some("1234".into()));
        assert_eq!(x("#### 1,234,567.50"), Some("1234567.5".into()));
        assert_eq!(x("#### $18.00."), Some("18".into()));
        assert_eq!(x("#### -3"), Some("-3".into()));
        assert_eq!(x("#### The answer is 42 apples"), Some("42".into()));
        assert_eq!(x("####42"), Some("42".into()));
        assert_eq!(x("##### 42"), Some("42".into()));
        assert_eq!(x("#### **42**"), Some("42".into()));
        // The marker wins over a later box or number.
        assert_eq!(
            x("#### 5\nCheck: 2 + 3 = 5, and 9 is not it"),
            Some("5".into())
        );
        assert_eq!(x("#### 5 \\boxed{6}"), Some("5".into()));
        // The answer may sit on the next line.
        assert_eq!(x("####\n  \n 12"), Some("12".into()));
    }

    #[test]
    fn the_last_marker_with_a_number_counts() {
        assert_eq!(x("#### 5\nWait, no.\n#### 7"), Some("7".into()));
        assert_eq!(x("#### 5\n####"), Some("5".into()));
        assert_eq!(x("#### 5\n#### none"), Some("5".into()));
        // A marker with nothing after it falls back to the last number.
        assert_eq!(x("2 + 3 = 5\n####"), Some("5".into()));
        assert_eq!(x("####"), None);
        assert_eq!(x("#### \n"), None);
    }

    #[test]
    fn boxed_then_last_number() {
        assert_eq!(x("So \\boxed{ 12 }."), Some("12".into()));
        assert_eq!(x("\\boxed{3} or \\boxed{4}"), Some("4".into()));
        assert_eq!(x("\\boxed{4} then \\boxed{no}"), Some("4".into()));
        assert_eq!(x("\\boxed{\\frac{1}{2}}"), Some("0.5".into()));
        assert_eq!(x("\\boxed{-\\dfrac{2}{3}}"), Some("-2/3".into()));
        assert_eq!(x("\\boxed{18 \\text{ dollars}}"), Some("18".into()));
        assert_eq!(x("\\boxed{\\$1,000}"), Some("1000".into()));
        assert_eq!(x("unclosed \\boxed{7 and 8"), Some("8".into()));
        assert_eq!(x("The answer is $18.00."), Some("18".into()));
        assert_eq!(x("It costs 3.5 dollars, so 7 in all"), Some("7".into()));
        assert_eq!(x("half is 1/2"), Some("0.5".into()));
        assert_eq!(x("a third is 1/3"), Some("1/3".into()));
        assert_eq!(x("x = -4"), Some("-4".into()));
        assert_eq!(x("10-4"), Some("4".into()));
        assert_eq!(x("10 - 4 = 6"), Some("6".into()));
        assert_eq!(x("(2)-5"), Some("5".into()));
        assert_eq!(x("values 1,2"), Some("2".into()));
        assert_eq!(x("1234,567"), Some("567".into()));
        assert_eq!(x("50%"), Some("50".into()));
        assert_eq!(x("-0"), Some("0".into()));
    }

    #[test]
    fn no_number_or_unreadable_numbers() {
        assert_eq!(x(""), None);
        assert_eq!(x("I do not know."), None);
        assert_eq!(x("\\boxed{}"), None);
        assert_eq!(x(&"9".repeat(31)), None, "longer than 30 digits");
        assert_eq!(x(&"9".repeat(30)), Some("9".repeat(30)));
        assert_eq!(x("5/0"), None);
        assert_eq!(x("naïve café — 東京 12 🙂"), Some("12".into()));
    }

    #[test]
    fn numbers_compare_exactly() {
        for (a, b) in [
            ("42", "42.0"),
            ("42", "42.00"),
            ("42", " $42 "),
            ("42", "42."),
            ("1234", "1,234"),
            ("0.5", "1/2"),
            ("0.5", "\\frac{1}{2}"),
            ("-3", "-3.0"),
            ("-0.25", "-1/4"),
            ("7", "**7**"),
            ("1000", "\\$1,000"),
            ("0", "-0"),
            ("12", " 12 "),
            ("-5", "- 5"),
            ("18", "$ 18"),
        ] {
            assert!(numbers_equal(a, b), "{a} = {b}");
            assert!(numbers_equal(b, a), "{b} = {a}");
        }
        for (a, b) in [
            ("42", "43"),
            ("42", "-42"),
            ("0.5", "0.51"),
            ("1/3", "0.333"),
            ("42", "42 apples"),
            ("42", "forty-two"),
            ("", ""),
            ("12", "1,2"),
            ("3", "1-2"),
            ("42", "4 2"),
            ("42", "4\n2"),
        ] {
            assert!(!numbers_equal(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn explicit_final_answers() {
        let yes = |t: &str| ends_with_final_answer(t, None);
        assert!(yes("3 + 4 = 7.\n#### 7"));
        assert!(yes("3 + 4 = 7.\n#### 7\n\n"));
        assert!(yes("Total: #### $1,234.00."));
        assert!(yes("So the answer is $\\boxed{7}$."));
        assert!(yes("#### -3"));
        assert!(!yes("#### 7\nThat is all."), "not the last line");
        assert!(!yes("#### seven"));
        assert!(!yes("#### 7 apples"));
        assert!(!yes("####"));
        assert!(!yes("The answer is 7."), "no marker");
        assert!(!yes("\\boxed{7"), "unclosed");
        assert!(!yes(""));
        assert!(ends_with_final_answer("#### 1234", Some(4)));
        assert!(!ends_with_final_answer("#### 12345", Some(4)));
        assert!(ends_with_final_answer("#### 12", Some(4)));
    }
}
