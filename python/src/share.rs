//! Sharing a tensor: `empty` allocates shared memory, `Exporter` publishes it under a path,
//! `open` maps another process's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cuda_ipc::ipc::{
    AllowedUsers, ExportOptions, ImportOptions, SharedDeviceBuffer, Transport, TypeTag,
    TENSOR_TYPE_TAG,
};
use cuda_ipc::DeviceMemory;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::array::{context, layout_from, Buffer, SharedArray};
use crate::errors::{invalid, IntoPy};

/// `"auto"`, `"fd"` or `"legacy"`.
pub fn transport(name: &str) -> PyResult<Transport> {
    Transport::parse(name).ok_or_else(|| {
        invalid(format!(
            "unknown transport {name:?}: use auto, fd or legacy"
        ))
    })
}

/// A timeout in seconds (finite, not negative).
pub fn seconds(s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| invalid(format!("timeout {s} is not a number of seconds >= 0")))
}

/// Allocates shared GPU memory for a tensor of `shape` and `dtype` on `device`, zeroed.
#[pyfunction]
#[pyo3(signature = (shape, dtype, *, device=0, transport="auto"))]
pub fn empty(
    py: Python<'_>,
    shape: Vec<u64>,
    dtype: &str,
    device: usize,
    transport: &str,
) -> PyResult<SharedArray> {
    let layout = layout_from(shape, dtype, None)?;
    let t = self::transport(transport)?;
    let ctx = context(device)?;
    let bytes = layout.extent_bytes().max(1) as usize;
    let buf = py
        .detach(move || {
            SharedDeviceBuffer::<u8>::zeroed(ctx, bytes, t)?
                .with_type_tag(TypeTag::named(TENSOR_TYPE_TAG))?
                .with_layout(layout)
        })
        .py_err()?;
    SharedArray::of_buffer(
        Buffer {
            buf: Some(buf),
            ctx,
        },
        layout,
        true,
    )
}

/// Maps the tensor published at `path` on `device` (default: the exporter's GPU when it is
/// visible here, else 0), checking `dtype` and `shape` when given.
#[pyfunction]
#[pyo3(signature = (path, *, timeout=30.0, device=None, dtype=None, shape=None, trusted_uids=Vec::new(), group=None))]
#[allow(clippy::too_many_arguments)]
pub fn open(
    py: Python<'_>,
    path: PathBuf,
    timeout: f64,
    device: Option<usize>,
    dtype: Option<String>,
    shape: Option<Vec<u64>>,
    trusted_uids: Vec<u32>,
    group: Option<u32>,
) -> PyResult<SharedArray> {
    let opts = ImportOptions {
        timeout: seconds(timeout)?,
        type_tag: Some(TypeTag::named(TENSOR_TYPE_TAG)),
        expected_len: None,
        trusted_exporters: trusted_uids,
        group,
    };
    // One lease, whose descriptor also names the exporter's GPU (the default device).
    let (ctx, buf) = py
        .detach(|| -> cuda_ipc::Result<_> {
            let offer = cuda_ipc::ipc::fetch::<u8>(&path, &opts)?;
            let ordinal = match device {
                Some(d) => d,
                None => {
                    let uuid = cuda_ipc::GpuUuid(offer.descriptor().owner_uuid);
                    cuda_ipc::Device::by_uuid(&uuid).map_or(0, |d| d.ordinal())
                }
            };
            let ctx = cuda_ipc::Context::primary(cuda_ipc::Device::by_ordinal(ordinal)?)?;
            Ok((ctx, SharedDeviceBuffer::<u8>::import_offer(ctx, offer)?))
        })
        .py_err()?;
    let found = buf.descriptor().layout;
    let layout = match found {
        Some(l) => {
            // What the caller asked for, compared as given (no reinterpretation).
            let want_dtype = dtype.unwrap_or_else(|| l.dtype().to_string());
            let want_shape = shape.unwrap_or_else(|| l.shape().to_vec());
            if want_dtype != l.dtype().to_string() || want_shape != l.shape() {
                return Err(crate::errors::descriptor(
                    cuda_ipc::ipc::DescriptorError::LayoutMismatch {
                        expected: format!("{want_dtype}{want_shape:?}"),
                        found: l.to_string(),
                    },
                ));
            }
            l
        }
        None => {
            // A byte buffer shared without a layout (e.g. by a Rust program): the caller says
            // what it holds, which must fill it exactly.
            let dt = dtype.unwrap_or_else(|| "uint8".into());
            let n = buf.view().byte_len() as u64;
            let item = layout_from(vec![1], &dt, None)?.extent_bytes();
            let shape = match shape {
                Some(sh) => sh,
                None if n % item == 0 => vec![n / item],
                None => {
                    return Err(invalid(format!(
                        "the buffer at {} has {n} bytes, not a whole number of {dt} elements",
                        path.display()
                    )))
                }
            };
            let l = layout_from(shape, &dt, None)?;
            if l.extent_bytes() != n {
                return Err(invalid(format!(
                    "the buffer at {} has {n} bytes; {l} has {}",
                    path.display(),
                    l.extent_bytes()
                )));
            }
            l
        }
    };
    SharedArray::of_buffer(
        Buffer {
            buf: Some(buf),
            ctx,
        },
        layout,
        false,
    )
}

