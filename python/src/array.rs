//! `SharedArray`: a view of GPU memory that this package shares, imports, or lends from a
//! channel, with the tensor layout its descriptor carries. It is consumed zero-copy by PyTorch
//! (`torch.from_dlpack`, `torch.as_tensor`) and CuPy (`cupy.from_dlpack`, `cupy.asarray`)
//! through DLPack and `__cuda_array_interface__`; every tensor made from it keeps it (and so
//! the memory) alive.

use std::sync::Arc;

use cuda_ipc::ipc::{DType, SharedDeviceBuffer, TensorLayout};
use cuda_ipc::{Context, DeviceMemory};
use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::dlpack;
use crate::errors::{invalid, IntoPy};

/// A shared buffer owned or imported by this process. Dropping it waits for all work queued
/// on its context first (PyTorch's and CuPy's work is invisible to the crate's own records),
/// then hands it to the crate, which defers the free while consumers hold leases.
pub struct Buffer {
    pub buf: Option<SharedDeviceBuffer<'static, u8>>,
    pub ctx: &'static Context,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let (ctx, buf) = (self.ctx, self.buf.take());
        let synced = without_gil(move || {
            let synced = ctx.synchronize();
            drop(buf);
            synced
        });
        if let Err(e) = synced {
            log_drop(
                "waiting for the GPU's work before freeing a shared buffer",
                &e,
            );
        }
    }
}

/// Runs `f` with the interpreter's lock released (a GPU wait must not stop every other Python
/// thread, one of which the GPU work may be waiting for), or as is while the interpreter
/// finalizes. Call it from drops, which run with the lock held (attaching is then immediate).
pub fn without_gil<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut f = Some(f);
    let run = &mut f;
    match Python::try_attach(|py| py.detach(|| run.take().map(|f| f()))) {
        Some(Some(r)) => r,
        _ => (f.take().expect("not run when not attached"))(),
    }
}

/// Reports an error met while dropping (a destructor cannot raise): Python's
/// `sys.unraisablehook`, which prints it by default.
pub fn log_drop(what: &str, e: &dyn std::fmt::Display) {
    let text = format!("cuda-ipc: {what}: {e}");
    let shown = Python::try_attach(|py| {
        invalid(text.clone()).write_unraisable(py, None);
    });
    if shown.is_none() {
        // At exit, after the interpreter is gone: standard error is all there is.
        eprintln!("{text}");
    }
}

/// What keeps an array's memory alive.
pub enum Keeper {
    /// A shared buffer of this process or imported from another.
    Buffer(Arc<Buffer>),
    /// A channel's sample (the Python object, which holds its slot).
    Object(Py<PyAny>),
    /// A channel publisher's pool (a loaned slot): the publisher lives while this does.
    Channel(Arc<dyn std::any::Any + Send + Sync>),
}

