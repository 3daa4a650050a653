//! [`SharedDeviceBuffer<'ctx, T>`]: device memory that other processes can map.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytemuck::Pod;

use crate::context::Context;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::memory::{
    byte_len_of, check_stream, DeviceMemory, DeviceMemoryMut, DeviceSlice, DeviceSliceMut,
};
use crate::result::{self, CUdeviceptr};
use crate::stream::Stream;

use super::allocation::{layout, OwnedAllocation};
use super::descriptor::{Descriptor, TypeTag, WireTransport};
use super::identity::ProcessIdentity;
use super::mapping::{release_reference, CacheKey, ImportedMapping, MappingKind};
use super::Transport;

/// The two 32-bit signal words every shared buffer carries beside its data, for GPU-side
/// handoff without a CPU round trip (`cuStreamWriteValue32` / `cuStreamWaitValue32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Conventionally written by the producer: "the data holds frame N".
    Ready = 0,
    /// Conventionally written by a consumer: "I am done with frame N".
    Done = 1,
}

enum Role {
    Owned(OwnedAllocation),
    Imported(Arc<ImportedMapping>),
}

/// Device memory of `len` elements of `T` that other processes can map: owned by the process
/// that allocated it, or imported from another process. Both roles have the same views,
/// copies and kernel arguments as a [`DeviceBuffer`](crate::DeviceBuffer), and both borrow
/// their context:
///
/// ```compile_fail,E0597
/// use cuda_ipc::ipc::{SharedDeviceBuffer, Transport};
/// use cuda_ipc::{Context, Device};
/// let buf = {
///     let ctx = Context::new(Device::by_ordinal(0)?)?;
///     SharedDeviceBuffer::<u32>::zeroed(&ctx, 16, Transport::Auto)?
/// }; // `ctx` does not live long enough
/// # Ok::<(), cuda_ipc::Error>(())
/// ```
///
/// The element type is part of the type: a buffer of `u32` is not a buffer of `f32`
///
/// ```compile_fail,E0308
/// use cuda_ipc::ipc::{SharedDeviceBuffer, Transport};
/// use cuda_ipc::{Context, Device};
/// let ctx = Context::new(Device::by_ordinal(0)?)?;
/// let words = SharedDeviceBuffer::<u32>::zeroed(&ctx, 16, Transport::Auto)?;
/// let floats: SharedDeviceBuffer<f32> = words;
/// # Ok::<(), cuda_ipc::Error>(())
/// ```
///
/// and an import checks the element type the exporter recorded. Reinterpreting takes an
/// explicit, checked [`SharedDeviceBuffer::cast`].
///
/// Dropping the owner frees the memory (after its context's queued work); dropping the last
/// import of a buffer in a context unmaps it. Drop never panics; failures are logged (see
/// [`crate::take_drop_errors`]).
pub struct SharedDeviceBuffer<'ctx, T: Pod> {
    ctx: &'ctx Context,
    data: CUdeviceptr,
    len: usize,
    signals: CUdeviceptr,
    descriptor: Descriptor,
    role: Option<Role>,
    _marker: PhantomData<T>,
}

// SAFETY: the buffer owns device memory (or a reference-counted mapping) and a Send + Sync
// context; every driver call binds the context first; the lease is behind a Mutex.
unsafe impl<T: Pod + Send> Send for SharedDeviceBuffer<'_, T> {}
// SAFETY: shared access only reads through the driver or writes the signal words with stream
// operations, which the driver serialises.
unsafe impl<T: Pod + Sync> Sync for SharedDeviceBuffer<'_, T> {}

impl<T: Pod> std::fmt::Debug for SharedDeviceBuffer<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedDeviceBuffer<{}>({}, {}, {:?}, {:#x}, len {})",
            std::any::type_name::<T>(),
            if self.is_owner() { "owner" } else { "imported" },
            self.descriptor.transport.name(),
            self.ctx.device(),
            self.data,
            self.len
        )
    }
}

