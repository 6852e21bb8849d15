//! The compute device, chosen at run time: Burn's `flex` CPU backend by default, or wgpu
//! (Vulkan / Metal / DX12 / GL, whichever the machine offers) when asked.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Device;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Burn's pure-Rust `flex` backend: the fastest CPU backend measured for training here.
    #[default]
    Cpu,
    /// A GPU (or software Vulkan) through wgpu.
    Wgpu,
    /// Burn's deprecated ndarray CPU backend, compiled in only with the `ndarray` feature;
    /// kept for the backend comparison in `rlft bench`.
    #[cfg(feature = "ndarray")]
    Ndarray,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            #[cfg(feature = "ndarray")]
            "ndarray" => Ok(Self::Ndarray),
            other => Err(format!("unknown device `{other}` (expected cpu or wgpu)")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            #[cfg(feature = "ndarray")]
            Self::Ndarray => "ndarray",
        })
    }
}

impl DeviceChoice {
    /// Initialises the device. wgpu is initialised eagerly so a machine without an adapter
    /// gets an error here instead of a panic at the first tensor; once per process (a second
    /// initialisation fails with "Service already initialized"), so runs side by side share it.
    pub fn init(self) -> Result<Device, String> {
        static WGPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
        match self {
            Self::Cpu => Ok(Device::flex()),
            Self::Wgpu => WGPU
                .get_or_init(|| {
                    Device::wgpu_options()
                        .init()
                        .map_err(|e| format!("no usable wgpu adapter: {e}"))
                })
                .clone(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::Ndarray => Ok(Device::ndarray()),
        }
    }

    /// What ran, for reports: `cpu (flex)`, or for wgpu the shader compiler and the adapter,
    /// e.g. `wgpu<spirv> on NVIDIA H200` (SPIR-V where the build has the `vulkan` feature and
    /// the Vulkan driver has the extensions it needs, WGSL otherwise).
    pub fn describe(self, device: &Device) -> String {
        match self {
            Self::Cpu => "cpu (flex)".into(),
            Self::Wgpu => {
                let adapter = device
                    .identity()
                    .map(|id| format!(" on {}", id.name))
                    .unwrap_or_default();
                format!("{}{adapter}", runtime_name(device))
            }
            #[cfg(feature = "ndarray")]
            Self::Ndarray => "ndarray".into(),
        }
    }
}

/// The innermost runtime in Burn's backend name (`dispatch<fusion<cubecl<wgpu<spirv>>>>` ->
/// `wgpu<spirv>`): the only place the compiler a wgpu device got is reported.
pub fn runtime_name(device: &Device) -> String {
    use burn_backend::Backend;
    let full = <burn_dispatch::Dispatch as Backend>::name(device.as_dispatch());
    match full.find("wgpu<") {
        Some(at) => {
            let tail = &full[at..];
            let end = tail.find('>').map_or(tail.len(), |i| i + 1);
            tail[..end].to_string()
        }
        None => full,
    }
}

/// Keeps cubecl's compiled kernels and autotune results between runs, in one place whatever
/// folder rlft is started from: `$XDG_CACHE_HOME/rlft/cubecl` (or `~/.cache/rlft/cubecl`).
/// cubecl's own default is the `target/` folder of the outermost Cargo project above the
/// working directory, so a run started in a different folder tuned every kernel again
/// (minutes on a GPU for a new shape). A `cubecl.toml` (or `burn.toml`'s `[cubecl]`) naming
/// another `[environment] path` than the default wins. Call before any wgpu device starts;
/// returns the folder chosen, or None where cubecl keeps its own choice.
pub fn keep_kernel_caches() -> Option<std::path::PathBuf> {
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    let cache_home = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if !matches!(config.environment.path, CacheConfig::Target) {
        return None;
    }
    let dir = cache_home.join("rlft").join("cubecl");
    config.environment.path = CacheConfig::Directory(dir.clone());
    CubeClRuntimeConfig::try_set(config).then_some(dir)
}
