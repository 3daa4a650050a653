//! A control page: a shared memory file of [`PAGE_BYTES`](super::layout::PAGE_BYTES) mapped
//! into this process and, where the GPU waits on or writes its words, registered with the
//! driver (`cuMemHostRegister`), which gives the words a device address in every context.
//!
//! Measured on 2 × H200 (docs/measurements.md): a GPU-to-GPU round trip through such
//! registered host words takes 14.8 µs on one GPU and 14.2 µs across two (11.6 / 13.4 µs
//! through device memory), and the CPU reads them with a plain load — which is what lets a
//! CPU-only subscriber, a publisher waiting with a timeout, and a subscriber whose publisher
//! died all work without a device copy.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::os::{self, ReadOnlyMapping, SharedMapping};
use crate::result::{self, CUdeviceptr};

use super::layout::PAGE_BYTES;

/// One control page (see the module docs). Unregister it with [`Page::unregister`] once no
/// queued GPU work uses its device address; a page dropped while registered is left mapped
/// (and the fact logged) rather than unmapped under the driver.
#[derive(Debug)]
pub(crate) struct Page {
    fd: OwnedFd,
    map: Option<Arc<SharedMapping>>,
    device: Option<CUdeviceptr>,
}

impl Page {
    /// A new zeroed page, mapped read-write, sealed against resizing.
    pub fn create(name: &str) -> Result<Page> {
        let fd = os::shared_words_file(name, PAGE_BYTES)
            .map_err(|e| Error::io(format!("creating the shared page {name:?} (memfd)"), e))?;
        let map = SharedMapping::map(fd.as_fd(), PAGE_BYTES)
            .map_err(|e| Error::io(format!("mapping the shared page {name:?}"), e))?;
        Ok(Page {
            fd,
            map: Some(Arc::new(map)),
            device: None,
        })
    }

    /// A page a peer sent, mapped read-write: checked (a sealed memory file of the page's size,
    /// so the peer can never make this process's mapping fault), then mapped.
    pub fn from_peer(fd: OwnedFd, what: &str) -> Result<Page> {
        check_from_peer(fd.as_fd(), what)?;
        let map = SharedMapping::map(fd.as_fd(), PAGE_BYTES)
            .map_err(|e| Error::io(format!("mapping {what}'s control page"), e))?;
        Ok(Page {
            fd,
            map: Some(Arc::new(map)),
            device: None,
        })
    }

    /// From now on, new mappings of the page (by peers) are read-only.
    pub fn seal_read_only(&self) -> Result<()> {
        os::seal_future_writes(self.fd.as_fd()).map_err(|e| {
            Error::io(
                "sealing the channel page read-only (F_SEAL_FUTURE_WRITE)",
                e,
            )
        })
    }

    /// The mapping, shared (e.g. with a thread that writes words); it stays mapped while any
    /// clone lives.
    pub fn mapping(&self) -> Option<Arc<SharedMapping>> {
        self.map.clone()
    }

    /// The file, to send to a peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The page's words.
    pub fn words(&self) -> &[AtomicU64] {
        match &self.map {
            Some(m) => m.words(),
            None => &[],
        }
    }

    /// Registers the page with the driver (once); returns its device address.
    pub fn register(&mut self, ctx: &Context) -> Result<CUdeviceptr> {
        if let Some(d) = self.device {
            return Ok(d);
        }
        let map = self
            .map
            .as_ref()
            .ok_or_else(|| Error::Unsupported("the page is not mapped".into()))?;
        let _bound = ctx.bind()?;
        // SAFETY: a page-aligned mapping of PAGE_BYTES owned by `self`, unmapped only after
        // `unregister` (or never, see Drop).
        let d = unsafe { result::mem_host_register(map.as_ptr().cast(), PAGE_BYTES) }?;
        self.device = Some(d);
        Ok(d)
    }

