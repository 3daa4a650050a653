//! Page-locked (pinned) host memory, for asynchronous copies that overlap with the GPU.
//!
//! A [`PinnedHostBuffer`] is host memory the GPU can copy to and from by DMA while the CPU does
//! other work: [`DeviceSlice::copy_to_host_async`](crate::DeviceSlice::copy_to_host_async) and
//! [`DeviceSliceMut::copy_from_host_async`](crate::DeviceSliceMut::copy_from_host_async) queue
//! a copy on a stream and return at once.
//!
//! ```no_run
//! use cuda_ipc::prelude::*;
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let stream = Stream::new(&ctx)?;
//! let mut dev = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 20)?;
//! let mut host = PinnedHostBuffer::<u32>::zeroed(&ctx, 1 << 20)?;
//! host.as_mut_slice()?.fill(7);
//! dev.view_mut().copy_from_host_async(&host, &stream)?; // returns at once
//! ctx.kernels()?.transform_words(&stream, &mut dev, 1)?;
//! dev.view().copy_to_host_async(&mut host, &stream)?;
//! // ... CPU work overlaps with the copies and the kernel ...
//! let words = host.as_slice()?; // waits for the copy into `host`, and only for that
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
//!
//! # Why this is safe
//! A pending copy must not see its host memory freed, nor read or written by the CPU. Rather
//! than a borrow that `mem::forget` could end early, the buffer records every copy queued on
//! it (an event on the copy's stream, as device memory does): reading or writing it from the
//! CPU ([`as_slice`](PinnedHostBuffer::as_slice), [`as_mut_slice`](PinnedHostBuffer::as_mut_slice))
//! and dropping it first wait for those copies — and for nothing else.

use std::marker::PhantomData;

use bytemuck::Pod;

use crate::context::Context;
use crate::drop_log;
use crate::error::{Error, Result};
use crate::memory::byte_len_of;
use crate::result;
use crate::uses::StreamUses;

/// `len` elements of `T` in page-locked host memory (`cuMemHostAlloc`), freed on drop.
pub struct PinnedHostBuffer<'ctx, T: Pod> {
    ctx: &'ctx Context,
    ptr: *mut T,
    len: usize,
    uses: StreamUses,
    _marker: PhantomData<T>,
}

// SAFETY: the buffer owns its host memory; CPU access goes through &self/&mut self after
// waiting for the GPU's copies; the copy record is behind a mutex.
unsafe impl<T: Pod + Send> Send for PinnedHostBuffer<'_, T> {}
// SAFETY: shared access only reads (after the pending copies into it are done).
unsafe impl<T: Pod + Sync> Sync for PinnedHostBuffer<'_, T> {}

impl<T: Pod> std::fmt::Debug for PinnedHostBuffer<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PinnedHostBuffer<{}>({:?}, len {})",
            std::any::type_name::<T>(),
            self.ctx.device(),
            self.len
        )
    }
}

impl<'ctx, T: Pod> PinnedHostBuffer<'ctx, T> {
    /// `len` zeroed elements.
    pub fn zeroed(ctx: &'ctx Context, len: usize) -> Result<Self> {
        let bytes = byte_len_of::<T>(len)?;
        let ptr = if bytes == 0 {
            std::ptr::NonNull::<T>::dangling().as_ptr()
        } else {
            let _bound = ctx.bind()?;
            let p = result::mem_host_alloc(bytes)?;
            if (p as usize) % std::mem::align_of::<T>() != 0 {
                // SAFETY: just allocated, unused.
                drop_log::check("PinnedHostBuffer (cuMemFreeHost)", unsafe {
                    result::mem_free_host(p)
                });
                return Err(Error::InvalidArgument(format!(
                    "cuMemHostAlloc returned memory not aligned for {}",
                    std::any::type_name::<T>()
                )));
            }
            // SAFETY: `bytes` writable bytes were just allocated at `p`.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, bytes) };
            p.cast::<T>()
        };
        Ok(PinnedHostBuffer {
            ctx,
            ptr,
            len,
            uses: StreamUses::default(),
            _marker: PhantomData,
        })
    }

    /// A pinned copy of `data`.
    pub fn from_slice(ctx: &'ctx Context, data: &[T]) -> Result<Self> {
        let mut buf = Self::zeroed(ctx, data.len())?;
        buf.as_mut_slice()?.copy_from_slice(data);
        Ok(buf)
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The context it was allocated in (its copies use streams of this context).
    pub fn context(&self) -> &'ctx Context {
        self.ctx
    }

    /// The contents, once every copy queued on this buffer is done (waits for them only). An
    /// error if the wait failed: the buffer may then still be in use by a copy.
    pub fn as_slice(&self) -> Result<&[T]> {
        self.uses.wait_all(self.ctx)?;
        // SAFETY: `len` initialised (zeroed, then copied into) elements at an aligned `ptr`
        // that we own; no copy is pending, and new ones need `&mut self` or a shared read.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }

    /// The contents, writable, once every copy queued on this buffer is done.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        self.uses.wait_all(self.ctx)?;
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow exclusive.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) })
    }

    /// The host address and the copy record, for the copies of [`crate::memory`].
    pub(crate) fn raw_parts(&self) -> (*mut T, &StreamUses) {
        (self.ptr, &self.uses)
    }
}

impl<T: Pod> Drop for PinnedHostBuffer<'_, T> {
    fn drop(&mut self) {
        if self.len == 0 || std::mem::size_of::<T>() == 0 {
            return;
        }
        self.uses.wait_and_clear(
            self.ctx,
            "PinnedHostBuffer (waiting for its copies before free)",
        );
        let _bound = match self.ctx.bind() {
            Ok(b) => b,
            Err(e) => {
                drop_log::record(
                    "PinnedHostBuffer (binding its context to free it; leaked)",
                    e,
                );
                return;
            }
        };
        // SAFETY: allocated by cuMemHostAlloc in `zeroed`; every copy using it is done.
        drop_log::check("PinnedHostBuffer (cuMemFreeHost)", unsafe {
            result::mem_free_host(self.ptr.cast())
        });
    }
}
