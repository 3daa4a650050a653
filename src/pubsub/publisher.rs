//! The publishing side of a channel.
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::context::Context;
use crate::deadline::{after as deadline_after, backoff};
use crate::error::{Error, Result};
use crate::ipc::rendezvous::Names;
use crate::ipc::{Exporter, SharedDeviceBuffer, TypeTag};
use crate::memory::{check_stream, DeviceMemory, DeviceMemoryMut, DeviceSlice, DeviceSliceMut};
use crate::os;
use crate::result;
use crate::service::{Claim, Service, Traffic};
use crate::stream::Stream;
use crate::uses::StreamUses;

use super::layout::*;
use super::page::Page;
use super::protocol::{Blocked, PublisherState};
use super::server::{Admission, Member, Roster, Shared};
use super::sharing::{self, EndInfo, SharingMode};
use super::wire::{Welcome, MAX_ELEM_SIZE, MAX_FRAME_LEN};
use super::{pool_path, ChannelOptions, Policy};

/// What a publisher has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Frames published.
    pub published: u64,
    /// Subscribers now.
    pub subscribers: usize,
    /// Subscribers admitted so far.
    pub joined: u64,
    /// Subscribers gone so far (closed, or died).
    pub left: u64,
    /// Connections refused (uid not allowed, or the channel full).
    pub refused: u64,
    /// Subscribers now on this publisher's GPU in another process without a shared MPS
    /// server: the GPU time-slices between their contexts and this one, ~150 µs per
    /// hand-over (1 × H200). The publisher logs one warning (target `cuda_ipc`) the first
    /// time it sees one. Each subscriber reports itself, so a subscriber can make this count
    /// wrong about itself only.
    pub same_gpu_without_mps: usize,
    /// Subscribers now on this publisher's GPU through the same MPS server (fast hand-overs).
    pub same_gpu_mps: usize,
}

/// The publishing end of a channel: owns a pool of `slots` frames of `frame_len` elements of
/// `T` in one shared allocation, and serves subscribers at the channel's path. See the
/// [module docs](super).
pub struct Publisher<'ctx, T: Pod> {
    ctx: &'ctx Context,
    path: PathBuf,
    pool: SharedDeviceBuffer<'ctx, T>,
    pool_exporter: Option<Exporter>,
    chan: Arc<Page>,
    shared: Arc<Shared>,
    state: PublisherState,
    frame_len: usize,
    stride: usize,
    slots: usize,
    max_subscribers: usize,
    max_held: usize,
    policy: Policy,
    /// Streams that queued writes of control words (publish): waited for before a page is
    /// unregistered.
    control_uses: StreamUses,
    published: u64,
    /// A publish failed half-way: the channel is closed.
    broken: bool,
    /// How this end uses the GPU (also in the channel page, for subscribers).
    info: EndInfo,
    /// The warning about a time-sliced subscriber was logged (once per publisher).
    warned: bool,
    /// The channel's socket (`<name>.sock`), its thread and the name's lock.
    service: Service,
    /// [`close`](Publisher::close) ran: subscribers were told, the pool stays mapped.
    closed: bool,
}

impl<T: Pod> std::fmt::Debug for Publisher<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Publisher({})", self.path.display())
    }
}

/// Elements per slot: `frame_len` rounded up so that every slot starts 256-byte aligned.
fn stride_of(frame_len: usize, elem: usize) -> Option<usize> {
    let bytes = frame_len.checked_mul(elem)?.checked_next_multiple_of(256)?;
    // Whole elements covering `bytes`, and a multiple of 256 bytes.
    let mut n = bytes.div_ceil(elem);
    while (n.checked_mul(elem)?) % 256 != 0 {
        n += 1;
    }
    Some(n)
}