    /// The device address of word `index` (the page must be registered).
    pub fn device_word(&self, index: usize) -> Result<CUdeviceptr> {
        let base = self.device.ok_or_else(|| {
            Error::Unsupported("the control page is not registered with the driver".into())
        })?;
        if index >= PAGE_BYTES / 8 {
            return Err(Error::InvalidArgument(format!(
                "control word {index} is outside the page"
            )));
        }
        Ok(base + (index as u64) * 8)
    }

    /// Whether the page is registered with the driver.
    pub fn is_registered(&self) -> bool {
        self.device.is_some()
    }

    /// Unregisters the page.
    ///
    /// # Safety
    /// No queued GPU work may use the page's device address any more (a stream op queued on
    /// it and not yet executed would then touch memory the driver no longer maps).
    pub unsafe fn unregister(&mut self, ctx: &Context) -> Result<()> {
        if self.device.is_none() {
            return Ok(());
        }
        let Some(map) = &self.map else {
            return Ok(());
        };
        let _bound = ctx.bind()?;
        // SAFETY: registered by `register`; the caller guarantees no queued work uses it.
        unsafe { result::mem_host_unregister(map.as_ptr().cast()) }?;
        self.device = None;
        Ok(())
    }

    /// Unregisters the page on a thread of its own, in a context of `device` it retains: the
    /// driver's `cuMemHostUnregister` waits for the whole device (measured on an H200: a
    /// subscriber's drop waited 8 s for another subscriber's stream in the same process, which
    /// waited for a frame not published yet), so a caller that must not wait for other work
    /// hands the page over. The page stays mapped until it is unregistered; should that fail
    /// (or the thread not start), it stays registered and mapped for the process's life, and
    /// the fact is logged (see `Drop`).
    ///
    /// # Safety
    /// As [`unregister`](Self::unregister): no queued GPU work may use the page's device
    /// address any more.
    pub unsafe fn unregister_later(mut self, device: crate::device::Device) {
        if self.device.is_none() {
            return;
        }
        // Retained here, while the caller's context still lives: retained in the new thread,
        // after the program dropped its last `Context`, it could be a new primary context, in
        // which the page was never registered.
        let ctx = match Context::new(device) {
            Ok(ctx) => ctx,
            Err(e) => {
                // The page drops registered: kept mapped for the process's life, and logged.
                crate::drop_log::record("a control page (retaining its context)", e);
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("cuda-ipc page unregister".into())
            // SAFETY: the caller's guarantee, moved here with the page.
            .spawn(move || match unsafe { self.unregister(&ctx) } {
                Ok(()) => {}
                Err(e) => crate::drop_log::record("a control page (cuMemHostUnregister)", e),
            });
        if let Err(e) = spawned {
            // The page dropped with the closure: kept mapped and registered, and logged.
            crate::drop_log::record("a control page (spawning its unregister)", e);
        }
    }
}

/// A page a peer sent that this process only reads (the channel page, which its publisher
/// seals against writable mappings): checked as [`Page::from_peer`] checks, then mapped
/// read-only. Its words offer loads only (see [`ReadOnlyMapping`]).
pub(crate) fn read_only_from_peer(fd: OwnedFd, what: &str) -> Result<ReadOnlyMapping> {
    check_from_peer(fd.as_fd(), what)?;
    ReadOnlyMapping::map(fd.as_fd(), PAGE_BYTES)
        .map_err(|e| Error::io(format!("mapping {what}'s channel page"), e))
}

fn check_from_peer(fd: BorrowedFd<'_>, what: &str) -> Result<()> {
    os::check_shared_words_file(fd, PAGE_BYTES).map_err(|e| Error::Protocol {
        peer: what.to_string(),
        detail: format!("the control page it sent is unusable: {e}"),
    })
}

impl super::protocol::ReadWords for ReadOnlyMapping {
    fn load(&self, index: usize) -> u64 {
        ReadOnlyMapping::load(self, index)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if self.device.is_some() {
            // Unmapping memory the driver still has registered could let queued GPU work
            // write into pages the process reuses: keep the mapping for the process's life.
            crate::drop_log::record(
                "a channel control page dropped while registered (kept mapped)",
                "cuMemHostUnregister was not called",
            );
            std::mem::forget(self.map.take());
        }
    }
}
