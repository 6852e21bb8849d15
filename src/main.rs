//! `rlft`: the command line. Each subcommand is a thin layer over the engine; training runs
//! report through engine events, which the headless printer turns into lines on stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use rlft::engine::config::RunConfig;
use rlft::engine::device::DeviceChoice;
use rlft::engine::events::{Event, LogLevel};
use rlft::engine::model::precision::Precision;
use rlft::engine::model::tokenizer::ChatMessage;
use rlft::engine::model::{self, Heads, WeightDtype, hf};
use rlft::engine::sample::{SamplingParams, SingleSequence};
use rlft::engine::session::{self, LaunchOptions};

/// The config `rlft` runs when given no subcommand.
const DEFAULT_CONFIG: &str = "configs/grpo.toml";

#[derive(Parser)]
#[command(
    name = "rlft",
    version,
    about = "A terminal workbench for fine-tuning language models with RL and preferences",
    after_help = "Examples:
  rlft                                   open the workbench (the default run, the first time)
  rlft --runs experiments/               open the workbench on another runs folder
  rlft train configs/sft.toml --headless --max-steps 20
  rlft generate --model assets/base --prompt '12+35='
  rlft generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt 'Hi!'
  rlft pretrain configs/pretrain.toml
  rlft convert models/SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-hf
  rlft serve --model models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8080
  rlft bench --model assets/base"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The runs folder the workbench shows and writes new runs to. With no runs in it yet,
    /// `rlft` starts the default run (configs/grpo.toml); otherwise it opens on the runs.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Who labels pairs in this workbench (default: the login name).
    #[arg(long, global = true)]
    annotator: Option<String>,
    /// How many people may label one pair (for agreement); stored for every labeller.
    #[arg(long, global = true)]
    labels_per_pair: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a model folder or .gguf file.
    #[command(
        after_help = "Example:\n  rlft generate --model assets/base --prompt 'ROMEO:' --temperature 0.8"
    )]
    Generate {
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter folder, merged into the model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user message in the model's chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
    },
    /// Serve a model folder or .gguf file over an OpenAI-compatible HTTP API.
    #[command(
        after_help = "Example:\n  rlft serve --model models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8080\n\n\
                      Endpoints: GET /v1/models, POST /v1/chat/completions (stream supported)."
    )]
    Serve {
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter folder, merged into the model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
        /// The model id clients see (default: the file or folder name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Train from a TOML config (see configs/).
    #[command(after_help = "Example:\n  rlft train configs/sft.toml --headless --max-steps 50")]
    Train {
        config: PathBuf,
        /// Print progress lines instead of opening the workbench.
        #[arg(long)]
        headless: bool,
        /// Run folder (default: runs/<name>, made unique).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        #[arg(long)]
        max_steps: Option<usize>,
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
        /// Continue the run in --run-dir from its newest checkpoint.
        #[arg(long, requires = "run_dir")]
        resume: bool,
        /// The runs folder new runs go to (and the workbench shows).
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// f32 or f16 (mixed precision on a GPU; f16 storage of frozen weights on the CPU),
        /// as `[train] precision`.
        #[arg(long)]
        precision: Option<Precision>,
    },
    /// Train rlft's tokenizer and a base model from scratch (configs/pretrain.toml).
    Pretrain {
        config: PathBuf,
        #[arg(long)]
        run_dir: Option<PathBuf>,
        #[arg(long)]
        max_steps: Option<usize>,
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
    },
    /// Convert a GGUF file into a Hugging Face model folder.
    Convert { gguf: PathBuf, out_dir: PathBuf },
    /// Merge a PEFT LoRA adapter into its base and write a Hugging Face model folder.
    #[command(after_help = "Example:\n  rlft merge assets/base runs/sft-lora/final merged/")]
    Merge {
        base: PathBuf,
        adapter: PathBuf,
        out_dir: PathBuf,
    },
    /// Measure train, rollout and scoring throughput and peak memory.
    #[command(after_help = "Example:\n  rlft bench --model assets/base --batch 8 --seq 128 --json")]
    Bench {
        #[arg(long, default_value = "assets/base")]
        model: PathBuf,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Completions per prompt (G) in the timed GRPO step (batch / G prompts).
        #[arg(long, default_value_t = 4)]
        generations: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
        /// Train with LoRA adapters of this rank on all linear layers (alpha = 2r), the base
        /// frozen, as a `[lora]` run does.
        #[arg(long)]
        lora_r: Option<usize>,
        /// Compute gradients layer by layer, recomputing each layer's activations in the
        /// backward pass, as `gradient_checkpointing = true` in `[train]`.
        #[arg(long)]
        gradient_checkpointing: bool,
        /// With --gradient-checkpointing, recompute only the first N decoder layers, as
        /// `gradient_checkpointing_layers = N` in `[train]`.
        #[arg(long)]
        gradient_checkpointing_layers: Option<usize>,
        /// Random weights in the shape of `--model`'s config.json (with its tokenizer.json, or
        /// assets/base's): measure a checkpoint's shape without its weights.
        #[arg(long)]
        random_weights: bool,
        /// Time only the GRPO step (other figures print as NaN).
        #[arg(long)]
        only_grpo: bool,
        /// How frozen weights are stored (the LoRA base, the reference): f32, bf16 or f16,
        /// as `[model] dtype`.
        #[arg(long, default_value = "f32")]
        dtype: WeightDtype,
        /// f32, or f16: mixed precision on a GPU (f16 products, loss scaling), as
        /// `[train] precision`; frozen weights then default to f16.
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// Measure an AI judge on preference pairs with a known answer (TRL prompt/chosen/rejected
    /// JSONL): accuracy, ties, order consistency and position bias.
    #[command(
        after_help = "Example:\n  rlft judge --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\\n    --pairs assets/data/sentiment_prefs_eval.jsonl \\\n    --principle 'Prefer the answer that is more positive.' --limit 60"
    )]
    Judge(JudgeArgs),
    /// Label waiting pairs on the command line (what the Pairs pane does, without a full-screen
    /// terminal): decisions go to RUNS/labels/labels.jsonl and preferences.jsonl.
    Label {
        /// The runs folder whose runs proposed the pairs.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Only the pairs this run proposed (its folder name).
        #[arg(long)]
        run: Option<String>,
        /// Print agreement (Cohen's kappa, Krippendorff's alpha, agreement with the judge) and
        /// how the labels fold into preferences, then exit.
        #[arg(long)]
        stats: bool,
    },
    /// Open the workbench on runs of other engines, followed live from their files: a folder
    /// of TensorBoard event files (TRL, OpenRLHF, verl), verl's file-logger JSONL (with a
    /// `rollouts/` folder of its samples beside it), or a folder TRL writes through rlft's
    /// callback (`integrations/trl/`). Metric names are mapped to rlft's, originals kept.
    Watch {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Write an rlft config as a runnable script of another engine (TRL; GRPO configs for
    /// now): TRL's names for every setting, the data, the answer checkers as Python reward
    /// functions, `[lora]` as PEFT, and NOT_CARRIED.md listing what has no equivalent.
    Export {
        config: PathBuf,
        #[arg(long, default_value = "trl")]
        engine: String,
        out: PathBuf,
    },
    /// Export a config for another engine (as `rlft export`) and run it: on this machine, as a
    /// Ray job (Ray Jobs REST API) or with Slurm's sbatch. The run folder (runs/<name>-<engine>)
    /// gets the job's metrics and samples live (rlft's TRL callback) and its checkpoints; it
    /// records the job (job.json), so `rlft` shows its state later and x stops it.
    #[command(
        after_help = "Examples:\n  rlft launch configs/grpo.toml --engine trl --on local\n  \
                      rlft launch configs/grpo.toml --on ray://10.0.0.1:8265 --python python3\n  \
                      rlft launch configs/grpo.toml --on slurm --sbatch=--gpus=8 --sbatch=--time=4:00:00\n\n\
                      Ray and Slurm jobs read the exported script and write the run folder by its absolute\n\
                      path: the runs folder must be on storage the cluster's nodes share."
    )]
    Launch {
        config: PathBuf,
        #[arg(long, default_value = "trl")]
        engine: String,
        /// local, ray://HOST:PORT (the Ray dashboard's port, 8265 by default) or slurm.
        #[arg(long, default_value = "local")]
        on: String,
        /// The Python that runs the script, where the job runs (default: $RLFT_PYTHON, or
        /// python3).
        #[arg(long)]
        python: Option<String>,
        /// One `#SBATCH` option for --on slurm (repeatable), e.g. --sbatch=--gpus=8.
        #[arg(long = "sbatch", allow_hyphen_values = true)]
        sbatch: Vec<String>,
        /// Print the job's state, metrics and samples here until it ends, instead of opening
        /// the workbench. Ctrl-C leaves the job running.
        #[arg(long, conflicts_with = "detach")]
        headless: bool,
        /// Start the job, print its run folder and exit.
        #[arg(long)]
        detach: bool,
    },
    /// Stop the job `rlft launch` started for a run folder (what x does in the workbench):
    /// SIGTERM to a local process, Ray's stop, or scancel.
    Stop {
        /// The run folder (it has job.json).
        run: PathBuf,
    },
    /// Write a run's metrics (its metrics.jsonl) as CSV, or as a TensorBoard event file in
    /// the run folder for TensorBoard and `wandb sync`.
    ExportMetrics {
        /// The run folder.
        run: PathBuf,
        /// CSV: step, wall_time and one column per metric (empty where a step lacks it).
        #[arg(long, conflicts_with = "tensorboard")]
        csv: bool,
        /// A TensorBoard event file (`events.out.tfevents.*`) in the run folder.
        #[arg(long)]
        tensorboard: bool,
        /// Where the CSV goes (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct JudgeArgs {
    /// A chat model folder or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT LoRA adapter folder, merged into the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(
        long,
        default_value = "Prefer the answer that is more helpful, correct and polite."
    )]
    principle: String,
    /// The principle's opposite: score each answer by log p(answer | principle) -
    /// log p(answer | contrast) instead of asking the model "1 or 2?" (what small models need).
    #[arg(long)]
    contrast: Option<String>,
    /// Preference pairs: JSONL with prompt, chosen and rejected.
    #[arg(long)]
    pairs: PathBuf,
    /// Judge only the first N pairs.
    #[arg(long)]
    limit: Option<usize>,
    /// Seed of the random assignment of chosen/rejected to answers a/b.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

