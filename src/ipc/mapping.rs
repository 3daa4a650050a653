//! Imported mappings, the per-context import cache, and the consumer's lease.
//!
//! The driver maps a given allocation once per context, and opening costs 70 µs to 2 ms. So a
//! [`Context`](crate::Context) keeps a cache of what it has imported, keyed by the buffer's
//! random id and generation (never by address, which the driver may recycle): importing the
//! same buffer again returns the existing mapping with one more reference, and the last
//! reference unmaps it.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::result::CUdeviceptr;

use super::allocation::{close_legacy, unmap_vmm};
use super::channel::{FrameReader, Kind};
use super::descriptor::Descriptor;

/// What identifies one import in a context's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CacheKey {
    /// A cuda-ipc buffer: its random id and publication generation.
    Buffer { id: [u8; 16], generation: u64 },
    /// A raw legacy handle from another library.
    RawHandle([u8; 64]),
}

/// How the memory is mapped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MappingKind {
    Legacy,
    Vmm { size: usize },
}

/// One imported allocation, shared by every buffer that maps it in one context.
#[derive(Debug)]
pub(crate) struct ImportedMapping {
    pub key: CacheKey,
    pub kind: MappingKind,
    pub base: CUdeviceptr,
    pub descriptor: Descriptor,
    pub lease: Mutex<Option<Lease>>,
}

impl ImportedMapping {
    /// Unmaps; called by the holder of the last reference, under the cache lock.
    fn release(self, ctx: &Context) {
        match self.kind {
            MappingKind::Legacy => close_legacy(ctx, self.base),
            MappingKind::Vmm { size } => unmap_vmm(ctx, self.base, size),
        }
        // The lease (if any) closes with self: the exporter sees it end.
    }
}

/// The consumer's end of the rendezvous connection: held for as long as the memory is mapped,
/// so the exporter knows it is in use; also carries "ready" notifications.
#[derive(Debug)]
pub(crate) struct Lease {
    pub stream: UnixStream,
    pub reader: FrameReader,
    pub latest_ready: Option<u64>,
    pub peer: String,
}

impl Lease {
    /// Waits until the exporter has announced a frame `>= frame`; returns the latest announced.
    pub fn wait_ready(&mut self, frame: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(latest) = self.latest_ready.filter(|&l| l >= frame) {
                return Ok(latest);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: format!("frame {frame} to be announced ready by {}", self.peer),
                    waited: timeout,
                });
            }
            let m = match self.reader.read_within(&self.stream, left, &self.peer) {
                Err(Error::Timeout { .. }) => continue,
                other => other?,
            };
            match m.kind {
                Kind::Ready if m.payload.len() == 8 => {
                    let n = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
                    self.latest_ready = Some(self.latest_ready.map_or(n, |l| l.max(n)));
                }
                other => {
                    return Err(Error::Protocol {
                        peer: self.peer.clone(),
                        detail: format!("unexpected {other:?} message on a lease"),
                    })
                }
            }
        }
    }
}

/// A context's import cache.
#[derive(Debug, Default)]
pub(crate) struct ImportCache {
    map: Mutex<HashMap<CacheKey, Weak<ImportedMapping>>>,
}

/// The locked cache: imports and releases of one context are serialised, so a mapping being
/// released is never handed out and never opened twice.
pub(crate) struct CacheGuard<'a>(MutexGuard<'a, HashMap<CacheKey, Weak<ImportedMapping>>>);

impl ImportCache {
    pub fn lock(&self) -> CacheGuard<'_> {
        CacheGuard(self.map.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl CacheGuard<'_> {
    /// The live mapping for `key`, with one more reference.
    pub fn get(&mut self, key: &CacheKey) -> Option<Arc<ImportedMapping>> {
        let found = self.0.get(key).and_then(Weak::upgrade);
        if found.is_none() {
            self.0.remove(key);
        }
        found
    }

    pub fn insert(&mut self, mapping: &Arc<ImportedMapping>) {
        self.0.insert(mapping.key, Arc::downgrade(mapping));
    }

    /// How many live mappings the cache knows.
    pub fn live(&self) -> usize {
        self.0.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// Drops one reference to `mapping`; the last one unmaps (under the cache lock).
pub(crate) fn release_reference(ctx: &Context, mapping: Arc<ImportedMapping>) {
    let mut cache = ctx.import_cache().lock();
    if let Some(last) = Arc::into_inner(mapping) {
        cache.0.remove(&last.key);
        last.release(ctx);
    }
}
