//! What the machine is doing while runs train, for the System view: CPU and memory of each
//! run's process tree (rlft itself for its own runs, the job's processes for a run `rlft
//! launch` started here), the whole host's, and NVIDIA GPUs' utilisation and memory through
//! NVML where a driver is installed (as `nvidia-smi` and W&B's system metrics read them).
//!
//! A background thread samples every [`SAMPLE_EVERY`] and sends [`SystemSnapshot`]s; the UI
//! tells it which processes to follow. Nothing here blocks the UI.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// How often the machine is sampled (CPU use is measured over this interval).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// A process to follow, with its children (a job's shell, Python and its workers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Followed {
    /// What the System view calls it: the run's name, or "rlft" for rlft's own runs.
    pub label: String,
    pub pid: u32,
}

/// One followed process tree's use.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessUsage {
    pub label: String,
    pub pid: u32,
    /// Percent of one core, summed over the tree (200 = two cores busy).
    pub cpu_percent: f32,
    /// Resident memory of the tree.
    pub memory_bytes: u64,
    /// GPU memory the tree's processes hold, where NVML reports it.
    pub gpu_memory_bytes: Option<u64>,
    /// Processes in the tree.
    pub processes: usize,
    /// False once the process has ended.
    pub alive: bool,
}

/// One NVIDIA GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuUsage {
    pub index: u32,
    pub name: String,
    pub utilization_percent: u32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub temperature_c: Option<u32>,
    pub power_watts: Option<f32>,
}

/// The machine at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct SystemSnapshot {
    pub cores: usize,
    /// Percent of all cores (100 = every core busy).
    pub host_cpu_percent: f32,
    pub host_memory_used_bytes: u64,
    pub host_memory_total_bytes: u64,
    pub processes: Vec<ProcessUsage>,
    /// The GPUs, or why there are none to show (no NVIDIA driver, NVML failed).
    pub gpus: Result<Vec<GpuUsage>, String>,
}

/// Samples the machine: keep one and call [`Sampler::sample`] at intervals (CPU use is
/// measured between two calls).
pub struct Sampler {
    system: System,
    nvml: Result<nvml_wrapper::Nvml, String>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| match e {
            nvml_wrapper::error::NvmlError::LibloadingError(_) => {
                "no NVIDIA driver (libnvidia-ml not found)".to_string()
            }
            other => format!("NVML: {other}"),
        });
        let mut system = System::new();
        system.refresh_cpu_usage();
        Self { system, nvml }
    }

    /// The host and the trees of `followed` now.
    pub fn sample(&mut self, followed: &[Followed]) -> SystemSnapshot {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let gpus = self.gpus();
        let gpu_memory = self.gpu_memory_by_pid();
        let children = self.children();
        let processes = followed
            .iter()
            .map(|f| {
                let tree = tree_of(Pid::from_u32(f.pid), &children);
                let procs: Vec<&sysinfo::Process> = tree
                    .iter()
                    .filter_map(|p| self.system.process(*p))
                    // Threads are listed as processes on Linux: count each process once.
                    .filter(|p| p.thread_kind().is_none())
                    .collect();
                let gpu: Vec<u64> = tree
                    .iter()
                    .filter_map(|p| gpu_memory.get(&p.as_u32()).copied())
                    .collect();
                ProcessUsage {
                    label: f.label.clone(),
                    pid: f.pid,
                    cpu_percent: procs.iter().map(|p| p.cpu_usage()).sum(),
                    memory_bytes: procs.iter().map(|p| p.memory()).sum(),
                    gpu_memory_bytes: (!gpu.is_empty()).then(|| gpu.iter().sum()),
                    processes: procs.len(),
                    alive: !procs.is_empty(),
                }
            })
            .collect();
        SystemSnapshot {
            cores: self.system.cpus().len().max(1),
            host_cpu_percent: self.system.global_cpu_usage(),
            host_memory_used_bytes: self.system.used_memory(),
            host_memory_total_bytes: self.system.total_memory(),
            processes,
            gpus,
        }
    }

    /// Each process's children.
    fn children(&self) -> HashMap<Pid, Vec<Pid>> {
        let mut out: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, p) in self.system.processes() {
            if let Some(parent) = p.parent() {
                out.entry(parent).or_default().push(*pid);
            }
        }
        out
    }

    fn gpus(&self) -> Result<Vec<GpuUsage>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let count = nvml.device_count().map_err(|e| format!("NVML: {e}"))?;
        let mut out = Vec::new();
        for index in 0..count {
            let d = nvml
                .device_by_index(index)
                .map_err(|e| format!("NVML GPU {index}: {e}"))?;
            let memory = d
                .memory_info()
                .map_err(|e| format!("NVML GPU {index}: {e}"))?;
            out.push(GpuUsage {
                index,
                name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                utilization_percent: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
                memory_used_bytes: memory.used,
                memory_total_bytes: memory.total,
                temperature_c: d
                    .temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
                    .ok(),
                power_watts: d.power_usage().ok().map(|mw| mw as f32 / 1000.0),
            });
        }
        Ok(out)
    }

    /// GPU memory by process id, over all GPUs.
    fn gpu_memory_by_pid(&self) -> HashMap<u32, u64> {
        let mut out = HashMap::new();
        let Ok(nvml) = &self.nvml else {
            return out;
        };
        for index in 0..nvml.device_count().unwrap_or(0) {
            let Ok(d) = nvml.device_by_index(index) else {
                continue;
            };
            for p in d.running_compute_processes().unwrap_or_default() {
                if let nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                    *out.entry(p.pid).or_insert(0) += bytes;
                }
            }
        }
        out
    }
}

