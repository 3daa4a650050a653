//! Events: points in a stream to wait for or to time.
//!
//! ```no_run
//! use cuda_ipc::{Context, Device, DeviceBuffer, Event, Stream};
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let stream = Stream::new(&ctx)?;
//! let (start, end) = (Event::new(&ctx)?, Event::new(&ctx)?);
//! let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 20)?;
//! start.record(&stream)?;
//! ctx.kernels()?.fill_pattern(&stream, &mut buf, 42)?;
//! end.record(&stream)?;
//! println!("fill took {:.3} ms", end.elapsed_ms_since(&start)?);
//! # Ok::<(), cuda_ipc::Error>(())
//! ```

use crate::context::Context;
use crate::drop_log;
use crate::error::Result;
use crate::result::{self, CUevent};
use crate::stream::Stream;

/// A CUDA event of a context.
pub struct Event<'ctx> {
    ctx: &'ctx Context,
    raw: CUevent,
}

// SAFETY: a CUevent may be used from any thread; every use binds the context first.
unsafe impl Send for Event<'_> {}
// SAFETY: the driver serialises concurrent use of one event.
unsafe impl Sync for Event<'_> {}

impl std::fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Event({:?}, {:p})", self.ctx.device(), self.raw)
    }
}

impl<'ctx> Event<'ctx> {
    /// A timing event.
    pub fn new(ctx: &'ctx Context) -> Result<Self> {
        let _bound = ctx.bind()?;
        let raw = result::event_create(true, false)?;
        Ok(Event { ctx, raw })
    }

    /// An event without timing (cheaper to record and wait for).
    pub fn new_untimed(ctx: &'ctx Context) -> Result<Self> {
        let _bound = ctx.bind()?;
        let raw = result::event_create(false, false)?;
        Ok(Event { ctx, raw })
    }

    /// Wraps a raw event this crate created or opened in `ctx`; it is destroyed on drop.
    #[allow(dead_code)] // used by the IPC event module
    pub(crate) fn from_raw(ctx: &'ctx Context, raw: CUevent) -> Self {
        Event { ctx, raw }
    }

    /// The context.
    pub fn context(&self) -> &'ctx Context {
        self.ctx
    }

    /// The raw `CUevent`. Do not destroy it: the `Event` owns it.
    pub fn raw(&self) -> CUevent {
        self.raw
    }

    /// Records the event at the current end of `stream`, which must be a stream of the event's
    /// own context (the driver's contract for `cuEventRecord`; a stream of another context is
    /// refused here rather than left to undefined behaviour).
    pub fn record(&self, stream: &Stream<'_>) -> Result<()> {
        if stream.context().raw() != self.ctx.raw() {
            return Err(crate::error::Error::InvalidArgument(format!(
                "an event of {:?} cannot record a stream of {:?}: create the event in the \
                 stream's context (a stream may wait for an event of another context with \
                 Stream::wait_event)",
                self.ctx.device(),
                stream.context().device()
            )));
        }
        let _bound = self.ctx.bind()?;
        // SAFETY: both handles are live while borrowed.
        Ok(unsafe { result::event_record(self.raw, stream.raw()) }?)
    }

    /// Waits until the work before the last record is done.
    pub fn synchronize(&self) -> Result<()> {
        let _bound = self.ctx.bind()?;
        // SAFETY: live while borrowed.
        Ok(unsafe { result::event_synchronize(self.raw) }?)
    }

    /// Whether the work before the last record is done, without waiting.
    pub fn is_complete(&self) -> Result<bool> {
        let _bound = self.ctx.bind()?;
        // SAFETY: live while borrowed.
        Ok(unsafe { result::event_query(self.raw) }?)
    }

    /// Milliseconds from `start` to this event; waits for this event first. Both must be
    /// timing events ([`Event::new`]) of the same context.
    pub fn elapsed_ms_since(&self, start: &Event<'_>) -> Result<f32> {
        self.synchronize()?;
        // SAFETY: both live while borrowed.
        Ok(unsafe { result::event_elapsed_ms(start.raw, self.raw) }?)
    }
}

impl Drop for Event<'_> {
    fn drop(&mut self) {
        let _bound = match self.ctx.bind() {
            Ok(b) => b,
            Err(e) => {
                drop_log::record("Event (binding its context)", e);
                return;
            }
        };
        // SAFETY: we own the event.
        drop_log::check("Event (cuEventDestroy)", unsafe {
            result::event_destroy(self.raw)
        });
    }
}
