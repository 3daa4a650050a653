//! Typed device memory: owned buffers, borrowed views, and the traits that copies and kernels
//! accept.
//!
//! [`DeviceBuffer<'ctx, T>`](DeviceBuffer) owns `len` elements of a [`bytemuck::Pod`] type on
//! one GPU and frees them on drop. [`DeviceSlice`] and [`DeviceSliceMut`] borrow a range of any
//! device memory, like `&[T]` and `&mut [T]`. Copies and kernels accept anything that
//! implements [`DeviceMemory`] (read) or [`DeviceMemoryMut`] (write): owned buffers, views, and
//! the shared buffers of [`crate::ipc`] alike. Bring the traits into scope with
//! `use cuda_ipc::prelude::*`.
//!
//! ```no_run
//! use cuda_ipc::prelude::*;
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let mut buf = DeviceBuffer::from_slice(&ctx, &[1.0f32, 2.0, 3.0, 4.0])?;
//! buf.view_mut().slice_mut(1..3)?.copy_from_slice(&[20.0, 30.0])?;
//! assert_eq!(buf.copy_to_vec()?, vec![1.0, 20.0, 30.0, 4.0]);
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
//!
//! # Stream-ordered lifetimes
//! Memory remembers which streams used it: every kernel, asynchronous copy, memset or signal
//! operation this crate queues records an event on its stream for the memory it touches.
//! Dropping a buffer waits for those events only — never for the whole context — so it is never
//! freed under running work of its own, and never waits for unrelated streams. Synchronous
//! copies run on a private non-blocking stream of the context, after the memory's recorded
//! uses: they see everything queued on the memory before them, and do not serialize with
//! unrelated streams (no legacy default stream). Work you queue yourself with a raw pointer is
//! not tracked: record it with [`DeviceSlice::record_use`], or synchronize before dropping.

use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use bytemuck::Pod;

use crate::context::Context;
use crate::drop_log;
use crate::error::{Error, Result};
use crate::pinned::PinnedHostBuffer;
use crate::result::{self, CUdeviceptr};
use crate::stream::Stream;
use crate::uses::StreamUses;

/// Bytes of `len` elements of `T`, or an error on overflow.
pub(crate) fn byte_len_of<T>(len: usize) -> Result<usize> {
    len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{len} elements of {} bytes overflow usize",
            std::mem::size_of::<T>()
        ))
    })
}

fn same_context(a: &Context, b: &Context) -> bool {
    a.raw() == b.raw()
}

pub(crate) fn check_stream(ctx: &Context, stream: &Stream<'_>) -> Result<()> {
    if same_context(ctx, stream.context()) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "the stream belongs to {:?} but the memory to {:?}: use a stream of the memory's context",
            stream.context().device(),
            ctx.device()
        )))
    }
}

/// A borrowed, read-only range of device memory (like `&[T]`).
pub struct DeviceSlice<'a, T> {
    ctx: &'a Context,
    ptr: CUdeviceptr,
    len: usize,
    uses: Option<&'a StreamUses>,
    _marker: PhantomData<&'a [T]>,
}

impl<T> Clone for DeviceSlice<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DeviceSlice<'_, T> {}

impl<T> std::fmt::Debug for DeviceSlice<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceSlice<{}>({:?}, {:#x}, len {})",
            std::any::type_name::<T>(),
            self.ctx.device(),
            self.ptr,
            self.len
        )
    }
}

/// A borrowed, writable range of device memory (like `&mut [T]`).
pub struct DeviceSliceMut<'a, T> {
    ctx: &'a Context,
    ptr: CUdeviceptr,
    len: usize,
    uses: Option<&'a StreamUses>,
    _marker: PhantomData<&'a mut [T]>,
}

impl<T> std::fmt::Debug for DeviceSliceMut<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceSliceMut<{}>({:?}, {:#x}, len {})",
            std::any::type_name::<T>(),
            self.ctx.device(),
            self.ptr,
            self.len
        )
    }
}

fn sub_range(range: impl RangeBounds<usize>, len: usize) -> Result<(usize, usize)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    if start > end || end > len {
        return Err(Error::InvalidArgument(format!(
            "range {start}..{end} is out of bounds of a device slice of length {len}"
        )));
    }
    Ok((start, end - start))
}

