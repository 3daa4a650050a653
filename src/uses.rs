//! Which streams have used a piece of device memory, so that freeing it (or a synchronous copy
//! of it) waits for exactly that work and nothing else.
//!
//! Every owner of device memory (a [`DeviceBuffer`](crate::DeviceBuffer), a shared buffer's
//! allocation, an imported mapping) keeps a [`StreamUses`]: one event per stream that queued
//! work on the memory through this crate, re-recorded after each such operation. Dropping the
//! owner waits for those events only — not for the whole context (`cuCtxSynchronize`), so a
//! buffer dropped while an unrelated stream runs a long kernel returns at once.
//!
//! Work queued with a raw device pointer (your own launches, another library's) is invisible
//! here: record it with [`DeviceSlice::record_use`](crate::DeviceSlice::record_use), or
//! synchronize it yourself before dropping the memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::context::Context;
use crate::drop_log;
use crate::error::Result;
use crate::result::{self, CUevent, CUstream};

/// Most events kept before completed ones are pruned.
const PRUNE_AT: usize = 8;

/// A process-unique id for a stream (raw handles may be reused by the driver after a stream is
/// destroyed; ids never are).
pub(crate) fn next_stream_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The streams that used one piece of memory, each with an event recorded after its last use.
#[derive(Debug, Default)]
pub(crate) struct StreamUses {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    events: Vec<(u64, CUevent)>,
    /// A use could not be recorded: waiting falls back to the whole context.
    untracked: bool,
    /// Views handed to another library (cudarc) that may queue work this record cannot see:
    /// while any is live (or was forgotten), waiting falls back to the whole context.
    foreign: usize,
}

impl Inner {
    fn needs_context_wait(&self) -> bool {
        self.untracked || self.foreign > 0
    }
}

// SAFETY: CUevent handles may be used from any thread; every access is under the mutex and
// binds the owning context first.
unsafe impl Send for StreamUses {}
// SAFETY: see Send.
unsafe impl Sync for StreamUses {}

impl StreamUses {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records, after work just queued on the stream `(id, raw)` of `ctx`, that it uses the
    /// memory. On failure the memory is marked untracked (its drop then waits for the whole
    /// context), so a lost record never lets memory be freed under running work.
    pub fn record(&self, ctx: &Context, id: u64, raw: CUstream) -> Result<()> {
        let bound = ctx.bind();
        let mut inner = self.lock();
        let outcome = bound.and_then(|_bound| inner.record(id, raw));
        if outcome.is_err() {
            inner.untracked = true;
        }
        outcome
    }

    /// Waits on the host until every recorded use is done (the memory's own context `ctx`
    /// answers for uses that could not be recorded). The events stay, for later waits. A host
    /// wait rather than a GPU-side one: a pageable copy queued behind a GPU-side wait blocks
    /// its thread inside the driver, holding a lock other threads need, which can deadlock
    /// with the very thread that would release the wait.
    pub fn wait_host(&self, ctx: &Context) -> Result<()> {
        let _bound = ctx.bind()?;
        let inner = self.lock();
        if inner.needs_context_wait() {
            drop(inner);
            return ctx.synchronize();
        }
        for &(_, event) in &inner.events {
            // SAFETY: our own live event (destroyed only under this lock).
            unsafe { result::event_synchronize(event) }?;
        }
        Ok(())
    }

    /// Whether every recorded use is done (without waiting). `false` when a use could not be
    /// recorded or a foreign view lives, or a query fails.
    pub fn is_idle(&self, ctx: &Context) -> bool {
        let Ok(_bound) = ctx.bind() else {
            return false;
        };
        let inner = self.lock();
        if inner.needs_context_wait() {
            return false;
        }
        inner.events.iter().all(|&(_, event)| {
            // SAFETY: our own live event (destroyed only under this lock).
            matches!(unsafe { result::event_query(event) }, Ok(true))
        })
    }

    /// Whether some use could not be recorded (or a foreign view lives or was forgotten):
    /// waiting for the memory then means waiting for its whole context.
    pub fn is_untracked(&self) -> bool {
        self.lock().needs_context_wait()
    }

