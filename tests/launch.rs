//! `rlft launch` and `rlft stop` against a fake Ray Jobs server on loopback and fake Slurm
//! tools on PATH: what is submitted, how the job's state is followed, and the error paths (an
//! unreachable head, an unknown job, a failed job, a missing `sbatch`). The real Ray head and
//! TRL run in the ignored test at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use rlft::engine::events::Event;
use rlft::engine::launch::{Job, JobState, LaunchError, RayJobs};
use rlft::engine::watch::{Source, Tail};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rlft(args: &[&str], path_env: Option<&str>) -> Output {
    // `--runs` is the CLI's global option: it goes before the command.
    let mut ordered: Vec<&str> = Vec::new();
    let mut rest: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "--runs" {
            ordered.push(a);
            ordered.extend(it.next());
        } else {
            rest.push(a);
        }
    }
    ordered.extend(rest);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rlft"));
    cmd.args(ordered)
        .current_dir(root())
        .env_remove("RLFT_PYTHON");
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    cmd.output().expect("running rlft")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The one run folder under `runs`.
fn only_run(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .expect("runs")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// What the fake head was asked: method, URL and body of each request.
type Requests = Arc<Mutex<Vec<(String, String, String)>>>;

/// A fake Ray dashboard on a free loopback port. Jobs: `RUNNING` for the first two status
/// requests, then `FAILED` with a message; `/logs` ends with a Python error; unknown ids are
/// 404; `/api/jobs/broken` answers 500.
fn fake_ray() -> (String, Requests) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let port = server.server_addr().to_ip().expect("ip").port();
    let requests: Requests = Arc::default();
    let seen = requests.clone();
    std::thread::spawn(move || {
        let mut submitted: Option<String> = None;
        let mut status_calls = 0;
        for mut rq in server.incoming_requests() {
            let mut body = String::new();
            let _ = rq.as_reader().read_to_string(&mut body);
            let (method, url) = (rq.method().to_string(), rq.url().to_string());
            seen.lock()
                .expect("requests")
                .push((method.clone(), url.clone(), body.clone()));
            let job = submitted.clone().unwrap_or_default();
            let (code, reply) = match (method.as_str(), url.as_str()) {
                ("POST", "/api/jobs/") => {
                    let id = serde_json::from_str::<Value>(&body).expect("json")["submission_id"]
                        .as_str()
                        .expect("submission_id")
                        .to_string();
                    submitted = Some(id.clone());
                    (200, json!({"job_id": "raysubmit_1", "submission_id": id}))
                }
                ("GET", "/api/jobs/broken") => (500, json!({"error": "dashboard exploded"})),
                ("GET", u) if !job.is_empty() && u == format!("/api/jobs/{job}") => {
                    status_calls += 1;
                    if status_calls <= 2 {
                        (200, json!({"status": "RUNNING", "message": ""}))
                    } else {
                        (
                            200,
                            json!({"status": "FAILED", "message": "Job entrypoint command failed with exit code 1"}),
                        )
                    }
                }
                ("GET", u) if !job.is_empty() && u == format!("/api/jobs/{job}/logs") => (
                    200,
                    json!({"logs": "loading model\nTraceback (most recent call last):\nValueError: no such model"}),
                ),
                ("POST", u) if !job.is_empty() && u == format!("/api/jobs/{job}/stop") => {
                    (200, json!({"stopped": true}))
                }
                _ => (404, json!({"detail": "Job not found"})),
            };
            let _ = rq.respond(
                tiny_http::Response::from_string(reply.to_string()).with_status_code(code),
            );
        }
    });
    (format!("127.0.0.1:{port}"), requests)
}