fn main() {
    keep_freed_memory();
    rlft::engine::device::keep_kernel_caches();
    let cli = Cli::parse();
    if std::env::var_os("BURN_DEVICE").is_none() {
        // Burn puts loaded optimizer state on `Device::default()`, which would otherwise
        // start a GPU (or software Vulkan) runtime on a CPU run. Single-threaded here.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => {
            // The default run only the first time; afterwards the workbench opens on the runs
            // already there, and `n` starts another.
            let first_time = rlft::tui::store::scan_runs(&cli.runs).is_empty()
                && rlft::tui::store::external_runs(&cli.runs).is_empty();
            let configs = if first_time {
                vec![PathBuf::from(DEFAULT_CONFIG)]
            } else {
                Vec::new()
            };
            let who = Labelling {
                annotator: cli.annotator,
                labels_per_pair: cli.labels_per_pair,
            };
            workbench(configs, cli.runs, None, None, DeviceChoice::Cpu, None, who)
        }
        Some(Cmd::Generate {
            model,
            adapter,
            prompt,
            chat,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            device,
        }) => generate(
            &model,
            adapter.as_deref(),
            &prompt,
            chat,
            SamplingParams {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                stop_strings: Vec::new(),
                seed,
            },
            device,
        ),
        Some(Cmd::Serve {
            model,
            adapter,
            host,
            port,
            device,
            name,
        }) => serve(&model, adapter, host, port, device, name),
        Some(Cmd::Train {
            config,
            headless,
            run_dir,
            max_steps,
            device,
            resume,
            runs,
            precision,
        }) => {
            if headless || resume {
                train(config, runs, run_dir, max_steps, device, resume, precision)
            } else {
                let who = Labelling {
                    annotator: cli.annotator,
                    labels_per_pair: cli.labels_per_pair,
                };
                workbench(
                    vec![config],
                    runs,
                    run_dir,
                    max_steps,
                    device,
                    precision,
                    who,
                )
            }
        }
        Some(Cmd::Pretrain {
            config,
            run_dir,
            max_steps,
            device,
        }) => train(
            config,
            PathBuf::from("runs"),
            run_dir,
            max_steps,
            device,
            false,
            None,
        ),
        Some(Cmd::Convert { gguf, out_dir }) => convert(&gguf, &out_dir),
        Some(Cmd::Merge {
            base,
            adapter,
            out_dir,
        }) => merge(&base, &adapter, &out_dir),
        Some(Cmd::Bench {
            model,
            batch,
            seq,
            iters,
            generations,
            json,
            device,
            lora_r,
            gradient_checkpointing,
            gradient_checkpointing_layers,
            random_weights,
            only_grpo,
            dtype,
            precision,
        }) => bench(
            &model,
            batch,
            seq,
            iters.max(1),
            generations,
            json,
            device,
            lora_r,
            gradient_checkpointing,
            gradient_checkpointing_layers,
            random_weights,
            only_grpo,
            dtype,
            precision,
        ),
        Some(Cmd::Judge(args)) => judge(args),
        Some(Cmd::Watch { paths }) => rlft::tui::run_workbench(rlft::tui::WorkbenchOptions {
            runs_root: cli.runs,
            watch: paths,
            load_saved_runs: false,
            ..Default::default()
        }),
        Some(Cmd::Export {
            config,
            engine,
            out,
        }) => export(&config, &engine, &out),
        Some(Cmd::Launch {
            config,
            engine,
            on,
            python,
            sbatch,
            headless,
            detach,
        }) => launch(LaunchArgs {
            config: &config,
            engine: &engine,
            on: &on,
            python,
            sbatch,
            headless,
            detach,
            runs: &cli.runs,
        }),
        Some(Cmd::Stop { run }) => stop_job(&run),
        Some(Cmd::ExportMetrics {
            run,
            csv,
            tensorboard,
            out,
        }) => export_metrics(&run, csv, tensorboard, out.as_deref()),
        Some(Cmd::Label { runs, run, stats }) => label(LabelArgs {
            runs: &runs,
            only: run.as_deref(),
            annotator: cli
                .annotator
                .unwrap_or_else(rlft::engine::label_store::default_annotator),
            labels_per_pair: cli.labels_per_pair,
            stats,
        }),
    }
}

