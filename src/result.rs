//! The only module that calls the driver: one thin function per driver call, each turning the
//! `CUresult` into `Result<T, DriverError>`.
//!
//! Functions that take device pointers or handles whose validity the driver cannot check for us
//! are `unsafe`, with a `# Safety` section; pure queries are safe. The safe types of this crate
//! ([`crate::device`], [`crate::context`], [`crate::memory`], …) are built on these and never
//! touch [`crate::sys`] themselves.
//!
//! ```
//! use cuda_ipc::error::DriverError;
//! let e = DriverError::new("cuIpcOpenMemHandle", 201);
//! assert_eq!(e.name(), "CUDA_ERROR_INVALID_CONTEXT");
//! assert!(e.to_string().contains("cuIpcOpenMemHandle"));
//! ```

use std::ffi::{c_void, CStr};
use std::os::raw::{c_char, c_int};

use crate::sys;
pub use crate::sys::attribute;
pub use crate::sys::{
    CUcontext, CUdevice, CUdeviceptr, CUevent, CUfunction, CUmemGenericAllocationHandle, CUmodule,
    CUstream,
};

/// A driver call that failed: which call, and the `CUresult` it returned.
///
/// `Display` renders the driver's own name and description of the code (`cuGetErrorName`,
/// `cuGetErrorString`), falling back to this crate's table when the driver library does not know
/// the code. When the call never reached the driver (the library is not loaded, or it lacks the
/// entry point: an older driver), it says that instead; see [`DriverError::missing_entry_point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DriverError {
    call: &'static str,
    code: u32,
    unavailable: Option<sys::Unavailable>,
}