impl<'ctx, T: Pod> SharedDeviceBuffer<'ctx, T> {
    /// `len` zeroed elements on `ctx`'s GPU, exportable with `transport`.
    ///
    /// With the fd transport the allocation is rounded up to the VMM granularity (2 MiB on
    /// H100); [`allocation_size`](Self::allocation_size) reports it.
    pub fn zeroed(ctx: &'ctx Context, len: usize, transport: Transport) -> Result<Self> {
        let byte_size = byte_len_of::<T>(len)?;
        let (signal_offset, needed) = layout(byte_size)
            .ok_or_else(|| Error::InvalidArgument(format!("{byte_size} bytes is too large")))?;
        let wire = transport.resolve(ctx.device())?;
        let alloc = match wire {
            WireTransport::Legacy => OwnedAllocation::legacy(ctx, needed)?,
            WireTransport::Fd => OwnedAllocation::vmm(ctx, needed)?,
        };
        let identity = ProcessIdentity::current();
        let buffer_id = match crate::os::random_bytes::<16>() {
            Ok(id) => id,
            Err(e) => {
                alloc.release(ctx);
                return Err(Error::io("getrandom for a buffer id", e));
            }
        };
        let owner_uuid = match ctx.device().uuid() {
            Ok(u) => u.0,
            Err(e) => {
                alloc.release(ctx);
                return Err(e);
            }
        };
        let descriptor = Descriptor {
            transport: wire,
            elem_size: std::mem::size_of::<T>() as u32,
            elem_align: std::mem::align_of::<T>() as u32,
            type_tag: TypeTag::of::<T>().0,
            len: len as u64,
            byte_size: byte_size as u64,
            alloc_size: alloc.size as u64,
            offset: 0,
            owner_uuid,
            exporter_pid: identity.pid,
            exporter_uid: identity.uid,
            pid_namespace: identity.pid_namespace,
            boot_id: identity.boot_id,
            buffer_id,
            generation: 1,
            signal_offset: signal_offset as u64,
            handle: alloc.legacy_handle.unwrap_or([0; 64]),
        };
        let base = alloc.base;
        let mut buf = SharedDeviceBuffer {
            ctx,
            data: base,
            len,
            signals: base + signal_offset as u64,
            descriptor,
            role: Some(Role::Owned(alloc)),
            _marker: PhantomData,
        };
        // Zero data and signal words (VMM memory is not zeroed by the driver).
        let _bound = ctx.bind()?;
        // SAFETY: the allocation covers `needed` bytes from `base`.
        unsafe { result::memset_d8(base, 0, needed) }?;
        buf.descriptor.alloc_size = buf.allocation_size() as u64;
        Ok(buf)
    }

    /// A copy of `data`, exportable with `transport`.
    pub fn from_slice(ctx: &'ctx Context, data: &[T], transport: Transport) -> Result<Self> {
        let mut buf = Self::zeroed(ctx, data.len(), transport)?;
        buf.copy_from_slice(data)?;
        Ok(buf)
    }

    /// Records `tag` instead of [`TypeTag::of::<T>()`] as the element type, e.g. to share with a
    /// program built by another compiler or in another language. Importers must ask for the
    /// same tag ([`ImportOptions::type_tag`](super::ImportOptions)). Owner only.
    pub fn with_type_tag(mut self, tag: TypeTag) -> Result<Self> {
        if !self.is_owner() {
            return Err(Error::Unsupported(
                "only the owner of a shared buffer can set its type tag".into(),
            ));
        }
        self.descriptor.type_tag = tag.0;
        Ok(self)
    }

    pub(crate) fn from_mapping(ctx: &'ctx Context, mapping: Arc<ImportedMapping>) -> Self {
        let d = mapping.descriptor;
        SharedDeviceBuffer {
            ctx,
            data: mapping.base + d.offset,
            len: d.len as usize,
            signals: if d.signal_offset != 0 {
                mapping.base + d.signal_offset
            } else {
                0
            },
            descriptor: d,
            role: Some(Role::Imported(mapping)),
            _marker: PhantomData,
        }
    }