/// `rlft export-metrics`: a run's metrics.jsonl as CSV or as a TensorBoard event file.
fn export_metrics(
    run: &std::path::Path,
    csv: bool,
    tensorboard: bool,
    out: Option<&std::path::Path>,
) -> Result<()> {
    let path = run.join("metrics.jsonl");
    let rows = rlft::engine::run::read_metrics(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    if tensorboard {
        let mut w = rlft::engine::tensorboard::EventFileWriter::create(run)?;
        // The run's own clock (seconds since it started) on TensorBoard's Unix axis.
        let started = std::fs::metadata(run.join("config.toml"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        for row in &rows {
            w.scalars(
                row.step,
                started + row.wall_time,
                row.values.iter().map(|(k, v)| (k.as_str(), *v)),
            )?;
        }
        w.flush()?;
        eprintln!("{} rows -> {}", rows.len(), w.path().display());
        return Ok(());
    }
    if !csv {
        bail!("say which format: --csv or --tensorboard");
    }
    let text = rlft::engine::run::metrics_csv(&rows);
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// Tensors are large, short-lived and of repeating sizes: glibc serves each allocation over
/// its mmap threshold with a fresh mapping and unmaps it on free, so every step pays the
/// kernel to zero-fill the same buffers again (the CPU profile showed 14% in the kernel, and
/// much more with frozen weights widened per use). Serving them from the heap and keeping
/// freed memory for reuse (as PyTorch's caching allocator does) measured +23% train and +41%
/// score tokens/s at 32 x 128 on the base model, the peak RSS unchanged. Memory is not handed
/// back to the system after a peak.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called first thing, single-threaded.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// What `rlft label` is asked to do.
struct LabelArgs<'a> {
    runs: &'a std::path::Path,
    only: Option<&'a str>,
    annotator: String,
    labels_per_pair: Option<usize>,
    stats: bool,
}

/// A line-based labeller: the same store, order randomisation, holds and judge audit as the
/// Pairs pane, so several people can label one runs folder at once.
fn label(args: LabelArgs) -> Result<()> {
    use rlft::engine::agreement::Report;
    use rlft::engine::judge::Verdict;
    use rlft::engine::label_store::{LabelStore, PREFERENCES_FILE, StoreError};
    use rlft::engine::labels::{Decision, fold_to_preferences, pending_pairs};
    use std::io::BufRead;
    // The workbench's default, so a pair shows the same way round in both.
    const PAIR_SEED: u64 = 0x5eed;
    let dir = args.runs.join("labels");
    let mut store = LabelStore::open(&dir, &args.annotator)?;
    if let Some(n) = args.labels_per_pair {
        store.set_labels_per_pair(n)?;
    }
    if args.stats {
        let (rows, fold) = fold_to_preferences(store.entries());
        for line in Report::from_entries(store.entries()).lines() {
            println!("{line}");
        }
        println!(
            "preferences by majority: {} row(s); dropped {} tie(s) and {} split(s); {} label(s) per pair",
            rows.len(),
            fold.ties,
            fold.splits,
            store.labels_per_pair()
        );
        return Ok(());
    }
    let of_run = |p: &rlft::engine::labels::ProposedPair| args.only.is_none_or(|r| p.pair.run == r);
    let mut queue: std::collections::VecDeque<_> = pending_pairs(args.runs, &store.done_for_me())?
        .into_iter()
        .filter(of_run)
        .collect();
    if queue.is_empty() {
        match args.only {
            Some(r) => println!("No pairs from {r} waiting under {}.", args.runs.display()),
            None => println!("No pairs waiting under {}.", args.runs.display()),
        }
        return Ok(());
    }
    println!(
        "{} pair(s) waiting; labelling as {}. a / b: that answer is better, t tie, x both bad, \
         s skip, u undo, q quit.",
        queue.len(),
        store.annotator()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut held_elsewhere = 0;
    loop {
        // Others label the same queue: drop what they finished, skip what they hold now.
        store.refresh()?;
        let done = store.done_for_me();
        queue.retain(|p| !done.contains(&p.pair.id));
        let Some(i) =
            (0..queue.len()).find(|&i| matches!(store.lease(&queue[i].pair.id), Ok(true)))
        else {
            held_elsewhere = queue.len();
            break;
        };
        let p = queue[i].clone();
        let a_left = p.pair.a_on_left(PAIR_SEED);
        let (left, right) = if a_left {
            (&p.pair.a, &p.pair.b)
        } else {
            (&p.pair.b, &p.pair.a)
        };
        println!(
            "\nPrompt: {}\nFrom:   {}\n[A] {}\n[B] {}",
            p.pair.prompt,
            match p.pair.step() {
                Some(s) => format!("{}, step {s}", p.pair.run),
                None => p.pair.run.clone(),
            },
            left.trim(),
            right.trim()
        );
        if let Some(j) = &p.judge {
            let said = match (j.verdict, a_left) {
                (Verdict::A, true) | (Verdict::B, false) => "A better",
                (Verdict::A, false) | (Verdict::B, true) => "B better",
                (Verdict::Tie, _) => "tie",
            };
            println!("AI judge: {said}");
        } else if let Some(e) = &p.judge_error {
            println!("AI judge failed: {e}");
        }
        print!("> ");
        std::io::Write::flush(&mut std::io::stdout())?;
        let Some(line) = lines.next() else {
            store.release(&p.pair.id)?;
            break;
        };
        let decision = match line?.trim() {
            "a" | "A" => Some(if a_left { Decision::A } else { Decision::B }),
            "b" | "B" => Some(if a_left { Decision::B } else { Decision::A }),
            "t" => Some(Decision::Tie),
            "x" => Some(Decision::BothBad),
            "s" => Some(Decision::Skip),
            "u" => {
                match store.undo()? {
                    Some(entry) => {
                        println!(
                            "Undone: your {} retracted; the pair is back.",
                            entry.decision.describe()
                        );
                        store.release(&p.pair.id)?;
                        if !queue.iter().any(|q| q.pair.id == entry.pair_id)
                            && let Some(back) = pending_pairs(args.runs, &store.done_for_me())?
                                .into_iter()
                                .find(|q| q.pair.id == entry.pair_id)
                        {
                            queue.push_front(back);
                        } else if let Some(k) =
                            queue.iter().position(|q| q.pair.id == entry.pair_id)
                            && let Some(back) = queue.remove(k)
                        {
                            queue.push_front(back);
                        }
                    }
                    None => println!("Nothing of yours to undo."),
                }
                store.export()?;
                None
            }
            "q" => {
                store.release(&p.pair.id)?;
                break;
            }
            other => {
                println!("{other:?}: type a, b, t, x, s, u or q.");
                None
            }
        };
        if let Some(d) = decision {
            // Synced to disk before it is confirmed.
            match store.record(&p.pair, a_left, d, p.judge.map(|j| j.verdict)) {
                Ok(_) => println!("Saved: {}.", d.describe()),
                Err(e @ StoreError::Full { .. }) => println!("Not saved: {e}."),
                Err(e) => return Err(e.into()),
            }
            store.release(&p.pair.id)?;
            queue.retain(|q| q.pair.id != p.pair.id);
            store.export()?;
        }
    }
    if held_elsewhere > 0 {
        println!("{held_elsewhere} pair(s) are being labelled by someone else right now.");
    }
    let c = rlft::engine::labels::counters(store.entries());
    println!(
        "{} labeled, {} skipped, {} preference rows in {}",
        c.labeled,
        c.skipped,
        fold_to_preferences(store.entries()).0.len(),
        dir.join(PREFERENCES_FILE).display()
    );
    Ok(())
}

/// Who labels in a workbench, and how many labels a pair takes.
struct Labelling {
    annotator: Option<String>,
    labels_per_pair: Option<usize>,
}

/// Opens the terminal workbench on `runs_root` with `configs` started.
fn workbench(
    configs: Vec<PathBuf>,
    runs_root: PathBuf,
    run_dir: Option<PathBuf>,
    max_steps: Option<usize>,
    device: DeviceChoice,
    precision: Option<Precision>,
    who: Labelling,
) -> Result<()> {
    for c in &configs {
        // Fail before the screen switches, so the message stays readable.
        RunConfig::from_file(c)?;
    }
    rlft::tui::run_workbench(rlft::tui::WorkbenchOptions {
        autostart: configs,
        runs_root,
        run_dir,
        max_steps,
        device,
        precision,
        annotator: who.annotator,
        labels_per_pair: who.labels_per_pair,
        ..Default::default()
    })
}

fn serve(
    path: &std::path::Path,
    adapter: Option<PathBuf>,
    host: String,
    port: u16,
    device: DeviceChoice,
    name: Option<String>,
) -> Result<()> {
    use rlft::engine::serve::{ServeOptions, Server};
    let device = device.init().map_err(anyhow::Error::msg)?;
    let opts = ServeOptions {
        host,
        port,
        name,
        adapter,
    };
    let server = Server::start(path, &device, &opts)?;
    println!("serving {} on {}", server.name(), server.base_url());
    std::io::stdout().flush()?;
    server.wait();
    Ok(())
}

/// Merges `adapter` into `base` and writes the result as a Hugging Face folder (what
/// transformers loads without PEFT).
fn merge(base: &std::path::Path, adapter: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let device = DeviceChoice::Cpu.init().map_err(anyhow::Error::msg)?;
    let loaded =
        model::load_for_inference(base, Some(adapter), &device, Heads::Lm, WeightDtype::F32)?;
    model::hf::save_dir(
        out,
        &loaded.config,
        &loaded.model,
        loaded.tokenizer.as_ref(),
        loaded.generation_config.as_ref(),
    )?;
    println!(
        "merged {} into {}: {}",
        adapter.display(),
        base.display(),
        out.display()
    );
    Ok(())
}

fn generate(
    path: &std::path::Path,
    adapter: Option<&std::path::Path>,
    prompt: &str,
    chat: bool,
    params: SamplingParams,
    device: DeviceChoice,
) -> Result<()> {
    let device = device.init().map_err(anyhow::Error::msg)?;
    let loaded = model::load_for_inference(path, adapter, &device, Heads::Lm, WeightDtype::F32)?;
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .with_context(|| format!("{}: no tokenizer.json in the model folder", path.display()))?;
    let text = if chat {
        tokenizer.apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: prompt.into(),
            }],
            true,
        )?
    } else {
        prompt.to_string()
    };
    let ids = tokenizer.encode(&text, !chat)?;
    let mut eos = tokenizer.eos_ids().to_vec();
    eos.extend(loaded.config.eos_ids());
    let pad = tokenizer.pad_id().or(eos.first().copied()).unwrap_or(0);
    let max_positions = loaded.config.max_position_embeddings;
    let decoder = SingleSequence::new(loaded.model);
    let mut stdout = std::io::stdout();
    // The chat template's markup is not the user's text: a chat shows only the reply.
    if !chat {
        write!(stdout, "{prompt}")?;
    }
    // Streams the text as it grows; a token that ends inside a UTF-8 character waits for
    // the next one.
    let mut shown = String::new();
    let mut show = |tokens: &[u32]| {
        if let Ok(text) = tokenizer.decode(tokens, true)
            && let Some(new) = text.strip_prefix(shown.as_str())
            && !new.ends_with('\u{fffd}')
        {
            let _ = write!(stdout, "{new}");
            let _ = stdout.flush();
            shown = text;
        }
    };
    let started = std::time::Instant::now();
    let g = decoder.generate(
        &ids,
        &params,
        &eos,
        pad,
        Some(tokenizer),
        max_positions,
        &mut |g| {
            show(&g.tokens);
            true
        },
    );
    let secs = started.elapsed().as_secs_f64();
    let completion = tokenizer.decode(&g.tokens, true)?;
    match completion.strip_prefix(shown.as_str()) {
        Some(rest) => writeln!(std::io::stdout(), "{rest}")?,
        // Decoding more tokens rewrote text already shown (not seen with byte-level BPE):
        // print the whole completion rather than lose any of it.
        None => writeln!(std::io::stdout(), "\n{completion}")?,
    }
    eprintln!(
        "[{} tokens in {secs:.2} s, {:.1} tokens/s, ended by {}]",
        g.tokens.len(),
        g.tokens.len() as f64 / secs,
        g.finish.describe()
    );
    Ok(())
}

fn train(
    config: PathBuf,
    runs_root: PathBuf,
    run_dir: Option<PathBuf>,
    max_steps: Option<usize>,
    device: DeviceChoice,
    resume: bool,
    precision: Option<Precision>,
) -> Result<()> {
    let cfg = RunConfig::from_file(&config)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let opts = LaunchOptions {
        runs_root,
        run_dir,
        device,
        max_steps,
        resume,
        precision,
    };
    let handle = session::launch(cfg, &opts, tx)
        .with_context(|| format!("starting the run for {}", config.display()))?;
    println!("run {} -> {}", handle.id, handle.dir.display());
    let mut failed = None;
    for event in rx.iter() {
        if let Some(line) = headless_line(&event) {
            println!("{line}");
        }
        match event {
            Event::Finished { .. } => break,
            Event::Failed { error, step, .. } => {
                failed = Some(match step {
                    Some(s) => format!("step {s}: {error}"),
                    None => error,
                });
                break;
            }
            _ => {}
        }
    }
    let _ = handle.thread.join();
    match failed {
        Some(e) => bail!("run {} failed: {e}", handle.id),
        None => Ok(()),
    }
}

/// `rlft export`: writes the script and says what it wrote and what did not carry over.
fn export(config: &std::path::Path, engine: &str, out: &std::path::Path) -> Result<()> {
    let cfg = RunConfig::from_file(config)?;
    let report = export_for(engine, &cfg, config, out)?;
    for f in &report.files {
        println!("wrote {}", f.display());
    }
    for n in &report.not_carried {
        println!("not carried over: {n}");
    }
    Ok(())
}

/// `rlft stop RUN`: stops the job `rlft launch` recorded in the run folder.
fn stop_job(run: &std::path::Path) -> Result<()> {
    let job = rlft::engine::launch::Job::read(run)
        .with_context(|| {
            format!(
                "{}: no job.json: rlft launch did not start this run",
                run.display()
            )
        })?
        .map_err(anyhow::Error::msg)?;
    job.stop(run)
        .with_context(|| format!("stopping {}", job.describe()))?;
    println!("asked {} to stop", job.describe());
    Ok(())
}

/// `rlft export`'s work: the config as `engine`'s script in `out`.
fn export_for(
    engine: &str,
    cfg: &RunConfig,
    config: &std::path::Path,
    out: &std::path::Path,
) -> Result<rlft::engine::export::Exported> {
    let engine: rlft::engine::export::Engine = engine.parse().map_err(anyhow::Error::msg)?;
    // Paths in a config are relative to the folder above configs/ (the repository's root).
    let dir = config
        .parent()
        .and_then(|p| p.parent())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    rlft::engine::export::export(engine, cfg, &std::env::current_dir()?.join(dir), out)
        .map_err(anyhow::Error::msg)
}

struct LaunchArgs<'a> {
    config: &'a std::path::Path,
    engine: &'a str,
    on: &'a str,
    python: Option<String>,
    sbatch: Vec<String>,
    headless: bool,
    detach: bool,
    runs: &'a std::path::Path,
}

