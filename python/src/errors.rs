//! The crate's typed errors as Python exceptions: one class per [`cuda_ipc::Error`] variant,
//! named like it (`cuda_ipc.PublisherGone`), all subclasses of `cuda_ipc.CudaIpcError`, with the
//! crate's message unchanged. Where Python has a matching built-in exception the class derives
//! from it too (`Timeout` is a `TimeoutError`, `InvalidArgument` a `ValueError`, `Io` an
//! `OSError`), so existing `except` clauses keep working.
//!
//! Every instance carries `variant` (the variant's name) and, for driver failures, `driver_call`
//! and `driver_code` (the `CUresult`) with `driver_name`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// Every variant of `cuda_ipc::Error` (kept in step by a test of the Rust side's names), with
/// the built-in exception it also derives from, if any.
pub const VARIANTS: &[(&str, Option<&str>)] = &[
    ("Driver", None),
    ("DriverNotFound", Some("ImportError")),
    ("NoDevice", None),
    ("NoSuchOrdinal", Some("IndexError")),
    ("DeviceNotFound", Some("LookupError")),
    ("BadUuid", Some("ValueError")),
    ("InvalidArgument", Some("ValueError")),
    ("LengthMismatch", Some("ValueError")),
    ("Io", Some("OSError")),
    ("Descriptor", Some("ValueError")),
    ("TransportUnsupported", None),
    ("PeerAccessUnsupported", None),
    ("PidCollision", None),
    ("SelfImport", None),
    ("DifferentHost", None),
    ("ImportFailed", None),
    ("MappingTooSmall", None),
    ("Module", None),
    ("Timeout", Some("TimeoutError")),
    ("Protocol", None),
    ("Refused", Some("PermissionError")),
    ("UnsafeDirectory", Some("PermissionError")),
    ("Busy", None),
    ("UntrustedExporter", Some("PermissionError")),
    ("Unsupported", None),
    ("PublisherGone", None),
    ("NameInUse", Some("FileExistsError")),
    ("OfferMismatch", None),
    ("ChannelClosed", None),
];

struct Classes {
    base: Py<PyType>,
    by_variant: Vec<(&'static str, Py<PyType>)>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: Vec<Bound<'py, PyAny>>,
    doc: &str,
) -> PyResult<Bound<'py, PyType>> {
    let dict = PyDict::new(py);
    dict.set_item("__module__", "cuda_ipc")?;
    dict.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let made = py
        .import("builtins")?
        .getattr("type")?
        .call1((name, bases, dict))?;
    Ok(made.cast_into::<PyType>()?)
}

fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let builtins = py.import("builtins")?;
        let base = make_class(
            py,
            "CudaIpcError",
            vec![builtins.getattr("Exception")?],
            "Base class of every cuda-ipc error.",
        )?;
        let mut by_variant = Vec::new();
        for (variant, builtin) in VARIANTS {
            let mut bases = vec![base.clone().into_any()];
            if let Some(b) = builtin {
                bases.push(builtins.getattr(*b)?);
            }
            let doc = format!("cuda_ipc::Error::{variant}, raised with the crate's message.");
            let class = make_class(py, variant, bases, &doc)?;
            by_variant.push((*variant, class.unbind()));
        }
        Ok(Classes {
            base: base.unbind(),
            by_variant,
        })
    })
}

/// Adds `CudaIpcError` and every variant's class to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let c = classes(m.py())?;
    m.add("CudaIpcError", c.base.bind(m.py()))?;
    for (variant, class) in &c.by_variant {
        m.add(*variant, class.bind(m.py()))?;
    }
    Ok(())
}

/// The Python exception for a crate error: its variant's class, the crate's message, and the
/// attributes `variant`, `driver_call`, `driver_code`, `driver_name` (None unless a driver call
/// failed).
pub fn to_py(e: cuda_ipc::Error) -> PyErr {
    Python::attach(|py| match build(py, &e) {
        Ok(err) => err,
        Err(failed) => failed,
    })
}

fn build(py: Python<'_>, e: &cuda_ipc::Error) -> PyResult<PyErr> {
    let c = classes(py)?;
    let variant = e.variant_name();
    let class = c
        .by_variant
        .iter()
        .find(|(v, _)| *v == variant)
        .map_or(&c.base, |(_, class)| class);
    let instance = class.bind(py).call1((e.to_string(),))?;
    instance.setattr("variant", variant)?;
    let driver = e.driver_error();
    instance.setattr("driver_call", driver.map(|d| d.call()))?;
    instance.setattr("driver_code", driver.map(|d| d.code()))?;
    instance.setattr("driver_name", driver.map(|d| d.name()))?;
    if let cuda_ipc::Error::PublisherGone { closed, .. } = e {
        instance.setattr("closed", *closed)?;
    }
    Ok(PyErr::from_value(instance))
}

/// `Result<T, cuda_ipc::Error>` into `PyResult<T>`.
pub trait IntoPy<T> {
    /// Maps the error with [`to_py`].
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for cuda_ipc::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// A `cuda_ipc.InvalidArgument` with this text.
pub fn invalid(what: impl Into<String>) -> PyErr {
    to_py(cuda_ipc::Error::InvalidArgument(what.into()))
}

/// A `cuda_ipc.Descriptor` error.
pub fn descriptor(e: cuda_ipc::ipc::DescriptorError) -> PyErr {
    to_py(cuda_ipc::Error::Descriptor(e))
}