/// `root` and every process below it.
fn tree_of(root: Pid, children: &HashMap<Pid, Vec<Pid>>) -> Vec<Pid> {
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    let mut out = Vec::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        out.push(p);
        if let Some(c) = children.get(&p) {
            stack.extend(c.iter().copied());
        }
    }
    out
}

/// The sampling thread: snapshots out, the processes to follow in.
pub struct Monitor {
    pub snapshots: Receiver<SystemSnapshot>,
    follow: Sender<Vec<Followed>>,
    stop: Arc<AtomicBool>,
}

impl Monitor {
    /// Starts sampling every `every`.
    pub fn spawn(every: Duration) -> std::io::Result<Self> {
        // One snapshot waits at most: a UI that is behind gets the newest, not a backlog.
        let (tx, snapshots) = bounded(1);
        let (follow, follow_rx) = unbounded::<Vec<Followed>>();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("rlft-system".into())
            .spawn(move || {
                let mut sampler = Sampler::new();
                let mut followed = Vec::new();
                while !thread_stop.load(Ordering::Relaxed) {
                    if let Some(f) = follow_rx.try_iter().last() {
                        followed = f;
                    }
                    let snap = sampler.sample(&followed);
                    // Full: the UI has not taken the last one yet, and will get a newer one.
                    if let Err(crossbeam_channel::TrySendError::Disconnected(_)) = tx.try_send(snap)
                    {
                        return;
                    }
                    std::thread::sleep(every);
                }
            })?;
        Ok(Self {
            snapshots,
            follow,
            stop,
        })
    }

    /// Follows these processes from the next sample on.
    pub fn follow(&self, followed: Vec<Followed>) {
        let _ = self.follow.send(followed);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_process_tree_is_measured_and_its_end_seen() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(200));
        let mut sampler = Sampler::new();
        let followed = [
            Followed {
                label: "job".into(),
                pid,
            },
            Followed {
                label: "rlft".into(),
                pid: std::process::id(),
            },
        ];
        let snap = sampler.sample(&followed);
        let job = &snap.processes[0];
        assert!(job.alive && job.processes == 2, "{job:?}");
        assert!(job.memory_bytes > 0);
        let own = &snap.processes[1];
        // This test's process holds at least the test binary.
        assert!(own.memory_bytes > 1 << 20, "{own:?}");
        assert!(snap.host_memory_total_bytes >= snap.host_memory_used_bytes);
        assert!(snap.cores >= 1);
        // No NVIDIA driver here: said, not an error.
        if let Err(why) = &snap.gpus {
            assert!(!why.is_empty());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let snap = sampler.sample(&followed);
        assert!(!snap.processes[0].alive);
    }
}
