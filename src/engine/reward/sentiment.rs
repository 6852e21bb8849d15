//! The sentiment scorer: VADER's `compound` score, a ground truth for "how positive is this
//! text" that is independent of any learned judge (for RLAIF runs).
//!
//! VADER (C. J. Hutto and E. Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment
//! Analysis of Social Media Text", ICWSM 2014) sums per-word valences from a lexicon, adjusted
//! by a handful of rules, and squashes the sum into [-1, 1]. This is a reimplementation of
//! `SentimentIntensityAnalyzer.polarity_scores(text)["compound"]` from the PyPI package
//! `vaderSentiment==3.3.2` (MIT), rule for rule, quirks included, so that scores match the
//! Python package (checked against `tests/fixtures/vader_reference.json`). The lexicon is the
//! package's, shipped as `assets/lexicons/vader_lexicon.txt` (see `assets/lexicons/README.md`).
//!
//! Not reproduced: the package rewrites emoji into words from its emoji lexicon before
//! scoring; here emoji are ordinary (unknown) tokens, so text containing emoji can differ.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Completion, RewardError, RewardSource};

/// The shipped lexicon, relative to the repository root.
pub const DEFAULT_LEXICON: &str = "assets/lexicons/vader_lexicon.txt";

/// Added to (or, for negative valences, subtracted from) a word's valence by a preceding
/// booster such as "very"; dampeners such as "barely" carry the negative of it.
const B_INCR: f64 = 0.293;
const B_DECR: f64 = -0.293;
/// Emphasis of a word written in ALL CAPS in text that is not all caps.
const C_INCR: f64 = 0.733;
/// A negated word's valence is multiplied by this (flips and dampens).
const N_SCALAR: f64 = -0.74;
/// The normalisation `s / sqrt(s^2 + ALPHA)` (about the largest expected sum).
const ALPHA: f64 = 15.0;

/// Degree adverbs: boosters (+0.293) and dampeners (-0.293). The multi-word entries can only
/// match in the two- and three-word checks of [`special_idioms`].
fn booster(word: &str) -> Option<f64> {
    Some(match word {
        "absolutely" | "amazingly" | "awfully" | "completely" | "considerable" | "considerably"
        | "decidedly" | "deeply" | "effing" | "enormous" | "enormously" | "entirely"
        | "especially" | "exceptional" | "exceptionally" | "extreme" | "extremely"
        | "fabulously" | "flipping" | "flippin" | "frackin" | "fracking" | "fricking"
        | "frickin" | "frigging" | "friggin" | "fully" | "fuckin" | "fucking" | "fuggin"
        | "fugging" | "greatly" | "hella" | "highly" | "hugely" | "incredible" | "incredibly"
        | "intensely" | "major" | "majorly" | "more" | "most" | "particularly" | "purely"
        | "quite" | "really" | "remarkably" | "so" | "substantially" | "thoroughly" | "total"
        | "totally" | "tremendous" | "tremendously" | "uber" | "unbelievably" | "unusually"
        | "utter" | "utterly" | "very" => B_INCR,
        "almost" | "barely" | "hardly" | "just enough" | "kind of" | "kinda" | "kindof"
        | "kind-of" | "less" | "little" | "marginal" | "marginally" | "occasional"
        | "occasionally" | "partly" | "scarce" | "scarcely" | "slight" | "slightly"
        | "somewhat" | "sort of" | "sorta" | "sortof" | "sort-of" => B_DECR,
        _ => return None,
    })
}

