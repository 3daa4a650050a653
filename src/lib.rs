//! # cuda-ipc
//!
//! Share NVIDIA GPU memory between processes — and between Kubernetes pods — safely and fast.
//!
//! One process allocates a typed `SharedDeviceBuffer<T>` (see [`ipc`]) and
//! publishes it in a directory both processes can see; another maps the same GPU memory, on the
//! same GPU or a peer GPU, and uses it in place with no copy. Two transports sit behind one API:
//!
//! - **fd**: a VMM allocation (`cuMemCreate`) exported as a POSIX file descriptor and passed
//!   over a Unix socket (`SCM_RIGHTS`). Works in hardened pods (`hostPID: false`,
//!   `hostIPC: false`, non-root, no capabilities); the exporter sees each consumer's uid.
//! - **legacy**: a 64-byte `cuIpcGetMemHandle` handle in a file. Interoperates with PyTorch and
//!   CuPy; fails when both processes have the same PID (two pods with `hostPID: false`), which
//!   this crate diagnoses before the driver does.
//!
//! ## Layers
//! - [`sys`]: raw FFI (`cuda-driver-sys`, plus what its CUDA 10.2 bindings lack).
//! - [`result`]: the only module that calls the driver; every `CUresult` becomes a `Result`.
//! - Safe types: [`Device`], [`Context`], [`Stream`], [`Event`], [`DeviceBuffer`],
//!   [`kernels`], and [`ipc`].
//!
//! ## Example
//! ```no_run
//! use cuda_ipc::prelude::*;
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let stream = Stream::new(&ctx)?;
//! let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 20)?;
//! ctx.kernels()?.fill_pattern(&stream, &mut buf, 42)?;
//! stream.synchronize()?;
//! println!("first words: {:?}", &buf.copy_to_vec()?[..4]);
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod context;
pub mod device;
mod drop_log;
pub mod error;
pub mod event;
pub mod ipc;
pub mod kernels;
pub mod launch;
pub mod memory;
pub mod module;
pub mod os;
pub mod result;
pub mod stream;
pub mod sys;

pub use context::Context;
pub use device::{Device, DeviceInfo, GpuUuid};
pub use drop_log::{drop_error_count, take_drop_errors, DropError, KEPT_DROP_ERRORS};
pub use error::{DriverError, Error, Result};
pub use event::Event;
pub use kernels::Kernels;
pub use launch::LaunchConfig;
pub use memory::{DeviceBuffer, DeviceMemory, DeviceMemoryMut, DeviceSlice, DeviceSliceMut};
pub use module::{Function, Module};
pub use stream::Stream;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Everything most programs need: `use cuda_ipc::prelude::*;`.
pub mod prelude {
    pub use crate::context::Context;
    pub use crate::device::{Device, GpuUuid};
    pub use crate::error::{Error, Result};
    pub use crate::event::Event;
    pub use crate::ipc::{ExportOptions, Exporter, ImportOptions, SharedDeviceBuffer, Transport};
    pub use crate::launch::{LaunchConfig, Ptr, PtrMut};
    pub use crate::memory::{
        DeviceBuffer, DeviceMemory, DeviceMemoryMut, DeviceSlice, DeviceSliceMut,
    };
    pub use crate::module::{Function, Module};
    pub use crate::stream::Stream;
}
