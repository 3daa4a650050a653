//! Contexts: a GPU's primary context, usable from any thread.
//!
//! A [`Context`] retains the device's primary context (`cuDevicePrimaryCtxRetain`), the same one
//! the CUDA runtime, PyTorch and CuPy use, and releases it on drop. Everything allocated in it
//! (buffers, streams, events, imported mappings) borrows it, so the compiler forbids using any of
//! them after the context is gone:
//!
//! ```compile_fail,E0597
//! use cuda_ipc::{Context, Device, DeviceBuffer};
//! let buf = {
//!     let ctx = Context::new(Device::by_ordinal(0)?)?;
//!     DeviceBuffer::<u32>::zeroed(&ctx, 16)?
//! }; // error[E0597]: `ctx` does not live long enough
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
//!
//! Every operation makes its context current on the calling thread for its own duration and
//! then restores whatever was current before (another CUDA library's context, say), so a
//! context and its objects can be shared between threads freely and mixed with other CUDA
//! code on one thread.

use std::marker::PhantomData;
use std::sync::{Mutex, OnceLock};

use crate::device::{init, Device};
use crate::drop_log;
use crate::error::Result;
use crate::kernels::KernelModule;
use crate::result::{self, CUcontext, CUstream};
use crate::uses::StreamUses;

/// Keeps a [`Context`] current on this thread; dropping it makes the context that was current
/// before [`Context::bind`] current again. Not `Send`: the current context is per thread.
#[must_use = "the context is current only while the guard lives: `let _bound = ctx.bind()?;`"]
pub struct Bound<'a> {
    restore: Option<CUcontext>,
    _not_send: PhantomData<(&'a Context, *const ())>,
}

impl Drop for Bound<'_> {
    fn drop(&mut self) {
        if let Some(previous) = self.restore.take() {
            // SAFETY: `previous` was current on this thread when the guard was made (or null,
            // which unbinds); whoever made it current keeps it alive across our call.
            drop_log::check("Context guard (restoring the previous context)", unsafe {
                result::ctx_set_current(previous)
            });
        }
    }
}

/// A GPU's primary context.
pub struct Context {
    device: Device,
    raw: CUcontext,
    kernels: OnceLock<KernelModule>,
    /// The private non-blocking stream of synchronous copies (made on first use).
    copies: OnceLock<CUstream>,
    /// `cuCtxGetId`: unique for the process's life (the address may be reused).
    id: u64,
}

// SAFETY: a CUcontext is an opaque handle that the driver allows to be current on any number
// of threads at once; every use goes through `bind`, which makes it current on the calling
// thread first. The lazily loaded kernel module is behind a OnceLock and its function handles
// are immutable after loading.
unsafe impl Send for Context {}
// SAFETY: see Send; the driver serialises concurrent calls on one context internally.
unsafe impl Sync for Context {}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Context({:?})", self.device)
    }
}

impl Context {
    /// Retains the primary context of `device`.
    pub fn new(device: Device) -> Result<Context> {
        init()?;
        let raw = result::primary_ctx_retain(device.raw())?;
        // SAFETY: `raw` was just retained.
        let id = match unsafe { result::ctx_get_id(raw) } {
            Ok(id) => id,
            Err(e) => {
                // SAFETY: matches the retain just above; nothing uses the context yet.
                drop_log::check(
                    "Context (cuDevicePrimaryCtxRelease after a failure)",
                    unsafe { result::primary_ctx_release(device.raw()) },
                );
                return Err(e.into());
            }
        };
        let ctx = Context {
            device,
            raw,
            kernels: OnceLock::new(),
            copies: OnceLock::new(),
            id,
        };
        Ok(ctx)
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// An id of the underlying context, unique for the life of the process (`cuCtxGetId`):
    /// every `Context` of one primary context has the same, a re-created one another.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The raw `CUcontext`. Do not free or release it: the `Context` owns one reference.
    pub fn raw(&self) -> CUcontext {
        self.raw
    }

    /// Makes this context current on the calling thread until the returned guard drops, which
    /// makes the previous one (maybe another library's, maybe none) current again. A no-op
    /// when this context already is current. Keep the guard in a named binding:
    ///
    /// ```no_run
    /// # use cuda_ipc::{Context, Device};
    /// let ctx = Context::new(Device::by_ordinal(0)?)?;
    /// let _bound = ctx.bind()?; // current until the end of this scope
    /// // ... raw driver calls of your own ...
    /// # Ok::<(), cuda_ipc::Error>(())
    /// ```
    pub fn bind(&self) -> Result<Bound<'_>> {
        let previous = result::ctx_get_current()?;
        if previous == self.raw {
            return Ok(Bound {
                restore: None,
                _not_send: PhantomData,
            });
        }
        // SAFETY: `self.raw` is live for as long as `self` is (we hold a retain).
        unsafe { result::ctx_set_current(self.raw) }?;
        Ok(Bound {
            restore: Some(previous),
            _not_send: PhantomData,
        })
    }

    /// Waits until all work in this context is done.
    pub fn synchronize(&self) -> Result<()> {
        let _bound = self.bind()?;
        Ok(result::ctx_synchronize()?)
    }