/// A view of shared GPU memory: a tensor's data pointer, layout and device.
///
/// Make a PyTorch tensor with `array.torch()` (or `torch.from_dlpack(array)`), a CuPy array
/// with `array.cupy()` (or `cupy.from_dlpack(array)`): both share the memory, no copy.
#[pyclass(module = "cuda_ipc", frozen, weakref)]
pub struct SharedArray {
    pub ptr: u64,
    pub layout: TensorLayout,
    pub device: usize,
    pub readonly: bool,
    pub keeper: Keeper,
    pub owner: bool,
    /// For a received frame: the stream its wait was queued on, which consumers on other
    /// streams must wait for (DLPack's `stream`, the CUDA Array Interface's `stream`).
    pub ready_on: Option<usize>,
    /// For a channel's slot: false once the sample is released or the loan ended; the array
    /// then refuses to be exported (its slot holds other frames by then).
    pub live: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl SharedArray {
    /// The buffer behind the array, if it is one (not a channel's slot).
    pub fn buffer(&self) -> Option<&Arc<Buffer>> {
        match &self.keeper {
            Keeper::Buffer(b) => Some(b),
            Keeper::Object(_) | Keeper::Channel(_) => None,
        }
    }

    /// An array over a whole shared buffer.
    pub fn of_buffer(buffer: Buffer, layout: TensorLayout, owner: bool) -> PyResult<SharedArray> {
        let inner = buffer.buf.as_ref().expect("a new buffer");
        let view = inner.view();
        if layout.extent_bytes() > view.byte_len() as u64 {
            return Err(invalid(format!(
                "the tensor {layout} spans {} bytes, the buffer has {}",
                layout.extent_bytes(),
                view.byte_len()
            )));
        }
        Ok(SharedArray {
            ptr: view.device_ptr(),
            layout,
            device: buffer.ctx.device().ordinal(),
            readonly: false,
            owner,
            keeper: Keeper::Buffer(Arc::new(buffer)),
            ready_on: None,
            live: None,
        })
    }
}

impl SharedArray {
    /// Refuses once a channel slot's sample was released or its loan ended.
    fn check_live(&self) -> PyResult<()> {
        match &self.live {
            Some(l) if !l.load(std::sync::atomic::Ordering::Acquire) => {
                Err(pyo3::exceptions::PyBufferError::new_err(
                    "this array views a channel slot whose sample was released (or whose loan \
                     ended): the slot holds other frames now; take tensors while it is held",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// NumPy's type string (`__cuda_array_interface__`'s `typestr`), where it has one.
fn typestr(d: DType) -> Option<&'static str> {
    Some(match d.name()? {
        "bool" => "|b1",
        "int8" => "|i1",
        "int16" => "<i2",
        "int32" => "<i4",
        "int64" => "<i8",
        "uint8" => "|u1",
        "uint16" => "<u2",
        "uint32" => "<u4",
        "uint64" => "<u8",
        "float16" => "<f2",
        "float32" => "<f4",
        "float64" => "<f8",
        "complex64" => "<c8",
        "complex128" => "<c16",
        _ => return None, // bfloat16: DLPack only
    })
}

#[pymethods]
impl SharedArray {
    /// The shape.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.layout.shape())
    }

    /// The strides, in elements (PyTorch's convention; `__cuda_array_interface__` uses bytes).
    #[getter]
    fn strides<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.layout.strides())
    }

    /// The element type's name (`"float32"`).
    #[getter]
    fn dtype(&self) -> String {
        self.layout.dtype().to_string()
    }

    /// Bytes from the first element to the end of the last.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.layout.extent_bytes()
    }

    /// The CUDA device ordinal.
    #[getter]
    fn device(&self) -> usize {
        self.device
    }

    /// The device address of the first element. Do not free it.
    #[getter]
    fn data_ptr(&self) -> u64 {
        self.ptr
    }

    /// True for a channel's received frame (write to it and subscribers race).
    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    /// True when this process allocated the memory (it can be shared with `share`).
    #[getter]
    fn is_owner(&self) -> bool {
        self.owner
    }

    /// The CUDA Array Interface, version 3 (CuPy, Numba, PyTorch). bfloat16 has no type string
    /// there: use DLPack (`torch.from_dlpack`).
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.check_live()?;
        let dtype = self.layout.dtype();
        let Some(ts) = typestr(dtype) else {
            return Err(PyAttributeError::new_err(format!(
                "{dtype} has no __cuda_array_interface__ type string: use DLPack \
                 (torch.from_dlpack(array))"
            )));
        };
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, self.layout.shape())?)?;
        d.set_item("typestr", ts)?;
        d.set_item("descr", vec![("", ts)])?;
        d.set_item("data", (self.ptr, self.readonly))?;
        if self.layout.is_contiguous() {
            d.set_item("strides", py.None())?;
        } else {
            let bytes: Vec<u64> = self
                .layout
                .strides()
                .iter()
                .map(|s| s * dtype.itemsize())
                .collect();
            d.set_item("strides", PyTuple::new(py, bytes)?)?;
        }
        // A received frame is ready on the stream its wait was queued on (0, the legacy default
        // stream, is 1 here: 0 is not allowed); everything else is ready when handed out.
        match self.ready_on {
            Some(s) => d.set_item("stream", if s == 0 { 1 } else { s })?,
            None => d.set_item("stream", py.None())?,
        }
        Ok(d)
    }

    /// DLPack: a `"dltensor"` capsule (unversioned: every consumer takes it; it has no
    /// read-only flag, so a received frame's tensor is writable: do not write to it). For a
    /// received frame, the consumer's `stream` is made to wait (on the GPU) for the stream the
    /// frame was received on; other memory is ready when handed out.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__(
        slf: &Bound<'_, Self>,
        stream: Option<i64>,
        max_version: Option<Bound<'_, PyAny>>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let _ = max_version;
        let me = slf.get();
        me.check_live()?;
        // DLPack's CUDA streams: None is the legacy default stream (1), -1 asks for no
        // synchronization, 0 is not allowed, other values are stream handles.
        let consumer = match stream.unwrap_or(1) {
            -1 => None,
            s if s > 0 => Some(s as usize),
            s => {
                return Err(pyo3::exceptions::PyBufferError::new_err(format!(
                    "stream {s} is not a CUDA stream for DLPack (use -1, 1, 2 or a handle)"
                )))
            }
        };
        if let (Some(ready), Some(consumer)) = (me.ready_on, consumer) {
            // A frame received on the legacy default stream (handle 0) and consumed there.
            let same = consumer == ready || (ready == 0 && consumer == 1);
            if !same {
                order_after(me.device, ready, consumer)?;
            }
        }
        if let Some((kind, id)) = dl_device {
            if kind != dlpack::DEVICE_CUDA || id != me.device as i32 {
                return Err(pyo3::exceptions::PyBufferError::new_err(format!(
                    "this array is on CUDA device {}: it cannot be exported to device \
                     ({kind}, {id}) without a copy",
                    me.device
                )));
            }
        }
        if copy == Some(true) {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "a cuda-ipc array is shared memory: it is exported without a copy",
            ));
        }
        let dtype = me.layout.dtype();
        dlpack::capsule(
            slf.py(),
            &dlpack::Export {
                data: me.ptr,
                device: me.device as i32,
                code: dtype.code,
                bits: dtype.bits,
                shape: me.layout.shape(),
                strides: me.layout.strides(),
            },
            slf.clone().into_any().unbind(),
        )
    }

    /// DLPack: `(kDLCUDA, device)`.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (dlpack::DEVICE_CUDA, self.device as i32)
    }

    /// A PyTorch tensor sharing this memory (`torch.from_dlpack`).
    fn torch<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("torch")?
            .call_method1("from_dlpack", (slf,))
    }

    /// A CuPy array sharing this memory (`cupy.from_dlpack`).
    fn cupy<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("cupy")?.call_method1("from_dlpack", (slf,))
    }

    fn __repr__(&self) -> String {
        format!(
            "SharedArray({}, cuda:{}, {:#x}{}{})",
            self.layout,
            self.device,
            self.ptr,
            if self.owner { ", owner" } else { "" },
            if self.readonly { ", read-only" } else { "" }
        )
    }
}

