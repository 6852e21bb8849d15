//! `rlft launch`: an exported config run by another engine, on this machine (a child
//! process), on a Ray cluster (the Ray Jobs REST API) or on Slurm (`sbatch`). The job is
//! recorded in the run folder (`job.json`), so any rlft that opens the folder later can follow
//! the job's state and stop it; the run's metrics and samples arrive through the folder as for
//! any watched run.
//!
//! Ray and Slurm jobs read and write the run folder by its absolute path: the folder must be
//! on storage the cluster's nodes share (as verl's and OpenRLHF's logs must be).

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

/// The file in a run folder that names its job.
pub const JOB_FILE: &str = "job.json";
/// A local job's exit status, written by its shell when the process ends.
const EXIT_FILE: &str = "job.exit";
/// Written before a local job is stopped, so its end reads as stopped, not failed.
const STOPPED_FILE: &str = "job.stopped";
/// The job's standard output and error (local and Slurm jobs).
pub const LOG_FILE: &str = "job.log";
/// How long a Ray Jobs request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "the Ray head at {address} is unreachable: {reason} (is `ray start --head` running, with its dashboard on that port?)"
    )]
    Unreachable { address: String, reason: String },
    #[error("Ray job {id} is not known to the head at {address} (HTTP 404)")]
    UnknownJob { address: String, id: String },
    #[error("the Ray head at {address} answered {what} with HTTP {status}: {body}")]
    Http {
        address: String,
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("the Ray head at {address} sent a reply rlft cannot read ({what}): {body}")]
    BadReply {
        address: String,
        what: &'static str,
        body: String,
    },
    #[error("`{program}` was not found on PATH: {why}")]
    MissingProgram { program: String, why: &'static str },
    #[error("`{command}` failed: {output}")]
    CommandFailed { command: String, output: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--on {0}: expected local, slurm or ray://HOST:PORT")]
    BadTarget(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local,
    /// The Ray dashboard's HTTP address, e.g. `http://127.0.0.1:8265`.
    Ray(String),
    Slurm,
}

impl std::str::FromStr for Target {
    type Err = LaunchError;

    /// `local`, `slurm`, or `ray://HOST:PORT` (`http://HOST:PORT` is taken too; Ray's CLI
    /// takes both forms for `--address`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Target::Local),
            "slurm" => Ok(Target::Slurm),
            _ => {
                let rest = s
                    .strip_prefix("ray://")
                    .or_else(|| s.strip_prefix("http://"))
                    .filter(|r| !r.is_empty() && !r.contains('/'))
                    .ok_or_else(|| LaunchError::BadTarget(s.to_string()))?;
                let host_port = if rest.contains(':') {
                    rest.to_string()
                } else {
                    format!("{rest}:8265")
                };
                Ok(Target::Ray(format!("http://{host_port}")))
            }
        }
    }
}

/// What a job is, as `job.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "lowercase")]
pub enum Job {
    /// A child process in its own process group (`pid` leads it).
    Local {
        pid: u32,
        command: String,
        /// When the process started (Linux: clock ticks since boot), so a later process that
        /// got the same pid is not taken for the job.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started: Option<u64>,
    },
    Ray {
        address: String,
        submission_id: String,
    },
    Slurm {
        job_id: String,
    },
}

/// A job's state, in the words its launcher uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed(String),
    Stopped,
}

impl JobState {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed(_) | JobState::Stopped
        )
    }

    /// One word for the Runs pane.
    pub fn word(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed(_) => "failed",
            JobState::Stopped => "stopped",
        }
    }
}