impl<'ctx, T: Pod> Publisher<'ctx, T> {
    /// Creates the channel at `path` (`<dir>/<name>`): the pool (published as
    /// `<name>.pool`) and the channel's socket (`<name>.sock`).
    pub fn create(
        ctx: &'ctx Context,
        path: impl AsRef<Path>,
        frame_len: usize,
        opts: ChannelOptions,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bad = |why: String| {
            Err(Error::InvalidArgument(format!(
                "channel {}: {why}",
                path.display()
            )))
        };
        let min_slots = match opts.policy {
            Policy::Block => 1,
            Policy::DropOldest => 2,
        };
        if !(min_slots..=MAX_SLOTS).contains(&opts.slots) {
            return bad(format!(
                "slots must be {min_slots}..={MAX_SLOTS} with {:?} (got {})",
                opts.policy, opts.slots
            ));
        }
        if !(1..=MAX_SUBSCRIBERS).contains(&opts.max_subscribers) {
            return bad(format!(
                "max_subscribers must be 1..={MAX_SUBSCRIBERS} (got {})",
                opts.max_subscribers
            ));
        }
        if !(1..=opts.slots).contains(&opts.max_held) {
            return bad(format!(
                "max_held must be 1..=slots ({}) (got {})",
                opts.slots, opts.max_held
            ));
        }
        let elem = std::mem::size_of::<T>();
        if frame_len == 0 || elem == 0 {
            return bad("frames must have at least one element of a non-empty type".into());
        }
        if elem > MAX_ELEM_SIZE || frame_len > MAX_FRAME_LEN {
            return bad(format!(
                "elements of at most {MAX_ELEM_SIZE} bytes and frames of at most \
                 {MAX_FRAME_LEN} elements (got {elem} bytes × {frame_len})"
            ));
        }
        let stride = stride_of(frame_len, elem)
            .filter(|&s| s <= MAX_FRAME_LEN)
            .filter(|s| {
                s.checked_mul(opts.slots)
                    .and_then(|n| n.checked_mul(elem))
                    .is_some()
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!("channel {}: frames too large", path.display()))
            })?;
        opts.export.check()?;
        let names = Names::for_path(&path)?;
        if names.name.len() + ".pool".len() > crate::ipc::rendezvous::MAX_NAME_LEN {
            return bad(
                "the channel's name must leave room for \".pool\" (59 characters at most)".into(),
            );
        }

        let tag = opts.type_tag.unwrap_or_else(TypeTag::of::<T>);
        let pool = SharedDeviceBuffer::<T>::zeroed(ctx, stride * opts.slots, opts.transport)?
            .with_type_tag(tag)?;
        let mut export = opts.export.clone();
        export.max_connections = export.max_connections.max(2 * opts.max_subscribers);
        let pool_exporter = Exporter::bind_with(pool_path(&names), &pool, export)?;

