//! Imported mappings, the process-wide import cache, and the consumer's leases.
//!
//! The driver maps a given allocation once per context, and opening costs 70 µs to 2 ms. So
//! the process keeps one cache of what it has imported, keyed by the primary context (one per
//! device per process, whichever [`Context`](crate::Context) object retained it) and the
//! buffer's random id and generation (never by address, which the driver may recycle):
//! importing the same buffer again returns the existing mapping with one more reference, and
//! the last reference unmaps it.
//!
//! A mapping records the number of bytes really mapped from its base, as measured
//! (`cuMemGetAddressRange` for a legacy handle, the size `cuMemMap` accepted for a VMM fd),
//! never as a descriptor claims. Every typed view of it is placed with [`ImportedMapping::place`],
//! which checks the view's data range, alignment and signal words against that size: this is the
//! invariant that keeps every `SharedDeviceBuffer` inside memory that is actually mapped.
//!
//! Locking: a short global lock finds a key's slot; the slot's own lock serialises the opening,
//! reuse and unmapping of that one key. No lock is held across the driver calls of another key.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::result::CUdeviceptr;
use crate::uses::StreamUses;

use super::allocation::{close_legacy, unmap_vmm};
use super::descriptor::SIGNAL_WORDS_LEN;
use super::framing::{FrameReader, Kind};

/// What identifies one import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CacheKey {
    /// A cuda-ipc buffer: its random id and publication generation.
    Buffer { id: [u8; 16], generation: u64 },
    /// A raw legacy handle from another library.
    RawHandle([u8; 64]),
}

/// The primary context (by its process-unique id, not its address, which a re-created
/// context may reuse) and the import.
type Key = (u64, CacheKey);

fn key_of(ctx: &Context, key: CacheKey) -> Key {
    (ctx.id(), key)
}

/// How the memory is mapped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MappingKind {
    Legacy,
    Vmm,
}

/// One imported allocation, shared by every buffer that maps it in one context.
#[derive(Debug)]
pub(crate) struct ImportedMapping {
    key: Key,
    kind: MappingKind,
    /// The mapped address.
    pub base: CUdeviceptr,
    /// Bytes mapped from `base`, as measured after mapping.
    pub size: u64,
    /// The rendezvous connections that brought this mapping to this process, one per exporter
    /// instance: each stays open while the memory is mapped, so each exporter knows it is
    /// still in use.
    pub leases: Mutex<Vec<Arc<LeaseCell>>>,
    /// The streams that used the memory (through any handle); unmapping waits for them.
    pub uses: StreamUses,
}

/// Where a typed view lies in a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The first element's address.
    pub data: CUdeviceptr,
    /// Elements.
    pub len: usize,
    /// The signal words' address (0: none).
    pub signals: CUdeviceptr,
}

/// Places `len` elements of `elem_size` bytes (alignment `elem_align`) at `offset` in `size`
/// bytes mapped at `base`, with the signal words at `signal_offset` (0: none). Errors say what
/// does not fit; nothing here can overflow or panic, whatever the numbers.
pub(crate) fn place(
    base: CUdeviceptr,
    size: u64,
    offset: u64,
    len: u64,
    elem_size: usize,
    elem_align: usize,
    signal_offset: u64,
) -> std::result::Result<Placement, String> {
    let bytes = len
        .checked_mul(elem_size as u64)
        .ok_or_else(|| format!("{len} elements of {elem_size} bytes overflow"))?;
    let end = offset
        .checked_add(bytes)
        .ok_or_else(|| format!("offset {offset} + {bytes} bytes overflows"))?;
    if end > size {
        return Err(format!(
            "the data (offset {offset}, {bytes} bytes) ends at byte {end}, past the {size} \
             bytes actually mapped"
        ));
    }
    let data = base
        .checked_add(offset)
        .ok_or_else(|| "the data address overflows".to_string())?;
    if elem_align == 0 || data % elem_align as u64 != 0 {
        return Err(format!(
            "the data address {data:#x} is not aligned to {elem_align} bytes"
        ));
    }
    let len = usize::try_from(len).map_err(|_| format!("{len} elements do not fit usize"))?;
    let signals = if signal_offset == 0 {
        0
    } else {
        let fits = signal_offset % 4 == 0
            && signal_offset
                .checked_add(SIGNAL_WORDS_LEN)
                .is_some_and(|e| e <= size);
        if !fits {
            return Err(format!(
                "the signal words at offset {signal_offset} do not lie inside the {size} bytes \
                 actually mapped (or are not 4-byte aligned)"
            ));
        }
        base + signal_offset
    };
    Ok(Placement { data, len, signals })
}