impl<'a, T: Pod> DeviceSlice<'a, T> {
    /// A view of raw device memory.
    ///
    /// # Safety
    /// `ptr..ptr + len * size_of::<T>()` must be device memory of `ctx` (or mapped into it),
    /// valid for reads for `'a`, holding valid `T`s (always true for `Pod`), and `ptr` must be
    /// aligned to `align_of::<T>()` (kernels load whole elements; a misaligned load faults and
    /// poisons the context).
    pub unsafe fn from_raw_parts(ctx: &'a Context, ptr: CUdeviceptr, len: usize) -> Self {
        debug_assert!(
            ptr % std::mem::align_of::<T>() as u64 == 0,
            "DeviceSlice::from_raw_parts: misaligned pointer"
        );
        DeviceSlice {
            ctx,
            ptr,
            len,
            uses: None,
            _marker: PhantomData,
        }
    }

    /// A view of memory whose owner tracks the streams that use it (`uses`).
    pub(crate) fn tracked(
        ctx: &'a Context,
        ptr: CUdeviceptr,
        len: usize,
        uses: &'a StreamUses,
    ) -> Self {
        DeviceSlice {
            ctx,
            ptr,
            len,
            uses: Some(uses),
            _marker: PhantomData,
        }
    }

    /// The owner's record of the streams that use this memory (`None` for a raw view).
    pub(crate) fn uses(&self) -> Option<&'a StreamUses> {
        self.uses
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes.
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The device address. Do not free it: the owner of the memory does.
    pub fn device_ptr(&self) -> CUdeviceptr {
        self.ptr
    }
    /// The context the memory is accessible from.
    pub fn context(&self) -> &'a Context {
        self.ctx
    }

    /// A sub-range.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<DeviceSlice<'a, T>> {
        let (start, len) = sub_range(range, self.len)?;
        Ok(DeviceSlice {
            ctx: self.ctx,
            ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64,
            len,
            uses: self.uses,
            _marker: PhantomData,
        })
    }

    /// Copies into `dst`, which must have the same length. Synchronous.
    pub fn copy_to_slice(&self, dst: &mut [T]) -> Result<()> {
        if dst.len() != self.len {
            return Err(Error::LengthMismatch {
                what: "copy_to_slice",
                expected: self.len,
                actual: dst.len(),
            });
        }
        if self.byte_len() == 0 {
            return Ok(());
        }
        let (ptr, bytes) = (self.ptr, self.byte_len());
        // SAFETY: the view covers `bytes` valid device bytes; dst has the same byte length and
        // outlives the call, which waits for the copy.
        self.ctx.run_sync(&[(self.ctx, self.uses)], |s| unsafe {
            result::memcpy_dtoh_async(dst.as_mut_ptr().cast(), ptr, bytes, s)
        })
    }

    /// Records that work just queued on `stream` with this memory's raw pointer (your own
    /// kernel, another library's copy) uses it, so that dropping the memory, or a synchronous
    /// copy of it, waits for that work. Work queued through this crate is recorded already.
    pub fn record_use(&self, stream: &Stream<'_>) -> Result<()> {
        check_stream(self.ctx, stream)?;
        match self.uses {
            Some(uses) => uses.record(self.ctx, stream.id(), stream.raw()),
            None => Ok(()),
        }
    }

    /// Copies into a new `Vec`. Synchronous.
    pub fn copy_to_vec(&self) -> Result<Vec<T>> {
        let mut v = vec![T::zeroed(); self.len];
        self.copy_to_slice(&mut v)?;
        Ok(v)
    }

    /// Queues a copy into `dst` on `stream`.
    ///
    /// # Safety
    /// `dst` must stay alive and untouched until `stream` has reached the copy (e.g. until
    /// [`Stream::synchronize`] returns). For overlap with the GPU it should be page-locked.
    pub unsafe fn copy_to_slice_async(&self, dst: &mut [T], stream: &Stream<'_>) -> Result<()> {
        check_stream(self.ctx, stream)?;
        if dst.len() != self.len {
            return Err(Error::LengthMismatch {
                what: "copy_to_slice_async",
                expected: self.len,
                actual: dst.len(),
            });
        }
        if self.byte_len() == 0 {
            return Ok(());
        }
        let _bound = self.ctx.bind()?;
        // SAFETY: device side as in copy_to_slice; host lifetime forwarded to the caller.
        unsafe {
            result::memcpy_dtoh_async(
                dst.as_mut_ptr().cast(),
                self.ptr,
                self.byte_len(),
                stream.raw(),
            )
        }?;
        self.record_use(stream)
    }

    /// Queues a copy into the pinned buffer `dst` (same length) on `stream` and returns at
    /// once. Safe: `dst` records the copy, and reading it ([`PinnedHostBuffer::as_slice`]) or
    /// dropping it waits for the copy; this memory's drop waits for it too.
    pub fn copy_to_host_async(
        &self,
        dst: &mut PinnedHostBuffer<'_, T>,
        stream: &Stream<'_>,
    ) -> Result<()> {
        check_stream(self.ctx, stream)?;
        check_stream(dst.context(), stream)?;
        if dst.len() != self.len {
            return Err(Error::LengthMismatch {
                what: "copy_to_host_async",
                expected: self.len,
                actual: dst.len(),
            });
        }
        if self.byte_len() == 0 {
            return Ok(());
        }
        let (host, host_uses) = dst.raw_parts();
        let _bound = self.ctx.bind()?;
        // SAFETY: the view covers byte_len device bytes; `host` holds as many pinned bytes,
        // which stay allocated and untouched by the CPU until the copy recorded below is done.
        unsafe { result::memcpy_dtoh_async(host.cast(), self.ptr, self.byte_len(), stream.raw()) }?;
        let host = host_uses.record(stream.context(), stream.id(), stream.raw());
        host.and(self.record_use(stream))
    }
}

