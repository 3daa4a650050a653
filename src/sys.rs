//! Raw FFI: the CUDA driver API as `cuda-driver-sys` (CUDA 10.2 bindings) declares it, plus what
//! those bindings lack or get dangerously wrong, called through `libcuda` loaded at run time.
//!
//! Only [`crate::result`] calls anything in here.
//!
//! # Loaded at run time, not linked
//! Nothing here is resolved by the linker: the first call of any function opens
//! `libcuda.so.1` (falling back to `libcuda.so`) with `dlopen` and looks up every entry point
//! once ([`driver`]). So a program using this crate links on a machine without CUDA and starts
//! without the NVIDIA driver; [`driver`] then says what was searched and why it failed, which
//! [`crate::device::init`] turns into [`Error::DriverNotFound`](crate::Error::DriverNotFound).
//! An entry point that an older driver lacks does not fail the load: calling it returns
//! [`CUresultCode::NOT_FOUND`] without calling anything, and [`missing_entry_point`] tells
//! [`crate::result::DriverError`] to say so. The library is never closed: its function pointers
//! are called until the process exits (also by `Drop` code that runs after `main` returns), and
//! `libcuda` does not support being unloaded while it has contexts and threads.
//!
//! # Why the functions are re-declared
//! `cuda-driver-sys` declares every function as returning its Rust `enum cudaError_enum`, which
//! only knows the codes of CUDA 10.2. A newer driver returns codes that enum lacks (for example
//! `CUDA_ERROR_UNSUPPORTED_PTX_VERSION` = 222 or `CUDA_ERROR_STUB_LIBRARY` = 34), and a Rust enum
//! holding a value outside its variants is undefined behaviour. So the functions this crate
//! calls are declared again below with the same C signature but returning [`CUresultCode`], a
//! plain `u32`. The argument types are still those of `cuda-driver-sys`; its own `extern`
//! declarations are never called, so its `-lcuda` resolves to a stub that this crate's build
//! script provides and the linker drops (README, "Design choices"). Where a newer, versioned
//! symbol exists (`_v2`), the comment says why we use it.
#![allow(non_camel_case_types, non_snake_case, missing_docs)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint, c_ulonglong, c_void};
use std::sync::OnceLock;

use crate::loader::Library;

pub use cuda_driver_sys::*;

/// A `CUresult` as the driver returns it: a plain number, whatever the bindings know.
#[repr(transparent)]
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
pub struct CUresultCode(pub u32);

impl CUresultCode {
    /// `CUDA_SUCCESS`.
    pub const SUCCESS: CUresultCode = CUresultCode(0);
    /// `CUDA_ERROR_NOT_FOUND`: also what a function of this module returns, without calling
    /// anything, when the driver library is not loaded or lacks the entry point.
    pub const NOT_FOUND: CUresultCode = CUresultCode(500);
}

/// `CU_DEVICE_ATTRIBUTE_*` values, as plain numbers for [`cuDeviceGetAttribute`]. The first
/// ones exist in the 10.2 bindings too; the last ones are newer (cuda.h of CUDA 12/13).
pub mod attribute {
    pub const MULTIPROCESSOR_COUNT: i32 = 16;
    pub const UNIFIED_ADDRESSING: i32 = 41;
    pub const COMPUTE_CAPABILITY_MAJOR: i32 = 75;
    pub const COMPUTE_CAPABILITY_MINOR: i32 = 76;
    pub const VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED: i32 = 102;
    pub const HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: i32 = 103;
    /// `CU_DEVICE_ATTRIBUTE_MPS_ENABLED` (CUDA 12.x+; 133 in cuda.h of CUDA 13.0): 1 when the
    /// contexts this process creates on the device are shared through an MPS server. An older
    /// driver answers `CUDA_ERROR_INVALID_VALUE`.
    pub const MPS_ENABLED: i32 = 133;
}

