//! Channels from Python: a `Publisher` lends slots as tensors and publishes them on a stream;
//! `Subscriber`s receive them as tensors with a GPU-side wait queued on their stream, and
//! release them when the sample is dropped or its `with` block ends.
//!
//! The crate's `Loan` borrows its `Publisher` mutably and a `Sample` borrows its `Subscriber`
//! and the stream it was received on; Python objects cannot carry borrows, so each borrowed
//! value lives here next to what it borrows, on the heap at a fixed address, and is always
//! dropped first (see the `SAFETY` comments).
//!
//! Locks: a publisher's state and a subscriber's gate are never waited for with the
//! interpreter's lock held, and no Python object is made while they are held (errors are
//! converted after), so they cannot deadlock with the GIL. A subscriber's blocking receive
//! waits in short slices, leaving the gate to other threads (a dropped sample, `stats`) in
//! between; a sample dropped while the gate is busy is released by the gate's next holder.

use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{
    AllowedUsers, DescriptorError, ExportOptions, ImportOptions, TensorLayout, TypeTag,
};
use cuda_ipc::pubsub::{
    ChannelOptions, Loan as RustLoan, Policy, Publisher as RustPublisher, Sample as RustSample,
    Start, SubscribeOptions, Subscriber as RustSubscriber,
};
use cuda_ipc::{Context, DeviceMemory, Error, Stream};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::array::{context, layout_from, log_drop, without_gil, Keeper, SharedArray};
use crate::errors::{invalid, IntoPy};
use crate::share::{seconds, transport};

/// The type tag of a channel's frames: the data type and shape, so that a subscriber that
/// expects other frames is refused at `subscribe`.
fn frame_tag(layout: &TensorLayout) -> TypeTag {
    TypeTag::named(&format!("cuda-ipc/frame/v1 {layout}"))
}

/// A stream of `ctx` that another library owns, given as a raw handle (PyTorch's
/// `torch.cuda.current_stream().cuda_stream`, CuPy's `Stream.ptr`; 0: the legacy default).
fn foreign_stream(ctx: &'static Context, raw: usize) -> Stream<'static> {
    // SAFETY: the Python layer passes the handle of a live stream of the device's primary
    // context (the one PyTorch and CuPy use); for a receive, the sample keeps the stream's
    // Python object (its owner) until the sample is released; null is the legacy default.
    unsafe { Stream::from_raw_borrowed(ctx, raw as cuda_driver_sys::CUstream) }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn policy(name: &str) -> PyResult<Policy> {
    match name {
        "block" => Ok(Policy::Block),
        "drop-oldest" | "drop_oldest" => Ok(Policy::DropOldest),
        other => Err(invalid(format!(
            "unknown policy {other:?}: use \"block\" or \"drop-oldest\""
        ))),
    }
}

fn closed(path: &std::path::Path, what: &str) -> Error {
    Error::ChannelClosed {
        channel: path.to_path_buf(),
        reason: format!("this {what} was closed"),
    }
}

fn on_loan(seq: u64) -> Error {
    Error::InvalidArgument(format!(
        "frame {seq} is on loan: publish it (or abandon it) first"
    ))
}

// ---------------------------------------------------------------------------------------------
// Publisher

/// The publisher and its one outstanding loan, which borrows it.
struct PubState {
    /// Owned (from `Box::leak`); freed in `Drop` after the loan.
    publisher: NonNull<RustPublisher<'static, u8>>,
    loan: Option<RustLoan<'static, 'static, u8>>,
}

// SAFETY: the publisher and its loan are only reached under the `Mutex` around this state; the
// crate's `Publisher` may move between threads (it owns its sockets and GPU handles, which are
// not tied to a thread).
unsafe impl Send for PubState {}

impl PubState {
    /// The publisher, while no loan borrows it.
    fn publisher(&self) -> cuda_ipc::Result<&RustPublisher<'static, u8>> {
        if let Some(l) = &self.loan {
            return Err(on_loan(l.seq()));
        }
        // SAFETY: the pointer is live until `Drop`, and no loan holds the mutable borrow.
        Ok(unsafe { self.publisher.as_ref() })
    }
}

impl Drop for PubState {
    fn drop(&mut self) {
        // The loan (no Drop of its own: its slot stays for the next loan) ends here.
        self.loan = None;
        // SAFETY: made by `Box::leak` in `Publisher::new`; the loan that borrowed it is gone;
        // freed once, here.
        drop(unsafe { Box::from_raw(self.publisher.as_ptr()) });
    }
}

/// What a publisher's Python objects share: its `Publisher` object, its loans, and the
/// arrays of loaned slots (whose memory is the pool). The channel closes when the last of them
/// is gone, after `close()`: never under a tensor that still views a slot.
struct PubCore {
    state: Mutex<Option<PubState>>,
    closed: AtomicBool,
    ctx: &'static Context,
    layout: TensorLayout,
    path: PathBuf,
}

impl PubCore {
    /// Runs `f` on the live state. Blocking calls inside hold the state's lock, never the GIL
    /// (callers run this inside `detach`).
    fn with<R>(&self, f: impl FnOnce(&mut PubState) -> cuda_ipc::Result<R>) -> cuda_ipc::Result<R> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed(&self.path, "publisher"));
        }
        match lock(&self.state).as_mut() {
            Some(s) => f(s),
            None => Err(closed(&self.path, "publisher")),
        }
    }
}

