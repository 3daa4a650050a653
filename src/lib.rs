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
//! What this crate makes public is the product: [`Device`], [`Context`], [`Stream`], [`Event`],
//! [`DeviceBuffer`], the built-in [`kernels`], your own kernels ([`module`], [`launch`]),
//! sharing between processes ([`ipc`]) and channels of frames ([`pubsub`]). Under them, and
//! private to the crate:
//! - `sys`: the raw driver FFI (`cuda-driver-sys`'s types, plus what its CUDA 10.2 bindings
//!   lack), resolved from `libcuda` at run time;
//! - `result`: the only module that calls the driver; every `CUresult` becomes a `Result`,
//!   with a [`DriverError`] (its codes and names are public in [`error`]);
//! - `os`: the Linux calls (sockets with `SCM_RIGHTS`, `*at` file calls, `memfd`, futexes);
//! - `ipc::framing`: the rendezvous socket's messages.
//!
//! For interop with other CUDA code, the safe types hand out their raw driver handles
//! ([`Context::raw`], [`Stream::raw`], [`Event::raw`], [`Device::raw`],
//! [`DeviceMemory::device_ptr`]) and take raw work into account ([`DeviceSlice::record_use`]).
//! Diagnostics that have no caller to return to (a failed release in a `Drop`) go to the
//! [`log`](https://docs.rs/log) facade under the target `cuda_ipc`, and are also kept for
//! [`take_drop_errors`].
//!
//! ## Example
//! A producer process shares a buffer; a consumer process (another pod, maybe another GPU)
//! maps it and works on it in place:
//! ```no_run
//! use std::time::Duration;
//! use cuda_ipc::prelude::*;
//!
//! /// Process 1: allocate, fill on the GPU, publish, wait until every consumer is done.
//! fn producer() -> Result<()> {
//!     let ctx = Context::new(Device::by_ordinal(0)?)?;
//!     let stream = Stream::new(&ctx)?;
//!     let mut buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1 << 20, Transport::Auto)?;
//!     ctx.kernels()?.fill_pattern(&stream, &mut buf, 42)?;
//!     stream.synchronize()?;
//!     let exporter = Exporter::bind("/shared/cuda-ipc/frames", &buf)?;
//!     exporter.notify_ready(1)?;
//!     exporter.wait_released(Duration::from_secs(60))?;
//!     Ok(())
//! }
//!
//! /// Process 2: map the same memory, wait for the data, use it without a copy.
//! fn consumer() -> Result<()> {
//!     let ctx = Context::new(Device::by_ordinal(0)?)?;
//!     let stream = Stream::new(&ctx)?;
//!     let mut frames =
//!         SharedDeviceBuffer::<u32>::import(&ctx, "/shared/cuda-ipc/frames", Duration::from_secs(30))?;
//!     frames.wait_ready(1, Duration::from_secs(30))?;
//!     let k = ctx.kernels()?;
//!     println!("checksum {:#x}", k.checksum(&stream, &frames)?);
//!     k.add_words_atomic(&stream, &mut frames, 1)?; // writes land in the producer's memory
//!     stream.synchronize()?;
//!     Ok(())
//! }
//! # let _ = (producer, consumer);
//! ```
//!
//! Your own kernels run on the same buffers: see [`module`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[path = "build_support.rs"]
pub mod build;
pub mod context;
#[cfg(feature = "cudarc")]
pub mod cudarc_interop;
mod deadline;
pub mod device;
mod drop_log;
pub mod error;
pub mod event;
pub mod ipc;
pub mod kernels;
pub mod launch;
mod loader;
pub mod memory;
pub mod module;
pub(crate) mod os;
pub mod pinned;
pub mod pubsub;
pub(crate) mod result;
mod service;
pub mod stream;
pub(crate) mod sys;
mod uses;

pub use context::Context;
pub use device::{Device, DeviceInfo, GpuUuid};
pub use drop_log::{drop_error_count, take_drop_errors, DropError, KEPT_DROP_ERRORS};
pub use error::{DriverError, Error, Result};
pub use event::Event;
pub use kernels::Kernels;
pub use launch::LaunchConfig;
pub use memory::{DeviceBuffer, DeviceMemory, DeviceMemoryMut, DeviceSlice, DeviceSliceMut};
pub use module::{Function, Module};
pub use pinned::PinnedHostBuffer;
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
    pub use crate::pinned::PinnedHostBuffer;
    pub use crate::stream::Stream;
}
