//! [cudarc](https://docs.rs/cudarc) interop (feature `cudarc`): use the crate's buffers —
//! shared ones included, imported from another process or not — in cudarc copies and kernel
//! launches, without copying them.
//!
//! Both crates use the device's primary context, so a device pointer of one is valid in the
//! other. [`cudarc_context`] gives the cudarc `CudaContext` of a [`Context`] (checking that it
//! is the same primary context), and [`CudarcExt::cudarc_view`] /
//! [`CudarcExtMut::cudarc_view_mut`] wrap any device memory of this crate as a view that
//! cudarc's `memcpy_*`, `memset_zeros` and `launch_builder().arg(..)` accept (it implements
//! cudarc's `DevicePtr` / `DevicePtrMut` and `PushKernelArg`). A view refuses a stream of
//! another context.
//!
//! ```no_run
//! use std::time::Duration;
//! use cudarc::driver::{LaunchConfig, PushKernelArg};
//! use cuda_ipc::cudarc_interop::{cudarc_context, CudarcExt, CudarcExtMut};
//! use cuda_ipc::prelude::*;
//!
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let mut frames =
//!     SharedDeviceBuffer::<u32>::import(&ctx, "/shared/cuda-ipc/frames", Duration::from_secs(30))?;
//! let cu = cudarc_context(&ctx)?;
//! let stream = cu.default_stream();
//!
//! // A cudarc copy out of the shared buffer.
//! let host: Vec<u32> = stream.clone_dtoh(&frames.cudarc_view(&stream)?).unwrap();
//!
//! // A cudarc kernel writing it in place.
//! let module = cu.load_module(cudarc::nvrtc::Ptx::from_src(cuda_ipc::kernels::PTX)).unwrap();
//! let add = module.load_function("add_words_atomic").unwrap();
//! let n = frames.len() as u64;
//! let mut view = frames.cudarc_view_mut(&stream)?;
//! let value = 1u32;
//! let mut launch = stream.launch_builder(&add);
//! launch.arg(&mut view).arg(&n).arg(&value);
//! // SAFETY: add_words_atomic(uint32_t *words, uint64_t n, uint32_t value) touches words[0..n].
//! unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }.unwrap();
//! stream.synchronize().unwrap();
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
//!
//! Lifetimes: a view borrows the buffer, but cudarc's copies and launches are asynchronous and
//! may still run when the borrow ends, on streams this crate does not see. So while a view
//! lives, dropping the memory or a synchronous copy of it waits for its whole context
//! (`cuCtxSynchronize`), which covers every cudarc stream of the device, and dropping the view
//! synchronizes the context once (its cudarc work is then done), after which the memory's
//! exact, per-stream tracking resumes. A forgotten view keeps the memory conservative. A cudarc copy on a stream of *another*
//! context waits for itself (`SyncOnDrop::Sync`). A cudarc kernel launch must use a stream of
//! the memory's context (cudarc's `launch` is `unsafe`: that is part of its contract).

use std::marker::PhantomData;
use std::sync::Arc;

use bytemuck::Pod;
use cudarc::driver::{
    sys as cusys, CudaContext, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice as CuDeviceSlice,
    LaunchArgs, PushKernelArg, SyncOnDrop,
};

use crate::context::Context;
use crate::error::{DriverError, Error, Result};
use crate::memory::{DeviceMemory, DeviceMemoryMut, DeviceSlice};
use crate::uses::StreamUses;

fn from_cudarc(call: &'static str, e: cudarc::driver::DriverError) -> Error {
    Error::Driver(DriverError::new(call, e.0 as u32))
}

fn same_context(cu: &CudaContext, ctx: &Context) -> bool {
    std::ptr::eq(cu.cu_ctx().cast::<()>(), ctx.raw().cast::<()>())
}

/// The cudarc context of `ctx`'s device: the same primary context, retained once more by
/// cudarc (`CudaContext::new`). Fails if cudarc's device of that ordinal is another context
/// (which would mean the two crates number devices differently).
pub fn cudarc_context(ctx: &Context) -> Result<Arc<CudaContext>> {
    let cu = CudaContext::new(ctx.device().ordinal())
        .map_err(|e| from_cudarc("cudarc CudaContext::new", e))?;
    // cudarc binds its context to the thread and leaves it there; ours is that same one.
    if !same_context(&cu, ctx) {
        return Err(Error::InvalidArgument(format!(
            "cudarc's primary context of device ordinal {} is not the one of {}",
            ctx.device().ordinal(),
            ctx.device().label()
        )));
    }
    Ok(cu)
}

fn check_stream<T: Pod>(view: &DeviceSlice<'_, T>, stream: &CudaStream) -> Result<()> {
    if same_context(stream.context(), view.context()) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "the cudarc stream belongs to device ordinal {} but the memory to {}: use a stream \
             of the memory's context (cudarc_context of its Context)",
            stream.context().ordinal(),
            view.context().device().label()
        )))
    }
}

/// Read-only device memory of this crate as cudarc sees it (`DevicePtr`, `&view` as a kernel
/// argument). Made by [`CudarcExt::cudarc_view`].
#[derive(Debug)]
pub struct CudarcView<'a, T> {
    ptr: cusys::CUdeviceptr,
    len: usize,
    stream: &'a Arc<CudaStream>,
    ctx: &'a Context,
    _foreign: ForeignUse<'a>,
    _memory: PhantomData<&'a [T]>,
}