/// Makes `consumer` wait on the GPU for the work queued so far on `producer` (both raw
/// streams of `device`'s primary context).
fn order_after(device: usize, producer: usize, consumer: usize) -> PyResult<()> {
    let ctx = context(device)?;
    // SAFETY: `producer` is the stream a held sample was received on (the sample keeps the
    // stream's owner alive, and the array keeps the sample); `consumer` is the caller's
    // current stream, live for the call (DLPack's contract). Neither is destroyed here.
    let (p, c) = unsafe {
        (
            cuda_ipc::Stream::from_raw_borrowed(ctx, producer as cuda_driver_sys::CUstream),
            cuda_ipc::Stream::from_raw_borrowed(ctx, consumer as cuda_driver_sys::CUstream),
        )
    };
    let event = cuda_ipc::Event::new_untimed(ctx).py_err()?;
    event.record(&p).py_err()?;
    c.wait_event(&event).py_err()
}

/// A layout from Python arguments: a shape, a dtype name, optional strides (elements).
pub fn layout_from(
    shape: Vec<u64>,
    dtype: &str,
    strides: Option<Vec<u64>>,
) -> PyResult<TensorLayout> {
    let Some(dt) = DType::from_name(dtype) else {
        return Err(invalid(format!(
            "unknown dtype {dtype:?}: use one of bool, int8..int64, uint8..uint64, float16, \
             bfloat16, float32, float64, complex64, complex128"
        )));
    };
    match strides {
        None => TensorLayout::contiguous(dt, &shape),
        Some(s) => TensorLayout::strided(dt, &shape, &s),
    }
    .map_err(crate::errors::descriptor)
}

/// The primary context of a device (the one PyTorch and CuPy use).
pub fn context(device: usize) -> PyResult<&'static Context> {
    let dev = cuda_ipc::Device::by_ordinal(device).py_err()?;
    Context::primary(dev).py_err()
}
