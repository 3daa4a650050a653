//! [`SharedDeviceBuffer<'ctx, T>`]: device memory that other processes can map.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytemuck::Pod;

use super::tensor_layout::TensorLayout;
use crate::context::Context;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::memory::{
    byte_len_of, check_stream, DeviceMemory, DeviceMemoryMut, DeviceSlice, DeviceSliceMut,
};
use crate::result::{self, CUdeviceptr};
use crate::stream::Stream;
use crate::uses::StreamUses;

use super::allocation::{layout, ExportLeases, OwnedAllocation};
use super::descriptor::{CheckedDescriptor, Descriptor, TypeTag, WireTransport};
use super::identity::ProcessIdentity;
use super::mapping::{self, release_reference, CacheKey, ImportedMapping, MappingKind, NewMapping};
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
    /// This process allocated the memory; its exporters count the consumers' leases.
    Owned {
        alloc: OwnedAllocation,
        leases: Arc<ExportLeases>,
    },
    /// Imported: the shared mapping, and which of its leases this handle came with.
    Imported {
        mapping: Arc<ImportedMapping>,
        lease: Option<usize>,
    },
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
/// # Shared memory is shared-mutable
/// `&mut self` methods ([`view_mut`](DeviceMemoryMut::view_mut), copies into the buffer, kernels
/// that write it) are exclusive among the views of *this handle* only. The same memory may be
/// written at the same moment by the other process, and by other handles of this process on
/// the same mapping: a second import of the same buffer, or a [`try_clone`](Self::try_clone).
/// This is memory-safe (the host never dereferences device memory, and every `T` is `Pod`, so
/// any bytes are a valid `T`) but it is a data race on the GPU unless you order the accesses:
/// with streams, events, the [signal words](Self::write_signal) or
/// [`Exporter::notify_ready`](super::Exporter::notify_ready).
///
/// # Invariant
/// Every handle's (address, length, `T`) lies inside memory that is really mapped: an import
/// measures the mapping (`cuMemGetAddressRange`, or the size `cuMemMap` accepted) and places
/// the view against that size, never against the descriptor's claims alone; clones and casts
/// derive from the handle itself.
///
/// Dropping the owner frees the memory (after its context's queued work) — unless a consumer
/// still holds a lease on a legacy buffer, in which case the free waits for the last lease
/// (the memory is never freed under a consumer that maps it). Dropping the last import of a
/// buffer in a context unmaps it. Drop never panics; failures are logged (see
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
// operations, which the driver serialises; the stream-use record is behind a mutex.
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
            layout: None,
        };
        let base = alloc.base;
        let mut buf = SharedDeviceBuffer {
            ctx,
            data: base,
            len,
            signals: base + signal_offset as u64,
            descriptor,
            role: Some(Role::Owned {
                alloc,
                leases: Arc::default(),
            }),
            _marker: PhantomData,
        };
        // Zero data and signal words (VMM memory is not zeroed by the driver), and wait for it:
        // later copies and kernels run on other streams.
        // SAFETY: the allocation covers `needed` bytes from `base`; the call waits for the
        // memset.
        ctx.run_sync(&[], |s| unsafe {
            result::memset_d8_async(base, 0, needed, s)
        })?;
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

    /// Records the tensor the bytes hold (data type, shape, strides), for consumers in other
    /// languages: PyTorch and CuPy through the Python package, whose importers check it. The
    /// tensor must fit the buffer's bytes. Owner only; set it before exporting.
    ///
    /// ```no_run
    /// use cuda_ipc::prelude::*;
    /// use cuda_ipc::ipc::{DType, TensorLayout, TypeTag, TENSOR_TYPE_TAG};
    /// let ctx = Context::new(Device::by_ordinal(0)?)?;
    /// let layout = TensorLayout::contiguous(DType::F32, &[1024, 768])?;
    /// let buf = SharedDeviceBuffer::<u8>::zeroed(&ctx, layout.extent_bytes() as usize, Transport::Fd)?
    ///     .with_type_tag(TypeTag::named(TENSOR_TYPE_TAG))?
    ///     .with_layout(layout)?;
    /// let _exporter = Exporter::bind(std::env::temp_dir().join("weights"), &buf)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_layout(mut self, layout: TensorLayout) -> Result<Self> {
        if !self.is_owner() {
            return Err(Error::Unsupported(
                "only the owner of a shared buffer can set its tensor layout".into(),
            ));
        }
        let mut d = self.descriptor;
        d.layout = Some(layout);
        d.checked()?;
        self.descriptor = d;
        Ok(self)
    }

    /// A handle on `mapping` for the view `d` describes, placed and checked against the
    /// mapping's measured size (never trusting the descriptor's sizes alone).
    pub(crate) fn from_mapping(
        ctx: &'ctx Context,
        mapping: Arc<ImportedMapping>,
        d: &CheckedDescriptor,
        lease: Option<usize>,
    ) -> Result<Self> {
        Self::placed(ctx, mapping, d.descriptor(), lease)
    }

    /// A handle on `mapping` for the view `descriptor` names (its offset, length and signal
    /// words), placed against the measured mapping; on error the reference is released.
    fn placed(
        ctx: &'ctx Context,
        mapping: Arc<ImportedMapping>,
        descriptor: Descriptor,
        lease: Option<usize>,
    ) -> Result<Self> {
        let d = &descriptor;
        let place = match mapping.place::<T>(d.offset, d.len, d.signal_offset) {
            Ok(p) => p,
            Err(e) => {
                release_reference(ctx, mapping);
                return Err(e);
            }
        };
        Ok(SharedDeviceBuffer {
            ctx,
            data: place.data,
            len: place.len,
            signals: place.signals,
            descriptor,
            role: Some(Role::Imported { mapping, lease }),
            _marker: PhantomData,
        })
    }

    /// The context.
    pub fn context(&self) -> &'ctx Context {
        self.ctx
    }

    /// Whether this process allocated the memory (rather than imported it).
    pub fn is_owner(&self) -> bool {
        matches!(self.role, Some(Role::Owned { .. }))
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        match self.descriptor.transport {
            WireTransport::Legacy => Transport::Legacy,
            WireTransport::Fd => Transport::Fd,
        }
    }

    /// The descriptor: for an owner, as it would be published (the exporter sets the
    /// generation); for an import, the checked descriptor this handle's view was placed from
    /// (its sizes are the exporter's claims: [`allocation_size`](Self::allocation_size) is
    /// what was measured); for [`import_legacy_handle`](Self::import_legacy_handle), made up
    /// here, with zero exporter fields.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Bytes of the whole allocation: data, signal words and rounding to the granularity. For
    /// an import, the bytes actually mapped, as measured after mapping (not as the exporter's
    /// descriptor claims).
    pub fn allocation_size(&self) -> usize {
        match &self.role {
            Some(Role::Owned { alloc, .. }) => alloc.size,
            Some(Role::Imported { mapping, .. }) => {
                usize::try_from(mapping.size).unwrap_or(usize::MAX)
            }
            None => 0,
        }
    }

    /// How many consumers hold a lease on this buffer now, across all its exporters (owners
    /// only; 0 for an import). A legacy buffer dropped while this is not 0 is freed only when
    /// the last of them lets go.
    pub fn active_leases(&self) -> usize {
        self.export_leases().map_or(0, |l| l.active())
    }

    /// The stream uses of the memory: the allocation's, or the mapping's (shared by every
    /// handle on it).
    fn uses(&self) -> &StreamUses {
        static NONE: std::sync::OnceLock<StreamUses> = std::sync::OnceLock::new();
        match &self.role {
            Some(Role::Owned { alloc, .. }) => &alloc.uses,
            Some(Role::Imported { mapping, .. }) => &mapping.uses,
            None => NONE.get_or_init(StreamUses::default),
        }
    }

    /// The lease count its exporters keep (owners only).
    pub(crate) fn export_leases(&self) -> Option<Arc<ExportLeases>> {
        match &self.role {
            Some(Role::Owned { leases, .. }) => Some(Arc::clone(leases)),
            _ => None,
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
            Some(Role::Owned {
                alloc:
                    OwnedAllocation {
                        export_fd: Some(fd),
                        ..
                    },
                ..
            }) => fd
                .try_clone()
                .map_err(|e| Error::io("duplicating the exported fd", e)),
            _ => Err(Error::Unsupported(
                "only the owner of an fd-transport buffer has an fd to export".into(),
            )),
        }
    }

    pub(crate) fn owned_export_fd(&self) -> Option<&OwnedFd> {
        match &self.role {
            Some(Role::Owned { alloc, .. }) => alloc.export_fd.as_ref(),
            _ => None,
        }
    }

    /// Another handle on the same imported mapping, with this handle's element type, offset and
    /// length (no driver call). Owners cannot be cloned.
    pub fn try_clone(&self) -> Result<Self> {
        match &self.role {
            Some(Role::Imported { mapping, lease }) => Ok(SharedDeviceBuffer {
                ctx: self.ctx,
                data: self.data,
                len: self.len,
                signals: self.signals,
                descriptor: self.descriptor,
                role: Some(Role::Imported {
                    mapping: Arc::clone(mapping),
                    lease: *lease,
                }),
                _marker: PhantomData,
            }),
            _ => Err(Error::Unsupported(
                "an owned shared buffer cannot be cloned; import it or borrow it".into(),
            )),
        }
    }

    /// Reinterprets the memory as elements of `U`. Checked: the byte length must be a multiple
    /// of `size_of::<U>()` and the address aligned for `U`. The recorded type tag becomes `U`'s.
    pub fn cast<U: Pod>(mut self) -> Result<SharedDeviceBuffer<'ctx, U>> {
        // Cannot overflow: the view lies inside a real allocation.
        let bytes = self.len.saturating_mul(std::mem::size_of::<T>());
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
        descriptor.byte_size = bytes as u64;
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
        // SAFETY: the signal words lie inside the mapping, 4-byte aligned, and outlive queued
        // work (the memory's drop waits for the streams recorded below).
        unsafe { result::stream_write_value32(stream.raw(), addr, value) }?;
        self.uses().record(self.ctx, stream.id(), stream.raw())
    }

    /// Makes later work on `stream` wait, on the GPU, until a signal word reaches `value`
    /// (wrapping comparison: `(int32_t)(word - value) >= 0`). No CPU round trip.
    pub fn wait_signal(&self, stream: &Stream<'_>, signal: Signal, value: u32) -> Result<()> {
        check_stream(self.ctx, stream)?;
        let addr = self.signal_addr(signal)?;
        let _bound = self.ctx.bind()?;
        // SAFETY: as in write_signal.
        unsafe { result::stream_wait_value32_geq(stream.raw(), addr, value) }?;
        self.uses().record(self.ctx, stream.id(), stream.raw())
    }

    /// Reads a signal word from the host (synchronous).
    pub fn read_signal(&self, signal: Signal) -> Result<u32> {
        let addr = self.signal_addr(signal)?;
        // The signal word: 4 valid, aligned bytes of this mapping, ordered after its uses.
        let word = DeviceSlice::<u32>::tracked(self.ctx, addr, 1, self.uses());
        Ok(word.copy_to_vec()?[0])
    }

    /// Waits, on the CPU, until the exporter announces a frame `>= frame`
    /// ([`Exporter::notify_ready`](super::Exporter::notify_ready)); returns the latest announced.
    /// Imported buffers only.
    pub fn wait_ready(&self, frame: u64, timeout: std::time::Duration) -> Result<u64> {
        let Some(Role::Imported { mapping, lease }) = &self.role else {
            return Err(Error::Unsupported(
                "only an imported buffer has a lease to wait on".into(),
            ));
        };
        // This handle's own lease, or (for a handle made without one, e.g. import_cached)
        // the mapping's first.
        let Some(lease) = mapping.lease(*lease) else {
            return Err(Error::Unsupported(
                "this buffer was imported without a rendezvous connection".into(),
            ));
        };
        // Other handles on the same lease may be waiting too: take turns, within the deadline,
        // and return at once if one of them has read the announcement already.
        let deadline = crate::deadline::after(timeout);
        loop {
            if let Some(latest) = lease.announced().filter(|&l| l >= frame) {
                return Ok(latest);
            }
            match lease.lease.try_lock() {
                Ok(mut l) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    return l.wait_ready(frame, left);
                }
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    return p.into_inner().wait_ready(frame, left);
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::Timeout {
                            what: format!(
                                "frame {frame} to be announced (another handle of this buffer \
                                 was waiting on the same connection)"
                            ),
                            waited: timeout,
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// Maps a raw legacy handle made by another library (`cudaIpcGetMemHandle`, e.g.
    /// `cupy.cuda.runtime.ipcGetMemHandle` or PyTorch's `storage._share_cuda_()`), given the
    /// element type, the byte offset of the data in that allocation and the length. After
    /// opening, the real allocation size (`cuMemGetAddressRange`) is checked against
    /// `offset + len * size_of::<T>()`. Cached like every import. The buffer has no signal
    /// words, and its [`descriptor`](Self::descriptor) is made up here (zero exporter fields).
    ///
    /// # Safety
    /// No lease protects this mapping: the exporting process must keep the allocation alive
    /// (not free it, and for a caching allocator such as PyTorch's, not reuse the block) for as
    /// long as the returned buffer, or any clone of it, lives.
    pub unsafe fn import_legacy_handle(
        ctx: &'ctx Context,
        handle: &[u8; 64],
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        let byte_size = byte_len_of::<T>(len)?;
        let owner_uuid = ctx.device().uuid()?.0;
        let (mapping, _) = mapping::open_or_reuse(ctx, CacheKey::RawHandle(*handle), || {
            let _bound = ctx.bind()?;
            // SAFETY: the driver validates the handle; the mapping is closed on every path.
            let base = unsafe { result::ipc_open_mem_handle(handle) }.map_err(|e| {
                Error::ImportFailed {
                    source: e,
                    hint: "the handle may be stale (its exporter exited or freed it), from \
                           another machine, or from a process with this process's PID (use \
                           the fd transport across PID namespaces)"
                        .into(),
                }
            })?;
            match super::allocation::measure_legacy(base) {
                Ok(size) => Ok(NewMapping {
                    kind: MappingKind::Legacy,
                    base,
                    size,
                }),
                Err(e) => {
                    super::allocation::close_legacy(ctx, base);
                    Err(e)
                }
            }
        })?;
        let d = Descriptor {
            transport: WireTransport::Legacy,
            elem_size: std::mem::size_of::<T>() as u32,
            elem_align: std::mem::align_of::<T>() as u32,
            type_tag: TypeTag::of::<T>().0,
            len: len as u64,
            byte_size: byte_size as u64,
            alloc_size: mapping.size,
            offset: offset as u64,
            owner_uuid,
            exporter_pid: 0,
            exporter_uid: 0,
            pid_namespace: 0,
            boot_id: [0; 16],
            buffer_id: [0; 16],
            generation: 0,
            signal_offset: 0,
            handle: *handle,
            layout: None,
        };
        Self::placed(ctx, mapping, d, None)
    }
}

impl<T: Pod> DeviceMemory<T> for SharedDeviceBuffer<'_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        // `data` covers `len` aligned elements of memory mapped in `ctx` for as long as self
        // (the invariant of this type: placed against the measured mapping).
        DeviceSlice::tracked(self.ctx, self.data, self.len, self.uses())
    }
}

impl<T: Pod> DeviceMemoryMut<T> for SharedDeviceBuffer<'_, T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        // As in `view`; writable: owners allocated it read-write, imports are mapped
        // read-write. `&mut self` makes this view exclusive among the views of THIS handle only:
        // shared memory is shared-mutable by nature (other processes, other imports and clones
        // in this process may write it at the same time; see the type's docs). That is sound:
        // the host never holds a Rust reference into device memory, every access goes through
        // the driver, and every T is Pod, so any bytes are a valid T.
        DeviceSliceMut::tracked(self.ctx, self.data, self.len, self.uses())
    }
}

impl<T: Pod> Drop for SharedDeviceBuffer<'_, T> {
    fn drop(&mut self) {
        match self.role.take() {
            Some(Role::Owned { alloc, leases }) => leases.release_or_defer(self.ctx, alloc),
            Some(Role::Imported { mapping, .. }) => release_reference(self.ctx, mapping),
            None => {}
        }
    }
}