impl<'a, T: Pod> DeviceSliceMut<'a, T> {
    /// A writable view of raw device memory.
    ///
    /// # Safety
    /// As [`DeviceSlice::from_raw_parts`] (aligned included), and valid for writes for `'a`.
    /// Other writers of the same memory (another process, another handle on a shared mapping)
    /// do not make this unsound: the host never dereferences device memory and `T` is `Pod`;
    /// ordering those writes is the program's job (streams, events, signals).
    pub unsafe fn from_raw_parts(ctx: &'a Context, ptr: CUdeviceptr, len: usize) -> Self {
        debug_assert!(
            ptr % std::mem::align_of::<T>() as u64 == 0,
            "DeviceSliceMut::from_raw_parts: misaligned pointer"
        );
        DeviceSliceMut {
            ctx,
            ptr,
            len,
            uses: None,
            _marker: PhantomData,
        }
    }

    /// A writable view of memory whose owner tracks the streams that use it (`uses`).
    pub(crate) fn tracked(
        ctx: &'a Context,
        ptr: CUdeviceptr,
        len: usize,
        uses: &'a StreamUses,
    ) -> Self {
        DeviceSliceMut {
            ctx,
            ptr,
            len,
            uses: Some(uses),
            _marker: PhantomData,
        }
    }