/// Negation words; any word containing "n't" negates too (see [`negated`]).
#[rustfmt::skip]
const NEGATE: &[&str] = &[
    "aint", "arent", "cannot", "cant", "couldnt", "darent", "didnt", "doesnt", "ain't", "aren't",
    "can't", "couldn't", "daren't", "didn't", "doesn't", "dont", "hadnt", "hasnt", "havent",
    "isnt", "mightnt", "mustnt", "neither", "don't", "hadn't", "hasn't", "haven't", "isn't",
    "mightn't", "mustn't", "neednt", "needn't", "never", "none", "nope", "nor", "not", "nothing",
    "nowhere", "oughtnt", "shant", "shouldnt", "uhuh", "wasnt", "werent", "oughtn't", "shan't",
    "shouldn't", "uh-uh", "wasn't", "weren't", "without", "wont", "wouldnt", "won't", "wouldn't",
    "rarely", "seldom", "despite",
];

/// Idioms and phrases containing lexicon words whose valence replaces the word's.
fn special_case(phrase: &str) -> Option<f64> {
    Some(match phrase {
        "the shit" | "the bomb" | "to die for" => 3.0,
        "bad ass" | "badass" => 1.5,
        "bus stop" => 0.0,
        "yeah right" => -2.0,
        "kiss of death" => -1.5,
        "beating heart" => 3.5,
        _ => return None,
    })
}

/// Python's `str.isspace` (what `str.split()` and `str.strip()` split and strip on): Unicode
/// White_Space plus the ASCII separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Unicode general category Lt (titlecase letters), which Python's `str.isupper` rejects.
fn is_titlecase(c: char) -> bool {
    matches!(c,
        '\u{1c5}' | '\u{1c8}' | '\u{1cb}' | '\u{1f2}' | '\u{1f88}'..='\u{1f8f}'
        | '\u{1f98}'..='\u{1f9f}' | '\u{1fa8}'..='\u{1faf}' | '\u{1fbc}' | '\u{1fcc}' | '\u{1ffc}')
}

/// Python's `str.isupper`: at least one uppercase character and no lowercase or titlecase
/// one ("GREAT!" and "A1" are upper; "1", ":)" and "Great" are not).
fn is_upper(word: &str) -> bool {
    let mut cased = false;
    for c in word.chars() {
        if c.is_lowercase() || is_titlecase(c) {
            return false;
        }
        cased |= c.is_uppercase();
    }
    cased
}

/// Strips leading and trailing ASCII punctuation (Python's `string.punctuation`) from a
/// whitespace-separated token, unless that leaves two characters or fewer: then the token is
/// probably an emoticon (":)", ":-D") and is kept whole.
fn strip_punc_if_word(token: &str) -> &str {
    let stripped = token.trim_matches(|c: char| c.is_ascii_punctuation());
    if stripped.chars().count() <= 2 {
        token
    } else {
        stripped
    }
}

/// True when `words` mixes ALL-CAPS words with others: only then is caps emphasis.
fn allcap_differential(words: &[&str]) -> bool {
    let upper = words.iter().filter(|w| is_upper(w)).count();
    upper > 0 && upper < words.len()
}

/// A negation word, or any word with "n't" in it. (The package's `negated` takes a list but
/// is only ever called with one word.)
fn negated(word_lower: &str) -> bool {
    NEGATE.contains(&word_lower) || word_lower.contains("n't")
}

/// The VADER scorer: a lexicon of token valences plus the rules.
#[derive(Clone)]
pub struct Vader {
    lexicon: HashMap<String, f64>,
}

impl fmt::Debug for Vader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vader")
            .field("lexicon_entries", &self.lexicon.len())
            .finish()
    }
}

