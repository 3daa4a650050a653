//! Owned allocations that can be exported: `cuMemAlloc` + `cuIpcGetMemHandle` (legacy), or
//! `cuMemCreate` + reserve + map + set access + `cuMemExportToShareableHandle` (fd).
//!
//! Layout of every shared allocation: the data at offset 0, then (256-byte aligned) two 32-bit
//! signal words (ready, done), then rounding up to the transport's granularity.

use std::os::fd::{FromRawFd, OwnedFd};

use crate::context::Context;
use crate::drop_log;
use crate::error::Result;
use crate::result::{self, CUdeviceptr, CUmemGenericAllocationHandle};

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
        })
    }

    /// `needed` bytes, rounded up to the VMM granularity, of fd-exportable memory in `ctx`.
    pub fn vmm(ctx: &Context, needed: usize) -> Result<Self> {
        let _bound = ctx.bind()?;
        let dev = ctx.device().raw();
        let granularity = result::mem_granularity_posix_fd(dev)?;
        let size = needed.div_ceil(granularity).max(1) * granularity;
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
        })
    }

    /// Frees it. `ctx` must be the context it was made in; its queued work is waited for.
    pub fn release(self, ctx: &Context) {
        if let Err(e) = ctx.synchronize() {
            drop_log::record("shared buffer (cuCtxSynchronize before free)", e);
        }
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

/// Unmaps what [`map_vmm_fd`] mapped.
pub(crate) fn unmap_vmm(ctx: &Context, base: CUdeviceptr, size: usize) {
    if let Err(e) = ctx.synchronize() {
        drop_log::record("imported buffer (cuCtxSynchronize before unmap)", e);
    }
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

/// Closes a legacy mapping.
pub(crate) fn close_legacy(ctx: &Context, base: CUdeviceptr) {
    if let Err(e) = ctx.synchronize() {
        drop_log::record("imported buffer (cuCtxSynchronize before close)", e);
    }
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