/// While a view lives, the memory counts as used by streams this crate cannot see: its drop
/// and its synchronous copies wait for its whole context (cudarc's streams of this device
/// belong to that same primary context). The view's drop synchronizes the context, after
/// which exact tracking resumes. A forgotten view leaves the memory conservative for good.
#[derive(Debug)]
struct ForeignUse<'a> {
    ctx: &'a Context,
    uses: Option<&'a StreamUses>,
}

impl<'a> ForeignUse<'a> {
    fn begin<T: Pod>(view: &DeviceSlice<'a, T>) -> Self {
        let uses = view.uses();
        if let Some(uses) = uses {
            uses.begin_foreign();
        }
        ForeignUse {
            ctx: view.context(),
            uses,
        }
    }
}

impl Drop for ForeignUse<'_> {
    fn drop(&mut self) {
        if let Some(uses) = self.uses {
            uses.end_foreign(self.ctx);
        }
    }
}

/// Writable device memory of this crate as cudarc sees it (`DevicePtr`, `DevicePtrMut`,
/// `&mut view` as a kernel argument). Made by [`CudarcExtMut::cudarc_view_mut`].
#[derive(Debug)]
pub struct CudarcViewMut<'a, T> {
    ptr: cusys::CUdeviceptr,
    len: usize,
    stream: &'a Arc<CudaStream>,
    ctx: &'a Context,
    _foreign: ForeignUse<'a>,
    _memory: PhantomData<&'a mut [T]>,
}

/// [`DeviceMemory`] for cudarc.
pub trait CudarcExt<T: Pod> {
    /// This memory as a cudarc view used on `stream`, which must be of the memory's context.
    fn cudarc_view<'a>(&'a self, stream: &'a Arc<CudaStream>) -> Result<CudarcView<'a, T>>;
}

/// [`DeviceMemoryMut`] for cudarc.
pub trait CudarcExtMut<T: Pod> {
    /// This memory as a writable cudarc view used on `stream`, which must be of the memory's
    /// context.
    fn cudarc_view_mut<'a>(
        &'a mut self,
        stream: &'a Arc<CudaStream>,
    ) -> Result<CudarcViewMut<'a, T>>;
}

impl<T: Pod, M: DeviceMemory<T> + ?Sized> CudarcExt<T> for M {
    fn cudarc_view<'a>(&'a self, stream: &'a Arc<CudaStream>) -> Result<CudarcView<'a, T>> {
        let view = self.view();
        check_stream(&view, stream)?;
        Ok(CudarcView {
            ptr: view.device_ptr(),
            len: view.len(),
            stream,
            ctx: view.context(),
            _foreign: ForeignUse::begin(&view),
            _memory: PhantomData,
        })
    }
}

impl<T: Pod, M: DeviceMemoryMut<T> + ?Sized> CudarcExtMut<T> for M {
    fn cudarc_view_mut<'a>(
        &'a mut self,
        stream: &'a Arc<CudaStream>,
    ) -> Result<CudarcViewMut<'a, T>> {
        let view = self.view();
        check_stream(&view, stream)?;
        Ok(CudarcViewMut {
            ptr: view.device_ptr(),
            len: view.len(),
            stream,
            ctx: view.context(),
            _foreign: ForeignUse::begin(&view),
            _memory: PhantomData,
        })
    }
}

impl<T> CuDeviceSlice<T> for CudarcView<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.stream
    }
}

impl<T> CuDeviceSlice<T> for CudarcViewMut<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.stream
    }
}

/// What cudarc does after queuing an operation on `stream` with the view: nothing when the
/// stream is of the memory's context (the memory is marked untracked, so its drop waits for the
/// whole context); a synchronize when it is another context's stream, which that wait would not
/// cover.
fn after_use<'b>(ctx: &Context, stream: &'b CudaStream) -> SyncOnDrop<'b> {
    if same_context(stream.context(), ctx) {
        SyncOnDrop::Record(None)
    } else {
        SyncOnDrop::Sync(Some(stream))
    }
}

impl<T> DevicePtr<T> for CudarcView<'_, T> {
    fn device_ptr<'b>(&'b self, stream: &'b CudaStream) -> (cusys::CUdeviceptr, SyncOnDrop<'b>) {
        (self.ptr, after_use(self.ctx, stream))
    }
}

impl<T> DevicePtr<T> for CudarcViewMut<'_, T> {
    fn device_ptr<'b>(&'b self, stream: &'b CudaStream) -> (cusys::CUdeviceptr, SyncOnDrop<'b>) {
        (self.ptr, after_use(self.ctx, stream))
    }
}

impl<T> DevicePtrMut<T> for CudarcViewMut<'_, T> {
    fn device_ptr_mut<'b>(
        &'b mut self,
        stream: &'b CudaStream,
    ) -> (cusys::CUdeviceptr, SyncOnDrop<'b>) {
        (self.ptr, after_use(self.ctx, stream))
    }
}

// SAFETY: the argument is the address of the view's device pointer, a `u64` that lives as long
// as the borrow `'b`, which outlives the launch builder `'a`; the kernel receives the pointer
// by value, as for cudarc's own views.
unsafe impl<'a, 'b: 'a, 'c: 'b, T> PushKernelArg<&'b CudarcView<'c, T>> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b CudarcView<'c, T>) -> &mut Self {
        self.arg(&arg.ptr)
    }
}

// SAFETY: as for `&CudarcView`.
unsafe impl<'a, 'b: 'a, 'c: 'b, T> PushKernelArg<&'b mut CudarcViewMut<'c, T>> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b mut CudarcViewMut<'c, T>) -> &mut Self {
        self.arg(&arg.ptr)
    }
}