impl Vader {
    /// Parses a lexicon in the package's format: one `token<TAB>valence[<TAB>...]` entry per
    /// line (further columns are ignored; surrounding whitespace and blank lines are skipped;
    /// a repeated token takes its last valence, as in Python). `origin` names the file in
    /// errors, which give its 1-based line number.
    pub fn from_lexicon(text: &str, origin: &Path) -> Result<Self, RewardError> {
        let bad = |line: usize, problem: String| {
            RewardError::Config(format!(
                "sentiment lexicon `{}` line {line}: {problem}",
                origin.display()
            ))
        };
        let mut lexicon = HashMap::new();
        for (index, line) in text.split('\n').enumerate() {
            let line = line.trim_matches(is_py_space);
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split('\t');
            let token = fields.next().unwrap_or("");
            let Some(measure) = fields.next() else {
                return Err(bad(
                    index + 1,
                    format!("expected `token<TAB>valence`, found {line:?}"),
                ));
            };
            let valence = measure
                .trim_matches(is_py_space)
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    bad(
                        index + 1,
                        format!("valence {measure:?} of {token:?} is not a finite number"),
                    )
                })?;
            lexicon.insert(token.to_string(), valence);
        }
        if lexicon.is_empty() {
            return Err(RewardError::Config(format!(
                "sentiment lexicon `{}` has no entries",
                origin.display()
            )));
        }
        Ok(Self { lexicon })
    }

    /// Reads a lexicon file (see [`Vader::from_lexicon`]).
    pub fn load(path: &Path) -> Result<Self, RewardError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RewardError::Config(format!(
                "sentiment lexicon `{}` could not be read: {e}",
                path.display()
            ))
        })?;
        Self::from_lexicon(&text, path)
    }

    /// The shipped lexicon: [`DEFAULT_LEXICON`] relative to the current directory, else
    /// relative to the source tree rlft was built from.
    pub fn default_path() -> PathBuf {
        let here = PathBuf::from(DEFAULT_LEXICON);
        if here.is_file() {
            return here;
        }
        let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_LEXICON);
        if built.is_file() { built } else { here }
    }

    /// Loads the shipped lexicon (see [`Vader::default_path`]).
    pub fn load_default() -> Result<Self, RewardError> {
        Self::load(&Self::default_path()).map_err(|e| {
            RewardError::Config(format!(
                "{e} (also looked in {}; pass `lexicon = \"path\"` to use another file)",
                Path::new(env!("CARGO_MANIFEST_DIR")).display()
            ))
        })
    }

    /// Number of lexicon entries.
    pub fn len(&self) -> usize {
        self.lexicon.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lexicon.is_empty()
    }

    fn valence_of(&self, word_lower: &str) -> Option<f64> {
        self.lexicon.get(word_lower).copied()
    }

    fn in_lexicon(&self, word_lower: &str) -> bool {
        self.lexicon.contains_key(word_lower)
    }

    /// VADER's `compound` score of `text`, in [-1, 1]: positive for positive text. Text
    /// without any scored word gives 0.
    pub fn compound(&self, text: &str) -> f64 {
        // Tokens: split on whitespace, strip punctuation around words (not emoticons).
        let text = text.trim_matches(is_py_space);
        let words: Vec<&str> = text
            .split(is_py_space)
            .filter(|w| !w.is_empty())
            .map(strip_punc_if_word)
            .collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
        let cap_diff = allcap_differential(&words);

        // One valence per token (0 for modifiers and unknown words), so indices line up.
        let mut sentiments = Vec::with_capacity(words.len());
        for i in 0..words.len() {
            // Boosters and "kind" of "kind of" only modify other words.
            let kind_of = lower[i] == "kind" && lower.get(i + 1).is_some_and(|w| w == "of");
            if booster(&lower[i]).is_some() || kind_of {
                sentiments.push(0.0);
                continue;
            }
            sentiments.push(self.valence(&words, &lower, i, cap_diff));
        }
        but_check(&lower, &mut sentiments);
        if sentiments.is_empty() {
            return 0.0;
        }

        // Sum left to right (as Python's `sum`), push away from 0 by "!" and "?" emphasis.
        let mut sum: f64 = sentiments.iter().sum();
        let amplifier = punctuation_emphasis(text);
        if sum > 0.0 {
            sum += amplifier;
        } else if sum < 0.0 {
            sum -= amplifier;
        }
        (sum / (sum * sum + ALPHA).sqrt()).clamp(-1.0, 1.0)
    }

    /// The valence of token `i` in context (`sentiment_valence` in the package).
    fn valence(&self, words: &[&str], lower: &[String], i: usize, cap_diff: bool) -> f64 {
        let Some(base) = self.valence_of(&lower[i]) else {
            return 0.0;
        };
        let mut valence = base;
        // "no" before a lexicon word negates it instead of counting as negative itself.
        if lower[i] == "no" && lower.get(i + 1).is_some_and(|w| self.in_lexicon(w)) {
            valence = 0.0;
        }
        // A word one or two after "no" (or three, as in "no good or nice") is negated.
        let before = |k: usize| i.checked_sub(k).map(|j| lower[j].as_str());
        if before(1) == Some("no")
            || before(2) == Some("no")
            || (before(3) == Some("no") && matches!(before(1), Some("or" | "nor")))
        {
            valence = base * N_SCALAR;
        }
        // ALL CAPS among lowercase words adds emphasis (a zero valence is pushed negative,
        // as in the package).
        if cap_diff && is_upper(words[i]) {
            valence += if valence > 0.0 { C_INCR } else { -C_INCR };
        }
        // Up to three preceding words that are not themselves lexicon words: boosters (less
        // the further away), negations, and, at distance three, idioms and "kind of".
        for start in 0..3 {
            if i <= start || self.in_lexicon(&lower[i - start - 1]) {
                continue;
            }
            let scale = [1.0, 0.95, 0.9][start];
            valence += scale * scalar_inc_dec(words[i - start - 1], valence, cap_diff);
            valence = negation_check(valence, lower, start, i);
            if start == 2 {
                valence = special_idioms(valence, lower, i);
            }
        }
        self.least_check(valence, lower, i)
    }

    /// "least X" negates X, except in "at least X" and "very least X".
    fn least_check(&self, valence: f64, lower: &[String], i: usize) -> f64 {
        let prev_is_least = i > 0 && !self.in_lexicon(&lower[i - 1]) && lower[i - 1] == "least";
        if !prev_is_least || (i > 1 && matches!(lower[i - 2].as_str(), "at" | "very")) {
            valence
        } else {
            valence * N_SCALAR
        }
    }
}