/// `CU_STREAM_WAIT_VALUE_GEQ`: wait until `(int32_t)(*addr - value) >= 0`.
pub const STREAM_WAIT_VALUE_GEQ: c_uint = 0x0;
/// `CU_STREAM_WRITE_VALUE_DEFAULT`.
pub const STREAM_WRITE_VALUE_DEFAULT: c_uint = 0x0;
/// `CU_EVENT_DISABLE_TIMING`.
pub const EVENT_DISABLE_TIMING: c_uint = 0x2;
/// `CU_EVENT_INTERPROCESS`.
pub const EVENT_INTERPROCESS: c_uint = 0x4;
/// `CU_EVENT_DEFAULT`.
pub const EVENT_DEFAULT: c_uint = 0x0;
/// `CU_STREAM_DEFAULT`: a blocking stream, ordered with the legacy default stream.
pub const STREAM_DEFAULT: c_uint = 0x0;
/// `CU_MEMHOSTALLOC_PORTABLE`: page-locked memory usable by every context.
pub const MEMHOSTALLOC_PORTABLE: c_uint = 0x1;
/// `CU_MEMHOSTREGISTER_PORTABLE`: registered memory pinned for every context.
pub const MEMHOSTREGISTER_PORTABLE: c_uint = 0x1;
/// `CU_MEMHOSTREGISTER_DEVICEMAP`: registered memory mapped into the device's address space.
pub const MEMHOSTREGISTER_DEVICEMAP: c_uint = 0x2;
/// `CU_STREAM_NON_BLOCKING`: a stream not ordered with the legacy default stream.
pub const STREAM_NON_BLOCKING: c_uint = 0x1;
/// `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`.
pub const IPC_MEM_LAZY_ENABLE_PEER_ACCESS: c_uint = 0x1;
/// `CU_STREAM_MEM_OP_WRITE_VALUE_64`: a [`StreamMemOpWrite64`]'s operation.
pub const STREAM_MEM_OP_WRITE_VALUE_64: c_uint = 5;

/// One element of [`cuStreamBatchMemOp_v2`]'s array, laid out as cuda.h's
/// `CUstreamBatchMemOpParams` union (48 bytes) holding its `writeValue` member: the operation,
/// the device address, the 64-bit value, the flags, and `alias` (for the driver's own use).
/// The bindings of CUDA 10.2 have no such union with 64-bit values, hence this declaration.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamMemOpWrite64 {
    pub operation: c_uint,
    pub address: CUdeviceptr,
    pub value: u64,
    pub flags: c_uint,
    pub alias: CUdeviceptr,
    /// The rest of the union (`cuuint64_t pad[6]`).
    pub pad: u64,
}

// Layout checks for what crosses process boundaries or the FFI by value.
const _: () = assert!(std::mem::size_of::<CUipcMemHandle>() == 64);
const _: () = assert!(std::mem::size_of::<CUipcEventHandle>() == 64);
const _: () = assert!(std::mem::size_of::<CUuuid>() == 16);
const _: () = assert!(std::mem::size_of::<CUdeviceptr>() == 8);
const _: () = assert!(std::mem::size_of::<CUmemAllocationProp>() == 32);
const _: () = assert!(std::mem::size_of::<CUmemAccessDesc>() == 12);
const _: () = assert!(std::mem::size_of::<CUmemLocation>() == 8);
const _: () = assert!(std::mem::size_of::<CUresultCode>() == 4);
const _: () = assert!(std::mem::size_of::<StreamMemOpWrite64>() == 48);
const _: () = assert!(std::mem::offset_of!(StreamMemOpWrite64, address) == 8);
const _: () = assert!(std::mem::offset_of!(StreamMemOpWrite64, value) == 16);
const _: () = assert!(std::mem::offset_of!(StreamMemOpWrite64, flags) == 24);
const _: () = assert!(std::mem::offset_of!(StreamMemOpWrite64, alias) == 32);

// ---- the driver library, loaded at run time --------------------------------------------------

/// The names tried, in order: the driver's ABI name, then the development link (which may be
/// the CUDA toolkit's stub, whose `cuInit` returns `CUDA_ERROR_STUB_LIBRARY`).
pub const LIBRARY_NAMES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// The loaded driver library and its entry points.
#[derive(Debug)]
pub struct Driver {
    library: Library,
    api: Api,
    missing: Vec<&'static str>,
}

