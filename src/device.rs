//! GPUs: enumeration, identity and capabilities.
//!
//! A [`Device`] is one GPU as this process numbers it (its *ordinal*). Ordinals are local: two
//! pods given the same two GPUs may number them differently, and `CUDA_VISIBLE_DEVICES` changes
//! them too. The [`GpuUuid`] is the identity that crosses process boundaries, printed like
//! `nvidia-smi -L` does (`GPU-4ffbfa91-2c09-...`).
//!
//! ```no_run
//! use cuda_ipc::Device;
//! for device in Device::all()? {
//!     let info = device.info()?;
//!     println!("GPU {}: {} {} ({} MiB, sm_{}{})", info.ordinal, info.name, info.uuid,
//!              info.total_memory >> 20, info.compute_capability.0, info.compute_capability.1);
//! }
//! # Ok::<(), cuda_ipc::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::result::attribute as attr;
use crate::result::{self, codes, CUdevice};

/// Initialises the driver once per process (`cuInit`), turning "no driver library" into
/// [`Error::DriverNotFound`] and "no GPU" into [`Error::NoDevice`].
pub fn init() -> Result<()> {
    load_driver()?;
    static INIT: OnceLock<std::result::Result<(), result::DriverError>> = OnceLock::new();
    match INIT.get_or_init(result::init) {
        Ok(()) => Ok(()),
        Err(e) if e.is(codes::NO_DEVICE) => Err(Error::NoDevice {
            visibility: visibility_report(),
        }),
        Err(e) => Err(Error::Driver(*e)),
    }
}

/// Opens the driver library (once per process), or says what was searched and why it failed.
fn load_driver() -> Result<()> {
    match result::load_driver() {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::DriverNotFound {
            searched: e.searched().to_string(),
            reason: e.reason().to_string(),
        }),
    }
}

/// The CUDA version the driver supports, e.g. `(13, 0)`. Needs the driver library, not a GPU.
pub fn driver_version() -> Result<(i32, i32)> {
    load_driver()?;
    let v = result::driver_version()?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// The variables and device nodes that decide which GPUs a process sees, for error messages.
pub fn visibility_report() -> String {
    let var = |name: &str| match std::env::var(name) {
        Ok(v) => format!("{name}={v:?}"),
        Err(_) => format!("{name} unset"),
    };
    let nodes: Vec<String> = std::fs::read_dir("/dev")
        .map(|dir| {
            let mut v: Vec<String> = dir
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("nvidia"))
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    format!(
        "{}, {}, device nodes: [{}]",
        var("CUDA_VISIBLE_DEVICES"),
        var("NVIDIA_VISIBLE_DEVICES"),
        if nodes.is_empty() {
            "none in /dev".to_string()
        } else {
            nodes.join(", ")
        }
    )
}

/// A GPU's UUID: the identity that is the same in every process and pod that sees the GPU.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GpuUuid(pub [u8; 16]);

impl fmt::Display for GpuUuid {
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `nvidia-smi -L` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(f, "GPU-")?;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                write!(f, "-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for GpuUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for GpuUuid {
    type Err = Error;
    /// Parses `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; the `GPU-` prefix is optional and
    /// case does not matter.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadUuid {
            input: s.to_string(),
        };
        let t = s.trim();
        let t = t
            .strip_prefix("GPU-")
            .or_else(|| t.strip_prefix("gpu-"))
            .unwrap_or(t);
        let groups: Vec<&str> = t.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(GpuUuid(out))
    }
}

/// One GPU, as this process numbers it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device {
    ordinal: usize,
    raw: CUdevice,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.ordinal)
    }
}

/// Everything [`Device`] reports, read at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The ordinal in this process.
    pub ordinal: usize,
    /// The marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// The UUID, the identity across processes.
    pub uuid: GpuUuid,
    /// PCI bus id, e.g. `0000:18:00.0`.
    pub pci_bus_id: String,
    /// Total memory in bytes.
    pub total_memory: usize,
    /// Compute capability (major, minor), e.g. (9, 0) for Hopper.
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub multiprocessor_count: u32,
    /// Unified virtual addressing (needed by both transports).
    pub unified_addressing: bool,
    /// Virtual memory management (cuMemCreate/cuMemMap; the fd transport).
    pub vmm_supported: bool,
    /// POSIX file descriptor export of VMM allocations (the fd transport).
    pub posix_fd_supported: bool,
}

impl Device {
    /// How many GPUs this process sees.
    pub fn count() -> Result<usize> {
        init()?;
        Ok(result::device_count()?.max(0) as usize)
    }