/// The shift a preceding word gives: ±0.293 for a booster/dampener (signed to push the
/// valence away from / towards 0), plus ±0.733 if the booster is in emphatic ALL CAPS.
fn scalar_inc_dec(word: &str, valence: f64, cap_diff: bool) -> f64 {
    let Some(mut scalar) = booster(&word.to_lowercase()) else {
        return 0.0;
    };
    if valence < 0.0 {
        scalar = -scalar;
    }
    if cap_diff && is_upper(word) {
        scalar += if valence > 0.0 { C_INCR } else { -C_INCR };
    }
    scalar
}

/// Negation by the word `start + 1` before `i`, with the package's exceptions: "never so X" /
/// "never this X" intensify (x1.25) instead, and "without (a) doubt X" leaves X alone. At
/// distance three the package's condition reads `never and so/this-at-2 or so/this-at-1`
/// (Python precedence), so any "so X"/"this X" three words after a non-lexicon word is
/// intensified; reproduced as is.
fn negation_check(valence: f64, lower: &[String], start: usize, i: usize) -> f64 {
    let w = |k: usize| lower[i - k].as_str();
    let so_this = |s: &str| s == "so" || s == "this";
    match start {
        0 if negated(w(1)) => valence * N_SCALAR,
        1 if w(2) == "never" && so_this(w(1)) => valence * 1.25,
        1 if w(2) == "without" && w(1) == "doubt" => valence,
        1 if negated(w(2)) => valence * N_SCALAR,
        2 if (w(3) == "never" && so_this(w(2))) || so_this(w(1)) => valence * 1.25,
        2 if w(3) == "without" && (w(2) == "doubt" || w(1) == "doubt") => valence,
        2 if negated(w(3)) => valence * N_SCALAR,
        _ => valence,
    }
}