impl Job {
    /// `job.json` of `run_dir`, if it has one.
    pub fn read(run_dir: &Path) -> Option<Result<Job, String>> {
        let path = run_dir.join(JOB_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        Some(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())))
    }

    pub fn write(&self, run_dir: &Path) -> Result<(), LaunchError> {
        self.write_for(run_dir, None)
    }

    /// Writes `job.json`, with the engine that runs it (what the watcher reads).
    pub fn write_for(&self, run_dir: &Path, engine: Option<&str>) -> Result<(), LaunchError> {
        let path = run_dir.join(JOB_FILE);
        let tmp = run_dir.join("job.json.tmp");
        let mut value = serde_json::to_value(self).expect("a job serialises");
        if let (Some(e), Some(obj)) = (engine, value.as_object_mut()) {
            obj.insert("engine".into(), e.into());
        }
        let text = serde_json::to_string_pretty(&value).expect("a job serialises");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The engine `job.json` names (trl, verl, openrlhf), if any.
    pub fn engine(run_dir: &Path) -> Option<String> {
        let text = std::fs::read_to_string(run_dir.join(JOB_FILE)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v.get("engine")?.as_str().map(str::to_string)
    }

    /// "ray job rlft-x at http://…", "slurm job 42", "local process 1234".
    pub fn describe(&self) -> String {
        match self {
            Job::Local { pid, .. } => format!("local process {pid}"),
            Job::Ray {
                address,
                submission_id,
            } => format!("ray job {submission_id} at {address}"),
            Job::Slurm { job_id } => format!("slurm job {job_id}"),
        }
    }

    /// The process to show in the System view (local jobs only).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Job::Local { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// Asks the launcher for the job's state.
    pub fn state(&self, run_dir: &Path) -> Result<JobState, LaunchError> {
        match self {
            Job::Local { pid, started, .. } => Ok(local_state(*pid, *started, run_dir)),
            Job::Ray {
                address,
                submission_id,
            } => RayJobs::new(address).status(submission_id),
            Job::Slurm { job_id } => slurm_state(job_id),
        }
    }

    /// Stops the job: SIGTERM to a local process group, Ray's stop, or `scancel`.
    pub fn stop(&self, run_dir: &Path) -> Result<(), LaunchError> {
        match self {
            Job::Local { pid, started, .. } => {
                let marker = run_dir.join(STOPPED_FILE);
                std::fs::write(&marker, b"").map_err(io(&marker))?;
                if !local_alive(*pid, *started) {
                    // Ended already (or its pid is another process's now): nothing to signal.
                    return Ok(());
                }
                let pgid = i32::try_from(*pid).unwrap_or(i32::MAX);
                // SAFETY: kill(2) on a process group rlft started; no memory is shared.
                let r = unsafe { libc::kill(-pgid, libc::SIGTERM) };
                if r != 0 && local_alive(*pid, *started) {
                    return Err(LaunchError::CommandFailed {
                        command: format!("kill -TERM -{pid}"),
                        output: std::io::Error::last_os_error().to_string(),
                    });
                }
                Ok(())
            }
            Job::Ray {
                address,
                submission_id,
            } => RayJobs::new(address).stop(submission_id),
            Job::Slurm { job_id } => run_tool(
                "scancel",
                &[job_id.as_str()],
                "stopping a Slurm job needs scancel",
            )
            .map(|_| ()),
        }
    }

    /// The end of the job's output, for a failed job's message.
    pub fn log_tail(&self, run_dir: &Path, lines: usize) -> Option<String> {
        let text = match self {
            Job::Ray {
                address,
                submission_id,
            } => RayJobs::new(address).logs(submission_id).ok()?,
            _ => std::fs::read_to_string(run_dir.join(LOG_FILE)).ok()?,
        };
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        (!tail.is_empty()).then_some(tail)
    }
}

/// Everything a launch needs: the exported script's folder, the run folder the job writes
/// (TRL's `output_dir`, and where the callback writes metrics), and the Python to run.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub name: String,
    pub script_dir: PathBuf,
    pub run_dir: PathBuf,
    pub python: String,
    /// Extra `#SBATCH` lines' arguments, e.g. `--gpus=8`, `--partition=a100`.
    pub sbatch_args: Vec<String>,
    /// The engine the export is for (trl, verl, openrlhf), recorded in `job.json`.
    pub engine: Option<String>,
}