impl ImportedMapping {
    /// Places a view of `len` elements of `T` at `offset` (and the signal words at
    /// `signal_offset`, 0 for none), checked against the measured size.
    pub fn place<T>(&self, offset: u64, len: u64, signal_offset: u64) -> Result<Placement> {
        place(
            self.base,
            self.size,
            offset,
            len,
            std::mem::size_of::<T>(),
            std::mem::align_of::<T>(),
            signal_offset,
        )
        .map_err(|why| Error::MappingTooSmall {
            mapped: self.size,
            detail: why,
        })
    }

    /// Keeps the lease of a connection that brought this mapping; returns its index. A newer
    /// lease from the same exporter instance takes the older one's place (same index): the
    /// count that exporter keeps stays one, and the newer connection has the fresher state
    /// (the older may have lost announcements to a full socket buffer). The older closes once
    /// no waiter uses it, so repeated imports cannot pile up connections.
    pub fn add_lease(&self, lease: Lease) -> usize {
        let cell = Arc::new(LeaseCell {
            identity: lease.identity.clone(),
            announced: Arc::clone(&lease.announced),
            lease: Mutex::new(lease),
        });
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        match leases.iter().position(|l| l.identity == cell.identity) {
            Some(i) => {
                leases[i] = cell;
                i
            }
            None => {
                leases.push(cell);
                leases.len() - 1
            }
        }
    }

    /// The lease of index `index` (or the first, if `None`), if any.
    pub fn lease(&self, index: Option<usize>) -> Option<Arc<LeaseCell>> {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.get(index.unwrap_or(0)).cloned()
    }

