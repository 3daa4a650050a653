//! DLPack, the tensor exchange ABI of PyTorch, CuPy, JAX and NumPy: the C structs of
//! `dlpack.h` (version 0.8, the unversioned `DLManagedTensor` every consumer accepts) and the
//! `"dltensor"` capsule that carries one. This is the package's one foreign-function layer
//! besides the crate itself.

use std::ffi::{c_void, CStr};

use pyo3::ffi;
use pyo3::prelude::*;

/// `kDLCUDA`.
pub const DEVICE_CUDA: i32 = 2;

const CAPSULE_NAME: &CStr = c"dltensor";

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// A managed tensor and what it points into: the first field, so that a pointer to the
/// `DLManagedTensor` is a pointer to the whole.
#[repr(C)]
struct Holder {
    managed: DLManagedTensor,
    shape: Vec<i64>,
    strides: Vec<i64>,
    /// Keeps the memory alive until the consumer calls the deleter.
    owner: Py<PyAny>,
}

/// What a capsule describes.
pub struct Export<'a> {
    /// The first element.
    pub data: u64,
    /// The CUDA device ordinal.
    pub device: i32,
    /// The data type (DLPack's own encoding).
    pub code: u8,
    /// Bits per element.
    pub bits: u8,
    /// The shape.
    pub shape: &'a [u64],
    /// The strides, in elements.
    pub strides: &'a [u64],
}

/// A `"dltensor"` capsule for `what`, keeping `owner` alive until the consumer (or, for an
/// unconsumed capsule, its destructor) calls the tensor's deleter.
pub fn capsule(py: Python<'_>, what: &Export<'_>, owner: Py<PyAny>) -> PyResult<Py<PyAny>> {
    let to_i64 = |v: &[u64]| -> PyResult<Vec<i64>> {
        v.iter()
            .map(|&x| i64::try_from(x).map_err(|_| super::errors::invalid("dimension past 2^63")))
            .collect()
    };
    let mut holder = Box::new(Holder {
        managed: DLManagedTensor {
            dl_tensor: DLTensor {
                data: what.data as *mut c_void,
                device: DLDevice {
                    device_type: DEVICE_CUDA,
                    device_id: what.device,
                },
                ndim: what.shape.len() as i32,
                dtype: DLDataType {
                    code: what.code,
                    bits: what.bits,
                    lanes: 1,
                },
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(deleter),
        },
        shape: to_i64(what.shape)?,
        strides: to_i64(what.strides)?,
        owner,
    });
    // The vectors' buffers do not move when the box is turned into a raw pointer.
    holder.managed.dl_tensor.shape = holder.shape.as_mut_ptr();
    holder.managed.dl_tensor.strides = holder.strides.as_mut_ptr();
    let raw = Box::into_raw(holder);
    // SAFETY: `raw` is a valid, uniquely owned pointer; the name is a static C string; the
    // destructor matches the capsule's contract below. On failure the capsule does not exist,
    // so the box is ours again.
    let capsule =
        unsafe { ffi::PyCapsule_New(raw.cast(), CAPSULE_NAME.as_ptr(), Some(capsule_destructor)) };
    if capsule.is_null() {
        // SAFETY: no capsule took ownership of `raw`.
        drop(unsafe { Box::from_raw(raw) });
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `capsule` is a new, owned reference.
    Ok(unsafe { Bound::from_owned_ptr(py, capsule) }.unbind())
}

/// The tensor's deleter: frees the holder and releases the owner.
///
/// # Safety
/// `m` must be a pointer made by [`capsule`] whose deleter has not run yet.
unsafe extern "C" fn deleter(m: *mut DLManagedTensor) {
    if m.is_null() {
        return;
    }
    // SAFETY: per the contract, `m` is the start of a `Holder` box (the first field, repr(C))
    // that nobody else frees.
    let holder = unsafe { Box::from_raw(m.cast::<Holder>()) };
    // Releasing the owner needs the interpreter (the consumer may call us without it). While
    // it finalizes (a tensor collected at exit) the owner cannot be released any more, and the
    // process is ending: leave it.
    let mut holder = Some(holder);
    let slot = &mut holder;
    if Python::try_attach(|_py| drop(slot.take())).is_none() {
        std::mem::forget(holder);
    }
}

/// The capsule's destructor: a capsule still named `"dltensor"` was never consumed, so its
/// tensor is deleted here; a consumed one (renamed `"used_dltensor"`) belongs to its consumer.
///
/// # Safety
/// Called by Python with a capsule object.
unsafe extern "C" fn capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: `capsule` is a live capsule; IsValid checks the name without raising.
    if unsafe { ffi::PyCapsule_IsValid(capsule, CAPSULE_NAME.as_ptr()) } != 1 {
        return;
    }
    // SAFETY: valid under this name, so its pointer is the `DLManagedTensor` we stored.
    let m = unsafe { ffi::PyCapsule_GetPointer(capsule, CAPSULE_NAME.as_ptr()) };
    if !m.is_null() {
        // SAFETY: an unconsumed capsule's tensor has not been deleted.
        unsafe { deleter(m.cast()) };
    }
}