impl LaunchSpec {
    /// The command line the job runs, from the script's folder.
    fn command(&self) -> String {
        let out = shell_quote(&self.run_dir.to_string_lossy());
        if self.script_dir.join("run.sh").is_file() {
            // verl's and OpenRLHF's exports: a shell script that runs the engine's module.
            format!(
                "PYTHON={} bash run.sh --out {out}",
                shell_quote(&self.python)
            )
        } else {
            format!("{} train.py --out {out}", shell_quote(&self.python))
        }
    }
}

/// Starts the job and records it in `run_dir/job.json`.
pub fn launch(spec: &LaunchSpec, target: &Target) -> Result<Job, LaunchError> {
    std::fs::create_dir_all(&spec.run_dir).map_err(io(&spec.run_dir))?;
    let job = match target {
        Target::Local => launch_local(spec)?,
        Target::Ray(address) => {
            let id = submission_id(&spec.name);
            let entrypoint = format!(
                "cd {} && {}",
                shell_quote(&spec.script_dir.to_string_lossy()),
                spec.command()
            );
            RayJobs::new(address).submit(&id, &entrypoint, &spec.run_dir)?;
            Job::Ray {
                address: address.clone(),
                submission_id: id,
            }
        }
        Target::Slurm => launch_slurm(spec)?,
    };
    job.write_for(&spec.run_dir, spec.engine.as_deref())?;
    Ok(job)
}

fn launch_local(spec: &LaunchSpec) -> Result<Job, LaunchError> {
    use std::os::unix::process::CommandExt as _;
    let log_path = spec.run_dir.join(LOG_FILE);
    let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
    let err = log.try_clone().map_err(io(&log_path))?;
    // The shell writes the exit status where any later rlft finds it, even when this process
    // has gone.
    let command = spec.command();
    let script = format!(
        "{command}; echo $? > {}",
        shell_quote(&spec.run_dir.join(EXIT_FILE).to_string_lossy())
    );
    let mut child = Process::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&spec.script_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: `x` stops the shell and Python together, and Ctrl-C in
        // rlft's terminal does not reach the job.
        .process_group(0)
        .spawn()
        .map_err(|e| LaunchError::CommandFailed {
            command: script.clone(),
            output: e.to_string(),
        })?;
    let pid = child.id();
    // Reaped here while rlft runs, so the finished process is not left a zombie that looks
    // alive; once rlft exits, init reaps it.
    let _ = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        });
    Ok(Job::Local {
        pid,
        command,
        started: process_start(pid),
    })
}

/// The fields of `/proc/PID/stat` after the command name (state first), on Linux.
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the fields follow its last `)`.
    let rest = stat.rsplit(')').next()?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22).
fn process_start(pid: u32) -> Option<u64> {
    proc_stat(pid)?.get(19)?.parse().ok()
}

/// Whether the job's process still runs: alive, not a zombie, and (where its start time was
/// recorded) the same process, not a later one that got the pid.
fn local_alive(pid: u32, started: Option<u64>) -> bool {
    let Some(fields) = proc_stat(pid) else {
        if std::path::Path::new("/proc/self/stat").exists() {
            return false;
        }
        // No /proc (not Linux): ask the kernel.
        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
        // SAFETY: signal 0 only checks that the process exists.
        return unsafe { libc::kill(pid, 0) } == 0;
    };
    // Z is a zombie (ended, not reaped).
    let running = !matches!(fields.first().map(String::as_str), Some("Z" | "X"));
    let same = match (started, fields.get(19).and_then(|s| s.parse::<u64>().ok())) {
        (Some(want), Some(now)) => want == now,
        _ => true,
    };
    running && same
}

