//! Owned allocations that can be exported: `cuMemAlloc` + `cuIpcGetMemHandle` (legacy), or
//! `cuMemCreate` + reserve + map + set access + `cuMemExportToShareableHandle` (fd).
//!
//! Layout of every shared allocation: the data at offset 0, then (256-byte aligned) two 32-bit
//! signal words (ready, done), then rounding up to the transport's granularity.
//!
//! # Freeing under a lease
//! A legacy allocation must not be freed while another process maps it. Every exporter of an
//! allocation counts the consumers holding a lease on it in the allocation's [`ExportLeases`]
//! (a lease lasts as long as the consumer maps the memory, or lives). When the owner drops the
//! buffer while leases are active, the allocation goes to limbo instead: it is freed when the
//! last lease ends (like PyTorch's IPC "limbo" blocks), with its own retain of the primary
//! context so that dropping every `Context` does not free it either. A VMM (fd) allocation
//! needs none of this: each importer's mapping holds its own reference to the memory.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;

use crate::context::Context;
use crate::drop_log;
use crate::error::{Error, Result};
use crate::result::{self, CUdeviceptr, CUmemGenericAllocationHandle};
use crate::uses::StreamUses;

/// Bytes reserved after the data for the signal words (keeps them in their own cache lines).
pub(crate) const SIGNAL_AREA: usize = 256;

/// Where the signal words go for `byte_size` bytes of data, and the bytes needed in all.
pub(crate) fn layout(byte_size: usize) -> Option<(usize, usize)> {
    let signal_offset = byte_size.checked_next_multiple_of(SIGNAL_AREA)?;
    Some((signal_offset, signal_offset.checked_add(SIGNAL_AREA)?))
}

/// A live exportable allocation. Released with [`OwnedAllocation::release`] by its owner.
#[derive(Debug)]
pub(crate) struct OwnedAllocation {
    pub base: CUdeviceptr,
    pub size: usize,
    vmm_handle: Option<CUmemGenericAllocationHandle>,
    /// The fd transport's exported descriptor; sent (duplicated by the kernel) to consumers.
    pub export_fd: Option<OwnedFd>,
    /// The legacy transport's `cuIpcGetMemHandle` bytes.
    pub legacy_handle: Option<[u8; 64]>,
    /// The streams that used the memory; freeing waits for them.
    pub uses: StreamUses,
}

impl OwnedAllocation {
    /// `needed` bytes of legacy (`cuMemAlloc`) memory in `ctx`, with its IPC handle.
    pub fn legacy(ctx: &Context, needed: usize) -> Result<Self> {
        let _bound = ctx.bind()?;
        let base = result::mem_alloc(needed)?;
        let handle = match result::ipc_get_mem_handle(base) {
            Ok(h) => h,
            Err(e) => {
                // SAFETY: we just allocated `base` and nothing else has seen it.
                drop_log::check("allocation after a failed export (cuMemFree)", unsafe {
                    result::mem_free(base)
                });
                return Err(e.into());
            }
        };
        Ok(OwnedAllocation {
            base,
            size: needed,
            vmm_handle: None,
            export_fd: None,
            legacy_handle: Some(handle),
            uses: StreamUses::default(),
        })
    }

