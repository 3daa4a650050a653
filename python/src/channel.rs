//! Channels from Python: a `Publisher` lends slots as tensors and publishes them on a stream;
//! `Subscriber`s receive them as read-only tensors with a GPU-side wait queued on their
//! stream, and release them when the sample is dropped or its `with` block ends.
//!
//! The crate's `Loan` borrows its `Publisher` mutably and a `Sample` borrows its `Subscriber`
//! and the stream it was received on; Python objects cannot carry borrows, so each borrowed
//! value lives here next to what it borrows, on the heap at a fixed address, and is always
//! dropped first (see the `SAFETY` comments).

use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use cuda_ipc::ipc::{
    AllowedUsers, DescriptorError, ExportOptions, ImportOptions, TensorLayout, TypeTag,
};
use cuda_ipc::pubsub::{
    ChannelOptions, Loan as RustLoan, Policy, Publisher as RustPublisher, Sample as RustSample,
    Start, SubscribeOptions, Subscriber as RustSubscriber,
};
use cuda_ipc::{Context, DeviceMemory, Stream};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::array::{context, layout_from, Keeper, SharedArray};
use crate::errors::{invalid, to_py, IntoPy};
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
    // context (the one PyTorch and CuPy use) that the caller keeps alive, as documented on
    // every method taking `stream`; null is the legacy default stream.
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

/// The publisher and its one outstanding loan, which borrows it.
struct PubState {
    /// Owned (from `Box::into_raw`); freed in `Drop` after the loan.
    publisher: NonNull<RustPublisher<'static, u8>>,
    loan: Option<RustLoan<'static, 'static, u8>>,
}

// SAFETY: the publisher and its loan are only reached under the `Mutex` around this state; the
// crate's `Publisher` may move between threads (it owns its sockets and GPU handles, which are
// not tied to a thread).
unsafe impl Send for PubState {}

impl PubState {
    /// The publisher, while no loan borrows it.
    fn publisher(&self) -> PyResult<&RustPublisher<'static, u8>> {
        if let Some(l) = &self.loan {
            return Err(invalid(format!(
                "frame {} is on loan: publish it (or drop the loan) first",
                l.seq()
            )));
        }
        // SAFETY: the pointer is live until `Drop`, and no loan holds the mutable borrow.
        Ok(unsafe { self.publisher.as_ref() })
    }
}

impl Drop for PubState {
    fn drop(&mut self) {
        // The loan (no Drop of its own: its slot stays for the next loan) ends here.
        self.loan = None;
        // SAFETY: made by `Box::into_raw` in `Publisher::new`; the loan that borrowed it is
        // gone; freed once, here.
        drop(unsafe { Box::from_raw(self.publisher.as_ptr()) });
    }
}

/// The sending end of a channel of GPU frames (tensors of one shape and data type).
#[pyclass(module = "cuda_ipc", frozen)]
pub struct Publisher {
    state: Mutex<Option<PubState>>,
    ctx: &'static Context,
    layout: TensorLayout,
    path: PathBuf,
}

impl Publisher {
    fn with<R>(&self, f: impl FnOnce(&mut PubState) -> PyResult<R>) -> PyResult<R> {
        let mut g = lock(&self.state);
        match g.as_mut() {
            Some(s) => f(s),
            None => Err(to_py(cuda_ipc::Error::ChannelClosed {
                channel: self.path.clone(),
                reason: "this publisher was closed".into(),
            })),
        }
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
        Ok(Publisher {
            state: Mutex::new(Some(PubState {
                publisher: NonNull::from(Box::leak(Box::new(publisher))),
                loan: None,
            })),
            ctx,
            layout,
            path,
        })
    }

    /// Lends the next frame's slot, waiting up to `timeout` seconds for one to be free. Fill
    /// `loan.array` (e.g. `loan.torch().copy_(x)`), then `loan.publish(stream)`; as a context
    /// manager the loan publishes on the current stream when the block ends without an error.
    #[pyo3(signature = (timeout=30.0))]
    fn loan(slf: &Bound<'_, Self>, timeout: f64) -> PyResult<Loan> {
        let t = seconds(timeout)?;
        let me = slf.get();
        let (seq, ptr) = slf.py().detach(|| {
            me.with(|s| {
                if let Some(l) = &s.loan {
                    return Err(invalid(format!(
                        "frame {} is already on loan: publish it (or drop it) first",
                        l.seq()
                    )));
                }
                // SAFETY: the publisher lives until `PubState` drops, which drops the loan
                // first; while the loan lives, every other access goes through `publisher()`,
                // which refuses (so the loan's mutable borrow is the only one).
                let p: &'static mut RustPublisher<'static, u8> =
                    unsafe { &mut *s.publisher.as_ptr() };
                let loan = p.loan(t).py_err()?;
                let out = (loan.seq(), loan.view().device_ptr());
                s.loan = Some(loan);
                Ok(out)
            })
        })?;
        let array = SharedArray {
            ptr,
            layout: me.layout,
            device: me.ctx.device().ordinal(),
            readonly: false,
            owner: false,
            keeper: Keeper::Object(slf.clone().into_any().unbind()),
        };
        Ok(Loan {
            publisher: slf.clone().unbind(),
            seq,
            array: Py::new(slf.py(), array)?,
        })
    }