        let claim = Claim::take(&names, opts.export.group)?;
        let instance = u64::from_le_bytes(
            os::random_bytes::<8>().map_err(|e| Error::io("reading random bytes", e))?,
        );
        // Sealed before it is registered: a kernel without F_SEAL_FUTURE_WRITE (before 5.1)
        // fails here, with nothing to undo.
        let mut chan = Page::create(&format!("cuda-ipc {} channel", names.name))?;
        chan.words()[MAGIC].store(MAGIC_VALUE, SeqCst);
        let info = EndInfo::of(ctx);
        info.store(chan.words(), CHAN_SHARING);
        chan.seal_read_only()?;
        chan.register(ctx)?;
        let mut chan = Arc::new(chan);
        let welcome = Welcome {
            slots: opts.slots,
            max_subscribers: opts.max_subscribers,
            policy: opts.policy,
            frame_len,
            stride,
            elem_size: elem,
            type_tag: tag.0,
            max_held: opts.max_held,
            id: 0,
            newest: 0,
            announced: 0,
            instance,
            pool: pool_exporter.descriptor().encode_v1(),
        };
        let shared = Arc::new(Shared::default());
        let admission = Admission {
            shared: Arc::clone(&shared),
            chan: Arc::clone(&chan),
            welcome,
            name: names.name.clone(),
        };
        let started = Service::start(
            claim,
            opts.export.service(opts.max_subscribers, Traffic::HangUp),
            admission,
            &format!("cuda-ipc channel {}", names.name),
        );
        let service = match started {
            Ok(s) => s,
            Err(e) => {
                // The admission hook (and its reference to the page) was dropped with the
                // failed start, which also removed whatever socket it bound.
                if let Some(page) = Arc::get_mut(&mut chan) {
                    // SAFETY: registered above; nothing was ever queued against it.
                    let _ = unsafe { page.unregister(ctx) };
                }
                return Err(e);
            }
        };
        Ok(Publisher {
            ctx,
            path,
            pool,
            pool_exporter: Some(pool_exporter),
            chan,
            shared,
            state: PublisherState::new(opts.slots, opts.policy),
            frame_len,
            stride,
            slots: opts.slots,
            max_subscribers: opts.max_subscribers,
            max_held: opts.max_held,
            policy: opts.policy,
            control_uses: StreamUses::default(),
            published: 0,
            broken: false,
            info,
            warned: false,
            service,
            closed: false,
        })
    }

    /// The channel's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Elements of a frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Slots in the pool.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The sequence number the next frame gets (frames are numbered from 1).
    pub fn next_seq(&self) -> u64 {
        self.state.next_seq()
    }

    /// Counters.
    pub fn stats(&self) -> PublisherStats {
        let service = self.service.stats().get();
        let r = self.shared.lock();
        let modes: Vec<SharingMode> = r.live.iter().map(|m| self.sharing_of(m)).collect();
        let count = |mode| modes.iter().filter(|&&m| m == mode).count();
        PublisherStats {
            same_gpu_without_mps: count(SharingMode::SameGpuWithoutMps),
            same_gpu_mps: count(SharingMode::SameGpuMps),
            published: self.published,
            subscribers: r.live.len(),
            joined: r.joined,
            left: r.left,
            refused: service.refused_uid + service.refused_by_hook + service.busy,
        }
    }

    /// How subscriber `m` shares the GPU with this publisher, as it reported (cached once
    /// known).
    fn sharing_of(&self, m: &Member) -> SharingMode {
        m.sharing.unwrap_or_else(|| {
            sharing::sharing(
                &self.info,
                EndInfo::load(m.page.words(), SUB_SHARING).as_ref(),
            )
        })
    }

    /// Notes how each new subscriber shares the GPU (a few loads per subscriber until it has
    /// reported), and logs the one warning of this publisher if one is time-sliced with it.
    fn check_sharing(info: &EndInfo, path: &Path, warned: &mut bool, r: &mut Roster) {
        let mut sliced = false;
        for m in r.live.iter_mut().filter(|m| m.sharing.is_none()) {
            let mode = sharing::sharing(info, EndInfo::load(m.page.words(), SUB_SHARING).as_ref());
            if mode != SharingMode::Unknown {
                m.sharing = Some(mode);
            }
            sliced |= mode.is_time_sliced();
        }
        if sliced && !*warned {
            *warned = true;
            sharing::warn_time_sliced(&format!("channel publisher {}", path.display()));
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.shared.lock().live.len()
    }

    /// Waits until at least `n` subscribers are connected; returns how many are.
    pub fn wait_subscribers(&self, n: usize, timeout: Duration) -> Result<usize> {
        let r = self.shared.wait_for(
            timeout,
            |r| r.live.len() >= n,
            |r| {
                format!(
                    "{n} subscriber(s) on channel {} ({} connected)",
                    self.path.display(),
                    r.live.len()
                )
            },
        )?;
        Ok(r.live.len())
    }

    fn describe(&self, roster: &Roster, b: Blocked) -> String {
        let (sub, what) = match b {
            Blocked::Held { sub, seq } => (sub, format!("still holds frame {seq}")),
            Blocked::Behind { sub, next } => (sub, format!("has not received frame {next} yet")),
            Blocked::Exhausted { next } => {
                return format!("frame {next} would be past the last frame number ({MAX_SEQ})")
            }
        };
        let who = roster
            .live
            .iter()
            .find(|m| m.id == sub)
            .map(|m| format!("uid {}, pid {}", m.cred.uid, m.cred.pid))
            .unwrap_or_else(|| "gone".into());
        format!("subscriber {sub} ({who}) {what}")
    }

    /// Frees the pages of subscribers that left, once no queued control write can reach them.
    fn reap_retired(&self) {
        let mut r = self.shared.lock();
        if r.retired.is_empty() {
            return;
        }
        let idle = self.control_uses.is_idle(self.ctx);
        if !idle && r.retired.len() <= self.max_subscribers {
            return;
        }
        if !idle {
            if let Err(e) = self.control_uses.wait_host(self.ctx) {
                crate::drop_log::record("channel: waiting for control writes", e);
                return;
            }
        }
        for mut m in r.retired.drain(..) {
            // SAFETY: every control write queued so far is done (idle, or waited for just
            // above), and the member left the roster before: no later publish writes its page.
            if let Err(e) = unsafe { m.page.unregister(self.ctx) } {
                crate::drop_log::record("channel: unregistering a subscriber's page", e);
            }
        }
    }

    /// Hangs up on subscriber `id` (it breaks the channel's rules): it leaves the roster at
    /// once, its page is retired, and it sees its connection close.
    fn evict(&self, r: &mut Roster, id: u64, why: &str) {
        let Some(i) = r.live.iter().position(|m| m.id == id) else {
            return;
        };
        let mut m = r.live.swap_remove(i);
        crate::drop_log::record(
            "channel: a subscriber was disconnected",
            format!(
                "subscriber {id} (uid {}, pid {}) of {}: {why}",
                m.cred.uid,
                m.cred.pid,
                self.path.display()
            ),
        );
        if let Some(conn) = m.conn.take() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        if m.page.is_registered() {
            r.retired.push(m);
        }
        r.left += 1;
        self.shared.changed.notify_all();
    }

    /// With `DropOldest`, a subscriber holding more slots than `max_held` at once is past what
    /// a well-behaved one does (it releases before it receives more): hang up on it, so that it
    /// cannot stall the channel. Returns whether someone was evicted.
    fn evict_hoarders(&self, r: &mut Roster) -> bool {
        let hoarders: Vec<u64> = r
            .live
            .iter()
            .filter(|m| {
                let w = m.page.words();
                let held = (0..self.slots)
                    .filter(|&i| w[SUB_HOLD + i].load(SeqCst) > w[SUB_ACK + i].load(SeqCst))
                    .count();
                held > self.max_held
            })
            .map(|m| m.id)
            .collect();
        for &id in &hoarders {
            self.evict(
                r,
                id,
                &format!(
                    "it held more than max_held ({}) frames for the whole loan timeout",
                    self.max_held
                ),
            );
        }
        !hoarders.is_empty()
    }

    /// Lends the next frame's slot, waiting up to `timeout` for one to be free (with
    /// [`Policy::Block`], until every subscriber has received and released the oldest frame;
    /// with [`Policy::DropOldest`], until some slot is held by no subscriber). Fill it on a
    /// stream, then [`Loan::publish`] it. A loan dropped unpublished keeps its slot for the
    /// next one.
    pub fn loan(&mut self, timeout: Duration) -> Result<Loan<'_, 'ctx, T>> {
        if self.closed {
            return Err(Error::ChannelClosed {
                channel: self.path.clone(),
                reason: "this publisher closed it (Publisher::close)".into(),
            });
        }
        if self.broken {
            return Err(Error::ChannelClosed {
                channel: self.path.clone(),
                reason: "a publish failed half-way (its error said why), so the channel was \
                         closed and its subscribers disconnected; create a new publisher"
                    .into(),
            });
        }
        if self.state.next_seq() > MAX_SEQ {
            return Err(Error::ChannelClosed {
                channel: self.path.clone(),
                reason: format!(
                    "it has published frame {MAX_SEQ}, the last frame number a channel has; \
                     create a new publisher (a new channel instance counts from 1 again)"
                ),
            });
        }
        let deadline = deadline_after(timeout);
        let mut spins = 0u32;
        let mut evicted = false;
        let (slot, seq) = loop {
            self.reap_retired();
            let blocked = {
                let r = self.shared.lock();
                let subs: Vec<(u64, &[std::sync::atomic::AtomicU64])> =
                    r.live.iter().map(|m| (m.id, m.page.words())).collect();
                match self.state.try_claim(self.chan.words(), &subs) {
                    Ok(claimed) => {
                        notify(&self.chan, &r);
                        break claimed;
                    }
                    Err(b) => self.describe(&r, b),
                }
            };
            if Instant::now() >= deadline {
                if self.policy == Policy::DropOldest && !evicted {
                    evicted = true;
                    let mut r = self.shared.lock();
                    if self.evict_hoarders(&mut r) {
                        continue;
                    }
                }
                return Err(Error::Timeout {
                    what: format!(
                        "a free slot in channel {} for frame {}: {blocked}",
                        self.path.display(),
                        self.state.next_seq()
                    ),
                    waited: timeout,
                });
            }
            backoff(&mut spins, deadline);
        };
        Ok(Loan {
            publisher: self,
            slot,
            seq,
            _marker: PhantomData,
        })
    }

    /// Queues the control writes of frame `seq` in `slot` on `stream` and announces it.
    fn publish_slot(&mut self, slot: usize, seq: u64, stream: &Stream<'_>) -> Result<u64> {
        check_stream(self.ctx, stream)?;
        if let Some(uses) = self.pool.view().uses() {
            uses.order_before(self.ctx, stream.id(), stream.raw())?;
        }
        let mut r = self.shared.lock();
        // A subscriber whose page the driver will not register (out of pinned memory, say)
        // is disconnected; the others go on.
        let failed: Vec<(u64, Error)> = r
            .live
            .iter_mut()
            .filter_map(|m| m.page.register(self.ctx).err().map(|e| (m.id, e)))
            .collect();
        for (id, e) in failed {
            self.evict(
                &mut r,
                id,
                &format!("its control page could not be registered: {e}"),
            );
        }
        // Control writes land in publish order, whatever stream each publish is on: a READY
        // word never goes back (frame k's write on a slow stream landing after frame k + n's
        // on another would leave a finished frame never ready). This stream first waits, on
        // the GPU, for every earlier publish's control writes on the other streams.
        // Nothing of this publish is queued yet if that fails: the publish fails, the channel
        // stays open (the loan's slot and frame number go to the next loan).
        self.control_uses
            .order_before(self.ctx, stream.id(), stream.raw())?;
        // Every control write of the frame in one driver call (cuStreamBatchMemOp): each
        // subscriber's READY word, then the channel page's, in that order on the stream.
        let queued = || -> Result<()> {
            let mut writes = [(0, 0); MAX_SUBSCRIBERS + 2];
            let mut n = 0;
            for m in r.live.iter() {
                if let Some(w) = writes.get_mut(n) {
                    *w = (m.page.device_word(SUB_READY + slot)?, seq);
                    n += 1;
                }
            }
            for index in [SLOT_READY + slot, PUBLISHED] {
                if let Some(w) = writes.get_mut(n) {
                    *w = (self.chan.device_word(index)?, seq);
                    n += 1;
                }
            }
            if r.live.len() + 2 != n {
                return Err(Error::InvalidArgument(format!(
                    "channel {}: more subscribers ({}) than a channel has",
                    self.path.display(),
                    r.live.len()
                )));
            }
            let _bound = self.ctx.bind()?;
            // SAFETY: a live stream of this context; every word is registered host memory
            // (each live subscriber's page, registered above, and the channel page),
            // unregistered only after `control_uses` shows these writes done.
            unsafe { result::stream_write_values64(stream.raw(), &writes[..n]) }?;
            Ok(())
        };
        let outcome = queued();
        // Whatever was queued must be waited for before a page is unregistered.
        let recorded = self
            .control_uses
            .record(self.ctx, stream.id(), stream.raw());
        if let Err(e) = outcome.and(recorded) {
            self.broken = true;
            // Half-way (some control writes may be queued, some not): the channel can no
            // longer keep its promises, so it is closed for good, as `Drop` closes it; each
            // subscriber's watcher then releases its streams' waits, its receives end with
            // `PublisherGone`, and later loans return `Error::ChannelClosed`.
            close_channel(&self.chan, &r);
            return Err(e);
        }
        // No wake-up here: a subscriber sleeps only while its next frame has no final claim
        // (it takes a claimed frame before the announce), so the claim's wake-up in `loan` is
        // the one that matters; waking again would only cost it a spurious wake per frame.
        let seq = self.state.announce(self.chan.words());
        if !self.warned {
            Self::check_sharing(&self.info, &self.path, &mut self.warned, &mut r);
        }
        drop(r);
        self.published += 1;
        Ok(seq)
    }

    fn slot_range(&self, slot: usize) -> std::ops::Range<usize> {
        let start = slot * self.stride;
        start..start + self.frame_len
    }
}