    /// Makes the stream `(id, raw)` of `ctx` wait, on the GPU, for the recorded uses on every
    /// other stream: work queued on it next runs after all of them.
    pub fn order_before(&self, ctx: &Context, id: u64, raw: CUstream) -> Result<()> {
        let _bound = ctx.bind()?;
        let inner = self.lock();
        if inner.needs_context_wait() {
            return Err(crate::error::Error::Unsupported(
                "the memory was used by work this crate could not track (a foreign view, or a \
                 failed record): synchronize that work before releasing the frame"
                    .into(),
            ));
        }
        for &(sid, event) in &inner.events {
            if sid != id {
                // SAFETY: our own live event and the caller's live stream, both of `ctx`.
                unsafe { result::stream_wait_event(raw, event) }?;
            }
        }
        Ok(())
    }

    /// A view of the memory goes to another library, whose work on it this record cannot see:
    /// until [`end_foreign`](Self::end_foreign), waiting for the memory waits for its whole
    /// context.
    #[cfg_attr(not(feature = "cudarc"), allow(dead_code))]
    pub fn begin_foreign(&self) {
        self.lock().foreign += 1;
    }

    /// That view is gone: its context is synchronized (the other library's work with it is
    /// then done, whatever stream it used), and exact tracking resumes once no such view is
    /// left. If the synchronize fails, the memory stays untracked for good (safe, slower).
    #[cfg_attr(not(feature = "cudarc"), allow(dead_code))]
    pub fn end_foreign(&self, ctx: &Context) {
        let synced = ctx.synchronize();
        let mut inner = self.lock();
        inner.foreign = inner.foreign.saturating_sub(1);
        if let Err(e) = synced {
            inner.untracked = true;
            drop(inner);
            drop_log::record("a foreign view's drop (cuCtxSynchronize)", e);
        }
    }

    /// Waits until every recorded use is done, then forgets them; an error if it could not
    /// wait (the caller must then not touch the memory).
    pub fn wait_all(&self, ctx: &Context) -> Result<()> {
        let _bound = ctx.bind()?;
        let mut inner = self.lock();
        if inner.needs_context_wait() {
            ctx.synchronize()?;
            inner.untracked = false;
        }
        for &(_, event) in &inner.events {
            // SAFETY: our own live event (destroyed only under this lock).
            unsafe { result::event_synchronize(event) }?;
        }
        for (_, event) in inner.events.drain(..) {
            // SAFETY: our own event, complete; not used afterwards.
            drop_log::check("stream-use event (cuEventDestroy)", unsafe {
                result::event_destroy(event)
            });
        }
        Ok(())
    }

    /// Waits until every recorded use is done and forgets them (destroying the events). Never
    /// fails: errors are logged, and anything uncertain waits for the whole context.
    pub fn wait_and_clear(&self, ctx: &Context, what: &'static str) {
        let _bound = match ctx.bind() {
            Ok(b) => b,
            Err(e) => {
                drop_log::record(what, e);
                return;
            }
        };
        let mut inner = self.lock();
        let mut untracked = inner.needs_context_wait();
        inner.untracked = false;
        for (_, event) in inner.events.drain(..) {
            // SAFETY: our own event, destroyed right after.
            if let Err(e) = unsafe { result::event_synchronize(event) } {
                drop_log::record(what, e);
                untracked = true;
            }
            // SAFETY: our own event; not used afterwards.
            drop_log::check(what, unsafe { result::event_destroy(event) });
        }
        drop(inner);
        if untracked {
            if let Err(e) = ctx.synchronize() {
                drop_log::record(what, e);
            }
        }
    }
}

impl Inner {
    fn record(&mut self, id: u64, raw: CUstream) -> Result<()> {
        let event = match self.events.iter().find(|(s, _)| *s == id) {
            Some(&(_, e)) => e,
            None => {
                if self.events.len() >= PRUNE_AT {
                    self.prune();
                }
                let e = result::event_create(false, false)?;
                self.events.push((id, e));
                e
            }
        };
        // SAFETY: our live event and the caller's live stream, both of the bound context.
        unsafe { result::event_record(event, raw) }?;
        Ok(())
    }

    /// Forgets the uses that are complete.
    fn prune(&mut self) {
        self.events.retain(|&(_, event)| {
            // SAFETY: our own live event.
            let done = matches!(unsafe { result::event_query(event) }, Ok(true));
            if done {
                // SAFETY: our own event, complete and forgotten here.
                drop_log::check("stream-use event (cuEventDestroy)", unsafe {
                    result::event_destroy(event)
                });
            }
            !done
        });
    }
}
