//! Streams: ordered queues of GPU work.
//!
//! A [`Stream`] borrows its [`Context`], so it cannot outlive it. Memory remembers which
//! streams used it (see [`crate::memory`]): dropping it waits for those streams' work on it,
//! and a synchronous copy of it is ordered after that work — on a private non-blocking stream
//! of the context, so it does not serialize with unrelated streams.
//!
//! ```no_run
//! use cuda_ipc::{Context, Device, DeviceBuffer, Stream};
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let stream = Stream::new(&ctx)?;
//! let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, 1024)?;
//! ctx.kernels()?.iota_u32(&stream, &mut buf, 7)?;
//! stream.synchronize()?;
//! # Ok::<(), cuda_ipc::Error>(())
//! ```

use crate::context::Context;
use crate::drop_log;
use crate::error::Result;
use crate::event::Event;
use crate::result::{self, CUstream};

/// A CUDA stream of a context.
pub struct Stream<'ctx> {
    ctx: &'ctx Context,
    raw: CUstream,
    id: u64,
    /// Destroyed on drop (false for another library's stream).
    owned: bool,
}

// SAFETY: a CUstream may be used from any thread; every use binds the context first.
unsafe impl Send for Stream<'_> {}
// SAFETY: the driver serialises concurrent submissions to one stream.
unsafe impl Sync for Stream<'_> {}

impl std::fmt::Debug for Stream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stream({:?}, {:p})", self.ctx.device(), self.raw)
    }
}

impl<'ctx> Stream<'ctx> {
    /// A new stream in `ctx`.
    pub fn new(ctx: &'ctx Context) -> Result<Self> {
        let _bound = ctx.bind()?;
        let raw = result::stream_create()?;
        Ok(Stream {
            ctx,
            raw,
            id: crate::uses::next_stream_id(),
            owned: true,
        })
    }

    /// Uses a stream that another library owns (PyTorch's `torch.cuda.current_stream()
    /// .cuda_stream`, CuPy's, the runtime's), without taking it over: dropping the returned
    /// `Stream` does not destroy it. A null `raw` is the context's legacy default stream.
    ///
    /// # Safety
    /// `raw` must be null or a live stream of `ctx`'s primary context (the one the CUDA runtime
    /// uses for the device), and must stay live until the returned `Stream` is dropped and
    /// every use of memory recorded on it through this crate has completed (the crate may
    /// record events on it and wait for them).
    pub unsafe fn from_raw_borrowed(ctx: &'ctx Context, raw: CUstream) -> Stream<'ctx> {
        Stream {
            ctx,
            raw,
            id: crate::uses::next_stream_id(),
            owned: false,
        }
    }

    /// The context.
    pub fn context(&self) -> &'ctx Context {
        self.ctx
    }

    /// The raw `CUstream`. Do not destroy it: the `Stream` owns it (or, for
    /// [`from_raw_borrowed`](Self::from_raw_borrowed), another library does).
    pub fn raw(&self) -> CUstream {
        self.raw
    }

    /// A process-unique id (never reused, unlike raw handles).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Waits until all work queued on this stream is done.
    pub fn synchronize(&self) -> Result<()> {
        let _bound = self.ctx.bind()?;
        // SAFETY: `self.raw` is live while `self` is.
        Ok(unsafe { result::stream_synchronize(self.raw) }?)
    }

    /// Makes later work on this stream wait for `event` (which may be of another context or,
    /// for an IPC event, another process).
    pub fn wait_event(&self, event: &Event<'_>) -> Result<()> {
        let _bound = self.ctx.bind()?;
        // SAFETY: both handles are live while their owners are borrowed.
        Ok(unsafe { result::stream_wait_event(self.raw, event.raw()) }?)
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _bound = match self.ctx.bind() {
            Ok(b) => b,
            Err(e) => {
                drop_log::record("Stream (binding its context)", e);
                return;
            }
        };
        // SAFETY: we own the stream; queued work completes on its own after destruction.
        drop_log::check("Stream (cuStreamDestroy)", unsafe {
            result::stream_destroy(self.raw)
        });
    }
}