/// Special-case phrases around word `i` (needs `i >= 3`): the first of "w1 w0", "w2 w1 w0",
/// "w2 w1", "w3 w2 w1", "w3 w2" (wk = k words back) that is a special case sets the valence,
/// then "w0 w+1" and "w0 w+1 w+2" override it; finally a dampener bigram ("kind of", "sort
/// of", "just enough") among the preceding words adds -0.293 (unsigned, as in the package).
fn special_idioms(mut valence: f64, lower: &[String], i: usize) -> f64 {
    let join = |range: std::ops::RangeInclusive<usize>| lower[range].join(" ");
    let one_zero = join(i - 1..=i);
    let two_one_zero = join(i - 2..=i);
    let two_one = join(i - 2..=i - 1);
    let three_two_one = join(i - 3..=i - 1);
    let three_two = join(i - 3..=i - 2);
    for seq in [
        &one_zero,
        &two_one_zero,
        &two_one,
        &three_two_one,
        &three_two,
    ] {
        if let Some(v) = special_case(seq) {
            valence = v;
            break;
        }
    }
    if i + 1 < lower.len()
        && let Some(v) = special_case(&join(i..=i + 1))
    {
        valence = v;
    }
    if i + 2 < lower.len()
        && let Some(v) = special_case(&join(i..=i + 2))
    {
        valence = v;
    }
    for ngram in [&three_two_one, &three_two, &two_one] {
        if let Some(b) = booster(ngram) {
            valence += b;
        }
    }
    valence
}

/// "but": valences before the first "but" are halved, those after it weighted by 1.5.
///
/// Reproduces the package's loop exactly, including its quirk: for each position it looks up
/// the *first* position holding an equal value (`list.index`) and rescales that one, so with
/// repeated valences some words are rescaled twice and others not at all.
fn but_check(lower: &[String], sentiments: &mut [f64]) {
    let Some(bi) = lower.iter().position(|w| w == "but") else {
        return;
    };
    for k in 0..sentiments.len() {
        let value = sentiments[k];
        let si = sentiments.iter().position(|&x| x == value).unwrap_or(k);
        if si < bi {
            sentiments[si] = value * 0.5;
        } else if si > bi {
            sentiments[si] = value * 1.5;
        }
    }
}

/// Emphasis from punctuation anywhere in the text: 0.292 per "!" (at most 4), and for two or
/// three "?" 0.18 each, for more 0.96.
fn punctuation_emphasis(text: &str) -> f64 {
    let exclamations = text.matches('!').count().min(4);
    let questions = text.matches('?').count();
    let qm = match questions {
        0 | 1 => 0.0,
        2 | 3 => questions as f64 * 0.18,
        _ => 0.96,
    };
    exclamations as f64 * 0.292 + qm
}

/// VADER's compound score of each completion, in [-1, 1] (1 = most positive). The prompt and
/// answer are ignored. See [`Vader`] for the algorithm.
#[derive(Clone, Debug)]
pub struct SentimentReward {
    name: String,
    vader: Arc<Vader>,
}

impl SentimentReward {
    pub fn new(vader: Arc<Vader>) -> Self {
        Self {
            name: "sentiment".into(),
            vader,
        }
    }

