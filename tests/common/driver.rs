//! The few raw driver calls the GPU tests make behind the crate's back (what another CUDA
//! library in the process would do), resolved with `dlopen("libcuda.so.1")` + `dlsym`: the
//! same library, and so the same contexts, as the crate's own calls use.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

type CuResult = u32;
type CtxGetCurrent = unsafe extern "C" fn(*mut *mut c_void) -> CuResult;
type CtxSetCurrent = unsafe extern "C" fn(*mut c_void) -> CuResult;
type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult;

struct Api {
    ctx_get_current: CtxGetCurrent,
    ctx_set_current: CtxSetCurrent,
    mem_get_info: MemGetInfo,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: a NUL-terminated name; the handle is never closed (the functions are called
        // until the process exits).
        let lib =
            unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!lib.is_null(), "dlopen(libcuda.so.1) failed");
        let symbol = |name: &CStr| {
            // SAFETY: a live library handle and a NUL-terminated name.
            let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
            assert!(!p.is_null(), "libcuda.so.1 has no {name:?}");
            p
        };
        // SAFETY: each symbol is the driver's C function of that name, whose signature cuda.h
        // declares as the field's type (CUcontext is a pointer, CUresult a 32-bit enum).
        unsafe {
            Api {
                ctx_get_current: std::mem::transmute::<*mut c_void, CtxGetCurrent>(symbol(
                    c"cuCtxGetCurrent",
                )),
                ctx_set_current: std::mem::transmute::<*mut c_void, CtxSetCurrent>(symbol(
                    c"cuCtxSetCurrent",
                )),
                mem_get_info: std::mem::transmute::<*mut c_void, MemGetInfo>(symbol(
                    c"cuMemGetInfo_v2",
                )),
            }
        }
    })
}

fn check(call: &str, rc: CuResult) -> Result<(), String> {
    match rc {
        0 => Ok(()),
        _ => Err(format!("{call} failed with CUresult {rc}")),
    }
}

/// `cuCtxGetCurrent`: the calling thread's current context (null: none).
pub fn ctx_get_current() -> Result<*mut c_void, String> {
    let mut ctx = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    check("cuCtxGetCurrent", unsafe {
        (api().ctx_get_current)(&mut ctx)
    })?;
    Ok(ctx)
}

/// `cuCtxSetCurrent`.
///
/// # Safety
/// `ctx` must be a live context, or null.
pub unsafe fn ctx_set_current(ctx: *mut c_void) -> Result<(), String> {
    // SAFETY: the caller passes a live context or null.
    check("cuCtxSetCurrent", unsafe { (api().ctx_set_current)(ctx) })
}

/// `cuMemGetInfo_v2`: (free, total) bytes of the current context's device.
pub fn mem_get_info() -> Result<(usize, usize), String> {
    let (mut free, mut total) = (0, 0);
    // SAFETY: valid out-pointers.
    check("cuMemGetInfo", unsafe {
        (api().mem_get_info)(&mut free, &mut total)
    })?;
    Ok((free, total))
}
