//! The subscribing side of a channel.
use std::cell::{Cell, RefCell};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::ipc::framing::Kind;
use crate::ipc::rendezvous::{deadline_after, Names, RendezvousDir};
use crate::ipc::{DescriptorError, ImportOptions, SharedDeviceBuffer, TypeTag};
use crate::memory::{check_stream, DeviceMemory, DeviceSlice};
use crate::os::{PollRequest, SharedMapping};
use crate::result;
use crate::stream::Stream;

use super::layout::*;
use super::page::Page;
use super::protocol::{self, Pick, Picked, SubscriberState};
use super::publisher::backoff;
use super::wire::{same_pool, Welcome};
use super::{pool_path, Policy, Start, SubscribeOptions};

/// The subscribing end of a channel: maps the publisher's pool once, then receives frames
/// in place. See the [module docs](super).
pub struct Subscriber<'ctx, T: Pod> {
    ctx: &'ctx Context,
    path: PathBuf,
    conn: UnixStream,
    welcome: Welcome,
    chan: Page,
    me: Page,
    pool: SharedDeviceBuffer<'ctx, T>,
    state: RefCell<SubscriberState>,
    held: Cell<usize>,
    received: Cell<u64>,
    missed: Cell<u64>,
    /// Why the publisher is gone, once it is.
    gone: RefCell<Option<String>>,
    /// Highest frame a stream was made to wait for, per slot (to release them if the
    /// publisher dies first).
    waits: RefCell<Vec<u64>>,
    /// Releases this subscriber's GPU waits as soon as the publisher's connection closes.
    watcher: Option<Watcher>,
}

/// A thread that watches the publisher's connection and, when it closes, stores
/// [`READY_RELEASED`] into this subscriber's `READY` words: a stream waiting for a frame the
/// publisher will never write then drains, even if the program never calls `receive` again
/// (`stream.synchronize()` right after a receive must not hang because the publisher died).
struct Watcher {
    stop: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set once the connection is readable (closed, or garbage): the subscriber then reads it
    /// to learn why. Until then no receive makes a system call to check the connection.
    hung_up: Arc<std::sync::atomic::AtomicBool>,
}