    /// `needed` bytes, rounded up to the VMM granularity, of fd-exportable memory in `ctx`.
    pub fn vmm(ctx: &Context, needed: usize) -> Result<Self> {
        let _bound = ctx.bind()?;
        let dev = ctx.device().raw();
        let granularity = result::mem_granularity_posix_fd(dev)?.max(1);
        let size = needed
            .div_ceil(granularity)
            .max(1)
            .checked_mul(granularity)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{needed} bytes rounded up to the VMM granularity ({granularity}) overflow"
                ))
            })?;
        let handle = result::mem_create_posix_fd(dev, size)?;
        let mut undo = Undo::new(handle);
        let base = result::mem_address_reserve(size, granularity)?;
        undo.reserved = Some((base, size));
        // SAFETY: the range was just reserved for `size` bytes and the handle is of `size`.
        unsafe { result::mem_map(base, size, handle) }?;
        undo.mapped = true;
        // SAFETY: the range is mapped.
        unsafe { result::mem_set_access_rw(base, size, dev) }?;
        // SAFETY: the handle is live and was created with the POSIX fd handle type.
        let fd = unsafe { result::mem_export_posix_fd(handle) }?;
        // SAFETY: the driver returned a new descriptor that this process now owns.
        let export_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        undo.disarm();
        Ok(OwnedAllocation {
            base,
            size,
            vmm_handle: Some(handle),
            export_fd: Some(export_fd),
            legacy_handle: None,
            uses: StreamUses::default(),
        })
    }

    /// Frees it now. `ctx` must be the context it was made in (or another handle on the same
    /// primary context); its queued work is waited for.
    pub fn release(self, ctx: &Context) {
        self.uses
            .wait_and_clear(ctx, "shared buffer (waiting for its streams before free)");
        let _bound = match ctx.bind() {
            Ok(b) => b,
            Err(e) => {
                drop_log::record("shared buffer (binding its context to free it; leaked)", e);
                return;
            }
        };
        match self.vmm_handle {
            None => {
                // SAFETY: we own this cuMemAlloc allocation and its work is done.
                drop_log::check("shared buffer (cuMemFree)", unsafe {
                    result::mem_free(self.base)
                });
            }
            Some(handle) => {
                let mut undo = Undo::new(handle);
                undo.reserved = Some((self.base, self.size));
                undo.mapped = true;
                drop(undo);
            }
        }
        // export_fd closes with self.
    }
}

/// The consumers holding a lease on one owned allocation, across all its exporters, and the
/// allocation itself once its owner has dropped it under live leases (limbo).
#[derive(Debug, Default)]
pub(crate) struct ExportLeases {
    state: Mutex<LeaseState>,
}

#[derive(Debug, Default)]
struct LeaseState {
    active: usize,
    /// The owner has dropped the buffer: no new lease may be granted.
    closed: bool,
    limbo: Option<(Context, OwnedAllocation)>,
}

impl ExportLeases {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a lease about to be granted; false once the owner has dropped the buffer (the
    /// memory must not be handed out any more).
    pub fn try_acquire(&self) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.active += 1;
        true
    }

    /// A consumer's lease ended; the last one frees an allocation in limbo (on a thread of its
    /// own: waiting for the owner's streams must not stall the exporter that calls this).
    pub fn release(&self) {
        let freed = {
            let mut state = self.lock();
            state.active = state.active.saturating_sub(1);
            if state.active == 0 {
                state.limbo.take()
            } else {
                None
            }
        };
        if let Some((ctx, alloc)) = freed {
            let (tx, rx) = std::sync::mpsc::channel::<(Context, OwnedAllocation)>();
            let spawned = std::thread::Builder::new()
                .name("cuda-ipc deferred free".into())
                .spawn(move || {
                    if let Ok((ctx, alloc)) = rx.recv() {
                        alloc.release(&ctx);
                    }
                });
            match spawned {
                Ok(_) => {
                    if let Err(job) = tx.send((ctx, alloc)) {
                        let (ctx, alloc) = job.0;
                        alloc.release(&ctx);
                    }
                }
                Err(e) => {
                    drop_log::record("shared buffer (spawning its deferred free; freed here)", e);
                    alloc.release(&ctx);
                }
            }
        }
    }

    /// Leases active now.
    pub fn active(&self) -> usize {
        self.lock().active
    }

    /// Frees `alloc` now, or, if a consumer holds a lease on it and it is a legacy allocation,
    /// puts it in limbo until the last lease ends.
    pub fn release_or_defer(&self, ctx: &Context, alloc: OwnedAllocation) {
        let mut state = self.lock();
        state.closed = true;
        if state.active == 0 || alloc.vmm_handle.is_some() {
            drop(state);
            alloc.release(ctx);
            return;
        }
        // Our own retain of the primary context keeps the memory alive even if every
        // `Context` of the program is dropped before the last consumer lets go.
        match Context::new(ctx.device()) {
            Ok(own) => state.limbo = Some((own, alloc)),
            Err(e) => {
                drop_log::record(
                    "shared buffer (retaining its context for a deferred free; leaked rather \
                     than freed under a consumer's lease)",
                    e,
                );
                std::mem::forget(alloc);
            }
        }
    }
}

/// Unwinds a VMM allocation in reverse order: unmap, free the range, release the handle.
struct Undo {
    handle: Option<CUmemGenericAllocationHandle>,
    reserved: Option<(CUdeviceptr, usize)>,
    mapped: bool,
}

