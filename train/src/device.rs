//! The `--device` flag: which Burn backend runs training.
//!
//! `cpu` is Burn's `flex` backend (always compiled; multithreaded with
//! rayon, SIMD kernels). `wgpu` and `cuda` need the crate built with the
//! feature of the same name (`cargo build --release -p delphi-train
//! --features wgpu`); asking for one that is not compiled in is an error
//! that says how to get it.

use std::str::FromStr;

use burn::tensor::Device;

/// A compute device chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Burn's flex CPU backend.
    Cpu,
    /// The first GPU wgpu finds (Vulkan, Metal or DX12).
    Wgpu,
    /// CUDA device `n`.
    Cuda(usize),
}

/// A device that is not available in this build.
#[derive(Debug, thiserror::Error)]
#[error("device {0:?} is not compiled in: rebuild with `--features {1}` (cargo build --release -p delphi-train --features {1}, or -p delphi-planner for delphi-plan)")]
pub struct NotCompiled(pub String, pub &'static str);

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("unknown device {s:?} (cpu, wgpu, cuda or cuda:N)")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Wgpu => write!(f, "wgpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

delphi_net::serde_as_str!(DeviceChoice);

/// `--device`'s parser: a device that this build can run, or an error
/// that says how to get it — before any work starts or any folder is made.
pub fn parse_available(s: &str) -> Result<DeviceChoice, String> {
    let d: DeviceChoice = s.parse()?;
    d.device().map_err(|e| e.to_string())?;
    Ok(d)
}

impl DeviceChoice {
    /// The Burn device (without autodiff; the trainer adds it).
    pub fn device(self) -> Result<Device, NotCompiled> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            DeviceChoice::Wgpu => Err(NotCompiled(self.to_string(), "wgpu")),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(n) => Ok(Device::cuda(n)),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda(_) => Err(NotCompiled(self.to_string(), "cuda")),
        }
    }
}