    /// The context.
    pub fn context(&self) -> &'ctx Context {
        self.ctx
    }

    /// Whether this process allocated the memory (rather than imported it).
    pub fn is_owner(&self) -> bool {
        matches!(self.role, Some(Role::Owned(_)))
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        match self.descriptor.transport {
            WireTransport::Legacy => Transport::Legacy,
            WireTransport::Fd => Transport::Fd,
        }
    }

    /// The descriptor (for an owner: as it would be published, generation 1).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Bytes of the whole allocation: data, signal words and rounding to the granularity.
    pub fn allocation_size(&self) -> usize {
        match &self.role {
            Some(Role::Owned(a)) => a.size,
            _ => self.descriptor.alloc_size as usize,
        }
    }

    /// The GPU that owns the memory (found by UUID among this process's GPUs).
    pub fn owner_device(&self) -> Result<Device> {
        Device::by_uuid(&crate::GpuUuid(self.descriptor.owner_uuid))
    }

    /// The 64-byte `cuIpcGetMemHandle` handle of a legacy buffer, for other libraries (e.g.
    /// `torch.cuda` or `cupy.cuda.runtime.ipcOpenMemHandle`). It is a bearer token: any process
    /// that reads it can map the memory, whatever its uid. `None` for the fd transport.
    pub fn legacy_handle(&self) -> Option<[u8; 64]> {
        (self.descriptor.transport == WireTransport::Legacy).then_some(self.descriptor.handle)
    }

    /// A new descriptor of the owner's fd-transport export (the caller owns it). For sending
    /// the memory by other means than this crate's rendezvous.
    pub fn export_fd(&self) -> Result<OwnedFd> {
        match &self.role {
            Some(Role::Owned(OwnedAllocation {
                export_fd: Some(fd),
                ..
            })) => fd
                .try_clone()
                .map_err(|e| Error::io("duplicating the exported fd", e)),
            _ => Err(Error::Unsupported(
                "only the owner of an fd-transport buffer has an fd to export".into(),
            )),
        }
    }

    pub(crate) fn owned_export_fd(&self) -> Option<&OwnedFd> {
        match &self.role {
            Some(Role::Owned(a)) => a.export_fd.as_ref(),
            _ => None,
        }
    }

    /// Another handle on the same imported mapping (no driver call). Owners cannot be cloned.
    pub fn try_clone(&self) -> Result<Self> {
        match &self.role {
            Some(Role::Imported(m)) => Ok(Self::from_mapping(self.ctx, Arc::clone(m))),
            _ => Err(Error::Unsupported(
                "an owned shared buffer cannot be cloned; import it or borrow it".into(),
            )),
        }
    }

    /// Reinterprets the memory as elements of `U`. Checked: the byte length must be a multiple
    /// of `size_of::<U>()` and the address aligned for `U`. The recorded type tag becomes `U`'s.
    pub fn cast<U: Pod>(mut self) -> Result<SharedDeviceBuffer<'ctx, U>> {
        let bytes = self.len * std::mem::size_of::<T>();
        let (size, align) = (std::mem::size_of::<U>(), std::mem::align_of::<U>());
        if size == 0 || bytes % size != 0 || self.data % align as u64 != 0 {
            return Err(Error::InvalidArgument(format!(
                "{bytes} bytes at {:#x} cannot be viewed as {} ({size} bytes, align {align})",
                self.data,
                std::any::type_name::<U>()
            )));
        }
        let mut descriptor = self.descriptor;
        descriptor.elem_size = size as u32;
        descriptor.elem_align = align as u32;
        descriptor.type_tag = TypeTag::of::<U>().0;
        descriptor.len = (bytes / size) as u64;
        Ok(SharedDeviceBuffer {
            ctx: self.ctx,
            data: self.data,
            len: bytes / size,
            signals: self.signals,
            descriptor,
            role: self.role.take(),
            _marker: PhantomData,
        })
    }

    fn signal_addr(&self, signal: Signal) -> Result<CUdeviceptr> {
        if self.signals == 0 {
            return Err(Error::Unsupported(
                "this buffer has no signal words (it was imported from a raw handle)".into(),
            ));
        }
        Ok(self.signals + 4 * signal as u64)
    }

    /// Queues on `stream` a write of `value` to a signal word, after all work queued before it
    /// (the write is ordered after prior memory writes). Another process waits for it with
    /// [`wait_signal`](Self::wait_signal) on its own stream.
    pub fn write_signal(&self, stream: &Stream<'_>, signal: Signal, value: u32) -> Result<()> {
        check_stream(self.ctx, stream)?;
        let addr = self.signal_addr(signal)?;
        let _bound = self.ctx.bind()?;
        // SAFETY: the signal words lie inside the allocation, 4-byte aligned, and outlive
        // queued work (drop synchronizes the context).
        Ok(unsafe { result::stream_write_value32(stream.raw(), addr, value) }?)
    }

    /// Makes later work on `stream` wait, on the GPU, until a signal word reaches `value`
    /// (wrapping comparison: `(int32_t)(word - value) >= 0`). No CPU round trip.
    pub fn wait_signal(&self, stream: &Stream<'_>, signal: Signal, value: u32) -> Result<()> {
        check_stream(self.ctx, stream)?;
        let addr = self.signal_addr(signal)?;
        let _bound = self.ctx.bind()?;
        // SAFETY: as in write_signal.
        Ok(unsafe { result::stream_wait_value32_geq(stream.raw(), addr, value) }?)
    }

    /// Reads a signal word from the host (synchronous).
    pub fn read_signal(&self, signal: Signal) -> Result<u32> {
        let addr = self.signal_addr(signal)?;
        // SAFETY: the signal word is 4 valid bytes of this allocation.
        let word = unsafe { DeviceSlice::<u32>::from_raw_parts(self.ctx, addr, 1) };
        Ok(word.copy_to_vec()?[0])
    }

    /// Waits, on the CPU, until the exporter announces a frame `>= frame`
    /// ([`Exporter::notify_ready`](super::Exporter::notify_ready)); returns the latest announced.
    /// Imported buffers only.
    pub fn wait_ready(&self, frame: u64, timeout: std::time::Duration) -> Result<u64> {
        let Some(Role::Imported(m)) = &self.role else {
            return Err(Error::Unsupported(
                "only an imported buffer has a lease to wait on".into(),
            ));
        };
        let mut lease = m.lease.lock().unwrap_or_else(|p| p.into_inner());
        match lease.as_mut() {
            Some(l) => l.wait_ready(frame, timeout),
            None => Err(Error::Unsupported(
                "this buffer was imported without a rendezvous connection".into(),
            )),
        }
    }

    /// Maps a raw legacy handle made by another library (`cudaIpcGetMemHandle`, e.g.
    /// `cupy.cuda.runtime.ipcGetMemHandle` or PyTorch's `storage._share_cuda_()`), given the
    /// element type, the byte offset of the data in that allocation and the length. After
    /// opening, the real allocation size (`cuMemGetAddressRange`) is checked against
    /// `offset + len * size_of::<T>()`. Cached like every import.
    pub fn import_legacy_handle(
        ctx: &'ctx Context,
        handle: &[u8; 64],
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        let byte_size = byte_len_of::<T>(len)?;
        let end = offset
            .checked_add(byte_size)
            .ok_or_else(|| Error::InvalidArgument("offset + length overflows".into()))?;
        if offset % std::mem::align_of::<T>() != 0 {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is not aligned for {}",
                std::any::type_name::<T>()
            )));
        }
        let key = CacheKey::RawHandle(*handle);
        let mut cache = ctx.import_cache().lock();
        let mapping = match cache.get(&key) {
            Some(m) => m,
            None => {
                let _bound = ctx.bind()?;
                // SAFETY: the driver validates the handle; we close the mapping on every path.
                let base = unsafe { result::ipc_open_mem_handle(handle) }.map_err(|e| {
                    Error::ImportFailed {
                        source: e,
                        hint: "the handle may be stale (its exporter exited or freed it), from \
                               another machine, or from a process with this process's PID (use \
                               the fd transport across PID namespaces)"
                            .into(),
                    }
                })?;
                let size = match result::mem_get_address_range(base) {
                    Ok((_, size)) => size,
                    Err(e) => {
                        super::allocation::close_legacy(ctx, base);
                        return Err(e.into());
                    }
                };
                let mut d = Descriptor::example();
                d.transport = WireTransport::Legacy;
                d.alloc_size = size as u64;
                d.owner_uuid = ctx.device().uuid()?.0;
                d.signal_offset = 0;
                d.handle = *handle;
                let m = Arc::new(ImportedMapping {
                    key,
                    kind: MappingKind::Legacy,
                    base,
                    descriptor: d,
                    lease: std::sync::Mutex::new(None),
                });
                cache.insert(&m);
                m
            }
        };
        drop(cache);
        if end as u64 > mapping.descriptor.alloc_size {
            let size = mapping.descriptor.alloc_size;
            super::mapping::release_reference(ctx, mapping);
            return Err(Error::InvalidArgument(format!(
                "the handle's allocation has {size} bytes, fewer than the {end} asked for \
                 (offset {offset} + {len} elements of {} bytes)",
                std::mem::size_of::<T>()
            )));
        }
        let mut d = mapping.descriptor;
        d.elem_size = std::mem::size_of::<T>() as u32;
        d.elem_align = std::mem::align_of::<T>() as u32;
        d.type_tag = TypeTag::of::<T>().0;
        d.len = len as u64;
        d.byte_size = byte_size as u64;
        d.offset = offset as u64;
        let base = mapping.base;
        let mut buf = Self::from_mapping(ctx, mapping);
        buf.descriptor = d;
        buf.data = base + offset as u64;
        buf.len = len;
        buf.signals = 0;
        Ok(buf)
    }
}

impl<T: Pod> DeviceMemory<T> for SharedDeviceBuffer<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        // SAFETY: `data` covers `len` elements of memory mapped in `ctx` for as long as self.
        unsafe { DeviceSlice::from_raw_parts(self.ctx, self.data, self.len) }
    }
}

impl<T: Pod> DeviceMemoryMut<T> for SharedDeviceBuffer<'_, T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        // SAFETY: as in `view`, and `&mut self` makes the view exclusive in this process.
        // Other processes may write the same memory: that is the point of sharing it, and
        // every T is Pod, so any bytes are a valid T.
        unsafe { DeviceSliceMut::from_raw_parts(self.ctx, self.data, self.len) }
    }
}

impl<T: Pod> Drop for SharedDeviceBuffer<'_, T> {
    fn drop(&mut self) {
        match self.role.take() {
            Some(Role::Owned(alloc)) => alloc.release(self.ctx),
            Some(Role::Imported(mapping)) => release_reference(self.ctx, mapping),
            None => {}
        }
    }
}