impl DriverError {
    /// An error of `call` with the raw `CUresult` value `code`.
    ///
    /// A `CUDA_ERROR_NOT_FOUND` of a call whose entry point the loaded driver lacks (or of any
    /// call when the library could not be loaded) is recorded as such.
    pub fn new(call: &'static str, code: u32) -> Self {
        let unavailable = if code == codes::NOT_FOUND {
            sys::missing_entry_point(call)
        } else {
            None
        };
        Self {
            call,
            code,
            unavailable,
        }
    }
    /// The driver symbol that `call` needs and the loaded driver library does not export (it is
    /// older than this crate needs), e.g. `cuDeviceGetUuid_v2`.
    pub fn missing_entry_point(&self) -> Option<&'static str> {
        match self.unavailable {
            Some(sys::Unavailable::EntryPoint(symbol)) => Some(symbol),
            _ => None,
        }
    }
    /// Whether the call failed because the driver library could not be loaded at all.
    pub fn is_driver_not_loaded(&self) -> bool {
        self.unavailable == Some(sys::Unavailable::NoLibrary)
    }
    /// The driver call that failed, e.g. `"cuIpcOpenMemHandle"`.
    pub fn call(&self) -> &'static str {
        self.call
    }
    /// The raw `CUresult` value.
    pub fn code(&self) -> u32 {
        self.code
    }
    /// The code's name, e.g. `CUDA_ERROR_INVALID_CONTEXT`; `CUDA_ERROR_<n>` for a code that
    /// neither this crate nor the driver knows.
    pub fn name(&self) -> String {
        if let Some(name) = code_name(self.code) {
            return name.to_string();
        }
        driver_error_name(self.code).unwrap_or_else(|| format!("CUDA_ERROR_{}", self.code))
    }
    /// The driver's description of the code, if the driver knows it.
    pub fn description(&self) -> Option<String> {
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: `text` is a valid out-pointer; on success the driver stores a pointer to a
        // static NUL-terminated string, which we copy before returning.
        let rc = unsafe { sys::cuGetErrorString(sys::CUresultCode(self.code), &mut text) };
        if rc != sys::CUresultCode::SUCCESS || text.is_null() {
            return None;
        }
        // SAFETY: checked non-null above; the driver's strings are static and NUL-terminated.
        Some(
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned(),
        )
    }
    /// Whether this is the given code (see [`codes`]).
    pub fn is(&self, code: u32) -> bool {
        self.code == code
    }
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unavailable {
            Some(sys::Unavailable::EntryPoint(symbol)) => {
                return write!(
                    f,
                    "{} failed: the NVIDIA driver library ({}) has no entry point {symbol}, which \
                     this call needs (reported as CUDA_ERROR_NOT_FOUND, 500): the driver is older \
                     than cuda-ipc requires; install a newer NVIDIA driver (CUDA 12.0 or newer)",
                    self.call,
                    sys::driver().map_or("libcuda", |d| d.library_name()),
                );
            }
            Some(sys::Unavailable::NoLibrary) => {
                write!(
                    f,
                    "{} failed: the NVIDIA driver library could not be loaded (reported as \
                     CUDA_ERROR_NOT_FOUND, 500)",
                    self.call
                )?;
                if let Err(e) = sys::driver() {
                    write!(f, "; looked for {}: {}", e.searched(), e.reason())?;
                }
                return Ok(());
            }
            None => {}
        }
        write!(
            f,
            "{} failed with {} ({})",
            self.call,
            self.name(),
            self.code
        )?;
        if let Some(text) = self.description() {
            write!(f, ": {text}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DriverError {}

fn driver_error_name(code: u32) -> Option<String> {
    let mut name: *const c_char = std::ptr::null();
    // SAFETY: `name` is a valid out-pointer; see `description`.
    let rc = unsafe { sys::cuGetErrorName(sys::CUresultCode(code), &mut name) };
    if rc != sys::CUresultCode::SUCCESS || name.is_null() {
        return None;
    }
    // SAFETY: checked non-null; static NUL-terminated string owned by the driver.
    Some(
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// `CUresult` values this crate's calls can return, by name (cuda.h of CUDA 13.0).
pub mod codes {
    #![allow(missing_docs)]
    pub const SUCCESS: u32 = 0;
    pub const INVALID_VALUE: u32 = 1;
    pub const OUT_OF_MEMORY: u32 = 2;
    pub const NOT_INITIALIZED: u32 = 3;
    pub const DEINITIALIZED: u32 = 4;
    pub const STUB_LIBRARY: u32 = 34;
    pub const DEVICE_UNAVAILABLE: u32 = 46;
    pub const NO_DEVICE: u32 = 100;
    pub const INVALID_DEVICE: u32 = 101;
    pub const DEVICE_NOT_LICENSED: u32 = 102;
    pub const INVALID_IMAGE: u32 = 200;
    pub const INVALID_CONTEXT: u32 = 201;
    pub const MAP_FAILED: u32 = 205;
    pub const UNMAP_FAILED: u32 = 206;
    pub const ALREADY_MAPPED: u32 = 208;
    pub const NO_BINARY_FOR_GPU: u32 = 209;
    pub const NOT_MAPPED: u32 = 211;
    pub const ECC_UNCORRECTABLE: u32 = 214;
    pub const CONTEXT_ALREADY_IN_USE: u32 = 216;
    pub const PEER_ACCESS_UNSUPPORTED: u32 = 217;
    pub const INVALID_PTX: u32 = 218;
    pub const NVLINK_UNCORRECTABLE: u32 = 220;
    pub const JIT_COMPILER_NOT_FOUND: u32 = 221;
    pub const UNSUPPORTED_PTX_VERSION: u32 = 222;
    pub const JIT_COMPILATION_DISABLED: u32 = 223;
    pub const FILE_NOT_FOUND: u32 = 301;
    pub const OPERATING_SYSTEM: u32 = 304;
    pub const INVALID_HANDLE: u32 = 400;
    pub const ILLEGAL_STATE: u32 = 401;
    pub const NOT_FOUND: u32 = 500;
    pub const NOT_READY: u32 = 600;
    pub const ILLEGAL_ADDRESS: u32 = 700;
    pub const LAUNCH_OUT_OF_RESOURCES: u32 = 701;
    pub const LAUNCH_TIMEOUT: u32 = 702;
    pub const PEER_ACCESS_ALREADY_ENABLED: u32 = 704;
    pub const PEER_ACCESS_NOT_ENABLED: u32 = 705;
    pub const CONTEXT_IS_DESTROYED: u32 = 709;
    pub const TOO_MANY_PEERS: u32 = 711;
    pub const ILLEGAL_INSTRUCTION: u32 = 715;
    pub const MISALIGNED_ADDRESS: u32 = 716;
    pub const LAUNCH_FAILED: u32 = 719;
    pub const NOT_PERMITTED: u32 = 800;
    pub const NOT_SUPPORTED: u32 = 801;
    pub const SYSTEM_NOT_READY: u32 = 802;
    pub const SYSTEM_DRIVER_MISMATCH: u32 = 803;
    pub const COMPAT_NOT_SUPPORTED_ON_DEVICE: u32 = 804;
    pub const UNKNOWN: u32 = 999;
}

/// Every code in [`codes`] with its cuda.h name.
pub const KNOWN_CODES: &[(u32, &str)] = &[
    (codes::SUCCESS, "CUDA_SUCCESS"),
    (codes::INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE"),
    (codes::OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY"),
    (codes::NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED"),
    (codes::DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED"),
    (codes::STUB_LIBRARY, "CUDA_ERROR_STUB_LIBRARY"),
    (codes::DEVICE_UNAVAILABLE, "CUDA_ERROR_DEVICE_UNAVAILABLE"),
    (codes::NO_DEVICE, "CUDA_ERROR_NO_DEVICE"),
    (codes::INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE"),
    (codes::DEVICE_NOT_LICENSED, "CUDA_ERROR_DEVICE_NOT_LICENSED"),
    (codes::INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE"),
    (codes::INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT"),
    (codes::MAP_FAILED, "CUDA_ERROR_MAP_FAILED"),
    (codes::UNMAP_FAILED, "CUDA_ERROR_UNMAP_FAILED"),
    (codes::ALREADY_MAPPED, "CUDA_ERROR_ALREADY_MAPPED"),
    (codes::NO_BINARY_FOR_GPU, "CUDA_ERROR_NO_BINARY_FOR_GPU"),
    (codes::NOT_MAPPED, "CUDA_ERROR_NOT_MAPPED"),
    (codes::ECC_UNCORRECTABLE, "CUDA_ERROR_ECC_UNCORRECTABLE"),
    (
        codes::CONTEXT_ALREADY_IN_USE,
        "CUDA_ERROR_CONTEXT_ALREADY_IN_USE",
    ),
    (
        codes::PEER_ACCESS_UNSUPPORTED,
        "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED",
    ),
    (codes::INVALID_PTX, "CUDA_ERROR_INVALID_PTX"),
    (
        codes::NVLINK_UNCORRECTABLE,
        "CUDA_ERROR_NVLINK_UNCORRECTABLE",
    ),
    (
        codes::JIT_COMPILER_NOT_FOUND,
        "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
    ),
    (
        codes::UNSUPPORTED_PTX_VERSION,
        "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
    ),
    (
        codes::JIT_COMPILATION_DISABLED,
        "CUDA_ERROR_JIT_COMPILATION_DISABLED",
    ),
    (codes::FILE_NOT_FOUND, "CUDA_ERROR_FILE_NOT_FOUND"),
    (codes::OPERATING_SYSTEM, "CUDA_ERROR_OPERATING_SYSTEM"),
    (codes::INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE"),
    (codes::ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE"),
    (codes::NOT_FOUND, "CUDA_ERROR_NOT_FOUND"),
    (codes::NOT_READY, "CUDA_ERROR_NOT_READY"),
    (codes::ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS"),
    (
        codes::LAUNCH_OUT_OF_RESOURCES,
        "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
    ),
    (codes::LAUNCH_TIMEOUT, "CUDA_ERROR_LAUNCH_TIMEOUT"),
    (
        codes::PEER_ACCESS_ALREADY_ENABLED,
        "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED",
    ),
    (
        codes::PEER_ACCESS_NOT_ENABLED,
        "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED",
    ),
    (
        codes::CONTEXT_IS_DESTROYED,
        "CUDA_ERROR_CONTEXT_IS_DESTROYED",
    ),
    (codes::TOO_MANY_PEERS, "CUDA_ERROR_TOO_MANY_PEERS"),
    (codes::ILLEGAL_INSTRUCTION, "CUDA_ERROR_ILLEGAL_INSTRUCTION"),
    (codes::MISALIGNED_ADDRESS, "CUDA_ERROR_MISALIGNED_ADDRESS"),
    (codes::LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED"),
    (codes::NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED"),
    (codes::NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED"),
    (codes::SYSTEM_NOT_READY, "CUDA_ERROR_SYSTEM_NOT_READY"),
    (
        codes::SYSTEM_DRIVER_MISMATCH,
        "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    ),
    (
        codes::COMPAT_NOT_SUPPORTED_ON_DEVICE,
        "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
    ),
    (codes::UNKNOWN, "CUDA_ERROR_UNKNOWN"),
];

/// The cuda.h name of `code`, if this crate knows it.
pub fn code_name(code: u32) -> Option<&'static str> {
    KNOWN_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
}

/// Result of a driver call.
pub type DriverResult<T> = Result<T, DriverError>;

#[inline]
fn check(call: &'static str, rc: sys::CUresultCode) -> DriverResult<()> {
    if rc == sys::CUresultCode::SUCCESS {
        Ok(())
    } else {
        Err(DriverError::new(call, rc.0))
    }
}

// ---- initialisation and devices -------------------------------------------------------------

/// Opens the driver library if that has not been tried yet ([`sys::driver`]): `Ok` with the name
/// that opened it, or what was searched and why nothing could be opened.
pub fn load_driver() -> Result<&'static str, &'static sys::DriverLibraryError> {
    sys::driver().map(|driver| driver.library_name())
}

/// `cuInit(0)`.
pub fn init() -> DriverResult<()> {
    // SAFETY: cuInit takes no pointers and may be called any number of times.
    check("cuInit", unsafe { sys::cuInit(0) })
}

/// `cuDriverGetVersion`: e.g. 13000 for CUDA 13.0.
pub fn driver_version() -> DriverResult<i32> {
    let mut v: c_int = 0;
    // SAFETY: valid out-pointer.
    check("cuDriverGetVersion", unsafe {
        sys::cuDriverGetVersion(&mut v)
    })?;
    Ok(v)
}

/// `cuDeviceGetCount`.
pub fn device_count() -> DriverResult<i32> {
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer.
    check("cuDeviceGetCount", unsafe { sys::cuDeviceGetCount(&mut n) })?;
    Ok(n)
}

/// `cuDeviceGet`.
pub fn device_get(ordinal: i32) -> DriverResult<CUdevice> {
    let mut d: CUdevice = 0;
    // SAFETY: valid out-pointer; the driver checks the ordinal.
    check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut d, ordinal) })?;
    Ok(d)
}

/// `cuDeviceGetName`.
pub fn device_name(dev: CUdevice) -> DriverResult<String> {
    let mut buf = [0 as c_char; 256];
    // SAFETY: the buffer is 256 bytes and we pass its length; the driver NUL-terminates.
    check("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as c_int, dev)
    })?;
    Ok(c_chars_to_string(&buf))
}

/// `cuDeviceGetUuid_v2`: the 16 raw bytes.
pub fn device_uuid(dev: CUdevice) -> DriverResult<[u8; 16]> {
    let mut uuid = sys::CUuuid { bytes: [0; 16] };
    // SAFETY: valid out-pointer to a 16-byte struct.
    check("cuDeviceGetUuid", unsafe {
        sys::cuDeviceGetUuid_v2(&mut uuid, dev)
    })?;
    Ok(uuid.bytes.map(|b| b as u8))
}

/// `cuDeviceGetPCIBusId`, e.g. `0000:18:00.0`.
pub fn device_pci_bus_id(dev: CUdevice) -> DriverResult<String> {
    let mut buf = [0 as c_char; 64];
    // SAFETY: the buffer is 64 bytes and we pass its length; the driver NUL-terminates.
    check("cuDeviceGetPCIBusId", unsafe {
        sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as c_int, dev)
    })?;
    Ok(c_chars_to_string(&buf))
}

/// `cuDeviceTotalMem_v2`.
pub fn device_total_mem(dev: CUdevice) -> DriverResult<usize> {
    let mut bytes = 0usize;
    // SAFETY: valid out-pointer.
    check("cuDeviceTotalMem", unsafe {
        sys::cuDeviceTotalMem_v2(&mut bytes, dev)
    })?;
    Ok(bytes)
}

/// `cuDeviceGetAttribute` with a raw attribute number (see [`crate::sys::attribute`]).
pub fn device_attribute(dev: CUdevice, attribute: i32) -> DriverResult<i32> {
    let mut v: c_int = 0;
    // SAFETY: valid out-pointer; the driver checks the attribute number.
    check("cuDeviceGetAttribute", unsafe {
        sys::cuDeviceGetAttribute(&mut v, attribute, dev)
    })?;
    Ok(v)
}

/// `cuDeviceCanAccessPeer`.
pub fn device_can_access_peer(dev: CUdevice, peer: CUdevice) -> DriverResult<bool> {
    let mut v: c_int = 0;
    // SAFETY: valid out-pointer.
    check("cuDeviceCanAccessPeer", unsafe {
        sys::cuDeviceCanAccessPeer(&mut v, dev, peer)
    })?;
    Ok(v != 0)
}

fn c_chars_to_string(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---- contexts -------------------------------------------------------------------------------

/// `cuDevicePrimaryCtxRetain`.
pub fn primary_ctx_retain(dev: CUdevice) -> DriverResult<CUcontext> {
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    check("cuDevicePrimaryCtxRetain", unsafe {
        sys::cuDevicePrimaryCtxRetain(&mut ctx, dev)
    })?;
    Ok(ctx)
}

/// `cuDevicePrimaryCtxRelease_v2`.
///
/// # Safety
/// Each call must match one successful [`primary_ctx_retain`] of `dev`; nothing may use the
/// context afterwards unless another retain keeps it alive.
pub unsafe fn primary_ctx_release(dev: CUdevice) -> DriverResult<()> {
    // SAFETY: the caller pairs this with a retain.
    check("cuDevicePrimaryCtxRelease", unsafe {
        sys::cuDevicePrimaryCtxRelease_v2(dev)
    })
}

/// `cuCtxGetCurrent`.
pub fn ctx_get_current() -> DriverResult<CUcontext> {
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    check("cuCtxGetCurrent", unsafe { sys::cuCtxGetCurrent(&mut ctx) })?;
    Ok(ctx)
}

/// `cuCtxSetCurrent`.
///
/// # Safety
/// `ctx` must be a live context (or null).
pub unsafe fn ctx_set_current(ctx: CUcontext) -> DriverResult<()> {
    // SAFETY: the caller guarantees `ctx` is live or null.
    check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(ctx) })
}

/// `cuCtxSynchronize` on the current context.
pub fn ctx_synchronize() -> DriverResult<()> {
    // SAFETY: no arguments; fails cleanly without a current context.
    check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
}

/// `cuCtxEnablePeerAccess`: lets the current context access memory of `peer`'s device.
///
/// # Safety
/// `peer` must be a live context.
pub unsafe fn ctx_enable_peer_access(peer: CUcontext) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuCtxEnablePeerAccess", unsafe {
        sys::cuCtxEnablePeerAccess(peer, 0)
    })
}

// ---- memory ---------------------------------------------------------------------------------

/// `cuMemGetInfo_v2`: (free, total) bytes of the current context's device.
pub fn mem_get_info() -> DriverResult<(usize, usize)> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: valid out-pointers.
    check("cuMemGetInfo", unsafe {
        sys::cuMemGetInfo_v2(&mut free, &mut total)
    })?;
    Ok((free, total))
}

/// `cuMemAlloc_v2` in the current context.
pub fn mem_alloc(bytes: usize) -> DriverResult<CUdeviceptr> {
    let mut ptr: CUdeviceptr = 0;
    // SAFETY: valid out-pointer; the driver checks the size.
    check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) })?;
    Ok(ptr)
}

/// `cuMemFree_v2`.
///
/// # Safety
/// `ptr` must come from [`mem_alloc`], not be freed yet, and no work may still use it.
pub unsafe fn mem_free(ptr: CUdeviceptr) -> DriverResult<()> {
    // SAFETY: the caller guarantees ownership of a live allocation.
    check("cuMemFree", unsafe { sys::cuMemFree_v2(ptr) })
}

/// `cuMemGetAddressRange_v2`: (base, size) of the allocation holding `ptr`.
pub fn mem_get_address_range(ptr: CUdeviceptr) -> DriverResult<(CUdeviceptr, usize)> {
    let (mut base, mut size) = (0 as CUdeviceptr, 0usize);
    // SAFETY: valid out-pointers; the driver checks `ptr`.
    check("cuMemGetAddressRange", unsafe {
        sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr)
    })?;
    Ok((base, size))
}

/// `cuMemcpyHtoDAsync_v2`.
///
/// # Safety
/// `dst` must be valid device memory of at least `bytes` bytes, and `src` readable for `bytes`
/// and unchanged until the stream reaches the copy.
pub unsafe fn memcpy_htod_async(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
    stream: CUstream,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemcpyHtoDAsync", unsafe {
        sys::cuMemcpyHtoDAsync_v2(dst, src, bytes, stream)
    })
}

/// `cuMemcpyDtoHAsync_v2`.
///
/// # Safety
/// `src` must be valid device memory of at least `bytes` bytes, and `dst` writable for `bytes`
/// and untouched until the stream reaches the copy.
pub unsafe fn memcpy_dtoh_async(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemcpyDtoHAsync", unsafe {
        sys::cuMemcpyDtoHAsync_v2(dst, src, bytes, stream)
    })
}