    /// A read-only view of the same range.
    pub fn as_slice(&self) -> DeviceSlice<'_, T> {
        DeviceSlice {
            ctx: self.ctx,
            ptr: self.ptr,
            len: self.len,
            uses: self.uses,
            _marker: PhantomData,
        }
    }

    /// The same range, read-only, for as long as this view's borrow (consumes the view).
    pub fn into_slice(self) -> DeviceSlice<'a, T> {
        DeviceSlice {
            ctx: self.ctx,
            ptr: self.ptr,
            len: self.len,
            uses: self.uses,
            _marker: PhantomData,
        }
    }

    /// Records that work just queued on `stream` with this memory's raw pointer uses it: see
    /// [`DeviceSlice::record_use`].
    pub fn record_use(&self, stream: &Stream<'_>) -> Result<()> {
        self.as_slice().record_use(stream)
    }

    /// The context the memory is accessible from. Length, address and the like come from
    /// [`DeviceMemory`], as for every kind of device memory.
    pub fn context(&self) -> &'a Context {
        self.ctx
    }

    /// A writable sub-range.
    pub fn slice_mut(self, range: impl RangeBounds<usize>) -> Result<DeviceSliceMut<'a, T>> {
        let (start, len) = sub_range(range, self.len)?;
        Ok(DeviceSliceMut {
            ctx: self.ctx,
            ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64,
            len,
            uses: self.uses,
            _marker: PhantomData,
        })
    }

    /// Copies `src`, which must have the same length, into this range. Synchronous.
    pub fn copy_from_slice(&mut self, src: &[T]) -> Result<()> {
        if src.len() != self.len {
            return Err(Error::LengthMismatch {
                what: "copy_from_slice",
                expected: self.len,
                actual: src.len(),
            });
        }
        if self.byte_len() == 0 {
            return Ok(());
        }
        let (ptr, bytes) = (self.ptr, self.byte_len());
        // SAFETY: the view covers `bytes` writable device bytes; src has the same byte length
        // and outlives the call, which waits for the copy.
        self.ctx.run_sync(&[(self.ctx, self.uses)], |s| unsafe {
            result::memcpy_htod_async(ptr, src.as_ptr().cast(), bytes, s)
        })
    }

    /// Queues a copy of `src` into this range on `stream`.
    ///
    /// # Safety
    /// `src` must stay alive and unchanged until `stream` has reached the copy.
    pub unsafe fn copy_from_slice_async(&mut self, src: &[T], stream: &Stream<'_>) -> Result<()> {
        check_stream(self.ctx, stream)?;
        if src.len() != self.len {
            return Err(Error::LengthMismatch {
                what: "copy_from_slice_async",
                expected: self.len,
                actual: src.len(),
            });
        }
        if self.byte_len() == 0 {
            return Ok(());
        }
        let _bound = self.ctx.bind()?;
        // SAFETY: device side as in copy_from_slice; host lifetime forwarded to the caller.
        unsafe {
            result::memcpy_htod_async(self.ptr, src.as_ptr().cast(), self.byte_len(), stream.raw())
        }?;
        self.record_use(stream)
    }

    /// Queues a copy of the pinned buffer `src` (same length) into this range on `stream` and
    /// returns at once. Safe: `src` records the copy, and writing it
    /// ([`PinnedHostBuffer::as_mut_slice`]) or dropping it waits for the copy.
    pub fn copy_from_host_async(
        &mut self,
        src: &PinnedHostBuffer<'_, T>,
        stream: &Stream<'_>,
    ) -> Result<()> {
        check_stream(self.ctx, stream)?;
        check_stream(src.context(), stream)?;
        if src.len() != self.len {
            return Err(Error::LengthMismatch {
                what: "copy_from_host_async",
                expected: self.len,
                actual: src.len(),
            });
        }
        if self.byte_len() == 0 {
            return Ok(());
        }
        let (host, host_uses) = src.raw_parts();
        let _bound = self.ctx.bind()?;
        // SAFETY: the view covers byte_len writable device bytes; `host` holds as many pinned
        // bytes, which stay allocated and unwritten by the CPU until the recorded copy is done.
        unsafe { result::memcpy_htod_async(self.ptr, host.cast(), self.byte_len(), stream.raw()) }?;
        let host = host_uses.record(stream.context(), stream.id(), stream.raw());
        host.and(self.record_use(stream))
    }

    /// Copies device memory of the same length into this range. Synchronous. Works across
    /// GPUs (a peer copy when the contexts differ).
    pub fn copy_from_device(&mut self, src: &DeviceSlice<'_, T>) -> Result<()> {
        self.copy_device(src, None)
    }

    /// Queues a copy of device memory of the same context into this range on `stream`. Safe
    /// because dropping device memory waits for the streams that used it.
    pub fn copy_from_device_async(
        &mut self,
        src: &DeviceSlice<'_, T>,
        stream: &Stream<'_>,
    ) -> Result<()> {
        check_stream(self.ctx, stream)?;
        if !same_context(self.ctx, src.ctx) {
            return Err(Error::InvalidArgument(
                "copy_from_device_async needs both sides in one context; use copy_from_device \
                 for a copy across GPUs"
                    .into(),
            ));
        }
        self.copy_device(src, Some(stream))
    }

    fn copy_device(&mut self, src: &DeviceSlice<'_, T>, stream: Option<&Stream<'_>>) -> Result<()> {
        if src.len != self.len {
            return Err(Error::LengthMismatch {
                what: "copy_from_device",
                expected: self.len,
                actual: src.len,
            });
        }
        let bytes = self.byte_len();
        if bytes == 0 {
            return Ok(());
        }
        let (dst, src_ptr) = (self.ptr, src.ptr);
        match stream {
            Some(s) => {
                let _bound = self.ctx.bind()?;
                // SAFETY: both views cover `bytes` valid bytes of one context; each memory's
                // drop waits for the streams that used it, and both record this one below.
                unsafe { result::memcpy_dtod_async(dst, src_ptr, bytes, s.raw()) }?;
                // Record both, even if one fails (a failed record marks its memory untracked).
                let (a, b) = (src.record_use(s), self.record_use(s));
                a.and(b)
            }
            None if same_context(self.ctx, src.ctx) => {
                // SAFETY: both views cover `bytes` valid bytes; the call waits for the copy.
                self.ctx
                    .run_sync(&[(self.ctx, self.uses), (src.ctx, src.uses)], |s| unsafe {
                        result::memcpy_dtod_async(dst, src_ptr, bytes, s)
                    })
            }
            None => {
                let (dst_ctx, src_ctx) = (self.ctx.raw(), src.ctx.raw());
                // SAFETY: each pointer is valid in its own context for `bytes` bytes; the call
                // waits for the copy before the borrows end.
                self.ctx
                    .run_sync(&[(self.ctx, self.uses), (src.ctx, src.uses)], |s| unsafe {
                        result::memcpy_peer_async(dst, dst_ctx, src_ptr, src_ctx, bytes, s)
                    })
            }
        }
    }

    /// Sets every byte to zero. Synchronous.
    pub fn zero(&mut self) -> Result<()> {
        if self.byte_len() == 0 {
            return Ok(());
        }
        let (ptr, bytes) = (self.ptr, self.byte_len());
        // SAFETY: the view covers `bytes` writable bytes; the call waits for the memset.
        self.ctx.run_sync(&[(self.ctx, self.uses)], |s| unsafe {
            result::memset_d8_async(ptr, 0, bytes, s)
        })
    }

    /// Queues setting every byte to zero on `stream`.
    pub fn zero_async(&mut self, stream: &Stream<'_>) -> Result<()> {
        check_stream(self.ctx, stream)?;
        if self.byte_len() == 0 {
            return Ok(());
        }
        let _bound = self.ctx.bind()?;
        // SAFETY: the view covers byte_len writable bytes, whose drop waits for this stream.
        unsafe { result::memset_d8_async(self.ptr, 0, self.byte_len(), stream.raw()) }?;
        self.record_use(stream)
    }
}

