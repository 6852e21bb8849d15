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
}
