//! Raw FFI: the CUDA driver API as `cuda-driver-sys` (CUDA 10.2 bindings) declares it, plus what
//! those bindings lack or get dangerously wrong.
//!
//! Only [`crate::result`] calls anything in here.
//!
//! # Why the functions are re-declared
//! `cuda-driver-sys` declares every function as returning its Rust `enum cudaError_enum`, which
//! only knows the codes of CUDA 10.2. A newer driver returns codes that enum lacks (for example
//! `CUDA_ERROR_UNSUPPORTED_PTX_VERSION` = 222 or `CUDA_ERROR_STUB_LIBRARY` = 34), and a Rust enum
//! holding a value outside its variants is undefined behaviour. So the functions this crate
//! calls are declared again below with the same C signature but returning [`CUresultCode`], a
//! plain `u32`. The argument types are still those of `cuda-driver-sys`, and linking still goes
//! through it (`-lcuda`). Where a newer, versioned symbol exists (`_v2`), the comment says why we
//! use it.
#![allow(non_camel_case_types, non_snake_case, missing_docs)]

use std::os::raw::{c_char, c_int, c_uint, c_ulonglong, c_void};

pub use cuda_driver_sys::*;

/// A `CUresult` as the driver returns it: a plain number, whatever the bindings know.
#[repr(transparent)]
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
pub struct CUresultCode(pub u32);

impl CUresultCode {
    /// `CUDA_SUCCESS`.
    pub const SUCCESS: CUresultCode = CUresultCode(0);
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
    /// `CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED` (CUDA 12.0), lacking from the 10.2 bindings.
    pub const IPC_EVENT_SUPPORTED: i32 = 117;
}