    /// Whether any exporter holds a lease of this process on the memory.
    pub fn is_leased(&self) -> bool {
        !self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Whether the memory is a legacy (`cuIpcOpenMemHandle`) mapping.
    pub fn is_legacy(&self) -> bool {
        matches!(self.kind, MappingKind::Legacy)
    }

    /// Unmaps; called by the holder of the last reference, under its slot's lock.
    fn release(self, ctx: &Context) {
        self.uses.wait_and_clear(
            ctx,
            "imported buffer (waiting for its streams before unmap)",
        );
        match self.kind {
            MappingKind::Legacy => close_legacy(ctx, self.base),
            MappingKind::Vmm => unmap_vmm(ctx, self.base, self.size as usize),
        }
        // The leases close with self, after the unmap: an exporter never sees a lease end
        // while the memory is still mapped here.
    }
}

/// The consumer's end of a rendezvous connection: held for as long as the memory is mapped,
/// so the exporter knows it is in use; also carries "ready" notifications.
#[derive(Debug)]
pub(crate) struct Lease {
    pub stream: UnixStream,
    pub reader: FrameReader,
    pub latest_ready: Option<u64>,
    /// The exporter, in messages.
    pub peer: String,
    /// Which exporter instance answered (the address its listening socket was bound to, a
    /// random temporary name; else `peer`).
    pub identity: String,
    /// The latest frame announced, plus one (0: none yet), readable without the lease's lock.
    pub announced: Arc<AtomicU64>,
}

/// A lease of a mapping, shared by the handles that came through it.
#[derive(Debug)]
pub(crate) struct LeaseCell {
    identity: String,
    announced: Arc<AtomicU64>,
    pub lease: Mutex<Lease>,
}

impl LeaseCell {
    /// The latest frame announced so far, if any (no lock, no I/O).
    pub fn announced(&self) -> Option<u64> {
        self.announced.load(Ordering::Acquire).checked_sub(1)
    }
}

impl Lease {
    /// Waits until the exporter has announced a frame `>= frame`; returns the latest announced.
    pub fn wait_ready(&mut self, frame: u64, timeout: Duration) -> Result<u64> {
        let deadline = crate::deadline::after(timeout);
        loop {
            if let Some(latest) = self.latest_ready.filter(|&l| l >= frame) {
                return Ok(latest);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
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
                    let mut word = [0u8; 8];
                    word.copy_from_slice(&m.payload);
                    let n = u64::from_le_bytes(word);
                    self.latest_ready = Some(self.latest_ready.map_or(n, |l| l.max(n)));
                    self.announced
                        .fetch_max(n.saturating_add(1), Ordering::AcqRel);
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

/// One key's entry: the live mapping, if any. Its lock serialises that key's open and unmap.
#[derive(Debug, Default)]
struct Slot(Mutex<Option<Weak<ImportedMapping>>>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Weak<ImportedMapping>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The process-wide map of slots (held briefly: find or create a slot, count, forget).
fn cache() -> MutexGuard<'static, HashMap<Key, Arc<Slot>>> {
    static MAP: std::sync::OnceLock<Mutex<HashMap<Key, Arc<Slot>>>> = std::sync::OnceLock::new();
    MAP.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The slot of `key`, created if missing (short global lock).
fn slot(key: Key) -> Arc<Slot> {
    Arc::clone(cache().entry(key).or_default())
}

/// Removes `key`'s slot from the map if nothing lives in it and nobody else holds it. Our
/// reference goes first, so that of several threads letting go at once, the last sees itself
/// alone (new holders only appear under the global lock).
fn forget_if_empty(key: Key, slot: Arc<Slot>) {
    let ours = Arc::downgrade(&slot);
    drop(slot);
    let mut map = cache();
    let Some(current) = map.get(&key) else {
        return;
    };
    if !std::ptr::eq(Arc::as_ptr(current), ours.as_ptr()) || Arc::strong_count(current) != 1 {
        return;
    }
    let live = current
        .lock()
        .as_ref()
        .is_some_and(|w| w.strong_count() > 0);
    if !live {
        map.remove(&key);
    }
}

/// The live mapping of `key` in `ctx`, with one more reference; no driver call.
pub(crate) fn lookup(ctx: &Context, key: CacheKey) -> Option<Arc<ImportedMapping>> {
    let key = key_of(ctx, key);
    let slot = cache().get(&key).map(Arc::clone)?;
    let found = slot.lock().as_ref().and_then(Weak::upgrade);
    if found.is_none() {
        forget_if_empty(key, slot);
    }
    found
}

/// What [`open_or_reuse`]'s caller maps when the cache has nothing.
pub(crate) struct NewMapping {
    pub kind: MappingKind,
    pub base: CUdeviceptr,
    pub size: u64,
}

/// The mapping of `key` in `ctx`: the live one (`true`: a cache hit), or a new one made by
/// `open` (which maps and measures; on error it has undone its own work). Only importers of
/// the same key wait for each other.
pub(crate) fn open_or_reuse(
    ctx: &Context,
    key: CacheKey,
    open: impl FnOnce() -> Result<NewMapping>,
) -> Result<(Arc<ImportedMapping>, bool)> {
    let key = key_of(ctx, key);
    let slot = slot(key);
    let result = {
        let mut entry = slot.lock();
        match entry.as_ref().and_then(Weak::upgrade) {
            Some(m) => Ok((m, true)),
            None => open().map(|new| {
                let mapping = Arc::new(ImportedMapping {
                    key,
                    kind: new.kind,
                    base: new.base,
                    size: new.size,
                    leases: Mutex::new(Vec::new()),
                    uses: StreamUses::default(),
                });
                *entry = Some(Arc::downgrade(&mapping));
                (mapping, false)
            }),
        }
    };
    if result.is_err() {
        forget_if_empty(key, slot);
    }
    result
}

/// Drops one reference to `mapping`; the last one unmaps. The slot's lock only decides who is
/// last (and empties the slot, so a new import opens afresh); the waiting and unmapping happen
/// outside every lock, so a stream that never finishes blocks this drop only. An import of the
/// same buffer meanwhile opens it again: the driver counts opens of one legacy handle in a
/// context (both return one address; the memory stays mapped until the last close), and a VMM
/// mapping is a range of its own.
pub(crate) fn release_reference(ctx: &Context, mapping: Arc<ImportedMapping>) {
    let key = mapping.key;
    let slot = cache().get(&key).map(Arc::clone);
    let last = match &slot {
        Some(slot) => {
            let mut entry = slot.lock();
            let last = Arc::into_inner(mapping);
            if last.is_some() {
                *entry = None;
            }
            last
        }
        None => Arc::into_inner(mapping),
    };
    if let Some(last) = last {
        last.release(ctx);
    }
    if let Some(slot) = slot {
        forget_if_empty(key, slot);
    }
}

/// How many imported mappings are live in the context of id `ctx`.
pub(crate) fn live_in(ctx: u64) -> usize {
    // The slots are looked at after the global lock is released: a slot's lock may be held
    // across a driver open.
    let slots: Vec<Arc<Slot>> = cache()
        .iter()
        .filter(|((c, _), _)| *c == ctx)
        .map(|(_, slot)| Arc::clone(slot))
        .collect();
    slots
        .iter()
        .filter(|slot| slot.lock().as_ref().is_some_and(|w| w.strong_count() > 0))
        .count()
}

#[cfg(test)]
mod tests {
    use super::place;

    const BASE: u64 = 0x7f00_0000_0000;

    #[test]
    fn a_view_inside_the_mapping_is_placed() {
        let p = place(BASE, 4096 + 256, 0, 1024, 4, 4, 4096).unwrap();
        assert_eq!((p.data, p.len, p.signals), (BASE, 1024, BASE + 4096));
        let p = place(BASE, 4096, 1024, 768, 4, 4, 0).unwrap();
        assert_eq!((p.data, p.len, p.signals), (BASE + 1024, 768, 0));
    }

    #[test]
    fn n_words_over_n_bytes_is_refused() {
        // A u8 buffer of 4096 bytes viewed as 4096 u32 words.
        let err = place(BASE, 4096, 0, 4096, 4, 4, 0).unwrap_err();
        assert!(err.contains("past the 4096 bytes actually mapped"), "{err}");
    }

    #[test]
    fn huge_numbers_are_errors_not_panics() {
        assert!(place(BASE, u64::MAX, 0, u64::MAX, 8, 8, 0).is_err());
        assert!(place(BASE, u64::MAX, u64::MAX, 1, 1, 1, 0).is_err());
        assert!(place(u64::MAX, u64::MAX, 8, 0, 1, 1, 0).is_err());
        assert!(place(BASE, 4096, 0, 1, 1, 1, u64::MAX - 3).is_err());
        assert!(place(BASE, 4096, 0, 1, 1, 0, 0).is_err());
    }

    #[test]
    fn misaligned_data_and_signals_are_refused() {
        assert!(place(BASE, 4096, 2, 4, 4, 4, 0)
            .unwrap_err()
            .contains("aligned"));
        assert!(place(BASE, 4096, 0, 4, 4, 4, 4094).is_err());
        assert!(place(BASE, 4096, 0, 4, 4, 4, 4090).is_err());
    }

    #[test]
    fn signal_words_past_the_mapping_are_refused() {
        // A lying exporter: signal words at the very end of the claimed, not the real, size.
        let err = place(BASE, 4096, 0, 16, 4, 4, 1 << 30).unwrap_err();
        assert!(err.contains("signal words"), "{err}");
        assert!(place(BASE, 4096, 0, 16, 4, 4, 4092).is_err());
        assert!(place(BASE, 4096, 0, 16, 4, 4, 4088).is_ok());
    }
}
