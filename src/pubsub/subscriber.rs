//! The subscribing side of a channel.
use std::cell::{Cell, RefCell};
use std::io::Read;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::context::Context;
use crate::deadline::{after as deadline_after, backoff};
use crate::error::{Error, Result};
use crate::ipc::framing::Kind;
use crate::ipc::rendezvous::{Names, RendezvousDir};
use crate::ipc::{DescriptorError, ImportOptions, SharedDeviceBuffer, TypeTag};
use crate::memory::{check_stream, DeviceMemory, DeviceSlice};
use crate::os::{PollRequest, ReadOnlyMapping, SharedMapping};
use crate::result;
use crate::stream::Stream;
use crate::uses::StreamUses;

use super::layout::*;
use super::page::{self, Page};
use super::protocol::{self, Pick, Picked, SubscriberState};
use super::sharing::{self, EndInfo, SharingMode};
use super::wire::{same_pool, Welcome};
use super::{pool_path, Policy, Start, SubscribeOptions, Waiting};

/// The subscribing end of a channel: maps the publisher's pool once, then receives frames
/// in place. See the [module docs](super).
pub struct Subscriber<'ctx, T: Pod> {
    ctx: &'ctx Context,
    path: PathBuf,
    conn: UnixStream,
    welcome: Welcome,
    /// The channel page, which the publisher alone writes: mapped read-only, loads only.
    chan: ReadOnlyMapping,
    /// This subscriber's page; taken in `Drop` (unregistered on a thread of its own).
    me: ManuallyDrop<Page>,
    /// The pool, dropped only once `uses` is idle (else kept mapped for the process's life).
    pool: ManuallyDrop<SharedDeviceBuffer<'ctx, T>>,
    /// This subscriber's own record of the streams that used its page and its samples: the
    /// GPU waits of `receive`, the acknowledgements, and the work recorded on samples' views.
    /// Its own, not the pool's (which every subscriber of the channel in this process shares):
    /// one subscriber never waits for another's GPU wait on a frame not yet published.
    uses: StreamUses,
    state: RefCell<SubscriberState>,
    held: Cell<usize>,
    received: Cell<u64>,
    missed: Cell<u64>,
    /// Why the publisher is gone, once it is.
    gone: RefCell<Option<String>>,
    /// The frames this subscriber's streams wait for, and their release when the publisher
    /// will not write them (shared with the watcher thread).
    waits: Arc<Waits>,
    /// Releases this subscriber's GPU waits as soon as the publisher's connection closes.
    watcher: Option<Watcher>,
    /// How it shares the GPU with the publisher (see [`SubscriberStats::sharing`]).
    sharing: SharingMode,
    /// How `pick` waits for a claim (see [`Waiting`]).
    waiting: Waiting,
    /// With [`Waiting::Adaptive`]: how long `pick` spins before it sleeps on the futex,
    /// adapted to how soon claims came lately (see `adapt_spin`).
    spin: Cell<Duration>,
}

/// The frames this subscriber's streams were made to wait for (per slot, the highest), and
/// their release: storing that frame number into the slot's `READY` word in this subscriber's
/// page, which passes the GPU waits for it and for every earlier frame of the slot. A release
/// only ever raises a word ([`protocol::release_ready`]): a later frame the publisher wrote
/// stays.
///
/// A receive records its frame *before* it queues the wait and looks at `released` *after*;
/// the watcher thread sets `released` *before* it releases the recorded frames. All SeqCst:
/// either the watcher sees the frame recorded, or the receive sees the flag and releases its
/// own wait (Dekker's handshake), so a wait queued just as the publisher hangs up never stays.
struct Waits {
    page: Arc<SharedMapping>,
    /// Per slot: the highest frame a stream of this subscriber waits for there (0: none).
    seqs: Box<[AtomicU64]>,
    /// The waits are released from now on (the publisher's connection closed, the publisher
    /// is gone, or the subscriber is being dropped). Until it is set, no receive makes a system
    /// call to check the connection.
    released: AtomicBool,
}

impl Waits {
    fn new(page: Arc<SharedMapping>, slots: usize) -> Waits {
        let slots = slots.min(MAX_SLOTS);
        Waits {
            page,
            seqs: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            released: AtomicBool::new(false),
        }
    }

    /// A stream is about to wait for frame `seq` in `slot`.
    fn record(&self, slot: usize, seq: u64) {
        if let Some(w) = self.seqs.get(slot) {
            w.fetch_max(seq, SeqCst);
        }
    }

