//! `cuda_ipc._native`: the Python extension over the cuda-ipc crate (the one implementation;
//! this crate only converts). The Python package `cuda_ipc` wraps it with framework
//! conveniences (streams, dtypes, `share`, the torch reducer).

#![deny(unsafe_op_in_unsafe_fn)]

mod array;
mod channel;
mod dlpack;
mod errors;
mod share;

use pyo3::prelude::*;

/// The driver's version as (major, minor), e.g. (13, 0). Raises `DriverNotFound` without a
/// driver, `NoDevice` without a GPU.
#[pyfunction]
fn driver_version() -> PyResult<(i32, i32)> {
    errors::IntoPy::py_err(cuda_ipc::device::driver_version())
}

/// GPUs visible to this process.
#[pyfunction]
fn device_count() -> PyResult<usize> {
    errors::IntoPy::py_err(cuda_ipc::Device::count())
}

/// Checks a tensor layout without touching a GPU: returns (shape, strides, nbytes), or raises
/// `Descriptor` (an unknown dtype, more than 8 dimensions, an extent past 64 bits).
#[pyfunction]
#[pyo3(signature = (shape, dtype, strides=None))]
fn layout(
    shape: Vec<u64>,
    dtype: &str,
    strides: Option<Vec<u64>>,
) -> PyResult<(Vec<u64>, Vec<u64>, u64)> {
    let l = array::layout_from(shape, dtype, strides)?;
    Ok((l.shape().to_vec(), l.strides().to_vec(), l.extent_bytes()))
}

/// Encodes a descriptor with a layout and decodes it back, as an importer does (for tests of
/// the format from Python, without a GPU): returns (dtype, shape, strides) or raises
/// `Descriptor`. `corrupt` flips one byte at that offset first.
#[pyfunction]
#[pyo3(signature = (shape, dtype, byte_size, corrupt=None))]
fn descriptor_round_trip(
    shape: Vec<u64>,
    dtype: &str,
    byte_size: u64,
    corrupt: Option<usize>,
) -> PyResult<(String, Vec<u64>, Vec<u64>)> {
    let l = array::layout_from(shape, dtype, None)?;
    let mut d = cuda_ipc::ipc::Descriptor::example();
    d.transport = cuda_ipc::ipc::WireTransport::Fd;
    d.handle = [0; 64];
    d.elem_size = 1;
    d.elem_align = 1;
    d.len = byte_size;
    d.byte_size = byte_size;
    d.signal_offset = 0;
    d.alloc_size = byte_size.max(1).next_multiple_of(2 << 20);
    d.layout = Some(l);
    let mut bytes = d.encode();
    if let Some(i) = corrupt {
        match bytes.get_mut(i) {
            Some(b) => *b ^= 0x5a,
            None => {
                return Err(errors::invalid(format!(
                    "offset {i} is past the descriptor"
                )))
            }
        }
    }
    let back = cuda_ipc::ipc::Descriptor::decode(&bytes).map_err(errors::descriptor)?;
    let bl = back.layout.expect("a version-2 descriptor");
    Ok((
        bl.dtype().to_string(),
        bl.shape().to_vec(),
        bl.strides().to_vec(),
    ))
}

/// The names of the crate's error variants, in the order of their classes.
#[pyfunction]
fn error_variants() -> Vec<&'static str> {
    errors::VARIANTS.iter().map(|(v, _)| *v).collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<array::SharedArray>()?;
    m.add_class::<share::Exporter>()?;
    m.add_class::<channel::Publisher>()?;
    m.add_class::<channel::Loan>()?;
    m.add_class::<channel::Subscriber>()?;
    m.add_class::<channel::Sample>()?;
    m.add_function(wrap_pyfunction!(share::empty, m)?)?;
    m.add_function(wrap_pyfunction!(share::open, m)?)?;
    m.add_function(wrap_pyfunction!(driver_version, m)?)?;
    m.add_function(wrap_pyfunction!(device_count, m)?)?;
    m.add_function(wrap_pyfunction!(layout, m)?)?;
    m.add_function(wrap_pyfunction!(descriptor_round_trip, m)?)?;
    m.add_function(wrap_pyfunction!(error_variants, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