impl Drop for PubCore {
    fn drop(&mut self) {
        let (ctx, state) = (self.ctx, lock(&self.state).take());
        if let Some(state) = state {
            let synced = without_gil(move || {
                // PyTorch's or CuPy's work on loaned slots is invisible to the crate.
                let synced = ctx.synchronize();
                drop(state);
                synced
            });
            if let Err(e) = synced {
                log_drop("waiting for the GPU's work before closing a channel", &e);
            }
        }
    }
}

/// The sending end of a channel of GPU frames (tensors of one shape and data type).
#[pyclass(module = "cuda_ipc", frozen)]
pub struct Publisher {
    core: Mutex<Option<Arc<PubCore>>>,
    layout: TensorLayout,
    path: PathBuf,
}

impl Publisher {
    fn core(&self) -> PyResult<Arc<PubCore>> {
        let core = lock(&self.core).clone();
        core.ok_or_else(|| crate::errors::to_py(closed(&self.path, "publisher")))
    }
}

#[pymethods]
impl Publisher {
    /// Creates the channel at `path` for frames of `shape` and `dtype` on `device`.
    #[new]
    #[pyo3(signature = (path, shape, dtype="uint8", *, device=0, slots=8, max_subscribers=16, max_held=2, policy="block", transport="auto", allowed_uids=None, allowed_group=None, group=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        shape: Vec<u64>,
        dtype: &str,
        device: usize,
        slots: usize,
        max_subscribers: usize,
        max_held: usize,
        policy: &str,
        transport: &str,
        allowed_uids: Option<Vec<u32>>,
        allowed_group: Option<u32>,
        group: Option<u32>,
    ) -> PyResult<Publisher> {
        let layout = layout_from(shape, dtype, None)?;
        let frame_len = layout.extent_bytes() as usize;
        let allowed = match (allowed_uids, allowed_group) {
            (None, None) => AllowedUsers::SameUser,
            (Some(u), None) => AllowedUsers::Uids(u),
            (None, Some(g)) => AllowedUsers::Group(g),
            _ => {
                return Err(invalid(
                    "give at most one of allowed_uids and allowed_group",
                ))
            }
        };
        let opts = ChannelOptions {
            slots,
            max_subscribers,
            max_held,
            policy: self::policy(policy)?,
            transport: self::transport(transport)?,
            export: ExportOptions {
                allowed,
                group,
                ..ExportOptions::default()
            },
            type_tag: Some(frame_tag(&layout)),
        };
        let ctx = context(device)?;
        let p = path.clone();
        let publisher = py
            .detach(move || RustPublisher::<u8>::create(ctx, &p, frame_len, opts))
            .py_err()?;
        let core = PubCore {
            state: Mutex::new(Some(PubState {
                publisher: NonNull::from(Box::leak(Box::new(publisher))),
                loan: None,
            })),
            closed: AtomicBool::new(false),
            ctx,
            layout,
            path: path.clone(),
        };
        Ok(Publisher {
            core: Mutex::new(Some(Arc::new(core))),
            layout,
            path,
        })
    }

    /// Lends the next frame's slot, waiting up to `timeout` seconds for one to be free. Fill
    /// `loan.array` (e.g. `loan.torch().copy_(x)`), then `loan.publish(stream)`.
    #[pyo3(signature = (timeout=30.0))]
    fn loan(&self, py: Python<'_>, timeout: f64) -> PyResult<Loan> {
        let t = seconds(timeout)?;
        let core = self.core()?;
        let (seq, ptr) = py
            .detach(|| {
                core.with(|s| {
                    if let Some(l) = &s.loan {
                        return Err(on_loan(l.seq()));
                    }
                    // SAFETY: the publisher lives until `PubState` drops, which drops the loan
                    // first; while the loan lives, every other access goes through
                    // `publisher()`, which refuses (so the loan's borrow is the only one).
                    let p: &'static mut RustPublisher<'static, u8> =
                        unsafe { &mut *s.publisher.as_ptr() };
                    let loan = p.loan(t)?;
                    let out = (loan.seq(), loan.view().device_ptr());
                    s.loan = Some(loan);
                    Ok(out)
                })
            })
            .py_err()?;
        let live = Arc::new(AtomicBool::new(true));
        let array = SharedArray {
            ptr,
            layout: core.layout,
            device: core.ctx.device().ordinal(),
            readonly: false,
            owner: false,
            keeper: Keeper::Channel(core.clone()),
            ready_on: None,
            live: Some(live.clone()),
        };
        let array = match Py::new(py, array) {
            Ok(a) => a,
            Err(e) => {
                // No `Loan` will end this loan: give the slot back now.
                let _ = py.detach(|| {
                    core.with(|s| {
                        s.loan = None;
                        Ok(())
                    })
                });
                return Err(e);
            }
        };
        Ok(Loan {
            core: Mutex::new(Some(core)),
            seq,
            array: Mutex::new(Some(array)),
            live,
        })
    }

    /// Subscribers now joined.
    #[getter]
    fn subscribers(&self, py: Python<'_>) -> PyResult<usize> {
        let core = self.core()?;
        py.detach(|| core.with(|s| Ok(s.publisher()?.subscribers())))
            .py_err()
    }

    /// Waits until `n` subscribers have joined (raises `Timeout`).
    #[pyo3(signature = (n, timeout=30.0))]
    fn wait_subscribers(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<usize> {
        let t = seconds(timeout)?;
        let core = self.core()?;
        py.detach(|| core.with(|s| s.publisher()?.wait_subscribers(n, t)))
            .py_err()
    }

    /// `published`, `subscribers`, `joined`, `left`, `refused`, and how many subscribers
    /// share this GPU `same_gpu_without_mps` (time-sliced: ~150 µs per hand-over) or
    /// `same_gpu_mps`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let core = self.core()?;
        let s = py
            .detach(|| core.with(|s| Ok(s.publisher()?.stats())))
            .py_err()?;
        let d = PyDict::new(py);
        d.set_item("published", s.published)?;
        d.set_item("subscribers", s.subscribers)?;
        d.set_item("joined", s.joined)?;
        d.set_item("left", s.left)?;
        d.set_item("refused", s.refused)?;
        d.set_item("same_gpu_without_mps", s.same_gpu_without_mps)?;
        d.set_item("same_gpu_mps", s.same_gpu_mps)?;
        Ok(d)
    }

    /// The frames' shape.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.layout.shape())
    }

    /// The frames' data type.
    #[getter]
    fn dtype(&self) -> String {
        self.layout.dtype().to_string()
    }

    /// The channel's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Closes the channel now: no more loans; subscribers get `PublisherGone` (with `closed`
    /// true) once they have received every published frame; a loan not yet published is
    /// abandoned. The slots' memory stays mapped while a tensor made from a loaned slot still
    /// exists (writing to it then changes nothing anyone reads).
    fn close(&self, py: Python<'_>) {
        let core = lock(&self.core).take();
        let Some(core) = core else {
            return;
        };
        core.closed.store(true, Ordering::Release);
        py.detach(|| {
            if let Some(s) = lock(&core.state).as_mut() {
                // An unpublished loan is abandoned (its views stay valid: the pool does).
                s.loan = None;
                // SAFETY: no loan borrows the publisher any more (just above), and the state's
                // lock is held, so this is the only reference.
                unsafe { &mut *s.publisher.as_ptr() }.close();
            }
        });
        // The pool is freed here if nothing else holds the core, else when the last view of a
        // loaned slot is gone (with the GIL held, its GPU wait without: see `PubCore::drop`).
        drop(core);
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.core).is_none()
    }

    fn __repr__(&self) -> String {
        format!("Publisher({}, {})", self.path.display(), self.layout)
    }
}