/// Tells sleeping subscribers that something changed (a claim; the close wakes them too): bumps
/// `EVENTS`, then wakes its futex if a subscriber says it sleeps (`SUB_WAITING`; a subscriber
/// sets it before its last check, so a wake-up is never lost).
fn notify(chan: &Page, roster: &Roster) {
    chan.words()[EVENTS].fetch_add(1, SeqCst);
    if roster
        .live
        .iter()
        .any(|m| m.page.words()[SUB_WAITING].load(SeqCst) != 0)
    {
        if let Err(e) = os::futex_wake(&chan.words()[EVENTS]) {
            crate::drop_log::record("channel: waking subscribers (futex)", e);
        }
    }
}

/// Closes the channel for its subscribers (a failed publish, or the publisher's drop):
/// `CLOSED`, `EVENTS` bumped and its futex woken, and each subscriber's connection shut down
/// (through the publisher's duplicate of it; the channel thread then retires its page).
fn close_channel(chan: &Page, roster: &Roster) {
    let words = chan.words();
    words[CLOSED].store(1, SeqCst);
    words[EVENTS].fetch_add(1, SeqCst);
    if let Err(e) = os::futex_wake(&words[EVENTS]) {
        crate::drop_log::record("channel: waking subscribers (futex)", e);
    }
    for m in &roster.live {
        if let Some(conn) = &m.conn {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl<T: Pod> Publisher<'_, T> {
    /// Closes the channel now, as dropping the publisher does (subscribers receive every frame
    /// published so far, then [`Error::PublisherGone`] with `closed` set; the socket and the
    /// pool's descriptor are removed), but keeps the pool (the slots' memory) mapped in this
    /// process until the publisher is dropped: for code that may still hold views of loaned
    /// slots (another language's tensors, say). Later [`loan`](Self::loan)s return
    /// [`Error::ChannelClosed`]. Calling it again does nothing.
    pub fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        // Frames published so far become complete (their READY words written) before the
        // subscribers learn that the channel is closed, so they can still receive them.
        self.control_uses
            .wait_and_clear(self.ctx, "Publisher (waiting for control writes)");
        close_channel(&self.chan, &self.shared.lock());
        // Stopping the service closes every connection, handshakes included. (Its socket is
        // removed when the service drops, after this.)
        self.service.stop();
        let mut r = self.shared.lock();
        let mut members: Vec<_> = r.live.drain(..).collect();
        members.append(&mut r.retired);
        drop(r);
        for mut m in members {
            // SAFETY: every control write was waited for at the top of this close, and no
            // publish can follow (a publish needs a loan, which a closed publisher refuses).
            if let Err(e) = unsafe { m.page.unregister(self.ctx) } {
                crate::drop_log::record("Publisher (unregistering a subscriber page)", e);
            }
        }
        match Arc::get_mut(&mut self.chan) {
            Some(chan) => {
                // SAFETY: as above; the service thread, the page's other user, has ended.
                if let Err(e) = unsafe { chan.unregister(self.ctx) } {
                    crate::drop_log::record("Publisher (unregistering the channel page)", e);
                }
            }
            None => crate::drop_log::record(
                "Publisher (the channel page)",
                "still shared with the channel thread",
            ),
        }
        self.pool_exporter.take();
    }
}

impl<T: Pod> Drop for Publisher<'_, T> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A slot lent for the next frame: fill it (it is device memory of the publisher's
/// context: `DeviceMemoryMut<T>`), then [`publish`](Self::publish) it.
pub struct Loan<'p, 'ctx, T: Pod> {
    publisher: &'p mut Publisher<'ctx, T>,
    slot: usize,
    seq: u64,
    _marker: PhantomData<T>,
}

impl<T: Pod> std::fmt::Debug for Loan<'_, '_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Loan(frame {} in slot {})", self.seq, self.slot)
    }
}