/// `cuMemcpyDtoDAsync_v2`.
///
/// # Safety
/// Both ranges must be valid device memory of at least `bytes` bytes until the stream reaches
/// the copy.
pub unsafe fn memcpy_dtod_async(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemcpyDtoDAsync", unsafe {
        sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, stream)
    })
}

/// `cuMemcpyPeerAsync`.
///
/// # Safety
/// `dst` must be valid memory of `dst_ctx` and `src` of `src_ctx`, each of at least `bytes`
/// bytes, both live until the stream reaches the copy.
pub unsafe fn memcpy_peer_async(
    dst: CUdeviceptr,
    dst_ctx: CUcontext,
    src: CUdeviceptr,
    src_ctx: CUcontext,
    bytes: usize,
    stream: CUstream,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemcpyPeerAsync", unsafe {
        sys::cuMemcpyPeerAsync(dst, dst_ctx, src, src_ctx, bytes, stream)
    })
}

/// `cuMemsetD8Async`.
///
/// # Safety
/// `dst` must be valid device memory of at least `count` bytes until the stream reaches it.
pub unsafe fn memset_d8_async(
    dst: CUdeviceptr,
    value: u8,
    count: usize,
    stream: CUstream,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemsetD8Async", unsafe {
        sys::cuMemsetD8Async(dst, value, count, stream)
    })
}