/// Device memory that can be read: owned buffers, views, shared buffers.
pub trait DeviceMemory<T: Pod> {
    /// A read-only view of all of it.
    fn view(&self) -> DeviceSlice<'_, T>;

    /// Elements.
    fn len(&self) -> usize {
        self.view().len()
    }
    /// Whether there are no elements.
    fn is_empty(&self) -> bool {
        self.view().is_empty()
    }
    /// Bytes.
    fn byte_len(&self) -> usize {
        self.view().byte_len()
    }
    /// The device address. Do not free it: the owner of the memory does.
    fn device_ptr(&self) -> CUdeviceptr {
        self.view().device_ptr()
    }
    /// Copies into `dst` (same length). Synchronous.
    fn copy_to_slice(&self, dst: &mut [T]) -> Result<()> {
        self.view().copy_to_slice(dst)
    }
    /// Copies into a new `Vec`. Synchronous.
    fn copy_to_vec(&self) -> Result<Vec<T>> {
        self.view().copy_to_vec()
    }
    /// Queues a copy into the pinned buffer `dst` (same length) on `stream`; see
    /// [`DeviceSlice::copy_to_host_async`].
    fn copy_to_host_async(
        &self,
        dst: &mut PinnedHostBuffer<'_, T>,
        stream: &Stream<'_>,
    ) -> Result<()> {
        self.view().copy_to_host_async(dst, stream)
    }
}

/// Device memory that can be written.
pub trait DeviceMemoryMut<T: Pod>: DeviceMemory<T> {
    /// A writable view of all of it.
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T>;