/// Publishes a shared array under a path until closed: the descriptor `<path>.desc` and, for
/// the fd transport, the socket `<path>.sock` that hands the memory to each consumer.
#[pyclass(module = "cuda_ipc", frozen)]
pub struct Exporter {
    inner: std::sync::Mutex<Option<Arc<cuda_ipc::ipc::Exporter>>>,
    array: Py<SharedArray>,
    path: PathBuf,
}

impl Exporter {
    fn live(&self) -> PyResult<Arc<cuda_ipc::ipc::Exporter>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.clone().ok_or_else(|| {
            crate::errors::to_py(cuda_ipc::Error::InvalidArgument(format!(
                "the export of {} is closed",
                self.path.display()
            )))
        })
    }
}

#[pymethods]
impl Exporter {
    /// Publishes `array` (which this process allocated with `empty`) at `path`.
    #[new]
    #[pyo3(signature = (array, path, *, consumers=1, allowed_uids=None, allowed_group=None, allow_any=false, group=None, max_connections=128, max_per_process=8, handshake_timeout=5.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        array: Py<SharedArray>,
        path: PathBuf,
        consumers: usize,
        allowed_uids: Option<Vec<u32>>,
        allowed_group: Option<u32>,
        allow_any: bool,
        group: Option<u32>,
        max_connections: usize,
        max_per_process: usize,
        handshake_timeout: f64,
    ) -> PyResult<Exporter> {
        let allowed = match (allowed_uids, allowed_group, allow_any) {
            (None, None, false) => AllowedUsers::SameUser,
            (Some(u), None, false) => AllowedUsers::Uids(u),
            (None, Some(g), false) => AllowedUsers::Group(g),
            (None, None, true) => AllowedUsers::Any,
            _ => {
                return Err(invalid(
                    "give at most one of allowed_uids, allowed_group and allow_any",
                ))
            }
        };
        let opts = ExportOptions {
            allowed,
            expected_consumers: consumers,
            max_connections,
            max_per_uid: None,
            max_per_process,
            handshake_timeout: seconds(handshake_timeout)?,
            group,
        };
        let arr = array.get();
        let Some(buffer) = arr.buffer().filter(|_| arr.owner) else {
            return Err(invalid(
                "only memory this process allocated with cuda_ipc.empty can be exported \
                 (cuda_ipc.share copies other tensors into such memory)",
            ));
        };
        let buffer: Arc<Buffer> = buffer.clone();
        let p = path.clone();
        let inner = py
            .detach(move || {
                let buf = buffer.buf.as_ref().expect("live while the array is");
                cuda_ipc::ipc::Exporter::bind_with(&p, buf, opts)
            })
            .py_err()?;
        Ok(Exporter {
            inner: std::sync::Mutex::new(Some(Arc::new(inner))),
            array,
            path,
        })
    }

    /// The array published.
    #[getter]
    fn array(&self, py: Python<'_>) -> Py<SharedArray> {
        self.array.clone_ref(py)
    }

    /// The path it is published at.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Leases and connections: `active_leases`, `total_leases`, `refused_uid`, `dropped_bad`,
    /// `dropped_full`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.live()?.stats();
        let d = PyDict::new(py);
        d.set_item("active_leases", s.active_leases)?;
        d.set_item("total_leases", s.total_leases)?;
        d.set_item("refused_uid", s.refused_uid)?;
        d.set_item("dropped_bad", s.dropped_bad)?;
        d.set_item("dropped_full", s.dropped_full)?;
        Ok(d)
    }

    /// Waits until `n` consumers hold leases (raises `Timeout`).
    #[pyo3(signature = (n, timeout=30.0))]
    fn wait_consumers(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<usize> {
        let t = seconds(timeout)?;
        let e = self.live()?;
        py.detach(|| e.wait_consumers(n, t))
            .py_err()
            .map(|s| s.active_leases)
    }

    /// Waits until every expected consumer has come and gone (raises `Timeout`).
    #[pyo3(signature = (timeout=30.0))]
    fn wait_released(&self, py: Python<'_>, timeout: f64) -> PyResult<usize> {
        let t = seconds(timeout)?;
        let e = self.live()?;
        py.detach(|| e.wait_released(t))
            .py_err()
            .map(|s| s.total_leases)
    }

    /// Tells every leased consumer that frame `frame` is ready (`cuda_ipc.open` consumers
    /// see it with `wait_ready`).
    fn notify_ready(&self, frame: u64) -> PyResult<()> {
        self.live()?.notify_ready(frame).py_err()
    }

    /// Stops publishing: removes the descriptor and socket. The memory stays valid for
    /// consumers that hold leases (it is freed after the last one lets go).
    fn close(&self, py: Python<'_>) {
        let e = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Stops publishing when the last user (a concurrent wait) lets go of it.
        py.detach(move || drop(e));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "Exporter({}, {})",
            self.path.display(),
            if self.inner.lock().is_ok_and(|i| i.is_some()) {
                "open"
            } else {
                "closed"
            }
        )
    }
}