// ---- streams and events ---------------------------------------------------------------------

/// `cuStreamCreate(CU_STREAM_DEFAULT)` in the current context.
pub fn stream_create() -> DriverResult<CUstream> {
    let mut s: CUstream = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    check("cuStreamCreate", unsafe {
        sys::cuStreamCreate(&mut s, sys::STREAM_DEFAULT)
    })?;
    Ok(s)
}

/// `cuMemHostAlloc(bytes, CU_MEMHOSTALLOC_PORTABLE)`: page-locked host memory, in the current
/// context's process (pinned for every context).
pub fn mem_host_alloc(bytes: usize) -> DriverResult<*mut c_void> {
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    check("cuMemHostAlloc", unsafe {
        sys::cuMemHostAlloc(&mut p, bytes, sys::MEMHOSTALLOC_PORTABLE)
    })?;
    Ok(p)
}

/// `cuMemFreeHost`.
///
/// # Safety
/// `p` must come from [`mem_host_alloc`], be freed once, and no copy may use it any more.
pub unsafe fn mem_free_host(p: *mut c_void) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemFreeHost", unsafe { sys::cuMemFreeHost(p) })
}

/// `cuCtxGetId` (CUDA 12.0): an id of `ctx` never reused in this process, unlike its address
/// (a destroyed and re-created primary context may get the same one).
///
/// # Safety
/// `ctx` must be a live context.
pub unsafe fn ctx_get_id(ctx: CUcontext) -> DriverResult<u64> {
    let mut id: std::os::raw::c_ulonglong = 0;
    // SAFETY: valid out-pointer; the context's liveness is forwarded to the caller.
    check("cuCtxGetId", unsafe { sys::cuCtxGetId(ctx, &mut id) })?;
    Ok(id)
}