fn local_state(pid: u32, started: Option<u64>, run_dir: &Path) -> JobState {
    let exit = std::fs::read_to_string(run_dir.join(EXIT_FILE)).ok();
    let stopped = run_dir.join(STOPPED_FILE).exists();
    match exit {
        None if local_alive(pid, started) => JobState::Running,
        _ if stopped => JobState::Stopped,
        Some(code) if code.trim() == "0" => JobState::Succeeded,
        Some(code) => JobState::Failed(format!("exited with status {}", code.trim())),
        None => JobState::Failed("the process ended without an exit status (killed?)".into()),
    }
}

fn launch_slurm(spec: &LaunchSpec) -> Result<Job, LaunchError> {
    let script_path = spec.script_dir.join("job.sbatch");
    let mut script = String::from("#!/bin/bash\n");
    script.push_str(&format!("#SBATCH --job-name={}\n", spec.name));
    script.push_str(&format!(
        "#SBATCH --output={}\n",
        spec.run_dir.join(LOG_FILE).display()
    ));
    for a in &spec.sbatch_args {
        script.push_str(&format!("#SBATCH {a}\n"));
    }
    script.push_str(&format!(
        "cd {}\nexec {}\n",
        shell_quote(&spec.script_dir.to_string_lossy()),
        spec.command()
    ));
    std::fs::write(&script_path, script).map_err(io(&script_path))?;
    let out = run_tool(
        "sbatch",
        &["--parsable", &script_path.to_string_lossy()],
        "--on slurm needs a Slurm login node (sbatch, squeue, sacct, scancel)",
    )?;
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let job_id = out.trim().split(';').next().unwrap_or("").to_string();
    if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(LaunchError::CommandFailed {
            command: "sbatch --parsable".into(),
            output: format!("expected a job id, got {:?}", out.trim()),
        });
    }
    Ok(Job::Slurm { job_id })
}

/// squeue while Slurm holds the job, then sacct for how it ended.
fn slurm_state(job_id: &str) -> Result<JobState, LaunchError> {
    let why = "following a Slurm job needs squeue and sacct";
    let queued = run_tool("squeue", &["-h", "-j", job_id, "-o", "%T"], why).unwrap_or_default();
    if let Some(s) = queued.lines().map(str::trim).find(|l| !l.is_empty()) {
        return Ok(slurm_word(s));
    }
    let acct = run_tool(
        "sacct",
        &["-n", "-X", "-P", "-j", job_id, "-o", "State"],
        why,
    )?;
    match acct.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(s) => Ok(slurm_word(s)),
        None => Err(LaunchError::CommandFailed {
            command: format!("sacct -j {job_id}"),
            output: "Slurm knows no such job".into(),
        }),
    }
}

/// Slurm's job state names (`CANCELLED by 1000` included).
fn slurm_word(s: &str) -> JobState {
    let word = s.split_whitespace().next().unwrap_or("");
    match word {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "RESIZING" | "SUSPENDED" => JobState::Pending,
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" => JobState::Running,
        "COMPLETED" => JobState::Succeeded,
        "CANCELLED" | "PREEMPTED" => JobState::Stopped,
        other => JobState::Failed(format!("Slurm state {other}")),
    }
}

