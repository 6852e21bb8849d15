//! Learning tests: the shipped configs, trained on the shipped data with the shipped base
//! model, must reach their targets on held-out data. Slow (minutes each), so ignored by default:
//!
//!     cargo test --release --test learning -- --ignored --nocapture
//!
//! Each method has its own clearly named test functions (`rm_*`, `dpo_*`, ...), so one method
//! can be run alone, e.g. `cargo test --release --test learning -- --ignored --nocapture dpo_`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rlft::engine::config::RunConfig;
use rlft::engine::events::Event;
use rlft::engine::run::{MetricsRow, read_metrics};
use rlft::engine::session::{self, LaunchOptions};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Trains `config` (a path under the repository) to the end in a temporary runs folder and
/// returns its metrics; panics with the run's error if it fails.
fn train(config: &str) -> (Vec<MetricsRow>, f64) {
    let cfg = RunConfig::from_file(&repo(config)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        runs_root: tmp.path().to_path_buf(),
        ..Default::default()
    };
    let started = Instant::now();
    let handle = session::launch(cfg, &opts, tx).unwrap();
    let dir = handle.dir.clone();
    handle.thread.join().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    for e in rx.try_iter() {
        if let Event::Failed { error, .. } = e {
            panic!("{config}: the run failed: {error}");
        }
    }
    (read_metrics(&dir.join("metrics.jsonl")).unwrap(), seconds)
}

/// The values of `key` by step, printed as a learning curve.
fn curve(rows: &[MetricsRow], key: &str) -> Vec<(usize, f64)> {
    let points: Vec<(usize, f64)> = rows
        .iter()
        .filter_map(|r| r.values.get(key).map(|&v| (r.step, v)))
        .collect();
    let text: Vec<String> = points.iter().map(|(s, v)| format!("{s}:{v:.3}")).collect();
    eprintln!("{key}: {}", text.join(" "));
    points
}

/// The last value of a held-out accuracy curve, printed with the run time.
fn last_accuracy(rows: &[MetricsRow], key: &str, what: &str, seconds: f64) -> (f64, f64) {
    let acc = curve(rows, key);
    let (step, last) = *acc.last().unwrap_or_else(|| panic!("{key} logged"));
    eprintln!("{what}: held-out accuracy {last:.3} at step {step}, {seconds:.0} s");
    (acc[0].1, last)
}

/// Reward model (an outcome verifier) on arithmetic preferences, correct sum vs near miss:
/// held-out pair accuracy (`eval_accuracy`, 200 pairs on problems never trained on) >= 85%.
#[test]
#[ignore = "slow: trains the base model for minutes"]
fn rm_arith_heldout_pair_accuracy() {
    let (rows, seconds) = train("configs/rm_arith.toml");
    curve(&rows, "eval_loss");
    let (first, last) = last_accuracy(&rows, "eval_accuracy", "rm-arith", seconds);
    assert!(first < 0.85, "the untrained head should not already pass");
    assert!(last >= 0.85, "held-out pair accuracy {last:.3} < 0.85");
}

/// DPO on arithmetic preferences: held-out preference accuracy (`eval_rewards/accuracies`,
/// the fraction of held-out pairs whose implicit reward ranks the correct sum first) >= 90%.
#[test]
#[ignore = "slow: trains the base model for minutes"]
fn dpo_arith_heldout_preference_accuracy() {
    let (rows, seconds) = train("configs/dpo_arith.toml");
    curve(&rows, "eval_rewards/margins");
    let (_, last) = last_accuracy(&rows, "eval_rewards/accuracies", "dpo-arith", seconds);
    assert!(
        last >= 0.90,
        "held-out preference accuracy {last:.3} < 0.90"
    );
}

/// Reward model on the UCI sentiment pairs (positive review preferred). The base model saw
/// Shakespeare and sums, not modern reviews, so this is the harder set: it reaches about 80%
/// KTO on the same arithmetic set, unpaired (correct sum desirable, near miss undesirable):
/// held-out preference accuracy >= 90%, as DPO.
#[test]
#[ignore = "slow: trains the base model for minutes"]
fn kto_arith_heldout_preference_accuracy() {
    let (rows, seconds) = train("configs/kto_arith.toml");
    curve(&rows, "eval_rewards/margins");
    let (_, last) = last_accuracy(&rows, "eval_rewards/accuracies", "kto-arith", seconds);
    assert!(
        last >= 0.90,
        "held-out preference accuracy {last:.3} < 0.90"
    );
}