/// `cuStreamCreate` with `CU_STREAM_NON_BLOCKING`: a stream that does not synchronize with the
/// legacy default stream.
pub fn stream_create_non_blocking() -> DriverResult<CUstream> {
    let mut s: CUstream = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    check("cuStreamCreate", unsafe {
        sys::cuStreamCreate(&mut s, sys::STREAM_NON_BLOCKING)
    })?;
    Ok(s)
}

/// `cuStreamDestroy_v2`.
///
/// # Safety
/// `stream` must be a live stream that is not used afterwards.
pub unsafe fn stream_destroy(stream: CUstream) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuStreamDestroy", unsafe {
        sys::cuStreamDestroy_v2(stream)
    })
}

/// `cuStreamSynchronize`.
///
/// # Safety
/// `stream` must be a live stream (or null for the legacy default stream).
pub unsafe fn stream_synchronize(stream: CUstream) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuStreamSynchronize", unsafe {
        sys::cuStreamSynchronize(stream)
    })
}

/// `cuStreamWaitEvent`.
///
/// # Safety
/// `stream` and `event` must be live.
pub unsafe fn stream_wait_event(stream: CUstream, event: CUevent) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuStreamWaitEvent", unsafe {
        sys::cuStreamWaitEvent(stream, event, 0)
    })
}

/// `cuStreamWriteValue32_v2`.
///
/// # Safety
/// `stream` must be live and `addr` a valid, 4-byte aligned device address until the stream
/// reaches the write.
pub unsafe fn stream_write_value32(
    stream: CUstream,
    addr: CUdeviceptr,
    value: u32,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuStreamWriteValue32", unsafe {
        sys::cuStreamWriteValue32_v2(stream, addr, value, sys::STREAM_WRITE_VALUE_DEFAULT)
    })
}

/// `cuStreamWaitValue32_v2` with `CU_STREAM_WAIT_VALUE_GEQ` (wrapping comparison).
///
/// # Safety
/// As [`stream_write_value32`].
pub unsafe fn stream_wait_value32_geq(
    stream: CUstream,
    addr: CUdeviceptr,
    value: u32,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuStreamWaitValue32", unsafe {
        sys::cuStreamWaitValue32_v2(stream, addr, value, sys::STREAM_WAIT_VALUE_GEQ)
    })
}

/// `cuStreamWriteValue64_v2`.
///
/// # Safety
/// `stream` must be live and `addr` a valid, 8-byte aligned device address (device memory, or
/// registered host memory's device address) until the stream reaches the write.
pub unsafe fn stream_write_value64(
    stream: CUstream,
    addr: CUdeviceptr,
    value: u64,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuStreamWriteValue64", unsafe {
        sys::cuStreamWriteValue64_v2(stream, addr, value, sys::STREAM_WRITE_VALUE_DEFAULT)
    })
}

/// `cuStreamWaitValue64_v2` with `CU_STREAM_WAIT_VALUE_GEQ` (wrapping comparison: the stream
/// waits until `(int64_t)(*addr - value) >= 0`).
///
/// # Safety
/// As [`stream_write_value64`].
pub unsafe fn stream_wait_value64_geq(
    stream: CUstream,
    addr: CUdeviceptr,
    value: u64,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuStreamWaitValue64", unsafe {
        sys::cuStreamWaitValue64_v2(stream, addr, value, sys::STREAM_WAIT_VALUE_GEQ)
    })
}

/// Most operations one `cuStreamBatchMemOp` takes ("must be less than 256").
pub const MAX_BATCH_MEM_OPS: usize = 255;