/// A slot lent by `Publisher.loan`: fill `array`, then `publish`.
#[pyclass(module = "cuda_ipc", frozen)]
pub struct Loan {
    /// None once published or abandoned.
    core: Mutex<Option<Arc<PubCore>>>,
    seq: u64,
    array: Mutex<Option<Py<SharedArray>>>,
    /// Shared with the slot's arrays: false once the loan ended (they stop exporting).
    live: Arc<AtomicBool>,
}

impl Loan {
    /// Ends the loan: `publish` on `stream`, or gives the slot back (None).
    fn finish(&self, py: Python<'_>, stream: Option<usize>) -> PyResult<u64> {
        let core = lock(&self.core).take();
        let Some(core) = core else {
            return Err(invalid(format!(
                "frame {} was already published or abandoned",
                self.seq
            )));
        };
        let seq = self.seq;
        let out = py.detach(|| {
            core.with(|s| {
                if s.loan.as_ref().is_none_or(|l| l.seq() != seq) {
                    return Err(Error::InvalidArgument(format!(
                        "frame {seq} is no longer on loan"
                    )));
                }
                let loan = s.loan.take().expect("checked just above");
                match stream {
                    Some(raw) => loan.publish(&foreign_stream(core.ctx, raw)),
                    None => Ok(seq), // dropped: the slot stays for the next loan
                }
            })
        });
        self.live.store(false, Ordering::Release);
        let array = lock(&self.array).take();
        drop(array);
        drop(core); // with the GIL held: see `PubCore::drop`
        out.py_err()
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        // An unpublished loan collected without publish/abandon gives its slot back. The lock
        // is not held for long while a loan is out (every blocking call refuses then).
        self.live.store(false, Ordering::Release);
        let core = lock(&self.core).take();
        if let Some(core) = core {
            let seq = self.seq;
            let _ = core.with(|s| {
                if s.loan.as_ref().is_some_and(|l| l.seq() == seq) {
                    s.loan = None;
                }
                Ok(())
            });
            drop(core);
        }
    }
}