    /// Lets kernels and copies of this context access memory allocated in `peer` directly
    /// (`cuCtxEnablePeerAccess`); a no-op when already enabled or when both are one device.
    /// Imports never need this (they map the memory into this context themselves); raw peer
    /// copies between two contexts' own allocations are staged through the host without it.
    pub fn enable_peer_access(&self, peer: &Context) -> Result<()> {
        if self.raw == peer.raw {
            return Ok(());
        }
        let _bound = self.bind()?;
        // SAFETY: `peer` is live while borrowed.
        match unsafe { result::ctx_enable_peer_access(peer.raw) } {
            Err(e) if e.is(result::codes::PEER_ACCESS_ALREADY_ENABLED) => Ok(()),
            other => Ok(other?),
        }
    }

    /// (free, total) bytes of this context's device (`cuMemGetInfo`).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        let _bound = self.bind()?;
        Ok(result::mem_get_info()?)
    }

    /// How many imported mappings are live in this context (each maps one exported buffer,
    /// however many [`SharedDeviceBuffer`](crate::ipc::SharedDeviceBuffer)s share it). The
    /// import cache is per process and per primary context: every `Context` of one GPU sees
    /// the same mappings.
    pub fn imported_mappings(&self) -> usize {
        crate::ipc::mapping::live_in(self.id)
    }

    /// The primary context of `device`, retained once for the rest of the process and never
    /// released: a `&'static Context`, so buffers, streams and imports made in it can live in
    /// your own long-lived structs (a server's state, say) without a borrowed lifetime.
    ///
    /// ```no_run
    /// use cuda_ipc::prelude::*;
    /// struct Server {
    ///     frames: DeviceBuffer<'static, u32>,
    /// }
    /// let ctx: &'static Context = Context::primary(Device::by_ordinal(0)?)?;
    /// let server = Server { frames: DeviceBuffer::zeroed(ctx, 1024)? };
    /// # Ok::<(), cuda_ipc::Error>(())
    /// ```
    ///
    /// Every call for one device returns the same `Context`. Use [`Context::new`] instead
    /// where you want the borrow checker to tie everything to a scope.
    pub fn primary(device: Device) -> Result<&'static Context> {
        static PRIMARY: Mutex<Vec<(Device, &'static Context)>> = Mutex::new(Vec::new());
        let mut known = PRIMARY.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, ctx)) = known.iter().find(|(d, _)| *d == device) {
            return Ok(ctx);
        }
        let ctx: &'static Context = Box::leak(Box::new(Context::new(device)?));
        known.push((device, ctx));
        Ok(ctx)
    }

    /// Runs a synchronous operation: waits on the host for every recorded use of the memory in
    /// `after` (each with its own context), then `op` queues it on this context's private
    /// non-blocking stream, and this waits for it. Not ordered with unrelated streams (no
    /// legacy default stream involved).
    pub(crate) fn run_sync(
        &self,
        after: &[(&Context, Option<&StreamUses>)],
        op: impl FnOnce(CUstream) -> result::DriverResult<()>,
    ) -> Result<()> {
        for (ctx, uses) in after {
            if let Some(uses) = uses {
                uses.wait_host(ctx)?;
            }
        }
        let _bound = self.bind()?;
        let stream = match self.copies.get() {
            Some(s) => *s,
            None => {
                let made = result::stream_create_non_blocking()?;
                if let Err(made) = self.copies.set(made) {
                    // Another thread won the race: ours is unused.
                    // SAFETY: our own new stream, never used.
                    drop_log::check("copy stream (cuStreamDestroy)", unsafe {
                        result::stream_destroy(made)
                    });
                }
                *self.copies.get().unwrap_or(&made)
            }
        };
        op(stream)?;
        // SAFETY: our own live stream.
        unsafe { result::stream_synchronize(stream) }?;
        Ok(())
    }

    pub(crate) fn kernel_module(&self) -> Result<&KernelModule> {
        if let Some(module) = self.kernels.get() {
            return Ok(module);
        }
        let module = KernelModule::load(self)?;
        // Another thread may have won the race: its module is kept and ours is unloaded.
        if let Err(ours) = self.kernels.set(module) {
            match self.bind() {
                Ok(_bound) => ours.unload(),
                Err(e) => drop_log::record("kernel module (binding to unload a duplicate)", e),
            }
        }
        self.kernels.get().ok_or_else(|| {
            crate::error::Error::Unsupported("the kernel module could not be kept".into())
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Some(module) = self.kernels.take() {
            match self.bind() {
                Ok(_bound) => module.unload(),
                Err(e) => drop_log::record("kernel module (binding its context to unload)", e),
            }
        }
        if let Some(stream) = self.copies.take() {
            match self.bind() {
                // SAFETY: our own stream; every synchronous copy on it has returned.
                Ok(_bound) => drop_log::check("copy stream (cuStreamDestroy)", unsafe {
                    result::stream_destroy(stream)
                }),
                Err(e) => drop_log::record("copy stream (binding its context)", e),
            }
        }
        // SAFETY: matches the retain in `new`; every object borrowing this context is gone.
        drop_log::check("Context (cuDevicePrimaryCtxRelease)", unsafe {
            result::primary_ctx_release(self.device.raw())
        });
    }
}