/// `cuStreamBatchMemOp_v2` of `CU_STREAM_MEM_OP_WRITE_VALUE_64` operations (default flags,
/// each with its memory barrier, as [`stream_write_value64`]): the stream writes each
/// `(address, value)` in order, as that many [`stream_write_value64`] calls would, with one
/// driver call per [`MAX_BATCH_MEM_OPS`] writes. Nothing is queued for an empty list; on an
/// error, some chunks may be queued and later ones not.
///
/// # Safety
/// As [`stream_write_value64`], for every address.
pub unsafe fn stream_write_values64(
    stream: CUstream,
    writes: &[(CUdeviceptr, u64)],
) -> DriverResult<()> {
    let mut ops = [sys::StreamMemOpWrite64::default(); MAX_BATCH_MEM_OPS];
    for chunk in writes.chunks(MAX_BATCH_MEM_OPS) {
        for (op, &(address, value)) in ops.iter_mut().zip(chunk) {
            *op = sys::StreamMemOpWrite64 {
                operation: sys::STREAM_MEM_OP_WRITE_VALUE_64,
                address,
                value,
                flags: sys::STREAM_WRITE_VALUE_DEFAULT,
                alias: 0,
                pad: 0,
            };
        }
        // SAFETY: `ops[..chunk.len()]` is a valid array of that many write operations laid out
        // as cuda.h's union (checked in sys); the addresses meet the caller's contract.
        check("cuStreamBatchMemOp", unsafe {
            sys::cuStreamBatchMemOp_v2(
                stream,
                chunk.len() as std::os::raw::c_uint,
                ops.as_mut_ptr(),
                0,
            )
        })?;
    }
    Ok(())
}

/// `cuMemHostRegister_v2(p, bytes, PORTABLE | DEVICEMAP)` then `cuMemHostGetDevicePointer_v2`:
/// page-locks `bytes` of host memory at `p` and returns its device address (valid in every
/// context of the process: unified addressing).
///
/// # Safety
/// `p..p + bytes` must be a page-aligned mapping of this process that stays mapped until
/// [`mem_host_unregister`].
pub unsafe fn mem_host_register(p: *mut c_void, bytes: usize) -> DriverResult<CUdeviceptr> {
    // SAFETY: forwarded to the caller.
    check("cuMemHostRegister", unsafe {
        sys::cuMemHostRegister_v2(
            p,
            bytes,
            sys::MEMHOSTREGISTER_PORTABLE | sys::MEMHOSTREGISTER_DEVICEMAP,
        )
    })?;
    let mut d: CUdeviceptr = 0;
    // SAFETY: `p` was registered just above; valid out-pointer.
    let got = check("cuMemHostGetDevicePointer", unsafe {
        sys::cuMemHostGetDevicePointer_v2(&mut d, p, 0)
    });
    match got {
        Ok(()) => Ok(d),
        Err(e) => {
            // SAFETY: registered above, nothing uses it yet.
            let _ = unsafe { mem_host_unregister(p) };
            Err(e)
        }
    }
}

/// `cuMemHostUnregister`.
///
/// # Safety
/// `p` must have been registered by [`mem_host_register`], and no queued GPU work may still
/// use its device address.
pub unsafe fn mem_host_unregister(p: *mut c_void) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemHostUnregister", unsafe {
        sys::cuMemHostUnregister(p)
    })
}

/// `cuEventCreate`. `interprocess` adds `CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING`.
pub fn event_create(timing: bool, interprocess: bool) -> DriverResult<CUevent> {
    let mut flags = if timing {
        sys::EVENT_DEFAULT
    } else {
        sys::EVENT_DISABLE_TIMING
    };
    if interprocess {
        flags |= sys::EVENT_INTERPROCESS | sys::EVENT_DISABLE_TIMING;
    }
    let mut e: CUevent = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    check("cuEventCreate", unsafe {
        sys::cuEventCreate(&mut e, flags)
    })?;
    Ok(e)
}

/// `cuEventDestroy_v2`.
///
/// # Safety
/// `event` must be live and not used afterwards.
pub unsafe fn event_destroy(event: CUevent) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuEventDestroy", unsafe { sys::cuEventDestroy_v2(event) })
}

/// `cuEventRecord`.
///
/// # Safety
/// `event` and `stream` must be live and of the same context.
pub unsafe fn event_record(event: CUevent, stream: CUstream) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuEventRecord", unsafe {
        sys::cuEventRecord(event, stream)
    })
}

/// `cuEventSynchronize`.
///
/// # Safety
/// `event` must be live.
pub unsafe fn event_synchronize(event: CUevent) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuEventSynchronize", unsafe {
        sys::cuEventSynchronize(event)
    })
}

/// `cuEventQuery`: `Ok(true)` when complete, `Ok(false)` on `CUDA_ERROR_NOT_READY`.
///
/// # Safety
/// `event` must be live.
pub unsafe fn event_query(event: CUevent) -> DriverResult<bool> {
    // SAFETY: forwarded to the caller.
    let rc = unsafe { sys::cuEventQuery(event) };
    match rc.0 {
        codes::SUCCESS => Ok(true),
        codes::NOT_READY => Ok(false),
        code => Err(DriverError::new("cuEventQuery", code)),
    }
}

/// `cuEventElapsedTime` in milliseconds.
///
/// # Safety
/// Both events must be live timing events.
pub unsafe fn event_elapsed_ms(start: CUevent, end: CUevent) -> DriverResult<f32> {
    let mut ms = 0f32;
    // SAFETY: valid out-pointer; events forwarded to the caller.
    check("cuEventElapsedTime", unsafe {
        sys::cuEventElapsedTime(&mut ms, start, end)
    })?;
    Ok(ms)
}

// ---- modules and launches -------------------------------------------------------------------

/// `cuModuleUnload`.
///
/// # Safety
/// `module` must be live and none of its functions used afterwards.
pub unsafe fn module_unload(module: CUmodule) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuModuleUnload", unsafe { sys::cuModuleUnload(module) })
}