    /// After queueing a wait recorded with [`record`](Self::record): releases the slot if the
    /// waits were released in between (the watcher may have missed the record).
    fn check_released(&self, slot: usize) {
        if self.released.load(SeqCst) {
            let _ = self.release_slot(slot);
        }
    }

    /// From now on every wait is released: sets the flag, then releases what is recorded.
    /// Returns whether some `READY` word had to be raised.
    fn release_all(&self) -> bool {
        self.released.store(true, SeqCst);
        let mut raised = false;
        for slot in 0..self.seqs.len() {
            raised |= self.release_slot(slot);
        }
        raised
    }

    fn release_slot(&self, slot: usize) -> bool {
        let (Some(seq), Some(word)) = (self.seqs.get(slot), self.ready(slot)) else {
            return false;
        };
        protocol::release_ready(word, seq.load(SeqCst))
    }

    fn ready(&self, slot: usize) -> Option<&AtomicU64> {
        self.page.words().get(SUB_READY + slot)
    }

    /// Whether a recorded wait would still block (its `READY` word does not let it through).
    fn pending(&self) -> bool {
        self.seqs.iter().enumerate().any(|(slot, seq)| {
            let seq = seq.load(SeqCst);
            seq != 0
                && self
                    .ready(slot)
                    .is_some_and(|w| !protocol::ready_releases(w.load(SeqCst), seq))
        })
    }
}

/// A thread that watches the publisher's connection and, when it closes, releases this
/// subscriber's GPU waits ([`Waits`]): a stream waiting for a frame the publisher will never
/// write then drains, even if the program never calls `receive` again
/// (`stream.synchronize()` right after a receive must not hang because the publisher died).
/// It then keeps releasing them every 50 ms until the subscriber is dropped, in case a
/// `READY` write the publisher's GPU had queued lands after the first release.
struct Watcher {
    stop: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn spawn(conn: &UnixStream, waits: Arc<Waits>) -> Result<Watcher> {
        let conn = conn
            .try_clone()
            .map_err(|e| Error::io("duplicating the channel connection", e))?;
        let (stop, stop_rx) =
            UnixStream::pair().map_err(|e| Error::io("creating the watcher's socket", e))?;
        let thread = std::thread::Builder::new()
            .name("cuda-ipc channel watcher".into())
            .spawn(move || {
                let mut hung_up = false;
                loop {
                    let mut req = [
                        PollRequest::readable(stop_rx.as_raw_fd()),
                        PollRequest::readable(conn.as_raw_fd()),
                    ];
                    let nap = if hung_up {
                        Duration::from_millis(50)
                    } else {
                        Duration::from_secs(1)
                    };
                    let polled = crate::os::poll(&mut req[..if hung_up { 1 } else { 2 }], nap);
                    if polled.is_err() {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    if req[0].is_ready() {
                        return;
                    }
                    if hung_up || req[1].is_ready() {
                        // Readable: EOF, or bytes a publisher never sends. Either way it is
                        // gone for this subscriber (the subscriber's own read will say which).
                        hung_up = true;
                        let _ = waits.release_all();
                    }
                }
            })
            .map_err(|e| Error::io("spawning the channel watcher thread", e))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = crate::os::send_with_fds(self.stop.as_fd(), b"Q", &[]);
        // Should the byte not go, the thread still sees the socket close.
        let _ = self.stop.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                crate::drop_log::record("channel watcher", "its thread panicked");
            }
        }
    }
}

impl<T: Pod> std::fmt::Debug for Subscriber<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Subscriber({}, id {})",
            self.path.display(),
            self.welcome.id
        )
    }
}

/// What a subscriber has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Frames received.
    pub received: u64,
    /// Frames skipped (overwritten before this subscriber got them; `Policy::DropOldest`).
    pub missed: u64,
    /// Samples held now.
    pub held: usize,
    /// How this subscriber shares the GPU with its publisher, as both reported when it joined:
    /// [`SharingMode::SameGpuWithoutMps`] means ~150 µs per hand-over (the GPU time-slices
    /// between the two processes' contexts), and the subscriber logged one warning (target
    /// `cuda_ipc`) about it. The publisher's report is taken on its word: a publisher can
    /// make this wrong, and nothing else depends on it.
    pub sharing: SharingMode,
}

fn protocol_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Protocol {
        peer: format!("channel publisher at {}", path.display()),
        detail: detail.into(),
    }
}