impl Watcher {
    fn spawn(conn: &UnixStream, page: Arc<SharedMapping>, slots: usize) -> Result<Watcher> {
        let conn = conn
            .try_clone()
            .map_err(|e| Error::io("duplicating the channel connection", e))?;
        let (stop, stop_rx) =
            UnixStream::pair().map_err(|e| Error::io("creating the watcher's socket", e))?;
        let hung_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&hung_up);
        let thread = std::thread::Builder::new()
            .name("cuda-ipc channel watcher".into())
            .spawn(move || loop {
                let mut req = [
                    PollRequest::readable(stop_rx.as_raw_fd()),
                    PollRequest::readable(conn.as_raw_fd()),
                ];
                if crate::os::poll(&mut req, Duration::from_secs(1)).is_err() {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                if req[0].is_ready() {
                    return;
                }
                if req[1].is_ready() {
                    // Readable: EOF, or bytes a publisher never sends. Either way it is gone
                    // for this subscriber (the subscriber's own read will say which).
                    for i in 0..slots.min(MAX_SLOTS) {
                        page.words()[SUB_READY + i].store(READY_RELEASED, SeqCst);
                    }
                    flag.store(true, SeqCst);
                    return;
                }
            })
            .map_err(|e| Error::io("spawning the channel watcher thread", e))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
            hung_up,
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
        if dir.stat_entry(&names.descriptor_name()).is_ok() {
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
        let chan = Page::from_peer(chan_fd, false, &peer)?;
        if chan.words()[MAGIC].load(SeqCst) != MAGIC_VALUE {
            return Err(protocol_error(
                &path,
                "the channel page has no channel magic",
            ));
        }
        let mut me = Page::from_peer(page_fd, true, &peer)?;
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
        if let Err(e) = same_pool(&welcome, &pool.descriptor().encode()) {
            // SAFETY: as above.
            let _ = unsafe { me.unregister(ctx) };
            return Err(e.into());
        }
        let next = match opts.start {
            Start::Latest if welcome.newest != 0 => welcome.newest,
            _ => welcome.announced.saturating_add(1),
        };
        me.words()[SUB_NEXT].store(next, SeqCst);
        let watcher = conn
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the channel connection non-blocking", e))
            .and_then(|()| {
                let page = me
                    .mapping()
                    .ok_or_else(|| protocol_error(&path, "unmapped page"))?;
                Watcher::spawn(&conn, page, welcome.slots)
            });
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: registered above; nothing was queued against it yet.
                let _ = unsafe { me.unregister(ctx) };
                return Err(e);
            }
        };
        Ok(Subscriber {
            ctx,
            path,
            conn,
            state: RefCell::new(SubscriberState::new(welcome.slots, welcome.policy, next)),
            waits: RefCell::new(vec![0; welcome.slots]),
            welcome,
            chan,
            me,
            pool,
            held: Cell::new(0),
            received: Cell::new(0),
            missed: Cell::new(0),
            gone: RefCell::new(None),
            watcher: Some(watcher),
        })
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
        }
    }

    /// Whether the publisher is gone (its connection closed: it closed the channel or
    /// died). Frames it completed can still be received.
    fn publisher_gone(&self) -> Option<String> {
        if let Some(why) = self.gone.borrow().as_ref() {
            return Some(why.clone());
        }
        let closed = self.chan.words()[CLOSED].load(SeqCst) != 0;
        let hung_up = self.watcher.as_ref().is_none_or(|w| w.hung_up.load(SeqCst));
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
        for i in 0..self.welcome.slots {
            self.me.words()[SUB_READY + i].store(READY_RELEASED, SeqCst);
        }
        *self.gone.borrow_mut() = Some(why.clone());
        Some(why)
    }

    fn gone_error(&self, why: String) -> Error {
        Error::PublisherGone {
            channel: self.path.clone(),
            closed: self.chan.words()[CLOSED].load(SeqCst) != 0,
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
        let mut spins = 0u32;
        loop {
            let events = self.chan.words()[EVENTS].load(SeqCst) as u32;
            let gone = self.publisher_gone();
            let pick = self
                .state
                .borrow_mut()
                .try_pick(self.chan.words(), self.me.words())
                .map_err(|v| protocol_error(&self.path, v.0))?;
            match pick {
                Pick::Held(p) => {
                    if gone.is_some() && !protocol::is_ready(self.chan.words(), &p) {
                        protocol::release(self.me.words(), &p);
                        return Err(self.gone_error(gone.unwrap_or_default()));
                    }
                    self.missed.set(self.missed.get().saturating_add(p.missed));
                    return Ok(p);
                }
                Pick::NotYet => {
                    if let Some(why) = gone {
                        return Err(self.gone_error(why));
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
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
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
                continue;
            }
            // Sleep on the channel's futex: say so first, then check once more that nothing
            // changed since `events` (the publisher bumps, then looks at SUB_WAITING).
            let waiting = &self.me.words()[SUB_WAITING];
            waiting.store(1, SeqCst);
            let events_word = &self.chan.words()[EVENTS];
            if events_word.load(SeqCst) as u32 == events {
                // Woken by the publisher, or every 20 ms to notice a publisher that died.
                let nap = left.min(Duration::from_millis(20));
                if let Err(e) = crate::os::futex_wait(events_word, events, nap) {
                    waiting.store(0, SeqCst);
                    return Err(Error::io("waiting for the channel (futex)", e));
                }
            }
            waiting.store(0, SeqCst);
        }
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
        while !protocol::is_ready(self.chan.words(), p) {
            if let Some(why) = self.publisher_gone() {
                if !protocol::is_ready(self.chan.words(), p) {
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
        let ready = protocol::is_ready(self.chan.words(), &p);
        if !ready {
            if p.seq <= self.welcome.announced {
                // Published before this subscriber joined: its page was not written for it.
                self.wait_ready_host(&p, timeout, deadline)?;
            } else {
                let queued = self.me.device_word(SUB_READY + p.slot).and_then(|word| {
                    let _bound = self.ctx.bind()?;
                    // SAFETY: a live stream of this context; the word is this subscriber's
                    // registered page, unregistered only after every use recorded on the
                    // pool (this wait is, just below) is done.
                    unsafe { result::stream_wait_value64_geq(stream.raw(), word, p.seq) }?;
                    Ok(())
                });
                // Recorded on the pool: synchronous copies of the sample (which wait for the
                // pool's uses) then wait for the frame to be written too, and the page
                // outlives the wait even if the sample is leaked.
                if queued.is_ok() {
                    // Before anything else can fail: Drop releases the waits it knows of.
                    let mut waits = self.waits.borrow_mut();
                    waits[p.slot] = waits[p.slot].max(p.seq);
                }
                if let Err(e) = queued.and_then(|()| self.pool.view().record_use(stream)) {
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

    fn slot_view(&self, slot: usize) -> DeviceSlice<'_, T> {
        let start = slot * self.welcome.stride;
        self.pool
            .view()
            .slice(start..start + self.welcome.frame_len)
            .expect("a slot lies inside the checked pool")
    }

    /// Releases `p` after the work queued on `stream` (and on other streams recorded on the
    /// pool): the GPU writes the acknowledgement.
    fn release_on(&self, p: &Picked, stream: &Stream<'_>) -> Result<()> {
        check_stream(self.ctx, stream)?;
        if let Some(uses) = self.pool.view().uses() {
            uses.order_before(self.ctx, stream.id(), stream.raw())?;
        }
        let word = self.me.device_word(SUB_ACK + p.slot)?;
        {
            let _bound = self.ctx.bind()?;
            // SAFETY: a live stream of this context; our registered page (see `receive`).
            unsafe { result::stream_write_value64(stream.raw(), word, p.seq) }?;
        }
        // The page must outlive the acknowledgement: the subscriber's drop waits for every
        // use recorded on the pool before it unregisters the page.
        self.pool.view().record_use(stream)
    }

    /// Releases `p` from the CPU once every recorded use of the pool is done (the wait queued
    /// by `receive`, if any, among them).
    fn release_host(&self, p: &Picked) {
        if let Some(uses) = self.pool.view().uses() {
            if let Err(e) = uses.wait_host(self.ctx) {
                crate::drop_log::record("channel sample (waiting for its readers)", e);
            }
        }
        protocol::release(self.me.words(), p);
    }

    fn done(&self) {
        self.held.set(self.held.get().saturating_sub(1));
    }
}

impl<T: Pod> Drop for Subscriber<'_, T> {
    fn drop(&mut self) {
        // Our streams may wait for frames the publisher has not written yet: give it time to
        // write them (or to be gone, which releases them), then release them ourselves.
        let deadline = deadline_after(Duration::from_secs(10));
        let mut spins = 0u32;
        loop {
            let pending = self
                .waits
                .borrow()
                .iter()
                .enumerate()
                .any(|(i, &seq)| self.me.words()[SUB_READY + i].load(SeqCst) < seq);
            if !pending || self.publisher_gone().is_some() {
                break;
            }
            if Instant::now() >= deadline {
                crate::drop_log::record(
                    "Subscriber",
                    "frames a stream waited for were not written within 10 s: released",
                );
                break;
            }
            backoff(&mut spins, deadline);
        }
        for i in 0..self.welcome.slots {
            let w = &self.me.words()[SUB_READY + i];
            if w.load(SeqCst) < self.waits.borrow()[i] {
                w.store(READY_RELEASED, SeqCst);
            }
        }
        // No more releases of waits: the publisher's connection is watched no longer.
        drop(self.watcher.take());
        // Every wait and acknowledgement queued on our page is recorded on the pool (also
        // those of samples that were leaked with `mem::forget`): wait for them all.
        let waited = match self.pool.view().uses() {
            Some(uses) => uses.wait_host(self.ctx),
            None => self.ctx.synchronize(),
        };
        match waited {
            // SAFETY: every stream operation that uses the page (the waits queued by
            // `receive`, the acknowledgements of `release_on`) is recorded on the pool's uses,
            // and all of them are done; no sample is left (they borrow `self`).
            Ok(()) => {
                if let Err(e) = unsafe { self.me.unregister(self.ctx) } {
                    crate::drop_log::record("Subscriber (unregistering its page)", e);
                }
            }
            // The page is kept mapped and registered (Page's drop logs it): safer than
            // unregistering memory queued work may still touch.
            Err(e) => crate::drop_log::record("Subscriber (waiting for its streams)", e),
        }
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