/// `cuModuleGetFunction`.
///
/// # Safety
/// `module` must be live.
pub unsafe fn module_get_function(module: CUmodule, name: &CStr) -> DriverResult<CUfunction> {
    let mut f: CUfunction = std::ptr::null_mut();
    // SAFETY: valid out-pointer, NUL-terminated name; module forwarded to the caller.
    check("cuModuleGetFunction", unsafe {
        sys::cuModuleGetFunction(&mut f, module, name.as_ptr())
    })?;
    Ok(f)
}

// ---- legacy IPC -----------------------------------------------------------------------------

/// `cuIpcGetMemHandle`: the 64 handle bytes of an allocation made by [`mem_alloc`].
pub fn ipc_get_mem_handle(ptr: CUdeviceptr) -> DriverResult<[u8; 64]> {
    let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
    // SAFETY: valid out-pointer; the driver checks `ptr`.
    check("cuIpcGetMemHandle", unsafe {
        sys::cuIpcGetMemHandle(&mut h, ptr)
    })?;
    Ok(h.reserved.map(|b| b as u8))
}

/// `cuIpcOpenMemHandle_v2` with `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`, in the current context.
///
/// # Safety
/// The handle bytes are untrusted input the driver validates, but the memory they name is
/// shared: the caller must not assume anything about its contents or lifetime beyond what the
/// exporter promises, and must close the mapping with [`ipc_close_mem_handle`].
pub unsafe fn ipc_open_mem_handle(handle: &[u8; 64]) -> DriverResult<CUdeviceptr> {
    let h = sys::CUipcMemHandle {
        reserved: handle.map(|b| b as c_char),
    };
    let mut ptr: CUdeviceptr = 0;
    // SAFETY: valid out-pointer; the handle is passed by value.
    check("cuIpcOpenMemHandle", unsafe {
        sys::cuIpcOpenMemHandle_v2(&mut ptr, h, sys::IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
    })?;
    Ok(ptr)
}

/// `cuIpcCloseMemHandle`.
///
/// # Safety
/// `ptr` must come from [`ipc_open_mem_handle`] and not be used afterwards.
pub unsafe fn ipc_close_mem_handle(ptr: CUdeviceptr) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuIpcCloseMemHandle", unsafe {
        sys::cuIpcCloseMemHandle(ptr)
    })
}

// ---- virtual memory management (VMM) --------------------------------------------------------

/// Pinned device memory on `ordinal`, exportable as a POSIX file descriptor.
fn posix_fd_device_prop(ordinal: i32) -> sys::CUmemAllocationProp {
    sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes:
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: ordinal,
        },
        win32HandleMetaData: std::ptr::null_mut(),
        reserved: 0,
    }
}

/// `cuMemGetAllocationGranularity(MINIMUM)` for POSIX-fd-shareable pinned memory on `dev`.
pub fn mem_granularity_posix_fd(dev: CUdevice) -> DriverResult<usize> {
    let prop = posix_fd_device_prop(dev);
    let mut g = 0usize;
    // SAFETY: valid out-pointer and property struct.
    check("cuMemGetAllocationGranularity", unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut g,
            &prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        )
    })?;
    Ok(g)
}

/// `cuMemCreate` of `bytes` (a multiple of the granularity) of pinned memory on `dev`,
/// exportable as a POSIX file descriptor.
pub fn mem_create_posix_fd(
    dev: CUdevice,
    bytes: usize,
) -> DriverResult<CUmemGenericAllocationHandle> {
    let prop = posix_fd_device_prop(dev);
    let mut h: CUmemGenericAllocationHandle = 0;
    // SAFETY: valid out-pointer and property struct.
    check("cuMemCreate", unsafe {
        sys::cuMemCreate(&mut h, bytes, &prop, 0)
    })?;
    Ok(h)
}

/// `cuMemRelease`.
///
/// # Safety
/// `handle` must be a live allocation handle released once; mappings keep their own reference.
pub unsafe fn mem_release(handle: CUmemGenericAllocationHandle) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemRelease", unsafe { sys::cuMemRelease(handle) })
}

/// `cuMemAddressReserve` of `bytes` of virtual address space.
pub fn mem_address_reserve(bytes: usize, alignment: usize) -> DriverResult<CUdeviceptr> {
    let mut p: CUdeviceptr = 0;
    // SAFETY: valid out-pointer; no fixed address requested.
    check("cuMemAddressReserve", unsafe {
        sys::cuMemAddressReserve(&mut p, bytes, alignment, 0, 0)
    })?;
    Ok(p)
}

/// `cuMemAddressFree`.
///
/// # Safety
/// The range must be a whole reservation with nothing mapped in it any more.
pub unsafe fn mem_address_free(ptr: CUdeviceptr, bytes: usize) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemAddressFree", unsafe {
        sys::cuMemAddressFree(ptr, bytes)
    })
}

/// `cuMemMap` of a whole allocation at `ptr`.
///
/// # Safety
/// `ptr..ptr+bytes` must be reserved and unmapped; `handle` live and of `bytes` bytes.
pub unsafe fn mem_map(
    ptr: CUdeviceptr,
    bytes: usize,
    handle: CUmemGenericAllocationHandle,
) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemMap", unsafe {
        sys::cuMemMap(ptr, bytes, 0, handle, 0)
    })
}

/// `cuMemUnmap`.
///
/// # Safety
/// The range must be mapped and no work may still use it.
pub unsafe fn mem_unmap(ptr: CUdeviceptr, bytes: usize) -> DriverResult<()> {
    // SAFETY: forwarded to the caller.
    check("cuMemUnmap", unsafe { sys::cuMemUnmap(ptr, bytes) })
}

/// `cuMemSetAccess`: read-write access for device `dev` to `ptr..ptr+bytes`.
///
/// # Safety
/// The range must be mapped.
pub unsafe fn mem_set_access_rw(ptr: CUdeviceptr, bytes: usize, dev: CUdevice) -> DriverResult<()> {
    let desc = sys::CUmemAccessDesc {
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: dev,
        },
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: one valid descriptor; the range is forwarded to the caller.
    check("cuMemSetAccess", unsafe {
        sys::cuMemSetAccess(ptr, bytes, &desc, 1)
    })
}