/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` as a bit for `requestedHandleTypes`.
pub const HANDLE_TYPE_POSIX_FD: u32 = 1;

/// `CU_STREAM_WAIT_VALUE_GEQ`: wait until `(int32_t)(*addr - value) >= 0`.
pub const STREAM_WAIT_VALUE_GEQ: c_uint = 0x0;
/// `CU_STREAM_WAIT_VALUE_EQ`.
pub const STREAM_WAIT_VALUE_EQ: c_uint = 0x1;
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
/// `CU_STREAM_NON_BLOCKING`: a stream not ordered with the legacy default stream.
pub const STREAM_NON_BLOCKING: c_uint = 0x1;
/// `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`.
pub const IPC_MEM_LAZY_ENABLE_PEER_ACCESS: c_uint = 0x1;
/// `CU_POINTER_ATTRIBUTE_BUFFER_ID` (CUDA 11.7): a process-unique id of an allocation.
pub const POINTER_ATTRIBUTE_BUFFER_ID: c_uint = 7;

// Layout checks for what crosses process boundaries or the FFI by value.
const _: () = assert!(std::mem::size_of::<CUipcMemHandle>() == 64);
const _: () = assert!(std::mem::size_of::<CUipcEventHandle>() == 64);
const _: () = assert!(std::mem::size_of::<CUuuid>() == 16);
const _: () = assert!(std::mem::size_of::<CUdeviceptr>() == 8);
const _: () = assert!(std::mem::size_of::<CUmemAllocationProp>() == 32);
const _: () = assert!(std::mem::size_of::<CUmemAccessDesc>() == 12);
const _: () = assert!(std::mem::size_of::<CUmemLocation>() == 8);
const _: () = assert!(std::mem::size_of::<CUresultCode>() == 4);

#[link(name = "cuda")]
extern "C" {
    pub fn cuInit(flags: c_uint) -> CUresultCode;
    pub fn cuDriverGetVersion(version: *mut c_int) -> CUresultCode;
    pub fn cuGetErrorName(error: CUresultCode, name: *mut *const c_char) -> CUresultCode;
    pub fn cuGetErrorString(error: CUresultCode, text: *mut *const c_char) -> CUresultCode;

    pub fn cuDeviceGetCount(count: *mut c_int) -> CUresultCode;
    pub fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresultCode;
    pub fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresultCode;
    /// `_v2` (CUDA 11.4): the UUID nvidia-smi prints, also for MIG instances.
    pub fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice) -> CUresultCode;
    pub fn cuDeviceGetPCIBusId(bus_id: *mut c_char, len: c_int, dev: CUdevice) -> CUresultCode;
    pub fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresultCode;
    /// Declared with a plain `c_int` attribute so that values newer than the bindings' enum
    /// can be asked for.
    pub fn cuDeviceGetAttribute(value: *mut c_int, attrib: c_int, dev: CUdevice) -> CUresultCode;
    pub fn cuDeviceCanAccessPeer(can: *mut c_int, dev: CUdevice, peer: CUdevice) -> CUresultCode;

    pub fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresultCode;
    /// `_v2` (CUDA 11.0): the symbol current drivers document.
    pub fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresultCode;
    pub fn cuCtxGetCurrent(ctx: *mut CUcontext) -> CUresultCode;
    pub fn cuCtxSetCurrent(ctx: CUcontext) -> CUresultCode;
    pub fn cuCtxSynchronize() -> CUresultCode;
    pub fn cuCtxEnablePeerAccess(peer: CUcontext, flags: c_uint) -> CUresultCode;

    pub fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresultCode;
    pub fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresultCode;
    pub fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresultCode;
    pub fn cuMemGetAddressRange_v2(
        base: *mut CUdeviceptr,
        size: *mut usize,
        dptr: CUdeviceptr,
    ) -> CUresultCode;
    pub fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, bytes: usize) -> CUresultCode;
    pub fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, bytes: usize) -> CUresultCode;
    pub fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) -> CUresultCode;
    pub fn cuMemcpyHtoDAsync_v2(
        dst: CUdeviceptr,
        src: *const c_void,
        bytes: usize,
        stream: CUstream,
    ) -> CUresultCode;
    pub fn cuMemcpyDtoHAsync_v2(
        dst: *mut c_void,
        src: CUdeviceptr,
        bytes: usize,
        stream: CUstream,
    ) -> CUresultCode;
    pub fn cuMemcpyDtoDAsync_v2(
        dst: CUdeviceptr,
        src: CUdeviceptr,
        bytes: usize,
        stream: CUstream,
    ) -> CUresultCode;
    pub fn cuMemcpyPeerAsync(
        dst: CUdeviceptr,
        dst_ctx: CUcontext,
        src: CUdeviceptr,
        src_ctx: CUcontext,
        bytes: usize,
        stream: CUstream,
    ) -> CUresultCode;
    pub fn cuMemsetD8_v2(dst: CUdeviceptr, value: u8, count: usize) -> CUresultCode;
    pub fn cuMemsetD8Async(
        dst: CUdeviceptr,
        value: u8,
        count: usize,
        stream: CUstream,
    ) -> CUresultCode;
    pub fn cuPointerGetAttribute(
        data: *mut c_void,
        attribute: c_uint,
        ptr: CUdeviceptr,
    ) -> CUresultCode;

    pub fn cuStreamCreate(stream: *mut CUstream, flags: c_uint) -> CUresultCode;
    pub fn cuStreamDestroy_v2(stream: CUstream) -> CUresultCode;
    pub fn cuStreamSynchronize(stream: CUstream) -> CUresultCode;
    pub fn cuStreamWaitEvent(stream: CUstream, event: CUevent, flags: c_uint) -> CUresultCode;
    /// `_v2` (CUDA 11.7): stream memory operations without the `NVreg_EnableStreamMemOPs=1`
    /// kernel-module option the first version needed.
    pub fn cuStreamWriteValue32_v2(
        stream: CUstream,
        addr: CUdeviceptr,
        value: u32,
        flags: c_uint,
    ) -> CUresultCode;
    /// `_v2` (CUDA 11.7), see [`cuStreamWriteValue32_v2`].
    pub fn cuStreamWaitValue32_v2(
        stream: CUstream,
        addr: CUdeviceptr,
        value: u32,
        flags: c_uint,
    ) -> CUresultCode;

    pub fn cuEventCreate(event: *mut CUevent, flags: c_uint) -> CUresultCode;
    pub fn cuEventDestroy_v2(event: CUevent) -> CUresultCode;
    pub fn cuEventRecord(event: CUevent, stream: CUstream) -> CUresultCode;
    pub fn cuEventSynchronize(event: CUevent) -> CUresultCode;
    pub fn cuEventQuery(event: CUevent) -> CUresultCode;
    pub fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) -> CUresultCode;

    pub fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresultCode;
    pub fn cuModuleUnload(module: CUmodule) -> CUresultCode;
    pub fn cuModuleGetFunction(
        function: *mut CUfunction,
        module: CUmodule,
        name: *const c_char,
    ) -> CUresultCode;
    pub fn cuLaunchKernel(
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
    ) -> CUresultCode;

    pub fn cuIpcGetMemHandle(handle: *mut CUipcMemHandle, dptr: CUdeviceptr) -> CUresultCode;
    /// `_v2` (CUDA 11.0) is the symbol current headers map `cuIpcOpenMemHandle` to.
    pub fn cuIpcOpenMemHandle_v2(
        dptr: *mut CUdeviceptr,
        handle: CUipcMemHandle,
        flags: c_uint,
    ) -> CUresultCode;
    pub fn cuIpcCloseMemHandle(dptr: CUdeviceptr) -> CUresultCode;
    pub fn cuIpcGetEventHandle(handle: *mut CUipcEventHandle, event: CUevent) -> CUresultCode;
    pub fn cuIpcOpenEventHandle(event: *mut CUevent, handle: CUipcEventHandle) -> CUresultCode;

    pub fn cuMemGetAllocationGranularity(
        granularity: *mut usize,
        prop: *const CUmemAllocationProp,
        option: CUmemAllocationGranularity_flags,
    ) -> CUresultCode;
    pub fn cuMemCreate(
        handle: *mut CUmemGenericAllocationHandle,
        size: usize,
        prop: *const CUmemAllocationProp,
        flags: c_ulonglong,
    ) -> CUresultCode;
    pub fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresultCode;
    pub fn cuMemAddressReserve(
        ptr: *mut CUdeviceptr,
        size: usize,
        alignment: usize,
        addr: CUdeviceptr,
        flags: c_ulonglong,
    ) -> CUresultCode;
    pub fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresultCode;
    pub fn cuMemMap(
        ptr: CUdeviceptr,
        size: usize,
        offset: usize,
        handle: CUmemGenericAllocationHandle,
        flags: c_ulonglong,
    ) -> CUresultCode;
    pub fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresultCode;
    pub fn cuMemSetAccess(
        ptr: CUdeviceptr,
        size: usize,
        desc: *const CUmemAccessDesc,
        count: usize,
    ) -> CUresultCode;
    pub fn cuMemExportToShareableHandle(
        shareable: *mut c_void,
        handle: CUmemGenericAllocationHandle,
        handle_type: CUmemAllocationHandleType,
        flags: c_ulonglong,
    ) -> CUresultCode;
    pub fn cuMemImportFromShareableHandle(
        handle: *mut CUmemGenericAllocationHandle,
        os_handle: *mut c_void,
        handle_type: CUmemAllocationHandleType,
    ) -> CUresultCode;
}