/// Runs a launcher's command-line tool and returns its standard output.
fn run_tool(program: &str, args: &[&str], why: &'static str) -> Result<String, LaunchError> {
    let out = Process::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LaunchError::MissingProgram {
                program: program.into(),
                why,
            }
        } else {
            LaunchError::CommandFailed {
                command: program.into(),
                output: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if text.is_empty() {
            text = format!("exit status {}", out.status);
        }
        return Err(LaunchError::CommandFailed {
            command: format!("{program} {}", args.join(" ")),
            output: text,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Ray submission id from the run's name: Ray needs it unique on the cluster.
fn submission_id(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("rlft-{clean}-{stamp}")
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A client of the Ray Jobs REST API (the dashboard's `/api/jobs/`).
pub struct RayJobs {
    address: String,
    agent: ureq::Agent,
}

impl RayJobs {
    pub fn new(address: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self {
            address: address.trim_end_matches('/').to_string(),
            agent,
        }
    }

    /// Sends one request; returns the reply's JSON (or raises the error for its status).
    fn request(
        &self,
        what: &'static str,
        id: Option<&str>,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, LaunchError> {
        let url = format!("{}{path}", self.address);
        let sent = match body {
            Some(b) => self.agent.post(&url).send_json(&b),
            None if what == "stop" => self.agent.post(&url).send_empty(),
            None => self.agent.get(&url).call(),
        };
        let mut reply = sent.map_err(|e| LaunchError::Unreachable {
            address: self.address.clone(),
            reason: e.to_string(),
        })?;
        let status = reply.status().as_u16();
        let text = reply
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .unwrap_or_default();
        if status == 404
            && let Some(id) = id
        {
            return Err(LaunchError::UnknownJob {
                address: self.address.clone(),
                id: id.to_string(),
            });
        }
        if !(200..300).contains(&status) {
            return Err(LaunchError::Http {
                address: self.address.clone(),
                what,
                status,
                body: text.chars().take(300).collect(),
            });
        }
        serde_json::from_str(&text).map_err(|_| LaunchError::BadReply {
            address: self.address.clone(),
            what,
            body: text.chars().take(300).collect(),
        })
    }

    /// `POST /api/jobs/`: runs `entrypoint` on the cluster as job `id`.
    pub fn submit(&self, id: &str, entrypoint: &str, run_dir: &Path) -> Result<(), LaunchError> {
        let body = json!({
            "entrypoint": entrypoint,
            "submission_id": id,
            "metadata": {"rlft_run_dir": run_dir.to_string_lossy()},
            "runtime_env": {"env_vars": {"PYTHONUNBUFFERED": "1"}},
        });
        self.request("submit", None, "/api/jobs/", Some(body))
            .map(|_| ())
    }

    /// `GET /api/jobs/{id}`.
    pub fn status(&self, id: &str) -> Result<JobState, LaunchError> {
        let reply = self.request("status", Some(id), &format!("/api/jobs/{id}"), None)?;
        let message = reply
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string();
        match reply.get("status").and_then(|s| s.as_str()) {
            Some("PENDING") => Ok(JobState::Pending),
            Some("RUNNING") => Ok(JobState::Running),
            Some("SUCCEEDED") => Ok(JobState::Succeeded),
            Some("STOPPED") => Ok(JobState::Stopped),
            Some("FAILED") => Ok(JobState::Failed(if message.is_empty() {
                "the Ray job failed".into()
            } else {
                message
            })),
            _ => Err(LaunchError::BadReply {
                address: self.address.clone(),
                what: "status",
                body: reply.to_string().chars().take(300).collect(),
            }),
        }
    }

    /// `GET /api/jobs/{id}/logs`: the job's whole output so far.
    pub fn logs(&self, id: &str) -> Result<String, LaunchError> {
        let reply = self.request("logs", Some(id), &format!("/api/jobs/{id}/logs"), None)?;
        Ok(reply
            .get("logs")
            .and_then(|l| l.as_str())
            .unwrap_or("")
            .to_string())
    }

    /// `POST /api/jobs/{id}/stop`.
    pub fn stop(&self, id: &str) -> Result<(), LaunchError> {
        self.request("stop", Some(id), &format!("/api/jobs/{id}/stop"), None)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job's state once it has ended (waiting up to 4 s).
    fn final_state(job: &Job, run_dir: &Path) -> JobState {
        let mut state = job.state(run_dir).unwrap();
        for _ in 0..200 {
            if state.is_final() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            state = job.state(run_dir).unwrap();
        }
        state
    }

    /// A job whose pid now belongs to another process (a different start time) has ended.
    #[test]
    fn a_reused_pid_is_not_the_job() {
        let own = std::process::id();
        let started = process_start(own);
        assert!(started.is_some());
        assert!(local_alive(own, started));
        assert!(!local_alive(own, started.map(|t| t + 1)));
        let tmp = tempfile::tempdir().unwrap();
        let job = Job::Local {
            pid: own,
            command: "python train.py".into(),
            started: started.map(|t| t + 1),
        };
        assert!(matches!(
            job.state(tmp.path()).unwrap(),
            JobState::Failed(_)
        ));
        // Stopping it signals nothing (it would have been this test's process group).
        job.stop(tmp.path()).unwrap();
    }

    #[test]
    fn targets_parse_and_bad_ones_are_named() {
        assert_eq!("local".parse::<Target>().unwrap(), Target::Local);
        assert_eq!("slurm".parse::<Target>().unwrap(), Target::Slurm);
        assert_eq!(
            "ray://10.0.0.1:8265".parse::<Target>().unwrap(),
            Target::Ray("http://10.0.0.1:8265".into())
        );
        assert_eq!(
            "ray://head".parse::<Target>().unwrap(),
            Target::Ray("http://head:8265".into())
        );
        let e = "k8s".parse::<Target>().unwrap_err().to_string();
        assert!(
            e.contains("--on k8s") && e.contains("ray://HOST:PORT"),
            "{e}"
        );
    }

    #[test]
    fn slurm_states_map_to_job_states() {
        assert_eq!(slurm_word("PENDING"), JobState::Pending);
        assert_eq!(slurm_word("RUNNING"), JobState::Running);
        assert_eq!(slurm_word("COMPLETED"), JobState::Succeeded);
        assert_eq!(slurm_word("CANCELLED by 1000"), JobState::Stopped);
        assert!(
            matches!(slurm_word("OUT_OF_MEMORY"), JobState::Failed(m) if m.contains("OUT_OF_MEMORY"))
        );
    }

    #[test]
    fn a_local_job_runs_ends_and_records_how() {
        let tmp = tempfile::tempdir().unwrap();
        let script_dir = tmp.path().join("job");
        std::fs::create_dir_all(&script_dir).unwrap();
        // A "python" that is a shell script: writes a metrics line, then exits 3.
        let fake = script_dir.join("fake-python");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"args: $*\"\nmkdir -p \"$3\"\necho '{\"step\":1,\"reward\":0.5}' >> \"$3/metrics.jsonl\"\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = LaunchSpec {
            name: "t".into(),
            script_dir: script_dir.clone(),
            run_dir: tmp.path().join("run dir"),
            python: fake.to_string_lossy().into(),
            sbatch_args: vec![],
            engine: None,
        };
        let job = launch(&spec, &Target::Local).unwrap();
        assert_eq!(Job::read(&spec.run_dir).unwrap().unwrap(), job);
        let state = final_state(&job, &spec.run_dir);
        assert_eq!(state, JobState::Failed("exited with status 3".into()));
        let log = job.log_tail(&spec.run_dir, 5).unwrap();
        assert!(log.contains("args: train.py --out"), "{log}");
        assert!(spec.run_dir.join("metrics.jsonl").is_file());
    }

    #[test]
    fn a_stopped_local_job_reads_as_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let sleeper = tmp.path().join("sleeper");
        std::fs::write(&sleeper, "#!/bin/sh\nsleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&sleeper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = LaunchSpec {
            name: "t".into(),
            script_dir: tmp.path().to_path_buf(),
            run_dir: tmp.path().join("run"),
            python: sleeper.to_string_lossy().into(),
            sbatch_args: vec![],
            engine: None,
        };
        let job = launch(&spec, &Target::Local).unwrap();
        assert_eq!(job.state(&spec.run_dir).unwrap(), JobState::Running);
        job.stop(&spec.run_dir).unwrap();
        let state = final_state(&job, &spec.run_dir);
        assert_eq!(state, JobState::Stopped);
    }
}