impl Driver {
    /// The name that opened the library, e.g. `libcuda.so.1`.
    pub fn library_name(&self) -> &'static str {
        self.library.name()
    }
    /// The entry points this crate declares that the library does not export (an older driver).
    #[cfg(test)]
    pub fn missing_entry_points(&self) -> &[&'static str] {
        &self.missing
    }
}

/// The driver library could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverLibraryError {
    searched: String,
    reason: String,
}

impl DriverLibraryError {
    /// What was looked for, and where: the names and the loader's search path.
    pub fn searched(&self) -> &str {
        &self.searched
    }
    /// The dynamic loader's reason (`dlerror`) for each name.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

static DRIVER: OnceLock<Result<Driver, DriverLibraryError>> = OnceLock::new();

/// The driver library, opened on the first call (by any thread) and kept for the process's
/// lifetime; the same answer on every later call.
pub fn driver() -> Result<&'static Driver, &'static DriverLibraryError> {
    DRIVER.get_or_init(load).as_ref()
}

fn load() -> Result<Driver, DriverLibraryError> {
    match Library::open_first(LIBRARY_NAMES) {
        Ok(library) => {
            let api = Api::resolve(&library);
            let missing = api.missing();
            Ok(Driver {
                library,
                api,
                missing,
            })
        }
        Err(failure) => {
            let path = match std::env::var_os("LD_LIBRARY_PATH") {
                Some(p) => format!("LD_LIBRARY_PATH={:?}", p.to_string_lossy()),
                None => "LD_LIBRARY_PATH unset".to_string(),
            };
            Err(DriverLibraryError {
                searched: format!(
                    "{} in the dynamic loader's search path ({path}, then /etc/ld.so.cache, \
                     /lib and /usr/lib)",
                    failure.names.join(", then ")
                ),
                reason: failure.errors.join("; "),
            })
        }
    }
}

/// Why the entry point behind `call` (e.g. `"cuDeviceGetUuid"`, served by
/// `cuDeviceGetUuid_v2`) could not be called, if it could not. Consults only a load that has
/// already been attempted: it never opens the library itself.
pub fn missing_entry_point(call: &str) -> Option<Unavailable> {
    let is_symbol_of = |symbol: &str| serves(symbol, call);
    match DRIVER.get()? {
        Ok(driver) => driver
            .missing
            .iter()
            .copied()
            .find(|s| is_symbol_of(s))
            .map(Unavailable::EntryPoint),
        Err(_) => ENTRY_POINTS
            .iter()
            .copied()
            .find(|s| is_symbol_of(s))
            .map(|_| Unavailable::NoLibrary),
    }
}

/// Whether the driver symbol `symbol` is the one behind the call named `call`: the same name, or
/// the name with a version suffix (`cuMemAlloc` is served by `cuMemAlloc_v2`).
fn serves(symbol: &str, call: &str) -> bool {
    symbol == call
        || symbol
            .strip_prefix(call)
            .and_then(|rest| rest.strip_prefix("_v"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a driver function could not be called at all.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
pub enum Unavailable {
    /// The driver library could not be loaded ([`driver`] says why).
    NoLibrary,
    /// The loaded driver does not export this symbol: it is older than the call needs.
    EntryPoint(&'static str),
}

/// Declares the driver functions: the table of pointers, its loading, and one `pub unsafe fn`
/// per entry point with the C name and signature, calling through the table.
macro_rules! driver_api {
    ($( $(#[doc = $doc:literal])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?); )*) => {
        /// One pointer per entry point; `None` where the library lacks it.
        #[derive(Debug)]
        struct Api {
            $( $name: Option<unsafe extern "C" fn($($ty),*) -> CUresultCode>, )*
        }

        /// Every entry point this module declares, by symbol name.
        pub const ENTRY_POINTS: &[&str] = &[$(stringify!($name)),*];

        impl Api {
            fn resolve(library: &Library) -> Api {
                Api {
                    $( $name: library
                        .symbol(const {
                            match CStr::from_bytes_with_nul(
                                concat!(stringify!($name), "\0").as_bytes(),
                            ) {
                                Ok(name) => name,
                                Err(_) => panic!("a symbol name has a NUL byte"),
                            }
                        })
                        .map(|address| {
                            // SAFETY: the library exports this symbol as the C function of
                            // this name, whose signature cuda.h declares as written here.
                            unsafe {
                                std::mem::transmute::<
                                    *mut c_void,
                                    unsafe extern "C" fn($($ty),*) -> CUresultCode,
                                >(address.as_ptr())
                            }
                        }), )*
                }
            }

            fn missing(&self) -> Vec<&'static str> {
                let mut missing = Vec::new();
                $( if self.$name.is_none() { missing.push(stringify!($name)); } )*
                missing
            }
        }

        $(
            $(#[doc = $doc])*
            ///
            /// Calls the driver's entry point of this name (see the [module docs](self)); returns
            /// [`CUresultCode::NOT_FOUND`] without calling anything when the driver library is
            /// not loaded or lacks the entry point.
            ///
            /// # Safety
            /// The arguments must meet the contract cuda.h documents for this function: valid
            /// pointers for everything it reads or writes, live handles of the right context.
            #[allow(clippy::too_many_arguments)] // the C signature, as cuda.h declares it
            pub unsafe fn $name($($arg: $ty),*) -> CUresultCode {
                match driver().ok().and_then(|driver| driver.api.$name) {
                    // SAFETY: the caller meets the driver's contract for these arguments, and
                    // the pointer is the library's function of this name and signature.
                    Some(function) => unsafe { function($($arg),*) },
                    None => CUresultCode::NOT_FOUND,
                }
            }
        )*
    };
}

driver_api! {
    fn cuInit(flags: c_uint);
    fn cuDriverGetVersion(version: *mut c_int);
    fn cuGetErrorName(error: CUresultCode, name: *mut *const c_char);
    fn cuGetErrorString(error: CUresultCode, text: *mut *const c_char);

    fn cuDeviceGetCount(count: *mut c_int);
    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int);
    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice);
    /// `_v2` (CUDA 11.4): the UUID nvidia-smi prints, also for MIG instances.
    fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice);
    fn cuDeviceGetPCIBusId(bus_id: *mut c_char, len: c_int, dev: CUdevice);
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice);
    /// Declared with a plain `c_int` attribute so that values newer than the bindings' enum
    /// can be asked for.
    fn cuDeviceGetAttribute(value: *mut c_int, attrib: c_int, dev: CUdevice);
    fn cuDeviceCanAccessPeer(can: *mut c_int, dev: CUdevice, peer: CUdevice);

    fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice);
    /// `_v2` (CUDA 11.0): the symbol current drivers document.
    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice);
    fn cuCtxGetCurrent(ctx: *mut CUcontext);
    fn cuCtxSetCurrent(ctx: CUcontext);
    fn cuCtxSynchronize();
    /// CUDA 12.0: an id unique to one context for the life of the process.
    fn cuCtxGetId(ctx: CUcontext, id: *mut c_ulonglong);
    fn cuCtxEnablePeerAccess(peer: CUcontext, flags: c_uint);

    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize);
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize);
    fn cuMemFree_v2(dptr: CUdeviceptr);
    fn cuMemGetAddressRange_v2(
        base: *mut CUdeviceptr,
        size: *mut usize,
        dptr: CUdeviceptr,
    );
    fn cuMemcpyHtoDAsync_v2(
        dst: CUdeviceptr,
        src: *const c_void,
        bytes: usize,
        stream: CUstream,
    );
    fn cuMemcpyDtoHAsync_v2(
        dst: *mut c_void,
        src: CUdeviceptr,
        bytes: usize,
        stream: CUstream,
    );
    fn cuMemcpyDtoDAsync_v2(
        dst: CUdeviceptr,
        src: CUdeviceptr,
        bytes: usize,
        stream: CUstream,
    );
    fn cuMemcpyPeerAsync(
        dst: CUdeviceptr,
        dst_ctx: CUcontext,
        src: CUdeviceptr,
        src_ctx: CUcontext,
        bytes: usize,
        stream: CUstream,
    );
    /// Page-locked host memory (`CU_MEMHOSTALLOC_PORTABLE`: pinned for every context).
    fn cuMemHostAlloc(pp: *mut *mut c_void, bytes: usize, flags: c_uint);
    fn cuMemFreeHost(p: *mut c_void);
    /// `_v2` (CUDA 4.0): page-locks existing host memory (a shared `memfd` mapping, for the
    /// control words of a channel) and maps it for the device.
    fn cuMemHostRegister_v2(p: *mut c_void, bytes: usize, flags: c_uint);
    fn cuMemHostUnregister(p: *mut c_void);
    /// `_v2` (CUDA 3.2): the device address of registered host memory.
    fn cuMemHostGetDevicePointer_v2(dptr: *mut CUdeviceptr, p: *mut c_void, flags: c_uint);
    fn cuMemsetD8Async(
        dst: CUdeviceptr,
        value: u8,
        count: usize,
        stream: CUstream,
    );

    fn cuStreamCreate(stream: *mut CUstream, flags: c_uint);
    fn cuStreamDestroy_v2(stream: CUstream);
    fn cuStreamSynchronize(stream: CUstream);
    fn cuStreamWaitEvent(stream: CUstream, event: CUevent, flags: c_uint);
    /// `_v2` (CUDA 11.7): stream memory operations without the `NVreg_EnableStreamMemOPs=1`
    /// kernel-module option the first version needed.
    fn cuStreamWriteValue32_v2(
        stream: CUstream,
        addr: CUdeviceptr,
        value: u32,
        flags: c_uint,
    );
    /// `_v2` (CUDA 11.7), see [`cuStreamWriteValue32_v2`].
    fn cuStreamWaitValue32_v2(
        stream: CUstream,
        addr: CUdeviceptr,
        value: u32,
        flags: c_uint,
    );

    /// `_v2` (CUDA 11.7), see [`cuStreamWriteValue32_v2`].
    fn cuStreamWriteValue64_v2(
        stream: CUstream,
        addr: CUdeviceptr,
        value: u64,
        flags: c_uint,
    );
    /// `_v2` (CUDA 11.7), see [`cuStreamWriteValue32_v2`].
    fn cuStreamWaitValue64_v2(
        stream: CUstream,
        addr: CUdeviceptr,
        value: u64,
        flags: c_uint,
    );
    /// `_v2` (CUDA 11.7), see [`cuStreamWriteValue32_v2`]. Declared for write operations
    /// only ([`StreamMemOpWrite64`]), the one kind this crate batches.
    fn cuStreamBatchMemOp_v2(
        stream: CUstream,
        count: c_uint,
        params: *mut StreamMemOpWrite64,
        flags: c_uint,
    );

    fn cuEventCreate(event: *mut CUevent, flags: c_uint);
    fn cuEventDestroy_v2(event: CUevent);
    fn cuEventRecord(event: CUevent, stream: CUstream);
    fn cuEventSynchronize(event: CUevent);
    fn cuEventQuery(event: CUevent);
    fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent);

    fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void);
    fn cuModuleUnload(module: CUmodule);
    fn cuModuleGetFunction(
        function: *mut CUfunction,
        module: CUmodule,
        name: *const c_char,
    );
    fn cuLaunchKernel(
        f: CUfunction,
        grid_x: c_uint,
        grid_y: c_uint,
        grid_z: c_uint,
        block_x: c_uint,
        block_y: c_uint,
        block_z: c_uint,
        shared_bytes: c_uint,
        stream: CUstream,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    );

    fn cuIpcGetMemHandle(handle: *mut CUipcMemHandle, dptr: CUdeviceptr);
    /// `_v2` (CUDA 11.0) is the symbol current headers map `cuIpcOpenMemHandle` to.
    fn cuIpcOpenMemHandle_v2(
        dptr: *mut CUdeviceptr,
        handle: CUipcMemHandle,
        flags: c_uint,
    );
    fn cuIpcCloseMemHandle(dptr: CUdeviceptr);

    fn cuMemGetAllocationGranularity(
        granularity: *mut usize,
        prop: *const CUmemAllocationProp,
        option: CUmemAllocationGranularity_flags,
    );
    fn cuMemCreate(
        handle: *mut CUmemGenericAllocationHandle,
        size: usize,
        prop: *const CUmemAllocationProp,
        flags: c_ulonglong,
    );
    fn cuMemRelease(handle: CUmemGenericAllocationHandle);
    fn cuMemAddressReserve(
        ptr: *mut CUdeviceptr,
        size: usize,
        alignment: usize,
        addr: CUdeviceptr,
        flags: c_ulonglong,
    );
    fn cuMemAddressFree(ptr: CUdeviceptr, size: usize);
    fn cuMemMap(
        ptr: CUdeviceptr,
        size: usize,
        offset: usize,
        handle: CUmemGenericAllocationHandle,
        flags: c_ulonglong,
    );
    fn cuMemUnmap(ptr: CUdeviceptr, size: usize);
    fn cuMemSetAccess(
        ptr: CUdeviceptr,
        size: usize,
        desc: *const CUmemAccessDesc,
        count: usize,
    );
    fn cuMemExportToShareableHandle(
        shareable: *mut c_void,
        handle: CUmemGenericAllocationHandle,
        handle_type: CUmemAllocationHandleType,
        flags: c_ulonglong,
    );
    fn cuMemImportFromShareableHandle(
        handle: *mut CUmemGenericAllocationHandle,
        os_handle: *mut c_void,
        handle_type: CUmemAllocationHandleType,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_served_by_its_symbol_or_a_versioned_one_only() {
        assert!(serves("cuInit", "cuInit"));
        assert!(serves("cuMemAlloc_v2", "cuMemAlloc"));
        assert!(serves("cuDeviceGetUuid_v2", "cuDeviceGetUuid"));
        assert!(!serves("cuMemAllocHost", "cuMemAlloc"));
        assert!(!serves("cuMemAlloc_v", "cuMemAlloc"));
        assert!(!serves("cuMemAlloc_vx", "cuMemAlloc"));
        assert!(!serves("cuMemcpyHtoDAsync_v2", "cuMemcpyHtoD"));
    }

    #[test]
    fn every_call_name_of_result_has_exactly_one_entry_point() {
        // The names result.rs passes to `check` (the C API names without version suffix).
        // `cuMemFree` shares its prefix with `cuMemFreeHost`, which must not serve it.
        for call in [
            "cuInit",
            "cuMemFree",
            "cuMemcpyHtoDAsync",
            "cuDevicePrimaryCtxRelease",
        ] {
            let n = ENTRY_POINTS.iter().filter(|s| serves(s, call)).count();
            assert_eq!(n, 1, "{call}");
        }
        assert!(ENTRY_POINTS.contains(&"cuGetErrorString"));
    }

    #[test]
    fn the_driver_is_loaded_or_says_what_was_searched() {
        match driver() {
            Ok(driver) => assert!(driver.library_name().starts_with("libcuda.so")),
            Err(e) => assert!(e.searched().contains("libcuda.so.1")),
        }
    }

    #[test]
    fn the_driver_library_loads_with_every_entry_point() {
        // CI's 535 driver (and any CUDA 12.0+ driver) exports every symbol this crate declares.
        let driver = driver().expect("the driver library (LD_LIBRARY_PATH)");
        assert!(driver.library_name().starts_with("libcuda.so"));
        assert_eq!(driver.missing_entry_points(), &[] as &[&str]);
    }

    #[test]
    fn ffi_layouts_match_cuda_h() {
        use std::mem::size_of;
        assert_eq!(size_of::<CUipcMemHandle>(), 64);
        assert_eq!(size_of::<CUipcEventHandle>(), 64);
        assert_eq!(size_of::<CUuuid>(), 16);
        assert_eq!(size_of::<CUmemAllocationProp>(), 32);
        assert_eq!(size_of::<CUmemAccessDesc>(), 12);
        assert_eq!(size_of::<CUresultCode>(), 4);
    }
}
