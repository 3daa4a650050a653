//! Sharing device memory between processes.
//!
//! A producer allocates a [`SharedDeviceBuffer`], fills it, and publishes it under a name in a
//! directory both processes can see (the shared volume of two pods, say) with an [`Exporter`].
//! A consumer imports it by that name — on the same GPU or on any GPU that can access the
//! owner's — and uses it in place: kernels and copies take it like any device memory.
//!
//! ```no_run
//! use std::time::Duration;
//! use cuda_ipc::ipc::{Exporter, SharedDeviceBuffer, Transport};
//! use cuda_ipc::prelude::*;
//!
//! // producer
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let stream = Stream::new(&ctx)?;
//! let mut buf = SharedDeviceBuffer::<f32>::zeroed(&ctx, 1 << 20, Transport::Auto)?;
//! ctx.kernels()?.fill_pattern(&stream, &mut buf, 7)?;
//! stream.synchronize()?;
//! let exporter = Exporter::bind("/shared/cuda-ipc/frames", &buf)?;
//! exporter.wait_released(Duration::from_secs(60))?; // every consumer is done
//!
//! // consumer (another process, maybe another pod, maybe another GPU)
//! let ctx = Context::new(Device::by_ordinal(1)?)?;
//! let stream = Stream::new(&ctx)?;
//! let frames = SharedDeviceBuffer::<f32>::import(&ctx, "/shared/cuda-ipc/frames", Duration::from_secs(30))?;
//! let digest = ctx.kernels()?.checksum(&stream, &frames)?; // used in place, zero copy
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
//!
//! # Transports
//! - [`Transport::Fd`]: `cuMemCreate` with POSIX-fd export; the fd travels over the
//!   exporter's Unix socket (`SCM_RIGHTS`). Works across PID and IPC namespaces, as any user
//!   the exporter allows (it checks the consumer's uid with `SO_PEERCRED`). Allocations are
//!   rounded up to the VMM granularity (2 MiB on H100).
//! - [`Transport::Legacy`]: `cuMemAlloc` + `cuIpcGetMemHandle`; the 64-byte handle travels in
//!   the descriptor file. The driver refuses it when exporter and importer have the same PID
//!   (two pods with `hostPID: false`, both PID 1): the import fails early with
//!   [`Error::PidCollision`], which explains the fixes. The handle
//!   is a bearer token: anyone who can read it can map the memory.
//! - [`Transport::Auto`]: `Fd` where the device supports VMM and POSIX fds, else `Legacy`.
//!
//! # Rendezvous
//! See [`rendezvous`] for the files and their permissions. The exporter's socket also carries
//! leases (one connection per consumer, so [`Exporter::wait_released`] knows when the memory
//! is no longer in use, also when a consumer dies) and "ready" notifications
//! ([`Exporter::notify_ready`], [`SharedDeviceBuffer::wait_ready`]). For handoff without the
//! CPU, every shared buffer carries two signal words for `cuStreamWriteValue32` /
//! `cuStreamWaitValue32` ([`SharedDeviceBuffer::write_signal`],
//! [`SharedDeviceBuffer::wait_signal`]).

pub(crate) mod allocation;
mod descriptor;
pub(crate) mod exporter;
pub(crate) mod framing;
pub(crate) mod identity;
pub(crate) mod importer;
pub(crate) mod mapping;
pub mod rendezvous;
mod shared_buffer;
mod tensor_layout;

pub use descriptor::{
    CheckedDescriptor, Descriptor, DescriptorError, TypeTag, WireTransport,
    ENCODED_LEN as DESCRIPTOR_LEN, LAYOUT_VERSION as DESCRIPTOR_LAYOUT_VERSION,
    MAX_ENCODED_LEN as MAX_DESCRIPTOR_LEN, VERSION as DESCRIPTOR_VERSION,
};
pub use exporter::{AllowedUsers, ExportOptions, ExportStats, Exporter, MIN_HANDSHAKE_TIMEOUT};
pub use importer::{fetch, ImportOptions, Offer};
pub use shared_buffer::{SharedDeviceBuffer, Signal};
pub use tensor_layout::{DType, TensorLayout, MAX_DIMS, TENSOR_TYPE_TAG};

use crate::device::Device;
use crate::error::{Error, Result};

/// How a shared buffer travels between processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Fd where the device supports it, else legacy.
    #[default]
    Auto,
    /// VMM allocation, POSIX fd over a Unix socket.
    Fd,
    /// `cuIpcGetMemHandle` handle in a file.
    Legacy,
}

impl Transport {
    /// The transport actually used on `device`.
    pub fn resolve(self, device: Device) -> Result<WireTransport> {
        let fd_ok =
            || -> Result<bool> { Ok(device.vmm_supported()? && device.posix_fd_supported()?) };
        match self {
            Transport::Legacy => Ok(WireTransport::Legacy),
            Transport::Auto => Ok(if fd_ok()? {
                WireTransport::Fd
            } else {
                WireTransport::Legacy
            }),
            Transport::Fd => {
                if !device.vmm_supported()? {
                    return Err(Error::TransportUnsupported {
                        device: device.label(),
                        transport: "fd",
                        reason: "no virtual memory management (CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED is 0); use Transport::Legacy",
                    });
                }
                if !device.posix_fd_supported()? {
                    return Err(Error::TransportUnsupported {
                        device: device.label(),
                        transport: "fd",
                        reason: "no POSIX file descriptor export (CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED is 0); use Transport::Legacy",
                    });
                }
                Ok(WireTransport::Fd)
            }
        }
    }

    /// Parses `auto`, `fd` or `legacy`.
    pub fn parse(s: &str) -> Option<Transport> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Transport::Auto),
            "fd" => Some(Transport::Fd),
            "legacy" => Some(Transport::Legacy),
            _ => None,
        }
    }
}