/// `cuMemExportToShareableHandle(POSIX_FILE_DESCRIPTOR)`: a new fd the caller owns.
///
/// # Safety
/// `handle` must be a live allocation created with the POSIX fd handle type.
pub unsafe fn mem_export_posix_fd(handle: CUmemGenericAllocationHandle) -> DriverResult<i32> {
    let mut fd: c_int = -1;
    // SAFETY: for POSIX fds the shareable handle is an int; valid out-pointer.
    check("cuMemExportToShareableHandle", unsafe {
        sys::cuMemExportToShareableHandle(
            (&mut fd as *mut c_int).cast(),
            handle,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            0,
        )
    })?;
    Ok(fd)
}

/// `cuMemImportFromShareableHandle(POSIX_FILE_DESCRIPTOR)`. The fd stays the caller's: the
/// driver does not take it over, so the caller closes it.
pub fn mem_import_posix_fd(fd: i32) -> DriverResult<CUmemGenericAllocationHandle> {
    let mut h: CUmemGenericAllocationHandle = 0;
    // SAFETY: for POSIX fds the OS handle is the fd value itself cast to a pointer (as cuda.h
    // documents); the driver validates that it is a CUDA allocation fd.
    check("cuMemImportFromShareableHandle", unsafe {
        sys::cuMemImportFromShareableHandle(
            &mut h,
            fd as isize as *mut c_void,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        )
    })?;
    Ok(h)
}

// ---- user modules and launches (src/module.rs, src/launch.rs) ------------------------------

/// `cuModuleLoadData` of a PTX, cubin or fatbin image, in the current context.
///
/// # Safety
/// `image` must be a complete image the driver can size by itself: NUL-terminated PTX text, or
/// a cubin (ELF) or fatbin whose headers lie within `image` (the driver takes no length and
/// reads as far as the headers say). `image` must be 8-byte aligned.
pub unsafe fn module_load_image(image: &[u8]) -> DriverResult<CUmodule> {
    let mut m: CUmodule = std::ptr::null_mut();
    // SAFETY: valid out-pointer; the image's extent and alignment are forwarded to the caller.
    check("cuModuleLoadData", unsafe {
        sys::cuModuleLoadData(&mut m, image.as_ptr().cast())
    })?;
    Ok(m)
}

/// `cuLaunchKernel` with a 3-D grid and block and `shared_mem_bytes` of dynamic shared memory.
///
/// # Safety
/// `params` must hold one pointer per kernel parameter, each to a value of exactly the type the
/// kernel declares, and every device pointer among them must be valid for what the kernel does
/// until the stream reaches the launch.
pub unsafe fn launch_kernel_3d(
    f: CUfunction,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem_bytes: u32,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> DriverResult<()> {
    let params_ptr = if params.is_empty() {
        std::ptr::null_mut()
    } else {
        params.as_mut_ptr()
    };
    // SAFETY: forwarded to the caller.
    check("cuLaunchKernel", unsafe {
        sys::cuLaunchKernel(
            f,
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            shared_mem_bytes,
            stream,
            params_ptr,
            std::ptr::null_mut(),
        )
    })
}

#[cfg(test)]
mod loader_tests {
    use super::*;

    #[test]
    fn a_missing_entry_point_says_the_driver_is_too_old() {
        let e = DriverError {
            call: "cuDeviceGetUuid",
            code: codes::NOT_FOUND,
            unavailable: Some(sys::Unavailable::EntryPoint("cuDeviceGetUuid_v2")),
        };
        assert_eq!(e.missing_entry_point(), Some("cuDeviceGetUuid_v2"));
        assert!(!e.is_driver_not_loaded());
        let text = e.to_string();
        assert!(
            text.starts_with("cuDeviceGetUuid failed: the NVIDIA driver library"),
            "{text}"
        );
        assert!(
            text.contains("has no entry point cuDeviceGetUuid_v2"),
            "{text}"
        );
        assert!(text.contains("install a newer NVIDIA driver"), "{text}");
    }

    #[test]
    fn not_found_from_a_driver_that_has_the_entry_point_is_a_plain_driver_error() {
        // cuModuleGetFunction returns CUDA_ERROR_NOT_FOUND for an unknown kernel name.
        let e = DriverError::new("cuModuleGetFunction", codes::NOT_FOUND);
        if let Ok(driver) = sys::driver() {
            assert!(driver.missing_entry_points().is_empty());
            assert_eq!(e.missing_entry_point(), None);
            assert!(!e.is_driver_not_loaded());
            assert!(e
                .to_string()
                .starts_with("cuModuleGetFunction failed with CUDA_ERROR_NOT_FOUND (500)"));
        } else {
            assert!(e.is_driver_not_loaded());
        }
    }
}

#[cfg(test)]
mod code_tests {
    //! The code table against the real driver library (no GPU needed).
    use super::*;

    #[test]
    fn every_known_code_has_the_drivers_own_name() {
        let mut unknown_to_driver = Vec::new();
        for &(code, name) in KNOWN_CODES {
            assert_eq!(code_name(code), Some(name));
            match driver_error_name(code) {
                Some(driver_name) => assert_eq!(driver_name, name, "code {code}"),
                None => unknown_to_driver.push(code),
            }
        }
        // The 535 driver of CI knows every code this crate can return.
        assert!(
            unknown_to_driver.is_empty(),
            "the driver does not name codes {unknown_to_driver:?}"
        );
    }

    #[test]
    fn known_codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &(code, name) in KNOWN_CODES {
            assert!(seen.insert(code), "duplicate code {code} ({name})");
        }
    }
}