    /// Subscribers now joined.
    #[getter]
    fn subscribers(&self) -> PyResult<usize> {
        self.with(|s| Ok(s.publisher()?.subscribers()))
    }

    /// Waits until `n` subscribers have joined (raises `Timeout`).
    #[pyo3(signature = (n, timeout=30.0))]
    fn wait_subscribers(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<usize> {
        let t = seconds(timeout)?;
        py.detach(|| self.with(|s| s.publisher()?.wait_subscribers(n, t).py_err()))
    }

    /// `published`, `subscribers`, `joined`, `left`, `refused`, and how many subscribers
    /// share this GPU `same_gpu_without_mps` (time-sliced: ~150 µs per hand-over) or
    /// `same_gpu_mps`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.with(|s| Ok(s.publisher()?.stats()))?;
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

    /// Closes the channel: subscribers get `PublisherGone` (with `closed` true) once they
    /// have received every published frame.
    fn close(&self, py: Python<'_>) {
        let state = lock(&self.state).take();
        py.detach(move || drop(state));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!("Publisher({}, {})", self.path.display(), self.layout)
    }
}

/// A slot lent by `Publisher.loan`: fill `array`, then `publish`.
#[pyclass(module = "cuda_ipc", frozen)]
pub struct Loan {
    publisher: Py<Publisher>,
    seq: u64,
    array: Py<SharedArray>,
}

#[pymethods]
impl Loan {
    /// The frame's number (from 1).
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }

    /// The slot, writable, as a `SharedArray`.
    #[getter]
    fn array(&self, py: Python<'_>) -> Py<SharedArray> {
        self.array.clone_ref(py)
    }

    /// The slot as a PyTorch tensor (no copy).
    fn torch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("torch")?
            .call_method1("from_dlpack", (self.array.bind(py),))
    }

    /// Publishes the frame after the work queued on `stream` (a raw `CUstream` handle: the
    /// Python wrapper passes the current PyTorch/CuPy stream's). The stream must stay alive
    /// until the call returns.
    fn publish(&self, py: Python<'_>, stream: usize) -> PyResult<u64> {
        let p = self.publisher.get();
        py.detach(|| {
            p.with(|s| {
                match &s.loan {
                    Some(l) if l.seq() == self.seq => {}
                    _ => {
                        return Err(invalid(format!(
                            "frame {} was already published or dropped",
                            self.seq
                        )))
                    }
                }
                let loan = s.loan.take().expect("checked just above");
                let st = foreign_stream(p.ctx, stream);
                loan.publish(&st).py_err()
            })
        })
    }

    /// Gives the slot back unpublished (kept for the next loan).
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        let p = self.publisher.get();
        py.detach(|| {
            p.with(|s| {
                if s.loan.as_ref().is_some_and(|l| l.seq() == self.seq) {
                    s.loan = None;
                }
                Ok(())
            })
        })
    }

    fn __repr__(&self) -> String {
        format!("Loan(frame {})", self.seq)
    }
}

/// The subscriber, shared by its samples. The crate's `Subscriber` is `Send` but not `Sync`:
/// every use of it (receive, stats, a sample's release) holds `gate`.
struct SubCore {
    sub: RustSubscriber<'static, u8>,
    ctx: &'static Context,
    gate: Mutex<()>,
}

// SAFETY: `sub` is only reached with `gate` held (the functions below and `SampleInner::finish`
// callers), so no two threads use it at once; it may move between threads (it is `Send`).
unsafe impl Sync for SubCore {}

impl SubCore {
    fn gate(&self) -> MutexGuard<'_, ()> {
        lock(&self.gate)
    }
}

/// The receiving end of a channel.
#[pyclass(module = "cuda_ipc", frozen)]
pub struct Subscriber {
    core: Mutex<Option<Arc<SubCore>>>,
    layout: TensorLayout,
    path: PathBuf,
}