impl<T: Pod> Loan<'_, '_, T> {
    /// The frame's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The slot's index in the pool.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Publishes the frame: subscribers see it once the work queued on `stream` so far (and
    /// the work recorded on the pool from other streams) is done. Nothing waits on the CPU.
    /// Returns the frame's sequence number.
    pub fn publish(self, stream: &Stream<'_>) -> Result<u64> {
        self.publisher.publish_slot(self.slot, self.seq, stream)
    }
}

impl<T: Pod> DeviceMemory<T> for Loan<'_, '_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        let range = self.publisher.slot_range(self.slot);
        self.publisher
            .pool
            .view()
            .slice(range)
            .expect("a slot lies inside the pool by construction")
    }
}

impl<T: Pod> DeviceMemoryMut<T> for Loan<'_, '_, T> {
    fn view_mut(&mut self) -> DeviceSliceMut<'_, T> {
        let range = self.publisher.slot_range(self.slot);
        self.publisher
            .pool
            .view_mut()
            .slice_mut(range)
            .expect("a slot lies inside the pool by construction")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::os::PeerCredentials;
    use crate::pubsub::server::Member;

    /// A roster of `n` live subscribers (pages never registered with the driver); returns it
    /// and the subscribers' ends of their connections.
    fn roster(n: usize) -> (Roster, Vec<UnixStream>) {
        let mut r = Roster::default();
        let mut ends = Vec::new();
        for id in 1..=n as u64 {
            let (publisher_end, subscriber_end) = UnixStream::pair().unwrap();
            subscriber_end
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            r.live.push(Member {
                id,
                page: Page::create("cuda-ipc test sub").unwrap(),
                cred: PeerCredentials {
                    pid: 1,
                    uid: 1,
                    gid: 1,
                },
                conn: Some(publisher_end),
                sharing: None,
            });
            ends.push(subscriber_end);
        }
        (r, ends)
    }