impl<'ctx, T: Pod> Subscriber<'ctx, T> {
    /// Joins the channel at `path` (`<dir>/<name>`), waiting up to `opts.timeout` for it to
    /// appear, and maps its pool on `ctx`'s GPU (any GPU that can access the publisher's).
    pub fn subscribe(
        ctx: &'ctx Context,
        path: impl AsRef<Path>,
        opts: SubscribeOptions,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let names = Names::for_path(&path)?;
        let deadline = deadline_after(opts.timeout);
        let trust = opts.import.trust();
        let peer = format!("channel publisher at {}", names.socket.display());

        // The directory, then the socket, may not exist yet.
        let mut spins = 0u32;
        let dir = loop {
            match RendezvousDir::open(&names.dir, &trust) {
                Ok(d) => break d,
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && Instant::now() < deadline =>
                {
                    backoff(&mut spins, deadline)
                }
                Err(e) => return Err(e),
            }
        };
        // A shared buffer of this name (a descriptor a trusted exporter wrote): say so, instead
        // of timing out on its socket. Anything else there (planted by someone who can write in
        // the directory) is not taken for one: the socket's answer decides.
        let buffer = dir
            .read_trusted(
                &names.descriptor_name(),
                crate::ipc::MAX_DESCRIPTOR_LEN,
                &trust,
            )
            .ok()
            .is_some_and(|b| crate::ipc::Descriptor::decode(&b).is_ok());
        if buffer {
            return Err(Error::InvalidArgument(format!(
                "{} is a shared buffer (it has a descriptor, {}), not a channel: import it with \
                 SharedDeviceBuffer::import, or subscribe to the channel's own name",
                path.display(),
                names.descriptor.display()
            )));
        }
        let check_uid = |uid: u32, role: &str| {
            if trust.trusts_uid(uid) {
                return Ok(());
            }
            Err(Error::UntrustedExporter {
                path: names.socket.clone(),
                reason: format!(
                    "uid {uid} {role}, which this subscriber does not trust (only its own uid \
                     {}, root, and ImportOptions::trusted_exporters {:?})",
                    crate::os::effective_uid(),
                    trust.uids
                ),
            })
        };
        let answered = crate::service::client::connect(
            &dir,
            &names,
            &check_uid,
            None,
            deadline,
            opts.timeout,
            "the welcome",
        )?;
        let (conn, mut reader, mut msg) = (answered.stream, answered.reader, answered.first);
        let left = || deadline.saturating_duration_since(Instant::now());
        if msg.kind != Kind::Welcome || msg.fds.len() != 1 {
            return Err(protocol_error(
                &path,
                format!(
                    "expected a welcome with one fd, got {:?} with {}",
                    msg.kind,
                    msg.fds.len()
                ),
            ));
        }
        let welcome = Welcome::decode(&msg.payload).map_err(|e| protocol_error(&path, e))?;
        let chan_fd = msg.fds.remove(0);
        let mut page_msg = reader.read_within(&conn, left(), &peer)?;
        if page_msg.kind != Kind::Page || page_msg.fds.len() != 1 {
            return Err(protocol_error(&path, "expected this subscriber's page"));
        }
        let page_fd = page_msg.fds.remove(0);

        let tag = opts.import.type_tag.unwrap_or_else(TypeTag::of::<T>);
        if welcome.elem_size != std::mem::size_of::<T>() || welcome.type_tag != tag.0 {
            return Err(Error::Descriptor(DescriptorError::Inconsistent(format!(
                "channel {} carries elements of {} bytes with type tag {:#x}; this subscriber \
                 asked for {} ({} bytes, tag {:#x})",
                path.display(),
                welcome.elem_size,
                welcome.type_tag,
                std::any::type_name::<T>(),
                std::mem::size_of::<T>(),
                tag.0
            ))));
        }
        if let Some(n) = opts.expected_frame_len {
            if n != welcome.frame_len {
                return Err(Error::LengthMismatch {
                    what: "channel frame",
                    expected: n,
                    actual: welcome.frame_len,
                });
            }
        }
        let chan = page::read_only_from_peer(chan_fd, &peer)?;
        if chan.load(MAGIC) != MAGIC_VALUE {
            return Err(protocol_error(
                &path,
                "the channel page has no channel magic",
            ));
        }
        let mut me = Page::from_peer(page_fd, &peer)?;
        // How the two ends share the GPU: ours for the publisher, its own from the channel page.
        let info = EndInfo::of(ctx);
        info.store(me.words(), SUB_SHARING);
        let sharing = sharing::sharing(&info, EndInfo::load(&chan, CHAN_SHARING).as_ref());
        me.register(ctx)?;
        let pool_len = welcome
            .slots
            .checked_mul(welcome.stride)
            .ok_or_else(|| protocol_error(&path, "pool size overflows"))?;
        let import = ImportOptions {
            timeout: left().max(Duration::from_millis(1)),
            type_tag: Some(tag),
            expected_len: Some(pool_len),
            ..opts.import.clone()
        };
        let imported = SharedDeviceBuffer::<T>::import_with(ctx, pool_path(&names), &import);
        let pool = match imported {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: registered above; nothing was queued against it yet.
                let _ = unsafe { me.unregister(ctx) };
                return Err(e);
            }
        };
        if let Err(e) = same_pool(&welcome, &pool.descriptor().encode_v1()) {
            // SAFETY: as above.
            let _ = unsafe { me.unregister(ctx) };
            return Err(e.into());
        }
        let next = match opts.start {
            Start::Latest if welcome.newest != 0 => welcome.newest,
            _ => welcome.announced.saturating_add(1),
        };
        me.words()[SUB_NEXT].store(next, SeqCst);
        let started = conn
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the channel connection non-blocking", e))
            .and_then(|()| {
                let page = me
                    .mapping()
                    .ok_or_else(|| protocol_error(&path, "unmapped page"))?;
                let waits = Arc::new(Waits::new(page, welcome.slots));
                let watcher = Watcher::spawn(&conn, Arc::clone(&waits))?;
                Ok((waits, watcher))
            });
        let (waits, watcher) = match started {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: registered above; nothing was queued against it yet.
                let _ = unsafe { me.unregister(ctx) };
                return Err(e);
            }
        };
        let sub = Subscriber {
            ctx,
            path,
            conn,
            state: RefCell::new(SubscriberState::new(welcome.slots, welcome.policy, next)),
            waits,
            welcome,
            chan,
            me: ManuallyDrop::new(me),
            pool: ManuallyDrop::new(pool),
            uses: StreamUses::default(),
            held: Cell::new(0),
            received: Cell::new(0),
            missed: Cell::new(0),
            gone: RefCell::new(None),
            watcher: Some(watcher),
            sharing,
            waiting: opts.waiting,
            spin: Cell::new(match opts.waiting {
                Waiting::Adaptive { max } => max,
                Waiting::Eager => Duration::ZERO,
            }),
        };
        if sharing.is_time_sliced() {
            sharing::warn_time_sliced(&format!("channel subscriber of {}", sub.path.display()));
        }
        Ok(sub)
    }

    /// The channel's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Elements of a frame.
    pub fn frame_len(&self) -> usize {
        self.welcome.frame_len
    }

    /// The channel's policy.
    pub fn policy(&self) -> Policy {
        self.welcome.policy
    }

    /// Counters.
    pub fn stats(&self) -> SubscriberStats {
        SubscriberStats {
            received: self.received.get(),
            missed: self.missed.get(),
            held: self.held.get(),
            sharing: self.sharing,
        }
    }

    /// Whether the publisher is gone (its connection closed: it closed the channel or
    /// died). Frames it completed can still be received.
    fn publisher_gone(&self) -> Option<String> {
        if let Some(why) = self.gone.borrow().as_ref() {
            return Some(why.clone());
        }
        let closed = self.chan.load(CLOSED) != 0;
        let hung_up = self.waits.released.load(SeqCst);
        if !closed && !hung_up {
            return None; // the common case: no system call
        }
        let mut buf = [0u8; 16];
        let why = match (&self.conn).read(&mut buf) {
            Ok(0) if closed => "it closed the channel".to_string(),
            Ok(0) => "the connection closed: its process ended, or it disconnected this \
                      subscriber (for holding more than max_held frames)"
                .to_string(),
            Ok(_) => "it sent bytes a channel never sends".to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !closed {
                    return None;
                }
                // Closed after a failed publish, with the connection still open.
                "it closed the channel".to_string()
            }
            Err(e) => format!("its connection failed: {e}"),
        };
        // Release whatever our streams wait for: no one else will write those words.
        let _ = self.waits.release_all();
        *self.gone.borrow_mut() = Some(why.clone());
        Some(why)
    }

    fn gone_error(&self, why: String) -> Error {
        Error::PublisherGone {
            channel: self.path.clone(),
            closed: self.chan.load(CLOSED) != 0,
            detail: why,
        }
    }

    /// Holds the next frame (waiting on the CPU, up to `timeout`, until its slot is claimed).
    fn pick(&self, timeout: Duration, deadline: Instant) -> Result<Picked> {
        if self.held.get() >= self.welcome.max_held {
            return Err(Error::InvalidArgument(format!(
                "this subscriber already holds {} samples, the channel's max_held: drop one \
                 before receiving the next",
                self.held.get()
            )));
        }
        self.wait_for_own_acks(timeout, deadline)?;
        // When the next frame is not claimed yet: spin (64 rounds, or with `Adaptive` only as
        // long as claims lately came within the budget, see `adapt_spin`), then sleep on the
        // futex.
        let mut spins = 0u32;
        let mut waiting_since: Option<Instant> = None;
        loop {
            let events = self.chan.load(EVENTS) as u32;
            let gone = self.publisher_gone();
            let pick = self
                .state
                .borrow_mut()
                .try_pick(&self.chan, self.me.words())
                .map_err(|v| protocol_error(&self.path, v.0))?;
            match pick {
                Pick::Held(p) => {
                    if gone.is_some() && !protocol::is_ready(&self.chan, &p) {
                        protocol::release(self.me.words(), &p);
                        return Err(self.gone_error(gone.unwrap_or_default()));
                    }
                    self.missed.set(self.missed.get().saturating_add(p.missed));
                    if let Some(since) = waiting_since {
                        self.adapt_spin(since.elapsed());
                    }
                    return Ok(p);
                }
                Pick::NotYet => {
                    if let Some(why) = gone {
                        return Err(self.gone_error(why));
                    }
                }
            }
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: format!(
                        "frame {} on channel {}",
                        self.state.borrow().next(),
                        self.path.display()
                    ),
                    waited: timeout,
                });
            }
            let since = *waiting_since.get_or_insert(now);
            spins += 1;
            let spin = match self.waiting {
                Waiting::Eager => spins < EAGER_SPINS,
                Waiting::Adaptive { .. } => now.duration_since(since) < self.spin.get(),
            };
            if spin {
                std::hint::spin_loop();
                continue;
            }
            // Sleep on the channel's futex: say so first, then check once more that nothing
            // changed since `events` (the publisher bumps, then looks at SUB_WAITING).
            let waiting = &self.me.words()[SUB_WAITING];
            waiting.store(1, SeqCst);
            if self.chan.load(EVENTS) as u32 == events {
                // Woken by the publisher, or every 20 ms to notice a publisher that died.
                let nap = left.min(Duration::from_millis(20));
                if let Err(e) = self.chan.futex_wait(EVENTS, events, nap) {
                    waiting.store(0, SeqCst);
                    return Err(Error::io("waiting for the channel (futex)", e));
                }
            }
            waiting.store(0, SeqCst);
        }
    }

    /// With [`Waiting::Adaptive`], adapts the spin budget to how long the last wait for a
    /// claim took: a claim that came within `max` would have been (or was) caught by
    /// spinning, so the budget grows back to it; one that came later was slept for anyway, so
    /// spinning first only burnt CPU and the budget halves. A subscriber fed faster than it
    /// wakes up keeps spinning (no futex round trip per frame); one fed slower sleeps at once
    /// (no spinning per frame).
    fn adapt_spin(&self, waited: Duration) {
        let Waiting::Adaptive { max } = self.waiting else {
            return;
        };
        let spin = self.spin.get();
        self.spin.set(if waited <= max {
            (spin * 2).clamp(SPIN_STEP.min(max), max)
        } else {
            spin / 2
        });
    }

    /// Slots this subscriber holds as the publisher sees them: `HOLD > ACK` in its page. A
    /// released sample's slot counts until its acknowledgement, written by this subscriber's
    /// GPU after the work queued before it, lands.
    fn slots_held(&self) -> usize {
        let w = self.me.words();
        (0..self.welcome.slots)
            .filter(|&i| w[SUB_HOLD + i].load(SeqCst) > w[SUB_ACK + i].load(SeqCst))
            .count()
    }

    /// With `DropOldest`, keeps this subscriber within `max_held` as the publisher counts (it
    /// disconnects one above it): while released samples' acknowledgements are still queued
    /// behind this subscriber's GPU work, waits for them (up to `timeout`).
    fn wait_for_own_acks(&self, timeout: Duration, deadline: Instant) -> Result<()> {
        if self.welcome.policy != Policy::DropOldest {
            // Block disconnects no one: a subscriber whose acknowledgements lag only holds the
            // publisher back (that policy's meaning), and may queue work many frames ahead.
            return Ok(());
        }
        let mut spins = 0u32;
        while self.slots_held() >= self.welcome.max_held {
            if self.publisher_gone().is_some() {
                return Ok(()); // nothing to protect any more; `pick` reports the end
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "this subscriber's GPU to acknowledge the frames it released (it holds \
                         {} slots of channel {}, max_held {}): its streams are behind",
                        self.slots_held(),
                        self.path.display(),
                        self.welcome.max_held
                    ),
                    waited: timeout,
                });
            }
            backoff(&mut spins, deadline);
        }
        Ok(())
    }

    /// Waits on the CPU until the frame is complete on the publisher's GPU.
    fn wait_ready_host(&self, p: &Picked, timeout: Duration, deadline: Instant) -> Result<()> {
        let mut spins = 0u32;
        while !protocol::is_ready(&self.chan, p) {
            if let Some(why) = self.publisher_gone() {
                if !protocol::is_ready(&self.chan, p) {
                    self.unpick(p);
                    return Err(self.gone_error(why));
                }
            }
            if Instant::now() >= deadline {
                // Not delivered: it stays the next frame (nothing is lost by a timeout).
                self.unpick(p);
                return Err(Error::Timeout {
                    what: format!(
                        "frame {} on channel {} to be written",
                        p.seq,
                        self.path.display()
                    ),
                    waited: timeout,
                });
            }
            backoff(&mut spins, deadline);
        }
        Ok(())
    }

    /// Receives the next frame for work on `stream` (the GPU path): waits on the CPU only
    /// until the publisher has *claimed* a slot for it (at its `loan`, up to `timeout`; the
    /// frame may not be published yet), then makes `stream` wait on the GPU — with no timeout
    /// — until the frame's data is complete: work queued on `stream` after this call reads
    /// the finished frame, with no CPU synchronization. Dropping the sample releases it on
    /// `stream`, after the work queued there.
    pub fn receive<'s>(
        &'s self,
        stream: &'s Stream<'s>,
        timeout: Duration,
    ) -> Result<Sample<'s, 'ctx, T>> {
        check_stream(self.ctx, stream)?;
        let deadline = deadline_after(timeout);
        let p = self.pick(timeout, deadline)?;
        let ready = protocol::is_ready(&self.chan, &p);
        if !ready {
            if p.seq <= self.welcome.announced {
                // Published before this subscriber joined: its page was not written for it.
                self.wait_ready_host(&p, timeout, deadline)?;
            } else {
                // Recorded before the wait is queued (the watcher and Drop release what is
                // recorded), the hang-up checked after (see `Waits`).
                self.waits.record(p.slot, p.seq);
                let queued = self.me.device_word(SUB_READY + p.slot).and_then(|word| {
                    let _bound = self.ctx.bind()?;
                    // SAFETY: a live stream of this context; the word is this subscriber's
                    // registered page, unregistered only after every use recorded on
                    // `self.uses` (this wait is, just below) is done.
                    unsafe { result::stream_wait_value64_geq(stream.raw(), word, p.seq) }?;
                    Ok(())
                });
                // Recorded on this subscriber's uses, also if the wait failed (an event after
                // nothing is harmless): synchronous copies of the sample (which wait for them)
                // then wait for the frame to be written too, and the page outlives the wait
                // even if the sample is leaked.
                let recorded = self.uses.record(self.ctx, stream.id(), stream.raw());
                self.waits.check_released(p.slot);
                if let Err(e) = queued.and(recorded) {
                    self.unpick(&p);
                    return Err(e);
                }
            }
        }
        self.held.set(self.held.get() + 1);
        self.received.set(self.received.get() + 1);
        Ok(Sample {
            sub: self,
            picked: p,
            stream: Some(stream),
            released: false,
        })
    }

    /// Receives the next frame on the CPU path: returns once the frame is complete on the
    /// publisher's GPU (or `timeout`). Read it with synchronous copies or your own streams
    /// (recorded on it); dropping the sample waits for that work, then releases it.
    pub fn receive_host(&self, timeout: Duration) -> Result<Sample<'_, 'ctx, T>> {
        let deadline = deadline_after(timeout);
        let p = self.pick(timeout, deadline)?;
        self.wait_ready_host(&p, timeout, deadline)?;
        self.held.set(self.held.get() + 1);
        self.received.set(self.received.get() + 1);
        Ok(Sample {
            sub: self,
            picked: p,
            stream: None,
            released: false,
        })
    }

    /// Gives back a picked frame that is not delivered.
    fn unpick(&self, p: &Picked) {
        self.state.borrow_mut().unpick(self.me.words(), p);
        self.missed.set(self.missed.get().saturating_sub(p.missed));
    }

    /// The slot's frame, tracked by this subscriber's own uses: work recorded on it (the
    /// crate's kernels, `record_use`) is waited for by the subscriber's drop and by host
    /// releases, and synchronous copies of it wait for this subscriber's streams (the GPU wait
    /// for the frame among them) — never for another subscriber's.
    fn slot_view(&self, slot: usize) -> DeviceSlice<'_, T> {
        let start = slot * self.welcome.stride;
        let view = self
            .pool
            .view()
            .slice(start..start + self.welcome.frame_len)
            .expect("a slot lies inside the checked pool");
        DeviceSlice::tracked(view.context(), view.device_ptr(), view.len(), &self.uses)
    }

    /// Releases `p` after the work queued on `stream` (and on this subscriber's other
    /// streams recorded on its uses): the GPU writes the acknowledgement.
    fn release_on(&self, p: &Picked, stream: &Stream<'_>) -> Result<()> {
        check_stream(self.ctx, stream)?;
        self.uses
            .order_before(self.ctx, stream.id(), stream.raw())?;
        let word = self.me.device_word(SUB_ACK + p.slot)?;
        {
            let _bound = self.ctx.bind()?;
            // SAFETY: a live stream of this context; our registered page (see `receive`).
            unsafe { result::stream_write_value64(stream.raw(), word, p.seq) }?;
        }
        // The page must outlive the acknowledgement: the subscriber's drop waits for every
        // use recorded on its uses before it unregisters the page.
        self.uses.record(self.ctx, stream.id(), stream.raw())
    }

    /// Releases `p` from the CPU once every use recorded by this subscriber is done (the wait
    /// queued by `receive`, if any, among them; see [`wait_own_streams`](Self::wait_own_streams)
    /// for when it gives up).
    fn release_host(&self, p: &Picked) {
        if !self.wait_own_streams() {
            crate::drop_log::record(
                "channel sample (waiting for its readers)",
                "a publisher that hung up kept holding this subscriber's streams back: \
                 released without waiting for them",
            );
        }
        protocol::release(self.me.words(), p);
    }

    /// Waits until every operation recorded on this subscriber's uses is done; returns
    /// whether they are. Bounded against the publisher, not against the program's own work:
    /// while the waits are released (the publisher hung up or is gone) it releases them again
    /// between polls, and gives up after [`WAIT_WHILE_LOWERED`] once it has had to (a peer
    /// still writing this subscriber's `READY` words lowered one); otherwise it waits as long
    /// as the work queued on its streams takes. With uses it could not record (a failed
    /// record, a forgotten foreign view) it waits for the whole context instead.
    fn wait_own_streams(&self) -> bool {
        if self.uses.is_untracked() {
            return match self.uses.wait_host(self.ctx) {
                Ok(()) => true,
                Err(e) => {
                    crate::drop_log::record("channel subscriber (waiting for its streams)", e);
                    false
                }
            };
        }
        let mut lowered: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            if self.uses.is_idle(self.ctx) {
                return true;
            }
            if self.waits.released.load(SeqCst) && self.waits.release_all() {
                lowered.get_or_insert_with(Instant::now);
            }
            if lowered.is_some_and(|t| t.elapsed() >= WAIT_WHILE_LOWERED) {
                return false;
            }
            backoff(&mut spins, deadline_after(Duration::from_micros(50)));
        }
    }

    fn done(&self) {
        self.held.set(self.held.get().saturating_sub(1));
    }
}