    /// Every GPU this process sees, by ordinal.
    pub fn all() -> Result<Vec<Device>> {
        (0..Self::count()?)
            .map(|ordinal| {
                let raw = result::device_get(ordinal as i32)?;
                Ok(Device { ordinal, raw })
            })
            .collect()
    }

    /// The GPU with this ordinal.
    pub fn by_ordinal(ordinal: usize) -> Result<Device> {
        let count = Self::count()?;
        if ordinal >= count {
            return Err(Error::NoSuchOrdinal { ordinal, count });
        }
        let raw = result::device_get(ordinal as i32)?;
        Ok(Device { ordinal, raw })
    }

    /// The GPU with this UUID, whatever its ordinal in this process.
    pub fn by_uuid(uuid: &GpuUuid) -> Result<Device> {
        let all = Self::all()?;
        let mut visible = Vec::with_capacity(all.len());
        for device in all {
            let u = device.uuid()?;
            if u == *uuid {
                return Ok(device);
            }
            visible.push(u.to_string());
        }
        Err(Error::DeviceNotFound {
            uuid: uuid.to_string(),
            visible: visible.join(", "),
        })
    }

    /// The ordinal in this process.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The raw `CUdevice` (an ordinal-like handle; nothing to free).
    pub fn raw(&self) -> CUdevice {
        self.raw
    }

    /// The name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> Result<String> {
        Ok(result::device_name(self.raw)?)
    }

    /// The UUID.
    pub fn uuid(&self) -> Result<GpuUuid> {
        Ok(GpuUuid(result::device_uuid(self.raw)?))
    }

    /// The PCI bus id.
    pub fn pci_bus_id(&self) -> Result<String> {
        Ok(result::device_pci_bus_id(self.raw)?)
    }

    /// Total memory in bytes.
    pub fn total_memory(&self) -> Result<usize> {
        Ok(result::device_total_mem(self.raw)?)
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        Ok((
            self.attribute(attr::COMPUTE_CAPABILITY_MAJOR)?,
            self.attribute(attr::COMPUTE_CAPABILITY_MINOR)?,
        ))
    }

    /// Streaming multiprocessors.
    pub fn multiprocessor_count(&self) -> Result<u32> {
        Ok(self.attribute(attr::MULTIPROCESSOR_COUNT)?.max(0) as u32)
    }

    /// Unified virtual addressing.
    pub fn unified_addressing(&self) -> Result<bool> {
        Ok(self.attribute(attr::UNIFIED_ADDRESSING)? != 0)
    }

    /// Virtual memory management (the fd transport needs it).
    pub fn vmm_supported(&self) -> Result<bool> {
        Ok(self.attribute(attr::VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED)? != 0)
    }

    /// POSIX fd export of VMM allocations (the fd transport needs it).
    pub fn posix_fd_supported(&self) -> Result<bool> {
        Ok(self.attribute(attr::HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)? != 0)
    }

    /// Whether this GPU can access memory of `other` (always true for the same GPU).
    pub fn can_access_peer(&self, other: &Device) -> Result<bool> {
        if self.raw == other.raw {
            return Ok(true);
        }
        Ok(result::device_can_access_peer(self.raw, other.raw)?)
    }

    /// Everything above, read at once.
    pub fn info(&self) -> Result<DeviceInfo> {
        Ok(DeviceInfo {
            ordinal: self.ordinal,
            name: self.name()?,
            uuid: self.uuid()?,
            pci_bus_id: self.pci_bus_id()?,
            total_memory: self.total_memory()?,
            compute_capability: self.compute_capability()?,
            multiprocessor_count: self.multiprocessor_count()?,
            unified_addressing: self.unified_addressing()?,
            vmm_supported: self.vmm_supported()?,
            posix_fd_supported: self.posix_fd_supported()?,
        })
    }

    /// A short label for messages: `GPU 1 (NVIDIA H100 80GB HBM3, GPU-…)`.
    pub fn label(&self) -> String {
        match (self.name(), self.uuid()) {
            (Ok(name), Ok(uuid)) => format!("GPU {} ({name}, {uuid})", self.ordinal),
            _ => format!("GPU {}", self.ordinal),
        }
    }

    /// Whether the contexts this process creates on this GPU go through an MPS server
    /// (`CU_DEVICE_ATTRIBUTE_MPS_ENABLED`, a per-process answer); `None` when the driver
    /// predates the attribute.
    pub fn mps_enabled(&self) -> Option<bool> {
        self.attribute(attr::MPS_ENABLED).ok().map(|v| v != 0)
    }

    fn attribute(&self, attribute: i32) -> Result<i32> {
        Ok(result::device_attribute(self.raw, attribute)?)
    }
}