    #[test]
    fn a_channel_closed_after_a_failed_publish_wakes_its_sleepers_and_hangs_up_on_everyone() {
        let chan = Page::create("cuda-ipc test channel").unwrap();
        let (r, ends) = roster(3);
        let events = chan.words()[EVENTS].load(SeqCst);
        // The subscriber's view of the page: read-only, as it maps it.
        let view = os::ReadOnlyMapping::map(chan.fd(), PAGE_BYTES).unwrap();
        std::thread::scope(|s| {
            // A subscriber asleep on the futex, as `pick` sleeps (it naps 20 ms at a time in
            // the crate; this one would sleep 10 s unless woken).
            let sleeper = s.spawn(|| {
                let t = Instant::now();
                view.futex_wait(EVENTS, events as u32, Duration::from_secs(10))
                    .unwrap();
                t.elapsed()
            });
            std::thread::sleep(Duration::from_millis(100));
            close_channel(&chan, &r);
            let slept = sleeper.join().unwrap();
            assert!(
                slept < Duration::from_secs(3),
                "the sleeper was not woken (slept {slept:?})"
            );
        });
        assert_eq!(chan.words()[CLOSED].load(SeqCst), 1);
        assert_eq!(
            chan.words()[EVENTS].load(SeqCst),
            events + 1,
            "EVENTS bumped"
        );
        // Every subscriber sees its connection end: its watcher thread releases its streams.
        for (i, mut end) in ends.into_iter().enumerate() {
            let mut b = [0u8; 1];
            let n = end.read(&mut b);
            assert!(
                matches!(n, Ok(0)),
                "subscriber {i} was not hung up on: {n:?}"
            );
        }
    }
}