/// With [`Waiting::Eager`]: rounds of `try_pick` a subscriber spins for a claim before it
/// sleeps on the futex.
const EAGER_SPINS: u32 = 64;
/// With [`Waiting::Adaptive`]: the smallest budget the spin grows back from.
const SPIN_STEP: Duration = Duration::from_micros(1);

/// How long `Subscriber::drop` waits for the publisher to write the frames its streams wait
/// for, before it releases them itself.
const DROP_WAIT_FOR_FRAMES: Duration = Duration::from_secs(10);
/// How long a subscriber waits for its streams once a peer is seen lowering the `READY` words
/// it released (see `wait_own_streams`); `Subscriber::drop` then leaves its page and pool
/// mapped for the process's life rather than unmap them under queued work.
const WAIT_WHILE_LOWERED: Duration = Duration::from_secs(5);

impl<T: Pod> Drop for Subscriber<'_, T> {
    fn drop(&mut self) {
        // Our streams may wait for frames the publisher has not written yet: give it time to
        // write them (or to be gone, which releases them), then release them ourselves.
        let deadline = deadline_after(DROP_WAIT_FOR_FRAMES);
        let mut spins = 0u32;
        while self.waits.pending() && self.publisher_gone().is_none() {
            if Instant::now() >= deadline {
                crate::drop_log::record(
                    "Subscriber",
                    "frames a stream waited for were not written within 10 s: released",
                );
                break;
            }
            backoff(&mut spins, deadline);
        }
        // Each slot's READY word is raised to the highest frame waited for there: every wait
        // of ours passes, whatever the publisher does with frame numbers (see `Waits`).
        let _ = self.waits.release_all();
        // The publisher's connection is watched no longer.
        drop(self.watcher.take());
        // Every wait and acknowledgement queued on our page, and the work recorded on our
        // samples' views (also of samples leaked with `mem::forget`), is on `self.uses`: wait
        // for it, bounded against a publisher that keeps lowering our READY words.
        if !self.wait_own_streams() {
            // The page stays registered and mapped (Page's drop logs it) and the pool mapped:
            // safer than unmapping memory that queued work may still touch.
            crate::drop_log::record(
                "Subscriber",
                "a peer kept its streams' waits from passing (it lowered their READY words \
                 after they were released): its control page and the pool stay mapped",
            );
            // SAFETY: dropped once, here, and never used again. Still registered, the page
            // stays mapped for the process's life (Page's drop logs it).
            unsafe { ManuallyDrop::drop(&mut self.me) };
            return;
        }
        self.uses
            .wait_and_clear(self.ctx, "Subscriber (its streams' events)");
        // On a thread of its own: cuMemHostUnregister waits for the whole device, so another
        // subscriber's stream waiting for an unpublished frame would hold this drop up.
        // SAFETY: taken once, here, and `self.me` is not used after this.
        let page = unsafe { ManuallyDrop::take(&mut self.me) };
        // SAFETY: every stream operation that uses the page (the waits queued by `receive`,
        // the acknowledgements of `release_on`) is recorded on `self.uses`, and all of them are
        // done; no sample is left (they borrow `self`).
        unsafe { page.unregister_later(self.ctx.device()) };
        // SAFETY: dropped once, here, and never used again; the work this subscriber recorded
        // on it is done (above).
        unsafe { ManuallyDrop::drop(&mut self.pool) };
    }
}