#[pymethods]
impl Loan {
    /// The frame's number (from 1).
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }

    /// The slot, writable, as a `SharedArray` (until the loan is published or abandoned).
    #[getter]
    fn array(&self, py: Python<'_>) -> PyResult<Py<SharedArray>> {
        let array = lock(&self.array).as_ref().map(|a| a.clone_ref(py));
        array.ok_or_else(|| {
            invalid(format!(
                "frame {} was published or abandoned: loan the next slot",
                self.seq
            ))
        })
    }

    /// The slot as a PyTorch tensor (no copy). Do not write to it after `publish`.
    fn torch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let array = self.array(py)?;
        py.import("torch")?.call_method1("from_dlpack", (array,))
    }

    /// Publishes the frame after the work queued on `stream` (a raw `CUstream` handle: the
    /// Python wrapper passes the current PyTorch/CuPy stream's), alive until the call returns.
    fn publish(&self, py: Python<'_>, stream: usize) -> PyResult<u64> {
        self.finish(py, Some(stream))
    }

    /// Gives the slot back unpublished (kept for the next loan).
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        self.finish(py, None).map(drop)
    }

    fn __repr__(&self) -> String {
        format!("Loan(frame {})", self.seq)
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriber

/// A received sample and the stream it borrows.
struct SampleInner {
    /// Borrows `SubCore::sub` and `stream`: dropped before them.
    sample: Option<RustSample<'static, 'static, u8>>,
    /// Owned (from `Box::leak`).
    stream: Option<NonNull<Stream<'static>>>,
    /// The stream's Python object (a CuPy stream destroys its CUDA stream when collected).
    keep: Option<Py<PyAny>>,
}

// SAFETY: reached only under a mutex; the crate's sample (whose subscriber is only used under
// its gate, see `SubCore`) and the stream handle may be used and dropped on any thread; a `Py`
// may be dropped without the GIL (its release is deferred then).
unsafe impl Send for SampleInner {}

impl SampleInner {
    /// Releases the sample (on `release_on`, else as its Drop does: on the stream it was
    /// received on) and frees the stream wrapper. The caller holds the subscriber's gate.
    fn finish(&mut self, release_on: Option<usize>, ctx: &'static Context) -> cuda_ipc::Result<()> {
        let out = match (self.sample.take(), release_on) {
            (Some(s), Some(raw)) => s.release(&foreign_stream(ctx, raw)),
            (s, _) => {
                drop(s);
                Ok(())
            }
        };
        if let Some(st) = self.stream.take() {
            // SAFETY: made by `Box::leak` in `receive`; the sample that borrowed it is gone.
            drop(unsafe { Box::from_raw(st.as_ptr()) });
        }
        self.keep = None;
        out
    }
}

/// The subscriber, shared by its samples. The crate's `Subscriber` is `Send` but not `Sync`:
/// every use of it (receive, stats, a sample's release) holds `gate`.
struct SubCore {
    /// Taken only by `Drop` (to drop it without the GIL).
    sub: Option<RustSubscriber<'static, u8>>,
    ctx: &'static Context,
    gate: Mutex<()>,
    /// Threads waiting for the gate: a receive between two slices lets them in first (the
    /// mutex alone is not fair).
    waiting: AtomicUsize,
    /// Samples dropped while the gate was busy: released by its next holder, or when it is
    /// let go.
    deferred: Mutex<Vec<SampleInner>>,
}

// SAFETY: `sub` is only reached with `gate` held (`Gate` below, `SubCore::drop` with `&mut`),
// so no two threads use it at once; it may move between threads (it is `Send`).
unsafe impl Sync for SubCore {}

/// The gate held: the subscriber may be used; deferred releases are done on the way in and
/// on the way out.
struct Gate<'a> {
    core: &'a SubCore,
    held: Option<MutexGuard<'a, ()>>,
}