    /// Copies `src` (same length) in. Synchronous.
    fn copy_from_slice(&mut self, src: &[T]) -> Result<()> {
        self.view_mut().copy_from_slice(src)
    }
    /// Copies device memory (same length, any GPU) in. Synchronous.
    fn copy_from_device(&mut self, src: &impl DeviceMemory<T>) -> Result<()> {
        self.view_mut().copy_from_device(&src.view())
    }
    /// Queues a copy of device memory of the same context on `stream`.
    fn copy_from_device_async(
        &mut self,
        src: &impl DeviceMemory<T>,
        stream: &Stream<'_>,
    ) -> Result<()> {
        self.view_mut().copy_from_device_async(&src.view(), stream)
    }
    /// Sets every byte to zero. Synchronous.
    fn zero(&mut self) -> Result<()> {
        self.view_mut().zero()
    }
    /// Queues a copy of the pinned buffer `src` (same length) in, on `stream`; see
    /// [`DeviceSliceMut::copy_from_host_async`].
    fn copy_from_host_async(
        &mut self,
        src: &PinnedHostBuffer<'_, T>,
        stream: &Stream<'_>,
    ) -> Result<()> {
        self.view_mut().copy_from_host_async(src, stream)
    }
}

impl<T: Pod> DeviceMemory<T> for DeviceSlice<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        *self
    }
}

impl<T: Pod> DeviceMemory<T> for DeviceSliceMut<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        self.as_slice()
    }
}

impl<T: Pod> DeviceMemoryMut<T> for DeviceSliceMut<'_, T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        DeviceSliceMut {
            ctx: self.ctx,
            ptr: self.ptr,
            len: self.len,
            uses: self.uses,
            _marker: PhantomData,
        }
    }
}

/// An owned, typed allocation on one GPU (`cuMemAlloc`), freed on drop.
pub struct DeviceBuffer<'ctx, T: Pod> {
    ctx: &'ctx Context,
    ptr: CUdeviceptr,
    len: usize,
    uses: StreamUses,
    _marker: PhantomData<T>,
}

// SAFETY: the buffer owns plain device memory; every use binds its (Send + Sync) context.
unsafe impl<T: Pod + Send> Send for DeviceBuffer<'_, T> {}
// SAFETY: shared access only reads (copies out) through the driver, which is thread-safe.
unsafe impl<T: Pod + Sync> Sync for DeviceBuffer<'_, T> {}

impl<T: Pod> std::fmt::Debug for DeviceBuffer<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>({:?}, {:#x}, len {})",
            std::any::type_name::<T>(),
            self.ctx.device(),
            self.ptr,
            self.len
        )
    }
}

impl<'ctx, T: Pod> DeviceBuffer<'ctx, T> {
    /// `len` zeroed elements.
    pub fn zeroed(ctx: &'ctx Context, len: usize) -> Result<Self> {
        let mut buf = Self::alloc(ctx, len)?;
        buf.zero()?;
        Ok(buf)
    }

    /// A copy of `data`.
    pub fn from_slice(ctx: &'ctx Context, data: &[T]) -> Result<Self> {
        let mut buf = Self::alloc(ctx, data.len())?;
        buf.copy_from_slice(data)?;
        Ok(buf)
    }

    fn alloc(ctx: &'ctx Context, len: usize) -> Result<Self> {
        let bytes = byte_len_of::<T>(len)?;
        let ptr = if bytes == 0 {
            0
        } else {
            let _bound = ctx.bind()?;
            result::mem_alloc(bytes)?
        };
        Ok(DeviceBuffer {
            ctx,
            ptr,
            len,
            uses: StreamUses::default(),
            _marker: PhantomData,
        })
    }

    /// The context.
    pub fn context(&self) -> &'ctx Context {
        self.ctx
    }
}

impl<T: Pod> DeviceMemory<T> for DeviceBuffer<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        DeviceSlice {
            ctx: self.ctx,
            ptr: self.ptr,
            len: self.len,
            uses: Some(&self.uses),
            _marker: PhantomData,
        }
    }
}

impl<T: Pod> DeviceMemoryMut<T> for DeviceBuffer<'_, T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        DeviceSliceMut {
            ctx: self.ctx,
            ptr: self.ptr,
            len: self.len,
            uses: Some(&self.uses),
            _marker: PhantomData,
        }
    }
}

impl<T: Pod> Drop for DeviceBuffer<'_, T> {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        self.uses.wait_and_clear(
            self.ctx,
            "DeviceBuffer (waiting for its streams before free)",
        );
        let _bound = match self.ctx.bind() {
            Ok(b) => b,
            Err(e) => {
                drop_log::record("DeviceBuffer (binding its context to free it; leaked)", e);
                return;
            }
        };
        // SAFETY: we own the allocation, and the context's queued work is done.
        drop_log::check("DeviceBuffer (cuMemFree)", unsafe {
            result::mem_free(self.ptr)
        });
    }
}