/// A received frame, read-only (`DeviceMemory<T>`). Dropping it releases the slot: on the
/// stream it was received on, after the work queued there (GPU path), or from the CPU after
/// every recorded use (CPU path).
pub struct Sample<'s, 'ctx, T: Pod> {
    sub: &'s Subscriber<'ctx, T>,
    picked: Picked,
    stream: Option<&'s Stream<'s>>,
    released: bool,
}

impl<T: Pod> std::fmt::Debug for Sample<'_, '_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sample(frame {} in slot {}, missed {})",
            self.picked.seq, self.picked.slot, self.picked.missed
        )
    }
}

impl<T: Pod> Sample<'_, '_, T> {
    /// The frame's sequence number (frames are numbered from 1).
    pub fn seq(&self) -> u64 {
        self.picked.seq
    }

    /// Frames skipped just before this one (overwritten before this subscriber got them;
    /// always 0 with `Policy::Block`).
    pub fn missed(&self) -> u64 {
        self.picked.missed
    }

    /// Releases the frame after the work queued on `stream` (which may differ from the one it
    /// was received on).
    pub fn release(mut self, stream: &Stream<'_>) -> Result<()> {
        self.released = true;
        let out = self.sub.release_on(&self.picked, stream);
        if out.is_err() {
            self.sub.release_host(&self.picked);
        }
        self.sub.done();
        out
    }
}

impl<T: Pod> DeviceMemory<T> for Sample<'_, '_, T> {
    fn view(&self) -> DeviceSlice<'_, T> {
        self.sub.slot_view(self.picked.slot)
    }
}

impl<T: Pod> Drop for Sample<'_, '_, T> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        match self.stream {
            Some(stream) => {
                if let Err(e) = self.sub.release_on(&self.picked, stream) {
                    crate::drop_log::record("channel sample (release on its stream)", e);
                    self.sub.release_host(&self.picked);
                }
            }
            None => self.sub.release_host(&self.picked),
        }
        self.sub.done();
    }
}