impl SubCore {
    fn gate(&self) -> Gate<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let held = lock(&self.gate);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Gate::enter(self, held)
    }

    fn try_gate(&self) -> Option<Gate<'_>> {
        let held = match self.gate.try_lock() {
            Ok(h) => h,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Gate::enter(self, held))
    }

    /// Lets threads waiting for the gate have it before this one takes it again.
    fn yield_to_waiters(&self) {
        let until = Instant::now() + Duration::from_millis(5);
        while self.waiting.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::yield_now();
        }
    }
}

impl<'a> Gate<'a> {
    fn enter(core: &'a SubCore, held: MutexGuard<'a, ()>) -> Gate<'a> {
        let g = Gate {
            core,
            held: Some(held),
        };
        g.release_deferred();
        g
    }

    fn sub(&self) -> &RustSubscriber<'static, u8> {
        self.core
            .sub
            .as_ref()
            .expect("taken only by SubCore's Drop")
    }

    fn release_deferred(&self) {
        let pending = std::mem::take(&mut *lock(&self.core.deferred));
        for mut s in pending {
            if let Err(e) = s.finish(None, self.core.ctx) {
                log_drop("releasing a channel sample", &e);
            }
        }
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        self.held.take();
        // A sample deferred while this gate was held, after its holder last looked.
        let pending = !lock(&self.core.deferred).is_empty();
        if pending {
            drop(self.core.try_gate());
        }
    }
}