#[test]
fn the_ray_client_names_an_unreachable_head_an_unknown_job_and_a_server_error() {
    let address = format!("http://127.0.0.1:{}", closed_port());
    let e = RayJobs::new(&address).status("x").unwrap_err();
    assert!(matches!(e, LaunchError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().contains(&address) && e.to_string().contains("ray start --head"),
        "{e}"
    );

    let (host, _) = fake_ray();
    let ray = RayJobs::new(&format!("http://{host}"));
    let e = ray.status("nope").unwrap_err();
    assert!(
        matches!(&e, LaunchError::UnknownJob { id, .. } if id == "nope"),
        "{e}"
    );
    let e = ray.status("broken").unwrap_err().to_string();
    assert!(
        e.contains("HTTP 500") && e.contains("dashboard exploded"),
        "{e}"
    );
}

/// `rlft launch --on ray://…` submits the export's entrypoint, follows the job's state and,
/// when it fails, prints Ray's message and the end of its logs and exits non-zero; `rlft
/// stop` and the watcher's stop reach `/api/jobs/{id}/stop`.
#[test]
fn launch_on_ray_submits_follows_and_reports_a_failed_job() {
    let (host, requests) = fake_ray();
    let tmp = tempfile::tempdir().expect("tmp");
    let runs = tmp.path().join("runs");
    let out = rlft(
        &[
            "launch",
            "configs/grpo_lora.toml",
            "--on",
            &format!("ray://{host}"),
            "--headless",
            "--python",
            "/opt/venv/bin/python",
            "--runs",
            runs.to_str().expect("utf-8"),
        ],
        None,
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    let run = only_run(&runs);
    for want in [
        "launched ray job rlft-grpo-arith-lora-trl-",
        ": running",
        "Job entrypoint command failed with exit code 1",
        "ValueError: no such model",
    ] {
        assert!(said.contains(want), "{want:?} missing from:\n{said}");
    }
    let Some(Ok(Job::Ray {
        address,
        submission_id,
    })) = Job::read(&run)
    else {
        panic!("job.json: {:?}", Job::read(&run));
    };
    assert_eq!(address, format!("http://{host}"));
    let submit = requests.lock().expect("requests")[0].clone();
    assert_eq!(
        (submit.0.as_str(), submit.1.as_str()),
        ("POST", "/api/jobs/")
    );
    let body: Value = serde_json::from_str(&submit.2).expect("json");
    assert_eq!(body["submission_id"], submission_id.as_str());
    let entrypoint = body["entrypoint"].as_str().expect("entrypoint");
    assert_eq!(
        entrypoint,
        format!(
            "cd {} && /opt/venv/bin/python train.py --out {}",
            run.join("job").display(),
            run.display()
        )
    );
    assert!(run.join("job/train.py").is_file());

    // x in the workbench: the watcher's stop.
    let mut tail = Tail::new(Source::detect(&run).expect("source"));
    assert!(tail.stop_job().expect("stop").contains(&submission_id));
    // rlft stop RUN does the same.
    let out = rlft(&["stop", run.to_str().expect("utf-8")], None);
    assert!(out.status.success(), "{}", text(&out));
    let stops = requests
        .lock()
        .expect("requests")
        .iter()
        .filter(|(m, u, _)| m == "POST" && *u == format!("/api/jobs/{submission_id}/stop"))
        .count();
    assert_eq!(stops, 2);
}

#[test]
fn launch_on_an_unreachable_ray_head_says_so_and_leaves_no_run_folder() {
    let port = closed_port();
    let tmp = tempfile::tempdir().expect("tmp");
    let runs = tmp.path().join("runs");
    let out = rlft(
        &[
            "launch",
            "configs/grpo_lora.toml",
            "--on",
            &format!("ray://127.0.0.1:{port}"),
            "--detach",
            "--runs",
            runs.to_str().expect("utf-8"),
        ],
        None,
    );
    let said = text(&out);
    assert!(!out.status.success());
    assert!(
        said.contains("unreachable") && said.contains(&format!("127.0.0.1:{port}")),
        "{said}"
    );
    assert_eq!(std::fs::read_dir(&runs).expect("runs").count(), 0);
    let out = rlft(&["launch", "configs/grpo_lora.toml", "--on", "k8s"], None);
    assert!(text(&out).contains("--on k8s: expected local, slurm or ray://HOST:PORT"));
}

/// Fake `sbatch`, `squeue`, `sacct` and `scancel` in `bin`: sbatch records its script and
/// answers job 4242; squeue says RUNNING twice, then nothing (the job left the queue); sacct
/// says COMPLETED; scancel records its argument.
fn fake_slurm(bin: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let log = bin.join("calls");
    let tools = [
        (
            "sbatch",
            format!(
                "#!/bin/sh\necho \"sbatch $*\" >> {log}\ncp \"$2\" {bin}/submitted.sbatch\necho '4242;cluster'\n",
                log = log.display(),
                bin = bin.display()
            ),
        ),
        (
            "squeue",
            format!(
                "#!/bin/sh\necho \"squeue $*\" >> {log}\nn=$(grep -c squeue {log})\nif [ \"$n\" -le 2 ]; then echo RUNNING; fi\n",
                log = log.display()
            ),
        ),
        (
            "sacct",
            format!(
                "#!/bin/sh\necho \"sacct $*\" >> {log}\necho COMPLETED\n",
                log = log.display()
            ),
        ),
        (
            "scancel",
            format!(
                "#!/bin/sh\necho \"scancel $*\" >> {log}\n",
                log = log.display()
            ),
        ),
    ];
    for (name, script) in tools {
        let p = bin.join(name);
        std::fs::write(&p, script).expect("write tool");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn launch_on_slurm_writes_the_batch_script_follows_squeue_then_sacct_and_scancels() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    fake_slurm(&bin);
    let runs = tmp.path().join("runs");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let out = rlft(
        &[
            "launch",
            "configs/grpo_lora.toml",
            "--on",
            "slurm",
            "--headless",
            "--sbatch=--gpus=8",
            "--sbatch=--partition=a100",
            "--runs",
            runs.to_str().expect("utf-8"),
        ],
        Some(&path),
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("slurm job 4242: running"), "{said}");
    assert!(said.contains("finished at step 0"), "{said}");
    let run = only_run(&runs);
    let script = std::fs::read_to_string(bin.join("submitted.sbatch")).expect("script");
    for want in [
        "#SBATCH --job-name=grpo-arith-lora-trl\n".to_string(),
        format!("#SBATCH --output={}\n", run.join("job.log").display()),
        "#SBATCH --gpus=8\n#SBATCH --partition=a100\n".into(),
        format!(
            "cd {}\nexec python3 train.py --out {}\n",
            run.join("job").display(),
            run.display()
        ),
    ] {
        assert!(script.contains(&want), "{want:?} missing from:\n{script}");
    }
    let calls = std::fs::read_to_string(bin.join("calls")).expect("calls");
    assert!(calls.contains("sbatch --parsable"), "{calls}");
    assert!(calls.contains("sacct -n -X -P -j 4242 -o State"), "{calls}");
    assert_eq!(
        Job::read(&run).expect("job").expect("parses"),
        Job::Slurm {
            job_id: "4242".into()
        }
    );
    let out = rlft(&["stop", run.to_str().expect("utf-8")], Some(&path));
    assert!(out.status.success(), "{}", text(&out));
    let calls = std::fs::read_to_string(bin.join("calls")).expect("calls");
    assert!(calls.contains("scancel 4242"), "{calls}");
}

#[test]
fn launch_on_slurm_without_sbatch_says_what_is_missing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let runs = tmp.path().join("runs");
    let out = rlft(
        &[
            "launch",
            "configs/grpo_lora.toml",
            "--on",
            "slurm",
            "--detach",
            "--runs",
            runs.to_str().expect("utf-8"),
        ],
        Some(empty.to_str().expect("utf-8")),
    );
    let said = text(&out);
    assert!(!out.status.success());
    assert!(
        said.contains("`sbatch` was not found on PATH") && said.contains("Slurm login node"),
        "{said}"
    );
    assert_eq!(std::fs::read_dir(&runs).expect("runs").count(), 0);
}

/// A local job that fails: the watcher reports the job's state, the end of its output in the
/// Log pane and the run as failed at its last step.
#[test]
fn a_failed_local_job_fails_the_watched_run_with_its_output() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("tmp");
    let python = tmp.path().join("python");
    std::fs::write(
        &python,
        "#!/bin/sh\necho '{\"step\": 1, \"wall_time\": 0.1, \"reward\": 0.25}' >> \"$3/metrics.jsonl\"\necho 'CUDA out of memory' >&2\nexit 1\n",
    )
    .expect("write");
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let runs = tmp.path().join("runs");
    let out = rlft(
        &[
            "launch",
            "configs/grpo_lora.toml",
            "--detach",
            "--python",
            python.to_str().expect("utf-8"),
            "--runs",
            runs.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let run = only_run(&runs);
    let mut tail = Tail::new(Source::detect(&run).expect("source"));
    let mut events = Vec::new();
    for _ in 0..100 {
        events.extend(tail.poll("r"));
        if events.iter().any(|e| matches!(e, Event::Failed { .. })) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let failed = events.iter().find_map(|e| match e {
        Event::Failed { step, error, .. } => Some((*step, error.clone())),
        _ => None,
    });
    let (step, error) = failed.expect("the run failed");
    assert_eq!(step, Some(1));
    assert!(error.contains("exited with status 1"), "{error}");
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Log { message, .. } if message.contains("CUDA out of memory"))
        ),
        "{events:?}"
    );
    let job = Job::read(&run).expect("job").expect("parses");
    assert!(matches!(job.state(&run), Ok(JobState::Failed(_))));
}

/// Runs `rlft launch` of a 6-step TRL GRPO export (`configs/grpo_lora.toml`, 16 completions a
/// step) on `target` with `--detach`, and follows the run folder as the workbench does:
/// metrics and samples must arrive while the job runs, then its final checkpoint, which rlft
/// then generates with (the adapter on the base model). Returns the worst delay between the
/// callback writing `metrics.jsonl` and rlft reading it.
fn launch_and_follow(work: &Path, python: &str, target: &str) -> std::time::Duration {
    use std::time::{Duration, Instant, SystemTime};
    let out = Command::new(env!("CARGO_BIN_EXE_rlft"))
        .args(["--runs", "runs", "launch", "configs/g6.toml", "--detach"])
        .args(["--on", target, "--python", python])
        .current_dir(work)
        .output()
        .expect("rlft launch");
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    let run = PathBuf::from(
        said.lines()
            .find_map(|l| {
                l.split(" for ")
                    .nth(1)
                    .filter(|_| l.starts_with("launched"))
            })
            .expect("run folder"),
    );
    let job = Job::read(&run).expect("job.json").expect("parses");
    let mut tail = Tail::new(Source::detect(&run).expect("source"));
    // TRL's own TensorBoard events (output_dir/runs/...), followed beside the callback's.
    let mut tensorboard = Tail::new(Source::TensorBoard(run.join("runs")));
    let mut worst_tensorboard = Duration::ZERO;
    let (mut live_metrics, mut live_samples, mut checkpoint) = (0, 0, None);
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    loop {
        let running = job.state(&run).expect("job state") == JobState::Running;
        for ev in tensorboard.poll("tb") {
            if matches!(ev, Event::Metrics { .. }) {
                let newest = rlft::engine::tensorboard::event_files(&run.join("runs"))
                    .iter()
                    .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                    .max()
                    .expect("an event file");
                let delay = SystemTime::now().duration_since(newest).unwrap_or_default();
                worst_tensorboard = worst_tensorboard.max(delay);
            }
        }
        for ev in tail.poll("trl") {
            match ev {
                Event::Metrics { .. } => {
                    let written = std::fs::metadata(run.join("metrics.jsonl"))
                        .and_then(|m| m.modified())
                        .expect("mtime");
                    let delay = SystemTime::now()
                        .duration_since(written)
                        .unwrap_or_default();
                    worst = worst.max(delay);
                    live_metrics += usize::from(running);
                }
                Event::Samples { samples, .. } => {
                    assert!(
                        samples
                            .iter()
                            .all(|s| s.rewards.contains_key("exact_match"))
                    );
                    live_samples += usize::from(running);
                }
                Event::Checkpoint { path, .. } => checkpoint = Some(path),
                Event::Failed { error, .. } => panic!("{target}: {error}"),
                Event::Finished { .. } if checkpoint.is_some() => {
                    assert!(
                        live_metrics >= 3 && live_samples >= 3,
                        "{target}: {live_metrics} metrics and {live_samples} sample events seen while running"
                    );
                    let ckpt = checkpoint.expect("checkpoint");
                    assert!(ckpt.ends_with("checkpoint-6"), "{ckpt:?}");
                    let out = rlft(
                        &["generate", "--model", "assets/base", "--adapter"]
                            .into_iter()
                            .chain([
                                ckpt.to_str().expect("utf-8"),
                                "--prompt",
                                "12+30=",
                                "--max-new-tokens",
                                "4",
                            ])
                            .collect::<Vec<_>>(),
                        None,
                    );
                    assert!(out.status.success(), "{}", text(&out));
                    // ... and as the start of a new rlft run: 2 GRPO steps on the adapter.
                    let config = std::fs::read_to_string(root().join("configs/grpo.toml"))
                        .expect("config")
                        .replace(
                            "path = \"assets/base\"",
                            &format!(
                                "path = \"assets/base\"\nadapter = {:?}",
                                ckpt.display().to_string()
                            ),
                        )
                        .replace("max_steps = 600", "max_steps = 2");
                    let cfg_path = work.join("configs/from_trl.toml");
                    std::fs::write(&cfg_path, config).expect("write");
                    let trained = Command::new(env!("CARGO_BIN_EXE_rlft"))
                        .args([
                            "--runs",
                            "runs",
                            "train",
                            "configs/from_trl.toml",
                            "--headless",
                        ])
                        .current_dir(work)
                        .output()
                        .expect("rlft train");
                    assert!(trained.status.success(), "{}", text(&trained));
                    assert!(text(&trained).contains("step 2"), "{}", text(&trained));
                    eprintln!(
                        "{target}: {live_metrics} metrics rows and {live_samples} sample batches seen while the job ran; worst delay {worst:?} (callback), {worst_tensorboard:?} (TensorBoard events after their flush); generate: {}",
                        String::from_utf8_lossy(&out.stdout).trim()
                    );
                    return worst;
                }
                _ => {}
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{target}: no end in 10 minutes"
        );
        std::thread::sleep(rlft::engine::watch::POLL);
    }
}

/// A real TRL GRPOTrainer launched by `rlft launch`, as a local process and as a job on a real
/// Ray head on loopback. `RLFT_PYTHON` must have torch, transformers, trl, peft, datasets and
/// `ray[default]` (its `ray` command beside it).
#[test]
#[ignore = "needs RLFT_PYTHON with trl, peft, datasets and ray[default]"]
fn real_trl_grpo_launched_locally_and_as_a_ray_job() {
    let python = std::env::var("RLFT_PYTHON").expect("RLFT_PYTHON");
    let ray = Path::new(&python).with_file_name("ray");
    let work = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(work.path().join("configs")).expect("configs");
    std::os::unix::fs::symlink(root().join("assets"), work.path().join("assets")).expect("link");
    let config = std::fs::read_to_string(root().join("configs/grpo_lora.toml"))
        .expect("config")
        .replace("max_steps = 600", "max_steps = 6")
        .replace(
            "per_device_train_batch_size = 64",
            "per_device_train_batch_size = 16",
        );
    std::fs::write(work.path().join("configs/g6.toml"), config).expect("write");

    let local = launch_and_follow(work.path(), &python, "local");

    let (gcs, dashboard) = (closed_port(), closed_port());
    let started = Command::new(&ray)
        .args(["start", "--head", "--port", &gcs.to_string()])
        .args([
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            &dashboard.to_string(),
        ])
        .args([
            "--include-dashboard",
            "true",
            "--num-cpus",
            "2",
            "--disable-usage-stats",
        ])
        .output()
        .expect("ray start");
    assert!(started.status.success(), "{}", text(&started));
    let on_ray = std::panic::catch_unwind(|| {
        launch_and_follow(
            work.path(),
            &python,
            &format!("ray://127.0.0.1:{dashboard}"),
        )
    });
    let _ = Command::new(&ray).args(["stop", "--force"]).output();
    let on_ray = on_ray.expect("the Ray job");
    eprintln!("worst metric delay: local {local:?}, ray {on_ray:?}");
    assert!(local.max(on_ray) < std::time::Duration::from_secs(2));
}

/// A launched verl export is followed from what verl writes: its file logger's `verl.jsonl`
/// (names mapped: `critic/score/mean` is `reward`), its rollout dumps as samples, its
/// `global_step_N` checkpoints, and the job's end. The "engine" here is a `run.sh` that
/// writes those files as verl 0.9 does.
#[test]
fn a_launched_verl_run_is_followed_from_its_logs() {
    use rlft::engine::launch::{LaunchSpec, Target, launch};
    let tmp = tempfile::tempdir().expect("tmp");
    let script_dir = tmp.path().join("job");
    std::fs::create_dir_all(&script_dir).expect("dir");
    std::fs::write(
        script_dir.join("run.sh"),
        r#"set -e
[ "$1" = "--out" ] && OUT="$2"
mkdir -p "$OUT/rollouts" "$OUT/checkpoints/global_step_2/actor" "$OUT/final"
echo '{}' > "$OUT/final/config.json"
for s in 1 2; do
  echo "{\"step\": $s, \"data\": {\"critic/score/mean\": 0.$s, \"actor/pg_loss\": -0.0$s}}" >> "$OUT/verl.jsonl"
  echo "{\"input\": \"82+97=\", \"output\": \"179\", \"gts\": \"179\", \"score\": 1.0, \"step\": $s}" > "$OUT/rollouts/$s.jsonl"
done
"#,
    )
    .expect("write");
    let run_dir = tmp.path().join("run");
    let spec = LaunchSpec {
        name: "grpo-verl".into(),
        script_dir,
        run_dir: run_dir.clone(),
        python: "python3".into(),
        sbatch_args: vec![],
        engine: Some("verl".into()),
    };
    launch(&spec, &Target::Local).expect("launch");
    let source = Source::detect(&run_dir).expect("source");
    assert!(matches!(source, Source::VerlJsonl { .. }), "{source:?}");
    let mut tail = Tail::new(source);
    let mut events = Vec::new();
    for _ in 0..100 {
        events.extend(tail.poll("grpo-verl"));
        if events.iter().any(|e| matches!(e, Event::Finished { .. })) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rewards: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics { values, .. } => values.get("reward").copied(),
            _ => None,
        })
        .collect();
    assert_eq!(rewards, vec![0.1, 0.2], "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Samples { samples, .. } if samples[0].completion == "179"))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Checkpoint { step: 2, .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Job { job, .. } if job.state == "succeeded"))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Finished { step: 2, .. })),
        "{events:?}"
    );
}

/// What `x` does to a launched run, through the real engine link: `Stop` to a watched run
/// stops its job (here a local process), and the job's end comes back as the run's.
#[test]
fn stop_to_a_watched_run_stops_its_local_job() {
    use rlft::engine::events::{Command as RunCommand, RunStatus};
    use rlft::engine::launch::{LaunchSpec, Target, launch};
    use rlft::tui::engine_link::{Engine as _, SessionEngine};
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("tmp");
    let sleeper = tmp.path().join("python");
    std::fs::write(&sleeper, "#!/bin/sh\nsleep 60\n").expect("write");
    std::fs::set_permissions(&sleeper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let run_dir = tmp.path().join("runs/slow-trl");
    let spec = LaunchSpec {
        name: "slow-trl".into(),
        script_dir: tmp.path().to_path_buf(),
        run_dir: run_dir.clone(),
        python: sleeper.display().to_string(),
        sbatch_args: vec![],
        engine: Some("trl".into()),
    };
    let job = launch(&spec, &Target::Local).expect("launch");
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut engine = SessionEngine::new(
        tx,
        tmp.path().join("runs"),
        rlft::engine::device::DeviceChoice::Cpu,
    );
    assert_eq!(engine.watch(&run_dir, "slow-trl").expect("watch"), "trl");
    let mut seen = Vec::new();
    let wait_for = |what: &dyn Fn(&Event) -> bool, seen: &mut Vec<Event>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(ev) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                let hit = what(&ev);
                seen.push(ev);
                if hit {
                    return;
                }
            }
        }
        panic!("not seen: {seen:?}");
    };
    wait_for(
        &|e| matches!(e, Event::Job { job, .. } if job.state == "running"),
        &mut seen,
    );
    engine.send("slow-trl", RunCommand::Stop).expect("stop");
    wait_for(
        &|e| {
            matches!(
                e,
                Event::Finished {
                    status: RunStatus::Stopped,
                    ..
                }
            )
        },
        &mut seen,
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Job { job, .. } if job.state == "stopped"))
    );
    assert!(seen.iter().any(
        |e| matches!(e, Event::Log { message, .. } if message.starts_with("stopping local process"))
    ));
    assert_eq!(job.state(&run_dir).expect("state"), JobState::Stopped);
    // Pause is rlft's own: a watched run says so.
    let e = engine.send("slow-trl", RunCommand::Pause).unwrap_err();
    assert!(e.to_string().contains("can only stop its job"), "{e}");
}