    /// With the lexicon at `lexicon`, or the shipped one.
    pub fn load(lexicon: Option<&Path>) -> Result<Self, RewardError> {
        let vader = match lexicon {
            Some(path) => Vader::load(path)?,
            None => Vader::load_default()?,
        };
        Ok(Self::new(Arc::new(vader)))
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn vader(&self) -> &Vader {
        &self.vader
    }
}

impl RewardSource for SentimentReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&mut self, batch: &[Completion]) -> Result<Vec<f32>, RewardError> {
        Ok(batch
            .iter()
            .map(|c| self.vader.compound(c.completion) as f32)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn vader() -> &'static Vader {
        static VADER: OnceLock<Vader> = OnceLock::new();
        VADER.get_or_init(|| Vader::load_default().expect("shipped lexicon loads"))
    }

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    #[test]
    fn matches_python_vader_on_reference_sentences() {
        let text =
            std::fs::read_to_string(repo("tests/fixtures/vader_reference.json")).expect("fixture");
        let fixture: serde_json::Value = serde_json::from_str(&text).expect("json");
        let sentences = fixture["sentences"].as_array().expect("sentences");
        assert!(sentences.len() >= 60, "{} sentences", sentences.len());
        let mut worst = (0.0f64, String::new());
        for s in sentences {
            let text = s["text"].as_str().expect("text");
            let want = s["compound"].as_f64().expect("compound");
            let got = vader().compound(text);
            assert!((-1.0..=1.0).contains(&got), "{text:?}: {got}");
            // Python rounds to 4 decimals; rounding ours must give the same number.
            let diff = ((got * 1e4).round() / 1e4 - want).abs();
            if diff > worst.0 {
                worst = (diff, text.to_string());
            }
            assert!(
                diff < 1e-3,
                "{text:?}: rlft {got:.6}, vaderSentiment {want}"
            );
        }
        assert!(
            worst.0 < 1e-9,
            "largest difference {} on {:?}",
            worst.0,
            worst.1
        );
    }