impl Drop for SubCore {
    fn drop(&mut self) {
        // Every sample borrowing `sub` is either gone (it holds this Arc) or deferred here.
        let pending = std::mem::take(self.deferred.get_mut().unwrap_or_else(|p| p.into_inner()));
        let (ctx, sub) = (self.ctx, self.sub.take());
        // The crate's Subscriber waits for its streams' work when dropped: not with the GIL.
        without_gil(move || {
            for mut s in pending {
                if let Err(e) = s.finish(None, ctx) {
                    log_drop("releasing a channel sample", &e);
                }
            }
            drop(sub);
        });
    }
}

/// A received sample, and its frame's address (read under the gate), carried out of
/// `detach` back to the calling thread.
struct Received(RustSample<'static, 'static, u8>, u64);

// SAFETY: the sample borrows a `SubCore`, whose subscriber is only used with its gate held
// (see `SubCore`); moving the sample to another thread does not use it.
unsafe impl Send for Received {}

/// How long one receive holds the gate before letting other threads have it.
const RECEIVE_SLICE: Duration = Duration::from_millis(20);

/// The receiving end of a channel.
#[pyclass(module = "cuda_ipc", frozen)]
pub struct Subscriber {
    core: Mutex<Option<Arc<SubCore>>>,
    layout: TensorLayout,
    path: PathBuf,
}

impl Subscriber {
    fn core(&self) -> PyResult<Arc<SubCore>> {
        let core = lock(&self.core).clone();
        core.ok_or_else(|| crate::errors::to_py(closed(&self.path, "subscriber")))
    }

    /// Receives in slices of `RECEIVE_SLICE` until `timeout`, with `recv` under the gate.
    fn receive_sliced(
        &self,
        core: &SubCore,
        timeout: Duration,
        recv: impl Fn(&RustSubscriber<'static, u8>, Duration) -> cuda_ipc::Result<Received>,
    ) -> cuda_ipc::Result<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = {
                let gate = core.gate();
                recv(gate.sub(), left.min(RECEIVE_SLICE))
            };
            match got {
                Err(Error::Timeout { .. }) if Instant::now() < deadline => {
                    core.yield_to_waiters();
                    continue;
                }
                // The crate's own words for what it waited for, with the whole wait.
                Err(Error::Timeout { what, .. }) => {
                    return Err(Error::Timeout {
                        what,
                        waited: timeout,
                    })
                }
                other => return other,
            }
        }
    }

    fn sample(
        &self,
        core: Arc<SubCore>,
        inner: SampleInner,
        ptr: u64,
        ready_on: Option<usize>,
    ) -> PyResult<Sample> {
        let s = inner.sample.as_ref().expect("just received");
        let (seq, missed) = (s.seq(), s.missed());
        let sample = Sample {
            inner: Mutex::new(inner),
            core,
            seq,
            missed,
            ptr,
            layout: self.layout,
            ready_on,
            live: Arc::new(AtomicBool::new(true)),
        };
        let item = self.layout.dtype().itemsize();
        if ptr % item != 0 {
            // A publisher whose slots are not aligned to the elements: a kernel would fault
            // (and poison this process's context) on the first misaligned load.
            return Err(crate::errors::to_py(Error::Protocol {
                peer: self.path.display().to_string(),
                detail: format!(
                    "frame {seq} starts at {ptr:#x}, not aligned to its {item}-byte elements"
                ),
            }));
        }
        Ok(sample)
    }
}