/// `rlft launch`: exports into `runs/<name>-<engine>/job/`, starts the job, then follows it
/// (the workbench, or lines with --headless) or leaves it (--detach).
fn launch(a: LaunchArgs) -> Result<()> {
    use rlft::engine::launch::{LaunchSpec, Target};
    let target: Target = a.on.parse()?;
    let cfg = RunConfig::from_file(a.config)?;
    let name = format!("{}-{}", cfg.name(), a.engine);
    std::fs::create_dir_all(a.runs).with_context(|| format!("creating {}", a.runs.display()))?;
    let runs = std::path::absolute(a.runs)?;
    let mut run_dir = runs.join(&name);
    let mut n = 2;
    while run_dir.exists() {
        run_dir = runs.join(format!("{name}-{n}"));
        n += 1;
    }
    let script_dir = run_dir.join("job");
    let report = export_for(a.engine, &cfg, a.config, &script_dir)?;
    if let Some(alerts) = &cfg.alerts {
        // The watcher (workbench or --headless) sends them from the job's metrics.
        let path = run_dir.join(rlft::engine::watch::ALERTS_FILE);
        std::fs::write(&path, toml::to_string(alerts)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for n in &report.not_carried {
        println!("not carried over: {n}");
    }
    let python = a
        .python
        .or_else(|| std::env::var("RLFT_PYTHON").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "python3".into());
    let spec = LaunchSpec {
        name: run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(name),
        script_dir,
        run_dir: run_dir.clone(),
        python,
        sbatch_args: a.sbatch,
        engine: Some(a.engine.to_string()),
    };
    let job = match rlft::engine::launch::launch(&spec, &target) {
        Ok(job) => job,
        Err(e) => {
            // Nothing ran: leave no run folder that looks like a run.
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(e).with_context(|| format!("launching {}", a.config.display()));
        }
    };
    println!("launched {} for {}", job.describe(), run_dir.display());
    if a.detach {
        println!("follow it with: rlft watch {}", run_dir.display());
        return Ok(());
    }
    if !a.headless {
        return rlft::tui::run_workbench(rlft::tui::WorkbenchOptions {
            runs_root: a.runs.to_path_buf(),
            watch: vec![run_dir],
            load_saved_runs: false,
            ..Default::default()
        });
    }
    follow_headless(&run_dir, &spec.name)
}

/// Prints a launched run's events until it ends; fails when the job failed.
fn follow_headless(run_dir: &std::path::Path, id: &str) -> Result<()> {
    use rlft::engine::watch::{POLL, Source, Tail};
    let source = Source::detect(run_dir).map_err(anyhow::Error::msg)?;
    let mut tail = Tail::new(source);
    let (alert_tx, alert_rx) = crossbeam_channel::unbounded();
    if let Some(cfg) = rlft::engine::watch::read_alerts(run_dir).map_err(anyhow::Error::msg)? {
        tail.alert_on(rlft::engine::alerts::Alerter::new(
            cfg, id, run_dir, alert_tx,
        ));
    }
    loop {
        for ev in tail.poll(id).into_iter().chain(alert_rx.try_iter()) {
            if let Some(line) = headless_line(&ev) {
                println!("{line}");
            }
            match ev {
                Event::Finished { .. } => return Ok(()),
                Event::Failed { error, .. } => bail!("{error}"),
                _ => {}
            }
        }
        std::thread::sleep(POLL);
    }
}

/// One progress line per event, as a headless run prints it.
fn headless_line(event: &Event) -> Option<String> {
    match event {
        Event::Started {
            method,
            total_steps,
            ..
        } => Some(format!("started {method}: {total_steps} steps")),
        Event::Metrics {
            step,
            wall_time,
            values,
            ..
        } => {
            // The metrics users watch first, then the rest in name order.
            const FIRST: [&str; 5] = ["loss", "eval_loss", "reward", "kl", "mean_token_accuracy"];
            let mut parts: Vec<String> = FIRST
                .iter()
                .filter_map(|k| values.get(*k).map(|v| format!("{k}={}", fmt_value(*v))))
                .collect();
            parts.extend(
                values
                    .iter()
                    .filter(|(k, _)| !FIRST.contains(&k.as_str()))
                    .map(|(k, v)| format!("{k}={}", fmt_value(*v))),
            );
            Some(format!("step {step} [{wall_time:.1}s] {}", parts.join(" ")))
        }
        Event::Samples { step, samples, .. } => Some(
            samples
                .iter()
                .map(|s| format!("sample@{step} {:?} -> {:?}", s.prompt, s.completion))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Event::Pairs { step, pairs, .. } => Some(format!(
            "step {step}: {} pair(s) queued for labelling in the workbench",
            pairs.len()
        )),
        Event::Log { level, message, .. } => Some(match level {
            LogLevel::Info => format!("info: {message}"),
            LogLevel::Warn => format!("warning: {message}"),
            LogLevel::Error => format!("error: {message}"),
        }),
        Event::Checkpoint { step, path, .. } => {
            Some(format!("checkpoint at step {step}: {}", path.display()))
        }
        // The run's log line already says it.
        Event::Best { .. } => None,
        Event::Finished { step, status, .. } => Some(format!(
            "{} at step {step}",
            rlft::engine::config::setting_name(status)
        )),
        // The command's error names the failure once, when the run has ended.
        Event::Failed { .. } => None,
        Event::Status { .. } => None,
        Event::Job { job, .. } => Some(match &job.detail {
            Some(d) => format!("{}: {} ({d})", job.describe, job.state),
            None => format!("{}: {}", job.describe, job.state),
        }),
    }
}

fn fmt_value(v: f64) -> String {
    // Counts (tokens, labels, steps) read as integers, not `144.0000`.
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn convert(gguf: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let ckpt = hf::Checkpoint::from_gguf(gguf)?;
    let device = DeviceChoice::Cpu.init().map_err(anyhow::Error::msg)?;
    let generation_config = ckpt.generation_config.clone();
    let loaded = ckpt.build(&device, Heads::Lm, WeightDtype::F32)?;
    hf::save_dir(
        out,
        &loaded.config,
        &loaded.model,
        loaded.tokenizer.as_ref(),
        generation_config.as_ref(),
    )?;
    println!("wrote {}", out.display());
    Ok(())
}

/// `rlft judge`: loads a model judge and prints its figures on known preference pairs.
fn judge(args: JudgeArgs) -> Result<()> {
    use rlft::engine::judge::{eval, model::ModelJudge};
    let JudgeArgs {
        model: path,
        adapter,
        principle,
        contrast,
        pairs: pairs_path,
        limit,
        seed,
        json,
        device,
    } = args;
    let mut pairs = eval::read_pairs(&pairs_path)?;
    if let Some(n) = limit {
        pairs.truncate(n);
    }
    if pairs.is_empty() {
        bail!("{}: no preference pairs", pairs_path.display());
    }
    let device = device.init().map_err(anyhow::Error::msg)?;
    let mut judge = ModelJudge::load_with_adapter(&path, adapter.as_deref(), &device)?
        .with_contrast(contrast.clone());
    let (e, _) = eval::measure(&mut judge, &principle, &pairs, seed, &mut |done, total| {
        eprint!("\rjudged {done}/{total} pairs");
    });
    eprintln!();
    if json {
        println!("{}", serde_json::to_string(&e)?);
        return Ok(());
    }
    let pct = |x: Option<f64>| x.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x));
    println!("judge              {}", path.display());
    println!("principle          {principle}");
    if let Some(c) = &contrast {
        println!("contrast           {c}");
    }
    println!("pairs              {} ({} failed)", e.pairs, e.failed);
    println!(
        "accuracy           {} ({} of {} pairs; ties count as wrong)",
        pct(e.accuracy),
        e.correct,
        e.pairs
    );
    println!(
        "decisive accuracy  {} (of {} decisive verdicts)",
        pct(e.decisive_accuracy),
        e.decisive
    );
    println!("tie rate           {}", pct(e.tie_rate));
    println!("order consistency  {}", pct(e.consistency));
    println!(
        "first-position     {} (0.5 = no position bias)",
        pct(e.first_position_rate)
    );
    if let Some(p) = e.mean_p_chosen {
        println!(
            "mean p(chosen)     {p:.3}; p-accuracy {}",
            pct(e.p_accuracy)
        );
    }
    println!(
        "seconds            {:.1} ({:.2} s/pair)",
        e.seconds,
        e.seconds / e.pairs as f64
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench(
    path: &std::path::Path,
    batch: usize,
    seq: usize,
    iters: usize,
    generations: usize,
    json: bool,
    choice: DeviceChoice,
    lora_r: Option<usize>,
    gradient_checkpointing: bool,
    gradient_checkpointing_layers: Option<usize>,
    random_weights: bool,
    only_grpo: bool,
    dtype: WeightDtype,
    precision: Precision,
) -> Result<()> {
    let device = choice.init().map_err(anyhow::Error::msg)?;
    let _mixed = model::precision::enter(precision, &device).map_err(anyhow::Error::msg)?;
    // As a run's `frozen_dtype`: f16 training stores frozen weights in f16 unless told.
    let dtype = if dtype.is_f32() && !precision.is_f32() {
        WeightDtype::F16
    } else {
        dtype
    };
    let train = rlft::engine::config::TrainSection {
        gradient_checkpointing,
        gradient_checkpointing_layers,
        ..Default::default()
    };
    let lora = lora_r.map(|r| model::lora::LoraConfig {
        r,
        lora_alpha: 2.0 * r as f64,
        ..Default::default()
    });
    let train_device = train.train_device(&device, true);
    let loaded = if random_weights {
        // Only a LoRA base is frozen, so only it is stored narrow.
        let storage = if lora.is_some() {
            dtype
        } else {
            WeightDtype::F32
        };
        let mut loaded = model::random_weights(path, &train_device, Heads::Lm, storage)?;
        if let Some(cfg) = &lora {
            loaded.model = model::lora::add_adapters(
                loaded.model,
                loaded.config.family,
                cfg,
                &path.display().to_string(),
                0,
            )
            .map_err(anyhow::Error::msg)?;
        }
        // A shape folder may hold only config.json: the GRPO step needs some tokenizer (its
        // reward reads text), and any fits, as the step's lengths are fixed in tokens.
        if loaded.tokenizer.is_none() {
            let fallback = std::path::Path::new("assets/base");
            if fallback.join("tokenizer.json").exists() {
                eprintln!(
                    "note: {} has no tokenizer.json; the GRPO step uses {}'s",
                    path.display(),
                    fallback.display()
                );
                loaded.tokenizer = Some(model::tokenizer::Tokenizer::from_dir(fallback)?);
            }
        }
        loaded
    } else {
        let frozen = dtype;
        model::load_for_run(
            path,
            None,
            lora.as_ref(),
            &train_device,
            Heads::Lm,
            0,
            frozen,
        )?
    };
    let opts = rlft::engine::bench::BenchOptions {
        batch,
        seq,
        iters,
        generations,
        only_grpo,
        recompute: train.recompute(),
        frozen_dtype: dtype,
        precision,
    };
    let name = path.display().to_string();
    let r = rlft::engine::bench::run(
        &name,
        &loaded.config,
        loaded.model,
        loaded.tokenizer.as_ref(),
        &device,
        &choice.describe(&device),
        &opts,
    );
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "model            {} ({} parameters) on {}",
            r.model, r.params, r.device
        );
        println!(
            "training         {} ({} trainable, {:.2}%)",
            r.training,
            r.trainable_params,
            100.0 * r.trainable_params as f64 / r.params.max(1) as f64
        );
        println!(
            "weights          {:.0} MB as stored (frozen weights in {}){}",
            r.weights_mb,
            r.frozen_dtype,
            if r.gradient_checkpointing {
                format!("; {} layers recomputed", r.recomputed_layers)
            } else {
                String::new()
            }
        );
        println!(
            "precision        {}{}",
            r.precision,
            match (r.precision.as_str(), r.device.starts_with("cpu")) {
                ("f16", true) => " (the CPU computes in f32; frozen weights stored in f16)",
                ("f16", false) => " (f16 products, f32 weights and AdamW, loss scaling)",
                _ => "",
            }
        );
        println!("batch x seq      {} x {}", r.batch, r.seq);
        println!(
            "train            {:>10.1} tokens/s  ({:.3} s/step, {:.1} GFLOP/s)",
            r.train_tokens_per_s, r.train_step_s, r.train_gflops
        );
        println!(
            "rollout          {:>10.1} tokens/s  ({} new tokens per row, KV cache)",
            r.rollout_tokens_per_s, r.rollout_new_tokens
        );
        println!(
            "  decode only    {:>10.1} tokens/s  (after the prompt's prefill)",
            r.decode_tokens_per_s
        );
        println!("score (no grad)  {:>10.1} tokens/s", r.score_tokens_per_s);
        if let (Some(step), Some(gen_s), Some(score_s), Some(update_s)) = (
            r.grpo_step_s,
            r.grpo_generation_s,
            r.grpo_scoring_s,
            r.grpo_update_s,
        ) {
            println!(
                "GRPO step        {step:>10.3} s  ({} prompts x {} completions of {} tokens)",
                r.grpo_prompts.unwrap_or(0),
                r.grpo_generations.unwrap_or(0),
                r.grpo_new_tokens.unwrap_or(0)
            );
            println!(
                "  generation     {gen_s:>10.3} s  ({:.0} %)",
                100.0 * gen_s / step
            );
            println!(
                "  scoring        {score_s:>10.3} s  ({:.0} %, rewards + reference log-probs)",
                100.0 * score_s / step
            );
            println!(
                "  update         {update_s:>10.3} s  ({:.0} %, forward + backward + AdamW)",
                100.0 * update_s / step
            );
        } else {
            println!("GRPO step        skipped (the model folder has no tokenizer)");
        }
        println!("peak RSS         {:>10.1} MB", r.peak_rss_mb);
        println!("threads          {:>10}", r.threads);
    }
    Ok(())
}