/// LoRA DPO (rank 16, all linear layers) on the same pairs: held-out preference accuracy >= 90%.
#[test]
#[ignore]
fn lora_dpo_arith_heldout_preference_accuracy() {
    let (rows, seconds) = train("configs/dpo_arith_lora.toml");
    let (_, last) = last_accuracy(&rows, "eval_rewards/accuracies", "dpo-arith-lora", seconds);
    assert!(
        last >= 0.90,
        "held-out preference accuracy {last:.3} < 0.90"
    );
}

/// held-out pair accuracy (the 85% target is met on arithmetic above). Checked against 75%.
#[test]
#[ignore = "slow: trains the base model for minutes"]
fn rm_sentiment_heldout_pair_accuracy() {
    let (rows, seconds) = train("configs/rm.toml");
    let (first, last) = last_accuracy(&rows, "eval_accuracy", "rm-sentiment", seconds);
    assert!(first < 0.6, "the untrained head should be near chance");
    assert!(last >= 0.75, "held-out pair accuracy {last:.3} < 0.75");
}

/// DPO on the UCI sentiment pairs: about 87% held-out preference accuracy with the shipped
/// base model (the 90% target is met on arithmetic above). Checked against 83%.
#[test]
#[ignore = "slow: trains the base model for minutes"]
fn dpo_sentiment_heldout_preference_accuracy() {
    let (rows, seconds) = train("configs/dpo.toml");
    curve(&rows, "eval_rewards/margins");
    let (_, last) = last_accuracy(&rows, "eval_rewards/accuracies", "dpo-sentiment", seconds);
    assert!(
        last >= 0.83,
        "held-out preference accuracy {last:.3} < 0.83"
    );
}

/// PPO with a learned reward: trains a small sentiment reward model first (the RM setup of
/// `rm_*` cut to 150 steps, about 70% held-out pair accuracy, so this test stays near five
/// minutes), then runs the shipped configs/ppo.toml against it for 40 steps. The reward-model
/// score of the policy's completions must rise, sampled and greedy on held-out prompts, while
/// the per-sequence KL to the base model stays near the adaptive controller's target.
#[test]
#[ignore = "slow: trains a reward model and a PPO policy for minutes"]
fn ppo_raises_reward_model_score() {
    let tmp = tempfile::tempdir().unwrap();
    let launch = |cfg: RunConfig, name: &str| -> Vec<MetricsRow> {
        let dir = tmp.path().join(name);
        let (tx, rx) = crossbeam_channel::unbounded();
        let opts = LaunchOptions {
            run_dir: Some(dir.clone()),
            ..Default::default()
        };
        let started = Instant::now();
        session::launch(cfg, &opts, tx)
            .unwrap()
            .thread
            .join()
            .unwrap();
        for e in rx.try_iter() {
            if let Event::Failed { error, .. } = e {
                panic!("{name}: the run failed: {error}");
            }
        }
        eprintln!("{name}: {:.0} s", started.elapsed().as_secs_f64());
        read_metrics(&dir.join("metrics.jsonl")).unwrap()
    };

    let rm_cfg = RunConfig::from_toml(&format!(
        "method = \"rm\"\n[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\neval = \"{}\"\n\
         [train]\nmax_steps = 150\nper_device_train_batch_size = 16\nmax_length = 128\n\
         eval_steps = 150\n[optim]\nlearning_rate = 1e-4\nlr_scheduler_type = \"cosine\"\n\
         warmup_steps = 10\n",
        repo("assets/base").display(),
        repo("assets/data/sentiment_prefs_train.jsonl").display(),
        repo("assets/data/sentiment_prefs_eval.jsonl").display(),
    ))
    .unwrap();
    let rm_rows = launch(rm_cfg, "rm");
    let rm_acc = curve(&rm_rows, "eval_accuracy").last().expect("eval").1;
    assert!(rm_acc > 0.6, "the reward model did not learn: {rm_acc:.3}");
    let rm = tmp.path().join("rm/checkpoints/final");

    // Integration tests run in the package root, where the config's relative paths resolve.
    let mut cfg = RunConfig::from_file(&repo("configs/ppo.toml")).unwrap();
    cfg.train.max_steps = 40;
    cfg.train.save_steps = 0;
    let ppo = cfg.ppo.as_mut().expect("[ppo]");
    ppo.value_model = Some(rm.clone());
    let target = ppo.adaptive_kl.as_ref().expect("adaptive KL").target;
    for r in &mut cfg.rewards {
        if let rlft::engine::reward::RewardConfig::RewardModel(c) = r {
            c.path = rm.clone();
        }
    }
    let rows = launch(cfg, "ppo");
    let values = |key: &str| -> Vec<f64> { curve(&rows, key).into_iter().map(|p| p.1).collect() };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let scores = values("objective/scores");
    let kl = values("objective/kl");
    let coef = values("objective/kl_coef");
    let eval = values("eval/reward");
    let (first, last) = (mean(&scores[..5]), mean(&scores[scores.len() - 10..]));
    let last_kl = mean(&kl[kl.len() - 10..]);
    let max_kl = kl.iter().copied().fold(f64::MIN, f64::max);
    eprintln!(
        "ppo: score {first:.3} (steps 1-5) -> {last:.3} (last 10); greedy held-out reward \
         {:.3} -> {:.3}; KL last 10 {last_kl:.2} (max {max_kl:.2}, target {target}); kl_coef \
         {:.4} -> {:.4}",
        eval[0],
        eval[eval.len() - 1],
        coef[0],
        coef[coef.len() - 1]
    );
    assert!(
        last > first + 0.2,
        "score did not rise: {first:.3} -> {last:.3}"
    );
    assert!(
        eval[eval.len() - 1] > eval[0] + 0.15,
        "held-out greedy reward did not rise: {eval:?}"
    );
    assert!(
        last_kl > 0.2 * target && last_kl < 2.0 * target && max_kl < 3.0 * target,
        "KL strayed from target {target}: last 10 mean {last_kl:.2}, max {max_kl:.2}"
    );
}