impl Undo {
    fn new(handle: CUmemGenericAllocationHandle) -> Self {
        Undo {
            handle: Some(handle),
            reserved: None,
            mapped: false,
        }
    }
    fn disarm(&mut self) {
        self.handle = None;
        self.reserved = None;
        self.mapped = false;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some((base, size)) = self.reserved {
            if self.mapped {
                // SAFETY: the range is mapped by us and no work uses it any more.
                drop_log::check("VMM allocation (cuMemUnmap)", unsafe {
                    result::mem_unmap(base, size)
                });
            }
            // SAFETY: the reservation is ours and nothing is mapped in it now.
            drop_log::check("VMM allocation (cuMemAddressFree)", unsafe {
                result::mem_address_free(base, size)
            });
        }
        if let Some(handle) = self.handle {
            // SAFETY: the handle is ours; released once.
            drop_log::check("VMM allocation (cuMemRelease)", unsafe {
                result::mem_release(handle)
            });
        }
    }
}

/// Maps what another process exported into `ctx`: imports the fd, reserves, maps, grants
/// `ctx`'s device read-write access, and releases the handle (the mapping keeps the memory).
/// Returns the base address. The fd stays the caller's.
pub(crate) fn map_vmm_fd(
    ctx: &Context,
    fd: std::os::fd::BorrowedFd<'_>,
    size: usize,
) -> Result<CUdeviceptr> {
    use std::os::fd::AsRawFd;
    let _bound = ctx.bind()?;
    let handle = result::mem_import_posix_fd(fd.as_raw_fd())?;
    let mut undo = Undo::new(handle);
    let base = result::mem_address_reserve(size, 0)?;
    undo.reserved = Some((base, size));
    // SAFETY: the range is reserved for `size` bytes; the driver checks the handle's size.
    unsafe { result::mem_map(base, size, handle) }?;
    undo.mapped = true;
    // SAFETY: the range is mapped.
    unsafe { result::mem_set_access_rw(base, size, ctx.device().raw()) }?;
    // The mapping holds its own reference to the memory: release our handle now.
    undo.reserved = None;
    undo.mapped = false;
    drop(undo);
    Ok(base)
}

/// Unmaps what [`map_vmm_fd`] mapped. The caller has waited for the work that used it.
pub(crate) fn unmap_vmm(ctx: &Context, base: CUdeviceptr, size: usize) {
    let _bound = match ctx.bind() {
        Ok(b) => b,
        Err(e) => {
            drop_log::record(
                "imported buffer (binding its context to unmap it; leaked)",
                e,
            );
            return;
        }
    };
    // SAFETY: the range was mapped by map_vmm_fd and its work is done.
    drop_log::check("imported buffer (cuMemUnmap)", unsafe {
        result::mem_unmap(base, size)
    });
    // SAFETY: the reservation is ours and now empty.
    drop_log::check("imported buffer (cuMemAddressFree)", unsafe {
        result::mem_address_free(base, size)
    });
}

/// Bytes usable from `base`, a pointer `cuIpcOpenMemHandle` returned, to the end of its
/// allocation (`cuMemGetAddressRange`); the caller binds the context.
pub(crate) fn measure_legacy(base: CUdeviceptr) -> Result<u64> {
    let (start, size) = result::mem_get_address_range(base)?;
    let end = start.checked_add(size as u64);
    match end {
        Some(end) if start <= base && base < end => Ok(end - base),
        _ => Err(Error::InvalidArgument(format!(
            "cuMemGetAddressRange says the allocation of {base:#x} is {size} bytes at \
             {start:#x}, which does not contain it"
        ))),
    }
}

/// Closes a legacy mapping. The caller has waited for the work that used it.
pub(crate) fn close_legacy(ctx: &Context, base: CUdeviceptr) {
    let _bound = match ctx.bind() {
        Ok(b) => b,
        Err(e) => {
            drop_log::record("imported buffer (binding its context)", e);
            return;
        }
    };
    // SAFETY: `base` came from cuIpcOpenMemHandle in this context and its work is done.
    drop_log::check("imported buffer (cuIpcCloseMemHandle)", unsafe {
        result::ipc_close_mem_handle(base)
    });
}