    #[test]
    fn ranks_chosen_reviews_above_rejected_ones() {
        let text = std::fs::read_to_string(repo("assets/data/sentiment_prefs_eval.jsonl"))
            .expect("eval pairs");
        let mut reward = SentimentReward::load(None).expect("loads");
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line).expect("json row");
            chosen.push(row["chosen"].as_str().expect("chosen").to_string());
            rejected.push(row["rejected"].as_str().expect("rejected").to_string());
        }
        let mut batch = |texts: &[String]| -> Vec<f32> {
            let completions: Vec<Completion> = texts
                .iter()
                .map(|t| Completion {
                    prompt: "Review:",
                    completion: t,
                    answer: None,
                })
                .collect();
            reward.score(&completions).expect("scores")
        };
        let (good, bad) = (batch(&chosen), batch(&rejected));
        let wins = good.iter().zip(&bad).filter(|(g, b)| g > b).count();
        let ties = good.iter().zip(&bad).filter(|(g, b)| g == b).count();
        // The Python package: 177 of 200 pairs ranked correctly, 7 ties (mostly 0 vs 0).
        assert_eq!(good.len(), 200);
        assert_eq!(
            (wins, ties),
            (177, 7),
            "chosen ranked higher in {wins}/200 pairs"
        );
    }

    #[test]
    fn rules_behave_as_documented() {
        let v = vader();
        let c = |t: &str| v.compound(t);
        assert_eq!(c(""), 0.0);
        assert_eq!(c("  \n "), 0.0);
        assert_eq!(c("The table is made of wood."), 0.0);
        assert!(c("good") > 0.0 && c("bad") < 0.0);
        assert!(c("not good") < 0.0, "negation flips");
        assert!(c("very good") > c("good"), "boosters amplify");
        assert!(c("barely good") < c("good"), "dampeners reduce");
        assert!(
            c("good!") > c("good") && c("good!!!!!") == c("good!!!!"),
            "at most 4 !"
        );
        assert!(c("It is GOOD here") > c("It is good here"), "caps emphasis");
        assert_eq!(c("GOOD"), c("good"), "all caps text has no emphasis");
        assert!(
            c("good but bad") < 0.0 && c("bad but good") > 0.0,
            "but shifts"
        );
        // The documented normalisation: one word of valence 1.9 ("good").
        let good = 1.9f64;
        assert!((c("good") - good / (good * good + 15.0).sqrt()).abs() < 1e-12);
        // Scores stay in [-1, 1] however long the text.
        let long = "great ".repeat(500);
        assert!(c(&long) <= 1.0 && c(&long) > 0.99);
    }

    #[test]
    fn python_string_semantics() {
        assert!(is_upper("GREAT!") && is_upper("A1") && !is_upper(":)") && !is_upper("Great"));
        assert!(!is_upper("\u{1c5}A"), "titlecase letters are not upper");
        assert_eq!(strip_punc_if_word("(great)!"), "great");
        assert_eq!(strip_punc_if_word(":)"), ":)");
        assert_eq!(strip_punc_if_word("!ok!"), "!ok!");
        assert!(is_py_space('\u{1f}') && is_py_space('\u{a0}') && !is_py_space('x'));
    }

    #[test]
    fn lexicon_errors_name_the_file_and_line() {
        let origin = Path::new("lex.txt");
        let err = Vader::from_lexicon("good\t1.9\t0.9\n\nbad -2.5\n", origin).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sentiment lexicon `lex.txt` line 3: expected `token<TAB>valence`, found \"bad -2.5\""
        );
        let err = Vader::from_lexicon("good\t1.9\r\nbad\tx\r\n", origin).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("\"x\""), "{err}");
        let err = Vader::from_lexicon("\n\r\n", origin).unwrap_err();
        assert!(err.to_string().contains("no entries"), "{err}");
        let err = SentimentReward::load(Some(Path::new("/nonexistent/vader.txt"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vader.txt"), "{err}");

        // Later duplicates win, extra columns are ignored, CRLF is fine.
        let v = Vader::from_lexicon("ok\t1.0\t0.5\t[1]\r\nok\t-2.0\r\n", origin).expect("parses");
        assert_eq!(v.len(), 1);
        assert!(v.compound("ok") < 0.0);
        assert_eq!(vader().len(), 7506);
    }

    #[test]
    fn config_parses_and_builds() {
        use super::super::{RewardConfig, SentimentConfig, build};
        #[derive(serde::Deserialize)]
        struct Wrap {
            rewards: Vec<RewardConfig>,
        }
        let parse = |text: &str| toml::from_str::<Wrap>(text).map(|w| w.rewards);
        let cfgs = parse(
            "[[rewards]]\ntype = \"sentiment\"\n[[rewards]]\ntype = \"sentiment\"\n\
             name = \"vader\"\nweight = 0.5\nlexicon = \"assets/lexicons/vader_lexicon.txt\"\n",
        )
        .expect("parses");
        assert_eq!(
            cfgs[0],
            RewardConfig::Sentiment(SentimentConfig {
                weight: 1.0,
                name: None,
                lexicon: None
            })
        );
        assert_eq!((cfgs[1].name(), cfgs[1].weight()), ("vader", 0.5));
        let mut source = build(&cfgs[0], None).expect("builds");
        assert_eq!(source.name(), "sentiment");
        let batch = [Completion {
            prompt: "",
            completion: "What a great day!",
            answer: None,
        }];
        assert!(source.score(&batch).expect("scores")[0] > 0.5);
        // The configured path is used as given (relative to the current directory).
        let missing = RewardConfig::Sentiment(SentimentConfig {
            weight: 1.0,
            name: None,
            lexicon: Some("no/such/lexicon.txt".into()),
        });
        let err = build(&missing, None).err().expect("missing lexicon");
        assert!(err.to_string().contains("no/such/lexicon.txt"), "{err}");
        assert!(parse("[[rewards]]\ntype = \"sentiment\"\nlexicn = \"x\"\n").is_err());
    }

    #[test]
    fn reward_scores_each_completion_and_takes_a_name() {
        let mut reward = SentimentReward::load(None).expect("loads").named("vader");
        assert_eq!(reward.name(), "vader");
        let batch = ["I love this!", "It is a table.", "This is awful."].map(|t| Completion {
            prompt: "Review:",
            completion: t,
            answer: None,
        });
        let got = reward.score(&batch).expect("scores");
        assert_eq!(got.len(), 3);
        assert!(got[0] > 0.5 && got[1] == 0.0 && got[2] < -0.3, "{got:?}");
    }
}