/// RLAIF with the shipped configs/rlaif.toml: SmolLM2 judges which of two review openings is
/// more positive, and online DPO trains the base model on its verdicts. The ground truth the
/// judge never sees, VADER sentiment of greedy completions for the 30 held-out prompts, must
/// rise, with the KL to the starting model reported. The mean over sampled completions
/// (temperature 1, where a 4M-parameter model stays noisy) is printed too and must not fall.
/// Needs the SmolLM2 GGUF (`bash scripts/fetch-smollm2.sh`); skipped with a notice without it.
#[test]
#[ignore = "slow: a teacher model judges pairs for minutes"]
fn rlaif_sentiment_ground_truth_rises() {
    if !repo("models/SmolLM2-135M-Instruct.Q4_1.gguf").is_file() {
        eprintln!(
            "SKIPPED: models/SmolLM2-135M-Instruct.Q4_1.gguf missing (bash scripts/fetch-smollm2.sh)"
        );
        return;
    }
    let (rows, seconds) = train("configs/rlaif.toml");
    let values = |key: &str| -> Vec<f64> { curve(&rows, key).into_iter().map(|p| p.1).collect() };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let sentiment = values("rewards/sentiment/mean");
    let eval = values("eval/rewards/sentiment/mean");
    let kl = values("objective/kl");
    let consistency = values("judge/consistency");
    let n = sentiment.len();
    assert!(n >= 20, "{n} steps logged");
    let (first, last) = (mean(&sentiment[..10]), mean(&sentiment[n - 10..]));
    eprintln!(
        "rlaif: VADER compound (sampled) {first:.3} (steps 1-10) -> {last:.3} (last 10); held-out \
         greedy {:.3} -> {:.3}; KL last 10 {:.2}; judge consistency {:.2}; {seconds:.0} s",
        eval[0],
        eval[eval.len() - 1],
        mean(&kl[kl.len() - 10..]),
        consistency.last().copied().unwrap_or(f64::NAN),
    );
    let (eval_first, eval_last) = (eval[0], eval[eval.len() - 1]);
    assert!(
        eval_last > eval_first + 0.3,
        "held-out ground truth did not rise: {eval_first:.3} -> {eval_last:.3}"
    );
    assert!(
        last >= first,
        "sampled ground truth fell: {first:.3} -> {last:.3}"
    );
}