impl Subscriber {
    fn core(&self) -> PyResult<Arc<SubCore>> {
        lock(&self.core).clone().ok_or_else(|| {
            to_py(cuda_ipc::Error::ChannelClosed {
                channel: self.path.clone(),
                reason: "this subscriber was closed".into(),
            })
        })
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
                cuda_ipc::Error::Descriptor(DescriptorError::Inconsistent(m))
                    if m.contains("type tag") =>
                {
                    cuda_ipc::Error::Descriptor(DescriptorError::LayoutMismatch {
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
                sub,
                ctx,
                gate: Mutex::new(()),
            }))),
            layout,
            path,
        })
    }

    /// Receives the next frame, queueing its wait on `stream` (a raw `CUstream` handle, alive
    /// until the sample is released); raises `Timeout` after `timeout` seconds and
    /// `PublisherGone` when the publisher closed (`closed` true) or died.
    #[pyo3(signature = (stream, timeout=30.0))]
    fn receive(slf: &Bound<'_, Self>, stream: usize, timeout: f64) -> PyResult<Sample> {
        let t = seconds(timeout)?;
        let me = slf.get();
        let core = me.core()?;
        let stream = Box::new(foreign_stream(core.ctx, stream));
        let stream = NonNull::from(Box::leak(stream));
        let at = stream.as_ptr() as usize;
        let received = slf.py().detach(|| {
            let _gate = core.gate();
            // SAFETY: `core` (an Arc, moved into the Sample below) and the boxed stream (at
            // `at`, from `Box::leak` above) live at fixed addresses until `Sample`'s Drop,
            // which drops the crate's sample first.
            let (sub, st): (
                &'static RustSubscriber<'static, u8>,
                &'static Stream<'static>,
            ) = unsafe { (&*(&core.sub as *const _), &*(at as *const Stream<'static>)) };
            sub.receive(st, t).map(Received)
        });
        let sample = match received {
            Ok(Received(s)) => s,
            Err(e) => {
                // SAFETY: no sample borrows the stream; made by `Box::leak` above.
                drop(unsafe { Box::from_raw(stream.as_ptr()) });
                return Err(to_py(e));
            }
        };
        let (seq, missed, ptr) = (sample.seq(), sample.missed(), sample.view().device_ptr());
        Ok(Sample {
            inner: Mutex::new(SampleInner {
                sample: Some(sample),
                stream: Some(stream),
            }),
            core,
            seq,
            missed,
            ptr,
            layout: me.layout,
        })
    }

    /// Receives on the CPU (no stream): waits until the frame is ready on the GPU.
    #[pyo3(signature = (timeout=30.0))]
    fn receive_host(&self, py: Python<'_>, timeout: f64) -> PyResult<Sample> {
        let t = seconds(timeout)?;
        let core = self.core()?;
        let received = py.detach(|| {
            let _gate = core.gate();
            // SAFETY: as in `receive`: `core` outlives the sample (Sample's Drop order).
            let sub: &'static RustSubscriber<'static, u8> = unsafe { &*(&core.sub as *const _) };
            sub.receive_host(t).map(Received)
        });
        let Received(sample) = received.map_err(to_py)?;
        let (seq, missed, ptr) = (sample.seq(), sample.missed(), sample.view().device_ptr());
        Ok(Sample {
            inner: Mutex::new(SampleInner {
                sample: Some(sample),
                stream: None,
            }),
            core,
            seq,
            missed,
            ptr,
            layout: self.layout,
        })
    }

    /// `received`, `missed`, `held`, and `sharing`: how this end shares the GPU with the
    /// publisher (`OtherGpu`, `SameGpuMps`, `SameGpuWithoutMps`, `Unknown`).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let core = self.core()?;
        let s = {
            let _gate = core.gate();
            core.sub.stats()
        };
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
        lock(&self.core).take();
    }

    fn __repr__(&self) -> String {
        format!("Subscriber({}, {})", self.path.display(), self.layout)
    }
}

/// A received sample carried out of `detach` back to the calling thread.
struct Received(RustSample<'static, 'static, u8>);

// SAFETY: the sample borrows a `SubCore`, whose subscriber is only used with its gate held
// (see `SubCore`); moving the sample to another thread does not use it.
unsafe impl Send for Received {}

struct SampleInner {
    /// Borrows `core` and `stream`: dropped before them.
    sample: Option<RustSample<'static, 'static, u8>>,
    /// Owned (from `Box::leak`).
    stream: Option<NonNull<Stream<'static>>>,
}

// SAFETY: reached only under the mutex; the crate's sample and stream handles may be used and
// dropped on any thread.
unsafe impl Send for SampleInner {}

impl SampleInner {
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
        out
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
}

impl Drop for Sample {
    fn drop(&mut self) {
        let ctx = self.core.ctx;
        let _gate = self.core.gate();
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = inner.finish(None, ctx) {
            crate::array::log_drop("releasing a channel sample", &e);
        }
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

    /// The frame, read-only, as a `SharedArray`. A tensor made from it must not be used after
    /// the sample is released: its slot is then reused for later frames (clone it to keep it).
    #[getter]
    fn array(slf: &Bound<'_, Self>) -> PyResult<Py<SharedArray>> {
        let me = slf.get();
        if lock(&me.inner).sample.is_none() {
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
            },
        )
    }

    /// Whether the sample is still held.
    #[getter]
    fn held(&self) -> bool {
        lock(&self.inner).sample.is_some()
    }

    /// Releases the frame after the work queued on `stream` (a raw handle; None: from the CPU,
    /// after the work recorded on the stream it was received on).
    #[pyo3(signature = (stream=None))]
    fn release(&self, py: Python<'_>, stream: Option<usize>) -> PyResult<()> {
        let ctx = self.core.ctx;
        py.detach(|| {
            let _gate = self.core.gate();
            lock(&self.inner).finish(stream, ctx)
        })
        .py_err()
    }

    fn __repr__(&self) -> String {
        format!("Sample(frame {}, {})", self.seq, self.layout)
    }
}