#[pymethods]
impl Subscriber {
    /// Joins the channel at `path`, whose frames must be of `shape` and `dtype`, mapping it
    /// on `device`; waits up to `timeout` seconds for it to appear.
    #[new]
    #[pyo3(signature = (path, shape, dtype="uint8", *, device=0, timeout=30.0, start="latest", trusted_uids=Vec::new(), group=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        shape: Vec<u64>,
        dtype: &str,
        device: usize,
        timeout: f64,
        start: &str,
        trusted_uids: Vec<u32>,
        group: Option<u32>,
    ) -> PyResult<Subscriber> {
        let layout = layout_from(shape, dtype, None)?;
        let start = match start {
            "latest" => Start::Latest,
            "next" => Start::Next,
            other => {
                return Err(invalid(format!(
                    "unknown start {other:?}: use \"latest\" or \"next\""
                )))
            }
        };
        let t = seconds(timeout)?;
        let opts = SubscribeOptions {
            timeout: t,
            start,
            expected_frame_len: Some(layout.extent_bytes() as usize),
            import: ImportOptions {
                timeout: t,
                type_tag: Some(frame_tag(&layout)),
                expected_len: None,
                trusted_exporters: trusted_uids,
                group,
            },
            ..SubscribeOptions::default()
        };
        let ctx = context(device)?;
        let p = path.clone();
        let sub = py
            .detach(move || RustSubscriber::<u8>::subscribe(ctx, &p, opts))
            .map_err(|e| match e {
                // The tag names the frames' data type and shape: say it in those terms.
                Error::Descriptor(DescriptorError::Inconsistent(m)) if m.contains("type tag") => {
                    Error::Descriptor(DescriptorError::LayoutMismatch {
                        expected: format!("frames of {layout}"),
                        found: format!(
                            "frames of another data type or shape (channel {})",
                            path.display()
                        ),
                    })
                }
                other => other,
            })
            .py_err()?;
        Ok(Subscriber {
            core: Mutex::new(Some(Arc::new(SubCore {
                sub: Some(sub),
                ctx,
                gate: Mutex::new(()),
                waiting: AtomicUsize::new(0),
                deferred: Mutex::new(Vec::new()),
            }))),
            layout,
            path,
        })
    }

    /// Receives the next frame, queueing its wait on `stream` (a raw `CUstream` handle whose
    /// owner `keep` is held until the sample is released); raises `Timeout` after `timeout`
    /// seconds and `PublisherGone` when the publisher closed (`closed` true) or died.
    #[pyo3(signature = (stream, timeout=30.0, keep=None))]
    fn receive(
        &self,
        py: Python<'_>,
        stream: usize,
        timeout: f64,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<Sample> {
        let t = seconds(timeout)?;
        let core = self.core()?;
        let boxed = NonNull::from(Box::leak(Box::new(foreign_stream(core.ctx, stream))));
        let at = boxed.as_ptr() as usize;
        let received = py.detach(|| {
            self.receive_sliced(&core, t, |sub, slice| {
                // SAFETY: `core` (an Arc, moved into the Sample below) and the boxed stream (at
                // `at`, from `Box::leak` above) live at fixed addresses until the sample is
                // finished, which drops the crate's sample first.
                let (sub, st): (
                    &'static RustSubscriber<'static, u8>,
                    &'static Stream<'static>,
                ) = unsafe { (&*(sub as *const _), &*(at as *const Stream<'static>)) };
                sub.receive(st, slice).map(|s| {
                    let ptr = s.view().device_ptr();
                    Received(s, ptr)
                })
            })
        });
        let Received(sample, ptr) = match received {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: no sample borrows the stream; made by `Box::leak` above.
                drop(unsafe { Box::from_raw(boxed.as_ptr()) });
                return Err(crate::errors::to_py(e));
            }
        };
        let inner = SampleInner {
            sample: Some(sample),
            stream: Some(boxed),
            keep,
        };
        self.sample(core, inner, ptr, Some(stream))
    }

    /// Receives on the CPU (no stream): waits until the frame is ready on the GPU.
    #[pyo3(signature = (timeout=30.0))]
    fn receive_host(&self, py: Python<'_>, timeout: f64) -> PyResult<Sample> {
        let t = seconds(timeout)?;
        let core = self.core()?;
        let received = py.detach(|| {
            self.receive_sliced(&core, t, |sub, slice| {
                // SAFETY: as in `receive`: `core` outlives the sample (Sample's Drop order).
                let sub: &'static RustSubscriber<'static, u8> = unsafe { &*(sub as *const _) };
                sub.receive_host(slice).map(|s| {
                    let ptr = s.view().device_ptr();
                    Received(s, ptr)
                })
            })
        });
        let Received(sample, ptr) = received.py_err()?;
        let inner = SampleInner {
            sample: Some(sample),
            stream: None,
            keep: None,
        };
        self.sample(core, inner, ptr, None)
    }

    /// `received`, `missed`, `held`, and `sharing`: how this end shares the GPU with the
    /// publisher (`OtherGpu`, `SameGpuMps`, `SameGpuWithoutMps`, `Unknown`).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let core = self.core()?;
        let s = py.detach(|| core.gate().sub().stats());
        let d = PyDict::new(py);
        d.set_item("received", s.received)?;
        d.set_item("missed", s.missed)?;
        d.set_item("held", s.held)?;
        d.set_item("sharing", format!("{:?}", s.sharing))?;
        Ok(d)
    }

    /// The frames' shape.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.layout.shape())
    }

    /// The frames' data type.
    #[getter]
    fn dtype(&self) -> String {
        self.layout.dtype().to_string()
    }

    /// The channel's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Leaves the channel (after every sample still held is released).
    fn close(&self) {
        let core = lock(&self.core).take();
        drop(core); // the lock is not held here: see `SubCore::drop`
    }

    fn __repr__(&self) -> String {
        format!("Subscriber({}, {})", self.path.display(), self.layout)
    }
}

/// A received frame: read it through `array` / `torch()` while the sample is held; it is
/// released when `release` is called, the `with` block ends, or the sample is collected.
#[pyclass(module = "cuda_ipc", frozen)]
pub struct Sample {
    inner: Mutex<SampleInner>,
    core: Arc<SubCore>,
    seq: u64,
    missed: u64,
    ptr: u64,
    layout: TensorLayout,
    ready_on: Option<usize>,
    /// Shared with the frame's arrays: false once released (they stop exporting).
    live: Arc<AtomicBool>,
}

impl Drop for Sample {
    fn drop(&mut self) {
        let inner = std::mem::replace(
            self.inner.get_mut().unwrap_or_else(|p| p.into_inner()),
            SampleInner {
                sample: None,
                stream: None,
                keep: None,
            },
        );
        self.live.store(false, Ordering::Release);
        if inner.sample.is_none() {
            return;
        }
        // Never wait for the gate here (a receive may hold it for a slice): queue the release
        // and do it now if the gate is free, else its holder does on the way out. A release
        // on the CPU path waits for the GPU: not with the GIL.
        let core = &*self.core;
        lock(&core.deferred).push(inner);
        without_gil(|| drop(core.try_gate()));
    }
}

#[pymethods]
impl Sample {
    /// The frame's number (from 1).
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }

    /// Frames skipped just before this one (drop-oldest only).
    #[getter]
    fn missed(&self) -> u64 {
        self.missed
    }

    /// The frame as a `SharedArray` (marked read-only). A tensor made from it must not be used
    /// after the sample is released: its slot is then reused (clone it to keep it).
    #[getter]
    fn array(slf: &Bound<'_, Self>) -> PyResult<Py<SharedArray>> {
        let me = slf.get();
        let held = lock(&me.inner).sample.is_some();
        if !held {
            return Err(invalid(format!("frame {} was released", me.seq)));
        }
        Py::new(
            slf.py(),
            SharedArray {
                ptr: me.ptr,
                layout: me.layout,
                device: me.core.ctx.device().ordinal(),
                readonly: true,
                owner: false,
                keeper: Keeper::Object(slf.clone().into_any().unbind()),
                ready_on: me.ready_on,
                live: Some(me.live.clone()),
            },
        )
    }

    /// Whether the sample is still held.
    #[getter]
    fn held(&self) -> bool {
        lock(&self.inner).sample.is_some()
    }

    /// Releases the frame after the work queued on `stream` (a raw handle; None: as a drop
    /// does, after the work queued on the stream it was received on).
    #[pyo3(signature = (stream=None))]
    fn release(&self, py: Python<'_>, stream: Option<usize>) -> PyResult<()> {
        let ctx = self.core.ctx;
        let mut inner = std::mem::replace(
            &mut *lock(&self.inner),
            SampleInner {
                sample: None,
                stream: None,
                keep: None,
            },
        );
        self.live.store(false, Ordering::Release);
        if inner.sample.is_none() {
            return Ok(());
        }
        py.detach(|| {
            let _gate = self.core.gate();
            inner.finish(stream, ctx)
        })
        .py_err()
    }

    fn __repr__(&self) -> String {
        format!("Sample(frame {}, {})", self.seq, self.layout)
    }
}
